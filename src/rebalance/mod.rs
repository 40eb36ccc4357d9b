//! Online rebalancing: a new map moves slots between live shards while the
//! proxy serves, losing nothing (the migration invariant of DESIGN.md).
//!
//! * [`plan`]: what a new map moves, and every reason to refuse it.
//! * [`state`]: the state directory, so a killed proxy resumes the move.
//! * `mover`: the background task that walks the source shards and moves
//!   keys in batches, and the barrier that makes a slot's `Migrating` state
//!   effective before any of its keys moves.
//! * `job`: the progress counters of a rebalance and what `PROGRESS`
//!   shows.
//! * [`Rebalancer`]: the handle the admin listener drives (plan, start,
//!   progress, pause, resume, throttle).
//!
//! The data path's half (a command on a key of a migrating slot moves the
//! key first) is in `proxy::moves`.

mod error;
mod estimate;
pub use error::RebalanceError;
pub use estimate::human_bytes;
mod job;
mod mover;
use job::FleetView;
pub use job::{Job, Phase, Progress, Verification};
pub mod plan;
pub mod state;
pub mod store;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use crate::context::Context;
use crate::router::{Epoch, Overlay, RoutingTable};
use crate::shardmap::ShardMap;
pub(crate) use mover::{CLIENTS_SAMPLE, clients_served};
pub use plan::Plan;
use state::{Saved, StateDir};
use store::Store;

use crate::coord::{Coord, FleetState, RebalanceState, Refusal, Versioned};

/// Refuses a plan whose sampled keys include one its postgres target
/// cannot hold (see [`estimate::unmovable`]).
async fn refuse_unmovable(ctx: &Context, plan: &Plan) -> Result<(), RebalanceError> {
    match estimate::unmovable(ctx, plan).await.into_iter().next() {
        Some((shard, source)) => Err(RebalanceError::Unmovable { shard, source }),
        None => Ok(()),
    }
}

/// Locks a mutex, going on after a panic elsewhere (the data is counters).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A rebalance to resume at start (read from the state directory).
pub struct Resume {
    saved: Saved,
    plan: Plan,
}

impl Resume {
    /// The map to serve from the start.
    pub fn merged(&self) -> Arc<ShardMap> {
        self.plan.merged.clone()
    }

    /// The first table: moved units done, started ones `Migrating`, the
    /// rest still on their old shard. Nothing is served yet, so no barrier
    /// is needed.
    pub fn table(&self, epoch: Epoch) -> RoutingTable {
        let states = self.plan.moves.iter().map(|m| {
            let key = (m.class, m.slot.0);
            if self.saved.done.contains(&key) {
                UnitState::Done
            } else if self.saved.migrating.contains(&key) {
                UnitState::Migrating
            } else {
                UnitState::Pending
            }
        });
        overlay_table(&self.plan, states, epoch)
    }
}

/// The state of one (class, slot) move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnitState {
    Pending,
    Migrating,
    Done,
}

/// The plan's compiled table with the moves' states (one per move, in
/// order) laid over it.
fn overlay_table(
    plan: &plan::Plan,
    states: impl Iterator<Item = UnitState>,
    epoch: Epoch,
) -> RoutingTable {
    let entries = plan
        .moves
        .iter()
        .zip(states)
        .filter_map(|(m, st)| match st {
            UnitState::Pending => Some((m.class, m.slot, Overlay::Pending(m.from))),
            UnitState::Migrating => Some((m.class, m.slot, Overlay::Migrating(m.from))),
            UnitState::Done => None,
        });
    plan.table.overlaid(epoch, entries)
}

/// What the proxy serves at start, given `--map` and `--state-dir`.
pub struct Initial {
    pub map: Arc<ShardMap>,
    /// The YAML text of the map in force (what a rebalance starts from).
    pub yaml: String,
    /// A rebalance to finish.
    pub resume: Option<Resume>,
    /// Where the map came from, for the log.
    pub source: String,
}

/// Reads the map to serve: a running rebalance in the state directory,
/// else the state directory's `current.yaml`, else the `--map` file.
pub fn initial(map_path: &Path, state: Option<&StateDir>) -> Result<Initial, RebalanceError> {
    let parse = |what: &str, text: &str| {
        ShardMap::from_yaml(text).map_err(RebalanceError::invalid_map(what))
    };
    if let Some(st) = state {
        let io = |source| RebalanceError::StateDir {
            path: st.path().display().to_string(),
            source,
        };
        if let Some(saved) = st.saved().map_err(io)? {
            return resuming(
                saved,
                format!("{} (resuming a rebalance)", st.path().display()),
            );
        }
        if let Some(text) = st.current().map_err(io)? {
            let map = parse("state current.yaml", &text)?;
            return Ok(Initial {
                map: Arc::new(map),
                yaml: text,
                resume: None,
                source: st.path().join("current.yaml").display().to_string(),
            });
        }
    }
    let text = std::fs::read_to_string(map_path).map_err(|source| RebalanceError::ReadMap {
        path: map_path.display().to_string(),
        source,
    })?;
    let map = parse(&map_path.display().to_string(), &text)?;
    Ok(Initial {
        map: Arc::new(map),
        yaml: text,
        resume: None,
        source: map_path.display().to_string(),
    })
}

/// A rebalance to resume, from its saved state.
fn resuming(saved: Saved, source: String) -> Result<Initial, RebalanceError> {
    let parse = |what: &str, text: &str| {
        ShardMap::from_yaml(text).map_err(RebalanceError::invalid_map(what))
    };
    let from = parse("rebalance source map", &saved.source_yaml)?;
    let target = parse("rebalance target map", &saved.target_yaml)?;
    let base = RoutingTable::compile(Arc::new(from), Epoch(0));
    let plan = plan::plan(&base, &target).map_err(|e| RebalanceError::SavedPlan {
        source_name: source.clone(),
        source: e,
    })?;
    Ok(Initial {
        map: plan.merged.clone(),
        yaml: saved.source_yaml.clone(),
        source,
        resume: Some(Resume { saved, plan }),
    })
}

/// What the fleet state in etcd says to serve (see [`crate::coord`]).
pub fn from_fleet(state: &crate::coord::FleetState) -> Result<Initial, RebalanceError> {
    match &state.rebalance {
        Some(r) => resuming(
            Saved::from(r),
            "the fleet state (a rebalance runs)".to_owned(),
        ),
        None => {
            let map = ShardMap::from_yaml(&state.map_yaml)
                .map_err(RebalanceError::invalid_map("the fleet state's map"))?;
            Ok(Initial {
                map: Arc::new(map),
                yaml: state.map_yaml.clone(),
                resume: None,
                source: "the fleet state in etcd".to_owned(),
            })
        }
    }
}

/// The progress of the fleet's rebalance as the state in etcd and the
/// movers' recorded counts (`moved`) tell it, for `shardgate admin follow
/// --etcd` (the fields a proxy's PROGRESS has, but what only a mover
/// knows: rate, ETA, errors, moves on touch). `None` when the fleet has
/// neither a running nor a finished rebalance.
pub fn fleet_progress(
    state: &Versioned<FleetState>,
    moved: Option<crate::coord::MovedSoFar>,
) -> Option<Progress> {
    let view = match (&state.value.rebalance, &state.value.last) {
        (Some(r), _) => {
            let mut rebalance = r.clone();
            // The movers record their counts now and then, the state
            // only at the end of each window.
            if let Some(m) = moved.filter(|m| m.keys > rebalance.moved.keys) {
                rebalance.moved = m;
            }
            FleetView {
                revision: state.revision,
                rebalance,
                finished: None,
            }
        }
        (None, Some(f)) => FleetView {
            revision: state.revision,
            rebalance: RebalanceState::default(),
            finished: Some(f.clone()),
        },
        (None, None) => return None,
    };
    Some(view.progress())
}

impl From<&crate::coord::RebalanceState> for Saved {
    fn from(r: &crate::coord::RebalanceState) -> Saved {
        Saved {
            source_yaml: r.source_yaml.clone(),
            target_yaml: r.target_yaml.clone(),
            migrating: r.migrating.iter().copied().collect(),
            done: r.done.iter().copied().collect(),
            paused: r.paused,
            throttle: r.throttle,
            moved: r.moved,
        }
    }
}

/// Drives rebalances of one proxy. The only writer of the routing table
/// besides a reload, with which it shares [`Rebalancer::writer`].
pub struct Rebalancer {
    ctx: Arc<Context>,
    state: Option<StateDir>,
    /// In a fleet: where the rebalance is recorded (instead of `state`).
    fleet: Option<Coord>,
    /// In a fleet: the running rebalance as last published here.
    fleet_view: Mutex<Option<FleetView>>,
    /// In a fleet: the live proxies as last listed (STATUS).
    fleet_members: Mutex<Vec<crate::coord::Member>>,
    /// In a fleet: whether any of them said it serves clients.
    fleet_serving: std::sync::atomic::AtomicBool,
    /// Held from "no mover runs here" to the mover's launch: the watcher
    /// and the election both call [`Rebalancer::fleet_state`].
    fleet_launch: Mutex<()>,
    /// In a fleet: whether this proxy holds the mover's election (a mover
    /// that finds it lost stops; the next leader resumes).
    fleet_leader: std::sync::atomic::AtomicBool,
    shutdown: watch::Sender<bool>,
    /// YAML of the map in force.
    current_yaml: Mutex<String>,
    job: Mutex<Option<Arc<Job>>>,
    /// One map writer at a time: a rebalance start or a reload.
    pub writer: tokio::sync::Mutex<()>,
    /// Most source shards the mover walks at once (`--rebalance-sources`).
    sources: usize,
}

impl Rebalancer {
    pub fn new(
        ctx: Arc<Context>,
        state: Option<StateDir>,
        fleet: Option<Coord>,
        current_yaml: String,
        shutdown: watch::Sender<bool>,
        sources: usize,
    ) -> Arc<Rebalancer> {
        Arc::new(Rebalancer {
            ctx,
            state,
            fleet,
            fleet_view: Mutex::new(None),
            fleet_members: Mutex::new(Vec::new()),
            fleet_serving: std::sync::atomic::AtomicBool::new(false),
            fleet_launch: Mutex::new(()),
            fleet_leader: std::sync::atomic::AtomicBool::new(false),
            shutdown,
            current_yaml: Mutex::new(current_yaml),
            job: Mutex::new(None),
            writer: tokio::sync::Mutex::new(()),
            sources: sources.max(1),
        })
    }

    /// Whether a rebalance is moving keys or verifying.
    pub fn is_running(&self) -> bool {
        lock(&self.job).as_ref().is_some_and(|j| j.running())
    }

    /// A reload applied a new map text (same placement).
    pub fn map_reloaded(&self, yaml: String) {
        *lock(&self.current_yaml) = yaml;
    }

    /// Plans `yaml` against the running map and estimates keys and bytes
    /// from the shards. Returns the report lines.
    pub async fn plan(&self, yaml: &str) -> Result<Vec<String>, RebalanceError> {
        let next = ShardMap::from_yaml(yaml).map_err(RebalanceError::invalid_map("invalid map"))?;
        let snap = self.ctx.snapshot_full();
        let plan = plan::plan(snap.table(), &next)?;
        drop(snap);
        let est = estimate::estimate(&self.ctx, &plan).await;
        let mut lines = estimate::report(&plan, &est);
        for (shard, why) in estimate::unmovable(&self.ctx, &plan).await {
            lines.push(format!("refused: shard {shard}: {why}"));
        }
        Ok(lines)
    }

    /// Starts moving to `yaml`. Refused while another rebalance runs,
    /// without a state directory, or for any reason [`plan::plan`] gives.
    /// Starts a rebalance to the map `yaml`; `throttle` (keys per second,
    /// 0 for no limit) is in force before the mover's first batch.
    pub async fn start(
        self: &Arc<Self>,
        yaml: &str,
        throttle: u64,
    ) -> Result<String, RebalanceError> {
        let _writer = self.writer.lock().await;
        if let Some(job) = lock(&self.job).as_ref()
            && job.running()
        {
            let p = job.progress(self.ctx.metrics.moved_on_touch());
            return Err(RebalanceError::AlreadyRunning {
                done: p.slots_done,
                total: p.slots_total,
                keys: p.keys_moved + p.keys_moved_on_touch,
            });
        }
        if let Some(coord) = &self.fleet {
            return self.start_in_fleet(coord, yaml, throttle).await;
        }
        let Some(state) = self.state.clone() else {
            return Err(RebalanceError::NoStateDir);
        };
        let next = ShardMap::from_yaml(yaml).map_err(RebalanceError::invalid_map("invalid map"))?;
        let snap = self.ctx.snapshot_full();
        let plan = plan::plan(snap.table(), &next)?;
        let epoch = snap.epoch().0 + 1;
        drop(snap);
        refuse_unmovable(&self.ctx, &plan).await?;
        let source_yaml = lock(&self.current_yaml).clone();
        let target = yaml.to_owned();
        state
            .blocking(move |st| {
                st.begin(&source_yaml, &target)?;
                if throttle > 0 {
                    st.log(&format!("throttle {throttle}"))?;
                }
                Ok(())
            })
            .await
            .map_err(RebalanceError::Begin)?;
        let summary = format!(
            "OK rebalance started: {} of {} (class, slot) pairs move, from map epoch {}",
            plan.moves.len(),
            plan.units,
            epoch - 1
        );
        tracing::info!(
            moves = plan.moves.len(),
            added = ?plan.added,
            drained = ?plan.drained,
            throttle,
            "rebalance started"
        );
        let saved = (throttle > 0).then(|| Saved {
            throttle,
            ..Saved::default()
        });
        self.launch(plan, saved, Store::Dir(state), yaml.to_owned(), epoch);
        Ok(summary)
    }

    /// A rebalance of the fleet: validated here, recorded in etcd (one
    /// transaction, so two admins cannot both start one); the proxy that
    /// holds the mover's election runs it, every proxy publishes it.
    async fn start_in_fleet(
        &self,
        coord: &Coord,
        yaml: &str,
        throttle: u64,
    ) -> Result<String, RebalanceError> {
        let next = ShardMap::from_yaml(yaml).map_err(RebalanceError::invalid_map("invalid map"))?;
        let snap = self.ctx.snapshot_full();
        let plan = plan::plan(snap.table(), &next)?;
        let epoch = snap.epoch().0;
        drop(snap);
        refuse_unmovable(&self.ctx, &plan).await?;
        // Counts of an earlier rebalance's movers are not this one's.
        if let Err(e) = coord.clear_progress().await {
            tracing::warn!(error = %e, "cannot clear the previous rebalance's progress in etcd");
        }
        let revision = coord
            .update_state(|s| {
                Refusal::if_rebalancing(s)?;
                s.rebalance = Some(RebalanceState {
                    source_yaml: s.map_yaml.clone(),
                    target_yaml: yaml.to_owned(),
                    throttle,
                    ..RebalanceState::default()
                });
                Ok(())
            })
            .await?;
        tracing::info!(
            moves = plan.moves.len(),
            added = ?plan.added,
            drained = ?plan.drained,
            revision,
            "rebalance of the fleet recorded in etcd"
        );
        // PROGRESS answers at once, before this proxy's watch publishes it.
        *lock(&self.fleet_view) = Some(FleetView {
            revision,
            rebalance: RebalanceState {
                source_yaml: lock(&self.current_yaml).clone(),
                target_yaml: yaml.to_owned(),
                throttle,
                ..RebalanceState::default()
            },
            finished: None,
        });
        Ok(format!(
            "OK rebalance started: {} of {} (class, slot) pairs move, from map epoch {epoch} (fleet revision {revision})",
            plan.moves.len(),
            plan.units,
        ))
    }

    /// The fleet's state changed (this proxy published it): record what
    /// STATUS shows, apply pause and throttle to a running mover, and, when
    /// this proxy holds the mover's election, start the mover for a
    /// rebalance that has none running here.
    pub fn fleet_state(self: &Arc<Self>, state: &Versioned<FleetState>, leader: bool) {
        *lock(&self.current_yaml) = state.value.map_yaml.clone();
        let Some(r) = &state.value.rebalance else {
            *lock(&self.fleet_view) = state.value.last.clone().map(|f| FleetView {
                revision: state.revision,
                rebalance: RebalanceState::default(),
                finished: Some(f),
            });
            return;
        };
        *lock(&self.fleet_view) = Some(FleetView {
            revision: state.revision,
            rebalance: r.clone(),
            finished: None,
        });
        let _one = lock(&self.fleet_launch);
        self.ctx.metrics.rebalance_throttle(r.throttle);
        let running = lock(&self.job).as_ref().filter(|j| j.running()).cloned();
        if let Some(job) = &running {
            job.paused.send_replace(r.paused);
            job.throttle.store(r.throttle, Ordering::Relaxed);
            return;
        }
        let Some(coord) = self.fleet.clone().filter(|_| leader) else {
            return;
        };
        match resuming(Saved::from(r), "the fleet state".to_owned()) {
            Ok(Initial {
                resume: Some(resume),
                ..
            }) => {
                tracing::info!(
                    moves = resume.plan.moves.len(),
                    done = resume.saved.done.len(),
                    migrating = resume.saved.migrating.len(),
                    revision = state.revision,
                    "this proxy runs the fleet's rebalance mover"
                );
                let target = resume.saved.target_yaml.clone();
                let epoch = u64::try_from(state.revision).unwrap_or(0);
                self.launch(
                    resume.plan,
                    Some(resume.saved),
                    Store::Fleet(coord),
                    target,
                    epoch,
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "the fleet's rebalance cannot be planned; it stays as recorded")
            }
        }
    }

    /// Resumes the rebalance read at start (see [`initial`]).
    pub fn resume(self: &Arc<Self>, resume: Resume) {
        let Some(state) = self.state.clone() else {
            return;
        };
        tracing::info!(
            moves = resume.plan.moves.len(),
            done = resume.saved.done.len(),
            migrating = resume.saved.migrating.len(),
            "resuming the rebalance found in the state directory"
        );
        let target = resume.saved.target_yaml.clone();
        let epoch = self.ctx.snapshot().epoch().0 + 1;
        self.launch(
            resume.plan,
            Some(resume.saved),
            Store::Dir(state),
            target,
            epoch,
        );
    }

    fn launch(
        self: &Arc<Self>,
        plan: Plan,
        saved: Option<Saved>,
        state: Store,
        target_yaml: String,
        epoch: u64,
    ) {
        let job = Job::new(
            epoch,
            &plan,
            self.ctx.metrics.moved_on_touch(),
            saved.as_ref(),
        );
        *lock(&self.job) = Some(job.clone());
        self.ctx
            .metrics
            .rebalance_throttle(job.throttle.load(Ordering::Relaxed));
        let work = mover::Work::new(plan, saved.as_ref(), state, target_yaml);
        let me = self.clone();
        tokio::spawn(async move {
            let outcome = mover::run(&me, &job, work).await;
            *lock(&job.finished) = Some(job.started.elapsed());
            me.ctx.metrics.rebalance_throttle(0);
            me.ctx.metrics.rebalance_small_bursts(false);
            me.ctx.metrics.rebalance_sources_moving(0);
            match outcome {
                Ok(yaml) => {
                    *lock(&me.current_yaml) = yaml;
                    job.set_phase(Phase::Done);
                    tracing::info!(
                        secs = job.started.elapsed().as_secs_f64(),
                        "rebalance finished"
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "rebalance failed; the proxy keeps serving the slots where they are");
                    job.set_phase(Phase::Failed(e.to_string()));
                }
            }
            let p = job.progress(me.ctx.metrics.moved_on_touch());
            me.ctx
                .metrics
                .rebalance_slots(p.slots_total - p.slots_done, 0, p.slots_done, false);
        });
    }

    /// Progress of the running or last rebalance. In a fleet, on a proxy
    /// that does not run the mover: what the fleet state says (slots; the
    /// key counts are the mover's).
    pub fn progress(&self) -> Option<Progress> {
        let local = lock(&self.job)
            .as_ref()
            .map(|j| j.progress(self.ctx.metrics.moved_on_touch()));
        let moving_here = local
            .as_ref()
            .is_some_and(|p| matches!(p.phase, Phase::Moving | Phase::Verifying));
        match lock(&self.fleet_view).as_ref() {
            // A fleet's rebalance that another proxy moves (or that this
            // one stopped moving when it lost the election).
            Some(view) if self.fleet.is_some() && !moving_here => Some(view.progress()),
            _ => local,
        }
    }

    fn running_job(&self) -> Result<Arc<Job>, RebalanceError> {
        match lock(&self.job).as_ref() {
            Some(j) if j.running() => Ok(j.clone()),
            _ => Err(RebalanceError::NotRunning),
        }
    }

    /// In a fleet, pause, resume and throttle are recorded in etcd; the
    /// mover's proxy applies them when it sees the state.
    async fn fleet_control(
        &self,
        coord: &Coord,
        change: impl Fn(&mut RebalanceState),
    ) -> Result<(), RebalanceError> {
        coord.control_rebalance(change).await?;
        Ok(())
    }

    /// Pauses the mover (slots being moved stay `Migrating`: commands still
    /// move their keys on touch).
    pub async fn pause(&self) -> Result<(), RebalanceError> {
        if let Some(coord) = &self.fleet {
            self.fleet_control(coord, |r| r.paused = true).await?;
            tracing::info!("rebalance paused (fleet)");
            return Ok(());
        }
        let job = self.running_job()?;
        job.paused.send_replace(true);
        self.log_control("pause".to_owned()).await;
        tracing::info!("rebalance paused");
        Ok(())
    }

    pub async fn resume_mover(&self) -> Result<(), RebalanceError> {
        if let Some(coord) = &self.fleet {
            self.fleet_control(coord, |r| r.paused = false).await?;
            tracing::info!("rebalance resumed (fleet)");
            return Ok(());
        }
        let job = self.running_job()?;
        job.paused.send_replace(false);
        self.log_control("resume".to_owned()).await;
        tracing::info!("rebalance resumed");
        Ok(())
    }

    /// Limits the mover to `keys_per_sec` (0: no limit).
    pub async fn throttle(&self, keys_per_sec: u64) -> Result<(), RebalanceError> {
        if let Some(coord) = &self.fleet {
            self.fleet_control(coord, |r| r.throttle = keys_per_sec)
                .await?;
            tracing::info!(keys_per_sec, "rebalance throttle set (fleet)");
            return Ok(());
        }
        let job = self.running_job()?;
        job.throttle.store(keys_per_sec, Ordering::Relaxed);
        self.ctx.metrics.rebalance_throttle(keys_per_sec);
        self.log_control(format!("throttle {keys_per_sec}")).await;
        tracing::info!(keys_per_sec, "rebalance throttle set");
        Ok(())
    }

    async fn log_control(&self, line: String) {
        if let Some(st) = &self.state
            && let Err(e) = st.blocking(move |st| st.log(&line)).await
        {
            tracing::warn!(error = %e, "cannot record a rebalance control in the state directory");
        }
    }

    /// Whether this proxy holds the fleet mover's election.
    pub fn set_fleet_leader(&self, leader: bool) {
        self.fleet_leader.store(leader, Ordering::Release);
    }

    /// Whether the mover may go on here: always outside a fleet; in a
    /// fleet, while this proxy leads and its lease may not have expired.
    fn may_move(&self) -> bool {
        self.fleet.is_none()
            || (self.fleet_leader.load(Ordering::Acquire) && !self.ctx.fence.blocks(Instant::now()))
    }

    /// The fleet's live proxies, as the member task last listed them.
    pub fn set_fleet_members(&self, members: Vec<crate::coord::Member>) {
        let serving = members.iter().any(|m| m.serving);
        self.fleet_serving.store(serving, Ordering::Relaxed);
        *lock(&self.fleet_members) = members;
    }

    /// Whether clients are served, so that the mover yields to them (see
    /// `mover::burst`): this proxy's ([`clients_served`]) or, in a fleet,
    /// any proxy's, as their member keys said when last listed (about once
    /// a second): the mover runs on one proxy, the clients may be on others.
    fn clients_served(&self) -> bool {
        clients_served() || self.fleet_serving.load(Ordering::Relaxed)
    }

    /// The `# Fleet` section of STATUS (empty without `--etcd`): one line
    /// per live proxy with its address, the epoch it has published and
    /// acknowledged, when it last renewed its lease, and its lease.
    pub fn fleet_text(&self) -> String {
        if self.fleet.is_none() {
            return String::new();
        }
        let members = lock(&self.fleet_members).clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut text = format!("# Fleet\r\nproxies:{}\r\n", members.len());
        for m in members {
            text.push_str(&format!(
                "proxy:id={},addr={},epoch={},renewed_ms_ago={},lease={:x},serving={}\r\n",
                m.id,
                m.addr,
                m.acked,
                now.saturating_sub(m.renewed_unix_ms),
                m.lease,
                u8::from(m.serving)
            ));
        }
        text.push_str("\r\n");
        text
    }

    /// The `# Rebalance` section of STATUS.
    pub fn status_text(&self) -> String {
        let mut text = self.fleet_text();
        text.push_str("# Rebalance\r\n");
        match self.progress() {
            None => text.push_str("state:none\r\n"),
            Some(p) => {
                for (k, v) in p.fields() {
                    text.push_str(&format!("{k}:{v}\r\n"));
                }
                for (from, to, n) in &p.pairs {
                    text.push_str(&format!("move:{from}->{to}={n}\r\n"));
                }
            }
        }
        text
    }
}

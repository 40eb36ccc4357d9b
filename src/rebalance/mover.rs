//! The background mover and the steps around it.
//!
//! Slots move in windows, each from one source shard, in steps of a window
//! from each of up to `--rebalance-sources` sources at once (their walks
//! take turns while the proxy serves clients, see `burst::Turns`):
//!
//! 1. the step's windows are logged to the state directory, then
//!    published as `Migrating{from, to}`;
//! 2. the barrier ([`barrier`]): wait until no reader routes with any
//!    earlier table (not only the one the publish replaced), then until
//!    every request already queued to the primaries of the source and the
//!    targets has run (a `PING` down each of their connections or lanes).
//!    From here on, nothing routed before the window writes a key of it;
//! 3. the source is scanned (`SCAN`) and the window's keys move in batches,
//!    each sized first by one script, then copied under a fence on the
//!    source (`DUMP` there, `RESTORE` on the target with the same expiry
//!    time, `UNLINK` there), in pipelined rounds ([`walk`]),
//!    throttled, pausable; commands meanwhile move the keys they touch.
//!    To or from a postgres shard, each key is copied with commands under
//!    its fence instead (`backend::copy`), and a postgres source is read
//!    slot by slot; keys a postgres target cannot hold stay on their source
//!    and pause the mover (`hold_back`) until an operator resumes;
//! 4. the targets' replicas catch up with their primaries, so a read sent
//!    to a replica once the slot is stable finds the moved keys;
//! 5. the step's windows are logged done and published as `Stable(to)`.
//!
//! After the last step: a verification scan of every shard, the final
//! table (removed shards become placeholders) and the state directory's
//! `current.yaml`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::plan::{self, Plan};
use super::state::Saved;
use super::store::{Store, UnitsKind};
use super::{Job, Phase, RebalanceError, Rebalancer, UnitState, overlay_table};
use crate::backend::copy::Stays;
use crate::backend::{Backends, Db, Endpoint, health};
use crate::error::BackendError;
use crate::protocol::{Protocol, reply};
use crate::router::{Epoch, RoutingTable, ShardId};
use crate::shardmap::{ShardKind, ShardMap};

mod barrier;
mod burst;
mod finish;
mod postgres;
mod walk;

use barrier::{barrier, drain};
pub(super) use burst::Turns;
use finish::{verify, wait_replicas};
use postgres::{hold_back, move_window_pg, prepare_postgres_targets};
use walk::move_window_db;

pub use crate::backend::migrate::BIG_KEY_BYTES;
pub(crate) use burst::{CLIENTS_SAMPLE, clients_served};
/// Most (class, slot) pairs moved in one window.
const WINDOW: usize = 4096;
/// Longest wait for the targets' replicas before a window turns stable.
const REPLICA_WAIT: Duration = Duration::from_secs(10);

/// How often the mover records what it moved (see [`record_progress`]).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Records the job's counts every [`PROGRESS_EVERY`] while they change, so
/// that a mover resuming after a restart or a takeover counts on from
/// about where this one was (windows are large: their `Done` records alone
/// would drop the keys of the window under way).
async fn record_progress(job: Arc<Job>, store: Store) {
    let mut last = job.moved_so_far();
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let now = job.moved_so_far();
        if now != last {
            store.record_moved(now).await;
            last = now;
        }
    }
}

/// Aborts a task when dropped (when [`run`] returns, however it returns).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the mover works through.
pub(super) struct Work {
    plan: Plan,
    states: Vec<UnitState>,
    state: Store,
    target_yaml: String,
}

impl Work {
    pub(super) fn new(
        plan: Plan,
        saved: Option<&Saved>,
        state: Store,
        target_yaml: String,
    ) -> Work {
        let states = plan
            .moves
            .iter()
            .map(|m| {
                let key = (m.class, m.slot.0);
                match saved {
                    Some(s) if s.done.contains(&key) => UnitState::Done,
                    Some(s) if s.migrating.contains(&key) => UnitState::Migrating,
                    _ => UnitState::Pending,
                }
            })
            .collect();
        Work {
            plan,
            states,
            state,
            target_yaml,
        }
    }

    fn table(&self, epoch: Epoch) -> RoutingTable {
        overlay_table(&self.plan, self.states.iter().copied(), epoch)
    }

    /// The next windows, moved at once: units a crash left `Migrating`
    /// first, then pending ones; up to [`WINDOW`] units of each of up to
    /// `sources` source shards (one window per source), sources in the
    /// order of their first unit.
    fn next_windows(&self, sources: usize) -> Vec<Vec<usize>> {
        for wanted in [UnitState::Migrating, UnitState::Pending] {
            let mut windows: Vec<Vec<usize>> = Vec::new();
            for (i, _) in self
                .states
                .iter()
                .enumerate()
                .filter(|(_, s)| **s == wanted)
            {
                let from = self.plan.moves[i].from;
                let open = windows.len() < sources.max(1);
                match windows
                    .iter_mut()
                    .find(|w| self.plan.moves[w[0]].from == from)
                {
                    Some(w) if w.len() < WINDOW => w.push(i),
                    Some(_) => {}
                    None if open => windows.push(vec![i]),
                    None => {}
                }
            }
            if !windows.is_empty() {
                return windows;
            }
        }
        Vec::new()
    }

    fn count(&self, s: UnitState) -> usize {
        self.states.iter().filter(|x| **x == s).count()
    }

    fn units(&self, idx: &[usize]) -> Vec<(u32, u32)> {
        idx.iter()
            .map(|&i| (self.plan.moves[i].class, self.plan.moves[i].slot.0))
            .collect()
    }
}

/// Runs a rebalance to its end. Returns the target map's YAML (now in
/// force) or why it stopped.
pub(super) async fn run(
    rb: &Arc<Rebalancer>,
    job: &Arc<Job>,
    mut work: Work,
) -> Result<String, RebalanceError> {
    let ctx = &rb.ctx;
    if let Store::Dir(_) = &work.state {
        // The endpoints of added shards, before any table routes to them.
        // (In a fleet, every proxy installs them when it sees the plan.)
        let (old, next) = rebuild_backends(rb, &work.plan.merged);
        ctx.snapshot
            .publish_backends(next.clone())
            .map_err(RebalanceError::Install)?;
        installed(rb, &old, &next);
        // An endpoint rebuilt here (its options changed) is not the one
        // the first window's barrier pings: requests routed to it before
        // must have run before any key moves.
        let retired: Vec<Arc<Endpoint>> = old
            .shards()
            .iter()
            .map(|s| s.primary.clone())
            .filter(|p| !next.endpoints().iter().any(|e| Arc::ptr_eq(e, p)))
            .collect();
        drop(old);
        let upto = ctx.snapshot().epoch();
        drain(rb, job, None, upto, retired).await;
    }
    prepare_postgres_targets(rb, job, &work).await;
    // Resumed (a restart, a takeover): count on from what the earlier
    // movers recorded, and record this one's counts now and then.
    if let Some(moved) = work.state.recorded_moved().await {
        job.count_from(moved);
    }
    let _recorder = AbortOnDrop(tokio::spawn(record_progress(
        job.clone(),
        work.state.clone(),
    )));
    job.done
        .store(work.count(UnitState::Done), Ordering::Relaxed);
    report(rb, &work, true);
    let est = super::estimate::estimate(ctx, &work.plan).await;
    job.keys_estimate
        .store(est.pairs.iter().map(|p| p.0).sum(), Ordering::Relaxed);
    loop {
        let windows = work.next_windows(rb.sources);
        if windows.is_empty() {
            break;
        }
        wait_unpaused(job).await;
        if !rb.may_move() {
            return Err(super::store::StoreError::LostLease.into());
        }
        // The windows' units, moved as one step: published `Migrating`
        // together, behind one barrier, walked at once, done together.
        let step: Vec<usize> = windows.iter().flatten().copied().collect();
        let fresh: Vec<usize> = step
            .iter()
            .copied()
            .filter(|&i| work.states[i] == UnitState::Pending)
            .collect();
        // In a fleet, windows a previous mover left `Migrating` may not
        // have been acknowledged by every proxy yet: wait for them again.
        let fleet = matches!(work.state, Store::Fleet(_));
        if !fresh.is_empty() || fleet {
            // (Recording units already `Migrating` writes nothing and
            // returns the current revision.)
            let units = work.units(&step);
            let version = work
                .state
                .log_units(&ctx.fence, UnitsKind::Migrating, units)
                .await
                .map_err(RebalanceError::record("a window"))?;
            for &i in &fresh {
                work.states[i] = UnitState::Migrating;
            }
            match &work.state {
                // Commands do not move the windows' keys until the
                // barrier is over (`context::HeldMoves`): a request routed
                // by an earlier table may still be queued on a source,
                // and a copy (`GET` ... `UNLINK`) that ran meanwhile would
                // read the key before that write landed and delete it after
                // (issue 15; between Redis shards the write would recreate
                // the key on its source after `MIGRATE`).
                Store::Dir(_) => {
                    let held: HashSet<(u32, u32)> = work.units(&step).into_iter().collect();
                    rb.ctx.held_moves.set(held);
                    let old = match publish(rb, &work) {
                        Ok(old) => old,
                        Err(e) => {
                            rb.ctx.held_moves.set(HashSet::new());
                            return Err(e);
                        }
                    };
                    let mut shards: Vec<ShardId> = step
                        .iter()
                        .flat_map(|&i| [work.plan.moves[i].from, work.plan.moves[i].to])
                        .collect();
                    shards.sort_unstable();
                    shards.dedup();
                    barrier(rb, job, old, &shards).await;
                    rb.ctx.held_moves.set(HashSet::new());
                }
                // Every live proxy publishes the windows' `Migrating` state
                // and drains what it routed before; the mover waits for all
                // of them (proxies whose lease expired are fenced), then
                // confirms the windows: only now may proxies move their keys
                // on touch (before, one of them could still write a key on
                // its old shard after another moved it).
                Store::Fleet(coord) => {
                    super::store::wait_acks(&rb.ctx, coord, version, || rb.may_move())
                        .await
                        .map_err(RebalanceError::record("the window's acknowledgements"))?;
                    work.state
                        .log_units(&ctx.fence, UnitsKind::Confirmed, work.units(&step))
                        .await
                        .map_err(RebalanceError::record("a confirmed window"))?;
                }
            }
        }
        job.migrating.store(step.len(), Ordering::Relaxed);
        report(rb, &work, true);
        let started = Instant::now();
        let moved_before = job.keys.load(Ordering::Relaxed);
        // Each source's walk on its own connections, taking turns beside
        // clients (see [`Turns`]).
        let walks = windows.iter().map(|window| {
            let from = work.plan.moves[window[0]].from;
            move_all(rb, job, &work, from, window)
        });
        let walked = futures_util::future::join_all(walks).await;
        rb.ctx.metrics.rebalance_sources_moving(0);
        for w in walked {
            w?;
        }
        let targets: HashSet<ShardId> = step.iter().map(|&i| work.plan.moves[i].to).collect();
        for t in targets {
            wait_replicas(rb, t).await;
        }
        let units = work.units(&step);
        work.state
            .log_units(&ctx.fence, UnitsKind::Done(job.moved_so_far()), units)
            .await
            .map_err(RebalanceError::record("a finished window"))?;
        for &i in &step {
            work.states[i] = UnitState::Done;
        }
        if let Store::Dir(_) = &work.state {
            publish(rb, &work)?;
        }
        job.done.fetch_add(step.len(), Ordering::Relaxed);
        job.migrating.store(0, Ordering::Relaxed);
        report(rb, &work, true);
        let sources: Vec<&str> = windows
            .iter()
            .map(|w| {
                work.plan.merged.shards[work.plan.moves[w[0]].from.0 as usize]
                    .name
                    .as_str()
            })
            .collect();
        tracing::info!(
            sources = %sources.join(","),
            slots = step.len(),
            keys = job.keys.load(Ordering::Relaxed) - moved_before,
            secs = started.elapsed().as_secs_f64(),
            done = work.count(UnitState::Done),
            total = work.states.len(),
            "rebalance windows moved"
        );
    }
    job.set_phase(Phase::Verifying);
    let v = verify(rb, &work).await;
    ctx.metrics.rebalance_verified(v.ok(), v.misplaced);
    *super::lock(&job.verification) = Some(v.clone());
    if let Store::Dir(_) = &work.state {
        let finished = Arc::new(plan::finished(&work.plan.merged));
        let epoch = Epoch(ctx.snapshot().epoch().0 + 1);
        let (old, next) = rebuild_backends(rb, &finished);
        ctx.snapshot.publish(
            RoutingTable::compile(finished.clone(), epoch),
            Some(next.clone()),
        )?;
        installed(rb, &old, &next);
        ctx.metrics.map_epoch(epoch.0);
    }
    // In a fleet, every proxy publishes the finished map when it sees it.
    let moved = job.moved_so_far();
    let outcome = crate::coord::FinishedRebalance {
        slots_total: work.states.len(),
        keys_moved: moved.keys,
        bytes_moved: moved.bytes,
        big_keys: moved.big_keys,
        elapsed_secs: job.started.elapsed().as_secs_f64(),
        left_behind: v.left_behind,
        misplaced: v.misplaced,
        in_moved_slots: v.in_moved_slots,
        keys: v.keys.clone(),
        unscanned: v.unscanned.clone(),
    };
    work.state
        .finish(&ctx.fence, work.target_yaml.clone(), outcome)
        .await
        .map_err(RebalanceError::record("the finished rebalance"))?;
    if !v.ok() {
        return Err(RebalanceError::Verification {
            left_behind: v.left_behind,
            misplaced: v.misplaced,
            unscanned: v.unscanned.clone(),
        });
    }
    Ok(work.target_yaml)
}

/// Counts for metrics.
fn report(rb: &Rebalancer, work: &Work, running: bool) {
    rb.ctx.metrics.rebalance_slots(
        work.count(UnitState::Pending),
        work.count(UnitState::Migrating),
        work.count(UnitState::Done),
        running,
    );
}

/// The running backends and backends for `map` built from them (endpoints
/// that did not change are kept). Shard ids of the running backends stay
/// valid: `map` keeps their order.
fn rebuild_backends(rb: &Rebalancer, map: &ShardMap) -> (Arc<Backends>, Arc<Backends>) {
    rb.ctx.rebuild_backends(map)
}

/// After `next` replaced `old` in a published snapshot: health checks for
/// the new endpoints, and the dropped ones retire.
fn installed(rb: &Rebalancer, old: &Backends, next: &Arc<Backends>) {
    let added = next.added_since(old);
    health::spawn_all(&added, rb.shutdown.subscribe());
    crate::backend::pg::spawn_reapers(&added, &rb.shutdown);
    old.retire_missing(next);
}

/// Publishes the work's current table; returns the one it replaced.
fn publish(rb: &Rebalancer, work: &Work) -> Result<Arc<RoutingTable>, RebalanceError> {
    let snapshot = &rb.ctx.snapshot;
    let epoch = Epoch(snapshot.load().epoch().0 + 1);
    let old = snapshot.publish(work.table(epoch), None)?;
    rb.ctx.metrics.map_epoch(epoch.0);
    Ok(old)
}

async fn wait_unpaused(job: &Job) {
    let mut rx = job.paused.subscribe();
    let _ = rx.wait_for(|p| !*p).await;
}

/// Moves the window from `from` to its end, pausing for keys that cannot
/// move (see [`hold_back`]) until an operator resumes. Fails only when a
/// fleet mover may have lost its lease: it stopped moving, and the window
/// is not done.
async fn move_all(
    rb: &Rebalancer,
    job: &Job,
    work: &Work,
    from: ShardId,
    window: &[usize],
) -> Result<(), super::store::StoreError> {
    loop {
        let stuck = move_window(rb, job, work, from, window).await;
        if !rb.may_move() {
            return Err(super::store::StoreError::LostLease);
        }
        if stuck.is_empty() {
            return Ok(());
        }
        hold_back(rb, job, &stuck).await;
    }
}

/// Moves every key of the window from `from` (step 3), database by
/// database (clients may `SELECT` any database; each moves into the same
/// database on its target). Retries until it is done: a failure leaves
/// keys on the source, where commands still find and move them. Returns
/// the keys that cannot move at all (see [`Stays`]).
async fn move_window(
    rb: &Rebalancer,
    job: &Job,
    work: &Work,
    from: ShardId,
    window: &[usize],
) -> Vec<Stays> {
    let targets: HashMap<(u32, u32), ShardId> = window
        .iter()
        .map(|&i| {
            let m = &work.plan.moves[i];
            ((m.class, m.slot.0), m.to)
        })
        .collect();
    let mut stuck = Vec::new();
    if rb.ctx.backends().shard(from).primary.kind() == Some(ShardKind::Postgres) {
        move_window_pg(rb, job, work, from, &targets, &mut stuck).await;
        return stuck;
    }
    let mut backoff = Duration::from_millis(100);
    let dbs = loop {
        let ep = rb.ctx.backends().shard(from).primary.clone();
        match databases_with_keys(&ep).await {
            Ok(dbs) => break dbs,
            Err(e) => {
                fail(rb, job, format!("source {}: {e}", ep.state.addr)).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    for db in dbs {
        move_window_db(rb, job, work, from, &targets, db, &mut stuck).await;
    }
    stuck
}

/// The databases of `ep` that hold keys (`INFO keyspace`), database 0
/// always among them.
pub(super) async fn databases_with_keys(ep: &Endpoint) -> Result<Vec<Db>, BackendError> {
    let frame = Bytes::from_static(b"*2\r\n$4\r\nINFO\r\n$8\r\nkeyspace\r\n");
    let info = match ep.send(Protocol::Resp2, 0, &frame).await {
        Ok(Ok(a)) => a.frame,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(BackendError::ConnectionLost {
                addr: ep.state.addr.clone(),
                reason: "connection task stopped".to_owned(),
            });
        }
    };
    let text = reply::bulk(&info).unwrap_or_default();
    let mut dbs = vec![Db(0)];
    for line in String::from_utf8_lossy(&text).lines() {
        let n = line
            .strip_prefix("db")
            .and_then(|l| l.split_once(':'))
            .and_then(|(n, _)| n.parse::<u32>().ok());
        if let Some(n) = n.filter(|&n| n != 0) {
            dbs.push(Db(n));
        }
    }
    Ok(dbs)
}

async fn fail(rb: &Rebalancer, job: &Job, e: String) {
    rb.ctx.metrics.rebalance_mover_error("mover");
    tracing::warn!(error = %e, "rebalance mover: step failed; retrying");
    job.error(e);
}

/// Sleeps so that the mover stays under the throttle (keys per second;
/// each of the walks under way keeps to its share), in short steps so that
/// a new throttle takes effect at once.
async fn throttle(job: &Job, keys: usize) {
    let t0 = Instant::now();
    loop {
        let limit = job.throttle.load(Ordering::Relaxed);
        if limit == 0 {
            return;
        }
        // Walks of several sources moving at once share the limit.
        let share = limit as f64 / job.turns.moving().max(1) as f64;
        let due = Duration::from_secs_f64(keys as f64 / share);
        let left = due.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Slot;
    use std::collections::BTreeSet;

    /// Two shards, then a third (slots move only onto it), 256 slots.
    const MAP: &str = "slots: 256\nregions:\n  - name: us\nshards:\n  - name: a\n    region: us\n    primary: 127.0.0.1:7001\n  - name: b\n    region: us\n    primary: 127.0.0.1:7002\n";

    fn work(saved: Option<&Saved>) -> (Work, tempdir::Dir) {
        let current = RoutingTable::compile(Arc::new(ShardMap::from_yaml(MAP).unwrap()), Epoch(1));
        let next = MAP.to_owned() + "  - name: c\n    region: us\n    primary: 127.0.0.1:7003\n";
        let plan = plan::plan(&current, &ShardMap::from_yaml(&next).unwrap()).unwrap();
        let dir = tempdir::Dir::new();
        let state = Store::Dir(super::super::state::StateDir::open(dir.path()).unwrap());
        (Work::new(plan, saved, state, next), dir)
    }

    /// A directory removed when dropped.
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("shardgate-mover-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn unit(w: &Work, i: usize) -> (u32, u32) {
        (w.plan.moves[i].class, w.plan.moves[i].slot.0)
    }

    /// Takes steps of `w` until every unit is done; returns each step's
    /// windows' sources.
    fn steps(w: &mut Work, sources: usize) -> Vec<Vec<ShardId>> {
        let mut steps = Vec::new();
        let mut seen = BTreeSet::new();
        loop {
            let windows = w.next_windows(sources);
            if windows.is_empty() {
                break;
            }
            let mut from = Vec::new();
            for window in &windows {
                assert!(!window.is_empty() && window.len() <= WINDOW);
                let source = w.plan.moves[window[0]].from;
                for &i in window {
                    assert_eq!(w.plan.moves[i].from, source, "one source per window");
                    assert_eq!(w.states[i], UnitState::Pending);
                    assert!(seen.insert(i), "a unit is in one window only");
                }
                from.push(source);
            }
            for &i in windows.iter().flatten() {
                w.states[i] = UnitState::Done;
            }
            steps.push(from);
        }
        assert_eq!(seen.len(), w.plan.moves.len(), "every unit moved");
        assert_eq!(w.count(UnitState::Done), w.plan.moves.len());
        steps
    }

    #[test]
    fn each_step_takes_a_window_of_up_to_as_many_sources_as_allowed() {
        let (mut w, _dir) = work(None);
        assert!(w.plan.moves.len() > 1);
        let sources: BTreeSet<ShardId> = w.plan.moves.iter().map(|m| m.from).collect();
        assert_eq!(sources.len(), 2, "slots come from both old shards");
        // Sources in the order of their first unit.
        let a = w.plan.moves[0].from;
        let b = *sources.iter().find(|s| **s != a).unwrap();
        assert_eq!(steps(&mut w, 1), [vec![a], vec![b]], "one source at a time");
        let (mut w, _dir) = work(None);
        assert_eq!(steps(&mut w, 4), [vec![a, b]], "both sources at once");
        let (mut w, _dir) = work(None);
        assert_eq!(steps(&mut w, 0), [vec![a], vec![b]], "at least one");
    }

    #[test]
    fn a_resumed_move_finishes_the_window_a_crash_left_migrating_first() {
        let (fresh, _dir) = work(None);
        let n = fresh.plan.moves.len();
        // Three units of the second source were migrating, the first unit
        // of the other source done.
        let second = fresh.plan.moves.iter().map(|m| m.from).max().unwrap();
        let done = (0..n)
            .find(|&i| fresh.plan.moves[i].from != second)
            .unwrap();
        let migrating: BTreeSet<(u32, u32)> = (0..n)
            .filter(|&i| fresh.plan.moves[i].from == second)
            .take(3)
            .map(|i| unit(&fresh, i))
            .collect();
        let saved = Saved {
            source_yaml: String::new(),
            target_yaml: String::new(),
            migrating: migrating.iter().copied().collect(),
            done: [unit(&fresh, done)].into_iter().collect(),
            paused: false,
            throttle: 0,
            moved: Default::default(),
        };
        let (mut w, _dir2) = work(Some(&saved));
        assert_eq!(w.states[done], UnitState::Done);
        let first = w.next_windows(4);
        assert_eq!(first.len(), 1, "one source's units were migrating");
        let got: BTreeSet<(u32, u32)> = first[0].iter().map(|&i| unit(&w, i)).collect();
        assert_eq!(got, migrating, "the migrating units, and only them");
        for &i in &first[0] {
            w.states[i] = UnitState::Done;
        }
        let next: Vec<usize> = w.next_windows(4).concat();
        assert!(!next.is_empty());
        assert!(next.iter().all(|&i| w.states[i] == UnitState::Pending));
        assert!(!next.contains(&done), "a done unit never moves again");
    }

    #[test]
    fn the_published_table_routes_each_unit_by_its_state() {
        let (mut w, _dir) = work(None);
        let (p, m, d) = (0, 1, 2);
        w.states[d] = UnitState::Done;
        assert!(
            !w.table(Epoch(8)).has_migrating(),
            "pending and done units only"
        );
        w.states[m] = UnitState::Migrating;
        let t = w.table(Epoch(9));
        assert_eq!(t.epoch(), Epoch(9));
        assert!(t.has_migrating());
        let route = |i: usize| {
            let mv = &w.plan.moves[i];
            (t.route_of(mv.class, Slot(mv.slot.0)), mv.from, mv.to)
        };
        // Pending: still the source's, nothing moves yet.
        let (r, from, _) = route(p);
        assert_eq!((r.shard, r.moving_from), (from, None));
        // Migrating: the target's, moving from the source (commands move
        // the key first).
        let (r, from, to) = route(m);
        assert_eq!((r.shard, r.moving_from), (to, Some(from)));
        // Done: the target's.
        let (r, _, to) = route(d);
        assert_eq!((r.shard, r.moving_from), (to, None));
    }
}

//! This proxy as a member of a fleet (`--etcd URL --cluster NAME`).
//!
//! Three tasks keep it in step with the fleet's state in etcd (see
//! [`crate::coord`]):
//!
//! * the **lease keeper** renews this proxy's lease every third of its TTL.
//!   After each renewal it moves the [`crate::context::Fence`] deadline to
//!   `sent + TTL - margin`, where `sent` is when the renewal was *sent*:
//!   etcd starts the new TTL only when it receives the request, so the
//!   deadline always comes before the lease can expire (given clocks that
//!   run at about the same rate; no wall-clock time is compared). Past the
//!   deadline the proxy routes no keys (`-TRYAGAIN`). If the lease is lost,
//!   it takes a new one, registers again, and opens the fence only once it
//!   has published the fleet's current state.
//! * the **watcher** publishes every new fleet state as one snapshot whose
//!   epoch is the state's etcd revision, then waits until no request
//!   routed with an older table is still on its way (the table's readers
//!   are gone and a `PING` went down every connection to every primary
//!   behind the requests already queued), and only then acknowledges the
//!   revision in its member key. The mover waits for every live member's
//!   acknowledgement before it moves a key of a `Migrating` window.
//! * the **campaigner** runs for the mover's election under the same lease;
//!   the elected proxy runs the mover (and loses the election with its
//!   lease, when another proxy takes over from the state in etcd).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{EventType, WatchOptions};
use tokio::sync::watch;

use crate::backend::fence::FleetClaims;
use crate::backend::health;
use crate::context::Context;
use crate::coord::{Coord, CoordError, FleetState, Member, Versioned};
use crate::proxy::Proxy;
use crate::rebalance::{self, Rebalancer};
use crate::router::{Epoch, RoutingTable};

/// How a proxy joins a fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// etcd endpoints, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The fleet's name: its keys live under `/shardgate/<cluster>/`.
    pub cluster: String,
    /// This proxy's id in the fleet (default: host:port of its listener
    /// and the process id).
    pub id: Option<String>,
    /// The etcd lease's time to live; renewed every third of it.
    pub lease_ttl: Duration,
}

impl FleetConfig {
    /// The fence closes this long before the lease could expire, for the
    /// time between the deadline check and a request leaving the proxy.
    pub fn margin(&self) -> Duration {
        (self.lease_ttl / 5).max(Duration::from_millis(500))
    }
}

/// The member tasks' shared state.
struct Membership {
    coord: Coord,
    ctx: Arc<Context>,
    proxy: Arc<Proxy>,
    rebalancer: Arc<Rebalancer>,
    config: FleetConfig,
    id: String,
    addr: String,
    /// The state revision this proxy has published and drained.
    applied: AtomicI64,
    /// The lease its member key and election candidacy live under.
    lease: watch::Sender<i64>,
    leader: AtomicBool,
    /// Whether it serves clients, as its member key says (see
    /// [`Membership::report_serving`]).
    serving: AtomicBool,
    /// Serialises [`Membership::apply`].
    applying: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
}

/// Reads the fleet's state, storing `seed` first if the cluster has none
/// (the first proxy started with `--map`).
pub async fn initial_state(
    coord: &Coord,
    seed: Option<&str>,
) -> Result<Versioned<FleetState>, CoordError> {
    if let Some(state) = coord.state().await? {
        return Ok(state);
    }
    let Some(map_yaml) = seed else {
        return Err(CoordError::NoState);
    };
    coord
        .create_state(&FleetState {
            map_yaml: map_yaml.to_owned(),
            rebalance: None,
            last: None,
            writes: Vec::new(),
        })
        .await
}

/// Registers this proxy (it has published `state` already) and starts
/// the member tasks. Returns once the first lease is held.
#[allow(clippy::too_many_arguments)]
pub async fn join(
    coord: Coord,
    config: FleetConfig,
    ctx: Arc<Context>,
    proxy: Arc<Proxy>,
    rebalancer: Arc<Rebalancer>,
    addr: String,
    state: Versioned<FleetState>,
    shutdown: watch::Sender<bool>,
) -> Result<(), CoordError> {
    let id = config.id.clone().unwrap_or_else(|| default_id(&addr));
    let ttl = lease_seconds(config.lease_ttl);
    let sent = Instant::now();
    let lease = coord.client().lease_grant(ttl, None).await?.id();
    // The table published at start may show unconfirmed windows.
    ctx.held_moves.set(unconfirmed(&state.value));
    let me = Arc::new(Membership {
        coord,
        ctx,
        proxy,
        rebalancer,
        config,
        id,
        addr,
        applied: AtomicI64::new(state.revision),
        lease: watch::Sender::new(lease),
        leader: AtomicBool::new(false),
        serving: AtomicBool::new(false),
        applying: tokio::sync::Mutex::new(()),
        shutdown,
    });
    // Keys copied with commands are claimed fleet-wide from now on.
    me.ctx.fences.join_fleet(FleetClaims::new(
        me.coord.clone(),
        me.id.clone(),
        me.lease.subscribe(),
        me.ctx.fence.clone(),
        me.ctx.metrics.clone(),
    ));
    me.register().await?;
    me.rebalancer.fleet_state(&state, false);
    // Registered first, then caught up: a window the mover recorded between
    // our read of the state and our registration did not wait for us, so
    // we publish it (and acknowledge) before routing any key.
    me.catch_up().await?;
    me.ctx
        .fence
        .open_until(sent + me.config.lease_ttl - me.config.margin());
    tracing::info!(id = %me.id, lease, revision = state.revision, "joined the fleet");
    tokio::spawn(me.clone().keep_lease());
    tokio::spawn(me.clone().watch_state());
    tokio::spawn(me.clone().campaign());
    tokio::spawn(me.clone().count_members());
    tokio::spawn(me.clone().report_serving());
    Ok(())
}

/// The (class, slot) pairs `Migrating` in `state` whose keys may not move
/// yet: not confirmed by the mover, not done.
fn unconfirmed(state: &FleetState) -> HashSet<(u32, u32)> {
    let Some(r) = &state.rebalance else {
        return HashSet::new();
    };
    let settled: HashSet<&(u32, u32)> = r.confirmed.iter().chain(&r.done).collect();
    r.migrating
        .iter()
        .filter(|u| !settled.contains(u))
        .copied()
        .collect()
}

fn lease_seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(2)
}

/// Whether a renewal's error says etcd no longer knows the lease (it
/// expired): `lease_keep_alive` on a lease etcd has dropped fails with
/// "lease not found" (a TTL of 0 in its first reply), and a request under
/// it with gRPC's NOT_FOUND ("requested lease not found").
fn lease_gone(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        etcd_client::Error::GRpcStatus(s) => s.message().contains("requested lease not found"),
        _ => false,
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Membership {
    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    async fn register(&self) -> Result<(), CoordError> {
        let member = Member {
            id: self.id.clone(),
            addr: self.addr.clone(),
            acked: self.applied.load(Ordering::Acquire),
            renewed_unix_ms: unix_ms(),
            lease: *self.lease.borrow(),
            serving: self.serving.load(Ordering::Relaxed),
        };
        self.coord.register(&member).await
    }

    /// Renews the lease; on loss, fences, takes a new one and catches up.
    async fn keep_lease(self: Arc<Self>) {
        let every = self.config.lease_ttl / 3;
        let mut keeper = None;
        // Renewals failed in a row: retried soon (250 ms, doubling up to
        // `every`), not a third of the lease later. With one etcd member
        // down, the client's balancer may send a request to it; the next
        // attempt usually goes to a live member, well before the lease is
        // at risk.
        let mut failures = 0u32;
        while !self.stopping() {
            let sent = Instant::now();
            let lease = *self.lease.borrow();
            let renewed = tokio::time::timeout(crate::coord::REQUEST_TIMEOUT, async {
                if keeper.is_none() {
                    keeper = Some(self.coord.client().lease_keep_alive(lease).await?);
                }
                let Some((k, stream)) = keeper.as_mut() else {
                    return Ok(None);
                };
                k.keep_alive().await?;
                Ok::<_, etcd_client::Error>(stream.message().await?.map(|m| m.ttl()))
            })
            .await;
            match renewed {
                Ok(Ok(Some(ttl))) if ttl > 0 => {
                    failures = 0;
                    self.ctx
                        .fence
                        .open_until(sent + self.config.lease_ttl - self.config.margin());
                    self.ctx.metrics.fleet_lease_renewal(true);
                    self.ctx.metrics.fleet_fenced(false);
                    if let Err(e) = self.register().await {
                        tracing::debug!(error = %e, "cannot refresh the member key");
                    }
                }
                // The lease expired: the fleet may have gone on without
                // us. A keeper kept from before says so with a TTL of 0,
                // one made anew (after a failed renewal) with "lease not
                // found"; either way, no renewal can succeed any more.
                Ok(Ok(_)) => {
                    keeper = None;
                    failures = 0;
                    self.lease_expired(lease).await;
                    continue;
                }
                Ok(Err(e)) if lease_gone(&e) => {
                    keeper = None;
                    failures = 0;
                    self.lease_expired(lease).await;
                    continue;
                }
                Ok(Err(e)) => {
                    keeper = None;
                    failures += 1;
                    self.renewal_failed(&e.to_string());
                }
                Err(_) => {
                    keeper = None;
                    failures += 1;
                    self.renewal_failed("timed out");
                }
            }
            let wait = if failures > 0 {
                (Duration::from_millis(250) * (1 << failures.min(5))).min(every)
            } else {
                every.saturating_sub(sent.elapsed())
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The lease is gone: fence, then rejoin with a new one.
    async fn lease_expired(&self, lease: i64) {
        self.ctx.fence.close();
        self.ctx.metrics.fleet_fenced(true);
        self.ctx.metrics.fleet_lease_renewal(false);
        tracing::warn!(id = %self.id, lease, "etcd lease expired; routing no keys until this proxy has caught up with the fleet");
        self.rejoin().await;
    }

    fn renewal_failed(&self, why: &str) {
        self.ctx.metrics.fleet_lease_renewal(false);
        let fenced = self.ctx.fence.blocks(Instant::now());
        self.ctx.metrics.fleet_fenced(fenced);
        tracing::warn!(id = %self.id, error = why, fenced, "cannot renew the etcd lease");
    }

    /// After a lost lease: a new lease, the fleet's current state published
    /// and acknowledged, then the fence opens.
    async fn rejoin(&self) {
        while !self.stopping() {
            let sent = Instant::now();
            let attempt = async {
                let lease = self
                    .coord
                    .client()
                    .lease_grant(lease_seconds(self.config.lease_ttl), None)
                    .await?
                    .id();
                self.lease.send_replace(lease);
                // Registered first, then caught up (see `join`).
                self.register().await?;
                self.catch_up().await?;
                Ok::<_, CoordError>(lease)
            };
            match attempt.await {
                Ok(lease) => {
                    self.ctx
                        .fence
                        .open_until(sent + self.config.lease_ttl - self.config.margin());
                    self.ctx.metrics.fleet_fenced(false);
                    tracing::info!(id = %self.id, lease, "rejoined the fleet; routing keys again");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot rejoin the fleet yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Publishes every new fleet state (see the module doc).
    async fn watch_state(self: Arc<Self>) {
        let key = self.coord.state_key();
        // The oldest revision etcd still has the history of, once a watch
        // found its start compacted away: a watch never starts below it
        // again (it would be cancelled again, every time).
        let mut compacted = 0;
        while !self.stopping() {
            let from = (self.applied.load(Ordering::Acquire) + 1).max(compacted);
            let options = WatchOptions::new().with_start_revision(from);
            let mut stream = match self.coord.client().watch(key.clone(), Some(options)).await {
                Ok(s) => {
                    self.ctx.metrics.fleet_state_watch(from == compacted);
                    s
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the fleet state; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            // Compacted past our revision: read the state
                            // (changes since are in the history from the
                            // compaction on), then watch from there.
                            if resp.compact_revision() > 0 {
                                compacted = resp.compact_revision();
                                tracing::info!(
                                    from,
                                    compacted,
                                    "fleet state watch started before etcd's compaction; reading the state and watching from the compaction"
                                );
                            }
                            if let Ok(Some(state)) = self.coord.state().await
                                && state.revision > self.applied.load(Ordering::Acquire)
                            {
                                self.apply(state).await;
                            }
                            break;
                        }
                        for event in resp.events() {
                            let Some(kv) = event.kv() else { continue };
                            if event.event_type() != EventType::Put
                                || kv.mod_revision() <= self.applied.load(Ordering::Acquire)
                            {
                                continue;
                            }
                            match serde_json::from_slice::<FleetState>(kv.value()) {
                                Ok(value) => {
                                    self.apply(Versioned {
                                        value,
                                        revision: kv.mod_revision(),
                                    })
                                    .await
                                }
                                Err(e) => {
                                    tracing::error!(error = %e, revision = kv.mod_revision(), "unreadable fleet state; ignored")
                                }
                            }
                        }
                    }
                    Ok(None) => break,
                    // Shutting down: the connection goes with the proxy.
                    Err(e) if self.stopping() => {
                        tracing::debug!(error = %e, "fleet state watch ended at shutdown");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "fleet state watch broke; reconnecting");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Publishes `state` (table and backends in one snapshot), drains what
    /// older tables routed, and acknowledges it.
    /// Reads the state and publishes it if it is newer than what this
    /// proxy published.
    async fn catch_up(&self) -> Result<(), CoordError> {
        let state = self.coord.state().await?.ok_or(CoordError::NoState)?;
        self.apply(state).await;
        Ok(())
    }

    async fn apply(&self, state: Versioned<FleetState>) {
        // One at a time (the watcher and a rejoin may both apply), and never
        // an older state after a newer one.
        let _one = self.applying.lock().await;
        if state.revision <= self.applied.load(Ordering::Acquire) {
            return;
        }
        let initial = match rebalance::from_fleet(&state.value) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, revision = state.revision, "the fleet state cannot be served; keeping the running map");
                return;
            }
        };
        let epoch = Epoch(u64::try_from(state.revision).unwrap_or(0));
        let table = match &initial.resume {
            Some(r) => r.table(epoch),
            None => RoutingTable::compile(initial.map.clone(), epoch),
        };
        // Held before the table showing them `Migrating` is published.
        self.ctx.held_moves.set(unconfirmed(&state.value));
        let (old_backends, next) = self.ctx.rebuild_backends(&initial.map);
        let old_table = match self.ctx.snapshot.publish(table, Some(next.clone())) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, revision = state.revision, "cannot publish the fleet state");
                return;
            }
        };
        let added = next.added_since(&old_backends);
        health::spawn_all(&added, self.shutdown.subscribe());
        crate::backend::pg::spawn_reapers(&added, &self.shutdown);
        old_backends.retire_missing(&next);
        if !added.is_empty() {
            self.proxy.sync_backend_acl();
        }
        self.ctx.metrics.map_epoch(epoch.0);
        drain(&old_table, &next).await;
        self.applied.store(state.revision, Ordering::Release);
        if let Err(e) = self.register().await {
            tracing::warn!(error = %e, "cannot acknowledge the fleet state; the lease keeper retries");
        }
        tracing::info!(
            revision = state.revision,
            rebalance = state.value.rebalance.is_some(),
            "published the fleet state"
        );
        self.rebalancer
            .fleet_state(&state, self.leader.load(Ordering::Acquire));
    }

    /// Runs for the mover's election while this proxy lives; the elected
    /// proxy starts the mover for a recorded rebalance.
    async fn campaign(self: Arc<Self>) {
        let mut leases = self.lease.subscribe();
        while !self.stopping() {
            let lease = *leases.borrow_and_update();
            let mut client = self.coord.client();
            // A campaign under a lease that expired meanwhile cannot win
            // (its key went with the lease) but may wait in etcd until the
            // leader changes: campaign again under the new lease at once.
            let won = tokio::select! {
                won = client.campaign(self.coord.mover_election(), self.id.clone(), lease) => won,
                _ = leases.changed() => continue,
            };
            match won {
                Ok(_) if *self.lease.borrow() == lease => {
                    self.leader.store(true, Ordering::Release);
                    self.rebalancer.set_fleet_leader(true);
                    self.ctx.metrics.fleet_leader(true);
                    tracing::info!(id = %self.id, "elected to run the fleet's rebalance mover");
                    // Only a state this proxy has published (the backends
                    // of the plan's shards installed, its table in force):
                    // a newer one reaches `fleet_state` from the watch once
                    // applied, with the leader flag set above.
                    if let Ok(Some(state)) = self.coord.state().await
                        && state.revision <= self.applied.load(Ordering::Acquire)
                    {
                        self.rebalancer.fleet_state(&state, true);
                    }
                    // Leadership lasts as long as the lease.
                    let _ = leases.changed().await;
                    self.leader.store(false, Ordering::Release);
                    self.rebalancer.set_fleet_leader(false);
                    self.ctx.metrics.fleet_leader(false);
                    tracing::warn!(id = %self.id, "lost the mover's election with the lease");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "mover election: retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Says in the member key whether this proxy serves clients, so that
    /// the mover, on whichever proxy it runs, yields to them (see
    /// `rebalance::clients_served`): set within a sample of the first commands,
    /// cleared after [`SERVING_HOLD`] without any (a bursty client does not
    /// rewrite the key at each pause). One etcd write per change.
    async fn report_serving(self: Arc<Self>) {
        let mut last = None::<Instant>;
        while !self.stopping() {
            tokio::time::sleep(rebalance::CLIENTS_SAMPLE).await;
            if rebalance::clients_served() {
                last = Some(Instant::now());
            }
            let serving = last.is_some_and(|t| t.elapsed() < SERVING_HOLD);
            if serving != self.serving.swap(serving, Ordering::Relaxed) {
                // On failure the next lease renewal writes it.
                if let Err(e) = self.register().await {
                    tracing::debug!(error = %e, "cannot say in the member key whether clients are served");
                }
            }
        }
    }

    /// Keeps the fleet-size gauge and STATUS's list of proxies current.
    async fn count_members(self: Arc<Self>) {
        while !self.stopping() {
            if let Ok(members) = self.coord.members().await {
                self.ctx.metrics.fleet_proxies(members.len());
                let serving = members.iter().filter(|m| m.serving).count();
                self.ctx.metrics.fleet_proxies_serving(serving);
                self.rebalancer.set_fleet_members(members);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// How long a proxy still says it serves clients after its last busy
/// sample (see [`Membership::report_serving`]).
const SERVING_HOLD: Duration = Duration::from_secs(2);

/// This proxy's default fleet id: host name, listen address and pid. The
/// host name keeps containers apart (each is pid 1 on the same address).
fn default_id(addr: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        format!("{addr}-{}", std::process::id())
    } else {
        format!("{host}/{addr}-{}", std::process::id())
    }
}

/// Waits until nothing routed with `old` can still reach a backend: no
/// snapshot holds the table any more, then a `PING` went down every
/// multiplexed connection to every primary behind what was queued.
async fn drain(old: &Arc<RoutingTable>, next: &crate::backend::Backends) {
    let started = Instant::now();
    while Arc::strong_count(old) > 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if started.elapsed() > Duration::from_secs(30) {
            tracing::warn!(
                holders = Arc::strong_count(old) - 1,
                "still waiting for commands routed by an older table (a long script or transaction?)"
            );
        }
    }
    for shard in next.shards() {
        for _ in 0..10 {
            match shard.primary.barrier().await {
                // Fenced (this proxy is catching up after a lost lease):
                // what was queued before the PING was failed unsent with
                // it, or written before the fence closed.
                Ok(()) | Err(crate::error::BackendError::Fenced { .. }) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

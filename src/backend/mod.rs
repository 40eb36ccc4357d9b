//! Running commands on backend endpoints.
//!
//! Per endpoint: a few long-lived multiplexed connections per protocol version
//! ([`mux::MuxConn`]) carry pipelined requests of many clients, a deadpool pool
//! of dedicated connections ([`dedicated`]) serves stateful commands, and a
//! health checker ([`health`]) keeps the endpoint's health and latency
//! estimate current. [`Backends`] maps every shard of the map to its
//! endpoints and picks the endpoint for a read by the map's read policy.
//! With `options.coalesce_reads`, identical reads in flight to one endpoint
//! share one request ([`coalesce`], per serving thread and protocol).

pub mod acl;
pub mod breaker;
pub mod cache;
pub mod coalesce;
pub mod connect;
pub mod copy;
pub mod dedicated;
pub mod fence;
pub mod health;
pub mod lag;
pub mod migrate;
pub mod mux;
pub mod pg;
pub mod tracking;

mod backends;
use backends::Identity;
pub use backends::{Backends, OwnWrites, ReadFloor, ShardBackends};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use crate::backend::pg::PgEndpoint;
use crate::error::BackendError;
use crate::metrics::EndpointMetrics;
use crate::protocol::Protocol;
use crate::shardmap::{Options, ShardKind};
use dedicated::{DedicatedPool, PooledConn};
use mux::{MuxConn, ReplyRx};

/// A Redis logical database (`SELECT n`): part of the key of every backend
/// connection, since a connection's database is connection state. A
/// newtype so that it never mixes with shard or slot numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Db(pub u32);

/// What a backend connection must be to carry a client's request: the
/// protocol version it speaks and the database it has selected. Every
/// connection (multiplexed or dedicated) is kept under this key; database
/// 0's multiplexed connections are made up front, the others' on first use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Wire {
    pub proto: Protocol,
    pub db: Db,
}

impl From<Protocol> for Wire {
    /// Database 0 (every client's database until it sends `SELECT`).
    fn from(proto: Protocol) -> Wire {
        Wire { proto, db: Db(0) }
    }
}

/// Whether an endpoint is a shard's primary or one of its replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

/// What every connection task of one endpoint shares.
pub struct EndpointState {
    pub addr: String,
    pub shard: String,
    pub role: Role,
    pub region: String,
    pub zone: Option<String>,
    pub options: Options,
    /// Credentials and TLS of the endpoint's shard.
    pub link: Arc<crate::shardmap::Link>,
    pub metrics: EndpointMetrics,
    /// Set by the health checker; cleared at once when a connection fails.
    healthy: AtomicBool,
    /// Smoothed health-check round trip, microseconds.
    latency_us: AtomicU64,
    /// Set when a map reload removed the endpoint: its health checker stops.
    retired: AtomicBool,
    /// What the endpoint was built from, to tell on reload whether it can
    /// be kept (with its connections and pools) or must be rebuilt; `None`
    /// for a removed shard's placeholder (never kept).
    identity: Option<Identity>,
    /// Fails requests fast while the endpoint is not serving.
    pub breaker: breaker::Breaker,
    /// Taken (first come, first served: tokio's mutex is fair) from before a
    /// blocking command's dedicated connection is checked out until the
    /// command is written, so that blocking commands of different clients
    /// reach the backend in the order they arrived, and Redis wakes them in
    /// that order. Without it, a client that got a pooled connection would
    /// overtake one whose connection was still being made.
    pub blocking_order: tokio::sync::Mutex<()>,
    /// The backend ACL users could not be installed here (logged once per
    /// change; see [`acl`]).
    acl_failing: AtomicBool,
    /// Health checks in a row that got no answer in time (see `health`).
    pub health_timeouts: std::sync::atomic::AtomicU32,
    /// A primary's replication offsets over time (written by its health
    /// check); see [`lag`].
    pub offsets: Arc<lag::OffsetLog>,
    /// A replica's view of its primary's [`lag::OffsetLog`], set whenever
    /// backends are built (a kept replica follows a new primary).
    pub primary_offsets: arc_swap::ArcSwapOption<lag::OffsetLog>,
    /// Replication positions for read-your-writes: a primary's probes, a
    /// replica's applied position (see [`lag::Positions`]).
    pub positions: Arc<lag::Positions>,
    /// The `redis_version` a Redis endpoint reported when its health
    /// checker connected (HELLO answers the lowest of the primaries').
    pub version: arc_swap::ArcSwapOption<String>,
    /// This proxy's fleet lease fence (the context's, shared by every
    /// endpoint of its backends): checked again just before a request is
    /// written to the backend, so that one routed before the proxy was
    /// frozen past its lease is not written after (see `fence::Fence`).
    pub lease_fence: Arc<fence::Fence>,
}

impl EndpointState {
    /// [`BackendError::Fenced`] if this proxy's fleet lease fence is closed
    /// now: a request about to be sent here must not be.
    pub fn check_lease_fence(&self) -> Result<(), BackendError> {
        if self.lease_fence.blocks_now() {
            return Err(BackendError::Fenced {
                addr: self.addr.clone(),
            });
        }
        Ok(())
    }

    /// Whether a map reload removed this endpoint.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// Whether reads may be sent here.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Health-check verdict (logs transitions once).
    pub fn set_healthy(&self, healthy: bool, why: &str) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            if healthy {
                tracing::info!(endpoint = %self.addr, shard = %self.shard, role = self.role.as_str(), "endpoint healthy");
            } else {
                tracing::warn!(endpoint = %self.addr, shard = %self.shard, role = self.role.as_str(), reason = why, "endpoint unhealthy; reads skip it");
            }
        }
        self.metrics.set_healthy(healthy);
    }

    /// Smoothed latency estimate in microseconds (0 = not measured yet).
    pub fn latency_us(&self) -> u64 {
        self.latency_us.load(Ordering::Relaxed)
    }

    fn record_latency(&self, sample_us: u64) {
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample_us
        } else {
            (old * 7 + sample_us) / 8
        };
        self.latency_us.store(new, Ordering::Relaxed);
    }

    /// A connection to the endpoint failed: a replica leaves read rotation at
    /// once (the health checker brings it back).
    pub fn connection_failed(&self, err: &BackendError) {
        if self.role == Role::Replica {
            self.set_healthy(false, &err.to_string());
        }
    }
}

/// One endpoint: its shared state and its connections.
pub struct Endpoint {
    pub state: Arc<EndpointState>,
    conns: Conns,
    /// The invalidation stream of a Redis primary (connected on first
    /// use): the near cache's and the clients' `CLIENT TRACKING`.
    pub tracking: Option<Arc<tracking::TrackingConn>>,
    /// The near cache of a Redis primary, when `options.near_cache_bytes`
    /// turns it on.
    pub cache: Option<cache::NearCache>,
}

/// One request's way to an endpoint (see [`Endpoint::send`]).
enum Conn<'a> {
    Mux(&'a MuxConn),
    /// A connection of another database than 0 (taken from the map of
    /// lazily made ones: a handle, cheap to clone).
    OtherDb(MuxConn),
    Postgres(&'a PgEndpoint),
    /// A database other than 0 on a postgres shard.
    NoDb,
    Removed,
}

/// The connections of an endpoint's databases other than 0, made on first
/// use (see [`Wire`]).
#[derive(Default)]
struct OtherDbs {
    /// Multiplexed connections, by connection key and serving thread.
    mux: std::sync::Mutex<HashMap<(Wire, usize), Vec<MuxConn>>>,
    /// Dedicated pools (the shard map's credentials), by connection key.
    pools: std::sync::Mutex<HashMap<Wire, DedicatedPool>>,
}

/// How requests reach the endpoint, by shard kind.
enum Conns {
    Redis {
        /// Per serving thread (see [`crate::workers`]), the connections
        /// that thread's clients use.
        mux_resp2: Vec<Vec<MuxConn>>,
        mux_resp3: Vec<Vec<MuxConn>>,
        /// Per serving thread, its coalesced reads in flight (see
        /// [`coalesce`]; empty until `options.coalesce_reads` is used).
        flights_resp2: Vec<Arc<coalesce::Flights>>,
        flights_resp3: Vec<Arc<coalesce::Flights>>,
        pool_resp2: DedicatedPool,
        pool_resp3: DedicatedPool,
        /// Connections of databases other than 0 (boxed: most
        /// deployments use database 0 only).
        other_dbs: Box<OtherDbs>,
        /// Pools of connections logged in as a backend ACL user (scripts
        /// and transactions), by proxy user and connection key, made on
        /// first use.
        user_pools: std::sync::Mutex<HashMap<(String, Wire), DedicatedPool>>,
    },
    Postgres(PgEndpoint),
    /// A shard a finished rebalance removed: no connections; nothing routes
    /// here, and a request that did would fail at once.
    Removed,
}

impl Endpoint {
    fn new(state: Arc<EndpointState>, kind: ShardKind, dsn: &str, slots: u32) -> Endpoint {
        let conns = match kind {
            ShardKind::Redis => {
                let n = state.options.connections_per_endpoint.max(1);
                let workers = crate::workers::handles();
                let group = |p: Protocol, on| {
                    (0..n)
                        .map(|_| MuxConn::spawn(state.clone(), p.into(), on))
                        .collect()
                };
                let muxes = |p| -> Vec<Vec<MuxConn>> {
                    if workers.is_empty() {
                        vec![group(p, None)]
                    } else {
                        workers.iter().map(|h| group(p, Some(h))).collect()
                    }
                };
                let flights = || -> Vec<Arc<coalesce::Flights>> {
                    (0..workers.len().max(1))
                        .map(|_| Arc::new(coalesce::Flights::new(&state.addr)))
                        .collect()
                };
                Conns::Redis {
                    mux_resp2: muxes(Protocol::Resp2),
                    mux_resp3: muxes(Protocol::Resp3),
                    flights_resp2: flights(),
                    flights_resp3: flights(),
                    pool_resp2: dedicated::pool(state.clone(), Protocol::Resp2.into()),
                    pool_resp3: dedicated::pool(state.clone(), Protocol::Resp3.into()),
                    other_dbs: Box::default(),
                    user_pools: std::sync::Mutex::new(HashMap::new()),
                }
            }
            ShardKind::Postgres => Conns::Postgres(PgEndpoint::new(state.clone(), dsn, slots)),
        };
        let tracking = (kind == ShardKind::Redis && state.role == Role::Primary).then(|| {
            Arc::new(tracking::TrackingConn::new(
                state.clone(),
                crate::workers::handles().first(),
            ))
        });
        let cache = tracking
            .as_ref()
            .filter(|_| state.options.near_cache_bytes > 0)
            .map(|t| {
                cache::NearCache::new(
                    t.clone(),
                    &state.shard,
                    state.options.near_cache_bytes,
                    state.options.near_cache_max_staleness,
                )
            });
        Endpoint {
            state,
            conns,
            tracking,
            cache,
        }
    }

    /// The PostgreSQL side of a postgres endpoint; `None` for Redis.
    pub fn postgres(&self) -> Option<&PgEndpoint> {
        match &self.conns {
            Conns::Postgres(pg) => Some(pg),
            Conns::Redis { .. } | Conns::Removed => None,
        }
    }

    /// Sends one request frame over the multiplexed connection (Redis) or
    /// lane (PostgreSQL) assigned to `client` (a client always uses the same
    /// one per endpoint, so its requests to one endpoint stay in order).
    pub fn send(&self, wire: impl Into<Wire>, client: u64, frame: &Bytes) -> ReplyRx {
        let wire = wire.into();
        match self.conn_for(wire, client) {
            Conn::Mux(mux) => mux.send(frame),
            Conn::OtherDb(mux) => mux.send(frame),
            Conn::Postgres(pg) => pg.send(wire.proto, client, frame.clone()),
            Conn::NoDb => self.refuse(self.no_db(wire.db)),
            Conn::Removed => self.refuse(self.removed()),
        }
    }

    /// [`Endpoint::send`] of a request that `encode` appends (one complete
    /// RESP request): on a Redis endpoint straight to the connection's
    /// outgoing bytes, with no frame of its own.
    pub fn send_encoded(
        &self,
        wire: impl Into<Wire>,
        client: u64,
        encode: impl FnOnce(&mut BytesMut),
    ) -> ReplyRx {
        let wire = wire.into();
        match self.conn_for(wire, client) {
            Conn::Mux(mux) => mux.send_encoded(encode),
            Conn::OtherDb(mux) => mux.send_encoded(encode),
            Conn::Postgres(pg) => {
                let mut frame = BytesMut::new();
                encode(&mut frame);
                pg.send(wire.proto, client, frame.freeze())
            }
            Conn::NoDb => self.refuse(self.no_db(wire.db)),
            Conn::Removed => self.refuse(self.removed()),
        }
    }

    /// [`Endpoint::send`] of a read that may share one backend request
    /// with identical reads in flight from this serving thread (see
    /// [`coalesce`]; `started`: when it was routed). The request of a read
    /// that leads goes down `client`'s own connection, as it would alone.
    /// PostgreSQL endpoints do not coalesce (`None`).
    /// Flights are kept for database 0 only (they are keyed by request
    /// bytes): a read of another database goes alone.
    pub fn read_coalesced(
        &self,
        wire: Wire,
        client: u64,
        frame: &Bytes,
        started: std::time::Instant,
        may_join: coalesce::MayJoin,
    ) -> (ReplyRx, Option<coalesce::Coalesced>) {
        let proto = wire.proto;
        if wire.db != Db(0) {
            return (self.send(wire, client, frame), None);
        }
        let flights = match (&self.conns, proto) {
            (Conns::Redis { flights_resp2, .. }, Protocol::Resp2) => flights_resp2,
            (Conns::Redis { flights_resp3, .. }, Protocol::Resp3) => flights_resp3,
            _ => return (self.send(proto, client, frame), None),
        };
        let Conn::Mux(mux) = self.conn_for(wire, client) else {
            return (self.send(proto, client, frame), None);
        };
        let flights = &flights[crate::workers::current() % flights.len()];
        let (rx, how) = flights.read(
            frame,
            started,
            may_join,
            |landing| mux.send_flight(frame, landing),
            || mux.send(frame),
        );
        self.state.metrics.coalesced_read(how as usize);
        (rx, Some(how))
    }

    /// Where a request of `client` goes: on a Redis endpoint, the
    /// multiplexed connection that client uses on this serving thread (of
    /// its database: another database than 0 gets its connections on
    /// first use).
    fn conn_for(&self, wire: Wire, client: u64) -> Conn<'_> {
        let conns = match (&self.conns, wire.proto) {
            (Conns::Redis { other_dbs, .. }, _) if wire.db != Db(0) => {
                return Conn::OtherDb(self.other_db(&other_dbs.mux, wire, client));
            }
            (Conns::Redis { mux_resp2, .. }, Protocol::Resp2) => mux_resp2,
            (Conns::Redis { mux_resp3, .. }, Protocol::Resp3) => mux_resp3,
            (Conns::Postgres(_), _) if wire.db != Db(0) => return Conn::NoDb,
            (Conns::Postgres(pg), _) => return Conn::Postgres(pg),
            (Conns::Removed, _) => return Conn::Removed,
        };
        let group = &conns[crate::workers::current() % conns.len()];
        Conn::Mux(&group[(client as usize) % group.len()])
    }

    /// The multiplexed connection of `client` in a database other than 0
    /// on this serving thread, made (with its group) on first use.
    fn other_db(
        &self,
        mux_dbs: &std::sync::Mutex<HashMap<(Wire, usize), Vec<MuxConn>>>,
        wire: Wire,
        client: u64,
    ) -> MuxConn {
        let workers = crate::workers::handles();
        let worker = crate::workers::current() % workers.len().max(1);
        let mut conns = mux_dbs.lock().unwrap_or_else(|p| p.into_inner());
        let group = conns.entry((wire, worker)).or_insert_with(|| {
            let n = self.state.options.connections_per_endpoint.max(1);
            (0..n)
                .map(|_| MuxConn::spawn(self.state.clone(), wire, workers.get(worker)))
                .collect()
        });
        group[(client as usize) % group.len()].clone()
    }

    /// The reply of a request that cannot be sent: `err` at once.
    fn refuse(&self, err: BackendError) -> ReplyRx {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(Err(err));
        rx
    }

    /// A postgres shard asked for another database than 0.
    fn no_db(&self, db: Db) -> BackendError {
        BackendError::Unsupported {
            addr: self.state.addr.clone(),
            reason: format!(
                "shard {} is a PostgreSQL shard and has database 0 only, not {}",
                self.state.shard, db.0
            ),
        }
    }

    fn removed(&self) -> BackendError {
        BackendError::Unavailable {
            addr: self.state.addr.clone(),
            reason: format!("shard {} was removed by a rebalance", self.state.shard),
        }
    }

    /// Waits until every request queued on this endpoint's multiplexed
    /// connections, of every database (a postgres endpoint: its lanes),
    /// before the call has
    /// been answered: a `PING` goes down each connection behind them (Redis
    /// answers a connection in order, a lane runs its jobs in order).
    /// The rebalancer uses it so that no write routed by an older table can
    /// land on a source after its keys start moving. Errors if a connection
    /// could not carry the `PING` (the caller retries).
    pub async fn barrier(&self) -> Result<(), BackendError> {
        let (mux_resp2, mux_resp3, other_dbs) = match &self.conns {
            Conns::Redis {
                mux_resp2,
                mux_resp3,
                other_dbs,
                ..
            } => (mux_resp2, mux_resp3, other_dbs),
            Conns::Postgres(pg) => return pg.barrier().await,
            Conns::Removed => return Ok(()),
        };
        const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
        let mut pings: Vec<ReplyRx> = mux_resp2
            .iter()
            .chain(mux_resp3)
            .flatten()
            .map(|m| m.send(PING))
            .collect();
        // The multiplexed connections of the other databases carry queued
        // requests too (a write to database 5 routed before the window).
        {
            let other = other_dbs.mux.lock().unwrap_or_else(|p| p.into_inner());
            pings.extend(other.values().flatten().map(|m| m.send(PING)));
        }
        for rx in pings {
            match rx.await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(BackendError::ConnectionLost {
                        addr: self.state.addr.clone(),
                        reason: "connection task stopped".to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The kind of shard this endpoint serves (`None`: a removed shard).
    pub fn kind(&self) -> Option<ShardKind> {
        match self.conns {
            Conns::Redis { .. } => Some(ShardKind::Redis),
            Conns::Postgres(_) => Some(ShardKind::Postgres),
            Conns::Removed => None,
        }
    }

    /// Takes a dedicated connection from this endpoint's pool (logged in
    /// with the shard map's credentials).
    pub async fn dedicated(&self, wire: impl Into<Wire>) -> Result<PooledConn, BackendError> {
        let wire = wire.into();
        let pool = match (&self.conns, wire.proto) {
            (Conns::Redis { other_dbs, .. }, _) if wire.db != Db(0) => {
                let mut pools = other_dbs.pools.lock().unwrap_or_else(|p| p.into_inner());
                pools
                    .entry(wire)
                    .or_insert_with(|| dedicated::pool(self.state.clone(), wire))
                    .clone()
            }
            (Conns::Redis { pool_resp2, .. }, Protocol::Resp2) => pool_resp2.clone(),
            (Conns::Redis { pool_resp3, .. }, Protocol::Resp3) => pool_resp3.clone(),
            _ => return Err(self.no_dedicated()),
        };
        self.take(&pool).await
    }

    /// Takes a dedicated connection logged in as the backend ACL user of
    /// `proxy_user`: what a client's scripts and transactions run on, so
    /// that Redis enforces the client's rules and the proxy's refusals on
    /// the commands a script runs (see [`acl`]).
    pub async fn dedicated_as(
        &self,
        wire: Wire,
        users: &Arc<acl::BackendAcl>,
        proxy_user: &str,
    ) -> Result<PooledConn, BackendError> {
        let Conns::Redis { user_pools, .. } = &self.conns else {
            return Err(self.no_dedicated());
        };
        let pool = {
            let mut pools = user_pools.lock().unwrap_or_else(|p| p.into_inner());
            match pools.get(&(proxy_user.to_owned(), wire)) {
                Some(p) => p.clone(),
                None => {
                    let p = dedicated::user_pool(
                        self.state.clone(),
                        wire,
                        users.clone(),
                        proxy_user.to_owned(),
                    );
                    pools.insert((proxy_user.to_owned(), wire), p.clone());
                    p
                }
            }
        };
        self.take(&pool).await
    }

    fn no_dedicated(&self) -> BackendError {
        match self.conns {
            Conns::Removed => self.removed(),
            _ => BackendError::Unsupported {
                addr: self.state.addr.clone(),
                reason: "postgres shards have no dedicated connections (MULTI/EXEC, WATCH, blocking commands and scripts need a Redis shard)".to_owned(),
            },
        }
    }

    async fn take(&self, pool: &DedicatedPool) -> Result<PooledConn, BackendError> {
        dedicated::checkout(pool).await.map_err(|e| match e {
            deadpool::managed::PoolError::Backend(e) => e,
            other => BackendError::PoolExhausted {
                addr: self.state.addr.clone(),
                reason: other.to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shardmap::ShardMap;

    #[tokio::test]
    async fn a_read_after_own_writes_goes_only_to_a_replica_that_applied_them() {
        let map = ShardMap::from_yaml(
            "read_policy: prefer-replica\nregions:\n  - name: r\noptions:\n  read_your_writes: true\nshards:\n  - name: s\n    region: r\n    primary: 127.0.0.1:1\n    replicas: [127.0.0.1:2]\n",
        )
        .unwrap();
        let b = Backends::new(&map, Some("r"), None);
        let s = &b.shards()[0];
        assert!(s.reads_replicas());
        let replica = &s.replicas[0];
        let is = |ep: &Arc<Endpoint>, want: &Arc<Endpoint>| Arc::ptr_eq(ep, want);
        // Not healthy yet: the primary, whatever the floor.
        assert!(is(s.read_endpoint_after(0, ReadFloor::Any), &s.primary));
        replica.state.set_healthy(true, "");
        replica.state.positions.set_applied(100);
        assert!(is(s.read_endpoint_after(0, ReadFloor::Any), replica));
        assert!(is(
            s.read_endpoint_after(0, ReadFloor::AtLeast(100)),
            replica
        ));
        assert!(is(
            s.read_endpoint_after(0, ReadFloor::Primary(OwnWrites::InFlight)),
            &s.primary
        ));
        // Behind the floor: the primary, and the replica is asked for a
        // fresh probe.
        assert!(is(
            s.read_endpoint_after(0, ReadFloor::AtLeast(101)),
            &s.primary
        ));
        let asked = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            replica.state.positions.wanted(),
        )
        .await;
        assert!(asked.is_ok(), "a probe of the replica was wished for");
    }
}

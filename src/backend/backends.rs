//! The endpoints of a shard map: per shard its primary and replicas and
//! their read order ([`ShardBackends`]), built from a map and rebuilt on a
//! reload or a rebalance keeping the endpoints that did not change
//! ([`Backends`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::fence::Fence;
use super::{Conns, Endpoint, EndpointState, Role, breaker};
use crate::metrics::EndpointMetrics;
use crate::router::ShardId;
use crate::shardmap::{Options, ReadPolicy, SentinelView, ShardKind, ShardMap, ShardPhase};

/// The endpoints of one shard and its read order.
pub struct ShardBackends {
    pub name: String,
    /// Whether the shard is a placement candidate, draining, or a removed
    /// placeholder (see [`ShardPhase`]).
    pub phase: ShardPhase,
    /// Redis or PostgreSQL.
    pub kind: ShardKind,
    pub primary: Arc<Endpoint>,
    /// The shard's replicas (read policy aside).
    pub replicas: Vec<Arc<Endpoint>>,
    /// Endpoints eligible for reads, in tiers of preference (the first tier
    /// with a healthy endpoint wins; within a tier, clients are spread).
    read_tiers: Vec<Vec<Arc<Endpoint>>>,
    /// Whether a replica is among `read_tiers`.
    reads_replicas: bool,
}

impl ShardBackends {
    /// The placeholder of a shard a finished rebalance removed: its old
    /// endpoints are dropped (their connections close).
    fn removed(s: &crate::shardmap::Shard, options: &Options) -> ShardBackends {
        let addr = match s.kind {
            ShardKind::Redis => s.primary.addr.clone(),
            ShardKind::Postgres => crate::shardmap::redact_dsn(&s.primary.addr),
        };
        let mut state = endpoint_state(
            &s.name,
            addr,
            Role::Primary,
            s.region.clone(),
            s.zone.clone(),
            options.clone(),
            s.primary.link.clone(),
        );
        state.healthy = AtomicBool::new(false);
        state.retired = AtomicBool::new(true);
        let state = Arc::new(state);
        state.metrics.set_healthy(false);
        ShardBackends {
            name: s.name.clone(),
            phase: s.phase,
            kind: s.kind,
            primary: Arc::new(Endpoint {
                state,
                conns: Conns::Removed,
                tracking: None,
                cache: None,
            }),
            replicas: Vec::new(),
            read_tiers: Vec::new(),
            reads_replicas: false,
        }
    }

    /// The endpoint a read goes to: the first healthy one by the read policy,
    /// the primary when none is healthy.
    pub fn read_endpoint(&self, client: u64) -> &Arc<Endpoint> {
        self.read_endpoint_after(client, ReadFloor::Any)
    }

    /// [`ShardBackends::read_endpoint`] for a read that must see the
    /// client's own writes (`options.read_your_writes`): a replica serves
    /// it only if its applied position has reached `floor`; one that has
    /// not is asked for a fresh probe (see [`lag::Positions`]), and the
    /// read goes on down the tiers, to the primary at the latest.
    pub fn read_endpoint_after(&self, client: u64, floor: ReadFloor) -> &Arc<Endpoint> {
        let need = match floor {
            ReadFloor::Any => 0,
            ReadFloor::AtLeast(p) => p,
            ReadFloor::Primary(why) => {
                self.primary
                    .state
                    .metrics
                    .own_write_primary_read(why.as_str());
                return &self.primary;
            }
        };
        let mut behind = false;
        for tier in &self.read_tiers {
            let n = tier.len();
            for i in 0..n {
                let ep = &tier[(client as usize + i) % n];
                if ep.state.role == Role::Primary {
                    if behind {
                        ep.state
                            .metrics
                            .own_write_primary_read(OwnWrites::ReplicasBehind.as_str());
                    }
                    return ep;
                }
                if !ep.state.is_healthy() {
                    continue;
                }
                if need == 0 || ep.state.positions.applied() >= need {
                    return ep;
                }
                ep.state.positions.want();
                behind = true;
            }
        }
        if behind {
            self.primary
                .state
                .metrics
                .own_write_primary_read(OwnWrites::ReplicasBehind.as_str());
        }
        &self.primary
    }

    /// Whether the read policy may send reads to a replica of this shard
    /// (if not, read-your-writes has nothing to do).
    pub fn reads_replicas(&self) -> bool {
        self.reads_replicas
    }
}

/// What a read must have seen of its client's own writes (see
/// [`ShardBackends::read_endpoint_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFloor {
    /// Nothing: the client wrote nothing a replica could miss.
    Any,
    /// A replica's applied replication position must be at least this.
    AtLeast(u64),
    /// Only the primary is sure to have the client's writes.
    Primary(OwnWrites),
}

/// Why a read went to the primary because of its client's own writes
/// (the `reason` label of `shardgate_read_your_writes_primary_reads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnWrites {
    /// A write of the client was not answered yet (pipelined).
    InFlight,
    /// No probe of the primary was sent since the client's last write was
    /// answered, so no position is known to cover it yet.
    Unconfirmed,
    /// The position is known, but no replica has applied it yet.
    ReplicasBehind,
}

impl OwnWrites {
    /// Metrics label (one of [`crate::metrics::OWN_WRITE_REASONS`]).
    pub fn as_str(self) -> &'static str {
        match self {
            OwnWrites::InFlight => "in_flight",
            OwnWrites::Unconfirmed => "unconfirmed",
            OwnWrites::ReplicasBehind => "replicas_behind",
        }
    }
}

/// Every shard's endpoints, indexed by [`ShardId`].
pub struct Backends {
    shards: Vec<ShardBackends>,
    endpoints: Vec<Arc<Endpoint>>,
    /// The map as written (sentinel shards unresolved) the backends were
    /// built from, so that a Sentinel failover can rebuild them with new
    /// addresses and nothing else changed.
    source: Arc<ShardMap>,
    /// The fence every endpoint checks before it writes (see
    /// [`EndpointState::lease_fence`]): made with the first backends,
    /// handed on by every rebuild.
    lease_fence: Arc<Fence>,
}

impl Backends {
    /// Builds endpoints (connections open lazily) for every shard of `map`
    /// (sentinel shards keep their placeholder address).
    /// `region`/`zone` locate this proxy, for the `nearest` read policy.
    pub fn new(map: &ShardMap, region: Option<&str>, zone: Option<&str>) -> Backends {
        Backends::build(map, &SentinelView::default(), region, zone, None)
    }

    /// [`Backends::new`] with the primaries and replicas of sentinel shards
    /// taken from `view`.
    pub fn with_view(
        map: &ShardMap,
        view: &SentinelView,
        region: Option<&str>,
        zone: Option<&str>,
    ) -> Backends {
        Backends::build(map, view, region, zone, None)
    }

    /// Like [`Backends::with_view`], but every endpoint of `previous` whose
    /// identity (kind, address, shard, role, location, options, credentials,
    /// TLS) is unchanged is kept as it is, with its connections, pools,
    /// health and circuit breaker. Used by a map reload, the rebalancer, a
    /// fleet's publish and a Sentinel failover.
    pub fn rebuild(
        previous: &Backends,
        map: &ShardMap,
        view: &SentinelView,
        region: Option<&str>,
        zone: Option<&str>,
    ) -> Backends {
        Backends::build(map, view, region, zone, Some(previous))
    }

    /// The map (as written) these backends were built from.
    pub fn source(&self) -> &ShardMap {
        &self.source
    }

    /// Whether the sentinel shards' endpoints are the ones `view` names
    /// (primary address and set of replica addresses): if not, a failover
    /// (or a publish that raced with one) must be applied.
    pub fn follows(&self, view: &SentinelView) -> bool {
        self.source.shards.iter().zip(&self.shards).all(|(s, b)| {
            let Some(found) = s.sentinel.as_ref().and_then(|src| view.get(src)) else {
                return true;
            };
            if b.phase == ShardPhase::Removed {
                return true;
            }
            if b.primary.state.addr != found.primary {
                return false;
            }
            let mut want: Vec<&str> = found
                .replicas
                .iter()
                .map(String::as_str)
                .filter(|r| *r != found.primary)
                .collect();
            let mut have: Vec<&str> = b.replicas.iter().map(|e| e.state.addr.as_str()).collect();
            want.sort_unstable();
            have.sort_unstable();
            want == have
        })
    }

    /// Endpoints of `self` that `previous` did not have (new health checks).
    pub fn added_since(&self, previous: &Backends) -> Vec<Arc<Endpoint>> {
        self.endpoints
            .iter()
            .filter(|e| !previous.endpoints.iter().any(|p| Arc::ptr_eq(p, e)))
            .cloned()
            .collect()
    }

    /// Marks the endpoints of `self` that `next` no longer has as retired
    /// (their health checks stop; connections close when the last request
    /// holding them is done). Returns how many.
    pub fn retire_missing(&self, next: &Backends) -> usize {
        let mut n = 0;
        for e in &self.endpoints {
            if !next.endpoints.iter().any(|x| Arc::ptr_eq(x, e)) {
                e.state.retired.store(true, Ordering::Relaxed);
                n += 1;
            }
        }
        n
    }

    fn build(
        source: &ShardMap,
        view: &SentinelView,
        region: Option<&str>,
        zone: Option<&str>,
        previous: Option<&Backends>,
    ) -> Backends {
        let lease_fence = previous.map_or_else(Arc::default, |p| p.lease_fence.clone());
        let resolved = crate::shardmap::sentinel::resolve(source, view);
        let map = &resolved;
        let mut by_addr: HashMap<String, Arc<Endpoint>> = HashMap::new();
        let mut endpoints = Vec::new();
        let mut make = |shard: &str,
                        kind: ShardKind,
                        ep: &crate::shardmap::Endpoint,
                        role: Role|
         -> Arc<Endpoint> {
            by_addr
                .entry(ep.addr.clone())
                .or_insert_with(|| {
                    let identity = Identity::of(shard, kind, ep, role, &map.options);
                    if let Some(kept) = previous.and_then(|p| {
                        p.endpoints.iter().find(|e| {
                            e.state.identity.as_ref() == Some(&identity) && !e.state.is_retired()
                        })
                    }) {
                        endpoints.push(kept.clone());
                        return kept.clone();
                    }
                    // A DSN may carry a password: never log or label it.
                    let addr = match kind {
                        ShardKind::Redis => ep.addr.clone(),
                        ShardKind::Postgres => crate::shardmap::redact_dsn(&ep.addr),
                    };
                    let mut state = endpoint_state(
                        shard,
                        addr,
                        role,
                        ep.region.clone(),
                        ep.zone.clone(),
                        map.options.clone(),
                        ep.link.clone(),
                    );
                    state.identity = Some(identity);
                    state.lease_fence = lease_fence.clone();
                    let state = Arc::new(state);
                    state.metrics.set_healthy(role == Role::Primary);
                    let e = Arc::new(Endpoint::new(state, kind, &ep.addr, map.slots));
                    endpoints.push(e.clone());
                    e
                })
                .clone()
        };
        let shards = map
            .shards
            .iter()
            .map(|s| {
                if s.phase == ShardPhase::Removed {
                    return ShardBackends::removed(s, &map.options);
                }
                let primary = make(&s.name, s.kind, &s.primary, Role::Primary);
                let replicas: Vec<_> = s
                    .replicas
                    .iter()
                    .map(|r| make(&s.name, s.kind, r, Role::Replica))
                    .collect();
                for r in &replicas {
                    r.state
                        .primary_offsets
                        .store(Some(primary.state.offsets.clone()));
                }
                let read_tiers = read_tiers(map.read_policy, &primary, &replicas, region, zone);
                let reads_replicas = read_tiers
                    .iter()
                    .flatten()
                    .any(|e| e.state.role == Role::Replica);
                ShardBackends {
                    name: s.name.clone(),
                    phase: s.phase,
                    kind: s.kind,
                    primary,
                    replicas,
                    read_tiers,
                    reads_replicas,
                }
            })
            .collect();
        Backends {
            shards,
            endpoints,
            source: Arc::new(source.clone()),
            lease_fence,
        }
    }

    /// The fleet lease fence of this proxy (the context's).
    pub fn lease_fence(&self) -> &Arc<Fence> {
        &self.lease_fence
    }

    /// The backends of one shard.
    pub fn shard(&self, id: ShardId) -> &ShardBackends {
        &self.shards[id.0 as usize]
    }

    /// Every shard, in map order.
    pub fn shards(&self) -> &[ShardBackends] {
        &self.shards
    }

    /// Whether a shard holds keys (fan-outs skip shards a finished
    /// rebalance removed).
    pub fn holds_keys(&self, id: ShardId) -> bool {
        self.shards
            .get(id.0 as usize)
            .is_some_and(|s| s.phase != ShardPhase::Removed)
    }

    /// Every endpoint (for health checks).
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }
}

/// Everything an endpoint is built from: an endpoint whose identity did
/// not change is kept by a reload.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Identity {
    kind: ShardKind,
    addr: String,
    shard: String,
    role: Role,
    region: String,
    zone: Option<String>,
    options: Options,
    auth: Option<crate::shardmap::BackendAuth>,
    tls: Option<TlsIdentity>,
}

/// TLS settings, compared by identity of the loaded configuration, so a
/// reload always rebuilds TLS endpoints (picking up new CA files).
#[derive(Debug, Clone)]
struct TlsIdentity {
    config: Arc<tokio_rustls::rustls::ClientConfig>,
    server_name: Option<String>,
}

impl PartialEq for TlsIdentity {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Identity {
    fn of(
        shard: &str,
        kind: ShardKind,
        ep: &crate::shardmap::Endpoint,
        role: Role,
        options: &Options,
    ) -> Identity {
        Identity {
            kind,
            addr: ep.addr.clone(),
            shard: shard.to_owned(),
            role,
            region: ep.region.clone(),
            zone: ep.zone.clone(),
            options: options.clone(),
            auth: ep.link.auth.clone(),
            tls: ep.link.tls.as_ref().map(|t| TlsIdentity {
                config: t.config.clone(),
                server_name: t.server_name.clone(),
            }),
        }
    }
}

/// Orders a shard's endpoints for reads.
fn read_tiers(
    policy: ReadPolicy,
    primary: &Arc<Endpoint>,
    replicas: &[Arc<Endpoint>],
    region: Option<&str>,
    zone: Option<&str>,
) -> Vec<Vec<Arc<Endpoint>>> {
    match policy {
        ReadPolicy::Primary => vec![vec![primary.clone()]],
        ReadPolicy::PreferReplica => {
            let mut tiers = tiers_by_distance(replicas, region, zone);
            tiers.push(vec![primary.clone()]);
            tiers
        }
        ReadPolicy::Nearest => {
            let mut all = vec![primary.clone()];
            all.extend(replicas.iter().cloned());
            tiers_by_distance(&all, region, zone)
        }
    }
}

/// Groups endpoints into same-zone, same-region and other tiers (empty tiers
/// dropped), keeping map order within a tier.
fn tiers_by_distance(
    eps: &[Arc<Endpoint>],
    region: Option<&str>,
    zone: Option<&str>,
) -> Vec<Vec<Arc<Endpoint>>> {
    let distance = |e: &Endpoint| {
        let same_region = region.is_some() && region == Some(e.state.region.as_str());
        let same_zone = same_region && zone.is_some() && zone == e.state.zone.as_deref();
        if same_zone {
            0
        } else if same_region {
            1
        } else {
            2
        }
    };
    (0..3)
        .map(|d| {
            eps.iter()
                .filter(|e| distance(e) == d)
                .cloned()
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// A new endpoint's state: not retired, without identity, nothing measured
/// yet; healthy if a primary (primaries serve until proven otherwise,
/// replicas only once a health check has seen them in sync).
fn endpoint_state(
    shard: &str,
    addr: String,
    role: Role,
    region: String,
    zone: Option<String>,
    options: Options,
    link: Arc<crate::shardmap::Link>,
) -> EndpointState {
    EndpointState {
        breaker: breaker::Breaker::new(),
        blocking_order: tokio::sync::Mutex::new(()),
        metrics: EndpointMetrics::new(shard, &addr, role.as_str()),
        addr,
        shard: shard.to_owned(),
        role,
        region,
        zone,
        options,
        link,
        healthy: AtomicBool::new(role == Role::Primary),
        latency_us: AtomicU64::new(0),
        retired: AtomicBool::new(false),
        identity: None,
        acl_failing: AtomicBool::new(false),
        health_timeouts: std::sync::atomic::AtomicU32::new(0),
        offsets: Arc::default(),
        primary_offsets: arc_swap::ArcSwapOption::empty(),
        positions: Arc::default(),
        version: arc_swap::ArcSwapOption::empty(),
        lease_fence: Arc::default(),
    }
}

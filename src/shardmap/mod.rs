//! The shard map: YAML -> raw serde structs ([`raw`]) -> validated [`ShardMap`]
//! ([`validate`]); a YAML error becomes a [`MapError`] too ([`yaml`]).
//!
//! A [`ShardMap`] that exists has passed every check: names are unique,
//! every reference (region, zone, placement target) resolves, addresses are
//! `host:port` and used once, numbers are in range. The router and the
//! backends therefore never re-check it. A refused map is a [`MapError`]
//! naming the field (`shards[2].replicas[0].addr`) and the reason; it never
//! replaces a running map.
//!
//! The field reference is `docs-shardmap.md` and `shard-maps/example.yaml`.

pub mod link;
pub mod raw;
pub mod sentinel;
pub mod validate;
pub mod yaml;

pub use link::{BackendAuth, BackendTls, Link, redact_dsn};
pub use sentinel::{Discovered, SentinelSource, SentinelView};

use std::time::Duration;

/// A validated shard map: the whole description of a keyspace and its shards.
#[derive(Debug, Clone)]
pub struct ShardMap {
    /// Number of slots (`hash % slots`); fixed for the life of a keyspace.
    pub slots: u32,
    /// Regions, in file order.
    pub regions: Vec<Region>,
    /// Shards, in file order; `router::ShardId(i)` is `shards[i]`.
    pub shards: Vec<Shard>,
    /// Data-residency rules; the first that matches a key wins.
    pub placement: Vec<PlacementRule>,
    /// Where keys that match no rule live.
    pub default_placement: DefaultPlacement,
    /// Which endpoint serves reads.
    pub read_policy: ReadPolicy,
    /// Timeouts, pool sizes and switches.
    pub options: Options,
}

/// A region (for data residency and the `nearest` read policy).
#[derive(Debug, Clone)]
pub struct Region {
    /// Unique region name.
    pub name: String,
    /// Known zones; empty means zones in this region are not checked.
    pub zones: Vec<String>,
}

/// A shard: one primary and its read replicas, holding the slots it owns.
#[derive(Debug, Clone)]
pub struct Shard {
    /// Unique name; the shard's identity for placement, so renaming a shard
    /// moves its slots while changing its addresses does not.
    pub name: String,
    /// Region of the shard (and of its primary).
    pub region: String,
    /// Zone of the primary, if given.
    pub zone: Option<String>,
    /// Relative share of slots, 1..=10000.
    pub weight: u32,
    /// What the shard's servers are: Redis, or PostgreSQL databases.
    pub kind: ShardKind,
    /// The primary: writes and side effects go here.
    pub primary: Endpoint,
    /// Read replicas.
    pub replicas: Vec<Endpoint>,
    /// Whether the shard takes part in placement. Always `Active` in a map
    /// read from YAML; the rebalancer keeps shards that a new map removed
    /// as `Draining` (still reachable, owning only what has not moved yet)
    /// and then `Removed` (a placeholder, so shard ids stay stable).
    pub phase: ShardPhase,
    /// The Sentinel group that names the primary and replicas, when the
    /// map says `sentinel:` instead of `primary:`. Then `primary.addr` is a
    /// placeholder until [`sentinel::resolve`] fills in what Sentinel said.
    pub sentinel: Option<std::sync::Arc<SentinelSource>>,
}

/// See [`Shard::phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShardPhase {
    /// A placement candidate.
    #[default]
    Active,
    /// Removed by a rebalance that is still moving its keys away.
    Draining,
    /// Removed by a finished rebalance; nothing routes to it.
    Removed,
}

/// The kind of server behind a shard; every endpoint of a shard has its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardKind {
    /// Redis servers; `addr` is `host:port`.
    Redis,
    /// PostgreSQL databases holding the key-value schema of `migrations/`;
    /// `addr` is a DSN (`postgres://user@host:port/db`).
    Postgres,
}

/// One backend server and where it runs.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port`, checked to parse as such (a PostgreSQL DSN for a
    /// postgres shard).
    pub addr: String,
    /// Region it runs in (a replica defaults to its shard's region).
    pub region: String,
    /// Zone it runs in, if known.
    pub zone: Option<String>,
    /// Credentials and TLS (the shard's, shared by its primary and replicas).
    pub link: std::sync::Arc<Link>,
}

/// Where reads go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPolicy {
    /// Every read to the primary (read-your-writes).
    Primary,
    /// A healthy replica if there is one, else the primary.
    PreferReplica,
    /// The nearest healthy endpoint (same zone, then region, then any).
    Nearest,
}

impl ReadPolicy {
    /// The policy's name as written in the map.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadPolicy::Primary => "primary",
            ReadPolicy::PreferReplica => "prefer-replica",
            ReadPolicy::Nearest => "nearest",
        }
    }
}

/// A data-residency rule: keys it matches live only in `region`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRule {
    /// Which keys the rule matches.
    pub matcher: Matcher,
    /// The region (with at least one shard) they live in.
    pub region: String,
}

/// How a placement rule matches a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// The key has a hash tag (`{...}`) and the tag starts with these bytes.
    HashTagPrefix(Vec<u8>),
    /// The whole key starts with these bytes.
    KeyPrefix(Vec<u8>),
}

/// Where keys matching no rule live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultPlacement {
    /// On every shard of the map.
    AllShards,
    /// Only on the shards of this region.
    Region(String),
}

/// Timeouts, pool sizes and switches (`options:` in the YAML, in milliseconds there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Time allowed to open a backend connection.
    pub connect_timeout: Duration,
    /// Time a backend has to answer one command.
    pub command_timeout: Duration,
    /// Long-lived multiplexed connections per endpoint.
    pub connections_per_endpoint: usize,
    /// Dedicated connections (MULTI, blocking, WATCH) per endpoint.
    pub dedicated_pool_size: usize,
    /// How often every endpoint is health-checked.
    pub health_check_interval: Duration,
    /// A replica lagging more than this serves no reads.
    pub max_replica_lag: Duration,
    /// Whether FLUSHDB/FLUSHALL are forwarded to the shards.
    pub allow_flush: bool,
    /// Connections per PostgreSQL endpoint; each serves one ordered lane of
    /// client requests.
    pub pg_pool_size: usize,
    /// How often the sentinels of sentinel shards are asked who the primary
    /// is (a `+switch-master` announcement is acted on at once besides).
    pub sentinel_check_interval: std::time::Duration,
    /// What the keys of one multi-key command, transaction or script must
    /// share (`options.crossslot`).
    pub crossslot: CrossSlot,
    /// What becomes of scripts and functions that declare no key
    /// (`options.keyless_scripts`).
    pub keyless_scripts: KeylessScripts,
    /// Bytes of values the near cache keeps per Redis shard primary; 0
    /// turns it off (see `backend::cache`).
    pub near_cache_bytes: u64,
    /// How long before a read a near-cache hit must have been confirmed
    /// current; zero confirms each hit after the read arrived.
    pub near_cache_max_staleness: Duration,
    /// `options.read_your_writes`: with `prefer-replica` or `nearest` reads,
    /// a client's reads after its own writes go only to replicas whose
    /// applied replication position has reached them, else to the primary
    /// (see `backend::lag`).
    pub read_your_writes: bool,
    /// `options.coalesce_reads`: identical reads that arrive while the
    /// same read is in flight to the same endpoint wait for its reply
    /// instead of sending their own (see `backend::coalesce`). Off by
    /// default: it trades per-request freshness within one round trip for
    /// fewer backend requests on hot keys.
    pub coalesce_reads: bool,
}

/// `options.crossslot`: when keys of one request are refused with `-CROSSSLOT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrossSlot {
    /// Keys on one shard are fine (MGET/MSET/DEL-like commands split over
    /// shards): whether a transaction works depends on where its keys live
    /// today.
    #[default]
    Shard,
    /// As Redis Cluster: every key of a command, transaction or script in
    /// one slot (hash tags), so what works cannot stop working after a
    /// rebalance; MGET and friends across slots are refused too.
    Slot,
}

/// `options.keyless_scripts`: EVAL / EVALSHA / FCALL (and their `_RO`
/// forms) with no declared key. The proxy routes a script by its declared
/// keys; one that declares none runs on the first shard, and any key it
/// reads or writes there (`redis.call('GET', ARGV[1])`) is on whichever
/// shard that happens to be: a silent wrong answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeylessScripts {
    /// Run on the first shard (today's behaviour, and right for scripts
    /// that touch no key).
    #[default]
    Allow,
    /// Refused with `-ERR`: no shard is one where a keyless script cannot
    /// touch data, so the only safe answer is to ask for its keys.
    Refuse,
}

/// A refused map: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct MapError {
    /// The field, e.g. `shards[2].replicas[0].addr` (or the file, for I/O errors).
    pub path: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

impl ShardMap {
    /// Parses and validates a map from YAML text.
    pub fn from_yaml(text: &str) -> Result<ShardMap, MapError> {
        let raw: raw::RawMap = yaml::from_str(text)?;
        ShardMap::try_from(raw)
    }

    /// Reads, parses and validates a map file; an I/O error is reported with
    /// the file name as path.
    pub fn load(path: &std::path::Path) -> Result<ShardMap, MapError> {
        let text = std::fs::read_to_string(path).map_err(|e| MapError {
            path: path.display().to_string(),
            reason: format!("cannot read the map file: {e}"),
        })?;
        ShardMap::from_yaml(&text)
    }

    /// The region called `name`.
    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }
}

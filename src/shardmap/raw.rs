//! Raw serde structs that mirror the shard-map YAML one to one.
//!
//! They only check *shape* (unknown fields are refused, types must fit);
//! every rule about *meaning* (ranges, references, duplicates) lives in
//! [`super::validate`], which turns a [`RawMap`] into a validated
//! [`super::ShardMap`]. Numbers are read as wide signed integers and most
//! fields are optional here so that validation, not serde, reports a
//! negative weight or a missing name with the exact field path.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};

/// The whole document.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMap {
    /// Number of slots; default 16384.
    #[serde(default)]
    pub slots: Option<i64>,
    /// `primary`, `prefer-replica` or `nearest`; default `primary`.
    #[serde(default)]
    pub read_policy: Option<String>,
    /// Regions and their zones.
    #[serde(default)]
    pub regions: Option<Vec<RawRegion>>,
    /// Shards, each a primary with optional replicas.
    #[serde(default)]
    pub shards: Option<Vec<RawShard>>,
    /// Data-residency rules, first match wins.
    #[serde(default)]
    pub placement: Option<Vec<RawPlacementRule>>,
    /// Where keys matching no rule live: `all` or `{region: NAME}`.
    #[serde(default)]
    pub default_placement: Option<RawDefaultPlacement>,
    /// Timeouts, pool sizes and switches.
    #[serde(default)]
    pub options: Option<RawOptions>,
}

/// One region.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    /// Region name, referenced by shards, replicas and placement.
    #[serde(default)]
    pub name: Option<String>,
    /// Zones of the region; empty means "zones are not checked".
    #[serde(default)]
    pub zones: Option<Vec<String>>,
}

/// One shard.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShard {
    /// Shard name: its identity for placement (addresses may change).
    #[serde(default)]
    pub name: Option<String>,
    /// Region the shard lives in.
    #[serde(default)]
    pub region: Option<String>,
    /// Zone of the primary.
    #[serde(default)]
    pub zone: Option<String>,
    /// Relative share of slots; default 100.
    #[serde(default)]
    pub weight: Option<i64>,
    /// `redis` (default) or `postgres`.
    #[serde(default)]
    pub kind: Option<String>,
    /// `host:port` of the primary (a DSN for a postgres shard).
    #[serde(default)]
    pub primary: Option<String>,
    /// Read replicas.
    #[serde(default)]
    pub replicas: Option<Vec<RawReplica>>,
    /// A Redis Sentinel group that names the primary (and the replicas),
    /// in place of `primary` and `replicas`.
    #[serde(default)]
    pub sentinel: Option<RawSentinel>,

    // How the proxy reaches the shard's servers (see `super::link`).
    /// Backend ACL user (default: Redis' `default`).
    #[serde(default)]
    pub username: Option<String>,
    /// Backend password, inline.
    #[serde(default)]
    pub password: Option<String>,
    /// Environment variable holding the backend password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Connect to the shard's servers over TLS.
    #[serde(default)]
    pub tls: Option<bool>,
    /// PEM file of the CAs to trust (default: the system roots).
    #[serde(default)]
    pub tls_ca: Option<String>,
    /// Name the servers' certificates carry (default: the address' host).
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

/// `sentinel:` of a shard: where to ask who the primary is.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSentinel {
    /// `host:port` of each sentinel of the group.
    #[serde(default)]
    pub addrs: Option<Vec<String>>,
    /// The master name the sentinels monitor (`sentinel monitor NAME ...`).
    #[serde(default)]
    pub master: Option<String>,
    /// ACL user on the sentinels (not the shard's own user).
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the sentinels' password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Ask an announced primary `ROLE` before switching to it; default true.
    #[serde(default)]
    pub verify_role: Option<bool>,
}

/// A replica: either a bare `host:port` or a mapping with its location.
#[derive(Debug)]
pub enum RawReplica {
    /// `- 127.0.0.1:7011`
    Addr(String),
    /// `- {addr: 127.0.0.1:7011, region: us, zone: us-b}`
    Detailed(RawReplicaDetail),
}

/// The mapping form of a replica.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReplicaDetail {
    /// `host:port`.
    #[serde(default)]
    pub addr: Option<String>,
    /// Defaults to the shard's region.
    #[serde(default)]
    pub region: Option<String>,
    /// Defaults to none.
    #[serde(default)]
    pub zone: Option<String>,
}

impl<'de> Deserialize<'de> for RawReplica {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawReplica;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a `host:port` string or a mapping {addr, region, zone}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawReplica, E> {
                Ok(RawReplica::Addr(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawReplica, A::Error> {
                RawReplicaDetail::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawReplica::Detailed)
            }
        }
        d.deserialize_any(V)
    }
}

/// One placement rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlacementRule {
    /// Matches keys whose hash tag starts with this.
    #[serde(default)]
    pub hash_tag_prefix: Option<String>,
    /// Matches keys that start with this.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// Region the matching keys live in.
    #[serde(default)]
    pub region: Option<String>,
}

/// `default_placement`: a word (`all`) or `{region: NAME}`.
#[derive(Debug)]
pub enum RawDefaultPlacement {
    /// A bare word; only `all` is valid.
    Word(String),
    /// `{region: NAME}`.
    Region(RawDefaultRegion),
}

/// The mapping form of `default_placement`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaultRegion {
    /// The region all unmatched keys live in.
    #[serde(default)]
    pub region: Option<String>,
}

impl<'de> Deserialize<'de> for RawDefaultPlacement {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDefaultPlacement;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`all` or a mapping {region: NAME}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDefaultPlacement, E> {
                Ok(RawDefaultPlacement::Word(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawDefaultPlacement, A::Error> {
                RawDefaultRegion::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawDefaultPlacement::Region)
            }
        }
        d.deserialize_any(V)
    }
}

/// `options:`; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOptions {
    /// Backend connect timeout.
    #[serde(default)]
    pub connect_timeout_ms: Option<i64>,
    /// Time a backend has to answer one command.
    #[serde(default)]
    pub command_timeout_ms: Option<i64>,
    /// Shared multiplexed connections per endpoint.
    #[serde(default)]
    pub connections_per_endpoint: Option<i64>,
    /// Dedicated (stateful) connections per endpoint.
    #[serde(default)]
    pub dedicated_pool_size: Option<i64>,
    /// How often every endpoint is health-checked.
    #[serde(default)]
    pub health_check_interval_ms: Option<i64>,
    /// Replication lag beyond which a replica serves no reads.
    #[serde(default)]
    pub max_replica_lag_ms: Option<i64>,
    /// Whether FLUSHDB/FLUSHALL are forwarded.
    #[serde(default)]
    pub allow_flush: Option<bool>,
    /// Connections (and ordered lanes) per PostgreSQL endpoint.
    #[serde(default)]
    pub pg_pool_size: Option<i64>,
    /// How often the sentinels of sentinel shards are asked for the primary.
    #[serde(default)]
    pub sentinel_check_interval_ms: Option<i64>,
    /// `shard` (default) or `slot`: what keys of one command must share.
    #[serde(default)]
    pub crossslot: Option<String>,
    /// `allow` (default) or `refuse`: scripts and functions that declare
    /// no key.
    #[serde(default)]
    pub keyless_scripts: Option<String>,
    /// Bytes of values the near cache keeps per shard primary (0: off).
    #[serde(default)]
    pub near_cache_bytes: Option<i64>,
    /// How old a near-cache hit may be (0: every hit is confirmed).
    #[serde(default)]
    pub near_cache_max_staleness_ms: Option<i64>,
    /// Whether a client's reads after its own writes go only to replicas
    /// that have applied them (default false).
    #[serde(default)]
    pub read_your_writes: Option<bool>,
    /// Whether identical concurrent reads share one backend request.
    #[serde(default)]
    pub coalesce_reads: Option<bool>,
}

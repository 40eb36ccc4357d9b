//! [`RawMap`] -> validated [`ShardMap`]: every rule about meaning.
//!
//! The first problem found is returned as a [`MapError`] whose `path` names
//! the field the way an operator would point at it in the file
//! (`shards[2].replicas[0].addr`) and whose `reason` says what is wrong and
//! what is allowed. Checks run in file order, so the error is the first one
//! a reader would hit.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::raw::{
    RawDefaultPlacement, RawMap, RawOptions, RawPlacementRule, RawRegion, RawReplica, RawShard,
};
use super::{
    DefaultPlacement, Endpoint, MapError, Matcher, Options, PlacementRule, ReadPolicy, Region,
    Shard, ShardKind, ShardMap, ShardPhase,
};

/// Default number of slots (Redis Cluster's count).
pub const DEFAULT_SLOTS: u32 = 16384;
/// Largest slot count accepted: keeps each dense routing table at 4 MiB.
pub const MAX_SLOTS: u32 = 1_048_576;
/// Default shard weight.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest shard weight (the ratio to the smallest, 1, is what matters).
pub const MAX_WEIGHT: u32 = 10_000;

/// Bounds and default of one integer option: `(name, min, max, default)`.
type Bound = (&'static str, i64, i64, i64);
const CONNECT_TIMEOUT: Bound = ("connect_timeout_ms", 1, 600_000, 1_000);
const COMMAND_TIMEOUT: Bound = ("command_timeout_ms", 1, 600_000, 5_000);
const CONNECTIONS: Bound = ("connections_per_endpoint", 1, 64, 1);
const DEDICATED: Bound = ("dedicated_pool_size", 1, 4_096, 64);
const HEALTH_INTERVAL: Bound = ("health_check_interval_ms", 10, 600_000, 1_000);
const MAX_LAG: Bound = ("max_replica_lag_ms", 1, 3_600_000, 30_000);
const PG_POOL: Bound = ("pg_pool_size", 1, 1_024, 16);
const SENTINEL_INTERVAL: Bound = ("sentinel_check_interval_ms", 100, 60_000, 1_000);
const NEAR_CACHE_BYTES: Bound = ("near_cache_bytes", 0, 1 << 40, 0);
const NEAR_CACHE_STALENESS: Bound = ("near_cache_max_staleness_ms", 0, 60_000, 0);

/// Every integer option with its bounds and default, in file order (for docs and tests).
pub const OPTION_BOUNDS: [(&str, i64, i64, i64); 10] = [
    CONNECT_TIMEOUT,
    COMMAND_TIMEOUT,
    CONNECTIONS,
    DEDICATED,
    HEALTH_INTERVAL,
    MAX_LAG,
    PG_POOL,
    SENTINEL_INTERVAL,
    NEAR_CACHE_BYTES,
    NEAR_CACHE_STALENESS,
];

fn err(path: impl Into<String>, reason: impl Into<String>) -> MapError {
    MapError {
        path: path.into(),
        reason: reason.into(),
    }
}

impl TryFrom<RawMap> for ShardMap {
    type Error = MapError;

    fn try_from(raw: RawMap) -> Result<ShardMap, MapError> {
        let slots = match raw.slots {
            None => DEFAULT_SLOTS,
            Some(n) if (1..=i64::from(MAX_SLOTS)).contains(&n) => n as u32,
            Some(n) => {
                return Err(err(
                    "slots",
                    format!("must be between 1 and {MAX_SLOTS}, got {n}"),
                ));
            }
        };
        let read_policy = read_policy(raw.read_policy.as_deref())?;
        let regions = regions(raw.regions.unwrap_or_default())?;
        let shards = shards(raw.shards.unwrap_or_default(), &regions)?;
        let populated: HashSet<&str> = shards.iter().map(|s| s.region.as_str()).collect();
        let placement = placement(raw.placement.unwrap_or_default(), &regions, &populated)?;
        let default_placement = default_placement(raw.default_placement, &regions, &populated)?;
        let options = options(raw.options.unwrap_or_default())?;
        Ok(ShardMap {
            slots,
            regions,
            shards,
            placement,
            default_placement,
            read_policy,
            options,
        })
    }
}

fn read_policy(raw: Option<&str>) -> Result<ReadPolicy, MapError> {
    match raw {
        None | Some("primary") => Ok(ReadPolicy::Primary),
        Some("prefer-replica") => Ok(ReadPolicy::PreferReplica),
        Some("nearest") => Ok(ReadPolicy::Nearest),
        Some(other) => Err(err(
            "read_policy",
            format!("unknown read policy `{other}` (expected primary, prefer-replica or nearest)"),
        )),
    }
}

/// Names of regions, shards and zones: they appear in logs, metrics labels
/// and admin output, so no whitespace or control characters.
fn check_name(path: &str, name: &str) -> Result<(), MapError> {
    if name.is_empty() {
        return Err(err(path, "must not be empty"));
    }
    if name.len() > 64 {
        return Err(err(path, "must be at most 64 bytes long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(err(
            path,
            format!("`{name}` contains {c:?}; names use letters, digits, `-`, `_`, `.`, `:`"),
        ));
    }
    Ok(())
}

fn regions(raw: Vec<RawRegion>) -> Result<Vec<Region>, MapError> {
    if raw.is_empty() {
        return Err(err("regions", "must list at least one region"));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let path = format!("regions[{i}].name");
        let name = r.name.ok_or_else(|| err(&path, "is required"))?;
        check_name(&path, &name)?;
        if !seen.insert(name.clone()) {
            return Err(err(path, format!("duplicate region name `{name}`")));
        }
        let zones = r.zones.unwrap_or_default();
        let mut seen_zones = HashSet::new();
        for (j, z) in zones.iter().enumerate() {
            let zpath = format!("regions[{i}].zones[{j}]");
            check_name(&zpath, z)?;
            if !seen_zones.insert(z.as_str()) {
                return Err(err(zpath, format!("duplicate zone `{z}`")));
            }
        }
        out.push(Region { name, zones });
    }
    Ok(out)
}

/// Looks a region up by name, or says which ones exist.
fn find_region<'a>(regions: &'a [Region], path: &str, name: &str) -> Result<&'a Region, MapError> {
    regions.iter().find(|r| r.name == name).ok_or_else(|| {
        let known: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
        err(
            path,
            format!("unknown region `{name}` (regions: {})", known.join(", ")),
        )
    })
}

fn check_zone(path: &str, region: &Region, zone: &str) -> Result<(), MapError> {
    if !region.zones.is_empty() && !region.zones.iter().any(|z| z == zone) {
        return Err(err(
            path,
            format!(
                "zone `{zone}` is not a zone of region `{}` (zones: {})",
                region.name,
                region.zones.join(", ")
            ),
        ));
    }
    check_name(path, zone)
}

/// Most shards in one map (shard ids are `u16`: the slot owner table stays
/// small enough to stay in cache). A rebalance's merged map (old and new
/// shards together) is held to the same bound.
pub const MAX_SHARDS: usize = u16::MAX as usize;

fn shards(raw: Vec<RawShard>, regions: &[Region]) -> Result<Vec<Shard>, MapError> {
    if raw.is_empty() {
        return Err(err("shards", "must list at least one shard"));
    }
    if raw.len() > MAX_SHARDS {
        return Err(err(
            "shards",
            format!("lists {} shards; at most {MAX_SHARDS}", raw.len()),
        ));
    }
    let mut seen = HashSet::new();
    let mut addrs = HashMap::new();
    let mut sentinels = Vec::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let p = format!("shards[{i}]");
        let link = super::link::shard_link(&p, &s)?;
        let name = s
            .name
            .ok_or_else(|| err(format!("{p}.name"), "is required"))?;
        check_name(&format!("{p}.name"), &name)?;
        if !seen.insert(name.clone()) {
            return Err(err(
                format!("{p}.name"),
                format!("duplicate shard name `{name}`"),
            ));
        }
        let region_name = s
            .region
            .ok_or_else(|| err(format!("{p}.region"), "is required"))?;
        let region = find_region(regions, &format!("{p}.region"), &region_name)?;
        if let Some(z) = &s.zone {
            check_zone(&format!("{p}.zone"), region, z)?;
        }
        let weight = match s.weight {
            None => DEFAULT_WEIGHT,
            Some(w) if (1..=i64::from(MAX_WEIGHT)).contains(&w) => w as u32,
            Some(w) => {
                return Err(err(
                    format!("{p}.weight"),
                    format!("must be between 1 and {MAX_WEIGHT}, got {w}"),
                ));
            }
        };
        let kind = match s.kind.as_deref() {
            None | Some("redis") => ShardKind::Redis,
            Some("postgres") => ShardKind::Postgres,
            Some(other) => {
                return Err(err(
                    format!("{p}.kind"),
                    format!("unknown shard kind `{other}` (expected redis or postgres)"),
                ));
            }
        };
        let sentinel = super::sentinel::shard_sentinel(
            &p,
            s.sentinel,
            s.replicas.is_some(),
            kind,
            &link,
            &mut sentinels,
        )?;
        let primary_addr = match (&sentinel, s.primary) {
            (Some(src), None) => src.placeholder(),
            (None, Some(addr)) => {
                claim_addr(&mut addrs, kind, &format!("{p}.primary"), &addr)?;
                addr
            }
            (Some(_), Some(_)) => {
                return Err(err(
                    format!("{p}.sentinel"),
                    "give either `primary` or `sentinel`, not both",
                ));
            }
            (None, None) => {
                return Err(err(
                    format!("{p}.primary"),
                    "is required (or `sentinel: {addrs, master}` to follow a Sentinel group)",
                ));
            }
        };
        let primary = Endpoint {
            addr: primary_addr,
            region: region_name.clone(),
            zone: s.zone.clone(),
            link: link.clone(),
        };
        let mut replicas = Vec::new();
        for (j, r) in s.replicas.unwrap_or_default().into_iter().enumerate() {
            let rp = format!("{p}.replicas[{j}]");
            let ep = match r {
                RawReplica::Addr(addr) => {
                    claim_addr(&mut addrs, kind, &rp, &addr)?;
                    Endpoint {
                        addr,
                        region: region_name.clone(),
                        zone: None,
                        link: link.clone(),
                    }
                }
                RawReplica::Detailed(d) => {
                    let addr = d
                        .addr
                        .ok_or_else(|| err(format!("{rp}.addr"), "is required"))?;
                    claim_addr(&mut addrs, kind, &format!("{rp}.addr"), &addr)?;
                    let rname = d.region.unwrap_or_else(|| region_name.clone());
                    let rregion = find_region(regions, &format!("{rp}.region"), &rname)?;
                    if let Some(z) = &d.zone {
                        check_zone(&format!("{rp}.zone"), rregion, z)?;
                    }
                    Endpoint {
                        addr,
                        region: rname,
                        zone: d.zone,
                        link: link.clone(),
                    }
                }
            };
            replicas.push(ep);
        }
        out.push(Shard {
            name,
            region: region_name,
            zone: s.zone,
            weight,
            kind,
            primary,
            replicas,
            phase: ShardPhase::Active,
            sentinel,
        });
    }
    Ok(out)
}

/// `host:port` with a non-empty host (name, IPv4, or `[IPv6]`) and a port 1..=65535.
pub fn check_addr(path: &str, addr: &str) -> Result<(), MapError> {
    let bad = |why: &str| err(path, format!("`{addr}` is not host:port ({why})"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("no `:port`"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
        _ => return Err(bad("port must be 1..=65535")),
    }
    if let Some(inner) = host.strip_prefix('[') {
        let v6 = inner.strip_suffix(']').ok_or_else(|| bad("unclosed `[`"))?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("bad IPv6 address"));
        }
        return Ok(());
    }
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    if host.contains(':') {
        return Err(bad("write IPv6 addresses as [addr]:port"));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(bad("host has characters a host name cannot have"));
    }
    Ok(())
}

/// A PostgreSQL DSN (`postgres://user@host:port/db` or `postgresql://...`),
/// checked by the driver's own parser so that a map that passes here
/// connects with exactly these settings.
pub fn check_dsn(path: &str, dsn: &str) -> Result<(), MapError> {
    let bad = |why: &str| {
        err(
            path,
            format!(
                "`{}` is not a PostgreSQL DSN ({why}); expected postgres://user@host:port/db",
                crate::shardmap::redact_dsn(dsn)
            ),
        )
    };
    if !(dsn.starts_with("postgres://") || dsn.starts_with("postgresql://")) {
        return Err(bad("it must start with postgres:// or postgresql://"));
    }
    dsn.parse::<sqlx::postgres::PgConnectOptions>()
        .map_err(|e| bad(&e.to_string()))?;
    Ok(())
}

/// No two endpoints (primary or replica, of any shard) may share an address:
/// that would make one server two shards, or a replica of itself.
fn claim_addr(
    seen: &mut HashMap<String, String>,
    kind: ShardKind,
    path: &str,
    addr: &str,
) -> Result<(), MapError> {
    match kind {
        ShardKind::Redis => check_addr(path, addr)?,
        ShardKind::Postgres => check_dsn(path, addr)?,
    }
    let key = addr.to_ascii_lowercase();
    if let Some(first) = seen.get(&key) {
        return Err(err(
            path,
            format!("duplicate address `{addr}` (already used by {first})"),
        ));
    }
    seen.insert(key, path.to_owned());
    Ok(())
}

/// A rule or the default placement may only point at a region that has shards.
fn check_target(
    path: &str,
    name: &str,
    regions: &[Region],
    populated: &HashSet<&str>,
) -> Result<(), MapError> {
    find_region(regions, path, name)?;
    if !populated.contains(name) {
        return Err(err(
            path,
            format!("region `{name}` has no shards, so no key could be placed there"),
        ));
    }
    Ok(())
}

fn placement(
    raw: Vec<RawPlacementRule>,
    regions: &[Region],
    populated: &HashSet<&str>,
) -> Result<Vec<PlacementRule>, MapError> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let p = format!("placement[{i}]");
        let matcher = match (r.hash_tag_prefix, r.key_prefix) {
            (Some(t), None) if t.is_empty() => {
                return Err(err(
                    format!("{p}.hash_tag_prefix"),
                    "must not be empty (use default_placement to place every key)",
                ));
            }
            (None, Some(k)) if k.is_empty() => {
                return Err(err(
                    format!("{p}.key_prefix"),
                    "must not be empty (use default_placement to place every key)",
                ));
            }
            (Some(t), None) => Matcher::HashTagPrefix(t.into_bytes()),
            (None, Some(k)) => Matcher::KeyPrefix(k.into_bytes()),
            _ => {
                return Err(err(p, "needs exactly one of hash_tag_prefix or key_prefix"));
            }
        };
        let region = r
            .region
            .ok_or_else(|| err(format!("{p}.region"), "is required"))?;
        check_target(&format!("{p}.region"), &region, regions, populated)?;
        out.push(PlacementRule { matcher, region });
    }
    Ok(out)
}

fn default_placement(
    raw: Option<RawDefaultPlacement>,
    regions: &[Region],
    populated: &HashSet<&str>,
) -> Result<DefaultPlacement, MapError> {
    match raw {
        None => Ok(DefaultPlacement::AllShards),
        Some(RawDefaultPlacement::Word(w)) if w == "all" => Ok(DefaultPlacement::AllShards),
        Some(RawDefaultPlacement::Word(w)) => Err(err(
            "default_placement",
            format!("expected `all` or {{region: NAME}}, got `{w}`"),
        )),
        Some(RawDefaultPlacement::Region(r)) => {
            let name = r
                .region
                .ok_or_else(|| err("default_placement.region", "is required"))?;
            check_target("default_placement.region", &name, regions, populated)?;
            Ok(DefaultPlacement::Region(name))
        }
    }
}

fn bounded(raw: Option<i64>, (name, min, max, default): Bound) -> Result<u64, MapError> {
    let v = raw.unwrap_or(default);
    if !(min..=max).contains(&v) {
        return Err(err(
            format!("options.{name}"),
            format!("must be between {min} and {max}, got {v}"),
        ));
    }
    // In range, so non-negative.
    Ok(v.unsigned_abs())
}

fn options(raw: RawOptions) -> Result<Options, MapError> {
    let ms = |raw, b| bounded(raw, b).map(Duration::from_millis);
    let count = |raw, b| bounded(raw, b).map(|v| v as usize);
    Ok(Options {
        connect_timeout: ms(raw.connect_timeout_ms, CONNECT_TIMEOUT)?,
        command_timeout: ms(raw.command_timeout_ms, COMMAND_TIMEOUT)?,
        connections_per_endpoint: count(raw.connections_per_endpoint, CONNECTIONS)?,
        dedicated_pool_size: count(raw.dedicated_pool_size, DEDICATED)?,
        health_check_interval: ms(raw.health_check_interval_ms, HEALTH_INTERVAL)?,
        max_replica_lag: ms(raw.max_replica_lag_ms, MAX_LAG)?,
        allow_flush: raw.allow_flush.unwrap_or(false),
        read_your_writes: raw.read_your_writes.unwrap_or(false),
        coalesce_reads: raw.coalesce_reads.unwrap_or(false),
        pg_pool_size: count(raw.pg_pool_size, PG_POOL)?,
        sentinel_check_interval: ms(raw.sentinel_check_interval_ms, SENTINEL_INTERVAL)?,
        near_cache_bytes: bounded(raw.near_cache_bytes, NEAR_CACHE_BYTES)?,
        near_cache_max_staleness: ms(raw.near_cache_max_staleness_ms, NEAR_CACHE_STALENESS)?,
        crossslot: match raw.crossslot.as_deref() {
            None | Some("shard") => super::CrossSlot::Shard,
            Some("slot") => super::CrossSlot::Slot,
            Some(other) => {
                return Err(MapError {
                    path: "options.crossslot".to_owned(),
                    reason: format!("must be `shard` or `slot`, got `{other}`"),
                });
            }
        },
        keyless_scripts: match raw.keyless_scripts.as_deref() {
            None | Some("allow") => super::KeylessScripts::Allow,
            Some("refuse") => super::KeylessScripts::Refuse,
            Some(other) => {
                return Err(MapError {
                    path: "options.keyless_scripts".to_owned(),
                    reason: format!("must be `allow` or `refuse`, got `{other}`"),
                });
            }
        },
    })
}

#[cfg(test)]
mod tests;

//! INFO and MEMORY STATS: what one Redis server would say, from the
//! proxy's own figures and the shards' summed.
//!
//! Proxy-own (this process): server (but `redis_version`), clients, memory
//! (`used_memory*`), stats (but the keyspace counters), replication, cpu,
//! commandstats, errorstats, proxy. Over the shards' primaries:
//! `redis_version` (the lowest any shard runs), `shards_used_memory`, the
//! keyspace counters of stats (`keyspace_hits`, `keyspace_misses`,
//! `expired_keys`, `evicted_keys`), persistence (writes since the last
//! save summed, the oldest save, any shard loading or saving) and keyspace
//! (each database's keys and expires summed, `avg_ttl` averaged by expires). The shards are asked only for
//! the sections the request needs, in one `INFO` per primary.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::Proxy;
use super::local::REDIS_VERSION;
use super::pending::answered;
use super::session::Session;
use super::stats;
use crate::command::table::COMMANDS;
use crate::error::ProxyError;
use crate::metrics::hot;
use crate::protocol::{Reply, Request, reply, request::encode_command};
use crate::shardmap::ShardPhase;

/// Sections of `INFO` with no argument and of `INFO default` (Redis 7's
/// default set, those the proxy has, and its own).
const DEFAULT: [&str; 10] = [
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "errorstats",
    "keyspace",
    "proxy",
];
/// Sections of `INFO all` / `everything` beyond the default ones.
const MORE: [&str; 1] = ["commandstats"];

/// The sections a request asks for, lower case.
fn sections(args: &[Bytes]) -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    let add_default = |want: &mut BTreeSet<String>| {
        want.extend(DEFAULT.iter().map(|s| (*s).to_owned()));
    };
    if args.len() <= 1 {
        add_default(&mut want);
    }
    for a in args.iter().skip(1) {
        let s = String::from_utf8_lossy(a).to_lowercase();
        match s.as_str() {
            "default" => add_default(&mut want),
            "all" | "everything" => {
                add_default(&mut want);
                want.extend(MORE.iter().map(|s| (*s).to_owned()));
            }
            _ => {
                want.insert(s);
            }
        }
    }
    want
}

/// One database's `INFO keyspace` line, summed over the shards.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct DbFigures {
    keys: u64,
    expires: u64,
    /// Sum of avg_ttl * expires, for the average weighted by expires.
    ttl_weight: u128,
}

/// What the shards' primaries said, summed.
#[derive(Debug, Default)]
struct ShardFigures {
    /// The lowest `redis_version` (compared numerically, part by part).
    version: Option<String>,
    used_memory: u64,
    hits: u64,
    misses: u64,
    expired: u64,
    evicted: u64,
    /// Writes since each shard's last save (Redis' `dirty`), summed.
    changes_since_save: u64,
    /// The oldest last successful save of a shard (Unix seconds).
    last_save: Option<u64>,
    /// A shard is loading its data, saving, or rewriting its AOF.
    loading: bool,
    saving: bool,
    aof_rewriting: bool,
    /// Every shard that answered runs with `appendonly yes`.
    aof_everywhere: Option<bool>,
    /// A shard's last background save failed.
    save_failed: bool,
    /// Per database (`SELECT n`), its keys summed.
    dbs: std::collections::BTreeMap<u32, DbFigures>,
    /// Shards that did not answer (down, or an error reply).
    failed: usize,
}

impl ShardFigures {
    fn add(&mut self, text: &str) {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .map(str::trim)
        };
        let num = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        if let Some(v) = field("redis_version") {
            let older = self
                .version
                .as_deref()
                .is_none_or(|cur| version_key(v) < version_key(cur));
            if older {
                self.version = Some(v.to_owned());
            }
        }
        self.used_memory += num("used_memory");
        self.hits += num("keyspace_hits");
        self.misses += num("keyspace_misses");
        self.expired += num("expired_keys");
        self.evicted += num("evicted_keys");
        if field("rdb_changes_since_last_save").is_some() {
            self.changes_since_save += num("rdb_changes_since_last_save");
            let saved = num("rdb_last_save_time");
            self.last_save = Some(self.last_save.map_or(saved, |t| t.min(saved)));
            self.loading |= num("loading") > 0;
            self.saving |= num("rdb_bgsave_in_progress") > 0;
            self.aof_rewriting |= num("aof_rewrite_in_progress") > 0;
            let aof = num("aof_enabled") > 0;
            self.aof_everywhere = Some(self.aof_everywhere.unwrap_or(true) && aof);
            self.save_failed |= field("rdb_last_bgsave_status").is_some_and(|v| v != "ok");
        }
        for line in text.lines() {
            let Some((db, line)) = line
                .strip_prefix("db")
                .and_then(|l| l.split_once(':'))
                .and_then(|(n, rest)| Some((n.parse::<u32>().ok()?, rest)))
            else {
                continue;
            };
            let (mut keys, mut expires, mut ttl) = (0u64, 0u64, 0u64);
            for kv in line.split(',') {
                let v = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
                match kv.split_once('=') {
                    Some(("keys", n)) => keys = v(n),
                    Some(("expires", n)) => expires = v(n),
                    Some(("avg_ttl", n)) => ttl = v(n),
                    _ => {}
                }
            }
            let f = self.dbs.entry(db).or_default();
            f.keys += keys;
            f.expires += expires;
            f.ttl_weight += u128::from(ttl) * u128::from(expires);
        }
    }
}

/// `7.0.15` -> [7, 0, 15], for comparing versions.
/// HELLO's `version`: the Redis the proxy implements ([`REDIS_VERSION`],
/// whose commands it knows), or the lowest `redis_version` the health
/// checkers learned from the Redis shards' primaries when that is older
/// (a client must not use commands an older shard lacks). A newer shard
/// does not raise it: the proxy refuses commands newer than its table.
pub(super) fn hello_version(proxy: &Proxy) -> String {
    let backends = proxy.backends();
    lowest_of(
        backends
            .shards()
            .iter()
            .filter(|s| s.kind == crate::shardmap::ShardKind::Redis)
            .filter_map(|s| s.primary.state.version.load_full())
            .map(|v| v.as_ref().clone()),
    )
}

/// The lowest of `versions` and [`REDIS_VERSION`].
fn lowest_of(versions: impl Iterator<Item = String>) -> String {
    versions
        .chain(std::iter::once(REDIS_VERSION.to_owned()))
        .min_by_key(|v| version_key(v))
        .unwrap_or_else(|| REDIS_VERSION.to_owned())
}

fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// Redis' `bytesToHuman`.
fn human(n: u64) -> String {
    let n = n as f64;
    const K: f64 = 1024.0;
    if n < K {
        format!("{n}B")
    } else if n < K * K {
        format!("{:.2}K", n / K)
    } else if n < K * K * K {
        format!("{:.2}M", n / (K * K))
    } else if n < K * K * K * K {
        format!("{:.2}G", n / (K * K * K))
    } else {
        format!("{:.2}T", n / (K * K * K * K))
    }
}

/// Every section, in the order INFO writes them (Redis' order, the
/// proxy's own before the keyspace).
const ORDER: [&str; 11] = [
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "commandstats",
    "errorstats",
    "proxy",
    "keyspace",
];
/// The sections that need the shards' figures.
const FROM_SHARDS: [&str; 5] = ["server", "memory", "persistence", "stats", "keyspace"];

impl Session {
    /// INFO [section ...]: the proxy's own sections and the shards' summed
    /// figures (see the module doc).
    pub(super) async fn info(&mut self, proxy: &Proxy, req: &Request) -> Result<Reply, ProxyError> {
        let want = sections(req.args());
        let ask: Vec<&str> = FROM_SHARDS
            .into_iter()
            .filter(|s| want.contains(*s))
            .collect();
        let shards = if ask.is_empty() {
            ShardFigures::default()
        } else {
            self.shard_figures(proxy, &ask).await
        };
        let mut t = String::new();
        for name in ORDER.into_iter().filter(|s| want.contains(*s)) {
            section(&mut t, proxy, name, &shards);
            t.push_str("\r\n");
        }
        // Like Redis: no blank line after the last section.
        while t.ends_with("\r\n\r\n") {
            t.truncate(t.len() - 2);
        }
        Ok(Reply::Verbatim(Bytes::from(t)))
    }

    /// One `INFO <sections>` to every shard's primary, summed. A shard
    /// that fails is counted in `failed` and left out (INFO still answers
    /// while a shard is down).
    async fn shard_figures(&self, proxy: &Proxy, sections: &[&str]) -> ShardFigures {
        let mut args: Vec<&[u8]> = vec![b"INFO"];
        args.extend(sections.iter().map(|s| s.as_bytes()));
        let mut frame = BytesMut::new();
        encode_command(&args, &mut frame);
        let frame = frame.freeze();
        let backends = proxy.backends();
        let live: Vec<_> = backends
            .shards()
            .iter()
            .filter(|s| s.phase != ShardPhase::Removed)
            .collect();
        let waits: Vec<_> = live
            .iter()
            .map(|s| s.primary.send(self.wire(), self.id, &frame))
            .collect();
        let mut figures = ShardFigures::default();
        for (w, shard) in waits.into_iter().zip(live) {
            let mut text = answered(w.await).ok().and_then(|f| reply::bulk(&f));
            if text.is_none() && sections.len() > 1 {
                // Before Redis 7, INFO took one section: plain INFO has
                // all of these.
                let plain = Bytes::from_static(b"*1\r\n$4\r\nINFO\r\n");
                let again = shard.primary.send(self.wire(), self.id, &plain).await;
                text = answered(again).ok().and_then(|f| reply::bulk(&f));
            }
            match text {
                Some(text) => figures.add(&String::from_utf8_lossy(&text)),
                None => figures.failed += 1,
            }
        }
        figures
    }

    /// MEMORY STATS over every shard's primary, in Redis' shape: integer
    /// fields summed, ratios recomputed from the sums where Redis' formula
    /// is known (else averaged), `db.N` maps merged the same way.
    pub(super) async fn memory_stats(&mut self, proxy: &Proxy) -> Result<Reply, ProxyError> {
        let frame = Bytes::from_static(b"*2\r\n$6\r\nMEMORY\r\n$5\r\nSTATS\r\n");
        let waits: Vec<_> = proxy
            .backends()
            .shards()
            .iter()
            .filter(|s| s.phase != ShardPhase::Removed)
            .map(|s| s.primary.send(self.wire(), self.id, &frame))
            .collect();
        let mut merged = memory::Stats::default();
        for w in waits {
            let frame = answered(w.await)?;
            if reply::is_error(&frame) {
                return Ok(Reply::Frame(frame));
            }
            merged.add(&frame)?;
        }
        Ok(merged.into_reply())
    }
}

/// Appends section `name` (its title and lines).
fn section(t: &mut String, proxy: &Proxy, name: &str, shards: &ShardFigures) {
    match name {
        "server" => server(t, proxy, shards),
        "clients" => {
            let _ = write!(
                t,
                "# Clients\r\nconnected_clients:{}\r\ncluster_connections:0\r\nmaxclients:{}\r\nblocked_clients:{}\r\ntracking_clients:{}\r\ntracking_total_keys:{}\r\n",
                proxy.connected_clients(),
                proxy.config.max_clients,
                proxy.stats.blocked.load(Ordering::Relaxed),
                proxy.tracking.clients(),
                proxy.tracking.len(),
            );
        }
        "memory" => {
            let (rss, peak) = stats::memory_bytes();
            let _ = write!(
                t,
                "# Memory\r\nused_memory:{rss}\r\nused_memory_human:{}\r\nused_memory_rss:{rss}\r\nused_memory_rss_human:{}\r\nused_memory_peak:{peak}\r\nused_memory_peak_human:{}\r\nmaxmemory:0\r\nmaxmemory_human:0B\r\nshards_used_memory:{}\r\nshards_used_memory_human:{}\r\n",
                human(rss),
                human(rss),
                human(peak),
                shards.used_memory,
                human(shards.used_memory),
            );
        }
        "persistence" => persistence(t, shards),
        "stats" => stats_section(t, proxy, shards),
        // The proxy is the one "server" its clients see; the shards'
        // replicas are in the Proxy section.
        "replication" => t.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n"),
        "cpu" => {
            let (user, sys) = stats::cpu_seconds();
            let _ = write!(
                t,
                "# CPU\r\nused_cpu_sys:{sys:.6}\r\nused_cpu_user:{user:.6}\r\nused_cpu_sys_children:0.000000\r\nused_cpu_user_children:0.000000\r\n"
            );
        }
        "commandstats" => commandstats(t),
        "errorstats" => {
            t.push_str("# Errorstats\r\n");
            for (code, n) in hot::error_stats() {
                let _ = write!(t, "errorstat_{code}:count={n}\r\n");
            }
        }
        "proxy" => t.push_str(&proxy.describe()),
        "keyspace" => {
            t.push_str("# Keyspace\r\n");
            for (db, f) in shards.dbs.iter().filter(|(_, f)| f.keys > 0) {
                let avg_ttl = if f.expires > 0 {
                    f.ttl_weight / u128::from(f.expires)
                } else {
                    0
                };
                let _ = write!(
                    t,
                    "db{db}:keys={},expires={},avg_ttl={avg_ttl}\r\n",
                    f.keys, f.expires
                );
            }
        }
        _ => {}
    }
}

fn server(t: &mut String, proxy: &Proxy, shards: &ShardFigures) {
    let uptime = proxy.started.elapsed().as_secs();
    let _ = write!(
        t,
        "# Server\r\nredis_version:{}\r\nredis_mode:standalone\r\nshardgate_version:{}\r\narch_bits:{}\r\nprocess_id:{}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\n",
        shards.version.as_deref().unwrap_or(REDIS_VERSION),
        env!("CARGO_PKG_VERSION"),
        usize::BITS,
        std::process::id(),
        uptime / 86_400,
    );
}

/// The shards' persistence, combined as a client reads one server's:
/// writes since the last save summed (Redis' `dirty`, which test suites
/// and tools watch), the oldest last save, and whether any shard is
/// loading, saving or failed its last save.
fn persistence(t: &mut String, shards: &ShardFigures) {
    let flag = |b: bool| u8::from(b);
    let _ = write!(
        t,
        "# Persistence\r\nloading:{}\r\nasync_loading:0\r\nrdb_changes_since_last_save:{}\r\nrdb_bgsave_in_progress:{}\r\nrdb_last_save_time:{}\r\nrdb_last_bgsave_status:{}\r\naof_enabled:{}\r\naof_rewrite_in_progress:{}\r\n",
        flag(shards.loading),
        shards.changes_since_save,
        flag(shards.saving),
        shards.last_save.unwrap_or(0),
        if shards.save_failed { "err" } else { "ok" },
        flag(shards.aof_everywhere.unwrap_or(false)),
        flag(shards.aof_rewriting),
    );
}

fn stats_section(t: &mut String, proxy: &Proxy, shards: &ShardFigures) {
    let rates = proxy.stats.rates();
    let (input, output) = hot::net_totals();
    let errors: u64 = hot::error_stats().iter().map(|(_, n)| n).sum();
    let _ = write!(
        t,
        "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\ninstantaneous_ops_per_sec:{}\r\ntotal_net_input_bytes:{input}\r\ntotal_net_output_bytes:{output}\r\ninstantaneous_input_kbps:{:.2}\r\ninstantaneous_output_kbps:{:.2}\r\nrejected_connections:{}\r\nexpired_keys:{}\r\nevicted_keys:{}\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\ntotal_error_replies:{errors}\r\nshards_info_failed:{}\r\n",
        proxy.accepted_clients(),
        hot::total_commands(),
        rates.ops_per_sec,
        rates.input_kbps,
        rates.output_kbps,
        proxy.stats.rejected_connections.load(Ordering::Relaxed),
        shards.expired,
        shards.evicted,
        shards.hits,
        shards.misses,
        shards.failed,
    );
}

fn commandstats(t: &mut String) {
    t.push_str("# Commandstats\r\n");
    for i in 0..COMMANDS.len() {
        let s = hot::command_stat(i);
        if s.calls + s.rejected == 0 {
            continue;
        }
        let per_call = if s.calls > 0 {
            s.usec as f64 / s.calls as f64
        } else {
            0.0
        };
        let _ = write!(
            t,
            "cmdstat_{}:calls={},usec={},usec_per_call={per_call:.2},rejected_calls={},failed_calls={}\r\n",
            hot::command_name(i),
            s.calls,
            s.usec,
            s.rejected,
            s.failed
        );
    }
}

/// Summing MEMORY STATS replies.
mod memory {
    use bytes::Bytes;

    use crate::error::ProxyError;
    use crate::protocol::{Reply, reply};

    /// A value of a MEMORY STATS reply.
    #[derive(Debug, Clone)]
    enum Value {
        Int(i64),
        Float { sum: f64, n: u32 },
        Map(Stats),
    }

    /// Field/value pairs in the first shard's order.
    #[derive(Debug, Clone, Default)]
    pub(super) struct Stats(Vec<(String, Value)>);

    fn bad() -> ProxyError {
        ProxyError::err("unexpected MEMORY STATS reply from a shard")
    }

    fn value(frame: &Bytes) -> Result<Value, ProxyError> {
        if let Some(n) = reply::integer(frame) {
            return Ok(Value::Int(n));
        }
        if frame.first() == Some(&b',') {
            let text = std::str::from_utf8(&frame[1..]).map_err(|_| bad())?;
            let v = text.trim().parse::<f64>().map_err(|_| bad())?;
            return Ok(Value::Float { sum: v, n: 1 });
        }
        if let Some(b) = reply::bulk(frame) {
            // RESP2 doubles are bulk strings.
            let v = std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0);
            return Ok(Value::Float { sum: v, n: 1 });
        }
        let mut inner = Stats::default();
        inner.add(frame)?;
        Ok(Value::Map(inner))
    }

    impl Stats {
        /// Adds one shard's reply (a map, or a flat array in RESP2).
        pub(super) fn add(&mut self, frame: &Bytes) -> Result<(), ProxyError> {
            let elems = reply::array_elements(frame)
                .map_err(|_| bad())?
                .ok_or_else(bad)?;
            for pair in elems.chunks(2) {
                let [k, v] = pair else { return Err(bad()) };
                let key = reply::bulk(k).ok_or_else(bad)?;
                let key = String::from_utf8_lossy(&key).into_owned();
                let v = value(v)?;
                match self.0.iter_mut().find(|(n, _)| *n == key) {
                    Some((_, cur)) => merge(cur, v),
                    None => self.0.push((key, v)),
                }
            }
            Ok(())
        }

        fn int(&self, name: &str) -> Option<f64> {
            self.0.iter().find_map(|(n, v)| match v {
                Value::Int(i) if n == name => Some(*i as f64),
                _ => None,
            })
        }

        /// Ratios Redis derives from other fields, recomputed from the sums.
        fn derived(&self, name: &str) -> Option<f64> {
            let ratio = |a: &str, b: &str| {
                let (a, b) = (self.int(a)?, self.int(b)?);
                (b > 0.0).then(|| a / b)
            };
            match name {
                "peak.percentage" => ratio("total.allocated", "peak.allocated").map(|r| r * 100.0),
                "dataset.percentage" => {
                    let net = self.int("total.allocated")? - self.int("startup.allocated")?;
                    let data = self.int("dataset.bytes")?;
                    (net > 0.0).then(|| data * 100.0 / net)
                }
                "allocator.fragmentation.ratio" => ratio("allocator.active", "allocator.allocated"),
                "allocator.rss-ratio" => ratio("allocator.resident", "allocator.active"),
                "rss-overhead.ratio" => {
                    ratio("rss-overhead.bytes", "allocator.resident").map(|r| r + 1.0)
                }
                _ => None,
            }
        }

        pub(super) fn into_reply(self) -> Reply {
            let derived: Vec<Option<f64>> = self.0.iter().map(|(n, _)| self.derived(n)).collect();
            Reply::Map(
                self.0
                    .into_iter()
                    .zip(derived)
                    .map(|((name, v), d)| {
                        let v = match v {
                            Value::Int(i) => Reply::Int(i),
                            Value::Float { sum, n } => {
                                Reply::Double(d.unwrap_or(sum / f64::from(n.max(1))))
                            }
                            Value::Map(m) => m.into_reply(),
                        };
                        (Reply::Bulk(Bytes::from(name)), v)
                    })
                    .collect(),
            )
        }
    }

    fn merge(cur: &mut Value, v: Value) {
        match (cur, v) {
            (Value::Int(a), Value::Int(b)) => *a = a.saturating_add(b),
            (Value::Float { sum, n }, Value::Float { sum: s, n: m }) => {
                *sum += s;
                *n += m;
            }
            (Value::Map(a), Value::Map(b)) => {
                for (k, v) in b.0 {
                    match a.0.iter_mut().find(|(n, _)| *n == k) {
                        Some((_, cur)) => merge(cur, v),
                        None => a.0.push((k, v)),
                    }
                }
            }
            // A type that differs between shards: the first shard's stays.
            _ => {}
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::protocol::Protocol;

        fn frame(r: &Reply, proto: Protocol) -> Bytes {
            let mut out = bytes::BytesMut::new();
            r.encode(proto, &mut out);
            out.freeze()
        }

        #[test]
        fn shards_are_summed_and_ratios_recomputed() {
            let s = |v: &str| Reply::Bulk(Bytes::from(v.to_owned()));
            let shard = |alloc: i64, keys: i64| {
                Reply::Map(vec![
                    (s("peak.allocated"), Reply::Int(alloc * 2)),
                    (s("total.allocated"), Reply::Int(alloc)),
                    (s("peak.percentage"), Reply::Double(50.0)),
                    (
                        s("db.0"),
                        Reply::Map(vec![(s("overhead.hashtable.main"), Reply::Int(keys))]),
                    ),
                    (s("keys.count"), Reply::Int(keys)),
                ])
            };
            for proto in [Protocol::Resp2, Protocol::Resp3] {
                let mut m = Stats::default();
                m.add(&frame(&shard(100, 1), proto)).unwrap();
                m.add(&frame(&shard(300, 2), proto)).unwrap();
                let out = frame(&m.into_reply(), proto);
                let text = String::from_utf8_lossy(&out).into_owned();
                assert!(text.contains(":400\r\n"), "{text}");
                assert!(text.contains(":800\r\n"), "{text}");
                assert!(text.contains(":3\r\n"), "{text}");
                assert!(text.contains("50"), "{text}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<Bytes> {
        a.iter().map(|s| Bytes::from(s.to_string())).collect()
    }

    #[test]
    fn sections_follow_redis_7() {
        let d = sections(&args(&["INFO"]));
        assert!(d.contains("clients") && d.contains("keyspace") && !d.contains("commandstats"));
        assert_eq!(sections(&args(&["INFO", "default"])), d);
        let all = sections(&args(&["INFO", "ALL"]));
        assert!(all.contains("commandstats") && all.contains("cpu"));
        let two = sections(&args(&["INFO", "cpu", "Clients"]));
        assert_eq!(two.len(), 2);
        assert!(two.contains("clients"));
    }

    #[test]
    fn shard_figures_sum_and_take_the_lowest_version() {
        let mut f = ShardFigures::default();
        f.add("redis_version:7.2.4\r\nused_memory:100\r\nkeyspace_hits:3\r\ndb0:keys=10,expires=2,avg_ttl=1000\r\n");
        f.add("redis_version:7.0.15\r\nused_memory:50\r\nkeyspace_hits:4\r\ndb0:keys=5,expires=2,avg_ttl=3000\r\ndb3:keys=1,expires=0,avg_ttl=0\r\n");
        assert_eq!(f.dbs[&3].keys, 1);
        assert_eq!(f.version.as_deref(), Some("7.0.15"));
        let db0 = f.dbs[&0];
        assert_eq!(
            (f.used_memory, f.hits, db0.keys, db0.expires),
            (150, 7, 15, 4)
        );
        assert_eq!(db0.ttl_weight / u128::from(db0.expires), 2000);
        // Persistence: changes summed, the oldest save, any shard saving.
        assert_eq!(f.changes_since_save, 0);
        f.add("loading:0\r\nrdb_changes_since_last_save:7\r\nrdb_bgsave_in_progress:0\r\nrdb_last_save_time:200\r\nrdb_last_bgsave_status:ok\r\naof_enabled:1\r\n");
        f.add("loading:0\r\nrdb_changes_since_last_save:5\r\nrdb_bgsave_in_progress:1\r\nrdb_last_save_time:100\r\nrdb_last_bgsave_status:ok\r\naof_enabled:0\r\n");
        let mut t = String::new();
        persistence(&mut t, &f);
        assert!(t.starts_with("# Persistence\r\nloading:0\r\n"), "{t}");
        for line in [
            "rdb_changes_since_last_save:12",
            "rdb_bgsave_in_progress:1",
            "rdb_last_save_time:100",
            "rdb_last_bgsave_status:ok",
            "aof_enabled:0",
        ] {
            assert!(t.contains(&format!("{line}\r\n")), "{line} in {t}");
        }
        assert_eq!(human(1536), "1.50K");
        assert_eq!(human(10), "10B");
    }

    #[test]
    fn hello_reports_the_older_of_the_shards_and_the_proxy() {
        let of = |v: &[&str]| lowest_of(v.iter().map(|s| (*s).to_owned()));
        assert_eq!(of(&[]), REDIS_VERSION);
        assert_eq!(of(&["7.0.15", "7.2.4"]), REDIS_VERSION);
        assert_eq!(of(&["7.4.1"]), REDIS_VERSION);
        assert_eq!(of(&["7.0.15", "6.2.14", "6.0.20"]), "6.0.20");
        assert_eq!(of(&["6.10.0", "6.9.1"]), "6.9.1");
    }
}

//! The per-request metrics, kept by shardgate itself.
//!
//! Every forwarded command updates a command counter, the command latency
//! histogram, the backend round-trip histogram and, for reads, a read
//! counter. Through the exporter's handles each of those is a shared atomic
//! (two for a counter) and, for a histogram, a timestamped sample pushed onto
//! a lock-free list: 12-14% of the proxy's CPU at `-P 16`, and cache lines
//! bouncing between serving threads.
//!
//! Here each metric has one row of plain relaxed atomics per serving thread
//! (a thread only ever touches its own row, so nothing bounces); a histogram
//! row is its bucket counts and the sum in nanoseconds. `/metrics` adds the
//! rows up when it is scraped and renders them in the exporter's text format
//! ([`render`]), next to everything the exporter holds. Storage is keyed by
//! label set and never dropped, like the exporter's: an endpoint that comes
//! back after a reload continues its series, and counters never go down.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use super::{
    BACKEND_DURATION, COALESCE_OUTCOMES, COALESCED_READS, COMMAND_DURATION, COMMANDS_TOTAL,
    LATENCY_BUCKETS, READS_TOTAL,
};
use crate::command::table::COMMANDS;

/// Bucket bounds in nanoseconds ([`LATENCY_BUCKETS`]); one more bucket, for
/// everything above the last bound, follows.
static BOUNDS_NS: LazyLock<Vec<u64>> = LazyLock::new(|| {
    LATENCY_BUCKETS
        .iter()
        .map(|s| (s * 1e9).round() as u64)
        .collect()
});

/// Rows per metric: one per serving thread (one when there are none).
fn rows() -> usize {
    crate::workers::handles().len().max(1)
}

/// The calling thread's row. Threads other than serving threads share row 0
/// with serving thread 0: the atomics keep that correct.
fn row(n: usize) -> usize {
    crate::workers::current().min(n - 1)
}

/// A row on its own cache lines.
#[repr(align(128))]
struct Padded<T>(T);

/// A latency histogram.
pub struct Histogram {
    rows: Box<[Padded<HistRow>]>,
}

struct HistRow {
    /// Per bucket (not cumulative), the last one for values over every bound.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        let buckets = BOUNDS_NS.len() + 1;
        Histogram {
            rows: (0..rows())
                .map(|_| {
                    Padded(HistRow {
                        buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
                        sum_ns: AtomicU64::new(0),
                    })
                })
                .collect(),
        }
    }

    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NS.partition_point(|&b| b < ns);
        let r = &self.rows[row(self.rows.len())].0;
        r.buckets[bucket].fetch_add(1, Relaxed);
        r.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Samples recorded, over every row.
    pub fn count(&self) -> u64 {
        self.rows
            .iter()
            .map(|r| r.0.buckets.iter().map(|b| b.load(Relaxed)).sum::<u64>())
            .sum()
    }

    /// Per-bucket counts and the sum in nanoseconds, over every row.
    fn snapshot(&self) -> (Vec<u64>, u64) {
        let mut counts = vec![0u64; BOUNDS_NS.len() + 1];
        let mut sum = 0u64;
        for r in self.rows.iter() {
            for (c, b) in counts.iter_mut().zip(r.0.buckets.iter()) {
                *c += b.load(Relaxed);
            }
            sum = sum.wrapping_add(r.0.sum_ns.load(Relaxed));
        }
        (counts, sum)
    }
}

/// A set of counters, one per index.
pub struct Counters {
    rows: Box<[Padded<Box<[AtomicU64]>>]>,
}

impl Counters {
    fn new(n: usize) -> Counters {
        Counters {
            rows: (0..rows())
                .map(|_| Padded((0..n).map(|_| AtomicU64::new(0)).collect()))
                .collect(),
        }
    }

    /// Adds `by` to counter `i`.
    pub fn add(&self, i: usize, by: u64) {
        if let Some(c) = self.rows[row(self.rows.len())].0.get(i) {
            c.fetch_add(by, Relaxed);
        }
    }

    fn get(&self, i: usize) -> u64 {
        self.rows
            .iter()
            .map(|r| r.0.get(i).map_or(0, |c| c.load(Relaxed)))
            .sum()
    }
}

/// Proxy-wide per-request metrics.
pub struct ProxyCounters {
    /// `shardgate_commands_total` and INFO commandstats:
    /// `OUTCOMES * command + outcome` (see [`Outcome`]), the unknown
    /// command last.
    pub commands: Counters,
    /// `shardgate_command_duration_seconds{command}`: one histogram per
    /// row of the command table, the unknown command last (the label set
    /// is fixed by the table, never by client input).
    pub command_duration: Box<[Histogram]>,
    /// Bytes read from and written to client sockets (INFO
    /// `total_net_input_bytes` / `total_net_output_bytes`).
    pub net: Counters,
    /// Error replies by code (INFO errorstats): [`ERROR_CODES`] first,
    /// then one slot for every other code (kept by name in the registry).
    pub errors: Counters,
}

/// How a command ended, for `shardgate_commands_total` and INFO
/// commandstats (Redis' `calls`, `failed_calls`, `rejected_calls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A reply that is not an error.
    Ok,
    /// An error reply from the shard that ran it (Redis' `failed_calls`).
    Failed,
    /// An error the proxy answered without running it on a shard: arity,
    /// permissions, CROSSSLOT, refusals (Redis' `rejected_calls`).
    Rejected,
}

/// Counters per command in [`ProxyCounters::commands`].
pub const OUTCOMES: usize = 3;

/// Error codes counted without a lock (what Redis and the proxy answer);
/// any other code is kept by name, at most [`MAX_OTHER_ERROR_CODES`] of
/// them, as Redis caps its errorstats.
pub const ERROR_CODES: [&str; 24] = [
    "ERR",
    "WRONGTYPE",
    "CROSSSLOT",
    "TRYAGAIN",
    "NOAUTH",
    "NOPERM",
    "WRONGPASS",
    "EXECABORT",
    "NOSCRIPT",
    "BUSY",
    "BUSYKEY",
    "BUSYGROUP",
    "NOGROUP",
    "LOADING",
    "READONLY",
    "OOM",
    "MASTERDOWN",
    "MISCONF",
    "NOPROTO",
    "UNBLOCKED",
    "NOREPLICAS",
    "NOTBUSY",
    "UNKILLABLE",
    "MOVED",
];

/// Distinct other error codes kept by name (Redis keeps 128 in all).
pub const MAX_OTHER_ERROR_CODES: usize = 128 - ERROR_CODES.len();

/// Index in [`ProxyCounters::commands`] of the `unknown` command.
pub const UNKNOWN_COMMAND: usize = COMMANDS.len();

/// Per-request metrics of one endpoint (shard, endpoint, role).
pub struct EndpointCounters {
    /// `shardgate_backend_request_duration_seconds`.
    pub duration: Histogram,
    /// `shardgate_reads_total` of the endpoint's (shard, role) at index 0,
    /// then `shardgate_coalesced_reads_total` by outcome.
    pub reads: Arc<Counters>,
}

/// (shard, endpoint, role)
type EndpointKey = (String, String, &'static str);

#[derive(Default)]
struct Registry {
    endpoints: BTreeMap<EndpointKey, Arc<EndpointCounters>>,
    /// Keyed by (shard, role): a shard's replicas share one series.
    reads: BTreeMap<(String, &'static str), Arc<Counters>>,
    /// Error codes outside [`ERROR_CODES`], by name.
    other_errors: BTreeMap<String, u64>,
}

static PROXY: LazyLock<Arc<ProxyCounters>> = LazyLock::new(|| {
    Arc::new(ProxyCounters {
        commands: Counters::new(OUTCOMES * (COMMANDS.len() + 1)),
        command_duration: (0..=COMMANDS.len()).map(|_| Histogram::new()).collect(),
        net: Counters::new(2),
        errors: Counters::new(ERROR_CODES.len()),
    })
});

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The proxy-wide metrics (one set per process, like the exporter's).
pub fn proxy() -> Arc<ProxyCounters> {
    PROXY.clone()
}

/// The metrics of endpoint `endpoint` of `shard` in `role`, created on first use.
pub fn endpoint(shard: &str, endpoint: &str, role: &'static str) -> Arc<EndpointCounters> {
    let mut r = registry();
    let key = (shard.to_owned(), endpoint.to_owned(), role);
    if let Some(e) = r.endpoints.get(&key) {
        return e.clone();
    }
    let reads = r
        .reads
        .entry((shard.to_owned(), role))
        .or_insert_with(|| Arc::new(Counters::new(1 + COALESCE_OUTCOMES.len())))
        .clone();
    let e = Arc::new(EndpointCounters {
        duration: Histogram::new(),
        reads,
    });
    r.endpoints.insert(key, e.clone());
    e
}

/// The name of row `i` of the command table (`unknown` past its end).
pub fn command_name(i: usize) -> &'static str {
    COMMANDS.get(i).map_or("unknown", |c| c.name)
}

/// One command's figures, as INFO commandstats shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandStat {
    /// Runs that were not rejected (Redis' `calls`).
    pub calls: u64,
    /// Time spent in all runs, microseconds.
    pub usec: u64,
    pub failed: u64,
    pub rejected: u64,
}

/// Figures of command row `i` (the unknown command at `COMMANDS.len()`).
pub fn command_stat(i: usize) -> CommandStat {
    let p = &*PROXY;
    let ok = p.commands.get(OUTCOMES * i);
    let failed = p.commands.get(OUTCOMES * i + 1);
    let rejected = p.commands.get(OUTCOMES * i + 2);
    let usec = p
        .command_duration
        .get(i)
        .map_or(0, |h| h.snapshot().1 / 1_000);
    CommandStat {
        calls: ok + failed,
        usec,
        failed,
        rejected,
    }
}

/// Counts one error reply whose text starts with `code` (the first word
/// of the error, e.g. `ERR`, `WRONGTYPE`).
pub fn error_reply(code: &[u8]) {
    match ERROR_CODES.iter().position(|c| c.as_bytes() == code) {
        Some(i) => PROXY.errors.add(i, 1),
        None => {
            let Ok(code) = std::str::from_utf8(code) else {
                return;
            };
            let mut r = registry();
            if let Some(n) = r.other_errors.get_mut(code) {
                *n += 1;
            } else if r.other_errors.len() < MAX_OTHER_ERROR_CODES {
                r.other_errors.insert(code.to_owned(), 1);
            }
        }
    }
}

/// Error replies by code, codes that never occurred left out.
pub fn error_stats() -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = ERROR_CODES
        .iter()
        .enumerate()
        .map(|(i, c)| ((*c).to_owned(), PROXY.errors.get(i)))
        .filter(|(_, n)| *n > 0)
        .collect();
    all.extend(registry().other_errors.iter().map(|(c, n)| (c.clone(), *n)));
    all
}

/// Commands run (not rejected) since start: INFO `total_commands_processed`.
pub fn total_commands() -> u64 {
    (0..=COMMANDS.len())
        .map(|i| PROXY.commands.get(OUTCOMES * i) + PROXY.commands.get(OUTCOMES * i + 1))
        .sum()
}

/// Bytes read from (`input`) or written to client sockets.
pub fn net_bytes(input: bool, n: usize) {
    PROXY.net.add(usize::from(!input), n as u64);
}

/// (bytes read from clients, bytes written to clients) since start.
pub fn net_totals() -> (u64, u64) {
    (PROXY.net.get(0), PROXY.net.get(1))
}

/// Appends these metrics in the Prometheus text format, with `help` giving
/// each family's help text.
pub fn render(out: &mut String, help: impl Fn(&str) -> &'static str) {
    let family = |out: &mut String, name: &str, kind: &str| {
        let _ = writeln!(out, "# HELP {name} {}", help(name));
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    let proxy = proxy();

    family(out, COMMANDS_TOTAL, "counter");
    for i in 0..=COMMANDS.len() {
        let name = command_name(i);
        let ok = proxy.commands.get(OUTCOMES * i);
        // `error` is failed and rejected together (what dashboards count).
        let error = proxy.commands.get(OUTCOMES * i + 1) + proxy.commands.get(OUTCOMES * i + 2);
        for (outcome, n) in [("ok", ok), ("error", error)] {
            // Like the exporter: a series appears once it has counted.
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{COMMANDS_TOTAL}{{command=\"{}\",outcome=\"{outcome}\"}} {n}",
                    escape(name)
                );
            }
        }
    }
    out.push('\n');

    family(out, COMMAND_DURATION, "histogram");
    for (i, h) in proxy.command_duration.iter().enumerate() {
        if h.count() > 0 {
            let labels = format!("command=\"{}\",", escape(command_name(i)));
            histogram(out, COMMAND_DURATION, &labels, h);
        }
    }
    out.push('\n');

    let r = registry();
    family(out, BACKEND_DURATION, "histogram");
    for ((shard, endpoint, role), e) in &r.endpoints {
        let labels = format!(
            "shard=\"{}\",endpoint=\"{}\",role=\"{role}\",",
            escape(shard),
            escape(endpoint)
        );
        histogram(out, BACKEND_DURATION, &labels, &e.duration);
    }
    out.push('\n');

    family(out, READS_TOTAL, "counter");
    for ((shard, role), c) in &r.reads {
        let _ = writeln!(
            out,
            "{READS_TOTAL}{{shard=\"{}\",role=\"{role}\"}} {}",
            escape(shard),
            c.get(0)
        );
    }
    out.push('\n');

    family(out, COALESCED_READS, "counter");
    for ((shard, role), c) in &r.reads {
        for (i, outcome) in COALESCE_OUTCOMES.iter().enumerate() {
            // Like the exporter: a series appears once it has counted.
            let n = c.get(1 + i);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{COALESCED_READS}{{shard=\"{}\",role=\"{role}\",outcome=\"{outcome}\"}} {n}",
                    escape(shard)
                );
            }
        }
    }
    out.push('\n');
}

/// One histogram's `_bucket`, `_sum` and `_count` lines; `labels` is empty or
/// ends with a comma.
fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let (counts, sum_ns) = h.snapshot();
    let mut cumulative = 0u64;
    for (bound, n) in LATENCY_BUCKETS.iter().zip(&counts) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
    }
    cumulative += counts.last().copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
    let labels = labels.trim_end_matches(',');
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", sum_ns as f64 / 1e9);
    let _ = writeln!(out, "{name}_count{braces} {cumulative}");
}

/// A label value as the text format wants it.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_an_exact_sum() {
        let h = Histogram::new();
        for us in [10, 50, 51, 100, 2_000, 20_000_000] {
            h.record(Duration::from_micros(us));
        }
        let mut out = String::new();
        histogram(&mut out, "x", "a=\"b\",", &h);
        let lines: Vec<&str> = out.lines().collect();
        // le=50us holds 10 and 50 (bounds are inclusive), 100us adds 51 and 100.
        assert_eq!(lines[0], "x_bucket{a=\"b\",le=\"0.00005\"} 2");
        assert_eq!(lines[1], "x_bucket{a=\"b\",le=\"0.0001\"} 4");
        assert_eq!(lines[4], "x_bucket{a=\"b\",le=\"0.001\"} 4");
        assert_eq!(lines[5], "x_bucket{a=\"b\",le=\"0.0025\"} 5");
        assert_eq!(lines[16], "x_bucket{a=\"b\",le=\"10\"} 5");
        assert_eq!(lines[17], "x_bucket{a=\"b\",le=\"+Inf\"} 6");
        assert_eq!(lines[18], "x_sum{a=\"b\"} 20.002211");
        assert_eq!(lines[19], "x_count{a=\"b\"} 6");
    }

    #[test]
    fn endpoints_with_the_same_labels_share_their_series() {
        let a = endpoint("hot-test", "127.0.0.1:1", "primary");
        let b = endpoint("hot-test", "127.0.0.1:1", "primary");
        let replica = endpoint("hot-test", "127.0.0.1:2", "replica");
        let replica2 = endpoint("hot-test", "127.0.0.1:3", "replica");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&replica.reads, &replica2.reads));
        assert!(!Arc::ptr_eq(&a.reads, &replica.reads));
        replica.reads.add(0, 2);
        replica2.reads.add(0, 3);
        let mut out = String::new();
        render(&mut out, |_| "help");
        assert!(
            out.contains("shardgate_reads_total{shard=\"hot-test\",role=\"replica\"} 5\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE shardgate_backend_request_duration_seconds histogram\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape("plain"), "plain");
    }
}

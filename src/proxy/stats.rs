//! What the proxy counts about its own work, for INFO and the slow log:
//! the end of every command (metrics, error codes, slow log), clients in a
//! blocking command, connections refused, the instantaneous rates Redis
//! reports (sampled every 100 ms, as Redis' `serverCron` does), and the
//! process' own CPU time and memory.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Proxy;
use super::session::Session;
use crate::command::{CommandSpec, Handling};
use crate::metrics::hot::{self, Outcome};
use crate::otel::{Sampled, TracedRequest};

/// Samples kept for the instantaneous rates (Redis' `STATS_METRIC_SAMPLES`).
const SAMPLES: usize = 16;
/// Time between samples (Redis samples in `serverCron`, every 100 ms).
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The proxy's own counters that are not metrics.
#[derive(Default)]
pub struct ProxyStats {
    /// Clients waiting in a blocking command now.
    pub(super) blocked: AtomicUsize,
    /// Connections refused by `--max-clients` or the unauthenticated limit.
    pub(super) rejected_connections: AtomicU64,
    /// (when, commands, bytes in, bytes out), oldest first.
    samples: Mutex<VecDeque<(Instant, u64, u64, u64)>>,
    sampling: AtomicBool,
}

/// Per-second rates over the last [`SAMPLES`] samples.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rates {
    pub ops_per_sec: u64,
    pub input_kbps: f64,
    pub output_kbps: f64,
}

impl ProxyStats {
    /// Takes one sample of the totals.
    fn sample(&self) {
        let (input, output) = hot::net_totals();
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() == SAMPLES {
            s.pop_front();
        }
        s.push_back((Instant::now(), hot::total_commands(), input, output));
    }

    /// Starts the sampler once per proxy; it stops when `stop` fires.
    pub(super) fn start_sampling(
        self: &std::sync::Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.sampling.swap(true, Ordering::Relaxed) {
            return;
        }
        let stats = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => stats.sample(),
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
    }

    /// The rates between the oldest and the newest sample.
    pub fn rates(&self) -> Rates {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(first), Some(last)) = (s.front(), s.back()) else {
            return Rates::default();
        };
        let secs = last.0.saturating_duration_since(first.0).as_secs_f64();
        if secs <= 0.0 {
            return Rates::default();
        }
        let per_sec = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
        Rates {
            ops_per_sec: per_sec(first.1, last.1).round() as u64,
            input_kbps: per_sec(first.2, last.2) / 1024.0,
            output_kbps: per_sec(first.3, last.3) / 1024.0,
        }
    }
}

/// Counts a client as blocked for as long as it lives (the blocking
/// command's future may be dropped when the client hangs up).
pub(super) struct Blocked<'a>(&'a Proxy);

impl<'a> Blocked<'a> {
    pub(super) fn new(proxy: &'a Proxy) -> Self {
        proxy.stats.blocked.fetch_add(1, Ordering::Relaxed);
        proxy.metrics.blocked_delta(1.0);
        Blocked(proxy)
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.0.stats.blocked.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.blocked_delta(-1.0);
    }
}

/// Whether a request to a blocking command may block: XREAD and
/// XREADGROUP only with BLOCK (the others always may).
pub(super) fn may_block_req(req: &crate::protocol::Request) -> bool {
    let args = req.args();
    let xread = args
        .first()
        .is_some_and(|n| n.eq_ignore_ascii_case(b"XREAD") || n.eq_ignore_ascii_case(b"XREADGROUP"));
    !xread || args.iter().any(|a| a.eq_ignore_ascii_case(b"BLOCK"))
}

/// A command whose reply is ready.
pub(super) struct Finished<'a> {
    pub spec: Option<&'static CommandSpec>,
    /// The reply is not an error.
    pub ok: bool,
    /// The proxy answered it without a shard.
    pub rejected: bool,
    /// The reply's bytes (looked at only for an error).
    pub reply: &'a [u8],
    /// From parse to reply.
    pub elapsed: Duration,
    /// The request, when kept for the slow log.
    pub raw: Option<&'a Bytes>,
    /// The one shard it ran on, when known.
    pub shard: Option<crate::router::ShardId>,
    /// The backend's round trip, when known.
    pub backend_us: Option<u32>,
}

/// The client a command came from, for the slow log (its session's
/// fields, borrowed apart from the rest of the session).
#[derive(Clone, Copy)]
pub(super) struct Peer<'a> {
    pub addr: &'a str,
    pub name: Option<&'a Bytes>,
}

impl<'a> Peer<'a> {
    /// The client of `session`.
    pub(super) fn of(session: &'a Session) -> Peer<'a> {
        Peer {
            addr: &session.addr,
            name: session.name.as_ref(),
        }
    }
}

impl Proxy {
    /// Everything that happens when a command's reply is ready: its
    /// metrics, the error code of an error reply (INFO errorstats) and,
    /// when it was slow, the slow log.
    pub(super) fn command_finished(&self, f: Finished<'_>, peer: Peer<'_>) {
        let Finished {
            spec,
            ok,
            rejected,
            reply: reply_bytes,
            elapsed,
            raw,
            shard,
            backend_us,
        } = f;
        let outcome = match (ok, rejected) {
            (true, _) => Outcome::Ok,
            (false, true) => Outcome::Rejected,
            (false, false) => Outcome::Failed,
        };
        self.metrics.command_done(spec, outcome, elapsed);
        if !ok {
            count_error(reply_bytes);
        }
        let shard_name = || {
            shard.and_then(|id| {
                self.backends()
                    .shards()
                    .get(usize::from(id.0))
                    .map(|s| s.name.clone())
            })
        };
        // A blocking command's time is the client's own wait.
        if let Some(traces) = &self.config.traces
            && let Some(why) = traces.wants(elapsed, ok)
            && !(why == Sampled::Slow
                && spec.is_some_and(|s| matches!(s.handling, Handling::Blocking)))
        {
            let shard = shard_name();
            traces.record(TracedRequest {
                command: spec.map_or("unknown", |s| s.name),
                elapsed,
                backend: backend_us.map(|us| Duration::from_micros(u64::from(us))),
                shard: shard.as_deref(),
                client: peer.addr,
                error: (!ok).then_some(reply_bytes),
                why,
            });
            self.metrics.trace_span(why.as_str());
        }
        if self.slowlog.is_slow(elapsed)
            && let (Some(raw), Some(spec)) = (raw, spec)
            && !spec.flags.contains(crate::command::Flags::SKIP_SLOWLOG)
            && !matches!(spec.handling, Handling::Blocking)
        {
            let shard = shard_name();
            self.slowlog.record(
                &self.metrics,
                raw,
                elapsed,
                peer.addr,
                peer.name,
                super::slowlog::Details {
                    backend_us: backend_us.map(u64::from),
                    shard,
                },
            );
        }
    }
}

/// Counts an error reply by its code (its first word), without allocating.
fn count_error(frame: &[u8]) {
    if let Some(code) = error_code(frame) {
        hot::error_reply(code);
    }
}

/// The code of an error reply: the first word of a `-` error or of a RESP3
/// `!` blob error.
fn error_code(frame: &[u8]) -> Option<&[u8]> {
    let text = match frame.first()? {
        b'-' => &frame[1..],
        b'!' => {
            let start = frame.iter().position(|&b| b == b'\n')? + 1;
            frame.get(start..)?
        }
        _ => return None,
    };
    let end = text
        .iter()
        .position(|&b| matches!(b, b' ' | b'\r' | b'\n'))
        .unwrap_or(text.len());
    (end > 0).then(|| &text[..end])
}

/// CPU seconds this process spent (user, system), from
/// `/proc/self/stat` (zero where there is none).
pub fn cpu_seconds() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (0.0, 0.0);
    };
    // After the command name in parentheses: state is field 3, utime 14,
    // stime 15 (in clock ticks; USER_HZ is 100 on Linux).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return (0.0, 0.0);
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0) as f64
            / 100.0
    };
    (ticks(11), ticks(12))
}

/// Resident memory now and at its peak, in bytes, from
/// `/proc/self/status` (zero where there is none).
pub fn memory_bytes() -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (0, 0);
    };
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let rss = kib("VmRSS:");
    (rss, kib("VmHWM:").max(rss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_are_read() {
        let (user, sys) = cpu_seconds();
        assert!(user >= 0.0 && sys >= 0.0);
        let (rss, peak) = memory_bytes();
        if cfg!(target_os = "linux") {
            assert!(rss > 0 && peak >= rss, "{rss} {peak}");
        }
    }

    #[test]
    fn error_codes_are_the_first_word() {
        assert_eq!(error_code(b"-ERR no such key\r\n"), Some(&b"ERR"[..]));
        assert_eq!(
            error_code(b"-WRONGTYPE Operation\r\n"),
            Some(&b"WRONGTYPE"[..])
        );
        assert_eq!(
            error_code(b"!21\r\nSYNTAX invalid syntax\r\n"),
            Some(&b"SYNTAX"[..])
        );
        assert_eq!(error_code(b"+OK\r\n"), None);
        assert_eq!(error_code(b"-\r\n"), None);
    }

    #[test]
    fn rates_need_two_samples() {
        let s = ProxyStats::default();
        assert_eq!(s.rates().ops_per_sec, 0);
        s.sample();
        std::thread::sleep(Duration::from_millis(5));
        s.sample();
        assert!(s.rates().input_kbps >= 0.0);
    }
}

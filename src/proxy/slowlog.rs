//! The proxy's own slow log: commands through this proxy that took longer
//! than `--slowlog-log-slower-than` microseconds, from the moment their
//! request was parsed to the moment their reply was ready (so a slow shard,
//! a slow network to it and time queued in the proxy all count; a client
//! slow to read its replies does not). Answered by `SLOWLOG GET [n]`,
//! `LEN`, `RESET` and `HELP` in Redis' reply shape.
//!
//! Cost on the hot path: the check is one comparison of the duration the
//! metrics already measured; nothing is allocated unless the command was
//! slow. The request's bytes stay referenced (one reference count, no copy)
//! until its reply is ready, so that a slow one can be logged with its
//! arguments.
//!
//! Each entry has Redis' six elements (id, unix time, duration in µs,
//! arguments, client address, client name) and no more: go-redis reads
//! exactly six elements of an entry from the stream, so a seventh would
//! break its next reply. `SLOWLOG GET <count> DETAILS` (never sent by a
//! client library) adds a seventh, a map of what the proxy knows beyond
//! Redis: `proxy_us` and `backend_us` (the backend's round trip; nil when
//! unknown: commands on dedicated connections, refused ones) and `shard`
//! (nil when the command ran on several shards or none).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::protocol::{Limits, Reply, parse_request};

/// Redis' `SLOWLOG_ENTRY_MAX_ARGC`: arguments kept per entry.
const MAX_ARGC: usize = 32;
/// Redis' `SLOWLOG_ENTRY_MAX_STRING`: bytes kept per argument.
const MAX_STRING: usize = 128;
/// Entries `SLOWLOG GET` returns without a count (Redis' default).
const DEFAULT_GET: usize = 10;

/// Settings, from `--slowlog-log-slower-than` and `--slowlog-max-len`
/// (Redis' configuration names and defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowlogConfig {
    /// Microseconds; a negative value turns the log off, 0 logs every command.
    pub slower_than_us: i64,
    /// Entries kept; the oldest goes when a new one would exceed it.
    pub max_len: usize,
}

impl Default for SlowlogConfig {
    fn default() -> Self {
        SlowlogConfig {
            slower_than_us: 10_000,
            max_len: 128,
        }
    }
}

/// One logged command.
struct Entry {
    id: u64,
    unix_secs: u64,
    micros: u64,
    args: Vec<Bytes>,
    addr: String,
    name: Bytes,
    details: Details,
}

/// What the proxy knows of a slow command beyond Redis' entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    /// The backend's round trip (the longest part's when split), µs.
    pub backend_us: Option<u64>,
    /// The shard it ran on, when it ran on one.
    pub shard: Option<String>,
}

/// The log: at most `max_len` entries (memory bounded by `max_len` times
/// 32 arguments of at most 128 bytes and a suffix).
pub struct Slowlog {
    /// `None`: off.
    threshold: Option<Duration>,
    max_len: usize,
    entries: Mutex<VecDeque<Entry>>,
    next_id: AtomicU64,
}

impl Slowlog {
    /// An empty log with these settings.
    pub fn new(config: SlowlogConfig) -> Slowlog {
        Slowlog {
            threshold: u64::try_from(config.slower_than_us)
                .ok()
                .map(Duration::from_micros),
            max_len: config.max_len,
            entries: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Whether requests must be kept until their reply (the log is on).
    pub fn keeps_requests(&self) -> bool {
        self.threshold.is_some() && self.max_len > 0
    }

    /// Whether a command that took `elapsed` goes into the log.
    #[inline]
    pub fn is_slow(&self, elapsed: Duration) -> bool {
        self.threshold.is_some_and(|t| elapsed > t) && self.max_len > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs the request `raw` (a RESP multibulk, as parsed) that took
    /// `elapsed`, sent by the client at `addr` named `name`.
    pub fn record(
        &self,
        metrics: &Metrics,
        raw: &Bytes,
        elapsed: Duration,
        addr: &str,
        name: Option<&Bytes>,
        details: Details,
    ) {
        let mut buf = BytesMut::from(raw.as_ref());
        let args = match parse_request(&mut buf, &Limits::default()) {
            Ok(Some(req)) => truncate_args(req.args()),
            _ => return,
        };
        let entry = Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            unix_secs: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            micros: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            args,
            addr: addr.to_owned(),
            name: name.cloned().unwrap_or_default(),
            details,
        };
        let len = {
            let mut entries = self.lock();
            entries.push_front(entry);
            entries.truncate(self.max_len);
            entries.len()
        };
        metrics.slowlog_entry(len);
    }

    /// Answers `SLOWLOG <subcommand> ...` (`args[0]` is `SLOWLOG`).
    pub fn command(&self, metrics: &Metrics, args: &[Bytes]) -> Result<Reply, ProxyError> {
        let sub = args
            .get(1)
            .map(|s| s.to_ascii_uppercase())
            .unwrap_or_default();
        let arity = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(ProxyError::err(format!(
                    "wrong number of arguments for 'slowlog|{}' command",
                    String::from_utf8_lossy(&sub).to_lowercase()
                )))
            }
        };
        match sub.as_slice() {
            b"GET" => {
                let details = args
                    .get(3)
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"DETAILS"));
                arity(args.len() <= 3 || (args.len() == 4 && details))?;
                let count = match args.get(2) {
                    None => DEFAULT_GET,
                    Some(n) => {
                        match std::str::from_utf8(n)
                            .ok()
                            .and_then(|s| s.parse::<i64>().ok())
                        {
                            Some(-1) => usize::MAX,
                            Some(n) if n >= 0 => usize::try_from(n).unwrap_or(usize::MAX),
                            Some(_) => {
                                return Err(ProxyError::err(
                                    "count should be greater than or equal to -1",
                                ));
                            }
                            None => {
                                return Err(ProxyError::err(
                                    "value is not an integer or out of range",
                                ));
                            }
                        }
                    }
                };
                Ok(Reply::Array(
                    self.lock()
                        .iter()
                        .take(count)
                        .map(|e| entry_reply(e, details))
                        .collect(),
                ))
            }
            b"LEN" => {
                arity(args.len() == 2)?;
                Ok(Reply::Int(self.lock().len() as i64))
            }
            b"RESET" => {
                arity(args.len() == 2)?;
                self.lock().clear();
                metrics.slowlog_reset();
                Ok(Reply::Ok)
            }
            b"HELP" => {
                arity(args.len() == 2)?;
                Ok(Reply::Array(
                    HELP.iter().map(|l| Reply::Simple((*l).into())).collect(),
                ))
            }
            _ => Err(ProxyError::err(format!(
                "unknown subcommand or wrong number of arguments for '{}'. Try SLOWLOG HELP.",
                String::from_utf8_lossy(args.get(1).map_or(&b""[..], |a| a.as_ref()))
            ))),
        }
    }
}

const HELP: [&str; 13] = [
    "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET [<count> [DETAILS]]",
    "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
    "    DETAILS (shardgate): a 7th element, proxy_us, backend_us and shard.",
    "    Entries are made of:",
    "    id, timestamp, time in microseconds, arguments array, client IP and port,",
    "    client name",
    "LEN",
    "    Return the length of the slowlog.",
    "RESET",
    "    Reset the slowlog.",
    "HELP",
    "    Prints this help.",
];

/// Redis' truncation: at most 32 arguments, the last of them saying how
/// many more there were; strings over 128 bytes cut with how many more
/// bytes there were.
fn truncate_args(args: &[Bytes]) -> Vec<Bytes> {
    let kept = args.len().min(MAX_ARGC);
    (0..kept)
        .map(|j| {
            if kept != args.len() && j == kept - 1 {
                Bytes::from(format!("... ({} more arguments)", args.len() - kept + 1))
            } else if args[j].len() > MAX_STRING {
                let mut s = BytesMut::from(&args[j][..MAX_STRING]);
                s.extend_from_slice(
                    format!("... ({} more bytes)", args[j].len() - MAX_STRING).as_bytes(),
                );
                s.freeze()
            } else {
                // A copy: the entry must not pin the client's read buffer.
                Bytes::copy_from_slice(&args[j])
            }
        })
        .collect()
}

fn entry_reply(e: &Entry, details: bool) -> Reply {
    let int = |n: u64| Reply::Int(i64::try_from(n).unwrap_or(i64::MAX));
    let mut entry = vec![
        int(e.id),
        int(e.unix_secs),
        int(e.micros),
        Reply::Array(e.args.iter().cloned().map(Reply::Bulk).collect()),
        Reply::Bulk(Bytes::from(e.addr.clone())),
        Reply::Bulk(e.name.clone()),
    ];
    if details {
        let key = |k: &'static str| Reply::Bulk(Bytes::from_static(k.as_bytes()));
        let d = &e.details;
        entry.push(Reply::Map(vec![
            (
                key("proxy_us"),
                int(e.micros.saturating_sub(d.backend_us.unwrap_or(0))),
            ),
            (key("backend_us"), d.backend_us.map_or(Reply::Nil, int)),
            (
                key("shard"),
                d.shard
                    .clone()
                    .map_or(Reply::Nil, |s| Reply::Bulk(Bytes::from(s))),
            ),
        ]));
    }
    Reply::Array(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_truncated_as_redis_does() {
        let args: Vec<Bytes> = (0..40).map(|i| Bytes::from(format!("a{i}"))).collect();
        let t = truncate_args(&args);
        assert_eq!(t.len(), 32);
        assert_eq!(t[30], "a30");
        assert_eq!(t[31], "... (9 more arguments)");
        let long = vec![Bytes::from("SET"), Bytes::from(vec![b'x'; 200])];
        let t = truncate_args(&long);
        assert_eq!(t[0], "SET");
        assert_eq!(t[1].len(), 128 + "... (72 more bytes)".len());
        assert!(t[1].ends_with(b"... (72 more bytes)"));
        // Exactly 32 arguments are kept whole.
        assert_eq!(truncate_args(&args[..32]), args[..32].to_vec());
    }

    #[test]
    fn the_log_is_bounded_newest_first_and_off_when_negative() {
        let m = Metrics::new();
        let log = Slowlog::new(SlowlogConfig {
            slower_than_us: 1000,
            max_len: 2,
        });
        assert!(!log.is_slow(Duration::from_micros(1000)));
        assert!(log.is_slow(Duration::from_micros(1001)));
        for key in ["a", "b", "c"] {
            let raw = Bytes::from(format!("*2\r\n$3\r\nGET\r\n$1\r\n{key}\r\n"));
            let details = Details {
                backend_us: Some(4000),
                shard: Some("s1".to_owned()),
            };
            log.record(
                &m,
                &raw,
                Duration::from_millis(5),
                "1.2.3.4:5",
                None,
                details,
            );
        }
        let get = |n: Option<&str>| {
            let mut a = vec![Bytes::from("SLOWLOG"), Bytes::from("GET")];
            a.extend(n.map(|n| Bytes::from(n.to_owned())));
            log.command(&m, &a)
        };
        let Ok(Reply::Array(all)) = get(None) else {
            panic!("not an array")
        };
        assert_eq!(all.len(), 2);
        let Reply::Array(first) = &all[0] else {
            panic!("not an entry")
        };
        assert_eq!(first.len(), 6);
        assert!(matches!(first[0], Reply::Int(2)));
        assert!(matches!(first[2], Reply::Int(5000)));
        let Ok(Reply::Array(one)) = get(Some("1")) else {
            panic!("not an array")
        };
        assert_eq!(one.len(), 1);
        assert!(get(Some("-2")).is_err());
        let detailed = log.command(
            &m,
            &["SLOWLOG", "GET", "1", "details"].map(|a| Bytes::from(a.to_owned())),
        );
        let Ok(Reply::Array(one)) = detailed else {
            panic!("not an array")
        };
        let Reply::Array(entry) = &one[0] else {
            panic!("not an entry")
        };
        assert_eq!(entry.len(), 7);
        let Reply::Map(d) = &entry[6] else {
            panic!("no details")
        };
        assert!(matches!(d[0].1, Reply::Int(1000)));
        assert!(matches!(d[1].1, Reply::Int(4000)));
        assert!(matches!(&d[2].1, Reply::Bulk(s) if s == "s1"));
        let len = log.command(&m, &[Bytes::from("SLOWLOG"), Bytes::from("LEN")]);
        assert!(matches!(len, Ok(Reply::Int(2))));
        let reset = log.command(&m, &[Bytes::from("slowlog"), Bytes::from("reset")]);
        assert!(matches!(reset, Ok(Reply::Ok)));
        let len = log.command(&m, &[Bytes::from("SLOWLOG"), Bytes::from("LEN")]);
        assert!(matches!(len, Ok(Reply::Int(0))));
        let off = Slowlog::new(SlowlogConfig {
            slower_than_us: -1,
            max_len: 128,
        });
        assert!(!off.keeps_requests());
        assert!(!off.is_slow(Duration::from_secs(100)));
    }
}

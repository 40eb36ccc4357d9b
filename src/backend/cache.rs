//! The near cache: values of hot keys kept in the proxy, invalidated by the
//! shard itself (`options.near_cache_bytes`).
//!
//! Every value the cache holds was read (`GET`) through the primary's
//! tracking connection ([`super::tracking`]), so Redis pushes an
//! `invalidate` for each one any client writes, on any proxy of a fleet or
//! straight to the shard (and `invalidate` with no keys on FLUSHALL).
//! Because reads and invalidations come down one connection, in the order
//! Redis produced them, the reader applies each invalidation between the
//! replies around it; a fill is kept only if no invalidation of its key
//! came since it was sent (see [`State::insert`]). A lost connection
//! forgets everything.
//!
//! Freshness. When a writer's `SET` returns, Redis has queued the
//! invalidation for this proxy, but the proxy may not have read it yet. So
//! a hit is only served once a `PING` sent down the tracking connection
//! after the moment of freshness the read needs has been answered: every
//! invalidation Redis queued before it has been applied by then. One
//! `PING` (a *barrier*) confirms every hit that waits for it. The moment is
//! the read's arrival minus `near_cache_max_staleness_ms` (0 by default:
//! no read returns a value older than one whose write had finished before
//! the read arrived), and never before the client's own last write was
//! answered (its reads see its writes). A client with a write still in
//! flight does not use the cache (its read must follow the write down the
//! same connection; the caller checks), nor do keys of migrating slots.
//!
//! Memory: values and keys are weighed in bytes and bounded by
//! `near_cache_bytes` per primary; `quick_cache`'s admission (new entries
//! start in a probation segment and only repeated reads promote them) keeps
//! one-off reads from evicting hot keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::mux::{Answer, ReplyResult, ReplyRx};
use super::tracking::{Invalidations, TrackingConn};
use crate::metrics::NearCacheMetrics;
use crate::protocol::{Protocol, reply};

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
/// Bytes an entry costs beyond its key and value (index, bookkeeping).
const ENTRY_OVERHEAD: u64 = 64;
/// Fills in flight remembered at most; past it they are forgotten (their
/// replies are then served but not kept).
const MAX_FILLING: usize = 65_536;

/// One primary's near cache, on its tracking connection.
pub struct NearCache {
    conn: Arc<TrackingConn>,
    state: Arc<State>,
}

/// How a read is answered (see [`NearCache::get`]).
pub enum Lookup {
    /// From the cache, confirmed fresh enough already.
    Hit(Bytes),
    /// The reply will arrive here (after a barrier, or from the shard).
    Wait(ReplyRx),
}

struct State {
    store: quick_cache::sync::Cache<Bytes, Bytes, Weight>,
    /// Keys read through the tracking connection whose reply is not in yet,
    /// with the number of the fill; an invalidation removes the key, and a
    /// fill is kept only if its number is still there.
    filling: Mutex<Filling>,
    /// Barriers in flight and the hits waiting for one.
    barriers: Mutex<Barriers>,
    /// When the newest answered barrier was sent, as [`State::stamp`]; 0
    /// before the first.
    synced: AtomicU64,
    staleness: Duration,
    base: Instant,
    metrics: NearCacheMetrics,
}

#[derive(Default)]
struct Filling {
    next: u64,
    keys: HashMap<Bytes, u64>,
}

#[derive(Default)]
struct Barriers {
    /// The stamp of the barrier in flight.
    in_flight: Option<u64>,
    waiting: Vec<Waiter>,
}

/// A hit that waits for a barrier sent at or after `needed`.
struct Waiter {
    key: Bytes,
    frame: Bytes,
    proto: Protocol,
    needed: u64,
    reply: oneshot::Sender<ReplyResult>,
}

#[derive(Clone)]
struct Weight;

impl quick_cache::Weighter<Bytes, Bytes> for Weight {
    fn weight(&self, key: &Bytes, value: &Bytes) -> u64 {
        key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
    }
}

impl NearCache {
    /// The cache of shard `shard`'s primary, reading through `conn`,
    /// holding at most `bytes`.
    pub fn new(conn: Arc<TrackingConn>, shard: &str, bytes: u64, staleness: Duration) -> NearCache {
        let items = usize::try_from(bytes / 256)
            .unwrap_or(usize::MAX)
            .clamp(16, 1 << 22);
        let state = Arc::new(State {
            store: quick_cache::sync::Cache::with_weighter(items, bytes.max(1), Weight),
            filling: Mutex::default(),
            barriers: Mutex::default(),
            synced: AtomicU64::new(0),
            staleness,
            base: Instant::now(),
            metrics: NearCacheMetrics::new(shard),
        });
        let listener: Arc<dyn Invalidations> = state.clone();
        conn.listen(&listener);
        NearCache { conn, state }
    }

    /// Answers `GET key` (`frame` is the request as the client sent it) for
    /// a client whose read arrived at `arrived` and whose own writes were
    /// all answered by `writes_answered` (`None`: it wrote nothing).
    pub fn get(
        &self,
        key: &Bytes,
        frame: &Bytes,
        proto: Protocol,
        arrived: Instant,
        writes_answered: Option<Instant>,
    ) -> Lookup {
        let s = &self.state;
        let mut needed = arrived.checked_sub(s.staleness).unwrap_or(s.base);
        if let Some(t) = writes_answered {
            needed = needed.max(t);
        }
        let needed = s.stamp(needed);
        // Acquire: the invalidations applied before this barrier was
        // answered are visible to the lookup below.
        if s.synced.load(Ordering::Acquire) >= needed
            && let Some(value) = s.store.get(key)
        {
            s.metrics.hit();
            return Lookup::Hit(for_proto(&value, proto));
        }
        let (tx, rx) = oneshot::channel();
        if s.store.peek(key).is_some() {
            self.wait_barrier(Waiter {
                key: key.clone(),
                frame: frame.clone(),
                proto,
                needed,
                reply: tx,
            });
        } else {
            s.metrics.miss();
            self.fill(key.clone(), frame, proto, tx);
        }
        Lookup::Wait(rx)
    }

    /// Reads `key` through the tracking connection (so Redis tracks it),
    /// answers the client and keeps the value unless it was invalidated
    /// meanwhile.
    fn fill(&self, key: Bytes, frame: &Bytes, proto: Protocol, tx: oneshot::Sender<ReplyResult>) {
        let seq = self.state.start_fill(&key);
        let rx = self.conn.send(frame);
        let state = self.state.clone();
        tokio::spawn(async move {
            let answer = match rx.await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    state.abandon_fill(&key, seq);
                    let _ = tx.send(Err(e));
                    return;
                }
                Err(_) => {
                    state.abandon_fill(&key, seq);
                    return;
                }
            };
            if cacheable(&answer.frame) {
                state.insert(key, seq, answer.frame.clone());
            } else {
                state.abandon_fill(&key, seq);
            }
            let frame = for_proto(&answer.frame, proto);
            let _ = tx.send(Ok(Answer { frame, ..answer }));
        });
    }

    /// Queues a hit until a barrier sent at or after its `needed` stamp is
    /// answered; sends one if none in flight will do.
    fn wait_barrier(&self, w: Waiter) {
        let start = {
            let mut b = lock(&self.state.barriers);
            b.waiting.push(w);
            match b.in_flight {
                // The one in flight may be too early for this hit: the next
                // one starts when it is answered (see `barrier_done`).
                Some(_) => None,
                None => {
                    let stamp = self.state.now();
                    b.in_flight = Some(stamp);
                    Some(stamp)
                }
            }
        };
        if let Some(stamp) = start {
            self.send_barrier(stamp);
        }
    }

    fn send_barrier(&self, stamp: u64) {
        self.state.metrics.barrier();
        let rx = self.conn.send(PING);
        let cache = NearCache {
            conn: self.conn.clone(),
            state: self.state.clone(),
        };
        tokio::spawn(async move {
            let ok = matches!(rx.await, Ok(Ok(ref a)) if !reply::is_error(&a.frame));
            cache.barrier_done(stamp, ok);
        });
    }

    /// The barrier sent at `stamp` was answered (`ok`) or failed: the hits
    /// it covers are served (or read again if their entry is gone); a new
    /// barrier starts for the others.
    fn barrier_done(&self, stamp: u64, ok: bool) {
        let s = &self.state;
        if ok {
            s.synced.fetch_max(stamp, Ordering::Release);
        }
        let (ready, next) = {
            let mut b = lock(&s.barriers);
            b.in_flight = None;
            let (ready, rest): (Vec<_>, Vec<_>) =
                b.waiting.drain(..).partition(|w| w.needed <= stamp);
            b.waiting = rest;
            let next = if b.waiting.is_empty() {
                None
            } else {
                let now = s.now();
                b.in_flight = Some(now);
                Some(now)
            };
            (ready, next)
        };
        if let Some(stamp) = next {
            self.send_barrier(stamp);
        }
        for w in ready {
            match s.store.get(&w.key) {
                Some(value) if ok => {
                    s.metrics.confirmed_hit();
                    let _ = w
                        .reply
                        .send(Ok(Answer::new(for_proto(&value, w.proto), Duration::ZERO)));
                }
                // Invalidated meanwhile, or the connection failed: read it
                // (a failure reaches the client's retry on the primary).
                _ => {
                    s.metrics.miss();
                    self.fill(w.key, &w.frame, w.proto, w.reply);
                }
            }
        }
    }

    /// A read of this shard that could not use the cache (counted).
    pub fn bypassed(&self) {
        self.state.metrics.bypass();
    }

    /// Bytes the cache holds now (keys, values and overhead).
    pub fn weight(&self) -> u64 {
        self.state.store.weight()
    }

    /// Entries the cache holds now.
    pub fn len(&self) -> usize {
        self.state.store.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.state.store.is_empty()
    }
}

impl State {
    /// `t` as nanoseconds since the cache started, plus one (0 is "never").
    fn stamp(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    fn now(&self) -> u64 {
        self.stamp(Instant::now())
    }

    /// Records a fill of `key` about to be sent; returns its number.
    fn start_fill(&self, key: &Bytes) -> u64 {
        let mut f = lock(&self.filling);
        if f.keys.len() >= MAX_FILLING {
            // Fills of clients that left never complete: forget them all
            // (their replies, if any come, are then not kept).
            f.keys.clear();
        }
        f.next += 1;
        let seq = f.next;
        f.keys.insert(key.clone(), seq);
        seq
    }

    fn abandon_fill(&self, key: &Bytes, seq: u64) {
        let mut f = lock(&self.filling);
        if f.keys.get(key) == Some(&seq) {
            f.keys.remove(key);
        }
    }

    /// Keeps the value a fill read, unless the key was invalidated (or
    /// read again) since the fill was sent. Under the `filling` lock, so
    /// that an invalidation is either before (the fill is dropped) or after
    /// (it removes the entry).
    fn insert(&self, key: Bytes, seq: u64, value: Bytes) {
        let mut f = lock(&self.filling);
        if f.keys.get(&key) != Some(&seq) {
            self.metrics.fill_dropped();
            return;
        }
        f.keys.remove(&key);
        self.store.insert(key, value);
        drop(f);
        self.metrics.set_size(self.store.weight(), self.store.len());
    }

    /// Drops `key` (an invalidation): its entry and any fill in flight.
    fn invalidate(&self, key: &[u8]) {
        let mut f = lock(&self.filling);
        f.keys.remove(key);
        self.store.remove(key);
    }

    /// Drops everything.
    fn flush(&self) {
        let mut f = lock(&self.filling);
        f.keys.clear();
        self.store.clear();
        drop(f);
        self.metrics.set_size(0, 0);
    }
}

impl Invalidations for State {
    fn keys(&self, keys: &[Bytes]) {
        for k in keys {
            self.invalidate(k);
        }
        self.metrics.invalidated(keys.len() as u64);
        self.metrics.set_size(self.store.weight(), self.store.len());
    }

    fn all(&self) {
        self.metrics.flushed();
        self.flush();
    }
}

/// Whether a `GET` reply can be kept: a value or nil, not an error.
fn cacheable(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(b'$' | b'_'))
}

/// A reply read over RESP3, as a client speaking `proto` expects it (a
/// `GET` reply differs only in nil).
fn for_proto(frame: &Bytes, proto: Protocol) -> Bytes {
    if proto == Protocol::Resp2 && frame.as_ref() == b"_\r\n" {
        Bytes::from_static(b"$-1\r\n")
    } else {
        frame.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nil_is_spelled_per_protocol_and_errors_are_not_kept() {
        let nil = Bytes::from_static(b"_\r\n");
        assert_eq!(for_proto(&nil, Protocol::Resp2).as_ref(), b"$-1\r\n");
        assert_eq!(for_proto(&nil, Protocol::Resp3).as_ref(), b"_\r\n");
        let v = Bytes::from_static(b"$1\r\nv\r\n");
        assert_eq!(for_proto(&v, Protocol::Resp2), v);
        assert!(cacheable(&v) && cacheable(&nil));
        assert!(!cacheable(
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
        ));
    }
}

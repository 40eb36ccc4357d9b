//! Replica lag by replication offsets, converted to time.
//!
//! A replica whose link to its primary is up can still be far behind: its
//! applier paused (`CLIENT PAUSE ... WRITE` on it) or slow, it keeps
//! answering reads with old values while `master_last_io_seconds_ago`
//! stays small. So the health check of a primary records its
//! `master_repl_offset` over time in an [`OffsetLog`], and the check of each
//! of its replicas compares the replica's applied offset
//! (`slave_repl_offset`) with it: if the primary had already passed that
//! offset at time `t`, the replica misses writes made at `t` and is at least
//! `now - t` behind.
//!
//! The same positions, probed by the time a probe was *sent*, decide
//! read-your-writes ([`Positions`], `options.read_your_writes`): which
//! replicas have applied a client's own writes.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Samples kept at most.
const MAX_SAMPLES: usize = 4096;

/// A primary's replication offset over time.
#[derive(Default)]
pub struct OffsetLog {
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl OffsetLog {
    /// Records the primary's offset at `at`; forgets samples older than
    /// `keep` (beyond it, a replica is behind anyway).
    pub fn record(&self, at: Instant, offset: u64, keep: Duration) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        // Only changes matter: the first time each offset was seen.
        if s.back().is_some_and(|(_, o)| *o >= offset) {
            if s.back().is_some_and(|(_, o)| *o > offset) {
                // A new replication history (failover, restart): start over.
                s.clear();
            } else {
                return;
            }
        }
        s.push_back((at, offset));
        while s.len() > MAX_SAMPLES
            || s.len() > 1 && s.front().is_some_and(|(t, _)| at.duration_since(*t) > keep)
        {
            s.pop_front();
        }
    }

    /// How far behind a replica that applied up to `applied` is at `now`:
    /// the time since the primary first had an offset past it (zero when
    /// the primary was never seen ahead of it).
    pub fn lag(&self, applied: u64, now: Instant) -> Duration {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.iter()
            .find(|(_, o)| *o > applied)
            .map_or(Duration::ZERO, |(t, _)| now.saturating_duration_since(*t))
    }
}

/// Probe samples a primary's [`Positions`] keeps at most (older ones only
/// make the floor of an old write larger than it needs to be).
const MAX_STEPS: usize = 4096;

/// Replication positions for read-your-writes (`options.read_your_writes`),
/// one notion for both shard kinds: Redis' `master_repl_offset` (primary)
/// and `slave_repl_offset` (replica), PostgreSQL's
/// `pg_current_wal_insert_lsn()` and `pg_last_wal_replay_lsn()`, as `u64`.
///
/// The rule: a probe of the primary *sent* at `s` returns a position that
/// covers every write whose reply the proxy had received before `s` (Redis
/// propagates a write before it replies; PostgreSQL inserts the commit
/// record before `COMMIT` returns). So a client whose last write was
/// answered at `t` may read from a replica whose applied position is at
/// least the position of any primary probe sent at or after `t`; the
/// smallest such position is the best floor ([`Positions::covering`]).
/// Replicas only ever apply forward, so once a replica reached the floor
/// it stays past it.
///
/// Probes come from the health check (every `health_check_interval`) and,
/// while some read waits for one ([`Positions::want`]), from the
/// endpoint's on-demand prober (`health::spawn_prober`): at most one in
/// flight per endpoint, however many clients wait, so the cost is bounded
/// by one round trip per endpoint, never one per write.
#[derive(Default)]
pub struct Positions {
    /// A primary's probes as a staircase of (sent at, position): both
    /// strictly increasing, so the first entry sent at or after `t` holds
    /// the smallest position any probe sent since `t` returned.
    steps: Mutex<VecDeque<(Instant, u64)>>,
    /// A replica's applied position by its last probe (0: unknown).
    applied: AtomicU64,
    /// A read waits for a fresher probe of this endpoint.
    wanted: AtomicBool,
    /// Wakes the endpoint's prober when `wanted` is set.
    wake: tokio::sync::Notify,
}

impl Positions {
    /// A primary's probe sent at `sent` returned `position`.
    pub fn record(&self, sent: Instant, position: u64) {
        let mut s = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        // A probe sent later that returned no more covers what this one does.
        if s.iter().any(|&(t, p)| t >= sent && p <= position) {
            return;
        }
        // Earlier probes that returned no less are covered by this one.
        s.retain(|&(t, p)| !(t <= sent && p >= position));
        let at = s.partition_point(|&(t, _)| t < sent);
        s.insert(at, (sent, position));
        while s.len() > MAX_STEPS {
            s.pop_front();
        }
    }

    /// The smallest position a primary's probe sent at or after `t`
    /// returned: it covers every write answered by `t`. `None` until such
    /// a probe was answered.
    pub fn covering(&self, t: Instant) -> Option<u64> {
        let s = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        let at = s.partition_point(|&(sent, _)| sent < t);
        s.get(at).map(|&(_, p)| p)
    }

    /// A replica's probe read its applied position.
    pub fn set_applied(&self, position: u64) {
        self.applied.store(position, Ordering::Relaxed);
    }

    /// A replica's applied position by its last probe (0: unknown).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Asks this endpoint's prober for a fresh probe (one more after the
    /// one in flight, if any). Cheap when already asked: one atomic load,
    /// no write to a line the readers of other threads share.
    pub fn want(&self) {
        if !self.wanted.load(Ordering::Acquire) && !self.wanted.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// For the prober: waits until a probe is wanted, and takes the wish
    /// (a read asking after this returns gets another probe).
    pub async fn wanted(&self) {
        loop {
            if self.wanted.swap(false, Ordering::AcqRel) {
                return;
            }
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_time_since_the_primary_passed_the_applied_offset() {
        let log = OffsetLog::default();
        let t0 = Instant::now();
        let keep = Duration::from_secs(60);
        log.record(t0, 100, keep);
        log.record(t0 + Duration::from_secs(1), 100, keep);
        log.record(t0 + Duration::from_secs(2), 250, keep);
        log.record(t0 + Duration::from_secs(3), 400, keep);
        let now = t0 + Duration::from_secs(10);
        assert_eq!(log.lag(400, now), Duration::ZERO, "caught up");
        assert_eq!(log.lag(500, now), Duration::ZERO, "ahead of the samples");
        assert_eq!(log.lag(250, now), Duration::from_secs(7));
        assert_eq!(log.lag(120, now), Duration::from_secs(8));
        assert_eq!(log.lag(0, now), Duration::from_secs(10));
    }

    #[test]
    fn a_new_history_starts_over_and_old_samples_go() {
        let log = OffsetLog::default();
        let t0 = Instant::now();
        let keep = Duration::from_secs(5);
        log.record(t0, 1000, keep);
        log.record(t0 + Duration::from_secs(1), 10, keep);
        assert_eq!(log.lag(10, t0 + Duration::from_secs(2)), Duration::ZERO);
        log.record(t0 + Duration::from_secs(20), 20, keep);
        // The sample at +1 s is past `keep`; the one at +20 s remains.
        assert_eq!(
            log.lag(15, t0 + Duration::from_secs(21)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_floor_is_the_smallest_position_probed_after_the_write() {
        let p = Positions::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(p.covering(t0), None, "nothing probed yet");
        p.record(ms(10), 100);
        p.record(ms(20), 100);
        p.record(ms(30), 250);
        assert_eq!(p.covering(t0), Some(100));
        assert_eq!(p.covering(ms(15)), Some(100), "the probe at 20 ms");
        assert_eq!(p.covering(ms(25)), Some(250));
        assert_eq!(p.covering(ms(31)), None, "no probe sent since");
        // Answered out of order: a probe sent at 28 ms returned 240.
        p.record(ms(28), 240);
        assert_eq!(p.covering(ms(25)), Some(240));
        assert_eq!(p.covering(ms(29)), Some(250));
        // A probe sent earlier that returned more is covered by later ones.
        p.record(ms(5), 300);
        assert_eq!(p.covering(t0), Some(100));
    }

    #[tokio::test]
    async fn wishes_for_a_probe_coalesce() {
        let p = std::sync::Arc::new(Positions::default());
        p.want();
        p.want();
        p.wanted().await;
        // Both wishes were taken by one probe.
        let waiting = tokio::time::timeout(Duration::from_millis(20), p.wanted()).await;
        assert!(waiting.is_err(), "no second probe without a new wish");
        p.want();
        p.wanted().await;
    }
}

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

use std::collections::VecDeque;
use std::sync::Mutex;
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
}

//! Rate limits of the auth file: token buckets in requests and bytes per
//! second, one per user (shared by all its connections) and one per
//! client address. A bucket holds one second's worth (the burst) and
//! refills continuously.

use std::sync::Mutex;
use std::time::Instant;

/// A configured limit; 0 turns a dimension off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests_per_second: u64,
    pub bytes_per_second: u64,
}

/// Which dimension refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Requests,
    Bytes,
}

/// The buckets of one user or address.
#[derive(Debug)]
pub struct Buckets {
    pub limit: RateLimit,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    requests: f64,
    bytes: f64,
    at: Instant,
}

impl Buckets {
    /// Full buckets.
    pub fn new(limit: RateLimit) -> Buckets {
        Buckets {
            limit,
            state: Mutex::new(State {
                requests: limit.requests_per_second as f64,
                bytes: limit.bytes_per_second as f64,
                at: Instant::now(),
            }),
        }
    }

    /// Takes one request of `bytes` at `now`, or says which limit refuses
    /// it (nothing is taken then). A request bigger than a second's bytes
    /// passes when the bucket is full, so it is slowed, never refused for
    /// good.
    pub fn take(&self, bytes: usize, now: Instant) -> Result<(), Limited> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(s.at).as_secs_f64();
        s.at = now;
        let (rps, bps) = (
            self.limit.requests_per_second as f64,
            self.limit.bytes_per_second as f64,
        );
        s.requests = (s.requests + elapsed * rps).min(rps);
        s.bytes = (s.bytes + elapsed * bps).min(bps);
        if rps > 0.0 && s.requests < 1.0 {
            return Err(Limited::Requests);
        }
        let need = (bytes as f64).min(bps);
        if bps > 0.0 && s.bytes < need {
            return Err(Limited::Bytes);
        }
        if rps > 0.0 {
            s.requests -= 1.0;
        }
        if bps > 0.0 {
            s.bytes -= need;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_second_of_burst_then_the_rate() {
        let b = Buckets::new(RateLimit {
            requests_per_second: 10,
            bytes_per_second: 0,
        });
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(b.take(1, t0), Ok(()));
        }
        assert_eq!(b.take(1, t0), Err(Limited::Requests));
        // 100 ms later, one more token.
        assert_eq!(b.take(1, t0 + Duration::from_millis(100)), Ok(()));
        assert_eq!(
            b.take(1, t0 + Duration::from_millis(100)),
            Err(Limited::Requests)
        );
    }

    #[test]
    fn bytes_are_limited_and_a_huge_request_only_waits() {
        let b = Buckets::new(RateLimit {
            requests_per_second: 0,
            bytes_per_second: 1000,
        });
        let t0 = Instant::now();
        assert_eq!(b.take(600, t0), Ok(()));
        assert_eq!(b.take(600, t0), Err(Limited::Bytes));
        // A request bigger than a second's bytes passes on a full bucket.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(b.take(5000, t1), Ok(()));
        assert_eq!(b.take(1, t1), Err(Limited::Bytes));
    }
}

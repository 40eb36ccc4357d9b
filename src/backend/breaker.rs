//! Per-endpoint circuit breaker.
//!
//! An endpoint that failed to connect or let a command time out is not
//! serving: sending it more requests only makes every client wait for the
//! timeout. The breaker then *opens*: requests to the endpoint fail at once
//! with `-ERR backend ... unavailable: circuit open ...` (never sent, so a
//! replica read is retried on the primary), while every other endpoint keeps
//! serving. When the open period is over the breaker is *half-open*: exactly
//! one request goes through as a probe; its success closes the breaker, its
//! failure opens it again for twice as long (up to [`MAX_OPEN`]). A lost
//! connection with a request in flight counts too, but opens the breaker only
//! after [`LOST_THRESHOLD`] in a row, since a restarted backend is usually
//! back at the next connect.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::BackendError;
use crate::metrics::EndpointMetrics;

/// First open period.
pub const MIN_OPEN: Duration = Duration::from_millis(250);
/// Longest open period.
pub const MAX_OPEN: Duration = Duration::from_secs(10);
/// Consecutive lost connections that open the breaker.
pub const LOST_THRESHOLD: u32 = 3;

/// What the breaker says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: send it.
    Yes,
    /// Half-open and this request is the probe: send it.
    Probe,
    /// Open (or half-open with a probe in flight): fail it now.
    No,
}

/// State shared by every connection of one endpoint. All atomics: the hot
/// path (`admit` while closed, `success` while closed) is two relaxed loads.
pub struct Breaker {
    base: Instant,
    /// Consecutive failures.
    failures: AtomicU32,
    /// How many times in a row it opened (sets the next open period).
    trips: AtomicU32,
    /// While non-zero: open until this many ms after `base`.
    open_until_ms: AtomicU64,
    /// A half-open probe is in flight.
    probing: AtomicBool,
    /// Why it last opened (named in the refusals, so a client learns the
    /// cause, e.g. a wrong backend password, not only that it is open).
    cause: std::sync::Mutex<String>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new()
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new() -> Breaker {
        Breaker {
            base: Instant::now(),
            failures: AtomicU32::new(0),
            trips: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            cause: std::sync::Mutex::new(String::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Whether a request may be sent now.
    pub fn admit(&self) -> Admit {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return Admit::Yes;
        }
        if self.now_ms() < until {
            return Admit::No;
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => Admit::Probe,
            Err(_) => Admit::No,
        }
    }

    /// Whether the breaker is open or half-open.
    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Relaxed) != 0
    }

    /// The error for a request refused by an open breaker.
    pub fn refusal(&self, addr: &str) -> BackendError {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        let left = until.saturating_sub(self.now_ms());
        let cause = self.cause.lock().unwrap_or_else(|e| e.into_inner()).clone();
        BackendError::Unavailable {
            addr: addr.to_owned(),
            reason: format!(
                "circuit open after {} failure(s) (last: {cause}), next probe in {left} ms",
                self.failures.load(Ordering::Relaxed)
            ),
        }
    }

    /// A reply arrived: the endpoint serves.
    pub fn success(&self, addr: &str, metrics: &EndpointMetrics) {
        if self.failures.load(Ordering::Relaxed) == 0 && !self.is_open() {
            return;
        }
        self.failures.store(0, Ordering::Relaxed);
        self.trips.store(0, Ordering::Relaxed);
        self.probing.store(false, Ordering::Release);
        if self.open_until_ms.swap(0, Ordering::AcqRel) != 0 {
            metrics.set_breaker_open(false);
            tracing::info!(endpoint = %addr, "circuit closed: backend answers again");
        }
    }

    /// A request failed with `err`; opens the breaker when the endpoint is
    /// evidently not serving.
    pub fn failure(&self, err: &BackendError, addr: &str, metrics: &EndpointMetrics) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let opens = match err {
            BackendError::Unavailable { .. } | BackendError::Timeout { .. } => true,
            BackendError::ConnectionLost { .. } => failures >= LOST_THRESHOLD,
            // A protocol error or an empty pool says nothing about liveness.
            BackendError::Protocol { .. }
            | BackendError::PoolExhausted { .. }
            | BackendError::Query { .. }
            | BackendError::Unsupported { .. }
            | BackendError::Acl { .. }
            | BackendError::NoSuchDb { .. }
            | BackendError::Fenced { .. } => false,
        };
        if !opens {
            return;
        }
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if until != 0 && self.now_ms() < until {
            // Already open: requests queued before it opened are failing; the
            // period is not extended for them.
            return;
        }
        *self.cause.lock().unwrap_or_else(|e| e.into_inner()) = match err {
            BackendError::Unavailable { reason, .. }
            | BackendError::ConnectionLost { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        let trips = self.trips.fetch_add(1, Ordering::Relaxed);
        let period = MIN_OPEN.saturating_mul(1u32 << trips.min(16)).min(MAX_OPEN);
        let was_open = self
            .open_until_ms
            .swap(self.now_ms() + period.as_millis() as u64, Ordering::AcqRel)
            != 0;
        self.probing.store(false, Ordering::Release);
        metrics.breaker_tripped();
        if !was_open {
            metrics.set_breaker_open(true);
            tracing::warn!(endpoint = %addr, error = %err, open_ms = period.as_millis() as u64,
                "circuit open: failing requests to this backend fast until a probe succeeds");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> EndpointMetrics {
        EndpointMetrics::new("s", "a:1", "primary")
    }

    fn down() -> BackendError {
        BackendError::Unavailable {
            addr: "a:1".into(),
            reason: "refused".into(),
        }
    }

    #[test]
    fn opens_on_unavailable_and_admits_one_probe_after_the_period() {
        let b = Breaker::new();
        assert_eq!(b.admit(), Admit::Yes);
        b.failure(&down(), "a:1", &m());
        assert_eq!(b.admit(), Admit::No);
        assert!(b.refusal("a:1").to_string().contains("circuit open"));
        std::thread::sleep(MIN_OPEN + Duration::from_millis(20));
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::No, "only one probe at a time");
        b.success("a:1", &m());
        assert_eq!(b.admit(), Admit::Yes);
    }

    #[test]
    fn failed_probe_doubles_the_open_period() {
        let b = Breaker::new();
        b.failure(&down(), "a:1", &m());
        std::thread::sleep(MIN_OPEN + Duration::from_millis(20));
        assert_eq!(b.admit(), Admit::Probe);
        b.failure(&down(), "a:1", &m());
        std::thread::sleep(MIN_OPEN + Duration::from_millis(20));
        assert_eq!(b.admit(), Admit::No, "second period is twice as long");
    }

    #[test]
    fn lost_connections_open_only_in_a_row() {
        let b = Breaker::new();
        let lost = BackendError::ConnectionLost {
            addr: "a:1".into(),
            reason: "eof".into(),
        };
        b.failure(&lost, "a:1", &m());
        b.failure(&lost, "a:1", &m());
        assert_eq!(b.admit(), Admit::Yes);
        b.success("a:1", &m());
        b.failure(&lost, "a:1", &m());
        b.failure(&lost, "a:1", &m());
        assert_eq!(b.admit(), Admit::Yes, "success reset the count");
        b.failure(&lost, "a:1", &m());
        assert_eq!(b.admit(), Admit::No);
    }
}

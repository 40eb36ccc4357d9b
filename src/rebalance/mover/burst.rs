//! How much of its source's time each round of the mover takes (see
//! `walk`): small rounds while the proxy serves clients or a throttle is
//! set, full ones otherwise.

use std::time::{Duration, Instant};

/// How long a stretch of the mover's commands the source runs at once: a
/// round's commands run back to back on the source (Redis runs one
/// client's pipeline to its end), its clients waiting, so the size of a
/// round is what a client's command may wait behind. Full bursts move
/// fastest (fewer round trips); small ones keep clients' latency close to
/// what it is without a move (BENCHMARKS.md, *Where the clients' wait comes
/// from*: GET p99 during a move 1.4-1.7x its baseline with small bursts,
/// 2.4-2.7x with full ones, the mover 26-29% slower beside clients).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Burst {
    /// Keys per batch (sized by one script, then copied together).
    pub(super) batch: usize,
    /// Keys per `SCAN` of the source (each call blocks the source while
    /// it lists them).
    pub(super) scan: usize,
}

// Small bursts are smaller in both.
const _: () =
    assert!(Burst::SMALL.batch < Burst::FULL.batch && Burst::SMALL.scan < Burst::FULL.scan);

impl Burst {
    pub(super) const FULL: Burst = Burst {
        batch: 100,
        scan: 500,
    };
    pub(super) const SMALL: Burst = Burst {
        batch: 25,
        scan: 100,
    };

    /// Full bursts only while no client waits for the shards: with
    /// clients being served (`clients`, see [`Clients`]) or a throttle set
    /// (the operator trading the move's speed for the clients'), small
    /// ones. A throttle alone would not do: sleeping between full bursts
    /// lowers the rate but not the wait of a command that arrives during
    /// one.
    pub(super) fn of(throttle: u64, clients: bool) -> Burst {
        if throttle == 0 && !clients {
            Burst::FULL
        } else {
            Burst::SMALL
        }
    }
}

/// Whether this proxy is serving clients: it ran at least
/// [`Clients::ACTIVE`] commands per second over the last
/// [`Clients::SAMPLE`] (INFO's `total_commands_processed`; the mover's own
/// commands go straight to the shards and are not counted). In a fleet,
/// the mover's proxy sees its own clients, a share of the fleet's.
pub(super) struct Clients {
    at: Instant,
    total: u64,
    active: bool,
}

impl Clients {
    const ACTIVE: f64 = 100.0;
    const SAMPLE: Duration = Duration::from_millis(100);

    pub(super) fn new() -> Clients {
        Clients {
            at: Instant::now(),
            total: crate::metrics::hot::total_commands(),
            // Until the first sample says otherwise.
            active: true,
        }
    }

    /// As of the last sample (taken when the last one is older than
    /// [`Clients::SAMPLE`]).
    pub(super) fn active(&mut self) -> bool {
        let elapsed = self.at.elapsed();
        if elapsed >= Clients::SAMPLE {
            let total = crate::metrics::hot::total_commands();
            let rate = total.saturating_sub(self.total) as f64 / elapsed.as_secs_f64();
            self.active = rate >= Clients::ACTIVE;
            (self.at, self.total) = (Instant::now(), total);
        }
        self.active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mover_beside_clients_or_throttled_takes_small_bursts() {
        assert_eq!(Burst::of(0, false), Burst::FULL);
        assert_eq!(Burst::of(0, true), Burst::SMALL);
        for throttle in [1, 20_000, 1_000_000] {
            assert_eq!(Burst::of(throttle, false), Burst::SMALL);
            assert_eq!(Burst::of(throttle, true), Burst::SMALL);
        }
    }
}

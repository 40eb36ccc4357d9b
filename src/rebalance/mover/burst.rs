//! How much of the shards' time the mover takes (see `walk`): small
//! rounds while the proxy serves clients or a throttle is set, full ones
//! otherwise; and beside clients one source at a time ([`Turns`]), alone
//! up to `--rebalance-sources` at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, OwnedMutexGuard};

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

/// Commands per second from which a proxy serves clients (see
/// [`clients_served`]).
const ACTIVE_RATE: f64 = 100.0;
/// How often [`clients_served`] samples the proxy's command count.
pub(crate) const CLIENTS_SAMPLE: Duration = Duration::from_millis(100);
/// A sample older than this says nothing of clients that came since (see
/// [`clients_served`]).
const CLIENTS_STALE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    total: u64,
    active: bool,
}

/// Whether this proxy is serving clients: it ran at least 100 commands per
/// second since the last sample (INFO's `total_commands_processed`; the
/// mover's own commands go straight to the shards and are not counted),
/// sampled again once the last sample is older than [`CLIENTS_SAMPLE`].
/// One sampler per process, shared by every walk and the fleet's report
/// (which samples every [`CLIENTS_SAMPLE`]), so a walk that starts in a
/// fleet knows at once; with no sample in the last second (no move, no
/// fleet), clients are assumed until the next one. In a fleet each proxy also says so in
/// its member key (see `fleet`), and the mover yields to the clients of
/// any of them (`Rebalancer::clients_served`).
pub(crate) fn clients_served() -> bool {
    let now = Instant::now();
    let mut last = LAST_SAMPLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(s) = *last
        && now.duration_since(s.at) < CLIENTS_SAMPLE
    {
        return s.active;
    }
    // (Summed over every command's counters: only once per sample.)
    let total = crate::metrics::hot::total_commands();
    match *last {
        Some(s) if now.duration_since(s.at) <= CLIENTS_STALE => {
            let rate =
                total.saturating_sub(s.total) as f64 / now.duration_since(s.at).as_secs_f64();
            let active = rate >= ACTIVE_RATE;
            *last = Some(Sample {
                at: now,
                total,
                active,
            });
            active
        }
        // No sample lately (nothing asked: no move, no fleet report), or
        // none yet: an average over a long quiet stretch would hide
        // clients that just came, so clients until the next sample says
        // otherwise.
        _ => {
            *last = Some(Sample {
                at: now,
                total,
                active: true,
            });
            true
        }
    }
}

static LAST_SAMPLE: std::sync::Mutex<Option<Sample>> = std::sync::Mutex::new(None);

/// The walks of one step (a window per source, see `mover::run`) share
/// the shards' time: while the proxy serves clients, one source moves at
/// a time (the walk holding the turn; the others wait with nothing fenced);
/// alone, all of them. Measured on two cores (BENCHMARKS.md, *Several
/// sources at once*): three sources at once moved 1.6-1.9x as many keys/s
/// alone, and beside GETs no more keys/s while GET p99 went from 1.5x to
/// 2.3x its baseline. `moving` counts the walks moving now: they share the
/// throttle (see `mover::throttle`).
#[derive(Clone, Default)]
pub(in crate::rebalance) struct Turns {
    turn: Arc<Mutex<()>>,
    moving: Arc<AtomicUsize>,
}

impl Turns {
    /// Walks moving now (not waiting for the turn, not done).
    pub(in crate::rebalance) fn moving(&self) -> usize {
        self.moving.load(Ordering::Relaxed)
    }
}

/// One walk's part of [`Turns`]: whether it holds the turn, and its count
/// among the moving walks (both given back when dropped).
#[derive(Default)]
pub(super) struct Turn {
    held: Option<OwnedMutexGuard<()>>,
    counted: Option<Counted>,
}

struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Turn {
    /// Before a round with no key fenced: beside clients, waits for the
    /// turn (not counted as moving meanwhile) and keeps it; alone, gives
    /// it back.
    pub(super) async fn take(&mut self, turns: &Turns, clients: bool) {
        if !clients {
            self.held = None;
        } else if self.held.is_none() {
            self.counted = None;
            self.held = Some(turns.turn.clone().lock_owned().await);
        }
        if self.counted.is_none() {
            turns.moving.fetch_add(1, Ordering::Relaxed);
            self.counted = Some(Counted(turns.moving.clone()));
        }
    }

    /// Before any round: alone, the turn goes back at once (the walks of
    /// the other sources move too), keys in flight or not.
    pub(super) fn alone(&mut self) {
        self.held = None;
    }

    /// Whether the walk must finish its batches in flight and start none
    /// (then wait for the turn): clients are served and another walk may
    /// hold the turn.
    pub(super) fn must_wait(&self, clients: bool) -> bool {
        clients && self.held.is_none()
    }

    /// Waiting (a failed round's backoff): the turn goes to another walk.
    pub(super) fn give_back(&mut self) {
        self.held = None;
        self.counted = None;
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

    #[tokio::test]
    async fn beside_clients_one_walk_moves_at_a_time_and_alone_all_of_them() {
        let turns = Turns::default();
        let (mut a, mut b) = (Turn::default(), Turn::default());
        a.take(&turns, false).await;
        b.take(&turns, false).await;
        assert_eq!(turns.moving(), 2, "alone, both move");
        a.take(&turns, true).await;
        assert_eq!(turns.moving(), 2, "a holds the turn");
        // b waits for the turn, and is not counted meanwhile.
        let waiting = tokio::spawn({
            let turns = turns.clone();
            async move {
                b.take(&turns, true).await;
                b
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(turns.moving(), 1);
        drop(a);
        let b = waiting.await.unwrap();
        assert_eq!(turns.moving(), 1, "b took the turn when a ended");
        drop(b);
        assert_eq!(turns.moving(), 0);
        let mut c = Turn::default();
        c.take(&turns, true).await;
        c.give_back();
        assert_eq!(turns.moving(), 0, "a walk backing off is not moving");
        c.take(&turns, true).await;
        assert_eq!(turns.moving(), 1);
        assert!(!c.must_wait(true), "c holds the turn");
        let mut d = Turn::default();
        assert!(d.must_wait(true), "beside clients, d waits for the turn");
        assert!(!d.must_wait(false));
        c.alone();
        assert!(c.must_wait(true), "alone, c gave the turn back");
        d.take(&turns, true).await;
        assert_eq!(turns.moving(), 2, "c still moves, d holds the turn");
    }
}

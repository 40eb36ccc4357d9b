//! A rebalance's progress: the counters the mover updates ([`Job`]), the
//! snapshot `PROGRESS` and `STATUS` show ([`Progress`]), and what a fleet
//! member that does not run the mover shows ([`FleetView`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::state::Saved;
use super::{Plan, lock, resuming};
use crate::coord::{MovedSoFar, RebalanceState};

/// How the last (or running) rebalance stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Moving,
    Verifying,
    Done,
    Failed(String),
}

impl Phase {
    pub(super) fn as_str(&self) -> &str {
        match self {
            Phase::Moving => "moving",
            Phase::Verifying => "verifying",
            Phase::Done => "done",
            Phase::Failed(_) => "failed",
        }
    }
}

/// The verification pass after the last slot moved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verification {
    /// Keys of moved slots still found on the shard they moved from.
    pub left_behind: u64,
    /// Keys found on a shard that does not own them (all shards scanned).
    pub misplaced: u64,
    /// Keys per shard after the move (shard name, keys), all owned there.
    pub keys: Vec<(String, u64)>,
    /// Shards that could not be scanned (so nothing is known of them).
    pub unscanned: Vec<String>,
    /// Keys found in the moved (class, slot) pairs, on their new shards.
    /// Without client writes meanwhile, it equals the keys moved (by the
    /// mover and on touch).
    pub in_moved_slots: u64,
}

impl Verification {
    pub fn ok(&self) -> bool {
        self.left_behind == 0 && self.misplaced == 0 && self.unscanned.is_empty()
    }
}

/// One rebalance: its progress counters, shared by the mover and readers.
pub struct Job {
    pub(super) started: Instant,
    /// Epoch of the first table of the move.
    pub first_epoch: u64,
    /// (class, slot) pairs to move.
    pub total: usize,
    pub(super) pairs: Vec<(String, String, usize)>,
    pub(super) done: AtomicUsize,
    pub(super) migrating: AtomicUsize,
    /// How the walks of several sources share the shards' time.
    pub(super) turns: super::mover::Turns,
    pub(super) keys: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) big_keys: AtomicU64,
    pub(super) touch_at_start: u64,
    /// What earlier movers of this rebalance moved (before a restart or a
    /// takeover); `keys`, `bytes` and `big_keys` count this mover's only.
    pub(super) before: Mutex<MovedSoFar>,
    pub(super) keys_estimate: AtomicU64,
    pub(super) paused: watch::Sender<bool>,
    pub(super) throttle: AtomicU64,
    pub(super) phase: Mutex<Phase>,
    pub(super) last_error: Mutex<Option<String>>,
    pub(super) verification: Mutex<Option<Verification>>,
    pub(super) finished: Mutex<Option<Duration>>,
}

/// A snapshot of a job's progress.
#[derive(Debug, Clone)]
pub struct Progress {
    pub phase: Phase,
    /// Map epoch the rebalance started from.
    pub from_epoch: u64,
    pub paused: bool,
    pub slots_total: usize,
    pub slots_done: usize,
    pub slots_migrating: usize,
    pub keys_moved: u64,
    pub keys_moved_on_touch: u64,
    pub bytes_moved: u64,
    pub big_keys: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub keys_estimate: u64,
    pub throttle: u64,
    pub elapsed: Duration,
    pub keys_per_sec: f64,
    pub eta_secs: Option<u64>,
    pub verification: Option<Verification>,
    pub pairs: Vec<(String, String, usize)>,
}

impl Progress {
    /// Flat `name value ...` pairs (the admin PROGRESS reply).
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let v = self.verification.as_ref();
        vec![
            ("state", self.phase.as_str().to_owned()),
            ("from_epoch", self.from_epoch.to_string()),
            ("paused", (self.paused as u8).to_string()),
            ("slots_total", self.slots_total.to_string()),
            ("slots_done", self.slots_done.to_string()),
            ("slots_migrating", self.slots_migrating.to_string()),
            ("keys_moved", self.keys_moved.to_string()),
            ("keys_moved_on_touch", self.keys_moved_on_touch.to_string()),
            ("bytes_moved", self.bytes_moved.to_string()),
            ("big_keys", self.big_keys.to_string()),
            ("keys_estimate", self.keys_estimate.to_string()),
            ("keys_per_sec", format!("{:.0}", self.keys_per_sec)),
            (
                "eta_secs",
                self.eta_secs
                    .map_or_else(|| "-1".to_owned(), |e| e.to_string()),
            ),
            ("elapsed_secs", format!("{:.1}", self.elapsed.as_secs_f64())),
            ("throttle_keys_per_sec", self.throttle.to_string()),
            ("errors", self.errors.to_string()),
            ("last_error", self.last_error.clone().unwrap_or_default()),
            (
                "verify",
                match (v, &self.phase) {
                    (Some(v), _) if v.ok() => "ok".to_owned(),
                    (Some(_), _) => "failed".to_owned(),
                    _ => "pending".to_owned(),
                },
            ),
            (
                "verify_left_behind",
                v.map_or(0, |v| v.left_behind).to_string(),
            ),
            ("verify_misplaced", v.map_or(0, |v| v.misplaced).to_string()),
            (
                "verify_keys_in_moved_slots",
                v.map_or(0, |v| v.in_moved_slots).to_string(),
            ),
            (
                "verify_unscanned",
                v.map_or_else(String::new, |v| v.unscanned.join(",")),
            ),
            (
                "verify_keys",
                v.map_or_else(String::new, |v| {
                    v.keys
                        .iter()
                        .map(|(s, n)| format!("{s}={n}"))
                        .collect::<Vec<_>>()
                        .join(",")
                }),
            ),
            (
                "failure",
                match &self.phase {
                    Phase::Failed(why) => why.clone(),
                    _ => String::new(),
                },
            ),
        ]
    }
}

impl Job {
    pub(super) fn new(
        first_epoch: u64,
        plan: &Plan,
        touch_at_start: u64,
        saved: Option<&Saved>,
    ) -> Arc<Job> {
        let (paused, throttle, before) = saved.map_or((false, 0, MovedSoFar::default()), |s| {
            (s.paused, s.throttle, s.moved)
        });
        Arc::new(Job {
            started: Instant::now(),
            first_epoch,
            total: plan.moves.len(),
            pairs: plan.pairs.clone(),
            done: AtomicUsize::new(0),
            migrating: AtomicUsize::new(0),
            turns: Default::default(),
            keys: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            big_keys: AtomicU64::new(0),
            touch_at_start,
            before: Mutex::new(before),
            keys_estimate: AtomicU64::new(0),
            paused: watch::Sender::new(paused),
            throttle: AtomicU64::new(throttle),
            phase: Mutex::new(Phase::Moving),
            last_error: Mutex::new(None),
            verification: Mutex::new(None),
            finished: Mutex::new(None),
        })
    }

    pub(super) fn set_phase(&self, p: Phase) {
        *lock(&self.phase) = p;
    }

    pub(super) fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *lock(&self.last_error) = Some(e);
    }

    /// Whether the job still runs (moving or verifying).
    pub fn running(&self) -> bool {
        matches!(*lock(&self.phase), Phase::Moving | Phase::Verifying)
    }

    /// What this rebalance's movers moved so far (earlier ones included).
    pub(super) fn moved_so_far(&self) -> MovedSoFar {
        let before = *lock(&self.before);
        MovedSoFar {
            keys: before.keys + self.keys.load(Ordering::Relaxed),
            bytes: before.bytes + self.bytes.load(Ordering::Relaxed),
            big_keys: before.big_keys + self.big_keys.load(Ordering::Relaxed),
        }
    }

    /// Counts on from `recorded` (what earlier movers recorded) if it is
    /// more than what this job started from.
    pub(super) fn count_from(&self, recorded: MovedSoFar) {
        let mut before = lock(&self.before);
        if recorded.keys > before.keys {
            *before = recorded;
        }
    }

    /// The progress, counting what earlier movers of this rebalance moved
    /// (keys, bytes, big keys, and the estimate, which this mover made of
    /// the keys left when it started); the rate and the ETA are this
    /// mover's own.
    pub(super) fn progress(&self, touch_now: u64) -> Progress {
        let elapsed = lock(&self.finished).unwrap_or_else(|| self.started.elapsed());
        let before = *lock(&self.before);
        let keys = self.keys.load(Ordering::Relaxed);
        let touch = touch_now.saturating_sub(self.touch_at_start);
        let done = self.done.load(Ordering::Relaxed);
        let moved = keys + touch;
        let secs = elapsed.as_secs_f64().max(1e-3);
        let rate = moved as f64 / secs;
        let estimate = self.keys_estimate.load(Ordering::Relaxed);
        let phase = lock(&self.phase).clone();
        let eta = if phase != Phase::Moving {
            Some(0)
        } else if estimate > moved && rate > 0.0 {
            Some(((estimate - moved) as f64 / rate) as u64)
        } else if done > 0 {
            let per_slot = secs / done as f64;
            Some((per_slot * (self.total - done) as f64) as u64)
        } else {
            None
        };
        Progress {
            phase,
            from_epoch: self.first_epoch.saturating_sub(1),
            paused: *self.paused.borrow(),
            slots_total: self.total,
            slots_done: done,
            slots_migrating: self.migrating.load(Ordering::Relaxed),
            keys_moved: before.keys + keys,
            keys_moved_on_touch: touch,
            bytes_moved: before.bytes + self.bytes.load(Ordering::Relaxed),
            big_keys: before.big_keys + self.big_keys.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
            keys_estimate: before.keys + estimate,
            throttle: self.throttle.load(Ordering::Relaxed),
            elapsed,
            keys_per_sec: rate,
            eta_secs: eta,
            verification: lock(&self.verification).clone(),
            pairs: self.pairs.clone(),
        }
    }
}

/// A fleet's running rebalance, as this proxy last published it.
pub(super) struct FleetView {
    pub(super) revision: i64,
    pub(super) rebalance: RebalanceState,
    /// Set once the rebalance finished (the state holds no rebalance).
    pub(super) finished: Option<crate::coord::FinishedRebalance>,
}

impl FleetView {
    /// The progress STATUS shows on a proxy that does not run the mover.
    pub(super) fn progress(&self) -> Progress {
        if let Some(f) = &self.finished {
            return Progress {
                phase: Phase::Done,
                from_epoch: u64::try_from(self.revision).unwrap_or(0),
                paused: false,
                slots_total: f.slots_total,
                slots_done: f.slots_total,
                slots_migrating: 0,
                keys_moved: f.keys_moved,
                keys_moved_on_touch: 0,
                bytes_moved: f.bytes_moved,
                big_keys: f.big_keys,
                errors: 0,
                last_error: None,
                keys_estimate: f.keys_moved,
                throttle: 0,
                elapsed: Duration::from_secs_f64(f.elapsed_secs.max(0.0)),
                keys_per_sec: f.keys_moved as f64 / f.elapsed_secs.max(1e-3),
                eta_secs: Some(0),
                verification: Some(Verification {
                    left_behind: f.left_behind,
                    misplaced: f.misplaced,
                    keys: f.keys.clone(),
                    unscanned: f.unscanned.clone(),
                    in_moved_slots: f.in_moved_slots,
                }),
                pairs: Vec::new(),
            };
        }
        let total = resuming(Saved::from(&self.rebalance), String::new())
            .ok()
            .and_then(|i| i.resume)
            .map_or(0, |r| r.plan.moves.len());
        let done = self.rebalance.done.len();
        Progress {
            phase: Phase::Moving,
            from_epoch: u64::try_from(self.revision).unwrap_or(0),
            paused: self.rebalance.paused,
            slots_total: total,
            slots_done: done,
            slots_migrating: self.rebalance.migrating.len().saturating_sub(done),
            // As of the mover's last finished window.
            keys_moved: self.rebalance.moved.keys,
            keys_moved_on_touch: 0,
            bytes_moved: self.rebalance.moved.bytes,
            big_keys: self.rebalance.moved.big_keys,
            errors: 0,
            last_error: None,
            keys_estimate: 0,
            throttle: self.rebalance.throttle,
            elapsed: Duration::ZERO,
            keys_per_sec: 0.0,
            eta_secs: None,
            verification: None,
            pairs: Vec::new(),
        }
    }
}

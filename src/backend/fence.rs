//! Key fences: while a key is copied with commands (a big key piece by
//! piece, or any key to or from a postgres shard), commands that would
//! move that key themselves wait, and the copier waits for the moves
//! already under way. Empty except during such a copy; only commands on
//! keys of migrating slots ever look at it.
//!
//! In a fleet, another proxy may copy the same key at the same time (its
//! mover, or a command of its own clients): a fence then also takes the
//! key's claim in etcd ([`FleetClaims`]), held under this proxy's lease, so
//! one copier of a key runs in the whole fleet. A copier whose lease may
//! have expired ([`Fence`]) stops before its next write: its claim may
//! have gone with its lease, and another proxy may have copied the key
//! since (the timing argument is the fleet's, see `fleet`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, watch};

use crate::coord::Coord;
use crate::metrics::Metrics;

#[derive(Default)]
struct Entry {
    /// Moves on touch of the key under way.
    touching: usize,
    /// A copier holds the key.
    fenced: bool,
    /// In a fleet: the key's claim in etcd while fenced (its token, and
    /// the lease it was taken under).
    claim: Option<(String, i64)>,
}

/// The fences of one proxy.
#[derive(Default)]
pub struct KeyFences {
    keys: Mutex<HashMap<Bytes, Entry>>,
    changed: Notify,
    /// Set once this proxy has joined a fleet.
    fleet: OnceLock<FleetClaims>,
}

/// Why a key's fence could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// etcd did not answer the claim.
    #[error("the key's claim in etcd failed: {0}")]
    Etcd(String),
    /// This proxy's lease may have expired: it copies nothing.
    #[error("this proxy may have lost its etcd lease")]
    LeaseLost,
}

/// What a fleet member needs to claim keys in etcd.
pub struct FleetClaims {
    coord: Coord,
    /// This proxy's id (in the claim's token, for an operator reading etcd).
    holder: String,
    /// The lease this proxy's member key lives under (replaced after a
    /// lost lease).
    lease: watch::Receiver<i64>,
    /// Closed once the lease may have expired.
    lease_fence: Arc<Fence>,
    metrics: Arc<Metrics>,
    next: AtomicU64,
}

impl FleetClaims {
    pub fn new(
        coord: Coord,
        holder: String,
        lease: watch::Receiver<i64>,
        lease_fence: Arc<Fence>,
        metrics: Arc<Metrics>,
    ) -> FleetClaims {
        FleetClaims {
            coord,
            holder,
            lease,
            lease_fence,
            metrics,
            next: AtomicU64::new(0),
        }
    }

    /// Takes the claim of `key`, waiting while another proxy holds it (a
    /// claim goes with its holder's lease, so a dead or frozen holder is
    /// waited for one lease at most).
    async fn claim(&self, key: &[u8]) -> Result<(String, i64), FenceError> {
        let name = claim_name(key);
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut waited = false;
        let mut pause = Duration::from_millis(2);
        loop {
            if self.lease_fence.blocks(Instant::now()) {
                self.metrics.fleet_key_claim("failed");
                return Err(FenceError::LeaseLost);
            }
            let lease = *self.lease.borrow();
            // The lease in the token: unique across the fleet's lifetime,
            // so a restarted proxy never mistakes an old claim for its own.
            let token = format!("{}/{lease:x}/{n}", self.holder);
            match self.coord.try_claim(&name, &token, lease).await {
                Ok(true) => {
                    self.metrics
                        .fleet_key_claim(if waited { "waited" } else { "taken" });
                    return Ok((token, lease));
                }
                Ok(false) => {
                    waited = true;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(e) => {
                    // The claim may have been taken and its reply lost.
                    self.release(name, token);
                    self.metrics.fleet_key_claim("failed");
                    return Err(FenceError::Etcd(e.to_string()));
                }
            }
        }
    }

    /// Gives the claim up, in a task of its own that retries until etcd
    /// answers (a claim left behind would hold the key as long as this
    /// proxy's lease lives).
    fn release(&self, name: String, token: String) {
        let coord = self.coord.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            while let Err(e) = coord.release_claim(&name, &token).await {
                tracing::warn!(claim = %name, error = %e, "cannot release a key claim in etcd; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }
}

/// The name of `key`'s claim: 128 bits of XXH3 in hex (a key may be far
/// longer than an etcd key may be; two keys sharing a name only wait for
/// each other).
fn claim_name(key: &[u8]) -> String {
    format!("{:032x}", twox_hash::XxHash3_128::oneshot(key))
}

/// A move on touch under way; ends when dropped.
pub struct Touch<'a> {
    fences: &'a KeyFences,
    key: Bytes,
}

impl Drop for Touch<'_> {
    fn drop(&mut self) {
        let mut keys = self.fences.lock();
        if let Some(e) = keys.get_mut(&self.key) {
            e.touching -= 1;
            if e.touching == 0 && !e.fenced {
                keys.remove(&self.key);
            }
        }
        drop(keys);
        self.fences.changed.notify_waiters();
    }
}

impl KeyFences {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, Entry>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `take` succeeds on the key's entry (run under the lock,
    /// again after every change).
    async fn acquire(&self, key: &Bytes, take: impl Fn(&mut Entry) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if take(self.lock().entry(key.clone()).or_default()) {
                return;
            }
            notified.await;
        }
    }

    /// Starts moving `key` on touch, after any copy of it by the mover.
    pub async fn touch(&self, key: &Bytes) -> Touch<'_> {
        self.acquire(key, |e| {
            let free = !e.fenced;
            e.touching += usize::from(free);
            free
        })
        .await;
        Touch {
            fences: self,
            key: key.clone(),
        }
    }

    /// Fences `key` for a copy: new touches wait; returns once the touches
    /// under way have ended. Another fence on the key is waited out first:
    /// one copier at a time (in a fleet, in the whole fleet: the key's
    /// claim in etcd is taken too). On an error nothing is held.
    pub async fn fence(&self, key: &Bytes) -> Result<(), FenceError> {
        self.acquire(key, |e| {
            let free = !e.fenced;
            e.fenced = true;
            free
        })
        .await;
        self.acquire(key, |e| e.touching == 0).await;
        if let Some(claims) = self.fleet.get() {
            match claims.claim(key).await {
                Ok(claim) => {
                    if let Some(e) = self.lock().get_mut(key) {
                        e.claim = Some(claim);
                    }
                }
                Err(e) => {
                    self.lift(key);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Lifts the fence on `key` (and gives its claim up).
    pub fn lift(&self, key: &Bytes) {
        let mut keys = self.lock();
        let mut claim = None;
        if let Some(e) = keys.get_mut(key) {
            e.fenced = false;
            claim = e.claim.take();
            if e.touching == 0 {
                keys.remove(key);
            }
        }
        drop(keys);
        if let (Some((token, _)), Some(claims)) = (claim, self.fleet.get()) {
            claims.release(claim_name(key), token);
        }
        self.changed.notify_waiters();
    }

    /// Whether this proxy may still write for its fence on `key`: always
    /// with one proxy; in a fleet, while the lease its claim was taken
    /// under cannot have expired (a claim goes with its lease; after a lost
    /// lease the proxy holds a new one, and the old claims are gone). A
    /// copier checks before each write.
    pub fn still_held(&self, key: &Bytes) -> bool {
        let Some(claims) = self.fleet.get() else {
            return true;
        };
        let lease = self
            .lock()
            .get(key)
            .and_then(|e| e.claim.as_ref())
            .map(|(_, lease)| *lease);
        lease == Some(*claims.lease.borrow()) && !claims.lease_fence.blocks(Instant::now())
    }

    /// Whether fences are fleet-wide (this proxy is a fleet member).
    pub fn in_fleet(&self) -> bool {
        self.fleet.get().is_some()
    }

    /// Makes every later fence fleet-wide. Called once, when this proxy
    /// joins its fleet.
    pub fn join_fleet(&self, claims: FleetClaims) {
        let _ = self.fleet.set(claims);
    }
}

/// Stops a fleet member from routing keys once the other proxies may have
/// gone on without it (see `fleet`): the lease keeper moves the deadline
/// forward after every renewal, to before the lease can expire; past it,
/// every command on keys is answered `-TRYAGAIN` until the proxy has
/// registered again and published the fleet's current state. Never closes
/// in single-process mode.
pub struct Fence {
    base: Instant,
    enabled: AtomicBool,
    /// Nanoseconds after `base` up to which keys may be served.
    deadline_ns: AtomicU64,
}

impl Default for Fence {
    fn default() -> Self {
        Fence {
            base: Instant::now(),
            enabled: AtomicBool::new(false),
            deadline_ns: AtomicU64::new(0),
        }
    }
}

impl Fence {
    /// Serve keys until `deadline` (and turn the fence on).
    pub fn open_until(&self, deadline: Instant) {
        let ns = deadline.saturating_duration_since(self.base).as_nanos();
        self.deadline_ns
            .store(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Release);
        self.enabled.store(true, Ordering::Release);
    }

    /// Stop serving keys now (and turn the fence on).
    pub fn close(&self) {
        self.deadline_ns.store(0, Ordering::Release);
        self.enabled.store(true, Ordering::Release);
    }

    /// Whether a command must not touch keys now (the clock is read only
    /// when the fence is on: in a fleet).
    pub fn blocks_now(&self) -> bool {
        self.enabled.load(Ordering::Relaxed) && self.blocks(Instant::now())
    }

    /// Whether a command that arrived at `now` must not touch keys.
    pub fn blocks(&self, now: Instant) -> bool {
        self.enabled.load(Ordering::Relaxed)
            && now.saturating_duration_since(self.base)
                >= Duration::from_nanos(self.deadline_ns.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn touches_wait_for_the_fence_and_the_fence_for_touches() {
        let f = Arc::new(KeyFences::default());
        let k = Bytes::from_static(b"k");
        let t = f.touch(&k).await;
        // The fence waits for the touch under way.
        let fenced = {
            let (f, k) = (f.clone(), k.clone());
            tokio::spawn(async move { f.fence(&k).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!fenced.is_finished());
        drop(t);
        fenced.await.unwrap().unwrap();
        // A new touch waits for the lift.
        let waiting = {
            let (f, k) = (f.clone(), k.clone());
            tokio::spawn(async move {
                let _t = f.touch(&k).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        // Other keys are not held.
        drop(f.touch(&Bytes::from_static(b"other")).await);
        f.lift(&k);
        waiting.await.unwrap();
        assert!(f.lock().is_empty());
    }

    #[test]
    fn a_fence_blocks_past_its_deadline_only_once_enabled() {
        let f = Fence::default();
        let now = Instant::now();
        assert!(!f.blocks(now + Duration::from_secs(3600)), "off by default");
        f.open_until(now + Duration::from_secs(5));
        assert!(!f.blocks(now));
        assert!(f.blocks(now + Duration::from_secs(5)));
        f.close();
        assert!(f.blocks(now));
        f.open_until(now + Duration::from_secs(1));
        assert!(!f.blocks(now));
    }
}

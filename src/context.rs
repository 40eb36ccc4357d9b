//! What the data path ([`crate::proxy`]) and the control path
//! ([`crate::rebalance`], the map reload) share, owned and wired by
//! [`crate::app`]: the published snapshot, the key fences of big-key
//! copies, the metrics, and where this proxy runs. Both sides depend on
//! this module and not on each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::backend::Backends;
use crate::backend::fence::KeyFences;
use crate::metrics::Metrics;
use crate::snapshot::{Published, Snapshot};

/// The state one proxy process shares between clients and the rebalancer.
pub struct Context {
    /// The routing table and backends in force.
    pub snapshot: Published,
    /// Keys the rebalance mover is copying piece by piece.
    pub fences: KeyFences,
    pub metrics: Arc<Metrics>,
    /// Where this proxy runs (read policy `nearest`; endpoints are built
    /// with it).
    pub region: Option<String>,
    pub zone: Option<String>,
    /// In a fleet: closed while this proxy may have lost its etcd lease.
    pub fence: Fence,
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

    /// Whether a command that arrived at `now` must not touch keys.
    pub fn blocks(&self, now: Instant) -> bool {
        self.enabled.load(Ordering::Relaxed)
            && now.saturating_duration_since(self.base)
                >= Duration::from_nanos(self.deadline_ns.load(Ordering::Acquire))
    }
}

impl Context {
    /// Bundles the shared parts.
    pub fn new(
        snapshot: Published,
        metrics: Arc<Metrics>,
        region: Option<String>,
        zone: Option<String>,
    ) -> Context {
        Context {
            snapshot,
            fences: KeyFences::default(),
            metrics,
            region,
            zone,
            fence: Fence::default(),
        }
    }

    /// The snapshot in force, for one synchronous step (no shared reference
    /// count touched).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The snapshot in force, to keep across awaits.
    pub fn snapshot_full(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The current backends, to keep across awaits where no routing
    /// decision depends on them.
    pub fn backends(&self) -> Arc<Backends> {
        self.snapshot.load().backends().clone()
    }

    /// Backends for `map` built from the running ones (endpoints that did
    /// not change keep their connections), located where this proxy runs.
    pub fn rebuild_backends(
        &self,
        map: &crate::shardmap::ShardMap,
    ) -> (Arc<Backends>, Arc<Backends>) {
        let old = self.backends();
        let next = Arc::new(Backends::rebuild(
            &old,
            map,
            self.region.as_deref(),
            self.zone.as_deref(),
        ));
        (old, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

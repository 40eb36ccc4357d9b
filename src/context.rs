//! What the data path ([`crate::proxy`]) and the control path
//! ([`crate::rebalance`], the map reload) share, owned and wired by
//! [`crate::app`]: the published snapshot, the key fences of big-key
//! copies, the metrics, and where this proxy runs. Both sides depend on
//! this module and not on each other.

use std::collections::HashSet;
use std::sync::Arc;

use crate::backend::Backends;
pub use crate::backend::fence::Fence;
use crate::backend::fence::KeyFences;
use crate::metrics::Metrics;
use crate::shardmap::SentinelView;
use crate::snapshot::{PublishError, Published, Snapshot};

/// Backends replaced by a publish: (the replaced ones, the new ones).
pub type BackendsChange = (Arc<Backends>, Arc<Backends>);

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
    /// The same fence every endpoint of the backends checks before it
    /// writes (`EndpointState::lease_fence`).
    pub fence: Arc<Fence>,
    /// What Redis Sentinel last said about the masters that sentinel
    /// shards follow; every map-to-backends path resolves through it.
    pub sentinel: arc_swap::ArcSwap<SentinelView>,
    /// In a fleet: migrating slots whose keys must not move on touch yet.
    pub held_moves: HeldMoves,
}

/// The (class, slot) pairs published as `Migrating` whose keys must not
/// move on touch yet: in a fleet, those the mover has not confirmed (see
/// `coord::RebalanceState`): until every live proxy has published a
/// window, another one may still write its keys on their old shard; with a
/// single proxy, the window whose barrier has not ended (a request this
/// proxy routed by an earlier table may still be queued on the old shard).
/// A key moved on touch meanwhile would be overwritten (`MIGRATE ...
/// REPLACE`), left behind, or, copied to or from a postgres shard, lose the
/// write that landed between the copy's read and its `UNLINK`. Commands on
/// those keys wait until the units are released.
#[derive(Default)]
pub struct HeldMoves {
    units: arc_swap::ArcSwap<HashSet<(u32, u32)>>,
}

impl HeldMoves {
    /// Replaces the held units; set before the table that shows them
    /// `Migrating` is published.
    pub fn set(&self, units: HashSet<(u32, u32)>) {
        self.units.store(Arc::new(units));
    }

    /// Whether keys of (class, slot) must not move yet.
    pub fn holds(&self, class: u32, slot: u32) -> bool {
        let units = self.units.load();
        !units.is_empty() && units.contains(&(class, slot))
    }

    /// Whether nothing is held (the common case: one load, no hashing).
    pub fn is_empty(&self) -> bool {
        self.units.load().is_empty()
    }
}

impl Context {
    /// Bundles the shared parts (the Sentinel view starts empty; `app`
    /// stores what the first backends were resolved with).
    pub fn new(
        snapshot: Published,
        metrics: Arc<Metrics>,
        region: Option<String>,
        zone: Option<String>,
    ) -> Context {
        let fence = snapshot.load().backends().lease_fence().clone();
        Context {
            snapshot,
            fences: KeyFences::default(),
            metrics,
            region,
            zone,
            fence,
            sentinel: arc_swap::ArcSwap::from_pointee(SentinelView::default()),
            held_moves: HeldMoves::default(),
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
            &self.sentinel.load(),
            self.region.as_deref(),
            self.zone.as_deref(),
        ));
        (old, next)
    }

    /// After the Sentinel view changed: the running backends rebuilt from
    /// the map they were built from, with the view's addresses (unchanged
    /// endpoints keep their connections), and published under the same
    /// routing table, unless another publish came first (then nothing
    /// happens; the caller checks again). Returns the replaced and the new
    /// backends when it published, `None` when nothing had to change.
    pub fn follow_sentinel(&self) -> Result<Option<BackendsChange>, PublishError> {
        let view = self.sentinel.load_full();
        let old = self.backends();
        if old.follows(&view) {
            return Ok(None);
        }
        let next = Arc::new(Backends::rebuild(
            &old,
            old.source(),
            &view,
            self.region.as_deref(),
            self.zone.as_deref(),
        ));
        if self.snapshot.replace_backends(&old, next.clone())? {
            Ok(Some((old, next)))
        } else {
            Ok(None)
        }
    }
}

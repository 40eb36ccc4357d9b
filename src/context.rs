//! What the data path ([`crate::proxy`]) and the control path
//! ([`crate::rebalance`], the map reload) share, owned and wired by
//! [`crate::app`]: the published snapshot, the key fences of big-key
//! copies, the metrics, and where this proxy runs. Both sides depend on
//! this module and not on each other.

use std::sync::Arc;

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

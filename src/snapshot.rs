//! The one thing the data path reads per request: a [`Snapshot`] of the
//! routing table and the backends its shard ids index, published together.
//!
//! Before, the table (`Router`) and the backends were published separately
//! and joined by a bare index, so that safety rested on the order of two
//! publishes. Now a reader loads one snapshot per request and routes and
//! sends with the same one: a shard id from its table always names a shard
//! of its backends ([`Snapshot::new`] checks it, so [`Snapshot::shard`]
//! cannot be out of range).
//!
//! Writers (a map reload, the rebalance mover) go through
//! [`Published::publish`], which checks the epoch and slot count under one
//! writer lock, like undermoon's epoch-guarded map updates.

use std::sync::{Arc, Mutex, Weak};

use crate::backend::{Backends, ShardBackends};
use crate::router::{Epoch, RouterError, RoutingTable, ShardId};
use crate::shardmap::ShardMap;

/// A routing table and the backends of its shards.
pub struct Snapshot {
    table: Arc<RoutingTable>,
    backends: Arc<Backends>,
}

/// Why a snapshot was not published (the running one stays).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The table cannot replace the running one (stale epoch, slot count).
    #[error(transparent)]
    Table(#[from] RouterError),
    /// The backends do not cover the table's shards: a shard id of the
    /// table would index past them, or name another shard.
    #[error(
        "backends do not match the routing table: the table has {table} shards, the backends {backends}{}",
        first_mismatch.as_ref().map(|n| format!(" (shard {n} differs)")).unwrap_or_default()
    )]
    ShardsMismatch {
        table: usize,
        backends: usize,
        first_mismatch: Option<String>,
    },
}

impl Snapshot {
    /// Pairs `table` with `backends`, which must hold every shard of the
    /// table under the same id (they may hold more: the shards a rebalance
    /// is adding, before a table routes to them).
    pub fn new(
        table: Arc<RoutingTable>,
        backends: Arc<Backends>,
    ) -> Result<Snapshot, PublishError> {
        let shards = backends.shards();
        let mismatch = |first_mismatch| PublishError::ShardsMismatch {
            table: table.shard_count(),
            backends: shards.len(),
            first_mismatch,
        };
        if shards.len() < table.shard_count() {
            return Err(mismatch(None));
        }
        if let Some((m, _)) = table
            .map()
            .shards
            .iter()
            .zip(shards)
            .find(|(m, b)| m.name != b.name)
        {
            return Err(mismatch(Some(m.name.clone())));
        }
        Ok(Snapshot { table, backends })
    }

    /// The routing table's epoch.
    pub fn epoch(&self) -> Epoch {
        self.table.epoch()
    }

    /// The routing table.
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// The map the table was compiled from.
    pub fn map(&self) -> &ShardMap {
        self.table.map()
    }

    /// The backends (to keep one set across awaits, clone the `Arc`).
    pub fn backends(&self) -> &Arc<Backends> {
        &self.backends
    }

    /// The backends of a shard the table routed to.
    pub fn shard(&self, id: ShardId) -> &ShardBackends {
        // In range by construction (see `Snapshot::new`).
        self.backends.shard(id)
    }
}

/// The snapshot in force. Readers `load()` once per command and never lock.
pub struct Published {
    current: arc_swap::ArcSwap<Snapshot>,
    /// Serialises check-then-store in the publish methods.
    write: Mutex<()>,
    /// Bumped after every store, for the few that follow changes as they
    /// happen (the pub/sub hub) instead of loading per request.
    changes: tokio::sync::watch::Sender<u64>,
    /// Every snapshot replaced so far that someone may still hold (weak:
    /// this list keeps none alive; dead ones are dropped at each store).
    /// A request routed by a replaced snapshot may not have reached its
    /// backend yet while that snapshot is held: the rebalancer's barrier
    /// waits for all of them, not only for the one its publish replaced
    /// (see [`Published::replaced_held`]).
    replaced: Mutex<Vec<Weak<Snapshot>>>,
}

impl Published {
    /// Serves `first`.
    pub fn new(first: Snapshot) -> Published {
        Published {
            current: arc_swap::ArcSwap::from_pointee(first),
            write: Mutex::new(()),
            changes: tokio::sync::watch::Sender::new(0),
            replaced: Mutex::new(Vec::new()),
        }
    }

    /// Wakes on every publish that follows (the value is a change count).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn store(&self, next: Snapshot) {
        let old = self.current.swap(Arc::new(next));
        {
            let mut replaced = self.replaced.lock().unwrap_or_else(|e| e.into_inner());
            replaced.retain(|w| w.strong_count() > 0);
            replaced.push(Arc::downgrade(&old));
        }
        drop(old);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Replaced snapshots still held whose table's epoch is `upto` or
    /// older. A session holds its snapshot from routing a request until the
    /// request is queued on its backend connection or lane (and across an
    /// exclusive operation, until its last request is answered), so once
    /// this is 0, every request routed by such a table is queued. The
    /// rebalancer's barrier waits for this: the table its publish replaced
    /// is not enough, since a publish without a barrier (a window turning
    /// stable) may have come in between, and a session still routing with
    /// the table before it would send a key of the next window to its old
    /// shard after the barrier.
    pub fn replaced_held(&self, upto: Epoch) -> usize {
        let replaced = self.replaced.lock().unwrap_or_else(|e| e.into_inner());
        replaced
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|s| s.epoch() <= upto)
            .count()
    }

    /// Calls `f` with each replaced snapshot still held whose table's epoch
    /// is `upto` or older (the barrier collects the endpoints their
    /// requests may be queued on). `f` must not keep it.
    pub fn each_replaced_held(&self, upto: Epoch, mut f: impl FnMut(&Snapshot)) {
        let held: Vec<Arc<Snapshot>> = {
            let replaced = self.replaced.lock().unwrap_or_else(|e| e.into_inner());
            replaced.iter().filter_map(Weak::upgrade).collect()
        };
        for s in held.iter().filter(|s| s.epoch() <= upto) {
            f(s);
        }
    }

    /// The current snapshot for the duration of one request. A guard, not an
    /// `Arc` clone: no shared reference count is touched on the hot path.
    /// Hold it briefly; use [`Published::load_full`] to keep one.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an `Arc` to keep across awaits.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Publishes a new table, with new backends or the running ones. The
    /// table must have a greater epoch and the same slot count.
    ///
    /// Returns the replaced table: once its `Arc::strong_count` is 1, no
    /// snapshot routing with it is held by anyone any more (every snapshot
    /// holds its table; arc-swap turns outstanding guards into counted
    /// references when a snapshot is replaced). The rebalancer's barrier.
    pub fn publish(
        &self,
        table: RoutingTable,
        backends: Option<Arc<Backends>>,
    ) -> Result<Arc<RoutingTable>, PublishError> {
        // A poisoned lock only means another publisher panicked; the guarded
        // state is `()`, so continuing is safe.
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load_full();
        current.table.check_successor(&table)?;
        let backends = backends.unwrap_or_else(|| current.backends.clone());
        let next = Snapshot::new(Arc::new(table), backends)?;
        self.store(next);
        Ok(current.table.clone())
    }

    /// Replaces the backends and keeps the table (a rebalance adding the
    /// endpoints of new shards before any slot routes to them). Returns the
    /// replaced backends.
    pub fn publish_backends(&self, backends: Arc<Backends>) -> Result<Arc<Backends>, PublishError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load_full();
        let next = Snapshot::new(current.table.clone(), backends)?;
        self.store(next);
        Ok(current.backends.clone())
    }

    /// Replaces the backends, keeping the table, only if the backends in
    /// force are still `expected` (the caller built `backends` from them):
    /// `Ok(false)` if another publish came first. A Sentinel failover goes
    /// through here, so it never undoes a concurrent reload or rebalance.
    pub fn replace_backends(
        &self,
        expected: &Arc<Backends>,
        backends: Arc<Backends>,
    ) -> Result<bool, PublishError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load_full();
        if !Arc::ptr_eq(&current.backends, expected) {
            return Ok(false);
        }
        let next = Snapshot::new(current.table.clone(), backends)?;
        self.store(next);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "slots: 64\nregions:\n  - name: us\nshards:\n  - name: a\n    region: us\n    primary: 127.0.0.1:7001\n  - name: b\n    region: us\n    primary: 127.0.0.1:7002\n";

    fn map(yaml: &str) -> Arc<ShardMap> {
        Arc::new(ShardMap::from_yaml(yaml).expect("valid map"))
    }

    fn table(yaml: &str, epoch: u64) -> RoutingTable {
        RoutingTable::compile(map(yaml), Epoch(epoch))
    }

    fn backends(yaml: &str) -> Arc<Backends> {
        Arc::new(Backends::new(&map(yaml), None, None))
    }

    fn published() -> Published {
        Published::new(Snapshot::new(Arc::new(table(MAP, 5)), backends(MAP)).expect("matches"))
    }

    #[tokio::test]
    async fn publish_requires_a_newer_epoch_and_the_same_slots() {
        let p = published();
        assert_eq!(
            p.publish(table(MAP, 5), None).err(),
            Some(PublishError::Table(RouterError::StaleEpoch {
                current: Epoch(5),
                offered: Epoch(5)
            }))
        );
        assert!(p.publish(table(MAP, 4), None).is_err());
        let other = MAP.replace("slots: 64", "slots: 128");
        assert_eq!(
            p.publish(table(&other, 6), None).err(),
            Some(PublishError::Table(RouterError::SlotCountChanged {
                current: 64,
                offered: 128
            }))
        );
        assert_eq!(p.load().epoch(), Epoch(5));
        assert!(p.publish(table(MAP, 6), None).is_ok());
        assert_eq!(p.load().epoch(), Epoch(6));
    }

    #[tokio::test]
    async fn backends_must_cover_the_table() {
        let p = published();
        let more = MAP.replace(
            "  - name: b\n",
            "  - name: b2\n    region: us\n    primary: 127.0.0.1:7003\n  - name: b\n",
        );
        // A table with three shards over backends of two: refused.
        assert!(matches!(
            p.publish(table(&more, 6), None),
            Err(PublishError::ShardsMismatch {
                table: 3,
                backends: 2,
                ..
            })
        ));
        // Backends whose second shard is another one: refused.
        assert!(matches!(
            p.publish_backends(backends(&more)),
            Err(PublishError::ShardsMismatch {
                first_mismatch: Some(_),
                ..
            })
        ));
        assert_eq!(p.load().epoch(), Epoch(5));
        // More backends than the table routes to (a rebalance adding a shard).
        let added = format!("{MAP}  - name: c\n    region: us\n    primary: 127.0.0.1:7004\n");
        assert!(p.publish_backends(backends(&added)).is_ok());
        assert_eq!(p.load().backends().shards().len(), 3);
        assert_eq!(p.load().epoch(), Epoch(5));
    }

    #[tokio::test]
    async fn every_replaced_snapshot_still_held_counts_not_only_the_last() {
        // A window's `Migrating` publish may follow a publish without a
        // barrier (the previous window turning stable): a session that
        // loaded the snapshot before that one, and has not queued its
        // request yet, must hold the barrier back too (issue 15).
        let p = published();
        let guard = p.load();
        let kept = p.load_full();
        p.publish(table(MAP, 6), None).expect("newer");
        p.publish_backends(backends(MAP)).expect("same shards");
        let old = p.publish(table(MAP, 7), None).expect("newer");
        assert_eq!(old.epoch(), Epoch(6));
        // Nobody holds the table the last publish replaced...
        assert_eq!(Arc::strong_count(&old), 1);
        // ...but epoch 5 is still routed with, by a guard and an `Arc`.
        assert_eq!(p.replaced_held(Epoch(6)), 1);
        assert_eq!(p.replaced_held(Epoch(4)), 0);
        let mut seen = Vec::new();
        p.each_replaced_held(Epoch(6), |s| seen.push(s.epoch()));
        assert_eq!(seen, vec![Epoch(5)]);
        drop(kept);
        assert_eq!(p.replaced_held(Epoch(6)), 1, "the guard still holds it");
        drop(guard);
        assert_eq!(p.replaced_held(Epoch(6)), 0);
        // The list does not grow with publishes nobody holds.
        for e in 8..100 {
            p.publish(table(MAP, e), None).expect("newer");
        }
        assert!(p.replaced.lock().unwrap().len() <= 2);
    }

    #[tokio::test]
    async fn the_replaced_table_counts_the_snapshots_still_held() {
        // The rebalancer's barrier relies on this: a snapshot taken before a
        // publish keeps the replaced table's count above 1 until dropped,
        // also across a backends-only publish in between.
        let p = published();
        let reader = p.load();
        let kept = p.load_full();
        p.publish_backends(backends(MAP)).expect("same shards");
        let old = p.publish(table(MAP, 6), None).expect("newer");
        assert_eq!(old.epoch(), Epoch(5));
        // The first snapshot (held twice) holds the table, and so does `old`.
        assert_eq!(Arc::strong_count(&old), 2);
        drop(reader);
        assert_eq!(Arc::strong_count(&old), 2);
        drop(kept);
        assert_eq!(Arc::strong_count(&old), 1);
    }
}

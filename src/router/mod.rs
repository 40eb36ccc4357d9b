//! Key -> hash tag -> slot -> placement -> owner shard. Pure, no I/O.
//!
//! * [`placement`]: the hash-tag rule, the key hash (XXH3-64, seed 0) and
//!   the owner of a slot among candidate shards (weighted rendezvous hashing).
//! * [`table`]: [`RoutingTable`], the compiled dense `slot -> shard` arrays,
//!   one per placement target.
//! * [`Router`]: the current table, published with `arc-swap` so readers
//!   never lock, guarded by a monotonic [`Epoch`].

pub mod placement;
pub mod table;

use std::sync::{Arc, Mutex};

pub use placement::{explicit_hash_tag, hash_tag, key_hash};
pub use table::{ClassMove, Overlay, Placement, Route, RoutingTable, SlotMove};

/// A slot: `key_hash(key) % slots`, the unit of placement and migration.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(pub u32);

/// A shard: the index into `ShardMap::shards` of the map a table was compiled from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

/// Version of a published routing table; only ever grows.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Epoch(pub u64);

/// Why a routing table was not published (the running one stays).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// The offered table is not newer than the running one (a late or
    /// duplicated publish); publishing it would roll routing back.
    #[error("stale routing table: epoch {} is not newer than the current epoch {}", offered.0, current.0)]
    StaleEpoch {
        /// Epoch of the running table.
        current: Epoch,
        /// Epoch of the refused table.
        offered: Epoch,
    },
    /// The slot count is fixed for the life of a keyspace: changing it would
    /// move almost every key at once.
    #[error("slot count cannot change: the keyspace has {current} slots, the new map {offered}")]
    SlotCountChanged {
        /// Slots of the running table.
        current: u32,
        /// Slots of the refused table.
        offered: u32,
    },
}

/// The current routing table. Readers `load()` once per command and never
/// lock; writers (admin, rebalancer) go through [`Router::publish`], which
/// checks the epoch under one writer lock.
pub struct Router {
    t: arc_swap::ArcSwap<RoutingTable>,
    /// Serialises check-then-store in `publish`.
    write: Mutex<()>,
}

impl Router {
    /// A router serving `table`.
    pub fn new(table: RoutingTable) -> Router {
        Router {
            t: arc_swap::ArcSwap::from_pointee(table),
            write: Mutex::new(()),
        }
    }

    /// The current table, for the duration of one request. A guard, not an
    /// `Arc` clone: no shared reference count is touched on the hot path, so
    /// worker threads do not contend on one cache line. Hold it briefly; use
    /// [`Router::load_full`] to keep a table.
    pub fn load(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.t.load()
    }

    /// The current table as an `Arc` to keep.
    pub fn load_full(&self) -> Arc<RoutingTable> {
        self.t.load_full()
    }

    /// Replaces the table if `table` has a greater epoch and the same slot
    /// count; otherwise the running table stays and the reason is returned.
    pub fn publish(&self, table: RoutingTable) -> Result<(), RouterError> {
        self.publish_swap(table).map(drop)
    }

    /// Like [`Router::publish`], and returns the table it replaced. Once
    /// `Arc::strong_count` of that table is 1, no reader is routing with it
    /// any more (arc-swap turns outstanding guards into counted references
    /// when a table is replaced): the rebalancer's barrier.
    pub fn publish_swap(&self, table: RoutingTable) -> Result<Arc<RoutingTable>, RouterError> {
        // A poisoned lock only means another publisher panicked; the guarded
        // state is `()`, so continuing is safe.
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.t.load();
        if table.epoch() <= current.epoch() {
            return Err(RouterError::StaleEpoch {
                current: current.epoch(),
                offered: table.epoch(),
            });
        }
        if table.slots() != current.slots() {
            return Err(RouterError::SlotCountChanged {
                current: current.slots(),
                offered: table.slots(),
            });
        }
        drop(current);
        Ok(self.t.swap(Arc::new(table)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shardmap::ShardMap;

    const MAP: &str = "slots: 64\nregions:\n  - name: us\n  - name: eu\nshards:\n  - name: a\n    region: us\n    primary: 127.0.0.1:7001\n  - name: b\n    region: eu\n    primary: 127.0.0.1:7002\nplacement:\n  - hash_tag_prefix: \"eu:\"\n    region: eu\n  - key_prefix: \"eu/\"\n    region: eu\n";

    fn table(yaml: &str, epoch: u64) -> RoutingTable {
        let map = ShardMap::from_yaml(yaml).expect("valid map");
        RoutingTable::compile(Arc::new(map), Epoch(epoch))
    }

    #[test]
    fn publish_requires_newer_epoch() {
        let r = Router::new(table(MAP, 5));
        assert_eq!(
            r.publish(table(MAP, 5)),
            Err(RouterError::StaleEpoch {
                current: Epoch(5),
                offered: Epoch(5)
            })
        );
        assert!(r.publish(table(MAP, 4)).is_err());
        assert_eq!(r.publish(table(MAP, 6)), Ok(()));
        assert_eq!(r.load().epoch(), Epoch(6));
    }

    #[test]
    fn replaced_table_counts_its_readers() {
        // The rebalancer's barrier relies on this: a guard taken before a
        // publish shows in the replaced table's strong count until dropped.
        let r = Router::new(table(MAP, 1));
        let reader = r.load();
        let old = r.publish_swap(table(MAP, 2)).expect("newer");
        assert_eq!(old.epoch(), Epoch(1));
        assert_eq!(Arc::strong_count(&old), 2);
        drop(reader);
        assert_eq!(Arc::strong_count(&old), 1);
        let other = std::thread::spawn({
            let r = Arc::new(r);
            move || {
                let g = r.load();
                let old = r.publish_swap(table(MAP, 3)).expect("newer");
                let held = Arc::strong_count(&old);
                drop(g);
                (held, Arc::strong_count(&old))
            }
        });
        assert_eq!(other.join().unwrap(), (2, 1));
    }

    #[test]
    fn publish_refuses_slot_count_change() {
        let r = Router::new(table(MAP, 1));
        let other = MAP.replace("slots: 64", "slots: 128");
        assert_eq!(
            r.publish(table(&other, 2)),
            Err(RouterError::SlotCountChanged {
                current: 64,
                offered: 128
            })
        );
        assert_eq!(r.load().epoch(), Epoch(1));
    }

    #[test]
    fn rules_route_to_their_region() {
        let t = table(MAP, 1);
        assert_eq!(
            t.placements(),
            &[Placement::All, Placement::Region("eu".into())]
        );
        for key in ["{eu:1}.x", "eu/1", "eu/{us:1}", "{eu:}"] {
            assert_eq!(t.placement_of(key.as_bytes()), 1, "{key}");
            assert_eq!(t.shard_for_key(key.as_bytes()), ShardId(1), "{key}");
        }
        // `eu:` without a tag is not a hash-tag match.
        assert_eq!(t.placement_of(b"eu:1"), 0);
        assert_eq!(t.placement_of(b"x{eu:1"), 0);
    }

    #[test]
    fn hot_path_agrees_with_slot_and_owner() {
        let t = table(MAP, 1);
        for i in 0..500 {
            let key = format!("k{i}");
            let slot = t.slot_of(key.as_bytes());
            let p = t.placement_of(key.as_bytes());
            assert_eq!(t.owner(p, slot), Some(t.shard_for_key(key.as_bytes())));
        }
        assert_eq!(t.owner(0, Slot(64)), None);
        assert_eq!(t.owner(2, Slot(0)), None);
        assert_eq!(t.entries().count(), 128);
    }

    #[test]
    fn diff_lists_only_changed_slots() {
        let t1 = table(MAP, 1);
        let more = MAP.replace(
            "placement:",
            "  - name: c\n    region: us\n    primary: 127.0.0.1:7003\nplacement:",
        );
        let t2 = table(&more, 2);
        let moves = t1.diff(&t2).expect("same slots");
        assert!(!moves.is_empty());
        assert!(moves.iter().all(|m| m.to == ShardId(2)));
        assert!(t1.same_rules(&t2));
        assert!(t1.diff(&t1).expect("same").is_empty());
    }

    #[test]
    fn hand_built_empty_map_does_not_panic() {
        let mut map = ShardMap::from_yaml(MAP).expect("valid");
        map.shards.clear();
        map.slots = 0;
        let t = RoutingTable::compile(Arc::new(map), Epoch(1));
        assert_eq!(t.shard_for_key(b"x"), ShardId(0));
        assert_eq!(t.shard_count(), 0);
    }
}

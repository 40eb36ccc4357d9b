//! Key -> hash tag -> slot -> placement -> owner shard. Pure, no I/O.
//!
//! * [`placement`]: the hash-tag rule, the key hash (XXH3-64, seed 0) and
//!   the owner of a slot among candidate shards (weighted rendezvous hashing).
//! * [`table`]: [`RoutingTable`], the compiled dense `slot -> shard` arrays,
//!   one per placement target.
//!
//! A table is published together with the backends it indexes, as one
//! [`crate::snapshot::Snapshot`]; [`RoutingTable::check_successor`] is the
//! epoch and slot-count rule of that publish.

pub mod placement;
pub mod table;

pub use placement::{explicit_hash_tag, hash_tag, key_hash};
pub use table::{ClassMove, Incomparable, Overlay, Placement, Route, RoutingTable};

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

impl RoutingTable {
    /// Whether `next` may replace this table: a greater epoch (a late or
    /// duplicated publish would roll routing back) and the same slot count
    /// (changing it would move almost every key at once). Checked by
    /// [`crate::snapshot::Published::publish`] under its writer lock.
    pub fn check_successor(&self, next: &RoutingTable) -> Result<(), RouterError> {
        if next.epoch() <= self.epoch() {
            return Err(RouterError::StaleEpoch {
                current: self.epoch(),
                offered: next.epoch(),
            });
        }
        if next.slots() != self.slots() {
            return Err(RouterError::SlotCountChanged {
                current: self.slots(),
                offered: next.slots(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shardmap::ShardMap;
    use std::sync::Arc;

    const MAP: &str = "slots: 64\nregions:\n  - name: us\n  - name: eu\nshards:\n  - name: a\n    region: us\n    primary: 127.0.0.1:7001\n  - name: b\n    region: eu\n    primary: 127.0.0.1:7002\nplacement:\n  - hash_tag_prefix: \"eu:\"\n    region: eu\n  - key_prefix: \"eu/\"\n    region: eu\n";

    fn table(yaml: &str, epoch: u64) -> RoutingTable {
        let map = ShardMap::from_yaml(yaml).expect("valid map");
        RoutingTable::compile(Arc::new(map), Epoch(epoch))
    }

    #[test]
    fn a_successor_has_a_newer_epoch_and_the_same_slots() {
        let t = table(MAP, 5);
        assert_eq!(
            t.check_successor(&table(MAP, 5)),
            Err(RouterError::StaleEpoch {
                current: Epoch(5),
                offered: Epoch(5)
            })
        );
        assert!(t.check_successor(&table(MAP, 4)).is_err());
        assert_eq!(t.check_successor(&table(MAP, 6)), Ok(()));
        let other = MAP.replace("slots: 64", "slots: 128");
        assert_eq!(
            t.check_successor(&table(&other, 6)),
            Err(RouterError::SlotCountChanged {
                current: 64,
                offered: 128
            })
        );
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
        let moves = t1.moves_to(&t2).expect("same slots");
        assert!(!moves.is_empty());
        assert!(moves.iter().all(|m| m.to == ShardId(2)));
        assert!(t1.same_patterns(&t2));
        assert!(t1.moves_to(&t1).expect("same").is_empty());
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

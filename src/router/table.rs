//! The compiled routing table: dense `slot -> shard` arrays, one per
//! placement target, so the hot path is one hash, the rule checks and one
//! array index.

use std::sync::Arc;

use super::placement::{self, explicit_hash_tag};
use super::{Epoch, RouterError, ShardId, Slot};
use crate::shardmap::{DefaultPlacement, Matcher, Shard, ShardMap};

/// A set of shards keys may live on: the target of the default placement or
/// of a placement rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Every shard of the map.
    All,
    /// The shards of one region.
    Region(String),
}

/// A placement rule compiled against the table's placement list.
#[derive(Debug, Clone)]
struct CompiledRule {
    matcher: Matcher,
    placement: usize,
}

/// One slot whose owner differs between two tables (see [`RoutingTable::diff`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMove {
    /// The placement target the slot belongs to.
    pub placement: Placement,
    /// The slot.
    pub slot: Slot,
    /// Owner in the old table (index into the old map's shards).
    pub from: ShardId,
    /// Owner in the new table (index into the new map's shards).
    pub to: ShardId,
}

/// An immutable snapshot of routing, compiled from one [`ShardMap`].
///
/// Placement 0 is always the default placement; the others are the distinct
/// regions named by placement rules, in order of first mention.
#[derive(Debug)]
pub struct RoutingTable {
    map: Arc<ShardMap>,
    epoch: Epoch,
    slots: u32,
    placements: Vec<Placement>,
    rules: Vec<CompiledRule>,
    /// `placements.len() * slots` owners, placement-major.
    owners: Vec<ShardId>,
}

impl RoutingTable {
    /// Compiles `map` into dense tables. A pure function of the map: every
    /// proxy compiles the same owners.
    ///
    /// `map` is expected to be validated ([`ShardMap::from_yaml`]). For a
    /// hand-built map this still never panics: 0 slots count as 1, a target
    /// region without shards falls back to all shards, and a map without
    /// shards routes everything to `ShardId(0)` (which does not exist).
    pub fn compile(map: Arc<ShardMap>, epoch: Epoch) -> RoutingTable {
        let slots = map.slots.max(1);
        let mut placements = vec![match &map.default_placement {
            DefaultPlacement::AllShards => Placement::All,
            DefaultPlacement::Region(r) => Placement::Region(r.clone()),
        }];
        let mut rules = Vec::with_capacity(map.placement.len());
        for rule in &map.placement {
            let target = Placement::Region(rule.region.clone());
            let index = match placements.iter().position(|p| *p == target) {
                Some(i) => i,
                None => {
                    placements.push(target);
                    placements.len() - 1
                }
            };
            rules.push(CompiledRule {
                matcher: rule.matcher.clone(),
                placement: index,
            });
        }
        let mut owners = Vec::with_capacity(placements.len() * slots as usize);
        for p in &placements {
            owners.extend(owners_for(&map.shards, p, slots));
        }
        RoutingTable {
            map,
            epoch,
            slots,
            placements,
            rules,
            owners,
        }
    }

    /// The epoch this table was published under.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The map the table was compiled from.
    pub fn map(&self) -> &Arc<ShardMap> {
        &self.map
    }

    /// Number of slots (at least 1).
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// The slot of `key`: XXH3-64 of its hash tag, modulo the slot count.
    pub fn slot_of(&self, key: &[u8]) -> Slot {
        Slot((placement::key_hash(key) % u64::from(self.slots)) as u32)
    }

    /// The placement index of `key`: the first matching rule's, else 0
    /// (the default placement).
    pub fn placement_of(&self, key: &[u8]) -> usize {
        self.placement_with_tag(key, explicit_hash_tag(key))
    }

    fn placement_with_tag(&self, key: &[u8], tag: Option<&[u8]>) -> usize {
        for rule in &self.rules {
            let hit = match &rule.matcher {
                Matcher::HashTagPrefix(p) => tag.is_some_and(|t| t.starts_with(p)),
                Matcher::KeyPrefix(p) => key.starts_with(p),
            };
            if hit {
                return rule.placement;
            }
        }
        0
    }

    /// The shard that owns `key`: the hot path (one hash, the rule checks,
    /// one array index).
    pub fn shard_for_key(&self, key: &[u8]) -> ShardId {
        let tag = explicit_hash_tag(key);
        let hash = twox_hash::XxHash3_64::oneshot(tag.unwrap_or(key));
        let slot = (hash % u64::from(self.slots)) as usize;
        let p = self.placement_with_tag(key, tag);
        self.owners
            .get(p * self.slots as usize + slot)
            .copied()
            .unwrap_or(ShardId(0))
    }

    /// Number of shards in the map.
    pub fn shard_count(&self) -> usize {
        self.map.shards.len()
    }

    /// The shard behind an id.
    pub fn shard(&self, id: ShardId) -> Option<&Shard> {
        self.map.shards.get(id.0 as usize)
    }

    /// The placement targets; index 0 is the default placement.
    pub fn placements(&self) -> &[Placement] {
        &self.placements
    }

    /// The owner of `slot` in placement `placement`, if both exist.
    pub fn owner(&self, placement: usize, slot: Slot) -> Option<ShardId> {
        if placement >= self.placements.len() || slot.0 >= self.slots {
            return None;
        }
        self.owners
            .get(placement * self.slots as usize + slot.0 as usize)
            .copied()
    }

    /// All owners of one placement, indexed by slot.
    pub fn owners(&self, placement: usize) -> &[ShardId] {
        let n = self.slots as usize;
        self.owners
            .get(placement * n..(placement + 1) * n)
            .unwrap_or(&[])
    }

    /// Every `(placement, slot, owner)` of the table.
    pub fn entries(&self) -> impl Iterator<Item = (usize, Slot, ShardId)> + '_ {
        (0..self.placements.len()).flat_map(move |p| {
            self.owners(p)
                .iter()
                .enumerate()
                .map(move |(s, &id)| (p, Slot(s as u32), id))
        })
    }

    /// The slots whose owner changes from `self` to `next`, for the
    /// rebalancer. Owners are compared by shard *name*, so reordering
    /// shards is not a move. Placements are matched by target; a target only
    /// in `next` is compared with the owners that target would have had
    /// under `self`'s shards (skipped if it had none there). A change of the
    /// placement *rules* also moves keys between targets; that is a key-level
    /// move this slot diff does not express (see [`RoutingTable::same_rules`]).
    pub fn diff(&self, next: &RoutingTable) -> Result<Vec<SlotMove>, RouterError> {
        if self.slots != next.slots {
            return Err(RouterError::SlotCountChanged {
                current: self.slots,
                offered: next.slots,
            });
        }
        let mut moves = Vec::new();
        for (np, target) in next.placements.iter().enumerate() {
            let computed;
            let old: &[ShardId] = match self.placements.iter().position(|p| p == target) {
                Some(op) => self.owners(op),
                None => {
                    computed = owners_for_strict(&self.map.shards, target, self.slots);
                    &computed
                }
            };
            if old.is_empty() {
                continue;
            }
            for (s, (&from, &to)) in old.iter().zip(next.owners(np)).enumerate() {
                let from_name = self.shard(from).map(|x| x.name.as_str());
                let to_name = next.shard(to).map(|x| x.name.as_str());
                if from_name != to_name {
                    moves.push(SlotMove {
                        placement: target.clone(),
                        slot: Slot(s as u32),
                        from,
                        to,
                    });
                }
            }
        }
        Ok(moves)
    }

    /// Whether both tables send every key to the same placement target
    /// (same rules in the same order, same default).
    pub fn same_rules(&self, other: &RoutingTable) -> bool {
        self.placements.first() == other.placements.first()
            && self.rules.len() == other.rules.len()
            && self.rules.iter().zip(&other.rules).all(|(a, b)| {
                let same_matcher = match (&a.matcher, &b.matcher) {
                    (Matcher::HashTagPrefix(x), Matcher::HashTagPrefix(y))
                    | (Matcher::KeyPrefix(x), Matcher::KeyPrefix(y)) => x == y,
                    _ => false,
                };
                same_matcher
                    && self.placements.get(a.placement) == other.placements.get(b.placement)
            })
    }
}

/// Candidate shard ids of a target.
fn candidates(shards: &[Shard], target: &Placement) -> Vec<ShardId> {
    shards
        .iter()
        .enumerate()
        .filter(|(_, s)| match target {
            Placement::All => true,
            Placement::Region(r) => s.region == *r,
        })
        .map(|(i, _)| ShardId(i as u32))
        .collect()
}

/// Owners of every slot of `target`, without fallback (empty if the target has no shards).
fn owners_for_strict(shards: &[Shard], target: &Placement, slots: u32) -> Vec<ShardId> {
    placement::owners(shards, &candidates(shards, target), slots)
}

/// Owners of every slot of `target`; falls back to all shards, then to `ShardId(0)`.
fn owners_for(shards: &[Shard], target: &Placement, slots: u32) -> Vec<ShardId> {
    let mut owners = owners_for_strict(shards, target, slots);
    if owners.is_empty() {
        owners = owners_for_strict(shards, &Placement::All, slots);
    }
    if owners.is_empty() {
        owners = vec![ShardId(0); slots as usize];
    }
    owners
}

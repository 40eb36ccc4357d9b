//! The compiled routing table: dense `slot -> shard` arrays, one per
//! placement target, so the hot path is one hash, the rule checks and one
//! array index.

use std::sync::Arc;

use super::placement::{self, explicit_hash_tag};
use super::{Epoch, ShardId, Slot};
use crate::shardmap::{DefaultPlacement, Matcher, Shard, ShardMap, ShardPhase};

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

/// Where one key goes: its owner and, while its slot is being migrated,
/// the shard it is moving from (the key must be moved before it is used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The shard that serves the key now.
    pub shard: ShardId,
    /// `Some(from)` while the key's slot is `Migrating{from, to: shard}`.
    pub moving_from: Option<ShardId>,
}

/// The state of one (class, slot) during a rebalance, for
/// [`RoutingTable::with_overlay`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    /// Not moved yet: still served by `from` alone.
    Pending(ShardId),
    /// Keys are moving from `from` to the compiled owner.
    Migrating(ShardId),
}

/// One (class, slot) whose owner changes between two tables (see
/// [`RoutingTable::moves_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassMove {
    /// Key class: 0 for keys matching no rule, `i + 1` for rule `i`.
    pub class: u32,
    pub slot: Slot,
    /// Owner in the old table.
    pub from: ShardId,
    /// Owner in the new table.
    pub to: ShardId,
}

/// Why keys cannot move from one table to another: they classify keys
/// differently (see [`RoutingTable::moves_to`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incomparable {
    #[error("slots: changed from {from} to {to}; slots never change for a keyspace")]
    Slots { from: u32, to: u32 },
    #[error(
        "placement: the rules' key patterns (hash_tag_prefix / key_prefix, in order) must stay the same in a rebalance; only their regions may change"
    )]
    Patterns,
}

/// Overlay encoding: no entry.
const OV_NONE: u32 = u32::MAX;
/// Overlay encoding: pending, the low bits are the shard served.
const OV_PENDING: u32 = 1 << 31;
/// Overlay encoding: migrating, the low bits are the source shard.
const OV_MIGRATING: u32 = 1 << 30;
/// Overlay encoding: the shard id bits.
const OV_ID: u32 = u16::MAX as u32;

/// An immutable snapshot of routing, compiled from one [`ShardMap`].
///
/// Placement 0 is always the default placement; the others are the distinct
/// regions named by placement rules, in order of first mention. A key's
/// *class* is the rule it matches (`i + 1` for rule `i`, 0 for none): two
/// maps with the same rule patterns classify every key alike, which is what
/// lets a rebalance move a rule to another region.
#[derive(Debug)]
pub struct RoutingTable {
    map: Arc<ShardMap>,
    epoch: Epoch,
    slots: u32,
    placements: Vec<Placement>,
    rules: Vec<CompiledRule>,
    /// Placement index of each class.
    class_placement: Vec<usize>,
    /// `placements.len() * slots` owners, placement-major.
    owners: Vec<ShardId>,
    /// During a rebalance: `classes * slots` entries (class-major) that
    /// override the compiled owners (see [`Overlay`]).
    overlay: Option<Box<[u32]>>,
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
        let class_placement = std::iter::once(0)
            .chain(rules.iter().map(|r| r.placement))
            .collect();
        RoutingTable {
            map,
            epoch,
            slots,
            placements,
            rules,
            class_placement,
            owners,
            overlay: None,
        }
    }

    /// The same table with a rebalance's slot states laid over it: each
    /// `(class, slot, state)` overrides the compiled owner of that class's
    /// slot. Entries out of range are ignored.
    pub fn with_overlay(
        mut self,
        entries: impl IntoIterator<Item = (u32, Slot, Overlay)>,
    ) -> RoutingTable {
        let n = self.slots as usize;
        let mut ov = vec![OV_NONE; self.classes() * n].into_boxed_slice();
        let mut any = false;
        for (class, slot, state) in entries {
            let Some(e) = ov.get_mut(class as usize * n + slot.0 as usize) else {
                continue;
            };
            if slot.0 >= self.slots {
                continue;
            }
            *e = match state {
                Overlay::Pending(id) => OV_PENDING | u32::from(id.0),
                Overlay::Migrating(id) => OV_MIGRATING | u32::from(id.0),
            };
            any = true;
        }
        self.overlay = any.then_some(ov);
        self
    }

    /// A copy of this table's owners at `epoch`, with `entries` laid over
    /// them as by [`with_overlay`](Self::with_overlay) (an overlay this
    /// table has is not copied). What a rebalance publishes at every step of
    /// every window: compiling costs `slots x candidate shards` rendezvous
    /// scores (about 0.5 s at 1,000 shards and 16384 slots), a copy only
    /// `slots` per class.
    pub fn overlaid(
        &self,
        epoch: Epoch,
        entries: impl IntoIterator<Item = (u32, Slot, Overlay)>,
    ) -> RoutingTable {
        RoutingTable {
            map: self.map.clone(),
            epoch,
            slots: self.slots,
            placements: self.placements.clone(),
            rules: self.rules.clone(),
            class_placement: self.class_placement.clone(),
            owners: self.owners.clone(),
            overlay: None,
        }
        .with_overlay(entries)
    }

    /// Whether a rebalance's slot states are laid over this table.
    pub fn has_overlay(&self) -> bool {
        self.overlay.is_some()
    }

    /// Whether any slot of this table is migrating (keys may be on their
    /// old shard, their new one, or on their way between them).
    pub fn has_migrating(&self) -> bool {
        self.overlay.as_ref().is_some_and(|ov| {
            ov.iter()
                .any(|&e| e != OV_NONE && e & OV_MIGRATING != 0 && e & OV_PENDING == 0)
        })
    }

    /// Number of key classes: one per placement rule, plus the default.
    pub fn classes(&self) -> usize {
        self.class_placement.len()
    }

    /// The class of `key` (0: no rule matches; `i + 1`: rule `i`).
    pub fn class_of(&self, key: &[u8]) -> u32 {
        self.class_with_tag(key, explicit_hash_tag(key)) as u32
    }

    fn class_with_tag(&self, key: &[u8], tag: Option<&[u8]>) -> usize {
        for (i, rule) in self.rules.iter().enumerate() {
            let hit = match &rule.matcher {
                Matcher::HashTagPrefix(p) => tag.is_some_and(|t| t.starts_with(p)),
                Matcher::KeyPrefix(p) => key.starts_with(p),
            };
            if hit {
                return i + 1;
            }
        }
        0
    }

    /// Where `key` goes, including its migration state: the hot path (one
    /// hash, the rule checks, one or two array indexes).
    pub fn route(&self, key: &[u8]) -> Route {
        let tag = explicit_hash_tag(key);
        let hash = twox_hash::XxHash3_64::oneshot(tag.unwrap_or(key));
        let slot = (hash % u64::from(self.slots)) as usize;
        let class = self.class_with_tag(key, tag);
        self.route_class_slot(class, slot)
    }

    fn route_class_slot(&self, class: usize, slot: usize) -> Route {
        let p = self.class_placement.get(class).copied().unwrap_or(0);
        let owner = self
            .owners
            .get(p * self.slots as usize + slot)
            .copied()
            .unwrap_or(ShardId(0));
        let Some(ov) = &self.overlay else {
            return Route {
                shard: owner,
                moving_from: None,
            };
        };
        match ov.get(class * self.slots as usize + slot).copied() {
            Some(e) if e != OV_NONE && e & OV_PENDING != 0 => Route {
                shard: ShardId((e & OV_ID) as u16),
                moving_from: None,
            },
            Some(e) if e != OV_NONE && e & OV_MIGRATING != 0 => Route {
                shard: owner,
                moving_from: Some(ShardId((e & OV_ID) as u16)),
            },
            _ => Route {
                shard: owner,
                moving_from: None,
            },
        }
    }

    /// The route of every key of `class` in `slot` (see [`RoutingTable::route`]).
    pub fn route_of(&self, class: u32, slot: Slot) -> Route {
        self.route_class_slot(class as usize, slot.0 as usize)
    }

    /// The (class, slot) pairs whose owner differs between `self` and
    /// `next`, compared by shard name. Both tables must classify keys alike:
    /// the same slot count and the same rule patterns in the same order
    /// (rules may point at other regions, the default placement may
    /// change). Overlays are ignored: `self`'s compiled owners count.
    pub fn moves_to(&self, next: &RoutingTable) -> Result<Vec<ClassMove>, Incomparable> {
        if self.slots != next.slots {
            return Err(Incomparable::Slots {
                from: self.slots,
                to: next.slots,
            });
        }
        if !self.same_patterns(next) {
            return Err(Incomparable::Patterns);
        }
        let n = self.slots as usize;
        let mut moves = Vec::new();
        for class in 0..self.classes() {
            let old = self.owners(self.class_placement[class]);
            let new = next.owners(next.class_placement[class]);
            for s in 0..n {
                let (from, to) = (old[s], new[s]);
                let from_name = self.shard(from).map(|x| x.name.as_str());
                let to_name = next.shard(to).map(|x| x.name.as_str());
                if from_name != to_name {
                    moves.push(ClassMove {
                        class: class as u32,
                        slot: Slot(s as u32),
                        from,
                        to,
                    });
                }
            }
        }
        Ok(moves)
    }

    /// Whether both tables have the same rule patterns in the same order.
    pub fn same_patterns(&self, other: &RoutingTable) -> bool {
        self.rules.len() == other.rules.len()
            && self
                .rules
                .iter()
                .zip(&other.rules)
                .all(|(a, b)| match (&a.matcher, &b.matcher) {
                    (Matcher::HashTagPrefix(x), Matcher::HashTagPrefix(y))
                    | (Matcher::KeyPrefix(x), Matcher::KeyPrefix(y)) => x == y,
                    _ => false,
                })
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
        self.class_placement[self.class_with_tag(key, tag)]
    }

    /// The shard that serves `key` now (see [`RoutingTable::route`]).
    pub fn shard_for_key(&self, key: &[u8]) -> ShardId {
        self.route(key).shard
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
}

/// Candidate shard ids of a target.
fn candidates(shards: &[Shard], target: &Placement) -> Vec<ShardId> {
    shards
        .iter()
        .enumerate()
        .filter(|(_, s)| s.phase == ShardPhase::Active)
        .filter(|(_, s)| match target {
            Placement::All => true,
            Placement::Region(r) => s.region == *r,
        })
        .map(|(i, _)| ShardId(i as u16))
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

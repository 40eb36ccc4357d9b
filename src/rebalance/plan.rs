//! What a new map would move, computed without I/O: the map the proxy runs
//! during the move (old shards first, in their order, so shard ids stay
//! valid; new shards after them), the (class, slot) moves and their
//! summary per (from, to) pair, and every reason to refuse the map.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::router::{ClassMove, Epoch, RoutingTable};
use crate::shardmap::{ShardKind, ShardMap, ShardPhase};

/// A rebalance, decided.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The map served while keys move: the new map's settings and shards,
    /// plus the shards it drops (phase `Draining`) at their old positions.
    pub merged: Arc<ShardMap>,
    /// `merged` compiled, without overlay: every table the rebalance
    /// publishes is this one with the moves' states laid over it
    /// ([`RoutingTable::overlaid`]), so the map is compiled once per plan.
    pub table: Arc<RoutingTable>,
    /// Every (class, slot) whose owner changes; ids index `merged.shards`.
    pub moves: Vec<ClassMove>,
    /// Slot moves per (from, to) shard name, in name order.
    pub pairs: Vec<(String, String, usize)>,
    /// Shards the new map adds.
    pub added: Vec<String>,
    /// Shards the new map drops (drained, then removed).
    pub drained: Vec<String>,
    /// Slot count of the keyspace.
    pub slots: u32,
    /// `(class, slot)` pairs in all (classes × slots).
    pub units: usize,
}

/// The map to serve while moving from `base` to `next`: `next`'s settings,
/// `base`'s shards in `base`'s order (as `next` defines them when it keeps
/// them, `Draining` when it drops them, `Removed` placeholders stay), then
/// `next`'s new shards.
pub fn merge(base: &ShardMap, next: &ShardMap) -> ShardMap {
    let mut merged = next.clone();
    let mut shards = Vec::with_capacity(base.shards.len() + next.shards.len());
    for s in &base.shards {
        match next.shards.iter().find(|n| n.name == s.name) {
            Some(n) => shards.push(n.clone()),
            None => {
                let mut d = s.clone();
                if d.phase == ShardPhase::Active {
                    d.phase = ShardPhase::Draining;
                }
                shards.push(d);
            }
        }
    }
    for n in &next.shards {
        if !base.shards.iter().any(|s| s.name == n.name) {
            shards.push(n.clone());
        }
    }
    for r in &base.regions {
        if !merged.regions.iter().any(|m| m.name == r.name) {
            merged.regions.push(r.clone());
        }
    }
    merged.shards = shards;
    merged
}

/// The map once every key has moved: draining shards become placeholders.
pub fn finished(merged: &ShardMap) -> ShardMap {
    let mut map = merged.clone();
    for s in &mut map.shards {
        if s.phase == ShardPhase::Draining {
            s.phase = ShardPhase::Removed;
        }
    }
    map
}

/// Plans the move from the running table `current` to `next` (validated).
/// Refuses, naming why: a rebalance already running, a changed slot count,
/// changed rule patterns, and a shard whose kind changes. Slots move
/// between shards of any kinds (Redis and PostgreSQL, see
/// `backend::copy`); whether the keys' types fit a postgres target is
/// checked on a sample before the move starts (`estimate`) and for each
/// key as it moves.
pub fn plan(current: &RoutingTable, next: &ShardMap) -> Result<Plan, PlanError> {
    if current.has_overlay() {
        return Err(PlanError::Running);
    }
    let base = current.map();
    for (i, n) in next.shards.iter().enumerate() {
        if let Some(b) = base.shards.iter().find(|b| b.name == n.name)
            && b.phase != ShardPhase::Removed
            && b.kind != n.kind
        {
            return Err(PlanError::KindChanged {
                index: i,
                shard: n.name.clone(),
                from: kind_name(b.kind),
                to: kind_name(n.kind),
            });
        }
    }
    let merged = Arc::new(merge(base, next));
    if merged.shards.len() > crate::shardmap::validate::MAX_SHARDS {
        return Err(PlanError::TooManyShards {
            count: merged.shards.len(),
            max: crate::shardmap::validate::MAX_SHARDS,
        });
    }
    let table = RoutingTable::compile(merged.clone(), Epoch(current.epoch().0 + 1));
    let moves = current.moves_to(&table)?;
    let name = |id: crate::router::ShardId| merged.shards[id.0 as usize].name.clone();
    let mut pairs: BTreeMap<(String, String), usize> = BTreeMap::new();
    for m in &moves {
        *pairs.entry((name(m.from), name(m.to))).or_default() += 1;
    }
    let active = |m: &ShardMap, n: &str| {
        m.shards
            .iter()
            .any(|s| s.name == n && s.phase == ShardPhase::Active)
    };
    Ok(Plan {
        pairs: pairs.into_iter().map(|((f, t), n)| (f, t, n)).collect(),
        added: next
            .shards
            .iter()
            .filter(|s| !active(base, &s.name))
            .map(|s| s.name.clone())
            .collect(),
        drained: base
            .shards
            .iter()
            .filter(|s| s.phase == ShardPhase::Active && !active(next, &s.name))
            .map(|s| s.name.clone())
            .collect(),
        slots: current.slots(),
        units: current.slots() as usize * current.classes(),
        merged,
        table: Arc::new(table),
        moves,
    })
}

/// Why a new map cannot be rebalanced to (the admin's `REBALANCE` and
/// `PLAN` answer with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("a rebalance is running; wait for it to finish (see STATUS)")]
    Running,
    #[error(
        "shards[{index}].kind: shard `{shard}` is {from} in the running map and {to} in the new one; a shard's kind cannot change"
    )]
    KindChanged {
        index: usize,
        shard: String,
        from: &'static str,
        to: &'static str,
    },
    #[error(
        "shards: the running map and this one together hold {count} shards (removed ones included); at most {max}"
    )]
    TooManyShards { count: usize, max: usize },
    #[error(transparent)]
    Incomparable(#[from] crate::router::Incomparable),
}

fn kind_name(k: ShardKind) -> &'static str {
    match k {
        ShardKind::Redis => "redis",
        ShardKind::Postgres => "postgres",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{Overlay, Route, ShardId, Slot};

    const MAP: &str = "slots: 256\nregions:\n  - name: us\n  - name: eu\nshards:\n  - name: a\n    region: us\n    primary: 127.0.0.1:7001\n  - name: b\n    region: us\n    primary: 127.0.0.1:7002\n  - name: e\n    region: eu\n    primary: 127.0.0.1:7003\nplacement:\n  - hash_tag_prefix: \"eu:\"\n    region: eu\n";

    fn table(yaml: &str) -> RoutingTable {
        RoutingTable::compile(Arc::new(ShardMap::from_yaml(yaml).unwrap()), Epoch(1))
    }

    fn with_shard(yaml: &str, name: &str, region: &str, port: u16) -> String {
        yaml.replace(
            "placement:",
            &format!(
                "  - name: {name}\n    region: {region}\n    primary: 127.0.0.1:{port}\nplacement:"
            ),
        )
    }

    #[test]
    fn adding_a_shard_moves_slots_only_onto_it() {
        let next = ShardMap::from_yaml(&with_shard(MAP, "c", "us", 7004)).unwrap();
        let p = plan(&table(MAP), &next).unwrap();
        assert_eq!(p.added, vec!["c".to_owned()]);
        assert!(p.drained.is_empty());
        assert!(!p.moves.is_empty());
        assert!(p.moves.iter().all(|m| m.to == ShardId(3)));
        assert!(p.pairs.iter().all(|(_, to, _)| to == "c"));
        // The new shard comes after the old ones: old ids stay valid.
        assert_eq!(p.merged.shards[3].name, "c");
    }

    #[test]
    fn published_tables_are_the_plans_table_with_the_states_laid_over() {
        let next = ShardMap::from_yaml(&with_shard(MAP, "c", "us", 7004)).unwrap();
        let p = plan(&table(MAP), &next).unwrap();
        // Half the moves pending, the other half migrating.
        let entries: Vec<_> = p
            .moves
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let st = if i % 2 == 0 {
                    Overlay::Pending(m.from)
                } else {
                    Overlay::Migrating(m.from)
                };
                (m.class, m.slot, st)
            })
            .collect();
        let copied = p.table.overlaid(Epoch(7), entries.iter().copied());
        let compiled =
            RoutingTable::compile(p.merged.clone(), Epoch(7)).with_overlay(entries.iter().copied());
        assert_eq!(copied.epoch(), Epoch(7));
        assert!(copied.has_overlay());
        assert!(!p.table.has_overlay());
        for class in 0..copied.classes() as u32 {
            for slot in (0..p.slots).map(Slot) {
                assert_eq!(copied.route_of(class, slot), compiled.route_of(class, slot));
            }
        }
        let m = p.moves[1];
        assert_eq!(
            copied.route_of(m.class, m.slot),
            Route {
                shard: m.to,
                moving_from: Some(m.from)
            }
        );
        assert_eq!(
            copied.route_of(p.moves[0].class, p.moves[0].slot).shard,
            p.moves[0].from
        );
    }

    #[test]
    fn dropping_a_shard_drains_it_in_place() {
        let next = MAP.replace(
            "  - name: b\n    region: us\n    primary: 127.0.0.1:7002\n",
            "",
        );
        let next = ShardMap::from_yaml(&next).unwrap();
        let p = plan(&table(MAP), &next).unwrap();
        assert_eq!(p.drained, vec!["b".to_owned()]);
        assert_eq!(p.merged.shards[1].name, "b");
        assert_eq!(p.merged.shards[1].phase, ShardPhase::Draining);
        assert!(p.moves.iter().all(|m| m.from == ShardId(1)));
        assert!(
            p.moves
                .iter()
                .all(|m| m.to == ShardId(0) || m.to == ShardId(2))
        );
        assert!(p.moves.iter().all(|m| m.class == 0));
        let done = finished(&p.merged);
        assert_eq!(done.shards[1].phase, ShardPhase::Removed);
    }

    #[test]
    fn moving_a_rule_moves_only_its_class() {
        let next = MAP.replace("\"eu:\"\n    region: eu", "\"eu:\"\n    region: us");
        let p = plan(&table(MAP), &ShardMap::from_yaml(&next).unwrap()).unwrap();
        assert!(!p.moves.is_empty());
        assert!(p.moves.iter().all(|m| m.class == 1 && m.from == ShardId(2)));
    }

    #[test]
    fn refusals_name_the_reason() {
        let t = table(MAP);
        let slots = ShardMap::from_yaml(&MAP.replace("slots: 256", "slots: 512")).unwrap();
        let err = plan(&t, &slots).unwrap_err();
        assert_eq!(
            err,
            PlanError::Incomparable(crate::router::Incomparable::Slots { from: 256, to: 512 })
        );
        assert!(
            err.to_string()
                .starts_with("slots: changed from 256 to 512"),
            "{err}"
        );
        let rules = ShardMap::from_yaml(&MAP.replace("\"eu:\"", "\"europe:\"")).unwrap();
        let err = plan(&t, &rules).unwrap_err();
        assert_eq!(
            err,
            PlanError::Incomparable(crate::router::Incomparable::Patterns)
        );
        assert!(
            err.to_string()
                .starts_with("placement: the rules' key patterns"),
            "{err}"
        );
        let pg = with_shard(MAP, "p", "us", 7005).replace(
            "  - name: p\n    region: us\n    primary: 127.0.0.1:7005\n",
            "  - name: p\n    region: us\n    kind: postgres\n    primary: postgres://u@127.0.0.1:7005/db\n",
        );
        // Slots move onto (and off) postgres shards like any other.
        let p = plan(&t, &ShardMap::from_yaml(&pg).unwrap()).unwrap();
        assert_eq!(p.added, vec!["p".to_owned()]);
        assert!(p.pairs.iter().all(|(_, to, _)| to == "p"));
        // A shard's kind still cannot change.
        let kind = MAP.replace(
            "  - name: b\n    region: us\n    primary: 127.0.0.1:7002\n",
            "  - name: b\n    region: us\n    kind: postgres\n    primary: postgres://u@127.0.0.1:7002/db\n",
        );
        let err = plan(&t, &ShardMap::from_yaml(&kind).unwrap()).unwrap_err();
        assert!(matches!(err, PlanError::KindChanged { .. }), "{err}");
    }
}

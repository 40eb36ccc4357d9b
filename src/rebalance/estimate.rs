//! The dry run's estimates: keys and bytes per (from, to) pair, from each
//! source's `DBSIZE` and a sample of its keys (`SCAN` + `MEMORY USAGE`),
//! and the big keys the sample found.

use std::collections::HashMap;

use bytes::Bytes;

use super::Plan;
use super::mover::BIG_KEY_BYTES;
use crate::backend::copy::Stays;
use crate::backend::migrate::{MigrateError, scan_reply};
use crate::backend::{Db, Wire};
use crate::context::Context;
use crate::error::BackendError;
use crate::protocol::{Protocol, reply, request::encode_command};
use crate::router::{ShardId, Slot};
use crate::shardmap::ShardKind;

/// Keys sampled per source shard.
const SAMPLE: usize = 1000;

/// Estimates for a plan.
#[derive(Debug, Default)]
pub struct Estimate {
    /// Per plan pair: (keys, bytes).
    pub pairs: Vec<(u64, u64)>,
    /// Keys sampled in all.
    pub sampled: u64,
    /// Big keys seen in the samples: (shard, key, bytes).
    pub big: Vec<(String, String, u64)>,
    /// Shards that could not be asked, and why.
    pub errors: Vec<String>,
}

/// Sends `step` (its name) with `args` to shard `id`'s primary.
async fn ask(
    ctx: &Context,
    id: ShardId,
    step: &'static str,
    args: &[&[u8]],
) -> Result<Bytes, MigrateError> {
    let mut frame = bytes::BytesMut::new();
    encode_command(args, &mut frame);
    let backends = ctx.backends();
    let ep = &backends.shard(id).primary;
    match ep.send(Protocol::Resp2, 0, &frame.freeze()).await {
        Ok(Ok(a)) if !reply::is_error(&a.frame) => Ok(a.frame),
        Ok(Ok(a)) => Err(MigrateError::Refused {
            step,
            addr: ep.state.addr.clone(),
            reason: reply::error_text(&a.frame).unwrap_or_default(),
        }),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(MigrateError::Backend(BackendError::ConnectionLost {
            addr: ep.state.addr.clone(),
            reason: "connection task stopped".to_owned(),
        })),
    }
}

/// Per source shard: (keys, average bytes per key, big keys).
async fn sample_shard(
    ctx: &Context,
    id: ShardId,
) -> Result<(u64, f64, Vec<(String, u64)>), MigrateError> {
    let dbsize = ask(ctx, id, "DBSIZE", &[b"DBSIZE"]).await?;
    let keys = reply::integer(&dbsize).unwrap_or(0).max(0) as u64;
    let count = SAMPLE.to_string();
    let scan = ask(
        ctx,
        id,
        "SCAN",
        &[b"SCAN", b"0", b"COUNT", count.as_bytes()],
    )
    .await?;
    let sample: Vec<Bytes> = reply::array_elements(&scan)
        .ok()
        .flatten()
        .and_then(|e| e.get(1).cloned())
        .and_then(|k| reply::array_elements(&k).ok().flatten())
        .unwrap_or_default()
        .iter()
        .filter_map(reply::bulk)
        .collect();
    // Every MEMORY USAGE is queued at once: one round trip in all. A
    // postgres shard has no MEMORY USAGE: a key's size there is its length
    // plus its string's (`STRLEN`; a hash counts as its key only).
    let backends = ctx.backends();
    let ep = &backends.shard(id).primary;
    let postgres = ep.kind() == Some(ShardKind::Postgres);
    let waits: Vec<_> = sample
        .iter()
        .map(|k| {
            let mut frame = bytes::BytesMut::new();
            if postgres {
                encode_command(&[b"STRLEN", k], &mut frame);
            } else {
                encode_command(&[b"MEMORY", b"USAGE", k], &mut frame);
            }
            (k.clone(), ep.send(Protocol::Resp2, 0, &frame.freeze()))
        })
        .collect();
    let mut sizes = Vec::with_capacity(waits.len());
    for (k, rx) in waits {
        let n = match rx.await {
            Ok(Ok(a)) => reply::integer(&a.frame).unwrap_or(0).max(0) as u64,
            _ => 0,
        };
        let n = if postgres { n + k.len() as u64 } else { n };
        sizes.push((k, n));
    }
    let total: u64 = sizes.iter().map(|(_, n)| n).sum();
    let avg = if sizes.is_empty() {
        0.0
    } else {
        total as f64 / sizes.len() as f64
    };
    let big = sizes
        .into_iter()
        .filter(|(_, n)| *n >= BIG_KEY_BYTES)
        .map(|(k, n)| (String::from_utf8_lossy(&k).into_owned(), n))
        .collect();
    Ok((keys, avg, big))
}

/// Units each source of `plan` owned before the move (what its keys spread
/// over), with its id. Counted from the plan, not from the table in force:
/// mid-move (a restart, a takeover) that table's overlay gives a source
/// only its unmoved units, and dividing by that inflated the estimate by
/// orders of magnitude (44,931,558 keys for a move of about 11,000).
fn owned_before(plan: &Plan) -> HashMap<String, (ShardId, u64)> {
    let mut by_id: HashMap<ShardId, u64> = plan.moves.iter().map(|m| (m.from, 0)).collect();
    let moved_from: HashMap<(u32, u32), ShardId> = plan
        .moves
        .iter()
        .map(|m| ((m.class, m.slot.0), m.from))
        .collect();
    let table = &plan.table;
    for class in 0..table.classes() as u32 {
        for slot in 0..table.slots() {
            let id = moved_from
                .get(&(class, slot))
                .copied()
                .unwrap_or_else(|| table.route_of(class, Slot(slot)).shard);
            if let Some(n) = by_id.get_mut(&id) {
                *n += 1;
            }
        }
    }
    by_id
        .into_iter()
        .map(|(id, n)| (plan.merged.shards[id.0 as usize].name.clone(), (id, n)))
        .collect()
}

/// Estimates keys and bytes per pair of `plan`.
pub async fn estimate(ctx: &Context, plan: &Plan) -> Estimate {
    let owned = owned_before(plan);
    let mut est = Estimate::default();
    let mut per_source: HashMap<String, (u64, f64)> = HashMap::new();
    let mut sources: Vec<_> = owned.iter().collect();
    sources.sort();
    for (name, (id, _)) in sources {
        match sample_shard(ctx, *id).await {
            Ok((keys, avg, big)) => {
                per_source.insert(name.clone(), (keys, avg));
                est.sampled += SAMPLE.min(keys as usize) as u64;
                est.big
                    .extend(big.into_iter().map(|(k, n)| (name.clone(), k, n)));
            }
            Err(e) => est.errors.push(format!("shard {name}: {e}")),
        }
    }
    for (from, _, n) in &plan.pairs {
        let (keys, avg) = per_source.get(from).copied().unwrap_or((0, 0.0));
        let own = owned.get(from).map_or(1, |o| o.1.max(1));
        let k = (keys as f64 * *n as f64 / own as f64).round() as u64;
        est.pairs.push((k, (k as f64 * avg) as u64));
    }
    est
}

/// Keys of a sample that cannot move to their postgres target (see
/// [`Stays`]): per Redis source that moves slots onto a postgres shard, a
/// `SCAN` of up to [`SAMPLE`] keys in each of its databases, and `TYPE`
/// of those in slots moving to a postgres shard. Finds such keys before
/// anything moves (the mover still checks every key it moves).
pub async fn unmovable(ctx: &Context, plan: &Plan) -> Vec<(String, Stays)> {
    let merged = &plan.merged;
    let to_pg: HashMap<(u32, u32), ShardId> = plan
        .moves
        .iter()
        .filter(|m| merged.shards[m.to.0 as usize].kind == ShardKind::Postgres)
        .filter(|m| merged.shards[m.from.0 as usize].kind == ShardKind::Redis)
        .map(|m| ((m.class, m.slot.0), m.from))
        .collect();
    let mut sources: Vec<ShardId> = to_pg.values().copied().collect();
    sources.sort();
    sources.dedup();
    let mut found = Vec::new();
    let backends = ctx.backends();
    for id in sources {
        let ep = backends.shard(id).primary.clone();
        let name = &merged.shards[id.0 as usize].name;
        let dbs = super::mover::databases_with_keys(&ep)
            .await
            .unwrap_or_else(|_| vec![Db(0)]);
        for db in dbs {
            let wire = Wire {
                proto: Protocol::Resp2,
                db,
            };
            let count = SAMPLE.to_string();
            let mut frame = bytes::BytesMut::new();
            encode_command(&[b"SCAN", b"0", b"COUNT", count.as_bytes()], &mut frame);
            let Ok(Ok(a)) = ep.send(wire, 0, &frame.freeze()).await else {
                continue;
            };
            let Ok((_, keys)) = scan_reply(&a.frame) else {
                continue;
            };
            let table = &plan.table;
            let moving = keys
                .into_iter()
                .filter(|k| to_pg.get(&(table.class_of(k), table.slot_of(k).0)) == Some(&id));
            // Every TYPE is queued at once: one round trip in all.
            let waits: Vec<_> = moving
                .map(|k| {
                    let mut frame = bytes::BytesMut::new();
                    encode_command(&[b"TYPE", &k], &mut frame);
                    (k, ep.send(wire, 0, &frame.freeze()))
                })
                .collect();
            for (k, rx) in waits {
                let Ok(Ok(a)) = rx.await else { continue };
                let kind = String::from_utf8_lossy(a.frame.get(1..).unwrap_or_default())
                    .trim_end()
                    .to_owned();
                let key = String::from_utf8_lossy(&k).into_owned();
                let why = match kind.as_str() {
                    "none" => continue,
                    "string" | "hash" if db == Db(0) => continue,
                    "string" | "hash" => Stays::Database { key, db: db.0 },
                    _ => Stays::Type { key, kind },
                };
                found.push((name.clone(), why));
                break;
            }
        }
    }
    found
}

/// Human units for bytes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The dry run's report, one line per element.
pub fn report(plan: &Plan, est: &Estimate) -> Vec<String> {
    let mut lines = Vec::new();
    let moving = plan.moves.len();
    lines.push(format!(
        "plan: {moving} of {} (class, slot) pairs change shard ({:.1}%); {} slots, {} key classes",
        plan.units,
        100.0 * moving as f64 / plan.units.max(1) as f64,
        plan.slots,
        plan.units / plan.slots.max(1) as usize,
    ));
    for s in &plan.added {
        lines.push(format!("add shard {s}"));
    }
    for s in &plan.drained {
        lines.push(format!("drain and remove shard {s}"));
    }
    if plan.pairs.is_empty() {
        lines.push("nothing moves".to_owned());
    }
    let (mut tk, mut tb) = (0, 0);
    for ((from, to, n), (k, b)) in plan.pairs.iter().zip(&est.pairs) {
        tk += k;
        tb += b;
        lines.push(format!(
            "move {from} -> {to}: {n} slots, ~{k} keys, ~{}",
            human_bytes(*b)
        ));
    }
    if !plan.pairs.is_empty() {
        lines.push(format!(
            "total: {moving} slots, ~{tk} keys, ~{} (estimated from DBSIZE and a sample of {} keys)",
            human_bytes(tb),
            est.sampled
        ));
    }
    if est.big.is_empty() {
        lines.push(format!(
            "big keys: none of {} or more in the sample",
            human_bytes(BIG_KEY_BYTES)
        ));
    }
    for (shard, key, n) in &est.big {
        lines.push(format!(
            "big key on {shard}: {key} ~{} (moved alone by one MIGRATE, which blocks {shard} while it copies)",
            human_bytes(*n)
        ));
    }
    for e in &est.errors {
        lines.push(format!("warning: no estimate for {e}"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::router::{Epoch, RoutingTable};
    use crate::shardmap::ShardMap;

    #[test]
    fn sources_own_their_pre_move_share() {
        let base = "slots: 3000\nregions:\n  - name: us\nshards:\n  - name: a\n    region: us\n    primary: 127.0.0.1:1\n  - name: b\n    region: us\n    primary: 127.0.0.1:2\n  - name: c\n    region: us\n    primary: 127.0.0.1:3\n";
        let next = format!("{base}  - name: d\n    region: us\n    primary: 127.0.0.1:4\n");
        let table = RoutingTable::compile(Arc::new(ShardMap::from_yaml(base).unwrap()), Epoch(1));
        let plan =
            crate::rebalance::plan::plan(&table, &ShardMap::from_yaml(&next).unwrap()).unwrap();
        let owned = owned_before(&plan);
        assert_eq!(owned.len(), 3, "{owned:?}");
        for (name, (_, n)) in &owned {
            // About a third of 3000 each, whatever the table in force says.
            assert!((800..=1200).contains(n), "{name} owned {n}");
        }
        assert_eq!(owned.values().map(|(_, n)| n).sum::<u64>(), 3000);
    }
}

//! After a step's walks: the targets' replicas catch up with their
//! primaries (step 4 of the mover's module doc), and after the last step
//! the verification pass over every shard.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{REPLICA_WAIT, Work, databases_with_keys, plan};
use crate::backend::migrate::{MigrateError, scan_reply};
use crate::backend::{Db, Wire};
use crate::error::BackendError;
use crate::protocol::{Protocol, reply, request::encode_command};
use crate::rebalance::{Rebalancer, Verification};
use crate::router::{Epoch, RoutingTable, ShardId};
use crate::shardmap::ShardPhase;

/// Waits (bounded) until every replica of `shard` has applied what its
/// primary has now (step 4). Each replica is asked for its own offset
/// (`slave_repl_offset`), which moves as soon as it applies the stream.
pub(super) async fn wait_replicas(rb: &Rebalancer, shard: ShardId) {
    let backends = rb.ctx.backends();
    let s = backends.shard(shard);
    let replicas: Vec<_> = backends
        .endpoints()
        .iter()
        .filter(|e| e.state.shard == s.name && e.state.role == crate::backend::Role::Replica)
        .cloned()
        .collect();
    if replicas.is_empty() {
        return;
    }
    let info = |ep: Arc<crate::backend::Endpoint>| async move {
        let frame = Bytes::from_static(b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n");
        match ep.send(Protocol::Resp2, 0, &frame).await {
            Ok(Ok(a)) => reply::bulk(&a.frame).map(|b| String::from_utf8_lossy(&b).into_owned()),
            _ => None,
        }
    };
    let Some(goal) = info(s.primary.clone())
        .await
        .and_then(|t| field(&t, "master_repl_offset"))
    else {
        return;
    };
    let t0 = Instant::now();
    for r in replicas {
        loop {
            // An unhealthy replica serves no reads: nothing to wait for.
            if !r.state.is_healthy() {
                break;
            }
            let at = info(r.clone())
                .await
                .and_then(|t| field(&t, "slave_repl_offset"));
            if at.is_some_and(|o| o >= goal) {
                break;
            }
            if t0.elapsed() >= REPLICA_WAIT {
                tracing::warn!(shard = %s.name, replica = %r.state.addr, "replica did not catch up within 10 s after a rebalance window; reads from it may miss moved keys until it does");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn field(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Scans every shard that may hold keys (through the proxy's own
/// connections, so postgres shards are scanned too) and checks that each
/// key is on the shard that owns it once the move is over.
pub(super) async fn verify(rb: &Rebalancer, work: &Work) -> Verification {
    let merged = &work.plan.merged;
    let finished = RoutingTable::compile(Arc::new(plan::finished(merged)), Epoch(0));
    let moved: HashMap<(u32, u32), ShardId> = work
        .plan
        .moves
        .iter()
        .map(|m| ((m.class, m.slot.0), m.from))
        .collect();
    let mut v = Verification::default();
    for (i, shard) in merged.shards.iter().enumerate() {
        if shard.phase == ShardPhase::Removed {
            continue;
        }
        let id = ShardId(i as u16);
        let mut found = 0u64;
        let dbs = match shard.kind {
            crate::shardmap::ShardKind::Redis => {
                let ep = rb.ctx.backends().shard(id).primary.clone();
                databases_with_keys(&ep)
                    .await
                    .unwrap_or_else(|_| vec![Db(0)])
            }
            crate::shardmap::ShardKind::Postgres => vec![Db(0)],
        };
        for db in dbs {
            let wire = Wire {
                proto: Protocol::Resp2,
                db,
            };
            let mut cursor = Bytes::from_static(b"0");
            let mut attempts = 0;
            loop {
                let ep = rb.ctx.backends().shard(id).primary.clone();
                let mut frame = BytesMut::new();
                encode_command(&[b"SCAN", &cursor, b"COUNT", b"1000"], &mut frame);
                let step = match ep.send(wire, 0, &frame.freeze()).await {
                    Ok(Ok(a)) => scan_reply(&a.frame),
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err(MigrateError::Backend(BackendError::ConnectionLost {
                        addr: ep.state.addr.clone(),
                        reason: "connection task stopped".to_owned(),
                    })),
                };
                let (next, keys) = match step {
                    Ok(r) => r,
                    Err(e) if attempts < 5 => {
                        attempts += 1;
                        rb.ctx.metrics.rebalance_mover_error("verify");
                        tracing::warn!(shard = %shard.name, error = %e, "rebalance verification: scan failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    Err(e) => {
                        rb.ctx.metrics.rebalance_mover_error("verify");
                        tracing::error!(shard = %shard.name, error = %e, "rebalance verification could not scan a shard");
                        v.unscanned.push(shard.name.clone());
                        break;
                    }
                };
                for k in keys {
                    // The mover's fence is no client key.
                    if k.as_ref() == crate::backend::migrate::MOVING_SET {
                        continue;
                    }
                    let unit = (finished.class_of(&k), finished.slot_of(&k).0);
                    if finished.route(&k).shard == id {
                        found += 1;
                        v.in_moved_slots += u64::from(moved.contains_key(&unit));
                        continue;
                    }
                    v.misplaced += 1;
                    if moved.get(&unit) == Some(&id) {
                        v.left_behind += 1;
                    }
                    if v.misplaced <= 10 {
                        tracing::error!(key = %String::from_utf8_lossy(&k), shard = %shard.name, "rebalance verification: key on a shard that does not own it");
                    }
                }
                cursor = next;
                if cursor.as_ref() == b"0" {
                    break;
                }
            }
        }
        if shard.phase == ShardPhase::Active {
            v.keys.push((shard.name.clone(), found));
        }
    }
    if v.ok() {
        tracing::info!(keys = ?v.keys, in_moved_slots = v.in_moved_slots, "rebalance verification passed: every key is on the shard that owns it");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_fields_are_read_from_info() {
        let info = "# Replication\r\nrole:master\r\nmaster_repl_offset:1234\r\nslave0:ip=x\r\n";
        assert_eq!(field(info, "master_repl_offset"), Some(1234));
        assert_eq!(field(info, "role"), None, "not a number");
        assert_eq!(field(info, "missing"), None);
    }
}

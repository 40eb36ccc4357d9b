//! The mover's part for keys to or from postgres shards (see
//! `backend::copy`): targets prepared before any key moves there, a
//! postgres source read slot by slot, keys copied with commands several at
//! a time, and the pause when a key cannot move at all.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::burst::Turn;
use super::{Job, Rebalancer, Work, fail, throttle, wait_unpaused};
use crate::backend::copy::{Copied, CopyError, MOVER_CLIENTS, Stays, copy_key};
use crate::backend::migrate::{MigrateError, scan_reply};
use crate::backend::{Db, Endpoint, Wire};
use crate::error::BackendError;
use crate::protocol::{Protocol, request::encode_command};
use crate::router::ShardId;

/// Applies the schema migrations on the primary of every postgres shard
/// slots move onto (an added shard was never prepared at startup), before
/// any table routes a key there. Retries until it is done: nothing can
/// move there before.
pub(super) async fn prepare_postgres_targets(rb: &Rebalancer, job: &Job, work: &Work) {
    let targets: BTreeSet<ShardId> = work.plan.moves.iter().map(|m| m.to).collect();
    for id in targets {
        let mut backoff = Duration::from_millis(100);
        loop {
            let ep = rb.ctx.backends().shard(id).primary.clone();
            let Some(pg) = ep.postgres() else { break };
            match crate::backend::pg::prepare_primary(&ep.state, pg.pool()).await {
                Ok(()) => break,
                Err(e) => {
                    let why = format!("preparing postgres shard {}: {e}", ep.state.shard);
                    fail(rb, job, why).await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Some keys of a window cannot move to their target (see
/// [`Stays`]): they stay on their source, where commands still reach them,
/// and the window cannot finish. The mover pauses (PROGRESS shows the
/// first of them as `last_error`, the metrics count them under
/// `stage="unsupported"`) until an operator has dealt with the keys and
/// resumes; then the window is scanned again.
pub(super) async fn hold_back(rb: &Rebalancer, job: &Job, stuck: &[Stays]) {
    let first = &stuck[0];
    tracing::error!(
        keys = stuck.len(),
        first = %first,
        "rebalance paused: keys of the moving slots cannot move to their new shard; they stay on their old one (RESUME once they are deleted or changed)"
    );
    job.error(format!(
        "paused: {} key(s) cannot move; first: {first}",
        stuck.len()
    ));
    if let Err(e) = rb.pause().await {
        tracing::warn!(error = %e, "cannot record the rebalance's pause");
        job.paused.send_replace(true);
    }
    // In a fleet, the pause reaches the mover through etcd.
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_unpaused(job).await;
}

/// [`move_window`](super::move_window) from a postgres source: its keys are found slot by
/// slot the way its `SCAN` walks them (a cursor below the slot count
/// starts that slot; a returned cursor names the slot it continues in), so
/// only the window's slots are read; each key moves by [`copy_key`].
pub(super) async fn move_window_pg(
    rb: &Rebalancer,
    job: &Job,
    work: &Work,
    from: ShardId,
    targets: &HashMap<(u32, u32), ShardId>,
    stuck: &mut Vec<Stays>,
) {
    let classify = &work.plan.table;
    let slots = u64::from(work.plan.slots.max(1));
    let window: BTreeSet<u64> = targets.keys().map(|&(_, s)| u64::from(s)).collect();
    let wire = Wire {
        proto: Protocol::Resp2,
        db: Db(0),
    };
    let mut cursor = window.first().copied();
    let mut backoff = Duration::from_millis(100);
    // Beside clients, one source at a time (see `Turns`).
    let mut turn = Turn::default();
    while let Some(at) = cursor {
        wait_unpaused(job).await;
        turn.take(&job.turns, rb.clients_served()).await;
        let backends = rb.ctx.backends();
        let ep = backends.shard(from).primary.clone();
        let result: Result<Option<u64>, MigrateError> = async {
            let at = at.to_string();
            let mut frame = BytesMut::new();
            encode_command(&[b"SCAN", at.as_bytes(), b"COUNT", b"1000"], &mut frame);
            let step = match ep.send(wire, 0, &frame.freeze()).await {
                Ok(Ok(a)) => scan_reply(&a.frame)?,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    return Err(BackendError::ConnectionLost {
                        addr: ep.state.addr.clone(),
                        reason: "connection task stopped".to_owned(),
                    }
                    .into());
                }
            };
            let (next, keys) = step;
            let mut groups: HashMap<ShardId, Vec<Bytes>> = HashMap::new();
            for k in keys {
                let unit = (classify.class_of(&k), classify.slot_of(&k).0);
                if let Some(to) = targets.get(&unit) {
                    groups.entry(*to).or_default().push(k);
                }
            }
            for (to, keys) in groups {
                let target = backends.shard(to).primary.clone();
                copy_keys(rb, job, &ep, &target, Db(0), keys, stuck).await?;
            }
            let next: u64 = std::str::from_utf8(&next)
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| MigrateError::Unexpected {
                    command: "SCAN",
                    reply: String::from_utf8_lossy(&next).into_owned(),
                })?;
            Ok(next_pg_cursor(next, slots, &window))
        }
        .await;
        match result {
            Ok(next) => {
                cursor = next;
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                fail(rb, job, format!("moving from {}: {e}", ep.state.addr)).await;
                turn.give_back();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Where the scan of a postgres source's window goes on after a `SCAN`
/// answered cursor `next`: there, while it is in a window slot (a postgres
/// cursor is `prefix * slots + slot`, see `backend::pg::keyspace`); else
/// at the start of the next window slot (a cursor below `slots` starts
/// that slot); `None` when the scan is over.
fn next_pg_cursor(next: u64, slots: u64, window: &BTreeSet<u64>) -> Option<u64> {
    if next == 0 {
        return None;
    }
    let slot = next % slots;
    if window.contains(&slot) {
        Some(next)
    } else {
        window.range(slot..).next().copied()
    }
}

/// Most keys copied at once by [`copy_keys`] (each on its own lane or
/// connection: a copy is a few round trips).
const COPIES: usize = 16;

/// Keys [`copy_keys`] copies at once between `source` and `target`: at
/// most [`COPIES`], and at most half the pool of a postgres side (each
/// copy holds one of its connections per step), so that the mover never
/// takes every connection and clients' commands wait for one past
/// `connect_timeout` (seen under load: `pool timed out`).
fn copies_at_once(source: &Endpoint, target: &Endpoint) -> usize {
    [source, target]
        .iter()
        .filter(|e| e.postgres().is_some())
        .map(|e| (e.state.options.pg_pool_size / 2).max(1))
        .fold(COPIES, usize::min)
}

/// Moves `keys` (database `db`) from `source` to `target` by
/// [`copy_key`], [`COPIES`] at a time. Keys that cannot move are added to
/// `stuck` (counted, and left on the source); the first failed step stops
/// the batch (the caller retries: a key not copied is whole on its source).
pub(super) async fn copy_keys(
    rb: &Rebalancer,
    job: &Job,
    source: &Arc<Endpoint>,
    target: &Arc<Endpoint>,
    db: Db,
    keys: Vec<Bytes>,
    stuck: &mut Vec<Stays>,
) -> Result<(), MigrateError> {
    for chunk in keys.chunks(copies_at_once(source, target)) {
        // Tasks of their own, not aborted if the mover stops: a copy cut
        // short would leave its key fenced (see `proxy::moves`).
        let mut copies = Vec::with_capacity(chunk.len());
        for (i, key) in chunk.iter().enumerate() {
            let (ctx, src, dst, key) =
                (rb.ctx.clone(), source.clone(), target.clone(), key.clone());
            copies.push(tokio::spawn(async move {
                copy_key(&ctx.fences, &src, &dst, db, MOVER_CLIENTS + i as u64, &key).await
            }));
        }
        let mut failed = None;
        for copy in copies {
            match copy.await {
                Ok(Ok(Copied::Moved { bytes })) => {
                    job.keys.fetch_add(1, Ordering::Relaxed);
                    job.bytes.fetch_add(bytes, Ordering::Relaxed);
                    rb.ctx.metrics.rebalance_moved(1, bytes);
                }
                Ok(Ok(Copied::Gone)) => {}
                Ok(Err(CopyError::Stays(why))) => {
                    rb.ctx.metrics.rebalance_mover_error("unsupported");
                    tracing::warn!(error = %why, "rebalance mover: a key cannot move");
                    stuck.push(why);
                }
                Ok(Err(CopyError::Step(e))) => {
                    failed.get_or_insert(e);
                }
                Err(e) => {
                    failed.get_or_insert(MigrateError::Unexpected {
                        command: "key copy",
                        reply: e.to_string(),
                    });
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        throttle(job, chunk.len()).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_source_is_scanned_only_in_the_windows_slots() {
        let window: BTreeSet<u64> = [3, 7, 8].into_iter().collect();
        let slots = 16;
        // Within slot 3 (prefix 5): go on there.
        assert_eq!(next_pg_cursor(5 * slots + 3, slots, &window), Some(83));
        // The scan reached slot 4 (not in the window): jump to slot 7.
        assert_eq!(next_pg_cursor(4, slots, &window), Some(7));
        assert_eq!(next_pg_cursor(2 * slots + 5, slots, &window), Some(7));
        // Slot 8 starts right after 7.
        assert_eq!(next_pg_cursor(8, slots, &window), Some(8));
        // Past the last window slot, or the end of the table: done.
        assert_eq!(next_pg_cursor(9, slots, &window), None);
        assert_eq!(next_pg_cursor(0, slots, &window), None);
    }
}

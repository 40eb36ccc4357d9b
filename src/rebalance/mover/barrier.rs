//! Step 2: the barrier between a window's publish and its first moved key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{Backends, Endpoint};
use crate::rebalance::{Job, Rebalancer};
use crate::router::{Epoch, RoutingTable, ShardId};

/// Makes a window's `Migrating` state effective (step 2 of the module
/// doc): once it returns, every request routed by a table older than the
/// window's has run on its backend, so nothing routed before the window
/// writes a key of it on its source (or on a target) any more.
///
/// `old` is the table the window's publish replaced; `shards` the window's
/// source and targets. Why not just wait for `old` and ping the source's
/// primary: (1) `old` may itself have followed a publish without a
/// barrier (the previous window turning stable), and a session still
/// routing with the table before it (a guard loaded before that publish,
/// its thread descheduled, or an operation holding its table) would send
/// a key of this window to its source after the barrier, landing between a
/// copy's read and its `UNLINK` (a lost write, as in issue 15); so
/// the barrier waits for every replaced snapshot of `old`'s epoch or older
/// ([`crate::snapshot::Published::replaced_held`]). (2) Those snapshots may
/// hold other endpoint objects for the same shards (rebuilt by a reload or
/// at the start of a rebalance), whose connections and lanes are not the
/// current ones: their primaries are pinged too.
pub(super) async fn barrier(
    rb: &Rebalancer,
    job: &Job,
    old: Arc<RoutingTable>,
    shards: &[ShardId],
) {
    let upto = old.epoch();
    let names: Vec<String> = {
        let backends = rb.ctx.backends();
        shards
            .iter()
            .filter_map(|id| backends.shards().get(id.0 as usize))
            .map(|s| s.name.clone())
            .collect()
    };
    let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
    let mut add = |b: &Backends| {
        for s in b.shards().iter().filter(|s| names.contains(&s.name)) {
            if !endpoints.iter().any(|e| Arc::ptr_eq(e, &s.primary)) {
                endpoints.push(s.primary.clone());
            }
        }
    };
    add(&rb.ctx.backends());
    rb.ctx
        .snapshot
        .each_replaced_held(upto, |snap| add(snap.backends()));
    drain(rb, job, Some(old), upto, endpoints).await;
}

/// Waits until no snapshot of epoch `upto` or older (nor `old`, the table
/// a publish replaced) is held, i.e. every request routed by one is queued
/// on its backend, then until each of `endpoints` has answered everything
/// queued on it before (a `PING` behind it on every connection or lane).
pub(super) async fn drain(
    rb: &Rebalancer,
    job: &Job,
    old: Option<Arc<RoutingTable>>,
    upto: Epoch,
    endpoints: Vec<Arc<Endpoint>>,
) {
    let t0 = Instant::now();
    let mut warned = false;
    loop {
        let held = rb.ctx.snapshot.replaced_held(upto)
            + old.as_ref().map_or(0, |t| Arc::strong_count(t) - 1);
        if held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        if !warned && t0.elapsed() > Duration::from_secs(5) {
            warned = true;
            tracing::warn!(
                holders = held,
                "rebalance waits for commands routed by earlier tables (a long script or transaction?)"
            );
        }
    }
    drop(old);
    for ep in endpoints {
        loop {
            match ep.barrier().await {
                Ok(()) => break,
                Err(e) => {
                    rb.ctx.metrics.rebalance_mover_error("barrier");
                    job.error(format!("barrier on {}: {e}", ep.state.addr));
                    tracing::warn!(endpoint = %ep.state.addr, error = %e, "rebalance barrier failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

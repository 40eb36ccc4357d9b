//! The client side of an online rebalance: a command on a key of a
//! migrating slot first moves the key from its old shard to its new one
//! (`MIGRATE`, atomic on the source), then runs on the new shard.
//!
//! The moves run with the session to itself (an inline operation), holding
//! the routing table they were decided with until the command is answered,
//! so the rebalancer's barrier (see `rebalance`) also waits for them.

use bytes::{Bytes, BytesMut};

use super::Proxy;
use super::dispatch::{Action, InlineOp};
use super::session::Session;
use crate::backend::migrate::{
    BIG_KEY_BYTES, Copied, Migrated, copy_in_pieces, migrate_frame, migrated, request,
};
use crate::command::keys::key_indices;
use crate::command::{CommandSpec, lookup};
use crate::error::ProxyError;
use crate::protocol::{Protocol, Reply, Request, reply, request::encode_command};
use crate::router::{RoutingTable, ShardId};
use crate::snapshot::Snapshot;

/// Re-dispatches after moving at most this many times (each time, the
/// table changed again between the moves and the command).
const MAX_ROUNDS: usize = 8;

/// How long a command waits for the fleet's mover to confirm a window
/// before `-TRYAGAIN` (see `context::HeldMoves`): the mover waits for every
/// live proxy, at most until a silent one's lease expires.
const HELD_LIMIT: std::time::Duration = std::time::Duration::from_secs(8);

impl Session {
    /// Moves the request's keys that are in migrating slots, then runs it
    /// on their new shard. Returns the encoded reply.
    pub(super) async fn move_first(&mut self, proxy: &Proxy, mut req: Request) -> Bytes {
        for _ in 0..MAX_ROUNDS {
            let keys = request_keys(&req);
            // An older round's table must not be held while waiting.
            self.held = None;
            let snap = match movable_snapshot(proxy, &keys).await {
                Ok(s) => s,
                Err(e) => return self.encode(e.to_reply()),
            };
            self.held = Some(snap.clone());
            if let Err(e) = self.move_keys(proxy, &snap, &keys).await {
                self.held = None;
                return self.encode(e.to_reply());
            }
            self.moved_under = Some(snap.epoch());
            self.force_primary = true;
            let action = self.dispatch(proxy, req, std::time::Instant::now());
            self.force_primary = false;
            let out = match action {
                Action::Inline(InlineOp::MoveFirst(again), _) => {
                    req = again;
                    continue;
                }
                Action::Queue(mut p) | Action::Close(mut p) => {
                    let mut out = BytesMut::new();
                    std::future::poll_fn(|cx| p.poll_into(cx, &mut out)).await;
                    out.freeze()
                }
                Action::Inline(op, _) => Box::pin(self.run_inline(proxy, op)).await,
            };
            self.moved_under = None;
            self.held = None;
            return out;
        }
        self.moved_under = None;
        self.held = None;
        self.encode(Reply::error(
            "TRYAGAIN the keys' slots kept changing during a rebalance; retry the command",
        ))
    }

    /// Routes `req` again with the current table, right before an inline
    /// operation runs it: moves its keys in migrating slots and returns the
    /// one shard they live on now (`None` without keys). The table is held
    /// in the session until the operation ends.
    pub(super) async fn reroute(
        &mut self,
        proxy: &Proxy,
        req: &Request,
    ) -> Result<Option<ShardId>, ProxyError> {
        let keys = request_keys(req);
        self.held = None;
        let snap = movable_snapshot(proxy, &keys).await?;
        self.held = Some(snap.clone());
        self.move_keys(proxy, &snap, &keys).await?;
        shard_of(snap.table(), keys.iter().map(|k| k.as_ref()))
    }

    /// Moves every key of `keys` whose slot is migrating under `table` to
    /// its new shard. First its size (`MEMORY USAGE`, all keys at once, on
    /// this client's connections to the sources): a key not on its source
    /// needs nothing; an ordinary key moves by one `MIGRATE`; a big key
    /// (see [`BIG_KEY_BYTES`]) is copied piece by piece under a fence, as
    /// the mover does, so the source is never blocked for long.
    pub(super) async fn move_keys(
        &self,
        proxy: &Proxy,
        snap: &Snapshot,
        keys: &[Bytes],
    ) -> Result<(), ProxyError> {
        let table = snap.table();
        let backends = snap.backends();
        let mut sizes = Vec::new();
        for key in keys {
            let route = table.route(key);
            let Some(from) = route.moving_from else {
                continue;
            };
            let mut frame = BytesMut::new();
            encode_command(&[b"MEMORY", b"USAGE", key], &mut frame);
            let source = &backends.shard(from).primary;
            sizes.push((
                key,
                from,
                route.shard,
                source.send(self.proto, self.id, &frame.freeze()),
            ));
        }
        let mut first_error = None;
        let mut fail = |key: &Bytes, from: ShardId, to: ShardId, why: String| {
            proxy.metrics.rebalance_mover_error("touch");
            let name = |id: ShardId| {
                backends
                    .shards()
                    .get(id.0 as usize)
                    .map_or(String::new(), |s| s.name.clone())
            };
            tracing::warn!(key = %String::from_utf8_lossy(key), from = %name(from), to = %name(to), error = %why, "moving a key on touch failed");
            first_error.get_or_insert_with(|| {
                ProxyError::Client(
                    format!(
                        "TRYAGAIN key is moving from shard {} to shard {} and the move failed: {why}",
                        name(from),
                        name(to)
                    )
                    .into(),
                )
            });
        };
        let mut big = Vec::new();
        let mut waits = Vec::new();
        let mut touches = Vec::new();
        for (key, from, to, rx) in sizes {
            let size = match rx.await {
                Ok(Ok(f)) if reply::is_error(&f) => Some(0),
                Ok(Ok(f)) => reply::integer(&f),
                Ok(Err(e)) => {
                    fail(key, from, to, e.to_string());
                    continue;
                }
                Err(_) => {
                    fail(key, from, to, "reply channel closed".to_owned());
                    continue;
                }
            };
            match size {
                // Not on the source: moved already, or never there.
                None => {}
                Some(n) if n >= BIG_KEY_BYTES as i64 => big.push((key, from, to)),
                Some(_) => {
                    // Waits while the mover copies this key piece by piece.
                    touches.push(proxy.ctx.fences.touch(key).await);
                    let target = &backends.shard(to).primary;
                    let source = &backends.shard(from).primary;
                    let timeout = source.state.options.command_timeout.as_millis() as u64;
                    let frame = migrate_frame(&target.state, &[key.as_ref()], timeout);
                    waits.push((key, from, to, source.send(self.proto, self.id, &frame)));
                }
            }
        }
        for (key, from, to, rx) in waits {
            let outcome = match rx.await {
                Ok(Ok(frame)) => migrated(&frame),
                Ok(Err(e)) => Migrated::Failed(e.to_string()),
                Err(_) => Migrated::Failed("reply channel closed".to_owned()),
            };
            match outcome {
                Migrated::Moved => proxy.metrics.rebalance_moved_on_touch(1),
                Migrated::NoKey => {}
                Migrated::Failed(why) => fail(key, from, to, why),
            }
        }
        drop(touches);
        for (key, from, to) in big {
            let source = backends.shard(from).primary.clone();
            let target = backends.shard(to).primary.clone();
            let timeout = source.state.options.command_timeout;
            proxy.ctx.fences.fence(key).await;
            let copied = async {
                let mut conn = source
                    .dedicated(Protocol::Resp2)
                    .await
                    .map_err(|e| e.to_string())?;
                match copy_in_pieces(&mut conn, &target, key, timeout).await? {
                    Copied::Whole => {
                        let ms = timeout.as_millis() as u64 * 30;
                        let frame = migrate_frame(&target.state, &[key.as_ref()], ms);
                        let r = request(&mut conn, &frame, 1, timeout * 60).await?;
                        match migrated(&r[0]) {
                            Migrated::Failed(e) => Err(e),
                            Migrated::Moved => Ok(true),
                            Migrated::NoKey => Ok(false),
                        }
                    }
                    Copied::Pieces(_) => Ok(true),
                    Copied::Gone => Ok(false),
                }
            }
            .await;
            proxy.ctx.fences.lift(key);
            match copied {
                Ok(true) => {
                    proxy.metrics.rebalance_moved_on_touch(1);
                    tracing::info!(key = %String::from_utf8_lossy(key), to = %target.state.addr, "moved a big key on touch");
                }
                Ok(false) => {}
                Err(why) => fail(key, from, to, why),
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn encode(&self, reply: Reply) -> Bytes {
        let mut out = BytesMut::new();
        reply.encode(self.proto, &mut out);
        out.freeze()
    }
}

/// The keys of a request, by the command table (none for an unknown
/// command or malformed key arguments: Redis then answers with its error).
/// The snapshot in force once none of `keys` is in a window the fleet's
/// mover has not confirmed (see `context::HeldMoves`). Waits without
/// holding a table: the fleet watcher drains older tables before it
/// acknowledges, and the confirmation needs every acknowledgement.
async fn movable_snapshot(
    proxy: &Proxy,
    keys: &[Bytes],
) -> Result<std::sync::Arc<Snapshot>, ProxyError> {
    let started = std::time::Instant::now();
    loop {
        let snap = proxy.snapshot_full();
        let held = &proxy.ctx.held_moves;
        let table = snap.table();
        let waits = !held.is_empty()
            && keys.iter().any(|k| {
                table.route(k).moving_from.is_some()
                    && held.holds(table.class_of(k), table.slot_of(k).0)
            });
        if !waits {
            return Ok(snap);
        }
        drop(snap);
        if started.elapsed() > HELD_LIMIT {
            return Err(ProxyError::Client(
                "TRYAGAIN the key's slot is about to move and not every proxy of the fleet has acknowledged it yet; retry".into(),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

pub(super) fn request_keys(req: &Request) -> Vec<Bytes> {
    let Some(spec) = lookup(req.name()) else {
        return Vec::new();
    };
    keys_of(spec, req)
}

fn keys_of(spec: &CommandSpec, req: &Request) -> Vec<Bytes> {
    let mut idx = Vec::new();
    if key_indices(spec, req.args(), &mut idx).is_err() {
        return Vec::new();
    }
    idx.iter()
        .filter_map(|&i| req.args().get(i).cloned())
        .collect()
}

/// The one shard `keys` live on under `table`; `-CROSSSLOT` if several.
pub(super) fn shard_of<'a>(
    table: &RoutingTable,
    keys: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<ShardId>, ProxyError> {
    let mut shard = None;
    for key in keys {
        let s = table.route(key).shard;
        match shard {
            None => shard = Some(s),
            Some(prev) if prev != s => return Err(ProxyError::crossslot()),
            Some(_) => {}
        }
    }
    Ok(shard)
}

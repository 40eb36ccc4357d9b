//! The client side of an online rebalance: a command on a key of a
//! migrating slot first moves the key from its old shard to its new one
//! (`MIGRATE`, atomic on the source, between Redis shards, put off while
//! the mover copies that key; to or from a postgres shard, a copy with
//! commands under the key's fence, see `backend::copy`), then runs on the
//! new shard.
//!
//! The moves run with the session to itself (an exclusive operation),
//! holding the routing table they were decided with until the command is
//! answered, so the rebalancer's barrier (see `rebalance`) also waits for
//! them.
//!
//! Reads whose reply proves the key is there ([`PRESENCE_READS`]) do not
//! move it: they go to both shards at once ([`Session::read_migrating`]),
//! like Redis Cluster's `ASK`, and leave the move to the mover.

use bytes::{Bytes, BytesMut};

use super::Proxy;
use super::dispatch::{Action, ExclusiveOp, Pass};
use super::pending::{Pending, PendingKind, answered};
use super::session::Session;
use crate::backend::copy::{self, Copied, CopyError, Stays};
use crate::backend::migrate::{
    BIG_KEY_BYTES, BigKeyMove, Migrated, migrate_unless_copying, move_big_key,
};
use crate::backend::mux::ReplyRx;
use crate::backend::{Backends, Db, Wire};
use crate::command::keys::key_indices;
use crate::command::{CommandSpec, Flags, Handling, lookup};
use crate::error::ProxyError;
use crate::protocol::{Protocol, Reply, Request, reply, request::encode_command};
use crate::router::{RoutingTable, ShardId};
use crate::snapshot::Snapshot;

/// Routes again after moving at most this many times (each time, the
/// table changed again between the moves and the command).
const MAX_ROUNDS: usize = 8;

/// How long a command waits for a window's moves to be released before
/// `-TRYAGAIN` (see `context::HeldMoves`): the fleet's mover waits for
/// every live proxy, at most until a silent one's lease expires; a single
/// proxy's barrier, for the requests routed before the window.
const HELD_LIMIT: std::time::Duration = std::time::Duration::from_secs(8);
/// Single-key reads whose reply is something other than nil only when the
/// key exists on the shard that answers (`GET` of a missing key is nil;
/// `HGET` of a missing field is nil too, which only makes the proof
/// one-sided: a non-nil reply still proves the key is there).
const PRESENCE_READS: [&str; 4] = ["get", "hget", "zscore", "lindex"];

/// One key to move: from its old shard to its new one.
#[derive(Clone, Copy)]
struct KeyMove<'a> {
    key: &'a Bytes,
    from: ShardId,
    to: ShardId,
}

/// What `MEMORY USAGE` on the source says about a key.
enum Size {
    /// Not on the source: moved already, or never there.
    Absent,
    /// Moves with one `MIGRATE`.
    Small,
    /// Moves by [`move_big_key`].
    Big,
}

/// The failures of one round of moves: each is counted and logged; the
/// first becomes the command's `-TRYAGAIN`.
struct Failures<'a> {
    proxy: &'a Proxy,
    backends: &'a Backends,
    first: Option<ProxyError>,
    /// Keys that cannot move at all (not failures: they stay on their
    /// source, see [`Stuck`]).
    stuck: Vec<Stuck>,
}

/// A key of a migrating slot that cannot live on its new shard (a list,
/// set, ... moving to a postgres shard; see [`Stays`]): it stays on its
/// old shard, where a command on it alone still runs
/// ([`Session::run_on_source`]).
pub(super) struct Stuck {
    key: Bytes,
    from: ShardId,
    why: Stays,
}

impl Failures<'_> {
    fn record(&mut self, m: KeyMove<'_>, why: impl std::fmt::Display) {
        self.proxy.metrics.rebalance_mover_error("touch");
        let name = |id: ShardId| {
            self.backends
                .shards()
                .get(id.0 as usize)
                .map_or("?", |s| s.name.as_str())
        };
        let (from, to) = (name(m.from), name(m.to));
        tracing::warn!(key = %String::from_utf8_lossy(m.key), %from, %to, error = %why, "moving a key on touch failed");
        self.first.get_or_insert_with(|| {
            ProxyError::tryagain(format!(
                "key is moving from shard {from} to shard {to} and the move failed: {why}"
            ))
        });
    }

    fn into_result(self) -> Result<Vec<Stuck>, ProxyError> {
        self.first.map_or(Ok(self.stuck), Err)
    }
}

impl Session {
    /// A read of a key in a migrating slot, answered without moving the
    /// key and without draining the client's pipeline: the read goes to the
    /// key's source and target primaries at once. `None` for any other
    /// request (it moves its key first: [`Session::move_first`]).
    ///
    /// Why this is exact: from the moment the slot migrates, nothing writes
    /// the key on its source (the barrier), and nothing writes it on its
    /// target while it is still on its source (writes move first), except
    /// the mover's copy, which is the same value (the key is fenced on the
    /// source from its `DUMP` until its `UNLINK`: see
    /// `rebalance::mover::walk`). So a non-nil reply from the source is the
    /// key's value at the time the source answered; a nil one from the
    /// source and a non-nil one from the target is the value the target
    /// held when it answered. Both nil is not a proof (the target may
    /// have answered before the key arrived and the source after it left):
    /// the read is then sent again, to the source first and once it has
    /// answered to the target, which is exact. Replicas are not read (a
    /// source replica may still hold a key that has moved).
    pub(super) fn read_migrating(
        &self,
        proxy: &Proxy,
        snap: &Snapshot,
        spec: &'static CommandSpec,
        req: &Request,
    ) -> Option<Pending> {
        if !PRESENCE_READS.contains(&spec.name) || self.tracking.is_some() {
            return None;
        }
        let route = snap.table().route(req.args().get(1)?);
        let from = route.moving_from?;
        let (source, target) = (snap.shard(from), snap.shard(route.shard));
        if source.kind != crate::shardmap::ShardKind::Redis
            || target.kind != crate::shardmap::ShardKind::Redis
        {
            return None;
        }
        let (source, target) = (source.primary.clone(), target.primary.clone());
        let (wire, client, frame) = (self.wire(), self.id, req.raw().clone());
        let metrics = proxy.metrics.clone();
        let at_once = (
            source.send(wire, client, &frame),
            target.send(wire, client, &frame),
        );
        let reply = async move {
            let (on_source, on_target) = at_once;
            let s = answered(on_source.await)?;
            if !reply::is_nil(&s) {
                metrics.rebalance_read("source");
                return Ok(s);
            }
            let t = answered(on_target.await)?;
            if !reply::is_nil(&t) {
                metrics.rebalance_read("target");
                return Ok(t);
            }
            metrics.rebalance_read("neither");
            let s = answered(source.send(wire, client, &frame).await)?;
            if !reply::is_nil(&s) {
                return Ok(s);
            }
            answered(target.send(wire, client, &frame).await)
        };
        Some(self.pending(
            spec,
            PendingKind::Computed(Box::pin(reply)),
            Some(route.shard),
        ))
    }

    /// Moves the request's keys that are in migrating slots, then runs it
    /// on their new shard. Returns the encoded reply.
    pub(super) async fn move_first(
        &mut self,
        proxy: &Proxy,
        mut req: Request,
        spec: &'static CommandSpec,
    ) -> Bytes {
        if let Some(db) = copy_to_other_db(&req, spec, self.db) {
            // Only the client's own database moves first: the destination's
            // copy in `db` may still be on the old shard, and the mover
            // would later bring it over the new one.
            return self.encode(
                ProxyError::tryagain(format_args!(
                    "COPY ... DB {db} on a key whose slot is moving between shards; retry once the slot has moved"
                ))
                .to_reply(),
            );
        }
        for _ in 0..MAX_ROUNDS {
            let keys = request_keys(&req);
            // An older round's table must not be held while waiting.
            self.held = None;
            let snap = match movable_snapshot(proxy, &keys).await {
                Ok(s) => s,
                Err(e) => return self.encode(e.to_reply()),
            };
            self.held = Some(snap.clone());
            match self.move_keys(proxy, &snap, &keys).await {
                Ok(stuck) if stuck.is_empty() => {}
                Ok(stuck) => {
                    let out = self.run_on_source(proxy, &snap, &req, spec, &keys, stuck);
                    let out = Box::pin(out).await;
                    self.held = None;
                    match out {
                        Some(out) => return out,
                        // The key changed meanwhile: move it again.
                        None => continue,
                    }
                }
                Err(e) => {
                    self.held = None;
                    return self.encode(e.to_reply());
                }
            }
            // As at dispatch: a fleet member that may have lost its lease
            // routes no keys (the move itself ran under the held table).
            if proxy.ctx.fence.blocks(std::time::Instant::now()) {
                self.held = None;
                return self.encode(ProxyError::fenced().to_reply());
            }
            let out = match self.route(proxy, spec, req, Pass::Moved(snap.epoch())) {
                Action::Exclusive(ExclusiveOp::MoveFirst(again, _), _) => {
                    // The table changed since the moves: move again.
                    req = again;
                    continue;
                }
                Action::Queue(mut p) | Action::Close(mut p) => {
                    let mut out = BytesMut::new();
                    std::future::poll_fn(|cx| p.poll_into(cx, &mut out)).await;
                    out.freeze()
                }
                Action::Exclusive(op, _) => Box::pin(self.run_exclusive(proxy, op)).await,
            };
            self.held = None;
            return out;
        }
        self.held = None;
        self.encode(
            ProxyError::tryagain(
                "the keys' slots kept changing during a rebalance; retry the command",
            )
            .to_reply(),
        )
    }

    /// Routes `req` again with the current table, right before an exclusive
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
        if let Some(db) = lookup(req.name()).and_then(|spec| copy_to_other_db(req, spec, self.db))
            && !moving_keys(snap.table(), &keys).is_empty()
        {
            return Err(ProxyError::tryagain(format_args!(
                "COPY ... DB {db} on a key whose slot is moving between shards; retry once the slot has moved"
            )));
        }
        self.held = Some(snap.clone());
        if let Some(stuck) = self.move_keys(proxy, &snap, &keys).await?.first() {
            return Err(ProxyError::tryagain(&stuck.why));
        }
        shard_of(snap.table(), keys.iter().map(|k| k.as_ref()))
    }

    /// A command whose key cannot move to its new shard (`stuck`): when it
    /// is a plain command on that one key, it runs on the key's old shard,
    /// under the key's fence (so no copy or other such command of the key
    /// runs meanwhile, and the key's type was checked under it); any other
    /// command gets `-TRYAGAIN` naming the key and why. `None`: the key is
    /// no longer stuck (deleted or changed meanwhile): move it again.
    async fn run_on_source(
        &mut self,
        proxy: &Proxy,
        snap: &Snapshot,
        req: &Request,
        spec: &'static CommandSpec,
        keys: &[Bytes],
        stuck: Vec<Stuck>,
    ) -> Option<Bytes> {
        let first = stuck.into_iter().next()?;
        let alone = keys.iter().all(|k| *k == first.key);
        // Forwarded as the client sent it: a command a Redis server runs
        // alone (a split command whose keys are all this one key included).
        let plain = matches!(spec.handling, Handling::Forward | Handling::Split(_))
            && !spec.flags.contains(Flags::BLOCKING);
        if !alone || !plain {
            return Some(self.encode(ProxyError::tryagain(&first.why).to_reply()));
        }
        let backends = snap.backends();
        let source = backends.shard(first.from).primary.clone();
        let target = backends
            .shard(snap.table().route(&first.key).shard)
            .primary
            .clone();
        let (ctx, db, id, wire, raw) = (
            proxy.ctx.clone(),
            self.db,
            self.id,
            self.wire(),
            req.raw().clone(),
        );
        // A task of its own, as a copy (see `copy`): the fence must be
        // lifted even if the client hangs up meanwhile.
        let run = tokio::spawn(async move {
            let key = first.key;
            if let Err(e) = ctx.fences.fence(&key).await {
                return Some(Err(ProxyError::tryagain(format_args!(
                    "key is moving between shards and its fence could not be taken: {e}"
                ))));
            }
            let out = match copy::stays(&source, &target, db, id, &key).await {
                Ok(Some(_)) => Some(answered(source.send(wire, id, &raw).await)),
                Ok(None) => None,
                Err(e) => Some(Err(ProxyError::tryagain(format_args!(
                    "key is moving between shards and its type could not be read: {e}"
                )))),
            };
            ctx.fences.lift(&key);
            out
        });
        match run.await {
            Ok(Some(Ok(frame))) => Some(frame),
            Ok(Some(Err(e))) => Some(self.encode(e.to_reply())),
            Ok(None) => None,
            Err(e) => Some(self.encode(ProxyError::internal(e.to_string()).to_reply())),
        }
    }

    /// Moves every key of `keys` whose slot is migrating under `snap`'s
    /// table to its new shard, in three steps: the sizes (`MEMORY USAGE`,
    /// all keys at once, on this client's connections to the sources); one
    /// `MIGRATE` per ordinary key, all at once; then each big key (see
    /// [`BIG_KEY_BYTES`]) copied piece by piece under a fence, as the mover
    /// does, so the source is never blocked for long. A key not on its
    /// source needs nothing.
    pub(super) async fn move_keys(
        &self,
        proxy: &Proxy,
        snap: &Snapshot,
        keys: &[Bytes],
    ) -> Result<Vec<Stuck>, ProxyError> {
        let backends = snap.backends();
        let mut moving = moving_keys(snap.table(), keys);
        if moving.is_empty() {
            return Ok(Vec::new());
        }
        let mut failures = Failures {
            proxy,
            backends,
            first: None,
            stuck: Vec::new(),
        };
        // To or from a postgres shard: copied with commands.
        let (copied, migrated): (Vec<KeyMove<'_>>, Vec<KeyMove<'_>>) =
            moving.drain(..).partition(|m| {
                copy::needs_copy(
                    &backends.shard(m.from).primary,
                    &backends.shard(m.to).primary,
                )
            });
        for m in copied {
            self.copy(proxy, backends, m, &mut failures).await;
        }
        let moving = migrated;
        if moving.is_empty() {
            return failures.into_result();
        }
        let sized = self.sizes(backends, &moving, &mut failures).await;
        let small: Vec<KeyMove<'_>> = sized
            .iter()
            .filter(|(_, s)| matches!(s, Size::Small))
            .map(|(m, _)| *m)
            .collect();
        self.migrate_small(proxy, backends, &small, &mut failures)
            .await;
        for (m, size) in sized {
            if matches!(size, Size::Big) {
                self.move_big(proxy, backends, m, &mut failures).await;
            }
        }
        failures.into_result()
    }

    /// A key to or from a postgres shard, copied with commands under its
    /// fence (see `backend::copy`).
    async fn copy(
        &self,
        proxy: &Proxy,
        backends: &Backends,
        m: KeyMove<'_>,
        failures: &mut Failures<'_>,
    ) {
        let source = backends.shard(m.from).primary.clone();
        let target = backends.shard(m.to).primary.clone();
        let (ctx, db, id, key) = (proxy.ctx.clone(), self.db, self.id, m.key.clone());
        // A task of its own: the command is dropped if its client hangs
        // up, and a copy cut short would leave the key fenced for good (or
        // its requests already sent landing after another copy).
        let copy = tokio::spawn(async move {
            copy::copy_key(&ctx.fences, &source, &target, db, id, &key).await
        });
        match copy.await {
            Ok(Ok(Copied::Moved { .. })) => proxy.metrics.rebalance_moved_on_touch(1),
            Ok(Ok(Copied::Gone)) => {}
            Ok(Err(CopyError::Stays(why))) => failures.stuck.push(Stuck {
                key: m.key.clone(),
                from: m.from,
                why,
            }),
            Ok(Err(CopyError::Step(e))) => failures.record(m, e),
            Err(e) => failures.record(m, e),
        }
    }

    /// Step 1: the size of each key on its source.
    async fn sizes<'k>(
        &self,
        backends: &Backends,
        moving: &[KeyMove<'k>],
        failures: &mut Failures<'_>,
    ) -> Vec<(KeyMove<'k>, Size)> {
        let asked: Vec<(KeyMove<'_>, ReplyRx)> = moving
            .iter()
            .map(|m| {
                let mut frame = BytesMut::new();
                encode_command(&[b"MEMORY", b"USAGE", m.key], &mut frame);
                let source = &backends.shard(m.from).primary;
                (*m, source.send(self.wire(), self.id, &frame.freeze()))
            })
            .collect();
        let mut sized = Vec::with_capacity(asked.len());
        for (m, rx) in asked {
            let size = match answered(rx.await) {
                // An error reply: let `MIGRATE` answer for the key.
                Ok(f) if reply::is_error(&f) => Size::Small,
                Ok(f) => match reply::integer(&f) {
                    None => Size::Absent,
                    Some(n) if n >= BIG_KEY_BYTES as i64 => Size::Big,
                    Some(_) => Size::Small,
                },
                Err(e) => {
                    failures.record(m, e);
                    continue;
                }
            };
            sized.push((m, size));
        }
        sized
    }

    /// Step 2: one `MIGRATE` per ordinary key, each after waiting while
    /// this proxy's mover copies that key piece by piece, and while the
    /// mover (of any proxy) copies it with `DUMP`/`RESTORE` (see
    /// [`migrate_unless_copying`]: for at most [`HELD_LIMIT`]).
    async fn migrate_small(
        &self,
        proxy: &Proxy,
        backends: &Backends,
        small: &[KeyMove<'_>],
        failures: &mut Failures<'_>,
    ) {
        let wire = Wire {
            proto: Protocol::Resp2,
            db: self.db,
        };
        for m in small {
            let touch = proxy.ctx.fences.touch(m.key).await;
            let target = &backends.shard(m.to).primary;
            let source = &backends.shard(m.from).primary;
            let timeout = source.state.options.command_timeout;
            let moved = match source.dedicated(wire).await {
                Ok(mut conn) => {
                    let state = &target.state;
                    let waited = || proxy.metrics.rebalance_touch_waited();
                    migrate_unless_copying(
                        &mut conn, state, self.db, m.key, timeout, HELD_LIMIT, waited,
                    )
                    .await
                }
                Err(e) => Err(e.into()),
            };
            drop(touch);
            let outcome = match moved {
                Ok(outcome) => outcome,
                Err(e) => Migrated::Failed(e.to_string()),
            };
            match outcome {
                Migrated::Moved => proxy.metrics.rebalance_moved_on_touch(1),
                Migrated::NoKey => {}
                Migrated::Copying => {
                    failures.record(*m, "the rebalance mover kept copying it (is it stuck?)")
                }
                Migrated::Failed(why) => failures.record(*m, why),
            }
        }
    }

    /// Step 3: one big key, on a dedicated connection to its source.
    async fn move_big(
        &self,
        proxy: &Proxy,
        backends: &Backends,
        m: KeyMove<'_>,
        failures: &mut Failures<'_>,
    ) {
        let source = backends.shard(m.from).primary.clone();
        let target = backends.shard(m.to).primary.clone();
        let timeout = source.state.options.command_timeout;
        let wire = Wire {
            proto: Protocol::Resp2,
            db: self.db,
        };
        let moved = match source.dedicated(wire).await {
            Ok(mut conn) => {
                move_big_key(
                    &proxy.ctx.fences,
                    &mut conn,
                    &target,
                    self.db,
                    m.key,
                    timeout,
                )
                .await
            }
            Err(e) => Err(e.into()),
        };
        match moved {
            Ok(BigKeyMove::Pieces(_) | BigKeyMove::Whole) => {
                proxy.metrics.rebalance_moved_on_touch(1);
                tracing::info!(key = %String::from_utf8_lossy(m.key), to = %target.state.addr, "moved a big key on touch");
            }
            Ok(BigKeyMove::Gone) => {}
            Err(why) => failures.record(m, why),
        }
    }

    fn encode(&self, reply: Reply) -> Bytes {
        let mut out = BytesMut::new();
        reply.encode(self.proto, &mut out);
        out.freeze()
    }
}

/// The keys of `keys` in migrating slots under `table`, with where they
/// move from and to.
fn moving_keys<'k>(table: &RoutingTable, keys: &'k [Bytes]) -> Vec<KeyMove<'k>> {
    keys.iter()
        .filter_map(|key| {
            let route = table.route(key);
            route.moving_from.map(|from| KeyMove {
                key,
                from,
                to: route.shard,
            })
        })
        .collect()
}

/// The snapshot in force once none of `keys` is in a window whose moves
/// are held (see `context::HeldMoves`: not confirmed by the fleet's mover,
/// or a single proxy's barrier not over). Waits without holding a table:
/// the fleet watcher drains older tables before it acknowledges, the
/// barrier waits for every older table, and the release needs both.
pub(super) async fn movable_snapshot(
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
            return Err(ProxyError::tryagain(
                "the key's slot is about to move and requests routed before are still running (or not every proxy of the fleet has acknowledged it yet); retry",
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// The keys of a request, by the command table (none for an unknown
/// command or malformed key arguments: Redis then answers with its error).
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

/// The database `COPY src dst DB n` writes to, when it is not the client's
/// own (`current`).
fn copy_to_other_db(req: &Request, spec: &CommandSpec, current: Db) -> Option<u32> {
    if spec.name != "copy" {
        return None;
    }
    let args = req.args();
    let at = args
        .iter()
        .skip(3)
        .position(|a| a.eq_ignore_ascii_case(b"DB"))?;
    let db: u32 = std::str::from_utf8(args.get(3 + at + 1)?)
        .ok()?
        .parse()
        .ok()?;
    (db != current.0).then_some(db)
}

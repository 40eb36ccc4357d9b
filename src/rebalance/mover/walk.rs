//! Step 3 between Redis servers: the walk of one source database, in
//! pipelined rounds over one dedicated connection to the source and one to
//! each target: `SCAN` the source, size each batch of the window's keys with
//! one script ([`BATCH_SIZES`]), then copy it without blocking the source
//! on its target: fence the batch and `DUMP` each key on the source (one
//! round), `RESTORE` them on the target (the next round), `UNLINK` them and
//! lift the fence on the source (the round after). Big keys move one by
//! one, and keys for a postgres target by copy. Rounds are small while the
//! proxy serves clients or a throttle is set, full otherwise ([`Burst`]).
//!
//! Why a copy is exact: a key of a migrating slot changes on its source
//! only by a command's move (`MIGRATE`, which takes it away; writes move
//! first, reads do not write) or by expiring. The fence is the set
//! [`MOVING_SET`] on the source: while a key is in it, a command's move of
//! it does not run (`migrate_unless_copying`: the check is under `WATCH` on
//! the source) and waits.
//! So between the `DUMP` and the `UNLINK` the key on the source stays what
//! was dumped, and the copy on the target (with the same absolute expiry
//! time) is the same value; a read that finds either finds the key's value.
//! `MIGRATE` would do the same while blocking its source until the target
//! has restored every key of the batch.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::burst::{Burst, Turn};
use super::postgres::copy_keys;
use super::{BIG_KEY_BYTES, Work, fail, throttle, wait_unpaused};
use crate::backend::copy::{Stays, needs_copy};
use crate::backend::dedicated::PooledConn;
use crate::backend::fence::FenceError;
use crate::backend::migrate::{
    BigKeyMove, MOVING_SET, MigrateError, move_big_key, request, scan_reply,
};
use crate::backend::{Backends, Db, Endpoint, Wire};
use crate::protocol::{Protocol, reply, request::encode_command};
use crate::rebalance::{Job, Rebalancer};
use crate::router::{RoutingTable, ShardId};

/// Most bytes (by `MEMORY USAGE`) per batch: a batch's `DUMP` payloads are
/// held by the proxy until they are restored (two batches at most), so a
/// batch of large keys is split.
const BATCH_BYTES: u64 = 8 << 20;

/// [`super::move_window`] in one database.
pub(super) async fn move_window_db(
    rb: &Rebalancer,
    job: &Job,
    work: &Work,
    from: ShardId,
    targets: &HashMap<(u32, u32), ShardId>,
    db: Db,
    stuck: &mut Vec<Stays>,
) {
    let wire = Wire {
        proto: Protocol::Resp2,
        db,
    };
    let mut walk = Walk::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        let backends = rb.ctx.backends();
        let ep = backends.shard(from).primary.clone();
        let timeout = ep.state.options.command_timeout;
        let mut conn = match ep.dedicated(wire).await {
            Ok(c) => c,
            Err(e) => {
                fail(rb, job, format!("source {}: {e}", ep.state.addr)).await;
                walk.turn.give_back();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut step = Step {
            rb,
            job,
            conn: &mut conn,
            target_conns: HashMap::new(),
            backends: &backends,
            targets,
            classify: &work.plan.table,
            db,
            timeout,
            source: &ep,
            stuck: &mut *stuck,
        };
        match step.walk(&mut walk).await {
            Ok(()) => return,
            // The run stops at the window's end (see `mover::run`).
            Err(_) if !rb.may_move() => return,
            Err(e) => {
                // The keys of the failed round are sized again; the scan
                // goes on from where it was.
                fail(rb, job, format!("moving from {}: {e}", ep.state.addr)).await;
                walk.turn.give_back();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Where the walk of a source is: its `SCAN` cursor; keys of the window it
/// listed, by target, filling batches (`filling`) or in full batches not
/// sized yet (`listed`); keys to size one by one (`exact`: a batch that
/// held a big key, or the keys of a failed round); sized batches of
/// ordinary keys waiting for their copy (`ready`); the batch dumped in the
/// last round (`dumped`: restored on its target in this one) and the one
/// restored in the last round (`restored`: unlinked on the source in this
/// one); big keys waiting until no batch is in flight (`big`).
struct Walk {
    cursor: Bytes,
    scanned: bool,
    filling: HashMap<ShardId, Vec<Bytes>>,
    listed: VecDeque<(ShardId, Vec<Bytes>)>,
    exact: Vec<Bytes>,
    ready: VecDeque<(ShardId, Vec<Bytes>, u64)>,
    dumped: Option<Dumped>,
    restored: Option<Restored>,
    big: Vec<(ShardId, Bytes, u64)>,
    /// Keys moved since the throttle last slept.
    unthrottled: usize,
    /// Keys listed for a target they move to by copy (a postgres target,
    /// see `backend::copy`), not by `DUMP`/`RESTORE`.
    copy: Vec<(ShardId, Vec<Bytes>)>,
    /// The size of the rounds (see [`Burst::of`]), chosen each round.
    burst: Burst,
    /// Its part of the job's turns (see [`super::burst::Turns`]).
    turn: Turn,
}

/// A batch fenced on the source, with what `DUMP` gave for each key still
/// there.
struct Dumped {
    to: ShardId,
    /// Every key of the batch (all fenced).
    keys: Vec<Bytes>,
    /// The keys that were there: their `DUMP` payload and absolute expiry
    /// time in ms (0: none).
    found: Vec<(Bytes, Bytes, i64)>,
    /// Their size (`MEMORY USAGE` of the batch when it was sized).
    bytes: u64,
}

/// A batch restored on its target; its keys still on the source, fenced.
struct Restored {
    keys: Vec<Bytes>,
    found: Vec<Bytes>,
    bytes: u64,
}

impl Walk {
    fn new() -> Walk {
        Walk {
            cursor: Bytes::from_static(b"0"),
            scanned: false,
            filling: HashMap::new(),
            listed: VecDeque::new(),
            exact: Vec::new(),
            ready: VecDeque::new(),
            dumped: None,
            restored: None,
            big: Vec::new(),
            unthrottled: 0,
            copy: Vec::new(),
            burst: Burst::FULL,
            turn: Turn::default(),
        }
    }

    /// Lists a key of the window, in batches of `batch` keys.
    fn list(&mut self, to: ShardId, key: Bytes, batch: usize) {
        let keys = self.filling.entry(to).or_default();
        keys.push(key);
        if keys.len() >= batch {
            let keys = self.filling.remove(&to).unwrap_or_default();
            self.listed.push_back((to, keys));
        }
    }

    /// Once the scan is over, partial batches are listed too.
    fn flush(&mut self) {
        if self.scanned {
            let mut partial: Vec<_> = self.filling.drain().collect();
            partial.sort_by_key(|(to, _)| *to);
            self.listed.extend(partial);
        }
    }

    /// After a failed round: its keys are sized again, one by one (a key
    /// moved meanwhile is sized as gone).
    fn retry(&mut self, keys: Vec<Bytes>) {
        self.exact.extend(keys);
    }

    /// Whether a batch is being copied (fenced on the source).
    fn in_flight(&self) -> bool {
        self.dumped.is_some() || self.restored.is_some()
    }

    fn done(&self) -> bool {
        self.scanned
            && self.filling.is_empty()
            && self.listed.is_empty()
            && self.exact.is_empty()
            && self.ready.is_empty()
            && !self.in_flight()
            && self.big.is_empty()
            && self.copy.is_empty()
    }
}

/// The sizes of a batch of keys in one command: their total and the
/// largest (`MEMORY USAGE` of each; a missing key counts 0).
const BATCH_SIZES: &[u8] = b"local s, m = 0, 0 for i = 1, #KEYS do local n = redis.call('MEMORY', 'USAGE', KEYS[i]) if n then s = s + n if n > m then m = n end end end return {s, m}";

/// What one reply (or run of replies) of a pipelined round to the source
/// answers.
enum Asked {
    /// `UNLINK` of the restored keys still there and `SREM` of the whole
    /// batch from the fence (two replies).
    Release(Restored),
    /// `SADD` of the batch to the fence, then `DUMP` and `PEXPIRETIME` of
    /// each key.
    Dump(ShardId, Vec<Bytes>, u64),
    BatchSize(ShardId, Vec<Bytes>),
    Sizes(Vec<Bytes>),
    /// `SCAN` from this cursor, of this many keys.
    Scan(Bytes, usize),
}

impl Asked {
    fn keys(&self) -> &[Bytes] {
        match self {
            Asked::Release(r) => &r.keys,
            Asked::Dump(_, keys, _) | Asked::BatchSize(_, keys) | Asked::Sizes(keys) => keys,
            Asked::Scan(..) => &[],
        }
    }

    fn replies(&self) -> usize {
        match self {
            Asked::Release(r) => 1 + usize::from(!r.found.is_empty()),
            Asked::Dump(_, keys, _) => 1 + 2 * keys.len(),
            Asked::BatchSize(..) | Asked::Scan(..) => 1,
            Asked::Sizes(keys) => keys.len(),
        }
    }
}

/// One source's walk over its connection (step 3 of the module doc).
struct Step<'a> {
    rb: &'a Rebalancer,
    job: &'a Job,
    conn: &'a mut PooledConn,
    /// Dedicated connections to the targets (made when first needed).
    target_conns: HashMap<ShardId, PooledConn>,
    backends: &'a Backends,
    targets: &'a HashMap<(u32, u32), ShardId>,
    classify: &'a RoutingTable,
    db: Db,
    timeout: Duration,
    /// The source's primary (keys copied to a postgres target are read
    /// from it).
    source: &'a Arc<Endpoint>,
    /// Keys that cannot move at all (see [`Stays`]).
    stuck: &'a mut Vec<Stays>,
}

impl Step<'_> {
    /// Walks the source to its end in pipelined rounds, each one write
    /// and one read to the source (and one to a target): the release of
    /// the batch restored in the last round, at most one batch command
    /// (the fence and `DUMP` of a sized batch, or else the sizes of the
    /// next one: one script, see [`BATCH_SIZES`]; the source runs a round's
    /// commands back to back, its clients waiting), one `MEMORY USAGE` per
    /// key of a batch that held a big key, and the next `SCAN` while fewer
    /// than two batches wait; on the target, the `RESTORE` of the batch
    /// dumped in the last round. A fence left by an earlier walk (a crash,
    /// a failed round) is lifted first: its keys are still on the source,
    /// whole, and are copied again.
    async fn walk(&mut self, walk: &mut Walk) -> Result<(), MigrateError> {
        self.may_write()?;
        let mut frame = BytesMut::new();
        encode_command(&[b"DEL", MOVING_SET], &mut frame);
        let reply = request(self.conn, &frame, 1, self.timeout).await?;
        self.check("DEL of the mover's fence", &reply[0], self.source)?;
        while !walk.done() {
            // (A batch in flight is finished first: its keys stay fenced
            // until it is released.)
            // Beside clients, one source at a time (see `Turns`): a walk
            // without the turn finishes its batches in flight, then waits
            // for it with no key fenced.
            let clients = self.rb.clients_served();
            if !clients {
                walk.turn.alone();
            }
            if !walk.in_flight() {
                wait_unpaused(self.job).await;
                walk.turn.take(&self.job.turns, clients).await;
                let moving = self.job.turns.moving();
                self.rb.ctx.metrics.rebalance_sources_moving(moving);
            }
            self.may_write()?;
            while let Some((to, keys)) = walk.copy.pop() {
                let target = self.backends.shard(to).primary.clone();
                let copied = copy_keys(
                    self.rb,
                    self.job,
                    self.source,
                    &target,
                    self.db,
                    keys.clone(),
                    self.stuck,
                )
                .await;
                if let Err(e) = copied {
                    // Copied again on the retry (a key already moved is
                    // gone from the source, and skipped).
                    walk.copy.push((to, keys));
                    return Err(e);
                }
            }
            if !walk.in_flight() {
                self.move_big(walk).await?;
            }
            walk.flush();
            let busy = walk.in_flight();
            let restoring = walk.dumped.take();
            let mut asked = Vec::with_capacity(4);
            if let Some(r) = walk.restored.take() {
                asked.push(Asked::Release(r));
            }
            // One batch command per round: a batch's fence and `DUMP`s or
            // the sizes of the next batch, never both (the source would run
            // them back to back, its clients waiting for both). No new
            // batch while the batches in flight must end first: big keys
            // wait for them, a pause or a throttle waits until none is
            // fenced.
            let drain = !walk.big.is_empty()
                || *self.job.paused.borrow()
                || (self.job.throttle.load(Ordering::Relaxed) > 0 && busy)
                || walk.turn.must_wait(clients);
            if !drain && let Some((to, keys, bytes)) = walk.ready.pop_front() {
                asked.push(Asked::Dump(to, keys, bytes));
            } else if let Some((to, keys)) = walk.listed.pop_front() {
                asked.push(Asked::BatchSize(to, keys));
            }
            if !walk.exact.is_empty() {
                asked.push(Asked::Sizes(std::mem::take(&mut walk.exact)));
            }
            let limit = self.job.throttle.load(Ordering::Relaxed);
            walk.burst = Burst::of(limit, clients);
            (self.rb.ctx.metrics).rebalance_small_bursts(walk.burst == Burst::SMALL);
            if !walk.scanned && walk.listed.len() < 2 {
                asked.push(Asked::Scan(walk.cursor.clone(), walk.burst.scan));
            }
            if asked.is_empty() && restoring.is_none() {
                continue;
            }
            let mut inflight: Vec<Bytes> = asked.iter().flat_map(|a| a.keys()).cloned().collect();
            if let Some(d) = &restoring {
                inflight.extend(d.keys.iter().cloned());
            }
            let round = async {
                let (on_source, on_target) = self.round(&asked, restoring.as_ref()).await;
                let replies = on_source?;
                let restored = on_target?;
                self.answered(walk, asked, replies, restoring, restored)
            };
            match round.await {
                Ok(moved) => {
                    // The throttle sleeps with no key fenced.
                    walk.unthrottled += moved;
                    if !walk.in_flight() {
                        throttle(self.job, std::mem::take(&mut walk.unthrottled)).await;
                    }
                }
                Err(e) => {
                    walk.retry(inflight);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Sends one round: `asked` to the source, the `RESTORE` of
    /// `restoring` to its target, at once; returns both sides' replies.
    async fn round(
        &mut self,
        asked: &[Asked],
        restoring: Option<&Dumped>,
    ) -> (
        Result<Vec<Bytes>, MigrateError>,
        Result<Vec<Bytes>, MigrateError>,
    ) {
        let mut frames = BytesMut::new();
        let mut replies = 0;
        for a in asked {
            encode_asked(a, &mut frames);
            replies += a.replies();
        }
        let timeout = self.timeout;
        let target = match restoring {
            Some(d) if !d.found.is_empty() => match self.target_conn(d.to).await {
                Ok(()) => {
                    let mut frames = BytesMut::new();
                    for (key, payload, at) in &d.found {
                        let at = at.to_string();
                        encode_command(
                            &[
                                b"RESTORE",
                                key,
                                at.as_bytes(),
                                payload,
                                b"REPLACE",
                                b"ABSTTL",
                            ],
                            &mut frames,
                        );
                    }
                    Some((d.to, frames, d.found.len()))
                }
                Err(e) => return (Ok(Vec::new()), Err(e)),
            },
            _ => None,
        };
        let source = async {
            if replies == 0 {
                return Ok(Vec::new());
            }
            request(self.conn, &frames, replies, timeout).await
        };
        let on_target = async {
            match &target {
                Some((to, frames, n)) => match self.target_conns.get_mut(to) {
                    Some(conn) => request(conn, frames, *n, timeout).await,
                    None => Ok(Vec::new()),
                },
                None => Ok(Vec::new()),
            }
        };
        tokio::join!(source, on_target)
    }

    /// In a fleet, a mover that may have lost its lease writes nothing
    /// more: another one may have taken over, and lifted this one's fences.
    fn may_write(&self) -> Result<(), MigrateError> {
        if self.rb.may_move() {
            Ok(())
        } else {
            Err(FenceError::LeaseLost.into())
        }
    }

    /// Makes sure there is a dedicated connection to target `to`.
    async fn target_conn(&mut self, to: ShardId) -> Result<(), MigrateError> {
        if !self.target_conns.contains_key(&to) {
            let wire = Wire {
                proto: Protocol::Resp2,
                db: self.db,
            };
            let conn = self.backends.shard(to).primary.dedicated(wire).await?;
            self.target_conns.insert(to, conn);
        }
        Ok(())
    }

    /// An error reply to a step of a copy: the round fails (its keys are
    /// sized and copied again).
    fn check(&self, step: &'static str, reply: &[u8], on: &Endpoint) -> Result<(), MigrateError> {
        if reply::is_error(reply) {
            return Err(MigrateError::Refused {
                step,
                addr: on.state.addr.clone(),
                reason: reply::error_text(reply).unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Reads one round's replies, in the order the round asked; returns
    /// how many keys it moved.
    fn answered(
        &mut self,
        walk: &mut Walk,
        asked: Vec<Asked>,
        replies: Vec<Bytes>,
        restoring: Option<Dumped>,
        restored: Vec<Bytes>,
    ) -> Result<usize, MigrateError> {
        let batch = walk.burst.batch;
        let mut moved = 0;
        if let Some(d) = restoring {
            let target = self.backends.shard(d.to).primary.clone();
            for r in &restored {
                self.check("RESTORE", r, &target)?;
            }
            walk.restored = Some(Restored {
                keys: d.keys,
                found: d.found.into_iter().map(|(k, _, _)| k).collect(),
                bytes: d.bytes,
            });
        }
        let mut r = replies.into_iter();
        for a in asked {
            match a {
                Asked::Release(done) => {
                    for _ in 0..1 + usize::from(!done.found.is_empty()) {
                        let reply = r.next().unwrap_or_default();
                        self.check("UNLINK of moved keys", &reply, self.source)?;
                    }
                    let n = done.found.len();
                    self.job.keys.fetch_add(n as u64, Ordering::Relaxed);
                    self.job.bytes.fetch_add(done.bytes, Ordering::Relaxed);
                    self.rb.ctx.metrics.rebalance_moved(n as u64, done.bytes);
                    moved += n;
                }
                Asked::Dump(to, keys, bytes) => {
                    let fenced = r.next().unwrap_or_default();
                    self.check("SADD to the mover's fence", &fenced, self.source)?;
                    let mut found = Vec::with_capacity(keys.len());
                    for k in &keys {
                        let payload = r.next().unwrap_or_default();
                        let at = r.next().unwrap_or_default();
                        self.check("DUMP", &payload, self.source)?;
                        // Nil: the key is gone (expired, deleted, or moved
                        // by a command before the fence).
                        let Some(payload) = reply::bulk(&payload) else {
                            continue;
                        };
                        let at = reply::integer(&at).unwrap_or(-1).max(0);
                        found.push((k.clone(), payload, at));
                    }
                    walk.dumped = Some(Dumped {
                        to,
                        keys,
                        found,
                        bytes,
                    });
                }
                Asked::BatchSize(to, keys) => {
                    let reply = r.next().unwrap_or_default();
                    let sizes = reply::array_elements(&reply).ok().flatten();
                    let ints: Option<Vec<i64>> =
                        sizes.map(|s| s.iter().filter_map(|f| reply::integer(f)).collect());
                    match ints.as_deref() {
                        Some(&[sum, max])
                            if (max.max(0) as u64) < BIG_KEY_BYTES
                                && (sum.max(0) as u64) <= BATCH_BYTES =>
                        {
                            walk.ready.push_back((to, keys, sum.max(0) as u64));
                        }
                        // A big key among them, too many bytes for one
                        // batch (or a shard that refused the script): each
                        // key is sized on its own.
                        _ => walk.exact.extend(keys),
                    }
                }
                Asked::Sizes(keys) => {
                    let mut small: HashMap<ShardId, Vec<(Bytes, u64)>> = HashMap::new();
                    for k in keys {
                        let s = r.next().unwrap_or_default();
                        // Nil: the key is gone (expired, deleted, or moved
                        // by a command).
                        let Some(n) = reply::integer(&s) else {
                            continue;
                        };
                        let n = n.max(0) as u64;
                        match self.target_of(&k) {
                            Some(to) if n >= BIG_KEY_BYTES => walk.big.push((to, k, n)),
                            Some(to) => small.entry(to).or_default().push((k, n)),
                            None => {}
                        }
                    }
                    let mut small: Vec<_> = small.into_iter().collect();
                    small.sort_by_key(|(to, _)| *to);
                    for (to, sized) in small {
                        for (keys, bytes) in batches(sized, batch) {
                            walk.ready.push_back((to, keys, bytes));
                        }
                    }
                }
                Asked::Scan(_, _) => {
                    let reply = r.next().unwrap_or_default();
                    let (next, keys) = scan_reply(&reply)?;
                    let mut copy: HashMap<ShardId, Vec<Bytes>> = HashMap::new();
                    for k in keys {
                        // The fence itself is no key of the window.
                        if k.as_ref() == MOVING_SET {
                            continue;
                        }
                        let Some(to) = self.target_of(&k) else {
                            continue;
                        };
                        if needs_copy(self.source, &self.backends.shard(to).primary) {
                            copy.entry(to).or_default().push(k);
                        } else {
                            walk.list(to, k, batch);
                        }
                    }
                    walk.copy.extend(copy);
                    walk.scanned = next.as_ref() == b"0";
                    walk.cursor = next;
                }
            }
        }
        Ok(moved)
    }

    /// The target of a key of the window (`None`: not in the window).
    fn target_of(&self, key: &[u8]) -> Option<ShardId> {
        let unit = (self.classify.class_of(key), self.classify.slot_of(key).0);
        self.targets.get(&unit).copied()
    }

    /// The big keys found so far, one by one, fenced, piece by piece (see
    /// [`move_big_key`]); only while no batch is in flight (its keys stay
    /// fenced until it is released).
    async fn move_big(&mut self, walk: &mut Walk) -> Result<(), MigrateError> {
        while let Some((to, k, n)) = walk.big.pop() {
            let target = self.backends.shard(to).primary.clone();
            let t0 = Instant::now();
            let fences = &self.rb.ctx.fences;
            let moved = move_big_key(fences, self.conn, &target, self.db, &k, self.timeout).await;
            let how = match moved {
                Ok(BigKeyMove::Pieces(pieces)) => {
                    format!("copied in {pieces} pieces; the source was never blocked for long")
                }
                Ok(BigKeyMove::Gone) => continue,
                Ok(BigKeyMove::Whole) => {
                    "moved in one MIGRATE; its source was blocked while it copied".to_owned()
                }
                Err(e) => {
                    // Sized again after the failure.
                    walk.exact.push(k);
                    return Err(e);
                }
            };
            self.job.keys.fetch_add(1, Ordering::Relaxed);
            self.job.bytes.fetch_add(n, Ordering::Relaxed);
            self.job.big_keys.fetch_add(1, Ordering::Relaxed);
            self.rb.ctx.metrics.rebalance_moved(1, n);
            tracing::warn!(
                key = %String::from_utf8_lossy(&k),
                bytes = n,
                to = %target.state.addr,
                ms = t0.elapsed().as_millis() as u64,
                "moved a big key: {how}"
            );
            throttle(self.job, 1).await;
        }
        Ok(())
    }
}

/// Encodes the source's commands of one [`Asked`].
fn encode_asked(a: &Asked, out: &mut BytesMut) {
    match a {
        Asked::Release(r) => {
            if !r.found.is_empty() {
                let mut args: Vec<&[u8]> = vec![b"UNLINK"];
                args.extend(r.found.iter().map(|k| k.as_ref()));
                encode_command(&args, out);
            }
            let mut args: Vec<&[u8]> = vec![b"SREM", MOVING_SET];
            args.extend(r.keys.iter().map(|k| k.as_ref()));
            encode_command(&args, out);
        }
        Asked::Dump(_, keys, _) => {
            let mut args: Vec<&[u8]> = vec![b"SADD", MOVING_SET];
            args.extend(keys.iter().map(|k| k.as_ref()));
            encode_command(&args, out);
            for k in keys {
                encode_command(&[b"DUMP", k], out);
                encode_command(&[b"PEXPIRETIME", k], out);
            }
        }
        Asked::BatchSize(_, keys) => {
            let n = keys.len().to_string();
            let mut args: Vec<&[u8]> = vec![b"EVAL", BATCH_SIZES, n.as_bytes()];
            args.extend(keys.iter().map(|k| k.as_ref()));
            encode_command(&args, out);
        }
        Asked::Sizes(keys) => {
            for k in keys {
                encode_command(&[b"MEMORY", b"USAGE", k], out);
            }
        }
        Asked::Scan(cursor, count) => {
            let count = count.to_string();
            encode_command(&[b"SCAN", cursor, b"COUNT", count.as_bytes()], out);
        }
    }
}

/// Keys sized one by one, in batches of at most `batch` keys and
/// [`BATCH_BYTES`] bytes (a key larger than that alone), with their bytes.
fn batches(sized: Vec<(Bytes, u64)>, batch: usize) -> Vec<(Vec<Bytes>, u64)> {
    let mut out: Vec<(Vec<Bytes>, u64)> = Vec::new();
    for (k, n) in sized {
        match out.last_mut() {
            Some((keys, bytes)) if keys.len() < batch && *bytes + n <= BATCH_BYTES => {
                keys.push(k);
                *bytes += n;
            }
            _ => out.push((vec![k], n)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_at_most_their_keys_and_bytes() {
        let key = |i: usize| Bytes::from(format!("k{i}"));
        let small: Vec<(Bytes, u64)> = (0..250).map(|i| (key(i), 10)).collect();
        let b = batches(small, 100);
        assert_eq!(
            b.iter().map(|(k, _)| k.len()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        assert_eq!(b[2].1, 500);
        // 3 MiB keys: two per batch; one larger than a batch goes alone.
        let mut large: Vec<(Bytes, u64)> = (0..5).map(|i| (key(i), 3 << 20)).collect();
        large.insert(2, (key(9), BATCH_BYTES + 1));
        let b = batches(large, 100);
        let sizes: Vec<usize> = b.iter().map(|(k, _)| k.len()).collect();
        assert_eq!(sizes, [2, 1, 2, 1]);
        assert!(b.iter().all(|(k, n)| k.len() == 1 || *n <= BATCH_BYTES));
        assert_eq!(b.iter().map(|(k, _)| k.len()).sum::<usize>(), 6);
    }

    #[test]
    fn small_bursts_list_and_size_small_batches() {
        let key = |i: usize| Bytes::from(format!("k{i}"));
        let sized: Vec<(Bytes, u64)> = (0..60).map(|i| (key(i), 10)).collect();
        let b = batches(sized, Burst::SMALL.batch);
        assert_eq!(
            b.iter().map(|(k, _)| k.len()).collect::<Vec<_>>(),
            [25, 25, 10]
        );
        let mut walk = Walk::new();
        for i in 0..30 {
            walk.list(ShardId(1), key(i), Burst::SMALL.batch);
        }
        assert_eq!(walk.listed.len(), 1);
        assert_eq!(walk.listed[0].1.len(), 25);
        assert_eq!(walk.filling[&ShardId(1)].len(), 5);
    }
}

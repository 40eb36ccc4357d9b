//! Step 3 between Redis servers: the walk of one source database, in
//! pipelined rounds over one dedicated connection: `SCAN` the source, size
//! each batch of the window's keys with one script ([`BATCH_SIZES`]), move
//! it with one `MIGRATE ... REPLACE KEYS` (atomic on the source, TTLs
//! kept), big keys one by one, and keys for a postgres target by copy.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::postgres::copy_keys;
use super::{BIG_KEY_BYTES, Work, fail, throttle, wait_unpaused};
use crate::backend::copy::{Stays, needs_copy};
use crate::backend::dedicated::PooledConn;
use crate::backend::migrate::{
    BigKeyMove, MigrateError, Migrated, migrate_frame, migrated, move_big_key, request, scan_reply,
};
use crate::backend::{Backends, Db, Endpoint, Wire};
use crate::protocol::{Protocol, reply, request::encode_command};
use crate::rebalance::{Job, Rebalancer};
use crate::router::{RoutingTable, ShardId};

/// Keys per `MIGRATE`.
const BATCH: usize = 100;

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
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let mut step = Step {
            rb,
            job,
            conn: &mut conn,
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
            Err(e) => {
                // The keys of the failed round are sized again; the scan
                // goes on from where it was.
                fail(rb, job, format!("moving from {}: {e}", ep.state.addr)).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Where the walk of a source is: its `SCAN` cursor; keys of the window it
/// listed, by target, filling batches (`filling`) or in full batches not
/// sized yet (`listed`); keys to size one by one (`exact`: a batch that
/// held a big key); and sized batches of ordinary keys waiting for their
/// `MIGRATE` (`ready`).
struct Walk {
    cursor: Bytes,
    scanned: bool,
    filling: HashMap<ShardId, Vec<Bytes>>,
    listed: VecDeque<(ShardId, Vec<Bytes>)>,
    exact: Vec<Bytes>,
    ready: VecDeque<(ShardId, Vec<Bytes>, u64)>,
    /// Keys listed for a target they move to by copy (a postgres target,
    /// see `backend::copy`), not by `MIGRATE`.
    copy: Vec<(ShardId, Vec<Bytes>)>,
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
            copy: Vec::new(),
        }
    }

    /// Lists a key of the window.
    fn list(&mut self, to: ShardId, key: Bytes) {
        let keys = self.filling.entry(to).or_default();
        keys.push(key);
        if keys.len() >= BATCH {
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

    fn done(&self) -> bool {
        self.scanned
            && self.filling.is_empty()
            && self.listed.is_empty()
            && self.exact.is_empty()
            && self.ready.is_empty()
            && self.copy.is_empty()
    }
}

/// The sizes of a batch of keys in one command: their total and the
/// largest (`MEMORY USAGE` of each; a missing key counts 0).
const BATCH_SIZES: &[u8] = b"local s, m = 0, 0 for i = 1, #KEYS do local n = redis.call('MEMORY', 'USAGE', KEYS[i]) if n then s = s + n if n > m then m = n end end end return {s, m}";

/// What one reply (or run of replies) of a pipelined round answers.
enum Asked {
    Migrate(ShardId, Vec<Bytes>, u64),
    BatchSize(ShardId, Vec<Bytes>),
    Sizes(Vec<Bytes>),
    Scan,
}

impl Asked {
    fn keys(&self) -> &[Bytes] {
        match self {
            Asked::Migrate(_, keys, _) | Asked::BatchSize(_, keys) | Asked::Sizes(keys) => keys,
            Asked::Scan => &[],
        }
    }
}

/// One source's walk over its connection (step 3 of the module doc).
struct Step<'a> {
    rb: &'a Rebalancer,
    job: &'a Job,
    conn: &'a mut PooledConn,
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
    /// and one read: at most one `MIGRATE` of a sized batch (the source
    /// runs it synchronously: never more than one batch in a row), the
    /// sizes of the next batch (one script for the batch, see
    /// [`BATCH_SIZES`]; one `MEMORY USAGE` per key for a batch that held a
    /// big key), and the next `SCAN` while fewer than two batches wait.
    async fn walk(&mut self, walk: &mut Walk) -> Result<(), MigrateError> {
        while !walk.done() {
            wait_unpaused(self.job).await;
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
            walk.flush();
            let mut frames = BytesMut::new();
            let mut asked = Vec::with_capacity(4);
            let mut replies = 0;
            if let Some((to, keys, bytes)) = walk.ready.pop_front() {
                let target = &self.backends.shard(to).primary.state;
                let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_ref()).collect();
                let ms = self.timeout.as_millis() as u64;
                frames.extend_from_slice(&migrate_frame(target, self.db, &refs, ms));
                replies += 1;
                asked.push(Asked::Migrate(to, keys, bytes));
            }
            // One batch command per round: a `MIGRATE` or the sizes of
            // the next batch, never both (the source would run them back
            // to back, its clients waiting for both).
            if asked.is_empty()
                && let Some((to, keys)) = walk.listed.pop_front()
            {
                let n = keys.len().to_string();
                let mut args: Vec<&[u8]> = vec![b"EVAL", BATCH_SIZES, n.as_bytes()];
                args.extend(keys.iter().map(|k| k.as_ref()));
                encode_command(&args, &mut frames);
                replies += 1;
                asked.push(Asked::BatchSize(to, keys));
            }
            if !walk.exact.is_empty() {
                let keys = std::mem::take(&mut walk.exact);
                for k in &keys {
                    encode_command(&[b"MEMORY", b"USAGE", k], &mut frames);
                }
                replies += keys.len();
                asked.push(Asked::Sizes(keys));
            }
            if !walk.scanned && walk.listed.len() < 2 {
                encode_command(&[b"SCAN", &walk.cursor, b"COUNT", b"1000"], &mut frames);
                replies += 1;
                asked.push(Asked::Scan);
            }
            if asked.is_empty() {
                continue;
            }
            let inflight: Vec<Bytes> = asked.iter().flat_map(|a| a.keys()).cloned().collect();
            let wait = if matches!(asked.first(), Some(Asked::Migrate(..))) {
                self.timeout * 2
            } else {
                self.timeout
            };
            let round = async {
                let replies = request(self.conn, &frames, replies, wait).await?;
                self.answered(walk, asked, replies).await
            };
            if let Err(e) = round.await {
                walk.retry(inflight);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Reads one round's replies, in the order the round asked; moves the
    /// big keys it sized; throttles by the keys it moved.
    async fn answered(
        &mut self,
        walk: &mut Walk,
        asked: Vec<Asked>,
        replies: Vec<Bytes>,
    ) -> Result<(), MigrateError> {
        let mut r = replies.into_iter();
        let mut big = Vec::new();
        let mut moved = 0;
        for a in asked {
            match a {
                Asked::Migrate(to, keys, bytes) => {
                    let reply = r.next().unwrap_or_default();
                    self.migrated(to, &keys, bytes, &reply)?;
                    moved += keys.len();
                }
                Asked::BatchSize(to, keys) => {
                    let reply = r.next().unwrap_or_default();
                    let sizes = reply::array_elements(&reply).ok().flatten();
                    let ints: Option<Vec<i64>> =
                        sizes.map(|s| s.iter().filter_map(|f| reply::integer(f)).collect());
                    match ints.as_deref() {
                        Some(&[sum, max]) if (max.max(0) as u64) < BIG_KEY_BYTES => {
                            walk.ready.push_back((to, keys, sum.max(0) as u64));
                        }
                        // A big key among them (or a shard that refused the
                        // script): each key is sized on its own.
                        _ => walk.exact.extend(keys),
                    }
                }
                Asked::Sizes(keys) => {
                    let mut small: HashMap<ShardId, (Vec<Bytes>, u64)> = HashMap::new();
                    for k in keys {
                        let s = r.next().unwrap_or_default();
                        // Nil: the key is gone (expired, deleted, or moved
                        // by a command).
                        let Some(n) = reply::integer(&s) else {
                            continue;
                        };
                        let n = n.max(0) as u64;
                        match self.target_of(&k) {
                            Some(to) if n >= BIG_KEY_BYTES => big.push((to, k, n)),
                            Some(to) => {
                                let e = small.entry(to).or_default();
                                e.0.push(k);
                                e.1 += n;
                            }
                            None => {}
                        }
                    }
                    let mut small: Vec<_> = small.into_iter().collect();
                    small.sort_by_key(|(to, _)| *to);
                    for (to, (keys, bytes)) in small {
                        walk.ready.push_back((to, keys, bytes));
                    }
                }
                Asked::Scan => {
                    let reply = r.next().unwrap_or_default();
                    let (next, keys) = scan_reply(&reply)?;
                    let mut copy: HashMap<ShardId, Vec<Bytes>> = HashMap::new();
                    for k in keys {
                        let Some(to) = self.target_of(&k) else {
                            continue;
                        };
                        if needs_copy(self.source, &self.backends.shard(to).primary) {
                            copy.entry(to).or_default().push(k);
                        } else {
                            walk.list(to, k);
                        }
                    }
                    walk.copy.extend(copy);
                    walk.scanned = next.as_ref() == b"0";
                    walk.cursor = next;
                }
            }
        }
        throttle(self.job, moved).await;
        let mut big = big.into_iter();
        while let Some((to, k, n)) = big.next() {
            if let Err(e) = self.move_big(to, &k, n).await {
                // Sized again after the failure, with the big keys after it.
                walk.exact.push(k);
                walk.exact.extend(big.map(|(_, k, _)| k));
                return Err(e);
            }
        }
        Ok(())
    }

    /// The target of a key of the window (`None`: not in the window).
    fn target_of(&self, key: &[u8]) -> Option<ShardId> {
        let unit = (self.classify.class_of(key), self.classify.slot_of(key).0);
        self.targets.get(&unit).copied()
    }

    /// Counts a `MIGRATE` of ordinary keys, or says why it failed.
    fn migrated(
        &self,
        to: ShardId,
        keys: &[Bytes],
        bytes: u64,
        reply: &[u8],
    ) -> Result<(), MigrateError> {
        match migrated(reply) {
            Migrated::Moved => {
                self.job
                    .keys
                    .fetch_add(keys.len() as u64, Ordering::Relaxed);
                self.job.bytes.fetch_add(bytes, Ordering::Relaxed);
                self.rb
                    .ctx
                    .metrics
                    .rebalance_moved(keys.len() as u64, bytes);
                Ok(())
            }
            Migrated::NoKey => Ok(()),
            Migrated::Failed(reason) => Err(MigrateError::Refused {
                step: "MIGRATE",
                addr: self.backends.shard(to).primary.state.addr.clone(),
                reason,
            }),
        }
    }

    /// One big key, fenced, piece by piece (see [`move_big_key`]).
    async fn move_big(&mut self, to: ShardId, k: &Bytes, n: u64) -> Result<(), MigrateError> {
        let target = self.backends.shard(to).primary.clone();
        let t0 = Instant::now();
        let fences = &self.rb.ctx.fences;
        let how = match move_big_key(fences, self.conn, &target, self.db, k, self.timeout).await? {
            BigKeyMove::Pieces(pieces) => {
                format!("copied in {pieces} pieces; the source was never blocked for long")
            }
            BigKeyMove::Gone => return Ok(()),
            BigKeyMove::Whole => {
                "moved in one MIGRATE; its source was blocked while it copied".to_owned()
            }
        };
        self.job.keys.fetch_add(1, Ordering::Relaxed);
        self.job.bytes.fetch_add(n, Ordering::Relaxed);
        self.job.big_keys.fetch_add(1, Ordering::Relaxed);
        self.rb.ctx.metrics.rebalance_moved(1, n);
        tracing::warn!(
            key = %String::from_utf8_lossy(k),
            bytes = n,
            to = %target.state.addr,
            ms = t0.elapsed().as_millis() as u64,
            "moved a big key: {how}"
        );
        throttle(self.job, 1).await;
        Ok(())
    }
}

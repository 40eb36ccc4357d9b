//! Group commit: plain `SET key value` and `INCR`/`DECR`/`INCRBY`/`DECRBY`
//! from the clients of one serving thread, in flight at the same time, are
//! committed together in one PostgreSQL transaction, so that durable
//! writes are not limited to one commit (one WAL flush, one transaction's
//! overhead) per command.
//!
//! Each serving thread has one [`Committer`] per endpoint. A lane hands it
//! such a write and waits for the outcome (so the client's next request
//! still runs after it). The committer takes everything queued when it
//! gets to it (up to [`MAX_BATCH`]; one batch at a time, [`USUAL_IN_FLIGHT`],
//! unless one is slow, then at most [`IN_FLIGHT`]) and runs the batch:
//!
//! 1. `BEGIN`; try the advisory locks of the batch's keys
//!    (`pg_try_advisory_xact_lock`, the same per-key locks every writer
//!    takes, see "Writes are serialised per key" in [`super::commands`])
//!    and set a short `lock_timeout` ([`LOCK_TIMEOUT`]) for the rest;
//! 2. read the rows of the keys that INCRs need, `FOR UPDATE`, with a
//!    snapshot taken after the locks were granted;
//! 3. apply the commands in arrival order to those rows in memory, exactly
//!    as the commands would one after the other (a key's second command
//!    sees the first one's result); a command that fails (`WRONGTYPE`,
//!    not an integer, overflow) answers its Redis error and changes
//!    nothing, as it would alone;
//! 4. write each changed key's final string once (one upsert statement);
//! 5. `COMMIT`, then answer every command.
//!
//! A batch of plain SETs only takes a shorter path ([`commit_sets`]): one
//! statement, `sg_try_set_strings` (migration 0005), outside an explicit
//! transaction, does steps 1, 4 and 5 in one round trip instead of four.
//!
//! # Guarantees, and why
//!
//! - *Per-key order and linearizability*: a batch holds the locks of all its
//!   keys from step 1 until its commit, like any single writer, and reads
//!   after they were granted; so for each key the batch is one more writer
//!   in the key's lock order, and its commands take effect, in arrival
//!   order, at its commit, which is before any of them is answered. A
//!   client's own requests stay in order because its lane waits for each
//!   outcome before the next request.
//! - *Atomicity per command*: a command's whole effect is in the one
//!   transaction, which commits entirely or not at all.
//! - *No acknowledged write lost or doubled*: a command is answered only
//!   after the commit succeeded. If anything fails before `COMMIT` is sent
//!   (a lock or statement timeout, a lost connection), the transaction is
//!   rolled back (a lost connection rolls back on the server), nothing of
//!   the batch is visible, and every command runs again on its own lane,
//!   as it would have without group commit. If `COMMIT` itself fails, the
//!   outcome is unknown, as for a single command: each gets the error,
//!   none runs again.
//! - *One client's lock wait stalls no other*: the batch never waits for a
//!   key lock. A key whose lock another writer holds (a slow EXEC, a
//!   writer waiting on a row lock) is left out: its commands run on their
//!   own lanes, which wait as they would without group commit, while the
//!   batch goes on. A row lock held by something that does not take the
//!   key locks (another application's transaction, the reaper's short
//!   deletes) can still make the upsert wait: `lock_timeout` bounds that
//!   wait, after which the batch rolls back and its commands run alone.
//!   Two batches never wait for each other's rows: each writes only keys
//!   whose locks it holds.
//! - *A command that arrives alone* (no other write in flight on its
//!   thread) is handed back to its lane to run as before (one statement
//!   for SET), so latency at low load does not grow; the committer waits
//!   for it (at most [`ALONE_WAIT`]) so that writes arriving meanwhile
//!   queue up and form the next batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::Row as _;
use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::commands::{STRING, lock_ids, msg};
use super::locked::lock_id;
use super::turns::Turns;
use super::values::parse_int;
use crate::backend::EndpointState;
use crate::error::BackendError;
use crate::protocol::Reply;
use crate::router::placement::key_hash;

/// Most commands in one batch.
pub const MAX_BATCH: usize = 256;
/// Batches of one thread's committer in flight at once while none is slow:
/// one, so that the next batch forms while it commits and holds every write
/// that arrived meanwhile. Measured against 4 (BENCHMARKS.md, "PostgreSQL
/// shards against pgbench"): batches of about 13 SETs instead of 10, 11-25%
/// less postgres CPU and 10-14% less proxy CPU per SET; SETs/s within noise.
pub const USUAL_IN_FLIGHT: usize = 1;
/// A batch running longer than this (a row lock held outside the proxy, up
/// to [`LOCK_TIMEOUT`]; a slow disk) lets the next one start, so that it
/// delays other writes by at most this long.
pub const SLOW_BATCH: Duration = Duration::from_millis(5);
/// Batches of one thread's committer in flight at once, slow ones included
/// (each holds a connection of the thread's pool).
pub const IN_FLIGHT: usize = 4;
/// How long a batch waits for a row lock (held by a session that does not
/// take the key locks) before it rolls back and lets its commands run alone.
pub const LOCK_TIMEOUT: &str = "100ms";
/// Largest SET value group commit takes: a batch's values travel in one
/// statement, and big values gain nothing from sharing a commit.
pub const MAX_VALUE: usize = 64 * 1024;
/// How long the committer waits for a command it handed back to run alone.
pub const ALONE_WAIT: Duration = Duration::from_millis(10);

/// A write group commit can take, parsed from its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `SET key value` without options.
    Set { key: Bytes, value: Bytes },
    /// `INCR`, `DECR`, `INCRBY`, `DECRBY` with a valid increment.
    Incr { key: Bytes, by: i64 },
}

impl Op {
    /// The write `args` asks for, if group commit takes it; anything else
    /// (other commands, options, wrong arity, an invalid increment, whose
    /// error the command answers without touching the database, values over
    /// [`MAX_VALUE`]) runs on its own.
    pub fn of(args: &[Bytes]) -> Option<Op> {
        let (name, a) = args.split_first()?;
        if name.len() > 6 {
            return None;
        }
        let mut lower = [0u8; 6];
        lower[..name.len()].copy_from_slice(name);
        lower.make_ascii_lowercase();
        let incr = |key: &Bytes, by| {
            Some(Op::Incr {
                key: key.clone(),
                by,
            })
        };
        match (&lower[..name.len()], a) {
            (b"set", [key, value]) if value.len() <= MAX_VALUE => Some(Op::Set {
                key: key.clone(),
                value: value.clone(),
            }),
            (b"incr", [key]) => incr(key, 1),
            (b"decr", [key]) => incr(key, -1),
            (b"incrby", [key, n]) => incr(key, parse_int(n)?),
            (b"decrby", [key, n]) => match parse_int(n)? {
                i64::MIN => None,
                n => incr(key, -n),
            },
            _ => None,
        }
    }

    fn key(&self) -> &Bytes {
        match self {
            Op::Set { key, .. } | Op::Incr { key, .. } => key,
        }
    }
}

/// What became of a write handed to the committer.
#[derive(Debug)]
pub enum Outcome {
    /// Committed (or failed at commit): the reply.
    Done(Result<Reply, BackendError>),
    /// Run it on its own, now. The committer may wait for it: drop the
    /// sender once it ran.
    Alone(Option<oneshot::Sender<()>>),
}

struct Pending {
    op: Op,
    reply: oneshot::Sender<Outcome>,
}

/// A serving thread's group committer for one endpoint (cheap to clone;
/// the committer ends when the last clone is dropped).
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Pending>,
    addr: Arc<str>,
}

impl Committer {
    /// Starts a committer on the current runtime (the serving thread's),
    /// writing through `pool` on turns of `turns`.
    pub fn start(state: Arc<EndpointState>, pool: PgPool, turns: Turns, slots: u32) -> Committer {
        let (tx, rx) = mpsc::unbounded_channel();
        let addr = Arc::from(state.addr.as_str());
        tokio::spawn(commit_loop(state, pool, turns, slots, rx));
        Committer { tx, addr }
    }

    /// Hands `op` to the committer and waits for the outcome.
    pub async fn run(&self, op: Op) -> Outcome {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(p)) = self.tx.send(Pending { op, reply }) {
            // The committer is gone and never saw it: it may run alone.
            drop(p);
            return Outcome::Alone(None);
        }
        // Dropped unanswered only if the batch's task died, when its commit
        // may have happened: never run it again.
        rx.await.unwrap_or_else(|_| {
            Outcome::Done(Err(BackendError::ConnectionLost {
                addr: self.addr.to_string(),
                reason: "postgres group committer stopped".to_owned(),
            }))
        })
    }
}

/// Takes the queued writes, in batches, until every [`Committer`] is gone.
async fn commit_loop(
    state: Arc<EndpointState>,
    pool: PgPool,
    turns: Turns,
    slots: u32,
    rx: mpsc::UnboundedReceiver<Pending>,
) {
    let flight = super::batching::Flight {
        usual: USUAL_IN_FLIGHT,
        slow: Some(SLOW_BATCH),
        most: IN_FLIGHT,
    };
    super::batching::batches(rx, flight, MAX_BATCH, move |batch| {
        let (state, pool, turns) = (state.clone(), pool.clone(), turns.clone());
        async move { run_batch(&state, &pool, &turns, slots, batch).await }
    })
    .await;
}

/// Runs one batch and answers each of its commands.
async fn run_batch(
    state: &EndpointState,
    pool: &PgPool,
    turns: &Turns,
    slots: u32,
    batch: Vec<Pending>,
) {
    if batch.len() == 1 {
        state.metrics.pg_group_commit("alone", 1);
        let (done, ran) = oneshot::channel();
        if let Some(p) = batch.into_iter().next() {
            let _ = p.reply.send(Outcome::Alone(Some(done)));
        }
        let _ = tokio::time::timeout(ALONE_WAIT, ran).await;
        return;
    }
    // A connection of the thread's pool, in turn (within the command
    // timeout: past it each command is answered the timeout, unrun).
    let turn = match tokio::time::timeout(state.options.command_timeout, turns.take()).await {
        Ok(turn) => turn,
        Err(_) => Err(super::turns::timed_out(state)),
    };
    let _turn = match turn {
        Ok(turn) => turn,
        Err(e) => {
            for p in batch {
                let _ = p.reply.send(Outcome::Done(Err(e.clone())));
            }
            return;
        }
    };
    if let Err(e) = state.check_lease_fence() {
        for p in batch {
            let _ = p.reply.send(Outcome::Done(Err(e.clone())));
        }
        return;
    }
    let ops: Vec<&Op> = batch.iter().map(|p| &p.op).collect();
    let result = commit(pool, slots, &ops).await;
    let mut replies: Vec<Option<Outcome>> = match result {
        Ok(replies) => {
            let n = replies.iter().filter(|r| r.is_some()).count();
            if n > 0 {
                state.metrics.pg_batch(n);
                state.metrics.pg_group_commit("batched", n);
            }
            if n < replies.len() {
                state
                    .metrics
                    .pg_group_commit("lock_busy", replies.len() - n);
            }
            replies
                .into_iter()
                .map(|r| r.map(|r| Outcome::Done(Ok(r))))
                .collect()
        }
        Err(Failed::BeforeCommit(e)) => {
            tracing::debug!(endpoint = %state.addr, error = %e, "group commit rolled back; its commands run alone");
            state.metrics.pg_group_commit("batch_failed", batch.len());
            batch.iter().map(|_| Some(Outcome::Alone(None))).collect()
        }
        Err(Failed::AtCommit(e)) => {
            state.metrics.pg_group_commit("error", batch.len());
            let e = super::backend_error(&state.addr, e);
            batch
                .iter()
                .map(|_| Some(Outcome::Done(Err(e.clone()))))
                .collect()
        }
    };
    for (p, r) in batch.into_iter().zip(replies.iter_mut()) {
        let _ = p.reply.send(r.take().unwrap_or(Outcome::Alone(None)));
    }
}

/// How a batch failed.
enum Failed {
    /// Before `COMMIT` was sent: nothing of it is visible.
    BeforeCommit(sqlx::Error),
    /// At `COMMIT`: it may or may not have committed.
    AtCommit(sqlx::Error),
}

/// A key's string state as the batch sees it: `None` missing (or expired).
#[derive(Clone)]
struct Current {
    kind: i16,
    value: Vec<u8>,
    expires_at: Option<i64>,
}

/// Runs the batch's transaction. `Ok`: each command's reply, `None` for
/// those left out because another writer holds their key's lock (they run
/// alone).
async fn commit(pool: &PgPool, slots: u32, ops: &[&Op]) -> Result<Vec<Option<Reply>>, Failed> {
    use Failed::BeforeCommit as Before;
    if ops.iter().all(|o| matches!(o, Op::Set { .. })) {
        return commit_sets(pool, slots, ops).await;
    }
    let mut tx = pool.begin().await.map_err(Before)?;
    let result = async {
        // 1. The keys' locks (tried, never waited for) and the clock after.
        let keys: Vec<&[u8]> = ops.iter().map(|o| &o.key()[..]).collect();
        let ids = lock_ids(&keys);
        let row = sqlx::query(
            "SELECT array_agg(pg_try_advisory_xact_lock(id) ORDER BY n) AS got, \
                    set_config('lock_timeout', $2, true) AS timeout, sg_clock_ms() AS now \
             FROM unnest($1::bigint[]) WITH ORDINALITY AS t(id, n)",
        )
        .bind(&ids)
        .bind(LOCK_TIMEOUT)
        .fetch_one(&mut *tx)
        .await?;
        let got: Vec<bool> = row.try_get("got")?;
        let now: i64 = row.try_get("now")?;
        let held: std::collections::HashSet<i64> = ids
            .iter()
            .zip(&got)
            .filter(|(_, g)| **g)
            .map(|(id, _)| *id)
            .collect();
        let mine: Vec<bool> = keys
            .iter()
            .map(|k| held.contains(&lock_ids(&[k])[0]))
            .collect();
        // 2. The rows INCRs read, locked.
        let reads: Vec<&[u8]> = ops
            .iter()
            .zip(&mine)
            .filter(|(o, m)| **m && matches!(o, Op::Incr { .. }))
            .map(|(o, _)| &o.key()[..])
            .collect();
        let mut state: HashMap<&[u8], Option<Current>> = HashMap::new();
        if !reads.is_empty() {
            let rows = sqlx::query(
                "SELECT key, type, value, expires_at FROM kv \
                 WHERE kd = ANY (ARRAY(SELECT sha256(w) FROM unnest($1::bytea[]) AS w)) FOR UPDATE",
            )
            .bind(&reads)
            .fetch_all(&mut *tx)
            .await?;
            for k in &reads {
                state.insert(*k, None);
            }
            for r in &rows {
                let key: Vec<u8> = r.try_get("key")?;
                let expires_at: Option<i64> = r.try_get("expires_at")?;
                if expires_at.is_some_and(|e| e <= now) {
                    continue;
                }
                if let Some(slot) = state.get_mut(key.as_slice()) {
                    *slot = Some(Current {
                        kind: r.try_get("type")?,
                        value: r.try_get::<Option<Vec<u8>>, _>("value")?.unwrap_or_default(),
                        expires_at,
                    });
                }
            }
        }
        // 3. The commands, in order, in memory.
        let mut replies = Vec::with_capacity(ops.len());
        let mut changed: Vec<&[u8]> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if !mine[i] {
                replies.push(None);
                continue;
            }
            let key = &op.key()[..];
            let reply = apply(op, state.entry(key).or_insert(None));
            if reply.1 && !changed.contains(&key) {
                changed.push(key);
            }
            replies.push(Some(reply.0));
        }
        // 4. Each changed key's final string, once.
        if !changed.is_empty() {
            let mut written: Vec<&[u8]> = Vec::with_capacity(changed.len());
            let mut slot_of = Vec::with_capacity(changed.len());
            let mut values: Vec<&[u8]> = Vec::with_capacity(changed.len());
            let mut expiry = Vec::with_capacity(changed.len());
            for k in &changed {
                let Some(Some(c)) = state.get(k) else {
                    continue;
                };
                written.push(*k);
                slot_of.push(i32::try_from(key_hash(k) % u64::from(slots.max(1))).unwrap_or(0));
                values.push(&c.value);
                expiry.push(c.expires_at);
            }
            sqlx::query(
                "INSERT INTO kv (key, slot, type, value, expires_at) \
                 SELECT k, s, 0, v, e FROM unnest($1::bytea[], $2::int4[], $3::bytea[], $4::int8[]) AS t(k, s, v, e) \
                 ON CONFLICT (kd) DO UPDATE SET type = 0, value = EXCLUDED.value, expires_at = EXCLUDED.expires_at",
            )
            .bind(&written)
            .bind(&slot_of)
            .bind(&values)
            .bind(&expiry)
            .execute(&mut *tx)
            .await?;
        }
        Ok::<_, sqlx::Error>((replies, mine))
    }
    .await;
    let (replies, mine) = match result {
        Ok(r) => r,
        Err(e) => {
            // Nothing of the batch is visible; release its locks now.
            let _ = tx.rollback().await;
            return Err(Before(e));
        }
    };
    if mine.iter().all(|m| !m) {
        let _ = tx.rollback().await;
        return Ok(replies);
    }
    // 5. The one commit.
    tx.commit().await.map_err(Failed::AtCommit)?;
    Ok(replies)
}

/// A batch of plain SETs: one statement (`sg_try_set_strings`, migration
/// 0005) outside an explicit transaction, which tries the keys' locks,
/// writes the keys it got (each once, with its last value) and commits as
/// it ends. A database error means it rolled back (its SETs run alone);
/// any other failure once the statement was sent leaves the outcome
/// unknown (each SET gets the error, none runs again).
async fn commit_sets(pool: &PgPool, slots: u32, ops: &[&Op]) -> Result<Vec<Option<Reply>>, Failed> {
    // Each key once, with its last value, in first-seen order.
    let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(ops.len());
    let mut keys: Vec<&[u8]> = Vec::with_capacity(ops.len());
    let mut values: Vec<&[u8]> = Vec::with_capacity(ops.len());
    for op in ops {
        let Op::Set { key, value } = op else {
            continue;
        };
        match last.get(&key[..]) {
            Some(&i) => values[i] = value,
            None => {
                last.insert(key, keys.len());
                keys.push(key);
                values.push(value);
            }
        }
    }
    let ids: Vec<i64> = keys.iter().map(|k| lock_id(k)).collect();
    let slot_of: Vec<i32> = keys
        .iter()
        .map(|k| i32::try_from(key_hash(k) % u64::from(slots.max(1))).unwrap_or(0))
        .collect();
    let mut conn = pool.acquire().await.map_err(Failed::BeforeCommit)?;
    let held: Vec<i64> = sqlx::query_scalar("SELECT sg_try_set_strings($1, $2, $3, $4, $5)")
        .bind(&keys)
        .bind(&slot_of)
        .bind(&values)
        .bind(&ids)
        .bind(LOCK_TIMEOUT)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(_) => Failed::BeforeCommit(e),
            other => Failed::AtCommit(other),
        })?;
    let held: std::collections::HashSet<i64> = held.into_iter().collect();
    Ok(ops
        .iter()
        .map(|op| held.contains(&lock_id(op.key())).then_some(Reply::Ok))
        .collect())
}

/// Applies one command to its key's state: its reply and whether it
/// changed the key. Errors (and their order) as the commands' own code
/// (`commands::incr`): the type, then the value, then overflow.
fn apply(op: &Op, current: &mut Option<Current>) -> (Reply, bool) {
    match op {
        Op::Set { value, .. } => {
            *current = Some(Current {
                kind: STRING,
                value: value.to_vec(),
                expires_at: None,
            });
            (Reply::Ok, true)
        }
        Op::Incr { by, .. } => {
            let (n, expires_at) = match current {
                None => (0, None),
                Some(c) if c.kind != STRING => {
                    return (Reply::error(msg::WRONGTYPE), false);
                }
                Some(c) => match parse_int(&c.value) {
                    Some(n) => (n, c.expires_at),
                    None => return (Reply::error(msg::NOT_INT), false),
                },
            };
            let Some(next) = n.checked_add(*by) else {
                return (Reply::error(msg::OVERFLOW), false);
            };
            *current = Some(Current {
                kind: STRING,
                value: next.to_string().into_bytes(),
                expires_at,
            });
            (Reply::Int(next), true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::commands::HASH;
    use super::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    #[test]
    fn only_plain_set_and_valid_increments_are_batched() {
        let set = Op::of(&args(&["SeT", "k", "v"]));
        assert_eq!(
            set,
            Some(Op::Set {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v")
            })
        );
        let by = |w: &[&str]| match Op::of(&args(w)) {
            Some(Op::Incr { by, .. }) => Some(by),
            _ => None,
        };
        assert_eq!(by(&["incr", "k"]), Some(1));
        assert_eq!(by(&["DECR", "k"]), Some(-1));
        assert_eq!(by(&["incrby", "k", "-7"]), Some(-7));
        assert_eq!(by(&["decrby", "k", "7"]), Some(-7));
        for refused in [
            &["set", "k", "v", "NX"][..],
            &["set", "k"],
            &["incr", "k", "1"],
            &["incrby", "k", "x"],
            &["decrby", "k", "-9223372036854775808"],
            &["get", "k"],
            &["incrbyfloat", "k", "1"],
            &["set", "k", "v".repeat(MAX_VALUE + 1).as_str()],
            &[],
        ] {
            assert_eq!(Op::of(&args(refused)), None, "{refused:?}");
        }
    }

    /// `apply`, with the reply encoded as RESP2.
    fn run(op: &Op, current: &mut Option<Current>) -> (String, bool) {
        let (reply, changed) = apply(op, current);
        let mut out = bytes::BytesMut::new();
        reply.encode(crate::protocol::Protocol::Resp2, &mut out);
        (String::from_utf8_lossy(&out).into_owned(), changed)
    }

    #[test]
    fn commands_apply_in_order_and_a_failing_one_changes_nothing() {
        let incr = |by| Op::Incr {
            key: Bytes::from_static(b"k"),
            by,
        };
        let int = |n: i64| (format!(":{n}\r\n"), true);
        let failed = |text: &str| (format!("-{text}\r\n"), false);
        let mut cur = None;
        assert_eq!(run(&incr(2), &mut cur), int(2));
        assert_eq!(run(&incr(i64::MAX), &mut cur), failed(msg::OVERFLOW));
        assert_eq!(run(&incr(-5), &mut cur), int(-3));
        let set = Op::Set {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"abc"),
        };
        assert_eq!(run(&set, &mut cur), ("+OK\r\n".to_owned(), true));
        assert_eq!(run(&incr(1), &mut cur), failed(msg::NOT_INT));
        assert_eq!(cur.as_ref().map(|c| c.value.clone()), Some(b"abc".to_vec()));
        let mut hash = Some(Current {
            kind: HASH,
            value: Vec::new(),
            expires_at: None,
        });
        assert_eq!(run(&incr(1), &mut hash), failed(msg::WRONGTYPE));
        assert_eq!(hash.as_ref().map(|c| c.kind), Some(HASH));
        // INCR keeps the key's expiry; SET clears it.
        let mut ttl = Some(Current {
            kind: STRING,
            value: b"9".to_vec(),
            expires_at: Some(42),
        });
        assert_eq!(run(&incr(1), &mut ttl), int(10));
        assert_eq!(ttl.as_ref().and_then(|c| c.expires_at), Some(42));
        run(&set, &mut ttl);
        assert_eq!(ttl.as_ref().and_then(|c| c.expires_at), None);
    }
}

//! MULTI/EXEC and WATCH on a PostgreSQL shard: the queued commands run as
//! one PostgreSQL transaction, and WATCH compares row versions
//! (`kv.version`, migration 0004).
//!
//! WATCH reads the versions of its keys (`None`: no live row) and the
//! proxy keeps them in the client's session; nothing is held on the
//! database meanwhile. EXEC, in one transaction:
//!
//! 1. takes the advisory write locks (migration 0002) of every watched key
//!    and every key of the queued commands, in the one sorted order every
//!    writer uses, so no other write of these keys can run until COMMIT;
//! 2. reads the watched keys' versions again: if any differs, rolls back
//!    and answers a nil EXEC, as Redis does when a watched key was touched
//!    (written, deleted, or expired) after WATCH;
//! 3. runs the commands one after the other on the transaction (each sees
//!    the writes of the ones before it; an error reply such as WRONGTYPE is
//!    that command's element of the EXEC array, and the others still run,
//!    as in Redis), and commits.
//!
//! Other clients see all of it or none of it: their reads see committed
//! rows only, their writes of these keys wait for the locks. A database
//! failure in the middle rolls everything back and EXEC answers the error.
//!
//! One difference from Redis remains: a key that had no row at WATCH, and
//! was created and deleted again before EXEC, has no row at EXEC either,
//! so EXEC runs (Redis counts the two writes as touching the key).

use bytes::Bytes;

use super::commands::{self, Ctx, ExecTx, lock_ids};
use crate::protocol::Reply;

/// A watched key and its version when WATCH read it (`None`: no live row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub key: Bytes,
    pub version: Option<i64>,
}

/// What EXEC runs: the watched keys, the keys of the queued commands (the
/// proxy knows them from its command table), and the commands' arguments.
#[derive(Debug, Clone, Default)]
pub struct Queued {
    pub watched: Vec<Watched>,
    pub keys: Vec<Bytes>,
    pub commands: Vec<Vec<Bytes>>,
}

/// How an EXEC ended.
#[derive(Debug)]
pub enum Outcome {
    /// Committed; the replies of the commands, in order.
    Committed(Vec<Reply>),
    /// A watched key changed since WATCH: nothing ran.
    WatchFailed,
}

/// The current versions of `keys`, in order (WATCH). One statement, no lock.
pub async fn versions(ctx: &Ctx<'_>, keys: &[Bytes]) -> Result<Vec<Option<i64>>, sqlx::Error> {
    let list: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    let sql = concat!(
        "SELECT k.version FROM unnest($1::bytea[]) WITH ORDINALITY AS w(key, n) \
         LEFT JOIN kv k ON k.kd = sha256(w.key) AND k.key = w.key AND ",
        live!(),
        " ORDER BY w.n"
    );
    on_db!(ctx, sqlx::query_scalar(sql).bind(&list), fetch_all)
}

/// Runs an EXEC (see the module doc).
pub async fn exec(pool: &sqlx::PgPool, slots: u32, q: &Queued) -> Result<Outcome, sqlx::Error> {
    let tx: ExecTx = tokio::sync::Mutex::new(pool.begin().await?);
    let ctx = Ctx {
        pool,
        slots,
        exec: Some(&tx),
    };
    let mut all: Vec<&[u8]> = q.watched.iter().map(|w| &w.key[..]).collect();
    all.extend(q.keys.iter().map(|k| &k[..]));
    if !all.is_empty() {
        on_db!(
            ctx,
            sqlx::query("SELECT sg_lock($1)").bind(lock_ids(&all)),
            execute
        )?;
    }
    if !q.watched.is_empty() {
        let keys: Vec<Bytes> = q.watched.iter().map(|w| w.key.clone()).collect();
        let now = versions(&ctx, &keys).await?;
        let same = now.iter().zip(&q.watched).all(|(v, w)| *v == w.version);
        if !same || now.len() != q.watched.len() {
            // Dropping the transaction rolls it back (and frees the locks).
            return Ok(Outcome::WatchFailed);
        }
    }
    let mut replies = Vec::with_capacity(q.commands.len());
    for args in &q.commands {
        replies.push(commands::execute(&ctx, args).await?);
    }
    tx.into_inner().commit().await?;
    Ok(Outcome::Committed(replies))
}

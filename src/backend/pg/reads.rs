//! Read batching: the `GET`s that the clients of one serving thread have in
//! flight on an endpoint at the same time are read with one statement, so
//! that a GET costs PostgreSQL a share of one statement (one round trip, one
//! parse/bind/execute, one snapshot) instead of a whole one.
//!
//! Each serving thread has one [`Reader`] per endpoint. A lane hands it a
//! GET and waits for the reply (so the client's next request still runs
//! after it). The reader takes everything queued when it gets to it (up to
//! [`MAX_BATCH`]; at most [`IN_FLIGHT`] statements at once, and while they
//! run the next batch forms) and reads the keys with one `SELECT` over
//! `unnest($1)`, one row per key of the batch.
//!
//! # Why each GET still answers what it would alone
//!
//! - *Linearizable*: the statement's snapshot is taken when it starts, which
//!   is after every GET of the batch arrived at the proxy and before any of
//!   them is answered; so it sees every write acknowledged before each GET
//!   was sent (read-your-writes on the primary included: a client's write
//!   was committed before its lane sent the GET), and each GET takes effect
//!   at that instant, inside its own span.
//! - *Same replies*: the same live-row test (`expires_at > sg_now_ms()`, one
//!   time for the statement), `WRONGTYPE` for a hash, nil for a missing key.
//! - *Per-client order*: a lane waits for its GET's reply before it runs
//!   the client's next request.
//! - *Errors*: a batch that fails answers each of its GETs the error a GET
//!   alone would have got (a read changes nothing, so nothing is unknown).
//! - *No added wait at low load*: the reader never waits for more GETs; a
//!   GET that arrives alone is read at once (a batch of one).

use std::sync::Arc;

use bytes::Bytes;
use sqlx::Row as _;
use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::commands::Row;
use super::turns::Turns;
use crate::backend::EndpointState;
use crate::error::BackendError;
use crate::protocol::Reply;

/// Most GETs in one statement.
pub const MAX_BATCH: usize = 256;
/// Statements of one thread's reader in flight at once.
pub const IN_FLIGHT: usize = 4;

/// The batch statement: one row per element of `$1`, in its order (`n`).
const READ: &str = concat!(
    "SELECT t.n, k.type, k.value, k.expires_at \
     FROM unnest($1::bytea[]) WITH ORDINALITY AS t(key, n) \
     LEFT JOIN kv k ON k.kd = sha256(t.key) AND k.key = t.key AND ",
    live!(),
    " ORDER BY t.n"
);

/// Is `args` a GET the reader takes (`GET key`, any case)?
pub fn get_key(args: &[Bytes]) -> Option<&Bytes> {
    match args {
        [name, key] if name.eq_ignore_ascii_case(b"get") => Some(key),
        _ => None,
    }
}

struct Pending {
    key: Bytes,
    reply: oneshot::Sender<Result<Reply, BackendError>>,
}

/// A serving thread's read batcher for one endpoint (cheap to clone; the
/// reader ends when the last clone is dropped).
#[derive(Clone)]
pub struct Reader {
    tx: mpsc::UnboundedSender<Pending>,
    addr: Arc<str>,
}

impl Reader {
    /// Starts a reader on the current runtime (the serving thread's),
    /// reading through `pool` on turns of `turns`.
    pub fn start(state: Arc<EndpointState>, pool: PgPool, turns: Turns) -> Reader {
        let (tx, rx) = mpsc::unbounded_channel();
        let addr = Arc::from(state.addr.as_str());
        tokio::spawn(read_loop(state, pool, turns, rx));
        Reader { tx, addr }
    }

    /// `GET key`, read in the next batch.
    pub async fn get(&self, key: Bytes) -> Result<Reply, BackendError> {
        let (reply, rx) = oneshot::channel();
        let stopped = || BackendError::ConnectionLost {
            addr: self.addr.to_string(),
            reason: "postgres reader stopped".to_owned(),
        };
        if self.tx.send(Pending { key, reply }).is_err() {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// Takes the queued GETs, in batches, until every [`Reader`] is gone.
async fn read_loop(
    state: Arc<EndpointState>,
    pool: PgPool,
    turns: Turns,
    rx: mpsc::UnboundedReceiver<Pending>,
) {
    let flight = super::batching::Flight {
        usual: IN_FLIGHT,
        slow: None,
        most: IN_FLIGHT,
    };
    super::batching::batches(rx, flight, MAX_BATCH, move |batch| {
        let (state, pool, turns) = (state.clone(), pool.clone(), turns.clone());
        async move { run_batch(&state, &pool, &turns, batch).await }
    })
    .await;
}

/// Reads one batch and answers each of its GETs.
async fn run_batch(state: &EndpointState, pool: &PgPool, turns: &Turns, batch: Vec<Pending>) {
    if let Err(e) = state.check_lease_fence() {
        for p in batch {
            let _ = p.reply.send(Err(e.clone()));
        }
        return;
    }
    let keys: Vec<&[u8]> = batch.iter().map(|p| &p.key[..]).collect();
    state.metrics.pg_read_batch(batch.len());
    let read = async {
        let rows = sqlx::query(READ).bind(&keys).fetch_all(pool).await?;
        let mut replies = Vec::with_capacity(rows.len());
        for r in &rows {
            let kind: Option<i16> = r.try_get("type")?;
            replies.push(match kind {
                None => Reply::Nil,
                Some(_) => match Row::from_pg(r)?.string() {
                    Ok(v) => Reply::Bulk(v.into()),
                    Err(e) => e,
                },
            });
        }
        Ok::<_, sqlx::Error>(replies)
    };
    match super::turns::on_turn(state, turns, read).await {
        Ok(replies) if replies.len() == batch.len() => {
            for (p, r) in batch.into_iter().zip(replies) {
                let _ = p.reply.send(Ok(r));
            }
        }
        Ok(replies) => {
            // Unreachable: the LEFT JOIN gives one row per key (`kd` is
            // the primary key). Answer an error rather than a wrong value.
            let e = BackendError::Protocol {
                addr: state.addr.clone(),
                reason: format!(
                    "a batched read returned {} rows for {} keys",
                    replies.len(),
                    batch.len()
                ),
            };
            for p in batch {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
        // (Each lane counts its GET's error, as for a GET alone.)
        Err(e) => {
            for p in batch {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_with_one_key_is_batched() {
        let args = |words: &[&str]| -> Vec<Bytes> {
            words
                .iter()
                .map(|w| Bytes::copy_from_slice(w.as_bytes()))
                .collect()
        };
        assert_eq!(
            get_key(&args(&["GeT", "k"])).map(|k| &k[..]),
            Some(&b"k"[..])
        );
        for refused in [
            &["get"][..],
            &["get", "a", "b"],
            &["getex", "k"],
            &["mget", "k"],
            &["set", "k", "v"],
            &[],
        ] {
            assert!(get_key(&args(refused)).is_none(), "{refused:?}");
        }
    }
}

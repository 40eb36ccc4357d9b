//! Write transactions that hold the advisory locks of their keys
//! ([`Locked`], taken by [`lock`]; see "Writes are serialised per key" in
//! [`super::commands`]), and EXEC's one transaction ([`ExecTx`]) that the
//! commands of a MULTI block share.

use sqlx::{Postgres, Transaction};

use super::commands::{Ctx, Res, Row};
use crate::protocol::Reply;

/// The one PostgreSQL transaction of an EXEC, shared by its commands (one
/// at a time: a command takes it for each statement, or for as long as it
/// holds a [`Locked`]).
pub type ExecTx = tokio::sync::Mutex<Transaction<'static, Postgres>>;

/// The EXEC transaction, for one statement or one [`Locked`]. Commands
/// never nest these (a command holding a [`Locked`] runs its statements on
/// it), so the transaction is always free: finding it taken is a bug,
/// answered as an error rather than a wait that would never end.
pub(super) fn exec_conn(
    exec: &ExecTx,
) -> Result<tokio::sync::MutexGuard<'_, Transaction<'static, Postgres>>, sqlx::Error> {
    exec.try_lock().map_err(|_| {
        sqlx::Error::Protocol("a command inside EXEC used the transaction twice at once".into())
    })
}

/// A write transaction holding the advisory locks of its keys.
pub struct Locked<'a> {
    /// The open transaction.
    tx: LockedTx<'a>,
    /// Wall clock (Unix ms) once the locks were taken.
    pub now: i64,
}

/// The transaction a [`Locked`] writes in.
enum LockedTx<'a> {
    /// Its own, committed by [`Locked::commit`] (rolled back if dropped).
    Own(Transaction<'static, Postgres>),
    /// EXEC's, committed when the whole EXEC is: the locks are held until
    /// then. A command that returns without committing has written nothing
    /// (every command checks before it writes).
    Exec(tokio::sync::MutexGuard<'a, Transaction<'static, Postgres>>),
}

/// Advisory lock id of a key: XXH3 of the whole key (not just its tag), so
/// only writers of the same key (or a rare collision) wait for each other.
pub(super) fn lock_id(key: &[u8]) -> i64 {
    i64::from_ne_bytes(twox_hash::XxHash3_64::oneshot(key).to_ne_bytes())
}

/// The lock ids of `keys`, sorted and without duplicates: the order in which
/// every writer takes them, so two multi-key writers never wait for each
/// other in a cycle.
pub(super) fn lock_ids<K: AsRef<[u8]>>(keys: &[K]) -> Vec<i64> {
    let mut ids: Vec<i64> = keys.iter().map(|k| lock_id(k.as_ref())).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Begins a transaction and locks `keys` (in sorted order). Every statement
/// run on the returned [`Locked`] sees all writes committed to these keys
/// before the locks were granted.
pub async fn lock<'a>(ctx: &Ctx<'a>, keys: &[&[u8]]) -> Result<Locked<'a>, sqlx::Error> {
    let tx = match ctx.exec {
        None => LockedTx::Own(ctx.pool.begin().await?),
        Some(exec) => LockedTx::Exec(exec_conn(exec)?),
    };
    let mut l = Locked { tx, now: 0 };
    // (Inside EXEC the locks are held already: advisory locks stack.)
    l.now = sqlx::query_scalar("SELECT sg_lock($1)")
        .bind(lock_ids(keys))
        .fetch_one(l.conn())
        .await?;
    Ok(l)
}

impl Locked<'_> {
    /// The connection of the transaction, for the command's statements.
    pub fn conn(&mut self) -> &mut sqlx::PgConnection {
        match &mut self.tx {
            LockedTx::Own(tx) => tx,
            LockedTx::Exec(tx) => tx,
        }
    }

    /// The key's row, locked; `None` if missing or expired.
    pub async fn row(&mut self, key: &[u8]) -> Result<Option<Row>, sqlx::Error> {
        let r = sqlx::query(
            "SELECT type, value, expires_at FROM kv WHERE kd = sha256($1) AND key = $1 FOR UPDATE",
        )
        .bind(key)
        .fetch_optional(self.conn())
        .await?;
        let row = r.as_ref().map(Row::from_pg).transpose()?;
        Ok(row.filter(|r| r.expires_at.is_none_or(|e| e > self.now)))
    }

    /// Writes a string (replacing whatever the key held; a hash's fields go
    /// with it, see the module doc).
    pub async fn put(
        &mut self,
        slot: i32,
        key: &[u8],
        value: &[u8],
        expires_at: Option<i64>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO kv (key, slot, type, value, expires_at) VALUES ($1, $2, 0, $3, $4) \
             ON CONFLICT (kd) DO UPDATE SET type = 0, value = EXCLUDED.value, expires_at = EXCLUDED.expires_at",
        )
        .bind(key)
        .bind(slot)
        .bind(value)
        .bind(expires_at)
        .execute(self.conn())
        .await?;
        Ok(())
    }

    /// Deletes a key (its hash fields go with it).
    pub async fn delete(&mut self, key: &[u8]) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM kv WHERE kd = sha256($1) AND key = $1")
            .bind(key)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Sets or clears a live key's expiry.
    pub async fn set_expiry(&mut self, key: &[u8], at: Option<i64>) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE kv SET expires_at = $2 WHERE kd = sha256($1) AND key = $1")
            .bind(key)
            .bind(at)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Commits and returns `reply`.
    pub async fn commit(self, reply: Reply) -> Res {
        if let LockedTx::Own(tx) = self.tx {
            tx.commit().await?;
        }
        Ok(reply)
    }
}

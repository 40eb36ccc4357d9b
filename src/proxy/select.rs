//! `SELECT n`: the client's database on every Redis shard.
//!
//! A database is connection state on a Redis server, so it is part of the
//! key of every backend connection ([`crate::backend::Wire`]): a client in
//! database 3 has its requests carried by the shards' connections that
//! selected 3 (multiplexed, dedicated, and its backend ACL user's), made on
//! first use. The session only remembers the number. Pub/sub is
//! database-independent, as in Redis. The rebalancer moves the keys of
//! every database that holds any.
//!
//! PostgreSQL shards have database 0 only: with one in the map, `SELECT n`
//! (n > 0) is refused; a request that still reaches one in another
//! database (a map reload added it) fails with a clear error rather than
//! read database 0.

use bytes::Bytes;

use super::Proxy;
use super::dispatch::{Action, ExclusiveOp};
use super::session::Session;
use crate::backend::{Db, Wire};
use crate::command::CommandSpec;
use crate::error::{BackendError, ProxyError};
use crate::protocol::{Protocol, Reply};
use crate::shardmap::{ShardKind, ShardPhase};

/// Redis' reply to a database it does not have.
const OUT_OF_RANGE: &str = "DB index is out of range";

impl Session {
    /// `SELECT n`: database 0 and the current database at once; another
    /// one after a shard has accepted it ([`Session::select_checked`]).
    pub(super) fn select(
        &mut self,
        proxy: &Proxy,
        spec: &'static CommandSpec,
        arg: &Bytes,
    ) -> Action {
        let n = match std::str::from_utf8(arg)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
        {
            Some(n) => n,
            None => {
                return self.fail(
                    Some(spec),
                    ProxyError::err("value is not an integer or out of range"),
                );
            }
        };
        let Ok(n) = u32::try_from(n) else {
            return self.fail(Some(spec), ProxyError::err(OUT_OF_RANGE));
        };
        let db = Db(n);
        if db == self.db {
            return self.reply(spec, Reply::Ok);
        }
        if self.watch.is_some() {
            // The WATCH holds a connection of the old database, where EXEC
            // would then run.
            return self.fail(
                Some(spec),
                ProxyError::err(
                    "SELECT while keys are WATCHed is not supported by shardgate; UNWATCH first",
                ),
            );
        }
        if db != Db(0) {
            let snap = proxy.snapshot();
            let pg = snap
                .map()
                .shards
                .iter()
                .find(|s| s.kind == ShardKind::Postgres && s.phase != ShardPhase::Removed);
            if let Some(s) = pg {
                return self.fail(
                    Some(spec),
                    ProxyError::err(format!(
                        "{OUT_OF_RANGE}: shard '{}' is a PostgreSQL shard, which has database 0 only",
                        s.name
                    )),
                );
            }
            return Action::Exclusive(ExclusiveOp::Select(db), spec);
        }
        self.db = db;
        self.sync_info();
        self.reply(spec, Reply::Ok)
    }

    /// Switches to `db` once the first Redis shard's primary has accepted
    /// it (a connection of that database is made, or taken from its pool):
    /// a shard with fewer databases answers Redis' `DB index is out of
    /// range`. A shard that cannot be reached does not decide: the switch
    /// is made, and requests fail as any would on that shard.
    pub(super) async fn select_checked(
        &mut self,
        proxy: &Proxy,
        db: Db,
    ) -> Result<Reply, ProxyError> {
        let snap = proxy.snapshot_full();
        let first = snap
            .backends()
            .shards()
            .iter()
            .find(|s| s.kind == ShardKind::Redis && s.phase != ShardPhase::Removed)
            .map(|s| s.primary.clone());
        if let Some(ep) = first {
            let wire = Wire {
                proto: Protocol::Resp2,
                db,
            };
            match ep.dedicated(wire).await {
                Ok(conn) => drop(conn),
                Err(BackendError::NoSuchDb { .. }) => return Err(ProxyError::err(OUT_OF_RANGE)),
                Err(e) => {
                    tracing::debug!(endpoint = %ep.state.addr, error = %e, "SELECT could not check the database on a shard");
                }
            }
        }
        self.db = db;
        self.sync_info();
        Ok(Reply::Ok)
    }
}

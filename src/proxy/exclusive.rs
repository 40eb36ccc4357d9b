//! Commands that run with the session to themselves ([`ExclusiveOp`]), after
//! every earlier reply has been written: transactions, WATCH, blocking
//! commands and scripts on dedicated connections; INFO, RANDOMKEY and SCAN,
//! which take several steps; and moves on touch.

use bytes::{Bytes, BytesMut};

use super::Proxy;
use super::blocked::{Remaining, Waited, Waiting, unblocked_reply};
use super::dispatch::ExclusiveOp;
use super::pending::answered;
use super::session::Session;
use crate::backend::dedicated::PooledConn;
use crate::backend::migrate::is_reserved_key;
use crate::backend::pg::transaction::{Queued, Watched};
use crate::error::{BackendError, ProxyError};
use crate::protocol::{Reply, Request, reply, request::encode_command};
use crate::router::ShardId;
use crate::shardmap::ShardKind;
use crate::snapshot::Snapshot;

impl Session {
    /// Runs one exclusive operation and returns the encoded reply.
    pub(super) async fn run_exclusive(&mut self, proxy: &Proxy, op: ExclusiveOp) -> Bytes {
        let result = match op {
            ExclusiveOp::Exec => self.exec(proxy).await,
            ExclusiveOp::Discard => self.discard().await,
            ExclusiveOp::Watch(req, shard) => self.watch(proxy, req, shard).await,
            ExclusiveOp::Unwatch => self.unwatch().await.map(|_| Reply::Ok),
            ExclusiveOp::Blocking(req, shard) => self.on_dedicated(proxy, &req, shard, false).await,
            ExclusiveOp::Script(req, shard) => self.on_dedicated(proxy, &req, shard, true).await,
            ExclusiveOp::Info(req) => self.info(proxy, &req).await,
            ExclusiveOp::MemoryStats => self.memory_stats(proxy).await,
            ExclusiveOp::Randomkey => self.randomkey(proxy).await,
            ExclusiveOp::Scan(req, shard, cursor) => self.scan(proxy, &req, shard, cursor).await,
            ExclusiveOp::MoveFirst(req, spec) => return self.move_first(proxy, req, spec).await,
            ExclusiveOp::Select(db) => self.select_checked(proxy, db).await,
        };
        self.held = None;
        let reply = result.unwrap_or_else(|e| e.to_reply());
        let mut out = BytesMut::new();
        reply.encode(self.proto, &mut out);
        out.freeze()
    }

    /// The snapshot the running operation routed with (held since
    /// [`Session::reroute`]), else the current one.
    fn routed(&self, proxy: &Proxy) -> std::sync::Arc<Snapshot> {
        self.held.clone().unwrap_or_else(|| proxy.snapshot_full())
    }

    /// A dedicated connection to the shard's primary. `Scripted` runs as
    /// the client's backend ACL user: scripts, and WATCH / EXEC (a MULTI
    /// block may queue scripts), so that Redis holds the client's rules and
    /// the proxy's refusals on the commands a script runs, which the proxy
    /// never sees (see `backend::acl`). Blocking commands carry no script
    /// and use the shard map's credentials.
    async fn dedicated(
        &self,
        proxy: &Proxy,
        shard: ShardId,
        runs: Runs,
    ) -> Result<PooledConn, ProxyError> {
        let ep = self.routed(proxy).shard(shard).primary.clone();
        let conn = match runs {
            Runs::Scripted => {
                let user = Proxy::backend_user_of(self.user.as_deref());
                ep.dedicated_as(self.wire(), &proxy.backend_acl, user)
                    .await
                    .inspect_err(|e| ep.state.metrics.backend_error(e.kind()))?
            }
            Runs::Plain => ep.dedicated(self.wire()).await?,
        };
        Ok(conn)
    }

    /// A blocking command (no timeout: the client chose how long to block)
    /// or a script (bounded by the command timeout).
    async fn on_dedicated(
        &mut self,
        proxy: &Proxy,
        req: &Request,
        shard: ShardId,
        timed: bool,
    ) -> Result<Reply, ProxyError> {
        if !timed {
            return self.run_blocking(proxy, req, shard).await;
        }
        // Routed again now: a rebalance may have moved the keys since dispatch.
        let shard = self.reroute(proxy, req).await?.unwrap_or(shard);
        let ep = self.routed(proxy).shard(shard).primary.clone();
        let mut conn = self.dedicated(proxy, shard, Runs::Scripted).await?;
        let _lent = Lent::new(&ep.state.metrics);
        let sent = std::time::Instant::now();
        let result = unless_busy(&ep, conn.request(req.raw())).await;
        if let Err(e) = &result {
            ep.state.metrics.backend_error(e.kind());
        }
        let took = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
        self.exclusive_trip = Some((shard, took));
        Ok(Reply::Frame(result?))
    }

    /// A blocking command, on a dedicated connection to its keys' shard.
    /// If a rebalance moves its keys to another shard while it waits, the
    /// shard ends it (`CLIENT UNBLOCK ... TIMEOUT`) and it is sent again to
    /// the keys' new shard, where a push now lands, with the time left of
    /// its timeout (see `blocked::remaining`).
    async fn run_blocking(
        &mut self,
        proxy: &Proxy,
        req: &Request,
        mut shard: ShardId,
    ) -> Result<Reply, ProxyError> {
        let keys = super::moves::request_keys(req);
        let started = std::time::Instant::now();
        let mut again: Option<Request> = None;
        loop {
            let sent = again.as_ref().unwrap_or(req);
            // Routed again now: a rebalance may have moved the keys since
            // dispatch (or while it waited).
            shard = self.reroute(proxy, sent).await?.unwrap_or(shard);
            let ep = self.routed(proxy).shard(shard).primary.clone();
            // Blocking commands keep their arrival order on the way to the
            // shard (see `EndpointState::blocking_order`).
            let turn = ep.state.blocking_order.lock().await;
            let mut conn = self.dedicated(proxy, shard, Runs::Plain).await?;
            let _lent = Lent::new(&ep.state.metrics);
            // INFO blocked_clients, and CLIENT UNBLOCK: from the moment the
            // command is on its way.
            let blocks = super::stats::may_block_req(sent);
            let _blocked = blocks.then(|| super::stats::Blocked::new(proxy));
            let me = self.me.clone().filter(|_| blocks);
            let _unblockable = me.as_deref().map(super::blocked::Unblockable::new);
            // A blocking command may wait for long: once it is sent, the
            // table is not held any more (a rebalance would wait for it).
            conn.send(sent.raw(), 1).await?;
            drop(turn);
            self.held = None;
            let watch = Waiting {
                proxy,
                ep: &ep,
                keys: &keys,
                shard,
            };
            match watch.reply(&mut conn, me.as_ref(), self.proto).await {
                Ok(Waited::Reply(frame)) => return Ok(Reply::Frame(frame)),
                Ok(Waited::Moved) => {
                    tracing::debug!(shard = %ep.state.shard, "a blocked command's keys moved to another shard; sending it there");
                    // With what is left of its timeout.
                    match super::blocked::remaining(req, started.elapsed()) {
                        Remaining::Forever => {}
                        Remaining::Left(r) => again = Some(r),
                        Remaining::Expired => {
                            return Ok(Reply::Frame(unblocked_reply(self.proto, false)));
                        }
                    }
                }
                Err(e) => {
                    ep.state.metrics.backend_error(e.kind());
                    return Err(e.into());
                }
            }
        }
    }

    async fn watch(
        &mut self,
        proxy: &Proxy,
        req: Request,
        shard: ShardId,
    ) -> Result<Reply, ProxyError> {
        let shard = self.reroute(proxy, &req).await?.unwrap_or(shard);
        if self.watched_shard().is_some_and(|s| s != shard) {
            return Err(ProxyError::crossslot());
        }
        if let Some(pg) = self.routed(proxy).shard(shard).primary.postgres() {
            // Versions now, compared by EXEC (see `backend::pg::transaction`).
            let keys: Vec<Bytes> = req.args()[1..].to_vec();
            let versions = pg.watch(self.id, keys.clone()).await?;
            let (_, watched) = self.pg_watch.get_or_insert_with(|| (shard, Vec::new()));
            watched.extend(
                keys.into_iter()
                    .zip(versions)
                    .map(|(key, version)| Watched { key, version }),
            );
            return Ok(Reply::Ok);
        }
        let mut conn = match self.watch.take() {
            Some((_, c)) => c,
            None => self.dedicated(proxy, shard, Runs::Scripted).await?,
        };
        let frame = conn.request(req.raw()).await?;
        conn.stateful = !reply::is_error(&frame);
        if conn.stateful {
            self.watch = Some((shard, conn));
        }
        Ok(Reply::Frame(frame))
    }

    /// Drops the WATCH, returning the connection to its pool when it is clean.
    async fn unwatch(&mut self) -> Result<(), ProxyError> {
        self.pg_watch = None;
        if let Some((_, mut conn)) = self.watch.take() {
            let frame = conn.request(b"*1\r\n$7\r\nUNWATCH\r\n").await?;
            conn.stateful = reply::is_error(&frame);
        }
        Ok(())
    }

    async fn discard(&mut self) -> Result<Reply, ProxyError> {
        let was_reset = self.tx.is_none();
        self.tx = None;
        self.unwatch().await?;
        if was_reset {
            // RESET with a transaction or WATCH pending.
            self.proto = crate::protocol::Protocol::Resp2;
            self.db = crate::backend::Db(0);
            self.name = None;
            return Ok(Reply::Simple("RESET".into()));
        }
        Ok(Reply::Ok)
    }

    /// Sends MULTI, the queued commands and EXEC in one write to the
    /// transaction's shard and returns EXEC's reply.
    async fn exec(&mut self, proxy: &Proxy) -> Result<Reply, ProxyError> {
        let Some(tx) = self.tx.take() else {
            return Err(ProxyError::err("EXEC without MULTI"));
        };
        if tx.aborted {
            self.unwatch().await?;
            return Err(ProxyError::Client(
                "EXECABORT Transaction discarded because of previous errors.".into(),
            ));
        }
        // Routed again now: a rebalance may have moved the keys since they
        // were queued. Their moves happen before the transaction runs.
        let keys: Vec<Bytes> = tx
            .queued
            .iter()
            .flat_map(super::moves::request_keys)
            .collect();
        self.held = None;
        let snap = match super::moves::movable_snapshot(proxy, &keys).await {
            Ok(snap) => snap,
            Err(e) => {
                self.unwatch().await?;
                return Err(e);
            }
        };
        self.held = Some(snap.clone());
        let table = snap.table();
        if table.has_migrating() && tx.queued.iter().any(is_flush) {
            // As FLUSHALL / FLUSHDB outside a transaction (`dispatch::multi`).
            self.unwatch().await?;
            return Err(ProxyError::tryagain(
                "FLUSHALL / FLUSHDB in a transaction while a rebalance moves slots between shards; retry once the window is done",
            ));
        }
        if let Err(e) = self.move_keys(proxy, &snap, &keys).await {
            self.unwatch().await?;
            return Err(e);
        }
        let now = match super::moves::shard_of(table, keys.iter().map(|k| k.as_ref())) {
            Ok(s) => s,
            Err(_) => {
                self.unwatch().await?;
                return Err(ProxyError::tryagain(
                    "the transaction's keys are being moved between shards; retry it",
                ));
            }
        };
        if let (Some(s), Some(w)) = (now, self.watched_shard())
            && w != s
        {
            // The watched keys moved away from the shard they were watched
            // on: as with a watched key that changed, EXEC runs nothing.
            self.unwatch().await?;
            return Ok(Reply::NilArray);
        }
        let shard = now
            .or(tx.shard)
            .or(self.watched_shard())
            .unwrap_or(ShardId(0));
        if snap.shard(shard).kind == ShardKind::Postgres {
            return self.exec_on_postgres(&snap, shard, tx, keys).await;
        }
        let watched = self.watch.take();
        let mut conn = match watched {
            Some((_, c)) => c,
            None => self.dedicated(proxy, shard, Runs::Scripted).await?,
        };
        let mut frames = BytesMut::new();
        frames.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
        for r in &tx.queued {
            frames.extend_from_slice(r.raw());
        }
        frames.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
        let n = tx.queued.len() + 2;
        let primary = snap.shard(shard).primary.clone();
        let run = async {
            conn.send(&frames, n).await?;
            let mut last = Bytes::new();
            for _ in 0..n {
                last = conn.recv().await?;
            }
            Ok::<Bytes, BackendError>(last)
        };
        let exec_reply = unless_busy(&primary, run).await?;
        // EXEC always ends the WATCH.
        conn.stateful = false;
        // FLUSHALL / FLUSHDB ran in the transaction on its shard; the
        // other shards follow once it ran (not atomically with it).
        let flushes: Vec<&Request> = tx.queued.iter().filter(|r| is_flush(r)).collect();
        if !flushes.is_empty() && matches!(reply::array_elements(&exec_reply), Ok(Some(_))) {
            self.flush_others(&snap, shard, &flushes).await?;
        }
        Ok(Reply::Frame(exec_reply))
    }

    /// EXEC of a block whose keys live on a postgres shard: one PostgreSQL
    /// transaction on the shard's primary, checking the WATCHed versions
    /// first (see `backend::pg::transaction`).
    async fn exec_on_postgres(
        &mut self,
        snap: &Snapshot,
        shard: ShardId,
        tx: super::session::Tx,
        keys: Vec<Bytes>,
    ) -> Result<Reply, ProxyError> {
        let watched = self.pg_watch.take().map(|(_, w)| w).unwrap_or_default();
        // A WATCH on a Redis shard cannot be here (its keys would be on it).
        self.unwatch().await?;
        let primary = snap.shard(shard).primary.clone();
        let Some(pg) = primary.postgres() else {
            return Err(ProxyError::internal(
                "a postgres shard without a postgres primary",
            ));
        };
        let queued = Queued {
            watched,
            keys,
            commands: tx.queued.iter().map(|r| r.args().to_vec()).collect(),
        };
        let frame = answered(pg.exec(self.proto, self.id, queued).await)?;
        Ok(Reply::Frame(frame))
    }

    /// Runs the FLUSHALL / FLUSHDB of a transaction that ran on `ran_on`
    /// on every other shard.
    async fn flush_others(
        &self,
        snap: &Snapshot,
        ran_on: ShardId,
        flushes: &[&Request],
    ) -> Result<(), ProxyError> {
        let backends = snap.backends();
        let mut waits = Vec::new();
        for i in 0..backends.shards().len() {
            let id = ShardId(i as u16);
            if id == ran_on || !backends.holds_keys(id) {
                continue;
            }
            for r in flushes {
                waits.push(
                    backends
                        .shard(id)
                        .primary
                        .send(self.wire(), self.id, r.raw()),
                );
            }
        }
        for w in waits {
            answered(w.await)?;
        }
        Ok(())
    }

    /// RANDOMKEY: asks shards, starting at a random one, until one has a
    /// key. A shard that answers with the proxy's own key (the mover's
    /// fence) is asked again, at most [`RANDOMKEY_TRIES`] times, then
    /// passed over as if empty.
    async fn randomkey(&self, proxy: &Proxy) -> Result<Reply, ProxyError> {
        let all = proxy.backends();
        let shards = all.shards();
        let start = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos() as usize)
            % shards.len().max(1);
        let frame = Bytes::from_static(b"*1\r\n$9\r\nRANDOMKEY\r\n");
        for i in 0..shards.len() {
            let s = &shards[(start + i) % shards.len()];
            if s.phase == crate::shardmap::ShardPhase::Removed {
                continue;
            }
            let ep = s.read_endpoint_after(self.id, self.read_floor(s));
            let reply = ep.send(self.wire(), self.id, &frame).await;
            let mut reply = answered(reply)?;
            // The proxy's own key (the mover's fence) is not the client's:
            // ask again, a few times (the shard may hold nothing else).
            for _ in 0..RANDOMKEY_TRIES {
                if !reply::bulk(&reply).is_some_and(|k| is_reserved_key(&k)) {
                    break;
                }
                reply = answered(ep.send(self.wire(), self.id, &frame).await)?;
            }
            if reply::is_error(&reply) || reply::bulk(&reply).is_some_and(|k| !is_reserved_key(&k))
            {
                return Ok(Reply::Frame(reply));
            }
        }
        Ok(Reply::Nil)
    }
}

/// How many times RANDOMKEY asks a shard again that answered with the
/// mover's fence: a shard holding one key besides it is passed over with a
/// chance of 1 in 2^16.
const RANDOMKEY_TRIES: usize = 16;

/// Which credentials a dedicated connection runs with.
#[derive(Clone, Copy)]
enum Runs {
    /// The client's backend ACL user: commands the proxy does not see.
    Scripted,
    /// The shard map's credentials: one command the proxy checked.
    Plain,
}

/// Counts a dedicated connection as lent for as long as it lives, even when
/// the client goes away mid-command and the future is dropped.
struct Lent<'a>(&'a crate::metrics::EndpointMetrics);

impl<'a> Lent<'a> {
    fn new(m: &'a crate::metrics::EndpointMetrics) -> Self {
        m.dedicated_delta(1.0);
        Lent(m)
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        self.0.dedicated_delta(-1.0);
    }
}

impl Session {
    /// SCAN over all shards, one shard after the other. The client's cursor
    /// is `backend_cursor * shards + shard`. A shard that is finished and gave
    /// nothing hands over to the next one at once, so an empty keyspace
    /// answers cursor 0 in one call, as Redis does.
    async fn scan(
        &self,
        proxy: &Proxy,
        req: &Request,
        mut shard: ShardId,
        mut cursor: u64,
    ) -> Result<Reply, ProxyError> {
        let all = proxy.backends();
        let shards = all.shards();
        let n = shards.len() as u64;
        let bad = || ProxyError::err("unexpected SCAN reply from a shard");
        loop {
            if !all.holds_keys(shard) {
                // A shard a finished rebalance removed: nothing to scan.
                if u64::from(shard.0) + 1 >= n {
                    return Ok(Reply::Array(vec![
                        Reply::Bulk(Bytes::from_static(b"0")),
                        Reply::Array(Vec::new()),
                    ]));
                }
                shard = ShardId(shard.0 + 1);
                cursor = 0;
                continue;
            }
            let mut args: Vec<&[u8]> = req.args().iter().map(|a| a.as_ref()).collect();
            let c = cursor.to_string();
            args[1] = c.as_bytes();
            let mut frame = BytesMut::new();
            encode_command(&args, &mut frame);
            let backends = all.shard(shard);
            let ep = backends.read_endpoint_after(self.id, self.read_floor(backends));
            ep.state.metrics.read_served();
            let reply = ep.send(self.wire(), self.id, &frame.freeze()).await;
            let reply = answered(reply)?;
            if reply::is_error(&reply) {
                return Ok(Reply::Frame(reply));
            }
            let elems = reply::array_elements(&reply)
                .ok()
                .flatten()
                .ok_or_else(bad)?;
            let [next, keys] = <[Bytes; 2]>::try_from(elems).map_err(|_| bad())?;
            let next: u64 = reply::bulk(&next)
                .and_then(|c| std::str::from_utf8(&c).ok()?.parse().ok())
                .ok_or_else(bad)?;
            let last = u64::from(shard.0) + 1 >= n;
            let listed = reply::array_elements(&keys)
                .ok()
                .flatten()
                .ok_or_else(bad)?;
            let all_listed = listed.len();
            // The proxy's own key (the mover's fence) is not the client's.
            let listed: Vec<Bytes> = super::pending::listed(listed).collect();
            let empty = listed.is_empty();
            if next == 0 && empty && !last {
                shard = ShardId(shard.0 + 1);
                cursor = 0;
                continue;
            }
            let client_cursor = if next == 0 {
                if last { 0 } else { u64::from(shard.0) + 1 }
            } else {
                next.checked_mul(n)
                    .and_then(|c| c.checked_add(u64::from(shard.0)))
                    .ok_or_else(|| {
                        ProxyError::err("SCAN cursor of a shard is too large to encode")
                    })?
            };
            let keys = if listed.len() == all_listed {
                Reply::Frame(keys)
            } else {
                Reply::Array(listed.into_iter().map(Reply::Frame).collect())
            };
            return Ok(Reply::Array(vec![
                Reply::Bulk(Bytes::from(client_cursor.to_string())),
                keys,
            ]));
        }
    }
}

/// Runs `work` (a script or a transaction on a dedicated connection to
/// `ep`) within the command timeout, except while the shard answers
/// `BUSY`: it is then running a script past Redis' busy-reply-threshold
/// (this one, or another client's before it), which ends when it finishes
/// or is killed (`SCRIPT KILL` / `FUNCTION KILL` through the proxy), and
/// the reply is then Redis' own (the killed script's error, in EXEC's
/// array for a transaction). A shard that does not answer at all times
/// out as before.
async fn unless_busy<T>(
    ep: &crate::backend::Endpoint,
    work: impl std::future::Future<Output = Result<T, BackendError>>,
) -> Result<T, BackendError> {
    let timeout = ep.state.options.command_timeout;
    tokio::pin!(work);
    loop {
        if let Ok(r) = tokio::time::timeout(timeout, &mut work).await {
            return r;
        }
        let busy = async {
            let mut probe = ep.dedicated(crate::protocol::Protocol::Resp2).await?;
            probe.request(b"*1\r\n$4\r\nPING\r\n").await
        };
        let busy = matches!(
            tokio::time::timeout(timeout, busy).await,
            Ok(Ok(frame)) if frame.starts_with(b"-BUSY")
        );
        if !busy {
            return Err(BackendError::Timeout {
                addr: ep.state.addr.clone(),
                millis: timeout.as_millis() as u64,
            });
        }
    }
}

/// Whether `r` is FLUSHALL or FLUSHDB.
fn is_flush(r: &Request) -> bool {
    crate::command::lookup(r.name()).is_some_and(|s| {
        matches!(
            s.handling,
            crate::command::Handling::Fanout(crate::command::FanoutKind::Flush)
        )
    })
}

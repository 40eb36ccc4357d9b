//! The handlers of commands that are more than one request to one shard:
//! split multi-key commands (MGET, MSET, DEL ...) and their merge, blocking
//! commands, MULTI/EXEC/WATCH, and fan-out to every shard.

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::{
    Action, ExclusiveOp, Pass, Target, keyless_allowed, move_first, one_slot, reserved_key,
    stateless_only,
};
use crate::backend::migrate::is_reserved_key;
use crate::command::{CommandSpec, FanoutKind, Handling, LocalKind, SplitKind, TxKind};
use crate::error::ProxyError;
use crate::protocol::{Reply, Request, request::encode_command_from};
use crate::proxy::Proxy;
use crate::proxy::pending::{Merge, Part, PendingKind};
use crate::proxy::session::{Session, Tx};
use crate::router::ShardId;
use crate::shardmap::{CrossSlot, ShardKind};
use crate::snapshot::Snapshot;

impl Session {
    pub(super) fn gather(
        &self,
        spec: &'static CommandSpec,
        parts: Vec<Part>,
        merge: Merge,
    ) -> Action {
        Action::Queue(self.pending(spec, PendingKind::Gather { parts, merge }, None))
    }

    /// MGET / MSET / DEL-like commands: one sub-command per shard, merged.
    pub(super) fn split(
        &mut self,
        snap: &Snapshot,
        spec: &'static CommandSpec,
        req: Request,
        kind: SplitKind,
        pass: Pass,
    ) -> Result<Action, ProxyError> {
        let table = snap.table();
        let args = req.args();
        let stride = if kind == SplitKind::Mset { 2 } else { 1 };
        if kind == SplitKind::Mset && args.len().is_multiple_of(2) {
            return Err(ProxyError::err(format!(
                "wrong number of arguments for '{}' command",
                spec.name
            )));
        }
        // The shards in first-seen order, and for each key the index of its
        // shard in that list (its part).
        let mut shards: SmallVec<[ShardId; 8]> = SmallVec::new();
        let mut part_of: SmallVec<[u16; 16]> = SmallVec::new();
        if (1..args.len())
            .step_by(stride)
            .any(|i| is_reserved_key(&args[i]))
        {
            return Err(reserved_key());
        }
        for i in (1..args.len()).step_by(stride) {
            let route = table.route(&args[i]);
            if pass.must_move(table, &route) {
                return Ok(move_first(req, spec));
            }
            let part = match shards.iter().position(|s| *s == route.shard) {
                Some(p) => p,
                None => {
                    shards.push(route.shard);
                    shards.len() - 1
                }
            };
            // A map has at most MAX_SHARDS (u16::MAX) shards.
            part_of.push(part as u16);
        }
        if shards.len() == 1 {
            return Ok(Action::Queue(self.send_to_shard(
                snap,
                spec,
                shards[0],
                req.raw(),
                pass,
            )));
        }
        let mut parts = Vec::with_capacity(shards.len());
        for (part, shard) in shards.iter().enumerate() {
            // The command name, then the arguments of this part's keys.
            let keys = part_of
                .iter()
                .enumerate()
                .filter(move |&(_, &p)| usize::from(p) == part)
                .flat_map(|(k, _)| &args[1 + k * stride..1 + (k + 1) * stride]);
            let sub = std::iter::once(&args[0]).chain(keys).map(|a| &a[..]);
            let encode = |out: &mut BytesMut| encode_command_from(sub, out);
            parts.push(self.part(snap, spec, *shard, pass, encode));
        }
        let merge = match kind {
            SplitKind::Mget => Merge::Mget { part_of },
            SplitKind::Mset => Merge::AllOk,
            SplitKind::SumInt => Merge::SumInt,
        };
        Ok(self.gather(spec, parts, merge))
    }

    pub(super) fn blocking(
        &mut self,
        snap: &Snapshot,
        spec: &'static CommandSpec,
        req: Request,
        pass: Pass,
    ) -> Result<Action, ProxyError> {
        let shard = match self.target(snap.table(), spec, &req, pass)? {
            Target::MoveFirst { .. } => return Ok(move_first(req, spec)),
            t => t.shard().unwrap_or(ShardId(0)),
        };
        let is_stream_read = matches!(spec.name, "xread" | "xreadgroup");
        let blocks = req.args().iter().any(|a| a.eq_ignore_ascii_case(b"BLOCK"));
        if is_stream_read && !blocks {
            return Ok(Action::Queue(self.send_to_shard(
                snap,
                spec,
                shard,
                req.raw(),
                pass,
            )));
        }
        stateless_only(snap, spec, shard, "blocking commands")?;
        Ok(Action::Exclusive(ExclusiveOp::Blocking(req, shard), spec))
    }

    pub(super) fn transaction(
        &mut self,
        proxy: &Proxy,
        spec: &'static CommandSpec,
        req: Request,
        kind: TxKind,
        pass: Pass,
    ) -> Result<Action, ProxyError> {
        match kind {
            TxKind::Multi => {
                if self.tx.is_some() {
                    return Err(ProxyError::err("MULTI calls can not be nested"));
                }
                let shard = self.watched_shard();
                self.tx = Some(Tx {
                    slot: None,
                    queued: Vec::new(),
                    shard,
                    aborted: false,
                });
                Ok(self.reply(spec, Reply::Ok))
            }
            TxKind::Exec if self.tx.is_none() => Err(ProxyError::err("EXEC without MULTI")),
            TxKind::Exec => Ok(Action::Exclusive(ExclusiveOp::Exec, spec)),
            TxKind::Discard if self.tx.is_none() => Err(ProxyError::err("DISCARD without MULTI")),
            TxKind::Discard => Ok(Action::Exclusive(ExclusiveOp::Discard, spec)),
            TxKind::Watch if self.tx.is_some() => {
                Err(ProxyError::err("WATCH inside MULTI is not allowed"))
            }
            TxKind::Watch => {
                let snap = proxy.snapshot();
                let shard = match self.target(snap.table(), spec, &req, pass)? {
                    Target::MoveFirst { .. } => return Ok(move_first(req, spec)),
                    t => t.shard().unwrap_or(ShardId(0)),
                };
                if self.watched_shard().is_some_and(|s| s != shard) {
                    return Err(ProxyError::crossslot());
                }
                Ok(Action::Exclusive(ExclusiveOp::Watch(req, shard), spec))
            }
            TxKind::Unwatch => Ok(Action::Exclusive(ExclusiveOp::Unwatch, spec)),
        }
    }

    /// A command inside MULTI: checked now, sent at EXEC (which moves keys
    /// in migrating slots first).
    pub(super) fn queue_in_tx(
        &mut self,
        proxy: &Proxy,
        spec: &'static CommandSpec,
        req: Request,
    ) -> Action {
        let snap = proxy.snapshot();
        let queueable = match spec.handling {
            Handling::Forward | Handling::Split(_) | Handling::Blocking | Handling::Script => true,
            Handling::Local(k) => matches!(k, LocalKind::Ping | LocalKind::Echo),
            // Runs in the transaction on its shard, then on every other
            // shard once EXEC succeeded (see `exclusive`).
            Handling::Fanout(FanoutKind::Flush) => {
                if !snap.map().options.allow_flush {
                    let e = ProxyError::err(format!(
                        "{} is disabled by the shard map (set options.allow_flush: true to enable it)",
                        spec.name.to_uppercase()
                    ));
                    if let Some(tx) = self.tx.as_mut() {
                        tx.aborted = true;
                    }
                    return self.fail(Some(spec), e);
                }
                if snap.table().has_migrating() {
                    if let Some(tx) = self.tx.as_mut() {
                        tx.aborted = true;
                    }
                    return self.fail(Some(spec), flush_while_moving(spec));
                }
                true
            }
            _ => false,
        };
        let by_slot = snap.map().options.crossslot == CrossSlot::Slot;
        let mut slot = None;
        let verdict = if queueable {
            self.target(snap.table(), spec, &req, Pass::Fresh)
                .and_then(|target| {
                    keyless_allowed(&snap, spec, target)?;
                    if by_slot {
                        slot = one_slot(snap.table(), spec, &req, &mut self.key_scratch)?;
                    }
                    let shard = target.shard();
                    // A postgres shard runs the block as one PostgreSQL
                    // transaction, without blocking commands or scripts.
                    match (shard, spec.handling) {
                        (Some(s), Handling::Blocking) => {
                            stateless_only(&snap, spec, s, "blocking commands")?
                        }
                        (Some(s), Handling::Script) => stateless_only(&snap, spec, s, "scripts")?,
                        _ => {}
                    }
                    Ok(shard)
                })
        } else {
            Err(ProxyError::err(format!(
                "command '{}' cannot be used inside MULTI through shardgate",
                spec.name
            )))
        };
        let Some(tx) = self.tx.as_mut() else {
            return self.fail(
                Some(spec),
                ProxyError::internal("no transaction to queue in"),
            );
        };
        match verdict {
            Ok(shard) => {
                if let Some(s) = shard {
                    if tx.shard.is_some_and(|t| t != s) {
                        tx.aborted = true;
                        return self.fail(Some(spec), ProxyError::crossslot());
                    }
                    tx.shard = Some(s);
                }
                if let Some(s) = slot {
                    // `options.crossslot: slot`: one slot for the whole
                    // transaction, as Redis Cluster requires.
                    if tx.slot.is_some_and(|t| t != s) {
                        tx.aborted = true;
                        return self.fail(Some(spec), ProxyError::crossslot());
                    }
                    tx.slot = Some(s);
                }
                tx.queued.push(req);
                self.reply(spec, Reply::Simple("QUEUED".into()))
            }
            Err(e) => {
                tx.aborted = true;
                self.fail(Some(spec), e)
            }
        }
    }

    pub(super) fn fanout(
        &mut self,
        proxy: &Proxy,
        snap: &Snapshot,
        spec: &'static CommandSpec,
        req: Request,
        kind: FanoutKind,
    ) -> Result<Action, ProxyError> {
        let backends = snap.backends();
        let n = backends.shards().len();
        let live: Vec<ShardId> = (0..n as u16)
            .map(ShardId)
            .filter(|&id| backends.holds_keys(id))
            .collect();
        let all = |s: &Self, frame: Bytes| -> Vec<Part> {
            live.iter()
                .map(|&id| {
                    s.part(snap, spec, id, Pass::Fresh, |out| {
                        out.extend_from_slice(&frame)
                    })
                })
                .collect()
        };
        match kind {
            FanoutKind::Keys => Ok(self.gather(spec, all(self, req.raw().clone()), Merge::Concat)),
            FanoutKind::Dbsize => {
                Ok(self.gather(spec, all(self, req.raw().clone()), Merge::SumInt))
            }
            FanoutKind::Randomkey => Ok(Action::Exclusive(ExclusiveOp::Randomkey, spec)),
            FanoutKind::Memory => self.memory(proxy, snap, spec, req, Pass::Fresh),
            FanoutKind::Flush => {
                if !snap.map().options.allow_flush {
                    return Err(ProxyError::err(format!(
                        "{} is disabled by the shard map (set options.allow_flush: true to enable it)",
                        spec.name.to_uppercase()
                    )));
                }
                if snap.table().has_migrating() {
                    return Err(flush_while_moving(spec));
                }
                Ok(self.gather(spec, all(self, req.raw().clone()), Merge::AllOk))
            }
            FanoutKind::Script | FanoutKind::Function => {
                let sub = req
                    .args()
                    .get(1)
                    .map(|s| s.to_ascii_uppercase())
                    .unwrap_or_default();
                // Scripts and functions live on the Redis shards.
                let redis: Vec<ShardId> = live
                    .iter()
                    .copied()
                    .filter(|&id| backends.shard(id).kind == ShardKind::Redis)
                    .collect();
                let Some(&first) = redis.first() else {
                    return Err(ProxyError::err("scripts and functions need a Redis shard"));
                };
                let on = |s: &Self, shards: &[ShardId]| -> Vec<Part> {
                    shards
                        .iter()
                        .map(|&id| {
                            s.part(snap, spec, id, Pass::Fresh, |out| {
                                out.extend_from_slice(req.raw())
                            })
                        })
                        .collect()
                };
                let (shards, merge) = match (kind, sub.as_slice()) {
                    (FanoutKind::Script, b"LOAD") | (FanoutKind::Function, b"LOAD") => {
                        (&redis[..], Merge::Same)
                    }
                    (FanoutKind::Script, b"EXISTS") => (&redis[..], Merge::AndArrays),
                    (FanoutKind::Script, b"FLUSH")
                    | (FanoutKind::Function, b"FLUSH" | b"DELETE" | b"RESTORE") => {
                        (&redis[..], Merge::AllOk)
                    }
                    // The shard running the script kills it; the rest say NOTBUSY.
                    (_, b"KILL") => (&redis[..], Merge::AnyOk),
                    (FanoutKind::Script, _) => {
                        return Err(ProxyError::err(format!(
                            "SCRIPT {} is not supported by shardgate (LOAD, EXISTS, FLUSH and KILL are)",
                            String::from_utf8_lossy(&sub)
                        )));
                    }
                    // LIST, DUMP, STATS, HELP (and Redis' own error for
                    // anything else): every shard holds the same libraries
                    // when they were loaded through the proxy; one answers.
                    _ => (std::slice::from_ref(&first), Merge::Same),
                };
                Ok(self.gather(spec, on(self, shards), merge))
            }
            FanoutKind::Scan => {
                // Redis' own rules (`SCAN -1` is cursor 2^64-1, not an error).
                let cursor = crate::command::cursor::parse_scan_cursor(&req.args()[1])
                    .ok_or_else(|| ProxyError::err("invalid cursor"))?;
                let shards = n as u64;
                let shard = ShardId((cursor % shards) as u16);
                Ok(Action::Exclusive(
                    ExclusiveOp::Scan(req, shard, cursor / shards),
                    spec,
                ))
            }
        }
    }
}

/// FLUSHALL / FLUSHDB while slots migrate: refused, since a key the mover
/// has copied to its new shard but not yet removed from its old one
/// (`rebalance::mover::walk`) could come back on the new shard after the
/// flush. Every proxy of a fleet has the migrating table before any key of
/// the window moves, so each refuses alike.
fn flush_while_moving(spec: &CommandSpec) -> ProxyError {
    ProxyError::tryagain(format_args!(
        "{} while a rebalance moves slots between shards; retry once the window is done",
        spec.name.to_uppercase()
    ))
}

//! One request -> what to do with it: forward to a shard, split over shards,
//! fan out to all, answer locally, or run inline on a dedicated connection.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::Proxy;
use super::pending::{Merge, Part, Pending, PendingKind, Retry};
use super::session::{Session, Tx};
use crate::backend::Role;
use crate::command::keys::key_indices;
use crate::command::{CommandSpec, FanoutKind, Handling, LocalKind, SplitKind, TxKind, lookup};
use crate::error::ProxyError;
use crate::protocol::{Reply, Request, request::encode_command_from};
use crate::router::{RoutingTable, ShardId};
use crate::shardmap::ShardKind;
use crate::snapshot::Snapshot;

/// Work that must run with the session to itself, after every earlier reply
/// has been written (dedicated connections, multi-step commands).
pub enum InlineOp {
    Exec,
    Discard,
    Watch(Request, ShardId),
    Unwatch,
    Blocking(Request, ShardId),
    Script(Request, ShardId),
    Info(Request),
    Randomkey,
    /// SCAN from (shard, that shard's cursor), decoded from the client's cursor.
    Scan(Request, ShardId, u64),
    /// A key of the request is in a migrating slot: move it to its new
    /// shard first, then dispatch the request again.
    MoveFirst(Request),
}

/// The dispatcher's decision for one request.
pub enum Action {
    /// A reply to queue behind the earlier ones.
    Queue(Pending),
    /// Run after draining the queue.
    Inline(InlineOp, &'static CommandSpec),
    /// Reply, then close the connection (QUIT).
    Close(Pending),
}

impl Session {
    /// Classifies and routes one request; `started` is when it arrived
    /// (one clock read serves every request parsed from one socket read).
    pub fn dispatch(&mut self, proxy: &Proxy, req: Request, started: Instant) -> Action {
        self.request_started = started;
        self.move_first = false;
        let Some(spec) = lookup(req.name()) else {
            if let Some(tx) = self.tx.as_mut() {
                tx.aborted = true;
            }
            return self.fail(None, ProxyError::Client(unknown_command(req.args()).into()));
        };
        if !spec.arity_ok(req.args().len()) {
            let e = ProxyError::err(format!(
                "wrong number of arguments for '{}' command",
                spec.name
            ));
            if let Some(tx) = self.tx.as_mut() {
                tx.aborted = true;
            }
            return self.fail(Some(spec), e);
        }
        // Redis' order: unknown command and arity first, then NOAUTH, then
        // permissions (a refused command inside MULTI aborts the transaction).
        if proxy.config.auth.is_some()
            && let Err(e) = self.check_access(proxy, spec, &req)
        {
            if let Some(tx) = self.tx.as_mut() {
                tx.aborted = true;
            }
            return self.fail(Some(spec), e);
        }
        // A fleet member that may have lost its lease routes no keys: the
        // fleet may have moved them without it (see `context::Fence`).
        if !matches!(spec.handling, Handling::Local(_)) && proxy.ctx.fence.blocks(started) {
            if let Some(tx) = self.tx.as_mut() {
                tx.aborted = true;
            }
            return self.fail(Some(spec), ProxyError::fenced());
        }
        if self.tx.is_some()
            && !matches!(
                spec.handling,
                Handling::Transaction(_) | Handling::Local(LocalKind::Quit)
            )
        {
            return self.queue_in_tx(proxy, spec, req);
        }
        let result = match spec.handling {
            Handling::Forward => self.forward(proxy, spec, req),
            Handling::Split(kind) => self.split(proxy, spec, req, kind),
            Handling::Blocking => self.blocking(proxy, spec, req),
            Handling::Transaction(kind) => self.transaction(proxy, spec, req, kind),
            Handling::Script => {
                let snap = proxy.snapshot();
                self.single_shard(snap.table(), spec, &req).and_then(|s| {
                    let shard = s.unwrap_or(ShardId(0));
                    if self.move_first {
                        return Ok(Action::Inline(InlineOp::MoveFirst(req), spec));
                    }
                    stateless_only(&snap, spec, shard, "scripts")?;
                    Ok(Action::Inline(InlineOp::Script(req, shard), spec))
                })
            }
            Handling::Fanout(kind) => self.fanout(proxy, spec, req, kind),
            Handling::Local(kind) => {
                let action = self.local(proxy, spec, req, kind);
                return self.close_after_failures(proxy, action);
            }
            Handling::Unsupported(reason) => Err(ProxyError::err(format!(
                "command '{}' is not supported by shardgate: {reason}",
                spec.name
            ))),
        };
        match result {
            Ok(action) => action,
            Err(e) => self.fail(Some(spec), e),
        }
    }

    /// After a failed login: a connection past `max_auth_failures` gets
    /// its reply and is closed (password guessing is slowed to one
    /// connection's handshake per few attempts).
    fn close_after_failures(&self, proxy: &Proxy, action: Action) -> Action {
        match action {
            Action::Queue(p) if self.auth_failures >= proxy.config.max_auth_failures => {
                proxy.metrics.client_limit_close("auth_failures");
                Action::Close(p)
            }
            other => other,
        }
    }

    /// An error reply, queued in order.
    pub fn fail(&self, spec: Option<&'static CommandSpec>, e: ProxyError) -> Action {
        Action::Queue(Pending::ready(
            &e.to_reply(),
            spec,
            self.proto,
            self.request_started,
        ))
    }

    /// A local reply, queued in order.
    pub fn reply(&self, spec: &'static CommandSpec, r: Reply) -> Action {
        Action::Queue(Pending::ready(
            &r,
            Some(spec),
            self.proto,
            self.request_started,
        ))
    }

    /// The one shard all keys of the command live on; `None` for a command
    /// without keys. Malformed key arguments route to the first shard so that
    /// Redis itself answers with its exact error.
    pub fn single_shard(
        &mut self,
        table: &RoutingTable,
        spec: &CommandSpec,
        req: &Request,
    ) -> Result<Option<ShardId>, ProxyError> {
        self.key_scratch.clear();
        if key_indices(spec, req.args(), &mut self.key_scratch).is_err() {
            return Ok(Some(ShardId(0)));
        }
        let args = req.args();
        let mut shard = None;
        for &i in &self.key_scratch {
            let Some(key) = args.get(i) else { continue };
            let route = table.route(key);
            if route.moving_from.is_some() && self.moved_under != Some(table.epoch()) {
                self.move_first = true;
            }
            let s = route.shard;
            match shard {
                None => shard = Some(s),
                Some(prev) if prev != s => return Err(ProxyError::crossslot()),
                Some(_) => {}
            }
        }
        Ok(shard)
    }

    fn forward(
        &mut self,
        proxy: &Proxy,
        spec: &'static CommandSpec,
        req: Request,
    ) -> Result<Action, ProxyError> {
        let snap = proxy.snapshot();
        let shard = self
            .single_shard(snap.table(), spec, &req)?
            .unwrap_or(ShardId(0));
        if self.move_first {
            return Ok(Action::Inline(InlineOp::MoveFirst(req), spec));
        }
        Ok(Action::Queue(self.send_to_shard(
            &snap,
            spec,
            shard,
            req.raw(),
        )))
    }

    /// Sends one frame to a shard: reads by the read policy, writes to the
    /// primary.
    pub fn send_to_shard(
        &self,
        snap: &Snapshot,
        spec: &'static CommandSpec,
        shard: ShardId,
        frame: &Bytes,
    ) -> Pending {
        let backends = snap.shard(shard);
        let kind = if spec.is_read() && !self.force_primary {
            let ep = backends.read_endpoint(self.id);
            ep.state.metrics.read_served();
            let retry = (ep.state.role == Role::Replica).then(|| Retry {
                primary: backends.primary.clone(),
                frame: frame.clone(),
                client: self.id,
            });
            PendingKind::Backend {
                rx: ep.send(self.proto, self.id, frame),
                retry,
            }
        } else {
            PendingKind::Backend {
                rx: backends.primary.send(self.proto, self.id, frame),
                retry: None,
            }
        };
        Pending {
            kind,
            spec: Some(spec),
            proto: self.proto,
            started: self.request_started,
        }
    }

    fn part(
        &self,
        snap: &Snapshot,
        spec: &'static CommandSpec,
        shard: ShardId,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Part {
        let backends = snap.shard(shard);
        let ep = if spec.is_read() && !self.force_primary {
            backends.read_endpoint(self.id)
        } else {
            &backends.primary
        };
        if spec.is_read() {
            ep.state.metrics.read_served();
        }
        Part::new(ep.send_encoded(self.proto, self.id, encode))
    }

    fn gather(&self, spec: &'static CommandSpec, parts: Vec<Part>, merge: Merge) -> Action {
        Action::Queue(Pending {
            kind: PendingKind::Gather { parts, merge },
            spec: Some(spec),
            proto: self.proto,
            started: self.request_started,
        })
    }

    /// MGET / MSET / DEL-like commands: one sub-command per shard, merged.
    fn split(
        &mut self,
        proxy: &Proxy,
        spec: &'static CommandSpec,
        req: Request,
        kind: SplitKind,
    ) -> Result<Action, ProxyError> {
        let snap = proxy.snapshot();
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
        for i in (1..args.len()).step_by(stride) {
            let route = table.route(&args[i]);
            if route.moving_from.is_some() && self.moved_under != Some(table.epoch()) {
                return Ok(Action::Inline(InlineOp::MoveFirst(req), spec));
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
                &snap,
                spec,
                shards[0],
                req.raw(),
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
            parts.push(self.part(&snap, spec, *shard, encode));
        }
        let merge = match kind {
            SplitKind::Mget => Merge::Mget { part_of },
            SplitKind::Mset => Merge::AllOk,
            SplitKind::SumInt => Merge::SumInt,
        };
        Ok(self.gather(spec, parts, merge))
    }

    fn blocking(
        &mut self,
        proxy: &Proxy,
        spec: &'static CommandSpec,
        req: Request,
    ) -> Result<Action, ProxyError> {
        let snap = proxy.snapshot();
        let shard = self
            .single_shard(snap.table(), spec, &req)?
            .unwrap_or(ShardId(0));
        if self.move_first {
            return Ok(Action::Inline(InlineOp::MoveFirst(req), spec));
        }
        let is_stream_read = matches!(spec.name, "xread" | "xreadgroup");
        let blocks = req.args().iter().any(|a| a.eq_ignore_ascii_case(b"BLOCK"));
        if is_stream_read && !blocks {
            return Ok(Action::Queue(self.send_to_shard(
                &snap,
                spec,
                shard,
                req.raw(),
            )));
        }
        stateless_only(&snap, spec, shard, "blocking commands")?;
        Ok(Action::Inline(InlineOp::Blocking(req, shard), spec))
    }

    fn transaction(
        &mut self,
        proxy: &Proxy,
        spec: &'static CommandSpec,
        req: Request,
        kind: TxKind,
    ) -> Result<Action, ProxyError> {
        match kind {
            TxKind::Multi => {
                if self.tx.is_some() {
                    return Err(ProxyError::err("MULTI calls can not be nested"));
                }
                let shard = self.watch.as_ref().map(|(s, _)| *s);
                self.tx = Some(Tx {
                    queued: Vec::new(),
                    shard,
                    aborted: false,
                });
                Ok(self.reply(spec, Reply::Ok))
            }
            TxKind::Exec if self.tx.is_none() => Err(ProxyError::err("EXEC without MULTI")),
            TxKind::Exec => Ok(Action::Inline(InlineOp::Exec, spec)),
            TxKind::Discard if self.tx.is_none() => Err(ProxyError::err("DISCARD without MULTI")),
            TxKind::Discard => Ok(Action::Inline(InlineOp::Discard, spec)),
            TxKind::Watch if self.tx.is_some() => {
                Err(ProxyError::err("WATCH inside MULTI is not allowed"))
            }
            TxKind::Watch => {
                let snap = proxy.snapshot();
                let shard = self
                    .single_shard(snap.table(), spec, &req)?
                    .unwrap_or(ShardId(0));
                if self.move_first {
                    return Ok(Action::Inline(InlineOp::MoveFirst(req), spec));
                }
                if matches!(&self.watch, Some((s, _)) if *s != shard) {
                    return Err(ProxyError::crossslot());
                }
                stateless_only(&snap, spec, shard, "transactions")?;
                Ok(Action::Inline(InlineOp::Watch(req, shard), spec))
            }
            TxKind::Unwatch => Ok(Action::Inline(InlineOp::Unwatch, spec)),
        }
    }

    /// A command inside MULTI: checked now, sent at EXEC.
    fn queue_in_tx(&mut self, proxy: &Proxy, spec: &'static CommandSpec, req: Request) -> Action {
        let queueable = match spec.handling {
            Handling::Forward | Handling::Split(_) | Handling::Blocking | Handling::Script => true,
            Handling::Local(k) => matches!(k, LocalKind::Ping | LocalKind::Echo),
            _ => false,
        };
        let snap = proxy.snapshot();
        let verdict = if queueable {
            self.single_shard(snap.table(), spec, &req)
                .and_then(|shard| {
                    if let Some(s) = shard {
                        stateless_only(&snap, spec, s, "transactions")?;
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
            return self.fail(Some(spec), ProxyError::err("internal: no transaction"));
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
                tx.queued.push(req);
                self.reply(spec, Reply::Simple("QUEUED".into()))
            }
            Err(e) => {
                tx.aborted = true;
                self.fail(Some(spec), e)
            }
        }
    }

    fn fanout(
        &mut self,
        proxy: &Proxy,
        spec: &'static CommandSpec,
        req: Request,
        kind: FanoutKind,
    ) -> Result<Action, ProxyError> {
        let snap = proxy.snapshot();
        let backends = snap.backends();
        let n = backends.shards().len();
        let live: Vec<ShardId> = (0..n as u16)
            .map(ShardId)
            .filter(|&id| backends.holds_keys(id))
            .collect();
        let all = |s: &Self, frame: Bytes| -> Vec<Part> {
            live.iter()
                .map(|&id| s.part(&snap, spec, id, |out| out.extend_from_slice(&frame)))
                .collect()
        };
        match kind {
            FanoutKind::Keys => Ok(self.gather(spec, all(self, req.raw().clone()), Merge::Concat)),
            FanoutKind::Dbsize => {
                Ok(self.gather(spec, all(self, req.raw().clone()), Merge::SumInt))
            }
            FanoutKind::Randomkey => Ok(Action::Inline(InlineOp::Randomkey, spec)),
            FanoutKind::Flush => {
                if !snap.map().options.allow_flush {
                    return Err(ProxyError::err(format!(
                        "{} is disabled by the shard map (set options.allow_flush: true to enable it)",
                        spec.name.to_uppercase()
                    )));
                }
                Ok(self.gather(spec, all(self, req.raw().clone()), Merge::AllOk))
            }
            FanoutKind::Script => {
                let sub = req
                    .args()
                    .get(1)
                    .map(|s| s.to_ascii_uppercase())
                    .unwrap_or_default();
                let merge = match sub.as_slice() {
                    b"LOAD" => Merge::Same,
                    b"EXISTS" => Merge::AndArrays,
                    b"FLUSH" => Merge::AllOk,
                    _ => {
                        return Err(ProxyError::err(format!(
                            "SCRIPT {} is not supported by shardgate (LOAD, EXISTS and FLUSH are)",
                            String::from_utf8_lossy(&sub)
                        )));
                    }
                };
                Ok(self.gather(spec, all(self, req.raw().clone()), merge))
            }
            FanoutKind::Scan => {
                let cursor: u64 = std::str::from_utf8(&req.args()[1])
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| ProxyError::err("invalid cursor"))?;
                let shards = n as u64;
                let shard = ShardId((cursor % shards) as u16);
                Ok(Action::Inline(
                    InlineOp::Scan(req, shard, cursor / shards),
                    spec,
                ))
            }
        }
    }
}

/// Refuses a stateful command (it needs a dedicated Redis connection) on a
/// postgres shard, in the style of the proxy's other refusals.
fn stateless_only(
    snap: &Snapshot,
    spec: &CommandSpec,
    shard: ShardId,
    what: &str,
) -> Result<(), ProxyError> {
    if snap.shard(shard).kind == ShardKind::Postgres {
        return Err(ProxyError::err(format!(
            "command '{}' is not supported by postgres shards: {what} need a Redis shard",
            spec.name
        )));
    }
    Ok(())
}

/// Redis' wording for an unknown command (server.c: at most 128 bytes of
/// quoted arguments, CR/LF replaced by spaces).
fn unknown_command(args: &[Bytes]) -> String {
    let name = args.first().map(|a| truncate(a, 128)).unwrap_or_default();
    let mut quoted = String::new();
    for a in args.iter().skip(1) {
        if quoted.len() >= 128 {
            break;
        }
        quoted.push_str(&format!("'{}' ", truncate(a, 128 - quoted.len())));
    }
    format!("ERR unknown command '{name}', with args beginning with: {quoted}")
        .replace(['\r', '\n'], " ")
}

fn truncate(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned()
}

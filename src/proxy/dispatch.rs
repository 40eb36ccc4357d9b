//! One request -> what to do with it: forward to a shard, split over shards,
//! fan out to all, answer locally, or run with the session to itself
//! (dedicated connections, multi-step commands, moves on touch).
//!
//! Routing is a value: [`target`] says where a request's keys live under
//! one table ([`Target`]), and the handler of the command's kind turns that
//! into an [`Action`] the connection loop carries out. A request whose keys
//! must move first (a rebalance is migrating their slot) becomes
//! [`ExclusiveOp::MoveFirst`]; after the move, [`Session::route`] routes it
//! again with [`Pass::Moved`], without the checks that already passed.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::Proxy;
use super::pending::{Part, Pending, PendingKind, Retry};
use super::session::{Session, WriteState};
use crate::backend::Role;
use crate::backend::cache::{Lookup, NearCache};
use crate::backend::migrate::is_reserved_key;
use crate::command::keys::key_indices;
use crate::command::{CommandSpec, FanoutKind, Handling, LocalKind, PubSubKind, TxKind, lookup};
use crate::error::ProxyError;
use crate::protocol::{Reply, Request};
use crate::router::{Epoch, Route, RoutingTable, ShardId, Slot};
use crate::shardmap::{CrossSlot, ShardKind};
use crate::snapshot::Snapshot;

mod multi;

/// Work that must run with the session to itself, after every earlier reply
/// has been written (dedicated connections, multi-step commands). Not to be
/// confused with Redis' "inline commands" (the telnet-style request format).
pub enum ExclusiveOp {
    Exec,
    Discard,
    Watch(Request, ShardId),
    Unwatch,
    Blocking(Request, ShardId),
    Script(Request, ShardId),
    Info(Request),
    /// MEMORY STATS over every shard.
    MemoryStats,
    Randomkey,
    /// SCAN from (shard, that shard's cursor), decoded from the client's cursor.
    Scan(Request, ShardId, u64),
    /// A key of the request is in a migrating slot: move it to its new
    /// shard first, then route the request again ([`Pass::Moved`]).
    MoveFirst(Request, &'static CommandSpec),
    /// SELECT of a database other than 0, once a shard accepted it.
    Select(crate::backend::Db),
}

/// The dispatcher's decision for one request.
pub enum Action {
    /// A reply to queue behind the earlier ones.
    Queue(Pending),
    /// Run after draining the queue.
    Exclusive(ExclusiveOp, &'static CommandSpec),
    /// Reply, then close the connection (QUIT).
    Close(Pending),
}

/// Where the keys of one request live under one routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The command names no key.
    NoKeys,
    /// Every key lives on this shard.
    Shard(ShardId),
    /// Every key lives on shard `to`, but at least one of them is in a
    /// migrating slot and was not moved under this table: it must be moved
    /// there before the command runs.
    MoveFirst { to: ShardId },
}

impl Target {
    /// The shard the keys live on (`None` without keys).
    pub fn shard(self) -> Option<ShardId> {
        match self {
            Target::NoKeys => None,
            Target::Shard(s) | Target::MoveFirst { to: s } => Some(s),
        }
    }
}

/// Which routing of a request this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The first: keys in migrating slots must move first.
    Fresh,
    /// After this session moved the request's keys under the table of
    /// this epoch: under that table they are where it says, and reads go
    /// to the primary (a replica may not have a moved key yet). Under a
    /// newer table, keys may have to move again.
    Moved(Epoch),
}

impl Pass {
    /// Whether `route` (under `table`) needs its key moved first.
    fn must_move(self, table: &RoutingTable, route: &Route) -> bool {
        route.moving_from.is_some() && self != Pass::Moved(table.epoch())
    }

    /// Whether reads must go to the primary.
    fn reads_primary(self) -> bool {
        matches!(self, Pass::Moved(_))
    }
}

/// Where the keys of `req` live under `table` (a pure decision: no I/O, no
/// session state). Keys on two shards are `-CROSSSLOT`, even if some must
/// move first. Malformed key arguments route to the first shard so that
/// Redis itself answers with its exact error. `scratch` is reused for the
/// key positions (classifying does not allocate).
pub fn target(
    table: &RoutingTable,
    spec: &CommandSpec,
    req: &Request,
    pass: Pass,
    scratch: &mut Vec<usize>,
) -> Result<Target, ProxyError> {
    scratch.clear();
    if key_indices(spec, req.args(), scratch).is_err() {
        return Ok(Target::Shard(ShardId(0)));
    }
    let args = req.args();
    let mut shard = None;
    let mut must_move = false;
    let mut apart = false;
    for &i in scratch.iter() {
        let Some(key) = args.get(i) else { continue };
        // Refused before CROSSSLOT, wherever it stands.
        if is_reserved_key(key) {
            return Err(reserved_key());
        }
        let route = table.route(key);
        must_move |= pass.must_move(table, &route);
        match shard {
            None => shard = Some(route.shard),
            Some(prev) => apart |= prev != route.shard,
        }
    }
    if apart {
        return Err(ProxyError::crossslot());
    }
    Ok(match shard {
        None => Target::NoKeys,
        Some(to) if must_move => Target::MoveFirst { to },
        Some(s) => Target::Shard(s),
    })
}

impl Session {
    /// Classifies and routes one request; `started` is when it arrived
    /// (one clock read serves every request parsed from one socket read).
    /// While the slow log is on, the request's bytes go with its reply
    /// (`Pending::raw`, or `exclusive_raw` for an exclusive operation).
    pub fn dispatch(&mut self, proxy: &Proxy, req: Request, started: Instant) -> Action {
        let raw = proxy.slowlog.keeps_requests().then(|| req.raw().clone());
        let mut action = self.classify(proxy, req, started);
        match &mut action {
            Action::Queue(p) | Action::Close(p) => p.raw = raw,
            Action::Exclusive(..) => self.exclusive_raw = raw,
        }
        action
    }

    /// [`Session::dispatch`] without the slow log's part.
    fn classify(&mut self, proxy: &Proxy, req: Request, started: Instant) -> Action {
        self.request_started = started;
        let Some(spec) = lookup(req.name()) else {
            if let Some(tx) = self.tx.as_mut() {
                tx.aborted = true;
            }
            return self.fail(None, ProxyError::Client(unknown_command(req.args()).into()));
        };
        if let Some(me) = &self.me {
            me.touch(spec, started, proxy.clients.base());
        }
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
        // Rate limits of the auth file (logging in and out always passes).
        if proxy.config.auth.is_some()
            && !matches!(
                spec.handling,
                Handling::Local(
                    LocalKind::Auth | LocalKind::Hello | LocalKind::Quit | LocalKind::Reset
                )
            )
            && let Err(e) = self.check_rate(proxy, &req)
        {
            if let Some(tx) = self.tx.as_mut() {
                tx.aborted = true;
            }
            return self.fail(Some(spec), e);
        }
        if let Err(e) = self.check_subscribed(spec, &req) {
            return self.fail(Some(spec), e);
        }
        if proxy.monitors.active() {
            proxy.monitors.feed(&self.addr, spec, req.args());
        }
        // A fleet member that may have lost its lease routes no keys: the
        // fleet may have moved them without it (see `context::Fence`).
        // Checked at the time of routing, not of arrival: the process may
        // have been frozen in between. (Each backend connection checks
        // again before it writes.)
        if !matches!(spec.handling, Handling::Local(_)) && proxy.ctx.fence.blocks_now() {
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
        let changes_info = matches!(
            spec.handling,
            Handling::Local(
                LocalKind::Hello | LocalKind::Auth | LocalKind::Client | LocalKind::Reset
            ) | Handling::PubSub(PubSubKind::Subscribe(_) | PubSubKind::Unsubscribe(_))
                | Handling::Transaction(_)
        );
        if self.tracking.is_some() {
            return self.route_tracked(proxy, spec, req, changes_info);
        }
        let action = self.route(proxy, spec, req, Pass::Fresh);
        if changes_info {
            self.sync_info();
        }
        action
    }

    /// [`Session::route`] for a client with `CLIENT TRACKING` on: the keys
    /// of its reads are tracked, and `CLIENT CACHING` lasts one command.
    fn route_tracked(
        &mut self,
        proxy: &Proxy,
        spec: &'static CommandSpec,
        req: Request,
        changes_info: bool,
    ) -> Action {
        let sets_caching = spec.name == "client"
            && req
                .args()
                .get(1)
                .is_some_and(|a| a.eq_ignore_ascii_case(b"CACHING"));
        if spec.is_read() {
            self.track_read(proxy, spec, &req);
        }
        let action = self.route(proxy, spec, req, Pass::Fresh);
        if changes_info {
            self.sync_info();
        }
        if !sets_caching && let Some(t) = self.tracking.as_mut() {
            t.caching = None;
        }
        action
    }

    /// Takes the request from the user's and the address's rate limits.
    fn check_rate(&self, proxy: &Proxy, req: &Request) -> Result<(), ProxyError> {
        use crate::auth::rate::Limited;
        let bytes = req.raw().len();
        let describe = |limit: crate::auth::rate::RateLimit, what: Limited| match what {
            Limited::Requests => format!("{} requests per second", limit.requests_per_second),
            Limited::Bytes => format!("{} bytes per second", limit.bytes_per_second),
        };
        if let Some(user) = &self.user
            && let Some(b) = &user.rate
            && let Err(what) = b.take(bytes, self.request_started)
        {
            proxy.metrics.rate_limited(true, what == Limited::Bytes);
            return Err(ProxyError::err(format!(
                "rate limit of user '{}' exceeded ({}); retry later",
                user.name,
                describe(b.limit, what)
            )));
        }
        if let Some(b) = &self.addr_rate
            && let Err(what) = b.take(bytes, self.request_started)
        {
            proxy.metrics.rate_limited(false, what == Limited::Bytes);
            let ip = self.peer_ip.map(|ip| ip.to_string()).unwrap_or_default();
            return Err(ProxyError::err(format!(
                "rate limit of client address {ip} exceeded ({}); retry later",
                describe(b.limit, what)
            )));
        }
        Ok(())
    }

    /// Routes a request that passed the checks (known command, arity,
    /// access, not queued in MULTI) by its command's kind.
    pub(super) fn route(
        &mut self,
        proxy: &Proxy,
        spec: &'static CommandSpec,
        req: Request,
        pass: Pass,
    ) -> Action {
        // The one snapshot this request is routed by.
        let snap = proxy.snapshot();
        if matches!(
            spec.handling,
            Handling::Forward
                | Handling::Split(_)
                | Handling::Blocking
                | Handling::Script
                | Handling::Transaction(TxKind::Watch)
        ) && snap.map().options.crossslot == CrossSlot::Slot
            && let Err(e) = one_slot(snap.table(), spec, &req, &mut self.key_scratch)
        {
            return self.fail(Some(spec), e);
        }
        let result = match spec.handling {
            Handling::Forward => self.forward(proxy, &snap, spec, req, pass),
            Handling::Split(kind) => self.split(&snap, spec, req, kind, pass),
            Handling::Blocking => self.blocking(&snap, spec, req, pass),
            Handling::Transaction(kind) => self.transaction(proxy, spec, req, kind, pass),
            Handling::Script => self.script(&snap, spec, req, pass),
            Handling::Fanout(FanoutKind::Memory) => self.memory(proxy, &snap, spec, req, pass),
            Handling::Fanout(kind) => self.fanout(proxy, &snap, spec, req, kind),
            Handling::PubSub(kind) => self.pubsub(proxy, spec, req, kind),
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

    /// Where the request's keys live under `table` ([`target`] with this
    /// session's scratch space).
    fn target(
        &mut self,
        table: &RoutingTable,
        spec: &CommandSpec,
        req: &Request,
        pass: Pass,
    ) -> Result<Target, ProxyError> {
        target(table, spec, req, pass, &mut self.key_scratch)
    }

    fn forward(
        &mut self,
        proxy: &Proxy,
        snap: &Snapshot,
        spec: &'static CommandSpec,
        req: Request,
        pass: Pass,
    ) -> Result<Action, ProxyError> {
        let shard = match self.target(snap.table(), spec, &req, pass)? {
            Target::MoveFirst { .. } => {
                return Ok(match self.read_migrating(proxy, snap, spec, &req) {
                    Some(p) => Action::Queue(p),
                    None => move_first(req, spec),
                });
            }
            t => t.shard().unwrap_or(ShardId(0)),
        };
        // A first pass routed to `Shard`: the key's slot is not migrating.
        // The near cache holds database 0's values.
        if pass == Pass::Fresh
            && spec.name == "get"
            && self.db == crate::backend::Db(0)
            && let Some(cache) = &snap.shard(shard).primary.cache
            && let Some(p) = self.read_cached(snap, cache, spec, shard, &req)
        {
            return Ok(Action::Queue(p));
        }
        Ok(Action::Queue(self.send_to_shard(
            snap,
            spec,
            shard,
            req.raw(),
            pass,
        )))
    }

    /// A GET answered by the shard's near cache (see `backend::cache`);
    /// `None` when this client's read must go to the shard: a write of its
    /// own is still in flight (only the connection it went down orders the
    /// read after it).
    fn read_cached(
        &self,
        snap: &Snapshot,
        cache: &NearCache,
        spec: &'static CommandSpec,
        shard: ShardId,
        req: &Request,
    ) -> Option<Pending> {
        let answered = match self.writes.state() {
            WriteState::InFlight => {
                cache.bypassed();
                return None;
            }
            WriteState::None => None,
            WriteState::AnsweredAt(t) => Some(t),
        };
        let key = req.args().get(1)?;
        let frame = req.raw();
        let kind = match cache.get(key, frame, self.proto, self.request_started, answered) {
            Lookup::Hit(reply) => PendingKind::Ready(reply),
            Lookup::Wait(rx) => PendingKind::Backend {
                rx,
                // The cache's connection failed: the primary answers.
                retry: Some(Retry {
                    primary: snap.shard(shard).primary.clone(),
                    frame: frame.clone(),
                    client: self.id,
                    wire: self.wire(),
                }),
            },
        };
        Some(self.pending(spec, kind, Some(shard)))
    }

    /// The pending reply of `spec`, produced by `kind`, sent to `shard`.
    pub(super) fn pending(
        &self,
        spec: &'static CommandSpec,
        kind: PendingKind,
        shard: Option<ShardId>,
    ) -> Pending {
        Pending {
            kind,
            spec: Some(spec),
            proto: self.proto,
            started: self.request_started,
            raw: None,
            shard,
            backend_us: None,
            answered_at: None,
        }
    }

    fn script(
        &mut self,
        snap: &Snapshot,
        spec: &'static CommandSpec,
        req: Request,
        pass: Pass,
    ) -> Result<Action, ProxyError> {
        let target = self.target(snap.table(), spec, &req, pass)?;
        keyless_allowed(snap, spec, target)?;
        let shard = match target {
            Target::MoveFirst { .. } => return Ok(move_first(req, spec)),
            t => t.shard().unwrap_or(ShardId(0)),
        };
        stateless_only(snap, spec, shard, "scripts")?;
        Ok(Action::Exclusive(ExclusiveOp::Script(req, shard), spec))
    }

    /// Sends one frame to a shard: reads by the read policy, writes to the
    /// primary.
    pub(super) fn send_to_shard(
        &self,
        snap: &Snapshot,
        spec: &'static CommandSpec,
        shard: ShardId,
        frame: &Bytes,
        pass: Pass,
    ) -> Pending {
        let backends = snap.shard(shard);
        let kind = if let Some(tc) = self.tracked_conn(spec, backends) {
            // Down the primary's tracking connection: Redis tracks the
            // keys, and their invalidations follow this reply.
            backends.primary.state.metrics.read_served();
            PendingKind::Backend {
                rx: tc.send(frame),
                retry: Some(Retry {
                    primary: backends.primary.clone(),
                    frame: frame.clone(),
                    client: self.id,
                    wire: self.wire(),
                }),
            }
        } else if (spec.is_read() || spec.reports_access()) && !pass.reads_primary() {
            let ep = backends.read_endpoint_after(self.id, self.read_floor(backends));
            ep.state.metrics.read_served();
            let retry = (ep.state.role == Role::Replica).then(|| Retry {
                primary: backends.primary.clone(),
                frame: frame.clone(),
                client: self.id,
                wire: self.wire(),
            });
            PendingKind::Backend {
                rx: self.send_read(snap, spec, ep, frame),
                retry,
            }
        } else {
            PendingKind::Backend {
                rx: backends.primary.send(self.wire(), self.id, frame),
                retry: None,
            }
        };
        self.pending(spec, kind, Some(shard))
    }

    fn part(
        &self,
        snap: &Snapshot,
        spec: &'static CommandSpec,
        shard: ShardId,
        pass: Pass,
        encode: impl FnOnce(&mut BytesMut),
    ) -> Part {
        let backends = snap.shard(shard);
        if let Some(tc) = self.tracked_conn(spec, backends) {
            backends.primary.state.metrics.read_served();
            return Part::new(tc.send_encoded(encode));
        }
        if spec.is_read() && !pass.reads_primary() {
            let ep = backends.read_endpoint_after(self.id, self.read_floor(backends));
            ep.state.metrics.read_served();
            return Part::new(self.send_read_encoded(snap, spec, ep, encode));
        }
        let ep = &backends.primary;
        if spec.is_read() {
            ep.state.metrics.read_served();
        }
        Part::new(ep.send_encoded(self.wire(), self.id, encode))
    }

    /// For a client with `CLIENT TRACKING` on whose keys of this read are
    /// tracked: the tracking connection of the shard's primary (a Redis
    /// shard, and no write of the client in flight: that read must follow
    /// the write down its connection). Registers the client table as a
    /// listener of that stream.
    fn tracked_conn<'b>(
        &self,
        spec: &CommandSpec,
        backends: &'b crate::backend::ShardBackends,
    ) -> Option<&'b crate::backend::tracking::TrackingConn> {
        let t = self.tracking.as_ref()?;
        // The tracking connection is one of database 0.
        if !spec.is_read()
            || !t.tracks_now()
            || self.writes.state() == WriteState::InFlight
            || self.db != crate::backend::Db(0)
        {
            return None;
        }
        let tc = backends.primary.tracking.as_deref()?;
        tc.listen(&t.listener);
        Some(tc)
    }

    /// After routing a read of a tracking client: remembers the keys it
    /// read through tracking connections (their invalidations will reach
    /// it), and invalidates at once, right behind the reply, the keys read
    /// any other way (PostgreSQL shards, a write of its own in flight,
    /// scripts, blocking reads), so that the client does not keep them.
    fn track_read(&mut self, proxy: &Proxy, spec: &CommandSpec, req: &Request) {
        let Some(t) = self.tracking.as_ref() else {
            return;
        };
        if !spec.is_read() || !t.tracks_now() {
            return;
        }
        self.key_scratch.clear();
        if key_indices(spec, req.args(), &mut self.key_scratch).is_err() {
            return;
        }
        let snap = proxy.snapshot();
        let through_stream = matches!(spec.handling, Handling::Forward | Handling::Split(_))
            && self.writes.state() != WriteState::InFlight
            && self.db == crate::backend::Db(0);
        let mut tracked = SmallVec::<[Bytes; 4]>::new();
        let mut untracked = SmallVec::<[Bytes; 4]>::new();
        for &i in &self.key_scratch {
            let Some(key) = req.args().get(i) else {
                continue;
            };
            let backends = snap.shard(snap.table().route(key).shard);
            match &backends.primary.tracking {
                Some(tc) if through_stream => {
                    tc.listen(&t.listener);
                    tracked.push(key.clone());
                }
                _ => untracked.push(key.clone()),
            }
        }
        proxy.tracking.read(self.id, tracked.into_iter());
        if !untracked.is_empty() {
            proxy.tracking.invalidate_now(&t.inbox, &untracked);
        }
    }
}

impl Session {
    /// MEMORY: STATS over every shard (summed); the rest (USAGE key,
    /// DOCTOR, ...) forwarded like any command, by key if it names one.
    fn memory(
        &mut self,
        proxy: &Proxy,
        snap: &Snapshot,
        spec: &'static CommandSpec,
        req: Request,
        pass: Pass,
    ) -> Result<Action, ProxyError> {
        let stats = req
            .args()
            .get(1)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"STATS"));
        if stats && req.args().len() == 2 {
            return Ok(Action::Exclusive(ExclusiveOp::MemoryStats, spec));
        }
        self.forward(proxy, snap, spec, req, pass)
    }
}

/// With `options.crossslot: slot`: the one slot every key of `req` hashes
/// to (None without keys), or `-CROSSSLOT` as Redis Cluster answers.
/// Malformed key arguments pass: Redis answers them.
fn one_slot(
    table: &RoutingTable,
    spec: &CommandSpec,
    req: &Request,
    scratch: &mut Vec<usize>,
) -> Result<Option<Slot>, ProxyError> {
    scratch.clear();
    if key_indices(spec, req.args(), scratch).is_err() {
        return Ok(None);
    }
    let mut slot = None;
    for &i in scratch.iter() {
        let Some(key) = req.args().get(i) else {
            continue;
        };
        let s = table.slot_of(key);
        match slot {
            None => slot = Some(s),
            Some(prev) if prev != s => return Err(ProxyError::crossslot()),
            Some(_) => {}
        }
    }
    Ok(slot)
}

/// The refusal of a command naming a reserved key ([`is_reserved_key`]).
pub(super) fn reserved_key() -> ProxyError {
    ProxyError::Client(std::borrow::Cow::Borrowed(
        "ERR key name '__shardgate_moving__' is reserved by shardgate (the rebalance fence)",
    ))
}

/// The decision to move a request's keys before it runs.
fn move_first(req: Request, spec: &'static CommandSpec) -> Action {
    Action::Exclusive(ExclusiveOp::MoveFirst(req, spec), spec)
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

/// `options.keyless_scripts: refuse`: a script or function call that
/// declares no key is refused (it would run on the first shard, and any
/// key it touches there is on whichever shard that is).
fn keyless_allowed(snap: &Snapshot, spec: &CommandSpec, target: Target) -> Result<(), ProxyError> {
    if spec.handling == Handling::Script
        && target == Target::NoKeys
        && snap.map().options.keyless_scripts == crate::shardmap::KeylessScripts::Refuse
    {
        return Err(ProxyError::err(format!(
            "{} without keys is refused by the shard map (options.keyless_scripts: refuse): declare every key the script reads or writes (numkeys > 0), so that it runs on their shard",
            spec.name.to_uppercase()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

//! The per-client connection loop.
//!
//! Requests are parsed as they arrive and dispatched at once (so requests to
//! backends pipeline), their replies queue in a FIFO and leave in request
//! order; every reply that is ready goes out in one write. Commands that need
//! the session to themselves (transactions, blocking commands) first drain the
//! FIFO. A client whose FIFO is full is not read until replies drain.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::Proxy;
use super::clients::{Closing, Usage};
use super::dispatch::Action;
use super::monitor::{Lagged, Watch};
use super::pending::Pending;
use super::pubsub::{Delivery, Overflow, Subscriptions};
use super::session::Session;
use super::stats::{Finished, Peer};
use crate::protocol::{Limits, Reply, parse_request};
use crate::tls::{ClientRead, ClientStream, ClientWrite};

mod end;
mod window;

use end::{End, OverLimit, SlowReader, over_limit};
use window::Window;

/// Size of one socket read.
const READ_CHUNK: usize = 16 * 1024;
/// Flush the reply buffer once it holds this much, even if more replies are ready.
const WRITE_HIGH_WATER: usize = 64 * 1024;

struct Client<'a> {
    proxy: &'a Proxy,
    rd: ClientRead,
    wr: ClientWrite,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Replies that became ready while a write of `wbuf` was pending (they
    /// follow it); with the unwritten part of `wbuf`, the client's output
    /// buffer that the output limits bound.
    spill: BytesMut,
    /// Since when the output buffer is over the soft limit.
    soft_since: Option<std::time::Instant>,
    /// This client's share of `--maxmemory-clients`.
    memory: Usage,
    /// How many requests may be in flight (see [`Window`]).
    window: Window,
    pending: VecDeque<Pending>,
    session: Session,
    /// No more input will be read (the client closed its side, or the proxy
    /// is shutting down): serve what was read, then stop.
    eof: bool,
    /// When the connection was accepted (the auth timeout runs from here).
    connected_at: std::time::Instant,
    /// Turns true when the proxy shuts down. Observed only while waiting for
    /// input, so a command already sent to a backend (even inside a
    /// transaction or a blocking op) always gets its reply written.
    shutdown: watch::Receiver<bool>,
}

/// Serves one client until it disconnects, sends QUIT or a malformed frame,
/// or the proxy shuts down. Returns whether it logged in (see
/// [`Proxy::client_logged_in`]).
pub async fn serve_client(
    proxy: &Proxy,
    stream: ClientStream,
    peer: SocketAddr,
    id: u64,
    shutdown: watch::Receiver<bool>,
) -> bool {
    let (rd, wr) = stream.split();
    let mut client = Client {
        proxy,
        rd,
        wr,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        spill: BytesMut::new(),
        soft_since: None,
        memory: proxy.clients.register(id, peer.to_string()),
        window: Window::new(),
        pending: VecDeque::new(),
        session: Session::new(id, peer.to_string()),
        eof: false,
        connected_at: std::time::Instant::now(),
        shutdown,
    };
    client.session.me = Some(client.memory.entry().clone());
    client.session.addr_rate = proxy
        .config
        .auth
        .as_ref()
        .and_then(|a| a.address_buckets(peer.ip()));
    let end = client.run().await;
    match end {
        End::Normal => tracing::debug!(client = id, %peer, "client disconnected"),
        End::Protocol => {
            proxy.metrics.client_protocol_error();
            tracing::info!(client = id, %peer, "closed client connection after a protocol error");
        }
        End::Io(e) => tracing::debug!(client = id, %peer, error = %e, "client connection error"),
        End::Killed => tracing::info!(client = id, %peer, "client closed by CLIENT KILL"),
        End::Limit(reason) => {
            proxy.metrics.client_limit_close(reason);
            tracing::info!(client = id, %peer, reason, "closed client connection: limit reached");
        }
    }
    client.session.logged_in_once
}

/// Redis' limits for a client that has not logged in yet (networking.c):
/// at most 10 arguments, each at most 16 KiB, so that a stranger cannot
/// make the proxy buffer a 512 MiB argument.
const UNAUTHENTICATED: Limits = Limits {
    max_bulk_len: 16 * 1024,
    max_args: 10,
    max_inline_len: 64 * 1024,
};

impl Client<'_> {
    /// Whether the client must still log in (auth configured, not yet).
    fn needs_login(&self) -> bool {
        self.proxy.config.auth.is_some() && self.session.user.is_none()
    }

    async fn run(&mut self) -> End {
        loop {
            match self.step().await {
                Ok(true) => {}
                Ok(false) => return End::Normal,
                Err(end) => return end,
            }
        }
    }

    /// One round: dispatch what was parsed, then wait for input or replies.
    /// Returns Ok(false) when the connection is done.
    async fn step(&mut self) -> Result<bool, End> {
        // Read the clock once for every request parsed in this round.
        let mut arrived = None;
        if self.needs_login() && self.connected_at.elapsed() >= self.proxy.config.auth_timeout {
            return Err(End::Limit("auth_timeout"));
        }
        let proxy = self.proxy;
        let in_flight = self.window.limit(self.proxy.config.max_pipeline);
        while self.pending.len() < in_flight {
            // Re-chosen per request: an AUTH earlier in the batch lifts them.
            let limits = if self.needs_login() {
                &UNAUTHENTICATED
            } else {
                &proxy.config.limits
            };
            match parse_request(&mut self.rbuf, limits) {
                Ok(Some(req)) => {
                    if proxy.pause.holds(|| self.session.may_write(&req)) {
                        // CLIENT PAUSE: earlier replies go out, this
                        // command waits (see `pause`).
                        self.drain().await.map_err(End::from)?;
                        self.wait_unpaused(self.session.may_write(&req)).await?;
                        arrived = None;
                    }
                    match self.session.dispatch(
                        self.proxy,
                        req,
                        *arrived.get_or_insert_with(std::time::Instant::now),
                    ) {
                        Action::Queue(p) => {
                            if p.is_backend_write() {
                                self.session.writes.sent();
                            } else if p.is_backend_read() {
                                self.session.writes.read_sent();
                            }
                            self.pending.push_back(p);
                        }
                        Action::Close(p) => {
                            self.pending.push_back(p);
                            self.drain().await.map_err(End::from)?;
                            return Ok(false);
                        }
                        Action::Exclusive(op, spec) => {
                            self.drain().await.map_err(End::from)?;
                            let started = std::time::Instant::now();
                            let Some(reply) = self.run_exclusive(op).await? else {
                                return Ok(false);
                            };
                            // EXEC, DISCARD and the like end a transaction.
                            self.session.sync_info();
                            if !spec.is_read() {
                                self.session.writes.answered(std::time::Instant::now());
                            } else {
                                // Not counted as sent; only its time matters.
                                self.session.writes.read_answered(std::time::Instant::now());
                            }
                            let raw = self.session.exclusive_raw.take();
                            let trip = self.session.exclusive_trip.take();
                            let finished = Finished {
                                spec: Some(spec),
                                ok: !crate::protocol::reply::is_error(&reply),
                                rejected: false,
                                reply: &reply,
                                elapsed: started.elapsed(),
                                raw: raw.as_ref(),
                                shard: trip.map(|(shard, _)| shard),
                                backend_us: trip.map(|(_, us)| us),
                            };
                            self.proxy
                                .command_finished(finished, Peer::of(&self.session));
                            self.wbuf.extend_from_slice(&reply);
                            self.flush().await.map_err(End::from)?;
                            // Time passed (a blocking command may have waited):
                            // what is parsed next takes a fresh reading.
                            arrived = None;
                        }
                    }
                }
                Ok(None) => {
                    if self.rbuf.len() > self.proxy.config.max_query_buffer {
                        // Redis' client-query-buffer-limit: close, no reply.
                        return Err(End::Limit("query_buffer"));
                    }
                    break;
                }
                Err(e) => {
                    // Before login, a request within the normal limits but
                    // past Redis' unauthenticated ones gets Redis' wording.
                    let unauthenticated = self.needs_login()
                        && parse_request(&mut self.rbuf.clone(), &proxy.config.limits).is_ok();
                    let message = if !unauthenticated {
                        format!("ERR {e}")
                    } else if e.to_string().contains("multibulk") {
                        "ERR Protocol error: unauthenticated multibulk length".to_owned()
                    } else {
                        "ERR Protocol error: unauthenticated bulk length".to_owned()
                    };
                    if unauthenticated {
                        self.proxy
                            .metrics
                            .client_limit_close("unauthenticated_request");
                    }
                    self.drain().await.map_err(End::from)?;
                    Reply::error(message).encode(self.session.proto, &mut self.wbuf);
                    // Best effort, bounded like every write: the connection
                    // closes either way.
                    let _ = self.flush().await;
                    return Err(End::Protocol);
                }
            }
        }
        if self.pending.is_empty() {
            self.flush().await.map_err(End::from)?;
            if self.eof {
                return Ok(false);
            }
            if self.session.pubsub.is_some()
                || self.session.monitor.is_some()
                || self.session.tracking.is_some()
            {
                return self.read_or_push().await;
            }
            return self.read_more().await;
        }
        let can_read = !self.eof && self.pending.len() < in_flight;
        // Messages wait while a subscribe confirmation is queued, so that
        // none overtakes the confirmation of its channel.
        let can_push = (self.session.pubsub.is_some() || self.session.monitor.is_some())
            && !self.pending.iter().any(Pending::is_subscription);
        tokio::select! {
            biased;
            _ = std::future::poll_fn(|cx| poll_front(self.proxy, Whose { peer: Peer { addr: &self.session.addr, name: self.session.name.as_ref() }, writes: &mut self.session.writes }, &mut self.pending, &mut self.wbuf, &mut self.window, cx, &mut None)) => {
                self.take_ready();
                self.flush().await.map_err(End::from)?;
                Ok(true)
            }
            ev = next_event(&mut self.session.pubsub, &mut self.session.monitor, None), if can_push => {
                self.write_event(ev)?;
                self.flush().await.map_err(End::from)?;
                Ok(true)
            }
            r = read_some(&mut self.rd, &mut self.rbuf), if can_read => {
                match r {
                    Ok(0) => self.eof = true,
                    Ok(_) => self.account()?,
                    Err(e) => return Err(End::Io(e)),
                }
                Ok(true)
            }
            why = self.memory.closing() => Err(End::from(why)),
            _ = stopping(&mut self.shutdown), if !self.eof => {
                self.eof = true;
                Ok(true)
            }
        }
    }

    async fn read_more(&mut self) -> Result<bool, End> {
        let mut idle = self.proxy.config.idle_timeout;
        let mut reason = "idle_timeout";
        if self.needs_login() {
            // A client that has not logged in is closed at the auth timeout.
            let left = self
                .proxy
                .config
                .auth_timeout
                .saturating_sub(self.connected_at.elapsed());
            if idle.is_none_or(|i| left < i) {
                idle = Some(left);
                reason = "auth_timeout";
            }
        }
        let read = async {
            match idle {
                // Idle: nothing in flight and waiting for the client to speak. A
                // client holding a WATCH or inside MULTI is idle too, as in Redis.
                Some(limit) => tokio::time::timeout(limit, read_some(&mut self.rd, &mut self.rbuf))
                    .await
                    .map_err(|_| End::Limit(reason)),
                None => Ok(read_some(&mut self.rd, &mut self.rbuf).await),
            }
        };
        let r = tokio::select! {
            r = read => r?,
            _ = stopping(&mut self.shutdown) => {
                self.eof = true;
                return Ok(!self.rbuf.is_empty());
            }
            why = self.memory.closing() => return Err(End::from(why)),
        };
        match r {
            Ok(0) => {
                self.eof = true;
                Ok(!self.rbuf.is_empty())
            }
            Ok(_) => {
                self.account()?;
                Ok(true)
            }
            Err(e) => Err(End::Io(e)),
        }
    }

    /// Waits for input or a pub/sub message, with nothing in flight: a
    /// subscribed client is never idle (Redis exempts it from `timeout`).
    async fn read_or_push(&mut self) -> Result<bool, End> {
        tokio::select! {
            r = read_some(&mut self.rd, &mut self.rbuf) => match r {
                Ok(0) => {
                    self.eof = true;
                    Ok(!self.rbuf.is_empty())
                }
                Ok(_) => {
                    self.account()?;
                    Ok(true)
                }
                Err(e) => Err(End::Io(e)),
            },
            why = self.memory.closing() => Err(End::from(why)),
            // Nothing is pending here: an invalidation cannot overtake the
            // reply of a read made before its write.
            ev = next_event(&mut self.session.pubsub, &mut self.session.monitor, self.session.tracking.as_deref().map(|t| &*t.inbox)) => {
                self.write_event(ev)?;
                self.flush().await.map_err(End::from)?;
                Ok(true)
            }
            _ = stopping(&mut self.shutdown) => {
                self.eof = true;
                Ok(!self.rbuf.is_empty())
            }
        }
    }

    /// Writes a pub/sub message or MONITOR line (and what is queued behind it).
    fn write_event(&mut self, ev: Event) -> Result<(), End> {
        match ev {
            Event::Push(d) => self.write_pushes(d),
            Event::Invalidate(i) => {
                i.encode(&mut self.wbuf);
                Ok(())
            }
            Event::Monitor(Err(Lagged)) => Err(End::Limit("output_buffer")),
            Event::Monitor(Ok(line)) => {
                self.wbuf.extend_from_slice(&line);
                if let Some(m) = self.session.monitor.as_mut() {
                    while self.wbuf.len() < WRITE_HIGH_WATER {
                        match m.try_recv() {
                            Ok(Some(line)) => self.wbuf.extend_from_slice(&line),
                            Ok(None) => break,
                            Err(Lagged) => return Err(End::Limit("output_buffer")),
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Moves `first` and the messages queued behind it into the write buffer.
    fn write_pushes(&mut self, first: Option<Delivery>) -> Result<(), End> {
        let (Some(d), Some(subs)) = (first, self.session.pubsub.as_mut()) else {
            return Ok(());
        };
        match subs.write(d, self.session.proto, &mut self.wbuf, WRITE_HIGH_WATER) {
            Ok(n) => {
                self.proxy.metrics.pubsub_delivered(n);
                Ok(())
            }
            Err(Overflow) => Err(End::Limit("pubsub_output_buffer")),
        }
    }

    /// Moves every reply that is already complete into the write buffer.
    fn take_ready(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut now = None;
        while !self.pending.is_empty() && self.wbuf.len() < WRITE_HIGH_WATER {
            if poll_front(
                self.proxy,
                Whose {
                    peer: Peer {
                        addr: &self.session.addr,
                        name: self.session.name.as_ref(),
                    },
                    writes: &mut self.session.writes,
                },
                &mut self.pending,
                &mut self.wbuf,
                &mut self.window,
                &mut cx,
                &mut now,
            )
            .is_pending()
            {
                break;
            }
        }
    }

    /// Writes the reply buffer. Every write to the client goes through here,
    /// so each must make progress within the write stall timeout. While a
    /// write waits for the client, replies that arrive are moved into
    /// `spill` and counted against the output limits (Redis'
    /// `client-output-buffer-limit`): a client that pipelines big replies
    /// and does not read them is closed instead of growing the proxy.
    async fn flush(&mut self) -> std::io::Result<()> {
        let stall = self.proxy.config.write_stall_timeout;
        loop {
            if self.wbuf.is_empty() {
                if self.spill.is_empty() {
                    break;
                }
                std::mem::swap(&mut self.wbuf, &mut self.spill);
            }
            let mut written = 0;
            while written < self.wbuf.len() {
                // Each write must make progress within the stall timeout.
                let deadline = tokio::time::Instant::now() + stall;
                let n = loop {
                    tokio::select! {
                        biased;
                        r = self.wr.write(&self.wbuf[written..]) => break r?,
                        _ = std::future::poll_fn(|cx| poll_front(self.proxy, Whose { peer: Peer { addr: &self.session.addr, name: self.session.name.as_ref() }, writes: &mut self.session.writes }, &mut self.pending, &mut self.spill, &mut self.window, cx, &mut None)), if !self.pending.is_empty() => {
                            let unwritten = self.wbuf.len() - written + self.spill.len();
                            self.check_output(unwritten)?;
                        }
                        why = self.memory.closing() => return Err(match why {
                            Closing::Evicted => over_limit("maxmemory_clients"),
                            Closing::Killed => std::io::Error::other(OverLimit("killed")),
                        }),
                        _ = tokio::time::sleep_until(deadline) => {
                            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, SlowReader));
                        }
                    }
                };
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                written += n;
                crate::metrics::hot::net_bytes(false, n);
            }
            // TLS holds records until flushed (a no-op on plain sockets).
            match tokio::time::timeout(stall, self.wr.flush()).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        SlowReader,
                    ));
                }
            }
            self.wbuf.clear();
            if self.wbuf.capacity() > 4 * WRITE_HIGH_WATER {
                // Do not keep a burst's buffer for the life of an idle client.
                self.wbuf = BytesMut::new();
            }
        }
        self.soft_since = None;
        if self.spill.capacity() > 4 * WRITE_HIGH_WATER {
            self.spill = BytesMut::new();
        }
        self.account().map_err(|_| over_limit("maxmemory_clients"))
    }

    /// Checks `unwritten` output bytes against the limits.
    fn check_output(&mut self, unwritten: usize) -> std::io::Result<()> {
        let limits = &self.proxy.config.output_limit;
        if limits.hard > 0 && unwritten > limits.hard {
            return Err(over_limit("output_buffer"));
        }
        if limits.soft > 0 && unwritten > limits.soft {
            let since = *self.soft_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= limits.soft_for {
                return Err(over_limit("output_buffer"));
            }
        } else {
            self.soft_since = None;
        }
        self.account().map_err(|_| over_limit("maxmemory_clients"))
    }

    /// Reports what this client buffers to the proxy-wide bound; Err when
    /// the client was chosen for closing.
    fn account(&mut self) -> Result<(), End> {
        let bytes = self.rbuf.capacity() + self.wbuf.len() + self.spill.len();
        if self.memory.set(bytes) {
            Ok(())
        } else {
            Err(End::Limit("maxmemory_clients"))
        }
    }

    /// Waits for every pending reply and writes them all.
    async fn drain(&mut self) -> std::io::Result<()> {
        while !self.pending.is_empty() {
            std::future::poll_fn(|cx| {
                poll_front(
                    self.proxy,
                    Whose {
                        peer: Peer {
                            addr: &self.session.addr,
                            name: self.session.name.as_ref(),
                        },
                        writes: &mut self.session.writes,
                    },
                    &mut self.pending,
                    &mut self.wbuf,
                    &mut self.window,
                    cx,
                    &mut None,
                )
            })
            .await;
            self.take_ready();
            if self.wbuf.len() >= WRITE_HIGH_WATER {
                self.flush().await?;
            }
        }
        self.flush().await
    }

    /// Waits while a `CLIENT PAUSE` holds the next command (`may_write`:
    /// whether it may write), counted in `blocked_clients` and
    /// `shardgate_paused_clients`, still watching the socket (a client that
    /// half-closes keeps its command, which runs after the pause).
    async fn wait_unpaused(&mut self, may_write: bool) -> Result<(), End> {
        let proxy = self.proxy;
        let _blocked = super::stats::Blocked::new(proxy);
        proxy.metrics.paused_delta(1.0);
        struct Unpaused<'a>(&'a super::Proxy);
        impl Drop for Unpaused<'_> {
            fn drop(&mut self) {
                self.0.metrics.paused_delta(-1.0);
            }
        }
        let _paused = Unpaused(proxy);
        let wait = proxy.pause.wait(may_write);
        tokio::pin!(wait);
        loop {
            if self.eof {
                wait.await;
                return Ok(());
            }
            tokio::select! {
                () = &mut wait => return Ok(()),
                why = self.memory.closing() => return Err(End::from(why)),
                r = read_some(&mut self.rd, &mut self.rbuf) => match r {
                    Ok(0) => self.eof = true,
                    Ok(_) => {
                        if self.rbuf.len() > self.proxy.config.max_query_buffer {
                            return Err(End::Limit("query_buffer"));
                        }
                    }
                    Err(e) => return Err(End::Io(e)),
                },
            }
        }
    }

    /// Runs an exclusive operation while watching the client socket: if the
    /// client hangs up (e.g. while blocked in BLPOP), the operation is dropped
    /// and its dedicated connection discarded. Returns None when the client is
    /// gone.
    async fn run_exclusive(
        &mut self,
        op: super::dispatch::ExclusiveOp,
    ) -> Result<Option<bytes::Bytes>, End> {
        let proxy = self.proxy;
        // Boxed: exclusive operations (transactions, blocking commands,
        // scripts, SCAN...) are rare, and their state machine would
        // otherwise make every idle client's task several KiB bigger.
        let mut fut = Box::pin(self.session.run_exclusive(proxy, op));
        loop {
            if self.eof {
                return Ok(Some(fut.await));
            }
            tokio::select! {
                reply = &mut fut => return Ok(Some(reply)),
                why = self.memory.closing() => return Err(End::from(why)),
                r = read_some(&mut self.rd, &mut self.rbuf) => match r {
                    Ok(0) => {
                        // Half-closed (e.g. `redis-cli --pipe`) or gone: a
                        // blocking command cannot be answered to anyone.
                        self.eof = true;
                        return Ok(None);
                    }
                    Ok(_) => {
                        if self.rbuf.len() > self.proxy.config.limits.max_inline_len.max(1 << 20) * 64 {
                            return Err(End::Io(std::io::Error::other("client sent too much while blocked")));
                        }
                    }
                    Err(e) => return Err(End::Io(e)),
                },
            }
        }
    }
}

/// Something to write that the client did not ask for just now.
enum Event {
    /// A pub/sub message (None: the hub is gone).
    Push(Option<Delivery>),
    /// A MONITOR line.
    Monitor(Result<bytes::Bytes, Lagged>),
    /// `CLIENT TRACKING` invalidations.
    Invalidate(super::tracking::Invalidation),
}

/// The next pub/sub message or MONITOR line (never, for other clients).
async fn next_event(
    subs: &mut Option<Box<Subscriptions>>,
    monitor: &mut Option<Box<Watch>>,
    tracking: Option<&super::tracking::Inbox>,
) -> Event {
    let invalidation = async {
        match tracking {
            Some(t) => t.recv().await,
            None => std::future::pending().await,
        }
    };
    let push = async {
        match subs {
            Some(s) => s.recv().await,
            None => std::future::pending().await,
        }
    };
    let line = async {
        match monitor {
            Some(m) => m.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        d = push => Event::Push(d),
        l = line => Event::Monitor(l),
        i = invalidation => Event::Invalidate(i),
    }
}

/// Resolves once the proxy shuts down (or is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

async fn read_some(rd: &mut ClientRead, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    let n = rd.read_buf(buf).await?;
    crate::metrics::hot::net_bytes(true, n);
    Ok(n)
}

/// The client whose replies [`poll_front`] writes.
struct Whose<'a> {
    peer: Peer<'a>,
    /// Its writes in flight (see [`super::session::Writes`]).
    writes: &'a mut super::session::Writes,
}

/// Polls the oldest pending reply; when it is ready, appends it to the write
/// buffer, counts it and removes it.
/// `now` is read from the clock at most once per batch of replies (lazily,
/// when the first one is ready) and shared by the rest of the batch.
fn poll_front(
    proxy: &Proxy,
    whose: Whose<'_>,
    pending: &mut VecDeque<Pending>,
    wbuf: &mut BytesMut,
    window: &mut Window,
    cx: &mut Context<'_>,
    now: &mut Option<std::time::Instant>,
) -> Poll<()> {
    let Some(front) = pending.front_mut() else {
        return Poll::Ready(());
    };
    // An error the proxy answered itself is a rejected command.
    let rejected = matches!(front.kind, super::pending::PendingKind::Ready(_));
    let write = front.is_backend_write();
    let read = front.is_backend_read();
    let start = wbuf.len();
    match front.poll_into(cx, wbuf) {
        Poll::Ready(ok) => {
            window.replied(wbuf.len() - start);
            let now = *now.get_or_insert_with(std::time::Instant::now);
            let finished = Finished {
                spec: front.spec,
                ok,
                rejected,
                reply: wbuf.get(start..).unwrap_or_default(),
                elapsed: now.saturating_duration_since(front.started),
                raw: front.raw.as_ref(),
                shard: front.shard,
                backend_us: front.backend_us,
            };
            proxy.command_finished(finished, whose.peer);
            // Not the batch's `now`, which may predate this reply's
            // arrival: the time the backend's reply was read (or, for a
            // reply the proxy made, a clock read of its own). A later
            // coalesced read must not share a request older than it.
            let answered = || front.answered_at.unwrap_or_else(std::time::Instant::now);
            if write {
                whose.writes.answered(answered());
            } else if read {
                whose.writes.read_answered(answered());
            }
            pending.pop_front();
            Poll::Ready(())
        }
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests;

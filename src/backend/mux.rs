//! A multiplexed, pipelined backend connection.
//!
//! Many clients' requests share one TCP connection: the writer batches every
//! queued request into one write, the reader cuts reply frames off the socket
//! and hands each to the oldest waiting sender (Redis answers in order). A
//! request never written (the connection was down) stays queued for the next
//! connection; a request in flight when the connection breaks fails with
//! [`BackendError::ConnectionLost`], because it may or may not have run.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::breaker::Admit;
use super::{EndpointState, Wire, connect::connect_wire};
use crate::error::BackendError;
use crate::protocol::{Protocol, scan};

/// The answer to one request: the reply frame exactly as the backend sent it.
pub type ReplyResult = Result<Answer, BackendError>;

/// A backend's reply to one request and how long the backend took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The reply frame, as the backend sent it.
    pub frame: Bytes,
    /// Microseconds from the write of the request to the read of its reply
    /// (what `shardgate_backend_request_duration_seconds` records), so
    /// that the slow log can tell the backend's time from the proxy's.
    pub backend_us: u32,
    /// When the proxy had the reply: read from the clock after the reply
    /// arrived, never before (a client's own write is answered no earlier
    /// than this; see `proxy::session::Writes`).
    pub arrived: Instant,
}

impl Answer {
    /// `frame`, answered `took` after it was sent, arrived now.
    pub fn new(frame: Bytes, took: Duration) -> Answer {
        Answer::arrived(frame, took, Instant::now())
    }

    /// `frame`, answered `took` after it was sent, read at `arrived` (one
    /// clock read serves every reply of a socket read).
    pub fn arrived(frame: Bytes, took: Duration, arrived: Instant) -> Answer {
        Answer {
            frame,
            backend_us: u32::try_from(took.as_micros()).unwrap_or(u32::MAX),
            arrived,
        }
    }
}
/// What a connection that asked for server pushes does with them (RESP3
/// `>` frames, e.g. `CLIENT TRACKING` invalidations): handled on the
/// connection's reader in the order the server sent them, between the
/// replies around them.
pub trait PushSink: Send + Sync {
    /// The request that turns the pushes on, sent first on every new
    /// connection, before any queued request (e.g. `CLIENT TRACKING ON`).
    fn subscribe_frame(&self) -> &[u8];
    /// A push frame arrived.
    fn push(&self, frame: &[u8]);
    /// The connection ended: whatever the pushes kept current may miss
    /// some from now on. (A new connection sends the subscribing request
    /// before any queued request.)
    fn reset(&self);
}

/// Where a client waits for its reply.
pub type ReplyRx = oneshot::Receiver<ReplyResult>;

/// Where the reply to one queued request goes.
enum ReplyTx {
    /// The channel of the one client that sent it.
    One(oneshot::Sender<ReplyResult>),
    /// A coalesced read: every client that waits for it (see
    /// [`super::coalesce`]).
    Flight(super::coalesce::Landing),
}

impl ReplyTx {
    /// Hands the reply over (the client may have gone: then it is dropped).
    fn send(self, r: ReplyResult) -> Result<(), ReplyResult> {
        match self {
            ReplyTx::One(tx) => tx.send(r),
            ReplyTx::Flight(landing) => {
                landing.land(r);
                Ok(())
            }
        }
    }
}

/// Requests queued for the connection and not yet written. Clients append
/// under the lock (no allocation, no channel per request); the writer takes
/// everything queued in one swap.
#[derive(Default)]
struct Outbox {
    /// The queued request frames, back to back.
    frames: BytesMut,
    /// One reply sender per frame in `frames`, in order.
    replies: Vec<ReplyTx>,
    /// Every [`MuxConn`] handle is gone: the task ends.
    unused: bool,
    /// The connection task, when it waits for requests.
    waker: Option<Waker>,
}

struct Shared {
    outbox: Mutex<Outbox>,
    /// The endpoint, to name it in errors.
    addr: String,
}

/// Every request taken is answered, even the ones still queued when the
/// connection task is dropped (its runtime shut down): a sender never
/// vanishes without a reply.
impl Drop for Shared {
    fn drop(&mut self) {
        let o = self.outbox.get_mut().unwrap_or_else(|e| e.into_inner());
        for reply in o.replies.drain(..) {
            let _ = reply.send(Err(stopped(&self.addr)));
        }
    }
}

/// The error of a request whose connection task stopped before answering.
fn stopped(addr: &str) -> BackendError {
    BackendError::ConnectionLost {
        addr: addr.to_owned(),
        reason: "connection task stopped".to_owned(),
    }
}

impl Shared {
    fn new(addr: &str) -> Shared {
        Shared {
            outbox: Mutex::new(Outbox::default()),
            addr: addr.to_owned(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Outbox> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until a request is queued; `None` once every handle is gone.
    async fn wait(&self) -> Option<()> {
        std::future::poll_fn(|cx| {
            let mut o = self.lock();
            if !o.replies.is_empty() {
                Poll::Ready(Some(()))
            } else if o.unused {
                Poll::Ready(None)
            } else {
                if !o.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    o.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }

    /// Queues one request (`encode` appends its frame) and the sender of
    /// its reply, and wakes the connection task.
    fn push(&self, encode: impl FnOnce(&mut BytesMut), reply: ReplyTx) {
        let waker = {
            let mut o = self.lock();
            encode(&mut o.frames);
            o.replies.push(reply);
            o.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes every queued request: their frames are appended to `frames`.
    fn take(&self, frames: &mut BytesMut) -> Vec<ReplyTx> {
        let mut o = self.lock();
        let mut replies = Vec::with_capacity(o.replies.len().max(16));
        std::mem::swap(&mut replies, &mut o.replies);
        if frames.is_empty() {
            std::mem::swap(frames, &mut o.frames);
        } else {
            frames.extend_from_slice(&o.frames);
            o.frames.clear();
        }
        replies
    }
}

/// Owned by the handles: when the last one is dropped, the task is told.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let waker = {
            let mut o = self.shared.lock();
            o.unused = true;
            o.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Requests written together, handed from the writer to the reader.
struct Batch {
    replies: Vec<ReplyTx>,
    sent: Instant,
}

struct InFlight {
    reply: ReplyTx,
    sent: Instant,
}

/// Handle to one multiplexed connection (cheap to clone; the connection task
/// lives as long as any handle).
#[derive(Clone)]
pub struct MuxConn {
    owner: Arc<Owner>,
    ep: Arc<EndpointState>,
}

/// Why a live connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Every handle is gone (the proxy stops, or a reload removed the
    /// endpoint): not a failure, and nothing to reconnect for.
    Unused,
    /// The connection broke (how, for the log); the next request reconnects.
    Failed(String),
}
/// Longest reconnect back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl MuxConn {
    /// Starts the connection task on `on` (the caller's runtime when `None`);
    /// it connects lazily on the first request.
    pub fn spawn(
        endpoint: Arc<EndpointState>,
        wire: Wire,
        on: Option<&tokio::runtime::Handle>,
    ) -> MuxConn {
        MuxConn::spawn_with(endpoint, wire, on, None)
    }

    /// [`MuxConn::spawn`] of a RESP3 connection whose server pushes go to
    /// `sink` (which also names the request that turns them on).
    pub fn spawn_pushing(
        endpoint: Arc<EndpointState>,
        on: Option<&tokio::runtime::Handle>,
        sink: Arc<dyn PushSink>,
    ) -> MuxConn {
        MuxConn::spawn_with(endpoint, Protocol::Resp3.into(), on, Some(sink))
    }

    fn spawn_with(
        endpoint: Arc<EndpointState>,
        wire: Wire,
        on: Option<&tokio::runtime::Handle>,
        sink: Option<Arc<dyn PushSink>>,
    ) -> MuxConn {
        let shared = Arc::new(Shared::new(&endpoint.addr));
        let task = supervise(endpoint.clone(), wire, shared.clone(), sink);
        match on {
            Some(h) => drop(h.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
        MuxConn {
            owner: Arc::new(Owner { shared }),
            ep: endpoint,
        }
    }

    /// Queues `frame` (one complete RESP request) and returns where its reply
    /// will arrive.
    pub fn send(&self, frame: &[u8]) -> ReplyRx {
        self.send_encoded(|out| out.extend_from_slice(frame))
    }

    /// [`MuxConn::send`] of a request that `encode` appends (one complete
    /// RESP request) straight to the connection's outgoing bytes.
    pub fn send_encoded(&self, encode: impl FnOnce(&mut BytesMut)) -> ReplyRx {
        let (reply, rx) = oneshot::channel();
        self.queue(encode, ReplyTx::One(reply));
        rx
    }

    /// Queues `frame`, the leading request of a coalesced read: its reply
    /// lands with every client waiting for it.
    pub(super) fn send_flight(&self, frame: &[u8], landing: super::coalesce::Landing) {
        self.queue(|out| out.extend_from_slice(frame), ReplyTx::Flight(landing));
    }

    fn queue(&self, encode: impl FnOnce(&mut BytesMut), reply: ReplyTx) {
        if self.ep.breaker.admit() == Admit::No {
            fail(reply, &self.ep, self.ep.breaker.refusal(&self.ep.addr));
            return;
        }
        self.owner.shared.push(encode, reply);
    }
}

async fn supervise(
    ep: Arc<EndpointState>,
    wire: Wire,
    shared: Arc<Shared>,
    sink: Option<Arc<dyn PushSink>>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if shared.wait().await.is_none() {
            return;
        }
        // A server that refuses the push subscription (an ACL without
        // CLIENT, say) is up: that failure does not open its breaker.
        let opened = match connect_wire(&ep.addr, &ep.link, wire, ep.options.connect_timeout).await
        {
            Ok(stream) => match &sink {
                Some(sink) => subscribe(&ep, stream, sink.as_ref())
                    .await
                    .map_err(|(e, refused)| (e, !refused)),
                None => Ok(stream),
            },
            // A shard with fewer databases is up.
            Err(e @ BackendError::NoSuchDb { .. }) => Err((e, false)),
            Err(e) => Err((e, true)),
        };
        match opened {
            Ok(stream) => {
                backoff = Duration::from_millis(50);
                ep.metrics.connect_attempt(true);
                ep.metrics.connections_delta(1.0);
                let (rd, wr) = stream.split();
                let ended = run(&ep, rd, wr, &shared, sink.as_deref()).await;
                if let Some(sink) = &sink {
                    sink.reset();
                }
                ep.metrics.connections_delta(-1.0);
                match ended {
                    Ended::Unused => {
                        tracing::debug!(endpoint = %ep.addr, shard = %ep.shard, "backend connection closed: no longer used");
                        return;
                    }
                    Ended::Failed(reason) => {
                        tracing::warn!(endpoint = %ep.addr, shard = %ep.shard, %reason, "backend connection closed; reconnecting on next request");
                    }
                }
            }
            Err((err, trips)) => {
                ep.metrics.connect_attempt(false);
                if trips {
                    ep.connection_failed(&err);
                    ep.breaker.failure(&err, &ep.addr, &ep.metrics);
                } else {
                    tracing::warn!(endpoint = %ep.addr, shard = %ep.shard, error = %err, "push subscription refused; requests that need it go to the shard's other connections");
                    backoff = MAX_BACKOFF;
                }
                // Fail what is queued, and fail fast during the back-off
                // instead of queueing without bound.
                let until = tokio::time::Instant::now() + backoff;
                let mut scratch = BytesMut::new();
                loop {
                    for reply in shared.take(&mut scratch) {
                        fail(reply, &ep, err.clone());
                    }
                    scratch.clear();
                    match tokio::time::timeout_at(until, shared.wait()).await {
                        Ok(Some(())) => {}
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Sends the sink's subscribing request on a new connection and checks its
/// reply (before any request goes down the connection). The error says
/// whether the server refused (it is up).
async fn subscribe(
    ep: &EndpointState,
    mut stream: crate::tls::BackendStream,
    sink: &dyn PushSink,
) -> Result<crate::tls::BackendStream, (BackendError, bool)> {
    let refused = |reason: String| BackendError::Unavailable {
        addr: ep.addr.clone(),
        reason,
    };
    let exchange = async {
        stream.write_all(sink.subscribe_frame()).await?;
        stream.flush().await?;
        super::connect::read_one_frame(&mut stream).await
    };
    match tokio::time::timeout(ep.options.connect_timeout, exchange).await {
        Ok(Ok(frame)) if crate::protocol::reply::is_error(&frame) => {
            let text = crate::protocol::reply::error_text(&frame).unwrap_or_default();
            Err((refused(format!("push subscription refused: {text}")), true))
        }
        Ok(Ok(_)) => Ok(stream),
        Ok(Err(e)) => Err((refused(format!("push subscription failed: {e}")), false)),
        Err(_) => Err((refused("push subscription timed out".to_owned()), false)),
    }
}

fn fail(reply: ReplyTx, ep: &EndpointState, err: BackendError) {
    ep.metrics.backend_error(err.kind());
    let _ = reply.send(Err(err));
}

/// Drives one live connection until it fails; returns why it ended.
async fn run(
    ep: &Arc<EndpointState>,
    rd: impl AsyncRead + Unpin,
    wr: impl AsyncWrite + Unpin,
    shared: &Shared,
    sink: Option<&dyn PushSink>,
) -> Ended {
    let (fifo_tx, fifo_rx) = mpsc::unbounded_channel();
    // A subscriber connection carries no key commands: not fenced.
    let fence = sink.is_none().then_some(&**ep);
    let writer = write_loop(wr, shared, fifo_tx, fence);
    let reader = read_loop(ep, rd, fifo_rx, sink);
    tokio::select! {
        r = writer => r,
        r = reader => Ended::Failed(r),
    }
}

/// Writes what the handles queue, batch by batch. With `fence` (the
/// endpoint, whose `lease_fence` is this proxy's), a batch taken
/// while the fence is closed is not written: each of its requests fails
/// with [`BackendError::Fenced`] (they were routed before the fence closed,
/// perhaps just before the process was frozen past its lease, and the
/// fleet may have moved their keys since); and a write that the socket
/// took in parts stops, and the connection with it, if the fence closed
/// between two parts.
async fn write_loop(
    mut wr: impl AsyncWrite + Unpin,
    shared: &Shared,
    fifo: mpsc::UnboundedSender<Batch>,
    fence: Option<&EndpointState>,
) -> Ended {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        if shared.wait().await.is_none() {
            return Ended::Unused;
        }
        // Let every task that is ready now (other clients with requests
        // for this connection) run first, so one write carries all of them.
        tokio::task::yield_now().await;
        let replies = shared.take(&mut buf);
        let sent = Instant::now();
        if let Some(ep) = fence
            && ep.lease_fence.blocks_now()
        {
            for reply in replies {
                let addr = ep.addr.clone();
                fail(reply, ep, BackendError::Fenced { addr });
            }
            buf.clear();
            continue;
        }
        if fifo.send(Batch { replies, sent }).is_err() {
            return Ended::Failed("reader stopped".to_owned());
        }
        let mut at = 0;
        while at < buf.len() {
            if at > 0
                && let Some(ep) = fence
                && ep.lease_fence.blocks_now()
            {
                return Ended::Failed("this proxy's fleet lease fence closed mid-write".to_owned());
            }
            match wr.write(&buf[at..]).await {
                Ok(0) => return Ended::Failed("write failed: the socket took no bytes".to_owned()),
                Ok(n) => at += n,
                Err(e) => return Ended::Failed(format!("write failed: {e}")),
            }
        }
        // TLS holds records until flushed (a no-op on plain sockets).
        if let Err(e) = wr.flush().await {
            return Ended::Failed(format!("write failed: {e}"));
        }
        buf.clear();
        if buf.capacity() > 4 * MAX_KEPT {
            // Do not keep a burst's buffer for the life of the connection.
            buf = BytesMut::with_capacity(16 * 1024);
        }
    }
}

/// Write buffer capacity kept between bursts.
const MAX_KEPT: usize = 256 * 1024;

/// Moves every batch the writer handed over into `waiting`.
fn receive(fifo: &mut mpsc::UnboundedReceiver<Batch>, waiting: &mut VecDeque<InFlight>) {
    while let Ok(b) = fifo.try_recv() {
        push_batch(waiting, b);
    }
}

fn push_batch(waiting: &mut VecDeque<InFlight>, b: Batch) {
    let sent = b.sent;
    waiting.extend(b.replies.into_iter().map(|reply| InFlight { reply, sent }));
}

/// The requests a live connection has written and waits for replies to,
/// and the batches the writer is handing over. Every one is answered even
/// when the connection task is dropped (its runtime shut down): a sender
/// never vanishes without a reply.
struct Waiters<'a> {
    addr: &'a str,
    fifo: mpsc::UnboundedReceiver<Batch>,
    q: VecDeque<InFlight>,
}

impl Drop for Waiters<'_> {
    fn drop(&mut self) {
        receive(&mut self.fifo, &mut self.q);
        for w in self.q.drain(..) {
            let _ = w.reply.send(Err(stopped(self.addr)));
        }
    }
}

async fn read_loop(
    ep: &Arc<EndpointState>,
    mut rd: impl AsyncRead + Unpin,
    fifo: mpsc::UnboundedReceiver<Batch>,
    sink: Option<&dyn PushSink>,
) -> String {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut w = Waiters {
        addr: &ep.addr,
        fifo,
        q: VecDeque::new(),
    };
    let timeout = ep.options.command_timeout;
    // One timer for the whole connection, armed at the oldest request's
    // deadline. It is not moved as replies arrive (that would touch the
    // timer wheel on every read): when it fires early it is re-armed at the
    // deadline of the request that is oldest by then.
    let timer = tokio::time::sleep(timeout);
    tokio::pin!(timer);
    let mut armed = false;
    let reason = loop {
        // Hand out every complete reply frame. One clock read per socket
        // read, not per reply: a read often carries many replies.
        let arrived = Instant::now();
        loop {
            match scan::frame_len(&buf) {
                Ok(Some(n)) => {
                    let frame = buf.split_to(n).freeze();
                    if frame.first() == Some(&b'>') {
                        // A server push, not a reply: no request waits for it.
                        if let Some(sink) = sink {
                            sink.push(&frame);
                        }
                        continue;
                    }
                    if w.q.is_empty() {
                        receive(&mut w.fifo, &mut w.q);
                    }
                    let Some(done) = w.q.pop_front() else {
                        let reason = "reply without a request (out of sync)".to_owned();
                        let err = BackendError::Protocol {
                            addr: ep.addr.clone(),
                            reason: reason.clone(),
                        };
                        fail_all(ep, &mut w.q, &mut w.fifo, err);
                        return reason;
                    };
                    let took = arrived.saturating_duration_since(done.sent);
                    ep.metrics.request_done(took);
                    ep.breaker.success(&ep.addr, &ep.metrics);
                    let _ = done.reply.send(Ok(Answer::arrived(frame, took, arrived)));
                }
                Ok(None) => break,
                Err(e) => {
                    let reason = format!("invalid reply: {e}");
                    fail_all(
                        ep,
                        &mut w.q,
                        &mut w.fifo,
                        BackendError::Protocol {
                            addr: ep.addr.clone(),
                            reason: reason.clone(),
                        },
                    );
                    return reason;
                }
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        if !armed && let Some(oldest) = w.q.front() {
            timer.as_mut().reset((oldest.sent + timeout).into());
            armed = true;
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => break "backend closed the connection".to_owned(),
                Ok(_) => {}
                Err(e) => break format!("read failed: {e}"),
            },
            b = w.fifo.recv() => match b {
                Some(b) => push_batch(&mut w.q, b),
                None => break "writer stopped".to_owned(),
            },
            _ = &mut timer, if armed => {
                armed = false;
                let overdue = w.q.front().is_some_and(|f| f.sent + timeout <= Instant::now());
                if overdue {
                    let millis = timeout.as_millis() as u64;
                    fail_all(ep, &mut w.q, &mut w.fifo, BackendError::Timeout { addr: ep.addr.clone(), millis });
                    return format!("no reply within {millis} ms");
                }
            }
        }
    };
    let err = BackendError::ConnectionLost {
        addr: ep.addr.clone(),
        reason: reason.clone(),
    };
    fail_all(ep, &mut w.q, &mut w.fifo, err);
    reason
}

fn fail_all(
    ep: &EndpointState,
    waiting: &mut VecDeque<InFlight>,
    fifo: &mut mpsc::UnboundedReceiver<Batch>,
    err: BackendError,
) {
    receive(fifo, waiting);
    if !waiting.is_empty() {
        ep.breaker.failure(&err, &ep.addr, &ep.metrics);
    }
    for w in waiting.drain(..) {
        fail(w.reply, ep, err.clone());
    }
}

#[cfg(test)]
mod tests;

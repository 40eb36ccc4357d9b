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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::breaker::Admit;
use super::{EndpointState, connect::connect};
use crate::error::BackendError;
use crate::protocol::{Protocol, scan};
use crate::tls::{BackendRead, BackendWrite};

/// The answer to one request: the reply frame exactly as the backend sent it.
pub type ReplyResult = Result<Bytes, BackendError>;
/// Where a client waits for its reply.
pub type ReplyRx = oneshot::Receiver<ReplyResult>;
type ReplyTx = oneshot::Sender<ReplyResult>;

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

#[derive(Default)]
struct Shared {
    outbox: Mutex<Outbox>,
}

impl Shared {
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

/// Why a connection ended when no handle to it is left (not a failure).
const UNUSED: &str = "connection no longer used";
/// Longest reconnect back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl MuxConn {
    /// Starts the connection task on `on` (the caller's runtime when `None`);
    /// it connects lazily on the first request.
    pub fn spawn(
        endpoint: Arc<EndpointState>,
        proto: Protocol,
        on: Option<&tokio::runtime::Handle>,
    ) -> MuxConn {
        let shared = Arc::new(Shared::default());
        let task = supervise(endpoint.clone(), proto, shared.clone());
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
        if self.ep.breaker.admit() == Admit::No {
            fail(reply, &self.ep, self.ep.breaker.refusal(&self.ep.addr));
            return rx;
        }
        let waker = {
            let mut o = self.owner.shared.lock();
            encode(&mut o.frames);
            o.replies.push(reply);
            o.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        rx
    }
}

async fn supervise(ep: Arc<EndpointState>, proto: Protocol, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if shared.wait().await.is_none() {
            return;
        }
        match connect(&ep.addr, &ep.link, proto, ep.options.connect_timeout).await {
            Ok(stream) => {
                backoff = Duration::from_millis(50);
                ep.metrics.connect_attempt(true);
                ep.metrics.connections_delta(1.0);
                ep.connection_up();
                let (rd, wr) = stream.split();
                let reason = run(&ep, rd, wr, &shared).await;
                ep.metrics.connections_delta(-1.0);
                if reason == UNUSED {
                    // Every handle is gone: the proxy stops or a reload
                    // removed the endpoint. Nothing to reconnect for.
                    tracing::debug!(endpoint = %ep.addr, shard = %ep.shard, "backend connection closed: no longer used");
                    return;
                }
                tracing::warn!(endpoint = %ep.addr, shard = %ep.shard, %reason, "backend connection closed; reconnecting on next request");
            }
            Err(err) => {
                ep.metrics.connect_attempt(false);
                ep.connection_failed(&err);
                ep.breaker.failure(&err, &ep.addr, &ep.metrics);
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

fn fail(reply: ReplyTx, ep: &EndpointState, err: BackendError) {
    ep.metrics.backend_error(err.kind());
    let _ = reply.send(Err(err));
}

/// Drives one live connection until it fails; returns why it ended.
async fn run(
    ep: &Arc<EndpointState>,
    rd: BackendRead,
    wr: BackendWrite,
    shared: &Shared,
) -> String {
    let (fifo_tx, fifo_rx) = mpsc::unbounded_channel();
    let writer = write_loop(wr, shared, fifo_tx);
    let reader = read_loop(ep, rd, fifo_rx);
    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}

async fn write_loop(
    mut wr: BackendWrite,
    shared: &Shared,
    fifo: mpsc::UnboundedSender<Batch>,
) -> String {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        if shared.wait().await.is_none() {
            return UNUSED.to_owned();
        }
        // Let every task that is ready now (other clients with requests
        // for this connection) run first, so one write carries all of them.
        tokio::task::yield_now().await;
        let replies = shared.take(&mut buf);
        let batch = Batch {
            replies,
            sent: Instant::now(),
        };
        if fifo.send(batch).is_err() {
            return "reader stopped".to_owned();
        }
        if let Err(e) = wr.write_all(&buf).await {
            return format!("write failed: {e}");
        }
        // TLS holds records until flushed (a no-op on plain sockets).
        if let Err(e) = wr.flush().await {
            return format!("write failed: {e}");
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

async fn read_loop(
    ep: &Arc<EndpointState>,
    mut rd: BackendRead,
    mut fifo: mpsc::UnboundedReceiver<Batch>,
) -> String {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut waiting: VecDeque<InFlight> = VecDeque::new();
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
                    if waiting.is_empty() {
                        receive(&mut fifo, &mut waiting);
                    }
                    let Some(w) = waiting.pop_front() else {
                        let reason = "reply without a request (out of sync)".to_owned();
                        let err = BackendError::Protocol {
                            addr: ep.addr.clone(),
                            reason: reason.clone(),
                        };
                        fail_all(ep, &mut waiting, &mut fifo, err);
                        return reason;
                    };
                    ep.metrics
                        .request_done(arrived.saturating_duration_since(w.sent));
                    ep.breaker.success(&ep.addr, &ep.metrics);
                    let _ = w.reply.send(Ok(frame));
                }
                Ok(None) => break,
                Err(e) => {
                    let reason = format!("invalid reply: {e}");
                    fail_all(
                        ep,
                        &mut waiting,
                        &mut fifo,
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
        if !armed && let Some(w) = waiting.front() {
            timer.as_mut().reset((w.sent + timeout).into());
            armed = true;
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => break "backend closed the connection".to_owned(),
                Ok(_) => {}
                Err(e) => break format!("read failed: {e}"),
            },
            b = fifo.recv() => match b {
                Some(b) => push_batch(&mut waiting, b),
                None => break "writer stopped".to_owned(),
            },
            _ = &mut timer, if armed => {
                armed = false;
                let overdue = waiting.front().is_some_and(|w| w.sent + timeout <= Instant::now());
                if overdue {
                    let millis = timeout.as_millis() as u64;
                    fail_all(ep, &mut waiting, &mut fifo, BackendError::Timeout { addr: ep.addr.clone(), millis });
                    return format!("no reply within {millis} ms");
                }
            }
        }
    };
    let err = BackendError::ConnectionLost {
        addr: ep.addr.clone(),
        reason: reason.clone(),
    };
    fail_all(ep, &mut waiting, &mut fifo, err);
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

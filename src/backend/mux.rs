//! A multiplexed, pipelined backend connection.
//!
//! Many clients' requests share one TCP connection: the writer batches every
//! queued request into one write, the reader cuts reply frames off the socket
//! and hands each to the oldest waiting sender (Redis answers in order). A
//! request never written (the connection was down) stays queued for the next
//! connection; a request in flight when the connection breaks fails with
//! [`BackendError::ConnectionLost`], because it may or may not have run.

use std::collections::VecDeque;
use std::sync::Arc;
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

struct Job {
    frame: Bytes,
    reply: oneshot::Sender<ReplyResult>,
}

struct InFlight {
    reply: oneshot::Sender<ReplyResult>,
    sent: Instant,
}

/// Handle to one multiplexed connection (cheap to clone; the connection task
/// lives as long as any handle).
#[derive(Clone)]
pub struct MuxConn {
    tx: mpsc::UnboundedSender<Job>,
    ep: Arc<EndpointState>,
}

/// Bytes gathered into one write before it is sent.
const MAX_BATCH: usize = 256 * 1024;
/// Why a connection ended when no handle to it is left (not a failure).
const UNUSED: &str = "connection no longer used";
/// Longest reconnect back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl MuxConn {
    /// Starts the connection task; it connects lazily on the first request.
    pub fn spawn(endpoint: Arc<EndpointState>, proto: Protocol) -> MuxConn {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(supervise(endpoint.clone(), proto, rx));
        MuxConn { tx, ep: endpoint }
    }

    /// Queues `frame` (one complete RESP request) and returns where its reply
    /// will arrive.
    pub fn send(&self, frame: Bytes) -> ReplyRx {
        let (reply, rx) = oneshot::channel();
        if self.ep.breaker.admit() == Admit::No {
            fail(reply, &self.ep, self.ep.breaker.refusal(&self.ep.addr));
            return rx;
        }
        if let Err(mpsc::error::SendError(job)) = self.tx.send(Job { frame, reply }) {
            // The task only ends when every handle is gone; answer anyway.
            let _ = job.reply.send(Err(BackendError::ConnectionLost {
                addr: String::new(),
                reason: "connection task stopped".to_owned(),
            }));
        }
        rx
    }
}

async fn supervise(ep: Arc<EndpointState>, proto: Protocol, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(first) = rx.recv().await else { return };
        match connect(&ep.addr, &ep.link, proto, ep.options.connect_timeout).await {
            Ok(stream) => {
                backoff = Duration::from_millis(50);
                ep.metrics.connect_attempt(true);
                ep.metrics.connections_delta(1.0);
                ep.connection_up();
                let (rd, wr) = stream.split();
                let reason = run(&ep, rd, wr, first, &mut rx).await;
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
                fail(first.reply, &ep, err.clone());
                // Fail fast during the back-off instead of queueing without bound.
                let until = tokio::time::Instant::now() + backoff;
                while let Ok(Some(job)) = tokio::time::timeout_at(until, rx.recv()).await {
                    fail(job.reply, &ep, err.clone());
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn fail(reply: oneshot::Sender<ReplyResult>, ep: &EndpointState, err: BackendError) {
    ep.metrics.backend_error(err.kind());
    let _ = reply.send(Err(err));
}

/// Drives one live connection until it fails; returns why it ended.
async fn run(
    ep: &Arc<EndpointState>,
    rd: BackendRead,
    wr: BackendWrite,
    first: Job,
    rx: &mut mpsc::UnboundedReceiver<Job>,
) -> String {
    let (fifo_tx, fifo_rx) = mpsc::unbounded_channel();
    let writer = write_loop(wr, first, rx, fifo_tx);
    let reader = read_loop(ep, rd, fifo_rx);
    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}

async fn write_loop(
    mut wr: BackendWrite,
    first: Job,
    rx: &mut mpsc::UnboundedReceiver<Job>,
    fifo: mpsc::UnboundedSender<InFlight>,
) -> String {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut next = Some(first);
    loop {
        let job = match next.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return UNUSED.to_owned(),
            },
        };
        let now = Instant::now();
        buf.extend_from_slice(&job.frame);
        if fifo
            .send(InFlight {
                reply: job.reply,
                sent: now,
            })
            .is_err()
        {
            return "reader stopped".to_owned();
        }
        while buf.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    buf.extend_from_slice(&job.frame);
                    if fifo
                        .send(InFlight {
                            reply: job.reply,
                            sent: now,
                        })
                        .is_err()
                    {
                        return "reader stopped".to_owned();
                    }
                }
                Err(_) => break,
            }
        }
        if let Err(e) = wr.write_all(&buf).await {
            return format!("write failed: {e}");
        }
        // TLS holds records until flushed (a no-op on plain sockets).
        if let Err(e) = wr.flush().await {
            return format!("write failed: {e}");
        }
        buf.clear();
    }
}

async fn read_loop(
    ep: &Arc<EndpointState>,
    mut rd: BackendRead,
    mut fifo: mpsc::UnboundedReceiver<InFlight>,
) -> String {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut waiting: VecDeque<InFlight> = VecDeque::new();
    let timeout = ep.options.command_timeout;
    let reason = loop {
        // Hand out every complete reply frame. One clock read per socket
        // read, not per reply: a read often carries many replies.
        let arrived = Instant::now();
        loop {
            match scan::frame_len(&buf) {
                Ok(Some(n)) => {
                    let frame = buf.split_to(n).freeze();
                    while let Ok(w) = fifo.try_recv() {
                        waiting.push_back(w);
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
        let deadline = waiting.front().map(|w| w.sent + timeout);
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => break "backend closed the connection".to_owned(),
                Ok(_) => {}
                Err(e) => break format!("read failed: {e}"),
            },
            w = fifo.recv() => match w {
                Some(w) => waiting.push_back(w),
                None => break "writer stopped".to_owned(),
            },
            _ = sleep_until(deadline) => {
                let millis = timeout.as_millis() as u64;
                fail_all(ep, &mut waiting, &mut fifo, BackendError::Timeout { addr: ep.addr.clone(), millis });
                return format!("no reply within {millis} ms");
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

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn fail_all(
    ep: &EndpointState,
    waiting: &mut VecDeque<InFlight>,
    fifo: &mut mpsc::UnboundedReceiver<InFlight>,
    err: BackendError,
) {
    while let Ok(w) = fifo.try_recv() {
        waiting.push_back(w);
    }
    if !waiting.is_empty() {
        ep.breaker.failure(&err, &ep.addr, &ep.metrics);
    }
    for w in waiting.drain(..) {
        fail(w.reply, ep, err.clone());
    }
}

//! Replies a client is waiting for, in request order.
//!
//! A client's replies leave through a FIFO of [`Pending`] entries. Forwarded
//! commands wait on the backend's reply frame and copy it verbatim; split and
//! fan-out commands wait on every part and merge. Polling is cancellation-safe:
//! each part's result is stored as it arrives.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::backend::Endpoint;
use crate::backend::mux::{ReplyResult, ReplyRx};
use crate::command::CommandSpec;
use crate::error::{BackendError, ProxyError};
use crate::protocol::{Protocol, Reply, reply};

/// One reply the client is owed.
pub struct Pending {
    pub kind: PendingKind,
    pub spec: Option<&'static CommandSpec>,
    pub proto: Protocol,
    pub started: Instant,
}

/// How the reply is produced.
pub enum PendingKind {
    /// Already encoded (local replies, errors).
    Ready(Bytes),
    /// A forwarded command; on a replica read that could not be sent, the
    /// request is retried once on the primary.
    Backend { rx: ReplyRx, retry: Option<Retry> },
    /// A split or fanned-out command: every part, then a merge.
    Gather { parts: Vec<Part>, merge: Merge },
}

/// What is needed to resend a read to the shard's primary.
pub struct Retry {
    pub primary: Arc<Endpoint>,
    pub frame: Bytes,
    pub client: u64,
}

/// One sub-request of a gathered reply.
pub struct Part {
    rx: ReplyRx,
    result: Option<ReplyResult>,
}

impl Part {
    /// A part waiting on `rx`.
    pub fn new(rx: ReplyRx) -> Part {
        Part { rx, result: None }
    }
}

/// How gathered parts become one reply.
pub enum Merge {
    /// MGET: `positions[i]` lists, for part i, where each of its values goes
    /// in the reply of `total` values.
    Mget {
        positions: Vec<Vec<usize>>,
        total: usize,
    },
    /// Integer replies summed (DEL, UNLINK, EXISTS, TOUCH, DBSIZE).
    SumInt,
    /// Every part must succeed; the reply is `+OK` (MSET, FLUSHDB, SCRIPT FLUSH).
    AllOk,
    /// Arrays concatenated (KEYS).
    Concat,
    /// SCRIPT EXISTS: element-wise AND of 0/1 arrays.
    AndArrays,
    /// SCRIPT LOAD: every shard must return the same SHA; it is the reply.
    Same,
}

impl Pending {
    /// A reply already known.
    pub fn ready(
        reply: &Reply,
        spec: Option<&'static CommandSpec>,
        proto: Protocol,
        started: Instant,
    ) -> Pending {
        let mut out = BytesMut::new();
        reply.encode(proto, &mut out);
        Pending {
            kind: PendingKind::Ready(out.freeze()),
            spec,
            proto,
            started,
        }
    }

    /// Polls for the reply; when ready, appends it to `out` and returns
    /// whether it was a success (for metrics).
    pub fn poll_into(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Poll<bool> {
        match &mut self.kind {
            PendingKind::Ready(bytes) => {
                out.extend_from_slice(bytes);
                Poll::Ready(!reply::is_error(bytes))
            }
            PendingKind::Backend { rx, retry } => {
                let result = match Pin::new(&mut *rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r.unwrap_or_else(|_| Err(lost())),
                };
                match result {
                    Ok(frame) => {
                        out.extend_from_slice(&frame);
                        Poll::Ready(!reply::is_error(&frame))
                    }
                    Err(e) if e.never_sent() && retry.is_some() => {
                        if let Some(r) = retry.take() {
                            *rx = r.primary.send(self.proto, r.client, &r.frame);
                        }
                        self.poll_into(cx, out)
                    }
                    Err(e) => {
                        ProxyError::from(e).to_reply().encode(self.proto, out);
                        Poll::Ready(false)
                    }
                }
            }
            PendingKind::Gather { parts, merge } => {
                let mut all = true;
                for part in parts.iter_mut() {
                    if part.result.is_none() {
                        match Pin::new(&mut part.rx).poll(cx) {
                            Poll::Ready(r) => part.result = Some(r.unwrap_or_else(|_| Err(lost()))),
                            Poll::Pending => all = false,
                        }
                    }
                }
                if !all {
                    return Poll::Pending;
                }
                let frames: Result<Vec<Bytes>, ProxyError> = parts
                    .iter_mut()
                    .map(|p| {
                        p.result
                            .take()
                            .unwrap_or_else(|| Err(lost()))
                            .map_err(ProxyError::from)
                    })
                    .collect();
                let reply = frames.and_then(|f| merge_frames(merge, f));
                match reply {
                    Ok(r) => {
                        r.encode(self.proto, out);
                        Poll::Ready(!matches!(r, Reply::Error(_)))
                    }
                    Err(e) => {
                        e.to_reply().encode(self.proto, out);
                        Poll::Ready(false)
                    }
                }
            }
        }
    }
}

fn lost() -> BackendError {
    BackendError::ConnectionLost {
        addr: "backend".to_owned(),
        reason: "reply channel closed".to_owned(),
    }
}

/// Combines the parts' frames. A backend error reply in any part becomes the
/// reply (the first one, in part order), as a single Redis would have
/// failed the whole command.
fn merge_frames(merge: &Merge, frames: Vec<Bytes>) -> Result<Reply, ProxyError> {
    if let Some(err) = frames.iter().find(|f| reply::is_error(f)) {
        return Ok(Reply::Frame(err.clone()));
    }
    let bad = |what: &str| ProxyError::err(format!("unexpected backend reply to {what}"));
    match merge {
        Merge::Mget { positions, total } => {
            let mut values: Vec<Reply> = vec![Reply::Nil; *total];
            for (frame, pos) in frames.iter().zip(positions) {
                let elems = reply::array_elements(frame)
                    .ok()
                    .flatten()
                    .ok_or_else(|| bad("MGET"))?;
                if elems.len() != pos.len() {
                    return Err(bad("MGET"));
                }
                for (e, &p) in elems.into_iter().zip(pos) {
                    if let Some(slot) = values.get_mut(p) {
                        *slot = Reply::Frame(e);
                    }
                }
            }
            Ok(Reply::Array(values))
        }
        Merge::SumInt => {
            let mut sum = 0i64;
            for f in &frames {
                sum += reply::integer(f).ok_or_else(|| bad("an integer command"))?;
            }
            Ok(Reply::Int(sum))
        }
        Merge::AllOk => Ok(Reply::Ok),
        Merge::Concat => {
            let mut all = Vec::new();
            for f in &frames {
                let elems = reply::array_elements(f)
                    .ok()
                    .flatten()
                    .ok_or_else(|| bad("KEYS"))?;
                all.extend(elems.into_iter().map(Reply::Frame));
            }
            Ok(Reply::Array(all))
        }
        Merge::AndArrays => {
            let mut acc: Vec<i64> = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                let elems = reply::array_elements(f)
                    .ok()
                    .flatten()
                    .ok_or_else(|| bad("SCRIPT EXISTS"))?;
                let vals: Vec<i64> = elems
                    .iter()
                    .map(|e| reply::integer(e).unwrap_or(0))
                    .collect();
                if i == 0 {
                    acc = vals;
                } else {
                    for (a, v) in acc.iter_mut().zip(vals) {
                        *a = (*a != 0 && v != 0) as i64;
                    }
                }
            }
            Ok(Reply::Array(acc.into_iter().map(Reply::Int).collect()))
        }
        Merge::Same => {
            let first = frames.first().cloned().ok_or_else(|| bad("SCRIPT LOAD"))?;
            if frames.iter().any(|f| f != &first) {
                return Err(ProxyError::err("shards disagree on the script SHA1"));
            }
            Ok(Reply::Frame(first))
        }
    }
}

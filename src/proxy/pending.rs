//! Replies a client is waiting for, in request order.
//!
//! A client's replies leave through a FIFO of [`Pending`] entries. Forwarded
//! commands wait on the backend's reply frame and copy it verbatim; split and
//! fan-out commands wait on every part and merge. Polling is cancellation-safe:
//! each part's result is stored as it arrives.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::backend::Endpoint;
use crate::backend::migrate::is_reserved_key;
use crate::backend::mux::{ReplyResult, ReplyRx};
use crate::command::CommandSpec;
use crate::error::ProxyError;
use crate::protocol::{Protocol, Reply, reply};

/// One reply the client is owed.
pub struct Pending {
    pub kind: PendingKind,
    pub spec: Option<&'static CommandSpec>,
    pub proto: Protocol,
    pub started: Instant,
    /// The request, kept (by reference count, not copied) while the slow
    /// log is on, so that a slow command can be logged with its arguments.
    pub raw: Option<Bytes>,
    /// The shard it was sent to (one shard only), for the slow log.
    pub shard: Option<crate::router::ShardId>,
    /// The backend's round trip, once answered (the longest part's for a
    /// gathered reply), for the slow log.
    pub backend_us: Option<u32>,
    /// When the backend's reply reached the proxy (the last part's for a
    /// gathered reply); `None` for replies the proxy made itself or errors.
    pub answered_at: Option<Instant>,
}

/// How the reply is produced.
pub enum PendingKind {
    /// Already encoded (local replies, errors).
    Ready(Bytes),
    /// A forwarded command; a replica read that could not be sent, timed
    /// out or lost its connection is retried once on the primary (`retry`
    /// is only set for reads).
    Backend { rx: ReplyRx, retry: Option<Retry> },
    /// A split or fanned-out command: every part, then a merge.
    Gather { parts: Vec<Part>, merge: Merge },
    /// A reply that takes more than one backend request, computed by its
    /// own future (a read of a key in a migrating slot, see `moves`): the
    /// frame in the client's protocol, or the error to encode.
    Computed(Pin<Box<dyn Future<Output = Result<Bytes, ProxyError>> + Send>>),
    /// (P|S)(UN)SUBSCRIBE: the confirmations, once the shards confirmed
    /// (see `pubsub`; messages wait while one of these is queued).
    Subscribed {
        wait: super::pubsub::Confirmation,
        reply: Bytes,
    },
}

/// What is needed to resend a read to the shard's primary.
pub struct Retry {
    pub primary: Arc<Endpoint>,
    pub frame: Bytes,
    pub client: u64,
    /// The client's protocol and database, for the request to the primary.
    pub wire: crate::backend::Wire,
}

/// One sub-request of a gathered reply.
pub struct Part {
    rx: ReplyRx,
    result: Option<Result<Bytes, ProxyError>>,
    backend_us: u32,
    arrived: Option<Instant>,
}

impl Part {
    /// A part waiting on `rx`.
    pub fn new(rx: ReplyRx) -> Part {
        Part {
            rx,
            result: None,
            backend_us: 0,
            arrived: None,
        }
    }
}

/// How gathered parts become one reply.
pub enum Merge {
    /// MGET: `part_of[k]` is the part that was sent key k; the parts'
    /// values are copied out in key order.
    Mget { part_of: SmallVec<[u16; 16]> },
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
    /// SCRIPT KILL / FUNCTION KILL: the one shard running a script
    /// answers `+OK`, the others `-NOTBUSY`; any success is the reply,
    /// else the first error that is not NOTBUSY, else NOTBUSY.
    AnyOk,
    /// PUBLISH: the one part's integer plus this (the shard counts the
    /// proxy's pub/sub link, not the clients behind it).
    Offset(i64),
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
            raw: None,
            shard: None,
            backend_us: None,
            answered_at: None,
        }
    }

    /// Whether this is a command that may write, sent to a backend (counted
    /// in the session's [`super::session::Writes`] while in flight).
    pub fn is_backend_write(&self) -> bool {
        matches!(
            self.kind,
            PendingKind::Backend { .. } | PendingKind::Gather { .. }
        ) && self.spec.is_some_and(|s| !s.is_read())
    }

    /// Whether this is a read sent to a backend (counted like writes, see
    /// [`super::session::Writes`]; a migrating read too, so that a later
    /// read of the client shares no request older than it).
    pub fn is_backend_read(&self) -> bool {
        matches!(
            self.kind,
            PendingKind::Backend { .. } | PendingKind::Gather { .. } | PendingKind::Computed(_)
        ) && self.spec.is_some_and(|s| s.is_read())
    }

    /// Whether this is a (P|S)SUBSCRIBE confirmation or an unsubscribe's
    /// (pub/sub messages are held while one is queued, so that none
    /// overtakes it).
    pub fn is_subscription(&self) -> bool {
        matches!(self.kind, PendingKind::Subscribed { .. })
            || self.spec.is_some_and(|s| {
                matches!(
                    s.handling,
                    crate::command::Handling::PubSub(crate::command::PubSubKind::Unsubscribe(_))
                )
            })
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
                    Poll::Ready(r) => answered_timed(r).map(|(frame, us, arrived)| {
                        self.backend_us = Some(us);
                        self.answered_at = Some(arrived);
                        frame
                    }),
                };
                match result {
                    Ok(frame) => {
                        out.extend_from_slice(&frame);
                        Poll::Ready(!reply::is_error(&frame))
                    }
                    Err(ProxyError::Backend(e)) if e.read_may_retry() && retry.is_some() => {
                        if let Some(r) = retry.take() {
                            *rx = r.primary.send(r.wire, r.client, &r.frame);
                        }
                        self.poll_into(cx, out)
                    }
                    Err(e) => {
                        e.to_reply().encode(self.proto, out);
                        Poll::Ready(false)
                    }
                }
            }
            PendingKind::Computed(reply) => match reply.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(frame)) => {
                    self.answered_at = Some(Instant::now());
                    out.extend_from_slice(&frame);
                    Poll::Ready(!reply::is_error(&frame))
                }
                Poll::Ready(Err(e)) => {
                    e.to_reply().encode(self.proto, out);
                    Poll::Ready(false)
                }
            },
            PendingKind::Subscribed { wait, reply } => match wait.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    out.extend_from_slice(reply);
                    Poll::Ready(true)
                }
            },
            PendingKind::Gather { parts, merge } => {
                let mut all = true;
                for part in parts.iter_mut() {
                    if part.result.is_none() {
                        match Pin::new(&mut part.rx).poll(cx) {
                            Poll::Ready(r) => {
                                part.result =
                                    Some(answered_timed(r).map(|(frame, us, arrived)| {
                                        part.backend_us = us;
                                        part.arrived = Some(arrived);
                                        frame
                                    }));
                            }
                            Poll::Pending => all = false,
                        }
                    }
                }
                if !all {
                    return Poll::Pending;
                }
                self.backend_us = parts.iter().map(|p| p.backend_us).max();
                self.answered_at = last_arrival(parts);
                let frames: Result<SmallVec<[Bytes; 4]>, ProxyError> = parts
                    .iter_mut()
                    .map(|p| {
                        p.result.take().unwrap_or_else(|| {
                            Err(ProxyError::internal("a gathered part was taken twice"))
                        })
                    })
                    .collect();
                match frames.and_then(|f| merge_into(merge, &f, self.proto, out)) {
                    Ok(success) => Poll::Ready(success),
                    Err(e) => {
                        e.to_reply().encode(self.proto, out);
                        Poll::Ready(false)
                    }
                }
            }
        }
    }
}

/// The reply a client waited for on a reply channel. Every connection task
/// answers each request it took, with an error naming the endpoint if it
/// must (even when the task is dropped), so a channel closed without an
/// answer is the proxy's own failure.
pub(super) fn answered(
    r: Result<ReplyResult, tokio::sync::oneshot::error::RecvError>,
) -> Result<Bytes, ProxyError> {
    answered_timed(r).map(|(frame, _, _)| frame)
}

/// [`answered`], with the backend's round trip in microseconds.
/// When the last part's reply arrived; `None` when a part has no reply
/// (it failed: the caller reads the clock instead).
fn last_arrival(parts: &[Part]) -> Option<Instant> {
    let mut last: Option<Instant> = None;
    for p in parts {
        let a = p.arrived?;
        last = Some(last.map_or(a, |l| l.max(a)));
    }
    last
}

fn answered_timed(
    r: Result<ReplyResult, tokio::sync::oneshot::error::RecvError>,
) -> Result<(Bytes, u32, Instant), ProxyError> {
    match r {
        Ok(reply) => {
            let a = reply?;
            Ok((a.frame, a.backend_us, a.arrived))
        }
        Err(_) => Err(ProxyError::internal(
            "a backend connection dropped a request without answering it",
        )),
    }
}

/// Appends the reply combined from the parts' frames to `out` and returns
/// whether it is a success. A backend error reply in any part becomes the
/// reply (the first one, in part order), as a single Redis would have
/// failed the whole command. Nothing is appended on `Err`.
fn merge_into(
    merge: &Merge,
    frames: &[Bytes],
    proto: Protocol,
    out: &mut BytesMut,
) -> Result<bool, ProxyError> {
    if let Merge::AnyOk = merge {
        if let Some(ok) = frames.iter().find(|f| !reply::is_error(f)) {
            out.extend_from_slice(ok);
            return Ok(true);
        }
        match frames
            .iter()
            .find(|f| !f.starts_with(b"-NOTBUSY"))
            .or(frames.first())
        {
            Some(err) => out.extend_from_slice(err),
            None => out.extend_from_slice(b"-NOTBUSY No scripts in execution right now.\r\n"),
        }
        return Ok(false);
    }
    if let Some(err) = frames.iter().find(|f| reply::is_error(f)) {
        out.extend_from_slice(err);
        return Ok(false);
    }
    let r = match merge {
        Merge::Mget { part_of } => {
            mget_into(part_of, frames, out)?;
            return Ok(true);
        }
        Merge::SumInt => {
            let mut sum = 0i64;
            for f in frames {
                sum += reply::integer(f).ok_or_else(|| bad("an integer command"))?;
            }
            Reply::Int(sum)
        }
        Merge::Offset(delta) => {
            let n = frames
                .first()
                .and_then(|f| reply::integer(f))
                .ok_or_else(|| bad("PUBLISH"))?;
            Reply::Int((n + delta).max(0))
        }
        Merge::AllOk => Reply::Ok,
        // Answered above.
        Merge::AnyOk => return Ok(true),
        Merge::Concat => {
            let mut all = Vec::new();
            for f in frames {
                let elems = reply::array_elements(f)
                    .ok()
                    .flatten()
                    .ok_or_else(|| bad("KEYS"))?;
                all.extend(listed(elems).map(Reply::Frame));
            }
            Reply::Array(all)
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
            Reply::Array(acc.into_iter().map(Reply::Int).collect())
        }
        Merge::Same => {
            let first = frames.first().cloned().ok_or_else(|| bad("SCRIPT LOAD"))?;
            if frames.iter().any(|f| f != &first) {
                return Err(ProxyError::err("shards disagree on the script SHA1"));
            }
            Reply::Frame(first)
        }
    };
    r.encode(proto, out);
    Ok(true)
}

/// The keys of a shard's `KEYS` or `SCAN` reply that a client may see:
/// all but the proxy's own ([`is_reserved_key`]).
pub(super) fn listed(keys: Vec<Bytes>) -> impl Iterator<Item = Bytes> {
    keys.into_iter()
        .filter(|k| reply::bulk(k).is_none_or(|name| !is_reserved_key(&name)))
}

fn bad(what: &str) -> ProxyError {
    ProxyError::err(format!("unexpected backend reply to {what}"))
}

/// MGET: every part's values, copied verbatim into one array in key order.
/// Each part must hold exactly as many values as it was sent keys.
fn mget_into(part_of: &[u16], frames: &[Bytes], out: &mut BytesMut) -> Result<(), ProxyError> {
    let mut values: SmallVec<[SmallVec<[Range<usize>; 8]>; 4]> = SmallVec::new();
    let mut bytes = 0;
    for f in frames {
        let v = reply::array_element_ranges(f)
            .ok()
            .flatten()
            .ok_or_else(|| bad("MGET"))?;
        bytes += v.iter().map(|r| r.len()).sum::<usize>();
        values.push(v);
    }
    let mut next: SmallVec<[usize; 4]> = SmallVec::from_elem(0, frames.len());
    for &p in part_of {
        *next.get_mut(usize::from(p)).ok_or_else(|| bad("MGET"))? += 1;
    }
    if next.iter().zip(&values).any(|(&n, v)| n != v.len()) {
        return Err(bad("MGET"));
    }
    next.fill(0);
    out.reserve(bytes + 16);
    out.put_u8(b'*');
    reply::put_int(out, part_of.len() as i64);
    out.put_slice(b"\r\n");
    for &p in part_of {
        let p = usize::from(p);
        out.extend_from_slice(&frames[p][values[p][next[p]].clone()]);
        next[p] += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use smallvec::smallvec;

    fn merged(merge: &Merge, frames: &[&[u8]]) -> (Result<bool, ProxyError>, Vec<u8>) {
        let frames: Vec<Bytes> = frames.iter().map(|f| Bytes::copy_from_slice(f)).collect();
        let mut out = BytesMut::from(&b"earlier "[..]);
        let r = merge_into(merge, &frames, Protocol::Resp2, &mut out);
        (r, out[b"earlier ".len()..].to_vec())
    }

    #[test]
    fn mget_values_come_back_in_key_order() {
        // Keys 0 and 2 went to part 0, key 1 to part 1, key 3 to part 2.
        let merge = Merge::Mget {
            part_of: smallvec![0, 1, 0, 2],
        };
        let (r, out) = merged(
            &merge,
            &[
                b"*2\r\n$1\r\na\r\n$-1\r\n",
                b"*1\r\n$2\r\nbb\r\n",
                b"*1\r\n_\r\n",
            ],
        );
        assert!(r.unwrap());
        assert_eq!(out, b"*4\r\n$1\r\na\r\n$2\r\nbb\r\n$-1\r\n_\r\n");
    }

    #[test]
    fn the_first_error_in_part_order_is_the_reply() {
        let merge = Merge::Mget {
            part_of: smallvec![0, 1, 2],
        };
        let (r, out) = merged(
            &merge,
            &[b"*1\r\n$1\r\na\r\n", b"-ERR one\r\n", b"-ERR two\r\n"],
        );
        assert!(!r.unwrap());
        assert_eq!(out, b"-ERR one\r\n");
    }

    #[test]
    fn a_part_with_the_wrong_number_of_values_appends_nothing() {
        let merge = Merge::Mget {
            part_of: smallvec![0, 1, 1],
        };
        for frames in [
            &[&b"*1\r\n$1\r\na\r\n"[..], b"*1\r\n$1\r\nb\r\n"][..],
            &[b"*1\r\n$1\r\na\r\n", b"*3\r\n:1\r\n:2\r\n:3\r\n"],
            &[b"*1\r\n$1\r\na\r\n", b"+OK\r\n"],
            &[b"*1\r\n$1\r\na\r\n"],
        ] {
            let (r, out) = merged(&merge, frames);
            let e = r.unwrap_err();
            assert!(
                e.to_string().contains("unexpected backend reply to MGET"),
                "{e}"
            );
            assert!(out.is_empty(), "{frames:?}");
        }
    }

    #[test]
    fn other_merges_encode_their_reply() {
        let (r, out) = merged(&Merge::SumInt, &[b":2\r\n", b":3\r\n"]);
        assert!(r.unwrap());
        assert_eq!(out, b":5\r\n");
        let (r, out) = merged(&Merge::AllOk, &[b"+OK\r\n", b"+OK\r\n"]);
        assert!(r.unwrap());
        assert_eq!(out, b"+OK\r\n");
    }
}

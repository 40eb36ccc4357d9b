//! A blocking command waiting on its shard: how its wait ends (its reply,
//! `CLIENT UNBLOCK` of its client, or its keys moving to another shard in
//! a rebalance), and the timeout it has left when it is sent again.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::Proxy;
use crate::backend::dedicated::PooledConn;
use crate::error::BackendError;
use crate::protocol::{Request, reply, request::encode_command};
use crate::router::ShardId;

/// How a blocking command's wait ended.
pub(super) enum Waited {
    /// Its reply (an element, a timeout, an error).
    Reply(Bytes),
    /// Its keys moved to another shard; the shard ended it, with nothing.
    Moved,
}

/// A client whose blocking command `CLIENT UNBLOCK` may end, from when
/// the command counts in INFO's `blocked_clients` (before it is sent: an
/// unblock that arrives while the command is on its way is passed on to
/// the shard once it is there, see [`Waiting::reply`]) until it has its
/// reply. (Marked only once the reply was awaited, an unblock that came
/// between the two found the client "not blocked", answered `:0`, and the
/// command went on blocking.)
pub(super) struct Unblockable<'a>(&'a super::clients::Entry);

impl<'a> Unblockable<'a> {
    pub(super) fn new(me: &'a super::clients::Entry) -> Unblockable<'a> {
        me.set_blocked(true);
        Unblockable(me)
    }
}

impl Drop for Unblockable<'_> {
    fn drop(&mut self) {
        self.0.set_blocked(false);
    }
}

/// A blocking command waiting on a dedicated connection to `shard`.
pub(super) struct Waiting<'a> {
    pub(super) proxy: &'a Proxy,
    pub(super) ep: &'a crate::backend::Endpoint,
    /// The command's keys, whose routes are watched.
    pub(super) keys: &'a [Bytes],
    pub(super) shard: ShardId,
}

impl Waiting<'_> {
    /// The reply of the blocking command sent on `conn`. A `CLIENT
    /// UNBLOCK` of this client (`me`, made [`Unblockable`] before the
    /// command was sent) meanwhile, or a move of its keys to
    /// another shard (a rebalance), is passed on to the shard for the
    /// connection's backend id, so that the shard ends the command as
    /// Redis does (TIMEOUT: the timeout's nil reply; ERROR: `-UNBLOCKED
    /// client unblocked via CLIENT UNBLOCK`), atomically with any push: an
    /// element the shard handed over first is answered, never lost.
    pub(super) async fn reply(
        &self,
        conn: &mut PooledConn,
        me: Option<&std::sync::Arc<super::clients::Entry>>,
        proto: crate::protocol::Protocol,
    ) -> Result<Waited, BackendError> {
        let unblocked = async {
            match me {
                Some(me) => me.unblocked().await,
                None => std::future::pending().await,
            }
        };
        // None: the keys moved away.
        let error = tokio::select! {
            r = conn.recv() => return r.map(Waited::Reply),
            error = unblocked => Some(error),
            () = self.routed_away() => None,
        };
        if let Some(error) = error {
            self.proxy.metrics.client_unblocked(error);
        }
        let Some(id) = conn.backend_id() else {
            // The shard did not say which client the connection is: the
            // command ends here (the connection is closed, not pooled).
            return Ok(match error {
                Some(error) => Waited::Reply(unblocked_reply(proto, error)),
                None => Waited::Moved,
            });
        };
        let id = id.to_string();
        let mode: &[u8] = if error == Some(true) {
            b"ERROR"
        } else {
            b"TIMEOUT"
        };
        let mut frame = BytesMut::new();
        encode_command(&[b"CLIENT", b"UNBLOCK", id.as_bytes(), mode], &mut frame);
        let frame = frame.freeze();
        // The shard's `CLIENT UNBLOCK` may overtake the command on its way
        // (`:0`): it is sent again until the reply comes.
        let reply = loop {
            let asked = self
                .ep
                .send(crate::protocol::Protocol::Resp2, 0, &frame)
                .await;
            if matches!(&asked, Ok(Ok(a)) if reply::integer(&a.frame) == Some(1)) {
                break conn.recv().await?;
            }
            tokio::select! {
                r = conn.recv() => break r?,
                _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            }
        };
        let nothing = matches!(reply.as_ref(), b"*-1\r\n" | b"$-1\r\n" | b"_\r\n");
        Ok(if error.is_none() && nothing {
            Waited::Moved
        } else {
            Waited::Reply(reply)
        })
    }

    /// Resolves once a key of the command no longer routes to `shard`
    /// (checked every 100 ms: the table changes only with a rebalance or
    /// a reload).
    async fn routed_away(&self) {
        if self.keys.is_empty() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let snap = self.proxy.snapshot();
            if self
                .keys
                .iter()
                .any(|k| snap.table().route(k).shard != self.shard)
            {
                return;
            }
        }
    }
}

/// What Redis 7.0 answers a blocking command ended by `CLIENT UNBLOCK`:
/// its timeout reply (a nil array, for BLMOVE too), or the UNBLOCKED
/// error.
pub(super) fn unblocked_reply(proto: crate::protocol::Protocol, error: bool) -> Bytes {
    if error {
        return Bytes::from_static(b"-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n");
    }
    if proto == crate::protocol::Protocol::Resp3 {
        return Bytes::from_static(b"_\r\n");
    }
    Bytes::from_static(b"*-1\r\n")
}

/// What is left of a blocking command's timeout after `waited`.
pub(super) enum Remaining {
    /// It blocks without a timeout (0), or its timeout is not where this
    /// knows to look: sent again as it was.
    Forever,
    /// The command again, with the timeout left.
    Left(Request),
    /// Its time is up: it answers its timeout reply.
    Expired,
}

/// `req` with its timeout less `waited`: the last argument (seconds, may
/// be fractional) of BLPOP, BRPOP, BRPOPLPUSH, BLMOVE, BZPOPMIN,
/// BZPOPMAX; the first of BLMPOP and BZMPOP; `BLOCK ms` of XREAD and
/// XREADGROUP.
pub(super) fn remaining(req: &Request, waited: Duration) -> Remaining {
    let args = req.args();
    let name = req.name().to_ascii_uppercase();
    let (at, millis) = match name.as_slice() {
        b"BLPOP" | b"BRPOP" | b"BRPOPLPUSH" | b"BLMOVE" | b"BZPOPMIN" | b"BZPOPMAX" => {
            (args.len().saturating_sub(1), false)
        }
        b"BLMPOP" | b"BZMPOP" => (1, false),
        b"XREAD" | b"XREADGROUP" => {
            match args.iter().position(|a| a.eq_ignore_ascii_case(b"BLOCK")) {
                Some(i) => (i + 1, true),
                None => return Remaining::Forever,
            }
        }
        _ => return Remaining::Forever,
    };
    let Some(value) = args
        .get(at)
        .and_then(|a| std::str::from_utf8(a).ok())
        .and_then(|s| s.parse::<f64>().ok())
    else {
        return Remaining::Forever;
    };
    let total = if millis { value / 1000.0 } else { value };
    if total <= 0.0 || !total.is_finite() {
        return Remaining::Forever;
    }
    let left = total - waited.as_secs_f64();
    if left <= 0.0 {
        return Remaining::Expired;
    }
    let text = if millis {
        format!("{}", ((left * 1000.0).ceil() as u64).max(1))
    } else {
        format!("{:.3}", left.max(0.001))
    };
    let mut new: Vec<Bytes> = args.to_vec();
    new[at] = Bytes::from(text);
    Remaining::Left(Request::from_args(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(args: &[&str]) -> Request {
        Request::from_args(args.iter().map(|a| Bytes::from(a.to_string())).collect())
    }

    fn left(r: Remaining) -> Vec<String> {
        match r {
            Remaining::Left(r) => r
                .args()
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
            Remaining::Forever => vec!["forever".into()],
            Remaining::Expired => vec!["expired".into()],
        }
    }

    #[test]
    fn the_timeout_left_replaces_the_timeout_where_each_command_has_it() {
        let w = Duration::from_millis(1500);
        assert_eq!(
            left(remaining(&req(&["BLPOP", "a", "b", "4"]), w)),
            ["BLPOP", "a", "b", "2.500"]
        );
        assert_eq!(
            left(remaining(
                &req(&["blmove", "a", "b", "LEFT", "RIGHT", "2"]),
                w
            )),
            ["blmove", "a", "b", "LEFT", "RIGHT", "0.500"]
        );
        assert_eq!(
            left(remaining(&req(&["BLMPOP", "3", "1", "a", "LEFT"]), w)),
            ["BLMPOP", "1.500", "1", "a", "LEFT"]
        );
        assert_eq!(
            left(remaining(
                &req(&["XREAD", "COUNT", "1", "BLOCK", "2000", "STREAMS", "s", "$"]),
                w
            )),
            ["XREAD", "COUNT", "1", "BLOCK", "500", "STREAMS", "s", "$"]
        );
        assert_eq!(left(remaining(&req(&["BLPOP", "a", "0"]), w)), ["forever"]);
        assert_eq!(
            left(remaining(&req(&["XREAD", "STREAMS", "s", "$"]), w)),
            ["forever"]
        );
        assert_eq!(left(remaining(&req(&["BLPOP", "a", "1"]), w)), ["expired"]);
    }
}

//! Errors that reach a client, and the one function that turns them into a
//! RESP reply ([`ProxyError::to_reply`]).
//!
//! Each error records which side failed (client input, backend, the proxy
//! itself) so that logs and metrics can tell an operator where to look.

use std::borrow::Cow;

use crate::protocol::Reply;

/// A failure talking to one backend endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// Could not connect (refused, unreachable, connect timeout) or the
    /// endpoint is in its reconnect back-off after such a failure.
    #[error("backend {addr} unavailable: {reason}")]
    Unavailable { addr: String, reason: String },
    /// The backend did not answer within the command timeout; the connection
    /// was closed because its replies can no longer be matched.
    #[error("backend {addr} timed out after {millis} ms")]
    Timeout { addr: String, millis: u64 },
    /// The connection broke while the request was in flight: the command may
    /// or may not have run.
    #[error("connection to backend {addr} lost: {reason}")]
    ConnectionLost { addr: String, reason: String },
    /// The backend sent bytes that are not RESP.
    #[error("backend {addr} sent an invalid reply: {reason}")]
    Protocol { addr: String, reason: String },
    /// A PostgreSQL endpoint refused or failed a statement (read-only
    /// standby, statement timeout, ...).
    #[error("backend {addr} query failed: {reason}")]
    Query { addr: String, reason: String },
    /// The endpoint's kind cannot serve this (a postgres shard has no
    /// dedicated connections for MULTI, WATCH, blocking commands or scripts).
    #[error("backend {addr} cannot serve this: {reason}")]
    Unsupported { addr: String, reason: String },
    /// The endpoint refused `SELECT` of the database a connection was
    /// opened for (`DB index is out of range`: the shard has fewer
    /// databases). The endpoint is up: this does not count against it.
    #[error("backend {addr} refused database {db}: {reason}")]
    NoSuchDb {
        addr: String,
        db: u32,
        reason: String,
    },
    /// No dedicated connection could be taken from the pool in time.
    #[error("no free dedicated connection to backend {addr}: {reason}")]
    PoolExhausted { addr: String, reason: String },
    /// The backend ACL user that runs a client's scripts and transactions
    /// could not be installed or logged in as (see `backend::acl`): they are
    /// refused rather than run with the shard map's own credentials.
    #[error(
        "backend {addr} cannot run scripts or transactions as ACL user '{user}' ({reason}); they are refused until the shard map's credentials may run ACL SETUSER"
    )]
    Acl {
        addr: String,
        user: String,
        reason: String,
    },
    /// Not sent: this proxy is a fleet member whose lease may have expired
    /// (see `backend::fence::Fence`), found when the request was about to
    /// be written to the backend (it was routed before, e.g. just before
    /// the process was frozen): the fleet may have moved its keys since.
    /// Answered `-TRYAGAIN`, like a command refused at routing.
    #[error("backend {addr}: not sent, this proxy's fleet lease may have expired")]
    Fenced { addr: String },
}

impl BackendError {
    /// Short, bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Unavailable { .. } => "unavailable",
            BackendError::Timeout { .. } => "timeout",
            BackendError::ConnectionLost { .. } => "connection_lost",
            BackendError::Protocol { .. } => "protocol",
            BackendError::PoolExhausted { .. } => "pool_exhausted",
            BackendError::Query { .. } => "query",
            BackendError::Unsupported { .. } => "unsupported",
            BackendError::Acl { .. } => "acl",
            BackendError::NoSuchDb { .. } => "no_such_db",
            BackendError::Fenced { .. } => "fenced",
        }
    }

    /// Whether the request certainly never reached the backend, so that an
    /// idempotent read may be retried elsewhere.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            BackendError::Unavailable { .. }
                | BackendError::PoolExhausted { .. }
                | BackendError::NoSuchDb { .. }
        )
    }

    /// Whether a *read* that failed this way may be sent again elsewhere:
    /// the endpoint did not answer (never sent, timed out, or the
    /// connection broke). A read has no effect, so having maybe run once
    /// does not matter; a write must never be retried on this.
    pub fn read_may_retry(&self) -> bool {
        self.never_sent()
            || matches!(
                self,
                BackendError::Timeout { .. } | BackendError::ConnectionLost { .. }
            )
    }
}

/// Why an endpoint failed its health check (logged as the reason it left
/// the rotation).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unhealthy {
    /// The check got no answer in time (the endpoint hangs or is busy).
    #[error("no answer to health check within {millis} ms")]
    NoAnswer { millis: u64 },
    /// The connection or the query failed.
    #[error("health check failed: {0}")]
    Failed(String),
    /// The endpoint answered the check with an error.
    #[error("{0}")]
    ErrorReply(String),
    #[error("unexpected INFO reply")]
    UnexpectedInfo,
    #[error("not a replica (role is not slave)")]
    NotReplica,
    #[error("replication link is down")]
    LinkDown,
    #[error("initial sync in progress")]
    Syncing,
    #[error("replica lags: last contact with primary {secs} s ago")]
    NoContact { secs: u64 },
    #[error(
        "replica lags: {millis} ms behind its primary by replication offsets (applied {applied})"
    )]
    BehindOffsets { millis: u128, applied: String },
    #[error("not a standby (pg_is_in_recovery() is false)")]
    NotStandby,
    #[error("WAL receiver is not streaming (status {0})")]
    NotStreaming(String),
    #[error("replica lags: replay {millis} ms behind")]
    ReplayBehind { millis: i64 },
}

/// Everything that can go wrong serving one client command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The command or its arguments are wrong; the message is the full RESP
    /// error text in Redis' wording (`ERR ...`, `CROSSSLOT ...`).
    #[error("{0}")]
    Client(Cow<'static, str>),
    /// A backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The proxy itself broke an invariant (a bug, not the client's or a
    /// backend's fault). Built by [`ProxyError::internal`], which logs it.
    #[error("internal error: {0}")]
    Internal(Cow<'static, str>),
}

impl ProxyError {
    /// A client-side error with Redis' `ERR` prefix.
    pub fn err(msg: impl std::fmt::Display) -> ProxyError {
        ProxyError::Client(Cow::Owned(format!("ERR {msg}")))
    }

    /// The `CROSSSLOT` error, worded as Redis Cluster words it.
    pub fn crossslot() -> ProxyError {
        ProxyError::Client(Cow::Borrowed(
            "CROSSSLOT Keys in request don't hash to the same slot",
        ))
    }

    /// Redis Cluster's `TRYAGAIN`: the keys are moving between shards
    /// right now and the command did not run; the client may retry it.
    pub fn tryagain(msg: impl std::fmt::Display) -> ProxyError {
        ProxyError::Client(Cow::Owned(format!("TRYAGAIN {msg}")))
    }

    /// A fleet member that may have lost its etcd lease: the command may
    /// run on another proxy, or here again once this one caught up.
    pub fn fenced() -> ProxyError {
        ProxyError::tryagain(
            "this proxy lost contact with the fleet's etcd and is catching up; retry (or use another proxy)",
        )
    }

    /// An internal error: logged here, at error level, once (it is a bug
    /// an operator should report), and answered `-ERR internal error: ...`.
    pub fn internal(msg: impl Into<Cow<'static, str>>) -> ProxyError {
        let msg = msg.into();
        tracing::error!(error = %msg, "internal error");
        ProxyError::Internal(msg)
    }

    /// The one place an error becomes a RESP reply.
    pub fn to_reply(&self) -> Reply {
        match self {
            ProxyError::Client(msg) => Reply::Error(msg.clone()),
            ProxyError::Backend(BackendError::Fenced { .. }) => ProxyError::fenced().to_reply(),
            ProxyError::Backend(e) => Reply::Error(Cow::Owned(format!("ERR {e}"))),
            ProxyError::Internal(msg) => {
                Reply::Error(Cow::Owned(format!("ERR internal error: {msg}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(e: ProxyError) -> String {
        match e.to_reply() {
            Reply::Error(t) => t.into_owned(),
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn a_request_fenced_before_its_write_is_answered_tryagain() {
        let e = ProxyError::Backend(BackendError::Fenced { addr: "a:1".into() });
        assert_eq!(text(e), text(ProxyError::fenced()));
        assert!(text(ProxyError::fenced()).starts_with("TRYAGAIN "));
    }

    #[test]
    fn reads_move_on_when_the_endpoint_did_not_answer_and_only_then() {
        let addr = || "a:1".to_owned();
        let reason = || "x".to_owned();
        for e in [
            BackendError::Unavailable {
                addr: addr(),
                reason: reason(),
            },
            BackendError::PoolExhausted {
                addr: addr(),
                reason: reason(),
            },
            BackendError::Timeout {
                addr: addr(),
                millis: 5,
            },
            BackendError::ConnectionLost {
                addr: addr(),
                reason: reason(),
            },
        ] {
            assert!(e.read_may_retry(), "{e}");
        }
        for e in [
            BackendError::Protocol {
                addr: addr(),
                reason: reason(),
            },
            BackendError::Unsupported {
                addr: addr(),
                reason: reason(),
            },
            // Not sent, but a read retried elsewhere (a replica of the old
            // owner) could be older than one already read.
            BackendError::Fenced { addr: addr() },
        ] {
            assert!(!e.read_may_retry(), "{e}");
        }
        // A write is only ever resent when it was never sent.
        assert!(
            !BackendError::Timeout {
                addr: addr(),
                millis: 5
            }
            .never_sent()
        );
    }

    #[test]
    fn each_side_has_its_reply() {
        assert_eq!(text(ProxyError::err("bad")), "ERR bad");
        assert_eq!(text(ProxyError::tryagain("moving")), "TRYAGAIN moving");
        assert_eq!(
            text(ProxyError::internal("no transaction")),
            "ERR internal error: no transaction"
        );
        let e = BackendError::Timeout {
            addr: "10.0.0.1:6379".into(),
            millis: 5,
        };
        assert_eq!(
            text(e.into()),
            "ERR backend 10.0.0.1:6379 timed out after 5 ms"
        );
    }
}

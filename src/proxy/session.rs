//! Per-client session state.

use std::sync::Arc;

use bytes::Bytes;

use crate::auth::User;
use crate::backend::dedicated::PooledConn;
use crate::protocol::{Protocol, Request};
use crate::router::{Epoch, ShardId};
use crate::snapshot::Snapshot;

/// A MULTI block being queued by the proxy. Commands are checked and queued
/// here, then sent as MULTI ... EXEC in one write to the shard's primary on a
/// dedicated connection.
pub struct Tx {
    pub queued: Vec<Request>,
    /// The one shard every queued key lives on (None while no key was seen).
    pub shard: Option<ShardId>,
    /// A command was refused while queueing: EXEC answers EXECABORT.
    pub aborted: bool,
}

/// What one client connection remembers between commands.
pub struct Session {
    pub id: u64,
    pub proto: Protocol,
    pub name: Option<Bytes>,
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    pub tx: Option<Tx>,
    /// Dedicated connection holding a WATCH, and the shard it is on.
    pub watch: Option<(ShardId, PooledConn)>,
    /// Scratch space for key positions (reused, so classifying does not allocate).
    pub key_scratch: Vec<usize>,
    /// When the request being dispatched was parsed (one clock read per
    /// request; every reply of it is timed from here).
    pub request_started: std::time::Instant,
    pub addr: String,
    /// The user this connection is logged in as; `None` before AUTH (only
    /// consulted when auth is configured).
    pub user: Option<Arc<User>>,
    /// Whether this connection has logged in at least once (it then counts
    /// against `max_clients` instead of the unauthenticated limit).
    pub logged_in_once: bool,
    /// Failed logins on this connection (closed at `max_auth_failures`).
    pub auth_failures: u32,
    /// The client's address, for per-peer login limits.
    pub peer_ip: Option<std::net::IpAddr>,
    /// Set by routing when a key of the request is in a migrating slot and
    /// has not been moved under the current table yet.
    pub move_first: bool,
    /// The table epoch under which this session last moved the keys of
    /// the request it is running (so the re-dispatch does not move again).
    pub moved_under: Option<Epoch>,
    /// Reads go to the primary (after a move: a replica may not have the
    /// moved key yet).
    pub force_primary: bool,
    /// The snapshot a running inline operation routed with, held until its
    /// command has been answered: a rebalance waits for every holder of a
    /// table before moving keys it routed (see `rebalance`), and the
    /// operation sends to the backends of that same snapshot.
    pub held: Option<Arc<Snapshot>>,
}

impl Session {
    /// A fresh RESP2 session.
    pub fn new(id: u64, addr: String) -> Session {
        let peer_ip = addr.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
        Session {
            id,
            proto: Protocol::Resp2,
            name: None,
            lib_name: None,
            lib_ver: None,
            tx: None,
            watch: None,
            key_scratch: Vec::with_capacity(8),
            request_started: std::time::Instant::now(),
            addr,
            user: None,
            logged_in_once: false,
            auth_failures: 0,
            peer_ip,
            move_first: false,
            moved_under: None,
            force_primary: false,
            held: None,
        }
    }
}

//! Per-client session state.

use std::sync::Arc;

use bytes::Bytes;

use crate::auth::User;
use crate::backend::dedicated::PooledConn;
use crate::backend::pg::transaction::Watched;
use crate::backend::{Db, OwnWrites, ReadFloor, ShardBackends, Wire};
use crate::protocol::{Protocol, Request};
use crate::router::ShardId;
use crate::snapshot::Snapshot;

/// A MULTI block being queued by the proxy. Commands are checked and queued
/// here, then sent as MULTI ... EXEC in one write to the shard's primary on a
/// dedicated connection.
pub struct Tx {
    pub(super) queued: Vec<Request>,
    /// The one shard every queued key lives on (None while no key was seen).
    pub(super) shard: Option<ShardId>,
    /// With `options.crossslot: slot`: the one slot of every queued key.
    pub(super) slot: Option<crate::router::Slot>,
    /// A command was refused while queueing: EXEC answers EXECABORT.
    pub(super) aborted: bool,
}

/// What one client connection remembers between commands.
pub struct Session {
    pub(super) id: u64,
    pub(super) proto: Protocol,
    /// The database `SELECT` chose (0 until then; `RESET` returns to 0,
    /// as Redis does). Every backend connection this client's requests
    /// use is one of this database (see [`crate::backend::Wire`]).
    pub(super) db: Db,
    pub(super) name: Option<Bytes>,
    pub(super) lib_name: Option<Bytes>,
    pub(super) lib_ver: Option<Bytes>,
    pub(super) tx: Option<Tx>,
    /// Dedicated connection holding a WATCH, and the shard it is on.
    pub(super) watch: Option<(ShardId, PooledConn)>,
    /// Keys WATCHed on a postgres shard, with the row versions WATCH read
    /// (EXEC compares them; nothing is held on the database meanwhile).
    pub(super) pg_watch: Option<(ShardId, Vec<Watched>)>,
    /// Scratch space for key positions (reused, so classifying does not allocate).
    pub(super) key_scratch: Vec<usize>,
    /// When the request being dispatched was parsed (one clock read per
    /// request; every reply of it is timed from here).
    pub(super) request_started: std::time::Instant,
    pub(super) addr: String,
    /// The user this connection is logged in as; `None` before AUTH (only
    /// consulted when auth is configured).
    pub(super) user: Option<Arc<User>>,
    /// Whether this connection has logged in at least once (it then counts
    /// against `max_clients` instead of the unauthenticated limit).
    pub(super) logged_in_once: bool,
    /// Failed logins on this connection (closed at `max_auth_failures`).
    pub(super) auth_failures: u32,
    /// The client's address, for per-peer login limits.
    pub(super) peer_ip: Option<std::net::IpAddr>,
    /// The snapshot a running exclusive operation routed with, held until its
    /// command has been answered: a rebalance waits for every holder of a
    /// table before moving keys it routed (see `rebalance`), and the
    /// operation sends to the backends of that same snapshot.
    pub(super) held: Option<Arc<Snapshot>>,
    /// The request of the exclusive operation being run, kept for the
    /// slow log (see [`Session::dispatch`]).
    pub(super) exclusive_raw: Option<Bytes>,
    /// The shard an exclusive operation ran its command on and that
    /// round trip in µs (for the slow log and traces).
    pub(super) exclusive_trip: Option<(ShardId, u32)>,
    /// Pub/sub subscriptions and the queue of their messages (boxed: most
    /// clients never subscribe).
    pub(super) pubsub: Option<Box<super::pubsub::Subscriptions>>,
    /// This client's entry in the proxy's registry (CLIENT LIST / KILL).
    pub(super) me: Option<Arc<super::clients::Entry>>,
    /// After MONITOR: the lines of every command through the proxy.
    pub(super) monitor: Option<Box<super::monitor::Watch>>,
    /// The rate limit of this client's address, when the auth file sets one.
    pub(super) addr_rate: Option<Arc<crate::auth::rate::Buckets>>,
    /// This client's own writes, which its later reads must see.
    pub(super) writes: Writes,
    /// `CLIENT TRACKING ON`: its settings and inbox (see `tracking`).
    pub(super) tracking: Option<Box<super::tracking::ClientTracking>>,
    /// Read-your-writes: the floor of each shard's reads for the last
    /// answered write (a lock per read of a client that wrote, never
    /// contended: only this client's task takes it; a `RefCell` would
    /// make the session's futures `!Send`).
    pub(super) floors: std::sync::Mutex<Floors>,
}

/// The replication positions a client's reads must wait for, per shard
/// primary, since its last answered write (see
/// [`crate::backend::lag::Positions`]): found once per write and shard,
/// then kept, so that later reads neither lock the primary's log nor get a
/// floor larger than the write needs.
#[derive(Default)]
pub struct Floors {
    /// The answer time of the write these floors are for.
    at: Option<std::time::Instant>,
    /// Per primary (by its positions), the floor.
    known: Vec<(Arc<crate::backend::lag::Positions>, u64)>,
}

/// A client's own writes, as far as its later reads are concerned: a read
/// may be answered by anything other than the primary connection its
/// writes went through (a replica, a coalesced request of another client,
/// the near cache) only if that source has seen every write the client had
/// sent before it. The connection loop counts writes when they are queued
/// and when their replies are written; exclusive operations (transactions,
/// scripts) are answered before the next request is read.
///
/// Reads are counted the same way (`reads_*`): a coalesced read must not
/// return data older than what the client's earlier reads returned, so it
/// shares only a backend request sent after they were answered (see
/// [`Session::may_join`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct Writes {
    writes: Flights,
    reads: Flights,
}

/// Requests of one kind in flight, and when the last was answered.
#[derive(Debug, Default, Clone, Copy)]
struct Flights {
    in_flight: u32,
    last_answered: Option<std::time::Instant>,
}

impl Flights {
    fn sent(&mut self) {
        self.in_flight += 1;
    }

    fn answered(&mut self, at: std::time::Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.last_answered = Some(at);
    }

    fn state(&self) -> WriteState {
        match (self.in_flight, self.last_answered) {
            (0, None) => WriteState::None,
            (0, Some(t)) => WriteState::AnsweredAt(t),
            _ => WriteState::InFlight,
        }
    }
}

/// What a read must wait for of the client's own writes (see [`Writes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteState {
    /// The client never wrote (through this connection).
    None,
    /// A write's reply has not arrived yet: only the primary connection it
    /// went through is sure to order the read after it.
    InFlight,
    /// Every write was answered, the last at this time: a source that was
    /// up to date with the primary at some time after it has seen them all.
    AnsweredAt(std::time::Instant),
}

impl Writes {
    /// A write was sent to a backend; its reply is pending.
    pub(super) fn sent(&mut self) {
        self.writes.sent();
    }

    /// A write's reply arrived at `at` (also for a write run as an
    /// exclusive operation, which was never counted as sent).
    pub(super) fn answered(&mut self, at: std::time::Instant) {
        self.writes.answered(at);
    }

    /// What the client's reads must wait for.
    pub fn state(&self) -> WriteState {
        self.writes.state()
    }

    /// A read was sent to a backend; its reply is pending.
    pub(super) fn read_sent(&mut self) {
        self.reads.sent();
    }

    /// A read's reply arrived at (no earlier than) `at`.
    pub(super) fn read_answered(&mut self, at: std::time::Instant) {
        self.reads.answered(at);
    }

    /// [`Writes::state`] of the client's reads.
    pub fn read_state(&self) -> WriteState {
        self.reads.state()
    }
}

impl Session {
    /// Which in-flight read this client's next read may share
    /// (`options.coalesce_reads`): none while one of its own requests is
    /// in flight (only its own connection orders the read after it), else
    /// only one sent after its last request was answered (it then sees
    /// the client's own writes and nothing older than its earlier reads),
    /// else any.
    pub(super) fn may_join(&self) -> crate::backend::coalesce::MayJoin {
        use crate::backend::coalesce::MayJoin;
        let since = |s: WriteState| match s {
            WriteState::None => Ok(None),
            WriteState::AnsweredAt(t) => Ok(Some(t)),
            WriteState::InFlight => Err(()),
        };
        match (since(self.writes.state()), since(self.writes.read_state())) {
            (Ok(w), Ok(r)) => w.max(r).map_or(MayJoin::Any, MayJoin::SentSince),
            _ => MayJoin::No,
        }
    }
}

impl Session {
    /// The shard of the client's WATCH (on a Redis or a postgres shard).
    pub(super) fn watched_shard(&self) -> Option<ShardId> {
        self.watch
            .as_ref()
            .map(|(s, _)| *s)
            .or(self.pg_watch.as_ref().map(|(s, _)| *s))
    }

    /// The connection key of this client's requests: its protocol and
    /// database.
    pub(super) fn wire(&self) -> Wire {
        Wire {
            proto: self.proto,
            db: self.db,
        }
    }

    /// A fresh RESP2 session.
    pub(super) fn new(id: u64, addr: String) -> Session {
        let peer_ip = addr.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
        Session {
            id,
            proto: Protocol::Resp2,
            db: Db(0),
            name: None,
            lib_name: None,
            lib_ver: None,
            tx: None,
            watch: None,
            pg_watch: None,
            key_scratch: Vec::with_capacity(8),
            request_started: std::time::Instant::now(),
            addr,
            user: None,
            logged_in_once: false,
            auth_failures: 0,
            peer_ip,
            held: None,
            exclusive_raw: None,
            exclusive_trip: None,
            pubsub: None,
            me: None,
            monitor: None,
            addr_rate: None,
            writes: Writes::default(),
            tracking: None,
            floors: std::sync::Mutex::default(),
        }
    }

    /// What a read of this client on `backends`' shard must have seen of
    /// its own writes (`options.read_your_writes`): nothing without the
    /// option, a replica-less read policy or writes; the primary while a
    /// write is in flight or before a probe of the primary sent after the
    /// last write's answer came back (which is then asked for); else the
    /// position that probe returned.
    pub(super) fn read_floor(&self, backends: &ShardBackends) -> ReadFloor {
        if !backends.primary.state.options.read_your_writes || !backends.reads_replicas() {
            return ReadFloor::Any;
        }
        let t = match self.writes.state() {
            WriteState::None => return ReadFloor::Any,
            WriteState::InFlight => return ReadFloor::Primary(OwnWrites::InFlight),
            WriteState::AnsweredAt(t) => t,
        };
        let mut f = self.floors.lock().unwrap_or_else(|e| e.into_inner());
        if f.at != Some(t) {
            f.at = Some(t);
            f.known.clear();
        }
        let positions = &backends.primary.state.positions;
        if let Some((_, p)) = f.known.iter().find(|(k, _)| Arc::ptr_eq(k, positions)) {
            return ReadFloor::AtLeast(*p);
        }
        match positions.covering(t) {
            Some(p) => {
                f.known.push((positions.clone(), p));
                ReadFloor::AtLeast(p)
            }
            None => {
                positions.want();
                ReadFloor::Primary(OwnWrites::Unconfirmed)
            }
        }
    }

    /// Publishes what `CLIENT LIST` shows of this client (after a command
    /// that may have changed it: rare, so a lock and a few clones).
    pub(super) fn sync_info(&self) {
        let Some(me) = &self.me else { return };
        let text = |b: &Option<Bytes>| {
            b.as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let (sub, psub, ssub) = self.pubsub.as_ref().map_or((0, 0, 0), |p| p.counts());
        me.set_info(super::clients::Info {
            name: text(&self.name),
            user: self
                .user
                .as_ref()
                .map_or(crate::auth::DEFAULT_USER.to_owned(), |u| u.name.clone()),
            lib_name: text(&self.lib_name),
            lib_ver: text(&self.lib_ver),
            resp: if self.proto == Protocol::Resp3 { 3 } else { 2 },
            db: self.db.0,
            sub,
            psub,
            ssub,
            multi: self.tx.as_ref().map_or(-1, |t| t.queued.len() as i64),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_read_after_writes_knows_whether_they_were_answered() {
        let mut w = Writes::default();
        assert_eq!(w.state(), WriteState::None);
        w.sent();
        w.sent();
        assert_eq!(w.state(), WriteState::InFlight);
        let t0 = Instant::now();
        w.answered(t0);
        assert_eq!(
            w.state(),
            WriteState::InFlight,
            "one of two still in flight"
        );
        let t1 = t0 + Duration::from_millis(3);
        w.answered(t1);
        assert_eq!(w.state(), WriteState::AnsweredAt(t1));
        // An exclusive operation's write is answered without being sent.
        let t2 = t1 + Duration::from_millis(3);
        w.answered(t2);
        assert_eq!(w.state(), WriteState::AnsweredAt(t2));
    }

    #[test]
    fn a_read_joins_only_requests_sent_after_the_clients_own_were_answered() {
        use crate::backend::coalesce::MayJoin;
        let mut s = Session::new(1, "test".to_owned());
        assert_eq!(s.may_join(), MayJoin::Any);
        s.writes.sent();
        assert_eq!(s.may_join(), MayJoin::No, "a write in flight");
        let t0 = Instant::now();
        s.writes.answered(t0);
        assert_eq!(s.may_join(), MayJoin::SentSince(t0));
        s.writes.read_sent();
        assert_eq!(s.may_join(), MayJoin::No, "a read in flight");
        let t1 = t0 + Duration::from_millis(2);
        s.writes.read_answered(t1);
        assert_eq!(s.may_join(), MayJoin::SentSince(t1), "the later of the two");
        let t2 = t1 + Duration::from_millis(2);
        s.writes.answered(t2);
        assert_eq!(s.may_join(), MayJoin::SentSince(t2));
    }
}

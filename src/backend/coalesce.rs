//! Coalescing identical concurrent reads (`options.coalesce_reads`).
//!
//! When many clients read the same hot key at the same moment, the first
//! read's request is sent as usual and recorded as a *flight*; an identical
//! read (same request bytes, same endpoint, same protocol, same serving
//! thread) that arrives while the flight is in the air waits for its reply
//! instead of sending its own. The multiplexed connection hands the reply to
//! the flight ([`Landing`]), which gives every waiting client the same reply
//! bytes (reference-counted, not copied) and leaves the table.
//!
//! Which reads may share, and with which flights, is the caller's decision
//! ([`MayJoin`]): a client whose own write is still in flight must not join
//! (only its own connection orders the read after the write), and a client
//! whose earlier requests were answered at `t` may only join a flight sent
//! after `t` (so that it sees its own writes and never reads older data than
//! it already read). A read that finds a flight it may not join is sent on
//! its own and becomes the key's flight in place of the older one (later
//! reads join the newest flight; the older one still lands with its own
//! waiters).
//!
//! Memory is bounded by what is in flight: a flight leaves the table when
//! its request is answered, and every request a multiplexed connection takes
//! is answered (with an error when the connection breaks, times out or its
//! task stops; a [`Landing`] dropped unanswered answers with an error too).
//! A client that goes away drops its receiver; the others still get the
//! reply. The table's lock is never held across an await, nor while a
//! request is queued (a refused request lands at once, in the caller).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;
use tokio::sync::oneshot;

use super::mux::{ReplyResult, ReplyRx};
use crate::error::BackendError;

/// Which flight a read may share (decided by the client's own requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MayJoin {
    /// Any flight in the air.
    Any,
    /// Only a flight sent at or after this time.
    SentSince(Instant),
    /// None: the read goes on its own (it may still lead a flight).
    No,
}

impl MayJoin {
    /// Whether a flight sent at `sent` may be joined.
    fn allows(self, sent: Instant) -> bool {
        match self {
            MayJoin::Any => true,
            MayJoin::SentSince(t) => sent >= t,
            MayJoin::No => false,
        }
    }
}

/// What happened to one read (the `outcome` label of
/// `shardgate_coalesced_reads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coalesced {
    /// Its request was sent, and identical reads may wait for its reply.
    Led = 0,
    /// It waits for the reply of an identical read already in flight.
    Joined = 1,
    /// An identical read was in flight but too old for this client (see
    /// [`MayJoin`]): sent on its own, and identical reads from now on wait
    /// for it instead.
    Bypassed = 2,
}

/// The coalescable reads in flight from one serving thread to one endpoint
/// in one protocol, by request bytes.
pub struct Flights {
    table: Mutex<Table>,
    /// The endpoint, to name it in errors.
    addr: String,
}

#[derive(Default)]
struct Table {
    /// The newest flight of each request.
    live: HashMap<Bytes, Flight>,
    /// The waiters of flights a newer identical one replaced in `live`,
    /// by flight id, until their reply lands.
    replaced: HashMap<u64, Waiters>,
    next_id: u64,
}

type Waiters = SmallVec<[oneshot::Sender<ReplyResult>; 4]>;

impl Table {
    /// Records a new flight of `key` (replacing `live`'s, whose waiters
    /// move to `replaced`); returns its id.
    fn start(&mut self, key: &Bytes, sent: Instant, leader: oneshot::Sender<ReplyResult>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut waiters = Waiters::new();
        waiters.push(leader);
        let flight = Flight { id, sent, waiters };
        if let Some(old) = self.live.insert(key.clone(), flight) {
            self.replaced.insert(old.id, old.waiters);
        }
        id
    }

    /// Takes the waiters of flight `id` of `key`.
    fn finish(&mut self, key: &[u8], id: u64) -> Option<Waiters> {
        match self.live.get(key) {
            Some(f) if f.id == id => self.live.remove(key).map(|f| f.waiters),
            _ => self.replaced.remove(&id),
        }
    }
}

struct Flight {
    id: u64,
    /// When the leading request was routed: no later than when it was
    /// queued on its connection, so a client's request answered before
    /// this was executed before the flight's request.
    sent: Instant,
    /// Every client waiting for the reply, the leader first.
    waiters: Waiters,
}

/// The reply of a flight's request goes here: handed to every waiter.
/// Dropped without a reply (it cannot be, by the multiplexed connection's
/// contract, but a bug must not leave clients waiting forever), it answers
/// with a lost-connection error.
pub struct Landing {
    flights: Arc<Flights>,
    key: Bytes,
    id: u64,
    landed: bool,
}

impl Landing {
    /// Hands `reply` to every client waiting for this flight.
    pub fn land(mut self, reply: ReplyResult) {
        self.landed = true;
        self.flights.land(&self.key, self.id, reply);
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        if !self.landed {
            let err = BackendError::ConnectionLost {
                addr: self.flights.addr.clone(),
                reason: "a coalesced read was dropped without a reply".to_owned(),
            };
            self.flights.land(&self.key, self.id, Err(err));
        }
    }
}

impl Flights {
    /// An empty table for endpoint `addr`.
    pub fn new(addr: &str) -> Flights {
        Flights {
            table: Mutex::new(Table::default()),
            addr: addr.to_owned(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Plain data: a panic elsewhere leaves it usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads in flight (for tests and bounds checks).
    pub fn len(&self) -> usize {
        let t = self.lock();
        t.live.len() + t.replaced.len()
    }

    /// Whether no read is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One read of `frame` (a complete request), routed at `started`:
    /// joins the flight of an identical read if `may_join` allows it;
    /// otherwise leads a new flight (`lead` queues `frame` with the
    /// [`Landing`]), which replaces an older identical one as the flight
    /// later reads join; or, when the identical flight in the table is not
    /// older than this read, is sent on its own (`alone`).
    pub fn read(
        self: &Arc<Self>,
        frame: &Bytes,
        started: Instant,
        may_join: MayJoin,
        lead: impl FnOnce(Landing),
        alone: impl FnOnce() -> ReplyRx,
    ) -> (ReplyRx, Coalesced) {
        let (tx, rx) = oneshot::channel();
        // The key is a copy: the request's bytes share the client's read
        // buffer, which must not be kept for the life of the flight (the
        // connection could then not reuse it and would allocate anew).
        let mut key = None;
        let mut own_key = || {
            key.get_or_insert_with(|| Bytes::copy_from_slice(frame))
                .clone()
        };
        let (id, how) = {
            let mut table = self.lock();
            match table.live.get_mut(frame.as_ref()) {
                Some(f) if may_join.allows(f.sent) => {
                    f.waiters.push(tx);
                    return (rx, Coalesced::Joined);
                }
                Some(f) if f.sent >= started => {
                    drop(table);
                    return (alone(), Coalesced::Bypassed);
                }
                Some(_) => (table.start(&own_key(), started, tx), Coalesced::Bypassed),
                None => (table.start(&own_key(), started, tx), Coalesced::Led),
            }
        };
        // Queued without the lock: a refused request lands at once.
        lead(Landing {
            flights: self.clone(),
            key: own_key(),
            id,
            landed: false,
        });
        (rx, how)
    }

    /// Flight `id` of `key` is answered: it leaves the table, then every
    /// waiter gets the reply (no client can join after it left).
    fn land(&self, key: &[u8], id: u64, reply: ReplyResult) {
        let Some(waiters) = self.lock().finish(key, id) else {
            return;
        };
        let mut waiters = waiters.into_iter();
        let last = waiters.next_back();
        for w in waiters {
            let _ = w.send(reply.clone());
        }
        if let Some(w) = last {
            let _ = w.send(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::time::Duration;

    use super::*;
    use crate::backend::mux::Answer;

    const GET: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";

    /// A table whose leaders are kept in `sent` (the "connection").
    struct Fixture {
        flights: Arc<Flights>,
        sent: RefCell<Vec<Landing>>,
        alone: RefCell<Vec<oneshot::Sender<ReplyResult>>>,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                flights: Arc::new(Flights::new("127.0.0.1:1")),
                sent: RefCell::new(Vec::new()),
                alone: RefCell::new(Vec::new()),
            }
        }

        fn read(&self, frame: &[u8], started: Instant, may_join: MayJoin) -> (ReplyRx, Coalesced) {
            self.flights.read(
                &Bytes::copy_from_slice(frame),
                started,
                may_join,
                |l| self.sent.borrow_mut().push(l),
                || {
                    let (tx, rx) = oneshot::channel();
                    self.alone.borrow_mut().push(tx);
                    rx
                },
            )
        }
    }

    fn value(rx: &mut ReplyRx) -> Option<Bytes> {
        rx.try_recv().ok().and_then(|r| r.ok()).map(|a| a.frame)
    }

    fn answer(bytes: &'static [u8]) -> ReplyResult {
        Ok(Answer::new(Bytes::from_static(bytes), Duration::ZERO))
    }

    #[test]
    fn identical_reads_in_flight_share_one_request_and_its_bytes() {
        let f = Fixture::new();
        let t = Instant::now();
        let (mut a, led) = f.read(GET, t, MayJoin::Any);
        let (mut b, joined) = f.read(GET, t, MayJoin::Any);
        let (mut c, other) = f.read(b"*2\r\n$3\r\nGET\r\n$1\r\nj\r\n", t, MayJoin::Any);
        assert_eq!(
            (led, joined, other),
            (Coalesced::Led, Coalesced::Joined, Coalesced::Led)
        );
        assert_eq!(f.sent.borrow().len(), 2, "one request per distinct read");
        assert_eq!(f.flights.len(), 2);
        let mut sent = f.sent.borrow_mut().drain(..).collect::<Vec<_>>();
        let first = sent.remove(0);
        first.land(answer(b"$1\r\nv\r\n"));
        let (va, vb) = (value(&mut a).unwrap(), value(&mut b).unwrap());
        assert_eq!(va.as_ref(), b"$1\r\nv\r\n");
        assert_eq!(va.as_ptr(), vb.as_ptr(), "the same bytes, not a copy");
        assert!(value(&mut c).is_none(), "the other key is still in flight");
        assert_eq!(f.flights.len(), 1, "the answered flight left the table");
        // After the reply, the same read leads a new flight.
        let (_d, again) = f.read(GET, t, MayJoin::Any);
        assert_eq!(again, Coalesced::Led);
    }

    #[test]
    fn a_client_joins_only_flights_sent_after_its_own_requests_were_answered() {
        let f = Fixture::new();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        let (mut old, _) = f.read(GET, t0, MayJoin::Any);
        // A write in flight: never joins; routed no later than the flight,
        // it goes alone.
        let (_n, how) = f.read(GET, t0, MayJoin::No);
        assert_eq!(how, Coalesced::Bypassed);
        assert_eq!(f.alone.borrow().len(), 1);
        // Answered before the flight was sent: it may join.
        let (mut joined_old, how) = f.read(GET, t1, MayJoin::SentSince(t0));
        assert_eq!(how, Coalesced::Joined);
        // Its write was answered after the flight was sent: it sends its
        // own, which becomes the flight later reads join.
        let (mut own, how) = f.read(GET, t1, MayJoin::SentSince(t1));
        assert_eq!(how, Coalesced::Bypassed);
        assert_eq!(f.sent.borrow().len(), 2, "a newer flight");
        let (mut joined_new, how) = f.read(GET, t1, MayJoin::SentSince(t1));
        assert_eq!(how, Coalesced::Joined);
        assert_eq!(f.flights.len(), 2);
        // Each flight lands with its own waiters, in either order.
        let mut sent = f.sent.borrow_mut().drain(..).collect::<Vec<_>>();
        sent.pop().unwrap().land(answer(b"$3\r\nnew\r\n"));
        assert_eq!(value(&mut own).unwrap().as_ref(), b"$3\r\nnew\r\n");
        assert_eq!(value(&mut joined_new).unwrap().as_ref(), b"$3\r\nnew\r\n");
        assert!(value(&mut old).is_none());
        sent.pop().unwrap().land(answer(b"$3\r\nold\r\n"));
        assert_eq!(value(&mut old).unwrap().as_ref(), b"$3\r\nold\r\n");
        assert_eq!(value(&mut joined_old).unwrap().as_ref(), b"$3\r\nold\r\n");
        assert!(f.flights.is_empty());
    }

    #[test]
    fn errors_reach_every_waiter_and_nothing_stays_behind() {
        let f = Fixture::new();
        let t = Instant::now();
        let (mut a, _) = f.read(GET, t, MayJoin::Any);
        let (mut b, _) = f.read(GET, t, MayJoin::Any);
        let landing = f.sent.borrow_mut().pop().unwrap();
        landing.land(Err(BackendError::Timeout {
            addr: "127.0.0.1:1".to_owned(),
            millis: 5,
        }));
        for rx in [&mut a, &mut b] {
            let e = rx.try_recv().unwrap().unwrap_err();
            assert!(e.read_may_retry(), "a replica read retries on the primary");
        }
        assert!(f.flights.is_empty());
        // A landing dropped unanswered answers and leaves the table.
        let (mut c, _) = f.read(GET, t, MayJoin::Any);
        drop(f.sent.borrow_mut().pop());
        assert!(c.try_recv().unwrap().is_err());
        assert!(f.flights.is_empty());
    }

    #[test]
    fn a_waiter_that_went_away_does_not_keep_the_others_waiting() {
        let f = Fixture::new();
        let t = Instant::now();
        let (a, _) = f.read(GET, t, MayJoin::Any);
        let (mut b, _) = f.read(GET, t, MayJoin::Any);
        drop(a);
        f.sent
            .borrow_mut()
            .pop()
            .unwrap()
            .land(answer(b"$1\r\nv\r\n"));
        assert!(value(&mut b).is_some());
        assert!(f.flights.is_empty());
    }
}

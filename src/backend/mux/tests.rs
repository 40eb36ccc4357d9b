use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::backend::Backends;
use crate::shardmap::ShardMap;

/// One Redis shard at an address where nothing listens.
const MAP: &str =
    "regions:\n  - name: r\nshards:\n  - name: a\n    region: r\n    primary: 127.0.0.1:1\n";

fn endpoint() -> Arc<EndpointState> {
    let map = ShardMap::from_yaml(MAP).expect("valid map");
    Backends::new(&map, None, None).endpoints()[0].state.clone()
}

/// A connection task over an in-memory pipe; the test plays the backend
/// on the other end.
struct Harness {
    ep: Arc<EndpointState>,
    shared: Arc<Shared>,
    backend: DuplexStream,
    task: tokio::task::JoinHandle<Ended>,
}

impl Harness {
    fn start() -> Harness {
        let ep = endpoint();
        let shared = Arc::new(Shared::new(&ep.addr));
        let (proxy_side, backend) = tokio::io::duplex(64 * 1024);
        let task = {
            let (ep, shared) = (ep.clone(), shared.clone());
            tokio::spawn(async move {
                let (rd, wr) = tokio::io::split(proxy_side);
                run(&ep, rd, wr, &shared, None).await
            })
        };
        Harness {
            ep,
            shared,
            backend,
            task,
        }
    }

    fn send(&self, frame: &[u8]) -> ReplyRx {
        let (tx, rx) = oneshot::channel();
        self.shared
            .push(|out| out.extend_from_slice(frame), ReplyTx::One(tx));
        rx
    }

    /// Reads exactly `expected` from the proxy side.
    async fn expect(&mut self, expected: &[u8]) {
        let mut got = vec![0; expected.len()];
        tokio::time::timeout(Duration::from_secs(5), self.backend.read_exact(&mut got))
            .await
            .expect("requests written")
            .expect("pipe open");
        assert_eq!(got, expected);
    }
}

async fn reply(rx: ReplyRx) -> Result<Bytes, BackendError> {
    tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("answered in time")
        .expect("answered, not dropped")
        .map(|a| a.frame)
}

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
const GET: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";

#[tokio::test]
async fn pipelined_replies_go_to_their_senders_in_order() {
    let mut h = Harness::start();
    let first = h.send(PING);
    let second = h.send(GET);
    let third = h.send(PING);
    h.expect(&[PING, GET, PING].concat()).await;
    // All three replies in one write.
    h.backend
        .write_all(b"+PONG\r\n$1\r\nv\r\n-ERR nope\r\n")
        .await
        .unwrap();
    assert_eq!(reply(first).await.unwrap().as_ref(), b"+PONG\r\n");
    assert_eq!(reply(second).await.unwrap().as_ref(), b"$1\r\nv\r\n");
    assert_eq!(reply(third).await.unwrap().as_ref(), b"-ERR nope\r\n");
}

#[tokio::test]
async fn a_coalesced_read_goes_down_once_and_lands_with_every_waiter() {
    use crate::backend::coalesce::{Coalesced, Flights, MayJoin};
    let mut h = Harness::start();
    let flights = Arc::new(Flights::new("127.0.0.1:1"));
    let frame = Bytes::from_static(GET);
    let started = Instant::now();
    let read = |flights: &Arc<Flights>| {
        flights.read(
            &frame,
            started,
            MayJoin::Any,
            |landing| {
                let (waker, out) = (&h.shared, frame.clone());
                waker.push(|o| o.extend_from_slice(&out), ReplyTx::Flight(landing));
            },
            || h.send(GET),
        )
    };
    let (a, led) = read(&flights);
    let (b, joined) = read(&flights);
    assert_eq!((led, joined), (Coalesced::Led, Coalesced::Joined));
    // Only one GET goes down; a PING queued behind it keeps its place.
    let ping = h.send(PING);
    h.expect(&[GET, PING].concat()).await;
    h.backend.write_all(b"$1\r\nv\r\n+PONG\r\n").await.unwrap();
    assert_eq!(reply(a).await.unwrap().as_ref(), b"$1\r\nv\r\n");
    assert_eq!(reply(b).await.unwrap().as_ref(), b"$1\r\nv\r\n");
    assert_eq!(reply(ping).await.unwrap().as_ref(), b"+PONG\r\n");
    assert!(flights.is_empty(), "the flight left with its reply");
}

#[tokio::test]
async fn a_reply_split_across_reads_is_delivered_whole() {
    let mut h = Harness::start();
    let rx = h.send(GET);
    h.expect(GET).await;
    for piece in [&b"$11\r\nhello"[..], b" world\r", b"\n"] {
        h.backend.write_all(piece).await.unwrap();
        h.backend.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(reply(rx).await.unwrap().as_ref(), b"$11\r\nhello world\r\n");
}

#[tokio::test]
async fn a_lost_connection_fails_every_waiting_sender() {
    let mut h = Harness::start();
    let a = h.send(GET);
    let b = h.send(PING);
    h.expect(&[GET, PING].concat()).await;
    drop(h.backend);
    for rx in [a, b] {
        let e = reply(rx).await.unwrap_err();
        assert!(
            matches!(&e, BackendError::ConnectionLost { addr, .. } if addr == "127.0.0.1:1"),
            "{e:?}"
        );
        // It was written: it may have run, so it must not be retried.
        assert!(!e.never_sent());
    }
    assert!(matches!(h.task.await.unwrap(), Ended::Failed(_)));
}

#[tokio::test]
async fn a_dropped_connection_task_still_answers() {
    let mut h = Harness::start();
    let written = h.send(GET);
    h.expect(GET).await;
    h.task.abort();
    let e = reply(written).await.unwrap_err();
    assert!(matches!(e, BackendError::ConnectionLost { .. }), "{e:?}");
    // Queued after the task is gone: answered when the queue is dropped.
    let queued = h.send(PING);
    drop(h.shared);
    let e = reply(queued).await.unwrap_err();
    assert!(matches!(e, BackendError::ConnectionLost { .. }), "{e:?}");
}

#[tokio::test]
async fn the_connection_ends_quietly_when_no_handle_is_left() {
    let h = Harness::start();
    drop(Owner {
        shared: h.shared.clone(),
    });
    let ended = tokio::time::timeout(Duration::from_secs(5), h.task)
        .await
        .expect("ended in time")
        .unwrap();
    assert_eq!(ended, Ended::Unused);
}

#[tokio::test]
async fn a_request_that_could_not_connect_was_never_sent() {
    // Nothing listens on port 1: the connect fails before any byte is written.
    let conn = MuxConn::spawn(endpoint(), Protocol::Resp2.into(), None);
    let e = reply(conn.send(PING)).await.unwrap_err();
    assert!(
        matches!(&e, BackendError::Unavailable { addr, .. } if addr == "127.0.0.1:1"),
        "{e:?}"
    );
    assert!(e.never_sent(), "safe to retry elsewhere");
}

/// A request taken while this proxy's fleet lease fence is closed (routed
/// before it closed: say the process was frozen past its lease) is failed
/// unsent; once the fence opens again, requests are written as before.
#[tokio::test]
async fn nothing_is_written_while_the_lease_fence_is_closed() {
    let mut h = Harness::start();
    let first = h.send(PING);
    h.expect(PING).await;
    h.backend.write_all(b"+PONG\r\n").await.unwrap();
    assert_eq!(&reply(first).await.unwrap()[..], b"+PONG\r\n");

    h.ep.lease_fence.close();
    let fenced = h.send(GET);
    assert!(
        matches!(reply(fenced).await, Err(BackendError::Fenced { .. })),
        "a request routed before the fence closed was not failed"
    );
    h.ep.lease_fence
        .open_until(Instant::now() + Duration::from_secs(60));
    let after = h.send(PING);
    // The next bytes on the wire are this PING's: the GET never went.
    h.expect(PING).await;
    h.backend.write_all(b"+PONG\r\n").await.unwrap();
    assert_eq!(&reply(after).await.unwrap()[..], b"+PONG\r\n");
}

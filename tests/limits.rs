//! Client-side limits against a real deployment: max clients, idle timeout,
//! and a slow reader that stops taking its replies.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Spec};
use redis::Commands;
use shardgate::proxy::ClientConfig;

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// Reads until the peer closes (or `limit` passes); returns the bytes read and
/// whether the connection was closed.
fn read_to_close(conn: &mut std::net::TcpStream, limit: Duration) -> (usize, bool) {
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    while Instant::now() < deadline {
        match conn.read(&mut buf) {
            Ok(0) => return (total, true),
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (total, true),
            Err(_) => {}
        }
    }
    (total, false)
}

#[test]
fn clients_over_max_clients_get_redis_error_and_others_keep_working() {
    let c = Cluster::start(Spec {
        client: ClientConfig {
            max_clients: 3,
            ..ClientConfig::default()
        },
        ..Spec::default()
    });
    let mut open: Vec<_> = (0..3).map(|_| c.raw()).collect();
    for r in &mut open {
        r.send(PING);
        assert_eq!(r.read_exactly(7), b"+PONG\r\n");
    }
    let mut extra = c.raw();
    assert_eq!(
        extra.read_until(b"\r\n"),
        b"-ERR max number of clients reached\r\n"
    );
    assert!(extra.is_closed());
    // The admitted clients are unaffected.
    open[0].send(PING);
    assert_eq!(open[0].read_exactly(7), b"+PONG\r\n");
    // A slot frees up when a client leaves.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = c.raw();
        again.send(PING);
        let got = again.read_until(b"\r\n");
        if got == b"+PONG\r\n" {
            break;
        }
        assert_eq!(got, b"-ERR max number of clients reached\r\n");
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_clients_are_closed_and_active_ones_are_not() {
    let c = Cluster::start(Spec {
        client: ClientConfig {
            idle_timeout: Some(Duration::from_millis(1500)),
            ..ClientConfig::default()
        },
        ..Spec::default()
    });
    let mut idle = c.raw();
    let mut busy = c.raw();
    for _ in 0..25 {
        busy.send(PING);
        assert_eq!(busy.read_exactly(7), b"+PONG\r\n", "active client closed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, closed) = read_to_close(&mut idle.s, Duration::from_secs(5));
    assert!(closed, "idle client still open");
}

#[test]
fn a_client_that_stops_reading_is_disconnected_and_others_are_served() {
    let c = Cluster::start(Spec {
        client: ClientConfig {
            write_stall_timeout: Duration::from_millis(500),
            ..ClientConfig::default()
        },
        ..Spec::default()
    });
    let mut con = c.conn();
    let value = vec![b'x'; 1 << 20];
    let _: () = con.set("big", &value).unwrap();
    // The other client's key lives on another shard. A key on big's shard
    // shares the slow client's multiplexed backend connection and waits
    // behind its 300 MiB of replies (head-of-line on one connection, by
    // design), which under load can exceed the command timeout.
    let other = (0..)
        .map(|i| format!("other:{i}"))
        .find(|k| c.shard_of(k) != c.shard_of("big"))
        .unwrap();
    let _: () = con.set(&other, &value).unwrap();

    let clients = |con: &mut redis::Connection| -> usize {
        let info: String = redis::cmd("INFO").arg("clients").query(con).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("connected_clients")
    };
    let before = clients(&mut con);

    // 300 pipelined GETs of 1 MiB = 300 MiB of replies, never read.
    let mut slow = c.raw();
    let get = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(300);
    slow.send(&get);

    // Everyone else is served meanwhile.
    let v: Vec<u8> = con.get(&other).unwrap();
    assert_eq!(v.len(), 1 << 20);

    // Not reading a byte, wait until the proxy has dropped the client (a
    // read now would let the proxy's writes make progress).
    let deadline = Instant::now() + Duration::from_secs(30);
    while clients(&mut con) > before {
        assert!(
            Instant::now() < deadline,
            "slow reader was not disconnected"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The slow client got only what fit in socket buffers, then the close.
    let (read, closed) = read_to_close(&mut slow.s, Duration::from_secs(10));
    assert!(closed, "slow reader was not disconnected");
    assert!(
        read < 300 << 20,
        "all {read} bytes were delivered: nothing was limited"
    );
}

#[test]
fn argument_count_and_query_buffer_limits_close_the_offender_only() {
    let c = Cluster::start(Spec {
        client: ClientConfig {
            limits: shardgate::protocol::Limits {
                max_args: 3,
                ..Default::default()
            },
            max_query_buffer: 1 << 20,
            ..ClientConfig::default()
        },
        ..Spec::default()
    });
    let mut many = c.raw();
    many.send(b"*4\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n");
    assert_eq!(
        many.read_until(b"\r\n"),
        b"-ERR Protocol error: invalid multibulk length\r\n"
    );
    assert!(many.is_closed());

    // 8 MiB declared (under max_bulk_len), 2 MiB sent: over the 1 MiB buffer.
    let mut big = c.raw();
    big.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$8388608\r\n");
    let _ = std::io::Write::write_all(&mut big.s, &vec![b'x'; 2 << 20]);
    let (_, closed) = read_to_close(&mut big.s, Duration::from_secs(5));
    assert!(closed, "client over the query buffer limit still open");

    let mut ok = c.raw();
    ok.send(PING);
    assert_eq!(ok.read_exactly(7), b"+PONG\r\n");
}

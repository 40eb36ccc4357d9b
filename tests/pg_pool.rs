//! More clients than a PostgreSQL shard has connections: commands wait for
//! a connection in arrival order, within their command timeout, and are
//! served once one frees up (`backend::pg::turns`). Before, a command that
//! waited longer than `connect_timeout_ms` for a busy connection was
//! answered `unavailable: pool timed out` and counted against the
//! database's breaker, although the database served every connection the
//! proxy had.

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::postgres::PgServer;
use common::resp::FrameConn;

/// The binary over one postgres shard: two serving threads, each with
/// one lane connection of `pg_pool_size: 2` plus its group-commit and
/// batched-read connections (4 + 4), so 18 in all; the default
/// `connect_timeout_ms` (1 s) and a command timeout far above the waits.
/// Its log goes to `proxy.log` in `dir`.
fn proxy(pg: &PgServer, dir: &common::TempDir) -> (common::KillOnDrop, u16, u16) {
    let map = dir.path().join("map.yaml");
    std::fs::write(
        &map,
        format!(
            "regions:\n  - name: us\noptions:\n  pg_pool_size: 2\n  command_timeout_ms: 30000\nshards:\n  - name: pgs\n    kind: postgres\n    region: us\n    primary: {}\n",
            pg.dsn()
        ),
    )
    .unwrap();
    let (port, mport) = (common::free_port(), common::free_port());
    let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["serve", "--map"])
        .arg(&map)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{mport}")])
        .args(["--threads", "2"])
        .stderr(log)
        .spawn()
        .expect("spawn shardgate");
    let child = common::KillOnDrop(child);
    common::wait_for_port(port);
    (child, port, mport)
}

/// Connections of the proxy above, in all.
const CONNECTIONS: usize = 18;

fn scrape(mport: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The sum of the samples of the series starting with `prefix`.
fn metric(body: &str, prefix: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every connection busy for longer than `connect_timeout_ms`: clients
/// queued behind them wait their turn and are all served, with no error.
#[test]
fn commands_wait_their_turn_for_a_busy_connection_instead_of_failing() {
    let pg = PgServer::start();
    let dir = common::TempDir::new("pg-pool");
    let (_proxy, port, mport) = proxy(&pg, &dir);
    let mut admin = FrameConn::connect(port);
    assert_eq!(admin.call(&["SET", "locked", "v0"]), b"+OK\r\n");

    // Another session holds the row of `locked`; APPENDs to it (each
    // holding a connection: the first waits for the row, the others for
    // its key lock) take every connection of both threads, and more.
    let mut holder = pg.hold_row_lock("locked");
    const BLOCKED: usize = 60;
    let blocked: Vec<_> = (0..BLOCKED)
        .map(|_| {
            thread::spawn(move || {
                let mut c = FrameConn::connect(port);
                c.call(&["APPEND", "locked", "x"])
            })
        })
        .collect();
    let waiting = || -> usize {
        pg.query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shardgate' \
             AND wait_event_type = 'Lock'",
        )
        .parse()
        .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while waiting() < CONNECTIONS {
        assert!(
            Instant::now() < deadline,
            "only {} of the proxy's {CONNECTIONS} connections wait on the lock",
            waiting()
        );
        thread::sleep(Duration::from_millis(20));
    }

    // Clients of other keys, behind them: no connection is free.
    const OTHERS: usize = 20;
    let start = Arc::new(Barrier::new(OTHERS + 1));
    let others: Vec<_> = (0..OTHERS)
        .map(|i| {
            let start = start.clone();
            thread::spawn(move || {
                let mut c = FrameConn::connect(port);
                start.wait();
                let key = format!("free:{i}");
                let set = c.call(&["HSET", &key, "f", &i.to_string()]);
                let got = c.call(&["HGET", &key, "f"]);
                (set, got)
            })
        })
        .collect();
    start.wait();
    // Held well past connect_timeout_ms (1 s), well within the command
    // timeout.
    thread::sleep(Duration::from_millis(2500));
    assert!(
        others.iter().all(|o| !o.is_finished()),
        "a client was served while every connection was busy"
    );
    assert_eq!(waiting(), CONNECTIONS, "the proxy opened more connections");
    holder.release();

    for (i, o) in others.into_iter().enumerate() {
        let (set, got) = o.join().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&set),
            ":1\r\n",
            "HSET of client {i}"
        );
        let want = format!("${}\r\n{i}\r\n", i.to_string().len());
        assert_eq!(String::from_utf8_lossy(&got), want, "HGET of client {i}");
    }
    let mut lengths: Vec<i64> = blocked
        .into_iter()
        .map(|b| {
            let reply = String::from_utf8(b.join().unwrap()).unwrap();
            reply
                .strip_prefix(':')
                .and_then(|r| r.trim_end().parse().ok())
                .unwrap_or_else(|| panic!("APPEND answered {reply:?}"))
        })
        .collect();
    // Each APPEND ran once, one after the other.
    lengths.sort_unstable();
    let want: Vec<i64> = (3..3 + BLOCKED as i64).collect();
    assert_eq!(lengths, want);
    let value = admin.call(&["GET", "locked"]);
    assert_eq!(
        String::from_utf8_lossy(&value),
        format!("${}\r\nv0{}\r\n", 2 + BLOCKED, "x".repeat(BLOCKED))
    );

    let body = scrape(mport);
    assert!(
        metric(&body, "shardgate_pg_connection_wait_seconds_count{") >= OTHERS as f64,
        "waits not counted:\n{body}"
    );
    assert_eq!(
        metric(&body, "shardgate_backend_errors_total{"),
        0.0,
        "backend errors:\n{body}"
    );
    assert!(
        body.lines().any(|l| l == "shardgate_panics_total 0"),
        "the proxy panicked"
    );
    // The operator is told, once (the waits were within 30 s).
    let log = std::fs::read_to_string(dir.path().join("proxy.log")).unwrap();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("waited over 100 ms for a postgres connection"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("WARN") && warned[0].contains("pg_pool_size=2"));
}

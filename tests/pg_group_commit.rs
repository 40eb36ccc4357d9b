//! Group commit on PostgreSQL shards (`backend::pg::batch`): plain SETs and
//! INCR-family writes that many clients have in flight at once commit
//! together, and still answer exactly what Redis answers, one command at a
//! time: a failing command inside a batch fails alone, a hot counter
//! incremented by every client counts every increment once (its replies
//! are exactly 1..=N, as a serial order gives), and a row lock held by a
//! session outside the proxy stalls a batch only for its lock timeout.
//! Batches of SETs alone run as one statement (`sg_try_set_strings`), and
//! GETs in flight together are read with one statement
//! (`backend::pg::reads`), each answering what it would alone. The binary
//! runs with two serving threads, so lanes, committers and readers run on
//! both.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::postgres::PgServer;
use common::resp::FrameConn;

/// The binary over one postgres shard, with its metrics listener.
fn proxy(pg: &PgServer, dir: &common::TempDir) -> (common::KillOnDrop, u16, u16) {
    let map = dir.path().join("map.yaml");
    std::fs::write(
        &map,
        format!(
            "regions:\n  - name: us\noptions:\n  pg_pool_size: 64\n  command_timeout_ms: 20000\nshards:\n  - name: pgs\n    kind: postgres\n    region: us\n    primary: {}\n",
            pg.dsn()
        ),
    )
    .unwrap();
    let mport = common::free_port();
    let maddr = format!("127.0.0.1:{mport}");
    let (child, port) = common::spawn_proxy(
        env!("CARGO_BIN_EXE_shardgate"),
        &map,
        &["--metrics-listen", &maddr, "--threads", "2"],
    );
    (child, port, mport)
}

/// The proxy's `/metrics` page.
fn scrape(mport: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The sum of the samples of the series starting with `prefix` (a name and
/// `{`) that contain `label` (empty: all).
fn metric(mport: u16, prefix: &str, label: &str) -> f64 {
    scrape(mport)
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Asserts that the proxy has not panicked (a batch task that panics after
/// answering its clients would go unseen otherwise).
fn assert_no_panics(mport: u16) {
    let body = scrape(mport);
    let line = body
        .lines()
        .find(|l| l.starts_with("shardgate_panics_total "))
        .unwrap_or_else(|| panic!("no shardgate_panics_total in:\n{body}"));
    assert_eq!(line, "shardgate_panics_total 0", "the proxy panicked");
}

/// The value of the group commit counter for `outcome`.
fn group_commit(mport: u16, outcome: &str) -> u64 {
    metric(
        mport,
        "shardgate_pg_group_commit_commands_total{",
        &format!("outcome=\"{outcome}\""),
    ) as u64
}

/// Runs `each(client, its own connection)` on `clients` threads released
/// together, and returns their results in client order.
fn together<T: Send + 'static>(
    clients: usize,
    port: u16,
    each: impl Fn(usize, &mut FrameConn) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let each = Arc::new(each);
    let barrier = Arc::new(Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (each, barrier) = (each.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut con = FrameConn::connect(port);
                barrier.wait();
                each(c, &mut con)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

fn int(reply: &[u8]) -> i64 {
    let text = std::str::from_utf8(reply).unwrap();
    text.strip_prefix(':')
        .and_then(|t| t.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("not an integer reply: {text:?}"))
}

#[test]
fn writes_in_flight_together_commit_together_with_exact_replies() {
    const CLIENTS: usize = 24;
    const ROUNDS: usize = 60;
    let pg = PgServer::start();
    let dir = common::TempDir::new("pg-group-commit");
    let (_proxy, port, mport) = proxy(&pg, &dir);
    let mut setup = FrameConn::connect(port);
    assert_eq!(setup.call(&["SET", "text", "abc"]), b"+OK\r\n");
    assert_eq!(setup.call(&["HSET", "hash", "f", "v"]), b":1\r\n");
    assert_eq!(
        setup.call(&["SET", "max", &i64::MAX.to_string()]),
        b"+OK\r\n"
    );
    assert_eq!(setup.call(&["SET", "ttl", "10", "EX", "1000"]), b"+OK\r\n");
    let hots = together(CLIENTS, port, move |c, con| {
        let mut hot = Vec::with_capacity(ROUNDS);
        for r in 0..ROUNDS {
            let own = format!("own{c}");
            let value = format!("v{r}");
            // Failing commands among the others fail alone, with
            // Redis' replies.
            match r % 5 {
                0 => assert_eq!(
                    con.call(&["INCR", "text"]),
                    b"-ERR value is not an integer or out of range\r\n"
                ),
                1 => assert_eq!(
                    con.call(&["INCRBY", "hash", "2"]),
                    &b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"[..]
                ),
                2 => assert_eq!(
                    con.call(&["INCR", "max"]),
                    b"-ERR increment or decrement would overflow\r\n"
                ),
                3 => assert_eq!(con.call(&["DECRBY", "ttl", "0"]), b":10\r\n"),
                _ => {}
            }
            assert_eq!(con.call(&["SET", &own, &value]), b"+OK\r\n");
            // The client's next request sees its write.
            let got = con.call(&["GET", &own]);
            assert_eq!(got, format!("${}\r\n{value}\r\n", value.len()).as_bytes());
            assert_eq!(
                int(&con.call(&["INCRBY", &format!("n{c}"), "3"])),
                3 * (r as i64 + 1)
            );
            hot.push(int(&con.call(&["INCR", "hot"])));
        }
        hot
    });
    let mut seen = BTreeSet::new();
    for hot in hots {
        // A client's own increments of the hot key are answered in order.
        assert!(hot.windows(2).all(|w| w[0] < w[1]), "{hot:?}");
        for n in hot {
            assert!(seen.insert(n), "INCR hot answered {n} twice");
        }
    }
    let total = (CLIENTS * ROUNDS) as i64;
    assert_eq!(seen, (1..=total).collect::<BTreeSet<i64>>());
    assert_eq!(
        setup.call(&["GET", "hot"]),
        format!("${}\r\n{total}\r\n", total.to_string().len()).as_bytes()
    );
    // The failed commands changed nothing.
    assert_eq!(setup.call(&["GET", "text"]), b"$3\r\nabc\r\n");
    assert_eq!(setup.call(&["HGET", "hash", "f"]), b"$1\r\nv\r\n");
    assert_eq!(
        setup.call(&["GET", "max"]),
        format!("$19\r\n{}\r\n", i64::MAX).as_bytes()
    );
    // INCR kept the TTL.
    assert_eq!(setup.call(&["GET", "ttl"]), b"$2\r\n10\r\n");
    assert!(int(&setup.call(&["TTL", "ttl"])) > 900);
    for c in 0..CLIENTS {
        assert_eq!(
            setup.call(&["GET", &format!("own{c}")]),
            format!("$3\r\nv{}\r\n", ROUNDS - 1).as_bytes()
        );
    }
    assert!(group_commit(mport, "batched") > 0, "no write was batched");
    assert_no_panics(mport);
}

#[test]
fn a_row_lock_held_outside_the_proxy_stalls_batches_only_briefly() {
    const CLIENTS: usize = 16;
    const ROUNDS: usize = 20;
    let pg = PgServer::start();
    let dir = common::TempDir::new("pg-group-commit-lock");
    let (_proxy, port, mport) = proxy(&pg, &dir);
    let mut con = FrameConn::connect(port);
    assert_eq!(con.call(&["SET", "locked", "v0"]), b"+OK\r\n");
    // Another session holds the row's lock (not the proxy's key lock).
    let mut holder = pg.hold_row_lock("locked");
    // Clients writing their own keys, and (now and then) the locked one,
    // all at once.
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let blocked: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut free = FrameConn::connect(port);
                let mut stuck = FrameConn::connect(port);
                barrier.wait();
                for r in 0..ROUNDS {
                    if c % 4 == 0 && r == ROUNDS / 2 {
                        stuck.send(&["SET", "locked", &format!("c{c}")]);
                    }
                    let key = format!("free{c}");
                    assert_eq!(free.call(&["SET", &key, &r.to_string()]), b"+OK\r\n");
                    assert_eq!(
                        free.call(&["INCR", &format!("n{c}")]),
                        format!(":{}\r\n", r + 1).as_bytes()
                    );
                }
                stuck
            })
        })
        .collect();
    let mut stuck: Vec<FrameConn> = blocked.into_iter().map(|t| t.join().unwrap()).collect();
    let mut waiting = stuck
        .iter_mut()
        .enumerate()
        .filter(|(c, _)| c % 4 == 0)
        .map(|(_, s)| s)
        .collect::<Vec<_>>();
    // Every other write was answered while the SETs of the locked key wait.
    for s in &mut waiting {
        assert_eq!(s.frame_within(Duration::from_millis(200)), None);
    }
    holder.release();
    for s in &mut waiting {
        assert_eq!(s.frame(), b"+OK\r\n");
    }
    // The last of the waiting SETs wins; any of the writers may be last.
    let got = con.call(&["GET", "locked"]);
    let writers: Vec<Vec<u8>> = (0..CLIENTS)
        .filter(|c| c % 4 == 0)
        .map(|c| {
            let v = format!("c{c}");
            format!("${}\r\n{v}\r\n", v.len()).into_bytes()
        })
        .collect();
    assert!(
        writers.contains(&got),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // (Whether a batch met the row lock depends on timing; the counter
    // exists either way.)
    let _ = group_commit(mport, "batch_failed");
    assert_no_panics(mport);
}

#[test]
fn sets_in_flight_together_commit_as_one_statement() {
    const CLIENTS: usize = 24;
    const ROUNDS: usize = 50;
    let pg = PgServer::start();
    let dir = common::TempDir::new("pg-group-sets");
    let (_proxy, port, mport) = proxy(&pg, &dir);
    let mut setup = FrameConn::connect(port);
    // Keys the batches overwrite: a hash (its fields must go) and a key
    // with a TTL (SET clears it).
    assert_eq!(
        setup.call(&["HSET", "was-hash", "f1", "a", "f2", "b"]),
        b":2\r\n"
    );
    assert_eq!(
        setup.call(&["SET", "had-ttl", "x", "EX", "1000"]),
        b"+OK\r\n"
    );
    let written = together(CLIENTS, port, move |c, con| {
        let mut shared = Vec::with_capacity(ROUNDS);
        for r in 0..ROUNDS {
            let value = format!("c{c}r{r}");
            assert_eq!(con.call(&["SET", &format!("own{c}"), &value]), b"+OK\r\n");
            // Every client writes the shared key too; the last
            // acknowledged SET must be what stays.
            assert_eq!(con.call(&["SET", "shared", &value]), b"+OK\r\n");
            shared.push(value);
            if r == ROUNDS / 2 {
                assert_eq!(con.call(&["SET", "was-hash", "s"]), b"+OK\r\n");
                assert_eq!(con.call(&["SET", "had-ttl", "y"]), b"+OK\r\n");
            }
        }
        shared
    });
    for (c, values) in written.iter().enumerate() {
        let last = &values[ROUNDS - 1];
        assert_eq!(
            setup.call(&["GET", &format!("own{c}")]),
            format!("${}\r\n{last}\r\n", last.len()).as_bytes()
        );
    }
    // The shared key holds one client's last value (every SET of it was
    // acknowledged; whichever committed last wins, as in Redis).
    let shared = setup.call(&["GET", "shared"]);
    let shared = String::from_utf8_lossy(&shared);
    assert!(
        written
            .iter()
            .any(|v| shared.ends_with(&format!("{}\r\n", v[ROUNDS - 1]))),
        "{shared:?}"
    );
    // The hash's fields went with it; the TTL went too.
    assert_eq!(setup.call(&["GET", "was-hash"]), b"$1\r\ns\r\n");
    assert_eq!(
        setup.call(&["HSET", "was-hash", "f3", "c"]),
        &b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"[..]
    );
    assert_eq!(setup.call(&["DEL", "was-hash"]), b":1\r\n");
    assert_eq!(setup.call(&["HSET", "was-hash", "f3", "c"]), b":1\r\n");
    assert_eq!(setup.call(&["HLEN", "was-hash"]), b":1\r\n");
    assert_eq!(setup.call(&["TTL", "had-ttl"]), b":-1\r\n");
    assert!(group_commit(mport, "batched") > 0, "no SET was batched");
    // No kv_hash row is left without its key.
    let orphans = pg.query(
        "SELECT count(*) FROM kv_hash h WHERE NOT EXISTS (SELECT 1 FROM kv k WHERE k.kd = h.kd)",
    );
    assert_eq!(orphans.trim(), "0");
    assert_no_panics(mport);
}

#[test]
fn gets_in_flight_together_are_read_with_one_statement() {
    const CLIENTS: usize = 24;
    const ROUNDS: usize = 80;
    let pg = PgServer::start();
    let dir = common::TempDir::new("pg-batched-gets");
    let (_proxy, port, mport) = proxy(&pg, &dir);
    let mut setup = FrameConn::connect(port);
    let big = "b".repeat(300_000);
    assert_eq!(setup.call(&["SET", "text", "abc"]), b"+OK\r\n");
    assert_eq!(setup.call(&["SET", "empty", ""]), b"+OK\r\n");
    assert_eq!(setup.call(&["SET", "crlf", "a\r\nb"]), b"+OK\r\n");
    assert_eq!(setup.call(&["SET", "big", &big]), b"+OK\r\n");
    assert_eq!(setup.call(&["HSET", "hash", "f", "v"]), b":1\r\n");
    assert_eq!(
        setup.call(&["SET", "expired", "gone", "PX", "1"]),
        b"+OK\r\n"
    );
    let long_key = "k".repeat(10_000);
    assert_eq!(setup.call(&["SET", &long_key, "long"]), b"+OK\r\n");
    std::thread::sleep(Duration::from_millis(20));
    let big_reply = format!("${}\r\n{big}\r\n", big.len()).into_bytes();
    together(CLIENTS, port, move |c, con| {
        for r in 0..ROUNDS {
            let (key, want): (&str, &[u8]) = match (c + r) % 8 {
                0 => ("text", b"$3\r\nabc\r\n"),
                1 => ("empty", b"$0\r\n\r\n"),
                2 => ("crlf", b"$4\r\na\r\nb\r\n"),
                3 => (
                    "hash",
                    b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
                ),
                4 => ("expired", b"$-1\r\n"),
                5 => ("missing", b"$-1\r\n"),
                6 => ("big", &big_reply),
                _ => (&long_key, b"$4\r\nlong\r\n"),
            };
            assert_eq!(
                con.call(&["GET", key]),
                want,
                "GET {}",
                &key[..key.len().min(20)]
            );
            // Read-your-writes: a GET right after the client's SET
            // (also pipelined) sees it.
            let own = format!("own{c}");
            let value = format!("r{r}");
            assert_eq!(con.call(&["SET", &own, &value]), b"+OK\r\n");
            assert_eq!(
                con.call(&["get", &own]),
                format!("${}\r\n{value}\r\n", value.len()).as_bytes()
            );
            let value = format!("p{r}");
            let replies = con.pipeline(&[
                &["SET", own.as_str(), value.as_str()][..],
                &["GET", own.as_str()],
            ]);
            assert_eq!(
                replies[1],
                format!("${}\r\n{value}\r\n", value.len()).as_bytes()
            );
        }
    });
    // Statements ran, and some read more than one GET.
    let statements = metric(mport, "shardgate_pg_read_batch_commands_count{", "");
    let gets = metric(mport, "shardgate_pg_read_batch_commands_sum{", "");
    let single = metric(
        mport,
        "shardgate_pg_read_batch_commands_bucket{",
        "le=\"1\"",
    );
    assert!(gets >= (CLIENTS * ROUNDS * 3) as f64, "{gets} GETs read");
    assert!(
        statements < gets && single < statements,
        "{statements} statements, {single} of one GET, for {gets} GETs"
    );
    assert_no_panics(mport);
}

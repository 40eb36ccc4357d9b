//! MULTI/EXEC, WATCH and DISCARD on a PostgreSQL shard run as one
//! PostgreSQL transaction with Redis' replies: the same transaction scripts
//! run through the proxy on keys of a Redis shard and on keys of a postgres
//! shard, and every reply must be byte-identical (RESP2 and RESP3). Then
//! concurrency: a WATCHed key changed by another client makes EXEC answer
//! nil, optimistic increments (WATCH/GET/MULTI/SET/EXEC with retries) and
//! transactional INCRs from many clients lose nothing, and no reader ever
//! sees half a transaction.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::cluster::{Cluster, Spec};
use common::resp::FrameConn;

/// One Redis shard and one postgres shard.
fn mixed() -> Cluster {
    Cluster::start(Spec {
        shards: 1,
        pg_shards: 1,
        ..Spec::default()
    })
}

/// A hash tag whose keys live on shard `want` (0: Redis, 1: postgres).
fn tag_on(c: &Cluster, want: usize, prefix: &str) -> String {
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|t| c.shard_of(&format!("{{{t}}}")) == want)
        .expect("a tag on the shard")
}

/// A step of a script: which client sends the command (`T` in it is the
/// hash tag), or a pause.
enum Step {
    On(usize, &'static str),
    Line(usize, String),
    Sleep(u64),
}
use Step::{Line, On, Sleep};

/// Scripts of transactions; each starts on fresh keys (FLUSHALL before).
fn scripts() -> Vec<(&'static str, Vec<Step>)> {
    vec![
        (
            "queued commands and EXEC's array",
            vec![
                On(0, "MULTI"),
                On(0, "SET {T}a 1"),
                On(0, "INCR {T}a"),
                On(0, "INCRBY {T}a 10"),
                On(0, "GET {T}a"),
                On(0, "HSET {T}h f v g w"),
                On(0, "HGETALL {T}h"),
                On(0, "HINCRBY {T}h n 5"),
                On(0, "HDEL {T}h f nothere"),
                On(0, "EXPIRE {T}a 100"),
                On(0, "TTL {T}a"),
                On(0, "PING"),
                On(0, "ECHO hi"),
                On(0, "EXEC"),
                On(0, "GET {T}a"),
                On(0, "HGETALL {T}h"),
            ],
        ),
        (
            "errors inside EXEC are per command",
            vec![
                On(0, "SET {T}s str"),
                On(0, "HSET {T}h f v"),
                On(0, "MULTI"),
                On(0, "INCR {T}s"),
                On(0, "SET {T}x 1"),
                On(0, "HSET {T}s f v"),
                On(0, "GET {T}h"),
                On(0, "INCRBYFLOAT {T}h 1"),
                On(0, "APPEND {T}x 2"),
                On(0, "EXEC"),
                On(0, "GET {T}x"),
                On(0, "GET {T}s"),
            ],
        ),
        (
            "queue-time errors: EXECABORT, nothing runs",
            vec![
                On(0, "MULTI"),
                On(0, "SET {T}a 1"),
                On(0, "NOSUCHCOMMAND {T}a"),
                On(0, "GET"),
                On(0, "EXEC"),
                On(0, "GET {T}a"),
                On(0, "MULTI"),
                On(0, "SET {T}a 1"),
                On(0, "SET {T}b"),
                On(0, "EXEC"),
                On(0, "EXISTS {T}a"),
            ],
        ),
        (
            "DISCARD and misplaced commands",
            vec![
                On(0, "EXEC"),
                On(0, "DISCARD"),
                On(0, "MULTI"),
                On(0, "MULTI"),
                On(0, "SET {T}a x"),
                On(0, "WATCH {T}a"),
                On(0, "DISCARD"),
                On(0, "GET {T}a"),
                On(0, "MULTI"),
                On(0, "MULTI"),
                On(0, "SET {T}a y"),
                On(0, "EXEC"),
                On(0, "GET {T}a"),
                On(0, "MULTI"),
                On(0, "EXEC"),
            ],
        ),
        (
            "multi-key commands inside MULTI",
            vec![
                On(0, "MULTI"),
                On(0, "MSET {T}a 1 {T}b 2"),
                On(0, "MGET {T}a {T}b {T}c"),
                On(0, "MSETNX {T}c 3 {T}a 9"),
                On(0, "DEL {T}a {T}c"),
                On(0, "EXISTS {T}a {T}b {T}c"),
                On(0, "GETDEL {T}b"),
                On(0, "EXEC"),
            ],
        ),
        (
            "WATCH with no change: EXEC runs",
            vec![
                On(0, "SET {T}w 1"),
                On(0, "WATCH {T}w {T}nothere"),
                On(0, "GET {T}w"),
                On(0, "MULTI"),
                On(0, "INCR {T}w"),
                On(0, "EXEC"),
                On(0, "GET {T}w"),
                // EXEC ended the WATCH: a change now does not matter.
                On(1, "SET {T}w 100"),
                On(0, "MULTI"),
                On(0, "INCR {T}w"),
                On(0, "EXEC"),
            ],
        ),
        (
            "WATCH, another client writes: nil",
            vec![
                On(0, "SET {T}w 1"),
                On(0, "WATCH {T}w"),
                On(1, "SET {T}w 2"),
                On(0, "MULTI"),
                On(0, "SET {T}w 3"),
                On(0, "EXEC"),
                On(0, "GET {T}w"),
            ],
        ),
        (
            "WATCH a missing key, another client creates it: nil",
            vec![
                On(0, "WATCH {T}new"),
                On(1, "HSET {T}new f v"),
                On(0, "MULTI"),
                On(0, "SET {T}new mine"),
                On(0, "EXEC"),
                On(0, "HGETALL {T}new"),
            ],
        ),
        (
            "WATCH, the same value written again: nil",
            vec![
                On(0, "SET {T}w same"),
                On(0, "WATCH {T}w"),
                On(1, "SET {T}w same"),
                On(0, "MULTI"),
                On(0, "GET {T}w"),
                On(0, "EXEC"),
            ],
        ),
        (
            "WATCH, the client's own write: nil",
            vec![
                On(0, "SET {T}w 1"),
                On(0, "WATCH {T}w"),
                On(0, "INCR {T}w"),
                On(0, "MULTI"),
                On(0, "GET {T}w"),
                On(0, "EXEC"),
            ],
        ),
        (
            "WATCH, expiry changes and deletes",
            vec![
                On(0, "SET {T}w 1"),
                On(0, "WATCH {T}w"),
                On(1, "EXPIRE {T}w 100"),
                On(0, "MULTI"),
                On(0, "GET {T}w"),
                On(0, "EXEC"),
                On(0, "WATCH {T}w"),
                On(1, "PERSIST {T}w"),
                On(0, "MULTI"),
                On(0, "GET {T}w"),
                On(0, "EXEC"),
                On(0, "WATCH {T}w"),
                On(1, "PERSIST {T}w"),
                On(1, "EXPIRE {T}w 100 NX"),
                On(1, "EXPIRE {T}w 50 GT"),
                On(0, "MULTI"),
                On(0, "GET {T}w"),
                On(0, "EXEC"),
                On(0, "WATCH {T}w"),
                On(1, "DEL {T}w"),
                On(0, "MULTI"),
                On(0, "GET {T}w"),
                On(0, "EXEC"),
            ],
        ),
        (
            "WATCH a hash: field writes touch it, no-ops do not",
            vec![
                On(0, "HSET {T}h f v"),
                On(0, "WATCH {T}h"),
                On(1, "HDEL {T}h nothere"),
                On(1, "HSETNX {T}h f other"),
                On(1, "HGET {T}h f"),
                On(0, "MULTI"),
                On(0, "HSET {T}h g w"),
                On(0, "EXEC"),
                On(0, "WATCH {T}h"),
                On(1, "HSET {T}h f v2"),
                On(0, "MULTI"),
                On(0, "HGETALL {T}h"),
                On(0, "EXEC"),
                On(0, "WATCH {T}h"),
                On(1, "HINCRBY {T}h n 1"),
                On(0, "MULTI"),
                On(0, "HGETALL {T}h"),
                On(0, "EXEC"),
                On(0, "WATCH {T}h"),
                On(1, "HDEL {T}h n"),
                On(0, "MULTI"),
                On(0, "HGETALL {T}h"),
                On(0, "EXEC"),
                On(0, "WATCH {T}h"),
                On(1, "HSETNX {T}h new 1"),
                On(0, "MULTI"),
                On(0, "HLEN {T}h"),
                On(0, "EXEC"),
            ],
        ),
        (
            "no-op writes by others do not touch",
            vec![
                On(0, "SET {T}w 1"),
                On(0, "WATCH {T}w {T}gone"),
                On(1, "SET {T}w x NX"),
                On(1, "SETNX {T}w y"),
                On(1, "PERSIST {T}w"),
                On(1, "DEL {T}gone"),
                On(1, "GET {T}w"),
                On(0, "MULTI"),
                On(0, "INCR {T}w"),
                On(0, "EXEC"),
            ],
        ),
        (
            "UNWATCH forgets the watched keys",
            vec![
                On(0, "WATCH {T}w"),
                On(0, "UNWATCH"),
                On(1, "SET {T}w 2"),
                On(0, "MULTI"),
                On(0, "GET {T}w"),
                On(0, "EXEC"),
                On(0, "WATCH {T}w"),
                On(1, "SET {T}w 3"),
                On(0, "MULTI"),
                On(0, "DISCARD"),
                On(0, "MULTI"),
                On(0, "GET {T}w"),
                On(0, "EXEC"),
            ],
        ),
        (
            "a watched key that expires: nil",
            vec![
                On(0, "SET {T}e v PX 150"),
                On(0, "WATCH {T}e"),
                Sleep(300),
                On(0, "MULTI"),
                On(0, "GET {T}e"),
                On(0, "EXEC"),
                On(0, "SET {T}e v PX 150"),
                Sleep(300),
                // Expired before WATCH: nothing changes afterwards.
                On(0, "WATCH {T}e"),
                On(0, "MULTI"),
                On(0, "GET {T}e"),
                On(0, "EXEC"),
            ],
        ),
    ]
}

/// Runs a script with tag `tag` on fresh connections; the replies, in order.
fn run(c: &Cluster, tag: &str, steps: &[Step], resp3: bool) -> Vec<(String, String)> {
    let mut conns = [
        FrameConn::connect(c.proxy_port),
        FrameConn::connect(c.proxy_port),
    ];
    let mut out = Vec::new();
    for conn in &mut conns {
        if resp3 {
            conn.call(&["HELLO", "3"]);
        }
    }
    conns[0].call(&["FLUSHALL"]);
    for step in steps {
        match step {
            Sleep(ms) => std::thread::sleep(Duration::from_millis(*ms)),
            On(..) | Line(..) => {
                let (i, cmd) = match step {
                    On(i, cmd) => (i, *cmd),
                    Line(i, cmd) => (i, cmd.as_str()),
                    Sleep(_) => continue,
                };
                let line = cmd.replace("{T}", &format!("{{{tag}}}"));
                let args: Vec<&str> = line.split(' ').collect();
                let reply = conns[*i].call(&args);
                out.push((
                    format!("client {i}: {cmd}"),
                    // (Error texts may quote a key: compare them tag-free.)
                    String::from_utf8_lossy(&reply).replace(&format!("{{{tag}}}"), "{T}"),
                ));
            }
        }
    }
    out
}

#[test]
fn transactions_on_a_postgres_shard_answer_as_on_a_redis_shard() {
    let c = mixed();
    let on_redis = tag_on(&c, 0, "r");
    let on_pg = tag_on(&c, 1, "p");
    for resp3 in [false, true] {
        for (name, steps) in scripts() {
            let want = run(&c, &on_redis, &steps, resp3);
            let got = run(&c, &on_pg, &steps, resp3);
            for ((cmd, w), (_, g)) in want.iter().zip(&got) {
                assert_eq!(g, w, "{name} (resp3: {resp3}): `{cmd}`");
            }
        }
    }
    // The postgres tag's keys really are in PostgreSQL.
    let mut p = FrameConn::connect(c.proxy_port);
    let probe = format!("{{{on_pg}}}probe");
    assert_eq!(p.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(p.call(&["SET", &probe, "1"]), b"+QUEUED\r\n");
    assert_eq!(p.call(&["EXEC"]), b"*1\r\n+OK\r\n");
    let rows = c.pg[0].query(&format!(
        "SELECT count(*) FROM kv WHERE key = convert_to('{probe}', 'UTF8')"
    ));
    assert_eq!(rows, "1");
    // Keys of two shards in one transaction: refused while queueing, as
    // for two Redis shards, whichever kind each shard is.
    let a = format!("{{{on_redis}}}x");
    let b = format!("{{{on_pg}}}x");
    for (first, second) in [(&a, &b), (&b, &a)] {
        assert_eq!(p.call(&["MULTI"]), b"+OK\r\n");
        assert_eq!(p.call(&["SET", first, "1"]), b"+QUEUED\r\n");
        assert!(p.call(&["SET", second, "1"]).starts_with(b"-CROSSSLOT"));
        assert!(p.call(&["EXEC"]).starts_with(b"-EXECABORT"));
        assert_eq!(p.call(&["EXISTS", first]), b":0\r\n");
        assert!(p.call(&["WATCH", first]) == b"+OK\r\n");
        assert!(p.call(&["WATCH", second]).starts_with(b"-CROSSSLOT"));
        assert_eq!(p.call(&["UNWATCH"]), b"+OK\r\n");
    }
    // Blocking commands and scripts stay refused on a postgres shard.
    assert_eq!(p.call(&["MULTI"]), b"+OK\r\n");
    let refused = p.call(&["BLPOP", &b, "0"]);
    assert!(
        String::from_utf8_lossy(&refused).contains("postgres shards"),
        "{}",
        String::from_utf8_lossy(&refused)
    );
    assert!(p.call(&["EXEC"]).starts_with(b"-EXECABORT"));
}

/// Every write command postgres shards implement (`K`: the key), as in
/// `tests/pg_race.rs`, and two that write nothing (a field that is there,
/// one that is not): they must not fail another client's WATCH either.
fn writes() -> impl Iterator<Item = &'static str> {
    common::postgres::WRITES
        .iter()
        .copied()
        .chain(["HSETNX K f n", "HDEL K nothere"])
}

/// Every write command on every kind of key (missing, string, string with
/// a TTL, hash): inside MULTI (replies and the state after EXEC), and by
/// another client between WATCH and EXEC (whether it counts as touching the
/// key: nil or not), on a Redis shard and on a postgres shard.
#[test]
fn every_write_inside_exec_and_against_watch_answers_as_redis() {
    let c = mixed();
    let on_redis = tag_on(&c, 0, "r");
    let on_pg = tag_on(&c, 1, "p");
    let starts: [&[&str]; 4] = [
        &[],
        &["SET {T}K 5"],
        &["SET {T}K 5 EX 1000"],
        &["HSET {T}K f 1"],
    ];
    let mut compared = 0;
    for start in starts {
        for w in writes() {
            let w = w.replace('K', "{T}K");
            let mut inside: Vec<Step> = start.iter().map(|s| On(0, s)).collect();
            inside.extend([
                On(0, "MULTI"),
                Line(0, w.clone()),
                On(0, "TYPE {T}K"),
                On(0, "TTL {T}K"),
                On(0, "EXEC"),
            ]);
            let mut watched: Vec<Step> = start.iter().map(|s| On(0, s)).collect();
            watched.extend([
                On(0, "WATCH {T}K"),
                Line(1, w.clone()),
                On(0, "MULTI"),
                On(0, "TYPE {T}K"),
                On(0, "EXEC"),
            ]);
            for steps in [inside, watched] {
                let want = run(&c, &on_redis, &steps, false);
                let got = run(&c, &on_pg, &steps, false);
                for ((cmd, redis), (_, pg)) in want.iter().zip(&got) {
                    assert_eq!(pg, redis, "start {start:?}, write `{w}`: `{cmd}`");
                }
                compared += want.len();
            }
        }
    }
    eprintln!("{compared} replies compared");
}

/// WATCH, then another client's write, then EXEC: nil every time, and the
/// transaction wrote nothing; without the other write, EXEC runs.
#[test]
fn watch_then_concurrent_write_makes_exec_nil() {
    let c = mixed();
    let tag = tag_on(&c, 1, "p");
    let key = format!("{{{tag}}}w");
    let mut a = FrameConn::connect(c.proxy_port);
    let mut b = FrameConn::connect(c.proxy_port);
    a.call(&["SET", &key, "0"]);
    for i in 0..200 {
        assert_eq!(a.call(&["WATCH", &key]), b"+OK\r\n");
        let changed = i % 2 == 0;
        if changed {
            assert_eq!(
                b.call(&["INCR", &key]),
                format!(":{}\r\n", i / 2 + 1).as_bytes()
            );
        }
        assert_eq!(a.call(&["MULTI"]), b"+OK\r\n");
        assert_eq!(a.call(&["SET", &key, "mine"]), b"+QUEUED\r\n");
        let exec = a.call(&["EXEC"]);
        if changed {
            assert_eq!(exec, b"*-1\r\n", "round {i}");
        } else {
            assert_eq!(exec, b"*1\r\n+OK\r\n", "round {i}");
            a.call(&["SET", &key, &(i / 2 + 1).to_string()]);
        }
    }
}

/// Many clients: optimistic increments (WATCH, GET, MULTI, SET v+1, EXEC,
/// retried on nil) and transactional INCRs of two keys, while readers
/// check with MGET that both keys always move together. Nothing is lost.
#[test]
fn concurrent_transactions_lose_nothing() {
    let c = mixed();
    let tag = tag_on(&c, 1, "p");
    let (opt, x, y) = (
        format!("{{{tag}}}opt"),
        format!("{{{tag}}}x"),
        format!("{{{tag}}}y"),
    );
    let clients = 16;
    let rounds = 40;
    let nils = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (x, y, stop) = (x.clone(), y.clone(), stop.clone());
        let port = c.proxy_port;
        std::thread::spawn(move || {
            let mut r = FrameConn::connect(port);
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let got = r.call(&["MGET", &x, &y]);
                let values = bulks(&got);
                assert_eq!(values.len(), 2);
                assert_eq!(values[0], values[1], "half a transaction: {values:?}");
                reads += 1;
            }
            reads
        })
    };
    let workers: Vec<_> = (0..clients)
        .map(|i| {
            let (opt, x, y, nils) = (opt.clone(), x.clone(), y.clone(), nils.clone());
            let port = c.proxy_port;
            std::thread::spawn(move || {
                let mut con = FrameConn::connect(port);
                for _ in 0..rounds {
                    if i % 2 == 0 {
                        loop {
                            con.call(&["WATCH", &opt]);
                            let got = con.call(&["GET", &opt]);
                            let n: i64 = bulks(&got)[0]
                                .as_deref()
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0);
                            con.call(&["MULTI"]);
                            con.call(&["SET", &opt, &(n + 1).to_string()]);
                            if con.call(&["EXEC"]) == b"*1\r\n+OK\r\n" {
                                break;
                            }
                            nils.fetch_add(1, Ordering::Relaxed);
                        }
                    } else {
                        con.call(&["MULTI"]);
                        con.call(&["INCR", &x]);
                        con.call(&["INCR", &y]);
                        let exec = con.call(&["EXEC"]);
                        assert!(
                            exec.starts_with(b"*2\r\n:"),
                            "{}",
                            String::from_utf8_lossy(&exec)
                        );
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("reader");
    let mut con = FrameConn::connect(c.proxy_port);
    let each = (clients / 2 * rounds).to_string();
    let want = format!(
        "*3\r\n${}\r\n{each}\r\n${}\r\n{each}\r\n${}\r\n{each}\r\n",
        each.len(),
        each.len(),
        each.len()
    );
    assert_eq!(
        String::from_utf8_lossy(&con.call(&["MGET", &opt, &x, &y])),
        want
    );
    eprintln!(
        "{} optimistic increments needed {} retries (EXEC nil); {reads} MGETs saw no half transaction",
        clients / 2 * rounds,
        nils.load(Ordering::Relaxed)
    );
    assert!(
        nils.load(Ordering::Relaxed) > 0,
        "no WATCH ever failed: no contention tested"
    );
}

/// The bulk strings of a RESP2 reply (a bulk or an array of bulks).
fn bulks(frame: &[u8]) -> Vec<Option<String>> {
    let text = String::from_utf8_lossy(frame).into_owned();
    let mut lines = text.split("\r\n");
    let mut out = Vec::new();
    while let Some(line) = lines.next() {
        if line == "$-1" {
            out.push(None);
        } else if line.starts_with('$') {
            out.push(lines.next().map(str::to_owned));
        }
    }
    out
}

/// `shardgate_pg_transactions_total` counts each EXEC on a postgres shard
/// by outcome (the binary, with its metrics listener).
#[test]
fn pg_transactions_are_counted_by_outcome() {
    use std::io::{Read, Write};
    let pg = common::postgres::PgServer::start();
    let dir = common::TempDir::new("pg-tx-metrics");
    let map = dir.path().join("map.yaml");
    std::fs::write(
        &map,
        format!(
            "regions:\n  - name: us\nshards:\n  - name: pgs\n    kind: postgres\n    region: us\n    primary: {}\n",
            pg.dsn()
        ),
    )
    .unwrap();
    let mport = common::free_port();
    let maddr = format!("127.0.0.1:{mport}");
    let (_proxy, port) = common::spawn_proxy(
        env!("CARGO_BIN_EXE_shardgate"),
        &map,
        &["--metrics-listen", &maddr],
    );
    let mut a = FrameConn::connect(port);
    let mut b = FrameConn::connect(port);
    // Committed.
    assert_eq!(a.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(a.call(&["SET", "m", "1"]), b"+QUEUED\r\n");
    assert_eq!(a.call(&["EXEC"]), b"*1\r\n+OK\r\n");
    // The WATCHed key changed: nil, counted as watch_failed.
    assert_eq!(a.call(&["WATCH", "m"]), b"+OK\r\n");
    assert_eq!(b.call(&["SET", "m", "2"]), b"+OK\r\n");
    assert_eq!(a.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(a.call(&["INCR", "m"]), b"+QUEUED\r\n");
    assert_eq!(a.call(&["EXEC"]), b"*-1\r\n");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let count = |outcome: &str| -> Option<u64> {
        body.lines()
            .filter(|l| l.starts_with("shardgate_pg_transactions_total{"))
            .find(|l| l.contains(&format!("outcome=\"{outcome}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    assert_eq!(count("committed"), Some(1), "{body}");
    assert_eq!(count("watch_failed"), Some(1), "{body}");
}

//! Coalesced reads (`options.coalesce_reads`) against real redis-server
//! shards: identical reads that arrive while one is in flight share its
//! backend request, and never when a client's own write could be missed,
//! across protocols, or for commands whose reply is not a function of the
//! data.
//!
//! A read is held in flight by pausing its shard (`CLIENT PAUSE ... ALL`):
//! the proxy's request waits in the shard's input. The tests wait until
//! the proxy has counted every client's read (its own metrics), then
//! unpause and count what the shard ran (`INFO commandstats`). No timing
//! is asserted; the pause only has to outlast the clients' sends.
//!
//! The counters are this process's, shared by every proxy it runs: the
//! tests take turns ([`Serial`]) so that one test's reads are not counted
//! in another's (`cargo test` runs them on parallel threads of one process).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Spec, calls};
use common::resp::FrameConn;

/// A cluster, and this test's turn (see the module doc): the cluster
/// stops before the next test starts.
struct Serial {
    cluster: Cluster,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Serial {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

fn cluster(coalesce: bool) -> Serial {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed holding the turn poisons it; the others go on.
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    Serial {
        cluster: Cluster::start(Spec {
            shards: 2,
            extra_options: if coalesce {
                "  coalesce_reads: true\n  connect_timeout_ms: 5000\n"
            } else {
                "  connect_timeout_ms: 5000\n"
            },
            ..Spec::default()
        }),
        _turn: turn,
    }
}

/// The proxy's reads by outcome (led, joined, bypassed), over every shard
/// (the proxy runs in this process: its metrics are this process's).
fn coalesced() -> (u64, u64, u64) {
    let mut text = String::new();
    shardgate::metrics::hot::render(&mut text, shardgate::metrics::help);
    let mut n = (0, 0, 0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("shardgate_coalesced_reads_total{") else {
            continue;
        };
        let v: u64 = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if rest.contains("outcome=\"led\"") {
            n.0 += v;
        } else if rest.contains("outcome=\"joined\"") {
            n.1 += v;
        } else if rest.contains("outcome=\"bypassed\"") {
            n.2 += v;
        }
    }
    n
}

/// Commands the proxy has counted (`INFO commandstats` of the proxy).
fn proxy_calls(c: &Cluster, cmd: &str) -> u64 {
    common::cluster::calls_on(&mut c.conn(), cmd)
}

/// How long [`while_paused`] pauses the shards. Redis cannot be unpaused
/// early (`CLIENT UNPAUSE` waits like any command under `PAUSE ALL`), so
/// this only has to outlast the clients' sends; the map's health checks
/// (5 s connect timeout) and command timeout (2 s) outlast it.
const PAUSE_MS: u64 = 1500;

/// Pauses every shard for [`PAUSE_MS`], runs `send` (which starts the
/// clients' requests) and waits until `sent()` says they all reached the
/// proxy (or the pause is nearly over), then returns what `send`
/// returned; the requests run when the pause ends.
fn while_paused<T>(c: &Cluster, send: impl FnOnce() -> T, sent: impl Fn() -> bool) -> T {
    let started = Instant::now();
    for p in &c.primaries {
        let mut con = p.client().get_connection().expect("direct");
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(PAUSE_MS)
            .arg("ALL")
            .query(&mut con)
            .expect("pause");
    }
    let out = send();
    let deadline = started + Duration::from_millis(PAUSE_MS - 200);
    while !sent() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    out
}

/// Resets every shard's `INFO commandstats`.
fn reset_stats(c: &Cluster) {
    for p in &c.primaries {
        let mut con = p.client().get_connection().expect("direct");
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut con)
            .expect("resetstat");
    }
}

/// Connected clients (RESP3 after `HELLO 3` when `resp3`), each ready to
/// send one command from its own thread.
fn clients(c: &Cluster, n: usize, resp3: bool) -> Vec<FrameConn> {
    (0..n)
        .map(|_| {
            let mut f = FrameConn::connect(c.proxy_port);
            if resp3 {
                let hello = f.call(&["HELLO", "3"]);
                assert!(
                    hello.starts_with(b"%"),
                    "{}",
                    String::from_utf8_lossy(&hello)
                );
            }
            // One round trip first: the connection is up and counted.
            assert_eq!(f.call(&["PING"]), b"+PONG\r\n");
            f
        })
        .collect()
}

/// Each client sends `cmd` from its own thread; the replies, in client order.
fn send_all(
    conns: Vec<FrameConn>,
    cmd: &'static [&'static str],
) -> Vec<thread::JoinHandle<Vec<u8>>> {
    conns
        .into_iter()
        .map(|mut f| thread::spawn(move || f.call(cmd)))
        .collect()
}

fn replies(handles: Vec<thread::JoinHandle<Vec<u8>>>) -> Vec<Vec<u8>> {
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn many_clients_reading_one_key_in_flight_cost_the_shard_one_get() {
    let c = cluster(true);
    let mut con = c.conn();
    let _: () = redis::cmd("SET")
        .arg("celebrity")
        .arg("profile")
        .query(&mut con)
        .unwrap();
    reset_stats(&c);
    let owner = c.shard_of("celebrity");
    let n = 20;
    let conns = clients(&c, n, false);
    let before = coalesced();
    let handles = while_paused(
        &c,
        || send_all(conns, &["GET", "celebrity"]),
        || coalesced().1 - before.1 >= n as u64 - 1,
    );
    let got = replies(handles);
    for r in &got {
        assert_eq!(text(r), "$7\r\nprofile\r\n");
    }
    assert_eq!(
        calls(&c.primaries[owner], "get"),
        1,
        "one GET for {n} clients"
    );
    let after = coalesced();
    assert_eq!(after.0 - before.0, 1, "one leader");
    assert_eq!(
        after.1 - before.1,
        n as u64 - 1,
        "every other client joined"
    );
    // The proxy counts every client's command, joined or not.
    assert!(proxy_calls(&c, "get") >= n as u64);
}

#[test]
fn mget_parts_coalesce_per_shard() {
    let c = cluster(true);
    let (a, b) = {
        let a = "k:0".to_owned();
        let b = (1..1000)
            .map(|i| format!("k:{i}"))
            .find(|k| c.shard_of(k) != c.shard_of(&a))
            .expect("a key on the other shard");
        (a, b)
    };
    let mut con = c.conn();
    let _: () = redis::cmd("MSET")
        .arg(&a)
        .arg("va")
        .arg(&b)
        .arg("vb")
        .query(&mut con)
        .unwrap();
    reset_stats(&c);
    let n = 8;
    let conns = clients(&c, n, false);
    let before = coalesced();
    let cmd: &'static [&'static str] = Box::leak(Box::new([
        "MGET",
        Box::leak(a.clone().into_boxed_str()) as &str,
        Box::leak(b.clone().into_boxed_str()) as &str,
    ]));
    let handles = while_paused(
        &c,
        || send_all(conns, cmd),
        || coalesced().1 - before.1 >= 2 * (n as u64 - 1),
    );
    for r in replies(handles) {
        assert_eq!(text(&r), "*2\r\n$2\r\nva\r\n$2\r\nvb\r\n");
    }
    for p in &c.primaries {
        assert_eq!(calls(p, "mget"), 1, "one part per shard for {n} clients");
    }
}

#[test]
fn resp2_and_resp3_clients_do_not_share_replies() {
    let c = cluster(true);
    let mut con = c.conn();
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .query(&mut con)
        .unwrap();
    reset_stats(&c);
    let owner = c.shard_of("h");
    let two = clients(&c, 4, false);
    let three = clients(&c, 4, true);
    let before = coalesced();
    let (h2, h3) = while_paused(
        &c,
        || {
            (
                send_all(two, &["HGETALL", "h"]),
                send_all(three, &["HGETALL", "h"]),
            )
        },
        || coalesced().1 - before.1 >= 6,
    );
    for r in replies(h2) {
        assert_eq!(text(&r), "*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
    }
    for r in replies(h3) {
        assert_eq!(text(&r), "%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
    }
    assert_eq!(
        calls(&c.primaries[owner], "hgetall"),
        2,
        "one request per protocol"
    );
}

#[test]
fn nondeterministic_reads_are_never_coalesced() {
    let c = cluster(true);
    let mut con = c.conn();
    let _: () = redis::cmd("SADD")
        .arg("s")
        .arg(&["a", "b", "c", "d"])
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("t")
        .arg("v")
        .arg("EX")
        .arg(100)
        .query(&mut con)
        .unwrap();
    reset_stats(&c);
    let n = 5;
    let rand = clients(&c, n, false);
    let ttl = clients(&c, n, false);
    let before = proxy_calls(&c, "srandmember") + proxy_calls(&c, "ttl");
    let coalesced_before = coalesced();
    let (hr, ht) = while_paused(
        &c,
        || {
            (
                send_all(rand, &["SRANDMEMBER", "s"]),
                send_all(ttl, &["TTL", "t"]),
            )
        },
        // Counted once answered: wait for nothing but the sends (the
        // shard is paused), then let them through.
        || {
            thread::sleep(Duration::from_millis(200));
            true
        },
    );
    for r in replies(hr) {
        assert!(r.starts_with(b"$1\r\n"), "{}", text(&r));
    }
    for r in replies(ht) {
        assert!(r.starts_with(b":"), "{}", text(&r));
    }
    assert_eq!(
        calls(&c.primaries[c.shard_of("s")], "srandmember"),
        n as u64
    );
    assert_eq!(calls(&c.primaries[c.shard_of("t")], "ttl"), n as u64);
    assert_eq!(
        proxy_calls(&c, "srandmember") + proxy_calls(&c, "ttl") - before,
        2 * n as u64
    );
    assert_eq!(
        coalesced(),
        coalesced_before,
        "not even counted as coalescable"
    );
}

#[test]
fn without_the_option_every_read_goes_to_the_shard() {
    let c = cluster(false);
    let mut con = c.conn();
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
    reset_stats(&c);
    let n = 6;
    let conns = clients(&c, n, false);
    let before = coalesced();
    let handles = while_paused(
        &c,
        || send_all(conns, &["GET", "k"]),
        || {
            thread::sleep(Duration::from_millis(200));
            true
        },
    );
    for r in replies(handles) {
        assert_eq!(text(&r), "$1\r\nv\r\n");
    }
    assert_eq!(calls(&c.primaries[c.shard_of("k")], "get"), n as u64);
    assert_eq!(coalesced(), before);
}

#[test]
fn a_clients_own_write_in_flight_keeps_its_read_out_of_older_requests() {
    let c = cluster(true);
    let mut con = c.conn();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("old")
        .query(&mut con)
        .unwrap();
    reset_stats(&c);
    let mut reader = clients(&c, 1, false).pop().unwrap();
    let mut writer = clients(&c, 1, false).pop().unwrap();
    let before = coalesced();
    let (r, w) = while_paused(
        &c,
        || {
            // The reader's GET leads a flight (held by the pause)...
            let r = thread::spawn(move || reader.call(&["GET", "k"]));
            let deadline = Instant::now() + Duration::from_secs(1);
            while coalesced().0 == before.0 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
            }
            // ...then the writer's SET and GET, pipelined: its GET must not
            // take the older flight's reply.
            let w = thread::spawn(move || {
                writer.pipeline(&[&["SET", "k", "new"][..], &["GET", "k"][..]])
            });
            (r, w)
        },
        || coalesced().2 - before.2 >= 1,
    );
    let r = r.join().unwrap();
    let w = w.join().unwrap();
    assert_eq!(
        text(&r),
        "$3\r\nold\r\n",
        "the reader's GET ran before the SET"
    );
    assert_eq!(text(&w[0]), "+OK\r\n");
    assert_eq!(
        text(&w[1]),
        "$3\r\nnew\r\n",
        "the writer reads its own write"
    );
    assert_eq!(calls(&c.primaries[c.shard_of("k")], "get"), 2);
    let after = coalesced();
    assert_eq!(
        (after.1 - before.1, after.2 - before.2),
        (0, 1),
        "bypassed, not joined"
    );
}

/// [`shardgate::command::NOT_SHAREABLE`] against the server's own tips:
/// every read-only command Redis tips `nondeterministic_output` is in it.
#[test]
fn not_shareable_covers_every_nondeterministic_read_of_the_server() {
    use redis::Value;
    let server = common::RedisServer::start();
    let mut con = server.connection();
    let Value::Array(all) = redis::cmd("COMMAND").query::<Value>(&mut con).unwrap() else {
        panic!("COMMAND is an array");
    };
    let strings = |v: &Value| -> Vec<String> {
        match v {
            Value::Array(items) | Value::Set(items) => items
                .iter()
                .map(|i| match i {
                    Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    Value::SimpleString(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let mut checked = 0;
    for cmd in &all {
        let Value::Array(fields) = cmd else { continue };
        let name = strings(&Value::Array(vec![fields[0].clone()])).remove(0);
        let flags = strings(&fields[2]);
        let tips = strings(&fields[7]);
        if !flags.iter().any(|f| f == "readonly") || flags.iter().any(|f| f == "write") {
            continue;
        }
        let spec = shardgate::command::lookup(name.as_bytes()).expect("in the table");
        if tips.iter().any(|t| t == "nondeterministic_output") {
            assert!(!spec.reply_is_shareable(), "{name} must not be coalesced");
            checked += 1;
        }
    }
    assert!(checked >= 10, "the server reported its tips ({checked})");
    for name in ["get", "hget", "hgetall", "mget", "zrange", "exists"] {
        let spec = shardgate::command::lookup(name.as_bytes()).unwrap();
        assert!(spec.reply_is_shareable(), "{name} may be coalesced");
    }
    for name in ["touch", "xread", "randomkey", "set", "scan"] {
        let spec = shardgate::command::lookup(name.as_bytes()).unwrap();
        assert!(!spec.reply_is_shareable(), "{name} must not be coalesced");
    }
}

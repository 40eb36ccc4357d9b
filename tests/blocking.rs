//! Blocking commands and dedicated connections: what happens to a blocked
//! command whose client leaves, to pooled connections after a shard
//! restart, and to the order in which blocked clients are served.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::RedisServer;
use common::cluster::{Cluster, Spec};
use redis::Commands;

fn one_shard() -> Cluster {
    Cluster::start(Spec {
        shards: 1,
        ..Spec::default()
    })
}

/// A RESP request of `args`.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// `blocked_clients` of the shard's `INFO clients`.
fn blocked_on(server: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(&mut server.connection())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no blocked_clients in {info}"))
}

/// Waits until the shard has exactly `n` blocked clients.
fn wait_blocked(server: &RedisServer, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = blocked_on(server);
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the shard still has {now} blocked clients, expected {n}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every blocking command that takes an element (or a stream entry into a
/// consumer group) on wake-up, with what the test pushes to wake it and how
/// it then checks that the pushed data is still there.
struct Case {
    name: &'static str,
    setup: &'static [&'static [&'static str]],
    block: &'static [&'static str],
    push: &'static [&'static str],
    /// A command whose integer reply is 1 when the pushed data was not
    /// taken by a ghost.
    check: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "BLPOP",
        setup: &[],
        block: &["BLPOP", "{g}l", "0"],
        push: &["RPUSH", "{g}l", "x"],
        check: &["LLEN", "{g}l"],
    },
    Case {
        name: "BRPOP",
        setup: &[],
        block: &["BRPOP", "{g}l", "0"],
        push: &["RPUSH", "{g}l", "x"],
        check: &["LLEN", "{g}l"],
    },
    Case {
        name: "BLMOVE",
        setup: &[],
        block: &["BLMOVE", "{g}l", "{g}dst", "LEFT", "RIGHT", "0"],
        push: &["RPUSH", "{g}l", "x"],
        check: &["LLEN", "{g}l"],
    },
    Case {
        name: "BRPOPLPUSH",
        setup: &[],
        block: &["BRPOPLPUSH", "{g}l", "{g}dst", "0"],
        push: &["RPUSH", "{g}l", "x"],
        check: &["LLEN", "{g}l"],
    },
    Case {
        name: "BLMPOP",
        setup: &[],
        block: &["BLMPOP", "0", "1", "{g}l", "LEFT"],
        push: &["RPUSH", "{g}l", "x"],
        check: &["LLEN", "{g}l"],
    },
    Case {
        name: "BZPOPMIN",
        setup: &[],
        block: &["BZPOPMIN", "{g}z", "0"],
        push: &["ZADD", "{g}z", "1", "m"],
        check: &["ZCARD", "{g}z"],
    },
    Case {
        name: "BZPOPMAX",
        setup: &[],
        block: &["BZPOPMAX", "{g}z", "0"],
        push: &["ZADD", "{g}z", "1", "m"],
        check: &["ZCARD", "{g}z"],
    },
    Case {
        name: "BZMPOP",
        setup: &[],
        block: &["BZMPOP", "0", "1", "{g}z", "MIN"],
        push: &["ZADD", "{g}z", "1", "m"],
        check: &["ZCARD", "{g}z"],
    },
    Case {
        name: "XREADGROUP",
        setup: &[&["XGROUP", "CREATE", "{g}s", "grp", "$", "MKSTREAM"]],
        block: &[
            "XREADGROUP",
            "GROUP",
            "grp",
            "ghost",
            "BLOCK",
            "0",
            "STREAMS",
            "{g}s",
            ">",
        ],
        push: &["XADD", "{g}s", "*", "f", "v"],
        // The entry was not delivered to the ghost consumer: nothing pending.
        check: &[
            "EVAL",
            "return 1 - redis.call('XPENDING', KEYS[1], 'grp')[1]",
            "1",
            "{g}s",
        ],
    },
];

/// A client that leaves while blocked must take its blocked command with
/// it: the next push must not be handed to a reader that is gone. (Before
/// the fix, the backend connection went back to the pool still blocked, and
/// `RPUSH` answered 1 while the element vanished.)
#[test]
fn a_blocked_client_that_leaves_takes_its_blocked_command_with_it() {
    let c = one_shard();
    let shard = &c.primaries[0];
    let mut con = c.conn();
    for case in CASES {
        let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
        for step in case.setup {
            let _: redis::Value = redis::cmd(step[0]).arg(&step[1..]).query(&mut con).unwrap();
        }
        let mut ghost = TcpStream::connect(("127.0.0.1", c.proxy_port)).unwrap();
        ghost.write_all(&resp(case.block)).unwrap();
        wait_blocked(shard, 1);
        drop(ghost);
        // The proxy must close the blocked backend connection at once.
        wait_blocked(shard, 0);
        let _: redis::Value = redis::cmd(case.push[0])
            .arg(&case.push[1..])
            .query(&mut con)
            .unwrap();
        let left: i64 = redis::cmd(case.check[0])
            .arg(&case.check[1..])
            .query(&mut con)
            .unwrap();
        assert_eq!(
            left, 1,
            "{}: the pushed data went to a client that left",
            case.name
        );
    }
}

/// A blocked client that leaves while another client waits on the same key:
/// the one still connected gets the element.
#[test]
fn a_push_after_a_ghost_left_wakes_the_client_still_waiting() {
    let c = one_shard();
    let shard = &c.primaries[0];
    let mut ghost = TcpStream::connect(("127.0.0.1", c.proxy_port)).unwrap();
    ghost.write_all(&resp(&["BLPOP", "q", "0"])).unwrap();
    wait_blocked(shard, 1);
    let client = c.client();
    let waiter = std::thread::spawn(move || {
        let mut con = client.get_connection().unwrap();
        let got: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("q")
            .arg(10)
            .query(&mut con)
            .unwrap();
        got
    });
    wait_blocked(shard, 2);
    drop(ghost);
    wait_blocked(shard, 1);
    let mut con = c.conn();
    let _: () = con.rpush("q", "job").unwrap();
    assert_eq!(waiter.join().unwrap(), Some(("q".into(), "job".into())));
}

/// Pooled dedicated connections survive a shard restart: the first
/// transactions after it succeed (the pool must not hand out connections the
/// old server closed).
#[test]
fn transactions_after_a_shard_restart_use_fresh_connections() {
    let mut c = one_shard();
    let mut con = c.conn();
    // Fill the pool with a few idle dedicated connections.
    let clients: Vec<redis::Connection> = (0..3).map(|_| c.conn()).collect();
    for mut other in clients {
        let (v,): (i64,) = redis::pipe()
            .atomic()
            .incr("{t}n", 1)
            .query(&mut other)
            .unwrap();
        assert!(v >= 1);
    }
    c.primaries[0].restart();
    // Wait until the proxy's multiplexed path works again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while con.set::<_, _, ()>("{t}probe", 1).is_err() {
        assert!(Instant::now() < deadline, "the shard did not come back");
        std::thread::sleep(Duration::from_millis(50));
        con = c.conn();
    }
    for i in 0..4 {
        let r: redis::RedisResult<(i64,)> = redis::pipe().atomic().incr("{t}m", 1).query(&mut con);
        assert_eq!(
            r.map(|(v,)| v).ok(),
            Some(i + 1),
            "transaction {i} after the restart"
        );
        let r: redis::RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
            .arg("{t}none")
            .arg("0.01")
            .query(&mut con);
        assert_eq!(r.ok(), Some(None), "blocking command {i} after the restart");
    }
}

/// Clients blocked on one key are served in the order their commands
/// arrived, as on one Redis server. (A guard: the reordering it protects
/// against needs a slow connection checkout for the first client and a
/// pooled one for the second, which this test does not force.)
#[test]
fn blocked_clients_are_served_in_arrival_order() {
    let c = one_shard();
    let shard = &c.primaries[0];
    let mut con = c.conn();
    for round in 0..10 {
        let key = format!("order{round}");
        // After the first round, the pool holds idle connections: one
        // client gets one at once while the other may have to connect.
        let mut first = TcpStream::connect(("127.0.0.1", c.proxy_port)).unwrap();
        let mut second = TcpStream::connect(("127.0.0.1", c.proxy_port)).unwrap();
        first.write_all(&resp(&["BLPOP", &key, "5"])).unwrap();
        // The proxy can only keep the order of what it has read: give it
        // time to read the first request (generous, for a loaded machine).
        std::thread::sleep(Duration::from_millis(100));
        second.write_all(&resp(&["BLPOP", &key, "5"])).unwrap();
        wait_blocked(shard, 2);
        let _: () = con.rpush(&key, "a").unwrap();
        let got = read_reply(&mut first);
        assert!(
            got.ends_with(b"$1\r\na\r\n"),
            "round {round}: the first blocked client got {:?}",
            String::from_utf8_lossy(&got)
        );
        let _: () = con.rpush(&key, "b").unwrap();
        let got = read_reply(&mut second);
        assert!(
            got.ends_with(b"$1\r\nb\r\n"),
            "round {round}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

/// Reads one two-element array reply of BLPOP.
fn read_reply(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    // `*2\r\n$K\r\nkey\r\n$1\r\nv\r\n`: four CRLFs after the header.
    while out.iter().filter(|&&b| b == b'\n').count() < 5 {
        let n = s.read(&mut buf).expect("reply");
        assert!(n > 0, "connection closed");
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// A client blocked in BLPOP on a key whose slot a rebalance moves to a
/// new shard is woken by a push after the move (the push lands on the new
/// owner): the proxy ends the command on the old shard and sends it to
/// the new one. No element is lost or served twice.
#[test]
fn a_blocked_client_follows_its_key_to_the_new_owner_during_a_rebalance() {
    use common::rebalance::{Proxy, map_yaml, owner_name, table_of, wait_done, write};
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let dir = common::TempDir::new("blocking-rebalance");
    let all: Vec<(&str, &RedisServer)> = ["s0", "s1", "s2"].into_iter().zip(&servers).collect();
    let m1 = write(dir.path(), "m1.yaml", &map_yaml(&all[..2]));
    let m2 = write(dir.path(), "m2.yaml", &map_yaml(&all));
    let t2 = table_of(&m2);
    let key = (0..)
        .map(|i| format!("bq{i}"))
        .find(|k| owner_name(&t2, k) == "s2")
        .unwrap();
    let proxy = Proxy::start(dir.path(), &m1);
    let mut c = proxy.client().get_connection().unwrap();
    // Keys for the mover, so the move takes a while.
    for i in 0..2000 {
        let _: () = c.set(format!("fill{i}"), i).unwrap();
    }
    let port = proxy.port;
    let waiter = std::thread::spawn({
        let key = key.clone();
        move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            s.write_all(&resp(&["BLPOP", &key, "0"])).unwrap();
            read_reply(&mut s)
        }
    });
    let source = &servers[if owner_name(&table_of(&m1), &key) == "s0" {
        0
    } else {
        1
    }];
    wait_blocked(source, 1);
    let mut admin = proxy.admin();
    let started = admin.text(&[b"REBALANCE", b"FILE", m2.to_str().unwrap().as_bytes()]);
    assert!(started.starts_with("OK"), "{started}");
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    // The command now waits on the new owner.
    wait_blocked(&servers[2], 1);
    assert_eq!(blocked_on(source), 0);
    let n: i64 = c.rpush(&key, "after-move").unwrap();
    assert_eq!(n, 1);
    let got = waiter.join().unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("after-move"), "{text}");
    let left: i64 = c.llen(&key).unwrap();
    assert_eq!(left, 0, "served once, not left behind");
}

/// A blocked command moved to its keys' new shard keeps what was left of
/// its timeout: it times out when it would have without the move.
#[test]
fn a_moved_blocked_command_keeps_the_time_left_of_its_timeout() {
    use common::rebalance::{Proxy, map_yaml, owner_name, table_of, wait_done, write};
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let dir = common::TempDir::new("blocking-rebalance-timeout");
    let all: Vec<(&str, &RedisServer)> = ["s0", "s1", "s2"].into_iter().zip(&servers).collect();
    let m1 = write(dir.path(), "m1.yaml", &map_yaml(&all[..2]));
    let m2 = write(dir.path(), "m2.yaml", &map_yaml(&all));
    let key = (0..)
        .map(|i| format!("bt{i}"))
        .find(|k| owner_name(&table_of(&m2), k) == "s2")
        .unwrap();
    let proxy = Proxy::start(dir.path(), &m1);
    let port = proxy.port;
    let t0 = Instant::now();
    let waiter = std::thread::spawn({
        let key = key.clone();
        move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(&resp(&["BLPOP", &key, "6"])).unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 64];
            while !out.ends_with(b"\r\n") {
                let n = s.read(&mut buf).expect("reply");
                assert!(n > 0, "connection closed");
                out.extend_from_slice(&buf[..n]);
            }
            out
        }
    });
    let source = &servers[if owner_name(&table_of(&m1), &key) == "s0" {
        0
    } else {
        1
    }];
    wait_blocked(source, 1);
    // The move comes 2.5 s into the 6 s: a timeout started again on the
    // target would end at 8.5 s or later, the time left at 6 s.
    std::thread::sleep(Duration::from_millis(2500));
    let mut admin = proxy.admin();
    let started = admin.text(&[b"REBALANCE", b"FILE", m2.to_str().unwrap().as_bytes()]);
    assert!(started.starts_with("OK"), "{started}");
    wait_done(&proxy);
    wait_blocked(&servers[2], 1);
    let moved_at = t0.elapsed();
    let got = waiter.join().unwrap();
    let took = t0.elapsed();
    assert_eq!(got, b"*-1\r\n");
    assert!(
        moved_at < Duration::from_millis(5800),
        "the move took until {moved_at:?}: too late to tell the two apart"
    );
    assert!(
        took >= Duration::from_millis(5800) && took < Duration::from_millis(8000),
        "timed out after {took:?}, not about 6 s (moved at {moved_at:?})"
    );
}

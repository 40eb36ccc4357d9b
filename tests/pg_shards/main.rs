//! PostgreSQL shards against real servers: the same command sequences sent
//! to a real redis-server and through the proxy to a postgres shard must get
//! byte-identical replies (RESP2 and RESP3); plus expiry, concurrency,
//! replica reads, migrations, failures and mixed maps.

#[path = "../common/mod.rs"]
mod common;
mod operations;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::RedisServer;
use common::cluster::{Cluster, Spec};
use common::postgres::PgServer;
use common::resp::FrameConn as Raw;
use redis::Commands;

/// Splits a command line at spaces; `"..."` quotes an argument.
fn split(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut started = false;
    for ch in cmd.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            ' ' if !quoted => {
                if started {
                    out.push(std::mem::take(&mut cur));
                }
                started = false;
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(cur);
    }
    out
}

/// Sends every command to Redis and to the proxy; replies must be equal.
fn same_replies(proxy_port: u16, redis: &RedisServer, resp3: bool, cmds: &[&str]) {
    let mut p = Raw::connect(proxy_port);
    let mut r = Raw::connect(redis.port);
    if resp3 {
        p.call(&["HELLO", "3"]);
        r.call(&["HELLO", "3"]);
    }
    for cmd in cmds {
        let owned = split(cmd);
        let args: Vec<&str> = owned.iter().map(String::as_str).collect();
        let want = r.call(&args);
        let got = p.call(&args);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "`{cmd}` (resp3: {resp3})"
        );
    }
}

/// One postgres shard, nothing else: every key lands on it.
fn pg_only() -> Cluster {
    Cluster::start(Spec {
        shards: 0,
        pg_shards: 1,
        ..Spec::default()
    })
}

const STRINGS: &[&str] = &[
    "FLUSHALL",
    "GET s",
    "SET s hello",
    "GET s",
    "SET s world XX",
    "SET s again NX",
    "SET s2 v NX",
    "SET s3 v XX",
    "GET s3",
    "SET s v GET",
    "SET nothere v GET",
    "SET s v EX 100",
    "TTL s",
    "SET s v KEEPTTL",
    "TTL s",
    "SET s v",
    "TTL s",
    "SET s v PX 100000",
    "TTL s",
    "SET s v EXAT 99999999999",
    "EXPIRETIME s",
    "SET s v PXAT 99999999999000",
    "PEXPIRETIME s",
    "SET s v EX 0",
    "SET s v EX -5",
    "SET s v EX abc",
    "SET s v EX 10 PX 100",
    "SET s v NX XX",
    "SET s v KEEPTTL EX 10",
    "SET s v EX",
    "SET s v BOGUS",
    "SET s v EX 9223372036854775807",
    "SET past v EXAT 1",
    "GET past",
    "EXISTS past",
    "SETNX n1 a",
    "SETNX n1 b",
    "GET n1",
    "SETEX e 100 v",
    "TTL e",
    "SETEX e 0 v",
    "SETEX e x v",
    "PSETEX e 100000 v",
    "TTL e",
    "PSETEX e -1 v",
    "GETSET e new",
    "TTL e",
    "GETSET missing x",
    "GETDEL e",
    "GETDEL e",
    "SET g v",
    "GETEX g EX 100",
    "TTL g",
    "GETEX g PERSIST",
    "TTL g",
    "GETEX g",
    "GETEX g PX 0",
    "GETEX g EX 1 PERSIST",
    "GETEX g NX",
    "GETEX nope EX 10",
    "GETEX g EXAT 1",
    "EXISTS g",
    "MSET a 1 b 2 c 3",
    "MGET a b c d",
    "MSET a 1 b",
    "MSETNX a 9 z 9",
    "MSETNX y 1 z 2",
    "MSETNX y",
    "MGET y z",
    "DEL a b nope",
    "UNLINK c",
    "EXISTS a y y z nope",
    "TOUCH y z nope",
    "TYPE y",
    "TYPE nope",
    "SET i 10",
    "INCR i",
    "INCRBY i 5",
    "DECR i",
    "DECRBY i 20",
    "INCRBY i abc",
    "DECRBY i -9223372036854775808",
    "INCR newi",
    "SET big 9223372036854775807",
    "INCR big",
    "SET nan hello",
    "INCR nan",
    "SET sp \" 1\"",
    "INCR sp",
    "SET f 10.50",
    "INCRBYFLOAT f 0.1",
    "INCRBYFLOAT f -5",
    "INCRBYFLOAT f 2.0e2",
    "INCRBYFLOAT f 1e400",
    "INCRBYFLOAT f -1e400",
    "SET f3 5.6",
    "INCRBYFLOAT f3 200",
    "INCRBYFLOAT f3 1.0000000000000001",
    "INCRBYFLOAT f abc",
    "INCRBYFLOAT nan 1",
    "INCRBYFLOAT newf 3",
    "INCRBYFLOAT f inf",
    "SET f2 0.1",
    "INCRBYFLOAT f2 0.2",
    "APPEND ap hello",
    "APPEND ap \" world\"",
    "GET ap",
    "STRLEN ap",
    "STRLEN nope",
    "GETRANGE ap 0 4",
    "GETRANGE ap -5 -1",
    "GETRANGE ap 5 1",
    "GETRANGE ap -1 -5",
    "GETRANGE ap 0 100",
    "GETRANGE ap x 1",
    "GETRANGE nope 0 -1",
    "SETRANGE ap 6 WORLD",
    "GET ap",
    "SETRANGE pad 3 x",
    "GET pad",
    "SETRANGE ap -1 x",
    "SETRANGE emptyk 0 \"\"",
    "SETRANGE ap 0 \"\"",
    "SETRANGE ap 536870912 x",
    "SET t v",
    "EXPIRE t 100",
    "TTL t",
    "EXPIRE t 200 NX",
    "EXPIRE t 200 XX",
    "TTL t",
    "EXPIRE t 50 GT",
    "EXPIRE t 500 GT",
    "TTL t",
    "EXPIRE t 1000 LT",
    "EXPIRE t 10 LT",
    "TTL t",
    "EXPIRE t 10 NX XX",
    "EXPIRE t 10 GT LT",
    "EXPIRE t 10 FOO",
    "EXPIRE t abc",
    "EXPIRE nope 10",
    "PERSIST t",
    "PERSIST t",
    "TTL t",
    "EXPIRE t 10 GT",
    "EXPIRE t 10 LT",
    "TTL t",
    "PEXPIRE t 100000",
    "TTL t",
    "EXPIREAT t 99999999999",
    "EXPIRETIME t",
    "PEXPIREAT t 99999999999000",
    "PEXPIRETIME t",
    "EXPIRE t 9223372036854775807",
    "EXPIRE t -1",
    "EXISTS t",
    "TTL t",
    "PTTL t",
    "EXPIRETIME nope",
    "PERSIST nope",
    "DBSIZE",
    "DEL s s2 s3 nothere n1 ap pad y z i newi big nan sp f f2 newf",
    "DBSIZE",
];

const HASHES: &[&str] = &[
    "FLUSHALL",
    "HSET h f1 v1 f2 v2",
    "HSET h f1 x f3 v3",
    "HGET h f1",
    "HGET h nope",
    "HGET nope f",
    "HMGET h f1 nope f3",
    "HMGET nope a b",
    "HGETALL h",
    "HKEYS h",
    "HVALS h",
    "HLEN h",
    "HLEN nope",
    "HEXISTS h f2",
    "HEXISTS h nope",
    "HSTRLEN h f3",
    "HSTRLEN h nope",
    "HSETNX h f1 y",
    "HSETNX h f4 y",
    "HSET h f1",
    "HMSET h a 1 b 2",
    "HMSET h a",
    "HGETALL h",
    "HDEL h a b nope",
    "HDEL h f1 f2 f3 f4",
    "EXISTS h",
    "HGETALL nope",
    "HINCRBY hi n 5",
    "HINCRBY hi n -2",
    "HINCRBY hi n x",
    "HSET hi s str",
    "HINCRBY hi s 1",
    "HSET hi m 9223372036854775807",
    "HINCRBY hi m 1",
    "HINCRBYFLOAT hi fl 1.5",
    "HINCRBYFLOAT hi fl 0.1",
    "HINCRBYFLOAT hi s 1",
    "HINCRBYFLOAT hi fl x",
    "HINCRBYFLOAT hi fl inf",
    "TYPE hi",
    "SET str v",
    "HSET str f v",
    "HGET str f",
    "HGETALL str",
    "HLEN str",
    "HDEL str f",
    "HINCRBY str f 1",
    "GET hi",
    "INCR hi",
    "APPEND hi x",
    "GETRANGE hi 0 1",
    "STRLEN hi",
    "GETSET hi x",
    "SET hi v GET",
    "MGET hi str",
    "SET hi plain",
    "TYPE hi",
    "HGETALL hi",
    "HSET hi a b",
    "DEL hi",
    "HSET hi a b",
    "HGETALL hi",
    "EXPIRE hi 100",
    "TTL hi",
    "DBSIZE",
    "DEL str hi",
];

fn run_both_protocols(cmds: &[&str]) {
    let c = pg_only();
    let redis = RedisServer::start();
    same_replies(c.proxy_port, &redis, false, cmds);
    same_replies(c.proxy_port, &redis, true, cmds);
}

#[test]
fn strings_match_redis() {
    run_both_protocols(STRINGS);
}

#[test]
fn hashes_and_wrongtype_match_redis() {
    run_both_protocols(HASHES);
}

#[test]
fn unsupported_commands_get_a_clear_error() {
    let c = pg_only();
    let mut p = Raw::connect(c.proxy_port);
    let r = p.call(&["LPUSH", "l", "a"]);
    let text = String::from_utf8_lossy(&r);
    assert!(
        text.starts_with("-ERR command 'lpush' is not supported by postgres shards"),
        "{text}"
    );
    let r = String::from_utf8_lossy(&p.call(&["BLPOP", "l", "1"])).into_owned();
    assert!(r.contains("not supported by postgres shards"), "{r}");
    let r = String::from_utf8_lossy(&p.call(&["EVAL", "return 1", "1", "k"])).into_owned();
    assert!(r.contains("not supported by postgres shards"), "{r}");
    // Transactions run on postgres shards (tests/pg_multi.rs); blocking
    // commands and scripts inside one abort it.
    assert_eq!(p.call(&["MULTI"]), b"+OK\r\n");
    assert_eq!(p.call(&["SET", "k", "v"]), b"+QUEUED\r\n");
    let r = String::from_utf8_lossy(&p.call(&["EVAL", "return 1", "1", "k"])).into_owned();
    assert!(r.contains("not supported by postgres shards"), "{r}");
    let r = String::from_utf8_lossy(&p.call(&["EXEC"])).into_owned();
    assert!(r.starts_with("-EXECABORT"), "{r}");
    // The connection lives on.
    assert_eq!(p.call(&["GET", "k"]), b"$-1\r\n");
    assert_eq!(p.call(&["SET", "k", "v"]), b"+OK\r\n");
}

#[test]
fn expired_keys_are_invisible_at_once_and_reaped() {
    let c = pg_only();
    let mut con = c.conn();
    let _: () = redis::cmd("SET")
        .arg("gone")
        .arg("v")
        .arg("PX")
        .arg(1500)
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("hgone")
        .arg("f")
        .arg("v")
        .query(&mut con)
        .unwrap();
    let _: bool = con.pexpire("hgone", 1500).unwrap();
    let _: () = con.set("stays", "v").unwrap();
    assert_eq!(
        con.get::<_, Option<String>>("gone").unwrap().as_deref(),
        Some("v")
    );
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(con.get::<_, Option<String>>("gone").unwrap(), None);
    assert_eq!(con.exists::<_, i64>("gone").unwrap(), 0);
    assert_eq!(
        con.hget::<_, _, Option<String>>("hgone", "f").unwrap(),
        None
    );
    assert_eq!(con.ttl::<_, i64>("gone").unwrap(), -2);
    let n: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, 1);
    // The reaper (every health_check_interval, 100 ms here) deletes the rows.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = c.pg[0].query("SELECT count(*) FROM kv");
        let fields = c.pg[0].query("SELECT count(*) FROM kv_hash");
        if rows == "1" && fields == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not reaped: {rows} rows, {fields} fields"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn concurrent_incrs_are_atomic() {
    let c = pg_only();
    let clients = 50;
    let per_client = 20;
    std::thread::scope(|s| {
        for i in 0..clients {
            let client = c.client();
            s.spawn(move || {
                let mut con = client.get_connection().expect("connect");
                for j in 0..per_client {
                    let _: i64 = con.incr("counter", 1).unwrap();
                    let _: i64 = redis::cmd("HINCRBY")
                        .arg("hcounter")
                        .arg("f")
                        .arg(1)
                        .query(&mut con)
                        .unwrap();
                    if (i + j) % 5 == 0 {
                        let _: f64 = redis::cmd("INCRBYFLOAT")
                            .arg("fcounter")
                            .arg("0.5")
                            .query(&mut con)
                            .unwrap();
                    }
                }
            });
        }
    });
    let mut con = c.conn();
    let total: i64 = con.get("counter").unwrap();
    assert_eq!(total, clients * per_client);
    let h: i64 = con.hget("hcounter", "f").unwrap();
    assert_eq!(h, clients * per_client);
    let f: f64 = con.get("fcounter").unwrap();
    assert_eq!(f, 0.5 * (clients * per_client / 5) as f64);
}

#[test]
fn pipelined_requests_of_one_client_stay_in_order() {
    let c = pg_only();
    let mut con = c.conn();
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.set(format!("k{}", i % 7), i).ignore();
        pipe.get(format!("k{}", i % 7));
    }
    let got: Vec<i64> = pipe.query(&mut con).unwrap();
    assert_eq!(got, (0..200).collect::<Vec<i64>>());
}

#[test]
fn a_key_that_stops_being_a_hash_loses_its_fields() {
    let c = pg_only();
    let mut p = Raw::connect(c.proxy_port);
    let fields = |key: &str| {
        c.pg[0].query(&format!(
            "SELECT count(*) FROM kv_hash WHERE kd = sha256(convert_to('{key}', 'UTF8'))"
        ))
    };
    // Live hashes overwritten by SET, MSET, SETEX and SET PX.
    for (key, cmd) in [
        ("h1", vec!["SET", "h1", "s"]),
        ("h2", vec!["MSET", "h2", "m"]),
        ("h3", vec!["SETEX", "h3", "100", "e"]),
        ("h4", vec!["SET", "h4", "s", "PX", "100000"]),
    ] {
        assert_eq!(p.call(&["HSET", key, "f", "1", "g", "2"]), b":2\r\n");
        assert_eq!(p.call(&cmd)[0], b'+', "{cmd:?}");
        assert_eq!(fields(key), "0", "{cmd:?} left fields behind");
        assert_eq!(p.call(&["TYPE", key]), b"+string\r\n");
    }
    // Expired hashes (rows not reaped yet) overwritten by string writes.
    for (key, cmd) in [
        ("e1", vec!["INCR", "e1"]),
        ("e2", vec!["MSET", "e2", "m"]),
        ("e3", vec!["APPEND", "e3", "a"]),
        ("e4", vec!["SET", "e4", "s"]),
    ] {
        assert_eq!(p.call(&["HSET", key, "f", "1"]), b":1\r\n");
        c.pg[0].query(&format!(
            "UPDATE kv SET expires_at = 1 WHERE key = convert_to('{key}', 'UTF8')"
        ));
        assert_eq!(p.call(&["EXISTS", key]), b":0\r\n");
        let r = p.call(&cmd);
        assert!(
            matches!(r[0], b'+' | b':'),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&r)
        );
        assert_eq!(fields(key), "0", "{cmd:?} left fields behind");
        // A hash made later starts empty.
        assert_eq!(p.call(&["DEL", key]), b":1\r\n");
        assert_eq!(p.call(&["HSET", key, "x", "1"]), b":1\r\n");
        assert_eq!(p.call(&["HLEN", key]), b":1\r\n");
    }
}

/// A client whose write waits on a row lock (another session holds the
/// key's row) delays no other client: each client has its own lane, so
/// more clients than the pool has connections all get their replies while
/// the first still waits; it completes once the lock goes.
#[test]
fn a_client_waiting_on_a_row_lock_delays_no_other_client() {
    let c = Cluster::start(Spec {
        shards: 0,
        pg_shards: 1,
        extra_options: "  pg_pool_size: 4\n",
        ..Spec::default()
    });
    let pg = &c.pg[0];
    let mut con = c.conn();
    let _: () = con.set("locked", "v0").unwrap();
    // Another session holds the row's lock (until it is terminated).
    let mut holder = pg.hold_row_lock("locked");
    let waiting = |what: &str| -> usize {
        pg.query(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE {what} AND pid <> pg_backend_pid()"
        ))
        .parse()
        .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    // The blocked client.
    let blocked_client = c.client();
    let blocked = std::thread::spawn(move || {
        let mut con = blocked_client.get_connection().unwrap();
        con.set::<_, _, ()>("locked", "v1")
    });
    while waiting("wait_event_type = 'Lock'") == 0 {
        assert!(
            Instant::now() < deadline,
            "the SET never waited on the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Twice as many clients as connections (so, before, some shared the
    // blocked client's lane), each writing and reading its own key.
    for i in 0..8 {
        let mut other = c.client().get_connection().unwrap();
        let _: () = other.set(format!("free{i}"), i).unwrap();
        let got: i64 = other.get(format!("free{i}")).unwrap();
        assert_eq!(got, i);
    }
    assert!(
        !blocked.is_finished(),
        "the blocked SET returned while the lock was held"
    );
    assert_eq!(waiting("wait_event_type = 'Lock'"), 1);
    // The lock goes: the waiting SET completes.
    holder.release();
    blocked.join().unwrap().unwrap();
    let got: String = con.get("locked").unwrap();
    assert_eq!(got, "v1");
}

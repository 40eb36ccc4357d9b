//! End-to-end tests of the proxy with real redis-server shards and the redis
//! crate as the client.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::cluster::{Cluster, Spec, calls};
use redis::{Commands, Value};

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key:{i}")).collect()
}

#[test]
fn keys_land_on_the_shard_the_router_names() {
    let c = Cluster::start(Spec::default());
    let mut con = c.conn();
    for k in keys(200) {
        let _: () = con.set(&k, format!("v-{k}")).unwrap();
    }
    let _: () = con.set("eu/residency", "x").unwrap();
    let _: () = con.set("{eu:tag}.a", "x").unwrap();
    let mut direct: Vec<redis::Connection> = c
        .primaries
        .iter()
        .map(|p| p.client().get_connection().unwrap())
        .collect();
    let mut all = keys(200);
    all.push("eu/residency".into());
    all.push("{eu:tag}.a".into());
    let mut per_shard = vec![0usize; c.primaries.len()];
    for k in &all {
        let owner = c.shard_of(k);
        for (i, d) in direct.iter_mut().enumerate() {
            let exists: bool = d.exists(k).unwrap();
            assert_eq!(exists, i == owner, "{k} on shard {i} (owner {owner})");
        }
        per_shard[owner] += 1;
    }
    // Residency: region eu is shards 2 and 3 in this map.
    assert!(c.shard_of("eu/residency") >= 2 && c.shard_of("{eu:tag}.a") >= 2);
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "every shard got keys: {per_shard:?}"
    );
    for k in keys(200) {
        let v: String = con.get(&k).unwrap();
        assert_eq!(v, format!("v-{k}"));
    }
}

#[test]
fn multi_key_commands_split_and_merge() {
    let c = Cluster::start(Spec::default());
    let mut con = c.conn();
    let ks = keys(40);
    let pairs: Vec<(String, String)> = ks.iter().map(|k| (k.clone(), format!("{k}!"))).collect();
    let _: () = con.mset(&pairs).unwrap();
    let shards: HashSet<usize> = ks.iter().map(|k| c.shard_of(k)).collect();
    assert_eq!(shards.len(), 4, "keys span every shard");
    let mut asked = ks.clone();
    asked.insert(3, "missing".into());
    asked.push(ks[0].clone());
    let got: Vec<Option<String>> = con.mget(&asked).unwrap();
    let want: Vec<Option<String>> = asked
        .iter()
        .map(|k| {
            if k == "missing" {
                None
            } else {
                Some(format!("{k}!"))
            }
        })
        .collect();
    assert_eq!(got, want);
    let n: i64 = redis::cmd("EXISTS")
        .arg(&ks)
        .arg(&ks[0])
        .arg("missing")
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 41);
    let n: i64 = redis::cmd("TOUCH").arg(&ks[..10]).query(&mut con).unwrap();
    assert_eq!(n, 10);
    let n: i64 = redis::cmd("DEL")
        .arg(&ks[..20])
        .arg(&ks[0])
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 20);
    let n: i64 = redis::cmd("UNLINK").arg(&ks).query(&mut con).unwrap();
    assert_eq!(n, 20);
    let n: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, 0);
}

#[test]
fn same_shard_multi_key_commands_run_and_cross_shard_ones_are_refused() {
    let c = Cluster::start(Spec::default());
    let mut con = c.conn();
    let _: () = con.sadd("{t}a", &["1", "2", "3"]).unwrap();
    let _: () = con.sadd("{t}b", &["2", "3", "4"]).unwrap();
    let inter: HashSet<String> = con.sinter(&["{t}a", "{t}b"]).unwrap();
    assert_eq!(inter, HashSet::from(["2".to_owned(), "3".to_owned()]));
    let _: () = con.rename("{t}a", "{t}c").unwrap();
    // Two keys on different shards.
    let (a, b) = cross_shard_pair(&c);
    let err = redis::cmd("SINTER")
        .arg(&a)
        .arg(&b)
        .query::<Value>(&mut con)
        .unwrap_err();
    assert_eq!(err.code(), Some("CROSSSLOT"), "{err}");
    assert!(
        err.to_string()
            .contains("Keys in request don't hash to the same slot")
    );
    // The connection is still usable.
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
}

fn cross_shard_pair(c: &Cluster) -> (String, String) {
    let a = "x0".to_owned();
    let b = (1..)
        .map(|i| format!("x{i}"))
        .find(|k| c.shard_of(k) != c.shard_of(&a))
        .unwrap();
    (a, b)
}

#[test]
fn pipelined_replies_arrive_in_request_order() {
    let c = Cluster::start(Spec::default());
    let mut con = c.conn();
    let mut pipe = redis::pipe();
    for i in 0..1000 {
        pipe.cmd("SET").arg(format!("p{i}")).arg(i).ignore();
        pipe.cmd("INCR").arg(format!("p{i}"));
        if i % 100 == 0 {
            pipe.cmd("MGET")
                .arg(format!("p{i}"))
                .arg(format!("p{}", i / 2));
        }
    }
    let out: Vec<Value> = pipe.query(&mut con).unwrap();
    let mut it = out.into_iter();
    for i in 0..1000i64 {
        assert_eq!(it.next(), Some(Value::Int(i + 1)));
        if i % 100 == 0 {
            let Some(Value::Array(vals)) = it.next() else {
                panic!("MGET reply")
            };
            assert_eq!(
                vals[0],
                Value::BulkString(format!("{}", i + 1).into_bytes())
            );
        }
    }
}

#[test]
fn scan_walks_every_shard() {
    let c = Cluster::start(Spec::default());
    let mut con = c.conn();
    let ks = keys(300);
    for k in &ks {
        let _: () = con.set(k, 1).unwrap();
    }
    let _: () = con.set("other", 1).unwrap();
    let mut cursor = 0u64;
    let mut seen = HashSet::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("key:*")
            .arg("COUNT")
            .arg(50)
            .query(&mut con)
            .unwrap();
        seen.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen, ks.into_iter().collect::<HashSet<_>>());
    let all: Vec<String> = con.keys("key:1*").unwrap();
    assert_eq!(all.len(), 111);
    let n: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(n, 301);
    let k: String = redis::cmd("RANDOMKEY").query(&mut con).unwrap();
    assert!(k.starts_with("key:") || k == "other");
    let err = redis::cmd("SCAN")
        .arg("notanumber")
        .query::<Value>(&mut con)
        .unwrap_err();
    assert!(err.to_string().contains("invalid cursor"));
}

#[test]
fn reads_follow_the_read_policy_and_skip_a_dead_replica() {
    let mut c = Cluster::start(Spec {
        replicas: true,
        read_policy: "prefer-replica",
        ..Spec::default()
    });
    let mut con = c.conn();
    let sets_before: u64 = c.primaries.iter().map(|p| calls(p, "set")).sum();
    for k in keys(100) {
        let _: () = con.set(&k, 1).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200)); // let replicas catch up
    for k in keys(100) {
        let _: Option<i64> = con.get(&k).unwrap();
    }
    let on_replicas: u64 = c.replicas.iter().map(|r| calls(r, "get")).sum();
    let on_primaries: u64 = c.primaries.iter().map(|p| calls(p, "get")).sum();
    assert_eq!(
        (on_replicas, on_primaries),
        (100, 0),
        "prefer-replica sends every read to a replica"
    );
    // Writes went to primaries (replicas also count them, via replication).
    let sets: u64 = c.primaries.iter().map(|p| calls(p, "set")).sum();
    assert_eq!(sets - sets_before, 100);

    // INFO proxy names the policy and every replica with its health.
    let info: String = redis::cmd("INFO").arg("proxy").query(&mut con).unwrap();
    assert!(info.contains("read_policy:prefer-replica"), "{info}");
    for r in &c.replicas {
        assert!(info.contains(&format!("{}|1|", r.addr())), "{info}");
    }

    // Kill one replica: its shard's reads fall back to the primary, without errors.
    let dead = 0;
    c.replicas[dead].kill();
    for k in keys(100) {
        let v: Option<i64> = con.get(&k).unwrap();
        assert_eq!(v, Some(1), "read of {k} after replica death");
    }
    assert!(
        calls(&c.primaries[dead], "get") > 0,
        "reads of the dead replica's shard went to its primary"
    );
    let others: u64 = (1..4).map(|i| calls(&c.primaries[i], "get")).sum();
    assert_eq!(others, 0, "other shards still read from their replicas");
}

#[test]
fn primary_read_policy_keeps_replicas_idle() {
    let c = Cluster::start(Spec {
        replicas: true,
        read_policy: "primary",
        ..Spec::default()
    });
    let mut con = c.conn();
    for k in keys(50) {
        let _: () = con.set(&k, 1).unwrap();
        let _: i64 = con.get(&k).unwrap();
    }
    assert_eq!(c.replicas.iter().map(|r| calls(r, "get")).sum::<u64>(), 0);
    assert_eq!(c.primaries.iter().map(|p| calls(p, "get")).sum::<u64>(), 50);
}

#[test]
fn nearest_prefers_this_proxys_zone() {
    // Proxy is in us/us-a; primaries are in zone X-a, replicas in X-b.
    let c = Cluster::start(Spec {
        replicas: true,
        read_policy: "nearest",
        ..Spec::default()
    });
    let mut con = c.conn();
    let us_key = (0..)
        .map(|i| format!("n{i}"))
        .find(|k| c.shard_of(k) < 2)
        .unwrap();
    let eu_key = (0..)
        .map(|i| format!("n{i}"))
        .find(|k| c.shard_of(k) >= 2)
        .unwrap();
    let _: () = con.set(&us_key, 1).unwrap();
    let _: () = con.set(&eu_key, 1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..10 {
        let _: i64 = con.get(&us_key).unwrap();
        let _: i64 = con.get(&eu_key).unwrap();
    }
    let us = c.shard_of(&us_key);
    assert_eq!(
        calls(&c.primaries[us], "get"),
        10,
        "us shard: same-zone primary serves"
    );
    // eu shard: neither endpoint is in our region; reads go to its first healthy endpoint.
    let eu = c.shard_of(&eu_key);
    assert_eq!(
        calls(&c.primaries[eu], "get") + calls(&c.replicas[eu], "get"),
        10
    );
}

#[test]
fn transactions_run_on_one_shard() {
    let c = Cluster::start(Spec::default());
    let mut con = c.conn();
    let (n1, n2): (i64, i64) = redis::pipe()
        .atomic()
        .cmd("INCR")
        .arg("{acct}x")
        .cmd("INCRBY")
        .arg("{acct}x")
        .arg(5)
        .query(&mut con)
        .unwrap();
    assert_eq!((n1, n2), (1, 6));
    // Queue-time CROSSSLOT aborts the transaction.
    let (a, b) = cross_shard_pair(&c);
    let _: () = redis::cmd("MULTI").query(&mut con).unwrap();
    let q: String = redis::cmd("SET").arg(&a).arg(1).query(&mut con).unwrap();
    assert_eq!(q, "QUEUED");
    let err = redis::cmd("SET")
        .arg(&b)
        .arg(1)
        .query::<Value>(&mut con)
        .unwrap_err();
    assert_eq!(err.code(), Some("CROSSSLOT"));
    let err = redis::cmd("EXEC").query::<Value>(&mut con).unwrap_err();
    assert_eq!(err.code(), Some("EXECABORT"));
    let exists: bool = con.exists(&a).unwrap();
    assert!(!exists, "aborted transaction wrote nothing");

    // WATCH, a concurrent change, EXEC -> nil.
    let mut other = c.conn();
    let _: () = redis::cmd("WATCH").arg("{w}k").query(&mut con).unwrap();
    let _: () = other.set("{w}k", "changed").unwrap();
    let _: () = redis::cmd("MULTI").query(&mut con).unwrap();
    let _: String = redis::cmd("SET")
        .arg("{w}k")
        .arg("mine")
        .query(&mut con)
        .unwrap();
    let r: Value = redis::cmd("EXEC").query(&mut con).unwrap();
    assert_eq!(r, Value::Nil);
    let v: String = con.get("{w}k").unwrap();
    assert_eq!(v, "changed");
    // Without interference EXEC applies.
    let _: () = redis::cmd("WATCH").arg("{w}k").query(&mut con).unwrap();
    let _: () = redis::cmd("MULTI").query(&mut con).unwrap();
    let _: String = redis::cmd("SET")
        .arg("{w}k")
        .arg("mine")
        .query(&mut con)
        .unwrap();
    let r: Vec<String> = redis::cmd("EXEC").query(&mut con).unwrap();
    assert_eq!(r, vec!["OK"]);
    let err = redis::cmd("EXEC").query::<Value>(&mut con).unwrap_err();
    assert!(err.to_string().contains("EXEC without MULTI"));
}

#[test]
fn scripts_run_where_their_keys_live() {
    let c = Cluster::start(Spec::default());
    let mut con = c.conn();
    let script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])";
    let n: i64 = redis::cmd("EVAL")
        .arg(script)
        .arg(2)
        .arg("{s}a")
        .arg("{s}b")
        .arg("v")
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 1);
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(script)
        .query(&mut con)
        .unwrap();
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .arg("0000")
        .query(&mut con)
        .unwrap();
    assert_eq!(exists, vec![1, 0]);
    // EVALSHA works on whichever shard the keys pick, because LOAD went to all.
    for tag in ["p", "q", "r", "s", "t"] {
        let _: i64 = redis::cmd("EVALSHA")
            .arg(&sha)
            .arg(2)
            .arg(format!("{{{tag}}}a"))
            .arg(format!("{{{tag}}}b"))
            .arg("v")
            .query(&mut con)
            .unwrap();
    }
    let (a, b) = cross_shard_pair(&c);
    let err = redis::cmd("EVAL")
        .arg("return 1")
        .arg(2)
        .arg(a)
        .arg(b)
        .query::<Value>(&mut con)
        .unwrap_err();
    assert_eq!(err.code(), Some("CROSSSLOT"));
}

#[test]
fn blocking_pop_does_not_stall_other_clients() {
    let c = Cluster::start(Spec::default());
    let client = c.client();
    let blocker = std::thread::spawn(move || {
        let mut con = client.get_connection().unwrap();
        let r: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("queue")
            .arg(10)
            .query(&mut con)
            .unwrap();
        r
    });
    std::thread::sleep(Duration::from_millis(300));
    // Many other commands complete while BLPOP waits.
    let mut con = c.conn();
    for i in 0..200 {
        let _: () = con.set(format!("busy{i}"), i).unwrap();
    }
    let _: () = con.rpush("queue", "job").unwrap();
    let got = blocker.join().unwrap();
    assert_eq!(got, Some(("queue".into(), "job".into())));
    // A timed-out block returns nil.
    let r: Option<(String, String)> = redis::cmd("BLPOP")
        .arg("empty")
        .arg("0.2")
        .query(&mut con)
        .unwrap();
    assert_eq!(r, None);
}

#[test]
fn backend_failure_is_an_error_not_a_hang_and_recovers() {
    let mut c = Cluster::start(Spec::default());
    let mut con = c.conn();
    let down = (0..)
        .map(|i| format!("d{i}"))
        .find(|k| c.shard_of(k) == 1)
        .unwrap();
    let up = (0..)
        .map(|i| format!("u{i}"))
        .find(|k| c.shard_of(k) == 0)
        .unwrap();
    let _: () = con.set(&down, 1).unwrap();
    c.primaries[1].kill();
    let mut failures = 0;
    for _ in 0..5 {
        match con.get::<_, Option<i64>>(&down) {
            Err(e) => {
                assert!(
                    e.to_string().contains("127.0.0.1"),
                    "error names the backend: {e}"
                );
                failures += 1;
            }
            Ok(v) => panic!("read from a dead shard returned {v:?}"),
        }
        // Other shards keep serving on the same connection.
        let _: () = con.set(&up, 1).unwrap();
    }
    assert_eq!(failures, 5);
    c.primaries[1].restart();
    let mut ok = false;
    for _ in 0..50 {
        if con.set::<_, _, ()>(&down, 2).is_ok() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "service resumed after the backend came back");
}

#[test]
fn resp3_clients_get_resp3_replies() {
    let c = Cluster::start(Spec::default());
    let mut con = c.client_resp3().get_connection().unwrap();
    let _: () = con.hset("h", "f", "v").unwrap();
    let v: Value = redis::cmd("HGETALL").arg("h").query(&mut con).unwrap();
    assert!(matches!(v, Value::Map(_)), "RESP3 map, got {v:?}");
    let m: Value = redis::cmd("MGET")
        .arg("h")
        .arg("nope")
        .arg("x1")
        .arg("x2")
        .query(&mut con)
        .unwrap();
    let Value::Array(items) = m else {
        panic!("array")
    };
    assert_eq!(items.len(), 4);
    assert!(items.iter().skip(1).all(|v| *v == Value::Nil));
}

#[test]
fn proxy_answers_connection_commands_itself() {
    let c = Cluster::start(Spec::default());
    let mut con = c.conn();
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("tester")
        .query(&mut con)
        .unwrap();
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut con).unwrap();
    assert_eq!(name, "tester");
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut con).unwrap();
    assert!(id > 0);
    let echo: String = redis::cmd("ECHO").arg("hi").query(&mut con).unwrap();
    assert_eq!(echo, "hi");
    let _: () = redis::cmd("SELECT").arg(1).query(&mut con).unwrap();
    let _: () = redis::cmd("SELECT").arg(0).query(&mut con).unwrap();
    assert!(
        redis::cmd("SELECT")
            .arg(16)
            .query::<Value>(&mut con)
            .is_err()
    );
    let time: Vec<String> = redis::cmd("TIME").query(&mut con).unwrap();
    assert!(time[0].parse::<u64>().unwrap() > 1_700_000_000);
    for i in 0..7 {
        let _: () = con.set(format!("k{i}"), i).unwrap();
    }
    let _: () = con.set_ex("ttl", 1, 100).unwrap();
    let info: String = redis::cmd("INFO").query(&mut con).unwrap();
    assert!(info.contains("db0:keys=8,expires=1"), "{info}");
    assert!(info.contains("# Proxy") && info.contains("shards:4"));
    let count: i64 = redis::cmd("COMMAND").arg("COUNT").query(&mut con).unwrap();
    assert!(count > 200);
    let getkeys: Vec<String> = redis::cmd("COMMAND")
        .arg("GETKEYS")
        .arg("MSET")
        .arg("a")
        .arg("1")
        .arg("b")
        .arg("2")
        .query(&mut con)
        .unwrap();
    assert_eq!(getkeys, vec!["a", "b"]);
    for (cmd, args) in [("CONFIG", vec!["SET", "x", "y"]), ("CLUSTER", vec!["INFO"])] {
        let err = redis::cmd(cmd)
            .arg(&args)
            .query::<Value>(&mut con)
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&cmd.to_lowercase()) && text.contains("not supported"),
            "{text}"
        );
    }
    let err = redis::cmd("NOSUCH")
        .arg("a")
        .query::<Value>(&mut con)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown command 'NOSUCH', with args beginning with: 'a'"),
        "{err}"
    );
    let err = redis::cmd("GET").query::<Value>(&mut con).unwrap_err();
    assert!(
        err.to_string()
            .contains("wrong number of arguments for 'get' command"),
        "{err}"
    );
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn many_concurrent_clients() {
    let c = Cluster::start(Spec::default());
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let client = c.client();
            std::thread::spawn(move || {
                let mut con = client.get_connection().unwrap();
                let mut seen = HashMap::new();
                for i in 0..100 {
                    let k = format!("c{t}:{i}");
                    let _: () = con.set(&k, i).unwrap();
                    let v: i64 = con.get(&k).unwrap();
                    seen.insert(k, v);
                }
                seen.len()
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(total, 3200);
}

/// Each shard's version is learned by its health checker (`INFO proxy`
/// shows it per shard), and HELLO reports the older of the shards' lowest
/// and the Redis the proxy implements (7.0.0), so a client never uses a
/// command an older shard lacks nor one newer than the proxy's table.
#[test]
fn hello_and_info_report_the_shards_versions() {
    let c = Cluster::start(Spec::default());
    let mut direct = c.primaries[0].client().get_connection().unwrap();
    let server: String = redis::cmd("INFO").arg("server").query(&mut direct).unwrap();
    let version = server
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap()
        .trim()
        .to_owned();
    let mut con = c.conn();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO").arg("proxy").query(&mut con).unwrap();
        let shards: Vec<&str> = info.lines().filter(|l| l.contains(":name=")).collect();
        if !shards.is_empty()
            && shards
                .iter()
                .all(|l| l.contains(&format!(",version={version},")))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no version learned: {shards:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut resp3 = c.client_resp3().get_connection().unwrap();
    let hello: HashMap<String, Value> = redis::cmd("HELLO").arg(3).query(&mut resp3).unwrap();
    let older = |a: &str, b: &str| {
        let key = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap()).collect() };
        if key(a) <= key(b) {
            a.to_owned()
        } else {
            b.to_owned()
        }
    };
    assert_eq!(
        hello.get("version"),
        Some(&Value::BulkString(older(&version, "7.0.0").into_bytes()))
    );
}

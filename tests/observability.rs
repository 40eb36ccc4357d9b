//! What the proxy says about itself, against real redis-server shards:
//! INFO as clients and tools read it (and `redis-cli --stat`), the proxy's
//! SLOWLOG, MEMORY STATS over every shard.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Spec};
use redis::Commands;
use shardgate::proxy::ClientConfig;
use shardgate::proxy::slowlog::SlowlogConfig;

fn info(con: &mut redis::Connection, sections: &[&str]) -> String {
    let mut cmd = redis::cmd("INFO");
    for s in sections {
        cmd.arg(*s);
    }
    cmd.query(con).expect("INFO")
}

/// The value of `name` in INFO text.
fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    })
}

fn num(text: &str, name: &str) -> u64 {
    field(text, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing or not a number in:\n{text}"))
}

fn section_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# "))
        .map(|s| s.trim().to_lowercase())
        .collect()
}

#[test]
fn info_answers_every_section_with_proxy_and_shard_figures() {
    let c = Cluster::start(Spec {
        shards: 2,
        ..Spec::default()
    });
    let mut con = c.conn();
    for i in 0..10 {
        let _: () = con.set(format!("k{i}"), "v").unwrap();
    }
    for i in 0..3 {
        let _: () = con.expire(format!("k{i}"), 1000).unwrap();
    }
    let _: Option<String> = con.get("missing").unwrap();

    let all = info(&mut con, &[]);
    for s in [
        "server",
        "clients",
        "memory",
        "stats",
        "replication",
        "cpu",
        "errorstats",
        "proxy",
        "keyspace",
    ] {
        assert!(section_names(&all).contains(&s.to_owned()), "{s}: {all}");
    }
    assert!(!section_names(&all).contains(&"commandstats".to_owned()));
    assert_eq!(
        field(&all, "db0")
            .as_deref()
            .map(|l| l.starts_with("keys=10,expires=3,")),
        Some(true),
        "{all}"
    );
    // redis_version is what the shards run.
    let direct: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut c.primaries[0].connection())
        .unwrap();
    assert_eq!(
        field(&all, "redis_version"),
        field(&direct, "redis_version")
    );
    // Proxy-own figures parse as numbers.
    for n in [
        "connected_clients",
        "blocked_clients",
        "maxclients",
        "used_memory",
        "used_memory_rss",
        "used_memory_peak",
        "shards_used_memory",
        "total_connections_received",
        "total_commands_processed",
        "instantaneous_ops_per_sec",
        "total_net_input_bytes",
        "total_net_output_bytes",
        "rejected_connections",
        "keyspace_hits",
        "keyspace_misses",
        "uptime_in_seconds",
    ] {
        num(&all, n);
    }
    assert!(num(&all, "used_memory") > 1_000_000, "{all}");
    assert!(num(&all, "shards_used_memory") > 1_000_000, "{all}");
    assert!(num(&all, "total_commands_processed") >= 14, "{all}");
    assert!(num(&all, "total_net_input_bytes") > 100, "{all}");
    assert!(num(&all, "keyspace_misses") >= 1, "{all}");
    assert_eq!(field(&all, "role").as_deref(), Some("master"));
    let user: f64 = field(&all, "used_cpu_user").unwrap().parse().unwrap();
    assert!(user >= 0.0);

    // Several sections, any case; unknown ones are left out.
    let two = info(&mut con, &["CPU", "memory", "nosuch"]);
    assert_eq!(section_names(&two), ["memory", "cpu"], "{two}");
    let everything = info(&mut con, &["everything"]);
    assert!(section_names(&everything).contains(&"commandstats".to_owned()));

    // Rejected (the proxy refused it) and failed (the shard's error) calls,
    // and the error codes.
    let _: redis::RedisResult<()> = redis::cmd("GET").query(&mut con);
    let _: redis::RedisResult<()> = redis::cmd("LPUSH").arg("k5").arg("x").query(&mut con);
    let stats = info(&mut con, &["commandstats", "errorstats"]);
    let set = field(&stats, "cmdstat_set").unwrap();
    assert!(set.starts_with("calls=10,usec="), "{set}");
    assert!(set.contains(",usec_per_call="), "{set}");
    assert!(set.ends_with("rejected_calls=0,failed_calls=0"), "{set}");
    let get = field(&stats, "cmdstat_get").unwrap();
    assert!(get.contains("rejected_calls=1,"), "{get}");
    let lpush = field(&stats, "cmdstat_lpush").unwrap();
    assert!(lpush.ends_with("failed_calls=1"), "{lpush}");
    assert!(
        field(&stats, "errorstat_WRONGTYPE").as_deref() == Some("count=1"),
        "{stats}"
    );
    assert!(field(&stats, "errorstat_ERR").is_some(), "{stats}");
}

#[test]
fn blocked_clients_counts_clients_in_a_blocking_command() {
    let c = Cluster::start(Spec {
        shards: 2,
        ..Spec::default()
    });
    let mut con = c.conn();
    let port = c.proxy_port;
    let blocked = |con: &mut redis::Connection| num(&info(con, &["clients"]), "blocked_clients");
    assert_eq!(blocked(&mut con), 0);
    let waiter = std::thread::spawn(move || {
        let mut b = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .unwrap()
            .get_connection()
            .unwrap();
        let r: Option<(String, String)> = b.blpop("bl", 10.0).unwrap();
        r
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while blocked(&mut con) != 1 {
        assert!(Instant::now() < deadline, "blocked_clients never reached 1");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(num(&info(&mut con, &["clients"]), "connected_clients"), 2);
    let _: () = con.rpush("bl", "x").unwrap();
    assert_eq!(
        waiter.join().unwrap(),
        Some(("bl".to_owned(), "x".to_owned()))
    );
    assert_eq!(blocked(&mut con), 0);
    // XREAD without BLOCK does not block.
    let _: redis::Value = redis::cmd("XREAD")
        .arg("STREAMS")
        .arg("s")
        .arg("0")
        .query(&mut con)
        .unwrap();
    assert_eq!(blocked(&mut con), 0);
}

/// `redis-cli --stat` reads INFO every interval; every column must be a
/// number (it printed `mem --9223372036854775808B` before INFO had the
/// memory and stats sections).
#[test]
fn redis_cli_stat_prints_numbers() {
    let c = Cluster::start(Spec {
        shards: 2,
        ..Spec::default()
    });
    let mut con = c.conn();
    for i in 0..7 {
        let _: () = con.set(format!("s{i}"), "v").unwrap();
    }
    let mut child = Command::new("redis-cli")
        .args(["-p", &c.proxy_port.to_string(), "--stat", "-i", "0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-cli (apt-get install redis-tools)");
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let mut rows = Vec::new();
    while rows.len() < 3 {
        let Some(Ok(line)) = lines.next() else { break };
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.first().is_some_and(|c| c.parse::<u64>().is_ok()) {
            rows.push(line.clone());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        assert!(!row.contains("-9223372036854775808"), "{row}");
        // keys mem clients blocked requests (+delta) connections
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[0], "7", "{row}");
        let mem = cols[1].trim_end_matches(['B', 'K', 'M', 'G']);
        assert!(mem.parse::<f64>().is_ok_and(|m| m > 0.0), "{row}");
        assert!(cols[2].parse::<u64>().is_ok_and(|n| n >= 2), "{row}");
        assert_eq!(cols[3], "0", "{row}");
        assert!(cols[4].parse::<u64>().is_ok(), "{row}");
        assert!(cols[5].starts_with("(+"), "{row}");
        assert!(cols[6].parse::<u64>().is_ok(), "{row}");
    }
}

fn slowlog_cluster(slower_than_us: i64, max_len: usize) -> Cluster {
    Cluster::start(Spec {
        shards: 2,
        client: ClientConfig {
            slowlog: SlowlogConfig {
                slower_than_us,
                max_len,
            },
            ..ClientConfig::default()
        },
        ..Spec::default()
    })
}

type Entry = (i64, i64, i64, Vec<String>, String, String);

fn slowlog_get(con: &mut redis::Connection, n: i64) -> Vec<Entry> {
    redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(n)
        .query(con)
        .expect("SLOWLOG GET in Redis' six-element shape")
}

#[test]
fn slowlog_logs_slow_commands_in_redis_shape() {
    // The default threshold (10 ms): a busy script is slow, a GET is not.
    let c = slowlog_cluster(10_000, 128);
    let mut con = c.conn();
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("slowpoke")
        .query(&mut con)
        .unwrap();
    let _: Option<String> = con.get("fast").unwrap();
    let busy = "local i = 0 while i < 20000000 do i = i + 1 end return 1";
    let started = Instant::now();
    let _: i64 = redis::cmd("EVAL")
        .arg(busy)
        .arg(1)
        .arg("busykey")
        .query(&mut con)
        .unwrap();
    let took = started.elapsed();
    assert!(
        took > Duration::from_millis(10),
        "the script took only {took:?}"
    );
    let entries = slowlog_get(&mut con, -1);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (id, when, micros, args, addr, name) = &entries[0];
    assert_eq!(*id, 0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - when).abs() <= 5, "{when} vs {now}");
    assert!(*micros >= 10_000 && *micros <= took.as_micros() as i64 + 1000);
    assert_eq!(args[0], "EVAL");
    assert_eq!(args[3], "busykey");
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_eq!(name, "slowpoke");
    let len: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut con).unwrap();
    assert_eq!(len, 1);
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut con).unwrap();
    let len: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut con).unwrap();
    assert_eq!(len, 0);
    let help: Vec<String> = redis::cmd("SLOWLOG").arg("HELP").query(&mut con).unwrap();
    assert!(help[0].starts_with("SLOWLOG <subcommand>"), "{help:?}");
    let bad: redis::RedisResult<()> = redis::cmd("SLOWLOG").arg("NOPE").query(&mut con);
    assert!(bad.unwrap_err().to_string().contains("SLOWLOG HELP"));
}

#[test]
fn slowlog_truncates_arguments_and_stays_bounded() {
    // 0: every command is logged (Redis' meaning); 3 entries kept.
    let c = slowlog_cluster(0, 3);
    let mut con = c.conn();
    let long = "x".repeat(200);
    let _: () = con.set("{t}a", &long).unwrap();
    let mut mget = redis::cmd("MGET");
    for i in 0..40 {
        mget.arg(format!("{{t}}k{i}"));
    }
    let _: Vec<Option<String>> = mget.query(&mut con).unwrap();
    // (The client's CLIENT SETINFO handshake is logged first.)
    let entries = slowlog_get(&mut con, 2);
    assert_eq!(entries.len(), 2, "{entries:?}");
    // Newest first.
    let mget_args = &entries[0].3;
    assert_eq!(mget_args.len(), 32);
    assert_eq!(mget_args[31], "... (10 more arguments)");
    let set_args = &entries[1].3;
    assert_eq!(set_args[2], format!("{}... (72 more bytes)", &long[..128]));
    for _ in 0..5 {
        let _: Option<String> = con.get("{t}a").unwrap();
    }
    let len: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut con).unwrap();
    assert_eq!(len, 3);
    // DETAILS (asked for only by people, never by client libraries): a 7th
    // element with the proxy's and the backend's time and the shard.
    let _: Option<String> = con.get("{t}a").unwrap();
    let detailed: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1)
        .arg("DETAILS")
        .query(&mut con)
        .unwrap();
    let redis::Value::Array(entry) = &detailed[0] else {
        panic!("{detailed:?}")
    };
    assert_eq!(entry.len(), 7, "{entry:?}");
    let redis::Value::Int(total) = entry[2] else {
        panic!("{entry:?}")
    };
    let d: std::collections::HashMap<String, redis::Value> =
        redis::FromRedisValue::from_redis_value(entry[6].clone()).unwrap();
    let int = |k: &str| match d.get(k) {
        Some(redis::Value::Int(n)) => *n,
        other => panic!("{k}: {other:?}"),
    };
    assert!(int("backend_us") > 0 && int("backend_us") <= total, "{d:?}");
    assert_eq!(int("proxy_us") + int("backend_us"), total);
    let shard = format!("s{}", c.shard_of("{t}a"));
    assert_eq!(
        d.get("shard"),
        Some(&redis::Value::BulkString(shard.into_bytes()))
    );
    // redis-cli prints the seventh element like any other.
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &c.proxy_port.to_string(),
            "slowlog",
            "get",
            "1",
            "details",
        ])
        .output()
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("proxy_us") && text.contains("backend_us"),
        "{text}"
    );
    // Ids keep counting; every entry has Redis' six elements in RESP3 too.
    let mut con3 = c.client_resp3().get_connection().unwrap();
    let entries = slowlog_get(&mut con3, -1);
    assert_eq!(entries.len(), 3);
    assert!(entries[0].0 > entries[2].0);
}

#[test]
fn memory_stats_sums_every_shard() {
    let c = Cluster::start(Spec {
        shards: 3,
        ..Spec::default()
    });
    let mut con = c.conn();
    for i in 0..30 {
        let _: () = con.set(format!("m{i}"), i).unwrap();
    }
    let direct: i64 = c
        .primaries
        .iter()
        .map(|p| {
            let m: std::collections::HashMap<String, redis::Value> = redis::cmd("MEMORY")
                .arg("STATS")
                .query(&mut p.connection())
                .unwrap();
            match m.get("keys.count") {
                Some(redis::Value::Int(n)) => *n,
                other => panic!("{other:?}"),
            }
        })
        .sum();
    assert_eq!(direct, 30);
    for mut con in [c.conn(), c.client_resp3().get_connection().unwrap()] {
        let m: std::collections::HashMap<String, redis::Value> =
            redis::cmd("MEMORY").arg("STATS").query(&mut con).unwrap();
        assert_eq!(m.get("keys.count"), Some(&redis::Value::Int(30)), "{m:?}");
        assert!(matches!(m.get("total.allocated"), Some(redis::Value::Int(n)) if *n > 1_000_000));
        assert!(m.contains_key("db.0"), "{m:?}");
    }
    // MEMORY USAGE still goes to the key's shard.
    let usage: Option<i64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg("m1")
        .query(&mut con)
        .unwrap();
    assert!(usage.is_some_and(|n| n > 0));
}

//! PostgreSQL shards give Redis 7.0's replies for whole classes of input
//! (issue 15, "Replies that differ from Redis 7.0"): every float form that
//! Redis' `strtold`-based parser accepts or refuses, the order in which
//! commands with options check syntax, key, type and values, keys and
//! fields of any length, and strings written over hashes. Each test sends
//! the same commands to a real redis-server and, through the proxy, to a
//! postgres shard, and requires byte-identical replies (RESP2 and RESP3).

#[path = "../common/mod.rs"]
mod common;
mod numbers;

use std::collections::HashSet;

use common::RedisServer;
use common::cluster::{Cluster, Spec};
use common::postgres::PgServer;
use common::resp::FrameConn as Raw;

/// One postgres shard, nothing else: every key lands on it.
fn pg_only() -> Cluster {
    Cluster::start(Spec {
        shards: 0,
        pg_shards: 1,
        ..Spec::default()
    })
}

/// Pipelines `cmds` to Redis and to the proxy (both protocols); every reply
/// must be byte-identical. Returns Redis' replies (RESP2).
fn same_replies(proxy_port: u16, redis: &RedisServer, cmds: &[Vec<String>]) -> Vec<Vec<u8>> {
    same_replies_in(proxy_port, redis, cmds, 200)
}

/// [`same_replies`], pipelining `per_write` commands at a time (1 for
/// megabyte-sized arguments and replies).
fn same_replies_in(
    proxy_port: u16,
    redis: &RedisServer,
    cmds: &[Vec<String>],
    per_write: usize,
) -> Vec<Vec<u8>> {
    let mut first = Vec::new();
    for resp3 in [false, true] {
        let mut p = Raw::connect(proxy_port);
        let mut r = Raw::connect(redis.port);
        if resp3 {
            p.call(&["HELLO", "3"]);
            r.call(&["HELLO", "3"]);
        }
        for chunk in cmds.chunks(per_write) {
            let refs: Vec<&[String]> = chunk.iter().map(Vec::as_slice).collect();
            let want = r.pipeline(&refs);
            let got = p.pipeline(&refs);
            for ((cmd, w), g) in chunk.iter().zip(&want).zip(&got) {
                if g != w {
                    let short = |b: &[u8]| {
                        let text = String::from_utf8_lossy(b);
                        text.chars().take(300).collect::<String>()
                    };
                    let cmd: Vec<String> = cmd.iter().map(|a| short(a.as_bytes())).collect();
                    panic!(
                        "{cmd:?} (resp3: {resp3}):\n postgres: {}\n redis:    {}",
                        short(g),
                        short(w)
                    );
                }
            }
            if !resp3 {
                first.extend(want);
            }
        }
    }
    first
}

fn cmd(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

#[test]
fn options_are_checked_in_redis_order() {
    let c = pg_only();
    let redis = RedisServer::start();
    let max = "9223372036854775807";
    let min = "-9223372036854775808";
    let mut cmds: Vec<Vec<String>> = ["FLUSHALL", "SET s v", "HSET h f v", "SET t v EX 1000"]
        .iter()
        .map(|l| l.split(' ').map(str::to_owned).collect())
        .collect();
    let key_states = ["missing", "s", "h", "t"];
    // GETEX: every option form on every kind of key.
    let getex_opts: Vec<Vec<&str>> = vec![
        vec![],
        vec!["EX", "abc"],
        vec!["EX", "0"],
        vec!["EX", "-1"],
        vec!["EX", max],
        vec!["PX", max],
        vec!["EXAT", max],
        vec!["PXAT", "0"],
        vec!["EX", "1.5"],
        vec!["PX", ""],
        vec!["EX"],
        vec!["BOGUS"],
        vec!["EX", "1", "PX", "2"],
        vec!["EX", "1", "EX", "abc"],
        vec!["PERSIST", "EX", "1"],
        vec!["EX", "1", "PERSIST"],
        vec!["NX"],
        vec!["KEEPTTL"],
        vec!["GET"],
        vec!["persist\0junk"],
        vec!["ex\0", "100"],
        vec!["PERSIST"],
    ];
    for k in key_states {
        for o in &getex_opts {
            let mut c = vec!["GETEX", k];
            c.extend(o.iter().copied());
            cmds.push(cmd(&c));
            cmds.push(cmd(&["TYPE", k]));
        }
    }
    // SET: expiry values against NX/XX/GET on every kind of key.
    let set_opts: Vec<Vec<&str>> = vec![
        vec!["NX", "PX", max],
        vec!["XX", "PX", max],
        vec!["GET", "PX", max],
        vec!["NX", "EX", max],
        vec!["XX", "EX", "abc"],
        vec!["GET", "EX", "0"],
        vec!["NX", "GET", "EX", "-5"],
        vec!["NX", "EXAT", max],
        vec!["XX", "PXAT", max],
        vec!["GET"],
        vec!["NX", "GET"],
        vec!["XX", "GET", "KEEPTTL"],
        vec!["EX", "10", "EX", "20"],
        vec!["PX", "10", "EX", "20"],
        vec!["KEEPTTL", "PERSIST"],
        vec!["GET", "GET"],
        vec!["NX", "XX"],
        vec!["nx\0junk"],
        vec!["EX", "10\0"],
        vec!["XX", "PX", "100000"],
    ];
    for k in key_states {
        for o in &set_opts {
            for c in [vec!["SET", "s", "v"], vec!["HSET", "h", "f", "v"]] {
                cmds.push(cmd(&c));
            }
            cmds.push(cmd(&["SET", "t", "v", "EX", "1000"]));
            cmds.push(cmd(&["DEL", "missing"]));
            let mut c = vec!["SET", k, "new"];
            c.extend(o.iter().copied());
            cmds.push(cmd(&c));
            cmds.push(cmd(&["TYPE", k]));
            cmds.push(cmd(&["GET", "s"]));
        }
    }
    cmds.push(cmd(&["DEL", "missing"]));
    cmds.push(cmd(&["SET", "t", "v", "EX", "1000"]));
    // The EXPIRE family: numbers, overflow and option conflicts before the
    // key, NX/XX/GT/LT after it.
    for name in ["EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT"] {
        for k in key_states {
            for o in [
                vec!["abc"],
                vec![max],
                vec![min],
                vec!["-1", "GT"],
                vec!["10", "BOGUS"],
                vec!["abc", "BOGUS"],
                vec!["10", "NX", "XX"],
                vec!["10", "GT", "LT"],
                vec!["abc", "GT", "LT"],
                vec!["10", "nx\0junk"],
                vec!["10", "NX", "NX"],
                vec!["99999999999", "GT"],
                vec!["99999999999", "LT"],
                vec!["99999999999", "XX"],
                vec!["99999999999", "NX"],
            ] {
                let mut c = vec![name, k];
                c.extend(o.iter().copied());
                cmds.push(cmd(&c));
                cmds.push(cmd(&["PERSIST", k]));
                cmds.push(cmd(&["EXISTS", k]));
            }
            cmds.push(cmd(&["SET", "s", "v"]));
            cmds.push(cmd(&["HSET", "h", "f", "v"]));
            cmds.push(cmd(&["SET", "t", "v", "EX", "1000"]));
        }
    }
    // Other commands whose arguments Redis checks before the key or type.
    for line in [
        "SETEX missing abc v",
        "SETEX missing 0 v",
        "SETEX s 9223372036854775807 v",
        "PSETEX s 9223372036854775807 v",
        "PSETEX h 9223372036854775807 v",
        "INCRBY h abc",
        "DECRBY h -9223372036854775808",
        "HINCRBY s f abc",
        "HINCRBY s f 1",
        "HINCRBYFLOAT s f inf",
        "HINCRBYFLOAT s f abc",
        "GETRANGE h a 1",
        "GETRANGE h 0 1",
        "SETRANGE h -1 x",
        "SETRANGE h 536870912 x",
        "SETRANGE h 0 ",
        "SETRANGE missing 536870912 x",
        "SETRANGE missing 0 ",
        "GETSET h v",
        "APPEND h v",
        "HSETNX s f v",
        "HDEL s f",
        "TTL h",
        "PTTL missing",
        "SCAN 0 COUNT 0",
        "SCAN 0 COUNT abc",
        "SCAN 0 COUNT -1",
        "SCAN 0 MATCH",
        "SCAN 0 BOGUS 1",
        "SCAN 0 TYPE",
        "SCAN abc",
        "SCAN 0 COUNT 100 TYPE hash",
        "SCAN 0 COUNT 100 MATCH h",
        "SCAN 0 COUNT 100 TYPE string MATCH t",
        "SCAN 0 COUNT 100 type\0x string MATCH t",
    ] {
        cmds.push(line.split(' ').map(str::to_owned).collect());
    }
    let replies = same_replies(c.proxy_port, &redis, &cmds);
    let i = cmds
        .iter()
        .position(|x| x == &cmd(&["GETEX", "missing", "EX", "abc"]))
        .unwrap();
    assert_eq!(replies[i], b"$-1\r\n");
}

/// Keys and hash fields of any length: around the old btree limit (about
/// 2.7 KB), 10 KB and 1 MB, through every command postgres shards
/// implement, and found again by SCAN, KEYS and RANDOMKEY.
#[test]
fn keys_and_fields_of_any_length() {
    let c = pg_only();
    let redis = RedisServer::start();
    let mut cmds = vec![cmd(&["FLUSHALL"])];
    let lengths = [1024, 2700, 2713, 3000, 10 * 1024, 1024 * 1024];
    let mut long_keys = HashSet::new();
    for (i, len) in lengths.iter().enumerate() {
        let k = format!("{i}{}", "k".repeat(len - 1));
        let k2 = format!("{i}{}", "n".repeat(len - 1));
        let h = format!("{i}{}", "h".repeat(len - 1));
        let f = format!("{i}{}", "f".repeat(len - 1));
        long_keys.extend([k.clone(), k2.clone(), h.clone()]);
        for c in [
            vec!["SET", &k, "v"],
            vec!["GET", &k],
            vec!["SET", &k, "v2", "XX", "GET"],
            vec!["SET", &k, "v3", "NX"],
            vec!["APPEND", &k, "x"],
            vec!["STRLEN", &k],
            vec!["SETRANGE", &k, "1", "y"],
            vec!["GETRANGE", &k, "0", "-1"],
            vec!["EXISTS", &k, &k2],
            vec!["TYPE", &k],
            vec!["EXPIRE", &k, "1000"],
            vec!["TTL", &k],
            vec!["PERSIST", &k],
            vec!["INCR", &k2],
            vec!["INCRBYFLOAT", &k2, "1.5"],
            vec!["MSET", &k, "m1", &k2, "m2"],
            vec!["MGET", &k, &k2, "nope"],
            vec!["MSETNX", &k, "x", "other"],
            vec!["GETSET", &k, "g"],
            vec!["GETEX", &k, "PX", "100000"],
            vec!["GETEX", &k, "PERSIST"],
            vec!["SETNX", &k, "n"],
            vec!["HSET", &h, &f, "v", "short", "s"],
            vec!["HGET", &h, &f],
            vec!["HMGET", &h, &f, "short", "nope"],
            vec!["HSET", &h, &f, "v2"],
            vec!["HSETNX", &h, &f, "x"],
            vec!["HEXISTS", &h, &f],
            vec!["HSTRLEN", &h, &f],
            vec!["HLEN", &h],
            vec!["HINCRBY", &h, "n", "5"],
            vec!["HINCRBYFLOAT", &h, "fl", "0.5"],
            // HMGET, not HGETALL: Redis keeps a hash with a field over 64
            // bytes as a hashtable, in its own order.
            vec!["HMGET", &h, &f, "short", "n", "fl"],
            vec!["HDEL", &h, &f, "nope"],
            vec!["HLEN", &h],
            vec!["SET", &h, "string now"],
            vec!["HLEN", &h],
            vec!["HSET", &h, &f, "again"],
            vec!["HMGET", &h, &f, "short"],
            vec!["GETDEL", &k],
            vec!["DEL", &k2],
            vec!["EXISTS", &k, &k2, &h],
            vec!["SET", &k, "kept"],
            vec!["SET", &k2, "1"],
        ] {
            cmds.push(cmd(&c));
        }
    }
    cmds.push(cmd(&["DBSIZE"]));
    same_replies_in(c.proxy_port, &redis, &cmds, 1);
    // The keys are there, once each, for SCAN, KEYS and RANDOMKEY.
    let mut con = c.conn();
    let mut scanned = HashSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(2)
            .query(&mut con)
            .unwrap();
        for k in batch {
            assert!(scanned.insert(k), "SCAN returned a key twice");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(scanned, long_keys);
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    assert_eq!(keys.into_iter().collect::<HashSet<_>>(), long_keys);
    let random: String = redis::cmd("RANDOMKEY").query(&mut con).unwrap();
    assert!(long_keys.contains(&random));
    // Lookups use the digest index, not a scan of the table.
    let plan = c.pg[0].query(
        "EXPLAIN SELECT value FROM kv WHERE kd = sha256('\\x6b'::bytea) AND key = '\\x6b'::bytea",
    );
    assert!(plan.contains("kv_pkey"), "{plan}");
}

/// A database created by an earlier version (migrations 0001 and 0002,
/// keys indexed by a btree) is upgraded in place by the proxy at startup:
/// strings, TTLs, hashes and their field order survive, and long keys work
/// afterwards.
#[test]
fn a_database_of_an_earlier_version_is_upgraded_in_place() {
    use shardgate::router::placement::key_hash;

    let pg = PgServer::start();
    let rt = common::ProxyRuntime::new(2);
    let old_dir = common::TempDir::new("old-migrations");
    for name in ["0001_kv_schema.sql", "0002_key_write_locks.sql"] {
        let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(name);
        std::fs::copy(from, old_dir.path().join(name)).unwrap();
    }
    rt.block_on(async {
        let pool = sqlx::PgPool::connect(&pg.dsn()).await.unwrap();
        let old = sqlx::migrate::Migrator::new(old_dir.path()).await.unwrap();
        old.run(&pool).await.unwrap();
        let slot = |k: &str| i32::try_from(key_hash(k.as_bytes()) % 16384).unwrap();
        for (k, t, v, e) in [
            ("s", 0i16, Some("v"), None),
            ("t", 0, Some("x"), Some(i64::MAX / 2)),
            ("h", 1, None, None),
            ("gone", 0, Some("old"), Some(1i64)),
        ] {
            sqlx::query(
                "INSERT INTO kv (key, slot, type, value, expires_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(k.as_bytes())
            .bind(slot(k))
            .bind(t)
            .bind(v.map(str::as_bytes))
            .bind(e)
            .execute(&pool)
            .await
            .unwrap();
        }
        for (f, v) in [("z", "1"), ("a", "2"), ("m", "3")] {
            sqlx::query("INSERT INTO kv_hash (key, field, value) VALUES ('h', $1, $2)")
                .bind(f.as_bytes())
                .bind(v.as_bytes())
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    });
    let map = std::env::temp_dir().join(format!("shardgate-upgrade-{}.yaml", std::process::id()));
    std::fs::write(
        &map,
        format!(
            "regions:\n  - name: us\noptions:\n  connect_timeout_ms: 2000\nshards:\n  - name: pgs\n    kind: postgres\n    region: us\n    primary: {}\n",
            pg.dsn()
        ),
    )
    .unwrap();
    let running = rt
        .block_on(shardgate::app::start(shardgate::app::ServeConfig {
            map_path: map.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            client: Default::default(),
            tls: None,
            admin: None,
            state_dir: None,
            rebalance_sources: 4,
            fleet: None,
            readiness: None,
            ready_share: 1.0,
        }))
        .expect("the proxy upgrades the database and starts");
    let _ = std::fs::remove_file(&map);
    assert_eq!(
        pg.query("SELECT count(*) FROM _sqlx_migrations"),
        shardgate::backend::pg::MIGRATOR.iter().count().to_string()
    );
    let mut p = Raw::connect(running.addr.port());
    assert_eq!(p.call(&["GET", "s"]), b"$1\r\nv\r\n");
    assert_eq!(p.call(&["GET", "gone"]), b"$-1\r\n");
    assert_eq!(p.call(&["TTL", "t"])[0], b':');
    assert_ne!(p.call(&["TTL", "t"]), b":-1\r\n");
    assert_eq!(
        p.call(&["HGETALL", "h"]),
        b"*6\r\n$1\r\nz\r\n$1\r\n1\r\n$1\r\na\r\n$1\r\n2\r\n$1\r\nm\r\n$1\r\n3\r\n"
    );
    assert_eq!(p.call(&["HSET", "h", "a", "9", "b", "4"]), b":1\r\n");
    assert_eq!(p.call(&["HLEN", "h"]), b":4\r\n");
    assert_eq!(p.call(&["SET", "s", "v2"]), b"+OK\r\n");
    assert_eq!(p.call(&["DBSIZE"]), b":3\r\n");
    let long = "L".repeat(100_000);
    assert_eq!(p.call(&["SET", &long, "big"]), b"+OK\r\n");
    assert_eq!(p.call(&["HSET", "h", &long, "big"]), b":1\r\n");
    assert_eq!(p.call(&["GET", &long]), b"$3\r\nbig\r\n");
    assert_eq!(p.call(&["DEL", "h"]), b":1\r\n");
    assert_eq!(pg.query("SELECT count(*) FROM kv_hash"), "0");
    rt.block_on(running.shutdown());
}

/// No string write leaves a hash's fields behind, on a live hash (the
/// replies must match Redis) or an expired one not yet reaped: after every
/// command, every `kv_hash` row belongs to a live-or-expired key of type
/// hash.
#[test]
fn string_writes_over_hashes_leave_no_fields_behind() {
    let c = pg_only();
    let redis = RedisServer::start();
    let stray = || {
        c.pg[0].query(
            "SELECT count(*) FROM kv_hash h WHERE NOT EXISTS \
             (SELECT 1 FROM kv k WHERE k.kd = h.kd AND k.type = 1)",
        )
    };
    let writes: &[&[&str]] = &[
        &["SET", "K", "s"],
        &["SET", "K", "s", "NX"],
        &["SET", "K", "s", "XX"],
        &["SET", "K", "s", "GET"],
        &["SET", "K", "s", "KEEPTTL"],
        &["SET", "K", "s", "EX", "100"],
        &["SET", "K", "s", "PXAT", "1"],
        &["SETNX", "K", "s"],
        &["SETEX", "K", "100", "s"],
        &["PSETEX", "K", "100000", "s"],
        &["GETSET", "K", "s"],
        &["MSET", "K", "s", "other", "o"],
        &["MSETNX", "K", "s", "fresh", "f"],
        &["APPEND", "K", "s"],
        &["SETRANGE", "K", "2", "s"],
        &["INCR", "K"],
        &["DECRBY", "K", "3"],
        &["INCRBYFLOAT", "K", "1.5"],
        &["GETDEL", "K"],
        &["GETEX", "K", "EX", "100"],
    ];
    let mut p = Raw::connect(c.proxy_port);
    let mut r = Raw::connect(redis.port);
    for (i, w) in writes.iter().enumerate() {
        // A live hash: Redis' replies (WRONGTYPE or an overwrite).
        let key = format!("live{i}");
        let args: Vec<&str> = w
            .iter()
            .map(|a| if *a == "K" { key.as_str() } else { a })
            .collect();
        for c in [
            vec!["DEL", "fresh", "other"],
            vec!["HSET", &key, "f", "1", "g", "2"],
        ] {
            assert_eq!(p.call(&c)[0], r.call(&c)[0]);
        }
        for c in [args.clone(), vec!["TYPE", &key], vec!["HGETALL", &key]] {
            let (got, want) = (p.call(&c), r.call(&c));
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "{c:?}"
            );
        }
        assert_eq!(stray(), "0", "{args:?} over a live hash left fields");
        // An expired hash whose row the reaper has not deleted yet.
        let key = format!("expired{i}");
        let args: Vec<&str> = w
            .iter()
            .map(|a| if *a == "K" { key.as_str() } else { a })
            .collect();
        assert_eq!(p.call(&["DEL", "fresh", "other"])[0], b':');
        assert_eq!(p.call(&["HSET", &key, "f", "1"]), b":1\r\n");
        c.pg[0].query(&format!(
            "UPDATE kv SET expires_at = 1 WHERE kd = sha256(convert_to('{key}', 'UTF8'))"
        ));
        let reply = p.call(&args);
        assert!(
            matches!(reply[0], b'+' | b':' | b'$'),
            "{args:?}: {}",
            String::from_utf8_lossy(&reply)
        );
        assert_eq!(stray(), "0", "{args:?} over an expired hash left fields");
        // A hash made there later starts without the old fields.
        assert_eq!(p.call(&["DEL", &key])[0], b':');
        assert_eq!(p.call(&["HSET", &key, "x", "1"]), b":1\r\n");
        assert_eq!(p.call(&["HLEN", &key]), b":1\r\n");
    }
}

/// HGETALL (and HKEYS, HVALS) answer in insertion order. Redis does too
/// while a hash is a listpack (at most 512 fields, fields and values of at
/// most 64 bytes: `hash-max-listpack-*`); past that it converts the hash to
/// a hashtable for good and answers in its own order, which differs from
/// run to run. The README documents the difference; this test pins both.
#[test]
fn hgetall_order_is_insertion_order_as_redis_listpacks() {
    let c = pg_only();
    let redis = RedisServer::start();
    // Small hashes: the same order as Redis, after updates, deletes and
    // re-adds.
    let small: Vec<Vec<String>> = [
        "HSET h z 1 a 2 m 3",
        "HSET h a 9",
        "HDEL h z",
        "HSET h z 4 b 5",
        "HGETALL h",
        "HKEYS h",
        "HVALS h",
        "HINCRBY h new 1",
        "HGETALL h",
    ]
    .iter()
    .map(|l| l.split(' ').map(str::to_owned).collect())
    .collect();
    same_replies(c.proxy_port, &redis, &small);
    // Large hashes: the same pairs; the postgres shard keeps insertion order.
    let mut con = c.conn();
    let mut rcon = redis.connection();
    let fields: Vec<(String, String)> = (0..600)
        .map(|i| (format!("f{i}"), format!("{i}")))
        .collect();
    let wide = [
        ("a".to_owned(), "x".repeat(65)),
        ("b".to_owned(), "y".to_owned()),
    ];
    for (key, pairs) in [("big", &fields[..]), ("wide", &wide[..])] {
        let _: () = redis::cmd("HSET")
            .arg(key)
            .arg(pairs)
            .query(&mut con)
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(key)
            .arg(pairs)
            .query(&mut rcon)
            .unwrap();
        let got: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query(&mut con).unwrap();
        let want: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query(&mut rcon).unwrap();
        assert_eq!(got, pairs.to_vec(), "insertion order");
        let sorted = |mut v: Vec<(String, String)>| {
            v.sort();
            v
        };
        assert_eq!(sorted(got), sorted(want));
        let encoding: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(key)
            .query(&mut rcon)
            .unwrap();
        assert_eq!(encoding, "hashtable");
    }
}

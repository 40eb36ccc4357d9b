//! `SELECT n` through the proxy: each shard's database n, on every kind of
//! backend connection (multiplexed, dedicated for MULTI/EXEC, blocking
//! commands and scripts), RESET and new connections back in database 0,
//! Redis' errors, pub/sub unaffected, keys of every database moved by a
//! rebalance, and PostgreSQL shards refusing it.

mod common;

use std::time::Duration;

use common::RedisServer;
use common::cluster::{Cluster, Spec};
use redis::Commands;

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("dbkey:{i}")).collect()
}

fn select(c: &mut redis::Connection, db: i64) -> redis::RedisResult<()> {
    redis::cmd("SELECT").arg(db).query(c)
}

/// What a shard holds in database `db` for `key`.
fn on_shard(server: &RedisServer, db: i64, key: &str) -> Option<String> {
    let mut c = server.connection();
    select(&mut c, db).unwrap();
    c.get(key).unwrap()
}

#[test]
fn select_reads_and_writes_each_shards_database() {
    let c = Cluster::start(Spec::default());
    let mut conn = c.conn();
    let ks = keys(40);
    for k in &ks {
        let _: () = conn.set(k, format!("zero-{k}")).unwrap();
    }
    select(&mut conn, 3).unwrap();
    for k in &ks {
        let v: Option<String> = conn.get(k).unwrap();
        assert_eq!(v, None, "database 3 starts empty");
        let _: () = conn.set(k, format!("three-{k}")).unwrap();
    }
    // Every key is in its shard's database 3, and database 0 kept its own.
    for k in &ks {
        let s = &c.primaries[c.shard_of(k)];
        assert_eq!(on_shard(s, 3, k), Some(format!("three-{k}")), "{k}");
        assert_eq!(on_shard(s, 0, k), Some(format!("zero-{k}")), "{k}");
    }
    // Split commands, fan-outs and the keyspace in database 3.
    let got: Vec<String> = conn.mget(&ks).unwrap();
    assert_eq!(
        got,
        ks.iter().map(|k| format!("three-{k}")).collect::<Vec<_>>()
    );
    let n: usize = redis::cmd("DBSIZE").query(&mut conn).unwrap();
    assert_eq!(n, ks.len());
    let mut scanned: Vec<String> = conn.scan().unwrap().map(|k| k.unwrap()).collect();
    scanned.sort();
    let mut want = ks.clone();
    want.sort();
    assert_eq!(scanned, want);
    let info: String = redis::cmd("INFO").arg("keyspace").query(&mut conn).unwrap();
    assert!(
        info.contains("db0:keys=40,") && info.contains("db3:keys=40,"),
        "{info}"
    );
    let me: String = redis::cmd("CLIENT").arg("INFO").query(&mut conn).unwrap();
    assert!(me.contains(" db=3 "), "{me}");
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
    assert!(list.contains(" db=3 "), "{list}");
    // FLUSHDB empties database 3 only.
    let _: () = redis::cmd("FLUSHDB").query(&mut conn).unwrap();
    let n: usize = redis::cmd("DBSIZE").query(&mut conn).unwrap();
    assert_eq!(n, 0);
    select(&mut conn, 0).unwrap();
    let n: usize = redis::cmd("DBSIZE").query(&mut conn).unwrap();
    assert_eq!(n, ks.len());
    // Another client starts in database 0.
    let mut other = c.conn();
    let v: Option<String> = other.get(&ks[0]).unwrap();
    assert_eq!(v, Some(format!("zero-{}", ks[0])));
}

#[test]
fn transactions_scripts_and_blocking_commands_use_the_selected_database() {
    let c = Cluster::start(Spec::default());
    let mut conn = c.conn();
    select(&mut conn, 5).unwrap();
    // MULTI/EXEC with WATCH.
    let _: () = redis::cmd("WATCH").arg("{t}a").query(&mut conn).unwrap();
    let r: Vec<String> = redis::pipe()
        .atomic()
        .set("{t}a", "1")
        .ignore()
        .set("{t}b", "2")
        .ignore()
        .get("{t}a")
        .query(&mut conn)
        .unwrap();
    assert_eq!(r, vec!["1".to_owned()]);
    let s = &c.primaries[c.shard_of("{t}a")];
    assert_eq!(on_shard(s, 5, "{t}b"), Some("2".into()));
    assert_eq!(on_shard(s, 0, "{t}b"), None);
    // A script sees database 5.
    let v: Option<String> = redis::cmd("EVAL")
        .arg("return redis.call('GET', KEYS[1])")
        .arg(1)
        .arg("{t}a")
        .query(&mut conn)
        .unwrap();
    assert_eq!(v, Some("1".into()));
    // A blocking pop in database 5 is woken by a push in database 5 only.
    let mut pusher = c.conn();
    let waiter = std::thread::spawn({
        let client = c.client();
        move || {
            let mut w = client.get_connection().unwrap();
            select(&mut w, 5).unwrap();
            let r: Option<(String, String)> =
                redis::cmd("BLPOP").arg("dbq").arg(5).query(&mut w).unwrap();
            r
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let _: () = pusher.rpush("dbq", "in-db0").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    select(&mut pusher, 5).unwrap();
    let _: () = pusher.rpush("dbq", "in-db5").unwrap();
    let got = waiter.join().unwrap();
    assert_eq!(got, Some(("dbq".into(), "in-db5".into())));
    let s = &c.primaries[c.shard_of("dbq")];
    let mut direct = s.connection();
    let left: Vec<String> = direct.lrange("dbq", 0, -1).unwrap();
    assert_eq!(
        left,
        vec!["in-db0".to_owned()],
        "database 0's list untouched"
    );
}

#[test]
fn reset_and_errors_are_redis_own() {
    let c = Cluster::start(Spec::default());
    let mut raw = c.raw();
    raw.send(b"SELECT 2\r\nSET rk two\r\nHELLO 3\r\n");
    assert_eq!(raw.read_exactly(10), b"+OK\r\n+OK\r\n");
    raw.read_until(b"modules\r\n*0\r\n");
    // HELLO keeps the database (as Redis); RESET goes back to 0.
    raw.send(b"GET rk\r\nRESET\r\nGET rk\r\n");
    assert_eq!(raw.read_exactly(22), b"$3\r\ntwo\r\n+RESET\r\n$-1\r\n");
    raw.send(b"SELECT 16\r\nSELECT -1\r\nSELECT x\r\nSELECT 99999999999\r\n");
    let want = b"-ERR DB index is out of range\r\n-ERR DB index is out of range\r\n-ERR value is not an integer or out of range\r\n-ERR DB index is out of range\r\n";
    assert_eq!(raw.read_exactly(want.len()), want);
    // Still in database 0 after refused SELECTs.
    raw.send(b"GET rk\r\nSWAPDB 0 1\r\n");
    let got = raw.read_until(b"uses them\r\n");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with(
            "$-1\r\n-ERR command 'swapdb' is not supported by shardgate: SWAPDB would swap"
        ),
        "{text}"
    );
}

#[test]
fn pubsub_is_database_independent() {
    let c = Cluster::start(Spec::default());
    let mut sub = c.client().get_connection().unwrap();
    let mut ps = sub.as_pubsub();
    ps.subscribe("news").unwrap();
    ps.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut publisher = c.conn();
    select(&mut publisher, 7).unwrap();
    let n: i64 = publisher.publish("news", "hello").unwrap();
    assert_eq!(n, 1);
    let msg = ps.get_message().unwrap();
    assert_eq!(msg.get_payload::<String>().unwrap(), "hello");
}

#[test]
fn postgres_shards_refuse_other_databases() {
    let c = Cluster::start(Spec {
        shards: 1,
        pg_shards: 1,
        ..Spec::default()
    });
    let mut conn = c.conn();
    select(&mut conn, 0).unwrap();
    let e = select(&mut conn, 1).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("DB index is out of range") && text.contains("PostgreSQL"),
        "{text}"
    );
}

/// A rebalance moves the keys of every database, each into the same
/// database on its new shard, and verification looks at every database.
#[test]
fn rebalance_moves_every_database() {
    use common::rebalance::{Proxy, map_yaml, owner_name, table_of, wait_done, write};
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let dir = common::TempDir::new("databases-rebalance");
    let all: Vec<(&str, &RedisServer)> = ["s0", "s1", "s2"].into_iter().zip(&servers).collect();
    let m1 = write(dir.path(), "m1.yaml", &map_yaml(&all[..2]));
    let m2 = write(dir.path(), "m2.yaml", &map_yaml(&all));
    let proxy = Proxy::start(dir.path(), &m1);
    let mut c = proxy.client().get_connection().unwrap();
    let ks = keys(600);
    for k in &ks {
        let _: () = c.set(k, "zero").unwrap();
    }
    select(&mut c, 4).unwrap();
    for k in &ks {
        let _: () = c.set_ex(k, "four", 1000).unwrap();
    }
    let mut admin = proxy.admin();
    // Slowed down, so that most keys of database 4 move when a command
    // touches them (moves on touch use the client's database).
    let started = admin.rebalance_file(&m2, 20);
    assert!(started.starts_with("OK"), "{started}");
    // COPY into database 0 (from 4) while the slots move: a key whose slot
    // is migrating answers TRYAGAIN (its database-0 copy may still be on
    // the old shard, and the mover would bring it over the new copy);
    // retried once the slots moved, every copy stays.
    let copy = |c: &mut redis::Connection, k: &str| -> redis::RedisResult<i64> {
        redis::cmd("COPY")
            .arg(k)
            .arg(k)
            .arg("DB")
            .arg(0)
            .arg("REPLACE")
            .query(c)
    };
    // (Once the mover has published its first window as migrating.)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while admin.progress()["slots_migrating"] == "0" {
        assert!(std::time::Instant::now() < deadline, "no window migrates");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut retry = Vec::new();
    for k in &ks[..40] {
        match copy(&mut c, k) {
            Ok(n) => assert_eq!(n, 1, "{k}"),
            Err(e) => {
                assert_eq!(e.code(), Some("TRYAGAIN"), "{k}: {e}");
                retry.push(k);
            }
        }
    }
    assert!(!retry.is_empty(), "some of 40 keys are in migrating slots");
    for k in &ks {
        let v: String = c.get(k).unwrap();
        assert_eq!(v, "four", "{k} read during the move");
    }
    assert_eq!(admin.text(&[b"THROTTLE", b"0"]), "OK");
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    for k in &retry {
        assert_eq!(copy(&mut c, k).unwrap(), 1, "{k} once its slot moved");
    }
    select(&mut c, 0).unwrap();
    for k in &ks[..40] {
        let v: String = c.get(k).unwrap();
        assert_eq!(v, "four", "{k}: the copy into database 0 stayed");
    }
    select(&mut c, 4).unwrap();
    let t2 = table_of(&m2);
    let mut moved = 0;
    for k in &ks {
        let owner = owner_name(&t2, k);
        for (i, (name, s)) in all.iter().enumerate() {
            let here = *name == owner;
            assert_eq!(on_shard(s, 4, k).is_some(), here, "{k} in db 4 on s{i}");
            assert_eq!(on_shard(s, 0, k).is_some(), here, "{k} in db 0 on s{i}");
        }
        moved += usize::from(owner == "s2");
        let v: String = c.get(k).unwrap();
        assert_eq!(v, "four");
        let ttl: i64 = c.ttl(k).unwrap();
        assert!(ttl > 900, "{k}: TTL survived the move ({ttl})");
    }
    assert!(moved > 100, "some keys moved to s2 ({moved})");
}

/// The rebalance barrier drains the multiplexed connections of every
/// database, not only database 0's: a write to database 5 routed before a
/// window was published has run on the source before its keys move. Seen
/// on the shards while the first window migrates: the proxy's database-5
/// connection to that window's source, which carried the client's SETs,
/// has since carried the barrier's PING (before the fix its last command
/// stayed `set` on every shard).
#[test]
fn the_rebalance_barrier_drains_every_databases_connections() {
    use common::rebalance::{Proxy, map_yaml, wait_done, write};
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let dir = common::TempDir::new("databases-barrier");
    let all: Vec<(&str, &RedisServer)> = ["s0", "s1", "s2"].into_iter().zip(&servers).collect();
    let m1 = write(dir.path(), "m1.yaml", &map_yaml(&all[..2]));
    let m2 = write(dir.path(), "m2.yaml", &map_yaml(&all));
    let proxy = Proxy::start(dir.path(), &m1);
    let mut c = proxy.client().get_connection().unwrap();
    select(&mut c, 5).unwrap();
    for k in keys(400) {
        let _: () = c.set(&k, "five").unwrap();
    }
    // The last command of each of the proxy's database-5 connections to
    // s0 and s1 that carry clients' requests (not the mover's).
    let last_commands = || -> Vec<Vec<String>> {
        all[..2]
            .iter()
            .map(|(_, server)| {
                let mut direct = server.client().get_connection().unwrap();
                let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut direct).unwrap();
                list.lines()
                    .filter(|l| l.contains(" db=5 "))
                    .filter_map(|l| l.split(" cmd=").nth(1)?.split(' ').next())
                    .filter(|cmd| *cmd == "set" || *cmd == "ping")
                    .map(str::to_owned)
                    .collect()
            })
            .collect()
    };
    assert_eq!(last_commands(), vec![vec!["set".to_owned()]; 2]);
    let mut admin = proxy.admin();
    // Slowed down so that the first window stays migrating a while.
    let started = admin.rebalance_file(&m2, 20);
    assert!(started.starts_with("OK"), "{started}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while admin.progress()["slots_migrating"] == "0" {
        assert!(std::time::Instant::now() < deadline, "no window migrates");
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = last_commands();
    assert!(
        seen.iter().any(|s| s == &["ping"]),
        "no source's database-5 connection was drained: {seen:?}"
    );
    assert_eq!(admin.text(&[b"THROTTLE", b"0"]), "OK");
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    for k in keys(400) {
        let v: String = c.get(&k).unwrap();
        assert_eq!(v, "five", "{k}");
    }
}

/// The near cache, coalesced reads and CLIENT TRACKING's connections hold
/// database 0: a client in another database never reads through them.
#[test]
fn read_path_extras_never_answer_from_database_0() {
    let c = Cluster::start(Spec {
        shards: 2,
        extra_options: "  near_cache_bytes: 1048576\n  near_cache_max_staleness_ms: 60000\n  coalesce_reads: true\n",
        ..Spec::default()
    });
    let mut conn = c.conn();
    let _: () = conn.set("hot", "zero").unwrap();
    for _ in 0..5 {
        let v: String = conn.get("hot").unwrap();
        assert_eq!(v, "zero");
    }
    select(&mut conn, 1).unwrap();
    for _ in 0..5 {
        let v: Option<String> = conn.get("hot").unwrap();
        assert_eq!(v, None, "database 1 has no 'hot'");
    }
    let _: () = conn.set("hot", "one").unwrap();
    let v: String = conn.get("hot").unwrap();
    assert_eq!(v, "one");
    // A tracking client (RESP3) in database 1.
    let mut raw = c.raw();
    raw.send(b"HELLO 3\r\n");
    raw.read_until(b"modules\r\n*0\r\n");
    raw.send(b"CLIENT TRACKING on\r\nSELECT 1\r\nGET hot\r\nSELECT 0\r\nGET hot\r\n");
    let got = raw.read_until(b"zero\r\n");
    // The read in database 1 went around the tracking connection: its key
    // is invalidated at once (an invalidation push may come before the
    // replies that follow it).
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("+OK\r\n+OK\r\n$3\r\none\r\n"), "{text}");
    assert!(text.contains("+OK\r\n$4\r\nzero\r\n"), "{text}");
}

/// Keyspace notifications name the database the key changed in, and reach
/// a subscriber of that database's channel through the proxy.
#[test]
fn keyspace_notifications_of_another_database() {
    let c = Cluster::start(Spec {
        server_args: vec!["--notify-keyspace-events".into(), "KEA".into()],
        ..Spec::default()
    });
    let mut sub = c.client().get_connection().unwrap();
    let mut ps = sub.as_pubsub();
    ps.subscribe("__keyspace@3__:nk").unwrap();
    ps.psubscribe("__keyevent@3__:*").unwrap();
    ps.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = c.conn();
    let _: () = w.set("nk", "in-db0").unwrap();
    select(&mut w, 3).unwrap();
    let _: () = w.set("nk", "in-db3").unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = ps.get_message().unwrap();
        got.push((
            m.get_channel_name().to_owned(),
            m.get_payload::<String>().unwrap(),
        ));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("__keyevent@3__:set".to_owned(), "nk".to_owned()),
            ("__keyspace@3__:nk".to_owned(), "set".to_owned()),
        ]
    );
}

/// The redis crate selects the URL's database on connect (as ioredis'
/// `db` and node-redis' `database` options do), and again after a
/// reconnect.
#[test]
fn a_url_database_is_selected_on_connect() {
    let c = Cluster::start(Spec::default());
    let url = format!("redis://127.0.0.1:{}/6", c.proxy_port);
    let client = redis::Client::open(url).unwrap();
    let mut a = client.get_connection().unwrap();
    let _: () = a.set("urlk", "six").unwrap();
    let mut b = client.get_connection().unwrap();
    let v: String = b.get("urlk").unwrap();
    assert_eq!(v, "six");
    let me: String = redis::cmd("CLIENT").arg("INFO").query(&mut b).unwrap();
    assert!(me.contains(" db=6 "), "{me}");
    let mut zero = c.conn();
    let v: Option<String> = zero.get("urlk").unwrap();
    assert_eq!(v, None);
    let s = &c.primaries[c.shard_of("urlk")];
    assert_eq!(on_shard(s, 6, "urlk"), Some("six".into()));
}

//! The mover's copy of Redis keys (`DUMP`/`RESTORE` under a fence on the
//! source, see `rebalance::mover::walk`) against commands that move the
//! same keys, with real servers and the real binary.

mod common;

use std::time::Duration;

use common::rebalance::*;
use common::{RedisServer, TempDir};

/// TTL (seconds) given to keys whose expiry must survive a move.
const TTL: i64 = 1000;
/// The mover's fence (`backend::migrate::MOVING_SET`).
const FENCE: &str = "__shardgate_moving__";

/// The mover copies keys with `DUMP`/`RESTORE` under a fence on the source
/// (the set `__shardgate_moving__`): a command that would move a fenced key
/// meanwhile waits, and runs once the fence is lifted; nothing is lost and
/// no fence is left behind.
#[test]
fn a_write_waits_while_the_mover_copies_its_key() {
    let servers: Vec<RedisServer> = (0..2).map(|_| RedisServer::start()).collect();
    let dir = TempDir::new("rebalance-fence");
    // 4096 slots: the 2048 that move are one window, all migrating at once.
    let yaml = |shards: &[(&str, &RedisServer)]| {
        map_yaml(shards)
            .replace("slots: 16384", "slots: 4096")
            .replace("options:\n", "options:\n  allow_flush: true\n")
    };
    let m1 = write(dir.path(), "m1.yaml", &yaml(&[("s0", &servers[0])]));
    let m2 = write(
        dir.path(),
        "m2.yaml",
        &yaml(&[("s0", &servers[0]), ("s1", &servers[1])]),
    );
    let (proxy, metrics_port) = Proxy::start_with_metrics(dir.path(), &m1);
    let mut c = proxy.client().get_connection().unwrap();
    let t2 = table_of(&m2);
    let moving: Vec<String> = (0..4000)
        .map(|i| format!("k{i}"))
        .filter(|k| owner_name(&t2, k) == "s1")
        .take(1000)
        .collect();
    for k in &moving {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(format!("v-{k}"))
            .arg("EX")
            .arg(TTL)
            .query(&mut c)
            .unwrap();
    }
    let mut admin = proxy.admin();
    admin.rebalance_paused_migrating(&m2);
    std::thread::sleep(Duration::from_millis(300));
    let mut s0 = servers[0].connection();
    let mut s1 = servers[1].connection();
    let exists = |c: &mut redis::Connection, k: &str| -> bool {
        redis::cmd("EXISTS").arg(k).query::<i64>(c).unwrap() == 1
    };
    let key = moving
        .iter()
        .find(|k| exists(&mut s0, k))
        .expect("a key the paused mover has not moved")
        .clone();
    // The mover is copying `key` (as between its DUMP and its UNLINK).
    let _: () = redis::cmd("SADD")
        .arg(FENCE)
        .arg(&key)
        .query(&mut s0)
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = {
        let (client, key) = (proxy.client(), key.clone());
        std::thread::spawn(move || {
            let mut c = client.get_connection().unwrap();
            let r: redis::RedisResult<String> =
                redis::cmd("SET").arg(&key).arg("new").query(&mut c);
            tx.send(r).unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        rx.try_recv().is_err(),
        "a write of a key the mover copies waits"
    );
    assert!(exists(&mut s0, &key), "the fenced key stays on its source");
    assert!(!exists(&mut s1, &key));
    let body = ureq_get(metrics_port);
    let waits: f64 = body
        .lines()
        .find(|l| l.starts_with("shardgate_rebalance_touch_waits_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(waits > 0.0, "{body}");
    // The copy is over: the write moves the key and runs.
    let _: () = redis::cmd("SREM")
        .arg(FENCE)
        .arg(&key)
        .query(&mut s0)
        .unwrap();
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the write ran");
    assert_eq!(r.unwrap(), "OK");
    writer.join().unwrap();
    assert!(!exists(&mut s0, &key));
    let v: Option<String> = redis::cmd("GET").arg(&key).query(&mut s1).unwrap();
    assert_eq!(v.as_deref(), Some("new"));
    // A flush while keys move could let a copied key come back on its new
    // shard: refused until the window is done, in a transaction too.
    let e = redis::cmd("FLUSHALL").query::<()>(&mut c).unwrap_err();
    assert_eq!(e.code(), Some("TRYAGAIN"), "{e:?}");
    let e = redis::pipe()
        .atomic()
        .cmd("FLUSHDB")
        .query::<()>(&mut c)
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("aborted") && text.contains("FLUSHDB while a rebalance"),
        "{text}"
    );
    assert_eq!(admin.text(&[b"THROTTLE", b"0"]), "OK");
    assert_eq!(admin.text(&[b"RESUME"]), "OK");
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    for (i, s) in servers.iter().enumerate() {
        assert!(!exists(&mut s.connection(), FENCE), "a fence left on s{i}");
    }
    // Every key on its new shard, whole, its expiry time kept.
    for k in &moving {
        let want = if *k == key {
            "new".to_owned()
        } else {
            format!("v-{k}")
        };
        let v: Option<String> = redis::cmd("GET").arg(k).query(&mut s1).unwrap();
        assert_eq!(v.as_deref(), Some(want.as_str()), "{k}");
        if *k != key {
            let ttl: i64 = redis::cmd("TTL").arg(k).query(&mut s1).unwrap();
            assert!(ttl > TTL - 60 && ttl <= TTL, "{k}: TTL {ttl}");
        }
    }
    assert!(moving.iter().all(|k| !exists(&mut s0, k)));
    // Once the window is done, a flush runs.
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 0);
}

/// Commands that move keys while shards have passwords: the source runs
/// `MIGRATE ... AUTH`, which Redis redacts in its `SLOWLOG` (no script
/// carries the target's password), and every key ends whole on its new
/// shard.
#[test]
fn moves_on_touch_keep_the_target_password_out_of_the_source_slowlog() {
    const PW: &str = "touch-secret-7f3a";
    let servers: Vec<RedisServer> = (0..2)
        .map(|_| RedisServer::start_args(&["--requirepass", PW], false))
        .collect();
    let dir = TempDir::new("rebalance-touch-auth");
    let yaml = |n: usize| {
        let mut y = map_yaml(&[("s0", &servers[0]), ("s1", &servers[1])][..n])
            .replace("slots: 16384", "slots: 4096");
        y = y.replace("    primary:", &format!("    password: {PW}\n    primary:"));
        y
    };
    let m1 = write(dir.path(), "m1.yaml", &yaml(1));
    let m2 = write(dir.path(), "m2.yaml", &yaml(2));
    let conn = |s: &RedisServer| {
        redis::Client::open(format!("redis://:{PW}@{}/", s.addr()))
            .unwrap()
            .get_connection()
            .unwrap()
    };
    let mut s0 = conn(&servers[0]);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .arg("slowlog-max-len")
        .arg(100_000)
        .query(&mut s0)
        .unwrap();
    let proxy = Proxy::start(dir.path(), &m1);
    let mut c = proxy.client().get_connection().unwrap();
    let t2 = table_of(&m2);
    let moving: Vec<String> = (0..2000)
        .map(|i| format!("k{i}"))
        .filter(|k| owner_name(&t2, k) == "s1")
        .take(300)
        .collect();
    for k in &moving {
        let _: () = redis::cmd("SET").arg(k).arg("old").query(&mut c).unwrap();
    }
    let mut admin = proxy.admin();
    admin.rebalance_paused_migrating(&m2);
    // Writes move their keys first (those the mover has not moved).
    for k in &moving {
        let _: () = redis::cmd("SET").arg(k).arg("new").query(&mut c).unwrap();
    }
    assert_eq!(admin.text(&[b"THROTTLE", b"0"]), "OK");
    assert_eq!(admin.text(&[b"RESUME"]), "OK");
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    let touched: u64 = p["keys_moved_on_touch"].parse().unwrap();
    assert!(touched > 0, "{p:?}");
    let mut s1 = conn(&servers[1]);
    for k in &moving {
        let v: Option<String> = redis::cmd("GET").arg(k).query(&mut s1).unwrap();
        assert_eq!(v.as_deref(), Some("new"), "{k}");
    }
    let log: redis::Value = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(100_000)
        .query(&mut s0)
        .unwrap();
    let text = format!("{log:?}");
    assert!(
        text.contains("MIGRATE") || text.contains("migrate"),
        "no MIGRATE in the slowlog"
    );
    assert!(
        !text.contains(PW),
        "the target's password in the source's SLOWLOG"
    );
}

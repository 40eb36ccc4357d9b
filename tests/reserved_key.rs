//! The mover's fence `__shardgate_moving__` (`backend::migrate::MOVING_SET`)
//! is the proxy's own key: a client that wrote, deleted or moved it could
//! lift the fence while the mover copies a key and lose a write. Every
//! command naming it as a key is refused, whatever its kind (forwarded,
//! split over shards, script, blocking, inside MULTI, WATCH), and `KEYS`,
//! `SCAN` and `RANDOMKEY` do not list it while it exists on a shard.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::{Cluster, Spec};
use redis::Value;

const FENCE: &str = "__shardgate_moving__";
const REFUSAL: &str = "key name '__shardgate_moving__' is reserved by shardgate";

fn two_shards() -> Cluster {
    Cluster::start(Spec {
        shards: 2,
        ..Spec::default()
    })
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

/// The reply's error text, or the reply itself when it is not an error.
fn outcome(r: redis::RedisResult<Value>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(v) => format!("not an error: {v:?}"),
    }
}

/// Every command of the proxy's `COMMAND` table whose first argument is a
/// key (not a shard channel), with the fence there and its other arguments
/// filled to its arity.
fn commands_keyed_at_first_argument(con: &mut redis::Connection) -> Vec<Vec<String>> {
    let table: Vec<Value> = redis::cmd("COMMAND").query(con).unwrap();
    let mut out = Vec::new();
    for entry in table {
        let Value::Array(info) = entry else {
            panic!("COMMAND entry {entry:?}")
        };
        let name = text(&info[0]).unwrap();
        let arity = int(&info[1]).unwrap();
        let first_key = int(&info[3]).unwrap();
        // Shard channels (SPUBLISH, SSUBSCRIBE ...) name channels, not keys.
        let pubsub = matches!(&info[2], Value::Set(f) | Value::Array(f)
            if f.iter().any(|f| text(f).as_deref() == Some("pubsub")));
        if first_key != 1 || pubsub {
            continue;
        }
        let argc = arity.unsigned_abs().max(2) as usize;
        let mut args = vec![name.to_uppercase(), FENCE.to_owned()];
        args.resize(argc, "0".to_owned());
        out.push(args);
    }
    out
}

#[test]
fn every_command_naming_the_fence_key_is_refused() {
    let c = two_shards();
    let mut con = c.conn();
    // A command that were not refused could block (BLPOP ... 0): fail
    // instead of hanging.
    con.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let keyed = commands_keyed_at_first_argument(&mut con);
    assert!(keyed.len() > 100, "{} commands keyed at 1", keyed.len());
    // Commands whose keys stand elsewhere (movable keys, a second key, a
    // key among others of a split command).
    let fence = FENCE.to_owned();
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let mut others = vec![
        s(&["MGET", "a", FENCE]),
        s(&["MSET", "a", "1", FENCE, "2"]),
        s(&["DEL", "a", "b", FENCE]),
        s(&["EXISTS", FENCE, "a"]),
        s(&["UNLINK", "a", FENCE]),
        s(&["TOUCH", "a", FENCE]),
        s(&["RENAME", "a", FENCE]),
        s(&["COPY", "a", FENCE]),
        s(&["SMOVE", "a", FENCE, "m"]),
        s(&["SUNIONSTORE", "a", FENCE]),
        s(&["ZUNIONSTORE", "dst", "2", "a", FENCE]),
        s(&["ZINTERCARD", "1", FENCE]),
        s(&[
            "EVAL",
            "return redis.call('SADD', KEYS[1], 'x')",
            "1",
            FENCE,
        ]),
        s(&["EVAL_RO", "return 1", "1", FENCE]),
        s(&["FCALL", "f", "1", FENCE]),
        s(&["BLPOP", "a", FENCE, "0"]),
        s(&["BLMPOP", "0", "2", "a", FENCE, "LEFT"]),
        s(&["XREAD", "BLOCK", "0", "STREAMS", FENCE, "$"]),
        s(&["LMPOP", "1", FENCE, "LEFT"]),
        s(&["WATCH", FENCE]),
        s(&["OBJECT", "ENCODING", FENCE]),
        s(&["MEMORY", "USAGE", FENCE]),
    ];
    others.push(vec!["SET".into(), fence.clone(), "v".into()]);
    let mut refused = Vec::new();
    for args in keyed.iter().chain(&others) {
        let mut cmd = redis::cmd(&args[0]);
        for a in &args[1..] {
            cmd.arg(a);
        }
        let got = outcome(cmd.query(&mut con));
        // Commands the proxy never runs (MOVE, RESTORE-ASKING) are refused
        // as such, before their keys are looked at.
        let unsupported = got.contains("is not supported by shardgate");
        assert!(got.contains(REFUSAL) || unsupported, "{args:?} -> {got}");
        refused.push(args[0].clone());
    }
    // Inside MULTI: refused when queued, and EXEC aborts.
    let _: () = redis::cmd("MULTI").query(&mut con).unwrap();
    let got = outcome(redis::cmd("SADD").arg(FENCE).arg("x").query(&mut con));
    assert!(got.contains(REFUSAL), "{got}");
    let got = outcome(redis::cmd("EXEC").query(&mut con));
    assert!(got.to_lowercase().contains("execabort"), "{got}");
    // The connection serves on, and no shard holds the key.
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    assert_no_shard_holds_the_fence(&c);
    // A key that only starts like the fence is an ordinary key.
    let near = format!("{FENCE}:mine");
    let _: () = redis::cmd("SET").arg(&near).arg(1).query(&mut con).unwrap();
    let v: i64 = redis::cmd("GET").arg(&near).query(&mut con).unwrap();
    assert_eq!(v, 1);
    assert!(refused.len() > 120, "{} commands checked", refused.len());
}

/// Nothing wrote the fence on any shard.
fn assert_no_shard_holds_the_fence(c: &Cluster) {
    for p in &c.primaries {
        let n: i64 = redis::cmd("EXISTS")
            .arg(FENCE)
            .query(&mut p.connection())
            .unwrap();
        assert_eq!(n, 0, "the fence key on {}", p.addr());
    }
}

/// Every key `SCAN` lists through the proxy, `COUNT 1` per call.
fn scan_all(con: &mut redis::Connection) -> Vec<String> {
    let mut cursor = "0".to_owned();
    let mut keys = Vec::new();
    for _ in 0..10_000 {
        let (next, page): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("COUNT")
            .arg(1)
            .query(con)
            .unwrap();
        keys.extend(page);
        if next == "0" {
            return keys;
        }
        cursor = next;
    }
    panic!("SCAN did not end");
}

fn keys_all(con: &mut redis::Connection) -> BTreeSet<String> {
    redis::cmd("KEYS").arg("*").query(con).unwrap()
}

#[test]
fn keys_scan_and_randomkey_do_not_list_the_fence() {
    let c = two_shards();
    let mut con = c.conn();
    // The fence on both shards, as while the mover copies from each.
    for p in &c.primaries {
        let _: () = redis::cmd("SADD")
            .arg(FENCE)
            .arg("somekey")
            .query(&mut p.connection())
            .unwrap();
    }
    // Nothing else: the keyspace is empty to a client.
    assert!(keys_all(&mut con).is_empty());
    assert!(scan_all(&mut con).is_empty());
    let none: Option<String> = redis::cmd("RANDOMKEY").query(&mut con).unwrap();
    assert_eq!(none, None);
    // With keys of the client's on both shards.
    let mine: BTreeSet<String> = (0..20).map(|i| format!("k{i}")).collect();
    assert!(
        (0..2).all(|s| mine.iter().any(|k| c.shard_of(k) == s)),
        "keys on both shards"
    );
    for k in &mine {
        let _: () = redis::cmd("SET").arg(k).arg(1).query(&mut con).unwrap();
    }
    assert_eq!(keys_all(&mut con), mine);
    let scanned = scan_all(&mut con);
    assert_eq!(scanned.iter().cloned().collect::<BTreeSet<_>>(), mine);
    let pattern: Vec<String> = redis::cmd("KEYS").arg("__*").query(&mut con).unwrap();
    assert!(pattern.is_empty(), "{pattern:?}");
    for _ in 0..50 {
        let k: Option<String> = redis::cmd("RANDOMKEY").query(&mut con).unwrap();
        let k = k.expect("a key");
        assert!(mine.contains(&k), "RANDOMKEY -> {k}");
    }
}

/// A script that names the fence without declaring it reaches the shard,
/// where its backend ACL user may read the key but not write it.
#[test]
fn scripts_may_not_write_the_fence_they_do_not_declare() {
    let c = two_shards();
    let mut con = c.conn();
    let denied = "can't access at least one of the keys";
    for write in [
        format!("return redis.call('SADD', '{FENCE}', 'x')"),
        format!("return redis.call('DEL', '{FENCE}')"),
        format!("return redis.call('SET', '{FENCE}', 'x')"),
        format!("return redis.call('RENAME', KEYS[1], '{FENCE}')"),
    ] {
        let got = outcome(
            redis::cmd("EVAL")
                .arg(&write)
                .arg(1)
                .arg("k")
                .query(&mut con),
        );
        assert!(got.contains(denied), "{write} -> {got}");
    }
    let library = format!(
        "#!lua name=fencelib\nredis.register_function('lift', function() return redis.call('DEL', '{FENCE}') end)"
    );
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(&library)
        .query(&mut con)
        .unwrap();
    let got = outcome(redis::cmd("FCALL").arg("lift").arg(0).query(&mut con));
    assert!(got.contains(denied), "FCALL -> {got}");
    // Reading it is harmless, and other keys are written as before.
    let read = format!("return redis.call('SISMEMBER', '{FENCE}', 'x')");
    let n: i64 = redis::cmd("EVAL")
        .arg(&read)
        .arg(0)
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 0);
    let near = format!("return redis.call('SET', '{FENCE}x', 1)");
    let ok: String = redis::cmd("EVAL")
        .arg(&near)
        .arg(0)
        .query(&mut con)
        .unwrap();
    assert_eq!(ok, "OK");
    let ok: String = redis::cmd("EVAL")
        .arg("return redis.call('SET', KEYS[1], 1)")
        .arg(1)
        .arg("k")
        .query(&mut con)
        .unwrap();
    assert_eq!(ok, "OK");
    assert_no_shard_holds_the_fence(&c);
}

/// Keyspace notifications of the fence (the mover's `SADD`/`SREM` of it on
/// a source) are not delivered to subscribers of the proxy, by channel
/// (`__keyspace@0__:<fence>`) or by event (`__keyevent@0__:sadd` with the
/// fence as payload); notifications of other keys are.
#[test]
fn notifications_of_the_fence_do_not_reach_subscribers() {
    let c = Cluster::start(Spec {
        shards: 2,
        server_args: vec!["--notify-keyspace-events".into(), "KEA".into()],
        ..Spec::default()
    });
    let mut con = c.client().get_connection().unwrap();
    let mut ps = con.as_pubsub();
    ps.psubscribe("__key*@0__:*").unwrap();
    ps.subscribe(format!("__keyspace@0__:{FENCE}")).unwrap();
    // On each shard, as the mover does while it copies a key, then a key
    // of the client's: its notifications come after the fence's on the
    // shard's one link.
    let probes: Vec<String> = (0..2)
        .map(|s| {
            (0..)
                .map(|i| format!("probe{i}"))
                .find(|k| c.shard_of(k) == s)
                .unwrap()
        })
        .collect();
    for (p, probe) in c.primaries.iter().zip(&probes) {
        let mut p = p.connection();
        for cmd in ["SADD", "SREM"] {
            let _: i64 = redis::cmd(cmd)
                .arg(FENCE)
                .arg("somekey")
                .query(&mut p)
                .unwrap();
        }
        let _: () = redis::cmd("SET").arg(probe).arg(1).query(&mut p).unwrap();
    }
    ps.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    // Each probe's SET: one keyspace and one keyevent notification.
    while got.len() < 2 * probes.len() {
        let m = ps.get_message().expect("a notification");
        got.push((
            m.get_channel_name().to_owned(),
            m.get_payload::<String>().unwrap(),
        ));
    }
    for (channel, payload) in &got {
        assert!(
            !channel.contains(FENCE) && payload != FENCE,
            "a notification of the fence: {got:?}"
        );
    }
    for probe in &probes {
        assert!(
            got.contains(&(format!("__keyspace@0__:{probe}"), "set".to_owned())),
            "{got:?}"
        );
        assert!(
            got.contains(&("__keyevent@0__:set".to_owned(), probe.clone())),
            "{got:?}"
        );
    }
}

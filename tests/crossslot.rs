//! `options.crossslot: slot`: multi-key commands, transactions and scripts
//! whose keys are in different slots are refused as Redis Cluster refuses
//! them, even when the keys happen to share a shard today; the default
//! (`shard`) serves them.

mod common;

use common::cluster::{Cluster, Spec};

/// Two keys in different slots of the same shard.
fn same_shard_other_slot(c: &Cluster) -> (String, String) {
    let a = "cs:a".to_owned();
    let b = (0..)
        .map(|i| format!("cs:b{i}"))
        .find(|k| {
            c.shard_of(k) == c.shard_of(&a)
                && c.table.slot_of(k.as_bytes()) != c.table.slot_of(a.as_bytes())
        })
        .unwrap();
    (a, b)
}

/// The error text, lower case (the redis crate names known kinds its own way).
fn err(r: redis::RedisResult<redis::Value>) -> String {
    match r {
        Err(e) => e.to_string().to_lowercase(),
        Ok(v) => format!("ok: {v:?}"),
    }
}

#[test]
fn keys_of_one_command_must_share_a_slot() {
    let c = Cluster::start(Spec {
        shards: 2,
        extra_options: "  crossslot: slot\n",
        ..Spec::default()
    });
    let (a, b) = same_shard_other_slot(&c);
    let mut con = c.conn();
    for cmd in [
        redis::cmd("MGET").arg(&a).arg(&b).clone(),
        redis::cmd("MSET").arg(&a).arg(1).arg(&b).arg(2).clone(),
        redis::cmd("DEL").arg(&a).arg(&b).clone(),
        redis::cmd("SUNIONSTORE").arg(&a).arg(&b).clone(),
        redis::cmd("RENAME").arg(&a).arg(&b).clone(),
        redis::cmd("EVAL")
            .arg("return 1")
            .arg(2)
            .arg(&a)
            .arg(&b)
            .clone(),
        redis::cmd("BLPOP").arg(&a).arg(&b).arg(0.01).clone(),
        redis::cmd("WATCH").arg(&a).arg(&b).clone(),
    ] {
        let e = err(cmd.query(&mut con));
        assert!(
            e.contains("crossslot") && e.contains("same slot"),
            "{cmd:?} -> {e}"
        );
    }
    // Keys sharing a hash tag share a slot: served.
    let _: () = redis::cmd("MSET")
        .arg("{t}x")
        .arg(1)
        .arg("{t}y")
        .arg(2)
        .query(&mut con)
        .unwrap();
    let v: Vec<i64> = redis::cmd("MGET")
        .arg("{t}x")
        .arg("{t}y")
        .query(&mut con)
        .unwrap();
    assert_eq!(v, vec![1, 2]);
    // A transaction over two slots is aborted at EXEC, as Redis does with a
    // command refused while queueing.
    let _: () = redis::cmd("MULTI").query(&mut con).unwrap();
    let q: String = redis::cmd("SET").arg(&a).arg(1).query(&mut con).unwrap();
    assert_eq!(q, "QUEUED");
    let e = err(redis::cmd("SET").arg(&b).arg(2).query(&mut con));
    assert!(e.contains("crossslot"), "{e}");
    let e = err(redis::cmd("EXEC").query(&mut con));
    assert!(e.contains("execabort"), "{e}");
    // One slot: the transaction runs.
    let _: () = redis::cmd("MULTI").query(&mut con).unwrap();
    let _: String = redis::cmd("SET")
        .arg("{t}x")
        .arg(5)
        .query(&mut con)
        .unwrap();
    let _: String = redis::cmd("INCR").arg("{t}y").query(&mut con).unwrap();
    let r: (String, i64) = redis::cmd("EXEC").query(&mut con).unwrap();
    assert_eq!(r, ("OK".to_owned(), 3));
}

#[test]
fn by_default_keys_of_one_shard_are_served() {
    let c = Cluster::start(Spec {
        shards: 2,
        ..Spec::default()
    });
    let (a, b) = same_shard_other_slot(&c);
    let mut con = c.conn();
    let _: () = redis::cmd("MSET")
        .arg(&a)
        .arg(1)
        .arg(&b)
        .arg(2)
        .query(&mut con)
        .unwrap();
    let r: i64 = redis::cmd("EVAL")
        .arg("return redis.call('EXISTS', KEYS[1], KEYS[2])")
        .arg(2)
        .arg(&a)
        .arg(&b)
        .query(&mut con)
        .unwrap();
    assert_eq!(r, 2);
}

//! Live reload of the map: what may change without moving keys is applied
//! and endpoints that did not change keep their connections; a map that
//! would move keys, or is invalid, is refused and the running map stays.

mod common;

use std::collections::HashSet;

use common::cluster::{Cluster, Spec, calls};
use redis::Commands;
use shardgate::app::ReloadError;

/// Ids of the connections the proxy holds on a server (all but ours).
fn proxy_connections(server: &common::RedisServer) -> HashSet<u64> {
    let mut con = server.connection();
    let me: u64 = redis::cmd("CLIENT").arg("ID").query(&mut con).unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("normal")
        .query(&mut con)
        .unwrap();
    list.lines()
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .filter(|id| *id != me)
        .collect()
}

fn gets(c: &Cluster, con: &mut redis::Connection, key: &str, shard: usize) -> (u64, u64) {
    let (r0, p0) = (
        calls(&c.replicas[shard], "get"),
        calls(&c.primaries[shard], "get"),
    );
    for _ in 0..10 {
        let v: i64 = con.get(key).unwrap();
        assert_eq!(v, 5);
    }
    (
        calls(&c.replicas[shard], "get") - r0,
        calls(&c.primaries[shard], "get") - p0,
    )
}

#[test]
fn read_policy_and_replicas_change_live_and_unchanged_endpoints_keep_connections() {
    let c = Cluster::start(Spec {
        replicas: true,
        read_policy: "primary",
        ..Spec::default()
    });
    let mut con = c.conn();
    let key = (0..)
        .map(|i| format!("live{i}"))
        .find(|k| c.shard_of(k) == 0)
        .unwrap();
    let _: () = con.set(&key, 5).unwrap();
    assert_eq!(gets(&c, &mut con, &key, 0), (0, 10), "policy primary");
    let before = proxy_connections(&c.primaries[0]);
    assert!(!before.is_empty());

    c.edit_map(|m| m.replace("read_policy: primary", "read_policy: prefer-replica"));
    let s = c.reload().expect("reload");
    assert_eq!((s.epoch, s.kept, s.added, s.removed), (2, 8, 0, 0));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        gets(&c, &mut con, &key, 0),
        (10, 0),
        "policy prefer-replica"
    );
    let after = proxy_connections(&c.primaries[0]);
    assert!(
        before.is_subset(&after),
        "connections to an unchanged primary were kept: {before:?} -> {after:?}"
    );
    let info: String = redis::cmd("INFO").arg("proxy").query(&mut con).unwrap();
    assert!(info.contains("map_epoch:2") && info.contains("read_policy:prefer-replica"));

    // Drop shard 0's replica from the map: its reads go to the primary.
    let replica = format!(
        "    replicas:\n      - addr: {}\n        zone: us-b\n",
        c.replicas[0].addr()
    );
    c.edit_map(|m| {
        assert!(m.contains(&replica), "{m}");
        m.replace(&replica, "")
    });
    let s = c.reload().expect("reload");
    assert_eq!((s.epoch, s.kept, s.added, s.removed), (3, 7, 0, 1));
    assert_eq!(gets(&c, &mut con, &key, 0), (0, 10), "replica removed");
}

#[test]
fn changes_that_move_keys_or_invalid_maps_are_refused_and_the_map_stays() {
    let c = Cluster::start(Spec::default());
    let mut con = c.conn();
    let original = std::fs::read_to_string(&c.map_path).unwrap();

    c.edit_map(|m| m.replace("  - name: s1\n", "  - name: s1\n    weight: 200\n"));
    match c.reload() {
        Err(ReloadError::Placement { path, reason }) => {
            assert_eq!(path, "shards[1].weight");
            assert!(reason.contains("changed from 100 to 200"), "{reason}");
            assert!(reason.contains("rebalance"), "{reason}");
        }
        other => panic!("weight change was not refused: {other:?}"),
    }

    c.edit_map(|_| original.replace("  - name: s3\n", "  - name: s9\n"));
    match c.reload() {
        Err(ReloadError::Placement { path, .. }) => assert_eq!(path, "shards[3].name"),
        other => panic!("rename was not refused: {other:?}"),
    }

    c.edit_map(|_| original.replace("read_policy: primary", "read_policy: fastest"));
    match c.reload() {
        Err(e @ ReloadError::Map { .. }) => {
            assert!(e.to_string().contains("read_policy"), "{e}")
        }
        other => panic!("invalid map was not refused: {other:?}"),
    }

    // Still epoch 1, still serving.
    let info: String = redis::cmd("INFO").arg("proxy").query(&mut con).unwrap();
    assert!(info.contains("map_epoch:1"), "{info}");
    let _: () = con.set("still", 1).unwrap();
    let v: i64 = con.get("still").unwrap();
    assert_eq!(v, 1);
}

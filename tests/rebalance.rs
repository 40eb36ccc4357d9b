//! Online rebalancing against the real binary and real redis-servers:
//! clients keep running while shards are added and removed (and while the
//! proxy is SIGKILLed mid-move and restarted), and a model kept by the test
//! checks afterwards that nothing was lost, resurrected or rolled back.
//! Plan output, refusals, big keys and the CLI are in `rebalance_ops/`.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::history::{Load, check};
use common::rebalance::*;
use common::{RedisServer, TempDir};

/// 16 clients run while a shard is added, then another removed.
#[test]
fn clients_keep_running_while_shards_are_added_and_removed() {
    run_add_then_remove(false);
}

/// The same, with the proxy SIGKILLed in the middle of the first move and
/// restarted with the same state directory.
#[test]
fn a_proxy_killed_mid_move_resumes_and_loses_nothing() {
    run_add_then_remove(true);
}

fn run_add_then_remove(kill: bool) {
    let servers: Vec<RedisServer> = (0..4).map(|_| RedisServer::start()).collect();
    let dir = TempDir::new(if kill { "rebalance-kill" } else { "rebalance" });
    let names = ["s0", "s1", "s2", "s3"];
    let shards = |idx: &[usize]| -> Vec<(&str, &RedisServer)> {
        idx.iter().map(|&i| (names[i], &servers[i])).collect()
    };
    let m1 = write(dir.path(), "m1.yaml", &map_yaml(&shards(&[0, 1, 2])));
    let m2 = write(dir.path(), "m2.yaml", &map_yaml(&shards(&[0, 1, 2, 3])));
    let m3 = write(dir.path(), "m3.yaml", &map_yaml(&shards(&[0, 2, 3])));
    let mut proxy = Proxy::start(dir.path(), &m1);
    fill(&proxy);
    let load = Load::start(&[proxy.port], 16);
    std::thread::sleep(Duration::from_millis(500));

    let mut admin = proxy.admin();
    if kill {
        // Slow the mover so that the kill lands mid-move.
        let text = std::fs::read_to_string(&m2).unwrap();
        let started = admin.text(&[b"REBALANCE", text.as_bytes(), b"THROTTLE", b"1000"]);
        assert!(started.starts_with("OK rebalance started"), "{started}");
        assert_eq!(admin.progress()["throttle_keys_per_sec"], "1000");
        // Killed once the mover has recorded what it moved (every 2 s).
        let deadline = Instant::now() + Duration::from_secs(60);
        let recorded = loop {
            let p = admin.progress();
            assert_eq!(
                p["state"], "moving",
                "the move ended before the kill: {p:?}"
            );
            let log = std::fs::read_to_string(proxy.state.join("rebalance/log")).unwrap();
            let recorded = log
                .lines()
                .filter_map(|l| l.strip_prefix("moved "))
                .filter_map(|l| l.split(' ').next()?.parse::<u64>().ok())
                .next_back();
            if let Some(keys) = recorded.filter(|&k| k >= 600) {
                break keys;
            }
            assert!(Instant::now() < deadline, "mover made no progress: {p:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        proxy.kill();
        std::thread::sleep(Duration::from_millis(300));
        proxy.spawn();
        admin = proxy.admin();
        let p = admin.progress();
        assert_eq!(
            p["state"], "moving",
            "the restarted proxy resumes the move: {p:?}"
        );
        assert_eq!(
            p["throttle_keys_per_sec"], "1000",
            "the throttle survives the restart"
        );
        // The restarted mover counts on from what was recorded.
        let moved: u64 = p["keys_moved"].parse().unwrap();
        assert!(
            moved >= recorded,
            "keys_moved {moved} after {recorded} recorded: {p:?}"
        );
        let estimate: u64 = p["keys_estimate"].parse().unwrap();
        assert!(estimate >= moved, "{p:?}");
        assert!(proxy.log_text().contains("resuming the rebalance"));
        assert_eq!(admin.text(&[b"THROTTLE", b"0"]), "OK");
    } else {
        // Throttled, so that it still runs at the second request.
        let started = admin.rebalance_file(&m2, 1000);
        assert!(started.starts_with("OK rebalance started"), "{started}");
        // A second request while the first runs is refused, saying why.
        let again = admin.text(&[b"REBALANCE", b"FILE", m3.to_str().unwrap().as_bytes()]);
        assert!(
            again.starts_with("ERR rebalance refused: a rebalance is already running"),
            "{again}"
        );
        assert_eq!(admin.text(&[b"THROTTLE", b"0"]), "OK");
    }
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    assert_eq!(p["verify_left_behind"], "0");
    std::thread::sleep(Duration::from_millis(300));

    let started = admin.text(&[b"REBALANCE", b"FILE", m3.to_str().unwrap().as_bytes()]);
    assert!(started.starts_with("OK rebalance started"), "{started}");
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    std::thread::sleep(Duration::from_millis(300));
    let (shared, model) = load.stop();
    assert!(
        model.ops > 1000,
        "the clients ran ({} operations)",
        model.ops
    );
    if !kill {
        assert!(
            model.errors.is_empty(),
            "error replies during the move: {:?}",
            &model.errors[..model.errors.len().min(10)]
        );
    }
    // s1 was drained: it holds nothing any more.
    assert!(
        keys_on(&servers[1]).is_empty(),
        "the removed shard still holds keys"
    );
    // ... and the proxy closed its connections to it (ours is the only one).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query(&mut servers[1].connection())
            .unwrap();
        let n: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy still has {} connections to the removed shard",
            n - 1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let filler: HashSet<String> = (0..FILLER).map(|i| format!("filler:{i}")).collect();
    check(
        proxy.port,
        &shared,
        &model,
        &m3,
        &shards(&[0, 2, 3]),
        &filler,
    );
    // A restart serves the map of the last rebalance (from the state
    // directory), not the stale --map file.
    proxy.kill();
    proxy.spawn();
    let mut c = proxy.client().get_connection().unwrap();
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    let physical: usize = [0, 2, 3].iter().map(|&i| keys_on(&servers[i]).len()).sum();
    assert_eq!(n as usize, physical);
    check(
        proxy.port,
        &shared,
        &model,
        &m3,
        &shards(&[0, 2, 3]),
        &filler,
    );
}

/// Weights change, a region is added, a rule moves to another region:
/// each a rebalance under a light load, each verified.
#[test]
fn weights_regions_and_rules_change_online() {
    let servers: Vec<RedisServer> = (0..5).map(|_| RedisServer::start()).collect();
    let dir = TempDir::new("rebalance-geo");
    let s = |i: usize, region: &'static str, w: u32| {
        (["s0", "s1", "s2", "s3", "s4"][i], region, w, &servers[i])
    };
    let steps = [
        (
            "base",
            geo_yaml(&[s(0, "us", 1), s(1, "us", 1), s(2, "eu", 1)], "eu", 4096),
        ),
        (
            "weights",
            geo_yaml(&[s(0, "us", 3), s(1, "us", 1), s(2, "eu", 1)], "eu", 4096),
        ),
        (
            "region",
            geo_yaml(
                &[s(0, "us", 3), s(1, "us", 1), s(2, "eu", 1), s(4, "ap", 2)],
                "eu",
                4096,
            ),
        ),
        (
            "rule",
            geo_yaml(
                &[s(0, "us", 3), s(1, "us", 1), s(2, "eu", 1), s(4, "ap", 2)],
                "ap",
                4096,
            ),
        ),
    ];
    let paths: Vec<PathBuf> = steps
        .iter()
        .map(|(n, y)| write(dir.path(), &format!("{n}.yaml"), y))
        .collect();
    let proxy = Proxy::start(dir.path(), &paths[0]);
    let mut c = proxy.client().get_connection().unwrap();
    let keys: Vec<String> = (0..2000)
        .map(|i| {
            if i % 4 == 0 {
                format!("{{eu:{i}}}.v")
            } else {
                format!("k{i}")
            }
        })
        .collect();
    for k in &keys {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(format!("val-{k}"))
            .query(&mut c)
            .unwrap();
    }
    let load = Load::start(&[proxy.port], 4);
    let mut admin = proxy.admin();
    for (i, path) in paths.iter().enumerate().skip(1) {
        let before = table_of(&paths[i - 1]);
        let after = table_of(path);
        let moves = before.moves_to(&after).unwrap();
        assert!(!moves.is_empty(), "step {} moves slots", steps[i].0);
        if steps[i].0 == "rule" {
            // Only the rule's keys move, from eu to ap.
            assert!(
                moves.iter().all(|m| m.class == 1),
                "only the eu: class moves"
            );
        }
        let started = admin.text(&[b"REBALANCE", b"FILE", path.to_str().unwrap().as_bytes()]);
        assert!(
            started.starts_with("OK rebalance started"),
            "{}: {started}",
            steps[i].0
        );
        let p = wait_done(&proxy);
        assert_eq!(p["verify"], "ok", "{}: {p:?}", steps[i].0);
        for k in &keys {
            let v: Option<String> = redis::cmd("GET").arg(k).query(&mut c).unwrap();
            assert_eq!(
                v.as_deref(),
                Some(format!("val-{k}").as_str()),
                "{}: {k}",
                steps[i].0
            );
            let owner = owner_name(&after, k);
            let idx: usize = owner[1..].parse().unwrap();
            let n: i64 = redis::cmd("EXISTS")
                .arg(k)
                .query(&mut servers[idx].connection())
                .unwrap();
            assert_eq!(n, 1, "{}: {k} on its owner {owner}", steps[i].0);
        }
    }
    // The rule's keys live in region ap now, and nowhere else.
    assert!(keys_on(&servers[2]).iter().all(|k| !k.starts_with("{eu:")));
    let (shared, model) = load.stop();
    assert!(
        model.errors.is_empty(),
        "error replies: {:?}",
        &model.errors[..model.errors.len().min(10)]
    );
    let names = ["s0", "s1", "s2", "s3", "s4"];
    let live: Vec<(&str, &RedisServer)> = [0, 1, 2, 4]
        .iter()
        .map(|&i| (names[i], &servers[i]))
        .collect();
    let fixed: HashSet<String> = keys.into_iter().collect();
    check(proxy.port, &shared, &model, &paths[3], &live, &fixed);
}

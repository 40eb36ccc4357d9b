//! A fleet of proxies on a real etcd (`serve --etcd --cluster`) against real
//! redis-servers: clients spread over three proxies keep running while the
//! fleet rebalances, while the mover's proxy is SIGKILLed, while a proxy is
//! frozen past its lease, and while its shard fails over under Sentinel
//! (etcd's own troubles: `tests/fleet_etcd.rs`). The history model of `common::history` checks afterwards that nothing
//! acknowledged was lost, resurrected or rolled back, and that every key is
//! on its owner under the final map.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::fleet::{CLIENTS, Fleet, Member, PATIENCE, filler, num};
use common::history::{Load, check, connect, stop_clean};
use common::rebalance::{keys_on, owner_name, table_of, write};
use common::sentinel::SentinelServer;
use common::{RedisServer, TempDir};

/// Clients over three proxies while a shard is added through one proxy's
/// admin listener and another drained through a second proxy's.
#[test]
fn three_proxies_serve_while_the_fleet_adds_and_drains_a_shard() {
    let fleet = Fleet::start("fleet-a", [6; 3]);
    let m2 = fleet.map("m2.yaml", &[0, 1, 2]);
    let m3 = fleet.map("m3.yaml", &[0, 2]);
    let load = Load::start(&fleet.ports(), CLIENTS);
    std::thread::sleep(Duration::from_millis(500));

    // Throttled, so that it still runs at the second request.
    let rev = fleet.rebalance(0, &m2, 1000);
    // One rebalance at a time, fleet-wide: another proxy refuses a second.
    let text = std::fs::read_to_string(&m3).unwrap();
    let again = fleet.members[2]
        .admin()
        .text(&[b"REBALANCE", text.as_bytes()]);
    assert!(
        again.starts_with("ERR rebalance refused: a rebalance is"),
        "{again}"
    );
    assert_eq!(fleet.members[1].admin().text(&[b"THROTTLE", b"0"]), "OK");
    let p = fleet.wait_done(rev);
    assert_eq!(p["verify"], "ok", "{p:?}");
    assert_eq!(p["verify_left_behind"], "0", "{p:?}");
    let epoch = fleet.same_epoch(rev as u64);

    let rev = fleet.rebalance(1, &m3, 0);
    assert!(rev as u64 > epoch);
    let p = fleet.wait_done(rev);
    assert_eq!(p["verify"], "ok", "{p:?}");
    assert_eq!(p["verify_left_behind"], "0", "{p:?}");
    let epoch = fleet.same_epoch(rev as u64);
    // Every proxy, mover or not, reports the finished move, its figures
    // and its verification (recorded in etcd by the mover: the others see
    // it once their watch delivers that record, shortly after the mover's
    // own PROGRESS says done).
    let mut figures = Vec::new();
    for m in &fleet.members {
        let deadline = Instant::now() + PATIENCE;
        let p = loop {
            let p = m.admin().progress();
            if p["state"] == "done" || Instant::now() >= deadline {
                break p;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(p["state"], "done", "{}: {p:?}", m.id);
        assert_eq!(p["verify"], "ok", "{}: {p:?}", m.id);
        assert_ne!(p["bytes_moved"], "0", "{}: {p:?}", m.id);
        figures.push((p["keys_moved"].clone(), p["bytes_moved"].clone()));
    }
    assert!(figures.windows(2).all(|w| w[0] == w[1]), "{figures:?}");
    let (shared, model) = stop_clean(load, 1000);
    assert!(keys_on(&fleet.servers[1]).is_empty(), "s1 was drained");
    // Every member checks the same history against the same placement.
    let mut fixed = filler();
    fixed.extend((0..3).map(|i| format!("probe:p{i}")));
    for m in &fleet.members {
        check(m.port, &shared, &model, &m3, &fleet.shards(&[0, 2]), &fixed);
    }
    assert_eq!(
        fleet.same_epoch(epoch),
        epoch,
        "no publication after the end"
    );
}

/// The mover's proxy is SIGKILLed mid-move: another member is elected,
/// resumes from the state in etcd and finishes; nothing is lost.
#[test]
fn the_mover_killed_mid_move_is_replaced_and_nothing_is_lost() {
    // (A short TTL on a busy machine risks a renewal slower than it.)
    let mut fleet = Fleet::start("fleet-b", [6; 3]);
    let m2 = fleet.map("m2.yaml", &[0, 1, 2]);
    let load = Load::start(&fleet.ports(), CLIENTS);
    let mover = fleet.leader();
    let other = (mover + 1) % 3;
    // Slow, so the kill lands mid-move.
    let rev = fleet.rebalance(other, &m2, 300);
    // Killed once the mover has recorded in etcd what it moved (every 2 s).
    let recorded = recorded_progress(&fleet, "fleet-b", 400);
    fleet.wait_progress(mover, "moved 400 keys", |p| {
        p["state"] == "moving" && num(p, "keys_moved") >= 400
    });
    fleet.members[mover].kill();

    let next = fleet.leader();
    assert_ne!(next, mover);
    // The new mover counts on from what the killed one recorded.
    // (Its estimate is made once it has counted on from the record; until
    // its mover runs, PROGRESS shows the state in etcd, without one.)
    let p = fleet.wait_progress(next, "the new mover estimated", |p| {
        p["state"] == "moving" && num(p, "keys_estimate") > 0
    });
    assert!(
        num(&p, "keys_moved") >= recorded,
        "keys_moved after the takeover, {recorded} recorded: {p:?}"
    );
    assert_eq!(
        fleet.members[other].admin().text(&[b"THROTTLE", b"0"]),
        "OK"
    );
    let p = fleet.wait_done(rev);
    assert_eq!(p["verify"], "ok", "{p:?}");
    assert_eq!(p["verify_left_behind"], "0", "{p:?}");
    assert!(
        fleet.members[next]
            .log_text()
            .contains("this proxy runs the fleet's rebalance mover"),
        "the new leader resumed the move"
    );
    fleet.same_epoch(rev as u64);
    let (shared, model) = stop_clean(load, 1000);
    let mut fixed = filler();
    fixed.extend((0..3).map(|i| format!("probe:p{i}")));
    check(
        fleet.members[next].port,
        &shared,
        &model,
        &m2,
        &fleet.shards(&[0, 1, 2]),
        &fixed,
    );
}

/// Waits until the mover of cluster `cluster` has recorded at least `keys`
/// moved keys in etcd; returns the recorded count.
fn recorded_progress(fleet: &Fleet, cluster: &str, keys: u64) -> u64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let coord = shardgate::coord::Coord::connect(&[fleet.etcd[0].url()], cluster)
            .await
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(m) = coord.progress().await.unwrap()
                && m.keys >= keys
            {
                return m.keys;
            }
            assert!(Instant::now() < deadline, "no progress recorded in etcd");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// A member frozen (SIGSTOP) past its lease while the move goes on without
/// it: once resumed it answers -TRYAGAIN until it has caught up, then
/// serves with the fleet's routing; nothing acknowledged is lost.
#[test]
fn a_member_frozen_past_its_lease_fences_itself_and_rejoins() {
    // p2's short lease expires soon after the freeze; the others' are
    // long enough not to expire on a busy machine. One source per step, so
    // that a later window enters Migrating while the member is frozen.
    let fleet = Fleet::start_with(
        "fleet-c",
        [6, 6, 3],
        vec![Etcd::start()],
        &["--rebalance-sources", "1"],
    );
    let m2 = fleet.map("m2.yaml", &[0, 1, 2]);
    let load = Load::start(&fleet.ports(), CLIENTS);
    let mover = fleet.leader();
    let frozen = if mover == 2 { 1 } else { 2 };
    let rev = fleet.rebalance(mover, &m2, 400);
    fleet.wait_progress(mover, "moved 100 keys", |p| num(p, "keys_moved") >= 100);
    fleet.members[frozen].signal("STOP");
    // The fleet goes on without it: its lease expires (the mover stops
    // waiting for it) and a later window enters Migrating, which the frozen
    // member never published.
    let goes_on = fleet.wait_progress(mover, "moved a window without the frozen member", |p| {
        num(p, "slots_done") > 0 && num(p, "slots_migrating") > 0
    });
    let deadline = Instant::now() + PATIENCE;
    while fleet.members[mover].metric("shardgate_fleet_proxies") > 2.0 {
        assert!(
            Instant::now() < deadline,
            "the frozen member's lease never expired: {goes_on:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    fleet.members[frozen].signal("CONT");
    let resumed = Instant::now();

    // It serves again (after catching up), within a few seconds.
    fleet.members[frozen].wait_serving();
    assert_eq!(
        fleet.members[mover].admin().text(&[b"THROTTLE", b"0"]),
        "OK"
    );
    let p = fleet.wait_done(rev);
    assert_eq!(p["verify"], "ok", "{p:?}");
    assert_eq!(p["verify_left_behind"], "0", "{p:?}");
    fleet.same_epoch(rev as u64);
    std::thread::sleep(Duration::from_millis(300));
    let (shared, model) = load.stop();

    let port = fleet.members[frozen].port;
    let tryagain = shared.tryagain.lock().unwrap().clone();
    assert!(
        tryagain.iter().all(|(p, _, _)| *p == port),
        "only the frozen member answered TRYAGAIN"
    );
    assert!(
        !tryagain.is_empty(),
        "the frozen member refused keys after its lease expired\n{}",
        fleet.members[frozen].log_text()
    );
    let last = tryagain.iter().map(|(_, t, _)| *t).max().unwrap();
    assert!(
        last.saturating_duration_since(resumed) < Duration::from_secs(20),
        "TRYAGAIN stopped {:?} after the resume ({} replies)",
        last.saturating_duration_since(resumed),
        tryagain.len()
    );
    assert!(
        fleet.members[frozen]
            .log_text()
            .contains("rejoined the fleet; routing keys again"),
        "{}",
        fleet.members[frozen].log_text()
    );
    assert!(model.ops > 1000, "the clients ran ({} ops)", model.ops);
    // A command the frozen member had sent to a shard times out there: it
    // could not read the reply for longer than `command_timeout_ms`. Its
    // outcome is unknown, which the model allows for.
    let unexpected: Vec<&String> = model
        .errors
        .iter()
        .filter(|e| !e.contains("timed out after"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "error replies other than TRYAGAIN: {:?}",
        &unexpected[..unexpected.len().min(10)]
    );
    // Writes through the resumed member land on their owners under the
    // new map, directly on the shards.
    let table = table_of(&m2);
    let mut c = connect(port).unwrap();
    for i in 0..300 {
        let k = format!("after:{i}");
        let _: () = redis::cmd("SET").arg(&k).arg(i).query(&mut c).unwrap();
        let owner = owner_name(&table, &k);
        for (name, server) in fleet.shards(&[0, 1, 2]) {
            let n: i64 = redis::cmd("EXISTS")
                .arg(&k)
                .query(&mut server.connection())
                .unwrap();
            assert_eq!(n, i64::from(name == owner), "{k} on {name} (owner {owner})");
        }
    }
    let mut fixed = filler();
    fixed.extend((0..3).map(|i| format!("probe:p{i}")));
    fixed.extend((0..300).map(|i| format!("after:{i}")));
    check(
        port,
        &shared,
        &model,
        &m2,
        &fleet.shards(&[0, 1, 2]),
        &fixed,
    );
}

/// A big hash (copied piece by piece, not by one MIGRATE) moves while
/// clients of all three proxies increment its fields: the mover and the
/// commands that touch it on the other proxies take the key's claim in
/// etcd, so one copier runs in the whole fleet and every acknowledged
/// HINCRBY is counted on the new shard.
#[test]
fn a_big_key_is_copied_once_across_the_fleet_while_every_proxy_writes_it() {
    let fleet = Fleet::start("fleet-big", [6; 3]);
    let m1 = fleet.map("m1.yaml", &[0, 1]);
    let m2 = fleet.map("m2.yaml", &[0, 1, 2]);
    let (t1, t2) = (table_of(&m1), table_of(&m2));
    let hash = (0..)
        .map(|i| format!("bighash{i}"))
        .find(|k| owner_name(&t1, k) != "s2" && owner_name(&t2, k) == "s2")
        .unwrap();
    let mut c = connect(fleet.members[0].port).unwrap();
    let _: i64 = redis::cmd("EVAL")
        .arg("for i=1,300000 do redis.call('HSET', KEYS[1], 'field:'..i, 'value:'..i) end return 1")
        .arg(1)
        .arg(&hash)
        .query(&mut c)
        .unwrap();
    let size: i64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&hash)
        .query(&mut c)
        .unwrap();
    assert!(size >= 16 << 20, "{hash} is {size} bytes, not a big key");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = fleet
        .ports()
        .into_iter()
        .enumerate()
        .map(|(w, port)| {
            let (stop, hash) = (stop.clone(), hash.clone());
            std::thread::spawn(move || {
                let mut c = connect(port).unwrap();
                let (mut acked, mut unknown) = (0u64, 0u64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r: redis::RedisResult<i64> = redis::cmd("HINCRBY")
                        .arg(&hash)
                        .arg(format!("w{w}"))
                        .arg(1)
                        .query(&mut c);
                    match r {
                        Ok(_) => acked += 1,
                        Err(e) => {
                            unknown += 1;
                            eprintln!("writer {w}: {e}");
                            if let Ok(again) = connect(port) {
                                c = again;
                            }
                        }
                    }
                }
                (acked, unknown)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let rev = fleet.rebalance(1, &m2, 0);
    let p = fleet.wait_done(rev);
    assert_eq!(p["verify"], "ok", "{p:?}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let counts: Vec<(u64, u64)> = writers.into_iter().map(|t| t.join().unwrap()).collect();
    // The hash is whole on s2, with every acknowledged increment.
    let mut s2 = fleet.servers[2].connection();
    for (w, (acked, unknown)) in counts.iter().enumerate() {
        assert!(*acked > 0, "writer {w} ran");
        assert_eq!(*unknown, 0, "writer {w} got errors\n{}", fleet.logs());
        let v: Option<u64> = redis::cmd("HGET")
            .arg(&hash)
            .arg(format!("w{w}"))
            .query(&mut s2)
            .unwrap();
        assert_eq!(v, Some(*acked), "writer {w}'s HINCRBYs on the new shard");
    }
    let hlen: u64 = redis::cmd("HLEN").arg(&hash).query(&mut s2).unwrap();
    assert_eq!(hlen, 300_000 + 3);
    for s in &fleet.servers[..2] {
        let n: i64 = redis::cmd("EXISTS")
            .arg(&hash)
            .query(&mut s.connection())
            .unwrap();
        assert_eq!(n, 0, "{hash} left on its old shard");
    }
    let logs = fleet.logs();
    assert!(logs.contains("moved a big key"), "{logs}");
    let claims: f64 = fleet
        .members
        .iter()
        .map(|m| m.metric_sum("shardgate_fleet_key_claims_total"))
        .sum();
    assert!(claims >= 1.0, "the copy was claimed in etcd");
}

/// The primary a member uses for shard 0 (`INFO proxy`).
fn member_primary(port: u16) -> String {
    let Ok(mut c) = connect(port) else {
        return String::new();
    };
    let info: String = redis::cmd("INFO")
        .arg("proxy")
        .query(&mut c)
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("shard0:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("primary=")))
        .unwrap_or_default()
        .to_owned()
}

/// A fleet whose shard follows a Sentinel group: every member asks Sentinel
/// on its own, and when the primary dies each follows the promotion without
/// a map change (the fleet's epoch stays), and writes through one member are
/// read through the other on the new primary.
#[test]
fn every_member_follows_a_sentinel_failover_without_a_map_change() {
    const MASTER: &str = "fleetmaster";
    let dir = TempDir::new("fleet-sentinel");
    let etcd = vec![Etcd::start()];
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let sentinel = SentinelServer::start(MASTER, primary.port, 1);
    sentinel.wait_for_group(MASTER, 1, 0);
    let map = write(
        dir.path(),
        "map.yaml",
        &format!(
            "regions:\n  - name: us\noptions:\n  connect_timeout_ms: 500\n  command_timeout_ms: 1000\n  health_check_interval_ms: 200\n  sentinel_check_interval_ms: 1000\nshards:\n  - name: s0\n    region: us\n    sentinel:\n      addrs: [{}]\n      master: {MASTER}\n",
            sentinel.addr()
        ),
    );
    let members: Vec<Member> = (0..2)
        .map(|i| {
            let seed = (i == 0).then_some(map.as_path());
            Member::start(
                dir.path(),
                &etcd,
                "fleet-sentinel",
                &format!("p{i}"),
                seed,
                6,
                &[],
            )
        })
        .collect();
    let logs = || {
        members
            .iter()
            .map(|m| format!("--- {} ---\n{}", m.id, m.log_text()))
            .collect::<String>()
    };
    for m in &members {
        assert_eq!(member_primary(m.port), primary.addr(), "{}", logs());
    }
    let epoch = members[0].map_epoch();
    let mut c0 = connect(members[0].port).unwrap();
    let _: () = redis::cmd("SET")
        .arg("before")
        .arg("1")
        .query(&mut c0)
        .unwrap();
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query(&mut c0)
        .unwrap_or(0);

    primary.kill();
    // Both members route to the promoted replica on their own.
    let deadline = Instant::now() + PATIENCE;
    for m in &members {
        while member_primary(m.port) != replica.addr() {
            assert!(
                Instant::now() < deadline,
                "{} did not follow the failover to {}\n{}",
                m.id,
                replica.addr(),
                logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // A write through one member is read through the other, on the new
    // primary; the replicated write from before is there.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let wrote = connect(members[0].port)
            .and_then(|mut c| redis::cmd("SET").arg("after").arg("2").query::<()>(&mut c));
        if wrote.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "writes never resumed: {wrote:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut c1 = connect(members[1].port).unwrap();
    let got: (Option<String>, Option<String>) = redis::cmd("MGET")
        .arg("before")
        .arg("after")
        .query(&mut c1)
        .unwrap();
    assert_eq!(got, (Some("1".into()), Some("2".into())));
    let direct: Option<String> = redis::cmd("GET")
        .arg("after")
        .query(&mut replica.connection())
        .unwrap();
    assert_eq!(direct.as_deref(), Some("2"));
    // A failover is not a map change: the fleet's epoch is the same.
    for m in &members {
        assert_eq!(m.map_epoch(), epoch, "{}", m.id);
    }
}

/// The most `shardgate_rebalance_sources_moving` the mover's member showed
/// while the move of `revision` ran, and whether it took small bursts.
fn watch_move(fleet: &Fleet, mover: usize, revision: i64) -> (f64, bool) {
    let (mut most, mut small, mut started) = (0.0f64, false, false);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let m = &fleet.members[mover];
        most = most.max(m.metric("shardgate_rebalance_sources_moving"));
        small |= m.metric("shardgate_rebalance_small_bursts") == 1.0;
        // (The mover starts once its member has seen the rebalance in etcd.)
        let running = m.metric("shardgate_rebalance_running") == 1.0;
        if started && !running {
            break;
        }
        started |= running;
        assert!(Instant::now() < deadline, "the move never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    let p = fleet.wait_done(revision);
    assert_eq!(p["verify"], "ok", "{p:?}");
    (most, small)
}

/// Waits until the mover's member lists `n` proxies serving clients.
fn wait_serving_proxies(fleet: &Fleet, mover: usize, n: f64) {
    let deadline = Instant::now() + PATIENCE;
    while fleet.members[mover].metric("shardgate_fleet_proxies_serving") != n {
        assert!(
            Instant::now() < deadline,
            "never {n} proxies serving: {}",
            fleet.members[mover].admin().text(&[b"STATUS"])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The mover yields to the clients of every proxy of the fleet, not only
/// its own: with one client reading through another proxy, it takes small
/// bursts and moves from one source at a time; alone it takes full bursts
/// from both sources at once (tests/rebalance_ops/sources.rs shows the
/// same on one proxy with `MONITOR`).
#[test]
fn the_mover_yields_to_clients_of_other_proxies() {
    const KEYS: usize = 40_000;
    let fleet = Fleet::start("fleet-yield", [6; 3]);
    common::fleet::fill(fleet.members[0].port, KEYS);
    let m1 = fleet.map("m1.yaml", &[0, 1]);
    let m2 = fleet.map("m2.yaml", &[0, 1, 2]);
    let mover = fleet.leader();
    let reading = (mover + 1) % 3;

    // Alone: both sources (s0, s1) at once, full bursts. (The fill made
    // p0 say it serves clients: its flag clears 2 s after, and the mover's
    // member lists the fleet every second.)
    std::thread::sleep(Duration::from_secs(3));
    wait_serving_proxies(&fleet, mover, 0.0);
    let rev = fleet.rebalance(mover, &m2, 0);
    let (most, small) = watch_move(&fleet, mover, rev);
    assert_eq!((most, small), (2.0, false), "alone");
    let rev = fleet.rebalance(mover, &m1, 0);
    watch_move(&fleet, mover, rev);

    // A client reading through another proxy only.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, port) = (stop.clone(), fleet.members[reading].port);
        std::thread::spawn(move || {
            let mut c = connect(port).unwrap();
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let v: Option<String> = redis::cmd("GET")
                    .arg(format!("filler:{}", n % KEYS))
                    .query(&mut c)
                    .unwrap();
                assert_eq!(v, Some(format!("f{}", n % KEYS)));
                n += 1;
            }
            n
        })
    };
    wait_serving_proxies(&fleet, mover, 1.0);
    let status = fleet.members[mover].admin().text(&[b"STATUS"]);
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("proxy:id=p{reading},")))
        .unwrap_or_else(|| panic!("p{reading} in {status}"));
    assert!(line.ends_with(",serving=1"), "{line}");
    let rev = fleet.rebalance(mover, &m2, 0);
    let (most, small) = watch_move(&fleet, mover, rev);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(
        (most, small),
        (1.0, true),
        "beside another proxy's client: {}",
        fleet.logs()
    );
    // Its flag clears once the client is gone.
    wait_serving_proxies(&fleet, mover, 0.0);
}

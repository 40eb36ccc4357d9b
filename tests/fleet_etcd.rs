//! A fleet of proxies (`serve --etcd --cluster`) when etcd itself is in
//! trouble (down for less than a lease and for longer, one of three members
//! lost, its history compacted under the watches), and the admin commands
//! that go straight to etcd. Clients keep running over the three proxies;
//! the history model of `common::history` checks afterwards that nothing
//! acknowledged was lost, resurrected or rolled back.

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::fleet::{CLIENTS, Fleet, Member, PATIENCE, filler, first_window_keys, num};
use common::history::{Load, check, stop_clean};

/// etcd is down for 1.5 s around the end of a window: clients are served
/// throughout, the mover waits for etcd and finishes. The lease TTL is 15 s:
/// what the members see of the outage is longer than 1.5 s (etcd's restart
/// takes about a second and a request on a connection made while it starts
/// can hang until the client's 3 s timeout), and a member fences itself at
/// `last renewal sent + TTL - TTL/5`, renewing every TTL/3.
#[test]
fn an_etcd_outage_shorter_than_the_lease_pauses_the_move_only() {
    let mut fleet = Fleet::start("fleet-d", [15; 3]);
    let m1 = fleet.dir.path().join("m1.yaml");
    let m2 = fleet.map("m2.yaml", &[0, 1, 2]);
    let load = Load::start(&fleet.ports(), CLIENTS);
    let mover = fleet.leader();
    let rev = fleet.rebalance(0, &m2, 500);
    // Stop etcd shortly before the first window's end, so the mover has to
    // record it (and start the next) while etcd is away.
    let first = first_window_keys(&m1, &m2) as u64;
    fleet.wait_progress(mover, "reached the end of the first window", |p| {
        num(p, "keys_moved") + 150 >= first || num(p, "slots_done") > 0
    });
    fleet.etcd[0].stop();
    std::thread::sleep(Duration::from_millis(1500));
    fleet.etcd[0].restart();

    assert_eq!(fleet.members[2].admin().text(&[b"THROTTLE", b"0"]), "OK");
    let p = fleet.wait_done(rev);
    assert_eq!(p["verify"], "ok", "{p:?}");
    assert_eq!(p["verify_left_behind"], "0", "{p:?}");
    fleet.same_epoch(rev as u64);
    let (shared, model) = stop_clean(load, 1000);
    let mut fixed = filler();
    fixed.extend((0..3).map(|i| format!("probe:p{i}")));
    check(
        fleet.members[2].port,
        &shared,
        &model,
        &m2,
        &fleet.shards(&[0, 1, 2]),
        &fixed,
    );
}

/// etcd frozen (SIGSTOP) for longer than the members' leases: every member
/// fences itself (clients get TRYAGAIN, nothing else), and when etcd
/// answers again, finds its lease gone and rejoins with a new one. The
/// first renewals after the thaw are made on new keep-alive streams (the
/// old ones timed out during the freeze), which etcd refuses with "lease
/// not found" rather than a TTL of 0: a member that took that for a
/// passing failure stayed fenced for good.
#[test]
fn an_etcd_outage_longer_than_the_leases_fences_every_member_until_it_is_back() {
    let fleet = Fleet::start("fleet-f", [3; 3]);
    let load = Load::start(&fleet.ports(), CLIENTS);
    std::thread::sleep(Duration::from_millis(500));
    fleet.etcd[0].signal("STOP");
    let frozen = Instant::now();
    // Past the lease (3 s) and the 3 s request timeout of renewals.
    std::thread::sleep(Duration::from_secs(7));
    let fenced: Vec<bool> = fleet
        .members
        .iter()
        .map(|m| m.metric("shardgate_fleet_fenced") == 1.0)
        .collect();
    fleet.etcd[0].signal("CONT");
    let thawed = Instant::now();
    assert_eq!(fenced, [true; 3], "members fenced while etcd was frozen");
    for m in &fleet.members {
        m.wait_serving();
        let log = m.log_text();
        assert!(
            log.contains("rejoined the fleet; routing keys again"),
            "{}: {log}",
            m.id
        );
    }
    let rejoined = thawed.elapsed();
    // The fleet can move slots again: a mover is elected under a new lease.
    let m2 = fleet.map("m2.yaml", &[0, 1, 2]);
    let rev = fleet.rebalance(1, &m2, 0);
    let p = fleet.wait_done(rev);
    assert_eq!(p["verify"], "ok", "{p:?}");
    fleet.same_epoch(rev as u64);
    std::thread::sleep(Duration::from_millis(300));
    let (shared, model) = load.stop();
    assert!(model.ops > 1000, "the clients ran ({} ops)", model.ops);
    let tryagain = shared.tryagain.lock().unwrap().clone();
    assert!(!tryagain.is_empty(), "no client was refused while fenced");
    // Refusals only from a lease's end (less the margin) to the rejoin.
    let last = tryagain.iter().map(|(_, t, _)| *t).max().unwrap();
    assert!(
        last >= frozen && last <= thawed + rejoined,
        "TRYAGAIN {:?} after the freeze (thawed after {:?}, rejoined {rejoined:?} later)",
        last - frozen,
        thawed - frozen
    );
    let unexpected: Vec<&String> = model
        .errors
        .iter()
        .filter(|e| !e.contains("timed out after"))
        .collect();
    assert!(unexpected.is_empty(), "error replies: {unexpected:?}");
    let mut fixed = filler();
    fixed.extend((0..3).map(|i| format!("probe:p{i}")));
    check(
        fleet.members[0].port,
        &shared,
        &model,
        &m2,
        &fleet.shards(&[0, 1, 2]),
        &fixed,
    );
}

/// etcd compacts its history (as `--auto-compaction-retention` does) past
/// the fleet state's revision, then restarts: each member's watch, started
/// again after the state it published, finds that history gone. It reads
/// the state and watches on from the compaction revision, once; it used to
/// start a new watch from the same revision every 200 ms, for good. The
/// next change of the state reaches every member.
#[test]
fn a_watch_whose_history_etcd_compacted_goes_on_from_the_compaction() {
    let mut fleet = Fleet::start("fleet-g", [6; 3]);
    // Lease renewals rewrite the member keys: the revision moves past the
    // state's. Everything up to now is compacted away.
    std::thread::sleep(Duration::from_millis(2500));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([fleet.etcd[0].url()], None)
            .await
            .unwrap();
        let now = c.get("any", None).await.unwrap();
        let revision = now.header().unwrap().revision();
        c.compact(
            revision,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    });
    fleet.etcd[0].restart();
    let watches = |m: &Member, start: &str| -> f64 {
        let body = common::rebalance::ureq_get(m.metrics_port);
        let series = format!("shardgate_fleet_state_watches_total{{start=\"{start}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + PATIENCE;
    while !fleet
        .members
        .iter()
        .all(|m| watches(m, "compaction") >= 1.0)
    {
        assert!(
            Instant::now() < deadline,
            "no watch met the compaction\n{}",
            fleet.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Settled: no watch started again and again.
    let before: Vec<f64> = fleet
        .members
        .iter()
        .map(|m| watches(m, "published") + watches(m, "compaction"))
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    for (m, before) in fleet.members.iter().zip(before) {
        let now = watches(m, "published") + watches(m, "compaction");
        assert_eq!(
            now,
            before,
            "{} started {} watches in 2 s",
            m.id,
            now - before
        );
    }
    // The watches see the next change: a rebalance, every member on its epoch.
    let m2 = fleet.map("m2.yaml", &[0, 1, 2]);
    let rev = fleet.rebalance(2, &m2, 0);
    let p = fleet.wait_done(rev);
    assert_eq!(p["verify"], "ok", "{p:?}");
    fleet.same_epoch(rev as u64);
}

/// With three etcd members, killing one (the leader or not) during a move
/// changes nothing for clients: etcd keeps a quorum, the proxies' clients
/// fail over to the other members, the move completes and verifies, and
/// no proxy fences itself.
#[test]
fn losing_one_of_three_etcd_members_changes_nothing() {
    let mut fleet = Fleet::start_on("fleet-e", [15; 3], Etcd::start_cluster(3));
    let m2 = fleet.map("m2.yaml", &[0, 1, 2]);
    let load = Load::start(&fleet.ports(), CLIENTS);
    let mover = fleet.leader();
    let rev = fleet.rebalance(0, &m2, 500);
    fleet.wait_progress(mover, "moved some keys", |p| num(p, "keys_moved") >= 100);
    // SIGKILL one member; the others keep the quorum.
    fleet.etcd[0].stop();
    assert_eq!(fleet.members[2].admin().text(&[b"THROTTLE", b"0"]), "OK");
    let p = fleet.wait_done(rev);
    assert_eq!(p["verify"], "ok", "{p:?}");
    assert_eq!(p["verify_left_behind"], "0", "{p:?}");
    fleet.same_epoch(rev as u64);
    let (shared, model) = stop_clean(load, 1000);
    let mut fixed = filler();
    fixed.extend((0..3).map(|i| format!("probe:p{i}")));
    check(
        fleet.members[2].port,
        &shared,
        &model,
        &m2,
        &fleet.shards(&[0, 1, 2]),
        &fixed,
    );
}

/// Runs `shardgate admin ARGS` with the test's admin password.
fn admin_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::rebalance::BIN)
        .arg("admin")
        .args(args)
        .env("SHARDGATE_ADMIN_PASSWORD", common::rebalance::ADMIN_PW)
        .output()
        .expect("run shardgate admin")
}

/// `shardgate admin pause|throttle|resume|status|follow --etcd` go
/// straight to etcd, no proxy asked: the mover stops, every member reports
/// the control, `status` shows it, and `follow` follows the move to its
/// verified end once resumed. Without a rebalance the controls and
/// `follow` are refused, and `--etcd` with `--admin` is a usage error.
#[test]
fn pause_throttle_and_resume_straight_in_etcd_reach_the_mover() {
    let cluster = "fleet-ctl";
    let fleet = Fleet::start(cluster, [6; 3]);
    let url = fleet.etcd[0].url();
    let straight = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--etcd", &url, "--cluster", cluster]);
        admin_cli(&all)
    };
    let out = straight(&["pause"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no rebalance is running in the fleet"),
        "{err}"
    );
    let out = admin_cli(&["pause", "--etcd", &url, "--admin", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = straight(&["follow"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no rebalance is known"),
        "{err}"
    );

    let m2 = fleet.map("m2.yaml", &[0, 1, 2]);
    let mover = fleet.leader();
    let rev = fleet.rebalance((mover + 1) % 3, &m2, 300);
    fleet.wait_progress(mover, "moved keys", |p| num(p, "keys_moved") > 0);

    let out = straight(&["pause"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("is paused"),
        "{out:?}"
    );
    let on_every_member = |field: &str, want: &str| {
        let deadline = Instant::now() + PATIENCE;
        for m in &fleet.members {
            let mut admin = m.admin();
            loop {
                let p = admin.progress();
                if p[field] == want {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} never reported {field} {want}: {p:?}\n{}",
                    m.id,
                    fleet.logs()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    on_every_member("paused", "1");
    let out = straight(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("rebalance: running") && text.contains("paused"),
        "{text}"
    );
    // A batch under way when the pause came may still end; then nothing.
    let moved = || num(&fleet.members[mover].admin().progress(), "keys_moved");
    std::thread::sleep(Duration::from_millis(1000));
    let paused_at = moved();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(moved(), paused_at, "the mover went on while paused");

    let out = straight(&["throttle", "0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("unthrottled"),
        "{out:?}"
    );
    on_every_member("throttle_keys_per_sec", "0");
    assert_eq!(moved(), paused_at, "lifting the throttle resumed the mover");

    let out = straight(&["resume"]);
    assert!(out.status.success(), "{out:?}");
    // Follows the move to its end from etcd alone.
    let out = straight(&["follow"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("rebalance done in")
            && text.contains("verification ok"),
        "{out:?}"
    );
    let p = fleet.wait_done(rev);
    assert_eq!(p["verify"], "ok", "{p:?}");
    assert_eq!(p["verify_left_behind"], "0", "{p:?}");
    assert_eq!(p["paused"], "0", "{p:?}");
}

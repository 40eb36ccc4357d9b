//! Failing backends under load: a stopped (SIGSTOP) shard yields errors
//! within the command timeout and then fails fast (circuit breaker), a killed
//! shard fails only its own keys, and both recover by themselves.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Spec, calls};
use redis::Commands;

/// One key per shard, found through the proxy's own routing table.
fn key_on(c: &Cluster, shard: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| c.shard_of(k) == shard)
        .expect("some key lands on every shard")
}

fn conn_with_timeout(c: &Cluster) -> redis::Connection {
    let con = c.conn();
    con.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    con
}

#[test]
fn a_stopped_shard_times_out_then_fails_fast_and_recovers() {
    let c = Cluster::start(Spec::default()); // command_timeout_ms: 2000
    let mut con = conn_with_timeout(&c);
    let keys: Vec<String> = (0..4).map(|s| key_on(&c, s, "stop")).collect();
    for k in &keys {
        let _: () = con.set(k, 1).unwrap();
    }

    c.primaries[2].signal("STOP");
    let started = Instant::now();
    let err = con.get::<_, i64>(&keys[2]).unwrap_err().to_string();
    let waited = started.elapsed();
    assert!(err.contains("timed out"), "first request times out: {err}");
    assert!(
        waited < Duration::from_secs(10),
        "answered within the timeout, not hung ({waited:?})"
    );

    // Now the breaker is open: the shard's keys fail at once, naming the
    // backend, and every other shard serves on the same connection.
    for _ in 0..3 {
        let err = con.get::<_, i64>(&keys[2]).unwrap_err().to_string();
        assert!(
            err.contains("circuit open") && err.contains(&c.primaries[2].addr()),
            "{err}"
        );
        for (s, k) in keys.iter().enumerate().filter(|(s, _)| *s != 2) {
            let v: i64 = con.get(k).unwrap_or_else(|e| panic!("shard {s}: {e}"));
            assert_eq!(v, 1);
        }
    }

    c.primaries[2].signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match con.get::<_, i64>(&keys[2]) {
            Ok(v) => {
                assert_eq!(v, 1);
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "shard never came back after SIGCONT: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn killing_a_shard_under_load_fails_only_its_keys_and_it_comes_back() {
    let mut c = Cluster::start(Spec::default());
    let victim = 1;
    let keys: Arc<Vec<(usize, String)>> = Arc::new(
        (0..64)
            .map(|i| {
                let k = format!("load{i}");
                (c.shard_of(&k), k)
            })
            .collect(),
    );
    assert!(keys.iter().any(|(s, _)| *s == victim));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let mut con = conn_with_timeout(&c);
            let (keys, stop) = (keys.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut errors = [0u64; 4];
                let mut ok = [0u64; 4];
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let (shard, key) = &keys[i % keys.len()];
                    let r: redis::RedisResult<i64> = con.incr(key, 1);
                    match r {
                        Ok(_) => ok[*shard] += 1,
                        Err(_) => errors[*shard] += 1,
                    }
                    i += 8;
                }
                (ok, errors)
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    c.primaries[victim].kill();
    std::thread::sleep(Duration::from_millis(1500));
    c.primaries[victim].restart();
    // Give the breaker time to probe and close (first periods are short).
    std::thread::sleep(Duration::from_millis(3000));
    let before = calls(&c.primaries[victim], "incrby") + calls(&c.primaries[victim], "incr");
    std::thread::sleep(Duration::from_millis(500));
    let after = calls(&c.primaries[victim], "incrby") + calls(&c.primaries[victim], "incr");
    stop.store(true, Ordering::Relaxed);

    let mut ok = [0u64; 4];
    let mut errors = [0u64; 4];
    for w in workers {
        let (o, e) = w.join().expect("worker");
        for s in 0..4 {
            ok[s] += o[s];
            errors[s] += e[s];
        }
    }
    for s in 0..4 {
        if s == victim {
            assert!(errors[s] > 0, "the dead shard's keys failed: {errors:?}");
        } else {
            assert_eq!(errors[s], 0, "shard {s} saw errors: {errors:?}");
            assert!(ok[s] > 0, "shard {s} served nothing: {ok:?}");
        }
    }
    assert!(
        after > before,
        "the restarted shard serves again ({before} -> {after} INCRs)"
    );
}

#[test]
fn a_dead_replica_leaves_the_read_rotation_and_rejoins() {
    let mut c = Cluster::start(Spec {
        replicas: true,
        read_policy: "prefer-replica",
        ..Spec::default()
    });
    let mut con = c.conn();
    let key = key_on(&c, 0, "rep");
    let _: () = con.set(&key, 7).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let reads = |c: &Cluster, con: &mut redis::Connection| {
        let (r0, p0) = (calls(&c.replicas[0], "get"), calls(&c.primaries[0], "get"));
        for _ in 0..20 {
            let v: i64 = con.get(&key).unwrap();
            assert_eq!(v, 7);
        }
        (
            calls(&c.replicas[0], "get") - r0,
            calls(&c.primaries[0], "get") - p0,
        )
    };
    assert_eq!(reads(&c, &mut con), (20, 0), "reads on the replica");

    c.replicas[0].kill();
    let (_, on_primary) = {
        // The replica's counters are gone with it: count on the primary only.
        let p0 = calls(&c.primaries[0], "get");
        for _ in 0..20 {
            let v: i64 = con.get(&key).unwrap();
            assert_eq!(v, 7);
        }
        (0, calls(&c.primaries[0], "get") - p0)
    };
    assert_eq!(on_primary, 20, "reads fell back to the primary");

    c.replicas[0].restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (on_replica, _) = reads(&c, &mut con);
        if on_replica == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica never rejoined the rotation"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Shard `shard`'s primary line in INFO's proxy section.
fn primary_line(con: &mut redis::Connection, shard: usize) -> String {
    let info: String = redis::cmd("INFO").arg("proxy").query(con).unwrap();
    info.lines()
        .find(|l| l.starts_with(&format!("shard{shard}:")))
        .unwrap_or_else(|| panic!("no shard{shard} line in:\n{info}"))
        .to_owned()
}

/// Whether shard `shard`'s primary passes its health check.
fn primary_healthy(con: &mut redis::Connection, shard: usize) -> bool {
    primary_line(con, shard).contains("healthy=1")
}

#[test]
fn the_health_check_opens_and_closes_the_breaker() {
    let c = Cluster::start(Spec {
        // A hung endpoint is noticed within 100 ms + 300 ms; requests wait
        // up to the 2 s command timeout.
        extra_options: "  connect_timeout_ms: 300\n",
        ..Spec::default()
    });
    let mut con = conn_with_timeout(&c);
    let mut probe = conn_with_timeout(&c);
    let key = key_on(&c, 2, "hc");
    let _: () = con.set(&key, 1).unwrap();

    c.primaries[2].signal("STOP");
    // Two checks in a row without an answer open the breaker (one slow
    // answer alone does not).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !primary_line(&mut probe, 2).contains("circuit_open=1") {
        assert!(
            Instant::now() < deadline,
            "the health check never opened the breaker"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!primary_healthy(&mut probe, 2));
    // Noticed by the health check, not by a request: the next write fails
    // at once instead of waiting for its command timeout.
    let started = Instant::now();
    let err = con.set::<_, _, ()>(&key, 2).unwrap_err().to_string();
    let waited = started.elapsed();
    assert!(err.contains("circuit open"), "{err}");
    assert!(
        waited < Duration::from_millis(1500),
        "the write waited {waited:?} for a backend the health check knew hung"
    );

    c.primaries[2].signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !primary_healthy(&mut probe, 2) {
        assert!(Instant::now() < deadline, "the shard never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Healthy again: writes pass at once, not after the breaker's probe.
    let _: () = con
        .set(&key, 3)
        .unwrap_or_else(|e| panic!("a write right after the health check passed failed: {e}"));
}

#[test]
fn a_read_in_flight_on_a_hung_replica_is_answered_by_the_primary() {
    let c = Cluster::start(Spec {
        replicas: true,
        read_policy: "prefer-replica",
        ..Spec::default()
    });
    let mut con = conn_with_timeout(&c);
    let key = key_on(&c, 0, "hung");
    let _: () = con.set(&key, 7).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = calls(&c.replicas[0], "get");
    let v: i64 = con.get(&key).unwrap();
    assert_eq!(v, 7);
    assert_eq!(
        calls(&c.replicas[0], "get"),
        before + 1,
        "reads go to the replica"
    );

    c.replicas[0].signal("STOP");
    // Sent to the replica before anything noticed it hangs: it times out
    // there and is answered by the primary instead of failing.
    let p0 = calls(&c.primaries[0], "get");
    let v: i64 = con
        .get(&key)
        .unwrap_or_else(|e| panic!("a read on a hung replica failed instead of moving: {e}"));
    assert_eq!(v, 7);
    assert_eq!(
        calls(&c.primaries[0], "get"),
        p0 + 1,
        "the primary answered"
    );
    c.replicas[0].signal("CONT");
}

#[test]
fn a_replica_whose_applier_stalls_leaves_the_read_rotation() {
    let c = Cluster::start(Spec {
        replicas: true,
        read_policy: "prefer-replica",
        extra_options: "  max_replica_lag_ms: 1000\n",
        ..Spec::default()
    });
    let mut con = conn_with_timeout(&c);
    let key = key_on(&c, 0, "stale");
    let _: () = con.set(&key, 1).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let r0 = calls(&c.replicas[0], "get");
    let v: i64 = con.get(&key).unwrap();
    assert_eq!(
        (v, calls(&c.replicas[0], "get") - r0),
        (1, 1),
        "read on the replica"
    );

    // The replica stops applying the replication stream; its link stays up
    // and in contact, so only offsets show it falls behind.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(40_000)
        .arg("WRITE")
        .query(&mut c.replicas[0].connection())
        .unwrap();
    let _: () = con.set(&key, 2).unwrap();
    let started = Instant::now();
    let mut stale_for = Duration::ZERO;
    loop {
        let v: i64 = con.get(&key).unwrap();
        if v == 2 {
            break;
        }
        stale_for = started.elapsed();
        assert!(
            stale_for < Duration::from_secs(10),
            "reads stayed stale for {stale_for:?} with max_replica_lag_ms 1000"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("stale reads for {stale_for:?} after the replica's applier stopped");
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut c.replicas[0].connection())
        .unwrap();
    // Caught up again: back in the rotation.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r0 = calls(&c.replicas[0], "get");
        let v: i64 = con.get(&key).unwrap();
        assert_eq!(v, 2);
        if calls(&c.replicas[0], "get") > r0 {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never rejoined");
        std::thread::sleep(Duration::from_millis(100));
    }
}

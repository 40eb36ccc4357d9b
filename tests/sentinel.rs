//! Shard failover through Redis Sentinel, with real processes: a primary,
//! its replica, one or three `redis-sentinel`s, and the `shardgate` binary
//! in front of a shard that names the Sentinel group instead of a primary.
//! The failover test kills the primary under write load and checks that
//! the proxy follows Sentinel's promotion without a restart or reload, and
//! that no write Redis' replication kept (confirmed with `WAIT`) is lost.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::sentinel::SentinelServer;
use common::{KillOnDrop, RedisServer, TempDir, free_port, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");
const MASTER: &str = "sgmaster";

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics listener");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("request");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A map of one sentinel shard `s0` following `MASTER` on `sentinels`.
fn sentinel_map(dir: &TempDir, sentinels: &[&SentinelServer]) -> PathBuf {
    let addrs: Vec<String> = sentinels.iter().map(|s| s.addr()).collect();
    let yaml = format!(
        "regions:\n  - name: us\noptions:\n  connect_timeout_ms: 500\n  command_timeout_ms: 1000\n  health_check_interval_ms: 200\n  sentinel_check_interval_ms: 1000\nshards:\n  - name: s0\n    region: us\n    sentinel:\n      addrs: [{}]\n      master: {MASTER}\n",
        addrs.join(", ")
    );
    let path = dir.path().join("map.yaml");
    std::fs::write(&path, yaml).expect("write map");
    path
}

/// Starts the proxy binary on `map` with a metrics listener; its log goes
/// to `log`. Returns (process, client port, metrics port).
fn start_proxy(map: &Path, log: &Path) -> (KillOnDrop, u16, u16) {
    let (port, mport) = (free_port(), free_port());
    let child = Command::new(BIN)
        .args(["serve", "--map"])
        .arg(map)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{mport}"),
        ])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(log).expect("log file"))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn shardgate");
    let child = KillOnDrop(child);
    wait_for_port(port);
    (child, port, mport)
}

fn proxy_conn(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .expect("client")
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect to the proxy")
}

/// The primary the proxy uses for shard 0 (`INFO proxy`).
fn proxy_primary(con: &mut redis::Connection) -> String {
    let info: String = redis::cmd("INFO")
        .arg("proxy")
        .query(con)
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("shard0:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("primary=")))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_proxy_starts_on_a_sentinel_shard_and_serves() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let sentinel = SentinelServer::start(MASTER, primary.port, 1);
    sentinel.wait_for_group(MASTER, 1, 0);
    let dir = TempDir::new("sentinel-serve");
    let map = sentinel_map(&dir, &[&sentinel]);
    let log = dir.path().join("proxy.log");
    let (_proxy, port, mport) = start_proxy(&map, &log);
    let mut con = proxy_conn(port);
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v1")
        .query(&mut con)
        .expect("SET through the proxy");
    let direct: String = redis::cmd("GET")
        .arg("k")
        .query(&mut primary.connection())
        .expect("GET on the primary");
    assert_eq!(direct, "v1", "the write went to Sentinel's primary");
    assert_eq!(proxy_primary(&mut con), primary.addr());
    // The replica comes from SENTINEL REPLICAS (once Sentinel has
    // connected to it: before, it flags it `disconnected`).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO").arg("proxy").query(&mut con).unwrap();
        if info.contains(&format!("replicas={}|", replica.addr())) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replica from Sentinel: {info}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    wait_for_port(mport);
    let deadline = Instant::now() + Duration::from_secs(10);
    let up = format!(
        "shardgate_sentinel_up{{shard=\"s0\",sentinel=\"{}\"}} 1",
        sentinel.addr()
    );
    loop {
        let body = http_get(mport, "/metrics");
        if body.contains(&up) && body.contains("shardgate_sentinel_switches_total{shard=\"s0\"} 0")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sentinel series missing:\n{body}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn maps_naming_primary_and_sentinel_are_refused_and_a_silent_sentinel_fails_startup() {
    let dir = TempDir::new("sentinel-refuse");
    let both = dir.path().join("both.yaml");
    std::fs::write(
        &both,
        "regions:\n  - name: us\nshards:\n  - name: s0\n    region: us\n    primary: 127.0.0.1:7001\n    sentinel:\n      addrs: [127.0.0.1:26379]\n      master: m\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-map")
        .arg(&both)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shards[0].sentinel: give either `primary` or `sentinel`, not both"),
        "{err}"
    );

    // A sentinel nobody listens on: startup fails and says why.
    let silent = free_port();
    let map = dir.path().join("silent.yaml");
    std::fs::write(
        &map,
        format!(
            "regions:\n  - name: us\noptions:\n  connect_timeout_ms: 300\nshards:\n  - name: s0\n    region: us\n    sentinel:\n      addrs: [127.0.0.1:{silent}]\n      master: m\n"
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--map"])
        .arg(&map)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shard s0: no sentinel of [127.0.0.1:") && err.contains("master `m`"),
        "{err}"
    );
}

/// What the load threads saw.
#[derive(Default)]
struct Load {
    ok: u64,
    errors: u64,
    /// Longest time a failed command took to fail.
    slowest_error: Duration,
    /// First success after the primary was killed.
    first_ok_after_kill: Option<Instant>,
    /// Last acknowledged value (counter) or version (SET).
    last_acked: i64,
}

/// Runs `op` in a loop until `stop`; `op` returns the acknowledged value.
fn load_thread(
    port: u16,
    stop: Arc<AtomicBool>,
    killed_at: Arc<std::sync::Mutex<Option<Instant>>>,
    acked: Arc<AtomicI64>,
    op: impl Fn(&mut redis::Connection, i64) -> redis::RedisResult<i64> + Send + 'static,
) -> thread::JoinHandle<Load> {
    thread::spawn(move || {
        let mut load = Load::default();
        let mut con = proxy_conn(port);
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let started = Instant::now();
            match op(&mut con, i) {
                Ok(v) => {
                    // Load, not a busy loop: a starved Sentinel enters TILT.
                    thread::sleep(Duration::from_micros(200));
                    load.ok += 1;
                    load.last_acked = v;
                    acked.store(v, Ordering::SeqCst);
                    let killed = *killed_at.lock().unwrap();
                    if killed.is_some_and(|k| started > k) && load.first_ok_after_kill.is_none() {
                        load.first_ok_after_kill = Some(Instant::now());
                    }
                }
                Err(e) => {
                    load.errors += 1;
                    load.slowest_error = load.slowest_error.max(started.elapsed());
                    if e.is_connection_dropped() || e.is_io_error() {
                        // The proxy keeps client connections; this would be a bug
                        // surfaced by the assertion on errors below. Reconnect.
                        con = proxy_conn(port);
                    }
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
        load
    })
}

fn failover_under_load(sentinels: usize) {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    let quorum = sentinels.div_ceil(2).max(1);
    let group: Vec<SentinelServer> = (0..sentinels)
        .map(|_| SentinelServer::start(MASTER, primary.port, quorum))
        .collect();
    for s in &group {
        s.wait_for_group(MASTER, 1, sentinels - 1);
    }
    let dir = TempDir::new("sentinel-failover");
    let map = sentinel_map(&dir, &group.iter().collect::<Vec<_>>());
    let log = dir.path().join("proxy.log");
    let (_proxy, port, mport) = start_proxy(&map, &log);
    let mut con = proxy_conn(port);
    assert_eq!(proxy_primary(&mut con), primary.addr());
    let _: () = redis::cmd("DEL")
        .arg("ctr")
        .arg("ver")
        .query(&mut con)
        .unwrap();

    // Sentinel's announcement, as a client subscribed to it sees it.
    let (switched_tx, switched) = mpsc::channel::<(Instant, String)>();
    {
        let mut sub = group[0].connection();
        thread::spawn(move || {
            let mut ps = sub.as_pubsub();
            if ps.subscribe("+switch-master").is_err() {
                return;
            }
            if let Ok(msg) = ps.get_message() {
                let payload: String = msg.get_payload().unwrap_or_default();
                let _ = switched_tx.send((Instant::now(), payload));
            }
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let killed_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let (ctr_acked, ver_acked) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicI64::new(0)));
    let incr = load_thread(
        port,
        stop.clone(),
        killed_at.clone(),
        ctr_acked.clone(),
        |c, _| redis::cmd("INCR").arg("ctr").query(c),
    );
    let set = load_thread(
        port,
        stop.clone(),
        killed_at.clone(),
        ver_acked.clone(),
        |c, i| {
            redis::cmd("SET")
                .arg("ver")
                .arg(i)
                .query::<()>(c)
                .map(|()| i)
        },
    );
    // Durability marks: what was acknowledged before a marker write that
    // the replica confirmed (WAIT 1) is on the replica (replication keeps
    // order), so it must survive the failover.
    let durable = {
        let (stop, ctr, ver) = (stop.clone(), ctr_acked.clone(), ver_acked.clone());
        let mut direct = primary.connection();
        thread::spawn(move || {
            let mut durable = (0i64, 0i64);
            while !stop.load(Ordering::Relaxed) {
                let seen = (ctr.load(Ordering::SeqCst), ver.load(Ordering::SeqCst));
                let acked = redis::cmd("SET")
                    .arg("mark")
                    .arg(seen.0)
                    .query::<()>(&mut direct)
                    .and_then(|()| redis::cmd("WAIT").arg(1).arg(500).query::<i64>(&mut direct));
                match acked {
                    Ok(n) if n >= 1 => durable = seen,
                    Ok(_) => {}
                    Err(_) => break, // the primary is gone
                }
                thread::sleep(Duration::from_millis(20));
            }
            durable
        })
    };

    thread::sleep(Duration::from_millis(1500));
    let kill_at = Instant::now();
    *killed_at.lock().unwrap() = Some(kill_at);
    primary.kill();
    let (switch_at, payload) = switched
        // Generous: an overloaded machine can put Sentinel in TILT mode,
        // which pauses its decisions for 30 s.
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "Sentinel did not fail over within 60 s:\n{}",
                group[0].log()
            )
        });
    // Writes go on for a while after the switch.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if proxy_primary(&mut con) == replica.addr() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let incr = incr.join().expect("incr thread");
    let set = set.join().expect("set thread");
    let (durable_ctr, durable_ver) = durable.join().expect("mark thread");

    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let first_ok = [incr.first_ok_after_kill, set.first_ok_after_kill]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| panic!("no write succeeded after the failover\n{log_text}"));
    let to_first_ok = first_ok.saturating_duration_since(switch_at);
    eprintln!(
        "sentinel failover ({sentinels} sentinel(s)): +switch-master `{payload}` {:?} after the kill; \
         first successful write through the proxy {:?} after +switch-master; \
         INCR ok {} errors {} (slowest error {:?}); SET ok {} errors {} (slowest error {:?}); \
         durable (WAIT-confirmed) counter {durable_ctr}, version {durable_ver}",
        switch_at - kill_at,
        to_first_ok,
        incr.ok,
        incr.errors,
        incr.slowest_error,
        set.ok,
        set.errors,
        set.slowest_error,
    );
    for line in log_text
        .lines()
        .filter(|l| l.contains("Sentinel") || l.contains("circuit"))
    {
        eprintln!("  proxy: {line}");
    }

    assert_eq!(
        proxy_primary(&mut con),
        replica.addr(),
        "the proxy follows the promoted replica\n{log_text}"
    );
    assert!(
        to_first_ok < Duration::from_secs(10),
        "writes resumed {to_first_ok:?} after +switch-master"
    );
    // Failing writes fail fast: well within the command timeout plus the
    // connect timeout, never a hang.
    for l in [&incr, &set] {
        assert!(
            l.slowest_error < Duration::from_secs(5),
            "{:?}",
            l.slowest_error
        );
    }
    assert!(
        durable_ctr > 0 && durable_ver > 0,
        "the marks confirmed nothing"
    );
    let mut new_primary = replica.connection();
    let ctr: i64 = redis::cmd("GET")
        .arg("ctr")
        .query(&mut new_primary)
        .unwrap();
    let ver: i64 = redis::cmd("GET")
        .arg("ver")
        .query(&mut new_primary)
        .unwrap();
    assert!(
        ctr >= durable_ctr,
        "counter {ctr} lost WAIT-confirmed increments (confirmed up to {durable_ctr})"
    );
    assert!(
        ver >= durable_ver,
        "version {ver} older than the WAIT-confirmed {durable_ver}"
    );
    // What the proxy serves now is what the new primary holds.
    let via_proxy: i64 = redis::cmd("GET").arg("ctr").query(&mut con).unwrap();
    assert_eq!(via_proxy, ctr);
    assert!(
        ctr >= incr.last_acked,
        "counter {ctr} below the last acknowledged INCR {} (made on the new primary)",
        incr.last_acked
    );
    let body = http_get(mport, "/metrics");
    assert!(
        body.contains("shardgate_sentinel_switches_total{shard=\"s0\"} 1"),
        "{body}"
    );
}

#[test]
fn the_proxy_follows_a_failover_with_one_sentinel() {
    failover_under_load(1);
}

#[test]
fn the_proxy_follows_a_failover_with_three_sentinels() {
    failover_under_load(3);
}

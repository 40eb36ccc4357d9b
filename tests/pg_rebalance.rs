//! Online rebalancing to and from PostgreSQL shards, against the real
//! binary, real redis-servers and real PostgreSQL servers: clients keep
//! running while a keyspace moves Redis -> PostgreSQL, PostgreSQL ->
//! PostgreSQL and PostgreSQL -> Redis (and while the proxy is SIGKILLed
//! mid-move); values (binary), TTLs (milliseconds) and hashes arrive
//! exact; keys a postgres shard cannot hold stay on their source.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::history::{Load, check_model};
use common::postgres::{PgServer, Shard, live_keys, mixed_map};
use common::rebalance::*;
use common::{RedisServer, TempDir, free_port};

const FILL: usize = 1500;

fn fill_n(proxy: &Proxy, n: usize) {
    let mut c = proxy.client().get_connection().unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut cmd = redis::cmd("MSET");
        for i in chunk {
            cmd.arg(format!("filler:{i}")).arg(format!("f{i}"));
        }
        let _: () = cmd.query(&mut c).unwrap();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Keys whose exact bytes and expiry times the moves must keep.
struct Seeded {
    expire_base: i64,
}

impl Seeded {
    fn bin(i: usize) -> Vec<u8> {
        (0..=255u8).cycle().skip(i).take(300 + i).collect()
    }

    /// Binary strings (some with a millisecond expiry), binary hashes
    /// (some with expiry) and a hash of 2,500 fields (copied in pieces).
    fn write(proxy: &Proxy) -> Seeded {
        let mut c = proxy.client().get_connection().unwrap();
        let expire_base = now_ms() + 600_000;
        for i in 0..20 {
            let key = format!("bin:{i}");
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(Self::bin(i))
                .query(&mut c)
                .unwrap();
            if i % 2 == 0 {
                let _: i64 = redis::cmd("PEXPIREAT")
                    .arg(&key)
                    .arg(expire_base + i as i64 * 7)
                    .query(&mut c)
                    .unwrap();
            }
            let h = format!("hash:{i}");
            for j in 0..5u8 {
                let _: i64 = redis::cmd("HSET")
                    .arg(&h)
                    .arg(&[b'f', 0, j, 0xff][..])
                    .arg(Self::bin(i + j as usize))
                    .query(&mut c)
                    .unwrap();
            }
            if i % 3 == 0 {
                let _: i64 = redis::cmd("PEXPIREAT")
                    .arg(&h)
                    .arg(expire_base + 1000 + i as i64)
                    .query(&mut c)
                    .unwrap();
            }
        }
        let mut cmd = redis::cmd("HSET");
        cmd.arg("bighash");
        for f in 0..2500 {
            cmd.arg(format!("field{f}")).arg(format!("value{f}"));
        }
        let _: i64 = cmd.query(&mut c).unwrap();
        Seeded { expire_base }
    }

    /// Every seeded key, byte for byte and to the millisecond, through the
    /// proxy.
    fn check(&self, proxy: &Proxy, when: &str) {
        let mut c = proxy.client().get_connection().unwrap();
        for i in 0..20 {
            let key = format!("bin:{i}");
            let v: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
            assert_eq!(v, Self::bin(i), "{when}: value of {key}");
            let at: i64 = redis::cmd("PEXPIRETIME").arg(&key).query(&mut c).unwrap();
            let want = if i % 2 == 0 {
                self.expire_base + i as i64 * 7
            } else {
                -1
            };
            assert_eq!(at, want, "{when}: expiry of {key}");
            let h = format!("hash:{i}");
            for j in 0..5u8 {
                let v: Vec<u8> = redis::cmd("HGET")
                    .arg(&h)
                    .arg(&[b'f', 0, j, 0xff][..])
                    .query(&mut c)
                    .unwrap();
                assert_eq!(v, Self::bin(i + j as usize), "{when}: field {j} of {h}");
            }
            let n: i64 = redis::cmd("HLEN").arg(&h).query(&mut c).unwrap();
            assert_eq!(n, 5, "{when}: fields of {h}");
            let at: i64 = redis::cmd("PEXPIRETIME").arg(&h).query(&mut c).unwrap();
            let want = if i % 3 == 0 {
                self.expire_base + 1000 + i as i64
            } else {
                -1
            };
            assert_eq!(at, want, "{when}: expiry of {h}");
        }
        let n: i64 = redis::cmd("HLEN").arg("bighash").query(&mut c).unwrap();
        assert_eq!(n, 2500, "{when}: fields of bighash");
        let v: String = redis::cmd("HGET")
            .arg("bighash")
            .arg("field2499")
            .query(&mut c)
            .unwrap();
        assert_eq!(v, "value2499", "{when}");
        for i in (0..FILL).step_by(97) {
            let v: String = redis::cmd("GET")
                .arg(format!("filler:{i}"))
                .query(&mut c)
                .unwrap();
            assert_eq!(v, format!("f{i}"), "{when}: filler:{i}");
        }
    }
}

/// A client doing HINCRBY on a few hashes, counting what was acknowledged.
struct HashLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<[AtomicU64]>,
    unknown: Arc<[AtomicU64]>,
    thread: std::thread::JoinHandle<()>,
}

const HASHES: usize = 4;

impl HashLoad {
    fn start(port: u16) -> HashLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<[AtomicU64]> = (0..HASHES).map(|_| AtomicU64::new(0)).collect();
        let unknown: Arc<[AtomicU64]> = (0..HASHES).map(|_| AtomicU64::new(0)).collect();
        let thread = {
            let (stop, acked, unknown) = (stop.clone(), acked.clone(), unknown.clone());
            std::thread::spawn(move || {
                let mut conn = None;
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match common::history::connect(port) {
                            Ok(c) => conn.insert(c),
                            Err(_) => {
                                std::thread::sleep(Duration::from_millis(50));
                                continue;
                            }
                        },
                    };
                    n += 1;
                    let h = n % HASHES;
                    let r: redis::RedisResult<i64> = redis::cmd("HINCRBY")
                        .arg(format!("hc:{h}"))
                        .arg("n")
                        .arg(1)
                        .query(c);
                    match r {
                        Ok(_) => {
                            acked[h].fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            unknown[h].fetch_add(1, Ordering::Relaxed);
                            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                                conn = None;
                            }
                        }
                    }
                }
            })
        };
        HashLoad {
            stop,
            acked,
            unknown,
            thread,
        }
    }

    /// Stops the client and checks every acknowledged HINCRBY is counted.
    fn stop_and_check(self, port: u16) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        let mut c = common::history::connect(port).unwrap();
        let mut total = 0;
        for h in 0..HASHES {
            let v: Option<u64> = redis::cmd("HGET")
                .arg(format!("hc:{h}"))
                .arg("n")
                .query(&mut c)
                .unwrap();
            let v = v.unwrap_or(0);
            let acked = self.acked[h].load(Ordering::Relaxed);
            let unknown = self.unknown[h].load(Ordering::Relaxed);
            assert!(
                v >= acked && v <= acked + unknown,
                "hc:{h} = {v}, acknowledged HINCRBYs {acked}, unanswered {unknown}"
            );
            total += acked;
        }
        assert!(total > 100, "the hash client ran ({total} HINCRBYs)");
    }
}

/// Starts a rebalance to `map`, its mover limited to `throttle` keys/s
/// from the first batch (0: no limit).
fn rebalance(admin: &mut Admin, map: &Path, throttle: u64) {
    let started = admin.rebalance_file(map, throttle);
    assert!(started.starts_with("OK rebalance started"), "{started}");
}

/// Redis -> two postgres shards, then postgres -> postgres and postgres ->
/// Redis in one map change, with clients running throughout.
#[test]
fn a_keyspace_moves_into_postgres_and_back_while_clients_run() {
    let (s0, s1) = (RedisServer::start(), RedisServer::start());
    let (p0, p1) = (PgServer::start(), PgServer::start());
    let dir = TempDir::new("pg-rebalance");
    let m1 = write(
        dir.path(),
        "m1.yaml",
        &mixed_map(&[("s0", Shard::Redis(&s0))]),
    );
    let m2 = write(
        dir.path(),
        "m2.yaml",
        &mixed_map(&[("p0", Shard::Pg(&p0)), ("p1", Shard::Pg(&p1))]),
    );
    let m3 = write(
        dir.path(),
        "m3.yaml",
        &mixed_map(&[("p0", Shard::Pg(&p0)), ("s1", Shard::Redis(&s1))]),
    );
    let proxy = Proxy::start(dir.path(), &m1);
    fill_n(&proxy, FILL);
    let seeded = Seeded::write(&proxy);
    let load = Load::start(&[proxy.port], 8);
    let hashes = HashLoad::start(proxy.port);
    std::thread::sleep(Duration::from_millis(300));
    let mut admin = proxy.admin();

    // Redis -> PostgreSQL: everything leaves s0.
    rebalance(&mut admin, &m2, 0);
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    let moved: u64 = p["keys_moved"].parse().unwrap();
    assert!(moved >= FILL as u64, "the mover moved the keys: {p:?}");
    let mut touched: u64 = p["keys_moved_on_touch"].parse().unwrap();
    assert!(keys_on(&s0).is_empty(), "s0 still holds keys");
    let (n0, n1) = (live_keys(&p0), live_keys(&p1));
    assert!(n0 > 300 && n1 > 300, "keys on p0 {n0}, p1 {n1}");
    seeded.check(&proxy, "after Redis -> PostgreSQL");

    // PostgreSQL -> PostgreSQL (p1's slots to p0) and PostgreSQL -> Redis
    // (slots of both to s1).
    std::thread::sleep(Duration::from_millis(300));
    rebalance(&mut admin, &m3, 0);
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    touched += p["keys_moved_on_touch"].parse::<u64>().unwrap();
    assert!(touched > 0, "the clients' commands moved keys too");
    assert_eq!(live_keys(&p1), 0, "p1 was drained");
    assert!(keys_on(&s1).len() > 300, "s1 holds its share");
    seeded.check(&proxy, "after PostgreSQL -> PostgreSQL and Redis");
    std::thread::sleep(Duration::from_millis(300));

    hashes.stop_and_check(proxy.port);
    let (shared, model) = load.stop();
    assert!(
        model.ops > 500,
        "the clients ran ({} operations)",
        model.ops
    );
    assert!(
        model.errors.is_empty(),
        "error replies during the moves: {:?}",
        &model.errors[..model.errors.len().min(10)]
    );
    check_model(proxy.port, &shared, &model);
}

/// The proxy is SIGKILLed in the middle of a Redis -> PostgreSQL move and
/// of a PostgreSQL -> Redis move; each restart resumes from the state
/// directory and nothing is lost.
#[test]
fn a_proxy_killed_mid_move_to_or_from_postgres_resumes_and_loses_nothing() {
    let (s0, s1) = (RedisServer::start(), RedisServer::start());
    let p0 = PgServer::start();
    let dir = TempDir::new("pg-rebalance-kill");
    let m1 = write(
        dir.path(),
        "m1.yaml",
        &mixed_map(&[("s0", Shard::Redis(&s0))]),
    );
    let m2 = write(dir.path(), "m2.yaml", &mixed_map(&[("p0", Shard::Pg(&p0))]));
    let m3 = write(
        dir.path(),
        "m3.yaml",
        &mixed_map(&[("s1", Shard::Redis(&s1))]),
    );
    let mut proxy = Proxy::start(dir.path(), &m1);
    fill_n(&proxy, FILL);
    let seeded = Seeded::write(&proxy);
    let load = Load::start(&[proxy.port], 8);
    let hashes = HashLoad::start(proxy.port);
    std::thread::sleep(Duration::from_millis(300));
    for map in [&m2, &m3] {
        let mut admin = proxy.admin();
        rebalance(&mut admin, map, 1000);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = admin.progress();
            assert_eq!(
                p["state"], "moving",
                "the move ended before the kill: {p:?}"
            );
            if p["keys_moved"].parse::<u64>().unwrap() >= 400 {
                break;
            }
            assert!(Instant::now() < deadline, "mover made no progress: {p:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy.kill();
        std::thread::sleep(Duration::from_millis(300));
        proxy.spawn();
        let mut admin = proxy.admin();
        let p = admin.progress();
        assert_eq!(p["state"], "moving", "the restarted proxy resumes: {p:?}");
        assert_eq!(admin.text(&[b"THROTTLE", b"0"]), "OK");
        let p = wait_done(&proxy);
        assert_eq!(p["verify"], "ok", "{p:?}");
        assert_eq!(p["verify_left_behind"], "0", "{p:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(proxy.log_text().contains("resuming the rebalance"));
    assert!(keys_on(&s0).is_empty(), "s0 still holds keys");
    assert_eq!(live_keys(&p0), 0, "p0 still holds keys");
    seeded.check(&proxy, "after two killed moves");
    hashes.stop_and_check(proxy.port);
    let (shared, model) = load.stop();
    assert!(
        model.ops > 500,
        "the clients ran ({} operations)",
        model.ops
    );
    check_model(proxy.port, &shared, &model);
    let filler: HashSet<String> = (0..FILL).map(|i| format!("filler:{i}")).collect();
    let on_s1: HashSet<String> = keys_on(&s1).into_iter().collect();
    assert!(filler.is_subset(&on_s1), "every filler key is on s1");
}

/// A list moving to a postgres shard: refused before anything moves when
/// the sample finds it; met during the move, it stops the mover (paused,
/// named in PROGRESS and counted in the metrics) and stays on its source,
/// where commands still reach it; once deleted, the move resumes and
/// finishes.
#[test]
fn keys_a_postgres_shard_cannot_hold_stay_on_their_source() {
    let (s0, s1) = (RedisServer::start(), RedisServer::start());
    let p0 = PgServer::start();
    let dir = TempDir::new("pg-rebalance-list");
    let m1 = write(
        dir.path(),
        "m1.yaml",
        &mixed_map(&[("s0", Shard::Redis(&s0)), ("s1", Shard::Redis(&s1))]),
    );
    let m2 = write(dir.path(), "m2.yaml", &mixed_map(&[("p0", Shard::Pg(&p0))]));
    let metrics_port = free_port();
    let mut proxy = Proxy::start(dir.path(), &m1);
    proxy.kill();
    proxy.spawn_with(&["--metrics-listen", &format!("127.0.0.1:{metrics_port}")]);
    fill_n(&proxy, 200);
    let mut c = proxy.client().get_connection().unwrap();
    let _: i64 = redis::cmd("RPUSH")
        .arg("{q}list")
        .arg("a")
        .query(&mut c)
        .unwrap();
    let mut admin = proxy.admin();

    // Found by the sample: refused, nothing moves.
    let lines = admin.lines(&[b"PLAN", std::fs::read_to_string(&m2).unwrap().as_bytes()]);
    let lines = lines.unwrap();
    assert!(
        lines.iter().any(|l| l.contains("key `{q}list` is a list")),
        "{lines:?}"
    );
    let refused = admin.text(&[b"REBALANCE", b"FILE", m2.to_str().unwrap().as_bytes()]);
    assert!(
        refused.starts_with("ERR rebalance refused:")
            && refused.contains("key `{q}list` is a list"),
        "{refused}"
    );
    let _: i64 = redis::cmd("DEL").arg("{q}list").query(&mut c).unwrap();

    // Met during the move: a list created on a slot not moving yet.
    fill_n(&proxy, FILL);
    rebalance(&mut admin, &m2, 200);
    let list = (0..2000)
        .map(|i| format!("{{l{i}}}list"))
        .find(|k| {
            redis::cmd("RPUSH")
                .arg(k)
                .arg(b"x\x00y".as_slice())
                .query::<i64>(&mut c)
                .is_ok()
        })
        .expect("a list key on a slot not moving yet");
    assert_eq!(admin.text(&[b"THROTTLE", b"0"]), "OK");
    let deadline = Instant::now() + Duration::from_secs(40);
    let p = loop {
        let p = admin.progress();
        assert_eq!(p["state"], "moving", "{p:?}");
        if p["paused"] == "1" {
            break p;
        }
        assert!(Instant::now() < deadline, "the mover did not stop: {p:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        p["last_error"].contains(&format!("key `{list}` is a list")),
        "{p:?}"
    );
    let metrics = ureq_get(metrics_port);
    assert!(
        metrics.lines().any(|l| l
            .starts_with("shardgate_rebalance_errors_total{stage=\"unsupported\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    // Still served, from its source.
    let got: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(&list)
        .arg(0)
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(got, vec![b"x\x00y".to_vec()]);
    let n: i64 = redis::cmd("RPUSH")
        .arg(&list)
        .arg("z")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 2);
    // Other keys of the moving slots keep working.
    let v: String = redis::cmd("GET").arg("filler:7").query(&mut c).unwrap();
    assert_eq!(v, "f7");
    // Deleted, the mover can finish.
    let n: i64 = redis::cmd("DEL").arg(&list).query(&mut c).unwrap();
    assert_eq!(n, 1);
    assert_eq!(admin.text(&[b"RESUME"]), "OK");
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    assert!(keys_on(&s0).is_empty() && keys_on(&s1).is_empty());
    for i in (0..FILL).step_by(101) {
        let v: String = redis::cmd("GET")
            .arg(format!("filler:{i}"))
            .query(&mut c)
            .unwrap();
        assert_eq!(v, format!("f{i}"));
    }
}

/// Keys move in several windows (one per source shard: two postgres
/// shards and a Redis shard, all to a postgres shard and a Redis shard),
/// each window after the previous one turned stable, while 16 clients
/// INCR a few hot counters. Every window's barrier must wait for every
/// request routed before it, not only for the table its publish replaced:
/// an INCR routed before the previous window turned stable and sent late
/// would land on its old shard between a copy's read and its `UNLINK`
/// (issue 15). Every acknowledged INCR must be counted.
#[test]
fn hot_counters_lose_nothing_while_several_windows_move() {
    const CLIENTS: usize = 16;
    const HOT: usize = 6;
    let (s0, s1) = (RedisServer::start(), RedisServer::start());
    let (p0, p1, p2) = (PgServer::start(), PgServer::start(), PgServer::start());
    let dir = TempDir::new("pg-rebalance-hot");
    let m1 = write(
        dir.path(),
        "m1.yaml",
        &mixed_map(&[
            ("p0", Shard::Pg(&p0)),
            ("p1", Shard::Pg(&p1)),
            ("s0", Shard::Redis(&s0)),
        ]),
    );
    let m2 = write(
        dir.path(),
        "m2.yaml",
        &mixed_map(&[("p2", Shard::Pg(&p2)), ("s1", Shard::Redis(&s1))]),
    );
    // One source per step, so that each window starts after the previous
    // one turned stable.
    let mut proxy = Proxy::new(dir.path(), &m1);
    proxy.spawn_with(&["--rebalance-sources", "1"]);
    fill_n(&proxy, FILL);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<[AtomicU64]> = (0..HOT).map(|_| AtomicU64::new(0)).collect();
    let unknown: Arc<[AtomicU64]> = (0..HOT).map(|_| AtomicU64::new(0)).collect();
    let port = proxy.port;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (stop, acked, unknown) = (stop.clone(), acked.clone(), unknown.clone());
            std::thread::spawn(move || {
                let mut c = common::history::connect(port).unwrap();
                let mut seen = Vec::new();
                let mut n = id;
                while !stop.load(Ordering::Relaxed) {
                    n = n.wrapping_mul(31).wrapping_add(7);
                    let h = n % HOT;
                    let r: redis::RedisResult<i64> =
                        redis::cmd("INCR").arg(format!("hot:{h}")).query(&mut c);
                    match r {
                        Ok(v) => {
                            seen.push((h, v, id, now_ms()));
                            acked[h].fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => unknown[h].fetch_add(1, Ordering::Relaxed),
                    };
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut admin = proxy.admin();
    rebalance(&mut admin, &m2, 0);
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut seen: Vec<(usize, i64, usize, i64)> = Vec::new();
    for c in clients {
        seen.extend(c.join().unwrap());
    }
    // A lost INCR shows as two INCRs answered with the same value (one of
    // them ran on a copy that was then overwritten or deleted).
    seen.sort();
    let twice: Vec<String> = seen
        .windows(2)
        .filter(|w| (w[0].0, w[0].1) == (w[1].0, w[1].1))
        .map(|w| {
            format!(
                "hot:{} = {} twice (clients {} and {}, at {} and {} ms)",
                w[0].0, w[0].1, w[0].2, w[1].2, w[0].3, w[1].3
            )
        })
        .collect();
    let (t1, t2) = (table_of(&m1), table_of(&m2));
    let moves: Vec<String> = (0..HOT)
        .map(|h| {
            let k = format!("hot:{h}");
            format!("{k}: {} -> {}", owner_name(&t1, &k), owner_name(&t2, &k))
        })
        .collect();
    assert!(
        keys_on(&s0).is_empty() && live_keys(&p0) == 0 && live_keys(&p1) == 0,
        "the old shards were drained"
    );
    let mut c = common::history::connect(port).unwrap();
    let mut total = 0;
    for h in 0..HOT {
        let v: Option<u64> = redis::cmd("GET")
            .arg(format!("hot:{h}"))
            .query(&mut c)
            .unwrap();
        let v = v.unwrap_or(0);
        let (a, u) = (
            acked[h].load(Ordering::Relaxed),
            unknown[h].load(Ordering::Relaxed),
        );
        assert!(
            v >= a && v <= a + u,
            "hot:{h} = {v}, acknowledged INCRs {a}, unanswered {u}; {twice:?}; {moves:?}"
        );
        assert_eq!(u, 0, "hot:{h}: {u} INCRs answered with an error");
        total += a;
    }
    assert!(total > 500, "the clients ran ({total} INCRs)");
}

//! Online rebalancing against the real binary and real redis-servers:
//! clients keep running while shards are added and removed (and while the
//! proxy is SIGKILLed mid-move and restarted), and a model kept by the test
//! checks afterwards that nothing was lost, resurrected or rolled back.
//! Plan output, refusals, big keys and the CLI are in `rebalance_ops.rs`.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardgate::router::{Epoch, RoutingTable};
use shardgate::shardmap::ShardMap;

use common::rebalance::*;
use common::{RedisServer, TempDir};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the clients did, for the checks at the end.
#[derive(Default)]
struct Model {
    /// Key -> (last acknowledged version, highest version ever sent).
    versions: HashMap<String, (u64, u64)>,
    /// Keys whose existence is uncertain (first write or DEL unacknowledged).
    uncertain: HashSet<String>,
    /// Keys deleted with an acknowledged DEL (never written again).
    deleted: HashSet<String>,
    /// Keys given a TTL of `TTL` seconds by an acknowledged EXPIRE and not
    /// written since.
    ttl: HashSet<String>,
    /// Problems seen while running (a read older than one already seen...).
    violations: Vec<String>,
    /// Error replies seen (not connection failures).
    errors: Vec<String>,
    ops: u64,
}

const TTL: i64 = 1000;
const COUNTERS: usize = 8;

struct Shared {
    stop: AtomicBool,
    /// Per counter: acknowledged INCRs, and INCRs without an answer.
    incr_acked: Vec<AtomicU64>,
    incr_unknown: Vec<AtomicU64>,
    model: Mutex<Model>,
}

fn version_of(v: &Option<String>) -> u64 {
    v.as_deref()
        .and_then(|s| s.strip_prefix('v'))
        .and_then(|n| n.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One client: owns its keys `w{id}:{n}`, shares the counters.
fn worker(id: usize, port: u16, shared: Arc<Shared>) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut conn: Option<redis::Connection> = None;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) * 7919));
    let mut live: Vec<String> = (0..24).map(|n| format!("w{id}:{n}")).collect();
    let mut next_key = live.len();
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut sent: HashMap<String, u64> = HashMap::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut local = Model::default();
    while !shared.stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match client.get_connection_with_timeout(Duration::from_secs(1)) {
                Ok(c) => {
                    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
                    conn.insert(c)
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        local.ops += 1;
        let roll = rng.below(100);
        let key = live[rng.below(live.len() as u64) as usize].clone();
        let mut reset = false;
        // An `Err` of a command: a connection failure (the reply is lost,
        // the command may have run) or an error reply.
        let mut failed = |e: redis::RedisError, what: &str, local: &mut Model| {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                reset = true;
            } else {
                local.errors.push(format!("{what}: {e}"));
            }
        };
        if roll < 30 {
            let v = sent.get(&key).copied().unwrap_or(0) + 1;
            sent.insert(key.clone(), v);
            local.ttl.remove(&key);
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg(&key)
                .arg(format!("v{v}:{id}"))
                .query(c);
            match r {
                Ok(()) => {
                    acked.insert(key.clone(), v);
                    local.uncertain.remove(&key);
                }
                Err(e) => {
                    if !acked.contains_key(&key) {
                        local.uncertain.insert(key.clone());
                    }
                    failed(e, "SET", &mut local);
                }
            }
        } else if roll < 55 {
            let r: redis::RedisResult<Option<String>> = redis::cmd("GET").arg(&key).query(c);
            match r {
                Ok(v) => {
                    let got = version_of(&v);
                    let floor = acked
                        .get(&key)
                        .copied()
                        .unwrap_or(0)
                        .max(seen.get(&key).copied().unwrap_or(0));
                    if got < floor {
                        local
                            .violations
                            .push(format!("GET {key}: version {got} after {floor}"));
                    }
                    seen.insert(key.clone(), got.max(seen.get(&key).copied().unwrap_or(0)));
                }
                Err(e) => failed(e, "GET", &mut local),
            }
        } else if roll < 70 {
            let n = rng.below(COUNTERS as u64) as usize;
            let r: redis::RedisResult<i64> = redis::cmd("INCR").arg(format!("cnt:{n}")).query(c);
            match r {
                Ok(_) => {
                    shared.incr_acked[n].fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    shared.incr_unknown[n].fetch_add(1, Ordering::Relaxed);
                    failed(e, "INCR", &mut local);
                }
            }
        } else if roll < 78 {
            // MSET over several shards (keys of different tags).
            let keys: Vec<String> = (0..4)
                .map(|_| live[rng.below(live.len() as u64) as usize].clone())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let mut cmd = redis::cmd("MSET");
            let mut vs = Vec::new();
            for k in &keys {
                let v = sent.get(k).copied().unwrap_or(0) + 1;
                sent.insert(k.clone(), v);
                local.ttl.remove(k);
                cmd.arg(k).arg(format!("v{v}:{id}"));
                vs.push(v);
            }
            let r: redis::RedisResult<()> = cmd.query(c);
            match r {
                Ok(()) => {
                    for (k, v) in keys.iter().zip(vs) {
                        acked.insert(k.clone(), v);
                        local.uncertain.remove(k);
                    }
                }
                Err(e) => {
                    for k in &keys {
                        if !acked.contains_key(k) {
                            local.uncertain.insert(k.clone());
                        }
                    }
                    failed(e, "MSET", &mut local);
                }
            }
        } else if roll < 86 {
            let keys: Vec<String> = (0..4)
                .map(|_| live[rng.below(live.len() as u64) as usize].clone())
                .collect();
            let r: redis::RedisResult<Vec<Option<String>>> = redis::cmd("MGET").arg(&keys).query(c);
            match r {
                Ok(vals) => {
                    for (k, v) in keys.iter().zip(vals) {
                        let got = version_of(&v);
                        let floor = acked
                            .get(k)
                            .copied()
                            .unwrap_or(0)
                            .max(seen.get(k).copied().unwrap_or(0));
                        if got < floor {
                            local
                                .violations
                                .push(format!("MGET {k}: version {got} after {floor}"));
                        }
                        seen.insert(k.clone(), got.max(seen.get(k).copied().unwrap_or(0)));
                    }
                }
                Err(e) => failed(e, "MGET", &mut local),
            }
        } else if roll < 93 {
            if !acked.contains_key(&key) {
                local.ops -= 1;
                continue;
            }
            let r: redis::RedisResult<i64> = redis::cmd("EXPIRE").arg(&key).arg(TTL).query(c);
            match r {
                Ok(1) => {
                    local.ttl.insert(key.clone());
                }
                Ok(n) => local
                    .violations
                    .push(format!("EXPIRE {key} answered {n} for a written key")),
                Err(e) => {
                    local.ttl.remove(&key);
                    failed(e, "EXPIRE", &mut local);
                }
            }
        } else {
            // DEL retires the key: it is never written again.
            let r: redis::RedisResult<i64> = redis::cmd("DEL").arg(&key).query(c);
            let pos = live.iter().position(|k| *k == key).unwrap();
            live[pos] = format!("w{id}:{next_key}");
            next_key += 1;
            local.ttl.remove(&key);
            acked.remove(&key);
            match r {
                Ok(_) => {
                    local.uncertain.remove(&key);
                    local.deleted.insert(key.clone());
                }
                Err(e) => {
                    local.uncertain.insert(key.clone());
                    failed(e, "DEL", &mut local);
                }
            }
        }
        if reset {
            conn = None;
        }
    }
    let mut m = shared.model.lock().unwrap();
    for (k, v) in &acked {
        let top = sent.get(k).copied().unwrap_or(*v);
        m.versions.insert(k.clone(), (*v, top));
    }
    m.uncertain.extend(local.uncertain);
    m.deleted.extend(local.deleted);
    m.ttl.extend(local.ttl);
    m.violations.extend(local.violations);
    m.errors.extend(local.errors);
    m.ops += local.ops;
}

struct Load {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            incr_acked: (0..COUNTERS).map(|_| AtomicU64::new(0)).collect(),
            incr_unknown: (0..COUNTERS).map(|_| AtomicU64::new(0)).collect(),
            model: Mutex::new(Model::default()),
        });
        let threads = (0..clients)
            .map(|id| {
                let shared = shared.clone();
                std::thread::spawn(move || worker(id, port, shared))
            })
            .collect();
        Load { shared, threads }
    }

    fn stop(self) -> (Arc<Shared>, Model) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("client thread");
        }
        let model = std::mem::take(&mut *self.shared.model.lock().unwrap());
        (self.shared, model)
    }
}

/// The checks after the run: the model against the proxy and against
/// where each key physically is under `map`.
fn check(
    proxy: &Proxy,
    shared: &Shared,
    model: &Model,
    map: &Path,
    servers: &[(&str, &RedisServer)],
    fixed: &HashSet<String>,
) {
    assert!(
        model.violations.is_empty(),
        "read or write violations: {:?}",
        model.violations
    );
    let mut c = proxy.client().get_connection().unwrap();
    // Every acknowledged INCR is counted (and nothing more than was sent).
    for n in 0..COUNTERS {
        let v: Option<u64> = redis::cmd("GET")
            .arg(format!("cnt:{n}"))
            .query(&mut c)
            .unwrap();
        let v = v.unwrap_or(0);
        let acked = shared.incr_acked[n].load(Ordering::Relaxed);
        let unknown = shared.incr_unknown[n].load(Ordering::Relaxed);
        assert!(
            v >= acked && v <= acked + unknown,
            "cnt:{n} = {v}, acknowledged INCRs {acked}, unanswered {unknown}"
        );
    }
    // Values: at least the last acknowledged version, at most the last sent.
    for (k, (acked, top)) in &model.versions {
        let v: Option<String> = redis::cmd("GET").arg(k).query(&mut c).unwrap();
        let got = version_of(&v);
        assert!(
            got >= *acked && got <= *top,
            "{k}: version {got}, acknowledged {acked}, sent {top}"
        );
    }
    // TTLs survived the move.
    for k in &model.ttl {
        let ttl: i64 = redis::cmd("TTL").arg(k).query(&mut c).unwrap();
        assert!(
            ttl > 0 && ttl <= TTL,
            "{k}: TTL {ttl} after the move (set to {TTL})"
        );
    }
    // No deleted key came back, through the proxy or on any server.
    for k in &model.deleted {
        let n: i64 = redis::cmd("EXISTS").arg(k).query(&mut c).unwrap();
        assert_eq!(n, 0, "deleted key {k} is back");
    }
    // Placement: every key is on its owner under the final map, and the
    // keys per shard agree with the model.
    let table = RoutingTable::compile(Arc::new(ShardMap::load(map).unwrap()), Epoch(1));
    let owner = |k: &str| {
        table
            .shard(table.shard_for_key(k.as_bytes()))
            .unwrap()
            .name
            .clone()
    };
    let mut expected: HashMap<String, usize> = HashMap::new();
    let mut certain: HashSet<String> = model.versions.keys().cloned().collect();
    certain.extend(fixed.iter().cloned());
    for n in 0..COUNTERS {
        if shared.incr_acked[n].load(Ordering::Relaxed) > 0 {
            certain.insert(format!("cnt:{n}"));
        }
    }
    for k in &certain {
        *expected.entry(owner(k)).or_default() += 1;
    }
    let mut found_total = 0;
    for (name, server) in servers {
        let keys = keys_on(server);
        let mut certain_here = 0;
        for k in &keys {
            assert_eq!(
                &owner(k),
                name,
                "key {k} is on shard {name}, which does not own it"
            );
            assert!(
                !model.deleted.contains(k),
                "deleted key {k} is on shard {name}"
            );
            if certain.contains(k) {
                certain_here += 1;
            } else {
                let maybe = model.uncertain.contains(k) || k.starts_with("cnt:");
                assert!(maybe, "key {k} on shard {name} is not in the model");
            }
        }
        assert_eq!(
            certain_here,
            expected.get(*name).copied().unwrap_or(0),
            "keys of the model on shard {name}"
        );
        found_total += certain_here;
    }
    assert_eq!(
        found_total,
        certain.len(),
        "every key of the model exists once"
    );
}

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
    let load = Load::start(proxy.port, 16);
    std::thread::sleep(Duration::from_millis(500));

    let mut admin = proxy.admin();
    if kill {
        // Slow the mover so that the kill lands mid-move.
        let text = std::fs::read_to_string(&m2).unwrap();
        let started = admin.text(&[b"REBALANCE", text.as_bytes()]);
        assert!(started.starts_with("OK rebalance started"), "{started}");
        assert_eq!(admin.text(&[b"THROTTLE", b"2000"]), "OK");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let p = admin.progress();
            let moved: u64 = p["keys_moved"].parse().unwrap();
            assert_eq!(
                p["state"], "moving",
                "the move ended before the kill: {p:?}"
            );
            if moved >= 600 {
                break;
            }
            assert!(Instant::now() < deadline, "mover made no progress: {p:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
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
            p["throttle_keys_per_sec"], "2000",
            "the throttle survives the restart"
        );
        assert!(proxy.log_text().contains("resuming the rebalance"));
        assert_eq!(admin.text(&[b"THROTTLE", b"0"]), "OK");
    } else {
        let started = admin.text(&[b"REBALANCE", b"FILE", m2.to_str().unwrap().as_bytes()]);
        assert!(started.starts_with("OK rebalance started"), "{started}");
        // A second request while the first runs is refused, saying why.
        let again = admin.text(&[b"REBALANCE", b"FILE", m3.to_str().unwrap().as_bytes()]);
        assert!(
            again.starts_with("ERR rebalance refused: a rebalance is already running"),
            "{again}"
        );
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
    check(&proxy, &shared, &model, &m3, &shards(&[0, 2, 3]), &filler);
    // A restart serves the map of the last rebalance (from the state
    // directory), not the stale --map file.
    proxy.kill();
    proxy.spawn();
    let mut c = proxy.client().get_connection().unwrap();
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    let physical: usize = [0, 2, 3].iter().map(|&i| keys_on(&servers[i]).len()).sum();
    assert_eq!(n as usize, physical);
    check(&proxy, &shared, &model, &m3, &shards(&[0, 2, 3]), &filler);
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
    let load = Load::start(proxy.port, 4);
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
    check(&proxy, &shared, &model, &paths[3], &live, &fixed);
}

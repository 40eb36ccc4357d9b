//! The history model of the tests that run clients during a rebalance
//! (`tests/rebalance.rs`, `tests/fleet.rs`): client threads doing
//! SET/GET/INCR/MSET/MGET/EXPIRE/DEL record what was acknowledged, and
//! [`check`] verifies afterwards that every acknowledged INCR is counted, no
//! deleted key came back, no read returned a version older than one already
//! read or acknowledged, TTLs survived, and every key sits on its owner.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardgate::router::{Epoch, RoutingTable};
use shardgate::shardmap::ShardMap;

use super::RedisServer;
use super::rebalance::keys_on;

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the clients did, for the checks at the end.
#[derive(Default)]
pub struct Model {
    /// Key -> (last acknowledged version, highest version ever sent).
    pub versions: HashMap<String, (u64, u64)>,
    /// Keys whose existence is uncertain (first write or DEL unacknowledged).
    pub uncertain: HashSet<String>,
    /// Keys deleted with an acknowledged DEL (never written again).
    pub deleted: HashSet<String>,
    /// Keys given a TTL of `TTL` seconds by an acknowledged EXPIRE and not
    /// written since.
    pub ttl: HashSet<String>,
    /// Problems seen while running (a read older than one already seen...).
    pub violations: Vec<String>,
    /// Error replies seen (not connection failures, not `-TRYAGAIN`).
    pub errors: Vec<String>,
    pub ops: u64,
}

pub const TTL: i64 = 1000;
pub const COUNTERS: usize = 8;

/// What the client threads share while they run.
pub struct Shared {
    pub stop: AtomicBool,
    /// Per counter: acknowledged INCRs, and INCRs without an answer.
    pub incr_acked: Vec<AtomicU64>,
    pub incr_unknown: Vec<AtomicU64>,
    /// `-TRYAGAIN` replies: the proxy's port, when the reply came and its
    /// text. The command did not run.
    pub tryagain: Mutex<Vec<(u16, Instant, String)>>,
    model: Mutex<Model>,
}

impl Shared {
    /// The `-TRYAGAIN` replies of a fenced member (one that may have lost
    /// its etcd lease), as opposed to a key move that failed and is retried.
    pub fn fenced(&self) -> Vec<(u16, Instant, String)> {
        self.tryagain
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, text)| text.contains("lost contact with the fleet's etcd"))
            .cloned()
            .collect()
    }
}

pub fn version_of(v: &Option<String>) -> u64 {
    v.as_deref()
        .and_then(|s| s.strip_prefix('v'))
        .and_then(|n| n.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One client: owns its keys `w{id}:{n}`, shares the counters. It talks to
/// `ports[id % ports.len()]` and moves on to the next port when it cannot
/// connect (a killed proxy).
fn worker(id: usize, ports: Vec<u16>, shared: Arc<Shared>) {
    let mut at = id % ports.len();
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
            None => match connect(ports[at]) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    at = (at + 1) % ports.len();
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
        let port = ports[at];
        let mut failed = |e: redis::RedisError, what: &str, local: &mut Model| {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                reset = true;
            } else if e.code() == Some("TRYAGAIN") {
                let mut t = shared.tryagain.lock().unwrap();
                t.push((port, Instant::now(), e.to_string()));
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

/// Client threads running [`worker`].
pub struct Load {
    pub shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `clients` threads spread over `ports`.
    pub fn start(ports: &[u16], clients: usize) -> Load {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            incr_acked: (0..COUNTERS).map(|_| AtomicU64::new(0)).collect(),
            incr_unknown: (0..COUNTERS).map(|_| AtomicU64::new(0)).collect(),
            tryagain: Mutex::new(Vec::new()),
            model: Mutex::new(Model::default()),
        });
        let threads = (0..clients)
            .map(|id| {
                let shared = shared.clone();
                let ports = ports.to_vec();
                std::thread::spawn(move || worker(id, ports, shared))
            })
            .collect();
        Load { shared, threads }
    }

    /// Stops the clients; returns what they recorded.
    pub fn stop(self) -> (Arc<Shared>, Model) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("client thread");
        }
        let model = std::mem::take(&mut *self.shared.model.lock().unwrap());
        (self.shared, model)
    }
}

/// The checks after the run: the model against the proxy on `port` and
/// against where each key physically is under `map`.
/// Stops the clients (after a moment for replies in flight) and asserts
/// that they ran (more than `min_ops` operations), got no error reply, and
/// were never answered `-TRYAGAIN` by a fenced proxy.
pub fn stop_clean(load: Load, min_ops: u64) -> (Arc<Shared>, Model) {
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (shared, model) = load.stop();
    assert!(model.ops > min_ops, "the clients ran ({} ops)", model.ops);
    assert!(
        model.errors.is_empty(),
        "error replies: {:?}",
        &model.errors[..model.errors.len().min(10)]
    );
    assert!(
        shared.fenced().is_empty(),
        "no proxy was fenced: {:?}",
        shared.tryagain.lock().unwrap()
    );
    (shared, model)
}

pub fn check(
    port: u16,
    shared: &Shared,
    model: &Model,
    map: &Path,
    servers: &[(&str, &RedisServer)],
    fixed: &HashSet<String>,
) {
    check_model(port, shared, model);
    check_placement(shared, model, map, servers, fixed);
}

/// The checks of [`check`] through the proxy on `port` alone (any kind of
/// shard): no violation, every acknowledged INCR counted, values, TTLs, no
/// deleted key back.
pub fn check_model(port: u16, shared: &Shared, model: &Model) {
    assert!(
        model.violations.is_empty(),
        "read or write violations: {:?}",
        model.violations
    );
    let mut c = connect(port).unwrap();
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
}

/// The placement checks of [`check`], on the Redis `servers` directly.
fn check_placement(
    shared: &Shared,
    model: &Model,
    map: &Path,
    servers: &[(&str, &RedisServer)],
    fixed: &HashSet<String>,
) {
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

/// A connection with a read timeout (a frozen proxy must not hang a client
/// forever).
pub fn connect(port: u16) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let c = client.get_connection_with_timeout(Duration::from_secs(1))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(c)
}

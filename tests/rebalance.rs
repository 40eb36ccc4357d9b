//! Online rebalancing against the real binary and real redis-servers:
//! clients keep running while shards are added and removed (and while the
//! proxy is SIGKILLed mid-move and restarted), and a model kept by the test
//! checks afterwards that nothing was lost, resurrected or rolled back.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shardgate::protocol::{reply, request::encode_command, scan};
use shardgate::router::{Epoch, RoutingTable};
use shardgate::shardmap::ShardMap;

use common::{KillOnDrop, RedisServer, TempDir, free_port, wait_for_port};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");
const ADMIN_PW: &str = "rebalance-admin";
/// Keys written before the clients start, so the mover has work.
const FILLER: usize = 12_000;

/// The proxy binary on fixed ports, restartable, logging to a file.
struct Proxy {
    child: Option<KillOnDrop>,
    port: u16,
    admin_port: u16,
    map: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl Proxy {
    fn start(dir: &Path, map: &Path) -> Proxy {
        let mut p = Proxy {
            child: None,
            port: free_port(),
            admin_port: free_port(),
            map: map.to_owned(),
            state: dir.join("state"),
            log: dir.join("proxy.log"),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    fn spawn_with(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("proxy log");
        let child = Command::new(BIN)
            .args(["serve", "--map"])
            .arg(&self.map)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--admin-listen", &format!("127.0.0.1:{}", self.admin_port)])
            .args(["--admin-password-env", "SG_TEST_ADMIN_PW", "--state-dir"])
            .arg(&self.state)
            .args(extra)
            .env("SG_TEST_ADMIN_PW", ADMIN_PW)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shardgate");
        self.child = Some(KillOnDrop(child));
        wait_for_port(self.port);
        wait_for_port(self.admin_port);
    }

    /// SIGKILL: no shutdown, no flush, the state directory as it is.
    fn kill(&mut self) {
        self.child.take();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn admin(&self) -> Admin {
        let mut a = Admin::connect(self.admin_port);
        assert_eq!(a.text(&[b"AUTH", ADMIN_PW.as_bytes()]), "OK");
        a
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("client")
    }
}

/// A raw RESP client of the admin listener.
struct Admin {
    s: std::net::TcpStream,
    buf: BytesMut,
}

impl Admin {
    fn connect(port: u16) -> Admin {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("admin connect");
        // Generous: starting a rebalance fsyncs the state directory, which
        // a busy disk can make slow.
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        Admin {
            s,
            buf: BytesMut::new(),
        }
    }

    fn call(&mut self, args: &[&[u8]]) -> Bytes {
        use std::io::{Read, Write};
        let mut frame = BytesMut::new();
        encode_command(args, &mut frame);
        self.s.write_all(&frame).unwrap();
        loop {
            if let Ok(Some(n)) = scan::frame_len(&self.buf) {
                return self.buf.split_to(n).freeze();
            }
            let mut chunk = [0u8; 65536];
            let n = self.s.read(&mut chunk).expect("admin read");
            assert!(n > 0, "admin closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// A simple-string or error reply as text (errors keep their prefix).
    fn text(&mut self, args: &[&[u8]]) -> String {
        let f = self.call(args);
        String::from_utf8_lossy(&f[1..]).trim_end().to_owned()
    }

    /// The lines of an array-of-lines reply (PLAN).
    fn lines(&mut self, args: &[&[u8]]) -> Result<Vec<String>, String> {
        let f = self.call(args);
        if reply::is_error(&f) {
            return Err(reply::error_text(&f).unwrap_or_default());
        }
        let elems = reply::array_elements(&f).unwrap().expect("array");
        Ok(elems
            .iter()
            .map(|e| String::from_utf8_lossy(&e[1..]).trim_end().to_owned())
            .collect())
    }

    fn progress(&mut self) -> HashMap<String, String> {
        let f = self.call(&[b"PROGRESS"]);
        let elems = reply::array_elements(&f).unwrap().expect("array");
        let vals: Vec<String> = elems
            .iter()
            .map(|e| String::from_utf8_lossy(&reply::bulk(e).unwrap_or_default()).into_owned())
            .collect();
        vals.chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect()
    }
}

/// Waits until the running rebalance ends; returns its final progress.
fn wait_done(proxy: &Proxy) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut admin = proxy.admin();
    loop {
        let p = admin.progress();
        match p["state"].as_str() {
            "done" => return p,
            "failed" => panic!("rebalance failed: {p:?}\n{}", proxy.log_text()),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "rebalance did not finish: {p:?}\n{}",
            proxy.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A map of one region `us` over `shards` (name, server), plus `extra` YAML.
fn map_yaml(shards: &[(&str, &RedisServer)]) -> String {
    let mut y = String::from(
        "slots: 16384\nregions:\n  - name: us\noptions:\n  command_timeout_ms: 5000\nshards:\n",
    );
    for (name, s) in shards {
        y.push_str(&format!(
            "  - name: {name}\n    region: us\n    primary: {}\n",
            s.addr()
        ));
    }
    y
}

fn write(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, yaml).unwrap();
    p
}

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

fn fill(proxy: &Proxy) {
    let mut c = proxy.client().get_connection().unwrap();
    for chunk in (0..FILLER).collect::<Vec<_>>().chunks(500) {
        let mut cmd = redis::cmd("MSET");
        for i in chunk {
            cmd.arg(format!("filler:{i}")).arg(format!("f{i}"));
        }
        let _: () = cmd.query(&mut c).unwrap();
    }
}

/// Every key of every shard (scanned directly on the servers).
fn keys_on(server: &RedisServer) -> Vec<String> {
    let mut c = server.connection();
    let mut out = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query(&mut c)
            .unwrap();
        out.extend(keys);
        cursor = next;
        if cursor == 0 {
            return out;
        }
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

/// A map over `shards` (name, region, weight, server) with the rule
/// `{eu:...}` keys -> `rule_region`.
fn geo_yaml(shards: &[(&str, &str, u32, &RedisServer)], rule_region: &str, slots: u32) -> String {
    let mut y = format!(
        "slots: {slots}\nregions:\n  - name: us\n  - name: eu\n  - name: ap\nplacement:\n  - hash_tag_prefix: \"eu:\"\n    region: {rule_region}\nshards:\n"
    );
    for (name, region, weight, s) in shards {
        y.push_str(&format!(
            "  - name: {name}\n    region: {region}\n    weight: {weight}\n    primary: {}\n",
            s.addr()
        ));
    }
    y
}

fn table_of(path: &Path) -> RoutingTable {
    RoutingTable::compile(Arc::new(ShardMap::load(path).unwrap()), Epoch(1))
}

fn owner_name(t: &RoutingTable, key: &str) -> String {
    t.shard(t.shard_for_key(key.as_bytes()))
        .unwrap()
        .name
        .clone()
}

#[test]
fn plan_reports_moves_big_keys_and_refusals() {
    let servers: Vec<RedisServer> = (0..4).map(|_| RedisServer::start()).collect();
    let dir = TempDir::new("rebalance-plan");
    let s = |i: usize, region: &'static str| (["s0", "s1", "s2", "s3"][i], region, 1, &servers[i]);
    let m1 = write(
        dir.path(),
        "m1.yaml",
        &geo_yaml(&[s(0, "us"), s(1, "us"), s(2, "eu")], "eu", 16384),
    );
    let m2 = write(
        dir.path(),
        "m2.yaml",
        &geo_yaml(
            &[s(0, "us"), s(1, "us"), s(2, "eu"), s(3, "us")],
            "eu",
            16384,
        ),
    );
    let (t1, t2) = (table_of(&m1), table_of(&m2));
    let mut proxy = Proxy::start(dir.path(), &m1);
    let mut c = proxy.client().get_connection().unwrap();
    for i in 0..300 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut c)
            .unwrap();
    }
    let moving = (0..300).filter(|i| {
        let k = format!("k{i}");
        owner_name(&t1, &k) != owner_name(&t2, &k)
    });
    let moving = moving.count();
    // A big key (over 16 MiB) on a slot that moves.
    let big = (0..)
        .map(|i| format!("big{i}"))
        .find(|k| owner_name(&t2, k) == "s3")
        .unwrap();
    let big_source = owner_name(&t1, &big);
    let _: () = redis::cmd("SET")
        .arg(&big)
        .arg(vec![b'x'; 17 << 20])
        .query(&mut c)
        .unwrap();

    let mut admin = proxy.admin();
    let m2_text = std::fs::read_to_string(&m2).unwrap();
    let lines = admin.lines(&[b"PLAN", m2_text.as_bytes()]).unwrap();
    assert!(lines[0].starts_with("plan: "), "{lines:?}");
    assert!(lines.contains(&"add shard s3".to_owned()), "{lines:?}");
    let moves: Vec<&String> = lines.iter().filter(|l| l.starts_with("move ")).collect();
    assert_eq!(
        moves.len(),
        3,
        "every shard gives default-placement slots to s3: {lines:?}"
    );
    assert!(moves.iter().all(|l| l.contains(" -> s3: ")), "{lines:?}");
    let slots: usize = moves
        .iter()
        .map(|l| {
            l.split(": ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    let exact = t1.moves_to(&t2).unwrap().len();
    assert_eq!(slots, exact, "slot counts per pair add up to the plan");
    let total = lines
        .iter()
        .find(|l| l.starts_with("total: "))
        .expect("total line");
    let est: usize = total
        .split('~')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let actual = moving + 1;
    assert!(
        est * 2 >= actual && est <= actual * 2,
        "estimated {est} keys, {actual} move: {lines:?}"
    );
    let big_line = lines
        .iter()
        .find(|l| l.starts_with("big key on "))
        .expect("big key reported");
    assert!(
        big_line.contains(&big) && big_line.contains(&big_source),
        "{big_line}"
    );
    assert!(big_line.contains("MiB"), "{big_line}");

    // Refusals name the field and the reason; nothing starts.
    let refused =
        |admin: &mut Admin, yaml: &str| admin.lines(&[b"PLAN", yaml.as_bytes()]).unwrap_err();
    let e = refused(&mut admin, &m2_text.replace("slots: 16384", "slots: 1024"));
    assert_eq!(
        e,
        "ERR plan refused: slots: changed from 16384 to 1024; slots never change for a keyspace"
    );
    let e = refused(&mut admin, &m2_text.replace("\"eu:\"", "\"europe:\""));
    assert!(
        e.starts_with("ERR plan refused: placement: the rules' key patterns"),
        "{e}"
    );
    // Dropping the only eu shard would leave the rule's keys nowhere.
    let no_eu = geo_yaml(&[s(0, "us"), s(1, "us"), s(3, "us")], "eu", 16384);
    let e = refused(&mut admin, &no_eu);
    assert!(
        e.starts_with("ERR plan refused: invalid map: placement[0].region"),
        "{e}"
    );
    assert!(e.contains("has no shards"), "{e}");
    let e = refused(
        &mut admin,
        &m2_text.replace(&servers[3].addr(), "127.0.0.1"),
    );
    assert!(
        e.starts_with("ERR plan refused: invalid map: shards[3].primary"),
        "{e}"
    );
    let e = admin.text(&[b"PLAN", b"FILE", b"/nonexistent/map.yaml"]);
    assert!(
        e.starts_with("ERR cannot read /nonexistent/map.yaml"),
        "{e}"
    );
    assert_eq!(admin.progress()["state"], "none");

    // The same from plain redis-cli, with the map on stdin.
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &proxy.admin_port.to_string(),
            "-a",
            ADMIN_PW,
            "--no-auth-warning",
            "-x",
            "PLAN",
        ])
        .stdin(std::fs::File::open(&m2).unwrap())
        .output()
        .expect("run redis-cli");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("add shard s3") && text.contains("-> s3: "),
        "{text}"
    );

    // The CLI: plan, then rebalance following the progress to the end.
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("admin")
            .args(args)
            .args(["--admin", &format!("127.0.0.1:{}", proxy.admin_port)])
            .env("SHARDGATE_ADMIN_PASSWORD", ADMIN_PW)
            .output()
            .expect("run shardgate admin");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = cli(&["plan", "--map", m2.to_str().unwrap()]);
    assert!(ok && text.contains("add shard s3"), "{text}");
    let (ok, text) = cli(&["rebalance", "--map", m2.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("OK rebalance started"), "{text}");
    assert!(
        text.contains("rebalance done in") && text.contains("verification ok"),
        "{text}"
    );
    assert!(text.contains(&format!("{exact}/{exact} slots")), "{text}");
    let (ok, text) = cli(&["status"]);
    assert!(
        ok && text.contains("state:done") && text.contains("verify:ok"),
        "{text}"
    );
    let (ok, text) = cli(&["pause"]);
    assert!(!ok && text.contains("no rebalance is running"), "{text}");

    // The big key moved whole, alone, and was reported.
    let p = admin.progress();
    // No client wrote during the move: the keys now in the moved slots are
    // exactly the keys moved.
    let moved: u64 =
        p["keys_moved"].parse::<u64>().unwrap() + p["keys_moved_on_touch"].parse::<u64>().unwrap();
    assert_eq!(moved, actual as u64, "{p:?}");
    assert_eq!(p["verify_keys_in_moved_slots"], actual.to_string(), "{p:?}");
    assert_eq!(p["big_keys"], "1", "{p:?}");
    let len: usize = redis::cmd("STRLEN").arg(&big).query(&mut c).unwrap();
    assert_eq!(len, 17 << 20);
    let on_target: i64 = redis::cmd("EXISTS")
        .arg(&big)
        .query(&mut servers[3].connection())
        .unwrap();
    assert_eq!(on_target, 1);
    assert!(proxy.log_text().contains("moved a big key"));
    for i in 0..300 {
        let v: i64 = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query(&mut c)
            .unwrap();
        assert_eq!(v, i);
    }
    // Metrics of the move are on the admin port's STATUS; the exporter
    // is covered by tests/binary.rs.
    proxy.kill();

    // Without a state directory a rebalance is refused.
    let (_plain, _port) = {
        let admin_port = free_port();
        let r = common::spawn_proxy_env(
            BIN,
            &m1,
            &[
                "--admin-listen",
                &format!("127.0.0.1:{admin_port}"),
                "--admin-password-env",
                "SG_PW",
            ],
            &[("SG_PW", ADMIN_PW)],
        );
        wait_for_port(admin_port);
        let mut a = Admin::connect(admin_port);
        assert_eq!(a.text(&[b"AUTH", ADMIN_PW.as_bytes()]), "OK");
        let e = a.text(&[b"REBALANCE", m2_text.as_bytes()]);
        assert!(
            e.starts_with("ERR rebalance refused: the proxy runs without --state-dir"),
            "{e}"
        );
        r
    };
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

/// Reads of a migrating slot go to the new owner's primary, never to a
/// replica that may not have the moved key yet; the move is in the metrics.
#[test]
fn migrating_reads_skip_replicas_and_the_move_is_in_the_metrics() {
    let primaries: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let replicas: Vec<RedisServer> = primaries
        .iter()
        .map(RedisServer::start_replica_of)
        .collect();
    let dir = TempDir::new("rebalance-replicas");
    let yaml = |n: usize| {
        let mut y = String::from(
            "slots: 16384\nread_policy: prefer-replica\nregions:\n  - name: us\noptions:\n  health_check_interval_ms: 100\nshards:\n",
        );
        for i in 0..n {
            y.push_str(&format!(
                "  - name: s{i}\n    region: us\n    primary: {}\n    replicas:\n      - addr: {}\n",
                primaries[i].addr(),
                replicas[i].addr()
            ));
        }
        y
    };
    let m1 = write(dir.path(), "m1.yaml", &yaml(2));
    let m2 = write(dir.path(), "m2.yaml", &yaml(3));
    let metrics_port = free_port();
    let mut proxy = Proxy {
        child: None,
        port: free_port(),
        admin_port: free_port(),
        map: m1.clone(),
        state: dir.path().join("state"),
        log: dir.path().join("proxy.log"),
    };
    proxy.spawn_with(&["--metrics-listen", &format!("127.0.0.1:{metrics_port}")]);
    std::thread::sleep(Duration::from_millis(500)); // replicas join the read rotation
    let mut c = proxy.client().get_connection().unwrap();
    let (t1, t2) = (table_of(&m1), table_of(&m2));
    let moving: Vec<String> = (0..5000)
        .map(|i| format!("k{i}"))
        .filter(|k| owner_name(&t1, k) != owner_name(&t2, k))
        .take(300)
        .collect();
    for k in &moving {
        let _: () = redis::cmd("SET")
            .arg(k)
            .arg(format!("v-{k}"))
            .query(&mut c)
            .unwrap();
    }
    // Keep the mover slow, then paused, so the slots stay Migrating and
    // the reads below are what moves most keys.
    let mut admin = proxy.admin();
    let started = admin.text(&[b"REBALANCE", b"FILE", m2.to_str().unwrap().as_bytes()]);
    assert!(started.starts_with("OK"), "{started}");
    assert_eq!(admin.text(&[b"THROTTLE", b"1"]), "OK");
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin.progress()["slots_migrating"] == "0" {
        assert!(Instant::now() < deadline, "no window started");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(admin.text(&[b"PAUSE"]), "OK");
    let replica_gets = |r: &RedisServer| -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut r.connection())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
            .and_then(|v| v.split(',').next()?.parse().ok())
            .unwrap_or(0)
    };
    let before: Vec<u64> = replicas.iter().map(replica_gets).collect();
    let p = admin.progress();
    let mut touched = 0;
    for k in &moving {
        let v: Option<String> = redis::cmd("GET").arg(k).query(&mut c).unwrap();
        assert_eq!(
            v.as_deref(),
            Some(format!("v-{k}").as_str()),
            "{k} read during its move"
        );
        touched += 1;
    }
    let p2 = admin.progress();
    let migrating: usize = p["slots_migrating"].parse().unwrap();
    assert!(migrating > 0);
    // Reads of keys in Migrating slots went to s2's primary, not a replica.
    assert_eq!(
        replica_gets(&replicas[2]),
        before[2],
        "a migrating read went to the new shard's replica"
    );
    let on_touch: u64 = p2["keys_moved_on_touch"].parse().unwrap();
    assert!(on_touch > 0 && on_touch <= touched, "{p2:?}");
    let body = ureq_get(metrics_port);
    let metric = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{body}"))
    };
    assert_eq!(
        metric("shardgate_rebalance_keys_moved_total{how=\"touch\"}") as u64,
        on_touch
    );
    assert_eq!(metric("shardgate_rebalance_running"), 1.0);
    assert!(metric("shardgate_rebalance_slots{state=\"migrating\"}") > 0.0);
    assert!(metric("shardgate_map_epoch") >= 2.0);
    assert_eq!(admin.text(&[b"THROTTLE", b"0"]), "OK");
    assert_eq!(admin.text(&[b"RESUME"]), "OK");
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    let body = ureq_get(metrics_port);
    let done = body
        .lines()
        .find(|l| l.starts_with("shardgate_rebalance_slots{state=\"done\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap();
    assert_eq!(done as u64, p["slots_total"].parse::<u64>().unwrap());
    assert!(body.contains("shardgate_rebalance_verify_ok 1"), "{body}");
    // Once stable, the moved keys are read from the new shard's replica too.
    std::thread::sleep(Duration::from_millis(300));
    for k in &moving {
        let v: Option<String> = redis::cmd("GET").arg(k).query(&mut c).unwrap();
        assert_eq!(v.as_deref(), Some(format!("v-{k}").as_str()));
    }
    assert!(
        replica_gets(&replicas[2]) > before[2],
        "stable reads use the replica"
    );
}

/// GET /metrics over a plain TCP connection.
fn ureq_get(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Ctrl-C detaches the CLI's progress bar; the move goes on.
#[test]
fn ctrl_c_detaches_the_progress_bar_and_the_move_goes_on() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let dir = TempDir::new("rebalance-detach");
    let names = ["s0", "s1", "s2"];
    let all: Vec<(&str, &RedisServer)> = names.iter().copied().zip(&servers).collect();
    let m1 = write(dir.path(), "m1.yaml", &map_yaml(&all[..2]));
    let m2 = write(dir.path(), "m2.yaml", &map_yaml(&all));
    let proxy = Proxy::start(dir.path(), &m1);
    fill(&proxy);
    let mut admin = proxy.admin();
    let started = admin.text(&[b"REBALANCE", b"FILE", m2.to_str().unwrap().as_bytes()]);
    assert!(started.starts_with("OK"), "{started}");
    assert_eq!(admin.text(&[b"THROTTLE", b"300"]), "OK");
    let cli = Command::new(BIN)
        .args([
            "admin",
            "follow",
            "--admin",
            &format!("127.0.0.1:{}", proxy.admin_port),
        ])
        .env("SHARDGATE_ADMIN_PASSWORD", ADMIN_PW)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run shardgate admin follow");
    let mut cli = KillOnDrop(cli);
    // The bar is printed (every 2 s without a terminal) while the move runs.
    std::thread::sleep(Duration::from_millis(1500));
    let ok = Command::new("kill")
        .args(["-INT", &cli.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = cli.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut cli.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{out}");
    assert!(out.contains(" slots ") && out.contains("keys/s"), "{out}");
    assert!(
        out.contains("detached: the rebalance goes on in the proxy"),
        "{out}"
    );
    assert_eq!(
        admin.progress()["state"],
        "moving",
        "Ctrl-C did not stop the move"
    );
    assert_eq!(admin.text(&[b"THROTTLE", b"0"]), "OK");
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
}

/// Big hashes, sets, sorted sets and lists move piece by piece while a
/// client keeps writing to them: nothing is lost, TTLs stay.
#[test]
fn big_collections_move_in_pieces_while_clients_write_to_them() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let dir = TempDir::new("rebalance-big");
    let names = ["s0", "s1", "s2"];
    let all: Vec<(&str, &RedisServer)> = names.iter().copied().zip(&servers).collect();
    let m1 = write(dir.path(), "m1.yaml", &map_yaml(&all[..2]));
    let m2 = write(dir.path(), "m2.yaml", &map_yaml(&all));
    let (t1, t2) = (table_of(&m1), table_of(&m2));
    let moving = |prefix: &str| {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|k| owner_name(&t1, k) != "s2" && owner_name(&t2, k) == "s2")
            .unwrap()
    };
    let (hash, set, zset, list) = (
        moving("bighash"),
        moving("bigset"),
        moving("bigzset"),
        moving("biglist"),
    );
    let proxy = Proxy::start(dir.path(), &m1);
    let mut c = proxy.client().get_connection().unwrap();
    let fill = |script: &str, key: &str| {
        let _: i64 = redis::cmd("EVAL")
            .arg(script)
            .arg(1)
            .arg(key)
            .query(&mut proxy.client().get_connection().unwrap())
            .unwrap();
    };
    fill(
        "for i=1,300000 do redis.call('HSET', KEYS[1], 'field:'..i, 'value:'..i) end return 1",
        &hash,
    );
    fill(
        "for i=1,350000 do redis.call('SADD', KEYS[1], 'member:'..i) end return 1",
        &set,
    );
    fill(
        "for i=1,200000 do redis.call('ZADD', KEYS[1], i, 'member:'..i) end return 1",
        &zset,
    );
    fill(
        "for i=1,1000 do local t={} for j=1,2000 do t[j]='element:'..((i-1)*2000+j) end redis.call('RPUSH', KEYS[1], unpack(t)) end return 1",
        &list,
    );
    let _: i64 = redis::cmd("EXPIRE")
        .arg(&hash)
        .arg(TTL)
        .query(&mut c)
        .unwrap();
    for k in [&hash, &set, &zset, &list] {
        let n: i64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(k)
            .query(&mut c)
            .unwrap();
        assert!(n >= 16 << 20, "{k} is {n} bytes, not a big key");
    }
    // A client writes to the big keys all along.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, client, hash, list) = (stop.clone(), proxy.client(), hash.clone(), list.clone());
        std::thread::spawn(move || {
            let mut c = client.get_connection().unwrap();
            let (mut incrs, mut pushes) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let _: i64 = redis::cmd("HINCRBY")
                    .arg(&hash)
                    .arg(format!("n:{}", incrs % 50))
                    .arg(1)
                    .query(&mut c)
                    .unwrap();
                incrs += 1;
                let _: i64 = redis::cmd("RPUSH")
                    .arg(&list)
                    .arg(format!("late:{pushes}"))
                    .query(&mut c)
                    .unwrap();
                pushes += 1;
            }
            (incrs, pushes)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut admin = proxy.admin();
    let started = admin.text(&[b"REBALANCE", b"FILE", m2.to_str().unwrap().as_bytes()]);
    assert!(started.starts_with("OK"), "{started}");
    let p = wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (incrs, pushes) = writer.join().unwrap();
    assert!(incrs > 0);
    // Everything is on s2 now, whole, with the writes made during the move.
    let mut s2 = servers[2].connection();
    let sum: i64 = (0..50)
        .map(|i| -> i64 {
            redis::cmd("HGET")
                .arg(&hash)
                .arg(format!("n:{i}"))
                .query::<Option<i64>>(&mut s2)
                .unwrap()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(sum as u64, incrs, "every HINCRBY counted");
    let hlen: u64 = redis::cmd("HLEN").arg(&hash).query(&mut s2).unwrap();
    assert_eq!(hlen, 300_000 + incrs.min(50));
    let v: String = redis::cmd("HGET")
        .arg(&hash)
        .arg("field:123456")
        .query(&mut s2)
        .unwrap();
    assert_eq!(v, "value:123456");
    let ttl: i64 = redis::cmd("TTL").arg(&hash).query(&mut s2).unwrap();
    assert!(ttl > 0 && ttl <= TTL, "TTL {ttl}");
    let n: u64 = redis::cmd("SCARD").arg(&set).query(&mut s2).unwrap();
    assert_eq!(n, 350_000);
    let n: u64 = redis::cmd("ZCARD").arg(&zset).query(&mut s2).unwrap();
    assert_eq!(n, 200_000);
    let score: f64 = redis::cmd("ZSCORE")
        .arg(&zset)
        .arg("member:4321")
        .query(&mut s2)
        .unwrap();
    assert_eq!(score, 4321.0);
    let n: u64 = redis::cmd("LLEN").arg(&list).query(&mut s2).unwrap();
    assert_eq!(n, 2_000_000 + pushes);
    let first: Vec<String> = redis::cmd("LRANGE")
        .arg(&list)
        .arg(0)
        .arg(1)
        .query(&mut s2)
        .unwrap();
    assert_eq!(first, ["element:1", "element:2"], "list order kept");
    let last: String = redis::cmd("LINDEX")
        .arg(&list)
        .arg(-1)
        .query(&mut s2)
        .unwrap();
    assert_eq!(last, format!("late:{}", pushes - 1), "list order kept");
    for (i, s) in servers.iter().enumerate().take(2) {
        for k in [&hash, &set, &zset, &list] {
            let n: i64 = redis::cmd("EXISTS")
                .arg(k)
                .query(&mut s.connection())
                .unwrap();
            assert_eq!(n, 0, "{k} left on s{i}");
        }
    }
    // Each was copied piece by piece, by the mover or by the first
    // command that touched it; none by one blocking MIGRATE.
    let log = proxy.log_text();
    assert_eq!(log.matches("moved a big key").count(), 4, "{log}");
    assert!(!log.contains("in one MIGRATE"), "{log}");
}

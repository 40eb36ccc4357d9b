//! The near cache (`options.near_cache_bytes`): GETs of hot keys served by
//! the proxy, invalidated by the shard's `CLIENT TRACKING` pushes, never
//! older than a write that had finished before the read arrived.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{RedisServer, TempDir, free_port, spawn_proxy};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

/// A proxy over one shard with the near cache on (`options` adds to it).
struct Setup {
    shard: RedisServer,
    _dir: TempDir,
    _proxy: common::KillOnDrop,
    port: u16,
    metrics_port: u16,
}

fn setup(options: &str) -> Setup {
    let shard = RedisServer::start();
    let dir = TempDir::new("near-cache");
    let map = dir.path().join("map.yaml");
    std::fs::write(
        &map,
        format!(
            "regions:\n  - name: us\nshards:\n  - name: s0\n    region: us\n    primary: {}\noptions:\n  near_cache_bytes: 1048576\n{options}",
            shard.addr()
        ),
    )
    .unwrap();
    let metrics_port = free_port();
    let (proxy, port) = spawn_proxy(
        BIN,
        &map,
        &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")],
    );
    Setup {
        shard,
        _dir: dir,
        _proxy: proxy,
        port,
        metrics_port,
    }
}

impl Setup {
    fn proxy(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Calls of `cmd` the shard has served.
    fn calls(&self, cmd: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.shard.connection())
            .unwrap();
        let prefix = format!("cmdstat_{cmd}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The value of the metric series `series` (name and labels).
    fn metric(&self, series: &str) -> f64 {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

fn get(con: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(con).unwrap()
}

fn set(con: &mut redis::Connection, key: &str, value: &str) {
    let _: () = redis::cmd("SET").arg(key).arg(value).query(con).unwrap();
}

#[test]
fn hot_reads_are_served_by_the_proxy_and_a_write_straight_to_the_shard_invalidates_them() {
    let s = setup("");
    let mut direct = s.shard.connection();
    let mut c = s.proxy();
    set(&mut direct, "hot", "v1");
    let before = s.calls("get");
    for _ in 0..200 {
        assert_eq!(get(&mut c, "hot").as_deref(), Some("v1"));
    }
    let served = s.calls("get") - before;
    assert!(served <= 2, "the shard served {served} of 200 GETs");
    // A write that bypasses the proxy: the very next read sees it.
    set(&mut direct, "hot", "v2");
    assert_eq!(get(&mut c, "hot").as_deref(), Some("v2"));
    // Missing keys are cached too, and invalidated when created.
    assert_eq!(get(&mut c, "absent"), None);
    assert_eq!(get(&mut c, "absent"), None);
    set(&mut direct, "absent", "now");
    assert_eq!(get(&mut c, "absent").as_deref(), Some("now"));
    // FLUSHALL on the shard empties the cache.
    let _: () = redis::cmd("FLUSHALL").query(&mut direct).unwrap();
    assert_eq!(get(&mut c, "hot"), None);
    // RESP3 clients get RESP3 nil, RESP2 clients RESP2 nil, from one entry.
    let mut raw = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut buf = [0u8; 4096];
    let _ = raw.read(&mut buf).unwrap();
    raw.write_all(b"*2\r\n$3\r\nGET\r\n$3\r\nhot\r\n").unwrap();
    let n = raw.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"_\r\n");
    assert_eq!(get(&mut c, "hot"), None);
    // Every kind of read was counted.
    let hits = s.metric("shardgate_near_cache_reads_total{shard=\"s0\",result=\"confirmed_hit\"}");
    assert!(hits >= 190.0, "confirmed hits: {hits}");
    assert!(s.metric("shardgate_near_cache_invalidations_total{shard=\"s0\"}") >= 2.0);
    assert!(s.metric("shardgate_near_cache_flushes_total{shard=\"s0\"}") >= 1.0);
}

#[test]
fn a_client_reads_its_own_writes_through_the_cache() {
    let s = setup("");
    let mut c = s.proxy();
    for i in 0..500 {
        set(&mut c, "mine", &i.to_string());
        assert_eq!(get(&mut c, "mine"), Some(i.to_string()), "sequential {i}");
    }
    for i in 0..500 {
        let (_, v): ((), Option<String>) = redis::pipe()
            .cmd("SET")
            .arg("mine")
            .arg(format!("p{i}"))
            .cmd("GET")
            .arg("mine")
            .query(&mut c)
            .unwrap();
        assert_eq!(v, Some(format!("p{i}")), "pipelined {i}");
    }
    let bypass = s.metric("shardgate_near_cache_reads_total{shard=\"s0\",result=\"bypass\"}");
    assert!(
        bypass >= 500.0,
        "pipelined reads behind a write bypass: {bypass}"
    );
}

/// The guarantee: a writer straight to the shard and readers through the
/// proxy; no read returns a value older than one whose write had finished
/// before the read was sent.
#[test]
fn no_read_returns_a_value_older_than_a_write_finished_before_it() {
    let s = Arc::new(setup(""));
    const KEYS: usize = 4;
    let done: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    {
        let mut direct = s.shard.connection();
        for k in 0..KEYS {
            set(&mut direct, &format!("g{k}"), "0");
        }
    }
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (s, done, stop) = (s.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut c = s.proxy();
                let (mut reads, mut stale) = (0u64, Vec::new());
                let mut k = r;
                while !stop.load(Ordering::SeqCst) {
                    k = (k + 1) % KEYS;
                    let floor = done[k].load(Ordering::SeqCst);
                    let v: u64 = get(&mut c, &format!("g{k}")).unwrap().parse().unwrap();
                    reads += 1;
                    if v < floor {
                        stale.push((k, floor, v));
                    }
                }
                (reads, stale)
            })
        })
        .collect();
    let mut direct = s.shard.connection();
    for i in 1..=1500u64 {
        let k = (i as usize) % KEYS;
        set(&mut direct, &format!("g{k}"), &i.to_string());
        done[k].store(i, Ordering::SeqCst);
        if i % 3 == 0 {
            // Let readers hit the entry between writes.
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for r in readers {
        let (reads, stale) = r.join().unwrap();
        total += reads;
        assert!(
            stale.is_empty(),
            "stale reads (key, floor, value): {stale:?}"
        );
    }
    let hits = s.metric("shardgate_near_cache_reads_total{shard=\"s0\",result=\"confirmed_hit\"}");
    let misses = s.metric("shardgate_near_cache_reads_total{shard=\"s0\",result=\"miss\"}");
    eprintln!("{total} reads: {hits} confirmed hits, {misses} misses");
    assert!(hits > 0.0, "the cache served none of {total} reads");
}

#[test]
fn losing_the_tracking_connection_forgets_what_it_covered() {
    let s = setup("");
    let mut direct = s.shard.connection();
    let mut c = s.proxy();
    set(&mut direct, "k", "old");
    assert_eq!(get(&mut c, "k").as_deref(), Some("old"));
    assert_eq!(get(&mut c, "k").as_deref(), Some("old"));
    // Kill the tracking connection, then write while it is down: its
    // invalidation can never arrive.
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut direct).unwrap();
    let tracking: Vec<&str> = list
        .lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.starts_with("flags=") && f.contains('t'))
        })
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert_eq!(tracking.len(), 1, "one tracking connection:\n{list}");
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(tracking[0])
        .query(&mut direct)
        .unwrap();
    set(&mut direct, "k", "new");
    assert_eq!(get(&mut c, "k").as_deref(), Some("new"));
    assert!(s.metric("shardgate_near_cache_flushes_total{shard=\"s0\"}") >= 1.0);
}

#[test]
fn one_off_reads_do_not_evict_a_hot_key() {
    // Room for about 2,000 small entries.
    let s = setup("");
    let mut direct = s.shard.connection();
    let mut c = s.proxy();
    set(&mut direct, "hot", "h");
    for _ in 0..50 {
        assert_eq!(get(&mut c, "hot").as_deref(), Some("h"));
    }
    // A scan over 20,000 keys read once each (misses, never read again).
    let mut pipe = redis::pipe();
    for i in 0..20_000 {
        pipe.cmd("GET").arg(format!("once:{i}"));
    }
    let _: Vec<Option<String>> = pipe.query(&mut c).unwrap();
    let before = s.calls("get");
    assert_eq!(get(&mut c, "hot").as_deref(), Some("h"));
    assert_eq!(
        s.calls("get"),
        before,
        "the hot key was evicted by the scan"
    );
    let bytes = s.metric("shardgate_near_cache_bytes{shard=\"s0\"}");
    assert!(bytes <= 1_048_576.0, "over its bound: {bytes}");
}

/// During a rebalance, a key of a migrating slot is never read from the
/// cache: it moves first, then is read from its new shard.
#[test]
fn keys_of_migrating_slots_are_not_served_from_the_cache() {
    use common::rebalance::{Proxy, map_yaml, owner_name, table_of, write};
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let dir = TempDir::new("near-cache-rebalance");
    let with_cache =
        |yaml: String| yaml.replace("options:\n", "options:\n  near_cache_bytes: 1048576\n");
    let m1 = write(
        dir.path(),
        "m1.yaml",
        &with_cache(map_yaml(&[("s0", &servers[0]), ("s1", &servers[1])])),
    );
    let m2 = write(
        dir.path(),
        "m2.yaml",
        &with_cache(map_yaml(&[
            ("s0", &servers[0]),
            ("s1", &servers[1]),
            ("s2", &servers[2]),
        ])),
    );
    let (proxy, metrics_port) = Proxy::start_with_metrics(dir.path(), &m1);
    let mut c = proxy.client().get_connection().unwrap();
    let (t1, t2) = (table_of(&m1), table_of(&m2));
    let moving: Vec<String> = (0..5000)
        .map(|i| format!("m{i}"))
        .filter(|k| owner_name(&t1, k) != owner_name(&t2, k))
        .take(200)
        .collect();
    for k in &moving {
        set(&mut c, k, &format!("v-{k}"));
        // Cached on its old shard.
        assert_eq!(get(&mut c, k), Some(format!("v-{k}")));
    }
    // The sum of a counter's series.
    let counter = |name: &str| -> f64 {
        let mut s = TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        let series = format!("{name}{{");
        body.lines()
            .filter(|l| l.starts_with(&series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let cache_reads = || counter("shardgate_near_cache_reads_total");
    // Reads of a key in a migrating slot (they ask the source and the
    // target, see `proxy::moves`).
    let migrating_reads = || counter(shardgate::metrics::REBALANCE_READS);
    // A slow mover, then paused: the slots of its window stay Migrating.
    let mut admin = proxy.admin();
    admin.rebalance_paused_migrating(&m2);
    let mut migrating = 0;
    for k in &moving {
        let before = migrating_reads();
        assert_eq!(
            get(&mut c, k),
            Some(format!("v-{k}")),
            "{k} during its move"
        );
        if migrating_reads() == before {
            continue; // not in the migrating window
        }
        // In a migrating slot. Read again: never from the cache (no cache
        // read is counted), always the value.
        migrating += 1;
        let reads = cache_reads();
        for _ in 0..20 {
            assert_eq!(get(&mut c, k), Some(format!("v-{k}")));
        }
        assert_eq!(
            cache_reads(),
            reads,
            "{k}: a migrating key was read through the cache"
        );
    }
    assert!(migrating > 0, "no key of the window was read");
    assert_eq!(admin.text(&[b"THROTTLE", b"0"]), "OK");
    assert_eq!(admin.text(&[b"RESUME"]), "OK");
    let p = common::rebalance::wait_done(&proxy);
    assert_eq!(p["verify"], "ok", "{p:?}");
    // After the move, the keys are cached again on their new shard.
    let reads = cache_reads();
    for k in &moving {
        assert_eq!(get(&mut c, k), Some(format!("v-{k}")));
    }
    assert!(cache_reads() >= reads + moving.len() as f64);
}

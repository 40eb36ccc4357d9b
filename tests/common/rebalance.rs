//! Helpers of the rebalancing tests (`tests/rebalance*.rs`): the proxy
//! binary on fixed ports with a state directory, a raw client of its admin
//! listener, maps, and direct looks at the servers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use shardgate::protocol::{reply, request::encode_command, scan};
use shardgate::router::{Epoch, RoutingTable};
use shardgate::shardmap::ShardMap;

use super::{KillOnDrop, RedisServer, free_port, wait_for_port};

pub const BIN: &str = env!("CARGO_BIN_EXE_shardgate");
pub const ADMIN_PW: &str = "rebalance-admin";
/// Keys written before the clients start, so the mover has work.
pub const FILLER: usize = 12_000;

/// The proxy binary on fixed ports, restartable, logging to a file.
pub struct Proxy {
    pub child: Option<KillOnDrop>,
    pub port: u16,
    pub admin_port: u16,
    pub map: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
}

impl Proxy {
    /// A proxy not started yet, on free ports, its state and log in `dir`.
    pub fn new(dir: &Path, map: &Path) -> Proxy {
        Proxy {
            child: None,
            port: free_port(),
            admin_port: free_port(),
            map: map.to_owned(),
            state: dir.join("state"),
            log: dir.join("proxy.log"),
        }
    }

    pub fn start(dir: &Path, map: &Path) -> Proxy {
        let mut p = Proxy::new(dir, map);
        p.spawn();
        p
    }

    /// [`Proxy::start`] with a metrics listener; returns its port too.
    pub fn start_with_metrics(dir: &Path, map: &Path) -> (Proxy, u16) {
        let metrics_port = free_port();
        let mut p = Proxy::new(dir, map);
        p.spawn_with(&["--metrics-listen", &format!("127.0.0.1:{metrics_port}")]);
        (p, metrics_port)
    }

    pub fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    pub fn spawn_with(&mut self, extra: &[&str]) {
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
        super::check_log_for_panics(child.id(), &self.log);
        self.child = Some(KillOnDrop(child));
        wait_for_port(self.port);
        wait_for_port(self.admin_port);
    }

    /// SIGKILL: no shutdown, no flush, the state directory as it is.
    pub fn kill(&mut self) {
        self.child.take();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn admin(&self) -> Admin {
        let mut a = Admin::connect(self.admin_port);
        assert_eq!(a.text(&[b"AUTH", ADMIN_PW.as_bytes()]), "OK");
        a
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("client")
    }
}

/// A raw RESP client of the admin listener.
pub struct Admin {
    s: std::net::TcpStream,
    buf: BytesMut,
}

impl Admin {
    pub fn connect(port: u16) -> Admin {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("admin connect");
        // Generous: starting a rebalance fsyncs the state directory, which
        // a busy disk can make slow.
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        Admin {
            s,
            buf: BytesMut::new(),
        }
    }

    pub fn call(&mut self, args: &[&[u8]]) -> Bytes {
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
    pub fn text(&mut self, args: &[&[u8]]) -> String {
        let f = self.call(args);
        String::from_utf8_lossy(&f[1..]).trim_end().to_owned()
    }

    /// The lines of an array-of-lines reply (PLAN).
    pub fn lines(&mut self, args: &[&[u8]]) -> Result<Vec<String>, String> {
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

    /// Starts a rebalance to the map file `map`, its mover limited to
    /// `throttle` keys/s from the first batch; returns the admin reply.
    pub fn rebalance_file(&mut self, map: &Path, throttle: u64) -> String {
        let throttle = throttle.to_string();
        self.text(&[
            b"REBALANCE",
            b"FILE",
            map.to_str().unwrap().as_bytes(),
            b"THROTTLE",
            throttle.as_bytes(),
        ])
    }

    /// Starts a rebalance to `map`, throttled to 1 key/s, and pauses it
    /// once a window is migrating (with no batch in flight: a pause waits
    /// for the batches in flight), so the window's slots stay migrating.
    pub fn rebalance_paused_migrating(&mut self, map: &Path) {
        // Throttled from the first batch: one batch at most moves before
        // the pause (a THROTTLE after the start could come too late).
        let started = self.rebalance_file(map, 1);
        assert!(started.starts_with("OK"), "{started}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.progress()["slots_migrating"] == "0" {
            assert!(Instant::now() < deadline, "no window started");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(self.text(&[b"PAUSE"]), "OK");
    }

    pub fn progress(&mut self) -> HashMap<String, String> {
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
pub fn wait_done(proxy: &Proxy) -> HashMap<String, String> {
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
pub fn map_yaml(shards: &[(&str, &RedisServer)]) -> String {
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

pub fn write(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, yaml).unwrap();
    p
}

pub fn fill(proxy: &Proxy) {
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
pub fn keys_on(server: &RedisServer) -> Vec<String> {
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

/// A map over `shards` (name, region, weight, server) with the rule
/// `{eu:...}` keys -> `rule_region`.
pub fn geo_yaml(
    shards: &[(&str, &str, u32, &RedisServer)],
    rule_region: &str,
    slots: u32,
) -> String {
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

pub fn table_of(path: &Path) -> RoutingTable {
    RoutingTable::compile(Arc::new(ShardMap::load(path).unwrap()), Epoch(1))
}

pub fn owner_name(t: &RoutingTable, key: &str) -> String {
    t.shard(t.shard_for_key(key.as_bytes()))
        .unwrap()
        .name
        .clone()
}

/// GET /metrics over a plain TCP connection.
pub fn ureq_get(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

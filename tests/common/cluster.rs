//! A sharded test deployment: real redis-server primaries (and replicas) on
//! free loopback ports and a shardgate proxy in front, running in its own
//! tokio runtime so tests can use blocking clients.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate::app::{self, Running, ServeConfig};
use shardgate::proxy::ClientConfig;
use shardgate::router::{Epoch, RoutingTable};
use shardgate::shardmap::ShardMap;

use super::RedisServer;
use super::postgres::PgServer;

/// How to build the deployment.
pub struct Spec {
    pub shards: usize,
    pub replicas: bool,
    pub read_policy: &'static str,
    pub extra_options: &'static str,
    /// Client-side limits (region and zone are set by the harness).
    pub client: ClientConfig,
    /// PostgreSQL shards (`kind: postgres`), after the Redis ones.
    pub pg_shards: usize,
    /// Whether each PostgreSQL shard gets a streaming replica.
    pub pg_replicas: bool,
    /// TLS for clients.
    pub tls: Option<app::TlsListen>,
    /// Lines added to every shard of the map (backend auth and TLS), e.g.
    /// `"    password_env: PW\n"`.
    pub shard_extra: String,
    /// Extra arguments of every primary's `redis-server`.
    pub server_args: Vec<String>,
    /// The primaries' ports speak TLS (`server_args` carry the TLS files).
    pub server_tls: bool,
    /// The map's `options.allow_flush`.
    pub allow_flush: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            shards: 4,
            replicas: false,
            read_policy: "primary",
            extra_options: "",
            client: ClientConfig::default(),
            pg_shards: 0,
            pg_replicas: false,
            tls: None,
            shard_extra: String::new(),
            server_args: Vec::new(),
            server_tls: false,
            allow_flush: true,
        }
    }
}

/// Primaries, replicas, the map and the running proxy.
pub struct Cluster {
    pub primaries: Vec<RedisServer>,
    pub replicas: Vec<RedisServer>,
    pub pg: Vec<PgServer>,
    pub pg_replicas: Vec<PgServer>,
    pub map_path: PathBuf,
    pub table: RoutingTable,
    pub proxy_port: u16,
    /// Where clients speak TLS, when the spec asked for it.
    pub tls_port: Option<u16>,
    running: Option<Running>,
    rt: super::ProxyRuntime,
}

impl Cluster {
    /// Starts `spec.shards` shards (half in region us, half in eu) and the proxy.
    pub fn start(spec: Spec) -> Cluster {
        let args: Vec<&str> = spec.server_args.iter().map(String::as_str).collect();
        let primaries: Vec<RedisServer> = (0..spec.shards)
            .map(|_| RedisServer::start_args(&args, spec.server_tls))
            .collect();
        let replicas: Vec<RedisServer> = if spec.replicas {
            primaries
                .iter()
                .map(RedisServer::start_replica_of)
                .collect()
        } else {
            Vec::new()
        };
        let pg: Vec<PgServer> = (0..spec.pg_shards).map(|_| PgServer::start()).collect();
        let pg_replicas: Vec<PgServer> = if spec.pg_replicas {
            pg.iter().map(PgServer::start_replica_of).collect()
        } else {
            Vec::new()
        };
        let total = spec.shards + spec.pg_shards;
        // Placement rules need shards in region eu.
        let placement = if total >= 2 {
            "placement:\n  - hash_tag_prefix: \"eu:\"\n    region: eu\n  - key_prefix: \"eu/\"\n    region: eu\n"
        } else {
            ""
        };
        let mut yaml = format!(
            "slots: 16384\nread_policy: {}\nregions:\n  - name: us\n    zones: [us-a, us-b]\n  - name: eu\n    zones: [eu-a, eu-b]\n{placement}options:\n  allow_flush: {}\n  health_check_interval_ms: 100\n  command_timeout_ms: 2000\n{}shards:\n",
            spec.read_policy, spec.allow_flush, spec.extra_options
        );
        let region_of = |i: usize| if i < total.div_ceil(2) { "us" } else { "eu" };
        for (i, p) in primaries.iter().enumerate() {
            let region = region_of(i);
            yaml.push_str(&format!(
                "  - name: s{i}\n    region: {region}\n    zone: {region}-a\n    primary: {}\n{}",
                p.addr(),
                spec.shard_extra
            ));
            if let Some(r) = replicas.get(i) {
                yaml.push_str(&format!(
                    "    replicas:\n      - addr: {}\n        zone: {region}-b\n",
                    r.addr()
                ));
            }
        }
        for (j, p) in pg.iter().enumerate() {
            let region = region_of(spec.shards + j);
            yaml.push_str(&format!(
                "  - name: p{j}\n    kind: postgres\n    region: {region}\n    zone: {region}-a\n    primary: {}\n",
                p.dsn()
            ));
            if let Some(r) = pg_replicas.get(j) {
                yaml.push_str(&format!(
                    "    replicas:\n      - addr: {}\n        zone: {region}-b\n",
                    r.dsn()
                ));
            }
        }
        static MAPS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let map_path = std::env::temp_dir().join(format!(
            "shardgate-map-{}-{}.yaml",
            std::process::id(),
            MAPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&map_path, &yaml).expect("write map");
        let map =
            ShardMap::load(&map_path).unwrap_or_else(|e| panic!("test map refused: {e}\n{yaml}"));
        let table = RoutingTable::compile(Arc::new(map), Epoch(1));
        let rt = super::ProxyRuntime::new(2);
        let config = ServeConfig {
            map_path: map_path.clone(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            client: ClientConfig {
                region: Some("us".into()),
                zone: Some("us-a".into()),
                ..spec.client.clone()
            },
            tls: spec.tls.clone(),
            admin: None,
            state_dir: None,
            rebalance_sources: 4,
            fleet: None,
            readiness: None,
            ready_share: 1.0,
        };
        let running = rt
            .block_on(app::start(config))
            .unwrap_or_else(|e| panic!("proxy did not start: {e}"));
        let proxy_port = running.addr.port();
        let tls_port = running.tls_addr.map(|a| a.port());
        let cluster = Cluster {
            primaries,
            replicas,
            pg,
            pg_replicas,
            map_path,
            table,
            proxy_port,
            tls_port,
            running: Some(running),
            rt,
        };
        if spec.replicas || spec.pg_replicas {
            // Replicas count for reads once a health check has seen them in sync.
            std::thread::sleep(Duration::from_millis(400));
        }
        cluster
    }

    /// A blocking redis-rs connection to the proxy (RESP2).
    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().expect("connect to proxy")
    }

    /// A redis-rs client for the proxy.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.proxy_port)).expect("client")
    }

    /// A redis-rs client for the proxy speaking RESP3.
    pub fn client_resp3(&self) -> redis::Client {
        redis::Client::open(format!(
            "redis://127.0.0.1:{}/?protocol=resp3",
            self.proxy_port
        ))
        .expect("client")
    }

    /// The index of the shard that owns `key` by the routing table.
    pub fn shard_of(&self, key: &str) -> usize {
        self.table.shard_for_key(key.as_bytes()).0 as usize
    }

    /// A raw TCP connection to the proxy.
    pub fn raw(&self) -> RawConn {
        let s = TcpStream::connect(("127.0.0.1", self.proxy_port)).expect("raw connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        RawConn { s }
    }

    /// SETs `k0`..`k19` and reads them back with MGET (multiplexed
    /// connections to every shard), runs a BLPOP (a dedicated connection)
    /// and a GET over RESP3 (the RESP3 connections): each kind of backend
    /// connection is opened and used once.
    pub fn use_every_connection_kind(&self) {
        let mut con = self.conn();
        for i in 0..20 {
            let _: () = redis::cmd("SET")
                .arg(format!("k{i}"))
                .arg(i)
                .query(&mut con)
                .expect("set");
        }
        let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
        let values: Vec<i64> = redis::cmd("MGET").arg(&keys).query(&mut con).expect("mget");
        assert_eq!(values, (0..20).collect::<Vec<i64>>());
        let popped: Option<(String, String)> = redis::cmd("BLPOP")
            .arg("nolist")
            .arg(0.05)
            .query(&mut con)
            .expect("blpop");
        assert_eq!(popped, None);
        let mut resp3 = self.client_resp3().get_connection().expect("resp3");
        let v: i64 = redis::cmd("GET").arg("k3").query(&mut resp3).expect("get");
        assert_eq!(v, 3);
    }

    /// Re-reads the map file (as SIGHUP does).
    pub fn reload(&self) -> Result<shardgate::app::ReloadSummary, shardgate::app::ReloadError> {
        let running = self.running.as_ref().expect("proxy is running");
        self.rt.block_on(running.reload())
    }

    /// Rewrites the map file with `edit` applied to its text.
    pub fn edit_map(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.map_path).expect("read map");
        std::fs::write(&self.map_path, edit(text)).expect("write map");
    }

    /// Runs `f` inside the proxy's runtime (for async checks).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), r.shutdown())
                    .await
                    .ok()
            });
        }
        let _ = std::fs::remove_file(&self.map_path);
    }
}

/// Raw bytes to and from the proxy.
pub struct RawConn {
    pub s: TcpStream,
}

impl RawConn {
    /// Writes bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("raw write");
    }

    /// Reads until `expected` bytes arrived or the peer closed; returns them.
    pub fn read_exactly(&mut self, expected: usize) -> Vec<u8> {
        let mut out = vec![0u8; expected];
        let mut got = 0;
        while got < expected {
            match self.s.read(&mut out[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => panic!("raw read after {got} bytes: {e}"),
            }
        }
        out.truncate(got);
        out
    }

    /// Reads until the buffer ends with `suffix` (or 5 s pass).
    pub fn read_until(&mut self, suffix: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 4096];
        while !out.ends_with(suffix) && Instant::now() < deadline {
            match self.s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        out
    }

    /// Whether the proxy has closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0))
    }
}

/// `INFO commandstats` calls of `cmd` (lower-case) on a server.
pub fn calls(server: &RedisServer, cmd: &str) -> u64 {
    let mut c = server.client().get_connection().expect("direct connect");
    calls_on(&mut c, cmd)
}

/// `INFO commandstats` calls of `cmd` (lower-case) on a connection's
/// server: a shard, or the proxy (which counts its own).
pub fn calls_on(c: &mut redis::Connection, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(c)
        .expect("info");
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

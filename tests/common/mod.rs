//! Shared harness for the Rust integration tests: real `redis-server`
//! processes on free loopback ports.
//!
//! Each test binary that needs it says `mod common;`. Not every binary uses
//! every helper, hence the `dead_code` allowance below.
//!
//! Servers run in the foreground as child processes (never `--daemonize`), with
//! persistence off and their own temporary directory, so that dropping a
//! [`RedisServer`] kills the process and removes its files even when a test
//! fails.
#![allow(dead_code)]

pub mod cluster;
pub mod compare;
pub mod etcd;
pub mod fleet;
pub mod history;
pub mod postgres;
pub mod rebalance;
pub mod resp;
pub mod sentinel;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to answer PING (or to sync with its primary).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A port that was free a moment ago: bind 127.0.0.1:0, read the port, drop.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A temporary directory removed on drop (no `tempfile` dependency).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/shardgate-<label>-<pid>-<counter>`.
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("shardgate-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A `redis-server` child process; dropping it kills the server.
#[derive(Debug)]
pub struct RedisServer {
    /// The loopback port the server listens on.
    pub port: u16,
    child: Option<Child>,
    /// `--replicaof` target, kept so that `restart` restores the role.
    primary_port: Option<u16>,
    /// Extra `redis-server` arguments (`--requirepass`, TLS files ...).
    extra: Vec<String>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a standalone server and waits until it answers PING.
    pub fn start() -> RedisServer {
        Self::start_with(None, Vec::new())
    }

    /// Starts a standalone server with extra arguments and waits until it
    /// answers (an error such as NOAUTH counts). With `tls: true` the port
    /// is a TLS port (`--port 0 --tls-port P`; pass the TLS file arguments)
    /// and readiness is the port accepting connections.
    pub fn start_args(args: &[&str], tls: bool) -> RedisServer {
        let mut extra: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if tls {
            extra.insert(0, TLS_MARK.to_owned());
        }
        Self::start_with(None, extra)
    }

    /// Starts a replica of `primary` and waits until its link to the primary
    /// is up (`master_link_status:up`) and the primary streams writes to it:
    /// after a diskless sync the primary holds writes back until the
    /// replica's first REPLCONF ACK (up to a second later), so a marker write
    /// is confirmed with `WAIT`.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let replica = Self::start_with(Some(primary.port), Vec::new());
        replica.wait_for_link_up();
        let mut p = primary.connection();
        let marker = format!("__replica_sync_{}", replica.port);
        let _: () = redis::cmd("SET")
            .arg(&marker)
            .arg(1)
            .query(&mut p)
            .expect("marker");
        let acked: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(START_TIMEOUT.as_millis() as u64)
            .query(&mut p)
            .expect("WAIT");
        assert!(
            acked >= 1,
            "replica on {} never acknowledged",
            replica.addr()
        );
        let _: () = redis::cmd("DEL")
            .arg(&marker)
            .query(&mut p)
            .expect("DEL marker");
        replica
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A `redis` crate client for direct checks against this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://{}/", self.addr())).expect("redis client")
    }

    /// A synchronous connection (shorthand for `client().get_connection()`).
    pub fn connection(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(START_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to redis on {}: {e}", self.addr()))
    }

    /// Sends a signal to the server process (e.g. `STOP`, `CONT`) with kill(1).
    pub fn signal(&self, sig: &str) {
        signal_pid(self.child.as_ref().expect("server is running").id(), sig);
    }

    /// Kills the server (SIGKILL, no shutdown save) and reaps it. The port and
    /// directory are kept for [`RedisServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (killing it
    /// first if it still runs) and waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.child = Some(spawn(
                self.port,
                self.primary_port,
                self.dir.path(),
                &self.extra,
            ));
            match self.wait_for_ping() {
                Ok(()) => break,
                // The old socket may linger for a moment after SIGKILL.
                Err(_) if Instant::now() < deadline => {
                    self.kill();
                    thread::sleep(Duration::from_millis(100));
                }
                Err(why) => panic!(
                    "redis-server on port {} did not restart: {why}\n{}",
                    self.port,
                    self.log()
                ),
            }
        }
        if self.primary_port.is_some() {
            self.wait_for_link_up();
        }
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Spawns on a free port; retries on another port if the chosen one was
    /// taken between `free_port` and the server's bind.
    fn start_with(primary_port: Option<u16>, extra: Vec<String>) -> RedisServer {
        let mut last_failure = String::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = TempDir::new("redis");
            let child = Some(spawn(port, primary_port, dir.path(), &extra));
            let mut server = RedisServer {
                port,
                child,
                primary_port,
                extra: extra.clone(),
                dir,
            };
            match server.wait_for_ping() {
                Ok(()) => return server,
                Err(why) => {
                    last_failure = format!("{why}\n--- redis.log ---\n{}", server.log());
                    server.kill();
                }
            }
        }
        panic!("redis-server did not start: {last_failure}");
    }

    /// Polls PING until PONG, the process exits, or the timeout passes.
    fn wait_for_ping(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let client = self.client();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "redis-server on port {} exited with {status}",
                    self.port
                ));
            }
            if self.extra.first().is_some_and(|a| a == TLS_MARK)
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(500))
                .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con));
            match pong {
                Ok(reply) if reply == "PONG" => return Ok(()),
                // Alive, but wants a password.
                Err(e) if e.to_string().contains("NOAUTH") => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err(format!(
                        "redis-server on port {} did not answer PING within {START_TIMEOUT:?}",
                        self.port
                    ));
                }
                _ => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Polls `INFO replication` until the replica's link to its primary is up.
    fn wait_for_link_up(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut con = self.connection();
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut con)
                .unwrap_or_default();
            if info.contains("master_link_status:up") {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "replica on port {} not linked to its primary within {START_TIMEOUT:?}:\n{info}\n--- redis.log ---\n{}",
                    self.port,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// First extra argument of a server whose port speaks TLS (not passed on).
const TLS_MARK: &str = "<tls>";

/// `redis-server` in the foreground, persistence off, logging to `dir`.
fn spawn(port: u16, primary_port: Option<u16>, dir: &Path, extra: &[String]) -> Child {
    let mut command = Command::new("redis-server");
    let tls = extra.first().is_some_and(|a| a == TLS_MARK);
    if tls {
        command.args(["--port", "0", "--tls-port", &port.to_string()]);
    } else {
        command.args(["--port", &port.to_string()]);
    }
    command.args(extra.iter().filter(|a| *a != TLS_MARK));
    command
        .args(["--bind", "127.0.0.1", "--daemonize", "no"])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--repl-diskless-sync-delay",
            "0",
        ])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"));
    if let Some(primary) = primary_port {
        command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn redis-server (is it installed and on PATH?): {e}"))
}

/// A child process (the `shardgate` binary under test) killed and reaped when
/// dropped, so a failing test leaves no proxy running.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        // A panicked task of the proxy ends while the rest serves on, and
        // its clients may even have had their replies: only its log tells.
        let log = PROXY_LOGS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0.id());
        let Some((path, remove)) = log else {
            return;
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(PANIC_LOG)) {
            if !thread::panicking() {
                panic!("the proxy (pid {}) panicked: {line}", self.0.id());
            }
        } else if remove {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// What the proxy logs when a thread or task panics
/// (`shardgate::metrics::count_panics`).
pub const PANIC_LOG: &str = "a thread or task panicked";

/// The logs of the proxies the tests started, by pid, and whether to remove
/// the file once the process ended without a panic: dropping its
/// [`KillOnDrop`] fails the test if the log has [`PANIC_LOG`].
static PROXY_LOGS: std::sync::Mutex<std::collections::BTreeMap<u32, (PathBuf, bool)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Has dropping the [`KillOnDrop`] of process `pid` check its log at
/// `path` for a panic (a log the caller keeps: not removed).
pub fn check_log_for_panics(pid: u32, path: &Path) {
    watch_log(pid, path.to_owned(), false);
}

/// Registers the log of process `pid` in [`PROXY_LOGS`].
fn watch_log(pid: u32, path: PathBuf, remove: bool) {
    PROXY_LOGS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid, (path, remove));
}

/// A new file for the log (stderr) of a proxy about to start, in a
/// directory of this test process, and its path: hand the path to
/// [`watch_log`] once the proxy started (removed when it ends clean).
fn proxy_log() -> (std::fs::File, PathBuf) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!("shardgate-test-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("test log directory");
    let path = dir.join(format!(
        "proxy-{}.log",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::File::create(&path).expect("proxy log");
    (file, path)
}

/// The runtime of a proxy a test runs in its own process (`app::start`):
/// its threads are named `sg-inproc-<n>-...`, and a panic on one of them
/// (a task of the proxy that panicked while the proxy served on) fails the
/// test when the runtime is dropped, as [`KillOnDrop`] does for a proxy
/// process. Derefs to the tokio runtime.
pub struct ProxyRuntime {
    rt: Option<tokio::runtime::Runtime>,
    prefix: String,
}

/// Panics on threads of [`ProxyRuntime`]s: (thread name, what and where).
static INPROC_PANICS: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

impl ProxyRuntime {
    /// A multi-thread runtime of `workers` threads.
    pub fn new(workers: usize) -> ProxyRuntime {
        static HOOK: std::sync::Once = std::sync::Once::new();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if let Some(name) = thread::current().name()
                    && name.starts_with("sg-inproc-")
                {
                    INPROC_PANICS
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((name.to_owned(), info.to_string()));
                }
                previous(info);
            }));
        });
        let prefix = format!("sg-inproc-{}-", NEXT.fetch_add(1, Ordering::Relaxed));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(format!("{prefix}rt"))
            .enable_all()
            .build()
            .expect("runtime");
        ProxyRuntime {
            rt: Some(rt),
            prefix,
        }
    }

    /// The panics on this runtime's threads so far.
    pub fn panics(&self) -> Vec<String> {
        INPROC_PANICS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(name, _)| name.starts_with(&self.prefix))
            .map(|(_, what)| what.clone())
            .collect()
    }
}

impl std::ops::Deref for ProxyRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("runtime")
    }
}

impl Drop for ProxyRuntime {
    fn drop(&mut self) {
        // Tasks still running end here (a panic while they end counts).
        drop(self.rt.take());
        let panics = self.panics();
        if !panics.is_empty() && !thread::panicking() {
            panic!("the in-process proxy panicked: {}", panics.join("; "));
        }
    }
}

/// Writes a map of one region `us` with one shard per primary (`s0`, `s1`,
/// ...) into `dir`; returns its path.
pub fn write_map(dir: &TempDir, primaries: &[&RedisServer]) -> PathBuf {
    let mut yaml = String::from("regions:\n  - name: us\nshards:\n");
    for (i, p) in primaries.iter().enumerate() {
        yaml.push_str(&format!(
            "  - name: s{i}\n    region: us\n    primary: {}\n",
            p.addr()
        ));
    }
    let path = dir.path().join("map.yaml");
    std::fs::write(&path, yaml).expect("write map");
    path
}

/// Waits until something listens on 127.0.0.1:`port` (10 s at most).
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` has a socket listening on 127.0.0.1:`port` (its
/// inode in `/proc/net/tcp` among the process' descriptors).
pub fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let Some(inode) = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A"))
            .then(|| f.get(9).map(|s| (*s).to_owned()))
            .flatten()
    }) else {
        return false;
    };
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == want))
    })
}

/// Starts the `shardgate` binary (`bin`: `env!("CARGO_BIN_EXE_shardgate")`)
/// with `serve --map MAP --listen 127.0.0.1:PORT` and `extra` arguments, and
/// waits until it listens. Returns the process (killed on drop) and the port.
pub fn spawn_proxy(bin: &str, map: &Path, extra: &[&str]) -> (KillOnDrop, u16) {
    spawn_proxy_env(bin, map, extra, &[])
}

/// [`spawn_proxy`] with environment variables for the child.
pub fn spawn_proxy_env(
    bin: &str,
    map: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (KillOnDrop, u16) {
    // A free port may be taken by another test's process before the proxy
    // binds it: the proxy then exits while a plain connect finds the other
    // listener. So wait until the proxy itself listens (its socket in
    // /proc), and start again on another port if it exited.
    for _ in 0..3 {
        let port = free_port();
        let (log, log_path) = proxy_log();
        let child = Command::new(bin)
            .args(["serve", "--map"])
            .arg(map)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .envs(env.iter().copied())
            .stderr(log)
            .spawn()
            .expect("spawn shardgate");
        watch_log(child.id(), log_path, true);
        let mut child = KillOnDrop(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.0.try_wait().expect("child status").is_some() {
                break;
            }
            if listens_on(child.0.id(), port) {
                return (child, port);
            }
            assert!(Instant::now() < deadline, "port {port} never opened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("shardgate exited at start three times (a port it was given taken?)");
}

/// Sends `sig` (`STOP`, `CONT`, ...) to process `pid` with kill(1).
pub fn signal_pid(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -{sig} {pid} failed");
}

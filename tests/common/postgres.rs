//! Real PostgreSQL servers for the tests: `initdb` into a temporary
//! directory, `postgres` in the foreground on a free loopback port (trust
//! auth, fsync off), and physical replicas made with `pg_basebackup -R`.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, every
//! server program runs as the `postgres` system user (the directory is
//! handed to it first).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{RedisServer, TempDir, free_port};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Directory of initdb, postgres, pg_basebackup, psql.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .expect("PostgreSQL not found: install `postgresql` (scripts/setup.sh does)")
}

/// `(uid, gid)` of the `postgres` user when we are root, else `None`.
fn run_as() -> Option<(u32, u32)> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((
        id("-u").expect("running as root needs a `postgres` user"),
        id("-g")?,
    ))
}

fn command(program: &str) -> Command {
    let mut c = Command::new(bin_dir().join(program));
    if let Some((uid, gid)) = run_as() {
        c.uid(uid).gid(gid);
    }
    c.env_remove("PGDATA").env("LC_ALL", "C");
    c
}

fn give_away(path: &Path) {
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
    }
}

fn run(c: &mut Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL server child process; dropping it stops the server.
pub struct PgServer {
    /// Loopback port.
    pub port: u16,
    child: Option<Child>,
    data: PathBuf,
    _dir: TempDir,
}

impl PgServer {
    /// initdb + start a primary; waits until it accepts connections.
    pub fn start() -> PgServer {
        let dir = TempDir::new("pg");
        give_away(dir.path());
        let data = dir.path().join("data");
        run(
            command("initdb")
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data),
            "initdb",
        );
        Self::launch(dir, data)
    }

    /// A hot standby streaming from `primary` (pg_basebackup -R).
    pub fn start_replica_of(primary: &PgServer) -> PgServer {
        let dir = TempDir::new("pg-replica");
        give_away(dir.path());
        let data = dir.path().join("data");
        run(
            command("pg_basebackup")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-R",
                    "-X",
                    "stream",
                    "-p",
                ])
                .arg(primary.port.to_string())
                .arg("-D")
                .arg(&data),
            "pg_basebackup",
        );
        let server = Self::launch(dir, data);
        let deadline = Instant::now() + START_TIMEOUT;
        while server.query("SELECT status FROM pg_stat_wal_receiver") != "streaming" {
            assert!(Instant::now() < deadline, "replica never streamed");
            thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn launch(dir: TempDir, data: PathBuf) -> PgServer {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut child = spawn(&data, port, dir.path());
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    return PgServer {
                        port,
                        child: Some(child),
                        data,
                        _dir: dir,
                    };
                }
                Err(why) => {
                    last = why;
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("postgres did not start: {last}");
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn dsn(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL with psql and returns the unaligned, tuples-only output.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new(bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql])
            .output()
            .expect("psql");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Another session (psql) locks the row of string key `key` with
    /// `SELECT ... FOR UPDATE` (not the proxy's key lock) and keeps it until
    /// [`RowLock::release`]; returns once it holds the lock.
    pub fn hold_row_lock(&self, key: &str) -> RowLock<'_> {
        let child = Command::new(bin_dir().join("psql"))
            .args(["-X", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-p", &self.port.to_string()])
            .args([
                "-c",
                &format!(
                    "BEGIN; SELECT 1 FROM kv WHERE key = '{key}'::bytea FOR UPDATE; SELECT pg_sleep(600);"
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.query(SLEEPERS) == "0" {
            assert!(Instant::now() < deadline, "the lock holder never started");
            thread::sleep(Duration::from_millis(20));
        }
        RowLock {
            pg: self,
            child: Some(child),
        }
    }

    /// Stops the server (fast shutdown, then kill) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        let mut child = spawn(&self.data, self.port, self._dir.path());
        wait_ready(&mut child, self.port).expect("postgres restart");
        self.child = Some(child);
    }
}

fn spawn(data: &Path, port: u16, socket_dir: &Path) -> Child {
    command("postgres")
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", socket_dir.display()))
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=300"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn postgres")
}

fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("postgres exited with {status}"));
        }
        let ok = Command::new(bin_dir().join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("not ready in time".to_owned());
        }
        thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every write command postgres shards implement (`K` is the key), for
/// tests that run each of them (`tests/pg_race.rs`, `tests/pg_multi.rs`).
/// Values differ between commands so that a final state tells who wrote
/// last.
pub const WRITES: &[&str] = &[
    "SET K s",
    "SET K s2 NX",
    "SET K s3 XX",
    "SET K s4 GET",
    "SET K s5 EX 1000",
    "SET K s6 KEEPTTL",
    "SETNX K n",
    "SETEX K 1000 e",
    "GETSET K g",
    "GETDEL K",
    "GETEX K EX 1000",
    "GETEX K PERSIST",
    "APPEND K a",
    "INCR K",
    "DECRBY K 3",
    "INCRBYFLOAT K 1.5",
    "SETRANGE K 1 r",
    "MSET K m",
    "MSETNX K x",
    "DEL K",
    "UNLINK K",
    "EXPIRE K 1000",
    "PEXPIREAT K 1",
    "PERSIST K",
    "HSET K f h",
    "HSETNX K f2 n",
    "HDEL K f",
    "HINCRBY K f 2",
    "HINCRBYFLOAT K f 0.5",
];

/// Sessions asleep in `pg_sleep` (the lock holders of [`PgServer::hold_row_lock`]).
const SLEEPERS: &str = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'";

/// A row lock held by another session ([`PgServer::hold_row_lock`]);
/// released on [`RowLock::release`] or drop.
pub struct RowLock<'a> {
    pg: &'a PgServer,
    child: Option<Child>,
}

impl RowLock<'_> {
    /// Ends the holding session (its transaction rolls back) and reaps it.
    pub fn release(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.pg.query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'PgSleep'",
            );
            let _ = child.wait();
        }
    }
}

impl Drop for RowLock<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// One shard of a test map.
pub enum Shard<'a> {
    Redis(&'a RedisServer),
    Pg(&'a PgServer),
}

/// A map of Redis and postgres `shards` (region `us`, 1024 slots).
/// Timeouts are generous: on a loaded 2-core machine a postgres pool waited
/// more than the default 1 s `connect_timeout_ms` for a connection (`pool
/// timed out`), which is not what these tests check.
pub fn mixed_map(shards: &[(&str, Shard<'_>)]) -> String {
    let mut y = String::from(
        "slots: 1024\nregions:\n  - name: us\noptions:\n  command_timeout_ms: 10000\n  connect_timeout_ms: 5000\n  pg_pool_size: 8\nshards:\n",
    );
    for (name, s) in shards {
        match s {
            Shard::Redis(r) => y.push_str(&format!(
                "  - name: {name}\n    region: us\n    primary: {}\n",
                r.addr()
            )),
            Shard::Pg(p) => y.push_str(&format!(
                "  - name: {name}\n    region: us\n    kind: postgres\n    primary: {}\n",
                p.dsn()
            )),
        }
    }
    y
}

/// Keys of the `kv` table of a postgres shard (live ones).
pub fn live_keys(pg: &PgServer) -> u64 {
    pg.query("SELECT count(*) FROM kv WHERE expires_at IS NULL OR expires_at > sg_now_ms()")
        .parse()
        .unwrap()
}

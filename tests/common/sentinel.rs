//! `redis-sentinel` processes on free loopback ports, monitoring one master
//! with short timeouts (down after 1 s, failover timeout 5 s), so that a
//! killed primary is replaced within a few seconds.

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{TempDir, free_port};

/// How long a sentinel may take to start and to learn its group.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A `redis-sentinel` child process; dropping it kills the sentinel.
pub struct SentinelServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl SentinelServer {
    /// Starts a sentinel monitoring `master` at 127.0.0.1:`primary_port`
    /// with `quorum`, and waits until it answers for the master.
    pub fn start(master: &str, primary_port: u16, quorum: usize) -> SentinelServer {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = TempDir::new("sentinel");
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                     sentinel resolve-hostnames no\n\
                     sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}\n\
                     sentinel down-after-milliseconds {master} 1000\n\
                     sentinel failover-timeout {master} 5000\n\
                     sentinel parallel-syncs {master} 1\n",
                    dir = dir.path().display()
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn redis-sentinel (is it installed?): {e}"));
            let mut s = SentinelServer {
                port,
                child: Some(child),
                dir,
            };
            match s.wait_ready(master) {
                Ok(()) => return s,
                Err(why) => {
                    last = format!("{why}\n--- sentinel.log ---\n{}", s.log());
                    s.kill();
                }
            }
        }
        panic!("redis-sentinel did not start: {last}");
    }

    /// `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A connection to the sentinel.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(format!("redis://{}/", self.addr()))
            .expect("client")
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to sentinel {}: {e}", self.addr()))
    }

    /// `SENTINEL MASTER name` as field -> value.
    pub fn master_info(&self, master: &str) -> std::collections::HashMap<String, String> {
        let mut con = self.connection();
        let flat: Vec<String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(master)
            .query(&mut con)
            .unwrap_or_default();
        flat.chunks(2)
            .filter_map(|p| match p {
                [k, v] => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    /// Waits until the sentinel knows `replicas` replicas and
    /// `other_sentinels` other sentinels of `master` (a failover needs both).
    pub fn wait_for_group(&self, master: &str, replicas: usize, other_sentinels: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let info = self.master_info(master);
            let n = |k: &str| {
                info.get(k)
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0)
            };
            if n("num-slaves") >= replicas && n("num-other-sentinels") >= other_sentinels {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sentinel {} never saw {replicas} replica(s) and {other_sentinels} other sentinel(s): {info:?}\n{}",
                self.addr(),
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The sentinel's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }

    /// Kills the sentinel.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn wait_ready(&mut self, master: &str) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("redis-sentinel exited with {status}"));
            }
            let answer = redis::Client::open(format!("redis://{}/", self.addr()))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                .and_then(|mut con| {
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(master)
                        .query::<Vec<String>>(&mut con)
                });
            match answer {
                Ok(a) if a.len() == 2 => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err(format!("no answer for {master} within {READY_TIMEOUT:?}"));
                }
                _ => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        self.kill();
    }
}

//! A real single-node `etcd` for the fleet tests (`tests/fleet.rs`): free
//! loopback client and peer ports, its own data directory, killed on drop.
//! [`Etcd::stop`] and [`Etcd::restart`] keep the ports and the data (the
//! members' leases and the fleet state survive), for an etcd outage.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{TempDir, free_port};

/// How long etcd may take to answer `/health` (a loaded machine fsyncs
/// slowly; etcd's first election takes about a second).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// An `etcd` child process; dropping it kills the server and removes its
/// data directory.
pub struct Etcd {
    /// Client port: `http://127.0.0.1:{client_port}`.
    pub client_port: u16,
    peer_port: u16,
    /// Member name and the `--initial-cluster` of its cluster.
    name: String,
    initial_cluster: String,
    child: Option<Child>,
    dir: TempDir,
}

impl Etcd {
    /// Starts etcd and waits until it reports itself healthy; retries on
    /// other ports if one was taken between `free_port` and etcd's bind.
    pub fn start() -> Etcd {
        let mut last_failure = String::new();
        for _ in 0..3 {
            let peer_port = free_port();
            let mut etcd = Etcd {
                client_port: free_port(),
                peer_port,
                name: "n".to_owned(),
                initial_cluster: format!("n=http://127.0.0.1:{peer_port}"),
                child: None,
                dir: TempDir::new("etcd"),
            };
            etcd.spawn();
            match etcd.wait_healthy() {
                Ok(()) => return etcd,
                Err(why) => {
                    last_failure = format!("{why}\n--- etcd.log ---\n{}", etcd.log());
                    etcd.stop();
                }
            }
        }
        panic!("etcd did not start: {last_failure}");
    }

    /// A cluster of `n` members (quorum `n / 2 + 1`), each healthy.
    pub fn start_cluster(n: usize) -> Vec<Etcd> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("n{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, peer_port))| Etcd {
                client_port,
                peer_port,
                name: format!("n{i}"),
                initial_cluster: initial_cluster.clone(),
                child: None,
                dir: TempDir::new("etcd"),
            })
            .collect();
        // All first: a member is healthy only once a quorum is up.
        for m in &mut members {
            m.spawn();
        }
        for m in &mut members {
            if let Err(why) = m.wait_healthy() {
                panic!(
                    "etcd member {} did not start: {why}
{}",
                    m.name,
                    m.log()
                );
            }
        }
        members
    }

    /// The client URLs of `members`, comma-separated, for `--etcd`.
    pub fn urls(members: &[Etcd]) -> String {
        members.iter().map(Etcd::url).collect::<Vec<_>>().join(",")
    }

    /// `http://127.0.0.1:PORT`, for `shardgate serve --etcd`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (SIGKILL: an outage, not a shutdown) and reaps it; ports
    /// and data directory stay for [`Etcd::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `sig` (`STOP`, `CONT`) to the running etcd: frozen, it keeps
    /// its connections but answers nothing, and its leases' clocks run on.
    pub fn signal(&self, sig: &str) {
        super::signal_pid(self.child.as_ref().expect("etcd runs").id(), sig);
    }

    /// Starts etcd again on the same ports and data (stopping it first if
    /// it runs) and waits until it is healthy.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.spawn();
            match self.wait_healthy() {
                Ok(()) => return,
                // The killed process' sockets may linger for a moment.
                Err(_) if Instant::now() < deadline => {
                    self.stop();
                    thread::sleep(Duration::from_millis(100));
                }
                Err(why) => panic!("etcd did not restart: {why}\n{}", self.log()),
            }
        }
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("spawn etcd (is etcd-server installed? scripts/setup.sh): {e}")
            });
        self.child = Some(child);
    }

    /// Polls `GET /health` until `{"health":"true"}`, the process exits, or
    /// the timeout passes.
    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("etcd exited with {status}"));
            }
            if health(self.client_port).is_some_and(|body| body.contains(r#""health":"true""#)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "etcd on port {} not healthy within {START_TIMEOUT:?}",
                    self.client_port
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The body of `GET /health` on the client port, if it answers.
fn health(port: u16) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

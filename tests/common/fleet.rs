//! One `shardgate serve --etcd` process of a fleet, for the fleet tests
//! (`tests/fleet.rs`, `tests/fleet_etcd.rs`, `tests/fleet_pg.rs`), and the
//! fixture of the first two: three members over Redis shards.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::etcd::Etcd;
use super::history::connect;
use super::rebalance::{ADMIN_PW, Admin, BIN, map_yaml, table_of, write};
use super::{KillOnDrop, RedisServer, TempDir, free_port};

/// Generous bound for anything the tests wait for (a loaded 2-core box).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// One `shardgate serve --etcd` process of the fleet.
pub struct Member {
    pub id: String,
    pub child: Option<KillOnDrop>,
    pub port: u16,
    pub admin_port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Member {
    /// Starts a member of `cluster` (seeding its map from `seed` if given)
    /// and waits until it serves keys.
    pub fn start(
        dir: &Path,
        etcd: &[Etcd],
        cluster: &str,
        id: &str,
        seed: Option<&Path>,
        ttl_secs: u64,
        extra: &[&str],
    ) -> Member {
        // A free port may be taken by another test's process before the
        // member binds it: the member then exits. Wait until the member
        // itself listens, and start it again on other ports if it exited.
        for _ in 0..3 {
            let (port, admin_port, metrics_port) = (free_port(), free_port(), free_port());
            let log_path = dir.join(format!("{id}.log"));
            let log = std::fs::File::create(&log_path).expect("member log");
            let mut cmd = Command::new(BIN);
            cmd.arg("serve");
            if let Some(map) = seed {
                cmd.arg("--map").arg(map);
            }
            let child = cmd
                .args([
                    "--etcd",
                    &Etcd::urls(etcd),
                    "--cluster",
                    cluster,
                    "--proxy-id",
                    id,
                ])
                .args(["--lease-ttl-secs", &ttl_secs.to_string()])
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
                .args(["--admin-password-env", "SG_TEST_ADMIN_PW"])
                .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
                .args(extra)
                .env("SG_TEST_ADMIN_PW", ADMIN_PW)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn shardgate");
            let mut m = Member {
                id: id.to_owned(),
                child: Some(KillOnDrop(child)),
                port,
                admin_port,
                metrics_port,
                log: log_path,
            };
            let pid = m.child.as_ref().map_or(0, |c| c.0.id());
            super::check_log_for_panics(pid, &m.log);
            let deadline = Instant::now() + PATIENCE;
            loop {
                let exited = m
                    .child
                    .as_mut()
                    .is_some_and(|c| c.0.try_wait().ok().flatten().is_some());
                if exited {
                    break;
                }
                if super::listens_on(pid, m.port) && super::listens_on(pid, m.admin_port) {
                    m.wait_serving();
                    return m;
                }
                assert!(
                    Instant::now() < deadline,
                    "{id} never listened\n{}",
                    m.log_text()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("member {id} exited at start three times (a port it was given taken?)");
    }

    /// Polls a write until the member routes keys (it holds a lease).
    pub fn wait_serving(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let r: redis::RedisResult<()> = connect(self.port).and_then(|mut c| {
                redis::cmd("SET")
                    .arg(format!("probe:{}", self.id))
                    .arg(1)
                    .query(&mut c)
            });
            match r {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("{} never served keys: {e}\n{}", self.id, self.log_text())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn admin(&self) -> Admin {
        let mut a = Admin::connect(self.admin_port);
        assert_eq!(a.text(&[b"AUTH", ADMIN_PW.as_bytes()]), "OK");
        a
    }

    /// The member's log, without the admin logins of the tests' polling.
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| !l.contains("admin login"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// A gauge or counter of `/metrics` (the first series of that name).
    pub fn metric(&self, name: &str) -> f64 {
        let text = super::rebalance::ureq_get(self.metrics_port);
        text.lines()
            .find_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let bare = series.split('{').next()?;
                (bare == name).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// The sum of every series of a counter of `/metrics` (all labels).
    pub fn metric_sum(&self, name: &str) -> f64 {
        let text = super::rebalance::ureq_get(self.metrics_port);
        text.lines()
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let bare = series.split('{').next()?;
                (bare == name).then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }

    pub fn is_leader(&self) -> bool {
        self.metric("shardgate_fleet_mover_leader") == 1.0
    }

    /// `map_epoch` of `INFO proxy`.
    pub fn map_epoch(&self) -> u64 {
        let mut c = connect(self.port).expect("connect");
        let info: String = redis::cmd("INFO").arg("proxy").query(&mut c).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("map_epoch:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no map_epoch in INFO proxy: {info}"))
    }

    /// kill(1) with `sig` (STOP, CONT).
    pub fn signal(&self, sig: &str) {
        super::signal_pid(self.child.as_ref().expect("member runs").id(), sig);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.child.take();
    }

    pub fn alive(&self) -> bool {
        self.child.is_some()
    }
}

/// Every member's log, for a failure message.
pub fn logs(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("--- {} ---\n{}", m.id, m.log_text()))
        .collect()
}

/// The one live member holding the mover's election.
pub fn leader(members: &[Member]) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let leaders: Vec<usize> = (0..members.len())
            .filter(|&i| members[i].alive() && members[i].is_leader())
            .collect();
        if let [one] = leaders[..] {
            return one;
        }
        assert!(
            Instant::now() < deadline,
            "no single mover leader: {leaders:?}\n{}",
            logs(members)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Submits a rebalance to `map` through member `via`, its mover limited
/// to `throttle` keys/s from the first batch (0: no limit); returns the
/// fleet revision that recorded it.
pub fn rebalance(members: &[Member], via: usize, map: &Path, throttle: u64) -> i64 {
    let text = std::fs::read_to_string(map).unwrap();
    let throttle = throttle.to_string();
    let reply = members[via].admin().text(&[
        b"REBALANCE",
        text.as_bytes(),
        b"THROTTLE",
        throttle.as_bytes(),
    ]);
    assert!(reply.starts_with("OK rebalance started"), "{reply}");
    reply
        .rsplit_once("fleet revision ")
        .and_then(|(_, r)| r.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no fleet revision in {reply:?}"))
}

/// The PROGRESS of the mover's member that runs (or ran) the rebalance
/// recorded at `revision`, once it is done. Panics if it failed.
pub fn wait_done(members: &[Member], revision: i64) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        for m in members.iter().filter(|m| m.alive()) {
            let p = m.admin().progress();
            // A mover reports the epoch before the state it started
            // from: at least the revision before `revision`.
            let ours = p
                .get("from_epoch")
                .and_then(|e| e.parse::<i64>().ok())
                .is_some_and(|e| e + 1 >= revision);
            match p["state"].as_str() {
                "done" if ours => return p,
                "failed" if ours => {
                    panic!("rebalance failed on {}: {p:?}\n{}", m.id, logs(members))
                }
                _ => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "the rebalance of revision {revision} did not finish\n{}",
            logs(members)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `filler:0` .. `filler:{n-1}` (value `f{i}`) through `port`.
pub fn fill(port: u16, n: usize) {
    let mut c = connect(port).unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut cmd = redis::cmd("MSET");
        for i in chunk {
            cmd.arg(format!("filler:{i}")).arg(format!("f{i}"));
        }
        let _: () = cmd.query(&mut c).unwrap();
    }
}

/// Keys written before the clients start, so the mover has work.
pub const FILLER: usize = 6_000;
/// Clients over the three proxies.
pub const CLIENTS: usize = 18;

/// The fixture every test starts from: etcd, three Redis shards, three
/// members over the first two shards, filler keys written.
/// (Fields drop in order: the members first, the directory last.)
pub struct Fleet {
    pub members: Vec<Member>,
    pub servers: Vec<RedisServer>,
    /// One member, or three for the quorum test.
    pub etcd: Vec<Etcd>,
    pub dir: TempDir,
}

pub const NAMES: [&str; 3] = ["s0", "s1", "s2"];

impl Fleet {
    /// `ttl_secs`: each member's lease TTL.
    pub fn start(label: &str, ttl_secs: [u64; 3]) -> Fleet {
        Fleet::start_on(label, ttl_secs, vec![Etcd::start()])
    }

    /// The same over the etcd members `etcd`.
    pub fn start_on(label: &str, ttl_secs: [u64; 3], etcd: Vec<Etcd>) -> Fleet {
        Fleet::start_with(label, ttl_secs, etcd, &[])
    }

    /// The same with more flags for every member.
    pub fn start_with(label: &str, ttl_secs: [u64; 3], etcd: Vec<Etcd>, extra: &[&str]) -> Fleet {
        let dir = TempDir::new(label);
        let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
        let mut f = Fleet {
            dir,
            etcd,
            servers,
            members: Vec::new(),
        };
        let m1 = f.map("m1.yaml", &[0, 1]);
        for (i, ttl) in ttl_secs.into_iter().enumerate() {
            // The first seeds the cluster's map; the others read it.
            let seed = (i == 0).then_some(m1.as_path());
            let id = format!("p{i}");
            let m = Member::start(f.dir.path(), &f.etcd, label, &id, seed, ttl, extra);
            f.members.push(m);
        }
        fill_filler(f.members[0].port);
        f
    }

    /// Writes a map over the shards `idx`.
    pub fn map(&self, file: &str, idx: &[usize]) -> PathBuf {
        let shards: Vec<(&str, &RedisServer)> =
            idx.iter().map(|&i| (NAMES[i], &self.servers[i])).collect();
        write(self.dir.path(), file, &map_yaml(&shards))
    }

    pub fn shards(&self, idx: &[usize]) -> Vec<(&str, &RedisServer)> {
        idx.iter().map(|&i| (NAMES[i], &self.servers[i])).collect()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.port).collect()
    }

    pub fn logs(&self) -> String {
        logs(&self.members)
    }

    /// The one live member holding the mover's election.
    pub fn leader(&self) -> usize {
        leader(&self.members)
    }

    /// Submits a rebalance to `map` through member `via`, throttled to
    /// `throttle` keys/s from its first batch (0: no limit); returns the
    /// fleet revision that recorded it.
    pub fn rebalance(&self, via: usize, map: &Path, throttle: u64) -> i64 {
        rebalance(&self.members, via, map, throttle)
    }

    /// The PROGRESS of the mover's member that runs (or ran) the rebalance
    /// recorded at `revision`, once it is done. Panics if it failed.
    pub fn wait_done(&self, revision: i64) -> HashMap<String, String> {
        wait_done(&self.members, revision)
    }

    /// Waits until every live member publishes the same map epoch, at
    /// least `min`; returns it.
    pub fn same_epoch(&self, min: u64) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let epochs: Vec<u64> = self
                .members
                .iter()
                .filter(|m| m.alive())
                .map(|m| m.map_epoch())
                .collect();
            if epochs.iter().all(|e| *e == epochs[0] && *e >= min) {
                return epochs[0];
            }
            assert!(
                Instant::now() < deadline,
                "members disagree on the map epoch: {epochs:?} (want >= {min})\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the mover's PROGRESS satisfies `cond` (while moving).
    pub fn wait_progress(
        &self,
        mover: usize,
        what: &str,
        cond: impl Fn(&HashMap<String, String>) -> bool,
    ) -> HashMap<String, String> {
        let deadline = Instant::now() + PATIENCE;
        let mut admin = self.members[mover].admin();
        loop {
            let p = admin.progress();
            if cond(&p) {
                return p;
            }
            assert_ne!(p["state"], "done", "the move ended before {what}: {p:?}");
            assert_ne!(p["state"], "failed", "{p:?}\n{}", self.logs());
            assert!(
                Instant::now() < deadline,
                "never {what}: {p:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A number field of PROGRESS.
pub fn num(p: &HashMap<String, String>, field: &str) -> u64 {
    // (Missing before the mover started: PROGRESS says `state none`.)
    p.get(field).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Writes the [`FILLER`] keys through `port`.
pub fn fill_filler(port: u16) {
    fill(port, FILLER);
}

/// The names of the [`FILLER`] keys.
pub fn filler() -> HashSet<String> {
    (0..FILLER).map(|i| format!("filler:{i}")).collect()
}

/// Filler keys the first step of the move `from` -> `to` carries: the
/// mover takes a window of (class, slot) pairs, in slot order, of up to
/// 4096 pairs from each of up to four source shards at once (the default
/// `--rebalance-sources`).
pub fn first_window_keys(from: &Path, to: &Path) -> usize {
    let (a, b) = (table_of(from), table_of(to));
    let mut per_source: Vec<(u16, usize)> = Vec::new();
    let mut first: HashSet<(u32, u32)> = HashSet::new();
    for m in a.moves_to(&b).unwrap() {
        let at = match per_source.iter().position(|(s, _)| *s == m.from.0) {
            Some(at) => at,
            None if per_source.len() < 4 => {
                per_source.push((m.from.0, 0));
                per_source.len() - 1
            }
            None => continue,
        };
        if per_source[at].1 < 4096 {
            per_source[at].1 += 1;
            first.insert((m.class, m.slot.0));
        }
    }
    (0..FILLER)
        .map(|i| format!("filler:{i}"))
        .filter(|k| first.contains(&(a.class_of(k.as_bytes()), a.slot_of(k.as_bytes()).0)))
        .count()
}

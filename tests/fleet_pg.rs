//! Moves to and from PostgreSQL shards in a fleet: three proxies on a real
//! etcd keep serving clients while slots move Redis -> PostgreSQL and
//! PostgreSQL -> Redis, and while the mover's proxy is SIGKILLed mid-move.
//! Such keys are copied with commands, so every copier (a mover, or a
//! command of any proxy's client on a key of a migrating slot) takes the
//! key's claim in etcd first. The history model of `common::history`
//! checks that nothing acknowledged was lost, resurrected or rolled back;
//! values (binary), expiry times and a hash of 2,500 fields arrive exact.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::etcd::Etcd;
use common::fleet::{self, Member, PATIENCE};
use common::history::{Load, check, check_model, connect, stop_clean};
use common::postgres::{PgServer, Shard, live_keys, mixed_map};
use common::rebalance::{keys_on, write};
use common::{RedisServer, TempDir};

const FILLER: usize = 3_000;
const CLIENTS: usize = 12;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn bin(i: usize) -> Vec<u8> {
    (0..=255u8).cycle().skip(i).take(200 + i).collect()
}

/// Filler keys, binary strings with millisecond expiry times, and a hash of
/// 2,500 fields, written through `port`; returns the expiry base.
fn seed(port: u16) -> i64 {
    fleet::fill(port, FILLER);
    let mut c = connect(port).unwrap();
    let base = now_ms() + 600_000;
    for i in 0..20 {
        let _: () = redis::cmd("SET")
            .arg(format!("bin:{i}"))
            .arg(bin(i))
            .arg("PXAT")
            .arg(base + i as i64 * 7)
            .query(&mut c)
            .unwrap();
    }
    let mut cmd = redis::cmd("HSET");
    cmd.arg("bighash");
    for f in 0..2500 {
        cmd.arg(format!("field{f}")).arg(format!("value{f}"));
    }
    let _: i64 = cmd.query(&mut c).unwrap();
    base
}

/// The seeded keys, byte for byte and to the millisecond, through `port`.
fn check_seeded(port: u16, base: i64, when: &str) {
    let mut c = connect(port).unwrap();
    for i in 0..20 {
        let key = format!("bin:{i}");
        let v: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut c).unwrap();
        assert_eq!(v, bin(i), "{when}: value of {key}");
        let at: i64 = redis::cmd("PEXPIRETIME").arg(&key).query(&mut c).unwrap();
        // MIGRATE (Redis -> Redis: some of s1's slots go to s0) carries a
        // TTL relative to the source's clock, so the expiry time can grow
        // by the milliseconds the move took; copies keep it exact
        // (`exact_on_pg`).
        let late = at - (base + i as i64 * 7);
        assert!(
            (0..1000).contains(&late),
            "{when}: expiry of {key} off by {late} ms"
        );
    }
    let n: i64 = redis::cmd("HLEN").arg("bighash").query(&mut c).unwrap();
    assert_eq!(n, 2500, "{when}: fields of bighash");
    for i in (0..FILLER).step_by(97) {
        let v: String = redis::cmd("GET")
            .arg(format!("filler:{i}"))
            .query(&mut c)
            .unwrap();
        assert_eq!(v, format!("f{i}"), "{when}: filler:{i}");
    }
}

/// Seeded keys on the postgres shard whose expiry time is exactly the one
/// set (they arrived by copies); returns how many are there.
fn exact_on_pg(pg: &PgServer, base: i64) -> usize {
    let rows = pg.query(
        "SELECT string_agg(convert_from(key, 'UTF8') || '=' || expires_at::text, ' ') FROM kv WHERE convert_from(key, 'UTF8') LIKE 'bin:%'",
    );
    let mut n = 0;
    for kv in rows.split_whitespace() {
        let (key, at) = kv.split_once('=').unwrap();
        let i: i64 = key.trim_start_matches("bin:").parse().unwrap();
        assert_eq!(
            at.parse::<i64>().unwrap(),
            base + i * 7,
            "expiry of {key} on p0"
        );
        n += 1;
    }
    n
}

/// etcd, two Redis shards, a postgres shard and three members serving the
/// Redis shards.
struct PgFleet {
    members: Vec<Member>,
    servers: Vec<RedisServer>,
    pg: PgServer,
    _etcd: Vec<Etcd>,
    dir: TempDir,
}

impl PgFleet {
    fn start(label: &str) -> PgFleet {
        let dir = TempDir::new(label);
        let etcd = vec![Etcd::start()];
        let servers: Vec<RedisServer> = (0..2).map(|_| RedisServer::start()).collect();
        let pg = PgServer::start();
        let mut f = PgFleet {
            members: Vec::new(),
            servers,
            pg,
            _etcd: etcd,
            dir,
        };
        let m1 = f.redis_map();
        for i in 0..3 {
            let seed = (i == 0).then_some(m1.as_path());
            let id = format!("p{i}");
            let m = Member::start(f.dir.path(), &f._etcd, label, &id, seed, 6, &[]);
            f.members.push(m);
        }
        f
    }

    /// s0 and s1, both Redis.
    fn redis_map(&self) -> PathBuf {
        let y = mixed_map(&[
            ("s0", Shard::Redis(&self.servers[0])),
            ("s1", Shard::Redis(&self.servers[1])),
        ]);
        write(self.dir.path(), "redis.yaml", &y)
    }

    /// s0 and the postgres shard p0 in place of s1.
    fn pg_map(&self) -> PathBuf {
        let y = mixed_map(&[
            ("s0", Shard::Redis(&self.servers[0])),
            ("p0", Shard::Pg(&self.pg)),
        ]);
        write(self.dir.path(), "pg.yaml", &y)
    }

    fn ports(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.port).collect()
    }

    /// Waits until the rebalance of `revision` is done and verified.
    fn wait_done(&self, revision: i64) {
        let p = fleet::wait_done(&self.members, revision);
        assert_eq!(p["verify"], "ok", "{p:?}");
        assert_eq!(p["verify_left_behind"], "0", "{p:?}");
    }

    /// Claims of keys the live members took in etcd.
    fn claims(&self) -> f64 {
        self.members
            .iter()
            .filter(|m| m.alive())
            .map(|m| m.metric_sum("shardgate_fleet_key_claims_total"))
            .sum()
    }
}

/// Redis -> PostgreSQL, then PostgreSQL -> Redis, each submitted through a
/// different member, with clients on all three throughout.
#[test]
fn three_proxies_move_a_keyspace_into_postgres_and_back() {
    let fleet = PgFleet::start("fleet-pg-a");
    let base = seed(fleet.members[0].port);
    let load = Load::start(&fleet.ports(), CLIENTS);
    std::thread::sleep(Duration::from_millis(500));

    // Redis -> PostgreSQL: s1's slots move to p0.
    let to_pg = fleet.pg_map();
    let rev = fleet::rebalance(&fleet.members, 1, &to_pg, 0);
    fleet.wait_done(rev);
    assert!(keys_on(&fleet.servers[1]).is_empty(), "s1 was drained");
    assert!(live_keys(&fleet.pg) > 1000, "p0 holds s1's share");
    // Copied with commands: expiry times exact to the millisecond.
    let on_pg = exact_on_pg(&fleet.pg, base);
    assert!(on_pg > 0, "some seeded keys moved to p0");
    for m in &fleet.members {
        check_seeded(m.port, base, &format!("{} after Redis -> PostgreSQL", m.id));
    }
    let claims = fleet.claims();
    assert!(claims > 1000.0, "every copied key was claimed ({claims})");

    // PostgreSQL -> Redis: p0's slots move back to s1.
    std::thread::sleep(Duration::from_millis(300));
    let back = fleet.redis_map();
    let rev = fleet::rebalance(&fleet.members, 2, &back, 0);
    fleet.wait_done(rev);
    assert_eq!(live_keys(&fleet.pg), 0, "p0 was drained");
    let (shared, model) = stop_clean(load, 1000);
    let mut fixed: HashSet<String> = (0..FILLER).map(|i| format!("filler:{i}")).collect();
    fixed.extend((0..3).map(|i| format!("probe:p{i}")));
    fixed.extend((0..20).map(|i| format!("bin:{i}")));
    fixed.insert("bighash".into());
    let shards = [("s0", &fleet.servers[0]), ("s1", &fleet.servers[1])];
    for m in &fleet.members {
        check_seeded(m.port, base, &format!("{} after PostgreSQL -> Redis", m.id));
        check(m.port, &shared, &model, &back, &shards, &fixed);
    }
}

/// The mover's proxy SIGKILLed in the middle of a move onto the postgres
/// shard: its claims go with its lease, another member takes the mover
/// over, and the move finishes with nothing lost.
#[test]
fn the_mover_killed_mid_move_into_postgres_is_replaced_and_nothing_is_lost() {
    let mut fleet = PgFleet::start("fleet-pg-b");
    let base = seed(fleet.members[0].port);
    let load = Load::start(&fleet.ports(), CLIENTS);
    let mover = fleet::leader(&fleet.members);
    let other = (mover + 1) % 3;
    let to_pg = fleet.pg_map();
    // Slow, so the kill lands mid-move.
    let rev = fleet::rebalance(&fleet.members, other, &to_pg, 300);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let p = fleet.members[mover].admin().progress();
        let moved: u64 = p
            .get("keys_moved")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if p["state"] == "moving" && moved >= 100 {
            break;
        }
        assert_ne!(p["state"], "done", "the move ended before the kill: {p:?}");
        assert!(Instant::now() < deadline, "never moved 100 keys: {p:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    fleet.members[mover].kill();

    let next = fleet::leader(&fleet.members);
    assert_ne!(next, mover);
    assert_eq!(
        fleet.members[other].admin().text(&[b"THROTTLE", b"0"]),
        "OK"
    );
    fleet.wait_done(rev);
    assert!(keys_on(&fleet.servers[1]).is_empty(), "s1 was drained");
    let (shared, model) = stop_clean(load, 500);
    for m in fleet.members.iter().filter(|m| m.alive()) {
        check_seeded(m.port, base, &format!("{} after the takeover", m.id));
        check_model(m.port, &shared, &model);
    }
}

//! Writes on a PostgreSQL shard are linearizable per key: two clients on two
//! lanes of their own (so two database connections) race every write command
//! against every other on one key, on a fresh key, an existing string (with
//! and without a TTL), an existing hash, and an expired string or hash. Each
//! outcome (both replies and the key's final type, value, fields and whether
//! it has a TTL, read straight from the tables) must be one that a serial
//! order of the two commands explains, and the serial outcomes come from a
//! real redis-server running both orders.
//!
//! Every combination runs `TRIALS` times, each on its own key, many at a
//! time: `PAIRS` pairs of client threads, each pair released by a barrier per
//! trial, one side staggered (see [`race`]). Starting states are written
//! straight into the tables, and the reaper is kept away (health checks every
//! 10 minutes), so expired rows are still there when the race runs.
//!
//! Before writes took the key lock (SET, MSET and DEL were bare statements),
//! one run found 62 of 31,320 outcomes that no serial order explains, for
//! example `SET k s` -> `+OK` and `INCR k` -> `:1` leaving `"1"`, or `SET` ->
//! `+OK` and `HSET` -> `:1` leaving a hash; and 5,241 strings that kept the
//! fields of the hash they replaced.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::RedisServer;
use common::postgres::PgServer;
use common::postgres::WRITES;
use common::resp::FrameConn;
use shardgate::router::placement::key_hash;
use sqlx::Row as _;

/// What the key holds before the race.
#[derive(Clone, Copy, Debug)]
enum Start {
    Fresh,
    String,
    StringWithTtl,
    Hash,
    /// A string row whose expiry has passed (not yet reaped).
    ExpiredString,
    /// A hash row and its fields, expired (not yet reaped).
    ExpiredHash,
}

const STARTS: &[Start] = &[
    Start::Fresh,
    Start::String,
    Start::StringWithTtl,
    Start::Hash,
    Start::ExpiredString,
    Start::ExpiredHash,
];

/// Trials per (pair of commands, start).
const TRIALS: usize = 12;
/// Pairs of racing clients working at the same time.
const PAIRS: usize = 6;
/// Connections of the endpoint (`pg_pool_size`): one per client, so every
/// client's command runs at once (each client has its own lane). The map
/// gives connections 5 s to open (`connect_timeout_ms`): on a loaded
/// machine a new postgres connection took more than the default 1 s once
/// in CI ("pool timed out"), an error reply, not an order no serial
/// execution explains.
const LANES: usize = 2 * PAIRS + 2;

/// A hash field and its value.
type Field = (Vec<u8>, Vec<u8>);

/// Both replies (in the order A, B) and the final state.
type Outcome = (String, String, String);

/// One pair of commands on one starting state.
struct Combo {
    a: &'static str,
    b: &'static str,
    start: Start,
}

fn args(template: &str, key: &str) -> Vec<String> {
    template
        .split(' ')
        .map(|t| {
            if t == "K" {
                key.to_owned()
            } else {
                t.to_owned()
            }
        })
        .collect()
}

fn text(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).into_owned()
}

/// The commands that give `key` its starting state on redis-server (an
/// expired key is a missing key there).
fn redis_setup(start: Start, key: &str) -> Vec<Vec<String>> {
    match start {
        Start::Fresh | Start::ExpiredString | Start::ExpiredHash => Vec::new(),
        Start::String => vec![args("SET K 10", key)],
        Start::StringWithTtl => vec![args("SET K 10 EX 1000", key)],
        Start::Hash => vec![args("HSET K f 1 g x", key)],
    }
}

/// A state in words: `none`, `string <value> ttl=<bool>`, or
/// `hash <f=v,...> ttl=<bool>`; a string row that still has hash fields
/// says so (`+fields ...`), which no Redis state matches.
fn describe(kind: &str, value: &[u8], fields: &[Field], ttl: bool) -> String {
    let mut sorted: Vec<String> = fields
        .iter()
        .map(|(f, v)| format!("{}={}", text(f), text(v)))
        .collect();
    sorted.sort();
    match kind {
        "string" if fields.is_empty() => format!("string {} ttl={ttl}", text(value)),
        "string" => format!(
            "string {} ttl={ttl} +fields {}",
            text(value),
            sorted.join(",")
        ),
        "hash" => format!("hash {} ttl={ttl}", sorted.join(",")),
        _ => "none".to_owned(),
    }
}

/// A state with its `+fields ...` suffix removed.
fn without_stray_fields(state: &str) -> String {
    match state.split_once(" +fields ") {
        Some((head, _)) => head.to_owned(),
        None => state.to_owned(),
    }
}

/// The two serial outcomes of `combo`, run on redis-server.
fn serial_outcomes(redis: &mut FrameConn, combo: &Combo) -> HashSet<Outcome> {
    let key = "race";
    let mut allowed = HashSet::new();
    for a_first in [true, false] {
        let mut cmds = vec![args("DEL K", key)];
        cmds.extend(redis_setup(combo.start, key));
        let setup = cmds.len();
        let (first, second) = if a_first {
            (combo.a, combo.b)
        } else {
            (combo.b, combo.a)
        };
        cmds.push(args(first, key));
        cmds.push(args(second, key));
        for read in ["TYPE K", "GET K", "HGETALL K", "PTTL K"] {
            cmds.push(args(read, key));
        }
        let refs: Vec<&[String]> = cmds.iter().map(Vec::as_slice).collect();
        let r = redis.pipeline(&refs);
        let (ra, rb) = if a_first {
            (&r[setup], &r[setup + 1])
        } else {
            (&r[setup + 1], &r[setup])
        };
        let kind = text(&r[setup + 2]);
        let kind = kind.trim_start_matches('+').trim_end();
        let value = match r[setup + 3].split(|b| *b == b'\n').nth(1) {
            Some(v) if kind == "string" => v.strip_suffix(b"\r").unwrap_or(v).to_vec(),
            _ => Vec::new(),
        };
        let fields: Vec<Field> = if kind == "hash" {
            let lines: Vec<&[u8]> = r[setup + 4].split(|b| *b == b'\n').collect();
            // *2N, then $len / bytes pairs: bytes are at lines 2, 4, 6 ...
            let items: Vec<Vec<u8>> = lines
                .iter()
                .skip(2)
                .step_by(2)
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
                .collect();
            items
                .chunks_exact(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect()
        } else {
            Vec::new()
        };
        let ttl = !text(&r[setup + 5]).starts_with(":-");
        allowed.insert((text(ra), text(rb), describe(kind, &value, &fields, ttl)));
    }
    allowed
}

/// A map with one postgres shard, `LANES` connections, and health checks (and so
/// the reaper) every 10 minutes: expired rows stay until the race ran.
fn write_map(dsn: &str) -> PathBuf {
    let yaml = format!(
        "regions:\n  - name: us\noptions:\n  health_check_interval_ms: 600000\n  command_timeout_ms: 20000\n  connect_timeout_ms: 5000\n  pg_pool_size: {LANES}\nshards:\n  - name: pgs\n    kind: postgres\n    region: us\n    primary: {dsn}\n"
    );
    let path = std::env::temp_dir().join(format!("shardgate-pgrace-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).expect("write map");
    path
}

/// Puts every key in its starting state, straight into the tables.
async fn pg_setup(pool: &sqlx::PgPool, keys: &[(String, Start)]) {
    let (mut k, mut slot, mut kind, mut value, mut exp) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut hk, mut hf, mut hv) = (vec![], vec![], vec![]);
    for (key, start) in keys {
        let (t, v, e): (i16, Option<&[u8]>, Option<i64>) = match start {
            Start::Fresh => continue,
            Start::String => (0, Some(b"10"), None),
            Start::StringWithTtl => (0, Some(b"10"), Some(i64::MAX / 2)),
            Start::ExpiredString => (0, Some(b"10"), Some(1)),
            Start::Hash => (1, None, None),
            Start::ExpiredHash => (1, None, Some(1)),
        };
        k.push(key.as_bytes().to_vec());
        slot.push(i32::try_from(key_hash(key.as_bytes()) % 16384).expect("slot"));
        kind.push(t);
        value.push(v.map(<[u8]>::to_vec));
        exp.push(e);
        if t == 1 {
            for (f, fv) in [("f", "1"), ("g", "x")] {
                hk.push(key.as_bytes().to_vec());
                hf.push(f.as_bytes().to_vec());
                hv.push(fv.as_bytes().to_vec());
            }
        }
    }
    sqlx::query(
        "INSERT INTO kv (key, slot, type, value, expires_at) \
         SELECT * FROM unnest($1::bytea[], $2::int[], $3::smallint[], $4::bytea[], $5::bigint[])",
    )
    .bind(&k)
    .bind(&slot)
    .bind(&kind)
    .bind(&value)
    .bind(&exp)
    .execute(pool)
    .await
    .expect("insert keys");
    sqlx::query(
        "INSERT INTO kv_hash (kd, field, value) \
         SELECT sha256(k), f, v FROM unnest($1::bytea[], $2::bytea[], $3::bytea[]) AS t(k, f, v)",
    )
    .bind(&hk)
    .bind(&hf)
    .bind(&hv)
    .execute(pool)
    .await
    .expect("insert fields");
}

/// Every key's final state, read from the tables (an expired row is none).
async fn pg_states(pool: &sqlx::PgPool) -> HashMap<String, String> {
    let mut fields: HashMap<Vec<u8>, Vec<Field>> = HashMap::new();
    for r in sqlx::query("SELECT k.key, h.field, h.value FROM kv_hash h JOIN kv k ON k.kd = h.kd")
        .fetch_all(pool)
        .await
        .expect("read fields")
    {
        fields
            .entry(r.get("key"))
            .or_default()
            .push((r.get("field"), r.get("value")));
    }
    let rows = sqlx::query("SELECT key, type, value, expires_at, sg_clock_ms() AS now FROM kv")
        .fetch_all(pool)
        .await
        .expect("read keys");
    let mut out = HashMap::new();
    for r in rows {
        let key: Vec<u8> = r.get("key");
        let expires_at: Option<i64> = r.get("expires_at");
        let now: i64 = r.get("now");
        if expires_at.is_some_and(|e| e <= now) {
            continue;
        }
        let kind = match r.get::<i16, _>("type") {
            0 => "string",
            1 => "hash",
            _ => "unknown",
        };
        let value: Option<Vec<u8>> = r.get("value");
        let f = fields.remove(&key).unwrap_or_default();
        out.insert(
            text(&key),
            describe(kind, &value.unwrap_or_default(), &f, expires_at.is_some()),
        );
    }
    out
}

/// Runs pair `p`'s share of `work` on its two connections: per trial, both
/// threads meet at a barrier and send their command. Started together, a
/// command that takes one statement would always beat one that takes five,
/// so one side (chosen per trial) starts late by a random fraction of the
/// other side's recent latency: its command lands anywhere inside the
/// other's transaction. Returns `(trial, side, reply)`.
fn race(
    p: usize,
    conns: (FrameConn, FrameConn),
    combos: &[Combo],
    work: &[(usize, String)],
) -> Vec<(usize, usize, String)> {
    let barrier = Barrier::new(2);
    // Recent command latency of each side, in microseconds.
    let latency = [AtomicU64::new(500), AtomicU64::new(500)];
    let (barrier, latency) = (&barrier, &latency);
    std::thread::scope(|s| {
        let sides: Vec<_> = [(0usize, conns.0), (1, conns.1)]
            .into_iter()
            .map(|(side, mut conn)| {
                s.spawn(move || {
                    let mut replies = Vec::new();
                    for (i, (c, key)) in work.iter().enumerate().skip(p).step_by(PAIRS) {
                        let combo = &combos[*c];
                        let cmd = args(if side == 0 { combo.a } else { combo.b }, key);
                        let h = key_hash(key.as_bytes());
                        let late = usize::from(h & 1 == 1);
                        barrier.wait();
                        if late == side {
                            let other = latency[1 - side].load(Ordering::Relaxed);
                            std::thread::sleep(Duration::from_micros((h >> 1) % (other + 1)));
                        }
                        let sent = Instant::now();
                        replies.push((i, side, text(&conn.pipeline(&[&cmd[..]])[0])));
                        let took = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let old = latency[side].load(Ordering::Relaxed);
                        latency[side].store((old * 7 + took) / 8, Ordering::Relaxed);
                    }
                    replies
                })
            })
            .collect();
        sides
            .into_iter()
            .flat_map(|t| t.join().expect("racing client"))
            .collect()
    })
}

/// Each pair's two connections (each client has its own lane).
fn connect_pairs(port: u16) -> Vec<(FrameConn, FrameConn)> {
    (0..PAIRS)
        .map(|_| (FrameConn::connect(port), FrameConn::connect(port)))
        .collect()
}

#[test]
fn every_write_pair_is_linearizable_per_key() {
    let started = Instant::now();
    let mut combos = Vec::new();
    for (i, a) in WRITES.iter().enumerate() {
        for b in &WRITES[i..] {
            for start in STARTS {
                combos.push(Combo {
                    a,
                    b,
                    start: *start,
                });
            }
        }
    }
    let redis = RedisServer::start();
    let mut model = FrameConn::connect(redis.port);
    let allowed: Vec<HashSet<Outcome>> = combos
        .iter()
        .map(|c| serial_outcomes(&mut model, c))
        .collect();

    let pg = PgServer::start();
    let map_path = write_map(&pg.dsn());
    let rt = common::ProxyRuntime::new(2);
    let running = rt
        .block_on(shardgate::app::start(shardgate::app::ServeConfig {
            map_path: map_path.clone(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            client: Default::default(),
            tls: None,
            admin: None,
            state_dir: None,
            rebalance_sources: 4,
            fleet: None,
            readiness: None,
            ready_share: 1.0,
        }))
        .expect("proxy starts");
    let pool = rt
        .block_on(sqlx::PgPool::connect(&pg.dsn()))
        .expect("test pool");

    // (combo, trial) -> key; spread over the pairs so that every pair gets a mix.
    let work: Vec<(usize, String)> = (0..TRIALS)
        .flat_map(|t| (0..combos.len()).map(move |c| (c, format!("{{pg:race}}c{c}t{t}"))))
        .collect();
    let starts: Vec<(String, Start)> = work
        .iter()
        .map(|(c, key)| (key.clone(), combos[*c].start))
        .collect();
    rt.block_on(pg_setup(&pool, &starts));

    let racing = Instant::now();
    let mut replies: HashMap<(usize, usize), String> = HashMap::new();
    let pairs = connect_pairs(running.addr.port());
    std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .into_iter()
            .enumerate()
            .map(|(p, conns)| {
                let (combos, work) = (&combos, &work);
                s.spawn(move || race(p, conns, combos, work))
            })
            .collect();
        for h in handles {
            for (i, side, r) in h.join().expect("racing pair") {
                replies.insert((i, side), r);
            }
        }
    });
    let raced = racing.elapsed();
    let states = rt.block_on(pg_states(&pool));

    // A failure is either a non-linearizable outcome, or (when dropping the
    // stray fields would make it match) hash fields left behind.
    let mut failures: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let (mut races, mut strays) = (0, 0);
    for (i, (c, key)) in work.iter().enumerate() {
        let combo = &combos[*c];
        let got = (
            replies[&(i, 0)].clone(),
            replies[&(i, 1)].clone(),
            states
                .get(key)
                .cloned()
                .unwrap_or_else(|| "none".to_owned()),
        );
        if allowed[*c].contains(&got) {
            continue;
        }
        let stripped = (got.0.clone(), got.1.clone(), without_stray_fields(&got.2));
        let kind = if allowed[*c].contains(&stripped) {
            strays += 1;
            "stray hash fields"
        } else {
            races += 1;
            "no serial order"
        };
        let name = format!("{kind}: {:?} | {} | {}", combo.start, combo.a, combo.b);
        let entry = failures.entry(name).or_insert((0, String::new()));
        entry.0 += 1;
        entry.1 = format!("got {got:?}, serial orders give {:?}", allowed[*c]);
    }
    rt.block_on(running.shutdown());
    let _ = std::fs::remove_file(&map_path);
    let mut worst: Vec<(&String, &(usize, String))> = failures.iter().collect();
    worst.sort_by_key(|(name, (n, _))| {
        (!name.starts_with("no serial"), std::cmp::Reverse(*n), *name)
    });
    let report: Vec<String> = worst
        .iter()
        .take(40)
        .map(|(name, (n, example))| format!("{n}/{TRIALS} {name}: {example}"))
        .collect();
    assert!(
        races + strays == 0,
        "of {} trials ({} combinations x {TRIALS}), {races} match no serial order \
         and {strays} leave hash fields behind a string; {} combinations fail, worst first:\n{}",
        work.len(),
        combos.len(),
        failures.len(),
        report.join("\n")
    );
    eprintln!(
        "{} trials of {} combinations linearizable; racing took {:?}, the test {:?}",
        work.len(),
        combos.len(),
        raced,
        started.elapsed()
    );
}

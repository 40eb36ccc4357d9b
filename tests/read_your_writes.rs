//! Read-your-writes on replicas (`options.read_your_writes`, issues 15 and
//! 18): with `prefer-replica` reads, several clients each write a key and
//! read it back, 500 times one after the other and 500 times pipelined
//! (SET and GET in one pipeline); with the option on none reads an older
//! value, with it off some do (so the check can fail), and a client that
//! only reads keeps reading from the replica meanwhile. Real servers: a
//! redis-server primary and replica, a PostgreSQL primary and a streaming
//! standby (`pg_basebackup -R`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Spec, calls};
use common::postgres::PgServer;
use redis::Commands;

/// Writing clients, and SET-then-GET pairs per client and way.
const WRITERS: usize = 4;
const PAIRS: usize = 500;
/// Pairs per pipeline in the pipelined run.
const PER_PIPELINE: usize = 50;

/// What one run saw.
#[derive(Debug, Default)]
struct Outcome {
    /// GETs right after their client's SET that returned another value.
    sequential_stale: usize,
    pipelined_stale: usize,
    /// Reads of the read-only client on the replica and on the primary.
    reader_on_replica: u64,
    reader_on_primary: u64,
    /// Reads the read-only client made (all answered right).
    reader_reads: u64,
    /// The writers' GETs on the replica and on the primary (Redis only).
    writer_gets_on_replica: u64,
    writer_gets_on_primary: u64,
}

impl Outcome {
    fn reader_share(&self) -> f64 {
        let all = self.reader_on_replica + self.reader_on_primary;
        self.reader_on_replica as f64 / all.max(1) as f64
    }
}

/// One client's sequential and pipelined pairs on its own key; returns the
/// stale reads of each way.
fn write_then_read(c: &Cluster, w: usize) -> (usize, usize) {
    let mut con = c.conn();
    let key = format!("ryw:{w}");
    let mut sequential = 0;
    for i in 0..PAIRS {
        let v = format!("s{i}");
        let _: () = con.set(&key, &v).unwrap();
        let got: Option<String> = con.get(&key).unwrap();
        if got.as_deref() != Some(v.as_str()) {
            sequential += 1;
        }
    }
    let mut pipelined = 0;
    for b in 0..PAIRS / PER_PIPELINE {
        let mut pipe = redis::pipe();
        for j in 0..PER_PIPELINE {
            pipe.set(&key, format!("p{}", b * PER_PIPELINE + j))
                .ignore();
            pipe.get(&key);
        }
        let got: Vec<Option<String>> = pipe.query(&mut con).unwrap();
        for (j, v) in got.iter().enumerate() {
            if v.as_deref() != Some(format!("p{}", b * PER_PIPELINE + j).as_str()) {
                pipelined += 1;
            }
        }
    }
    (sequential, pipelined)
}

/// Runs the writers and, beside them, a client that only reads a hash
/// (HGET, so that its reads can be told apart on the servers); `counts`
/// says (replica, primary) reads of that client so far.
fn run(c: &Cluster, counts: impl Fn() -> (u64, u64)) -> Outcome {
    let mut con = c.conn();
    let _: () = con.hset("ryw:reader", "f", "v").unwrap();
    let (rep0, prim0) = counts();
    let done = AtomicBool::new(false);
    let mut out = Outcome::default();
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut con = c.conn();
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                let v: Option<String> = con.hget("ryw:reader", "f").unwrap();
                // The replica may not have the hash yet at the very start.
                assert!(v.is_none() || v.as_deref() == Some("v"), "{v:?}");
                n += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| s.spawn(move || write_then_read(c, w)))
            .collect();
        for h in writers {
            let (seq, pipe) = h.join().unwrap();
            out.sequential_stale += seq;
            out.pipelined_stale += pipe;
        }
        done.store(true, Ordering::Relaxed);
        out.reader_reads = reader.join().unwrap();
    });
    // Counters on the servers may trail (PostgreSQL flushes its statistics
    // about once a second): wait until they account for the reads.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (rep, prim) = counts();
        (out.reader_on_replica, out.reader_on_primary) = (rep - rep0, prim - prim0);
        if out.reader_on_replica + out.reader_on_primary >= out.reader_reads
            || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    out
}

fn redis_cluster(on: bool) -> Cluster {
    Cluster::start(Spec {
        shards: 1,
        replicas: true,
        read_policy: "prefer-replica",
        extra_options: if on { "  read_your_writes: true\n" } else { "" },
        ..Spec::default()
    })
}

fn redis_run(on: bool) -> Outcome {
    let c = redis_cluster(on);
    let gets = || (calls(&c.replicas[0], "get"), calls(&c.primaries[0], "get"));
    let (rep0, prim0) = gets();
    let mut out = run(&c, || {
        (
            calls(&c.replicas[0], "hget"),
            calls(&c.primaries[0], "hget"),
        )
    });
    let (rep, prim) = gets();
    (out.writer_gets_on_replica, out.writer_gets_on_primary) = (rep - rep0, prim - prim0);
    eprintln!(
        "redis, read_your_writes {on}: {out:?}, reader share on the replica {:.3}",
        out.reader_share()
    );
    out
}

#[test]
fn redis_clients_read_their_writes_from_replicas() {
    let out = redis_run(true);
    assert_eq!(
        (out.sequential_stale, out.pipelined_stale),
        (0, 0),
        "{out:?}"
    );
    assert!(out.reader_share() > 0.5, "{out:?}");
}

#[test]
fn redis_without_the_option_replicas_serve_stale_reads() {
    let out = redis_run(false);
    assert!(out.sequential_stale + out.pipelined_stale > 0, "{out:?}");
    assert!(out.reader_share() > 0.5, "{out:?}");
}

#[test]
fn reads_return_to_the_replica_without_waiting_for_a_health_check() {
    let c = redis_cluster(true);
    // Health checks once a minute from now on (the reload rebuilds the
    // endpoints, whose first check lets the replica serve at once): only
    // the on-demand position probes can tell that the replica applied a
    // write.
    c.edit_map(|m| {
        m.replace(
            "health_check_interval_ms: 100",
            "health_check_interval_ms: 60000",
        )
    });
    c.reload().expect("reload");
    std::thread::sleep(Duration::from_millis(500));
    let mut con = c.conn();
    let _: () = con.set("ryw:later", "v").unwrap();
    let before = calls(&c.replicas[0], "strlen");
    let started = Instant::now();
    let mut on_primary = 0;
    // Right after the write, reads go to the primary (no probe of it since
    // the write, then the replica not known to have applied it); then,
    // once probes say it did, to the replica.
    loop {
        let n: i64 = redis::cmd("STRLEN")
            .arg("ryw:later")
            .query(&mut con)
            .unwrap();
        assert_eq!(n, 1);
        if calls(&c.replicas[0], "strlen") > before {
            break;
        }
        on_primary += 1;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "reads never went back to the replica"
        );
    }
    eprintln!(
        "reads back on the replica {} ms after the write ({on_primary} on the primary first)",
        started.elapsed().as_millis()
    );
    // And stay there.
    let before = calls(&c.replicas[0], "strlen");
    for _ in 0..100 {
        let _: i64 = redis::cmd("STRLEN")
            .arg("ryw:later")
            .query(&mut con)
            .unwrap();
    }
    assert_eq!(calls(&c.replicas[0], "strlen") - before, 100);
    // MGET after a write: its parts see it too.
    let _: () = con.set("ryw:later", "vv").unwrap();
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg("ryw:later")
        .arg("ryw:later")
        .query(&mut con)
        .unwrap();
    assert_eq!(got, vec![Some("vv".to_owned()), Some("vv".to_owned())]);
}

fn pg_cluster(on: bool) -> Cluster {
    Cluster::start(Spec {
        shards: 0,
        pg_shards: 1,
        pg_replicas: true,
        read_policy: "prefer-replica",
        extra_options: if on { "  read_your_writes: true\n" } else { "" },
        ..Spec::default()
    })
}

/// Scans of `kv_hash` on a server: the read-only client's HGETs (the
/// writers only touch strings).
fn hash_scans(s: &PgServer) -> u64 {
    s.query(
        "SELECT coalesce(sum(idx_scan + seq_scan), 0) FROM pg_stat_user_tables WHERE relname = 'kv_hash'",
    )
    .parse()
    .unwrap_or(0)
}

fn pg_run(on: bool) -> Outcome {
    let c = pg_cluster(on);
    // The standby must have the schema and the hash before the reader starts.
    let mut con = c.conn();
    let _: () = con.hset("ryw:reader", "f", "v").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.pg_replicas[0].query("SELECT count(*) FROM kv_hash") != "1" {
        assert!(Instant::now() < deadline, "standby never caught up");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = run(&c, || (hash_scans(&c.pg_replicas[0]), hash_scans(&c.pg[0])));
    eprintln!(
        "postgres, read_your_writes {on}: {out:?}, reader share on the standby {:.3}",
        out.reader_share()
    );
    out
}

#[test]
fn postgres_clients_read_their_writes_from_standbys() {
    let out = pg_run(true);
    assert_eq!(
        (out.sequential_stale, out.pipelined_stale),
        (0, 0),
        "{out:?}"
    );
    assert!(out.reader_share() > 0.5, "{out:?}");
}

#[test]
fn postgres_without_the_option_standbys_serve_stale_reads() {
    let out = pg_run(false);
    assert!(out.sequential_stale + out.pipelined_stale > 0, "{out:?}");
    assert!(out.reader_share() > 0.5, "{out:?}");
}

#[test]
fn a_replica_that_has_not_applied_the_write_serves_only_other_clients() {
    let c = redis_cluster(true);
    let mut writer = c.conn();
    let mut other = c.conn();
    let _: () = writer.set("ryw:paused", "1").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The replica stops applying the replication stream (its link stays
    // up, so it stays in the read rotation).
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3_000)
        .arg("WRITE")
        .query(&mut c.replicas[0].connection())
        .unwrap();
    let _: () = writer.set("ryw:paused", "2").unwrap();
    // Long enough for probes of the primary to know the write's position:
    // the replica is then skipped because it has not reached it.
    std::thread::sleep(Duration::from_millis(300));
    let on_replica = calls(&c.replicas[0], "get");
    for _ in 0..20 {
        let v: String = writer.get("ryw:paused").unwrap();
        assert_eq!(v, "2", "the writer reads its write");
    }
    assert_eq!(
        calls(&c.replicas[0], "get"),
        on_replica,
        "not from the replica"
    );
    // A client that did not write still reads from the replica (stale, as
    // asynchronous replication allows).
    let v: String = other.get("ryw:paused").unwrap();
    assert_eq!(v, "1");
    assert_eq!(calls(&c.replicas[0], "get"), on_replica + 1);
    // Once the replica applies the write, the writer reads from it again.
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut c.replicas[0].connection())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = calls(&c.replicas[0], "get");
        let v: String = writer.get("ryw:paused").unwrap();
        assert_eq!(v, "2");
        if calls(&c.replicas[0], "get") > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the writer never read from the replica again"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_standby_that_has_not_replayed_the_write_serves_only_other_clients() {
    let c = pg_cluster(true);
    let standby = &c.pg_replicas[0];
    let mut writer = c.conn();
    let mut other = c.conn();
    let _: () = writer.set("ryw:paused", "1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while standby.query("SELECT count(*) FROM kv") != "1" {
        assert!(Instant::now() < deadline, "standby never caught up");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The standby keeps receiving WAL but stops replaying it.
    standby.query("SELECT pg_wal_replay_pause()");
    let _: () = writer.set("ryw:paused", "2").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        let v: String = writer.get("ryw:paused").unwrap();
        assert_eq!(v, "2", "the writer reads its write");
    }
    // A client that did not write still reads from the standby (stale).
    let v: String = other.get("ryw:paused").unwrap();
    assert_eq!(v, "1", "the other client reads from the paused standby");
    standby.query("SELECT pg_wal_replay_resume()");
    let v: String = writer.get("ryw:paused").unwrap();
    assert_eq!(v, "2");
}

/// Clients that read more than they write (1 SET, then 9 GETs of the key):
/// none reads an older value, and the on-demand probes bring most of their
/// reads back to the replica within a few reads (the share is reported,
/// not asserted: it depends on how fast probes come back on a busy host).
#[test]
fn read_heavy_writers_read_their_writes_and_mostly_from_the_replica() {
    let c = redis_cluster(true);
    let gets = || (calls(&c.replicas[0], "get"), calls(&c.primaries[0], "get"));
    let (rep0, prim0) = gets();
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let c = &c;
            s.spawn(move || {
                let mut con = c.conn();
                let key = format!("ryw:heavy:{w}");
                for i in 0..100 {
                    let _: () = con.set(&key, i).unwrap();
                    for _ in 0..9 {
                        let v: i64 = con.get(&key).unwrap();
                        assert_eq!(v, i, "a read older than the client's write");
                    }
                }
            });
        }
    });
    let (rep, prim) = gets();
    let (rep, prim) = (rep - rep0, prim - prim0);
    eprintln!(
        "1 SET + 9 GETs x 100 x {WRITERS} clients: {rep} GETs on the replica, {prim} on the primary (replica share {:.3})",
        rep as f64 / (rep + prim).max(1) as f64
    );
    assert_eq!(rep + prim, (WRITERS * 900) as u64);
}

/// MGET over two shards after MSET over the same two: each part reads
/// from a replica only if it applied the client's write.
#[test]
fn split_reads_over_shards_see_the_clients_writes() {
    let c = Cluster::start(Spec {
        shards: 2,
        replicas: true,
        read_policy: "prefer-replica",
        extra_options: "  read_your_writes: true\n",
        ..Spec::default()
    });
    let a = "ryw:split:a".to_owned();
    let b = (0..)
        .map(|i| format!("ryw:split:b{i}"))
        .find(|k| c.shard_of(k) != c.shard_of(&a))
        .unwrap();
    let mut con = c.conn();
    let mut stale = 0;
    for i in 0..300 {
        let v = i.to_string();
        if i % 2 == 0 {
            let _: () = redis::cmd("MSET")
                .arg(&a)
                .arg(&v)
                .arg(&b)
                .arg(&v)
                .query(&mut con)
                .unwrap();
            let got: Vec<String> = redis::cmd("MGET").arg(&a).arg(&b).query(&mut con).unwrap();
            stale += got.iter().filter(|g| **g != v).count();
        } else {
            let (got,): (Vec<String>,) = redis::pipe()
                .cmd("MSET")
                .arg(&a)
                .arg(&v)
                .arg(&b)
                .arg(&v)
                .ignore()
                .cmd("MGET")
                .arg(&a)
                .arg(&b)
                .query(&mut con)
                .unwrap();
            stale += got.iter().filter(|g| **g != v).count();
        }
    }
    assert_eq!(stale, 0);
}

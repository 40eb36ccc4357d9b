//! SCAN through the proxy is bounded by COUNT even inside one slot: a hash
//! tag holding 200,000 keys comes back about COUNT keys per reply, on a
//! Redis shard and on a PostgreSQL shard, and a full scan still returns
//! every key that exists for the whole scan (while other keys of the same
//! slot come and go). Cursors are read with Redis' own rules, checked
//! against a real redis-server (`SCAN -1` is a cursor, `SCAN abc` is not).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use common::RedisServer;
use common::cluster::{Cluster, Spec};
use common::resp::FrameConn;

/// Keys in the one big hash tag.
const BIG: usize = 200_000;

fn big_key(i: usize) -> String {
    format!("{{big}}:k:{i}")
}

/// Writes `keys` through the proxy, 1000 per MSET.
fn load(con: &mut redis::Connection, keys: &[String]) {
    for chunk in keys.chunks(1000) {
        let mut cmd = redis::cmd("MSET");
        for k in chunk {
            cmd.arg(k).arg("v");
        }
        let () = cmd.query(con).expect("MSET");
    }
}

/// What a full scan saw.
struct Walk {
    keys: Vec<String>,
    calls: usize,
    /// Most keys in one reply.
    max_keys: usize,
    /// Most key bytes in one reply.
    max_bytes: usize,
    secs: f64,
}

/// Scans to cursor 0 with `extra` arguments (COUNT, MATCH, TYPE).
fn walk(con: &mut redis::Connection, extra: &[&str]) -> Walk {
    let started = Instant::now();
    let mut w = Walk {
        keys: Vec::new(),
        calls: 0,
        max_keys: 0,
        max_bytes: 0,
        secs: 0.0,
    };
    let mut cursor = "0".to_owned();
    let mut timeouts = 0;
    loop {
        let answer: redis::RedisResult<(String, Vec<String>)> =
            redis::cmd("SCAN").arg(&cursor).arg(extra).query(con);
        let (next, batch) = match answer {
            Ok(a) => a,
            // The test map's command timeout is 2 s and the machine may be
            // busy: a cursor holds no state, so the same call is retried.
            Err(e) if e.to_string().contains("timed out") && timeouts < 5 => {
                timeouts += 1;
                continue;
            }
            Err(e) => panic!("SCAN {cursor} {extra:?}: {e}"),
        };
        w.calls += 1;
        w.max_keys = w.max_keys.max(batch.len());
        w.max_bytes = w.max_bytes.max(batch.iter().map(String::len).sum());
        w.keys.extend(batch);
        if next == "0" {
            break;
        }
        assert!(next.parse::<u64>().is_ok(), "cursor {next}");
        cursor = next;
    }
    w.secs = started.elapsed().as_secs_f64();
    w
}

/// 200,000 keys of one hash tag plus 2,000 others (and 300 hashes in the
/// tag), then full scans with the default COUNT, COUNT 1000, MATCH and
/// TYPE, while another client keeps writing and deleting other keys of the
/// big tag: every reply is about COUNT keys, every stable key is returned.
fn bounded_in_one_slot(c: &Cluster, kind: &str) {
    let mut con = c.conn();
    let big: Vec<String> = (0..BIG).map(big_key).collect();
    let others: Vec<String> = (0..2000).map(|i| format!("other:{i}")).collect();
    load(&mut con, &big);
    load(&mut con, &others);
    let hashes: Vec<String> = (0..300).map(|i| format!("{{big}}:h:{i}")).collect();
    for h in &hashes {
        let () = redis::cmd("HSET")
            .arg(h)
            .arg("f")
            .arg("v")
            .query(&mut con)
            .expect("HSET");
    }
    let stable: HashSet<String> = big.iter().chain(&others).chain(&hashes).cloned().collect();

    // Keys of the big tag that come and go during the scans.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        let mut con = c.conn();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("{{big}}:churn:{}", i % 500);
                if i.is_multiple_of(3) {
                    let _: i64 = redis::cmd("DEL").arg(&k).query(&mut con).expect("DEL");
                } else {
                    let () = redis::cmd("SET")
                        .arg(&k)
                        .arg(i)
                        .query(&mut con)
                        .expect("SET");
                }
                i += 1;
            }
            i
        })
    };

    let default = walk(&mut con, &[]);
    let seen: HashSet<&String> = default.keys.iter().collect();
    let missing = stable.iter().filter(|k| !seen.contains(k)).count();
    assert_eq!(missing, 0, "{kind}: {missing} stable keys never returned");
    for k in &default.keys {
        assert!(
            stable.contains(k) || k.starts_with("{big}:churn:"),
            "{kind}: unknown key {k}"
        );
    }
    eprintln!(
        "{kind}: default COUNT: {} keys in {} calls, at most {} keys ({} key bytes) per reply, {:.1} s",
        default.keys.len(),
        default.calls,
        default.max_keys,
        default.max_bytes,
        default.secs
    );
    // Redis' own SCAN visits COUNT buckets and returns what they hold, so
    // a reply may carry a few more than COUNT; a postgres shard answers
    // COUNT (one more on a rare digest-prefix collision).
    assert!(
        default.max_keys <= 40,
        "{kind}: a reply held {} keys",
        default.max_keys
    );
    assert!(
        default.calls >= stable.len() / 40,
        "{kind}: only {} calls",
        default.calls
    );

    let wide = walk(&mut con, &["COUNT", "1000"]);
    let seen: HashSet<&String> = wide.keys.iter().collect();
    assert!(
        stable.iter().all(|k| seen.contains(k)),
        "{kind}: COUNT 1000"
    );
    assert!(wide.max_keys <= 2000, "{kind}: {} keys", wide.max_keys);
    eprintln!(
        "{kind}: COUNT 1000: {} calls, at most {} keys per reply, {:.1} s",
        wide.calls, wide.max_keys, wide.secs
    );

    let matched = walk(&mut con, &["COUNT", "500", "MATCH", "{big}:k:1999*"]);
    let want: HashSet<String> = big
        .iter()
        .filter(|k| k.starts_with("{big}:k:1999"))
        .cloned()
        .collect();
    assert_eq!(
        matched.keys.iter().cloned().collect::<HashSet<_>>(),
        want,
        "{kind}: MATCH"
    );
    let typed = walk(&mut con, &["COUNT", "500", "TYPE", "hash"]);
    assert_eq!(
        typed.keys.iter().cloned().collect::<HashSet<_>>(),
        hashes.iter().cloned().collect::<HashSet<_>>(),
        "{kind}: TYPE hash"
    );
    assert!(matched.max_keys <= 1000 && typed.max_keys <= 1000);

    stop.store(true, Ordering::Relaxed);
    let writes = churn.join().expect("churn thread");
    assert!(writes > 0);
}

#[test]
fn postgres_shard_scan_is_bounded_inside_one_slot() {
    let c = Cluster::start(Spec {
        shards: 0,
        pg_shards: 1,
        ..Spec::default()
    });
    bounded_in_one_slot(&c, "postgres");
    // A postgres shard answers exactly COUNT keys while the slot has more
    // (a digest-prefix collision may add one).
    let mut con = c.conn();
    let mut cursor = "0".to_owned();
    let mut sizes = Vec::new();
    for _ in 0..200 {
        let (next, batch): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("COUNT")
            .arg(7)
            .query(&mut con)
            .expect("SCAN");
        sizes.push(batch.len());
        cursor = next;
    }
    assert!(sizes.iter().all(|&n| (7..=8).contains(&n)), "{sizes:?}");
}

#[test]
fn redis_shard_scan_is_bounded_inside_one_slot() {
    let c = Cluster::start(Spec {
        shards: 1,
        ..Spec::default()
    });
    bounded_in_one_slot(&c, "redis");
}

/// A map with both kinds: one scan crosses from the Redis shards to the
/// postgres shard and returns every key once per shard.
#[test]
fn scan_crosses_shard_kinds_with_small_counts() {
    let c = Cluster::start(Spec {
        shards: 2,
        pg_shards: 1,
        ..Spec::default()
    });
    let mut con = c.conn();
    let mut keys: Vec<String> = (0..3000).map(|i| format!("{{t{}}}:{i}", i % 7)).collect();
    keys.extend((0..500).map(|i| format!("free:{i}")));
    load(&mut con, &keys);
    let shards: HashSet<usize> = keys.iter().map(|k| c.shard_of(k)).collect();
    assert_eq!(shards.len(), 3, "keys cover every shard");
    for count in ["1", "3", "10"] {
        let w = walk(&mut con, &["COUNT", count]);
        let seen: HashSet<String> = w.keys.iter().cloned().collect();
        assert_eq!(
            seen,
            keys.iter().cloned().collect::<HashSet<_>>(),
            "COUNT {count}"
        );
        // Keys never change position, so none comes back twice.
        assert_eq!(w.keys.len(), keys.len(), "COUNT {count}: duplicates");
    }
}

/// The proxy reads cursors as redis-server 7.0 does (`strtoul` on the whole
/// argument): the same cursors are refused with the same error, and the
/// rest (`-1`, `+5`, the empty string, leading zeros ...) answer a SCAN
/// reply, on a Redis shard and on a postgres shard.
#[test]
fn cursor_errors_match_redis_server() {
    let redis = RedisServer::start();
    let c = Cluster::start(Spec {
        shards: 1,
        pg_shards: 1,
        ..Spec::default()
    });
    let mut direct = FrameConn::connect(redis.port);
    let mut proxy = FrameConn::connect(c.proxy_port);
    for i in 0..50 {
        let k = format!("k{i}");
        direct.call(&["SET", &k, "v"]);
        proxy.call(&["SET", &k, "v"]);
    }
    let cursors = [
        "0",
        "-1",
        "-2",
        "-0",
        "+5",
        "",
        "00012",
        "18446744073709551615",
        "-18446744073709551615",
        "-9223372036854775808",
        " 5",
        "5 ",
        "\t5",
        "0x10",
        "abc",
        "1.5",
        "--1",
        "+-1",
        "-",
        "18446744073709551616",
        "-18446744073709551616",
        "99999999999999999999999",
    ];
    for cursor in cursors {
        for extra in [&[][..], &["COUNT", "3"][..], &["COUNT", "0"][..]] {
            let mut args = vec!["SCAN", cursor];
            args.extend_from_slice(extra);
            let want = direct.call(&args);
            let got = proxy.call(&args);
            let shown = format!("{args:?}");
            if want.first() == Some(&b'-') {
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want),
                    "{shown}"
                );
            } else {
                assert!(
                    got.starts_with(b"*2\r\n$"),
                    "{shown}: proxy answered {}",
                    String::from_utf8_lossy(&got)
                );
                let text = String::from_utf8_lossy(&got);
                let next = text.split("\r\n").nth(2).unwrap_or_default();
                assert!(next.parse::<u64>().is_ok(), "{shown}: next cursor {next}");
            }
        }
    }
    // `SCAN -1` is the last cursor there is: redis-server answers what is
    // left and ends the scan; so does the proxy.
    assert!(
        direct
            .call(&["SCAN", "-1"])
            .starts_with(b"*2\r\n$1\r\n0\r\n")
    );
}

/// Two keys of one slot whose SHA-256 digests share their first 34 bits
/// (the position a postgres shard's cursor can name with 16384 slots):
/// they come back in one reply, whatever COUNT, and the scan still
/// returns every key exactly once.
#[test]
fn postgres_scan_never_splits_keys_sharing_a_cursor_position() {
    use sha2::Digest as _;
    let prefix = |k: &str| {
        let d = sha2::Sha256::digest(k.as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&d[..8]);
        u64::from_be_bytes(head) >> 30
    };
    let mut seen = std::collections::HashMap::new();
    let pair = (0..2_000_000)
        .map(|i| format!("{{g}}:{i}"))
        .find_map(|k| seen.insert(prefix(&k), k.clone()).map(|other| (other, k)))
        .expect("a 34-bit digest-prefix collision among 2M keys");
    drop(seen);
    let c = Cluster::start(Spec {
        shards: 0,
        pg_shards: 1,
        ..Spec::default()
    });
    let mut con = c.conn();
    let mut keys: Vec<String> = (0..60).map(|i| format!("{{g}}:x{i}")).collect();
    keys.push(pair.0.clone());
    keys.push(pair.1.clone());
    load(&mut con, &keys);
    for count in ["1", "2", "3"] {
        let mut cursor = "0".to_owned();
        let mut all = Vec::new();
        loop {
            let (next, batch): (String, Vec<String>) = redis::cmd("SCAN")
                .arg(&cursor)
                .arg("COUNT")
                .arg(count)
                .query(&mut con)
                .expect("SCAN");
            let has = |k: &String| batch.contains(k);
            assert_eq!(has(&pair.0), has(&pair.1), "COUNT {count}: {batch:?}");
            let limit: usize = count.parse().unwrap();
            assert!(
                batch.len() <= limit.max(2),
                "COUNT {count}: {} keys",
                batch.len()
            );
            all.extend(batch);
            if next == "0" {
                break;
            }
            cursor = next;
        }
        assert_eq!(all.len(), keys.len(), "COUNT {count}: duplicates");
        assert_eq!(
            all.into_iter().collect::<HashSet<_>>(),
            keys.iter().cloned().collect::<HashSet<_>>()
        );
    }
}

//! How big a stretch of the mover's commands its source runs at once, seen
//! with `MONITOR` on the source: small bursts beside clients (and under a
//! throttle, see `ctrl_c_detaches_the_progress_bar_and_the_move_goes_on`),
//! full ones alone.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::common::RedisServer;
use super::common::TempDir;
use super::common::rebalance::*;

/// A `MONITOR` connection to the Redis server on `port`.
pub(super) fn monitor(port: u16) -> BufReader<TcpStream> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(b"MONITOR\r\n").unwrap();
    let mut lines = BufReader::new(conn);
    let mut ok = String::new();
    lines.read_line(&mut ok).unwrap();
    assert_eq!(ok, "+OK\r\n");
    lines
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    lines
}

/// A `SCAN` or a `SADD` to the mover's fence, as `MONITOR` showed it.
#[derive(Debug)]
pub(super) struct Seen {
    /// The server's time of it (seconds).
    pub(super) at: f64,
    /// The connection that sent it (`127.0.0.1:port`).
    pub(super) client: String,
    pub(super) args: Vec<String>,
}

/// The `SCAN`s and the `SADD`s to the mover's fence that the monitored
/// server runs, until `enough` of the mover's were seen (see
/// [`burst_sizes`]) or `limit` passed.
pub(super) fn mover_commands(
    lines: &mut BufReader<TcpStream>,
    limit: Duration,
    enough: impl Fn(&[Seen]) -> bool,
) -> Vec<Seen> {
    let deadline = Instant::now() + limit;
    let (mut out, mut line) = (Vec::new(), String::new());
    while Instant::now() < deadline && !enough(&out) {
        // A timed-out read keeps what it read in `line`.
        if lines.read_line(&mut line).is_err() || !line.ends_with('\n') {
            continue;
        }
        // +1733480000.123456 [0 127.0.0.1:40000] "SCAN" "0" "COUNT" "100"
        let at = line
            .trim_start_matches('+')
            .split(' ')
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0.0);
        let client = line
            .split(['[', ']'])
            .nth(1)
            .and_then(|c| c.split(' ').nth(1))
            .unwrap_or_default()
            .to_owned();
        let args: Vec<String> = line
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        let mover = match args.first().map(String::as_str) {
            Some("SCAN") => true,
            Some("SADD") => args.get(1).is_some_and(|k| k == "__shardgate_moving__"),
            _ => false,
        };
        if mover {
            out.push(Seen { at, client, args });
        }
        line.clear();
    }
    out
}

/// A `SCAN` of the mover and two fences seen.
pub(super) fn scan_and_two_fences(seen: &[Seen]) -> bool {
    let (counts, fences) = burst_sizes(seen);
    !counts.is_empty() && fences.len() >= 2
}

/// (`SCAN` COUNTs, keys per fence) of the mover's walk: the commands of
/// the connections that fenced keys (the estimate's and the verification's
/// `SCAN`s come on others).
pub(super) fn burst_sizes(seen: &[Seen]) -> (Vec<usize>, Vec<usize>) {
    let walkers: Vec<&str> = seen
        .iter()
        .filter(|c| c.args[0] == "SADD")
        .map(|c| c.client.as_str())
        .collect();
    let counts = seen
        .iter()
        .filter(|c| c.args[0] == "SCAN" && walkers.contains(&c.client.as_str()))
        .map(|c| c.args[3].parse().unwrap())
        .collect();
    let fences = seen
        .iter()
        .filter(|c| c.args[0] == "SADD")
        .map(|c| c.args.len() - 2)
        .collect();
    (counts, fences)
}

/// Writes `k0`..`k{keys}` (each "v") through the proxy, 1000 per MSET.
pub(super) fn write_keys(proxy: &Proxy, keys: usize) {
    let mut c = proxy.client().get_connection().unwrap();
    for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let mut cmd = redis::cmd("MSET");
        for i in chunk {
            cmd.arg(format!("k{i}")).arg("v");
        }
        let _: () = cmd.query(&mut c).unwrap();
    }
}

/// A client reading `k0`..`k{keys}` (each "v") through the proxy until
/// `stop`; returns how many it read.
pub(super) fn reader(
    proxy: &Proxy,
    keys: usize,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let (stop, client) = (stop.clone(), proxy.client());
    std::thread::spawn(move || {
        let mut c = client.get_connection().unwrap();
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let v: Option<String> = redis::cmd("GET")
                .arg(format!("k{}", n % keys))
                .query(&mut c)
                .unwrap();
            assert_eq!(v.as_deref(), Some("v"));
            n += 1;
        }
        n
    })
}

/// Unthrottled, the mover takes small bursts on its source while clients
/// are served (so that their commands wait behind short stretches of the
/// mover's), and full ones when no client is.
#[test]
fn the_mover_takes_small_bursts_beside_clients_and_full_ones_alone() {
    const KEYS: usize = 200_000;
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let dir = TempDir::new("rebalance-bursts");
    let names = ["s0", "s1", "s2"];
    let all: Vec<(&str, &RedisServer)> = names.iter().copied().zip(&servers).collect();
    let m1 = write(dir.path(), "m1.yaml", &map_yaml(&all[..2]));
    let m2 = write(dir.path(), "m2.yaml", &map_yaml(&all));
    let (proxy, metrics_port) = Proxy::start_with_metrics(dir.path(), &m1);
    let small_bursts = || {
        ureq_get(metrics_port)
            .lines()
            .find_map(|l| {
                l.strip_prefix("shardgate_rebalance_small_bursts ")?
                    .parse::<f64>()
                    .ok()
            })
            .expect("shardgate_rebalance_small_bursts")
    };
    write_keys(&proxy, KEYS);
    let mut admin = proxy.admin();
    // A client reading all along: small bursts.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = reader(&proxy, KEYS, &stop);
    let (t1, t2) = (table_of(&m1), table_of(&m2));
    let first = t1.moves_to(&t2).unwrap()[0].from;
    let source = names
        .iter()
        .position(|n| *n == t1.shard(first).unwrap().name)
        .unwrap();
    let mut lines = monitor(servers[source].port);
    let started = admin.text(&[b"REBALANCE", b"FILE", m2.to_str().unwrap().as_bytes()]);
    assert!(started.starts_with("OK"), "{started}");
    let seen = mover_commands(&mut lines, Duration::from_secs(30), scan_and_two_fences);
    let (counts, fences) = burst_sizes(&seen);
    assert!(scan_and_two_fences(&seen), "{seen:?}");
    assert!(counts.iter().all(|&n| n == 100), "{counts:?}");
    assert!(fences.iter().all(|&n| n <= 25), "{fences:?}");
    assert_eq!(small_bursts(), 1.0);
    assert_eq!(wait_done(&proxy)["verify"], "ok");
    assert_eq!(small_bursts(), 0.0, "no rebalance runs");
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    // No client: after the first sample (small bursts until then), full
    // bursts. The move back drains s2.
    let mut lines = monitor(servers[2].port);
    let started = admin.text(&[b"REBALANCE", b"FILE", m1.to_str().unwrap().as_bytes()]);
    assert!(started.starts_with("OK"), "{started}");
    let full = |seen: &[Seen]| {
        let (counts, fences) = burst_sizes(seen);
        counts.contains(&500) && fences.iter().any(|&n| n > 25)
    };
    let seen = mover_commands(&mut lines, Duration::from_secs(30), full);
    let (counts, fences) = burst_sizes(&seen);
    assert!(full(&seen), "{counts:?} {fences:?}");
    assert!(fences.iter().all(|&n| n <= 100), "{fences:?}");
    assert_eq!(small_bursts(), 0.0);
    assert_eq!(wait_done(&proxy)["verify"], "ok");
}

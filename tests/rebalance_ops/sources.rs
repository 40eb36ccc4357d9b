//! Several sources at once (`--rebalance-sources`), seen with `MONITOR` on
//! two source shards: alone, their walks overlap; beside clients, one
//! source moves at a time; and `--rebalance-sources 1` keeps them apart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::bursts::{Seen, monitor, mover_commands, reader, write_keys};
use super::common::RedisServer;
use super::common::TempDir;
use super::common::rebalance::*;

/// `MONITOR`s of the mover's commands on the servers on `ports`, until
/// `done`.
fn watch(ports: &[u16], done: &Arc<AtomicBool>) -> Vec<JoinHandle<Vec<Seen>>> {
    ports
        .iter()
        .map(|&port| {
            let mut lines = monitor(port);
            let done = done.clone();
            std::thread::spawn(move || {
                mover_commands(&mut lines, Duration::from_secs(60), |_| {
                    done.load(Ordering::Relaxed)
                })
            })
        })
        .collect()
}

/// When the walk of a source ran: the server times of the first and last
/// `SCAN` or fence of the connection that fenced keys there (the
/// estimate's and the verification's `SCAN`s come on other connections).
fn walked(seen: &[Seen]) -> (f64, f64) {
    let walker = &seen
        .iter()
        .find(|c| c.args[0] == "SADD")
        .expect("the mover fenced keys on this source")
        .client;
    let times: Vec<f64> = seen
        .iter()
        .filter(|c| &c.client == walker)
        .map(|c| c.at)
        .collect();
    (times[0], times[times.len() - 1])
}

/// One move from `from` to `to` with the walks of both sources watched;
/// returns their spans (see [`walked`]) and the most sources the metrics
/// showed moving at once.
fn move_and_watch(
    proxy: &Proxy,
    metrics_port: u16,
    sources: [u16; 2],
    to: &std::path::Path,
) -> ((f64, f64), (f64, f64), f64) {
    let done = Arc::new(AtomicBool::new(false));
    let watchers = watch(&sources, &done);
    let started = proxy.admin().rebalance_file(to, 0);
    assert!(started.starts_with("OK"), "{started}");
    let (mut most, mut started) = (0.0f64, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        assert!(std::time::Instant::now() < deadline, "the move never ended");
        let text = ureq_get(metrics_port);
        let gauge = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or_default()
        };
        most = most.max(gauge("shardgate_rebalance_sources_moving "));
        // (The mover's task may set it only after this first look.)
        let running = gauge("shardgate_rebalance_running ") == 1.0;
        if started && !running {
            break;
        }
        started |= running;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(proxy.admin().progress()["verify"], "ok");
    done.store(true, Ordering::Relaxed);
    let spans: Vec<(f64, f64)> = watchers
        .into_iter()
        .map(|w| walked(&w.join().unwrap()))
        .collect();
    (spans[0], spans[1], most)
}

fn overlap(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[test]
fn several_sources_move_at_once_alone_and_one_at_a_time_beside_clients() {
    const KEYS: usize = 150_000;
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let dir = TempDir::new("rebalance-sources");
    let all: Vec<(&str, &RedisServer)> = ["s0", "s1", "s2"].into_iter().zip(&servers).collect();
    let m1 = write(dir.path(), "m1.yaml", &map_yaml(&all[..2]));
    let m2 = write(dir.path(), "m2.yaml", &map_yaml(&all));
    let (proxy, metrics_port) = Proxy::start_with_metrics(dir.path(), &m1);
    write_keys(&proxy, KEYS);
    let (p0, p1) = (servers[0].port, servers[1].port);

    // Alone (the default --rebalance-sources 4): both sources' walks run
    // at once.
    let (a, b, most) = move_and_watch(&proxy, metrics_port, [p0, p1], &m2);
    assert!(overlap(a, b), "s0 walked {a:?}, s1 {b:?}");
    assert_eq!(most, 2.0, "two sources moving at once");
    let moving = ureq_get(metrics_port);
    assert!(
        moving.contains("shardgate_rebalance_sources_moving 0"),
        "none once the move is over"
    );
    // s2 drained back.
    proxy.admin().rebalance_file(&m1, 0);
    assert_eq!(wait_done(&proxy)["verify"], "ok");

    // Beside a client reading all along: one source after the other.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = reader(&proxy, KEYS, &stop);
    let (a, b, most) = move_and_watch(&proxy, metrics_port, [p0, p1], &m2);
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    assert!(!overlap(a, b), "s0 walked {a:?}, s1 {b:?}");
    assert_eq!(most, 1.0, "one source moving at a time");
    proxy.admin().rebalance_file(&m1, 0);
    assert_eq!(wait_done(&proxy)["verify"], "ok");

    // --rebalance-sources 1: one window at a time, even alone.
    drop(proxy);
    let dir1 = TempDir::new("rebalance-sources-1");
    let metrics_port = super::common::free_port();
    let mut proxy = Proxy::new(dir1.path(), &m1);
    proxy.spawn_with(&[
        "--metrics-listen",
        &format!("127.0.0.1:{metrics_port}"),
        "--rebalance-sources",
        "1",
    ]);
    let (a, b, most) = move_and_watch(&proxy, metrics_port, [p0, p1], &m2);
    assert!(!overlap(a, b), "s0 walked {a:?}, s1 {b:?}");
    assert_eq!(most, 1.0);
    let log = proxy.log_text();
    let steps = log.matches("rebalance windows moved").count();
    assert_eq!(steps, 2, "a step per source: {log}");
}

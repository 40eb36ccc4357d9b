//! Scenarios run against a plain redis-server and against the proxy, so
//! that their replies can be compared byte for byte.

use std::time::{Duration, Instant};

use super::cluster::{Cluster, Spec};
use super::resp::FrameConn;

/// A reply frame as text (for messages and comparisons).
pub fn text(f: &[u8]) -> String {
    String::from_utf8_lossy(f).into_owned()
}

/// Runs `scenario` against one shard directly, then against the proxy (a
/// two-shard cluster); the second argument names the side.
pub fn both(scenario: impl FnMut(u16, &str)) {
    both_with(Spec::default(), scenario);
}

/// [`both`] with the shards started as `spec` says (two shards).
pub fn both_with(spec: Spec, mut scenario: impl FnMut(u16, &str)) {
    let args = spec.server_args.clone();
    let c = Cluster::start(Spec { shards: 2, ..spec });
    // Replicas start plain: the same `--name value` settings, at run time.
    for r in &c.replicas {
        let mut conn = FrameConn::connect(r.port);
        for pair in args.chunks(2) {
            if let [name, value] = pair {
                let name = name.trim_start_matches('-');
                let reply = conn.call(&["CONFIG", "SET", name, value]);
                assert_eq!(reply, b"+OK\r\n", "replica CONFIG SET {name} {value}");
            }
        }
    }
    let direct = c.primaries[0].addr();
    let port: u16 = direct.rsplit(':').next().unwrap().parse().unwrap();
    scenario(port, "redis-server");
    scenario(c.proxy_port, "shardgate");
}

/// `blocked_clients` of `INFO clients` at `port`.
pub fn blocked_clients(port: u16) -> u64 {
    let info = text(&FrameConn::connect(port).call(&["INFO", "clients"]));
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

/// Waits until `port` reports `n` blocked clients.
pub fn wait_blocked(port: u16, n: u64, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while blocked_clients(port) != n {
        assert!(
            Instant::now() < deadline,
            "{who}: blocked_clients never reached {n}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

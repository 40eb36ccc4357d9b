//! OBJECT FREQ / IDLETIME / ENCODING / REFCOUNT through the proxy as a
//! plain redis-server answers them, with the shards' LFU and LRU
//! policies, and with replicas serving reads (`prefer-replica`): OBJECT
//! goes where the client's reads of the key went, whose access state
//! counts them.

mod common;

use std::time::Duration;

use common::cluster::Spec;
use common::compare::{both_with, text};
use common::resp::FrameConn;

fn scenario(port: u16) -> Vec<String> {
    let mut c = FrameConn::connect(port);
    let mut out = Vec::new();
    let _ = c.call(&["DEL", "ok", "ol"]);
    out.push(text(&c.call(&["SET", "ok", "v"])));
    out.push(text(&c.call(&["RPUSH", "ol", "a", "b"])));
    for _ in 0..20 {
        let _ = c.call(&["GET", "ok"]);
    }
    std::thread::sleep(Duration::from_millis(1100));
    // Redis' LRU clock ticks in seconds: 1 or 2 after 1.1 s.
    let idle = text(&c.call(&["OBJECT", "IDLETIME", "ok"]));
    out.push(match idle.as_str() {
        ":1\r\n" | ":2\r\n" => "idle 1..2 s".to_owned(),
        other => other.to_owned(),
    });
    for args in [
        &["OBJECT", "FREQ", "ok"][..],
        &["OBJECT", "FREQ", "missing"],
        &["OBJECT", "IDLETIME", "missing"],
        &["OBJECT", "ENCODING", "ok"],
        &["OBJECT", "ENCODING", "ol"],
        &["OBJECT", "REFCOUNT", "ol"],
        &["OBJECT", "NOSUCH", "ok"],
    ] {
        out.push(text(&c.call(args)));
    }
    out
}

fn compare(server_args: &[&str], replicas: bool) {
    let spec = Spec {
        server_args: server_args.iter().map(|s| s.to_string()).collect(),
        replicas,
        read_policy: if replicas {
            "prefer-replica"
        } else {
            "primary"
        },
        ..Spec::default()
    };
    let mut seen: Vec<Vec<String>> = Vec::new();
    both_with(spec, |port, _| seen.push(scenario(port)));
    assert_eq!(
        seen[0], seen[1],
        "redis-server vs shardgate ({server_args:?})"
    );
}

/// An LFU policy where every access counts, without decay: the counter
/// drops once a minute boundary passes between accesses, which made the
/// two servers differ by one.
const LFU: &[&str] = &[
    "--maxmemory-policy",
    "allkeys-lfu",
    "--lfu-log-factor",
    "0",
    "--lfu-decay-time",
    "0",
];

#[test]
fn object_under_the_default_policy() {
    compare(&[], false);
}

#[test]
fn object_freq_under_an_lfu_policy() {
    compare(LFU, false);
}

#[test]
fn object_reports_the_access_state_where_the_clients_reads_went() {
    compare(LFU, true);
    compare(&[], true);
}

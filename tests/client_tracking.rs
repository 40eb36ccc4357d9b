//! `CLIENT TRACKING` through the proxy (client-side caching as Redis 6+
//! clients use it): invalidation pushes for the keys a client read,
//! whoever writes them, and never one that overtakes the reply of a read
//! made before its write.

mod common;

use std::time::Duration;

use common::resp::FrameConn;
use common::{RedisServer, TempDir, spawn_proxy};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

struct Setup {
    shards: Vec<RedisServer>,
    _dir: TempDir,
    _proxy: common::KillOnDrop,
    port: u16,
}

fn setup(options: &str) -> Setup {
    let shards = vec![RedisServer::start(), RedisServer::start()];
    let dir = TempDir::new("client-tracking");
    let map = common::write_map(&dir, &[&shards[0], &shards[1]]);
    let text = std::fs::read_to_string(&map).unwrap() + options;
    std::fs::write(&map, text).unwrap();
    let (proxy, port) = spawn_proxy(BIN, &map, &[]);
    Setup {
        shards,
        _dir: dir,
        _proxy: proxy,
        port,
    }
}

impl Setup {
    /// A RESP3 client with tracking on (`opts` after `CLIENT TRACKING ON`).
    fn tracking_client(&self, opts: &[&str]) -> FrameConn {
        let mut c = FrameConn::connect(self.port);
        c.call(&["HELLO", "3"]);
        let mut args = vec!["CLIENT", "TRACKING", "ON"];
        args.extend_from_slice(opts);
        assert_eq!(c.call(&args), b"+OK\r\n");
        c
    }

    /// Writes `key` straight to every shard (it lives on one of them; the
    /// others get a harmless copy that nobody reads).
    fn write_direct(&self, key: &str, value: &str) {
        for s in &self.shards {
            let _: () = redis::cmd("SET")
                .arg(key)
                .arg(value)
                .query(&mut s.connection())
                .unwrap();
        }
    }
}

fn push_for(key: &str) -> Vec<u8> {
    format!(
        ">2\r\n$10\r\ninvalidate\r\n*1\r\n${}\r\n{key}\r\n",
        key.len()
    )
    .into_bytes()
}

/// The keys of an `invalidate` push (one or more).
fn pushed_keys(f: &[u8]) -> Vec<String> {
    let body = f
        .strip_prefix(b">2\r\n$10\r\ninvalidate\r\n*".as_slice())
        .unwrap_or_else(|| panic!("not a key invalidation: {}", String::from_utf8_lossy(f)));
    let text = String::from_utf8_lossy(body).into_owned();
    text.split("\r\n")
        .skip(2)
        .step_by(2)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect()
}

fn bulk(v: &str) -> Vec<u8> {
    format!("${}\r\n{v}\r\n", v.len()).into_bytes()
}

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

fn run(options: &str) {
    let s = setup(options);
    let mut c = s.tracking_client(&[]);
    s.write_direct("k", "1");
    assert_eq!(c.call(&["GET", "k"]), bulk("1"));
    // A write straight to the shard: the reader is told.
    s.write_direct("k", "2");
    assert_eq!(c.frame_within(WAIT), Some(push_for("k")));
    // Once per read, as Redis: the next write says nothing until read again.
    s.write_direct("k", "3");
    assert_eq!(c.frame_within(QUIET), None);
    assert_eq!(c.call(&["GET", "k"]), bulk("3"));
    // A write through the proxy by another client.
    let mut other = FrameConn::connect(s.port);
    assert_eq!(other.call(&["SET", "k", "4"]), b"+OK\r\n");
    assert_eq!(c.frame_within(WAIT), Some(push_for("k")));
    // Its own write invalidates too (Redis' default; NOLOOP is refused).
    assert_eq!(c.call(&["GET", "k"]), bulk("4"));
    assert_eq!(c.call(&["SET", "k", "5"]), b"+OK\r\n");
    assert_eq!(c.frame_within(WAIT), Some(push_for("k")));
    // Keys read by MGET over both shards are all tracked.
    let mget = c.call(&["MGET", "a", "b", "c", "d"]);
    assert!(
        mget.starts_with(b"*4\r\n"),
        "{}",
        String::from_utf8_lossy(&mget)
    );
    for k in ["a", "b", "c", "d"] {
        s.write_direct(k, "x");
    }
    let mut told = Vec::new();
    while told.len() < 4
        && let Some(f) = c.frame_within(WAIT)
    {
        told.extend(pushed_keys(&f));
    }
    told.sort();
    assert_eq!(told, ["a", "b", "c", "d"]);
    // FLUSHALL: everything.
    assert_eq!(c.call(&["GET", "k"]), bulk("5"));
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut s.shards[0].connection())
        .unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut s.shards[1].connection())
        .unwrap();
    let f = c
        .frame_within(WAIT)
        .expect("an invalidation after FLUSHALL");
    assert!(
        f == b">2\r\n$10\r\ninvalidate\r\n_\r\n" || f == push_for("k"),
        "{}",
        String::from_utf8_lossy(&f)
    );
}

#[test]
fn readers_are_told_of_every_write_to_what_they_read() {
    run("");
}

#[test]
fn readers_are_told_through_the_near_cache_too() {
    run("options:\n  near_cache_bytes: 1048576\n");
}

#[test]
fn optin_tracks_only_after_caching_yes_and_optout_skips_after_caching_no() {
    let s = setup("");
    let mut c = s.tracking_client(&["OPTIN"]);
    c.call(&["GET", "plain"]);
    assert_eq!(c.call(&["CLIENT", "CACHING", "yes"]), b"+OK\r\n");
    c.call(&["GET", "opted"]);
    s.write_direct("plain", "1");
    s.write_direct("opted", "1");
    assert_eq!(c.frame_within(WAIT), Some(push_for("opted")));
    assert_eq!(c.frame_within(QUIET), None);
    // Redis' errors and TRACKINGINFO.
    assert_eq!(
        c.call(&["CLIENT", "CACHING", "no"]),
        b"-ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.\r\n"
    );
    assert_eq!(
        c.call(&["CLIENT", "TRACKING", "on", "OPTOUT"]),
        b"-ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.\r\n"
    );
    assert_eq!(c.call(&["CLIENT", "GETREDIR"]), b":0\r\n");
    let info = c.call(&["CLIENT", "TRACKINGINFO"]);
    assert!(
        info.starts_with(b"%3\r\n$5\r\nflags\r\n~2\r\n$2\r\non\r\n$5\r\noptin\r\n"),
        "{}",
        String::from_utf8_lossy(&info)
    );
    assert_eq!(c.call(&["CLIENT", "TRACKING", "off"]), b"+OK\r\n");
    assert_eq!(c.call(&["CLIENT", "GETREDIR"]), b":-1\r\n");
    let mut o = s.tracking_client(&["OPTOUT"]);
    assert_eq!(o.call(&["CLIENT", "CACHING", "no"]), b"+OK\r\n");
    o.call(&["GET", "skipped"]);
    o.call(&["GET", "kept"]);
    s.write_direct("skipped", "1");
    s.write_direct("kept", "1");
    assert_eq!(o.frame_within(WAIT), Some(push_for("kept")));
    assert_eq!(o.frame_within(QUIET), None);
}

#[test]
fn what_cannot_be_delivered_is_refused_with_a_reason() {
    let s = setup("");
    let mut c = FrameConn::connect(s.port);
    let r = c.call(&["CLIENT", "TRACKING", "on"]);
    assert!(
        r.starts_with(b"-ERR CLIENT TRACKING through shardgate needs RESP3"),
        "{}",
        String::from_utf8_lossy(&r)
    );
    c.call(&["HELLO", "3"]);
    for opt in ["BCAST", "NOLOOP"] {
        let r = c.call(&["CLIENT", "TRACKING", "on", opt]);
        assert!(
            r.starts_with(format!("-ERR CLIENT TRACKING {opt} is not supported").as_bytes()),
            "{}",
            String::from_utf8_lossy(&r)
        );
    }
    assert_eq!(
        c.call(&["CLIENT", "TRACKING", "on", "OPTIN", "OPTOUT"]),
        b"-ERR You can't specify both OPTIN mode and OPTOUT mode\r\n"
    );
    assert_eq!(
        c.call(&["CLIENT", "CACHING", "yes"]),
        b"-ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled\r\n"
    );
}

/// A client-side cache kept as a real client keeps it (reads fill it,
/// pushes empty it) while a writer straight to the shard changes the keys:
/// once the writer stops and the pushes are in, every cached value is the
/// shard's.
#[test]
fn a_client_side_cache_never_keeps_a_stale_value() {
    let s = std::sync::Arc::new(setup(""));
    const KEYS: usize = 8;
    for k in 0..KEYS {
        s.write_direct(&format!("c{k}"), "0");
    }
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 1..=2000 {
                s.write_direct(&format!("c{}", i % KEYS), &i.to_string());
            }
        })
    };
    let mut c = s.tracking_client(&[]);
    let mut cache: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let apply = |cache: &mut std::collections::HashMap<String, Vec<u8>>, f: &[u8]| {
        let body = f
            .strip_prefix(b">2\r\n$10\r\ninvalidate\r\n".as_slice())
            .unwrap_or_else(|| panic!("unexpected push {}", String::from_utf8_lossy(f)));
        if body == b"_\r\n" {
            cache.clear();
            return;
        }
        // *N then $len key pairs.
        let text = String::from_utf8_lossy(body).into_owned();
        let lines: Vec<&str> = text.split("\r\n").collect();
        for key in lines.iter().skip(2).step_by(2) {
            if !key.is_empty() {
                cache.remove(*key);
            }
        }
    };
    let mut reads = 0;
    while !writer.is_finished() {
        for k in 0..KEYS {
            let key = format!("c{k}");
            if cache.contains_key(&key) {
                continue;
            }
            c.send(&["GET", &key]);
            // Pushes may come before the reply (never after it for a
            // write made after the read: those follow the reply).
            loop {
                let f = c.frame();
                if f.first() == Some(&b'>') {
                    apply(&mut cache, &f);
                    continue;
                }
                cache.insert(key.clone(), f);
                reads += 1;
                break;
            }
        }
        while let Some(f) = c.frame_within(Duration::from_millis(1)) {
            apply(&mut cache, &f);
        }
    }
    writer.join().unwrap();
    while let Some(f) = c.frame_within(Duration::from_millis(500)) {
        apply(&mut cache, &f);
    }
    let mut direct = FrameConn::connect(s.port);
    for (key, cached) in &cache {
        assert_eq!(
            cached,
            &direct.call(&["GET", key]),
            "{key} is stale in the client's cache"
        );
    }
    assert!(reads > KEYS, "only {reads} reads");
}

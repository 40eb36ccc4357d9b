//! Pub/sub through the proxy against real redis-server shards: subscribers
//! keep every message across rebalances (slots and their channels move
//! while publishers run), follow a shard's restart, share one backend
//! connection per shard, and a subscriber that stops reading is closed
//! instead of growing the proxy's memory. Exact replies against
//! redis-server are in `integration/test_pubsub.py`.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::cluster::{Cluster, Spec};
use common::rebalance::{Proxy, map_yaml, wait_done, write};
use common::{RedisServer, TempDir};
use shardgate::protocol::{request::encode_command, scan};
use shardgate::proxy::ClientConfig;

/// Reads every message a subscriber gets until `stop` and a quiet second.
fn collect(mut ps: redis::PubSub<'_>, stop: &AtomicBool) -> Vec<(String, String, String)> {
    ps.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let mut got = Vec::new();
    loop {
        match ps.get_message() {
            Ok(m) => {
                let pattern: String = m.get_pattern().unwrap_or_default();
                got.push((
                    pattern,
                    m.get_channel_name().to_owned(),
                    m.get_payload::<String>().unwrap(),
                ));
            }
            Err(e) if e.is_timeout() => {
                if stop.load(Ordering::Relaxed) {
                    return got;
                }
            }
            Err(e) => panic!("subscriber failed: {e}"),
        }
    }
}

/// Reads `n` reply frames from a raw connection.
fn read_frames(s: &mut TcpStream, n: usize) -> Vec<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 4096];
    while frames.len() < n {
        match scan::frame_len(&buf) {
            Ok(Some(len)) => frames.push(buf.drain(..len).collect()),
            Ok(None) => {
                let got = s.read(&mut chunk).unwrap();
                assert!(got > 0, "closed after {} frames", frames.len());
                buf.extend_from_slice(&chunk[..got]);
            }
            Err(e) => panic!("bad frame: {e}"),
        }
    }
    frames
}

/// Channels on every shard: 60 names spread by hash, plus hash-tagged ones.
fn channels() -> Vec<String> {
    (0..60).map(|i| format!("chan:{i}")).collect()
}

#[test]
fn subscribers_get_every_message_while_slots_move() {
    let servers: Vec<RedisServer> = (0..4).map(|_| RedisServer::start()).collect();
    let dir = TempDir::new("pubsub-rebalance");
    let names = ["s0", "s1", "s2", "s3"];
    let shards = |idx: &[usize]| -> Vec<(&str, &RedisServer)> {
        idx.iter().map(|&i| (names[i], &servers[i])).collect()
    };
    let m1 = write(dir.path(), "m1.yaml", &map_yaml(&shards(&[0, 1, 2])));
    let m2 = write(dir.path(), "m2.yaml", &map_yaml(&shards(&[0, 1, 2, 3])));
    let m3 = write(dir.path(), "m3.yaml", &map_yaml(&shards(&[0, 2, 3])));
    let proxy = Proxy::start(dir.path(), &m1);
    let chans = channels();

    // One subscriber of every channel, one of a pattern over them.
    let client = proxy.client();
    let stop = Arc::new(AtomicBool::new(false));
    let spawn_subscriber = |pattern: bool| {
        let (client, stop, chans) = (client.clone(), stop.clone(), chans.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let mut conn = client.get_connection().unwrap();
            let mut ps = conn.as_pubsub();
            if pattern {
                ps.psubscribe("chan:*").unwrap();
            } else {
                for c in &chans {
                    ps.subscribe(c).unwrap();
                }
            }
            ready_tx.send(()).unwrap();
            collect(ps, &stop)
        });
        ready_rx.recv().unwrap();
        handle
    };
    let subscriber = spawn_subscriber(false);
    let pattern = spawn_subscriber(true);

    // Publishers run through both rebalances; each PUBLISH must reach
    // both subscribers (PUBLISH answers 2).
    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = {
        let publishing = publishing.clone();
        let chans = chans.clone();
        let mut conn = client.get_connection().unwrap();
        std::thread::spawn(move || {
            let mut sent: HashMap<String, u64> = HashMap::new();
            let mut short = Vec::new();
            let mut n = 0u64;
            while publishing.load(Ordering::Relaxed) {
                let ch = &chans[(n % chans.len() as u64) as usize];
                let seq = sent.entry(ch.clone()).or_default();
                let receivers: i64 = redis::cmd("PUBLISH")
                    .arg(ch)
                    .arg(seq.to_string())
                    .query(&mut conn)
                    .unwrap();
                if receivers != 2 {
                    short.push(format!("{ch} #{seq}: {receivers} receivers"));
                }
                *seq += 1;
                n += 1;
            }
            (sent, short)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut admin = proxy.admin();
    for map in [&m2, &m3] {
        let started = admin.text(&[b"REBALANCE", b"FILE", map.to_str().unwrap().as_bytes()]);
        assert!(started.starts_with("OK rebalance started"), "{started}");
        let p = wait_done(&proxy);
        assert_eq!(p["verify"], "ok", "{p:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    publishing.store(false, Ordering::Relaxed);
    let (sent, short) = publisher.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let by_channel = subscriber.join().unwrap();
    let by_pattern = pattern.join().unwrap();

    let total: u64 = sent.values().sum();
    assert!(total > 500, "the publisher ran ({total} messages)");
    assert!(
        short.is_empty(),
        "{} of {total} PUBLISH reached fewer than both subscribers, first: {:?}\n{}",
        short.len(),
        &short[..short.len().min(5)],
        proxy.log_text()
    );
    // Every message once, in order, on both subscriptions.
    for (what, got) in [("channel", by_channel), ("pattern", by_pattern)] {
        let mut per: HashMap<String, Vec<u64>> = HashMap::new();
        for (_, ch, payload) in got {
            per.entry(ch).or_default().push(payload.parse().unwrap());
        }
        for (ch, n) in &sent {
            let want: Vec<u64> = (0..*n).collect();
            let got = per.remove(ch).unwrap_or_default();
            assert_eq!(got, want, "{what} subscriber of {ch}");
        }
        assert!(
            per.is_empty(),
            "messages of channels nobody published: {per:?}"
        );
    }
    // The removed shard's subscriptions were dropped after the grace.
    std::thread::sleep(shardgate::proxy::pubsub::RETIRE_AFTER + Duration::from_secs(2));
    let mut s1 = servers[1].connection();
    let left: Vec<String> = redis::cmd("PUBSUB").arg("CHANNELS").query(&mut s1).unwrap();
    assert!(left.is_empty(), "the removed shard still holds {left:?}");
}

#[test]
fn a_subscriber_follows_its_shard_through_a_restart() {
    let mut c = Cluster::start(Spec {
        shards: 2,
        ..Spec::default()
    });
    let ch = (0..)
        .map(|i| format!("restart:{i}"))
        .find(|k| c.shard_of(k) == 0)
        .unwrap();
    let mut sub = c.conn();
    let mut ps = sub.as_pubsub();
    ps.subscribe(&ch).unwrap();
    ps.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut conn = c.conn();
    let n: i64 = redis::cmd("PUBLISH")
        .arg(&ch)
        .arg("before")
        .query(&mut conn)
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        ps.get_message().unwrap().get_payload::<String>().unwrap(),
        "before"
    );

    c.primaries[0].restart();
    let started = Instant::now();
    // The hub reconnects and subscribes again; until then a PUBLISH finds
    // no subscriber (or fails while the shard is down).
    let mut receivers = 0;
    while receivers != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the subscriber never came back after the shard restarted"
        );
        std::thread::sleep(Duration::from_millis(50));
        receivers = redis::cmd("PUBLISH")
            .arg(&ch)
            .arg("after")
            .query(&mut conn)
            .unwrap_or(0);
    }
    let m = ps.get_message().unwrap();
    assert_eq!(m.get_payload::<String>().unwrap(), "after");
    eprintln!("subscriber back {:?} after the restart", started.elapsed());
}

#[test]
fn many_subscribers_share_one_connection_per_shard() {
    let c = Cluster::start(Spec {
        shards: 3,
        ..Spec::default()
    });
    let conns: Vec<TcpStream> = (0..100)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", c.proxy_port)).unwrap();
            let mut req = BytesMut::new();
            let own = format!("own:{i}");
            encode_command(&[b"SUBSCRIBE", b"shared", own.as_bytes()], &mut req);
            encode_command(&[b"PSUBSCRIBE", b"own:*"], &mut req);
            s.write_all(&req).unwrap();
            read_frames(&mut s, 3);
            s
        })
        .collect();
    let mut conn = c.conn();
    let n: i64 = redis::cmd("PUBLISH")
        .arg("shared")
        .arg("x")
        .query(&mut conn)
        .unwrap();
    assert_eq!(n, 100, "every subscriber counted");
    let n: i64 = redis::cmd("PUBLISH")
        .arg("own:7")
        .arg("x")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        n, 101,
        "the channel's subscriber and 100 pattern subscribers"
    );
    for server in &c.primaries {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut server.connection())
            .unwrap();
        assert_eq!(
            list.lines().count(),
            1,
            "one subscriber connection per shard:\n{list}"
        );
    }
    let numsub: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("shared")
        .query(&mut conn)
        .unwrap();
    assert_eq!(numsub, vec![("shared".to_owned(), 100)]);
    // Closing the clients releases every subscription on the shards.
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: usize = c
            .primaries
            .iter()
            .map(|s| {
                let chans: Vec<String> = redis::cmd("PUBSUB")
                    .arg("CHANNELS")
                    .query(&mut s.connection())
                    .unwrap();
                let pats: i64 = redis::cmd("PUBSUB")
                    .arg("NUMPAT")
                    .query(&mut s.connection())
                    .unwrap();
                chans.len() + pats as usize
            })
            .sum();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} subscriptions left on the shards"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_subscriber_that_stops_reading_is_closed() {
    let c = Cluster::start(Spec {
        shards: 2,
        client: ClientConfig {
            pubsub_output_limit: 256 * 1024,
            ..ClientConfig::default()
        },
        ..Spec::default()
    });
    // A raw subscriber that never reads after its confirmation.
    let mut stuck = TcpStream::connect(("127.0.0.1", c.proxy_port)).unwrap();
    stuck
        .write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nbulk\r\n")
        .unwrap();
    let mut confirm = [0u8; 64];
    let n = stuck.read(&mut confirm).unwrap();
    assert!(confirm[..n].starts_with(b"*3\r\n$9\r\nsubscribe"));
    // A healthy subscriber of the same channel.
    let client = c.client();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    // The publisher stays at most `AHEAD` messages (80 KB) ahead of the
    // healthy subscriber, so that one never nears the limit, however the
    // machine schedules its thread; the stuck one falls behind by all.
    const AHEAD: usize = 8;
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    let reader = std::thread::spawn(move || {
        let mut ok = client.get_connection().unwrap();
        let mut ps = ok.as_pubsub();
        ps.subscribe("bulk").unwrap();
        ps.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        ready_tx.send(()).unwrap();
        let mut count = 0;
        while count < 2000 {
            let m = ps
                .get_message()
                .expect("the reading subscriber keeps its messages");
            assert_eq!(m.get_payload_bytes().len(), 10_000);
            count += 1;
            seen.store(count, Ordering::Release);
        }
        count
    });
    ready_rx.recv().unwrap();
    let mut conn = c.conn();
    let payload = vec![b'x'; 10_000];
    for sent in 0..2000usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sent.saturating_sub(received.load(Ordering::Acquire)) > AHEAD {
            assert!(
                Instant::now() < deadline && !reader.is_finished(),
                "the healthy subscriber stopped at {} messages",
                received.load(Ordering::Acquire)
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let _: i64 = redis::cmd("PUBLISH")
            .arg("bulk")
            .arg(&payload)
            .query(&mut conn)
            .unwrap();
    }
    assert_eq!(reader.join().unwrap(), 2000);
    // 20 MB were published: far past the 256 KiB limit plus what the
    // sockets hold. The stuck subscriber was closed: reading now drains
    // what the kernel buffered, then ends.
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut drained = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stuck.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the stuck subscriber was not closed ({drained} bytes read): {e}"),
        }
    }
    assert!(
        drained < 20_000_000,
        "the stuck subscriber got everything ({drained} bytes)"
    );
}

/// Once an (P|S)UNSUBSCRIBE is answered, a PUBLISH no longer counts that
/// subscriber, as in Redis: the reply waits until the shard dropped the
/// hub's subscription. Every kind, many rounds (the race was a fraction of
/// a millisecond wide).
#[test]
fn a_publish_after_an_unsubscribe_counts_nobody() {
    let c = Cluster::start(Spec {
        shards: 2,
        ..Spec::default()
    });
    let mut sub = TcpStream::connect(("127.0.0.1", c.proxy_port)).unwrap();
    let mut conn = c.conn();
    let send = |sub: &mut TcpStream, args: &[&str]| {
        let mut out = BytesMut::new();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        encode_command(&args, &mut out);
        sub.write_all(&out).unwrap();
        read_frames(sub, 1);
    };
    let kinds = [
        ("SUBSCRIBE", "UNSUBSCRIBE", "PUBLISH", ""),
        ("SSUBSCRIBE", "SUNSUBSCRIBE", "SPUBLISH", ""),
        ("PSUBSCRIBE", "PUNSUBSCRIBE", "PUBLISH", "*"),
    ];
    for round in 0..100 {
        for (on, off, publish, suffix) in kinds {
            let channel = format!("{{u{round}}}{on}");
            let topic = format!("{channel}{suffix}");
            send(&mut sub, &[on, &topic]);
            let n: i64 = redis::cmd(publish)
                .arg(&channel)
                .arg("m")
                .query(&mut conn)
                .unwrap();
            assert_eq!(n, 1, "{publish} after {on} {topic}");
            // The message, then the unsubscription.
            read_frames(&mut sub, 1);
            send(&mut sub, &[off, &topic]);
            let n: i64 = redis::cmd(publish)
                .arg(&channel)
                .arg("m")
                .query(&mut conn)
                .unwrap();
            assert_eq!(n, 0, "{publish} after {off} {topic} (round {round})");
        }
    }
}

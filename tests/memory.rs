//! Memory goes back to the operating system after a burst: the binary
//! runs on jemalloc with background purging (see `src/main.rs`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{RedisServer, TempDir, spawn_proxy};

/// Resident set size of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn rss_falls_back_after_a_burst_of_big_requests() {
    let shard = RedisServer::start();
    let dir = TempDir::new("memory");
    let map = common::write_map(&dir, &[&shard]);
    let (proxy, port) = spawn_proxy(env!("CARGO_BIN_EXE_shardgate"), &map, &["--threads", "2"]);
    let pid = proxy.0.id();
    std::thread::sleep(Duration::from_millis(300));
    let baseline = rss_kib(pid);
    // Two bursts of 64 clients at once, each client pipelining 32 SETs of
    // 100 to 500 KiB values (the first burst also raises glibc's
    // dynamic mmap threshold, after which such buffers come from its heaps
    // and stay there) and then reading the replies.
    let burst = |round: usize| -> Vec<std::thread::JoinHandle<()>> {
        (0..64)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let size = (100 << 10) + ((i * 13) << 10) % (400 << 10);
                    let value = vec![b'a' + (i % 26) as u8; size];
                    let mut pipeline = Vec::new();
                    for j in 0..32 {
                        let key = format!("big{round}:{i}:{j}");
                        pipeline.extend_from_slice(
                            format!(
                                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
                                key.len(),
                                value.len()
                            )
                            .as_bytes(),
                        );
                        pipeline.extend_from_slice(&value);
                        pipeline.extend_from_slice(b"\r\n");
                    }
                    s.write_all(&pipeline).unwrap();
                    // 32 one-line replies (`+OK`, or an error if a loaded
                    // machine times a write out: memory is what is tested).
                    let mut replies = Vec::new();
                    let mut buf = [0u8; 4096];
                    while replies.iter().filter(|&&b| b == b'\n').count() < 32 {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => replies.extend_from_slice(&buf[..n]),
                        }
                    }
                    assert!(replies.starts_with(b"+") || replies.starts_with(b"-"));
                })
            })
            .collect()
    };
    // RSS sampled all along the bursts (the peak may last only moments).
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    for c in burst(0) {
        c.join().unwrap();
    }
    let clients = burst(1);
    for c in clients {
        c.join().unwrap();
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap().max(rss_kib(pid)).max(baseline);
    let grew = peak.saturating_sub(baseline);
    assert!(
        grew > 32 << 10,
        "the burst should have cost memory: {baseline} -> {peak} KiB"
    );
    // Back to within an eighth of the growth within a minute (glibc malloc
    // stayed at about a fifth here; jemalloc purges to near the baseline).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = rss_kib(pid);
        if now <= baseline + grew / 8 {
            eprintln!("rss: baseline {baseline} KiB, peak {peak} KiB, after {now} KiB");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rss stayed at {now} KiB (baseline {baseline}, peak {peak})"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A raw request head declaring a `len`-byte value for SET.
fn set_head(key: &str, len: usize) -> Vec<u8> {
    format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${len}\r\n", key.len()).into_bytes()
}

/// The value of counter `name{reason="..."}` in the proxy's metrics.
fn limit_closes(metrics_port: u16, reason: &str) -> u64 {
    let body = common::rebalance::ureq_get(metrics_port);
    let needle = format!("shardgate_client_limit_closes_total{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_client_that_does_not_read_its_replies_is_closed_at_its_output_limit() {
    let shard = RedisServer::start();
    let dir = TempDir::new("output-limit");
    let map = common::write_map(&dir, &[&shard]);
    let metrics_port = common::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let (proxy, port) = spawn_proxy(
        env!("CARGO_BIN_EXE_shardgate"),
        &map,
        &[
            "--output-buffer-hard-limit",
            "33554432",
            "--metrics-listen",
            &metrics,
        ],
    );
    let pid = proxy.0.id();
    // 16 values of 1 MiB: each MGET answers 16 MiB.
    let mut direct = shard.connection();
    let value = vec![b'v'; 1 << 20];
    for i in 0..16 {
        let _: () = redis::cmd("SET")
            .arg(format!("{{o}}big{i}"))
            .arg(&value)
            .query(&mut direct)
            .unwrap();
    }
    let baseline = rss_kib(pid);
    let out_bytes = |direct: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(direct).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    let sent_before = out_bytes(&mut direct);
    // 100 pipelined MGETs (1.6 GiB of replies), never read.
    let mut hostile = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut mget = b"*17\r\n$4\r\nMGET\r\n".to_vec();
    for i in 0..16 {
        let key = format!("{{o}}big{i}");
        mget.extend_from_slice(format!("${}\r\n{key}\r\n", key.len()).as_bytes());
    }
    let pipeline: Vec<u8> = mget.repeat(100);
    hostile.write_all(&pipeline).unwrap();
    // Meanwhile another client's commands keep working.
    let mut other = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut peak = baseline;
    while limit_closes(metrics_port, "output_buffer") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the client that reads nothing was never closed"
        );
        let t = Instant::now();
        let _: () = redis::cmd("SET")
            .arg("small")
            .arg("x")
            .query(&mut other)
            .unwrap();
        let v: String = redis::cmd("GET").arg("small").query(&mut other).unwrap();
        assert_eq!(v, "x");
        slowest = slowest.max(t.elapsed());
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..50 {
        let t = Instant::now();
        let v: String = redis::cmd("GET").arg("small").query(&mut other).unwrap();
        assert_eq!(v, "x");
        slowest = slowest.max(t.elapsed());
        peak = peak.max(rss_kib(pid));
    }
    eprintln!(
        "closed after {:?}; rss {baseline} -> peak {peak} KiB; slowest SET+GET of the other client {slowest:?}",
        started.elapsed()
    );
    // The shard sent only what the client's in-flight window allowed (a
    // few replies), not the 1.6 GiB asked for: that is what kept the other
    // client's commands, behind those replies on the shared connection,
    // from waiting.
    let sent = out_bytes(&mut direct) - sent_before;
    eprintln!("the shard sent {} MiB", sent >> 20);
    assert!(sent < 400 << 20, "the shard sent {} MiB", sent >> 20);
    assert!(
        slowest < Duration::from_secs(1),
        "another client's SET+GET waited {slowest:?} behind the big replies"
    );
    // Without the limit the proxy held the replies (gigabytes); with it,
    // little more than the limit and what is in flight.
    assert!(
        peak < baseline + (400 << 10),
        "rss grew from {baseline} to {peak} KiB"
    );
    // The hostile connection is closed: reading drains what the kernel
    // buffered, then ends.
    hostile
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match hostile.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the client over its output limit is still open: {e}"),
        }
    }
}

#[test]
fn client_buffers_are_bounded_across_clients() {
    let shard = RedisServer::start();
    let dir = TempDir::new("maxmemory-clients");
    let map = common::write_map(&dir, &[&shard]);
    let metrics_port = common::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let (proxy, port) = spawn_proxy(
        env!("CARGO_BIN_EXE_shardgate"),
        &map,
        &[
            "--maxmemory-clients",
            "67108864",
            "--metrics-listen",
            &metrics,
        ],
    );
    let pid = proxy.0.id();
    std::thread::sleep(Duration::from_millis(300));
    let baseline = rss_kib(pid);
    // 200 clients each declare a 50 MB value and send 2 MiB of it: 400 MiB
    // of unparsed requests without a bound.
    let chunk = vec![b'x'; 2 << 20];
    let mut clients = Vec::new();
    let mut peak = baseline;
    for i in 0..200 {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        let _ = s.write_all(&set_head(&format!("huge{i}"), 50_000_000));
        // Closed clients make writes fail: that is the bound at work.
        let _ = s.write_all(&chunk);
        clients.push(s);
        peak = peak.max(rss_kib(pid));
    }
    std::thread::sleep(Duration::from_millis(500));
    peak = peak.max(rss_kib(pid));
    let closed = limit_closes(metrics_port, "maxmemory_clients");
    eprintln!("rss {baseline} -> peak {peak} KiB; {closed} clients closed");
    assert!(closed > 100, "only {closed} clients were closed");
    assert!(
        peak < baseline + (200 << 10),
        "rss grew from {baseline} to {peak} KiB with a 64 MiB bound"
    );
    // Ordinary clients are served throughout.
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("fine")
        .arg("1")
        .query(&mut c)
        .unwrap();
    let v: String = redis::cmd("GET").arg("fine").query(&mut c).unwrap();
    assert_eq!(v, "1");
    drop(clients);
}

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

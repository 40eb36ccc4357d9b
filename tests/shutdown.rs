//! Graceful shutdown of the real binary under load: on SIGTERM the proxy
//! stops accepting, finishes what it already sent to the shards and exits
//! within the grace period; no reply is lost for a command that ran.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{RedisServer, TempDir, spawn_proxy, write_map};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");
const CLIENTS: usize = 6;
const BATCH: usize = 50;

/// Sends pipelined batches of `INCR key` until the proxy closes the
/// connection; returns how many `:n` replies arrived.
fn hammer(port: u16, key: &str, start: Arc<Barrier>) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let one = format!("*2\r\n$4\r\nINCR\r\n${}\r\n{key}\r\n", key.len());
    let batch = one.repeat(BATCH);
    start.wait();
    let mut replies = 0u64;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if s.write_all(batch.as_bytes()).is_err() {
            break;
        }
        // Read this batch's replies (or whatever arrives before the close).
        let mut got = 0;
        while got < BATCH {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return replies + count(&buf),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    let complete = buf.iter().filter(|&&b| b == b'\n').count();
                    got = complete;
                }
            }
        }
        assert!(
            buf.starts_with(b":"),
            "unexpected reply {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(80)])
        );
        replies += count(&buf);
        buf.clear();
    }
    replies + count(&buf)
}

/// Complete integer replies in `buf`.
fn count(buf: &[u8]) -> u64 {
    buf.split(|&b| b == b'\n')
        .filter(|line| line.starts_with(b":") && line.ends_with(b"\r"))
        .count() as u64
}

#[test]
fn sigterm_under_load_loses_no_reply_of_an_executed_command() {
    let shard = RedisServer::start();
    let dir = TempDir::new("shutdown");
    let map = write_map(&dir, &[&shard]);
    let (mut child, port) = spawn_proxy(BIN, &map, &["--shutdown-grace-secs", "5"]);

    let start = Arc::new(Barrier::new(CLIENTS + 1));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let start = start.clone();
            std::thread::spawn(move || hammer(port, &format!("counter{i}"), start))
        })
        .collect();
    start.wait();
    std::thread::sleep(Duration::from_millis(500));
    let sent_at = Instant::now();
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();

    let received: Vec<u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent_at.elapsed() < Duration::from_secs(15),
            "proxy did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");

    // Every INCR that ran on the shard had its reply delivered.
    let mut direct = shard.connection();
    for (i, got) in received.iter().enumerate() {
        let ran: u64 = redis::cmd("GET")
            .arg(format!("counter{i}"))
            .query::<Option<u64>>(&mut direct)
            .unwrap()
            .unwrap_or(0);
        assert!(*got > 0, "client {i} got no reply before the shutdown");
        assert_eq!(
            ran, *got,
            "client {i}: {ran} INCRs ran, {got} replies arrived"
        );
    }
    // And the listener is gone.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

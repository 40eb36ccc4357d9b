//! Pub/sub load generator for `scripts/bench-pubsub.sh`: subscribers on
//! several channels and publishers pipelining PUBLISH against one address
//! (a redis-server or shardgate); prints one line of JSON with what was
//! published and delivered.
//!
//!   cargo run --release --example pubsub_load -- ADDR SUBSCRIBERS CHANNELS PUBLISHERS PIPELINE SECONDS SIZE

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shardgate::protocol::request::encode_command;
use shardgate::protocol::scan;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Reads whole frames from `s` into `buf`, calling `each` per frame.
async fn read_frames(
    s: &mut TcpStream,
    buf: &mut BytesMut,
    mut want: usize,
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    while want > 0 {
        while let Ok(Some(n)) = scan::frame_len(buf) {
            each(&buf[..n]);
            let _ = buf.split_to(n);
            want -= 1;
            if want == 0 {
                return Ok(());
            }
        }
        if s.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6379".into());
    let subscribers = arg(2, 50);
    let channels = arg(3, 10).max(1);
    let publishers = arg(4, 4);
    let pipeline = arg(5, 16).max(1) as usize;
    let seconds = arg(6, 5);
    let size = arg(7, 64) as usize;

    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let mut s = TcpStream::connect(&addr).await?;
        let ch = format!("bench:{}", i % channels);
        let mut req = BytesMut::new();
        encode_command(&[b"SUBSCRIBE", ch.as_bytes()], &mut req);
        s.write_all(&req).await?;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        read_frames(&mut s, &mut buf, 1, |_| {}).await?;
        let delivered = delivered.clone();
        let stop = stop.clone();
        subs.push(tokio::spawn(async move {
            loop {
                while let Ok(Some(n)) = scan::frame_len(&buf) {
                    let _ = buf.split_to(n);
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                match tokio::time::timeout(Duration::from_millis(200), s.read_buf(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    _ => {}
                }
            }
        }));
    }
    let published = Arc::new(AtomicU64::new(0));
    let payload = vec![b'x'; size];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut pubs = Vec::new();
    for p in 0..publishers {
        let mut s = TcpStream::connect(&addr).await?;
        let published = published.clone();
        let payload = payload.clone();
        pubs.push(tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut n = p;
            while Instant::now() < deadline {
                let mut req = BytesMut::new();
                for _ in 0..pipeline {
                    let ch = format!("bench:{}", n % channels);
                    encode_command(&[b"PUBLISH", ch.as_bytes(), &payload], &mut req);
                    n += 1;
                }
                if s.write_all(&req).await.is_err() {
                    return;
                }
                if read_frames(&mut s, &mut buf, pipeline, |_| {})
                    .await
                    .is_err()
                {
                    return;
                }
                published.fetch_add(pipeline as u64, Ordering::Relaxed);
            }
        }));
    }
    for p in pubs {
        let _ = p.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Let what is in flight arrive, then stop the subscribers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for s in subs {
        let _ = s.await;
    }
    let published = published.load(Ordering::Relaxed);
    let delivered = delivered.load(Ordering::Relaxed);
    println!(
        "{{\"published\": {published}, \"delivered\": {delivered}, \"expected\": {}, \"seconds\": {elapsed:.3}}}",
        published * subscribers / channels
    );
    Ok(())
}

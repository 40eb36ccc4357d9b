//! A read load with Zipf-distributed keys, for `scripts/bench-cache.sh`.
//!
//! `zipf_load ADDR CONNECTIONS KEYS SECONDS S [PIPELINE]`: CONNECTIONS
//! clients each send `GET key:RANK` (RANK drawn from 0..KEYS with
//! probability proportional to 1 / (RANK + 1)^S), PIPELINE requests at a
//! time, for SECONDS; prints `{"ops": N, "seconds": T, "nil": M}` as JSON.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Cumulative Zipf probabilities of ranks 0..keys.
fn zipf_cdf(keys: usize, s: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=keys).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

/// xorshift64*: a uniform f64 in [0, 1).
fn uniform(state: &mut u64) -> f64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    let x = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Bytes of complete RESP replies at the front of `buf` (bulk strings and
/// nils only, as GET answers), and how many of them were nil.
fn complete_replies(buf: &[u8], want: usize) -> Option<(usize, usize, usize)> {
    let (mut at, mut n, mut nil) = (0, 0, 0);
    while n < want {
        let line = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let len: i64 = std::str::from_utf8(&buf[at + 1..line]).ok()?.parse().ok()?;
        if len < 0 {
            nil += 1;
            at = line + 2;
        } else {
            let end = line + 2 + len as usize + 2;
            if end > buf.len() {
                return None;
            }
            at = end;
        }
        n += 1;
    }
    Some((at, n, nil))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "zipf_load ADDR CONNECTIONS KEYS SECONDS S [PIPELINE]";
    let addr = args.get(1).expect(usage).clone();
    let conns: usize = args.get(2).expect(usage).parse().expect(usage);
    let keys: usize = args.get(3).expect(usage).parse().expect(usage);
    let seconds: f64 = args.get(4).expect(usage).parse().expect(usage);
    let s: f64 = args.get(5).expect(usage).parse().expect(usage);
    let pipeline: usize = args.get(6).map_or(1, |p| p.parse().expect(usage));
    let cdf = std::sync::Arc::new(zipf_cdf(keys, s));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|i| {
            let (addr, cdf) = (addr.clone(), cdf.clone());
            tokio::spawn(async move {
                let mut sock = TcpStream::connect(&addr).await.expect("connect");
                sock.set_nodelay(true).expect("nodelay");
                let mut rng =
                    0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
                let (mut ops, mut nils) = (0u64, 0u64);
                let mut out = Vec::new();
                let mut buf = Vec::with_capacity(64 * 1024);
                let mut chunk = vec![0u8; 64 * 1024];
                while Instant::now() < until {
                    out.clear();
                    for _ in 0..pipeline {
                        let u = uniform(&mut rng);
                        let rank = cdf.partition_point(|c| *c < u).min(cdf.len() - 1);
                        let key = format!("key:{rank}");
                        out.extend_from_slice(
                            format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes(),
                        );
                    }
                    sock.write_all(&out).await.expect("write");
                    loop {
                        if let Some((used, n, nil)) = complete_replies(&buf, pipeline) {
                            buf.drain(..used);
                            ops += n as u64;
                            nils += nil as u64;
                            break;
                        }
                        let r = sock.read(&mut chunk).await.expect("read");
                        assert!(r > 0, "server closed the connection");
                        buf.extend_from_slice(&chunk[..r]);
                    }
                }
                (ops, nils)
            })
        })
        .collect();
    let (mut ops, mut nils) = (0, 0);
    for t in tasks {
        let (o, n) = t.await.expect("client task");
        ops += o;
        nils += n;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{{\"ops\": {ops}, \"seconds\": {secs:.3}, \"nil\": {nils}}}");
}

//! Our hand-written RESP parsing vs `redis-protocol` 6 on the proxy's hot
//! paths: client requests (`parse_request` vs `resp2::decode_bytes_mut`) and
//! backend reply framing (`frame_len` vs `resp2/resp3::decode_range`).
//!
//! Run: `cargo bench --bench protocol -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use redis_protocol::{resp2, resp3};
use shardgate::protocol::request::encode_command;
use shardgate::protocol::scan::frame_len;
use shardgate::protocol::{Limits, parse_request};

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_command(args, &mut out);
    out.to_vec()
}

/// Parses every request in `buf` with our parser; returns the count.
fn ours_all(buf: &mut BytesMut, limits: &Limits) -> usize {
    let mut n = 0;
    while let Ok(Some(req)) = parse_request(buf, limits) {
        black_box(&req);
        n += 1;
    }
    n
}

/// Decodes every frame in `buf` with redis-protocol; returns the count.
fn theirs_all(buf: &mut BytesMut) -> usize {
    let mut n = 0;
    while let Ok(Some(frame)) = resp2::decode::decode_bytes_mut(buf) {
        black_box(&frame);
        n += 1;
    }
    n
}

fn requests(c: &mut Criterion) {
    let limits = Limits::default();

    let get = encode(&[b"GET", b"user:1000:profile"]);
    let mut pipeline = Vec::new();
    for i in 0..100 {
        let key = format!("key:{i:06}");
        pipeline.extend(encode(&[
            b"SET",
            key.as_bytes(),
            b"some-value-of-32-bytes-length-xx",
        ]));
    }
    let big_value = vec![b'v'; 1 << 20];
    let big_set = encode(&[b"SET", b"big", &big_value]);

    let mut g = c.benchmark_group("request");
    for (name, input) in [("get", &get), ("pipeline_100_set", &pipeline)] {
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(format!("{name}/shardgate"), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&input[..]),
                |buf| ours_all(buf, &limits),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("{name}/redis-protocol"), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&input[..]),
                theirs_all,
                BatchSize::SmallInput,
            )
        });
    }

    // A 1 MiB SET arriving in 64 KiB reads: parse after every read, as the
    // connection loop does (the copy into the buffer is in both timings).
    g.throughput(Throughput::Bytes(big_set.len() as u64));
    g.bench_function("set_1mib_64k_reads/shardgate", |b| {
        let mut buf = BytesMut::with_capacity(big_set.len());
        b.iter(|| {
            buf.clear();
            let mut n = 0;
            for chunk in big_set.chunks(64 * 1024) {
                buf.extend_from_slice(chunk);
                n += ours_all(&mut buf, &limits);
            }
            n
        })
    });
    g.bench_function("set_1mib_64k_reads/redis-protocol", |b| {
        let mut buf = BytesMut::with_capacity(big_set.len());
        b.iter(|| {
            buf.clear();
            let mut n = 0;
            for chunk in big_set.chunks(64 * 1024) {
                buf.extend_from_slice(chunk);
                n += theirs_all(&mut buf);
            }
            n
        })
    });

    // One re-parse of the same SET half received: the cost per read of an
    // incomplete frame, without the copy. Neither parser touches the buffer.
    let mut half = BytesMut::from(&big_set[..big_set.len() / 2]);
    g.throughput(Throughput::Elements(1));
    g.bench_function("set_1mib_half_received/shardgate", |b| {
        b.iter(|| parse_request(black_box(&mut half), &limits).map(|r| r.is_none()))
    });
    g.bench_function("set_1mib_half_received/redis-protocol", |b| {
        b.iter(|| resp2::decode::decode_bytes_mut(black_box(&mut half)).map(|r| r.is_none()))
    });
    g.finish();
}

fn replies(c: &mut Criterion) {
    let ok = b"+OK\r\n".to_vec();
    let mut bulk_1k = b"$1024\r\n".to_vec();
    bulk_1k.extend(vec![b'x'; 1024]);
    bulk_1k.extend_from_slice(b"\r\n");
    // An MGET / LRANGE style reply.
    let mut array_100 = b"*100\r\n".to_vec();
    for i in 0..100 {
        let v = format!("value-{i:04}");
        array_100.extend(format!("${}\r\n{v}\r\n", v.len()).into_bytes());
    }
    // A RESP3 HGETALL style reply.
    let mut map_50 = b"%50\r\n".to_vec();
    for i in 0..50 {
        map_50.extend(format!("$7\r\nfield{i:02}\r\n:{i}\r\n").into_bytes());
    }

    let mut g = c.benchmark_group("reply_frame_len");
    for (name, frame) in [
        ("ok", &ok),
        ("bulk_1k", &bulk_1k),
        ("array_100", &array_100),
    ] {
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(format!("{name}/shardgate"), |b| {
            b.iter(|| frame_len(black_box(frame)))
        });
        g.bench_function(format!("{name}/redis-protocol"), |b| {
            b.iter(|| resp2::decode::decode_range(black_box(frame)).map(|r| r.map(|(_, n)| n)))
        });
    }
    g.throughput(Throughput::Bytes(map_50.len() as u64));
    g.bench_function("resp3_map_50/shardgate", |b| {
        b.iter(|| frame_len(black_box(&map_50)))
    });
    g.bench_function("resp3_map_50/redis-protocol", |b| {
        b.iter(|| {
            resp3::decode::complete::decode_range(black_box(&map_50)).map(|r| r.map(|(_, n)| n))
        })
    });
    g.finish();
}

criterion_group!(benches, requests, replies);
criterion_main!(benches);

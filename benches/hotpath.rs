//! The per-command hot path after framing, in isolation: classifying a
//! command (table lookup, key positions) and routing a key to its shard.
//! Frame parsing is in `benches/protocol.rs`; the end-to-end comparison with
//! direct Redis and twemproxy is `scripts/bench.sh` (see BENCHMARKS.md).
//!
//! Run: `cargo bench --bench hotpath -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use shardgate::command::{self, keys::key_indices};
use shardgate::router::{Epoch, RoutingTable};
use shardgate::shardmap::ShardMap;

fn args(parts: &[&str]) -> Vec<Bytes> {
    parts
        .iter()
        .map(|p| Bytes::copy_from_slice(p.as_bytes()))
        .collect()
}

fn classify(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    // Mixed case on purpose: lookup lower-cases the name on every call.
    for (label, name) in [
        ("lookup/get", &b"get"[..]),
        ("lookup/georadiusbymember_ro", &b"GEORADIUSBYMEMBER_RO"[..]),
        ("lookup/unknown", &b"NOSUCHCMD"[..]),
    ] {
        g.bench_function(label, |b| b.iter(|| command::lookup(black_box(name))));
    }

    // Key positions, into a vector reused across requests as the dispatcher does.
    let get = args(&["GET", "user:1000:profile"]);
    let mut mset_parts = vec!["MSET".to_string()];
    for i in 0..10 {
        mset_parts.push(format!("key:{i:06}"));
        mset_parts.push(format!("value-{i}"));
    }
    let mset_refs: Vec<&str> = mset_parts.iter().map(String::as_str).collect();
    let mset = args(&mset_refs);
    for (label, req) in [("key_indices/get", &get), ("key_indices/mset_10", &mset)] {
        let spec = command::lookup(&req[0]).expect("command is in the table");
        let mut out = Vec::with_capacity(16);
        g.bench_function(label, |b| {
            b.iter(|| {
                out.clear();
                key_indices(spec, black_box(req), &mut out).map(|()| out.len())
            })
        });
    }
    g.finish();
}

fn route(c: &mut Criterion) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("shard-maps/example.yaml");
    let map = ShardMap::load(&path).expect("shard-maps/example.yaml is valid");
    let table = RoutingTable::compile(Arc::new(map), Epoch(1));

    let mut g = c.benchmark_group("route");
    for (label, key) in [
        ("shard_for_key/plain", &b"user:1000:profile"[..]),
        ("shard_for_key/hash_tag", &b"{user1000}.cart"[..]),
        ("shard_for_key/placement_rule", &b"eu/sessions/9"[..]),
        ("shard_for_key/tag_placement_rule", &b"{eu:42}.cart"[..]),
    ] {
        g.bench_function(label, |b| b.iter(|| table.shard_for_key(black_box(key))));
    }
    g.finish();
}

criterion_group!(benches, classify, route);
criterion_main!(benches);

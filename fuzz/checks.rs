//! What the fuzz targets check, as plain functions: the libFuzzer targets
//! (`fuzz_targets/`) call them on the inputs libFuzzer makes, and
//! `tests/protocol_props.rs` on random inputs in every test run, so the
//! checks compile and run in CI without a libFuzzer build.

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use shardgate::command::{keys::key_indices, lookup};
use shardgate::protocol::{Limits, Request, parse_request, reply, scan::frame_len};
use shardgate::router::{Epoch, RoutingTable};
use shardgate::shardmap::ShardMap;

const MAP: &str = include_str!("../shard-maps/example.yaml");

fn table() -> &'static RoutingTable {
    static TABLE: OnceLock<RoutingTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let map = ShardMap::from_yaml(MAP).expect("example map is valid");
        RoutingTable::compile(Arc::new(map), Epoch(1))
    })
}

/// Parses everything in `buf`; returns the requests and whether it failed.
fn parse_all(mut buf: BytesMut, limits: &Limits) -> (Vec<Request>, bool) {
    let mut out = Vec::new();
    loop {
        match parse_request(&mut buf, limits) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => return (out, false),
            Err(_) => return (out, true),
        }
    }
}

/// Client bytes -> requests -> command classification -> route, as the
/// connection loop does it, on arbitrary input cut at an arbitrary point.
/// Must never panic, never loop, and agree with itself however the bytes
/// arrive.
pub fn request(data: &[u8]) {
    let limits = Limits {
        max_bulk_len: 1 << 16,
        max_args: 1 << 10,
        max_inline_len: 1 << 12,
    };
    let (whole, failed) = parse_all(BytesMut::from(data), &limits);

    // Fed in two pieces, the same requests come out (until an error).
    if !data.is_empty() && !failed {
        let cut = data[0] as usize % data.len();
        let mut buf = BytesMut::from(&data[..cut]);
        let mut split = Vec::new();
        while let Ok(Some(r)) = parse_request(&mut buf, &limits) {
            split.push(r);
        }
        buf.extend_from_slice(&data[cut..]);
        while let Ok(Some(r)) = parse_request(&mut buf, &limits) {
            split.push(r);
        }
        assert_eq!(split.len(), whole.len());
        for (a, b) in split.iter().zip(&whole) {
            assert_eq!(a.args(), b.args());
        }
    }

    let mut keys = Vec::new();
    for req in &whole {
        assert!(!req.args().is_empty());
        let Some(spec) = lookup(req.name()) else {
            continue;
        };
        let _ = spec.arity_ok(req.args().len());
        keys.clear();
        if key_indices(spec, req.args(), &mut keys).is_ok() {
            for &i in &keys {
                if let Some(k) = req.args().get(i) {
                    let shard = table().shard_for_key(k);
                    assert!((shard.0 as usize) < table().shard_count());
                }
            }
        }
    }
}

/// Backend bytes -> reply frames: the frame scanner and the frame
/// inspectors used to merge replies must never panic on anything a backend
/// could send.
pub fn reply(data: &[u8]) {
    let mut rest = Bytes::copy_from_slice(data);
    while let Ok(Some(n)) = frame_len(&rest) {
        assert!(n > 0 && n <= rest.len());
        let frame = rest.split_to(n);
        let _ = reply::array_elements(&frame);
        let _ = reply::integer(&frame);
        let _ = reply::bulk(&frame);
        let _ = reply::is_error(&frame);
        let _ = reply::error_text(&frame);
        // A complete frame stays complete.
        assert_eq!(frame_len(&frame), Ok(Some(n)));
    }
}

//! Property tests of the hand-written RESP code against `redis-protocol`.
//!
//! The request parser and frame scanner in `shardgate::protocol` replace
//! `redis-protocol` on the hot path; these properties pin them to it:
//! 1. random pipelines of binary multibulk requests parse to the same
//!    arguments and consumed lengths as `redis_protocol::resp2`;
//! 2. random nested RESP2 and RESP3 replies get the same length from
//!    `frame_len` as the bytes `redis-protocol` consumes decoding them, and
//!    every strict prefix is incomplete;
//! 3. no input makes either function panic, and every split point of a
//!    valid request stream gives exactly the requests that are complete;
//! 4. the cargo-fuzz targets' checks (`fuzz/checks.rs`: parse, classify
//!    and route client bytes; frame and inspect backend bytes) hold on
//!    random byte streams and on pipelines of every command in the table
//!    with random arguments: what `scripts/fuzz.sh` explores for as long
//!    as it is given runs here in every test run, without a libFuzzer
//!    build.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use redis_protocol::resp2::types::BytesFrame as Resp2Frame;
use redis_protocol::{resp2, resp3};
use shardgate::protocol::request::encode_command;
use shardgate::protocol::scan::frame_len;
use shardgate::protocol::{Limits, parse_request};

#[path = "../fuzz/checks.rs"]
mod checks;

fn binary_arg() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..48),
        // Bytes that look like protocol, to tempt a confused parser.
        prop::collection::vec(prop::sample::select(&b"*$\r\n0123456789-+: "[..]), 0..24),
    ]
}

fn command() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(binary_arg(), 1..8)
}

fn encode(cmd: &[Vec<u8>]) -> Vec<u8> {
    let refs: Vec<&[u8]> = cmd.iter().map(|a| &a[..]).collect();
    let mut out = BytesMut::new();
    encode_command(&refs, &mut out);
    out.to_vec()
}

fn simple_text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 _.:-]{0,20}"
}

/// A random RESP2 reply, encoded.
fn resp2_frame() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        simple_text().prop_map(|s| format!("+{s}\r\n").into_bytes()),
        simple_text().prop_map(|s| format!("-ERR {s}\r\n").into_bytes()),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| blob(b'$', &b)),
        Just(b"$-1\r\n".to_vec()),
        Just(b"*-1\r\n".to_vec()),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop::collection::vec(inner, 0..8).prop_map(|items| aggregate(b'*', items.len(), &items))
    })
}

fn blob(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut out = format!("{}{}\r\n", kind as char, data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

fn aggregate(kind: u8, count: usize, items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("{}{}\r\n", kind as char, count).into_bytes();
    for i in items {
        out.extend_from_slice(i);
    }
    out
}

/// A RESP3 scalar usable as a map key or set member (hashable in
/// `redis-protocol`).
fn resp3_key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        simple_text().prop_map(|s| format!("+{s}\r\n").into_bytes()),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(|b| blob(b'$', &b)),
    ]
}

/// A random RESP3 reply, encoded.
fn resp3_frame() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        resp3_key(),
        simple_text().prop_map(|s| format!("-ERR {s}\r\n").into_bytes()),
        Just(b"_\r\n".to_vec()),
        any::<f64>().prop_map(|d| {
            let text = if d.is_nan() {
                "nan".to_owned()
            } else if d.is_infinite() {
                if d > 0.0 { "inf" } else { "-inf" }.to_owned()
            } else {
                format!("{d}")
            };
            format!(",{text}\r\n").into_bytes()
        }),
        any::<bool>().prop_map(|b| if b {
            b"#t\r\n".to_vec()
        } else {
            b"#f\r\n".to_vec()
        }),
        "-?[1-9][0-9]{0,40}".prop_map(|s| format!("({s}\r\n").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(|b| blob(b'!', &b)),
        (prop::bool::ANY, prop::collection::vec(any::<u8>(), 0..20)).prop_map(|(md, b)| {
            let mut data = if md {
                b"mkd:".to_vec()
            } else {
                b"txt:".to_vec()
            };
            data.extend_from_slice(&b);
            blob(b'=', &data)
        }),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|items| aggregate(
                b'*',
                items.len(),
                &items
            )),
            prop::collection::vec(inner.clone(), 0..6).prop_map(|items| aggregate(
                b'>',
                items.len(),
                &items
            )),
            prop::collection::vec(resp3_key(), 0..6).prop_map(|items| aggregate(
                b'~',
                items.len(),
                &items
            )),
            prop::collection::vec((resp3_key(), inner.clone()), 0..4).prop_map(|pairs| {
                let flat: Vec<Vec<u8>> = pairs.into_iter().flat_map(|(k, v)| [k, v]).collect();
                aggregate(b'%', flat.len() / 2, &flat)
            }),
            // An attribute annotating the next frame; both count as one.
            // (redis-protocol refuses attributes on a null or on an
            // attribute; frame_len accepts both.)
            (
                prop::collection::vec((resp3_key(), resp3_key()), 1..3),
                inner.prop_filter("redis-protocol limits", |f| {
                    f != b"_\r\n" && f.first() != Some(&b'|')
                }),
            )
                .prop_map(|(pairs, frame)| {
                    let flat: Vec<Vec<u8>> = pairs.into_iter().flat_map(|(k, v)| [k, v]).collect();
                    let mut out = aggregate(b'|', flat.len() / 2, &flat);
                    out.extend_from_slice(&frame);
                    out
                }),
        ]
    })
}

/// `frame_len` of `frame` (followed by more bytes) is its length, and every
/// strict prefix is incomplete.
fn check_frame_len(frame: &[u8], decoded: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(decoded, frame.len());
    prop_assert_eq!(frame_len(frame), Ok(Some(frame.len())));
    let mut more = frame.to_vec();
    more.extend_from_slice(b"+trailing\r\n");
    prop_assert_eq!(frame_len(&more), Ok(Some(frame.len())));
    for cut in 0..frame.len() {
        prop_assert_eq!(frame_len(&frame[..cut]), Ok(None), "cut at {}", cut);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// (1) Our parser and redis-protocol agree on random pipelines.
    #[test]
    fn requests_agree_with_redis_protocol(cmds in prop::collection::vec(command(), 1..6)) {
        let stream: Vec<u8> = cmds.iter().flat_map(|c| encode(c)).collect();
        let limits = Limits::default();

        let mut ours = BytesMut::from(&stream[..]);
        let mut theirs = BytesMut::from(&stream[..]);
        for cmd in &cmds {
            let req = parse_request(&mut ours, &limits).unwrap().expect("complete");
            let (frame, consumed, _) = resp2::decode::decode_bytes_mut(&mut theirs)
                .unwrap()
                .expect("complete");
            prop_assert_eq!(req.raw().len(), consumed);
            let Resp2Frame::Array(items) = frame else {
                return Err(TestCaseError::fail("redis-protocol did not decode an array"));
            };
            let their_args: Vec<Bytes> = items
                .into_iter()
                .map(|f| match f {
                    Resp2Frame::BulkString(b) => b,
                    other => panic!("not a bulk string: {other:?}"),
                })
                .collect();
            prop_assert_eq!(req.args(), &their_args[..]);
            let want: Vec<Bytes> = cmd.iter().map(|a| Bytes::copy_from_slice(a)).collect();
            prop_assert_eq!(req.args(), &want[..]);
        }
        prop_assert!(ours.is_empty());
        prop_assert!(theirs.is_empty());
    }

    /// (2a) frame_len agrees with the RESP2 decoder.
    #[test]
    fn resp2_frame_len_agrees(frame in resp2_frame()) {
        let (_, consumed) = resp2::decode::decode_range(&frame).unwrap().expect("complete");
        check_frame_len(&frame, consumed)?;
    }

    /// (2b) frame_len agrees with the RESP3 decoder.
    #[test]
    fn resp3_frame_len_agrees(frame in resp3_frame()) {
        let (_, consumed) = resp3::decode::complete::decode_range(&frame)
            .unwrap()
            .expect("complete");
        check_frame_len(&frame, consumed)?;
    }

    /// (3a) No byte string makes the parsers panic (or loop).
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            prop::collection::vec(
                prop::sample::select(&b"*$+-:_,#(!=%~>|\r\n\r\n0123456789-1 \"'\\xaZ"[..]),
                0..128,
            ),
        ]
    ) {
        let limits = Limits { max_bulk_len: 64, max_args: 16, max_inline_len: 64 };
        let mut buf = BytesMut::from(&bytes[..]);
        let mut before = buf.len() + 1;
        while let Ok(Some(req)) = parse_request(&mut buf, &limits) {
            prop_assert!(buf.len() < before);
            prop_assert!(!req.args().is_empty());
            before = buf.len();
        }
        if let Ok(Some(n)) = frame_len(&bytes) {
            prop_assert!(n <= bytes.len());
        }
        let frozen = Bytes::from(bytes.clone());
        let _ = shardgate::protocol::reply::array_elements(&frozen);
        let _ = shardgate::protocol::reply::bulk(&frozen);
        let _ = shardgate::protocol::reply::integer(&bytes);
        let _ = shardgate::protocol::reply::error_text(&bytes);
    }

    /// (3b) Cut a valid stream anywhere: exactly the complete requests come
    /// out, then `Ok(None)`, and the rest completes the stream.
    #[test]
    fn every_split_point_is_incomplete_until_complete(
        cmds in prop::collection::vec(command(), 1..4),
        cut_seed in any::<prop::sample::Index>(),
    ) {
        let frames: Vec<Vec<u8>> = cmds.iter().map(|c| encode(c)).collect();
        let stream: Vec<u8> = frames.concat();
        let limits = Limits::default();
        let cuts = [cut_seed.index(stream.len() + 1), 0, stream.len()];
        for cut in (0..=stream.len()).filter(|c| stream.len() < 400 || cuts.contains(c)) {
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut got = Vec::new();
            while let Some(req) = parse_request(&mut buf, &limits).unwrap() {
                got.push(req);
            }
            let mut end = 0;
            let complete = frames
                .iter()
                .take_while(|f| {
                    end += f.len();
                    end <= cut
                })
                .count();
            prop_assert_eq!(got.len(), complete, "cut at {}", cut);
            buf.extend_from_slice(&stream[cut..]);
            while let Some(req) = parse_request(&mut buf, &limits).unwrap() {
                got.push(req);
            }
            prop_assert!(buf.is_empty());
            for (req, cmd) in got.iter().zip(&cmds) {
                prop_assert_eq!(req.args().len(), cmd.len());
                for (a, b) in req.args().iter().zip(cmd) {
                    prop_assert_eq!(&a[..], &b[..]);
                }
            }
            prop_assert_eq!(got.len(), cmds.len());
        }
    }

    /// (4a) The `request` fuzz target's check on arbitrary bytes and on
    /// pipelines of real commands (random names from the command table,
    /// random arguments, some cut short).
    #[test]
    fn fuzz_request_check_holds(
        junk in prop::collection::vec(any::<u8>(), 0..512),
        cmds in prop::collection::vec(
            (prop::sample::select(shardgate::command::table::COMMANDS), command()),
            0..6,
        ),
        cut in any::<prop::sample::Index>(),
    ) {
        checks::request(&junk);
        let mut stream = Vec::new();
        for (spec, args) in &cmds {
            let mut cmd = vec![spec.name.as_bytes().to_vec()];
            cmd.extend(args.iter().cloned());
            stream.extend(encode(&cmd));
        }
        checks::request(&stream);
        checks::request(&stream[..cut.index(stream.len() + 1)]);
    }

    /// (4b) The `reply` fuzz target's check on arbitrary bytes and on
    /// random RESP2 and RESP3 replies, whole and cut short.
    #[test]
    fn fuzz_reply_check_holds(
        junk in prop::collection::vec(any::<u8>(), 0..512),
        frames in prop::collection::vec(prop_oneof![resp2_frame(), resp3_frame()], 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        checks::reply(&junk);
        let stream = frames.concat();
        checks::reply(&stream);
        checks::reply(&stream[..cut.index(stream.len() + 1)]);
    }
}

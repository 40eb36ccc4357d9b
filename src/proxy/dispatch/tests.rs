//! Unit tests of routing decisions ([`super::target`], [`super::Pass`]).

use std::sync::Arc;

use bytes::BytesMut;

use super::*;
use crate::backend::Backends;
use crate::context::Context;
use crate::metrics::Metrics;
use crate::protocol::{Limits, parse_request, request::encode_command_from};
use crate::router::Overlay;
use crate::shardmap::ShardMap;
use crate::snapshot::Published;

/// Two Redis shards, nothing listening (nothing here sends).
const MAP: &str = "regions:\n  - name: r\nshards:\n  - name: a\n    region: r\n    primary: 127.0.0.1:1\n  - name: b\n    region: r\n    primary: 127.0.0.1:2\n";

fn map() -> Arc<ShardMap> {
    Arc::new(ShardMap::from_yaml(MAP).expect("valid map"))
}

fn stable() -> RoutingTable {
    RoutingTable::compile(map(), Epoch(1))
}

/// The table with `key`'s slot migrating to its owner from the other shard.
fn migrating(key: &str) -> RoutingTable {
    let t = stable();
    let owner = t.route(key.as_bytes()).shard;
    let from = ShardId(1 - owner.0);
    let entry = (
        t.class_of(key.as_bytes()),
        t.slot_of(key.as_bytes()),
        Overlay::Migrating(from),
    );
    t.overlaid(Epoch(2), [entry])
}

fn req(args: &[&str]) -> Request {
    let mut buf = BytesMut::new();
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    encode_command_from(args.iter().copied(), &mut buf);
    parse_request(&mut buf, &Limits::default())
        .expect("valid frame")
        .expect("complete frame")
}

fn target_of(table: &RoutingTable, args: &[&str], pass: Pass) -> Result<Target, ProxyError> {
    let req = req(args);
    let spec = lookup(req.name()).expect("known command");
    target(table, spec, &req, pass, &mut Vec::new())
}

/// Two keys that live on different shards.
fn keys_apart(table: &RoutingTable) -> (String, String) {
    let first = "k0".to_owned();
    let home = table.route(first.as_bytes()).shard;
    let other = (1..1000)
        .map(|i| format!("k{i}"))
        .find(|k| table.route(k.as_bytes()).shard != home)
        .expect("two shards share the keys");
    (first, other)
}

#[test]
fn keys_route_to_their_shard() {
    let t = stable();
    let owner = t.route(b"user:1").shard;
    assert_eq!(
        target_of(&t, &["GET", "user:1"], Pass::Fresh),
        Ok(Target::Shard(owner))
    );
    // Keys sharing a hash tag share a shard.
    assert_eq!(
        target_of(&t, &["SINTER", "{u}a", "{u}b", "{u}c"], Pass::Fresh),
        Ok(Target::Shard(t.route(b"{u}").shard))
    );
}

#[test]
fn commands_without_keys_have_no_target() {
    let t = stable();
    assert_eq!(target_of(&t, &["PING"], Pass::Fresh), Ok(Target::NoKeys));
    assert_eq!(
        target_of(&t, &["EVAL", "return 1", "0"], Pass::Fresh),
        Ok(Target::NoKeys)
    );
}

/// The mover's fence is refused wherever a command names it as a key,
/// and the refusal names it.
#[test]
fn the_fence_key_is_refused_in_any_key_position() {
    let t = stable();
    let fence = std::str::from_utf8(crate::backend::migrate::MOVING_SET).unwrap();
    let ProxyError::Client(text) = reserved_key() else {
        panic!("a client error");
    };
    assert!(text.contains(fence), "{text}");
    for args in [
        vec!["SADD", fence, "k"],
        vec!["DEL", "{x}a", fence],
        vec!["RENAME", "k", fence],
        vec!["EVAL", "return 1", "1", fence],
        vec!["ZUNIONSTORE", "dst", "2", "a", fence],
        vec!["XREAD", "STREAMS", fence, "0"],
    ] {
        for pass in [Pass::Fresh, Pass::Moved(Epoch(1))] {
            assert_eq!(target_of(&t, &args, pass), Err(reserved_key()), "{args:?}");
        }
    }
    // A key that only starts like it is a key like any other.
    let near = format!("{fence}x");
    assert!(target_of(&t, &["GET", &near], Pass::Fresh).is_ok());
}

#[test]
fn malformed_key_arguments_go_to_the_first_shard() {
    // numkeys larger than the arguments: Redis answers with its own error.
    let t = stable();
    assert_eq!(
        target_of(&t, &["EVAL", "return 1", "5", "k"], Pass::Fresh),
        Ok(Target::Shard(ShardId(0)))
    );
}

#[test]
fn keys_on_two_shards_are_crossslot() {
    let t = stable();
    let (a, b) = keys_apart(&t);
    assert_eq!(
        target_of(&t, &["SINTER", &a, &b], Pass::Fresh),
        Err(ProxyError::crossslot())
    );
    // Even when one of them must move first.
    let m = migrating(&a);
    assert_eq!(
        target_of(&m, &["SINTER", &a, &b], Pass::Fresh),
        Err(ProxyError::crossslot())
    );
}

#[test]
fn a_key_of_a_migrating_slot_moves_first_once_per_table() {
    let t = migrating("user:1");
    let owner = t.route(b"user:1").shard;
    assert_eq!(
        target_of(&t, &["GET", "user:1"], Pass::Fresh),
        Ok(Target::MoveFirst { to: owner })
    );
    // Moved under this table: it runs.
    assert_eq!(
        target_of(&t, &["GET", "user:1"], Pass::Moved(t.epoch())),
        Ok(Target::Shard(owner))
    );
    // Moved under an older table: it moves again.
    assert_eq!(
        target_of(&t, &["GET", "user:1"], Pass::Moved(Epoch(1))),
        Ok(Target::MoveFirst { to: owner })
    );
    assert_eq!(Target::MoveFirst { to: owner }.shard(), Some(owner));
}

fn proxy(table: RoutingTable) -> Proxy {
    let table = Arc::new(table);
    let backends = Arc::new(Backends::new(table.map(), None, None));
    let snapshot = Snapshot::new(table, backends).expect("consistent snapshot");
    let ctx = Context::new(
        Published::new(snapshot),
        Arc::new(Metrics::new()),
        None,
        None,
    );
    Proxy::new(Arc::new(ctx), super::super::ClientConfig::default())
}

fn dispatch(proxy: &Proxy, args: &[&str]) -> Action {
    let mut session = Session::new(1, "test".to_owned());
    session.dispatch(proxy, req(args), Instant::now())
}

fn error_text(action: Action) -> String {
    match action {
        Action::Queue(Pending {
            kind: PendingKind::Ready(bytes),
            ..
        }) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => panic!("not a ready reply"),
    }
}

#[tokio::test]
async fn the_decision_is_an_action() {
    let t = migrating("user:1");
    let (a, b) = keys_apart(&t);
    let p = proxy(t);
    // Every command kind that names keys moves them first...
    for args in [
        &["SET", "user:1", "v"][..],
        &["STRLEN", "user:1"],
        &["MGET", "user:1", "x"],
        &["BLPOP", "user:1", "0"],
        &["EVAL", "return 1", "1", "user:1"],
        &["WATCH", "user:1"],
    ] {
        match dispatch(&p, args) {
            Action::Exclusive(ExclusiveOp::MoveFirst(req, spec), _) => {
                assert_eq!(req.args().len(), args.len());
                assert!(spec.name.eq_ignore_ascii_case(args[0]));
            }
            _ => panic!("{args:?} does not move first"),
        }
    }
    // ...except reads whose reply proves where the key is: they ask the
    // source and the target at once, in the pipeline (see `moves`).
    for args in [&["GET", "user:1"][..], &["HGET", "user:1", "f"]] {
        assert!(
            matches!(
                dispatch(&p, args),
                Action::Queue(Pending {
                    kind: PendingKind::Computed(_),
                    ..
                })
            ),
            "{args:?} is not read on both shards"
        );
    }
    assert!(
        error_text(dispatch(&p, &["SINTER", &a, &b])).starts_with("-CROSSSLOT "),
        "CROSSSLOT is queued in order"
    );
    assert!(matches!(
        dispatch(&p, &["RANDOMKEY"]),
        Action::Exclusive(ExclusiveOp::Randomkey, _)
    ));
    assert_eq!(error_text(dispatch(&p, &["PING"])), "+PONG\r\n");
    assert!(error_text(dispatch(&p, &["NOSUCH"])).starts_with("-ERR unknown command"));
    assert!(matches!(dispatch(&p, &["QUIT"]), Action::Close(_)));
}

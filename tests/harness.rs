//! Checks of the shared integration-test harness itself (tests/common), so a
//! failure test later does not chase a harness bug.

mod common;

use common::{RedisServer, free_port};

#[test]
fn free_ports_can_be_bound() {
    let port = free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}

#[test]
fn replica_follows_its_primary() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_replica_of(&primary);
    assert_ne!(primary.port, replica.port);
    let mut con = primary.connection();
    redis::cmd("SET").arg("k").arg("v").exec(&mut con).unwrap();
    let _: i64 = redis::cmd("WAIT").arg(1).arg(5000).query(&mut con).unwrap();
    let got: Option<String> = redis::cmd("GET")
        .arg("k")
        .query(&mut replica.connection())
        .unwrap();
    assert_eq!(got.as_deref(), Some("v"));
}

#[test]
fn kill_then_restart_keeps_the_port() {
    let mut server = RedisServer::start();
    let addr = server.addr();
    server.kill();
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "still listening after kill"
    );
    server.restart();
    assert_eq!(server.addr(), addr);
    let pong: String = redis::cmd("PING").query(&mut server.connection()).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn drop_stops_the_server() {
    let server = RedisServer::start();
    let addr = server.addr();
    drop(server);
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "still listening after drop"
    );
}

/// A task of an in-process proxy that panics (the proxy serves on) fails
/// the test when its runtime is dropped; a runtime without one does not.
#[test]
fn a_panic_on_an_in_process_proxy_runtime_fails_the_test() {
    let quiet = common::ProxyRuntime::new(1);
    quiet.block_on(async {
        tokio::spawn(async { 1 + 1 }).await.unwrap();
    });
    assert!(quiet.panics().is_empty());
    drop(quiet);

    let rt = common::ProxyRuntime::new(1);
    let joined =
        rt.block_on(async { tokio::spawn(async { panic!("a bug in a proxy task") }).await });
    assert!(joined.is_err(), "the task panicked");
    let seen = rt.panics();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains("a bug in a proxy task"), "{seen:?}");
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(rt)));
    let message = dropped.expect_err("dropping the runtime fails the test");
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("the in-process proxy panicked"), "{text}");
}

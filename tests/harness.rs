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

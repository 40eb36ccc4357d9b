//! What a client that has not logged in can cost the proxy, and password
//! guessing: Redis' small request limits before login, the auth timeout,
//! unauthenticated connections counted apart from `max_clients`, and
//! failed logins closing the connection and, past a threshold, refused per
//! peer address. Also the admin port's own guessing limit.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, RawConn, Spec};
use common::{RedisServer, TempDir, free_port, spawn_proxy_env, write_map};
use shardgate::auth::{Auth, User, file::parse_rules};
use shardgate::proxy::ClientConfig;

const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";

fn start(client: ClientConfig) -> Cluster {
    let auth = Auth::new([User::new(
        "default",
        b"secret",
        parse_rules("+@all").expect("rules"),
    )]);
    Cluster::start(Spec {
        shards: 1,
        client: ClientConfig {
            auth: Some(Arc::new(auth)),
            ..client
        },
        ..Spec::default()
    })
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

fn expect(raw: &mut RawConn, request: &[u8], expected: &[u8]) {
    raw.send(request);
    let got = raw.read_exactly(expected.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
}

/// Before login, Redis' limits: at most 10 arguments of at most 16 KiB. A
/// declared 100 MiB argument is refused at its header, so nothing of it is
/// buffered, and the connection is closed (Redis' wording and behaviour).
#[test]
fn before_login_only_small_requests_are_read() {
    let c = start(ClientConfig::default());
    let mut raw = c.raw();
    expect(
        &mut raw,
        b"*2\r\n$4\r\nAUTH\r\n$104857600\r\n",
        b"-ERR Protocol error: unauthenticated bulk length\r\n",
    );
    assert!(
        raw.is_closed(),
        "closed after a too-large bulk before login"
    );

    let mut raw = c.raw();
    expect(
        &mut raw,
        b"*11\r\n",
        b"-ERR Protocol error: unauthenticated multibulk length\r\n",
    );
    assert!(
        raw.is_closed(),
        "closed after too many arguments before login"
    );

    // Ten of them, each sending megabytes after the header: each is cut off
    // at the header; the proxy keeps serving.
    let big = vec![b'x'; 4 << 20];
    for _ in 0..10 {
        let mut s = TcpStream::connect(("127.0.0.1", c.proxy_port)).unwrap();
        s.write_all(b"*2\r\n$4\r\nAUTH\r\n$104857600\r\n").unwrap();
        // The proxy closes: writing megabytes fails or is dropped.
        let _ = s.write_all(&big);
    }
    // After login the normal limits apply: a 100 KiB value is fine.
    let mut raw = c.raw();
    expect(&mut raw, &resp(&["AUTH", "secret"]), b"+OK\r\n");
    let value = "v".repeat(100 * 1024);
    expect(&mut raw, &resp(&["SET", "big", &value]), b"+OK\r\n");
    expect(&mut raw, &resp(&["STRLEN", "big"]), b":102400\r\n");
    // Requests within the small limits are answered as usual before login.
    let mut raw = c.raw();
    expect(
        &mut raw,
        &resp(&["PING"]),
        b"-NOAUTH Authentication required.\r\n",
    );
}

/// A client that does not log in within the auth timeout is closed; one
/// that did stays.
#[test]
fn clients_that_never_log_in_are_closed_at_the_auth_timeout() {
    let c = start(ClientConfig {
        auth_timeout: Duration::from_millis(300),
        ..ClientConfig::default()
    });
    let mut idle = c.raw();
    let mut logged = c.raw();
    expect(&mut logged, &resp(&["AUTH", "secret"]), b"+OK\r\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !idle.is_closed() {
        assert!(Instant::now() < deadline, "never closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(400));
    expect(&mut logged, &resp(&["PING"]), b"+PONG\r\n");
}

/// Unauthenticated connections have their own limit and do not use up
/// `max_clients`: a real user still gets in while strangers hold connections.
#[test]
fn strangers_do_not_use_up_max_clients() {
    let c = start(ClientConfig {
        max_clients: 2,
        max_unauthenticated: 4,
        ..ClientConfig::default()
    });
    let mut strangers: Vec<RawConn> = (0..4).map(|_| c.raw()).collect();
    // Each is served (so accepted and counted): NOAUTH to a PING.
    for s in &mut strangers {
        expect(s, &resp(&["PING"]), b"-NOAUTH Authentication required.\r\n");
    }
    // A fifth stranger is refused by the unauthenticated limit...
    let mut fifth = c.raw();
    let refused = fifth.read_until(b"\r\n");
    assert_eq!(
        String::from_utf8_lossy(&refused),
        "-ERR max number of unauthenticated clients reached\r\n"
    );
    // ...and once one leaves, a real user gets in and logs in, as does a
    // second: the strangers did not count against max_clients (2).
    drop(strangers);
    std::thread::sleep(Duration::from_millis(200));
    let mut users: Vec<RawConn> = (0..2).map(|_| c.raw()).collect();
    for u in &mut users {
        expect(u, &resp(&["AUTH", "secret"]), b"+OK\r\n");
    }
    // Now max_clients is reached: one more is refused with Redis' wording.
    let mut third = c.raw();
    let refused = third.read_until(b"\r\n");
    assert_eq!(
        String::from_utf8_lossy(&refused),
        "-ERR max number of clients reached\r\n"
    );
}

/// Failed logins: the connection is closed at `max_auth_failures`; past
/// 100 failures from one address in a minute, even the right password is
/// refused from it (guessing gains nothing).
#[test]
fn password_guessing_is_cut_short() {
    let c = start(ClientConfig {
        max_auth_failures: 5,
        ..ClientConfig::default()
    });
    let mut raw = c.raw();
    for _ in 0..4 {
        expect(&mut raw, &resp(&["AUTH", "guess"]), WRONGPASS);
    }
    expect(&mut raw, &resp(&["AUTH", "guess"]), WRONGPASS);
    assert!(raw.is_closed(), "closed after 5 failures");
    // 100 failures from this address (20 connections x 5).
    for _ in 0..19 {
        let mut raw = c.raw();
        let mut pipeline = Vec::new();
        for _ in 0..5 {
            pipeline.extend_from_slice(&resp(&["AUTH", "guess"]));
        }
        raw.send(&pipeline);
        let got = raw.read_exactly(5 * WRONGPASS.len());
        assert!(
            got.starts_with(WRONGPASS),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
    let mut raw = c.raw();
    expect(
        &mut raw,
        &resp(&["AUTH", "secret"]),
        b"-ERR too many failed logins from this address; try again later\r\n",
    );
}

/// The admin port closes a connection after 5 wrong passwords.
#[test]
fn admin_password_guessing_closes_the_connection() {
    let shard = RedisServer::start();
    let dir = TempDir::new("admin-guess");
    let map = write_map(&dir, &[&shard]);
    let admin_port = free_port();
    let (_proxy, _port) = spawn_proxy_env(
        env!("CARGO_BIN_EXE_shardgate"),
        &map,
        &[
            "--admin-listen",
            &format!("127.0.0.1:{admin_port}"),
            "--admin-password-env",
            "SHARDGATE_ADMIN_PW",
        ],
        &[("SHARDGATE_ADMIN_PW", "admin-secret")],
    );
    common::wait_for_port(admin_port);
    let mut s = TcpStream::connect(("127.0.0.1", admin_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    for replies in 0..5 {
        s.write_all(b"AUTH wrong\r\n").unwrap();
        while got.iter().filter(|&&b| b == b'\n').count() <= replies {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed before the 5th reply");
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert_eq!(
        got,
        WRONGPASS.repeat(5),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Then the admin listener closes the connection.
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "still open after 5 wrong passwords");
}

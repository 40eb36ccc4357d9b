//! The admin listener of the real binary: its own password, Redis' auth
//! wording, STATUS and RELOAD, driven by raw RESP and by redis-cli.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{RedisServer, TempDir, free_port, spawn_proxy_env, write_map};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

fn ask(s: &mut TcpStream, req: &str) -> String {
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "admin closed the connection");
        out.extend_from_slice(&buf[..n]);
        // Replies here are one line, or one bulk string / array.
        if out.ends_with(b"\r\n") && complete(&out) {
            return String::from_utf8_lossy(&out).into_owned();
        }
    }
}

fn complete(frame: &[u8]) -> bool {
    matches!(shardgate::protocol::scan::frame_len(frame), Ok(Some(n)) if n == frame.len())
}

#[test]
fn admin_port_has_its_own_password_and_reloads_the_map() {
    let shard = RedisServer::start();
    let dir = TempDir::new("admin");
    let map = write_map(&dir, &[&shard]);
    let admin_port = free_port();
    let admin = format!("127.0.0.1:{admin_port}");
    let (_proxy, port) = spawn_proxy_env(
        BIN,
        &map,
        &[
            "--admin-listen",
            &admin,
            "--admin-password-env",
            "SHARDGATE_ADMIN_PW",
        ],
        &[("SHARDGATE_ADMIN_PW", "admin-secret")],
    );
    common::wait_for_port(admin_port);
    let mut s = TcpStream::connect(("127.0.0.1", admin_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    assert_eq!(ask(&mut s, "PING\r\n"), "+PONG\r\n");
    assert_eq!(
        ask(&mut s, "STATUS\r\n"),
        "-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(
        ask(&mut s, "AUTH wrong\r\n"),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    );
    assert_eq!(ask(&mut s, "AUTH admin-secret\r\n"), "+OK\r\n");
    let status = ask(&mut s, "STATUS\r\n");
    assert!(status.contains("map_epoch:1"), "{status}");
    assert!(status.contains(&shard.addr()), "{status}");
    assert_eq!(
        ask(&mut s, "FLUSHALL\r\n"),
        "-ERR unknown admin command 'FLUSHALL'. Try HELP.\r\n"
    );

    // RELOAD applies a changed map; a bad one is refused by name.
    let text = std::fs::read_to_string(&map).unwrap();
    std::fs::write(&map, format!("{text}read_policy: prefer-replica\n")).unwrap();
    assert_eq!(
        ask(&mut s, "RELOAD\r\n"),
        "+OK epoch=2 kept=1 added=0 removed=0\r\n"
    );
    std::fs::write(
        &map,
        text.replace("region: us\n    primary", "region: eu\n    primary"),
    )
    .unwrap();
    let refused = ask(&mut s, "RELOAD\r\n");
    assert!(
        refused.starts_with("-ERR map reload refused: shard map"),
        "{refused}"
    );
    assert!(refused.contains("shards[0].region"), "{refused}");

    // The client port does not accept the admin password, and vice versa.
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(ask(&mut client, "RELOAD\r\n").starts_with("-ERR unknown command 'RELOAD'"));

    // redis-cli works against the admin port.
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &admin_port.to_string(),
            "-a",
            "admin-secret",
            "--no-auth-warning",
        ])
        .arg("STATUS")
        .output()
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("map_epoch:2"), "{text}");
}

//! Client authentication against a real deployment: NOAUTH before login for
//! every kind of command, AUTH and HELLO ... AUTH, users with command
//! categories, Redis' exact wording checked byte for byte on raw sockets, and
//! the connection staying open after each error.

mod common;

use std::sync::Arc;

use common::cluster::{Cluster, RawConn, Spec};
use shardgate::auth::{Auth, User, file::parse_rules};
use shardgate::proxy::ClientConfig;

const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";

fn user(name: &str, password: &str, rules: &str) -> User {
    User::new(
        name,
        password.as_bytes(),
        parse_rules(rules).unwrap_or_else(|e| panic!("{rules}: {e}")),
    )
}

fn start() -> Cluster {
    let auth = Auth::new([
        user("default", "secret", "+@all"),
        user("ro", "ro-pw", "+@read +@connection"),
        user("noadmin", "na-pw", "+@all -@admin -@dangerous"),
    ]);
    Cluster::start(Spec {
        shards: 2,
        client: ClientConfig {
            auth: Some(Arc::new(auth)),
            ..ClientConfig::default()
        },
        ..Spec::default()
    })
}

/// RESP encoding of a command.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Sends `request` and checks the reply is exactly `expected`.
fn exchange(raw: &mut RawConn, request: &[u8], expected: &[u8]) {
    raw.send(request);
    let got = raw.read_exactly(expected.len());
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected),
        "reply to {:?}",
        String::from_utf8_lossy(request)
    );
}

fn cmd(raw: &mut RawConn, args: &[&str], expected: &[u8]) {
    exchange(raw, &resp(args), expected);
}

#[test]
fn every_kind_of_command_needs_auth_first() {
    let c = start();
    let mut raw = c.raw();
    let refused: &[&[&str]] = &[
        &["GET", "k"],                 // forwarded
        &["SET", "k", "v"],            // forwarded write
        &["MGET", "a", "b", "c", "d"], // split
        &["DEL", "a", "b"],            // split
        &["PING"],                     // local
        &["ECHO", "x"],                // local
        &["CLIENT", "SETNAME", "x"],   // local container
        &["INFO"],                     // inline (local)
        &["KEYS", "*"],                // fan-out
        &["SCAN", "0"],                // fan-out, inline
        &["BLPOP", "k", "1"],          // blocking, inline
        &["EVAL", "return 1", "0"],    // script
        &["MULTI"],                    // transaction
        &["WATCH", "k"],               // transaction, inline
        &["CONFIG", "SET", "a", "b"],  // unsupported
        &["SELECT", "0"],
    ];
    for args in refused {
        cmd(&mut raw, args, NOAUTH);
    }
    // Inline commands (telnet style) too.
    exchange(&mut raw, b"GET k\r\n", NOAUTH);
    exchange(&mut raw, b"PING\r\n", NOAUTH);
    // Pipelined: one NOAUTH per command, in order.
    let mut pipeline = resp(&["GET", "a"]);
    pipeline.extend(resp(&["MGET", "a", "b"]));
    pipeline.extend(resp(&["PING"]));
    exchange(&mut raw, &pipeline, &[NOAUTH, NOAUTH, NOAUTH].concat());
    // As in Redis, unknown commands and wrong arity are reported first.
    cmd(
        &mut raw,
        &["NOSUCH", "x"],
        b"-ERR unknown command 'NOSUCH', with args beginning with: 'x' \r\n",
    );
    cmd(
        &mut raw,
        &["GET"],
        b"-ERR wrong number of arguments for 'get' command\r\n",
    );
    cmd(
        &mut raw,
        &["HELLO", "3"],
        b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n",
    );
    // RESET is allowed and keeps the client logged out.
    cmd(&mut raw, &["RESET"], b"+RESET\r\n");
    // The connection stayed open through all of it.
    cmd(&mut raw, &["AUTH", "secret"], b"+OK\r\n");
    cmd(&mut raw, &["SET", "k", "v"], b"+OK\r\n");
    cmd(&mut raw, &["MGET", "k", "x"], b"*2\r\n$1\r\nv\r\n$-1\r\n");
    cmd(&mut raw, &["BLPOP", "nolist", "0.01"], b"*-1\r\n");
    cmd(&mut raw, &["QUIT"], b"+OK\r\n");
    assert!(raw.is_closed());
    // QUIT works before AUTH, too.
    let mut raw = c.raw();
    cmd(&mut raw, &["QUIT"], b"+OK\r\n");
    assert!(raw.is_closed());
}

#[test]
fn auth_wrong_and_right() {
    let c = start();
    let mut raw = c.raw();
    cmd(&mut raw, &["AUTH", "wrong"], WRONGPASS);
    cmd(&mut raw, &["AUTH", "default", "wrong"], WRONGPASS);
    cmd(&mut raw, &["AUTH", "nobody", "secret"], WRONGPASS);
    cmd(&mut raw, &["AUTH", "ro", "secret"], WRONGPASS);
    cmd(&mut raw, &["AUTH", "a", "b", "c"], b"-ERR syntax error\r\n");
    cmd(&mut raw, &["GET", "k"], NOAUTH);
    cmd(&mut raw, &["AUTH", "default", "secret"], b"+OK\r\n");
    cmd(&mut raw, &["PING"], b"+PONG\r\n");
    // A failed AUTH keeps the current login (as in Redis).
    cmd(&mut raw, &["AUTH", "wrong"], WRONGPASS);
    cmd(&mut raw, &["PING"], b"+PONG\r\n");
    // RESET logs out.
    cmd(&mut raw, &["RESET"], b"+RESET\r\n");
    cmd(&mut raw, &["PING"], NOAUTH);
    // Clients that authenticate by URL work.
    let client = redis::Client::open(format!(
        "redis://default:secret@127.0.0.1:{}/",
        c.proxy_port
    ))
    .expect("client");
    let mut con = client.get_connection().expect("connect with password");
    let _: () = redis::cmd("SET")
        .arg("u")
        .arg(1)
        .query(&mut con)
        .expect("set");
    let v: i64 = redis::cmd("GET").arg("u").query(&mut con).expect("get");
    assert_eq!(v, 1);
    let bad = redis::Client::open(format!("redis://default:nope@127.0.0.1:{}/", c.proxy_port))
        .expect("client");
    // redis-rs reports WRONGPASS as "Password authentication failed".
    assert!(bad.get_connection().is_err());
}

#[test]
fn hello_auth_logs_in_and_switches_protocol() {
    let c = start();
    let mut raw = c.raw();
    cmd(
        &mut raw,
        &["HELLO", "3", "AUTH", "default", "wrong"],
        WRONGPASS,
    );
    cmd(&mut raw, &["GET", "k"], NOAUTH);
    cmd(
        &mut raw,
        &["HELLO", "2", "AUTH", "ro"],
        b"-ERR Syntax error in HELLO option 'AUTH'\r\n",
    );
    raw.send(&resp(&[
        "HELLO", "3", "AUTH", "ro", "ro-pw", "SETNAME", "me",
    ]));
    let reply = raw.read_until(b"*0\r\n");
    assert!(
        reply.starts_with(b"%"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // RESP3 now: a missing key is `_`.
    cmd(&mut raw, &["GET", "nokey"], b"_\r\n");
    cmd(&mut raw, &["CLIENT", "GETNAME"], b"$2\r\nme\r\n");
    // redis-rs with RESP3 and credentials sends HELLO 3 AUTH.
    let client = redis::Client::open(format!(
        "redis://noadmin:na-pw@127.0.0.1:{}/?protocol=resp3",
        c.proxy_port
    ))
    .expect("client");
    let mut con = client.get_connection().expect("connect");
    let _: () = redis::cmd("SET")
        .arg("h")
        .arg(2)
        .query(&mut con)
        .expect("set");
}

#[test]
fn users_get_noperm_outside_their_categories() {
    let c = start();
    let mut raw = c.raw();
    cmd(&mut raw, &["AUTH", "ro", "ro-pw"], b"+OK\r\n");
    cmd(
        &mut raw,
        &["SET", "k", "v"],
        b"-NOPERM this user has no permissions to run the 'set' command\r\n",
    );
    cmd(&mut raw, &["GET", "k"], b"$-1\r\n");
    cmd(
        &mut raw,
        &["MGET", "a", "b", "c"],
        b"*3\r\n$-1\r\n$-1\r\n$-1\r\n",
    );
    cmd(&mut raw, &["PING"], b"+PONG\r\n");
    cmd(
        &mut raw,
        &["DEL", "a", "b"],
        b"-NOPERM this user has no permissions to run the 'del' command\r\n",
    );
    cmd(
        &mut raw,
        &["MULTI"],
        b"-NOPERM this user has no permissions to run the 'multi' command\r\n",
    );
    cmd(
        &mut raw,
        &["BLPOP", "l", "1"],
        b"-NOPERM this user has no permissions to run the 'blpop' command\r\n",
    );
    cmd(&mut raw, &["OBJECT", "ENCODING", "nokey"], b"$-1\r\n");
    cmd(&mut raw, &["CLIENT", "SETNAME", "x"], b"+OK\r\n");

    let mut raw = c.raw();
    cmd(&mut raw, &["AUTH", "noadmin", "na-pw"], b"+OK\r\n");
    cmd(&mut raw, &["SET", "k", "v"], b"+OK\r\n");
    cmd(
        &mut raw,
        &["CONFIG", "SET", "a", "b"],
        b"-NOPERM this user has no permissions to run the 'config|set' command\r\n",
    );
    cmd(
        &mut raw,
        &["config", "get", "a"],
        b"-NOPERM this user has no permissions to run the 'config|get' command\r\n",
    );
    for name in ["keys", "flushall", "info"] {
        let args: &[&str] = if name == "keys" {
            &[name, "*"]
        } else {
            &[name]
        };
        cmd(
            &mut raw,
            args,
            format!("-NOPERM this user has no permissions to run the '{name}' command\r\n")
                .as_bytes(),
        );
    }
    // A refused command inside MULTI aborts the transaction, as in Redis.
    cmd(&mut raw, &["MULTI"], b"+OK\r\n");
    cmd(&mut raw, &["SET", "k", "w"], b"+QUEUED\r\n");
    cmd(
        &mut raw,
        &["KEYS", "*"],
        b"-NOPERM this user has no permissions to run the 'keys' command\r\n",
    );
    raw.send(&resp(&["EXEC"]));
    let reply = raw.read_until(b"\r\n");
    assert!(
        reply.starts_with(b"-EXECABORT"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    cmd(&mut raw, &["GET", "k"], b"$1\r\nv\r\n");
    // The default user may do everything the proxy supports.
    cmd(&mut raw, &["AUTH", "secret"], b"+OK\r\n");
    raw.send(&resp(&["INFO", "server"]));
    assert!(raw.read_until(b"\r\n").starts_with(b"$"));
}

#[test]
#[allow(unsafe_code)] // set_var: see SAFETY below
fn backend_password_from_the_environment() {
    // SAFETY: set before the proxy (or any thread reading it) starts; each
    // test runs in its own process under nextest.
    unsafe { std::env::set_var("SHARDGATE_TEST_BACKEND_PW", "backend-secret") };
    let c = Cluster::start(Spec {
        shards: 2,
        server_args: vec!["--requirepass".into(), "backend-secret".into()],
        shard_extra: "    password_env: SHARDGATE_TEST_BACKEND_PW\n".into(),
        ..Spec::default()
    });
    // Multiplexed, dedicated (blocking) and RESP3 connections all log in.
    c.use_every_connection_kind();
}

#[test]
fn backend_user_and_password_inline() {
    let c = Cluster::start(Spec {
        shards: 2,
        server_args: ["--user", "proxy", "on", ">pw", "~*", "&*", "+@all"]
            .into_iter()
            .chain(["--user", "default", "off"])
            .map(String::from)
            .collect(),
        shard_extra: "    username: proxy\n    password: pw\n".into(),
        ..Spec::default()
    });
    let mut raw = c.raw();
    cmd(&mut raw, &["SET", "a", "1"], b"+OK\r\n");
    cmd(&mut raw, &["GET", "a"], b"$1\r\n1\r\n");
}

#[test]
fn wrong_backend_password_is_a_clear_error_naming_the_endpoint() {
    let c = Cluster::start(Spec {
        shards: 2,
        server_args: vec!["--requirepass".into(), "right".into()],
        shard_extra: "    password: wrong\n".into(),
        ..Spec::default()
    });
    let mut con = c.conn();
    // The first failure, or the circuit breaker it opened: either way the
    // client learns which endpoint and why.
    let err = redis::cmd("GET")
        .arg("k")
        .query::<Option<String>>(&mut con)
        .unwrap_err()
        .to_string();
    let addr = c.primaries[c.shard_of("k")].addr();
    assert!(
        err.contains(&format!("backend {addr} unavailable"))
            && err.contains("authentication failed: WRONGPASS invalid username-password pair"),
        "{err}"
    );
    let mut raw = c.raw();
    // The client connection stays open; local commands still work.
    cmd(&mut raw, &["PING"], b"+PONG\r\n");
}

/// A cluster whose clients log in with the auth file `yaml`.
fn start_with(yaml: &str) -> Cluster {
    let auth = shardgate::auth::file::from_yaml(yaml, &|_| None).expect("auth file");
    Cluster::start(Spec {
        shards: 2,
        client: ClientConfig {
            auth: Some(Arc::new(auth)),
            ..ClientConfig::default()
        },
        ..Spec::default()
    })
}

/// A raw connection to the proxy logged in as `user`.
fn raw_login(c: &Cluster, user: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", c.proxy_port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(&resp(&["AUTH", user, "pw"])).unwrap();
    assert_eq!(read_replies(&mut s, 1), vec![b"+OK\r\n".to_vec()]);
    s
}

/// Reads `n` reply frames.
fn read_replies(s: &mut std::net::TcpStream, n: usize) -> Vec<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while out.len() < n {
        match shardgate::protocol::scan::frame_len(&buf) {
            Ok(Some(len)) => out.push(buf.drain(..len).collect()),
            _ => {
                let got = s.read(&mut chunk).unwrap();
                assert!(got > 0, "closed after {} replies", out.len());
                buf.extend_from_slice(&chunk[..got]);
            }
        }
    }
    out
}

/// Sends `n` pipelined GETs; returns (answered, rate-limited error texts).
fn burst(s: &mut std::net::TcpStream, n: usize) -> (usize, Vec<String>) {
    use std::io::Write;
    let mut req = Vec::new();
    for i in 0..n {
        req.extend_from_slice(&resp(&["GET", &format!("rl{i}")]));
    }
    s.write_all(&req).unwrap();
    let mut ok = 0;
    let mut limited = Vec::new();
    for r in read_replies(s, n) {
        if r.starts_with(b"-") {
            limited.push(String::from_utf8_lossy(&r).into_owned());
        } else {
            ok += 1;
        }
    }
    (ok, limited)
}

#[test]
fn a_users_rate_limit_holds_across_its_connections() {
    let c = start_with(
        "users:\n  - name: app\n    password: pw\n    rate_limit: {requests_per_second: 20}\n  - name: free\n    password: pw\n",
    );
    let (mut a, mut b, mut free) = (
        raw_login(&c, "app"),
        raw_login(&c, "app"),
        raw_login(&c, "free"),
    );
    let (ok_a, limited_a) = burst(&mut a, 100);
    let (ok_b, limited_b) = burst(&mut b, 100);
    // One bucket of 20 (plus what refills meanwhile) for both connections.
    assert!(
        ok_a + ok_b >= 20 && ok_a + ok_b < 60,
        "{ok_a} + {ok_b} answered"
    );
    assert!(
        limited_a
            .iter()
            .chain(&limited_b)
            .all(|e| e.contains("rate limit of user 'app' exceeded (20 requests per second)")),
        "{:?}",
        limited_a.first()
    );
    // Another user is not limited; the limited user recovers with time.
    assert_eq!(burst(&mut free, 100), (100, Vec::new()));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (ok, _) = burst(&mut a, 10);
    assert_eq!(ok, 10);
}

#[test]
fn an_address_rate_limit_counts_requests_and_bytes() {
    let c = start_with(
        "requirepass: pw\nper_address_rate_limit: {requests_per_second: 1000, bytes_per_second: 20000}\n",
    );
    let mut con = c.conn();
    let _: () = redis::cmd("AUTH").arg("pw").query(&mut con).unwrap();
    // 10 KiB values: the bytes limit bites after two.
    let big = vec![b'x'; 10_000];
    let mut refused = None;
    for i in 0..5 {
        match redis::cmd("SET")
            .arg(format!("big{i}"))
            .arg(&big)
            .query::<()>(&mut con)
        {
            Ok(()) => {}
            Err(e) => {
                refused = Some((i, e.to_string()));
                break;
            }
        }
    }
    let (i, e) = refused.expect("the bytes limit refused a SET");
    assert!(i >= 1, "refused at once: {e}");
    assert!(
        e.contains("rate limit of client address 127.0.0.1 exceeded (20000 bytes per second)"),
        "{e}"
    );
    // Logging in is never limited.
    let mut other = c.conn();
    let _: () = redis::cmd("AUTH").arg("pw").query(&mut other).unwrap();
}

#[test]
fn rate_limits_in_the_auth_file_are_checked() {
    let bad = shardgate::auth::file::from_yaml(
        "users:\n  - name: a\n    password: p\n    rate_limit: {requests_per_second: 0}\n",
        &|_| None,
    )
    .unwrap_err();
    assert_eq!(bad.path, "users[0].rate_limit.requests_per_second");
    let bad =
        shardgate::auth::file::from_yaml("requirepass: p\nper_address_rate_limit: {}\n", &|_| None)
            .unwrap_err();
    assert_eq!(bad.path, "per_address_rate_limit");
}

//! Raw bytes against the proxy: pipelining, malformed input, inline commands.

mod common;

use common::cluster::{Cluster, Spec};

#[test]
fn pipelined_raw_commands_reply_in_order() {
    let c = Cluster::start(Spec::default());
    let mut raw = c.raw();
    let mut req = Vec::new();
    let mut want = Vec::new();
    for i in 0..100 {
        let k = format!("r{i}");
        req.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n$1\r\n{}\r\n",
                k.len(),
                i % 10
            )
            .as_bytes(),
        );
        req.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n${}\r\n{k}\r\n", k.len()).as_bytes());
        want.extend_from_slice(format!("+OK\r\n$1\r\n{}\r\n", i % 10).as_bytes());
    }
    raw.send(&req);
    assert_eq!(raw.read_exactly(want.len()), want);
}

#[test]
fn a_bad_command_gets_an_error_and_the_connection_lives() {
    let c = Cluster::start(Spec::default());
    let mut raw = c.raw();
    raw.send(b"*1\r\n$7\r\nNOTACMD\r\n*1\r\n$3\r\nGET\r\n*2\r\n$4\r\nECHO\r\n$2\r\nok\r\n");
    let want = b"-ERR unknown command 'NOTACMD', with args beginning with: \r\n-ERR wrong number of arguments for 'get' command\r\n$2\r\nok\r\n";
    assert_eq!(raw.read_exactly(want.len()), want.to_vec());
}

#[test]
fn inline_commands_work() {
    let c = Cluster::start(Spec::default());
    let mut raw = c.raw();
    raw.send(b"PING\r\nSET greeting \"hello world\"\r\nGET greeting\r\n\r\nECHO 'a b'\n");
    let want = b"+PONG\r\n+OK\r\n$11\r\nhello world\r\n$3\r\na b\r\n";
    assert_eq!(raw.read_exactly(want.len()), want.to_vec());
}

#[test]
fn a_malformed_frame_gets_a_protocol_error_and_closes() {
    let c = Cluster::start(Spec::default());
    let mut raw = c.raw();
    raw.send(b"*1\r\n$4\r\nPING\r\n*abc\r\n");
    let out = raw.read_until(b"\r\n-ERR Protocol error: invalid multibulk length\r\n");
    assert_eq!(
        out,
        b"+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n".to_vec()
    );
    assert!(raw.is_closed());
    // Other clients are unaffected.
    let mut other = c.raw();
    other.send(b"PING\r\n");
    assert_eq!(other.read_exactly(7), b"+PONG\r\n".to_vec());
}

#[test]
fn quit_replies_ok_then_closes() {
    let c = Cluster::start(Spec::default());
    let mut raw = c.raw();
    raw.send(b"PING\r\nQUIT\r\nPING\r\n");
    assert_eq!(raw.read_until(b"+OK\r\n"), b"+PONG\r\n+OK\r\n".to_vec());
    assert!(raw.is_closed());
}

#[test]
fn hello_switches_protocol() {
    let c = Cluster::start(Spec::default());
    let mut raw = c.raw();
    raw.send(b"HELLO 3\r\n");
    let hello = raw.read_until(b"*0\r\n");
    assert!(
        hello.starts_with(b"%8\r\n"),
        "{}",
        String::from_utf8_lossy(&hello)
    );
    raw.send(b"HSET h f v\r\nHGETALL h\r\nGET nope\r\nHELLO 2 AUTH default anything\r\n");
    let got = raw.read_until(b"*0\r\n");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with(":1\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n_\r\n*16\r\n"),
        "{text}"
    );
    raw.send(b"GET nope\r\n");
    assert_eq!(raw.read_exactly(5), b"$-1\r\n".to_vec());
    raw.send(b"HELLO 4\r\n");
    assert_eq!(
        raw.read_until(b"\r\n"),
        b"-NOPROTO unsupported protocol version\r\n".to_vec()
    );
}

#[test]
fn thousands_of_concurrent_clients() {
    let c = Cluster::start(Spec::default());
    // Each open client costs a socket here and one in the proxy (plus
    // pipes for the test's redis-servers); stay well inside `ulimit -n`.
    let limit = fd_limit().unwrap_or(1024);
    let n = 5000.min((limit.saturating_sub(200)) / 2);
    assert!(n >= 400, "fd limit {limit} too low for this test");
    let mut conns: Vec<_> = (0..n).map(|_| c.raw()).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.send(format!("*3\r\n$3\r\nSET\r\n$5\r\nc{i:04}\r\n$1\r\n1\r\n").as_bytes());
    }
    for conn in conns.iter_mut() {
        assert_eq!(conn.read_exactly(5), b"+OK\r\n".to_vec());
    }
    let mut check = c.raw();
    check.send(b"DBSIZE\r\n");
    let want = format!(":{n}\r\n");
    assert_eq!(check.read_exactly(want.len()), want.into_bytes());
}

fn fd_limit() -> Option<usize> {
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -n"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

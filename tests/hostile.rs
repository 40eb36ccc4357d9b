//! Hostile input against the real `shardgate` binary: huge declared lengths,
//! negative lengths, lengths past the data, deep nesting, junk, half-sent
//! frames and resets. The proxy answers Redis' protocol errors, keeps its
//! memory bounded (RSS read from /proc) and keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{KillOnDrop, RedisServer, TempDir, spawn_proxy, write_map};

const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

struct Proxy {
    child: KillOnDrop,
    port: u16,
    _dir: TempDir,
    _shard: RedisServer,
}

impl Proxy {
    fn start() -> Proxy {
        let shard = RedisServer::start();
        let dir = TempDir::new("hostile");
        let map = write_map(&dir, &[&shard]);
        let (child, port) = spawn_proxy(BIN, &map, &[]);
        Proxy {
            child,
            port,
            _dir: dir,
            _shard: shard,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// Resident set size of the proxy process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// A fresh client can still SET and GET.
    fn assert_serving(&self) {
        let mut s = self.connect();
        s.write_all(b"*3\r\n$3\r\nSET\r\n$2\r\nok\r\n$3\r\nyes\r\n*2\r\n$3\r\nGET\r\n$2\r\nok\r\n")
            .unwrap();
        assert_eq!(read_n(&mut s, 14), b"+OK\r\n$3\r\nyes\r\n");
    }
}

fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    s.read_exact(&mut out).unwrap();
    out
}

/// Everything until the proxy closes the connection.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn a_declared_4_gib_bulk_is_refused_and_memory_stays_bounded() {
    let p = Proxy::start();
    let before = p.rss_kib();
    let mut s = p.connect();
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4294967296\r\n")
        .unwrap();
    let reply = read_n(&mut s, 42);
    assert_eq!(
        String::from_utf8_lossy(&reply),
        "-ERR Protocol error: invalid bulk length\r\n"
    );
    // Keep streaming as an attacker would: the connection is closed.
    let _ = s.write_all(&vec![b'x'; 1 << 20]);
    assert!(read_to_close(&mut s).is_empty());
    p.assert_serving();
    let after = p.rss_kib();
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn a_large_declared_bulk_sent_slowly_costs_only_what_arrived() {
    let p = Proxy::start();
    let before = p.rss_kib();
    // 400 MiB declared (under the 512 MiB limit), 2 MiB actually sent.
    let mut slow: Vec<TcpStream> = (0..4).map(|_| p.connect()).collect();
    for s in &mut slow {
        s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$419430400\r\n")
            .unwrap();
        s.write_all(&vec![b'x'; 2 << 20]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    p.assert_serving();
    let after = p.rss_kib();
    assert!(
        after < before + 128 * 1024,
        "4 half-sent 400 MiB frames grew RSS from {before} KiB to {after} KiB"
    );
}

#[test]
fn malformed_frames_get_redis_protocol_errors() {
    let p = Proxy::start();
    let cases: &[(&[u8], &str)] = &[
        (
            b"*2\r\n$3\r\nGET\r\n$-5\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*abc\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*99999999999\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n*1\r\n*1\r\n*1\r\n$4\r\nPING\r\n",
            "-ERR Protocol error: expected '$', got '*'\r\n",
        ),
        (
            b"*1\r\n:12\r\n",
            "-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            b"SET k \"unbalanced\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ];
    for (input, want) in cases {
        let mut s = p.connect();
        s.write_all(input).unwrap();
        let got = read_to_close(&mut s);
        assert_eq!(
            String::from_utf8_lossy(&got),
            *want,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
    // Deep nesting in one frame, many levels: same error, no stack trouble.
    let mut s = p.connect();
    s.write_all(&b"*1\r\n".repeat(100_000)).unwrap();
    assert_eq!(
        read_to_close(&mut s),
        b"-ERR Protocol error: expected '$', got '*'\r\n"
    );
    p.assert_serving();
}

#[test]
fn junk_without_newline_is_cut_off_and_junk_lines_are_unknown_commands() {
    let p = Proxy::start();
    // 1 MiB of binary junk and no newline: too big for an inline command.
    let mut s = p.connect();
    let junk: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8 | 0x80).collect();
    let _ = s.write_all(&junk);
    let got = read_to_close(&mut s);
    assert_eq!(got, b"-ERR Protocol error: too big inline request\r\n");

    // Junk lines are inline commands: each gets an error, the connection lives.
    let mut s = p.connect();
    s.write_all(b"\x01\x02garbage here\r\nHTTP/1.1 200\r\nPING\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.ends_with(b"+PONG\r\n") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    assert_eq!(text.matches("-ERR unknown command").count(), 2, "{text}");
    p.assert_serving();
}

#[test]
fn half_sent_frames_and_resets_do_not_disturb_others() {
    let p = Proxy::start();
    let mut keep = p.connect();
    for i in 0..50 {
        let mut s = p.connect();
        // A frame cut anywhere, then a hard reset (RST via linger 0) or a close.
        let frame = b"*3\r\n$3\r\nSET\r\n$5\r\nhalf!\r\n$10\r\n0123456789\r\n";
        s.write_all(&frame[..(i * 7) % frame.len()]).unwrap();
        if i % 2 == 0 {
            linger_zero(&s);
            drop(s);
        } else {
            let _ = s.shutdown(std::net::Shutdown::Write);
            let _ = read_to_close(&mut s);
        }
        keep.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        assert_eq!(read_n(&mut keep, 7), b"+PONG\r\n");
    }
    p.assert_serving();
}

/// Sets SO_LINGER to zero so that closing sends RST (through the libc call
/// std does not expose).
#[allow(unsafe_code)]
fn linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Linger {
        l_onoff: i32,
        l_linger: i32,
    }
    unsafe extern "C" {
        fn setsockopt(fd: i32, level: i32, name: i32, val: *const Linger, len: u32) -> i32;
    }
    const SOL_SOCKET: i32 = 1;
    const SO_LINGER: i32 = 13;
    let l = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: fd is a live socket owned by `s`; the struct matches `struct linger`.
    let rc = unsafe {
        setsockopt(
            s.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            &l,
            std::mem::size_of::<Linger>() as u32,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER)");
}

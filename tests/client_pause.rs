//! `CLIENT PAUSE` / `UNPAUSE` of the proxy's clients and `CLIENT UNBLOCK`
//! of a proxy client blocked in a blocking command, each scenario run
//! against a plain redis-server and against the proxy, replies compared
//! byte for byte.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, Spec};
use common::compare::{blocked_clients, both, text, wait_blocked};
use common::resp::FrameConn;

#[test]
fn a_write_pause_holds_writes_and_lets_reads_through() {
    both(|port, who| {
        let mut admin = FrameConn::connect(port);
        let _ = admin.call(&["DEL", "pk", "hll"]);
        let _ = admin.call(&["PFADD", "hll", "a"]);
        assert_eq!(
            admin.call(&["CLIENT", "PAUSE", "100000", "WRITE"]),
            b"+OK\r\n"
        );
        let mut reader = FrameConn::connect(port);
        for read in [&["GET", "pk"][..], &["EVAL_RO", "return 1", "0"], &["PING"]] {
            let t0 = Instant::now();
            let _ = reader.call(read);
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "{who}: {read:?} was held"
            );
        }
        // Each of these waits until the pause ends.
        let held: [&[&str]; 5] = [
            &["SET", "pk", "v"],
            &["PUBLISH", "ch", "m"],
            &["EVAL", "return 1", "0"],
            &["PFCOUNT", "hll"],
            &["INCR", "pn"],
        ];
        let mut writers: Vec<FrameConn> = held
            .iter()
            .map(|cmd| {
                let mut w = FrameConn::connect(port);
                w.send(cmd);
                w
            })
            .collect();
        wait_blocked(port, held.len() as u64, who);
        for w in &mut writers {
            assert_eq!(w.frame_within(Duration::from_millis(50)), None, "{who}");
        }
        assert_eq!(admin.call(&["CLIENT", "UNPAUSE"]), b"+OK\r\n");
        let replies: Vec<String> = writers.iter_mut().map(|w| text(&w.frame())).collect();
        assert_eq!(
            replies,
            ["+OK\r\n", ":0\r\n", ":1\r\n", ":1\r\n", ":1\r\n"],
            "{who}"
        );
        assert_eq!(blocked_clients(port), 0, "{who}");
        let _ = admin.call(&["DEL", "pn"]);
    });
}

#[test]
fn an_all_pause_holds_every_command_the_pausers_own_too_until_it_ends() {
    both(|port, who| {
        let mut c = FrameConn::connect(port);
        assert_eq!(c.call(&["CLIENT", "PAUSE", "400", "ALL"]), b"+OK\r\n");
        let t0 = Instant::now();
        assert_eq!(c.call(&["PING"]), b"+PONG\r\n");
        assert!(
            t0.elapsed() >= Duration::from_millis(300),
            "{who}: PING was not held"
        );
        // A shorter pause does not shorten one in force; a later one
        // lengthens it.
        assert_eq!(c.call(&["CLIENT", "PAUSE", "400", "WRITE"]), b"+OK\r\n");
        assert_eq!(c.call(&["CLIENT", "PAUSE", "10", "WRITE"]), b"+OK\r\n");
        let t0 = Instant::now();
        assert_eq!(c.call(&["SET", "pk2", "v"]), b"+OK\r\n");
        assert!(
            t0.elapsed() >= Duration::from_millis(300),
            "{who}: SET was not held"
        );
        let _ = c.call(&["DEL", "pk2"]);
    });
}

#[test]
fn pause_and_unblock_errors_are_redis_own() {
    let mut seen: Vec<Vec<String>> = Vec::new();
    let cases: [&[&str]; 7] = [
        &["CLIENT", "PAUSE", "abc"],
        &["CLIENT", "PAUSE", "-1"],
        &["CLIENT", "PAUSE", "10", "FOO"],
        &["CLIENT", "UNBLOCK", "abc"],
        &["CLIENT", "UNBLOCK", "1", "FOO"],
        &["CLIENT", "UNBLOCK", "99999"],
        &["CLIENT", "UNPAUSE"],
    ];
    both(|port, _| {
        let mut c = FrameConn::connect(port);
        seen.push(cases.iter().map(|a| text(&c.call(a))).collect());
    });
    assert_eq!(seen[0], seen[1]);
}

/// CLIENT UNBLOCK of a proxy client blocked in BLPOP / BLMOVE / XREAD:
/// `:1` then `:0`, the command ends with Redis' timeout reply or the
/// UNBLOCKED error; a client that is not blocked gets `:0`.
#[test]
fn client_unblock_ends_a_blocked_command_as_redis_does() {
    let mut seen: Vec<Vec<String>> = Vec::new();
    both(|port, who| {
        let mut out = Vec::new();
        let mut admin = FrameConn::connect(port);
        let blocking: [(&[&str], &str); 4] = [
            (&["BLPOP", "uq", "0"], "TIMEOUT"),
            (&["BLMOVE", "uq", "uq2", "LEFT", "LEFT", "0"], "TIMEOUT"),
            (&["XREAD", "BLOCK", "0", "STREAMS", "us", "$"], "TIMEOUT"),
            (&["BLPOP", "uq", "0"], "ERROR"),
        ];
        for (cmd, mode) in blocking {
            let mut b = FrameConn::connect(port);
            let id = text(&b.call(&["CLIENT", "ID"]));
            let id = id.trim_start_matches(':').trim().to_owned();
            out.push(text(&admin.call(&["CLIENT", "UNBLOCK", &id])));
            b.send(cmd);
            wait_blocked(port, 1, who);
            out.push(text(&admin.call(&["CLIENT", "UNBLOCK", &id, mode])));
            out.push(text(&b.frame()));
            out.push(text(&admin.call(&["CLIENT", "UNBLOCK", &id, mode])));
            wait_blocked(port, 0, who);
        }
        seen.push(out);
    });
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1][2], "*-1\r\n");
    assert_eq!(
        seen[1][6], "*-1\r\n",
        "Redis 7.0 answers BLMOVE's timeout so"
    );
    assert_eq!(
        seen[1][14],
        "-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n"
    );
}

/// An element pushed as the blocked client is unblocked is never lost:
/// either the client gets it, or it stays in the list.
#[test]
fn an_unblock_racing_a_push_loses_no_element() {
    let c = Cluster::start(Spec {
        shards: 1,
        ..Spec::default()
    });
    let mut admin = FrameConn::connect(c.proxy_port);
    let mut pusher = FrameConn::connect(c.proxy_port);
    let (mut got, mut left) = (0, 0);
    for i in 0..30 {
        let mut b = FrameConn::connect(c.proxy_port);
        let id = text(&b.call(&["CLIENT", "ID"]));
        let id = id.trim_start_matches(':').trim().to_owned();
        b.send(&["BLPOP", "race", "0"]);
        wait_blocked(c.proxy_port, 1, "shardgate");
        let v = format!("e{i}");
        pusher.send(&["RPUSH", "race", &v]);
        let _ = admin.call(&["CLIENT", "UNBLOCK", &id]);
        let _ = pusher.frame();
        let reply = text(&b.frame());
        let len = text(&admin.call(&["LLEN", "race"]));
        if reply.contains(&v) {
            got += 1;
            assert_eq!(len, ":0\r\n");
        } else {
            assert_eq!(reply, "*-1\r\n");
            assert_eq!(len, ":1\r\n", "the element stayed in the list");
            left += 1;
            let _ = admin.call(&["DEL", "race"]);
        }
    }
    assert_eq!(got + left, 30);
}

//! Blocking commands' edge cases, each scenario run against a plain
//! redis-server (7.0) and against the proxy, replies compared byte for
//! byte: blocking XREAD / XREADGROUP whose key is renamed, deleted, changes
//! type or loses its group; several clients blocked on one key woken in
//! Redis' order; BLMOVE into a list another client waits on.

mod common;

use std::time::Duration;

use common::compare::{both, text, wait_blocked};
use common::resp::FrameConn;

/// What a blocked client got: within a short while after `change`, and
/// after an `XADD` to the original key (if it was still blocked).
fn after_change(port: u16, who: &str, block: &[&str], change: &[&[&str]]) -> Vec<String> {
    let mut admin = FrameConn::connect(port);
    let _ = admin.call(&["DEL", "{x}s", "{x}s2"]);
    let _ = admin.call(&["XADD", "{x}s", "1-1", "f", "v"]);
    let _ = admin.call(&["XGROUP", "CREATE", "{x}s", "g", "$"]);
    let mut b = FrameConn::connect(port);
    b.send(block);
    wait_blocked(port, 1, who);
    let mut out = Vec::new();
    for cmd in change {
        out.push(text(&admin.call(cmd)));
    }
    let first = b.frame_within(Duration::from_millis(300));
    out.push(first.as_deref().map_or("(still blocked)".to_owned(), text));
    if first.is_none() {
        out.push(text(&admin.call(&["XADD", "{x}s", "9-1", "f", "w"])));
        out.push(
            b.frame_within(Duration::from_millis(500))
                .as_deref()
                .map_or("(still blocked)".to_owned(), text),
        );
        // Whatever still blocks ends with the client.
        drop(b);
        wait_blocked(port, 0, who);
    }
    out
}

#[test]
fn blocked_stream_reads_end_as_redis_ends_them() {
    let xread: &[&str] = &["XREAD", "BLOCK", "0", "STREAMS", "{x}s", "$"];
    let group: &[&str] = &[
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "BLOCK",
        "0",
        "STREAMS",
        "{x}s",
        ">",
    ];
    let changes: [&[&[&str]]; 5] = [
        &[&["RENAME", "{x}s", "{x}s2"]],
        &[&["DEL", "{x}s"]],
        &[&["DEL", "{x}s"], &["SET", "{x}s", "now a string"]],
        &[&["XGROUP", "DESTROY", "{x}s", "g"]],
        &[&["XADD", "{x}s2", "5-1", "f", "elsewhere"]],
    ];
    let mut seen: Vec<Vec<String>> = Vec::new();
    both(|port, who| {
        let mut all = Vec::new();
        for block in [xread, group] {
            for change in changes {
                all.push(after_change(port, who, block, change));
            }
        }
        seen.push(all.concat());
    });
    assert_eq!(seen[0], seen[1], "redis-server vs shardgate");
}

/// Three clients blocked on one key, in this order: one push of three
/// elements serves them in that order; BZPOPMIN and XREAD likewise.
#[test]
fn clients_blocked_on_one_key_are_served_in_redis_order() {
    let mut seen: Vec<Vec<String>> = Vec::new();
    both(|port, who| {
        let mut admin = FrameConn::connect(port);
        let _ = admin.call(&["DEL", "oq", "oz", "os"]);
        let mut out = Vec::new();
        let cases: [(&[&str], &[&str]); 3] = [
            (&["BLPOP", "oq", "0"], &["RPUSH", "oq", "a", "b", "c"]),
            (
                &["BZPOPMIN", "oz", "0"],
                &["ZADD", "oz", "1", "a", "2", "b", "3", "c"],
            ),
            (
                &["XREAD", "BLOCK", "0", "STREAMS", "os", "$"],
                &["XADD", "os", "1-1", "f", "v"],
            ),
        ];
        for (block, wake) in cases {
            let mut clients: Vec<FrameConn> = Vec::new();
            for n in 1..=3 {
                let mut b = FrameConn::connect(port);
                b.send(block);
                wait_blocked(port, n, who);
                clients.push(b);
            }
            out.push(text(&admin.call(wake)));
            for b in &mut clients {
                out.push(text(&b.frame()));
            }
        }
        seen.push(out);
    });
    assert_eq!(seen[0], seen[1], "redis-server vs shardgate");
}

/// BLPOP on `dst` waits; BLMOVE from `src` into `dst` waits; a push to
/// `src` wakes the BLMOVE, whose push into `dst` wakes the BLPOP.
#[test]
fn blmove_into_a_list_another_client_blpops() {
    let mut seen: Vec<Vec<String>> = Vec::new();
    both(|port, who| {
        let mut admin = FrameConn::connect(port);
        let _ = admin.call(&["DEL", "{m}src", "{m}dst"]);
        let mut pop = FrameConn::connect(port);
        pop.send(&["BLPOP", "{m}dst", "0"]);
        wait_blocked(port, 1, who);
        let mut mv = FrameConn::connect(port);
        mv.send(&["BLMOVE", "{m}src", "{m}dst", "LEFT", "RIGHT", "0"]);
        wait_blocked(port, 2, who);
        let mut out = vec![text(&admin.call(&["RPUSH", "{m}src", "x"]))];
        out.push(text(&mv.frame()));
        out.push(text(&pop.frame()));
        out.push(text(&admin.call(&["LLEN", "{m}dst"])));
        // BRPOPLPUSH likewise.
        pop.send(&["BLPOP", "{m}dst", "0"]);
        wait_blocked(port, 1, who);
        mv.send(&["BRPOPLPUSH", "{m}src", "{m}dst", "0"]);
        wait_blocked(port, 2, who);
        out.push(text(&admin.call(&["RPUSH", "{m}src", "y"])));
        out.push(text(&mv.frame()));
        out.push(text(&pop.frame()));
        seen.push(out);
    });
    assert_eq!(seen[0], seen[1], "redis-server vs shardgate");
}

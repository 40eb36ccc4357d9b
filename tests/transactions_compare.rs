//! MULTI/EXEC edge cases, each run against a plain redis-server (7.0) and
//! against the proxy, replies compared byte for byte: EXECABORT after
//! refused commands, FLUSHALL while another client WATCHes, FLUSHALL
//! inside MULTI (with `allow_flush`), and a script inside EXEC that runs
//! past Redis' busy threshold until SCRIPT KILL.

mod common;

use std::time::Duration;

use common::cluster::Spec;
use common::compare::{both, both_with, text};
use common::resp::FrameConn;

fn run(c: &mut FrameConn, cmds: &[&[&str]]) -> Vec<String> {
    cmds.iter().map(|a| text(&c.call(a))).collect()
}

#[test]
fn execabort_and_its_reasons_are_redis_own() {
    let mut seen: Vec<Vec<String>> = Vec::new();
    both(|port, _| {
        let mut c = FrameConn::connect(port);
        let _ = c.call(&["DEL", "{t}a"]);
        let mut out = run(
            &mut c,
            &[
                &["MULTI"],
                &["SET", "{t}a", "1"],
                &["NOSUCHCOMMAND", "x"],
                &["EXEC"],
                &["MULTI"],
                &["SET", "{t}a"],
                &["INCR", "{t}a"],
                &["EXEC"],
                &["MULTI"],
                &["MULTI"],
                &["WATCH", "{t}a"],
                &["EXEC"],
                &["GET", "{t}a"],
                &["EXEC"],
                &["DISCARD"],
            ],
        );
        // A command that fails at run time does not abort the others.
        out.extend(run(
            &mut c,
            &[
                &["MULTI"],
                &["SET", "{t}a", "x"],
                &["INCR", "{t}a"],
                &["GET", "{t}a"],
                &["EXEC"],
            ],
        ));
        seen.push(out);
    });
    assert_eq!(seen[0], seen[1], "redis-server vs shardgate");
}

#[test]
fn flushall_while_another_client_watches_fails_its_exec() {
    let mut seen: Vec<Vec<String>> = Vec::new();
    both(|port, _| {
        let mut a = FrameConn::connect(port);
        let mut b = FrameConn::connect(port);
        let mut out = run(&mut a, &[&["SET", "{w}k", "1"], &["WATCH", "{w}k"]]);
        out.push(text(&b.call(&["FLUSHALL"])));
        out.extend(run(
            &mut a,
            &[
                &["MULTI"],
                &["SET", "{w}k", "2"],
                &["EXEC"],
                &["GET", "{w}k"],
            ],
        ));
        // FLUSHDB too; and a watched key that did not exist is not touched.
        out.extend(run(
            &mut a,
            &[&["SET", "{w}k", "1"], &["WATCH", "{w}k", "{w}none"]],
        ));
        out.push(text(&b.call(&["FLUSHDB"])));
        out.extend(run(&mut a, &[&["MULTI"], &["SET", "{w}k", "3"], &["EXEC"]]));
        out.extend(run(&mut a, &[&["WATCH", "{w}none"]]));
        out.push(text(&b.call(&["FLUSHALL"])));
        out.extend(run(&mut a, &[&["MULTI"], &["SET", "{w}k", "4"], &["EXEC"]]));
        seen.push(out);
    });
    assert_eq!(seen[0], seen[1], "redis-server vs shardgate");
}

#[test]
fn flushall_inside_multi_flushes_every_shard() {
    let mut seen: Vec<Vec<String>> = Vec::new();
    both(|port, _| {
        let mut c = FrameConn::connect(port);
        let mut out = Vec::new();
        for i in 0..20 {
            let k = format!("f{i}");
            out.push(text(&c.call(&["SET", &k, "v"])));
        }
        out.extend(run(
            &mut c,
            &[
                &["MULTI"],
                &["SET", "{t}a", "1"],
                &["FLUSHALL"],
                &["SET", "{t}b", "2"],
                &["EXEC"],
                &["DBSIZE"],
                &["GET", "{t}a"],
                &["GET", "{t}b"],
                &["MULTI"],
                &["FLUSHDB"],
                &["EXEC"],
                &["DBSIZE"],
            ],
        ));
        seen.push(out);
    });
    assert_eq!(seen[0], seen[1], "redis-server vs shardgate");
}

#[test]
fn a_script_past_the_busy_threshold_inside_exec_ends_with_script_kill() {
    let spec = Spec {
        server_args: vec!["--busy-reply-threshold".into(), "300".into()],
        ..Spec::default()
    };
    let mut seen: Vec<Vec<String>> = Vec::new();
    both_with(spec, |port, who| {
        let mut a = FrameConn::connect(port);
        let mut b = FrameConn::connect(port);
        let mut out = run(
            &mut a,
            &[
                &["MULTI"],
                &["SET", "{t}x", "1"],
                &["EVAL", "local i = 0 while true do i = i + 1 end", "0"],
            ],
        );
        a.send(&["EXEC"]);
        // Past the command timeout of the test map (2 s): the proxy waits
        // while the shard answers BUSY.
        std::thread::sleep(Duration::from_millis(2500));
        let busy = text(&b.call(&["GET", "{t}x"]));
        assert!(busy.starts_with("-BUSY"), "{who}: {busy}");
        out.push(busy);
        out.push(text(&b.call(&["SCRIPT", "KILL"])));
        let exec = a
            .frame_within(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{who}: EXEC never answered"));
        out.push(text(&exec));
        out.push(text(&b.call(&["GET", "{t}x"])));
        seen.push(out);
    });
    assert_eq!(seen[0], seen[1], "redis-server vs shardgate");
}

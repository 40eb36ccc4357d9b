//! `options.keyless_scripts`: scripts and functions that declare no key.
//! By default they run on the first shard, where a key they touch may not
//! live (a silent wrong answer, shown here); with `refuse` they are
//! refused with `-ERR`, directly and inside MULTI (then EXECABORT).

mod common;

use common::cluster::{Cluster, Spec};
use common::compare::text;
use common::resp::FrameConn;

const LIB: &str =
    "#!lua name=kl\nredis.register_function('one', function(keys, args) return 1 end)";

fn cluster(options: &'static str) -> Cluster {
    Cluster::start(Spec {
        shards: 3,
        extra_options: options,
        ..Spec::default()
    })
}

/// A key that does not live on the first shard.
fn elsewhere(c: &Cluster) -> String {
    (0..)
        .map(|i| format!("kl{i}"))
        .find(|k| c.shard_of(k) != 0)
        .unwrap()
}

#[test]
fn by_default_a_keyless_script_runs_on_the_first_shard_and_may_miss_its_key() {
    let c = cluster("");
    let mut p = FrameConn::connect(c.proxy_port);
    assert_eq!(p.call(&["EVAL", "return 1", "0"]), b":1\r\n");
    let k = elsewhere(&c);
    assert_eq!(p.call(&["SET", &k, "v"]), b"+OK\r\n");
    // The script reads a key it did not declare: the first shard does not
    // have it. This is the silent wrong answer `refuse` prevents.
    let undeclared = p.call(&["EVAL", "return redis.call('GET', ARGV[1])", "0", &k]);
    assert_eq!(undeclared, b"$-1\r\n");
    let declared = p.call(&["EVAL", "return redis.call('GET', KEYS[1])", "1", &k]);
    assert_eq!(declared, b"$1\r\nv\r\n");
}

#[test]
fn refuse_refuses_keyless_scripts_and_functions_everywhere() {
    let c = cluster("  keyless_scripts: refuse\n");
    let mut p = FrameConn::connect(c.proxy_port);
    assert_eq!(
        p.call(&["FUNCTION", "LOAD", "REPLACE", LIB]),
        b"$2\r\nkl\r\n"
    );
    let sha = text(&p.call(&["SCRIPT", "LOAD", "return 1"]));
    let sha = sha.lines().nth(1).unwrap().to_owned();
    for (cmd, body) in [
        ("EVAL", "return 1"),
        ("EVAL_RO", "return 1"),
        ("EVALSHA", sha.as_str()),
        ("EVALSHA_RO", sha.as_str()),
        ("FCALL", "one"),
        ("FCALL_RO", "one"),
    ] {
        let r = text(&p.call(&[cmd, body, "0"]));
        assert_eq!(
            r,
            format!(
                "-ERR {cmd} without keys is refused by the shard map (options.keyless_scripts: refuse): declare every key the script reads or writes (numkeys > 0), so that it runs on their shard\r\n"
            ),
        );
    }
    // With keys, they run on the keys' shard.
    let k = elsewhere(&c);
    assert_eq!(p.call(&["SET", &k, "v"]), b"+OK\r\n");
    let r = p.call(&["EVAL", "return redis.call('GET', KEYS[1])", "1", &k]);
    assert_eq!(r, b"$1\r\nv\r\n");
    assert_eq!(p.call(&["FCALL", "one", "1", &k]), b":1\r\n");
    // Inside MULTI: refused while queueing, and EXEC aborts.
    assert_eq!(p.call(&["MULTI"]), b"+OK\r\n");
    assert!(text(&p.call(&["EVAL", "return 1", "0"])).starts_with("-ERR EVAL without keys"));
    assert_eq!(
        p.call(&["EXEC"]),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    );
}

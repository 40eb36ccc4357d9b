//! PostgreSQL shards give Redis 7.0's replies for whole classes of input
//! (issue 15, "Replies that differ from Redis 7.0"): every float form that
//! Redis' `strtold`-based parser accepts or refuses, the order in which
//! commands with options check syntax, key, type and values, keys and
//! fields of any length, and strings written over hashes. Each test sends
//! the same commands to a real redis-server and, through the proxy, to a
//! postgres shard, and requires byte-identical replies (RESP2 and RESP3).

mod common;

use common::RedisServer;
use common::cluster::{Cluster, Spec};
use common::resp::FrameConn as Raw;

/// One postgres shard, nothing else: every key lands on it.
fn pg_only() -> Cluster {
    Cluster::start(Spec {
        shards: 0,
        pg_shards: 1,
        ..Spec::default()
    })
}

/// Pipelines `cmds` to Redis and to the proxy (both protocols); every reply
/// must be byte-identical. Returns Redis' replies (RESP2).
fn same_replies(proxy_port: u16, redis: &RedisServer, cmds: &[Vec<String>]) -> Vec<Vec<u8>> {
    let mut first = Vec::new();
    for resp3 in [false, true] {
        let mut p = Raw::connect(proxy_port);
        let mut r = Raw::connect(redis.port);
        if resp3 {
            p.call(&["HELLO", "3"]);
            r.call(&["HELLO", "3"]);
        }
        for chunk in cmds.chunks(200) {
            let refs: Vec<&[String]> = chunk.iter().map(Vec::as_slice).collect();
            let want = r.pipeline(&refs);
            let got = p.pipeline(&refs);
            for ((cmd, w), g) in chunk.iter().zip(&want).zip(&got) {
                assert_eq!(
                    String::from_utf8_lossy(g),
                    String::from_utf8_lossy(w),
                    "{cmd:?} (resp3: {resp3})"
                );
            }
            if !resp3 {
                first.extend(want);
            }
        }
    }
    first
}

fn cmd(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// Float forms: each is accepted or refused by Redis' `string2ld` for its
/// own reason (hex, exponents at and past the long double range,
/// denormals, inf/nan spellings, signs, white space, NUL, lengths).
fn float_forms() -> Vec<String> {
    let mut forms: Vec<String> = [
        // Decimal.
        "0",
        "-0",
        "+0",
        "1",
        "-1",
        "+1",
        "1.5",
        "-17.5e-3",
        ".5",
        "5.",
        ".",
        "+.5e-3",
        "1.e2",
        "1E3",
        "1e+3",
        "00012",
        "0.1",
        "3.14159265358979323846264338327950288",
        "123456789012345678901234567890",
        "9007199254740993",
        "18446744073709551617",
        // Malformed.
        "",
        "1e",
        "1e+",
        "1e-",
        "--1",
        "+-1",
        "-+1",
        "1_0",
        "1,5",
        "0b1",
        "1e1e1",
        "1.5.5",
        "abc",
        "1a",
        "e5",
        "- 1",
        "+ 1",
        "1 e5",
        "\u{ff11}",
        // White space and NUL anywhere.
        " 1",
        "1 ",
        "\t1",
        "\n1",
        "1\n",
        "\u{b}1",
        "\u{c}1",
        "\r1",
        "1\r",
        "1\0",
        "\0",
        "1\0abc",
        // Hex.
        "0x10",
        "0X1P-2",
        "0x1.8",
        "0x.8p1",
        "0xA.8P+1",
        "-0x1",
        "+0x1p4",
        "0x1P+4",
        "0xfF",
        "0xffffffffffffffffff",
        "0x1.fffffffffffffffffffp0",
        "0x1.00000000000000008p0",
        "0x1.00000000000000018p0",
        "0x",
        "0x1p",
        "0x.",
        "0x.p1",
        "0x-1",
        "0xg",
        "0x1p1.5",
        "0x1e3",
        "0x1p99999999999999999999",
        "0x0p99999999999999999999",
        // The long double range, its edges and beyond.
        "1e-4940",
        "-1e-4940",
        "1e-4951",
        "1.8e-4951",
        "1.9e-4951",
        "2e-4951",
        "1e-4960",
        "3.36210314311209350626e-4932",
        "0x1p-16382",
        "0x1p-16445",
        "0x1p-16446",
        "0x1.8p-16446",
        "0x1p16383",
        "0x1p16384",
        "0x1.fffffffffffffffep16383",
        "1e4932",
        "1.1e4932",
        "1.18973149535723176502e4932",
        "1.18973149535723176503e4932",
        "1.2e4932",
        "-1.2e4932",
        "1e5000",
        "1e400",
        "-1e400",
        "0e99999999999999999999",
        "0e-99999999999999999999",
        "1e99999999999999999999",
        "-1e99999999999999999999",
        "1e-99999999999999999999",
        "1e0000000000000000000000005",
        // Infinity (accepted, then refused by the sum) and NaN (refused).
        "inf",
        "-inf",
        "+inf",
        "Inf",
        "INF",
        "infinity",
        "INFINITY",
        "-Infinity",
        "infinit",
        "infx",
        "in",
        "nan",
        "-nan",
        "NaN",
        "nan(1)",
        "nanx",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // Lengths around Redis' limit (5120 bytes, MAX_LONG_DOUBLE_CHARS).
    forms.push(format!("0.{}", "0".repeat(5117)));
    forms.push(format!("0.{}", "0".repeat(5118)));
    forms.push(format!("1.{}1", "0".repeat(5116)));
    forms.push(format!("1{}e-5000", "0".repeat(4000)));
    forms.push(format!("1{}e-7000", "0".repeat(5000)));
    forms.push(format!("0.{}1", "0".repeat(4940)));
    forms.push(format!("0.{}1", "0".repeat(4960)));
    forms.push(format!("0x{}", "f".repeat(5000)));
    forms.push(format!("0x0.{}1p4", "0".repeat(4100)));
    forms
}

#[test]
fn every_float_form_is_accepted_or_refused_as_redis_does() {
    let c = pg_only();
    let redis = RedisServer::start();
    let mut cmds = vec![
        cmd(&["FLUSHALL"]),
        cmd(&["HSET", "hash", "f", "1"]),
        cmd(&["SET", "str", "abc"]),
    ];
    for (i, form) in float_forms().iter().enumerate() {
        let (k, h) = (format!("k{i}"), format!("h{i}"));
        let f = form.as_str();
        for c in [
            // The form as the stored value, and as the increment.
            vec!["SET", &k, f],
            vec!["INCRBYFLOAT", &k, "1"],
            vec!["INCRBYFLOAT", &k, f],
            vec!["INCRBYFLOAT", "fresh", f],
            vec!["DEL", "fresh"],
            vec!["HSET", &h, "f", f],
            vec!["HINCRBYFLOAT", &h, "f", "1"],
            vec!["HINCRBYFLOAT", &h, "g", f],
            vec!["HGETALL", &h],
            // Type and value checks come in Redis' order.
            vec!["INCRBYFLOAT", "hash", f],
            vec!["INCRBYFLOAT", "str", f],
            vec!["HINCRBYFLOAT", "str", "f", f],
            vec!["HINCRBYFLOAT", "hash", "f", f],
        ] {
            cmds.push(cmd(&c));
        }
    }
    // Sums at the edges: overflow, denormals, cancellation, infinities.
    for (a, b) in [
        ("1.18973149535723176502e4932", "1.18973149535723176502e4932"),
        ("-1.18973149535723176502e4932", "-1e4932"),
        ("1e-4940", "1e-4940"),
        ("1e-4940", "-1e-4940"),
        ("0x1p-16445", "0x1p-16445"),
        ("0x1p-16382", "-0x1p-16445"),
        ("inf", "1"),
        ("inf", "-inf"),
        ("-0", "-0"),
        ("0x10", "0x10"),
        ("1e4931", "1"),
    ] {
        cmds.push(cmd(&["SET", "sum", a]));
        cmds.push(cmd(&["INCRBYFLOAT", "sum", b]));
        cmds.push(cmd(&["GET", "sum"]));
    }
    let replies = same_replies(c.proxy_port, &redis, &cmds);
    // The issue's examples, to be sure the comparison saw them.
    let at = |c: &[&str]| {
        let i = cmds
            .iter()
            .position(|x| x == &cmd(c))
            .expect("command sent");
        String::from_utf8_lossy(&replies[i]).into_owned()
    };
    let i = float_forms().iter().position(|f| f == "0x10").unwrap();
    assert_eq!(at(&["INCRBYFLOAT", &format!("k{i}"), "1"]), "$2\r\n17\r\n");
    assert!(at(&["INCRBYFLOAT", "hash", "abc"]).starts_with("-WRONGTYPE"));
}

/// Commands with options check syntax, then the key, then values, in Redis'
/// order: GETEX of a missing key is nil whatever its expiry says, SET checks
/// the whole expiry (overflow too) before GET/NX/XX, EXPIRE checks its
/// numbers before the key, option names end at a NUL (C strings).
#[test]
fn options_are_checked_in_redis_order() {
    let c = pg_only();
    let redis = RedisServer::start();
    let max = "9223372036854775807";
    let min = "-9223372036854775808";
    let mut cmds: Vec<Vec<String>> = ["FLUSHALL", "SET s v", "HSET h f v", "SET t v EX 1000"]
        .iter()
        .map(|l| l.split(' ').map(str::to_owned).collect())
        .collect();
    let key_states = ["missing", "s", "h", "t"];
    // GETEX: every option form on every kind of key.
    let getex_opts: Vec<Vec<&str>> = vec![
        vec![],
        vec!["EX", "abc"],
        vec!["EX", "0"],
        vec!["EX", "-1"],
        vec!["EX", max],
        vec!["PX", max],
        vec!["EXAT", max],
        vec!["PXAT", "0"],
        vec!["EX", "1.5"],
        vec!["PX", ""],
        vec!["EX"],
        vec!["BOGUS"],
        vec!["EX", "1", "PX", "2"],
        vec!["EX", "1", "EX", "abc"],
        vec!["PERSIST", "EX", "1"],
        vec!["EX", "1", "PERSIST"],
        vec!["NX"],
        vec!["KEEPTTL"],
        vec!["GET"],
        vec!["persist\0junk"],
        vec!["ex\0", "100"],
        vec!["PERSIST"],
    ];
    for k in key_states {
        for o in &getex_opts {
            let mut c = vec!["GETEX", k];
            c.extend(o.iter().copied());
            cmds.push(cmd(&c));
            cmds.push(cmd(&["TYPE", k]));
        }
    }
    // SET: expiry values against NX/XX/GET on every kind of key.
    let set_opts: Vec<Vec<&str>> = vec![
        vec!["NX", "PX", max],
        vec!["XX", "PX", max],
        vec!["GET", "PX", max],
        vec!["NX", "EX", max],
        vec!["XX", "EX", "abc"],
        vec!["GET", "EX", "0"],
        vec!["NX", "GET", "EX", "-5"],
        vec!["NX", "EXAT", max],
        vec!["XX", "PXAT", max],
        vec!["GET"],
        vec!["NX", "GET"],
        vec!["XX", "GET", "KEEPTTL"],
        vec!["EX", "10", "EX", "20"],
        vec!["PX", "10", "EX", "20"],
        vec!["KEEPTTL", "PERSIST"],
        vec!["GET", "GET"],
        vec!["NX", "XX"],
        vec!["nx\0junk"],
        vec!["EX", "10\0"],
        vec!["XX", "PX", "100000"],
    ];
    for k in key_states {
        for o in &set_opts {
            for c in [vec!["SET", "s", "v"], vec!["HSET", "h", "f", "v"]] {
                cmds.push(cmd(&c));
            }
            cmds.push(cmd(&["SET", "t", "v", "EX", "1000"]));
            cmds.push(cmd(&["DEL", "missing"]));
            let mut c = vec!["SET", k, "new"];
            c.extend(o.iter().copied());
            cmds.push(cmd(&c));
            cmds.push(cmd(&["TYPE", k]));
            cmds.push(cmd(&["GET", "s"]));
        }
    }
    cmds.push(cmd(&["DEL", "missing"]));
    cmds.push(cmd(&["SET", "t", "v", "EX", "1000"]));
    // The EXPIRE family: numbers, overflow and option conflicts before the
    // key, NX/XX/GT/LT after it.
    for name in ["EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT"] {
        for k in key_states {
            for o in [
                vec!["abc"],
                vec![max],
                vec![min],
                vec!["-1", "GT"],
                vec!["10", "BOGUS"],
                vec!["abc", "BOGUS"],
                vec!["10", "NX", "XX"],
                vec!["10", "GT", "LT"],
                vec!["abc", "GT", "LT"],
                vec!["10", "nx\0junk"],
                vec!["10", "NX", "NX"],
                vec!["99999999999", "GT"],
                vec!["99999999999", "LT"],
                vec!["99999999999", "XX"],
                vec!["99999999999", "NX"],
            ] {
                let mut c = vec![name, k];
                c.extend(o.iter().copied());
                cmds.push(cmd(&c));
                cmds.push(cmd(&["PERSIST", k]));
                cmds.push(cmd(&["EXISTS", k]));
            }
            cmds.push(cmd(&["SET", "s", "v"]));
            cmds.push(cmd(&["HSET", "h", "f", "v"]));
            cmds.push(cmd(&["SET", "t", "v", "EX", "1000"]));
        }
    }
    // Other commands whose arguments Redis checks before the key or type.
    for line in [
        "SETEX missing abc v",
        "SETEX missing 0 v",
        "SETEX s 9223372036854775807 v",
        "PSETEX s 9223372036854775807 v",
        "PSETEX h 9223372036854775807 v",
        "INCRBY h abc",
        "DECRBY h -9223372036854775808",
        "HINCRBY s f abc",
        "HINCRBY s f 1",
        "HINCRBYFLOAT s f inf",
        "HINCRBYFLOAT s f abc",
        "GETRANGE h a 1",
        "GETRANGE h 0 1",
        "SETRANGE h -1 x",
        "SETRANGE h 536870912 x",
        "SETRANGE h 0 ",
        "SETRANGE missing 536870912 x",
        "SETRANGE missing 0 ",
        "GETSET h v",
        "APPEND h v",
        "HSETNX s f v",
        "HDEL s f",
        "TTL h",
        "PTTL missing",
    ] {
        cmds.push(line.split(' ').map(str::to_owned).collect());
    }
    let replies = same_replies(c.proxy_port, &redis, &cmds);
    let i = cmds
        .iter()
        .position(|x| x == &cmd(&["GETEX", "missing", "EX", "abc"]))
        .unwrap();
    assert_eq!(replies[i], b"$-1\r\n");
}

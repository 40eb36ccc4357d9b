//! Numbers as Redis reads them: every float form (`strtold`) and every
//! integer form (`string2ll`), accepted or refused with Redis' replies.

use super::*;

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
            // Not HGETALL: a value over 64 bytes makes Redis' hash a
            // hashtable, whose order is its own (see hgetall_order_*).
            vec!["HMGET", &h, "f", "g"],
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
/// Integer arguments and stored integers are read as Redis' `string2ll`
/// reads them (no `+`, no leading zeros, no spaces, within 64 bits), by
/// every command that takes one.
#[test]
fn every_integer_form_is_accepted_or_refused_as_redis_does() {
    let c = pg_only();
    let redis = RedisServer::start();
    let forms = [
        "0",
        "-0",
        "+0",
        "1",
        "+1",
        "-1",
        "01",
        "-01",
        "00",
        " 1",
        "1 ",
        "1\0",
        "",
        "-",
        "1.0",
        "1e3",
        "0x10",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616",
        "99999999999999999999999",
        "12a",
        "\u{ff11}",
        "100",
    ];
    let mut cmds = vec![cmd(&["FLUSHALL"]), cmd(&["SET", "s", "10"])];
    for (i, f) in forms.iter().enumerate() {
        let (k, h) = (format!("k{i}"), format!("h{i}"));
        for c in [
            vec!["SET", &k, f],
            vec!["INCR", &k],
            vec!["DECR", &k],
            vec!["INCRBY", "s", f],
            vec!["DECRBY", "s", f],
            vec!["HSET", &h, "f", f],
            vec!["HINCRBY", &h, "f", "1"],
            vec!["HINCRBY", &h, "g", f],
            vec!["GETRANGE", "s", f, "-1"],
            vec!["SETRANGE", &k, f, "x"],
            vec!["SET", "e", "v"],
            vec!["EXPIRE", "e", f],
            vec!["EXISTS", "e"],
            vec!["SETEX", "e2", f, "v"],
            vec!["SET", "e3", "v", "PX", f],
            vec!["GETEX", "s", "EXAT", f],
            vec!["PERSIST", "s"],
        ] {
            cmds.push(cmd(&c));
        }
    }
    same_replies(c.proxy_port, &redis, &cmds);
}

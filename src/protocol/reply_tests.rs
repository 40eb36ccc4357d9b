use super::*;

fn enc(r: &Reply, proto: Protocol) -> String {
    let mut out = BytesMut::new();
    r.encode(proto, &mut out);
    String::from_utf8(out.to_vec()).unwrap()
}

fn both(r: Reply, resp2: &str, resp3: &str) {
    assert_eq!(enc(&r, Protocol::Resp2), resp2, "RESP2 {r:?}");
    assert_eq!(enc(&r, Protocol::Resp3), resp3, "RESP3 {r:?}");
    // Whatever we encode must frame as exactly one frame.
    for (proto, want) in [(Protocol::Resp2, resp2), (Protocol::Resp3, resp3)] {
        let mut out = BytesMut::new();
        r.encode(proto, &mut out);
        assert_eq!(frame_len(&out), Ok(Some(want.len())), "{want:?}");
    }
}

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_owned())
}

#[test]
fn encode_scalars() {
    both(Reply::Ok, "+OK\r\n", "+OK\r\n");
    both(Reply::Simple("PONG".into()), "+PONG\r\n", "+PONG\r\n");
    both(
        Reply::error("ERR bad\r\nthing\n"),
        "-ERR bad  thing \r\n",
        "-ERR bad  thing \r\n",
    );
    both(Reply::Int(0), ":0\r\n", ":0\r\n");
    both(Reply::Int(-42), ":-42\r\n", ":-42\r\n");
    both(
        Reply::Int(i64::MIN),
        ":-9223372036854775808\r\n",
        ":-9223372036854775808\r\n",
    );
    both(
        Reply::Int(i64::MAX),
        ":9223372036854775807\r\n",
        ":9223372036854775807\r\n",
    );
    both(
        Reply::Bulk(b("hello")),
        "$5\r\nhello\r\n",
        "$5\r\nhello\r\n",
    );
    both(Reply::Bulk(b("")), "$0\r\n\r\n", "$0\r\n\r\n");
    both(Reply::Nil, "$-1\r\n", "_\r\n");
    both(Reply::NilArray, "*-1\r\n", "_\r\n");
    both(Reply::Bool(true), ":1\r\n", "#t\r\n");
    both(Reply::Bool(false), ":0\r\n", "#f\r\n");
    both(
        Reply::Verbatim(b("a\r\nb")),
        "$4\r\na\r\nb\r\n",
        "=8\r\ntxt:a\r\nb\r\n",
    );
    both(Reply::Frame(b("$-1\r\n")), "$-1\r\n", "$-1\r\n");
}

#[test]
fn encode_aggregates() {
    both(
        Reply::Array(vec![Reply::Int(1), Reply::Bulk(b("x")), Reply::Nil]),
        "*3\r\n:1\r\n$1\r\nx\r\n$-1\r\n",
        "*3\r\n:1\r\n$1\r\nx\r\n_\r\n",
    );
    both(Reply::Array(vec![]), "*0\r\n", "*0\r\n");
    both(
        Reply::Map(vec![
            (Reply::Bulk(b("a")), Reply::Int(1)),
            (Reply::Bulk(b("b")), Reply::Bool(true)),
        ]),
        "*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:1\r\n",
        "%2\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n#t\r\n",
    );
    both(Reply::Map(vec![]), "*0\r\n", "%0\r\n");
    both(
        Reply::Set(vec![Reply::Simple("r".into())]),
        "*1\r\n+r\r\n",
        "~1\r\n+r\r\n",
    );
    both(
        Reply::Array(vec![Reply::Frame(b(":7\r\n")), Reply::Set(vec![])]),
        "*2\r\n:7\r\n*0\r\n",
        "*2\r\n:7\r\n~0\r\n",
    );
}

#[test]
fn encode_doubles() {
    both(Reply::Double(1.5), "$3\r\n1.5\r\n", ",1.5\r\n");
    both(Reply::Double(f64::INFINITY), "$3\r\ninf\r\n", ",inf\r\n");
    both(
        Reply::Double(f64::NEG_INFINITY),
        "$4\r\n-inf\r\n",
        ",-inf\r\n",
    );
    both(Reply::Double(f64::NAN), "$3\r\nnan\r\n", ",nan\r\n");
}

/// Expected values are what C `printf("%.17g")` prints (glibc).
#[test]
fn double_formatting_matches_printf() {
    for (d, want) in [
        (0.0, "0"),
        (-0.0, "-0"),
        (1.0, "1"),
        (-2.0, "-2"),
        (3.25, "3.25"),
        (2.2, "2.2000000000000002"),
        (0.1, "0.10000000000000001"),
        (1.0 / 3.0, "0.33333333333333331"),
        (100.0, "100"),
        (1e16, "10000000000000000"),
        (1e17, "1e+17"),
        (1.5e17, "1.5e+17"),
        (123456789012345678.0, "1.2345678901234568e+17"),
        (0.0001, "0.0001"),
        (0.00001, "1.0000000000000001e-05"),
        (1e-300, "1e-300"),
        (f64::MAX, "1.7976931348623157e+308"),
        (5e-324, "4.9406564584124654e-324"),
        (99999999999999999.0, "1e+17"),
        (2.5, "2.5"),
    ] {
        assert_eq!(format_double(d), want, "{d:e}");
    }
}

fn fb(s: &[u8]) -> Bytes {
    Bytes::copy_from_slice(s)
}

#[test]
fn array_elements_of_every_aggregate() {
    let el = |s: &[u8]| -> Vec<Vec<u8>> {
        array_elements(&fb(s))
            .unwrap()
            .unwrap()
            .iter()
            .map(|e| e.to_vec())
            .collect()
    };
    assert_eq!(
        el(b"*3\r\n$1\r\na\r\n$-1\r\n*1\r\n:1\r\n"),
        vec![
            b"$1\r\na\r\n".to_vec(),
            b"$-1\r\n".to_vec(),
            b"*1\r\n:1\r\n".to_vec()
        ]
    );
    // More elements than are kept inline.
    let many = [&b"*10\r\n"[..], &b":7\r\n".repeat(10)].concat();
    assert_eq!(el(&many), vec![b":7\r\n".to_vec(); 10]);
    assert!(el(b"*-1\r\n").is_empty());
    assert!(el(b"*0\r\n").is_empty());
    assert_eq!(
        el(b"~2\r\n+a\r\n+b\r\n"),
        vec![b"+a\r\n".to_vec(), b"+b\r\n".to_vec()]
    );
    assert_eq!(el(b">1\r\n+a\r\n"), vec![b"+a\r\n".to_vec()]);
    assert_eq!(
        el(b"%1\r\n+k\r\n:1\r\n"),
        vec![b"+k\r\n".to_vec(), b":1\r\n".to_vec()]
    );
    assert_eq!(
        el(b"|1\r\n+a\r\n+b\r\n*1\r\n:5\r\n"),
        vec![b":5\r\n".to_vec()]
    );

    for not_array in [&b"+OK\r\n"[..], b":1\r\n", b"$1\r\na\r\n", b"_\r\n", b""] {
        assert_eq!(array_elements(&fb(not_array)), Ok(None));
    }
    assert!(array_elements(&fb(b"*2\r\n:1\r\n")).is_err());
    assert!(array_elements(&fb(b"*x\r\n")).is_err());
    assert!(array_elements(&fb(b"*9999999999\r\n")).is_err());
}

#[test]
fn elements_are_zero_copy() {
    let frame = fb(b"*2\r\n$1\r\na\r\n:2\r\n");
    let elems = array_elements(&frame).unwrap().unwrap();
    assert_eq!(elems[0].as_ptr() as usize, frame.as_ptr() as usize + 4);
}

#[test]
fn integer_frames() {
    assert_eq!(integer(b":42\r\n"), Some(42));
    assert_eq!(integer(b":-1\r\n"), Some(-1));
    assert_eq!(integer(b"|1\r\n+a\r\n+b\r\n:3\r\n"), Some(3));
    assert_eq!(integer(b"+42\r\n"), None);
    assert_eq!(integer(b":x\r\n"), None);
    assert_eq!(integer(b":1"), None);
    assert_eq!(integer(b""), None);
}

#[test]
fn bulk_frames() {
    let get = |s: &[u8]| bulk(&fb(s)).map(|b| b.to_vec());
    assert_eq!(get(b"$5\r\nhello\r\n"), Some(b"hello".to_vec()));
    assert_eq!(get(b"$0\r\n\r\n"), Some(vec![]));
    assert_eq!(get(b"=9\r\ntxt:hello\r\n"), Some(b"hello".to_vec()));
    assert_eq!(get(b"=4\r\nmkd:\r\n"), Some(vec![]));
    assert_eq!(get(b"+OK\r\n"), Some(b"OK".to_vec()));
    assert_eq!(get(b"$-1\r\n"), None);
    assert_eq!(get(b"_\r\n"), None);
    assert_eq!(get(b":1\r\n"), None);
    assert_eq!(get(b"*1\r\n$1\r\na\r\n"), None);
    assert_eq!(get(b"$10\r\nshort\r\n"), None);
    assert_eq!(get(b"=2\r\nab\r\n"), None);
    assert_eq!(get(b""), None);
}

#[test]
fn error_frames() {
    assert!(is_error(b"-ERR x\r\n"));
    assert!(is_error(b"!3\r\nERR\r\n"));
    assert!(is_error(b"|1\r\n+a\r\n+b\r\n-ERR x\r\n"));
    assert!(!is_error(b"+OK\r\n"));
    assert!(!is_error(b""));
    assert_eq!(
        error_text(b"-ERR no such key\r\n").as_deref(),
        Some("ERR no such key")
    );
    assert_eq!(
        error_text(b"!21\r\nSYNTAX invalid syntax\r\n").as_deref(),
        Some("SYNTAX invalid syntax")
    );
    assert_eq!(error_text(b"+OK\r\n"), None);
    assert_eq!(error_text(b"!30\r\nshort\r\n"), None);
}

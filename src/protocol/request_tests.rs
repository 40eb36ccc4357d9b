use super::*;

fn limits() -> Limits {
    Limits::default()
}

/// The arguments of each request, as owned bytes.
type Parsed = Vec<Vec<Vec<u8>>>;

/// Parses every request in `input` at once; also returns the bytes left.
fn parse_all(input: &[u8], limits: &Limits) -> Result<(Parsed, usize), ProtocolError> {
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(req) = parse_request(&mut buf, limits)? {
        check_request(&req);
        out.push(req.args().iter().map(|a| a.to_vec()).collect());
    }
    Ok((out, buf.len()))
}

/// The invariants of any Request: raw is the RESP encoding of its args,
/// which are slices of it.
fn check_request(req: &Request) {
    assert!(!req.args().is_empty());
    let refs: Vec<&[u8]> = req.args().iter().map(|a| &a[..]).collect();
    let mut enc = BytesMut::new();
    encode_command(&refs, &mut enc);
    assert_eq!(&enc[..], &req.raw()[..]);
    let range = req.raw().as_ptr() as usize..req.raw().as_ptr() as usize + req.raw().len();
    for a in req.args() {
        if !a.is_empty() {
            assert!(
                range.contains(&(a.as_ptr() as usize)),
                "arg not a slice of raw"
            );
        }
    }
    assert_eq!(req.name(), &req.args()[0][..]);
}

fn args(v: &[&str]) -> Vec<Vec<u8>> {
    v.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn one(input: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut buf = BytesMut::from(input);
    let req = parse_request(&mut buf, &limits())?.expect("complete request");
    check_request(&req);
    Ok(req.args().iter().map(|a| a.to_vec()).collect())
}

fn error_of(input: &[u8], limits: &Limits) -> String {
    let mut buf = BytesMut::from(input);
    loop {
        match parse_request(&mut buf, limits) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no error for {}", input.escape_ascii()),
            Err(e) => return e.0,
        }
    }
}

#[test]
fn multibulk_basic() {
    let input = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
    let mut buf = BytesMut::from(&input[..]);
    let req = parse_request(&mut buf, &limits()).unwrap().unwrap();
    assert!(buf.is_empty());
    assert_eq!(&req.raw()[..], &input[..]);
    assert_eq!(req.name(), b"GET");
    assert_eq!(req.args().len(), 2);
    assert_eq!(&req.args()[1][..], b"key");
}

#[test]
fn multibulk_binary_and_empty_args() {
    let got = one(b"*3\r\n$0\r\n\r\n$4\r\na\r\nb\r\n$2\r\n\x00\xff\r\n").unwrap();
    assert_eq!(got, vec![b"".to_vec(), b"a\r\nb".to_vec(), vec![0, 0xff]]);
}

#[test]
fn consumes_exactly_one_request() {
    let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nP"[..]);
    let req = parse_request(&mut buf, &limits()).unwrap().unwrap();
    assert_eq!(req.name(), b"PING");
    assert_eq!(&buf[..], b"*1\r\n$4\r\nP");
    assert!(parse_request(&mut buf, &limits()).unwrap().is_none());
    assert_eq!(&buf[..], b"*1\r\n$4\r\nP");
}

#[test]
fn empty_multibulks_are_skipped() {
    let (reqs, left) =
        parse_all(b"*0\r\n*-1\r\n*-5\r\n*1\r\n$4\r\nPING\r\n*0\r\n", &limits()).unwrap();
    assert_eq!(reqs, vec![args(&["PING"])]);
    assert_eq!(left, 0);
    let mut buf = BytesMut::from(&b"*0\r\n"[..]);
    assert!(parse_request(&mut buf, &limits()).unwrap().is_none());
    assert!(buf.is_empty());
}

#[test]
fn blank_inline_lines_are_skipped() {
    let (reqs, left) = parse_all(b"\r\n\n   \r\n\t\nPING\r\n", &limits()).unwrap();
    assert_eq!(reqs, vec![args(&["PING"])]);
    assert_eq!(left, 0);
}

#[test]
fn multibulk_errors() {
    let l = limits();
    for (input, msg) in [
        (&b"*abc\r\n"[..], "invalid multibulk length"),
        (b"*\r\n", "invalid multibulk length"),
        (b"*01\r\n", "invalid multibulk length"),
        (b"*+1\r\n", "invalid multibulk length"),
        (b"* 1\r\n", "invalid multibulk length"),
        (b"*2147483648\r\n", "invalid multibulk length"),
        (b"*99999999999999999999\r\n", "invalid multibulk length"),
        (b"*1\rX", "invalid multibulk length"),
        (b"*1\r\n+OK\r\n", "expected '$', got '+'"),
        (b"*2\r\n$1\r\na\r\n:1\r\n", "expected '$', got ':'"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$abc\r\n", "invalid bulk length"),
        (b"*1\r\n$\r\n", "invalid bulk length"),
        (b"*1\r\n$1\rX", "invalid bulk length"),
        (b"*1\r\n$99999999999999999999\r\n", "invalid bulk length"),
        (b"*1\r\n$3\r\nfooXY", "expected CRLF after bulk data"),
        (b"*1\r\n$3\r\nfoo\rX", "expected CRLF after bulk data"),
        (b"*1\r\n$3\r\nfoo\n", "expected CRLF after bulk data"),
    ] {
        assert_eq!(error_of(input, &l), msg, "{}", input.escape_ascii());
    }
}

#[test]
fn error_display_has_redis_prefix() {
    let mut buf = BytesMut::from(&b"*x\r\n"[..]);
    let e = parse_request(&mut buf, &limits()).unwrap_err();
    assert_eq!(e.to_string(), "Protocol error: invalid multibulk length");
}

#[test]
fn limits_are_enforced() {
    let l = Limits {
        max_bulk_len: 5,
        max_args: 2,
        max_inline_len: 10,
    };
    assert!(parse_all(b"*2\r\n$5\r\nabcde\r\n$0\r\n\r\n", &l).is_ok());
    assert_eq!(error_of(b"*3\r\n", &l), "invalid multibulk length");
    assert_eq!(error_of(b"*1\r\n$6\r\n", &l), "invalid bulk length");
    // Inline: a line of exactly the limit is fine, one more byte is not.
    assert!(parse_all(b"0123456789\n", &l).is_ok());
    assert!(parse_all(b"012345678\r\n", &l).is_ok());
    assert_eq!(error_of(b"0123456789A\n", &l), "too big inline request");
    assert_eq!(error_of(b"0123456789A", &l), "too big inline request");
    // Up to the limit without a newline is just incomplete.
    assert_eq!(parse_all(b"0123456789", &l).unwrap(), (vec![], 10));
}

#[test]
fn too_big_count_strings() {
    let l = limits();
    let mut input = b"*1".to_vec();
    input.resize(MAX_HEADER_LINE + 1, b'1');
    assert_eq!(error_of(&input, &l), "too big mbulk count string");
    // Exactly at the limit it is still incomplete.
    let mut buf = BytesMut::from(&input[..MAX_HEADER_LINE]);
    assert!(parse_request(&mut buf, &l).unwrap().is_none());

    let mut input = b"*1\r\n$1".to_vec();
    input.resize(4 + MAX_HEADER_LINE + 1, b'1');
    assert_eq!(error_of(&input, &l), "too big bulk count string");
}

#[test]
fn big_incomplete_bulk_waits() {
    let mut input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1048576\r\n".to_vec();
    let head = input.len();
    input.resize(head + 1_048_576, b'v');
    input.extend_from_slice(b"\r\n");
    for cut in [
        head,
        head + 1,
        head + 65_536,
        input.len() - 2,
        input.len() - 1,
    ] {
        let mut buf = BytesMut::from(&input[..cut]);
        assert!(parse_request(&mut buf, &limits()).unwrap().is_none());
        assert_eq!(buf.len(), cut);
    }
    let got = one(&input).unwrap();
    assert_eq!(got[2].len(), 1_048_576);
}

/// Redis' own sdssplitargs cases plus the quoting rules around them.
#[test]
fn inline_quoting() {
    let cases: &[(&[u8], &[&[u8]])] = &[
        (b"PING", &[b"PING"]),
        (
            b"SET greeting \"hello world\"",
            &[b"SET", b"greeting", b"hello world"],
        ),
        (b"ECHO 'a b'", &[b"ECHO", b"a b"]),
        (b"  lots   of\tspace  ", &[b"lots", b"of", b"space"]),
        (
            b"\"\\x41\\x42\" \"\\n\\r\\t\\b\\a\\\\\\\"\"",
            &[b"AB", b"\n\r\t\x08\x07\\\""],
        ),
        (b"\"\\xZZ\"", &[b"xZZ"]),
        (b"\"\\x4\"", &[b"x4"]),
        (b"\"\\q\"", &[b"q"]),
        (b"'it\\'s' 'a\\nb'", &[b"it's", b"a\\nb"]),
        (b"\"\" ''", &[b"", b""]),
        (b"foo\"bar\" baz", &[b"foobar", b"baz"]),
        (b"a\x0bb", &[b"a\x0bb"]),
        (b"\"\\xff\\x00\"", &[b"\xff\x00"]),
        (b"GET k\x00ignored", &[b"GET", b"k"]),
        (b"\"a\"\t\"b\"", &[b"a", b"b"]),
    ];
    for (line, want) in cases {
        let mut input = line.to_vec();
        input.extend_from_slice(b"\r\n");
        let want: Vec<Vec<u8>> = want.iter().map(|a| a.to_vec()).collect();
        assert_eq!(one(&input).unwrap(), want, "{}", line.escape_ascii());
    }
}

#[test]
fn inline_unbalanced_quotes() {
    for line in [
        &b"\"foo"[..],
        b"'foo",
        b"\"foo\"bar",
        b"'foo'bar",
        b"\"foo\\\"",
        b"\"a\x00b\"",
        b"SET k \"v",
    ] {
        let mut input = line.to_vec();
        input.push(b'\n');
        assert_eq!(
            error_of(&input, &limits()),
            "unbalanced quotes in request",
            "{}",
            line.escape_ascii()
        );
    }
}

#[test]
fn inline_raw_is_multibulk() {
    let mut buf = BytesMut::from(&b"SET k \"a b\"\nrest"[..]);
    let req = parse_request(&mut buf, &limits()).unwrap().unwrap();
    assert_eq!(
        &req.raw()[..],
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\na b\r\n"
    );
    assert_eq!(&buf[..], b"rest");
}

#[test]
fn inline_line_endings() {
    assert_eq!(one(b"PING\n").unwrap(), args(&["PING"]));
    assert_eq!(one(b"PING\r\n").unwrap(), args(&["PING"]));
    // A lone CR inside the line separates arguments, as in Redis.
    assert_eq!(one(b"A\rB\n").unwrap(), args(&["A", "B"]));
}

/// Every split point of a pipeline: feeding it in two parts, or byte by
/// byte, yields the same requests as feeding it whole.
#[test]
fn incomplete_at_every_split_point() {
    let pipeline: &[u8] = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n*0\r\nPING\r\n\
*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na\r\nbc\r\n\r\nECHO \"x y\" 'z'\n*1\r\n$0\r\n\r\n";
    let (whole, left) = parse_all(pipeline, &limits()).unwrap();
    assert_eq!(left, 0);
    assert_eq!(whole.len(), 5);

    for cut in 0..=pipeline.len() {
        let mut buf = BytesMut::from(&pipeline[..cut]);
        let mut got = Vec::new();
        while let Some(r) = parse_request(&mut buf, &limits()).unwrap() {
            got.push(r.args().iter().map(|a| a.to_vec()).collect::<Vec<_>>());
        }
        buf.extend_from_slice(&pipeline[cut..]);
        while let Some(r) = parse_request(&mut buf, &limits()).unwrap() {
            got.push(r.args().iter().map(|a| a.to_vec()).collect());
        }
        assert_eq!(got, whole, "cut at {cut}");
        assert!(buf.is_empty());
    }

    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &b in pipeline {
        buf.put_u8(b);
        while let Some(r) = parse_request(&mut buf, &limits()).unwrap() {
            check_request(&r);
            got.push(r.args().iter().map(|a| a.to_vec()).collect::<Vec<_>>());
        }
    }
    assert_eq!(got, whole);
}

#[test]
fn from_args_and_encode_command() {
    let req = Request::from_args(vec![Bytes::from_static(b"MGET"), Bytes::from_static(b"a")]);
    assert_eq!(&req.raw()[..], b"*2\r\n$4\r\nMGET\r\n$1\r\na\r\n");
    assert_eq!(req.name(), b"MGET");
    check_request(&req);

    let mut out = BytesMut::from(&b"prefix"[..]);
    encode_command(&[b"DEL", b"", b"x\r\ny"], &mut out);
    assert_eq!(
        &out[..],
        b"prefix*3\r\n$3\r\nDEL\r\n$0\r\n\r\n$4\r\nx\r\ny\r\n"
    );

    let empty = Request::from_args(Vec::new());
    assert_eq!(empty.name(), b"");
    assert_eq!(&empty.raw()[..], b"*0\r\n");
}

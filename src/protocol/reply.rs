//! Replies: encoding the proxy's own replies, and looking into backend ones.
//!
//! Forwarded replies travel as opaque frames ([`Reply::Frame`]) and are never
//! re-encoded. Only replies the proxy produces (local commands, merged
//! split/fan-out results, errors) are built as [`Reply`] values, encoded for
//! the client's protocol version. The inspection helpers below read the few
//! backend replies the proxy must understand (MGET parts, integer sums, SCAN
//! cursors, errors) as zero-copy slices of the frame.

use std::borrow::Cow;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use super::ProtocolError;
use super::scan::{frame_len, line, parse_i64};

/// The RESP version a client negotiated (`HELLO 2` / `HELLO 3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// RESP2, the default for a new connection.
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

/// A reply the proxy produces itself; encoded per [`Protocol`] by
/// [`Reply::encode`]. RESP3-only types degrade the way Redis degrades them.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `+OK`.
    Ok,
    /// A simple string (`+text`); must not contain CR or LF.
    Simple(Cow<'static, str>),
    /// An error including its code, e.g. `ERR unknown command`.
    Error(Cow<'static, str>),
    /// An integer.
    Int(i64),
    /// A binary-safe bulk string.
    Bulk(Bytes),
    /// A missing value: RESP2 `$-1`, RESP3 `_`.
    Nil,
    /// A missing array: RESP2 `*-1`, RESP3 `_`.
    NilArray,
    /// An array of replies.
    Array(Vec<Reply>),
    /// A map: RESP3 `%`, RESP2 a flat array of keys and values.
    Map(Vec<(Reply, Reply)>),
    /// A set: RESP3 `~`, RESP2 an array.
    Set(Vec<Reply>),
    /// A double: RESP3 `,`, RESP2 a bulk string, formatted like Redis 7.0.
    Double(f64),
    /// A boolean: RESP3 `#t`/`#f`, RESP2 `:1`/`:0`.
    Bool(bool),
    /// Verbatim text: RESP3 `=` with format `txt`, RESP2 a bulk string.
    Verbatim(Bytes),
    /// An already-encoded backend frame, written as-is.
    Frame(Bytes),
}

impl Reply {
    /// Appends this reply, encoded for `proto`, to `out`.
    pub fn encode(&self, proto: Protocol, out: &mut BytesMut) {
        let resp3 = proto == Protocol::Resp3;
        match self {
            Reply::Ok => out.put_slice(b"+OK\r\n"),
            Reply::Simple(s) => {
                out.put_u8(b'+');
                put_line_text(out, s);
            }
            Reply::Error(s) => {
                out.put_u8(b'-');
                put_line_text(out, s);
            }
            Reply::Int(n) => put_header(out, b':', *n),
            Reply::Bulk(b) => put_bulk(out, b'$', b),
            Reply::Nil if resp3 => out.put_slice(b"_\r\n"),
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::NilArray if resp3 => out.put_slice(b"_\r\n"),
            Reply::NilArray => out.put_slice(b"*-1\r\n"),
            Reply::Array(items) => put_aggregate(out, b'*', items, proto),
            Reply::Set(items) => put_aggregate(out, if resp3 { b'~' } else { b'*' }, items, proto),
            Reply::Map(pairs) => {
                if resp3 {
                    put_header(out, b'%', len_i64(pairs.len()));
                } else {
                    put_header(out, b'*', len_i64(pairs.len()).saturating_mul(2));
                }
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Reply::Double(d) => {
                let text = format_double(*d);
                if resp3 {
                    out.put_u8(b',');
                    out.put_slice(text.as_bytes());
                    out.put_slice(b"\r\n");
                } else {
                    put_bulk(out, b'$', text.as_bytes());
                }
            }
            Reply::Bool(b) if resp3 => out.put_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Reply::Bool(b) => out.put_slice(if *b { b":1\r\n" } else { b":0\r\n" }),
            Reply::Verbatim(text) if resp3 => {
                put_header(out, b'=', len_i64(text.len()).saturating_add(4));
                out.put_slice(b"txt:");
                out.put_slice(text);
                out.put_slice(b"\r\n");
            }
            Reply::Verbatim(text) => put_bulk(out, b'$', text),
            Reply::Frame(f) => out.put_slice(f),
        }
    }

    /// An error reply; `msg` starts with the error code (`ERR ...`).
    pub fn error(msg: impl Into<Cow<'static, str>>) -> Reply {
        Reply::Error(msg.into())
    }
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A simple string / error body: CR and LF would end the line early, so they
/// become spaces (Redis does the same to error texts).
fn put_line_text(out: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    if bytes.iter().any(|&b| b == b'\r' || b == b'\n') {
        out.extend(
            bytes
                .iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    } else {
        out.put_slice(bytes);
    }
    out.put_slice(b"\r\n");
}

fn put_header(out: &mut BytesMut, kind: u8, n: i64) {
    out.put_u8(kind);
    put_int(out, n);
    out.put_slice(b"\r\n");
}

fn put_bulk(out: &mut BytesMut, kind: u8, data: &[u8]) {
    out.reserve(data.len() + 16);
    put_header(out, kind, len_i64(data.len()));
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

fn put_aggregate(out: &mut BytesMut, kind: u8, items: &[Reply], proto: Protocol) {
    put_header(out, kind, len_i64(items.len()));
    for item in items {
        item.encode(proto, out);
    }
}

/// Appends `v` in decimal without going through `fmt`.
pub(crate) fn put_int(out: &mut BytesMut, v: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[i..]);
}

/// Formats a double like Redis 7.0 `addReplyDouble`: C `%.17g`, with
/// infinities as `inf` / `-inf` and NaN as `nan`.
pub(crate) fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "nan".to_owned();
    }
    if d.is_infinite() {
        return if d > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    // %.17g: 17 significant digits; the exponent of the *rounded* value
    // picks fixed or scientific notation; trailing zeros are dropped.
    let sci = format!("{d:.16e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..17).contains(&exp) {
        let prec = usize::try_from(16 - exp).unwrap_or(0);
        let mut fixed = format!("{d:.prec$}");
        trim_fraction(&mut fixed);
        fixed
    } else {
        let mut m = mantissa.to_owned();
        trim_fraction(&mut m);
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{sign}{:02}", exp.unsigned_abs())
    }
}

/// Drops trailing zeros after a decimal point, and the point if bare.
fn trim_fraction(s: &mut String) {
    if s.contains('.') {
        let keep = s.trim_end_matches('0').trim_end_matches('.').len();
        s.truncate(keep);
    }
}

fn malformed(what: &str) -> ProtocolError {
    ProtocolError(what.to_owned())
}

/// Offset of the frame proper, past any RESP3 attribute (`|`) prefix.
fn skip_attributes(frame: &[u8]) -> Result<usize, ProtocolError> {
    let mut pos = 0;
    while frame.get(pos) == Some(&b'|') {
        let (cr, next) = line(frame, pos + 1)?.ok_or_else(|| malformed("truncated frame"))?;
        let n = parse_i64(&frame[pos + 1..cr])
            .and_then(|n| n.checked_mul(2))
            .ok_or_else(|| malformed("invalid attribute length"))?;
        pos = next;
        for _ in 0..n {
            let rest = frame.get(pos..).unwrap_or_default();
            pos += frame_len(rest)?.ok_or_else(|| malformed("truncated frame"))?;
        }
    }
    Ok(pos)
}

/// The frame proper (attributes skipped) and its offset in `frame`, or `None`
/// if the frame is not well-formed.
fn body(frame: &[u8]) -> Option<(usize, &[u8])> {
    let start = skip_attributes(frame).ok()?;
    Some((start, frame.get(start..)?))
}

/// The header's text and the offset just past its CRLF.
fn header(b: &[u8]) -> Option<(&[u8], usize)> {
    let (cr, next) = line(b, 1).ok()??;
    Some((b.get(1..cr)?, next))
}

/// The element frames of an array-like backend reply (`*`, `~`, `>`; a `%`
/// map gives its keys and values flattened), as zero-copy slices.
///
/// `*-1` gives an empty list; a frame of another type gives `Ok(None)`; an
/// aggregate whose elements are truncated or malformed is an error.
pub fn array_elements(frame: &Bytes) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    Ok(array_element_ranges(frame)?
        .map(|ranges| ranges.into_iter().map(|r| frame.slice(r)).collect()))
}

/// Where each element of an array-like reply lies in `frame` (see
/// [`array_elements`]); for merging replies by copying, with no slice and
/// no allocation up to 8 elements.
pub fn array_element_ranges(
    frame: &[u8],
) -> Result<Option<SmallVec<[Range<usize>; 8]>>, ProtocolError> {
    let start = skip_attributes(frame)?;
    let b = frame.get(start..).unwrap_or_default();
    let Some(&kind) = b.first() else {
        return Ok(None);
    };
    if !matches!(kind, b'*' | b'~' | b'>' | b'%') {
        return Ok(None);
    }
    let (digits, mut pos) = header(b).ok_or_else(|| malformed("truncated frame"))?;
    let n = parse_i64(digits).ok_or_else(|| malformed("invalid aggregate length"))?;
    if n == -1 && kind == b'*' {
        return Ok(Some(SmallVec::new()));
    }
    let count = usize::try_from(n)
        .ok()
        .and_then(|n| {
            if kind == b'%' {
                n.checked_mul(2)
            } else {
                Some(n)
            }
        })
        .ok_or_else(|| malformed("invalid aggregate length"))?;
    // Every element takes at least three bytes (`_\r\n`).
    let mut elems = SmallVec::with_capacity(count.min(b.len() / 3));
    for _ in 0..count {
        let rest = b.get(pos..).unwrap_or_default();
        let len = frame_len(rest)?.ok_or_else(|| malformed("truncated frame"))?;
        elems.push(start + pos..start + pos + len);
        pos += len;
    }
    Ok(Some(elems))
}

/// The value of an integer reply (`:n`).
pub fn integer(frame: &[u8]) -> Option<i64> {
    let (_, b) = body(frame)?;
    if b.first() != Some(&b':') {
        return None;
    }
    parse_i64(header(b)?.0)
}

/// The payload of a string reply as a zero-copy slice: a bulk string (`$`),
/// a verbatim string (`=`, without its `txt:` format prefix) or a simple
/// string (`+`). `None` for nil and every other type.
pub fn bulk(frame: &Bytes) -> Option<Bytes> {
    let (start, b) = body(frame)?;
    let (text, data) = header(b)?;
    match b.first()? {
        b'+' => Some(frame.slice(start + 1..start + 1 + text.len())),
        kind @ (b'$' | b'=') => {
            let len = usize::try_from(parse_i64(text)?).ok()?;
            let skip = if *kind == b'=' { 4 } else { 0 };
            if len < skip || data.checked_add(len)? > b.len() {
                return None;
            }
            Some(frame.slice(start + data + skip..start + data + len))
        }
        _ => None,
    }
}

/// Whether the frame is a nil reply: RESP2's null bulk string or array
/// (`$-1`, `*-1`) or RESP3's null (`_`).
pub fn is_nil(frame: &[u8]) -> bool {
    frame.starts_with(b"$-1\r\n") || frame.starts_with(b"*-1\r\n") || frame.starts_with(b"_\r\n")
}

/// Whether the frame is an error reply (`-` simple or `!` RESP3 blob error).
pub fn is_error(frame: &[u8]) -> bool {
    let b = match frame.first() {
        Some(b'|') => body(frame).map_or(&[][..], |(_, b)| b),
        _ => frame,
    };
    matches!(b.first(), Some(b'-' | b'!'))
}

/// The text of an error reply (code included, e.g. `ERR no such key`), or
/// `None` if the frame is not an error.
pub fn error_text(frame: &[u8]) -> Option<String> {
    let (_, b) = body(frame)?;
    let (text, data) = header(b)?;
    let payload = match b.first()? {
        b'-' => text,
        b'!' => {
            let len = usize::try_from(parse_i64(text)?).ok()?;
            b.get(data..data.checked_add(len)?)?
        }
        _ => return None,
    };
    Some(String::from_utf8_lossy(payload).into_owned())
}

#[cfg(test)]
#[path = "reply_tests.rs"]
mod tests;

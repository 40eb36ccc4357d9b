//! Finds the end of a RESP2/RESP3 frame without allocating.
//!
//! Phase one of the two-phase framing: backend replies are cut off the read
//! buffer with [`frame_len`] and forwarded as opaque [`bytes::Bytes`]; only the
//! few replies the proxy merges are looked into (see [`super::reply`]).
//!
//! The scan is iterative: instead of recursing into aggregates it keeps one
//! counter of frames still owed, so arbitrarily deep nesting cannot overflow
//! the stack and no depth limit is needed. Bulk payloads are skipped
//! arithmetically, so a large incomplete reply costs O(headers) per call.
//!
//! The byte-level helpers here (line search, strict integer parsing) are shared
//! with the request parser and the reply inspectors.

use super::ProtocolError;

/// Byte length of the one complete RESP2/RESP3 frame at the start of `buf`.
///
/// `Ok(None)` means the frame is not complete yet (read more and call again);
/// `Err` means the bytes can never become a valid frame. An attribute (`|`)
/// and the frame it annotates count as one frame. RESP3 streamed types
/// (`$?`, `*?`) are not supported; Redis never sends them.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let mut pos = 0usize;
    // Frames still to read; aggregates add their children.
    let mut owed: u64 = 1;
    while owed > 0 {
        owed -= 1;
        let Some(&kind) = buf.get(pos) else {
            return Ok(None);
        };
        let Some((end, next)) = line(buf, pos + 1)? else {
            return Ok(None);
        };
        let text = &buf[pos + 1..end];
        pos = next;
        match kind {
            b'+' | b'-' | b'(' => {}
            b':' => {
                parse_i64(text).ok_or_else(|| malformed("invalid integer"))?;
            }
            b',' => {
                if text.is_empty() {
                    return Err(malformed("invalid double"));
                }
            }
            b'#' => {
                if text != b"t" && text != b"f" {
                    return Err(malformed("invalid boolean"));
                }
            }
            b'_' => {
                if !text.is_empty() {
                    return Err(malformed("invalid null"));
                }
            }
            b'$' | b'=' | b'!' => {
                let len = parse_i64(text).ok_or_else(|| malformed("invalid bulk length"))?;
                if len == -1 && kind == b'$' {
                    continue;
                }
                let len = usize::try_from(len).map_err(|_| malformed("invalid bulk length"))?;
                if kind == b'=' && len < 4 {
                    return Err(malformed("invalid verbatim string length"));
                }
                match bulk_end(buf, pos, len)? {
                    Some(after) => pos = after,
                    None => return Ok(None),
                }
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = parse_i64(text).ok_or_else(|| malformed("invalid aggregate length"))?;
                if n == -1 && kind == b'*' {
                    continue;
                }
                let n = u64::try_from(n).map_err(|_| malformed("invalid aggregate length"))?;
                let children = match kind {
                    b'%' => n.checked_mul(2),
                    // The attribute's pairs, then the frame it annotates.
                    b'|' => n.checked_mul(2).and_then(|c| c.checked_add(1)),
                    _ => Some(n),
                };
                owed = children
                    .and_then(|c| owed.checked_add(c))
                    .ok_or_else(|| malformed("invalid aggregate length"))?;
            }
            other => {
                return Err(ProtocolError(format!(
                    "invalid frame type byte '{}'",
                    other.escape_ascii()
                )));
            }
        }
    }
    Ok(Some(pos))
}

/// The end of a `len`-byte payload starting at `start`, past its CRLF.
/// `Ok(None)` if not all of it is buffered; the payload itself is never read.
pub(crate) fn bulk_end(
    buf: &[u8],
    start: usize,
    len: usize,
) -> Result<Option<usize>, ProtocolError> {
    let Some(end) = start.checked_add(len) else {
        return Err(malformed("invalid bulk length"));
    };
    match (buf.get(end), buf.get(end.saturating_add(1))) {
        (Some(b'\r'), Some(b'\n')) => Ok(Some(end + 2)),
        (None, _) | (Some(b'\r'), None) => Ok(None),
        _ => Err(malformed("expected CRLF after bulk data")),
    }
}

/// Finds the CRLF ending the line that starts at `start`.
///
/// Returns `(cr, after)`: the index of the CR and the index just past the LF.
/// `Ok(None)` if no CR is buffered yet or the CR is the last byte; a CR not
/// followed by LF is malformed.
pub(crate) fn line(buf: &[u8], start: usize) -> Result<Option<(usize, usize)>, ProtocolError> {
    let Some(rest) = buf.get(start..) else {
        return Ok(None);
    };
    let Some(i) = find_byte(rest, b'\r') else {
        return Ok(None);
    };
    let cr = start + i;
    match buf.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((cr, cr + 2))),
        Some(_) => Err(malformed("expected CRLF")),
    }
}

fn malformed(what: &str) -> ProtocolError {
    ProtocolError(what.to_owned())
}

/// Index of the first `needle` in `hay`.
///
/// RESP lines are mostly a few bytes long, so the first bytes are checked one
/// by one; longer lines (simple strings, inline requests) are scanned eight
/// bytes at a time with the classic "has zero byte" word trick.
pub(crate) fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const HEAD: usize = 16;
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let head = hay.len().min(HEAD);
    if let Some(i) = hay[..head].iter().position(|&b| b == needle) {
        return Some(i);
    }
    let pattern = LO.wrapping_mul(u64::from(needle));
    let mut chunks = hay[head..].chunks_exact(8);
    let mut offset = head;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ pattern;
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            // The lowest flagged byte is always a true match.
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|i| offset + i)
}

/// Parses a decimal integer with Redis `string2ll` rules: optional `-`, no
/// `+`, no leading zeros, no spaces, no overflow.
pub(crate) fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] if !neg => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    if digits.len() > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if neg {
        0i64.checked_sub_unsigned(v)
    } else {
        i64::try_from(v).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(s: &[u8]) -> Result<Option<usize>, ProtocolError> {
        frame_len(s)
    }

    #[test]
    fn simple_types() {
        for f in [
            &b"+OK\r\n"[..],
            b"-ERR bad thing\r\n",
            b":123\r\n",
            b":-5\r\n",
            b"$3\r\nfoo\r\n",
            b"$0\r\n\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"_\r\n",
            b",3.14\r\n",
            b",inf\r\n",
            b"#t\r\n",
            b"#f\r\n",
            b"(3492890328409238509324850943850943825024385\r\n",
            b"!21\r\nSYNTAX invalid syntax\r\n",
            b"=15\r\ntxt:Some string\r\n",
            b"%0\r\n",
            b"~0\r\n",
        ] {
            assert_eq!(len(f), Ok(Some(f.len())), "{}", f.escape_ascii());
            let mut more = f.to_vec();
            more.extend_from_slice(b"+next\r\n");
            assert_eq!(len(&more), Ok(Some(f.len())), "{}", f.escape_ascii());
            for cut in 0..f.len() {
                assert_eq!(len(&f[..cut]), Ok(None), "{} cut {cut}", f.escape_ascii());
            }
        }
    }

    #[test]
    fn aggregates() {
        for f in [
            &b"*2\r\n$3\r\nfoo\r\n:1\r\n"[..],
            b"*2\r\n*1\r\n+a\r\n*-1\r\n",
            b"*3\r\n$-1\r\n*0\r\n*1\r\n*1\r\n:1\r\n",
            b"%2\r\n+a\r\n:1\r\n+b\r\n*2\r\n:1\r\n:2\r\n",
            b"~2\r\n+a\r\n#t\r\n",
            b">3\r\n+message\r\n+chan\r\n$2\r\nhi\r\n",
            b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:1\r\n:2\r\n",
            b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n",
            // Chained attributes (redis-protocol refuses these; RESP3 allows).
            b"|1\r\n+a\r\n+b\r\n|1\r\n+c\r\n+d\r\n:1\r\n",
        ] {
            assert_eq!(len(f), Ok(Some(f.len())), "{}", f.escape_ascii());
            for cut in 0..f.len() {
                assert_eq!(len(&f[..cut]), Ok(None), "{} cut {cut}", f.escape_ascii());
            }
        }
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let mut f = Vec::new();
        for _ in 0..100_000 {
            f.extend_from_slice(b"*1\r\n");
        }
        assert_eq!(len(&f), Ok(None));
        f.extend_from_slice(b":1\r\n");
        assert_eq!(len(&f), Ok(Some(f.len())));
    }

    #[test]
    fn big_incomplete_bulk_is_not_an_error() {
        let mut f = b"$1048576\r\n".to_vec();
        f.resize(f.len() + 1000, b'x');
        assert_eq!(len(&f), Ok(None));
    }

    #[test]
    fn malformed() {
        for f in [
            &b"?\r\n"[..],
            b"$abc\r\n",
            b"$-2\r\n",
            b"$3\r\nfooXY",
            b"$3\r\nfooX",
            b"*-2\r\n",
            b"%-1\r\n",
            b":12a\r\n",
            b":\r\n",
            b"#x\r\n",
            b"_x\r\n",
            b",\r\n",
            b"+OK\rX",
            b"=3\r\ntxt\r\n",
            b"*99999999999999999999\r\n",
            b"%9223372036854775807\r\n%9223372036854775807\r\n",
            b"*?\r\n",
        ] {
            assert!(len(f).is_err(), "{}", f.escape_ascii());
        }
    }

    #[test]
    fn find_byte_matches_position() {
        let hay: Vec<u8> = (0..200u8).collect();
        for n in [0u8, 1, 15, 16, 17, 23, 24, 100, 199, 255] {
            assert_eq!(find_byte(&hay, n), hay.iter().position(|&b| b == n), "{n}");
        }
        let mut hay = vec![b'a'; 100];
        hay[40] = b'\r';
        hay[41] = b'\r';
        assert_eq!(find_byte(&hay, b'\r'), Some(40));
        // Bytes with the high bit set must not trigger false positives.
        let hay = vec![0x8du8; 64];
        assert_eq!(find_byte(&hay, b'\r'), None);
    }

    #[test]
    fn string2ll_rules() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_i64(bad), None, "{}", bad.escape_ascii());
        }
    }
}

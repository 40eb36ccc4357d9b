//! SCAN cursors as Redis reads them: shared by the proxy (which decodes the
//! client's cursor into a shard and that shard's cursor) and by PostgreSQL
//! shards (which decode their own), so both accept exactly what Redis does.

/// Parses a SCAN cursor exactly as Redis 7.0's `parseScanCursorOrReply`:
/// C's `strtoul(s, &end, 10)` on the whole argument, refused (`None`, the
/// caller answers `-ERR invalid cursor`) if it starts with white space,
/// leaves anything unparsed, or overflows `unsigned long`.
///
/// `strtoul` takes an optional sign and negates in unsigned arithmetic, so
/// Redis accepts `-1` as cursor 2^64-1 (and `-2` as 2^64-2, `+5` as 5,
/// `-0` as 0); it also accepts the empty string as 0 and leading zeros.
/// These answers were checked against `redis-server` 7.0.15 with
/// `redis-cli` (`SCAN -1` answers a scan reply, never an error) and are
/// locked by `tests/scan_bounded.rs`.
pub fn parse_scan_cursor(arg: &[u8]) -> Option<u64> {
    let (neg, digits) = match arg.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, arg),
    };
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if digits.is_empty() && !arg.is_empty() {
        // A lone sign: strtoul parses nothing and stops at the sign.
        return None;
    }
    Some(if neg { value.wrapping_neg() } else { value })
}

#[cfg(test)]
mod tests {
    use super::parse_scan_cursor as p;

    #[test]
    fn strtoul_rules_as_redis_applies_them() {
        assert_eq!(p(b"0"), Some(0));
        assert_eq!(p(b""), Some(0));
        assert_eq!(p(b"-0"), Some(0));
        assert_eq!(p(b"+5"), Some(5));
        assert_eq!(p(b"00012"), Some(12));
        assert_eq!(p(b"-1"), Some(u64::MAX));
        assert_eq!(p(b"-2"), Some(u64::MAX - 1));
        assert_eq!(p(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(p(b"-18446744073709551615"), Some(1));
        assert_eq!(p(b"-9223372036854775808"), Some(1 << 63));
        for bad in [
            &b" 5"[..],
            b"5 ",
            b"\t5",
            b"0x10",
            b"abc",
            b"1.5",
            b"--1",
            b"+-1",
            b"-",
            b"+",
            b"18446744073709551616",
            b"-18446744073709551616",
            b"99999999999999999999999",
        ] {
            assert_eq!(p(bad), None, "{}", bad.escape_ascii());
        }
    }
}

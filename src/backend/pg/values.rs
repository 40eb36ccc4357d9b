//! Redis' value rules, reimplemented for PostgreSQL shards: strict integer
//! parsing (`string2ll`), float parsing (`strtold` as Redis uses it), the
//! long double arithmetic and human float format of INCRBYFLOAT, and glob
//! matching (`stringmatchlen`).

use num_bigint::{BigInt, BigUint, Sign};

/// Parses an integer exactly as Redis' `string2ll`: optional `-`, no `+`,
/// no leading zeros, no spaces, within `i64`.
pub fn parse_int(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: i128 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i128::from(d - b'0');
    }
    let v = if neg { -v } else { v };
    i64::try_from(v).ok()
}

/// A float as Redis holds it for INCRBYFLOAT: an x87 80-bit `long double`,
/// emulated exactly (Redis' replies show its rounding, e.g. `5.6 + 200` is
/// `205.60000000000000001`, which no `f64` computation reproduces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LongDouble {
    /// `(-1)^neg * m * 2^e`: `m` normalised to 64 bits, or a denormal
    /// (`e` = -16445, `m` < 2^63), or zero (`m` = 0).
    Finite { neg: bool, m: u64, e: i64 },
    /// Plus or minus infinity (`inf` is a valid float to `strtold`).
    Infinite,
}

/// Largest binary exponent of an 80-bit long double (value < 2^16384).
const LD_MAX_EXP: i64 = 16384;
/// Exponent of the smallest quantum: every long double is a multiple of
/// 2^-16445 (denormals are `m * 2^-16445` with `m < 2^63`, the smallest
/// normal is 2^-16382).
const LD_MIN_E: i64 = -16445;
/// Redis' `MAX_LONG_DOUBLE_CHARS`: `string2ld` refuses strings of this
/// length or longer.
const MAX_LONG_DOUBLE_CHARS: usize = 5 * 1024;

/// `p / q` rounded to the nearest integer, ties to even.
fn round_ratio(p: &BigUint, q: &BigUint) -> BigUint {
    let (quot, rem) = (p / q, p % q);
    let twice = rem << 1u32;
    let one = BigUint::from(1u32);
    if twice > *q || (twice == *q && quot.bit(0)) {
        quot + one
    } else {
        quot
    }
}

/// The long double nearest to `(-1)^neg * p / q` (gradual underflow into
/// denormals, as x87 and glibc's `strtold` do), or `None` when that is
/// infinite (overflow) or a non-zero ratio rounds to zero (underflow).
fn ld_from_ratio(neg: bool, p: &BigUint, q: &BigUint) -> Option<LongDouble> {
    if p.bits() == 0 {
        return Some(LongDouble::Finite { neg, m: 0, e: 0 });
    }
    let mut e = (i64::try_from(p.bits()).ok()? - i64::try_from(q.bits()).ok()? - 64).max(LD_MIN_E);
    loop {
        let m = if e >= 0 {
            round_ratio(p, &(q << usize::try_from(e).ok()?))
        } else {
            round_ratio(&(p << usize::try_from(-e).ok()?), q)
        };
        match m.bits() {
            65.. => e += 1,
            0..=63 if e > LD_MIN_E => e -= 1,
            // Rounded to zero below the smallest denormal.
            0 => return None,
            _ => {
                if e + 64 > LD_MAX_EXP {
                    return None;
                }
                let m = u64::try_from(&m).ok()?;
                return Some(LongDouble::Finite { neg, m, e });
            }
        }
    }
}

/// C's `isspace` in the "C" locale.
fn c_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The digits of `s` in `radix` from the start, as a number, and how many
/// bytes they took.
fn digits(s: &[u8], radix: u32) -> (usize, BigUint) {
    let n = s
        .iter()
        .take_while(|b| char::from(**b).is_digit(radix))
        .count();
    let value = BigUint::parse_bytes(&s[..n], radix).unwrap_or_default();
    (n, value)
}

/// A C exponent (`[+-]digits`), clamped to +-10^12 (beyond that, any
/// non-zero mantissa over- or underflows): `None` without a digit.
fn exponent(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: i64 = 0;
    for d in digits {
        v = (v * 10 + i64::from(d - b'0')).min(1_000_000_000_000);
    }
    Some(if neg { -v } else { v })
}

/// Parses a float as Redis' `string2ld` does with `strtold` (glibc, "C"
/// locale): the whole string must be one number, shorter than 5120 bytes,
/// not starting with white space; an optional sign, then decimal digits
/// with an optional point and `e` exponent, or `0x` hex digits with an
/// optional point and `p` (binary) exponent, or `inf`/`infinity` (any
/// case). NaN, a value that overflows, and a non-zero value that underflows
/// to zero are refused; a value that underflows to a denormal is kept.
pub fn parse_float(s: &[u8]) -> Option<LongDouble> {
    if s.is_empty() || s.len() >= MAX_LONG_DOUBLE_CHARS || c_isspace(s[0]) {
        return None;
    }
    let (neg, rest) = match s[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest.eq_ignore_ascii_case(b"inf") || rest.eq_ignore_ascii_case(b"infinity") {
        return Some(LongDouble::Infinite);
    }
    let hex = rest.len() > 2 && rest[0] == b'0' && matches!(rest[1], b'x' | b'X');
    let (radix, body, exp_char) = if hex {
        (16, &rest[2..], b'p')
    } else {
        (10, rest, b'e')
    };
    let (int_len, _) = digits(body, radix);
    let (frac_len, tail) = match body.get(int_len) {
        Some(b'.') => (digits(&body[int_len + 1..], radix).0, int_len + 1),
        _ => (0, int_len),
    };
    if int_len + frac_len == 0 {
        return None;
    }
    let after = &body[tail + frac_len..];
    let exp = match after.split_first() {
        None => 0,
        Some((c, e)) if c.to_ascii_lowercase() == exp_char => exponent(e)?,
        Some(_) => return None,
    };
    let mut all = body[..int_len].to_vec();
    all.extend_from_slice(&body[tail..tail + frac_len]);
    let n = BigUint::parse_bytes(&all, radix)?;
    if n.bits() == 0 {
        return Some(LongDouble::Finite { neg, m: 0, e: 0 });
    }
    let frac_len = i64::try_from(frac_len).ok()?;
    let one = BigUint::from(1u32);
    if hex {
        // n * 2^k; n < 2^bits.
        let k = exp - 4 * frac_len;
        let bits = i64::try_from(n.bits()).ok()?;
        if bits + k > LD_MAX_EXP + 1 || bits + k < LD_MIN_E - 1 {
            return None;
        }
        return if k >= 0 {
            ld_from_ratio(neg, &(n << usize::try_from(k).ok()?), &one)
        } else {
            ld_from_ratio(neg, &n, &(one << usize::try_from(-k).ok()?))
        };
    }
    // n * 10^k; 10^(len-1) <= n < 10^len. The long double range is about
    // 3.6e-4951 ..= 1.19e4932: outside it by a margin, decide without
    // computing.
    let k = exp - frac_len;
    let significant = all.iter().skip_while(|d| **d == b'0').count();
    let len = i64::try_from(significant).ok()?;
    if len - 1 + k > 4933 || len + k < -4952 {
        return None;
    }
    let ten = BigUint::from(10u32);
    if k >= 0 {
        ld_from_ratio(neg, &(n * ten.pow(u32::try_from(k).ok()?)), &one)
    } else {
        ld_from_ratio(neg, &n, &ten.pow(u32::try_from(-k).ok()?))
    }
}

/// `a + b` in long double arithmetic (round to nearest even); `None` when
/// the sum is infinite (Redis: "increment would produce NaN or Infinity").
pub fn add_long_double(a: &LongDouble, b: &LongDouble) -> Option<LongDouble> {
    let (
        LongDouble::Finite {
            neg: na,
            m: ma,
            e: ea,
        },
        LongDouble::Finite {
            neg: nb,
            m: mb,
            e: eb,
        },
    ) = (a, b)
    else {
        return None;
    };
    let base = (*ea).min(*eb);
    let wide = |m: u64, e: i64| -> Option<BigInt> {
        let shift = usize::try_from(e - base).ok()?;
        Some(BigInt::from(m) << shift)
    };
    let signed = |neg: bool, v: BigInt| if neg { -v } else { v };
    let sum = signed(*na, wide(*ma, *ea)?) + signed(*nb, wide(*mb, *eb)?);
    let neg = sum.sign() == Sign::Minus;
    let mag = sum.magnitude().clone();
    let one = BigUint::from(1u32);
    if base >= 0 {
        ld_from_ratio(neg, &(mag << usize::try_from(base).ok()?), &one)
    } else {
        ld_from_ratio(neg, &mag, &(one << usize::try_from(-base).ok()?))
    }
}

/// Redis' `ld2string(..., LD_STR_HUMAN)`: `%.17Lf` (exact, round half to
/// even like glibc) with trailing zeros and a bare point removed, and `-0`
/// printed as `0`.
pub fn format_human(v: &LongDouble) -> String {
    let LongDouble::Finite { neg, m, e } = v else {
        return "inf".to_owned();
    };
    let scale = BigUint::from(10u32).pow(17);
    let x = if *e >= 0 {
        (BigUint::from(*m) << usize::try_from(*e).unwrap_or(0)) * scale
    } else {
        round_ratio(
            &(BigUint::from(*m) * scale),
            &(BigUint::from(1u32) << usize::try_from(-*e).unwrap_or(0)),
        )
    };
    let digits = format!("{x:0>18}");
    let (int, frac) = digits.split_at(digits.len() - 17);
    let frac = frac.trim_end_matches('0');
    let mut s = String::new();
    if *neg {
        s.push('-');
    }
    s.push_str(int);
    if !frac.is_empty() {
        s.push('.');
        s.push_str(frac);
    }
    if s == "-0" { "0".to_owned() } else { s }
}

/// `current + incr` as INCRBYFLOAT / HINCRBYFLOAT compute and store it;
/// `None` when the sum is not finite.
pub fn add_floats(current: &LongDouble, incr: &LongDouble) -> Option<String> {
    add_long_double(current, incr).map(|sum| format_human(&sum))
}

/// Redis' glob matching (`stringmatchlen`, case-sensitive): `*`, `?`,
/// `[abc]`, `[^a-z]`, `\x`.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let mut skip_longer = false;
    glob(pattern, s, &mut skip_longer, 0)
}

fn glob(mut p: &[u8], mut s: &[u8], skip_longer: &mut bool, nesting: usize) -> bool {
    // Redis caps recursion the same way (CVE-2022-36021).
    if nesting > 1000 {
        return false;
    }
    while let (Some(&pc), Some(&sc)) = (p.first(), s.first()) {
        match pc {
            b'*' => {
                while p.get(1) == Some(&b'*') {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                for i in 0..s.len() {
                    if glob(&p[1..], &s[i..], skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                }
                *skip_longer = true;
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                p = &p[1..];
                let not = p.first() == Some(&b'^');
                if not {
                    p = &p[1..];
                }
                let mut matched = false;
                loop {
                    match p {
                        [] => break,
                        [b'\\', c, ..] => {
                            p = &p[1..];
                            if *c == sc {
                                matched = true;
                            }
                        }
                        [b']', ..] => break,
                        [a, b'-', b, ..] => {
                            let (lo, hi) = if a <= b { (*a, *b) } else { (*b, *a) };
                            if (lo..=hi).contains(&sc) {
                                matched = true;
                            }
                            p = &p[2..];
                        }
                        [c, ..] => {
                            if *c == sc {
                                matched = true;
                            }
                        }
                    }
                    p = &p[1..];
                }
                if not {
                    matched = !matched;
                }
                if !matched {
                    return false;
                }
                s = &s[1..];
                if p.is_empty() {
                    // An unclosed class ends the pattern.
                    break;
                }
            }
            b'\\' if p.len() >= 2 => {
                p = &p[1..];
                if p[0] != sc {
                    return false;
                }
                s = &s[1..];
            }
            c => {
                if c != sc {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_like_string2ll() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-12"), Some(-12));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b"+1"[..],
            b"01",
            b"-0",
            b" 1",
            b"1 ",
            b"",
            b"-",
            b"9223372036854775808",
            b"1.0",
        ] {
            assert_eq!(parse_int(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn floats_like_redis() {
        assert!(parse_float(b"1.5").is_some());
        assert!(parse_float(b"5e3").is_some());
        assert_eq!(parse_float(b"inf"), Some(LongDouble::Infinite));
        assert_eq!(parse_float(b"nan"), None);
        assert_eq!(parse_float(b" 1"), None);
        assert_eq!(parse_float(b"1x"), None);
        assert_eq!(parse_float(b"1e99999"), None);
        assert!(parse_float(b"1e400").is_some(), "long double range");
        // Forms checked against Redis 7.0 (tests/pg_replies/numbers.rs has them all).
        let human = |s: &str| parse_float(s.as_bytes()).map(|v| format_human(&v));
        assert_eq!(human("0x10").as_deref(), Some("16"));
        assert_eq!(human("0X1P-2").as_deref(), Some("0.25"));
        assert_eq!(human("-0x.8p1").as_deref(), Some("-1"));
        assert_eq!(human("0e99999999999999999999").as_deref(), Some("0"));
        assert_eq!(human("1e-4940").as_deref(), Some("0"), "a denormal");
        assert_eq!(
            human("2e-4951").as_deref(),
            Some("0"),
            "rounds to the smallest denormal"
        );
        assert_eq!(human("1e-4951"), None, "rounds to zero");
        assert_eq!(human("0x1p-16446"), None);
        assert!(human("0x1p16383").is_some());
        assert_eq!(human("0x1p16384"), None);
        for bad in [
            "0x", "0x1p", "1e", "1e+", "\t1", "1\0", "nan(1)", "infinit", ".",
        ] {
            assert_eq!(human(bad), None, "{bad:?}");
        }
        assert!(parse_float(format!("0.{}", "0".repeat(5117)).as_bytes()).is_some());
        assert_eq!(
            parse_float(format!("0.{}", "0".repeat(5118)).as_bytes()),
            None
        );
    }

    #[test]
    fn float_sums_print_like_long_double() {
        let add = |a: &str, b: &str| {
            let (Some(x), Some(y)) = (parse_float(a.as_bytes()), parse_float(b.as_bytes())) else {
                return None;
            };
            add_floats(&x, &y)
        };
        // Values taken from Redis 7.0 on x86-64.
        assert_eq!(add("10.50", "0.1").as_deref(), Some("10.6"));
        assert_eq!(add("0.1", "0.2").as_deref(), Some("0.3"));
        assert_eq!(
            add("5.6", "2.0e2").as_deref(),
            Some("205.60000000000000001")
        );
        assert_eq!(add("5.0e3", "2.0e2").as_deref(), Some("5200"));
        assert_eq!(add("1", "-1").as_deref(), Some("0"));
        assert_eq!(add("-0.5", "0.25").as_deref(), Some("-0.25"));
        assert_eq!(add("3", "1.5").as_deref(), Some("4.5"));
        assert_eq!(add("1", "inf"), None);
        assert_eq!(add("1e4932", "1e4932"), None);
        assert!(
            add("1e4900", "1e4900").is_some_and(|s| s.starts_with("2000000000000000000054166"))
        );
    }

    #[test]
    fn globs_like_stringmatchlen() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(glob_match(b"h*llo", b"heeeello"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-b]llo", b"hbllo"));
        assert!(glob_match(b"h\\*llo", b"h*llo"));
        assert!(!glob_match(b"h\\*llo", b"hello"));
        assert!(glob_match(b"user:*", b"user:1"));
        assert!(!glob_match(b"user:*", b"use"));
        assert!(glob_match(b"a*b*c", b"aXXbYYc"));
        assert!(!glob_match(b"a*b*c", b"aXXbYY"));
        assert!(glob_match(b"", b""));
        assert!(!glob_match(b"", b"a"));
        assert!(!glob_match(b"a[", b"ab"));
        let long = vec![b'a'; 5000];
        assert!(!glob_match(
            &b"*"
                .repeat(200)
                .into_iter()
                .chain(*b"b")
                .collect::<Vec<_>>(),
            &long
        ));
    }
}

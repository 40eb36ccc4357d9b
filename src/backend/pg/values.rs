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
    /// `(-1)^neg * m * 2^e`, `m` normalised to 64 bits (or zero).
    Finite { neg: bool, m: u64, e: i64 },
    /// Plus or minus infinity (`inf` is a valid float to `strtold`).
    Infinite,
}

/// Largest binary exponent of an 80-bit long double (value < 2^16384).
const LD_MAX_EXP: i64 = 16384;
/// Smallest normal exponent (value >= 2^-16382); smaller is refused.
const LD_MIN_EXP: i64 = -16382;

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

/// The long double nearest to `(-1)^neg * p / q`, or `None` out of range.
fn ld_from_ratio(neg: bool, p: &BigUint, q: &BigUint) -> Option<LongDouble> {
    if p.bits() == 0 {
        return Some(LongDouble::Finite { neg, m: 0, e: 0 });
    }
    let mut e = i64::try_from(p.bits()).ok()? - i64::try_from(q.bits()).ok()? - 64;
    loop {
        let m = if e >= 0 {
            round_ratio(p, &(q << usize::try_from(e).ok()?))
        } else {
            round_ratio(&(p << usize::try_from(-e).ok()?), q)
        };
        match m.bits() {
            65.. => e += 1,
            0..=63 => e -= 1,
            _ => {
                if e + 64 > LD_MAX_EXP || e + 64 <= LD_MIN_EXP {
                    return None;
                }
                let m = u64::try_from(&m).ok()?;
                return Some(LongDouble::Finite { neg, m, e });
            }
        }
    }
}

/// Parses a float as Redis' `string2ld` (`strtold`): optional sign, digits
/// with an optional point and exponent, or `inf`/`infinity`; no spaces, no
/// NaN, nothing after the number, nothing out of long double range.
pub fn parse_float(s: &[u8]) -> Option<LongDouble> {
    if s.is_empty() || s.len() > 5 * 1024 {
        return None;
    }
    let text = std::str::from_utf8(s).ok()?;
    let (neg, rest) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = rest.to_ascii_lowercase();
    if lower == "inf" || lower == "infinity" {
        return Some(LongDouble::Infinite);
    }
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let n: BigUint = digits.parse().ok()?;
    let k = exp.checked_sub(i64::try_from(frac.len()).ok()?)?;
    if n.bits() == 0 {
        return Some(LongDouble::Finite { neg, m: 0, e: 0 });
    }
    // Far outside the long double range: strtold reports ERANGE.
    if !(-6000..=6000).contains(&k) {
        return None;
    }
    let ten = BigUint::from(10u32);
    let (p, q) = if k >= 0 {
        (n * ten.pow(u32::try_from(k).ok()?), BigUint::from(1u32))
    } else {
        (n, ten.pow(u32::try_from(-k).ok()?))
    };
    ld_from_ratio(neg, &p, &q)
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

//! Options of SET and GETEX (`parseExtendedStringArgumentsOrReply` of Redis
//! 7.0) and option names as Redis' C code compares them; split from
//! `commands` so that parsing stays apart from the SQL.

use bytes::Bytes;

use super::commands::{error, invalid_expire, msg};
use super::values::parse_int;
use crate::protocol::Reply;

/// Expiry options of SET and GETEX, as Redis parses them.
#[derive(Default)]
pub(super) struct SetFlags {
    pub nx: bool,
    pub xx: bool,
    pub get: bool,
    pub keepttl: bool,
    pub persist: bool,
    /// (unit in ms, relative, argument)
    pub expire: Option<(i64, bool, Bytes)>,
}

/// An option name as Redis compares it: a C string, so it ends at the first
/// NUL byte (`SET k v NX\0junk` is `SET k v NX`).
pub(super) fn option_name(arg: &[u8]) -> Vec<u8> {
    c_string(arg).to_ascii_lowercase()
}

/// `arg` up to its first NUL byte, as C code sees it.
pub(super) fn c_string(arg: &[u8]) -> &[u8] {
    let end = arg.iter().position(|b| *b == 0).unwrap_or(arg.len());
    &arg[..end]
}

/// `parseExtendedStringArgumentsOrReply` of Redis 7.0 (`for_set`: SET's
/// options, else GETEX's). Only the syntax: the expiry's value is checked
/// later, where Redis checks it.
pub(super) fn parse_flags(opts: &[Bytes], for_set: bool) -> Result<SetFlags, Reply> {
    let mut f = SetFlags::default();
    let mut j = 0;
    while j < opts.len() {
        let opt = option_name(&opts[j]);
        let next = opts.get(j + 1);
        let has_expire = f.expire.is_some();
        match opt.as_slice() {
            b"nx" if !f.xx && for_set => f.nx = true,
            b"xx" if !f.nx && for_set => f.xx = true,
            b"get" if for_set => f.get = true,
            b"keepttl" if !f.persist && !has_expire && for_set => f.keepttl = true,
            b"persist" if !for_set && !has_expire && !f.keepttl => f.persist = true,
            b"ex" | b"px" | b"exat" | b"pxat" if !f.keepttl && !f.persist && next.is_some() => {
                let (unit, relative) = match opt.as_slice() {
                    b"ex" => (1000, true),
                    b"px" => (1, true),
                    b"exat" => (1000, false),
                    _ => (1, false),
                };
                // Redis refuses mixing different expiry options, not repeating one.
                if let Some((u, r, _)) = &f.expire
                    && (*u, *r) != (unit, relative)
                {
                    return Err(error(msg::SYNTAX));
                }
                if let Some(n) = next {
                    f.expire = Some((unit, relative, n.clone()));
                }
                j += 1;
            }
            _ => return Err(error(msg::SYNTAX)),
        }
        j += 1;
    }
    Ok(f)
}

/// The expiry argument in ms (not yet made absolute), or Redis' error.
pub(super) fn expire_ms(name: &str, unit: i64, raw: &[u8]) -> Result<i64, Reply> {
    let n = parse_int(raw).ok_or_else(|| error(msg::NOT_INT))?;
    if n <= 0 || (unit == 1000 && n > i64::MAX / 1000) {
        return Err(invalid_expire(name));
    }
    Ok(n * unit)
}

/// Makes a validated expiry absolute at `now`.
pub(super) fn absolute(name: &str, ms: i64, relative: bool, now: i64) -> Result<i64, Reply> {
    let at = if relative {
        ms.checked_add(now)
    } else {
        Some(ms)
    };
    at.filter(|a| *a > 0).ok_or_else(|| invalid_expire(name))
}

//! Key positions of a request, from its [`KeySpec`].
//!
//! This runs on every command and reads client input, so it never panics and
//! never allocates beyond the caller's `out` vector. For the movable-key
//! shapes it follows the `getkeys` procedures of Redis 7.0 (`sortGetKeys`,
//! `georadiusGetKeys`, `xreadGetKeys`, the numkeys key specs), so the proxy
//! routes exactly the keys Redis itself would report in `COMMAND GETKEYS`.
//!
//! When the arguments are too malformed to locate the keys, the answer is
//! [`KeyError::Malformed`]: the dispatcher then sends the command to one shard
//! so that Redis produces its own, exact error text.

use bytes::Bytes;

use super::{CommandSpec, Flags, KeySpec};

/// Why the keys of a request could not be located.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The arguments do not have the shape the command needs (bad numkeys,
    /// missing STREAMS, unbalanced key/value pairs ...).
    #[error("malformed key arguments")]
    Malformed,
}

/// Pushes the indices (into args) of every key of the command; `args[0]` is the command name.
///
/// Indices are pushed in the order Redis reports keys (destination first for
/// `ZUNIONSTORE`-style commands) and are always `< args.len()`. `out` is not
/// cleared, so a caller can reuse one vector across requests.
pub fn key_indices(
    spec: &CommandSpec,
    args: &[Bytes],
    out: &mut Vec<usize>,
) -> Result<(), KeyError> {
    match spec.keys {
        KeySpec::None => Ok(()),
        KeySpec::Range { first, last, step } => range_keys(first, last, step, args.len(), out),
        KeySpec::NumKeys {
            numkeys_at,
            dest_at,
        } => numkeys_keys(numkeys_at, dest_at, args, out),
        KeySpec::Streams => stream_keys(args, out),
        KeySpec::KeyAndStore => key_and_store_keys(spec, args, out),
        KeySpec::SubcommandKey => subcommand_key(spec, args, out),
    }
}

/// First/last/step, like Redis' legacy range. With a negative `last` and a
/// `step` above one (MSET, MSETNX), the argument count must fill whole groups,
/// otherwise a value would be missing.
fn range_keys(
    first: usize,
    last: isize,
    step: usize,
    argc: usize,
    out: &mut Vec<usize>,
) -> Result<(), KeyError> {
    if first == 0 || first >= argc {
        return Ok(());
    }
    let last_index = if last < 0 {
        let from_end = last.unsigned_abs();
        if from_end > argc - first {
            return Ok(());
        }
        let last_index = argc - from_end;
        if step > 1 && !(last_index + 1 - first).is_multiple_of(step) {
            return Err(KeyError::Malformed);
        }
        last_index
    } else {
        last.unsigned_abs().min(argc - 1)
    };
    out.extend((first..=last_index).step_by(step.max(1)));
    Ok(())
}

/// `args[numkeys_at]` = N, then N keys; plus an optional destination key.
fn numkeys_keys(
    numkeys_at: usize,
    dest_at: Option<usize>,
    args: &[Bytes],
    out: &mut Vec<usize>,
) -> Result<(), KeyError> {
    let count = args
        .get(numkeys_at)
        .and_then(|arg| parse_count(arg))
        .ok_or(KeyError::Malformed)?;
    let first = numkeys_at + 1;
    let end = first.checked_add(count).ok_or(KeyError::Malformed)?;
    if end > args.len() {
        return Err(KeyError::Malformed);
    }
    if let Some(dest) = dest_at {
        if dest >= args.len() {
            return Err(KeyError::Malformed);
        }
        out.push(dest);
    }
    out.extend(first..end);
    Ok(())
}

/// Parses a non-negative count the way Redis' `string2ll` accepts integers:
/// plain decimal digits, no sign, no leading zero. Negative or unparsable
/// counts give `None`.
fn parse_count(arg: &[u8]) -> Option<usize> {
    match arg {
        [] => None,
        [b'0'] => Some(0),
        [b'0', ..] => None,
        digits => digits.iter().try_fold(0usize, |acc, &b| {
            let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
            acc.checked_mul(10)?.checked_add(usize::from(digit))
        }),
    }
}

/// `XREAD [COUNT n] [BLOCK ms] STREAMS k1 .. kn id1 .. idn` and
/// `XREADGROUP GROUP g c [COUNT n] [BLOCK ms] [NOACK] STREAMS ...`: skips the
/// options (so a group named "streams" is not taken for the keyword) and takes
/// the first half of what follows STREAMS.
fn stream_keys(args: &[Bytes], out: &mut Vec<usize>) -> Result<(), KeyError> {
    let mut i = 1;
    let streams_at = loop {
        let arg = args.get(i).ok_or(KeyError::Malformed)?;
        if arg.eq_ignore_ascii_case(b"block") || arg.eq_ignore_ascii_case(b"count") {
            i += 2;
        } else if arg.eq_ignore_ascii_case(b"group") {
            i += 3;
        } else if arg.eq_ignore_ascii_case(b"noack") {
            i += 1;
        } else if arg.eq_ignore_ascii_case(b"streams") {
            break i;
        } else {
            return Err(KeyError::Malformed);
        }
    };
    let rest = args.len() - streams_at - 1;
    if rest == 0 || !rest.is_multiple_of(2) {
        return Err(KeyError::Malformed);
    }
    let first = streams_at + 1;
    out.extend(first..first + rest / 2);
    Ok(())
}

/// `args[1]`, plus the argument after the last STORE (SORT; STORE or
/// STOREDIST for GEORADIUS*), as Redis' `sortGetKeys`/`georadiusGetKeys`:
/// SORT skips the arguments of LIMIT, GET and BY so a pattern spelled "store"
/// is not taken for the keyword; GEORADIUS* look for options from `args[5]`
/// on, past the fixed arguments. Read-only forms (SORT_RO) cannot store, so
/// only `args[1]` counts for them, as in Redis.
fn key_and_store_keys(
    spec: &CommandSpec,
    args: &[Bytes],
    out: &mut Vec<usize>,
) -> Result<(), KeyError> {
    if args.len() < 2 {
        return Err(KeyError::Malformed);
    }
    out.push(1);
    if !spec.flags.contains(Flags::WRITE) {
        return Ok(());
    }
    let is_sort = spec.name.starts_with("sort");
    let mut store = None;
    let mut i = if is_sort { 2 } else { 5 };
    while let Some(arg) = args.get(i) {
        let has_next = i + 1 < args.len();
        if is_sort {
            if arg.eq_ignore_ascii_case(b"limit") {
                i += 2;
            } else if arg.eq_ignore_ascii_case(b"get") || arg.eq_ignore_ascii_case(b"by") {
                i += 1;
            } else if has_next && arg.eq_ignore_ascii_case(b"store") {
                store = Some(i + 1);
            }
        } else if has_next
            && (arg.eq_ignore_ascii_case(b"store") || arg.eq_ignore_ascii_case(b"storedist"))
        {
            store = Some(i + 1);
            i += 1;
        }
        i += 1;
    }
    out.extend(store);
    Ok(())
}

/// Container commands: the key is `args[2]` for the subcommands that take one.
fn subcommand_key(
    spec: &CommandSpec,
    args: &[Bytes],
    out: &mut Vec<usize>,
) -> Result<(), KeyError> {
    let Some(sub) = args.get(1) else {
        return Ok(());
    };
    let keyed: &[&[u8]] = match spec.name {
        "object" => &[b"encoding", b"freq", b"idletime", b"refcount"],
        "xinfo" => &[b"stream", b"groups", b"consumers"],
        "xgroup" => &[
            b"create",
            b"setid",
            b"destroy",
            b"createconsumer",
            b"delconsumer",
        ],
        "memory" => &[b"usage"],
        _ => &[],
    };
    if !keyed.iter().any(|name| sub.eq_ignore_ascii_case(name)) {
        return Ok(());
    }
    if args.len() < 3 {
        return Err(KeyError::Malformed);
    }
    out.push(2);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup;
    use proptest::prelude::*;

    /// Key indices of `line` (space-separated arguments).
    fn keys(line: &str) -> Result<Vec<usize>, KeyError> {
        let args: Vec<Bytes> = line
            .split(' ')
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        let spec = lookup(&args[0]).unwrap();
        let mut out = Vec::new();
        key_indices(spec, &args, &mut out).map(|()| out)
    }

    #[test]
    fn no_keys() {
        assert_eq!(keys("PING"), Ok(vec![]));
        assert_eq!(keys("dbsize"), Ok(vec![]));
    }

    #[test]
    fn single_key_range() {
        assert_eq!(keys("GET a"), Ok(vec![1]));
        assert_eq!(keys("set a 1 EX 10"), Ok(vec![1]));
        assert_eq!(keys("copy a b"), Ok(vec![1, 2]));
        assert_eq!(keys("COPY a b DB 0 REPLACE"), Ok(vec![1, 2]));
    }

    #[test]
    fn range_counted_from_the_end() {
        assert_eq!(keys("DEL a b c"), Ok(vec![1, 2, 3]));
        assert_eq!(keys("BLPOP a b 0"), Ok(vec![1, 2]));
        assert_eq!(keys("BITOP AND d a b"), Ok(vec![2, 3, 4]));
        assert_eq!(keys("MSET a 1 b 2"), Ok(vec![1, 3]));
    }

    #[test]
    fn range_with_too_few_arguments_is_empty() {
        // Arity is the dispatcher's check; here it must just not panic.
        assert_eq!(keys("GET"), Ok(vec![]));
        assert_eq!(keys("BLPOP"), Ok(vec![]));
        assert_eq!(keys("BLPOP 0"), Ok(vec![]));
        assert_eq!(keys("COPY a"), Ok(vec![1]));
    }

    #[test]
    fn unbalanced_pairs_are_malformed() {
        assert_eq!(keys("MSET a 1 b"), Err(KeyError::Malformed));
        assert_eq!(keys("MSETNX a"), Err(KeyError::Malformed));
    }

    #[test]
    fn numkeys() {
        assert_eq!(keys("EVAL s 2 a b x y"), Ok(vec![3, 4]));
        assert_eq!(keys("EVAL s 0"), Ok(vec![]));
        assert_eq!(keys("FCALL_RO f 1 a"), Ok(vec![3]));
        assert_eq!(keys("ZUNION 2 a b WEIGHTS 1 2"), Ok(vec![2, 3]));
        assert_eq!(keys("LMPOP 1 a LEFT"), Ok(vec![2]));
        assert_eq!(keys("BLMPOP 0 2 a b LEFT"), Ok(vec![3, 4]));
        assert_eq!(keys("BZMPOP 1.5 1 a MIN"), Ok(vec![3]));
        assert_eq!(keys("ZUNIONSTORE d 2 a b"), Ok(vec![1, 3, 4]));
        assert_eq!(keys("zdiffstore d 1 a"), Ok(vec![1, 3]));
    }

    #[test]
    fn bad_numkeys_is_malformed() {
        for line in [
            "EVAL s x a",
            "EVAL s -1 a",
            "EVAL s 3 a b",
            "EVAL s",
            "EVAL s 01 a",
            "EVAL s +1 a",
            "EVAL s 1a a",
            "EVAL s 99999999999999999999999 a",
            "EVAL s 18446744073709551615 a",
            "ZUNIONSTORE d",
            "SINTERCARD",
        ] {
            assert_eq!(keys(line), Err(KeyError::Malformed), "{line}");
        }
    }

    #[test]
    fn streams() {
        assert_eq!(keys("XREAD STREAMS a b 0 0"), Ok(vec![2, 3]));
        assert_eq!(keys("XREAD count 5 BLOCK 0 streams a 0"), Ok(vec![6]));
        assert_eq!(
            keys("XREADGROUP GROUP streams c NOACK STREAMS a $"),
            Ok(vec![6])
        );
        assert_eq!(
            keys("XREADGROUP GROUP g streams COUNT 1 STREAMS a b > >"),
            Ok(vec![7, 8])
        );
    }

    #[test]
    fn bad_streams_are_malformed() {
        for line in [
            "XREAD a 0",
            "XREAD COUNT 1",
            "XREAD STREAMS",
            "XREAD STREAMS a b 0",
            "XREAD BLOCK",
            "XREADGROUP GROUP g",
            "XREADGROUP GROUP g c STREAMS a",
        ] {
            assert_eq!(keys(line), Err(KeyError::Malformed), "{line}");
        }
    }

    #[test]
    fn sort_and_georadius_store() {
        assert_eq!(keys("SORT a"), Ok(vec![1]));
        assert_eq!(keys("SORT a LIMIT 0 10 store d"), Ok(vec![1, 6]));
        assert_eq!(keys("SORT a GET store BY store"), Ok(vec![1]));
        assert_eq!(keys("SORT a STORE d1 STORE d2"), Ok(vec![1, 5]));
        assert_eq!(keys("SORT a STORE"), Ok(vec![1]));
        assert_eq!(keys("SORT a STOREDIST d"), Ok(vec![1]));
        assert_eq!(keys("SORT_RO a STORE d"), Ok(vec![1]));
        assert_eq!(keys("GEORADIUS a 1 2 3 km STOREDIST d"), Ok(vec![1, 7]));
        assert_eq!(keys("GEORADIUSBYMEMBER a m 3 km STORE d"), Ok(vec![1, 6]));
        assert_eq!(keys("GEORADIUS a 1 2 3 km"), Ok(vec![1]));
        assert_eq!(keys("GEORADIUSBYMEMBER a store 3 km"), Ok(vec![1]));
        assert_eq!(keys("GEORADIUS a 1 2 3 km STORE STORE d"), Ok(vec![1, 7]));
        assert_eq!(keys("SORT"), Err(KeyError::Malformed));
    }

    #[test]
    fn subcommand_key() {
        assert_eq!(keys("OBJECT ENCODING a"), Ok(vec![2]));
        assert_eq!(keys("object freq a"), Ok(vec![2]));
        assert_eq!(keys("OBJECT HELP"), Ok(vec![]));
        assert_eq!(keys("XINFO STREAM a FULL"), Ok(vec![2]));
        assert_eq!(keys("XINFO HELP"), Ok(vec![]));
        assert_eq!(keys("XGROUP CREATE a g $ MKSTREAM"), Ok(vec![2]));
        assert_eq!(keys("XGROUP DELCONSUMER a g c"), Ok(vec![2]));
        assert_eq!(keys("MEMORY USAGE a"), Ok(vec![2]));
        assert_eq!(keys("MEMORY STATS"), Ok(vec![]));
        assert_eq!(keys("MEMORY"), Ok(vec![]));
        assert_eq!(keys("OBJECT ENCODING"), Err(KeyError::Malformed));
    }

    #[test]
    fn out_is_appended_to() {
        let args = [Bytes::from_static(b"GET"), Bytes::from_static(b"a")];
        let mut out = vec![7];
        key_indices(lookup(b"get").unwrap(), &args, &mut out).unwrap();
        assert_eq!(out, vec![7, 1]);
    }

    /// Arguments drawn mostly from the words the parsers react to.
    fn arg() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            prop::sample::select(vec![
                "0",
                "1",
                "2",
                "3",
                "-1",
                "99999999999999999999",
                "STREAMS",
                "streams",
                "STORE",
                "storedist",
                "LIMIT",
                "GET",
                "BY",
                "GROUP",
                "COUNT",
                "BLOCK",
                "NOACK",
                "ENCODING",
                "usage",
                "CREATE",
                "k",
            ])
            .prop_map(|s| Bytes::from_static(s.as_bytes())),
            prop::collection::vec(any::<u8>(), 0..4).prop_map(Bytes::from),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_and_indices_are_in_bounds(
            index in 0..crate::command::table::COMMANDS.len(),
            rest in prop::collection::vec(arg(), 0..12),
        ) {
            let spec = &crate::command::table::COMMANDS[index];
            let mut args = vec![Bytes::from_static(spec.name.as_bytes())];
            args.extend(rest);
            let mut out = Vec::new();
            if key_indices(spec, &args, &mut out).is_ok() {
                prop_assert!(out.iter().all(|&i| i > 0 && i < args.len()), "{:?} -> {:?}", args, out);
            }
        }
    }
}

//! The command table against a real Redis: every row agrees with what the
//! server reports in `COMMAND INFO`, every command the server knows is in the
//! table, and `key_indices` finds the keys `COMMAND GETKEYS` finds.

mod common;

use bytes::Bytes;
use common::RedisServer;
use redis::Value;
use shardgate::command::keys::{KeyError, key_indices};
use shardgate::command::table::{COMMANDS, SUBCOMMANDS};
use shardgate::command::{CommandSpec, KeySpec, lookup};

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".to_owned(),
        other => panic!("expected a string, got {other:?}"),
    }
}

fn int(value: &Value) -> i64 {
    match value {
        Value::Int(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn items(value: &Value) -> &[Value] {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        other => panic!("expected an array, got {other:?}"),
    }
}

/// One `COMMAND INFO` entry: the fields the table mirrors.
#[derive(Debug, PartialEq)]
struct Info {
    name: String,
    arity: i64,
    flags: Vec<String>,
    key_range: (i64, i64, i64),
}

impl Info {
    fn from_reply(value: &Value) -> Info {
        let fields = items(value);
        Info {
            name: text(&fields[0]),
            arity: int(&fields[1]),
            flags: items(&fields[2]).iter().map(text).collect(),
            key_range: (int(&fields[3]), int(&fields[4]), int(&fields[5])),
        }
    }

    fn of_row(spec: &CommandSpec) -> Info {
        Info {
            name: spec.name.to_owned(),
            arity: i64::from(spec.arity),
            flags: spec.flags.redis_names().map(str::to_owned).collect(),
            key_range: spec.legacy_key_range(),
        }
    }
}

#[test]
fn every_row_matches_command_info() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let mut command = redis::cmd("COMMAND");
    command.arg("INFO");
    for spec in COMMANDS {
        command.arg(spec.name);
    }
    let reply: Value = command.query(&mut con).unwrap();
    let entries = items(&reply);
    assert_eq!(entries.len(), COMMANDS.len());
    for (spec, entry) in COMMANDS.iter().zip(entries) {
        assert_ne!(
            entry,
            &Value::Nil,
            "{} is unknown to redis-server",
            spec.name
        );
        assert_eq!(Info::of_row(spec), Info::from_reply(entry));
    }
}

/// `(name, ACL categories)` of an entry and of each of its subcommands.
fn categories_of(entry: &Value, out: &mut Vec<(String, Vec<String>)>) {
    let fields = items(entry);
    let mut cats: Vec<String> = items(&fields[6]).iter().map(text).collect();
    cats.sort();
    out.push((text(&fields[0]), cats));
    if let Some(subs) = fields.get(9) {
        for sub in items(subs) {
            categories_of(sub, out);
        }
    }
}

#[test]
fn categories_of_commands_and_subcommands_match_the_server() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let reply: Value = redis::cmd("COMMAND").query(&mut con).unwrap();
    let mut server_rows = Vec::new();
    for entry in items(&reply) {
        categories_of(entry, &mut server_rows);
    }
    let mut table_rows: Vec<(String, Vec<String>)> = COMMANDS
        .iter()
        .map(|c| (c.name, c.categories))
        .chain(SUBCOMMANDS.iter().map(|s| (s.name, s.categories)))
        .map(|(name, cats)| {
            let mut cats: Vec<String> = cats.redis_names().map(|n| format!("@{n}")).collect();
            cats.sort();
            (name.to_owned(), cats)
        })
        .collect();
    server_rows.sort();
    table_rows.sort();
    assert_eq!(table_rows, server_rows);
}

#[test]
fn every_server_command_is_in_the_table_in_any_case() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let mut names: Vec<String> = redis::cmd("COMMAND").arg("LIST").query(&mut con).unwrap();
    // Subcommands ("client|list") are not rows: the container command is.
    names.retain(|name| !name.contains('|'));
    assert_eq!(names.len(), COMMANDS.len());
    for name in &names {
        for spelled in [name.clone(), name.to_ascii_uppercase()] {
            let found = lookup(spelled.as_bytes()).map(|spec| spec.name);
            assert_eq!(found, Some(name.as_str()), "lookup({spelled})");
        }
    }
}

#[test]
fn unknown_names_are_unknown_to_both() {
    let server = RedisServer::start();
    let mut con = server.connection();
    for name in ["notacommand", "gett", "set|x", "get ", ""] {
        assert!(lookup(name.as_bytes()).is_none(), "{name:?}");
        let reply: Value = redis::cmd("COMMAND")
            .arg("INFO")
            .arg(name)
            .query(&mut con)
            .unwrap();
        assert_eq!(items(&reply), [Value::Nil], "{name:?}");
    }
}

/// The key names `key_indices` finds, or `Err` when it calls the request
/// malformed.
fn proxy_keys(args: &[&str]) -> Result<Vec<String>, KeyError> {
    let args: Vec<Bytes> = args
        .iter()
        .map(|a| Bytes::copy_from_slice(a.as_bytes()))
        .collect();
    let spec = lookup(&args[0]).unwrap();
    let mut out = Vec::new();
    key_indices(spec, &args, &mut out)?;
    Ok(out
        .iter()
        .map(|&i| String::from_utf8_lossy(&args[i]).into_owned())
        .collect())
}

/// The key names of `COMMAND GETKEYS`, or `Err` with the server's error.
fn server_keys(con: &mut redis::Connection, args: &[&str]) -> Result<Vec<String>, String> {
    redis::cmd("COMMAND")
        .arg("GETKEYS")
        .arg(args)
        .query(con)
        .map_err(|e| e.to_string())
}

/// Requests on which the proxy deliberately differs from `COMMAND GETKEYS`.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    // Unbalanced key/value or stream/id lists: GETKEYS still names keys, the
    // command itself fails. The proxy calls them malformed so that one shard
    // answers with Redis' own error instead of a proxy error.
    ("mset a0 a1 a2", "missing value"),
    ("msetnx a0 a1 a2", "missing value"),
    ("xread streams k1 0 k2", "unbalanced streams"),
    // GETKEYS rejects PFMERGE with only a destination, which PFMERGE accepts.
    ("pfmerge a0", "destination-only merge"),
];

/// Shard channels are "not keys" for GETKEYS; the table keeps the range Redis
/// reports (they hash like keys; `proxy::pubsub` routes them by it).
const SHARD_CHANNEL_COMMANDS: &[&str] = &["spublish", "ssubscribe", "sunsubscribe"];

fn is_known_difference(args: &[&str]) -> bool {
    let request = args.join(" ");
    KNOWN_DIFFERENCES
        .iter()
        .any(|(known, _why)| request.eq_ignore_ascii_case(known))
        || SHARD_CHANNEL_COMMANDS
            .iter()
            .any(|name| args[0].eq_ignore_ascii_case(name))
}

/// Compares the two on one request; `Some(description)` when they differ.
/// No keys from the proxy must mean no keys (or an error) from Redis; a
/// request the proxy calls malformed must be one for which Redis finds no
/// keys.
fn key_mismatch(con: &mut redis::Connection, args: &[&str]) -> Option<String> {
    let ours = proxy_keys(args);
    let theirs = server_keys(con, args);
    let same = match (&ours, &theirs) {
        (Ok(ours), Ok(theirs)) => ours == theirs,
        (Ok(ours), Err(_)) => ours.is_empty(),
        (Err(_), Err(_)) => true,
        (Err(_), Ok(theirs)) => theirs.is_empty(),
    };
    (!same && !is_known_difference(args))
        .then(|| format!("{args:?}: ours {ours:?}, redis {theirs:?}"))
}

#[test]
fn range_and_keyless_rows_find_the_keys_redis_finds() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let words: Vec<String> = (0..8).map(|i| format!("a{i}")).collect();
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for spec in COMMANDS
        .iter()
        .filter(|spec| matches!(spec.keys, KeySpec::Range { .. } | KeySpec::None))
    {
        let min_args = spec.arity.unsigned_abs() as usize - 1;
        let extra = if spec.arity < 0 { 0..3 } else { 0..1 };
        for extra in extra {
            let mut args = vec![spec.name];
            args.extend(words.iter().take(min_args + extra).map(String::as_str));
            mismatches.extend(key_mismatch(&mut con, &args));
            checked += 1;
        }
    }
    assert!(checked > 400, "checked only {checked} requests");
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn movable_key_rows_find_the_keys_redis_finds() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let requests = [
        "EVAL s 2 k1 k2 a1",
        "EVALSHA_RO s 1 k1",
        "FCALL f 0 a1",
        "FCALL_RO f 2 k1 k2",
        "EVAL s 3 k1 k2",
        "EVAL s x k1",
        "EVAL s -1 k1",
        "SINTERCARD 2 k1 k2 LIMIT 1",
        "ZINTER 2 k1 k2 WEIGHTS 1 2",
        "ZUNION 1 k1",
        "ZDIFF 2 k1 k2 WITHSCORES",
        "ZINTERCARD 1 k1",
        "LMPOP 2 k1 k2 LEFT",
        "ZMPOP 1 k1 MIN COUNT 2",
        "BLMPOP 0 2 k1 k2 RIGHT",
        "BZMPOP 0.5 1 k1 MAX",
        "ZUNIONSTORE d 2 k1 k2",
        "ZINTERSTORE d 1 k1 AGGREGATE SUM",
        "ZDIFFSTORE d 2 k1 k2",
        "ZUNIONSTORE d 3 k1 k2",
        "XREAD STREAMS k1 k2 0 0",
        "XREAD COUNT 2 BLOCK 10 STREAMS k1 0",
        "xread streams k1 0 k2",
        "XREAD COUNT 1 k1 0",
        "XREADGROUP GROUP g c STREAMS k1 >",
        "XREADGROUP GROUP streams c COUNT 1 NOACK STREAMS k1 k2 > >",
        "SORT k1",
        "SORT k1 BY p GET # LIMIT 0 10 STORE d",
        "SORT k1 GET store STORE d1 STORE d2",
        "SORT k1 STOREDIST d",
        "SORT_RO k1 BY p",
        "GEORADIUS k1 1 2 3 km STORE d",
        "GEORADIUS k1 1 2 3 km STOREDIST d ASC",
        "GEORADIUS k1 1 2 3 km STORE store d",
        "GEORADIUSBYMEMBER k1 store 3 km",
        "GEORADIUSBYMEMBER k1 m 3 km COUNT 1 STOREDIST d",
        "OBJECT ENCODING k1",
        "OBJECT FREQ k1",
        "OBJECT IDLETIME k1",
        "OBJECT REFCOUNT k1",
        "OBJECT HELP",
        "XINFO STREAM k1 FULL",
        "XINFO GROUPS k1",
        "XINFO CONSUMERS k1 g",
        "XINFO HELP",
        "XGROUP CREATE k1 g $ MKSTREAM",
        "XGROUP SETID k1 g 0",
        "XGROUP DESTROY k1 g",
        "XGROUP CREATECONSUMER k1 g c",
        "XGROUP DELCONSUMER k1 g c",
        "XGROUP HELP",
        "MEMORY USAGE k1 SAMPLES 5",
        "MEMORY STATS",
        "MEMORY DOCTOR",
    ];
    let mismatches: Vec<String> = requests
        .iter()
        .filter_map(|request| key_mismatch(&mut con, &request.split(' ').collect::<Vec<_>>()))
        .collect();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

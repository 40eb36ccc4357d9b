//! Redis commands on the PostgreSQL schema: the dispatcher and strings and
//! key commands here, hashes in `hashes.rs`, expiry and whole-keyspace
//! commands in `keyspace.rs`, SET/GETEX option parsing in `options.rs`.
//!
//! Every command answers with Redis' exact reply and error text. Reads are
//! one statement each, filtering out expired rows (`expires_at >
//! sg_now_ms()`), so they also run on read-only standbys.
//!
//! # Writes are serialised per key
//!
//! Every write of a key, whatever the command, first takes the key's
//! transaction-scoped advisory lock (`sg_lock`, migration 0002: one lock per
//! key, id `lock_id` in `locked.rs`, several keys in sorted order so that multi-key writes
//! cannot deadlock) and holds it until its transaction ends, after the commit
//! is visible. Only then does it read (a fresh READ COMMITTED snapshot per
//! statement, so it sees everything the key's previous writers committed) and
//! write. Writes of one key therefore run one after the other, in the order
//! they got the lock, on a fresh key, a live one or an expired one, and
//! whatever type the key has or gets.
//!
//! Why an advisory lock and not the row: `SELECT ... FOR UPDATE` locks nothing
//! when the key has no row yet (fresh or reaped), and an `INSERT ... ON
//! CONFLICT` upsert only locks a row once it exists, so neither can order a
//! blind SET against an INCR that found no row. A lock on a hash of the key
//! exists before the row does. XXH3-64 of the whole key makes collisions
//! (two keys sharing a lock, so merely waiting for each other) negligible.
//!
//! Commands that read first (INCR, SET NX, APPEND, EXPIRE, HSET, ...) run in
//! a transaction: [`lock`], read, write, commit (five round trips). SET
//! without options, MSET and DEL/UNLINK stay one round trip: one statement
//! calling a PL/pgSQL function (`sg_set_strings`, `sg_delete_keys`) that
//! takes the locks and then writes in its own statements, so they too wait
//! for the key's other writers and see their commits.
//!
//! A key that stops being a hash loses its `kv_hash` fields in the same
//! transaction (trigger `kv_drop_hash_fields`, migration 0002), whichever
//! command overwrote it; a key that becomes a hash again starts without
//! fields ([`super::hashes`]).
//!
//! Every write gives the key's row a new `version` (migration 0004), which
//! WATCH compares; a command that changes nothing writes nothing.
//!
//! # Inside EXEC
//!
//! With [`Ctx::exec`] set, every statement of every command runs on EXEC's
//! one transaction ([`super::transaction`]): reads through `on_db!`, writes
//! through a [`Locked`] that borrows the transaction instead of opening its
//! own, and whose commit is EXEC's.

use bytes::Bytes;
use sqlx::Row as _;
use sqlx::postgres::{PgPool, PgRow};

use super::hashes;
use super::keyspace;
pub(super) use super::locked::lock_ids;
pub use super::locked::{ExecTx, Locked, lock};
use super::options::{absolute, expire_ms, parse_flags};
use super::values::{add_floats, parse_float, parse_int};
use crate::protocol::Reply;
use crate::router::placement::key_hash;

/// What a command needs besides its arguments.
pub struct Ctx<'a> {
    /// The endpoint's pool.
    pub pool: &'a PgPool,
    /// The map's slot count (`slot = key_hash % slots` is stored per row).
    pub slots: u32,
    /// Inside EXEC: the transaction every statement runs in (see
    /// [`super::transaction`]); `None`: each command runs on its own.
    pub exec: Option<&'a ExecTx>,
}

/// A command's outcome: a reply (Redis errors included) or a driver error.
pub type Res = Result<Reply, sqlx::Error>;

/// `type` column: a string.
pub const STRING: i16 = 0;
/// `type` column: a hash (fields in `kv_hash`).
pub const HASH: i16 = 1;

/// SQL condition: the row has not expired.
pub const LIVE: &str = live!();

/// Redis' largest string (`proto-max-bulk-len` default).
const MAX_STRING: i64 = 512 * 1024 * 1024;

/// Redis' error texts.
pub mod msg {
    pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
    pub const SYNTAX: &str = "ERR syntax error";
    pub const NOT_INT: &str = "ERR value is not an integer or out of range";
    pub const NOT_FLOAT: &str = "ERR value is not a valid float";
    pub const OVERFLOW: &str = "ERR increment or decrement would overflow";
    pub const NAN_INF: &str = "ERR increment would produce NaN or Infinity";
    pub const TOO_BIG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";
}

/// An error reply.
pub fn error(text: &'static str) -> Reply {
    Reply::error(text)
}

/// `wrong number of arguments` in Redis' words.
pub fn wrong_args(name: &str) -> Reply {
    Reply::error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

pub(super) fn invalid_expire(name: &str) -> Reply {
    Reply::error(format!("ERR invalid expire time in '{name}' command"))
}

/// Runs one command (`args[0]` is its name).
pub async fn execute(ctx: &Ctx<'_>, args: &[Bytes]) -> Res {
    let Some((name, a)) = args.split_first() else {
        return Ok(error("ERR empty command"));
    };
    let lower = name.to_ascii_lowercase();
    let name = String::from_utf8_lossy(&lower);
    let name = name.as_ref();
    match name {
        "ping" => Ok(match a {
            [] => Reply::Simple("PONG".into()),
            [m] => Reply::Bulk(m.clone()),
            _ => wrong_args(name),
        }),
        "get" => get(ctx, a).await,
        "set" => set(ctx, a).await,
        "setnx" => setnx(ctx, a).await,
        "setex" | "psetex" => setex(ctx, name, a).await,
        "getset" => getset(ctx, a).await,
        "getdel" => getdel(ctx, a).await,
        "getex" => getex(ctx, a).await,
        "mget" => mget(ctx, a).await,
        "mset" => mset(ctx, a).await,
        "msetnx" => msetnx(ctx, a).await,
        "del" | "unlink" => del(ctx, a).await,
        "exists" | "touch" => exists(ctx, a).await,
        "type" => key_type(ctx, a).await,
        "incr" | "decr" | "incrby" | "decrby" => incr(ctx, name, a).await,
        "incrbyfloat" => incrbyfloat(ctx, a).await,
        "append" => append(ctx, a).await,
        "strlen" => strlen(ctx, a).await,
        "getrange" | "substr" => getrange(ctx, a).await,
        "setrange" => setrange(ctx, a).await,
        "expire" | "pexpire" | "expireat" | "pexpireat" => keyspace::expire(ctx, name, a).await,
        "ttl" | "pttl" | "expiretime" | "pexpiretime" => keyspace::ttl(ctx, name, a).await,
        "persist" => keyspace::persist(ctx, a).await,
        "scan" => keyspace::scan(ctx, a).await,
        "keys" => keyspace::keys(ctx, a).await,
        "dbsize" => keyspace::dbsize(ctx).await,
        "randomkey" => keyspace::randomkey(ctx).await,
        "flushall" | "flushdb" => keyspace::flush(ctx, a).await,
        "info" => keyspace::info(ctx).await,
        "echo" => Ok(match a {
            [m] => Reply::Bulk(m.clone()),
            _ => wrong_args(name),
        }),
        _ => match hashes::execute(ctx, name, a).await {
            Some(r) => r,
            None => Ok(Reply::error(format!(
                "ERR command '{name}' is not supported by postgres shards: they hold strings and hashes (see README, PostgreSQL shards)"
            ))),
        },
    }
}

/// The slot of `key`, as stored in `kv.slot`.
pub fn slot(ctx: &Ctx<'_>, key: &[u8]) -> i32 {
    i32::try_from(key_hash(key) % u64::from(ctx.slots.max(1))).unwrap_or(0)
}

/// A key's row.
pub struct Row {
    /// [`STRING`] or [`HASH`].
    pub kind: i16,
    /// The string value (`None` for a hash).
    pub value: Option<Vec<u8>>,
    /// Unix ms, `None` without expiry.
    pub expires_at: Option<i64>,
}

impl Row {
    pub(super) fn from_pg(r: &PgRow) -> Result<Row, sqlx::Error> {
        Ok(Row {
            kind: r.try_get("type")?,
            value: r.try_get("value")?,
            expires_at: r.try_get("expires_at")?,
        })
    }

    /// The string value, or the WRONGTYPE reply.
    pub(super) fn string(self) -> Result<Vec<u8>, Reply> {
        if self.kind == STRING {
            Ok(self.value.unwrap_or_default())
        } else {
            Err(error(msg::WRONGTYPE))
        }
    }
}

/// Reads a live row and the statement's time (no lock).
pub(super) async fn read(ctx: &Ctx<'_>, key: &[u8]) -> Result<(Option<Row>, i64), sqlx::Error> {
    let sql = concat!(
        "SELECT sg_now_ms() AS now, k.type, k.value, k.expires_at \
         FROM (SELECT 1) AS one LEFT JOIN kv k ON k.kd = sha256($1) AND k.key = $1 AND ",
        live!(),
        ""
    );
    let r = on_db!(ctx, sqlx::query(sql).bind(key), fetch_one)?;
    let now: i64 = r.try_get("now")?;
    let kind: Option<i16> = r.try_get("type")?;
    Ok((kind.map(|_| Row::from_pg(&r)).transpose()?, now))
}

/// Writes strings without expiry (SET without options, MSET) in one round
/// trip, under the keys' locks (`sg_set_strings`). `keys` has no duplicates.
async fn set_strings(ctx: &Ctx<'_>, keys: &[&[u8]], values: &[&[u8]]) -> Result<(), sqlx::Error> {
    let slots: Vec<i32> = keys.iter().map(|k| slot(ctx, k)).collect();
    on_db!(
        ctx,
        sqlx::query("SELECT sg_set_strings($1, $2, $3, $4)")
            .bind(keys)
            .bind(&slots)
            .bind(values)
            .bind(lock_ids(keys)),
        execute
    )?;
    Ok(())
}

// ---- strings ---------------------------------------------------------------

async fn get(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key] = a else {
        return Ok(wrong_args("get"));
    };
    Ok(match read(ctx, key).await?.0 {
        None => Reply::Nil,
        Some(row) => match row.string() {
            Ok(v) => Reply::Bulk(v.into()),
            Err(e) => e,
        },
    })
}

async fn set(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key, value, opts @ ..] = a else {
        return Ok(wrong_args("set"));
    };
    if opts.is_empty() {
        set_strings(ctx, &[&key[..]], &[&value[..]]).await?;
        return Ok(Reply::Ok);
    }
    let f = match parse_flags(opts, true) {
        Ok(f) => f,
        Err(e) => return Ok(e),
    };
    let expire = match &f.expire {
        Some((unit, rel, raw)) => match expire_ms("set", *unit, raw) {
            Ok(ms) => Some((ms, *rel)),
            Err(e) => return Ok(e),
        },
        None => None,
    };
    let mut l = lock(ctx, &[key]).await?;
    // Redis checks the whole expiry (overflow included) before GET, NX and
    // XX look at the key.
    let at = match expire {
        Some((ms, rel)) => match absolute("set", ms, rel, l.now) {
            Ok(at) => Some(at),
            Err(e) => return Ok(e),
        },
        None => None,
    };
    let row = l.row(key).await?;
    let old = match row {
        Some(r) if f.get && r.kind != STRING => return Ok(error(msg::WRONGTYPE)),
        Some(r) => Some(r),
        None => None,
    };
    let old_reply = || match &old {
        Some(r) => Reply::Bulk(r.value.clone().unwrap_or_default().into()),
        None => Reply::Nil,
    };
    if (f.nx && old.is_some()) || (f.xx && old.is_none()) {
        return l.commit(if f.get { old_reply() } else { Reply::Nil }).await;
    }
    let at = match at {
        Some(at) => Some(at),
        None if f.keepttl => old.as_ref().and_then(|r| r.expires_at),
        None => None,
    };
    if at.is_some_and(|at| at <= l.now) {
        l.delete(key).await?;
    } else {
        l.put(slot(ctx, key), key, value, at).await?;
    }
    let reply = if f.get { old_reply() } else { Reply::Ok };
    l.commit(reply).await
}

async fn setnx(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key, value] = a else {
        return Ok(wrong_args("setnx"));
    };
    let mut l = lock(ctx, &[key]).await?;
    if l.row(key).await?.is_some() {
        return l.commit(Reply::Int(0)).await;
    }
    l.put(slot(ctx, key), key, value, None).await?;
    l.commit(Reply::Int(1)).await
}

async fn setex(ctx: &Ctx<'_>, name: &str, a: &[Bytes]) -> Res {
    let [key, t, value] = a else {
        return Ok(wrong_args(name));
    };
    let unit = if name == "setex" { 1000 } else { 1 };
    let ms = match expire_ms(name, unit, t) {
        Ok(ms) => ms,
        Err(e) => return Ok(e),
    };
    let mut l = lock(ctx, &[key]).await?;
    let at = match absolute(name, ms, true, l.now) {
        Ok(at) => at,
        Err(e) => return Ok(e),
    };
    l.put(slot(ctx, key), key, value, Some(at)).await?;
    l.commit(Reply::Ok).await
}

async fn getset(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key, value] = a else {
        return Ok(wrong_args("getset"));
    };
    let mut l = lock(ctx, &[key]).await?;
    let old = match l.row(key).await?.map(Row::string).transpose() {
        Ok(old) => old,
        Err(e) => return Ok(e),
    };
    l.put(slot(ctx, key), key, value, None).await?;
    l.commit(old.map_or(Reply::Nil, |v| Reply::Bulk(v.into())))
        .await
}

async fn getdel(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key] = a else {
        return Ok(wrong_args("getdel"));
    };
    let mut l = lock(ctx, &[key]).await?;
    match l.row(key).await?.map(Row::string) {
        None => Ok(Reply::Nil),
        Some(Err(e)) => Ok(e),
        Some(Ok(v)) => {
            l.delete(key).await?;
            l.commit(Reply::Bulk(v.into())).await
        }
    }
}

async fn getex(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key, opts @ ..] = a else {
        return Ok(wrong_args("getex"));
    };
    let f = match parse_flags(opts, false) {
        Ok(f) => f,
        Err(e) => return Ok(e),
    };
    if f.expire.is_none() && !f.persist {
        // A plain GETEX is a read.
        return get(ctx, &a[..1]).await;
    }
    let mut l = lock(ctx, &[key]).await?;
    // Redis' order: the syntax, then the key (nil if missing, WRONGTYPE),
    // and only then the expiry's value.
    let row = l.row(key).await?;
    let had_ttl = row.as_ref().is_some_and(|r| r.expires_at.is_some());
    let value = match row.map(Row::string) {
        None => return Ok(Reply::Nil),
        Some(Err(e)) => return Ok(e),
        Some(Ok(v)) => v,
    };
    let expire = match &f.expire {
        Some((unit, rel, raw)) => match expire_ms("getex", *unit, raw) {
            Ok(ms) => Some((ms, *rel)),
            Err(e) => return Ok(e),
        },
        None => None,
    };
    match expire {
        Some((ms, rel)) => match absolute("getex", ms, rel, l.now) {
            Ok(at) if at <= l.now => l.delete(key).await?,
            Ok(at) => l.set_expiry(key, Some(at)).await?,
            Err(e) => return Ok(e),
        },
        // PERSIST of a key without a TTL changes nothing (and, as in Redis,
        // does not touch a WATCHed key).
        None if had_ttl => l.set_expiry(key, None).await?,
        None => return Ok(Reply::Bulk(value.into())),
    }
    l.commit(Reply::Bulk(value.into())).await
}

async fn mget(ctx: &Ctx<'_>, keys: &[Bytes]) -> Res {
    let list: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    let sql = concat!(
        "SELECT k.key, k.type, k.value FROM unnest($1::bytea[]) AS w(key) \
         JOIN kv k ON k.kd = sha256(w.key) AND k.key = w.key AND ",
        live!(),
        ""
    );
    let rows = on_db!(ctx, sqlx::query(sql).bind(&list), fetch_all)?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for r in &rows {
        let key: Vec<u8> = r.try_get("key")?;
        let kind: i16 = r.try_get("type")?;
        let value: Option<Vec<u8>> = r.try_get("value")?;
        if kind == STRING {
            found.insert(key, value.unwrap_or_default());
        }
    }
    Ok(Reply::Array(
        keys.iter()
            .map(|k| match found.get(&k[..]) {
                Some(v) => Reply::Bulk(Bytes::copy_from_slice(v)),
                None => Reply::Nil,
            })
            .collect(),
    ))
}

/// Key/value pairs with later duplicates winning, in first-seen order.
fn dedup_pairs(a: &[Bytes]) -> Vec<(&[u8], &[u8])> {
    let mut out: Vec<(&[u8], &[u8])> = Vec::with_capacity(a.len() / 2);
    let mut index = std::collections::HashMap::new();
    for pair in a.chunks_exact(2) {
        let (k, v) = (&pair[0][..], &pair[1][..]);
        match index.get(k) {
            Some(&i) => out[i] = (k, v),
            None => {
                index.insert(k, out.len());
                out.push((k, v));
            }
        }
    }
    out
}

async fn mset(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    if a.is_empty() || !a.len().is_multiple_of(2) {
        return Ok(wrong_args("mset"));
    }
    let pairs = dedup_pairs(a);
    let keys: Vec<&[u8]> = pairs.iter().map(|p| p.0).collect();
    let values: Vec<&[u8]> = pairs.iter().map(|p| p.1).collect();
    set_strings(ctx, &keys, &values).await?;
    Ok(Reply::Ok)
}

async fn msetnx(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    if a.is_empty() || !a.len().is_multiple_of(2) {
        return Ok(wrong_args("msetnx"));
    }
    let pairs = dedup_pairs(a);
    let keys: Vec<&[u8]> = pairs.iter().map(|p| p.0).collect();
    let mut l = lock(ctx, &keys).await?;
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM unnest($1::bytea[]) AS w(key) \
         JOIN kv k ON k.kd = sha256(w.key) AND k.key = w.key \
         WHERE k.expires_at IS NULL OR k.expires_at > $2",
    )
    .bind(&keys)
    .bind(l.now)
    .fetch_one(l.conn())
    .await?;
    if live > 0 {
        return Ok(Reply::Int(0));
    }
    for (k, v) in pairs {
        l.put(slot(ctx, k), k, v, None).await?;
    }
    l.commit(Reply::Int(1)).await
}

/// DEL and UNLINK: one round trip, under the keys' locks
/// (`sg_delete_keys`); counts the keys that were live.
async fn del(ctx: &Ctx<'_>, keys: &[Bytes]) -> Res {
    let list: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    let n: i64 = on_db!(
        ctx,
        sqlx::query_scalar("SELECT sg_delete_keys($1, $2)")
            .bind(&list)
            .bind(lock_ids(&list)),
        fetch_one
    )?;
    Ok(Reply::Int(n))
}

/// The live keys among `keys`.
async fn live_keys(
    ctx: &Ctx<'_>,
    keys: &[Bytes],
) -> Result<std::collections::HashSet<Vec<u8>>, sqlx::Error> {
    let list: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    let sql = concat!(
        "SELECT k.key FROM unnest($1::bytea[]) AS w(key) \
         JOIN kv k ON k.kd = sha256(w.key) AND k.key = w.key AND ",
        live!(),
        ""
    );
    let rows: Vec<Vec<u8>> = on_db!(ctx, sqlx::query_scalar(sql).bind(&list), fetch_all)?;
    Ok(rows.into_iter().collect())
}

async fn exists(ctx: &Ctx<'_>, keys: &[Bytes]) -> Res {
    let live = live_keys(ctx, keys).await?;
    let n = keys.iter().filter(|k| live.contains(&k[..])).count();
    Ok(Reply::Int(i64::try_from(n).unwrap_or(i64::MAX)))
}

pub(super) fn type_name(kind: i16) -> &'static str {
    match kind {
        STRING => "string",
        HASH => "hash",
        _ => "none",
    }
}

async fn key_type(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key] = a else {
        return Ok(wrong_args("type"));
    };
    let kind = read(ctx, key).await?.0.map(|r| r.kind);
    Ok(Reply::Simple(kind.map_or("none", type_name).into()))
}

async fn incr(ctx: &Ctx<'_>, name: &str, a: &[Bytes]) -> Res {
    let (key, by) = match (name, a) {
        ("incr", [key]) => (key, 1),
        ("decr", [key]) => (key, -1),
        ("incrby", [key, n]) => match parse_int(n) {
            Some(n) => (key, n),
            None => return Ok(error(msg::NOT_INT)),
        },
        ("decrby", [key, n]) => match parse_int(n) {
            Some(i64::MIN) => return Ok(error("ERR decrement would overflow")),
            Some(n) => (key, -n),
            None => return Ok(error(msg::NOT_INT)),
        },
        _ => return Ok(wrong_args(name)),
    };
    let mut l = lock(ctx, &[key]).await?;
    let row = l.row(key).await?;
    let expires_at = row.as_ref().and_then(|r| r.expires_at);
    let current = match row.map(Row::string).transpose() {
        Ok(v) => v,
        Err(e) => return Ok(e),
    };
    let current = match current {
        None => 0,
        Some(v) => match parse_int(&v) {
            Some(n) => n,
            None => return Ok(error(msg::NOT_INT)),
        },
    };
    let Some(next) = current.checked_add(by) else {
        return Ok(error(msg::OVERFLOW));
    };
    l.put(slot(ctx, key), key, next.to_string().as_bytes(), expires_at)
        .await?;
    l.commit(Reply::Int(next)).await
}

/// Redis' order: the key's type, then its value, then the increment (so a
/// hash answers WRONGTYPE whatever the increment is).
async fn incrbyfloat(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key, by] = a else {
        return Ok(wrong_args("incrbyfloat"));
    };
    let mut l = lock(ctx, &[key]).await?;
    let row = l.row(key).await?;
    let expires_at = row.as_ref().and_then(|r| r.expires_at);
    let current = match row.map(Row::string).transpose() {
        Ok(v) => v.unwrap_or_else(|| b"0".to_vec()),
        Err(e) => return Ok(e),
    };
    let (Some(cur), Some(incr)) = (parse_float(&current), parse_float(by)) else {
        return Ok(error(msg::NOT_FLOAT));
    };
    let Some(text) = add_floats(&cur, &incr) else {
        return Ok(error(msg::NAN_INF));
    };
    l.put(slot(ctx, key), key, text.as_bytes(), expires_at)
        .await?;
    l.commit(Reply::Bulk(text.into())).await
}

async fn append(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key, value] = a else {
        return Ok(wrong_args("append"));
    };
    let mut l = lock(ctx, &[key]).await?;
    let row = l.row(key).await?;
    let expires_at = row.as_ref().and_then(|r| r.expires_at);
    let mut current = match row.map(Row::string).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(e) => return Ok(e),
    };
    if i64::try_from(current.len() + value.len()).unwrap_or(i64::MAX) > MAX_STRING {
        return Ok(error(msg::TOO_BIG));
    }
    current.extend_from_slice(value);
    l.put(slot(ctx, key), key, &current, expires_at).await?;
    l.commit(Reply::Int(i64::try_from(current.len()).unwrap_or(i64::MAX)))
        .await
}

async fn strlen(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key] = a else {
        return Ok(wrong_args("strlen"));
    };
    Ok(match read(ctx, key).await?.0.map(Row::string) {
        None => Reply::Int(0),
        Some(Ok(v)) => Reply::Int(i64::try_from(v.len()).unwrap_or(i64::MAX)),
        Some(Err(e)) => e,
    })
}

async fn getrange(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key, start, end] = a else {
        return Ok(wrong_args("getrange"));
    };
    let (Some(start), Some(end)) = (parse_int(start), parse_int(end)) else {
        return Ok(error(msg::NOT_INT));
    };
    let v = match read(ctx, key).await?.0.map(Row::string) {
        None => return Ok(Reply::Bulk(Bytes::new())),
        Some(Err(e)) => return Ok(e),
        Some(Ok(v)) => v,
    };
    let len = i128::try_from(v.len()).unwrap_or(i128::MAX);
    let (mut s, mut e) = (i128::from(start), i128::from(end));
    if s < 0 && e < 0 && s > e {
        return Ok(Reply::Bulk(Bytes::new()));
    }
    if s < 0 {
        s += len;
    }
    if e < 0 {
        e += len;
    }
    s = s.max(0);
    e = e.max(0);
    if e >= len {
        e = len - 1;
    }
    if s > e || len == 0 {
        return Ok(Reply::Bulk(Bytes::new()));
    }
    let (s, e) = (s as usize, e as usize);
    Ok(Reply::Bulk(Bytes::copy_from_slice(
        v.get(s..=e).unwrap_or_default(),
    )))
}

async fn setrange(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key, offset, value] = a else {
        return Ok(wrong_args("setrange"));
    };
    let Some(offset) = parse_int(offset) else {
        return Ok(error(msg::NOT_INT));
    };
    if offset < 0 {
        return Ok(error("ERR offset is out of range"));
    }
    let too_big =
        offset.saturating_add(i64::try_from(value.len()).unwrap_or(i64::MAX)) > MAX_STRING;
    let mut l = lock(ctx, &[key]).await?;
    let row = l.row(key).await?;
    let expires_at = row.as_ref().and_then(|r| r.expires_at);
    let mut current = match row.map(Row::string) {
        None if value.is_empty() => return Ok(Reply::Int(0)),
        None => Vec::new(),
        Some(Err(e)) => return Ok(e),
        Some(Ok(v)) if value.is_empty() => {
            return Ok(Reply::Int(i64::try_from(v.len()).unwrap_or(i64::MAX)));
        }
        Some(Ok(v)) => v,
    };
    if too_big {
        return Ok(error(msg::TOO_BIG));
    }
    let offset = offset as usize;
    if current.len() < offset + value.len() {
        current.resize(offset + value.len(), 0);
    }
    current[offset..offset + value.len()].copy_from_slice(value);
    l.put(slot(ctx, key), key, &current, expires_at).await?;
    l.commit(Reply::Int(i64::try_from(current.len()).unwrap_or(i64::MAX)))
        .await
}

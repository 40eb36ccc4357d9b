//! Expiry (EXPIRE family, TTL family, PERSIST) and whole-keyspace commands
//! (SCAN, KEYS, DBSIZE, RANDOMKEY, FLUSHALL/FLUSHDB, INFO keyspace) of
//! PostgreSQL shards; split from `commands` along Redis' own grouping.

use bytes::Bytes;
use sqlx::Row as _;

use super::commands::{
    Ctx, Res, Row, error, invalid_expire, lock, msg, read, type_name, wrong_args,
};
use super::options::{c_string, option_name};
use super::values::{glob_match, parse_int};
use crate::protocol::Reply;

// ---- expiry ----------------------------------------------------------------

pub(super) async fn expire(ctx: &Ctx<'_>, name: &str, a: &[Bytes]) -> Res {
    let [key, when, opts @ ..] = a else {
        return Ok(wrong_args(name));
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in opts {
        match option_name(opt).as_slice() {
            b"nx" => nx = true,
            b"xx" => xx = true,
            b"gt" => gt = true,
            b"lt" => lt = true,
            _ => {
                return Ok(Reply::error(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(c_string(opt))
                )));
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Ok(error(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Ok(error(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    let Some(mut when) = parse_int(when) else {
        return Ok(error(msg::NOT_INT));
    };
    let seconds = matches!(name, "expire" | "expireat");
    if seconds {
        if !(i64::MIN / 1000..=i64::MAX / 1000).contains(&when) {
            return Ok(invalid_expire(name));
        }
        when *= 1000;
    }
    let mut l = lock(ctx, &[key]).await?;
    let base = if matches!(name, "expire" | "pexpire") {
        l.now
    } else {
        0
    };
    let Some(when) = when.checked_add(base) else {
        return Ok(invalid_expire(name));
    };
    let Some(row) = l.row(key).await? else {
        return Ok(Reply::Int(0));
    };
    let current = row.expires_at;
    let refused = (nx && current.is_some())
        || (xx && current.is_none())
        || (gt && current.is_none_or(|c| when <= c))
        || (lt && current.is_some_and(|c| when >= c));
    if refused {
        return Ok(Reply::Int(0));
    }
    if when <= l.now {
        l.delete(key).await?;
    } else {
        l.set_expiry(key, Some(when)).await?;
    }
    l.commit(Reply::Int(1)).await
}

pub(super) async fn ttl(ctx: &Ctx<'_>, name: &str, a: &[Bytes]) -> Res {
    let [key] = a else {
        return Ok(wrong_args(name));
    };
    let (row, now) = read(ctx, key).await?;
    let Some(row) = row else {
        return Ok(Reply::Int(-2));
    };
    let Some(at) = row.expires_at else {
        return Ok(Reply::Int(-1));
    };
    let ms = match name {
        "ttl" | "pttl" => (at - now).max(0),
        _ => at,
    };
    Ok(Reply::Int(match name {
        "pttl" | "pexpiretime" => ms,
        _ => (ms + 500) / 1000,
    }))
}

pub(super) async fn persist(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key] = a else {
        return Ok(wrong_args("persist"));
    };
    let mut l = lock(ctx, &[key]).await?;
    match l.row(key).await? {
        Some(Row {
            expires_at: Some(_),
            ..
        }) => {
            l.set_expiry(key, None).await?;
            l.commit(Reply::Int(1)).await
        }
        _ => Ok(Reply::Int(0)),
    }
}

// ---- keyspace --------------------------------------------------------------

/// SCAN with a slot cursor: cursor `c` means "continue at slot `c`". A call
/// reads up to COUNT keys in (slot, key) order and then finishes the last
/// slot it touched, so the next cursor is always a slot boundary: every key
/// that exists for the whole scan is returned exactly once, and a slot with
/// more than COUNT keys comes back in one reply (as Redis returns a whole
/// hash-table bucket).
pub(super) async fn scan(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [cursor, opts @ ..] = a else {
        return Ok(wrong_args("scan"));
    };
    let cursor = std::str::from_utf8(cursor)
        .ok()
        .and_then(|c| c.parse::<u64>().ok());
    let Some(cursor) = cursor else {
        return Ok(error("ERR invalid cursor"));
    };
    let (mut count, mut pattern, mut type_filter) = (10i64, None, None);
    let mut i = 0;
    while i < opts.len() {
        let has_value = i + 1 < opts.len();
        match option_name(&opts[i]).as_slice() {
            b"count" if has_value => match parse_int(&opts[i + 1]) {
                None => return Ok(error(msg::NOT_INT)),
                Some(n) if n < 1 => return Ok(error(msg::SYNTAX)),
                Some(n) => count = n,
            },
            b"match" if has_value => {
                let p = &opts[i + 1];
                pattern = (&p[..] != b"*").then(|| p.clone());
            }
            b"type" if has_value => type_filter = Some(option_name(&opts[i + 1])),
            _ => return Ok(error(msg::SYNTAX)),
        }
        i += 2;
    }
    let reply = |next: u64, keys: Vec<Reply>| {
        Reply::Array(vec![
            Reply::Bulk(Bytes::from(next.to_string())),
            Reply::Array(keys),
        ])
    };
    if cursor >= u64::from(ctx.slots) {
        return Ok(reply(0, Vec::new()));
    }
    let start = i32::try_from(cursor).unwrap_or(i32::MAX);
    let sql = concat!(
        "SELECT key, kd, slot, type FROM kv WHERE slot >= $1 AND ",
        live!(),
        " ORDER BY slot, kd LIMIT $2"
    );
    let rows = sqlx::query(sql)
        .bind(start)
        .bind(count)
        .fetch_all(ctx.pool)
        .await?;
    let mut found: Vec<(Vec<u8>, i16)> = Vec::with_capacity(rows.len());
    // (slot, digest) of the last row: where the rest of its slot starts.
    let mut last = None;
    for r in &rows {
        found.push((r.try_get("key")?, r.try_get("type")?));
        last = Some((r.try_get::<i32, _>("slot")?, r.try_get::<Vec<u8>, _>("kd")?));
    }
    let full = i64::try_from(rows.len()).unwrap_or(0) >= count;
    let next = match (full, last) {
        (true, Some((slot, last_kd))) => {
            let sql = concat!(
                "SELECT key, type FROM kv WHERE slot = $1 AND kd > $2 AND ",
                live!(),
                " ORDER BY kd"
            );
            let rest = sqlx::query(sql)
                .bind(slot)
                .bind(last_kd)
                .fetch_all(ctx.pool)
                .await?;
            for r in &rest {
                found.push((r.try_get("key")?, r.try_get("type")?));
            }
            let next = u64::try_from(slot).unwrap_or(0) + 1;
            if next >= u64::from(ctx.slots) {
                0
            } else {
                next
            }
        }
        _ => 0,
    };
    let keys = found
        .into_iter()
        .filter(|(_, kind)| {
            type_filter
                .as_ref()
                .is_none_or(|t| t.as_slice() == type_name(*kind).as_bytes())
        })
        .filter(|(k, _)| pattern.as_ref().is_none_or(|p| glob_match(p, k)))
        .map(|(k, _)| Reply::Bulk(k.into()))
        .collect();
    Ok(reply(next, keys))
}

pub(super) async fn keys(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [pattern] = a else {
        return Ok(wrong_args("keys"));
    };
    let sql = concat!("SELECT key FROM kv WHERE ", live!(), "");
    let all: Vec<Vec<u8>> = sqlx::query_scalar(sql).fetch_all(ctx.pool).await?;
    Ok(Reply::Array(
        all.into_iter()
            .filter(|k| glob_match(pattern, k))
            .map(|k| Reply::Bulk(k.into()))
            .collect(),
    ))
}

pub(super) async fn dbsize(ctx: &Ctx<'_>) -> Res {
    let sql = concat!("SELECT count(*) FROM kv WHERE ", live!(), "");
    let n: i64 = sqlx::query_scalar(sql).fetch_one(ctx.pool).await?;
    Ok(Reply::Int(n))
}

pub(super) async fn randomkey(ctx: &Ctx<'_>) -> Res {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    // Keys are spread uniformly over their digests: the first live key at
    // or after a random digest is a fair pick.
    let probe = twox_hash::XxHash3_64::oneshot(&seed.to_le_bytes()).to_be_bytes();
    let sql = concat!(
        "(SELECT key FROM kv WHERE kd >= $1 AND ",
        live!(),
        " ORDER BY kd LIMIT 1) \
         UNION ALL (SELECT key FROM kv WHERE ",
        live!(),
        " ORDER BY kd LIMIT 1) LIMIT 1"
    );
    let key: Option<Vec<u8>> = sqlx::query_scalar(sql)
        .bind(&probe[..])
        .fetch_optional(ctx.pool)
        .await?;
    Ok(key.map_or(Reply::Nil, |k| Reply::Bulk(k.into())))
}

pub(super) async fn flush(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    match a {
        [] => {}
        [mode] if matches!(option_name(mode).as_slice(), b"sync" | b"async") => {}
        _ => return Ok(error(msg::SYNTAX)),
    }
    sqlx::query("TRUNCATE kv_hash, kv")
        .execute(ctx.pool)
        .await?;
    Ok(Reply::Ok)
}

/// INFO: only the keyspace section (the proxy sums it over shards).
pub(super) async fn info(ctx: &Ctx<'_>) -> Res {
    let sql = concat!(
        "SELECT count(*), count(expires_at) FROM kv WHERE ",
        live!(),
        ""
    );
    let (keys, expires): (i64, i64) = sqlx::query_as(sql).fetch_one(ctx.pool).await?;
    let mut text = String::from("# Keyspace\r\n");
    if keys > 0 {
        text.push_str(&format!("db0:keys={keys},expires={expires},avg_ttl=0\r\n"));
    }
    Ok(Reply::Verbatim(Bytes::from(text)))
}

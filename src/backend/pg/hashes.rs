//! Hash commands on PostgreSQL shards: a hash is a `kv` row of type
//! [`HASH`] plus its fields in `kv_hash` (deleted with the key). An empty
//! hash does not exist, as in Redis: HDEL of the last field deletes the key.
//! Field order is insertion order (`kv_hash.id`), which is what Redis shows
//! while a hash is a listpack (up to 512 fields of at most 64 bytes); a
//! larger Redis hash answers in its hashtable's order (README, "Hash
//! order"). Fields are found by their digest (`kv_hash.fd`, migration
//! 0003), so they can be of any length.

use bytes::Bytes;
use sha2::Digest as _;
use sqlx::Row as _;

use super::commands::{Ctx, HASH, Locked, Res, error, lock, msg, slot, wrong_args};
use super::values::{LongDouble, add_floats, parse_float, parse_int};
use crate::protocol::Reply;

/// Runs a hash command; `None` if `name` is not one.
pub async fn execute(ctx: &Ctx<'_>, name: &str, a: &[Bytes]) -> Option<Res> {
    Some(match name {
        "hset" | "hmset" => hset(ctx, name, a).await,
        "hsetnx" => hsetnx(ctx, a).await,
        "hget" | "hexists" | "hstrlen" => hget(ctx, name, a).await,
        "hmget" => hmget(ctx, a).await,
        "hgetall" | "hkeys" | "hvals" => hgetall(ctx, name, a).await,
        "hlen" => hlen(ctx, a).await,
        "hdel" => hdel(ctx, a).await,
        "hincrby" => hincrby(ctx, a).await,
        "hincrbyfloat" => hincrbyfloat(ctx, a).await,
        _ => return None,
    })
}

fn len_reply(n: usize) -> Reply {
    Reply::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Reads fields of a live key: `Ok(None)` if the key is missing, `Err` with
/// the WRONGTYPE reply if it is not a hash. `fields: None` reads them all.
async fn read_fields(
    ctx: &Ctx<'_>,
    key: &[u8],
    fields: Option<&[&[u8]]>,
) -> Result<Result<Option<Vec<(Vec<u8>, Vec<u8>)>>, Reply>, sqlx::Error> {
    let sql = if fields.is_some() {
        concat!(
            "SELECT k.type, h.field, h.value FROM kv k \
             LEFT JOIN kv_hash h ON h.kd = k.kd AND k.type = 1 \
                 AND h.fd = ANY (ARRAY(SELECT sha256(f) FROM unnest($2::bytea[]) AS w(f))) \
                 AND h.field = ANY ($2) \
             WHERE k.kd = sha256($1) AND k.key = $1 AND ",
            live!(),
            " ORDER BY h.id"
        )
    } else {
        concat!(
            "SELECT k.type, h.field, h.value FROM kv k \
             LEFT JOIN kv_hash h ON h.kd = k.kd AND k.type = 1 \
             WHERE k.kd = sha256($1) AND k.key = $1 AND ",
            live!(),
            " ORDER BY h.id"
        )
    };
    let mut q = sqlx::query(sql).bind(key);
    if let Some(f) = fields {
        q = q.bind(f);
    }
    let rows = on_db!(ctx, q, fetch_all)?;
    let Some(first) = rows.first() else {
        return Ok(Ok(None));
    };
    if first.try_get::<i16, _>("type")? != HASH {
        return Ok(Err(error(msg::WRONGTYPE)));
    }
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let field: Option<Vec<u8>> = r.try_get("field")?;
        let value: Option<Vec<u8>> = r.try_get("value")?;
        if let (Some(f), Some(v)) = (field, value) {
            out.push((f, v));
        }
    }
    Ok(Ok(Some(out)))
}

/// Under the key's lock: makes sure a live hash exists (creating an empty
/// one, with no leftover fields of an older value), or answers WRONGTYPE.
async fn ensure_hash(
    ctx: &Ctx<'_>,
    l: &mut Locked<'_>,
    key: &[u8],
) -> Result<Result<(), Reply>, sqlx::Error> {
    match l.row(key).await? {
        Some(r) if r.kind == HASH => Ok(Ok(())),
        Some(_) => Ok(Err(error(msg::WRONGTYPE))),
        None => {
            sqlx::query("DELETE FROM kv_hash WHERE kd = sha256($1)")
                .bind(key)
                .execute(l.conn())
                .await?;
            sqlx::query(
                "INSERT INTO kv (key, slot, type, value, expires_at) VALUES ($1, $2, 1, NULL, NULL) \
                 ON CONFLICT (kd) DO UPDATE SET type = 1, value = NULL, expires_at = NULL",
            )
            .bind(key)
            .bind(slot(ctx, key))
            .execute(l.conn())
            .await?;
            Ok(Ok(()))
        }
    }
}

/// Field/value pairs with later duplicates winning, in first-seen order.
fn dedup(pairs: &[Bytes]) -> (Vec<&[u8]>, Vec<&[u8]>) {
    let mut fields: Vec<&[u8]> = Vec::with_capacity(pairs.len() / 2);
    let mut values: Vec<&[u8]> = Vec::with_capacity(pairs.len() / 2);
    let mut index = std::collections::HashMap::new();
    for p in pairs.chunks_exact(2) {
        match index.get(&p[0][..]) {
            Some(&i) => values[i] = &p[1][..],
            None => {
                index.insert(&p[0][..], fields.len());
                fields.push(&p[0][..]);
                values.push(&p[1][..]);
            }
        }
    }
    (fields, values)
}

/// Upserts fields; returns how many were new.
async fn put_fields(
    l: &mut Locked<'_>,
    key: &[u8],
    fields: &[&[u8]],
    values: &[&[u8]],
) -> Result<i64, sqlx::Error> {
    let inserted: Vec<bool> = sqlx::query_scalar(
        "WITH put AS (INSERT INTO kv_hash (kd, field, value) \
         SELECT $1, f, v FROM unnest($2::bytea[], $3::bytea[]) WITH ORDINALITY AS t(f, v, n) ORDER BY n \
         ON CONFLICT (kd, fd) DO UPDATE SET value = EXCLUDED.value \
         RETURNING (xmax = 0) AS new), \
         touched AS (UPDATE kv SET version = nextval('kv_version') WHERE kd = $1) \
         SELECT new FROM put",
    )
    // The digest once here, not once per field row in SQL.
    .bind(&sha2::Sha256::digest(key)[..])
    .bind(fields)
    .bind(values)
    .fetch_all(l.conn())
    .await?;
    Ok(inserted.into_iter().filter(|new| *new).count() as i64)
}

async fn hset(ctx: &Ctx<'_>, name: &str, a: &[Bytes]) -> Res {
    let [key, pairs @ ..] = a else {
        return Ok(wrong_args(name));
    };
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Ok(wrong_args(name));
    }
    let mut l = lock(ctx, &[key]).await?;
    if let Err(e) = ensure_hash(ctx, &mut l, key).await? {
        return Ok(e);
    }
    let (fields, values) = dedup(pairs);
    let added = put_fields(&mut l, key, &fields, &values).await?;
    l.commit(if name == "hmset" {
        Reply::Ok
    } else {
        Reply::Int(added)
    })
    .await
}

async fn hsetnx(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key, field, value] = a else {
        return Ok(wrong_args("hsetnx"));
    };
    let mut l = lock(ctx, &[key]).await?;
    if let Err(e) = ensure_hash(ctx, &mut l, key).await? {
        return Ok(e);
    }
    let done = sqlx::query(
        "WITH put AS (INSERT INTO kv_hash (kd, field, value) VALUES (sha256($1), $2, $3) \
         ON CONFLICT (kd, fd) DO NOTHING RETURNING 1), \
         touched AS (UPDATE kv SET version = nextval('kv_version') \
             WHERE kd = sha256($1) AND EXISTS (SELECT 1 FROM put)) \
         SELECT count(*) FROM put",
    )
    .bind(&key[..])
    .bind(&field[..])
    .bind(&value[..])
    .fetch_one(l.conn())
    .await?;
    let added: i64 = done.try_get(0)?;
    l.commit(Reply::Int(added)).await
}

async fn hget(ctx: &Ctx<'_>, name: &str, a: &[Bytes]) -> Res {
    let [key, field] = a else {
        return Ok(wrong_args(name));
    };
    let value = match read_fields(ctx, key, Some(&[&field[..]])).await? {
        Err(e) => return Ok(e),
        Ok(found) => found.and_then(|f| f.into_iter().next()).map(|(_, v)| v),
    };
    Ok(match (name, value) {
        ("hget", Some(v)) => Reply::Bulk(v.into()),
        ("hget", None) => Reply::Nil,
        ("hexists", v) => Reply::Int(i64::from(v.is_some())),
        (_, v) => len_reply(v.map_or(0, |v| v.len())),
    })
}

async fn hmget(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key, fields @ ..] = a else {
        return Ok(wrong_args("hmget"));
    };
    if fields.is_empty() {
        return Ok(wrong_args("hmget"));
    }
    let wanted: Vec<&[u8]> = fields.iter().map(|f| &f[..]).collect();
    let found = match read_fields(ctx, key, Some(&wanted)).await? {
        Err(e) => return Ok(e),
        Ok(found) => found.unwrap_or_default(),
    };
    let map: std::collections::HashMap<Vec<u8>, Vec<u8>> = found.into_iter().collect();
    Ok(Reply::Array(
        fields
            .iter()
            .map(|f| match map.get(&f[..]) {
                Some(v) => Reply::Bulk(Bytes::copy_from_slice(v)),
                None => Reply::Nil,
            })
            .collect(),
    ))
}

async fn hgetall(ctx: &Ctx<'_>, name: &str, a: &[Bytes]) -> Res {
    let [key] = a else {
        return Ok(wrong_args(name));
    };
    let all = match read_fields(ctx, key, None).await? {
        Err(e) => return Ok(e),
        Ok(found) => found.unwrap_or_default(),
    };
    Ok(match name {
        "hgetall" => Reply::Map(
            all.into_iter()
                .map(|(f, v)| (Reply::Bulk(f.into()), Reply::Bulk(v.into())))
                .collect(),
        ),
        "hkeys" => Reply::Array(
            all.into_iter()
                .map(|(f, _)| Reply::Bulk(f.into()))
                .collect(),
        ),
        _ => Reply::Array(
            all.into_iter()
                .map(|(_, v)| Reply::Bulk(v.into()))
                .collect(),
        ),
    })
}

async fn hlen(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key] = a else {
        return Ok(wrong_args("hlen"));
    };
    let sql = concat!(
        "SELECT k.type, (SELECT count(*) FROM kv_hash h WHERE h.kd = k.kd) AS n \
         FROM kv k WHERE k.kd = sha256($1) AND k.key = $1 AND ",
        live!(),
        ""
    );
    let row = on_db!(ctx, sqlx::query(sql).bind(&key[..]), fetch_optional)?;
    Ok(match row {
        None => Reply::Int(0),
        Some(r) if r.try_get::<i16, _>("type")? != HASH => error(msg::WRONGTYPE),
        Some(r) => Reply::Int(r.try_get("n")?),
    })
}

async fn hdel(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key, fields @ ..] = a else {
        return Ok(wrong_args("hdel"));
    };
    if fields.is_empty() {
        return Ok(wrong_args("hdel"));
    }
    let mut l = lock(ctx, &[key]).await?;
    match l.row(key).await? {
        None => return Ok(Reply::Int(0)),
        Some(r) if r.kind != HASH => return Ok(error(msg::WRONGTYPE)),
        Some(_) => {}
    }
    let list: Vec<&[u8]> = fields.iter().map(|f| &f[..]).collect();
    let n: i64 = sqlx::query_scalar(
        "WITH gone AS (DELETE FROM kv_hash WHERE kd = sha256($1) \
         AND fd = ANY (ARRAY(SELECT sha256(f) FROM unnest($2::bytea[]) AS w(f))) AND field = ANY ($2) \
         RETURNING 1), \
         touched AS (UPDATE kv SET version = nextval('kv_version') \
             WHERE kd = sha256($1) AND EXISTS (SELECT 1 FROM gone)) \
         SELECT count(*) FROM gone",
    )
    .bind(&key[..])
    .bind(&list)
    .fetch_one(l.conn())
    .await?;
    sqlx::query(
        "DELETE FROM kv WHERE kd = sha256($1) AND key = $1 \
         AND NOT EXISTS (SELECT 1 FROM kv_hash WHERE kd = sha256($1))",
    )
    .bind(&key[..])
    .execute(l.conn())
    .await?;
    l.commit(Reply::Int(n)).await
}

/// Under the lock: the current value of a field of a (created if missing) hash.
async fn field_for_update(
    ctx: &Ctx<'_>,
    l: &mut Locked<'_>,
    key: &[u8],
    field: &[u8],
) -> Result<Result<Option<Vec<u8>>, Reply>, sqlx::Error> {
    if let Err(e) = ensure_hash(ctx, l, key).await? {
        return Ok(Err(e));
    }
    let v: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT value FROM kv_hash WHERE kd = sha256($1) AND fd = sha256($2) AND field = $2",
    )
    .bind(key)
    .bind(field)
    .fetch_optional(l.conn())
    .await?;
    Ok(Ok(v))
}

async fn hincrby(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key, field, by] = a else {
        return Ok(wrong_args("hincrby"));
    };
    let Some(by) = parse_int(by) else {
        return Ok(error(msg::NOT_INT));
    };
    let mut l = lock(ctx, &[key]).await?;
    let current = match field_for_update(ctx, &mut l, key, field).await? {
        Err(e) => return Ok(e),
        Ok(None) => 0,
        Ok(Some(v)) => match parse_int(&v) {
            Some(n) => n,
            None => return Ok(error("ERR hash value is not an integer")),
        },
    };
    let Some(next) = current.checked_add(by) else {
        return Ok(error(msg::OVERFLOW));
    };
    put_fields(&mut l, key, &[&field[..]], &[next.to_string().as_bytes()]).await?;
    l.commit(Reply::Int(next)).await
}

async fn hincrbyfloat(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [key, field, by] = a else {
        return Ok(wrong_args("hincrbyfloat"));
    };
    let Some(incr) = parse_float(by) else {
        return Ok(error(msg::NOT_FLOAT));
    };
    if incr == LongDouble::Infinite {
        return Ok(error("ERR value is NaN or Infinity"));
    }
    let mut l = lock(ctx, &[key]).await?;
    let current = match field_for_update(ctx, &mut l, key, field).await? {
        Err(e) => return Ok(e),
        Ok(v) => v.unwrap_or_else(|| b"0".to_vec()),
    };
    let Some(cur) = parse_float(&current) else {
        return Ok(error("ERR hash value is not a float"));
    };
    let Some(text) = add_floats(&cur, &incr) else {
        return Ok(error(msg::NAN_INF));
    };
    put_fields(&mut l, key, &[&field[..]], &[text.as_bytes()]).await?;
    l.commit(Reply::Bulk(text.into())).await
}

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

/// SCAN, bounded by COUNT inside a slot. The cursor is a position in
/// `(slot, kd)` order (see [`ScanCursor`]); a call reads the live rows at or
/// after it in that order, up to COUNT of them, and answers the position of
/// the first row it did not return. Rows are never skipped: every key that
/// exists for the whole scan is returned exactly once (its position does not
/// change), and a slot with more keys than COUNT (one hash tag holding
/// 200,000 keys) takes many calls, each about COUNT keys long.
pub(super) async fn scan(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [cursor, opts @ ..] = a else {
        return Ok(wrong_args("scan"));
    };
    let Some(cursor) = crate::command::cursor::parse_scan_cursor(cursor) else {
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
    let layout = ScanCursor::new(ctx.slots);
    // A cursor this shard never answered (Redis scans on from wherever a
    // cursor points; past the last slot there is nothing left).
    let Some(start) = layout.decode(cursor) else {
        return Ok(reply(0, Vec::new()));
    };
    let (found, next) = scan_rows(ctx, &layout, start, count).await?;
    let keys = found
        .into_iter()
        .filter(|r| {
            type_filter
                .as_ref()
                .is_none_or(|t| t.as_slice() == type_name(r.kind).as_bytes())
        })
        .filter(|r| pattern.as_ref().is_none_or(|p| glob_match(p, &r.key)))
        .map(|r| Reply::Bulk(r.key.into()))
        .collect();
    Ok(reply(next.map_or(0, |g| layout.encode(g)), keys))
}

/// One live row as SCAN reads it.
struct ScanRow {
    key: Vec<u8>,
    kind: i16,
    group: Group,
}

/// Reads the rows of one SCAN call from `start` on: up to `count`, ending
/// on a [`Group`] boundary. Returns them and where the next call starts
/// (`None`: the scan is over).
async fn scan_rows(
    ctx: &Ctx<'_>,
    layout: &ScanCursor,
    start: Group,
    count: i64,
) -> Result<(Vec<ScanRow>, Option<Group>), sqlx::Error> {
    let sql = concat!(
        "SELECT key, kd, slot, type FROM kv WHERE (slot, kd) >= ($1, $2) AND ",
        live!(),
        " ORDER BY slot, kd LIMIT $3"
    );
    // One row more than asked for: the position of the first row this call
    // does not return, so the next call starts right at it (empty slots in
    // between are skipped without another call).
    let rows = on_db!(
        ctx,
        sqlx::query(sql)
            .bind(start.slot)
            .bind(&layout.lower_bound(start.prefix)[..])
            .bind(count.saturating_add(1)),
        fetch_all
    )?;
    let mut found = Vec::with_capacity(rows.len());
    for r in &rows {
        let kd: Vec<u8> = r.try_get("kd")?;
        found.push(ScanRow {
            key: r.try_get("key")?,
            kind: r.try_get("type")?,
            group: Group {
                slot: r.try_get("slot")?,
                prefix: layout.prefix_of(&kd),
            },
        });
    }
    if i64::try_from(found.len()).unwrap_or(i64::MAX) <= count {
        return Ok((found, None));
    }
    // The cursor can only say where a group starts, so a group is never
    // split between two calls: the call ends before the group of the extra
    // row starts (the next call begins with that group).
    let Some(next) = found.last().map(|r| r.group) else {
        return Ok((found, None));
    };
    let cut = found
        .iter()
        .rposition(|r| r.group != next)
        .map_or(0, |i| i + 1);
    if cut > 0 {
        found.truncate(cut);
        return Ok((found, Some(next)));
    }
    // Every row read shares one group (COUNT is smaller than a group, which
    // takes a digest-prefix collision): return the whole group.
    let sql = concat!(
        "SELECT key, type FROM kv WHERE slot = $1 AND kd >= $2 AND kd < $3 AND ",
        live!(),
        " ORDER BY kd"
    );
    let group = next;
    let after = layout.after(group);
    // Both bounds in the index condition (an optional one would be a
    // filter in the generic plan, reading the rest of the slot): the last
    // group of a slot ends below 33 bytes of 0xff, above every digest.
    let upper = match after.filter(|g| g.slot == group.slot) {
        Some(g) => layout.lower_bound(g.prefix).to_vec(),
        None => vec![0xff; 33],
    };
    let rows = on_db!(
        ctx,
        sqlx::query(sql)
            .bind(group.slot)
            .bind(&layout.lower_bound(group.prefix)[..])
            .bind(&upper[..]),
        fetch_all
    )?;
    let mut found = Vec::with_capacity(rows.len());
    for r in &rows {
        found.push(ScanRow {
            key: r.try_get("key")?,
            kind: r.try_get("type")?,
            group,
        });
    }
    Ok((found, after))
}

/// A SCAN position: the first keys of `slot` whose digest (`kd`) begins
/// with `prefix` (its first [`ScanCursor::prefix_bits`] bits). Keys sharing
/// a group are returned by one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Group {
    slot: i32,
    prefix: u64,
}

/// How a postgres shard's SCAN cursor encodes a [`Group`]:
/// `prefix * slots + slot`, below 2^48 so that the proxy can multiply it by
/// the number of shards (at most 2^16, [`crate::router::ShardId`]) and add
/// the shard without leaving the 64 bits of a Redis cursor. `prefix_bits`
/// is 48 minus the bits the slot count needs (34 bits for 16384 slots): the
/// digests are SHA-256, spread uniformly, so even in a slot of 200,000 keys
/// two keys share a 34-bit prefix only about once, and a call answers COUNT
/// keys, rarely one or two more.
///
/// Cursor 0 is the start (slot 0, prefix 0). A cursor below `slots` is
/// prefix 0 of that slot: exactly what the cursors of earlier versions
/// ("continue at slot c") meant, so a scan running across an upgrade
/// carries on where it was.
#[derive(Debug, Clone, Copy)]
struct ScanCursor {
    slots: u64,
    prefix_bits: u32,
}

impl ScanCursor {
    /// Bits of the cursor, of which the slot takes what it needs.
    const BITS: u32 = 48;

    fn new(slots: u32) -> ScanCursor {
        let slots = u64::from(slots.max(1));
        let slot_bits = u64::BITS - (slots - 1).leading_zeros();
        ScanCursor {
            slots,
            prefix_bits: Self::BITS.saturating_sub(slot_bits).max(1),
        }
    }

    /// The group a cursor names, `None` past the end.
    fn decode(&self, cursor: u64) -> Option<Group> {
        let prefix = cursor / self.slots;
        if prefix >> self.prefix_bits != 0 {
            return None;
        }
        let slot = i32::try_from(cursor % self.slots).ok()?;
        Some(Group { slot, prefix })
    }

    /// The cursor naming `g` (never 0 except for the very start).
    fn encode(&self, g: Group) -> u64 {
        g.prefix * self.slots + u64::try_from(g.slot).unwrap_or(0)
    }

    /// The group right after `g` (`None`: `g` is the last of the last slot).
    fn after(&self, g: Group) -> Option<Group> {
        if g.prefix + 1 < (1 << self.prefix_bits) {
            return Some(Group {
                slot: g.slot,
                prefix: g.prefix + 1,
            });
        }
        let slot = g.slot.checked_add(1)?;
        (u64::try_from(slot).ok()? < self.slots).then_some(Group { slot, prefix: 0 })
    }

    /// The first `prefix_bits` bits of a digest.
    fn prefix_of(&self, kd: &[u8]) -> u64 {
        let mut head = [0u8; 8];
        let n = kd.len().min(8);
        head[..n].copy_from_slice(&kd[..n]);
        u64::from_be_bytes(head) >> (64 - self.prefix_bits)
    }

    /// The smallest digest with this prefix, as bytes that compare (as
    /// `bytea` does: bytewise, then shorter first) below or equal to every
    /// digest with the prefix and above every digest with a smaller one.
    fn lower_bound(&self, prefix: u64) -> [u8; 8] {
        (prefix << (64 - self.prefix_bits)).to_be_bytes()
    }
}

pub(super) async fn keys(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    let [pattern] = a else {
        return Ok(wrong_args("keys"));
    };
    let sql = concat!("SELECT key FROM kv WHERE ", live!(), "");
    let all: Vec<Vec<u8>> = on_db!(ctx, sqlx::query_scalar(sql), fetch_all)?;
    Ok(Reply::Array(
        all.into_iter()
            .filter(|k| glob_match(pattern, k))
            .map(|k| Reply::Bulk(k.into()))
            .collect(),
    ))
}

pub(super) async fn dbsize(ctx: &Ctx<'_>) -> Res {
    let sql = concat!("SELECT count(*) FROM kv WHERE ", live!(), "");
    let n: i64 = on_db!(ctx, sqlx::query_scalar(sql), fetch_one)?;
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
    let key: Option<Vec<u8>> = on_db!(
        ctx,
        sqlx::query_scalar(sql).bind(&probe[..]),
        fetch_optional
    )?;
    Ok(key.map_or(Reply::Nil, |k| Reply::Bulk(k.into())))
}

pub(super) async fn flush(ctx: &Ctx<'_>, a: &[Bytes]) -> Res {
    match a {
        [] => {}
        [mode] if matches!(option_name(mode).as_slice(), b"sync" | b"async") => {}
        _ => return Ok(error(msg::SYNTAX)),
    }
    on_db!(ctx, sqlx::query("TRUNCATE kv_hash, kv"), execute)?;
    Ok(Reply::Ok)
}

/// INFO: only the keyspace section (the proxy sums it over shards).
pub(super) async fn info(ctx: &Ctx<'_>) -> Res {
    let sql = concat!(
        "SELECT count(*), count(expires_at) FROM kv WHERE ",
        live!(),
        ""
    );
    let (keys, expires): (i64, i64) = on_db!(ctx, sqlx::query_as(sql), fetch_one)?;
    let mut text = String::from("# Keyspace\r\n");
    if keys > 0 {
        text.push_str(&format!("db0:keys={keys},expires={expires},avg_ttl=0\r\n"));
    }
    Ok(Reply::Verbatim(Bytes::from(text)))
}

#[cfg(test)]
mod tests {
    use super::{Group, ScanCursor};

    #[test]
    fn cursor_round_trips_and_stays_below_2_pow_48() {
        for slots in [1u32, 2, 3, 1000, 16384, 16385, 1_048_576] {
            let c = ScanCursor::new(slots);
            let last = Group {
                slot: i32::try_from(slots - 1).unwrap(),
                prefix: (1 << c.prefix_bits) - 1,
            };
            assert!(c.encode(last) < 1 << 48, "{slots}");
            for g in [
                Group { slot: 0, prefix: 0 },
                Group { slot: 0, prefix: 1 },
                last,
            ] {
                assert_eq!(c.decode(c.encode(g)), Some(g), "{slots} {g:?}");
            }
            assert_eq!(c.after(last), None);
            assert_eq!(c.decode(u64::MAX), None);
            assert_eq!(c.decode(c.encode(last) + 1), None);
        }
        // Old cursors (a slot number) still mean "the start of that slot".
        let c = ScanCursor::new(16384);
        assert_eq!(c.prefix_bits, 34);
        assert_eq!(
            c.decode(77),
            Some(Group {
                slot: 77,
                prefix: 0
            })
        );
    }

    #[test]
    fn bounds_order_digests_by_prefix() {
        let c = ScanCursor::new(16384);
        let kd = [0xabu8; 32];
        let p = c.prefix_of(&kd);
        let lower = c.lower_bound(p);
        let upper = c.lower_bound(p + 1);
        assert!(lower[..] <= kd[..] && kd[..] < upper[..]);
        assert_eq!(c.prefix_of(&lower), p);
        assert_eq!(
            c.after(Group {
                slot: 3,
                prefix: (1 << 34) - 1
            }),
            Some(Group { slot: 4, prefix: 0 })
        );
    }
}

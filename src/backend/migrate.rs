//! Moving keys between Redis shards for a rebalance: the `MIGRATE` command
//! that a source primary runs (atomic there: the key is restored on the
//! target before it is deleted on the source), and how its reply reads.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::dedicated::PooledConn;
use super::{Endpoint, EndpointState};
use crate::error::BackendError;
use crate::protocol::{Protocol, reply, request::encode_command};

/// A key at least this big (by `MEMORY USAGE`) is a big key: a hash, set,
/// sorted set or list is copied piece by piece ([`copy_in_pieces`]) instead
/// of by one `MIGRATE`, which would block its source while it copies.
pub const BIG_KEY_BYTES: u64 = 16 << 20;

/// Outcome of one `MIGRATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migrated {
    /// At least one of the keys was on the source and is now on the target.
    Moved,
    /// None of the keys was on the source (already moved, or never there).
    NoKey,
    /// The source refused or failed (its error text): the keys stay where
    /// they were, on the source.
    Failed(String),
}

/// Encodes `MIGRATE host port "" 0 timeout REPLACE [AUTH2 user pw | AUTH pw]
/// KEYS key...`, to be sent to the source primary, moving `keys` to
/// `target` (a primary, reached by the source at the address the map
/// gives). `REPLACE` only matters after a move that restored the key on the
/// target but failed before deleting it on the source: both copies are then
/// the same, since no command uses a key before its move succeeded.
pub fn migrate_frame(target: &EndpointState, keys: &[&[u8]], timeout_ms: u64) -> Bytes {
    let (host, port) = match target.addr.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
        None => (target.addr.as_str(), "6379"),
    };
    let timeout = timeout_ms.max(1).to_string();
    let mut args: Vec<&[u8]> = vec![
        b"MIGRATE",
        host.as_bytes(),
        port.as_bytes(),
        b"",
        b"0",
        timeout.as_bytes(),
        b"REPLACE",
    ];
    if let Some(auth) = &target.link.auth {
        match &auth.username {
            Some(user) => args.extend([
                b"AUTH2".as_slice(),
                user.as_bytes(),
                auth.password.as_bytes(),
            ]),
            None => args.extend([b"AUTH".as_slice(), auth.password.as_bytes()]),
        }
    }
    args.push(b"KEYS");
    args.extend_from_slice(keys);
    let mut out = BytesMut::new();
    encode_command(&args, &mut out);
    out.freeze()
}

/// Reads a `MIGRATE` reply.
pub fn migrated(frame: &[u8]) -> Migrated {
    if frame.starts_with(b"+OK") {
        Migrated::Moved
    } else if frame.starts_with(b"+NOKEY") {
        Migrated::NoKey
    } else {
        Migrated::Failed(
            reply::error_text(frame)
                .unwrap_or_else(|| String::from_utf8_lossy(frame).trim_end().to_owned()),
        )
    }
}

/// Bounded request on a dedicated connection.
pub async fn request(
    conn: &mut PooledConn,
    frames: &[u8],
    replies: usize,
    timeout: Duration,
) -> Result<Vec<Bytes>, String> {
    let run = async {
        conn.send(frames, replies).await?;
        let mut out = Vec::with_capacity(replies);
        for _ in 0..replies {
            out.push(conn.recv().await?);
        }
        Ok::<_, BackendError>(out)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no reply within {} ms", timeout.as_millis())),
    }
}

/// How a big key was copied.
pub enum Copied {
    /// Element by element, in this many pieces.
    Pieces(usize),
    /// Not a hash, set, sorted set or list: left for one `MIGRATE`.
    Whole,
    /// No longer on the source (a command moved it before the fence).
    Gone,
}

/// Elements per piece of a big key.
const PIECE: &str = "1000";

/// Copies a big hash, set, sorted set or list from the source (`conn`) to
/// `target` piece by piece (`HSCAN`/`SSCAN`/`ZSCAN`/`LRANGE` there, `HSET`/
/// `SADD`/`ZADD`/`RPUSH` here), then its expiry time, then unlinks it on
/// the source. The key is fenced: no command touches it meanwhile, so the
/// copy is exact. A copy cut short (a crash) is redone from scratch: the
/// target's partial copy is deleted first, and until then the key is still
/// whole on the source, where commands find and move it.
pub async fn copy_in_pieces(
    conn: &mut PooledConn,
    target: &Arc<Endpoint>,
    key: &Bytes,
    timeout: Duration,
) -> Result<Copied, String> {
    let one = |args: &[&[u8]]| {
        let mut f = BytesMut::new();
        encode_command(args, &mut f);
        f
    };
    let r = request(conn, &one(&[b"TYPE", key]), 1, timeout).await?;
    let kind = String::from_utf8_lossy(r[0].get(1..).unwrap_or_default())
        .trim_end()
        .to_owned();
    let scan: &[u8] = match kind.as_str() {
        "none" => return Ok(Copied::Gone),
        "hash" => b"HSCAN",
        "set" => b"SSCAN",
        "zset" => b"ZSCAN",
        "list" => b"LRANGE",
        _ => return Ok(Copied::Whole),
    };
    let r = request(conn, &one(&[b"PEXPIRETIME", key]), 1, timeout).await?;
    let expire_at = reply::integer(&r[0]).unwrap_or(-1);
    let mut out = target
        .dedicated(Protocol::Resp2)
        .await
        .map_err(|e| e.to_string())?;
    let check = |r: Vec<Bytes>, what: &str| -> Result<Vec<Bytes>, String> {
        match r.iter().find(|f| reply::is_error(f)) {
            Some(e) => Err(format!(
                "{what} on {}: {}",
                target.state.addr,
                reply::error_text(e).unwrap_or_default()
            )),
            None => Ok(r),
        }
    };
    check(
        request(&mut out, &one(&[b"DEL", key]), 1, timeout).await?,
        "DEL",
    )?;
    let mut pieces = 0;
    let mut cursor = Bytes::from_static(b"0");
    let mut index = 0i64;
    loop {
        let (next, elems) = if kind == "list" {
            let (a, b) = (index.to_string(), (index + 999).to_string());
            let r = request(
                conn,
                &one(&[b"LRANGE", key, a.as_bytes(), b.as_bytes()]),
                1,
                timeout,
            )
            .await?;
            let elems: Vec<Bytes> = reply::array_elements(&r[0])
                .ok()
                .flatten()
                .unwrap_or_default()
                .iter()
                .filter_map(reply::bulk)
                .collect();
            index += elems.len() as i64;
            let next = if elems.len() < 1000 {
                Bytes::from_static(b"0")
            } else {
                Bytes::from_static(b"more")
            };
            (next, elems)
        } else {
            let r = request(
                conn,
                &one(&[scan, key, &cursor, b"COUNT", PIECE.as_bytes()]),
                1,
                timeout,
            )
            .await?;
            scan_reply(&r[0])?
        };
        if !elems.is_empty() {
            let mut args: Vec<&[u8]> = Vec::with_capacity(elems.len() + 2);
            let write: &[u8] = match kind.as_str() {
                "hash" => b"HSET",
                "set" => b"SADD",
                "zset" => b"ZADD",
                _ => b"RPUSH",
            };
            args.push(write);
            args.push(key);
            if kind == "zset" {
                // ZSCAN gives member, score; ZADD takes score, member.
                for pair in elems.chunks(2) {
                    if let [m, sc] = pair {
                        args.push(sc);
                        args.push(m);
                    }
                }
            } else {
                args.extend(elems.iter().map(|e| e.as_ref()));
            }
            check(
                request(&mut out, &one(&args), 1, timeout).await?,
                "copying a big key",
            )?;
            pieces += 1;
        }
        cursor = next;
        if cursor.as_ref() == b"0" {
            break;
        }
    }
    if expire_at > 0 {
        let at = expire_at.to_string();
        check(
            request(
                &mut out,
                &one(&[b"PEXPIREAT", key, at.as_bytes()]),
                1,
                timeout,
            )
            .await?,
            "PEXPIREAT",
        )?;
    }
    let r = request(conn, &one(&[b"UNLINK", key]), 1, timeout).await?;
    if reply::is_error(&r[0]) {
        return Err(format!(
            "UNLINK of a copied big key: {}",
            reply::error_text(&r[0]).unwrap_or_default()
        ));
    }
    Ok(Copied::Pieces(pieces))
}

/// `SCAN`-shaped reply (`[cursor, [elements]]`) as (cursor, elements).
pub fn scan_reply(frame: &Bytes) -> Result<(Bytes, Vec<Bytes>), String> {
    let bad = || format!("unexpected SCAN reply: {}", String::from_utf8_lossy(frame));
    if reply::is_error(frame) {
        return Err(bad());
    }
    let elems = reply::array_elements(frame)
        .ok()
        .flatten()
        .ok_or_else(bad)?;
    let [next, keys] = <[Bytes; 2]>::try_from(elems).map_err(|_| bad())?;
    let next = reply::bulk(&next).ok_or_else(bad)?;
    let keys = reply::array_elements(&keys)
        .ok()
        .flatten()
        .ok_or_else(bad)?
        .iter()
        .filter_map(reply::bulk)
        .collect();
    Ok((next, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_as_outcomes() {
        assert_eq!(migrated(b"+OK\r\n"), Migrated::Moved);
        assert_eq!(migrated(b"+NOKEY\r\n"), Migrated::NoKey);
        assert_eq!(
            migrated(b"-IOERR error or timeout writing to target instance\r\n"),
            Migrated::Failed("IOERR error or timeout writing to target instance".into())
        );
    }
}

//! Moving one key between shards of different kinds (Redis -> PostgreSQL,
//! PostgreSQL -> Redis, PostgreSQL -> PostgreSQL), where `MIGRATE` cannot
//! run: the key is copied with ordinary commands, which a postgres shard
//! answers through its backend like a Redis server.
//!
//! The copy is the piecewise copy of big keys ([`super::migrate`]) made
//! generic: under the key's fence (no other copier and no move on touch
//! of the key meanwhile, so the copy is exact), `TYPE` and `PEXPIRETIME`
//! on the source; a string is read with `GET` and written with one
//! `SET ... PXAT` (value and expiry at once); a hash is read with `HSCAN`
//! pieces (a Redis source) or `HGETALL` (a postgres source), and written
//! as `DEL` then `HSET` pieces, its expiry set right after the first piece
//! (a copy cut short by a crash expires with its source); then `UNLINK`
//! on the source. Until that last step the key is whole on its source,
//! where commands find and move it again; a copy redone from scratch
//! replaces whatever an earlier attempt left on the target. Values are
//! bytes throughout (binary-safe) and expiry times are absolute Unix
//! milliseconds (exact, whatever the round trips took).
//!
//! A postgres shard holds strings and hashes, in database 0 only: any other
//! type, or a key of another database, is refused with [`CopyError::Stays`]
//! before anything is written, and the key stays on its source.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::fence::KeyFences;
use super::migrate::{MigrateError, scan_reply, still_held};
use super::{Db, Endpoint, Wire};
use crate::error::BackendError;
use crate::protocol::{Protocol, reply, request::encode_command};
use crate::shardmap::ShardKind;

/// Hash fields per `HSCAN` and per `HSET` of a copy.
const PIECE: usize = 1000;

/// How a key copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// The key is on the target now (this many bytes of keys, fields and
    /// values), and gone from the source.
    Moved { bytes: u64 },
    /// The key was not on the source (moved already, expired, deleted).
    Gone,
}

/// Why a key cannot move to its target, for good: it stays on its source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stays {
    /// A type a postgres shard cannot hold.
    #[error(
        "key `{key}` is a {kind}; a postgres shard holds strings and hashes only, so the key stays on its source shard (delete it or make it a string or hash there, then resume the rebalance)"
    )]
    Type { key: String, kind: String },
    /// A key of a database other than 0, moving to a postgres shard.
    #[error(
        "key `{key}` is in database {db}; a postgres shard has database 0 only, so the key stays on its source shard (move or delete it, then resume the rebalance)"
    )]
    Database { key: String, db: u32 },
}

/// Why a key copy failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// A step failed (connection, timeout, error reply): the key is still
    /// whole on its source; trying again is safe.
    #[error(transparent)]
    Step(#[from] MigrateError),
    /// The key cannot live on the target; nothing was written.
    #[error(transparent)]
    Stays(#[from] Stays),
}

/// The first client id of the mover's copies (copy `i` of a batch uses
/// `MOVER_CLIENTS + i`, on both sides: a lane of its own on a postgres
/// shard, a multiplexed connection on a Redis one). Clients count from 1,
/// so these never name a client's lane: a copy does not queue behind a
/// client's requests, nor a client behind a copy.
pub const MOVER_CLIENTS: u64 = 1 << 62;

/// Whether a move from `source` to `target` must use [`copy_key`]:
/// `MIGRATE` runs between Redis servers only.
pub fn needs_copy(source: &Endpoint, target: &Endpoint) -> bool {
    source.kind() == Some(ShardKind::Postgres) || target.kind() == Some(ShardKind::Postgres)
}

/// One side of a copy: an endpoint, reached over the connection (or lane)
/// of `client` in database `db`.
struct Side<'a> {
    ep: &'a Endpoint,
    wire: Wire,
    client: u64,
    timeout: Duration,
}

impl Side<'_> {
    /// Runs one command; an error reply is an error of `step`.
    async fn ask(&self, step: &'static str, args: &[&[u8]]) -> Result<Bytes, MigrateError> {
        let mut frame = BytesMut::new();
        encode_command(args, &mut frame);
        let addr = || self.ep.state.addr.clone();
        let rx = self.ep.send(self.wire, self.client, &frame.freeze());
        let frame = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(a))) => a.frame,
            Ok(Ok(Err(e))) => return Err(e.into()),
            Ok(Err(_)) => {
                return Err(BackendError::ConnectionLost {
                    addr: addr(),
                    reason: "connection task stopped".to_owned(),
                }
                .into());
            }
            Err(_) => {
                return Err(BackendError::Timeout {
                    addr: addr(),
                    millis: self.timeout.as_millis() as u64,
                }
                .into());
            }
        };
        if reply::is_error(&frame) {
            return Err(MigrateError::Refused {
                step,
                addr: addr(),
                reason: reply::error_text(&frame).unwrap_or_default(),
            });
        }
        Ok(frame)
    }
}

/// The type of a key on its source, by `TYPE`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyType {
    Missing,
    String,
    Hash,
    /// Any other type, by the name `TYPE` gives it.
    Other(String),
}

impl KeyType {
    fn parse(frame: &[u8]) -> KeyType {
        match frame.get(1..).unwrap_or_default().trim_ascii_end() {
            b"none" => KeyType::Missing,
            b"string" => KeyType::String,
            b"hash" => KeyType::Hash,
            other => KeyType::Other(String::from_utf8_lossy(other).into_owned()),
        }
    }
}

/// Why `key` (in database `db` of `source`) cannot move to `target`, if
/// it cannot: its type on the source (one `TYPE`), or its database. The
/// caller holds the key's fence, so the answer stays true until it lifts
/// it. `Ok(None)`: it can move (or is not there).
pub async fn stays(
    source: &Endpoint,
    target: &Endpoint,
    db: Db,
    client: u64,
    key: &Bytes,
) -> Result<Option<Stays>, MigrateError> {
    let src = side(source, db, client);
    let t = KeyType::parse(&src.ask("TYPE", &[b"TYPE", key]).await?);
    Ok(refusal(target, db, key, &t))
}

fn refusal(target: &Endpoint, db: Db, key: &Bytes, t: &KeyType) -> Option<Stays> {
    if target.kind() != Some(ShardKind::Postgres) || *t == KeyType::Missing {
        return None;
    }
    let name = || String::from_utf8_lossy(key).into_owned();
    match t {
        KeyType::Other(kind) => Some(Stays::Type {
            key: name(),
            kind: kind.clone(),
        }),
        _ if db != Db(0) => Some(Stays::Database {
            key: name(),
            db: db.0,
        }),
        _ => None,
    }
}

fn side(ep: &Endpoint, db: Db, client: u64) -> Side<'_> {
    Side {
        ep,
        wire: Wire {
            proto: Protocol::Resp2,
            db,
        },
        client,
        // A whole hash (HGETALL) or a big string travels in one reply.
        timeout: ep.state.options.command_timeout.max(Duration::from_secs(1)) * 4,
    }
}

/// Moves `key` (database `db`) from `source` to `target` with commands
/// (see the module doc), under the key's fence. `client` picks the
/// connection or lane used on both sides (a client's requests to one
/// endpoint stay in order).
pub async fn copy_key(
    fences: &KeyFences,
    source: &Endpoint,
    target: &Endpoint,
    db: Db,
    client: u64,
    key: &Bytes,
) -> Result<Copied, CopyError> {
    if fences.in_fleet() && !(db != Db(0) && source.kind() == Some(ShardKind::Postgres)) {
        // A key not on its source needs no claim in etcd (most keys a
        // command touches in a migrating slot have moved already): a
        // copier unlinks its source only after the target holds the key.
        let t = side(source, db, client)
            .ask("TYPE", &[b"TYPE", key])
            .await?;
        if KeyType::parse(&t) == KeyType::Missing {
            return Ok(Copied::Gone);
        }
    }
    fences.fence(key).await.map_err(MigrateError::from)?;
    let copied = copy_fenced(fences, source, target, db, client, key).await;
    fences.lift(key);
    copied
}

/// [`copy_key`] for a caller that holds the key's fence.
async fn copy_fenced(
    fences: &KeyFences,
    source: &Endpoint,
    target: &Endpoint,
    db: Db,
    client: u64,
    key: &Bytes,
) -> Result<Copied, CopyError> {
    if db != Db(0) && source.kind() == Some(ShardKind::Postgres) {
        // A postgres shard holds database 0 only: nothing to move.
        return Ok(Copied::Gone);
    }
    let src = side(source, db, client);
    let dst = side(target, db, client);
    let t = KeyType::parse(&src.ask("TYPE", &[b"TYPE", key]).await?);
    if let Some(why) = refusal(target, db, key, &t) {
        return Err(why.into());
    }
    if t == KeyType::Missing {
        return Ok(Copied::Gone);
    }
    let r = src.ask("PEXPIRETIME", &[b"PEXPIRETIME", key]).await?;
    let expire_at = match reply::integer(&r) {
        Some(-2) | None => return Ok(Copied::Gone),
        Some(at) => at,
    };
    let at = expire_at.to_string();
    let mut bytes = key.len() as u64;
    match t {
        KeyType::String => {
            let Some(value) = reply::bulk(&src.ask("GET", &[b"GET", key]).await?) else {
                return Ok(Copied::Gone);
            };
            bytes += value.len() as u64;
            let mut args: Vec<&[u8]> = vec![b"SET", key, &value];
            if expire_at > 0 {
                args.extend([b"PXAT".as_slice(), at.as_bytes()]);
            }
            still_held(fences, key)?;
            dst.ask("SET on the target", &args).await?;
        }
        KeyType::Hash => {
            still_held(fences, key)?;
            dst.ask("DEL on the target", &[b"DEL", key]).await?;
            let mut first = true;
            let mut pieces = HashPieces::new(&src, key);
            while let Some(fields) = pieces.next().await? {
                if fields.is_empty() {
                    continue;
                }
                bytes += fields.iter().map(|f| f.len() as u64).sum::<u64>();
                for chunk in fields.chunks(2 * PIECE) {
                    let mut args: Vec<&[u8]> = Vec::with_capacity(chunk.len() + 2);
                    args.extend([b"HSET".as_slice(), key.as_ref()]);
                    args.extend(chunk.iter().map(|f| f.as_ref()));
                    still_held(fences, key)?;
                    dst.ask("HSET on the target", &args).await?;
                    if first && expire_at > 0 {
                        let args: &[&[u8]] = &[b"PEXPIREAT", key, at.as_bytes()];
                        still_held(fences, key)?;
                        dst.ask("PEXPIREAT on the target", args).await?;
                    }
                    first = false;
                }
            }
            if first {
                // Every field went between TYPE and the reads.
                return Ok(Copied::Gone);
            }
        }
        KeyType::Missing | KeyType::Other(_) => return Ok(Copied::Gone),
    }
    still_held(fences, key)?;
    src.ask("UNLINK of a copied key", &[b"UNLINK", key]).await?;
    Ok(Copied::Moved { bytes })
}

/// The fields and values of a hash on the source, a piece at a time:
/// `HSCAN` on Redis, one `HGETALL` on a postgres shard (which has no
/// `HSCAN`).
struct HashPieces<'a> {
    src: &'a Side<'a>,
    key: &'a Bytes,
    /// The next `HSCAN` cursor; `None` once done.
    cursor: Option<Bytes>,
}

impl<'a> HashPieces<'a> {
    fn new(src: &'a Side<'a>, key: &'a Bytes) -> Self {
        HashPieces {
            src,
            key,
            cursor: Some(Bytes::from_static(b"0")),
        }
    }

    async fn next(&mut self) -> Result<Option<Vec<Bytes>>, MigrateError> {
        let Some(cursor) = self.cursor.take() else {
            return Ok(None);
        };
        if self.src.ep.kind() == Some(ShardKind::Postgres) {
            let r = self.src.ask("HGETALL", &[b"HGETALL", self.key]).await?;
            let fields = reply::array_elements(&r)
                .ok()
                .flatten()
                .ok_or_else(|| MigrateError::Unexpected {
                    command: "HGETALL",
                    reply: String::from_utf8_lossy(&r).into_owned(),
                })?
                .iter()
                .filter_map(reply::bulk)
                .collect();
            return Ok(Some(fields));
        }
        let count = PIECE.to_string();
        let args: &[&[u8]] = &[b"HSCAN", self.key, &cursor, b"COUNT", count.as_bytes()];
        let r = self.src.ask("HSCAN", args).await?;
        let (next, fields) = scan_reply(&r)?;
        self.cursor = (next.as_ref() != b"0").then_some(next);
        Ok(Some(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_replies_read_as_key_types() {
        assert_eq!(KeyType::parse(b"+none\r\n"), KeyType::Missing);
        assert_eq!(KeyType::parse(b"+string\r\n"), KeyType::String);
        assert_eq!(KeyType::parse(b"+hash\r\n"), KeyType::Hash);
        assert_eq!(
            KeyType::parse(b"+list\r\n"),
            KeyType::Other("list".to_owned())
        );
    }

    #[test]
    fn refusals_name_the_key_and_the_reason() {
        let e = Stays::Type {
            key: "{t}l".into(),
            kind: "list".into(),
        };
        assert!(e.to_string().starts_with("key `{t}l` is a list;"), "{e}");
        let e = Stays::Database {
            key: "k".into(),
            db: 3,
        };
        assert!(e.to_string().contains("database 3"), "{e}");
    }
}

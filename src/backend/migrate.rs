//! Moving keys between Redis shards for a rebalance: the `MIGRATE` command
//! that a source primary runs for a command that touches a key (atomic
//! there: the key is restored on the target before it is deleted on the
//! source), put off while the mover copies that key ([`MOVING_SET`]); how
//! its reply reads; and big keys, copied piece by piece.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::dedicated::PooledConn;
use super::fence::{FenceError, KeyFences};
use super::{Db, Endpoint, EndpointState, Wire};
use crate::error::BackendError;
use crate::protocol::{Protocol, reply, request::encode_command};

/// A key at least this big (by `MEMORY USAGE`) is a big key: it moves by
/// [`move_big_key`] (a hash, set, sorted set or list piece by piece) instead
/// of by one `MIGRATE` of many keys, which would block its source while it
/// copies.
pub const BIG_KEY_BYTES: u64 = 16 << 20;

/// Outcome of one `MIGRATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migrated {
    /// At least one of the keys was on the source and is now on the target.
    Moved,
    /// None of the keys was on the source (already moved, or never there).
    NoKey,
    /// The mover kept copying the key ([`migrate_unless_copying`]):
    /// nothing happened.
    Copying,
    /// The source refused or failed (its error text): the keys stay where
    /// they were, on the source.
    Failed(String),
}

/// Encodes `MIGRATE host port "" db timeout REPLACE [AUTH2 user pw | AUTH pw]
/// KEYS key...`, to be sent to the source primary on a connection of
/// database `db`, moving `keys` to `target` (a primary, reached by the
/// source at the address the map gives) into the same database. `REPLACE` only matters after a move that restored the key on the
/// target but failed before deleting it on the source: both copies are then
/// the same, since no command uses a key before its move succeeded.
pub fn migrate_frame(target: &EndpointState, db: Db, keys: &[&[u8]], timeout_ms: u64) -> Bytes {
    let (host, port) = match target.addr.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
        None => (target.addr.as_str(), "6379"),
    };
    let timeout = timeout_ms.max(1).to_string();
    let db = db.0.to_string();
    let mut args: Vec<&[u8]> = vec![
        b"MIGRATE",
        host.as_bytes(),
        port.as_bytes(),
        b"",
        db.as_bytes(),
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

/// The set, in each database of a source shard, of the keys the mover is
/// copying right now (`DUMP` on the source, `RESTORE` on the target,
/// `UNLINK` on the source: see `rebalance::mover::walk`). While a key is in
/// it, its copy on the source does not change: a command that would move
/// it (on any proxy of a fleet) moves it with [`migrate_unless_copying`],
/// which does not while it is in the set, and waits. The set exists only
/// while the mover has keys in flight; a mover that starts walking a source
/// removes what a crashed one left.
pub const MOVING_SET: &[u8] = b"__shardgate_moving__";

/// Whether `key` is a name the proxy keeps for itself: the mover's fence
/// ([`MOVING_SET`]). A client that wrote or deleted it (or whose command
/// moved it) could lift the fence while the mover copies a key, and a write
/// to that key could be lost; so the proxy refuses commands naming it, and
/// `KEYS`, `SCAN` and `RANDOMKEY` do not list it.
pub fn is_reserved_key(key: &[u8]) -> bool {
    key == MOVING_SET
}

/// `MIGRATE` of one key, by a command that touches it, unless the mover is
/// copying it (it is in [`MOVING_SET`]), on `conn` (a dedicated RESP2
/// connection of database `db` to the source): `WATCH` the set, check the
/// key is not in it, then `MIGRATE` inside `MULTI`/`EXEC`, which Redis
/// does not run if the set changed meanwhile (the mover fenced or released
/// a batch): then again. While the key is in the set, asks again every
/// millisecond, for at most `limit`; then answers [`Migrated::Copying`].
/// `on_wait` runs each time it has to ask again.
///
/// (A script could check and move in one step, but it would carry the
/// target's password in its arguments, which the source's `SLOWLOG` and
/// `MONITOR` show; they redact `MIGRATE`'s own.)
pub async fn migrate_unless_copying(
    conn: &mut PooledConn,
    target: &EndpointState,
    db: Db,
    key: &[u8],
    timeout: Duration,
    limit: Duration,
    on_wait: impl Fn(),
) -> Result<Migrated, MigrateError> {
    let started = std::time::Instant::now();
    let ms = timeout.as_millis() as u64;
    loop {
        let mut check = BytesMut::new();
        encode_command(&[b"WATCH", MOVING_SET], &mut check);
        encode_command(&[b"SISMEMBER", MOVING_SET, key], &mut check);
        conn.stateful = true;
        let r = request(conn, &check, 2, timeout).await?;
        if let Some(e) = r.iter().find(|f| reply::is_error(f)) {
            return Ok(Migrated::Failed(error_of(e)));
        }
        let copying = reply::integer(&r[1]) == Some(1);
        if !copying {
            let mut tx = BytesMut::new();
            encode_command(&[b"MULTI"], &mut tx);
            tx.extend_from_slice(&migrate_frame(target, db, &[key], ms));
            encode_command(&[b"EXEC"], &mut tx);
            let r = request(conn, &tx, 3, timeout * 2).await?;
            conn.stateful = false;
            match reply::array_elements(&r[2]) {
                Ok(Some(done)) if !done.is_empty() => return Ok(migrated(&done[0])),
                // Aborted: the set changed since the WATCH.
                Ok(Some(_)) => {}
                _ => {
                    let e = r.iter().find(|f| reply::is_error(f)).unwrap_or(&r[2]);
                    return Ok(Migrated::Failed(error_of(e)));
                }
            }
        } else {
            request(conn, b"*1\r\n$7\r\nUNWATCH\r\n", 1, timeout).await?;
            conn.stateful = false;
        }
        on_wait();
        if started.elapsed() > limit {
            return Ok(Migrated::Copying);
        }
        if copying {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

fn error_of(frame: &[u8]) -> String {
    reply::error_text(frame).unwrap_or_else(|| String::from_utf8_lossy(frame).trim_end().to_owned())
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

/// Why a step of a key move failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    /// The connection to the source or the target failed or timed out.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A backend answered a step with an error reply; the key stays whole
    /// on the source.
    #[error("{step} on {addr}: {reason}")]
    Refused {
        step: &'static str,
        addr: String,
        reason: String,
    },
    /// A reply was not shaped like the reply of the command sent.
    #[error("unexpected {command} reply: {reply}")]
    Unexpected {
        command: &'static str,
        reply: String,
    },
    /// The key's fence could not be taken (in a fleet: its claim in etcd),
    /// or this proxy may have lost it: nothing more is written.
    #[error(transparent)]
    Fence(#[from] FenceError),
}

/// Bounded request on a dedicated connection: `frames` holds `replies`
/// requests, and every reply must have arrived within `timeout`.
pub async fn request(
    conn: &mut PooledConn,
    frames: &[u8],
    replies: usize,
    timeout: Duration,
) -> Result<Vec<Bytes>, MigrateError> {
    let run = async {
        conn.send(frames, replies).await?;
        let mut out = Vec::with_capacity(replies);
        for _ in 0..replies {
            out.push(conn.recv().await?);
        }
        Ok::<_, BackendError>(out)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(BackendError::Timeout {
            addr: conn.addr().to_owned(),
            millis: timeout.as_millis() as u64,
        }
        .into()),
    }
}

/// How long one `MIGRATE` of a big key may run on its source, and (twice
/// that) how long the proxy waits for its reply. It only happens to a big
/// key that cannot be copied in pieces (a string or a stream); Redis copies
/// it in one go and blocks the source meanwhile, so it gets much longer
/// than a command timeout: 16 MiB or more over a slow link. Both the mover
/// and a command that touches such a key use it ([`move_big_key`]).
pub const BIG_KEY_MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);

/// How a big key was moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BigKeyMove {
    /// Element by element, in this many pieces; the source was never
    /// blocked for long.
    Pieces(usize),
    /// In one `MIGRATE` (a string or a stream); the source was blocked
    /// while it copied.
    Whole,
    /// It was no longer on the source (a command moved it, or it expired
    /// or was deleted): nothing to do.
    Gone,
}

/// Moves one big key (see [`BIG_KEY_BYTES`]) from the source (`conn`, a
/// dedicated connection to its primary) to `target`. The key is fenced for
/// the whole move: a command that would move it itself waits, and the
/// moves on touch already under way finish first. A hash, set, sorted set
/// or list is copied piece by piece (`copy_in_pieces`); any other type
/// moves in one `MIGRATE` bounded by [`BIG_KEY_MIGRATE_TIMEOUT`]. The
/// mover (`rebalance`) and a command that touches the key (`proxy`) both
/// move big keys with this.
pub async fn move_big_key(
    fences: &KeyFences,
    conn: &mut PooledConn,
    target: &Arc<Endpoint>,
    db: Db,
    key: &Bytes,
    timeout: Duration,
) -> Result<BigKeyMove, MigrateError> {
    fences.fence(key).await?;
    let moved = move_fenced(fences, conn, target, db, key, timeout).await;
    fences.lift(key);
    moved
}

async fn move_fenced(
    fences: &KeyFences,
    conn: &mut PooledConn,
    target: &Arc<Endpoint>,
    db: Db,
    key: &Bytes,
    timeout: Duration,
) -> Result<BigKeyMove, MigrateError> {
    match copy_in_pieces(fences, conn, target, db, key, timeout).await? {
        Copied::Pieces(n) => Ok(BigKeyMove::Pieces(n)),
        Copied::Gone => Ok(BigKeyMove::Gone),
        Copied::Whole => {
            still_held(fences, key)?;
            let ms = BIG_KEY_MIGRATE_TIMEOUT.as_millis() as u64;
            let frame = migrate_frame(&target.state, db, &[key.as_ref()], ms);
            let r = request(conn, &frame, 1, BIG_KEY_MIGRATE_TIMEOUT * 2).await?;
            match migrated(&r[0]) {
                Migrated::Moved => Ok(BigKeyMove::Whole),
                Migrated::NoKey => Ok(BigKeyMove::Gone),
                // (A plain `MIGRATE` never answers `Copying`.)
                Migrated::Copying => Err(MigrateError::Refused {
                    step: "MIGRATE of a big key",
                    addr: target.state.addr.clone(),
                    reason: "the mover is copying it".to_owned(),
                }),
                Migrated::Failed(reason) => Err(MigrateError::Refused {
                    step: "MIGRATE of a big key",
                    addr: target.state.addr.clone(),
                    reason,
                }),
            }
        }
    }
}

/// How a big key was copied.
enum Copied {
    /// Element by element, in this many pieces.
    Pieces(usize),
    /// Not a hash, set, sorted set or list: left for one `MIGRATE`.
    Whole,
    /// No longer on the source (a command moved it before the fence).
    Gone,
}

/// The type of a key on the source, as `TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    /// `none`: the key does not exist.
    Missing,
    /// A type that can be copied in pieces.
    Collection(Collection),
    /// Any other type (string, stream, ...): moves whole.
    Other,
}

impl KeyType {
    /// Reads a `TYPE` reply (`+hash\r\n`).
    fn parse(frame: &[u8]) -> KeyType {
        let name = frame.get(1..).unwrap_or_default().trim_ascii_end();
        match name {
            b"none" => KeyType::Missing,
            b"hash" => KeyType::Collection(Collection::Hash),
            b"set" => KeyType::Collection(Collection::Set),
            b"zset" => KeyType::Collection(Collection::SortedSet),
            b"list" => KeyType::Collection(Collection::List),
            _ => KeyType::Other,
        }
    }
}

/// A key type whose elements can be read and written a piece at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collection {
    Hash,
    Set,
    SortedSet,
    List,
}

impl Collection {
    /// The command that appends a piece on the target.
    fn add(self) -> &'static [u8] {
        match self {
            Collection::Hash => b"HSET",
            Collection::Set => b"SADD",
            Collection::SortedSet => b"ZADD",
            Collection::List => b"RPUSH",
        }
    }

    /// Where reading the key starts.
    fn start(self) -> Position {
        match self {
            Collection::Hash => Position::Scan(b"HSCAN", Bytes::from_static(b"0")),
            Collection::Set => Position::Scan(b"SSCAN", Bytes::from_static(b"0")),
            Collection::SortedSet => Position::Scan(b"ZSCAN", Bytes::from_static(b"0")),
            Collection::List => Position::Index(0),
        }
    }
}

/// Where the next piece of a big key starts on the source.
enum Position {
    /// A `*SCAN` command and its cursor.
    Scan(&'static [u8], Bytes),
    /// An `LRANGE` start index.
    Index(i64),
}

/// Elements per piece of a big key.
const PIECE: i64 = 1000;

fn encode(args: &[&[u8]]) -> BytesMut {
    let mut f = BytesMut::new();
    encode_command(args, &mut f);
    f
}

/// Copies a big hash, set, sorted set or list from the source (`conn`) to
/// `target` piece by piece (`HSCAN`/`SSCAN`/`ZSCAN`/`LRANGE` there, `HSET`/
/// `SADD`/`ZADD`/`RPUSH` here), then its expiry time, then unlinks it on
/// the source. The key is fenced: no command touches it meanwhile, so the
/// copy is exact. A copy cut short (a crash) is redone from scratch: the
/// target's partial copy is deleted first, and until then the key is still
/// whole on the source, where commands find and move it.
async fn copy_in_pieces(
    fences: &KeyFences,
    conn: &mut PooledConn,
    target: &Arc<Endpoint>,
    db: Db,
    key: &Bytes,
    timeout: Duration,
) -> Result<Copied, MigrateError> {
    let r = request(conn, &encode(&[b"TYPE", key]), 1, timeout).await?;
    let kind = match KeyType::parse(&r[0]) {
        KeyType::Missing => return Ok(Copied::Gone),
        KeyType::Other => return Ok(Copied::Whole),
        KeyType::Collection(kind) => kind,
    };
    let r = request(conn, &encode(&[b"PEXPIRETIME", key]), 1, timeout).await?;
    let expire_at = reply::integer(&r[0]).unwrap_or(-1);
    let mut out = target
        .dedicated(Wire {
            proto: Protocol::Resp2,
            db,
        })
        .await?;
    let addr = &target.state.addr;
    still_held(fences, key)?;
    on_target(&mut out, addr, "DEL", &[b"DEL", key], timeout).await?;
    let mut pieces = 0;
    let mut next = Some(kind.start());
    while let Some(at) = next {
        let elems;
        (elems, next) = read_piece(conn, key, at, timeout).await?;
        if !elems.is_empty() {
            still_held(fences, key)?;
            write_piece(&mut out, addr, key, kind, &elems, timeout).await?;
            pieces += 1;
        }
    }
    if expire_at > 0 {
        let at = expire_at.to_string();
        let args: &[&[u8]] = &[b"PEXPIREAT", key, at.as_bytes()];
        still_held(fences, key)?;
        on_target(&mut out, addr, "PEXPIREAT", args, timeout).await?;
    }
    still_held(fences, key)?;
    let r = request(conn, &encode(&[b"UNLINK", key]), 1, timeout).await?;
    if reply::is_error(&r[0]) {
        return Err(MigrateError::Refused {
            step: "UNLINK of a copied big key",
            addr: conn.addr().to_owned(),
            reason: reply::error_text(&r[0]).unwrap_or_default(),
        });
    }
    Ok(Copied::Pieces(pieces))
}

/// Reads one piece of a big key from the source: its elements (for a
/// sorted set, member and score pairs) and where the next piece starts
/// (`None` after the last).
async fn read_piece(
    conn: &mut PooledConn,
    key: &Bytes,
    at: Position,
    timeout: Duration,
) -> Result<(Vec<Bytes>, Option<Position>), MigrateError> {
    match at {
        Position::Index(start) => {
            let (a, b) = (start.to_string(), (start + PIECE - 1).to_string());
            let frame = encode(&[b"LRANGE", key, a.as_bytes(), b.as_bytes()]);
            let r = request(conn, &frame, 1, timeout).await?;
            let elems: Vec<Bytes> = reply::array_elements(&r[0])
                .ok()
                .flatten()
                .unwrap_or_default()
                .iter()
                .filter_map(reply::bulk)
                .collect();
            let n = elems.len() as i64;
            let next = (n >= PIECE).then_some(Position::Index(start + n));
            Ok((elems, next))
        }
        Position::Scan(command, cursor) => {
            let count = PIECE.to_string();
            let frame = encode(&[command, key, &cursor, b"COUNT", count.as_bytes()]);
            let r = request(conn, &frame, 1, timeout).await?;
            let (cursor, elems) = scan_reply(&r[0])?;
            let next = (cursor.as_ref() != b"0").then_some(Position::Scan(command, cursor));
            Ok((elems, next))
        }
    }
}

/// Appends one piece to the key's copy on the target.
async fn write_piece(
    out: &mut PooledConn,
    addr: &str,
    key: &Bytes,
    kind: Collection,
    elems: &[Bytes],
    timeout: Duration,
) -> Result<(), MigrateError> {
    let mut args: Vec<&[u8]> = Vec::with_capacity(elems.len() + 2);
    args.push(kind.add());
    args.push(key);
    if kind == Collection::SortedSet {
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
    on_target(out, addr, "copying a big key", &args, timeout).await
}

/// Before each write of a copy: whether this proxy still holds the key's
/// fence (in a fleet, its lease may have expired and another proxy may
/// have copied the key since).
pub(super) fn still_held(fences: &KeyFences, key: &Bytes) -> Result<(), MigrateError> {
    if fences.still_held(key) {
        Ok(())
    } else {
        Err(FenceError::LeaseLost.into())
    }
}

/// Runs one command on the target; its error reply is an error.
async fn on_target(
    out: &mut PooledConn,
    addr: &str,
    step: &'static str,
    args: &[&[u8]],
    timeout: Duration,
) -> Result<(), MigrateError> {
    let r = request(out, &encode(args), 1, timeout).await?;
    match r.iter().find(|f| reply::is_error(f)) {
        Some(e) => Err(MigrateError::Refused {
            step,
            addr: addr.to_owned(),
            reason: reply::error_text(e).unwrap_or_default(),
        }),
        None => Ok(()),
    }
}

/// `SCAN`-shaped reply (`[cursor, [elements]]`) as (cursor, elements).
pub fn scan_reply(frame: &Bytes) -> Result<(Bytes, Vec<Bytes>), MigrateError> {
    let bad = || MigrateError::Unexpected {
        command: "SCAN",
        reply: String::from_utf8_lossy(frame).into_owned(),
    };
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

    #[test]
    fn type_replies_read_as_key_types() {
        assert_eq!(KeyType::parse(b"+none\r\n"), KeyType::Missing);
        assert_eq!(
            KeyType::parse(b"+zset\r\n"),
            KeyType::Collection(Collection::SortedSet)
        );
        assert_eq!(
            KeyType::parse(b"+list\r\n"),
            KeyType::Collection(Collection::List)
        );
        assert_eq!(KeyType::parse(b"+string\r\n"), KeyType::Other);
        assert_eq!(KeyType::parse(b"+stream\r\n"), KeyType::Other);
        assert_eq!(KeyType::parse(b"-ERR oops\r\n"), KeyType::Other);
    }

    #[test]
    fn scan_replies_read_as_cursor_and_elements() {
        let frame = Bytes::from_static(b"*2\r\n$2\r\n17\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n");
        let (next, keys) = scan_reply(&frame).unwrap();
        assert_eq!(next.as_ref(), b"17");
        assert_eq!(
            keys,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        assert!(matches!(
            scan_reply(&Bytes::from_static(b"-ERR no\r\n")),
            Err(MigrateError::Unexpected {
                command: "SCAN",
                ..
            })
        ));
    }
}

//! Moving keys between Redis shards for a rebalance: the `MIGRATE` command
//! that a source primary runs (atomic there: the key is restored on the
//! target before it is deleted on the source), and how its reply reads.

use bytes::{Bytes, BytesMut};

use super::EndpointState;
use crate::protocol::{reply, request::encode_command};

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

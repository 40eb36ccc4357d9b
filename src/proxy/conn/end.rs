//! Why a client connection ends, and the write errors that say so.

use super::Closing;

/// Why the connection ends.
pub(super) enum End {
    /// Client hung up or sent QUIT: expected.
    Normal,
    /// Malformed frame: error sent, connection closed.
    Protocol,
    /// Socket error.
    Io(std::io::Error),
    /// Closed by a limit (idle timeout, slow reader); the reason is the metric label.
    Limit(&'static str),
    /// Closed by another client's `CLIENT KILL`.
    Killed,
}

/// A write error that closes the client for a limit (the metric label).
#[derive(Debug)]
pub(super) struct OverLimit(pub(super) &'static str);

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client closed: {} limit", self.0)
    }
}

impl std::error::Error for OverLimit {}

pub(super) fn over_limit(reason: &'static str) -> std::io::Error {
    std::io::Error::other(OverLimit(reason))
}

/// Marks the write error of a client that stopped reading its replies.
#[derive(Debug)]
pub(super) struct SlowReader;

impl std::fmt::Display for SlowReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client accepted no reply bytes within the write stall timeout")
    }
}

impl std::error::Error for SlowReader {}

impl From<Closing> for End {
    fn from(why: Closing) -> End {
        match why {
            Closing::Evicted => End::Limit("maxmemory_clients"),
            Closing::Killed => End::Killed,
        }
    }
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> End {
        if e.get_ref().is_some_and(|inner| inner.is::<SlowReader>()) {
            End::Limit("slow_reader")
        } else if let Some(OverLimit(reason)) = e.get_ref().and_then(|i| i.downcast_ref()) {
            if *reason == "killed" {
                End::Killed
            } else {
                End::Limit(reason)
            }
        } else {
            End::Io(e)
        }
    }
}

//! Bytes <-> RESP frames. Knows no commands.
//!
//! Framing is two-phase: find where a frame ends without allocating
//! ([`scan::frame_len`]), then slice it. "Incomplete" is `Ok(None)`, never an
//! error; only a malformed frame is an error (and closes the connection).

pub mod reply;
pub mod request;
pub mod scan;

pub use reply::{Protocol, Reply};
pub use request::{Limits, Request, parse_request};

/// A malformed frame. The connection that sent it cannot be resynchronised, so
/// the caller replies `-ERR Protocol error: ...` and closes it (as Redis does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

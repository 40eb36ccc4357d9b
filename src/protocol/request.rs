//! Client requests: RESP multibulk arrays and inline commands.
use bytes::{Bytes, BytesMut};

use super::ProtocolError;

/// Size limits applied while parsing a request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bulk_len: usize,
    pub max_args: usize,
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_args: 1024 * 1024,
            max_inline_len: 64 * 1024,
        }
    }
}

/// One parsed client request.
#[derive(Debug, Clone)]
pub struct Request {
    raw: Bytes,
    args: Vec<Bytes>,
}

impl Request {
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
    pub fn args(&self) -> &[Bytes] {
        &self.args
    }
}

pub fn parse_request(
    _buf: &mut BytesMut,
    _limits: &Limits,
) -> Result<Option<Request>, ProtocolError> {
    todo!()
}
impl Request {
    pub fn from_args(_args: Vec<Bytes>) -> Request {
        todo!()
    }
    pub fn name(&self) -> &[u8] {
        &self.args[0]
    }
}
pub fn encode_command(_args: &[&[u8]], _out: &mut BytesMut) {
    todo!()
}

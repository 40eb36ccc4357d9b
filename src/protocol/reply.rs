//! stub
use super::ProtocolError;
use bytes::{Bytes, BytesMut};
use std::borrow::Cow;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}
#[derive(Debug, Clone)]
pub enum Reply {
    Ok,
    Simple(Cow<'static, str>),
    Error(Cow<'static, str>),
    Int(i64),
    Bulk(Bytes),
    Nil,
    NilArray,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    Set(Vec<Reply>),
    Double(f64),
    Bool(bool),
    Verbatim(Bytes),
    Frame(Bytes),
}
impl Reply {
    pub fn encode(&self, _proto: Protocol, _out: &mut BytesMut) {
        todo!()
    }
    pub fn error(msg: impl Into<Cow<'static, str>>) -> Reply {
        Reply::Error(msg.into())
    }
}
pub fn array_elements(_frame: &Bytes) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    todo!()
}
pub fn integer(_frame: &[u8]) -> Option<i64> {
    todo!()
}
pub fn bulk(_frame: &Bytes) -> Option<Bytes> {
    todo!()
}
pub fn is_error(_frame: &[u8]) -> bool {
    todo!()
}
pub fn error_text(_frame: &[u8]) -> Option<String> {
    todo!()
}

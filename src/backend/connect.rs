//! Opening a backend connection: TCP connect with a timeout, then the
//! protocol handshake (`HELLO 3` for RESP3 connections).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::BackendError;
use crate::protocol::{Protocol, reply, scan};

/// Connects to `addr` and switches the connection to `proto`.
pub async fn connect(
    addr: &str,
    proto: Protocol,
    timeout: Duration,
) -> Result<TcpStream, BackendError> {
    let unavailable = |reason: String| BackendError::Unavailable {
        addr: addr.to_owned(),
        reason,
    };
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(unavailable(e.to_string())),
        Err(_) => {
            return Err(unavailable(format!(
                "connect timed out after {} ms",
                timeout.as_millis()
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    let mut stream = stream;
    if proto == Protocol::Resp3 {
        let handshake = async {
            stream
                .write_all(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
                .await?;
            read_one_frame(&mut stream).await
        };
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(frame)) if reply::is_error(&frame) => {
                let text = reply::error_text(&frame).unwrap_or_default();
                return Err(unavailable(format!("HELLO 3 refused: {text}")));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(unavailable(format!("handshake failed: {e}"))),
            Err(_) => return Err(unavailable("handshake timed out".to_owned())),
        }
    }
    Ok(stream)
}

/// Reads exactly one reply frame (used only during handshakes and health
/// checks, where nothing else is in flight).
pub async fn read_one_frame(stream: &mut TcpStream) -> std::io::Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match scan::frame_len(&buf) {
            Ok(Some(n)) => return Ok(buf.split_to(n)),
            Ok(None) => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ));
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

//! Opening a backend connection: TCP connect with a timeout, TLS when the
//! shard asks for it, then the handshake: `AUTH` (RESP2) or `HELLO 3 [AUTH]`
//! (RESP3) with the shard's credentials. Every backend connection (shared,
//! dedicated, health check) is opened here.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::BackendError;
use crate::protocol::request::encode_command;
use crate::protocol::{Protocol, reply, scan};
use crate::shardmap::Link;
use crate::tls::{BackendStream, MaybeTls};

/// Connects to `addr` as `link` says (TLS, credentials) and switches the
/// connection to `proto`.
pub async fn connect(
    addr: &str,
    link: &Link,
    proto: Protocol,
    timeout: Duration,
) -> Result<BackendStream, BackendError> {
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
    let mut stream = match &link.tls {
        None => MaybeTls::Plain(stream),
        Some(tls) => {
            let name = crate::tls::server_name(addr, tls.server_name.as_deref())
                .map_err(|e| unavailable(format!("TLS server name {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
                Ok(Ok(s)) => MaybeTls::Tls(Box::new(s)),
                Ok(Err(e)) => return Err(unavailable(format!("TLS handshake failed: {e}"))),
                Err(_) => return Err(unavailable("TLS handshake timed out".to_owned())),
            }
        }
    };
    let Some(hello) = handshake(link, proto) else {
        return Ok(stream);
    };
    let exchange = async {
        stream.write_all(&hello).await?;
        stream.flush().await?;
        read_one_frame(&mut stream).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(frame)) if reply::is_error(&frame) => {
            let text = reply::error_text(&frame).unwrap_or_default();
            let what = if link.auth.is_some() {
                "authentication failed"
            } else {
                "HELLO 3 refused"
            };
            Err(unavailable(format!("{what}: {text}")))
        }
        Ok(Ok(_)) => Ok(stream),
        Ok(Err(e)) => Err(unavailable(format!("handshake failed: {e}"))),
        Err(_) => Err(unavailable("handshake timed out".to_owned())),
    }
}

/// The first request on a new connection, if one is needed: `HELLO 3` with
/// `AUTH` when the shard has credentials, plain `AUTH` for RESP2.
fn handshake(link: &Link, proto: Protocol) -> Option<BytesMut> {
    let mut out = BytesMut::new();
    match (&link.auth, proto) {
        (None, Protocol::Resp2) => return None,
        (None, Protocol::Resp3) => encode_command(&[b"HELLO", b"3"], &mut out),
        (Some(a), Protocol::Resp3) => {
            let user = a.username.as_deref().unwrap_or("default");
            let args: [&[u8]; 5] = [
                b"HELLO",
                b"3",
                b"AUTH",
                user.as_bytes(),
                a.password.as_bytes(),
            ];
            encode_command(&args, &mut out);
        }
        (Some(a), Protocol::Resp2) => match &a.username {
            Some(user) => {
                encode_command(&[b"AUTH", user.as_bytes(), a.password.as_bytes()], &mut out)
            }
            None => encode_command(&[b"AUTH", a.password.as_bytes()], &mut out),
        },
    }
    Some(out)
}

/// Reads exactly one reply frame (used only during handshakes and health
/// checks, where nothing else is in flight).
pub async fn read_one_frame<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<BytesMut> {
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

//! Opening a backend connection: TCP connect with a timeout, TLS when the
//! shard asks for it, then the handshake: `AUTH` (RESP2) or `HELLO 3 [AUTH]`
//! (RESP3) with the shard's credentials. Every backend connection (shared,
//! dedicated, health check) is opened here.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Db, Wire};
use crate::error::BackendError;
use crate::protocol::request::encode_command;
use crate::protocol::{Protocol, reply, scan};
use crate::shardmap::Link;
use crate::tls::{BackendStream, MaybeTls};

/// Connects to `addr` as `link` says (TLS, credentials) and switches the
/// connection to `proto` (in database 0).
pub async fn connect(
    addr: &str,
    link: &Link,
    proto: Protocol,
    timeout: Duration,
) -> Result<BackendStream, BackendError> {
    connect_wire(addr, link, Wire::from(proto), timeout).await
}

/// [`connect`], then `SELECT` of `wire.db` when it is not database 0 (sent
/// in the same write as the handshake). A shard that refuses the database
/// answers [`BackendError::NoSuchDb`]: it is up, and its breaker must not
/// count the refusal.
pub async fn connect_wire(
    addr: &str,
    link: &Link,
    wire: Wire,
    timeout: Duration,
) -> Result<BackendStream, BackendError> {
    let proto = wire.proto;
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
    let hello = handshake(link, proto);
    let select = (wire.db != Db(0)).then(|| {
        let mut out = BytesMut::new();
        let n = wire.db.0.to_string();
        encode_command(&[b"SELECT", n.as_bytes()], &mut out);
        out
    });
    if hello.is_none() && select.is_none() {
        return Ok(stream);
    }
    let exchange = async {
        let mut out = hello.clone().unwrap_or_default();
        out.extend_from_slice(select.as_deref().unwrap_or_default());
        stream.write_all(&out).await?;
        stream.flush().await?;
        // One buffer for both replies: a read may carry both.
        let mut buf = BytesMut::with_capacity(1024);
        let first = match hello {
            Some(_) => Some(read_frame_from(&mut stream, &mut buf).await?),
            None => None,
        };
        let selected = match select {
            Some(_) => Some(read_frame_from(&mut stream, &mut buf).await?),
            None => None,
        };
        Ok::<_, std::io::Error>((first, selected))
    };
    let frame = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((first, Some(selected)))) if reply::is_error(&selected) => {
            // Only when the handshake itself passed: else its error says more.
            if first.as_ref().is_none_or(|f| !reply::is_error(f)) {
                return Err(BackendError::NoSuchDb {
                    addr: addr.to_owned(),
                    db: wire.db.0,
                    reason: reply::error_text(&selected).unwrap_or_default(),
                });
            }
            first
        }
        Ok(Ok((first, _))) => first,
        Ok(Err(e)) => return Err(unavailable(format!("handshake failed: {e}"))),
        Err(_) => return Err(unavailable("handshake timed out".to_owned())),
    };
    match frame {
        None => Ok(stream),
        Some(frame) if reply::is_error(&frame) => {
            let text = reply::error_text(&frame).unwrap_or_default();
            let what = if link.auth.is_some() {
                "authentication failed"
            } else {
                "HELLO 3 refused"
            };
            Err(unavailable(format!("{what}: {text}")))
        }
        Some(_) => Ok(stream),
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
    read_frame_from(stream, &mut BytesMut::with_capacity(1024)).await
}

/// Reads the next reply frame, keeping in `buf` what was read past it.
async fn read_frame_from<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> std::io::Result<BytesMut> {
    loop {
        match scan::frame_len(buf) {
            Ok(Some(n)) => return Ok(buf.split_to(n)),
            Ok(None) => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ));
            }
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

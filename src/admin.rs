//! The admin listener: a separate port speaking RESP, so `redis-cli -p
//! ADMIN_PORT -a PASSWORD` works, with its own password (never a client
//! user's). Commands: `AUTH`, `PING`, `HELP`, `STATUS`, `RELOAD`, `QUIT`.
//!
//! It is the control path beside the data path: it reads the routing table
//! and backends the clients use and, through [`Reloader`], is (with SIGHUP)
//! the only writer of the map. Online rebalancing will add its commands here.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::app::Reloader;
use crate::auth::Auth;
use crate::protocol::{Limits, Protocol, Reply, parse_request};

/// Requests on the admin port are small: tight limits.
const LIMITS: Limits = Limits {
    max_bulk_len: 64 * 1024,
    max_args: 64,
    max_inline_len: 64 * 1024,
};

const HELP: &[&str] = &[
    "AUTH <password> | AUTH <user> <password> -- log in (the admin password)",
    "PING -- PONG",
    "STATUS -- map epoch, shards and the health of every endpoint",
    "RELOAD -- re-read the map file and apply what changes without moving keys (as SIGHUP)",
    "QUIT -- close the connection",
];

/// Serves admin connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    reloader: Reloader,
    auth: Arc<Auth>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (reloader, auth) = (reloader.clone(), auth.clone());
                    tokio::spawn(async move {
                        if let Err(e) = session(stream, peer, &reloader, &auth).await {
                            tracing::debug!(%peer, error = %e, "admin connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
    }
}

async fn session(
    mut stream: TcpStream,
    peer: SocketAddr,
    reloader: &Reloader,
    auth: &Auth,
) -> std::io::Result<()> {
    let mut rbuf = BytesMut::with_capacity(1024);
    let mut authed = false;
    loop {
        let req = loop {
            match parse_request(&mut rbuf, &LIMITS) {
                Ok(Some(r)) => break r,
                Ok(None) => {
                    if stream.read_buf(&mut rbuf).await? == 0 {
                        return Ok(());
                    }
                }
                Err(e) => {
                    let mut out = BytesMut::new();
                    Reply::error(format!("ERR {e}")).encode(Protocol::Resp2, &mut out);
                    stream.write_all(&out).await?;
                    return Ok(());
                }
            }
        };
        let args = req.args();
        let name = String::from_utf8_lossy(req.name()).to_ascii_uppercase();
        let (reply, quit) = match name.as_str() {
            "AUTH" => (login(args, auth, peer, &mut authed), false),
            "QUIT" => (Reply::Ok, true),
            "PING" => (Reply::Simple("PONG".into()), false),
            "HELP" => (help(), false),
            // redis-cli asks for command docs when it starts interactively.
            "COMMAND" => (Reply::Array(Vec::new()), false),
            _ if !authed => (Reply::error("NOAUTH Authentication required."), false),
            "STATUS" => (status(reloader), false),
            "RELOAD" => (reload(reloader, peer).await, false),
            _ => (
                Reply::error(format!(
                    "ERR unknown admin command '{}'. Try HELP.",
                    String::from_utf8_lossy(req.name())
                )),
                false,
            ),
        };
        let ok = !matches!(reply, Reply::Error(_));
        reloader.metrics().admin_command(&name, ok);
        let mut out = BytesMut::new();
        reply.encode(Protocol::Resp2, &mut out);
        stream.write_all(&out).await?;
        if quit {
            return Ok(());
        }
    }
}

fn login(args: &[Bytes], auth: &Auth, peer: SocketAddr, authed: &mut bool) -> Reply {
    let (user, password): (&[u8], &[u8]) = match args {
        [_, pw] => (b"default", pw),
        [_, user, pw] => (user, pw),
        _ => return Reply::error("ERR syntax error"),
    };
    if auth.authenticate(user, password).is_some() {
        *authed = true;
        tracing::info!(%peer, "admin login");
        Reply::Ok
    } else {
        tracing::warn!(%peer, "admin login refused: wrong password");
        Reply::error("WRONGPASS invalid username-password pair or user is disabled.")
    }
}

fn help() -> Reply {
    Reply::Array(HELP.iter().map(|l| Reply::Simple((*l).into())).collect())
}

fn status(reloader: &Reloader) -> Reply {
    Reply::Verbatim(Bytes::from(reloader.status_text()))
}

async fn reload(reloader: &Reloader, peer: SocketAddr) -> Reply {
    tracing::info!(%peer, "map reload requested on the admin port");
    match reloader.reload().await {
        Ok(s) => Reply::Simple(
            format!(
                "OK epoch={} kept={} added={} removed={}",
                s.epoch, s.kept, s.added, s.removed
            )
            .into(),
        ),
        Err(e) => Reply::error(format!("ERR map reload refused: {e}")),
    }
}

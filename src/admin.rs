//! The admin listener: a separate port speaking RESP, so `redis-cli -p
//! ADMIN_PORT -a PASSWORD` works, with its own password (never a client
//! user's). Commands: `AUTH`, `PING`, `HELP`, `STATUS`, `RELOAD`, `QUIT`,
//! and online rebalancing: `PLAN`, `REBALANCE`, `PROGRESS`, `PAUSE`,
//! `RESUME`, `THROTTLE`.
//!
//! It is the control path beside the data path: it reads the routing table
//! and backends the clients use and, through [`Reloader`] and
//! [`Rebalancer`](crate::rebalance::Rebalancer), is (with SIGHUP) the only
//! writer of the map.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::auth::Auth;
use crate::control::Reloader;
use crate::protocol::{Limits, Protocol, Reply, parse_request};
use crate::rebalance::RebalanceError;

/// Requests on the admin port are small (a shard map is the biggest):
/// tight limits.
const LIMITS: Limits = Limits {
    max_bulk_len: 4 * 1024 * 1024,
    max_args: 64,
    max_inline_len: 64 * 1024,
};

const HELP: &[&str] = &[
    "AUTH <password> | AUTH <user> <password> -- log in (the admin password)",
    "PING -- PONG",
    "STATUS -- map epoch, shards and the health of every endpoint",
    "RELOAD -- re-read the map file and apply what changes without moving keys (as SIGHUP)",
    "PLAN <map-yaml> | PLAN FILE <path> -- dry run: slots, keys and bytes a new map would move",
    "REBALANCE <map-yaml> | REBALANCE FILE <path> [THROTTLE <keys-per-second>] -- start moving to a new map, online (throttled from its first key)",
    "PROGRESS -- the rebalance's progress as field/value pairs (STATUS shows it too)",
    "PAUSE | RESUME -- pause or resume the rebalance's background mover",
    "THROTTLE <keys-per-second> -- limit the mover (0: no limit)",
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
    let mut failures = 0u32;
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
            "AUTH" => {
                let reply = login(args, auth, peer, &mut authed, &mut failures);
                if failures > 0 && !authed {
                    // Guessing is slowed to one attempt per second after
                    // the first few, and the connection closes after
                    // ADMIN_MAX_FAILURES.
                    if failures > 2 {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
                (reply, failures >= ADMIN_MAX_FAILURES)
            }
            "QUIT" => (Reply::Ok, true),
            "PING" => (Reply::Simple("PONG".into()), false),
            "HELP" => (help(), false),
            // redis-cli asks for command docs when it starts interactively.
            "COMMAND" => (Reply::Array(Vec::new()), false),
            _ if !authed => (Reply::error("NOAUTH Authentication required."), false),
            "STATUS" => (status(reloader), false),
            "RELOAD" => (reload(reloader, peer).await, false),
            "PLAN" => (plan(reloader, args).await, false),
            "REBALANCE" => (rebalance(reloader, args, peer).await, false),
            "PROGRESS" => (progress(reloader), false),
            "PAUSE" => (done(reloader.rebalancer().pause().await), false),
            "RESUME" => (done(reloader.rebalancer().resume_mover().await), false),
            "THROTTLE" => (throttle(reloader, args).await, false),
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

/// Failed logins after which an admin connection is closed.
const ADMIN_MAX_FAILURES: u32 = 5;

fn login(
    args: &[Bytes],
    auth: &Auth,
    peer: SocketAddr,
    authed: &mut bool,
    failures: &mut u32,
) -> Reply {
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
        *failures += 1;
        // One line per connection, and one when it is closed.
        if *failures == 1 || *failures == ADMIN_MAX_FAILURES {
            tracing::warn!(%peer, failures = *failures, closing = *failures >= ADMIN_MAX_FAILURES, "admin login refused: wrong password");
        }
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

/// The map text of `PLAN`/`REBALANCE`: inline, or `FILE <path>` read by
/// the proxy.
fn map_text(args: &[Bytes]) -> Result<String, Reply> {
    match args {
        [_, file, path] if file.eq_ignore_ascii_case(b"FILE") => {
            let path = String::from_utf8_lossy(path).into_owned();
            std::fs::read_to_string(&path)
                .map_err(|e| Reply::error(format!("ERR cannot read {path}: {e}")))
        }
        [_, yaml] => String::from_utf8(yaml.to_vec())
            .map_err(|_| Reply::error("ERR the map is not valid UTF-8")),
        [name, ..] => Err(Reply::error(format!(
            "ERR wrong number of arguments for '{}': give the map YAML, or FILE <path>",
            String::from_utf8_lossy(name).to_lowercase()
        ))),
        [] => Err(Reply::error("ERR empty command")),
    }
}

async fn plan(reloader: &Reloader, args: &[Bytes]) -> Reply {
    let text = match map_text(args) {
        Ok(t) => t,
        Err(e) => return e,
    };
    match reloader.rebalancer().plan(&text).await {
        Ok(lines) => Reply::Array(lines.into_iter().map(|l| Reply::Simple(l.into())).collect()),
        Err(e) => Reply::error(format!("ERR plan refused: {}", one_line(&e.to_string()))),
    }
}

async fn rebalance(reloader: &Reloader, args: &[Bytes], peer: SocketAddr) -> Reply {
    // A trailing `THROTTLE <n>` limits the mover from its first batch.
    let (args, throttle) = match args {
        [head @ .., word, n] if head.len() >= 2 && word.eq_ignore_ascii_case(b"THROTTLE") => {
            match std::str::from_utf8(n)
                .ok()
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(n) => (head, n),
                None => {
                    return Reply::error(
                        "ERR THROTTLE takes keys per second: a whole number (0: no limit)",
                    );
                }
            }
        }
        _ => (args, 0),
    };
    let text = match map_text(args) {
        Ok(t) => t,
        Err(e) => return e,
    };
    tracing::info!(%peer, throttle, "rebalance requested on the admin port");
    match reloader.rebalancer().start(&text, throttle).await {
        Ok(summary) => Reply::Simple(summary.into()),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "rebalance refused");
            Reply::error(format!(
                "ERR rebalance refused: {}",
                one_line(&e.to_string())
            ))
        }
    }
}

/// Error replies are one line.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

fn progress(reloader: &Reloader) -> Reply {
    match reloader.rebalancer().progress() {
        None => Reply::Array(vec![
            Reply::Bulk(Bytes::from_static(b"state")),
            Reply::Bulk(Bytes::from_static(b"none")),
        ]),
        Some(p) => Reply::Array(
            p.fields()
                .into_iter()
                .flat_map(|(k, v)| [Reply::Bulk(Bytes::from(k)), Reply::Bulk(Bytes::from(v))])
                .collect(),
        ),
    }
}

fn done(r: Result<(), RebalanceError>) -> Reply {
    match r {
        Ok(()) => Reply::Ok,
        Err(e) => Reply::error(format!("ERR {e}")),
    }
}

async fn throttle(reloader: &Reloader, args: &[Bytes]) -> Reply {
    let n = match args {
        [_, n] => std::str::from_utf8(n)
            .ok()
            .and_then(|n| n.parse::<u64>().ok()),
        _ => None,
    };
    match n {
        Some(n) => done(reloader.rebalancer().throttle(n).await),
        None => Reply::error("ERR THROTTLE takes one argument: keys per second (0: no limit)"),
    }
}

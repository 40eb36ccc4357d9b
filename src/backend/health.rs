//! Health checks: every endpoint is pinged on its own connection at the map's
//! interval; a replica must also report its link to the primary up and recent
//! (`master_link_status:up`, `master_last_io_seconds_ago` within the map's
//! `max_replica_lag`). The round trip feeds the endpoint's latency estimate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::connect::{connect, read_one_frame};
use super::{Endpoint, EndpointState, Role};
use crate::protocol::{Protocol, reply};
use crate::tls::BackendStream;

/// Starts one checker task per endpoint; they stop when `shutdown` fires.
pub fn spawn_all(endpoints: &[Arc<Endpoint>], shutdown: tokio::sync::watch::Receiver<bool>) {
    for ep in endpoints {
        if let Some(pg) = ep.postgres() {
            spawn_postgres(ep.state.clone(), pg.pool().clone(), shutdown.clone());
            continue;
        }
        let state = ep.state.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut conn: Option<BackendStream> = None;
            while !state.is_retired() {
                check_once(&state, &mut conn).await;
                tokio::select! {
                    _ = tokio::time::sleep(state.options.health_check_interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
    }
}

/// A PostgreSQL endpoint's checker: [`crate::backend::pg::check_health`] on its pool.
fn spawn_postgres(
    state: Arc<EndpointState>,
    pool: sqlx::PgPool,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        while !state.is_retired() {
            let started = Instant::now();
            let limit = state
                .options
                .connect_timeout
                .max(Duration::from_millis(100));
            let verdict =
                tokio::time::timeout(limit, crate::backend::pg::check_health(&state, &pool))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "no answer to health check within {} ms",
                            limit.as_millis()
                        ))
                    });
            match verdict {
                Ok(()) => {
                    state.record_latency(started.elapsed().as_micros() as u64);
                    state.set_healthy(true, "");
                }
                Err(why) => state.set_healthy(false, &why),
            }
            tokio::select! {
                _ = tokio::time::sleep(state.options.health_check_interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    });
}

async fn check_once(state: &EndpointState, conn: &mut Option<BackendStream>) {
    let timeout = state
        .options
        .connect_timeout
        .max(Duration::from_millis(100));
    if conn.is_none() {
        match connect(&state.addr, &state.link, Protocol::Resp2, timeout).await {
            Ok(c) => *conn = Some(c),
            Err(e) => {
                state.set_healthy(false, &e.to_string());
                return;
            }
        }
    }
    let Some(stream) = conn.as_mut() else { return };
    let started = Instant::now();
    let verdict = match tokio::time::timeout(timeout, probe(stream, state)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => Err(format!("health check failed: {e}")),
        Err(_) => Err(format!(
            "no answer to health check within {} ms",
            timeout.as_millis()
        )),
    };
    match verdict {
        Ok(()) => {
            state.record_latency(started.elapsed().as_micros() as u64);
            state.set_healthy(true, "");
        }
        Err(why) => {
            *conn = None;
            state.set_healthy(false, &why);
        }
    }
}

/// PING (primaries) or INFO replication (replicas).
async fn probe(
    stream: &mut BackendStream,
    state: &EndpointState,
) -> std::io::Result<Result<(), String>> {
    if state.role == Role::Primary {
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
        stream.flush().await?;
        let frame = read_one_frame(stream).await?;
        if reply::is_error(&frame) {
            return Ok(Err(reply::error_text(&frame).unwrap_or_default()));
        }
        return Ok(Ok(()));
    }
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n")
        .await?;
    stream.flush().await?;
    let frame = read_one_frame(stream).await?.freeze();
    let Some(text) = reply::bulk(&frame) else {
        return Ok(Err(
            reply::error_text(&frame).unwrap_or_else(|| "unexpected INFO reply".to_owned())
        ));
    };
    let text = String::from_utf8_lossy(&text);
    if let Some(secs) =
        info_field(&text, "master_last_io_seconds_ago").and_then(|v| v.parse::<f64>().ok())
    {
        state.metrics.replica_lag_seconds(secs);
    }
    Ok(replica_verdict(&text, state.options.max_replica_lag))
}

/// The value of `name` in INFO text (`name:value` lines).
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Whether `INFO replication` text shows a replica in sync.
pub fn replica_verdict(info: &str, max_lag: Duration) -> Result<(), String> {
    let field = |name: &str| info_field(info, name);
    if field("role") != Some("slave") {
        return Err("not a replica (role is not slave)".to_owned());
    }
    if field("master_link_status") != Some("up") {
        return Err("replication link is down".to_owned());
    }
    if field("master_sync_in_progress") == Some("1") {
        return Err("initial sync in progress".to_owned());
    }
    let last_io: u64 = field("master_last_io_seconds_ago")
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    if Duration::from_secs(last_io) > max_lag {
        return Err(format!(
            "replica lags: last contact with primary {last_io} s ago"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_verdicts() {
        let lag = Duration::from_secs(10);
        let ok = "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\nmaster_last_io_seconds_ago:1\r\nmaster_sync_in_progress:0\r\n";
        assert_eq!(replica_verdict(ok, lag), Ok(()));
        let down = ok.replace("link_status:up", "link_status:down");
        assert!(
            replica_verdict(&down, lag)
                .unwrap_err()
                .contains("link is down")
        );
        let old = ok.replace("seconds_ago:1", "seconds_ago:60");
        assert!(replica_verdict(&old, lag).unwrap_err().contains("lags"));
        assert!(replica_verdict("role:master\r\n", lag).is_err());
    }
}

//! Health checks: every endpoint is pinged on its own connection at the map's
//! interval; a replica must also report its link to the primary up and recent
//! (`master_link_status:up`, `master_last_io_seconds_ago` within the map's
//! `max_replica_lag`) and its applied writes no older than `max_replica_lag`
//! by its primary's replication offsets (see [`super::lag`]). The round trip
//! feeds the endpoint's latency estimate.
//!
//! The verdict drives the endpoint's circuit breaker too: an endpoint that
//! does not answer (or cannot be reached) opens it, so new requests fail
//! fast at once instead of queueing until their own command timeout, and an
//! endpoint that answers again closes it, so requests stop failing as soon
//! as it is back rather than after the breaker's next probe.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::connect::{connect, read_one_frame};
use super::{Endpoint, EndpointState, Role};
use crate::error::{BackendError, Unhealthy};
use crate::protocol::{Protocol, reply};
use crate::tls::BackendStream;

/// Health checks in a row without an answer after which the endpoint's
/// breaker opens.
const HANG_CHECKS: u32 = 2;

/// Starts one checker task per endpoint; they stop when `shutdown` fires.
pub fn spawn_all(endpoints: &[Arc<Endpoint>], shutdown: tokio::sync::watch::Receiver<bool>) {
    spawn_probers(endpoints, &shutdown);
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

/// The least time between the starts of two on-demand position probes of
/// one endpoint.
const PROBE_GAP: Duration = Duration::from_millis(1);

/// Starts the on-demand replication-position prober of every endpoint
/// whose map turns `options.read_your_writes` on (see
/// [`super::lag::Positions`]); they stop when `shutdown` fires or the
/// endpoint is retired.
fn spawn_probers(endpoints: &[Arc<Endpoint>], shutdown: &tokio::sync::watch::Receiver<bool>) {
    for ep in endpoints {
        if !ep.state.options.read_your_writes {
            continue;
        }
        let state = ep.state.clone();
        let pg = ep.postgres().map(|pg| pg.pool().clone());
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut conn: Option<BackendStream> = None;
            while !state.is_retired() {
                tokio::select! {
                    _ = state.positions.wanted() => {}
                    // Looks again whether a reload retired the endpoint.
                    _ = tokio::time::sleep(state.options.health_check_interval) => continue,
                    _ = shutdown.changed() => return,
                }
                state.metrics.position_probe();
                let started = tokio::time::Instant::now();
                let ok = match &pg {
                    Some(pool) => crate::backend::pg::probe_position(&state, pool).await,
                    None => probe_position(&state, &mut conn).await,
                };
                if !ok {
                    // Down or refusing: the health check says so; reads
                    // that wait go to the primary meanwhile. Do not spin.
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Back to back at most one per PROBE_GAP: a replica that
                // stays behind for a while, with clients reading, is not
                // asked thousands of times a second.
                tokio::time::sleep_until(started + PROBE_GAP).await;
            }
        });
    }
}

/// One on-demand position probe of a Redis endpoint on the prober's own
/// connection (made on first use): `INFO replication`, whose
/// `master_repl_offset` (primary) or `slave_repl_offset` (replica) goes to
/// the endpoint's positions. Whether it got one.
async fn probe_position(state: &EndpointState, conn: &mut Option<BackendStream>) -> bool {
    let timeout = state
        .options
        .connect_timeout
        .max(Duration::from_millis(100));
    if conn.is_none() {
        match connect(&state.addr, &state.link, Protocol::Resp2, timeout).await {
            Ok(c) => *conn = Some(c),
            Err(_) => return false,
        }
    }
    let Some(stream) = conn.as_mut() else {
        return false;
    };
    let sent = Instant::now();
    let Some(text) = ask_info(
        stream,
        b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n",
        timeout,
    )
    .await
    else {
        return false;
    };
    let field = match state.role {
        Role::Primary => "master_repl_offset",
        Role::Replica => "slave_repl_offset",
    };
    let Some(position) = info_field(&text, field).and_then(|v| v.parse::<u64>().ok()) else {
        return false;
    };
    match state.role {
        Role::Primary => state.positions.record(sent, position),
        Role::Replica => state.positions.set_applied(position),
    }
    true
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
                    .unwrap_or(Err(Unhealthy::NoAnswer {
                        millis: limit.as_millis() as u64,
                    }));
            match verdict {
                Ok(()) => {
                    state.record_latency(started.elapsed().as_micros() as u64);
                    state.set_healthy(true, "");
                }
                Err(why) => state.set_healthy(false, &why.to_string()),
            }
            tokio::select! {
                _ = tokio::time::sleep(state.options.health_check_interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    });
}

/// Keeps the `redis_version` of `INFO server` (asked once per health
/// connection) in the endpoint's state; a failure leaves it as it was
/// (the check that follows judges the connection).
async fn record_version(state: &EndpointState, stream: &mut BackendStream, timeout: Duration) {
    let info = ask_info(stream, b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n", timeout).await;
    if let Some(v) = info.as_deref().and_then(|t| info_field(t, "redis_version")) {
        state.version.store(Some(Arc::new(v.to_owned())));
    }
}

/// Sends one `INFO` request (`frame`) on `stream` and reads its text, all
/// within `timeout`; `None` if anything failed.
async fn ask_info(stream: &mut BackendStream, frame: &[u8], timeout: Duration) -> Option<String> {
    let asked = async {
        stream.write_all(frame).await?;
        stream.flush().await?;
        read_one_frame(stream).await
    };
    let frame = tokio::time::timeout(timeout, asked).await.ok()?.ok()?;
    let text = reply::bulk(&frame.freeze())?;
    Some(String::from_utf8_lossy(&text).into_owned())
}

async fn check_once(state: &EndpointState, conn: &mut Option<BackendStream>) {
    let timeout = state
        .options
        .connect_timeout
        .max(Duration::from_millis(100));
    if conn.is_none() {
        match connect(&state.addr, &state.link, Protocol::Resp2, timeout).await {
            Ok(mut c) => {
                record_version(state, &mut c, timeout).await;
                *conn = Some(c);
            }
            Err(e) => {
                state.set_healthy(false, &e.to_string());
                // Refused or unreachable: requests would only wait for the
                // same failure. A connect that timed out counts like a
                // check without an answer (the host may only be busy).
                let timed_out = matches!(&e, BackendError::Unavailable { reason, .. } if reason.contains("timed out"));
                if !timed_out
                    || state.health_timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= HANG_CHECKS
                {
                    state.breaker.failure(&e, &state.addr, &state.metrics);
                }
                return;
            }
        }
    }
    let Some(stream) = conn.as_mut() else { return };
    let started = Instant::now();
    let verdict = match tokio::time::timeout(timeout, probe(stream, state)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            let err = BackendError::ConnectionLost {
                addr: state.addr.clone(),
                reason: format!("health check failed: {e}"),
            };
            state.breaker.failure(&err, &state.addr, &state.metrics);
            Err(Unhealthy::Failed(e.to_string()))
        }
        Err(_) => {
            // No answer: the endpoint hangs, or is busy (a long command, a
            // starved host) beyond the connect timeout. After two such
            // checks in a row, new requests fail fast instead of queueing
            // behind it; one slow answer alone does not fail clients.
            // Requests already sent keep their command timeout (a long
            // command and a hang look the same from here).
            let err = BackendError::Timeout {
                addr: state.addr.clone(),
                millis: timeout.as_millis() as u64,
            };
            if state.health_timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= HANG_CHECKS {
                state.breaker.failure(&err, &state.addr, &state.metrics);
            }
            Err(Unhealthy::NoAnswer {
                millis: timeout.as_millis() as u64,
            })
        }
    };
    if !matches!(verdict, Err(Unhealthy::NoAnswer { .. })) {
        state.health_timeouts.store(0, Ordering::Relaxed);
    }
    match verdict {
        Ok(()) => {
            state.record_latency(started.elapsed().as_micros() as u64);
            state.set_healthy(true, "");
            // It answers: requests need not wait for the breaker's own probe.
            state.breaker.success(&state.addr, &state.metrics);
        }
        Err(why) => {
            *conn = None;
            state.set_healthy(false, &why.to_string());
        }
    }
}

/// PING and INFO replication (primaries: the offset goes to their
/// [`super::lag::OffsetLog`]), or INFO replication (replicas: judged against their
/// primary's log).
async fn probe(
    stream: &mut BackendStream,
    state: &EndpointState,
) -> std::io::Result<Result<(), Unhealthy>> {
    let sent = Instant::now();
    if state.role == Role::Primary {
        // One round trip (the latency estimate compares endpoints).
        stream
            .write_all(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n")
            .await?;
        stream.flush().await?;
        let [pong, info] = read_two_frames(stream).await?;
        if reply::is_error(&pong) {
            return Ok(Err(Unhealthy::ErrorReply(
                reply::error_text(&pong).unwrap_or_default(),
            )));
        }
        if let Some(offset) = reply::bulk(&info).and_then(|t| {
            info_field(&String::from_utf8_lossy(&t), "master_repl_offset")?
                .parse()
                .ok()
        }) {
            state
                .offsets
                .record(Instant::now(), offset, state.options.max_replica_lag * 2);
            state.positions.record(sent, offset);
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
            reply::error_text(&frame).map_or(Unhealthy::UnexpectedInfo, Unhealthy::ErrorReply)
        ));
    };
    let text = String::from_utf8_lossy(&text);
    let applied = info_field(&text, "slave_repl_offset").and_then(|v| v.parse::<u64>().ok());
    if let Some(applied) = applied {
        state.positions.set_applied(applied);
    }
    let behind = applied.and_then(|applied| {
        let log = state.primary_offsets.load_full()?;
        Some(log.lag(applied, Instant::now()))
    });
    // shardgate_replica_lag_seconds: by replication offsets when the
    // primary's log can tell, else the time since the last contact.
    let lag = behind.map(|d| d.as_secs_f64()).or_else(|| {
        info_field(&text, "master_last_io_seconds_ago").and_then(|v| v.parse::<f64>().ok())
    });
    if let Some(secs) = lag {
        state.metrics.replica_lag_seconds(secs);
    }
    Ok(replica_verdict(
        &text,
        state.options.max_replica_lag,
        behind,
    ))
}

/// The next two reply frames on `stream`.
async fn read_two_frames(stream: &mut BackendStream) -> std::io::Result<[bytes::Bytes; 2]> {
    use tokio::io::AsyncReadExt;
    let mut buf = bytes::BytesMut::with_capacity(2048);
    let mut frames = Vec::with_capacity(2);
    while frames.len() < 2 {
        match crate::protocol::scan::frame_len(&buf) {
            Ok(Some(n)) => frames.push(buf.split_to(n).freeze()),
            Ok(None) => {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ));
            }
        }
    }
    let info = frames.pop().unwrap_or_default();
    let pong = frames.pop().unwrap_or_default();
    Ok([pong, info])
}

/// The value of `name` in INFO text (`name:value` lines).
fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Whether `INFO replication` text shows a replica in sync: link up, no
/// sync running, recent contact, and (when known) applied writes no older
/// than `max_lag` by its primary's offsets (`behind`, see [`super::lag`]).
pub fn replica_verdict(
    info: &str,
    max_lag: Duration,
    behind: Option<Duration>,
) -> Result<(), Unhealthy> {
    let field = |name: &str| info_field(info, name);
    if field("role") != Some("slave") {
        return Err(Unhealthy::NotReplica);
    }
    if field("master_link_status") != Some("up") {
        return Err(Unhealthy::LinkDown);
    }
    if field("master_sync_in_progress") == Some("1") {
        return Err(Unhealthy::Syncing);
    }
    let last_io: u64 = field("master_last_io_seconds_ago")
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    if Duration::from_secs(last_io) > max_lag {
        return Err(Unhealthy::NoContact { secs: last_io });
    }
    if let Some(behind) = behind
        && behind > max_lag
    {
        return Err(Unhealthy::BehindOffsets {
            millis: behind.as_millis(),
            applied: field("slave_repl_offset").unwrap_or("?").to_owned(),
        });
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
        assert_eq!(replica_verdict(ok, lag, None), Ok(()));
        assert_eq!(
            replica_verdict(ok, lag, Some(Duration::from_secs(9))),
            Ok(())
        );
        let down = ok.replace("link_status:up", "link_status:down");
        assert_eq!(replica_verdict(&down, lag, None), Err(Unhealthy::LinkDown));
        let old = ok.replace("seconds_ago:1", "seconds_ago:60");
        assert_eq!(
            replica_verdict(&old, lag, None),
            Err(Unhealthy::NoContact { secs: 60 })
        );
        // Recent contact, but its applied writes are 11 s old.
        let behind = replica_verdict(ok, lag, Some(Duration::from_secs(11))).unwrap_err();
        assert!(behind.to_string().contains("11000 ms behind"), "{behind}");
        assert!(replica_verdict("role:master\r\n", lag, None).is_err());
    }
}

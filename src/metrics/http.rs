//! The metrics listener, over plain HTTP/1.1 (one request per connection):
//!
//! * `GET /metrics`: the exporter's metrics, the [`hot`] ones and the
//!   `process_*` ones (CPU, memory, file descriptors, start time), in the
//!   Prometheus text format;
//! * `GET /healthz`: 200 while the process runs (liveness);
//! * `GET /readyz`: 200 once the map is loaded and the proxy's readiness
//!   check passes (see [`Readiness`]), else 503 with the reason;
//! * other paths 404, other methods 405. A request head larger than 8 KiB
//!   or slower than 5 s is dropped.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::hot;

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the exporter folds recorded histogram samples into its buckets
/// (what its own listener would do).
const UPKEEP: Duration = Duration::from_secs(5);

/// The check behind `/readyz`: `Ok(status)` when ready, `Err(why)` when
/// not. Set once by `app` when the proxy has started (the listener opens
/// before, and answers 503 until then).
pub type ReadyCheck = Box<dyn Fn() -> Result<String, NotReady> + Send + Sync>;

/// Why `/readyz` answers 503. `status` is the line a ready proxy answers
/// (map epoch, healthy primaries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("starting: the map is not loaded yet")]
    Starting,
    /// A fleet member that may have lost its etcd lease.
    #[error("{status}; fenced: this proxy's etcd lease may have expired")]
    Fenced { status: String },
    /// Fewer shard primaries pass their health check than configured.
    #[error("{status}, {needed} needed")]
    TooFewHealthy { status: String, needed: usize },
}

/// Where `app` installs the [`ReadyCheck`].
#[derive(Clone, Default)]
pub struct Readiness(Arc<OnceLock<ReadyCheck>>);

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("set", &self.0.get().is_some())
            .finish()
    }
}

impl Readiness {
    /// Installs the check (once; later calls are ignored).
    pub fn set(&self, check: ReadyCheck) {
        let _ = self.0.set(check);
    }

    fn check(&self) -> Result<String, NotReady> {
        match self.0.get() {
            Some(check) => check(),
            None => Err(NotReady::Starting),
        }
    }
}

/// Everything there is to scrape, as `/metrics` returns it.
fn render(handle: &PrometheusHandle, process: &metrics_process::Collector) -> String {
    process.collect();
    let mut out = handle.render();
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    hot::render(&mut out, super::help);
    out
}

/// Serves the listener's paths (see the module doc) on `listener` until
/// the runtime stops; also runs the exporter's upkeep.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, ready: Readiness) {
    // The `process_*` metrics, read from the operating system at each scrape.
    let process = Arc::new(metrics_process::Collector::default());
    process.describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let (handle, ready, process) = (handle.clone(), ready.clone(), process.clone());
                tokio::spawn(async move {
                    if let Err(e) = respond(stream, &handle, &ready, &process).await {
                        tracing::debug!(%peer, error = %e, "metrics request failed");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors, most likely: keep serving later.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn respond(
    mut s: TcpStream,
    handle: &PrometheusHandle,
    ready: &Readiness,
    process: &metrics_process::Collector,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let complete = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(false);
            }
            head.extend_from_slice(&chunk[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    })
    .await
    .unwrap_or(Ok(false))?;
    if !complete {
        return Ok(());
    }
    let path = head
        .split(|&b| b == b' ')
        .nth(1)
        .map(|p| p.split(|&b| b == b'?').next().unwrap_or(p))
        .unwrap_or_default();
    let (status, body) = match (head.starts_with(b"GET "), path) {
        (false, _) => (
            "405 Method Not Allowed",
            "only GET is served here\n".to_owned(),
        ),
        (true, b"/metrics") => ("200 OK", render(handle, process)),
        (true, b"/healthz") => ("200 OK", "ok\n".to_owned()),
        (true, b"/readyz") => match ready.check() {
            Ok(detail) => ("200 OK", format!("ready: {detail}\n")),
            Err(why) => ("503 Service Unavailable", format!("not ready: {why}\n")),
        },
        (true, _) => (
            "404 Not Found",
            "not found; try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(reply.as_bytes()).await?;
    s.shutdown().await
}

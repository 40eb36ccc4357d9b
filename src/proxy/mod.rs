//! The client side: listener, per-client connection loop, dispatch of each
//! command to its shard(s), and the session state a client carries.

mod conn;
mod dispatch;
mod inline;
mod local;
mod pending;
mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::Backends;
use crate::metrics::Metrics;
use crate::protocol::Limits;
use crate::router::Router;

/// Limits and knobs of the client side.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Request parsing limits.
    pub limits: Limits,
    /// Replies a client may have outstanding before the proxy stops reading
    /// its socket (back-pressure instead of unbounded buffering).
    pub max_pipeline: usize,
    /// Time to finish in-flight commands at shutdown.
    pub shutdown_grace: Duration,
    /// This proxy's region and zone (reported by INFO).
    pub region: Option<String>,
    pub zone: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            limits: Limits::default(),
            max_pipeline: 1024,
            shutdown_grace: Duration::from_secs(5),
            region: None,
            zone: None,
        }
    }
}

/// What every client connection shares.
pub struct Proxy {
    pub router: Arc<Router>,
    pub backends: Arc<Backends>,
    pub metrics: Arc<Metrics>,
    pub config: ClientConfig,
    next_client_id: AtomicU64,
    connected: AtomicUsize,
    started: Instant,
}

impl Proxy {
    /// Bundles the shared parts.
    pub fn new(
        router: Arc<Router>,
        backends: Arc<Backends>,
        metrics: Arc<Metrics>,
        config: ClientConfig,
    ) -> Proxy {
        Proxy {
            router,
            backends,
            metrics,
            config,
            next_client_id: AtomicU64::new(1),
            connected: AtomicUsize::new(0),
            started: Instant::now(),
        }
    }

    /// Open client connections.
    pub fn connected_clients(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    /// Accepts clients until `shutdown` turns true, then waits (up to the
    /// grace period) for connections to finish the command in flight.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let id = self.next_client_id.fetch_add(1, Ordering::Relaxed);
                        let proxy = self.clone();
                        let shutdown = shutdown.clone();
                        self.connected.fetch_add(1, Ordering::Relaxed);
                        self.metrics.client_connected();
                        tasks.spawn(async move {
                            conn::serve_client(&proxy, stream, peer, id, shutdown).await;
                            proxy.connected.fetch_sub(1, Ordering::Relaxed);
                            proxy.metrics.client_disconnected();
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = shutdown.changed() => break,
            }
        }
        drop(listener);
        let grace = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = tasks.join_next() => if next.is_none() { break },
                _ = &mut grace => {
                    tracing::warn!(remaining = tasks.len(), "shutdown grace period over; closing remaining clients");
                    tasks.abort_all();
                    break;
                }
            }
        }
    }
}

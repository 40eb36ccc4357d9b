//! The one place that wires the modules together: shard map -> routing table
//! and backends -> proxy listener, plus the metrics exporter.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::{Backends, health};
use crate::metrics::{self, Metrics};
use crate::proxy::{ClientConfig, Proxy, TlsAcceptor};
use crate::router::{Epoch, Router, RoutingTable};
use crate::shardmap::{MapError, ShardMap};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("shard map {path}: {source}")]
    Map { path: String, source: MapError },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics exporter: {0}")]
    Metrics(String),
    /// A PostgreSQL primary could not be reached or migrated.
    #[error("shard {shard}: postgres primary {endpoint}: {reason}")]
    Postgres {
        shard: String,
        endpoint: String,
        reason: String,
    },
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// TLS for clients: certificate files and where TLS is spoken.
#[derive(Debug, Clone)]
pub struct TlsListen {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// A TLS listener beside the plain one; `None`: the main listener
    /// speaks TLS instead of plain RESP.
    pub listen: Option<SocketAddr>,
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub map_path: PathBuf,
    pub listen: SocketAddr,
    pub client: ClientConfig,
    /// TLS on the client side (off when `None`).
    pub tls: Option<TlsListen>,
}

/// A running proxy: its bound address and the means to stop it.
pub struct Running {
    /// The main listener (`listen`): TLS when TLS replaces plain RESP.
    pub addr: SocketAddr,
    /// Where clients speak TLS, if anywhere.
    pub tls_addr: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight commands finish (within the grace
    /// period) and waits for the listener task.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Waits until the proxy stops (after a shutdown signal).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Handle to trigger shutdown from elsewhere (signals).
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Loads and validates the map, builds routing and backends, binds the
/// client listener and starts serving. Must run inside a tokio runtime.
pub async fn start(config: ServeConfig) -> Result<Running, StartError> {
    let map = ShardMap::load(&config.map_path).map_err(|source| StartError::Map {
        path: config.map_path.display().to_string(),
        source,
    })?;
    let map = Arc::new(map);
    let metrics = Arc::new(Metrics::new());
    let table = RoutingTable::compile(map.clone(), Epoch(1));
    metrics.map_epoch(table.epoch().0);
    let router = Arc::new(Router::new(table));
    let backends = Arc::new(Backends::new(
        &map,
        config.client.region.as_deref(),
        config.client.zone.as_deref(),
    ));
    prepare_postgres(&backends).await?;
    let acceptor = match &config.tls {
        Some(t) => Some(TlsAcceptor::from(crate::tls::server_config(
            &t.cert, &t.key,
        )?)),
        None => None,
    };
    let (listener, addr) = bind(config.listen).await?;
    let tls_listener = match config.tls.as_ref().and_then(|t| t.listen) {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    health::spawn_all(backends.endpoints(), shutdown_rx.clone());
    for shard in backends.shards() {
        if let Some(pg) = shard.primary.postgres() {
            let state = &shard.primary.state;
            tokio::spawn(crate::pg::reaper(
                state.addr.clone(),
                pg.pool().clone(),
                state.options.health_check_interval,
                shutdown_rx.clone(),
            ));
        }
    }
    let users = config.client.auth.as_ref().map_or(0, |a| a.len());
    let proxy = Arc::new(Proxy::new(router, backends, metrics, config.client));
    tracing::info!(%addr, shards = map.shards.len(), slots = map.slots, map = %config.map_path.display(), auth_users = users, "shardgate listening");
    // TLS beside the plain listener (--tls-listen), or instead of it.
    let (mut main_acceptor, mut tls_addr, mut tls_task) = (None, None, None);
    match (acceptor, tls_listener) {
        (Some(acceptor), Some((l, a))) => {
            tls_addr = Some(a);
            let serve = proxy.clone().serve(l, Some(acceptor), shutdown_rx.clone());
            tls_task = Some(tokio::spawn(serve));
        }
        (Some(acceptor), None) => {
            tls_addr = Some(addr);
            main_acceptor = Some(acceptor);
        }
        (None, _) => {}
    }
    if let Some(a) = tls_addr {
        tracing::info!(addr = %a, "clients speak TLS here");
    }
    let main = proxy.clone().serve(listener, main_acceptor, shutdown_rx);
    let task = tokio::spawn(async move {
        main.await;
        if let Some(t) = tls_task {
            let _ = t.await;
        }
    });
    Ok(Running {
        addr,
        tls_addr,
        proxy,
        shutdown,
        task,
    })
}

/// Applies the schema migrations on every PostgreSQL primary, all at once;
/// the first failure (unreachable, refused, bad credentials) stops startup
/// with the shard and endpoint named. Replicas are never migrated.
async fn prepare_postgres(backends: &Backends) -> Result<(), StartError> {
    let tasks: Vec<_> = backends
        .shards()
        .iter()
        .filter_map(|s| {
            let pg = s.primary.postgres()?;
            let state = s.primary.state.clone();
            let pool = pg.pool().clone();
            Some(tokio::spawn(async move {
                crate::pg::prepare_primary(&state, &pool)
                    .await
                    .map_err(|reason| StartError::Postgres {
                        shard: state.shard.clone(),
                        endpoint: state.addr.clone(),
                        reason,
                    })
            }))
        })
        .collect();
    for t in tasks {
        match t.await {
            Ok(r) => r?,
            Err(e) => {
                return Err(StartError::Postgres {
                    shard: String::new(),
                    endpoint: String::new(),
                    reason: format!("migration task failed: {e}"),
                });
            }
        }
    }
    Ok(())
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })?;
    Ok((listener, local))
}

/// Installs the process-wide Prometheus recorder and its HTTP listener.
/// Call once per process, before [`start`], inside the runtime.
pub fn install_metrics_exporter(addr: SocketAddr) -> Result<(), StartError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(metrics::LATENCY_BUCKETS)
        .map_err(|e| StartError::Metrics(e.to_string()))?
        .install()
        .map_err(|e| StartError::Metrics(e.to_string()))?;
    metrics::describe();
    Ok(())
}

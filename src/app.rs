//! The one place that wires the modules together: shard map -> routing table
//! and backends -> proxy listener, plus the metrics exporter.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::{Backends, health};
use crate::context::Context;
pub use crate::control::{ReloadError, ReloadSummary, Reloader};
use crate::metrics::http::NotReady;
use crate::metrics::{self, Metrics};
use crate::proxy::{ClientConfig, Proxy, TlsAcceptor};
use crate::rebalance::RebalanceError;
use crate::rebalance::{self, Rebalancer, state::StateDir};
use crate::router::{Epoch, RoutingTable};
use crate::shardmap::MapError;
use crate::snapshot::{PublishError, Published, Snapshot};

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
    #[error(transparent)]
    State(#[from] RebalanceError),
    #[error("--state-dir and --etcd exclude each other: a fleet keeps its rebalance state in etcd")]
    StateDirInFleet,
    #[error("fleet: {0}")]
    Fleet(#[from] crate::coord::CoordError),
    /// The first snapshot could not be built (the state directory's map
    /// and its backends disagree).
    #[error("routing: {0}")]
    Snapshot(#[from] PublishError),
    /// A shard follows Sentinel and no sentinel named its primary.
    #[error("sentinel: {0}")]
    Sentinel(#[from] crate::sentinel::SentinelError),
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
    /// The admin listener (off when `None`).
    pub admin: Option<AdminListen>,
    /// Where rebalancing state survives restarts (`--state-dir`); a
    /// rebalance is refused without it.
    pub state_dir: Option<PathBuf>,
    /// Member of a fleet (`--etcd`, `--cluster`): the map and the
    /// rebalance live in etcd; `map_path` only seeds an empty cluster.
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// Most source shards a rebalance moves from at once
    /// (`--rebalance-sources`).
    pub rebalance_sources: usize,
    /// The metrics listener's `/readyz`, when it runs: set once started.
    pub readiness: Option<metrics::http::Readiness>,
    /// `/readyz` passes when at least this share of the shards' primaries
    /// pass their health check (1.0: all of them).
    pub ready_share: f64,
}

/// Where the admin listener runs and who may use it.
#[derive(Clone)]
pub struct AdminListen {
    pub addr: SocketAddr,
    /// The admin credentials (separate from any client user).
    pub auth: Arc<crate::auth::Auth>,
}

impl std::fmt::Debug for AdminListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminListen")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A running proxy: its bound address and the means to stop it.
pub struct Running {
    /// The main listener (`listen`): TLS when TLS replaces plain RESP.
    pub addr: SocketAddr,
    /// Where clients speak TLS, if anywhere.
    pub tls_addr: Option<SocketAddr>,
    /// The admin listener's address, if it runs.
    pub admin_addr: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    /// The map file, read again by [`Running::reload`].
    pub map_path: PathBuf,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    reloader: Reloader,
    /// Online rebalancing (driven by the admin listener).
    pub rebalancer: Arc<Rebalancer>,
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

    /// See [`Reloader::reload`].
    pub async fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        self.reloader.reload().await
    }

    /// A handle that reloads the map (for a SIGHUP handler).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Handle to trigger shutdown from elsewhere (signals).
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Loads and validates the map, builds routing and backends, binds the
/// client listener and starts serving. Must run inside a tokio runtime.
pub async fn start(config: ServeConfig) -> Result<Running, StartError> {
    let state = match &config.state_dir {
        Some(dir) => Some(
            StateDir::open(dir).map_err(|source| RebalanceError::StateDir {
                path: dir.display().to_string(),
                source,
            })?,
        ),
        None => None,
    };
    let fleet = match &config.fleet {
        Some(f) => {
            if state.is_some() {
                return Err(StartError::StateDirInFleet);
            }
            let coord = crate::coord::Coord::connect(&f.endpoints, &f.cluster).await?;
            let seed = if config.map_path.as_os_str().is_empty() {
                None
            } else {
                Some(std::fs::read_to_string(&config.map_path).map_err(|source| {
                    RebalanceError::ReadMap {
                        path: config.map_path.display().to_string(),
                        source,
                    }
                })?)
            };
            let state = crate::fleet::initial_state(&coord, seed.as_deref()).await?;
            Some((coord, f.clone(), state))
        }
        None => None,
    };
    let initial = match &fleet {
        Some((_, _, state)) => rebalance::from_fleet(&state.value),
        None => rebalance::initial(&config.map_path, state.as_ref()),
    }?;
    // In a fleet, the epoch is the fleet state's etcd revision.
    let first_epoch = fleet.as_ref().map_or(Epoch(1), |(_, _, s)| {
        Epoch(u64::try_from(s.revision).unwrap_or(1))
    });
    if fleet.is_none() && initial.source != config.map_path.display().to_string() {
        tracing::warn!(
            map = %initial.source,
            map_file = %config.map_path.display(),
            "serving the map of the state directory (the last rebalance's), not --map; update the map file to match"
        );
    }
    let map = initial.map.clone();
    let metrics = Arc::new(Metrics::new());
    let table = match &initial.resume {
        Some(r) => r.table(first_epoch),
        None => RoutingTable::compile(map.clone(), first_epoch),
    };
    metrics.map_epoch(table.epoch().0);
    // Shards that follow Sentinel: ask who their primaries are first.
    let sentinel_view = crate::sentinel::discover(&map).await?;
    let backends = Arc::new(Backends::with_view(
        &map,
        &sentinel_view,
        config.client.region.as_deref(),
        config.client.zone.as_deref(),
    ));
    let snapshot = Published::new(Snapshot::new(Arc::new(table), backends.clone())?);
    if initial.resume.is_some() {
        wait_previous_postgres_statements(&backends).await;
    }
    prepare_postgres(&backends).await?;
    // The listener's certificate, read again on SIGHUP (`Reloader::reload_tls`).
    let server_cert = match &config.tls {
        Some(t) => Some(Arc::new(crate::tls::ServerCert::load(&t.cert, &t.key)?)),
        None => None,
    };
    let acceptor = match &server_cert {
        Some(c) => Some(TlsAcceptor::from(crate::tls::server_config(c.clone())?)),
        None => None,
    };
    if let Some(cert) = &server_cert {
        metrics.tls_listener();
        if let Some(at) = cert.not_after() {
            metrics.tls_cert_expiry(at);
        }
    }
    let (listener, addr) = bind(config.listen).await?;
    let tls_listener = match config.tls.as_ref().and_then(|t| t.listen) {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let admin_listener = match &config.admin {
        Some(admin) => {
            let (l, a) = bind(admin.addr).await?;
            Some((l, a, admin.auth.clone()))
        }
        None => None,
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    health::spawn_all(backends.endpoints(), shutdown_rx.clone());
    crate::backend::pg::spawn_reapers(backends.endpoints(), &shutdown);
    let users = config.client.auth.as_ref().map_or(0, |a| a.len());
    let ctx = Arc::new(Context::new(
        snapshot,
        metrics,
        config.client.region.clone(),
        config.client.zone.clone(),
    ));
    ctx.sentinel.store(Arc::new(sentinel_view));
    if fleet.is_some() {
        // No keys are routed before this proxy holds a lease.
        ctx.fence.close();
    }
    let proxy = Arc::new(Proxy::new(ctx.clone(), config.client));
    // The ACL users that run scripts and transactions on the shards: an
    // endpoint whose credentials may not install them is reported now.
    proxy.sync_backend_acl();
    // Follows Sentinel (in a fleet too: every proxy on its own).
    let acl_proxy = proxy.clone();
    crate::sentinel::spawn(
        ctx.clone(),
        Arc::new(move || acl_proxy.sync_backend_acl()),
        shutdown_rx.clone(),
    );
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
    let rebalancer = Rebalancer::new(
        ctx.clone(),
        state,
        fleet.as_ref().map(|(c, _, _)| c.clone()),
        initial.yaml,
        shutdown.clone(),
        config.rebalance_sources,
    );
    let coord = fleet.as_ref().map(|(c, _, _)| c.clone());
    match fleet {
        Some((coord, fleet_config, fleet_state)) => {
            crate::fleet::join(
                coord,
                fleet_config,
                ctx.clone(),
                proxy.clone(),
                rebalancer.clone(),
                addr.to_string(),
                fleet_state,
                shutdown.clone(),
            )
            .await?;
        }
        None => {
            if let Some(resume) = initial.resume {
                rebalancer.resume(resume);
            }
        }
    }
    if let Some(ready) = &config.readiness {
        let ctx = ctx.clone();
        let share = config.ready_share;
        ready.set(Box::new(move || ready_check(&ctx, share)));
    }
    let reloader = Reloader::new(
        proxy.clone(),
        config.map_path.clone(),
        shutdown.clone(),
        rebalancer.clone(),
        coord,
        server_cert,
    );
    let admin_addr = match admin_listener {
        Some((listener, admin_addr, auth)) => {
            tracing::info!(addr = %admin_addr, "admin listener (RESP; its own password)");
            tokio::spawn(crate::admin::serve(
                listener,
                reloader.clone(),
                auth,
                shutdown.subscribe(),
            ));
            Some(admin_addr)
        }
        None => None,
    };
    Ok(Running {
        addr,
        tls_addr,
        admin_addr,
        proxy,
        map_path: config.map_path,
        shutdown,
        task,
        reloader,
        rebalancer,
    })
}

/// `/readyz`: the map is loaded (it is, once this runs) and at least
/// `share` of the shards' primaries pass their health check.
fn ready_check(ctx: &Context, share: f64) -> Result<String, NotReady> {
    let snap = ctx.snapshot();
    let shards: Vec<_> = snap
        .backends()
        .shards()
        .iter()
        .filter(|s| s.phase != crate::shardmap::ShardPhase::Removed)
        .collect();
    let healthy = shards
        .iter()
        .filter(|s| s.primary.state.is_healthy())
        .count();
    let needed = ((shards.len() as f64) * share.clamp(0.0, 1.0)).ceil() as usize;
    let status = format!(
        "map epoch {}, {healthy} of {} shard primaries healthy",
        snap.epoch().0,
        shards.len()
    );
    if ctx.fence.blocks(std::time::Instant::now()) {
        return Err(NotReady::Fenced { status });
    }
    if healthy >= needed {
        Ok(status)
    } else {
        Err(NotReady::TooFewHealthy { status, needed })
    }
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
                crate::backend::pg::prepare_primary(&state, &pool)
                    .await
                    .map_err(|reason| StartError::Postgres {
                        shard: state.shard.clone(),
                        endpoint: state.addr.clone(),
                        reason: reason.to_string(),
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

/// Resuming a rebalance: before serving (first thing on the new pools),
/// waits until the statements a previous (killed) process sent to the
/// postgres primaries have ended
/// (see [`crate::backend::pg::wait_previous_statements`]), at most twice
/// the command timeout (the statement timeout of every connection) plus 5 s.
async fn wait_previous_postgres_statements(backends: &Backends) {
    for s in backends.shards() {
        let Some(pg) = s.primary.postgres() else {
            continue;
        };
        let limit = s.primary.state.options.command_timeout * 2 + std::time::Duration::from_secs(5);
        if !crate::backend::pg::wait_previous_statements(pg.pool(), limit).await {
            tracing::warn!(
                shard = %s.name,
                endpoint = %s.primary.state.addr,
                "statements of an earlier shardgate process may still run on this postgres primary (or it could not be asked); resuming the rebalance anyway"
            );
        }
    }
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
pub fn install_metrics_exporter(addr: SocketAddr) -> Result<metrics::http::Readiness, StartError> {
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|source| StartError::Listen { addr, source })?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(metrics::LATENCY_BUCKETS)
        .map_err(|e| StartError::Metrics(e.to_string()))?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(metrics::PG_BATCH_COMMANDS.to_owned()),
            metrics::PG_BATCH_BUCKETS,
        )
        .map_err(|e| StartError::Metrics(e.to_string()))?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(metrics::PG_READ_BATCH_COMMANDS.to_owned()),
            metrics::PG_BATCH_BUCKETS,
        )
        .map_err(|e| StartError::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| StartError::Metrics(e.to_string()))?;
    metrics::describe();
    let ready = metrics::http::Readiness::default();
    tokio::spawn(metrics::http::serve(listener, handle, ready.clone()));
    Ok(ready)
}

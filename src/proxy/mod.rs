//! The client side: listener, per-client connection loop, dispatch of each
//! command to its shard(s), and the session state a client carries.

mod access;
mod blocked;
pub mod clients;
mod coalesce;
mod conn;
mod dispatch;
mod exclusive;
mod info;
mod local;
mod monitor;
mod moves;
mod pause;
mod pending;
pub mod pubsub;
mod select;
mod session;
pub mod slowlog;
mod stats;
pub mod tracking;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Auth;
use crate::backend::Backends;
use crate::backend::acl::BackendAcl;
use crate::context::Context;
use crate::metrics::Metrics;
use crate::protocol::Limits;
use crate::snapshot::Snapshot;
use crate::tls::{ClientStream, MaybeTls};
pub use tokio_rustls::TlsAcceptor;

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
    /// Largest unparsed input buffered for one client (an incomplete request
    /// bigger than this closes the connection, like Redis'
    /// `client-query-buffer-limit`).
    pub max_query_buffer: usize,
    /// Open client connections allowed; more are answered
    /// `-ERR max number of clients reached` and closed (as Redis does).
    pub max_clients: usize,
    /// Close a client that sent nothing for this long while nothing was in
    /// flight for it (Redis' `timeout`); `None` keeps idle clients forever.
    pub idle_timeout: Option<Duration>,
    /// Close a client that accepts no reply bytes for this long while replies
    /// wait for it (a slow or stuck reader). Together with `max_pipeline`
    /// this bounds what the proxy holds for one client.
    pub write_stall_timeout: Duration,
    /// This proxy's region and zone (reported by INFO).
    pub region: Option<String>,
    pub zone: Option<String>,
    /// Users and their permissions; `None`: every client is let in (Redis
    /// without `requirepass`).
    pub auth: Option<Arc<Auth>>,
    /// With auth: a client that has not logged in within this time is
    /// closed.
    pub auth_timeout: Duration,
    /// With auth: connections not logged in yet, at most. They do not
    /// count against `max_clients` (so that clients that never log in
    /// cannot lock real users out); one more is refused.
    pub max_unauthenticated: usize,
    /// Failed logins on one connection before it is closed.
    pub max_auth_failures: u32,
    /// The proxy's SLOWLOG (`--slowlog-log-slower-than`, `--slowlog-max-len`).
    pub slowlog: slowlog::SlowlogConfig,
    /// Bytes of pub/sub messages that may wait for one client; past it the
    /// client is closed (Redis' `client-output-buffer-limit pubsub`, hard
    /// limit 32 MiB by default).
    pub pubsub_output_limit: usize,
    /// Replies waiting for one client (Redis' `client-output-buffer-limit
    /// normal`): past `hard`, or past `soft` for `soft_for`, it is closed.
    pub output_limit: OutputLimit,
    /// Bytes all clients may make the proxy buffer (unparsed requests and
    /// unwritten replies); past it, the largest are closed (Redis'
    /// `maxmemory-clients`). 0: unbounded.
    pub maxmemory_clients: usize,
    /// Tail-sampled tracing (`--otlp-endpoint`); `None`: off.
    pub traces: Option<Arc<crate::otel::Traces>>,
}

/// Output buffer limits of one client; 0 turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimit {
    pub hard: usize,
    pub soft: usize,
    pub soft_for: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            limits: Limits::default(),
            max_pipeline: 1024,
            shutdown_grace: Duration::from_secs(5),
            max_clients: 10_000,
            max_query_buffer: 1 << 30,
            idle_timeout: None,
            write_stall_timeout: Duration::from_secs(60),
            region: None,
            zone: None,
            auth: None,
            auth_timeout: Duration::from_secs(5),
            max_unauthenticated: 1000,
            max_auth_failures: 10,
            slowlog: slowlog::SlowlogConfig::default(),
            pubsub_output_limit: 32 << 20,
            output_limit: OutputLimit {
                hard: 512 << 20,
                soft: 128 << 20,
                soft_for: Duration::from_secs(60),
            },
            maxmemory_clients: 1 << 30,
            traces: None,
        }
    }
}

/// `(proxy user, backend rules)` of every backend ACL user: one per user of
/// the auth file, or only `default` with every command when there is none
/// (every client is then `default`, and its scripts still may not run what
/// the proxy refuses).
fn backend_users(auth: Option<&Auth>, allow_flush: bool) -> Vec<(String, Vec<String>)> {
    match auth {
        Some(auth) => auth
            .users()
            .map(|u| (u.name.clone(), u.backend_rules(allow_flush)))
            .collect(),
        None => vec![(
            crate::auth::DEFAULT_USER.to_owned(),
            crate::auth::backend_rules(&crate::auth::all_commands(), allow_flush),
        )],
    }
}

/// Time a client has to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client's stream: the TLS session when `tls` is set (None when the
/// handshake fails; logged at debug, like any client hanging up).
async fn accept_tls(
    tls: Option<TlsAcceptor>,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<ClientStream> {
    let Some(acceptor) = tls else {
        return Some(MaybeTls::Plain(stream));
    };
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(MaybeTls::Tls(Box::new(s))),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Which admission limit refused a connection.
#[derive(Clone, Copy)]
enum Admission {
    MaxClients,
    MaxUnauthenticated,
}

/// Failed logins of one peer address within a window.
struct PeerFailures {
    since: Instant,
    count: u32,
    /// The count at the last log line.
    logged: u32,
}

/// Failed logins from one peer address within [`PEER_WINDOW`] after which
/// its logins are refused until the window ends.
const PEER_FAILURES: u32 = 100;
/// The window of [`PEER_FAILURES`].
const PEER_WINDOW: Duration = Duration::from_secs(60);
/// Peer addresses whose failures are tracked at most (bounded memory).
const MAX_TRACKED_PEERS: usize = 10_000;

/// An accepted client socket on its way to the task that serves it.
enum Handoff {
    /// Served on the accepting runtime.
    Tokio(tokio::net::TcpStream),
    /// Served on a serving thread, which registers it with its runtime.
    Std(std::net::TcpStream),
}

/// What every client connection shares.
pub struct Proxy {
    /// The snapshot, key fences and metrics, shared with the control path
    /// (map reload, rebalance mover).
    pub ctx: Arc<Context>,
    /// The same metrics as `ctx.metrics` (the hot path's shortcut).
    pub metrics: Arc<Metrics>,
    pub config: ClientConfig,
    /// The backend ACL users that run clients' scripts and transactions
    /// (see [`crate::backend::acl`]).
    pub backend_acl: Arc<BackendAcl>,
    /// This proxy's pub/sub subscriptions, shared by its clients.
    pub pubsub: Arc<pubsub::Hub>,
    /// Every client, and what they make the proxy buffer (see [`clients`]).
    pub clients: Arc<clients::Clients>,
    /// MONITOR clients (see `monitor`).
    monitors: Arc<monitor::Monitors>,
    next_client_id: AtomicU64,
    /// Open client connections (with auth: logged-in ones).
    connected: AtomicUsize,
    /// With auth: connections that have not logged in yet.
    unauthenticated: AtomicUsize,
    /// Failed logins by peer address (see [`Proxy::login_failed`]).
    failures: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, PeerFailures>>,
    started: Instant,
    last_refusal_warning: AtomicU64,
    /// Counters for INFO that are not metrics (blocked clients, refused
    /// connections, instantaneous rates).
    stats: Arc<stats::ProxyStats>,
    /// Commands slower than the slow log's threshold.
    slowlog: slowlog::Slowlog,
    /// Which clients with `CLIENT TRACKING` on read which keys (see
    /// [`tracking`]).
    pub tracking: Arc<tracking::Table>,
    /// `CLIENT PAUSE` of this proxy's clients (see [`pause`]).
    pause: pause::Pause,
}

impl Proxy {
    /// Bundles the shared parts.
    pub fn new(ctx: Arc<Context>, config: ClientConfig) -> Proxy {
        let allow_flush = ctx.snapshot().map().options.allow_flush;
        let backend_acl = Arc::new(BackendAcl::new(backend_users(
            config.auth.as_deref(),
            allow_flush,
        )));
        Proxy {
            metrics: ctx.metrics.clone(),
            pubsub: Arc::new(pubsub::Hub::new(ctx.clone(), config.pubsub_output_limit)),
            clients: Arc::new(clients::Clients::new(config.maxmemory_clients)),
            monitors: Arc::default(),
            ctx,
            backend_acl,
            next_client_id: AtomicU64::new(1),
            connected: AtomicUsize::new(0),
            unauthenticated: AtomicUsize::new(0),
            failures: std::sync::Mutex::new(std::collections::HashMap::new()),
            started: Instant::now(),
            last_refusal_warning: AtomicU64::new(u64::MAX),
            stats: Arc::default(),
            slowlog: slowlog::Slowlog::new(config.slowlog),
            config,
            tracking: Arc::default(),
            pause: pause::Pause::default(),
        }
    }

    /// Recomputes the backend ACL users from the running map (its
    /// `allow_flush`) and installs them on every Redis endpoint in the
    /// background: at startup (an endpoint whose credentials may not run
    /// `ACL SETUSER` is reported at once) and after a map reload.
    pub fn sync_backend_acl(&self) {
        let allow_flush = self.snapshot().map().options.allow_flush;
        self.backend_acl
            .update(backend_users(self.config.auth.as_deref(), allow_flush));
        let endpoints = self.backends().endpoints().to_vec();
        tokio::spawn(crate::backend::acl::sync_all(
            endpoints,
            self.backend_acl.users(),
        ));
    }

    /// The proxy user whose backend ACL user runs this client's scripts
    /// and transactions (`default` before login and without an auth file).
    pub fn backend_user_of(user: Option<&crate::auth::User>) -> &str {
        user.map_or(crate::auth::DEFAULT_USER, |u| u.name.as_str())
    }

    /// The snapshot in force, for one synchronous step of the hot path (no
    /// shared reference count touched).
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.ctx.snapshot()
    }

    /// The snapshot in force, to keep across awaits.
    pub fn snapshot_full(&self) -> Arc<Snapshot> {
        self.ctx.snapshot_full()
    }

    /// The current backends, to keep across awaits where no routing
    /// decision depends on them (INFO, fan-outs that name shards by address).
    pub fn backends(&self) -> Arc<Backends> {
        self.ctx.backends()
    }

    /// The `# Proxy` section of INFO (also the admin STATUS): map epoch,
    /// policy, this proxy's location, and every shard's endpoints with their
    /// health and latency (`replicas=addr|healthy|latency_us;...`).
    pub fn describe(&self) -> String {
        let snap = self.snapshot_full();
        let table = snap.table();
        let map = table.map();
        let mut text = format!(
            "# Proxy\r\nmap_epoch:{}\r\nslots:{}\r\nshards:{}\r\nread_policy:{}\r\nregion:{}\r\nzone:{}\r\n",
            table.epoch().0,
            map.slots,
            map.shards.len(),
            map.read_policy.as_str(),
            self.config.region.as_deref().unwrap_or(""),
            self.config.zone.as_deref().unwrap_or(""),
        );
        let backends = snap.backends();
        for (i, s) in backends.shards().iter().enumerate() {
            let p = &s.primary.state;
            let replicas: Vec<String> = backends
                .endpoints()
                .iter()
                .map(|e| &e.state)
                .filter(|e| e.shard == s.name && e.role == crate::backend::Role::Replica)
                .map(|e| format!("{}|{}|{}", e.addr, e.is_healthy() as u8, e.latency_us()))
                .collect();
            text.push_str(&format!(
                "shard{i}:name={},primary={},healthy={},circuit_open={},latency_us={},version={},replicas={}\r\n",
                s.name,
                p.addr,
                p.is_healthy() as u8,
                p.breaker.is_open() as u8,
                p.latency_us(),
                p.version.load_full().map_or_else(String::new, |v| v.as_ref().clone()),
                replicas.join(";"),
            ));
        }
        text
    }

    /// Open client connections (logged in and not yet).
    pub fn connected_clients(&self) -> usize {
        self.connected.load(Ordering::Relaxed) + self.unauthenticated.load(Ordering::Relaxed)
    }

    /// Client connections accepted since start (INFO
    /// `total_connections_received`).
    pub fn accepted_clients(&self) -> u64 {
        self.next_client_id.load(Ordering::Relaxed) - 1
    }

    /// A client logged in: it now counts against `max_clients` instead of
    /// the unauthenticated limit. Called once per connection.
    pub(crate) fn client_logged_in(&self) {
        self.unauthenticated.fetch_sub(1, Ordering::Relaxed);
        self.connected.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether logins from `peer` are refused for now: more than
    /// [`PEER_FAILURES`] failed within [`PEER_WINDOW`].
    pub(crate) fn login_blocked(&self, peer: std::net::IpAddr) -> bool {
        let now = Instant::now();
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures
            .get(&peer)
            .is_some_and(|f| now.duration_since(f.since) < PEER_WINDOW && f.count >= PEER_FAILURES)
    }

    /// Counts a failed login of `peer`; returns whether a log line is due
    /// (at most one per peer per [`PEER_WINDOW`], with the count since).
    pub(crate) fn login_failed(&self, peer: std::net::IpAddr) -> Option<u32> {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_TRACKED_PEERS {
            failures.retain(|_, f| now.duration_since(f.since) < PEER_WINDOW);
            if failures.len() >= MAX_TRACKED_PEERS {
                // Under a spread-out attack, forget the oldest half.
                let mut by_age: Vec<_> = failures.iter().map(|(ip, f)| (f.since, *ip)).collect();
                by_age.sort();
                for (_, ip) in by_age.iter().take(by_age.len() / 2) {
                    failures.remove(ip);
                }
            }
        }
        let f = failures.entry(peer).or_insert(PeerFailures {
            since: now,
            count: 0,
            logged: 0,
        });
        if now.duration_since(f.since) >= PEER_WINDOW {
            *f = PeerFailures {
                since: now,
                count: 0,
                logged: 0,
            };
        }
        f.count += 1;
        // The first failure of a window is logged, then one line per
        // hundredfold more (1, 100, 10000...): a guessing run leaves a
        // handful of lines, not one per attempt.
        if f.count == 1 || f.count >= f.logged.saturating_mul(100) {
            f.logged = f.count;
            return Some(f.count);
        }
        None
    }

    /// Answers a client over `max_clients` with Redis' error and closes it.
    fn refuse(
        &self,
        mut stream: tokio::net::TcpStream,
        peer: std::net::SocketAddr,
        limit: Admission,
    ) {
        use tokio::io::AsyncWriteExt;
        let (reason, reply): (&'static str, &'static [u8]) = match limit {
            Admission::MaxClients => ("max_clients", b"-ERR max number of clients reached\r\n"),
            Admission::MaxUnauthenticated => (
                "max_unauthenticated",
                b"-ERR max number of unauthenticated clients reached\r\n",
            ),
        };
        self.metrics.client_limit_close(reason);
        self.stats
            .rejected_connections
            .fetch_add(1, Ordering::Relaxed);
        let now = self.started.elapsed().as_secs();
        // One warning per 10 s at most: a connection storm must not flood the log.
        if self.last_refusal_warning.swap(now, Ordering::Relaxed) / 10 != now / 10 {
            tracing::warn!(%peer, max_clients = self.config.max_clients, max_unauthenticated = self.config.max_unauthenticated, reason, "refusing client: limit reached");
        }
        tokio::spawn(async move {
            let write = stream.write_all(reply);
            let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
        });
    }

    /// Accepts clients until `shutdown` turns true, then waits (up to the
    /// grace period) for connections to finish the command in flight. With
    /// `tls`, every client must complete a TLS handshake first.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        self.stats.start_sampling(shutdown.clone());
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let needs_login = self.config.auth.is_some();
                        let refusal = if self.connected.load(Ordering::Relaxed) >= self.config.max_clients {
                            Some(Admission::MaxClients)
                        } else if needs_login
                            && self.unauthenticated.load(Ordering::Relaxed) >= self.config.max_unauthenticated
                        {
                            Some(Admission::MaxUnauthenticated)
                        } else {
                            None
                        };
                        if let Some(limit) = refusal {
                            if tls.is_some() {
                                // Plain bytes would be garbage to a TLS client: just close.
                                self.stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
                                self.metrics.client_limit_close(match limit {
                                    Admission::MaxClients => "max_clients",
                                    Admission::MaxUnauthenticated => "max_unauthenticated",
                                });
                                drop(stream);
                            } else {
                                self.refuse(stream, peer, limit);
                            }
                            continue;
                        }
                        let tls = tls.clone();
                        let id = self.next_client_id.fetch_add(1, Ordering::Relaxed);
                        let proxy = self.clone();
                        let shutdown = shutdown.clone();
                        let thread = crate::workers::thread_of(id);
                        // Until it logs in, a client counts against its own limit.
                        let count = if needs_login { &self.unauthenticated } else { &self.connected };
                        count.fetch_add(1, Ordering::Relaxed);
                        self.metrics.client_connected(thread);
                        // On a serving thread the socket must be registered
                        // with that thread's runtime: hand it over as a std
                        // socket (still non-blocking).
                        let stream = if crate::workers::handles().is_empty() {
                            Handoff::Tokio(stream)
                        } else {
                            match stream.into_std() {
                                Ok(s) => Handoff::Std(s),
                                Err(e) => {
                                    tracing::warn!(%peer, error = %e, "cannot hand the client to a serving thread");
                                    count.fetch_sub(1, Ordering::Relaxed);
                                    self.metrics.client_disconnected(thread);
                                    continue;
                                }
                            }
                        };
                        crate::workers::spawn_on(&mut tasks, thread, async move {
                            let stream = match stream {
                                Handoff::Tokio(s) => Ok(s),
                                Handoff::Std(s) => tokio::net::TcpStream::from_std(s),
                            };
                            let mut logged_in = !needs_login;
                            match stream {
                                Ok(stream) => {
                                    if let Some(stream) = accept_tls(tls, stream, peer).await {
                                        logged_in = conn::serve_client(&proxy, stream, peer, id, shutdown).await
                                            || logged_in;
                                    }
                                }
                                Err(e) => tracing::warn!(%peer, error = %e, "cannot register the client socket"),
                            }
                            let count = if logged_in { &proxy.connected } else { &proxy.unauthenticated };
                            count.fetch_sub(1, Ordering::Relaxed);
                            proxy.metrics.client_disconnected(thread);
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

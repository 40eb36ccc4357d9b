//! The `shardgate` command line: `serve` runs the proxy, `check-map`
//! validates a shard map without starting anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// jemalloc with its background threads: memory freed after a burst (a
/// hostile client's buffers, a pipeline of big MGET replies) goes back to the
/// operating system within seconds (its decay time, 10 s), where glibc's
/// malloc kept RSS at the peak (640 MiB after a hostile-bulk test, measured
/// here). `tests/memory.rs` checks that RSS falls back.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod admin_cli;
mod config_file;
mod fleet_cli;
mod health_cli;

use clap::{CommandFactory, Parser, Subcommand};
use std::sync::Arc;

use shardgate::app::{self, ServeConfig};
use shardgate::auth::{self, Auth};
use shardgate::protocol::Limits;
use shardgate::proxy::ClientConfig;
use shardgate::router::{Epoch, RoutingTable};
use shardgate::shardmap::{ShardKind, ShardMap};
use std::io::IsTerminal;

#[derive(Parser)]
#[command(
    name = "shardgate",
    version,
    about = "A Redis-compatible sharding proxy"
)]
struct Cli {
    /// Log lines as text or as JSON objects (one per line, for log
    /// shippers). The level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve(Box<ServeArgs>),
    /// Parse and validate a shard map, print a summary, and exit.
    CheckMap {
        /// Path of the shard-map YAML file.
        map: PathBuf,
        /// Also print where this key lives (slot and owner shard); repeatable.
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    /// Operator commands.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Ask a running proxy's metrics listener for a path (default
    /// `/healthz`) and exit 0 on HTTP 200, else 1: the container
    /// HEALTHCHECK of an image without curl or a shell.
    Health {
        /// The metrics listener (`--metrics-listen` of the proxy).
        #[arg(long, default_value = "127.0.0.1:9121")]
        addr: SocketAddr,
        /// `/healthz` (the process runs) or `/readyz` (it serves).
        #[arg(long, default_value = "/healthz")]
        path: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 2)]
        timeout_secs: u64,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Apply the schema migrations of `migrations/` to every PostgreSQL
    /// primary of a map now (the proxy also does it at startup; replicas are
    /// never touched). Idempotent.
    Migrate {
        /// Path of the shard-map YAML file.
        #[arg(long)]
        map: PathBuf,
    },
    /// Dry run against the running proxy: per (from, to) shard pair, the
    /// slots, keys and bytes a new map would move; refusals say why.
    Plan {
        /// The new shard map (YAML), read here and sent to the proxy.
        #[arg(long)]
        map: PathBuf,
        #[command(flatten)]
        conn: admin_cli::AdminConn,
    },
    /// Submit a new map and follow the move with a progress bar (Ctrl-C
    /// detaches; the move goes on).
    Rebalance {
        /// The new shard map (YAML), read here and sent to the proxy.
        #[arg(long)]
        map: PathBuf,
        /// Return once the move started instead of following it.
        #[arg(long)]
        no_wait: bool,
        /// Limit the mover to this many keys per second from its first
        /// batch (0: no limit; `shardgate admin throttle` changes it).
        #[arg(long, default_value_t = 0)]
        throttle: u64,
        #[command(flatten)]
        conn: admin_cli::AdminConn,
    },
    /// Follow the running rebalance with the progress bar (again, after
    /// Ctrl-C detached `rebalance`).
    Follow {
        #[command(flatten)]
        conn: admin_cli::AdminConn,
        #[command(flatten)]
        straight: StraightToEtcd,
    },
    /// The proxy's status: map epoch, shards, endpoints and the rebalance
    /// (with --etcd: the fleet as etcd holds it, as `admin fleet`).
    Status {
        #[command(flatten)]
        conn: admin_cli::AdminConn,
        #[command(flatten)]
        straight: StraightToEtcd,
    },
    /// Pause the rebalance's background mover.
    Pause {
        #[command(flatten)]
        conn: admin_cli::AdminConn,
        #[command(flatten)]
        straight: StraightToEtcd,
    },
    /// Resume the rebalance's background mover.
    Resume {
        #[command(flatten)]
        conn: admin_cli::AdminConn,
        #[command(flatten)]
        straight: StraightToEtcd,
    },
    /// Store a map in a fleet's etcd (`--etcd`, `--cluster`): the first map
    /// of a new cluster, or a change that moves no keys (replicas, options,
    /// credentials), which every proxy of the fleet then applies. A change
    /// of placement is refused: submit it with `rebalance`.
    Apply {
        #[arg(long)]
        map: PathBuf,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// The fleet as etcd holds it: every live proxy (id, address, the
    /// epoch it serves, when it last renewed its lease), the map epoch and
    /// the running rebalance.
    Fleet {
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Limit the mover to this many keys per second (0: no limit).
    Throttle {
        keys_per_sec: u64,
        #[command(flatten)]
        conn: admin_cli::AdminConn,
        #[command(flatten)]
        straight: StraightToEtcd,
    },
}

/// For an admin command that can go straight to a fleet's etcd instead
/// of a proxy (a control is recorded in the rebalance's state, which the
/// mover's proxy applies when it sees it; `follow` and `status` read it).
#[derive(clap::Args)]
struct StraightToEtcd {
    /// Go straight to this fleet's etcd (endpoints; repeat or
    /// comma-separate) instead of asking a proxy's admin listener.
    #[arg(long, value_delimiter = ',', conflicts_with = "admin")]
    etcd: Vec<String>,
    /// The fleet's name in etcd (with --etcd).
    #[arg(long, default_value = "default")]
    cluster: String,
}

/// Where a fleet's control state lives.
#[derive(clap::Args)]
struct FleetArgs {
    /// etcd endpoints (repeat or comma-separate).
    #[arg(long, value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// The fleet's name in etcd.
    #[arg(long, default_value = "default")]
    cluster: String,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file holding any of these flags, named in snake_case
    /// (`max_clients = 20000`); flags given here win over it, relative
    /// paths in it are relative to its directory.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Path of the shard-map YAML file (with --etcd: only seeds a cluster
    /// that has no map yet).
    #[arg(long, required_unless_present = "etcd")]
    map: Option<PathBuf>,
    /// With auth: close a client that has not logged in within this many
    /// seconds.
    #[arg(long, default_value_t = 5)]
    auth_timeout_secs: u64,
    /// With auth: connections not logged in yet, at most (they do not count
    /// against --max-clients).
    #[arg(long, default_value_t = 1000)]
    max_unauthenticated_clients: usize,
    /// Failed logins on one connection before the proxy closes it.
    #[arg(long, default_value_t = 10)]
    max_auth_failures: u32,
    /// Bytes of pub/sub messages that may wait for one subscriber before
    /// the proxy closes it (Redis' client-output-buffer-limit pubsub).
    #[arg(long, default_value_t = 32 << 20)]
    pubsub_output_buffer_limit: usize,
    /// Bytes of replies that may wait for one client before it is closed
    /// (Redis' client-output-buffer-limit normal, hard part; 0: none).
    #[arg(long, default_value_t = 512 << 20)]
    output_buffer_hard_limit: usize,
    /// Bytes of replies that may wait for one client for at most
    /// --output-buffer-soft-seconds (0: none).
    #[arg(long, default_value_t = 128 << 20)]
    output_buffer_soft_limit: usize,
    #[arg(long, default_value_t = 60)]
    output_buffer_soft_seconds: u64,
    /// Bytes all clients together may make the proxy buffer (unparsed
    /// requests, unwritten replies); past it the clients holding the most
    /// are closed (Redis' maxmemory-clients; 0: unbounded).
    #[arg(long, default_value_t = 1 << 30)]
    maxmemory_clients: usize,
    /// `/readyz` on the metrics listener passes when at least this share
    /// of the shards' primaries pass their health check (1.0: all).
    #[arg(long, default_value_t = 1.0)]
    ready_share: f64,
    /// etcd endpoints of a fleet (repeat or comma-separate): the map and
    /// the rebalance state live there, shared by every proxy of --cluster.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// The fleet's name in etcd.
    #[arg(long, default_value = "default", requires = "etcd")]
    cluster: String,
    /// This proxy's id in the fleet (default: its listen address and pid).
    #[arg(long, requires = "etcd")]
    proxy_id: Option<String>,
    /// Time to live of this proxy's etcd lease, seconds; renewed every third
    /// of it. A proxy that cannot renew stops routing keys before it ends.
    #[arg(long, default_value_t = 6, requires = "etcd")]
    lease_ttl_secs: u64,
    /// Address for Redis clients.
    #[arg(long, default_value = "127.0.0.1:6380")]
    listen: SocketAddr,
    /// Address of the Prometheus metrics endpoint (GET /metrics).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Region this proxy runs in (for the `nearest` read policy).
    #[arg(long)]
    region: Option<String>,
    /// Zone this proxy runs in (for the `nearest` read policy).
    #[arg(long)]
    zone: Option<String>,
    /// Serving threads: each serves its share of the clients with its own
    /// backend connections (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Replies a client may have outstanding before the proxy stops reading it.
    #[arg(long, default_value_t = 1024)]
    max_pipeline: usize,
    /// Largest bulk string a client may send, in bytes (like proto-max-bulk-len).
    #[arg(long, default_value_t = 512 * 1024 * 1024)]
    max_bulk_len: usize,
    /// Most arguments in one request (more: `-ERR Protocol error: invalid multibulk length`).
    #[arg(long, default_value_t = 1024 * 1024)]
    max_args: usize,
    /// Largest incomplete request buffered for one client, in bytes (like
    /// Redis' client-query-buffer-limit); beyond it the client is closed.
    #[arg(long, default_value_t = 1 << 30)]
    max_query_buffer: usize,
    /// Open client connections allowed; more get `-ERR max number of clients reached`.
    #[arg(long, default_value_t = 10_000)]
    max_clients: usize,
    /// Close clients idle for this many seconds (0: never, like Redis' `timeout 0`).
    #[arg(long, default_value_t = 0)]
    idle_timeout_secs: u64,
    /// Close a client that accepts no reply bytes for this many seconds.
    #[arg(long, default_value_t = 60)]
    write_stall_timeout_secs: u64,
    /// Seconds to let in-flight commands finish on SIGTERM/SIGINT.
    #[arg(long, default_value_t = 5)]
    shutdown_grace_secs: u64,
    /// The proxy's SLOWLOG (Redis' names): commands slower than this many
    /// microseconds, parse to reply, are logged (negative: off, 0: all) ...
    #[arg(long, default_value_t = 10_000, allow_negative_numbers = true)]
    slowlog_log_slower_than: i64,
    /// ... and this many entries are kept.
    #[arg(long, default_value_t = 128)]
    slowlog_max_len: usize,
    /// OpenTelemetry collector (OTLP over gRPC, e.g. http://127.0.0.1:4317)
    /// to export tail-sampled spans to: only requests that were slow or
    /// failed are traced. Off when not given.
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// With --otlp-endpoint: trace requests slower than this many
    /// microseconds, parse to reply (negative: none for slowness).
    #[arg(long, default_value_t = 10_000, allow_negative_numbers = true)]
    trace_slower_than_us: i64,
    /// With --otlp-endpoint: trace requests answered with an error.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    trace_errors: bool,
    /// YAML file with the `default` user's password and named users with
    /// their command rules; clients must then AUTH.
    #[arg(long, conflicts_with = "requirepass_env")]
    auth_file: Option<PathBuf>,
    /// Environment variable holding the password of the `default` user
    /// (Redis' requirepass), for setups without users.
    #[arg(long)]
    requirepass_env: Option<String>,
    /// Address of the admin listener (RESP: `redis-cli -p PORT -a PASSWORD
    /// reload`); needs --admin-password-env.
    #[arg(long, requires = "admin_password_env")]
    admin_listen: Option<SocketAddr>,
    /// Environment variable holding the admin listener's password (its own,
    /// not a client user's).
    #[arg(long, requires = "admin_listen")]
    admin_password_env: Option<String>,
    /// Directory where rebalancing state is kept (the running move, the
    /// map in force after the last one). Needed to rebalance; a proxy
    /// restarted with the same directory resumes an unfinished move.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Most source shards a rebalance moves keys from at once (one window
    /// of slots per source, each walked on its own connections). Only the
    /// proxy that runs the mover reads it.
    #[arg(long, default_value_t = 4)]
    rebalance_sources: usize,
    /// PEM certificate chain for TLS to clients (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve TLS on this address beside the plain --listen; without it,
    /// --listen itself speaks TLS.
    #[arg(long, requires = "tls_cert")]
    tls_listen: Option<SocketAddr>,
}

/// Why the client auth could not be loaded.
#[derive(Debug, thiserror::Error)]
enum AuthSetupError {
    #[error("{path}: {source}")]
    File {
        path: String,
        source: auth::file::AuthFileError,
    },
    #[error("--requirepass-env: environment variable `{0}` is not set or empty")]
    NoPassword(String),
}

/// The client auth configured by `--auth-file` or `--requirepass-env`.
fn load_auth(args: &ServeArgs) -> Result<Option<Arc<Auth>>, AuthSetupError> {
    if let Some(path) = &args.auth_file {
        let auth = auth::file::load(path).map_err(|source| AuthSetupError::File {
            path: path.display().to_string(),
            source,
        })?;
        return Ok(Some(Arc::new(auth)));
    }
    if let Some(var) = &args.requirepass_env {
        return match std::env::var(var) {
            Ok(pw) if !pw.is_empty() => Ok(Some(Arc::new(Auth::requirepass(pw.as_bytes())))),
            _ => Err(AuthSetupError::NoPassword(var.clone())),
        };
    }
    Ok(None)
}

fn main() -> ExitCode {
    // `serve --config FILE`: the file's settings become flags the command
    // line did not give, then clap parses them all at once.
    let given: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let given_len = given.len();
    let args = match config_file::merge(given, &Cli::command()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        // A rule between flags (`--cluster` requires `--etcd`) broken by
        // the file's settings: clap names the flags, so say where they
        // came from.
        Err(e) if args.len() > given_len && e.use_stderr() => {
            let _ = e.print();
            eprintln!(
                "note: the keys of the --config file count as the flags they name (`lease_ttl_secs` is --lease-ttl-secs)"
            );
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
    shardgate::metrics::count_panics();
    match cli.command {
        Command::CheckMap { map, keys } => match ShardMap::load(&map) {
            Ok(m) => {
                println!(
                    "{}: ok ({} shards, {} slots, read policy {})",
                    map.display(),
                    m.shards.len(),
                    m.slots,
                    m.read_policy.as_str()
                );
                let table = RoutingTable::compile(Arc::new(m), Epoch(1));
                for key in keys {
                    let shard = &table.map().shards[table.shard_for_key(key.as_bytes()).0 as usize];
                    let primary = match &shard.sentinel {
                        Some(s) => format!("from Sentinel master {}", s.master),
                        None => shardgate::shardmap::redact_dsn(&shard.primary.addr),
                    };
                    println!(
                        "{key}: slot {}, shard {} (region {}, primary {primary})",
                        table.slot_of(key.as_bytes()).0,
                        shard.name,
                        shard.region,
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", map.display());
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => serve(*args),
        Command::Health {
            addr,
            path,
            timeout_secs,
        } => health_cli::health(addr, &path, Duration::from_secs(timeout_secs.max(1))),
        Command::Admin(AdminCommand::Migrate { map }) => admin_migrate(&map),
        Command::Admin(AdminCommand::Apply { map, fleet }) => {
            fleet_cli::apply(&map, &fleet.etcd, &fleet.cluster)
        }
        Command::Admin(AdminCommand::Fleet { fleet }) => {
            fleet_cli::status(&fleet.etcd, &fleet.cluster)
        }
        Command::Admin(AdminCommand::Follow { straight, .. }) if !straight.etcd.is_empty() => {
            admin_cli::follow_etcd(&straight.etcd, &straight.cluster)
        }
        Command::Admin(AdminCommand::Status { straight, .. }) if !straight.etcd.is_empty() => {
            fleet_cli::status(&straight.etcd, &straight.cluster)
        }
        Command::Admin(AdminCommand::Pause { straight, .. }) if !straight.etcd.is_empty() => {
            fleet_cli::control(&straight.etcd, &straight.cluster, fleet_cli::Control::Pause)
        }
        Command::Admin(AdminCommand::Resume { straight, .. }) if !straight.etcd.is_empty() => {
            fleet_cli::control(
                &straight.etcd,
                &straight.cluster,
                fleet_cli::Control::Resume,
            )
        }
        Command::Admin(AdminCommand::Throttle {
            keys_per_sec,
            straight,
            ..
        }) if !straight.etcd.is_empty() => fleet_cli::control(
            &straight.etcd,
            &straight.cluster,
            fleet_cli::Control::Throttle(keys_per_sec),
        ),
        Command::Admin(cmd) => admin_cli::run(match cmd {
            AdminCommand::Migrate { .. }
            | AdminCommand::Apply { .. }
            | AdminCommand::Fleet { .. } => unreachable!("handled above"),
            AdminCommand::Plan { map, conn } => (conn, admin_cli::Op::Plan(map)),
            AdminCommand::Rebalance {
                map,
                no_wait,
                throttle,
                conn,
            } => (
                conn,
                admin_cli::Op::Rebalance {
                    map,
                    wait: !no_wait,
                    throttle,
                },
            ),
            AdminCommand::Follow { conn, .. } => (conn, admin_cli::Op::Follow),
            AdminCommand::Status { conn, .. } => (conn, admin_cli::Op::Status),
            AdminCommand::Pause { conn, .. } => (conn, admin_cli::Op::Pause),
            AdminCommand::Resume { conn, .. } => (conn, admin_cli::Op::Resume),
            AdminCommand::Throttle {
                keys_per_sec, conn, ..
            } => (conn, admin_cli::Op::Throttle(keys_per_sec)),
        }),
    }
}

/// A single-threaded runtime for a CLI command (the reason is printed
/// when it cannot start).
fn current_thread_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("cannot start the runtime: {e}"))
        .ok()
}

/// `shardgate admin migrate`: one line per PostgreSQL primary; fails if any
/// primary could not be migrated.
fn admin_migrate(path: &std::path::Path) -> ExitCode {
    let map = match ShardMap::load(path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let Some(rt) = current_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    let mut failed = false;
    let mut primaries = 0;
    for shard in map.shards.iter().filter(|s| s.kind == ShardKind::Postgres) {
        primaries += 1;
        let endpoint = shardgate::shardmap::redact_dsn(&shard.primary.addr);
        match rt.block_on(shardgate::backend::pg::migrate_primary(
            &shard.primary.addr,
            map.options.connect_timeout,
        )) {
            Ok((0, total)) => {
                println!("{} {endpoint}: up to date ({total} migrations)", shard.name)
            }
            Ok((now, total)) => println!(
                "{} {endpoint}: applied {now} migration(s) ({total} in all)",
                shard.name
            ),
            Err(e) => {
                failed = true;
                eprintln!("{} {endpoint}: {e}", shard.name);
            }
        }
    }
    if primaries == 0 {
        println!("{}: no postgres shards", path.display());
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let auth = match load_auth(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let admin = match (&args.admin_listen, &args.admin_password_env) {
        (Some(addr), Some(var)) => match std::env::var(var) {
            Ok(pw) if !pw.is_empty() => Some((*addr, Arc::new(Auth::requirepass(pw.as_bytes())))),
            _ => {
                eprintln!("--admin-password-env: environment variable `{var}` is not set or empty");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    // Clients are served on `--threads` serving threads (see `workers`);
    // the control runtime (accept loop, admin, health checks, rebalancing)
    // needs one thread.
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let mut workers = match shardgate::workers::start(threads) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("cannot start the serving threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.worker_threads(1).thread_name("shardgate-control");
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async move {
        // Built on the control runtime, which outlives every request: the
        // exporter's gRPC connections live there.
        let traces = match shardgate::otel::Traces::start(&shardgate::otel::TraceConfig {
            endpoint: args.otlp_endpoint.clone(),
            slower_than: u64::try_from(args.trace_slower_than_us)
                .ok()
                .map(Duration::from_micros),
            errors: args.trace_errors,
            instance: args
                .proxy_id
                .clone()
                .unwrap_or_else(|| args.listen.to_string()),
        }) {
            Ok(t) => t.map(Arc::new),
            Err(e) => {
                tracing::error!(error = %e, "cannot start tracing");
                return ExitCode::FAILURE;
            }
        };
        if let Some(endpoint) = &args.otlp_endpoint {
            tracing::info!(%endpoint, slower_than_us = args.trace_slower_than_us, errors = args.trace_errors, "tail-sampled traces exported over OTLP");
        }
        let mut readiness = None;
        if let Some(addr) = args.metrics_listen {
            match app::install_metrics_exporter(addr) {
                Ok(r) => readiness = Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the metrics exporter");
                    return ExitCode::FAILURE;
                }
            }
            tracing::info!(%addr, "metrics on http://{addr}/metrics (also /healthz, /readyz)");
        }
        let config = ServeConfig {
            admin: admin.map(|(addr, auth)| app::AdminListen { addr, auth }),
            map_path: args.map.unwrap_or_default(),
            readiness,
            ready_share: args.ready_share,
            fleet: (!args.etcd.is_empty()).then(|| shardgate::fleet::FleetConfig {
                endpoints: args.etcd.clone(),
                cluster: args.cluster.clone(),
                id: args.proxy_id.clone(),
                lease_ttl: Duration::from_secs(args.lease_ttl_secs.max(2)),
            }),
            state_dir: args.state_dir,
            rebalance_sources: args.rebalance_sources.max(1),
            listen: args.listen,
            tls: args.tls_cert.map(|cert| app::TlsListen {
                cert,
                key: args.tls_key.unwrap_or_default(),
                listen: args.tls_listen,
            }),
            client: ClientConfig {
                limits: Limits {
                    max_bulk_len: args.max_bulk_len,
                    max_args: args.max_args.max(1),
                    ..Limits::default()
                },
                max_pipeline: args.max_pipeline.max(1),
                shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
                max_clients: args.max_clients.max(1),
                max_query_buffer: args.max_query_buffer.max(1024),
                idle_timeout: (args.idle_timeout_secs > 0)
                    .then(|| Duration::from_secs(args.idle_timeout_secs)),
                write_stall_timeout: Duration::from_secs(args.write_stall_timeout_secs.max(1)),
                region: args.region,
                zone: args.zone,
                auth,
                auth_timeout: Duration::from_secs(args.auth_timeout_secs.max(1)),
                max_unauthenticated: args.max_unauthenticated_clients.max(1),
                max_auth_failures: args.max_auth_failures.max(1),
                slowlog: shardgate::proxy::slowlog::SlowlogConfig {
                    slower_than_us: args.slowlog_log_slower_than,
                    max_len: args.slowlog_max_len,
                },
                pubsub_output_limit: args.pubsub_output_buffer_limit.max(1024),
                output_limit: shardgate::proxy::OutputLimit {
                    hard: args.output_buffer_hard_limit,
                    soft: args.output_buffer_soft_limit,
                    soft_for: Duration::from_secs(args.output_buffer_soft_seconds),
                },
                maxmemory_clients: args.maxmemory_clients,
                traces: traces.clone(),
            },
        };
        // Installed before the listener opens, so an early SIGHUP never
        // takes the default action (terminating the process).
        #[cfg(unix)]
        let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; map and certificate reload by signal is off");
                None
            }
        };
        let running = match app::start(config).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "shardgate cannot start");
                return ExitCode::FAILURE;
            }
        };
        let reloader = running.reloader();
        tokio::spawn(async move {
            // SIGHUP: re-read the map and the listener's certificate; the
            // outcomes are logged by reload() and reload_tls().
            #[cfg(unix)]
            if let Some(mut hup) = hup {
                while hup.recv().await.is_some() {
                    let _ = reloader.reload().await;
                    let _ = reloader.reload_tls();
                }
            }
            #[cfg(not(unix))]
            drop(reloader);
        });
        let stop = running.shutdown_handle();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: no new clients, finishing in-flight commands");
            let _ = stop.send(true);
        });
        running.wait().await;
        if let Some(traces) = traces {
            // Blocks until the queue is exported (bounded by the exporter's
            // timeout).
            tokio::task::block_in_place(|| traces.shutdown());
        }
        ExitCode::SUCCESS
    });
    // Every client has been served or dropped: the serving threads go.
    workers.stop_all();
    code
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

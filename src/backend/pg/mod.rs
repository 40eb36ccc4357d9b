//! PostgreSQL shards: a shard of `kind: postgres` keeps Redis strings and
//! hashes in the key-value schema of `migrations/`, behind the same
//! [`crate::backend::Endpoint::send`] interface as a Redis endpoint.
//!
//! A request frame goes into its client's *lane* on the endpoint: a task of
//! that client alone, running its requests one after the other, so a
//! client's pipelined requests to one endpoint run in order (SET then GET).
//! A lane runs on its client's serving thread ([`crate::workers::thread_of`])
//! and uses that thread's pool: every serving thread has its own share of
//! the endpoint's `pg_pool_size` connections, opened and driven by that
//! thread alone, so a request, its statements' socket I/O and the reply
//! stay on one thread (as with the multiplexed Redis connections), and the
//! PostgreSQL path scales with the serving threads instead of sharing the
//! one control thread. (Without serving threads, one group runs on the
//! caller's runtime.) Different clients' lanes run concurrently, so a
//! client waiting on a row lock (another transaction holds its key) holds
//! one connection of its thread's pool and delays no other client while
//! the pool has connections left. Three more connections, in a control
//! pool, serve the health check, the reaper and the read-your-writes
//! position prober. A lane starts with its client's first request and
//! ends after [`LANE_IDLE`] without one. Each lane parses the frame, runs
//! the command ([`commands`]) within `command_timeout`, and encodes the
//! [`Reply`] for the client's protocol, so split/merge, fan-out, read
//! policy and metrics work unchanged on mixed maps. A lane also runs a
//! client's WATCH (row versions) and EXEC (the queued commands as one
//! PostgreSQL transaction, [`transaction`]), in order with its other
//! requests. Plain SETs and INCR-family writes go through the thread's
//! group committer ([`batch`]), which commits the writes of many clients
//! in one transaction, and plain GETs through its reader ([`reads`]),
//! which reads the GETs of many clients with one statement; the lane waits
//! for the outcome.
//!
//! At startup the proxy applies the migrations on every primary
//! ([`prepare_primary`]; never on a replica) and starts one [`reaper`] per
//! primary, which deletes expired rows in batches (reads already ignore them).

/// SQL condition: the row has not expired (a macro so that statements can
/// be built with `concat!` as `&'static str`, which sqlx requires).
macro_rules! live {
    () => {
        "(expires_at IS NULL OR expires_at > sg_now_ms())"
    };
}

/// Runs a query on the command's connection: the pool, or inside EXEC the
/// transaction's (`$method`: `fetch_one`, `execute`, ...).
macro_rules! on_db {
    ($ctx:expr, $query:expr, $method:ident) => {
        match $ctx.exec {
            None => $query.$method($ctx.pool).await,
            Some(exec) => {
                let mut tx = super::locked::exec_conn(exec)?;
                $query.$method(&mut **tx).await
            }
        }
    };
}

mod batch;
mod batching;
pub mod commands;
mod hashes;
mod keyspace;
mod locked;
mod options;
mod reads;
pub mod transaction;
mod turns;
pub mod values;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::{mpsc, oneshot};

use crate::backend::EndpointState;
use crate::backend::mux::{Answer, ReplyResult, ReplyRx};
use crate::error::BackendError;
use crate::protocol::{Limits, Protocol, Reply, parse_request};

/// The schema migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Expired rows the reaper deletes per statement.
const REAP_BATCH: i64 = 1000;

/// A client's lane ends after this long without a request (the next one
/// starts it again).
pub const LANE_IDLE: Duration = Duration::from_secs(30);

/// One unit of a lane's work.
enum Job {
    /// A command (one request frame).
    Command {
        frame: Bytes,
        proto: Protocol,
        reply: oneshot::Sender<ReplyResult>,
    },
    /// WATCH: the keys' current versions.
    Watch {
        keys: Vec<Bytes>,
        reply: oneshot::Sender<Result<Vec<Option<i64>>, BackendError>>,
    },
    /// EXEC: the queued commands as one transaction.
    Exec {
        queued: Box<transaction::Queued>,
        proto: Protocol,
        reply: oneshot::Sender<ReplyResult>,
    },
}

/// One PostgreSQL endpoint: its pools and its clients' ordered lanes.
pub struct PgEndpoint {
    lanes: Arc<Lanes>,
    /// The control pool: health checks, position probes, the reaper,
    /// migrations, moves and tests (on the runtime that made the endpoint).
    pool: PgPool,
    /// One per serving thread (one on the caller's runtime when none were
    /// started): the lanes of the thread's clients and its committer run
    /// there, on the group's own pool, so that a connection's socket is
    /// driven by the thread whose tasks use it.
    groups: Vec<Group>,
    /// The endpoint (its DSN without the password), to name it in errors.
    addr: String,
    state: Arc<EndpointState>,
    slots: u32,
}

/// The part of an endpoint that lives on one serving thread (cheap to
/// clone: handles).
#[derive(Clone)]
struct Group {
    /// Where the group's lanes and committer run.
    runtime: tokio::runtime::Handle,
    /// Its share of `pg_pool_size`, plus [`batch::IN_FLIGHT`] connections
    /// for group commit and [`reads::IN_FLIGHT`] for batched reads; opened
    /// by tasks of `runtime` only.
    pool: PgPool,
    /// One turn per connection of `pool`: lanes, the committer's batches
    /// and the reader's take one before they use a connection
    /// ([`turns`]), so that a wait for a busy connection is in arrival
    /// order and bounded by the command timeout, not by the pool.
    turns: turns::Turns,
    /// The thread's group committer ([`batch`]).
    committer: batch::Committer,
    /// The thread's read batcher ([`reads`]).
    reader: reads::Reader,
}

/// The lanes of the clients that sent a request lately, by client id.
type Lanes = Mutex<HashMap<u64, mpsc::UnboundedSender<Job>>>;

/// Connections of the control pool (health check, reaper, position probe).
const CONTROL_CONNECTIONS: u32 = 3;

/// A serving thread's connection idle for longer than this is pinged
/// before it is handed out (one round trip), so that one the database
/// dropped meanwhile (a restart, `idle_session_timeout`) is replaced
/// instead of failing a command. One in use more recently is handed out
/// as it is (if the database dropped it within that second, the one
/// command that gets it fails, as one running when it was dropped does):
/// pinging each one, sqlx's default, cost a round trip per statement,
/// group-commit batch and batched read (5-10% of SET, GET and INCR
/// throughput and of both sides' CPU, BENCHMARKS.md).
const PING_IF_IDLE: Duration = Duration::from_secs(1);

impl PgEndpoint {
    /// Creates the pools (connections open lazily), one group committer
    /// per serving thread, and the (empty) table of lanes. `dsn` was validated
    /// with the map; `slots` is the map's slot count.
    pub fn new(state: Arc<EndpointState>, dsn: &str, slots: u32) -> PgEndpoint {
        let options = PgConnectOptions::from_str(dsn)
            .unwrap_or_else(|e| {
                // Unreachable for a validated map; connect attempts will fail clearly.
                tracing::error!(endpoint = %state.addr, error = %e, "invalid PostgreSQL DSN");
                PgConnectOptions::new().host("invalid.invalid")
            })
            .application_name("shardgate")
            .options([(
                "statement_timeout",
                state.options.command_timeout.as_millis().to_string(),
            )]);
        let options_of = |connections: usize| {
            PgPoolOptions::new()
                .max_connections(u32::try_from(connections).unwrap_or(u32::MAX))
                .min_connections(0)
                .acquire_timeout(state.options.connect_timeout)
        };
        let pool = options_of(CONTROL_CONNECTIONS as usize).connect_lazy_with(options.clone());
        let handles: Vec<tokio::runtime::Handle> = match crate::workers::handles() {
            [] => vec![tokio::runtime::Handle::current()],
            workers => workers.to_vec(),
        };
        // The lanes' connections, split over the threads (each client's
        // lane runs on its thread), plus the committer's and the reader's.
        let share = state.options.pg_pool_size.max(1).div_ceil(handles.len())
            + batch::IN_FLIGHT
            + reads::IN_FLIGHT;
        let slow_waits = turns::SlowWaits::shared();
        let groups = handles
            .into_iter()
            .map(|runtime| {
                // The pool's upkeep task runs on the group's thread.
                let _on = runtime.enter();
                let pool = options_of(share)
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for > PING_IF_IDLE {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_lazy_with(options.clone());
                let turns = turns::Turns::new(state.clone(), share, slow_waits.clone());
                let committer =
                    batch::Committer::start(state.clone(), pool.clone(), turns.clone(), slots);
                let reader = reads::Reader::start(state.clone(), pool.clone(), turns.clone());
                Group {
                    runtime: runtime.clone(),
                    pool,
                    turns,
                    committer,
                    reader,
                }
            })
            .collect();
        PgEndpoint {
            lanes: Arc::default(),
            pool,
            groups,
            addr: state.addr.clone(),
            state,
            slots,
        }
    }

    /// Queues one request frame on the lane of `client`.
    pub fn send(&self, proto: Protocol, client: u64, frame: Bytes) -> ReplyRx {
        let (reply, rx) = oneshot::channel();
        self.queue(
            client,
            Job::Command {
                frame,
                proto,
                reply,
            },
        );
        rx
    }

    /// WATCH on this (primary) endpoint: the current versions of `keys`,
    /// read on the lane of `client` (after its earlier requests).
    pub async fn watch(
        &self,
        client: u64,
        keys: Vec<Bytes>,
    ) -> Result<Vec<Option<i64>>, BackendError> {
        let (reply, rx) = oneshot::channel();
        self.queue(client, Job::Watch { keys, reply });
        rx.await.unwrap_or_else(|_| Err(self.lane_stopped()))
    }

    /// EXEC on this (primary) endpoint (see [`transaction`]): answers the
    /// EXEC reply (an array, or nil when a watched key changed).
    pub fn exec(&self, proto: Protocol, client: u64, queued: transaction::Queued) -> ReplyRx {
        let (reply, rx) = oneshot::channel();
        self.queue(
            client,
            Job::Exec {
                queued: Box::new(queued),
                proto,
                reply,
            },
        );
        rx
    }

    /// Waits until every job queued on any lane before the call has run
    /// (a `PING` queued behind them on each client's lane): the
    /// rebalancer's barrier before the keys of a window move off this
    /// shard. A lane that ended had nothing queued.
    pub async fn barrier(&self) -> Result<(), BackendError> {
        let pings: Vec<ReplyRx> = {
            let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
            lanes
                .values()
                .filter_map(|lane| {
                    let (reply, rx) = oneshot::channel();
                    lane.send(Job::Command {
                        frame: Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"),
                        proto: Protocol::Resp2,
                        reply,
                    })
                    .ok()
                    .map(|()| rx)
                })
                .collect()
        };
        for rx in pings {
            rx.await.unwrap_or_else(|_| Err(self.lane_stopped()))?;
        }
        Ok(())
    }

    /// Queues `job` on `client`'s lane, starting the lane if it has none
    /// (on the client's serving thread, see [`crate::workers::thread_of`]).
    fn queue(&self, client: u64, job: Job) {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let lane = lanes.entry(client).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let group = &self.groups[crate::workers::thread_of(client) % self.groups.len()];
            group.runtime.spawn(lane(
                self.state.clone(),
                group.clone(),
                self.slots,
                client,
                rx,
                Arc::downgrade(&self.lanes),
            ));
            tx
        });
        if let Err(mpsc::error::SendError(job)) = lane.send(job) {
            let e = self.lane_stopped();
            match job {
                Job::Command { reply, .. } | Job::Exec { reply, .. } => {
                    let _ = reply.send(Err(e));
                }
                Job::Watch { reply, .. } => {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    fn lane_stopped(&self) -> BackendError {
        BackendError::ConnectionLost {
            addr: self.addr.clone(),
            reason: "postgres lane stopped".to_owned(),
        }
    }

    /// The endpoint's pool (health checks, migrations, the reaper, tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Runs one client's requests in order; ends after [`LANE_IDLE`] without
/// one (or when the endpoint is dropped).
async fn lane(
    state: Arc<EndpointState>,
    group: Group,
    slots: u32,
    client: u64,
    mut rx: mpsc::UnboundedReceiver<Job>,
    lanes: std::sync::Weak<Lanes>,
) {
    let pool = &group.pool;
    let ctx = commands::Ctx {
        pool,
        slots,
        exec: None,
    };
    loop {
        let job = match tokio::time::timeout(LANE_IDLE, rx.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(_) => {
                // Idle: leave the table, unless a job arrived meanwhile
                // (jobs are queued under the table's lock, so none can
                // arrive once the entry is gone).
                let Some(lanes) = lanes.upgrade() else { return };
                let mut lanes = lanes.lock().unwrap_or_else(|e| e.into_inner());
                if rx.is_empty() {
                    lanes.remove(&client);
                    return;
                }
                continue;
            }
        };
        let started = Instant::now();
        match job {
            Job::Command {
                frame,
                proto,
                reply,
            } => {
                let result = run_one(&state, &ctx, &group, &frame).await;
                let _ = reply.send(answer(&state, started, proto, result));
            }
            Job::Watch { keys, reply } => {
                let result =
                    turns::on_turn(&state, &group.turns, transaction::versions(&ctx, &keys)).await;
                if let Err(e) = &result {
                    failed(&state, e);
                }
                let _ = reply.send(result);
            }
            Job::Exec {
                queued,
                proto,
                reply,
            } => {
                let result = match state.check_lease_fence() {
                    Ok(()) => {
                        let exec = transaction::exec(pool, slots, &queued);
                        turns::on_turn(&state, &group.turns, exec).await
                    }
                    Err(e) => Err(e),
                };
                let result = result.map(|outcome| match outcome {
                    transaction::Outcome::Committed(replies) => {
                        state.metrics.pg_transaction("committed");
                        Reply::Array(replies)
                    }
                    transaction::Outcome::WatchFailed => {
                        state.metrics.pg_transaction("watch_failed");
                        Reply::NilArray
                    }
                });
                if result.is_err() {
                    state.metrics.pg_transaction("error");
                }
                let _ = reply.send(answer(&state, started, proto, result));
            }
        }
    }
}

/// The encoded reply of a finished job (errors counted).
fn answer(
    state: &EndpointState,
    started: Instant,
    proto: Protocol,
    result: Result<Reply, BackendError>,
) -> ReplyResult {
    match result {
        Ok(reply) => {
            let took = started.elapsed();
            state.metrics.request_done(took);
            let mut out = BytesMut::new();
            reply.encode(proto, &mut out);
            Ok(Answer::new(out.freeze(), took))
        }
        Err(e) => {
            failed(state, &e);
            Err(e)
        }
    }
}

/// Counts a failed job (and a lost database, for the breaker).
fn failed(state: &EndpointState, e: &BackendError) {
    state.metrics.backend_error(e.kind());
    if matches!(e, BackendError::Unavailable { .. }) {
        state.connection_failed(e);
    }
}

/// Runs one request frame: a write that group commit takes goes through
/// the thread's committer ([`batch`]), a GET through its reader
/// ([`reads`]), anything else (or a write the committer hands back) on its
/// own.
async fn run_one(
    state: &EndpointState,
    ctx: &commands::Ctx<'_>,
    group: &Group,
    frame: &Bytes,
) -> Result<Reply, BackendError> {
    let mut buf = BytesMut::from(&frame[..]);
    let req = match parse_request(&mut buf, &Limits::default()) {
        Ok(Some(req)) => req,
        _ => {
            return Err(BackendError::Protocol {
                addr: state.addr.clone(),
                reason: "the proxy sent a request the postgres endpoint cannot parse".to_owned(),
            });
        }
    };
    let args = req.args();
    // Routed before this proxy's lease fence closed (see `fence::Fence`):
    // not run. (Batched reads and writes check again before their batch.)
    state.check_lease_fence()?;
    if let Some(key) = reads::get_key(args) {
        return group.reader.get(key.clone()).await;
    }
    // Held while the command runs on its own: its committer may wait (a
    // while) for it, so that writes arriving meanwhile form a batch.
    let _alone = match batch::Op::of(args) {
        Some(op) => match group.committer.run(op).await {
            batch::Outcome::Done(result) => return result,
            batch::Outcome::Alone(done) => done,
        },
        None => None,
    };
    turns::on_turn(state, &group.turns, commands::execute(ctx, args)).await
}

/// Maps a driver error to the proxy's [`BackendError`] kinds.
pub fn backend_error(addr: &str, e: sqlx::Error) -> BackendError {
    let addr = addr.to_owned();
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Configuration(_) => BackendError::Unavailable {
            addr,
            reason: e.to_string(),
        },
        // The server ended the connection (a shutdown or restart, an
        // idle-session timeout, pg_terminate_backend): it reports that as
        // an error of the next statement on it.
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) =>
        {
            BackendError::ConnectionLost {
                addr,
                reason: db.to_string(),
            }
        }
        sqlx::Error::Database(db) => BackendError::Query {
            addr,
            reason: db.to_string(),
        },
        other => BackendError::Protocol {
            addr,
            reason: other.to_string(),
        },
    }
}

/// Waits (at most `limit`) until no connection of an earlier shardgate
/// process is left on this primary: a backend of application `shardgate`
/// that started before this pool's first connection. A killed proxy's
/// statements already sent keep running after it died (the `SET` of a key
/// being copied, say), even one still unread in its backend's socket (that
/// backend looks idle); each such backend ends once it has run them and
/// reads the closed socket. A restarted proxy that resumes a rebalance
/// waits for them before it serves, so that none lands after it moved the
/// key again. Call it first on a new pool (so that its connection is the
/// process's first). Returns whether none was left (false: timed out, for
/// example because another proxy uses this database, or the query failed).
pub async fn wait_previous_statements(pool: &PgPool, limit: Duration) -> bool {
    const LEFT: &str = "SELECT count(*) FROM pg_stat_activity \
         WHERE application_name = 'shardgate' AND pid <> pg_backend_pid() \
         AND backend_start < (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())";
    let started = Instant::now();
    loop {
        match sqlx::query_scalar::<_, i64>(LEFT).fetch_one(pool).await {
            Ok(0) => return true,
            Ok(_) if started.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(_) | Err(_) => return false,
        }
    }
}

/// Why a PostgreSQL primary could not be prepared (connected to and
/// migrated). Never contains the DSN's password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgSetupError {
    #[error("invalid DSN: {0}")]
    InvalidDsn(String),
    #[error("cannot connect (timed out)")]
    ConnectTimeout,
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A migration failed (the database's error).
    #[error("{0}")]
    Migration(String),
    #[error("migrations did not finish within {millis} ms")]
    TooSlow { millis: u128 },
}

/// Connects to a primary and applies the migrations (each at most once;
/// sqlx serialises concurrent migrators with an advisory lock). Bounded by
/// the connect timeout plus time for the DDL.
pub async fn prepare_primary(state: &EndpointState, pool: &PgPool) -> Result<(), PgSetupError> {
    let limit = state.options.connect_timeout + Duration::from_secs(30);
    match tokio::time::timeout(limit, MIGRATOR.run(pool)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(migrate_error(e)),
        Err(_) => Err(PgSetupError::TooSlow {
            millis: limit.as_millis(),
        }),
    }
}

/// Applies the migrations to one PostgreSQL primary outside a running proxy
/// (`shardgate admin migrate`). Returns how many were applied now and how
/// many the database has in all. Errors never contain the DSN's password.
pub async fn migrate_primary(
    dsn: &str,
    connect_timeout: Duration,
) -> Result<(i64, i64), PgSetupError> {
    let options = PgConnectOptions::from_str(dsn)
        .map_err(|e| PgSetupError::InvalidDsn(e.to_string()))?
        .application_name("shardgate-migrate");
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(connect_timeout)
        .connect_with(options)
        .await
        .map_err(|e| match e {
            sqlx::Error::PoolTimedOut => PgSetupError::ConnectTimeout,
            other => PgSetupError::Connect(other.to_string()),
        })?;
    let before = applied_migrations(&pool).await;
    let limit = connect_timeout + Duration::from_secs(60);
    let result = tokio::time::timeout(limit, MIGRATOR.run(&pool)).await;
    let after = applied_migrations(&pool).await;
    pool.close().await;
    match result {
        Ok(Ok(())) => Ok((after - before, after)),
        Ok(Err(e)) => Err(migrate_error(e)),
        Err(_) => Err(PgSetupError::TooSlow {
            millis: limit.as_millis(),
        }),
    }
}

/// Rows of sqlx's bookkeeping table (0 before the first migration).
async fn applied_migrations(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

fn migrate_error(e: sqlx::migrate::MigrateError) -> PgSetupError {
    match e {
        sqlx::migrate::MigrateError::Execute(inner) => match inner {
            sqlx::Error::PoolTimedOut => PgSetupError::ConnectTimeout,
            other => PgSetupError::Migration(other.to_string()),
        },
        other => PgSetupError::Migration(other.to_string()),
    }
}

/// One health check: a primary answers `SELECT 1`; a replica must be in
/// recovery with its WAL receiver streaming and replay within `max_lag`.
pub async fn check_health(
    state: &EndpointState,
    pool: &PgPool,
) -> Result<(), crate::error::Unhealthy> {
    use crate::error::Unhealthy;
    let primary = state.role == crate::backend::Role::Primary;
    // The fourth column is the replication position (see `probe_position`).
    let sql = if primary {
        // (A primary in recovery would fail the WAL function: no position.)
        "SELECT true, 'streaming'::text, 0::bigint, \
                CASE WHEN pg_is_in_recovery() THEN NULL \
                     ELSE (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint END"
    } else {
        "SELECT pg_is_in_recovery(), \
                (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
                CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
                     ELSE COALESCE((extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::bigint, 0) END, \
                (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"
    };
    let sent = std::time::Instant::now();
    let row: (bool, Option<String>, i64, Option<i64>) =
        sqlx::query_as(sql)
            .fetch_one(pool)
            .await
            .map_err(|e| Unhealthy::Failed(e.to_string()))?;
    record_position(state, sent, row.3);
    if primary {
        return Ok(());
    }
    match row {
        (false, _, _, _) => Err(Unhealthy::NotStandby),
        (true, status, _, _) if status.as_deref() != Some("streaming") => Err(
            Unhealthy::NotStreaming(status.unwrap_or_else(|| "none".to_owned())),
        ),
        (true, _, lag, _)
            if u128::try_from(lag).unwrap_or(0) > state.options.max_replica_lag.as_millis() =>
        {
            Err(Unhealthy::ReplayBehind { millis: lag })
        }
        _ => Ok(()),
    }
}

/// One on-demand replication-position probe (read-your-writes, see
/// [`crate::backend::lag::Positions`]): on the primary the WAL insert
/// position, which is past the commit record of every transaction that has
/// committed (whatever `synchronous_commit` says; the write position may
/// not be, with it off); on a standby the replay position, up to which its
/// queries see every commit. Whether it got one.
pub async fn probe_position(state: &EndpointState, pool: &PgPool) -> bool {
    let sql = match state.role {
        crate::backend::Role::Primary => {
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"
        }
        crate::backend::Role::Replica => {
            "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint"
        }
    };
    let limit = state
        .options
        .connect_timeout
        .max(std::time::Duration::from_millis(100));
    let sent = std::time::Instant::now();
    match tokio::time::timeout(
        limit,
        sqlx::query_scalar::<_, Option<i64>>(sql).fetch_one(pool),
    )
    .await
    {
        Ok(Ok(Some(position))) => {
            record_position(state, sent, Some(position));
            true
        }
        _ => false,
    }
}

/// Keeps a probe's position (sent at `sent`) in the endpoint's positions.
fn record_position(state: &EndpointState, sent: std::time::Instant, position: Option<i64>) {
    let Some(position) = position.and_then(|p| u64::try_from(p).ok()) else {
        return;
    };
    match state.role {
        crate::backend::Role::Primary => state.positions.record(sent, position),
        crate::backend::Role::Replica => state.positions.set_applied(position),
    }
}

/// Starts one [`reaper`] per PostgreSQL primary among `endpoints` (at start,
/// and for the endpoints a reload or a fleet state adds); they stop with
/// `shutdown`.
pub fn spawn_reapers(
    endpoints: &[Arc<super::Endpoint>],
    shutdown: &tokio::sync::watch::Sender<bool>,
) {
    for e in endpoints {
        if let (Some(pg), super::Role::Primary) = (e.postgres(), e.state.role) {
            tokio::spawn(reaper(
                e.state.addr.clone(),
                pg.pool().clone(),
                e.state.options.health_check_interval,
                shutdown.subscribe(),
            ));
        }
    }
}

/// Deletes expired rows of one primary in batches, every `interval`, until
/// `shutdown` fires. The `expires_at <= now` test is repeated on the row
/// itself, so a key rewritten since the batch was chosen is never deleted.
/// The batch skips rows a writer has locked (`SKIP LOCKED`) and takes no key
/// lock: the reaper never waits for a writer, so a multi-key writer that
/// waits for one of the reaper's rows cannot deadlock with it; a skipped row
/// is either rewritten by that writer or reaped on a later pass.
pub async fn reaper(
    addr: String,
    pool: PgPool,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let sql = "DELETE FROM kv WHERE kd IN \
               (SELECT kd FROM kv WHERE expires_at <= sg_now_ms() LIMIT $1 FOR UPDATE SKIP LOCKED) \
               AND expires_at <= sg_now_ms()";
    loop {
        loop {
            match sqlx::query(sql).bind(REAP_BATCH).execute(&pool).await {
                Ok(done) if done.rows_affected() >= REAP_BATCH as u64 => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(endpoint = %addr, error = %e, "reaper pass failed; retrying later");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

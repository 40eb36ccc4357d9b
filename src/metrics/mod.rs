//! Metrics, declared once, recorded through a facade of verbs.
//!
//! Every metric name, its help text and its labels are in [`DESCRIPTIONS`];
//! labels are bounded (command names come from the command table, shard and
//! endpoint names from the shard map). Handles are registered once and kept
//! in [`Metrics`] / [`EndpointMetrics`], so recording is never a registry
//! lookup. The metrics every request updates live in [`hot`] (per-thread
//! rows, no shared cache line); the rest go through the `metrics` facade to
//! the Prometheus exporter. [`http`] serves both at `/metrics`; it and the
//! exporter are installed by `app` only (without the exporter its handles
//! are no-ops, so tests can build as many proxies as they like in one
//! process).

pub mod hot;
pub mod http;
mod names;

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};

use crate::command::{CommandSpec, table::COMMANDS};

pub use names::*;

/// Proxy-wide handles, built once and shared by every client connection.
pub struct Metrics {
    hot: Arc<hot::ProxyCounters>,
    client_connections: Gauge,
    client_connections_total: Counter,
    /// Per serving thread (one entry when there are none).
    thread_clients: Vec<Gauge>,
    protocol_errors: Counter,
    limit_closes: [Counter; 11],
    _map_reloads: [Counter; 2],
    _admin_reloads: [Counter; 2],
    auth_failures: [Counter; 3],
    rebalance_slots: [Gauge; 3],
    rebalance_keys: [Counter; 2],
    rebalance_reads: [Counter; 3],
    rebalance_touch_waits: Counter,
    rebalance_bytes: Counter,
    rebalance_errors: [Counter; 5],
    rebalance_running: Gauge,
    rebalance_throttle: Gauge,
    rebalance_small_bursts: Gauge,
    rebalance_sources_moving: Gauge,
    rebalance_misplaced: Gauge,
    rebalance_verified: Gauge,
    _build_info: Gauge,
    _panics: Counter,
    fleet_proxies: Gauge,
    fleet_proxies_serving: Gauge,
    fleet_fenced: Gauge,
    fleet_leader: Gauge,
    fleet_renewals: [Counter; 2],
    fleet_ack_wait: metrics::Histogram,
    fleet_key_claims: [Counter; 3],
    fleet_state_watches: [Counter; 2],
    blocked_clients: Gauge,
    paused_clients: Gauge,
    client_unblocks: [Counter; 2],
    slowlog_entries: Counter,
    slowlog_length: Gauge,
    /// Keys moved on touch since start (also shown by the admin STATUS).
    touch_moves: std::sync::atomic::AtomicU64,
    pubsub_subscriptions: [Gauge; 3],
    pubsub_messages: Counter,
    pubsub_links: Gauge,
    /// [user requests, user bytes, address requests, address bytes].
    rate_limited: [Counter; 4],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every hot-path handle with the current recorder.
    pub fn new() -> Metrics {
        Metrics {
            hot: hot::proxy(),
            client_connections: gauge!(CLIENT_CONNECTIONS),
            client_connections_total: counter!(CLIENT_CONNECTIONS_TOTAL),
            thread_clients: (0..crate::workers::handles().len().max(1))
                .map(|t| gauge!(SERVING_THREAD_CLIENTS, "thread" => t.to_string()))
                .collect(),
            protocol_errors: counter!(CLIENT_PROTOCOL_ERRORS),
            limit_closes: LIMIT_REASONS.map(|r| counter!(CLIENT_LIMIT_CLOSES, "reason" => r)),
            // Registered up front so that both series exist (at 0) from the start.
            _map_reloads: ["ok", "refused"].map(|o| counter!(MAP_RELOADS, "outcome" => o)),
            _admin_reloads: ["ok", "error"]
                .map(|o| counter!(ADMIN_COMMANDS, "command" => "reload", "outcome" => o)),
            auth_failures: AUTH_FAILURE_REASONS.map(|r| counter!(AUTH_FAILURES, "reason" => r)),
            rebalance_slots: SLOT_STATES.map(|s| gauge!(REBALANCE_SLOTS, "state" => s)),
            rebalance_keys: ["mover", "touch"].map(|h| counter!(REBALANCE_KEYS, "how" => h)),
            rebalance_reads: READ_FOUND.map(|f| counter!(REBALANCE_READS, "found" => f)),
            rebalance_touch_waits: counter!(REBALANCE_TOUCH_WAITS),
            rebalance_bytes: counter!(REBALANCE_BYTES),
            rebalance_errors: REBALANCE_STAGES.map(|s| counter!(REBALANCE_ERRORS, "stage" => s)),
            rebalance_running: gauge!(REBALANCE_RUNNING),
            rebalance_throttle: gauge!(REBALANCE_THROTTLE),
            rebalance_small_bursts: gauge!(REBALANCE_SMALL_BURSTS),
            rebalance_sources_moving: gauge!(REBALANCE_SOURCES_MOVING),
            rebalance_misplaced: gauge!(REBALANCE_MISPLACED),
            rebalance_verified: gauge!(REBALANCE_VERIFIED),
            _build_info: {
                let g = gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"));
                g.set(1.0);
                g
            },
            _panics: counter!(PANICS),
            fleet_proxies: gauge!(FLEET_PROXIES),
            fleet_proxies_serving: gauge!(FLEET_PROXIES_SERVING),
            fleet_fenced: gauge!(FLEET_FENCED),
            fleet_leader: gauge!(FLEET_LEADER),
            fleet_renewals: ["ok", "error"].map(|o| counter!(FLEET_LEASE_RENEWALS, "outcome" => o)),
            fleet_ack_wait: metrics::histogram!(FLEET_ACK_WAIT),
            fleet_key_claims: ["taken", "waited", "failed"]
                .map(|o| counter!(FLEET_KEY_CLAIMS, "outcome" => o)),
            fleet_state_watches: ["published", "compaction"]
                .map(|s| counter!(FLEET_STATE_WATCHES, "start" => s)),
            blocked_clients: gauge!(BLOCKED_CLIENTS),
            paused_clients: gauge!(PAUSED_CLIENTS),
            client_unblocks: ["timeout", "error"].map(|m| counter!(CLIENT_UNBLOCKS, "mode" => m)),
            slowlog_entries: counter!(SLOWLOG_ENTRIES),
            slowlog_length: gauge!(SLOWLOG_LENGTH),
            touch_moves: std::sync::atomic::AtomicU64::new(0),
            pubsub_subscriptions: ["channel", "pattern", "shard"]
                .map(|k| gauge!(PUBSUB_SUBSCRIPTIONS, "kind" => k)),
            pubsub_messages: counter!(PUBSUB_MESSAGES),
            pubsub_links: gauge!(PUBSUB_LINKS),
            rate_limited: [
                ("user", "requests"),
                ("user", "bytes"),
                ("address", "requests"),
                ("address", "bytes"),
            ]
            .map(|(s, l)| counter!(RATE_LIMITED, "scope" => s, "limit" => l)),
        }
    }

    /// A client's subscriptions of kind `kind` (0 channel, 1 pattern, 2
    /// shard) changed by `delta`.
    pub fn pubsub_subscriptions(&self, kind: usize, delta: f64) {
        if let Some(g) = self.pubsub_subscriptions.get(kind) {
            g.increment(delta);
        }
    }

    /// A request was refused by a rate limit of a user (else an address),
    /// for its bytes (else its count).
    pub fn rate_limited(&self, user: bool, bytes: bool) {
        self.rate_limited[usize::from(!user) * 2 + usize::from(bytes)].increment(1);
    }

    /// `n` pub/sub messages were written to a client.
    pub fn pubsub_delivered(&self, n: u64) {
        self.pubsub_messages.increment(n);
    }

    /// A subscriber connection of the pub/sub hub came up (+1) or went down (-1).
    pub fn pubsub_link(&self, delta: f64) {
        self.pubsub_links.increment(delta);
    }

    /// The pub/sub hub tried to connect to `shard` (rare: the series is
    /// looked up per call, and exists once a shard had subscriptions).
    pub fn pubsub_link_connect(&self, shard: &str, ok: bool) {
        counter!(PUBSUB_LINK_CONNECTS, "shard" => shard.to_owned(), "outcome" => if ok { "ok" } else { "error" })
            .increment(1);
    }

    /// A client command moved `n` keys of migrating slots before running.
    pub fn rebalance_moved_on_touch(&self, n: u64) {
        self.rebalance_keys[1].increment(n);
        self.touch_moves
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Keys moved on touch since the proxy started.
    pub fn moved_on_touch(&self) -> u64 {
        self.touch_moves.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A read of a key in a migrating slot was answered without moving
    /// the key; `found` is one of [`READ_FOUND`].
    pub fn rebalance_read(&self, found: &'static str) {
        if let Some(i) = READ_FOUND.iter().position(|f| *f == found) {
            self.rebalance_reads[i].increment(1);
        }
    }

    /// A command's move of a key had to ask again, the mover copying that
    /// key (see [`REBALANCE_TOUCH_WAITS`]).
    pub fn rebalance_touch_waited(&self) {
        self.rebalance_touch_waits.increment(1);
    }

    /// The mover moved `keys` keys of `bytes` bytes.
    pub fn rebalance_moved(&self, keys: u64, bytes: u64) {
        self.rebalance_keys[0].increment(keys);
        self.rebalance_bytes.increment(bytes);
    }

    /// A rebalancing step failed (`mover`, `touch`, `barrier`, `verify`), or
    /// a key could not move to its target (`unsupported`).
    pub fn rebalance_mover_error(&self, stage: &'static str) {
        if let Some(i) = REBALANCE_STAGES.iter().position(|s| *s == stage) {
            self.rebalance_errors[i].increment(1);
        }
    }

    /// Slot counts of the rebalance and whether it runs.
    pub fn rebalance_slots(&self, pending: usize, migrating: usize, done: usize, running: bool) {
        for (g, v) in self.rebalance_slots.iter().zip([pending, migrating, done]) {
            g.set(v as f64);
        }
        self.rebalance_running.set(if running { 1.0 } else { 0.0 });
    }

    /// The mover's throttle, keys per second (0: none).
    pub fn rebalance_throttle(&self, keys_per_sec: u64) {
        self.rebalance_throttle.set(keys_per_sec as f64);
    }

    /// Whether the mover takes small bursts.
    pub fn rebalance_small_bursts(&self, small: bool) {
        self.rebalance_small_bursts
            .set(if small { 1.0 } else { 0.0 });
    }

    /// Source shards the mover walks at once.
    pub fn rebalance_sources_moving(&self, n: usize) {
        self.rebalance_sources_moving.set(n as f64);
    }

    /// Live proxies of the fleet, as last listed.
    pub fn fleet_proxies(&self, n: usize) {
        self.fleet_proxies.set(n as f64);
    }

    /// Proxies of the fleet that say they serve clients.
    pub fn fleet_proxies_serving(&self, n: usize) {
        self.fleet_proxies_serving.set(n as f64);
    }

    /// Whether this proxy is fenced (routes no keys).
    pub fn fleet_fenced(&self, fenced: bool) {
        self.fleet_fenced.set(if fenced { 1.0 } else { 0.0 });
    }

    /// Whether this proxy holds the mover's election.
    pub fn fleet_leader(&self, leader: bool) {
        self.fleet_leader.set(if leader { 1.0 } else { 0.0 });
    }

    /// A lease renewal finished.
    pub fn fleet_lease_renewal(&self, ok: bool) {
        self.fleet_renewals[usize::from(!ok)].increment(1);
    }

    /// The mover waited `waited` for every proxy's acknowledgement.
    pub fn fleet_ack_wait(&self, waited: Duration) {
        self.fleet_ack_wait.record(waited.as_secs_f64());
    }

    /// A key claim in etcd: `taken`, `waited` or `failed`.
    pub fn fleet_key_claim(&self, outcome: &str) {
        let i = match outcome {
            "taken" => 0,
            "waited" => 1,
            _ => 2,
        };
        self.fleet_key_claims[i].increment(1);
    }

    /// A watch of the fleet state started: after the state this proxy
    /// published, or from etcd's compaction revision.
    pub fn fleet_state_watch(&self, from_compaction: bool) {
        self.fleet_state_watches[usize::from(from_compaction)].increment(1);
    }

    /// The outcome of a rebalance verification.
    pub fn rebalance_verified(&self, ok: bool, misplaced: u64) {
        self.rebalance_verified.set(if ok { 1.0 } else { 0.0 });
        self.rebalance_misplaced.set(misplaced as f64);
    }

    /// Counts one finished command and its latency (a few relaxed atomics
    /// on this thread's row: no lock, no allocation).
    pub fn command_done(
        &self,
        spec: Option<&'static CommandSpec>,
        outcome: hot::Outcome,
        elapsed: Duration,
    ) {
        let i = spec.and_then(command_index).unwrap_or(hot::UNKNOWN_COMMAND);
        self.hot
            .commands
            .add(hot::OUTCOMES * i + outcome as usize, 1);
        if let Some(h) = self.hot.command_duration.get(i) {
            h.record(elapsed);
        }
    }

    /// A client entered (+1) or left (-1) a blocking command.
    pub fn blocked_delta(&self, delta: f64) {
        self.blocked_clients.increment(delta);
    }

    /// A client began (+1) or ended (-1) waiting for a `CLIENT PAUSE`.
    pub fn paused_delta(&self, delta: f64) {
        self.paused_clients.increment(delta);
    }

    /// A `CLIENT UNBLOCK` of a blocked client (`error`: ERROR mode).
    pub fn client_unblocked(&self, error: bool) {
        self.client_unblocks[usize::from(error)].increment(1);
    }

    /// A command went into the slow log, which now holds `len` entries.
    pub fn slowlog_entry(&self, len: usize) {
        self.slowlog_entries.increment(1);
        self.slowlog_length.set(len as f64);
    }

    /// A request was traced, for `reason` (slow, error).
    pub fn trace_span(&self, reason: &'static str) {
        metrics::counter!(TRACE_SPANS, "reason" => reason).increment(1);
    }

    /// The slow log was emptied (SLOWLOG RESET).
    pub fn slowlog_reset(&self) {
        self.slowlog_length.set(0.0);
    }

    /// A client connected; it is served on serving thread `thread`.
    pub fn client_connected(&self, thread: usize) {
        self.client_connections.increment(1.0);
        self.client_connections_total.increment(1);
        if let Some(g) = self.thread_clients.get(thread) {
            g.increment(1.0);
        }
    }

    /// A client of serving thread `thread` disconnected.
    pub fn client_disconnected(&self, thread: usize) {
        self.client_connections.decrement(1.0);
        if let Some(g) = self.thread_clients.get(thread) {
            g.decrement(1.0);
        }
    }

    /// A client was disconnected for sending a malformed frame.
    pub fn client_protocol_error(&self) {
        self.protocol_errors.increment(1);
    }

    /// A client was refused or closed because of a limit (`max_clients`,
    /// `idle_timeout`, `slow_reader`).
    pub fn client_limit_close(&self, reason: &'static str) {
        if let Some(i) = LIMIT_REASONS.iter().position(|r| *r == reason) {
            self.limit_closes[i].increment(1);
        }
    }

    /// A login or a command was refused (`wrongpass`, `noauth`, `noperm`).
    pub fn auth_failure(&self, reason: &'static str) {
        if let Some(i) = AUTH_FAILURE_REASONS.iter().position(|r| *r == reason) {
            self.auth_failures[i].increment(1);
        }
    }

    /// A command on the admin listener (names outside the admin set are
    /// counted as `unknown`, so labels stay bounded).
    pub fn admin_command(&self, name: &str, ok: bool) {
        const KNOWN: [&str; 13] = [
            "AUTH",
            "PING",
            "HELP",
            "STATUS",
            "RELOAD",
            "QUIT",
            "COMMAND",
            "PLAN",
            "REBALANCE",
            "PROGRESS",
            "PAUSE",
            "RESUME",
            "THROTTLE",
        ];
        let command = KNOWN.iter().find(|k| **k == name).map_or("unknown", |k| k);
        let outcome = if ok { "ok" } else { "error" };
        counter!(ADMIN_COMMANDS, "command" => command.to_ascii_lowercase(), "outcome" => outcome)
            .increment(1);
    }

    /// A map reload finished (`ok` or `refused`).
    pub fn map_reload(&self, outcome: &'static str) {
        counter!(MAP_RELOADS, "outcome" => outcome).increment(1);
    }

    /// The client listener speaks TLS: both series of its reloads exist (at
    /// 0) from the start.
    pub fn tls_listener(&self) {
        for outcome in ["ok", "refused"] {
            counter!(TLS_RELOADS, "outcome" => outcome).increment(0);
        }
    }

    /// A reload of the client listener's certificate: `ok` or `refused`.
    pub fn tls_reload(&self, outcome: &'static str) {
        counter!(TLS_RELOADS, "outcome" => outcome).increment(1);
    }

    /// The client listener's certificate now in use expires at `at` (Unix
    /// seconds).
    pub fn tls_cert_expiry(&self, at: i64) {
        gauge!(TLS_CERT_EXPIRY).set(at as f64);
    }

    /// The routing table with this epoch is now in use.
    pub fn map_epoch(&self, epoch: u64) {
        gauge!(MAP_EPOCH).set(epoch as f64);
    }

    /// Registers the series of a shard that follows Sentinel (at 0), so
    /// they exist before the first switch.
    pub fn sentinel_shard(&self, shard: &str, sentinels: &[String]) {
        counter!(SENTINEL_SWITCHES, "shard" => shard.to_owned()).increment(0);
        for s in sentinels {
            gauge!(SENTINEL_UP, "shard" => shard.to_owned(), "sentinel" => s.clone())
                .increment(0.0);
        }
    }

    /// Sentinel named a new primary for `shard` and it is in use.
    pub fn sentinel_switch(&self, shard: &str) {
        counter!(SENTINEL_SWITCHES, "shard" => shard.to_owned()).increment(1);
    }

    /// Whether `sentinel` answered the last check of `shard`'s master.
    pub fn sentinel_up(&self, shard: &str, sentinel: &str, up: bool) {
        gauge!(SENTINEL_UP, "shard" => shard.to_owned(), "sentinel" => sentinel.to_owned())
            .set(if up { 1.0 } else { 0.0 });
    }
}

/// Position of a table row, derived from its address (rows are never copied
/// out of the static table by `lookup`).
pub fn command_index(spec: &'static CommandSpec) -> Option<usize> {
    let base = COMMANDS.as_ptr() as usize;
    let addr = spec as *const CommandSpec as usize;
    let size = std::mem::size_of::<CommandSpec>().max(1);
    let idx = addr.checked_sub(base)? / size;
    (idx < COMMANDS.len()).then_some(idx)
}

/// Handles for the near cache of one shard (see `backend::cache`).
pub struct NearCacheMetrics {
    bypasses: Counter,
    hits: Counter,
    confirmed: Counter,
    misses: Counter,
    invalidations: Counter,
    flushes: Counter,
    barriers: Counter,
    fills_dropped: Counter,
    bytes: Gauge,
    entries: Gauge,
}

impl NearCacheMetrics {
    pub fn new(shard: &str) -> NearCacheMetrics {
        let s = shard.to_owned();
        let reads = |result: &'static str| counter!(NEAR_CACHE_READS, "shard" => s.clone(), "result" => result);
        NearCacheMetrics {
            bypasses: reads("bypass"),
            hits: reads("hit"),
            confirmed: reads("confirmed_hit"),
            misses: reads("miss"),
            invalidations: counter!(NEAR_CACHE_INVALIDATIONS, "shard" => s.clone()),
            flushes: counter!(NEAR_CACHE_FLUSHES, "shard" => s.clone()),
            barriers: counter!(NEAR_CACHE_BARRIERS, "shard" => s.clone()),
            fills_dropped: counter!(NEAR_CACHE_FILLS_DROPPED, "shard" => s.clone()),
            bytes: gauge!(NEAR_CACHE_BYTES, "shard" => s.clone()),
            entries: gauge!(NEAR_CACHE_ENTRIES, "shard" => s),
        }
    }

    pub fn hit(&self) {
        self.hits.increment(1);
    }

    pub fn bypass(&self) {
        self.bypasses.increment(1);
    }

    pub fn confirmed_hit(&self) {
        self.confirmed.increment(1);
    }

    pub fn miss(&self) {
        self.misses.increment(1);
    }

    pub fn invalidated(&self, keys: u64) {
        self.invalidations.increment(keys);
    }

    pub fn flushed(&self) {
        self.flushes.increment(1);
    }

    pub fn barrier(&self) {
        self.barriers.increment(1);
    }

    pub fn fill_dropped(&self) {
        self.fills_dropped.increment(1);
    }

    pub fn set_size(&self, bytes: u64, entries: usize) {
        self.bytes.set(bytes as f64);
        self.entries.set(entries as f64);
    }
}

/// Handles for one backend endpoint.
#[derive(Clone)]
pub struct EndpointMetrics {
    shard: String,
    endpoint: String,
    role: &'static str,
    hot: Arc<hot::EndpointCounters>,
    connections: Gauge,
    dedicated_in_use: Gauge,
    healthy: Gauge,
    circuit_open: Gauge,
    circuit_trips: Counter,
    /// Replicas only.
    replica_lag: Option<Gauge>,
    /// Primaries only: [`READ_YOUR_WRITES_PRIMARY_READS`] by
    /// [`OWN_WRITE_REASONS`].
    own_write_reads: Option<[Counter; 3]>,
    position_probes: Counter,
}

impl EndpointMetrics {
    /// Registers the handles of endpoint `addr` of `shard` (role: primary/replica).
    pub fn new(shard: &str, addr: &str, role: &'static str) -> EndpointMetrics {
        let (s, e) = (shard.to_owned(), addr.to_owned());
        EndpointMetrics {
            hot: hot::endpoint(&s, &e, role),
            connections: gauge!(BACKEND_CONNECTIONS, "shard" => s.clone(), "endpoint" => e.clone()),
            dedicated_in_use: gauge!(DEDICATED_IN_USE, "shard" => s.clone(), "endpoint" => e.clone()),
            healthy: gauge!(ENDPOINT_HEALTHY, "shard" => s.clone(), "endpoint" => e.clone(), "role" => role),
            circuit_open: gauge!(CIRCUIT_OPEN, "shard" => s.clone(), "endpoint" => e.clone()),
            circuit_trips: counter!(CIRCUIT_TRIPS, "shard" => s.clone(), "endpoint" => e.clone()),
            replica_lag: (role == "replica").then(
                || gauge!(REPLICA_LAG_SECONDS, "shard" => s.clone(), "endpoint" => e.clone()),
            ),
            own_write_reads: (role == "primary").then(|| {
                OWN_WRITE_REASONS.map(|r| counter!(READ_YOUR_WRITES_PRIMARY_READS, "shard" => s.clone(), "reason" => r))
            }),
            position_probes: counter!(POSITION_PROBES, "shard" => s.clone(), "endpoint" => e.clone()),
            shard: s,
            endpoint: e,
            role,
        }
    }

    /// A read went to this primary because of its client's own writes
    /// (`reason` one of [`OWN_WRITE_REASONS`]).
    pub fn own_write_primary_read(&self, reason: &'static str) {
        if let (Some(c), Some(i)) = (
            &self.own_write_reads,
            OWN_WRITE_REASONS.iter().position(|r| *r == reason),
        ) {
            c[i].increment(1);
        }
    }

    /// An on-demand replication-position probe was sent.
    pub fn position_probe(&self) {
        self.position_probes.increment(1);
    }

    /// One request's backend round trip.
    pub fn request_done(&self, elapsed: Duration) {
        self.hot.duration.record(elapsed);
    }

    /// A read was sent to this endpoint.
    pub fn read_served(&self) {
        self.hot.reads.add(0, 1);
    }

    /// A coalescable read had outcome `outcome` (an index into
    /// [`COALESCE_OUTCOMES`]).
    pub fn coalesced_read(&self, outcome: usize) {
        if outcome < COALESCE_OUTCOMES.len() {
            self.hot.reads.add(1 + outcome, 1);
        }
    }

    /// A backend failure of the given kind.
    pub fn backend_error(&self, kind: &'static str) {
        counter!(BACKEND_ERRORS, "shard" => self.shard.clone(), "endpoint" => self.endpoint.clone(),
            "role" => self.role, "kind" => kind)
        .increment(1);
    }

    /// An EXEC on this PostgreSQL endpoint ended with `outcome` (one of
    /// [`PG_TRANSACTION_OUTCOMES`]).
    pub fn pg_transaction(&self, outcome: &'static str) {
        counter!(PG_TRANSACTIONS, "shard" => self.shard.clone(), "endpoint" => self.endpoint.clone(),
            "outcome" => outcome)
        .increment(1);
    }

    /// A group-commit batch of `commands` commands committed on this
    /// PostgreSQL endpoint.
    pub fn pg_batch(&self, commands: usize) {
        metrics::histogram!(PG_BATCH_COMMANDS, "shard" => self.shard.clone(), "endpoint" => self.endpoint.clone())
            .record(commands as f64);
    }

    /// A batched read statement of `commands` GETs ran on this PostgreSQL
    /// endpoint.
    pub fn pg_read_batch(&self, commands: usize) {
        metrics::histogram!(PG_READ_BATCH_COMMANDS, "shard" => self.shard.clone(), "endpoint" => self.endpoint.clone())
            .record(commands as f64);
    }

    /// A command (or batch) on this PostgreSQL endpoint waited `waited` for
    /// one of its serving thread's connections.
    pub fn pg_connection_wait(&self, waited: Duration) {
        metrics::histogram!(PG_CONNECTION_WAIT_SECONDS, "shard" => self.shard.clone(), "endpoint" => self.endpoint.clone())
            .record(waited.as_secs_f64());
    }

    /// `commands` writes offered to group commit ended with `outcome` (one
    /// of [`PG_GROUP_COMMIT_OUTCOMES`]).
    pub fn pg_group_commit(&self, outcome: &'static str, commands: usize) {
        counter!(PG_GROUP_COMMIT, "shard" => self.shard.clone(), "endpoint" => self.endpoint.clone(),
            "outcome" => outcome)
        .increment(commands as u64);
    }

    /// An install of the backend ACL users finished.
    pub fn acl_sync(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        counter!(BACKEND_ACL_SYNCS, "shard" => self.shard.clone(), "endpoint" => self.endpoint.clone(),
            "outcome" => outcome)
        .increment(1);
    }

    /// A connection attempt finished.
    pub fn connect_attempt(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        counter!(BACKEND_CONNECTS, "shard" => self.shard.clone(), "endpoint" => self.endpoint.clone(),
            "outcome" => outcome)
        .increment(1);
    }

    /// A backend connection opened (+1) or closed (-1).
    pub fn connections_delta(&self, delta: f64) {
        self.connections.increment(delta);
    }

    /// A dedicated connection was closed instead of pooled (`abandoned` or
    /// `stale`, see [`DEDICATED_CLOSED`]).
    pub fn dedicated_closed(&self, reason: &'static str) {
        counter!(DEDICATED_CLOSED, "shard" => self.shard.clone(), "endpoint" => self.endpoint.clone(),
            "reason" => reason)
        .increment(1);
    }

    /// A dedicated connection was lent (+1) or returned (-1).
    pub fn dedicated_delta(&self, delta: f64) {
        self.dedicated_in_use.increment(delta);
    }

    /// The circuit breaker opened (true) or closed (false).
    pub fn set_breaker_open(&self, open: bool) {
        self.circuit_open.set(if open { 1.0 } else { 0.0 });
    }

    /// The circuit breaker opened once more.
    pub fn breaker_tripped(&self) {
        self.circuit_trips.increment(1);
    }

    /// A replica's last contact with its primary, seconds ago, as its
    /// health check read it.
    pub fn replica_lag_seconds(&self, secs: f64) {
        if let Some(g) = &self.replica_lag {
            g.set(secs);
        }
    }

    /// Health check result.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.set(if healthy { 1.0 } else { 0.0 });
    }
}

/// Makes every panic count in [`PANICS`] and log at level error (with its
/// place, and a backtrace when `RUST_BACKTRACE` asks for one), instead of
/// only printing to stderr: a panicked task ends while the process goes on
/// serving, so without this a bug could go unseen.
pub fn count_panics() {
    std::panic::set_hook(Box::new(|info| {
        counter!(PANICS).increment(1);
        let backtrace = std::backtrace::Backtrace::capture();
        let thread = std::thread::current();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            panic = %info,
            backtrace = %backtrace,
            "a thread or task panicked (a bug: please report this line)"
        );
    }));
}

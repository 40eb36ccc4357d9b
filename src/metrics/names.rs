//! The catalogue: every metric's name, kind and help text
//! ([`DESCRIPTIONS`]), their groups (hot, postgres-only, ...), buckets,
//! and their registration with the exporter ([`describe`]).

/// Client-facing command latency, as the client sees it, by command.
pub const COMMAND_DURATION: &str = "shardgate_command_duration_seconds";
/// Commands served, by command name and outcome (`ok`, `error`).
pub const COMMANDS_TOTAL: &str = "shardgate_commands_total";
/// Currently open client connections.
pub const CLIENT_CONNECTIONS: &str = "shardgate_client_connections";
/// Client connections accepted since start.
/// (Not `shardgate_client_connections_total`: under OpenMetrics a counter
/// `X_total` is the family `X`, which would clash with the gauge above.)
pub const CLIENT_CONNECTIONS_TOTAL: &str = "shardgate_client_connections_accepted_total";
/// Currently open client connections per serving thread.
pub const SERVING_THREAD_CLIENTS: &str = "shardgate_serving_thread_clients";
/// Client connections closed for a protocol error.
pub const CLIENT_PROTOCOL_ERRORS: &str = "shardgate_client_protocol_errors_total";
/// Client connections the proxy closed or refused because of a limit, by reason.
pub const CLIENT_LIMIT_CLOSES: &str = "shardgate_client_limit_closes_total";
/// Values of the `reason` label of [`CLIENT_LIMIT_CLOSES`].
pub const LIMIT_REASONS: [&str; 11] = [
    "max_clients",
    "idle_timeout",
    "slow_reader",
    "query_buffer",
    "max_unauthenticated",
    "auth_timeout",
    "unauthenticated_request",
    "auth_failures",
    "pubsub_output_buffer",
    "output_buffer",
    "maxmemory_clients",
];
/// Round trip of a request on a backend connection, by shard/endpoint/role.
pub const BACKEND_DURATION: &str = "shardgate_backend_request_duration_seconds";
/// Backend failures, by shard, endpoint, role and error kind.
pub const BACKEND_ERRORS: &str = "shardgate_backend_errors_total";
/// Open backend connections (multiplexed and dedicated), by endpoint.
pub const BACKEND_CONNECTIONS: &str = "shardgate_backend_connections";
/// Backend connection attempts, by endpoint and outcome.
pub const BACKEND_CONNECTS: &str = "shardgate_backend_connects_total";
/// Dedicated connections currently lent out to clients, by endpoint.
pub const DEDICATED_IN_USE: &str = "shardgate_dedicated_connections_in_use";
/// Dedicated connections closed instead of pooled, by endpoint and reason
/// (`abandoned`: its client left mid-request, e.g. while blocked in BLPOP;
/// `stale`: found closed by the backend when taken from the pool).
pub const DEDICATED_CLOSED: &str = "shardgate_dedicated_connections_closed_total";
/// 1 when the health check passes for the endpoint, else 0.
pub const ENDPOINT_HEALTHY: &str = "shardgate_endpoint_healthy";
/// 1 while the endpoint's circuit breaker is open (requests fail fast).
pub const CIRCUIT_OPEN: &str = "shardgate_circuit_open";
/// Times the endpoint's circuit breaker opened.
pub const CIRCUIT_TRIPS: &str = "shardgate_circuit_trips_total";
/// Reads served, by shard and the role of the endpoint that served them.
pub const READS_TOTAL: &str = "shardgate_reads_total";
/// Coalescable reads (`options.coalesce_reads`), by shard, role of the
/// endpoint and outcome ([`COALESCE_OUTCOMES`]).
pub const COALESCED_READS: &str = "shardgate_coalesced_reads_total";
/// Values of the `outcome` label of [`COALESCED_READS`], in the order of
/// `backend::coalesce::Coalesced`: led (sent its request; identical reads
/// may wait for it), joined (got the reply of an identical read in
/// flight: no backend request of its own), bypassed (an identical read was
/// in flight but older than the client's own last answered request: sent
/// on its own, and later identical reads wait for it instead).
pub const COALESCE_OUTCOMES: [&str; 3] = ["led", "joined", "bypassed"];
/// Refused logins and commands, by reason.
pub const AUTH_FAILURES: &str = "shardgate_auth_failures_total";
/// Values of the `reason` label of [`AUTH_FAILURES`].
pub const AUTH_FAILURE_REASONS: [&str; 3] = ["wrongpass", "noauth", "noperm"];
/// Installs of the backend ACL users that run scripts and transactions
/// (`ACL SETUSER`), by shard, endpoint and outcome (ok, error).
pub const BACKEND_ACL_SYNCS: &str = "shardgate_backend_acl_syncs_total";
/// EXECs on PostgreSQL shards (MULTI/EXEC as one PostgreSQL transaction),
/// by shard, endpoint and outcome ([`PG_TRANSACTION_OUTCOMES`]).
pub const PG_TRANSACTIONS: &str = "shardgate_pg_transactions_total";
/// Values of the `outcome` label of [`PG_TRANSACTIONS`].
pub const PG_TRANSACTION_OUTCOMES: [&str; 3] = ["committed", "watch_failed", "error"];
/// Commands per committed group-commit batch on PostgreSQL shards (plain
/// SET and INCR-family writes of one serving thread committed in one
/// transaction), by shard and endpoint; buckets in commands
/// ([`PG_BATCH_BUCKETS`]).
pub const PG_BATCH_COMMANDS: &str = "shardgate_pg_batch_commands";
/// GETs per batched read statement on PostgreSQL shards (the GETs of one
/// serving thread's clients in flight at once, read with one `SELECT`), by
/// shard and endpoint; buckets in commands ([`PG_BATCH_BUCKETS`]).
pub const PG_READ_BATCH_COMMANDS: &str = "shardgate_pg_read_batch_commands";
/// How long commands on PostgreSQL shards waited for one of their serving
/// thread's connections (a lane's command, a group-commit batch, a batched
/// read), by shard and endpoint; only waits are recorded, not commands
/// that found a connection free.
pub const PG_CONNECTION_WAIT_SECONDS: &str = "shardgate_pg_connection_wait_seconds";
/// Bucket bounds of [`PG_BATCH_COMMANDS`] and [`PG_READ_BATCH_COMMANDS`]
/// (commands, not seconds).
pub const PG_BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Writes group commit took on PostgreSQL shards, by shard, endpoint and
/// outcome ([`PG_GROUP_COMMIT_OUTCOMES`]).
pub const PG_GROUP_COMMIT: &str = "shardgate_pg_group_commit_commands_total";
/// Values of the `outcome` label of [`PG_GROUP_COMMIT`].
pub const PG_GROUP_COMMIT_OUTCOMES: [&str; 5] =
    ["batched", "alone", "lock_busy", "batch_failed", "error"];
/// Map reloads, by outcome (ok, refused).
pub const MAP_RELOADS: &str = "shardgate_map_reloads_total";
/// Reloads of the client listener's certificate and key (SIGHUP), by
/// outcome (ok, refused).
pub const TLS_RELOADS: &str = "shardgate_tls_reloads_total";
/// When the client listener's certificate in use expires (its `notAfter`,
/// Unix seconds).
pub const TLS_CERT_EXPIRY: &str = "shardgate_tls_certificate_expiry_timestamp_seconds";
/// Series that exist only when the client listener speaks TLS
/// (`--tls-cert`).
pub const TLS_ONLY: [&str; 2] = [TLS_RELOADS, TLS_CERT_EXPIRY];
/// Commands on the admin listener, by command and outcome.
pub const ADMIN_COMMANDS: &str = "shardgate_admin_commands_total";
/// Epoch of the routing table in use.
pub const MAP_EPOCH: &str = "shardgate_map_epoch";
/// Slots of the running (or last) rebalance, by state.
pub const REBALANCE_SLOTS: &str = "shardgate_rebalance_slots";
/// Values of the `state` label of [`REBALANCE_SLOTS`].
pub const SLOT_STATES: [&str; 3] = ["pending", "migrating", "done"];
/// Keys moved by rebalancing, by how (`mover`: the background mover;
/// `touch`: a client command moved the key first).
pub const REBALANCE_KEYS: &str = "shardgate_rebalance_keys_moved_total";
/// Bytes moved by the background mover (`MEMORY USAGE` before each move).
pub const REBALANCE_BYTES: &str = "shardgate_rebalance_bytes_moved_total";
/// Reads of keys in migrating slots answered without moving the key, by
/// which shard had it (`source`: not moved yet; `target`: moved already;
/// `neither`: absent from both, read again in order).
pub const REBALANCE_READS: &str = "shardgate_rebalance_migrating_reads_total";
/// Times a command's move of a key was put off because the mover was
/// copying that key (`DUMP`/`RESTORE`) or had just fenced or released a
/// batch, and asked again.
pub const REBALANCE_TOUCH_WAITS: &str = "shardgate_rebalance_touch_waits_total";
/// Values of the `found` label of [`REBALANCE_READS`].
pub const READ_FOUND: [&str; 3] = ["source", "target", "neither"];
/// Rebalancing failures, by stage.
pub const REBALANCE_ERRORS: &str = "shardgate_rebalance_errors_total";
/// Values of the `stage` label of [`REBALANCE_ERRORS`]. `unsupported`: a
/// key that cannot live on its target (a list, set, ... moving to a
/// postgres shard) stays on its source and holds its window back.
pub const REBALANCE_STAGES: [&str; 5] = ["mover", "touch", "barrier", "verify", "unsupported"];
/// 1 while a rebalance runs (paused included).
pub const REBALANCE_RUNNING: &str = "shardgate_rebalance_running";
/// The mover's throttle (keys per second, 0: none).
pub const REBALANCE_THROTTLE: &str = "shardgate_rebalance_throttle_keys_per_second";
/// 1 while the mover takes small bursts.
pub const REBALANCE_SMALL_BURSTS: &str = "shardgate_rebalance_small_bursts";
/// Source shards the mover walks at once (0 between windows).
pub const REBALANCE_SOURCES_MOVING: &str = "shardgate_rebalance_sources_moving";
/// Keys the last verification found on a shard that does not own them.
pub const REBALANCE_MISPLACED: &str = "shardgate_rebalance_verify_misplaced_keys";
/// 1 if the last rebalance's verification passed, 0 if it failed.
pub const REBALANCE_VERIFIED: &str = "shardgate_rebalance_verify_ok";

/// Proxies of the fleet holding a live etcd lease, as this proxy last saw.
pub const FLEET_PROXIES: &str = "shardgate_fleet_proxies";
/// Proxies of the fleet that say they serve clients.
pub const FLEET_PROXIES_SERVING: &str = "shardgate_fleet_proxies_serving";
/// 1 while this proxy routes no keys because its lease may have expired.
pub const FLEET_FENCED: &str = "shardgate_fleet_fenced";
/// 1 while this proxy holds the mover's election.
pub const FLEET_LEADER: &str = "shardgate_fleet_mover_leader";
/// Lease renewals by outcome (ok, error).
pub const FLEET_LEASE_RENEWALS: &str = "shardgate_fleet_lease_renewals_total";
/// Time the mover waited for every proxy to publish a window.
pub const FLEET_ACK_WAIT: &str = "shardgate_fleet_ack_wait_seconds";
/// Claims of keys copied with commands, taken in etcd, by outcome.
pub const FLEET_KEY_CLAIMS: &str = "shardgate_fleet_key_claims_total";
/// Watches of the fleet state started, by where they start.
pub const FLEET_STATE_WATCHES: &str = "shardgate_fleet_state_watches_total";

/// Clients currently waiting in a blocking command (BLPOP, XREAD BLOCK ...).
pub const BLOCKED_CLIENTS: &str = "shardgate_blocked_clients";
/// Clients whose next command waits for a `CLIENT PAUSE` to end.
pub const PAUSED_CLIENTS: &str = "shardgate_paused_clients";
/// `CLIENT UNBLOCK`s of this proxy's clients blocked in a blocking command.
pub const CLIENT_UNBLOCKS: &str = "shardgate_client_unblocks_total";
/// Commands that took longer than `--slowlog-log-slower-than` (each one
/// added to the proxy's SLOWLOG).
pub const SLOWLOG_ENTRIES: &str = "shardgate_slowlog_entries_total";
/// Entries in the proxy's SLOWLOG now (at most `--slowlog-max-len`).
pub const SLOWLOG_LENGTH: &str = "shardgate_slowlog_length";
/// Requests traced (exported as OpenTelemetry spans), by why (slow, error).
pub const TRACE_SPANS: &str = "shardgate_trace_spans_total";
/// Series that exist only when tracing is on (`--otlp-endpoint`).
pub const TRACING_ONLY: [&str; 1] = [TRACE_SPANS];
/// How far a replica is behind its primary, in seconds, as its health
/// check last judged it: by replication offsets (see `backend::lag`) when
/// the primary's log can tell, else `master_last_io_seconds_ago`.
pub const REPLICA_LAG_SECONDS: &str = "shardgate_replica_lag_seconds";

/// Reads sent to a shard's primary instead of a replica because of the
/// client's own writes (`options.read_your_writes`), by shard and reason
/// ([`OWN_WRITE_REASONS`]).
pub const READ_YOUR_WRITES_PRIMARY_READS: &str = "shardgate_read_your_writes_primary_reads_total";
/// The `reason` labels of [`READ_YOUR_WRITES_PRIMARY_READS`]: a write still
/// in flight, no probe of the primary since the write was answered, no
/// replica applied it yet.
pub const OWN_WRITE_REASONS: [&str; 3] = ["in_flight", "unconfirmed", "replicas_behind"];
/// On-demand replication-position probes (read-your-writes), by shard and
/// endpoint.
pub const POSITION_PROBES: &str = "shardgate_position_probes_total";

/// 1, labelled with the version this binary was built from.
pub const BUILD_INFO: &str = "shardgate_build_info";
/// Primary switches of a sentinel shard (Sentinel named a new primary and
/// the proxy published it), by shard.
pub const SENTINEL_SWITCHES: &str = "shardgate_sentinel_switches_total";
/// 1 if the sentinel answered the last check of the shard's master, by
/// shard and sentinel.
pub const SENTINEL_UP: &str = "shardgate_sentinel_up";
/// Panics of the proxy's threads and tasks: each is a bug (the task that
/// panicked ended); the log line at level error says where.
pub const PANICS: &str = "shardgate_panics_total";
/// The metrics whose series exist only for shards that follow Sentinel
/// (registered at start for each of them).
pub const SENTINEL_ONLY: [&str; 2] = [SENTINEL_SWITCHES, SENTINEL_UP];
/// Reads of GET through the near cache, by shard and result (`hit`: served
/// from the cache at once; `confirmed_hit`: served after a barrier;
/// `miss`: read from the shard; `bypass`: the client had a write in flight
/// or the key's slot was migrating).
pub const NEAR_CACHE_READS: &str = "shardgate_near_cache_reads_total";
/// Keys the shards told the near cache to drop (each key of an
/// `invalidate` push), by shard.
pub const NEAR_CACHE_INVALIDATIONS: &str = "shardgate_near_cache_invalidations_total";
/// Times the near cache of a shard dropped everything (FLUSHALL, a lost
/// or new tracking connection), by shard.
pub const NEAR_CACHE_FLUSHES: &str = "shardgate_near_cache_flushes_total";
/// Barriers (PINGs that confirm hits) sent down tracking connections.
pub const NEAR_CACHE_BARRIERS: &str = "shardgate_near_cache_barriers_total";
/// Values read for the cache but not kept, because their key was
/// invalidated while the read was in flight.
pub const NEAR_CACHE_FILLS_DROPPED: &str = "shardgate_near_cache_fills_dropped_total";
/// Bytes (keys, values and overhead) the near cache of a shard holds.
pub const NEAR_CACHE_BYTES: &str = "shardgate_near_cache_bytes";
/// Entries the near cache of a shard holds.
pub const NEAR_CACHE_ENTRIES: &str = "shardgate_near_cache_entries";
/// Clients of this proxy with `CLIENT TRACKING` on.
pub const TRACKING_CLIENTS: &str = "shardgate_tracking_clients";
/// Keys the proxy remembers as read by tracking clients.
pub const TRACKING_KEYS: &str = "shardgate_tracking_keys";
/// Invalidations sent to tracking clients (each key, or a flush, per
/// client).
pub const TRACKING_INVALIDATIONS: &str = "shardgate_tracking_invalidations_total";
/// The metrics whose series exist only for shards with the near cache on.
pub const NEAR_CACHE_ONLY: [&str; 7] = [
    NEAR_CACHE_READS,
    NEAR_CACHE_INVALIDATIONS,
    NEAR_CACHE_FLUSHES,
    NEAR_CACHE_BARRIERS,
    NEAR_CACHE_FILLS_DROPPED,
    NEAR_CACHE_BYTES,
    NEAR_CACHE_ENTRIES,
];
/// The metrics whose series exist only for endpoints that are replicas.
pub const REPLICA_ONLY: [&str; 1] = [REPLICA_LAG_SECONDS];
/// Metrics whose series appear with their first event (labelled by a
/// shard that is known only then).
pub const ON_FIRST_EVENT: [&str; 1] = [PUBSUB_LINK_CONNECTS];

/// Metrics of postgres shards only (a map without one has none).
pub const POSTGRES_ONLY: [&str; 5] = [
    PG_TRANSACTIONS,
    PG_BATCH_COMMANDS,
    PG_READ_BATCH_COMMANDS,
    PG_GROUP_COMMIT,
    PG_CONNECTION_WAIT_SECONDS,
];

/// Subscriptions of this proxy's clients, by kind (channel, pattern, shard).
pub const PUBSUB_SUBSCRIPTIONS: &str = "shardgate_pubsub_subscriptions";
/// Pub/sub messages written to this proxy's clients.
pub const PUBSUB_MESSAGES: &str = "shardgate_pubsub_messages_delivered_total";
/// Subscriber connections of the pub/sub hub to shards that are up.
pub const PUBSUB_LINKS: &str = "shardgate_pubsub_backend_links_up";
/// Connections (and reconnections) of the pub/sub hub to a shard, by shard
/// and outcome; each successful one subscribes everything again.
pub const PUBSUB_LINK_CONNECTS: &str = "shardgate_pubsub_backend_connects_total";

/// Requests refused by the auth file's rate limits, by scope (user,
/// address) and limit (requests, bytes).
pub const RATE_LIMITED: &str = "shardgate_rate_limited_total";

/// Name, kind and help text of every metric, registered at start.
pub const DESCRIPTIONS: &[(&str, &str, &str)] = &[
    (
        COMMAND_DURATION,
        "histogram",
        "Latency of client commands as seen by the proxy, from parse to reply, by command (names from the command table; unknown for the rest)",
    ),
    (
        COMMANDS_TOTAL,
        "counter",
        "Client commands by command name and outcome (ok, error)",
    ),
    (CLIENT_CONNECTIONS, "gauge", "Open client connections"),
    (
        SERVING_THREAD_CLIENTS,
        "gauge",
        "Open client connections per serving thread (--threads)",
    ),
    (
        CLIENT_CONNECTIONS_TOTAL,
        "counter",
        "Client connections accepted",
    ),
    (
        CLIENT_PROTOCOL_ERRORS,
        "counter",
        "Client connections closed because of a malformed frame",
    ),
    (
        CLIENT_LIMIT_CLOSES,
        "counter",
        "Client connections refused or closed by a limit (max_clients, idle_timeout, slow_reader, query_buffer)",
    ),
    (
        CIRCUIT_OPEN,
        "gauge",
        "1 while the endpoint's circuit breaker is open and its requests fail fast",
    ),
    (
        CIRCUIT_TRIPS,
        "counter",
        "Times the endpoint's circuit breaker opened (connect failure, timeout, repeated lost connections)",
    ),
    (
        BACKEND_DURATION,
        "histogram",
        "Round trip of a request to a backend endpoint",
    ),
    (
        BACKEND_ERRORS,
        "counter",
        "Backend failures by shard, endpoint, role and kind",
    ),
    (
        BACKEND_CONNECTIONS,
        "gauge",
        "Open backend connections (multiplexed and dedicated) by shard and endpoint",
    ),
    (
        BACKEND_CONNECTS,
        "counter",
        "Backend connection attempts by endpoint and outcome",
    ),
    (
        DEDICATED_IN_USE,
        "gauge",
        "Dedicated backend connections lent to clients",
    ),
    (
        DEDICATED_CLOSED,
        "counter",
        "Dedicated backend connections closed instead of pooled, by reason: abandoned (client left mid-request, e.g. blocked), stale (closed by the backend while pooled)",
    ),
    (
        ENDPOINT_HEALTHY,
        "gauge",
        "1 if the endpoint passes its health check",
    ),
    (
        READS_TOTAL,
        "counter",
        "Reads by shard and serving role (primary, replica)",
    ),
    (
        COALESCED_READS,
        "counter",
        "Reads that options.coalesce_reads let share a backend request, by shard, role and outcome (led: sent its request; joined: got an identical in-flight read's reply, no request of its own; bypassed: an identical read was in flight but older than the client's own last answered request)",
    ),
    (
        AUTH_FAILURES,
        "counter",
        "Refused logins (wrongpass) and commands (noauth: before login, noperm: outside the user's rules)",
    ),
    (
        BACKEND_ACL_SYNCS,
        "counter",
        "Installs of the backend ACL users that run client scripts and transactions, by endpoint and outcome (error: scripts and transactions are refused there)",
    ),
    (
        PG_TRANSACTIONS,
        "counter",
        "EXECs on PostgreSQL shards by endpoint and outcome (committed; watch_failed: a watched key changed, EXEC answered nil and ran nothing; error: rolled back by a database error or timeout)",
    ),
    (
        PG_BATCH_COMMANDS,
        "histogram",
        "Commands per group-commit batch on PostgreSQL shards (plain SETs and INCR-family writes of one serving thread, committed in one transaction), by endpoint; in commands, not seconds",
    ),
    (
        PG_READ_BATCH_COMMANDS,
        "histogram",
        "GETs per batched read statement on PostgreSQL shards (the GETs of one serving thread's clients in flight at once, read with one SELECT), by endpoint; in commands, not seconds",
    ),
    (
        PG_CONNECTION_WAIT_SECONDS,
        "histogram",
        "Time commands on PostgreSQL shards waited for one of their serving thread's connections (all busy), in arrival order, by endpoint; only waits are recorded",
    ),
    (
        PG_GROUP_COMMIT,
        "counter",
        "Writes offered to group commit on PostgreSQL shards, by endpoint and outcome (batched: committed in a batch; alone: no other write in flight, ran on its own; lock_busy: another writer held its key, ran on its own; batch_failed: the batch rolled back before commit, ran on its own; error: the commit failed, error answered)",
    ),
    (MAP_EPOCH, "gauge", "Epoch of the routing table in use"),
    (
        ADMIN_COMMANDS,
        "counter",
        "Commands on the admin listener by command and outcome (ok, error)",
    ),
    (
        MAP_RELOADS,
        "counter",
        "Shard-map reloads (SIGHUP) by outcome: ok, refused",
    ),
    (
        TLS_RELOADS,
        "counter",
        "Reloads of the client listener's certificate and key (SIGHUP) by outcome: ok, refused",
    ),
    (
        TLS_CERT_EXPIRY,
        "gauge",
        "When the client listener's certificate in use expires (notAfter, Unix seconds)",
    ),
    (
        REBALANCE_SLOTS,
        "gauge",
        "Slots of the running or last rebalance by state: pending, migrating, done",
    ),
    (
        REBALANCE_KEYS,
        "counter",
        "Keys moved between shards by rebalancing, by how: mover (background), touch (a command moved it first)",
    ),
    (
        REBALANCE_BYTES,
        "counter",
        "Bytes moved by the rebalance mover (MEMORY USAGE of each key before its move)",
    ),
    (
        REBALANCE_READS,
        "counter",
        "Reads of keys in migrating slots answered without moving the key, by where it was found: source (not moved yet), target (moved already), neither",
    ),
    (
        REBALANCE_TOUCH_WAITS,
        "counter",
        "Moves of a key by a command put off because the rebalance mover was copying that key (or fencing or releasing a batch), asked again",
    ),
    (
        REBALANCE_ERRORS,
        "counter",
        "Rebalancing failures by stage: mover, touch, barrier, verify (each retried or reported)",
    ),
    (REBALANCE_RUNNING, "gauge", "1 while a rebalance runs"),
    (
        REBALANCE_THROTTLE,
        "gauge",
        "The rebalance mover's throttle in keys per second, 0 for none (a throttled mover also takes small bursts on its sources)",
    ),
    (
        REBALANCE_SMALL_BURSTS,
        "gauge",
        "1 while the rebalance mover takes small bursts on its sources (clients being served, or a throttle set), 0 while it takes full ones or none runs",
    ),
    (
        REBALANCE_SOURCES_MOVING,
        "gauge",
        "Source shards the rebalance mover walks at once (at most --rebalance-sources; 0 between windows or when none runs)",
    ),
    (
        REBALANCE_MISPLACED,
        "gauge",
        "Keys the last rebalance verification found on a shard that does not own them",
    ),
    (
        REBALANCE_VERIFIED,
        "gauge",
        "1 if the last rebalance verification passed, 0 if it failed",
    ),
    (
        BLOCKED_CLIENTS,
        "gauge",
        "Clients currently waiting in a blocking command (BLPOP, BLMOVE, XREAD BLOCK ...) or for a CLIENT PAUSE to end",
    ),
    (
        PAUSED_CLIENTS,
        "gauge",
        "Clients whose next command waits for a CLIENT PAUSE of this proxy to end",
    ),
    (
        CLIENT_UNBLOCKS,
        "counter",
        "CLIENT UNBLOCKs of this proxy's clients blocked in a blocking command, by mode (timeout, error)",
    ),
    (
        SLOWLOG_ENTRIES,
        "counter",
        "Commands slower than --slowlog-log-slower-than, each added to the proxy's SLOWLOG",
    ),
    (
        SLOWLOG_LENGTH,
        "gauge",
        "Entries in the proxy's SLOWLOG (at most --slowlog-max-len)",
    ),
    (
        TRACE_SPANS,
        "counter",
        "Requests traced as OpenTelemetry spans (--otlp-endpoint), by why: slow (over --trace-slower-than-us) or error (an error reply)",
    ),
    (
        REPLICA_LAG_SECONDS,
        "gauge",
        "Seconds a replica is behind its primary as its health check last judged it: by replication offsets when the primary's recent offsets tell, else master_last_io_seconds_ago; by shard and endpoint",
    ),
    (
        TRACKING_CLIENTS,
        "gauge",
        "Clients of this proxy with CLIENT TRACKING on",
    ),
    (
        TRACKING_KEYS,
        "gauge",
        "Keys this proxy remembers as read by CLIENT TRACKING clients (at most 1,000,000)",
    ),
    (
        TRACKING_INVALIDATIONS,
        "counter",
        "Invalidations queued for CLIENT TRACKING clients: one per key and client, or one per client for a flush",
    ),
    (
        NEAR_CACHE_READS,
        "counter",
        "GETs through the near cache by shard and result: hit (at once), confirmed_hit (after a barrier), miss (read from the shard), bypass (own write in flight or migrating slot)",
    ),
    (
        NEAR_CACHE_INVALIDATIONS,
        "counter",
        "Keys the shard's CLIENT TRACKING invalidations dropped from the near cache, by shard",
    ),
    (
        NEAR_CACHE_FLUSHES,
        "counter",
        "Times the near cache of a shard was emptied (FLUSHALL, tracking connection lost or opened), by shard",
    ),
    (
        NEAR_CACHE_BARRIERS,
        "counter",
        "PINGs sent down the tracking connection to confirm near-cache hits, by shard",
    ),
    (
        NEAR_CACHE_FILLS_DROPPED,
        "counter",
        "Values read for the near cache but not kept because their key was invalidated meanwhile, by shard",
    ),
    (
        NEAR_CACHE_BYTES,
        "gauge",
        "Bytes (keys, values, overhead) held by the near cache of a shard",
    ),
    (
        NEAR_CACHE_ENTRIES,
        "gauge",
        "Entries held by the near cache of a shard",
    ),
    (
        READ_YOUR_WRITES_PRIMARY_READS,
        "counter",
        "Reads sent to the primary instead of a replica because of the client's own writes (options.read_your_writes), by shard and reason: in_flight (a write not answered yet), unconfirmed (no probe of the primary since the write), replicas_behind (no replica applied it yet)",
    ),
    (
        POSITION_PROBES,
        "counter",
        "On-demand probes of an endpoint's replication position for read-your-writes (at most one in flight per endpoint, only while reads wait for one), by shard and endpoint",
    ),
    (
        BUILD_INFO,
        "gauge",
        "Always 1; the version label is the shardgate version of this binary",
    ),
    (
        PANICS,
        "counter",
        "Panics of the proxy's threads and tasks (each a bug: the task that panicked ended, and an error log line says where); alert on any increase",
    ),
    (
        FLEET_PROXIES,
        "gauge",
        "Proxies of the fleet holding a live etcd lease, as this proxy last listed them (0 without --etcd)",
    ),
    (
        FLEET_PROXIES_SERVING,
        "gauge",
        "Proxies of the fleet that say they serve clients (100 commands/s or more lately; the mover then takes small bursts and one source at a time), as this proxy last listed them",
    ),
    (
        FLEET_FENCED,
        "gauge",
        "1 while this proxy answers TRYAGAIN to commands on keys because its etcd lease may have expired",
    ),
    (
        FLEET_LEADER,
        "gauge",
        "1 while this proxy holds the election of the fleet's rebalance mover",
    ),
    (
        FLEET_LEASE_RENEWALS,
        "counter",
        "Renewals of this proxy's etcd lease by outcome: ok, error",
    ),
    (
        FLEET_ACK_WAIT,
        "histogram",
        "Time the fleet's mover waited for every live proxy to publish a window's Migrating state and drain older routing",
    ),
    (
        FLEET_KEY_CLAIMS,
        "counter",
        "Claims in etcd of keys this proxy copied with commands (big keys, keys to or from postgres shards), by outcome: taken at once, waited (another proxy was copying the key), failed (etcd or the lease)",
    ),
    (
        FLEET_STATE_WATCHES,
        "counter",
        "Watches of the fleet state in etcd this proxy started (one at start, one per reconnection), by start: published (after the state it published), compaction (etcd had compacted that history away: from its compaction revision); a steady rise means the watch keeps breaking",
    ),
    (
        RATE_LIMITED,
        "counter",
        "Requests refused by the auth file's rate limits, by scope (user, address) and limit (requests, bytes)",
    ),
    (
        PUBSUB_SUBSCRIPTIONS,
        "gauge",
        "Subscriptions of this proxy's clients by kind: channel (SUBSCRIBE), pattern (PSUBSCRIBE), shard (SSUBSCRIBE)",
    ),
    (
        PUBSUB_MESSAGES,
        "counter",
        "Pub/sub messages (message, pmessage, smessage) written to this proxy's clients",
    ),
    (
        PUBSUB_LINKS,
        "gauge",
        "Subscriber connections of the pub/sub hub to shards that are up (one per shard with subscriptions)",
    ),
    (
        PUBSUB_LINK_CONNECTS,
        "counter",
        "Connection attempts of the pub/sub hub to a shard by shard and outcome (ok, error); each ok one subscribes everything again",
    ),
    (
        SENTINEL_SWITCHES,
        "counter",
        "Primary switches of a shard that follows Redis Sentinel (a new primary published), by shard",
    ),
    (
        SENTINEL_UP,
        "gauge",
        "1 if the sentinel answered the last check of the shard's master (SENTINEL MASTER), by shard and sentinel",
    ),
];

/// Histogram buckets (seconds): 50 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// The metrics kept in [`super::hot`] rather than by the exporter.
pub const HOT: [&str; 5] = [
    COMMANDS_TOTAL,
    COMMAND_DURATION,
    BACKEND_DURATION,
    READS_TOTAL,
    COALESCED_READS,
];

/// Help text of metric `name`.
pub fn help(name: &str) -> &'static str {
    DESCRIPTIONS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map_or("", |(_, _, h)| *h)
}

/// Registers help texts with the installed recorder.
pub fn describe() {
    for (name, kind, help) in DESCRIPTIONS {
        if HOT.contains(name) {
            continue;
        }
        match *kind {
            "counter" => metrics::describe_counter!(*name, *help),
            "gauge" => metrics::describe_gauge!(*name, *help),
            _ if *name == PG_BATCH_COMMANDS || *name == PG_READ_BATCH_COMMANDS => {
                metrics::describe_histogram!(*name, metrics::Unit::Count, *help)
            }
            _ => metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help),
        }
    }
}

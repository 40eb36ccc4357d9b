//! shardgate: a wire-compatible Redis proxy that spreads one keyspace over many
//! shards (Redis servers and PostgreSQL databases) with geo-aware consistent
//! hashing.
//!
//! # Layout
//!
//! The module tree follows the data flow of one request; dependencies point one
//! way, from the client socket towards the backends:
//!
//! ```text
//! client socket -> protocol (bytes -> Request frames, reply frames -> bytes)
//!   -> command   (Request -> classified command via the declarative table)
//!   -> router    (key -> hash tag -> slot -> placement -> owner shard; pure)
//!   -> snapshot  (one published Snapshot: routing table + the backends it indexes)
//!   -> backend   (multiplexed pipelined connection | dedicated pooled connection
//!                 | `backend::pg` lanes over an sqlx pool, behind the same interface)
//!   -> proxy     (per-client session: dispatch, split/merge, in-order replies)
//! ```
//!
//! Beside it, the control path: `shardmap` (YAML -> validated [`shardmap::ShardMap`])
//! -> `router::RoutingTable::compile` -> published with its backends as one
//! [`snapshot::Snapshot`] (`arc-swap`; readers never lock). The writers of
//! the snapshot are a reload ([`control::Reloader`], on SIGHUP or the
//! [`admin`] listener's RELOAD) and the [`rebalance`] mover (the admin
//! listener's REBALANCE), which publishes slots as `Migrating` and then
//! `Stable` while it moves keys; the data path's part of a move (a command
//! moves its key first) is in `proxy`. `proxy` and `rebalance` do not know
//! each other: both work on the [`context::Context`] that [`app`] (the one
//! place that wires the pieces together) builds. [`metrics`] is the facade
//! every module records through.
//!
//! The module graph, each arrow "uses" (no cycles; a change that adds a
//! back-edge moves the shared piece down instead):
//!
//! ```text
//! app -> admin -> control -> rebalance -> context -> snapshot -> backend -> router -> shardmap
//!    \-> proxy --------------------------/                        \-> protocol, metrics, tls
//!    \-> sentinel -----------------------/
//!  proxy -> auth, command, otel; metrics -> command; backend -> command (SCAN cursors); error -> protocol
//! ```
//!
//! Shard failover: a shard may follow a Redis Sentinel group instead of
//! naming its primary. [`sentinel`] keeps what Sentinel says in the
//! context's view; every map-to-backends path resolves through it
//! ([`shardmap::sentinel::resolve`], called by `backend::Backends`), and a
//! failover publishes new backends under the same routing table.
//!
//! The read path's extras, all opt-in per map: the near cache
//! (`backend::cache`) and the proxy's `CLIENT TRACKING` for its clients
//! (`proxy::tracking`) share one invalidation stream per Redis primary
//! (`backend::tracking`: a RESP3 `CLIENT TRACKING` connection whose pushes
//! the multiplexed connection hands to listeners in order with the
//! replies); coalesced reads (`backend::coalesce`, `proxy::coalesce`);
//! read-your-writes by replication positions (`backend::lag`, with the
//! session's own writes counted in `proxy::session::Writes`).
//!
//! Beside the flow, on the client side: [`auth`] (who may run which command,
//! from the auth file); underneath it, [`workers`] (the serving threads a
//! client and its backend connections are pinned to). What the proxy cannot
//! see, the commands a script runs, Redis checks: [`backend::acl`] installs
//! a Redis ACL user per proxy user (its rules plus the proxy's refusals from
//! [`command::proxy_refusals`]) and scripts and transactions run as it.
#![forbid(unsafe_code)]
// The library logs through `tracing`; only the CLI (`src/main.rs`) prints.
#![warn(clippy::print_stdout, clippy::print_stderr)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod backend;
pub mod command;
pub mod context;
pub mod control;
pub mod coord;
pub mod error;
pub mod fleet;
pub mod metrics;
pub mod otel;
pub mod protocol;
pub mod proxy;
pub mod rebalance;
pub mod router;
pub mod sentinel;
pub mod shardmap;
pub mod snapshot;
pub mod tls;
pub mod workers;

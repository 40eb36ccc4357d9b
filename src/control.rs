//! The control path's handle on a running proxy: map reloads (SIGHUP, the
//! admin listener's RELOAD), STATUS, and the rebalancer. [`crate::app`]
//! builds it and [`crate::admin`] drives it; neither depends on the other
//! for it.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::backend::health;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::rebalance::Rebalancer;
use crate::router::{Epoch, RoutingTable};
use crate::shardmap::{MapError, ShardMap};
use crate::snapshot::PublishError;
use crate::tls::{ServerCert, TlsError};

/// Why a map reload was refused (the running map stays in use).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("shard map {path}: {source}")]
    Map { path: String, source: MapError },
    /// The new map changes placement: that is a rebalance, not a reload.
    #[error("{path}: {reason}")]
    Placement { path: String, reason: String },
    #[error("routing table: {0}")]
    Publish(#[from] PublishError),
}

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Epoch of the routing table now in use.
    pub epoch: u64,
    /// Endpoints kept with their connections and pools.
    pub kept: usize,
    /// Endpoints built anew (new replicas, or changed options/credentials).
    pub added: usize,
    /// Endpoints dropped (their connections close when idle).
    pub removed: usize,
}

/// Re-reads the map file of a running proxy and applies it.
#[derive(Clone)]
pub struct Reloader {
    proxy: Arc<Proxy>,
    map_path: PathBuf,
    shutdown: watch::Sender<bool>,
    /// Shares its writer lock: one reload or rebalance start at a time.
    rebalancer: Arc<Rebalancer>,
    /// In a fleet: a reload is recorded in etcd and every proxy applies it.
    fleet: Option<crate::coord::Coord>,
    /// The client listener's certificate, when it speaks TLS.
    server_cert: Option<Arc<ServerCert>>,
}

impl Reloader {
    /// The reloader of `proxy`, reading `map_path`; it shares the
    /// rebalancer's writer lock.
    pub fn new(
        proxy: Arc<Proxy>,
        map_path: PathBuf,
        shutdown: watch::Sender<bool>,
        rebalancer: Arc<Rebalancer>,
        fleet: Option<crate::coord::Coord>,
        server_cert: Option<Arc<ServerCert>>,
    ) -> Reloader {
        Reloader {
            proxy,
            map_path,
            shutdown,
            rebalancer,
            fleet,
            server_cert,
        }
    }

    /// Reads the client listener's certificate and key again (SIGHUP):
    /// handshakes from now on present the new certificate, sessions open
    /// keep theirs. A pair that cannot be used (a file unreadable, not PEM,
    /// a key that does not fit) is refused and the one in use stays.
    /// `None` when the proxy serves no TLS.
    pub fn reload_tls(&self) -> Option<Result<(), TlsError>> {
        let cert = self.server_cert.as_ref()?;
        let result = cert.reload();
        let metrics = &self.proxy.metrics;
        match &result {
            Ok(()) => {
                metrics.tls_reload("ok");
                let expires = cert.not_after();
                if let Some(at) = expires {
                    metrics.tls_cert_expiry(at);
                }
                tracing::info!(
                    cert = %cert.cert_path().display(),
                    not_after = expires.unwrap_or_default(),
                    "TLS certificate reloaded; new handshakes present it"
                );
            }
            Err(e) => {
                metrics.tls_reload("refused");
                tracing::error!(error = %e, "TLS certificate reload refused; the certificate in use stays");
            }
        }
        Some(result)
    }

    /// The proxy's metrics (admin commands are counted there).
    pub fn metrics(&self) -> &Metrics {
        &self.proxy.metrics
    }

    /// The rebalancer of this proxy.
    pub fn rebalancer(&self) -> &Arc<Rebalancer> {
        &self.rebalancer
    }

    /// What the admin STATUS command shows.
    pub fn status_text(&self) -> String {
        format!(
            "{}map_file:{}\r\nconnected_clients:{}\r\n\r\n{}",
            self.proxy.describe(),
            self.map_path.display(),
            self.proxy.connected_clients(),
            self.rebalancer.status_text()
        )
    }

    /// Reads the map file again and applies what can change without moving
    /// keys: replicas (added, removed, moved), read policy, options
    /// (timeouts, pool sizes, health checks, allow_flush), credentials and
    /// TLS of shards, a primary's address (after a failover). Endpoints
    /// whose settings did not change keep their connections and pools. A map
    /// that is invalid or changes placement (slots, shards, their names,
    /// kinds, regions or weights, placement rules) is refused, naming the
    /// field, and the running map stays.
    pub async fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        let _one = self.rebalancer.writer.lock().await;
        let result = self.try_reload().await;
        let outcome = if result.is_ok() { "ok" } else { "refused" };
        self.proxy.metrics.map_reload(outcome);
        match &result {
            Ok(s) => tracing::info!(
                epoch = s.epoch,
                kept = s.kept,
                added = s.added,
                removed = s.removed,
                map = %self.map_path.display(),
                "shard map reloaded"
            ),
            Err(e) => {
                tracing::error!(error = %e, map = %self.map_path.display(), "shard map reload refused; the running map stays")
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<ReloadSummary, ReloadError> {
        let path = self.map_path.display().to_string();
        let text = std::fs::read_to_string(&self.map_path).map_err(|e| ReloadError::Map {
            path: path.clone(),
            source: MapError {
                path: path.clone(),
                reason: format!("cannot read the map file: {e}"),
            },
        })?;
        let map = ShardMap::from_yaml(&text).map_err(|source| ReloadError::Map {
            path: path.clone(),
            source,
        })?;
        let snap = self.proxy.snapshot_full();
        let current = snap.table();
        if self.rebalancer.is_running() || current.has_overlay() {
            return Err(ReloadError::Placement {
                path,
                reason:
                    "a rebalance is moving slots; reload the map once it has finished (see STATUS)"
                        .to_owned(),
            });
        }
        let map = align(current.map(), map)
            .map_err(|(path, reason)| ReloadError::Placement { path, reason })?;
        if let Some((path, reason)) = placement_change(current.map(), &map) {
            return Err(ReloadError::Placement { path, reason });
        }
        if let Some(coord) = &self.fleet {
            drop(snap);
            let revision = coord
                .update_state(|s| {
                    crate::coord::Refusal::if_rebalancing(s)?;
                    s.map_yaml = text.clone();
                    Ok(())
                })
                .await
                .map_err(|e| ReloadError::Placement {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            // Every proxy (this one too) publishes it when its watch sees it.
            return Ok(ReloadSummary {
                epoch: u64::try_from(revision).unwrap_or(0),
                kept: 0,
                added: 0,
                removed: 0,
            });
        }
        let map = Arc::new(map);
        let epoch = Epoch(current.epoch().0 + 1);
        drop(snap);
        let (old, next) = self.proxy.ctx.rebuild_backends(&map);
        // Table and backends in one publish: refused (a concurrent
        // publisher), nothing has changed.
        self.proxy.ctx.snapshot.publish(
            RoutingTable::compile(map.clone(), epoch),
            Some(next.clone()),
        )?;
        let added = next.added_since(&old);
        health::spawn_all(&added, self.shutdown.subscribe());
        crate::backend::pg::spawn_reapers(&added, &self.shutdown);
        let removed = old.retire_missing(&next);
        // `allow_flush` may have changed, and new endpoints need the users.
        self.proxy.sync_backend_acl();
        self.proxy.metrics.map_epoch(epoch.0);
        self.rebalancer.map_reloaded(text);
        Ok(ReloadSummary {
            epoch: epoch.0,
            kept: next.endpoints().len() - added.len(),
            added: added.len(),
            removed,
        })
    }
}

/// Whether `next` may replace `current` by a reload (same placement):
/// `next` aligned to `current`'s shard order, or the field path and reason
/// of the first change that would move keys (a rebalance's job).
pub fn reload_check(current: &ShardMap, next: ShardMap) -> Result<ShardMap, (String, String)> {
    let next = align(current, next)?;
    match placement_change(current, &next) {
        Some(change) => Err(change),
        None => Ok(next),
    }
}

/// `next` (a map file) with its shards in the running map's order, so
/// shard ids stay valid; shards a finished rebalance removed stay as
/// placeholders. A shard only in one of them is a placement change.
fn align(current: &ShardMap, mut next: ShardMap) -> Result<ShardMap, (String, String)> {
    use crate::shardmap::ShardPhase;
    if current.shards.iter().all(|s| s.phase == ShardPhase::Active) {
        return Ok(next);
    }
    let mut shards = Vec::with_capacity(current.shards.len());
    for s in &current.shards {
        if s.phase == ShardPhase::Removed && !next.shards.iter().any(|n| n.name == s.name) {
            shards.push(s.clone());
            continue;
        }
        match next.shards.iter().position(|n| n.name == s.name) {
            Some(i) => shards.push(next.shards.remove(i)),
            None => {
                return Err((
                    "shards".into(),
                    format!(
                        "shard `{}` is missing: removing shards is a rebalance",
                        s.name
                    ),
                ));
            }
        }
    }
    if let Some(extra) = next.shards.first() {
        return Err((
            "shards".into(),
            format!(
                "shard `{}` is new: adding shards is a rebalance",
                extra.name
            ),
        ));
    }
    next.shards = shards;
    Ok(next)
}

/// The first difference between two maps that would move keys (so needs a
/// rebalance, not a reload), as (field path, reason).
fn placement_change(old: &ShardMap, new: &ShardMap) -> Option<(String, String)> {
    const WHY: &str = "placement changes only through a rebalance, not a reload";
    if old.slots != new.slots {
        return Some((
            "slots".into(),
            format!(
                "changed from {} to {}; slots never change for a keyspace",
                old.slots, new.slots
            ),
        ));
    }
    if old.shards.len() != new.shards.len() {
        return Some((
            "shards".into(),
            format!(
                "{} shards instead of {}: adding or removing shards is a rebalance",
                new.shards.len(),
                old.shards.len()
            ),
        ));
    }
    for (i, (a, b)) in old.shards.iter().zip(&new.shards).enumerate() {
        let fields = [
            ("name", a.name.clone(), b.name.clone()),
            (
                "kind",
                format!("{:?}", a.kind).to_lowercase(),
                format!("{:?}", b.kind).to_lowercase(),
            ),
            ("region", a.region.clone(), b.region.clone()),
            ("weight", a.weight.to_string(), b.weight.to_string()),
        ];
        for (field, was, now) in fields {
            if was != now {
                return Some((
                    format!("shards[{i}].{field}"),
                    format!("changed from {was} to {now}; {WHY}"),
                ));
            }
        }
    }
    if old.placement != new.placement {
        return Some(("placement".into(), format!("rules changed; {WHY}")));
    }
    if old.default_placement != new.default_placement {
        return Some(("default_placement".into(), format!("changed; {WHY}")));
    }
    None
}

//! Where a rebalance's progress is recorded: the state directory of a
//! single proxy, or the fleet's state in etcd (see [`crate::coord`]).
//!
//! The mover records the same steps either way: a window's units enter
//! `Migrating` (before any of their keys move), its units are `Done`, the
//! rebalance finished (the target map is the map in force). In a fleet each
//! record is also what the other proxies publish from.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::state::StateDir;
use crate::context::{Context, Fence};
use crate::coord::{Coord, CoordError, MovedSoFar, Refusal};

/// The records of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitsKind {
    Migrating,
    /// In a fleet: every live proxy acknowledged the window's `Migrating`
    /// state, so keys may move on touch (nothing to record for a single
    /// proxy, whose one table changes at once).
    Confirmed,
    /// With what the movers moved so far (recorded with the window, so
    /// that a mover resuming after a restart or a takeover counts on).
    Done(MovedSoFar),
}

/// Why a record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory: {0}")]
    Dir(#[from] std::io::Error),
    #[error("fleet state: {0}")]
    Fleet(#[from] CoordError),
    /// This proxy may have lost its lease or the election: another proxy
    /// may run the mover.
    #[error(
        "this proxy lost its etcd lease or the mover's election; the elected proxy resumes the rebalance"
    )]
    LostLease,
}

/// The record of one rebalance.
#[derive(Clone)]
pub enum Store {
    Dir(StateDir),
    Fleet(Coord),
}

impl Store {
    /// Records units of a window; returns the fleet revision of the record
    /// (0 for a state directory). In a fleet, `fence` is this proxy's: see
    /// [`retrying`].
    pub async fn log_units(
        &self,
        fence: &Fence,
        kind: UnitsKind,
        units: Vec<(u32, u32)>,
    ) -> Result<i64, StoreError> {
        match self {
            Store::Dir(dir) => {
                let verb = match kind {
                    UnitsKind::Migrating => "migrating",
                    UnitsKind::Confirmed => return Ok(0),
                    UnitsKind::Done(_) => "done",
                };
                dir.blocking(move |st| {
                    st.log_units(verb, &units)?;
                    if let UnitsKind::Done(moved) = kind {
                        st.log_moved(moved)?;
                    }
                    Ok(())
                })
                .await?;
                Ok(0)
            }
            Store::Fleet(coord) => {
                retrying(fence, || {
                    coord.update_state(|s| {
                        let Some(r) = s.rebalance.as_mut() else {
                            return Err(Refusal::NoRebalance);
                        };
                        if let UnitsKind::Done(moved) = kind {
                            r.moved = moved;
                        }
                        let list = match kind {
                            UnitsKind::Migrating => &mut r.migrating,
                            UnitsKind::Confirmed => &mut r.confirmed,
                            UnitsKind::Done(_) => &mut r.done,
                        };
                        let mut all: BTreeSet<(u32, u32)> = list.iter().copied().collect();
                        all.extend(units.iter().copied());
                        *list = all.into_iter().collect();
                        Ok(())
                    })
                })
                .await
            }
        }
    }

    /// Records what the movers moved so far (between windows: a mover that
    /// resumes after a restart or a takeover counts on from it). Best
    /// effort: a failed record only costs the count.
    pub async fn record_moved(&self, moved: MovedSoFar) {
        let result = match self {
            Store::Dir(dir) => dir
                .blocking(move |st| st.log_moved(moved))
                .await
                .map_err(StoreError::from),
            Store::Fleet(coord) => coord.put_progress(&moved).await.map_err(StoreError::from),
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "cannot record the rebalance's progress");
        }
    }

    /// What the movers recorded they moved, beyond the state already read
    /// (in a fleet: the progress key; a state directory's `moved` lines are
    /// in its saved state).
    pub async fn recorded_moved(&self) -> Option<MovedSoFar> {
        match self {
            Store::Dir(_) => None,
            Store::Fleet(coord) => coord.progress().await.ok().flatten(),
        }
    }

    /// Records the end of the rebalance: `target_yaml` is the map in force.
    pub async fn finish(
        &self,
        fence: &Fence,
        target_yaml: String,
        outcome: crate::coord::FinishedRebalance,
    ) -> Result<(), StoreError> {
        match self {
            Store::Dir(dir) => {
                dir.blocking(move |st| st.finish(&target_yaml)).await?;
            }
            Store::Fleet(coord) => {
                retrying(fence, || {
                    coord.update_state(|s| {
                        if s.rebalance.is_none() {
                            // A retry after a write whose answer was lost.
                            if s.map_yaml == target_yaml {
                                return Ok(());
                            }
                            return Err(Refusal::NoRebalance);
                        }
                        s.map_yaml = target_yaml.clone();
                        s.rebalance = None;
                        s.last = Some(outcome.clone());
                        Ok(())
                    })
                })
                .await?;
                // (The next rebalance clears it too, if this is lost.)
                let _ = coord.clear_progress().await;
            }
        }
        Ok(())
    }
}

/// Runs a fleet write again while etcd cannot be reached (a restart, a
/// leader election), as long as this proxy may still hold its lease: the
/// mover pauses instead of failing, and nothing else would restart it.
/// Past the fence's deadline another proxy may run the mover: give up.
/// Retrying is safe: every record is idempotent (a set union, or the end
/// of the rebalance, which accepts finding itself already written).
async fn retrying<F, Fut>(fence: &Fence, mut write: F) -> Result<i64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<i64, CoordError>>,
{
    let mut warned = false;
    loop {
        match write().await {
            Err(CoordError::Etcd(e)) => {
                if fence.blocks(Instant::now()) {
                    return Err(StoreError::LostLease);
                }
                if !warned {
                    warned = true;
                    tracing::warn!(error = %e, "cannot record the rebalance's progress in etcd; the mover waits and retries");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// Waits until every proxy holding a live lease has published fleet
/// revision `version` and drained what it routed with older tables. A
/// proxy whose lease expires meanwhile drops out of the wait: it has
/// fenced itself before its lease could expire (see `context::Fence`).
/// Fails once `may_move` says this proxy may have lost its lease or the
/// election (another proxy may lead).
pub async fn wait_acks(
    ctx: &Context,
    coord: &Coord,
    version: i64,
    may_move: impl Fn() -> bool,
) -> Result<Duration, StoreError> {
    let started = Instant::now();
    let mut warned = false;
    loop {
        if !may_move() {
            return Err(StoreError::LostLease);
        }
        match coord.members().await {
            Ok(members) => {
                let behind: Vec<&str> = members
                    .iter()
                    .filter(|m| m.acked < version)
                    .map(|m| m.id.as_str())
                    .collect();
                if behind.is_empty() {
                    let waited = started.elapsed();
                    ctx.metrics.fleet_ack_wait(waited);
                    return Ok(waited);
                }
                if !warned && started.elapsed() > Duration::from_secs(5) {
                    warned = true;
                    tracing::warn!(version, waiting_for = ?behind, "rebalance waits for proxies to publish a window (a proxy whose lease expires stops being waited for)");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the fleet's proxies; retrying");
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

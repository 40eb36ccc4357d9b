//! Why a rebalance was refused, failed, or could not be read at start.
//!
//! The admin listener answers refusals as `-ERR <verb> refused: <this>`;
//! the mover's failures become the job's `failed` phase and its log line.

use super::plan::PlanError;
use super::store::StoreError;
use crate::backend::copy::Stays;
use crate::coord::CoordError;
use crate::shardmap::MapError;
use crate::snapshot::PublishError;

#[derive(Debug, thiserror::Error)]
pub enum RebalanceError {
    /// A map text is not a valid shard map; `what` names where it came
    /// from (`invalid map` for one an admin submitted).
    #[error("{what}: {source}")]
    InvalidMap { what: String, source: MapError },
    #[error("{path}: cannot read the map file: {source}")]
    ReadMap {
        path: String,
        source: std::io::Error,
    },
    #[error("state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    /// The new map cannot be moved to.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A rebalance saved at `source` no longer plans (the running map or
    /// the code changed under it).
    #[error("{source_name}: the saved rebalance: {source}")]
    SavedPlan {
        source_name: String,
        source: PlanError,
    },
    #[error(
        "a rebalance is already running ({done} of {total} slots done, {keys} keys moved); wait for it to finish or follow it with STATUS"
    )]
    AlreadyRunning {
        done: usize,
        total: usize,
        keys: u64,
    },
    /// A sample of the keys that would move found one that its new shard
    /// cannot hold (a list, set, ... moving to a postgres shard).
    #[error(
        "shard {shard}: {source} (found in a sample of the keys this map moves onto a postgres shard; nothing moved)"
    )]
    Unmovable { shard: String, source: Stays },
    #[error("no rebalance is running")]
    NotRunning,
    #[error(
        "the proxy runs without --state-dir; a rebalance needs one so that a restarted proxy can finish the move"
    )]
    NoStateDir,
    #[error("cannot write the state directory: {0}")]
    Begin(std::io::Error),
    /// The fleet's etcd refused or failed the change.
    #[error(transparent)]
    Fleet(#[from] CoordError),
    /// A step of the move could not be recorded, so it did not happen.
    #[error("cannot record {what}: {source}")]
    Record {
        what: &'static str,
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot install the merged map's backends: {0}")]
    Install(PublishError),
    #[error("cannot publish the routing table: {0}")]
    Publish(#[from] PublishError),
    /// Every slot moved, but the check after it found keys where they do
    /// not belong (or shards it could not scan).
    #[error(
        "verification failed: {left_behind} keys left on the shards they moved from, {misplaced} keys on a shard that does not own them, shards not scanned: [{}]",
        unscanned.join(", ")
    )]
    Verification {
        left_behind: u64,
        misplaced: u64,
        unscanned: Vec<String>,
    },
}

impl RebalanceError {
    /// `what` (where a map text came from) did not parse as a map.
    pub fn invalid_map(what: impl Into<String>) -> impl FnOnce(MapError) -> RebalanceError {
        let what = what.into();
        move |source| RebalanceError::InvalidMap { what, source }
    }

    /// A step of the move (`what`) could not be recorded.
    pub(super) fn record(what: &'static str) -> impl FnOnce(StoreError) -> RebalanceError {
        move |source| RebalanceError::Record { what, source }
    }
}

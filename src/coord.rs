//! The fleet's control state in etcd: one key holds the map in force and the
//! running rebalance, one leased key per live proxy holds what it has
//! published. shardgate adds no consensus of its own: every write that must
//! not race is an etcd transaction comparing the revision it read.
//!
//! ```text
//! /shardgate/<cluster>/state            FleetState (JSON): map YAML + rebalance
//! /shardgate/<cluster>/proxies/<id>     Member (JSON), under the proxy's lease
//! /shardgate/<cluster>/mover            election: the proxy that runs the mover
//! /shardgate/<cluster>/progress         MovedSoFar (JSON): what the movers moved
//! /shardgate/<cluster>/claims/<hash>     a key copy under way (see `backend::fence`),
//!                                        under the copying proxy's lease
//! ```
//!
//! The `state` key's `mod_revision` is the fleet's epoch: every proxy
//! publishes the routing table that state describes with that epoch, so
//! epochs agree across the fleet and only grow.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

/// A rebalance in progress, as the fleet sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceState {
    pub source_yaml: String,
    pub target_yaml: String,
    /// (class, slot) pairs that entered `Migrating`.
    pub migrating: Vec<(u32, u32)>,
    /// (class, slot) pairs of `migrating` whose state every live proxy has
    /// published (the mover waited for their acknowledgements). Until then
    /// no proxy moves their keys on touch: another proxy may still route
    /// them to their old shard (see `context::HeldMoves`).
    #[serde(default)]
    pub confirmed: Vec<(u32, u32)>,
    /// (class, slot) pairs whose keys all moved.
    pub done: Vec<(u32, u32)>,
    pub paused: bool,
    /// Keys per second, 0 for no limit.
    pub throttle: u64,
    /// What the movers moved up to the last window they recorded done (a
    /// mover that takes over counts on from there).
    #[serde(default)]
    pub moved: MovedSoFar,
}

/// Keys, bytes and big keys a rebalance's movers moved so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedSoFar {
    pub keys: u64,
    pub bytes: u64,
    pub big_keys: u64,
}

/// What the `state` key holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetState {
    /// The map in force (before a running rebalance: the map it started from).
    pub map_yaml: String,
    pub rebalance: Option<RebalanceState>,
    /// The last finished rebalance, as its mover verified it (so that
    /// PROGRESS on any proxy reports the outcome).
    #[serde(default)]
    pub last: Option<FinishedRebalance>,
    /// Ids of the last writes (see [`Coord::update_state`]), newest last:
    /// a writer whose reply was lost finds its own write by its id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<u64>,
}

/// Write ids a [`FleetState`] keeps.
const WRITE_IDS: usize = 16;

/// The outcome of a finished rebalance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinishedRebalance {
    pub slots_total: usize,
    pub keys_moved: u64,
    /// Bytes and big keys the mover moved (absent in records of earlier
    /// versions: 0).
    #[serde(default)]
    pub bytes_moved: u64,
    #[serde(default)]
    pub big_keys: u64,
    pub elapsed_secs: f64,
    pub left_behind: u64,
    pub misplaced: u64,
    pub in_moved_slots: u64,
    /// Keys per shard after the move.
    pub keys: Vec<(String, u64)>,
    pub unscanned: Vec<String>,
}

impl Eq for FinishedRebalance {}

/// A value with the etcd revision that last changed it.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    /// `mod_revision` of the key: the fleet epoch for [`FleetState`].
    pub revision: i64,
}

/// One live proxy, as it registers itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    /// Where clients reach it.
    pub addr: String,
    /// The state revision it has published, and drained the requests
    /// routed with older tables (0 while it starts).
    pub acked: i64,
    /// Wall-clock time of its last lease renewal, Unix milliseconds (for
    /// operators; no decision uses it).
    pub renewed_unix_ms: u64,
    /// The etcd lease its key lives under.
    pub lease: i64,
    /// It serves clients (at least 100 commands/s lately): the mover,
    /// wherever it runs, then takes small bursts and one source at a time.
    /// (Absent in the keys of older proxies: read as not serving.)
    #[serde(default)]
    pub serving: bool,
}

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd key {key} holds an unreadable value: {reason}")]
    Decode { key: String, reason: String },
    /// The caller's check refused the change (e.g. a rebalance already runs).
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the fleet has no map yet: start a proxy with --map or run `shardgate admin apply`")]
    NoState,
}

/// Why a change of the fleet state was refused by the caller's check of
/// the state it read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A rebalance is recorded: it must finish first.
    #[error(
        "a rebalance is already running in the fleet ({done} of its (class, slot) pairs done); wait for it to finish or follow it with STATUS"
    )]
    RebalanceRunning { done: usize },
    /// The change is to a rebalance, and none is recorded.
    #[error("no rebalance is running in the fleet")]
    NoRebalance,
}

impl Refusal {
    /// Refuses when a rebalance is recorded in `state`.
    pub fn if_rebalancing(state: &FleetState) -> Result<(), Refusal> {
        match &state.rebalance {
            Some(r) => Err(Refusal::RebalanceRunning { done: r.done.len() }),
            None => Ok(()),
        }
    }
}

/// A connection to the fleet's etcd, scoped to one cluster name.
#[derive(Clone)]
pub struct Coord {
    /// Boxed behind an `Arc`: the client is several KiB, and a `Coord`
    /// travels in enums and tasks.
    client: std::sync::Arc<Client>,
    prefix: String,
}

/// How long [`Coord::update_state`] retries etcd errors.
pub const TRANSIENT_RETRY: Duration = Duration::from_secs(10);

/// How long one etcd request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

impl Coord {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`) for `cluster`.
    pub async fn connect(endpoints: &[String], cluster: &str) -> Result<Coord, CoordError> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), REQUEST_TIMEOUT);
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(Coord {
            client: std::sync::Arc::new(client),
            prefix: format!("/shardgate/{cluster}/"),
        })
    }

    /// A client handle (cheap to clone; requests need `&mut`).
    pub fn client(&self) -> Client {
        (*self.client).clone()
    }

    /// The full etcd key of `suffix` under this cluster.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// The key of the fleet state.
    pub fn state_key(&self) -> String {
        self.key("state")
    }

    /// The prefix of the members' keys.
    pub fn members_prefix(&self) -> String {
        self.key("proxies/")
    }

    /// The election name of the mover.
    pub fn mover_election(&self) -> String {
        self.key("mover")
    }

    /// The fleet state, if one was stored.
    pub async fn state(&self) -> Result<Option<Versioned<FleetState>>, CoordError> {
        let key = self.state_key();
        let resp = self.client().get(key.clone(), None).await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => Ok(Some(Versioned {
                value: decode(&key, kv.value())?,
                revision: kv.mod_revision(),
            })),
        }
    }

    /// Stores `state` if the cluster has none yet; returns the state in
    /// force afterwards (this one or the one another writer stored first).
    pub async fn create_state(
        &self,
        state: &FleetState,
    ) -> Result<Versioned<FleetState>, CoordError> {
        let key = self.state_key();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), encode(state), None)]);
        self.client().txn(txn).await?;
        self.state().await?.ok_or(CoordError::NoState)
    }

    /// Read-modify-write of the state: `change` edits a copy of the state
    /// read; the write only succeeds if nobody wrote in between (compare on
    /// the revision read), else it starts over. Returns the new revision.
    ///
    /// An etcd error (a leader election in a three-member etcd answers
    /// "leader changed" for a moment, a member going away breaks a
    /// connection, a reply times out on a loaded machine) is retried for
    /// up to [`TRANSIENT_RETRY`]. A write whose reply was lost may have
    /// been applied: each write records a random id in the state, and an
    /// attempt that finds its id there returns that revision instead of
    /// applying the change again (which would, say, refuse a REBALANCE
    /// because the rebalance it just recorded is running).
    pub async fn update_state(
        &self,
        change: impl FnMut(&mut FleetState) -> Result<(), Refusal>,
    ) -> Result<i64, CoordError> {
        let mut id = [0u8; 8];
        // A time-derived id if the system has no randomness to give.
        if getrandom::fill(&mut id).is_err() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            id = (now.as_nanos() as u64 ^ u64::from(std::process::id())).to_ne_bytes();
        }
        self.update_state_as(u64::from_ne_bytes(id), change).await
    }

    /// [`Coord::update_state`] with the write's id chosen by the caller:
    /// a call that finds `id` among the state's last writes returns that
    /// revision without applying `change` (the write was made, by an
    /// earlier attempt whose reply was lost).
    pub async fn update_state_as(
        &self,
        id: u64,
        mut change: impl FnMut(&mut FleetState) -> Result<(), Refusal>,
    ) -> Result<i64, CoordError> {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            match self.try_update_state(&mut change, id).await {
                Err(CoordError::Etcd(e)) if started.elapsed() < TRANSIENT_RETRY => {
                    tracing::debug!(error = %e, "fleet state write failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    async fn try_update_state(
        &self,
        change: &mut impl FnMut(&mut FleetState) -> Result<(), Refusal>,
        id: u64,
    ) -> Result<i64, CoordError> {
        let key = self.state_key();
        loop {
            let current = self.state().await?.ok_or(CoordError::NoState)?;
            if current.value.writes.contains(&id) {
                // An earlier attempt was applied; its reply was lost.
                return Ok(current.revision);
            }
            let mut next = current.value.clone();
            change(&mut next)?;
            if next == current.value {
                return Ok(current.revision);
            }
            next.writes.push(id);
            let excess = next.writes.len().saturating_sub(WRITE_IDS);
            next.writes.drain(..excess);
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    current.revision,
                )])
                .and_then([TxnOp::put(key.clone(), encode(&next), None)]);
            let resp = self.client().txn(txn).await?;
            if resp.succeeded() {
                return Ok(resp.header().map_or(current.revision + 1, |h| h.revision()));
            }
        }
    }

    /// Changes the running rebalance's controls (pause, throttle) as
    /// `change` says: the mover's proxy applies them when it sees the
    /// state. Refused when no rebalance is recorded. Returns the revision.
    pub async fn control_rebalance(
        &self,
        change: impl Fn(&mut RebalanceState),
    ) -> Result<i64, CoordError> {
        self.update_state(|s| match s.rebalance.as_mut() {
            Some(r) => {
                change(r);
                Ok(())
            }
            None => Err(Refusal::NoRebalance),
        })
        .await
    }

    /// Writes this proxy's member key under `lease`.
    pub async fn register(&self, member: &Member) -> Result<(), CoordError> {
        let key = format!("{}{}", self.members_prefix(), member.id);
        self.client()
            .put(
                key,
                encode(member),
                Some(PutOptions::new().with_lease(member.lease)),
            )
            .await?;
        Ok(())
    }

    /// Takes the claim `name` for `token` under `lease` unless another
    /// token holds it: `true` once `token` holds it (also when an earlier
    /// attempt with the same token took it and its reply was lost). The
    /// claim goes with the lease, so a proxy that dies (or whose lease
    /// expires) holds nothing.
    pub async fn try_claim(&self, name: &str, token: &str, lease: i64) -> Result<bool, CoordError> {
        let key = self.key(&format!("claims/{name}"));
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                token,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.client().txn(txn).await?;
        if resp.succeeded() {
            return Ok(true);
        }
        let holder = resp.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        Ok(holder.as_deref() == Some(token.as_bytes()))
    }

    /// Gives the claim `name` up if `token` holds it.
    pub async fn release_claim(&self, name: &str, token: &str) -> Result<(), CoordError> {
        let key = self.key(&format!("claims/{name}"));
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, token)])
            .and_then([TxnOp::delete(key, None)]);
        self.client().txn(txn).await?;
        Ok(())
    }

    /// The key of the running rebalance's progress (apart from the state,
    /// whose revision is the fleet's epoch: progress must not change it).
    fn progress_key(&self) -> String {
        self.key("progress")
    }

    /// Records what the movers moved so far.
    pub async fn put_progress(&self, moved: &MovedSoFar) -> Result<(), CoordError> {
        self.client()
            .put(self.progress_key(), encode(moved), None)
            .await?;
        Ok(())
    }

    /// Forgets the recorded progress (a rebalance started or finished).
    pub async fn clear_progress(&self) -> Result<(), CoordError> {
        self.client().delete(self.progress_key(), None).await?;
        Ok(())
    }

    /// What the movers recorded they moved, if anything.
    pub async fn progress(&self) -> Result<Option<MovedSoFar>, CoordError> {
        let key = self.progress_key();
        let resp = self.client().get(key.clone(), None).await?;
        resp.kvs()
            .first()
            .map(|kv| decode(&key, kv.value()))
            .transpose()
    }

    /// Every proxy holding a live lease.
    pub async fn members(&self) -> Result<Vec<Member>, CoordError> {
        let prefix = self.members_prefix();
        let resp = self
            .client()
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        resp.kvs()
            .iter()
            .map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()))
            .collect()
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and numbers: serialising cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, CoordError> {
    serde_json::from_slice(bytes).map_err(|e| CoordError::Decode {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_json() {
        let s = FleetState {
            map_yaml: "slots: 8\n".into(),
            rebalance: Some(RebalanceState {
                source_yaml: "a".into(),
                target_yaml: "b".into(),
                migrating: vec![(0, 1), (1, 7)],
                confirmed: vec![(0, 1)],
                done: vec![(0, 1)],
                paused: true,
                throttle: 10,
                moved: MovedSoFar {
                    keys: 5,
                    bytes: 6,
                    big_keys: 1,
                },
            }),
            last: Some(FinishedRebalance {
                slots_total: 3,
                keys: vec![("a".into(), 2)],
                ..FinishedRebalance::default()
            }),
            writes: Vec::new(),
        };
        let back: FleetState = decode("k", &encode(&s)).unwrap();
        assert_eq!(back, s);
        // A state written before write ids existed still reads.
        let old: FleetState = decode("k", br#"{"map_yaml":"m","rebalance":null}"#).unwrap();
        assert!(old.writes.is_empty());
        let s = FleetState {
            writes: vec![7, 9],
            ..s
        };
        let back: FleetState = decode("k", &encode(&s)).unwrap();
        assert_eq!(back, s);
        assert!(matches!(
            decode::<FleetState>("k", b"{"),
            Err(CoordError::Decode { .. })
        ));
    }
}

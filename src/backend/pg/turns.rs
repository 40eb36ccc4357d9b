//! Turns at one serving thread's PostgreSQL connections, in arrival order.
//!
//! Every user of a serving thread's pool (a lane running a command on its
//! own, a group-commit batch, a batched read) takes a turn before it uses
//! a connection and holds it while it does, and there are exactly as many
//! turns as the pool has connections. So the pool never makes anyone wait
//! for a busy connection: waiting for one is waiting for a turn, in arrival
//! order (tokio's semaphore is fair), within the waiter's command timeout
//! (past it the command is answered `-ERR backend ... timed out after N
//! ms`, as a command that runs too long). The pool's own `acquire_timeout`
//! (`connect_timeout_ms`) then bounds only the opening of a connection, so
//! its `pool timed out` means the database cannot be reached, which is
//! what the breaker counts.
//!
//! Before, commands waited for a busy connection inside the pool, bounded
//! by `connect_timeout_ms`: a burst of more clients than connections (1,500
//! clients running HSET over 4 connections) had commands answered
//! `unavailable: pool timed out` and counted against the database's
//! breaker, although the database was serving every connection it had.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::backend::EndpointState;
use crate::error::BackendError;

/// A wait longer than this is logged (at most once per [`LOG_EVERY`]).
const SLOW_WAIT: Duration = Duration::from_millis(100);
/// How often slow waits are logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// The turns of one serving thread's pool (cheap to clone).
#[derive(Clone)]
pub(super) struct Turns {
    free: Arc<Semaphore>,
    state: Arc<EndpointState>,
    slow: Arc<Mutex<SlowWaits>>,
}

/// Slow waits of an endpoint (all its serving threads) since the last
/// log line.
pub(super) struct SlowWaits {
    logged: Option<Instant>,
    count: u64,
    longest: Duration,
}

impl SlowWaits {
    /// None yet, shared by the turns of one endpoint's threads.
    pub(super) fn shared() -> Arc<Mutex<SlowWaits>> {
        Arc::new(Mutex::new(SlowWaits {
            logged: None,
            count: 0,
            longest: Duration::ZERO,
        }))
    }
}

impl Turns {
    /// As many turns as the pool has `connections`; slow waits are
    /// counted and logged in `slow` (one per endpoint).
    pub(super) fn new(
        state: Arc<EndpointState>,
        connections: usize,
        slow: Arc<Mutex<SlowWaits>>,
    ) -> Turns {
        Turns {
            free: Arc::new(Semaphore::new(connections)),
            state,
            slow,
        }
    }

    /// Waits for a turn, behind those who asked before (the caller bounds
    /// the wait). A wait is recorded in
    /// `shardgate_pg_connection_wait_seconds`; a turn free at once is not.
    pub(super) async fn take(&self) -> Result<SemaphorePermit<'_>, BackendError> {
        if let Ok(turn) = self.free.try_acquire() {
            return Ok(turn);
        }
        let asked = Instant::now();
        let turn = self
            .free
            .acquire()
            .await
            .map_err(|_| BackendError::ConnectionLost {
                addr: self.state.addr.clone(),
                reason: "postgres endpoint closed".to_owned(),
            })?;
        let waited = asked.elapsed();
        self.state.metrics.pg_connection_wait(waited);
        if waited > SLOW_WAIT {
            self.slow_wait(waited);
        }
        Ok(turn)
    }

    /// Counts a slow wait; logs the slow waits at most every [`LOG_EVERY`].
    fn slow_wait(&self, waited: Duration) {
        let mut slow = self.slow.lock().unwrap_or_else(|e| e.into_inner());
        slow.count += 1;
        slow.longest = slow.longest.max(waited);
        if slow.logged.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return;
        }
        tracing::warn!(
            shard = %self.state.shard,
            endpoint = %self.state.addr,
            waits = slow.count,
            longest_ms = slow.longest.as_millis() as u64,
            pg_pool_size = self.state.options.pg_pool_size,
            "commands waited over 100 ms for a postgres connection (every connection of their serving thread busy: more clients in flight than pg_pool_size serves, or statements waiting on locks); see shardgate_pg_connection_wait_seconds"
        );
        *slow = SlowWaits {
            logged: Some(Instant::now()),
            count: 0,
            longest: Duration::ZERO,
        };
    }
}

/// Runs `work` on a turn at the thread's connections (see the module), with
/// the wait for the turn and the work together within the command
/// timeout; the lease fence is checked again once the turn came (the wait
/// may have been long).
pub(super) async fn on_turn<T>(
    state: &EndpointState,
    turns: &Turns,
    work: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, BackendError> {
    let timeout = state.options.command_timeout;
    let started = Instant::now();
    let _turn = match tokio::time::timeout(timeout, turns.take()).await {
        Ok(turn) => turn?,
        Err(_) => return Err(timed_out(state)),
    };
    state.check_lease_fence()?;
    let left = timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(super::backend_error(&state.addr, e)),
        Err(_) => Err(timed_out(state)),
    }
}

/// A command that did not finish within the command timeout.
pub(super) fn timed_out(state: &EndpointState) -> BackendError {
    BackendError::Timeout {
        addr: state.addr.clone(),
        millis: state.options.command_timeout.as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn turns(n: usize) -> Turns {
        let map = crate::shardmap::ShardMap::from_yaml(
            "regions:\n  - name: r\nshards:\n  - name: s\n    region: r\n    primary: 127.0.0.1:1\n",
        )
        .unwrap();
        let backends = crate::backend::Backends::new(&map, Some("r"), None);
        let state = backends.shards()[0].primary.state.clone();
        Turns::new(state, n, SlowWaits::shared())
    }

    #[tokio::test]
    async fn turns_are_handed_out_in_arrival_order() {
        let t = turns(1);
        let first = t.take().await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..5 {
            let (t, order) = (t.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let _turn = t.take().await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }));
            // Each asks before the next one.
            tokio::task::yield_now().await;
        }
        drop(first);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn no_more_turns_than_connections_at_once() {
        let t = turns(3);
        let held: Vec<_> = vec![
            t.take().await.unwrap(),
            t.take().await.unwrap(),
            t.take().await.unwrap(),
        ];
        assert!(
            tokio::time::timeout(Duration::from_millis(50), t.take())
                .await
                .is_err(),
            "a fourth turn while three are held"
        );
        drop(held);
        assert!(t.take().await.is_ok());
    }
}

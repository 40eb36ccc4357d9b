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

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::backend::EndpointState;
use crate::error::BackendError;

/// The turns of one serving thread's pool (cheap to clone).
#[derive(Clone)]
pub(super) struct Turns {
    free: Arc<Semaphore>,
    state: Arc<EndpointState>,
}

impl Turns {
    /// As many turns as the pool has `connections`.
    pub(super) fn new(state: Arc<EndpointState>, connections: usize) -> Turns {
        Turns {
            free: Arc::new(Semaphore::new(connections)),
            state,
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
        self.state.metrics.pg_connection_wait(asked.elapsed());
        Ok(turn)
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
        Turns::new(backends.shards()[0].primary.state.clone(), n)
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

//! The loop shared by the group committer ([`super::batch`]) and the read
//! batcher ([`super::reads`]): what a serving thread's lanes queue is taken
//! in batches, a few running at once, the next forming while they run.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

/// Takes what `rx` queues in batches of up to `max` (everything queued
/// when a batch starts), with at most `in_flight` batches running at once;
/// each runs `run` in a task of the current runtime. What arrives while
/// every slot is busy joins the next batch. Ends when every sender is gone.
pub(super) async fn batches<T, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<T>,
    in_flight: usize,
    max: usize,
    run: F,
) where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let work = run(batch);
        tokio::spawn(async move {
            work.await;
            drop(permit);
        });
    }
}

//! The loop shared by the group committer ([`super::batch`]) and the read
//! batcher ([`super::reads`]): what a serving thread's lanes queue is taken
//! in batches, a few running at once, the next forming while they run.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

/// How many batches run at once.
#[derive(Debug, Clone, Copy)]
pub(super) struct Flight {
    /// Batches running at once while none is slow. Fewer make bigger
    /// batches: what arrives while they run waits for the next one.
    pub usual: usize,
    /// A batch running longer than this (a row lock, a slow disk) stops
    /// counting against `usual`, so that the next batch need not wait for
    /// it. `None`: never.
    pub slow: Option<Duration>,
    /// Batches running at once, slow ones included (each holds a
    /// connection).
    pub most: usize,
}

/// Takes what `rx` queues in batches of up to `max` (everything queued
/// when a batch starts), with at most `flight.usual` batches running at
/// once (`flight.most` counting slow ones); each runs `run` in a task of
/// the current runtime. What arrives while every slot is busy joins the
/// next batch. Ends when every sender is gone.
pub(super) async fn batches<T, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<T>,
    flight: Flight,
    max: usize,
    run: F,
) where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let usual = Arc::new(Semaphore::new(flight.usual.max(1)));
    let most = Arc::new(Semaphore::new(flight.most.max(flight.usual).max(1)));
    while let Some(first) = rx.recv().await {
        let (Ok(slot), Ok(room)) = (
            usual.clone().acquire_owned().await,
            most.clone().acquire_owned().await,
        ) else {
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
            let mut slot = Some(slot);
            let slow = async {
                match flight.slow {
                    Some(after) => tokio::time::sleep(after).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(work, slow);
            loop {
                tokio::select! {
                    () = &mut work => break,
                    // Slow: the next batch may start; this one keeps its
                    // room until it ends.
                    () = &mut slow, if slot.is_some() => slot = None,
                }
            }
            drop((slot, room));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Runs `batches` (at most 3 per batch) over `items` sent up front,
    /// each batch taking `each`, and returns the batches in the order they
    /// started, and the most that ran at once.
    async fn run(flight: Flight, items: usize, each: Duration) -> (Vec<Vec<usize>>, usize) {
        let (tx, rx) = mpsc::unbounded_channel();
        let started = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(Mutex::new((0usize, 0usize)));
        let (s, r) = (started.clone(), running.clone());
        let done = tokio::spawn(batches(rx, flight, 3, move |batch: Vec<usize>| {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.lock().unwrap().push(batch);
                {
                    let mut r = r.lock().unwrap();
                    r.0 += 1;
                    r.1 = r.1.max(r.0);
                }
                tokio::time::sleep(each).await;
                r.lock().unwrap().0 -= 1;
            }
        }));
        for i in 0..items {
            tx.send(i).unwrap();
        }
        drop(tx);
        done.await.unwrap();
        // Let the last batches end.
        tokio::time::sleep(each * 10).await;
        let most = running.lock().unwrap().1;
        let started = started.lock().unwrap().clone();
        (started, most)
    }

    #[tokio::test(start_paused = true)]
    async fn one_at_a_time_makes_full_batches_in_arrival_order() {
        let flight = Flight {
            usual: 1,
            slow: None,
            most: 4,
        };
        let (started, most) = run(flight, 7, Duration::from_millis(1)).await;
        assert_eq!(started, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        assert_eq!(most, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_quicker_than_slow_still_run_one_at_a_time() {
        let flight = Flight {
            usual: 1,
            slow: Some(Duration::from_millis(5)),
            most: 4,
        };
        let (started, most) = run(flight, 9, Duration::from_millis(4)).await;
        assert_eq!(started.len(), 3);
        assert_eq!(most, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_batch_lets_the_next_ones_start_up_to_the_most() {
        let flight = Flight {
            usual: 1,
            slow: Some(Duration::from_millis(5)),
            most: 2,
        };
        // Each batch takes 1 s: past 5 ms the next starts, and the one
        // after it waits for a room (two at once at most).
        let (started, most) = run(flight, 9, Duration::from_secs(1)).await;
        assert_eq!(started.len(), 3);
        assert_eq!(most, 2);
    }
}

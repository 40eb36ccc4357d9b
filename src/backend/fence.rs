//! Key fences: while the rebalance mover copies a big key piece by piece,
//! commands that would move that key themselves wait, and the mover waits
//! for the moves already under way. Empty except during such a copy; only
//! commands on keys of migrating slots ever look at it.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

#[derive(Default)]
struct Entry {
    /// Moves on touch of the key under way.
    touching: usize,
    /// The mover holds the key.
    fenced: bool,
}

/// The fences of one proxy.
#[derive(Default)]
pub struct KeyFences {
    keys: Mutex<HashMap<Bytes, Entry>>,
    changed: Notify,
}

/// A move on touch under way; ends when dropped.
pub struct Touch<'a> {
    fences: &'a KeyFences,
    key: Bytes,
}

impl Drop for Touch<'_> {
    fn drop(&mut self) {
        let mut keys = self.fences.lock();
        if let Some(e) = keys.get_mut(&self.key) {
            e.touching -= 1;
            if e.touching == 0 && !e.fenced {
                keys.remove(&self.key);
            }
        }
        drop(keys);
        self.fences.changed.notify_waiters();
    }
}

impl KeyFences {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, Entry>> {
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `take` succeeds on the key's entry (run under the lock,
    /// again after every change).
    async fn acquire(&self, key: &Bytes, take: impl Fn(&mut Entry) -> bool) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if take(self.lock().entry(key.clone()).or_default()) {
                return;
            }
            notified.await;
        }
    }

    /// Starts moving `key` on touch, after any copy of it by the mover.
    pub async fn touch(&self, key: &Bytes) -> Touch<'_> {
        self.acquire(key, |e| {
            let free = !e.fenced;
            e.touching += usize::from(free);
            free
        })
        .await;
        Touch {
            fences: self,
            key: key.clone(),
        }
    }

    /// Fences `key` for a piecewise copy: new touches wait; returns once
    /// the touches under way have ended. Another fence on the key is
    /// waited out first: one copier at a time.
    pub async fn fence(&self, key: &Bytes) {
        self.acquire(key, |e| {
            let free = !e.fenced;
            e.fenced = true;
            free
        })
        .await;
        self.acquire(key, |e| e.touching == 0).await;
    }

    /// Lifts the mover's fence on `key`.
    pub fn lift(&self, key: &Bytes) {
        let mut keys = self.lock();
        if let Some(e) = keys.get_mut(key) {
            e.fenced = false;
            if e.touching == 0 {
                keys.remove(key);
            }
        }
        drop(keys);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn touches_wait_for_the_fence_and_the_fence_for_touches() {
        let f = Arc::new(KeyFences::default());
        let k = Bytes::from_static(b"k");
        let t = f.touch(&k).await;
        // The fence waits for the touch under way.
        let fenced = {
            let (f, k) = (f.clone(), k.clone());
            tokio::spawn(async move { f.fence(&k).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!fenced.is_finished());
        drop(t);
        fenced.await.unwrap();
        // A new touch waits for the lift.
        let waiting = {
            let (f, k) = (f.clone(), k.clone());
            tokio::spawn(async move {
                let _t = f.touch(&k).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        // Other keys are not held.
        drop(f.touch(&Bytes::from_static(b"other")).await);
        f.lift(&k);
        waiting.await.unwrap();
        assert!(f.lock().is_empty());
    }
}

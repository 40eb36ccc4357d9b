//! A proxy-wide bound on what clients make the proxy buffer (Redis'
//! `maxmemory-clients`): unparsed requests and replies waiting to be
//! written, summed over every client. Past the bound, the clients holding
//! the most are closed, largest first, until the sum is back under it; the
//! rest never notice.
//!
//! Each client reports its usage through its [`Usage`] handle only when it
//! moved by [`GRANULE`] or more since the last report, so an ordinary
//! client (a 16 KiB read buffer, small replies) never touches the shared
//! counter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

/// Usage changes smaller than this are not reported.
pub const GRANULE: usize = 64 * 1024;

/// One client's entry.
struct Entry {
    bytes: AtomicUsize,
    evicted: AtomicBool,
    wake: Notify,
}

/// Every client's buffered bytes and their sum.
pub struct ClientsMemory {
    /// 0: unbounded.
    limit: usize,
    total: AtomicUsize,
    clients: Mutex<HashMap<u64, Arc<Entry>>>,
    started: Instant,
    /// Seconds after `started` of the last eviction warning (rate limit).
    last_warning: AtomicU64,
}

impl ClientsMemory {
    pub fn new(limit: usize) -> ClientsMemory {
        ClientsMemory {
            limit,
            total: AtomicUsize::new(0),
            clients: Mutex::new(HashMap::new()),
            started: Instant::now(),
            last_warning: AtomicU64::new(u64::MAX),
        }
    }

    /// Bytes buffered for all clients, as last reported.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Registers client `id`.
    pub fn register(self: &Arc<Self>, id: u64) -> Usage {
        let entry = Arc::new(Entry {
            bytes: AtomicUsize::new(0),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        });
        if self.limit > 0 {
            self.lock().insert(id, entry.clone());
        }
        Usage {
            pool: self.clone(),
            id,
            entry,
            reported: 0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the largest clients for closing until the rest fit.
    fn evict(&self) {
        let clients = self.lock();
        let mut total = self.total.load(Ordering::Relaxed);
        if total <= self.limit {
            return;
        }
        let mut by_size: Vec<(usize, &Arc<Entry>)> = clients
            .values()
            .filter(|e| !e.evicted.load(Ordering::Relaxed))
            .map(|e| (e.bytes.load(Ordering::Relaxed), e))
            .collect();
        by_size.sort_unstable_by_key(|b| std::cmp::Reverse(b.0));
        let mut closed = 0usize;
        let mut largest = 0usize;
        for (bytes, e) in by_size {
            if total <= self.limit || bytes == 0 {
                break;
            }
            e.evicted.store(true, Ordering::Relaxed);
            e.wake.notify_one();
            total = total.saturating_sub(bytes);
            largest = largest.max(bytes);
            closed += 1;
        }
        let now = self.started.elapsed().as_secs();
        if closed > 0 && self.last_warning.swap(now, Ordering::Relaxed) / 10 != now / 10 {
            tracing::warn!(
                closing = closed,
                largest_bytes = largest,
                buffered_bytes = self.total.load(Ordering::Relaxed),
                limit_bytes = self.limit,
                "client buffers exceed --maxmemory-clients; closing the clients holding the most"
            );
        }
    }
}

/// A client's handle: reports its usage, tells whether it was evicted.
pub struct Usage {
    pool: Arc<ClientsMemory>,
    id: u64,
    entry: Arc<Entry>,
    /// Bytes last added to the pool's total.
    reported: usize,
}

impl Usage {
    /// The client now buffers `bytes`; returns false if it must close.
    pub fn set(&mut self, bytes: usize) -> bool {
        let pool = &self.pool;
        if pool.limit == 0 || bytes.abs_diff(self.reported) < GRANULE && bytes != 0 {
            return !self.evicted();
        }
        if bytes == self.reported {
            return !self.evicted();
        }
        self.entry.bytes.store(bytes, Ordering::Relaxed);
        let total = if bytes > self.reported {
            pool.total
                .fetch_add(bytes - self.reported, Ordering::Relaxed)
                + bytes
                - self.reported
        } else {
            pool.total
                .fetch_sub(self.reported - bytes, Ordering::Relaxed)
                - (self.reported - bytes)
        };
        self.reported = bytes;
        if total > pool.limit {
            pool.evict();
        }
        !self.evicted()
    }

    /// Whether the client was chosen for closing.
    pub fn evicted(&self) -> bool {
        self.entry.evicted.load(Ordering::Relaxed)
    }

    /// Resolves when the client is chosen for closing.
    pub async fn closing(&self) {
        while !self.evicted() {
            self.entry.wake.notified().await;
        }
    }
}

impl Drop for Usage {
    fn drop(&mut self) {
        if self.pool.limit > 0 {
            self.pool.total.fetch_sub(self.reported, Ordering::Relaxed);
            self.pool.lock().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_clients_are_closed_until_the_rest_fit() {
        let pool = Arc::new(ClientsMemory::new(10 << 20));
        let mut small = pool.register(1);
        let mut mid = pool.register(2);
        let mut big = pool.register(3);
        assert!(small.set(1 << 20));
        assert!(mid.set(4 << 20));
        assert!(big.set(5 << 20));
        assert_eq!(pool.total(), 10 << 20);
        // One more MiB anywhere: the biggest goes, the others stay.
        assert!(small.set(2 << 20));
        assert!(big.evicted());
        assert!(!mid.evicted() && !small.evicted());
        drop(big);
        assert_eq!(pool.total(), 6 << 20);
    }

    #[test]
    fn small_changes_are_not_reported() {
        let pool = Arc::new(ClientsMemory::new(1 << 30));
        let mut u = pool.register(1);
        assert!(u.set(16 * 1024));
        assert_eq!(pool.total(), 0);
        assert!(u.set(GRANULE * 2));
        assert_eq!(pool.total(), GRANULE * 2);
        assert!(u.set(0));
        assert_eq!(pool.total(), 0);
    }

    #[test]
    fn unbounded_pools_track_nothing() {
        let pool = Arc::new(ClientsMemory::new(0));
        let mut u = pool.register(1);
        assert!(u.set(1 << 30));
        assert_eq!(pool.total(), 0);
    }
}

//! `CLIENT TRACKING` for the proxy's own clients: the client-side caching
//! of Redis 6+ clients (redis-py's and node-redis' caches), in RESP3's
//! default mode, built on the shards' invalidation streams
//! ([`crate::backend::tracking`]).
//!
//! A tracking client's reads go down its shard primary's tracking
//! connection (or are answered by the near cache, which reads through it),
//! so Redis tracks their keys for the proxy; the proxy remembers which of
//! its clients read which key ([`Table`]), and when Redis pushes an
//! `invalidate` for a key, each of those clients gets one (once per read,
//! as from Redis). A client's invalidations are written only when none of
//! its replies is pending, so one never overtakes the reply of a read made
//! before the write: the client caches that value, then drops it. Keys the
//! proxy cannot track (PostgreSQL shards) are invalidated right after their
//! reply, so a client never keeps them. A broken stream or FLUSHALL
//! invalidates everything (`invalidate` with a nil list).
//!
//! Not supported (refused with an error naming it): RESP2 with `REDIRECT`,
//! `BCAST`/`PREFIX`, `NOLOOP`. Reads inside MULTI and scripts are not
//! tracked (clients do not cache them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use crate::backend::tracking::Invalidations;

/// Keys remembered at most (Redis' `tracking-table-max-keys` default);
/// past it the oldest-inserted key is dropped and its readers invalidated.
const MAX_KEYS: usize = 1_000_000;
/// Bytes of keys queued for one client at most; past it the client is
/// told to drop everything instead.
const MAX_QUEUED: usize = 1 << 20;

/// Which clients read which key, and each tracking client's inbox.
pub struct Table {
    inner: Mutex<Inner>,
    clients_gauge: metrics::Gauge,
    keys_gauge: metrics::Gauge,
    invalidations: metrics::Counter,
}

impl Default for Table {
    fn default() -> Table {
        use crate::metrics::{TRACKING_CLIENTS, TRACKING_INVALIDATIONS, TRACKING_KEYS};
        Table {
            inner: Mutex::default(),
            clients_gauge: metrics::gauge!(TRACKING_CLIENTS),
            keys_gauge: metrics::gauge!(TRACKING_KEYS),
            invalidations: metrics::counter!(TRACKING_INVALIDATIONS),
        }
    }
}

#[derive(Default)]
struct Inner {
    keys: HashMap<Bytes, SmallVec<[u64; 2]>>,
    /// Insertion order of `keys`, for the bound (may hold keys already
    /// invalidated; skipped).
    order: std::collections::VecDeque<Bytes>,
    clients: HashMap<u64, Arc<Inbox>>,
}

/// The invalidations waiting to be written to one client.
#[derive(Default)]
pub struct Inbox {
    queue: Mutex<Queue>,
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct Queue {
    keys: Vec<Bytes>,
    bytes: usize,
    all: bool,
}

/// What a client is told.
#[derive(Debug, PartialEq, Eq)]
pub enum Invalidation {
    Keys(Vec<Bytes>),
    All,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Table {
    /// Client `id` turned tracking on; returns its inbox.
    pub fn join(&self, id: u64) -> Arc<Inbox> {
        let inbox = Arc::new(Inbox::default());
        let mut t = lock(&self.inner);
        t.clients.insert(id, inbox.clone());
        self.clients_gauge.set(t.clients.len() as f64);
        inbox
    }

    /// Client `id` turned tracking off or left (its keys are dropped as
    /// they are invalidated or evicted).
    pub fn leave(&self, id: u64) {
        let mut t = lock(&self.inner);
        t.clients.remove(&id);
        self.clients_gauge.set(t.clients.len() as f64);
    }

    /// Client `id` read `keys` through a tracking connection.
    pub fn read(&self, id: u64, keys: impl Iterator<Item = Bytes>) {
        let mut evicted = Vec::new();
        {
            let mut t = lock(&self.inner);
            for k in keys {
                let readers = t.keys.entry(k.clone()).or_default();
                if readers.contains(&id) {
                    continue;
                }
                readers.push(id);
                if readers.len() == 1 {
                    t.order.push_back(k);
                }
            }
            while t.keys.len() > MAX_KEYS {
                let Some(k) = t.order.pop_front() else { break };
                if let Some(ids) = t.keys.remove(&k) {
                    evicted.push((k, ids));
                }
            }
            if t.order.len() > 2 * MAX_KEYS.max(t.keys.len()) {
                // Drop the invalidated keys' places.
                let keys = &t.keys;
                let order: std::collections::VecDeque<Bytes> = t
                    .order
                    .iter()
                    .filter(|k| keys.contains_key(*k))
                    .cloned()
                    .collect();
                t.order = order;
            }
            for (k, ids) in evicted.drain(..) {
                for id in ids {
                    if let Some(inbox) = t.clients.get(&id) {
                        inbox.add(std::slice::from_ref(&k));
                        self.invalidations.increment(1);
                    }
                }
            }
            self.keys_gauge.set(t.keys.len() as f64);
        }
    }

    /// Queues invalidations of `keys` for a client at once (keys it read
    /// that cannot be tracked).
    pub fn invalidate_now(&self, inbox: &Inbox, keys: &[Bytes]) {
        inbox.add(keys);
        self.invalidations.increment(keys.len() as u64);
    }

    /// Clients with tracking on (INFO's `tracking_clients`).
    pub fn clients(&self) -> usize {
        lock(&self.inner).clients.len()
    }

    /// Keys tracked now (INFO's `tracking_total_keys`).
    pub fn len(&self) -> usize {
        lock(&self.inner).keys.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Invalidations for Table {
    fn keys(&self, keys: &[Bytes]) {
        let mut t = lock(&self.inner);
        let mut per_client: SmallVec<[(u64, SmallVec<[Bytes; 2]>); 4]> = SmallVec::new();
        for k in keys {
            let Some(ids) = t.keys.remove(k) else {
                continue;
            };
            for id in ids {
                match per_client.iter_mut().find(|(c, _)| *c == id) {
                    Some((_, ks)) => ks.push(k.clone()),
                    None => per_client.push((id, SmallVec::from_elem(k.clone(), 1))),
                }
            }
        }
        for (id, ks) in per_client {
            if let Some(inbox) = t.clients.get(&id) {
                inbox.add(&ks);
                self.invalidations.increment(ks.len() as u64);
            }
        }
        self.keys_gauge.set(t.keys.len() as f64);
    }

    fn all(&self) {
        let mut t = lock(&self.inner);
        t.keys.clear();
        t.order.clear();
        for inbox in t.clients.values() {
            inbox.flush();
        }
        self.invalidations.increment(t.clients.len() as u64);
        self.keys_gauge.set(0.0);
    }
}

impl Inbox {
    /// Queues invalidations of `keys`.
    pub fn add(&self, keys: &[Bytes]) {
        {
            let mut q = lock(&self.queue);
            if !q.all {
                for k in keys {
                    q.bytes += k.len();
                    q.keys.push(k.clone());
                }
                if q.bytes > MAX_QUEUED {
                    q.keys.clear();
                    q.bytes = 0;
                    q.all = true;
                }
            }
        }
        self.ready.notify_one();
    }

    /// Queues "drop everything".
    pub fn flush(&self) {
        {
            let mut q = lock(&self.queue);
            q.keys.clear();
            q.bytes = 0;
            q.all = true;
        }
        self.ready.notify_one();
    }

    /// The next invalidations (cancel-safe: nothing is taken until ready).
    pub async fn recv(&self) -> Invalidation {
        loop {
            if let Some(i) = self.take() {
                return i;
            }
            self.ready.notified().await;
        }
    }

    fn take(&self) -> Option<Invalidation> {
        let mut q = lock(&self.queue);
        if q.all {
            *q = Queue::default();
            return Some(Invalidation::All);
        }
        if q.keys.is_empty() {
            return None;
        }
        q.bytes = 0;
        Some(Invalidation::Keys(std::mem::take(&mut q.keys)))
    }
}

impl Invalidation {
    /// The RESP3 push: `>2 invalidate [keys]` (nil for everything).
    pub fn encode(&self, out: &mut BytesMut) {
        out.extend_from_slice(b">2\r\n$10\r\ninvalidate\r\n");
        match self {
            Invalidation::All => out.extend_from_slice(b"_\r\n"),
            Invalidation::Keys(keys) => {
                out.extend_from_slice(format!("*{}\r\n", keys.len()).as_bytes());
                for k in keys {
                    out.extend_from_slice(format!("${}\r\n", k.len()).as_bytes());
                    out.extend_from_slice(k);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
    }
}

/// One client's tracking settings (`CLIENT TRACKING ON [OPTIN|OPTOUT]`).
pub struct ClientTracking {
    pub(super) table: Arc<Table>,
    /// The table as the shards' streams see it (registered on the
    /// tracking connection of each primary this client reads from).
    pub(super) listener: Arc<dyn Invalidations>,
    pub(super) id: u64,
    pub(super) inbox: Arc<Inbox>,
    pub(super) optin: bool,
    pub(super) optout: bool,
    /// `CLIENT CACHING yes|no` for the next command.
    pub(super) caching: Option<bool>,
}

impl ClientTracking {
    pub(super) fn new(table: Arc<Table>, id: u64, optin: bool, optout: bool) -> ClientTracking {
        let inbox = table.join(id);
        ClientTracking {
            listener: table.clone(),
            table,
            id,
            inbox,
            optin,
            optout,
            caching: None,
        }
    }

    /// Whether the keys of the command being run are tracked (OPTIN needs
    /// `CLIENT CACHING yes` before it, OPTOUT is off after `no`).
    pub(super) fn tracks_now(&self) -> bool {
        if self.optin {
            self.caching == Some(true)
        } else if self.optout {
            self.caching != Some(false)
        } else {
            true
        }
    }
}

impl Drop for ClientTracking {
    fn drop(&mut self) {
        self.table.leave(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn an_invalidation_reaches_each_reader_of_the_key_once() {
        let t = Arc::new(Table::default());
        let (a, c) = (t.join(1), t.join(2));
        t.read(1, [b("k"), b("x")].into_iter());
        t.read(2, [b("k")].into_iter());
        t.keys(&[b("k")]);
        assert_eq!(a.take(), Some(Invalidation::Keys(vec![b("k")])));
        assert_eq!(c.take(), Some(Invalidation::Keys(vec![b("k")])));
        // Once per read: a second write says nothing until read again.
        t.keys(&[b("k")]);
        assert_eq!(a.take(), None);
        t.all();
        assert_eq!(a.take(), Some(Invalidation::All));
        assert_eq!(c.take(), Some(Invalidation::All));
        t.leave(1);
        t.read(2, [b("y")].into_iter());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn pushes_encode_as_redis_sends_them() {
        let mut out = BytesMut::new();
        Invalidation::Keys(vec![b("a"), b("bc")]).encode(&mut out);
        assert_eq!(
            &out[..],
            b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n$2\r\nbc\r\n"
        );
        out.clear();
        Invalidation::All.encode(&mut out);
        assert_eq!(&out[..], b">2\r\n$10\r\ninvalidate\r\n_\r\n");
    }

    #[test]
    fn a_client_that_does_not_read_its_inbox_is_told_to_drop_everything() {
        let inbox = Inbox::default();
        let key = Bytes::from(vec![b'k'; 1024]);
        for _ in 0..2048 {
            inbox.add(std::slice::from_ref(&key));
        }
        assert_eq!(inbox.take(), Some(Invalidation::All));
        assert_eq!(inbox.take(), None);
    }
}

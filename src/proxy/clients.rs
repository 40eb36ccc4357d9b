//! The proxy's clients: a registry for `CLIENT LIST` and `CLIENT KILL`,
//! and a proxy-wide bound on what they make the proxy buffer (Redis'
//! `maxmemory-clients`): unparsed requests and replies waiting to be
//! written, summed over every client. Past the bound, the clients holding
//! the most are closed, largest first, until the sum is back under it; the
//! rest never notice.
//!
//! Each client reports its usage through its [`Usage`] handle only when it
//! moved by [`GRANULE`] or more since the last report, so an ordinary
//! client (a 16 KiB read buffer, small replies) never touches the shared
//! counter. Per command a client stores two relaxed atomics in its own
//! [`Entry`] (its last command and when); what `CLIENT LIST` shows beyond
//! that ([`Info`]) is written only when it changes (SETNAME, AUTH, HELLO,
//! subscriptions, MULTI).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

/// [`Entry::request_unblock`]'s modes.
const UNBLOCK_TIMEOUT: u8 = 1;
const UNBLOCK_ERROR: u8 = 2;

/// Usage changes smaller than this are not reported.
pub const GRANULE: usize = 64 * 1024;

/// What `CLIENT LIST` shows of a client that changes rarely.
#[derive(Debug, Clone, Default)]
pub struct Info {
    pub name: String,
    pub user: String,
    pub lib_name: String,
    pub lib_ver: String,
    pub resp: u8,
    /// The database `SELECT` chose.
    pub db: u32,
    pub sub: usize,
    pub psub: usize,
    pub ssub: usize,
    /// Commands queued in MULTI, -1 outside one.
    pub multi: i64,
}

/// One client's entry.
pub struct Entry {
    pub id: u64,
    pub addr: String,
    connected: Instant,
    bytes: AtomicUsize,
    evicted: AtomicBool,
    killed: AtomicBool,
    wake: Notify,
    /// In a blocking command now, on its way to the shard or waiting there
    /// (what `CLIENT UNBLOCK` applies to).
    blocked: AtomicBool,
    /// `CLIENT UNBLOCK` asked for the blocking command to end: 0 no,
    /// [`UNBLOCK_TIMEOUT`] or [`UNBLOCK_ERROR`].
    unblock: AtomicU8,
    unblock_wake: Notify,
    /// Milliseconds after the registry's start of the last command.
    last_active_ms: AtomicU64,
    /// Index + 1 in the command table of the last command (0: none yet).
    last_cmd: AtomicUsize,
    info: Mutex<Info>,
}

impl Entry {
    /// A command `spec` arrived at `at`.
    pub fn touch(&self, spec: &'static crate::command::CommandSpec, at: Instant, base: Instant) {
        let table = crate::command::table::COMMANDS;
        // Address arithmetic (no pointer is made from it): the row's index.
        let index = (spec as *const crate::command::CommandSpec as usize)
            .wrapping_sub(table.as_ptr() as usize)
            / std::mem::size_of::<crate::command::CommandSpec>();
        self.last_cmd.store(index + 1, Ordering::Relaxed);
        self.last_active_ms.store(
            at.saturating_duration_since(base).as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    /// Replaces what `CLIENT LIST` shows.
    pub fn set_info(&self, info: Info) {
        *self.info.lock().unwrap_or_else(|e| e.into_inner()) = info;
    }

    pub fn info(&self) -> Info {
        self.info.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How long the client has been connected.
    pub fn age(&self, now: Instant) -> std::time::Duration {
        now.saturating_duration_since(self.connected)
    }

    /// The client entered (true) or left (false) a blocking command.
    pub fn set_blocked(&self, on: bool) {
        self.unblock.store(0, Ordering::Relaxed);
        self.blocked.store(on, Ordering::Release);
    }

    /// `CLIENT UNBLOCK id TIMEOUT|ERROR`: whether the client was blocked
    /// (and not already asked to unblock); its blocking command then ends
    /// as Redis ends it (see `exclusive`).
    pub fn request_unblock(&self, error: bool) -> bool {
        if !self.blocked.load(Ordering::Acquire) {
            return false;
        }
        let mode = if error {
            UNBLOCK_ERROR
        } else {
            UNBLOCK_TIMEOUT
        };
        let asked = self
            .unblock
            .compare_exchange(0, mode, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if asked {
            self.unblock_wake.notify_waiters();
        }
        asked
    }

    /// Resolves when `CLIENT UNBLOCK` asked this client's blocking command
    /// to end; true for the ERROR mode.
    pub async fn unblocked(&self) -> bool {
        loop {
            let woken = self.unblock_wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.unblock.load(Ordering::Acquire) {
                0 => woken.await,
                n => return n == UNBLOCK_ERROR,
            }
        }
    }

    /// `CLIENT KILL`: the client closes at its next wake-up.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// The client's `CLIENT LIST` line (with its newline).
    pub fn line(&self, base: Instant, now: Instant) -> String {
        let i = self.info();
        let idle_ms = now
            .saturating_duration_since(base)
            .as_millis()
            .saturating_sub(u128::from(self.last_active_ms.load(Ordering::Relaxed)));
        let cmd = match self.last_cmd.load(Ordering::Relaxed) {
            0 => "NULL",
            n => crate::command::table::COMMANDS
                .get(n - 1)
                .map_or("NULL", |c| c.name),
        };
        let flags = match (i.sub + i.psub + i.ssub > 0, i.multi >= 0) {
            (true, _) => "P",
            (false, true) => "x",
            (false, false) => "N",
        };
        format!(
            "id={} addr={} laddr= fd=-1 name={} age={} idle={} flags={flags} db={} sub={} psub={} ssub={} multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem={} events=r cmd={cmd} user={} redir=-1 resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.addr,
            i.name,
            now.saturating_duration_since(self.connected).as_secs(),
            idle_ms / 1000,
            i.db,
            i.sub,
            i.psub,
            i.ssub,
            i.multi,
            self.bytes.load(Ordering::Relaxed),
            i.user,
            i.resp,
            i.lib_name,
            i.lib_ver,
        )
    }
}

/// Why a client must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// Chosen by `--maxmemory-clients`.
    Evicted,
    /// `CLIENT KILL`.
    Killed,
}

/// Every client of the proxy, and their buffered bytes with their sum.
pub struct Clients {
    /// 0: unbounded.
    limit: usize,
    total: AtomicUsize,
    clients: Mutex<HashMap<u64, Arc<Entry>>>,
    started: Instant,
    /// Seconds after `started` of the last eviction warning (rate limit).
    last_warning: AtomicU64,
}

impl Clients {
    pub fn new(limit: usize) -> Clients {
        Clients {
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

    /// Registers client `id` connected from `addr`.
    pub fn register(self: &Arc<Self>, id: u64, addr: String) -> Usage {
        let entry = Arc::new(Entry {
            id,
            addr,
            connected: Instant::now(),
            bytes: AtomicUsize::new(0),
            evicted: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            wake: Notify::new(),
            blocked: AtomicBool::new(false),
            unblock: AtomicU8::new(0),
            unblock_wake: Notify::new(),
            last_active_ms: AtomicU64::new(self.started.elapsed().as_millis() as u64),
            last_cmd: AtomicUsize::new(0),
            info: Mutex::new(Info {
                user: crate::auth::DEFAULT_USER.to_owned(),
                resp: 2,
                multi: -1,
                ..Info::default()
            }),
        });
        self.lock().insert(id, entry.clone());
        Usage {
            pool: self.clone(),
            id,
            entry,
            reported: 0,
        }
    }

    /// When the registry started (the clock of [`Entry::touch`]).
    pub fn base(&self) -> Instant {
        self.started
    }

    /// Every client, by id.
    pub fn all(&self) -> Vec<Arc<Entry>> {
        let mut all: Vec<Arc<Entry>> = self.lock().values().cloned().collect();
        all.sort_by_key(|e| e.id);
        all
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

/// A client's handle: reports its usage, tells whether it must close.
pub struct Usage {
    pool: Arc<Clients>,
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

    /// The client's registry entry.
    pub fn entry(&self) -> &Arc<Entry> {
        &self.entry
    }

    /// Resolves when the client must close, saying why.
    pub async fn closing(&self) -> Closing {
        loop {
            if self.entry.killed.load(Ordering::Relaxed) {
                return Closing::Killed;
            }
            if self.evicted() {
                return Closing::Evicted;
            }
            self.entry.wake.notified().await;
        }
    }
}

impl Drop for Usage {
    fn drop(&mut self) {
        if self.pool.limit > 0 {
            self.pool.total.fetch_sub(self.reported, Ordering::Relaxed);
        }
        self.pool.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_clients_are_closed_until_the_rest_fit() {
        let pool = Arc::new(Clients::new(10 << 20));
        let mut small = pool.register(1, String::new());
        let mut mid = pool.register(2, String::new());
        let mut big = pool.register(3, String::new());
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
        let pool = Arc::new(Clients::new(1 << 30));
        let mut u = pool.register(1, String::new());
        assert!(u.set(16 * 1024));
        assert_eq!(pool.total(), 0);
        assert!(u.set(GRANULE * 2));
        assert_eq!(pool.total(), GRANULE * 2);
        assert!(u.set(0));
        assert_eq!(pool.total(), 0);
    }

    #[test]
    fn unbounded_pools_track_nothing() {
        let pool = Arc::new(Clients::new(0));
        let mut u = pool.register(1, String::new());
        assert!(u.set(1 << 30));
        assert_eq!(pool.total(), 0);
    }
}

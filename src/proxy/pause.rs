//! `CLIENT PAUSE timeout [WRITE|ALL]` / `CLIENT UNPAUSE` of this proxy's
//! clients, with Redis 7.0's semantics: a paused client's next command
//! waits (it is not refused) until the pause ends or `CLIENT UNPAUSE`;
//! `ALL` holds every command of every client, the pausing client's own
//! (even its `CLIENT UNPAUSE`) included; `WRITE` holds the commands that
//! may change data or replicate (writes, `PUBLISH`/`SPUBLISH`, `EVAL`,
//! `EVALSHA`, `FCALL`, `PFCOUNT`, and `EXEC` of a transaction that queued
//! one) while reads go on. A new pause never shortens or weakens one in
//! force: the end is the later of the two, the mode the stricter (Redis
//! 7.0 keeps one pause). Waiting clients count in `blocked_clients` and in
//! `shardgate_paused_clients`.
//!
//! The shards are not paused: a pause holds what goes through this proxy
//! (another proxy or a direct client still writes), which is what an
//! operator moving clients between proxies needs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::command::{CommandSpec, Flags};
use crate::error::ProxyError;
use crate::protocol::Reply;

/// What a pause holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PauseMode {
    /// Commands that may write or replicate.
    Write,
    /// Every command.
    All,
}

/// The pause in force (if any).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct State {
    mode: Option<PauseMode>,
    until: Option<Instant>,
}

impl State {
    /// The mode in force at `now`.
    fn at(&self, now: Instant) -> Option<PauseMode> {
        match (self.mode, self.until) {
            (Some(m), Some(until)) if now < until => Some(m),
            _ => None,
        }
    }
}

/// Commands Redis 7.0 flags `may_replicate` that are not `write`: paused
/// by `CLIENT PAUSE WRITE` as well.
const MAY_REPLICATE: [&str; 6] = ["eval", "evalsha", "fcall", "publish", "spublish", "pfcount"];

/// Whether `spec` (with `tx_writes`: a transaction that queued a write,
/// for EXEC) may write or replicate.
pub fn may_write(spec: &CommandSpec, tx_writes: bool) -> bool {
    spec.flags.contains(Flags::WRITE)
        || MAY_REPLICATE.contains(&spec.name)
        || (spec.name == "exec" && tx_writes)
}

/// The proxy's pause (one per proxy, shared by its clients).
pub struct Pause {
    /// Fast path: no pause was set since the last UNPAUSE (a request then
    /// reads neither the clock nor the state).
    on: AtomicBool,
    state: watch::Sender<State>,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            on: AtomicBool::new(false),
            state: watch::Sender::new(State::default()),
        }
    }
}

impl Pause {
    /// `CLIENT PAUSE`: holds `mode` for `timeout` from now (never less
    /// than a pause already in force).
    pub fn pause(&self, timeout: Duration, mode: PauseMode) {
        let now = Instant::now();
        let until = now + timeout;
        self.state.send_modify(|s| {
            let live = s.at(now);
            s.mode = Some(live.map_or(mode, |m| m.max(mode)));
            s.until = Some(match (live, s.until) {
                (Some(_), Some(old)) => old.max(until),
                _ => until,
            });
        });
        self.on.store(true, Ordering::Release);
    }

    /// `CLIENT UNPAUSE`: every waiting client goes on.
    pub fn unpause(&self) {
        self.on.store(false, Ordering::Release);
        self.state.send_replace(State::default());
    }

    /// Whether a command (`may_write`: see [`may_write`]) must wait now.
    pub fn holds(&self, may_write: impl FnOnce() -> bool) -> bool {
        if !self.on.load(Ordering::Acquire) {
            return false;
        }
        match self.state.borrow().at(Instant::now()) {
            None => false,
            Some(PauseMode::All) => true,
            Some(PauseMode::Write) => may_write(),
        }
    }

    /// Waits until a command that [`Pause::holds`] may run.
    pub async fn wait(&self, may_write: bool) {
        let mut rx = self.state.subscribe();
        loop {
            let state = *rx.borrow_and_update();
            let held = match state.at(Instant::now()) {
                None => false,
                Some(PauseMode::All) => true,
                Some(PauseMode::Write) => may_write,
            };
            if !held {
                return;
            }
            let until = state.until.unwrap_or_else(Instant::now);
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }
}

/// `CLIENT PAUSE timeout [WRITE|ALL]` (`args`: after PAUSE), with Redis'
/// errors.
pub(super) fn client_pause(proxy: &super::Proxy, args: &[Bytes]) -> Result<Reply, ProxyError> {
    if args.is_empty() || args.len() > 2 {
        return Err(ProxyError::err(
            "wrong number of arguments for 'client|pause' command",
        ));
    }
    let ms = std::str::from_utf8(&args[0])
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| ProxyError::err("timeout is not an integer or out of range"))?;
    if ms < 0 {
        return Err(ProxyError::err("timeout is negative"));
    }
    let mode = match args.get(1).map(|m| m.to_ascii_uppercase()) {
        None => PauseMode::All,
        Some(m) if m == b"ALL" => PauseMode::All,
        Some(m) if m == b"WRITE" => PauseMode::Write,
        Some(_) => return Err(ProxyError::err("CLIENT PAUSE mode must be WRITE or ALL")),
    };
    proxy.pause.pause(Duration::from_millis(ms as u64), mode);
    Ok(Reply::Ok)
}

/// `CLIENT UNBLOCK id [TIMEOUT|ERROR]` (`args`: after UNBLOCK): `:1` when
/// client `id` of this proxy is blocked in a blocking command (which then
/// ends as Redis ends it: see `exclusive`), else `:0`. A client waiting
/// for a `CLIENT PAUSE` is not blocked in this sense (Redis 7.0 crashes
/// on that; 7.2 fails the command).
pub(super) fn client_unblock(proxy: &super::Proxy, args: &[Bytes]) -> Result<Reply, ProxyError> {
    if args.is_empty() || args.len() > 2 {
        return Err(ProxyError::err(
            "wrong number of arguments for 'client|unblock' command",
        ));
    }
    let id = std::str::from_utf8(&args[0])
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| ProxyError::err("value is not an integer or out of range"))?;
    let error = match args.get(1).map(|m| m.to_ascii_uppercase()) {
        None => false,
        Some(m) if m == b"TIMEOUT" => false,
        Some(m) if m == b"ERROR" => true,
        Some(_) => {
            return Err(ProxyError::err(
                "CLIENT UNBLOCK reason should be TIMEOUT or ERROR",
            ));
        }
    };
    let unblocked = proxy
        .clients
        .all()
        .iter()
        .find(|e| i64::try_from(e.id).ok() == Some(id))
        .is_some_and(|e| e.request_unblock(error));
    Ok(Reply::Int(i64::from(unblocked)))
}

impl super::session::Session {
    /// Whether `req` may write or replicate, for `CLIENT PAUSE WRITE`
    /// (EXEC: whether the transaction queued such a command).
    pub(super) fn may_write(&self, req: &crate::protocol::Request) -> bool {
        let Some(spec) = crate::command::lookup(req.name()) else {
            return false;
        };
        let tx_writes = spec.name == "exec"
            && self.tx.as_ref().is_some_and(|tx| {
                tx.queued
                    .iter()
                    .any(|r| crate::command::lookup(r.name()).is_some_and(|s| may_write(s, false)))
            });
        may_write(spec, tx_writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup;

    #[test]
    fn a_new_pause_never_shortens_or_weakens_one_in_force() {
        let p = Pause::default();
        let get = lookup(b"get").unwrap();
        let set = lookup(b"set").unwrap();
        assert!(!p.holds(|| may_write(set, false)));
        p.pause(Duration::from_secs(60), PauseMode::Write);
        assert!(p.holds(|| may_write(set, false)));
        assert!(!p.holds(|| may_write(get, false)));
        p.pause(Duration::from_millis(1), PauseMode::All);
        assert!(p.holds(|| may_write(get, false)), "ALL for the longer time");
        p.unpause();
        assert!(!p.holds(|| true));
        p.pause(Duration::ZERO, PauseMode::All);
        assert!(!p.holds(|| true), "a zero timeout has ended");
    }

    #[test]
    fn write_pauses_hold_what_may_replicate() {
        let w = |n: &[u8]| may_write(lookup(n).unwrap(), false);
        for name in [
            &b"set"[..],
            b"del",
            b"publish",
            b"eval",
            b"fcall",
            b"pfcount",
            b"incr",
        ] {
            assert!(w(name), "{}", String::from_utf8_lossy(name));
        }
        for name in [
            &b"get"[..],
            b"eval_ro",
            b"fcall_ro",
            b"ping",
            b"exec",
            b"client",
        ] {
            assert!(!w(name), "{}", String::from_utf8_lossy(name));
        }
        assert!(may_write(lookup(b"exec").unwrap(), true));
    }

    #[tokio::test]
    async fn waiters_go_on_at_unpause_or_the_end() {
        let p = std::sync::Arc::new(Pause::default());
        p.pause(Duration::from_secs(60), PauseMode::All);
        let w = tokio::spawn({
            let p = p.clone();
            async move { p.wait(false).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!w.is_finished());
        p.unpause();
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .unwrap()
            .unwrap();
        p.pause(Duration::from_millis(30), PauseMode::Write);
        let t0 = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), p.wait(true))
            .await
            .unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(25));
    }
}

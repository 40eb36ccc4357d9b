//! MONITOR: every command that passes through this proxy, in the lines
//! Redis prints (`+1700000000.123456 [0 127.0.0.1:50000] "set" "k" "v"`).
//!
//! Lines are made only while someone monitors (one relaxed load per
//! command otherwise) and go through a bounded broadcast channel; a monitor
//! that falls more than [`BACKLOG`] lines behind is closed (as Redis closes
//! one past its output buffer limit). Like Redis, commands flagged admin or
//! `skip_monitor` are not shown and passwords are redacted (AUTH, HELLO
//! ... AUTH, MIGRATE ... AUTH/AUTH2).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::broadcast;

use crate::command::{Categories, CommandSpec, Flags, Handling};

/// Lines a monitor may fall behind before it is closed.
pub const BACKLOG: usize = 16 * 1024;

/// The monitors of one proxy.
pub struct Monitors {
    watchers: AtomicUsize,
    tx: broadcast::Sender<Bytes>,
}

impl Default for Monitors {
    fn default() -> Self {
        Monitors {
            watchers: AtomicUsize::new(0),
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Monitors {
    /// Whether anyone monitors (the hot path's only cost).
    pub fn active(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// A new monitor's stream of lines.
    pub fn watch(self: &Arc<Self>) -> Watch {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        Watch {
            rx: self.tx.subscribe(),
            owner: self.clone(),
        }
    }

    /// Shows one command from client `addr` to every monitor (not the
    /// ones the proxy refuses, which do not run, nor admin ones).
    pub fn feed(&self, addr: &str, spec: &CommandSpec, args: &[Bytes]) {
        if spec.flags.contains(Flags::SKIP_MONITOR)
            || spec.flags.contains(Flags::ADMIN)
            || matches!(spec.handling, Handling::Unsupported(_))
        {
            return;
        }
        // A container's subcommand decides (`config|get` is admin).
        if let Some(sub) = args
            .get(1)
            .and_then(|a| crate::command::subcommand(spec, a))
            && sub.categories.intersects(Categories::ADMIN)
        {
            return;
        }
        let _ = self
            .tx
            .send(line(std::time::SystemTime::now(), addr, spec, args));
    }
}

/// One monitor's stream; dropping it stops the feed when it was the last.
pub struct Watch {
    rx: broadcast::Receiver<Bytes>,
    owner: Arc<Monitors>,
}

/// The monitor fell more than [`BACKLOG`] lines behind.
pub struct Lagged;

impl Watch {
    /// The next line (cancel-safe).
    pub async fn recv(&mut self) -> Result<Bytes, Lagged> {
        match self.rx.recv().await {
            Ok(line) => Ok(line),
            Err(broadcast::error::RecvError::Lagged(_)) => Err(Lagged),
            // The sender lives as long as the proxy.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }

    /// A line already queued, if any.
    pub fn try_recv(&mut self) -> Result<Option<Bytes>, Lagged> {
        match self.rx.try_recv() {
            Ok(line) => Ok(Some(line)),
            Err(broadcast::error::TryRecvError::Lagged(_)) => Err(Lagged),
            Err(_) => Ok(None),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.owner.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which arguments Redis redacts: all after AUTH; after HELLO's AUTH the
/// user and password; after MIGRATE's AUTH the password, AUTH2 both.
fn redacted(spec: &CommandSpec, args: &[Bytes], i: usize) -> bool {
    match spec.name {
        "auth" => i >= 1,
        "hello" | "migrate" => {
            let (n, kw) = if spec.name == "hello" {
                (2, "AUTH")
            } else {
                (1, "AUTH")
            };
            args[..i].iter().enumerate().rev().any(|(j, a)| {
                (a.eq_ignore_ascii_case(kw.as_bytes()) && i - j <= n)
                    || (spec.name == "migrate" && a.eq_ignore_ascii_case(b"AUTH2") && i - j <= 2)
            })
        }
        _ => false,
    }
}

/// The MONITOR line of one command.
fn line(at: std::time::SystemTime, addr: &str, spec: &CommandSpec, args: &[Bytes]) -> Bytes {
    let t = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut out = BytesMut::with_capacity(64 + args.iter().map(|a| a.len() + 3).sum::<usize>());
    out.put_slice(format!("+{}.{:06} [0 {addr}]", t.as_secs(), t.subsec_micros()).as_bytes());
    for (i, a) in args.iter().enumerate() {
        out.put_u8(b' ');
        if redacted(spec, args, i) {
            out.put_slice(b"\"(redacted)\"");
        } else {
            repr(a, &mut out);
        }
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// Redis' `sdscatrepr`: a quoted string with C escapes.
fn repr(s: &[u8], out: &mut BytesMut) {
    out.put_u8(b'"');
    for &c in s {
        match c {
            b'\\' => out.put_slice(b"\\\\"),
            b'"' => out.put_slice(b"\\\""),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            7 => out.put_slice(b"\\a"),
            8 => out.put_slice(b"\\b"),
            c if c.is_ascii_graphic() || c == b' ' => out.put_u8(c),
            c => out.put_slice(format!("\\x{c:02x}").as_bytes()),
        }
    }
    out.put_u8(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup;

    fn args(a: &[&str]) -> Vec<Bytes> {
        a.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn lines_quote_like_redis_and_redact_passwords() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        let set = lookup(b"set").unwrap();
        let l = line(
            at,
            "127.0.0.1:5",
            set,
            &args(&["SET", "k", "a \"q\"\n\x01"]),
        );
        assert_eq!(
            &l[..],
            b"+1700000000.123456 [0 127.0.0.1:5] \"SET\" \"k\" \"a \\\"q\\\"\\n\\x01\"\r\n"
        );
        let auth = lookup(b"auth").unwrap();
        let l = line(at, "a", auth, &args(&["AUTH", "user", "pw"]));
        assert!(
            l.ends_with(b"\"AUTH\" \"(redacted)\" \"(redacted)\"\r\n"),
            "{l:?}"
        );
        let hello = lookup(b"hello").unwrap();
        let l = line(
            at,
            "a",
            hello,
            &args(&["HELLO", "3", "AUTH", "u", "p", "SETNAME", "n"]),
        );
        assert!(
            l.ends_with(
                b"\"HELLO\" \"3\" \"AUTH\" \"(redacted)\" \"(redacted)\" \"SETNAME\" \"n\"\r\n"
            ),
            "{l:?}"
        );
    }
}

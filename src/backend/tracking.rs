//! One invalidation stream per Redis primary: a RESP3 connection with
//! `CLIENT TRACKING ON`, and who listens to its `invalidate` pushes.
//!
//! Redis tracks, for this connection, every key read through it, and
//! pushes an `invalidate` for each one anyone writes afterwards (once per
//! read; `invalidate` with no keys on FLUSHALL). Reads and pushes come down
//! the one connection in the order Redis produced them, so whoever reads
//! through it and listens to it knows, at each reply, of every write made
//! before that reply. Two users build on it: the near cache
//! (`backend::cache`) and the proxy's `CLIENT TRACKING` for its own
//! clients (`proxy::tracking`). Its task connects with the first request.
//! When the connection ends, every listener is told to forget everything
//! ([`Invalidations::all`]); a new connection subscribes before any
//! request goes down it.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::EndpointState;
use super::mux::{MuxConn, PushSink, ReplyRx};
use crate::protocol::reply;

/// `CLIENT TRACKING ON`, sent first on every tracking connection.
const TRACKING_ON: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$2\r\nON\r\n";

/// A listener to a primary's invalidations. Called on the connection's
/// reader, between the replies around each push: keep it short.
pub trait Invalidations: Send + Sync {
    /// Writes changed these keys (anyone's, anywhere).
    fn keys(&self, keys: &[Bytes]);
    /// Forget every key: FLUSHALL on the shard, or the stream broke.
    fn all(&self);
}

/// A primary's tracking connection and its listeners.
pub struct TrackingConn {
    conn: MuxConn,
    listeners: Arc<Listeners>,
}

#[derive(Default)]
struct Listeners {
    list: arc_swap::ArcSwap<Vec<Arc<dyn Invalidations>>>,
}

impl TrackingConn {
    /// The stream of primary `ep` (it connects with the first request).
    pub fn new(ep: Arc<EndpointState>, on: Option<&tokio::runtime::Handle>) -> TrackingConn {
        let listeners = Arc::new(Listeners::default());
        let conn = MuxConn::spawn_pushing(ep, on, listeners.clone());
        TrackingConn { conn, listeners }
    }

    /// Adds `l` to the listeners, unless it is one already.
    pub fn listen(&self, l: &Arc<dyn Invalidations>) {
        let same = |a: &Arc<dyn Invalidations>| std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(l));
        if self.listeners.list.load().iter().any(same) {
            return;
        }
        self.listeners.list.rcu(|list| {
            let mut list = Vec::clone(list);
            if !list.iter().any(same) {
                list.push(l.clone());
            }
            list
        });
    }

    /// Sends a read (RESP3) down the connection: Redis tracks its keys.
    pub fn send(&self, frame: &[u8]) -> ReplyRx {
        self.conn.send(frame)
    }

    /// [`TrackingConn::send`] of a request `encode` appends.
    pub fn send_encoded(&self, encode: impl FnOnce(&mut BytesMut)) -> ReplyRx {
        self.conn.send_encoded(encode)
    }
}

impl PushSink for Listeners {
    fn subscribe_frame(&self) -> &[u8] {
        TRACKING_ON
    }

    fn push(&self, frame: &[u8]) {
        let frame = Bytes::copy_from_slice(frame);
        match invalidated(&frame) {
            Some(Invalidated::Keys(keys)) => {
                for l in self.list.load().iter() {
                    l.keys(&keys);
                }
            }
            Some(Invalidated::All) => self.reset(),
            // Another kind of push (none is asked for): ignored.
            None => {}
        }
    }

    fn reset(&self) {
        for l in self.list.load().iter() {
            l.all();
        }
    }
}

/// What an `invalidate` push names.
#[derive(Debug, PartialEq, Eq)]
enum Invalidated {
    Keys(Vec<Bytes>),
    /// Every key (`FLUSHALL`, `FLUSHDB`).
    All,
}

/// Parses `>2 $10 invalidate (*N keys | _)`; `None` for any other push.
fn invalidated(frame: &Bytes) -> Option<Invalidated> {
    let parts = reply::array_elements(frame).ok()??;
    let [kind, what] = parts.as_slice() else {
        return None;
    };
    if reply::bulk(kind).as_deref() != Some(b"invalidate".as_slice()) {
        return None;
    }
    match what.first() {
        Some(b'_') => Some(Invalidated::All),
        Some(b'*') if what.starts_with(b"*-1") => Some(Invalidated::All),
        Some(b'*') => {
            let keys = reply::array_elements(what).ok()??;
            Some(Invalidated::Keys(
                keys.iter().filter_map(reply::bulk).collect(),
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_parse_into_keys_or_everything() {
        let keys = Bytes::from_static(b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n$2\r\nbc\r\n");
        assert_eq!(
            invalidated(&keys),
            Some(Invalidated::Keys(vec![
                Bytes::from_static(b"a"),
                Bytes::from_static(b"bc")
            ]))
        );
        let all = Bytes::from_static(b">2\r\n$10\r\ninvalidate\r\n_\r\n");
        assert_eq!(invalidated(&all), Some(Invalidated::All));
        let other = Bytes::from_static(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n");
        assert_eq!(invalidated(&other), None);
    }
}

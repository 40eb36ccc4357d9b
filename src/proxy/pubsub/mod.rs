//! Pub/sub through the proxy: one subscriber connection per shard, shared by
//! every client of this proxy.
//!
//! A client's SUBSCRIBE does not take a backend connection of its own (ten
//! thousand subscribers would be ten thousand connections per shard).
//! Instead the [`Hub`] keeps, per shard, one *link*: a connection in Redis'
//! subscribed mode holding the union of what this proxy's clients
//! subscribed on that shard. A message arriving on a link is handed to
//! every local client subscribed to its channel or pattern, as the bytes
//! the shard sent (RESP2 `*3 message ch payload`; a RESP3 client gets the
//! same frame with the push marker `>`).
//!
//! Where a topic lives:
//! - a channel (SUBSCRIBE, PUBLISH) and a shard channel (SSUBSCRIBE,
//!   SPUBLISH) on the shard that owns the channel name as if it were a
//!   key (hash tags included), so that PUBLISH and SUBSCRIBE meet;
//! - `__keyspace@<db>__:<key>` on the shard of `<key>` (where Redis
//!   publishes that key's events), `__keyevent@<db>__:<event>` on every
//!   shard (each shard publishes its own keys' events);
//! - a pattern on every shard: a message is published on one shard only,
//!   so each is delivered once.
//!
//! During a rebalance, a channel whose slot is `Migrating{from, to}` is
//! subscribed on both shards and PUBLISH goes to `from`; once the slot is
//! `Stable(to)`, PUBLISH goes to `to`, where the hub has subscribed since
//! the migrating state. The hub holds the snapshot it has applied until
//! the new shards confirmed their subscriptions, and the rebalance waits
//! for every holder of the previous table (see `rebalance::mover`), so no
//! PUBLISH can reach a shard the hub has not subscribed on yet. A shard the
//! routing no longer names keeps its subscriptions for [`RETIRE_AFTER`],
//! for the other proxies of a fleet that still publish there.
//!
//! Delivery is at most once, as in Redis: a link that breaks reconnects
//! and subscribes everything again, and what was published meanwhile is
//! lost (a Redis client reconnecting loses the same). A client that does
//! not read its messages is closed once [`ClientConfig::pubsub_output_limit`]
//! bytes wait for it (Redis' `client-output-buffer-limit pubsub`).
//!
//! [`ClientConfig::pubsub_output_limit`]: super::ClientConfig::pubsub_output_limit

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

mod client;
mod glob;
mod link;

pub use client::{Overflow, Subscriptions};
pub use glob::glob_match;
use link::run_link;

use super::Proxy;
use super::dispatch::Action;
use super::pending::{Merge, Part, PendingKind};
use super::session::Session;
use crate::backend::EndpointState;
use crate::backend::migrate::is_reserved_key;
use crate::command::{CommandSpec, Handling, LocalKind, PubSubKind, Topic};
use crate::context::Context;
use crate::error::ProxyError;
use crate::protocol::request::encode_command;
use crate::protocol::{Protocol, Request, scan};
use crate::router::ShardId;
use crate::shardmap::{ShardKind, ShardPhase};
use crate::snapshot::Snapshot;

/// How long a shard keeps a topic after the routing stopped naming it.
pub const RETIRE_AFTER: Duration = Duration::from_secs(5);
/// Longest a SUBSCRIBE waits for its shards to confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(3);

/// What a (P|S)(UN)SUBSCRIBE reply waits for: the shards' confirmations.
pub type Confirmation = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A topic: its namespace and name.
type TopicKey = (Topic, Bytes);

/// One message for one client: the frame as the shard sent it, and the
/// subscription it matched (checked again when it is written, so nothing
/// arrives after the client's UNSUBSCRIBE was answered).
pub struct Delivery {
    pub topic: Topic,
    pub name: Bytes,
    pub frame: Bytes,
}

/// What the hub holds of one client.
struct ClientTx {
    tx: mpsc::UnboundedSender<Delivery>,
    /// Bytes queued for the client and not yet written to its buffer.
    queued: Arc<AtomicUsize>,
    /// Set when `queued` passed the limit: the client is closed.
    overflow: Arc<AtomicBool>,
}

/// Subscribers of one topic.
struct TopicState {
    clients: HashSet<u64>,
    /// Shards (by name) whose link subscribes the topic.
    shards: SmallVec<[String; 2]>,
}

/// What a link is told by the hub.
enum LinkCmd {
    Subscribe(Topic, Bytes),
    Unsubscribe(Topic, Bytes),
    /// The shard's primary changed (a Sentinel failover): connect again.
    Reconnect,
}

/// The hub's side of a link.
struct Link {
    tx: mpsc::UnboundedSender<LinkCmd>,
    /// The address the link connects to.
    addr: String,
    /// The last connection attempt failed or the connection was lost
    /// (subscribers are then answered without waiting for it). A new link
    /// is not down: it is connecting.
    down: bool,
    /// Topics the link should hold (subscribed again on every reconnect).
    wanted: HashSet<TopicKey>,
    /// Topics the shard confirmed on the current connection.
    active: HashSet<TopicKey>,
}

struct State {
    topics: HashMap<TopicKey, TopicState>,
    clients: HashMap<u64, ClientTx>,
    links: HashMap<String, Link>,
    /// The snapshot topics are routed with (the last one applied).
    routing: Option<Arc<Snapshot>>,
    /// (deadline, shard, topic): subscriptions left on shards the routing
    /// no longer names, dropped at the deadline if still unneeded.
    retiring: Vec<(Instant, String, TopicKey)>,
}

/// The pub/sub hub of one proxy (see the module doc).
pub struct Hub {
    ctx: Arc<Context>,
    state: Mutex<State>,
    /// Woken when a link confirms a subscription or goes down.
    confirmed: Notify,
    /// Where links and the routing watcher run (set on first use).
    runtime: OnceLock<tokio::runtime::Handle>,
    /// Per-client byte limit of queued messages.
    limit: usize,
}

impl Hub {
    pub fn new(ctx: Arc<Context>, limit: usize) -> Hub {
        Hub {
            ctx,
            state: Mutex::new(State {
                topics: HashMap::new(),
                clients: HashMap::new(),
                links: HashMap::new(),
                routing: None,
                retiring: Vec::new(),
            }),
            confirmed: Notify::new(),
            runtime: OnceLock::new(),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the routing watcher on the current runtime (once).
    fn start(self: &Arc<Self>) {
        let mut fresh = false;
        self.runtime.get_or_init(|| {
            fresh = true;
            tokio::runtime::Handle::current()
        });
        if fresh {
            let weak = Arc::downgrade(self);
            let changes = self.ctx.snapshot.changes();
            self.spawn(watch_routing(weak, changes));
        }
    }

    fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
        if let Some(rt) = self.runtime.get() {
            rt.spawn(f);
        }
    }

    /// Registers a client: its messages arrive on the returned receiver.
    pub fn register(self: &Arc<Self>, id: u64) -> Subscriptions {
        self.start();
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let overflow = Arc::new(AtomicBool::new(false));
        self.lock().clients.insert(
            id,
            ClientTx {
                tx,
                queued: queued.clone(),
                overflow: overflow.clone(),
            },
        );
        Subscriptions {
            hub: self.clone(),
            id,
            rx,
            queued,
            overflow,
            channels: HashSet::new(),
            patterns: HashSet::new(),
            shard_channels: HashSet::new(),
        }
    }

    /// Subscribes client `id` to `names` of `topic` (names it did not hold
    /// yet). The future resolves once every shard involved confirmed (or
    /// its link is down: the subscription is then made when it is back).
    fn subscribe(self: &Arc<Self>, id: u64, topic: Topic, names: &[Bytes]) -> Confirmation {
        let mut needs = Vec::new();
        {
            let mut st = self.lock();
            let snap = st
                .routing
                .clone()
                .unwrap_or_else(|| self.ctx.snapshot_full());
            for name in names {
                let key = (topic, name.clone());
                if !st.topics.contains_key(&key) {
                    let shards = subscribe_shards(&snap, topic, name);
                    for shard in &shards {
                        self.want(&mut st, &snap, shard, &key);
                    }
                    st.topics.insert(
                        key.clone(),
                        TopicState {
                            clients: HashSet::new(),
                            shards,
                        },
                    );
                }
                if let Some(t) = st.topics.get_mut(&key) {
                    t.clients.insert(id);
                    needs.extend(t.shards.iter().map(|s| (s.clone(), key.clone())));
                }
            }
        }
        let hub = self.clone();
        Box::pin(async move { hub.confirmation(needs).await })
    }

    /// Waits until each (shard, topic) is confirmed or its link is down.
    async fn confirmation(&self, needs: Vec<(String, TopicKey)>) {
        self.wait_links("a subscription", |links| {
            needs.iter().all(|(shard, key)| {
                links
                    .get(shard)
                    .is_none_or(|l| l.down || l.active.contains(key))
            })
        })
        .await
    }

    /// Waits until `done` holds of the links (checked again whenever a link
    /// confirms something or goes down), at most [`CONFIRM_TIMEOUT`].
    async fn wait_links(&self, what: &str, done: impl Fn(&HashMap<String, Link>) -> bool) {
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        loop {
            let notified = self.confirmed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.lock().links) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::debug!("{what} was not confirmed in time; answering anyway");
                return;
            }
        }
    }

    /// Makes `shard`'s link hold `key` (creating the link on first use).
    fn want(self: &Arc<Self>, st: &mut State, snap: &Snapshot, shard: &str, key: &TopicKey) {
        if !st.links.contains_key(shard) {
            let (tx, rx) = mpsc::unbounded_channel();
            let addr = primary_of(snap, shard)
                .map(|e| e.addr.clone())
                .unwrap_or_default();
            st.links.insert(
                shard.to_owned(),
                Link {
                    tx,
                    addr,
                    down: false,
                    wanted: HashSet::new(),
                    active: HashSet::new(),
                },
            );
            self.spawn(run_link(Arc::downgrade(self), shard.to_owned(), rx));
        }
        if let Some(link) = st.links.get_mut(shard)
            && link.wanted.insert(key.clone())
        {
            let _ = link.tx.send(LinkCmd::Subscribe(key.0, key.1.clone()));
        }
    }

    /// Drops client `id` from `topic`'s `names`. Returns the (shard,
    /// topic) subscriptions the links were told to drop: the client's
    /// reply waits for them (see [`Hub::unsubscribed`]).
    fn unsubscribe(&self, id: u64, topic: Topic, names: &[Bytes]) -> Vec<(String, TopicKey)> {
        let mut st = self.lock();
        let mut dropped = Vec::new();
        for name in names {
            let key = (topic, name.clone());
            let Some(t) = st.topics.get_mut(&key) else {
                continue;
            };
            t.clients.remove(&id);
            if !t.clients.is_empty() {
                continue;
            }
            let shards = t.shards.clone();
            st.topics.remove(&key);
            for shard in shards {
                unwant(&mut st, &shard, &key);
                dropped.push((shard, key.clone()));
            }
        }
        dropped
    }

    /// Waits until each dropped (shard, topic) is confirmed gone on its
    /// shard (or its link is down, or another client wants it again), so
    /// that once a client's UNSUBSCRIBE is answered the shard no longer
    /// counts this proxy for it in a PUBLISH reply, as in Redis.
    async fn unsubscribed(&self, dropped: Vec<(String, TopicKey)>) {
        self.wait_links("an unsubscription", |links| {
            dropped.iter().all(|(shard, key)| {
                links
                    .get(shard)
                    .is_none_or(|l| l.down || !l.active.contains(key) || l.wanted.contains(key))
            })
        })
        .await
    }

    /// Forgets a client and every subscription it held.
    fn remove_client(&self, id: u64, held: Vec<(Topic, Bytes)>) {
        for (topic, name) in held {
            // Nobody waits for the reply of a client that is gone.
            let _ = self.unsubscribe(id, topic, std::slice::from_ref(&name));
        }
        self.lock().clients.remove(&id);
    }

    /// Hands a message that arrived on a link to the local subscribers of
    /// `topic`/`name`.
    fn deliver(&self, topic: Topic, name: &Bytes, frame: &Bytes) {
        let st = self.lock();
        let Some(t) = st.topics.get(&(topic, name.clone())) else {
            return;
        };
        for id in &t.clients {
            let Some(c) = st.clients.get(id) else {
                continue;
            };
            if c.overflow.load(Ordering::Relaxed) {
                continue;
            }
            let queued = c.queued.fetch_add(frame.len(), Ordering::Relaxed) + frame.len();
            if queued > self.limit {
                // The client is closed when it wakes on this message.
                c.overflow.store(true, Ordering::Relaxed);
            }
            let _ = c.tx.send(Delivery {
                topic,
                name: name.clone(),
                frame: frame.clone(),
            });
        }
    }

    /// The shard a PUBLISH (or SPUBLISH) of `channel` goes to.
    pub fn publish_shard(&self, topic: Topic, channel: &[u8]) -> Option<ShardId> {
        let st = self.lock();
        match &st.routing {
            Some(snap) => publish_shard(snap, topic, channel),
            None => publish_shard(&self.ctx.snapshot(), topic, channel),
        }
    }

    /// How many deliveries a publish of `channel` on `shard` makes to this
    /// proxy's clients, and how many of the shard's own count are this
    /// hub's link (which the shard counts instead of the clients behind it).
    pub fn receivers(&self, topic: Topic, channel: &[u8], shard: &str) -> (i64, i64) {
        let st = self.lock();
        let mut local = 0;
        let mut link = 0;
        let held = |t: &TopicState| t.shards.iter().any(|s| s == shard);
        match topic {
            Topic::Shard => {
                if let Some(t) = st
                    .topics
                    .get(&(Topic::Shard, Bytes::copy_from_slice(channel)))
                {
                    local += t.clients.len() as i64;
                    link += i64::from(held(t));
                }
            }
            Topic::Channel | Topic::Pattern => {
                for ((kind, name), t) in &st.topics {
                    let hit = match kind {
                        Topic::Channel => name.as_ref() == channel,
                        Topic::Pattern => glob_match(name, channel),
                        Topic::Shard => false,
                    };
                    if hit {
                        local += t.clients.len() as i64;
                        link += i64::from(held(t));
                    }
                }
            }
        }
        (local, link)
    }

    /// Topics of `topic` with local subscribers, with their counts.
    fn topics_of(&self, topic: Topic) -> Vec<(Bytes, usize)> {
        let st = self.lock();
        st.topics
            .iter()
            .filter(|((kind, _), _)| *kind == topic)
            .map(|((_, name), t)| (name.clone(), t.clients.len()))
            .collect()
    }

    /// Local subscribers of `name` in `topic`.
    fn subscribers(&self, topic: Topic, name: &Bytes) -> usize {
        self.lock()
            .topics
            .get(&(topic, name.clone()))
            .map_or(0, |t| t.clients.len())
    }

    /// Routes every topic again under `snap` (a new snapshot was
    /// published): subscribes where topics now live, retires where they no
    /// longer do, reconnects links whose primary moved. Returns the
    /// (shard, topic) subscriptions to wait for.
    fn reroute(
        self: &Arc<Self>,
        snap: &Arc<Snapshot>,
    ) -> (Vec<(String, TopicKey)>, Option<Arc<Snapshot>>) {
        let mut st = self.lock();
        let st = &mut *st;
        // The replaced snapshot goes back to the caller, which holds it
        // until the new subscriptions are confirmed (see the module doc).
        let previous = st.routing.replace(snap.clone());
        let mut needs = Vec::new();
        let keys: Vec<TopicKey> = st.topics.keys().cloned().collect();
        let now = Instant::now();
        for key in keys {
            let shards = subscribe_shards(snap, key.0, &key.1);
            let old = st
                .topics
                .get(&key)
                .map(|t| t.shards.clone())
                .unwrap_or_default();
            for shard in shards.iter().filter(|s| !old.contains(s)) {
                self.want(st, snap, shard, &key);
                needs.push((shard.clone(), key.clone()));
            }
            for shard in old.iter().filter(|s| !shards.contains(s)) {
                st.retiring
                    .push((now + RETIRE_AFTER, shard.clone(), key.clone()));
            }
            if let Some(t) = st.topics.get_mut(&key) {
                t.shards = shards;
            }
        }
        for (name, link) in st.links.iter_mut() {
            match primary_of(snap, name) {
                Some(ep) if ep.addr != link.addr => {
                    tracing::info!(shard = %name, from = %link.addr, to = %ep.addr, "pub/sub link follows the shard's new primary");
                    link.addr = ep.addr.clone();
                    let _ = link.tx.send(LinkCmd::Reconnect);
                }
                _ => {}
            }
        }
        (needs, previous)
    }

    /// Drops the retired subscriptions whose time has come, and links of
    /// shards that hold nothing and left the routing.
    fn retire_due(&self) {
        let mut st = self.lock();
        let st = &mut *st;
        let now = Instant::now();
        let due: Vec<_> = {
            let (due, keep) = std::mem::take(&mut st.retiring)
                .into_iter()
                .partition(|(at, _, _)| *at <= now);
            st.retiring = keep;
            due
        };
        for (_, shard, key) in due {
            let still = st
                .topics
                .get(&key)
                .is_some_and(|t| t.shards.contains(&shard));
            if !still {
                unwant(st, &shard, &key);
            }
        }
        let routing = st.routing.clone();
        st.links.retain(|name, link| {
            !link.wanted.is_empty()
                || routing
                    .as_ref()
                    .is_some_and(|s| primary_of(s, name).is_some())
        });
    }

    /// The endpoint state of `shard`'s primary under the hub's routing.
    fn endpoint(&self, shard: &str) -> Option<Arc<EndpointState>> {
        let st = self.lock();
        match &st.routing {
            Some(snap) => primary_of(snap, shard),
            None => primary_of(&self.ctx.snapshot(), shard),
        }
    }

    /// What a (re)connected link must subscribe.
    fn wanted(&self, shard: &str) -> Vec<TopicKey> {
        let mut st = self.lock();
        match st.links.get_mut(shard) {
            Some(link) => {
                link.down = false;
                link.active.clear();
                link.wanted.iter().cloned().collect()
            }
            None => Vec::new(),
        }
    }

    fn link_down(&self, shard: &str) {
        if let Some(link) = self.lock().links.get_mut(shard) {
            link.down = true;
            link.active.clear();
        }
        self.confirmed.notify_waiters();
    }

    fn link_confirmed(&self, shard: &str, key: TopicKey, on: bool) {
        if let Some(link) = self.lock().links.get_mut(shard) {
            if on {
                link.active.insert(key);
            } else {
                link.active.remove(&key);
            }
        }
        self.confirmed.notify_waiters();
    }

    /// Whether the link of `shard` is still part of the hub (it exits otherwise).
    fn has_link(&self, shard: &str) -> bool {
        self.lock().links.contains_key(shard)
    }
}

/// Tells `shard`'s link to drop `key`.
fn unwant(st: &mut State, shard: &str, key: &TopicKey) {
    if let Some(link) = st.links.get_mut(shard)
        && link.wanted.remove(key)
    {
        let _ = link.tx.send(LinkCmd::Unsubscribe(key.0, key.1.clone()));
    }
}

/// The primary of the shard called `name`, if it is a Redis shard in use.
fn primary_of(snap: &Snapshot, name: &str) -> Option<Arc<EndpointState>> {
    snap.backends()
        .shards()
        .iter()
        .find(|s| s.name == name && s.kind == ShardKind::Redis && s.phase != ShardPhase::Removed)
        .map(|s| s.primary.state.clone())
}

/// Redis shards that hold keys, by id.
fn redis_shards(snap: &Snapshot) -> SmallVec<[ShardId; 8]> {
    snap.backends()
        .shards()
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == ShardKind::Redis && s.phase != ShardPhase::Removed)
        .map(|(i, _)| ShardId(i as u16))
        .collect()
}

/// `shard` if it can hold subscriptions (a Redis shard), else the Redis
/// shard the channel falls back to (picked by its hash among them): a
/// channel that hashes onto a PostgreSQL shard still meets its publishers.
fn redis_or_fallback(snap: &Snapshot, shard: ShardId, channel: &[u8]) -> Option<ShardId> {
    let backends = snap.backends();
    let ok = backends
        .shards()
        .get(shard.0 as usize)
        .is_some_and(|s| s.kind == ShardKind::Redis && s.phase != ShardPhase::Removed);
    if ok {
        return Some(shard);
    }
    let all = redis_shards(snap);
    if all.is_empty() {
        return None;
    }
    let h = twox_hash::XxHash3_64::oneshot(channel);
    Some(all[(h % all.len() as u64) as usize])
}

/// The keyspace-notification shape of a channel name.
enum Notification<'a> {
    /// `__keyspace@<db>__:<key>`: published on the key's shard.
    Keyspace(&'a [u8]),
    /// `__keyevent@<db>__:<event>`: published on every shard.
    Keyevent,
    Plain,
}

fn notification(channel: &[u8]) -> Notification<'_> {
    for (prefix, keyspace) in [(&b"__keyspace@"[..], true), (&b"__keyevent@"[..], false)] {
        if let Some(rest) = channel.strip_prefix(prefix)
            && let Some(at) = rest.windows(3).position(|w| w == b"__:")
            && rest[..at].iter().all(u8::is_ascii_digit)
        {
            return if keyspace {
                Notification::Keyspace(&rest[at + 3..])
            } else {
                Notification::Keyevent
            };
        }
    }
    Notification::Plain
}

/// The shards (by name) where `topic`/`name` must be subscribed.
fn subscribe_shards(snap: &Snapshot, topic: Topic, name: &[u8]) -> SmallVec<[String; 2]> {
    let table = snap.table();
    let ids: SmallVec<[ShardId; 8]> = match (topic, notification(name)) {
        (Topic::Pattern, _) | (Topic::Channel, Notification::Keyevent) => redis_shards(snap),
        (_, n) => {
            let key = match (topic, n) {
                (Topic::Channel, Notification::Keyspace(key)) => key,
                _ => name,
            };
            let route = table.route(key);
            let mut ids = SmallVec::new();
            for s in std::iter::once(route.shard).chain(route.moving_from) {
                if let Some(s) = redis_or_fallback(snap, s, key)
                    && !ids.contains(&s)
                {
                    ids.push(s);
                }
            }
            ids
        }
    };
    let shards = snap.backends().shards();
    ids.iter()
        .filter_map(|id| shards.get(id.0 as usize).map(|s| s.name.clone()))
        .collect()
}

/// The one shard a PUBLISH/SPUBLISH of `channel` goes to: the owner, or
/// while its slot migrates the source (see the module doc).
fn publish_shard(snap: &Snapshot, topic: Topic, channel: &[u8]) -> Option<ShardId> {
    let key = match (topic, notification(channel)) {
        (Topic::Channel, Notification::Keyspace(key)) => key,
        _ => channel,
    };
    let route = snap.table().route(key);
    redis_or_fallback(snap, route.moving_from.unwrap_or(route.shard), key)
}

/// Follows published snapshots: routes topics again, holding the applied
/// snapshot until the new subscriptions are confirmed.
async fn watch_routing(hub: Weak<Hub>, mut changes: tokio::sync::watch::Receiver<u64>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(h) = hub.upgrade() else { return };
        let snap = h.ctx.snapshot_full();
        // `previous` (the table applied before) is held until the shards
        // confirmed what the new one needs: a rebalance waits for every
        // holder of a replaced table before it moves on.
        let (needs, previous) = h.reroute(&snap);
        if !needs.is_empty() {
            h.confirmation(needs).await;
        }
        drop(previous);
        h.retire_due();
        drop(snap);
        drop(h);
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_channels_are_recognised() {
        assert!(matches!(
            notification(b"__keyspace@0__:k{x}"),
            Notification::Keyspace(b"k{x}")
        ));
        assert!(matches!(
            notification(b"__keyevent@12__:del"),
            Notification::Keyevent
        ));
        assert!(matches!(
            notification(b"__keyspace@x__:k"),
            Notification::Plain
        ));
        assert!(matches!(notification(b"news"), Notification::Plain));
    }

    #[test]
    fn notifications_of_the_fence_are_recognised_and_nothing_else() {
        use link::about_the_fence;
        let fence = crate::backend::migrate::MOVING_SET;
        let keyspace = [b"__keyspace@3__:".as_slice(), fence].concat();
        assert!(about_the_fence(&keyspace, b"sadd"));
        assert!(about_the_fence(b"__keyevent@0__:srem", fence));
        assert!(about_the_fence(b"__keyevent@0__:del", fence));
        // Other keys, other channels, a payload that only looks like it.
        assert!(!about_the_fence(
            b"__keyspace@0__:__shardgate_moving",
            b"sadd"
        ));
        assert!(!about_the_fence(b"__keyevent@0__:del", b"k"));
        assert!(!about_the_fence(b"news", fence));
        assert!(!about_the_fence(
            &[b"news:".as_slice(), fence].concat(),
            b"x"
        ));
    }
}

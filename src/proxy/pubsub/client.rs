//! One client's side of pub/sub: its subscriptions, the confirmations
//! and replies Redis sends, and the session's pub/sub commands.

use super::*;

/// One client's subscriptions and its queue of messages. Dropping it
/// unsubscribes everything.
pub struct Subscriptions {
    pub(super) hub: Arc<Hub>,
    pub(super) id: u64,
    pub(super) rx: mpsc::UnboundedReceiver<Delivery>,
    pub(super) queued: Arc<AtomicUsize>,
    pub(super) overflow: Arc<AtomicBool>,
    pub(super) channels: HashSet<Bytes>,
    pub(super) patterns: HashSet<Bytes>,
    pub(super) shard_channels: HashSet<Bytes>,
}

/// The client's queue passed the pub/sub output limit.
pub struct Overflow;

impl Subscriptions {
    fn set(&self, topic: Topic) -> &HashSet<Bytes> {
        match topic {
            Topic::Channel => &self.channels,
            Topic::Pattern => &self.patterns,
            Topic::Shard => &self.shard_channels,
        }
    }

    fn set_mut(&mut self, topic: Topic) -> &mut HashSet<Bytes> {
        match topic {
            Topic::Channel => &mut self.channels,
            Topic::Pattern => &mut self.patterns,
            Topic::Shard => &mut self.shard_channels,
        }
    }

    /// Redis' count in (un)subscribe replies: channels and patterns for
    /// the classic kinds, shard channels for the sharded ones.
    fn count(&self, topic: Topic) -> usize {
        match topic {
            Topic::Shard => self.shard_channels.len(),
            _ => self.channels.len() + self.patterns.len(),
        }
    }

    /// (channels, patterns, shard channels) held.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.channels.len(),
            self.patterns.len(),
            self.shard_channels.len(),
        )
    }

    /// Whether any subscription is held (RESP2's subscribed mode).
    pub fn active(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shard_channels.is_empty())
    }

    /// The next message (cancel-safe).
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// Writes `d` (and every message already queued, up to `high_water`
    /// bytes in `out`) for a client speaking `proto`; returns how many.
    pub fn write(
        &mut self,
        first: Delivery,
        proto: Protocol,
        out: &mut BytesMut,
        high_water: usize,
    ) -> Result<u64, Overflow> {
        if self.overflow.load(Ordering::Relaxed) {
            return Err(Overflow);
        }
        let mut n = 0;
        let mut next = Some(first);
        while let Some(d) = next {
            self.queued.fetch_sub(d.frame.len(), Ordering::Relaxed);
            // Unsubscribed since it was queued: Redis would not send it.
            if self.set(d.topic).contains(&d.name) {
                let at = out.len();
                out.extend_from_slice(&d.frame);
                if proto == Protocol::Resp3 {
                    out[at] = b'>';
                }
                n += 1;
            }
            if out.len() >= high_water {
                break;
            }
            next = self.rx.try_recv().ok();
        }
        Ok(n)
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        let mut held = Vec::new();
        for (i, topic) in [Topic::Channel, Topic::Pattern, Topic::Shard]
            .into_iter()
            .enumerate()
        {
            let set = std::mem::take(self.set_mut(topic));
            self.hub
                .ctx
                .metrics
                .pubsub_subscriptions(i, -(set.len() as f64));
            held.extend(set.into_iter().map(|n| (topic, n)));
        }
        self.hub.remove_client(self.id, held);
    }
}

fn topic_index(topic: Topic) -> usize {
    match topic {
        Topic::Channel => 0,
        Topic::Pattern => 1,
        Topic::Shard => 2,
    }
}

/// Appends one (un)subscribe confirmation as Redis sends it.
fn confirmation(
    out: &mut BytesMut,
    proto: Protocol,
    verb: &str,
    name: Option<&[u8]>,
    count: usize,
) {
    out.put_slice(if proto == Protocol::Resp3 {
        b">3\r\n"
    } else {
        b"*3\r\n"
    });
    put_bulk(out, verb.as_bytes());
    match name {
        Some(n) => put_bulk(out, n),
        None if proto == Protocol::Resp3 => out.put_slice(b"_\r\n"),
        None => out.put_slice(b"$-1\r\n"),
    }
    out.put_slice(format!(":{count}\r\n").as_bytes());
}

fn put_bulk(out: &mut BytesMut, b: &[u8]) {
    out.put_slice(format!("${}\r\n", b.len()).as_bytes());
    out.put_slice(b);
    out.put_slice(b"\r\n");
}

fn verb(topic: Topic, on: bool) -> &'static str {
    match (topic, on) {
        (Topic::Channel, true) => "subscribe",
        (Topic::Pattern, true) => "psubscribe",
        (Topic::Shard, true) => "ssubscribe",
        (Topic::Channel, false) => "unsubscribe",
        (Topic::Pattern, false) => "punsubscribe",
        (Topic::Shard, false) => "sunsubscribe",
    }
}

/// SUBSCRIBE/PSUBSCRIBE/SSUBSCRIBE for one client: updates its set, asks
/// the hub for the new names, and returns the confirmations (one per
/// argument, as Redis sends them) with the wait for the shards.
pub fn subscribe(
    subs: &mut Subscriptions,
    topic: Topic,
    names: &[Bytes],
    proto: Protocol,
) -> (Bytes, Confirmation) {
    let mut fresh = Vec::new();
    let mut out = BytesMut::new();
    for name in names {
        if subs.set_mut(topic).insert(name.clone()) {
            fresh.push(name.clone());
        }
        confirmation(
            &mut out,
            proto,
            verb(topic, true),
            Some(name),
            subs.count(topic),
        );
    }
    subs.hub
        .ctx
        .metrics
        .pubsub_subscriptions(topic_index(topic), fresh.len() as f64);
    let wait = subs.hub.subscribe(subs.id, topic, &fresh);
    (out.freeze(), wait)
}

/// UNSUBSCRIBE/PUNSUBSCRIBE/SUNSUBSCRIBE (no names: all of the kind):
/// the confirmations, and what to wait for before sending them (the
/// shards dropping what no other local client holds).
pub fn unsubscribe(
    subs: &mut Subscriptions,
    topic: Topic,
    names: &[Bytes],
    proto: Protocol,
) -> (Bytes, Option<Confirmation>) {
    let names: Vec<Bytes> = if names.is_empty() {
        let mut all: Vec<Bytes> = subs.set(topic).iter().cloned().collect();
        all.sort();
        all
    } else {
        names.to_vec()
    };
    let mut out = BytesMut::new();
    if names.is_empty() {
        confirmation(&mut out, proto, verb(topic, false), None, subs.count(topic));
        return (out.freeze(), None);
    }
    let mut gone = Vec::new();
    for name in &names {
        if subs.set_mut(topic).remove(name) {
            gone.push(name.clone());
        }
        confirmation(
            &mut out,
            proto,
            verb(topic, false),
            Some(name),
            subs.count(topic),
        );
    }
    subs.hub
        .ctx
        .metrics
        .pubsub_subscriptions(topic_index(topic), -(gone.len() as f64));
    let dropped = subs.hub.unsubscribe(subs.id, topic, &gone);
    if dropped.is_empty() {
        return (out.freeze(), None);
    }
    let hub = subs.hub.clone();
    (
        out.freeze(),
        Some(Box::pin(async move { hub.unsubscribed(dropped).await })),
    )
}

/// Answers `PUBSUB <subcommand>` from this proxy's subscriptions.
pub fn introspect(hub: &Hub, args: &[Bytes]) -> Result<crate::protocol::Reply, ProxyError> {
    use crate::protocol::Reply;
    let sub = args
        .get(1)
        .map(|s| s.to_ascii_lowercase())
        .unwrap_or_default();
    let matching = |topic: Topic, pattern: Option<&Bytes>| {
        let mut names: Vec<Bytes> = hub
            .topics_of(topic)
            .into_iter()
            .filter(|(n, count)| *count > 0 && pattern.is_none_or(|p| glob_match(p, n)))
            .map(|(n, _)| n)
            .collect();
        names.sort();
        Reply::Array(names.into_iter().map(Reply::Bulk).collect())
    };
    let numsub = |topic: Topic| {
        let mut out = Vec::new();
        for name in &args[2..] {
            out.push(Reply::Bulk(name.clone()));
            out.push(Reply::Int(hub.subscribers(topic, name) as i64));
        }
        Reply::Array(out)
    };
    let given = String::from_utf8_lossy(args.get(1).map_or(&b""[..], |b| b)).into_owned();
    match (sub.as_slice(), args.len()) {
        (b"channels", 2 | 3) => Ok(matching(Topic::Channel, args.get(2))),
        (b"shardchannels", 2 | 3) => Ok(matching(Topic::Shard, args.get(2))),
        (b"channels" | b"shardchannels", _) => Err(ProxyError::err(format_args!(
            "unknown subcommand or wrong number of arguments for '{given}'. Try PUBSUB HELP."
        ))),
        (b"numsub", _) => Ok(numsub(Topic::Channel)),
        (b"shardnumsub", _) => Ok(numsub(Topic::Shard)),
        (b"numpat", 2) => Ok(Reply::Int(
            hub.topics_of(Topic::Pattern)
                .iter()
                .filter(|(_, c)| *c > 0)
                .count() as i64,
        )),
        (b"help", 2) => Ok(Reply::Array(
            PUBSUB_HELP
                .iter()
                .map(|l| Reply::Simple((*l).into()))
                .collect(),
        )),
        (b"numpat" | b"help", _) => Err(ProxyError::err(format_args!(
            "wrong number of arguments for 'pubsub|{}' command",
            String::from_utf8_lossy(&sub)
        ))),
        _ => Err(ProxyError::err(format_args!(
            "unknown subcommand '{given}'. Try PUBSUB HELP."
        ))),
    }
}

/// Redis 7.0's `PUBSUB HELP`.
const PUBSUB_HELP: &[&str] = &[
    "PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CHANNELS [<pattern>]",
    "    Return the currently active channels matching a <pattern> (default: '*').",
    "NUMPAT",
    "    Return number of subscriptions to patterns.",
    "NUMSUB [<channel> ...]",
    "    Return the number of subscribers for the specified channels, excluding",
    "    pattern subscriptions(default: no channels).",
    "SHARDCHANNELS [<pattern>]",
    "    Return the currently active shard level channels matching a <pattern> (default: '*').",
    "SHARDNUMSUB [<shardchannel> ...]",
    "    Return the number of subscribers for the specified shard level channel(s)",
    "HELP",
    "    Prints this help.",
];

/// The commands a RESP2 client may send while it holds subscriptions.
fn allowed_when_subscribed(spec: &CommandSpec) -> bool {
    matches!(
        spec.handling,
        Handling::PubSub(PubSubKind::Subscribe(_) | PubSubKind::Unsubscribe(_))
            | Handling::Local(LocalKind::Ping | LocalKind::Quit | LocalKind::Reset)
    )
}

impl Session {
    /// Whether this client is in RESP2's subscribed mode.
    pub(in crate::proxy) fn subscribed_resp2(&self) -> bool {
        self.proto == Protocol::Resp2 && self.pubsub.as_ref().is_some_and(|s| s.active())
    }

    /// Redis' refusal of a command in RESP2's subscribed mode, if `spec` is one.
    pub(in crate::proxy) fn check_subscribed(
        &self,
        spec: &CommandSpec,
        req: &Request,
    ) -> Result<(), ProxyError> {
        if self.subscribed_resp2() && !allowed_when_subscribed(spec) {
            // Redis names a subcommand by its full name (`client|id`).
            let name = req
                .args()
                .get(1)
                .and_then(|a| crate::command::subcommand(spec, a))
                .map_or(spec.name, |s| s.name);
            return Err(ProxyError::err(format!(
                "Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            )));
        }
        Ok(())
    }

    /// Serves a pub/sub command.
    pub(in crate::proxy) fn pubsub(
        &mut self,
        proxy: &Proxy,
        spec: &'static CommandSpec,
        req: Request,
        kind: PubSubKind,
    ) -> Result<Action, ProxyError> {
        let args = req.args();
        match kind {
            PubSubKind::Subscribe(topic) => {
                if self.tx.is_some() {
                    return Err(ProxyError::err(format!(
                        "command '{}' cannot be used inside MULTI through shardgate",
                        spec.name
                    )));
                }
                let subs = self
                    .pubsub
                    .get_or_insert_with(|| Box::new(proxy.pubsub.register(self.id)));
                let (reply, wait) = subscribe(subs, topic, &args[1..], self.proto);
                Ok(Action::Queue(self.pending(
                    spec,
                    PendingKind::Subscribed { wait, reply },
                    None,
                )))
            }
            PubSubKind::Unsubscribe(topic) => {
                let (reply, wait) = match self.pubsub.as_mut() {
                    Some(subs) => unsubscribe(subs, topic, &args[1..], self.proto),
                    None => {
                        // Never subscribed: Redis still confirms each name.
                        let mut out = BytesMut::new();
                        if args.len() == 1 {
                            confirmation(&mut out, self.proto, verb(topic, false), None, 0);
                        }
                        for name in &args[1..] {
                            confirmation(&mut out, self.proto, verb(topic, false), Some(name), 0);
                        }
                        (out.freeze(), None)
                    }
                };
                if self.pubsub.as_ref().is_some_and(|s| !s.active()) {
                    self.pubsub = None;
                }
                let kind = match wait {
                    Some(wait) => PendingKind::Subscribed { wait, reply },
                    None => PendingKind::Ready(reply),
                };
                Ok(Action::Queue(self.pending(spec, kind, None)))
            }
            PubSubKind::Publish(topic) => {
                let channel = &args[1];
                let snap = proxy.snapshot();
                let shard = proxy.pubsub.publish_shard(topic, channel).ok_or_else(|| {
                    ProxyError::err("pub/sub needs a Redis shard; the map has none")
                })?;
                let backends = snap.shard(shard);
                let (local, link) = proxy.pubsub.receivers(topic, channel, &backends.name);
                let rx = backends.primary.send(self.wire(), self.id, req.raw());
                let kind = if local == link {
                    PendingKind::Backend { rx, retry: None }
                } else {
                    // The shard counts this proxy's link once per matching
                    // subscription; the client expects its subscribers.
                    PendingKind::Gather {
                        parts: vec![Part::new(rx)],
                        merge: Merge::Offset(local - link),
                    }
                };
                Ok(Action::Queue(self.pending(spec, kind, None)))
            }
            PubSubKind::Introspect => introspect(&proxy.pubsub, args).map(|r| self.reply(spec, r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_are_encoded_as_redis_sends_them() {
        let mut out = BytesMut::new();
        confirmation(&mut out, Protocol::Resp2, "subscribe", Some(b"ch"), 1);
        assert_eq!(&out[..], b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
        out.clear();
        confirmation(&mut out, Protocol::Resp3, "unsubscribe", None, 0);
        assert_eq!(&out[..], b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n");
    }
}

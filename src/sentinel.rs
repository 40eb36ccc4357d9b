//! Shard failover through Redis Sentinel: shards whose map entry says
//! `sentinel: {addrs, master}` follow the primary Sentinel names.
//!
//! * At start, [`discover`] asks every sentinel of every followed master
//!   (`SENTINEL MASTER` and `SENTINEL REPLICAS`, pipelined on one
//!   connection) and takes the answer with the greatest config epoch; no
//!   answer within the connect timeout fails startup, naming the shard.
//! * While the proxy runs, one monitor task ([`spawn`]) keeps
//!   [`Context::sentinel`] (the "Sentinel view") current: it checks every
//!   `options.sentinel_check_interval`, and at once when a sentinel
//!   announces `+switch-master` on the dedicated pub/sub connection the
//!   monitor keeps to each sentinel (reconnected with backoff). Before it
//!   switches to an announced primary it may ask it `ROLE` (a demoted
//!   primary that still answers `slave` is not written to).
//! * A changed view is applied by [`Context::follow_sentinel`]: the running
//!   backends are rebuilt from the map they were built from with the new
//!   addresses (unchanged endpoints keep their connections) and published
//!   under the same routing table: placement never changes, only
//!   addresses. A publish that raced with it (reload, rebalance, fleet)
//!   resolved through the view too, or is corrected at the next check.
//!
//! Writes sent to the old primary while it is down fail fast (its
//! connection errors open its circuit breaker); once the new backends are
//! published they go to the new primary.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};

use crate::backend::connect::connect;
use crate::backend::health;
use crate::context::Context;
use crate::error::BackendError;
use crate::protocol::request::encode_command;
use crate::protocol::{Protocol, reply, scan};
use crate::shardmap::{Discovered, Link, SentinelSource, SentinelView, ShardMap};

/// Why the sentinel shards could not be resolved at start.
#[derive(Debug, thiserror::Error)]
pub enum SentinelError {
    /// No sentinel of the shard's group named its primary.
    #[error(
        "shard {shard}: no sentinel of [{sentinels}] named the primary of master `{master}` within {timeout_ms} ms ({reasons})"
    )]
    NoAnswer {
        shard: String,
        master: String,
        sentinels: String,
        timeout_ms: u128,
        reasons: String,
    },
}

/// Why one sentinel gave no usable answer, or the primary it named was
/// not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer to {command} within {millis} ms")]
    Timeout { command: &'static str, millis: u128 },
    /// The sentinel (or the primary) answered with an error.
    #[error("{0}")]
    ErrorReply(String),
    #[error("unexpected {0} reply")]
    Unexpected(&'static str),
    #[error("SENTINEL MASTER reply without ip and port")]
    NoAddress,
    #[error("ROLE says `{0}`")]
    NotMaster(String),
}

/// Each sentinel's answer (or why it gave none), in map order.
type Answers = Vec<(String, Result<Discovered, AskError>)>;

/// Flags of a replica in `SENTINEL REPLICAS` that keep it out of the map.
const DOWN_FLAGS: [&str; 3] = ["s_down", "o_down", "disconnected"];
/// First and longest wait before a broken subscription is made again.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Resolves every sentinel shard of `map` (see the module doc).
pub async fn discover(map: &ShardMap) -> Result<SentinelView, SentinelError> {
    let timeout = map.options.connect_timeout;
    let mut view = SentinelView::default();
    for (source, shards, _) in sources_of(map) {
        let answers = ask_all(&source, timeout).await;
        match best(&answers) {
            Some((sentinel, found)) => {
                tracing::info!(shards = %shards.join(","), master = %source.master, primary = %found.primary,
                    replicas = %found.replicas.join(","), %sentinel, config_epoch = found.config_epoch,
                    "Sentinel names the shard's primary");
                view = view.with(&source, found.clone());
            }
            None => {
                return Err(SentinelError::NoAnswer {
                    shard: shards.join(","),
                    master: source.master.clone(),
                    sentinels: source.addrs.join(", "),
                    timeout_ms: timeout.as_millis(),
                    reasons: reasons(&answers),
                });
            }
        }
    }
    Ok(view)
}

/// Starts the monitor task (see the module doc). `on_added` runs after a
/// publish that built new endpoints (the proxy installs its backend ACL
/// users there). It stops when `shutdown` fires.
pub fn spawn(
    ctx: Arc<Context>,
    on_added: Arc<dyn Fn() + Send + Sync>,
    shutdown: watch::Receiver<bool>,
) {
    let (wake, woken) = mpsc::unbounded_channel();
    let monitor = Monitor {
        ctx,
        on_added,
        shutdown,
        wake,
        woken,
        subscribers: HashMap::new(),
        registered: HashSet::new(),
        silent: HashSet::new(),
        announced: HashMap::new(),
    };
    tokio::spawn(monitor.run());
}

/// A `+switch-master` message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Announcement {
    /// The sentinel that published it.
    sentinel: String,
    master: String,
    old: String,
    new: String,
}

/// Each followed master once: its source, the shards that follow it, and
/// the shards' own link (to ask an announced primary `ROLE`).
fn sources_of(map: &ShardMap) -> Vec<(Arc<SentinelSource>, Vec<String>, Arc<Link>)> {
    let mut out: Vec<(Arc<SentinelSource>, Vec<String>, Arc<Link>)> = Vec::new();
    for s in &map.shards {
        let Some(src) = &s.sentinel else { continue };
        match out.iter_mut().find(|(o, _, _)| o.key() == src.key()) {
            Some((_, shards, _)) => shards.push(s.name.clone()),
            None => out.push((src.clone(), vec![s.name.clone()], s.primary.link.clone())),
        }
    }
    out
}

struct Monitor {
    ctx: Arc<Context>,
    on_added: Arc<dyn Fn() + Send + Sync>,
    shutdown: watch::Receiver<bool>,
    wake: mpsc::UnboundedSender<Announcement>,
    woken: mpsc::UnboundedReceiver<Announcement>,
    /// The `+switch-master` subscription task per sentinel address.
    subscribers: HashMap<String, AbortHandle>,
    /// Shards whose metric series are registered.
    registered: HashSet<String>,
    /// Masters none of whose sentinels answered the last check (logged once).
    silent: HashSet<String>,
    /// The last announcement per master name, to say who announced a switch.
    announced: HashMap<String, Announcement>,
}

impl Monitor {
    async fn run(mut self) {
        loop {
            let backends = self.ctx.backends();
            let map = backends.source();
            let interval = map.options.sentinel_check_interval;
            let timeout = map.options.connect_timeout;
            let sources = sources_of(map);
            drop(backends);
            self.sync_subscribers(&sources, timeout);
            self.check(sources, timeout).await;
            self.publish();
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                Some(a) = self.woken.recv() => {
                    tracing::info!(sentinel = %a.sentinel, master = %a.master, old = %a.old, new = %a.new,
                        "Sentinel announced +switch-master; checking now");
                    self.announced.insert(a.master.clone(), a);
                    // Several sentinels announce the same switch: one check.
                    while let Ok(a) = self.woken.try_recv() {
                        self.announced.insert(a.master.clone(), a);
                    }
                }
                _ = self.shutdown.changed() => break,
            }
        }
        for (_, task) in self.subscribers.drain() {
            task.abort();
        }
    }

    /// One subscription per sentinel of the map; those of sentinels the
    /// map no longer names stop.
    fn sync_subscribers(
        &mut self,
        sources: &[(Arc<SentinelSource>, Vec<String>, Arc<Link>)],
        timeout: Duration,
    ) {
        let mut wanted: HashMap<&str, &Arc<Link>> = HashMap::new();
        for (src, _, _) in sources {
            for a in &src.addrs {
                wanted.entry(a.as_str()).or_insert(&src.link);
            }
        }
        self.subscribers.retain(|addr, task| {
            let keep = wanted.contains_key(addr.as_str());
            if !keep {
                task.abort();
            }
            keep
        });
        for (addr, link) in wanted {
            if self.subscribers.contains_key(addr) {
                continue;
            }
            let task = tokio::spawn(subscribe(
                addr.to_owned(),
                Link::clone(link),
                timeout,
                self.wake.clone(),
                self.shutdown.clone(),
            ));
            self.subscribers
                .insert(addr.to_owned(), task.abort_handle());
        }
    }

    /// Asks the sentinels of every source (all at once) and applies what
    /// they say to the view.
    async fn check(
        &mut self,
        sources: Vec<(Arc<SentinelSource>, Vec<String>, Arc<Link>)>,
        timeout: Duration,
    ) {
        let mut asks = JoinSet::new();
        for (i, (src, _, _)) in sources.iter().enumerate() {
            let src = src.clone();
            asks.spawn(async move { (i, ask_all(&src, timeout).await) });
        }
        let mut answers: Vec<Option<Answers>> = (0..sources.len()).map(|_| None).collect();
        while let Some(done) = asks.join_next().await {
            if let Ok((i, a)) = done
                && let Some(slot) = answers.get_mut(i)
            {
                *slot = Some(a);
            }
        }
        for ((src, shards, link), answers) in sources.into_iter().zip(answers) {
            let answers = answers.unwrap_or_default();
            self.apply(&src, &shards, &link, &answers, timeout).await;
        }
    }

    async fn apply(
        &mut self,
        src: &SentinelSource,
        shards: &[String],
        link: &Link,
        answers: &[(String, Result<Discovered, AskError>)],
        timeout: Duration,
    ) {
        let metrics = &self.ctx.metrics;
        for shard in shards {
            if self.registered.insert(shard.clone()) {
                metrics.sentinel_shard(shard, &src.addrs);
            }
            for (sentinel, answer) in answers {
                metrics.sentinel_up(shard, sentinel, answer.is_ok());
            }
        }
        let key = src.key();
        let names = shards.join(",");
        let Some((sentinel, found)) = best(answers) else {
            if self.silent.insert(key) {
                tracing::warn!(shards = %names, master = %src.master, errors = %reasons(answers),
                    "no sentinel answers; keeping the primary in use until one does");
            }
            return;
        };
        if self.silent.remove(&key) {
            tracing::info!(shards = %names, master = %src.master, %sentinel, "a sentinel answers again");
        }
        let view = self.ctx.sentinel.load_full();
        let current = view.get(src);
        if current == Some(found) {
            return;
        }
        if let Some(cur) = current
            && found.config_epoch < cur.config_epoch
        {
            tracing::debug!(shards = %names, %sentinel, "a sentinel with an older configuration answered; ignored");
            return;
        }
        let old_primary = current.map(|c| c.primary.clone());
        let switching = old_primary.as_deref() != Some(found.primary.as_str());
        if switching
            && src.verify_role
            && let Err(why) = verify_master(&found.primary, link, timeout).await
        {
            tracing::warn!(shards = %names, master = %src.master, announced = %found.primary, %sentinel, reason = %why,
                "Sentinel names a primary that does not report itself master (ROLE); not switching yet");
            return;
        }
        self.ctx
            .sentinel
            .store(Arc::new(view.with(src, found.clone())));
        if !switching {
            tracing::info!(shards = %names, master = %src.master, replicas = %found.replicas.join(","), %sentinel,
                "Sentinel's replica list changed");
            return;
        }
        let announced_by = self
            .announced
            .get(&src.master)
            .filter(|a| a.new == found.primary)
            .map(|a| a.sentinel.clone())
            .unwrap_or_default();
        match old_primary {
            Some(old) => {
                tracing::warn!(shards = %names, master = %src.master, from = %old, to = %found.primary,
                    %sentinel, announced_by = %announced_by, config_epoch = found.config_epoch,
                    "Sentinel switched the shard's primary; writes go to the new primary from now on");
                for shard in shards {
                    metrics.sentinel_switch(shard);
                }
            }
            None => {
                tracing::info!(shards = %names, master = %src.master, primary = %found.primary, %sentinel,
                "Sentinel names the primary of a newly followed shard")
            }
        }
    }

    /// Applies the view to the published backends (a few tries if other
    /// publishes race with it; the next check catches up otherwise).
    fn publish(&self) {
        for _ in 0..3 {
            match self.ctx.follow_sentinel() {
                Ok(Some((old, next))) => {
                    let added = next.added_since(&old);
                    health::spawn_all(&added, self.shutdown.clone());
                    let removed = old.retire_missing(&next);
                    if !added.is_empty() {
                        (self.on_added)();
                    }
                    tracing::info!(
                        added = added.len(),
                        removed,
                        "published the endpoints Sentinel names"
                    );
                    return;
                }
                Ok(None) if self.ctx.backends().follows(&self.ctx.sentinel.load()) => return,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot publish the endpoints Sentinel names");
                    return;
                }
            }
        }
    }
}

/// The answer with the greatest config epoch (the first sentinel in map
/// order among equals).
fn best(answers: &[(String, Result<Discovered, AskError>)]) -> Option<(&str, &Discovered)> {
    let mut out: Option<(&str, &Discovered)> = None;
    for (sentinel, answer) in answers {
        if let Ok(found) = answer
            && out.is_none_or(|(_, b)| found.config_epoch > b.config_epoch)
        {
            out = Some((sentinel.as_str(), found));
        }
    }
    out
}

fn reasons(answers: &[(String, Result<Discovered, AskError>)]) -> String {
    answers
        .iter()
        .filter_map(|(s, a)| a.as_ref().err().map(|e| format!("{s}: {e}")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every sentinel of `source`, at once, in map order.
async fn ask_all(source: &Arc<SentinelSource>, timeout: Duration) -> Answers {
    let mut set = JoinSet::new();
    for (i, addr) in source.addrs.iter().enumerate() {
        let (src, addr) = (source.clone(), addr.clone());
        set.spawn(async move {
            let answer = tokio::time::timeout(timeout, ask(&addr, &src, timeout))
                .await
                .unwrap_or(Err(AskError::Timeout {
                    command: "SENTINEL MASTER",
                    millis: timeout.as_millis(),
                }));
            (i, addr, answer)
        });
    }
    let mut out = Vec::with_capacity(source.addrs.len());
    while let Some(done) = set.join_next().await {
        if let Ok(a) = done {
            out.push(a);
        }
    }
    out.sort_by_key(|(i, _, _)| *i);
    out.into_iter().map(|(_, a, r)| (a, r)).collect()
}

/// `SENTINEL MASTER` and `SENTINEL REPLICAS` on one sentinel.
async fn ask(
    sentinel: &str,
    src: &SentinelSource,
    timeout: Duration,
) -> Result<Discovered, AskError> {
    let mut stream = connect(sentinel, &src.link, Protocol::Resp2, timeout).await?;
    let master = src.master.as_bytes();
    let mut out = BytesMut::new();
    encode_command(&[b"SENTINEL", b"MASTER", master], &mut out);
    encode_command(&[b"SENTINEL", b"REPLICAS", master], &mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut reader = FrameReader::default();
    let master = reader.next(&mut stream).await?;
    let replicas = reader.next(&mut stream).await?;
    parse_answer(&master, &replicas)
}

/// A `SENTINEL MASTER` reply and a `SENTINEL REPLICAS` reply -> what they say.
fn parse_answer(master: &Bytes, replicas: &Bytes) -> Result<Discovered, AskError> {
    if let Some(e) = reply::error_text(master) {
        return Err(AskError::ErrorReply(e));
    }
    let m = fields(master).ok_or(AskError::Unexpected("SENTINEL MASTER"))?;
    let primary = host_port(&m).ok_or(AskError::NoAddress)?;
    let config_epoch = m
        .get("config-epoch")
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    let mut found = Discovered {
        primary,
        replicas: Vec::new(),
        config_epoch,
    };
    // A sentinel that cannot list replicas still named the primary.
    if let Ok(Some(list)) = reply::array_elements(replicas) {
        for r in list {
            let Some(r) = fields(&r) else { continue };
            let flags = r.get("flags").map(String::as_str).unwrap_or("");
            if flags.split(',').any(|f| DOWN_FLAGS.contains(&f)) {
                continue;
            }
            if let Some(addr) = host_port(&r) {
                found.replicas.push(addr);
            }
        }
    }
    found.replicas.sort();
    found.replicas.dedup();
    Ok(found)
}

/// A flat array of field/value strings (Sentinel's RESP2 maps).
fn fields(frame: &Bytes) -> Option<HashMap<String, String>> {
    let elems = reply::array_elements(frame).ok()??;
    let mut out = HashMap::new();
    for pair in elems.chunks(2) {
        if let [k, v] = pair {
            let (k, v) = (reply::bulk(k)?, reply::bulk(v)?);
            out.insert(
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            );
        }
    }
    Some(out)
}

fn host_port(f: &HashMap<String, String>) -> Option<String> {
    let (ip, port) = (f.get("ip")?, f.get("port")?);
    port.parse::<u16>().ok()?;
    Some(join_host_port(ip, port))
}

fn join_host_port(ip: &str, port: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Asks `addr` (with the shard's credentials) whether it is a master.
async fn verify_master(addr: &str, link: &Link, timeout: Duration) -> Result<(), AskError> {
    let exchange = async {
        let mut stream = connect(addr, link, Protocol::Resp2, timeout).await?;
        stream.write_all(b"*1\r\n$4\r\nROLE\r\n").await?;
        stream.flush().await?;
        let frame = FrameReader::default().next(&mut stream).await?;
        role_is_master(&frame)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(AskError::Timeout {
            command: "ROLE",
            millis: timeout.as_millis(),
        }))
}

fn role_is_master(frame: &Bytes) -> Result<(), AskError> {
    if let Some(e) = reply::error_text(frame) {
        return Err(AskError::ErrorReply(e));
    }
    let role = reply::array_elements(frame)
        .ok()
        .flatten()
        .and_then(|e| e.first().and_then(reply::bulk));
    match role.as_deref() {
        Some(b"master") => Ok(()),
        Some(other) => Err(AskError::NotMaster(
            String::from_utf8_lossy(other).into_owned(),
        )),
        None => Err(AskError::Unexpected("ROLE")),
    }
}

/// Keeps a `+switch-master` subscription to one sentinel, reconnecting
/// with backoff; announcements go to the monitor.
async fn subscribe(
    sentinel: String,
    link: Link,
    timeout: Duration,
    wake: mpsc::UnboundedSender<Announcement>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut was_up = true;
    loop {
        let why = tokio::select! {
            r = session(&sentinel, &link, timeout, &wake, &mut backoff, &mut was_up) => r,
            _ = shutdown.changed() => return,
        };
        if was_up {
            tracing::warn!(%sentinel, error = %why, "lost the +switch-master subscription; reconnecting (periodic checks go on)");
            was_up = false;
        } else {
            tracing::debug!(%sentinel, error = %why, "cannot subscribe to +switch-master yet");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One subscribed connection until it breaks (returns why).
async fn session(
    sentinel: &str,
    link: &Link,
    timeout: Duration,
    wake: &mpsc::UnboundedSender<Announcement>,
    backoff: &mut Duration,
    was_up: &mut bool,
) -> String {
    let mut stream = match connect(sentinel, link, Protocol::Resp2, timeout).await {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    let mut out = BytesMut::new();
    encode_command(&[b"SUBSCRIBE", b"+switch-master"], &mut out);
    if let Err(e) = stream.write_all(&out).await {
        return e.to_string();
    }
    if let Err(e) = stream.flush().await {
        return e.to_string();
    }
    let mut reader = FrameReader::default();
    loop {
        let frame = match reader.next(&mut stream).await {
            Ok(f) => f,
            Err(e) => return e.to_string(),
        };
        if let Some(e) = reply::error_text(&frame) {
            return format!("SUBSCRIBE refused: {e}");
        }
        let Some(parts) = reply::array_elements(&frame).ok().flatten() else {
            continue;
        };
        let text: Vec<Bytes> = parts.iter().filter_map(reply::bulk).collect();
        match text.first().map(|b| b.as_ref()) {
            Some(b"subscribe") => {
                *backoff = MIN_BACKOFF;
                if !*was_up {
                    tracing::info!(%sentinel, "subscribed to +switch-master again");
                }
                *was_up = true;
            }
            Some(b"message") => {
                if let Some(a) = text
                    .get(2)
                    .and_then(|payload| parse_switch(sentinel, payload))
                {
                    let _ = wake.send(a);
                }
            }
            _ => {}
        }
    }
}

/// `<master> <old-ip> <old-port> <new-ip> <new-port>`.
fn parse_switch(sentinel: &str, payload: &[u8]) -> Option<Announcement> {
    let text = std::str::from_utf8(payload).ok()?;
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [master, old_ip, old_port, new_ip, new_port] = parts.as_slice() else {
        return None;
    };
    Some(Announcement {
        sentinel: sentinel.to_owned(),
        master: (*master).to_owned(),
        old: join_host_port(old_ip, old_port),
        new: join_host_port(new_ip, new_port),
    })
}

/// Reads reply frames off a connection, keeping what arrived past the
/// current one (pub/sub messages arrive back to back).
#[derive(Default)]
struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    async fn next<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> std::io::Result<Bytes> {
        loop {
            match scan::frame_len(&self.buf) {
                Ok(Some(n)) => return Ok(self.buf.split_to(n).freeze()),
                Ok(None) => {}
                Err(e) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        e.to_string(),
                    ));
                }
            }
            if stream.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk_array(items: &[&str]) -> String {
        let mut s = format!("*{}\r\n", items.len());
        for i in items {
            s.push_str(&format!("${}\r\n{i}\r\n", i.len()));
        }
        s
    }

    #[test]
    fn parses_master_and_replicas_skipping_down_ones() {
        let master = Bytes::from(bulk_array(&[
            "name",
            "m",
            "ip",
            "127.0.0.1",
            "port",
            "7001",
            "flags",
            "master",
            "config-epoch",
            "4",
        ]));
        let r1 = bulk_array(&["ip", "127.0.0.1", "port", "7002", "flags", "slave"]);
        let r2 = bulk_array(&["ip", "127.0.0.1", "port", "7003", "flags", "s_down,slave"]);
        let r3 = bulk_array(&["ip", "::1", "port", "7004", "flags", "slave"]);
        let r4 = bulk_array(&[
            "ip",
            "127.0.0.1",
            "port",
            "7005",
            "flags",
            "slave,disconnected",
        ]);
        let replicas = Bytes::from(format!("*4\r\n{r1}{r2}{r3}{r4}"));
        let found = parse_answer(&master, &replicas).expect("parsed");
        assert_eq!(found.primary, "127.0.0.1:7001");
        assert_eq!(found.config_epoch, 4);
        assert_eq!(found.replicas, ["127.0.0.1:7002", "[::1]:7004"]);
        let unknown = Bytes::from_static(b"-ERR No such master with that name\r\n");
        assert_eq!(
            parse_answer(&unknown, &replicas)
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("ERR No such master with that name")
        );
    }

    #[test]
    fn the_greatest_config_epoch_wins() {
        let d = |p: &str, e| Discovered {
            primary: p.into(),
            replicas: vec![],
            config_epoch: e,
        };
        let answers = vec![
            ("a".to_owned(), Ok(d("x:1", 1))),
            ("b".to_owned(), Err(AskError::ErrorReply("down".to_owned()))),
            ("c".to_owned(), Ok(d("y:1", 2))),
            ("d".to_owned(), Ok(d("z:1", 2))),
        ];
        let (s, f) = best(&answers).expect("one answered");
        assert_eq!((s, f.primary.as_str()), ("c", "y:1"));
        assert_eq!(reasons(&answers), "b: down");
        assert!(best(&answers[1..2]).is_none());
    }

    #[test]
    fn parses_switch_announcements_and_roles() {
        let a = parse_switch("s:1", b"m1 127.0.0.1 7001 127.0.0.1 7002").expect("parsed");
        assert_eq!(
            (a.old.as_str(), a.new.as_str()),
            ("127.0.0.1:7001", "127.0.0.1:7002")
        );
        assert!(parse_switch("s:1", b"m1 127.0.0.1").is_none());
        let master = Bytes::from_static(b"*3\r\n$6\r\nmaster\r\n:10\r\n*0\r\n");
        assert!(role_is_master(&master).is_ok());
        let slave = Bytes::from_static(
            b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:7001\r\n$9\r\nconnected\r\n:10\r\n",
        );
        assert!(matches!(role_is_master(&slave), Err(AskError::NotMaster(r)) if r == "slave"));
    }
}

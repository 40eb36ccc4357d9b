//! The hub's subscriber connection to one shard (see the parent module).

use super::*;

/// The subscriber connection to one shard's primary.
pub(super) async fn run_link(
    hub: Weak<Hub>,
    shard: String,
    mut cmds: mpsc::UnboundedReceiver<LinkCmd>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        let Some(h) = hub.upgrade() else { return };
        if !h.has_link(&shard) {
            return;
        }
        let Some(ep) = h.endpoint(&shard) else {
            // The shard left the routing; the hub drops the link.
            drop(h);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let metrics = h.ctx.metrics.clone();
        let connected = crate::backend::connect::connect(
            &ep.addr,
            &ep.link,
            Protocol::Resp2,
            ep.options.connect_timeout,
        )
        .await;
        metrics.pubsub_link_connect(&shard, connected.is_ok());
        let mut stream = match connected {
            Ok(s) => s,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(shard = %shard, endpoint = %ep.addr, error = %e, failures, "pub/sub link cannot connect; subscribers of this shard get no messages until it does");
                }
                h.link_down(&shard);
                drop(h);
                if wait_or_command(&mut cmds, backoff).await.is_none() {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(shard = %shard, endpoint = %ep.addr, "pub/sub link connected; subscriptions renewed");
        }
        failures = 0;
        backoff = Duration::from_millis(50);
        // Commands queued before the connection are covered by `wanted`.
        while cmds.try_recv().is_ok() {}
        let wanted = h.wanted(&shard);
        metrics.pubsub_link(1.0);
        let mut out = BytesMut::new();
        for (topic, name) in &wanted {
            encode_command(&[subscribe_verb(*topic, true), name], &mut out);
        }
        drop(h);
        let end = serve_link(&hub, &shard, &mut stream, &mut cmds, out).await;
        metrics.pubsub_link(-1.0);
        let Some(h) = hub.upgrade() else { return };
        h.link_down(&shard);
        match end {
            LinkEnd::Closed => return,
            LinkEnd::Reconnect => {}
            LinkEnd::Lost(e) => {
                tracing::warn!(shard = %shard, endpoint = %ep.addr, error = %e, "pub/sub link lost; reconnecting (messages published meanwhile are lost, as for any Redis subscriber)");
                drop(h);
                if wait_or_command(&mut cmds, backoff).await.is_none() {
                    return;
                }
            }
        }
    }
}

/// Sleeps `d`, or returns early; None when the hub dropped the link.
async fn wait_or_command(cmds: &mut mpsc::UnboundedReceiver<LinkCmd>, d: Duration) -> Option<()> {
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return Some(()),
            // A command is covered by `wanted` at the next connect; only
            // the hub dropping the link matters here.
            c = cmds.recv() => {
                c?;
            }
        }
    }
}

enum LinkEnd {
    /// The hub dropped the link.
    Closed,
    Reconnect,
    Lost(String),
}

fn subscribe_verb(topic: Topic, on: bool) -> &'static [u8] {
    match (topic, on) {
        (Topic::Channel, true) => b"SUBSCRIBE",
        (Topic::Pattern, true) => b"PSUBSCRIBE",
        (Topic::Shard, true) => b"SSUBSCRIBE",
        (Topic::Channel, false) => b"UNSUBSCRIBE",
        (Topic::Pattern, false) => b"PUNSUBSCRIBE",
        (Topic::Shard, false) => b"SUNSUBSCRIBE",
    }
}

async fn serve_link(
    hub: &Weak<Hub>,
    shard: &str,
    stream: &mut crate::tls::BackendStream,
    cmds: &mut mpsc::UnboundedReceiver<LinkCmd>,
    mut out: BytesMut,
) -> LinkEnd {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                return LinkEnd::Lost(format!("write failed: {e}"));
            }
            if let Err(e) = stream.flush().await {
                return LinkEnd::Lost(format!("write failed: {e}"));
            }
            out.clear();
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        tokio::select! {
            c = cmds.recv() => match c {
                None => return LinkEnd::Closed,
                Some(LinkCmd::Reconnect) => return LinkEnd::Reconnect,
                Some(LinkCmd::Subscribe(t, name)) => encode_command(&[subscribe_verb(t, true), &name], &mut out),
                Some(LinkCmd::Unsubscribe(t, name)) => encode_command(&[subscribe_verb(t, false), &name], &mut out),
            },
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) => return LinkEnd::Lost("the shard closed the connection".to_owned()),
                Err(e) => return LinkEnd::Lost(e.to_string()),
                Ok(_) => {
                    let Some(h) = hub.upgrade() else { return LinkEnd::Closed };
                    loop {
                        match scan::frame_len(&buf) {
                            Ok(Some(n)) => {
                                let frame = buf.split_to(n).freeze();
                                on_frame(&h, shard, &frame);
                            }
                            Ok(None) => break,
                            Err(e) => return LinkEnd::Lost(format!("protocol error: {e}")),
                        }
                    }
                }
            },
        }
    }
}

/// One frame from a link: a message to deliver or a (un)subscribe
/// confirmation.
fn on_frame(hub: &Hub, shard: &str, frame: &Bytes) {
    let Some(parts) = parse_push(frame) else {
        if frame.first() == Some(&b'-') {
            tracing::warn!(shard = %shard, reply = %String::from_utf8_lossy(frame).trim_end(), "the shard refused a subscription of the pub/sub hub");
            // Do not leave subscribers waiting for a confirmation.
            hub.confirmed.notify_waiters();
        }
        return;
    };
    let Some(kind) = parts.first() else { return };
    match (kind.as_ref(), parts.len()) {
        (b"message", 3) if about_the_fence(&parts[1], &parts[2]) => {}
        (b"pmessage", 4) if about_the_fence(&parts[2], &parts[3]) => {}
        (b"message", 3) => hub.deliver(Topic::Channel, &parts[1], frame),
        (b"pmessage", 4) => hub.deliver(Topic::Pattern, &parts[1], frame),
        (b"smessage", 3) => hub.deliver(Topic::Shard, &parts[1], frame),
        (b"subscribe", 3) => hub.link_confirmed(shard, (Topic::Channel, parts[1].clone()), true),
        (b"psubscribe", 3) => hub.link_confirmed(shard, (Topic::Pattern, parts[1].clone()), true),
        (b"ssubscribe", 3) => hub.link_confirmed(shard, (Topic::Shard, parts[1].clone()), true),
        (b"unsubscribe", 3) => hub.link_confirmed(shard, (Topic::Channel, parts[1].clone()), false),
        (b"punsubscribe", 3) => {
            hub.link_confirmed(shard, (Topic::Pattern, parts[1].clone()), false)
        }
        (b"sunsubscribe", 3) => hub.link_confirmed(shard, (Topic::Shard, parts[1].clone()), false),
        _ => {}
    }
}

/// Whether a message is a keyspace notification of the mover's fence
/// (`backend::migrate::MOVING_SET`, a reserved key no client may name):
/// `__keyspace@<db>__:<fence>`, or a `__keyevent@<db>__:<event>` whose
/// payload is the fence. Clients never see them, as they never see the key.
pub(super) fn about_the_fence(channel: &[u8], payload: &[u8]) -> bool {
    match notification(channel) {
        Notification::Keyspace(key) => is_reserved_key(key),
        Notification::Keyevent => is_reserved_key(payload),
        Notification::Plain => false,
    }
}

/// The elements of an array or push frame of bulk strings and integers
/// (as slices of `frame`); None for anything else.
fn parse_push(frame: &Bytes) -> Option<SmallVec<[Bytes; 4]>> {
    let line_end = |from: usize| -> Option<usize> {
        frame[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| from + p)
    };
    let num = |from: usize, to: usize| -> Option<i64> {
        std::str::from_utf8(&frame[from..to]).ok()?.parse().ok()
    };
    if !matches!(frame.first(), Some(b'*' | b'>')) {
        return None;
    }
    let end = line_end(1)?;
    let n = num(1, end)?;
    let mut at = end + 2;
    let mut parts = SmallVec::new();
    for _ in 0..n {
        match frame.get(at)? {
            b'$' => {
                let e = line_end(at + 1)?;
                let len = usize::try_from(num(at + 1, e)?).ok()?;
                let start = e + 2;
                parts.push(frame.slice(start..start.checked_add(len)?.min(frame.len())));
                at = start + len + 2;
            }
            b':' => {
                let e = line_end(at + 1)?;
                parts.push(frame.slice(at + 1..e));
                at = e + 2;
            }
            _ => return None,
        }
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_parse_into_their_elements() {
        let frame = Bytes::from_static(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n");
        let parts = parse_push(&frame).expect("a push");
        assert_eq!(parts.as_slice(), &[&b"message"[..], b"ch", b"hello"]);
        let frame = Bytes::from_static(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        let parts = parse_push(&frame).expect("a confirmation");
        assert_eq!(parts.as_slice(), &[&b"subscribe"[..], b"a", b"1"]);
        assert!(parse_push(&Bytes::from_static(b"+OK\r\n")).is_none());
    }
}

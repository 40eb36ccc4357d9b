"""Pub/sub through the proxy, byte for byte against a plain redis-server.

Every scenario runs the same requests on the proxy and on the reference
and compares the exact reply frames (RESP2 and RESP3): subscribe and
unsubscribe confirmations, messages, pattern messages, shard channels,
RESP2's subscribed-mode rules, PUBLISH's receiver counts and the PUBSUB
introspection commands. Where Redis' order is a hash table's (UNSUBSCRIBE
without arguments), frames are compared as sets.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid

import pytest
import redis

from rawresp import RawConn, encode, parse

_ids = itertools.count()


def _names(*bases: str) -> list[str]:
    """Channel names unique to this test run (several tests share shards)."""
    tag = f"{uuid.uuid4().hex[:6]}{next(_ids)}"
    return [f"{b}:{tag}" for b in bases]


class Sides:
    """The same connections on the proxy and on the reference."""

    def __init__(self, deployment, protocol: int):
        self.deployment = deployment
        self.protocol = protocol
        self.conns: list[tuple[RawConn, RawConn]] = []

    def connect(self) -> tuple[RawConn, RawConn]:
        pair = (
            RawConn(self.deployment.host, self.deployment.port),
            RawConn("127.0.0.1", self.deployment.reference.port),
        )
        if self.protocol == 3:
            for c in pair:
                c.command("HELLO", "3")
        self.conns.append(pair)
        return pair

    def close(self) -> None:
        for pair in self.conns:
            for c in pair:
                c.close()

    @staticmethod
    def same(pair, *args, frames: int = 1, unordered: bool = False) -> list[bytes]:
        """Sends one command on both sides; the reply frames must be equal."""
        got = []
        for c in pair:
            c.send(encode(*args))
            got.append(c.read_frames(frames))
        proxy, ref = got
        if unordered:
            assert sorted(proxy) == sorted(ref), (args, proxy, ref)
        else:
            assert proxy == ref, (args, proxy, ref)
        return proxy

    @staticmethod
    def same_members(pair, *args) -> None:
        """Sends one command on both sides; the replies are the same array
        up to order (Redis lists a hash table's members)."""
        proxy, ref = (parse(c.command(*args)) for c in pair)
        assert sorted(proxy) == sorted(ref), (args, proxy, ref)

    @staticmethod
    def same_frames(pair, frames: int = 1, unordered: bool = False) -> list[bytes]:
        """Reads frames that arrive unasked (messages) on both sides."""
        proxy, ref = (c.read_frames(frames) for c in pair)
        if unordered:
            assert sorted(proxy) == sorted(ref), (proxy, ref)
        else:
            assert proxy == ref, (proxy, ref)
        return proxy


@pytest.fixture
def sides(deployment, protocol):
    s = Sides(deployment, protocol)
    yield s
    s.close()


def test_subscribe_publish_unsubscribe_like_redis(sides, protocol):
    a, b, pat_base = _names("news", "chat", "pat")
    sub = sides.connect()
    pub = sides.connect()
    # One confirmation per argument, repeated names included.
    sides.same(sub, "SUBSCRIBE", a, b, a, frames=3)
    sides.same(sub, "PSUBSCRIBE", pat_base + "*", frames=1)
    sides.same(pub, "PUBLISH", a, "hello")
    sides.same_frames(sub)
    sides.same(pub, "PUBLISH", pat_base + ".x", "via pattern")
    sides.same_frames(sub)
    sides.same(pub, "PUBLISH", b, "")
    sides.same_frames(sub)
    sides.same(pub, "PUBLISH", "nobody:" + a, "lost")
    if protocol == 2:
        # Subscribed mode: only (P|S)(UN)SUBSCRIBE, PING, QUIT, RESET.
        sides.same(sub, "GET", "k")
        sides.same(sub, "SET", "k", "v")
        sides.same(sub, "CLIENT", "ID")
    sides.same(sub, "PING")
    sides.same(sub, "PING", "payload")
    sides.same(sub, "UNSUBSCRIBE", a, frames=1)
    sides.same(pub, "PUBLISH", a, "after unsubscribe")
    # Without arguments: every channel (Redis' own order is a hash table's).
    sides.same(sub, "UNSUBSCRIBE", frames=1, unordered=True)
    sides.same(sub, "PUNSUBSCRIBE", frames=1)
    sides.same(sub, "UNSUBSCRIBE", frames=1)
    # Out of subscribed mode, commands work again.
    sides.same(sub, "GET", "k")
    sides.same(sub, "PING")


def test_publish_counts_every_local_subscriber(sides):
    (ch,) = _names("fan")
    subs = [sides.connect() for _ in range(3)]
    for s in subs:
        sides.same(s, "SUBSCRIBE", ch)
    psub = sides.connect()
    sides.same(psub, "PSUBSCRIBE", ch[:3] + "*")
    pub = sides.connect()
    # 3 channel subscribers and 1 pattern subscriber: Redis answers 4.
    sides.same(pub, "PUBLISH", ch, "m")
    for s in subs:
        sides.same_frames(s)
    sides.same_frames(psub)


def test_unsubscribe_without_subscriptions(sides):
    (ch,) = _names("none")
    c = sides.connect()
    sides.same(c, "UNSUBSCRIBE")
    sides.same(c, "PUNSUBSCRIBE")
    sides.same(c, "SUNSUBSCRIBE")
    sides.same(c, "UNSUBSCRIBE", ch, ch, frames=2)
    sides.same(c, "PUNSUBSCRIBE", ch + "*")


def test_sharded_pubsub_like_redis(sides):
    a, b = _names("{sp}a", "{sp}b")
    sub = sides.connect()
    pub = sides.connect()
    sides.same(sub, "SSUBSCRIBE", a, b, frames=2)
    # Classic subscriptions and shard ones are counted apart.
    sides.same(sub, "SUBSCRIBE", a)
    sides.same(pub, "SPUBLISH", a, "sharded")
    sides.same_frames(sub)
    sides.same(pub, "PUBLISH", a, "classic")
    sides.same_frames(sub)
    sides.same(pub, "SPUBLISH", b, "")
    sides.same_frames(sub)
    sides.same(sub, "SUNSUBSCRIBE", a, frames=1)
    sides.same(pub, "SPUBLISH", a, "nobody")
    sides.same(sub, "SUNSUBSCRIBE", frames=1)
    sides.same(sub, "UNSUBSCRIBE", frames=1)


def test_pubsub_introspection_like_redis(sides):
    a, b, c = _names("intro-a", "intro-b", "{st}intro-c")
    s1 = sides.connect()
    s2 = sides.connect()
    sides.same(s1, "SUBSCRIBE", a, b, frames=2)
    sides.same(s2, "SUBSCRIBE", a, frames=1)
    sides.same(s2, "PSUBSCRIBE", a + "*", b + "*", frames=2)
    sides.same(s2, "SSUBSCRIBE", c, frames=1)
    q = sides.connect()
    sides.same(q, "PUBSUB", "NUMSUB", a, b, "missing" + a)
    sides.same(q, "PUBSUB", "NUMSUB")
    sides.same_members(q, "PUBSUB", "CHANNELS", a[:5] + "*" + a[-4:])
    sides.same_members(q, "PUBSUB", "SHARDCHANNELS", c)
    sides.same(q, "PUBSUB", "SHARDNUMSUB", c, "nope")
    sides.same(q, "PUBSUB", "HELP")
    sides.same(q, "PUBSUB", "NOSUCH")
    sides.same(q, "PUBSUB", "NUMPAT", "extra")
    sides.same(q, "PUBSUB", "help", "extra")
    sides.same(q, "PUBSUB", "Channels", "a", "b")


def test_numpat_counts_this_proxys_patterns(deployment, proxy_only):
    (p,) = _names("numpat")
    with RawConn(deployment.host, deployment.port) as sub, RawConn(deployment.host, deployment.port) as q:
        # Earlier tests' subscribers may still be closing: wait for a
        # steady count first.
        before = parse(q.command("PUBSUB", "NUMPAT"))
        for _ in range(50):
            time.sleep(0.05)
            now = parse(q.command("PUBSUB", "NUMPAT"))
            if now == before:
                break
            before = now
        sub.send(encode("PSUBSCRIBE", p + "*", p + "?"))
        sub.read_frames(2)
        assert parse(q.command("PUBSUB", "NUMPAT")) == before + 2


def test_resp3_pushes_interleave_with_replies(deployment, protocol):
    if protocol == 2:
        pytest.skip("RESP3 only")
    (ch,) = _names("mixed")
    with RawConn(deployment.host, deployment.port) as c, RawConn(deployment.host, deployment.port) as pub:
        c.command("HELLO", "3")
        c.send(encode("SUBSCRIBE", ch))
        assert c.read_frame().startswith(b">3\r\n$9\r\nsubscribe\r\n")
        # A RESP3 client keeps running commands while subscribed.
        assert c.command("SET", "{m}k", "v") == b"+OK\r\n"
        assert parse(pub.command("PUBLISH", ch, "push")) == 1
        frames = [c.read_frame()]
        c.send(encode("GET", "{m}k"))
        frames.append(c.read_frame())
        if frames[-1].startswith(b">"):
            frames.append(c.read_frame())
        assert b">3\r\n$7\r\nmessage\r\n" + b"$%d\r\n%s\r\n" % (len(ch), ch.encode()) + b"$4\r\npush\r\n" in frames
        assert b"$1\r\nv\r\n" in frames


def test_messages_arrive_in_publish_order(deployment):
    (ch,) = _names("order")
    r = redis.Redis(host=deployment.host, port=deployment.port, decode_responses=True)
    p = r.pubsub()
    try:
        p.subscribe(ch)
        assert p.get_message(timeout=5)["type"] == "subscribe"
        for i in range(500):
            r.publish(ch, str(i))
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 500 and time.monotonic() < deadline:
            m = p.get_message(timeout=1)
            if m and m["type"] == "message":
                got.append(int(m["data"]))
        assert got == list(range(500))
    finally:
        p.close()
        r.close()


def test_redis_py_pubsub_thread(deployment):
    """redis-py's PubSub worker thread, as applications use it."""
    (ch,) = _names("worker")
    r = redis.Redis(host=deployment.host, port=deployment.port, decode_responses=True)
    seen = []
    done = threading.Event()

    def handler(message):
        seen.append(message["data"])
        if len(seen) == 3:
            done.set()

    p = r.pubsub()
    p.subscribe(**{ch: handler})
    worker = p.run_in_thread(sleep_time=0.01, daemon=True)
    try:
        deadline = time.monotonic() + 5
        while r.pubsub_numsub(ch)[0][1] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        for m in ["a", "b", "c"]:
            r.publish(ch, m)
        assert done.wait(5), seen
        assert seen == ["a", "b", "c"]
    finally:
        worker.stop()
        worker.join(timeout=5)
        p.close()
        r.close()


def test_keyspace_notifications(deployment, harness_only, protocol):
    """Keyspace events of every shard reach pattern subscribers once, and
    `__keyspace@0__:<key>` / `__keyevent@0__:<event>` channels work."""
    servers = [s.client() for s in deployment.backend_primaries()]
    for s in servers:
        s.config_set("notify-keyspace-events", "KEA")
    tag = uuid.uuid4().hex[:6]
    keys = [f"ks{tag}:{i}" for i in range(8)]
    try:
        with RawConn(deployment.host, deployment.port) as sub, RawConn(deployment.host, deployment.port) as cmd:
            if protocol == 3:
                sub.command("HELLO", "3")
            sub.send(encode("PSUBSCRIBE", f"__keyspace@0__:ks{tag}:*"))
            sub.read_frame()
            sub.send(encode("SUBSCRIBE", f"__keyspace@0__:{keys[0]}", "__keyevent@0__:expire"))
            sub.read_frames(2)
            for k in keys:
                assert cmd.command("SET", k, "v") == b"+OK\r\n"
            assert parse(cmd.command("EXPIRE", keys[0], "100")) == 1
            # 8 pattern events for SET, then for keys[0]'s EXPIRE: the
            # pattern event, its keyspace channel event, its keyevent one.
            frames = [parse(sub.read_frame()) for _ in range(12)]
            kinds = [f[0] for f in frames]
            assert kinds.count(b"pmessage") == 9, frames
            assert kinds.count(b"message") == 3, frames
            set_events = sorted(f[2] for f in frames if f[0] == b"pmessage" and f[3] == b"set")
            assert set_events == sorted(f"__keyspace@0__:{k}".encode() for k in keys)
            messages = sorted((f[1], f[2]) for f in frames if f[0] == b"message")
            assert messages == sorted(
                [
                    (f"__keyspace@0__:{keys[0]}".encode(), b"set"),
                    (f"__keyspace@0__:{keys[0]}".encode(), b"expire"),
                    (b"__keyevent@0__:expire", keys[0].encode()),
                ]
            )
            assert not sub.is_closed(timeout=0.3)
            assert sub.buf == b"", "a message was delivered twice"
    finally:
        for s in servers:
            s.config_set("notify-keyspace-events", "")
            s.close()

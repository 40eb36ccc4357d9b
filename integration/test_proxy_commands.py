"""Commands the proxy answers itself, refused commands, and error wording."""

import re

import pytest

from compare import e, raw_client
from rawresp import RawConn, RespError, encode


def both_raw(deployment):
    return [
        ("proxy", RawConn(deployment.host, deployment.port)),
        ("reference", RawConn("127.0.0.1", deployment.reference.port)),
    ]


def raw_compare(deployment, *commands):
    """Sends each command (a tuple of args) on a raw connection to both sides;
    asserts byte-identical replies; returns the reference's frames."""
    frames = {}
    for name, c in both_raw(deployment):
        with c:
            frames[name] = [c.command(*args) for args in commands]
    for args, got, want in zip(commands, frames["proxy"], frames["reference"]):
        assert got == want, f"{args}: proxy {got!r} != reference {want!r}"
    return frames["reference"]


def test_ping_echo_select(pair):
    pair.run(
        ("PING",),
        ("PING", "hello world"),
        ("ECHO", "echo me"),
        ("ECHO", b"\x00\r\n"),
        ("SELECT", "0"),
        e("PING", "a", "b"),
        e("ECHO",),
        e("SELECT", "notanumber"),
    )


def test_ping_echo_bytes(deployment):
    frames = raw_compare(deployment, ("PING",), ("PING", "msg"), ("ECHO", "x y"), ("SELECT", "0"))
    assert frames == [b"+PONG\r\n", b"$3\r\nmsg\r\n", b"$3\r\nx y\r\n", b"+OK\r\n"]


def test_select_other_db_and_back(deployment):
    """SELECT 1 selects database 1 (each shard's), as on Redis; out of range is
    Redis' own error (see test_databases.py for the full comparison)."""
    for name, c in both_raw(deployment):
        with c:
            assert c.command("SELECT", "1") == b"+OK\r\n", name
            assert c.command("SELECT", "16") == b"-ERR DB index is out of range\r\n", name
            assert c.command("SELECT", "0") == b"+OK\r\n", name
            assert c.command("PING") == b"+PONG\r\n", name


def test_hello(deployment):
    for name, c in both_raw(deployment):
        with c:
            h2 = c.call("HELLO", "2")
            assert isinstance(h2, list), (name, h2)
            m2 = dict(zip(h2[::2], h2[1::2]))
            assert m2[b"server"] == b"redis" and m2[b"proto"] == 2, (name, m2)
            h3 = c.call("HELLO", "3")
            assert c.buf == b""
            assert isinstance(h3, dict), (name, h3)
            assert h3[b"server"] == b"redis" and h3[b"proto"] == 3, (name, h3)
            assert isinstance(h3[b"id"], int)
            # The connection now speaks RESP3: a map reply starts with '%'.
            c.command("HSET", "hello:h", "f", "v")
            assert c.command("HGETALL", "hello:h") == b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
            assert c.command("GET", "hello:none") == b"_\r\n"
            h2again = c.call("HELLO", "2")
            assert isinstance(h2again, list)
            assert c.command("GET", "hello:none") == b"$-1\r\n"


def test_hello_errors(deployment):
    frames = raw_compare(deployment, ("HELLO", "4"), ("HELLO", "1"), ("HELLO", "abc"), ("PING",))
    assert frames[0] == b"-NOPROTO unsupported protocol version\r\n"
    assert frames[3] == b"+PONG\r\n"


def test_hello_auth_setname(deployment, protocol):
    """With auth off any credentials are accepted, like Redis' nopass default user."""
    for name, c in both_raw(deployment):
        with c:
            h = c.call("HELLO", str(protocol), "AUTH", "default", "anything", "SETNAME", "itname")
            assert not isinstance(h, RespError), (name, h)
            assert c.call("CLIENT", "GETNAME") == b"itname", name
            assert c.call("AUTH", "default", "x") == b"OK", name
            assert c.call("PING") == b"PONG", name


def test_client_commands(pair):
    pair.run(
        ("CLIENT", "GETNAME"),
        ("CLIENT", "SETNAME", "it-client"),
        ("CLIENT", "GETNAME"),
        e("CLIENT", "SETNAME", "has space"),
        ("CLIENT", "SETNAME", ""),
        ("CLIENT", "GETNAME"),
    )


def test_client_setinfo(deployment, proxy_only):
    """Redis 7.2's CLIENT SETINFO (sent by redis-py on connect) is accepted;
    the 7.0 reference does not know it, so this is proxy-only."""
    with RawConn(deployment.host, deployment.port) as c:
        assert c.command("CLIENT", "SETINFO", "LIB-NAME", "itlib") == b"+OK\r\n"
        assert c.command("CLIENT", "SETINFO", "LIB-VER", "1.2.3") == b"+OK\r\n"
        assert c.command("CLIENT", "SETINFO", "LIB-NAME", "bad name").startswith(b"-ERR")
        assert c.command("PING") == b"+PONG\r\n"


def test_client_id(deployment, protocol):
    a = raw_client(deployment.host, deployment.port, protocol)
    b = raw_client(deployment.host, deployment.port, protocol)
    try:
        ia, ib = a.execute_command("CLIENT", "ID"), b.execute_command("CLIENT", "ID")
        assert isinstance(ia, int) and isinstance(ib, int) and ia > 0 and ib > 0 and ia != ib
        assert a.execute_command("CLIENT", "ID") == ia
    finally:
        a.close()
        b.close()


def test_command_count_and_info(deployment, protocol):
    for port, host in [(deployment.port, deployment.host), (deployment.reference.port, "127.0.0.1")]:
        c = raw_client(host, port, protocol)
        try:
            assert c.execute_command("COMMAND", "COUNT") > 200
            info = c.execute_command("COMMAND", "INFO", "get", "mset", "nosuchcmd")
            get, mset, missing = info
            assert get[0] == b"get" and get[1] == 2 and get[3] == 1 and get[4] == 1 and get[5] == 1
            assert mset[0] == b"mset" and mset[1] == -3 and mset[3] == 1 and mset[4] == -1 and mset[5] == 2
            assert missing is None
            keys = c.execute_command("COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2")
            assert keys == [b"a", b"b"]
        finally:
            c.close()


def test_time(deployment, protocol):
    c = raw_client(deployment.host, deployment.port, protocol)
    try:
        t = c.execute_command("TIME")
        assert isinstance(t, list) and len(t) == 2
        secs, micros = int(t[0]), int(t[1])
        assert secs > 1_600_000_000 and 0 <= micros < 1_000_000
    finally:
        c.close()


def test_info_keyspace_summed(deployment, proxy, ref):
    for c in (proxy, ref):
        c.mset({f"info:{i}": "v" for i in range(40)})
        c.mset({f"eu/info:{i}": "v" for i in range(10)})
        for i in range(5):
            c.expire(f"info:{i}", 1000)
    counts = {}
    for name, c in both_raw(deployment):
        with c:
            text = c.call("INFO").decode()
        assert "# Keyspace" in text, name
        m = re.search(r"^db0:keys=(\d+),expires=(\d+),avg_ttl=\d+\r$", text, re.M)
        assert m, (name, text[-300:])
        counts[name] = (int(m.group(1)), int(m.group(2)))
    assert counts["proxy"] == counts["reference"] == (50, 5)


def test_info_keyspace_section(proxy, ref):
    proxy.set("one", "1")
    ref.set("one", "1")
    assert proxy.info("keyspace")["db0"]["keys"] == ref.info("keyspace")["db0"]["keys"] == 1


def test_info_has_proxy_section(deployment, proxy_only):
    with RawConn(deployment.host, deployment.port) as c:
        text = c.call("INFO")
    assert b"# Proxy" in text and b"# Server" in text and b"# Keyspace" in text


REFUSED = [
    ("config", ("CONFIG", "SET", "maxmemory", "1")),
    ("config", ("CONFIG", "GET", "*")),
    ("cluster", ("CLUSTER", "INFO")),
    ("shutdown", ("SHUTDOWN", "NOSAVE")),
    ("replicaof", ("REPLICAOF", "127.0.0.1", "1")),
    ("debug", ("DEBUG", "SLEEP", "0")),
    ("move", ("MOVE", "k", "1")),
]


@pytest.mark.parametrize("name,args", REFUSED, ids=[" ".join(a[:2]) for _, a in REFUSED])
def test_refused_command(deployment, proxy_only, name, args):
    with RawConn(deployment.host, deployment.port) as c:
        reply = c.command(*args)
        assert re.fullmatch(
            rb"-ERR command '%s' is not supported by shardgate: [^\r\n]+\r\n" % name.encode(), reply
        ), reply
        # The connection stays usable, in order.
        c.send(encode("SET", "after-refused", "1") + encode("GET", "after-refused") + encode("PING"))
        assert c.read_frames(3) == [b"+OK\r\n", b"$1\r\n1\r\n", b"+PONG\r\n"]


def test_unknown_command_wording(deployment):
    frames = raw_compare(
        deployment,
        ("foo", "a", "b"),
        ("FOO",),
        ("nosuch", "x" * 200),
        ("GET",),
        ("GET", "a", "b"),
        ("SET", "k"),
        ("HSET", "h", "f"),
        ("CLIENT", "NOSUCHSUB"),
        ("PING",),
    )
    assert frames[0] == b"-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n"
    assert frames[3] == b"-ERR wrong number of arguments for 'get' command\r\n"
    assert frames[-1] == b"+PONG\r\n"


def test_errors_through_redis_py(pair):
    pair.run(
        e("FOO", "a", "b"),
        e("GET",),
        e("SET", "k"),
        ("SET", "k", "v"),
        e("LPUSH", "k", "x"),
        e("ZADD", "k", "1", "m"),
        ("GET", "k"),
    )


@pytest.mark.parametrize(
    "args",
    [
        ("COMMAND", "LIST", "FILTERBY", "PATTERN", "config*"),
        ("COMMAND", "LIST", "FILTERBY", "PATTERN", "GET*"),
        ("COMMAND", "LIST", "FILTERBY", "PATTERN", "*sub*"),
        ("COMMAND", "LIST", "FILTERBY", "ACLCAT", "pubsub"),
        ("COMMAND", "LIST", "FILTERBY", "ACLCAT", "hash"),
        ("COMMAND", "LIST", "FILTERBY", "ACLCAT", "nosuch"),
        ("COMMAND", "LIST", "FILTERBY", "ACLCAT", "all"),
        ("COMMAND", "LIST", "FILTERBY", "MODULE", "x"),
        ("COMMAND", "LIST", "FILTERBY", "BOGUS", "x"),
        ("COMMAND", "LIST", "extra"),
        ("COMMAND", "DOCS", "get", "hset"),
        ("COMMAND", "GETKEYSANDFLAGS", "set", "a", "b"),
        ("COMMAND", "GETKEYSANDFLAGS", "lmove", "a", "b", "LEFT", "RIGHT"),
    ],
    ids=lambda a: " ".join(a[1:]),
)
def test_command_introspection_like_redis(deployment, proxy_only, args):
    """COMMAND LIST filters, DOCS and GETKEYSANDFLAGS answer as the shards'
    own Redis does (lists compared as sets: Redis' order is a hash table's)."""

    def norm(v):
        if isinstance(v, list) and all(isinstance(x, bytes) for x in v):
            return sorted(v)
        return v

    with RawConn(deployment.host, deployment.port) as p, RawConn("127.0.0.1", deployment.reference.port) as r:
        got, want = norm(p.call(*args)), norm(r.call(*args))
    assert got == want, (args, got, want)

"""CLIENT LIST and CLIENT KILL of the proxy's own clients: Redis' line
format (redis-py parses it), the filters, Redis' error texts (compared with
a plain redis-server), and a killed client blocked in BLPOP leaves no ghost
waiter behind."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from rawresp import RawConn, encode, parse


def both(deployment):
    return [RawConn(deployment.host, deployment.port), RawConn("127.0.0.1", deployment.reference.port)]


@pytest.mark.parametrize(
    "args",
    [
        ("CLIENT", "KILL", "10.9.9.9:1"),
        ("CLIENT", "KILL", "ID", "0"),
        ("CLIENT", "KILL", "ID", "abc"),
        ("CLIENT", "KILL", "ID", "999999"),
        ("CLIENT", "KILL", "TYPE", "nosuch"),
        ("CLIENT", "KILL", "ID"),
        ("CLIENT", "KILL", "BOGUS", "1"),
        ("CLIENT", "KILL", "SKIPME", "maybe"),
        ("CLIENT", "LIST", "TYPE", "nosuch"),
        ("CLIENT", "LIST", "ID", "abc"),
        ("CLIENT", "LIST", "BOGUS"),
        ("CLIENT", "LIST", "ID", "999999"),
    ],
    ids=lambda a: " ".join(a[1:]),
)
def test_replies_and_errors_like_redis(deployment, proxy_only, args):
    conns = both(deployment)
    try:
        proxy, ref = (c.command(*args) for c in conns)
        if proxy.startswith(b"=") or ref.startswith(b"="):
            proxy, ref = parse(proxy), parse(ref)
        assert proxy == ref, (args, proxy, ref)
    finally:
        for c in conns:
            c.close()


def test_client_list_shows_each_client(deployment, proxy_only):
    name = "cl" + uuid.uuid4().hex[:6]
    me = redis.Redis(host=deployment.host, port=deployment.port, protocol=3, decode_responses=True)
    other = redis.Redis(host=deployment.host, port=deployment.port, decode_responses=True)
    sub = RawConn(deployment.host, deployment.port)
    try:
        me.client_setname(name)
        other.ping()
        assert sub.command("CLIENT", "SETNAME", "sub" + name) == b"+OK\r\n"
        sub.send(encode("SUBSCRIBE", "a" + name, "b" + name))
        sub.read_frames(2)
        sub.send(encode("PSUBSCRIBE", "p" + name + "*"))
        sub.read_frame()
        listed = me.client_list()
        mine = [c for c in listed if c["name"] == name]
        assert len(mine) == 1, listed
        assert mine[0]["id"] == str(me.client_id())
        assert mine[0]["resp"] == "3" and mine[0]["lib-name"] == "redis-py"
        assert mine[0]["cmd"] == "client" and mine[0]["flags"] == "N"
        # Other tests' clients may still be closing: look at this test's own.
        pubsub = [c for c in me.client_list(_type="pubsub") if c["name"] == "sub" + name]
        assert [(c["sub"], c["psub"], c["flags"]) for c in pubsub] == [("2", "1", "P")]
        normal = [c["name"] for c in me.client_list(_type="normal")]
        assert name in normal and "sub" + name not in normal
        one = me.client_list(client_id=[me.client_id()])
        assert [c["name"] for c in one] == [name]
    finally:
        me.close()
        other.close()
        sub.close()


def test_client_kill_by_id_addr_and_type(deployment, proxy_only):
    killer = redis.Redis(host=deployment.host, port=deployment.port, decode_responses=True)
    victims = [RawConn(deployment.host, deployment.port) for _ in range(3)]
    try:
        ids = [parse(v.command("CLIENT", "ID")) for v in victims]
        addrs = {c["id"]: c["addr"] for c in killer.client_list()}
        assert killer.execute_command("CLIENT", "KILL", "ID", ids[0]) == 1
        assert victims[0].is_closed()
        assert killer.execute_command("CLIENT", "KILL", addrs[str(ids[1])]) in (True, "OK")
        assert victims[1].is_closed()
        victims[2].send(encode("SUBSCRIBE", "kill-" + uuid.uuid4().hex))
        victims[2].read_frame()
        assert killer.client_kill_filter(_type="pubsub") >= 1
        assert victims[2].is_closed()
        # The killer itself is skipped by default and still works.
        assert killer.ping()
    finally:
        killer.close()
        for v in victims:
            v.close()


def test_a_killed_blocked_client_leaves_no_ghost_waiter(deployment, proxy_only):
    key = "ghost-kill-" + uuid.uuid4().hex[:6]
    r = redis.Redis(host=deployment.host, port=deployment.port, decode_responses=True)
    blocked = RawConn(deployment.host, deployment.port)
    try:
        my_id = parse(blocked.command("CLIENT", "ID"))
        blocked.send(encode("BLPOP", key, "0"))
        time.sleep(0.3)
        assert r.execute_command("CLIENT", "KILL", "ID", my_id) == 1
        assert blocked.is_closed()
        # The shard's blocked BLPOP went with the client: the element stays.
        assert r.rpush(key, "x") == 1
        time.sleep(0.2)
        assert r.llen(key) == 1
    finally:
        r.delete(key)
        r.close()
        blocked.close()

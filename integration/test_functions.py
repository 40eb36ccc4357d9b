"""SCRIPT KILL, FUNCTION and runaway scripts through the proxy, against a
plain redis-server: functions are loaded on every shard (FCALL works on any
key), SCRIPT KILL / FUNCTION KILL reach the shard running the script, and
the replies match Redis'."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from rawresp import RawConn, RespError, encode, parse

LIB = """#!lua name={name}
redis.register_function('{name}_get', function(keys, args) return redis.call('GET', keys[1]) end)
redis.register_function{{function_name='{name}_ro', callback=function(keys, args) return #keys end, flags={{'no-writes'}}}}
"""


def both(deployment):
    return [
        RawConn(deployment.host, deployment.port),
        RawConn("127.0.0.1", deployment.reference.port),
    ]


def same(conns, *args):
    got = [c.command(*args) for c in conns]
    assert got[0] == got[1], (args, got)
    return got[0]


def test_functions_load_everywhere_and_answer_like_redis(deployment):
    name = "lib" + uuid.uuid4().hex[:8]
    conns = both(deployment)
    try:
        same(conns, "FUNCTION", "LOAD", LIB.format(name=name))
        # Loading again without REPLACE: Redis' error.
        same(conns, "FUNCTION", "LOAD", LIB.format(name=name))
        same(conns, "FUNCTION", "LOAD", "REPLACE", LIB.format(name=name))
        # FCALL on keys of every shard finds the function.
        for i in range(16):
            key = f"fk{i}"
            same(conns, "SET", key, f"v{i}")
            same(conns, "FCALL", f"{name}_get", "1", key)
            same(conns, "FCALL_RO", f"{name}_ro", "1", key)
        # Functions of a library come in a hash table's order: compare sorted.
        listed = [parse(c.command("FUNCTION", "LIST", "LIBRARYNAME", name)) for c in conns]
        for lib in listed:
            lib[0][5].sort()
        assert listed[0] == listed[1]
        same(conns, "FUNCTION", "DELETE", name)
        same(conns, "FUNCTION", "DELETE", name)
        same(conns, "FCALL", f"{name}_get", "1", "fk0")
        same(conns, "FUNCTION", "NOSUCH")
    finally:
        for c in conns:
            c.command("FUNCTION", "DELETE", name)
            c.close()


def test_function_dump_restore_and_flush(deployment):
    name = "lib" + uuid.uuid4().hex[:8]
    conns = both(deployment)
    try:
        same(conns, "FUNCTION", "LOAD", LIB.format(name=name))
        dumps = [c.command("FUNCTION", "DUMP") for c in conns]
        assert dumps[0].startswith(b"$")
        same(conns, "FUNCTION", "FLUSH")
        same(conns, "FCALL", f"{name}_get", "1", "k")
        # The proxy's own dump restores on every shard.
        payload = parse(dumps[0])
        assert parse(conns[0].command("FUNCTION", "RESTORE", payload)) == b"OK"
        for i in range(8):
            assert not isinstance(parse(conns[0].command("FCALL", f"{name}_ro", "1", f"r{i}")), RespError)
    finally:
        for c in conns:
            c.command("FUNCTION", "FLUSH")
            c.close()


def test_kill_without_a_running_script(deployment):
    conns = both(deployment)
    try:
        same(conns, "SCRIPT", "KILL")
        same(conns, "FUNCTION", "KILL")
    finally:
        for c in conns:
            c.close()


@pytest.mark.parametrize("how", ["script", "function"])
def test_a_runaway_script_is_killed_through_the_proxy(deployment, harness_only, how):
    """`while true do end` leaves its shard answering BUSY; SCRIPT KILL (or
    FUNCTION KILL for a function) through the proxy reaches it."""
    servers = [s.client() for s in deployment.backend_primaries()]
    for s in servers:
        s.config_set("busy-reply-threshold", "100")
    name = "spin" + uuid.uuid4().hex[:8]
    try:
        with RawConn(deployment.host, deployment.port, timeout=30) as runner, RawConn(
            deployment.host, deployment.port
        ) as killer:
            if how == "function":
                code = (
                    f"#!lua name={name}\n"
                    f"redis.register_function{{function_name='{name}', callback=function() while true do end end, flags={{'no-writes'}}}}"
                )
                assert parse(killer.command("FUNCTION", "LOAD", code)) == name.encode()
                runner.send(encode("FCALL_RO", name, "1", "spin-key"))
            else:
                runner.send(encode("EVAL", "while true do end", "1", "spin-key"))
            time.sleep(0.5)
            # The shard is busy: a command on its key says so.
            busy = killer.command("GET", "spin-key")
            assert busy.startswith(b"-BUSY"), busy
            kill = "FUNCTION" if how == "function" else "SCRIPT"
            assert killer.command(kill, "KILL") == b"+OK\r\n"
            reply = runner.read_frame()
            assert reply.startswith(b"-"), reply
            assert b"killed" in reply.lower(), reply
            # The shard serves again, and so does the runner's connection.
            assert killer.command("GET", "spin-key") == b"$-1\r\n"
            assert runner.command("PING") == b"+PONG\r\n"
    finally:
        for s in servers:
            s.config_set("busy-reply-threshold", "5000")
            if how == "function":
                s.execute_command("FUNCTION", "FLUSH")
            s.close()

"""MONITOR through the proxy: every command passing through it, in Redis'
line format (compared with redis-server's own MONITOR lines, timestamps and
addresses aside), passwords redacted, admin commands not shown."""

from __future__ import annotations

import re
import uuid

from rawresp import RawConn, encode

LINE = re.compile(rb"^\+(\d+)\.(\d{6}) \[0 ([^\]]+)\] (.*)\r\n$")


def lines(mon: RawConn, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        frame = mon.read_frame()
        m = LINE.match(frame)
        assert m, frame
        out.append(m.group(4))
    return out


def test_monitor_lines_like_redis(deployment, proxy_only):
    key = "mon-" + uuid.uuid4().hex[:6]
    commands = [
        ("SET", key, 'a "quoted"\nvalue\x01'),
        ("GET", key),
        ("HSET", key + "h", "f", "v"),
        ("AUTH", "someone", "secret"),
        ("CONFIG", "GET", "maxmemory"),
        ("DEL", key, key + "h"),
        ("PING",),
    ]
    seen = []
    for port in (deployment.port, deployment.reference.port):
        host = deployment.host if port == deployment.port else "127.0.0.1"
        with RawConn(host, port) as mon, RawConn(host, port) as c:
            assert mon.command("MONITOR") == b"+OK\r\n"
            for cmd in commands:
                c.send(encode(*cmd))
                c.read_frame()
            # CONFIG is admin: not shown; the rest are, AUTH redacted.
            seen.append(lines(mon, len(commands) - 1))
    proxy, ref = seen
    assert proxy == ref, (proxy, ref)
    assert b'"AUTH" "(redacted)" "(redacted)"' in proxy


def test_monitor_shows_other_clients_and_ends_with_reset(deployment, proxy_only):
    with RawConn(deployment.host, deployment.port) as mon, RawConn(deployment.host, deployment.port) as c:
        assert mon.command("MONITOR") == b"+OK\r\n"
        for i in range(50):
            c.send(encode("SET", f"m{i}", str(i)))
        c.read_frames(50)
        got = lines(mon, 50)
        assert got == [b'"SET" "m%d" "%d"' % (i, i) for i in range(50)]
        assert mon.command("RESET") == b"+RESET\r\n"
        c.command("SET", "after", "1")
        assert mon.command("PING") == b"+PONG\r\n", "no line after RESET"

"""Exact bytes on a raw socket: pipelining order, malformed frames, inline
commands, binary safety. Replies are compared byte for byte with Redis."""

import random

import pytest

from rawresp import RawConn, encode


def _sides(deployment):
    return [("proxy", deployment.host, deployment.port), ("reference", "127.0.0.1", deployment.reference.port)]


def _mixed_commands(n: int, seed: int = 7) -> list[tuple]:
    rng = random.Random(seed)
    cmds = []
    for i in range(n):
        k = f"pk:{rng.randrange(40)}"
        k2 = f"eu/pk:{rng.randrange(10)}"
        choice = rng.randrange(14)
        cmds.append([
            ("SET", k, f"v{i}"),
            ("GET", k),
            ("INCR", f"ctr:{rng.randrange(5)}"),
            ("RPUSH", f"lst:{rng.randrange(5)}", str(i)),
            ("LRANGE", f"lst:{rng.randrange(5)}", "0", "2"),
            ("PING",),
            ("ECHO", f"e{i}"),
            ("EXISTS", k, k2, k),
            ("MGET", k, k2, f"pk:{rng.randrange(40)}"),
            ("DEL", k2),
            ("SET", k2, str(i)),
            ("NOSUCH", str(i)),
            ("GET",),
            ("HSET", f"h:{rng.randrange(5)}", "f", str(i)),
        ][choice])
    return cmds


@pytest.mark.parametrize("proto", [2, 3], ids=["resp2", "resp3"])
def test_pipelined_order_1000(deployment, proto):
    cmds = _mixed_commands(1000)
    payload = b"".join(encode(*c) for c in cmds)
    out = {}
    for name, host, port in _sides(deployment):
        with RawConn(host, port, timeout=20) as c:
            if proto == 3:
                assert c.command("HELLO", "3").startswith(b"%")
            c.send(payload)  # one write, 1000 commands
            out[name] = c.read_frames(len(cmds))
            assert c.command("PING") == b"+PONG\r\n"
    diffs = [i for i, (a, b) in enumerate(zip(out["proxy"], out["reference"])) if a != b]
    assert not diffs, "first differing replies: " + "; ".join(
        f"#{i} {cmds[i]}: proxy {out['proxy'][i]!r} reference {out['reference'][i]!r}" for i in diffs[:5]
    )
    assert b"+PONG\r\n" in out["reference"] and any(f.startswith(b"-ERR unknown") for f in out["reference"])


@pytest.mark.parametrize(
    "garbage",
    [b"*1\r\n$x\r\n", b"*abc\r\n", b"*1\r\n$-5\r\n", b"*2\r\n$3\r\nGET\r\n:1\r\n"],
    ids=["bad-bulk-len", "bad-count", "negative-bulk", "not-bulk"],
)
def test_malformed_frame_closes_with_protocol_error(deployment, garbage):
    for name, host, port in _sides(deployment):
        with RawConn(host, port) as c:
            assert c.command("PING") == b"+PONG\r\n"
            c.send(garbage)
            data = c.read_all_until_close()
            assert data.startswith(b"-ERR Protocol error: "), (name, data)
            assert data.endswith(b"\r\n") and data.count(b"\r\n") == 1, (name, data)


def test_malformed_command_keeps_connection(deployment):
    for name, host, port in _sides(deployment):
        with RawConn(host, port) as c:
            c.send(encode("GET") + encode("NOPE", "x") + encode("PING"))
            frames = c.read_frames(3)
            assert frames[0].startswith(b"-ERR wrong number of arguments"), (name, frames)
            assert frames[1].startswith(b"-ERR unknown command"), (name, frames)
            assert frames[2] == b"+PONG\r\n"


def test_inline_commands(deployment):
    lines = [
        b"PING\r\n",
        b'SET inl "a b"\r\n',
        b"GET inl\r\n",
        b"ECHO 'x y'\r\n",
        b'SET inl2 "tab\\there\\x41"\r\n',
        b"GET inl2\r\n",
        b"EXISTS inl inl2 nope\r\n",
        b"\r\n",  # empty line: ignored by Redis
        b"PING\n",  # bare LF
        b"PING  hello \r\n",
    ]
    out = {}
    for name, host, port in _sides(deployment):
        with RawConn(host, port) as c:
            replies = []
            for line in lines:
                c.send(line)
                if line.strip():
                    replies.append(c.read_frame())
            # Inline and RESP mixed on one connection, pipelined.
            c.send(b"PING\r\n" + encode("GET", "inl") + b"GET inl\r\n")
            replies += c.read_frames(3)
            out[name] = replies
    assert out["reference"][:3] == [b"+PONG\r\n", b"+OK\r\n", b"$3\r\na b\r\n"]
    assert out["proxy"] == out["reference"]


def test_binary_safe_keys_and_values(deployment):
    key = b"bin\x00key\r\n*1\r\n"
    value = bytes(range(256)) * 4
    out = {}
    for name, host, port in _sides(deployment):
        with RawConn(host, port) as c:
            out[name] = [
                c.command("SET", key, value),
                c.command("GET", key),
                c.command("APPEND", key, b"\r\n\x00"),
                c.command("STRLEN", key),
                c.command("MSET", key, b"\x00", b"other\r\n", b"\r\n"),
                c.command("MGET", key, b"other\r\n", b"no\x00ne"),
                c.command("EXISTS", key, b"other\r\n"),
                c.command("HSET", b"h\x00", b"f\r\n", value),
                c.command("HGET", b"h\x00", b"f\r\n"),
            ]
    assert out["reference"][1] == b"$1024\r\n" + value + b"\r\n"
    assert out["proxy"] == out["reference"]


def test_execabort_exact_bytes(deployment):
    out = {}
    for name, host, port in _sides(deployment):
        with RawConn(host, port) as c:
            c.send(encode("MULTI") + encode("SET", "{x}a", "1") + encode("SET", "{x}b") + encode("EXEC"))
            out[name] = c.read_frames(4)
    assert out["reference"][3] == b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    assert out["proxy"] == out["reference"]


def test_large_pipeline_bulk(deployment):
    """A 5 MB value and many small commands in one write arrive intact."""
    big = b"z" * (5 * 1024 * 1024)
    payload = encode("SET", "big", big) + b"".join(encode("INCR", "n") for _ in range(200)) + encode("STRLEN", "big")
    out = {}
    for name, host, port in _sides(deployment):
        with RawConn(host, port, timeout=20) as c:
            c.send(payload)
            out[name] = c.read_frames(202)
    assert out["reference"][-1] == b":5242880\r\n"
    assert out["proxy"] == out["reference"]

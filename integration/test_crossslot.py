"""Multi-key commands over keys on different shards get -CROSSSLOT from the
proxy (a single Redis has no such error, so these tests are proxy-only)."""

import pytest

from rawresp import RawConn, encode

CROSSSLOT = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"


def find_cross_shard_key(c: RawConn, base: str) -> str:
    """A key that lives on another shard than `base`: the first candidate for
    which SINTER base candidate is refused."""
    for i in range(200):
        cand = f"other{i}"
        if c.command("SINTER", base, cand) == CROSSSLOT:
            return cand
    raise AssertionError(f"no key among 200 candidates lives on another shard than {base!r}")


@pytest.fixture
def cross(deployment, proxy_only):
    with RawConn(deployment.host, deployment.port) as c:
        yield c, "base", find_cross_shard_key(c, "base")


COMMANDS = [
    lambda a, b: ("SINTER", a, b),
    lambda a, b: ("SUNION", a, b),
    lambda a, b: ("SDIFF", a, b),
    lambda a, b: ("SMOVE", a, b, "m"),
    lambda a, b: ("RENAME", a, b),
    lambda a, b: ("COPY", a, b),
    lambda a, b: ("LMOVE", a, b, "LEFT", "RIGHT"),
    lambda a, b: ("ZUNIONSTORE", a, "1", b),
    lambda a, b: ("MSETNX", a, "1", b, "2"),
    lambda a, b: ("PFMERGE", a, b),
    lambda a, b: ("BITOP", "AND", a, b),
    lambda a, b: ("LCS", a, b),
    lambda a, b: ("EVAL", "return 1", "2", a, b),
    lambda a, b: ("BLPOP", a, b, "0.1"),
]
IDS = ["sinter", "sunion", "sdiff", "smove", "rename", "copy", "lmove", "zunionstore", "msetnx",
       "pfmerge", "bitop", "lcs", "eval", "blpop"]


@pytest.mark.parametrize("make", COMMANDS, ids=IDS)
def test_crossslot_exact_message(cross, make):
    c, a, b = cross
    c.command("SET", a, "x")
    assert c.command(*make(a, b)) == CROSSSLOT
    assert c.command("GET", a) == b"$1\r\nx\r\n"  # nothing ran, connection usable


def test_same_tag_is_not_crossslot(cross):
    c, _, _ = cross
    assert c.command("SADD", "{t}a", "1", "2") == b":2\r\n"
    assert c.command("SADD", "{t}b", "2") == b":1\r\n"
    assert c.command("SINTER", "{t}a", "{t}b") == b"*1\r\n$1\r\n2\r\n"
    assert c.command("RENAME", "{t}a", "{t}c") == b"+OK\r\n"


def test_split_commands_do_not_crossslot(cross):
    c, a, b = cross
    assert c.command("MSET", a, "1", b, "2") == b"+OK\r\n"
    assert c.command("MGET", b, a) == b"*2\r\n$1\r\n2\r\n$1\r\n1\r\n"
    assert c.command("EXISTS", a, b, a) == b":3\r\n"
    assert c.command("DEL", a, b) == b":2\r\n"


def test_crossslot_in_multi_aborts_exec(cross):
    c, a, b = cross
    c.send(encode("MULTI") + encode("SET", a, "1") + encode("SINTER", a, b) + encode("EXEC") + encode("GET", a))
    frames = c.read_frames(5)
    assert frames[:3] == [b"+OK\r\n", b"+QUEUED\r\n", CROSSSLOT]
    assert frames[3] == b"-EXECABORT Transaction discarded because of previous errors.\r\n"
    assert frames[4] == b"$-1\r\n"


def test_transaction_over_two_shards_is_refused(cross):
    c, a, b = cross
    c.send(encode("MULTI") + encode("SET", a, "1") + encode("SET", b, "2") + encode("EXEC"))
    frames = c.read_frames(4)
    assert frames[0] == b"+OK\r\n" and frames[1] == b"+QUEUED\r\n"
    assert frames[2] == CROSSSLOT
    assert frames[3].startswith(b"-EXECABORT")
    assert c.command("EXISTS", a, b) == b":0\r\n"

"""Whole-keyspace commands: SCAN over every shard, KEYS, DBSIZE, RANDOMKEY."""

import pytest

from compare import raw_client, u

KEYS = [f"user:{i}" for i in range(150)] + [f"eu/{i}" for i in range(25)] + [f"{{eu:{i}}}.k" for i in range(25)]


def _fill(c):
    c.execute_command("MSET", *[x for k in KEYS for x in (k, "v")])
    for i in range(10):
        c.execute_command("RPUSH", f"list:{i}", "x")
        c.execute_command("HSET", f"hash:{i}", "f", "v")


def _scan_all(c, *opts):
    """Every key a full SCAN returns, with repetitions kept."""
    seen, cursor, rounds = [], b"0", 0
    while True:
        cursor, keys = c.execute_command("SCAN", cursor, *opts)
        seen.extend(keys)
        rounds += 1
        assert rounds < 10_000, "SCAN never returned cursor 0"
        if cursor in (b"0", 0, "0"):
            return seen


@pytest.mark.parametrize(
    "opts",
    [(), ("COUNT", "7"), ("COUNT", "1000"), ("MATCH", "user:1*"), ("MATCH", "eu/*", "COUNT", "3"),
     ("TYPE", "list"), ("TYPE", "hash", "COUNT", "2"), ("MATCH", "nothing*")],
    ids=["plain", "count7", "count1000", "match", "match-count", "type-list", "type-hash", "no-match"],
)
def test_scan_every_key_exactly_once(pair, opts):
    def scenario(side):
        c = side.connect()
        _fill(c)
        keys = _scan_all(c, *opts)
        assert len(keys) == len(set(keys)), f"{side.name}: SCAN returned duplicates"
        return sorted(keys)

    got = pair.scenario(scenario)
    expected_count = {(): 220, ("MATCH", "user:1*"): 61, ("TYPE", "list"): 10, ("MATCH", "nothing*"): 0}
    if opts in expected_count:
        assert len(got[1]) == expected_count[opts]


def test_scan_empty(pair):
    pair.run(("SCAN", "0"), ("KEYS", "*"), ("DBSIZE",), ("RANDOMKEY",))


def test_keys_dbsize(pair):
    pair.run(
        ("MSET", *[x for k in KEYS for x in (k, "v")]),
        u("KEYS", "*"),
        u("KEYS", "user:1?"),
        u("KEYS", "eu/*"),
        u("KEYS", "{eu:*"),
        ("KEYS", "none*"),
        ("DBSIZE",),
        ("DEL", "user:1", "eu/1"),
        ("DBSIZE",),
    )


def test_randomkey(deployment, protocol):
    c = raw_client(deployment.host, deployment.port, protocol)
    try:
        assert c.execute_command("RANDOMKEY") is None
        _fill(c)
        everything = set(k.encode() for k in KEYS) | {f"list:{i}".encode() for i in range(10)} | {
            f"hash:{i}".encode() for i in range(10)}
        picks = {c.execute_command("RANDOMKEY") for _ in range(30)}
        assert picks <= everything
        assert len(picks) > 1
    finally:
        c.close()


def test_flushall_empties_every_shard(proxy, deployment):
    proxy.mset({k: "v" for k in KEYS})
    assert proxy.dbsize() == len(KEYS)
    assert proxy.flushall() is True
    assert proxy.dbsize() == 0
    for p in deployment.backend_primaries():
        c = p.client()
        try:
            assert c.dbsize() == 0
        finally:
            c.close()

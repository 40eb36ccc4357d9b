"""MGET/MSET split over every shard and merged in request order."""

from compare import e


def test_mset_mget_100_keys(pair):
    keys = [f"mk:{i}" for i in range(100)]
    kv = [x for i, k in enumerate(keys) for x in (k, f"value-{i}")]
    asked = keys[::-1] + ["missing", keys[5], keys[5], "eu/none", "{eu:1}x"]
    got = pair.run(
        ("MSET", *kv),
        ("MGET", *keys),
        ("MGET", *asked),
        ("MSET", keys[0], "new0", keys[0], "newer0", "eu/1", "x"),
        ("MGET", keys[0], "eu/1", keys[99]),
        ("MGET", "only-missing"),
        ("DBSIZE",),
        e("MSET", "a"),
        e("MSET", "a", "1", "b"),
    )
    assert got[1] == ("list", [("bytes", f"value-{i}".encode()) for i in range(100)])


def test_msetnx_same_tag(pair):
    pair.run(
        ("MSETNX", "{mx}a", "1", "{mx}b", "2"),
        ("MSETNX", "{mx}b", "3", "{mx}c", "4"),
        ("MGET", "{mx}a", "{mx}b", "{mx}c"),
        ("MSETNX", "{mx}c", "5"),
        ("GET", "{mx}c"),
    )


def test_mget_wrongtype_is_nil(pair):
    pair.run(
        ("RPUSH", "list", "x"),
        ("SET", "s", "v"),
        ("MGET", "s", "list", "nope", "s"),
    )

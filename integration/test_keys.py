"""Key commands: expiry, TYPE, OBJECT, DUMP/RESTORE, RENAME/COPY on one tag,
and the split commands EXISTS/DEL/UNLINK/TOUCH over keys on every shard."""

import time

from compare import e


def test_expire_family(pair):
    pair.run(
        ("SET", "k", "v"),
        ("TTL", "k"),
        ("PTTL", "k"),
        ("TTL", "missing"),
        ("PTTL", "missing"),
        ("EXPIRE", "k", "100"),
        ("TTL", "k"),
        ("EXPIRE", "k", "50", "NX"),
        ("EXPIRE", "k", "200", "GT"),
        ("TTL", "k"),
        ("EXPIRE", "k", "300", "LT"),
        ("EXPIRE", "k", "150", "XX"),
        ("TTL", "k"),
        ("EXPIREAT", "k", "4102444800"),
        ("EXPIRETIME", "k"),
        ("PEXPIREAT", "k", "4102444800500"),
        ("PEXPIRETIME", "k"),
        ("EXPIRETIME", "k"),
        ("PERSIST", "k"),
        ("PERSIST", "k"),
        ("TTL", "k"),
        ("EXPIRETIME", "k"),
        ("EXPIRETIME", "missing"),
        ("EXPIRE", "missing", "10"),
        ("SET", "gone", "v"),
        ("EXPIRE", "gone", "0"),
        ("EXISTS", "gone"),
        ("SET", "gone2", "v"),
        ("PEXPIREAT", "gone2", "1000"),
        ("GET", "gone2"),
        e("EXPIRE", "k", "10", "NX", "XX"),
        e("EXPIRE", "k", "abc"),
    )


def test_ttl_ranges(proxy):
    proxy.set("t", "v", ex=100)
    assert 99 <= proxy.ttl("t") <= 100
    assert 98_000 < proxy.pttl("t") <= 100_000
    proxy.pexpire("t", 5000)
    assert 4000 < proxy.pttl("t") <= 5000
    assert proxy.ttl("t") in (4, 5)
    proxy.set("short", "v", px=100)
    time.sleep(0.25)
    assert proxy.get("short") is None
    assert proxy.exists("short") == 0


def test_type_and_object(pair):
    pair.run(
        ("SET", "str", "abc"),
        ("SET", "int", "12345"),
        ("SET", "emb", "x" * 30),
        ("SET", "raw", "x" * 100),
        ("RPUSH", "list", "a"),
        ("SADD", "set", "a"),
        ("SADD", "iset", "1", "2"),
        ("HSET", "hash", "f", "v"),
        ("ZADD", "zset", "1", "a"),
        ("XADD", "stream", "1-1", "f", "v"),
        ("PFADD", "hll", "a"),
        *[("TYPE", k) for k in ["str", "list", "set", "hash", "zset", "stream", "hll", "missing"]],
        *[("OBJECT", "ENCODING", k) for k in
          ["str", "int", "emb", "raw", "list", "set", "iset", "hash", "zset", "stream"]],
        ("OBJECT", "ENCODING", "missing"),
        ("OBJECT", "REFCOUNT", "raw"),
        e("OBJECT", "NOSUCH", "str"),
    )


def test_dump_restore(pair):
    def scenario(side):
        c = side.connect()
        setup = pair.exec(
            c,
            ("RPUSH", "src", "a", "b", "c"),
            ("HSET", "hsrc", "f", "v"),
            ("DUMP", "src"),
            ("DUMP", "hsrc"),
            ("DUMP", "missing"),
        )
        payload, hpayload = setup[2], setup[3]
        return setup + pair.exec(
            c,
            ("RESTORE", "dst", "0", payload),
            ("RESTORE", "dst", "0", payload),
            ("RESTORE", "dst", "0", hpayload, "REPLACE"),
            ("TYPE", "dst"),
            ("HGETALL", "dst"),
            ("RESTORE", "ttl", "4102444800000", payload, "ABSTTL"),
            ("PEXPIRETIME", "ttl"),
            ("LRANGE", "ttl", "0", "-1"),
            ("RESTORE", "bad", "0", b"not a dump payload"),
        )

    got = pair.scenario(scenario)[1]
    assert got[5] == ("bytes", b"OK")
    assert got[6][0] == "err" and "BUSYKEY" in got[6][2]
    assert got[12] == ("list", [("bytes", b"a"), ("bytes", b"b"), ("bytes", b"c")])


def test_rename_copy_same_tag(pair):
    pair.run(
        ("SET", "{r}a", "1"),
        ("RENAME", "{r}a", "{r}b"),
        ("GET", "{r}b"),
        ("EXISTS", "{r}a"),
        e("RENAME", "{r}missing", "{r}c"),
        ("SET", "{r}c", "3"),
        ("RENAMENX", "{r}b", "{r}c"),
        ("RENAMENX", "{r}b", "{r}d"),
        ("COPY", "{r}d", "{r}e"),
        ("COPY", "{r}d", "{r}c"),
        ("COPY", "{r}d", "{r}c", "REPLACE"),
        ("MGET", "{r}b", "{r}c", "{r}d", "{r}e"),
        ("RPUSH", "{r}l", "x", "y"),
        ("EXPIRE", "{r}l", "1000"),
        ("COPY", "{r}l", "{r}l2"),
        ("LRANGE", "{r}l2", "0", "-1"),
        ("TTL", "{r}l2"),
        ("RENAME", "{r}l", "{r}l"),
    )


KEYS = [f"key:{i}" for i in range(60)] + [f"{{eu:{i}}}.x" for i in range(10)] + [f"eu/{i}" for i in range(10)]


def test_exists_del_unlink_touch_across_shards(pair):
    pair.run(
        ("MSET", *[x for k in KEYS for x in (k, k.upper())]),
        ("EXISTS", *KEYS),
        ("EXISTS", "key:1", "key:1", "key:1", "missing", "eu/3", "eu/3"),
        ("EXISTS", "missing"),
        ("TOUCH", *KEYS[:30], "missing", "key:0"),
        ("DEL", *KEYS[:20], "key:0", "missing"),
        ("UNLINK", *KEYS[15:40], "key:39"),
        ("EXISTS", *KEYS),
        ("DEL", *KEYS),
        ("DBSIZE",),
        ("DEL", "missing1", "missing2"),
    )


def test_exists_counts_duplicates(proxy):
    proxy.set("a", "1")
    proxy.set("eu/b", "2")
    assert proxy.exists("a", "a") == 2
    assert proxy.exists("a", "eu/b", "a", "nope", "eu/b") == 4
    assert proxy.delete("a", "a", "eu/b") == 2

"""Hashes, compared with the reference (small hashes: listpack, ordered)."""

from compare import e, u


def test_hash_basics(pair):
    pair.run(
        ("HSET", "h", "f1", "v1", "f2", "v2", "f3", "3"),
        ("HSET", "h", "f1", "v1b"),
        ("HGET", "h", "f1"),
        ("HGET", "h", "nofield"),
        ("HGET", "nokey", "f"),
        ("HMGET", "h", "f1", "nofield", "f3"),
        ("HGETALL", "h"),
        ("HGETALL", "nokey"),
        ("HLEN", "h"),
        ("HEXISTS", "h", "f2"),
        ("HEXISTS", "h", "f9"),
        ("HKEYS", "h"),
        ("HVALS", "h"),
        ("HSTRLEN", "h", "f1"),
        ("HSETNX", "h", "f1", "x"),
        ("HSETNX", "h", "f4", "x"),
        ("HDEL", "h", "f4", "f9"),
        ("HMSET", "h", "f5", "5", "f6", "6"),
        ("HGETALL", "h"),
        ("HSCAN", "h", "0"),
        ("HSCAN", "h", "0", "MATCH", "f[12]"),
        e("HSET", "h", "f1"),
    )


def test_hash_counters(pair):
    pair.run(
        ("HINCRBY", "hc", "n", "5"),
        ("HINCRBY", "hc", "n", "-7"),
        ("HINCRBYFLOAT", "hc", "f", "1.5"),
        ("HINCRBYFLOAT", "hc", "f", "0.1"),
        ("HINCRBYFLOAT", "hc", "f", "-2e2"),
        ("HGETALL", "hc"),
        ("HSET", "hc", "s", "abc"),
        e("HINCRBY", "hc", "s", "1"),
        e("HINCRBYFLOAT", "hc", "s", "1"),
    )


def test_hash_single_field_random_and_wrongtype(pair):
    pair.run(
        ("HSET", "h1", "only", "v"),
        ("HRANDFIELD", "h1"),
        ("HRANDFIELD", "h1", "1", "WITHVALUES"),
        ("SET", "str", "x"),
        e("HGET", "str", "f"),
        e("HSET", "str", "f", "v"),
    )


def test_big_hash_unordered(pair):
    args = []
    for i in range(300):
        args += [f"field{i}", f"value{i}"]
    pair.run(
        ("HSET", "big", *args),
        ("OBJECT", "ENCODING", "big"),
        u("HKEYS", "big"),
        u("HVALS", "big"),
        ("HLEN", "big"),
        ("HMGET", "big", "field0", "field299", "nope"),
    )

"""Streams with explicit IDs, so every reply is deterministic."""

from compare import e


def test_xadd_xrange_xread(pair):
    pair.run(
        ("XADD", "st", "1-1", "f", "v1"),
        ("XADD", "st", "1-2", "f", "v2", "g", "w"),
        ("XADD", "st", "5-0", "f", "v3"),
        e("XADD", "st", "2-0", "f", "late"),
        ("XADD", "st", "NOMKSTREAM", "6-0", "f", "v4"),
        ("XADD", "nostream", "NOMKSTREAM", "1-1", "f", "v"),
        ("XLEN", "st"),
        ("XRANGE", "st", "-", "+"),
        ("XRANGE", "st", "(1-1", "+", "COUNT", "2"),
        ("XREVRANGE", "st", "+", "-", "COUNT", "1"),
        ("XREAD", "COUNT", "10", "STREAMS", "st", "1-2"),
        ("XREAD", "STREAMS", "st", "6-0"),
        ("XREAD", "STREAMS", "nostream", "0"),
        ("XDEL", "st", "1-2", "9-9"),
        ("XTRIM", "st", "MAXLEN", "2"),
        ("XRANGE", "st", "-", "+"),
        ("XSETID", "st", "100-0"),
        ("XADD", "st", "MAXLEN", "=", "2", "101-0", "f", "v"),
        ("XINFO", "STREAM", "st"),
        ("XINFO", "STREAM", "st", "FULL"),
    )


def test_consumer_groups(pair):
    pair.run(
        ("XADD", "gs", "1-0", "a", "1"),
        ("XADD", "gs", "2-0", "a", "2"),
        ("XADD", "gs", "3-0", "a", "3"),
        ("XGROUP", "CREATE", "gs", "g1", "0"),
        e("XGROUP", "CREATE", "gs", "g1", "0"),
        ("XGROUP", "CREATE", "new", "g1", "$", "MKSTREAM"),
        ("XREADGROUP", "GROUP", "g1", "alice", "COUNT", "2", "STREAMS", "gs", ">"),
        ("XREADGROUP", "GROUP", "g1", "bob", "STREAMS", "gs", ">"),
        ("XREADGROUP", "GROUP", "g1", "bob", "STREAMS", "gs", ">"),
        ("XREADGROUP", "GROUP", "g1", "alice", "STREAMS", "gs", "0"),
        ("XPENDING", "gs", "g1"),
        ("XACK", "gs", "g1", "1-0", "9-0"),
        ("XPENDING", "gs", "g1"),
        ("XINFO", "GROUPS", "gs"),
        ("XGROUP", "CREATECONSUMER", "gs", "g1", "carol"),
        ("XGROUP", "DELCONSUMER", "gs", "g1", "carol"),
        ("XGROUP", "SETID", "gs", "g1", "0"),
        ("XINFO", "GROUPS", "gs"),
        ("XGROUP", "DESTROY", "gs", "g1"),
        ("XINFO", "GROUPS", "gs"),
        e("XREADGROUP", "GROUP", "nogroup", "x", "STREAMS", "gs", ">"),
    )

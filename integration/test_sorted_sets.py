"""Sorted sets: ZADD options, ZRANGE variants, stores on one tag, scores."""

from compare import e
from rawresp import RawConn


def test_zadd_options(pair):
    pair.run(
        ("ZADD", "z", "1", "a", "2", "b", "3", "c"),
        ("ZADD", "z", "NX", "10", "a", "4", "d"),
        ("ZADD", "z", "XX", "CH", "5", "a", "6", "e"),
        ("ZADD", "z", "GT", "CH", "1", "b", "9", "c"),
        ("ZADD", "z", "LT", "CH", "0", "b", "100", "c"),
        ("ZADD", "z", "INCR", "2.5", "a"),
        ("ZADD", "z", "NX", "INCR", "1", "a"),
        ("ZINCRBY", "z", "-1.25", "b"),
        ("ZRANGE", "z", "0", "-1", "WITHSCORES"),
        ("ZSCORE", "z", "a"),
        ("ZSCORE", "z", "nope"),
        ("ZMSCORE", "z", "a", "nope", "b"),
        ("ZCARD", "z"),
        e("ZADD", "z", "NX", "XX", "1", "a"),
        e("ZADD", "z", "GT", "LT", "1", "a"),
        e("ZADD", "z", "notafloat", "a"),
    )


def test_zrange_variants(pair):
    pair.run(
        ("ZADD", "r", "1", "one", "2", "two", "3", "three", "4", "four", "5", "five"),
        ("ZADD", "lex", "0", "a", "0", "b", "0", "c", "0", "d", "0", "e"),
        ("ZRANGE", "r", "0", "2"),
        ("ZRANGE", "r", "0", "-1", "REV", "WITHSCORES"),
        ("ZRANGE", "r", "2", "(5", "BYSCORE"),
        ("ZRANGE", "r", "-inf", "+inf", "BYSCORE", "LIMIT", "1", "2", "WITHSCORES"),
        ("ZRANGE", "r", "+inf", "(1", "BYSCORE", "REV", "LIMIT", "0", "3"),
        ("ZRANGE", "lex", "[b", "(e", "BYLEX"),
        ("ZRANGE", "lex", "+", "-", "BYLEX", "REV", "LIMIT", "1", "2"),
        ("ZRANGEBYSCORE", "r", "(1", "4", "WITHSCORES"),
        ("ZREVRANGEBYSCORE", "r", "4", "2"),
        ("ZREVRANGE", "r", "0", "1", "WITHSCORES"),
        ("ZRANGEBYLEX", "lex", "-", "[c"),
        ("ZLEXCOUNT", "lex", "[b", "+"),
        ("ZCOUNT", "r", "2", "+inf"),
        ("ZRANK", "r", "three"),
        ("ZREVRANK", "r", "three"),
        ("ZRANK", "r", "nope"),
        ("ZREM", "r", "one", "nope"),
        ("ZREMRANGEBYSCORE", "r", "5", "5"),
        ("ZREMRANGEBYRANK", "r", "0", "0"),
        ("ZREMRANGEBYLEX", "lex", "[a", "[b"),
        ("ZRANGE", "r", "0", "-1", "WITHSCORES"),
        ("ZPOPMIN", "r"),
        ("ZPOPMAX", "r", "5"),
        ("ZPOPMIN", "nokey"),
        ("ZRANDMEMBER", "nokey"),
        ("ZSCAN", "lex", "0"),
        e("ZRANGE", "r", "0", "1", "LIMIT", "0", "1"),
    )


def test_store_commands_same_tag(pair):
    pair.run(
        ("ZADD", "{zs}a", "1", "x", "2", "y", "3", "z"),
        ("ZADD", "{zs}b", "10", "y", "20", "z", "30", "w"),
        ("ZUNIONSTORE", "{zs}u", "2", "{zs}a", "{zs}b"),
        ("ZRANGE", "{zs}u", "0", "-1", "WITHSCORES"),
        ("ZUNIONSTORE", "{zs}u2", "2", "{zs}a", "{zs}b", "WEIGHTS", "2", "0.5", "AGGREGATE", "MAX"),
        ("ZRANGE", "{zs}u2", "0", "-1", "WITHSCORES"),
        ("ZINTERSTORE", "{zs}i", "2", "{zs}a", "{zs}b", "AGGREGATE", "MIN"),
        ("ZRANGE", "{zs}i", "0", "-1", "WITHSCORES"),
        ("ZDIFFSTORE", "{zs}d", "2", "{zs}a", "{zs}b"),
        ("ZRANGE", "{zs}d", "0", "-1", "WITHSCORES"),
        ("ZUNION", "2", "{zs}a", "{zs}b", "WITHSCORES"),
        ("ZINTER", "2", "{zs}a", "{zs}b"),
        ("ZINTERCARD", "2", "{zs}a", "{zs}b"),
        ("ZDIFF", "2", "{zs}b", "{zs}a", "WITHSCORES"),
        ("ZRANGESTORE", "{zs}r", "{zs}b", "0", "1", "REV"),
        ("ZRANGE", "{zs}r", "0", "-1", "WITHSCORES"),
        ("ZMPOP", "2", "{zs}none", "{zs}b", "MAX", "COUNT", "2"),
    )


def test_score_formatting(pair):
    pair.run(
        ("ZADD", "f", "0.1", "a", "1.5", "b", "1e20", "c", "-0.0001", "d", "3", "e", "inf", "g", "-inf", "h"),
        ("ZINCRBY", "f", "0.2", "a"),
        ("ZSCORE", "f", "a"),
        ("ZSCORE", "f", "b"),
        ("ZSCORE", "f", "c"),
        ("ZSCORE", "f", "d"),
        ("ZSCORE", "f", "e"),
        ("ZSCORE", "f", "g"),
        ("ZSCORE", "f", "h"),
        ("ZRANGE", "f", "0", "-1", "WITHSCORES"),
        ("ZPOPMIN", "f", "2"),
    )


def test_resp3_double_bytes(deployment):
    """RESP3 scores are doubles (`,`): the exact bytes match the reference."""
    out = {}
    for name, port in [("proxy", deployment.port), ("reference", deployment.reference.port)]:
        host = deployment.host if name == "proxy" else "127.0.0.1"
        with RawConn(host, port) as c:
            c.command("HELLO", "3")
            frames = [
                c.command("ZADD", "d", "0.1", "a", "1.5", "b", "3", "c", "1e300", "e"),
                c.command("ZINCRBY", "d", "0.2", "a"),
                c.command("ZSCORE", "d", "a"),
                c.command("ZSCORE", "d", "b"),
                c.command("ZSCORE", "d", "c"),
                c.command("ZSCORE", "d", "e"),
                c.command("ZSCORE", "d", "nope"),
                c.command("ZRANGE", "d", "0", "-1", "WITHSCORES"),
                c.command("ZMSCORE", "d", "a", "nope"),
            ]
            c.command("DEL", "d")
        out[name] = frames
    assert out["reference"][2] == b",0.30000000000000004\r\n"
    assert out["reference"][6] == b"_\r\n"
    assert out["proxy"] == out["reference"]

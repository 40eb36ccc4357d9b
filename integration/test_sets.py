"""Sets: members compared sorted (hashtable order differs between servers)."""

from compare import e, u


def test_set_basics(pair):
    pair.run(
        ("SADD", "s", "a", "b", "c", "a"),
        ("SADD", "s", "d"),
        u("SMEMBERS", "s"),
        ("SCARD", "s"),
        ("SISMEMBER", "s", "a"),
        ("SISMEMBER", "s", "z"),
        ("SMISMEMBER", "s", "a", "z", "c"),
        ("SREM", "s", "a", "z"),
        u("SMEMBERS", "s"),
        u("SMEMBERS", "nokey"),
        ("SADD", "single", "only"),
        ("SPOP", "single"),
        ("SRANDMEMBER", "nokey"),
        ("SADD", "ints", "3", "1", "2"),
        ("SMEMBERS", "ints"),
        ("OBJECT", "ENCODING", "ints"),
        ("SSCAN", "ints", "0"),
        ("SET", "str", "x"),
        e("SADD", "str", "a"),
    )


def test_set_algebra_same_tag(pair):
    pair.run(
        ("SADD", "{st}a", "1", "2", "3", "x", "y"),
        ("SADD", "{st}b", "2", "3", "4", "y", "z"),
        ("SADD", "{st}c", "3", "y", "q"),
        u("SINTER", "{st}a", "{st}b"),
        u("SINTER", "{st}a", "{st}b", "{st}c"),
        ("SINTERCARD", "2", "{st}a", "{st}b"),
        ("SINTERCARD", "2", "{st}a", "{st}b", "LIMIT", "1"),
        u("SUNION", "{st}a", "{st}b"),
        u("SDIFF", "{st}a", "{st}b", "{st}c"),
        ("SINTERSTORE", "{st}i", "{st}a", "{st}b"),
        ("SUNIONSTORE", "{st}u", "{st}a", "{st}b", "{st}c"),
        ("SDIFFSTORE", "{st}d", "{st}a", "{st}b"),
        u("SMEMBERS", "{st}i"),
        u("SMEMBERS", "{st}u"),
        u("SMEMBERS", "{st}d"),
        ("SMOVE", "{st}a", "{st}b", "x"),
        ("SMOVE", "{st}a", "{st}b", "nope"),
        ("SISMEMBER", "{st}b", "x"),
        u("SINTER", "{st}a", "{st}missing"),
    )

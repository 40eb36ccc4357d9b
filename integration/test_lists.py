"""Lists, compared with the reference; two-key commands on one hash tag."""

from compare import e


def test_push_pop_range(pair):
    pair.run(
        ("RPUSH", "l", "a", "b", "c"),
        ("LPUSH", "l", "z", "y"),
        ("LPUSHX", "nokey", "x"),
        ("RPUSHX", "l", "d"),
        ("LRANGE", "l", "0", "-1"),
        ("LRANGE", "l", "1", "2"),
        ("LRANGE", "l", "10", "20"),
        ("LLEN", "l"),
        ("LINDEX", "l", "-1"),
        ("LINDEX", "l", "100"),
        ("LPOP", "l"),
        ("RPOP", "l", "2"),
        ("LPOP", "nokey"),
        ("LPOP", "nokey", "2"),
        ("LRANGE", "l", "0", "-1"),
        ("LPOP", "l", "10"),
        ("EXISTS", "l"),
    )


def test_modify(pair):
    pair.run(
        ("RPUSH", "m", "a", "b", "a", "c", "a"),
        ("LINSERT", "m", "BEFORE", "b", "x"),
        ("LINSERT", "m", "AFTER", "nope", "x"),
        ("LSET", "m", "0", "A"),
        e("LSET", "m", "100", "A"),
        ("LREM", "m", "-1", "a"),
        ("LRANGE", "m", "0", "-1"),
        ("LPOS", "m", "a"),
        ("LPOS", "m", "x", "RANK", "1", "COUNT", "0"),
        ("LPOS", "m", "nope"),
        ("LTRIM", "m", "1", "-2"),
        ("LRANGE", "m", "0", "-1"),
        ("SET", "s", "x"),
        e("LPUSH", "s", "a"),
    )


def test_two_key_same_tag(pair):
    pair.run(
        ("RPUSH", "{l}src", "1", "2", "3", "4"),
        ("LMOVE", "{l}src", "{l}dst", "LEFT", "RIGHT"),
        ("RPOPLPUSH", "{l}src", "{l}dst"),
        ("LMOVE", "{l}src", "{l}src", "RIGHT", "LEFT"),
        ("LRANGE", "{l}src", "0", "-1"),
        ("LRANGE", "{l}dst", "0", "-1"),
        ("LMPOP", "2", "{l}none", "{l}dst", "RIGHT", "COUNT", "5"),
        ("LMPOP", "1", "{l}none", "LEFT"),
        ("LMOVE", "{l}none", "{l}dst", "LEFT", "LEFT"),
    )

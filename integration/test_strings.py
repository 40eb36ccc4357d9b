"""Strings: every reply compared with the reference, RESP2/3, plain/pipelined."""

from compare import e


def test_set_options(pair):
    pair.run(
        ("SET", "s1", "v1"),
        ("GET", "s1"),
        ("SET", "s1", "v2", "NX"),
        ("SET", "s1", "v3", "XX"),
        ("SET", "s2", "v", "XX"),
        ("SET", "s2", "v", "NX"),
        ("SET", "s1", "v4", "GET"),
        ("SET", "s3", "x", "EX", "100"),
        ("TTL", "s3"),
        ("SET", "s3", "y", "KEEPTTL"),
        ("TTL", "s3"),
        ("SET", "s4", "x", "PX", "100000", "GET"),
        ("SET", "s5", "x", "EXAT", "4102444800"),
        ("EXPIRETIME", "s5"),
        ("SET", "s6", "x", "PXAT", "4102444800123"),
        ("PEXPIRETIME", "s6"),
        ("SET", "s1", "v5", "NX", "GET"),
        ("GET", "s1"),
        e("SET", "s1", "v", "EX", "0"),
        e("SET", "s1", "v", "EX", "abc"),
        e("SET", "s1", "v", "NX", "XX"),
        ("GET", "nosuchkey"),
    )


def test_getex_getdel(pair):
    pair.run(
        ("SET", "g1", "hello"),
        ("GETEX", "g1"),
        ("TTL", "g1"),
        ("GETEX", "g1", "EX", "200"),
        ("TTL", "g1"),
        ("GETEX", "g1", "PERSIST"),
        ("TTL", "g1"),
        ("GETEX", "g1", "EXAT", "4102444800"),
        ("EXPIRETIME", "g1"),
        ("GETEX", "missing"),
        ("GETDEL", "g1"),
        ("GETDEL", "g1"),
        ("EXISTS", "g1"),
        ("RPUSH", "l1", "a"),
        e("GETDEL", "l1"),
        e("GETEX", "l1"),
    )


def test_counters(pair):
    pair.run(
        ("INCR", "c1"),
        ("INCRBY", "c1", "41"),
        ("DECR", "c1"),
        ("DECRBY", "c1", "-10"),
        ("GET", "c1"),
        ("INCRBYFLOAT", "f1", "0.1"),
        ("INCRBYFLOAT", "f1", "0.2"),
        ("INCRBYFLOAT", "f1", "-5e3"),
        ("INCRBYFLOAT", "f1", "1.5e-7"),
        ("GET", "f1"),
        ("SET", "c2", "9223372036854775807"),
        e("INCR", "c2"),
        ("SET", "c3", "notanumber"),
        e("INCR", "c3"),
        e("INCRBYFLOAT", "c3", "1"),
        e("INCRBY", "c1", "1.5"),
    )


def test_append_ranges(pair):
    pair.run(
        ("APPEND", "a1", "Hello"),
        ("APPEND", "a1", " World"),
        ("STRLEN", "a1"),
        ("STRLEN", "nosuch"),
        ("GETRANGE", "a1", "0", "4"),
        ("GETRANGE", "a1", "-5", "-1"),
        ("GETRANGE", "a1", "100", "200"),
        ("SETRANGE", "a1", "6", "Redis"),
        ("GET", "a1"),
        ("SETRANGE", "a2", "5", "pad"),
        ("GET", "a2"),
        ("SUBSTR", "a1", "0", "2"),
        e("SETRANGE", "a1", "-1", "x"),
    )


def test_setnx_msetnx_strlen(pair):
    pair.run(
        ("SETNX", "n1", "a"),
        ("SETNX", "n1", "b"),
        ("GET", "n1"),
        ("SETEX", "n2", "100", "x"),
        ("TTL", "n2"),
        ("PSETEX", "n3", "100000", "y"),
        ("GET", "n3"),
        e("SETEX", "n2", "-1", "x"),
        ("STRLEN", "n1"),
        ("GETSET", "n1", "c"),
        ("GET", "n1"),
    )


def test_lcs_same_tag(pair):
    pair.run(
        ("MSET", "{lcs}a", "ohmytext", "{lcs}b", "mynewtext"),
        ("LCS", "{lcs}a", "{lcs}b"),
        ("LCS", "{lcs}a", "{lcs}b", "LEN"),
        ("LCS", "{lcs}a", "{lcs}b", "IDX"),
        ("LCS", "{lcs}a", "{lcs}b", "IDX", "MINMATCHLEN", "4", "WITHMATCHLEN"),
        ("LCS", "{lcs}a", "{lcs}nosuch"),
    )


def test_large_and_binary_values(pair):
    big = b"x" * 300_000 + b"\x00\r\n\xff"
    pair.run(
        ("SET", b"bin\x00key\r\n", big),
        ("GET", b"bin\x00key\r\n"),
        ("STRLEN", b"bin\x00key\r\n"),
        ("SET", "utf8", "h\u00e9llo \u2603".encode()),
        ("GET", "utf8"),
        ("SET", "empty", ""),
        ("GET", "empty"),
    )

"""Bitmaps: SETBIT/GETBIT/BITCOUNT/BITPOS/BITFIELD, BITOP on one hash tag."""

from compare import e


def test_setbit_getbit_bitcount_bitpos(pair):
    pair.run(
        ("SETBIT", "bm", "7", "1"),
        ("SETBIT", "bm", "7", "0"),
        ("SETBIT", "bm", "100", "1"),
        ("SETBIT", "bm", "3", "1"),
        ("GETBIT", "bm", "100"),
        ("GETBIT", "bm", "99"),
        ("GETBIT", "nosuch", "5"),
        ("BITCOUNT", "bm"),
        ("BITCOUNT", "bm", "0", "0"),
        ("BITCOUNT", "bm", "0", "50", "BIT"),
        ("BITCOUNT", "bm", "-1", "-1", "BYTE"),
        ("BITPOS", "bm", "1"),
        ("BITPOS", "bm", "0"),
        ("BITPOS", "bm", "1", "1"),
        ("BITPOS", "bm", "1", "5", "200", "BIT"),
        ("BITPOS", "nosuch", "0"),
        ("GET", "bm"),
        e("SETBIT", "bm", "-1", "1"),
        e("SETBIT", "bm", "1", "2"),
    )


def test_bitfield(pair):
    pair.run(
        ("BITFIELD", "bf", "SET", "i8", "0", "100", "GET", "u4", "0", "INCRBY", "i8", "0", "50"),
        ("BITFIELD", "bf", "OVERFLOW", "WRAP", "INCRBY", "u8", "8", "300"),
        ("BITFIELD", "bf", "OVERFLOW", "SAT", "INCRBY", "i8", "16", "-200"),
        ("BITFIELD", "bf", "OVERFLOW", "FAIL", "INCRBY", "u2", "30", "7"),
        ("BITFIELD", "bf", "SET", "u16", "#2", "65535", "GET", "u16", "#2"),
        ("BITFIELD_RO", "bf", "GET", "i8", "0", "GET", "u8", "8"),
        ("BITFIELD", "bf"),
        ("GET", "bf"),
        e("BITFIELD", "bf", "GET", "x8", "0"),
    )


def test_bitop_same_tag(pair):
    pair.run(
        ("SET", "{bo}a", "foobar"),
        ("SET", "{bo}b", "abcdef"),
        ("BITOP", "AND", "{bo}and", "{bo}a", "{bo}b"),
        ("GET", "{bo}and"),
        ("BITOP", "OR", "{bo}or", "{bo}a", "{bo}b"),
        ("GET", "{bo}or"),
        ("BITOP", "XOR", "{bo}xor", "{bo}a", "{bo}b", "{bo}missing"),
        ("GET", "{bo}xor"),
        ("BITOP", "NOT", "{bo}not", "{bo}a"),
        ("GET", "{bo}not"),
        ("BITOP", "AND", "{bo}empty", "{bo}missing"),
        ("EXISTS", "{bo}empty"),
        e("BITOP", "NOT", "{bo}x", "{bo}a", "{bo}b"),
    )

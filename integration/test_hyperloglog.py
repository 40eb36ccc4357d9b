"""HyperLogLog: PFADD/PFCOUNT/PFMERGE with keys on one hash tag."""


def test_hyperloglog(pair):
    a = [f"m{i}" for i in range(200)]
    b = [f"m{i}" for i in range(100, 400)]
    pair.run(
        ("PFADD", "{hll}a", *a),
        ("PFADD", "{hll}a", "m1"),
        ("PFADD", "{hll}b", *b),
        ("PFCOUNT", "{hll}a"),
        ("PFCOUNT", "{hll}b"),
        ("PFCOUNT", "{hll}a", "{hll}b"),
        ("PFMERGE", "{hll}m", "{hll}a", "{hll}b"),
        ("PFCOUNT", "{hll}m"),
        ("PFADD", "{hll}empty"),
        ("PFCOUNT", "{hll}empty"),
        ("PFCOUNT", "{hll}missing"),
        ("GET", "{hll}a"),
    )

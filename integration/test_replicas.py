"""read_policy primary: reads go to primaries, never to the replicas."""

import time


def _calls(server, command):
    c = server.client()
    try:
        stats = c.info("commandstats")
    finally:
        c.close()
    return stats.get(f"cmdstat_{command}", {}).get("calls", 0)


def test_reads_served_by_primaries(deployment, harness_only, proxy):
    before_p = sum(_calls(s.primary, "get") for s in deployment.shards)
    before_r = sum(_calls(s.replica, "get") for s in deployment.shards)
    keys = [f"rd:{i}" for i in range(40)] + [f"eu/rd:{i}" for i in range(10)]
    for k in keys:
        proxy.set(k, "v")
    time.sleep(0.1)
    for k in keys:
        assert proxy.get(k) == "v"
    after_p = sum(_calls(s.primary, "get") for s in deployment.shards)
    after_r = sum(_calls(s.replica, "get") for s in deployment.shards)
    assert after_p - before_p == len(keys)
    assert after_r == before_r


def test_writes_replicate(deployment, harness_only, proxy):
    proxy.set("repl:k", "v1")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = []
        for s in deployment.shards:
            c = s.replica.client(decode_responses=True)
            try:
                found.append(c.get("repl:k"))
            finally:
                c.close()
        if "v1" in found:
            break
        time.sleep(0.05)
    assert found.count("v1") == 1, found

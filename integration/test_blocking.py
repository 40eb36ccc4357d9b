"""Blocking commands: time-outs, wake-ups, and other clients never wait."""

import threading
import time

from compare import raw_client


def test_blocking_with_data_and_timeout(pair):
    pair.run(
        ("RPUSH", "{b}l", "a", "b"),
        ("BLPOP", "{b}none", "{b}l", "1"),
        ("BRPOP", "{b}l", "1"),
        ("BLPOP", "{b}l", "0.2"),
        ("ZADD", "{b}z", "1", "x", "2", "y"),
        ("BZPOPMIN", "{b}z", "1"),
        ("BZPOPMAX", "{b}z", "1"),
        ("BZPOPMIN", "{b}z", "0.1"),
        ("RPUSH", "{b}src", "v"),
        ("BLMOVE", "{b}src", "{b}dst", "LEFT", "RIGHT", "1"),
        ("BRPOPLPUSH", "{b}src", "{b}dst", "0.1"),
        ("BLMPOP", "0.1", "2", "{b}none", "{b}dst", "LEFT", "COUNT", "3"),
        ("XADD", "{b}s", "1-1", "f", "v"),
        ("XREAD", "BLOCK", "100", "STREAMS", "{b}s", "0"),
        ("XREAD", "BLOCK", "100", "STREAMS", "{b}s", "$"),
    )


def _in_thread(fn):
    box = {}

    def run():
        start = time.monotonic()
        try:
            box["result"] = fn()
        except Exception as ex:  # surfaced by the assertion below
            box["error"] = ex
        box["elapsed"] = time.monotonic() - start

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_blpop_timeout_returns_nil(deployment, protocol):
    c = raw_client(deployment.host, deployment.port, protocol)
    try:
        start = time.monotonic()
        assert c.execute_command("BLPOP", "never", "0.5") is None
        elapsed = time.monotonic() - start
        assert 0.4 <= elapsed < 2.0, elapsed
        assert c.execute_command("PING") in (b"PONG", "PONG")  # connection still usable
    finally:
        c.close()


def test_blpop_woken_by_push(deployment, protocol):
    blocked = raw_client(deployment.host, deployment.port, protocol)
    pusher = raw_client(deployment.host, deployment.port, protocol)
    try:
        t, box = _in_thread(lambda: blocked.execute_command("BLPOP", "{wake}a", "{wake}b", "5"))
        time.sleep(0.3)
        assert pusher.execute_command("RPUSH", "{wake}a", "v1", "v2") == 2
        t.join(6)
        assert "error" not in box, box
        assert box["result"] == [b"{wake}a", b"v1"]
        assert box["elapsed"] < 3
        assert pusher.execute_command("LRANGE", "{wake}a", "0", "-1") == [b"v2"]
    finally:
        blocked.close()
        pusher.close()


def test_xread_block_woken_by_xadd(deployment, protocol):
    reader = raw_client(deployment.host, deployment.port, protocol)
    writer = raw_client(deployment.host, deployment.port, protocol)
    try:
        writer.execute_command("XADD", "bs", "1-0", "f", "old")
        t, box = _in_thread(lambda: reader.execute_command("XREAD", "BLOCK", "5000", "STREAMS", "bs", "$"))
        time.sleep(0.3)
        writer.execute_command("XADD", "bs", "2-0", "f", "new")
        t.join(6)
        assert "error" not in box, box
        expected_entries = [[b"2-0", [b"f", b"new"]]]
        if protocol == 3:
            assert box["result"] == {b"bs": expected_entries}
        else:
            assert box["result"] == [[b"bs", expected_entries]]
    finally:
        reader.close()
        writer.close()


def test_others_not_blocked(deployment, protocol):
    """While one client blocks for 2 s, every other client is answered at once."""
    blocked = raw_client(deployment.host, deployment.port, protocol)
    others = [raw_client(deployment.host, deployment.port, protocol) for _ in range(3)]
    try:
        t, box = _in_thread(lambda: blocked.execute_command("BLPOP", "idle", "2"))
        time.sleep(0.2)
        worst = 0.0
        for i in range(20):
            for j, c in enumerate(others):
                start = time.monotonic()
                assert c.execute_command("SET", f"o{j}:{i}", "v") == b"OK"
                assert c.execute_command("GET", f"o{j}:{i}") == b"v"
                assert c.execute_command("PING") == b"PONG"
                worst = max(worst, time.monotonic() - start)
        assert worst < 0.5, f"a client waited {worst:.3f}s while another was blocked"
        assert box.get("elapsed") is None, "BLPOP returned before its timeout"
        t.join(4)
        assert "error" not in box, box
        assert box["result"] is None
        assert 1.8 <= box["elapsed"] < 3.5
    finally:
        blocked.close()
        for c in others:
            c.close()

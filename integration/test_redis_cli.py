"""redis-cli against the proxy prints what it prints against Redis."""

import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed")

SETUP = [
    ["SET", "cli:s", "hello world"],
    ["RPUSH", "cli:l", "a", "b", "c"],
    ["HSET", "cli:h", "f1", "v1", "f2", "v2"],
    ["ZADD", "cli:z", "1.5", "m1", "2", "m2"],
]
QUERIES = [
    ["GET", "cli:s"],
    ["GET", "cli:missing"],
    ["INCR", "cli:n"],
    ["LRANGE", "cli:l", "0", "-1"],
    ["HGETALL", "cli:h"],
    ["ZRANGE", "cli:z", "0", "-1", "WITHSCORES"],
    ["ZSCORE", "cli:z", "m1"],
    ["MGET", "cli:s", "cli:missing", "cli:n"],
    ["EXISTS", "cli:s", "cli:l", "cli:nope"],
    ["PING"],
    ["ECHO", "a b"],
    ["NOSUCHCOMMAND", "x"],
    ["GET"],
    ["TYPE", "cli:h"],
    ["DEL", "cli:s", "cli:l"],
]


def cli(port, *args, stdin=None, extra=()):
    r = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *extra, *args],
        input=stdin,
        capture_output=True,
        timeout=10,
    )
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize("extra", [(), ("--no-raw",), ("-3", "--no-raw"), ("--raw",)],
                         ids=["default", "no-raw", "resp3", "raw"])
def test_cli_commands(deployment, extra):
    out = {}
    for name, port in [("proxy", deployment.port), ("reference", deployment.reference.port)]:
        results = []
        for cmd in SETUP + QUERIES:
            results.append(cli(port, *cmd, extra=extra))
        out[name] = results
    for cmd, got, want in zip(SETUP + QUERIES, out["proxy"], out["reference"]):
        assert got == want, f"{cmd}: proxy {got!r} != reference {want!r}"
    # Sanity: the reference really answered.
    assert b"hello world" in out["reference"][len(SETUP)][1]


def test_cli_stdin_batch(deployment):
    script = "".join(" ".join(c) + "\n" for c in SETUP + QUERIES).encode()
    script = script.replace(b"hello world", b'"hello world"').replace(b"ECHO a b", b'ECHO "a b"')
    got = cli(deployment.port, stdin=script)
    want = cli(deployment.reference.port, stdin=script)
    assert got == want
    assert b"hello world" in want[1] and b"ERR unknown command" in want[1]

"""Fixtures of the end-to-end suite.

* `deployment` (session, one per xdist worker): the proxy (started by the
  harness from `SHARDGATE_BIN`, or the server at `SHARDGATE_PROXY_ADDR`) and a
  plain reference redis-server.
* `pair`: a `compare.Comparer`, parametrized over RESP2/RESP3 x plain/pipelined.
* `proxy`, `ref`: decoded redis-py clients (RESP2) for direct assertions.
* `proxy_only`: skips unless the target is shardgate (INFO has `# Proxy`).
* `harness_only`: skips unless this harness started the proxy (metrics, shards).

Every test starts from an empty keyspace: FLUSHALL on both sides.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).parent))

from compare import Comparer, Side  # noqa: E402
from harness import Deployment, HarnessError  # noqa: E402

MODES = [(2, False), (2, True), (3, False), (3, True)]
MODE_IDS = ["resp2", "resp2-pipe", "resp3", "resp3-pipe"]


@pytest.fixture(scope="session")
def deployment():
    override = os.environ.get("SHARDGATE_PROXY_ADDR")
    proxy_bin = os.environ.get("SHARDGATE_BIN")
    if not override and not proxy_bin:
        pytest.skip(
            "set SHARDGATE_BIN=/path/to/shardgate (harness starts shards + proxy) "
            "or SHARDGATE_PROXY_ADDR=host:port (test an already running server)"
        )
    if proxy_bin and not override and not os.access(proxy_bin, os.X_OK):
        pytest.fail(f"SHARDGATE_BIN={proxy_bin} is not an executable file", pytrace=False)
    try:
        d = Deployment.start(proxy_bin, override)
    except HarnessError as ex:
        pytest.fail(str(ex), pytrace=False)
    yield d
    d.stop()


@pytest.fixture(autouse=True)
def _flush(request, deployment):
    """Empty keyspace on both sides before every test."""
    for host, port in [(deployment.host, deployment.port), ("127.0.0.1", deployment.reference.port)]:
        c = redis.Redis(host=host, port=port, socket_timeout=10)
        try:
            assert c.flushall() is True
        finally:
            c.close()
    yield


@pytest.fixture(params=MODES, ids=MODE_IDS)
def pair(request, deployment):
    protocol, pipelined = request.param
    cmp = Comparer(
        Side("proxy", deployment.host, deployment.port, protocol),
        Side("reference", "127.0.0.1", deployment.reference.port, protocol),
        protocol,
        pipelined,
    )
    yield cmp
    cmp.close()


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def protocol(request):
    return request.param


def _client(host, port, **kw):
    kw.setdefault("decode_responses", True)
    kw.setdefault("socket_timeout", 15)
    return redis.Redis(host=host, port=port, **kw)


@pytest.fixture
def proxy(deployment):
    c = _client(deployment.host, deployment.port)
    yield c
    c.close()


@pytest.fixture
def ref(deployment):
    c = _client("127.0.0.1", deployment.reference.port)
    yield c
    c.close()


@pytest.fixture
def connect_proxy(deployment):
    """Factory of extra decoded clients to the proxy, closed after the test."""
    made = []

    def make(**kw):
        c = _client(deployment.host, deployment.port, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def proxy_only(deployment):
    if not deployment.is_proxy:
        pytest.skip("proxy-only assertion; the target is a plain Redis")


@pytest.fixture
def harness_only(deployment):
    if not deployment.started_proxy:
        pytest.skip("needs the proxy started by this harness (SHARDGATE_BIN)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.when in ("setup", "call"):
        d = item.funcargs.get("deployment") if hasattr(item, "funcargs") else None
        if d is not None and d.proxy_stderr is not None:
            rep.sections.append(("shardgate stderr (tail)", d.proxy_log_tail()))

"""The Prometheus endpoint of a proxy started by this harness."""

import re
import urllib.request


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200
        assert r.headers.get("Content-Type", "").startswith("text/plain")
        return r.read().decode()


def test_metrics_after_commands(deployment, harness_only, proxy):
    for i in range(20):
        proxy.set(f"m:{i}", "v")
        proxy.get(f"m:{i}")
    proxy.mget([f"m:{i}" for i in range(20)])
    try:
        proxy.execute_command("NOSUCH")
    except Exception:
        pass
    text = scrape(deployment.metrics_url)
    assert re.search(r"^# TYPE shardgate_commands_total counter$", text, re.M), text[:2000]
    assert "# TYPE shardgate_command_duration_seconds histogram" in text
    counts = {}
    for m in re.finditer(r'^shardgate_commands_total\{([^}]*)\} (\d+(?:\.\d+)?)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = (labels.get("command", "").lower(), labels.get("outcome"))
        counts[key] = counts.get(key, 0) + float(m.group(2))
    assert counts.get(("get", "ok"), 0) >= 20, counts
    assert counts.get(("set", "ok"), 0) >= 20, counts
    assert counts.get(("mget", "ok"), 0) >= 1, counts
    for name in ["shardgate_client_connections", "shardgate_backend_request_duration_seconds"]:
        assert f"# TYPE {name} " in text, name


def test_metrics_client_connections(deployment, harness_only, connect_proxy):
    clients = [connect_proxy() for _ in range(3)]
    for c in clients:
        assert c.ping() is True
    text = scrape(deployment.metrics_url)
    m = re.search(r"^shardgate_client_connections(?:\{\})? (\d+)", text, re.M)
    assert m and int(m.group(1)) >= 3, text[:2000]

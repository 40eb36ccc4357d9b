"""What the proxy says about itself, read by redis-py's own parsers:
INFO (parsed into a dict), SLOWLOG GET (parse_slowlog_get), MEMORY STATS
(parse_memory_stats), and the metrics added with them."""

import re
import time
import urllib.request

BUSY = "local i = 0 while i < 20000000 do i = i + 1 end return 1"


def test_info_is_parsed_by_redis_py(deployment, proxy_only, proxy):
    for i in range(5):
        proxy.set(f"o:{i}", "v")
    info = proxy.info()
    for name in ("connected_clients", "blocked_clients", "used_memory",
                 "total_commands_processed", "instantaneous_ops_per_sec",
                 "total_connections_received", "used_cpu_user"):
        assert isinstance(info[name], (int, float)), (name, info.get(name))
    assert info["db0"]["keys"] == 5, info.get("db0")
    assert info["role"] == "master"
    cmd = proxy.info("commandstats")
    assert cmd["cmdstat_set"]["calls"] >= 5, cmd
    both = proxy.execute_command("INFO", "cpu", "clients")
    assert "used_cpu_sys" in both and "blocked_clients" in both


def test_slowlog_is_parsed_by_redis_py(deployment, proxy_only, connect_proxy):
    c = connect_proxy()
    c.client_setname("slowpy")
    c.slowlog_reset()
    assert c.eval(BUSY, 1, "o:busy") == 1
    entries = c.slowlog_get()
    assert len(entries) >= 1, entries
    # redis-py leaves some fields as bytes (as it does against Redis).
    e = {k: v.decode() if isinstance(v, bytes) else v for k, v in entries[0].items()}
    assert e["command"].startswith("EVAL local i = 0"), e
    assert e["duration"] >= 10000, e
    assert e["client_address"].startswith("127.0.0.1:"), e
    assert e["client_name"] == "slowpy", e
    assert c.slowlog_len() >= 1
    # The raw shape: Redis' six elements per entry.
    raw = c.execute_command("SLOWLOG", "GET", "1")
    assert all(len(entry) == 6 for entry in raw), raw
    # DETAILS adds a seventh, which redis-py's own parser tolerates.
    c.get("o:detail")
    parsed = c.execute_command("SLOWLOG GET", "1", "DETAILS", decode_responses=True)
    assert isinstance(parsed, list) and len(parsed) == 1, parsed
    assert "duration" in parsed[0], parsed
    raw = c.execute_command("SLOWLOG", "GET", "1", "DETAILS")
    assert len(raw[0]) == 7, raw


def test_memory_stats_over_every_shard(deployment, proxy_only, proxy):
    for i in range(20):
        proxy.set(f"ms:{i}", "v")
    stats = proxy.memory_stats()
    assert stats["keys.count"] == 20, stats
    assert stats["total.allocated"] > 0
    assert isinstance(stats["db.0"], dict), stats


def test_metrics_of_observability(deployment, harness_only, proxy):
    proxy.get("o:metric")
    proxy.eval(BUSY, 1, "o:busy2")
    with urllib.request.urlopen(deployment.metrics_url, timeout=5) as r:
        text = r.read().decode()
    assert re.search(r'^shardgate_command_duration_seconds_count\{command="get"\} \d+', text, re.M), text[:3000]
    assert re.search(r"^shardgate_slowlog_entries_total \d+", text, re.M)
    assert re.search(r"^shardgate_blocked_clients 0", text, re.M)
    # The harness runs replicas: their lag, as the health check sees it.
    deadline = time.time() + 5
    while not re.search(r'^shardgate_replica_lag_seconds\{shard="[^"]+",endpoint="[^"]+"\} \d', text, re.M):
        assert time.time() < deadline, [l for l in text.splitlines() if "replica" in l]
        time.sleep(0.2)
        with urllib.request.urlopen(deployment.metrics_url, timeout=5) as r:
            text = r.read().decode()


def test_info_persistence_counts_writes_since_the_last_save(deployment, proxy_only, proxy):
    # Redis' "dirty" counter, summed over the shards: every write through
    # the proxy counts once, on the shard it ran on.
    before = proxy.info("persistence")
    for name in ("loading", "rdb_changes_since_last_save", "rdb_bgsave_in_progress",
                 "rdb_last_save_time", "aof_enabled", "aof_rewrite_in_progress"):
        assert isinstance(before[name], int), (name, before)
    assert before["rdb_last_bgsave_status"] == "ok", before
    for i in range(25):
        proxy.set(f"dirty:{{t{i}}}", "v")
    after = proxy.info("persistence")
    # Other tests may write meanwhile (the suite runs in parallel).
    assert after["rdb_changes_since_last_save"] - before["rdb_changes_since_last_save"] >= 25
    assert "rdb_changes_since_last_save" in proxy.info()

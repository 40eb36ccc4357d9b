"""node-redis' client-side cache through the proxy (CLIENT TRACKING over
RESP3): a real client library's cache serves repeated reads, and a write
straight to a shard invalidates them (integration/node/)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"


def test_node_redis_client_side_cache(deployment, harness_only):
    node = shutil.which("node")
    assert node, "node is not installed (scripts/setup.sh installs nodejs)"
    assert (NODE_DIR / "node_modules" / "redis").is_dir(), (
        "node-redis is not installed (scripts/setup.sh runs npm ci in integration/node)"
    )
    ports = [str(p.port) for p in deployment.backend_primaries()]
    out = subprocess.run(
        [node, str(NODE_DIR / "client_side_cache.mjs"), str(deployment.port), *ports],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), (
        f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    )

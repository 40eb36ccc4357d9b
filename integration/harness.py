"""Processes for the end-to-end suite: redis-server shards with replicas, the
shardgate proxy in front of them, and a plain "reference" redis-server.

Everything listens on free 127.0.0.1 ports, lives in one temporary directory
and is stopped by `Deployment.stop()` (terminate, wait, kill).

Two modes:

* harness mode (`SHARDGATE_BIN` set): 4 primaries + 4 replicas + the proxy
  started from that binary with a generated shard map;
* override mode (`SHARDGATE_PROXY_ADDR=host:port`): the "proxy" is whatever
  Redis-compatible server listens there (a plain redis-server while the proxy
  is being written); nothing but the reference is started.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

REDIS_SERVER = os.environ.get("REDIS_SERVER_BIN", "redis-server")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class HarnessError(RuntimeError):
    """A process of the deployment did not start; the message says why."""


def free_port() -> int:
    """A port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file ("" when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop_process(proc: subprocess.Popen | None) -> None:
    """Terminates `proc`, waits, and kills it if it does not go."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)


def wait_for_ping(host: str, port: int, proc: subprocess.Popen | None, timeout: float) -> None:
    """Polls PING until it answers; raises HarnessError if `proc` exits first."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise HarnessError(f"process exited with status {proc.returncode}")
        try:
            c = redis.Redis(host=host, port=port, socket_timeout=1, socket_connect_timeout=1)
            try:
                if c.ping():
                    return
            finally:
                c.close()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            last = e
        except redis.ResponseError as e:  # e.g. LOADING
            last = e
        time.sleep(0.05)
    raise HarnessError(f"{host}:{port} did not answer PING within {timeout}s ({last})")


@dataclass
class RedisServer:
    """One redis-server process (a shard primary, a replica or the reference)."""

    name: str
    port: int
    workdir: Path
    proc: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @classmethod
    def start(cls, name: str, root: Path, replica_of: "RedisServer | None" = None) -> "RedisServer":
        """Starts a server on a free port (retrying if another process took the port)."""
        last = ""
        for _ in range(3):
            port = free_port()
            workdir = root / f"{name}-{port}"
            workdir.mkdir(parents=True, exist_ok=True)
            server = cls(name, port, workdir)
            args = [
                REDIS_SERVER,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--repl-diskless-sync-delay", "0",
                "--dir", str(workdir),
                "--logfile", str(server.log),
                "--daemonize", "no",
            ]
            if replica_of is not None:
                args += ["--replicaof", "127.0.0.1", str(replica_of.port)]
            server.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                wait_for_ping("127.0.0.1", port, server.proc, START_TIMEOUT)
                return server
            except HarnessError as e:
                server.stop()
                last = f"{e}\n{tail(server.log)}"
        raise HarnessError(f"redis-server {name} did not start:\n{last}")

    def client(self, **kw) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kw)

    def wait_replication_up(self, timeout: float = START_TIMEOUT) -> None:
        """Waits until this replica reports `master_link_status:up`."""
        deadline = time.monotonic() + timeout
        c = self.client()
        try:
            while time.monotonic() < deadline:
                if c.info("replication").get("master_link_status") == "up":
                    return
                time.sleep(0.05)
        finally:
            c.close()
        raise HarnessError(f"replica {self.name} link not up after {timeout}s:\n{tail(self.log)}")

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class Shard:
    name: str
    region: str
    primary: RedisServer
    replica: RedisServer


def shard_map_yaml(shards: list[Shard]) -> str:
    """The shard map of the deployment: 2 regions, placement rules for `eu`."""
    lines = [
        "slots: 16384",
        "read_policy: primary",
        "regions: [{name: us, zones: [us-a, us-b]}, {name: eu, zones: [eu-a, eu-b]}]",
        "placement:",
        '  - {hash_tag_prefix: "eu:", region: eu}',
        '  - {key_prefix: "eu/", region: eu}',
        "options: {allow_flush: true}",
        "shards:",
    ]
    for s in shards:
        lines.append(
            f"  - {{name: {s.name}, region: {s.region}, zone: {s.region}-a, "
            f"primary: {s.primary.addr}, "
            f"replicas: [{{addr: {s.replica.addr}, zone: {s.region}-b}}]}}"
        )
    return "\n".join(lines) + "\n"


@dataclass
class Deployment:
    """What the tests talk to: the target (proxy or override) and the reference."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    reference: RedisServer | None = None
    shards: list[Shard] = field(default_factory=list)
    proxy_proc: subprocess.Popen | None = None
    proxy_stderr: Path | None = None
    metrics_addr: str | None = None
    map_path: Path | None = None
    overridden: bool = False
    target_server: RedisServer | None = None
    is_proxy: bool = False

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        return f"http://{self.metrics_addr}/metrics" if self.metrics_addr else None

    @property
    def started_proxy(self) -> bool:
        """True when this harness started the proxy (shards, metrics known)."""
        return self.proxy_proc is not None

    def backend_primaries(self) -> list[RedisServer]:
        return [s.primary for s in self.shards]

    def proxy_log_tail(self, lines: int = 60) -> str:
        return tail(self.proxy_stderr, lines) if self.proxy_stderr else ""

    @classmethod
    def start(cls, proxy_bin: str | None, override: str | None) -> "Deployment":
        root = Path(tempfile.mkdtemp(prefix="shardgate-it-"))
        d = cls(root=root)
        try:
            d.reference = RedisServer.start("reference", root)
            if override == "spawn":
                d.target_server = RedisServer.start("target", root)
                d.host, d.port, d.overridden = "127.0.0.1", d.target_server.port, True
                d.is_proxy = False
            elif override:
                host, _, port = pick_override(override).rpartition(":")
                d.host, d.port, d.overridden = host or "127.0.0.1", int(port), True
                wait_for_ping(d.host, d.port, None, START_TIMEOUT)
                d.is_proxy = detect_proxy(d.host, d.port)
            else:
                assert proxy_bin
                d._start_shards()
                d._start_proxy(proxy_bin)
                d.is_proxy = True
            return d
        except BaseException:
            d.stop()
            raise

    def _start_shards(self) -> None:
        for i, region in enumerate(["us", "us", "eu", "eu"]):
            primary = RedisServer.start(f"s{i}-primary", self.root)
            replica = RedisServer.start(f"s{i}-replica", self.root, replica_of=primary)
            self.shards.append(Shard(f"s{i}", region, primary, replica))
        for s in self.shards:
            s.replica.wait_replication_up()
        self.map_path = self.root / "map.yaml"
        self.map_path.write_text(shard_map_yaml(self.shards))

    def _start_proxy(self, proxy_bin: str) -> None:
        self.proxy_stderr = self.root / "shardgate.stderr"
        last = ""
        for _ in range(3):
            self.port = free_port()
            self.metrics_addr = f"127.0.0.1:{free_port()}"
            env = dict(os.environ)
            env.setdefault("RUST_LOG", "info")
            with open(self.proxy_stderr, "ab") as err:
                self.proxy_proc = subprocess.Popen(
                    [
                        proxy_bin, "serve",
                        "--map", str(self.map_path),
                        "--listen", self.addr,
                        "--metrics-listen", self.metrics_addr,
                        "--region", "us",
                        "--zone", "us-a",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    env=env,
                )
            try:
                wait_for_ping(self.host, self.port, self.proxy_proc, START_TIMEOUT)
                return
            except HarnessError as e:
                stop_process(self.proxy_proc)
                last = str(e)
                # Retry only when another process took the port.
                if "in use" not in self.proxy_log_tail().lower():
                    break
        self.proxy_proc = None
        raise HarnessError(
            f"shardgate did not start ({last}); map {self.map_path}:\n"
            f"{self.map_path.read_text() if self.map_path else ''}\n"
            f"--- shardgate stderr (tail) ---\n{self.proxy_log_tail()}"
        )

    def stop(self) -> None:
        stop_process(self.proxy_proc)
        for s in self.shards:
            s.replica.stop()
            s.primary.stop()
        if self.target_server:
            self.target_server.stop()
        if self.reference:
            self.reference.stop()
        if not os.environ.get("SHARDGATE_KEEP_TMP"):
            shutil.rmtree(self.root, ignore_errors=True)


def pick_override(value: str) -> str:
    """This xdist worker's address from `SHARDGATE_PROXY_ADDR`.

    Every test flushes the keyspace, so two workers must not share one server:
    give one address per worker, comma-separated (worker gwN takes entry N).
    """
    addrs = [a.strip() for a in value.split(",") if a.strip()]
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > len(addrs):
        raise HarnessError(
            f"SHARDGATE_PROXY_ADDR has {len(addrs)} address(es) for {workers} xdist workers; "
            "workers flush the keyspace, so give one server per worker (comma-separated), "
            "or SHARDGATE_PROXY_ADDR=spawn to start a plain redis-server per worker"
        )
    return addrs[index % len(addrs)]


def detect_proxy(host: str, port: int) -> bool:
    """True when the server at host:port is shardgate (its INFO has `# Proxy`)."""
    from rawresp import RawConn

    with RawConn(host, port) as c:
        reply = c.call(b"INFO")
    return isinstance(reply, bytes) and b"# Proxy" in reply

#!/usr/bin/env bash
# Installs what shardgate's demo and tests need on a fresh Debian/Ubuntu
# machine: redis-server + redis-cli, PostgreSQL (for postgres shards), etcd
# (a fleet of proxies), protoc (etcd-client's build), systemd-analyze and
# promtool (tests/deploy/ checks the unit and the alert rules of deploy/),
# Python test packages.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
# PostgreSQL server binaries (initdb, postgres, pg_basebackup) for postgres shards.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# etcd for a fleet of proxies (`serve --etcd`, tests/fleet.rs, the demo).
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
# protoc: etcd-client compiles etcd's protobuf API at build time.
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
# systemd-analyze: `verify` and `security` on deploy/systemd/shardgate.service.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# /bin/kill: the unit's ExecReload (and the tests' signals); `kill` is also
# a shell builtin, so look for the file.
[ -x /bin/kill ] || missing+=(procps)
# promtool: `check rules` / `test rules` on deploy/prometheus/ (the Debian
# package prometheus ships it; its service is not used).
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# node and npm: node-redis' client-side cache against the proxy
# (integration/test_client_side_cache.py).
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# valgrind (callgrind): scripts/bench-instructions.sh counts instructions per
# request, which other processes on the machine do not disturb.
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian packages may start a system redis on 6379, a PostgreSQL
# cluster on 5432 and an etcd on 2379; shardgate's demo and tests never use
# them.

if ! python3 -c 'import redis, pytest, xdist' >/dev/null 2>&1; then
  echo "setup: installing Python test packages"
  python3 -m pip install -q -r integration/requirements.txt 2>/dev/null \
    || python3 -m pip install -q --break-system-packages -r integration/requirements.txt
fi

if [ ! -d integration/node/node_modules/redis ]; then
  echo "setup: installing node-redis for the client-side cache test"
  (cd integration/node && npm ci --no-audit --no-fund --silent)
fi

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }

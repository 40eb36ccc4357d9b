#!/usr/bin/env bash
# Measures the rebalance mover: keys per second while adding a 4th shard to
# 3 (each holding ~KEYS/3 keys of 100 bytes), once with no clients and once
# with 16 redis-benchmark clients running GET/SET through the proxy.
# Usage: scripts/bench-rebalance.sh [KEYS]   (default 300000)
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-300000}
bash scripts/setup.sh >/dev/null
cargo build --release -q
BIN=target/release/shardgate
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() {
  local label=$1 with_clients=$2
  local ports=() p
  for i in 0 1 2 3; do
    p=$(free_port); ports+=("$p")
    redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
      --logfile "$WORK/redis-$p.log" & pids+=($!)
  done
  for p in "${ports[@]}"; do until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.05; done; done
  map() {
    echo "slots: 16384"; echo "regions:"; echo "  - name: us"; echo "shards:"
    for i in $(seq 0 $(($1 - 1))); do
      printf '  - name: s%s\n    region: us\n    primary: 127.0.0.1:%s\n' "$i" "${ports[$i]}"
    done
  }
  map 3 > "$WORK/m3.yaml"; map 4 > "$WORK/m4.yaml"
  local port admin
  port=$(free_port); admin=$(free_port)
  rm -rf "$WORK/state"
  SG_ADMIN=bench "$BIN" serve --map "$WORK/m3.yaml" --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin" --admin-password-env SG_ADMIN --state-dir "$WORK/state" \
    2>"$WORK/proxy-$label.log" & pids+=($!)
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
  # Fill through the proxy so every key is on its owner.
  redis-benchmark -p "$port" -t set -n $((KEYS * 3)) -r "$KEYS" -d 100 -P 64 -c 8 -q >/dev/null 2>&1
  local total
  total=$(redis-cli -p "$port" dbsize)
  local bench_pid=""
  if [ "$with_clients" = 1 ]; then
    redis-benchmark -p "$port" -t get,set -n 100000000 -r "$KEYS" -d 100 -c 16 -q >/dev/null 2>&1 &
    bench_pid=$!; pids+=("$bench_pid")
    sleep 1
  fi
  SHARDGATE_ADMIN_PASSWORD=bench "$BIN" admin rebalance --map "$WORK/m4.yaml" --admin "127.0.0.1:$admin" \
    > "$WORK/out-$label.txt"
  [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null || true
  # Mover rate: keys and seconds of the windows (the estimate and the
  # verification scan are not part of it).
  python3 - "$WORK/proxy-$label.log" "$label" "$total" <<'PY'
import re, sys
keys = secs = 0.0
for line in open(sys.argv[1]):
    if re.search(r"rebalance windows? moved", line):
        keys += float(re.search(r"keys=(\d+)", line).group(1))
        secs += float(re.search(r"secs=([\d.]+)", line).group(1))
print(f"{sys.argv[2]}: {int(keys)} of {sys.argv[3]} keys moved by the mover in {secs:.2f} s: {keys / max(secs, 1e-9):,.0f} keys/s")
PY
  grep -h "rebalance done" "$WORK/out-$label.txt" || true
  for p in "${ports[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
  kill "${pids[@]}" 2>/dev/null || true; pids=()
  sleep 0.5
}

run "no clients" 0
run "16 clients" 1

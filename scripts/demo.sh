#!/usr/bin/env bash
# Starts a local demo: 4 Redis shards in 2 regions, each with one replica,
# and shardgate in front with shard-maps/demo.yaml. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

PROXY_PORT=${PROXY_PORT:-6380}
METRICS_PORT=${METRICS_PORT:-9121}
echo "== building shardgate (release)"
cargo build --release --locked --bin shardgate

work=$(mktemp -d /tmp/shardgate-demo.XXXXXX)
pids=()
cleanup() {
  echo
  echo "== stopping demo"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_redis() { # port [replicaof-port]
  local port=$1 dir="$work/redis-$1"
  mkdir -p "$dir"
  local args=(--port "$port" --bind 127.0.0.1 --save "" --appendonly no --repl-diskless-sync-delay 0 --dir "$dir" --daemonize no --logfile "$dir/log")
  [ $# -ge 2 ] && args+=(--replicaof 127.0.0.1 "$2")
  redis-server "${args[@]}" &
  pids+=($!)
}

echo "== starting 4 primaries (7001-7004) and 4 replicas (7011-7014)"
for i in 1 2 3 4; do start_redis "700$i"; done
for i in 1 2 3 4; do
  until redis-cli -p "700$i" ping >/dev/null 2>&1; do sleep 0.1; done
  start_redis "701$i" "700$i"
done

echo "== starting shardgate on 127.0.0.1:$PROXY_PORT"
RUST_LOG=${RUST_LOG:-info} ./target/release/shardgate serve --map shard-maps/demo.yaml \
  --listen "127.0.0.1:$PROXY_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" --region us --zone us-a &
pids+=($!)
until redis-cli -p "$PROXY_PORT" ping >/dev/null 2>&1; do sleep 0.1; done

cat <<MSG

shardgate is running in front of 4 shards (regions us and eu, one replica each).

  redis-cli -p $PROXY_PORT                      # talk to the proxy
  redis-cli -p $PROXY_PORT set eu/user:1 anna   # 'eu/' keys live only in region eu
  redis-cli -p $PROXY_PORT info proxy           # shards and their health
  curl -s 127.0.0.1:$METRICS_PORT/metrics       # Prometheus metrics

Press Ctrl-C to stop everything.
MSG
wait "${pids[-1]}"

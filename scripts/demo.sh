#!/usr/bin/env bash
# Starts a local demo: 4 Redis shards in 2 regions, each with one replica,
# one PostgreSQL shard (port 7101, its own initdb in the demo directory), and
# shardgate in front with shard-maps/demo.yaml. A fifth Redis shard (7005,
# replica 7015) waits for `shardgate admin rebalance --map
# shard-maps/demo-grow.yaml`. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

PROXY_PORT=${PROXY_PORT:-6380}
METRICS_PORT=${METRICS_PORT:-9121}
ADMIN_PORT=${ADMIN_PORT:-6390}
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

echo "== starting 5 primaries (7001-7005) and 5 replicas (7011-7015); 7005 joins by rebalance"
for i in 1 2 3 4 5; do start_redis "700$i"; done
for i in 1 2 3 4 5; do
  until redis-cli -p "700$i" ping >/dev/null 2>&1; do sleep 0.1; done
  start_redis "701$i" "700$i"
done

echo "== starting PostgreSQL shard pg-1 on 7101 (initdb in $work/pg)"
pg_bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
# PostgreSQL refuses to run as root: then run it as the postgres user.
as_pg=()
if [ "$(id -u)" -eq 0 ]; then as_pg=(runuser -u postgres --); chmod 755 "$work"; mkdir -p "$work/pg"; chown postgres "$work/pg"; fi
"${as_pg[@]}" "$pg_bin/initdb" -A trust -U postgres -E UTF8 --no-sync -D "$work/pg/data" >/dev/null
"${as_pg[@]}" "$pg_bin/postgres" -D "$work/pg/data" -p 7101 -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$work/pg" -c fsync=off >"$work/pg/log" 2>&1 &
pids+=($!)
until "$pg_bin/pg_isready" -q -h 127.0.0.1 -p 7101; do sleep 0.1; done

# `{pg:...}` keys live on the PostgreSQL shard (a placement rule).
pg_key="{pg:1}k"

echo "== starting shardgate on 127.0.0.1:$PROXY_PORT"
export SHARDGATE_ADMIN_PASSWORD=${SHARDGATE_ADMIN_PASSWORD:-demo-admin}
RUST_LOG=${RUST_LOG:-info} ./target/release/shardgate serve --map shard-maps/demo.yaml \
  --listen "127.0.0.1:$PROXY_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" --region us --zone us-a \
  --admin-listen "127.0.0.1:$ADMIN_PORT" --admin-password-env SHARDGATE_ADMIN_PASSWORD \
  --state-dir "$work/state" &
pids+=($!)
until redis-cli -p "$PROXY_PORT" ping >/dev/null 2>&1; do sleep 0.1; done

cat <<MSG

shardgate is running in front of 5 shards: 4 Redis (regions us and eu, one
replica each) and pg-1, a PostgreSQL shard (strings and hashes, durable) for
'{pg:...}' keys. A 6th, us-3 (7005), joins with a rebalance.

  redis-cli -p $PROXY_PORT                      # talk to the proxy
  redis-cli -p $PROXY_PORT set eu/user:1 anna   # 'eu/' keys live only in region eu
  redis-cli -p $PROXY_PORT info proxy           # shards and their health
  redis-cli -p $PROXY_PORT set $pg_key v   # this key lives on pg-1
  ./target/release/shardgate check-map shard-maps/demo.yaml --key $pg_key   # where a key lives
  psql -h 127.0.0.1 -p 7101 -U postgres -c 'table kv'   # keys of the PostgreSQL shard
  curl -s 127.0.0.1:$METRICS_PORT/metrics       # Prometheus metrics
  redis-cli -p $ADMIN_PORT -a $SHARDGATE_ADMIN_PASSWORD status   # admin port (RELOAD re-reads shard-maps/demo.yaml)
  redis-benchmark -p $PROXY_PORT -t set -n 100000 -r 50000 -q   # some keys to move
  export SHARDGATE_ADMIN_PASSWORD=$SHARDGATE_ADMIN_PASSWORD
  ./target/release/shardgate admin plan --map shard-maps/demo-grow.yaml --admin 127.0.0.1:$ADMIN_PORT
  ./target/release/shardgate admin rebalance --map shard-maps/demo-grow.yaml --admin 127.0.0.1:$ADMIN_PORT

Press Ctrl-C to stop everything.
MSG
wait "${pids[-1]}"

#!/usr/bin/env bash
# Starts a local demo: 4 Redis shards in 2 regions, each with one replica,
# one PostgreSQL shard (port 7101, its own initdb in the demo directory), a
# single-node etcd (a free port, its data in the demo directory), and a fleet
# of two shardgate proxies in front (6380 and 6381, admin 6390 and 6391): the
# first seeds the fleet's map in etcd from shard-maps/demo.yaml. A fifth Redis
# shard (7005, replica 7015) waits for `shardgate admin rebalance --map
# shard-maps/demo-grow.yaml`, which moves slots while both proxies serve.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PROXY_PORT=${PROXY_PORT:-6380}
PROXY2_PORT=${PROXY2_PORT:-6381}
METRICS_PORT=${METRICS_PORT:-9121}
METRICS2_PORT=${METRICS2_PORT:-9122}
ADMIN_PORT=${ADMIN_PORT:-6390}
ADMIN2_PORT=${ADMIN2_PORT:-6391}
ETCD_PORT=${ETCD_PORT:-$(free_port)}
ETCD_PEER_PORT=$(free_port)
echo "== building shardgate (release)"
cargo build --release --locked --bin shardgate

work=$(mktemp -d /tmp/shardgate-demo.XXXXXX)
pids=()
cleanup() {
  echo
  echo "== stopping demo"
  # In the reverse order of their start, each gone before the next stops:
  # the proxies first (they drain their clients while etcd and the shards
  # still answer), then etcd, then the shards.
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
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

echo "== starting etcd on 127.0.0.1:$ETCD_PORT (data in $work/etcd)"
etcd --name demo --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "demo=http://127.0.0.1:$ETCD_PEER_PORT" >"$work/etcd.log" 2>&1 &
pids+=($!)
etcd_healthy() {
  python3 -c 'import sys, urllib.request
try: ok = b"\"health\":\"true\"" in urllib.request.urlopen(sys.argv[1], timeout=2).read()
except Exception: ok = False
sys.exit(0 if ok else 1)' "http://127.0.0.1:$ETCD_PORT/health"
}
until etcd_healthy; do sleep 0.1; done

export SHARDGATE_ADMIN_PASSWORD=${SHARDGATE_ADMIN_PASSWORD:-demo-admin}
start_proxy() { # port admin-port metrics-port id [--map FILE]
  local port=$1 admin=$2 metrics=$3 id=$4
  shift 4
  RUST_LOG=${RUST_LOG:-info} ./target/release/shardgate serve "$@" \
    --etcd "http://127.0.0.1:$ETCD_PORT" --cluster demo --proxy-id "$id" \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics" --region us --zone us-a \
    --admin-listen "127.0.0.1:$admin" --admin-password-env SHARDGATE_ADMIN_PASSWORD &
  pids+=($!)
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
}
# The first proxy seeds the fleet's map in etcd; the second reads it there.
echo "== starting shardgate proxy-1 on 127.0.0.1:$PROXY_PORT (seeds the map in etcd)"
start_proxy "$PROXY_PORT" "$ADMIN_PORT" "$METRICS_PORT" proxy-1 --map shard-maps/demo.yaml
echo "== starting shardgate proxy-2 on 127.0.0.1:$PROXY2_PORT (same fleet)"
start_proxy "$PROXY2_PORT" "$ADMIN2_PORT" "$METRICS2_PORT" proxy-2

cat <<MSG

A fleet of two shardgate proxies (127.0.0.1:$PROXY_PORT and 127.0.0.1:$PROXY2_PORT, one
map and rebalance state in etcd on 127.0.0.1:$ETCD_PORT) is running in front of 5
shards: 4 Redis (regions us and eu, one replica each) and pg-1, a PostgreSQL
shard (strings and hashes, durable) for '{pg:...}' keys. A 6th, us-3 (7005),
joins with a rebalance, which moves slots while both proxies serve.

  redis-cli -p $PROXY_PORT                      # talk to the first proxy
  redis-cli -p $PROXY_PORT set user:1 anna; redis-cli -p $PROXY2_PORT get user:1   # one keyspace
  redis-cli -p $PROXY_PORT set eu/user:1 anna   # 'eu/' keys live only in region eu
  redis-cli -p $PROXY_PORT info proxy           # shards and their health
  redis-cli -p $PROXY_PORT set $pg_key v   # this key lives on pg-1
  ./target/release/shardgate check-map shard-maps/demo.yaml --key $pg_key   # where a key lives
  psql -h 127.0.0.1 -p 7101 -U postgres -c 'table kv'   # keys of the PostgreSQL shard
  curl -s 127.0.0.1:$METRICS_PORT/metrics       # Prometheus metrics
  curl -s 127.0.0.1:$METRICS2_PORT/metrics | grep fleet   # fleet size, lease, mover election
  redis-cli -p $ADMIN_PORT -a $SHARDGATE_ADMIN_PASSWORD status   # admin port (RELOAD re-reads shard-maps/demo.yaml)
  redis-benchmark -p $PROXY_PORT -t set -n 100000 -r 50000 -q   # some keys to move
  redis-benchmark -p $PROXY2_PORT -t get,incr -n 1000000 -r 50000 -q &   # clients on both proxies...
  export SHARDGATE_ADMIN_PASSWORD=$SHARDGATE_ADMIN_PASSWORD
  ./target/release/shardgate admin plan --map shard-maps/demo-grow.yaml --admin 127.0.0.1:$ADMIN2_PORT
  ./target/release/shardgate admin rebalance --map shard-maps/demo-grow.yaml --admin 127.0.0.1:$ADMIN2_PORT   # ...while the fleet moves slots

Press Ctrl-C to stop everything.
MSG
wait "${pids[-1]}"

# Sourced by benchmark scripts that compare shardgate binaries over the same
# shards: a temporary directory ($tmp), processes stopped on exit ($pids),
# free loopback ports, and four redis-servers with a map over them
# ($tmp/map.yaml).
tmp=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts 4 redis-servers and writes $tmp/map.yaml (one region, 4 shards).
start_shards() {
  local rports=() p i=0
  for _ in 0 1 2 3; do
    p=$(free_port)
    redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null 2>&1 &
    pids+=($!); rports+=("$p")
  done
  sleep 0.5
  {
    printf 'regions:\n  - name: r\nshards:\n'
    for p in "${rports[@]}"; do printf '  - name: s%s\n    region: r\n    primary: 127.0.0.1:%s\n' $i "$p"; i=$((i + 1)); done
  } >"$tmp/map.yaml"
}

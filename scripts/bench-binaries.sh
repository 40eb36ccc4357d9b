#!/usr/bin/env bash
# Side by side in one run: several shardgate binaries (e.g. builds of two
# revisions) over the same 4 loopback redis-servers, one proxy process each
# with --threads 1, alternating redis-benchmark runs (50 clients, GET/SET
# at -P 16 and GET at -P 1, 3 rounds). Prints requests per second and
# requests per CPU-second of each proxy (from /proc/PID/stat, 10 ms ticks).
#
#   scripts/bench-binaries.sh LABEL=PATH LABEL=PATH ...
#
# e.g. git worktree add /tmp/old REV && (cd /tmp/old && CARGO_TARGET_DIR=$PWD/../shardgate/target
#      cargo build --release --bin shardgate) && cp target/release/shardgate /tmp/sg-old
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,12p' "$0"; exit 1; }
. "$(dirname "$0")/lib-bench.sh"
start_shards
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
declare -A port pid
labels=()
for spec in "$@"; do
  label=${spec%%=*}; bin=${spec#*=}; labels+=("$label")
  port[$label]=$(free_port)
  "$bin" serve --map "$tmp/map.yaml" --listen "127.0.0.1:${port[$label]}" --state-dir "$tmp/st-$label" --threads 1 >/dev/null 2>&1 &
  pid[$label]=$!; pids+=($!)
done
sleep 1
for l in "${labels[@]}"; do redis-cli -p "${port[$l]}" ping >/dev/null; done
for case in "get 16" "set 16" "get 1"; do
  set -- $case; t=$1; P=$2; n=$(( P == 16 ? 400000 : 100000 ))
  for round in 1 2 3; do
    for l in "${labels[@]}"; do
      c0=$(cpu "${pid[$l]}")
      out=$(redis-benchmark -p "${port[$l]}" -c 50 -P "$P" -n "$n" -r 100000 -t "$t" -q 2>/dev/null | tr '\r' '\n' | grep -i "requests per second" | tail -1)
      c1=$(cpu "${pid[$l]}")
      rps=$(echo "$out" | awk '{for(i=1;i<=NF;i++) if ($i ~ /^[0-9.]+$/) {print $i; exit}}')
      echo "$t -P $P round $round $l rps=$rps req_per_cpu_s=$(( n * hz / (c1 - c0 > 0 ? c1 - c0 : 1) ))"
    done
  done
done

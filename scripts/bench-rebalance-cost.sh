#!/usr/bin/env bash
# The cost of a move to clients (issue 14): ~1M keys of 64 B over 3 shards,
# a 4th added, `redis-benchmark` GET at 20 clients through the proxy, the
# same number of requests before the move and while it runs. Prints, side by
# side: p50/p95/p99 and throughput before and during, their ratios, the
# mover's keys/s, keys moved by commands, and the CPU per request of the
# proxy and of the four redis-servers (mover included).
#
# Usage: scripts/bench-rebalance-cost.sh [--fleet] [--keys N] [--requests N]
#   --fleet      the proxy is a fleet member (a single-node etcd holds the
#                map and the rebalance state; the mover waits for the
#                fleet's acknowledgements per window)
#   --keys N     distinct keys wanted (default 1,000,000; filled with SETs
#                of random keys, so about N end up stored)
#   --requests N GETs per run (default 100,000)
#   --throttle N the mover's throttle, keys/s (default 0: none)
# Environment: SHARDGATE_BIN=path measures that binary (no build); GETS=0
# skips the GETs during the move (the mover alone, and its CPU).
# STATS=1 prints the shards' time per command (INFO commandstats).
# PROBE=1 also pings the first shard (a source) straight, one PING at a
# time, while the mover works: how long a source stalls (best with GETS=0).
set -euo pipefail
cd "$(dirname "$0")/.."
FLEET=0 KEYS=1000000 REQUESTS=100000 THROTTLE=0
while [ $# -gt 0 ]; do
  case $1 in
    --fleet) FLEET=1 ;;
    --keys) KEYS=$2; shift ;;
    --requests) REQUESTS=$2; shift ;;
    --throttle) THROTTLE=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
# SHARDGATE_BIN: a binary to measure instead of this tree's release build.
if [ -z "${SHARDGATE_BIN:-}" ]; then cargo build --release -q; fi
BIN=${SHARDGATE_BIN:-target/release/shardgate}
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

ports=()
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
port=$(free_port); admin=$(free_port); metrics=$(free_port)
mode=(--state-dir "$WORK/state")
if [ "$FLEET" = 1 ]; then
  ec=$(free_port); ep=$(free_port)
  etcd --name bench --data-dir "$WORK/etcd" \
    --listen-client-urls "http://127.0.0.1:$ec" --advertise-client-urls "http://127.0.0.1:$ec" \
    --listen-peer-urls "http://127.0.0.1:$ep" --initial-advertise-peer-urls "http://127.0.0.1:$ep" \
    --initial-cluster "bench=http://127.0.0.1:$ep" >"$WORK/etcd.log" 2>&1 & pids+=($!)
  until curl -sf "http://127.0.0.1:$ec/health" | grep -q '"health":"true"'; do sleep 0.1; done
  mode=(--etcd "http://127.0.0.1:$ec" --cluster bench --proxy-id bench-1)
fi
SG_ADMIN=bench RUST_LOG=info "$BIN" serve --map "$WORK/m3.yaml" --listen "127.0.0.1:$port" \
  --admin-listen "127.0.0.1:$admin" --admin-password-env SG_ADMIN --metrics-listen "127.0.0.1:$metrics" \
  "${mode[@]}" 2>"$WORK/proxy.log" & proxy=$!; pids+=($proxy)
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done

# Fill through the proxy so every key is on its owner: 3N SETs over 1.1N
# names store about 0.95 * 1.1N = 1.04N distinct keys.
range=$((KEYS * 11 / 10))
redis-benchmark -p "$port" -t set -n $((range * 3)) -r "$range" -d 64 -P 64 -c 8 -q >/dev/null 2>&1
total=0
for p in "${ports[@]:0:3}"; do total=$((total + $(redis-cli -p "$p" dbsize))); done

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # user + system, clock ticks
redis_pids=("${pids[@]:0:4}")
redis_cpu() { local t=0 p; for p in "${redis_pids[@]}"; do t=$((t + $(cpu "$p"))); done; echo "$t"; }
get_run() { # label -> "label,rps,avg,min,p50,p95,p99,max,proxy_ticks,start,end,redis_ticks"
  local c0 c1 r0 r1 t0 t1 line
  c0=$(cpu "$proxy"); r0=$(redis_cpu); t0=$(date +%s.%N)
  line=$(redis-benchmark -p "$port" -t get -n "$REQUESTS" -r "$range" -c 20 --csv 2>/dev/null | tail -1)
  t1=$(date +%s.%N); c1=$(cpu "$proxy"); r1=$(redis_cpu)
  echo "$1,${line#\"GET\",},$((c1 - c0)),$t0,$t1,$((r1 - r0))" | tr -d '"'
}
get_run warmup >/dev/null
before=$(get_run before)
GETS=${GETS:-1}
metric() { curl -s "127.0.0.1:$metrics/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
move_c0=$(cpu "$proxy"); move_r0=$(redis_cpu)
for p in "${ports[@]}"; do redis-cli -p "$p" config resetstat >/dev/null; done
# (--throttle only when set: binaries older than the flag can be measured.)
throttle=(); if [ "$THROTTLE" != 0 ]; then throttle=(--throttle "$THROTTLE"); fi
SHARDGATE_ADMIN_PASSWORD=bench "$BIN" admin rebalance --map "$WORK/m4.yaml" "${throttle[@]}" \
  --admin "127.0.0.1:$admin" > "$WORK/rebalance.txt" 2>&1 & reb=$!
# The GETs start when the first window is migrating.
until [ "$(metric 'shardgate_rebalance_slots{state="migrating"}')" != "" ] &&
      [ "$(metric 'shardgate_rebalance_slots{state="migrating"}')" != "0" ]; do sleep 0.02; done
if [ "$GETS" = 1 ]; then during=$(get_run during); else during=$before; fi
if [ "${PROBE:-0}" = 1 ]; then
  # How long the first shard (a source) stalls while the mover works:
  # PINGs straight to it, one at a time, until the move is over.
  redis-benchmark -p "${ports[0]}" -t ping_mbulk -c 1 -n 100000 --csv 2>/dev/null | tail -1 > "$WORK/probe.csv" &
  probe=$!
fi
if [ "$THROTTLE" != 0 ]; then
  SHARDGATE_ADMIN_PASSWORD=bench "$BIN" admin throttle 0 --admin "127.0.0.1:$admin" >/dev/null
fi
wait "$reb"
if [ "${PROBE:-0}" = 1 ]; then
  wait "$probe"
  echo "PING to shard s0 during the move (ms): $(cut -d, -f3- "$WORK/probe.csv" | tr -d '"' | awk -F, '{printf "avg %s, p50 %s, p95 %s, p99 %s, max %s", $1, $3, $4, $5, $6}')"
fi
move_cpu="$(( $(cpu "$proxy") - move_c0 )) $(( $(redis_cpu) - move_r0 ))"
touch_moves=$(metric 'shardgate_rebalance_keys_moved_total{how="touch"}')
reads=$(curl -s "127.0.0.1:$metrics/metrics" | grep '^shardgate_rebalance_migrating_reads_total' || true)
python3 - "$WORK/proxy.log" "$before" "$during" "$total" "$(getconf CLK_TCK)" "$REQUESTS" \
  "${touch_moves:-0}" "$FLEET" "$reads" "$move_cpu" <<'PY'
import datetime, re, sys
log, before, during, total, tck, n, touch, fleet, reads, move_cpu = sys.argv[1:]
tck, n = int(tck), int(n)
def parse(s):
    f = s.split(",")
    return dict(rps=float(f[1]), p50=float(f[4]), p95=float(f[5]), p99=float(f[6]), mx=float(f[7]),
                cpu_us=int(f[8]) / tck * 1e6 / n, start=float(f[9]), end=float(f[10]),
                redis_us=int(f[11]) / tck * 1e6 / n)
b, d = parse(before), parse(during)
keys = secs = 0.0
first = last = None
for line in open(log):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if re.search(r"rebalance windows? moved", line):
        keys += float(re.search(r"keys=(\d+)", line).group(1))
        s = float(re.search(r"secs=([\d.]+)", line).group(1))
        secs += s
        ts = re.match(r"(\S+)", line).group(1)
        end = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        first = end - s if first is None else first
        last = end
overlap = 0.0
if first is not None:
    overlap = max(0.0, min(last, d["end"]) - max(first, d["start"])) / (d["end"] - d["start"])
print(f"mode: {'fleet (etcd)' if fleet == '1' else 'single proxy (--state-dir)'}; {int(total):,} keys of 64 B over 3 shards -> 4; {n:,} GETs per run, 20 clients")
print(f"{'':12} {'before':>9} {'during':>9} {'ratio':>7}")
for k, name in [("p50", "p50 ms"), ("p95", "p95 ms"), ("p99", "p99 ms"), ("mx", "max ms"), ("rps", "GET/s"), ("cpu_us", "CPU us/req"), ("redis_us", "shards us/req")]:
    print(f"{name:12} {b[k]:>9.3f} {d[k]:>9.3f} {d[k] / b[k]:>6.2f}x")
print(f"mover: {int(keys):,} keys in {secs:.2f} s = {keys / max(secs, 1e-9):,.0f} keys/s; moved by commands: {int(float(touch)):,}")
pc, rc = (int(x) / int(tck) for x in move_cpu.split())
print(f"CPU of the whole rebalance (GETs included): proxy {pc:.2f} s, shards {rc:.2f} s")
print(f"the 'during' run overlapped the windows for {overlap * 100:.0f}% of its time")
if reads.strip():
    print("reads of migrating slots: " + "; ".join(l.split("{")[1].replace("}", "=").replace('"', "") for l in reads.strip().splitlines()))
PY
grep -h "rebalance done\|verif" "$WORK/rebalance.txt" | tail -2 || true
if [ "${STATS:-0}" = 1 ]; then
  # Where the shards' time went from the move's start to the end of its
  # verification (GETs included): each command's calls and time, summed
  # over the four shards (commands a script ran count in both).
  for p in "${ports[@]}"; do redis-cli -p "$p" info commandstats; done | python3 -c '
import re, sys
tot = {}
for line in sys.stdin:
    m = re.match(r"cmdstat_(\S+):calls=(\d+),usec=(\d+)", line)
    if m:
        c = tot.setdefault(m.group(1), [0, 0])
        c[0] += int(m.group(2)); c[1] += int(m.group(3))
print("shards, per command: calls, seconds, us/call")
for name, (calls, usec) in sorted(tot.items(), key=lambda x: -x[1][1]):
    print(f"  {name:14} {calls:>10,} {usec / 1e6:>8.2f} s {usec / max(calls, 1):>8.2f}")
'
fi

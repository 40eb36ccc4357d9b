#!/usr/bin/env bash
# Coalesced reads (options.coalesce_reads, issue 18) side by side in one run:
# two shardgate processes over the same 4 Redis shards, one with the option
# off and one with it on, and redis-benchmark's hot-key load against each in
# alternation: 200 clients reading 10 keys at -P 1 (`-c 200 -P 1 -r 10 -t
# get`, 16-byte values). Per run: throughput and latency, backend GETs per
# client GET (the shards' INFO commandstats, reset before the run), CPU per
# request of the proxy and of the shards (/proc/PID/stat), and, with the
# option on, the proxy's led/joined/bypassed counts. Writes the medians into
# BENCHMARKS.md (between the coalesce markers) and prints them.
#
#   scripts/bench-coalesce.sh [--rounds N] [--requests N] [--threads T]
#
#   --rounds N     runs per target (default 5), order alternated each round
#   --requests N   GETs per run (default 300000)
#   --threads T    shardgate --threads of both proxies (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=5
requests=300000
threads=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift ;;
    --requests) requests=$2; shift ;;
    --threads) threads=$2; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "bench-coalesce: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for v in "$rounds" "$requests" "$threads"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "bench-coalesce: '$v' is not a positive integer" >&2; exit 2; }
done

cargo build --release --locked --bin shardgate >/dev/null
bin=target/release/shardgate
tmp=$(mktemp -d /tmp/shardgate-bench-coalesce.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r -a ports <<<"$(python3 bench/run.py free-ports 8)"
shard_ports=("${ports[@]:0:4}")
off_port=${ports[4]}
on_port=${ports[5]}
on_metrics=${ports[6]}
off_metrics=${ports[7]}

shard_pids=()
for port in "${shard_ports[@]}"; do
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --logfile "$tmp/redis-$port.log" --dir "$tmp" &
  pids+=($!); shard_pids+=($!)
done
map() { # coalesce_reads
  printf 'slots: 16384\nregions:\n  - name: r\noptions:\n  coalesce_reads: %s\nshards:\n' "$1"
  local i=0
  for port in "${shard_ports[@]}"; do
    printf '  - name: s%d\n    region: r\n    primary: 127.0.0.1:%s\n' "$i" "$port"
    i=$((i + 1))
  done
}
map false >"$tmp/off.yaml"
map true >"$tmp/on.yaml"
"$bin" serve --map "$tmp/off.yaml" --listen "127.0.0.1:$off_port" --threads "$threads" \
  --metrics-listen "127.0.0.1:$off_metrics" --state-dir "$tmp/state-off" >"$tmp/off.log" 2>&1 &
off_pid=$!; pids+=("$off_pid")
"$bin" serve --map "$tmp/on.yaml" --listen "127.0.0.1:$on_port" --threads "$threads" \
  --metrics-listen "127.0.0.1:$on_metrics" --state-dir "$tmp/state-on" >"$tmp/on.log" 2>&1 &
on_pid=$!; pids+=("$on_pid")
for port in "${shard_ports[@]}" "$off_port" "$on_port"; do
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
done

# The 10 keys redis-benchmark -r 10 reads (key:000000000000 .. 9), 16 bytes each.
for attempt in 1 2 3; do
  redis-benchmark -p "$off_port" -t set -r 10 -n 1000 -c 10 -d 16 -q >/dev/null 2>&1 && break
  [ "$attempt" -eq 3 ] && { echo "bench-coalesce: preloading the keys failed" >&2; exit 1; }
  sleep 1
done

cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
hz=$(getconf CLK_TCK)
shard_gets() {
  local total=0 n
  for port in "${shard_ports[@]}"; do
    n=$(redis-cli -p "$port" info commandstats | tr -d '\r' | sed -n 's/^cmdstat_get:calls=\([0-9]*\),.*/\1/p')
    total=$((total + ${n:-0}))
  done
  echo "$total"
}
coalesced() { # metrics port -> "led joined bypassed"
  curl -s "http://127.0.0.1:$1/metrics" | awk '
    /^shardgate_coalesced_reads_total/ {
      if ($0 ~ /outcome="led"/) l += $NF
      else if ($0 ~ /outcome="joined"/) j += $NF
      else if ($0 ~ /outcome="bypassed"/) b += $NF
    }
    END { printf "%d %d %d\n", l, j, b }'
}

load0=$(cut -d' ' -f1 /proc/loadavg)
started=$(date +%s)
results="$tmp/results.jsonl"
: >"$results"
for round in $(seq "$rounds"); do
  order="off on"; [ $((round % 2)) -eq 0 ] && order="on off"
  for target in $order; do
    port=$off_port; pid=$off_pid; mport=$off_metrics
    [ "$target" = on ] && { port=$on_port; pid=$on_pid; mport=$on_metrics; }
    for sp in "${shard_ports[@]}"; do redis-cli -p "$sp" config resetstat >/dev/null; done
    c0=$(coalesced "$mport"); p0=$(cpu_ticks "$pid"); s0=$(cpu_ticks "${shard_pids[@]}")
    out=$(redis-benchmark -p "$port" -c 200 -P 1 -r 10 -t get -d 16 -n "$requests" --csv 2>/dev/null | grep '^"GET"')
    p1=$(cpu_ticks "$pid"); s1=$(cpu_ticks "${shard_pids[@]}"); c1=$(coalesced "$mport")
    gets=$(shard_gets)
    python3 - "$target" "$out" "$requests" "$gets" $((p1 - p0)) $((s1 - s0)) "$hz" "$c0" "$c1" >>"$results" <<'EOF'
import json, sys
target, out, n, gets, pt, st, hz, c0, c1 = sys.argv[1:]
f = [x.strip('"') for x in out.split(",")]
n, gets, hz = int(n), int(gets), int(hz)
c0, c1 = [list(map(int, c.split())) for c in (c0, c1)]
led, joined, bypassed = (b - a for a, b in zip(c0, c1))
print(json.dumps({
    "target": target, "rps": float(f[1]), "p50": float(f[4]), "p99": float(f[6]),
    "backend_per_request": gets / n,
    "proxy_us": int(pt) / hz / n * 1e6, "shard_us": int(st) / hz / n * 1e6,
    "led": led, "joined": joined, "bypassed": bypassed,
}))
EOF
    tail -n 1 "$results"
  done
done
load1=$(cut -d' ' -f1 /proc/loadavg)
elapsed=$(( $(date +%s) - started ))

python3 - "$results" "$rounds" "$requests" "$threads" "$load0" "$load1" "$elapsed" \
  "$(git rev-parse --short=12 HEAD)" "$(nproc)" >"$tmp/section.md" <<'EOF'
import json, statistics, sys, datetime
path, rounds, requests, threads, load0, load1, elapsed, commit, cpus = sys.argv[1:]
runs = [json.loads(l) for l in open(path)]
med = lambda t, k: statistics.median(r[k] for r in runs if r["target"] == t)
print(f"Command: `scripts/bench-coalesce.sh --rounds {rounds} --requests {requests} --threads {threads}` "
      f"({int(elapsed) / 60:.1f} min, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, commit {commit}, "
      f"{cpus} CPUs shared with other builds: load average {load0} at start, {load1} at end). "
      f"Two shardgate processes (`--threads {threads}`) over the same 4 Redis shards, identical maps but for "
      f"`options.coalesce_reads`; `redis-benchmark -c 200 -P 1 -r 10 -t get -d 16 -n {requests}` against each "
      f"in alternation, {rounds} runs each; medians. **backend GETs / client GET** = the shards' `cmdstat_get` "
      f"calls (reset before each run) over the requests; **CPU µs / req** = CPU seconds (user+system) of the "
      f"process(es) over the requests.")
print()
print("| coalesce_reads | req/s | p50 ms | p99 ms | backend GETs / client GET | proxy CPU µs / req | proxy req / CPU-s | shards CPU µs / req | joined share |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for t in ("off", "on"):
    tot = sum(r["led"] + r["joined"] + r["bypassed"] for r in runs if r["target"] == t)
    share = sum(r["joined"] for r in runs if r["target"] == t) / tot if tot else 0.0
    pu = max(med(t, "proxy_us"), 1e-9)
    print(f"| {t} | {med(t, 'rps'):,.0f} | {med(t, 'p50'):.3f} | {med(t, 'p99'):.3f} | "
          f"{med(t, 'backend_per_request'):.3f} | {pu:.2f} | {1e6 / pu:,.0f} | {med(t, 'shard_us'):.2f} | "
          f"{'—' if t == 'off' else f'{share:.1%}'} |")
print()
on_off = lambda k: med("on", k) / max(med("off", k), 1e-9)
print(f"On / off: throughput x{on_off('rps'):.2f}, backend GETs per client GET x{on_off('backend_per_request'):.3f}, "
      f"proxy CPU per request x{on_off('proxy_us'):.2f}, shards' CPU per request x{on_off('shard_us'):.2f}.")
EOF
cat "$tmp/section.md"

python3 - "$tmp/section.md" <<'EOF'
import sys
section = open(sys.argv[1]).read().rstrip("\n")
begin, end = "<!-- BEGIN generated by scripts/bench-coalesce.sh -->", "<!-- END generated by scripts/bench-coalesce.sh -->"
text = open("BENCHMARKS.md").read()
block = f"{begin}\n{section}\n{end}"
if begin in text and end in text:
    text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n## Coalesced reads (`scripts/bench-coalesce.sh`)\n\n" + block + "\n"
open("BENCHMARKS.md", "w").write(text)
EOF
echo "== BENCHMARKS.md updated"

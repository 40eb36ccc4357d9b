#!/usr/bin/env bash
# The near cache, side by side in one run: the same Zipf read load
# (examples/zipf_load.rs, s = 1.1 over 10,000 keys, -P 1) straight to one
# redis-server, through shardgate without the cache, through shardgate with
# the strict near cache (every hit confirmed by a barrier) and with a
# 5 ms staleness bound. Reports GETs per second, the hit rate, and CPU per
# 1,000 GETs of redis-server and of shardgate, and writes the table into
# BENCHMARKS.md (between the near-cache markers).
#
#   scripts/bench-cache.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
keys=10000
conns=50

cargo build --release --locked --bin shardgate --example zipf_load >/dev/null
bin=target/release/shardgate
load=target/release/examples/zipf_load
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$tmp/redis.log" 2>&1 &
rpid=$!; pids+=("$rpid")
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done

# proxy NAME OPTIONS: a shardgate over the one redis-server; sets port/pid/metrics vars.
declare -A pport ppid mport
proxy() {
  local name=$1 options=$2
  printf 'regions:\n  - name: r\nshards:\n  - name: s0\n    region: r\n    primary: 127.0.0.1:%s\n%s' "$rport" "$options" >"$tmp/$name.yaml"
  pport[$name]=$(free_port); mport[$name]=$(free_port)
  "$bin" serve --map "$tmp/$name.yaml" --listen "127.0.0.1:${pport[$name]}" --state-dir "$tmp/state-$name" \
    --metrics-listen "127.0.0.1:${mport[$name]}" >"$tmp/$name.log" 2>&1 &
  ppid[$name]=$!; pids+=("$!")
  for _ in $(seq 100); do redis-cli -p "${pport[$name]}" ping >/dev/null 2>&1 && break; sleep 0.1; done
}
proxy plain ""
proxy strict $'options:\n  near_cache_bytes: 67108864\n'
proxy bounded $'options:\n  near_cache_bytes: 67108864\n  near_cache_max_staleness_ms: 5\n'

populate() { # value size
  python3 - "$keys" "$1" <<'EOF' | redis-cli -p "$rport" --pipe >/dev/null
import sys
keys, size = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout.buffer
v = b"v" * size
for i in range(keys):
    k = b"key:%d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
EOF
}

cache_reads() { # metrics port -> "hits misses"
  python3 - "$1" <<'EOF'
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
get = lambda r: sum(float(l.split()[-1]) for l in body.splitlines() if l.startswith("shardgate_near_cache_reads_total") and f'result="{r}"' in l)
print(int(get("hit") + get("confirmed_hit")), int(get("miss")))
EOF
}

rows=()
run() { # label value-size
  local label=$1 size=$2
  populate "$size"
  for target in direct plain strict bounded; do
    local port=$rport pid="" m=""
    if [ "$target" != direct ]; then port=${pport[$target]}; pid=${ppid[$target]}; m=${mport[$target]}; fi
    # Warm up (fills the cache), then measure.
    "$load" "127.0.0.1:$port" "$conns" "$keys" 1 1.1 >/dev/null
    local h0="0 0" h1="0 0" r0 r1 p0=0 p1=0 out
    [ -n "$m" ] && h0=$(cache_reads "$m")
    r0=$(cpu_ticks "$rpid"); [ -n "$pid" ] && p0=$(cpu_ticks "$pid")
    out=$("$load" "127.0.0.1:$port" "$conns" "$keys" "$seconds" 1.1)
    r1=$(cpu_ticks "$rpid"); [ -n "$pid" ] && p1=$(cpu_ticks "$pid")
    [ -n "$m" ] && h1=$(cache_reads "$m")
    rows+=("$(python3 - "$label" "$target" "$out" $((r1 - r0)) $((p1 - p0)) "$hz" "$h0" "$h1" <<'EOF'
import json, sys
label, target, out, rt, pt, hz = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
h0, m0 = map(int, sys.argv[7].split()); h1, m1 = map(int, sys.argv[8].split())
ops = out["ops"]
rate = ops / out["seconds"]
per_k = lambda t: f"{t / hz * 1000 / max(ops, 1) * 1000:.1f}"
names = {"direct": "redis-server direct", "plain": "shardgate, no cache",
         "strict": "shardgate, near cache (strict)", "bounded": "shardgate, near cache (5 ms bound)"}
hits, misses = h1 - h0, m1 - m0
hit_rate = f"{100 * hits / max(hits + misses, 1):.1f} %" if target in ("strict", "bounded") else "—"
proxy_cpu = per_k(pt) if target != "direct" else "—"
print(f"| {label} | {names[target]} | {rate:,.0f} | {hit_rate} | {per_k(rt)} | {proxy_cpu} |")
EOF
)")
  done
}
run "Zipf 1.1, 10k keys, 100 B values, $conns clients -P 1" 100
run "Zipf 1.1, 10k keys, 4 KiB values, $conns clients -P 1" 4096

table=$(
  echo "| load | target | GETs/s | hit rate | redis CPU ms per 1k GETs | shardgate CPU ms per 1k GETs |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
)
echo "$table"
python3 - "$table" "$seconds" <<'EOF'
import pathlib, re, sys
path = pathlib.Path("BENCHMARKS.md")
text = path.read_text()
block = (
    "<!-- near-cache:begin (generated by scripts/bench-cache.sh) -->\n"
    f"{sys.argv[2]} s per run, one redis-server; every shardgate over that same server; "
    "load generator, proxy and server share the machine's cores.\n\n"
    + sys.argv[1] + "\n<!-- near-cache:end -->"
)
if "<!-- near-cache:begin" in text:
    text = re.sub(r"<!-- near-cache:begin.*?<!-- near-cache:end -->", lambda _: block, text, flags=re.S)
else:
    text += "\n## Near cache (`scripts/bench-cache.sh`)\n\n" + block + "\n"
path.write_text(text)
EOF

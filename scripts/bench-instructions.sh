#!/usr/bin/env bash
# Instructions per request of shardgate binaries, counted by valgrind's
# callgrind: unlike CPU time, the count does not depend on what else the
# machine runs, so two builds compare to within about 1 % even on a busy
# machine. Each binary serves alone (`--threads 1`, slow log off: under
# valgrind every command would be "slow") over the same 4 loopback
# redis-servers; redis-benchmark (50 clients, -P 16) warms it up, the
# counters are zeroed, then N requests run and are counted.
#
#   scripts/bench-instructions.sh LABEL=PATH ...        (T=get|set N=100000)
#
# Prints instructions per request per binary, then the functions whose
# count per request differs most between the first binary and each other
# (callgrind's self cost; inlining moves cost between functions).
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,14p' "$0"; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind is missing: bash scripts/setup.sh" >&2; exit 1; }
T=${T:-get}; N=${N:-100000}
. "$(dirname "$0")/lib-bench.sh"
start_shards
labels=()
for spec in "$@"; do
  label=${spec%%=*}; bin=${spec#*=}; labels+=("$label")
  port=$(free_port)
  # (Builds older than the slow log have no such flag.)
  extra=()
  "$bin" serve --help | grep -q -- --slowlog-log-slower-than && extra=(--slowlog-log-slower-than=-1)
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.$label" --dump-instr=no \
    "$bin" serve --map "$tmp/map.yaml" --listen "127.0.0.1:$port" --state-dir "$tmp/st-$label" \
    --threads 1 "${extra[@]}" >"$tmp/log.$label" 2>&1 &
  vpid=$!; pids+=($vpid)
  for _ in $(seq 1 120); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.5; done
  redis-cli -p "$port" ping >/dev/null 2>&1 || { echo "$label did not start:" >&2; tail -5 "$tmp/log.$label" >&2; exit 1; }
  redis-benchmark -p "$port" -c 50 -P 16 -n 20000 -r 100000 -t "$T" -q >/dev/null 2>&1
  callgrind_control -z "$vpid" >/dev/null
  redis-benchmark -p "$port" -c 50 -P 16 -n "$N" -r 100000 -t "$T" -q >/dev/null 2>&1
  callgrind_control -d "$vpid" >/dev/null
  sleep 1
  kill "$vpid"; wait "$vpid" 2>/dev/null || true
  callgrind_annotate --threshold=100 "$tmp/cg.$label.1" >"$tmp/ann.$label" 2>/dev/null
  ir=$(grep -m1 "PROGRAM TOTALS" "$tmp/ann.$label" | awk '{gsub(",", "", $1); print $1}')
  echo "$T -P 16 $label instructions_per_request=$((ir / N))"
done
python3 - "$N" "$tmp" "${labels[@]}" <<'PY'
import re, sys
n, tmp, labels = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
def load(label):
    d = {}
    for line in open(f"{tmp}/ann.{label}"):
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$", line)
        if m and "PROGRAM TOTALS" in line:
            d[None] = int(m.group(1).replace(",", ""))
        elif m:
            name = re.sub(r" \[/.*\]$", "", m.group(2)).replace("???:", "")
            d[name] = d.get(name, 0) + int(m.group(1).replace(",", ""))
    return d
base = load(labels[0])
for other in labels[1:]:
    d = load(other)
    print(f"\nper request, {labels[0]} -> {other} (largest differences):")
    keys = sorted((set(base) | set(d)) - {None}, key=lambda k: -abs(d.get(k, 0) - base.get(k, 0)))
    shown = 0
    for k in keys:
        a, b = base.get(k, 0) / n, d.get(k, 0) / n
        # Thread entry frames carry the whole program's cost: skip them.
        if a > 0.5 * base[None] / n or b > 0.5 * d[None] / n:
            continue
        print(f"  {a:8.1f} {b:8.1f} {b - a:+8.1f}  {k[:110]}")
        shown += 1
        if shown == 20:
            break
PY

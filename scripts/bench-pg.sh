#!/usr/bin/env bash
# PostgreSQL shards against PostgreSQL itself, side by side in one run
# (issue 15, "Speed"): redis-benchmark SET, GET and INCR through shardgate
# (one postgres shard) and pgbench running the statements the proxy sends
# for them (src/backend/pg/commands.rs), at the same concurrency, on the
# same PostgreSQL 15 server (its defaults: fsync and synchronous_commit on).
# Per run: ops/s, the ratio to pgbench, and CPU per command of the proxy
# and of postgres (postmaster, its live backends and the ones that ended),
# from /proc/PID/stat. Several proxy binaries (--bin, repeated) run in turn
# against the same server, so that a change is compared in one run.
#
#   scripts/bench-pg.sh [--clients N] [--seconds S] [--keys K] [--rounds R]
#                       [--bin LABEL=PATH]... [--threads T] [--write]
#                       [--commands "get set incr"]
#
#   --clients N   redis-benchmark -c and pgbench -c (default 50)
#   --seconds S   length of each run (default 10)
#   --keys K      keyspace of the random keys, -r (default 100000)
#   --rounds R    runs per target, medians reported (default 1)
#   --bin L=P     a shardgate binary to measure, labelled L (default:
#                 this tree's target/release/shardgate, built, as "proxy")
#   --threads T   shardgate --threads (default: one per core)
#   --commands C  the commands to measure (default "get set incr")
#   --write       also write the table into BENCHMARKS.md (between the
#                 bench-pg markers)
#
# The statements pgbench runs, per command (as the proxy sends them;
# redis-benchmark's keys are key:NNNNNNNNNNNN and counter:NNNNNNNNNNNN):
#   GET   one SELECT of the live row                         (1 round trip)
#   SET   SELECT sg_set_strings(keys, slots, values, locks)  (1 round trip)
#   INCR  BEGIN; sg_lock; SELECT ... FOR UPDATE; upsert; COMMIT (5)
# and, for reference, "UPSERT": a bare INSERT ... ON CONFLICT DO UPDATE,
# the cheapest single-statement write (no key lock, no function call).
set -euo pipefail
cd "$(dirname "$0")/.."

clients=50
secs=10
keys=100000
rounds=1
threads=
write=false
commands="get set incr"
bins=()
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients=$2; shift ;;
    --seconds) secs=$2; shift ;;
    --keys) keys=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --bin) bins+=("$2"); shift ;;
    --threads) threads=$2; shift ;;
    --write) write=true ;;
    --commands) commands=$2; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "bench-pg: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for v in "$clients" "$secs" "$keys" "$rounds" ${threads:+"$threads"}; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "bench-pg: '$v' is not a positive integer" >&2; exit 2; }
done
if [ ${#bins[@]} -eq 0 ]; then
  cargo build --release --locked --bin shardgate >/dev/null
  bins=("proxy=$PWD/target/release/shardgate")
fi
for b in "${bins[@]}"; do
  [[ "$b" == *=* && -x "${b#*=}" ]] || { echo "bench-pg: --bin $b: want LABEL=PATH of an executable" >&2; exit 2; }
done
PGBIN=/usr/lib/postgresql/15/bin
[ -x "$PGBIN/pgbench" ] || { echo "bench-pg: $PGBIN/pgbench missing (scripts/setup.sh installs PostgreSQL)" >&2; exit 1; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then su postgres -c "$*"; else bash -c "$*"; fi; }

tmp=$(mktemp -d /tmp/shardgate-bench-pg.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$tmp/pg/postmaster.pid" ] && as_postgres "$PGBIN/pg_ctl -D $tmp/pg -m immediate stop" >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r -a ports <<<"$(python3 bench/run.py free-ports $((1 + 2 * ${#bins[@]})))"
pgport=${ports[0]}

chmod 755 "$tmp"
mkdir "$tmp/pg"
touch "$tmp/pg.log"
[ "$(id -u)" -eq 0 ] && chown postgres "$tmp/pg" "$tmp/pg.log"
as_postgres "$PGBIN/initdb -D $tmp/pg -A trust -U postgres" >/dev/null
as_postgres "$PGBIN/pg_ctl -D $tmp/pg -o '-p $pgport -k $tmp/pg -c listen_addresses=127.0.0.1 -c max_connections=400' -l $tmp/pg.log -w start" >/dev/null
pgpid=$(head -1 "$tmp/pg/postmaster.pid")

# One proxy per binary, all over the same database.
labels=(); proxy_pids=(); proxy_ports=(); metrics_ports=()
i=0
for b in "${bins[@]}"; do
  label=${b%%=*}; bin=${b#*=}
  port=${ports[$((1 + 2 * i))]}; mport=${ports[$((2 + 2 * i))]}
  cat >"$tmp/map-$label.yaml" <<EOF
regions:
  - name: r
options:
  pg_pool_size: $clients
shards:
  - name: pg
    region: r
    kind: postgres
    primary: postgres://postgres@127.0.0.1:$pgport/postgres
EOF
  "$bin" serve --map "$tmp/map-$label.yaml" --listen "127.0.0.1:$port" ${threads:+--threads "$threads"} \
    --metrics-listen "127.0.0.1:$mport" --state-dir "$tmp/state-$label" >"$tmp/proxy-$label.log" 2>&1 &
  p=$!; pids+=("$p")
  labels+=("$label"); proxy_pids+=("$p"); proxy_ports+=("$port"); metrics_ports+=("$mport")
  for _ in $(seq 300); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$port" ping >/dev/null || { echo "bench-pg: proxy $label did not start:" >&2; cat "$tmp/proxy-$label.log" >&2; exit 1; }
  i=$((i + 1))
done

hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Postgres: the postmaster with its ended children (cutime, cstime) and
# its live children.
pg_ticks() {
  local t p
  t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pgpid/stat")
  for p in $(pgrep -P "$pgpid"); do t=$((t + $(ticks "$p"))); done
  echo "$t"
}

# pgbench scripts: the proxy's statements (slot 0 and the key number as
# lock id: neither changes the work).
KEY="convert_to('key:' || lpad(:k::text, 12, '0'), 'UTF8')"
CTR="convert_to('counter:' || lpad(:k::text, 12, '0'), 'UTF8')"
cat >"$tmp/get.sql" <<EOF
\set k random(0, $((keys - 1)))
SELECT sg_now_ms() AS now, k.type, k.value, k.expires_at FROM (SELECT 1) AS one LEFT JOIN kv k ON k.kd = sha256($KEY) AND k.key = $KEY AND (expires_at IS NULL OR expires_at > sg_now_ms());
EOF
cat >"$tmp/set.sql" <<EOF
\set k random(0, $((keys - 1)))
SELECT sg_set_strings(ARRAY[$KEY], ARRAY[0], ARRAY[convert_to('xxx', 'UTF8')], ARRAY[:k::bigint]);
EOF
cat >"$tmp/upsert.sql" <<EOF
\set k random(0, $((keys - 1)))
INSERT INTO kv (key, slot, type, value, expires_at) VALUES ($KEY, 0, 0, convert_to('xxx', 'UTF8'), NULL) ON CONFLICT (kd) DO UPDATE SET type = 0, value = EXCLUDED.value, expires_at = EXCLUDED.expires_at;
EOF
cat >"$tmp/incr.sql" <<EOF
\set k random(0, $((keys - 1)))
BEGIN;
SELECT sg_lock(ARRAY[:k::bigint]);
SELECT COALESCE((SELECT convert_from(value, 'UTF8')::bigint FROM kv WHERE kd = sha256($CTR) AND key = $CTR FOR UPDATE), 0) + 1 AS v \gset
INSERT INTO kv (key, slot, type, value, expires_at) VALUES ($CTR, 0, 0, convert_to(:v::text, 'UTF8'), NULL) ON CONFLICT (kd) DO UPDATE SET type = 0, value = EXCLUDED.value, expires_at = EXCLUDED.expires_at;
COMMIT;
EOF

results=$tmp/results
: >"$results"
# One run: "target command ops/s proxy_us_per_op pg_us_per_op".
run_proxy() { # index command
  local i=$1 t=$2 n p0 g0 p1 g1 out ops
  # About $secs seconds at the rate of this proxy's warm-up run.
  n=$(python3 -c "print(max(2000, int(float('${rate[$i.$t]}') * $secs)))")
  p0=$(ticks "${proxy_pids[$i]}"); g0=$(pg_ticks)
  out=$(redis-benchmark -p "${proxy_ports[$i]}" -c "$clients" -n "$n" -r "$keys" -t "$t" -d 3 --csv 2>/dev/null | grep -i "^\"$t\"" | tail -1 || true)
  p1=$(ticks "${proxy_pids[$i]}"); g1=$(pg_ticks)
  ops=$(echo "$out" | cut -d, -f2 | tr -d '"')
  echo "${labels[$i]} $t $ops $(python3 -c "print(round(($p1 - $p0) / $hz * 1e6 / $n, 1), round(($g1 - $g0) / $hz * 1e6 / $n, 1))")" >>"$results"
}
run_pgbench() { # command
  local t=$1 g0 g1 out tps txs
  g0=$(pg_ticks)
  out=$("$PGBIN/pgbench" -n -h 127.0.0.1 -p "$pgport" -U postgres -c "$clients" -j 2 -T "$secs" -M prepared -f "$tmp/$t.sql" postgres 2>&1) \
    || { echo "bench-pg: pgbench $t failed:" >&2; echo "$out" >&2; exit 1; }
  g1=$(pg_ticks)
  tps=$(echo "$out" | awk '/^tps = / {print $3; exit}')
  txs=$(echo "$out" | awk '/number of transactions actually processed/ {print $NF}' | cut -d/ -f1)
  echo "pgbench $t $tps - $(python3 -c "print(round(($g1 - $g0) / $hz * 1e6 / max(1, $txs), 1))")" >>"$results"
}

# Warm-up (fills the keys, connects the pools) and each proxy's rate.
declare -A rate
for i in "${!labels[@]}"; do
  for t in set $commands; do
    [ "$t" = set ] && [ -n "${rate[$i.set]:-}" ] && continue
    out=$(redis-benchmark -p "${proxy_ports[$i]}" -c "$clients" -n $((clients * 200)) -r "$keys" -t "$t" -d 3 --csv 2>/dev/null | grep -i "^\"$t\"" | tail -1 || true)
    rate[$i.$t]=$(echo "$out" | cut -d, -f2 | tr -d '"')
  done
done
for round in $(seq "$rounds"); do
  for t in $commands; do
    # Alternate the order each round.
    if [ $((round % 2)) -eq 1 ]; then run_pgbench "$t"; fi
    for i in "${!labels[@]}"; do run_proxy "$i" "$t"; done
    if [ $((round % 2)) -eq 0 ]; then run_pgbench "$t"; fi
  done
  run_pgbench upsert
done

proxy_metrics=$tmp/metrics
: >"$proxy_metrics"
for i in "${!labels[@]}"; do
  curl -s "http://127.0.0.1:${metrics_ports[$i]}/metrics" | grep '^shardgate_pg_batch' | sed "s/^/${labels[$i]} /" >>"$proxy_metrics" || true
done

cat "$results" >&2
python3 - "$results" "$clients" "$secs" "$keys" "$rounds" "$(nproc)" "${threads:-$(nproc)}" "$write" "$proxy_metrics" <<'EOF'
import statistics, sys
path, clients, secs, keys, rounds, cores, threads, write, metrics = sys.argv[1:]
runs = {}
for line in open(path):
    target, cmd, ops, pcpu, gcpu = line.split()
    runs.setdefault((target, cmd), []).append((float(ops), pcpu, float(gcpu)))
def med(target, cmd):
    r = runs.get((target, cmd))
    if not r:
        return None
    ops = statistics.median(x[0] for x in r)
    pc = [float(x[1]) for x in r if x[1] != "-"]
    return ops, (statistics.median(pc) if pc else None), statistics.median(x[2] for x in r)
targets = []
for (t, _) in runs:
    if t != "pgbench" and t not in targets:
        targets.append(t)
goal = {"get": 0.8, "set": 1.5, "incr": 1.0}
out = [f"{clients} clients, {secs} s per run, {keys} keys, median of {rounds} round(s); "
       f"{cores} cores shared with the load generators (and other work: noisy), "
       f"shardgate --threads {threads}, PostgreSQL 15 defaults (fsync on, synchronous_commit on).", "",
       "| command | target | ops/s | vs pgbench (goal) | proxy CPU µs/op | postgres CPU µs/op |",
       "|---|---|---|---|---|---|"]
for cmd in ["get", "set", "incr"]:
    b = med("pgbench", cmd)
    if not b:
        continue
    out.append(f"| {cmd.upper()} | pgbench, same SQL | {b[0]:.0f} | 1.00x | - | {b[2]:.1f} |")
    for t in targets:
        m = med(t, cmd)
        if m:
            ratio = m[0] / b[0]
            ok = "met" if ratio >= goal[cmd] else "missed"
            out.append(f"| {cmd.upper()} | {t} | {m[0]:.0f} | {ratio:.2f}x (>= {goal[cmd]}x: {ok}) | {m[1]:.1f} | {m[2]:.1f} |")
u = med("pgbench", "upsert")
if u:
    out.append(f"| (UPSERT) | pgbench, bare INSERT ... ON CONFLICT | {u[0]:.0f} | - | - | {u[2]:.1f} |")
text = "\n".join(out) + "\n"
print(text)
extra = open(metrics).read()
if extra:
    print("Group commit counters at the end:\n" + extra)
if write == "true":
    section = "<!-- pg:begin (generated by scripts/bench-pg.sh) -->\n" + text + "<!-- pg:end -->"
    doc = open("BENCHMARKS.md").read()
    a, b = doc.find("<!-- pg:begin"), doc.find("<!-- pg:end -->")
    if a < 0 or b < 0:
        sys.exit("BENCHMARKS.md has no bench-pg markers")
    open("BENCHMARKS.md", "w").write(doc[:a] + section + doc[b + len("<!-- pg:end -->"):])
    print("== BENCHMARKS.md updated")
EOF

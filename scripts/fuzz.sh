#!/usr/bin/env bash
# Fuzzes request parsing + command classification + routing (`request`) and
# backend reply framing (`reply`) with cargo-fuzz (libFuzzer).
#   scripts/fuzz.sh            # 20 s per target, release build
#   scripts/fuzz.sh 30 --dev   # 30 s per target, dev build (what scripts/test.sh runs)
#   scripts/fuzz.sh 3600       # an hour per target, on demand
# --dev builds in 5 minutes instead of 9-10 on 2 cores, and runs about 16
# times fewer inputs per second (fuzz/Cargo.toml says why).
# Runs on the stable toolchain with `--sanitizer none` (no nightly here);
# a crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
profile=()
if [ "${2:-}" = "--dev" ]; then profile=(--dev); fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
cargo fuzz build -s none "${profile[@]}"
for target in request reply; do
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run -s none "${profile[@]}" "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 | tail -n 25
done

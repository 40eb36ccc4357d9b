#!/usr/bin/env bash
# Fuzzes request parsing + command classification + routing (`request`) and
# backend reply framing (`reply`) with cargo-fuzz (libFuzzer).
#   scripts/fuzz.sh            # 20 s per target (what scripts/test.sh runs)
#   scripts/fuzz.sh 3600       # an hour per target, on demand
# Runs on the stable toolchain with `--sanitizer none` (no nightly here);
# a crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --version 0.13.2
fi
cargo fuzz build -s none
for target in request reply; do
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run -s none "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 | tail -n 25
done

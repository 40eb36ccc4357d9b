#!/usr/bin/env bash
# Sets up the machine and runs every test: Rust unit, property and
# integration tests (real redis-server processes on loopback), then the
# Python end-to-end suite (redis-py against the proxy and a plain Redis).
# Builds once; tests run in parallel where independent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== build"
cargo build --all-targets --locked

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

echo "== rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
  cargo test --locked --doc
else
  cargo test --locked --no-fail-fast
fi

echo "== python end-to-end tests"
SHARDGATE_BIN="$PWD/target/debug/shardgate" python3 -m pytest -q -n 2 integration

echo "== fuzz (short; scripts/fuzz.sh SECONDS for longer)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"

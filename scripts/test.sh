#!/usr/bin/env bash
# Sets up the machine and runs every test: Rust unit, property and
# integration tests (real redis-server processes on loopback), then the
# Python end-to-end suite (redis-py against the proxy and a plain Redis).
# Builds once; tests run in parallel where independent.
# `--image` also builds the container image from deploy/Dockerfile with
# podman and checks it (scripts/test-image.sh: about 10 minutes more, most
# of it the release build inside the image, so not in every CI run).
# `--fuzz` also runs the cargo-fuzz targets for 30 s each (a libFuzzer
# build of its own: about 6 minutes more on 2 cores). Their checks
# (fuzz/checks.rs) run in every run anyway, on random inputs, in
# tests/protocol_props.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
image=0 fuzz=0
for arg in "$@"; do
  case "$arg" in
    --image) image=1 ;;
    --fuzz) fuzz=1 ;;
    *) echo "usage: scripts/test.sh [--image] [--fuzz]" >&2; exit 2 ;;
  esac
done
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

if [ "$fuzz" = 1 ]; then
  echo "== fuzz (short, dev build; scripts/fuzz.sh SECONDS for longer)"
  bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}" --dev
fi

if [ "$image" = 1 ]; then
  echo "== container image (podman)"
  bash scripts/test-image.sh
fi

#!/usr/bin/env bash
# Builds the container image from deploy/Dockerfile with podman (the
# Dockerfile's own multi-stage build: cargo build --release inside the build
# stage) and checks the image a user gets: it runs as user 65532, it is
# small, its default command serves clients against a real redis-server on
# this machine's loopback, its HEALTHCHECK passes, /readyz answers, and
# SIGTERM (`podman stop`) ends it with status 0.
#
# This machine reaches no container registry, so the two base images the
# Dockerfile names (rust:1.94-slim-bookworm, distroless cc-debian12) are
# replaced by stand-ins made here from Debian bookworm with mmdebstrap and
# passed as the Dockerfile's build arguments RUST_IMAGE and RUNTIME_IMAGE:
#   - the build stand-in: Debian with gcc, apt and this machine's Rust
#     toolchain in the official rust image's layout (/usr/local/cargo,
#     /usr/local/rustup);
#   - the runtime stand-in: what distroless cc has (libc6, libgcc-s1,
#     ca-certificates), with no shell on the image's PATH use.
# Stand-ins are kept (tagged localhost/shardgate-*-standin) and reused.
#
# Usage: scripts/test-image.sh    (run by scripts/test.sh --image; about
# 10 minutes on 2 cores, most of it the release build inside the image)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
for c in podman runc mmdebstrap; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test-image: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

tmp=$(mktemp -d)
name=shardgate-image-test-$$
redis_pid=
cleanup() {
  podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
  [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "test-image: FAIL: $*" >&2; exit 1; }

# Podman settings that work inside a container without cgroup delegation
# (as on CI here): runc with cgroupfs, the host's network namespace, and
# resource limits no higher than this process may set (podman's defaults
# raise them, which needs CAP_SYS_RESOURCE). On a machine with a normal
# podman or docker none of this is needed.
nofile=$(ulimit -Hn)
cat > "$tmp/containers.conf" <<EOF
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[containers]
netns = "host"
default_ulimits = ["nofile=$nofile:$nofile", "nproc=4096:4096"]
EOF
export CONTAINERS_CONF="$tmp/containers.conf"

image_exists() { podman image exists "$1"; }

# The build stand-in: Debian bookworm + gcc + this machine's stable Rust
# toolchain, laid out as the official rust image lays it out.
RUST_STANDIN=localhost/shardgate-rust-standin:bookworm
if ! image_exists "$RUST_STANDIN"; then
  echo "== build stand-in for rust:1.94-slim-bookworm"
  toolchain=$(rustc --print sysroot)
  rustup_bin=$(command -v rustup || true)
  [ -n "$rustup_bin" ] || fail "rustup not found (the stand-in copies this machine's toolchain)"
  mmdebstrap --quiet --variant=apt --include=gcc,libc6-dev,ca-certificates \
    --customize-hook="mkdir -p \"\$1/usr/local/rustup/toolchains\" \"\$1/usr/local/cargo/bin\"" \
    --customize-hook="cp -a '$toolchain' \"\$1/usr/local/rustup/toolchains/stable-x86_64-unknown-linux-gnu\"" \
    --customize-hook="cp '$rustup_bin' \"\$1/usr/local/cargo/bin/rustup\"" \
    --customize-hook="for t in cargo rustc rustdoc; do ln -s rustup \"\$1/usr/local/cargo/bin/\$t\"; done" \
    --customize-hook="printf 'version = \"12\"\ndefault_toolchain = \"stable-x86_64-unknown-linux-gnu\"\nprofile = \"minimal\"\n' > \"\$1/usr/local/rustup/settings.toml\"" \
    --customize-hook="rm -rf \"\$1/usr/local/rustup/toolchains/stable-x86_64-unknown-linux-gnu/share/doc\"" \
    bookworm "$tmp/rust.tar"
  podman import --quiet \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tmp/rust.tar" "$RUST_STANDIN" >/dev/null
  rm -f "$tmp/rust.tar"
fi

# The runtime stand-in: what distroless cc-debian12 holds (glibc, libgcc,
# CA certificates), without apt or a package database to speak of.
RUNTIME_STANDIN=localhost/shardgate-runtime-standin:bookworm
if ! image_exists "$RUNTIME_STANDIN"; then
  echo "== build stand-in for gcr.io/distroless/cc-debian12:nonroot"
  mmdebstrap --quiet --variant=essential --include=libgcc-s1,ca-certificates \
    --customize-hook="rm -rf \"\$1/usr/share/doc\" \"\$1/usr/share/man\" \"\$1/usr/share/locale\" \"\$1/var/cache/apt\" \"\$1/var/lib/apt/lists\"" \
    bookworm "$tmp/runtime.tar"
  podman import --quiet "$tmp/runtime.tar" "$RUNTIME_STANDIN" >/dev/null
  rm -f "$tmp/runtime.tar"
fi

echo "== podman build -f deploy/Dockerfile"
started=$(date +%s)
# Docker format keeps the HEALTHCHECK (OCI image configs have none). The
# host's CA bundle is mounted over the build stage's: it holds the
# roots of this machine's egress proxy, through which cargo reaches
# crates.io (on an ordinary machine it is the same public roots).
podman build --quiet --network host --format docker \
  --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
  --build-arg RUST_IMAGE="$RUST_STANDIN" \
  --build-arg RUNTIME_IMAGE="$RUNTIME_STANDIN" \
  -f deploy/Dockerfile -t localhost/shardgate:test "$ROOT" >"$tmp/build.log" 2>&1 \
  || { tail -40 "$tmp/build.log"; fail "podman build failed"; }
echo "   built in $(( $(date +%s) - started )) s"

# What the image says about itself.
user=$(podman image inspect --format '{{.Config.User}}' localhost/shardgate:test)
[ "$user" = "65532:65532" ] || fail "image user is '$user', want 65532:65532"
entry=$(podman image inspect --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}}' localhost/shardgate:test)
[ "$entry" = '["/usr/local/bin/shardgate"] ["serve","--config","/etc/shardgate/shardgate.toml"]' ] \
  || fail "entrypoint/cmd: $entry"
size=$(podman image inspect --format '{{.Size}}' localhost/shardgate:test)
base=$(podman image inspect --format '{{.Size}}' "$RUNTIME_STANDIN")
added=$(( (size - base) / 1024 / 1024 ))
echo "   image: $((size / 1024 / 1024)) MiB, of which $added MiB over the runtime base"
[ "$added" -lt 60 ] || fail "the image adds $added MiB to its base (binary and config expected under 60 MiB)"

# A real redis-server on loopback, and the image's default command serving it.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RPORT=$(free_port); PPORT=$(free_port); MPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >"$tmp/redis.log" 2>&1 &
redis_pid=$!
cat > "$tmp/map.yaml" <<EOF
regions:
  - name: local
shards:
  - name: s0
    region: local
    primary: 127.0.0.1:$RPORT
EOF
chmod 644 "$tmp/map.yaml"; chmod 755 "$tmp"
# The image's own config (deploy/shardgate.toml) with its map mounted where
# it expects it; ports moved to free ones (host network), the metrics
# listener where the HEALTHCHECK asks.
# (No systemd here for podman's health-check timer: the check is run once
# by hand below, `podman healthcheck run`.)
podman run -d --name "$name" --health-interval disable \
  -e SHARDGATE_ADMIN_PASSWORD=image-test \
  -v "$tmp/map.yaml:/etc/shardgate/map.yaml:ro" \
  localhost/shardgate:test serve --config /etc/shardgate/shardgate.toml \
  --listen "127.0.0.1:$PPORT" --metrics-listen "127.0.0.1:9121" >/dev/null \
  || fail "podman run failed"
for _ in $(seq 100); do
  redis-cli -p "$PPORT" ping 2>/dev/null | grep -q PONG && break
  sleep 0.2
done
redis-cli -p "$PPORT" ping | grep -q PONG || { podman logs "$name" | tail -20; fail "the container does not answer PING"; }
[ "$(redis-cli -p "$PPORT" set image:k v)" = OK ] || fail "SET through the container"
[ "$(redis-cli -p "$RPORT" get image:k)" = v ] || fail "the key did not reach the shard"
[ "$(redis-cli -p "$PPORT" get image:k)" = v ] || fail "GET through the container"
uid=$(podman top "$name" huser | tail -1 | tr -d ' ')
[ "$uid" = 65532 ] || fail "the proxy runs as '$uid', want 65532"
podman healthcheck run "$name" >/dev/null || fail "HEALTHCHECK failed"
curl -fsS "http://127.0.0.1:9121/readyz" >/dev/null || fail "/readyz"
podman stop -t 10 "$name" >/dev/null 2>&1
status=$(podman inspect --format '{{.State.ExitCode}}' "$name")
[ "$status" = 0 ] || { podman logs "$name" | tail -20; fail "exit status after SIGTERM: $status"; }
echo "test-image: OK (user 65532, served SET/GET, healthy, ready, stopped with status 0)"

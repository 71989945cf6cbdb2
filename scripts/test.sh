#!/usr/bin/env bash
# The whole test suite: installs the real peers it needs (the reference registry, skopeo,
# htpasswd, HAProxy, and the container clients containerd, podman and dockerd), then runs every test.
# tests/clients.rs runs those clients' daemons, so it needs root (it fails, saying so, without).
# Usage: scripts/test.sh [cargo test args...]
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# tests/scaleout.rs: nodes behind HAProxy (deploy/haproxy/haproxy.cfg).
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# containerd (with ctr), podman, dockerd (docker.io, with the docker CLI); unshare is util-linux.
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v podman >/dev/null 2>&1 || need+=(podman)
{ command -v dockerd || test -x /usr/sbin/dockerd; } >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 || need+=(docker.io)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test peers: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# `failpoints` adds named pauses the crash and race tests need (never in release builds).
cargo test --locked --all-targets --features failpoints "$@"

# The .deb: built, its contents checked, lintian without errors (skip with PACKAGE=0).
if [ "${PACKAGE:-1}" != 0 ]; then
  scripts/package.sh
fi

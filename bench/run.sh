#!/usr/bin/env bash
# The side-by-side benchmark, one command: ringcache vs the reference registry in proxy mode vs
# nginx (sendfile), on this machine, loopback only. Installs what it needs (Debian), builds the
# release binary, runs every scenario 3 times (bench/harness/), prints the table and writes
# target/bench/results.jsonl (+ results.md). Takes ~10 minutes and ~12 GiB of free disk.
# Usage: bench/run.sh [--reps N] [--secs S] [--only abcdeft] [--quick]   (t: TLS vs nginx, not in the default set)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v nginx >/dev/null || need+=(nginx-light)
command -v ab >/dev/null || need+=(apache2-utils)
command -v skopeo >/dev/null || need+=(skopeo)
command -v pgrep >/dev/null || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --locked --quiet
BENCH_RINGCACHE=target/release/ringcache exec cargo bench --locked --quiet --bench harness -- --bench "$@"

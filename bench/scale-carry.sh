#!/usr/bin/env bash
# Builds the folder bench/scale.sh needs on a lent 16-core machine (which reaches no package
# registry): the release ringcache, the `load` bench binary, nginx with its libraries, a store
# warmed here with one 1 KiB blob (stopped with SIGTERM, so its journal holds the repository link
# and hits need no upstream), the same blob under www/ for nginx, and its digest.
# Usage: bench/scale-carry.sh [DIR]   (default .benchcarry, git-excluded)
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-.benchcarry}
command -v docker-registry >/dev/null && command -v nginx >/dev/null || {
  echo "needs docker-registry and nginx (bench/run.sh installs them)"; exit 1; }
cargo build --release --locked --quiet
load=$(cargo bench --locked --no-run --bench load 2>&1 | sed -n 's/.*(\(target\/[^)]*\)).*/\1/p')
rm -rf "$C"; mkdir -p "$C/lib" "$C/www"
cp target/release/ringcache "$C/"; cp "$load" "$C/load"; strip "$C/ringcache" "$C/load"; cp "$(command -v nginx)" "$C/nginx"
ldd "$C/nginx" | awk '/=> \//{print $3}' | grep -v -e libc.so -e ld-linux | xargs -I{} cp {} "$C/lib/"
t=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$t"' EXIT
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
head -c 1024 /dev/urandom > "$t/blob"
D=sha256:$(sha256sum "$t/blob" | cut -d' ' -f1)
printf 'version: 0.1\nstorage: {filesystem: {rootdirectory: %s/origin}}\nhttp: {addr: 127.0.0.1:7100}\nlog: {level: error}\n' "$t" > "$t/origin.yml"
docker-registry serve "$t/origin.yml" > "$t/origin.log" 2>&1 &
wait_port 7100
loc=$(curl -sSf -X POST -D - -o /dev/null http://127.0.0.1:7100/v2/bench/small/blobs/uploads/ | tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
case $loc in *\?*) sep='&' ;; *) sep='?' ;; esac
case $loc in http*) ;; *) loc=http://127.0.0.1:7100$loc ;; esac
curl -sSf -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$t/blob" "$loc${sep}digest=$D" -o /dev/null
printf 'version: 0.1\nhttp: {addr: 127.0.0.1:7101}\nstorage: {filesystem: {rootdirectory: %s/store}}\nproxy: {remoteurl: http://127.0.0.1:7100}\nlog: {level: warn}\n' "$t" > "$t/rc.yml"
"$C/ringcache" serve --config "$t/rc.yml" > "$t/rc.log" 2>&1 & rc=$!
wait_port 7101
curl -sSf "http://127.0.0.1:7101/v2/bench/small/blobs/$D" | cmp - "$t/blob"
kill -TERM $rc; wait $rc || true
cp -r "$t/store" "$C/store"
mkdir -p "$C/www/v2/bench/small/blobs"; cp "$t/blob" "$C/www/v2/bench/small/blobs/$D"
echo "$D" > "$C/digest"
du -sh "$C"

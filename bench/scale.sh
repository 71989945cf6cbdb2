#!/usr/bin/env bash
# Thread-per-core scaling: warm 1 KiB blob GETs (64 keep-alive connections, bodies verified)
# with 1, 2, 4, 8 workers for ringcache and nginx, each pinned to the first N cores and the
# load generator to cores 8-15 (on a 16-core machine). Needs a carried folder (CARRY) with
# ringcache, load (bench/load.rs), nginx + its libraries, a warm store and the same file for
# nginx under www/: bench/scale-carry.sh builds it (carry .benchcarry). No upstream is
# used: every request is a hit. Prints JSON lines. WORKERS="1 2" LOAD_CORES=1 SECS=2 tries it on a
# small machine.
set -u
C=$(cd "${CARRY:-.benchcarry}" && pwd); D=$(cat "$C/digest"); OUT=${OUT:-/tmp}
export LD_LIBRARY_PATH=$C/lib
mkdir -p /var/lib/nginx 2>/dev/null # nginx's compiled-in temp path, absent on a bare machine
echo "{\"cores\":$(nproc)}"
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
load() { taskset -c "${LOAD_CORES:-8-15}" "$C/load" --bench --url "http://127.0.0.1:$1/v2/bench/small/blobs/$D" --conns 64 --secs "${SECS:-5}"; }
for w in ${WORKERS:-1 2 4 8}; do
  cores="0-$((w - 1))"
  root=$(mktemp -d); cp -r "$C/store/." "$root/"
  printf 'version: 0.1\nhttp: {addr: 127.0.0.1:7000}\nstorage: {filesystem: {rootdirectory: %s}}\nproxy: {remoteurl: http://127.0.0.1:9}\nlog: {level: warn}\nringcache: {workers: %s}\n' "$root" "$w" > "$root.yml"
  taskset -c "$cores" "$C/ringcache" serve --config "$root.yml" > "$root.log" 2>&1 & pid=$!
  wait_port 7000 || { cat "$root.log"; exit 1; }
  echo "{\"system\":\"ringcache\",\"workers\":$w,\"result\":$(load 7000)}" | tee -a "$OUT/scale.jsonl"
  kill $pid; wait $pid 2>/dev/null
  chmod 755 "$C" "$C/www"
  printf 'worker_processes %s; pid %s/ng.pid; error_log %s/ng.err; daemon on;\nevents { worker_connections 4096; }\nhttp { access_log off; sendfile on; keepalive_requests 1000000;\n server { listen 127.0.0.1:7001 reuseport; root %s/www; default_type application/octet-stream; } }\n' "$w" "$root" "$root" "$C" > "$root.ng"
  taskset -c "$cores" "$C/nginx" -c "$root.ng" -p "$root" || { cat "$root/ng.err"; exit 1; }
  wait_port 7001 || exit 1
  echo "{\"system\":\"nginx\",\"workers\":$w,\"result\":$(load 7001)}" | tee -a "$OUT/scale.jsonl"
  kill "$(cat "$root/ng.pid")"; sleep 0.3
done

#!/usr/bin/env bash
# Warm-path baseline: ringcache vs the reference registry in proxy mode vs nginx (sendfile)
# serving the same blobs, on loopback. Small objects: wrk, 64 keep-alive connections, 2
# threads; large: one curl client. Prints a table with ringcache's ratio to each. A first
# piece of the bench/ harness (issue 5): no repetitions or idle-waits yet.
# Usage: bench/warm.sh [large_mib=256] [seconds=5]
set -euo pipefail
cd "$(dirname "$0")/.."
LARGE_MIB=${1:-256}
SECS=${2:-5}
for b in docker-registry nginx wrk curl python3; do
  command -v $b >/dev/null || { echo "missing $b (apt-get install -y docker-registry nginx-light wrk curl python3)"; exit 1; }
done
cargo build --release --quiet
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; [ -f $W/nginx.pid ] && kill $(cat $W/nginx.pid) 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened"; exit 1; }
O=$(port); P=$(port); N=$(port)
printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\n' "$W/origin" "$O" > $W/origin.yml
printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\nproxy: {remoteurl: http://127.0.0.1:%s}\n' "$W/ref" "$P" "$O" > $W/ref.yml
printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:0}\nproxy: {remoteurl: http://127.0.0.1:%s}\n' "$W/rc" "$O" > $W/rc.yml
docker-registry serve $W/origin.yml > $W/origin.log 2>&1 &
wait_port $O
docker-registry serve $W/ref.yml > $W/ref.log 2>&1 &
wait_port $P
RUST_LOG=ringcache=info,ringcache::access=off target/release/ringcache serve --config $W/rc.yml > $W/rc.log 2>&1 &
for _ in $(seq 200); do grep -q "listening on" $W/rc.log && break; sleep 0.05; done
R=$(grep -o 'listening on [0-9.:]*' $W/rc.log | awk '{print $3}' | cut -d: -f2)
small=$(python3 bench/seed.py blob http://127.0.0.1:$O bench/warm 1024 1)
large=$(python3 bench/seed.py blob http://127.0.0.1:$O bench/warm $((LARGE_MIB * 1048576)) 2)
# Warm both caches; nginx serves the very same files under the same URLs.
for p in $P $R; do for d in $small $large; do curl -sf -o /dev/null http://127.0.0.1:$p/v2/bench/warm/blobs/$d; done; done
mkdir -p "$W/www/v2/bench/warm/blobs"
for d in $small $large; do h=${d#sha256:}; cp "$W/rc/blobs/sha256/${h:0:2}/$h" "$W/www/v2/bench/warm/blobs/$d"; done
cat > $W/nginx.conf <<NGX
worker_processes 2; pid $W/nginx.pid; error_log $W/nginx.err; daemon on;
events { worker_connections 4096; }
http { access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  server { listen 127.0.0.1:$N; root $W/www; default_type application/octet-stream; } }
NGX
chmod 755 "$W"; chmod -R a+rX "$W/www"
nginx -c $W/nginx.conf
wait_port $N
for p in $P $R $N; do
  code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$p/v2/bench/warm/blobs/$small)
  [ "$code" = 200 ] || { echo "port $p answers $code for the small blob"; exit 1; }
done
rps() { wrk -t2 -c64 -d${SECS}s --latency "http://127.0.0.1:$1/v2/bench/warm/blobs/$small" 2>/dev/null | awk '/Requests\/sec/ {r=$2} / 50%/ {p50=$2} / 99%/ {p99=$2} END {print r, p50, p99}'; }
gbps() { local best=0; for _ in 1 2 3; do t=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$1/v2/bench/warm/blobs/$large"); v=$(echo "$LARGE_MIB / 1024 / $t" | bc -l); best=$(echo "if ($v > $best) $v else $best" | bc -l); done; printf '%.2f' "$best"; }
read -r ref_rps ref_p50 ref_p99 <<<"$(rps $P)"
read -r rc_rps rc_p50 rc_p99 <<<"$(rps $R)"
read -r ng_rps ng_p50 ng_p99 <<<"$(rps $N)"
ref_g=$(gbps $P); rc_g=$(gbps $R); ng_g=$(gbps $N)
printf "%-40s %12s %12s %12s %10s %10s\n" "scenario" "reference" "nginx" "ringcache" "rc/ref" "rc/nginx"
printf "%-40s %12.0f %12.0f %12.0f %9.2fx %9.2fx\n" "warm 1 KiB blob GET, 64 conns: req/s" $ref_rps $ng_rps $rc_rps $(echo "$rc_rps/$ref_rps" | bc -l) $(echo "$rc_rps/$ng_rps" | bc -l)
printf "%-40s %12s %12s %12s\n" "  p50 / p99 latency" "$ref_p50/$ref_p99" "$ng_p50/$ng_p99" "$rc_p50/$rc_p99"
printf "%-40s %12s %12s %12s %9.2fx %9.2fx\n" "warm ${LARGE_MIB} MiB blob, 1 client: GB/s" $ref_g $ng_g $rc_g $(echo "$rc_g/$ref_g" | bc -l) $(echo "$rc_g/$ng_g" | bc -l)

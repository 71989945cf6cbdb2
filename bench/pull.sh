#!/usr/bin/env bash
# Side-by-side pull figures: ringcache vs the reference registry in proxy mode, both in front of
# the same origin (the reference registry), on loopback. Prints a table; no thresholds.
#   (1) skopeo copy of a 5-layer image: cold, then warm;
#   (2) N clients released together on one cold blob: wall time and origin GETs.
# Usage: bench/pull.sh [clients=32] [blob_mib=64]
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${1:-32}
BLOB_MIB=${2:-64}
for b in docker-registry skopeo curl python3; do
  command -v $b >/dev/null || { echo "missing $b (apt-get install -y docker-registry skopeo curl python3)"; exit 1; }
done
cargo build --release --quiet
BIN=target/release/ringcache
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened"; exit 1; }

O=$(port); P=$(port)
cat > $W/origin.yml <<Y
version: 0.1
log: {level: info, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $W/origin}}
http: {addr: 127.0.0.1:$O}
Y
cat > $W/refproxy.yml <<Y
version: 0.1
log: {level: info, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $W/refproxy}}
http: {addr: 127.0.0.1:$P}
proxy: {remoteurl: http://127.0.0.1:$O}
Y
cat > $W/ringcache.yml <<Y
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $W/ringcache}}
http: {addr: 127.0.0.1:0}
proxy: {remoteurl: http://127.0.0.1:$O}
Y
docker-registry serve $W/origin.yml > $W/origin.log 2>&1 &
wait_port $O
docker-registry serve $W/refproxy.yml > $W/refproxy.log 2>&1 &
wait_port $P
RUST_LOG=ringcache=info $BIN serve --config $W/ringcache.yml > $W/ringcache.log 2>&1 &
for _ in $(seq 200); do grep -q "listening on" $W/ringcache.log && break; sleep 0.05; done
R=$(grep -o 'listening on [0-9.:]*' $W/ringcache.log | awk '{print $3}' | cut -d: -f2)

origin_gets() { grep -c "http.request.method=GET.*$1.*response completed\|response completed.*http.request.method=GET.*$1" $W/origin.log || true; }
now() { date +%s.%N; }

printf "%-44s %14s %14s %8s\n" "scenario" "reference" "ringcache" "ratio"
for sys in ref rc; do
  port=$P; [ $sys = rc ] && port=$R
  python3 bench/seed.py image http://127.0.0.1:$O bench/$sys latest 1048576,4194304,16777216,262144,65536 > /dev/null
done
for sys in ref rc; do
  port=$P; [ $sys = rc ] && port=$R
  t0=$(now); skopeo --insecure-policy copy --src-tls-verify=false docker://127.0.0.1:$port/bench/$sys:latest oci:$W/out-$sys-cold >/dev/null; t1=$(now)
  skopeo --insecure-policy copy --src-tls-verify=false docker://127.0.0.1:$port/bench/$sys:latest oci:$W/out-$sys-warm >/dev/null; t2=$(now)
  eval "cold_$sys=$(echo "$t1 - $t0" | bc)"; eval "warm_$sys=$(echo "$t2 - $t1" | bc)"
done
printf "%-44s %13.3fs %13.3fs %7.2fx\n" "skopeo copy, 5 layers (~22 MiB), cold" $cold_ref $cold_rc $(echo "$cold_rc / $cold_ref" | bc -l)
printf "%-44s %13.3fs %13.3fs %7.2fx\n" "skopeo copy, 5 layers (~22 MiB), warm" $warm_ref $warm_rc $(echo "$warm_rc / $warm_ref" | bc -l)

for sys in ref rc; do
  port=$P; [ $sys = rc ] && port=$R
  d=$(python3 bench/seed.py blob http://127.0.0.1:$O bench/fan$sys $((BLOB_MIB * 1048576)) $RANDOM)
  before=$(origin_gets "$d")
  t0=$(now)
  for i in $(seq $CLIENTS); do
    curl -s -o - http://127.0.0.1:$port/v2/bench/fan$sys/blobs/$d | sha256sum > $W/fan-$sys-$i.sum &
  done
  wait $(jobs -p | tail -n $CLIENTS) 2>/dev/null || true
  t1=$(now)
  ok=$(cat $W/fan-$sys-*.sum | grep -c "${d#sha256:}" || true)
  sleep 1 # the origin writes its log line after the response
  eval "fan_t_$sys=$(echo "$t1 - $t0" | bc)"; eval "fan_g_$sys=$(( $(origin_gets "$d") - before ))"; eval "fan_ok_$sys=$ok"
done
printf "%-44s %13.3fs %13.3fs %7.2fx\n" "$CLIENTS clients, one cold ${BLOB_MIB} MiB blob: wall" $fan_t_ref $fan_t_rc $(echo "$fan_t_rc / $fan_t_ref" | bc -l)
printf "%-44s %14s %14s\n" "  origin GETs for that blob" $fan_g_ref $fan_g_rc
printf "%-44s %14s %14s\n" "  clients with a correct sha256" "$fan_ok_ref/$CLIENTS" "$fan_ok_rc/$CLIENTS"

#!/usr/bin/env bash
# A scaled-out site on loopback, for trying by hand: N ringcache nodes behind HAProxy
# (deploy/haproxy/haproxy.cfg, with the node addresses rewritten), each pulling through a
# parent ringcache (the regional tier), whose upstream is ORIGIN.
#
#   scripts/cluster.sh up       start (HAProxy on 127.0.0.1:$PORT)
#   scripts/cluster.sh status   each process, HAProxy's view of the nodes, each node's health
#   scripts/cluster.sh down     stop everything (by the pids it recorded)
#
# Environment: NODES (3), PORT (5000), ORIGIN (https://registry-1.docker.io), DIR
# (/tmp/ringcache-cluster), RINGCACHE (target/release/ringcache, built if missing).
# Node i listens on 127.0.0.1:$((PORT + 10 * i)) (debug +1), the parent on $((PORT + 90)) (+1),
# HAProxy's stats on $((PORT + 99)).
#
#   curl -sI http://127.0.0.1:5000/v2/library/alpine/manifests/latest | grep -i -e cache-status -e node
#   curl -s -XPOST -H 'X-Ringcache-Admin: 1' http://127.0.0.1:5011/debug/health/down   # drain node1
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-3}
PORT=${PORT:-5000}
ORIGIN=${ORIGIN:-https://registry-1.docker.io}
DIR=${DIR:-/tmp/ringcache-cluster}
RINGCACHE=${RINGCACHE:-target/release/ringcache}
PARENT=$((PORT + 90))

wait_port() { # port: bounded, 10 s
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 did not open" >&2; return 1
}

start_ringcache() { # name http-port upstream [extra yaml]
  local name=$1 port=$2 upstream=$3 extra=${4:-}
  mkdir -p "$DIR/$name"
  cat > "$DIR/$name.yml" <<EOF
version: 0.1
log: {level: info}
http: {addr: 127.0.0.1:$port, debug: {addr: 127.0.0.1:$((port + 1))}}
storage: {filesystem: {rootdirectory: $DIR/$name}}
proxy: {remoteurl: $upstream}
ringcache: {workers: 1$extra}
EOF
  "$RINGCACHE" serve --config "$DIR/$name.yml" > "$DIR/$name.log" 2>&1 &
  echo $! > "$DIR/$name.pid"
  wait_port "$port"
}

# The shipped HAProxy config with this cluster's addresses: the node lines replaced, the bind
# and stats on loopback, and what needs root (chroot, user, the admin socket, syslog; maxconn, which needs a raised open-files limit) dropped.
haproxy_cfg() {
  sed -e '/^\s*\(chroot\|user\|group\|stats socket\|log \/dev\/log\|maxconn\)/d' \
      -e '/^\s*server node/d' \
      -e "s/^\(\s*bind\) :5000/\1 127.0.0.1:$PORT/" \
      deploy/haproxy/haproxy.cfg
  for i in $(seq "$NODES"); do
    echo "    server node$i 127.0.0.1:$((PORT + 10 * i)) port $((PORT + 10 * i + 1))"
  done
  printf 'frontend stats\n    bind 127.0.0.1:%s\n    stats enable\n    stats uri /\n' $((PORT + 99))
}

up() {
  [ -x "$RINGCACHE" ] || cargo build --release --locked --quiet
  command -v haproxy >/dev/null || { echo "haproxy is not installed (apt-get install haproxy)" >&2; exit 1; }
  mkdir -p "$DIR"
  start_ringcache parent "$PARENT" "$ORIGIN"
  for i in $(seq "$NODES"); do
    start_ringcache "node$i" $((PORT + 10 * i)) "http://127.0.0.1:$PARENT" \
      ", proxy_protocol: true, proxy_protocol_from: [127.0.0.1]"
  done
  haproxy_cfg > "$DIR/haproxy.cfg"
  haproxy -c -q -f "$DIR/haproxy.cfg"
  haproxy -f "$DIR/haproxy.cfg" > "$DIR/haproxy.log" 2>&1 &
  echo $! > "$DIR/haproxy.pid"
  wait_port "$PORT"
  echo "up: HAProxy on 127.0.0.1:$PORT, $NODES nodes, parent on 127.0.0.1:$PARENT -> $ORIGIN (logs in $DIR)"
}

status() {
  for f in "$DIR"/*.pid; do
    [ -e "$f" ] || { echo "not running"; return; }
    local name pid; name=$(basename "$f" .pid); pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; fi
  done
  curl -s "http://127.0.0.1:$((PORT + 99))/;csv" | awk -F, '$1 == "ringcache" && $2 ~ /node/ {print "haproxy: " $2 " " $18}' || true
  for i in $(seq "$NODES"); do
    echo "node$i health: $(curl -s -m 2 "http://127.0.0.1:$((PORT + 10 * i + 1))/debug/health" || echo unreachable)"
  done
}

down() {
  for f in "$DIR"/*.pid; do
    [ -e "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  echo "down (data kept in $DIR)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

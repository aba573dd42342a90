#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# meta_lookup.sh — ferry's shared metadata stores, etcd and Redis, side by side.
#
# Starts a private etcd and redis-server on free loopback ports (temporary
# data directories), runs build/meta_lookup against each (1,000 published
# segments: publish, lookup latency next to the bare client's read, the
# ferry_open_segment rate, delete; then engines killed with SIGKILL and the
# time until their key is gone), and stops both servers.
#
# usage: bench/meta_lookup.sh [--quick]    (--quick: 200 segments, 1,000 lookups, 2 deaths)
# env:   META_LOOKUP (build/meta_lookup)  SEGMENTS (1000)  LOOKUPS (5000)
#        DEATHS (5)  TTL (2)  BUFFERS (32)  STORES ("etcd redis")
# A store whose server binary is missing is skipped with a note.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

case "${1:-}" in
  --quick) SEGMENTS=${SEGMENTS:-200}; LOOKUPS=${LOOKUPS:-1000}; DEATHS=${DEATHS:-2} ;;
  "") ;;
  -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "meta_lookup.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac
META_LOOKUP=${META_LOOKUP:-$root/build/meta_lookup}
SEGMENTS=${SEGMENTS:-1000}
LOOKUPS=${LOOKUPS:-5000}
DEATHS=${DEATHS:-5}
TTL=${TTL:-2}
BUFFERS=${BUFFERS:-32}
STORES=${STORES:-etcd redis}

if [ ! -x "$META_LOOKUP" ]; then
  echo "meta_lookup.sh: $META_LOOKUP is missing (cmake --build build --target meta_lookup)" >&2
  exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-meta-lookup.XXXXXX")
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill -9 "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; fi
  server_pid=""
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT: until something accepts on 127.0.0.1:PORT (30 s at most)
wait_port() {
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(uname -r)"
status=0
for store in $STORES; do
  port=$(free_port)
  case $store in
    etcd)
      command -v etcd >/dev/null || { echo "etcd: skipped (not installed)"; continue; }
      peer=$(free_port)
      etcd --name bench --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$port" \
        --advertise-client-urls "http://127.0.0.1:$port" --listen-peer-urls "http://127.0.0.1:$peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "bench=http://127.0.0.1:$peer" \
        >"$work/etcd.log" 2>&1 &
      server_pid=$!
      echo "etcd: $(etcd --version | head -1)"
      ;;
    redis)
      command -v redis-server >/dev/null || { echo "redis: skipped (not installed)"; continue; }
      mkdir -p "$work/redis"
      redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/redis" \
        >"$work/redis.log" 2>&1 &
      server_pid=$!
      echo "redis: $(redis-server --version)"
      ;;
    *) echo "unknown store $store" >&2; exit 2 ;;
  esac
  if ! wait_port "$port"; then
    echo "$store did not start; its log:" >&2; tail -5 "$work/$store.log" >&2; status=1
  elif ! "$META_LOOKUP" "$store://127.0.0.1:$port" --segments "$SEGMENTS" --lookups "$LOOKUPS" \
      --deaths "$DEATHS" --ttl "$TTL" --buffers "$BUFFERS"; then
    status=1
  fi
  kill -9 "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; server_pid=""
done
exit $status

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# multihost.sh — ferry between "hosts" (network namespaces joined by a bridge)
# that find each other through a real etcd or Redis, with faults injected.
#
# Topology (all inside namespaces this script makes and removes; nothing
# touches the host's own network):  a switch namespace with a bridge; one
# namespace per host with a veth "eth0" on the bridge and an address in
# $SUBNET.0/24; the store on .2, prefill hosts on .11.., decode hosts on .21..
#
# For each store (etcd, redis):
#   all-to-all   every prefill engine WRITEs then READs every decode engine, verified
#   store down   the store is killed while transfers run (they finish, verified);
#                a new engine fails clearly; the store restarts empty, the engines
#                publish themselves again, and new lookups work
#   engine kill  a decode engine is SIGKILLed under load: the transfer to it ends
#                (no hang) and its key disappears within the TTL
#   link cut     a decode host's link goes down under load: the transfer ends
#                (completes or fails), never hangs; after the link is back, verified
#   loss         5% of packets into a decode host dropped (nftables numgen):
#                transfers complete or time out, never wrong data
#   rate limit   tbf at 50 Mbit/s out of a decode host: transfers complete, verified
#
# usage: sudo tests/net/multihost.sh        (root: ip netns, nft, tc)
# env:   FERRY_BENCH (build/ferry-bench)  STORES ("etcd redis")  PREFILL (2)
#        DECODE (2)  SUBNET (10.199.77)  DURATION (3, seconds per transfer run)
# Exit: 0 all passed, 1 some failed, 77 skipped (not root / no netns / no tool).
# Prints one line per check and "N passed, M failed" at the end.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
FERRY_BENCH=${FERRY_BENCH:-$root/build/ferry-bench}
STORES=${STORES:-etcd redis}
PREFILL=${PREFILL:-2}
DECODE=${DECODE:-2}
SUBNET=${SUBNET:-10.199.77}
DURATION=${DURATION:-3}
TTL=2
BUF=64M

skip() { echo "SKIPPED: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root for network namespaces"
for t in ip nft tc timeout; do command -v $t >/dev/null || skip "$t is not installed"; done
[ -x "$FERRY_BENCH" ] || skip "$FERRY_BENCH is not built"

tag=fm$$
sw=${tag}sw
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-multihost.XXXXXX")
namespaces=()
pids=()
passed=0
failed=0

cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  for n in "${namespaces[@]}"; do # anything still running inside, then the namespace
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del "$n" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note() { echo "#   $(tail -1 "$1")"; } # the last line a run printed

check() { # check NAME COND-EXIT-STATUS [detail]
  if [ "$2" = 0 ]; then echo "ok - $1"; passed=$((passed + 1))
  else echo "not ok - $1${3:+: $3}"; failed=$((failed + 1)); fi
}

# ------------------------------------------------------------ topology

ns_host() { # ns_host NAME ADDRESS
  local n=$1
  ip netns add "$n" && namespaces+=("$n")
  ip -n "$n" link set lo up
  ip link add eth0 netns "$n" type veth peer name "v$n" netns "$sw"
  ip -n "$sw" link set "v$n" master br0 up
  ip -n "$n" addr add "$2/24" dev eth0
  ip -n "$n" link set eth0 up
}

ip netns add "$sw" || skip "ip netns add failed (no CAP_SYS_ADMIN?)"
namespaces+=("$sw")
ip -n "$sw" link add br0 type bridge
ip -n "$sw" link set br0 up
ns_host "${tag}m" "$SUBNET.2"
for ((i = 0; i < PREFILL; i++)); do ns_host "${tag}p$i" "$SUBNET.$((11 + i))"; done
for ((j = 0; j < DECODE; j++)); do ns_host "${tag}d$j" "$SUBNET.$((21 + j))"; done
store_ip=$SUBNET.2

# (background jobs call `ip netns exec` directly: it execs the command, so $!
# is the command's own pid, which a function run with & would not give)
in_ns() { local n=$1; shift; ip netns exec "$n" "$@"; }

# ------------------------------------------------------------ store

store_pid=""
start_store() { # start_store KIND (an empty store each time)
  rm -rf "$work/store"; mkdir -p "$work/store"
  case $1 in
    etcd)
      url="etcd://$store_ip:2379"
      ip netns exec "${tag}m" etcd --name mh --data-dir "$work/store" --listen-client-urls "http://$store_ip:2379" \
        --advertise-client-urls "http://$store_ip:2379" --listen-peer-urls http://127.0.0.1:2380 \
        --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster mh=http://127.0.0.1:2380 \
        >>"$work/store.log" 2>&1 &
      port=2379 ;;
    redis)
      url="redis://$store_ip:6379"
      ip netns exec "${tag}m" redis-server --bind "$store_ip" --port 6379 --protected-mode no --save '' \
        --appendonly no --dir "$work/store" >>"$work/store.log" 2>&1 &
      port=6379 ;;
  esac
  store_pid=$!
  pids+=("$store_pid")
  for _ in $(seq 300); do
    in_ns "${tag}m" bash -c "exec 3<>/dev/tcp/$store_ip/$port" 2>/dev/null && sleep 0.3 && return 0
    sleep 0.1
  done
  echo "store $1 did not start:"; tail -5 "$work/store.log"; return 1
}
stop_store() { kill -9 "$store_pid" 2>/dev/null; wait "$store_pid" 2>/dev/null; store_pid=""; }

key_present() { # key_present KIND NAME -> exit 0 if ferry/segments/NAME exists
  case $1 in
    etcd) [ -n "$(in_ns "${tag}m" env ETCDCTL_API=3 etcdctl --endpoints "http://$store_ip:2379" \
                 get "ferry/segments/$2" --keys-only 2>/dev/null)" ] ;;
    redis) [ "$(in_ns "${tag}m" redis-cli -h "$store_ip" EXISTS "ferry/segments/$2" 2>/dev/null)" = 1 ] ;;
  esac
}

# ------------------------------------------------------------ engines

export FERRY_METADATA_TTL_S=$TTL FERRY_CONNECT_TIMEOUT_MS=2000 FERRY_REQUEST_TIMEOUT_MS=5000
declare -a target_pid target_name
start_target() { # start_target J
  local j=$1 log=$work/d$1.log
  : >"$log"
  ip netns exec "${tag}d$j" "$FERRY_BENCH" --mode=target --local_server_name="$SUBNET.$((21 + j))" \
    --metadata_server="$url" --buffer_size=$BUF >"$log" 2>&1 &
  target_pid[$j]=$!
  pids+=("${target_pid[$j]}")
  for _ in $(seq 100); do
    target_name[$j]=$(sed -n 's/.*target ready: segment \([^ ]*\) .*/\1/p' "$log")
    [ -n "${target_name[$j]}" ] && return 0
    sleep 0.1
  done
  echo "decode target $j did not start:"; tail -3 "$log"; return 1
}
stop_target() { kill -9 "${target_pid[$1]}" 2>/dev/null; wait "${target_pid[$1]}" 2>/dev/null; }

# initiator I J OP [duration] — runs in the background; its pid is in $!
initiator() {
  ip netns exec "${tag}p$1" timeout 60 "$FERRY_BENCH" --mode=initiator --local_server_name="$SUBNET.$((11 + $1))" \
    --metadata_server="$url" --segment_id="${target_name[$2]}" --operation="$3" --block_size=64K \
    --batch_size=16 --buffer_size=$BUF --duration="${4:-$DURATION}" >"$work/p$1-d$2-$3.log" 2>&1 &
}
# all_to_all OP: every prefill host against every decode host at once; returns
# the number of runs that did not exit 0
all_to_all() {
  local runs=() bad=0
  for ((i = 0; i < PREFILL; i++)); do for ((j = 0; j < DECODE; j++)); do
    initiator $i $j "$1"; runs+=($!)
  done; done
  for p in "${runs[@]}"; do wait "$p" || bad=$((bad + 1)); done
  return $bad
}

# ------------------------------------------------------------ scenarios

run_store() {
  local kind=$1 t0 rc p
  echo "# store $kind"
  start_store "$kind" || { check "$kind: store starts" 1; return; }
  for ((j = 0; j < DECODE; j++)); do start_target $j || { check "$kind: decode $j starts" 1; return; }; done

  all_to_all write; check "$kind: all-to-all WRITE ${PREFILL}x${DECODE}, verified" $?
  all_to_all read; check "$kind: all-to-all READ ${PREFILL}x${DECODE}, verified" $?

  # store down while transfers run
  initiator 0 0 write $((DURATION + 3)); p=$!
  # the store goes down once the transfer runs (its first progress line), not
  # after a fixed second: a slow engine start (ASan, a loaded host) would
  # otherwise meet a store that is already gone
  for _ in $(seq 600); do
    grep -q '^\[ *[0-9]*s\]' "$work/p0-d0-write.log" 2>/dev/null && break
    kill -0 "$p" 2>/dev/null || break
    sleep 0.1
  done
  stop_store
  wait $p; check "$kind: a running transfer outlives the store" $? "$(tail -2 "$work/p0-d0-write.log")"
  t0=$SECONDS
  initiator 1 0 write 1; wait $!; rc=$?
  check "$kind: a new engine fails clearly while the store is down ($((SECONDS - t0)) s)" \
    $([ $rc = 1 ] && grep -q "metadata server" "$work/p1-d0-write.log"; echo $?) "$(tail -1 "$work/p1-d0-write.log")"
  start_store "$kind"
  rc=1; for _ in $(seq 100); do key_present "$kind" "${target_name[0]}" && { rc=0; break; }; sleep 0.1; done
  check "$kind: the decode engine publishes itself again in the restarted (empty) store" $rc
  initiator 1 0 write 1; wait $!; check "$kind: new lookups work after the restart" $?

  # a decode engine killed under load
  j=$((DECODE - 1))
  initiator 0 $j write $((DURATION + 3)); p=$!
  sleep 1; t0=$SECONDS; stop_target $j
  wait $p; rc=$?
  check "$kind: a transfer to a killed engine ends with an error ($((SECONDS - t0)) s after the kill)" \
    $([ $rc = 1 ]; echo $?) "exit $rc"
  note "$work/p0-d$j-write.log"
  rc=1; for _ in $(seq 100); do key_present "$kind" "${target_name[$j]}" || { rc=0; break; }; sleep 0.1; done
  check "$kind: the killed engine's key is gone within 10 s (TTL $TTL s)" $rc
  start_target $j

  # link cut under load, then back
  initiator 0 0 write $((DURATION + 3)); p=$!
  sleep 1; ip -n "${tag}d0" link set eth0 down; t0=$SECONDS
  wait $p; rc=$?
  check "$kind: a transfer across a cut link ends, completed or failed, not hung ($((SECONDS - t0)) s)" \
    $([ $rc = 0 ] || [ $rc = 1 ]; echo $?) "exit $rc"
  note "$work/p0-d0-write.log"
  ip -n "${tag}d0" link set eth0 up
  sleep 1
  initiator 0 0 write; wait $!; check "$kind: verified again after the link is back" $?

  # random loss into decode 0
  in_ns "${tag}d0" nft add table inet ferryloss
  in_ns "${tag}d0" nft 'add chain inet ferryloss in { type filter hook input priority 0; }'
  in_ns "${tag}d0" nft add rule inet ferryloss in numgen random mod 100 '<' 5 drop
  initiator 0 0 write; wait $!; rc=$?
  check "$kind: 5% loss: WRITE completes or times out, never wrong data" $([ $rc = 0 ] || [ $rc = 1 ]; echo $?) "exit $rc"
  note "$work/p0-d0-write.log"
  initiator 1 0 read; wait $!; rc=$?
  check "$kind: 5% loss: READ completes or times out, never wrong data" $([ $rc = 0 ] || [ $rc = 1 ]; echo $?) "exit $rc"
  note "$work/p1-d0-read.log"
  in_ns "${tag}d0" nft delete table inet ferryloss

  # rate limit out of decode 1 (READ payload and WRITE acks)
  j=$((DECODE - 1))
  in_ns "${tag}d$j" tc qdisc add dev eth0 root tbf rate 50mbit burst 64kb latency 100ms
  initiator 0 $j read; wait $!; check "$kind: READ through a 50 Mbit/s tbf, verified" $?
  note "$work/p0-d$j-read.log"
  initiator 1 $j write; wait $!; check "$kind: WRITE through a 50 Mbit/s tbf, verified" $?
  note "$work/p1-d$j-write.log"
  in_ns "${tag}d$j" tc qdisc del dev eth0 root

  for ((j = 0; j < DECODE; j++)); do stop_target $j; done
  stop_store
}

for kind in $STORES; do
  case $kind in
    etcd) command -v etcd >/dev/null && command -v etcdctl >/dev/null || { echo "# etcd not installed: skipped"; continue; } ;;
    redis) command -v redis-server >/dev/null && command -v redis-cli >/dev/null || { echo "# redis not installed: skipped"; continue; } ;;
  esac
  run_store "$kind"
done
echo "$passed passed, $failed failed"
[ $failed = 0 ]

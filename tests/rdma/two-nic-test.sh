#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# two-nic-test.sh [BUILD_DIR] — several NICs on a real verbs stack: two
# Soft-RoCE guests (one vCPU each) joined by two links (qemu UDP sockets on
# host loopback), each guest with two rxe devices, rxe0 on eth0 (10.0.0.x)
# and rxe1 on eth1 (10.0.1.x).  Node A (10.0.0.1) runs two ferry-bench
# targets over both NICs (host memory, and sim memory it stages through its
# bounces); node B (10.0.0.2) runs the initiators with --device_name=rxe0,rxe1:
#   striped   WRITE and READ, direct and target-staged, data verified: both
#             NICs carry bytes (the initiator's per-NIC counters)
#   failover  a WRITE run of 20 s; 2 s in, node A takes eth1 down (rxe1's
#             link): the requests on rxe1 fail there (retry exceeded) and are
#             retried on rxe0, none ends FAILED, the data verifies, and rxe1
#             is passed over from then on (back-off)
#   after     a new initiator while eth1 stays down: completes over rxe0
# Run by vm-test.sh (a few minutes: two VMs on two host cores).
# FERRY_2NIC_BENCH=ROUNDS measures instead of testing: WRITE and READ at
# 1 MiB (batch 16, DURATION s, default 5) over rxe0 alone and over rxe0,rxe1,
# interleaved ROUNDS times; prints the medians (Gbit/s) and the ratio.
# Exit: 0 ok, 77 SKIPPED (no VM here), else failure.
set -e
cd "$(dirname "$0")/../.."
BUILD=$(realpath "${1:-build}")
[ -x "$BUILD/ferry-bench" ] || { echo "SKIPPED: no $BUILD/ferry-bench"; exit 77; }
SHARE=$(mktemp -d /tmp/ferry-rdma-2nic.XXXXXX)
trap 'rm -rf "$SHARE"' EXIT
P=${FERRY_2NIC_PORT:-12355}
{ echo "BUILD=/run/ferry-build"; echo "BENCH=${FERRY_2NIC_BENCH:-}"; echo "DURATION=${DURATION:-5}"; } > "$SHARE/env"

cat > "$SHARE/node-a.sh" <<'EOF'
. ./env
waitfor() { for _ in $(seq "$2"); do [ -e "$1" ] && return 0; sleep 0.2; done; return 1; }
echo "node A: devices $(ibv_devices | awk 'NR>2{printf "%s ", $1}')"
for d in rxe0 rxe1; do ibv_devinfo -d $d | grep -q PORT_ACTIVE || echo "node A: $d not active"; done
start() { # start PORT LOCATION LOG
  "$BUILD/ferry-bench" --mode=target --local_server_name=10.0.0.1:$1 --protocol=rdma --device_name=rxe0,rxe1 \
    --buffer_size=16M --location=$2 > $3 2>&1 &
  for _ in $(seq 300); do grep -q "target ready" $3 && return 0; sleep 0.2; done
  cat $3; return 1
}
start 12000 cpu a-target.log; tp=$!
start 12001 sim:0 a-staged.log; sp=$!
touch a.ready
waitfor link.down 3000 || echo "node A: no link-down request"
ip link set eth1 down
echo "node A: eth1 down (rxe1 $(ibv_devinfo -d rxe1 | awk '/state:/{print $2; exit}'))"
touch link.isdown
waitfor b.done 3000
kill $tp $sp; wait $tp $sp 2>/dev/null
grep -h "target stats" a-target.log a-staged.log
EOF

cat > "$SHARE/node-b.sh" <<'EOF'
. ./env
waitfor() { for _ in $(seq "$2"); do [ -e "$1" ] && return 0; sleep 0.2; done; return 1; }
fb() { # fb LOG PORT ferry-bench-flags...: initiator over both NICs; stderr (progress, stats) in LOG
  log=$1 port=$2; shift 2
  timeout 300 "$BUILD/ferry-bench" --mode=initiator --local_server_name=10.0.0.2 --protocol=rdma \
    --device_name=rxe0,rxe1 --segment_id=10.0.0.1:$port --buffer_size=16M "$@" 2> "$log"
}
nic() { sed -n "s/.*initiator stats rdma:.* nic $2 \([0-9]*\).*/\1/p" "$1"; }   # nic LOG NAME -> bytes
failed() { sed -n 's/.*initiator stats rdma:.* failed \([0-9]*\).*/\1/p' "$1"; }
rc=0
check() { # check NAME CONDITION...
  n=$1; shift
  if "$@"; then echo "node B: PASS $n"; else echo "node B: FAIL $n"; rc=1; fi
}
waitfor a.ready 3000 || { echo "node B: node A never got ready"; touch b.done; exit 1; }
echo "node B: devices $(ibv_devices | awk 'NR>2{printf "%s ", $1}')"
both() { [ "$(nic "$1" rxe0)" -gt 0 ] && [ "$(nic "$1" rxe1)" -gt 0 ]; }
if [ -n "$BENCH" ]; then
  median() { tr ' ' '\n' | awk '$1 > 0' | sort -g | awk '{v[NR]=$1} END{ if (NR) print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2) }'; }
  echo "node B: | op | block | batch | rxe0 Gbit/s (runs) | rxe0,rxe1 Gbit/s (runs) | two / one |"
  for op in write read; do
    one="" two=""
    for _ in $(seq "$BENCH"); do
      for devs in rxe0 rxe0,rxe1; do
        timeout 300 "$BUILD/ferry-bench" --mode=initiator --local_server_name=10.0.0.2 --protocol=rdma \
          --device_name=$devs --segment_id=10.0.0.1:12000 --buffer_size=16M --operation=$op --block_size=1M \
          --batch_size=16 --duration="$DURATION" --json > b.json 2> b.err
        g=$(grep -q '"verified":true' b.json && sed 's/.*"gbit_per_s":\([0-9.]*\).*/\1/' b.json)
        [ $devs = rxe0 ] && one="$one $g" || two="$two $g"
      done
    done
    m1=$(echo "$one" | median) m2=$(echo "$two" | median)
    echo "node B: | $op | 1M | 16 | $m1 ($one ) | $m2 ($two ) | $(awk -v a="$m2" -v b="$m1" 'BEGIN{ if (b > 0) printf "%.2f", a / b }') |"
  done
  touch link.down b.done; exit 0
fi
i=0
for spec in "12000 write 64K 64 3" "12000 read 1M 8 3" "12001 write 64K 32 2" "12001 read 1M 4 2"; do
  set -- $spec; i=$((i + 1))
  fb s$i.log $1 --operation=$2 --block_size=$3 --batch_size=$4 --iterations=$5 > s$i.out; r=$?
  echo "node B: striped $2 $3 x $4 to $([ $1 = 12001 ] && echo "sim:0 (target-staged)" || echo cpu):" \
    "exit $r, rxe0 $(nic s$i.log rxe0) B, rxe1 $(nic s$i.log rxe1) B; $(grep -h 'ferry-bench: \(write\|read\)' s$i.out)"
  check "striped_$i" sh -c "[ $r = 0 ] && grep -q 'verified ok' s$i.out"
  check "striped_${i}_both_nics" both s$i.log
done

FERRY_LOG_LEVEL=2 fb f.log 12000 --operation=write --block_size=64K --batch_size=32 --duration=20 > f.out &
fp=$!
for _ in $(seq 600); do grep -q "^\[  2s\]" f.log && break; sleep 0.2; done  # transferring over both
touch link.down
waitfor link.isdown 600
wait $fp; r=$?
echo "node B: failover run exit $r; rxe0 $(nic f.log rxe0) B, rxe1 $(nic f.log rxe1) B, failed $(failed f.log);" \
  "$(grep -h 'ferry-bench: write' f.out)"
grep -h "failed (" f.log | head -3
echo "node B: frames retried on another path: $(grep -c "retrying a frame" f.log)"
grep -h "retrying a frame" f.log | head -2
[ $r = 0 ] || grep -v "^\[\|queue pair .* ready" f.log | tail -20
check failover_completed sh -c "[ $r = 0 ] && grep -q 'verified ok' f.out && [ '$(failed f.log)' = 0 ]"
check failover_both_nics both f.log
check failover_detected grep -q "rxe1 -> .* failed (" f.log

fb g.log 12000 --operation=read --block_size=64K --batch_size=32 --iterations=3 > g.out; r=$?
echo "node B: with rxe1's link down: exit $r; rxe0 $(nic g.log rxe0) B, rxe1 $(nic g.log rxe1) B, failed $(failed g.log)"
check after_completed sh -c "[ $r = 0 ] && grep -q 'verified ok' g.out && [ '$(nic g.log rxe0)' -gt 0 ]"
touch b.done
echo "node B: $([ $rc = 0 ] && echo PASS || echo FAIL)"
exit $rc
EOF

run_node() { # run_node a|b: link 0 on ports P, P+1; link 1 on P+2, P+3
  if [ "$1" = a ]; then
    n0="udp=127.0.0.1:$((P + 1)),localaddr=127.0.0.1:$P" n1="udp=127.0.0.1:$((P + 3)),localaddr=127.0.0.1:$((P + 2))"
    ip=10.0.0.1 ip2=10.0.1.1 mac=52:54:00:00:00:01 mac2=52:54:00:00:01:01
  else
    n0="udp=127.0.0.1:$P,localaddr=127.0.0.1:$((P + 1))" n1="udp=127.0.0.1:$((P + 2)),localaddr=127.0.0.1:$((P + 3))"
    ip=10.0.0.2 ip2=10.0.1.2 mac=52:54:00:00:00:02 mac2=52:54:00:00:01:02
  fi
  FERRY_VM_BUILD=$BUILD FERRY_VM_CPUS=1 FERRY_VM_MEM=1G FERRY_VM_IP=$ip FERRY_VM_IP2=$ip2 FERRY_VM_MAC=$mac \
    FERRY_VM_MAC2=$mac2 FERRY_VM_NET=$n0 FERRY_VM_NET2=$n1 QEMU_TIMEOUT=${QEMU_TIMEOUT:-900} \
    sh tests/rdma/run-in-rxe-vm.sh "$SHARE" "node-$1.sh" > "$SHARE/$1.log" 2>&1
  echo $? > "$SHARE/$1.status"
}
run_node a & pa=$!
run_node b & pb=$!
wait $pa $pb || true
for n in a b; do
  grep -E "^(node|rxe-vm|SKIPPED|ferry-bench|ferry\[)" "$SHARE/$n.log" | sed "s/^/[$n] /"
done
sa=$(cat "$SHARE/a.status" 2>/dev/null); sb=$(cat "$SHARE/b.status" 2>/dev/null)
[ "$sa" = 77 ] || [ "$sb" = 77 ] && exit 77
[ "$sa" = 0 ] && [ "$sb" = 0 ] || { [ -z "${FERRY_2NIC_KEEP:-}" ] || cp -r "$SHARE" "$FERRY_2NIC_KEEP"; exit 1; }

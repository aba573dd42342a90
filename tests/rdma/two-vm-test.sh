#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# two-vm-test.sh [BUILD_DIR] — a real two-node rdma test: two Soft-RoCE
# guests (one vCPU each) joined by a qemu socket link over UDP on host
# loopback, each with its own IP on eth0 and one rxe device.  Node A
# (10.0.0.1) runs a ferry-bench target and an ib_write_bw server; node B
# (10.0.0.2) measures ib_write_bw to A, then ferry-bench WRITE and READ with
# the data verified, then kills A's target mid-transfer (through a file in
# the shared directory) and expects its initiator to fail fast.
# Not part of scripts/test.sh (about 2 minutes, two VMs on two host cores).
# Exit: 0 ok, 77 SKIPPED (no VM here), else failure.
set -e
cd "$(dirname "$0")/../.."
BUILD=$(realpath "${1:-build}")
[ -x "$BUILD/ferry-bench" ] || { echo "SKIPPED: no $BUILD/ferry-bench"; exit 77; }
SHARE=$(mktemp -d /tmp/ferry-rdma-2vm.XXXXXX)
trap 'rm -rf "$SHARE"' EXIT
PA=${FERRY_2VM_PORT:-12345}; PB=$((PA + 1))
echo "BUILD=/run/ferry-build" > "$SHARE/env"   # where the guests see $BUILD

cat > "$SHARE/node-a.sh" <<'EOF'
. ./env
waitfor() { for _ in $(seq "$2"); do [ -e "$1" ] && return 0; sleep 0.2; done; return 1; }
ibv_devinfo -d rxe0 | grep -E "state:|link_layer"
"$BUILD/ferry-bench" --mode=target --local_server_name=10.0.0.1:12000 --protocol=rdma --device_name=rxe0 \
  --buffer_size=16M > a-target.log 2>&1 &
tp=$!
waitfor a-target.log 50; for _ in $(seq 200); do grep -q "target ready" a-target.log && break; sleep 0.2; done
timeout 120 ib_write_bw -d rxe0 -x 1 -F -s 1048576 -n 60 --report_gbits > a-perf.log 2>&1 &
sleep 1; touch a.ready
waitfor kill.target 1500 || { echo "node A: no kill request"; kill $tp; exit 1; }
kill -9 $tp; wait $tp 2>/dev/null
echo "node A: target killed"
waitfor b.done 1500
EOF

cat > "$SHARE/node-b.sh" <<'EOF'
. ./env
waitfor() { for _ in $(seq "$2"); do [ -e "$1" ] && return 0; sleep 0.2; done; return 1; }
fb() { timeout 120 "$BUILD/ferry-bench" --mode=initiator --local_server_name=10.0.0.2 --protocol=rdma \
  --device_name=rxe0 --segment_id=10.0.0.1:12000 --buffer_size=16M "$@"; }
rc=0
waitfor a.ready 1500 || { echo "node B: node A never got ready"; touch b.done; exit 1; }
ibv_devinfo -d rxe0 | grep -E "state:|link_layer"
timeout 120 ib_write_bw -d rxe0 -x 1 -F -s 1048576 -n 60 --report_gbits 10.0.0.1 > b-perf.log 2>&1
echo "node B: ib_write_bw 1 MiB to node A: $(awk '/BW average/{getline; print $4; exit}' b-perf.log) Gbit/s"
for op in write read; do
  fb --operation=$op --block_size=1M --batch_size=8 --iterations=3 || rc=1
  fb --operation=$op --block_size=64K --batch_size=32 --iterations=3 || rc=1
  fb --operation=$op --block_size=4K --batch_size=64 --iterations=2 || rc=1
done
fb --operation=write --block_size=64K --batch_size=32 --duration=60 > b-kill.log 2>&1 &
ip=$!
for _ in $(seq 300); do grep -q "^\[  1s\]" b-kill.log && break; sleep 0.2; done  # transferring
t0=$(cut -d' ' -f1 /proc/uptime)
touch kill.target
wait $ip
krc=$?
t=$(echo "$(cut -d' ' -f1 /proc/uptime) $t0" | awk '{printf "%.1f", $1-$2}')
grep "FAILED" b-kill.log
echo "node B: initiator exit $krc, $t s after asking for the kill (after $(grep -c '^\[' b-kill.log) s of transfer)"
[ "$krc" = 1 ] && awk -v t="$t" 'BEGIN{exit !(t < 15)}' || rc=1
touch b.done
echo "node B: $([ $rc = 0 ] && echo PASS || echo FAIL)"
exit $rc
EOF

run_node() { # run_node a|b
  if [ "$1" = a ]; then net="udp=127.0.0.1:$PB,localaddr=127.0.0.1:$PA" ip=10.0.0.1 mac=52:54:00:00:00:01
  else net="udp=127.0.0.1:$PA,localaddr=127.0.0.1:$PB" ip=10.0.0.2 mac=52:54:00:00:00:02; fi
  FERRY_VM_BUILD=$BUILD FERRY_VM_CPUS=1 FERRY_VM_MEM=1G FERRY_VM_IP=$ip FERRY_VM_MAC=$mac FERRY_VM_NET=$net \
    QEMU_TIMEOUT=${QEMU_TIMEOUT:-600} sh tests/rdma/run-in-rxe-vm.sh "$SHARE" "node-$1.sh" > "$SHARE/$1.log" 2>&1
  echo $? > "$SHARE/$1.status"
}
run_node a & pa=$!
run_node b & pb=$!
wait $pa $pb || true
for n in a b; do
  grep -E "^(node|rxe-vm|SKIPPED|ferry-bench)|link_layer|FAILED" "$SHARE/$n.log" | sed "s/^/[$n] /"
done
sa=$(cat "$SHARE/a.status"); sb=$(cat "$SHARE/b.status")
[ "$sa" = 77 ] || [ "$sb" = 77 ] && exit 77
[ "$sa" = 0 ] && [ "$sb" = 0 ]

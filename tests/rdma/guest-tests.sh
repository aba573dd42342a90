#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# guest-tests.sh — runs inside the Soft-RoCE VM (see vm-test.sh): the rdma
# cmocka tests, then ferry-bench target + initiator over rxe0 (WRITE and READ,
# several block sizes and batches, data verified; staged sim memory; both
# protocols offered; a target killed mid-transfer).  Prints PASS/FAIL per
# step; exits with the number of failed steps.
. ./env                     # BUILD=/run/ferry-build: the host build dir, as the guest sees it
B=$BUILD
DEV=rxe0
IP=10.0.0.1
fails=0

now() { cut -d' ' -f1 /proc/uptime; }
step() { # step NAME CMD...: runs CMD with output in log.NAME
  name=$1; shift
  t0=$(now)
  if "$@" > "log.$name" 2>&1; then
    echo "PASS $name ($(echo "$(now) $t0" | awk '{printf "%.1f", $1-$2}') s)"
  else
    echo "FAIL $name (exit $?)"; tail -40 "log.$name"; fails=$((fails + 1))
  fi
}

# target_start PROTOCOLS [more flags]: a ferry-bench target in the background; sets TPID, SEG
target_start() {
  rm -f target.log
  tp=$1; shift
  "$B/ferry-bench" --mode=target --local_server_name=$IP --protocol="$tp" --device_name=$DEV \
    --buffer_size=16M "$@" > target.log 2>&1 &
  TPID=$!
  for _ in $(seq 100); do grep -q "target ready" target.log && break; sleep 0.1; done
  SEG=$(sed -n 's/.*segment \([^ ]*\) .*/\1/p' target.log)
  [ -n "$SEG" ] || { cat target.log; return 1; }
}
target_stop() { kill "$TPID" 2>/dev/null; wait "$TPID" 2>/dev/null; cat target.log; }

initiator() { # initiator PROTOCOLS OP BLOCK BATCH ITER [more flags]
  p=$1 op=$2 bs=$3 batch=$4 it=$5; shift 5
  timeout 120 "$B/ferry-bench" --mode=initiator --local_server_name=$IP --protocol="$p" --device_name=$DEV \
    --segment_id="$SEG" --buffer_size=16M --operation="$op" --block_size="$bs" --batch_size="$batch" \
    --iterations="$it" --duration=60 "$@"
}

bench_matrix() {
  target_start rdma || return 1
  rc=0
  for op in write read; do
    for spec in 8:64:2 4096:128:2 65536:64:2 1048576:8:2 3145728:2:2; do
      bs=${spec%%:*} rest=${spec#*:}; batch=${rest%%:*} it=${rest#*:}
      initiator rdma $op "$bs" "$batch" "$it" || { echo "-> $op block $bs batch $batch failed"; rc=1; }
    done
  done
  initiator rdma write 65536 16 4 --threads=4 || rc=1
  target_stop
  return $rc
}

staged_sim() {
  target_start rdma || return 1
  rc=0
  initiator rdma write 65536 32 2 --location=sim:0 || rc=1
  initiator rdma read 1048576 4 2 --location=sim:0 || rc=1
  target_stop
  return $rc
}

# the target's buffer is sim memory its NIC cannot reach: it stages it
# through its bounce (rdma only, nothing over tcp); then both sides staged
target_staged() {
  target_start rdma --location=sim:0 || return 1
  rc=0
  for op in write read; do
    initiator rdma $op 65536 32 2 || rc=1
    initiator rdma $op 3145728 2 2 || rc=1
    initiator rdma $op 65536 32 2 --location=sim:0 || rc=1
    initiator rdma $op 1000 64 2 || rc=1   # odd sizes: runs placed 64-byte aligned in the slot
  done
  target_stop
  grep -q "target stats rdma: .* served [1-9].* bounced [1-9]" target.log || rc=1
  return $rc
}

both_protocols() {
  target_start tcp,rdma || return 1
  rc=0
  initiator rdma,tcp write 65536 32 2 || rc=1
  initiator tcp read 65536 32 2 || rc=1
  target_stop
  # the target's rdma counters are zero for one-sided traffic; its tcp ones are not
  grep -q "target stats tcp: written 0 read 0 served [1-9]" target.log || rc=1
  return $rc
}

killed_target() {
  target_start rdma || return 1
  t0=$(now)
  ( sleep 1.5; kill -9 "$TPID" ) &
  initiator rdma write 65536 64 0 --duration=30
  rc=$?
  t=$(echo "$(now) $t0" | awk '{printf "%.1f", $1-$2}')
  wait "$TPID" 2>/dev/null
  echo "initiator exit $rc after $t s"
  [ "$rc" = 1 ] && awk -v t="$t" 'BEGIN{exit !(t < 15)}'
}

echo "guest: $(uname -r), $(nproc) cpus; devices: $(ibv_devices | awk 'NR>2{printf "%s ", $1}')"
step devices sh -c "ibv_devinfo -d $DEV | grep -q PORT_ACTIVE"
step cmocka "$B/tests/test_rdma"
grep -E "^\[  (PASSED|FAILED)|^  " log.cmocka | head -20
step cmocka_stage "$B/tests/test_rdma_stage"
grep -E "^\[  (PASSED|FAILED)|^  (batch|target|unregister|rdma|first|READ|WRITE|wait)" log.cmocka_stage | head -30
step bench_matrix bench_matrix
grep -h "^ferry-bench: \(write\|read\)" log.bench_matrix
step staged_sim staged_sim
step target_staged target_staged
grep -h "^ferry-bench: \(write\|read\)" log.target_staged
step both_protocols both_protocols
step killed_target killed_target
grep -h "initiator exit\|ferry-bench: thread" log.killed_target
echo "guest: $fails step(s) failed"
exit $fails

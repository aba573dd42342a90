#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# t17w_call1.sh — issue 17 item 3's READ on the GPU machine's 16 CPUs (no GPU
# use): why one thread's 4 KiB x 128 READ is sometimes below one iperf3 stream.
# Run from the repository root with DIR (t17w_bundle.sh's folder) carried:
#   DIR=build-t17w bash DIR/bench/calls/t17w_call1.sh   (OUT: where the logs go)
# Parts, each under its own limit, one log each in $OUT:
#   0  the CPUs: topology (SMT siblings), idle driver, load
#   A  READ 4K x 1, the looks one by one, alternated: default (the waiter's look
#      400 µs), FERRY_WAIT_SPIN_US=50 (none), the target's look, the receiver's
#      look (FERRY_TCP_RECV_SPIN_US), both, both without the waiter's, and
#      FERRY_TCP_SPREAD_READ=8
#   B  WRITE 4K x 1: default, the receiver's look, both
#   C  READ 4K x 1 profiled (perf: by thread, syscalls and switches a MiB): default, both looks
set -u
DIR=${DIR:-build-t17w}
OUT=${OUT:-/tmp/t17w-out}
mkdir -p "$OUT"
D=$PWD/$DIR
export FERRY_BENCH=$D/fbw FB_BIN_DEFAULT=$D/bin/ferry-bench IPERF3=$D/bin/iperf3 LD_LIBRARY_PATH=$D/lib
export PERF_LIB=$D/lib
note() { echo "== $(date -u +%T) $*" | tee -a "$OUT/progress.log"; }
LOOKS="FERRY_TCP_SERVE_SPIN_US=100 FERRY_TCP_RECV_SPIN_US=100"

note "start: $(nproc) CPUs; $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1); kernel $(uname -r)"
{
  lscpu 2>&1 | head -n 30
  for c in 0 1 2 3 8; do
    echo "cpu$c siblings $(cat /sys/devices/system/cpu/cpu$c/topology/thread_siblings_list 2>&1) core $(cat /sys/devices/system/cpu/cpu$c/topology/core_id 2>&1)"
  done
  echo "cpuidle: $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>&1)"
  uptime
} >"$OUT/0.log" 2>&1

note "A: read 4K x 1, looks"
IPERF_EACH=1 DURATION=2 ROUNDS=4 CELLS="read:4K:1" \
  VARIANTS="default;FERRY_WAIT_SPIN_US=50;FERRY_TCP_SERVE_SPIN_US=100;FERRY_TCP_RECV_SPIN_US=100;$LOOKS;$LOOKS FERRY_WAIT_SPIN_US=50;FERRY_TCP_SPREAD_READ=8" \
  timeout -k 5 165 bash "$D/bench/tcp_knobs.sh" >"$OUT/A.log" 2>&1
note "A: rc $?"

note "B: write 4K x 1"
IPERF_EACH=1 DURATION=2 ROUNDS=3 CELLS="write:4K:1" \
  VARIANTS="default;FERRY_TCP_RECV_SPIN_US=100;$LOOKS" \
  timeout -k 5 60 bash "$D/bench/tcp_knobs.sh" >"$OUT/B.log" 2>&1
note "B: rc $?"

note "C: read 4K x 1 profiled"
PERF=$D/bin/perf PERF_S=1 PERF_TOP=30 IPERF_EACH=1 DURATION=3 ROUNDS=1 CELLS="read:4K:1" \
  VARIANTS="default;$LOOKS" timeout -k 5 45 bash "$D/bench/tcp_knobs.sh" >"$OUT/C.log" 2>&1
note "C: rc $?"
cat "$OUT/0.log" | grep -i 'siblings\|cpuidle\|Thread\|Core\|Socket\|NUMA node0'
grep '^|\|iperf3 single' "$OUT/A.log" "$OUT/B.log" "$OUT/C.log"
grep -A14 '^by thread\|^per MiB' "$OUT/C.log" | head -n 60
note "end"

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# t17w_call2.sh — issue 17 item 3 on the GPU machine's 16 CPUs: main against
# this branch (both ends look from 8 cores: FERRY_TCP_SERVE_SPIN_US and
# FERRY_TCP_RECV_SPIN_US at 100 µs), alternated, one iperf3 stream before every run.
#   DIR=build-t17w bash DIR/bench/calls/t17w_call2.sh   (OUT: where the logs go)
#   M  READ and WRITE 4K x 1, 8 rounds (the item's cells)
#   T  READ and WRITE 4K x 4, 2 rounds (many receivers and serve threads looking at once)
set -u
DIR=${DIR:-build-t17w}
OUT=${OUT:-/tmp/t17w-out}
mkdir -p "$OUT"
D=$PWD/$DIR
export FERRY_BENCH=$D/fbw FB_BIN_DEFAULT=$D/bin/ferry-bench IPERF3=$D/bin/iperf3 LD_LIBRARY_PATH=$D/lib
note() { echo "== $(date -u +%T) $*" | tee -a "$OUT/progress.log"; }
note "start: $(nproc) CPUs; $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1); kernel $(uname -r); $(uptime)"

note "M: read / write 4K x 1, main / branch"
IPERF_EACH=1 DURATION=2 ROUNDS=8 CELLS="read:4K:1 write:4K:1" VARIANTS="FB_BIN=$D/main/ferry-bench;default" \
  timeout -k 5 185 bash "$D/bench/tcp_knobs.sh" >"$OUT/M.log" 2>&1
note "M: rc $?"

note "T: read / write 4K x 4, main / branch"
IPERF_EACH=1 DURATION=2 ROUNDS=2 CELLS="read:4K:4 write:4K:4" VARIANTS="FB_BIN=$D/main/ferry-bench;default" \
  timeout -k 5 55 bash "$D/bench/tcp_knobs.sh" >"$OUT/T.log" 2>&1
note "T: rc $?"
grep '^|\|iperf3 single' "$OUT/M.log" "$OUT/T.log" | sed "s#FB_BIN=$D/main/ferry-bench#main#"
note "end"

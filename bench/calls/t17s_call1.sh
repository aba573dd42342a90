#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# t17s_call1.sh — issue 17 on the GPU machine's 16 CPUs (no GPU use), one
# device call, run from the repository root with a folder DIR carried:
#   DIR/bundle     `bench/peers.sh bundle` of this branch (ferry-bench, fi_rma_bw, iperf3, libs)
#   DIR/base       ferry-bench of the branch's base (main 1232b0f), for before / after
#   DIR/perf       perf and its libraries (bin/perf, lib/)
#   DIR/bench      this branch's bench/ (the device copies /work/main's tree)
#   DIR/fbw        a wrapper that runs $FB_BIN (default DIR/bundle/bin/ferry-bench), so
#                  that a tcp_knobs.sh variant `FB_BIN=...` picks the binary
# Parts, each under its own limit and logged to $OUT as it goes (one file a part):
#   K  READ 1 MiB x 8 and WRITE 1 MiB x 8, FERRY_TCP_READ_HANDOFF off / on,
#      A B then B A, each run profiled (whole host, by thread and symbol)
#   P  item 1's 8-thread cells at 1 MiB: ferry, ferry --same_block, libfabric
#   I  item 3: 4 KiB x 128, one thread: base / this branch / + FERRY_TCP_ACK_HOLD,
#      A B C then C B A, iperf3 before and after
#   S  who waits, per thread and MiB: READ and WRITE 1 MiB x 8, and READ with the handoff
#   DIR=build-t17s bash DIR/call1.sh   (OUT: where the logs go; PARTS: which of K P I S)
set -u
DIR=${DIR:-build-t17s}
OUT=${OUT:-/tmp/t17s-out}
mkdir -p "$OUT"
D=$PWD/$DIR
B=$D/bundle
export FERRY_BENCH=$D/fbw FB_BIN_DEFAULT=$B/bin/ferry-bench IPERF3=$B/bin/iperf3 LD_LIBRARY_PATH=$B/lib
export PERF=$D/perf/bin/perf PERF_LIB=$D/perf/lib:$B/lib
PARTS=${PARTS:-K P I S}
want() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }
note() { echo "== $(date -u +%T) $*" | tee -a "$OUT/progress.log"; }

note "start: $(nproc) CPUs; $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1); kernel $(uname -r)"
{
  cat /proc/sys/net/ipv4/tcp_wmem /proc/sys/net/ipv4/tcp_rmem /proc/sys/net/core/wmem_max 2>&1
  uptime
} >>"$OUT/progress.log"

want K && {
note "K: read / write 1M x 8, READ_HANDOFF off / on, profiled"
PERF_S=1 PERF_TOP=40 DURATION=3 ROUNDS=2 VARIANTS="default;FERRY_TCP_READ_HANDOFF=1" \
  CELLS="read:1M:8 write:1M:8" timeout -k 5 95 bash "$D/bench/tcp_knobs.sh" >"$OUT/K.log" 2>&1
note "K: rc $?"
}

want P && {
note "P: peers at 1M x 8"
FERRY_BENCH=$B/bin/ferry-bench DURATION=2 PEERS="ferry ferry-same libfabric" OPS="read write" BLOCKS=1M THREADS=8 \
  JSON_OUT="$OUT/P.json" timeout -k 5 50 bash "$D/bench/peers.sh" run "$B" >"$OUT/P.log" 2>&1
note "P: rc $?"
}

want I && {
note "I: item 3, base / branch / ack hold"
PERF= DURATION=2 ROUNDS=2 CELLS="write:4K:1 read:4K:1" \
  VARIANTS="FB_BIN=$D/base/ferry-bench;default;FERRY_TCP_ACK_HOLD=262144" \
  timeout -k 5 50 bash "$D/bench/tcp_knobs.sh" >"$OUT/I.log" 2>&1
note "I: rc $?"
}

want S && {
note "S: context switches per thread and MiB"
{ WINDOW=2 CELLS="read:1M:8 write:1M:8" timeout -k 5 30 bash "$D/bench/tcp_switches.sh"
  echo "### with FERRY_TCP_READ_HANDOFF=1"
  FERRY_TCP_READ_HANDOFF=1 WINDOW=2 CELLS="read:1M:8" timeout -k 5 16 bash "$D/bench/tcp_switches.sh"; } \
  >"$OUT/S.log" 2>&1
note "S: rc $?"
}
note "end"

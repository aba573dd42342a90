#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# t17r_call1.sh — issue 17 on the GPU machine's 16 CPUs (no GPU use), one
# device call, run from the repository root with a folder DIR carried:
#   DIR/bundle  `bench/peers.sh bundle` (ferry-bench, fi_rma_bw, iperf3, libs)
#   DIR/perf    perf and its libraries (bin/perf, lib/), if the host has none
# Parts, each under its own limit and logged to $OUT as it goes:
#   A  item 1: ferry, ferry --same_block and libfabric at 1 and 4 MiB with 4
#      and 8 threads, WRITE and READ (bench/peers.sh, iperf3 per row)
#   B  item 3 (4 KiB x 128, one thread, vs one iperf3 stream) and item 2
#      (1 MiB with 1 and 4 threads), ferry alone
#   C  READ 1 MiB x 4 against READ 4 MiB x 4, and READ 1 MiB x 8 against
#      WRITE 1 MiB x 8 (whose receiving sides differ by ~50 us a MiB),
#      alternated twice, each with its profile and syscalls per MiB
#      (the run of 05:16 had read:1M:4 read:4M:4 write:4M:4 here)
#   D  4 MiB blocks as one frame (FERRY_SLICE_SIZE=4M) against 1 MiB frames
#   E  who waits, per thread and MiB, READ and WRITE 1 MiB x 8
#      (bench/tcp_switches.sh; not in the run of 05:16)
#   DIR=build-t17r [PARTS="C D"] bash DIR/call1.sh   (OUT: where the logs go;
#   PARTS: which of A B C D E to run, all by default)
# The device tool brings back at most 8 files from $OUT: each part writes one
# log (stdout and stderr), the JSON and host facts go to one more file.  (The
# run of 2026-12-01 05:16 wrote a file per stream and lost parts C and D.)
# Seen there: A 130 s, B 29 s, C 39 s (3 cells); D needs more than 35 s (4
# GiB buffers filled and verified a run).  All parts: under `timeout 410`;
# PARTS="C D E": under `timeout 190`.
set -u
DIR=${DIR:-build-t17r}
OUT=${OUT:-/tmp/t17r-out}
mkdir -p "$OUT"
B=$PWD/$DIR/bundle
export FERRY_BENCH=$B/bin/ferry-bench IPERF3=$B/bin/iperf3
# the carried perf (6.1) with its libraries, whatever the host has
export PERF=$PWD/$DIR/perf/bin/perf PERF_LIB=$PWD/$DIR/perf/lib:$B/lib
PARTS=${PARTS:-A B C D E}
want() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }
note() { echo "== $(date -u +%T) $*" | tee -a "$OUT/progress.log"; }

note "start: $(nproc) CPUs; $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1); kernel $(uname -r)"
{
  cat /proc/sys/net/ipv4/tcp_wmem /proc/sys/net/ipv4/tcp_rmem /proc/sys/net/core/wmem_max \
    /sys/kernel/mm/transparent_hugepage/enabled 2>&1
  env ${PERF_LIB:+LD_LIBRARY_PATH=$PERF_LIB} "$PERF" --version 2>&1
  uptime
} >>"$OUT/progress.log"

want A && {
note "A: peers, 1 and 4 MiB x 4 and 8 threads"
DURATION=2 PEERS="ferry ferry-same libfabric" OPS="write read" BLOCKS="1M 4M" THREADS="4 8" \
  JSON_OUT="$OUT/A.json" timeout -k 5 160 bash bench/peers.sh run "$B" >"$OUT/A.log" 2>&1
note "A: rc $?"
}

want B && {
note "B1: item 3, 4 KiB x 1 thread"
DURATION=3 PEERS=ferry OPS="write read" BLOCKS=4K THREADS=1 \
  JSON_OUT="$OUT/B1.json" timeout -k 5 25 bash bench/peers.sh run "$B" >"$OUT/B.log" 2>&1
note "B1: rc $?"
note "B2: item 2, 1 MiB x 1 and 4 threads"
DURATION=2 PEERS=ferry OPS="write read" BLOCKS=1M THREADS="1 4" \
  JSON_OUT="$OUT/B2.json" timeout -k 5 30 bash bench/peers.sh run "$B" >>"$OUT/B.log" 2>&1
note "B2: rc $?"
}

want C && {
note "C: read 1M x 4 / read 4M x 4 / read 1M x 8 / write 1M x 8, twice, profiled"
LD_LIBRARY_PATH=$B/lib PERF_S=1 DURATION=3 ROUNDS=2 VARIANTS=default \
  CELLS="read:1M:4 read:4M:4 read:1M:8 write:1M:8" timeout -k 5 90 bash bench/tcp_knobs.sh >"$OUT/C.log" 2>&1
note "C: rc $?"
}

want D && {
note "D: 4 MiB blocks, 1 MiB frames against 4 MiB frames"
LD_LIBRARY_PATH=$B/lib PERF= DURATION=2 ROUNDS=1 \
  VARIANTS="default;FERRY_SLICE_SIZE=4194304 FERRY_STAGING_CHUNK_SIZE=8388608" \
  CELLS="read:4M:8 write:4M:8" timeout -k 5 60 bash bench/tcp_knobs.sh >"$OUT/D.log" 2>&1
note "D: rc $?"
}
want E && {
note "E: context switches per thread and MiB, READ and WRITE 1 MiB x 8"
LD_LIBRARY_PATH=$B/lib WINDOW=3 CELLS="read:1M:8 write:1M:8" timeout -k 5 40 bash bench/tcp_switches.sh \
  >"$OUT/E.log" 2>&1
note "E: rc $?"
}
note "end"
# the JSON files together: one file back instead of three
cat "$OUT"/A.json "$OUT"/B1.json "$OUT"/B2.json >"$OUT/peers.json" 2>/dev/null
rm -f "$OUT"/A.json "$OUT"/B1.json "$OUT"/B2.json

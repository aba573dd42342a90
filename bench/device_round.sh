#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# device_round.sh — the GPU machine's measurements of issues 16 and 17 in
# parts that each end within their own time limit, so that one device call
# can never hang until the call's limit and lose everything.
#
# Each part writes its output as it goes to $OUT/<part>.md (stderr to
# <part>.err), ends after LIMIT seconds at the most (then: a line saying so),
# and then kills every process named like the tools it runs (ferry-bench,
# staging_bench, the peers, iperf3): meant for the lent GPU machine, where
# nothing else runs.  The device run returns $OUT even when the
# call itself is cut short, so finished parts are never lost.  Parts run in
# the order given.
#
#   bash bench/device_round.sh PART...      on the GPU machine, from the
#                                           repository root; $OUT set by it
# parts:
#   tcp       ferry alone over tcp loopback, every cell of issue 17
#             (bench/peers.sh with PEERS=ferry; needs the peers bundle)
#   tcp-slice 4 KiB x 128, 1 thread: the default next to FERRY_SLICE_SIZE=128K
#             (a batch over up to 4 connections) with and without
#             FERRY_TCP_INLINE_BYTES=0 (senders copy in parallel)
#   tcp-var   ferry alone for OPS / BLOCKS / THREADS, once per knob set in
#             VARIANTS (';' between sets, spaces between a set's assignments,
#             'default' for none), e.g. VARIANTS='default;FERRY_SLICE_SIZE=128K'
#   peers     bench/peers.sh with every peer, for OPS / BLOCKS / THREADS
#   staging   staging_bench: issue 16 item 1 (and the shm pair with 2 GPUs:
#             bench/gpu_small_blocks.sh)
#   cost      bench/gpu_cost.sh, items 3-4 (target on cuda:1 with 2 GPUs)
#   shm       bench/gpu_trace.sh, GPU0 <-> GPU1 over shm at 64 KiB and 1 MiB,
#             1 and 4 threads (item 2; skipped with one GPU)
# env: LIMIT (s a part, 280)  BUNDLE (bench/peers/build/bundle)
#      BUILD (build-gpu)  OUT (./device-out when unset)
# Carry: the peers bundle (28 MiB) for tcp/peers, build-gpu (35 MiB) for the
# GPU parts: both fit one call's 64 MiB only just; split the calls otherwise.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
OUT=${OUT:-$root/device-out}
LIMIT=${LIMIT:-280}
BUNDLE=${BUNDLE:-bench/peers/build/bundle}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT"
[ $# -gt 0 ] || { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
tools='ferry-bench|staging_bench|transfer_engine_bench|ucx_perftest|fi_rma_bw|iperf3'

# part NAME COMMAND...: COMMAND in its own session, LIMIT seconds at most
part() {
  local name=$1 rc=0 t0
  shift
  t0=$(date +%s)
  echo "== $name ($(date -u +%H:%M:%S) UTC, limit ${LIMIT}s, $(nproc) CPUs, $ngpu GPUs)" >"$OUT/$name.md"
  timeout -k 3 "$LIMIT" setsid "$@" >>"$OUT/$name.md" 2>"$OUT/$name.err" </dev/null || rc=$?
  pkill -9 -f "$tools" 2>/dev/null
  case $rc in
    0) ;;
    124|137) echo "== $name: CUT at its limit (${LIMIT}s); the rows above are complete" >>"$OUT/$name.md" ;;
    *) echo "== $name: exit $rc" >>"$OUT/$name.md" ;;
  esac
  echo "== $name: $(( $(date +%s) - t0 )) s" >>"$OUT/$name.md"
  grep -v '^\[ *[0-9]*s\]' "$OUT/$name.md" | tail -n 40
}

# the bundle's tools and libraries first
with_bundle=(env "PATH=$root/$BUNDLE/bin:$PATH"
             "LD_LIBRARY_PATH=$root/$BUNDLE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")

for p in "$@"; do
  case $p in
    tcp)
      part tcp "${with_bundle[@]}" PEERS=ferry DURATION=2 JSON_OUT="$OUT/tcp.json" \
        bash bench/peers.sh run "$BUNDLE" ;;
    tcp-slice)
      # default; 128 KiB frames (4 a batch) written by the submitter on up to
      # 4 connections; the same frames with the senders writing all but the
      # last in parallel
      for v in "FERRY_SLICE_SIZE=1M" "FERRY_SLICE_SIZE=128K" "FERRY_SLICE_SIZE=128K FERRY_TCP_INLINE_BYTES=0"; do
        name=tcp-slice-$(echo "$v" | tr -d ' ' | sed 's/FERRY_SLICE_SIZE=//; s/FERRY_TCP_INLINE_BYTES=/-inline/')
        # shellcheck disable=SC2086  # v: one or two assignments
        part "$name" "${with_bundle[@]}" PEERS=ferry DURATION=2 BLOCKS=4K THREADS=1 $v \
          JSON_OUT="$OUT/$name.json" bash bench/peers.sh run "$BUNDLE"
      done ;;
    tcp-var)
      IFS=';' read -ra sets <<<"${VARIANTS:-default}"
      for v in "${sets[@]}"; do
        [ "$v" = default ] && v=
        name=tcp-var-$(echo "${v:-default}" | tr -c 'A-Za-z0-9\n' '_' | sed 's/FERRY_//g')
        # shellcheck disable=SC2086  # v: zero or more assignments
        part "$name" "${with_bundle[@]}" PEERS=ferry DURATION=2 $v \
          JSON_OUT="$OUT/$name.json" bash bench/peers.sh run "$BUNDLE"
      done ;;
    peers)
      part peers "${with_bundle[@]}" DURATION=2 JSON_OUT="$OUT/peers.json" \
        bash bench/peers.sh run "$BUNDLE" ;;
    staging)
      part staging env BUILD="$BUILD" SECS=1 bash bench/gpu_small_blocks.sh ;;
    cost)
      part cost env BUILD="$BUILD" SECS=1 IDLE=10 TGPU="$([ "$ngpu" -ge 2 ] && echo 1 || echo 0)" \
        bash bench/gpu_cost.sh ;;
    shm)
      if [ "$ngpu" -lt 2 ]; then echo "== shm: SKIPPED (this host has $ngpu GPU)" | tee "$OUT/shm.md"; continue; fi
      for th in 1 4; do
        part "shm-$th" env BUILD="$BUILD" SECS=1 THREADS=$th bash bench/gpu_trace.sh \
          "shm tcp,shm cuda:1 cuda:0 write 65536" "shm tcp,shm cuda:1 cuda:0 read 65536" \
          "shm tcp,shm cuda:1 cuda:0 write 1048576" "shm tcp,shm cuda:1 cuda:0 read 1048576"
      done ;;
    *) echo "device_round.sh: unknown part '$p' (run it without arguments for the list)" >&2; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16a_call1.sh — issue 16 items 3-4 on ONE GPU, h16a's first call: can
# CUDA MPS make two processes on one GPU measure like two GPUs?  h16x found
# every device copy of a staged batch taking 130-280 us with initiator and
# target as two processes on cuda:0 (the GPU time-slices their contexts),
# against 20-55 us in one process.  Under MPS both processes' work goes
# through one server context, so their copies should not wait for a switch.
#   1. the same-run reference (a large pinned D2H, staging_bench);
#   2. the probe: staging_bench's gathers alone, then with a second process
#      scattering between them (--gap=400), without MPS, then under MPS;
#   3. bench/gpu_cost.sh (TGPU=0: cuda:0 -> tcp loopback -> cuda:0, 16 KiB,
#      WRITE and READ, batch 128 and 1,024, 1 and 4 threads, host and
#      staged) under MPS, the staged table without MPS, the staged one-thread
#      cells under MPS again (MPS / none / MPS);
#   4. traces of a staged batch of 128 under MPS (where its time goes);
#   5. the earlier sessions' hand-off knobs under MPS, one thread, staged,
#      between two default rows.
# MPS runs as this user's daemon with its pipe and log folders under a temp
# folder; no device setting is changed (no nvidia-smi -c).  If the control
# binary is missing or the daemon refuses, it says so and runs the rest
# without MPS.
#   BUILD=build-h16a [OUT=dir] [DRY=1] bash build-h16a/bench/calls/gpu_h16a_call1.sh
# DRY=1 prints the steps instead of running them (no GPU needed).
set -uo pipefail
B=${BUILD:-build-gpu}
export BUILD=$B
here=$(cd "$(dirname "$0")/.." && pwd)   # bench/ (this script lies in bench/calls/)
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
O=${OUT:-/tmp/h16a-out}
mkdir -p "$O"
DRY=${DRY:-0}
. "$here/mps_lib.sh"
cost() {  # label, then env assignments for gpu_cost.sh
  local label=$1
  shift
  echo "== $(date -u +%T) $label (mps: $(mps_state))"
  if [ "$DRY" = 1 ]; then
    echo "   gpu_cost.sh $*"
    return
  fi
  timeout -k 5 90 env TGPU=0 IDLE=0 "$@" bash "$here/gpu_cost.sh" 2>&1 | grep -v '^|---\|^| memory'
}
step() {  # label, then the command
  echo "== $(date -u +%T) $1 (mps: $(mps_state))"
  shift
  if [ "$DRY" = 1 ]; then
    echo "   $*"
    return 0
  fi
  "$@"
}
probe_pair() {  # gathers while a second process scatters on the same GPU
  timeout -k 5 20 "$B/staging_bench" --gap=400 --op=scatter cuda:0 3 16384 >"$O/scatter_side.txt" 2>&1 &
  local side=$!
  sleep 1
  timeout -k 5 20 "$B/staging_bench" --gap=400 --op=gather cuda:0 1 16384 2>&1 | tail -2
  wait "$side"
  echo "-- the scattering process:"
  tail -1 "$O/scatter_side.txt"
}
probe() {
  step "gathers alone (--gap=400)" timeout -k 5 20 "$B/staging_bench" --gap=400 --op=gather cuda:0 1 16384
  step "gathers with a second process scattering on cuda:0" probe_pair
}
trap mps_stop EXIT
trap 'mps_stop; exit 143' TERM INT
echo "== $(date -u +%T) start; $(nvidia-smi --query-gpu=name,driver_version,compute_mode --format=csv,noheader 2>/dev/null | head -2 | tr '\n' ' ') cpus $(nproc)"
echo "mps control: $(command -v nvidia-cuda-mps-control || echo missing); server: $(command -v nvidia-cuda-mps-server || echo missing)"
step "reference: staging_bench cuda:0 0.5 16384" timeout -k 5 30 "$B/staging_bench" cuda:0 0.5 16384
probe
mps_start
probe
step "mps servers" mps_servers
cost "table under MPS" MEMS="cpu cuda0" SECS=2
step "traces under MPS" timeout -k 5 40 env SECS=1 THREADS=1 bash "$here/gpu_trace.sh" \
  "staged tcp cuda:0 cuda:0 write 16384" "staged tcp cuda:0 cuda:0 read 16384"
mps_stop
cost "staged table without MPS" MEMS=cuda0 SECS=2
mps_start
cost "staged, one thread, under MPS again (D)" MEMS=cuda0 THREADS=1 SECS=2
for k in FERRY_STAGING_SCATTER_RETIRE_US=300 FERRY_STAGING_INLINE_LAST=1 FERRY_STAGING_ISSUER_RETIRE_US=200 \
         FERRY_TCP_ACK_ON_COPY=2; do
  cost "staged, one thread, under MPS: $k" MEMS=cuda0 THREADS=1 SECS=2 CELL_ENV="$k"
done
cost "staged, one thread, under MPS (D, last)" MEMS=cuda0 THREADS=1 SECS=2
mps_stop
echo "== $(date -u +%T) done"

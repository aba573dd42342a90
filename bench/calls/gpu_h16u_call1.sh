#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16u_call1.sh — issue 16 items 3-4, one GPU call: why a staged 512 KiB
# frame crosses tcp loopback slower than a host one.  Host-to-host cells with
# the host buffers in cuMemHostAlloc memory (--pinned=alloc), huge-page memory
# pinned with cuMemHostRegister (--pinned=thp), 4 KiB pages (--nohuge_pages)
# and cold data (--rotate), next to staged cuda:0 -> cuda:1 cells by default,
# with FERRY_CUDA_HOST_THP=1 (chunks and bounces from huge pages pinned with
# cuMemHostRegister: a knob of that call's build, dropped after it measured no
# gain; ignored now), with every process on its GPU's NUMA CPUs, and
# with the staging worker not spinning; then traces (bench/trace_batches.py's
# per-thread spans).  Run from the repository root with BUILD=<bundle> and
# the bench scripts copied into <bundle>/bench; writes into $OUT.
. "$(dirname "$0")/gpu_call_lib.sh"
OUT=${OUT:-/tmp/h16u-out}
mkdir -p "$OUT"
T=${CELL_TIMEOUT:-90}
COST_TIMEOUT=$T
COST_DEFAULTS=(SECS=1 THREADS=1)
echo "== $(date -u +%FT%TZ) machine"
nvidia-smi --query-gpu=name,driver_version,pci.bus_id --format=csv,noheader
nvidia-smi topo -m 2>&1 | head -12
lscpu | grep -E 'Model name|^CPU\(s\)|Socket|NUMA|L3|Thread'
cat /sys/kernel/mm/transparent_hugepage/enabled
cpus_of() {  # the CPUs local to GPU $1
  local bus
  bus=$(nvidia-smi --query-gpu=pci.bus_id --format=csv,noheader -i "$1" | tr 'A-F' 'a-f')
  cat "/sys/bus/pci/devices/${bus: -12}/local_cpulist" 2>/dev/null
}
c0=$(cpus_of 0); c1=$(cpus_of 1)
echo "gpu0 cpus: $c0  gpu1 cpus: $c1"

echo "== $(date -u +%T) staging_bench (the same-run PCIe reference)"
timeout "$T" "$B/staging_bench" cuda:0 1 16384 2>&1 | tail -4

cost "host, default (THP, hot)" MEMS=cpu BATCHES="128 1024"
cost "host --nohuge_pages" MEMS=cpu BATCHES=128 FB_ARGS=--nohuge_pages
cost "host --pinned=alloc" MEMS=cpu BATCHES=128 FB_ARGS=--pinned=alloc
cost "host --pinned=thp" MEMS=cpu BATCHES=128 FB_ARGS=--pinned=thp
cost "host --rotate" MEMS=cpu BATCHES="128 1024" FB_ARGS=--rotate
cost "host --rotate --pinned=alloc" MEMS=cpu BATCHES=128 FB_ARGS="--rotate --pinned=alloc"
cost "staged, default" MEMS=cuda0 BATCHES="128 1024"
cost "staged, FERRY_CUDA_HOST_THP=1" MEMS=cuda0 BATCHES="128 1024" CELL_ENV=FERRY_CUDA_HOST_THP=1
cost "staged, initiator on gpu0's cpus, target on gpu1's" MEMS=cuda0 BATCHES=128 WRAP_I="taskset -c $c0" \
  WRAP_T="taskset -c $c1"
cost "staged, initiator on gpu1's cpus, target on gpu0's" MEMS=cuda0 BATCHES=128 WRAP_I="taskset -c $c1" \
  WRAP_T="taskset -c $c0"
cost "staged, FERRY_STAGING_SPIN_US=0" MEMS=cuda0 BATCHES=128 CELL_ENV=FERRY_STAGING_SPIN_US=0

echo "== $(date -u +%T) traces"
timeout -k 5 120 env SECS=1 THREADS=1 bash "$here/gpu_trace.sh" \
  "host tcp cpu cpu write 16384" \
  "host-pinned tcp cpu cpu write 16384 FB_ARGS=--pinned=alloc" \
  "host-rotate tcp cpu cpu write 16384 FB_ARGS=--rotate" \
  "staged tcp cuda:1 cuda:0 write 16384" \
  "staged-thp tcp cuda:1 cuda:0 write 16384 FERRY_CUDA_HOST_THP=1" \
  "staged tcp cuda:1 cuda:0 read 16384" 2>&1
echo "== $(date -u +%T) done"

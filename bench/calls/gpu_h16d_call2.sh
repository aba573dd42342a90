#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16d_call2.sh — h16d's second GPU call (issue 16 item 2, one H200), run
# from a folder holding bench/ (these scripts in bench/calls/) and the bundles: build-gpu
# (0849b63, with lib/), build-gpu-base (main 3c6d3c7's ferry-bench) and
# build-gpu-new2 (bc40c33: ferry-bench and the GPU tests).
#   1. bench/calls/gpu_h16d_call.sh: the reference, base / 0849b63 / bc40c33 in
#      three interleaved rounds with one thread, bc40c33's GPU tests and
#      traces;
#   2. the gather kernel's shape and the copy engine at 1 MiB (bc40c33);
#   3. four submitting threads, base against bc40c33.
#   [OUT=dir] bash bench/calls/gpu_h16d_call2.sh
set -uo pipefail
O=${OUT:-/tmp/h16d-out}
mkdir -p "$O"
export LD_LIBRARY_PATH="$PWD/build-gpu/lib:${LD_LIBRARY_PATH:-}"
[ -x ./clock_probe ] && echo "clock_gettime(CLOCK_MONOTONIC): $(./clock_probe) a call"
OUT=$O ROUNDS=3 TRACES=new2 bash bench/calls/gpu_h16d_call.sh new2=build-gpu-new2 base=build-gpu-base new=build-gpu |
  tee "$O/part1.txt"
peer=$(sed -n 's/^peer copy cuda:0 -> cuda:0 (256 MiB): \([0-9.]*\) GB\/s/\1/p' "$O/part1.txt" | head -1)
n=build-gpu-new2
echo "== kernel shapes at 1 MiB (reference $peer GB/s)"
PEER=${peer:-0} OUT=$O/k TESTS=0 ROUNDS=1 BLOCKS=1048576 bash bench/calls/gpu_h16d_call.sh new2=$n \
  tile16k=$n:FERRY_CUDA_KERNEL_TILE=16384 tile64k=$n:FERRY_CUDA_KERNEL_TILE=65536 \
  loads8=$n:FERRY_CUDA_KERNEL_LOADS=8 ctas8=$n:FERRY_CUDA_KERNEL_CTAS=8 copy-engine=$n:FERRY_CUDA_GATHER_D2D=0 \
  new2b=$n
echo "== four threads"
PEER=${peer:-0} OUT=$O/t4 TESTS=0 ROUNDS=1 THREADS=4 bash bench/calls/gpu_h16d_call.sh new2=$n base=build-gpu-base

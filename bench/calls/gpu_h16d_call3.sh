#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16d_call3.sh — h16d's third GPU call (one H200), from the folder of
# gpu_h16d_call2.sh: 0849b63 (build-gpu) against bc40c33 (build-gpu-new2)
# in four interleaved rounds, their order swapped from call 2 (is bc40c33's
# READ at 64 KiB slower, or was it the order?), and bc40c33 with the gather
# kernel's tile at 16 and 64 KiB (1 MiB gained 5-15 % in call 2's one round).
#   [OUT=dir] bash bench/calls/gpu_h16d_call3.sh
set -uo pipefail
O=${OUT:-/tmp/h16d-out}
mkdir -p "$O"
export LD_LIBRARY_PATH="$PWD/build-gpu/lib:${LD_LIBRARY_PATH:-}"
n=build-gpu-new2
OUT=$O ROUNDS=4 TESTS=0 bash bench/calls/gpu_h16d_call.sh new=build-gpu new2=$n \
  tile16k=$n:FERRY_CUDA_KERNEL_TILE=16384 tile64k=$n:FERRY_CUDA_KERNEL_TILE=65536

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# mps_run.sh — runs a command under a CUDA MPS daemon of this user (pipe and
# log folders under a temp folder; no device setting changed), then quits
# the daemon, also when the command fails or is interrupted.  On one GPU,
# two processes (a ferry-bench initiator and target on cuda:0) then share
# one server context, and their device copies take the time they take in
# one process or on two GPUs instead of waiting for the GPU to switch
# contexts (docs/BENCHMARKS.md, h16a: staged 16 KiB x 128 WRITE 4.8 GB/s
# under MPS, 2.9 without, 4.6 on 2 x H200).  Where MPS is missing or
# refuses, it says so and runs the command without it.
#   bash bench/mps_run.sh env BUILD=build-gpu TGPU=0 bash bench/gpu_cost.sh
set -uo pipefail
. "$(cd "$(dirname "$0")" && pwd)/mps_lib.sh"
[ $# -gt 0 ] || { echo "usage: mps_run.sh COMMAND [ARG...]" >&2; exit 2; }
trap mps_stop EXIT
trap 'mps_stop; exit 143' TERM INT
mps_start
"$@"

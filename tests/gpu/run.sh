#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs on the GPU machine (see bundle.sh): the CUDA device and IPC tests, the staging
# matrix with cuda:0 on both sides (two processes, one GPU), the staging
# pipeline benchmark next to a large pinned D2H copy, and ferry-bench
# GPU -> TCP loopback -> GPU next to iperf3, all in one run.  On a host with
# two GPUs it also runs the staging and shm matrices and ferry-bench with the
# initiator on cuda:0 and the target on cuda:1 (and says so when it has one).
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${BUILD:-build-gpu}
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
OUT=${OUT:-/tmp/ferry-gpu-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,pci.bus_id --format=csv,noheader | tee "$OUT/machine.txt"
nproc | sed 's/^/cpus: /' | tee -a "$OUT/machine.txt"
status=0
step() { echo; echo "== $*"; }

step "device tests (cuda)"
"$B/tests/test_device_cuda" || status=1
"$B/tests/test_cuda_ipc" || status=1
step "staging matrix with cuda:0"
FERRY_TEST_DEVICE=cuda:0 "$B/tests/test_staging" || status=1

step "staging pipeline benchmark"
"$B/staging_bench" cuda:0 2 16384 65536 1048576 | tee "$OUT/staging.md"

step "end to end: GPU -> tcp loopback -> GPU"
"$B/bin/iperf3" -s -1 -p 5299 >/dev/null 2>&1 &
sleep 0.5
"$B/bin/iperf3" -c 127.0.0.1 -p 5299 -t 4 -J > "$OUT/iperf3.json" 2>/dev/null
iperf=$(python3 -c 'import json;print(json.load(open("'"$OUT/iperf3.json"'"))["end"]["sum_received"]["bits_per_second"]/8e9)' 2>/dev/null || echo 0)
echo "iperf3 loopback: $iperf GB/s" | tee "$OUT/e2e.txt"
# bench_pair PROTOCOLS TARGET_GPU INITIATOR_GPU: ferry-bench target on one GPU,
# initiator on the other (or the same), WRITE and READ at 64 KiB and 1 MiB x 128
bench_pair() {
  local proto=$1 tgpu=$2 igpu=$3 log seg tpid
  log=$(mktemp)
  "$B/ferry-bench" --mode=target --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
      --operation=write --protocol="$proto" --use_vram=true --gpu_id="$tgpu" --buffer_size=1G >"$log" 2>&1 &
  tpid=$!
  for _ in $(seq 200); do grep -q ready "$log" && break; sleep 0.1; done
  seg=$(sed -n 's/.*segment \([^ ]*\).*/\1/p' "$log")
  for op in write read; do
    for bs in 65536 1048576; do
      line=$("$B/ferry-bench" --mode=initiator --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
          --operation=$op --protocol="$proto" --use_vram=true --gpu_id="$igpu" --segment_id="$seg" \
          --block_size=$bs --batch_size=128 --duration=4 --json 2>/dev/null | tail -1)
      [ -n "$line" ] || status=1
      echo "gpu$igpu->gpu$tgpu $proto $line" | tee -a "$OUT/e2e.txt"
    done
  done
  kill $tpid; wait $tpid 2>/dev/null
  tail -3 "$log"
  rm -f "$log"
}
bench_pair tcp 0 0
# the reference command line asking for rdma: on a host without a NIC it must
# start on tcp and say so in one warning (transport discovery), not fail
timeout 5 "$B/ferry-bench" --mode=target --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
    --operation=write --protocol=rdma --device_name=mlx5_1 --use_vram=true --gpu_id=0 2>&1 | head -3 |
    tee -a "$OUT/e2e.txt"

ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ "$ngpu" -ge 2 ]; then
  step "two GPUs: staging matrix, initiator cuda:0, target cuda:1"
  FERRY_TEST_DEVICE=cuda:0 FERRY_TEST_TARGET_DEVICE=cuda:1 "$B/tests/test_staging" || status=1
  step "two GPUs: shm matrix (CUDA IPC), initiator cuda:0, target cuda:1"
  FERRY_TEST_DEVICE=cuda:0 FERRY_TEST_TARGET_DEVICE=cuda:1 "$B/tests/test_shm" || status=1
  step "two GPUs: ferry-bench cuda:0 -> cuda:1 over tcp (staged) and shm (direct)"
  bench_pair tcp 1 0
  bench_pair tcp,shm 1 0
else
  step "two GPUs: SKIPPED (this host has $ngpu GPU)"
fi
exit $status

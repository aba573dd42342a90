#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The Ascend hardware checklist, one command on a 910B host with CANN
# installed (source set_env.sh first, or let this script find it):
#
#   tests/npu/run.sh [npu index, default 0] > npu-report.txt
#
# Builds ferry into build-npu/, then runs: the device tests on the real
# libascendcl.so, the staging matrix on npu:N, the ACL probes (pageable host
# memory, 64-byte alignment, aclrtMemcpyBatchAsync, aclrtPointerGetAttributes:
# what this CANN really does), the staging benchmark next to one large D2H
# (with and without aggregation in HBM), ferry-bench npu:N -> tcp -> cpu and
# npu:N -> rdma -> cpu where an RDMA NIC exists, and a torch_npu coexistence
# check.  It prints one report to paste into an issue; every step says PASS,
# FAIL or SKIP.  Nothing here has run on Ascend hardware yet (README: Ascend).
set -uo pipefail
cd "$(dirname "$0")/../.."
N=${1:-0}
B=${BUILD:-build-npu}
OUT=$(mktemp -d)
declare -a summary
step() { echo; echo "== $*"; }
result() { summary+=("$1: $2"); echo "-> $2"; }

if ! command -v npu-smi >/dev/null; then
  for f in /usr/local/Ascend/ascend-toolkit/set_env.sh "$HOME/Ascend/ascend-toolkit/set_env.sh"; do
    [ -f "$f" ] && . "$f" && break
  done
fi
step "machine"
uname -srm; nproc | sed 's/^/cpus: /'
npu-smi info 2>&1 | head -20 || echo "npu-smi: not found"
for f in /usr/local/Ascend/ascend-toolkit/latest/version.cfg /usr/local/Ascend/driver/version.info; do
  [ -f "$f" ] && { echo "$f:"; sed 's/^/  /' "$f"; }
done
git log -1 --oneline 2>/dev/null

step "build"
if cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$OUT/cmake.log" 2>&1 &&
   cmake --build "$B" -j"$(nproc)" >>"$OUT/cmake.log" 2>&1; then
  result build PASS
else
  tail -20 "$OUT/cmake.log"; result build FAIL; printf '%s\n' "${summary[@]}"; exit 1
fi

check() { # name, command...
  local name=$1; shift
  step "$name"
  "$@" >"$OUT/step.log" 2>&1
  local rc=$?
  tail -25 "$OUT/step.log"
  case $rc in 0) result "$name" PASS ;; 77) result "$name" SKIP ;; *) result "$name" "FAIL (exit $rc)" ;; esac
}

check "device tests (real ACL)" "$B/tests/test_device_ascend"
check "ACL probes" "$B/npu_probe" "$N"
check "staging matrix on npu:$N" env FERRY_TEST_DEVICE="npu:$N" "$B/tests/test_staging"
check "staging matrix on npu:$N, no aggregation" env FERRY_TEST_DEVICE="npu:$N" FERRY_STAGING_AGGREGATE=0 \
  "$B/tests/test_staging"

step "staging benchmark (aggregation in HBM vs one D2H per block), next to one large D2H"
for agg in auto 0; do
  echo "FERRY_STAGING_AGGREGATE=$agg"
  FERRY_STAGING_AGGREGATE=$agg "$B/staging_bench" "npu:$N" 2 16384 65536 1048576 || result "staging bench $agg" FAIL
done
echo "FERRY_STAGING_AGGREGATE=auto, 8 MiB chunks (the reference engine's HBM buffer size)"
FERRY_STAGING_CHUNK_SIZE=8388608 FERRY_SLICE_SIZE=8388608 "$B/staging_bench" "npu:$N" 2 65536 || true

bench_pair() { # protocol
  local proto=$1 log; log=$(mktemp)
  "$B/ferry-bench" --mode=target --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
      --operation=write --protocol="$proto" --location=cpu --buffer_size=256M >"$log" 2>&1 &
  local tpid=$!
  for _ in $(seq 600); do grep -q ready "$log" && break; sleep 0.1; done
  local seg; seg=$(sed -n 's/.*segment \([^ ]*\).*/\1/p' "$log")
  local rc=0
  for op in write read; do
    for bs in 65536 1048576; do
      "$B/ferry-bench" --mode=initiator --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
          --operation=$op --protocol="$proto" --location="npu:$N" --segment_id="$seg" --buffer_size=128M \
          --block_size=$bs --batch_size=128 --duration=4 --json >"$log.out" 2>&1 || rc=1
      grep '^{' "$log.out" || tail -3 "$log.out"
    done
  done
  kill $tpid; wait $tpid 2>/dev/null
  rm -f "$log" "$log.out"
  return $rc
}
check "ferry-bench npu:$N -> tcp -> cpu (data verified)" bench_pair tcp
if ls /sys/class/infiniband 2>/dev/null | grep -q .; then
  check "ferry-bench npu:$N -> rdma -> cpu (data verified)" bench_pair rdma
else
  step "ferry-bench over rdma"; result "ferry-bench rdma" "SKIP (no RDMA NIC)"
fi

step "torch_npu coexistence"
if python3 -c 'import torch_npu' 2>/dev/null; then
  PYTHON=$(command -v python3) FERRY_BUILD_DIR="$B-py" bash python/build.sh >"$OUT/py.log" 2>&1 || tail -5 "$OUT/py.log"
  check "torch_npu coexistence" env PYTHONPATH="$PWD/python:${PYTHONPATH:-}" FERRY_NPU="$N" \
    python3 tests/npu/torch_npu_check.py
else
  result "torch_npu coexistence" "SKIP (no torch_npu)"
fi

echo; echo "== report"
printf '%s\n' "${summary[@]}"
rm -rf "$OUT"

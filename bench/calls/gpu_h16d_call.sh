#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16d_call.sh — issue 16 item 2 on the GPU machine, before and after in
# one run (h16d): GPU to GPU over shm (CUDA IPC) with one submitting thread,
# 128 blocks a batch, data verified, builds interleaved cell by cell.
#   1. the same-run reference: bench/peer_ref.py, a 256 MiB copy cuda:0 ->
#      cuda:$TGPU (the same device on a one-GPU machine; also 0 -> 1 when a
#      second GPU is there);
#   2. one ferry-bench target per build (started once, cuda:$TGPU), then
#      ROUNDS rounds of: every block size, WRITE and READ, every spec in
#      turn, one initiator on cuda:0 a cell.  One line a cell: round, label,
#      op, block, GB/s, ratio to the reference, CPU us per request, batch
#      p50 / p99 us;
#   3. TESTS=1: test_cuda_ipc, test_staging and test_shm of the first build
#      (initiator cuda:0, target cuda:$TGPU);
#   4. TRACES="label ...": bench/gpu_trace.sh of those specs' builds, WRITE
#      64 KiB and 1 MiB (where a batch's time goes).
#   [OUT=dir] [TGPU=0] [ROUNDS=3] [SECS=1] [BLOCKS="65536 1048576"] [TESTS=1] [THREADS=1] [PEER=GB/s]
#   bash bench/calls/gpu_h16d_call.sh LABEL=BUILD[:VAR=value,VAR=value] ...
# BUILD is a bundle folder (ferry-bench, lib/, tests/); a spec's variables are
# set on the initiator only (the side that makes every copy).  The first
# spec's build is the one tested.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)   # bench/ (this script lies in bench/calls/)
. "$here/target_lib.sh"
O=${OUT:-/tmp/h16d-out}
mkdir -p "$O"
TGPU=${TGPU:-0}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-1}
BLOCKS=${BLOCKS:-65536 1048576}
TESTS=${TESTS:-1}
THREADS=${THREADS:-1}
VRAM=${VRAM:-true}   # false: host memory (to try the script without a GPU)
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
echo "== $(date -u +%T) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1), $ngpu GPU(s), $(nproc) CPUs"
first=${1#*=}
first=${first%%:*}
export LD_LIBRARY_PATH="$PWD/$first/lib:${LD_LIBRARY_PATH:-}"

# PEER=GB/s: the reference of an earlier invocation of the same call (skips peer_ref.py)
peer=${PEER:-}
if [ -z "$peer" ]; then
  ref=$(timeout 60 python3 "$here/peer_ref.py" 0 "$TGPU" 256 2 2>&1)
  echo "$ref"
  peer=$(echo "$ref" | sed -n '1s/.*: \([0-9.]*\) GB\/s/\1/p')
  [ -n "$peer" ] || peer=0
fi
if [ -z "${PEER:-}" ] && [ "$ngpu" -ge 2 ] && [ "$TGPU" = 0 ]; then
  timeout 60 python3 "$here/peer_ref.py" 0 1 256 2 2>&1 | head -1
fi

# one target per build
declare -A seg pid
builds=()
for spec in "$@"; do
  b=${spec#*=}
  b=${b%%:*}
  [ -n "${seg[$b]:-}" ] && continue
  target_start "$O/target-$(basename "$b").log" timeout 900 "$b/ferry-bench" --mode=target \
      --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE --protocol=tcp,shm --use_vram=$VRAM \
      --gpu_id="$TGPU" --buffer_size=1G
  seg[$b]=$TARGET_SEG
  pid[$b]=$TARGET_PID
  builds+=("$b")
  echo "target of $b: ${TARGET_SEG:-DID NOT START}"
done
num() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
echo "== $(date -u +%T) cells ($THREADS thread(s)): round label op block GB/s ratio cpu_us/req p50 p99"
for r in $(seq "$ROUNDS"); do
  for bs in $BLOCKS; do
    for op in write read; do
      for spec in "$@"; do
        label=${spec%%=*}
        rest=${spec#*=}
        b=${rest%%:*}
        vars=""
        [ "$rest" != "$b" ] && vars=$(echo "${rest#*:}" | tr ',' ' ')
        # shellcheck disable=SC2086  # vars: zero or more assignments
        line=$(env $vars timeout 60 "$b/ferry-bench" --mode=initiator --local_server_name=127.0.0.1 \
            --metadata_server=P2PHANDSHAKE --protocol=tcp,shm --use_vram=$VRAM --gpu_id=0 \
            --segment_id="${seg[$b]}" --operation=$op --block_size=$bs --batch_size=128 --threads="$THREADS" \
            --duration="$SECS" --buffer_size=1G --json 2>"$O/init.log" | tail -1)
        gbs=$(echo "$line" | num gb_per_s)
        ratio=$(awk -v a="${gbs:-0}" -v b="$peer" 'BEGIN{if (b > 0) printf "%.3f", a / b; else print "-"}')
        v=""
        case $line in *'"verified":true'*) v=verified ;; *) v=NOT-VERIFIED ;; esac
        echo "r$r $label $op $bs ${gbs:-FAILED} $ratio $(echo "$line" | num cpu_us_per_request)" \
             "$(echo "$line" | num batch_p50_us) $(echo "$line" | num batch_p99_us) $v"
        echo "r$r $label $op $bs $line" >>"$O/cells.jsonl"
        [ -n "$gbs" ] || tail -3 "$O/init.log"
      done
    done
  done
done
for b in "${builds[@]}"; do
  TARGET_PID=${pid[$b]}
  target_stop
  echo "target of $b: $(grep 'target cost' "$O/target-$(basename "$b").log" | tail -1)"
done
if [ "$TESTS" = 1 ]; then
  echo "== $(date -u +%T) GPU tests of $first"
  for t in "timeout 120 $first/tests/test_cuda_ipc" \
           "env FERRY_TEST_DEVICE=cuda:0 timeout 200 $first/tests/test_staging" \
           "env FERRY_TEST_DEVICE=cuda:0 FERRY_TEST_TARGET_DEVICE=cuda:$TGPU timeout 200 $first/tests/test_shm"; do
    $t >"$O/test.log" 2>&1
    rc=$?
    echo "$t: rc $rc, $(grep -c '^\[       OK \]' "$O/test.log") passed, $(grep -c '^\[  FAILED  \]' "$O/test.log") failed"
    [ $rc = 0 ] || tail -15 "$O/test.log"
    cp "$O/test.log" "$O/$(basename "${t##* }").log"
  done
fi

for label in ${TRACES:-}; do
  for spec in "$@"; do
    [ "${spec%%=*}" = "$label" ] || continue
    b=${spec#*=}
    b=${b%%:*}
    echo "== $(date -u +%T) traces of $label ($b)"
    BUILD=$b SECS=1 THREADS=1 timeout -k 5 60 bash "$here/gpu_trace.sh" \
        "$label tcp,shm cuda:$TGPU cuda:0 write 65536" "$label tcp,shm cuda:$TGPU cuda:0 write 1048576" 2>&1 |
      grep -v '^batch_submit \|^stage_queued\|^copy_queued'
  done
done
echo "== $(date -u +%T) done"

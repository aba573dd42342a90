#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_h16u_call2.sh — issue 16 items 3-4, second GPU call: the submitting
# thread retiring the first gather group itself (FERRY_STAGING_ISSUER_RETIRE_US,
# on by default; =0: before) against the worker doing it, in one binary:
# staging_bench with the worker asleep between batches (--gap), gpu_cost.sh
# cuda:0 -> cuda:1 one and four threads before / after (host cells beside,
# the idle engine after), one trace; then tests/gpu/run.sh.  Run from the
# repository root with BUILD=<bundle>, bench scripts in <bundle>/bench.
. "$(dirname "$0")/gpu_call_lib.sh"
OUT=${OUT:-/tmp/h16u-out}
mkdir -p "$OUT"
COST_DEFAULTS=(SECS=1) # every cell names its IDLE
echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)"
for retire in 0 300; do
  echo "== $(date -u +%T) staging_bench --gap=400 (the worker sleeps between batches), FERRY_STAGING_ISSUER_RETIRE_US=$retire"
  FERRY_STAGING_ISSUER_RETIRE_US=$retire timeout 30 "$B/staging_bench" --gap=400 --op=gather cuda:0 1 16384 2>&1 | tail -1
done
cost "host" IDLE=0 MEMS=cpu THREADS=1
cost "staged, before (FERRY_STAGING_ISSUER_RETIRE_US=0)" IDLE=0 MEMS=cuda0 CELL_ENV=FERRY_STAGING_ISSUER_RETIRE_US=0
cost "staged, after (default: 300)" IDLE=10 MEMS=cuda0
echo "== $(date -u +%T) trace"
timeout -k 5 40 env SECS=1 THREADS=1 bash "$here/gpu_trace.sh" "staged-after tcp cuda:1 cuda:0 write 16384" 2>&1
echo "== $(date -u +%T) tests/gpu/run.sh"
timeout -k 5 150 bash tests/gpu/run.sh > "$OUT/run_sh.txt" 2>&1
echo "run.sh rc=$?"
grep -E '^== |tests|PASSED|FAILED|SKIPPED|passed|failed|verified|iperf3|rc=' "$OUT/run_sh.txt" | grep -v '^\[ *RUN' | head -60
echo "== $(date -u +%T) done"

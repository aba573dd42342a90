# SPDX-License-Identifier: Apache-2.0
# gpu_call_lib.sh — the preamble one GPU call's script shares (gpu_h16u_call{1,2,3}.sh,
# gpu_h16w_call{1,2,3}.sh), sourced from the repository root with BUILD=<bundle>
# (default build-gpu) and the bench scripts copied into <bundle>/bench.
#
# Sets B (the bundle), here (its bench folder) and LD_LIBRARY_PATH (its lib).
# cost LABEL [VAR=value...]: one bench/gpu_cost.sh table under a heading, its
#   rule and header lines dropped; the call's defaults COST_DEFAULTS (an array
#   of VAR=value, set by the caller after sourcing) come first, so a cell's own
#   assignments win; TGPU=1 IDLE=0 before those; at most COST_TIMEOUT seconds.
# traces SECONDS CASE...: bench/gpu_trace.sh at one thread, 1 s a case, with the
#   per-batch span lines (batch_submit, stage_queued, copy_queued) dropped.
set -uo pipefail
B=${BUILD:-build-gpu}
export BUILD=$B
here=$B/bench
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}"
COST_TIMEOUT=90
COST_DEFAULTS=()
cost() {
  local label=$1
  shift
  echo "== $(date -u +%T) $label"
  timeout -k 5 "$COST_TIMEOUT" env TGPU=1 IDLE=0 "${COST_DEFAULTS[@]}" "$@" bash "$here/gpu_cost.sh" 2>&1 |
    grep -v '^|---\|^| memory'
}
traces() {
  local secs=$1
  shift
  echo "== $(date -u +%T) traces"
  timeout -k 5 "$secs" env SECS=1 THREADS=1 bash "$here/gpu_trace.sh" "$@" 2>&1 |
    grep -v '^batch_submit \|^stage_queued\|^copy_queued'
}

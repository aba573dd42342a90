# SPDX-License-Identifier: Apache-2.0
# mps_lib.sh — sourced by the one-GPU bench scripts (calls/gpu_h16a_call*.sh): CUDA
# MPS as this user's daemon, so that two processes on one GPU (a ferry-bench
# initiator and target on cuda:0) share one server context instead of the
# GPU time-slicing between their contexts (docs/BENCHMARKS.md, h16x: every
# device copy 130-280 us without it).  Changes no device setting.
#
# mps_start: starts nvidia-cuda-mps-control -d with its pipe and log folders
#   under a temp folder and exports CUDA_MPS_PIPE_DIRECTORY /
#   CUDA_MPS_LOG_DIRECTORY, so every CUDA process started after it is a
#   client; says so, or why not (then MPS_ON stays 0 and nothing is exported).
# mps_stop: `echo quit` to the daemon, waits for it, unexports; nothing if
#   none was started.  Safe to call twice (the scripts trap it on EXIT).
# mps_state: "on" or "off".  mps_servers: the daemon's server list.
# DRY=1: mps_start only says what it would do.
MPS_ON=0
MPS_DIR=""
mps_state() { [ "$MPS_ON" = 1 ] && echo on || echo off; }
mps_start() {
  echo "== $(date -u +%T) mps start"
  if [ "${DRY:-0}" = 1 ]; then
    echo "   nvidia-cuda-mps-control -d (pipe/log under a temp folder)"
    MPS_ON=1
    return 0
  fi
  if ! command -v nvidia-cuda-mps-control >/dev/null; then
    echo "MPS: nvidia-cuda-mps-control is not on this machine; running without MPS"
    return 1
  fi
  MPS_DIR=$(mktemp -d /tmp/ferry-mps.XXXXXX)
  mkdir -p "$MPS_DIR/pipe" "$MPS_DIR/log"
  export CUDA_MPS_PIPE_DIRECTORY="$MPS_DIR/pipe" CUDA_MPS_LOG_DIRECTORY="$MPS_DIR/log"
  if ! nvidia-cuda-mps-control -d; then
    echo "MPS: the control daemon refused to start (rc $?); running without MPS"
    cat "$MPS_DIR/log/control.log" 2>/dev/null | tail -5
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    return 1
  fi
  sleep 0.5
  MPS_ON=1
  echo "MPS: daemon up (pipe $CUDA_MPS_PIPE_DIRECTORY)"
}
mps_servers() {
  [ "$MPS_ON" = 1 ] || { echo "MPS off"; return 0; }
  [ "${DRY:-0}" = 1 ] && return 0
  echo get_server_list | nvidia-cuda-mps-control
  tail -5 "$MPS_DIR/log/control.log" 2>/dev/null
  tail -5 "$MPS_DIR/log/server.log" 2>/dev/null
}
mps_stop() {
  [ "$MPS_ON" = 1 ] || return 0
  echo "== $(date -u +%T) mps stop"
  MPS_ON=0
  [ "${DRY:-0}" = 1 ] && return 0
  echo quit | nvidia-cuda-mps-control
  for _ in $(seq 50); do pgrep -u "$(id -u)" -f "nvidia-cuda-mps-control -d" >/dev/null || break; sleep 0.1; done
  echo "-- MPS server log, last lines:"
  tail -4 "$MPS_DIR/log/server.log" 2>/dev/null
  if [ -n "${OUT:-}" ]; then cp -r "$MPS_DIR/log" "$OUT/mps-log-$(date +%H%M%S)" 2>/dev/null; fi
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
}

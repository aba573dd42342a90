# SPDX-License-Identifier: Apache-2.0
# target_lib.sh — sourced by the bench scripts that pair a ferry-bench target
# with an initiator (gpu_cost.sh, gpu_trace.sh; tests/bench/same_block.sh).
#
# target_start LOG CMD...: runs CMD (a ferry-bench --mode=target command line,
# env assignments in front allowed through `env`) in the background with its
# output in LOG, waits until it says "target ready" (30 s at most, whatever
# the log level prints before) and sets TARGET_PID and TARGET_SEG (the
# segment to open; empty if it never got ready).
# target_stop: SIGINT, so the target prints its cost line into LOG, then waits.
# target_launch LOG CMD...: runs CMD in the background with its output in
# LOG, emptied here first, and sets TARGET_PID.  A background job opens its
# own redirection only once it runs: under load the caller's first poll of a
# LOG reused from an earlier target came first and read that target's
# "ready" line, so an initiator connected to a port closed by then
# ("Connection refused"; seen in ~3 % of tcp_knobs.sh's runs under load).
#
# Also for the loopback scripts (tcp_loopback.sh, tcp_threads.sh), which start
# their targets by hand:
# target_segment PID OUT TRIES: the segment a ferry-bench target (PID, its
# stdout in OUT) says it is ready with, polled every 0.1 s TRIES times at most
# or until PID exits; prints it, or nothing.
# stop_pid PID: TERM, up to 5 s, then KILL, and reaps it; nothing if PID is empty.
# to_bytes 4K: 4096 (K/M/G are powers of 2; a bare number stays as it is).
# listening PORT: does a TCP socket listen on it? (ss, else a connect)
# free_port PORT: the first port from PORT up that nothing listens on.
target_launch() {
  local log=$1
  shift
  : >"$log"
  "$@" >"$log" 2>&1 &
  TARGET_PID=$!
}
target_start() {
  local log=$1
  shift
  target_launch "$log" "$@"
  for _ in $(seq 300); do grep -q "target ready" "$log" && break; sleep 0.1; done
  TARGET_SEG=$(sed -n 's/.*target ready: segment \([^ ]*\).*/\1/p' "$log")
}
target_stop() {
  kill -INT "$TARGET_PID" 2>/dev/null
  wait "$TARGET_PID" 2>/dev/null
}
target_segment() {
  local pid=$1 out=$2 seg=""
  for _ in $(seq "$3"); do
    seg=$(sed -n 's/^ferry-bench target ready: segment \([^ ]*\) .*/\1/p' "$out")
    [ -n "$seg" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "$seg"
}
stop_pid() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}
to_bytes() {
  local n=${1%[KkMmGg]}
  case "$1" in
    *[Kk]) echo $((n << 10)) ;;
    *[Mm]) echo $((n << 20)) ;;
    *[Gg]) echo $((n << 30)) ;;
    *) echo "$1" ;;
  esac
}
listening() {
  if command -v ss >/dev/null; then
    ss -ltnH "sport = :$1" 2>/dev/null | grep -q .
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
free_port() {
  local p=$1
  while listening "$p"; do p=$((p + 1)); done
  echo "$p"
}

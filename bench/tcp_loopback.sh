#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tcp_loopback.sh — ferry TCP over loopback, side by side with iperf3.
#
# For each operation and block size: run iperf3 on loopback, then a fresh
# ferry-bench target + initiator (--json) for the same duration, and print one
# markdown row with both rates and their ratio.  Absolute figures drift on shared
# machines; the ratio, measured back to back, is the number to compare.
#
# usage: bench/tcp_loopback.sh [--quick]      (--quick: DURATION=1)
# env:   DURATION (5)  OPS ("write read")  BLOCKS ("4K 64K 1M 4M")  BATCH (128)
#        THREADS (1)  FERRY_BENCH (build/ferry-bench)  IPERF_STREAMS (1)
#        IPERF_PORT (first free port from 5201)
#        JSON (a file: one JSON object per row appended to it, for bench/plot.py)
#        AUTH_COMPARE (0; 1: each row also runs ferry with FERRY_AUTH_KEY set on
#        both sides, in an extra column, so the cost of authentication shows)
# Exit status: 0 if every ferry run succeeded and verified, else 1.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
py=${PYTHON:-/usr/bin/python3}  # PYTHON: another python3 (on the GPU host, the one on PATH)
. "$here/target_lib.sh"   # stop_pid, to_bytes, listening, free_port, target_segment

case "${1:-}" in
  --quick) DURATION=1 ;;
  "") ;;
  -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "tcp_loopback.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac
DURATION=${DURATION:-5}
OPS=${OPS:-write read}
BLOCKS=${BLOCKS:-4K 64K 1M 4M}
BATCH=${BATCH:-128}
THREADS=${THREADS:-1}
IPERF_STREAMS=${IPERF_STREAMS:-1}
FERRY_BENCH=${FERRY_BENCH:-$root/build/ferry-bench}

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-tcp-loopback.XXXXXX")
target_pid=""
iperf_pid=""
fg_pid=""   # the command run_fg waits for
cost="n/a | n/a | n/a"   # run_ferry: initiator and target CPU us/request, batch p50/p99 us
result=""   # functions below return their figure here, not through $(...),
            # so that the pids they start stay visible to the cleanup trap

# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  stop_pid "$fg_pid"; fg_pid=""
  stop_pid "$target_pid"; target_pid=""
  stop_pid "$iperf_pid"; iperf_pid=""
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background and waits for it: bash runs traps during
# `wait`, but only after a foreground command ends.
run_fg() {
  local rc
  "$@" &
  fg_pid=$!
  wait "$fg_pid"
  rc=$?
  fg_pid=""
  return "$rc"
}

die() { echo "tcp_loopback.sh: $*" >&2; exit 1; }

[ -x "$FERRY_BENCH" ] || die "no ferry-bench at $FERRY_BENCH (build it, or set FERRY_BENCH)"
command -v iperf3 >/dev/null || die "iperf3 not installed"
[ -x "$py" ] || die "$py not found (needed to parse JSON)"

json_field() {   # json_field FILE EXPR  (EXPR reads the parsed object d)
  "$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# iperf3 for DURATION seconds on loopback; result = GB/s (1e9 B/s) or n/a.
run_iperf() {
  local port
  result="n/a"
  port=$(free_port "${IPERF_PORT:-5201}")
  iperf3 -s -1 -p "$port" >"$work/iperf-server.log" 2>&1 &
  iperf_pid=$!
  for _ in $(seq 50); do listening "$port" && break; sleep 0.1; done
  if run_fg iperf3 -c 127.0.0.1 -p "$port" -t "$DURATION" -P "$IPERF_STREAMS" -J \
       >"$work/iperf.json" 2>"$work/iperf-client.log"; then
    result=$(json_field "$work/iperf.json" \
      '"%.3f" % (d["end"]["sum_received"]["bits_per_second"] / 8e9)') || result="n/a"
  else
    echo "iperf3 failed:" >&2
    tail -n 3 "$work/iperf-client.log" "$work/iperf.json" >&2
  fi
  stop_pid "$iperf_pid"; iperf_pid=""
}

# A fresh ferry-bench target, then the initiator against it; result = GB/s,
# or FAIL(...) with a non-zero return.
run_ferry() {
  local op=$1 block=$2 buffer=$3 seg rc
  result="FAIL"
  cost="n/a | n/a | n/a"
  : >"$work/target.out" # before the job starts: no earlier target's "ready" (target_lib.sh, target_launch)
  "$FERRY_BENCH" --mode=target --local_server_name=127.0.0.1 --buffer_size="$buffer" \
      --block_size="$block" >"$work/target.out" 2>"$work/target.err" &
  target_pid=$!
  seg=$(target_segment "$target_pid" "$work/target.out" 300)
  if [ -z "$seg" ]; then
    echo "ferry-bench target did not start:" >&2
    tail -n 5 "$work/target.err" >&2
    stop_pid "$target_pid"; target_pid=""
    result="FAIL(target)"; return 1
  fi
  run_fg "$FERRY_BENCH" --mode=initiator --segment_id="$seg" --operation="$op" \
      --block_size="$block" --batch_size="$BATCH" --threads="$THREADS" \
      --buffer_size="$buffer" --duration="$DURATION" --json \
      >"$work/ferry.json" 2>"$work/ferry.err"
  rc=$?
  stop_pid "$target_pid"; target_pid=""
  if [ "$rc" -ne 0 ] || ! [ -s "$work/ferry.json" ]; then
    echo "ferry-bench $op block $block failed (exit $rc):" >&2
    grep -v '^\[ *[0-9]*s\]' "$work/ferry.err" | tail -n 5 >&2
    result="FAIL(exit $rc)"; return 1
  fi
  if [ "$(json_field "$work/ferry.json" 'd["verified"]')" != "True" ]; then
    result="FAIL(unverified)"; return 1
  fi
  result=$(json_field "$work/ferry.json" '"%.3f" % d["gb_per_s"]')
  cost=$(json_field "$work/ferry.json" '"%.2f | %s | %.0f / %.0f" % (d["cpu_us_per_request"], "TARGET", d["batch_p50_us"], d["batch_p99_us"])')
  local tcost
  tcost=$(sed -n 's/^ferry-bench target cost: .* cpu_us_per_request=\([0-9.]*\).*/\1/p' "$work/target.out")
  cost=${cost/TARGET/${tcost:-n/a}}
}

ratio() {   # ratio A B -> A/B with 2 decimals, or n/a
  case "$1$2" in *[!0-9.]*|"") echo "n/a"; return ;; esac
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f\n", a / b; else print "n/a" }'
}

cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "## ferry TCP loopback vs iperf3"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "- kernel: $(uname -r); cpus: $(nproc); cpu: ${cpu_model:-unknown}"
echo "- $(iperf3 --version 2>/dev/null | head -n 1)"
echo "- ferry-bench: $FERRY_BENCH; duration ${DURATION}s; batch $BATCH; threads $THREADS;" \
     "iperf3 streams $IPERF_STREAMS"
echo
AUTH_COMPARE=${AUTH_COMPARE:-0}
if [ "$AUTH_COMPARE" = 1 ]; then
  echo "| op | block | batch | ferry GB/s | ferry + auth GB/s | iperf3 GB/s (same run) | ratio | ratio with auth |"
  echo "|---|---|---|---|---|---|---|---|"
else
  echo "| op | block | batch | ferry GB/s | iperf3 GB/s (same run) | ratio | CPU µs/request initiator | target | batch p50 / p99 µs |"
  echo "|---|---|---|---|---|---|---|---|---|"
fi

status=0
for op in $OPS; do
  for block in $BLOCKS; do
    bytes=$(to_bytes "$block")
    need=$((THREADS * BATCH * bytes))
    buffer=$((need > (1 << 30) ? need : (1 << 30)))
    run_iperf
    iperf=$result
    run_ferry "$op" "$bytes" "$buffer" || status=1
    ferry=$result
    if [ "$AUTH_COMPARE" = 1 ]; then
      # a fresh 32-byte key for this row, in the environment of both processes
      FERRY_AUTH_KEY=$(head -c 24 /dev/urandom | base64) run_ferry "$op" "$bytes" "$buffer" || status=1
      authed=$result
      echo "| $op | $block | $BATCH | $ferry | $authed | $iperf | $(ratio "$ferry" "$iperf") |" \
           "$(ratio "$authed" "$iperf") |"
    else
      echo "| $op | $block | $BATCH | $ferry | $iperf | $(ratio "$ferry" "$iperf") | $cost |"
    fi
    [ -n "${JSON:-}" ] && printf '{"op": "%s", "block": "%s", "batch": %s, "ferry_gb_s": "%s", "iperf3_gb_s": "%s"}\n' \
      "$op" "$block" "$BATCH" "$ferry" "$iperf" >> "$JSON"
  done
done
exit "$status"

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tcp_switches.sh — who waits, per MiB: for each cell one ferry-bench target +
# initiator pair on loopback (cpu memory, batch 128, data verified), and over
# WINDOW seconds of its timed loop each thread's voluntary (it waited: a
# lock, a socket, a condition) and involuntary (preempted) context switches
# from /proc, summed by thread name and side and divided by the MiB moved
# in the window.  It tells, e.g., whether the submitting threads of a READ
# wait on their requests' sockets (bench-submit) or only the receivers wait
# for payload (ferry-tcp-recv).  Needs bash, coreutils, awk, /proc.
#
# usage: bench/tcp_switches.sh
# env:   FERRY_BENCH (build/ferry-bench)  CELLS ("read:1M:4 write:1M:4":
#        op:block:threads)  WINDOW (3 s)  the FERRY_* knobs pass through.
# Exit status: 0 if every run verified, else 1.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/target_lib.sh"   # target_launch
FERRY_BENCH=${FERRY_BENCH:-$here/../build/ferry-bench}
CELLS=${CELLS:-read:1M:4 write:1M:4}
WINDOW=${WINDOW:-3}
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-switches.XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bytes_of() {   # 4K / 1M / 4M / 65536 -> bytes
  case $1 in
    *K) echo $(( ${1%K} << 10 )) ;;
    *M) echo $(( ${1%M} << 20 )) ;;
    *) echo "$1" ;;
  esac
}

# snapshot INITIATOR TARGET: "side:thread-name voluntary involuntary", summed
# by name; one awk a side over every thread's status file (Name: is its comm),
# so that the snapshot takes milliseconds, not a fork per thread
snapshot() {
  { awk -v s=i -f "$work/status.awk" /proc/"$1"/task/*/status 2>/dev/null
    awk -v s=t -f "$work/status.awk" /proc/"$2"/task/*/status 2>/dev/null; } |
    awk '{ v[$1] += $2; n[$1] += $3 } END { for (k in v) print k, v[k], n[k] }' | sort
}
cat >"$work/status.awk" <<'AWK'
FNR == 1 && name != "" { print s ":" name, v + 0, n + 0 }
FNR == 1 { name = ""; v = 0; n = 0 }
/^Name:/ { name = $2 }
/^voluntary_ctxt_switches/ { v = $2 }
/^nonvoluntary_ctxt_switches/ { n = $2 }
END { if (name != "") print s ":" name, v + 0, n + 0 }
AWK

status=0
echo "## voluntary / involuntary context switches per MiB, by thread ($(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs)"
echo
for cell in $CELLS; do
  IFS=: read -r op block threads <<<"$cell"
  bytes=$(bytes_of "$block")
  buffer=$((bytes * 128 * threads))
  [ "$buffer" -ge $((64 << 20)) ] || buffer=$((64 << 20))
  target_launch "$work/t.log" "$FERRY_BENCH" --mode=target --local_server_name=127.0.0.1 --buffer_size="$buffer" \
    --block_size="$bytes"
  tp=$TARGET_PID
  pids=("$tp")
  seg=""
  for _ in $(seq 600); do
    seg=$(sed -n 's/^ferry-bench target ready: segment \([^ ]*\) .*/\1/p' "$work/t.log")
    [ -n "$seg" ] && break
    kill -0 "$tp" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$seg" ]; then
    echo "$cell: the target did not start" >&2
    kill -TERM "$tp" 2>/dev/null
    wait "$tp" 2>/dev/null
    status=1
    continue
  fi
  rm -f "$work/i.err" "$work/i.json"
  "$FERRY_BENCH" --mode=initiator --segment_id="$seg" --operation="$op" --block_size="$bytes" \
    --batch_size=128 --threads="$threads" --buffer_size="$buffer" --duration=$((WINDOW + 3)) --json \
    >"$work/i.json" 2>"$work/i.err" &
  ip=$!
  pids+=("$ip")
  # from the first progress line (1 s into the timed loop) for WINDOW seconds
  for _ in $(seq 1200); do
    grep -q '^\[' "$work/i.err" 2>/dev/null && break
    kill -0 "$ip" 2>/dev/null || break
    sleep 0.05
  done
  snapshot "$ip" "$tp" >"$work/s0"
  t0=$(date +%s.%N)
  sleep "$WINDOW"
  snapshot "$ip" "$tp" >"$work/s1"
  t1=$(date +%s.%N)
  wait "$ip"
  irc=$?
  kill -TERM "$tp" 2>/dev/null
  wait "$tp" 2>/dev/null
  pids=()
  gb=$(tr ',{}' '\n\n\n' <"$work/i.json" | sed -n 's/^ *"gb_per_s": *//p' | head -n 1)
  ok=$(tr ',{}' '\n\n\n' <"$work/i.json" | sed -n 's/^ *"verified": *//p' | head -n 1)
  if [ "$irc" != 0 ] || [ "$ok" != true ] || [ -z "$gb" ]; then
    echo "$cell: FAILED (exit $irc, verified ${ok:-?})" >&2
    status=1
    continue
  fi
  echo "### $op $block x $threads: $gb GB/s (the run's mean)"
  echo
  echo "| side:thread | voluntary / MiB | involuntary / MiB |"
  echo "|---|---|---|"
  # MiB in the window at the run's mean rate; threads gone by s1 are left out
  join "$work/s0" "$work/s1" | awk -v g="$gb" -v a="$t0" -v b="$t1" '
    BEGIN { mib = g * 1e9 * (b - a) / 1048576 }
    mib > 0 { printf "| %s | %.2f | %.2f |\n", $1, ($4 - $2) / mib, ($5 - $3) / mib }'
  echo
done
exit "$status"

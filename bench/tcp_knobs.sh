#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tcp_knobs.sh — ferry's TCP knobs side by side on loopback, cpu memory: for
# each knob set (VARIANTS) and each cell (CELLS), one ferry-bench target +
# initiator pair (batch 128, data verified), in ROUNDS rounds that alternate
# the variants' order (A B C, then C B A) so that a drift of the host shows;
# one iperf3 stream before and after as the reference.  One row a run: GB/s,
# and each side's CPU µs per MiB moved (ferry-bench's own cpu_us_per_request
# over the block size).  Needs bash, coreutils, awk (runs from a bundle).
#
# usage: bench/tcp_knobs.sh
# env:   FERRY_BENCH (build/ferry-bench)  IPERF3 (PATH)  DURATION (2 s a run)
#        CELLS ("write:1M:8 read:1M:8": op:block:threads)  BATCH (128)
#        VARIANTS ("default;FERRY_TCP_RCVLOWAT=262144": ';' between sets,
#        spaces between a set's assignments, 'default' for none)  ROUNDS (1)
#        CPUS (a taskset list, e.g. 0-15: every process runs on those CPUs
#        only, and ferry sizes itself from them; unset: all)
#        PLACE ("T:I", e.g. 0:1, two taskset lists: the target and the
#        iperf3 server run on T, the initiator and the iperf3 client on I;
#        0:1 forces the two sides onto different CPUs, 0:0 onto one; ferry
#        sizes itself from its own list; unset: no placement)
#        IPERF_EACH (1: one more iperf3 stream right before every run, with
#        its GB/s and the run's ratio to it as two more columns: on a
#        host whose load moves within minutes the ratio of each run to
#        its neighbour is steadier than one to the first and last streams)
#        PERF (a perf binary; unset: none): each run is also profiled, the
#        whole host (perf record -a) for PERF_S (1) seconds from 1 s into
#        its timed loop, and the PERF_TOP (25) hottest symbols by thread
#        name follow the table, then each thread name's share, with each side's socket syscalls and
#        context switches per MiB over the same seconds (perf stat; MiB =
#        the run's GB/s x PERF_S).  A perf carried in a bundle: PERF_LIB,
#        its libraries.  DURATION must exceed PERF_S + 1.
# Exit status: 0 if every run succeeded and verified, else 1.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
if [ -n "${CPUS:-}" ] && [ -z "${TCP_KNOBS_PINNED:-}" ]; then
  exec env TCP_KNOBS_PINNED=1 taskset -c "$CPUS" bash "$0" "$@"
fi
. "$here/target_lib.sh"   # target_launch
FERRY_BENCH=${FERRY_BENCH:-$root/build/ferry-bench}
IPERF3=${IPERF3:-$(command -v iperf3 || true)}
DURATION=${DURATION:-2}
CELLS=${CELLS:-write:1M:8 read:1M:8}
BATCH=${BATCH:-128}
VARIANTS=${VARIANTS:-default;FERRY_TCP_RCVLOWAT=262144}
ROUNDS=${ROUNDS:-1}
PERF=${PERF:-}
PERF_S=${PERF_S:-1}
PERF_TOP=${PERF_TOP:-25}
TSET_T="" TSET_I=""
if [ -n "${PLACE:-}" ]; then
  TSET_T="taskset -c ${PLACE%%:*}"
  TSET_I="taskset -c ${PLACE#*:}"
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-knobs.XXXXXX")
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
json_num() { tr ',{}' '\n\n\n' <"$1" | sed -n "s/^ *\"$2\": *//p" | head -n 1; }

iperf() {   # one single-stream iperf3 figure, GB/s
  [ -n "$IPERF3" ] || { echo "n/a"; return; }
  local port=$((20000 + $$ % 20000))
  $TSET_T "$IPERF3" -s -1 -p "$port" >/dev/null 2>&1 &
  local sp=$!
  sleep 0.3
  timeout 20 $TSET_I "$IPERF3" -c 127.0.0.1 -p "$port" -t "$DURATION" -f g 2>/dev/null |
    awk '/receiver/ { for (i = 1; i < NF; i++) if ($(i + 1) == "Gbits/sec") printf "%.3f", $i / 8 }'
  kill "$sp" 2>/dev/null
  wait "$sp" 2>/dev/null
}

status=0
profiles=""
perf_run() { env ${PERF_LIB:+LD_LIBRARY_PATH=$PERF_LIB} "$PERF" "$@"; }
COUNTED=syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvmsg,syscalls:sys_enter_recvfrom,syscalls:sys_enter_poll,syscalls:sys_enter_futex
COUNTED+=,context-switches
# profile TITLE INITIATOR_PID TARGET_PID: perf over the whole host while the
# initiator (started just before) is in its timed loop; the hottest symbols
# by thread go to $profiles, each side's counts to $work/count-{i,t}.txt
profile() {
  local w=0 si st # the initiator's first progress line ("[  1s] ...") comes 1 s into its timed loop
  until grep -q '^\[' "$work/i.err" 2>/dev/null || ! kill -0 "$2" 2>/dev/null || ((w++ >= 1200)); do
    sleep 0.05
  done
  local ipid # the initiator runs under timeout: count its child
  ipid=$(cat "/proc/$2/task/$2/children" 2>/dev/null || pgrep -P "$2")
  perf_run stat -x, -e "$COUNTED" -p "${ipid%% *}" -o "$work/count-i.txt" -- sleep "$PERF_S" >/dev/null 2>&1 &
  si=$!
  perf_run stat -x, -e "$COUNTED" -p "$3" -o "$work/count-t.txt" -- sleep "$PERF_S" >/dev/null 2>&1 &
  st=$!
  perf_run record -a -g -F 499 -o "$work/perf.data" -- sleep "$PERF_S" >/dev/null 2>&1 ||
    { profiles+=$'\n'"### $1: perf record failed"$'\n'; wait "$si" "$st"; return; }
  wait "$si" "$st"
  profiles+=$'\n'"### $1 (perf record -a, $PERF_S s; % of the host's samples)"$'\n\n```\n'
  profiles+=$(perf_run report -i "$work/perf.data" --no-children --sort comm,sym --stdio -g none 2>/dev/null |
    grep -E '^ +[0-9]' | head -n "$PERF_TOP")
  profiles+=$'\n```\n\nby thread name:\n\n```\n'
  profiles+=$(perf_run report -i "$work/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null |
    grep -E '^ +[0-9]' | head -n 12)
  profiles+=$'\n```\n'
  rm -f "$work/perf.data"
}

# counts GB/s: the line of per-MiB counts for $profiles (after the run: its GB/s)
counts() {
  local side out=""
  for side in i t; do
    [ -s "$work/count-$side.txt" ] || continue
    out+=$(awk -F, -v g="$1" -v s="$PERF_S" -v who="$([ $side = i ] && echo initiator || echo target)" '
      BEGIN { mib = g * 1e9 * s / 1048576; printf "%s", who }
      /^[0-9]/ && mib > 0 { n = $3; sub(/^syscalls:sys_enter_/, "", n); printf " %s %.1f", n, $1 / mib }' "$work/count-$side.txt")
    out+="; "
  done
  rm -f "$work"/count-[it].txt
  [ -z "$out" ] || profiles+="per MiB (perf stat, the same seconds): ${out%; }"$'\n'
}

# run VARIANT OP BLOCK THREADS: one pair, prints one row
run() {
  local v=$1 op=$2 block=$3 threads=$4 bytes buffer seg="" tp
  bytes=$(bytes_of "$block")
  buffer=$((bytes * BATCH * threads))
  [ "$buffer" -ge $((64 << 20)) ] || buffer=$((64 << 20))
  local envs=() ref="" more=""
  [ "$v" = default ] || read -ra envs <<<"$v"
  [ -z "${IPERF_EACH:-}" ] || ref=$(iperf)
  target_launch "$work/t.log" $TSET_T env "${envs[@]}" "$FERRY_BENCH" --mode=target --local_server_name=127.0.0.1 \
    --buffer_size="$buffer" --block_size="$bytes"
  tp=$TARGET_PID
  pids=("$tp")
  for _ in $(seq 600); do
    seg=$(sed -n 's/^ferry-bench target ready: segment \([^ ]*\) .*/\1/p' "$work/t.log")
    [ -n "$seg" ] && break
    kill -0 "$tp" 2>/dev/null || break
    sleep 0.05
  done
  local gb="FAIL" icpu="" tcpu="" ok="" ip irc=1
  if [ -n "$seg" ]; then
    $TSET_I env "${envs[@]}" timeout -k 5 $((DURATION * 3 + 60)) "$FERRY_BENCH" --mode=initiator \
      --segment_id="$seg" --operation="$op" --block_size="$bytes" --batch_size="$BATCH" --threads="$threads" \
      --buffer_size="$buffer" --duration="$DURATION" --json >"$work/i.json" 2>"$work/i.err" &
    ip=$!
    pids+=("$ip")
    [ -z "$PERF" ] || profile "$v $op $block x $threads" "$ip" "$tp"
    wait "$ip" && irc=0
  fi
  if [ "$irc" = 0 ]; then
    ok=$(json_num "$work/i.json" verified)
    gb=$(json_num "$work/i.json" gb_per_s)
    icpu=$(json_num "$work/i.json" cpu_us_per_request)
    [ -z "$PERF" ] || counts "$gb"
  fi
  kill -TERM "$tp" 2>/dev/null
  wait "$tp" 2>/dev/null
  pids=()
  tcpu=$(sed -n 's/^ferry-bench target cost: .* cpu_us_per_request=\([0-9.]*\).*/\1/p' "$work/t.log")
  [ "$ok" = true ] || { status=1; gb="FAIL(${ok:-exit})"; tail -n 2 "$work/i.err" "$work/t.log" >&2; }
  per_mib() { [ -n "$1" ] && awk -v u="$1" -v b="$bytes" 'BEGIN { printf "%.0f", u * 1048576 / b }'; }
  if [ -n "${IPERF_EACH:-}" ]; then
    more=" ${ref:-n/a} | $(awk -v g="$gb" -v r="$ref" 'BEGIN { if (r + 0 > 0 && g + 0 > 0) printf "%.2f", g / r; else printf "n/a" }') |"
  fi
  echo "| $v | $op | $block | $threads | $gb | $(per_mib "$icpu") | $(per_mib "$tcpu") |$more"
}

echo "## ferry TCP knobs on loopback ($(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) CPUs${CPUS:+ ($CPUS)}${PLACE:+, target:initiator on CPUs $PLACE})"
echo
echo "- $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1); kernel $(uname -r)"
echo "- $FERRY_BENCH; batch $BATCH; $DURATION s a run; CPU µs per MiB: ferry-bench's own figures"
echo "- iperf3 single stream before: $(iperf) GB/s"
echo
if [ -n "${IPERF_EACH:-}" ]; then
  echo "| variant | op | block | threads | GB/s | initiator µs/MiB | target µs/MiB | iperf3 just before | ratio |"
  echo "|---|---|---|---|---|---|---|---|---|"
else
  echo "| variant | op | block | threads | GB/s | initiator µs/MiB | target µs/MiB |"
  echo "|---|---|---|---|---|---|---|"
fi
IFS=';' read -ra sets <<<"$VARIANTS"
for ((r = 0; r < ROUNDS; r++)); do
  order=("${sets[@]}")
  if ((r % 2)); then
    order=()
    for ((i = ${#sets[@]} - 1; i >= 0; i--)); do order+=("${sets[i]}"); done
  fi
  for cell in $CELLS; do
    IFS=: read -r op block threads <<<"$cell"
    for v in "${order[@]}"; do
      run "$v" "$op" "$block" "$threads"
    done
  done
done
echo
echo "- iperf3 single stream after: $(iperf) GB/s"
[ -z "$profiles" ] || printf '\n## Profiles\n%s\n' "$profiles"
exit "$status"

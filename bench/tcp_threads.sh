#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tcp_threads.sh — does ferry's TCP scale with submitting threads?  On loopback,
# cpu memory: ferry-bench target + initiator for each operation, block size and
# number of submitting threads, next to single-stream iperf3, and while each
# run is in its timed loop it samples the CPU of every thread of both processes
# (/proc/PID/task/*/stat, utime+stime over SAMPLE_S seconds, grouped by thread
# name: ferry-tcp-send / -recv / -serve, ferry-acc-tcp, the bench's workers)
# and counts the connections the initiator holds to the target.  Prints one
# compact table per cell plus the per-second rates (a warm-up shows there).
# Needs only bash, coreutils, awk, ss: no Python (runs from a bundle).  About
# 4 minutes on a 32-core host with the sweeps.
#
# usage: bench/tcp_threads.sh
# env:   BUILD (build-gpu: $BUILD/ferry-bench, libraries in $BUILD/lib,
#        iperf3 at $BUILD/bin/iperf3)  FERRY_BENCH  IPERF3 (else PATH)
#        DURATION (3 s a cell)  OPS ("write read")  BLOCKS ("64K 1M 4M")
#        THREADS ("1 4 8")  BATCH (128)  SAMPLE_AT (1: seconds into the timed
#        loop when the CPU sample starts)  SAMPLE_S (1; 0.5 if DURATION < 3)
#        SS_LOG (a folder: the raw `ss -tmi` of the loopback sockets 4 times a
#        second in every cell goes there, one file a cell; a summary of it
#        each second is printed anyway)
#        SWEEP (on >= 8 cpus "32", else none): then also SWEEP_BLOCK (1M) x
#        SWEEP_THREADS (4) with N connections fixed, for each N
#        GROWS (on >= 8 cpus "8388608 auto", else none): then also GROW_BLOCK
#        (64K) x SWEEP_THREADS with each FERRY_TCP_GROW_BYTES (8388608: the
#        fixed value before it scaled with the cores)
#        SLICES (none): then also write 4M x SWEEP_THREADS with each
#        FERRY_SLICE_SIZE
#        WARMUP (1; empty: skip): write 4M x SWEEP_THREADS with 4 KiB pages
#        (ferry-bench --nohuge_pages), then with ferry's default
# FERRY_* variables pass through to both ferry processes.
# Exit status: 0 if every ferry run succeeded and verified, else 1.
set -u

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
. "$here/target_lib.sh"   # stop_pid, to_bytes, listening, free_port, target_segment
BUILD=${BUILD:-$root/build-gpu}
FERRY_BENCH=${FERRY_BENCH:-$BUILD/ferry-bench}
if [ -z "${IPERF3:-}" ]; then
  if [ -x "$BUILD/bin/iperf3" ]; then IPERF3=$BUILD/bin/iperf3; else IPERF3=$(command -v iperf3 || true); fi
fi
[ -d "$BUILD/lib" ] && export LD_LIBRARY_PATH="$BUILD/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
DURATION=${DURATION:-3}
OPS=${OPS:-write read}
BLOCKS=${BLOCKS:-64K 1M 4M}
THREADS=${THREADS:-1 4 8}
BATCH=${BATCH:-128}
SAMPLE_AT=${SAMPLE_AT:-1}
if [ "$DURATION" -ge 3 ]; then SAMPLE_S=${SAMPLE_S:-1}; else SAMPLE_S=${SAMPLE_S:-0.5}; fi   # ends before the run
SS_LOG=${SS_LOG:-}
if [ "$(nproc)" -ge 8 ]; then SWEEP=${SWEEP-32}; GROWS=${GROWS-8388608 auto}; else SWEEP=${SWEEP-}; GROWS=${GROWS-}; fi
SLICES=${SLICES-}
GROW_BLOCK=${GROW_BLOCK:-64K}
WARMUP=${WARMUP-1}
SWEEP_BLOCK=${SWEEP_BLOCK:-1M}
SWEEP_THREADS=${SWEEP_THREADS:-4}
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)

case "${1:-}" in
  -h|--help) sed -n '2,/^# Exit status/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "tcp_threads.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

die() { echo "tcp_threads.sh: $*" >&2; exit 1; }
[ -x "$FERRY_BENCH" ] || die "no ferry-bench at $FERRY_BENCH (set BUILD or FERRY_BENCH)"
command -v ss >/dev/null || die "ss (iproute2) not installed"
[ -n "$SS_LOG" ] && mkdir -p "$SS_LOG"
has_ss=$(ss -ltn 2>/dev/null | head -n 1)   # empty where ss is a stub: no socket lines then

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-tcp-threads.XXXXXX")
target_pid="" init_pid="" iperf_pid="" watch_pid=""
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  stop_pid "$init_pid"; stop_pid "$watch_pid"; stop_pid "$target_pid"; stop_pid "$iperf_pid"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

json_num() { grep -o "\"$2\":[0-9.]*" "$1" | head -n 1 | cut -d: -f2; }

# One stream of iperf3 for DURATION s; prints GB/s or n/a.
run_iperf() {
  local port out=n/a
  [ -n "$IPERF3" ] || { echo n/a; return; }
  port=$(free_port 5201)
  "$IPERF3" -s -1 -p "$port" >"$work/iperf-s.log" 2>&1 &
  iperf_pid=$!
  for _ in $(seq 50); do listening "$port" && break; sleep 0.1; done
  if "$IPERF3" -c 127.0.0.1 -p "$port" -t "$DURATION" -f k >"$work/iperf-c.log" 2>&1; then
    out=$(awk '/receiver/ { for (i = 1; i < NF; i++) if ($(i + 1) == "Kbits/sec") v = $i } END { if (v != "") printf "%.2f", v * 1000 / 8e9; else print "n/a" }' "$work/iperf-c.log")
  fi
  stop_pid "$iperf_pid"; iperf_pid=""
  echo "$out"
}

# snap PID: one line per thread, "tid name ticks" (utime + stime).
snap() {   # builtins only: a fork per thread is slow on a loaded machine
  local t s c f
  for t in /proc/"$1"/task/*; do
    { read -r s <"$t/stat" && read -r c <"$t/comm"; } 2>/dev/null || continue
    s=${s##*) }   # after "(comm) ": state is field 1, utime 12, stime 13
    read -r -a f <<<"$s"
    echo "${t##*/} ${c// /_} $((f[11] + f[12]))"
  done
}

# cpu_table BEFORE AFTER SECONDS: "name×count total% (max%)" per thread name,
# busiest first, and the process total first.
cpu_table() {
  awk -v hz="$hz" -v secs="$3" '
    FNR == NR { before[$1] = $3; next }
    { d = $3 - ($1 in before ? before[$1] : 0); pct = d * 100 / hz / secs
      n[$2]++; sum[$2] += pct; if (pct > mx[$2]) mx[$2] = pct; total += pct }
    END { printf "%.0f total %.0f%%\n", 1e9, total
          for (k in n) printf "%.0f %s×%d %.0f%%(max %.0f)\n", sum[k], k, n[k], sum[k], mx[k] }' "$1" "$2" |
    sort -rn | cut -d' ' -f2- | paste -sd, - | sed 's/,/, /g'
}

# The initiator's established connections per remote port, busiest port first.
conns_of() { ss -tnpH state established 2>/dev/null | grep "pid=$1," | awk '{ n = split($4, a, ":"); c[a[n]]++ } END { for (p in c) printf "%d to :%s\n", c[p], p }' | sort -rn | head -n 1; }

# sockq PID: the bytes queued in its established sockets, "send-q N MB recv-q M MB"
sockq() { ss -tnpH state established 2>/dev/null | grep "pid=$1," | awk '{ r += $1; s += $2 } END { printf "recv-q %.1f MB send-q %.1f MB", r / 1e6, s / 1e6 }'; }

# sock_sum PID_I PID_T: one line on the loopback sockets of the initiator (I)
# and the target (T) from `ss -tmi`, MB: rb = largest receive buffer, r =
# received and unread, w = queued to send (all), tb = largest send buffer,
# d = drops at the socket (counter), retr = retransmitted (counter).
sock_sum() {
  ss -tmipH state established dst 127.0.0.1 2>/dev/null | awk -v i="$1" -v t="$2" '
    /users:/ { who = index($0, "pid=" i ",") ? "I" : index($0, "pid=" t ",") ? "T" : ""; next }
    who != "" && match($0, /skmem:\([^)]*\)/) {
      n = split(substr($0, RSTART + 6, RLENGTH - 7), kv, ",")
      for (k = 1; k <= n; k++) {
        key = kv[k]; sub(/[0-9]+$/, "", key); v = substr(kv[k], length(key) + 1) + 0
        if (key == "rb" && v > rb[who]) rb[who] = v
        if (key == "tb" && v > tb[who]) tb[who] = v
        if (key == "r") r[who] += v
        if (key == "w") w[who] += v
        if (key == "d") d[who] += v
      }
      if (match($0, /bytes_retrans:[0-9]+/)) retr[who] += substr($0, RSTART + 14, RLENGTH - 14)
      cnt[who]++
    }
    END { for (x = 1; x <= 2; x++) { k = x == 1 ? "I" : "T"
            printf "%s%s %d rb %.1f r %.1f w %.1f tb %.1f d %d retr %.1f", x == 2 ? " | " : "", k, cnt[k],
                   rb[k] / 1e6, r[k] / 1e6, w[k] / 1e6, tb[k] / 1e6, d[k], retr[k] / 1e6 }
          printf "\n" }'
}

# net_snap: the kernel's TCP counters, "Name value" a line (/proc/net/netstat
# and /proc/net/snmp: a header line, then a value line, per group)
net_snap() {
  cat /proc/net/netstat /proc/net/snmp 2>/dev/null | awk '
    $1 == last { for (k = 2; k <= NF; k++) print h[k], $k; last = ""; next }
    { last = $1; for (k = 2; k <= NF; k++) h[k] = $k }'
}
# net_delta BEFORE AFTER: the counters that tell drops, retransmits and memory
# pressure apart, those that moved
net_delta() {
  awk 'FNR == NR { b[$1] = $2; next }
       $1 ~ /^(RetransSegs|TCPTimeouts|TCPLossProbes|TCPBacklogDrop|TCPRcvQDrop|TCPZeroWindowDrop|TCPOFODrop|TCPOFOQueue|PruneCalled|RcvPruned|TCPRcvCollapsed|TCPMemoryPressures|TCPMemoryPressuresChrono|TCPSpuriousRTOs|TCPDSACKRecv|TCPWantZeroWindowAdv|TCPToZeroWindowAdv|TCPFromZeroWindowAdv|TCPBacklogCoalesce|TCPRcvCoalesce|TCPAbortOnMemory|TCPSlowStartRetrans|TCPFastRetrans)$/ && $2 - b[$1] != 0 {
         printf "%s %d, ", $1, $2 - b[$1] }' "$1" "$2" | sed 's/, $//'
}

# sock_watch PID_I PID_T FILE: while the initiator lives, a sock_sum line
# each second into FILE (and, with SS_LOG, the raw `ss -tmi` 4 times a second)
sock_watch() {
  local n=0
  while kill -0 "$1" 2>/dev/null; do
    if [ $((n % 4)) = 0 ]; then echo "$((n / 4))s $(sock_sum "$1" "$2")" >>"$3"; fi
    if [ -n "$SS_LOG" ]; then { date +%s.%N; ss -tmipH state established dst 127.0.0.1; } >>"$SS_LOG/$4" 2>/dev/null; fi
    sleep 0.25; n=$((n + 1))
  done
}

# run_cell LABEL OP BLOCK THREADS [VAR=VALUE | --flag ...]: one ferry-bench
# pair, the VAR=VALUE pairs in the environment of both and the flags on both
# command lines; prints the cell's lines.
run_cell() {
  local label=$1 op=$2 block=$3 th=$4 bytes buffer seg rc gbs per_s tcost a
  local cpu_i="not sampled" cpu_t="" conns="?" q_i="" q_t="" t0 t1 secs log
  local -a envs=() flags=()
  shift 4
  for a in "$@"; do
    case "$a" in --*) flags+=("$a") ;; *) envs+=("$a") ;; esac
  done
  bytes=$(to_bytes "$block")
  buffer=$((th * BATCH * bytes))
  log="$op-$block-t$th${1:+-$(echo "$*" | tr ' =' '_-' | tr -d '/')}.ss"
  : >"$work/target.out" # before the job starts: no earlier target's "ready" (target_lib.sh, target_launch)
  env "${envs[@]}" "$FERRY_BENCH" --mode=target --local_server_name=127.0.0.1 --buffer_size="$buffer" \
      --block_size="$bytes" "${flags[@]}" >"$work/target.out" 2>"$work/target.err" &
  target_pid=$!
  seg=$(target_segment "$target_pid" "$work/target.out" $((300 + buffer * 10 / (32 << 20))))
  if [ -z "$seg" ]; then
    echo "### $label: FAIL(target did not start) $(tail -n 2 "$work/target.err" | tr '\n' ' ')"
    stop_pid "$target_pid"; target_pid=""; status=1; return
  fi
  net_snap >"$work/net0"
  env "${envs[@]}" "$FERRY_BENCH" --mode=initiator --segment_id="$seg" --operation="$op" --block_size="$bytes" \
      --batch_size="$BATCH" --threads="$th" --buffer_size="$buffer" --duration="$DURATION" --json "${flags[@]}" \
      >"$work/init.json" 2>"$work/init.err" &
  init_pid=$!
  : >"$work/sock.txt"
  sock_watch "$init_pid" "$target_pid" "$work/sock.txt" "$log" &
  watch_pid=$!
  # the timed loop has begun when the initiator prints its first second
  while kill -0 "$init_pid" 2>/dev/null && ! grep -q '^\[ *1s\]' "$work/init.err"; do
    sleep 0.05
  done
  sleep "$((SAMPLE_AT > 1 ? SAMPLE_AT - 1 : 0))"
  if kill -0 "$init_pid" 2>/dev/null; then
    snap "$init_pid" >"$work/i0"; snap "$target_pid" >"$work/t0"; t0=$(date +%s.%N)
    sleep "$SAMPLE_S"
    t1=$(date +%s.%N); snap "$init_pid" >"$work/i1"; snap "$target_pid" >"$work/t1"
    # ss -p reads every process's descriptors: slow on a busy host, so after the sample
    if [ -n "$has_ss" ]; then q_i=$(sockq "$init_pid"); q_t=$(sockq "$target_pid"); conns=$(conns_of "$init_pid"); fi
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    cpu_i=$(cpu_table "$work/i0" "$work/i1" "$secs")
    cpu_t=$(cpu_table "$work/t0" "$work/t1" "$secs")
  fi
  wait "$init_pid"; rc=$?; init_pid=""
  wait "$watch_pid"; watch_pid=""
  net_snap >"$work/net1"
  stop_pid "$target_pid"; target_pid=""
  gbs=$(json_num "$work/init.json" gb_per_s)
  if [ "$rc" != 0 ] || ! grep -q '"verified":true' "$work/init.json"; then
    gbs="FAIL(exit $rc)"; status=1
    grep -v '^\[ *[0-9]*s\]' "$work/init.err" | tail -n 3 | sed 's/^/    /'
  fi
  per_s=$(sed -n 's/^\[ *\([0-9]*\)s\] \([0-9.]*\) GB\/s.*/\2/p' "$work/init.err" | tr '\n' ' ')
  tcost=$(sed -n 's/^ferry-bench target cost: .* cpu_us_per_request=\([0-9.]*\).*/\1/p' "$work/target.out")
  echo "### $label: $gbs GB/s; connections: ${conns:-none (see ferry-tcp-send below)}"
  echo "    per second: $per_s"
  echo "    cpu us/request initiator $(json_num "$work/init.json" cpu_us_per_request) target ${tcost:-?};" \
       "batch p50 $(json_num "$work/init.json" batch_p50_us) us p99 $(json_num "$work/init.json" batch_p99_us) us"
  echo "    initiator threads: $cpu_i"
  echo "    target threads:    $cpu_t"
  [ -n "$has_ss" ] && [ -n "$q_i" ] && echo "    queued after the sample: initiator $q_i; target $q_t"
  echo "    kernel tcp counters over the run: $(net_delta "$work/net0" "$work/net1")"
  if [ -n "$has_ss" ]; then
    echo "    sockets from the initiator's start, MB (rb/tb largest buffer, r unread, w queued, d drops, retr retransmitted):"
    grep -v ' I 0 .* T 0 ' "$work/sock.txt" | sed 's/^/      /'
  fi
  return 0
}

status=0
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo "## ferry TCP with 1..N submitting threads (loopback, cpu memory)"
echo "- $(date -u '+%Y-%m-%d %H:%M:%S UTC'); kernel $(uname -r); $(nproc) cpus; ${cpu_model:-?}; ferry $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo ?)"
echo "- ferry-bench $FERRY_BENCH; ${DURATION}s a cell; batch $BATCH; CPU sampled ${SAMPLE_S}s from ${SAMPLE_AT}s into the timed loop"
echo "- FERRY env: $(env | grep '^FERRY_' | tr '\n' ' ')"
echo "- tcp_rmem $(tr '\t' ' ' </proc/sys/net/ipv4/tcp_rmem); tcp_wmem $(tr '\t' ' ' </proc/sys/net/ipv4/tcp_wmem);" \
     "tcp_mem $(tr '\t' ' ' </proc/sys/net/ipv4/tcp_mem); rmem_max $(cat /proc/sys/net/core/rmem_max);" \
     "wmem_max $(cat /proc/sys/net/core/wmem_max); THP $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)"
iperf_first=$(run_iperf)
echo "- iperf3 single stream: $iperf_first GB/s (before)"
echo

for op in $OPS; do
  for block in $BLOCKS; do
    for th in $THREADS; do
      run_cell "$op $block x$BATCH threads $th" "$op" "$block" "$th"
    done
  done
done
if [ -n "$SWEEP" ]; then
  echo
  echo "## connections: FERRY_TCP_CONNECTIONS = FERRY_TCP_MAX_CONNECTIONS = N, $SWEEP_BLOCK x$BATCH, $SWEEP_THREADS threads"
  for op in $OPS; do
    for n in $SWEEP; do
      run_cell "$op $SWEEP_BLOCK threads $SWEEP_THREADS conns $n" "$op" "$SWEEP_BLOCK" "$SWEEP_THREADS" \
          FERRY_TCP_CONNECTIONS="$n" FERRY_TCP_MAX_CONNECTIONS="$n"
    done
  done
fi
if [ -n "$GROWS" ]; then
  echo
  echo "## growth: FERRY_TCP_GROW_BYTES = G, $GROW_BLOCK x$BATCH, $SWEEP_THREADS threads"
  for op in $OPS; do
    for g in $GROWS; do
      run_cell "$op $GROW_BLOCK threads $SWEEP_THREADS grow $g" "$op" "$GROW_BLOCK" "$SWEEP_THREADS" \
          FERRY_TCP_GROW_BYTES="$g"
    done
  done
fi
if [ -n "$SLICES" ]; then
  echo
  echo "## slice size: FERRY_SLICE_SIZE = S, write 4M x$BATCH, $SWEEP_THREADS threads, ${DURATION}s (the warm-up)"
  for sl in $SLICES; do
    run_cell "write 4M threads $SWEEP_THREADS slice $sl" write 4M "$SWEEP_THREADS" FERRY_SLICE_SIZE="$(to_bytes "$sl")"
  done
fi
if [ -n "$WARMUP" ]; then
  echo
  echo "## first-copy warm-up: write 4M x$BATCH, $SWEEP_THREADS threads, 4 KiB pages (--nohuge_pages) vs ferry's default"
  for hp in --nohuge_pages --huge_pages; do
    run_cell "write 4M threads $SWEEP_THREADS $hp" write 4M "$SWEEP_THREADS" "$hp"
  done
fi
echo
echo "- iperf3 single stream: $(run_iperf) GB/s (after; before $iperf_first)"
exit "$status"

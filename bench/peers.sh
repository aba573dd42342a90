#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# peers.sh — ferry's TCP next to the other KV-transfer transports, on loopback,
# with single-stream iperf3 as the reference, all in one run.
#
# For each operation (WRITE, READ), block size and number of submitting
# threads it runs, back to back: ferry-bench (target + initiator, batch of
# BATCH blocks, data verified), Mooncake's transfer_engine_bench over tcp with
# its connection pool on and off, UCX's ucx_perftest (ucp_put_bw / ucp_get over
# tcp, BATCH outstanding), libfabric's fi_rma_bw (provider tcp, window BATCH);
# and one iperf3 stream per (operation, block).  It prints one markdown table
# of GB/s (1e9 B/s) with each figure's ratio to iperf3, plus ferry / best peer,
# and writes the same figures as JSON.  A peer that is absent is skipped with
# a one-line note; build them with bench/peers/build.sh.
#
# usage: bench/peers.sh [run [BUNDLE]]   run the comparison; with BUNDLE (a
#                                         folder made by `bundle`), every tool
#                                         and library comes from there
#        bench/peers.sh bundle [DIR]     copy the binaries and their libraries
#                                         into DIR (bench/peers/build/bundle)
#        bench/peers.sh --quick          DURATION=1, 64K and 1M, threads 1 4
# env:   DURATION (3 s a cell)  OPS ("write read")  BLOCKS ("4K 64K 1M 4M")
#        THREADS ("1 4 8")  BATCH (128)
#        PEERS ("ferry mooncake mooncake-nopool ucx libfabric"; also
#                  ferry-same: ferry with --same_block, the peers' access
#                  pattern, in its own column and ratio)
#        POLL_CAP  most threads (libfabric: process pairs) for the peers that
#                  busy-poll (Mooncake's initiator, UCX, libfabric): 1 on a
#                  machine with 2 CPUs or fewer so that they do not starve the
#                  servers, else 0 = no cap.  Capped cells say so ("1t")
#                  and reuse the figure measured with that many threads
#                  (REMEASURE=1 runs them again).
#        JSON_OUT (bench/peers/build/peers-<UTC time>.json)
#        FERRY_BENCH (build/ferry-bench)  TEBENCH  UCX_PERFTEST  FI_RMA_BW
#        IPERF3  (tool paths; default: the bundle, bench/peers/build/bin, PATH)
#        FI_EP_TYPE (rdm: tcp;ofi_rxm; msg: tcp alone)
#        CPUS      a taskset CPU list (e.g. 0-15 on the 32-CPU GPU machine to
#                  emulate a 16-core host): every process, peers and iperf3
#                  included, runs on those only; ferry sizes itself from them
#        UCX_MT_HUNG=1: do not run UCX with -T N at all ("FAIL(hung before)"),
#                  for a run split over several calls on a host where one
#                  -T run already hung (each would cost its time limit)
# FERRY_* and MC_TCP_* variables pass through to ferry and Mooncake.
# Exit status: 0 if every ferry run succeeded and verified, else 1.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
if [ -n "${CPUS:-}" ] && [ -z "${PEERS_PINNED:-}" ]; then   # children inherit the mask
  exec env PEERS_PINNED=1 taskset -c "$CPUS" bash "$0" "$@"
fi
case "${1:-}" in
  bundle) shift; exec bash "$here/peers/bundle.sh" "$@" ;;
  run) shift ;;
  --quick) shift; DURATION=${DURATION:-1}; BLOCKS=${BLOCKS:-64K 1M}; THREADS=${THREADS:-1 4} ;;
  -h|--help) sed -n '2,44p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "peers.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac
BUNDLE=${1:-${BUNDLE:-}}

DURATION=${DURATION:-3}
OPS=${OPS:-write read}
BLOCKS=${BLOCKS:-4K 64K 1M 4M}
THREADS=${THREADS:-1 4 8}
BATCH=${BATCH:-128}
PEERS=${PEERS:-ferry mooncake mooncake-nopool ucx libfabric}
FI_EP_TYPE=${FI_EP_TYPE:-rdm}
ncpu=$(nproc)
if [ -z "${POLL_CAP:-}" ]; then
  if [ "$ncpu" -le 2 ]; then POLL_CAP=1; else POLL_CAP=0; fi
fi
mkdir -p "$here/peers/build"
JSON_OUT=${JSON_OUT:-$here/peers/build/peers-$(date -u +%Y%m%dT%H%M%SZ).json}

# --- where the tools are -----------------------------------------------------
if [ -n "$BUNDLE" ]; then
  BUNDLE=$(cd "$BUNDLE" && pwd)
  export LD_LIBRARY_PATH="$BUNDLE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export UCX_MODULE_DIR="$BUNDLE/lib/ucx"
  bindirs=("$BUNDLE/bin")
else
  bindirs=("$here/peers/build/bin")
fi
find_tool() {   # find_tool NAME [DEFAULT]: the first executable NAME in bindirs, then PATH
  local d
  for d in "${bindirs[@]}"; do [ -x "$d/$1" ] && { echo "$d/$1"; return; }; done
  if [ -n "${2:-}" ] && [ -x "$2" ]; then echo "$2"; return; fi
  command -v "$1" 2>/dev/null || true
}
FERRY_BENCH=${FERRY_BENCH:-$(find_tool ferry-bench "$root/build/ferry-bench")}
TEBENCH=${TEBENCH:-$(find_tool transfer_engine_bench)}
UCX_PERFTEST=${UCX_PERFTEST:-$(find_tool ucx_perftest)}
FI_RMA_BW=${FI_RMA_BW:-$(find_tool fi_rma_bw)}
IPERF3=${IPERF3:-$(find_tool iperf3)}

die() { echo "peers.sh: $*" >&2; exit 1; }
[ -n "$IPERF3" ] || die "iperf3 not found (apt-get install iperf3, or use a bundle)"
if [ -z "$FERRY_BENCH" ] || ! [ -x "$FERRY_BENCH" ]; then
  die "no ferry-bench (cmake --build build --target ferry-bench, or set FERRY_BENCH)"
fi

# --- processes: everything started here is stopped on exit --------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-peers.XXXXXX")
bg_pids=()
stop_pid() {   # stop_pid PID: TERM, wait up to 5 s, then KILL
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
stop_all() {
  local pid
  for pid in "${bg_pids[@]}"; do stop_pid "$pid"; done
  bg_pids=()
}
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() { stop_all; rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_bg() {   # start_bg LOG CMD...: run CMD in the background, remember its pid
  local log=$1; shift
  : >"$log" # before the job starts: no earlier run's "ready" (target_lib.sh, target_launch)
  "$@" >"$log" 2>&1 &
  bg_pids+=("$!")
}
# run_limited SECONDS LOG CMD...: CMD in the foreground, killed after SECONDS
# (a hung peer must not stall the run)
run_limited() {
  local limit=$1 log=$2; shift 2
  timeout -k 5 "$limit" "$@" >"$log" 2>&1
}

listening() {   # listening PORT: does a TCP socket listen on it? (/proc: no ss needed)
  awk -v p="$(printf '%04X' "$1")" '$4 == "0A" && substr($2, index($2, ":") + 1) == p { f = 1 }
    END { exit !f }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
read -r port_hi _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || port_hi=32768
port_lo=10000; [ "$port_hi" -gt $((port_lo + 1000)) ] || { port_lo=20000; port_hi=32768; }
port_seq=$((port_lo + $$ % (port_hi - port_lo)))
port_used() {   # port_used PORT: does any TCP socket (listening, connected, TIME_WAIT) have it?
  awk -v p="$(printf '%04X' "$1")" 'substr($2, index($2, ":") + 1) == p { f = 1 }
    END { exit !f }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
next_port() {   # next_port VAR: VAR = a port no socket uses, new each call
  # below the kernel's ephemeral range: the tools' servers bind without
  # SO_REUSEADDR, and the connections of earlier cells (TIME_WAIT) hold
  # ephemeral ports ("Address already in use" on a loaded host)
  port_seq=$((port_seq + 1 >= port_hi ? port_lo : port_seq + 1))
  while port_used "$port_seq"; do
    port_seq=$((port_seq + 1 >= port_hi ? port_lo : port_seq + 1))
  done
  printf -v "$1" '%s' "$port_seq"
}
wait_listen() {   # wait_listen PORT PID: until PORT listens (10 s), or PID dies
  for _ in $(seq 100); do
    listening "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

to_bytes() {   # 4K -> 4096 (K/M/G are powers of 2)
  local n=${1%[KkMmGg]}
  case "$1" in
    *[Kk]) echo $((n << 10)) ;; *[Mm]) echo $((n << 20)) ;; *[Gg]) echo $((n << 30)) ;;
    *) echo "$1" ;;
  esac
}
fmt() { awk -v v="$1" 'BEGIN { printf "%.3f", v }'; }
isnum() { case "$1" in ''|*[!0-9.]*) return 1 ;; *) return 0 ;; esac; }
capped() {   # capped N: threads a busy-polling peer gets
  if [ "$POLL_CAP" -gt 0 ] && [ "$1" -gt "$POLL_CAP" ]; then echo "$POLL_CAP"; else echo "$1"; fi
}
buffer_for() {   # buffer_for BYTES THREADS: what one batch per thread needs, >= 64 MiB
  local need=$(($2 * BATCH * $1))
  echo $((need > (64 << 20) ? need : (64 << 20)))
}
result=""   # each run_* leaves its GB/s (or n/a, FAIL(...)) here

# --- the reference -------------------------------------------------------------
run_iperf() {
  local port
  result="n/a"
  next_port port
  start_bg "$work/iperf-s.log" "$IPERF3" -s -1 -p "$port"
  wait_listen "$port" "${bg_pids[-1]}" || { stop_all; return; }
  if run_limited $((DURATION + 20)) "$work/iperf.log" \
       "$IPERF3" -c 127.0.0.1 -p "$port" -t "$DURATION" -f k; then
    # "[  5]   0.00-3.00   sec  ...  NNN Kbits/sec   receiver"
    result=$(awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Kbits/sec") v = $(i-1) }
                  END { if (v != "") printf "%.3f", v * 1000 / 8e9 }' "$work/iperf.log")
    [ -n "$result" ] || result="n/a"
  fi
  stop_all
}

# --- ferry --------------------------------------------------------------------
json_num() {   # json_num FILE KEY: a top-level number or bool from ferry-bench --json
  sed -n "s/.*\"$2\"[[:space:]]*:[[:space:]]*\([0-9.eE+-][0-9.eE+-]*\|true\|false\).*/\1/p" "$1" | head -n 1
}
run_ferry() {   # run_ferry OP BYTES THREADS [--same_block]
  local op=$1 bytes=$2 threads=$3 buffer seg="" same=(${4:+"$4"})
  buffer=$(buffer_for "$bytes" "$threads")
  result="FAIL(target)"
  ferry_cost=""
  start_bg "$work/ferry-t.log" "$FERRY_BENCH" --mode=target --local_server_name=127.0.0.1 \
      --buffer_size="$buffer" --block_size="$bytes"
  # the target fills its buffer first: 30 s, plus 1 s a 32 MiB (slow, loaded machines)
  for _ in $(seq $((300 + (buffer >> 25) * 10))); do
    seg=$(sed -n 's/^ferry-bench target ready: segment \([^ ]*\) .*/\1/p' "$work/ferry-t.log")
    [ -n "$seg" ] && break
    kill -0 "${bg_pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$seg" ]; then
    tail -n 3 "$work/ferry-t.log" >&2; stop_all; return 1
  fi
  if ! timeout -k 5 $((DURATION * 3 + 60 + (buffer >> 25))) "$FERRY_BENCH" --mode=initiator \
       --segment_id="$seg" --operation="$op" --block_size="$bytes" --batch_size="$BATCH" \
       --threads="$threads" --buffer_size="$buffer" --duration="$DURATION" --json "${same[@]}" \
       >"$work/ferry.json" 2>"$work/ferry.err"; then
    result="FAIL(exit)"; grep -v '^\[ *[0-9]*s\]' "$work/ferry.err" | tail -n 3 >&2
    stop_all; return 1
  fi
  stop_all
  if [ "$(json_num "$work/ferry.json" verified)" != "true" ]; then
    result="FAIL(unverified)"; return 1
  fi
  result=$(fmt "$(json_num "$work/ferry.json" gb_per_s)")
  # what it cost: CPU us per request on both sides, batch latency (JSON fields)
  local k v tcpu
  tcpu=$(sed -n 's/^ferry-bench target cost: .* cpu_us_per_request=\([0-9.]*\).*/\1/p' "$work/ferry-t.log")
  ferry_cost=",\"target_cpu_us_per_request\":${tcpu:-null}"
  for k in cpu_us_per_request batch_p50_us batch_p99_us; do
    v=$(json_num "$work/ferry.json" "$k")
    ferry_cost+=",\"$k\":${v:-null}"
  done
}

# --- Mooncake transfer_engine_bench ------------------------------------------
# The target logs "DRAM is used" right before it allocates and registers its
# buffer (untouched memory: no fill), then nothing more: ready a moment after.
mc_ready() {   # mc_ready LOG
  grep -q 'DRAM is used' "$1" || return 1
  sleep 0.5
}
run_mooncake() {   # run_mooncake OP BYTES THREADS POOL(1|0)
  local op=$1 bytes=$2 threads=$3 pool=$4 seg="" buffer
  buffer=$(buffer_for "$bytes" "$threads")
  result="FAIL(target)"
  export MC_TCP_ENABLE_CONNECTION_POOL=$pool GLOG_logtostderr=1
  # with P2PHANDSHAKE the target picks its port and logs "... P2P handshake,
  # listening on 127.0.0.1:PORT"; it is ready once its buffer is registered
  start_bg "$work/mc-t.log" "$TEBENCH" --mode=target --metadata_server=P2PHANDSHAKE \
      --local_server_name=127.0.0.1 --protocol=tcp --buffer_size="$buffer"
  local pid=${bg_pids[-1]} ready=0
  for _ in $(seq 600); do
    kill -0 "$pid" 2>/dev/null || break
    [ -n "$seg" ] || seg=$(sed -n 's/.*P2P handshake, listening on \([^ ,]*\).*/\1/p' "$work/mc-t.log")
    if [ -n "$seg" ] && mc_ready "$work/mc-t.log"; then ready=1; break; fi
    sleep 0.1
  done
  if [ "$ready" = 0 ]; then
    echo "Mooncake target did not start:" >&2; tail -n 3 "$work/mc-t.log" >&2
    stop_all; unset MC_TCP_ENABLE_CONNECTION_POOL GLOG_logtostderr; return
  fi
  if run_limited $((DURATION * 3 + 60)) "$work/mc-i.log" "$TEBENCH" --mode=initiator \
       --metadata_server=P2PHANDSHAKE --local_server_name=127.0.0.1 \
       --segment_id="$seg" --protocol=tcp --operation="$op" \
       --block_size="$bytes" --batch_size="$BATCH" --threads="$threads" \
       --buffer_size="$buffer" --duration="$DURATION" --report_unit=GB --report_precision=4; then
    # "Test completed: duration 3.00, batch count 1234, throughput 1.23 GB/s"
    result=$(sed -n 's/.*Test completed:.*throughput \([0-9.]*\) GB\/s.*/\1/p' "$work/mc-i.log" | tail -n 1)
    if isnum "$result"; then result=$(fmt "$result"); else result="FAIL(output)"; fi
  else
    result="FAIL(exit)"
    echo "Mooncake $op $bytes pool=$pool failed:" >&2; tail -n 3 "$work/mc-i.log" >&2
  fi
  stop_all
  unset MC_TCP_ENABLE_CONNECTION_POOL GLOG_logtostderr
}

# --- iteration-counted tools: calibrate, then run for about DURATION ---------
# calibrated RUNNER OP BYTES THREADS: RUNNER OP BYTES THREADS ITERS leaves GB/s
# in result; first with 16 MiB a thread (at least 2 windows), then with the
# iterations that the rate measured gives for DURATION seconds.
calibrated() {
  local runner=$1 op=$2 bytes=$3 threads=$4 iters
  iters=$(( (16 << 20) / bytes )); [ "$iters" -ge $((2 * BATCH)) ] || iters=$((2 * BATCH))
  "$runner" "$op" "$bytes" "$threads" "$iters"
  isnum "$result" || return 0
  iters=$(awk -v r="$result" -v d="$DURATION" -v b="$bytes" -v t="$threads" -v w="$BATCH" \
    'BEGIN { n = r * 1e9 * d / (b * t); if (n < 4 * w) n = 4 * w; if (n > 1e8) n = 1e8; printf "%d", n }')
  "$runner" "$op" "$bytes" "$threads" "$iters"
}

# shellcheck disable=SC2317  # called through calibrated
# UCX ucx_perftest: put = ucp_put_bw, get = ucp_get, over tcp on lo, BATCH
# outstanding; -T threads (one worker each, UCP multi-thread mode).
ucx_once() {
  local op=$1 bytes=$2 threads=$3 iters=$4 port test mt=()
  if [ "$op" = write ]; then test=ucp_put_bw; else test=ucp_get; fi
  if [ "$threads" -gt 1 ]; then
    mt=(-T "$threads" -M multi)
    # on the 16-CPU host every -T 4 run hung until its limit: once one has,
    # the other multi-thread cells are not run (each would cost the limit)
    if [ -n "${ucx_mt_hung:-}" ] || [ "${UCX_MT_HUNG:-0}" = 1 ]; then result="FAIL(hung before)"; return; fi
  fi
  next_port port
  result="n/a"
  start_bg "$work/ucx-s.log" env UCX_TLS=tcp UCX_NET_DEVICES=lo "$UCX_PERFTEST" -p "$port" "${mt[@]}"
  if ! wait_listen "$port" "${bg_pids[-1]}"; then
    echo "ucx_perftest server did not start:" >&2; tail -n 3 "$work/ucx-s.log" >&2
    result="FAIL(server)"; stop_all; return
  fi
  local rc=0
  run_limited $((DURATION * 4 + 30)) "$work/ucx-c.log" env UCX_TLS=tcp UCX_NET_DEVICES=lo \
      "$UCX_PERFTEST" 127.0.0.1 -p "$port" -t "$test" -s "$bytes" -n "$iters" \
      -O "$BATCH" "${mt[@]}" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    result="FAIL(hung)"; echo "ucx_perftest $test $bytes x $threads threads: no result in its time limit" >&2
    [ "$threads" -le 1 ] || ucx_mt_hung=1
  elif [ "$rc" -eq 0 ]; then
    # one thread: "Final: ITERS LAT50 LAT LAT_ALL BW BW_ALL RATE RATE_ALL";
    # several: "Final: ITERS LAT BW RATE" (BW summed over threads); MB = 2^20 B
    result=$(awk '/^Final:/ { v = (NF == 9) ? $7 : (NF == 5) ? $4 : "" }
                  END { if (v != "") printf "%.3f", v * 1048576 / 1e9 }' \
      "$work/ucx-c.log")
    [ -n "$result" ] || result="FAIL(output)"
  else
    result="FAIL(exit)"; echo "ucx_perftest $test $bytes failed:" >&2; tail -n 3 "$work/ucx-c.log" >&2
  fi
  stop_all
}

# shellcheck disable=SC2317  # called through calibrated
# libfabric fi_rma_bw, provider tcp: WRITE = writedata (one way, client to
# server); READ = read, which fi_rma_bw runs both ways at once, so its figure
# is the two sides' sum.  THREADS = that many server/client pairs at once,
# figures summed.  MB/sec there is 1e6 B/s.
fi_once() {
  local op=$1 bytes=$2 threads=$3 iters=$4 fop i port pids=() logs=() sum
  if [ "$op" = write ]; then fop="writedata"; else fop="read"; fi
  result="n/a"
  local common=(-p tcp -e "$FI_EP_TYPE" -s 127.0.0.1 -o "$fop" -S "$bytes" -I "$iters" -W "$BATCH" -w 16)
  local ports=() spids=()
  # every server first, then every client at once: the pairs' figures are
  # summed, so they must run at the same time (a client started after the
  # previous server came up ran partly alone, and the sum overstated the
  # pairs together: 49-52 GB/s at 1 MiB x 8 on 16 CPUs)
  for i in $(seq "$threads"); do
    next_port port
    ports+=("$port")
    start_bg "$work/fi-s$i.log" "$FI_RMA_BW" "${common[@]}" -B "$port"
    spids+=("${bg_pids[-1]}")
  done
  for i in $(seq "$threads"); do
    if ! wait_listen "${ports[$((i - 1))]}" "${spids[$((i - 1))]}"; then
      echo "fi_rma_bw server did not start:" >&2; tail -n 3 "$work/fi-s$i.log" >&2
      result="FAIL(server)"; stop_all; return
    fi
  done
  for i in $(seq "$threads"); do
    timeout -k 5 $((DURATION * 4 + 60)) "$FI_RMA_BW" "${common[@]}" -P "${ports[$((i - 1))]}" 127.0.0.1 \
      >"$work/fi-c$i.log" 2>&1 &
    pids+=("$!"); logs+=("$work/fi-c$i.log")
  done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      result="FAIL(exit)"; echo "fi_rma_bw $fop $bytes failed:" >&2; tail -n 3 "${logs[$i]}" >&2
    fi
  done
  for pid in "${bg_pids[@]}"; do   # the servers end by themselves after the test
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  stop_all
  [ "$result" = "n/a" ] || return 0
  # "1m  1k  1000m  11.70s  89.60  11702.55  0.00": MB/sec is the 5th field
  local files=("$work"/fi-c*.log)
  if [ "$fop" = read ]; then files+=("$work"/fi-s*.log); fi
  sum=$(awk 'NF == 7 && $4 ~ /s$/ && $5 ~ /^[0-9.]+$/ { s += $5; n++ }
             END { if (n) printf "%.3f", s * 1e6 / 1e9 }' "${files[@]}")
  rm -f "$work"/fi-[cs]*.log
  if [ -n "$sum" ]; then result=$sum; else result="FAIL(output)"; fi
}

# --- which peers run ----------------------------------------------------------
declare -A title=([ferry]="ferry" [ferry-same]="ferry (same block)" [mooncake]="Mooncake (pool)"
                  [mooncake-nopool]="Mooncake (no pool)" [ucx]="UCX" [libfabric]="libfabric")
declare -A skip=()
for p in $PEERS; do
  case "$p" in
    ferry|ferry-same) ;;
    mooncake|mooncake-nopool)
      [ -n "$TEBENCH" ] || skip[$p]="no transfer_engine_bench (bash bench/peers/build.sh mooncake)" ;;
    ucx) [ -n "$UCX_PERFTEST" ] || skip[$p]="no ucx_perftest (apt-get install ucx-utils)" ;;
    libfabric) [ -n "$FI_RMA_BW" ] || skip[$p]="no fi_rma_bw (bash bench/peers/build.sh fabtests)" ;;
    *) die "unknown peer '$p' in PEERS" ;;
  esac
done
declare -A seen=()   # PEER OP BYTES USED -> the figure, for capped cells
run_peer() {   # run_peer PEER OP BYTES THREADS -> result; used -> threads it ran with
  local p=$1 op=$2 bytes=$3 threads=$4
  used=$threads
  case $p in ferry|ferry-same) ;; *) used=$(capped "$threads") ;; esac
  # a capped cell repeats one already measured: reuse it (REMEASURE=1: run again)
  if [ "$used" != "$threads" ] && [ -n "${seen[$p $op $bytes $used]:-}" ] && [ "${REMEASURE:-0}" != 1 ]; then
    result=${seen[$p $op $bytes $used]}; return
  fi
  case "$p" in
    ferry) run_ferry "$op" "$bytes" "$threads" || status=1 ;;
    ferry-same) run_ferry "$op" "$bytes" "$threads" --same_block || status=1 ;;
    mooncake) run_mooncake "$op" "$bytes" "$used" 1 ;;
    mooncake-nopool) run_mooncake "$op" "$bytes" "$used" 0 ;;
    ucx) calibrated ucx_once "$op" "$bytes" "$used" ;;
    libfabric) calibrated fi_once "$op" "$bytes" "$used" ;;
  esac
  seen[$p $op $bytes $used]=$result
}

# --- the run ------------------------------------------------------------------
cpu_model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
read -r load1 load5 load15 _ </proc/loadavg
active=()
for p in $PEERS; do [ -n "${skip[$p]:-}" ] || active+=("$p"); done
same_col=""   # a column of ferry with --same_block, and its ratio
for p in "${active[@]}"; do [ "$p" != ferry-same ] || same_col=1; done

echo "## ferry TCP vs peers on loopback, iperf3 as the reference"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host: $(hostname)"
echo "- kernel $(uname -r); $ncpu CPUs: ${cpu_model:-unknown}; load average at start: $load1 $load5 $load15"
echo "- $DURATION s a cell; batch / window / outstanding $BATCH; GB = 1e9 B"
if [ "$POLL_CAP" -gt 0 ]; then
  echo "- busy-polling peers (Mooncake's initiator, UCX, libfabric) capped at $POLL_CAP thread(s)" \
       "(POLL_CAP; $ncpu CPUs): a cell marked \"${POLL_CAP}t\" ran with that many; it repeats" \
       "the ${POLL_CAP}-thread figure of its row group unless REMEASURE=1"
fi
echo "- ferry: $FERRY_BENCH (data verified after each run)"
[ -z "$same_col" ] || echo "- ferry (same block): the same with --same_block: every request of a thread's" \
  "batch moves that thread's first block, as fi_rma_bw and ucx_perftest do (a cache-sized working set)"
for p in "${active[@]}"; do
  case "$p" in
    mooncake|mooncake-nopool) echo "- ${title[$p]}: $TEBENCH --protocol=tcp," \
      "MC_TCP_ENABLE_CONNECTION_POOL=$([ "$p" = mooncake ] && echo 1 || echo 0)" ;;
    ucx) echo "- UCX: $UCX_PERFTEST ucp_put_bw / ucp_get, UCX_TLS=tcp on lo, -O $BATCH, -T threads" ;;
    libfabric) echo "- libfabric: $FI_RMA_BW -p tcp -e $FI_EP_TYPE -W $BATCH; write = writedata;" \
      "read runs both ways at once (figure = sum); threads = process pairs" ;;
  esac
done
for p in $PEERS; do [ -z "${skip[$p]:-}" ] || echo "- skipped ${title[$p]}: ${skip[$p]}"; done
echo

hdr="| op | block | threads | iperf3 |"; sep="|---|---|---|---|"
for p in "${active[@]}"; do hdr+=" ${title[$p]} |"; sep+="---|"; done
if [ -n "$same_col" ]; then
  echo "$hdr ferry / best peer | ferry (same block) / best peer |"; echo "$sep---|---|"
else
  echo "$hdr ferry / best peer |"; echo "$sep---|"
fi

status=0
json_rows=()
for op in $OPS; do
  for block in $BLOCKS; do
    bytes=$(to_bytes "$block")
    run_iperf
    iperf=$result
    for threads in $THREADS; do
      row="| $op | $block | $threads | $iperf |"
      ferry_v=""; same_v=""; best=""; best_name=""
      for p in "${active[@]}"; do
        run_peer "$p" "$op" "$bytes" "$threads"
        cell=$result
        if isnum "$result" && isnum "$iperf"; then
          cell="$result ($(awk -v a="$result" -v b="$iperf" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')×)"
        fi
        [ "$used" = "$threads" ] || cell="$cell ${used}t"
        row+=" $cell |"
        json_rows+=("{\"op\":\"$op\",\"block\":$bytes,\"threads\":$threads,\"tool\":\"$p\",\"threads_used\":$used,\"gb_per_s\":$(isnum "$result" && echo "$result" || echo null),\"note\":\"$(isnum "$result" || echo "$result")\",\"iperf3_gb_per_s\":$(isnum "$iperf" && echo "$iperf" || echo null)$(case $p in ferry|ferry-same) echo "${ferry_cost:-}" ;; esac)}")
        if [ "$p" = ferry ]; then
          ferry_v=$result
        elif [ "$p" = ferry-same ]; then
          same_v=$result
        elif isnum "$result" && { [ -z "$best" ] || awk -v a="$result" -v b="$best" 'BEGIN { exit !(a > b) }'; }; then
          best=$result; best_name=${title[$p]}
        fi
      done
      if isnum "$ferry_v" && isnum "$best"; then
        row+=" $(awk -v a="$ferry_v" -v b="$best" 'BEGIN { printf "%.2f", a / b }')× ($best_name) |"
      else
        row+=" n/a |"
      fi
      if [ -n "$same_col" ] && isnum "$same_v" && isnum "$best"; then
        row+=" $(awk -v a="$same_v" -v b="$best" 'BEGIN { printf "%.2f", a / b }')× ($best_name) |"
      elif [ -n "$same_col" ]; then
        row+=" n/a |"
      fi
      echo "$row"
    done
  done
done

{
  echo "{\"date\":\"$(date -u '+%Y-%m-%dT%H:%M:%SZ')\",\"host\":\"$(hostname)\",\"cpus\":$ncpu,"
  echo " \"cpu\":\"${cpu_model//\"/}\",\"kernel\":\"$(uname -r)\",\"load_at_start\":[$load1,$load5,$load15],"
  echo " \"duration_s\":$DURATION,\"batch\":$BATCH,\"poll_cap\":$POLL_CAP,\"fi_ep_type\":\"$FI_EP_TYPE\","
  echo " \"rows\":["
  n=${#json_rows[@]}
  for i in "${!json_rows[@]}"; do
    if [ "$i" -lt $((n - 1)) ]; then echo "  ${json_rows[$i]},"; else echo "  ${json_rows[$i]}"; fi
  done
  echo " ]}"
} >"$JSON_OUT"
read -r load1 load5 load15 _ </proc/loadavg
echo
echo "load average at end: $load1 $load5 $load15; JSON: $JSON_OUT"
exit "$status"

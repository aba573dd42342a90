#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# rdma_vm.sh — ferry's rdma transport next to perftest, in one Soft-RoCE VM boot.
#
# Boots the VM of tests/rdma/run-in-rxe-vm.sh and, inside it, for each
# operation (WRITE, READ) and block size: ib_write_bw / ib_read_bw on rxe0
# (one QP, --report_gbits, about DURATION seconds), then a ferry-bench
# initiator over rdma against one ferry-bench target for the same duration
# (--json, data verified), ROUNDS times interleaved, and prints one markdown
# row with the medians and their ratio.  Soft-RoCE is a functional stack, not a
# fast one (tens of MB/s under TCG, with retransmissions that make single runs
# vary by +-30%); the ratio of medians is the number to read.
#
# usage: bench/rdma_vm.sh [BUILD_DIR]        (default build/, no -march=native)
# env:   DURATION (5)  ROUNDS (3: medians of the valid runs are reported)  OPS ("write read")
#        BLOCKS ("64K 1M")  BATCH ("64K:64 1M:16": batch per block)
#        THREADS (1)  TARGETS ("cpu": the target's memory; "cpu sim:0" also
#        measures target-side staging: sim memory no NIC reaches, staged by the target)
#        FERRY_RDMA_* knobs are passed through to ferry-bench.
#        VARIANTS ("": none) — initiator settings compared in the same boot, each
#        "NAME:VAR=VALUE[,VAR=VALUE...]" (environment; "--flag=value" items go to
#        ferry-bench) (e.g. "qp1:FERRY_RDMA_QPS_PER_PATH=1
#        qp2:FERRY_RDMA_QPS_PER_PATH=2 t2:--threads=2"): every round runs the reference, then
#        ferry once per variant; one row per variant.
# Exit status: 0 if every run succeeded and ferry's data verified.
set -eu
cd "$(dirname "$0")/.."
BUILD=$(realpath "${1:-build}")
[ -x "$BUILD/ferry-bench" ] || { echo "no $BUILD/ferry-bench" >&2; exit 2; }
SHARE=$(mktemp -d /tmp/ferry-rdma-bench.XXXXXX)
trap 'rm -rf "$SHARE"' EXIT
{
  echo "BUILD=/run/ferry-build"   # where the guest sees $BUILD
  echo "DURATION=${DURATION:-5}"
  echo "ROUNDS=${ROUNDS:-3}"
  echo "OPS='${OPS:-write read}'"
  echo "BLOCKS='${BLOCKS:-64K 1M}'"
  echo "BATCH='${BATCH:-64K:64 1M:16}'"
  echo "THREADS=${THREADS:-1}"
  echo "TARGETS='${TARGETS:-cpu}'"
  echo "VARIANTS='${VARIANTS:-default:}'"
  env | grep '^FERRY_RDMA_' | sed 's/^/export /' || true
} > "$SHARE/env"
cat > "$SHARE/rxe-guest.sh" <<'GUEST'
. ./env
B=$BUILD; DEV=rxe0; IP=10.0.0.1; GIDX=1
bytes() { case $1 in *K) echo $((${1%K} * 1024));; *M) echo $((${1%M} * 1048576));; *) echo "$1";; esac; }
batch_of() { for x in $BATCH; do [ "${x%%:*}" = "$1" ] && { echo "${x#*:}"; return; }; done; echo 64; }
median() { tr ' ' '\n' | awk '$1 > 0' | sort -g | awk '{v[NR]=$1} END{ if (NR) print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2) }'; }
perf() { # perf ib_write_bw|ib_read_bw SIZE -> Gbit/s; about DURATION s (iterations sized for ~40 MB/s)
  n=$((DURATION * 40000000 / $2)); [ $n -lt 20 ] && n=20
  timeout $((DURATION * 4 + 60)) $1 -d $DEV -x $GIDX -F -n $n -s "$2" --report_gbits > perf_srv.log 2>&1 &
  sp=$!
  for _ in $(seq 20); do  # the client retries until the server listens
    sleep 1
    timeout $((DURATION * 4 + 60)) $1 -d $DEV -x $GIDX -F -n $n -s "$2" --report_gbits 127.0.0.1 \
      > perf_cli.log 2>&1 && break
    grep -q "Couldn't connect" perf_cli.log || break
  done
  wait $sp
  awk '/BW average/{getline; print $4; exit}' perf_cli.log
}
ferry() { # ferry write|read SIZE BATCH [VAR=VALUE|--flag=value ...] -> Gbit/s (empty on failure or bad data)
  op=$1 sz=$2 bt=$3 vars="" flags=""; shift 3
  for a in "$@"; do case $a in --*) flags="$flags $a";; *) vars="$vars $a";; esac; done
  # shellcheck disable=SC2086  # vars and flags are lists
  env $vars "$B/ferry-bench" --mode=initiator --local_server_name=$IP --protocol=rdma --device_name=$DEV \
    --segment_id="$SEG" --buffer_size=64M --operation="$op" --block_size="$sz" --batch_size="$bt" \
    --threads="$THREADS" --duration="$DURATION" --json $flags 2> ferry_err.log > ferry.json
  grep -q '"verified":true' ferry.json && sed 's/.*"gbit_per_s":\([0-9.]*\).*/\1/' ferry.json
}
target_start() { # target_start LOCATION: sets TP, SEG
  "$B/ferry-bench" --mode=target --local_server_name=$IP --protocol=rdma --device_name=$DEV \
    --buffer_size=64M --location="$1" > target.log 2>&1 &
  TP=$!
  for _ in $(seq 300); do grep -q "target ready" target.log && break; sleep 0.1; done
  SEG=$(sed -n 's/.*segment \([^ ]*\) .*/\1/p' target.log)
}
echo "Soft-RoCE (rdma_rxe) in a qemu TCG guest, $(nproc) vCPUs, kernel $(uname -r);"
echo "median of $ROUNDS runs of ~$DURATION s each, perftest and ferry interleaved, 1 QP, MTU 1024"
echo
echo "| target memory | op | block | batch | variant | ib_{write,read}_bw Gbit/s (runs) | ferry Gbit/s (runs) | ferry / ib |"
echo "|---|---|---|---|---|---|---|---|"
rc=0
for loc in $TARGETS; do
target_start "$loc"
for op in $OPS; do
  for blk in $BLOCKS; do
    n=$(bytes "$blk"); batch=$(batch_of "$blk"); refs=""; v=0
    for var in $VARIANTS; do v=$((v + 1)); eval "gots_$v=''"; done
    for _ in $(seq "$ROUNDS"); do
      refs="$refs $(perf ib_${op}_bw "$n")"
      v=0
      for var in $VARIANTS; do
        v=$((v + 1))
        g=$(ferry $op "$n" "$batch" $(echo "${var#*:}" | tr , ' ')) || { g=""; rc=1; cat ferry_err.log; }
        eval "gots_$v=\"\$gots_$v $g\""
      done
    done
    ref=$(echo "$refs" | median); v=0
    for var in $VARIANTS; do
      v=$((v + 1)); eval "gots=\$gots_$v"; got=$(echo "$gots" | median)
      ratio=$(awk -v a="$got" -v b="$ref" 'BEGIN{ if (a != "" && b > 0) printf "%.0f%%", 100 * a / b; else print "-" }')
      echo "| $loc | $op | $blk | $batch | ${var%%:*} | ${ref:--} (${refs# }) | ${got:-FAILED} (${gots# }) | $ratio |"
    done
  done
done
kill $TP; wait $TP 2>/dev/null
done
exit $rc
GUEST
FERRY_VM_BUILD=$BUILD QEMU_TIMEOUT=${QEMU_TIMEOUT:-900} sh tests/rdma/run-in-rxe-vm.sh "$SHARE" 2>&1 |
  grep --line-buffered -v -e 'SeaBIOS' -e 'Booting from ROM' -e 'reboot: Power down' -e '^rxe-vm:' | tr -d '\033' |
  sed 's/^c\[?7l\[2J\(\[0m\)\?//'
exit "$(cat "$SHARE/rxe-guest.rc" 2>/dev/null || echo 1)"

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# ferry-bench takes Mooncake transfer_engine_bench's command lines: a target
# and an initiator with its flags (the initiator without --mode, as
# Mooncake's default), --report_unit / --report_precision in the figures,
# --auto_discovery, --init_mem, --backend and --nic_priority_matrix accepted;
# bad values of them exit 2 with a message naming the flag.  Needs
# FERRY_BENCH (ctest sets it).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/target_lib.sh
. "$here/../../bench/target_lib.sh"
work=$(mktemp -d)
trap 'target_stop; rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
cat > "$work/matrix.json" <<'J'
{"cpu:0": [["mlx5_0", "mlx5_1"], ["mlx5_2"]], "cuda:0": [["mlx5_1"], []]}
J
target_start "$work/target.log" "$FERRY_BENCH" --mode=target --metadata_server=P2PHANDSHAKE \
  --local_server_name=127.0.0.1 --protocol=tcp --auto_discovery --backend=classic --init_mem=true \
  --nic_priority_matrix="$work/matrix.json" --buffer_size=8M --use_vram=false
[ -n "$TARGET_SEG" ] || { cat "$work/target.log"; fail "the target did not start"; }

# the initiator as Mooncake's README writes it (no --mode), read by default
# in Mooncake and named here, GiB with three digits
out=$("$FERRY_BENCH" --metadata_server=P2PHANDSHAKE --segment_id="$TARGET_SEG" --local_server_name=127.0.0.1 \
  --protocol=tcp --operation=read --threads=2 --block_size=65536 --batch_size=32 --duration=1 \
  --buffer_size=4M --report_unit=GiB --report_precision=3 --auto_discovery --noinit_mem --backend=tent 2>&1) ||
  fail "initiator with Mooncake's flags exited $?: $out"
echo "$out" | grep -Eq '= [0-9]+\.[0-9]{3} GiB/s \(' || fail "no rate in GiB/s with 3 digits: $out"
echo "$out" | grep -q 'verified ok' || fail "not verified: $out"
out=$("$FERRY_BENCH" --segment_id="$TARGET_SEG" --local_server_name=127.0.0.1 --iterations=2 --buffer_size=4M --batch_size=32 \
  --report_unit=Mb --report_precision=0 2>&1) || fail "initiator with --report_unit=Mb exited $?: $out"
echo "$out" | grep -Eq '= [0-9]+ Mb/s \(' || fail "no rate in Mb/s with 0 digits: $out"

# bad values: exit 2, the flag named
bad() {
  local want=$1
  shift
  out=$("$FERRY_BENCH" --segment_id="$TARGET_SEG" --local_server_name=127.0.0.1 --iterations=1 --buffer_size=4M \
    --batch_size=32 "$@" 2>&1)
  rc=$?
  [ $rc -eq 2 ] || fail "$* exited $rc, not 2: $out"
  echo "$out" | grep -q -- "$want" || fail "$*: message lacks '$want': $out"
}
bad --report_unit --report_unit=TB
bad --report_precision --report_precision=12
bad --backend --backend=fast
bad --nic_priority_matrix --nic_priority_matrix="$work/none.json"
echo '{"cpu:0": "mlx5_0"}' > "$work/flat.json"
bad 'not a list' --nic_priority_matrix="$work/flat.json"
echo '{"cpu:0": [[' > "$work/cut.json"
bad 'not a JSON object' --nic_priority_matrix="$work/cut.json"
echo '{"cpu:0": [["mlx5_0,mlx5_1"]]}' > "$work/comma.json"
bad 'not a device name' --nic_priority_matrix="$work/comma.json"
echo '{"cpu:0": [[], []]}' > "$work/empty.json"
bad 'names no NIC' --nic_priority_matrix="$work/empty.json"
# a file over 64 KiB (blanks after a valid object) and more NIC names than
# the device list holds: refused, not cut
{ echo '{"cpu:0": [["mlx5_0"]]}'; head -c 70000 /dev/zero | tr '\0' ' '; } > "$work/big.json"
bad 'larger than' --nic_priority_matrix="$work/big.json"
{ printf '{"cpu:0": [['; for i in $(seq 1 200); do printf '"nic_with_a_rather_long_name_%03d",' "$i"; done
  printf '"last"]]}'; } > "$work/many.json"
bad 'too many NICs' --nic_priority_matrix="$work/many.json"
bad 'unknown flag' --no_such_flag=1
echo "ferry-bench: Mooncake's flags accepted, bad values refused"

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job: builds ferry-bench, starts a target and an initiator on this
# machine (P2P handshake over loopback), WRITEs then READs 64 KiB blocks in
# batches of 128 with every byte verified, and prints GB/s.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target ferry-bench >/dev/null

log=$(mktemp)
./build/ferry-bench --mode=target --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
    --buffer_size=256M >"$log" 2>&1 &
target=$!
trap 'kill $target 2>/dev/null; wait $target 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q 'ready' "$log" && break; sleep 0.1; done
segment=$(sed -n 's/.*segment \([^ ]*\).*/\1/p' "$log")
[ -n "$segment" ] || { cat "$log"; echo "target did not start"; exit 1; }
echo "target ready at $segment"
for op in write read; do
  ./build/ferry-bench --mode=initiator --local_server_name=127.0.0.1 --metadata_server=P2PHANDSHAKE \
      --segment_id="$segment" --operation=$op --protocol=tcp --block_size=65536 --batch_size=128 \
      --buffer_size=256M --duration="${DURATION:-5}"
done

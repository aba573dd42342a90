#!/usr/bin/env bash
# Builds what the GPU machine runs into build-gpu/ (it has CUDA but no
# internet and no Debian -dev packages): ferry, its tests and benches, plus
# the shared libraries they need (cJSON, cmocka) and iperf3 for the
# reference figure.  Then run tests/gpu/run.sh there with build-gpu carried.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/deps.sh
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-gpu -j"$(nproc)" >/dev/null
mkdir -p build-gpu/lib build-gpu/bin
for lib in libcjson.so.1 libcmocka.so.0 libiperf.so.0 libsctp.so.1; do
  cp -L "/lib/x86_64-linux-gnu/$lib" build-gpu/lib/
done
cp "$(command -v iperf3)" build-gpu/bin/
echo "build-gpu ready"

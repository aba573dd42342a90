#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
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
# every shared library the binaries need beyond glibc (the GPU image has
# none of Debian's -dev packages' runtime libraries)
for bin in build-gpu/ferry-bench build-gpu/tests/test_staging build-gpu/tests/test_shm build-gpu/staging_bench "$(command -v iperf3)"; do
  ldd "$bin" | awk '/=> \//{print $3}'
done | sort -u | grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' | while read -r lib; do
  cp -L "$lib" build-gpu/lib/
done
cp "$(command -v iperf3)" build-gpu/bin/
# what travels to the GPU machine is capped (64 MiB with the tree): leave
# the build's intermediates behind and the debug info out
find build-gpu -name '*.o' -delete
rm -rf build-gpu/CMakeFiles build-gpu/tests/CMakeFiles build-gpu/libferry.a
find build-gpu -type f \( -perm -u+x -o -name '*.so*' \) -exec strip --strip-debug {} + 2>/dev/null || true
echo "build-gpu ready"

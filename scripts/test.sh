#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds ferry and passes every test: the normal build's suite (warnings are
# errors here, not in users' builds), the Python package installed with pip
# and its tests, Release builds with GCC and Clang, the same suite under
# ASan+UBSan, the multi-process and transport tests under ThreadSanitizer,
# each libFuzzer target for FUZZ_SECONDS (default 30), and the
# rdma transport in a Soft-RoCE VM.  Works from any checkout path.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh

echo "== every source file carries SPDX-License-Identifier (scripts/spdx.sh adds it)"
bash scripts/spdx.sh --check
jobs=$(nproc)
fuzz_seconds=${FUZZ_SECONDS:-30}

echo "== build (RelWithDebInfo) and test"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_WERROR=ON >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j2 --timeout 600)

echo "== python package: pip install ./python (libferry built by CMake inside), pytest, python -m ferry"
rm -rf build/venv
/usr/bin/python3 -m venv --without-pip --system-site-packages build/venv   # Debian's pip, from the system
JOBS=$jobs build/venv/bin/python -m pip install -q --no-build-isolation --no-index ./python
build/venv/bin/python -m pytest -q -rs -p no:cacheprovider tests/python
build/venv/bin/python -m ferry --version | tee build/ferry-version.txt
grep -q "^ferry $(sed -n 's/^#define FERRY_VERSION_[A-Z]* \([0-9]*\)/\1/p' include/ferry.h | paste -sd.)\$" build/ferry-version.txt
grep -q "^transport tcp *available" build/ferry-version.txt

echo "== Release builds with GCC and Clang, warnings as errors (library, tools, tests)"
for cc in gcc clang; do
  CC=$cc cmake -S . -B "build-release-$cc" -DCMAKE_BUILD_TYPE=Release -DFERRY_WERROR=ON >/dev/null
  cmake --build "build-release-$cc" -j"$jobs" >/dev/null
  echo "Release $cc: clean"
done

echo "== plots: bench/plot.py draws docs/plots from docs/plots/data.json"
/usr/bin/python3 bench/plot.py --out build/plots

echo "== build with ASan+UBSan and test"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DFERRY_SANITIZE=ON -DFERRY_WERROR=ON >/dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest --output-on-failure -j2 --timeout 900)

echo "== ThreadSanitizer: multi-process and transport tests (docs/SECURITY.md)"
tsan_tests='^test_(memreg|shm|shm_safety|transfer|faults|trace|copyfail|shm_copyfail|shm_jobs|shm_ipc_stale|shm_map)$'
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_TSAN=ON -DFERRY_WERROR=ON >/dev/null
cmake --build build-tsan -j"$jobs" --target ferry_test_target test_memreg test_shm test_shm_safety test_transfer \
  test_faults test_trace test_copyfail test_shm_copyfail test_shm_jobs test_shm_ipc_stale test_shm_map
(cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 FERRY_REQUEST_TIMEOUT_MS=120000 \
   ctest --output-on-failure -j2 -R "$tsan_tests")

echo "== fuzzers (${fuzz_seconds}s each)"
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_FUZZ=ON -DFERRY_WERROR=ON >/dev/null
cmake --build build-fuzz -j"$jobs" --target fuzz_wire fuzz_descriptor
for f in fuzz_wire fuzz_descriptor; do
  corpus=$(mktemp -d)
  [ -d "tests/fuzz/corpus/$f" ] && cp -r "tests/fuzz/corpus/$f/." "$corpus/"
  ./build-fuzz/tests/$f -max_total_time="$fuzz_seconds" -print_final_stats=1 "$corpus" 2>&1 | tail -3
  rm -rf "$corpus"
done
echo "== rdma transport on Soft-RoCE in a qemu VM (tests/rdma/vm-test.sh)"
rdma_rc=0
sh tests/rdma/vm-test.sh build || rdma_rc=$?
if [ "$rdma_rc" = 77 ]; then
  echo "rdma VM tests SKIPPED (reason above)"
elif [ "$rdma_rc" != 0 ]; then
  echo "rdma VM tests FAILED"; exit 1
fi
echo "== all tests passed"

#!/usr/bin/env bash
# Builds ferry and passes every test: the normal build's suite, the same suite
# under ASan+UBSan, the multi-process and transport tests under ThreadSanitizer,
# and each libFuzzer target for FUZZ_SECONDS (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
jobs=$(nproc)
fuzz_seconds=${FUZZ_SECONDS:-30}

echo "== build (RelWithDebInfo) and test"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j2 --timeout 600)

echo "== python package and pytest"
FERRY_BUILD_DIR=build python/build.sh
/usr/bin/python3 -m pytest -q -rs -p no:cacheprovider tests/python

echo "== build with ASan+UBSan and test"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DFERRY_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest --output-on-failure -j2 --timeout 900)

echo "== ThreadSanitizer: multi-process and transport tests (docs/SECURITY.md)"
tsan_tests='^test_(memreg|shm|shm_safety|transfer|faults)$'
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_TSAN=ON >/dev/null
cmake --build build-tsan -j"$jobs" --target ferry_test_target test_memreg test_shm test_shm_safety test_transfer \
  test_faults
(cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 FERRY_REQUEST_TIMEOUT_MS=120000 \
   ctest --output-on-failure -j2 -R "$tsan_tests")

echo "== fuzzers (${fuzz_seconds}s each)"
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_FUZZ=ON >/dev/null
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

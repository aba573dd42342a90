#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds ferry and passes every test: the normal build's suite (warnings are
# errors here, not in users' builds), the Python package installed with pip
# and its tests, Release builds with GCC and Clang (library and tools), the same suite under
# ASan+UBSan (built with Clang), the multi-process and transport tests under ThreadSanitizer,
# the tcp frame and descriptor fuzzers for FUZZ_SECONDS (default 30) and
# every other libFuzzer target for FUZZ_SHORT_SECONDS (default 10), two at a
# time, and the rdma transport in a Soft-RoCE VM.
# Each stage's line starts with its UTC time.  Works from any checkout path.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh

echo "== $(date -u +%T) every source file carries SPDX-License-Identifier (scripts/spdx.sh adds it)"
bash scripts/spdx.sh --check
jobs=$(nproc)
fuzz_seconds=${FUZZ_SECONDS:-30}

echo "== $(date -u +%T) build (RelWithDebInfo) and test"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_WERROR=ON >/dev/null
cmake --build build -j"$jobs"
# four tests at a time on two cores: the suite waits more than it computes
# (~300 s of CPU in ~320 s at -j2); -j4 took 183 s (docs/BENCHMARKS.md, ci19)
(cd build && ctest --output-on-failure -j4 --timeout 600)

echo "== $(date -u +%T) python package: pip install ./python (libferry built by CMake inside), pytest, python -m ferry"
rm -rf build/venv
/usr/bin/python3 -m venv --without-pip --system-site-packages build/venv   # Debian's pip, from the system
JOBS=$jobs build/venv/bin/python -m pip install -q --no-build-isolation --no-index ./python
build/venv/bin/python -m pytest -q -rs -p no:cacheprovider tests/python
build/venv/bin/python -m ferry --version | tee build/ferry-version.txt
grep -q "^ferry $(sed -n 's/^#define FERRY_VERSION_[A-Z]* \([0-9]*\)/\1/p' include/ferry.h | paste -sd.)\$" build/ferry-version.txt
grep -q "^transport tcp *available" build/ferry-version.txt

echo "== $(date -u +%T) Release builds, warnings as errors: GCC and Clang, the library and tools"
# the tests' code is built with GCC -Werror at -O2 above and with Clang -Werror
# under ASan below, so the Release builds leave them out (most of their time)
for cc in gcc clang; do
  CC=$cc cmake -S . -B "build-release-$cc" -DCMAKE_BUILD_TYPE=Release -DFERRY_WERROR=ON -DFERRY_BUILD_TESTS=OFF >/dev/null
  cmake --build "build-release-$cc" -j"$jobs" >/dev/null
  echo "Release $cc: clean"
done

echo "== $(date -u +%T) plots: bench/plot.py draws docs/plots from docs/plots/data.json"
/usr/bin/python3 bench/plot.py --out build/plots

echo "== $(date -u +%T) build with ASan+UBSan (Clang, -O1) and test"
# Clang, so that the tests' code is also built by a second compiler with
# warnings as errors; -O1, ASan's own advice (-O0 ran the suite slower)
# CC is read at a build folder's first configure only: a build-asan that an
# earlier test.sh configured with GCC would stay GCC, silently (rev19r)
if [ -f build-asan/CMakeCache.txt ] && ! grep -q '^CMAKE_C_COMPILER:.*clang' build-asan/CMakeCache.txt; then
  rm -rf build-asan
fi
CC=clang cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_FLAGS_DEBUG="-g -O1" -DFERRY_SANITIZE=ON \
  -DFERRY_WERROR=ON >/dev/null
grep -q '^CMAKE_C_COMPILER:.*clang' build-asan/CMakeCache.txt || { echo "build-asan is not built by Clang"; exit 1; }
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest --output-on-failure -j4 --timeout 900)

echo "== $(date -u +%T) ThreadSanitizer: multi-process and transport tests (docs/SECURITY.md)"
# the staging family added by rev16 (test_staging 50-80 s, bigroup 20 s, the rest 2-4 s each; its
# _ack_on_copy / _ack_on_mark variants passed under TSan too, and are left out for CI's time)
tsan_tests='^test_(attacks|acceptor|acceptor_claim|memreg|shm|shm_safety|transfer|faults|trace|copyfail|shm_copyfail|shm_jobs|shm_job_frames|shm_job_hang|tcp_bounce_idle|shm_ipc_stale|shm_map|stream|stream_stall|stream_faults|stream_faults_held|staging|staging_bigroup|staging_group|staging_issuer|staging_handoffs|staging_shape)$'
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_TSAN=ON -DFERRY_WERROR=ON >/dev/null
cmake --build build-tsan -j"$jobs" --target ferry_test_target test_attacks test_acceptor test_acceptor_claim test_memreg test_shm test_shm_safety test_transfer \
  test_faults test_trace test_copyfail test_shm_copyfail test_shm_jobs test_shm_job_frames test_shm_job_hang test_tcp_bounce_idle test_shm_ipc_stale \
  test_shm_map test_stream test_stream_faults test_stream_faults_held test_staging test_staging_bigroup test_staging_group \
  test_staging_issuer test_staging_handoffs test_staging_shape
(cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 FERRY_REQUEST_TIMEOUT_MS=120000 \
   ctest --output-on-failure -j2 -R "$tsan_tests")

fuzz_short=${FUZZ_SHORT_SECONDS:-10}
echo "== $(date -u +%T) fuzzers (tcp frames and descriptors ${fuzz_seconds}s each; every other decoder of peer bytes ${fuzz_short}s)"
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_FUZZ=ON -DFERRY_WERROR=ON >/dev/null
fuzz_long="fuzz_wire fuzz_descriptor"
fuzz_others="fuzz_p2p fuzz_auth fuzz_base64 fuzz_hostport fuzz_etcd_reply fuzz_redis_reply fuzz_shm_notify"
cmake --build build-fuzz --target help > build-fuzz/targets.txt   # (grep -q on the pipe would break it)
if grep -qw fuzz_rdma_wire build-fuzz/targets.txt; then  # built with libibverbs
  fuzz_others="$fuzz_others fuzz_rdma_wire"
fi
cmake --build build-fuzz -j"$jobs" --target $fuzz_long $fuzz_others
# two fuzzers at a time (each runs on one core; CI has 2), each one's output
# printed when it ends; any failure fails the stage
fuzz_one() {
  f=$1 seconds=$fuzz_short
  case " $fuzz_long " in *" $f "*) seconds=$fuzz_seconds ;; esac
  corpus=$(mktemp -d)
  [ -d "tests/fuzz/corpus/$f" ] && cp -r "tests/fuzz/corpus/$f/." "$corpus/"
  # a crash, a hang (5 s per input), a leak or an allocation over the caps fails the stage
  rc=0
  ./build-fuzz/tests/$f -max_total_time="$seconds" -timeout=5 -rss_limit_mb=512 -malloc_limit_mb=64 \
    -print_final_stats=1 "$corpus" > "build-fuzz/$f.log" 2>&1 || rc=$?
  rm -rf "$corpus"
  echo "$f:"; tail -3 "build-fuzz/$f.log"
  [ "$rc" = 0 ] || { echo "$f FAILED (exit $rc; build-fuzz/$f.log)"; tail -40 "build-fuzz/$f.log"; }
  return "$rc"
}
export -f fuzz_one
export fuzz_long fuzz_short fuzz_seconds
printf '%s\n' $fuzz_long $fuzz_others | xargs -P 2 -I{} bash -c 'fuzz_one {}'
echo "== $(date -u +%T) rdma transport on Soft-RoCE in a qemu VM (tests/rdma/vm-test.sh)"
rdma_rc=0
sh tests/rdma/vm-test.sh build || rdma_rc=$?
if [ "$rdma_rc" = 77 ]; then
  echo "rdma VM tests SKIPPED (reason above)"
elif [ "$rdma_rc" != 0 ]; then
  echo "rdma VM tests FAILED"; exit 1
fi
echo "== $(date -u +%T) all tests passed"

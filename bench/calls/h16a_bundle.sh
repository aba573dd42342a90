#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# h16a_bundle.sh — copies what h16a's GPU calls run into DEST (default
# /work/main/build-h16a, an ignored path of the tree the device machine
# copies): the binaries of FROM (default build-gpu; another build of the
# same tree will do, e.g. build after a change, where build-gpu's objects
# were deleted by tests/gpu/bundle.sh), the shared libraries and iperf3 of
# build-gpu (made by tests/gpu/bundle.sh), and this branch's bench/,
# leaving out the test binaries the calls do not run and the debug info,
# so that `carry` stays well under its 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."   # the repository root (this script lies in bench/calls/)
DEST=${1:-/work/main/build-h16a}
FROM=${FROM:-build-gpu}
rm -rf "$DEST"
mkdir -p "$DEST/tests" "$DEST/bench"
cp -a build-gpu/lib build-gpu/bin "$DEST/"
cp -a "$FROM"/ferry-bench "$FROM"/staging_bench "$FROM"/libferry.so* "$DEST/"
for t in ferry_test_target test_staging test_staging_issuer test_device_cuda test_cuda_ipc ${H16A_TESTS:-}; do
  cp -a "$FROM/tests/$t" "$DEST/tests/"
done
find "$DEST" -maxdepth 2 -type f \( -perm -u+x -o -name '*.so*' \) -exec strip --strip-debug {} + 2>/dev/null || true
cp -a bench/*.sh bench/*.py bench/calls "$DEST/bench/"
du -sh "$DEST"

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# build.sh — builds libferry.a with CMake (if missing or stale) and the ferry
# extension in place (python/ferry/_ferry*.so) with /usr/bin/python3.
#
# usage: python/build.sh            then: PYTHONPATH=python /usr/bin/python3 -c 'import ferry'
# env:   FERRY_BUILD_DIR (build-py; relative to the repository root)
#        PYTHON (/usr/bin/python3)   JOBS (nproc)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build_dir=${FERRY_BUILD_DIR:-build-py}
case "$build_dir" in /*) ;; *) build_dir="$root/$build_dir" ;; esac
py=${PYTHON:-/usr/bin/python3}
jobs=${JOBS:-$(nproc)}

if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_BUILD_TESTS=OFF >/dev/null
fi
# make decides whether anything is stale; cheap when nothing changed
cmake --build "$build_dir" -j"$jobs" --target ferry_static >/dev/null

cd "$here"
FERRY_BUILD_DIR="$build_dir" "$py" setup.py -q build_ext --inplace --force
echo "built $(ls "$here"/ferry/_ferry*.so) against $build_dir/libferry.a"

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu.sh — the Python tests on the GPU machine (CUDA, torch, no -dev packages,
# no internet), in two steps:
#   here:  tests/python/gpu.sh bundle   builds libferry.a into build-pygpu/ and copies
#                                       the shared libraries it needs (cJSON, hiredis)
#   there: tests/python/gpu.sh run      (with build-pygpu carried) compiles the extension
#                                       for that machine's python with gcc, runs pytest
# env (run): PYTHON (python3 on PATH, the one that has torch)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
B="$root/build-pygpu"
case "${1:-}" in
bundle)
  cmake -S "$root" -B "$B" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_WERROR=OFF >/dev/null
  cmake --build "$B" -j"$(nproc)" --target ferry_static >/dev/null
  mkdir -p "$B/lib"
  # every shared library CMake linked libferry with (cJSON, hiredis, ibverbs, ...) and
  # what those pull in beyond glibc, under their sonames; libcurl is left to the
  # machine's own (its dependency tree differs between distributions)
  for dep in $(grep -o '/[^ ]*\.so[^ ]*' "$B/CMakeFiles/ferry.dir/link.txt"); do
    case "$dep" in *libcurl*) continue ;; esac
    for f in "$dep" $(ldd "$dep" | awk '/=> \//{print $3}'); do
      case "$(basename "$f")" in libc.so*|libm.so*|libpthread*|libdl.so*|ld-linux*|libgcc_s*) continue ;; esac
      soname=$(objdump -p "$f" | awk '/SONAME/{print $2}')
      cp -L "$f" "$B/lib/${soname:-$(basename "$f")}"
    done
  done
  # keep only what `run` needs, so the carried folder stays small
  find "$B" -mindepth 1 -maxdepth 1 ! -name lib ! -name libferry.a -exec rm -rf {} +
  cp -r "$root/include" "$B/include"   # the header this libferry.a was built with
  du -sh "$B"
  ;;
run)
  py=${PYTHON:-python3}
  export LD_LIBRARY_PATH="$B/lib:${LD_LIBRARY_PATH:-}"
  inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  suffix=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
  libs=()
  for l in "$B"/lib/*.so*; do libs+=("$l"); done
  # the extension's sources as setup.py lists them (one list: a file added
  # there is compiled here too)
  srcs=()
  for f in $(sed -n 's/^SOURCES = \[\(.*\)\]/\1/p' "$root/python/setup.py" | tr -d '",'); do
    srcs+=("$root/python/ferry/$f")
  done
  [ ${#srcs[@]} -gt 0 ] || { echo "no SOURCES list in python/setup.py"; exit 1; }
  gcc -shared -fPIC -O2 -std=gnu11 -Wall -fvisibility=hidden -I"$inc" -I"$B/include" \
      "${srcs[@]}" "$B/libferry.a" \
      -Wl,--exclude-libs,ALL "${libs[@]}" -lcurl -lpthread -ldl -lm \
      -o "$root/python/ferry/_ferry$suffix"
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' || true
  nvidia-smi -L || true
  cd "$root"
  # the package is importable from its source folder (no pip there): subprocesses
  # of the tests (python -m ferry) need the same path as conftest gives pytest
  export PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}"
  "$py" -m pytest -q -rs tests/python
  ;;
*)
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
  ;;
esac

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# bundle.sh — copies what bench/peers.sh runs into one folder that can be
# carried to a machine with no apt and no internet (the GPU machine):
#   bin/  ferry-bench, iperf3, transfer_engine_bench, ucx_perftest, fi_rma_bw
#         (those that exist here; stripped copies)
#   lib/  every shared library they load beyond glibc, as ldd resolves it here
# Then, there:  bench/peers.sh run DIR   (sets LD_LIBRARY_PATH=DIR/lib).
# It ends by checking that, with LD_LIBRARY_PATH=DIR/lib and the loader's
# cache off, each binary resolves every library from DIR/lib or glibc, and
# prints the bundle's size.
#
# usage: bench/peers/bundle.sh [DIR]        (default bench/peers/build/bundle)
# env:   FERRY_BENCH (build/ferry-bench)  TEBENCH  UCX_PERFTEST  FI_RMA_BW  IPERF3
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dir=${1:-$here/build/bundle}

first_exe() { local f; for f in "$@"; do [ -n "$f" ] && [ -x "$f" ] && { echo "$f"; return; }; done; }
declare -A src=(
  [ferry-bench]=$(first_exe "${FERRY_BENCH:-}" "$root/build/ferry-bench")
  [transfer_engine_bench]=$(first_exe "${TEBENCH:-}" "$here/build/bin/transfer_engine_bench")
  [ucx_perftest]=$(first_exe "${UCX_PERFTEST:-}" "$(command -v ucx_perftest || true)")
  [fi_rma_bw]=$(first_exe "${FI_RMA_BW:-}" "$here/build/bin/fi_rma_bw")
  [iperf3]=$(first_exe "${IPERF3:-}" "$(command -v iperf3 || true)")
)

rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/lib/ucx"
bins=()
for name in ferry-bench iperf3 transfer_engine_bench ucx_perftest fi_rma_bw; do
  if [ -z "${src[$name]}" ]; then
    echo "bundle.sh: no $name here: left out" >&2
    continue
  fi
  cp -L "${src[$name]}" "$dir/bin/$name"
  bins+=("$dir/bin/$name")
done
[ "${#bins[@]}" -gt 0 ] || { echo "bundle.sh: nothing to bundle" >&2; exit 1; }

# glibc's own libraries stay those of the machine that runs the bundle
is_glibc() {
  case "$(basename "$1")" in
    libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|libutil.so*|ld-linux*|libmvec.so*) return 0 ;;
    *) return 1 ;;
  esac
}
for b in "${bins[@]}"; do
  ldd "$b" | awk '/=> \// { print $3 }'
done | sort -u | while read -r lib; do
  is_glibc "$lib" || cp -L "$lib" "$dir/lib/"
done
# lib/ucx stays empty: UCX runs here with UCX_TLS=tcp, which is in libuct
# itself; its loadable modules (ib, cma, rdmacm) are not needed.
strip --strip-unneeded "$dir"/bin/* "$dir"/lib/*.so* 2>/dev/null || true

# --- check: resolvable from the bundle alone (plus glibc) ---------------------
glibc_dir=$(dirname "$(ldd /bin/true | awk '/libc\.so/ { print $3 }')")
only_glibc=$(mktemp -d)
trap 'rm -rf "$only_glibc"' EXIT
for f in "$glibc_dir"/libc.so.* "$glibc_dir"/libm.so.* "$glibc_dir"/libpthread.so.* \
         "$glibc_dir"/libdl.so.* "$glibc_dir"/librt.so.* "$glibc_dir"/libresolv.so.*; do
  [ -e "$f" ] && ln -s "$f" "$only_glibc/"
done
loader=$(ldd /bin/true | awk '/ld-linux/ { print $1 }')
bad=0
for b in "${bins[@]}"; do
  # --list under the loader with its cache off: the system's lib directories
  # (known to it only through the cache) are out of reach
  if ! out=$("$loader" --inhibit-cache --library-path "$dir/lib:$only_glibc" --list "$b" 2>&1) ||
     grep -q 'not found' <<<"$out"; then
    echo "bundle.sh: $(basename "$b") does not resolve from the bundle:" >&2
    grep 'not found' <<<"$out" >&2 || echo "$out" | tail -n 3 >&2
    bad=1
  fi
done
size=$(du -sm "$dir" | cut -f1)
echo "bundle: $dir (${size} MiB): bin/ $(find "$dir/bin" -type f -printf '%f ')"
echo "        lib/ $(find "$dir/lib" -maxdepth 1 -name '*.so*' | wc -l) libraries"
echo "run there: bench/peers.sh run $dir"
exit "$bad"

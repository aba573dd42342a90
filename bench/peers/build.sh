#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# build.sh — builds the peer benchmarks that bench/peers.sh compares ferry with,
# from their public source, into bench/peers/build/ (git-ignored):
#
#   mooncake  Mooncake's transfer_engine_bench: the transfer engine alone
#             (TCP transport; its RDMA code is compiled in but unused; no CUDA,
#             no store, no Python), against Debian packages plus yalantinglibs'
#             headers (Mooncake's submodule, at the commit Mooncake pins).
#   fabtests  libfabric's fi_rma_bw, from the fabtests directory of the
#             libfabric release that matches Debian's libfabric-dev.
#
# UCX's ucx_perftest comes from Debian (ucx-utils): nothing to build.
# Packages: bash bench/peers/deps.sh.  A peer whose source is missing or whose
# build fails is reported in one line (log in build/<peer>.log) and skipped;
# the exit status is 0 unless every requested peer failed.
#
# usage: bench/peers/build.sh [mooncake|fabtests|all]   (default all)
# env:   MOONCAKE_GIT   git dir or work tree of kvcache-ai/Mooncake
#        MOONCAKE_REV   commit or tag to build (HEAD)
#        YLT_GIT        git dir or work tree of alibaba/yalantinglibs
#        LIBFABRIC_GIT  git dir or work tree of ofiwg/libfabric
#        FABTESTS_REV   tag to build fabtests from (v<Debian's libfabric version>)
#        JOBS           parallel build jobs (2)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=$here/build
MOONCAKE_GIT=${MOONCAKE_GIT:-/work/.mirror/kvcache-ai+Mooncake/repo}
MOONCAKE_REV=${MOONCAKE_REV:-HEAD}
YLT_GIT=${YLT_GIT:-/work/.mirror/alibaba+yalantinglibs/repo}
LIBFABRIC_GIT=${LIBFABRIC_GIT:-/work/.mirror/ofiwg+libfabric/repo}
JOBS=${JOBS:-2}
mkdir -p "$out/src" "$out/bin"

note() { echo "build.sh: $*" >&2; }

# export_tree GIT REV DEST [PATH...]: the files of REV (only PATHs, if given)
# from a git dir, bare or a clone's; DEST/.rev records the commit taken.
# (Snapshots may lack large data files, hence the PATHs.)
export_tree() {
  local git=$1 rev=$2 dest=$3 commit
  shift 3
  [ -d "$git/.git" ] && git=$git/.git
  commit=$(git --git-dir="$git" rev-parse --verify -q "$rev^{commit}" 2>/dev/null) || return 1
  if [ "$(cat "$dest/.rev" 2>/dev/null)" = "$commit" ]; then return 0; fi
  rm -rf "$dest"; mkdir -p "$dest"
  git --git-dir="$git" archive "$commit" -- "$@" | tar -x -C "$dest" || return 1
  echo "$commit" >"$dest/.rev"
}

build_mooncake() {
  local src=$out/src/mooncake ylt=$out/src/yalantinglibs prefix=$out/prefix ylt_rev
  local log=$out/mooncake.log
  export_tree "$MOONCAKE_GIT" "$MOONCAKE_REV" "$src" \
      CMakeLists.txt cmake mooncake-common mooncake-transfer-engine ||
    { note "mooncake: no Mooncake source at MOONCAKE_GIT=$MOONCAKE_GIT"; return 1; }
  ylt_rev=$(git --git-dir="$MOONCAKE_GIT" ls-tree "$(cat "$src/.rev")" extern/yalantinglibs | awk '{print $3}')
  export_tree "$YLT_GIT" "${ylt_rev:-HEAD}" "$ylt" ||
    { note "mooncake: no yalantinglibs source at YLT_GIT=$YLT_GIT (commit ${ylt_rev:-?})"; return 1; }
  # No Python module is built, but the standalone transfer-engine build adds
  # extern/pybind11 (a submodule) and its rpc_communicator compiles against
  # pybind11's headers: point that at Debian's pybind11-dev instead.
  mkdir -p "$src/extern/pybind11"
  [ -f "$src/extern/pybind11/CMakeLists.txt" ] ||
    cat >"$src/extern/pybind11/CMakeLists.txt" <<'CMAKE'
# stub written by ferry's bench/peers/build.sh: Debian's pybind11-dev headers
add_library(pybind11_headers_debian INTERFACE)
add_library(pybind11::headers ALIAS pybind11_headers_debian)
CMAKE
  {
    echo "== yalantinglibs $(cat "$ylt/.rev")"
    cmake -S "$ylt" -B "$out/ylt" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$prefix" \
      -DBUILD_EXAMPLES=OFF -DBUILD_BENCHMARK=OFF -DBUILD_UNIT_TESTS=OFF &&
    cmake --install "$out/ylt" &&
    echo "== Mooncake $(cat "$src/.rev")" &&
    cmake -S "$src/mooncake-transfer-engine" -B "$out/mooncake" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$prefix" -DPython3_EXECUTABLE=/usr/bin/python3 \
      -DENABLE_DEBUG_SYMBOLS=OFF -DUSE_HTTP=OFF \
      -DBUILD_UNIT_TESTS=OFF -DBUILD_EXAMPLES=ON -DBUILD_BENCHMARK=OFF &&
    cmake --build "$out/mooncake" -j"$JOBS" --target transfer_engine_bench
  } >"$log" 2>&1 || { note "mooncake: build failed (last lines of $log):"; tail -n 5 "$log" >&2; return 1; }
  cp "$out/mooncake/example/transfer_engine_bench" "$out/bin/"
  note "mooncake: $out/bin/transfer_engine_bench (Mooncake $(cut -c1-12 "$src/.rev"))"
}

build_fabtests() {
  local ver rev src=$out/src/libfabric log=$out/fabtests.log
  ver=$(sed -n 's/^#define FI_\(MAJOR\|MINOR\)_VERSION \([0-9]*\).*/\2/p' /usr/include/rdma/fabric.h 2>/dev/null | paste -sd.)
  [ -n "$ver" ] || { note "fabtests: no /usr/include/rdma/fabric.h (apt-get install libfabric-dev)"; return 1; }
  rev=${FABTESTS_REV:-v$ver.0}
  export_tree "$LIBFABRIC_GIT" "$rev" "$src" fabtests ||
    { note "fabtests: no libfabric source with tag $rev at LIBFABRIC_GIT=$LIBFABRIC_GIT"; return 1; }
  (
    echo "== fabtests from libfabric $rev ($(cat "$src/.rev")), against libfabric $ver headers"
    cd "$src/fabtests" &&
    { [ -x configure ] || ./autogen.sh; } &&
    { [ -f Makefile ] || ./configure --with-libfabric=/usr --prefix="$out/prefix"; } &&
    make -j"$JOBS" benchmarks/fi_rma_bw
  ) >"$log" 2>&1 || { note "fabtests: build failed (last lines of $log):"; tail -n 5 "$log" >&2; return 1; }
  cp "$src/fabtests/benchmarks/fi_rma_bw" "$out/bin/"
  note "fabtests: $out/bin/fi_rma_bw (libfabric $rev)"
}

what=${1:-all}
case "$what" in
  mooncake|fabtests) peers=("$what") ;;
  all) peers=(fabtests mooncake) ;;
  -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) note "unknown peer '$what' (mooncake|fabtests|all)"; exit 2 ;;
esac
ok=0
for p in "${peers[@]}"; do
  if "build_$p"; then ok=$((ok + 1)); fi
done
[ "$ok" -gt 0 ]

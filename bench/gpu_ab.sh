#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# gpu_ab.sh — two builds of ferry-bench side by side on a GPU host, for a
# regression between two commits: the cells of bench/gpu_cost.sh run for
# build A, then B, then A and B again (alternating, so a drift of the
# machine shows as a drift, not as a difference).
#
#   bench/gpu_ab.sh prepare REV DIR   here: ferry-bench of commit REV (built
#                                     in a temporary worktree) and the
#                                     shared libraries it needs, into DIR
#                                     (about 18 MiB: two fit one device call)
#   bench/gpu_ab.sh run DIR_A DIR_B   on the GPU host, from the repository
#                                     root; env as bench/gpu_cost.sh (MEMS,
#                                     BATCHES, THREADS, TGPU, SECS, CELL_ENV)
# Example (the GPU WRITE x 4 threads drop of 2026-11-30):
#   bench/gpu_ab.sh prepare 567cb55 build-a && bench/gpu_ab.sh prepare main build-b
#   (carry build-a and build-b)  TGPU=1 MEMS=cuda0 BATCHES=128 THREADS="1 4" bench/gpu_ab.sh run build-a build-b
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
case ${1:-} in
  prepare)
    [ $# -eq 3 ] || { echo "usage: $0 prepare REV DIR" >&2; exit 2; }
    rev=$2 out=$3
    wt=$(mktemp -d)
    trap 'git -C "$root" worktree remove --force "$wt" >/dev/null 2>&1 || true' EXIT
    git -C "$root" worktree add -q --detach "$wt" "$rev"
    cmake -S "$wt" -B "$wt/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$wt/build" -j"$(nproc)" --target ferry-bench >/dev/null
    rm -rf "$out"
    mkdir -p "$out/lib"
    cp "$wt/build/ferry-bench" "$out/"
    ldd "$out/ferry-bench" | awk '/=> \//{print $3}' |
      grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' | xargs -r -I{} cp -L {} "$out/lib/"
    strip --strip-debug "$out/ferry-bench" "$out"/lib/* 2>/dev/null || true
    git -C "$root" rev-parse --short "$rev" >"$out/REV"
    echo "$out: ferry-bench of $(cat "$out/REV") ($(du -sh "$out" | cut -f1))" ;;
  run)
    [ $# -eq 3 ] || { echo "usage: $0 run DIR_A DIR_B" >&2; exit 2; }
    cd "$root"
    for round in 1 2; do
      for b in "$2" "$3"; do
        echo "== round $round: $b ($(cat "$b/REV" 2>/dev/null || echo '?'))"
        BUILD=$b IDLE=0 bash bench/gpu_cost.sh
      done
    done ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# t17w_bundle.sh — the folder t17w's device calls carry: DIR/bin/ferry-bench
# (this tree's build/), DIR/main/ferry-bench (MAIN_BIN, if given), iperf3, perf,
# their shared libraries (glibc's own left out) in DIR/lib, this tree's bench/
# and a wrapper DIR/fbw that runs $FB_BIN (default DIR/bin/ferry-bench), so that a
# tcp_knobs.sh variant `FB_BIN=...` picks the binary.
#   DIR=/work/main/build-t17w [MAIN_BIN=...] bash bench/calls/t17w_bundle.sh
set -eu
DIR=${DIR:?DIR}
root=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$DIR"
mkdir -p "$DIR/bin" "$DIR/lib" "$DIR/main"
cp "$root/build/ferry-bench" "$DIR/bin/"
[ -z "${MAIN_BIN:-}" ] || cp "$MAIN_BIN" "$DIR/main/ferry-bench"
cp "$(command -v iperf3)" "$(command -v perf)" "$DIR/bin/"
strip "$DIR/bin/"* "$DIR/main/"* 2>/dev/null || true
for b in "$DIR/bin/"*; do
  ldd "$b" | awk '$3 ~ /^\// { print $3 }'
done | sort -u | grep -Ev '/(libc|libm|libresolv|libpthread|libdl|librt|ld-linux[^/]*)\.so' | while read -r l; do
  cp -L "$l" "$DIR/lib/"
done
strip --strip-unneeded "$DIR/lib/"* 2>/dev/null || true
cp -r "$root/bench" "$DIR/bench"
cat >"$DIR/fbw" <<'W'
#!/usr/bin/env bash
exec "${FB_BIN:-$FB_BIN_DEFAULT}" "$@"
W
chmod +x "$DIR/fbw"
du -sh "$DIR"

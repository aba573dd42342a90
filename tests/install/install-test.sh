#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# install-test.sh BUILD_DIR CC CMAKE — installs BUILD_DIR into a temporary
# prefix, checks what landed there (SONAME, exported symbols, package files),
# then builds consumer/consumer.c against the prefix with pkg-config and with
# find_package (shared and static) and runs each against the installed
# ferry-bench as target: the bytes written must read back the same.
set -eu
BUILD=$1 CC=$2 CMAKE=$3
HERE=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d "${TMPDIR:-/tmp}/ferry-install.XXXXXX")
TPID=
cleanup() { [ -n "$TPID" ] && kill "$TPID" 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
P=$T/prefix

"$CMAKE" --install "$BUILD" --prefix "$P" > "$T/install.log" || { cat "$T/install.log"; fail "cmake --install"; }
LIB=$(dirname "$(find "$P" -name libferry.a | head -1)")
[ -d "$LIB" ] || fail "no libferry.a under $P"
abi=$(sed -n 's/^#define FERRY_ABI_VERSION \([0-9]*\).*/\1/p' "$P/include/ferry.h")
version=$(sed -n 's/^#define FERRY_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\).*/\2/p' "$P/include/ferry.h" | paste -sd.)
for f in "$LIB/libferry.so" "$LIB/libferry.so.$abi" "$LIB/libferry.a" "$P/include/ferry.h" "$P/bin/ferry-bench" \
         "$LIB/pkgconfig/ferry.pc" "$LIB/cmake/ferry/ferryConfig.cmake" "$LIB/cmake/ferry/ferryConfigVersion.cmake"; do
  [ -e "$f" ] || fail "cmake --install left no ${f#"$P"/}"
done
soname=$(objdump -p "$LIB/libferry.so" | awk '$1 == "SONAME" {print $2}')
[ "$soname" = "libferry.so.$abi" ] || fail "SONAME is '$soname', FERRY_ABI_VERSION says libferry.so.$abi"
others=$(nm -D --defined-only "$LIB/libferry.so" | awk '$2 ~ /[TDBR]/ && $3 !~ /^ferry_/ {print $3}' | head -5)
[ -z "$others" ] || fail "libferry.so exports symbols outside ferry_*: $others"
echo "installed: libferry.so ($soname), libferry.a, ferry.h $version, ferry-bench, ferry.pc, ferryConfig.cmake"

# the target: the installed ferry-bench
"$P/bin/ferry-bench" --mode=target --local_server_name=127.0.0.1 --buffer_size=8M > "$T/target.log" 2>&1 &
TPID=$!
i=0
until grep -q "target ready" "$T/target.log"; do
  i=$((i + 1)); [ $i -lt 600 ] && kill -0 "$TPID" 2>/dev/null || { cat "$T/target.log"; fail "target did not start"; }
  sleep 0.1
done
SEG=$(sed -n 's/.*segment \([^ ]*\) .*/\1/p' "$T/target.log")

run() { # run NAME BINARY: runs the consumer, which checks the bytes
  out=$("$2" "$SEG" 2>&1) || { echo "$out"; fail "$1 consumer"; }
  echo "$1: $out"
}

# 1. pkg-config
export PKG_CONFIG_PATH="$LIB/pkgconfig"
[ "$(pkg-config --modversion ferry)" = "$version" ] || fail "pkg-config --modversion ferry: $(pkg-config --modversion ferry)"
# shellcheck disable=SC2046  # pkg-config's flags are several words
"$CC" -Wall -Wextra -Werror -o "$T/consumer_pc" "$HERE/consumer/consumer.c" $(pkg-config --cflags --libs ferry) \
  -Wl,-rpath,"$(pkg-config --variable=libdir ferry)" || fail "cc with pkg-config --cflags --libs ferry"
ldd "$T/consumer_pc" | grep -q "libferry.so.$abi => $LIB/" || { ldd "$T/consumer_pc"; fail "consumer_pc does not load $LIB/libferry.so.$abi"; }
run pkg-config "$T/consumer_pc"

# 2. find_package(ferry): ferry::ferry and ferry::ferry_static
"$CMAKE" -S "$HERE/consumer" -B "$T/consumer" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_C_COMPILER="$CC" \
  -DCMAKE_C_FLAGS="-Wall -Wextra -Werror" > "$T/consumer.log" 2>&1 &&
  "$CMAKE" --build "$T/consumer" >> "$T/consumer.log" 2>&1 || { cat "$T/consumer.log"; fail "find_package(ferry) build"; }
ldd "$T/consumer/consumer_shared" | grep -q "libferry.so.$abi => $LIB/" || fail "consumer_shared does not load $LIB/libferry.so.$abi"
! ldd "$T/consumer/consumer_static" | grep -q libferry || fail "consumer_static loads a libferry.so"
run find_package:ferry::ferry "$T/consumer/consumer_shared"
run find_package:ferry::ferry_static "$T/consumer/consumer_static"
echo "PASS"

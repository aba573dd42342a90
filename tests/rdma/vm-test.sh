#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# vm-test.sh [BUILD_DIR] — the rdma transport's tests on a real verbs stack:
# boots a Soft-RoCE VM (run-in-rxe-vm.sh) and runs guest-tests.sh in it with
# the binaries of BUILD_DIR (default build/; built without -march=native),
# which the guest sees at /run/ferry-build: any host path works.  Then
# two-nic-test.sh (two guests, two NICs each: striping and failover), unless
# FERRY_VM_TWO_NIC=0.
# Exit: 0 all passed; 77 and "SKIPPED: why" when no VM can be had here or the
# build has no rdma transport; otherwise the number of failed steps (the
# two-NIC test counts as one).
set -e
cd "$(dirname "$0")/../.."
BUILD=$(realpath "${1:-build}")
[ -x "$BUILD/tests/test_rdma" ] && [ -x "$BUILD/ferry-bench" ] ||
  { echo "SKIPPED: $BUILD has no rdma tests (libibverbs-dev missing when it was configured?)"; exit 77; }
SHARE=$(mktemp -d /tmp/ferry-rdma-vm.XXXXXX)
trap 'rm -rf "$SHARE"' EXIT
cp tests/rdma/guest-tests.sh "$SHARE/rxe-guest.sh"
echo "BUILD=/run/ferry-build" > "$SHARE/env"   # where the guest sees $BUILD
set +e
{ FERRY_VM_BUILD=$BUILD QEMU_TIMEOUT=${QEMU_TIMEOUT:-900} sh tests/rdma/run-in-rxe-vm.sh "$SHARE"; echo $? > "$SHARE/harness.rc"; } 2>&1 |
  grep --line-buffered -v -e 'SeaBIOS' -e 'Booting from ROM' -e 'reboot: Power down' | tr -d '\033' | sed 's/^c\[?7l\[2J\(\[0m\)\?//'
rc=$(cat "$SHARE/harness.rc")
[ "$rc" = 77 ] || [ "${FERRY_VM_TWO_NIC:-1}" = 0 ] && exit "$rc"
echo "== two guests, two NICs each: striping and failover (tests/rdma/two-nic-test.sh)"
sh tests/rdma/two-nic-test.sh "$BUILD"
two=$?
[ "$two" = 0 ] || [ "$two" = 77 ] || rc=$((rc + 1))
exit "$rc"

#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# run-in-rxe-vm.sh SHARE_DIR [SCRIPT]
#
# Boots Debian's stock kernel under qemu with Soft-RoCE (rdma_rxe) and runs
# SHARE_DIR/SCRIPT (default rxe-guest.sh) as root inside it, with the device
# rxe0 ready on dummy0 (10.0.0.1) — or on eth0 when FERRY_VM_NET joins the
# guest to another one.  The guest sees the host's / read-only, so host-built
# binaries run unchanged (build them without -march=native: the emulated CPU
# lacks AVX/SSE4.2).  SHARE_DIR is writable in the guest at /run/ferry-share
# (the script runs there) and is the only place the guest may write (its /tmp
# and /run are fresh tmpfs); FERRY_VM_BUILD, a host directory (the build), is
# seen read-only at /run/ferry-build.  Fixed guest paths: the host's may lie
# under /tmp or contain spaces.  One rxe device per guest: two in one guest
# connect, then hang.
#
# Exit status: the guest script's (also left in SHARE_DIR/<script>.rc); 77
# with a line "SKIPPED: why" when no VM can be had for a reason of the
# environment (not root, no qemu, no kernel package, qemu cannot boot); 124 if
# the guest ran past QEMU_TIMEOUT seconds.
#
# Environment: W (work/cache dir, default /tmp/rxe-ci), QEMU_TIMEOUT (600),
# FERRY_VM_BUILD (a host directory the guest sees at /run/ferry-build),
# FERRY_VM_ACCEL (tcg, the default, or kvm where nested KVM works),
# FERRY_VM_MEM (2G), FERRY_VM_CPUS (2), FERRY_VM_IP (10.0.0.1),
# FERRY_VM_NET (a qemu socket netdev spec, e.g.
# "udp=127.0.0.1:12346,localaddr=127.0.0.1:12345": adds a virtio NIC, eth0)
# and FERRY_VM_MAC (52:54:00:00:00:01); FERRY_VM_NET2, FERRY_VM_IP2
# (10.0.1.1) and FERRY_VM_MAC2 (52:54:00:00:01:01) add a second one, eth1,
# with its own rxe device, rxe1 (two guests joined by two links: one guest's
# two rxe devices cannot talk to each other).  Several guests may boot at once.
set -e
skip() { echo "SKIPPED: $*"; exit 77; }
[ -n "$1" ] || { echo "usage: $0 SHARE_DIR [SCRIPT]" >&2; exit 2; }
SHARE=$(realpath "$1"); SCRIPT=${2:-rxe-guest.sh}; TAG=${SCRIPT%.sh}
[ -f "$SHARE/$SCRIPT" ] || { echo "no $SHARE/$SCRIPT" >&2; exit 2; }
if [ -n "${FERRY_VM_BUILD:-}" ]; then
  BUILD_DIR=$(realpath "$FERRY_VM_BUILD"); [ -d "$BUILD_DIR" ] || { echo "no directory $FERRY_VM_BUILD" >&2; exit 2; }
fi
[ "$(id -u)" = 0 ] || skip "rdma VM tests need root (apt, qemu, 9p export of /)"
W=${W:-/tmp/rxe-ci}; mkdir -p "$W"; cd "$W"
command -v flock >/dev/null || skip "no flock (util-linux)"

# Host packages (only when missing) and the kernel: Debian's current
# linux-image-amd64, unpacked once into $W/kpkg.  Under a lock: guests that
# boot together share the cache.
export DEBIAN_FRONTEND=noninteractive
exec 9> "$W/.lock"
flock 9
need=""
for p in qemu-system-x86 busybox-static rdma-core ibverbs-utils ibverbs-providers perftest iproute2 kmod cpio; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends $need >/dev/null; } ||
    skip "cannot install$need with apt"
fi
KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$KPKG" ] || skip "apt knows no linux-image-amd64 (no Debian package lists?)"
K=${KPKG#linux-image-}
if [ ! -f "kpkg/boot/vmlinuz-$K" ]; then
  rm -rf kpkg ./*.deb
  { apt-get download "$KPKG" >/dev/null 2>&1 && dpkg -x "${KPKG}"_*.deb kpkg && depmod -b "$W/kpkg" "$K"; } ||
    skip "cannot download / unpack $KPKG"
  rm -f ./*.deb
fi
flock -u 9

# A 2 MB initramfs of this boot's own: busybox, the modules, an init that
# mounts the host and brings up the network and rxe0.
R=$(mktemp -d "$W/initrd.XXXXXX"); INITRD=$R.gz
trap 'rm -rf "$R" "$INITRD"' EXIT
mkdir -p "$R/bin" "$R/proc" "$R/sys" "$R/dev" "$R/host" "$R/mods"
cp /bin/busybox "$R/bin/"
for m in virtio_pci 9pnet_virtio 9p crc32_generic rdma_rxe dummy virtio_net; do
  modprobe -d "$W/kpkg" -S "$K" --show-depends $m
done | awk '$1=="insmod" && !s[$2]++ {print $2}' | while read -r f; do
  cp "$f" "$R/mods/"; basename "$f" >> "$R/mods/order"
done
[ -s "$R/mods/order" ] || skip "no modules found in $KPKG"
cat > "$R/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin; export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m || echo "insmod $m FAILED"; done
IP=10.0.0.1
for a in $(cat /proc/cmdline); do
  case $a in script=*) SCRIPT=${a#script=};; ip=*) IP=${a#ip=};; ip2=*) IP2=${a#ip2=};; esac
done
TAG=${SCRIPT%.sh}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro hostroot /host
mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev
mount -t tmpfs tmp /host/tmp; mount -t tmpfs run /host/run
SHARE=/run/ferry-share; mkdir -p /host$SHARE /host/run/ferry-build
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /host$SHARE
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro build /host/run/ferry-build 2>/dev/null
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then NETDEV=eth0; else ip link add dummy0 type dummy 2>/dev/null; NETDEV=dummy0; fi
ip addr add $IP/24 dev $NETDEV; ip link set $NETDEV up
chroot /host /usr/bin/rdma link add rxe0 type rxe netdev $NETDEV
if [ -e /sys/class/net/eth1 ] && [ -n "$IP2" ]; then
  ip addr add $IP2/24 dev eth1; ip link set eth1 up
  chroot /host /usr/bin/rdma link add rxe1 type rxe netdev eth1
fi
echo "guest up $(cut -d' ' -f1 /proc/uptime)s" > /host$SHARE/$TAG.started
chroot /host /usr/bin/env HOME=/tmp PATH=/usr/sbin:/usr/bin:/sbin:/bin FERRY_VM_IP=$IP FERRY_VM_IP2=$IP2 \
  /bin/sh -c "cd $SHARE && sh ./$SCRIPT"
echo $? > /host$SHARE/$TAG.rc; sync; poweroff -f
EOF
chmod +x "$R/init"; (cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$INITRD"

# TCG by default: nested KVM is often present but broken (on the machine this
# was written on it hangs at boot with the default CPU and asserts with -cpu host).
ACCEL=${FERRY_VM_ACCEL:-tcg}
NET="-nic none"
# qemu option values escape a comma by doubling it
SHARE_OPT=$(printf %s "$SHARE" | sed 's/,/,,/g')
set --
[ -n "${BUILD_DIR:-}" ] &&
  set -- -virtfs "local,path=$(printf %s "$BUILD_DIR" | sed 's/,/,,/g'),mount_tag=build,security_model=none,readonly=on,multidevs=remap"
[ -n "${FERRY_VM_NET:-}" ] &&
  NET="-netdev socket,id=n0,$FERRY_VM_NET -device virtio-net-pci,netdev=n0,mac=${FERRY_VM_MAC:-52:54:00:00:00:01}"
[ -n "${FERRY_VM_NET:-}" ] && [ -n "${FERRY_VM_NET2:-}" ] &&
  NET="$NET -netdev socket,id=n1,$FERRY_VM_NET2 -device virtio-net-pci,netdev=n1,mac=${FERRY_VM_MAC2:-52:54:00:00:01:01}"
rm -f "$SHARE/$TAG.rc" "$SHARE/$TAG.started"
echo "rxe-vm: kernel $K, accel $ACCEL, script $SCRIPT"
set +e
# shellcheck disable=SC2086  # NET is several arguments
timeout "${QEMU_TIMEOUT:-600}" qemu-system-x86_64 -accel "$ACCEL" -m "${FERRY_VM_MEM:-2G}" \
  -smp "${FERRY_VM_CPUS:-2}" -nographic -no-reboot $NET \
  -kernel "$W/kpkg/boot/vmlinuz-$K" -initrd "$INITRD" \
  -append "console=ttyS0 loglevel=3 quiet panic=-1 script=$SCRIPT ip=${FERRY_VM_IP:-10.0.0.1} ip2=${FERRY_VM_IP2:-10.0.1.1}" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$SHARE_OPT,mount_tag=share,security_model=none" "$@" </dev/null
q=$?
set -e
[ $q = 124 ] && { echo "rxe-vm: the guest ran past ${QEMU_TIMEOUT:-600} s"; exit 124; }
[ -f "$SHARE/$TAG.started" ] || skip "the VM did not boot to the guest script (qemu exit $q, accel $ACCEL)"
[ -f "$SHARE/$TAG.rc" ] || { echo "rxe-vm: the guest script started but left no exit status (qemu exit $q)"; exit 1; }
exit "$(cat "$SHARE/$TAG.rc")"

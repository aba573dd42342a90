#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# deps.sh — Debian packages that bench/peers/build.sh and bench/peers.sh need
# for the peer transports (not ferry's own: those are in scripts/deps.sh).
#
#   ucx-utils        ucx_perftest and the UCX libraries (tcp transport)
#   libfabric-dev    libfabric headers + library; fabtests (fi_rma_bw) is built
#   libfabric-bin    fi_info, to check that the tcp provider is there
#   autoconf automake libtool   fabtests' autogen.sh
#   cmake g++ libgflags-dev libgoogle-glog-dev libjsoncpp-dev libyaml-cpp-dev
#   libasio-dev libnuma-dev libibverbs-dev pybind11-dev python3-dev
#                    Mooncake's transfer engine (its RDMA code and its Python
#                    RPC helper are compiled in, not used; no CUDA)
#   iperf3 iproute2  the reference stream and `ss` to find listening ports
#
# Mooncake also needs yalantinglibs (headers; not packaged by Debian): build.sh
# takes it from a source tree, see MOONCAKE_GIT / YLT_GIT there.
# Idempotent; needs root (apt-get).  usage: bash bench/peers/deps.sh
set -euo pipefail

pkgs=(ucx-utils libfabric-dev libfabric-bin autoconf automake libtool
      cmake g++ make pkg-config libgflags-dev libgoogle-glog-dev libjsoncpp-dev
      libyaml-cpp-dev libasio-dev libnuma-dev libibverbs-dev pybind11-dev python3-dev
      iperf3 iproute2)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "bench/peers/deps.sh: all ${#pkgs[@]} packages present"
  exit 0
fi
echo "bench/peers/deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -q "${missing[@]}"

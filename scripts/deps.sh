#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs the Debian 12 packages ferry needs to build, test and benchmark.
# Idempotent: runs apt only when something is missing.
set -euo pipefail
# libssl-dev: libcrypto for peer authentication (HMAC-SHA256); libcurl/hiredis: the etcd and Redis metadata backends; the servers: their tests;
# iproute2/nftables: tests/net (namespaces, link cuts, loss, tbf); libibverbs-dev: the rdma
# transport; rdma-core..cpio: its tests in a Soft-RoCE VM (tests/rdma) and perftest for bench/rdma_vm.sh;
# python3-pip/venv: the pip install test; python3-matplotlib: bench/plot.py
pkgs=(build-essential cmake pkg-config clang libclang-rt-14-dev libcjson-dev libcmocka-dev libssl-dev iperf3 python3
      libcurl4-openssl-dev libhiredis-dev etcd-server etcd-client redis-server redis-tools
      iproute2 nftables python3-dev python3-pytest python3-numpy python3-setuptools python3-wheel
      python3-pip python3-venv python3-matplotlib
      libibverbs-dev rdma-core ibverbs-providers ibverbs-utils perftest qemu-system-x86 busybox-static kmod cpio)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# SPDX-License-Identifier: Apache-2.0
# peer_ref.py — the physical reference for GPU<->GPU on one host: one large
# peer copy (PyTorch, which enables peer access; NVLink where there is one)
# each way, repeated for a few seconds.  Prints GB/s, each byte counted once.
#
#   python3 bench/peer_ref.py [src=0] [dst=1] [MiB=256] [seconds=2]
import sys
import time

import torch


def peer_copy(src, dst, mib, secs):
    a = torch.empty(mib << 20, dtype=torch.uint8, device=f"cuda:{src}")
    b = torch.empty_like(a, device=f"cuda:{dst}")
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize(src)
    torch.cuda.synchronize(dst)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < secs:
        b.copy_(a)
        n += 1
        if n % 8 == 0:
            torch.cuda.synchronize(src)
            torch.cuda.synchronize(dst)
    torch.cuda.synchronize(src)
    torch.cuda.synchronize(dst)
    return n * (mib << 20) / (time.perf_counter() - t0) / 1e9


src, dst = (int(sys.argv[1]) if len(sys.argv) > 1 else 0), (int(sys.argv[2]) if len(sys.argv) > 2 else 1)
mib = int(sys.argv[3]) if len(sys.argv) > 3 else 256
secs = float(sys.argv[4]) if len(sys.argv) > 4 else 2
print(f"peer copy cuda:{src} -> cuda:{dst} ({mib} MiB): {peer_copy(src, dst, mib, secs):.1f} GB/s")
print(f"peer copy cuda:{dst} -> cuda:{src} ({mib} MiB): {peer_copy(dst, src, mib, secs):.1f} GB/s")

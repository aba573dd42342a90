# SPDX-License-Identifier: Apache-2.0
"""Stream-ordered transfers on a GPU: how much of sending layer N hides behind
computing layer N+1 (the prefill side of disaggregated inference).

    python3 bench/stream_overlap.py [--layers 32] [--blocks 128] [--block-kib 64] [--reps 5]

Per layer: a compute kernel on the compute stream (bf16 matrix products, then
the layer's KV blocks written), and `blocks` x `block-kib` KiB WRITEs of that
layer's blocks to a target process (host memory, over tcp) with
batch_transfer_write_on_cuda on a side stream that waits on an event of the
compute stream.  Prints compute alone, transfers alone and both together
(all wall clock, one synchronize at the end), and checks that the target
received exactly the bytes each layer's kernel wrote (the transfer started
after the kernel, not before).  Needs torch with CUDA.
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "python"), os.path.join(HERE, "..", "tests", "python")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ferry  # noqa: E402
from ferry.engine import TransferEngine  # noqa: E402
from conftest import Target  # noqa: E402
from pattern import pattern  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=128)
    ap.add_argument("--block-kib", type=int, default=64)
    ap.add_argument("--matmuls", type=int, default=16, help="bf16 products per layer (size --n)")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    block = a.block_kib * 1024
    layer_bytes = a.blocks * block
    total = a.layers * layer_bytes
    dev = torch.device("cuda:0")
    print("torch %s, %s; %d layers x %d x %d KiB = %.1f MiB per pass" %
          (torch.__version__, torch.cuda.get_device_name(0), a.layers, a.blocks, a.block_kib, total / 2**20))

    target = Target(size=total, seed=1)
    eng = TransferEngine()
    assert eng.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    kv = torch.zeros(total, dtype=torch.uint8, device=dev)
    assert eng.register_memory(kv) == 0                        # location cuda:0 from the tensor
    want = torch.from_numpy(pattern(77, 0, total)).to(dev)     # what the "kernels" write
    x = torch.randn(a.n, a.n, dtype=torch.bfloat16, device=dev)
    compute, side = torch.cuda.Stream(), torch.cuda.Stream()
    srcs = [[kv.data_ptr() + l * layer_bytes + i * block for i in range(a.blocks)] for l in range(a.layers)]
    dsts = [[target.addr + l * layer_bytes + i * block for i in range(a.blocks)] for l in range(a.layers)]
    lens = [block] * a.blocks

    def layer_compute(l):
        y = x
        for _ in range(a.matmuls):
            y = y @ x
        kv[l * layer_bytes:(l + 1) * layer_bytes].copy_(want[l * layer_bytes:(l + 1) * layer_bytes])
        return y

    def send(l, stream):
        # None, as the reference's; a refusal raises FerryError (a RuntimeError)
        assert eng.batch_transfer_write_on_cuda(target.segment, srcs[l], dsts[l], lens, stream.cuda_stream) is None

    def run(mode):
        kv.zero_()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for l in range(a.layers):
            if mode in ("compute", "both"):
                with torch.cuda.stream(compute):
                    layer_compute(l)
            if mode == "transfer":
                send(l, side)
            elif mode == "both":
                ev = torch.cuda.Event()
                ev.record(compute)
                side.wait_event(ev)
                send(l, side)
        compute.synchronize()
        side.synchronize()
        return time.perf_counter() - t0

    for mode in ("compute", "transfer", "both"):   # warm-up
        run(mode)
    res = {m: [] for m in ("compute", "transfer", "both")}
    for _ in range(a.reps):
        for m in res:
            res[m].append(run(m))
    # the last "both" pass: every layer's bytes are what its kernel wrote
    bad = target.check(0, total, 77)
    med = {m: sorted(v)[len(v) // 2] * 1e3 for m, v in res.items()}
    tc, tx, tb = med["compute"], med["transfer"], med["both"]
    print("compute alone   %8.2f ms" % tc)
    print("transfers alone %8.2f ms  (%.2f GB/s, %d stream-ordered batches)" % (tx, total / tx / 1e6, a.layers))
    print("both            %8.2f ms  (sum of the two alone %.2f ms, the longer alone %.2f ms)" %
          (tb, tc + tx, max(tc, tx)))
    print("hidden: %.0f%% of the shorter one (100%% = total equals the longer alone)" %
          (100.0 * (tc + tx - tb) / min(tc, tx)))
    print("bytes at the target after the overlapped pass: %s" % ("OK" if bad == "OK" else bad))
    print("medians of %d passes: %s" % (a.reps, {m: ["%.2f" % (t * 1e3) for t in v] for m, v in res.items()}))
    eng.close()
    target.close()
    return 0 if bad == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""python_overhead.py — what the Python binding costs, side by side with C.

Against one ferry-bench target on 127.0.0.1, in the same run:
  1. per-call time of a 4 KiB transfer_sync_write from Python (ferry.TransferEngine)
     against the same call sequence from C, two ways:
     a. in the same process, engine and connections: chunks of calls from Python
        alternate with chunks of the same sequence looped in C
        (TransferEngine._bench_sync_loop), so drift hits both alike;
     b. a separate C program (bench/c_sync_write.c, compiled here with gcc against
        libferry.a), rounds alternating with Python rounds;
  2. throughput of batches of 128 x 64 KiB WRITEs from Python
     (batch_transfer_sync_write) against ferry-bench --batch_size=128
     --block_size=64K, also alternating.
Prints a markdown table (median of the rounds, min-max in brackets).

usage: /usr/bin/python3 bench/python_overhead.py [--quick] [--iterations N] [--rounds R] [--duration S]
env:   FERRY_BUILD_DIR (build): libferry.a and ferry-bench; the ferry package is taken
       from python/ (in-place build, python/build.sh) or else from the installed one.
"""
import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "python"))
import ferry  # noqa: E402

KIB = 1024


def build_dir():
    d = os.environ.get("FERRY_BUILD_DIR", "build")
    return d if os.path.isabs(d) else os.path.join(ROOT, d)


def link_dependencies(bdir):
    """The libraries CMake linked libferry.so with (cjson, curl, hiredis, ...)."""
    deps = []
    link_txt = os.path.join(bdir, "CMakeFiles", "ferry.dir", "link.txt")
    if os.path.isfile(link_txt):
        with open(link_txt) as f:
            for tok in shlex.split(f.read()):
                if tok.startswith("-l") or (tok.startswith("/") and (".so" in os.path.basename(tok))):
                    deps.append(tok)
    return deps + ["-lcjson", "-lpthread", "-ldl", "-lm"]


def compile_c_bench(bdir, out_dir):
    exe = os.path.join(out_dir, "c_sync_write")
    cmd = ["gcc", "-O2", "-std=gnu11", "-I", os.path.join(ROOT, "include"), os.path.join(HERE, "c_sync_write.c"),
           os.path.join(bdir, "libferry.a"), "-o", exe] + link_dependencies(bdir)
    subprocess.run(cmd, check=True)
    return exe


class BenchTarget:
    def __init__(self, ferry_bench, size):
        self.proc = subprocess.Popen([ferry_bench, "--mode=target", "--local_server_name=127.0.0.1",
                                      "--buffer_size=%d" % size], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.match(r"ferry-bench target ready: segment (\S+) buffer (0x[0-9a-fA-F]+) size (\d+)", line)
        if not m:
            self.proc.kill()
            sys.exit("ferry-bench target did not start: %r" % line)
        self.segment, self.addr, self.size = m.group(1), int(m.group(2), 16), int(m.group(3))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def c_per_call(exe, target, iterations):
    out = subprocess.run([exe, target.segment, str(target.addr), str(iterations), "4096"],
                         check=True, capture_output=True, text=True).stdout
    d = json.loads(out)
    return d["ns_per_call"], d["cpu_ns_per_call"]


def py_per_call(engine, target, local, iterations, as_object=False):
    f = engine.transfer_sync_write
    seg, peer = target.segment, target.addr
    buf = local if as_object else local.ctypes.data
    for _ in range(max(100, iterations // 10)):  # warm-up, as the C loop does
        if f(seg, buf, peer, 4096):
            raise RuntimeError(ferry.last_error())
    t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
    for _ in range(iterations):
        if f(seg, buf, peer, 4096):
            raise RuntimeError(ferry.last_error())
    return (time.perf_counter_ns() - t0) / iterations, (time.thread_time_ns() - c0) / iterations


def same_engine(engine, target, local, chunks, chunk):
    """Alternating chunks: C loop (in the extension) then Python loop, same engine.
    Returns per-chunk (wall, cpu) ns/call lists for C and for Python."""
    f = engine.transfer_sync_write
    seg, addr, peer = target.segment, local.ctypes.data, target.addr
    c, p = [], []
    engine._bench_sync_loop(seg, addr, peer, 4096, chunk)  # warm-up
    for _ in range(chunks):
        wall, cpu = engine._bench_sync_loop(seg, addr, peer, 4096, chunk)
        c.append((wall / chunk, cpu / chunk))
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        for _ in range(chunk):
            if f(seg, addr, peer, 4096):
                raise RuntimeError(ferry.last_error())
        p.append(((time.perf_counter_ns() - t0) / chunk, (time.thread_time_ns() - c0) / chunk))
    return c, p


def py_call_floor(engine, iterations):
    """A trivial method call of the same extension: the interpreter's share."""
    f = engine.get_rpc_port
    t0 = time.perf_counter_ns()
    for _ in range(iterations):
        f()
    return (time.perf_counter_ns() - t0) / iterations


def py_batch(engine, target, local, duration, batch=128, block=64 * KIB):
    seg = target.segment
    bufs = [local.ctypes.data + i * block for i in range(batch)]
    peers = [target.addr + i * block for i in range(batch)]
    lengths = [block] * batch
    f = engine.batch_transfer_sync_write
    if f(seg, bufs, peers, lengths):
        raise RuntimeError(ferry.last_error())
    n, t0 = 0, time.perf_counter()
    end = t0 + duration
    while True:
        if f(seg, bufs, peers, lengths):
            raise RuntimeError(ferry.last_error())
        n += 1
        now = time.perf_counter()
        if now >= end:
            break
    secs = now - t0
    return n * batch * block / secs / 1e9, secs / n * 1e6


def ferry_bench_batch(ferry_bench, target, duration, batch=128, block=64 * KIB):
    out = subprocess.run([ferry_bench, "--mode=initiator", "--segment_id=" + target.segment, "--operation=write",
                          "--block_size=%d" % block, "--batch_size=%d" % batch, "--buffer_size=%d" % (batch * block),
                          "--duration=%d" % duration, "--json", "--verify=false"],
                         check=True, capture_output=True, text=True).stdout
    d = json.loads(out.strip().splitlines()[-1])
    return d["gb_per_s"], d["seconds"] / d["batches"] * 1e6


def fmt(values, unit_format="%.0f"):
    med = statistics.median(values)
    return ("%s [%s-%s]" % (unit_format, unit_format, unit_format)) % (med, min(values), max(values))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=20000, help="sync calls per round (20000)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    ap.add_argument("--duration", type=int, default=3, help="seconds per batch round (3)")
    ap.add_argument("--quick", action="store_true", help="2000 iterations, 2 rounds, 1 s")
    a = ap.parse_args()
    if a.quick:
        a.iterations, a.rounds, a.duration = 2000, 2, 1
    bdir = build_dir()
    ferry_bench = os.path.join(bdir, "ferry-bench")
    for p in (ferry_bench, os.path.join(bdir, "libferry.a")):
        if not os.path.exists(p):
            sys.exit("python_overhead.py: %s is missing (cmake --build %s --target ferry-bench ferry_static)"
                     % (p, bdir))
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_c_bench(bdir, tmp)
        target = BenchTarget(ferry_bench, 64 << 20)
        engine = ferry.TransferEngine()
        try:
            if engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
                sys.exit("initialize failed: %s" % (ferry.last_error(),))
            local = np.zeros(128 * 64 * KIB, dtype=np.uint8)
            engine.register_memory(local)
            small = local[:4096]
            c_ns, py_ns, py_obj_ns = [], [], []   # (wall, calling-thread CPU) per call
            for _ in range(a.rounds):
                c_ns.append(c_per_call(exe, target, a.iterations))
                py_ns.append(py_per_call(engine, target, local, a.iterations))
                py_obj_ns.append(py_per_call(engine, target, small, a.iterations, as_object=True))
            chunks = max(10, a.rounds * 8)
            same_c, same_py = same_engine(engine, target, local, chunks, max(200, a.iterations // 20))
            floor = py_call_floor(engine, 200000)
            py_gbs, py_us, fb_gbs, fb_us = [], [], [], []
            for _ in range(a.rounds):
                g, u = py_batch(engine, target, local, a.duration)
                py_gbs.append(g), py_us.append(u)
                g, u = ferry_bench_batch(ferry_bench, target, a.duration)
                fb_gbs.append(g), fb_us.append(u)
        finally:
            engine.close()
            target.stop()

    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    print("## Python binding overhead (bench/python_overhead.py)")
    print()
    print("- date: %s; kernel %s; %d cpus: %s" % (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                                 os.uname().release, os.cpu_count(), cpu))
    print("- python %s; ferry %s; target: ferry-bench on 127.0.0.1 (tcp); %d rounds, alternating"
          % (sys.version.split()[0], ferry.__version__, a.rounds))
    print("- per-call: %d sync calls per round (chunks: %d calls); batch: %d s per round"
          % (a.iterations, max(200, a.iterations // 20), a.duration))
    print("- cells: median of the rounds [min-max]; 'CPU' is the calling thread's CPU time per call")
    print("  (what the binding adds, free of the network round trip's noise)")
    print()
    print("| measurement | C | Python | Python - C | Python / C |")
    print("|---|---|---|---|---|")

    def row(label, c_list, py_list, k, what):
        c = [x[k] / 1e3 for x in c_list]
        p = [x[k] / 1e3 for x in py_list]
        print("| %s, %s us/call | %s | %s | %s | %.2f |"
              % (label, what, fmt(c, "%.1f"), fmt(p, "%.1f"), fmt([pp - cc for pp, cc in zip(p, c)], "%.2f"),
                 statistics.median(p) / statistics.median(c)))
    same = "4 KiB sync WRITE, same engine, %d alternating chunks" % len(same_c)
    row(same, same_c, same_py, 0, "wall")
    row(same, same_c, same_py, 1, "CPU")
    for label, py in (("4 KiB sync WRITE, C program vs Python (int address)", py_ns),
                      ("4 KiB sync WRITE, C program vs Python (numpy buffer object)", py_obj_ns)):
        for k, what in ((0, "wall"), (1, "CPU")):
            row(label, c_ns, py, k, what)
    print("| 128 x 64 KiB batch WRITE, GB/s (C = ferry-bench) | %s | %s | | %.2f |"
          % (fmt(fb_gbs, "%.3f"), fmt(py_gbs, "%.3f"), statistics.median(py_gbs) / statistics.median(fb_gbs)))
    print("| 128 x 64 KiB batch WRITE, us/batch | %s | %s | %s | |"
          % (fmt(fb_us, "%.0f"), fmt(py_us, "%.0f"),
             "%.0f" % (statistics.median(py_us) - statistics.median(fb_us))))
    print()
    print("Interpreter floor (a no-op method of the same extension): %.0f ns/call." % floor)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""plot.py — bandwidth-vs-block-size pictures from the benchmarks' JSON.

Reads docs/plots/data.json (the figures recorded in docs/BENCHMARKS.md, with
command and machine per series) and writes docs/plots/tcp_loopback.png,
staging.png and shm.png.  A fresh TCP run replaces the recorded one:

    JSON=/tmp/tcp.jsonl bench/tcp_loopback.sh && bench/plot.py --tcp /tmp/tcp.jsonl

Uses Debian's python3-matplotlib (scripts/deps.sh); the PNGs carry no date, so
the same data gives the same files.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def block_bytes(text):
    text = str(text)
    return int(text[:-1]) * UNITS[text[-1]] if text[-1] in UNITS else int(text)


def number(v):
    """A figure, or None for cells like 'n/a' or 'FAIL(exit 1)'."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def block_axis(ax, blocks):
    ax.set_xscale("log", base=2)
    xs = sorted({block_bytes(b) for b in blocks})
    ax.set_xticks(xs)
    ax.set_xticklabels([b for _, b in sorted({(block_bytes(b), b) for b in blocks})])
    ax.set_xlabel("block size")
    ax.grid(True, which="major", alpha=0.3)


def footer(fig, series):
    fig.text(0.01, 0.01, "%s — %s" % (series["command"], series["machine"]), fontsize=7, color="0.35")


def save(fig, out_dir, name):
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    print("wrote", os.path.relpath(path))


def plot_tcp(series, out_dir):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, op in zip(axes, ("write", "read")):
        rows = [r for r in series["rows"] if r["op"] == op]
        rows.sort(key=lambda r: block_bytes(r["block"]))
        pts = [(block_bytes(r["block"]), number(r["ferry_gb_s"]), number(r["iperf3_gb_s"])) for r in rows]
        ax.plot([p[0] for p in pts if p[1] is not None], [p[1] for p in pts if p[1] is not None],
                "o-", label="ferry %s (batch %s)" % (op.upper(), rows[0]["batch"] if rows else "?"))
        ax.plot([p[0] for p in pts if p[2] is not None], [p[2] for p in pts if p[2] is not None],
                "s--", color="0.45", label="iperf3, 1 stream (same run)")
        block_axis(ax, [r["block"] for r in rows])
        ax.set_title(op.upper())
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("GB/s (1e9 bytes)")
    axes[0].set_ylim(bottom=0)
    fig.suptitle(series["title"])
    footer(fig, series)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save(fig, out_dir, "tcp_loopback.png")


def plot_staging(series, out_dir):
    rows = sorted(series["rows"], key=lambda r: block_bytes(r["block"]))
    xs = [block_bytes(r["block"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (ours, ref, name) in zip(axes, (("gather_d2h_gb_s", "large_d2h_gb_s", "device to host (WRITE)"),
                                            ("scatter_h2d_gb_s", "large_h2d_gb_s", "host to device (READ)"))):
        ax.plot(xs, [r[ours] for r in rows], "o-", label="staging pipeline, 128 blocks per batch")
        ax.plot(xs, [r[ref] for r in rows], "s--", color="0.45", label="one large pinned copy (same run)")
        for x, r in zip(xs, rows):
            ax.annotate("%.2f" % (r[ours] / r[ref]), (x, r[ours]), textcoords="offset points", xytext=(0, -14),
                        ha="center", fontsize=8)
        block_axis(ax, [r["block"] for r in rows])
        ax.set_title(name)
        ax.legend(loc="lower right", fontsize=8)
    axes[0].set_ylabel("GB/s")
    axes[0].set_ylim(0, 60)
    fig.suptitle(series["title"])
    footer(fig, series)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save(fig, out_dir, "staging.png")


def plot_shm(series, out_dir):
    rows = series["rows"]
    paths = list(dict.fromkeys(r["path"] for r in rows))
    cells = list(dict.fromkeys((r["op"], r["block"]) for r in rows))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(paths)
    for i, path in enumerate(paths):
        vals = {(r["op"], r["block"]): r["gb_s"] for r in rows if r["path"] == path}
        xs = [c + (i - (len(paths) - 1) / 2) * width for c in range(len(cells))]
        ys = [vals.get(cell, 0) for cell in cells]
        bars = ax.bar(xs, ys, width, label=path)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    for k, (name, v) in enumerate(sorted(series["references_gb_s"].items(), key=lambda kv: -kv[1])):
        ax.axhline(v, color="0.5", linestyle=":", linewidth=1)
        right = k % 2 == 0   # alternate sides: close references do not overprint
        ax.text(len(cells) - 0.55 if right else -0.45, v, " %s %g " % (name, v), fontsize=7, va="bottom",
                ha="right" if right else "left", color="0.3")
    ax.set_yscale("log")
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels(["%s %s" % (op.upper(), block) for op, block in cells])
    ax.set_ylabel("GB/s (log scale)")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(series["title"])
    footer(fig, series)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save(fig, out_dir, "shm.png")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.path.join(ROOT, "docs", "plots", "data.json"),
                   help="recorded figures (default docs/plots/data.json)")
    p.add_argument("--tcp", help="JSON lines from JSON=FILE bench/tcp_loopback.sh, replacing the recorded TCP rows")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "plots"), help="where the PNGs go")
    args = p.parse_args(argv)
    with open(args.data) as f:
        data = json.load(f)
    if args.tcp:
        with open(args.tcp) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if not rows:
            sys.exit("plot.py: %s has no rows" % args.tcp)
        data["tcp_loopback"].update(rows=rows, command="JSON=%s bench/tcp_loopback.sh" % args.tcp,
                                    machine="this machine (%s)" % os.uname().nodename)
    os.makedirs(args.out, exist_ok=True)
    plot_tcp(data["tcp_loopback"], args.out)
    plot_staging(data["staging"], args.out)
    plot_shm(data["shm"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

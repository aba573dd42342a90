#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""trace_batches.py — where a batch's time goes, from FERRY_TRACE files.

Run a one-thread ferry-bench pair with FERRY_TRACE=/tmp/t.%d on both sides,
then:  bench/trace_batches.py /tmp/t.*
Each batch is the window from a batch_submit to the batch_woken after it on
the same thread.  For every event of any thread or process inside a window
it takes the first and the last time it happened (µs after batch_submit),
and prints the median of each over all batches but the first few (warm-up),
sorted by time: a timeline of the typical batch.

Then, per thread, the spans between paired events (a sender's tcp_send to
its tcp_sent: one frame's write; a target thread's srv_frame to
srv_payload: its payload's receive; srv_answered to its next srv_frame: the
wait for the next header; copy_begin to copy_queued: a copy launch;
copy_wait to copy_synced: a wait for copies), p50 / p90 / count over the
batches kept: where a frame's time goes on each side.
"""
import statistics
import sys
from collections import defaultdict

SKIP = 20  # warm-up batches left out


def load(paths):
    recs = []
    for p in paths:
        with open(p) as f:
            for line in f:
                if line.startswith('#'):
                    continue
                ns, tid, ev, arg = line.split()
                recs.append((int(ns), int(tid), ev, int(arg), p))
    recs.sort()
    return recs


def main():
    recs = load(sys.argv[1:])
    windows = []
    open_at = {}
    for ns, tid, ev, arg, p in recs:
        if ev == 'batch_submit':
            open_at[tid] = ns
        elif ev == 'batch_woken' and tid in open_at:
            windows.append((open_at.pop(tid), ns))
    windows = windows[SKIP:] if len(windows) > 2 * SKIP else windows
    if not windows:
        sys.exit('no complete batch (batch_submit ... batch_woken) in the trace')
    first = defaultdict(list)
    last = defaultdict(list)
    count = defaultdict(list)
    j = 0
    for start, end in windows:
        seen = {}
        while j < len(recs) and recs[j][0] < start:
            j += 1
        k = j
        while k < len(recs) and recs[k][0] <= end:
            ns, tid, ev, arg, p = recs[k]
            us = (ns - start) / 1e3
            if ev not in seen:
                seen[ev] = [us, us, 0]
            seen[ev][1] = us
            seen[ev][2] += 1
            k += 1
        for ev, (a, b, n) in seen.items():
            first[ev].append(a)
            last[ev].append(b)
            count[ev].append(n)
    durs = [(e - s) / 1e3 for s, e in windows]
    print(f'{len(windows)} batches; batch time p50 {statistics.median(durs):.1f} us, '
          f'p99 {sorted(durs)[int(len(durs) * 0.99) - 1]:.1f} us')
    print(f'{"event":18} {"per batch":>9} {"first p50 us":>13} {"last p50 us":>12}')
    rows = sorted(first, key=lambda ev: statistics.median(first[ev]))
    for ev in rows:
        print(f'{ev:18} {statistics.median(count[ev]):9.0f} {statistics.median(first[ev]):13.1f} '
              f'{statistics.median(last[ev]):12.1f}')
    print_spans(recs, windows)


# (name, start event, end event): spans on one thread, end after start with
# no other start between them; or (FIFO_SPANS) in one process, the k-th end
# with the k-th start (a staging pool retires its groups in issue order)
FIFO_SPANS = [('gather issue -> retired (pool)', 'stage_issue', 'stage_retired')]
SPANS = [
    ('frame write (sender)', 'tcp_send', 'tcp_sent'),
    ('header -> payload (target)', 'srv_frame', 'srv_payload'),
    ('payload -> copies done (target)', 'srv_payload', 'srv_copy'),
    ('answered -> next header (target)', 'srv_answered', 'srv_frame'),
    ('copy launch', 'copy_begin', 'copy_queued'),
    ('copy wait', 'copy_wait', 'copy_synced'),
]


def spans(recs, windows):
    """Per-thread spans inside the kept batches' windows, by SPANS name."""
    lo, hi = windows[0][0], windows[-1][1]
    out = defaultdict(list)
    open_at = {}
    fifo = defaultdict(list)
    for ns, tid, ev, arg, p in recs:
        if ns < lo or ns > hi:
            continue
        for name, a, b in SPANS:
            if ev == b and (name, tid) in open_at:
                out[name].append((ns - open_at.pop((name, tid))) / 1e3)
            if ev == a:
                open_at[(name, tid)] = ns
        for name, a, b in FIFO_SPANS:
            if ev == b and fifo[(name, p)]:
                out[name].append((ns - fifo[(name, p)].pop(0)) / 1e3)
            if ev == a:
                fifo[(name, p)].append(ns)
    return out


def print_spans(recs, windows):
    got = spans(recs, windows)
    print(f'{"span (one thread)":34} {"p50 us":>8} {"p90 us":>8} {"count":>7}')
    for name, a, b in SPANS + FIFO_SPANS:
        v = sorted(got.get(name, []))
        if v:
            print(f'{name:34} {statistics.median(v):8.1f} {v[int(len(v) * 0.9)]:8.1f} {len(v):7d}')


if __name__ == '__main__':
    main()

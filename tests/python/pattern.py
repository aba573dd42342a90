# SPDX-License-Identifier: Apache-2.0
"""Position-dependent byte pattern shared by the tests and target.py: the byte at
absolute offset p of a buffer filled with seed s depends on both, so a block that
lands at the wrong offset, or stale data from another seed, is visible."""
import numpy as np


def pattern(seed, offset, length):
    p = np.arange(offset, offset + length, dtype=np.uint32)  # offsets < 4 GiB; arithmetic wraps mod 2**32
    p *= np.uint32(0x9E3779B1)
    p += np.uint32((seed * 0x85EBCA6B) & 0xFFFFFFFF)
    p >>= np.uint32(11)
    return p.astype(np.uint8)


def first_mismatch(buf, seed, offset):
    """-1 if buf holds pattern(seed, offset, len(buf)), else the first bad index."""
    bad = np.flatnonzero(np.asarray(buf, dtype=np.uint8) != pattern(seed, offset, len(buf)))
    return int(bad[0]) if bad.size else -1

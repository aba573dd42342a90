/* SPDX-License-Identifier: Apache-2.0 */
/*
 * aggregate.c — gathering small device blocks in a device buffer before one
 * D2H (WRITE), scattering after one H2D (READ); see aggregate.h.
 *
 * The reference engine measured on 910B that one D2H per 64 KiB block
 * underuses PCIe, and that D2D copies into 8 MiB HBM buffers plus one D2H
 * each cut latency by 30% and raised bandwidth by 60%.  On CUDA one gather
 * kernel does better, so there it is only on when asked.  No state of its
 * own beyond the policy; called by the staging worker thread.
 */
#include "staging/aggregate.h"

#include <stdlib.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "err.h"
#include "transport/transport.h"

/* Digits with an optional K or M; no sign, no space, no overflow. */
static int parse_size(const char *text, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (text[0] < '0' || text[0] > '9' || errno)
        return -1;
    unsigned shift = *end == 'K' || *end == 'k' ? 10 : *end == 'M' || *end == 'm' ? 20 : 0;
    end += shift != 0;
    if (*end != '\0' || v > (SIZE_MAX >> shift))
        return -1;
    *out = (size_t)v << shift;
    return 0;
}

/* name's value into *below, where it is set and not "auto". */
static int threshold_read(const char *name, size_t *below)
{
    const char *mode = getenv(name);
    if (mode && *mode && strcmp(mode, "auto") != 0 && parse_size(mode, below) < 0)
        return ferry_fail(FERRY_EINVAL, "%s=\"%.32s\": auto, 0 (off) or a block size such as 2M", name, mode);
    return 0;
}

int aggregate_policy_read(const struct ferry_device_ops *ops, unsigned nchunks, struct aggregate_policy *out)
{
    const char *bufs = getenv("FERRY_STAGING_AGGREGATE_BUFFERS");
    out->below = ops->aggregate_below ? ops->aggregate_below() : 0;
    if (threshold_read("FERRY_STAGING_AGGREGATE", &out->below) < 0)
        return FERRY_EINVAL;
    /* READ: the scatter may fare otherwise than the gather (CUDA: the SMs
     * read host memory over PCIe more slowly than they write it) */
    out->below_read = out->below;
    if (threshold_read("FERRY_STAGING_AGGREGATE_READ", &out->below_read) < 0)
        return FERRY_EINVAL;
    out->buffers = nchunks;
    if (bufs && *bufs && strcmp(bufs, "all") != 0) {
        size_t v;
        if (parse_size(bufs, &v) < 0 || v > nchunks)
            return ferry_fail(FERRY_EINVAL, "FERRY_STAGING_AGGREGATE_BUFFERS=\"%.32s\": a number 0..%u (chunks)",
                              bufs, nchunks);
        out->buffers = (unsigned)v;
    }
    if (out->buffers == 0)
        out->below = out->below_read = 0;
    return 0;
}

int aggregate_wanted(const struct aggregate_policy *p, bool read, uint32_t npieces, uint64_t bytes)
{
    size_t below = read ? p->below_read : p->below;
    return below > 0 && npieces > 1 && bytes / npieces < below;
}

bool aggregate_any(const struct aggregate_policy *p)
{
    return (p->below > 0 || p->below_read > 0) && p->buffers > 0;
}

int aggregate_enqueue(const struct ferry_device_ops *ops, ferry_stream *s, enum ferry_copy_dir dir, char *host,
                      char *devbuf, void *const *dev, const size_t *off, const size_t *len, uint32_t n,
                      uint64_t skip)
{
    struct ferry_copy d2d[XFER_MAX_PIECES];
    size_t k = 0, end = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (off[i] + len[i] > end)
            end = off[i] + len[i];
        if (skip >> i & 1)
            continue;
        d2d[k++] = dir == FERRY_COPY_D2H ? (struct ferry_copy){devbuf + off[i], dev[i], len[i]}
                                         : (struct ferry_copy){dev[i], devbuf + off[i], len[i]};
    }
    struct ferry_copy whole = dir == FERRY_COPY_D2H ? (struct ferry_copy){host, devbuf, end}
                                                    : (struct ferry_copy){devbuf, host, end};
    int rc;
    if (dir == FERRY_COPY_D2H) {
        rc = ops->copy_async(s, FERRY_COPY_D2D, d2d, k);
        if (rc == 0)
            rc = ops->copy_async(s, FERRY_COPY_D2H, &whole, 1);
    } else {
        rc = ops->copy_async(s, FERRY_COPY_H2D, &whole, 1);
        if (rc == 0)
            rc = ops->copy_async(s, FERRY_COPY_D2D, d2d, k);
    }
    return rc;
}

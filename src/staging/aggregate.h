/* SPDX-License-Identifier: Apache-2.0 */
/*
 * aggregate.h — gathering a frame's small device blocks on the device
 * (staging.c's helper for devices without a gather kernel).
 *
 * WRITE: D2D copies of the blocks into a device buffer, packed as in the
 *        chunk, then one D2H of the packed range into the pinned chunk.
 * READ:  one H2D of the packed range into the device buffer, then D2D
 *        copies scattering it to the blocks.
 * Both go on the chunk's own stream, so a chunk's D2D and D2H stay in
 * order without a host wait, while the D2D of one chunk overlaps the D2H of
 * another on its stream.  A device buffer is the size of a chunk; each
 * chunk up to FERRY_STAGING_AGGREGATE_BUFFERS owns one.
 */
#ifndef FERRY_STAGING_AGGREGATE_H
#define FERRY_STAGING_AGGREGATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "device/device.h"

struct aggregate_policy {
    size_t below;        /* WRITE frames whose blocks average under this many bytes; 0: off */
    size_t below_read;   /* READ frames likewise (FERRY_STAGING_AGGREGATE_READ); 0: off */
    unsigned buffers;    /* chunks that get a device buffer */
};

/* Reads FERRY_STAGING_AGGREGATE, FERRY_STAGING_AGGREGATE_READ (auto: as
 * FERRY_STAGING_AGGREGATE) and FERRY_STAGING_AGGREGATE_BUFFERS against the
 * device's default (ops->aggregate_below).  0 or FERRY_EINVAL naming the
 * variable. */
int aggregate_policy_read(const struct ferry_device_ops *ops, unsigned nchunks, struct aggregate_policy *out);

/* Whether a frame (a READ's if read) of npieces pieces and bytes bytes goes
 * through the device buffer. */
int aggregate_wanted(const struct aggregate_policy *p, bool read, uint32_t npieces, uint64_t bytes);

/* Whether any frame may (chunks then get device buffers). */
bool aggregate_any(const struct aggregate_policy *p);

/* Enqueues the copies of one frame on stream s: dev[i] are its device
 * blocks, off[i] their offsets in the chunk (host) and the device buffer
 * (devbuf), len[i] their lengths; blocks with skip bit i set are left out
 * of a READ's scatter.  dir is the direction of the whole: FERRY_COPY_D2H
 * (WRITE) or FERRY_COPY_H2D (READ).  0 or the device's error. */
int aggregate_enqueue(const struct ferry_device_ops *ops, ferry_stream *s, enum ferry_copy_dir dir, char *host,
                      char *devbuf, void *const *dev, const size_t *off, const size_t *len, uint32_t n,
                      uint64_t skip);

#endif

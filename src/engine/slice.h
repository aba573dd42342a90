/* SPDX-License-Identifier: Apache-2.0 */
/*
 * slice.h — cutting a batch of requests into transport frames.
 *
 * A request larger than slice_size becomes several frames of at most
 * slice_size bytes (spread over connections / NICs by the transport); small
 * requests to the same segment, route and opcode are coalesced into one
 * frame of up to coalesce_max pieces and about slice_size bytes; or, when
 * the requests ask for a spread of k (the transport can move k frames at
 * once), into about k frames of a group's small bytes / k each, so that a
 * submit of small blocks is not one frame on one connection.  Pure
 * function: no locks, no I/O (unit-tested in tests/unit/test_slice.c).
 */
#ifndef FERRY_SLICE_H
#define FERRY_SLICE_H

#include "transport/transport.h"

struct slice_req {
    int opcode;
    uint64_t segment;
    int route;               /* the engine's transport index; part of the grouping key */
    char *local;
    uint64_t remote;
    uint64_t len;
    uint32_t index;          /* stored in each piece's `request` */
    unsigned spread;         /* 0/1: coalesce up to slice_size; k > 1: its group's small pieces
                              * over about k frames (each >= SLICE_SPREAD_MIN bytes) */
};

/* The smallest coalesced frame a spread group is cut into: below it, one
 * more frame costs more (a wake-up, a header, an ack) than it saves. */
#define SLICE_SPREAD_MIN ((uint64_t)64 << 10)

struct slice_plan {
    struct xfer_frame *frames;
    size_t nframes;
    struct xfer_piece *pieces;
    size_t npieces;
};

/* Plans frames for n requests (lengths > 0).  Frames are grouped by
 * (segment, route, opcode); each frame's pieces are contiguous in plan->pieces and in
 * request order.  One allocation; free with slice_plan_free.  0 or FERRY_ENOMEM. */
int slice_plan_make(const struct slice_req *reqs, size_t n, uint64_t slice_size, unsigned coalesce_max,
                    struct slice_plan *plan);
void slice_plan_free(struct slice_plan *plan);

#endif

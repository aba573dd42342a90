/* SPDX-License-Identifier: Apache-2.0 */
/*
 * xfer_pair.h — the set-up the multi-process transfer tests share
 * (test_transfer, test_faults, test_conformance, test_shm, test_staging): a
 * target engine in a child process (testutil's child_target) and an
 * initiator engine here with len bytes of local memory registered and the
 * target's segment open.  The caller owns the struct; xfer_pair_stop undoes
 * all of it.  Either call asserts (cmocka) at each step.
 */
#ifndef FERRY_TEST_XFER_PAIR_H
#define FERRY_TEST_XFER_PAIR_H

#include <stddef.h>
#include <stdint.h>

#include "ferry.h"
#include "testutil.h"

struct xfer_pair {
    struct child_target target;
    ferry_engine *e;
    ferry_segment_t seg;
    const char *loc;     /* local memory location */
    char *local;         /* len bytes of loc memory, registered with e */
    char *host;          /* len bytes of host scratch for filling / checking */
    size_t len;
};

/* Starts the target (len bytes of target_loc memory holding pattern(seed, 0);
 * its config comes from FERRY_* variables at this moment), then the engine
 * from cfg (NULL: the defaults), the local memory and the segment. */
void xfer_pair_start(struct xfer_pair *p, size_t len, const char *target_loc, uint64_t seed,
                     const struct ferry_config *cfg, const char *local_loc);
/* xfer_pair_start in its two steps, for a caller that changes the
 * environment between them (a variable meant for the target alone). */
void xfer_pair_start_target(struct xfer_pair *p, size_t len, const char *target_loc, uint64_t seed);
void xfer_pair_open(struct xfer_pair *p, const struct ferry_config *cfg, const char *local_loc);
/* Frees the local memory, destroys the engine, kills the target. */
void xfer_pair_stop(struct xfer_pair *p);
/* A cmocka teardown for a fixture that is a calloc'd struct xfer_pair:
 * xfer_pair_stop, then free. */
int xfer_pair_teardown(void **state);

/* One batch's blocks: n blocks of bs bytes, block i at offset base + i*stride
 * of both the local memory and the target's buffer. */
struct xfer_blocks {
    size_t bs, n;
    uint64_t base, stride;
};
/* Moves k's blocks with one batch of op (FERRY_WRITE / FERRY_READ) and waits
 * up to timeout_ms.  A WRITE sends pattern(seed, off), filled through the host
 * scratch with ferry_mem_copy (so the local memory may be a device's); a READ
 * zeroes its blocks first and expects pattern(seed, off) from the target.
 * When the batch succeeded, asserts that the receiving side holds that
 * pattern.  Returns the submit's or the wait's result. */
int xfer_pair_move(struct xfer_pair *p, int op, struct xfer_blocks k, uint64_t seed, int timeout_ms);
/* xfer_pair_move that must succeed: else fails the test, naming the batch. */
void xfer_pair_move_ok(struct xfer_pair *p, int op, struct xfer_blocks k, uint64_t seed, int timeout_ms);

/* Asserts that each of b's first n requests ended COMPLETED with bs bytes
 * moved. */
void xfer_assert_all_completed(ferry_batch *b, size_t n, size_t bs);

#endif

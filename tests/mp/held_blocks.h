/* SPDX-License-Identifier: Apache-2.0 */
/*
 * held_blocks.h — what the shm hung-job tests share (test_shm_job_hang,
 * test_shm_lane_mark): a WRITE of NREQ blocks of BLOCK bytes from local sim
 * memory, whose copy job the sim may hold back (sim_hw.hold_job), and the
 * check that every request of a batch ended one way.  Include after cmocka,
 * sim_internal.h and xfer_pair.h.
 */
#ifndef FERRY_TEST_HELD_BLOCKS_H
#define FERRY_TEST_HELD_BLOCKS_H

#include <stdbool.h>
#include <string.h>

#define TSIZE ((size_t)1 << 20)
#define BLOCK ((size_t)64 << 10)
#define NREQ 4u
#define TSEED 5
#define GUARD_MS 60000 /* a hang guard only */

/* NREQ blocks of pattern(seed) written from local base to target base; the
 * batch, waited for (up to GUARD_MS).  hold: the WRITE's copy job (the next
 * one) is held back until released through sim_hw. */
static inline ferry_batch *held_blocks_write(struct xfer_pair *x, uint64_t base, uint64_t seed, bool hold)
{
    struct ferry_request r[NREQ];
    for (unsigned i = 0; i < NREQ; i++) {
        uint64_t off = base + i * BLOCK;
        r[i] = (struct ferry_request){FERRY_WRITE, x->local + off, x->seg, x->target.addr + off, BLOCK};
    }
    pattern_fill(x->host, NREQ * BLOCK, seed, base);
    assert_int_equal(ferry_mem_copy(x->e, x->local + base, x->host, NREQ * BLOCK), 0);
    if (hold)
        sim_hw.hold_job = atomic_load(&sim_hw.jobs) + 1;
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(x->e, NREQ, &b), 0);
    int rc = ferry_batch_submit(b, r, NREQ);
    if (rc)
        fail_msg("submit: %s: %s", ferry_err_name(rc), ferry_last_error());
    (void)ferry_batch_wait(b, GUARD_MS);
    return b;
}

/* Every request of b in state with code, its message holding each of parts
 * (NULL-ended; NULL: any message); frees b. */
static inline void held_blocks_expect(ferry_batch *b, int state, int code, const char *const *parts)
{
    for (unsigned i = 0; i < NREQ; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        bool ok = st.state == state && st.error == code;
        for (size_t k = 0; ok && parts && parts[k]; k++)
            ok = strstr(st.message, parts[k]) != NULL;
        if (!ok)
            fail_msg("request %u: state %d %s \"%s\", expected state %d %s (holding \"%s\"...)", i, st.state,
                     ferry_err_name(st.error), st.message, state, ferry_err_name(code),
                     parts && parts[0] ? parts[0] : "");
    }
    ferry_batch_free(b);
}

#endif

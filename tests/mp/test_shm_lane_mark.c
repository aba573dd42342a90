/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_shm_lane_mark.c — an shm job on the device's lane whose end mark the
 * device refuses (shm_lane.c, shm_lane_issue; the sim's
 * FERRY_SIM_REFUSE=mark:N and mark_unsupported:N).  The job's copies go
 * from local sim memory into the IPC opening of a target process's sim
 * buffer, on the lane (FERRY_SHM_SUBMIT_COPIES=2, the default).
 *
 * - The device refuses the mark (FERRY_EIO): the job's requests end FAILED,
 *   the message naming the device, its stream and the refusal; what landed
 *   before is intact, and the next jobs land on a fresh lane stream.
 * - The device has no marks (FERRY_ENOTSUP, as CUDA without stream memory
 *   operations): the job drained its stream, so its requests end
 *   COMPLETED with their data; the lane's jobs take streams of their own.
 * - The mark is refused and the drain hangs (a held copy past
 *   FERRY_SIM_SYNC_TIMEOUT_MS, the stream abandoned): the requests end
 *   TIMEOUT naming the stream, the refused mark and the drain; the held copy's IPC
 *   opening stays open after the segment is closed; the next job lands.
 *
 * Under ASan, a lane stream or job mapping lost on these paths shows as a
 * leak at exit.  No case depends on timing (the sync bound is the sim's).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "device/sim_internal.h"
#include "ferry.h"
#include "testutil.h"
#include "xfer_pair.h"
#include "mp/held_blocks.h"

static void landed(struct xfer_pair *x, uint64_t base, uint64_t seed)
{
    assert_int_equal(child_target_check(&x->target, base, NREQ * BLOCK, seed), -1);
}

static void start(struct xfer_pair *x)
{
    setenv("FERRY_PROTOCOLS", "shm", 1); /* the target's, read at its start */
    xfer_pair_start_target(x, TSIZE, "sim:0", TSEED);
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = "shm";
    cfg.coalesce_max = NREQ; /* the batch is one frame: one job */
    xfer_pair_open(x, &cfg, "sim:0"); /* device to device: the copies are the initiator's jobs */
}

/* The next stream_mark call of this process is refused as op. */
static void refuse_next_mark(enum sim_op op)
{
    sim_hw.refusals[0] = (struct sim_refusal){op, atomic_load(&sim_hw.calls[SIM_OP_MARK]) + 1};
    sim_hw.nrefusals = 1;
}

static void mark_refused_fails_its_job(void **state)
{
    (void)state;
    struct xfer_pair x;
    start(&x);
    held_blocks_expect(held_blocks_write(&x, 0, 11, false), FERRY_COMPLETED, 0, NULL); /* the lane works */
    landed(&x, 0, 11);
    uint64_t marks = atomic_load(&sim_hw.calls[SIM_OP_MARK]);
    assert_true(marks >= 1); /* that job was on the lane */

    refuse_next_mark(SIM_OP_MARK);
    const char *parts[] = {"sim:0", "stream 0x", "refused the job's mark", "FERRY_SIM_REFUSE", x.target.name, NULL};
    held_blocks_expect(held_blocks_write(&x, NREQ * BLOCK, 12, false), FERRY_FAILED, FERRY_EIO, parts);
    assert_int_equal(atomic_load(&sim_hw.calls[SIM_OP_MARK]), marks + 1);
    landed(&x, 0, 11); /* untouched */
    /* the next jobs land, on the lane again (a fresh stream: they are marked) */
    for (unsigned k = 2; k < 4; k++) {
        held_blocks_expect(held_blocks_write(&x, k * NREQ * BLOCK, 11 + k, false), FERRY_COMPLETED, 0, NULL);
        landed(&x, k * NREQ * BLOCK, 11 + k);
    }
    assert_int_equal(atomic_load(&sim_hw.calls[SIM_OP_MARK]), marks + 3);
    sim_hw.nrefusals = 0;
    xfer_pair_stop(&x);
}

static void no_marks_completes_by_the_drain(void **state)
{
    (void)state;
    struct xfer_pair x;
    start(&x);
    refuse_next_mark(SIM_OP_MARK_UNSUPPORTED);
    uint64_t marks = atomic_load(&sim_hw.calls[SIM_OP_MARK]);
    held_blocks_expect(held_blocks_write(&x, 0, 21, false), FERRY_COMPLETED, 0, NULL);
    landed(&x, 0, 21);
    assert_int_equal(atomic_load(&sim_hw.calls[SIM_OP_MARK]), marks + 1);
    /* the lane is given up: jobs take streams of their own, no marks */
    held_blocks_expect(held_blocks_write(&x, NREQ * BLOCK, 22, false), FERRY_COMPLETED, 0, NULL);
    landed(&x, NREQ * BLOCK, 22);
    assert_int_equal(atomic_load(&sim_hw.calls[SIM_OP_MARK]), marks + 1);
    sim_hw.nrefusals = 0;
    xfer_pair_stop(&x);
}

static void mark_refused_on_a_hung_stream(void **state)
{
    (void)state;
    char dir[] = "/tmp/ferry-lane-mark-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct sim_ipc_counts c0, c;
    struct xfer_pair x;
    start(&x);
    sim_ipc_counts(&c0);
    held_blocks_expect(held_blocks_write(&x, 0, 31, false), FERRY_COMPLETED, 0, NULL);
    landed(&x, 0, 31);
    sim_ipc_counts(&c);
    uint64_t opened = c.opens - c0.opens;
    assert_true(opened >= 1);

    snprintf(sim_hw.hold_path, sizeof sim_hw.hold_path, "%s/go", dir);
    sim_hw.sync_timeout_ms = 300;
    refuse_next_mark(SIM_OP_MARK);
    const char *parts[] = {"sim:0 stream 0x", "mark refused", "did not finish", NULL};
    held_blocks_expect(held_blocks_write(&x, NREQ * BLOCK, 32, true), FERRY_TIMEOUT, FERRY_ETIMEDOUT, parts);
    sim_hw.nrefusals = 0;
    /* the next lands, on a stream of its own */
    held_blocks_expect(held_blocks_write(&x, 2 * NREQ * BLOCK, 33, false), FERRY_COMPLETED, 0, NULL);
    landed(&x, 2 * NREQ * BLOCK, 33);
    landed(&x, 0, 31);

    assert_int_equal(ferry_close_segment(x.e, x.seg), 0); /* retires every opening of the target */
    sim_ipc_counts(&c);
    assert_true(c.closes - c0.closes < opened); /* the held copy's opening is still open */

    FILE *f = fopen(sim_hw.hold_path, "we"); /* the held copy runs now */
    assert_non_null(f);
    fclose(f);
    xfer_pair_stop(&x);
    sim_hw.hold_job = 0;
    sim_hw.sync_timeout_ms = 0;
    unlink(sim_hw.hold_path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(mark_refused_fails_its_job),
        cmocka_unit_test(no_marks_completes_by_the_drain),
        cmocka_unit_test(mark_refused_on_a_hung_stream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_shm_job_hang.c — an shm job whose device copies hang on a device
 * that cannot abort them (src/transport/shm/shm_copy.c, job_stream_renew;
 * docs/EXTENDING.md, "bounded waits").  The job's copies go from local sim
 * memory through the IPC opening of a target process's sim buffer, on the
 * job's own stream (FERRY_SHM_SUBMIT_COPIES=1).  The sim device holds that
 * copy back (its FERRY_SIM_HOLD_COPY, set here for the one copy job) past
 * its bounded sync (FERRY_SIM_SYNC_TIMEOUT_MS), which abandons the stream, as
 * the npu backend does without aclrtStreamAbort.  The WRITE fails
 * TIMEOUT (FERRY_ETIMEDOUT), the next lands, and the IPC opening the held copy writes
 * through stays open after the segment is closed (every opening retired):
 * the copy, released last, lands in an opening still held, never in one
 * closed under it (on CUDA: memory its exporter may have reused).  The
 * sim's counts (sim_ipc_counts) say what was opened and closed.
 *
 * The same on the device's lane (FERRY_SHM_SUBMIT_COPIES=2, shm_lane.c),
 * where the job's end is a mark the worker polls: its wait is bounded by
 * the device's own (stream_sync), the lane's stream is abandoned and the
 * lane's jobs take streams of their own from then on.
 */
#include <setjmp.h>
#include <stdarg.h>
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

/* A held WRITE through jobs of kind submit_copies ("1": a stream each,
 * "2": the lane). */
static void hung_job(const char *submit_copies)
{
    char dir[] = "/tmp/ferry-job-hang-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct sim_ipc_counts c0, c; /* this process's, over both tests */
    sim_ipc_counts(&c0);
    struct xfer_pair x;
    setenv("FERRY_PROTOCOLS", "shm", 1); /* the target's, read at its start */
    xfer_pair_start_target(&x, TSIZE, "sim:0", TSEED);
    setenv("FERRY_SIM_SYNC_TIMEOUT_MS", "300", 1); /* this process's sim, loaded by the engine */
    setenv("FERRY_SHM_SUBMIT_COPIES", submit_copies, 1);
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = "shm";
    xfer_pair_open(&x, &cfg, "sim:0");
    snprintf(sim_hw.hold_path, sizeof sim_hw.hold_path, "%s/go", dir);

    held_blocks_expect(held_blocks_write(&x, 0, 11, false), FERRY_COMPLETED, 0, NULL);
    assert_int_equal(child_target_check(&x.target, 0, NREQ * BLOCK, 11), -1);
    sim_ipc_counts(&c);
    assert_int_equal(c.opens - c0.opens, 1);
    assert_int_equal(c.closes - c0.closes, 0);

    held_blocks_expect(held_blocks_write(&x, NREQ * BLOCK, 12, true), FERRY_TIMEOUT, FERRY_ETIMEDOUT,
                       (const char *[]){"FERRY_SIM_SYNC_TIMEOUT_MS", NULL});
    /* the next lands, on a fresh stream */
    held_blocks_expect(held_blocks_write(&x, 2 * NREQ * BLOCK, 13, false), FERRY_COMPLETED, 0, NULL);
    assert_int_equal(child_target_check(&x.target, 2 * NREQ * BLOCK, NREQ * BLOCK, 13), -1);

    assert_int_equal(ferry_close_segment(x.e, x.seg), 0); /* retires every opening of the target */
    sim_ipc_counts(&c);
    assert_int_equal(c.opens - c0.opens, 1);
    assert_int_equal(c.closes - c0.closes, 0); /* the held copy's opening is still open */

    FILE *f = fopen(sim_hw.hold_path, "we"); /* the held copy runs now */
    assert_non_null(f);
    fclose(f);
    xfer_pair_stop(&x);
    unlink(sim_hw.hold_path);
    rmdir(dir);
}

static void hung_job_keeps_its_opening(void **state)
{
    (void)state;
    hung_job("1");
}

static void hung_lane_job_keeps_its_opening(void **state)
{
    (void)state;
    hung_job("2");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hung_job_keeps_its_opening),
        cmocka_unit_test(hung_lane_job_keeps_its_opening),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_shm_jobs.c — the shm transport's jobs: a submitting thread issues the
 * device-to-device copies of one submit itself (shm_copy.c), as one copy
 * job on the job's stream, and a worker waits for it and ends its frames.
 *
 * Two transports of this process driven directly, on the strict sim device:
 * local device memory to the target's device memory (and a little host
 * memory), frames of 64 pieces handed over as the engine does (more_bytes:
 * the bytes of the submit still to come).  Submit A (frames 0-3) is one job
 * of 256 copies (copy job 2; job 1 is the fill); submit B (frames 4-8) does
 * not fit one job: frames 4-7 are job 3, frame 8 job 4 (64 copies); frame 9
 * has half its pieces in host memory, which a job gives to the workers (its
 * job is left empty); frame 10 is a job again.  With
 * FERRY_SIM_FAIL_COPY naming one of jobs 2-4 (when run, or at start), only
 * that job's frames fail, FERRY_EIO naming the job and its copy count; every
 * other frame arrives with its data, WRITE and READ.  ctest runs it with the
 * jobs on one stream per device, in order (FERRY_SHM_SUBMIT_COPIES=2, the
 * default: the failed job's stream is retired, the next job takes a fresh
 * one) and on a stream each (=1).  Each case runs in a
 * fresh process (this program exec'd with --case): copy numbers count from
 * its start.  Nothing here depends on timing: each submit's frames are
 * waited for before the next submit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "device/device.h"
#include "memreg.h"
#include "net.h"
#include "shm_pair.h"
#include "testutil.h"
#include "transport/shm/shm.h"
#include "transport/transport.h"

#define PIECES 64u                /* pieces a frame: four frames fill a job's 256 copies */
#define PIECE 1024u
#define NFRAMES 11u
#define FRAME_BYTES ((size_t)PIECES * PIECE)
#define PLEN ((size_t)NFRAMES * FRAME_BYTES)
#define MIXED 9u                  /* the frame with half its pieces in local host memory */

struct job_case {
    const char *name;
    int op;
    const char *faults;           /* FERRY_SIM_FAIL_COPY */
    unsigned failed_job;          /* 0: none; else the copy job that fails */
    bool at_start;
};

static const struct job_case cases[] = {
    {"write_ok", XFER_WRITE, "", 0, false},
    {"read_ok", XFER_READ, "", 0, false},
    {"write_first_job_fails", XFER_WRITE, "2", 2, false},
    {"read_first_job_fails", XFER_READ, "2", 2, false},
    {"write_second_job_fails_start", XFER_WRITE, "3:start", 3, true},
    {"write_split_job_fails", XFER_WRITE, "4", 4, false},
    {"read_split_job_fails_start", XFER_READ, "4:start", 4, true},
};
#define NCASES (sizeof cases / sizeof cases[0])

/* The copy job that holds frame k's copies (frame MIXED: the workers'). */
static unsigned job_of(unsigned k)
{
    return k < 4 ? 2 : k < 8 ? 3 : k == 8 ? 4 : 0;
}

static struct frame_end ends[NFRAMES];

/* Waits until n frames ended. */
static void wait_ended(unsigned n)
{
    frames_wait_count(&frames_ended, n);
}

/* Hands frames [k0, k1) over as one submit: more_bytes counts down. */
static void submit(const struct transport_ops *ops, void *ti, void *peer, struct xfer_frame *frames, unsigned k0,
                   unsigned k1)
{
    for (unsigned k = k0; k < k1; k++) {
        frames[k].more_bytes = (uint64_t)(k1 - 1 - k) * FRAME_BYTES;
        ops->submit(ti, peer, &frames[k]);
    }
}

static void jobs(void **state)
{
    const struct job_case *jc = *state;
    setenv("FERRY_SIM_FAIL_COPY", jc->faults, 1); /* FERRY_SHM_SUBMIT_COPIES: the run's (ctest runs 1 and 2) */
    int dev = -1;
    const struct ferry_device_ops *sim = ferry_device_of_location("sim:0", &dev);
    assert_non_null(sim);
    struct shm_pair sp;
    shm_pair_start(&sp);
    const struct transport_ops *ops = sp.ops;
    struct memreg *reg_i = &sp.reg_i, *reg_t = &sp.reg_t;
    void *ti = sp.ti, *tt = sp.tt, *peer, *handle;
    void *tbuf = NULL, *lbuf = NULL;
    assert_int_equal(sim->mem_alloc(dev, PLEN, &tbuf), 0);
    assert_int_equal(sim->mem_alloc(dev, PLEN, &lbuf), 0);
    char *hbuf = malloc(PLEN), *back = malloc(PLEN);
    assert_non_null(hbuf);
    assert_non_null(back);
    struct memreg_region rt = {(uint64_t)(uintptr_t)tbuf, PLEN, "sim:0", dev, 1, {0}};
    struct memreg_region rl = {(uint64_t)(uintptr_t)lbuf, PLEN, "sim:0", dev, 0, {0}};
    struct memreg_region rh = {(uint64_t)(uintptr_t)hbuf, PLEN, "cpu", -1, 0, {0}};
    assert_int_equal(ops->register_memory(tt, &rt, &handle), 0);
    assert_int_equal(memreg_add(reg_t, &rt), 0);
    assert_int_equal(memreg_add(reg_i, &rl), 0);
    assert_int_equal(memreg_add(reg_i, &rh), 0);
    peer = shm_pair_open_peer(&sp, &rt);

    /* the source holds the pattern (copy job 1), the destination zeros */
    bool write = jc->op == XFER_WRITE;
    pattern_fill(back, PLEN, 31, 0);
    struct ferry_copy fill = {write ? lbuf : tbuf, back, PLEN};
    assert_int_equal(ferry_device_copy_sync(sim, dev, FERRY_COPY_H2D, &fill, 1), 0);
    if (write)
        memcpy(hbuf, back, PLEN);
    else
        memset(hbuf, 0, PLEN);

    uint64_t later = now_ns() + 60000000000ull;
    struct xfer_piece *pieces = calloc((size_t)NFRAMES * PIECES, sizeof *pieces);
    struct xfer_frame *frames = calloc(NFRAMES, sizeof *frames);
    assert_non_null(pieces);
    assert_non_null(frames);
    for (unsigned k = 0; k < NFRAMES; k++) {
        for (unsigned j = 0; j < PIECES; j++) {
            size_t off = ((size_t)k * PIECES + j) * PIECE;
            char *local = (k == MIXED && j >= PIECES / 2 ? hbuf : (char *)lbuf) + off;
            pieces[k * PIECES + j] = (struct xfer_piece){local, rt.addr + off, PIECE, j};
        }
        frames[k] = (struct xfer_frame){.opcode = jc->op, .npieces = PIECES, .pieces = &pieces[k * PIECES],
                                        .bytes = FRAME_BYTES, .deadline_ns = later, .complete = frame_end_record,
                                        .owner = &ends[k]};
    }
    submit(ops, ti, peer, frames, 0, 4);
    wait_ended(4);
    submit(ops, ti, peer, frames, 4, 9);
    wait_ended(9);
    submit(ops, ti, peer, frames, MIXED, MIXED + 1); /* a job with no frame left: all went to the workers */
    wait_ended(MIXED + 1);
    submit(ops, ti, peer, frames, MIXED + 1, NFRAMES);
    wait_ended(NFRAMES);

    for (unsigned k = 0; k < NFRAMES; k++) {
        assert_int_equal(ends[k].refused, 0);
        if (jc->failed_job && job_of(k) == jc->failed_job) {
            print_message("frame %u: %s (%s)\n", k, ferry_err_name(ends[k].err), ends[k].msg);
            char job[64];
            snprintf(job, sizeof job, "copy job %u (D2D, %u copies)", jc->failed_job, k == 8 ? PIECES : 4 * PIECES);
            assert_int_equal(ends[k].err, FERRY_EIO);
            assert_non_null(strstr(ends[k].msg, "device copy"));
            assert_non_null(strstr(ends[k].msg, "target"));
            assert_non_null(strstr(ends[k].msg, job));
            assert_non_null(strstr(ends[k].msg, jc->at_start ? "rejected at start" : "failed on the device"));
            continue;
        }
        if (ends[k].err)
            print_message("frame %u: %s (%s)\n", k, ferry_err_name(ends[k].err), ends[k].msg);
        assert_int_equal(ends[k].err, 0);
    }

    /* every frame that did not fail moved its data (the mixed one too) */
    struct ferry_copy c = {back, write ? tbuf : lbuf, PLEN};
    assert_int_equal(ferry_device_copy_sync(sim, dev, FERRY_COPY_D2H, &c, 1), 0);
    for (unsigned k = 0; k < NFRAMES; k++) {
        if (jc->failed_job && job_of(k) == jc->failed_job)
            continue;
        for (unsigned j = 0; j < PIECES; j++) {
            size_t off = ((size_t)k * PIECES + j) * PIECE;
            const char *got = k == MIXED && j >= PIECES / 2 && !write ? hbuf + off : back + off;
            if (pattern_check(got, PIECE, 31, off) != -1)
                fail_msg("frame %u piece %u: wrong data", k, j);
        }
    }

    ops->peer_close(ti, peer);
    struct memreg_region gone;
    assert_int_equal(memreg_remove(reg_t, rt.addr, &gone), 0);
    ops->unregister_memory(tt, handle);
    shm_pair_stop(&sp);
    sim->mem_free(dev, tbuf);
    sim->mem_free(dev, lbuf);
    free(pieces);
    free(frames);
    free(hbuf);
    free(back);
}

/* FERRY_SHM_SUBMIT_COPIES takes 0, 1 or 2 (empty: the default), FERRY_SHM_SPIN_US
 * 0-100000, FERRY_SHM_LANE_STREAMS 1-4, FERRY_SHM_LANE_KB 0-2^30; anything else stops the transport from starting, naming the
 * variable. */
static void knobs_malformed(void **state)
{
    (void)state;
    static const char *bad[] = {"3", "yes", "01", "1 "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_knob_refused("shm", "FERRY_SHM_SUBMIT_COPIES", bad[i]);
    static const char *good[] = {"0", "1", "2"};
    for (size_t v = 0; v < 3; v++)
        assert_int_equal(test_engine_start_with("shm", "FERRY_SHM_SUBMIT_COPIES", good[v]), 0);
    static const char *bad_spin[] = {"-1", "100001", "5us", "x"};
    for (size_t i = 0; i < sizeof bad_spin / sizeof bad_spin[0]; i++)
        assert_knob_refused("shm", "FERRY_SHM_SPIN_US", bad_spin[i]);
    static const char *bad_lanes[] = {"0", "5", "2x", " 2"};
    for (size_t i = 0; i < sizeof bad_lanes / sizeof bad_lanes[0]; i++)
        assert_knob_refused("shm", "FERRY_SHM_LANE_STREAMS", bad_lanes[i]);
    static const char *bad_lane_kb[] = {"-1", "1073741825", "256k", "x"};
    for (size_t i = 0; i < sizeof bad_lane_kb / sizeof bad_lane_kb[0]; i++)
        assert_knob_refused("shm", "FERRY_SHM_LANE_KB", bad_lane_kb[i]);
    assert_int_equal(test_engine_start_with("shm", "FERRY_SHM_LANE_KB", "0"), 0);
    assert_int_equal(test_engine_start_with("shm", "FERRY_SHM_LANE_KB", "1073741824"), 0);
    /* never polls: the workers sleep at once */
    assert_int_equal(test_engine_start_with("shm", "FERRY_SHM_SPIN_US", "0"), 0);
}

/* ------------------------------------------------------------ main */

/* Runs the case named *state in a fresh process of this program. */
static void in_fresh_process(void **state)
{
    assert_int_equal(test_case_in_fresh_process(*state), 0);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--case") == 0) {
        for (size_t i = 0; i < NCASES; i++)
            if (strcmp(argv[2], cases[i].name) == 0) {
                const struct CMUnitTest one[] = {{argv[2], jobs, NULL, NULL, (void *)&cases[i]}};
                return cmocka_run_group_tests_name(argv[2], one, NULL, NULL);
            }
        fprintf(stderr, "no case %s\n", argv[2]);
        return 2;
    }
    struct CMUnitTest tests[NCASES + 1];
    for (size_t i = 0; i < NCASES; i++)
        tests[i] = (struct CMUnitTest){cases[i].name, in_fresh_process, NULL, NULL, (void *)cases[i].name};
    tests[NCASES] = (struct CMUnitTest){"knobs_malformed", knobs_malformed, NULL, NULL, NULL};
    return cmocka_run_group_tests_name("shm jobs", tests, NULL, NULL);
}

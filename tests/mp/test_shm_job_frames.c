/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_shm_job_frames.c — a submit of many device-to-device frames is one
 * copy job (one launch of the device's kernel), not one job per 16 frames:
 * a job's room grows to SHM_JOB_FRAMES (128) frames, and a submit of more
 * goes as several jobs of at most that many.
 *
 * Two transports of this process driven directly on the strict sim device,
 * as test_shm_jobs.c does: frames of one piece each (a KV block of 1 MiB a
 * frame, scaled down), local device memory to the target's device memory.
 * Copy job 1 is the fill; submit A's 40 frames are copy job 2, submit B's
 * 130 frames copy jobs 3 (128 frames) and 4 (2).  FERRY_SIM_FAIL_COPY names
 * one job: exactly its frames fail, FERRY_EIO naming the job and its copy
 * count, and every other frame arrives with its data, WRITE and READ.
 * Before jobs grew (16 frames a job), submit A was jobs 2-4 of 16, 16 and 8
 * copies: "copy job 2 (D2D, 40 copies)" failed to match and frames 16-39
 * arrived.  While submit A's copy job is held (FERRY_SIM_HOLD_COPY), its
 * 40 frames hold one announcement in the target's shared memfd and one
 * access to the local registration, not 40 of each (before the job shared
 * them: 40 and 40), and the target's unregister of its memory waits for that
 * announcement: it has not returned while the copy is held, returns once the
 * job ended, and the job's WRITE arrived.  Each case runs in a fresh process (copy numbers count
 * from its start); each submit is waited for before the next.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "device/device.h"
#include "memreg.h"
#include "net.h"
#include "shm_pair.h"
#include "testutil.h"
#include "transport/shm/shm.h"
#include "transport/transport.h"

#define PIECE 4096u
#define A_FRAMES 40u
#define B_FRAMES (SHM_JOB_FRAMES + 2u)
#define NFRAMES (A_FRAMES + B_FRAMES)
#define PLEN ((size_t)NFRAMES * PIECE)

struct frames_case {
    const char *name;
    int op;
    const char *faults;           /* FERRY_SIM_FAIL_COPY */
    unsigned failed_job;          /* 0: none */
    bool hold;                    /* submit A's job held: count the accesses it holds */
    bool unregister;              /* and the target unregisters its memory meanwhile */
};

static const struct frames_case cases[] = {
    {"write_ok", XFER_WRITE, "", 0, false, false},
    {"read_ok", XFER_READ, "", 0, false, false},
    {"write_one_job_of_40_fails", XFER_WRITE, "2", 2, false, false},
    {"read_one_job_of_40_fails", XFER_READ, "2", 2, false, false},
    {"write_job_of_128_fails", XFER_WRITE, "3", 3, false, false},
    {"read_job_of_2_fails_start", XFER_READ, "4:start", 4, false, false},
    {"write_job_announced_once", XFER_WRITE, "", 0, true, false},
    {"read_job_announced_once", XFER_READ, "", 0, true, false},
    {"write_job_held_unregister_waits", XFER_WRITE, "", 0, true, true},
};
#define NCASES (sizeof cases / sizeof cases[0])

static unsigned job_of(unsigned k)
{
    return k < A_FRAMES ? 2 : k < A_FRAMES + SHM_JOB_FRAMES ? 3 : 4;
}

static unsigned job_copies(unsigned job)
{
    return job == 2 ? A_FRAMES : job == 3 ? SHM_JOB_FRAMES : B_FRAMES - SHM_JOB_FRAMES;
}

static struct frame_end ends[NFRAMES];

/* Announcements in use in t's shared memfd (a transport's own, which its
 * peers claim). */
static unsigned announcements(void *t)
{
    const struct shm_transport *st = t;
    unsigned n = 0;
    for (uint32_t i = 0; i < SHM_ANNOUNCE_SLOTS; i++)
        n += atomic_load(&st->ann[i].word) != 0;
    return n;
}

struct unregister_run {
    const struct transport_ops *ops;
    void *t, *handle;
    atomic_bool done;
};

static void *unregister_main(void *arg)
{
    struct unregister_run *u = arg;
    u->ops->unregister_memory(u->t, u->handle);
    atomic_store(&u->done, true);
    return NULL;
}

static void submit(const struct transport_ops *ops, void *ti, void *peer, struct xfer_frame *frames, unsigned k0,
                   unsigned k1)
{
    for (unsigned k = k0; k < k1; k++) {
        frames[k].more_bytes = (uint64_t)(k1 - 1 - k) * PIECE;
        ops->submit(ti, peer, &frames[k]);
    }
}

static void job_frames(void **state)
{
    const struct frames_case *fc = *state;
    setenv("FERRY_SIM_FAIL_COPY", fc->faults, 1);
    char go[64] = "";
    if (fc->hold) { /* submit A's job (copy job 2) waits for this file */
        snprintf(go, sizeof go, "/tmp/ferry-job-frames-%d", (int)getpid());
        unlink(go);
        char hold[96];
        snprintf(hold, sizeof hold, "2:%s", go);
        setenv("FERRY_SIM_HOLD_COPY", hold, 1);
    }
    int dev = -1;
    const struct ferry_device_ops *sim = ferry_device_of_location("sim:0", &dev);
    assert_non_null(sim);
    struct shm_pair sp;
    shm_pair_start(&sp);
    const struct transport_ops *ops = sp.ops;
    void *peer, *handle, *tbuf = NULL, *lbuf = NULL;
    assert_int_equal(sim->mem_alloc(dev, PLEN, &tbuf), 0);
    assert_int_equal(sim->mem_alloc(dev, PLEN, &lbuf), 0);
    char *back = malloc(PLEN);
    assert_non_null(back);
    struct memreg_region rt = {(uint64_t)(uintptr_t)tbuf, PLEN, "sim:0", dev, 1, {0}};
    struct memreg_region rl = {(uint64_t)(uintptr_t)lbuf, PLEN, "sim:0", dev, 0, {0}};
    assert_int_equal(ops->register_memory(sp.tt, &rt, &handle), 0);
    assert_int_equal(memreg_add(&sp.reg_t, &rt), 0);
    assert_int_equal(memreg_add(&sp.reg_i, &rl), 0);
    peer = shm_pair_open_peer(&sp, &rt);

    bool write = fc->op == XFER_WRITE;
    pattern_fill(back, PLEN, 47, 0);
    struct ferry_copy fill = {write ? lbuf : tbuf, back, PLEN}; /* copy job 1 */
    assert_int_equal(ferry_device_copy_sync(sim, dev, FERRY_COPY_H2D, &fill, 1), 0);

    uint64_t later = now_ns() + 60000000000ull;
    struct xfer_piece *pieces = calloc(NFRAMES, sizeof *pieces);
    struct xfer_frame *frames = calloc(NFRAMES, sizeof *frames);
    assert_non_null(pieces);
    assert_non_null(frames);
    for (unsigned k = 0; k < NFRAMES; k++) {
        size_t off = (size_t)k * PIECE;
        pieces[k] = (struct xfer_piece){(char *)lbuf + off, rt.addr + off, PIECE, 0};
        frames[k] = (struct xfer_frame){.opcode = fc->op, .npieces = 1, .pieces = &pieces[k], .bytes = PIECE,
                                        .deadline_ns = later, .complete = frame_end_record, .owner = &ends[k]};
    }
    submit(ops, sp.ti, peer, frames, 0, A_FRAMES);
    struct unregister_run ur = {ops, sp.tt, handle, false};
    pthread_t unregistering;
    if (fc->hold) { /* the job is issued (submit returned) and held: its accesses are live */
        assert_int_equal(announcements(sp.tt), 1);
        assert_int_equal(memreg_access_count(&sp.reg_i), 1);
        if (fc->unregister) {
            /* the target's unregister waits for the job's one announcement
             * (its waiter count says it is waiting), and does not return
             * while the job's copy is held */
            const struct shm_transport *st = sp.tt;
            assert_int_equal(pthread_create(&unregistering, NULL, unregister_main, &ur), 0);
            for (int i = 0; i < 6000 && !atomic_load(&st->served->waiters); i++) /* a hang guard */
                usleep(10000);
            assert_int_equal(atomic_load(&st->served->waiters), 1);
            usleep(200000);
            assert_false(atomic_load(&ur.done));
        }
        FILE *f = fopen(go, "we");
        assert_non_null(f);
        fclose(f);
    }
    frames_wait_count(&frames_ended, A_FRAMES);
    if (fc->hold) {
        unlink(go);
        assert_int_equal(announcements(sp.tt), 0);
        assert_int_equal(memreg_access_count(&sp.reg_i), 0);
    }
    unsigned nframes = NFRAMES;
    if (fc->unregister) { /* it returned once the job's copies ended; submit B has no target */
        assert_int_equal(pthread_join(unregistering, NULL), 0);
        assert_true(atomic_load(&ur.done));
        nframes = A_FRAMES;
    } else {
        submit(ops, sp.ti, peer, frames, A_FRAMES, NFRAMES);
        frames_wait_count(&frames_ended, NFRAMES);
    }

    for (unsigned k = 0; k < nframes; k++) {
        assert_int_equal(ends[k].refused, 0);
        if (fc->failed_job && job_of(k) == fc->failed_job) {
            char job[64];
            snprintf(job, sizeof job, "copy job %u (D2D, %u copies)", fc->failed_job, job_copies(fc->failed_job));
            if (ends[k].err != FERRY_EIO || !strstr(ends[k].msg, job))
                fail_msg("frame %u: %s (%s), want FERRY_EIO naming \"%s\"", k, ferry_err_name(ends[k].err),
                         ends[k].msg, job);
            continue;
        }
        if (ends[k].err)
            fail_msg("frame %u of copy job %u: %s (%s)", k, job_of(k), ferry_err_name(ends[k].err), ends[k].msg);
    }
    struct ferry_copy c = {back, write ? tbuf : lbuf, PLEN};
    memset(back, 0, PLEN);
    assert_int_equal(ferry_device_copy_sync(sim, dev, FERRY_COPY_D2H, &c, 1), 0);
    for (unsigned k = 0; k < nframes; k++) {
        if (fc->failed_job && job_of(k) == fc->failed_job)
            continue;
        if (pattern_check(back + (size_t)k * PIECE, PIECE, 47, (size_t)k * PIECE) != -1)
            fail_msg("frame %u: wrong data", k);
    }

    ops->peer_close(sp.ti, peer);
    struct memreg_region gone;
    assert_int_equal(memreg_remove(&sp.reg_t, rt.addr, &gone), 0);
    if (!fc->unregister)
        ops->unregister_memory(sp.tt, handle);
    shm_pair_stop(&sp);
    sim->mem_free(dev, tbuf);
    sim->mem_free(dev, lbuf);
    free(pieces);
    free(frames);
    free(back);
}

static void in_fresh_process(void **state)
{
    assert_int_equal(test_case_in_fresh_process(*state), 0);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--case") == 0) {
        for (size_t i = 0; i < NCASES; i++)
            if (strcmp(argv[2], cases[i].name) == 0) {
                const struct CMUnitTest one[] = {{argv[2], job_frames, NULL, NULL, (void *)&cases[i]}};
                return cmocka_run_group_tests_name(argv[2], one, NULL, NULL);
            }
        fprintf(stderr, "no case %s\n", argv[2]);
        return 2;
    }
    struct CMUnitTest tests[NCASES];
    for (size_t i = 0; i < NCASES; i++)
        tests[i] = (struct CMUnitTest){cases[i].name, in_fresh_process, NULL, NULL, (void *)cases[i].name};
    return cmocka_run_group_tests_name("shm job frames", tests, NULL, NULL);
}

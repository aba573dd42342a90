/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_shm_copyfail.c — the shm transport when a device copy fails.  The
 * initiator's workers do every copy of a shm transfer, so the initiator
 * runs on the strict sim device with FERRY_SIM_FAIL_COPY (sim.c): its Nth
 * copy job fails when waited for ("N", the stream's sticky error) or when
 * started ("N:start").  Each case runs in a fresh process (this program
 * exec'd again with --case), so copy numbers count from its start.
 *
 * Through the engine, against a child target, for every path a device
 * copy takes (cpu <-> the target's sim memory through its IPC handle,
 * sim <-> sim, and the initiator's sim memory <-> the target's cpu memory
 * through a worker's bounce), WRITE and READ: a batch of 16 KiB blocks in
 * which the first copy job fails ends with every request COMPLETED (its
 * data verified) or FAILED FERRY_EIO with a message naming the segment,
 * the device copy and the device's reason, at least one FAILED; nothing
 * hangs; the next batch moves and verifies everything (the worker's stream
 * was renewed, not left in its sticky error).
 *
 * The transport driven directly: one worker runs 16 frames of 64 pieces
 * as one group (its four copy jobs of 256 copies, frames 0-3, 4-7, ...),
 * the other workers held in a notification's completion; the second job
 * fails (when waited for, at start; or the second and the fourth): frames
 * 4-7 (and 12-15) end FERRY_EIO naming their job, the other frames
 * COMPLETED with their data, and the frames the other workers run next
 * all complete.
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

#define BLOCK (16u << 10)
#define FRAME 64u                 /* requests per frame: FERRY_COALESCE_MAX */
#define NREQ (4 * FRAME)
#define TSIZE (NREQ * BLOCK)
#define TSEED 5
#define GUARD_MS 120000           /* a hang guard only */

struct scenario {
    const char *name;
    const char *local, *target;   /* memory locations */
    int op;
    bool at_start;
};

static const struct scenario scenarios[] = {
    {"write_cpu_to_sim", "cpu", "sim:0", FERRY_WRITE, false},
    {"write_cpu_to_sim_start", "cpu", "sim:0", FERRY_WRITE, true},
    {"read_sim_to_cpu", "cpu", "sim:0", FERRY_READ, false},
    {"read_sim_to_cpu_start", "cpu", "sim:0", FERRY_READ, true},
    {"write_sim_to_sim", "sim:0", "sim:0", FERRY_WRITE, false},
    {"write_sim_to_sim_start", "sim:0", "sim:0", FERRY_WRITE, true},
    {"read_sim_to_sim", "sim:0", "sim:0", FERRY_READ, false},
    {"read_sim_to_sim_start", "sim:0", "sim:0", FERRY_READ, true},
    {"write_bounced", "sim:0", "cpu", FERRY_WRITE, false},
    {"write_bounced_start", "sim:0", "cpu", FERRY_WRITE, true},
    {"read_bounced", "sim:0", "cpu", FERRY_READ, false},
    {"read_bounced_start", "sim:0", "cpu", FERRY_READ, true},
};
#define NSCENARIOS (sizeof scenarios / sizeof scenarios[0])

struct fixture {
    const struct scenario *s;
    struct child_target target;
    ferry_engine *e;
    ferry_segment_t seg;
    char *local;                  /* NREQ blocks of s->local memory */
    char *host;                   /* host scratch */
    unsigned fail_job;            /* the copy job FERRY_SIM_FAIL_COPY names */
};

static bool on_device(const char *loc)
{
    return strcmp(loc, "cpu") != 0;
}

/* The target first (it must not inherit the fault), then this process's
 * faults: the first copy job of the batch fails.  The only copy before it
 * is the fill of local device memory. */
static void start(struct fixture *f, const struct scenario *s)
{
    memset(f, 0, sizeof *f);
    f->s = s;
    unsetenv("FERRY_SIM_FAIL_COPY");
    setenv("FERRY_PROTOCOLS", "shm", 1); /* the child reads it at start */
    assert_int_equal(child_target_start(&f->target, TSIZE, s->target, TSEED), 0);
    f->fail_job = on_device(s->local) ? 2 : 1;
    char faults[32];
    snprintf(faults, sizeof faults, "%u%s", f->fail_job, s->at_start ? ":start" : "");
    setenv("FERRY_SIM_FAIL_COPY", faults, 1);
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = "shm";
    cfg.coalesce_max = FRAME;
    cfg.request_timeout_ms = 60000;
    assert_int_equal(ferry_engine_create(&cfg, &f->e), 0);
    f->host = malloc(TSIZE);
    assert_non_null(f->host);
    assert_int_equal(ferry_mem_alloc(f->e, s->local, TSIZE, (void **)&f->local), 0);
    assert_int_equal(ferry_register_memory(f->e, f->local, TSIZE, s->local, 0), 0);
    assert_int_equal(ferry_open_segment(f->e, f->target.name, &f->seg), 0);
}

static void stop(struct fixture *f)
{
    ferry_mem_free(f->e, f->s->local, f->local, TSIZE);
    ferry_engine_destroy(f->e);
    child_target_kill(&f->target);
    free(f->host);
}

/* Local memory: the pattern (WRITE) or 0x77 (READ), one copy if device. */
static void local_fill(struct fixture *f, int op, uint64_t seed)
{
    if (op == FERRY_WRITE)
        pattern_fill(f->host, TSIZE, seed, 0);
    else
        memset(f->host, 0x77, TSIZE);
    assert_int_equal(ferry_mem_copy(f->e, f->local, f->host, TSIZE), 0);
}

/* Request i moves local block i to or from target block i. */
static ferry_batch *run_batch(struct fixture *f, int op)
{
    struct ferry_request r[NREQ];
    for (unsigned i = 0; i < NREQ; i++)
        r[i] = (struct ferry_request){op, f->local + i * BLOCK, f->seg, f->target.addr + i * BLOCK, BLOCK};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, NREQ, &b), 0);
    assert_int_equal(ferry_batch_submit(b, r, NREQ), 0);
    int rc = ferry_batch_wait(b, GUARD_MS);
    assert_int_not_equal(rc, FERRY_ETIMEDOUT);
    return b;
}

/* Block i arrived: at the target (WRITE, pattern seed) or here (READ,
 * f->host holding a copy of local memory). */
static void block_arrived(struct fixture *f, int op, unsigned i, uint64_t seed)
{
    uint64_t off = (uint64_t)i * BLOCK;
    if (op == FERRY_WRITE)
        assert_int_equal(child_target_check(&f->target, off, BLOCK, seed), -1);
    else
        assert_int_equal(pattern_check(f->host + off, BLOCK, TSEED, off), -1);
}

/* A batch whose first copy job fails, then one that moves everything. */
static void one_copy_fails(void **state)
{
    const struct scenario *s = *state;
    struct fixture f;
    start(&f, s);
    local_fill(&f, s->op, 11);
    ferry_batch *b = run_batch(&f, s->op);
    if (s->op == FERRY_READ)
        assert_int_equal(ferry_mem_copy(f.e, f.host, f.local, TSIZE), 0);
    char job[32];
    snprintf(job, sizeof job, "copy job %u ", f.fail_job);
    unsigned failed = 0;
    bool frame_failed[NREQ / FRAME] = {false};
    for (unsigned i = 0; i < NREQ; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        /* a frame (FRAME requests) ends as one */
        if (i % FRAME == 0)
            frame_failed[i / FRAME] = st.state != FERRY_COMPLETED;
        assert_int_equal(frame_failed[i / FRAME], st.state != FERRY_COMPLETED);
        if (st.state == FERRY_COMPLETED) {
            block_arrived(&f, s->op, i, 11);
            continue;
        }
        if (failed++ == 0)
            print_message("%s: request %u: %s (%s)\n", s->name, i, ferry_err_name(st.error), st.message);
        assert_int_equal(st.state, FERRY_FAILED);
        assert_int_equal(st.error, FERRY_EIO);
        /* what: the device copy, the job, the device's reason; where: the segment */
        assert_non_null(strstr(st.message, "device copy"));
        assert_non_null(strstr(st.message, f.target.name));
        assert_non_null(strstr(st.message, job));
        assert_non_null(strstr(st.message, "FERRY_SIM_FAIL_COPY"));
    }
    print_message("%s: %u of %u requests failed\n", s->name, failed, NREQ);
    assert_true(failed >= 1);
    ferry_batch_free(b);

    /* the worker that saw the failure copies again (its stream renewed) */
    for (int round = 0; round < 2; round++) {
        local_fill(&f, s->op, 12 + (uint64_t)round);
        b = run_batch(&f, s->op);
        assert_int_equal(ferry_batch_wait(b, GUARD_MS), 0);
        ferry_batch_free(b);
        if (s->op == FERRY_READ)
            assert_int_equal(ferry_mem_copy(f.e, f.host, f.local, TSIZE), 0);
        for (unsigned i = 0; i < NREQ; i++)
            block_arrived(&f, s->op, i, 12 + (uint64_t)round);
    }
    stop(&f);
}

/* ------------------------------------------------------------ the transport itself */

#define GROUP 16                  /* shm_copy.c's GROUP_MAX: the most frames a worker takes */
#define NFRAMES (SHM_WORKERS * GROUP) /* queued at once: the first worker's share is GROUP */
#define PIECE 1024u               /* 64 pieces a frame: 4 frames a copy job of 256 */
#define PLEN ((size_t)NFRAMES * FRAME * PIECE)

static unsigned held, released; /* under frames_lock */
static struct frame_end ends[NFRAMES];

/* A notification's completion that keeps its worker until released. */
static void hold_worker(struct xfer_frame *f, int err, uint64_t refused, const char *msg)
{
    (void)f, (void)err, (void)refused, (void)msg;
    pthread_mutex_lock(&frames_lock);
    unsigned me = held++;
    pthread_cond_broadcast(&frames_changed);
    while (released <= me)
        pthread_cond_wait(&frames_changed, &frames_lock);
    pthread_mutex_unlock(&frames_lock);
}

static void release_workers(unsigned n)
{
    pthread_mutex_lock(&frames_lock);
    released = n;
    pthread_cond_broadcast(&frames_changed);
    pthread_mutex_unlock(&frames_lock);
}

struct group_case {
    const char *name;
    const char *faults;           /* FERRY_SIM_FAIL_COPY */
    unsigned failed_jobs;         /* bit j: copy job j fails */
};

static const struct group_case group_cases[] = {
    {"group_job_fails", "2", 1u << 2},
    {"group_job_fails_start", "2:start", 1u << 2},
    {"group_two_jobs_fail", "2,4", 1u << 2 | 1u << 4},
};
#define NGROUP_CASES (sizeof group_cases / sizeof group_cases[0])

/* One worker runs frames 0-15 as one group: copy jobs 1-4 hold frames 0-3,
 * 4-7, 8-11, 12-15; some of them fail.  Only the frames whose copies were
 * in a failed job fail, each naming its job; the rest of the group (on the
 * same worker's stream, after the failure), and the frames after, arrive. */
static void group_job_fails(void **state)
{
    const struct group_case *gc = *state;
    setenv("FERRY_SIM_FAIL_COPY", gc->faults, 1);
    int dev = -1;
    const struct ferry_device_ops *sim = ferry_device_of_location("sim:0", &dev);
    assert_non_null(sim);
    struct shm_pair sp;
    shm_pair_start(&sp);
    const struct transport_ops *ops = sp.ops;
    struct memreg *reg_i = &sp.reg_i, *reg_t = &sp.reg_t;
    void *ti = sp.ti, *tt = sp.tt, *peer, *handle;
    void *tbuf = NULL;
    assert_int_equal(sim->mem_alloc(dev, PLEN, &tbuf), 0);
    char *lbuf = malloc(PLEN), *back = malloc(PLEN);
    assert_non_null(lbuf);
    assert_non_null(back);
    struct memreg_region rt = {(uint64_t)(uintptr_t)tbuf, PLEN, "sim:0", dev, 1, {0}};
    struct memreg_region rl = {(uint64_t)(uintptr_t)lbuf, PLEN, "cpu", -1, 0, {0}};
    assert_int_equal(ops->register_memory(tt, &rt, &handle), 0);
    assert_int_equal(memreg_add(reg_t, &rt), 0);
    assert_int_equal(memreg_add(reg_i, &rl), 0);
    peer = shm_pair_open_peer(&sp, &rt);
    uint64_t later = now_ns() + 60000000000ull;

    /* every worker held in a notification's completion */
    static const char note[] = "hold";
    struct xfer_frame holds[SHM_WORKERS];
    for (unsigned i = 0; i < SHM_WORKERS; i++) {
        holds[i] = (struct xfer_frame){.opcode = XFER_NOTIFY, .notify_msg = note, .notify_len = sizeof note,
                                       .deadline_ns = later, .complete = hold_worker};
        ops->submit(ti, peer, &holds[i]);
    }
    frames_wait_count(&held, SHM_WORKERS);

    pattern_fill(lbuf, PLEN, 21, 0);
    struct xfer_piece *pieces = calloc((size_t)NFRAMES * FRAME, sizeof *pieces);
    struct xfer_frame *frames = calloc(NFRAMES, sizeof *frames);
    assert_non_null(pieces);
    assert_non_null(frames);
    for (unsigned k = 0; k < NFRAMES; k++) {
        for (unsigned j = 0; j < FRAME; j++) {
            size_t off = ((size_t)k * FRAME + j) * PIECE;
            pieces[k * FRAME + j] = (struct xfer_piece){lbuf + off, rt.addr + off, PIECE, j};
        }
        frames[k] = (struct xfer_frame){.opcode = XFER_WRITE, .npieces = FRAME, .pieces = &pieces[k * FRAME],
                                        .bytes = FRAME * PIECE, .deadline_ns = later, .complete = frame_end_record,
                                        .owner = &ends[k]};
    }
    for (unsigned k = 0; k < NFRAMES; k++)
        ops->submit(ti, peer, &frames[k]);
    release_workers(1); /* one worker: it takes frames 0-15 */
    frames_wait_count(&frames_ended, GROUP);
    for (unsigned k = 0; k < GROUP; k++) {
        if (gc->failed_jobs & 1u << (k / 4 + 1)) {
            print_message("frame %u: %s (%s)\n", k, ferry_err_name(ends[k].err), ends[k].msg);
            char job[32];
            snprintf(job, sizeof job, "copy job %u ", k / 4 + 1);
            assert_int_equal(ends[k].err, FERRY_EIO);
            assert_non_null(strstr(ends[k].msg, "device copy"));
            assert_non_null(strstr(ends[k].msg, job));
            assert_non_null(strstr(ends[k].msg, "FERRY_SIM_FAIL_COPY"));
        } else {
            if (ends[k].err)
                print_message("frame %u: %s (%s)\n", k, ferry_err_name(ends[k].err), ends[k].msg);
            assert_int_equal(ends[k].err, 0);
        }
    }
    release_workers(SHM_WORKERS);
    frames_wait_count(&frames_ended, NFRAMES);
    for (unsigned k = GROUP; k < NFRAMES; k++)
        assert_int_equal(ends[k].err, 0);
    for (unsigned k = 0; k < NFRAMES; k++)
        assert_int_equal(ends[k].refused, 0);

    /* the data of every frame that did not fail is at the target */
    struct ferry_copy c = {back, tbuf, PLEN};
    assert_int_equal(ferry_device_copy_sync(sim, dev, FERRY_COPY_D2H, &c, 1), 0);
    for (unsigned k = 0; k < NFRAMES; k++) {
        size_t off = (size_t)k * FRAME * PIECE;
        if (k >= GROUP || !(gc->failed_jobs & 1u << (k / 4 + 1)))
            assert_int_equal(pattern_check(back + off, FRAME * PIECE, 21, off), -1);
    }

    ops->peer_close(ti, peer);
    struct memreg_region gone;
    assert_int_equal(memreg_remove(reg_t, rt.addr, &gone), 0);
    ops->unregister_memory(tt, handle);
    shm_pair_stop(&sp);
    sim->mem_free(dev, tbuf);
    free(pieces);
    free(frames);
    free(lbuf);
    free(back);
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
        struct CMUnitTest one = {argv[2], NULL, NULL, NULL, NULL};
        for (size_t i = 0; i < NSCENARIOS; i++)
            if (strcmp(argv[2], scenarios[i].name) == 0)
                one = (struct CMUnitTest){argv[2], one_copy_fails, NULL, NULL, (void *)&scenarios[i]};
        for (size_t i = 0; i < NGROUP_CASES; i++)
            if (strcmp(argv[2], group_cases[i].name) == 0)
                one = (struct CMUnitTest){argv[2], group_job_fails, NULL, NULL, (void *)&group_cases[i]};
        if (!one.test_func) {
            fprintf(stderr, "no case %s\n", argv[2]);
            return 2;
        }
        const struct CMUnitTest tests[] = {one};
        return cmocka_run_group_tests_name(argv[2], tests, NULL, NULL);
    }
    struct CMUnitTest tests[NSCENARIOS + NGROUP_CASES];
    for (size_t i = 0; i < NSCENARIOS; i++)
        tests[i] = (struct CMUnitTest){scenarios[i].name, in_fresh_process, NULL, NULL, (void *)scenarios[i].name};
    for (size_t i = 0; i < NGROUP_CASES; i++)
        tests[NSCENARIOS + i] = (struct CMUnitTest){group_cases[i].name, in_fresh_process, NULL, NULL,
                                                    (void *)group_cases[i].name};
    return cmocka_run_group_tests_name("shm device copy failures", tests, NULL, NULL);
}

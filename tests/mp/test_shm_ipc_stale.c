/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_shm_ipc_stale.c — an initiator's IPC opening of a target's device
 * buffer lives no longer than the target's registration of it.
 *
 * A child target registers 640 KiB of sim:0 on a 1 MiB sim device, so its
 * allocator hands the same address out again after a free.  This process
 * (the initiator, over shm only) writes into it through the buffer's IPC
 * handle, from sim:0 (a submitting thread's job, D2D) or from host memory
 * (a worker, H2D).  The sim device counts this process's IPC opens and
 * closes, and copies through an opening whose exporter has freed the
 * allocation (sim_ipc_counts): CUDA runs those unnoticed, into memory the
 * target no longer sees.
 *
 * Cases: the target unregisters and frees the buffer — the next WRITE fails
 * FERRY_ESTALE and the opening is closed by then; with no transfer at all
 * it is closed too (the transport's timer); a WRITE stream while the target
 * frees ends every request COMPLETED or FAILED, none copying after; a new
 * registration at the same address is written and read through a new
 * opening; 24 free/register cycles keep at most one opening; the target's
 * process dies — its openings are closed (the timer).  And the detector
 * itself: a copy after the target freed memory it keeps registered is
 * counted.  Test code is single-threaded but for the writer of
 * stream_while_freed; no step waits on time (flags and joins only; the
 * polls have a 60 s guard).
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
#include <time.h>
#include <cmocka.h>

#include "device/sim_internal.h"
#include "ferry.h"
#include "testutil.h"
#include "xfer_pair.h"

#define TSIZE ((size_t)640 << 10)   /* more than half the target's sim device: a freed address comes back */
#define TDEVMEM "1M"
#define BLOCK ((size_t)32 << 10)
#define NREQ 4u
#define TSEED 5
#define GUARD_MS 120000             /* a hang guard only */
#define CYCLES 24

struct fixture {
    struct xfer_pair x;              /* the target, the engine, local memory, the segment */
    struct sim_ipc_counts at_start;
};

static int setup(void **state, const char *loc)
{
    struct fixture *f = calloc(1, sizeof *f);
    setenv("FERRY_PROTOCOLS", "shm", 1);
    setenv("FERRY_SIM_DEVICE_MEM", TDEVMEM, 1); /* the child's, read at its start */
    xfer_pair_start_target(&f->x, TSIZE, "sim:0", TSEED);
    unsetenv("FERRY_SIM_DEVICE_MEM");
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = "shm";
    cfg.request_timeout_ms = 60000;
    xfer_pair_open(&f->x, &cfg, loc);
    sim_ipc_counts(&f->at_start);
    *state = f;
    return 0;
}

static int setup_dev(void **s) { return setup(s, "sim:0"); }
static int setup_host(void **s) { return setup(s, "cpu"); }

static int teardown(void **state)
{
    struct fixture *f = *state;
    ferry_close_segment(f->x.e, f->x.seg);
    xfer_pair_stop(&f->x);
    free(f);
    return 0;
}

/* This process's IPC opens, closes and stale copies since the case began. */
static struct sim_ipc_counts counts(const struct fixture *f)
{
    struct sim_ipc_counts now;
    sim_ipc_counts(&now);
    return (struct sim_ipc_counts){now.opens - f->at_start.opens, now.closes - f->at_start.closes,
                                   now.stale_copies - f->at_start.stale_copies};
}

/* NREQ blocks of op at offset base (local and remote); WRITEs carry
 * pattern(seed).  Returns the batch, waited for. */
static ferry_batch *submit(struct fixture *f, int op, uint64_t base, uint64_t seed)
{
    struct ferry_request r[NREQ];
    for (unsigned i = 0; i < NREQ; i++) {
        uint64_t off = base + i * BLOCK;
        r[i] = (struct ferry_request){op, f->x.local + off, f->x.seg, f->x.target.addr + off, BLOCK};
    }
    if (op == FERRY_WRITE) {
        pattern_fill(f->x.host, NREQ * BLOCK, seed, base);
        assert_int_equal(ferry_mem_copy(f->x.e, f->x.local + base, f->x.host, NREQ * BLOCK), 0);
    }
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->x.e, NREQ, &b), 0);
    int rc = ferry_batch_submit(b, r, NREQ);
    if (rc)
        fail_msg("submit: %s: %s", ferry_err_name(rc), ferry_last_error());
    assert_int_not_equal(ferry_batch_wait(b, GUARD_MS), FERRY_ETIMEDOUT);
    return b;
}

static void batch_ok(ferry_batch *b)
{
    for (unsigned i = 0; i < NREQ; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        if (st.state != FERRY_COMPLETED)
            fail_msg("request %u: %s: %s", i, ferry_err_name(st.error), st.message);
    }
    ferry_batch_free(b);
}

/* A WRITE of pattern(seed) at base, verified by the target; a READ of its
 * bytes at TSIZE/2, which must hold pattern(filled, ...). */
static void write_read_verified(struct fixture *f, uint64_t base, uint64_t seed, uint64_t filled)
{
    batch_ok(submit(f, FERRY_WRITE, base, seed));
    assert_int_equal(child_target_check(&f->x.target, base, NREQ * BLOCK, seed), -1);
    uint64_t rbase = TSIZE / 2;
    batch_ok(submit(f, FERRY_READ, rbase, 0));
    assert_int_equal(ferry_mem_copy(f->x.e, f->x.host, f->x.local + rbase, NREQ * BLOCK), 0);
    assert_int_equal(pattern_check(f->x.host, NREQ * BLOCK, filled, rbase), -1);
}

static void expect_failed(ferry_batch *b, int code, const char *part)
{
    for (unsigned i = 0; i < NREQ; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        assert_int_equal(st.state, FERRY_FAILED);
        if (st.error != code || !strstr(st.message, part))
            fail_msg("request %u: %s \"%s\", expected %s \"...%s...\"", i, ferry_err_name(st.error), st.message,
                     ferry_err_name(code), part);
    }
    ferry_batch_free(b);
}

/* 1. Unregistered and freed: the next WRITE fails FERRY_ESTALE (this
 * initiator's view of the segment still lists the buffer; the target's
 * registry says it was revoked), its opening is closed when it has ended,
 * and no copy went into the freed memory.  Before: the opening stayed
 * until the segment was refreshed or closed. */
static void unregistered_buffer_unmapped(void **state)
{
    struct fixture *f = *state;
    write_read_verified(f, 0, 11, TSEED);
    assert_int_equal(counts(f).opens, 1);
    assert_int_equal(child_target_release(&f->x.target), 0);
    expect_failed(submit(f, FERRY_WRITE, 0, 12), FERRY_ESTALE, "unregistered");
    struct sim_ipc_counts c = counts(f);
    assert_int_equal(c.opens, 1);
    assert_int_equal(c.closes, 1);
    assert_int_equal(c.stale_copies, 0);
}

/* 1b. The same with no transfer after the free: the timer closes the
 * opening (else the target's device memory stays allocated for as long as
 * this initiator keeps the segment).  Polled, with a hang guard only. */
static void unmapped_without_transfer(void **state)
{
    struct fixture *f = *state;
    write_read_verified(f, 0, 13, TSEED);
    assert_int_equal(child_target_release(&f->x.target), 0);
    struct timespec nap = {0, 5 * 1000000L};
    for (unsigned waited = 0; counts(f).closes < 1; waited += 5) {
        if (waited >= 60000)
            fail_msg("the opening of the unregistered buffer is still open after 60 s");
        nanosleep(&nap, NULL);
    }
    struct sim_ipc_counts c = counts(f);
    assert_int_equal(c.opens, 1);
    assert_int_equal(c.closes, 1);
    expect_failed(submit(f, FERRY_WRITE, 0, 14), FERRY_ESTALE, "unregistered");
    assert_int_equal(counts(f).stale_copies, 0);
}

/* 3. A new allocation at the same address, registered: written and read
 * through a new opening (its own bytes come back, not the old one's), the
 * old opening closed.  Before: the first WRITE failed FERRY_ESTALE. */
static void registered_again_same_address(void **state)
{
    struct fixture *f = *state;
    uint64_t old = f->x.target.addr;
    write_read_verified(f, 0, 15, TSEED);
    assert_int_equal(child_target_release(&f->x.target), 0);
    assert_int_equal(child_target_renew(&f->x.target, 16), 0);
    if (f->x.target.addr != old)
        fail_msg("the target's sim allocator gave 0x%llx, not the freed 0x%llx again (FERRY_SIM_DEVICE_MEM=%s)",
                 (unsigned long long)f->x.target.addr, (unsigned long long)old, TDEVMEM);
    write_read_verified(f, 0, 17, 16);
    struct sim_ipc_counts c = counts(f);
    assert_int_equal(c.opens, 2);
    assert_int_equal(c.closes, 1);
    assert_int_equal(c.stale_copies, 0);
}

/* 4. Register/unregister cycles (every other one a free and a new
 * allocation at the same address): each moves data, and at most one opening
 * is live after each. */
static void register_cycles(void **state)
{
    struct fixture *f = *state;
    uint64_t filled = TSEED;
    for (unsigned k = 0; k < CYCLES; k++) {
        if (k % 2) {
            assert_int_equal(child_target_unregister(&f->x.target), 0);
            assert_int_equal(child_target_register(&f->x.target), 0);
        } else {
            assert_int_equal(child_target_release(&f->x.target), 0);
            filled = 100 + k;
            assert_int_equal(child_target_renew(&f->x.target, filled), 0);
        }
        write_read_verified(f, 0, 200 + k, filled);
        struct sim_ipc_counts c = counts(f);
        if (c.opens - c.closes > 1)
            fail_msg("cycle %u: %llu openings live (%llu opened, %llu closed)", k,
                     (unsigned long long)(c.opens - c.closes), (unsigned long long)c.opens,
                     (unsigned long long)c.closes);
        assert_int_equal(c.stale_copies, 0);
    }
    assert_true(counts(f).opens >= CYCLES);
}

/* 2. WRITE batches in a loop on another thread while the target frees
 * the buffer: every request ends COMPLETED or FAILED, and no copy runs
 * into the freed memory. */
struct stream {
    struct fixture *f;
    atomic_int batches;              /* ended */
    atomic_bool stop;
    unsigned completed, failed;
    char why[200];
};

static void *write_stream(void *arg)
{
    struct stream *s = arg;
    struct fixture *f = s->f;
    struct ferry_request r[NREQ];
    while (!atomic_load(&s->stop)) {
        for (unsigned i = 0; i < NREQ; i++)
            r[i] = (struct ferry_request){FERRY_WRITE, f->x.local + i * BLOCK, f->x.seg, f->x.target.addr + i * BLOCK,
                                          BLOCK};
        ferry_batch *b;
        if (ferry_batch_alloc(f->x.e, NREQ, &b) != 0)
            break;
        int rc = ferry_batch_submit(b, r, NREQ);
        if (rc == 0)
            rc = ferry_batch_wait(b, GUARD_MS);
        for (unsigned i = 0; rc != FERRY_ERANGE && i < NREQ; i++) { /* ERANGE at submit: refreshed, gone */
            struct ferry_status st;
            if (ferry_batch_status(b, i, &st) != 0 || (st.state != FERRY_COMPLETED && st.state != FERRY_FAILED))
                snprintf(s->why, sizeof s->why, "request %u ended in state %d", i, st.state);
            else if (st.state == FERRY_COMPLETED)
                s->completed++;
            else
                s->failed++;
        }
        ferry_batch_free(b);
        atomic_fetch_add(&s->batches, 1);
    }
    return NULL;
}

static void stream_while_freed(void **state)
{
    struct fixture *f = *state;
    pattern_fill(f->x.host, NREQ * BLOCK, 21, 0);
    assert_int_equal(ferry_mem_copy(f->x.e, f->x.local, f->x.host, NREQ * BLOCK), 0);
    struct stream s = {.f = f};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, write_stream, &s), 0);
    struct timespec nap = {0, 1000000L};
    while (atomic_load(&s.batches) < 2) /* the stream runs (a guard: GUARD_MS per batch) */
        nanosleep(&nap, NULL);
    assert_int_equal(child_target_release(&f->x.target), 0);
    int seen = atomic_load(&s.batches);
    while (atomic_load(&s.batches) < seen + 3) /* batches after the free too */
        nanosleep(&nap, NULL);
    atomic_store(&s.stop, true);
    pthread_join(th, NULL);
    if (s.why[0])
        fail_msg("%s", s.why);
    assert_true(s.completed >= 2 * NREQ);
    assert_int_equal(counts(f).stale_copies, 0);
}

/* The target's process dies (a crashed engine): its openings here are
 * closed without a transfer or a close of the segment (while they are open
 * a real device keeps its memory allocated); the next WRITE fails
 * FERRY_ECONN.  Before: open until the segment was closed. */
static void peer_died_unmapped(void **state)
{
    struct fixture *f = *state;
    write_read_verified(f, 0, 25, TSEED);
    assert_int_equal(counts(f).opens, 1);
    child_target_kill(&f->x.target);
    struct timespec nap = {0, 5 * 1000000L};
    for (unsigned waited = 0; counts(f).closes < 1; waited += 5) {
        if (waited >= 60000)
            fail_msg("the opening of the dead target's buffer is still open after 60 s");
        nanosleep(&nap, NULL);
    }
    assert_int_equal(counts(f).opens, 1);
    expect_failed(submit(f, FERRY_WRITE, 0, 26), FERRY_ECONN, "gone");
    assert_int_equal(counts(f).opens, 1);
}

/* The detector: a target that frees memory it keeps registered (a bug of
 * the application, not ferry's) lets this initiator's copies run through
 * the opening, as CUDA would: the sim device counts them. */
static void stale_copy_detected(void **state)
{
    struct fixture *f = *state;
    write_read_verified(f, 0, 23, TSEED);
    assert_int_equal(counts(f).stale_copies, 0);
    assert_int_equal(child_target_free_device_memory(&f->x.target), 0);
    batch_ok(submit(f, FERRY_WRITE, 0, 24));
    assert_true(counts(f).stale_copies >= 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(unregistered_buffer_unmapped, setup_dev, teardown),
        cmocka_unit_test_setup_teardown(unregistered_buffer_unmapped, setup_host, teardown),
        cmocka_unit_test_setup_teardown(unmapped_without_transfer, setup_dev, teardown),
        cmocka_unit_test_setup_teardown(registered_again_same_address, setup_dev, teardown),
        cmocka_unit_test_setup_teardown(registered_again_same_address, setup_host, teardown),
        cmocka_unit_test_setup_teardown(register_cycles, setup_dev, teardown),
        cmocka_unit_test_setup_teardown(register_cycles, setup_host, teardown),
        cmocka_unit_test_setup_teardown(stream_while_freed, setup_dev, teardown),
        cmocka_unit_test_setup_teardown(stream_while_freed, setup_host, teardown),
        cmocka_unit_test_setup_teardown(peer_died_unmapped, setup_dev, teardown),
        cmocka_unit_test_setup_teardown(peer_died_unmapped, setup_host, teardown),
        cmocka_unit_test_setup_teardown(stale_copy_detected, setup_dev, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

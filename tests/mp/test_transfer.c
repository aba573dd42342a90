/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_transfer.c — WRITE and READ between two engines in two processes over
 * real loopback sockets, with data verified on both sides: block sizes 4 KiB
 * to 4 MiB, batches of 1 to 256, the notification queue's limit, segment
 * buffers, connections that grow with the traffic and ones the target
 * refuses.  Odd sizes, notifications after data and stats run over every
 * transport in test_conformance.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "spin.h"
#include "testutil.h"
#include "xfer_pair.h"

#define TARGET_SIZE (64u << 20)
#define TARGET_SEED 11

static int setup(void **state)
{
    struct xfer_pair *f = calloc(1, sizeof *f);
    assert_non_null(f);
    xfer_pair_start(f, TARGET_SIZE, "cpu", TARGET_SEED, NULL, "cpu");
    *state = f;
    return 0;
}

/* Runs one batch of n blocks of bs bytes; block i goes to remote offset
 * base + stride*i (stride > bs leaves gaps, so misplacement is visible). */
static void run_batch(struct xfer_pair *f, int op, size_t bs, size_t n, uint64_t base, uint64_t stride)
{
    ferry_batch *b;
    struct ferry_request *reqs = calloc(n, sizeof *reqs);
    assert_non_null(reqs);
    for (size_t i = 0; i < n; i++) {
        uint64_t off = base + stride * i;
        reqs[i] = (struct ferry_request){op, f->local + off, f->seg, f->target.addr + off, bs};
        if (op == FERRY_WRITE)
            pattern_fill(f->local + off, bs, 7, off);
        else
            memset(f->local + off, 0, bs);
    }
    assert_int_equal(ferry_batch_alloc(f->e, n, &b), 0);
    assert_int_equal(ferry_batch_submit(b, reqs, n), 0);
    int rc = ferry_batch_wait(b, 60000);
    if (rc)
        fail_msg("batch failed: %s: %s", ferry_strerror(rc), ferry_last_error());
    xfer_assert_all_completed(b, n, bs);
    ferry_batch_free(b);
    for (size_t i = 0; i < n; i++) {
        uint64_t off = base + stride * i;
        if (op == FERRY_WRITE)
            assert_int_equal(child_target_check(&f->target, off, bs, 7), -1);
        else
            assert_int_equal(pattern_check(f->local + off, bs, TARGET_SEED, off), -1);
    }
    free(reqs);
}

static void test_write_read_matrix(void **state)
{
    struct xfer_pair *f = *state;
    static const size_t sizes[] = {4096, 65536, 1u << 20, 4u << 20};
    static const size_t batches[] = {1, 16, 256};
    for (size_t s = 0; s < 4; s++) {
        for (size_t k = 0; k < 3; k++) {
            size_t bs = sizes[s], n = batches[k];
            uint64_t stride = bs + 4096;
            while (n > 1 && stride * n > TARGET_SIZE / 2)
                n /= 2; /* 4 MiB x 256 does not fit: as many as fit */
            /* writes go to the lower half; reads come from the upper half,
             * which still holds the target's own pattern */
            run_batch(f, FERRY_WRITE, bs, n, 0, stride);
            run_batch(f, FERRY_READ, bs, n, TARGET_SIZE / 2, stride);
        }
    }
}

static void notify_once(struct xfer_pair *f, const char *msg)
{
    ferry_batch *b;
    struct ferry_request r = {FERRY_WRITE, f->local, f->seg, f->target.addr, 4096};
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    assert_int_equal(ferry_batch_set_notify(b, msg, strlen(msg)), 0);
    assert_int_equal(ferry_batch_submit(b, &r, 1), 0);
    assert_int_equal(ferry_batch_wait(b, 60000), 0);
    ferry_batch_free(b);
}

static int setup_small_queue(void **state)
{
    setenv("FERRY_NOTIFY_QUEUE_MAX", "2", 1); /* read by the target process */
    int rc = setup(state);
    unsetenv("FERRY_NOTIFY_QUEUE_MAX");
    return rc;
}

static void test_notification_queue_drops_oldest(void **state)
{
    struct xfer_pair *f = *state;
    notify_once(f, "one");
    notify_once(f, "two");
    notify_once(f, "three");
    char msg[16] = {0};
    assert_int_equal(child_target_notification(&f->target, msg, sizeof msg), 3);
    assert_string_equal(msg, "two");
    memset(msg, 0, sizeof msg);
    assert_int_equal(child_target_notification(&f->target, msg, sizeof msg), 5);
    assert_string_equal(msg, "three");
    assert_int_equal(child_target_notification(&f->target, msg, sizeof msg), -1);
    /* bad notification arguments */
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    static char big[4097];
    assert_int_equal(ferry_batch_set_notify(b, big, sizeof big), FERRY_EINVAL);
    assert_int_equal(ferry_batch_set_notify(b, NULL, 3), FERRY_EINVAL);
    ferry_batch_free(b);
}

/* One connection to start with and room for eleven more: heavy batches (8
 * MiB in flight on every connection) make the peer open more while frames
 * are in flight on the first; every byte must still land in its place. */
static int setup_growing(void **state)
{
    setenv("FERRY_TCP_CONNECTIONS", "1", 1);
    setenv("FERRY_TCP_MAX_CONNECTIONS", "12", 1);
    int rc = setup(state);
    unsetenv("FERRY_TCP_CONNECTIONS");
    unsetenv("FERRY_TCP_MAX_CONNECTIONS");
    return rc;
}

static void test_connections_grow_with_traffic(void **state)
{
    struct xfer_pair *f = *state;
    for (int round = 0; round < 3; round++) {
        run_batch(f, FERRY_WRITE, 4u << 20, 7, 0, (4u << 20) + 4096);
        run_batch(f, FERRY_READ, 4u << 20, 7, TARGET_SIZE / 2, (4u << 20) + 4096);
        run_batch(f, FERRY_WRITE, 4096, 256, 0, 8192);
    }
}

/* The target admits two connections from this address and the peer may
 * open eight, growing at the smallest threshold: the ones it refuses must
 * not fail the frames queued on them (they go to the connections that got
 * through, and the peer stops growing). */
static int setup_refused_growth(void **state)
{
    setenv("FERRY_TCP_CONNECTIONS", "1", 1);
    setenv("FERRY_TCP_MAX_CONNECTIONS", "8", 1);
    setenv("FERRY_TCP_GROW_BYTES", "65536", 1);
    setenv("FERRY_MAX_CONNECTIONS_PER_PEER", "2", 1); /* read by the target child */
    int rc = setup(state);
    unsetenv("FERRY_TCP_CONNECTIONS");
    unsetenv("FERRY_TCP_MAX_CONNECTIONS");
    unsetenv("FERRY_TCP_GROW_BYTES");
    unsetenv("FERRY_MAX_CONNECTIONS_PER_PEER");
    return rc;
}

static void test_refused_growth_loses_nothing(void **state)
{
    struct xfer_pair *f = *state;
    for (int round = 0; round < 3; round++) {
        run_batch(f, FERRY_WRITE, 1u << 20, 24, 0, (1u << 20) + 4096);
        run_batch(f, FERRY_READ, 1u << 20, 24, TARGET_SIZE / 2, (1u << 20) + 4096);
    }
}

/* Waiters that look long (10 ms) for their batch's end, so that every wait
 * tries to. */
static int setup_long_look(void **state)
{
    setenv("FERRY_WAIT_SPIN_US", "10000", 1);
    int rc = setup(state);
    unsetenv("FERRY_WAIT_SPIN_US");
    return rc;
}

/* A waiter looks for its batch's end only with one of the process's looks
 * (common/spin.h, at most half the usable CPUs): with the whole budget taken
 * here (as busy tcp targets' threads or other waiters of the process would
 * hold it), its look is refused and counted, it sleeps as without looks,
 * and every batch still completes with its bytes in place. */
static void test_waiter_looks_within_the_budget(void **state)
{
    struct xfer_pair *f = *state;
    unsigned taken = 0;
    while (spin_claim())
        taken++;
    struct spin_stats st;
    spin_stats(&st);
    assert_true(taken >= 1);
    assert_int_equal(st.looking, st.cap);
    uint64_t refused = st.refused;
    /* 40 batches of 512 KiB: waits of ~1 ms, far under the look's 10 ms, and
     * each begun before its batch ends (a batch over when its wait begins
     * does not try to look; 40 of them all over that soon would be) */
    for (int i = 0; i < 40; i++)
        run_batch(f, FERRY_WRITE, 4096, 128, 0, 8192);
    spin_stats(&st);
    assert_true(st.refused > refused);
    while (taken--)
        spin_release();
    spin_stats(&st);
    assert_int_equal(st.looking, 0);
}

static void test_segment_buffers(void **state)
{
    struct xfer_pair *f = *state;
    struct ferry_buffer_info info[4];
    size_t count = 0;
    assert_int_equal(ferry_segment_buffers(f->e, f->seg, info, 4, &count), 0);
    assert_int_equal(count, 1);
    assert_int_equal(info[0].addr, f->target.addr);
    assert_int_equal(info[0].len, TARGET_SIZE);
    assert_string_equal(info[0].location, "cpu");
    ferry_segment_t again;
    assert_int_equal(ferry_open_segment(f->e, f->target.name, &again), 0);
    assert_int_equal(again, f->seg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_write_read_matrix, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(test_notification_queue_drops_oldest, setup_small_queue, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(test_segment_buffers, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(test_waiter_looks_within_the_budget, setup_long_look, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(test_connections_grow_with_traffic, setup_growing, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(test_refused_growth_loses_nothing, setup_refused_growth, xfer_pair_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_reference_cpp.c — the call sequences of the reference engine's own
 * C++ tests (kvcache-ai/Mooncake, mooncake-transfer-engine/tests/), ported
 * to ferry's C API where it can express them:
 *   tcp_transport_test.cpp        Writetest, WriteAndReadtest, WriteAndRead2test:
 *                                 an engine writes its own first buffer onto
 *                                 itself over its own segment, reads it back
 *                                 into the same registration, polls the
 *                                 status of each request until COMPLETED
 *   transfer_metadata_test.cpp    LocalMemoryBufferTest: ten buffers, an
 *                                 address that starts none refused, the others
 *                                 unregistered one by one (and gone from the
 *                                 published list)
 *   tcp_address_validation_test.cpp  ExactMatch, WithinBounds, OutOfBounds,
 *                                 PartialOverlap, SingleByteAccess,
 *                                 AdjacentBuffers, EmptyBufferList, through a
 *                                 real segment (submit's check, and the
 *                                 target's own)
 *   tcp_write_visibility_test.cpp CompletedWriteIsVisibleToSubsequentRead
 *                                 (with writers of other regions alongside),
 *                                 RejectedWriteMustFail and
 *                                 V2ReadRoundTripAndRejectedRead (refused by
 *                                 the target, then served on)
 * Differences on purpose: a zero-length request completes at submit (the
 * reference's ZeroSize case is its validator's, not its API's: its
 * submitTransfer completes one too, see tests/python/test_reference_calls.py);
 * ferry has no installTransport (protocols are chosen at creation).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "testutil.h"

#define KDATA 4096000u       /* the reference's kDataLength */
#define POOL (16u << 20)     /* the reference registers 1 GiB; the sequence needs 2 x kDataLength */

static ferry_engine *make_engine(void)
{
    struct ferry_config cfg;
    ferry_engine *e = NULL;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.request_timeout_ms = 30000;
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    return e;
}

/* The reference's loop: allocate a batch of one, submit, poll the status of
 * request 0 (no wait call) until it is no longer pending, free the batch.
 * Returns the final state; *err its error. */
static int run_one_polled(ferry_engine *e, int opcode, void *source, ferry_segment_t seg, uint64_t remote,
                          size_t len, int *err)
{
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    struct ferry_request r = {opcode, source, seg, remote, len};
    int rc = ferry_batch_submit(b, &r, 1);
    if (rc) {
        ferry_batch_free(b);
        *err = rc;
        return -1;
    }
    struct ferry_status st;
    do
        assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    while (st.state == FERRY_PENDING);
    ferry_batch_free(b);
    *err = st.error;
    return st.state;
}

static void fill_letters(char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (char)('a' + lrand48() % 26);
}

/* Writetest / WriteAndReadtest / WriteAndRead2test: the engine's own segment,
 * its first buffer as the remote base, source and target the same memory
 * (the reference's sequence: the WRITE copies bytes onto themselves, which
 * ThreadSanitizer reports as the race it is by construction; this test is
 * not in the TSan list of scripts/test.sh). */
static void write_then_read_on_own_segment(void **state)
{
    (void)state;
    ferry_engine *e = make_engine();
    char *addr;
    assert_int_equal(ferry_mem_alloc(e, "cpu", POOL, (void **)&addr), 0);
    assert_int_equal(ferry_register_memory(e, addr, POOL, "cpu:0", 1), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, ferry_engine_segment_name(e), &seg), 0);
    struct ferry_buffer_info info[2];
    size_t n = 0;
    assert_int_equal(ferry_segment_buffers(e, seg, info, 2, &n), 0);
    assert_int_equal(n, 1);
    uint64_t remote_base = info[0].addr;
    assert_int_equal(remote_base, (uint64_t)(uintptr_t)addr);
    int err;
    for (int round = 0; round < 2; round++) { /* WriteAndRead2test: the pair twice, new data */
        fill_letters(addr, KDATA);
        assert_int_equal(run_one_polled(e, FERRY_WRITE, addr, seg, remote_base, KDATA, &err), FERRY_COMPLETED);
        assert_int_equal(err, 0);
        assert_int_equal(run_one_polled(e, FERRY_READ, addr + KDATA, seg, remote_base, KDATA, &err),
                         FERRY_COMPLETED);
        assert_int_equal(err, 0);
        assert_int_equal(memcmp(addr, addr + KDATA, KDATA), 0);
    }
    assert_int_equal(ferry_close_segment(e, seg), 0);
    assert_int_equal(ferry_unregister_memory(e, addr), 0);
    ferry_mem_free(e, "cpu", addr, POOL);
    ferry_engine_destroy(e);
}

/* LocalMemoryBufferTest: ten buffers of 1024 bytes every 2048; an address
 * inside one (not its start) is refused with a named code; the others are
 * unregistered from the last down, and each leaves the published list. */
static void ten_buffers_registered_and_removed(void **state)
{
    (void)state;
    ferry_engine *e = make_engine();
    char *base;
    assert_int_equal(ferry_mem_alloc(e, "cpu", 10 * 2048, (void **)&base), 0);
    for (int i = 0; i < 10; i++)
        assert_int_equal(ferry_register_memory(e, base + i * 2048, 1024, "cpu", 1), 0);
    assert_int_equal(ferry_unregister_memory(e, base + 1000), FERRY_ENOTREG);
    assert_non_null(strstr(ferry_last_error(), "0x"));
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, ferry_engine_segment_name(e), &seg), 0);
    struct ferry_buffer_info info[16];
    size_t n = 0;
    assert_int_equal(ferry_segment_buffers(e, seg, info, 16, &n), 0);
    assert_int_equal(n, 10);
    for (int i = 9; i > 0; i--) {
        assert_int_equal(ferry_unregister_memory(e, base + i * 2048), 0);
        assert_int_equal(ferry_segment_buffers(e, seg, info, 16, &n), 0);
        assert_int_equal(n, (size_t)i);
        for (size_t k = 0; k < n; k++)
            assert_true(info[k].addr != (uint64_t)(uintptr_t)(base + i * 2048));
    }
    assert_int_equal(ferry_unregister_memory(e, base), 0);
    ferry_mem_free(e, "cpu", base, 10 * 2048);
    ferry_engine_destroy(e);
}

/* tcp_address_validation_test's cases through a real segment: a buffer of
 * 0x2000 bytes, and two adjacent ones of 0x1000 (a range across both is
 * refused: each request lies inside one buffer). */
static void address_validation_cases(void **state)
{
    (void)state;
    struct child_target t;
    assert_int_equal(child_target_start(&t, 0x2000, "cpu", 3), 0);
    ferry_engine *e = make_engine();
    char *local;
    assert_int_equal(ferry_mem_alloc(e, "cpu", 0x10000, (void **)&local), 0);
    assert_int_equal(ferry_register_memory(e, local, 0x10000, "cpu", 1), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, t.name, &seg), 0);
    const uint64_t b = t.addr;
    const struct {
        uint64_t off, len;
        int ok;
    } cases[] = {
        {0, 0x2000, 1},      {0, 0x100, 1},       {0x500, 0x500, 1}, {0x1FFF, 1, 1},   {0, 1, 1},
        {-0x500, 0x100, 0},  {0x2000, 0x100, 0},  {0x1F00, 0x200, 0}, {-0x100, 0x200, 0}, {0x2000, 1, 0},
        {-1, 1, 0},
    };
    int err;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int st = run_one_polled(e, FERRY_WRITE, local, seg, b + cases[i].off, cases[i].len, &err);
        if (cases[i].ok && (st != FERRY_COMPLETED || err))
            fail_msg("case %zu (%+lld, %llu): state %d %s", i, (long long)cases[i].off,
                     (unsigned long long)cases[i].len, st, ferry_err_name(err));
        if (!cases[i].ok && (st != -1 || err != FERRY_ERANGE))
            fail_msg("case %zu (%+lld, %llu): state %d %s, not refused at submit", i, (long long)cases[i].off,
                     (unsigned long long)cases[i].len, st, ferry_err_name(err));
    }
    /* AdjacentBuffers: on this engine's own segment, two registrations that touch */
    ferry_segment_t own;
    assert_int_equal(ferry_open_segment(e, ferry_engine_segment_name(e), &own), 0);
    uint64_t l = (uint64_t)(uintptr_t)local;
    assert_int_equal(ferry_unregister_memory(e, local), 0);
    assert_int_equal(ferry_register_memory(e, local, 0x8000, "cpu", 0), 0);
    assert_int_equal(ferry_register_memory(e, local + 0x8000, 0x1000, "cpu", 1), 0);
    assert_int_equal(ferry_register_memory(e, local + 0x9000, 0x1000, "cpu", 1), 0);
    assert_int_equal(run_one_polled(e, FERRY_WRITE, local, own, l + 0x8000, 0x1000, &err), FERRY_COMPLETED);
    assert_int_equal(run_one_polled(e, FERRY_WRITE, local, own, l + 0x9000, 0x1000, &err), FERRY_COMPLETED);
    /* refused by submit, or (its descriptor of the segment predates the two)
     * by the target's own check */
    int st = run_one_polled(e, FERRY_WRITE, local, own, l + 0x8800, 0x1000, &err);
    assert_true(st == -1 || st == FERRY_FAILED);
    assert_int_equal(err, FERRY_ERANGE);
    /* EmptyBufferList: a segment that publishes nothing refuses everything */
    assert_int_equal(child_target_unregister(&t), 0);
    assert_int_equal(ferry_close_segment(e, seg), 0);
    assert_int_equal(ferry_open_segment(e, t.name, &seg), 0);
    assert_int_equal(run_one_polled(e, FERRY_WRITE, local, seg, b, 0x100, &err), -1);
    assert_int_equal(err, FERRY_ERANGE);
    ferry_engine_destroy(e);
    child_target_kill(&t);
}

/* RejectedWriteMustFail / V2ReadRoundTripAndRejectedRead: the target refuses
 * a range its own registry no longer holds (the initiator's descriptor still
 * lists it), the request ends FAILED, and the same peer serves the next ones
 * (a WRITE, then a READ back that matches). */
static void refused_by_the_target_then_served(void **state)
{
    (void)state;
    struct child_target t;
    assert_int_equal(child_target_start(&t, 1u << 20, "cpu", 9), 0);
    ferry_engine *e = make_engine();
    char *local;
    assert_int_equal(ferry_mem_alloc(e, "cpu", 1u << 20, (void **)&local), 0);
    assert_int_equal(ferry_register_memory(e, local, 1u << 20, "cpu", 0), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, t.name, &seg), 0);
    int err;
    assert_int_equal(child_target_unregister(&t), 0);
    for (int opcode = FERRY_READ; opcode <= FERRY_WRITE; opcode++) {
        assert_int_equal(run_one_polled(e, opcode, local, seg, t.addr, 65536, &err), FERRY_FAILED);
        assert_int_equal(err, FERRY_ERANGE);
    }
    assert_int_equal(child_target_register(&t), 0);
    pattern_fill(local, 65536, 21, 0);
    assert_int_equal(run_one_polled(e, FERRY_WRITE, local, seg, t.addr, 65536, &err), FERRY_COMPLETED);
    memset(local + 65536, 0, 65536);
    assert_int_equal(run_one_polled(e, FERRY_READ, local + 65536, seg, t.addr, 65536, &err), FERRY_COMPLETED);
    assert_int_equal(pattern_check(local + 65536, 65536, 21, 0), -1);
    ferry_engine_destroy(e);
    child_target_kill(&t);
}

/* CompletedWriteIsVisibleToSubsequentRead: while other threads write other
 * regions of the same segment, each COMPLETED write of a large region is
 * entirely in place when the initiator looks (its own segment: it reads the
 * target memory directly), with no drain to wait for. */
struct noise {
    ferry_engine *e;
    ferry_segment_t seg;
    char *src;
    uint64_t dst;
    atomic_int *stop;
    int failures;
};

static void *noise_main(void *arg)
{
    struct noise *n = arg;
    memset(n->src, 0x5A, 65536);
    while (!atomic_load(n->stop)) {
        int err;
        if (run_one_polled(n->e, FERRY_WRITE, n->src, n->seg, n->dst, 65536, &err) != FERRY_COMPLETED)
            n->failures++;
    }
    return NULL;
}

static void completed_write_is_visible(void **state)
{
    (void)state;
    ferry_engine *e = make_engine();
    const size_t region = 4u << 20, big = 3u << 20;
    char *base;
    assert_int_equal(ferry_mem_alloc(e, "cpu", 8 * region, (void **)&base), 0);
    assert_int_equal(ferry_register_memory(e, base, 8 * region, "cpu", 1), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, ferry_engine_segment_name(e), &seg), 0);
    atomic_int stop = 0;
    struct noise noise[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        noise[i] = (struct noise){e, seg, base + (size_t)(3 + 2 * i) * region,
                                  (uint64_t)(uintptr_t)(base + (size_t)(4 + 2 * i) * region), &stop, 0};
        assert_int_equal(pthread_create(&th[i], NULL, noise_main, &noise[i]), 0);
    }
    char *src = base + region;
    int torn = 0, err;
    for (int iter = 1; iter <= 20; iter++) {
        memset(src, iter, big);
        assert_int_equal(run_one_polled(e, FERRY_WRITE, src, seg, (uint64_t)(uintptr_t)base, big, &err),
                         FERRY_COMPLETED);
        torn += memcmp(base, src, big) != 0;
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(torn, 0);
    assert_int_equal(noise[0].failures + noise[1].failures, 0);
    ferry_engine_destroy(e);
}

int main(void)
{
    srand48(12345);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(write_then_read_on_own_segment),
        cmocka_unit_test(ten_buffers_registered_and_removed),
        cmocka_unit_test(address_validation_cases),
        cmocka_unit_test(refused_by_the_target_then_served),
        cmocka_unit_test(completed_write_is_visible),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

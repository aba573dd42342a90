/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_tcp_bounce_idle.c — a tcp target's pinned bounce for device memory
 * (src/transport/tcp/tcp_serve_dev.c) is given back once its connection is
 * quiet (BOUNCE_IDLE_MS, tcp_serve.c), not held until the idle timeout: at
 * 4 MiB a connection, 256 connections that once touched device memory held
 * 1 GiB of pinned memory for two minutes.  Two engines of this process over
 * tcp, the target's buffer in sim device memory, the idle timeout at ten
 * minutes: after a WRITE the sim device sees the bounce freed (its
 * host_free count) while the connection stays open (no descriptor closed),
 * and a READ then allocates one again and brings the WRITE's bytes back.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "device/sim_internal.h"
#include "ferry.h"
#include "testutil.h"

#define LEN ((size_t)1 << 20)
#define GUARD_MS 30000 /* a hang guard only, not a measurement */

static ferry_engine *engine(void)
{
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = "tcp";
    cfg.idle_timeout_ms = 600000;
    ferry_engine *e = NULL;
    int rc = ferry_engine_create(&cfg, &e);
    if (rc)
        fail_msg("engine: %s: %s", ferry_err_name(rc), ferry_last_error());
    return e;
}

static void move(ferry_engine *e, int op, void *local, ferry_segment_t seg, uint64_t remote)
{
    struct ferry_request r = {op, local, seg, remote, LEN};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &r, 1), 0);
    int rc = ferry_batch_wait(b, GUARD_MS);
    if (rc)
        fail_msg("%s: %s: %s", op == FERRY_WRITE ? "WRITE" : "READ", ferry_err_name(rc), ferry_last_error());
    ferry_batch_free(b);
}

static void test_bounce_given_back_when_quiet(void **state)
{
    (void)state;
    ferry_engine *target = engine(), *init = engine();
    void *dev;
    assert_int_equal(ferry_mem_alloc(target, "sim:0", LEN, &dev), 0);
    assert_int_equal(ferry_register_memory(target, dev, LEN, "sim:0", 1), 0);
    char *local = malloc(LEN);
    assert_non_null(local);
    assert_int_equal(ferry_register_memory(init, local, LEN, "cpu", 0), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(init, ferry_engine_segment_name(target), &seg), 0);

    pattern_fill(local, LEN, 3, 0);
    uint64_t allocs = atomic_load(&sim_hw.calls[SIM_OP_HOST_ALLOC]);
    move(init, FERRY_WRITE, local, seg, (uint64_t)(uintptr_t)dev);
    assert_true(atomic_load(&sim_hw.calls[SIM_OP_HOST_ALLOC]) > allocs); /* the target's bounce */
    uint64_t frees = atomic_load(&sim_hw.host_frees);
    struct census open = census_now();

    struct timespec nap = {0, 20 * 1000000L};
    for (unsigned waited = 0; atomic_load(&sim_hw.host_frees) == frees; waited += 20) {
        if (waited >= GUARD_MS)
            fail_msg("the quiet connection still holds its bounce after %u ms", waited);
        nanosleep(&nap, NULL);
    }
    assert_int_equal(census_now().fds, open.fds); /* the connection is still there */

    allocs = atomic_load(&sim_hw.calls[SIM_OP_HOST_ALLOC]);
    memset(local, 0, LEN);
    move(init, FERRY_READ, local, seg, (uint64_t)(uintptr_t)dev);
    assert_true(atomic_load(&sim_hw.calls[SIM_OP_HOST_ALLOC]) > allocs); /* a bounce again */
    assert_int_equal(pattern_check(local, LEN, 3, 0), -1);

    ferry_close_segment(init, seg);
    ferry_engine_destroy(init);
    ferry_unregister_memory(target, dev);
    ferry_mem_free(target, "sim:0", dev, LEN);
    ferry_engine_destroy(target);
    free(local);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bounce_given_back_when_quiet),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

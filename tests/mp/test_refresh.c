/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_refresh.c — a segment refresh must not cancel what is in flight.
 *
 * A request with a remote range outside the target's buffers makes the
 * engine re-fetch the target's descriptor once (it may have registered more
 * memory).  The target did not restart, so the requests other threads have
 * on the wire to it must complete: vLLM's 10-thread sender pool saw them end
 * FERRY_ECANCELED when one request had a bad range.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "testutil.h"

#define TSIZE (32u << 20)
#define SEED 41
#define BLOCK (1u << 20)

static void bad_range_refresh_keeps_requests_in_flight(void **state)
{
    (void)state;
    struct child_target t;
    assert_int_equal(child_target_start(&t, TSIZE, "cpu", SEED), 0);
    ferry_engine *e;
    assert_int_equal(ferry_engine_create(NULL, &e), 0);
    char *local = malloc(TSIZE);
    pattern_fill(local, TSIZE, 7, 0);
    assert_int_equal(ferry_register_memory(e, local, TSIZE, "cpu", 0), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, t.name, &seg), 0);
    for (int round = 0; round < 5; round++) {
        size_t n = TSIZE / BLOCK;
        struct ferry_request *q = calloc(n, sizeof *q);
        for (size_t i = 0; i < n; i++)
            q[i] = (struct ferry_request){FERRY_WRITE, local + i * BLOCK, seg, t.addr + i * BLOCK, BLOCK};
        ferry_batch *big, *bad;
        assert_int_equal(ferry_batch_alloc(e, n, &big), 0);
        assert_int_equal(ferry_batch_submit(big, q, n), 0);
        /* while those are on the wire: one request past the end of the target */
        struct ferry_request out = {FERRY_WRITE, local, seg, t.addr + TSIZE, 4096};
        assert_int_equal(ferry_batch_alloc(e, 1, &bad), 0);
        assert_int_equal(ferry_batch_submit(bad, &out, 1), FERRY_ERANGE);
        int rc = ferry_batch_wait(big, -1);
        if (rc)
            fail_msg("round %d: requests in flight ended %s: %s", round, ferry_err_name(rc), ferry_last_error());
        ferry_batch_free(big);
        ferry_batch_free(bad);
        free(q);
    }
    assert_int_equal(child_target_check(&t, 0, TSIZE, 7), -1);
    ferry_engine_destroy(e);
    child_target_kill(&t);
    free(local);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_range_refresh_keeps_requests_in_flight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

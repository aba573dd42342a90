/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_bench_cost.c — ferry-bench's cost helpers (tools/bench_cost.c): the
 * latency histogram's percentiles against exact ones, its edges (empty,
 * small values, values past the last bucket, merging), and the target's
 * serve meter keeping idle time before the first and after the last served
 * byte out of its interval.  Single-threaded; no timing assumptions.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>

#include "bench_cost.h"

/* within 1/64 (one bucket) above the exact value, never below it */
static void assert_close_above(uint64_t got, uint64_t exact)
{
    assert_true(got >= exact);
    assert_true((double)got <= (double)exact * (1.0 + 1.0 / 64) + 1);
}

static void test_quantiles_uniform(void **state)
{
    (void)state;
    struct lat_hist *h = calloc(1, sizeof *h);
    assert_non_null(h);
    assert_int_equal(lat_hist_quantile(h, 0.5), 0); /* empty */
    for (uint64_t us = 1; us <= 1000; us++)
        lat_hist_add(h, us * 1000);
    assert_int_equal(h->total, 1000);
    assert_close_above(lat_hist_quantile(h, 0.50), 500000);
    assert_close_above(lat_hist_quantile(h, 0.99), 990000);
    assert_close_above(lat_hist_quantile(h, 1.0), 1000000);
    assert_close_above(lat_hist_quantile(h, 0.001), 1000);
    free(h);
}

static void test_quantiles_edges(void **state)
{
    (void)state;
    struct lat_hist *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    assert_non_null(a);
    assert_non_null(b);
    for (uint64_t v = 0; v < 64; v++)   /* below 64 ns every value has its bucket */
        lat_hist_add(a, v);
    assert_int_equal(lat_hist_quantile(a, 1.0), 63);
    assert_int_equal(lat_hist_quantile(a, 0.5), 31);
    lat_hist_add(b, UINT64_MAX);        /* past the last bucket: clamped, counted */
    lat_hist_add(b, 1ull << 50);
    lat_hist_merge(a, b);
    assert_int_equal(a->total, 66);
    assert_true(lat_hist_quantile(a, 1.0) >= (1ull << 50) - 1);
    assert_int_equal(lat_hist_quantile(a, 0.5), 32);
    free(a);
    free(b);
}

static void test_serve_meter_interval(void **state)
{
    (void)state;
    struct serve_meter m;
    serve_meter_init(&m, 1000, 10.0);
    serve_meter_sample(&m, 1000, 11.0);  /* idle before: not counted */
    assert_false(m.started);
    serve_meter_sample(&m, 5000, 12.0);
    serve_meter_sample(&m, 9000, 13.0);
    serve_meter_sample(&m, 9000, 14.0);  /* idle after: not counted */
    serve_meter_sample(&m, 9000, 15.0);
    assert_true(m.started);
    assert_true(m.first_t == 11.0);
    assert_true(m.busy_t == 13.0);
    assert_int_equal(m.busy_bytes - m.first_bytes, 8000);
    assert_true(m.busy_cpu >= m.first_cpu);
    assert_true(m.prev_t == 15.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantiles_uniform),
        cmocka_unit_test(test_quantiles_edges),
        cmocka_unit_test(test_serve_meter_interval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

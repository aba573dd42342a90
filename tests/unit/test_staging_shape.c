/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_staging_shape.c — how a staging pool's pinned memory (chunks x chunk
 * size, the bound) is cut into chunks when frames are at most a slice
 * (staging_pool_shape): the default 16 x 2 MiB with 1 MiB slices is 32 x
 * 1 MiB, the bytes never grow, no chunk is smaller than a frame, and the
 * count stops at STAGING_POOL_CHUNKS_MAX.  Then the engine: a device pool it
 * creates with the default knobs has 32 chunks (the aggregation knob, which
 * counts chunks, takes 32 and refuses 33; it took at most 16 before).  One
 * thread; the engine on the sim device.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "err.h"
#include "ferry.h"
#include "staging/staging.h"

#define MiB ((size_t)1 << 20)

/* The pool shape of chunks x chunk_size with frames of frame_max: checks
 * the invariants, and that it is want_n x want_size. */
static void shape(size_t chunk_size, unsigned chunks, size_t frame_max, unsigned want_n, size_t want_size)
{
    size_t size = 0;
    unsigned n = 0;
    staging_pool_shape(chunk_size, chunks, frame_max, &size, &n);
    assert_true((uint64_t)n * size <= (uint64_t)chunks * chunk_size);  /* the memory bound holds */
    assert_true(frame_max == 0 || frame_max > chunk_size || size >= frame_max); /* a frame fits a chunk */
    assert_true(n >= chunks);
    assert_int_equal(n, want_n);
    assert_int_equal(size, want_size);
}

static void defaults_cut_in_two(void **state)
{
    (void)state;
    shape(2 * MiB, 16, MiB, 32, MiB);   /* FERRY_STAGING_CHUNKS x FERRY_STAGING_CHUNK_SIZE, 1 MiB slices */
    shape(8 * MiB, 16, MiB, 128, MiB);  /* tests/npu/run.sh's 8 MiB chunks: 128 MiB as before */
}

static void kept_as_given(void **state)
{
    (void)state;
    shape(MiB, 16, MiB, 16, MiB);                   /* chunk = slice */
    shape(3 * MiB / 2, 16, MiB, 16, 3 * MiB / 2);   /* under two frames: not cut */
    shape(2 * MiB, 16, 0, 16, 2 * MiB);             /* no frame bound */
    shape(MiB, 16, 2 * MiB, 16, MiB);               /* frames larger than chunks: as given (the engine refuses it) */
    shape(2 * MiB, 300, MiB, 300, 2 * MiB);         /* already over the cap */
}

static void count_capped(void **state)
{
    (void)state;
    shape(64 * MiB, 16, 4096, STAGING_POOL_CHUNKS_MAX, 4 * MiB);    /* 16 x 64 MiB: 256 x 4 MiB, not 262,144 */
    shape(3 * MiB, 200, MiB, 200, 3 * MiB);                         /* 600 would pass the cap: 256 / 200 = 1 */
    shape(3 * MiB, 100, MiB, 200, 3 * MiB / 2);                     /* 300 would: two each, 1.5 MiB */
}

/* Registers 1 MiB of sim:0 memory in a fresh engine (its first device
 * memory: the pool is created) with FERRY_STAGING_AGGREGATE_BUFFERS=buffers;
 * returns what registration returned. */
static int register_with_buffers(const char *buffers)
{
    setenv("FERRY_STAGING_AGGREGATE", "1M", 1);
    setenv("FERRY_STAGING_AGGREGATE_BUFFERS", buffers, 1);
    struct ferry_config c;
    ferry_engine *e = NULL;
    ferry_config_init(&c);
    assert_int_equal(ferry_engine_create(&c, &e), 0);
    void *p = NULL;
    assert_int_equal(ferry_mem_alloc(e, "sim:0", MiB, &p), 0);
    int rc = ferry_register_memory(e, p, MiB, "sim:0", 1);
    char msg[256];
    snprintf(msg, sizeof msg, "%s", ferry_last_error());
    if (rc == 0)
        assert_int_equal(ferry_unregister_memory(e, p), 0);
    ferry_mem_free(e, "sim:0", p, MiB);
    ferry_engine_destroy(e);
    unsetenv("FERRY_STAGING_AGGREGATE");
    unsetenv("FERRY_STAGING_AGGREGATE_BUFFERS");
    if (rc)
        ferry_fail(rc, "%s", msg);
    return rc;
}

static void engine_pool_has_32_chunks(void **state)
{
    (void)state;
    unsetenv("FERRY_STAGING_CHUNKS");
    unsetenv("FERRY_STAGING_CHUNK_SIZE");
    unsetenv("FERRY_SLICE_SIZE");
    assert_int_equal(register_with_buffers("32"), 0);
    assert_int_equal(register_with_buffers("33"), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "0..32"));
    setenv("FERRY_SLICE_SIZE", "2M", 1);    /* chunks of one slice: not cut */
    assert_int_equal(register_with_buffers("17"), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "0..16"));
    unsetenv("FERRY_SLICE_SIZE");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults_cut_in_two),
        cmocka_unit_test(kept_as_given),
        cmocka_unit_test(count_capped),
        cmocka_unit_test(engine_pool_has_32_chunks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

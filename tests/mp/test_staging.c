/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_staging.c — transfers whose memory no transport can touch directly,
 * on the strict sim device: cpu->sim, sim->cpu, sim->sim, WRITE and READ,
 * several block sizes and batches, data verified; a pool of one chunk (frames
 * wait their turn); wrong-kind and absent-device registrations.  Any code
 * path that touched sim memory without the device's copies would crash here.
 *
 * When the environment names FERRY_TEST_DEVICE (e.g. "cuda:0"), the same
 * matrix runs with that device instead of sim (the GPU machine does this);
 * FERRY_TEST_OTHER_DEVICE (e.g. "sim:0") adds that device on the other side
 * (npu:0 <-> sim:0 with the fake ACL runtime).  On NPUs blocks start at
 * 64-byte aligned addresses, as ACL's async copies require.
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
#include "xfer_pair.h"

#define TSIZE (32u << 20)
#define TSEED 21

static int start(void **state, const char *local_loc, const char *target_loc, unsigned chunks)
{
    struct xfer_pair *f = calloc(1, sizeof *f);
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    if (chunks) {
        cfg.staging_chunks = chunks;
        cfg.staging_chunk_size = cfg.slice_size;
    }
    xfer_pair_start(f, TSIZE, target_loc, TSEED, &cfg, local_loc);
    *state = f;
    return 0;
}

static int setup_dev_to_other(void **s) { return start(s, test_device_location(), test_other_location(), 0); }
static int setup_other_to_dev(void **s) { return start(s, test_other_location(), test_device_location(), 0); }
static int setup_dev_to_cpu(void **s) { return start(s, test_device_location(), "cpu", 0); }
static int setup_cpu_to_dev(void **s) { return start(s, "cpu", test_target_location(), 0); }
static int setup_dev_to_dev(void **s) { return start(s, test_device_location(), test_target_location(), 0); }
static int setup_one_chunk(void **s) { return start(s, test_device_location(), test_target_location(), 1); }

/* n blocks of bs bytes, block i at offset base + i*stride on both sides,
 * moved and verified (see xfer_pair_move); a READ brings the target's own
 * pattern (TSEED), whatever seed says. */
static void run(struct xfer_pair *f, int op, size_t bs, size_t n, uint64_t base, uint64_t stride, uint64_t seed)
{
    xfer_pair_move_ok(f, op, (struct xfer_blocks){bs, n, base, stride}, op == FERRY_READ ? TSEED : seed, 120000);
}

static void matrix(void **state)
{
    struct xfer_pair *f = *state;
    struct ferry_stats before, after;
    assert_int_equal(ferry_get_stats(f->e, &before), 0);
    /* 4000: packed pieces of a frame land at offsets that are not multiples of 64 */
    static const size_t sizes[] = {4000, 4096, 65536, 1u << 20, (3u << 20) + 8};
    static const size_t batches[] = {1, 128, 64};
    int npu = strncmp(test_device_location(), "npu", 3) == 0;
    /* FERRY_TEST_QUICK=1 (the fake ACL modes): the sizes that differ in kind */
    int quick = getenv("FERRY_TEST_QUICK") && strcmp(getenv("FERRY_TEST_QUICK"), "1") == 0;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        if (quick && (sizes[s] == 4096 || sizes[s] == 1u << 20))
            continue;
        for (size_t k = 0; k < (quick ? 2u : 3u); k++) {
            size_t bs = sizes[s], n = batches[k];
            uint64_t stride = bs + 8192;
            if (npu)
                stride = (stride + 63) & ~(uint64_t)63;
            while (n > 1 && stride * n > TSIZE / 2)
                n /= 2;
            run(f, FERRY_WRITE, bs, n, 0, stride, 100 + s);
            run(f, FERRY_READ, bs, n, TSIZE / 2, stride, 0);
        }
    }
    /* the path is visible: device memory on this side went through staging */
    assert_int_equal(ferry_get_stats(f->e, &after), 0);
    uint64_t staged = after.transports[0].bytes_staged - before.transports[0].bytes_staged;
    if (strcmp(f->loc, "cpu") == 0)
        assert_int_equal(staged, 0);
    else
        assert_true(staged > 0);
}

static void one_chunk_waits_its_turn(void **state)
{
    struct xfer_pair *f = *state;
    /* 128 frames through a single chunk: they queue, none fails */
    run(f, FERRY_WRITE, 1u << 20, 8, 0, 1u << 20, 7);
    run(f, FERRY_WRITE, 65536, 128, 0, 65536 + 4096, 8);
    run(f, FERRY_READ, 65536, 128, TSIZE / 2, 65536, 0);
}

/* FERRY_TCP_SPREAD=4 (16 cores' default) with FERRY_STAGING_AGGREGATE as
 * given, and FERRY_TCP_SPREAD_READ and FERRY_TCP_SPREAD_STAGED as given
 * (NULL: unset): the engine for the spread tests. */
static int start_spread(void **s, const char *aggregate, const char *read_spread, const char *staged_spread)
{
    setenv("FERRY_TCP_SPREAD", "4", 1);
    setenv("FERRY_STAGING_AGGREGATE", aggregate, 1);
    if (read_spread)
        setenv("FERRY_TCP_SPREAD_READ", read_spread, 1);
    if (staged_spread)
        setenv("FERRY_TCP_SPREAD_STAGED", staged_spread, 1);
    int rc = start(s, test_device_location(), "cpu", 0);
    unsetenv("FERRY_TCP_SPREAD");
    unsetenv("FERRY_STAGING_AGGREGATE");
    unsetenv("FERRY_TCP_SPREAD_READ");
    unsetenv("FERRY_TCP_SPREAD_STAGED");
    return rc;
}
static int setup_spread(void **s) { return start_spread(s, "0", NULL, NULL); }
static int setup_spread_aggregated(void **s) { return start_spread(s, "2M", NULL, "8"); }
static int setup_spread_read8(void **s) { return start_spread(s, "0", "8", NULL); }
static int setup_spread_staged8(void **s) { return start_spread(s, "0", NULL, "8"); }

/* tcp frames one staged submit of 128 x 4 KiB became (data verified) */
static uint64_t staged_frames(struct xfer_pair *f, int op, uint64_t base)
{
    struct ferry_stats before, after;
    assert_int_equal(ferry_get_stats(f->e, &before), 0);
    run(f, op, 4096, 128, base, 4096 + 512, 31);
    assert_int_equal(ferry_get_stats(f->e, &after), 0);
    return after.transports[0].frames_sent - before.transports[0].frames_sent;
}

/* With a spread of 4 a staged submit of small blocks goes as 4 frames (4
 * chunks gathered, 4 connections), as host memory's does; where the pool
 * gathers on the device (aggregation) it stays 2 frames of 64 blocks. */
static void staged_submit_spread(void **state)
{
    struct xfer_pair *f = *state;
    assert_int_equal(staged_frames(f, FERRY_WRITE, 0), 4);
    assert_int_equal(staged_frames(f, FERRY_READ, TSIZE / 2), 4);
}

/* A spread per direction (FERRY_TCP_SPREAD_READ=8, FERRY_TCP_SPREAD=4): a
 * staged READ submit of 128 x 4 KiB goes as 8 frames of 64 KiB, its WRITE
 * as 4. */
static void staged_read_spread_of_its_own(void **state)
{
    struct xfer_pair *f = *state;
    assert_int_equal(staged_frames(f, FERRY_WRITE, 0), 4);
    assert_int_equal(staged_frames(f, FERRY_READ, TSIZE / 2), 8);
}

/* A spread of staged frames of their own (FERRY_TCP_SPREAD_STAGED=8, where
 * FERRY_TCP_SPREAD=4 alone makes 4): a staged submit of 128 x 4 KiB goes
 * as 8 frames of 64 KiB both ways. */
static void staged_spread_of_its_own(void **state)
{
    struct xfer_pair *f = *state;
    assert_int_equal(staged_frames(f, FERRY_WRITE, 0), 8);
    assert_int_equal(staged_frames(f, FERRY_READ, TSIZE / 2), 8);
}

/* Where the pool gathers on the device it stays 2 frames of 64 blocks,
 * whatever the spread of staged frames (8 here). */
static void staged_submit_aggregated_not_spread(void **state)
{
    struct xfer_pair *f = *state;
    assert_int_equal(staged_frames(f, FERRY_WRITE, 0), 2);
    assert_int_equal(staged_frames(f, FERRY_READ, TSIZE / 2), 2);
}

static void wrong_kind_rejected(void **state)
{
    (void)state;
    ferry_engine *e;
    assert_int_equal(ferry_engine_create(NULL, &e), 0);
    char *host = malloc(1 << 20);
    void *dev;
    assert_int_equal(ferry_mem_alloc(e, "sim:0", 1 << 20, &dev), 0);
    /* host memory claimed to be device memory, and the other way round */
    assert_int_equal(ferry_register_memory(e, host, 1 << 20, "sim:0", 1), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "host memory"));
    assert_int_equal(ferry_register_memory(e, dev, 1 << 20, "cpu", 1), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "device memory"));
    assert_int_equal(ferry_register_memory(e, dev, 1 << 20, "sim:1", 1), FERRY_EINVAL);
    assert_int_equal(ferry_register_memory(e, dev, 1 << 20, "sim:9", 1), FERRY_ENODEV);
    /* detection: NULL location finds the device */
    assert_int_equal(ferry_register_memory(e, dev, 1 << 20, NULL, 1), 0);
    assert_int_equal(ferry_unregister_memory(e, dev), 0);
    void *p;
    if (!getenv("FERRY_TEST_DEVICE")) { /* on a GPU host cuda:0 exists */
        assert_int_equal(ferry_mem_alloc(e, "cuda:0", 4096, &p), FERRY_ENODEV);
        assert_int_equal(ferry_register_memory(e, host, 4096, "cuda:0", 1), FERRY_ENODEV);
    }
    assert_int_equal(ferry_mem_alloc(e, "npu:7", 4096, &p), FERRY_ENODEV);
    assert_int_equal(ferry_mem_alloc(e, "tpu:0", 4096, &p), FERRY_EINVAL);
    ferry_mem_free(e, "sim:0", dev, 1 << 20);
    ferry_engine_destroy(e);
    free(host);
}

int main(void)
{
    printf("staging tests on %s (target %s)%s%s\n", test_device_location(), test_target_location(),
           test_other_location() ? ", other device " : "", test_other_location() ? test_other_location() : "");
    const struct CMUnitTest other[] = {
        cmocka_unit_test_setup_teardown(matrix, setup_dev_to_other, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(matrix, setup_other_to_dev, xfer_pair_teardown),
    };
    if (test_other_location() && cmocka_run_group_tests_name("other device", other, NULL, NULL))
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(matrix, setup_dev_to_cpu, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(matrix, setup_cpu_to_dev, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(matrix, setup_dev_to_dev, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(one_chunk_waits_its_turn, setup_one_chunk, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(staged_submit_spread, setup_spread, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(staged_read_spread_of_its_own, setup_spread_read8, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(staged_spread_of_its_own, setup_spread_staged8, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(staged_submit_aggregated_not_spread, setup_spread_aggregated, xfer_pair_teardown),
        cmocka_unit_test(wrong_kind_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

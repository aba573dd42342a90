/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_cuda_shape.c — FERRY_CUDA_KERNEL_* (the CUDA gather/scatter kernel's
 * launch shape) parsed without a GPU: defaults, accepted values, and every
 * refusal with FERRY_EINVAL naming the variable.  One thread; each case
 * sets and clears the variables it uses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "device/cuda_shape.h"
#include "err.h"

static const char *const vars[] = {"FERRY_CUDA_KERNEL_TILE", "FERRY_CUDA_KERNEL_CTAS", "FERRY_CUDA_KERNEL_THREADS",
                                   "FERRY_CUDA_KERNEL_LOADS", "FERRY_CUDA_KERNEL_H2D_MAX",
                                   "FERRY_CUDA_KERNEL_H2D_ONE_MAX", "FERRY_CUDA_KERNEL_H2D_CALL_MIN",
                                   "FERRY_CUDA_KERNEL_COPIES",
                                   "FERRY_CUDA_KERNEL_BULK", "FERRY_CUDA_KERNEL_H2D_THREADS",
                                   "FERRY_CUDA_KERNEL_H2D_TILE", "FERRY_CUDA_KERNEL_H2D_GRID",
                                   "FERRY_CUDA_KERNEL_H2D_GRID_BYTES", "FERRY_CUDA_KERNEL_D2D_TILE"};

static int clear_vars(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
    return 0;
}

static void defaults(void **state)
{
    (void)state;
    struct cuda_shape s;
    memset(&s, 0xff, sizeof s);
    assert_int_equal(cuda_shape_read(&s), 0);
    assert_int_equal(s.tile_shift, 12);
    assert_int_equal(s.ctas_per_sm, 4);
    assert_int_equal(s.threads, 256);
    assert_int_equal(s.loads, 4);
    assert_int_equal(s.h2d_max, strtoull(CUDA_SHAPE_H2D_MAX_DEFAULT, NULL, 10));
    assert_int_equal(s.h2d_one_max, strtoull(CUDA_SHAPE_H2D_ONE_MAX_DEFAULT, NULL, 10));
    assert_int_equal(s.h2d_call_min, strtoull(CUDA_SHAPE_H2D_CALL_MIN_DEFAULT, NULL, 10));
    assert_int_equal(s.copies, 128);
    assert_int_equal(s.bulk, 0);
    assert_int_equal(s.h2d_threads, strtoull(CUDA_SHAPE_H2D_THREADS_DEFAULT, NULL, 10));
    assert_int_equal(s.h2d_tile_shift, 0);
    assert_int_equal(s.d2d_tile_shift, 14);
    assert_int_equal(s.h2d_grid, strtoull(CUDA_SHAPE_H2D_GRID_DEFAULT, NULL, 10));
    assert_int_equal(s.h2d_grid_bytes, strtoull(CUDA_SHAPE_H2D_GRID_BYTES_DEFAULT, NULL, 10));
    setenv("FERRY_CUDA_KERNEL_TILE", "", 1); /* empty: the default */
    assert_int_equal(cuda_shape_read(&s), 0);
    assert_int_equal(s.tile_shift, 12);
}

static void accepted(void **state)
{
    (void)state;
    setenv("FERRY_CUDA_KERNEL_TILE", "1024", 1);
    setenv("FERRY_CUDA_KERNEL_CTAS", "8", 1);
    setenv("FERRY_CUDA_KERNEL_THREADS", "128", 1);
    setenv("FERRY_CUDA_KERNEL_LOADS", "8", 1);
    setenv("FERRY_CUDA_KERNEL_H2D_MAX", "0", 1);
    setenv("FERRY_CUDA_KERNEL_H2D_ONE_MAX", "65536", 1);
    setenv("FERRY_CUDA_KERNEL_H2D_CALL_MIN", "4194304", 1);
    setenv("FERRY_CUDA_KERNEL_COPIES", "1024", 1);
    setenv("FERRY_CUDA_KERNEL_BULK", "1", 1);
    setenv("FERRY_CUDA_KERNEL_H2D_THREADS", "64", 1);
    setenv("FERRY_CUDA_KERNEL_H2D_TILE", "2048", 1);
    setenv("FERRY_CUDA_KERNEL_H2D_GRID", "48", 1);
    setenv("FERRY_CUDA_KERNEL_H2D_GRID_BYTES", "0", 1);
    setenv("FERRY_CUDA_KERNEL_D2D_TILE", "0", 1); /* the D2D launches keep FERRY_CUDA_KERNEL_TILE */
    struct cuda_shape s;
    assert_int_equal(cuda_shape_read(&s), 0);
    assert_int_equal(s.tile_shift, 10);
    assert_int_equal(s.ctas_per_sm, 8);
    assert_int_equal(s.threads, 128);
    assert_int_equal(s.loads, 8);
    assert_int_equal(s.h2d_max, 0);
    assert_int_equal(s.h2d_one_max, 65536);
    assert_int_equal(s.h2d_call_min, 4194304);
    assert_int_equal(s.copies, 1024);
    assert_int_equal(s.bulk, 1);
    assert_int_equal(s.h2d_threads, 64);
    assert_int_equal(s.h2d_tile_shift, 11);
    assert_int_equal(s.h2d_grid, 48);
    assert_int_equal(s.h2d_grid_bytes, 0);
    assert_int_equal(s.d2d_tile_shift, 0);
    setenv("FERRY_CUDA_KERNEL_D2D_TILE", "65536", 1);
    assert_int_equal(cuda_shape_read(&s), 0);
    assert_int_equal(s.d2d_tile_shift, 16);
    setenv("FERRY_CUDA_KERNEL_TILE", "1048576", 1);
    setenv("FERRY_CUDA_KERNEL_H2D_TILE", "1048576", 1);
    setenv("FERRY_CUDA_KERNEL_H2D_GRID", "65536", 1);
    setenv("FERRY_CUDA_KERNEL_H2D_MAX", "1048576", 1);
    assert_int_equal(cuda_shape_read(&s), 0);
    assert_int_equal(s.tile_shift, 20);
    assert_int_equal(s.h2d_max, 1u << 20);
    assert_int_equal(s.h2d_tile_shift, 20);
    assert_int_equal(s.h2d_grid, 65536);
}

/* var=text must fail with FERRY_EINVAL, the message naming var and text,
 * and leave *out as it was. */
static void refused(const char *var, const char *text)
{
    clear_vars(NULL);
    setenv(var, text, 1);
    struct cuda_shape s;
    memset(&s, 0x5a, sizeof s);
    struct cuda_shape before = s;
    if (cuda_shape_read(&s) != FERRY_EINVAL)
        fail_msg("%s=\"%s\" accepted", var, text);
    const char *msg = ferry_last_error();
    if (strstr(msg, var) == NULL || strstr(msg, text) == NULL)
        fail_msg("%s=\"%s\": message \"%s\" does not name it", var, text, msg);
    assert_memory_equal(&s, &before, sizeof s);
}

static void refusals(void **state)
{
    (void)state;
    refused("FERRY_CUDA_KERNEL_TILE", "512");         /* below 1 KiB */
    refused("FERRY_CUDA_KERNEL_TILE", "2097152");     /* above 1 MiB */
    refused("FERRY_CUDA_KERNEL_TILE", "12288");       /* not a power of two */
    refused("FERRY_CUDA_KERNEL_TILE", "16K");         /* a suffix */
    refused("FERRY_CUDA_KERNEL_CTAS", "0");
    refused("FERRY_CUDA_KERNEL_CTAS", "9");
    refused("FERRY_CUDA_KERNEL_CTAS", "-1");
    refused("FERRY_CUDA_KERNEL_THREADS", "16");
    refused("FERRY_CUDA_KERNEL_THREADS", "512");
    refused("FERRY_CUDA_KERNEL_THREADS", "100");      /* not whole warps */
    refused("FERRY_CUDA_KERNEL_LOADS", "6");
    refused("FERRY_CUDA_KERNEL_LOADS", "2");
    refused("FERRY_CUDA_KERNEL_LOADS", "four");
    refused("FERRY_CUDA_KERNEL_H2D_MAX", "1048577");
    refused("FERRY_CUDA_KERNEL_H2D_MAX", "+4096");
    refused("FERRY_CUDA_KERNEL_H2D_MAX", "99999999999999999999999");
    refused("FERRY_CUDA_KERNEL_H2D_ONE_MAX", "1048577");
    refused("FERRY_CUDA_KERNEL_H2D_ONE_MAX", "-1");
    refused("FERRY_CUDA_KERNEL_H2D_CALL_MIN", "1073741825");
    refused("FERRY_CUDA_KERNEL_H2D_CALL_MIN", "2M");
    refused("FERRY_CUDA_KERNEL_COPIES", "256");       /* between the two kernels */
    refused("FERRY_CUDA_KERNEL_COPIES", "64");
    refused("FERRY_CUDA_KERNEL_COPIES", "2048");
    refused("FERRY_CUDA_KERNEL_BULK", "2");
    refused("FERRY_CUDA_KERNEL_BULK", "yes");
    refused("FERRY_CUDA_KERNEL_H2D_THREADS", "48");   /* not whole warps */
    refused("FERRY_CUDA_KERNEL_H2D_THREADS", "288");
    refused("FERRY_CUDA_KERNEL_D2D_TILE", "512");     /* below 1 KiB */
    refused("FERRY_CUDA_KERNEL_D2D_TILE", "24576");   /* not a power of two */
    refused("FERRY_CUDA_KERNEL_D2D_TILE", "2097152");
    refused("FERRY_CUDA_KERNEL_D2D_TILE", "16K");
    refused("FERRY_CUDA_KERNEL_H2D_TILE", "512");     /* below 1 KiB */
    refused("FERRY_CUDA_KERNEL_H2D_TILE", "3072");    /* not a power of two */
    refused("FERRY_CUDA_KERNEL_H2D_TILE", "2097152");
    refused("FERRY_CUDA_KERNEL_H2D_GRID", "65537");
    refused("FERRY_CUDA_KERNEL_H2D_GRID", "-1");
    refused("FERRY_CUDA_KERNEL_H2D_GRID_BYTES", "1073741825");
    refused("FERRY_CUDA_KERNEL_H2D_GRID_BYTES", "1M");
}

/* The defaults cap a small H2D launch (a 128 x 4 KiB scatter batch, 512
 * KiB) at 32 CTAs, and leave larger ones, D2H and D2D, and small grids
 * alone. */
static void grid_cap(void **state)
{
    (void)state;
    struct cuda_shape s;
    assert_int_equal(cuda_shape_read(&s), 0);
    assert_int_equal(cuda_shape_grid_cap(&s, 1, 512 << 10, 528), 32);
    assert_int_equal(cuda_shape_grid_cap(&s, 1, 1 << 20, 528), 32);
    assert_int_equal(cuda_shape_grid_cap(&s, 1, (1 << 20) + 1, 528), 528); /* 128 x 16 KiB: 2 MiB */
    assert_int_equal(cuda_shape_grid_cap(&s, 0, 512 << 10, 528), 528);     /* D2H / D2D */
    assert_int_equal(cuda_shape_grid_cap(&s, 1, 4096, 16), 16);            /* already below the cap */
    setenv("FERRY_CUDA_KERNEL_H2D_GRID", "0", 1);
    assert_int_equal(cuda_shape_read(&s), 0);
    assert_int_equal(cuda_shape_grid_cap(&s, 1, 512 << 10, 528), 528);     /* off */
    setenv("FERRY_CUDA_KERNEL_H2D_GRID", "64", 1);
    setenv("FERRY_CUDA_KERNEL_H2D_GRID_BYTES", "1073741824", 1);
    assert_int_equal(cuda_shape_read(&s), 0);
    assert_int_equal(cuda_shape_grid_cap(&s, 1, (size_t)1 << 30, 528), 64); /* every launch */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(defaults, clear_vars),
        cmocka_unit_test_setup(accepted, clear_vars),
        cmocka_unit_test_setup(refusals, clear_vars),
        cmocka_unit_test_setup(grid_cap, clear_vars),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

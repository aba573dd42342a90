/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cuda_shape.c — reads the launch shape of the CUDA gather/scatter kernel
 * (tile, CTAs per SM, threads, loads in flight per thread, up to which
 * mean copy size H2D batches use it rather than the copy engine, and up to
 * which size a lone H2D copy does, from which size an H2D call of large
 * copies takes the copy engine, copies a launch, whether H2D uses its bulk-copy form, and H2D's own
 * threads, tile and grid cap) from the
 * FERRY_CUDA_KERNEL_* variables.  Called once by cuda_load(); no threads,
 * no state of its own.
 */
#include "device/cuda_shape.h"

#include <errno.h>
#include <stdlib.h>

#include "config.h"
#include "err.h"

/* name's value (def, a number, when unset or empty) from lo to hi
 * (config_env_number). */
static int env_number(const char *name, const char *def, unsigned long long lo, unsigned long long hi,
                      const char *wanted, unsigned long long *out)
{
    uint64_t v = 0;
    int rc = config_env_number(name, false, lo, hi, wanted, &v);
    if (rc < 0)
        return rc;
    *out = rc == 1 ? strtoull(def, NULL, 10) : v;
    return 0;
}

int cuda_shape_read(struct cuda_shape *out)
{
    unsigned long long tile = 0, ctas = 0, threads = 0, loads = 0, h2d = 0, h2d_one = 0, call_min = 0, copies = 0,
                       bulk = 0, h2d_threads = 0, h2d_tile = 0, h2d_grid = 0, d2d_tile = 0,
                       h2d_grid_bytes = 0;
    int rc = env_number("FERRY_CUDA_KERNEL_TILE", CUDA_SHAPE_TILE_DEFAULT, 1024, 1u << 20,
                        "bytes, a power of two from 1024 to 1048576", &tile);
    if (rc == 0 && (tile & (tile - 1)) != 0)
        rc = ferry_fail(FERRY_EINVAL, "FERRY_CUDA_KERNEL_TILE=\"%llu\": bytes, a power of two from 4096 to 1048576",
                        tile);
    if (rc == 0)
        rc = env_number("FERRY_CUDA_KERNEL_CTAS", CUDA_SHAPE_CTAS_DEFAULT, 1, 8, "CTAs per SM, 1 to 8", &ctas);
    if (rc == 0)
        rc = env_number("FERRY_CUDA_KERNEL_THREADS", CUDA_SHAPE_THREADS_DEFAULT, 32, CUDA_SHAPE_THREADS_MAX,
                        "threads per CTA, a multiple of 32 from 32 to 256", &threads);
    if (rc == 0 && threads % 32 != 0)
        rc = ferry_fail(FERRY_EINVAL, "FERRY_CUDA_KERNEL_THREADS=\"%llu\": threads per CTA, a multiple of 32 from 32 to 256",
                        threads);
    if (rc == 0)
        rc = env_number("FERRY_CUDA_KERNEL_LOADS", CUDA_SHAPE_LOADS_DEFAULT, 4, 8, "loads in flight per thread, 4 or 8",
                        &loads);
    if (rc == 0 && loads != 4 && loads != 8)
        rc = ferry_fail(FERRY_EINVAL, "FERRY_CUDA_KERNEL_LOADS=\"%llu\": loads in flight per thread, 4 or 8", loads);
    if (rc == 0)
        rc = env_number("FERRY_CUDA_KERNEL_H2D_MAX", CUDA_SHAPE_H2D_MAX_DEFAULT, 0, CUDA_SHAPE_MEAN_MAX,
                        "bytes, 0 to 1048576", &h2d);
    if (rc == 0)
        rc = env_number("FERRY_CUDA_KERNEL_H2D_ONE_MAX", CUDA_SHAPE_H2D_ONE_MAX_DEFAULT, 0, CUDA_SHAPE_MEAN_MAX,
                        "bytes, 0 to 1048576", &h2d_one);
    if (rc == 0)
        rc = env_number("FERRY_CUDA_KERNEL_H2D_CALL_MIN", CUDA_SHAPE_H2D_CALL_MIN_DEFAULT, 0, CUDA_SHAPE_CALL_MIN_MAX,
                        "bytes, 0 (off) to 1073741824", &call_min);
    if (rc == 0)
        rc = env_number("FERRY_CUDA_KERNEL_COPIES", CUDA_SHAPE_COPIES_DEFAULT, 128, 1024,
                        "copies one launch takes at most, 128 or 1024", &copies);
    if (rc == 0 && copies != 128 && copies != 1024)
        rc = ferry_fail(FERRY_EINVAL, "FERRY_CUDA_KERNEL_COPIES=\"%llu\": copies one launch takes at most, 128 or 1024",
                        copies);
    if (rc == 0)
        rc = env_number("FERRY_CUDA_KERNEL_BULK", CUDA_SHAPE_BULK_DEFAULT, 0, 1,
                        "0, or 1: H2D through bulk copies (TMA) on sm_90 and later", &bulk);
    if (rc == 0)
        rc = env_number("FERRY_CUDA_KERNEL_H2D_THREADS", CUDA_SHAPE_H2D_THREADS_DEFAULT, 0, CUDA_SHAPE_THREADS_MAX,
                        "0, or an H2D launch's threads per CTA, a multiple of 32 from 32 to 256", &h2d_threads);
    if (rc == 0 && h2d_threads % 32 != 0)
        rc = ferry_fail(FERRY_EINVAL,
                        "FERRY_CUDA_KERNEL_H2D_THREADS=\"%llu\": 0, or threads per CTA, a multiple of 32 from 32 to 256",
                        h2d_threads);
    if (rc == 0)
        rc = env_number("FERRY_CUDA_KERNEL_H2D_TILE", CUDA_SHAPE_H2D_TILE_DEFAULT, 0, 1u << 20,
                        "0, or bytes, a power of two from 1024 to 1048576", &h2d_tile);
    if (rc == 0 && h2d_tile && (h2d_tile < 1024 || (h2d_tile & (h2d_tile - 1)) != 0))
        rc = ferry_fail(FERRY_EINVAL,
                        "FERRY_CUDA_KERNEL_H2D_TILE=\"%llu\": 0, or bytes, a power of two from 1024 to 1048576",
                        h2d_tile);
    if (rc == 0)
        rc = env_number("FERRY_CUDA_KERNEL_D2D_TILE", CUDA_SHAPE_D2D_TILE_DEFAULT, 0, 1u << 20,
                        "0, or bytes, a power of two from 1024 to 1048576", &d2d_tile);
    if (rc == 0 && d2d_tile && (d2d_tile < 1024 || (d2d_tile & (d2d_tile - 1)) != 0))
        rc = ferry_fail(FERRY_EINVAL,
                        "FERRY_CUDA_KERNEL_D2D_TILE=\"%llu\": 0, or bytes, a power of two from 1024 to 1048576",
                        d2d_tile);
    if (rc == 0)
        rc = env_number("FERRY_CUDA_KERNEL_H2D_GRID", CUDA_SHAPE_H2D_GRID_DEFAULT, 0, CUDA_SHAPE_GRID_MAX,
                        "0, or CTAs an H2D launch takes at most, 1 to 65536", &h2d_grid);
    if (rc == 0)
        rc = env_number("FERRY_CUDA_KERNEL_H2D_GRID_BYTES", CUDA_SHAPE_H2D_GRID_BYTES_DEFAULT, 0,
                        CUDA_SHAPE_CALL_MIN_MAX, "bytes, 0 to 1073741824", &h2d_grid_bytes);
    if (rc < 0)
        return rc;
    out->tile_shift = 0;
    while ((1ull << out->tile_shift) < tile)
        out->tile_shift++;
    out->ctas_per_sm = (unsigned)ctas;
    out->threads = (unsigned)threads;
    out->loads = (unsigned)loads;
    out->h2d_max = (size_t)h2d;
    out->h2d_one_max = (size_t)h2d_one;
    out->h2d_call_min = (size_t)call_min;
    out->copies = (unsigned)copies;
    out->bulk = (unsigned)bulk;
    out->h2d_threads = (unsigned)h2d_threads;
    out->h2d_tile_shift = 0;
    while (h2d_tile && (1ull << out->h2d_tile_shift) < h2d_tile)
        out->h2d_tile_shift++;
    out->d2d_tile_shift = 0;
    while (d2d_tile && (1ull << out->d2d_tile_shift) < d2d_tile)
        out->d2d_tile_shift++;
    out->h2d_grid = (unsigned)h2d_grid;
    out->h2d_grid_bytes = (size_t)h2d_grid_bytes;
    return 0;
}

unsigned cuda_shape_grid_cap(const struct cuda_shape *s, int h2d, size_t bytes, unsigned max_ctas)
{
    if (h2d && s->h2d_grid && s->h2d_grid < max_ctas && bytes <= s->h2d_grid_bytes)
        return s->h2d_grid;
    return max_ctas;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cuda_shape.h — how the CUDA gather/scatter kernel is launched, read once
 * from FERRY_CUDA_KERNEL_* at load time (cuda_shape.c); no CUDA needed, so
 * the unit tests check the parsing on any machine.
 */
#ifndef FERRY_CUDA_SHAPE_H
#define FERRY_CUDA_SHAPE_H

#include <stddef.h>

/* Defaults, also the "default" column of the knob rows in cuda.c. */
#define CUDA_SHAPE_TILE_DEFAULT "4096"
#define CUDA_SHAPE_CTAS_DEFAULT "4"
#define CUDA_SHAPE_THREADS_DEFAULT "256"
#define CUDA_SHAPE_LOADS_DEFAULT "4"
#define CUDA_SHAPE_H2D_MAX_DEFAULT "1048576"
#define CUDA_SHAPE_H2D_ONE_MAX_DEFAULT "1048576"
#define CUDA_SHAPE_H2D_CALL_MIN_DEFAULT "2097152"
#define CUDA_SHAPE_CALL_MIN_MAX ((size_t)1 << 30)
/* FERRY_CUDA_KERNEL_H2D_CALL_MIN takes copies of at least this (average):
 * the copy engine's cost per copy sinks 16 KiB blocks (0.13 of a large
 * copy in calls of 64 on 4 streams, bench/h2d_probe.c), not 64 KiB ones */
#define CUDA_SHAPE_CALL_BLOCK_MIN ((size_t)64 << 10)
#define CUDA_SHAPE_COPIES_DEFAULT "128"
#define CUDA_SHAPE_BULK_DEFAULT "0"
/* The H2D (scatter) launches' own shape, 0: the one above.  Reads of host
 * memory cost the SMs a round trip each, writes (gather) do not, so the two
 * directions may want different CTAs (issue 16 item 1, h16z).  A small H2D
 * launch (FERRY_CUDA_KERNEL_H2D_GRID_BYTES, 1 MiB, at most) takes at most
 * FERRY_CUDA_KERNEL_H2D_GRID CTAs, 32, each copying its tiles one after
 * another: on one H200 a 128 x 4 KiB scatter batch (one 512 KiB launch)
 * went from 0.75-0.78 of a large H2D to 0.79-0.89 with 4 in flight
 * (four alternations in two calls), 128 x 16 KiB (2 MiB launches) stayed
 * at 0.91-0.94, but 1,024 x 16 KiB with 2 in flight lost (0.92-0.93 ->
 * 0.87-0.88) with the cap on every launch: hence the bound, under which
 * 2 MiB launches keep the SMs x FERRY_CUDA_KERNEL_CTAS grid
 * (docs/BENCHMARKS.md, h16z). */
#define CUDA_SHAPE_H2D_THREADS_DEFAULT "0"
#define CUDA_SHAPE_H2D_TILE_DEFAULT "0"
#define CUDA_SHAPE_H2D_GRID_DEFAULT "32"
#define CUDA_SHAPE_H2D_GRID_BYTES_DEFAULT "1048576"
#define CUDA_SHAPE_GRID_MAX 65536u
/* Device-to-device launches (GPU to GPU over CUDA IPC: the shm transport)
 * whose copies average at least CUDA_SHAPE_D2D_MEAN_MIN take tiles of
 * FERRY_CUDA_KERNEL_D2D_TILE: on one H200, 128 x 1 MiB cuda:0 -> cuda:0
 * moved 0.39-0.40 -> 0.44-0.45 of a same-device copy with 16 KiB tiles instead
 * of 4 KiB (WRITE and READ, four interleaved rounds, one thread; 64 KiB
 * blocks: no difference), docs/BENCHMARKS.md (h16d).  Smaller copies keep
 * FERRY_CUDA_KERNEL_TILE (a staging pool's device aggregation too). */
#define CUDA_SHAPE_D2D_TILE_DEFAULT "16384"
#define CUDA_SHAPE_D2D_MEAN_MIN ((size_t)256 << 10)

#define CUDA_SHAPE_THREADS_MAX 256       /* __launch_bounds__ of the kernel */
#define CUDA_SHAPE_MEAN_MAX ((size_t)1 << 20)

struct cuda_shape {
    unsigned tile_shift;   /* FERRY_CUDA_KERNEL_TILE = 1 << tile_shift bytes, 1 KiB..1 MiB */
    unsigned ctas_per_sm;  /* FERRY_CUDA_KERNEL_CTAS: grid at most this x the SMs, 1..8 */
    unsigned threads;      /* FERRY_CUDA_KERNEL_THREADS: per CTA, a multiple of 32, 32..256 */
    unsigned loads;        /* FERRY_CUDA_KERNEL_LOADS: 16-byte loads in flight per thread, 4 or 8 */
    size_t h2d_max;        /* FERRY_CUDA_KERNEL_H2D_MAX: H2D batches whose copies average more
                            * take the copy engine; 0..1 MiB */
    size_t h2d_one_max;    /* FERRY_CUDA_KERNEL_H2D_ONE_MAX: an H2D call of one copy larger than
                            * this takes the copy engine (a staging chunk's whole, bound for its
                            * device buffer); 0..1 MiB */
    size_t h2d_call_min;   /* FERRY_CUDA_KERNEL_H2D_CALL_MIN: 0, or an H2D call of at least this
                            * many bytes whose copies average CUDA_SHAPE_CALL_BLOCK_MIN or more
                            * takes the copy engine (several MiB a call: it reads host memory
                            * faster than the SMs there); 0..1 GiB */
    unsigned copies;       /* FERRY_CUDA_KERNEL_COPIES: copies one launch takes at most, 128 or
                            * 1024 (1024: kernel parameters over 4 KiB, CUDA 12.1+) */
    unsigned h2d_threads;  /* FERRY_CUDA_KERNEL_H2D_THREADS: an H2D launch's threads per CTA
                            * (0: threads), a multiple of 32, 32..256 */
    unsigned d2d_tile_shift; /* FERRY_CUDA_KERNEL_D2D_TILE = 1 << d2d_tile_shift bytes a D2D CTA
                              * copies at a time, copies of CUDA_SHAPE_D2D_MEAN_MIN or more on
                              * average (0 unset: tile_shift) */
    unsigned h2d_tile_shift; /* FERRY_CUDA_KERNEL_H2D_TILE = 1 << h2d_tile_shift bytes an H2D CTA
                              * copies at a time (0 unset: tile_shift) */
    unsigned h2d_grid;     /* FERRY_CUDA_KERNEL_H2D_GRID: 0, or the CTAs an H2D launch of at most
                            * h2d_grid_bytes takes at most (below the SMs x ctas_per_sm rule),
                            * 1..65536 */
    size_t h2d_grid_bytes; /* FERRY_CUDA_KERNEL_H2D_GRID_BYTES: H2D launches moving more bytes
                            * than this keep the SMs x ctas_per_sm rule; 0..1 GiB */
    unsigned bulk;         /* FERRY_CUDA_KERNEL_BULK: 1: H2D through the kernel's bulk-copy (TMA)
                            * form on sm_90 and later; 0: its 16-byte loads everywhere */
};

/* The CTAs a launch of the kernel takes at most: max_ctas (the SMs x
 * ctas_per_sm), or for an H2D launch (h2d) of at most h2d_grid_bytes
 * bytes, h2d_grid where that is set and smaller. */
unsigned cuda_shape_grid_cap(const struct cuda_shape *s, int h2d, size_t bytes, unsigned max_ctas);

/* Fills *out from the environment (defaults where unset).  0, or
 * FERRY_EINVAL naming the variable and what it accepts. */
int cuda_shape_read(struct cuda_shape *out);

#endif

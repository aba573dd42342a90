/* SPDX-License-Identifier: Apache-2.0 */
/*
 * staging_bench.c — the staging pipeline alone, no network, side by side
 * with its physical reference measured in the same run.
 *
 * For each block size (16 KiB, 64 KiB, 1 MiB by default) x batch 128 it
 * pushes scattered device blocks through a staging pool of the device:
 *   gather:  WRITE frames, device -> pinned chunks (the "wire" ends at once)
 *   scatter: READ frames, pinned chunks -> device
 * and prints GB/s next to one large pinned D2H (and H2D) copy of the same
 * device, measured right before, as a ratio.
 *
 *   staging_bench [location=cuda:0] [seconds=2] [block sizes...]
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "device/device.h"
#include "engine/slice.h"
#include "err.h"
#include "net.h"
#include "staging/staging.h"

#define BATCH 128

static atomic_size_t frames_done;

static void instant_wire(void *ctx, struct xfer_frame *f)
{
    (void)ctx;
    f->complete(f, 0, 0, "");
}

static void frame_done(struct xfer_frame *f, int err, uint64_t refused, const char *msg)
{
    (void)f;
    if (err || refused) {
        fprintf(stderr, "frame failed: %s %s\n", ferry_strerror(err), msg);
        exit(1);
    }
    atomic_fetch_add(&frames_done, 1);
}

static double now_s(void)
{
    return (double)now_ns() / 1e9;
}

/* one large copy, repeated for `seconds` */
static double reference(const struct ferry_device_ops *ops, int dev, enum ferry_copy_dir dir, void *dptr,
                        void *host, size_t len, double seconds)
{
    ferry_stream *s;
    if (ops->stream_create(dev, &s))
        return 0;
    struct ferry_copy c = dir == FERRY_COPY_D2H ? (struct ferry_copy){host, dptr, len}
                                                : (struct ferry_copy){dptr, host, len};
    ops->copy_async(s, dir, &c, 1); /* warm up */
    ops->stream_sync(s);
    size_t bytes = 0;
    double t0 = now_s(), t;
    do {
        ops->copy_async(s, dir, &c, 1);
        ops->stream_sync(s);
        bytes += len;
    } while ((t = now_s()) - t0 < seconds);
    ops->stream_destroy(s);
    return (double)bytes / (t - t0) / 1e9;
}

static double staged(struct staging_pool *pool, int op, char *dev, size_t bs, size_t chunk, double seconds)
{
    struct slice_req reqs[BATCH];
    for (size_t i = 0; i < BATCH; i++) /* blocks scattered with gaps, like KV blocks */
        reqs[i] = (struct slice_req){op, 1, 0, dev + i * (bs + 4096), i * bs, bs, (uint32_t)i};
    struct slice_plan plan;
    if (slice_plan_make(reqs, BATCH, chunk, 64, &plan))
        exit(1);
    size_t bytes = 0;
    double t0 = now_s(), t;
    do {
        atomic_store(&frames_done, 0);
        for (size_t i = 0; i < plan.nframes; i++) {
            plan.frames[i].complete = frame_done;
            plan.frames[i].deadline_ns = now_ns() + 60000000000ull;
            staging_submit(pool, &plan.frames[i]);
        }
        while (atomic_load(&frames_done) < plan.nframes)
            ;
        bytes += BATCH * bs;
    } while ((t = now_s()) - t0 < seconds);
    slice_plan_free(&plan);
    return (double)bytes / (t - t0) / 1e9;
}

int main(int argc, char **argv)
{
    const char *loc = argc > 1 ? argv[1] : "cuda:0";
    double seconds = argc > 2 ? atof(argv[2]) : 2.0;
    size_t sizes[8] = {16384, 65536, 1u << 20};
    int nsizes = 3;
    if (argc > 3)
        for (nsizes = 0; nsizes < 8 && 3 + nsizes < argc; nsizes++)
            sizes[nsizes] = strtoull(argv[3 + nsizes], NULL, 0);
    char kind[16];
    int dev;
    if (ferry_location_parse(loc, kind, &dev) || dev < 0) {
        fprintf(stderr, "bad location %s\n", loc);
        return 2;
    }
    const struct ferry_device_ops *ops = ferry_device_find(kind);
    if (!ops || ops->init() || dev >= ops->device_count()) {
        printf("SKIPPED: no device %s: %s\n", loc, ferry_last_error());
        return 77;
    }
    size_t chunk = getenv("FERRY_STAGING_CHUNK_SIZE") ? strtoull(getenv("FERRY_STAGING_CHUNK_SIZE"), 0, 0) : 2u << 20;
    unsigned nchunks = getenv("FERRY_STAGING_CHUNKS") ? (unsigned)atoi(getenv("FERRY_STAGING_CHUNKS")) : 16;
    size_t span = BATCH * ((1u << 20) + 4096);
    for (int i = 0; i < nsizes; i++)
        if (BATCH * (sizes[i] + 4096) > span)
            span = BATCH * (sizes[i] + 4096);
    void *dptr = NULL, *host = NULL, *base;
    size_t plen;
    struct staging_pool *pool;
    if (ops->mem_alloc(dev, span, &dptr) || ops->host_alloc(span, &host) ||
        staging_pool_create(ops, dev, chunk, nchunks, instant_wire, NULL, &pool, &base, &plen)) {
        fprintf(stderr, "setup: %s\n", ferry_last_error());
        if (host)
            ops->host_free(host);
        if (dptr)
            ops->mem_free(dev, dptr);
        return 1;
    }
    printf("# staging pipeline on %s: %u chunks x %zu KiB, batch %d, %.1f s per figure\n", loc, nchunks,
           chunk >> 10, BATCH, seconds);
    printf("| block | gather D2H GB/s | large D2H GB/s | ratio | scatter H2D GB/s | large H2D GB/s | ratio |\n");
    printf("|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nsizes; i++) {
        size_t bs = sizes[i];
        double d2h = reference(ops, dev, FERRY_COPY_D2H, dptr, host, span, seconds);
        double g = staged(pool, XFER_WRITE, dptr, bs, chunk, seconds);
        double h2d = reference(ops, dev, FERRY_COPY_H2D, dptr, host, span, seconds);
        double sc = staged(pool, XFER_READ, dptr, bs, chunk, seconds);
        printf("| %zu KiB | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |\n", bs >> 10, g, d2h, g / d2h, sc, h2d,
               sc / h2d);
        fflush(stdout);
    }
    staging_pool_destroy(pool);
    ops->host_free(host);
    ops->mem_free(dev, dptr);
    return 0;
}

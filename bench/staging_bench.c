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
 * device, measured right before, as a ratio, and the latency of a batch
 * (submit to its last frame's end) at the median and the 99th percentile.
 *
 *   staging_bench [--batch=128] [--depth=1] [--op=both] [--gap=0] [location=cuda:0] [seconds=2] [block sizes...]
 *
 * --depth: batches in flight at once (1: one after the other, what one
 * thread waiting for each batch sees; more: several requests staged at once).
 * --gap=US: the main thread sleeps US microseconds after a batch ends before
 * it submits it again (a caller with other work between batches, the wire
 * time of an end-to-end transfer): the pool's worker then sleeps between
 * batches, and the p50 / p99 show what its wake-up costs (GB/s counts the
 * gaps too).
 * --op=gather or --op=scatter measures one direction only ("-" in the other's
 * columns).  FERRY_TRACE=PATH writes the pool's timeline (stage_issue / stage_retired)
 * with each batch's submit and end (batch_submit / batch_woken) at exit; read it with bench/trace_batches.py.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "device/device.h"
#include "engine/slice.h"
#include "err.h"
#include "ferry.h"
#include "net.h"
#include "staging/staging.h"
#include "trace.h"

#define BATCH_MAX 4096
#define DEPTH_MAX 16
#define LAT_MAX (1u << 20)

static size_t batch = 128;
static unsigned depth = 1;
static unsigned gap_us;
static int ops_wanted = 3; /* bit 0: gather, bit 1: scatter */

/* One batch's frames; in flight until done == nframes. */
struct inflight {
    struct slice_plan plan;
    atomic_size_t done;
    uint64_t start_ns;
};

static void instant_wire(void *ctx, struct xfer_frame *f)
{
    (void)ctx;
    f->complete(f, 0, 0, "");
}

static void frame_done(struct xfer_frame *f, int err, uint64_t refused, const char *msg)
{
    if (err || refused) {
        fprintf(stderr, "frame failed: %s %s\n", ferry_strerror(err), msg);
        exit(1);
    }
    struct inflight *b = f->owner;
    atomic_fetch_add_explicit(&b->done, 1, memory_order_release);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
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

/* A batch's frames go to the pool together, as the engine hands them
 * (staging_submit_list: one group of copies for them). */
static void batch_submit(struct staging_pool *pool, struct inflight *b)
{
    atomic_store(&b->done, 0);
    b->start_ns = now_ns();
    TRACE(TR_BATCH_SUBMIT, b->plan.nframes);
    for (size_t i = 0; i < b->plan.nframes; i++) {
        b->plan.frames[i].complete = frame_done;
        b->plan.frames[i].owner = b;
        b->plan.frames[i].deadline_ns = b->start_ns + 60000000000ull;
        b->plan.frames[i].next = i + 1 < b->plan.nframes ? &b->plan.frames[i + 1] : NULL;
    }
    if (b->plan.nframes)
        staging_submit_list(pool, &b->plan.frames[0]);
}

struct result {
    double gbs;
    double p50_us, p99_us;
};

/* depth batches of `batch` blocks of bs bytes in flight; each one, once
 * done, is submitted again (the main thread polls, like a caller waiting). */
static struct result staged(struct staging_pool *pool, int op, char *dev, size_t bs, size_t slice, double seconds,
                            uint64_t *lat)
{
    static struct inflight b[DEPTH_MAX];
    static struct slice_req reqs[BATCH_MAX];
    for (unsigned d = 0; d < depth; d++) {
        for (size_t i = 0; i < batch; i++) /* blocks scattered with gaps, like KV blocks; batches apart */
            reqs[i] = (struct slice_req){op, 1, 0, dev + (d * batch + i) * (bs + 4096), i * bs, bs, (uint32_t)i, 1};
        if (slice_plan_make(reqs, batch, slice, 64, &b[d].plan))
            exit(1);
    }
    size_t bytes = 0, nlat = 0;
    double t0 = now_s(), t;
    for (unsigned d = 0; d < depth; d++)
        batch_submit(pool, &b[d]);
    bool stop = false;
    unsigned live = depth;
    while (live) {
        for (unsigned d = 0; d < depth; d++) {
            if (!b[d].start_ns ||
                atomic_load_explicit(&b[d].done, memory_order_acquire) < b[d].plan.nframes)
                continue;
            TRACE(TR_BATCH_WOKEN, d); /* the main thread saw the batch end (bench/trace_batches.py) */
            if (nlat < LAT_MAX)
                lat[nlat++] = now_ns() - b[d].start_ns;
            bytes += batch * bs;
            b[d].start_ns = 0;
            if (!stop && (t = now_s()) - t0 >= seconds)
                stop = true;
            if (stop) {
                live--;
                continue;
            }
            if (gap_us) {
                struct timespec gap = {gap_us / 1000000u, (long)(gap_us % 1000000u) * 1000};
                nanosleep(&gap, NULL);
            }
            batch_submit(pool, &b[d]);
        }
    }
    t = now_s();
    for (unsigned d = 0; d < depth; d++)
        slice_plan_free(&b[d].plan);
    qsort(lat, nlat, sizeof *lat, cmp_u64);
    struct result r = {(double)bytes / (t - t0) / 1e9, 0, 0};
    if (nlat) {
        r.p50_us = (double)lat[nlat / 2] / 1e3;
        r.p99_us = (double)lat[nlat * 99 / 100] / 1e3;
    }
    return r;
}

static const char *option(const char *arg, const char *name)
{
    size_t n = strlen(name);
    return strncmp(arg, name, n) == 0 && arg[n] == '=' ? arg + n + 1 : NULL;
}

int main(int argc, char **argv)
{
    const char *v;
    while (argc > 1 && strncmp(argv[1], "--", 2) == 0) {
        if ((v = option(argv[1], "--batch")))
            batch = strtoull(v, NULL, 0);
        else if ((v = option(argv[1], "--depth")))
            depth = (unsigned)strtoul(v, NULL, 0);
        else if ((v = option(argv[1], "--gap")))
            gap_us = (unsigned)strtoul(v, NULL, 0);
        else if ((v = option(argv[1], "--op")))
            ops_wanted = strcmp(v, "gather") == 0 ? 1 : strcmp(v, "scatter") == 0 ? 2 : strcmp(v, "both") == 0 ? 3 : 0;
        else
            batch = 0;
        if (batch == 0 || batch > BATCH_MAX || depth == 0 || depth > DEPTH_MAX || ops_wanted == 0) {
            fprintf(stderr, "%s: want --batch=1..%d, --depth=1..%d, --gap=microseconds and --op=gather|scatter|both\n", argv[1],
                    BATCH_MAX, DEPTH_MAX);
            return 2;
        }
        argv++;
        argc--;
    }
    const char *loc = argc > 1 ? argv[1] : "cuda:0";
    ferry_trace_init();
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
    /* the engine's pool: FERRY_STAGING_CHUNKS x FERRY_STAGING_CHUNK_SIZE bytes
     * (the config table's defaults where unset) */
    struct ferry_config cfg;
    if (ferry_config_init(&cfg)) {
        fprintf(stderr, "config: %s\n", ferry_last_error());
        return 2;
    }
    if (cfg.slice_size == 0 || cfg.staging_chunk_size < cfg.slice_size) {
        fprintf(stderr, "FERRY_STAGING_CHUNK_SIZE=%zu is below FERRY_SLICE_SIZE=%zu (frames must fit a chunk)\n",
                cfg.staging_chunk_size, cfg.slice_size);
        return 2;
    }
    size_t chunk; /* frames are at most a slice (FERRY_SLICE_SIZE), as in the engine; chunks cut as there */
    unsigned nchunks;
    staging_pool_shape(cfg.staging_chunk_size, cfg.staging_chunks, cfg.slice_size, &chunk, &nchunks);
    /* the reference copies 128 MiB (or all the batches' span, if more) */
    size_t span = 128 * ((1u << 20) + 4096);
    for (int i = 0; i < nsizes; i++)
        if (depth * batch * (sizes[i] + 4096) > span)
            span = depth * batch * (sizes[i] + 4096);
    void *dptr = NULL, *host = NULL, *base;
    size_t plen;
    struct staging_pool *pool;
    uint64_t *lat = malloc(LAT_MAX * sizeof *lat);
    if (!lat || ops->mem_alloc(dev, span, &dptr) || ops->host_alloc(span, &host) ||
        staging_pool_create(ops, dev, chunk, nchunks, instant_wire, NULL, &pool, &base, &plen)) {
        fprintf(stderr, "setup: %s\n", ferry_last_error());
        if (host)
            ops->host_free(host);
        if (dptr)
            ops->mem_free(dev, dptr);
        free(lat);
        return 1;
    }
    printf("# staging pipeline on %s: %u chunks x %zu KiB, frames <= %zu KiB, batch %zu, %u in flight, %.1f s per figure; "
           "batch latency p50 / p99 in us\n",
           loc, nchunks, chunk >> 10, cfg.slice_size >> 10, batch, depth, seconds);
    printf("| block | gather D2H GB/s | large D2H GB/s | ratio | p50 | p99 | scatter H2D GB/s | large H2D GB/s | "
           "ratio | p50 | p99 |\n");
    printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < nsizes; i++) {
        size_t bs = sizes[i];
        char gcols[128] = "- | - | - | - | -", scols[128] = "- | - | - | - | -";
        if (ops_wanted & 1) {
            double d2h = reference(ops, dev, FERRY_COPY_D2H, dptr, host, span, seconds);
            struct result g = staged(pool, XFER_WRITE, dptr, bs, cfg.slice_size, seconds, lat);
            snprintf(gcols, sizeof gcols, "%.2f | %.2f | %.2f | %.0f | %.0f", g.gbs, d2h, g.gbs / d2h, g.p50_us,
                     g.p99_us);
        }
        if (ops_wanted & 2) {
            double h2d = reference(ops, dev, FERRY_COPY_H2D, dptr, host, span, seconds);
            struct result sc = staged(pool, XFER_READ, dptr, bs, cfg.slice_size, seconds, lat);
            snprintf(scols, sizeof scols, "%.2f | %.2f | %.2f | %.0f | %.0f", sc.gbs, h2d, sc.gbs / h2d, sc.p50_us,
                     sc.p99_us);
        }
        printf("| %zu KiB | %s | %s |\n", bs >> 10, gcols, scols);
        fflush(stdout);
    }
    staging_pool_destroy(pool);
    ops->host_free(host);
    ops->mem_free(dev, dptr);
    free(lat);
    return 0;
}

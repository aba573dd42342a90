/* SPDX-License-Identifier: Apache-2.0 */
/*
 * h2d_probe.c — the device copy primitives under the staging scatter (and
 * gather), without the pipeline: how fast calls of k copies of S bytes go
 * when N streams each keep two such calls queued, next to one large pinned
 * copy of the same process (the staging reference).  Which primitive does
 * the work is the device's choice, as in staging: on CUDA the gather
 * kernel for copies averaging up to FERRY_CUDA_KERNEL_H2D_MAX (1 MiB), the
 * copy engine above it, so the same cells run once with the defaults and
 * once with FERRY_CUDA_KERNEL_H2D_MAX=0 (copy engine: cuMemcpyBatchAsync, or
 * one cuMemcpyHtoDAsync for k = 1).  Mode "bounce" is the scatter through a
 * device buffer: one contiguous H2D of the k x S bytes into a buffer of the
 * stream's, then k D2D copies from it to the scattered blocks (what
 * FERRY_STAGING_AGGREGATE does for a READ chunk).
 *
 *   h2d_probe [location=cuda:0] [seconds=0.3] [dir=h2d|d2h|bounce] [S:k:N ...]
 *
 * Prints one line per cell: dir, S, k, N, GB/s, ratio to the large copy
 * measured before the cells (and the large copy again after them).
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/device.h"
#include "err.h"
#include "net.h"

#define STREAMS_MAX 8
#define COPIES_MAX 256
#define QUEUED 2                 /* calls each stream keeps queued */

enum mode { MODE_H2D, MODE_D2H, MODE_BOUNCE };

struct cell {
    size_t size;                 /* S: bytes a copy */
    unsigned k;                  /* copies a call */
    unsigned n;                  /* streams */
};

static double seconds_since(uint64_t t0)
{
    return (double)(now_ns() - t0) / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "%s: %s\n", what, ferry_last_error());
    exit(1);
}

/* one large copy of len bytes, repeated for secs */
static double large_copy(const struct ferry_device_ops *ops, ferry_stream *s, enum ferry_copy_dir dir, char *dptr,
                         char *host, size_t len, double secs)
{
    struct ferry_copy c = dir == FERRY_COPY_D2H ? (struct ferry_copy){host, dptr, len}
                                                : (struct ferry_copy){dptr, host, len};
    size_t bytes = 0;
    uint64_t t0 = now_ns();
    do {
        if (ops->copy_async(s, dir, &c, 1) || ops->stream_sync(s))
            die("large copy");
        bytes += len;
    } while (seconds_since(t0) < secs);
    return (double)bytes / seconds_since(t0) / 1e9;
}

/* Enqueues one call of stream i's cell: k copies of S between the host
 * region of the stream (contiguous) and its device blocks (S + 4 KiB
 * apart, as staging_bench scatters them). */
static void enqueue(const struct ferry_device_ops *ops, ferry_stream *s, enum mode m, const struct cell *c,
                    char *host, char *dblocks, char *dbuf)
{
    struct ferry_copy copies[COPIES_MAX];
    for (unsigned j = 0; j < c->k; j++) {
        char *h = host + (size_t)j * c->size, *d = dblocks + (size_t)j * (c->size + 4096);
        copies[j] = m == MODE_D2H ? (struct ferry_copy){h, d, c->size}
                    : m == MODE_H2D ? (struct ferry_copy){d, h, c->size}
                                    : (struct ferry_copy){d, dbuf + (size_t)j * c->size, c->size};
    }
    int rc;
    if (m == MODE_BOUNCE) {
        struct ferry_copy whole = {dbuf, host, (size_t)c->k * c->size};
        rc = ops->copy_async(s, FERRY_COPY_H2D, &whole, 1);
        if (!rc)
            rc = ops->copy_async(s, FERRY_COPY_D2D, copies, c->k);
    } else {
        rc = ops->copy_async(s, m == MODE_D2H ? FERRY_COPY_D2H : FERRY_COPY_H2D, copies, c->k);
    }
    if (rc)
        die("copy_async");
}

static double run_cell(const struct ferry_device_ops *ops, ferry_stream **st, enum mode m, const struct cell *c,
                       char *host, char *dev, char *dbuf, size_t per_stream, double secs)
{
    size_t call_bytes = (size_t)c->k * c->size, bytes = 0;
    for (unsigned i = 0; i < c->n; i++) /* warm up */
        enqueue(ops, st[i], m, c, host + i * per_stream, dev + i * per_stream, dbuf + i * per_stream);
    for (unsigned i = 0; i < c->n; i++)
        if (ops->stream_sync(st[i]))
            die("sync");
    uint64_t t0 = now_ns();
    for (unsigned i = 0; i < c->n; i++)
        for (unsigned q = 0; q < QUEUED; q++)
            enqueue(ops, st[i], m, c, host + i * per_stream, dev + i * per_stream, dbuf + i * per_stream);
    bool stop = false;
    while (!stop) {
        for (unsigned i = 0; i < c->n; i++) {
            if (ops->stream_sync(st[i]))
                die("sync");
            bytes += QUEUED * call_bytes;
            if (seconds_since(t0) >= secs) {
                stop = true;
                continue;
            }
            for (unsigned q = 0; q < QUEUED; q++)
                enqueue(ops, st[i], m, c, host + i * per_stream, dev + i * per_stream, dbuf + i * per_stream);
        }
    }
    return (double)bytes / seconds_since(t0) / 1e9;
}

int main(int argc, char **argv)
{
    const char *loc = argc > 1 ? argv[1] : "cuda:0";
    double secs = argc > 2 ? atof(argv[2]) : 0.3;
    const char *dirs = argc > 3 ? argv[3] : "h2d";
    enum mode m = strcmp(dirs, "d2h") == 0 ? MODE_D2H : strcmp(dirs, "bounce") == 0 ? MODE_BOUNCE : MODE_H2D;
    struct cell cells[32];
    unsigned ncells = 0;
    for (int a = 4; a < argc && ncells < 32; a++) {
        struct cell c = {0, 0, 0};
        if (sscanf(argv[a], "%zu:%u:%u", &c.size, &c.k, &c.n) != 3 || c.size == 0 || c.k == 0 || c.k > COPIES_MAX ||
            c.n == 0 || c.n > STREAMS_MAX) {
            fprintf(stderr, "%s: want S:k:N (k 1..%d, N 1..%d)\n", argv[a], COPIES_MAX, STREAMS_MAX);
            return 2;
        }
        cells[ncells++] = c;
    }
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
    size_t per_stream = 0, span = (size_t)128 << 20;
    for (unsigned i = 0; i < ncells; i++) {
        size_t need = (size_t)cells[i].k * (cells[i].size + 4096);
        if (need > per_stream)
            per_stream = need;
    }
    if (per_stream * STREAMS_MAX > span)
        span = per_stream * STREAMS_MAX;
    void *dptr = NULL, *host = NULL, *dbuf = NULL;
    ferry_stream *st[STREAMS_MAX];
    if (ops->mem_alloc(dev, span, &dptr) || ops->mem_alloc(dev, span, &dbuf) || ops->host_alloc(span, &host))
        die("alloc");
    memset(host, 1, span);
    for (unsigned i = 0; i < STREAMS_MAX; i++)
        if (ops->stream_create(dev, &st[i]))
            die("stream");
    enum ferry_copy_dir ref_dir = m == MODE_D2H ? FERRY_COPY_D2H : FERRY_COPY_H2D;
    (void)large_copy(ops, st[0], ref_dir, dptr, host, span, 0.05);
    double ref = large_copy(ops, st[0], ref_dir, dptr, host, span, secs);
    printf("# %s on %s: large %s %.2f GB/s\n", dirs, loc, ref_dir == FERRY_COPY_D2H ? "D2H" : "H2D", ref);
    for (unsigned i = 0; i < ncells; i++) {
        double gbs = run_cell(ops, st, m, &cells[i], host, dptr, dbuf, per_stream, secs);
        printf("%s S=%zu k=%u N=%u %.2f GB/s ratio %.3f\n", dirs, cells[i].size, cells[i].k, cells[i].n, gbs,
               gbs / ref);
        fflush(stdout);
    }
    double ref2 = large_copy(ops, st[0], ref_dir, dptr, host, span, secs);
    printf("# large %s again %.2f GB/s\n", ref_dir == FERRY_COPY_D2H ? "D2H" : "H2D", ref2);
    for (unsigned i = 0; i < STREAMS_MAX; i++)
        ops->stream_destroy(st[i]);
    ops->host_free(host);
    ops->mem_free(dev, dbuf);
    ops->mem_free(dev, dptr);
    return 0;
}

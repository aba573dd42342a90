/* SPDX-License-Identifier: Apache-2.0 */
/*
 * d2d_ref.c — the physical references for the shm transport, measured in
 * the same run as it: one large device-to-device copy on one device (what
 * the shm direct path does between two processes' GPU memory through IPC),
 * one large pinned host<->device copy each way, and one large host memcpy
 * (what cross-memory attach does for host memory).  Prints GB/s, counting
 * each byte copied once.
 *
 *   d2d_ref [location=cuda:0] [seconds=2] [MiB=256]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/device.h"
#include "err.h"
#include "net.h"

static double seconds_since(uint64_t t0)
{
    return (double)(now_ns() - t0) / 1e9;
}

/* one copy of len bytes in direction dir, repeated for `secs` */
static double device_copy(const struct ferry_device_ops *ops, int dev, enum ferry_copy_dir dir, void *dst,
                          const void *src, size_t len, double secs)
{
    ferry_stream *s;
    if (ops->stream_create(dev, &s))
        return 0;
    struct ferry_copy c = {dst, src, len};
    ops->copy_async(s, dir, &c, 1); /* warm up */
    ops->stream_sync(s);
    size_t bytes = 0;
    uint64_t t0 = now_ns();
    do {
        if (ops->copy_async(s, dir, &c, 1) || ops->stream_sync(s)) {
            fprintf(stderr, "copy failed: %s\n", ferry_last_error());
            exit(1);
        }
        bytes += len;
    } while (seconds_since(t0) < secs);
    double gbs = (double)bytes / seconds_since(t0) / 1e9;
    ops->stream_destroy(s);
    return gbs;
}

static double host_memcpy(char *dst, const char *src, size_t len, double secs)
{
    memcpy(dst, src, len); /* fault the pages in */
    size_t bytes = 0;
    uint64_t t0 = now_ns();
    do {
        memcpy(dst, src, len);
        bytes += len;
    } while (seconds_since(t0) < secs);
    return (double)bytes / seconds_since(t0) / 1e9;
}

int main(int argc, char **argv)
{
    const char *loc = argc > 1 ? argv[1] : "cuda:0";
    double secs = argc > 2 ? atof(argv[2]) : 2;
    size_t len = (size_t)(argc > 3 ? atol(argv[3]) : 256) << 20;
    int dev = 0;
    const struct ferry_device_ops *ops = ferry_device_of_location(loc, &dev);
    if (!ops || ops->init() || dev >= ops->device_count()) {
        fprintf(stderr, "d2d_ref: %s is not usable: %s\n", loc, ops ? ferry_last_error() : "not a device");
        return 77;
    }
    void *a, *b, *pinned;
    char *h1 = malloc(len), *h2 = malloc(len);
    if (ops->mem_alloc(dev, len, &a) || ops->mem_alloc(dev, len, &b) || ops->host_alloc(len, &pinned) || !h1 ||
        !h2) {
        fprintf(stderr, "d2d_ref: allocating 2 x %zu bytes on %s: %s\n", len, loc, ferry_last_error());
        return 1;
    }
    memset(h1, 1, len);
    memset(pinned, 2, len);
    printf("| reference (%zu MiB copies) | GB/s |\n|---|---|\n", len >> 20);
    printf("| %s D2D, one device | %.1f |\n", loc, device_copy(ops, dev, FERRY_COPY_D2D, b, a, len, secs));
    printf("| %s D2H, pinned | %.1f |\n", loc, device_copy(ops, dev, FERRY_COPY_D2H, pinned, a, len, secs));
    printf("| %s H2D, pinned | %.1f |\n", loc, device_copy(ops, dev, FERRY_COPY_H2D, a, pinned, len, secs));
    printf("| host memcpy, one thread | %.1f |\n", host_memcpy(h2, h1, len, secs));
    ops->mem_free(dev, a);
    ops->mem_free(dev, b);
    ops->host_free(pinned);
    free(h1);
    free(h2);
    return 0;
}

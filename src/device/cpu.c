/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cpu.c — host memory as a device table ("cpu", "cpu:N" with N a NUMA node).
 *
 * Host memory needs no driver and no staging: transports touch it directly
 * (FERRY_DEVICE_HOST), so the engine and transports skip the device copies
 * for it.  The table exists so that location strings, allocation and the
 * registry treat it like any other kind instead of special-casing "cpu".
 * Its "streams" copy synchronously with memcpy on the caller's thread.
 * Threads: every function is thread-safe.  Owns the list of mappings it
 * handed out (for mem_free, which gets no length).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "device/device.h"
#include "err.h"

/* mem_free gets no length, and munmap needs one: the mappings handed out
 * are remembered here (allocation is never on the hot path).  The memory
 * itself is a plain anonymous mapping, page-aligned and zeroed, so a caller
 * that munmaps it directly (as before this table existed) loses nothing. */
#define HUGE_PAGE ((size_t)2 << 20)

struct mapping {
    void *addr;
    size_t len;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct mapping *maps;
static size_t nmaps, capmaps;

static int cpu_init(void)
{
    return 0;
}

static int cpu_device_count(void)
{
    return 1;
}

static int remember(void *addr, size_t len)
{
    int rc = 0;
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < nmaps; i++) {
        if (maps[i].addr == addr) { /* unmapped by its caller and handed out again */
            maps[i].len = len;
            goto out;
        }
    }
    if (nmaps == capmaps) {
        size_t cap = capmaps ? capmaps * 2 : 16;
        struct mapping *m = realloc(maps, cap * sizeof *m);
        if (!m) {
            rc = -1;
            goto out;
        }
        maps = m;
        capmaps = cap;
    }
    maps[nmaps++] = (struct mapping){addr, len};
out:
    pthread_mutex_unlock(&lock);
    return rc;
}

/* The length of a mapping handed out (and forgets it), or 0. */
static size_t forget(void *addr)
{
    size_t len = 0;
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < nmaps; i++) {
        if (maps[i].addr == addr) {
            len = maps[i].len;
            maps[i] = maps[--nmaps];
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return len;
}

static int cpu_mem_alloc(int dev, size_t len, void **out)
{
    (void)dev;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return ferry_fail(FERRY_ENOMEM, "mem_alloc: %zu bytes of host memory", len);
    /* Huge pages where the kernel has them (THP "madvise" or "always"): a
     * socket's first copy into or out of each 4 KiB page costs ~7 us under
     * shadow-paging hypervisors (the 4 MiB TCP warm-up, docs/BENCHMARKS.md),
     * 2 MiB pages pay that 512x less often.  Best effort: no THP, no harm. */
    if (len >= HUGE_PAGE)
        (void)madvise(p, len, MADV_HUGEPAGE);
    if (remember(p, len) != 0) {
        munmap(p, len);
        return ferry_fail(FERRY_ENOMEM, "mem_alloc: %zu bytes of host memory (bookkeeping)", len);
    }
    *out = p;
    return 0;
}

static void cpu_mem_free(int dev, void *ptr)
{
    (void)dev;
    size_t len = ptr ? forget(ptr) : 0;
    if (len)
        munmap(ptr, len);
}

static int cpu_host_alloc(size_t len, void **out)
{
    return cpu_mem_alloc(-1, len, out);
}

static void cpu_host_free(void *ptr)
{
    cpu_mem_free(-1, ptr);
}

static int cpu_locate(const void *ptr, size_t len, int *dev)
{
    (void)ptr;
    (void)len;
    (void)dev;
    return 0; /* "device memory of this kind" never: host memory is the default */
}

static int cpu_stream_create(int dev, ferry_stream **out)
{
    (void)dev;
    *out = malloc(1);
    return *out ? 0 : ferry_fail(FERRY_ENOMEM, "cpu stream");
}

static void cpu_stream_destroy(ferry_stream *stream)
{
    free(stream);
}

static int cpu_copy_async(ferry_stream *stream, enum ferry_copy_dir dir, const struct ferry_copy *copies, size_t n)
{
    (void)stream;
    (void)dir;
    for (size_t i = 0; i < n; i++)
        memmove(copies[i].dst, copies[i].src, copies[i].len);
    return 0;
}

static int cpu_stream_done(ferry_stream *stream)
{
    (void)stream;
    return 0;
}

static const struct ferry_location_kind cpu_locations[] = {{"cpu", 0, -1}, {NULL, 0, 0}};

const struct ferry_device_ops ferry_device_cpu = {
    .kind = "cpu",
    .caps = FERRY_DEVICE_HOST,
    .locations = cpu_locations,
    .init = cpu_init,
    .device_count = cpu_device_count,
    .mem_alloc = cpu_mem_alloc,
    .mem_free = cpu_mem_free,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .locate = cpu_locate,
    .stream_create = cpu_stream_create,
    .stream_destroy = cpu_stream_destroy,
    .copy_async = cpu_copy_async,
    .stream_query = cpu_stream_done,
    .stream_sync = cpu_stream_done,
};

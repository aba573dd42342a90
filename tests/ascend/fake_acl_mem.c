/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fake_acl_mem.c — the fake ACL runtime's memory: NPU memory the host cannot
 * touch, and page-locked host memory it can tell apart from malloc's.
 *
 * Each fake NPU owns a PROT_NONE reservation of FAKEACL_DEVICE_MEM_MB; an
 * aclrtMalloc allocation is a range of it with exact bounds (a copy one byte
 * past the end fails).  The bytes live in a separate read-write shadow at the
 * same offsets, which only the copy worker (fake_acl.c) uses: code that loads
 * or stores a device address directly crashes.  aclrtMallocHost memory is an
 * mmap of its own, recorded so copies can tell it from pageable memory.
 * Threads: every function takes mem_lock; the tables are this file's.
 */
#include "fake_acl.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define MAX_ALLOCS 4096
#define DEV_ALIGN ((size_t)4096)

struct range {
    uintptr_t start;
    size_t len;
};

struct device_mem {
    char *base;                  /* PROT_NONE reservation */
    char *shadow;                /* where the bytes are */
    struct range allocs[MAX_ALLOCS];
    size_t nallocs;
};

static pthread_mutex_t mem_lock = PTHREAD_MUTEX_INITIALIZER;
static struct device_mem *devs;
static struct range hosts[MAX_ALLOCS];
static size_t nhosts;

int fake_mem_init(void)
{
    devs = calloc((size_t)fake.devices, sizeof *devs);
    if (!devs)
        return -1;
    for (int d = 0; d < fake.devices; d++) {
        devs[d].base = mmap(NULL, fake.device_mem, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        devs[d].shadow = mmap(NULL, fake.device_mem, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (devs[d].base == MAP_FAILED || devs[d].shadow == MAP_FAILED)
            return -1;
        (void)madvise(devs[d].shadow, fake.device_mem, MADV_DONTDUMP);
    }
    return 0;
}

int fake_device_of(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    for (int d = 0; d < fake.devices; d++)
        if (a >= (uintptr_t)devs[d].base && a < (uintptr_t)devs[d].base + fake.device_mem)
            return d;
    return -1;
}

static int in_table(const struct range *t, size_t n, uintptr_t a, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (a >= t[i].start && a - t[i].start <= t[i].len && len <= t[i].len - (a - t[i].start))
            return 1;
    return 0;
}

int fake_device_range_ok(int dev, const void *p, size_t len)
{
    if (dev < 0 || dev >= fake.devices || fake_device_of(p) != dev)
        return 0;
    pthread_mutex_lock(&mem_lock);
    int ok = in_table(devs[dev].allocs, devs[dev].nallocs, (uintptr_t)p, len);
    pthread_mutex_unlock(&mem_lock);
    return ok;
}

char *fake_shadow(const void *p)
{
    int d = fake_device_of(p);
    return devs[d].shadow + ((const char *)p - devs[d].base);
}

int fake_host_pinned(const void *p, size_t len)
{
    pthread_mutex_lock(&mem_lock);
    int ok = in_table(hosts, nhosts, (uintptr_t)p, len);
    pthread_mutex_unlock(&mem_lock);
    return ok;
}

size_t fake_alloc_len(const void *p)
{
    int d = fake_device_of(p);
    const struct range *t = d >= 0 ? devs[d].allocs : hosts;
    size_t len = 0;
    pthread_mutex_lock(&mem_lock);
    size_t n = d >= 0 ? devs[d].nallocs : nhosts;
    for (size_t i = 0; i < n && !len; i++)
        if (t[i].start == (uintptr_t)p)
            len = t[i].len;
    pthread_mutex_unlock(&mem_lock);
    return len;
}

aclError fake_dev_malloc(int dev, void **out, size_t size)
{
    struct device_mem *m = &devs[dev];
    size_t span = (size + DEV_ALIGN - 1) & ~(DEV_ALIGN - 1);
    pthread_mutex_lock(&mem_lock);
    /* first fit in the gaps between allocations (kept sorted) */
    uintptr_t at = (uintptr_t)m->base;
    size_t i = 0;
    for (; i < m->nallocs; i++) {
        if (m->allocs[i].start - at >= span)
            break;
        at = (m->allocs[i].start + m->allocs[i].len + DEV_ALIGN - 1) & ~(DEV_ALIGN - 1);
    }
    if (m->nallocs == MAX_ALLOCS || at + span > (uintptr_t)m->base + fake.device_mem) {
        pthread_mutex_unlock(&mem_lock);
        return fake_fail(ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMalloc(%zu): device %d out of memory", size, dev);
    }
    memmove(&m->allocs[i + 1], &m->allocs[i], (m->nallocs - i) * sizeof m->allocs[0]);
    m->allocs[i] = (struct range){at, size};
    m->nallocs++;
    pthread_mutex_unlock(&mem_lock);
    *out = (void *)at;
    return ACL_SUCCESS;
}

aclError fake_dev_free(void *p)
{
    int d = fake_device_of(p);
    if (d < 0)
        return fake_fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtFree(%p): not device memory", p);
    struct device_mem *m = &devs[d];
    pthread_mutex_lock(&mem_lock);
    for (size_t i = 0; i < m->nallocs; i++) {
        if (m->allocs[i].start == (uintptr_t)p) {
            size_t span = (m->allocs[i].len + DEV_ALIGN - 1) & ~(DEV_ALIGN - 1);
            /* the bytes are gone: a later read of a stale pointer sees zeros */
            (void)madvise(fake_shadow(p), span, MADV_DONTNEED);
            memmove(&m->allocs[i], &m->allocs[i + 1], (m->nallocs - i - 1) * sizeof m->allocs[0]);
            m->nallocs--;
            pthread_mutex_unlock(&mem_lock);
            return ACL_SUCCESS;
        }
    }
    pthread_mutex_unlock(&mem_lock);
    return fake_fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtFree(%p): not the start of a live allocation", p);
}

aclError fake_host_malloc(void **out, size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return fake_fail(ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMallocHost(%zu): out of memory", size);
    pthread_mutex_lock(&mem_lock);
    if (nhosts == MAX_ALLOCS) {
        pthread_mutex_unlock(&mem_lock);
        munmap(p, size);
        return fake_fail(ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMallocHost: too many allocations");
    }
    hosts[nhosts++] = (struct range){(uintptr_t)p, size};
    pthread_mutex_unlock(&mem_lock);
    *out = p;
    return ACL_SUCCESS;
}

aclError fake_host_free(void *p)
{
    pthread_mutex_lock(&mem_lock);
    for (size_t i = 0; i < nhosts; i++) {
        if (hosts[i].start == (uintptr_t)p) {
            size_t len = hosts[i].len;
            hosts[i] = hosts[--nhosts];
            pthread_mutex_unlock(&mem_lock);
            munmap(p, len);
            return ACL_SUCCESS;
        }
    }
    pthread_mutex_unlock(&mem_lock);
    return fake_fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtFreeHost(%p): not from aclrtMallocHost", p);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * slab.c — managed buffers (allocate_managed_buffer / free_managed_buffer).
 *
 * One host region, mapped and registered (remote accessible) on the first
 * allocation of at most 16 MiB (a larger one does not need it: then, as in the
 * reference, the engine's first buffer is that allocation, which the
 * reference's own test relies on), is cut by a buddy allocator into
 * power-of-two blocks of 4 KiB to 16 MiB: a request takes the smallest class that holds it, a larger free block
 * is split in halves down to that class, and a freed block merges with its free
 * buddy, so the region does not fragment into small blocks for good.  Requests
 * above 16 MiB get a region of their own (mapped and registered, unregistered
 * on free), as the reference engine does.
 *
 * The bookkeeping lives outside the region (arrays indexed by 4 KiB granule),
 * so the region could as well be device memory, and so slab_check can tell in
 * a few steps whether an address lies in a live block: a transfer from a freed
 * managed buffer is refused instead of silently reading recycled memory.
 * Threads: every entry point takes s->lock, and holds it only for the
 * bookkeeping: never across a registration or an unregistration, which may
 * wait (a metadata store, pinning, a transfer still using the memory), while
 * transfer checks take the lock with the GIL held.  The region is mapped
 * under region_lock (allocating threads only, GIL released) and published by
 * storing size (release) after base, both under s->lock; the checks that run
 * without s->lock load size (acquire) first and look no further while it is 0.
 */
#include "pyferry.h"

#include <errno.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define NCLASSES (SLAB_MAX_SHIFT - SLAB_MIN_SHIFT + 1)
#define GRANULE ((size_t)1 << SLAB_MIN_SHIFT)
#define TOP_BLOCK ((size_t)1 << SLAB_MAX_SHIFT)

struct large_block {
    uintptr_t addr;
    size_t len;
};

struct slab {
    pthread_mutex_t lock;
    pthread_mutex_t region_lock; /* held while the region is mapped and registered */
    uintptr_t base;              /* 0 until the region exists */
    size_t size;                 /* 0 until the region exists; then region_size */
    size_t region_size;
    size_t ngranules;
    int8_t *order;              /* per granule: class of the block starting here, -1 if none */
    uint8_t *used;              /* per block head: 1 allocated */
    int32_t *next, *prev;       /* free-list links per block head */
    int32_t free_head[NCLASSES];
    size_t used_bytes;
    struct large_block *large;
    size_t nlarge, large_cap;
};

/* The message helpers of ferry are internal; keep our own thread-local text
 * and hand it out through a failing return code (see slab_error). */
static _Thread_local char slab_detail[256];

const char *slab_last_error(void)
{
    return slab_detail;
}

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(slab_detail, sizeof slab_detail, fmt, ap);
    va_end(ap);
    return code;
}

static int class_of(size_t len)
{
    int k = 0;
    while ((GRANULE << k) < len)
        k++;
    return k;
}

static void list_push(struct slab *s, int k, int32_t g)
{
    s->prev[g] = -1;
    s->next[g] = s->free_head[k];
    if (s->free_head[k] >= 0)
        s->prev[s->free_head[k]] = g;
    s->free_head[k] = g;
}

static void list_remove(struct slab *s, int k, int32_t g)
{
    if (s->prev[g] >= 0)
        s->next[s->prev[g]] = s->next[g];
    else
        s->free_head[k] = s->next[g];
    if (s->next[g] >= 0)
        s->prev[s->next[g]] = s->prev[g];
}

int slab_create(size_t size, struct slab **out)
{
    if (size < TOP_BLOCK)
        size = TOP_BLOCK;
    size = (size + TOP_BLOCK - 1) & ~(TOP_BLOCK - 1);
    size_t ngranules = size / GRANULE;
    if (ngranules > INT32_MAX)
        return fail(FERRY_EINVAL, "managed pool of %zu bytes is too large", size);
    struct slab *s = calloc(1, sizeof *s);
    if (!s)
        return fail(FERRY_ENOMEM, "managed pool bookkeeping");
    s->order = malloc(ngranules);
    s->used = calloc(ngranules, 1);
    s->next = malloc(ngranules * sizeof *s->next);
    s->prev = malloc(ngranules * sizeof *s->prev);
    if (!s->order || !s->used || !s->next || !s->prev) {
        free(s->order), free(s->used), free(s->next), free(s->prev), free(s);
        return fail(FERRY_ENOMEM, "managed pool bookkeeping for %zu bytes", size);
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->region_lock, NULL);
    s->region_size = size;
    s->ngranules = ngranules;
    memset(s->order, -1, ngranules);
    for (int k = 0; k < NCLASSES; k++)
        s->free_head[k] = -1;
    size_t per_top = TOP_BLOCK / GRANULE;
    for (size_t g = ngranules; g >= per_top; g -= per_top) { /* lowest address on top of the list */
        s->order[g - per_top] = NCLASSES - 1;
        list_push(s, NCLASSES - 1, (int32_t)(g - per_top));
    }
    *out = s;
    return 0;
}

/* Maps and registers the region unless it exists.  Called without s->lock. */
static int region_ensure(struct slab *s, ferry_engine *engine)
{
    int rc = 0;
    pthread_mutex_lock(&s->region_lock);
    if (!__atomic_load_n(&s->size, __ATOMIC_ACQUIRE)) {
        void *p = mmap(NULL, s->region_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            rc = fail(FERRY_ENOMEM, "managed pool of %zu bytes: %s", s->region_size, strerror(errno));
        } else if ((rc = ferry_register_memory(engine, p, s->region_size, "cpu", 1)) != 0) {
            fail(rc, "registering the managed pool: %s", ferry_last_error());
            munmap(p, s->region_size);
        } else {
            pthread_mutex_lock(&s->lock);
            s->base = (uintptr_t)p;
            __atomic_store_n(&s->size, s->region_size, __ATOMIC_RELEASE);
            pthread_mutex_unlock(&s->lock);
        }
    }
    pthread_mutex_unlock(&s->region_lock);
    return rc;
}

void slab_destroy(struct slab *s)
{
    if (!s)
        return;
    if (s->size)
        munmap((void *)s->base, s->size);
    for (size_t i = 0; i < s->nlarge; i++)
        munmap((void *)s->large[i].addr, s->large[i].len);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->region_lock);
    free(s->large);
    free(s->order), free(s->used), free(s->next), free(s->prev), free(s);
}

/* A block above TOP_BLOCK: mapped and registered without s->lock (the
 * registration publishes the descriptor, or pins pages for RDMA: it may take
 * long, and other threads take the lock for their transfer checks with the
 * GIL held), then entered in the table under it. */
static uintptr_t alloc_large(struct slab *s, ferry_engine *engine, size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return fail(FERRY_ENOMEM, "managed buffer of %zu bytes: %s", len, strerror(errno)), 0;
    int rc = ferry_register_memory(engine, p, len, "cpu", 1);
    if (rc) {
        fail(rc, "registering a managed buffer of %zu bytes: %s", len, ferry_last_error());
        munmap(p, len);
        return 0;
    }
    pthread_mutex_lock(&s->lock);
    if (s->nlarge == s->large_cap) {
        size_t cap = s->large_cap ? s->large_cap * 2 : 8;
        struct large_block *n = realloc(s->large, cap * sizeof *n);
        if (!n) {
            pthread_mutex_unlock(&s->lock);
            ferry_unregister_memory(engine, p);
            munmap(p, len);
            return fail(FERRY_ENOMEM, "managed buffer table"), 0;
        }
        s->large = n;
        s->large_cap = cap;
    }
    s->large[s->nlarge++] = (struct large_block){(uintptr_t)p, len};
    s->used_bytes += len;
    pthread_mutex_unlock(&s->lock);
    return (uintptr_t)p;
}

uintptr_t slab_alloc(struct slab *s, ferry_engine *engine, size_t len)
{
    uintptr_t addr = 0;
    if (len > TOP_BLOCK)
        return alloc_large(s, engine, len);
    if (!__atomic_load_n(&s->size, __ATOMIC_ACQUIRE) && region_ensure(s, engine))
        return 0;
    pthread_mutex_lock(&s->lock);
    int want = class_of(len), k = want;
    while (k < NCLASSES && s->free_head[k] < 0)
        k++;
    if (k == NCLASSES) {
        fail(FERRY_ENOMEM, "managed pool exhausted: no free block of %zu bytes in %zu bytes (%zu in use)",
             GRANULE << want, s->size, s->used_bytes);
    } else {
        int32_t g = s->free_head[k];
        list_remove(s, k, g);
        while (k > want) { /* split: keep the lower half, free the upper */
            k--;
            int32_t buddy = g + (int32_t)(1u << k);
            s->order[buddy] = (int8_t)k;
            s->used[buddy] = 0;
            list_push(s, k, buddy);
        }
        s->order[g] = (int8_t)want;
        s->used[g] = 1;
        s->used_bytes += GRANULE << want;
        addr = s->base + (uintptr_t)g * GRANULE;
    }
    pthread_mutex_unlock(&s->lock);
    return addr;
}

/* Takes the large buffer at addr out of the table (s->lock held).  The
 * caller unregisters and unmaps it once the lock is let go: unregistering
 * waits for the transfers still using it (a stopped peer holds them until
 * their timeout), and other threads' allocations and transfer checks, which
 * take the lock with the GIL held, must not wait with it. */
static long large_index(const struct slab *s, uintptr_t addr)
{
    for (size_t i = 0; i < s->nlarge; i++)
        if (s->large[i].addr == addr)
            return (long)i;
    return -1;
}

static int take_large(struct slab *s, uintptr_t addr, size_t len)
{
    long i = large_index(s, addr);
    if (i < 0)
        return fail(FERRY_EINVAL, "0x%lx is not a live managed buffer (freed twice, or never allocated)",
                    (unsigned long)addr);
    if (s->large[i].len != len)
        return fail(FERRY_EINVAL, "managed buffer 0x%lx was allocated with %zu bytes, not %zu", (unsigned long)addr,
                    s->large[i].len, len);
    s->large[i] = s->large[--s->nlarge];
    s->used_bytes -= len;
    return 0;
}

int slab_free(struct slab *s, ferry_engine *engine, uintptr_t addr, size_t len)
{
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    if (len > TOP_BLOCK || (addr - s->base >= s->size && large_index(s, addr) >= 0)) {
        rc = take_large(s, addr, len); /* a length of the slab's classes: says it does not match */
        pthread_mutex_unlock(&s->lock);
        if (!rc) {
            ferry_unregister_memory(engine, (void *)addr);
            munmap((void *)addr, len);
        }
        return rc;
    }
    int k = class_of(len);
    if (addr < s->base || addr >= s->base + s->size || (addr - s->base) % GRANULE) {
        rc = fail(FERRY_EINVAL, "0x%lx is not a managed buffer", (unsigned long)addr);
    } else {
        int32_t g = (int32_t)((addr - s->base) / GRANULE);
        if (s->order[g] < 0 || !s->used[g]) {
            rc = fail(FERRY_EINVAL, "0x%lx is not a live managed buffer (freed twice, or never allocated)",
                      (unsigned long)addr);
        } else if (s->order[g] != k) {
            rc = fail(FERRY_EINVAL, "managed buffer 0x%lx was allocated with up to %zu bytes; length %zu does not match",
                      (unsigned long)addr, GRANULE << s->order[g], len);
        } else {
            s->used[g] = 0;
            s->used_bytes -= GRANULE << k;
            while (k < NCLASSES - 1) { /* merge with the free buddy, as long as there is one */
                int32_t buddy = g ^ (int32_t)(1u << k);
                if (s->order[buddy] != k || s->used[buddy])
                    break;
                list_remove(s, k, buddy);
                s->order[g > buddy ? g : buddy] = -1;
                g = g < buddy ? g : buddy;
                k++;
                s->order[g] = (int8_t)k;
            }
            list_push(s, k, g);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

/* Caller holds s->lock. */
static int check_locked(struct slab *s, uintptr_t addr, size_t len)
{
    if (addr < s->base || addr >= s->base + s->size)
        return 0;
    int32_t g = (int32_t)((addr - s->base) / GRANULE);
    for (int k = 0; k < NCLASSES; k++) {
        int32_t head = g & ~(int32_t)((1u << k) - 1);
        if (s->order[head] != k)
            continue;
        uintptr_t start = s->base + (uintptr_t)head * GRANULE, end = start + (GRANULE << k);
        if (!s->used[head])
            return fail(FERRY_ENOTREG, "0x%lx lies in a freed managed buffer (0x%lx, %zu bytes)",
                        (unsigned long)addr, (unsigned long)start, GRANULE << k);
        if (len > end - addr)
            return fail(FERRY_ENOTREG, "0x%lx+%zu runs past the end of managed buffer 0x%lx (%zu bytes)",
                        (unsigned long)addr, len, (unsigned long)start, GRANULE << k);
        return 0;
    }
    return fail(FERRY_ENOTREG, "0x%lx: managed pool bookkeeping is inconsistent", (unsigned long)addr);
}

/* Is addr in the region?  Without s->lock: size first (see the top). */
static bool in_region(const struct slab *s, uintptr_t addr)
{
    size_t size = __atomic_load_n(&s->size, __ATOMIC_ACQUIRE);
    return size && addr >= s->base && addr - s->base < size;
}

int slab_check(struct slab *s, uintptr_t addr, size_t len)
{
    if (!in_region(s, addr))
        return 0;
    pthread_mutex_lock(&s->lock);
    int rc = check_locked(s, addr, len);
    pthread_mutex_unlock(&s->lock);
    return rc;
}

size_t slab_check_requests(struct slab *s, const struct ferry_request *reqs, size_t n)
{
    size_t bad = 0;
    int locked = 0;
    for (size_t i = 0; i < n && !bad; i++) {
        uintptr_t a = (uintptr_t)reqs[i].source;
        if (!in_region(s, a) || !reqs[i].length) /* zero-length: touches nothing */
            continue;
        if (!locked) {
            pthread_mutex_lock(&s->lock);
            locked = 1;
        }
        if (check_locked(s, a, reqs[i].length))
            bad = i + 1;
    }
    if (locked)
        pthread_mutex_unlock(&s->lock);
    return bad;
}

void slab_info(struct slab *s, uintptr_t *base, size_t *size, size_t *used, size_t *large_count)
{
    pthread_mutex_lock(&s->lock);
    *base = s->base;
    *size = s->size;
    *used = s->used_bytes;
    *large_count = s->nlarge;
    pthread_mutex_unlock(&s->lock);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * memory.c — the engine's memory calls: registration (where a location
 * string or a pointer says the memory lives, and the staging pool a device
 * registration needs), unregistration, and ferry_mem_alloc/free/copy.
 * Thread-safe: the registry has its own lock; pools are created under
 * the engine's pool lock.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "abi.h"
#include "device/device.h"
#include "engine/engine.h"
#include "err.h"
#include "log.h"
#include "net.h"

/* ------------------------------------------------------------ device copies */

static const struct ferry_device_ops *region_device(const struct memreg_region *r)
{
    return ferry_device_of_location(r->location, NULL);
}

/* ------------------------------------------------------------ registration order */

/* Appends addr to the registration order.  Out of memory it is left out:
 * it then comes last in the descriptor (engine_order_regions). */
static void order_append(ferry_engine *e, uint64_t addr)
{
    pthread_mutex_lock(&e->order_lock);
    if (e->norder == e->order_cap) {
        size_t cap = e->order_cap ? e->order_cap * 2 : 16;
        uint64_t *n = realloc(e->reg_order, cap * sizeof *n);
        if (n) {
            e->reg_order = n;
            e->order_cap = cap;
        }
    }
    if (e->norder < e->order_cap)
        e->reg_order[e->norder++] = addr;
    else
        LOG_WARN("registration order: out of memory; 0x%llx is listed last", (unsigned long long)addr);
    pthread_mutex_unlock(&e->order_lock);
}

static void order_remove(ferry_engine *e, uint64_t addr)
{
    pthread_mutex_lock(&e->order_lock);
    for (size_t i = 0; i < e->norder; i++) {
        if (e->reg_order[i] == addr) {
            memmove(&e->reg_order[i], &e->reg_order[i + 1], (e->norder - i - 1) * sizeof *e->reg_order);
            e->norder--;
            break;
        }
    }
    pthread_mutex_unlock(&e->order_lock);
}

struct ranked_region {
    uint64_t rank;
    struct memreg_region r;
};

static int by_rank(const void *a, const void *b)
{
    const struct ranked_region *x = a, *y = b;
    if (x->rank != y->rank)
        return x->rank < y->rank ? -1 : 1;
    return x->r.addr < y->r.addr ? -1 : x->r.addr > y->r.addr;
}

void engine_order_regions(ferry_engine *e, struct memreg_region *r, size_t n)
{
    struct ranked_region *k = n > 1 ? malloc(n * sizeof *k) : NULL;
    if (!k)
        return; /* one region, or out of memory: address order */
    for (size_t i = 0; i < n; i++)
        k[i] = (struct ranked_region){UINT64_MAX, r[i]}; /* not in the order (yet): last */
    pthread_mutex_lock(&e->order_lock);
    for (size_t i = 0; i < e->norder; i++) { /* r is sorted by address: find each by bisection */
        size_t lo = 0, hi = n;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (k[mid].r.addr < e->reg_order[i])
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < n && k[lo].r.addr == e->reg_order[i] && k[lo].rank == UINT64_MAX)
            k[lo].rank = i;
    }
    pthread_mutex_unlock(&e->order_lock);
    qsort(k, n, sizeof *k, by_rank);
    for (size_t i = 0; i < n; i++)
        r[i] = k[i].r;
    free(k);
}

/* ------------------------------------------------------------ memory */

/* The device table of a location string and its index.  With `check` the
 * device must be present: its driver loads and the index is in range (host
 * memory needs neither). */
static int location_device(const char *location, int check, const struct ferry_device_ops **ops, int *index)
{
    int rc = ferry_location_resolve(location, ops, index);
    if (rc || !check || ((*ops)->caps & FERRY_DEVICE_HOST))
        return rc;
    if ((*ops)->init() != 0)
        return ferry_fail(FERRY_ENODEV, "location \"%s\": %s", location, ferry_last_error());
    if (*index >= (*ops)->device_count())
        return ferry_fail(FERRY_ENODEV, "location \"%s\": this host has %d %s device(s)", location,
                          (*ops)->device_count(), (*ops)->kind);
    return 0;
}

/* Resolves a location string against the pointer: the kind must exist and the
 * device layer must agree that the memory is of that kind. */
static int resolve_location(void *addr, size_t len, const char *location, struct memreg_region *r)
{
    int dev = -1;
    /* the driver may be loaded by the application only (torch allocated the
     * memory): detect initialises such a backend, so its memory is not taken
     * for host memory */
    const struct ferry_device_ops *owner = ferry_device_detect(addr, len, &dev);
    if (!location) {
        if (owner)
            snprintf(r->location, sizeof r->location, "%s:%d", owner->kind, dev);
        else
            strcpy(r->location, FERRY_LOCATION_HOST);
        r->device_index = owner ? dev : -1;
        return 0;
    }
    const struct ferry_device_ops *ops;
    int index;
    int rc = location_device(location, 1, &ops, &index);
    if (rc)
        return rc;
    if (ops->caps & FERRY_DEVICE_HOST) {
        if (owner)
            return ferry_fail(FERRY_EINVAL, "0x%llx is %s:%d device memory, registered as \"%s\"",
                              (unsigned long long)(uintptr_t)addr, owner->kind, dev, location);
        snprintf(r->location, sizeof r->location, "%s", location);
        r->device_index = -1;
        return 0;
    }
    if ((rc = ferry_device_check_location(ops, addr, len, index)) != 0)
        return rc;
    snprintf(r->location, sizeof r->location, "%s:%d", ops->kind, index);
    r->device_index = index;
    return 0;
}

/* Registers a region with every transport, then the registry. */
static int register_region(ferry_engine *e, struct memreg_region *r)
{
    int rc = 0;
    size_t done = 0;
    for (; !rc && done < e->ntransports; done++)
        if (e->tops[done]->register_memory)
            rc = e->tops[done]->register_memory(e->tstate[done], r, &r->transport_handle[done]);
    if (!rc)
        rc = memreg_add(&e->registry, r);
    if (rc) {
        for (size_t i = 0; i < done; i++)
            if (e->tops[i]->unregister_memory && r->transport_handle[i])
                e->tops[i]->unregister_memory(e->tstate[i], r->transport_handle[i]);
    }
    return rc;
}

int engine_pool_index(ferry_engine *e, const char *location)
{
    size_t n = atomic_load(&e->npools);
    for (size_t i = 0; i < n; i++)
        if (strcmp(e->pools[i].location, location) == 0)
            return (int)i;
    return -1;
}

/* Hands a staged frame, rewritten to host memory, to its transport. */
static void staging_send(void *ctx, struct xfer_frame *f)
{
    engine_submit_frame(ctx, f, "target segment was closed while the frame was staged");
}

/* Creates the staging pool of a device the first time memory of that device
 * is registered: registration time, never the hot path.  Its chunks are
 * registered as host memory, so every transport (RDMA MRs too) can use them. */
static int ensure_pool(ferry_engine *e, const struct memreg_region *dev_region)
{
    pthread_mutex_lock(&e->pool_lock);
    int rc = 0;
    if (engine_pool_index(e, dev_region->location) >= 0)
        goto out;
    if (atomic_load(&e->npools) == MAX_POOLS) {
        rc = ferry_fail(FERRY_ENOMEM, "more than %d devices need staging pools", MAX_POOLS);
        goto out;
    }
    const struct ferry_device_ops *ops = region_device(dev_region);
    struct pool_entry *pe = &e->pools[atomic_load(&e->npools)];
    size_t len, chunk_size;
    unsigned nchunks;
    /* frames are at most a slice: the pool's pinned bytes in slice-sized chunks */
    staging_pool_shape(e->cfg.staging_chunk_size, e->cfg.staging_chunks, e->cfg.slice_size, &chunk_size, &nchunks);
    rc = staging_pool_create(ops, dev_region->device_index, chunk_size, nchunks, staging_send, e, &pe->pool,
                             &pe->base, &len);
    if (rc)
        goto out;
    struct memreg_region r = {.addr = (uint64_t)(uintptr_t)pe->base, .len = len, .device_index = -1};
    snprintf(r.location, sizeof r.location, FERRY_LOCATION_HOST);
    if ((rc = register_region(e, &r)) != 0) {
        staging_pool_destroy(pe->pool);
        goto out;
    }
    snprintf(pe->location, sizeof pe->location, "%s", dev_region->location);
    pe->aggregates = staging_pool_aggregates(pe->pool);
    atomic_fetch_add(&e->npools, 1);
out:
    pthread_mutex_unlock(&e->pool_lock);
    return rc;
}

int ferry_register_memory(ferry_engine *e, void *addr, size_t len, const char *location, int remote_accessible)
{
    if (!e || !addr || len == 0)
        return ferry_fail(FERRY_EINVAL, "register: engine, address and length must be non-zero (addr %p len %zu)",
                          addr, len);
    struct memreg_region r = {.addr = (uint64_t)(uintptr_t)addr, .len = len, .remote_accessible = !!remote_accessible};
    int rc = resolve_location(addr, len, location, &r);
    if (!rc && r.device_index >= 0) /* its streams now, not mid-transfer (stream_cache.c) */
        rc = ferry_device_prepare(region_device(&r), r.device_index);
    if (!rc && r.device_index >= 0)
        rc = ensure_pool(e, &r);
    if (!rc)
        rc = register_region(e, &r);
    if (rc)
        return rc;
    if (remote_accessible)
        order_append(e, r.addr);
    LOG_DEBUG("registered %p+%zu %s%s", addr, len, r.location, remote_accessible ? " remote" : "");
    if (remote_accessible && (rc = engine_publish(e)) != 0)
        LOG_WARN("registered %p+%zu but could not publish the new descriptor: %s", addr, len, ferry_last_error());
    return 0;
}

int ferry_unregister_memory(ferry_engine *e, void *addr)
{
    if (!e)
        return ferry_fail(FERRY_EINVAL, "unregister: engine is NULL");
    struct memreg_region r;
    int rc = memreg_remove(&e->registry, (uint64_t)(uintptr_t)addr, &r);
    if (!rc && r.remote_accessible)
        order_remove(e, r.addr);
    for (size_t i = 0; !rc && i < e->ntransports; i++)
        if (e->tops[i]->unregister_memory && r.transport_handle[i])
            e->tops[i]->unregister_memory(e->tstate[i], r.transport_handle[i]);
    if (!rc && r.remote_accessible && engine_publish(e) != 0)
        LOG_WARN("unregistered %p but could not publish the new descriptor: %s", addr, ferry_last_error());
    return rc;
}

int ferry_mem_alloc(ferry_engine *e, const char *location, size_t len, void **out)
{
    const struct ferry_device_ops *ops;
    int index;
    if (!e || !location || !out || len == 0)
        return ferry_fail(FERRY_EINVAL, "mem_alloc: NULL argument or zero length");
    int rc = location_device(location, 1, &ops, &index);
    return rc ? rc : ops->mem_alloc(index, len, out);
}

void ferry_mem_free(ferry_engine *e, const char *location, void *ptr, size_t len)
{
    const struct ferry_device_ops *ops;
    int index;
    (void)e;
    (void)len; /* every table frees by pointer */
    if (ptr && location && location_device(location, 0, &ops, &index) == 0)
        ops->mem_free(index, ptr);
}

/* The device of one side of ferry_mem_copy: a registration says it first
 * (memory registered as npu:N that ACL cannot classify), else the device
 * layer.  Host memory of any kind is fine: the device copies bounce what
 * their driver cannot use directly (pageable memory on NPUs). */
static const struct ferry_device_ops *mem_copy_side(ferry_engine *e, const void *p, size_t len, int *dev)
{
    struct memreg_region r;
    if (memreg_find(&e->registry, (uint64_t)(uintptr_t)p, len, 0, &r) == 0 && r.device_index >= 0) {
        *dev = r.device_index;
        return ferry_device_of_location(r.location, NULL);
    }
    return ferry_device_locate(p, len, dev);
}

int ferry_mem_copy(ferry_engine *e, void *dst, const void *src, size_t len)
{
    if (!e || !dst || !src)
        return ferry_fail(FERRY_EINVAL, "mem_copy: NULL argument");
    if (len == 0)
        return 0;
    int ddev = -1, sdev = -1;
    const struct ferry_device_ops *d = mem_copy_side(e, dst, len, &ddev);
    const struct ferry_device_ops *s = mem_copy_side(e, src, len, &sdev);
    if (!d && !s) {
        memcpy(dst, src, len);
        return 0;
    }
    if (d && s && d != s)
        return ferry_fail(FERRY_ENOTSUP, "mem_copy between %s and %s memory", s->kind, d->kind);
    struct ferry_copy c = {dst, src, len};
    if (d && s)
        return ferry_device_copy_sync(d, sdev, FERRY_COPY_D2D, &c, 1);
    if (d)
        return ferry_device_copy_sync(d, ddev, FERRY_COPY_H2D, &c, 1);
    return ferry_device_copy_sync(s, sdev, FERRY_COPY_D2H, &c, 1);
}


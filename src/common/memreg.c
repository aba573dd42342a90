/* SPDX-License-Identifier: Apache-2.0 */
/*
 * memreg.c — sorted, lock-protected registry of memory regions (see memreg.h).
 * Any thread may call; writers (add/remove) are rare, readers are hot.
 */
#include "memreg.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "log.h"
#include "timespec.h"

void memreg_init(struct memreg *r)
{
    memset(r, 0, sizeof *r);
    pthread_rwlock_init(&r->lock, NULL);
    pthread_mutex_init(&r->access_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->access_ended, &ca);
    pthread_condattr_destroy(&ca);
}

void memreg_destroy(struct memreg *r)
{
    free(r->regions);
    pthread_rwlock_destroy(&r->lock);
    pthread_mutex_destroy(&r->access_lock);
    pthread_cond_destroy(&r->access_ended);
    memset(r, 0, sizeof *r);
}

/* index of the first region with addr > key (upper bound) */
static size_t upper_bound(const struct memreg_region *regions, size_t count, uint64_t key)
{
    size_t lo = 0, hi = count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (regions[mid].addr <= key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

long memreg_search(const struct memreg_region *regions, size_t count, uint64_t addr, uint64_t len)
{
    if (len == 0 || addr + len < addr)
        return -1;
    size_t i = upper_bound(regions, count, addr);
    if (i == 0)
        return -1;
    const struct memreg_region *c = &regions[i - 1];
    if (addr >= c->addr && addr + len <= c->addr + c->len)
        return (long)(i - 1);
    return -1;
}

int memreg_add(struct memreg *r, const struct memreg_region *region)
{
    if (region->len == 0 || region->addr + region->len < region->addr)
        return ferry_fail(FERRY_EINVAL, "region 0x%llx+%llu is empty or wraps",
                          (unsigned long long)region->addr, (unsigned long long)region->len);
    pthread_rwlock_wrlock(&r->lock);
    size_t i = upper_bound(r->regions, r->count, region->addr);
    const struct memreg_region *prev = i > 0 ? &r->regions[i - 1] : NULL;
    const struct memreg_region *next = i < r->count ? &r->regions[i] : NULL;
    if ((prev && prev->addr + prev->len > region->addr) ||
        (next && region->addr + region->len > next->addr)) {
        const struct memreg_region *o = (prev && prev->addr + prev->len > region->addr) ? prev : next;
        int rc = ferry_fail(FERRY_EEXIST, "0x%llx+%llu overlaps registration 0x%llx+%llu",
                            (unsigned long long)region->addr, (unsigned long long)region->len,
                            (unsigned long long)o->addr, (unsigned long long)o->len);
        pthread_rwlock_unlock(&r->lock);
        return rc;
    }
    if (r->count == r->capacity) {
        size_t cap = r->capacity ? r->capacity * 2 : 16;
        struct memreg_region *n = realloc(r->regions, cap * sizeof *n);
        if (!n) {
            pthread_rwlock_unlock(&r->lock);
            return ferry_fail(FERRY_ENOMEM, "registry grow to %zu regions", cap);
        }
        r->regions = n;
        r->capacity = cap;
    }
    memmove(&r->regions[i + 1], &r->regions[i], (r->count - i) * sizeof *r->regions);
    r->regions[i] = *region;
    r->count++;
    r->generation++;
    pthread_rwlock_unlock(&r->lock);
    return 0;
}

static int overlaps(const struct memreg_access *a, uint64_t addr, uint64_t len)
{
    return a->addr < addr + len && addr < a->addr + a->len;
}

/* Revokes the accesses overlapping [addr, addr+len) and waits until none is
 * left.  No new one can start: the region is already out of the array, and
 * memreg_access_begin links its access under the read lock it found it with. */
static void drain_accesses(struct memreg *r, uint64_t addr, uint64_t len)
{
    pthread_mutex_lock(&r->access_lock);
    /* the warning every 5 s of waiting, not every few wake-ups: each
     * memreg_access_end wakes this loop, many within a millisecond */
    struct timespec warn_at = timespec_in_ms(CLOCK_MONOTONIC, 5000);
    for (;;) {
        size_t left = 0;
        for (struct memreg_access *a = r->accesses; a; a = a->next) {
            if (!overlaps(a, addr, len))
                continue;
            left++;
            atomic_store_explicit(&a->revoked, 1, memory_order_release);
            if (a->cancel && !a->cancelled) {
                a->cancelled = 1;
                a->cancel(a->cancel_arg);
            }
        }
        if (left == 0)
            break;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > warn_at.tv_sec || (now.tv_sec == warn_at.tv_sec && now.tv_nsec >= warn_at.tv_nsec)) {
            warn_at = timespec_in_ms(CLOCK_MONOTONIC, 5000);
            LOG_WARN("unregister of 0x%llx+%llu still waits for %zu access(es) in flight",
                     (unsigned long long)addr, (unsigned long long)len, left);
        }
        /* woken by every memreg_access_end; the timed wait only paces the warning */
        struct timespec ts = timespec_in_ms(CLOCK_MONOTONIC, 1000);
        pthread_cond_timedwait(&r->access_ended, &r->access_lock, &ts);
    }
    pthread_mutex_unlock(&r->access_lock);
}

int memreg_remove(struct memreg *r, uint64_t addr, struct memreg_region *out)
{
    pthread_rwlock_wrlock(&r->lock);
    size_t i = upper_bound(r->regions, r->count, addr);
    if (i == 0 || r->regions[i - 1].addr != addr) {
        pthread_rwlock_unlock(&r->lock);
        return ferry_fail(FERRY_ENOTREG, "no registration starts at 0x%llx", (unsigned long long)addr);
    }
    i--;
    struct memreg_region gone = r->regions[i];
    memmove(&r->regions[i], &r->regions[i + 1], (r->count - i - 1) * sizeof *r->regions);
    r->count--;
    r->generation++;
    pthread_rwlock_unlock(&r->lock);
    drain_accesses(r, gone.addr, gone.len);
    if (out)
        *out = gone;
    return 0;
}

/* Index of the region holding [addr, addr+len): `hint` (the previous
 * range's region: a batch's ranges mostly share one) is tried first. */
static long find_region(const struct memreg *r, long hint, uint64_t addr, uint64_t len)
{
    if (hint >= 0 && len && addr + len >= addr && addr >= r->regions[hint].addr &&
        addr + len <= r->regions[hint].addr + r->regions[hint].len)
        return hint;
    return memreg_search(r->regions, r->count, addr, len);
}

int memreg_access_begin_many(struct memreg *r, const struct memreg_want *w, size_t n, int remote_only,
                             void (*cancel)(void *), void *cancel_arg, size_t *begun)
{
    pthread_rwlock_rdlock(&r->lock);
    size_t k = 0;
    for (long i = -1; k < n; k++) {
        i = find_region(r, i, w[k].addr, w[k].len);
        if (i < 0 || (remote_only && !r->regions[i].remote_accessible))
            break;
        if (w[k].out)
            *w[k].out = r->regions[i];
        struct memreg_access *a = w[k].acc;
        a->addr = w[k].addr;
        a->len = w[k].len;
        a->cancel = cancel;
        a->cancel_arg = cancel_arg;
        atomic_init(&a->revoked, 0);
        a->cancelled = 0;
    }
    if (k) { /* linked under the read lock they were found with: see drain_accesses */
        pthread_mutex_lock(&r->access_lock);
        for (size_t j = 0; j < k; j++) {
            struct memreg_access *a = w[j].acc;
            a->prev = NULL;
            a->next = r->accesses;
            if (a->next)
                a->next->prev = a;
            r->accesses = a;
        }
        pthread_mutex_unlock(&r->access_lock);
    }
    pthread_rwlock_unlock(&r->lock);
    *begun = k;
    return k == n ? 0 : FERRY_ENOTREG;
}

int memreg_access_begin(struct memreg *r, struct memreg_access *a, uint64_t addr, uint64_t len,
                        int remote_only, struct memreg_region *out, void (*cancel)(void *), void *cancel_arg)
{
    struct memreg_want w = {addr, len, a, out};
    size_t begun;
    return memreg_access_begin_many(r, &w, 1, remote_only, cancel, cancel_arg, &begun);
}

void memreg_access_end_many(struct memreg *r, struct memreg_access *const *a, size_t n)
{
    int wake = 0;
    pthread_mutex_lock(&r->access_lock);
    for (size_t i = 0; i < n; i++) {
        struct memreg_access *x = a[i];
        if (x->prev)
            x->prev->next = x->next;
        else
            r->accesses = x->next;
        if (x->next)
            x->next->prev = x->prev;
        x->prev = x->next = NULL;
        wake |= atomic_load_explicit(&x->revoked, memory_order_relaxed);
    }
    pthread_mutex_unlock(&r->access_lock);
    if (wake)
        pthread_cond_broadcast(&r->access_ended);
}

void memreg_access_end(struct memreg *r, struct memreg_access *a)
{
    memreg_access_end_many(r, &a, 1);
}

size_t memreg_access_count(struct memreg *r)
{
    size_t n = 0;
    pthread_mutex_lock(&r->access_lock);
    for (struct memreg_access *a = r->accesses; a; a = a->next)
        n++;
    pthread_mutex_unlock(&r->access_lock);
    return n;
}

int memreg_find(struct memreg *r, uint64_t addr, uint64_t len, int remote_only,
                struct memreg_region *out)
{
    pthread_rwlock_rdlock(&r->lock);
    long i = memreg_search(r->regions, r->count, addr, len);
    int ok = i >= 0 && (!remote_only || r->regions[i].remote_accessible);
    if (ok && out)
        *out = r->regions[i];
    pthread_rwlock_unlock(&r->lock);
    return ok ? 0 : FERRY_ENOTREG;
}

size_t memreg_list_remote(struct memreg *r, struct memreg_region *out, size_t max)
{
    size_t n = 0;
    pthread_rwlock_rdlock(&r->lock);
    for (size_t i = 0; i < r->count; i++) {
        if (!r->regions[i].remote_accessible)
            continue;
        if (n < max)
            out[n] = r->regions[i];
        n++;
    }
    pthread_rwlock_unlock(&r->lock);
    return n;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sim.c — the strict simulated accelerator ("sim:N"), for hosts without one.
 *
 * Device memory is one PROT_NONE address reservation per process, cut into
 * FERRY_SIM_DEVICES equal regions (sim:0, sim:1, ...) that a next-fit
 * allocator carves into 4 KiB-aligned allocations.  The bytes live in a
 * separate read-write "shadow" mapping at the same offsets, known only to this
 * file, so any direct load or store to a device address by other code faults:
 * a path that forgets to stage through the copy functions crashes its test.
 * Threads: each stream owns one worker thread (its "copy engine") that
 * validates and performs the stream's queued copies in order; a copy outside
 * a live allocation of the stream's device puts the stream in a sticky
 * FERRY_EIO state, like a CUDA illegal-address fault.  Owns the reservation,
 * the shadow, the per-device allocation tables and the streams' workers.
 * IPC, like CUDA's, is sim_ipc.c, the settings below are read in
 * sim_config.c; what the files share is sim_internal.h.
 * Fault injection, as strict as hardware: FERRY_SIM_FAIL_COPY names copy
 * jobs (copy_async calls, numbered from 1 in the order they are made in
 * this process) that fail with FERRY_EIO: "N" when the device runs it (the
 * stream's sticky error, seen by query, sync and later copy_async, like a
 * CUDA fault reported at synchronisation), "N:start" at copy_async itself
 * (nothing queued, the stream stays usable, like a rejected launch).
 * FERRY_SIM_HOLD_COPY="N:path" holds copy job N back (its stream's worker
 * waits before running it) until the file path exists: a test decides when
 * a copy completes, without timing.  FERRY_SIM_REFUSE="op:N" refuses the
 * Nth call of host_alloc (FERRY_ENOMEM, as cuMemHostAlloc out of memory),
 * stream_host_func, stream_write_flag or stream_mark ("mark": FERRY_EIO, as
 * a refused launch: nothing enqueued; "mark_unsupported": FERRY_ENOTSUP, as
 * CUDA without stream memory operations), each op counted from 1 in this
 * process.  A function on a stream (stream_then)
 * is not called once the stream has failed, as cuLaunchHostFunc's is not.
 * FERRY_SIM_SYNC_TIMEOUT_MS bounds stream_sync as the npu backend does
 * (FERRY_NPU_SYNC_TIMEOUT_MS) on a device without stream abort: a stream
 * whose copies do not finish in time (one held back) fails FERRY_ETIMEDOUT,
 * sticky, and is abandoned: stream_abandoned says so, its held copy still
 * runs when released, and stream_destroy leaves it to the process's end.
 * FERRY_SIM_H2D_DELAY_US makes every host-to-device job wait before its
 * bytes land (D2H and D2D jobs are not slowed), so a transfer reported
 * complete before its final copy finished reads stale bytes at once.
 * Copies order themselves through device memory for ThreadSanitizer as the
 * hardware's coherence does (coherence() below).
 */
#include "device/backend.h"
#include "device/device.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "timespec.h"

#include "device/sim_internal.h"

struct sim_hw sim_hw = {.loader = FERRY_DEVICE_LOADER_INIT};

/* A queued copy_async call (its copies are performed in order), or a host
 * function (fn) or a wait on a completion flag (flag) of stream ordering. */
struct sim_job {
    struct sim_job *next;
    void (*fn)(void *);
    void *arg;
    volatile uint32_t *flag;     /* a wait (stream_wait_flag) */
    volatile uint32_t *mark;     /* a store (stream_mark) */
    bool then;                   /* fn is stream_then's: skipped on a failed stream */
    uint32_t value;
    enum ferry_copy_dir dir;
    uint64_t number;             /* its place in the process's copy jobs */
    int inject;                  /* FERRY_SIM_FAIL_COPY: fail it when it runs */
    size_t n;
    struct ferry_copy copies[];
};

struct sim_stream {
    uint32_t magic;
    int dev;
    pthread_t worker;
    pthread_mutex_t lock;        /* guards everything below */
    pthread_cond_t wake;         /* worker: a job was queued, or stop */
    pthread_cond_t idle;         /* waiters: a job finished */
    struct sim_job *head;
    struct sim_job *tail;
    uint64_t enqueued;
    uint64_t finished;
    int error;                   /* 0, FERRY_EIO or FERRY_ETIMEDOUT, sticky */
    bool abandoned;              /* a sync timed out (FERRY_SIM_SYNC_TIMEOUT_MS): never destroyed */
    int stop;
    int waits_queued;            /* flag waits enqueued here and not yet over */
    char message[256];           /* the error's detail */
};

/* ---------------------------------------------------------------- setup */

/* A held copy job waits for its file (FERRY_SIM_HOLD_COPY): tests only. */
static void hold_back(const struct sim_job *job)
{
    if (!sim_hw.hold_job || job->number != sim_hw.hold_job)
        return;
    while (access(sim_hw.hold_path, F_OK) != 0)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
}

static void *map_anonymous(size_t len, int prot)
{
    void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Reserves the device addresses and the shadow.  Without an explicit
 * FERRY_SIM_DEVICE_MEM it halves the size until the kernel agrees (strict
 * overcommit, address-space limits). */
static int sim_load(void)
{
    int ndev = 0, size_given = 0;
    size_t dev_size = 0;
    int rc = sim_read_config(&ndev, &dev_size, &size_given);
    if (rc < 0)
        return rc;
    for (;;) {
        size_t total = (size_t)ndev * dev_size;
        char *base = map_anonymous(total, PROT_NONE);
        char *shadow = base ? map_anonymous(total, PROT_READ | PROT_WRITE) : NULL;
        if (shadow != NULL) {
            sim_hw.base = base;
            sim_hw.shadow = shadow;
            sim_hw.total = total;
            break;
        }
        int err = errno;
        if (base != NULL)
            munmap(base, total);
        if (size_given || dev_size / 2 < SIM_FALLBACK_FLOOR)
            return ferry_fail(FERRY_ENODEV,
                              "sim: cannot map 2 x %zu bytes for %d devices: %s "
                              "(lower FERRY_SIM_DEVICE_MEM)",
                              total, ndev, strerror(err));
        dev_size /= 2;
        LOG_WARN("sim: mapping %zu bytes failed (%s); trying %zu bytes per device", total,
                 strerror(err), dev_size);
    }
    /* The shadow is large and mostly untouched; keep it out of core dumps. */
    (void)madvise(sim_hw.shadow, sim_hw.total, MADV_DONTDUMP);
    sim_hw.ndev = ndev;
    sim_hw.dev_size = dev_size;
    for (int i = 0; i < ndev; i++)
        pthread_mutex_init(&sim_hw.devs[i].lock, NULL);
    LOG_DEBUG("sim: %d devices of %zu bytes at %p", ndev, dev_size, (void *)sim_hw.base);
    return 0;
}

int sim_init(void)
{
    return ferry_device_load_once(&sim_hw.loader, sim_load);
}

static int sim_device_count(void)
{
    return sim_init() == 0 ? sim_hw.ndev : 0;
}

int sim_check_dev(int dev)
{
    if (dev < 0 || dev >= sim_hw.ndev)
        return ferry_fail(FERRY_ENODEV, "sim:%d does not exist (FERRY_SIM_DEVICES=%d)", dev,
                          sim_hw.ndev);
    return 0;
}

/* ---------------------------------------------------------------- addresses */

/* The sim device whose region holds p, or -1. */
int sim_device_of(const void *p)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)sim_hw.base;
    if (a < b || a - b >= sim_hw.total)
        return -1;
    return (int)((a - b) / sim_hw.dev_size);
}

/* 1 if [p, p+len) overlaps [start, start+size). */
static int overlaps(const void *p, size_t len, const char *start, size_t size)
{
    uintptr_t a = (uintptr_t)p, s = (uintptr_t)start;
    return a < s + size && s < a + len;
}

char *sim_shadow_of(const void *p)
{
    return sim_hw.shadow + ((const char *)p - sim_hw.base);
}

/* Index of the last allocation with off <= x, or -1.  Caller holds d->lock. */
long sim_last_at_or_before(const struct sim_device *d, size_t x)
{
    long lo = 0, hi = (long)d->count - 1, found = -1;
    while (lo <= hi) {
        long mid = lo + (hi - lo) / 2;
        if (d->allocs[mid].off <= x) {
            found = mid;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    return found;
}

/* ---------------------------------------------------------------- memory */

/* Finds a gap of span bytes at or after from; stores its offset and the
 * index to insert at.  Caller holds d->lock. */
static int find_gap(const struct sim_device *d, size_t from, size_t span, size_t *off,
                    size_t *pos)
{
    size_t prev_end = 0;
    for (size_t i = 0; i <= d->count; i++) {
        size_t gap_end = i < d->count ? d->allocs[i].off : sim_hw.dev_size;
        size_t start = prev_end > from ? prev_end : from;
        if (gap_end >= start && gap_end - start >= span) {
            *off = start;
            *pos = i;
            return 0;
        }
        if (i < d->count)
            prev_end = d->allocs[i].off + d->allocs[i].span;
    }
    return -1;
}

int sim_mem_alloc(int dev, size_t len, void **out)
{
    int rc = sim_init();
    if (rc < 0)
        return rc;
    if ((rc = sim_check_dev(dev)) < 0)
        return rc;
    if (len == 0 || out == NULL)
        return ferry_fail(FERRY_EINVAL, "sim:%d: mem_alloc needs len > 0 and out", dev);
    if (len > sim_hw.dev_size)
        return ferry_fail(FERRY_ENOMEM, "sim:%d: %zu bytes asked, device has %zu", dev, len,
                          sim_hw.dev_size);
    size_t span = (len + SIM_PAGE - 1) & ~(SIM_PAGE - 1);
    struct sim_device *d = &sim_hw.devs[dev];
    size_t off, pos;

    pthread_mutex_lock(&d->lock);
    /* Next-fit: freed addresses are reused as late as possible, so a stale
     * device pointer meets "no live allocation" instead of someone's data. */
    if (find_gap(d, d->cursor, span, &off, &pos) < 0 && find_gap(d, 0, span, &off, &pos) < 0) {
        pthread_mutex_unlock(&d->lock);
        return ferry_fail(FERRY_ENOMEM, "sim:%d: no free range of %zu bytes", dev, span);
    }
    if (d->count == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        struct sim_alloc *a = realloc(d->allocs, cap * sizeof *a);
        if (a == NULL) {
            pthread_mutex_unlock(&d->lock);
            return ferry_fail(FERRY_ENOMEM, "sim:%d: allocation table", dev);
        }
        d->allocs = a;
        d->cap = cap;
    }
    memmove(&d->allocs[pos + 1], &d->allocs[pos], (d->count - pos) * sizeof d->allocs[0]);
    d->allocs[pos] = (struct sim_alloc){.off = off, .len = len, .span = span, .fd = -1, .tag = NULL};
    d->count++;
    d->cursor = off + span;
    pthread_mutex_unlock(&d->lock);

    *out = sim_hw.base + (size_t)dev * sim_hw.dev_size + off;
    return 0;
}

/* Removes allocation i of d, returning its bytes to the kernel while still
 * holding the lock, so a new allocation of the range cannot be written
 * before it is zeroed.  Shared ranges (exported or imported) get a fresh
 * private mapping instead: the memfd's bytes belong to others too. */
void sim_release_locked(struct sim_device *d, size_t i)
{
    struct sim_alloc *a = &d->allocs[i];
    char *sh = sim_shadow_of(sim_hw.base + (size_t)(d - sim_hw.devs) * sim_hw.dev_size + a->off);
    if (a->fd >= 0 || a->imported) {
        sim_ipc_release(a);
        if (mmap(sh, a->span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
                 -1, 0) == MAP_FAILED)
            LOG_ERROR("sim: cannot remap a shared allocation private: %s", strerror(errno));
        if (a->fd >= 0)
            close(a->fd);
    } else {
        (void)madvise(sh, a->span, MADV_DONTNEED);
    }
    memmove(&d->allocs[i], &d->allocs[i + 1], (d->count - i - 1) * sizeof d->allocs[0]);
    d->count--;
}

static void sim_mem_free(int dev, void *ptr)
{
    if (ptr == NULL)
        return;
    if (!ferry_device_loaded(&sim_hw.loader) || dev < 0 || dev >= sim_hw.ndev ||
        sim_device_of(ptr) != dev) {
        LOG_ERROR("sim: mem_free(sim:%d, %p): not memory of that device", dev, ptr);
        return;
    }
    struct sim_device *d = &sim_hw.devs[dev];
    size_t off = (size_t)((char *)ptr - sim_hw.base) - (size_t)dev * sim_hw.dev_size;
    pthread_mutex_lock(&d->lock);
    long i = sim_last_at_or_before(d, off);
    if (i < 0 || d->allocs[i].off != off) {
        pthread_mutex_unlock(&d->lock);
        LOG_ERROR("sim: mem_free(sim:%d, %p): not the start of a live allocation", dev, ptr);
        return;
    }
    sim_release_locked(d, (size_t)i);
    pthread_mutex_unlock(&d->lock);
}

/* Whether FERRY_SIM_REFUSE refuses call number call as op. */
static bool refused_as(enum sim_op op, uint64_t call)
{
    for (size_t i = 0; i < sim_hw.nrefusals; i++)
        if (sim_hw.refusals[i].op == op && sim_hw.refusals[i].call == call)
            return true;
    return false;
}

/* Whether FERRY_SIM_REFUSE refuses this call of op (counted here). */
static bool refused(enum sim_op op)
{
    return refused_as(op, atomic_fetch_add(&sim_hw.calls[op], 1) + 1);
}

/* Pinned memory needs no pinning here: page-aligned heap memory (so ASan
 * still sees overruns of staging chunks). */
static int sim_host_alloc(size_t len, void **out)
{
    if (len == 0 || out == NULL || len > SIZE_MAX - SIM_PAGE)
        return ferry_fail(FERRY_EINVAL, "sim: host_alloc needs 0 < len and out");
    if (refused(SIM_OP_HOST_ALLOC))
        return ferry_fail(FERRY_ENOMEM, "sim: host_alloc(%zu) call %llu refused: out of pinned memory, injected by "
                          "FERRY_SIM_REFUSE", len, (unsigned long long)atomic_load(&sim_hw.calls[SIM_OP_HOST_ALLOC]));
    void *p = NULL;
    int err = posix_memalign(&p, SIM_PAGE, (len + SIM_PAGE - 1) & ~(SIM_PAGE - 1));
    if (err != 0)
        return ferry_fail(FERRY_ENOMEM, "sim: host_alloc(%zu): %s", len, strerror(err));
    *out = p;
    return 0;
}

static void sim_host_free(void *ptr)
{
    if (ptr)
        atomic_fetch_add(&sim_hw.host_frees, 1);
    free(ptr);
}

static int sim_locate(const void *ptr, size_t len, int *dev)
{
    (void)len;
    if (!ferry_device_loaded(&sim_hw.loader))
        return 0;
    int d = sim_device_of(ptr);
    if (d < 0)
        return 0;
    if (dev != NULL)
        *dev = d;
    return 1;
}

/* ---------------------------------------------------------------- copies */

static const char *const dir_names[] = {"D2H", "H2D", "D2D"};

/* A device side must lie inside one live allocation of the stream's device.
 * Caller holds that device's lock. */
static int check_device_side(int dev, const void *p, size_t len, size_t idx,
                             enum ferry_copy_dir dir, const char *side, char *msg, size_t cap)
{
    int owner = sim_device_of(p);
    if (owner != dev) {
        if (owner < 0)
            snprintf(msg, cap, "sim:%d: illegal address: copy %zu (%s) %s %p is not sim device "
                     "memory", dev, idx, dir_names[dir], side, p);
        else
            snprintf(msg, cap, "sim:%d: illegal address: copy %zu (%s) %s %p is memory of "
                     "sim:%d, not of this stream's device", dev, idx, dir_names[dir], side, p,
                     owner);
        return FERRY_EIO;
    }
    const struct sim_device *d = &sim_hw.devs[dev];
    size_t off = (size_t)((const char *)p - sim_hw.base) - (size_t)dev * sim_hw.dev_size;
    long i = sim_last_at_or_before(d, off);
    if (i >= 0) {
        const struct sim_alloc *a = &d->allocs[i];
        size_t into = off - a->off;
        if (into <= a->len && len <= a->len - into) {
            sim_ipc_check_access(a, dev, p, len);
            return 0;
        }
    }
    snprintf(msg, cap, "sim:%d: illegal address: copy %zu (%s) %s [%p, +%zu) is not inside "
             "a live allocation", dev, idx, dir_names[dir], side, p, len);
    return FERRY_EIO;
}

/* A host side must not be sim memory (device addresses or the shadow). */
static int check_host_side(int dev, const void *p, size_t len, size_t idx,
                           enum ferry_copy_dir dir, const char *side, char *msg, size_t cap)
{
    if (p == NULL || (uintptr_t)p + len < (uintptr_t)p) {
        snprintf(msg, cap, "sim:%d: copy %zu (%s) %s host range [%p, +%zu) is invalid", dev,
                 idx, dir_names[dir], side, p, len);
        return FERRY_EIO;
    }
    if (overlaps(p, len, sim_hw.base, sim_hw.total) || overlaps(p, len, sim_hw.shadow, sim_hw.total)) {
        snprintf(msg, cap, "sim:%d: copy %zu (%s) %s %p is sim device memory, expected host "
                 "memory", dev, idx, dir_names[dir], side, p);
        return FERRY_EIO;
    }
    return 0;
}

/* Device memory is coherent: a copy that starts after another copy of the
 * same device memory has finished sees its effect (reads what it wrote,
 * overwrites what it read), whichever streams, and so worker threads, ran
 * the two.  Host code often learns that a copy finished in ways
 * ThreadSanitizer cannot follow (an acknowledgement over a socket, through
 * another process), so the device orders its copies itself, as the
 * hardware does: a copy acquires each 2 MiB granule of device memory it
 * touches before touching it and releases it after.  The edge exists only
 * where one copy really was over before the other began; two copies of the
 * same bytes that overlap in time (a completion reported too early) stay a
 * race.  Granules are hashed into a fixed table: a collision adds an edge,
 * never removes one. */
#define SIM_GRANULE_SHIFT 21
#define SIM_COHERENCE_SLOTS 4096
static atomic_uint coherence_slots[SIM_COHERENCE_SLOTS];

static void coherence(const void *dev_p, size_t len, memory_order order)
{
    uintptr_t first = (uintptr_t)((const char *)dev_p - sim_hw.base) >> SIM_GRANULE_SHIFT;
    uintptr_t last = (uintptr_t)((const char *)dev_p - sim_hw.base + len - 1) >> SIM_GRANULE_SHIFT;
    for (uintptr_t g = first; g <= last && g - first < SIM_COHERENCE_SLOTS; g++) {
        atomic_uint *slot = &coherence_slots[g % SIM_COHERENCE_SLOTS];
        if (order == memory_order_release)
            atomic_fetch_add_explicit(slot, 1, memory_order_release);
        else
            (void)atomic_load_explicit(slot, memory_order_acquire);
    }
}

/* Validates every copy of the job, then performs them.  Returns 0, or
 * FERRY_EIO with the reason in msg (no copy of the job is done then). */
static int run_job(int dev, const struct sim_job *job, char *msg, size_t cap)
{
    struct sim_device *d = &sim_hw.devs[dev];
    int rc = 0;
    if (job->inject) {
        snprintf(msg, cap, "sim:%d: copy job %llu (%s, %zu copies) failed on the device: fault injected by "
                 "FERRY_SIM_FAIL_COPY", dev, (unsigned long long)job->number, dir_names[job->dir], job->n);
        return FERRY_EIO;
    }
    pthread_mutex_lock(&d->lock);
    for (size_t i = 0; i < job->n && rc == 0; i++) {
        const struct ferry_copy *c = &job->copies[i];
        if (c->len == 0)
            continue;
        switch (job->dir) {
        case FERRY_COPY_D2H:
            rc = check_device_side(dev, c->src, c->len, i, job->dir, "src", msg, cap);
            if (rc == 0)
                rc = check_host_side(dev, c->dst, c->len, i, job->dir, "dst", msg, cap);
            break;
        case FERRY_COPY_H2D:
            rc = check_device_side(dev, c->dst, c->len, i, job->dir, "dst", msg, cap);
            if (rc == 0)
                rc = check_host_side(dev, c->src, c->len, i, job->dir, "src", msg, cap);
            break;
        case FERRY_COPY_D2D:
            rc = check_device_side(dev, c->src, c->len, i, job->dir, "src", msg, cap);
            if (rc == 0)
                rc = check_device_side(dev, c->dst, c->len, i, job->dir, "dst", msg, cap);
            break;
        }
    }
    pthread_mutex_unlock(&d->lock);
    if (rc < 0)
        return rc;

    if (job->dir == FERRY_COPY_H2D && sim_hw.h2d_delay_us) /* tests: the copy is slow to land */
        nanosleep(&(struct timespec){sim_hw.h2d_delay_us / 1000000, (long)(sim_hw.h2d_delay_us % 1000000) * 1000},
                  NULL);
    for (size_t i = 0; i < job->n; i++) {
        const struct ferry_copy *c = &job->copies[i];
        if (c->len == 0)
            continue;
        const void *dev_a = job->dir == FERRY_COPY_H2D ? c->dst : c->src;
        const void *dev_b = job->dir == FERRY_COPY_D2D ? c->dst : NULL;
        coherence(dev_a, c->len, memory_order_acquire);
        if (dev_b)
            coherence(dev_b, c->len, memory_order_acquire);
        switch (job->dir) {
        case FERRY_COPY_D2H: memcpy(c->dst, sim_shadow_of(c->src), c->len); break;
        case FERRY_COPY_H2D: memcpy(sim_shadow_of(c->dst), c->src, c->len); break;
        case FERRY_COPY_D2D: memmove(sim_shadow_of(c->dst), sim_shadow_of(c->src), c->len); break;
        }
        coherence(dev_a, c->len, memory_order_release);
        if (dev_b)
            coherence(dev_b, c->len, memory_order_release);
    }
    return 0;
}

/* FERRY_SIM_STALL_ON_WAIT: a copy on stream s while a flag wait is enqueued
 * on another stream.  On CUDA such a copy stalls until the wait ends when the
 * application launches a kernel for the first time meanwhile (lazy module
 * loading); here it fails at once, so a test sees ferry's device work that
 * a stream-ordered transfer waits for. */
static bool stalled(struct sim_stream *s)
{
    if (!sim_hw.stall_on_wait)
        return false;
    pthread_mutex_lock(&s->lock);
    bool other = atomic_load(&sim_hw.waits_queued) > s->waits_queued;
    pthread_mutex_unlock(&s->lock);
    return other;
}

/* The stream's copy engine: runs jobs in order until stopped and drained.
 * Once the stream has failed, later jobs are dropped (but counted finished,
 * so waiters wake). */
static void *stream_worker(void *arg)
{
    struct sim_stream *s = arg;
    char msg[256];
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (s->head == NULL && !s->stop)
            pthread_cond_wait(&s->wake, &s->lock);
        struct sim_job *job = s->head;
        if (job == NULL)
            break;
        s->head = job->next;
        if (s->head == NULL)
            s->tail = NULL;
        int failed = s->error;
        pthread_mutex_unlock(&s->lock);

        int rc = 0;
        if (job->fn && job->then) { /* ferry's own: as cuLaunchHostFunc, not after a failure */
            if (!failed)
                job->fn(job->arg);
        } else if (job->fn) /* host functions and waits run even on a failed stream: */
            job->fn(job->arg); /* ferry's side of stream ordering must not hang */
        else if (job->flag) {
            atomic_fetch_add(&sim_hw.flag_waits, 1);
            ferry_flag_wait(job->flag, job->value);
            atomic_fetch_sub(&sim_hw.flag_waits, 1);
            pthread_mutex_lock(&s->lock);
            s->waits_queued--;
            atomic_fetch_sub(&sim_hw.waits_queued, 1);
            pthread_mutex_unlock(&s->lock);
        }
        else if (job->mark) {
            if (!failed) /* as on hardware: a failed stream runs nothing more */
                ferry_flag_set(job->mark, job->value);
        }
        else if (!failed && stalled(s)) {
            rc = FERRY_EIO;
            snprintf(msg, sizeof msg, "sim:%d: copy job %llu ran while another stream waited on a flag: it would stall "
                     "until that wait ends (FERRY_SIM_STALL_ON_WAIT: as a kernel's first launch under CUDA's lazy "
                     "module loading stalls every stream)", s->dev, (unsigned long long)job->number);
        } else if (!failed) {
            hold_back(job);
            rc = run_job(s->dev, job, msg, sizeof msg);
        }
        free(job);

        pthread_mutex_lock(&s->lock);
        if (rc < 0 && s->error == 0) {
            s->error = rc;
            snprintf(s->message, sizeof s->message, "%s", msg);
            LOG_INFO("%s", msg);
        }
        s->finished++;
        pthread_cond_broadcast(&s->idle);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static struct sim_stream *as_sim(ferry_stream *stream)
{
    struct sim_stream *s = (struct sim_stream *)stream;
    return s != NULL && s->magic == SIM_STREAM_MAGIC ? s : NULL;
}

static int sim_stream_create(int dev, ferry_stream **out)
{
    int rc = sim_init();
    if (rc < 0)
        return rc;
    if ((rc = sim_check_dev(dev)) < 0)
        return rc;
    if (out == NULL)
        return ferry_fail(FERRY_EINVAL, "sim:%d: stream_create needs out", dev);
    /* As strict as CUDA, where a stream creation can wait for every stream of
     * the device (bench/cuda_sync_probe.c): one waiting on a flag that only
     * ferry's transfer sets would never end.  Refused here, every time. */
    if (atomic_load(&sim_hw.flag_waits) > 0)
        return ferry_fail(FERRY_EIO, "sim:%d: stream_create while %d stream(s) wait on a flag (stream_wait_flag): "
                          "CUDA's stream creation can wait for every stream of the device, which would wait for "
                          "ever here", dev, atomic_load(&sim_hw.flag_waits));
    struct sim_stream *s = calloc(1, sizeof *s);
    if (s == NULL)
        return ferry_fail(FERRY_ENOMEM, "sim:%d: stream", dev);
    s->magic = SIM_STREAM_MAGIC;
    s->dev = dev;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    pthread_cond_init(&s->idle, NULL);
    int err = pthread_create(&s->worker, NULL, stream_worker, s);
    if (err != 0) {
        pthread_cond_destroy(&s->idle);
        pthread_cond_destroy(&s->wake);
        pthread_mutex_destroy(&s->lock);
        free(s);
        return ferry_fail(FERRY_EIO, "sim:%d: cannot start stream worker: %s", dev,
                          strerror(err));
    }
    char name[16];
    snprintf(name, sizeof name, "ferry-sim%d", dev);
    (void)pthread_setname_np(s->worker, name);
    *out = (ferry_stream *)s;
    return 0;
}

/* Like cuStreamDestroy: copies already queued still run; then the worker
 * ends.  An abandoned stream is left as it is (its held copy may still run). */
static void sim_stream_destroy(ferry_stream *stream)
{
    if (stream == NULL)
        return;
    struct sim_stream *s = as_sim(stream);
    if (s == NULL) {
        LOG_ERROR("sim: stream_destroy(%p): not a sim stream", (void *)stream);
        return;
    }
    pthread_mutex_lock(&s->lock);
    if (s->abandoned) {
        pthread_mutex_unlock(&s->lock);
        return;
    }
    s->stop = 1;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->worker, NULL);
    pthread_cond_destroy(&s->idle);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->lock);
    s->magic = 0;
    free(s);
}

/* Called with s->lock held and kept: job goes to the end of s's queue and
 * the stream's worker is woken. */
static void append_job(struct sim_stream *s, struct sim_job *job)
{
    if (s->tail != NULL)
        s->tail->next = job;
    else
        s->head = job;
    s->tail = job;
    s->enqueued++;
    pthread_cond_signal(&s->wake);
}

/* Called with s->lock held, which it releases: the stream's error (sticky)
 * as a failure, else FERRY_EBUSY when busy, else 0. */
static int stream_result(struct sim_stream *s, int busy)
{
    if (s->error != 0) {
        char msg[sizeof s->message];
        memcpy(msg, s->message, sizeof msg);
        int rc = s->error;
        pthread_mutex_unlock(&s->lock);
        return ferry_fail(rc, "%s", msg);
    }
    pthread_mutex_unlock(&s->lock);
    return busy ? FERRY_EBUSY : 0;
}

static int sim_copy_async(ferry_stream *stream, enum ferry_copy_dir dir,
                          const struct ferry_copy *copies, size_t n)
{
    struct sim_stream *s = as_sim(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "sim: copy_async on %p: not a sim stream",
                          (void *)stream);
    if (dir != FERRY_COPY_D2H && dir != FERRY_COPY_H2D && dir != FERRY_COPY_D2D)
        return ferry_fail(FERRY_EINVAL, "sim: copy_async: bad direction %d", (int)dir);
    if (n > 0 && copies == NULL)
        return ferry_fail(FERRY_EINVAL, "sim: copy_async: %zu copies but no array", n);
    if (n > (SIZE_MAX - sizeof(struct sim_job)) / sizeof copies[0])
        return ferry_fail(FERRY_EINVAL, "sim: copy_async: %zu copies is too many", n);

    struct sim_job *job = NULL;
    if (n > 0) {
        uint64_t number = atomic_fetch_add(&sim_hw.jobs, 1) + 1;
        int inject = 0;
        for (size_t i = 0; i < sim_hw.nfaults; i++) {
            if (sim_hw.faults[i].job == number && sim_hw.faults[i].at_start)
                return ferry_fail(FERRY_EIO, "sim:%d: copy job %llu (%s, %zu copies) rejected at start: fault "
                                  "injected by FERRY_SIM_FAIL_COPY", s->dev, (unsigned long long)number,
                                  dir_names[dir], n);
            inject |= sim_hw.faults[i].job == number;
        }
        job = malloc(sizeof *job + n * sizeof copies[0]);
        if (job == NULL)
            return ferry_fail(FERRY_ENOMEM, "sim: copy_async of %zu copies", n);
        memset(job, 0, sizeof *job);
        job->dir = dir;
        job->number = number;
        job->inject = inject;
        job->n = n;
        memcpy(job->copies, copies, n * sizeof copies[0]);
    }

    pthread_mutex_lock(&s->lock);
    if (s->error != 0) {
        free(job);
        return stream_result(s, 0); /* the stream's error, sticky */
    }
    if (job != NULL)
        append_job(s, job);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

/* Queues a host function or a flag wait (stream ordering). */
static int sim_enqueue_sync_job(int dev, void *stream, const struct sim_job *proto)
{
    struct sim_stream *s = as_sim(stream);
    if (s == NULL || s->dev != dev)
        return ferry_fail(FERRY_EINVAL, "sim:%d: %p is not a stream of that device", dev, stream);
    struct sim_job *job = malloc(sizeof *job);
    if (job == NULL)
        return ferry_fail(FERRY_ENOMEM, "sim:%d: stream job", dev);
    *job = *proto;
    job->next = NULL;
    pthread_mutex_lock(&s->lock);
    if (job->flag) {
        s->waits_queued++;
        atomic_fetch_add(&sim_hw.waits_queued, 1);
    }
    append_job(s, job);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static int sim_stream_host_func(int dev, void *stream, void (*fn)(void *), void *arg)
{
    if (fn == NULL)
        return ferry_fail(FERRY_EINVAL, "sim:%d: stream_host_func without a function", dev);
    if (refused(SIM_OP_HOST_FUNC))
        return ferry_fail(FERRY_EIO, "sim:%d: stream_host_func refused: injected by FERRY_SIM_REFUSE", dev);
    return sim_enqueue_sync_job(dev, stream, &(struct sim_job){.fn = fn, .arg = arg});
}

static int sim_stream_then(ferry_stream *stream, void (*fn)(void *), void *arg)
{
    struct sim_stream *s = as_sim(stream);
    if (s == NULL || fn == NULL)
        return ferry_fail(FERRY_EINVAL, "sim: stream_then on %p: not a sim stream, or no function", (void *)stream);
    return sim_enqueue_sync_job(s->dev, stream, &(struct sim_job){.fn = fn, .arg = arg, .then = true});
}

static int sim_stream_wait_flag(int dev, void *stream, volatile uint32_t *flag, uint32_t value)
{
    if (flag == NULL)
        return ferry_fail(FERRY_EINVAL, "sim:%d: stream_wait_flag without a flag", dev);
    return sim_enqueue_sync_job(dev, stream, &(struct sim_job){.flag = flag, .value = value});
}

static int sim_stream_copy(int dev, void *stream, enum ferry_copy_dir dir, const struct ferry_copy *copies, size_t n)
{
    struct sim_stream *s = as_sim(stream);
    if (s == NULL || s->dev != dev)
        return ferry_fail(FERRY_EINVAL, "sim:%d: %p is not a stream of that device", dev, stream);
    return sim_copy_async(stream, dir, copies, n);
}

static int sim_stream_write_flag(int dev, void *stream, volatile uint32_t *flag, uint32_t value)
{
    if (flag == NULL)
        return ferry_fail(FERRY_EINVAL, "sim:%d: stream_write_flag without a flag", dev);
    if (refused(SIM_OP_WRITE_FLAG))
        return ferry_fail(FERRY_EIO, "sim:%d: stream_write_flag refused: injected by FERRY_SIM_REFUSE", dev);
    return sim_enqueue_sync_job(dev, stream, &(struct sim_job){.mark = flag, .value = value});
}

static int sim_stream_mark(ferry_stream *stream, volatile uint32_t *flag, uint32_t value)
{
    struct sim_stream *s = as_sim(stream);
    if (s == NULL || flag == NULL)
        return ferry_fail(FERRY_EINVAL, "sim: stream_mark on %p: not a sim stream, or no flag", (void *)stream);
    uint64_t call = atomic_fetch_add(&sim_hw.calls[SIM_OP_MARK], 1) + 1;
    if (refused_as(SIM_OP_MARK_UNSUPPORTED, call)) /* as CUDA without stream memory operations */
        return ferry_fail(FERRY_ENOTSUP, "sim:%d: stream_mark not supported (FERRY_SIM_REFUSE)", s->dev);
    if (refused_as(SIM_OP_MARK, call))
        return ferry_fail(FERRY_EIO, "sim:%d: stream_mark refused (FERRY_SIM_REFUSE)", s->dev);
    return sim_enqueue_sync_job(s->dev, stream, &(struct sim_job){.mark = flag, .value = value});
}

static int sim_stream_query(ferry_stream *stream)
{
    struct sim_stream *s = as_sim(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "sim: stream_query on %p: not a sim stream",
                          (void *)stream);
    pthread_mutex_lock(&s->lock);
    return stream_result(s, s->finished != s->enqueued);
}

/* s's copies did not finish within FERRY_SIM_SYNC_TIMEOUT_MS: it fails,
 * sticky, and is abandoned (s->lock held). */
static void abandon(struct sim_stream *s)
{
    s->error = FERRY_ETIMEDOUT;
    s->abandoned = true;
    snprintf(s->message, sizeof s->message, "sim:%d: stream %p did not finish within %u ms "
             "(FERRY_SIM_SYNC_TIMEOUT_MS): abandoned, as a stream that cannot be aborted", s->dev, (void *)s,
             sim_hw.sync_timeout_ms);
    LOG_ERROR("%s", s->message);
}

static int sim_stream_sync(ferry_stream *stream)
{
    struct sim_stream *s = as_sim(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "sim: stream_sync on %p: not a sim stream",
                          (void *)stream);
    struct timespec until = timespec_in_ms(CLOCK_REALTIME, (long)sim_hw.sync_timeout_ms);
    pthread_mutex_lock(&s->lock);
    uint64_t target = s->enqueued;
    while (s->finished < target && s->error == 0) {
        if (!sim_hw.sync_timeout_ms)
            pthread_cond_wait(&s->idle, &s->lock);
        else if (pthread_cond_timedwait(&s->idle, &s->lock, &until) == ETIMEDOUT && s->finished < target &&
                 s->error == 0)
            abandon(s);
    }
    return stream_result(s, 0);
}

static int sim_stream_abandoned(ferry_stream *stream)
{
    struct sim_stream *s = as_sim(stream);
    if (s == NULL)
        return 0;
    pthread_mutex_lock(&s->lock);
    bool abandoned = s->abandoned;
    pthread_mutex_unlock(&s->lock);
    return abandoned;
}

/* Any sim stream, as cuStreamSynchronize takes a stream of any device. */
static int sim_stream_synchronize(int dev, void *stream)
{
    if (as_sim(stream) == NULL)
        return ferry_fail(FERRY_EINVAL, "sim:%d: %p is not a sim stream", dev, stream);
    return sim_stream_sync(stream);
}

static const struct ferry_config_knob sim_knobs[] = {
    {"FERRY_SIM_DEVICES", "2", "number of simulated devices sim:0..N-1 (1-16), for hosts with no accelerator"},
    {"FERRY_SIM_DEVICE_MEM", "16G", "address space reserved per sim device (1M-1024G)"},
    {"FERRY_SIM_FAIL_COPY", "", "tests: the sim copy jobs (copy_async calls of this process, from 1) that fail "
     "with FERRY_EIO: N when run (sticky, like a device fault), N:start at the call itself; up to 8, "
     "comma-separated"},
    {"FERRY_SIM_STALL_ON_WAIT", "0", "tests: 1 = a sim copy fails while a flag wait is enqueued on another stream "
     "(as CUDA stalls it under lazy module loading)"},
    {"FERRY_SIM_HOLD_COPY", "", "tests: N:path holds sim copy job N (numbered as above) back until the file path "
     "exists"},
    {"FERRY_SIM_SYNC_TIMEOUT_MS", "0", "tests: a sim stream_sync waits at most this long (0: no bound); a stream "
     "not done in time fails FERRY_ETIMEDOUT and is abandoned (stream_abandoned), as an NPU's without abort"},
    {"FERRY_SIM_H2D_DELAY_US", "0", "tests: every sim host-to-device copy job takes this long (0-1000000 us) "
     "before its bytes land, so a completion reported before they land shows"},
    {"FERRY_SIM_REFUSE", "", "tests: op:N refuses the Nth call (from 1, in this process) of op: host_alloc "
     "(FERRY_ENOMEM), host_func, write_flag or mark (stream_mark) (FERRY_EIO, nothing enqueued), "
     "mark_unsupported (stream_mark, FERRY_ENOTSUP); up to 8, comma-separated"},
    {NULL, NULL, NULL},
};

const struct ferry_device_ops ferry_device_sim = {
    .kind = "sim",
    .knobs = sim_knobs,
    .init = sim_init,
    .device_count = sim_device_count,
    .mem_alloc = sim_mem_alloc,
    .mem_free = sim_mem_free,
    .host_alloc = sim_host_alloc,
    .host_free = sim_host_free,
    .locate = sim_locate,
    .stream_create = sim_stream_create,
    .stream_destroy = sim_stream_destroy,
    .copy_async = sim_copy_async,
    .stream_query = sim_stream_query,
    .stream_sync = sim_stream_sync,
    .stream_abandoned = sim_stream_abandoned,
    .stream_mark = sim_stream_mark,
    .stream_then = sim_stream_then,
    .stream_host_func = sim_stream_host_func,
    .stream_wait_flag = sim_stream_wait_flag,
    .stream_copy = sim_stream_copy,
    .stream_write_flag = sim_stream_write_flag,
    .stream_synchronize = sim_stream_synchronize,
    .ipc_export = sim_ipc_export,
    .ipc_open = sim_ipc_open,
    .ipc_close = sim_ipc_close,
};

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
 * IPC, like CUDA's: exporting an allocation moves its shadow bytes into a
 * memfd mapped shared at the same place; another process opens the handle
 * through /proc/<pid>/fd/<n> and maps that memfd over a fresh allocation
 * of its own sim device.
 * Fault injection, as strict as hardware: FERRY_SIM_FAIL_COPY names copy
 * jobs (copy_async calls, numbered from 1 in the order they are made in
 * this process) that fail with FERRY_EIO: "N" when the device runs it (the
 * stream's sticky error, seen by query, sync and later copy_async, like a
 * CUDA fault reported at synchronisation), "N:start" at copy_async itself
 * (nothing queued, the stream stays usable, like a rejected launch).
 */
#include "device/backend.h"
#include "device/device.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "log.h"

#define SIM_MAX_DEVICES 16
#define SIM_PAGE ((size_t)4096)
#define SIM_DEFAULT_DEVICES 2
#define SIM_DEFAULT_DEVICE_MEM ((size_t)16 << 30)
#define SIM_MIN_DEVICE_MEM ((size_t)1 << 20)
#define SIM_FALLBACK_FLOOR ((size_t)256 << 20)
#define SIM_STREAM_MAGIC 0x73696d73u /* "sims" */
#define SIM_MAX_FAULTS 8

/* One live allocation: [off, off + len) of its device's region is usable,
 * [off, off + span) is taken (span = len rounded up to a page). */
struct sim_alloc {
    size_t off;
    size_t len;
    size_t span;
    int fd;                      /* exported: the memfd holding its bytes, else -1 */
    int imported;                /* its shadow maps another process's memfd */
};

struct sim_device {
    pthread_mutex_t lock;        /* guards allocs, count, cap, cursor */
    struct sim_alloc *allocs;    /* sorted by off */
    size_t count;
    size_t cap;
    size_t cursor;               /* next-fit: where the next search starts */
};

/* The process-wide simulated hardware; written once by sim_load(). */
static struct {
    struct ferry_device_loader loader;
    int ndev;
    size_t dev_size;             /* bytes of address space per device */
    size_t total;                /* ndev * dev_size */
    char *base;                  /* the PROT_NONE device addresses */
    char *shadow;                /* where the bytes really are */
    struct sim_device devs[SIM_MAX_DEVICES];
    /* FERRY_SIM_FAIL_COPY: the copy jobs that fail, and where */
    size_t nfaults;
    struct sim_fault {
        uint64_t job;
        int at_start;
    } faults[SIM_MAX_FAULTS];
    atomic_uint_fast64_t jobs;   /* copy_async calls with copies so far */
} sim = {.loader = FERRY_DEVICE_LOADER_INIT};

/* A queued copy_async call (its copies are performed in order), or a host
 * function (fn) or a wait on a completion flag (flag) of stream ordering. */
struct sim_job {
    struct sim_job *next;
    void (*fn)(void *);
    void *arg;
    volatile uint32_t *flag;     /* a wait (stream_wait_flag) */
    volatile uint32_t *mark;     /* a store (stream_mark) */
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
    int error;                   /* 0 or FERRY_EIO, sticky */
    int stop;
    char message[256];           /* the error's detail */
};

/* ---------------------------------------------------------------- setup */

/* Parses "123", "64K", "512M", "16G" (binary units) into bytes. */
static int parse_size(const char *s, size_t *out)
{
    char *end;
    unsigned long long v;
    unsigned shift = 0;
    errno = 0;
    if (*s < '0' || *s > '9')
        return -1;
    v = strtoull(s, &end, 10);
    if (errno != 0)
        return -1;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: break;
    }
    if (*end != '\0' || v > (SIZE_MAX >> shift))
        return -1;
    *out = (size_t)v << shift;
    return 0;
}

/* FERRY_SIM_FAIL_COPY="N[:start][,N[:start]...]" into sim.faults. */
static int read_faults(void)
{
    const char *s = getenv("FERRY_SIM_FAIL_COPY");
    sim.nfaults = 0;
    if (s == NULL || *s == '\0')
        return 0;
    for (const char *p = s;;) {
        char *end;
        errno = 0;
        unsigned long long job = *p >= '0' && *p <= '9' ? strtoull(p, &end, 10) : 0;
        if (job == 0 || errno != 0 || sim.nfaults == SIM_MAX_FAULTS)
            break;
        int at_start = strncmp(end, ":start", 6) == 0;
        end += at_start ? 6 : 0;
        sim.faults[sim.nfaults++] = (struct sim_fault){job, at_start};
        if (*end == '\0')
            return 0;
        if (*end != ',')
            break;
        p = end + 1;
    }
    sim.nfaults = 0;
    return ferry_fail(FERRY_EINVAL,
                      "FERRY_SIM_FAIL_COPY=\"%.64s\": want up to %d copy numbers N >= 1, each N "
                      "(fails when run) or N:start (fails at copy_async), comma-separated",
                      s, SIM_MAX_FAULTS);
}

static int read_config(int *ndev, size_t *dev_size, int *size_given)
{
    const char *s = getenv("FERRY_SIM_DEVICES");
    *ndev = SIM_DEFAULT_DEVICES;
    if (s != NULL && *s != '\0') {
        char *end;
        long v = strtol(s, &end, 10);
        if (*end != '\0' || end == s || v < 1 || v > SIM_MAX_DEVICES)
            return ferry_fail(FERRY_EINVAL, "FERRY_SIM_DEVICES=\"%.32s\": want 1..%d", s,
                              SIM_MAX_DEVICES);
        *ndev = (int)v;
    }
    s = getenv("FERRY_SIM_DEVICE_MEM");
    *dev_size = SIM_DEFAULT_DEVICE_MEM;
    *size_given = 0;
    if (s != NULL && *s != '\0') {
        if (parse_size(s, dev_size) < 0 || *dev_size < SIM_MIN_DEVICE_MEM ||
            *dev_size > ((size_t)1 << 40))
            return ferry_fail(FERRY_EINVAL,
                              "FERRY_SIM_DEVICE_MEM=\"%.32s\": want a size 1M..1024G "
                              "(suffix K, M or G)",
                              s);
        *dev_size = (*dev_size + SIM_PAGE - 1) & ~(SIM_PAGE - 1);
        *size_given = 1;
    }
    return read_faults();
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
    int rc = read_config(&ndev, &dev_size, &size_given);
    if (rc < 0)
        return rc;
    for (;;) {
        size_t total = (size_t)ndev * dev_size;
        char *base = map_anonymous(total, PROT_NONE);
        char *shadow = base ? map_anonymous(total, PROT_READ | PROT_WRITE) : NULL;
        if (shadow != NULL) {
            sim.base = base;
            sim.shadow = shadow;
            sim.total = total;
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
    (void)madvise(sim.shadow, sim.total, MADV_DONTDUMP);
    sim.ndev = ndev;
    sim.dev_size = dev_size;
    for (int i = 0; i < ndev; i++)
        pthread_mutex_init(&sim.devs[i].lock, NULL);
    LOG_DEBUG("sim: %d devices of %zu bytes at %p", ndev, dev_size, (void *)sim.base);
    return 0;
}

static int sim_init(void)
{
    return ferry_device_load_once(&sim.loader, sim_load);
}

static int sim_device_count(void)
{
    return sim_init() == 0 ? sim.ndev : 0;
}

static int check_dev(int dev)
{
    if (dev < 0 || dev >= sim.ndev)
        return ferry_fail(FERRY_ENODEV, "sim:%d does not exist (FERRY_SIM_DEVICES=%d)", dev,
                          sim.ndev);
    return 0;
}

/* ---------------------------------------------------------------- addresses */

/* The sim device whose region holds p, or -1. */
static int device_of(const void *p)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)sim.base;
    if (a < b || a - b >= sim.total)
        return -1;
    return (int)((a - b) / sim.dev_size);
}

/* 1 if [p, p+len) overlaps [start, start+size). */
static int overlaps(const void *p, size_t len, const char *start, size_t size)
{
    uintptr_t a = (uintptr_t)p, s = (uintptr_t)start;
    return a < s + size && s < a + len;
}

static char *shadow_of(const void *p)
{
    return sim.shadow + ((const char *)p - sim.base);
}

/* Index of the last allocation with off <= x, or -1.  Caller holds d->lock. */
static long last_at_or_before(const struct sim_device *d, size_t x)
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
        size_t gap_end = i < d->count ? d->allocs[i].off : sim.dev_size;
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

static int sim_mem_alloc(int dev, size_t len, void **out)
{
    int rc = sim_init();
    if (rc < 0)
        return rc;
    if ((rc = check_dev(dev)) < 0)
        return rc;
    if (len == 0 || out == NULL)
        return ferry_fail(FERRY_EINVAL, "sim:%d: mem_alloc needs len > 0 and out", dev);
    if (len > sim.dev_size)
        return ferry_fail(FERRY_ENOMEM, "sim:%d: %zu bytes asked, device has %zu", dev, len,
                          sim.dev_size);
    size_t span = (len + SIM_PAGE - 1) & ~(SIM_PAGE - 1);
    struct sim_device *d = &sim.devs[dev];
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
    d->allocs[pos] = (struct sim_alloc){.off = off, .len = len, .span = span, .fd = -1};
    d->count++;
    d->cursor = off + span;
    pthread_mutex_unlock(&d->lock);

    *out = sim.base + (size_t)dev * sim.dev_size + off;
    return 0;
}

/* Removes allocation i of d, returning its bytes to the kernel while still
 * holding the lock, so a new allocation of the range cannot be written
 * before it is zeroed.  Shared ranges (exported or imported) get a fresh
 * private mapping instead: the memfd's bytes belong to others too. */
static void release_locked(struct sim_device *d, size_t i)
{
    struct sim_alloc *a = &d->allocs[i];
    char *sh = shadow_of(sim.base + (size_t)(d - sim.devs) * sim.dev_size + a->off);
    if (a->fd >= 0 || a->imported) {
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
    if (!ferry_device_loaded(&sim.loader) || dev < 0 || dev >= sim.ndev ||
        device_of(ptr) != dev) {
        LOG_ERROR("sim: mem_free(sim:%d, %p): not memory of that device", dev, ptr);
        return;
    }
    struct sim_device *d = &sim.devs[dev];
    size_t off = (size_t)((char *)ptr - sim.base) - (size_t)dev * sim.dev_size;
    pthread_mutex_lock(&d->lock);
    long i = last_at_or_before(d, off);
    if (i < 0 || d->allocs[i].off != off) {
        pthread_mutex_unlock(&d->lock);
        LOG_ERROR("sim: mem_free(sim:%d, %p): not the start of a live allocation", dev, ptr);
        return;
    }
    release_locked(d, (size_t)i);
    pthread_mutex_unlock(&d->lock);
}

/* Pinned memory needs no pinning here: page-aligned heap memory (so ASan
 * still sees overruns of staging chunks). */
static int sim_host_alloc(size_t len, void **out)
{
    if (len == 0 || out == NULL || len > SIZE_MAX - SIM_PAGE)
        return ferry_fail(FERRY_EINVAL, "sim: host_alloc needs 0 < len and out");
    void *p = NULL;
    int err = posix_memalign(&p, SIM_PAGE, (len + SIM_PAGE - 1) & ~(SIM_PAGE - 1));
    if (err != 0)
        return ferry_fail(FERRY_ENOMEM, "sim: host_alloc(%zu): %s", len, strerror(err));
    *out = p;
    return 0;
}

static void sim_host_free(void *ptr)
{
    free(ptr);
}

static int sim_locate(const void *ptr, size_t len, int *dev)
{
    (void)len;
    if (!ferry_device_loaded(&sim.loader))
        return 0;
    int d = device_of(ptr);
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
    int owner = device_of(p);
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
    const struct sim_device *d = &sim.devs[dev];
    size_t off = (size_t)((const char *)p - sim.base) - (size_t)dev * sim.dev_size;
    long i = last_at_or_before(d, off);
    if (i >= 0) {
        const struct sim_alloc *a = &d->allocs[i];
        size_t into = off - a->off;
        if (into <= a->len && len <= a->len - into)
            return 0;
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
    if (overlaps(p, len, sim.base, sim.total) || overlaps(p, len, sim.shadow, sim.total)) {
        snprintf(msg, cap, "sim:%d: copy %zu (%s) %s %p is sim device memory, expected host "
                 "memory", dev, idx, dir_names[dir], side, p);
        return FERRY_EIO;
    }
    return 0;
}

/* Validates every copy of the job, then performs them.  Returns 0, or
 * FERRY_EIO with the reason in msg (no copy of the job is done then). */
static int run_job(int dev, const struct sim_job *job, char *msg, size_t cap)
{
    struct sim_device *d = &sim.devs[dev];
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

    for (size_t i = 0; i < job->n; i++) {
        const struct ferry_copy *c = &job->copies[i];
        if (c->len == 0)
            continue;
        switch (job->dir) {
        case FERRY_COPY_D2H: memcpy(c->dst, shadow_of(c->src), c->len); break;
        case FERRY_COPY_H2D: memcpy(shadow_of(c->dst), c->src, c->len); break;
        case FERRY_COPY_D2D: memmove(shadow_of(c->dst), shadow_of(c->src), c->len); break;
        }
    }
    return 0;
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
        if (job->fn) /* host functions and waits run even on a failed stream: */
            job->fn(job->arg); /* ferry's side of stream ordering must not hang */
        else if (job->flag)
            ferry_flag_wait(job->flag, job->value);
        else if (job->mark) {
            if (!failed) /* as on hardware: a failed stream runs nothing more */
                ferry_flag_set(job->mark, job->value);
        }
        else if (!failed)
            rc = run_job(s->dev, job, msg, sizeof msg);
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
    if ((rc = check_dev(dev)) < 0)
        return rc;
    if (out == NULL)
        return ferry_fail(FERRY_EINVAL, "sim:%d: stream_create needs out", dev);
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

/* Like cuStreamDestroy: copies already queued still run; then the worker ends. */
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
        uint64_t number = atomic_fetch_add(&sim.jobs, 1) + 1;
        int inject = 0;
        for (size_t i = 0; i < sim.nfaults; i++) {
            if (sim.faults[i].job == number && sim.faults[i].at_start)
                return ferry_fail(FERRY_EIO, "sim:%d: copy job %llu (%s, %zu copies) rejected at start: fault "
                                  "injected by FERRY_SIM_FAIL_COPY", s->dev, (unsigned long long)number,
                                  dir_names[dir], n);
            inject |= sim.faults[i].job == number;
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
        int rc = s->error;
        char msg[sizeof s->message];
        memcpy(msg, s->message, sizeof msg);
        pthread_mutex_unlock(&s->lock);
        free(job);
        return ferry_fail(rc, "%s", msg);
    }
    if (job != NULL) {
        if (s->tail != NULL)
            s->tail->next = job;
        else
            s->head = job;
        s->tail = job;
        s->enqueued++;
        pthread_cond_signal(&s->wake);
    }
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
    if (s->tail != NULL)
        s->tail->next = job;
    else
        s->head = job;
    s->tail = job;
    s->enqueued++;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static int sim_stream_host_func(int dev, void *stream, void (*fn)(void *), void *arg)
{
    if (fn == NULL)
        return ferry_fail(FERRY_EINVAL, "sim:%d: stream_host_func without a function", dev);
    return sim_enqueue_sync_job(dev, stream, &(struct sim_job){.fn = fn, .arg = arg});
}

static int sim_stream_wait_flag(int dev, void *stream, volatile uint32_t *flag, uint32_t value)
{
    if (flag == NULL)
        return ferry_fail(FERRY_EINVAL, "sim:%d: stream_wait_flag without a flag", dev);
    return sim_enqueue_sync_job(dev, stream, &(struct sim_job){.flag = flag, .value = value});
}

static int sim_stream_mark(ferry_stream *stream, volatile uint32_t *flag, uint32_t value)
{
    struct sim_stream *s = as_sim(stream);
    if (s == NULL || flag == NULL)
        return ferry_fail(FERRY_EINVAL, "sim: stream_mark on %p: not a sim stream, or no flag", (void *)stream);
    return sim_enqueue_sync_job(s->dev, stream, &(struct sim_job){.mark = flag, .value = value});
}

/* Called with s->lock held; records the stream's error for the caller. */
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

static int sim_stream_query(ferry_stream *stream)
{
    struct sim_stream *s = as_sim(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "sim: stream_query on %p: not a sim stream",
                          (void *)stream);
    pthread_mutex_lock(&s->lock);
    return stream_result(s, s->finished != s->enqueued);
}

static int sim_stream_sync(ferry_stream *stream)
{
    struct sim_stream *s = as_sim(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "sim: stream_sync on %p: not a sim stream",
                          (void *)stream);
    pthread_mutex_lock(&s->lock);
    uint64_t target = s->enqueued;
    while (s->finished < target && s->error == 0)
        pthread_cond_wait(&s->idle, &s->lock);
    return stream_result(s, 0);
}

/* ---------------------------------------------------------------- IPC */

#define SIM_IPC_MAGIC 0x43504953u /* "SIPC" */
struct sim_ipc_handle {
    uint32_t magic;
    int32_t pid;                 /* the exporter */
    int32_t fd;                  /* its memfd, opened through /proc/<pid>/fd/<fd> */
    uint32_t pad;
    uint64_t ino;                /* the memfd's inode: a reused fd number is caught */
    uint64_t span;               /* the allocation's size in pages */
    uint64_t offset;             /* ptr - allocation start */
};
_Static_assert(sizeof(struct sim_ipc_handle) <= FERRY_IPC_HANDLE_MAX, "fits FERRY_IPC_HANDLE_MAX");

/* Index of the live allocation of dev holding [p, p+len), or -1.  Caller
 * holds the device's lock. */
static long alloc_holding(int dev, const void *p, size_t len)
{
    const struct sim_device *d = &sim.devs[dev];
    size_t off = (size_t)((const char *)p - sim.base) - (size_t)dev * sim.dev_size;
    long i = last_at_or_before(d, off);
    if (i < 0 || off - d->allocs[i].off > d->allocs[i].len || len > d->allocs[i].len - (off - d->allocs[i].off))
        return -1;
    return i;
}

/* Moves an allocation's bytes into a memfd mapped shared in their place. */
static int share_alloc(int dev, struct sim_alloc *a)
{
    char *sh = shadow_of(sim.base + (size_t)dev * sim.dev_size + a->off);
    int fd = memfd_create("ferry-sim-ipc", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)a->span) != 0 || pwrite(fd, sh, a->span, 0) != (ssize_t)a->span ||
        mmap(sh, a->span, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
        int err = errno;
        if (fd >= 0)
            close(fd);
        return ferry_fail(FERRY_EIO, "sim:%d: cannot share an allocation of %zu bytes: %s", dev, a->span,
                          strerror(err));
    }
    a->fd = fd;
    return 0;
}

static int sim_ipc_export(const void *ptr, size_t len, void *handle, size_t *handle_len)
{
    int dev = ferry_device_loaded(&sim.loader) ? device_of(ptr) : -1;
    if (dev < 0)
        return ferry_fail(FERRY_EINVAL, "sim: ipc_export(%p): not sim device memory", ptr);
    if (*handle_len < sizeof(struct sim_ipc_handle))
        return ferry_fail(FERRY_EINVAL, "sim: ipc_export: %zu bytes of room, %zu needed", *handle_len,
                          sizeof(struct sim_ipc_handle));
    struct sim_device *d = &sim.devs[dev];
    pthread_mutex_lock(&d->lock);
    long i = alloc_holding(dev, ptr, len);
    int rc = i < 0 ? ferry_fail(FERRY_EINVAL, "sim:%d: ipc_export(%p+%zu): not inside a live allocation", dev,
                                ptr, len)
             : d->allocs[i].imported ? ferry_fail(FERRY_ENOTSUP, "sim:%d: ipc_export(%p): memory opened from "
                                                  "another process cannot be exported again", dev, ptr)
                                     : 0;
    struct stat st;
    if (!rc && d->allocs[i].fd < 0)
        rc = share_alloc(dev, &d->allocs[i]);
    if (!rc && fstat(d->allocs[i].fd, &st) != 0)
        rc = ferry_fail(FERRY_EIO, "sim:%d: fstat of a shared allocation: %s", dev, strerror(errno));
    if (!rc) {
        size_t off = (size_t)((const char *)ptr - sim.base) - (size_t)dev * sim.dev_size;
        struct sim_ipc_handle h = {SIM_IPC_MAGIC, (int32_t)getpid(), d->allocs[i].fd, 0, (uint64_t)st.st_ino,
                                   d->allocs[i].span, off - d->allocs[i].off};
        memcpy(handle, &h, sizeof h);
        *handle_len = sizeof h;
    }
    pthread_mutex_unlock(&d->lock);
    return rc;
}

/* Opens the exporter's memfd named by h, checking it is still that memfd. */
static int open_exported(const struct sim_ipc_handle *h)
{
    char path[64];
    struct stat st;
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)h->pid, (int)h->fd);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return ferry_fail(errno == ENOENT ? FERRY_EINVAL : FERRY_EIO, "sim: ipc_open: %s: %s", path,
                          strerror(errno));
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_ino != h->ino || (uint64_t)st.st_size != h->span) {
        close(fd);
        return ferry_fail(FERRY_EINVAL, "sim: ipc_open: %s is no longer the exported allocation", path);
    }
    return fd;
}

static int sim_ipc_open(int dev, const void *handle, size_t handle_len, void **ptr)
{
    struct sim_ipc_handle h;
    int rc = sim_init();
    if (rc < 0 || (rc = check_dev(dev)) < 0)
        return rc;
    if (handle_len != sizeof h)
        return ferry_fail(FERRY_EINVAL, "sim: ipc_open: a handle of %zu bytes, expected %zu", handle_len,
                          sizeof h);
    memcpy(&h, handle, sizeof h);
    if (h.magic != SIM_IPC_MAGIC || h.span == 0 || h.span % SIM_PAGE || h.offset >= h.span)
        return ferry_fail(FERRY_EINVAL, "sim: ipc_open: not a sim IPC handle");
    if (h.pid == (int32_t)getpid())
        return ferry_fail(FERRY_ENOTSUP, "sim: ipc_open: the handle was exported by this process");
    int fd = open_exported(&h);
    if (fd < 0)
        return fd;
    void *p = NULL;
    if ((rc = sim_mem_alloc(dev, (size_t)h.span, &p)) < 0) {
        close(fd);
        return rc;
    }
    struct sim_device *d = &sim.devs[dev];
    pthread_mutex_lock(&d->lock);
    long i = alloc_holding(dev, p, (size_t)h.span);
    if (mmap(shadow_of(p), (size_t)h.span, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED)
        rc = ferry_fail(FERRY_EIO, "sim:%d: ipc_open: mmap: %s", dev, strerror(errno));
    d->allocs[i].imported = 1;   /* also on failure: release remaps the range private */
    if (rc)
        release_locked(d, (size_t)i);
    pthread_mutex_unlock(&d->lock);
    close(fd);
    if (rc)
        return rc;
    *ptr = (char *)p + h.offset;
    return 0;
}

static void sim_ipc_close(int dev, void *ptr)
{
    if (!ferry_device_loaded(&sim.loader) || dev < 0 || dev >= sim.ndev || device_of(ptr) != dev)
        return;
    struct sim_device *d = &sim.devs[dev];
    pthread_mutex_lock(&d->lock);
    long i = alloc_holding(dev, ptr, 0);
    if (i >= 0 && d->allocs[i].imported)
        release_locked(d, (size_t)i);
    else
        LOG_ERROR("sim: ipc_close(sim:%d, %p): not memory ipc_open returned", dev, ptr);
    pthread_mutex_unlock(&d->lock);
}

static const struct ferry_config_knob sim_knobs[] = {
    {"FERRY_SIM_DEVICES", "2", "number of simulated devices sim:0..N-1 (1-16), for hosts with no accelerator"},
    {"FERRY_SIM_DEVICE_MEM", "16G", "address space reserved per sim device (1M-1024G)"},
    {"FERRY_SIM_FAIL_COPY", "", "tests: the sim copy jobs (copy_async calls of this process, from 1) that fail "
     "with FERRY_EIO: N when run (sticky, like a device fault), N:start at the call itself; up to 8, "
     "comma-separated"},
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
    .stream_mark = sim_stream_mark,
    .stream_host_func = sim_stream_host_func,
    .stream_wait_flag = sim_stream_wait_flag,
    .ipc_export = sim_ipc_export,
    .ipc_open = sim_ipc_open,
    .ipc_close = sim_ipc_close,
};

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fake_acl.c — a strict fake of CANN's libascendcl.so, so ferry's Ascend
 * backend runs in CI.  Built by the tests as libascendcl.so (twice: "full",
 * and "old" without aclrtMemcpyBatchAsync / aclrtPointerGetAttributes, as
 * before CANN 8.1) and loaded by ferry's own dlopen through
 * FERRY_ASCEND_LIBRARY.  It exports the prototypes of acl/acl_rt.h.
 *
 * As strict as a 910B and stricter where the documents allow: aclInit before
 * anything, nothing after aclFinalize (abort: undefined on hardware); a
 * current context per thread (aclrtSetDevice / aclrtSetCurrentContext), none
 * inherited by new threads; aclrtSetDevice counted per process and the
 * default context gone when aclrtResetDevice pairs the last one; streams bound to the context they were made in;
 * device memory the host cannot dereference (fake_acl_mem.c) with exact
 * bounds; host memory of H2D / D2H checked against aclrtMallocHost; source
 * and destination 64-byte aligned; copies run later, in order, on the
 * stream's worker thread; a failed copy is reported once by the next
 * query / sync and the stream goes on (continue-on-failure); freeing memory
 * a queued copy still touches aborts (the DMA would hit freed memory); a
 * copy made to hang blocks its stream until released or aborted
 * (fake_acl_hang.c: the hang, the timed sync, aclrtStreamAbort).  Modes:
 * see struct fake_config.  Threads: one worker per stream; everything else
 * runs on the caller's thread.  At exit it prints what it executed.
 */
#include "fake_acl.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void *aclrtContext;
typedef struct { uint32_t id; int type; } aclrtMemLocation;
typedef struct { aclrtMemLocation location; uint32_t pageSize; uint32_t rsv[4]; } aclrtPtrAttributes;
typedef struct { aclrtMemLocation dstLoc; aclrtMemLocation srcLoc; uint8_t rsv[16]; } aclrtMemcpyBatchAttr;
enum { ACL_MEM_LOCATION_TYPE_HOST = 0, ACL_MEM_LOCATION_TYPE_DEVICE = 1 };
enum { ACL_STREAM_STATUS_COMPLETE = 0, ACL_STREAM_STATUS_NOT_READY = 1 };

struct fake_config fake;
static atomic_ullong kind_count[4]; /* copies enqueued per aclrtMemcpyKind */
static atomic_ullong fake_sync_copies; /* aclrtMemcpy calls that copied */
atomic_ullong fake_copies, fake_pageable, fake_batch_calls, fake_failed, fake_set_device[16];

/* Every live stream, so that aclrtFree / aclrtFreeHost can tell memory a
 * queued copy still reads or writes (streams_lock before a stream's lock). */
static pthread_mutex_t streams_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fake_stream *streams;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int setup_failed;
static atomic_int initialized, finalized;
static struct fake_ctx *default_ctx[16];
static unsigned device_refs[16]; /* aclrtSetDevice calls not yet paired by aclrtResetDevice (ctx_lock) */
static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread struct fake_ctx *current;
/* The thread's error messages not yet read, newest first, one a line, as
 * aclGetRecentErrMsg returns them; the oldest lines go when it is full. */
static __thread char pending_msgs[1024];
/* What aclGetRecentErrMsg returned, in turns: the string returned before the
 * last is poisoned ("XXX...") on each call.  No heap: nothing left behind
 * when a thread exits (the ASan build checks leaks). */
static __thread char returned_msgs[2][sizeof pending_msgs];
static __thread int returned_turn;

aclError fake_fail(aclError code, const char *fmt, ...)
{
    char line[256], joined[sizeof pending_msgs + sizeof line];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    snprintf(joined, sizeof joined, "%s%s%s", line, pending_msgs[0] ? "\n" : "", pending_msgs);
    size_t keep = strlen(joined);
    if (keep >= sizeof pending_msgs) { /* cut at a line end: whole messages only */
        keep = sizeof pending_msgs - 1;
        while (keep > 0 && joined[keep] != '\n')
            keep--;
    }
    memcpy(pending_msgs, joined, keep);
    pending_msgs[keep] = '\0';
    return code;
}

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

static void setup(void)
{
    fake.devices = atoi(env_or("FAKEACL_DEVICES", "2"));
    if (fake.devices < 1 || fake.devices > 16)
        fake.devices = 2;
    fake.device_mem = (size_t)strtoull(env_or("FAKEACL_DEVICE_MEM_MB", "1024"), NULL, 10) << 20;
    const char *pg = env_or("FAKEACL_PAGEABLE", "corrupt");
    fake.pageable = !strcmp(pg, "ok") ? PAGEABLE_OK : !strcmp(pg, "reject") ? PAGEABLE_REJECT : PAGEABLE_CORRUPT;
    fake.align = strcmp(env_or("FAKEACL_ALIGN", "64"), "1") == 0 ? 1 : 64;
    fake.batch = strcmp(env_or("FAKEACL_BATCH", "loop"), "unsupported") == 0 ? BATCH_UNSUPPORTED : BATCH_LOOP;
    fake.attrs_unknown = strcmp(env_or("FAKEACL_ATTRS", "known"), "unknown") == 0;
    fake.lazy = strcmp(env_or("FAKEACL_EXEC", "eager"), "lazy") == 0;
    fake.no_abort = strcmp(env_or("FAKEACL_ABORT", "supported"), "unsupported") == 0;
    fake.no_timed_sync = strcmp(env_or("FAKEACL_TIMED_SYNC", "supported"), "unsupported") == 0;
    fake_hang_setup(strtoull(env_or("FAKEACL_HANG_COPY", "0"), NULL, 10));
    for (const char *s = getenv("FAKEACL_FAIL_COPIES"); s && *s && fake.nfail < 8;) {
        char *end;
        fake.fail_at[fake.nfail++] = strtoull(s, &end, 10);
        s = *end == ',' ? end + 1 : "";
    }
    setup_failed = fake_mem_init() != 0;
}

aclError fake_enter(const char *fn, int needs_init)
{
    pthread_once(&once, setup);
    if (atomic_load(&finalized)) {
        fprintf(stderr, "fakeacl: %s called after aclFinalize (undefined behaviour on hardware)\n", fn);
        abort();
    }
    if (setup_failed)
        return fake_fail(ACL_ERROR_RT_INTERNAL_ERROR, "%s: fake runtime could not reserve its memory", fn);
    if (needs_init && !atomic_load(&initialized))
        return fake_fail(ACL_ERROR_UNINITIALIZE, "%s before aclInit", fn);
    return ACL_SUCCESS;
}


static aclError need_context(const char *fn)
{
    if (!current)
        return fake_fail(ACL_ERROR_RT_CONTEXT_NULL, "%s: no current context on this thread", fn);
    if (current->magic != CTX_MAGIC) /* kept, never freed, so that this can tell */
        return fake_fail(ACL_ERROR_RT_CONTEXT_NULL, "%s: the current context's device was reset", fn);
    return ACL_SUCCESS;
}

/* ---------------------------------------------------------------- lifetime, devices, contexts */

EXPORT aclError aclInit(const char *config_path)
{
    (void)config_path;
    ENTER(0);
    if (atomic_exchange(&initialized, 1))
        return fake_fail(ACL_ERROR_REPEAT_INITIALIZE, "aclInit: already initialized");
    return ACL_SUCCESS;
}

/* Not reference-counted: whoever calls it ends ACL for the whole process. */
EXPORT aclError aclFinalize(void)
{
    ENTER(1);
    atomic_store(&finalized, 1);
    return ACL_SUCCESS;
}

/* As the documents say: returns and clears the thread's messages (newest
 * first; nullptr when there are none), and a string returned before is no
 * longer valid: its text is overwritten with 'X's. */
EXPORT const char *aclGetRecentErrMsg(void)
{
    char *last = returned_msgs[returned_turn];
    memset(last, 'X', strlen(last));
    if (!pending_msgs[0])
        return NULL;
    returned_turn ^= 1;
    char *out = returned_msgs[returned_turn];
    memcpy(out, pending_msgs, sizeof pending_msgs);
    pending_msgs[0] = '\0';
    return out;
}

EXPORT aclError aclrtGetDeviceCount(uint32_t *count)
{
    ENTER(1);
    if (!count)
        return fake_fail(ACL_ERROR_INVALID_PARAM, "aclrtGetDeviceCount: count is NULL");
    *count = (uint32_t)fake.devices;
    return ACL_SUCCESS;
}

EXPORT aclError aclrtSetDevice(int32_t dev)
{
    ENTER(1);
    if (dev < 0 || dev >= fake.devices)
        return fake_fail(ACL_ERROR_RT_INVALID_DEVICEID, "aclrtSetDevice(%d): %d devices", dev, fake.devices);
    pthread_mutex_lock(&ctx_lock);
    if (!default_ctx[dev]) {
        default_ctx[dev] = calloc(1, sizeof *default_ctx[dev]);
        default_ctx[dev]->magic = CTX_MAGIC;
        default_ctx[dev]->dev = dev;
    }
    current = default_ctx[dev];
    device_refs[dev]++;
    pthread_mutex_unlock(&ctx_lock);
    atomic_fetch_add(&fake_set_device[dev], 1);
    return ACL_SUCCESS;
}

/* Reference-counted per process, as the documents say: the default context
 * (and so every stream made in it) goes when the last aclrtSetDevice of the
 * device is paired.  The dead context is kept (magic cleared) so that a later
 * use of it fails instead of reading freed memory. */
EXPORT aclError aclrtResetDevice(int32_t dev)
{
    ENTER(1);
    if (dev < 0 || dev >= fake.devices)
        return fake_fail(ACL_ERROR_RT_INVALID_DEVICEID, "aclrtResetDevice(%d): %d devices", dev, fake.devices);
    pthread_mutex_lock(&ctx_lock);
    if (device_refs[dev] == 0) {
        pthread_mutex_unlock(&ctx_lock);
        return fake_fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtResetDevice(%d): device not set", dev);
    }
    if (--device_refs[dev] == 0) {
        default_ctx[dev]->magic = 0;
        default_ctx[dev] = NULL;
    }
    pthread_mutex_unlock(&ctx_lock);
    return ACL_SUCCESS;
}

EXPORT aclError aclrtGetCurrentContext(aclrtContext *ctx)
{
    ENTER(1);
    if (!ctx)
        return fake_fail(ACL_ERROR_INVALID_PARAM, "aclrtGetCurrentContext: ctx is NULL");
    aclError r = need_context(__func__);
    if (r)
        return r;
    *ctx = current;
    return ACL_SUCCESS;
}

EXPORT aclError aclrtSetCurrentContext(aclrtContext ctx)
{
    ENTER(1);
    struct fake_ctx *c = ctx;
    if (!c || c->magic != CTX_MAGIC)
        return fake_fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtSetCurrentContext(%p): not a context", ctx);
    current = c;
    return ACL_SUCCESS;
}

/* ---------------------------------------------------------------- memory */

EXPORT aclError aclrtMalloc(void **ptr, size_t size, int policy)
{
    (void)policy;
    ENTER(1);
    aclError r = need_context(__func__);
    if (r)
        return r;
    if (!ptr || size == 0)
        return fake_fail(ACL_ERROR_INVALID_PARAM, "aclrtMalloc: ptr NULL or size 0");
    return fake_dev_malloc(current->dev, ptr, size);
}

/* Freeing memory that a queued, not yet executed copy reads or writes:
 * the hardware's DMA would then touch freed (perhaps reallocated) memory and
 * nothing reports it.  Undefined behaviour, so the fake aborts, naming it. */
static void check_no_pending_copy(const char *fn, const void *ptr)
{
    size_t len = fake_alloc_len(ptr);
    uintptr_t a = (uintptr_t)ptr;
    if (!len)
        return; /* not an allocation: the free itself says so */
    pthread_mutex_lock(&streams_lock);
    for (struct fake_stream *s = streams; s; s = s->next_stream) {
        pthread_mutex_lock(&s->lock);
        for (const struct task *t = s->head; t; t = t->next) {
            int dst = t->adst < a + len && a < t->adst + t->len, src = t->asrc < a + len && a < t->asrc + t->len;
            if (dst || src) {
                fprintf(stderr, "fakeacl: %s(%p) of %zu bytes while a queued copy of %zu bytes still %s it "
                        "(the stream was not synchronized; on hardware the DMA touches freed memory)\n",
                        fn, ptr, len, t->len, dst ? "writes" : "reads");
                abort();
            }
        }
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_unlock(&streams_lock);
}

EXPORT aclError aclrtFree(void *ptr)
{
    ENTER(1);
    aclError r = need_context(__func__);
    if (!r)
        check_no_pending_copy(__func__, ptr);
    return r ? r : fake_dev_free(ptr);
}

EXPORT aclError aclrtMallocHost(void **ptr, size_t size)
{
    ENTER(1);
    aclError r = need_context(__func__);
    if (r)
        return r;
    if (!ptr || size == 0)
        return fake_fail(ACL_ERROR_INVALID_PARAM, "aclrtMallocHost: ptr NULL or size 0");
    return fake_host_malloc(ptr, size);
}

EXPORT aclError aclrtFreeHost(void *ptr)
{
    ENTER(1);
    aclError r = need_context(__func__);
    if (!r)
        check_no_pending_copy(__func__, ptr);
    return r ? r : fake_host_free(ptr);
}

#ifndef FAKEACL_OLD
/* CANN 8.1+.  "unknown" mode: nothing can be classified (torch_npu's VMM). */
EXPORT aclError aclrtPointerGetAttributes(const void *ptr, aclrtPtrAttributes *attrs)
{
    ENTER(1);
    aclError r = need_context(__func__);
    if (r)
        return r;
    if (!ptr || !attrs)
        return fake_fail(ACL_ERROR_INVALID_PARAM, "aclrtPointerGetAttributes: NULL argument");
    int dev = fake_device_of(ptr);
    if (fake.attrs_unknown || (dev >= 0 && !fake_device_range_ok(dev, ptr, 1)))
        return fake_fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtPointerGetAttributes(%p): unknown pointer", ptr);
    memset(attrs, 0, sizeof *attrs);
    attrs->location.type = dev >= 0 ? ACL_MEM_LOCATION_TYPE_DEVICE : ACL_MEM_LOCATION_TYPE_HOST;
    attrs->location.id = dev >= 0 ? (uint32_t)dev : 0;
    attrs->pageSize = 4096;
    return ACL_SUCCESS;
}
#endif

/* ---------------------------------------------------------------- streams */

static atomic_ullong fail_injected; /* fakeacl_inject_failure's copy number, 0: none */
static atomic_int held;             /* fakeacl_hold: copies wait for a sync / query */

static int fail_now(uint64_t n)
{
    unsigned long long want = n;
    if (atomic_compare_exchange_strong(&fail_injected, &want, 0))
        return 1;
    for (int i = 0; i < fake.nfail; i++)
        if (fake.fail_at[i] == n)
            return 1;
    return 0;
}

/* The stream's copy engine: runs released copies in order. */
static void *worker_main(void *arg)
{
    struct fake_stream *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        /* an abort (fake_acl_hang.c) drops the queue while nothing runs */
        while (!s->stopping && (s->aborting || !s->head || s->done >= s->released))
            pthread_cond_wait(&s->cond, &s->lock);
        if (!s->head)
            break;
        struct task *t = s->head;
        s->running = 1;
        pthread_mutex_unlock(&s->lock);
        aclError err = ACL_SUCCESS;
        uint64_t n = atomic_fetch_add(&fake_copies, 1) + 1;
        if (fake_hang_here(s, n)) {
            /* aborted while hung: the copy never ran */
        } else if (fail_now(n)) {
            atomic_fetch_add(&fake_failed, 1);
            err = ACL_ERROR_RT_INTERNAL_ERROR;
        } else if (t->corrupt) {
            memset(t->dst, 0xdb, t->len); /* "an unpredictable error may occur" */
        } else {
            memcpy(t->dst, t->src, t->len);
        }
        pthread_mutex_lock(&s->lock);
        if (err && !s->error)
            s->error = err;
        s->head = t->next;
        if (!s->head)
            s->tail = NULL;
        s->done++;
        s->running = 0;
        free(t);
        pthread_cond_broadcast(&s->cond);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

aclError fake_check_stream(const char *fn, aclrtStream stream, struct fake_stream **out)
{
    struct fake_stream *s = stream;
    *out = NULL; /* on every path: GCC -O3 cannot see that fake_fail never returns 0 */
    aclError r = need_context(fn);
    if (r)
        return r;
    if (!s || s->magic != STREAM_MAGIC)
        return fake_fail(ACL_ERROR_RT_PARAM_INVALID, "%s: %p is not a stream (the default stream is not faked)",
                         fn, stream);
    if (s->ctx->magic != CTX_MAGIC)
        return fake_fail(ACL_ERROR_RT_STREAM_CONTEXT, "%s: the stream's device was reset", fn);
    if (s->ctx != current)
        return fake_fail(ACL_ERROR_RT_STREAM_CONTEXT, "%s: stream of npu:%d used in a context of npu:%d", fn,
                         s->ctx->dev, current->dev);
    *out = s;
    return ACL_SUCCESS;
}

EXPORT aclError aclrtCreateStream(aclrtStream *stream)
{
    ENTER(1);
    aclError r = need_context(__func__);
    if (r)
        return r;
    struct fake_stream *s = calloc(1, sizeof *s);
    s->magic = STREAM_MAGIC;
    s->ctx = current;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (pthread_create(&s->worker, NULL, worker_main, s)) {
        free(s);
        return fake_fail(ACL_ERROR_RT_INTERNAL_ERROR, "aclrtCreateStream: no thread");
    }
    pthread_mutex_lock(&streams_lock);
    s->next_stream = streams;
    streams = s;
    pthread_mutex_unlock(&streams_lock);
    *stream = s;
    return ACL_SUCCESS;
}

aclError fake_drain(struct fake_stream *s, int wait, int *busy)
{
    pthread_mutex_lock(&s->lock);
    s->released = s->queued;
    pthread_cond_broadcast(&s->cond);
    uint64_t aborts = s->aborts;
    while (wait && s->done < s->queued)
        pthread_cond_wait(&s->cond, &s->lock);
    if (s->aborts != aborts) { /* the documents: a wait during an abort returns ACL_ERROR_RT_STREAM_ABORT */
        pthread_mutex_unlock(&s->lock);
        return fake_fail(ACL_ERROR_RT_STREAM_ABORT, "the stream was aborted while it was waited for");
    }
    *busy = s->done < s->queued;
    aclError err = *busy ? ACL_SUCCESS : s->error;
    if (err) {
        s->error = ACL_SUCCESS; /* reported once; the stream goes on */
        fake_fail(err, "a copy task on this stream failed (injected)");
    }
    pthread_mutex_unlock(&s->lock);
    return err;
}

EXPORT aclError aclrtSynchronizeStream(aclrtStream stream)
{
    ENTER(1);
    struct fake_stream *s;
    int busy;
    aclError r = fake_check_stream(__func__, stream, &s);
    return r ? r : fake_drain(s, 1, &busy);
}

EXPORT aclError aclrtStreamQuery(aclrtStream stream, int *status)
{
    ENTER(1);
    struct fake_stream *s;
    int busy;
    aclError r = fake_check_stream(__func__, stream, &s);
    if (r)
        return r;
    if (!status)
        return fake_fail(ACL_ERROR_INVALID_PARAM, "aclrtStreamQuery: status is NULL");
    if (fake.lazy) { /* run one copy per query at most: completion stays late */
        pthread_mutex_lock(&s->lock);
        if (s->released < s->queued)
            s->released++;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_lock(&s->lock);
    busy = s->done < s->queued;
    aclError err = busy ? ACL_SUCCESS : s->error;
    s->error = busy ? s->error : ACL_SUCCESS;
    pthread_mutex_unlock(&s->lock);
    *status = busy ? ACL_STREAM_STATUS_NOT_READY : ACL_STREAM_STATUS_COMPLETE;
    return err ? fake_fail(err, "a copy task on this stream failed (injected)") : ACL_SUCCESS;
}

EXPORT aclError aclrtDestroyStream(aclrtStream stream)
{
    ENTER(1);
    struct fake_stream *s;
    aclError r = fake_check_stream(__func__, stream, &s);
    if (r)
        return r;
    pthread_mutex_lock(&s->lock);
    int busy = s->done < s->queued;
    pthread_mutex_unlock(&s->lock);
    if (busy)
        return fake_fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtDestroyStream: tasks still queued");
    pthread_mutex_lock(&streams_lock);
    for (struct fake_stream **pp = &streams; *pp; pp = &(*pp)->next_stream)
        if (*pp == s) {
            *pp = s->next_stream;
            break;
        }
    pthread_mutex_unlock(&streams_lock);
    pthread_mutex_lock(&s->lock);
    s->stopping = 1;
    s->magic = 0;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->worker, NULL);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
    return ACL_SUCCESS;
}

/* ---------------------------------------------------------------- copies */

/* Checks one side of a copy; device memory must be the stream's device's. */
static aclError check_side(const char *fn, const char *what, const void *p, size_t len, int device,
                           const struct fake_stream *s, int *pageable)
{
    if ((uintptr_t)p % fake.align)
        return fake_fail(ACL_ERROR_RT_ADDR_UNALIGNED, "%s: %s %p is not %zu-byte aligned", fn, what, p, fake.align);
    int dev = fake_device_of(p);
    if (device) {
        if (dev != s->ctx->dev || !fake_device_range_ok(dev, p, len))
            return fake_fail(ACL_ERROR_RT_PARAM_INVALID, "%s: %s %p+%zu is not inside an allocation of npu:%d", fn,
                             what, p, len, s->ctx->dev);
        return ACL_SUCCESS;
    }
    if (dev >= 0)
        return fake_fail(ACL_ERROR_RT_PARAM_INVALID, "%s: %s %p is device memory, expected host", fn, what, p);
    *pageable = !fake_host_pinned(p, len);
    if (*pageable && fake.pageable == PAGEABLE_REJECT)
        return fake_fail(ACL_ERROR_RT_PARAM_INVALID, "%s: %s %p+%zu is not from aclrtMallocHost", fn, what, p, len);
    return ACL_SUCCESS;
}

static aclError enqueue(const char *fn, void *dst, size_t dest_max, const void *src, size_t count, int kind,
                        struct fake_stream *s)
{
    int pageable = 0;
    aclError r;
    if (!dst || !src || count > dest_max)
        return fake_fail(ACL_ERROR_INVALID_PARAM, "%s: dst %p src %p count %zu destMax %zu", fn, dst, src, count,
                         dest_max);
    if (kind == ACL_MEMCPY_HOST_TO_HOST)
        return fake_fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "%s: HOST_TO_HOST is not supported", fn);
    if (kind < ACL_MEMCPY_HOST_TO_DEVICE || kind > ACL_MEMCPY_DEVICE_TO_DEVICE)
        return fake_fail(ACL_ERROR_INVALID_PARAM, "%s: kind %d", fn, kind);
    if ((r = check_side(fn, "dst", dst, count, kind != ACL_MEMCPY_DEVICE_TO_HOST, s, &pageable)) ||
        (r = check_side(fn, "src", src, count, kind != ACL_MEMCPY_HOST_TO_DEVICE, s, &pageable)))
        return r;
    if (count == 0)
        return ACL_SUCCESS;
    atomic_fetch_add(&kind_count[kind], 1);
    struct task *t = calloc(1, sizeof *t);
    t->dst = kind == ACL_MEMCPY_DEVICE_TO_HOST ? dst : fake_shadow(dst);
    t->src = kind == ACL_MEMCPY_HOST_TO_DEVICE ? src : fake_shadow(src);
    t->len = count;
    t->adst = (uintptr_t)dst;
    t->asrc = (uintptr_t)src;
    if (pageable) {
        atomic_fetch_add(&fake_pageable, 1);
        t->corrupt = fake.pageable == PAGEABLE_CORRUPT;
    }
    pthread_mutex_lock(&s->lock);
    if (s->tail)
        s->tail->next = t;
    else
        s->head = t;
    s->tail = t;
    s->queued++;
    if (!fake.lazy && !atomic_load(&held))
        s->released = s->queued;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return ACL_SUCCESS;
}

/* Synchronous: runs now on the caller's thread, with no stream order (the
 * documents: no implicit stream synchronization), no 64-byte rule and any
 * host memory; device sides exact as ever, of the current context's device. */
EXPORT aclError aclrtMemcpy(void *dst, size_t dest_max, const void *src, size_t count, int kind)
{
    ENTER(1);
    aclError r = need_context(__func__);
    if (r)
        return r;
    if (!dst || !src || count > dest_max)
        return fake_fail(ACL_ERROR_INVALID_PARAM, "aclrtMemcpy: dst %p src %p count %zu destMax %zu", dst, src, count,
                         dest_max);
    if (kind < ACL_MEMCPY_HOST_TO_HOST || kind > ACL_MEMCPY_DEVICE_TO_DEVICE)
        return fake_fail(ACL_ERROR_INVALID_PARAM, "aclrtMemcpy: kind %d", kind);
    int dst_dev = kind == ACL_MEMCPY_HOST_TO_DEVICE || kind == ACL_MEMCPY_DEVICE_TO_DEVICE;
    int src_dev = kind == ACL_MEMCPY_DEVICE_TO_HOST || kind == ACL_MEMCPY_DEVICE_TO_DEVICE;
    const void *side[2] = {dst, src};
    int want[2] = {dst_dev, src_dev};
    for (int i = 0; i < 2; i++) {
        int dev = fake_device_of(side[i]);
        if (want[i] && (dev != current->dev || !fake_device_range_ok(dev, side[i], count)))
            return fake_fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMemcpy: %s %p+%zu is not inside an allocation of npu:%d",
                             i ? "src" : "dst", side[i], count, current->dev);
        if (!want[i] && dev >= 0)
            return fake_fail(ACL_ERROR_RT_PARAM_INVALID, "aclrtMemcpy: %s %p is device memory, expected host",
                             i ? "src" : "dst", side[i]);
    }
    if (count == 0)
        return ACL_SUCCESS;
    atomic_fetch_add(&fake_sync_copies, 1);
    memmove(dst_dev ? fake_shadow(dst) : dst, src_dev ? fake_shadow(src) : src, count);
    return ACL_SUCCESS;
}

EXPORT aclError aclrtMemcpyAsync(void *dst, size_t dest_max, const void *src, size_t count, int kind,
                                 aclrtStream stream)
{
    ENTER(1);
    struct fake_stream *s;
    aclError r = fake_check_stream(__func__, stream, &s);
    return r ? r : enqueue(__func__, dst, dest_max, src, count, kind, s);
}

#ifndef FAKEACL_OLD
EXPORT aclError aclrtMemcpyBatchAsync(void **dsts, size_t *dest_max, void **srcs, size_t *sizes, size_t n,
                                      aclrtMemcpyBatchAttr *attrs, size_t *attr_index, size_t nattrs,
                                      size_t *fail_index, aclrtStream stream)
{
    ENTER(1);
    struct fake_stream *s;
    aclError r = fake_check_stream(__func__, stream, &s);
    if (r)
        return r;
    if (fake.batch == BATCH_UNSUPPORTED)
        return fake_fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "aclrtMemcpyBatchAsync: not supported on this device");
    if (fail_index)
        *fail_index = SIZE_MAX; /* the documents: SIZE_MAX where no one copy is at fault */
    if (!dsts || !dest_max || !srcs || !sizes || !attrs || !attr_index || !fail_index || n == 0 || nattrs == 0)
        return fake_fail(ACL_ERROR_INVALID_PARAM, "aclrtMemcpyBatchAsync: bad arguments");
    /* attrsIndexes: the first 0, each above the one before, the last below
     * numBatches; so numAttrs <= numBatches */
    for (size_t k = 0; k < nattrs; k++)
        if ((k == 0 && attr_index[0] != 0) || (k > 0 && attr_index[k] <= attr_index[k - 1]) || attr_index[k] >= n)
            return fake_fail(ACL_ERROR_INVALID_PARAM, "aclrtMemcpyBatchAsync: attrsIndexes[%zu]=%zu of %zu (%zu copies)",
                             k, attr_index[k], nattrs, n);
    atomic_fetch_add(&fake_batch_calls, 1);
    size_t a = 0;
    int call_kind = -1;
    for (size_t i = 0; i < n; i++) {
        while (a + 1 < nattrs && attr_index[a + 1] <= i)
            a++;
        int src_dev = attrs[a].srcLoc.type == ACL_MEM_LOCATION_TYPE_DEVICE;
        int dst_dev = attrs[a].dstLoc.type == ACL_MEM_LOCATION_TYPE_DEVICE;
        int kind = src_dev && dst_dev ? ACL_MEMCPY_DEVICE_TO_DEVICE
                   : src_dev          ? ACL_MEMCPY_DEVICE_TO_HOST
                   : dst_dev          ? ACL_MEMCPY_HOST_TO_DEVICE
                                      : ACL_MEMCPY_HOST_TO_HOST;
        if (call_kind < 0)
            call_kind = kind;
        /* the documents: one direction per call, host to device or device to host */
        if ((kind != ACL_MEMCPY_HOST_TO_DEVICE && kind != ACL_MEMCPY_DEVICE_TO_HOST) || kind != call_kind)
            r = fake_fail(ACL_ERROR_INVALID_PARAM, "aclrtMemcpyBatchAsync: copy %zu: direction %d (the call's: %d; "
                          "only one of H2D or D2H per call)", i, kind, call_kind);
        else if ((src_dev && attrs[a].srcLoc.id != (uint32_t)s->ctx->dev) ||
                 (dst_dev && attrs[a].dstLoc.id != (uint32_t)s->ctx->dev))
            r = fake_fail(ACL_ERROR_INVALID_PARAM, "aclrtMemcpyBatchAsync: attribute names another device");
        else
            r = enqueue(__func__, dsts[i], dest_max[i], srcs[i], sizes[i], kind, s);
        if (r) {
            *fail_index = i;
            return r;
        }
    }
    return ACL_SUCCESS;
}
#endif

/* ---------------------------------------------------------------- for tests */

/* What the tests ask: "copies", "pageable", "batch_calls", "failed", "h2d",
 * "d2h", "d2d" (copies enqueued of that kind), "sync_copies" (aclrtMemcpy),
 * "hung" (copies that hung), "aborted" (streams aclrtStreamAbort aborted),
 * "set_device:N" (aclrtSetDevice calls for device N). */
EXPORT unsigned long long fakeacl_stat(const char *what)
{
    if (!strcmp(what, "copies"))
        return atomic_load(&fake_copies);
    if (!strcmp(what, "pageable"))
        return atomic_load(&fake_pageable);
    if (!strcmp(what, "batch_calls"))
        return atomic_load(&fake_batch_calls);
    if (!strcmp(what, "failed"))
        return atomic_load(&fake_failed);
    if (!strcmp(what, "aborted"))
        return atomic_load(&fake_aborted);
    if (!strcmp(what, "hung"))
        return atomic_load(&fake_hung);
    if (!strcmp(what, "sync_copies"))
        return atomic_load(&fake_sync_copies);
    if (!strcmp(what, "h2d"))
        return atomic_load(&kind_count[ACL_MEMCPY_HOST_TO_DEVICE]);
    if (!strcmp(what, "d2h"))
        return atomic_load(&kind_count[ACL_MEMCPY_DEVICE_TO_HOST]);
    if (!strcmp(what, "d2d"))
        return atomic_load(&kind_count[ACL_MEMCPY_DEVICE_TO_DEVICE]);
    if (!strncmp(what, "set_device:", 11)) {
        int d = atoi(what + 11);
        return d >= 0 && d < 16 ? atomic_load(&fake_set_device[d]) : 0;
    }
    return 0;
}

/* The after-th copy executed from now on fails (reported once, like any). */
EXPORT void fakeacl_inject_failure(unsigned long long after)
{
    atomic_store(&fail_injected, atomic_load(&fake_copies) + after);
}

/* 1: copies enqueued from now on run only when their stream is
 * synchronized or queried (a stream the device has not reached yet). */
EXPORT void fakeacl_hold(int on)
{
    atomic_store(&held, on);
}

__attribute__((destructor)) static void report(void)
{
    if (!atomic_load(&fake_copies) && !atomic_load(&initialized))
        return;
#ifdef FAKEACL_OLD
    const char *build = "old (no batch call, no pointer attributes)";
#else
    const char *build = fake.batch == BATCH_UNSUPPORTED ? "full, batch call unsupported" : "full, batch call loops";
#endif
    fprintf(stderr,
            "fakeacl[%s; pageable=%s align=%zu attrs=%s exec=%s]: %llu copies executed (%llu with pageable host "
            "memory, %llu batch calls, %llu failed by injection)\n",
            build, fake.pageable == PAGEABLE_OK ? "ok" : fake.pageable == PAGEABLE_REJECT ? "reject" : "corrupt",
            fake.align, fake.attrs_unknown ? "unknown" : "known", fake.lazy ? "lazy" : "eager",
            (unsigned long long)atomic_load(&fake_copies), (unsigned long long)atomic_load(&fake_pageable),
            (unsigned long long)atomic_load(&fake_batch_calls), (unsigned long long)atomic_load(&fake_failed));
}

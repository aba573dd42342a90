/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ascend_copy.c — the Ascend backend's streams and copies.
 *
 * A ferry stream is one ACL stream of one device.  Copies go through
 * aclrtMemcpyAsync (or aclrtMemcpyBatchAsync with FERRY_NPU_BATCH_COPY=1),
 * but only when their host side is pinned memory from host_alloc and, with
 * FERRY_NPU_COPY_ALIGN=64, 64-byte aligned: CANN 8.0/8.1 document that a
 * copy from pageable memory "reports no error, but an unpredictable error
 * may occur when the task executes", and that async copies want 64-byte
 * aligned addresses.  Any other host side is bounced through a pinned
 * buffer synchronously: the stream is drained, the bytes are copied, and
 * copy_async returns when they are in place (slow, correct; the staging
 * path never needs it).  A device address that is not 64-byte aligned
 * (aclrtMemcpyAsync refuses it; no bounce moves it) goes through the
 * synchronous aclrtMemcpy, after the stream is drained.
 *
 * Errors: ACL reports a failed copy once (continue-on-failure) and runs the
 * next ones; ferry keeps the first failure of a stream and reports it from
 * every later call, as device.h promises.  No threads of its own.
 *
 * Hung streams: no wait on a stream lasts longer than
 * FERRY_NPU_SYNC_TIMEOUT_MS (aclrtSynchronizeStreamWithTimeout, else
 * aclrtStreamQuery polled with sleeps between).  A stream that does not
 * finish in time (a dead link, a wedged core, a driver fault) fails with a
 * sticky FERRY_ETIMEDOUT and is aborted (aclrtStreamAbort: its copies are
 * stopped or dropped, the memory they touched may be freed) or, where the
 * runtime cannot abort it, abandoned: never waited for again, and at
 * stream_destroy neither destroyed (undefined with work in flight) nor its
 * bounce freed; stream_abandoned tells callers to keep the memory its copies
 * touched too.
 */
#include "device/ascend.h"
#include "device/backend.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "log.h"
#include "net.h"

#define NPU_BATCH_CHUNK 256
#define NPU_STREAM_MAGIC 0x6e707573u /* "npus" */
#define NPU_BOUNCE_MAX ((size_t)4 << 20)
/* Polling a stream without aclrtSynchronizeStreamWithTimeout: the sleep
 * between two aclrtStreamQuery calls doubles from the first to the last. */
#define POLL_SLEEP_FIRST_NS 20000u
#define POLL_SLEEP_MAX_NS 2000000u

enum { HUNG_ABORTED = 1, HUNG_ABANDONED = 2 };

/* Streams abandoned in this process (never destroyed): for the log. */
static atomic_uint abandoned_streams;
/* aclrtSynchronizeStreamWithTimeout answered "not supported": poll instead. */
static atomic_int timed_sync_refused;

struct npu_stream {
    uint32_t magic;
    int dev;
    aclrtStream stream;
    pthread_mutex_t failure_lock; /* failed, failure, hung: streams may be shared between threads */
    int failed;                  /* 0, or the FERRY_E* of the first failure: reported from now on */
    char failure[200];
    int hung;                    /* a wait timed out: HUNG_ABORTED or HUNG_ABANDONED */
    void *bounce;                /* pinned, NPU_BOUNCE_MAX bytes, made on first need */
    pthread_mutex_t bounce_lock; /* one bounced copy at a time (streams may be shared) */
};

static const int memcpy_kinds[] = {ACL_MEMCPY_DEVICE_TO_HOST, ACL_MEMCPY_HOST_TO_DEVICE,
                                   ACL_MEMCPY_DEVICE_TO_DEVICE};
static const char *const dir_names[] = {"D2H", "H2D", "D2D"};

static struct npu_stream *as_npu(ferry_stream *stream)
{
    struct npu_stream *s = (struct npu_stream *)stream;
    return s != NULL && s->magic == NPU_STREAM_MAGIC ? s : NULL;
}

/* Records a stream's first failure; every later call reports it (its code
 * and text).  Under failure_lock: another thread may be writing or reading
 * the text. */
static int stream_failed(struct npu_stream *s, aclError r, const char *what)
{
    pthread_mutex_lock(&s->failure_lock);
    if (!s->failed) {
        s->failed = FERRY_EIO;
        snprintf(s->failure, sizeof s->failure, "npu:%d: %s: ACL error %d: %s", s->dev, what, r,
                 npu_error_text(r));
    } else {
        npu_forget_error(); /* a later failure of a broken stream: the first one is reported */
    }
    int rc = ferry_fail(s->failed, "%s", s->failure);
    pthread_mutex_unlock(&s->failure_lock);
    return rc;
}

/* The stream's sticky error (its first failure's code and text), or 0. */
static int stream_sticky_error(struct npu_stream *s)
{
    pthread_mutex_lock(&s->failure_lock);
    int rc = s->failed ? ferry_fail(s->failed, "%s", s->failure) : 0;
    pthread_mutex_unlock(&s->failure_lock);
    return rc;
}

static int wait_stream(struct npu_stream *s);

static void free_stream(struct npu_stream *s)
{
    s->magic = 0;
    pthread_mutex_destroy(&s->bounce_lock);
    pthread_mutex_destroy(&s->failure_lock);
    free(s);
}

int npu_stream_create(int dev, ferry_stream **out)
{
    struct ctx_guard g;
    aclrtStream as = NULL;
    int rc = npu_ready();
    if (rc < 0)
        return rc;
    if (out == NULL)
        return ferry_fail(FERRY_EINVAL, "npu:%d: stream_create needs out", dev);
    struct npu_stream *s = calloc(1, sizeof *s);
    if (s == NULL)
        return ferry_fail(FERRY_ENOMEM, "npu:%d: stream", dev);
    if ((rc = npu_ctx_enter(dev, &g)) < 0) {
        free(s);
        return rc;
    }
    aclError r = acl.aclrtCreateStream(&as);
    rc = r == ACL_SUCCESS ? 0 : npu_acl_fail(r, "aclrtCreateStream", dev); /* ACL's message before other calls */
    npu_ctx_leave(&g);
    if (rc < 0) {
        free(s);
        return rc;
    }
    s->magic = NPU_STREAM_MAGIC;
    s->dev = dev;
    s->stream = as;
    pthread_mutex_init(&s->bounce_lock, NULL);
    pthread_mutex_init(&s->failure_lock, NULL);
    *out = (ferry_stream *)s;
    return 0;
}

/* aclrtDestroyStream wants the stream idle: wait for queued copies first, as
 * the other backends let them finish.  Once the process exits, no ACL call. */
void npu_stream_destroy(ferry_stream *stream)
{
    struct ctx_guard g;
    struct npu_stream *s = as_npu(stream);
    if (s == NULL) {
        if (stream != NULL)
            LOG_ERROR("npu: stream_destroy(%p): not an npu stream", (void *)stream);
        return;
    }
    if (npu_may_release() && npu_ctx_enter(s->dev, &g) == 0) {
        /* a copy's failure was reported by the calls that ran it, or nobody
         * waits for it now; a stream that hangs here is aborted or abandoned */
        if (wait_stream(s) < 0)
            npu_forget_error();
        if (npu_stream_abandoned(stream)) {
            /* its copies may still run: the ACL stream, its bounce and the
             * memory they touch stay (the process's end reclaims them) */
            LOG_ERROR("npu:%d: stream %p left behind, not destroyed (%u abandoned in this process): %s", s->dev,
                      s->stream, atomic_load(&abandoned_streams), s->failure);
            npu_ctx_leave(&g);
            free_stream(s);
            return;
        }
        if (s->bounce && acl.aclrtFreeHost(s->bounce) != ACL_SUCCESS)
            LOG_ERROR("npu:%d: aclrtFreeHost(bounce %p): %s", s->dev, s->bounce, npu_error_text(0));
        aclError r = acl.aclrtDestroyStream(s->stream);
        if (r != ACL_SUCCESS)
            LOG_ERROR("npu:%d: aclrtDestroyStream: ACL error %d: %s", s->dev, r, npu_error_text(r));
        npu_ctx_leave(&g);
    }
    free_stream(s);
}

/* ---------------------------------------------------------------- direct copies */

struct copy_call {
    struct npu_stream *s;
    enum ferry_copy_dir dir;
};

static int copy_single(void *arg, const struct ferry_copy *c, size_t index)
{
    const struct copy_call *call = arg;
    aclError r = acl.aclrtMemcpyAsync(c->dst, c->len, c->src, c->len, memcpy_kinds[call->dir],
                                      call->s->stream);
    if (r == ACL_SUCCESS)
        return 0;
    return ferry_fail(FERRY_EIO,
                      "npu:%d: aclrtMemcpyAsync %s (dst %p, src %p, %zu bytes) of copy %zu: ACL error %d: %s",
                      call->s->dev, dir_names[call->dir], c->dst, c->src, c->len, index, r, npu_error_text(r));
}

/* ACL's message of this thread's last failed batch call: read at once (ACL
 * clears it on reading, and the copies retried one by one come first), shown
 * by the warning that turns batching off. */
static __thread char batch_failure[256];

static const char *batch_error_text(int r)
{
    (void)r;
    return batch_failure;
}

/* aclrtMemcpyBatchAsync: host<->device, one direction per call. */
static int copy_batch(void *arg, const struct ferry_copy *copies, size_t n)
{
    const struct copy_call *call = arg;
    void *dsts[NPU_BATCH_CHUNK], *srcs[NPU_BATCH_CHUNK];
    size_t sizes[NPU_BATCH_CHUNK];
    size_t count = 0;
    if (call->dir == FERRY_COPY_D2D)
        return -1;   /* done one by one */
    for (size_t i = 0; i < n && i < NPU_BATCH_CHUNK; i++) {
        if (copies[i].len == 0)
            continue;
        dsts[count] = copies[i].dst;
        srcs[count] = (void *)copies[i].src;
        sizes[count] = copies[i].len;
        count++;
    }
    if (count == 0)
        return 0;
    struct acl_memcpy_batch_attr attr;
    memset(&attr, 0, sizeof attr);
    struct acl_mem_location host = {0, ACL_MEM_LOCATION_TYPE_HOST};
    struct acl_mem_location device = {(uint32_t)call->s->dev, ACL_MEM_LOCATION_TYPE_DEVICE};
    attr.src_loc = call->dir == FERRY_COPY_H2D ? host : device;
    attr.dst_loc = call->dir == FERRY_COPY_H2D ? device : host;
    size_t attr_index = 0, fail_index = SIZE_MAX;
    /* destMax = size: ferry's copies never write beyond their length. */
    aclError r = acl.aclrtMemcpyBatchAsync(dsts, sizes, srcs, sizes, count, &attr, &attr_index, 1, &fail_index,
                                           call->s->stream);
    if (r != ACL_SUCCESS) {
        const char *text = npu_error_text(r);
        if (fail_index < count)
            snprintf(batch_failure, sizeof batch_failure, "at copy %zu of %zu: %s", fail_index, count, text);
        else
            snprintf(batch_failure, sizeof batch_failure, "%s", text);
    }
    return r;
}

static const struct ferry_copy_engine copy_engine = {
    .name = "npu",
    .batch_enabled = &npu_batch_enabled,
    .batch_max = NPU_BATCH_CHUNK,
    .batch = copy_batch,
    .single = copy_single,
    .error_text = batch_error_text,
};

static int enqueue_direct(struct copy_call *call, const struct ferry_copy *copies, size_t n)
{
    struct ferry_copy_engine e = copy_engine;
    if (call->dir == FERRY_COPY_D2D)
        e.batch_enabled = NULL;   /* no batch call for D2D: keep it from disabling batching */
    return ferry_device_enqueue_copies(&e, call, copies, n);
}

/* ---------------------------------------------------------------- bounced copies */

/* The host side of a copy ACL may use asynchronously: pinned by host_alloc
 * and aligned as FERRY_NPU_COPY_ALIGN asks. */
static int host_side_ok(enum ferry_copy_dir dir, const struct ferry_copy *c)
{
    if (dir == FERRY_COPY_D2D)
        return 1;
    const void *host = dir == FERRY_COPY_D2H ? c->dst : c->src;
    return (uintptr_t)host % npu_copy_align == 0 && npu_host_pinned(host, c->len);
}

/* The device side(s) aligned as FERRY_NPU_COPY_ALIGN asks: aclrtMemcpyAsync
 * refuses others, and a bounce cannot help (the device address stays). */
static int device_side_ok(enum ferry_copy_dir dir, const struct ferry_copy *c)
{
    int dst = (uintptr_t)c->dst % npu_copy_align == 0, src = (uintptr_t)c->src % npu_copy_align == 0;
    return dir == FERRY_COPY_D2D ? dst && src : dir == FERRY_COPY_H2D ? dst : src;
}

static int copy_ok(enum ferry_copy_dir dir, const struct ferry_copy *c)
{
    return c->len == 0 || (host_side_ok(dir, c) && device_side_ok(dir, c));
}

/* A wait ran out: the stream fails with FERRY_ETIMEDOUT for good (first,
 * so that a thread sharing it sees that, not the abort's own error), then
 * is aborted, or abandoned where ACL cannot abort it.  Context entered. */
static int stream_hung(struct npu_stream *s, aclError r, const char *what)
{
    pthread_mutex_lock(&s->failure_lock);
    int first = !s->hung;
    if (first) {
        s->hung = HUNG_ABANDONED; /* until the abort succeeded */
        s->failed = FERRY_ETIMEDOUT; /* over an earlier copy failure: the stream itself is gone now */
        snprintf(s->failure, sizeof s->failure, "npu:%d: stream %p: no end in %u ms (%s: ACL error %d)", s->dev,
                 s->stream, npu_sync_timeout_ms, what, r);
    }
    pthread_mutex_unlock(&s->failure_lock);
    npu_forget_error();
    if (!first)
        return stream_sticky_error(s);
    aclError a = acl.aclrtStreamAbort ? acl.aclrtStreamAbort(s->stream) : ACL_ERROR_RT_FEATURE_NOT_SUPPORT;
    if (a != ACL_SUCCESS) {
        npu_forget_error();
        atomic_fetch_add(&abandoned_streams, 1);
    }
    pthread_mutex_lock(&s->failure_lock);
    size_t len = strlen(s->failure);
    if (a == ACL_SUCCESS) {
        s->hung = HUNG_ABORTED;
        snprintf(s->failure + len, sizeof s->failure - len, "; aborted");
    } else if (acl.aclrtStreamAbort) {
        snprintf(s->failure + len, sizeof s->failure - len, "; abandoned (aclrtStreamAbort: ACL error %d)", a);
    } else {
        snprintf(s->failure + len, sizeof s->failure - len, "; abandoned (no aclrtStreamAbort)");
    }
    int rc = ferry_fail(FERRY_ETIMEDOUT, "%s", s->failure);
    LOG_ERROR("%s", s->failure);
    pthread_mutex_unlock(&s->failure_lock);
    return rc;
}

/* aclrtStreamQuery until the stream is done or the deadline passes,
 * sleeping between polls (doubling, up to POLL_SLEEP_MAX_NS): no core spins
 * on a hung device. */
static int poll_stream(struct npu_stream *s)
{
    uint64_t deadline = now_ns() + (uint64_t)npu_sync_timeout_ms * 1000000u;
    long sleep_ns = POLL_SLEEP_FIRST_NS;
    for (;;) {
        int status = ACL_STREAM_STATUS_NOT_READY;
        aclError r = acl.aclrtStreamQuery(s->stream, &status);
        if (r != ACL_SUCCESS)
            return stream_failed(s, r, "aclrtStreamQuery");
        if (status == ACL_STREAM_STATUS_COMPLETE)
            return 0;
        if (now_ns() >= deadline)
            return stream_hung(s, ACL_ERROR_RT_STREAM_SYNC_TIMEOUT, "aclrtStreamQuery");
        nanosleep(&(struct timespec){0, sleep_ns}, NULL);
        if (sleep_ns < (long)POLL_SLEEP_MAX_NS)
            sleep_ns *= 2;
    }
}

/* Waits for everything enqueued on the stream, FERRY_NPU_SYNC_TIMEOUT_MS at
 * most (without either bounded call: as long as it takes).  A hung stream
 * answers its sticky error at once.  Context entered. */
static int wait_stream(struct npu_stream *s)
{
    int rc = stream_sticky_error(s);
    if (rc < 0 && npu_stream_abandoned((ferry_stream *)s))
        return rc;
    if (acl.aclrtSynchronizeStreamWithTimeout && !atomic_load(&timed_sync_refused)) {
        aclError r = acl.aclrtSynchronizeStreamWithTimeout(s->stream, (int32_t)npu_sync_timeout_ms);
        if (r == ACL_SUCCESS)
            return 0;
        if (r == ACL_ERROR_RT_STREAM_SYNC_TIMEOUT)
            return stream_hung(s, r, "aclrtSynchronizeStreamWithTimeout");
        if (r != ACL_ERROR_RT_FEATURE_NOT_SUPPORT)
            return stream_failed(s, r, "aclrtSynchronizeStreamWithTimeout");
        npu_forget_error();
        if (!atomic_exchange(&timed_sync_refused, 1))
            LOG_INFO("npu:%d: aclrtSynchronizeStreamWithTimeout is not supported; streams are polled", s->dev);
    }
    if (acl.aclrtStreamQuery)
        return poll_stream(s);
    aclError r = acl.aclrtSynchronizeStream(s->stream);
    return r == ACL_SUCCESS ? 0 : stream_failed(s, r, "aclrtSynchronizeStream");
}

int npu_stream_abandoned(ferry_stream *stream)
{
    struct npu_stream *s = as_npu(stream);
    if (s == NULL)
        return 0;
    pthread_mutex_lock(&s->failure_lock);
    int abandoned = s->hung == HUNG_ABANDONED;
    pthread_mutex_unlock(&s->failure_lock);
    return abandoned;
}

/* One copy whose host side ACL must not see: through a pinned bounce,
 * piece by piece, each piece waited for.  The stream is drained first so
 * the copy keeps its place in the stream's order. */
static int copy_bounced(struct npu_stream *s, enum ferry_copy_dir dir, const struct ferry_copy *c, size_t index)
{
    size_t room = NPU_BOUNCE_MAX;
    int rc = wait_stream(s);
    if (rc < 0)
        return rc;
    if (!s->bounce) {
        aclError r = acl.aclrtMallocHost(&s->bounce, room);
        if (r != ACL_SUCCESS) {
            s->bounce = NULL;
            return ferry_fail(FERRY_ENOMEM, "npu:%d: bounce buffer for copy %zu (%zu bytes): ACL error %d: %s",
                              s->dev, index, room, r, npu_error_text(r));
        }
    }
    char *bounce = s->bounce;
    struct copy_call call = {s, dir};
    for (size_t off = 0; off < c->len && rc == 0; off += room) {
        size_t k = c->len - off < room ? c->len - off : room;
        struct ferry_copy piece;
        if (dir == FERRY_COPY_H2D) {
            memcpy(bounce, (const char *)c->src + off, k);
            piece = (struct ferry_copy){(char *)c->dst + off, bounce, k};
        } else {
            piece = (struct ferry_copy){bounce, (const char *)c->src + off, k};
        }
        rc = copy_single(&call, &piece, index);
        if (rc == 0)
            rc = wait_stream(s);
        if (rc == 0 && dir == FERRY_COPY_D2H)
            memcpy((char *)c->dst + off, bounce, k);
    }
    return rc;
}

/* A copy whose device address aclrtMemcpyAsync would refuse (not 64-byte
 * aligned: a KV block at an odd offset): the synchronous aclrtMemcpy has
 * neither the alignment rule nor the pinned-memory one.  It does not wait
 * for the stream, so the stream is drained first to keep the order. */
static int copy_unaligned(struct npu_stream *s, enum ferry_copy_dir dir, const struct ferry_copy *c, size_t index)
{
    int rc = wait_stream(s);
    if (rc < 0)
        return rc;
    aclError r = acl.aclrtMemcpy(c->dst, c->len, c->src, c->len, memcpy_kinds[dir]);
    if (r == ACL_SUCCESS)
        return 0;
    char what[160];
    snprintf(what, sizeof what, "aclrtMemcpy %s (dst %p, src %p, %zu bytes) of copy %zu at an unaligned device address",
             dir_names[dir], c->dst, c->src, c->len, index);
    return stream_failed(s, r, what);
}

int npu_copy_async(ferry_stream *stream, enum ferry_copy_dir dir, const struct ferry_copy *copies, size_t n)
{
    struct ctx_guard g;
    struct npu_stream *s = as_npu(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "npu: copy_async on %p: not an npu stream", (void *)stream);
    if (dir != FERRY_COPY_D2H && dir != FERRY_COPY_H2D && dir != FERRY_COPY_D2D)
        return ferry_fail(FERRY_EINVAL, "npu: copy_async: bad direction %d", (int)dir);
    if (n == 0)
        return 0;
    if (copies == NULL)
        return ferry_fail(FERRY_EINVAL, "npu: copy_async: %zu copies but no array", n);
    int rc = stream_sticky_error(s);
    if (rc < 0)
        return rc;
    rc = npu_ready();
    if (rc < 0 || (rc = npu_ctx_enter(s->dev, &g)) < 0)
        return rc;
    struct copy_call call = {s, dir};
    /* runs of direct copies in one go; the others bounced in between */
    for (size_t i = 0; i < n && rc == 0;) {
        size_t j = i;
        while (j < n && copy_ok(dir, &copies[j]))
            j++;
        if (j > i) {
            rc = enqueue_direct(&call, copies + i, j - i);
            i = j;
        } else if (!device_side_ok(dir, &copies[i])) {
            rc = copy_unaligned(s, dir, &copies[i], i);
            i++;
        } else {
            pthread_mutex_lock(&s->bounce_lock);
            rc = copy_bounced(s, dir, &copies[i], i);
            pthread_mutex_unlock(&s->bounce_lock);
            i++;
        }
    }
    npu_ctx_leave(&g);
    return rc;
}

int npu_stream_sync(ferry_stream *stream)
{
    struct ctx_guard g;
    struct npu_stream *s = as_npu(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "npu: stream_sync on %p: not an npu stream", (void *)stream);
    int rc = stream_sticky_error(s);
    if (rc < 0)
        return rc;
    rc = npu_ready();
    if (rc < 0 || (rc = npu_ctx_enter(s->dev, &g)) < 0)
        return rc;
    rc = wait_stream(s);
    npu_ctx_leave(&g);
    return rc;
}

int npu_stream_query(ferry_stream *stream)
{
    struct ctx_guard g;
    struct npu_stream *s = as_npu(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "npu: stream_query on %p: not an npu stream", (void *)stream);
    if (acl.aclrtStreamQuery == NULL)
        return npu_stream_sync(stream);
    int rc = stream_sticky_error(s);
    if (rc < 0)
        return rc;
    rc = npu_ready();
    if (rc < 0 || (rc = npu_ctx_enter(s->dev, &g)) < 0)
        return rc;
    int status = ACL_STREAM_STATUS_NOT_READY;
    aclError r = acl.aclrtStreamQuery(s->stream, &status);
    rc = r != ACL_SUCCESS ? stream_failed(s, r, "aclrtStreamQuery")
         : status == ACL_STREAM_STATUS_COMPLETE ? 0 : FERRY_EBUSY;
    npu_ctx_leave(&g);
    return rc;
}

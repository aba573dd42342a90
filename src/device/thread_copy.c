/* SPDX-License-Identifier: Apache-2.0 */
/*
 * thread_copy.c — synchronous device copies on a per-thread stream, for
 * callers off the staging fast path: a transport thread bouncing a peer's
 * access to device memory, ferry_mem_copy.  Each thread keeps one stream
 * (for the last device it used) in thread-specific storage, taken from the
 * device's stream cache (stream_cache.c: never created mid-transfer) and
 * given back when the thread exits.  A copy is complete (or failed, with nothing of it
 * still queued) when ferry_device_copy_sync returns, so a caller may end its
 * access to the memory (memreg.h) right after; ferry_device_copy_start and
 * _wait split that in two, so the thread can receive the next bytes while
 * the device copies the last ones (the tcp target's bounce), and
 * ferry_device_copy_then runs a function once they are done (the tcp
 * target's acknowledgement from the copy's completion).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "device/device.h"
#include "err.h"
#include "trace.h"

struct thread_stream {
    const struct ferry_device_ops *ops;
    int dev;
    ferry_stream *stream;
    bool inflight;               /* copies started and not yet waited for */
    bool lost;                   /* the last failure abandoned the stream (ferry_device_copy_lost) */
};

static pthread_key_t key;
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* The thread is done with its stream: what it started must end first; a
 * stream whose copies failed is destroyed, a healthy one given back. */
static void stream_leave(struct thread_stream *ts)
{
    int rc = ts->inflight ? ts->ops->stream_sync(ts->stream) : 0;
    if (rc)
        ts->ops->stream_destroy(ts->stream);
    else
        ferry_device_stream_give(ts->ops, ts->dev, ts->stream);
    ts->stream = NULL;
    ts->inflight = false;
}

static void thread_stream_free(void *p)
{
    struct thread_stream *ts = p;
    if (ts->stream)
        stream_leave(ts);
    free(ts);
}

static atomic_bool once_done;

static void key_init(void)
{
    pthread_key_create(&key, thread_stream_free);
    atomic_store(&once_done, true);
}

/* The thread's stream for (ops, dev): a stream of another device is
 * drained (copies started on it must end first) and replaced. */
static int thread_stream(const struct ferry_device_ops *ops, int dev, struct thread_stream **out)
{
    pthread_once(&once, key_init);
    struct thread_stream *ts = pthread_getspecific(key);
    if (!ts) {
        ts = calloc(1, sizeof *ts);
        if (!ts)
            return ferry_fail(FERRY_ENOMEM, "thread stream");
        pthread_setspecific(key, ts);
    }
    if (ts->stream && (ts->ops != ops || ts->dev != dev))
        stream_leave(ts);
    if (!ts->stream) {
        int rc = ferry_device_stream_take(ops, dev, &ts->stream);
        if (rc)
            return rc;
        ts->ops = ops;
        ts->dev = dev;
    }
    *out = ts;
    return 0;
}

/* After a failure the stream is in a sticky error: start over (a broken
 * stream is destroyed, not given back). */
static void thread_stream_renew(struct thread_stream *ts)
{
    ts->lost = ts->ops->stream_abandoned && ts->ops->stream_abandoned(ts->stream);
    ts->ops->stream_destroy(ts->stream);
    ts->stream = NULL;
    ts->inflight = false;
}

int ferry_device_copy_start(const struct ferry_device_ops *ops, int dev, enum ferry_copy_dir dir,
                            const struct ferry_copy *copies, size_t n)
{
    if (n == 0)
        return 0;
    struct thread_stream *ts = NULL;
    int rc = thread_stream(ops, dev, &ts);
    if (rc)
        return rc;
    TRACE(TR_COPY_BEGIN, n);
    rc = ops->copy_async(ts->stream, dir, copies, n);
    TRACE(TR_COPY_QUEUED, n);
    if (rc) { /* copies queued before the one that failed must be done when we return */
        (void)ops->stream_sync(ts->stream);
        thread_stream_renew(ts);
        return rc;
    }
    ts->inflight = true;
    return 0;
}

int ferry_device_copy_wait(void)
{
    struct thread_stream *ts = once_done ? pthread_getspecific(key) : NULL;
    if (!ts || !ts->stream || !ts->inflight)
        return 0;
    TRACE(TR_COPY_WAIT, 0);
    int rc = ts->ops->stream_sync(ts->stream);
    TRACE(TR_COPY_SYNCED, 0);
    ts->inflight = false;
    if (rc)
        thread_stream_renew(ts);
    return rc;
}

int ferry_device_copy_lost(void)
{
    struct thread_stream *ts = once_done ? pthread_getspecific(key) : NULL;
    if (!ts || !ts->lost)
        return 0;
    ts->lost = false;
    return 1;
}

int ferry_device_copy_then(void (*fn)(void *), void *arg)
{
    struct thread_stream *ts = once_done ? pthread_getspecific(key) : NULL;
    if (!ts || !ts->stream || !ts->inflight)
        return ferry_fail(FERRY_EINVAL, "copy_then: this thread has no device copy in flight");
    if (!ts->ops->stream_then)
        return ferry_fail(FERRY_ENOTSUP, "%s: no host function on a stream", ts->ops->kind);
    return ts->ops->stream_then(ts->stream, fn, arg);
}

int ferry_device_copy_mark(volatile uint32_t *flag, uint32_t value)
{
    struct thread_stream *ts = once_done ? pthread_getspecific(key) : NULL;
    if (!ts || !ts->stream || !ts->inflight)
        return ferry_fail(FERRY_EINVAL, "copy_mark: this thread has no device copy in flight");
    if (!ts->ops->stream_mark)
        return ferry_fail(FERRY_ENOTSUP, "%s: no mark on a stream", ts->ops->kind);
    return ts->ops->stream_mark(ts->stream, flag, value);
}

int ferry_device_copy_sync(const struct ferry_device_ops *ops, int dev, enum ferry_copy_dir dir,
                           const struct ferry_copy *copies, size_t n)
{
    if (n == 0)
        return 0;
    int rc = ferry_device_copy_start(ops, dev, dir, copies, n);
    return rc ? rc : ferry_device_copy_wait();
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * thread_copy.c — synchronous device copies on a per-thread stream, for
 * callers off the staging fast path: a transport thread bouncing a peer's
 * access to device memory, ferry_mem_copy.  Each thread keeps one stream
 * (for the last device it used) in thread-specific storage; it is destroyed
 * when the thread exits.  A copy is complete (or failed, with nothing of it
 * still queued) when ferry_device_copy_sync returns, so a caller may end its
 * access to the memory (memreg.h) right after.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "device/device.h"
#include "err.h"
#include "trace.h"

struct thread_stream {
    const struct ferry_device_ops *ops;
    int dev;
    ferry_stream *stream;
};

static pthread_key_t key;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void thread_stream_free(void *p)
{
    struct thread_stream *ts = p;
    if (ts->stream)
        ts->ops->stream_destroy(ts->stream);
    free(ts);
}

static void key_init(void)
{
    pthread_key_create(&key, thread_stream_free);
}

int ferry_device_copy_sync(const struct ferry_device_ops *ops, int dev, enum ferry_copy_dir dir,
                           const struct ferry_copy *copies, size_t n)
{
    if (n == 0)
        return 0;
    pthread_once(&once, key_init);
    struct thread_stream *ts = pthread_getspecific(key);
    if (!ts) {
        ts = calloc(1, sizeof *ts);
        if (!ts)
            return ferry_fail(FERRY_ENOMEM, "thread stream");
        pthread_setspecific(key, ts);
    }
    if (ts->stream && (ts->ops != ops || ts->dev != dev)) {
        ts->ops->stream_destroy(ts->stream);
        ts->stream = NULL;
    }
    if (!ts->stream) {
        int rc = ops->stream_create(dev, &ts->stream);
        if (rc)
            return rc;
        ts->ops = ops;
        ts->dev = dev;
    }
    TRACE(TR_COPY_BEGIN, n);
    int rc = ops->copy_async(ts->stream, dir, copies, n);
    TRACE(TR_COPY_QUEUED, n);
    if (rc) /* copies queued before the one that failed must be done when we return:
             * the caller's access to that memory ends then (ferry_unregister_memory) */
        (void)ops->stream_sync(ts->stream);
    else
        rc = ops->stream_sync(ts->stream);
    TRACE(TR_COPY_SYNCED, n);
    if (rc) { /* a failed copy leaves the stream in a sticky error: start over */
        ops->stream_destroy(ts->stream);
        ts->stream = NULL;
    }
    return rc;
}

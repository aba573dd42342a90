/* SPDX-License-Identifier: Apache-2.0 */
/*
 * stream_cache.c — ferry's streams are made at registration, not mid-transfer.
 *
 * Creating a CUDA stream can wait for every stream of the device: measured
 * on an H200 (bench/cuda_sync_probe.c), one cuStreamCreate in about two
 * hundred waits until a stream blocked in cuStreamWaitValue32 goes on.  A
 * caller's stream blocked by ferry_batch_submit_on_stream goes on only when
 * ferry's transfer ends; if that transfer's own path creates a stream (a tcp
 * target thread's first device copy into memory of the same process), the
 * two wait for each other for ever.  So the threads that copy to or from a
 * device take their streams from here: idle streams are kept for the next
 * taker, and ferry_device_prepare makes some ahead of need, when device
 * memory is registered and before a stream-ordered submit.  Creating a
 * stream also loads the CUDA gather kernels (cuda_gather_preload), the other
 * call that waits for every stream.
 *
 * Threads: every function may be called from any thread (one lock).  A child
 * of fork() starts with an empty cache: the parent's streams are not its own.
 */
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include "device/device.h"
#include "err.h"

#define CACHE_DEVICES 64   /* (kind, device) pairs */
#define CACHE_IDLE 64      /* idle streams kept per pair; more are destroyed */
#define PREPARED_STREAMS 8 /* made ahead of need per pair */

struct cache_entry {
    const struct ferry_device_ops *ops;
    int dev;
    bool prepared;
    int nidle;
    ferry_stream *idle[CACHE_IDLE];
};

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cache_entry cache[CACHE_DEVICES];
static int ncache;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void forget_in_child(void)
{
    pthread_mutex_init(&cache_lock, NULL);
    memset(cache, 0, sizeof cache);
    ncache = 0;
}

static void atfork_init(void)
{
    pthread_atfork(NULL, NULL, forget_in_child);
}

/* (ops, dev)'s entry, added if new; NULL when the table is full.  Lock held. */
static struct cache_entry *entry_of(const struct ferry_device_ops *ops, int dev)
{
    for (int i = 0; i < ncache; i++)
        if (cache[i].ops == ops && cache[i].dev == dev)
            return &cache[i];
    if (ncache == CACHE_DEVICES)
        return NULL;
    cache[ncache] = (struct cache_entry){.ops = ops, .dev = dev};
    return &cache[ncache++];
}

int ferry_device_stream_take(const struct ferry_device_ops *ops, int dev, ferry_stream **out)
{
    pthread_once(&atfork_once, atfork_init);
    pthread_mutex_lock(&cache_lock);
    struct cache_entry *c = entry_of(ops, dev);
    ferry_stream *s = c && c->nidle ? c->idle[--c->nidle] : NULL;
    pthread_mutex_unlock(&cache_lock);
    if (s) {
        *out = s;
        return 0;
    }
    return ops->stream_create(dev, out); /* none idle: more takers than were prepared for */
}

void ferry_device_stream_give(const struct ferry_device_ops *ops, int dev, ferry_stream *stream)
{
    if (!stream)
        return;
    pthread_once(&atfork_once, atfork_init);
    pthread_mutex_lock(&cache_lock);
    struct cache_entry *c = entry_of(ops, dev);
    bool kept = c && c->nidle < CACHE_IDLE;
    if (kept)
        c->idle[c->nidle++] = stream;
    pthread_mutex_unlock(&cache_lock);
    if (!kept)
        ops->stream_destroy(stream);
}

int ferry_device_prepare(const struct ferry_device_ops *ops, int dev)
{
    if (!ops->stream_create)
        return 0;
    pthread_once(&atfork_once, atfork_init);
    pthread_mutex_lock(&cache_lock);
    struct cache_entry *c = entry_of(ops, dev);
    bool todo = c && !c->prepared;
    if (todo)
        c->prepared = true; /* one preparer; the others go on at once */
    pthread_mutex_unlock(&cache_lock);
    if (!todo)
        return 0;
    ferry_stream *made[PREPARED_STREAMS];
    int n = 0, rc = 0;
    while (n < PREPARED_STREAMS && (rc = ops->stream_create(dev, &made[n])) == 0)
        n++;
    for (int i = 0; i < n; i++)
        ferry_device_stream_give(ops, dev, made[i]);
    if (rc) { /* let a later registration try again */
        pthread_mutex_lock(&cache_lock);
        c->prepared = false;
        pthread_mutex_unlock(&cache_lock);
    }
    return rc;
}

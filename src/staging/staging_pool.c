/* SPDX-License-Identifier: Apache-2.0 */
/*
 * staging_pool.c — a staging pool's life: its knobs, its pinned chunks and
 * streams (and mark streams and words), its worker thread, and teardown
 * (frames still waiting end FERRY_ECANCELED; the worker drains what is in
 * flight first), and how a pool's memory is cut into chunks
 * (staging_pool_shape).  The pipeline itself is staging.c.  Called by the
 * engine when a device's first memory is registered and when it stops.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "err.h"
#include "log.h"
#include "staging/staging_internal.h"

/* FERRY_STAGING_SPIN_US (microseconds a worker polls before it sleeps),
 * FERRY_STAGING_GROUP (frames a group takes at most),
 * FERRY_STAGING_GROUP_FIRST (frames a round's first group takes at most),
 * FERRY_STAGING_MARK_STREAMS (0: groups on their chunks' streams) and
 * FERRY_STAGING_ISSUER_RETIRE_US and FERRY_STAGING_SCATTER_RETIRE_US (0:
 * only the worker retires), FERRY_STAGING_ISSUER_RETIRE_GROUPS (1: the
 * first group only) and FERRY_STAGING_INLINE_FIRST and
 * FERRY_STAGING_INLINE_LAST (0: every staged WRITE handed over) and
 * FERRY_STAGING_READ_GROUP_BYTES (0: scatters grouped as gathers) and
 * FERRY_STAGING_READ_GROUP_FIRST_BYTES (0: a round's first such group too)
 * and FERRY_STAGING_CHAIN_BYTES (0: no round chained) and
 * FERRY_STAGING_CHAIN_LANES. */
static int knobs_read(struct staging_pool *p)
{
    uint64_t spin_us = IDLE_SPIN_US_DEFAULT, group = GROUP_DEFAULT, first = GROUP_FIRST_DEFAULT;
    uint64_t nmark = MARK_STREAMS_DEFAULT, retire_us = ISSUER_RETIRE_US_DEFAULT, inline_first = INLINE_FIRST_DEFAULT;
    uint64_t scatter_us = SCATTER_RETIRE_US_DEFAULT, inline_last = INLINE_LAST_DEFAULT;
    uint64_t retire_groups = ISSUER_RETIRE_GROUPS_DEFAULT;
    uint64_t read_group = READ_GROUP_BYTES_DEFAULT, read_first = READ_GROUP_FIRST_BYTES_DEFAULT;
    uint64_t chain_bytes = CHAIN_BYTES_DEFAULT, chain_lanes = CHAIN_LANES_DEFAULT;
    char spin_wanted[48], group_wanted[64], first_wanted[80], mark_wanted[80], retire_wanted[48];
    char groups_wanted[80];
    snprintf(spin_wanted, sizeof spin_wanted, "microseconds, 0-%u", IDLE_SPIN_US_MAX);
    snprintf(group_wanted, sizeof group_wanted, "frames a device copy group takes, 1-%u", GROUP_MAX);
    snprintf(first_wanted, sizeof first_wanted, "frames a round's first device copy group takes, auto or 1-%u",
             GROUP_MAX);
    snprintf(mark_wanted, sizeof mark_wanted, "streams rounds of device copies take in turn, 0-%u",
             MARK_STREAMS_MAX);
    snprintf(retire_wanted, sizeof retire_wanted, "microseconds, 0-%u", ISSUER_RETIRE_US_MAX);
    snprintf(groups_wanted, sizeof groups_wanted, "groups of gathers the issuing thread retires, 1-%u",
             ISSUER_RETIRE_GROUPS_MAX);
    int rc = config_env_number("FERRY_STAGING_SPIN_US", false, 0, IDLE_SPIN_US_MAX, spin_wanted, &spin_us);
    if (rc >= 0)
        rc = config_env_number("FERRY_STAGING_ISSUER_RETIRE_US", false, 0, ISSUER_RETIRE_US_MAX, retire_wanted,
                               &retire_us);
    if (rc >= 0)
        rc = config_env_number("FERRY_STAGING_ISSUER_RETIRE_GROUPS", false, 1, ISSUER_RETIRE_GROUPS_MAX,
                               groups_wanted, &retire_groups);
    if (rc >= 0)
        rc = config_env_number("FERRY_STAGING_SCATTER_RETIRE_US", false, 0, ISSUER_RETIRE_US_MAX, retire_wanted,
                               &scatter_us);
    if (rc >= 0)
        rc = config_env_number("FERRY_STAGING_GROUP", false, 1, GROUP_MAX, group_wanted, &group);
    if (rc >= 0)
        rc = config_env_number("FERRY_STAGING_GROUP_FIRST", true, 1, GROUP_MAX, first_wanted, &first);
    if (rc >= 0)
        rc = config_env_number("FERRY_STAGING_MARK_STREAMS", false, 0, MARK_STREAMS_MAX, mark_wanted, &nmark);
    if (rc >= 0)
        rc = config_env_number("FERRY_STAGING_INLINE_FIRST", false, 0, 1, "0 or 1", &inline_first);
    if (rc >= 0)
        rc = config_env_number("FERRY_STAGING_INLINE_LAST", false, 0, 1, "0 or 1", &inline_last);
    if (rc >= 0)
        rc = config_env_number("FERRY_STAGING_READ_GROUP_BYTES", false, 0, READ_GROUP_BYTES_MAX,
                               "bytes a group of scatters takes at most, 0 (as gathers) to 67108864", &read_group);
    if (rc >= 0)
        rc = config_env_number("FERRY_STAGING_READ_GROUP_FIRST_BYTES", false, 0, READ_GROUP_BYTES_MAX,
                               "bytes a round's first group of scatters takes at most, 0 (as the others) to 67108864",
                               &read_first);
    if (rc >= 0)
        rc = config_env_number("FERRY_STAGING_CHAIN_BYTES", false, 0, CHAIN_BYTES_MAX,
                               "bytes of gathers a round chains from, 0 (never) to 1073741824", &chain_bytes);
    if (rc >= 0)
        rc = config_env_number("FERRY_STAGING_CHAIN_LANES", false, 1, MARK_STREAMS_MAX,
                               "streams a chained round's groups take in turn, 1-4", &chain_lanes);
    if (rc < 0)
        return rc;
    p->read_group_bytes = read_group;
    p->read_group_first = read_first;
    p->inline_first = inline_first != 0;
    p->inline_last = inline_last != 0;
    p->scatter_retire_ns = scatter_us * 1000u;
    p->idle_spin_ns = spin_us * 1000u;
    p->issuer_retire_ns = retire_us * 1000u;
    p->issuer_retire_groups = (unsigned)retire_groups;
    p->group_frames = (unsigned)group;
    p->group_first = (unsigned)first;
    p->nmark = p->ops->stream_mark ? (unsigned)nmark : 0;
    /* chains are for pools without mark streams (with them every round is
     * one already) on a device that marks */
    p->chain_bytes = p->ops->stream_mark && !p->nmark ? chain_bytes : 0;
    p->chain_lanes = (unsigned)chain_lanes;
    return 0;
}

void staging_pool_shape(size_t chunk_size, unsigned chunks, size_t frame_max, size_t *out_size, unsigned *out_n)
{
    size_t per = frame_max && frame_max < chunk_size ? chunk_size / frame_max : 1;
    if (per > 1 && (uint64_t)chunks * per > STAGING_POOL_CHUNKS_MAX)
        per = chunks >= STAGING_POOL_CHUNKS_MAX ? 1 : STAGING_POOL_CHUNKS_MAX / chunks;
    *out_size = chunk_size / per;
    *out_n = chunks * (unsigned)per;
}

size_t staging_pool_chunk_size(const struct staging_pool *p)
{
    return p->chunk_size;
}

bool staging_pool_aggregates(const struct staging_pool *p)
{
    return p->agg.below > 0 && p->agg.buffers > 0; /* WRITE: what the engine's spread asks */
}

bool staging_pool_worker_asleep(struct staging_pool *p)
{
    pthread_mutex_lock(&p->lock);
    bool asleep = p->worker_asleep;
    pthread_mutex_unlock(&p->lock);
    return asleep;
}

/* A pool with lost chunks (copies of an abandoned stream may still write
 * them or read them) keeps its pinned memory and device buffers: the
 * process's end reclaims them, no late copy lands in memory reused since. */
static void pool_free(struct staging_pool *p)
{
    bool keep = p->lost > 0;
    if (keep)
        LOG_ERROR("staging: %s:%d: %u chunks lost to a hung device; the pool's %zu bytes of pinned memory and its "
                  "device buffers are left to the process's end", p->ops->kind, p->dev, p->lost,
                  p->stride * p->nchunks);
    for (unsigned i = 0; p->chunks && i < p->nchunks; i++) {
        if (p->chunks[i].stream)
            p->ops->stream_destroy(p->chunks[i].stream);
        if (p->chunks[i].devbuf && !keep)
            p->ops->mem_free(p->dev, p->chunks[i].devbuf);
    }
    for (unsigned i = 0; i < MARK_STREAMS_MAX; i++)
        if (p->mstreams[i])
            p->ops->stream_destroy(p->mstreams[i]);
    if (p->marks && !keep)
        p->ops->host_free((void *)p->marks);
    if (p->base && !keep)
        p->ops->host_free(p->base);
    free(p->chunks);
    free(p->taken);
    free(p->group);
    free(p->copies);
    free(p->retired);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    free(p);
}

int staging_pool_create(const struct ferry_device_ops *ops, int dev, size_t chunk_size, unsigned nchunks,
                        staging_send_fn send, void *send_ctx, struct staging_pool **out, void **base,
                        size_t *len)
{
    if (chunk_size == 0 || nchunks == 0)
        return ferry_fail(FERRY_EINVAL, "staging pool: %u chunks of %zu bytes", nchunks, chunk_size);
    struct staging_pool *p = calloc(1, sizeof *p);
    if (!p)
        return ferry_fail(FERRY_ENOMEM, "staging pool");
    p->ops = ops;
    p->dev = dev;
    p->chunk_size = chunk_size;
    p->nchunks = nchunks;
    p->send = send;
    p->send_ctx = send_ctx;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->align = ops->copy_alignment ? ops->copy_alignment() : 1;
    if (p->align == 0)
        p->align = 1;
    p->stride = chunk_size + (p->align > 1 ? XFER_MAX_PIECES * p->align : 0);
    p->chunks = calloc(nchunks, sizeof *p->chunks);
    p->taken = calloc(nchunks, sizeof *p->taken);
    p->group = calloc(nchunks, sizeof *p->group);
    p->retired = calloc(nchunks, sizeof *p->retired);
    p->copies = calloc((size_t)GROUP_MAX * XFER_MAX_PIECES, sizeof *p->copies);
    int rc = p->chunks && p->taken && p->group && p->retired && p->copies ? aggregate_policy_read(ops, nchunks, &p->agg) : ferry_fail(FERRY_ENOMEM, "staging chunks");
    if (!rc)
        rc = knobs_read(p);
    if (!rc)
        rc = ops->host_alloc(p->stride * nchunks, (void **)&p->base);
    unsigned nstreams = p->chain_bytes ? p->chain_lanes : p->nmark;
    if (!rc && nstreams) {
        void *marks = NULL;
        rc = ops->host_alloc((size_t)nchunks * MARK_STRIDE * sizeof *p->marks, &marks);
        if (!rc)
            memset(marks, 0, (size_t)nchunks * MARK_STRIDE * sizeof *p->marks);
        p->marks = marks;
    }
    for (unsigned i = 0; !rc && i < nstreams; i++)
        rc = ops->stream_create(dev, &p->mstreams[i]);
    for (unsigned i = 0; !rc && i < nchunks; i++) {
        struct chunk *c = &p->chunks[i];
        c->pool = p;
        c->index = i;
        c->host = p->base + (size_t)i * p->stride;
        rc = ops->stream_create(dev, &c->stream);
        if (!rc && i < p->agg.buffers && aggregate_any(&p->agg) && ops->mem_alloc(dev, p->stride, (void **)&c->devbuf)) {
            LOG_WARN("staging: %s:%d: device buffer %u for aggregation: %s; %u chunks aggregate", ops->kind, dev, i,
                     ferry_last_error(), i);
            p->agg.buffers = i;
            c->devbuf = NULL;
        }
        c->next = p->free_list;
        p->free_list = c;
    }
    if (!rc && pthread_create(&p->worker, NULL, staging_worker_main, p))
        rc = ferry_fail(FERRY_EIO, "staging: cannot start worker");
    if (rc) {
        char why[256];
        snprintf(why, sizeof why, "%s", ferry_last_error());
        pool_free(p);
        return ferry_fail(rc, "staging pool for %s:%d (%u x %zu bytes): %s", ops->kind, dev, nchunks, chunk_size,
                          why);
    }
    LOG_INFO("staging pool for %s:%d: %u chunks of %zu bytes; blocks under %zu bytes gathered, under %zu "
             "scattered on the device (%u device buffers)", ops->kind, dev, nchunks, chunk_size, p->agg.below,
             p->agg.below_read, p->agg.buffers);
    *base = p->base;
    *len = p->stride * nchunks;
    *out = p;
    return 0;
}

void staging_pool_destroy(struct staging_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    struct xfer_frame *waiting = p->waiting_head;
    p->waiting_head = p->waiting_tail = NULL;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    for (struct xfer_frame *f = waiting, *next; f; f = next) {
        next = f->next;
        f->complete(f, FERRY_ECANCELED, 0, "staging: engine is shutting down");
    }
    pthread_join(p->worker, NULL);
    /* chunks still on the wire were ended by their transports, which the
     * engine destroys before its pools */
    pool_free(p);
}

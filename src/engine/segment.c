/* SPDX-License-Identifier: Apache-2.0 */
/*
 * segment.c — the engine's segments: a peer's descriptor fetched through the
 * metadata store, opened on every transport both sides speak, refreshed when
 * the peer restarts (stale handles), closed.  Segments are guarded by
 * seg_lock: submits read, open/close/refresh write.
 */
#include <cjson/cJSON.h>
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

static void stale_prune(ferry_engine *e);

void engine_segment_free(ferry_engine *e, struct segment *s)
{
    for (size_t i = 0; i < e->ntransports; i++)
        if (s->peer[i])
            e->tops[i]->peer_close(e->tstate[i], s->peer[i]);
    descriptor_free(&s->desc);
    free(s->published);
    free(s);
}

/* The order in which a descriptor (already decoded and validated into d,
 * which keeps its buffers sorted by address) lists its buffers: the peer's
 * registration order.  Returns d's indices in that order, malloc'd, or NULL
 * (no buffers, out of memory, or a list that does not match d: address
 * order then). */
static size_t *published_order(const char *json, size_t len, const struct ferry_descriptor *d)
{
    size_t *order = d->nbuffers > 1 ? malloc(d->nbuffers * sizeof *order) : NULL;
    cJSON *root = order ? cJSON_ParseWithLengthOpts(json, len, NULL, 0) : NULL;
    const cJSON *list = root ? cJSON_GetObjectItemCaseSensitive(root, "buffers") : NULL, *b;
    size_t n = 0;
    cJSON_ArrayForEach(b, list)
    {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(b, "addr");
        long i = n < d->nbuffers && cJSON_IsString(a)
                     ? descriptor_find_buffer(d, strtoull(a->valuestring, NULL, 16), 1) : -1;
        if (i < 0)
            break;
        order[n++] = (size_t)i;
    }
    cJSON_Delete(root);
    if (n != d->nbuffers) {
        free(order);
        return NULL;
    }
    return order;
}


/* ------------------------------------------------------------ segments */

void engine_submit_frame(ferry_engine *e, struct xfer_frame *f, const char *gone)
{
    int t = ROUTE_TRANSPORT(f->route);
    pthread_rwlock_rdlock(&e->seg_lock);
    struct segment *s = engine_segment(e, f->segment);
    void *peer = s ? s->peer[t] : NULL;
    if (peer)
        e->tops[t]->submit(e->tstate[t], peer, f);
    pthread_rwlock_unlock(&e->seg_lock);
    if (!peer)
        f->complete(f, FERRY_ENOSEG, 0, gone);
}

struct segment *engine_segment(ferry_engine *e, uint64_t handle)
{
    for (size_t i = 0; i < e->nsegs; i++)
        if (e->segs[i]->handle == handle)
            return e->segs[i];
    return NULL;
}

int engine_entry_fail(const ferry_engine *e, const char *name, int rc)
{
    char where[400] = "", head[160];
    if (e->meta->where)
        e->meta->where(e->meta_state, name, where, sizeof where);
    const char *detail = ferry_last_error();
    snprintf(head, sizeof head, "segment %s: ", name);
    if (strncmp(detail, head, strlen(head)) == 0) /* said by the backend: once is enough */
        detail += strlen(head);
    if (!*where)
        return ferry_fail(rc, "segment %s: %s", name, detail);
    return ferry_fail(rc, "segment %s in %s: %s", name, where, detail);
}

/* Fetches and decodes a descriptor, and opens a transport peer for each
 * transport both sides speak. */
static int fetch_segment(ferry_engine *e, const char *name, struct segment **out)
{
    char *json = NULL;
    size_t len = 0;
    char host[128];
    int port;
    /* a listener's name: say what is wrong with it ("::1:8080" is ambiguous) */
    if ((e->meta->caps & META_NAMED_BY_LISTENER) && net_split_hostport(name, host, sizeof host, &port) != 0)
        return ferry_fail(FERRY_ENOSEG, "segment name: %s", ferry_last_error());
    int rc = e->meta->lookup(e->meta_state, name, &json, &len);
    if (rc)
        return rc == FERRY_EPROTO ? engine_entry_fail(e, name, rc) : rc; /* an entry that is no descriptor */
    struct segment *s = calloc(1, sizeof *s);
    if (!s) {
        free(json);
        return ferry_fail(FERRY_ENOMEM, "segment");
    }
    snprintf(s->name, sizeof s->name, "%s", name);
    rc = descriptor_decode(json, len, &s->desc);
    if (!rc)
        s->published = published_order(json, len, &s->desc);
    free(json);
    if (rc) {
        rc = engine_entry_fail(e, name, rc);
        engine_segment_free(e, s);
        return rc;
    }
    if (!(e->meta->caps & META_NAMED_BY_LISTENER) && strcmp(s->desc.name, name) != 0) {
        /* a store entry under one name that describes another engine */
        ferry_fail(FERRY_EPROTO, "the stored descriptor names segment %s", s->desc.name);
        rc = engine_entry_fail(e, name, FERRY_EPROTO);
        engine_segment_free(e, s);
        return rc;
    }
    size_t usable = 0;
    for (size_t i = 0; i < e->ntransports; i++) {
        if (!descriptor_transport(&s->desc, e->tops[i]->name))
            continue;
        rc = e->tops[i]->peer_open(e->tstate[i], &s->desc, &s->peer[i]);
        if (rc == FERRY_ENOTSUP) { /* e.g. shm to another host: the other transports serve it */
            LOG_INFO("segment %s: %s not used: %s", name, e->tops[i]->name, ferry_last_error());
            s->peer[i] = NULL;
            continue;
        }
        if (rc) {
            /* the transport names the segment as its descriptor does, which
             * a handshake peer chose: say which segment was opened */
            if (strcmp(s->desc.name, name) != 0)
                rc = ferry_fail(rc, "segment %s: %s", name, ferry_last_error());
            engine_segment_free(e, s);
            return rc;
        }
        usable++;
    }
    if (!usable) {
        engine_segment_free(e, s);
        return ferry_fail(FERRY_ENOTSUP, "segment %s shares no protocol with this engine (%s)", name,
                          e->cfg.protocols);
    }
    *out = s;
    return 0;
}

int ferry_open_segment(ferry_engine *e, const char *name, ferry_segment_t *out)
{
    if (!e || !name || !out)
        return ferry_fail(FERRY_EINVAL, "open_segment: NULL argument");
    if (strlen(name) >= sizeof ((struct segment *)0)->name)
        return ferry_fail(FERRY_EINVAL, "segment name is too long");
    pthread_rwlock_rdlock(&e->seg_lock);
    for (size_t i = 0; i < e->nsegs; i++) {
        if (strcmp(e->segs[i]->name, name) == 0) {
            *out = e->segs[i]->handle;
            pthread_rwlock_unlock(&e->seg_lock);
            return 0;
        }
    }
    pthread_rwlock_unlock(&e->seg_lock);
    struct segment *s;
    int rc = fetch_segment(e, name, &s);
    if (rc)
        return rc;
    pthread_rwlock_wrlock(&e->seg_lock);
    for (size_t i = 0; i < e->nsegs; i++) { /* another thread opened it meanwhile */
        if (strcmp(e->segs[i]->name, name) == 0) {
            *out = e->segs[i]->handle;
            pthread_rwlock_unlock(&e->seg_lock);
            engine_segment_free(e, s);
            return 0;
        }
    }
    if (e->nsegs == e->segcap) {
        size_t cap = e->segcap ? e->segcap * 2 : 8;
        struct segment **n = realloc(e->segs, cap * sizeof *n);
        if (!n) {
            pthread_rwlock_unlock(&e->seg_lock);
            engine_segment_free(e, s);
            return ferry_fail(FERRY_ENOMEM, "segment table");
        }
        e->segs = n;
        e->segcap = cap;
    }
    s->handle = ++e->next_handle;
    e->segs[e->nsegs++] = s;
    *out = s->handle;
    pthread_rwlock_unlock(&e->seg_lock);
    LOG_INFO("opened segment %s (engine id %016llx, %zu buffers)", name, (unsigned long long)s->desc.engine_id,
             s->desc.nbuffers);
    return 0;
}

int ferry_close_segment(ferry_engine *e, ferry_segment_t handle)
{
    if (!e)
        return ferry_fail(FERRY_EINVAL, "close_segment: engine is NULL");
    struct segment *s = NULL;
    pthread_rwlock_wrlock(&e->seg_lock);
    for (size_t i = 0; i < e->nsegs; i++) {
        if (e->segs[i]->handle == handle) {
            s = e->segs[i];
            e->segs[i] = e->segs[--e->nsegs];
            break;
        }
    }
    if (s)
        stale_prune(e);
    pthread_rwlock_unlock(&e->seg_lock);
    if (!s)
        return ferry_fail(FERRY_ENOSEG, "no open segment has handle %llu", (unsigned long long)handle);
    engine_segment_free(e, s);
    return 0;
}

void engine_mark_stale(ferry_engine *e, uint64_t handle)
{
    pthread_mutex_lock(&e->stale_lock);
    size_t i = 0;
    while (i < e->nstale && e->stale[i] != handle)
        i++;
    if (i == e->nstale && e->nstale == e->stale_cap) {
        size_t cap = e->stale_cap ? e->stale_cap * 2 : 32;
        uint64_t *grown = realloc(e->stale, cap * sizeof *grown);
        if (grown) {
            e->stale = grown;
            e->stale_cap = cap;
        } else { /* its next failed transfer marks it again */
            LOG_WARN("segment handle %llu not marked for a refresh: out of memory", (unsigned long long)handle);
        }
    }
    if (i == e->nstale && e->nstale < e->stale_cap)
        e->stale[e->nstale++] = handle;
    pthread_mutex_unlock(&e->stale_lock);
}

/* Drops the stale marks of handles that name no open segment (closed ones,
 * which a late frame may even have marked after the close).  Caller holds
 * seg_lock. */
static void stale_prune(ferry_engine *e)
{
    pthread_mutex_lock(&e->stale_lock);
    size_t kept = 0;
    for (size_t i = 0; i < e->nstale; i++)
        if (engine_segment(e, e->stale[i]))
            e->stale[kept++] = e->stale[i];
    e->nstale = kept;
    pthread_mutex_unlock(&e->stale_lock);
}

int engine_take_stale(ferry_engine *e, uint64_t handle)
{
    int found = 0;
    pthread_mutex_lock(&e->stale_lock);
    for (size_t i = 0; i < e->nstale; i++) {
        if (e->stale[i] == handle) {
            e->stale[i] = e->stale[--e->nstale];
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&e->stale_lock);
    return found;
}

/* A refresh of a peer that did not restart (it registered more memory) must
 * not cancel requests in flight on its connections: a transport whose
 * endpoint is unchanged and whose reach does not depend on the buffer list
 * (no can_reach) keeps its old peer.  Caller holds seg_lock for writing. */
static void keep_live_peers(ferry_engine *e, struct segment *old, struct segment *fresh)
{
    if (old->desc.engine_id != fresh->desc.engine_id)
        return;
    for (size_t i = 0; i < e->ntransports; i++) {
        const char *a = descriptor_transport(&old->desc, e->tops[i]->name);
        const char *b = descriptor_transport(&fresh->desc, e->tops[i]->name);
        if (e->tops[i]->can_reach || !old->peer[i] || !fresh->peer[i] || !a || !b || strcmp(a, b) != 0)
            continue;
        void *keep = old->peer[i];
        old->peer[i] = fresh->peer[i]; /* freed with the old contents below */
        fresh->peer[i] = keep;
    }
}

int engine_refresh_segment(ferry_engine *e, uint64_t handle)
{
    char name[128];
    pthread_rwlock_rdlock(&e->seg_lock);
    struct segment *old = engine_segment(e, handle);
    if (old)
        snprintf(name, sizeof name, "%s", old->name);
    pthread_rwlock_unlock(&e->seg_lock);
    if (!old)
        return ferry_fail(FERRY_ENOSEG, "no open segment has handle %llu", (unsigned long long)handle);
    struct segment *fresh;
    int rc = fetch_segment(e, name, &fresh);
    if (rc)
        return rc;
    pthread_rwlock_wrlock(&e->seg_lock);
    old = engine_segment(e, handle);
    if (old)
        keep_live_peers(e, old, fresh);
    if (old) { /* swap contents so the handle stays valid */
        struct segment tmp = *old;
        *old = *fresh;
        old->handle = handle;
        *fresh = tmp;
    }
    pthread_rwlock_unlock(&e->seg_lock);
    if (old)
        LOG_INFO("segment %s refreshed (engine id %016llx)", name, (unsigned long long)old->desc.engine_id);
    engine_segment_free(e, fresh);
    return old ? 0 : ferry_fail(FERRY_ENOSEG, "segment %s was closed during refresh", name);
}

/* This engine's own remote-accessible buffers, as its descriptor publishes
 * them now (a segment opened on oneself is not refreshed by registering). */
static void own_buffers(ferry_engine *e, struct ferry_buffer_info *out, size_t max, size_t *count)
{
    size_t n = 0;
    struct memreg_region *regions = engine_remote_regions(e, &n);
    for (size_t i = 0; i < n && i < max; i++) {
        out[i].addr = regions[i].addr;
        out[i].len = regions[i].len;
        snprintf(out[i].location, sizeof out[i].location, "%s", regions[i].location);
    }
    free(regions);
    *count = n;
}

int ferry_segment_buffers(ferry_engine *e, ferry_segment_t handle, struct ferry_buffer_info *out, size_t max,
                          size_t *count)
{
    if (!e || !count || (!out && max))
        return ferry_fail(FERRY_EINVAL, "segment_buffers: NULL argument");
    /* a peer that restarted lists its new buffers, not the old process's */
    if (engine_take_stale(e, handle) && engine_refresh_segment(e, handle) != 0)
        LOG_INFO("refresh of segment %llu failed: %s", (unsigned long long)handle, ferry_last_error());
    pthread_rwlock_rdlock(&e->seg_lock);
    struct segment *s = engine_segment(e, handle);
    if (s && s->desc.engine_id == e->engine_id) {
        own_buffers(e, out, max, count);
    } else if (s) {
        for (size_t i = 0; i < s->desc.nbuffers && i < max; i++) {
            const struct desc_buffer *b = &s->desc.buffers[s->published ? s->published[i] : i];
            out[i].addr = b->addr;
            out[i].len = b->len;
            snprintf(out[i].location, sizeof out[i].location, "%s", b->location);
        }
        *count = s->desc.nbuffers;
    }
    pthread_rwlock_unlock(&e->seg_lock);
    return s ? 0 : ferry_fail(FERRY_ENOSEG, "no open segment has handle %llu", (unsigned long long)handle);
}


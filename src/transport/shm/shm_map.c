/* SPDX-License-Identifier: Apache-2.0 */
/*
 * shm_map.c — a peer's device buffers opened in this process through their
 * IPC handles (CUDA IPC), and how long each opening lives.
 *
 * A mapping is opened at a buffer's first device copy and kept for the
 * next ones, per (peer, buffer, local device).  It must not outlive the
 * registration it was opened for: while an initiator keeps a CUDA IPC
 * mapping, the target's cuMemFree does not return the memory, and a copy
 * through it would land in memory the target no longer sees.  So each
 * mapping records the registration (the slot's seq) it maps and is counted:
 * a reference for the buffer's list, one per frame whose copies use it and
 * one per group that caches it.  When the peer's registry says the
 * registration is gone (a frame's check finds the slot changed, or the
 * timer sees the registry's unregister count move or the peer's process
 * exit: shm_peer_sweep), the mapping is retired: unlisted, so no new copy takes it, and closed by the
 * last put — at once, or when the copies in flight through it ended.  A
 * buffer registered again at the same address (allocators reuse addresses)
 * is followed with its new handle and opened anew, never through the old
 * mapping.
 *
 * Threads: frames of any worker or submitting thread; b->maps and
 * b->handle under the peer's lock; refs are atomic (a put from a thread
 * that holds no lock closes a retired mapping).  Owns the mappings.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "sanitizer.h"
#include "transport/shm/shm.h"
#if defined(FERRY_UNDER_ASAN)
#include <sanitizer/lsan_interface.h>
#endif

static void mapping_close(struct shm_mapping *m)
{
    if (m->ptr)
        m->ops->ipc_close(m->dev, m->ptr);
    free(m);
}

static void mapping_put(struct shm_mapping *m)
{
    if (atomic_fetch_sub(&m->refs, 1) != 1)
        return;
    struct shm_rbuf *b = m->buf;
    mapping_close(m);
    atomic_fetch_sub(&b->retired, 1); /* only a retired mapping reaches 0 */
}

/* Unlists b's mappings: no new copy takes them; each closes at its last
 * put.  The peer's lock held. */
static void retire_all(struct shm_peer *p, struct shm_rbuf *b)
{
    struct shm_mapping *m = b->maps;
    b->maps = NULL;
    while (m) {
        struct shm_mapping *next = m->next;
        if (m->ptr)
            atomic_fetch_sub(&p->mapped, 1);
        atomic_fetch_add(&b->retired, 1);
        mapping_put(m); /* the list's reference */
        m = next;
    }
}

/* The frame holds m until it is released (its copies ended).  Pieces of a
 * frame mostly share one mapping: at most one entry per piece. */
static void frame_hold(struct frame_run *fr, struct shm_mapping *m)
{
    if (fr->nmaps && fr->maps[fr->nmaps - 1] == m)
        return;
    for (uint32_t i = 0; i < fr->nmaps; i++)
        if (fr->maps[i] == m)
            return;
    atomic_fetch_add(&m->refs, 1);
    fr->maps[fr->nmaps++] = m;
}

void shm_frame_unmap(struct frame_run *fr)
{
    for (uint32_t i = 0; i < fr->nmaps; i++)
        mapping_put(fr->maps[i]);
    fr->nmaps = 0;
}

void shm_group_unmap(struct shm_group *g)
{
    if (g->map)
        mapping_put(g->map);
    g->map = NULL;
}

void shm_keep_to_process_end(const void *obj)
{
#if defined(FERRY_UNDER_ASAN)
    __lsan_ignore_object(obj);
#else
    (void)obj;
#endif
}

void shm_group_keep_maps(struct shm_group *g)
{
    unsigned kept = 0;
    if (g->map) {
        shm_keep_to_process_end(g->map);
        kept++;
    }
    g->map = NULL;
    for (size_t i = 0; i < g->n; i++) {
        for (uint32_t k = 0; k < g->runs[i].nmaps; k++)
            shm_keep_to_process_end(g->runs[i].maps[k]);
        kept += g->runs[i].nmaps;
        g->runs[i].nmaps = 0;
    }
    LOG_ERROR("shm: segment %.64s: %u mapping reference(s) kept open to the process's end: copies through them "
              "were abandoned on a hung device and may still run", g->p->name, kept);
}

/* The group caches m (its own reference: a cache hit takes a frame's
 * reference without the peer's lock, so m must not close meanwhile). */
static void group_cache(struct shm_group *g, struct shm_mapping *m)
{
    atomic_fetch_add(&m->refs, 1);
    shm_group_unmap(g);
    g->map = m;
}

/* b's mapping m for dev (listed; NULL: make one), opened if it is not.
 * NULL: no memory.  The peer's lock held. */
static struct shm_mapping *mapping_open(struct shm_peer *p, struct shm_rbuf *b, int dev, struct shm_mapping *m)
{
    if (!m && (m = calloc(1, sizeof *m)) != NULL) {
        m->buf = b;
        m->ops = b->ops;
        m->dev = dev;
        m->seq = atomic_load(&b->seq);
        atomic_init(&m->refs, 1);
        m->next = b->maps;
        b->maps = m;
    }
    /* opened at first use, and again by each frame after a failure: what
     * failed (this device short of memory or address space) may pass, and
     * nothing else would clear it until the segment closed */
    if (m && !m->ptr) {
        m->err = b->ops->ipc_open(dev, b->handle, b->handle_len, &m->ptr, &m->room);
        if (m->err) {
            m->ptr = NULL;
            snprintf(m->msg, sizeof m->msg, "shm: segment %.64s: opening buffer 0x%llx: %.60s", p->name,
                     (unsigned long long)b->addr, ferry_last_error());
        } else if (b->len > m->room) {
            /* its registry claims more than its handle exports: no copy
             * may run past what was opened (into this process's memory) */
            b->ops->ipc_close(dev, m->ptr);
            m->ptr = NULL;
            m->err = FERRY_ERANGE;
            snprintf(m->msg, sizeof m->msg, "shm: segment %.64s: buffer 0x%llx+%llu runs past the %zu bytes its IPC "
                     "handle opens", p->name, (unsigned long long)b->addr, (unsigned long long)b->len, m->room);
        }
        if (m->ptr)
            atomic_fetch_add(&p->mapped, 1);
    }
    return m;
}

int shm_remote_device_ptr(struct frame_run *fr, struct shm_rbuf *b, int dev, uint64_t remote, char **out)
{
    struct shm_peer *p = fr->p;
    struct shm_group *g = fr->g;
    if (p->self) { /* two engines of one process: the address is ours too */
        *out = (char *)(uintptr_t)remote;
        return 0;
    }
    struct shm_mapping *c = g->map;
    if (c && c->buf == b && c->dev == dev && c->seq == atomic_load_explicit(&b->seq, memory_order_relaxed)) {
        frame_hold(fr, c); /* the group's reference keeps c open */
        *out = (char *)c->ptr + (remote - b->addr);
        return 0;
    }
    if (!b->handle_len || !b->ops)
        return shm_fail(fr, FERRY_ENOTSUP, "shm: segment %.64s: device buffer 0x%llx has no IPC handle; route it "
                    "through another transport", p->name, (unsigned long long)b->addr);
    pthread_mutex_lock(&p->lock);
    int rc = 0;
    struct shm_mapping *m = b->maps;
    while (m && m->dev != dev)
        m = m->next;
    if (atomic_load(&p->slots[b->slot].seq) != atomic_load(&b->seq)) {
        /* revoked since the frame's check (the peer's unregister waits for
         * this frame): a mapping opened now would outlive the sweep */
        rc = shm_fail(fr, FERRY_ESTALE, "shm: segment %.64s unregistered 0x%llx+%llu", p->name,
                      (unsigned long long)b->addr, (unsigned long long)b->len);
    } else if (!m && atomic_load(&b->retired)) {
        /* the previous registration's mapping is still in use (a copy
         * stalled past its announcement): a driver that shares openings of
         * one allocation must not hand that one out for the new handle */
        rc = shm_fail(fr, FERRY_EBUSY, "shm: segment %.64s: 0x%llx+%llu was registered again while a copy into "
                      "its previous allocation is still running", p->name, (unsigned long long)b->addr,
                      (unsigned long long)b->len);
    } else if ((!m || !m->ptr) && shm_peer_gone(p)) {
        /* the timer closed (or will close) its mappings: open no new one */
        rc = shm_fail(fr, FERRY_ECONN, "shm: segment %.64s: process %d is gone", p->name, (int)p->pid);
    } else if (!(m = mapping_open(p, b, dev, m))) {
        rc = shm_fail(fr, FERRY_ENOMEM, "shm: mapping");
    } else if (!m->ptr) {
        rc = m->err == FERRY_ERANGE ? shm_fail(fr, m->err, "%s", m->msg)
             /* an exiting process closes its fds before its pidfd says so */
             : shm_peer_gone_within(p, 200) ? shm_fail(fr, FERRY_ECONN, "shm: segment %.64s: process %d is gone",
                                                       p->name, (int)p->pid)
                                            : shm_fail(fr, m->err, "%s", m->msg);
    }
    if (!rc) {
        frame_hold(fr, m);
        group_cache(g, m);
        *out = (char *)m->ptr + (remote - b->addr);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

bool shm_rbuf_follow_device(struct shm_peer *p, struct shm_rbuf *b)
{
    struct shm_rbuf now;
    char location[sizeof p->slots[0].location];
    uint8_t handle[FERRY_IPC_HANDLE_MAX];
    int dev = -1;
    bool follow = false;
    pthread_mutex_lock(&p->lock);
    uint64_t was = atomic_load(&b->seq);
    if (shm_read_slot(p, b->slot, &now, location, handle) && now.device && now.addr == b->addr &&
        now.len >= b->len && now.handle_len == b->handle_len && b->ops &&
        ferry_device_of_location(location, &dev) == b->ops && dev == b->dev) {
        uint64_t seq = atomic_load_explicit(&now.seq, memory_order_relaxed);
        follow = true;
        if (seq != was) { /* else another thread followed it first */
            retire_all(p, b);
            if (b->handle_len)
                memcpy(b->handle, handle, b->handle_len);
            atomic_store(&b->seq, seq);
            LOG_DEBUG("shm: segment %.64s: device buffer 0x%llx+%llu registered again; following it", p->name,
                      (unsigned long long)b->addr, (unsigned long long)b->len);
        }
    } else if (atomic_load(&p->slots[b->slot].seq) != was) {
        retire_all(p, b);
    }
    pthread_mutex_unlock(&p->lock);
    return follow;
}

void shm_peer_sweep(struct shm_peer *p, bool all)
{
    unsigned retired = 0;
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < p->nbufs; i++) {
        struct shm_rbuf *b = &p->bufs[i];
        if (b->maps && (all || atomic_load(&p->slots[b->slot].seq) != atomic_load(&b->seq))) {
            retire_all(p, b);
            retired++;
        }
    }
    pthread_mutex_unlock(&p->lock);
    if (retired)
        LOG_DEBUG("shm: segment %.64s: closing the mappings of %u %s buffer(s)", p->name, retired,
                  all ? "of an exited process's" : "unregistered");
}

void shm_peer_unmap(struct shm_peer *p)
{
    for (size_t i = 0; i < p->nbufs; i++) {
        struct shm_rbuf *b = &p->bufs[i];
        retire_all(p, b);
        if (atomic_load(&b->retired))
            LOG_ERROR("shm: segment %.64s: %u mapping(s) of 0x%llx still in use at close", p->name,
                      atomic_load(&b->retired), (unsigned long long)b->addr);
    }
}

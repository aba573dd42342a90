/* SPDX-License-Identifier: Apache-2.0 */
/*
 * staging.c — the device<->host pipeline of a staging pool (see staging.h
 * for the idea; a pool's knobs, creation and teardown: staging_pool.c).
 *
 * The chunks that became ready together are issued in groups: one
 * copy_async for the copies of up to FERRY_STAGING_GROUP chunks going the
 * same way (2; 16: a 1,024-block batch in one launch of the CUDA kernel of
 * 1,024 copies), retired together (a launch and a wait per group, not per
 * chunk: what small blocks pay most).  A round's first group takes at most
 * FERRY_STAGING_GROUP_FIRST frames (auto: up to FERRY_STAGING_GROUP within
 * half a chunk's bytes, so one frame of 512 KiB or more), so the first
 * chunk of a large WRITE reaches the wire while the rest gather.  Scatters
 * are grouped by bytes (FERRY_STAGING_READ_GROUP_BYTES, 4 MiB), on CUDA
 * one copy-engine call for blocks of 64 KiB and up.
 *
 * Where the device has stream_mark (CUDA, sim) and FERRY_STAGING_MARK_STREAMS
 * is not 0 (the default is 0: on 2 x H200 the gather pipeline alone moved
 * 0.69 / 0.80 of a large D2H at 16 KiB / 1 MiB with 4 batches in flight on
 * one mark stream, against 0.94 / 0.95 on the chunks' streams, while a
 * one-thread staged WRITE of 1,024 x 16 KiB gained 17 %), a round's gathers
 * go one after another on one of those pool streams (the rounds take them
 * in turn), each group followed by a device-written mark:
 * the first group finishes first (not all together, sharing the link) and
 * goes to the wire while the rest gather; the worker retires it by reading
 * its mark, with no driver call (a query takes the locks the issuers'
 * launches need).  Scatters (READ payload that arrived, mostly one frame a
 * round) keep their chunks' own streams: on one mark stream the frames of
 * a batch that arrive together were copied one after another (one H200,
 * 16 KiB x 1,024 READ: 6.26 GB/s against 7.05).  Without marks (0, or a
 * device without them) a group goes on its leader's own stream and is
 * retired by querying it.  A copy that fails on a mark stream leaves every
 * later mark there unwritten: the worker takes all of that stream's groups
 * off the FIFO, renews it and issues each of their chunks again alone.
 *
 * Threads: whoever brings work issues it (the submitting thread its gathers,
 * the transport thread that received a READ its scatter), so the copy starts
 * without waiting for a sleeping worker to wake; one thread issues at a time
 * (pool->issuing), and the one worker per pool waits for the copies in
 * flight and retires them (it wakes while the device copies), but where
 * FERRY_STAGING_ISSUER_RETIRE_US is set and the worker slept, the submitting
 * thread retires the first group of what it issued itself, and with
 * FERRY_STAGING_SCATTER_RETIRE_US the transport thread that issued a READ's
 * scatter retires the scatters at the head of the FIFO (retire_first); one
 * thread retires at a time (pool->retiring).  With
 * FERRY_STAGING_INLINE_FIRST the thread that retires a round's first gather
 * lets the transport write that frame on it (tcp: to an idle connection,
 * what the socket takes at once), saving a sender's wake-up on the path of
 * the batch's first bytes, and with FERRY_STAGING_INLINE_LAST the worker
 * does so for a round's last gather when nothing else is in flight or
 * waiting; every other staged WRITE is handed over, so the retiring thread
 * never copies a whole batch into sockets.  Transport
 * threads end wire frames and return chunks.  All lists, the in-flight FIFO
 * included, are under pool->lock.  A chunk carries everything a frame in
 * flight needs (its rewritten wire frame and pieces), so the hot path
 * allocates nothing.
 */
#include "staging/staging.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>

#include "err.h"
#include "log.h"
#include "net.h"
#include "timespec.h"
#include "trace.h"
#include "staging/aggregate.h"
#include "staging/staging_internal.h"

static void end_frame(struct xfer_frame *f, int err, uint64_t refused, const char *msg)
{
    f->complete(f, err, refused, msg);
}

static void release_chunk(struct staging_pool *p, struct chunk *c)
{
    pthread_mutex_lock(&p->lock);
    c->state = CHUNK_FREE;
    c->orig = NULL;
    c->next = p->free_list;
    p->free_list = c;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

static void issue_ready(struct staging_pool *p);
static void retire_first(struct staging_pool *p, uint64_t budget_ns, enum chunk_state want);

/* Transport thread: a staged frame came back from the wire. */
static void wire_done(struct xfer_frame *w, int err, uint64_t refused, const char *msg)
{
    struct chunk *c = w->owner;
    struct staging_pool *p = c->pool;
    if (c->orig->opcode == XFER_WRITE || err) {
        struct xfer_frame *orig = c->orig;
        release_chunk(p, c);
        end_frame(orig, err, refused, msg);
        return;
    }
    /* READ payload is in the chunk: its scatter to the device is issued on
     * this thread (or by the thread issuing now), retired by the worker or,
     * with FERRY_STAGING_SCATTER_RETIRE_US while it sleeps, by this thread */
    c->wire_err = err;
    c->wire_refused = refused;
    snprintf(c->wire_msg, sizeof c->wire_msg, "%s", msg ? msg : "");
    pthread_mutex_lock(&p->lock);
    c->state = CHUNK_SCATTER;
    c->next = NULL;
    if (p->arrived_tail)
        p->arrived_tail->next = c;
    else
        p->arrived_head = c;
    p->arrived_tail = c;
    /* the worker sleeps: this thread will retire the scatter itself */
    bool claim = p->scatter_retire_ns && p->worker_asleep && !p->retiring;
    if (claim)
        p->retiring = true;
    issue_ready(p);
    if (claim)
        retire_first(p, p->scatter_retire_ns, CHUNK_SCATTER);
    pthread_mutex_unlock(&p->lock);
}

/* Binds a frame to a chunk: the wire frame's pieces point into the chunk.
 * Done by the issuer just before the chunk's copies go (issue_round), not
 * when it takes the frame: a 1,024-block batch is 16 frames, and binding
 * them all first held its first launch back.  No division where pieces
 * need no alignment (a 64-bit divide per piece is most of a bind). */
static void bind_chunk(struct chunk *c, struct xfer_frame *f)
{
    c->orig = f;
    c->wire = *f;
    c->wire.pieces = c->pieces;
    c->wire.complete = wire_done;
    c->wire.owner = c;
    c->wire.next = NULL;
    c->wire.handed_over = f->opcode == XFER_WRITE; /* the worker hands it on once gathered */
    size_t off = 0, align = c->pool->align;
    for (uint32_t i = 0; i < f->npieces; i++) {
        if (align > 1)
            off = (off + align - 1) / align * align;
        c->pieces[i] = f->pieces[i];
        c->pieces[i].local = c->host + off;
        off += f->pieces[i].len;
    }
}

/* Small blocks through the chunk's device buffer (aggregate.h). */
static int enqueue_aggregated(struct staging_pool *p, struct chunk *c, enum ferry_copy_dir dir, uint64_t skip)
{
    void *dev[XFER_MAX_PIECES];
    size_t off[XFER_MAX_PIECES], len[XFER_MAX_PIECES];
    for (uint32_t i = 0; i < c->orig->npieces; i++) {
        dev[i] = c->orig->pieces[i].local;
        off[i] = (size_t)((char *)c->pieces[i].local - c->host);
        len[i] = c->pieces[i].len;
    }
    return aggregate_enqueue(p->ops, c->stream, dir, c->host, c->devbuf, dev, off, len, c->orig->npieces, skip);
}

/* Stores the copies between a frame's device pieces and its chunk in out
 * (pieces with bit i of skip set left out); returns how many. */
static size_t chunk_copies(const struct chunk *c, enum ferry_copy_dir dir, uint64_t skip, struct ferry_copy *out)
{
    size_t n = 0;
    for (uint32_t i = 0; i < c->orig->npieces; i++) {
        if (skip >> i & 1)
            continue;
        void *dev = c->orig->pieces[i].local, *host = c->pieces[i].local;
        out[n++] = dir == FERRY_COPY_D2H ? (struct ferry_copy){host, dev, c->pieces[i].len}
                                         : (struct ferry_copy){dev, host, c->pieces[i].len};
    }
    return n;
}

/* A copy failed: the stream is now unusable (sticky error); make a new one. */
static void renew_stream(struct staging_pool *p, ferry_stream **s)
{
    /* copies queued before the failure must be done before the frame ends:
     * its request's memory may be unregistered and freed right after */
    (void)p->ops->stream_sync(*s);
    p->ops->stream_destroy(*s);
    *s = NULL;
    if (ferry_device_stream_take(p->ops, p->dev, s) != 0) /* an idle one: none made mid-transfer */
        LOG_ERROR("staging: cannot recreate a stream for %s:%d: %s", p->ops->kind, p->dev, ferry_last_error());
}

/* The copies of a group (n chunks, on its leader's stream, or a chunk
 * alone) failed for good: each frame fails with the device's message.  The
 * leader's stream is drained and renewed; where it hung and could not be
 * aborted (stream_abandoned) its copies may still run, so the chunks stay
 * out of use (CHUNK_LOST) instead of going back to the free list. */
static void fail_group(struct staging_pool *p, struct chunk **g, size_t n, int rc)
{
    char msg[200];
    const char *what = g[0]->state == CHUNK_GATHER ? "device-to-host copy" : "host-to-device copy";
    snprintf(msg, sizeof msg, "staging %s on %s:%d failed: %s", what, p->ops->kind, p->dev, ferry_last_error());
    bool lost = p->ops->stream_abandoned && p->ops->stream_abandoned(g[0]->stream);
    renew_stream(p, &g[0]->stream);
    for (size_t i = 0; i < n; i++) {
        struct xfer_frame *orig = g[i]->orig;
        if (lost) {
            pthread_mutex_lock(&p->lock);
            g[i]->state = CHUNK_LOST;
            g[i]->orig = NULL;
            p->lost++;
            pthread_mutex_unlock(&p->lock);
            LOG_ERROR("staging: %s:%d: chunk %u left out of use: a copy on its abandoned stream may still run",
                      p->ops->kind, p->dev, g[i]->index);
        } else {
            release_chunk(p, g[i]);
        }
        end_frame(orig, rc, 0, msg);
    }
}

/* Takes as many waiting frames as there are free chunks (each chunk's orig
 * set, not yet bound); expired ones end TIMEOUT.  Lock held. */
static size_t take_waiting(struct staging_pool *p, struct chunk **out, size_t max, struct xfer_frame **expired)
{
    size_t n = 0;
    uint64_t now = now_ns();
    while (p->waiting_head && (n < max)) {
        struct xfer_frame *f = p->waiting_head;
        if (now >= f->deadline_ns) {
            p->waiting_head = f->next;
            f->next = *expired;
            *expired = f;
            continue;
        }
        if (!p->free_list)
            break;
        p->waiting_head = f->next;
        struct chunk *c = p->free_list;
        p->free_list = c->next;
        c->orig = f;                    /* bound by the issuer (issue_round) */
        c->state = f->opcode == XFER_WRITE ? CHUNK_GATHER : CHUNK_WIRE;
        out[n++] = c;
    }
    if (!p->waiting_head)
        p->waiting_tail = NULL;
    return n;
}

static void fifo_push(struct chunk *c, struct chunk **head, struct chunk **tail)
{
    c->next = NULL;
    if (*tail)
        (*tail)->next = c;
    else
        *head = c;
    *tail = c;
}

/* Issues the copies of a group of chunks that go the same way (gathers of
 * WRITEs, or scatters of READs that arrived) and appends the group to the
 * in-flight FIFO, leader first.  The group's copies go to the device in one
 * copy_async on the leader's stream (one launch of a gather kernel where
 * the device has one, instead of one per chunk), and the group retires
 * together.  Chunks that aggregate on the device go alone on their own
 * stream (aggregate.h). */
static void group_failed(struct staging_pool *p, struct chunk **g, size_t n, int rc);

/* Lock not held; called by the issuer, or by the worker again for the
 * chunks of a group that failed one by one (n = 1: its copies on the
 * stack; a group of several comes only from the issuer, whose p->copies
 * they use).  mstream: the round's mark stream (the issuer's), or NULL:
 * the group goes on its leader's own stream, retired by querying it.  On
 * a mark stream a failure to enqueue is left to the worker (enqueue_err):
 * groups before it share the stream, and only the worker takes groups
 * off the FIFO. */
static void issue_group(struct staging_pool *p, struct chunk **g, size_t n, ferry_stream **mstream)
{
    enum ferry_copy_dir dir = g[0]->state == CHUNK_GATHER ? FERRY_COPY_D2H : FERRY_COPY_H2D;
    int rc = 0;
    bool marked = false;
    ferry_stream **carrier = &g[0]->stream, **on_mark = NULL;
    if (g[0]->devbuf && aggregate_wanted(&p->agg, dir == FERRY_COPY_H2D, g[0]->orig->npieces, g[0]->orig->bytes)) {
        rc = enqueue_aggregated(p, g[0], dir, dir == FERRY_COPY_H2D ? g[0]->wire_refused : 0);
    } else {
        struct ferry_copy alone[XFER_MAX_PIECES];
        struct ferry_copy *copies = n == 1 ? alone : p->copies;
        size_t ncopies = 0;
        if (mstream)
            carrier = on_mark = mstream;
        for (size_t i = 0; i < n; i++)
            ncopies += chunk_copies(g[i], dir, dir == FERRY_COPY_H2D ? g[i]->wire_refused : 0, copies + ncopies);
        if (ncopies) {
            rc = p->ops->copy_async(*carrier, dir, copies, ncopies);
            TRACE(TR_STAGE_ISSUE, ncopies);
        }
        /* even after a failed enqueue: what went before it on the stream
         * is retired by its own mark */
        if (on_mark && !rc) {
            uint32_t v = g[0]->mark_seq + 1;
            int mrc = p->ops->stream_mark(*carrier, &p->marks[(size_t)g[0]->index * MARK_STRIDE], v);
            if (!mrc) {
                g[0]->mark_seq = v;
                marked = true;
            } else if (mrc == FERRY_ENOTSUP && (p->nmark || p->chain_bytes)) { /* the worker queries the stream */
                LOG_WARN("staging: %s:%d: %s; copies go on their chunks' streams", p->ops->kind, p->dev,
                         ferry_last_error());
                p->nmark = 0;
                p->chain_bytes = 0;
            }
        }
    }
    g[0]->enqueue_err = on_mark ? rc : 0;
    if (rc && !on_mark) {
        group_failed(p, g, n, rc);
        return;
    }
    g[0]->carrier = carrier;
    g[0]->marked = marked;
    pthread_mutex_lock(&p->lock); /* the group's chunks side by side in the FIFO */
    for (size_t i = 0; i < n; i++) {
        g[i]->lead = g[0];
        fifo_push(g[i], &p->fl_head, &p->fl_tail);
    }
    pthread_cond_signal(&p->cond); /* the worker: something to retire */
    pthread_mutex_unlock(&p->lock);
}

/* How much one group may take. */
struct group_cap {
    unsigned frames;
    size_t copies;
    uint64_t bytes;
};

/* The cap of a group that starts with a chunk in state st, the round's
 * first group if first: group_frames frames (group_first for the first;
 * auto: group_frames within half a chunk's bytes), their x 64 copies and
 * their / 2 chunks' bytes (one chunk's for 1 or 2); scatters with
 * FERRY_STAGING_READ_GROUP_BYTES: that many bytes (the first group
 * FERRY_STAGING_READ_GROUP_FIRST_BYTES, where set). */
static struct group_cap group_cap(const struct staging_pool *p, enum chunk_state st, bool first)
{
    if (st == CHUNK_SCATTER && p->read_group_bytes)
        return (struct group_cap){GROUP_MAX, READ_GROUP_COPIES,
                                  first && p->read_group_first ? p->read_group_first : p->read_group_bytes};
    if (first && p->group_first == GROUP_FIRST_AUTO)
        return (struct group_cap){p->group_frames, (size_t)p->group_frames * XFER_MAX_PIECES, p->chunk_size / 2};
    unsigned frames = first && p->group_first < p->group_frames ? p->group_first : p->group_frames;
    return (struct group_cap){frames, (size_t)frames * XFER_MAX_PIECES,
                              (uint64_t)p->chunk_size * (frames > 2 ? frames / 2 : 1)};
}

/* Whether a round of n chunks is chained (FERRY_STAGING_CHAIN_BYTES): its
 * gathers hold that many bytes or more and nothing of the pool was in
 * flight on the device when it was taken (idle). */
static bool round_chains(const struct staging_pool *p, struct chunk **cs, size_t n, bool idle)
{
    if (!p->chain_bytes || !idle)
        return false;
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        if (cs[i]->state == CHUNK_GATHER)
            bytes += cs[i]->orig->bytes;
    return bytes >= p->chain_bytes;
}

/* The stream the next group of gathers of a round goes on: none (its
 * leader's own), the round's mark stream, or a chain's lanes in turn. */
static ferry_stream **gather_lane(ferry_stream **m, unsigned lanes, unsigned *k)
{
    return m ? &m[(*k)++ % lanes] : NULL;
}

/* Issues a round of chunks: READs that still have to cross the wire go to
 * their transport; the rest are cut into groups (same direction, within
 * group_cap; aggregating chunks alone).  idle: no copy of the pool was in
 * flight when the round was taken. */
static void issue_round(struct staging_pool *p, struct chunk **cs, size_t n, bool idle)
{
    struct chunk **g = p->group;
    ferry_stream **m = NULL; /* the round's mark stream (or a chain's first lane), for its gathers */
    unsigned lanes = 1, k = 0;
    if (p->nmark) {
        m = &p->mstreams[p->mark_next % p->nmark];
        p->mark_next++;
    } else if (round_chains(p, cs, n, idle)) {
        m = p->mstreams;
        lanes = p->chain_lanes;
    }
    size_t ng = 0, copies = 0;
    uint64_t bytes = 0;
    struct group_cap cap = {0, 0, 0};
    bool first = true, first_group = true;
    size_t last = n; /* the round's last gather (states are set when chunks are taken) */
    for (size_t i = 0; i < n; i++)
        if (cs[i]->state == CHUNK_GATHER)
            last = i;
    for (size_t i = 0; i < n; i++) {
        struct chunk *c = cs[i];
        if (c->state != CHUNK_SCATTER)  /* taken from the waiting frames: not bound yet */
            bind_chunk(c, c->orig);
        c->round_first = first && c->state == CHUNK_GATHER;
        first = first && !c->round_first;
        c->round_last = i == last;
        if (c->state == CHUNK_WIRE) {
            p->send(p->send_ctx, &c->wire);
            continue;
        }
        if (c->devbuf && aggregate_wanted(&p->agg, c->state == CHUNK_SCATTER, c->orig->npieces, c->orig->bytes)) {
            issue_group(p, &c, 1, NULL);
            continue;
        }
        if (ng && (c->state != g[0]->state || ng == cap.frames || copies + c->orig->npieces > cap.copies ||
                   bytes + c->orig->bytes > cap.bytes)) {
            issue_group(p, g, ng, g[0]->state == CHUNK_GATHER ? gather_lane(m, lanes, &k) : NULL);
            ng = copies = 0;
            bytes = 0;
            first_group = false;
        }
        if (!ng)
            cap = group_cap(p, c->state, first_group);
        g[ng++] = c;
        copies += c->orig->npieces;
        bytes += c->orig->bytes;
    }
    if (ng)
        issue_group(p, g, ng, g[0]->state == CHUNK_GATHER ? gather_lane(m, lanes, &k) : NULL);
}

/* A group's copies failed (to enqueue, or on the device).  A chunk alone
 * fails its frame.  Several: a bad address in one frame must not fail the
 * others, so once the leader's stream is drained and renewed, each chunk
 * is issued again on its own (copying a frame twice moves the same bytes to
 * the same places); where the device is broken as a whole, each then fails
 * alone.  A stream that timed out fails every frame of the group at once. */
static void group_failed(struct staging_pool *p, struct chunk **g, size_t n, int rc)
{
    /* a stream that hung (FERRY_ETIMEDOUT) says the device is stuck, not
     * that one frame's address was bad: no frame goes again */
    if (n == 1 || rc == FERRY_ETIMEDOUT) {
        fail_group(p, g, n, rc);
        return;
    }
    LOG_DEBUG("staging: %s:%d: a group of %zu frames failed (%s); each goes again alone", p->ops->kind, p->dev, n,
              ferry_last_error());
    renew_stream(p, &g[0]->stream);
    for (size_t i = 0; i < n; i++)
        issue_group(p, &g[i], 1, NULL);
}

/* The oldest group's copies are done: WRITE chunks go to the wire, READ
 * frames end.  alone: nothing was left to retire or issue when the group
 * was taken off the FIFO. */
static void retire_group(struct staging_pool *p, struct chunk **g, size_t n, bool alone)
{
    TRACE(TR_STAGE_RETIRED, n);
    for (size_t i = 0; i < n; i++) {
        struct chunk *c = g[i];
        if (c->state == CHUNK_GATHER) {
            c->state = CHUNK_WIRE;
            if ((c->round_first && p->inline_first) || (c->round_last && p->inline_last && alone)) {
                /* the round's first frame, or its last one with nothing
                 * else for this thread to do: the transport may write it on
                 * this thread (to an idle connection, as much as the socket
                 * takes at once), as it does a host submit's last frame,
                 * rather than wake a sender for it */
                c->wire.handed_over = false;
                c->wire.more_bytes = 0;
            }
            p->send(p->send_ctx, &c->wire);
            continue;
        }
        struct xfer_frame *orig = c->orig;
        uint64_t refused = c->wire_refused;
        char msg[160];
        snprintf(msg, sizeof msg, "%s", c->wire_msg);
        release_chunk(p, c);
        end_frame(orig, 0, refused, msg);
    }
}

/* Lock held: whether no copy is in flight and no work waits to be issued
 * (the retiring thread may spend a while on the frame it retires). */
static bool nothing_after(const struct staging_pool *p)
{
    return !p->fl_head && !p->waiting_head && !p->arrived_head && !p->issuing;
}

/* Lock held. */
static bool work_ready(struct staging_pool *p)
{
    return (p->waiting_head && p->free_list) || p->arrived_head || p->stopping;
}

/* Lock held.  If work is ready and no thread is issuing, this thread issues
 * it (the lock let go meanwhile), again while more arrives: waiting frames
 * that have a free chunk (expired ones end TIMEOUT) and READ payload that
 * came back. */
static void issue_ready(struct staging_pool *p)
{
    while (!p->issuing) {
        struct xfer_frame *expired = NULL;
        size_t n = take_waiting(p, p->taken, p->nchunks, &expired);
        for (struct chunk *c = p->arrived_head; c; c = c->next)
            p->taken[n++] = c;          /* every chunk is in one list: n <= nchunks */
        p->arrived_head = p->arrived_tail = NULL;
        if (!n && !expired)
            return;
        bool idle = !p->fl_head;
        p->issuing = true;
        pthread_mutex_unlock(&p->lock);
        for (struct xfer_frame *f = expired, *next; f; f = next) {
            next = f->next;
            end_frame(f, FERRY_ETIMEDOUT, 0, "request timed out waiting for a staging chunk");
        }
        issue_round(p, p->taken, n, idle);
        pthread_mutex_lock(&p->lock);
        p->issuing = false;
        pthread_cond_signal(&p->cond);
    }
}

/* Worker: a copy on mark stream *m failed (or failed to enqueue).  Every
 * group in flight on it (those after the failure ran nothing) is taken off
 * the FIFO, the stream drained and renewed, and each of their chunks goes
 * again alone on its own stream, so a bad address fails its own frame
 * only.  The worker issues meanwhile (no round touches the stream). */
static void mark_stream_failed(struct staging_pool *p, ferry_stream **m)
{
    pthread_mutex_lock(&p->lock);
    while (p->issuing)
        pthread_cond_wait(&p->cond, &p->lock);
    p->issuing = true;
    size_t n = 0;
    struct chunk *keep = NULL;
    for (struct chunk *c = p->fl_head, *next; c; c = next) {
        next = c->next;
        if (c->lead->carrier == m) {
            p->retired[n++] = c;
            if (keep)
                keep->next = next;
            else
                p->fl_head = next;
        } else {
            keep = c;
        }
    }
    p->fl_tail = keep;
    pthread_mutex_unlock(&p->lock);
    LOG_DEBUG("staging: %s:%d: a copy on a mark stream failed (%s); its %zu frames go again alone", p->ops->kind,
              p->dev, ferry_last_error(), n);
    renew_stream(p, m);
    if (!*m) { /* no stream to take turns on: rounds use their chunks' own */
        p->nmark = 0;
        p->chain_bytes = 0;
    }
    for (size_t i = 0; i < n; i++)
        issue_group(p, &p->retired[i], 1, NULL);
    pthread_mutex_lock(&p->lock);
    p->issuing = false;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

static bool on_mark_stream(const struct staging_pool *p, ferry_stream **s)
{
    return s >= p->mstreams && s < p->mstreams + MARK_STREAMS_MAX;
}

/* Whether a marked group's copies are done: the device stored its mark. */
static bool mark_reached(const struct staging_pool *p, const struct chunk *lead)
{
    /* an acquire load (the fence after a plain one that it replaces is
     * refused by GCC's ThreadSanitizer) */
    uint32_t v = __atomic_load_n(&p->marks[(size_t)lead->index * MARK_STRIDE], __ATOMIC_ACQUIRE);
    return (int32_t)(v - lead->mark_seq) >= 0;
}

/* The worker: retires the oldest group once its copies are done (polling
 * its mark, or querying its stream, briefly, then blocking), or returns
 * early when new work is ready for nobody to issue.  A marked group's
 * stream is not queried while it polls: a query takes driver locks the
 * issuing threads' launches need. */
static void retire_oldest(struct staging_pool *p)
{
    pthread_mutex_lock(&p->lock);
    struct chunk *lead = p->fl_head; /* only this thread takes from the FIFO (p->retiring) */
    pthread_mutex_unlock(&p->lock);
    ferry_stream **carrier = lead->carrier;
    if (lead->enqueue_err) {
        mark_stream_failed(p, carrier);
        return;
    }
    uint64_t start = now_ns();
    int rc;
    for (;;) {
        bool slow = now_ns() - start > COPY_POLL_NS;
        if (lead->marked && mark_reached(p, lead))
            rc = 0;
        else if (!lead->marked || slow)  /* a failure leaves the mark unwritten */
            rc = p->ops->stream_query(*carrier);
        else
            rc = FERRY_EBUSY;
        if (rc != FERRY_EBUSY)
            break;
        pthread_mutex_lock(&p->lock);
        bool issue = work_ready(p) && !p->issuing;
        pthread_mutex_unlock(&p->lock);
        if (issue)
            return;                     /* issue new work first, come back */
        if (slow && !lead->marked)
            break;                      /* long copy: block in stream_sync */
        if (slow)                       /* not stream_sync: it would wait for the groups after this one */
            nanosleep(&(struct timespec){0, MARK_SLEEP_NS}, NULL);
        else
            sched_yield();
    }
    if (rc == FERRY_EBUSY)
        rc = p->ops->stream_sync(*carrier);
    if (rc && on_mark_stream(p, carrier)) {
        mark_stream_failed(p, carrier);
        return;
    }
    size_t n = 0;
    pthread_mutex_lock(&p->lock);
    while (p->fl_head && p->fl_head->lead == lead) {
        p->retired[n++] = p->fl_head;
        p->fl_head = p->fl_head->next;
    }
    if (!p->fl_head)
        p->fl_tail = NULL;
    bool alone = nothing_after(p);
    pthread_mutex_unlock(&p->lock);
    if (rc)
        group_failed(p, p->retired, n, rc);
    else
        retire_group(p, p->retired, n, alone);
}

/* The worker issues what nobody else does (work that waited for a free
 * chunk) and retires every copy (but the group a submitting thread is
 * retiring: retire_first); it polls briefly before it sleeps. */
void *staging_worker_main(void *arg)
{
    struct staging_pool *p = arg;
    uint64_t idle_since = 0;
    pthread_mutex_lock(&p->lock);
    while (!p->stopping || p->waiting_head || p->fl_head || p->issuing || p->retiring) {
        if (work_ready(p) && !p->issuing && !(p->stopping && !p->waiting_head && !p->arrived_head)) {
            issue_ready(p);
            idle_since = 0;
            continue;
        }
        if (p->fl_head && !p->retiring) {
            p->retiring = true;
            pthread_mutex_unlock(&p->lock);
            retire_oldest(p);
            pthread_mutex_lock(&p->lock);
            p->retiring = false;
            idle_since = 0;
            continue;
        }
        if (p->stopping && !p->waiting_head && !p->issuing && !p->fl_head && !p->retiring)
            break;
        uint64_t t = now_ns();
        if (!idle_since)
            idle_since = t;
        /* a submitting thread retiring the first group leaves the rest to
         * this one within FERRY_STAGING_ISSUER_RETIRE_US: stay awake for
         * them; one that retires several groups
         * (FERRY_STAGING_ISSUER_RETIRE_GROUPS) wakes it when it lets go */
        bool behind_issuer = p->retiring && p->fl_head && p->issuer_retire_groups <= 1;
        if ((t - idle_since < p->idle_spin_ns || behind_issuer) && !p->issuing) {
            pthread_mutex_unlock(&p->lock);
            sched_yield();
            pthread_mutex_lock(&p->lock);
            continue;
        }
        /* re-check deadlines of waiting frames */
        struct timespec until = timespec_in_ms(CLOCK_REALTIME, 50);
        p->worker_asleep = true;
        pthread_cond_timedwait(&p->cond, &p->lock, &until);
        p->worker_asleep = false;
        idle_since = 0;
        if (p->waiting_head && !p->issuing)
            issue_ready(p);             /* expired frames end */
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* Polls a group's copies for up to budget_ns from start: 0 once they are
 * done, FERRY_EBUSY, or a failure (which the worker handles). */
static int poll_group(struct staging_pool *p, struct chunk *lead, uint64_t start, uint64_t budget_ns)
{
    for (;;) {
        int rc;
        if (lead->marked) /* a failure leaves the mark unwritten: the worker finds it */
            rc = mark_reached(p, lead) ? 0 : FERRY_EBUSY;
        else
            rc = p->ops->stream_query(*lead->carrier);
        if (rc != FERRY_EBUSY || now_ns() - start >= budget_ns)
            return rc;
        sched_yield();
    }
}

/* Lock held (let go meanwhile); p->retiring is this thread's (claimed
 * before it issued, so the worker that the issue woke leaves the FIFO to
 * it).  A thread that has just issued copies while the worker slept polls
 * the oldest group's copies itself, for up to budget_ns, and retires it
 * once they are done, so its frame does not wait for the worker's wake-up:
 * a submitting thread the first group of gathers it issued
 * (FERRY_STAGING_ISSUER_RETIRE_US: the batch's first frame goes to the
 * wire; with FERRY_STAGING_ISSUER_RETIRE_GROUPS the groups after it too,
 * one after another within the budget), a transport thread that brought READ payload the scatters at the
 * head of the FIFO, one group after another within the budget
 * (FERRY_STAGING_SCATTER_RETIRE_US: their frames end).  Anything else
 * (still busy, a failure, a group whose enqueue failed, the other
 * direction's) stays for the worker, which retires it as always. */
static void retire_first(struct staging_pool *p, uint64_t budget_ns, enum chunk_state want)
{
    uint64_t start = now_ns();
    /* gathers: FERRY_STAGING_ISSUER_RETIRE_GROUPS groups at most; scatters: all within the budget */
    size_t groups_left = want == CHUNK_GATHER ? p->issuer_retire_groups : SIZE_MAX;
    struct chunk *lead;
    while ((lead = p->fl_head) && lead->state == want && !lead->enqueue_err) {
        pthread_mutex_unlock(&p->lock);
        int rc = poll_group(p, lead, start, budget_ns);
        struct chunk *g[GROUP_MAX];
        size_t n = 0;
        pthread_mutex_lock(&p->lock);
        while (rc == 0 && p->fl_head && p->fl_head->lead == lead && n < GROUP_MAX) {
            g[n++] = p->fl_head;
            p->fl_head = p->fl_head->next;
        }
        if (!p->fl_head)
            p->fl_tail = NULL;
        if (!n)
            break;
        groups_left--;
        bool alone = nothing_after(p), more = groups_left > 0 && p->fl_head;
        if (!more) { /* the worker may go on while this thread ends the frames */
            p->retiring = false;
            pthread_cond_signal(&p->cond);
        }
        pthread_mutex_unlock(&p->lock);
        retire_group(p, g, n, alone);
        pthread_mutex_lock(&p->lock);
        if (!more)
            return;
    }
    p->retiring = false;
    pthread_cond_signal(&p->cond);
}

void staging_submit_list(struct staging_pool *p, struct xfer_frame *head)
{
    struct xfer_frame *ok = NULL, **tail = &ok;
    for (struct xfer_frame *f = head, *next; f; f = next) {
        next = f->next;
        if (f->npieces > XFER_MAX_PIECES || f->bytes > p->chunk_size) {
            end_frame(f, FERRY_EINVAL, 0, "staging: frame larger than a chunk");
            continue;
        }
        f->next = NULL;
        *tail = f;
        tail = &f->next;
    }
    if (!ok)
        return;
    pthread_mutex_lock(&p->lock);
    if (p->stopping) {
        pthread_mutex_unlock(&p->lock);
        for (struct xfer_frame *f = ok, *next; f; f = next) {
            next = f->next;
            end_frame(f, FERRY_ECANCELED, 0, "staging: engine is shutting down");
        }
        return;
    }
    for (struct xfer_frame *f = ok, *next; f; f = next) {
        next = f->next;
        TRACE(TR_STAGE_QUEUED, f->bytes);
        f->next = NULL;
        if (p->waiting_tail)
            p->waiting_tail->next = f;
        else
            p->waiting_head = f;
        p->waiting_tail = f;
    }
    /* the worker sleeps: this thread will retire the first group itself */
    bool claim = p->issuer_retire_ns && p->worker_asleep && !p->retiring;
    if (claim)
        p->retiring = true;
    issue_ready(p); /* on this thread, unless another one is issuing */
    pthread_cond_signal(&p->cond);
    if (claim)
        retire_first(p, p->issuer_retire_ns, CHUNK_GATHER);
    pthread_mutex_unlock(&p->lock);
}

void staging_submit(struct staging_pool *p, struct xfer_frame *f)
{
    f->next = NULL;
    staging_submit_list(p, f);
}

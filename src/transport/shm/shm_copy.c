/* SPDX-License-Identifier: Apache-2.0 */
/*
 * shm_copy.c — the shm transport's work: a FIFO of frames, SHM_WORKERS copy
 * threads, a timer thread, and the jobs of submitting threads.
 *
 * A submitting thread issues its own device-to-device copies (GPU to GPU
 * over CUDA IPC, FERRY_SHM_SUBMIT_COPIES): it collects the frames of one
 * submit (the engine tells it how many bytes are still to come:
 * more_bytes), and at the last one runs them as a job: announces the
 * span of their remote bytes once and takes one local access for the span
 * of their local bytes, checks each frame's pieces (shm_frame.c) and
 * enqueues all their copies on the job's stream at once (one launch of the
 * device's gather kernel for up to 128 copies), then hands the job to the
 * workers, which wait for its stream and end its frames.  So no worker's
 * wake-up sits between the submit and the copy, and a batch's copies take
 * one launch, not one per group of frames: a job holds up to
 * SHM_JOB_FRAMES frames (its room grown when a submit has more than
 * SHM_GROUP_MAX, the jobs' rooms together bounded by SHM_JOB_FRAMES_ALL)
 * and SHM_GROUP_COPIES copies; the rest go to the next job.  A frame a job
 * cannot take (host memory on either side) goes to the FIFO, as does every
 * frame when all SHM_JOBS jobs are out.
 *
 * Otherwise submit() only queues.  A worker takes the oldest frames (up to
 * SHM_GROUP_MAX data frames of one peer in a row), runs each (shm_frame.c),
 * its device copies batched across the frames taken together and waited
 * for once per copy job (a failed copy job fails the frames with a copy in
 * it, no other, and the worker's next job runs on a fresh stream), and ends
 * the frames after clearing their announcements.  The timer ends frames
 * that waited in the queue past their deadline, and has peers' mappings of
 * buffers they unregistered closed (shm_map.c).  Frames end on the workers
 * and the timer, each exactly once; a job's frames count as queued for
 * their peer (peer_drain waits for them) from the job's start.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "err.h"
#include "log.h"
#include "timespec.h"
#include "net.h"
#include "transport/shm/shm.h"
#include "trace.h"

#define TICK_MS 20

static struct shm_peer *peer_of(const struct xfer_frame *f)
{
    return (struct shm_peer *)(uintptr_t)f->wire_id;
}

/* ------------------------------------------------------------ ending frames */

/* Ends a frame that was queued for p and moved nothing, then lets p's
 * close go on (a group's frames end in group_end). */
static void frame_end(struct shm_transport *t, struct xfer_frame *f, int err, const char *msg)
{
    struct shm_peer *p = peer_of(f);
    f->complete(f, err, 0, msg);
    pthread_mutex_lock(&t->lock);
    if (--p->queued == 0)
        pthread_cond_broadcast(&t->idle);
    pthread_mutex_unlock(&t->lock);
}

/* Queues frames for the workers.  counted: they already count in
 * p->queued (a job gave them back). */
static void queue_frames(struct shm_transport *t, struct shm_peer *p, struct xfer_frame **fs, size_t n, bool counted)
{
    pthread_mutex_lock(&t->lock);
    if (t->stopping || p->closing) {
        pthread_mutex_unlock(&t->lock);
        for (size_t i = 0; i < n; i++) {
            fs[i]->wire_id = (uint64_t)(uintptr_t)p;
            if (counted)
                frame_end(t, fs[i], FERRY_ECANCELED, "shm: the segment is being closed");
            else
                fs[i]->complete(fs[i], FERRY_ECANCELED, 0, "shm: the segment is being closed");
        }
        return;
    }
    for (size_t i = 0; i < n; i++) {
        struct xfer_frame *f = fs[i];
        f->wire_id = (uint64_t)(uintptr_t)p; /* transport-private: the frame's peer */
        f->next = NULL;
        if (t->tail)
            t->tail->next = f;
        else
            t->head = f;
        t->tail = f;
        t->nqueued++;
        p->queued += !counted;
    }
    atomic_fetch_add_explicit(&t->posted, 1, memory_order_relaxed);
    if (n == 1)
        pthread_cond_signal(&t->work);
    else
        pthread_cond_broadcast(&t->work);
    pthread_mutex_unlock(&t->lock);
}

/* Unlinks the queued frames that match (peer p, or past deadline `now`).
 * t->lock held. */
static struct xfer_frame *unqueue(struct shm_transport *t, const struct shm_peer *p, uint64_t now)
{
    struct xfer_frame *out = NULL, **tail = &out, *prev = NULL;
    for (struct xfer_frame *f = t->head, *next; f; f = next) {
        next = f->next;
        if (p ? peer_of(f) == p : now >= f->deadline_ns) {
            if (prev)
                prev->next = next;
            else
                t->head = next;
            if (t->tail == f)
                t->tail = prev;
            t->nqueued--;
            f->next = NULL;
            *tail = f;
            tail = &f->next;
        } else {
            prev = f;
        }
    }
    return out;
}

void shm_peer_drain(struct shm_transport *t, struct shm_peer *p)
{
    pthread_mutex_lock(&t->lock);
    p->closing = true;
    for (struct shm_peer **pp = &t->peers; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    struct xfer_frame *gone = unqueue(t, p, 0);
    pthread_mutex_unlock(&t->lock);
    for (struct xfer_frame *f = gone, *next; f; f = next) {
        next = f->next;
        frame_end(t, f, FERRY_ECANCELED, "shm: segment closed");
    }
    pthread_mutex_lock(&t->lock);
    while (p->queued)
        pthread_cond_wait(&t->idle, &t->lock);
    pthread_mutex_unlock(&t->lock);
}

#define GONE_TICKS 5 /* how often the timer asks whether peers' processes exited */

/* A peer with mappings to close, held (counted as queued, so its close
 * waits); NULL if none.  *all: its process exited (with gone, the timer
 * asks each peer), close every mapping; else its registry counted an
 * unregister since its last sweep.  t->lock held. */
static struct shm_peer *peer_to_sweep(struct shm_transport *t, bool gone, bool *all)
{
    for (struct shm_peer *p = t->peers; p; p = p->next) {
        if (p->self || p->dead)
            continue;
        uint64_t unregs = atomic_load_explicit(&p->page->unregs, memory_order_relaxed);
        *all = gone && atomic_load(&p->mapped) && shm_peer_gone(p); /* a system call: only where it matters */
        if (*all || unregs != p->unregs_seen) {
            p->dead = *all;
            p->unregs_seen = unregs;
            p->queued++;
            return p;
        }
    }
    return NULL;
}

/* Every tick: ends the frames queued past their deadline, and closes the
 * mappings of buffers peers unregistered (also when no frame touches them
 * again: until then the peer's device memory could not be freed), and
 * every GONE_TICKS all mappings of peers whose process exited (a crashed
 * engine's device memory stays allocated while it is open here). */
static void *timer_main(void *arg)
{
    struct shm_transport *t = arg;
    pthread_mutex_lock(&t->lock);
    for (unsigned tick = 1; !t->stopping; tick++) {
        struct timespec until = timespec_in_ms(CLOCK_REALTIME, TICK_MS);
        pthread_cond_timedwait(&t->tick, &t->lock, &until);
        struct xfer_frame *late = t->head ? unqueue(t, NULL, now_ns()) : NULL;
        if (late) {
            pthread_mutex_unlock(&t->lock);
            for (struct xfer_frame *f = late, *next; f; f = next) {
                next = f->next;
                frame_end(t, f, FERRY_ETIMEDOUT, "request timed out waiting for a shm worker");
            }
            pthread_mutex_lock(&t->lock);
        }
        bool all;
        for (struct shm_peer *p; (p = peer_to_sweep(t, tick % GONE_TICKS == 0, &all)) != NULL;) {
            pthread_mutex_unlock(&t->lock);
            shm_peer_sweep(p, all);
            pthread_mutex_lock(&t->lock);
            if (--p->queued == 0)
                pthread_cond_broadcast(&t->idle);
        }
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

/* ------------------------------------------------------------ groups */

/* Frame i of g, fresh. */
static struct frame_run *run_init(struct shm_group *g, size_t i, struct xfer_frame *f)
{
    struct frame_run *fr = &g->runs[i];
    memset(fr, 0, offsetof(struct frame_run, msg)); /* the front's lines only (copy_msg: with copy_err) */
    fr->ldev = -1;
    fr->msg[0] = '\0';
    fr->g = g;
    fr->f = f;
    fr->p = peer_of(f);
    fr->write = f->opcode == XFER_WRITE;
    return fr;
}

static void group_start(struct shm_group *g, struct shm_peer *p, bool data)
{
    g->p = p;
    g->n = 0;
    g->cb.n = 0;
    g->gone = data && shm_peer_gone(p);
}

/* Ends the group's frames (their copies done or failed): their results and
 * accesses first (a job's own last), the counters once for the group, then each frame's
 * completion, and one update of the peer's count under the lock (not one
 * per frame: a job of 128 frames took the lock 128 times). */
static void group_end(struct shm_group *g)
{
    struct shm_transport *t = g->t;
    shm_group_unmap(g); /* before its frames end: the peer may close after the last */
    uint64_t written = 0, read = 0, served = 0, frames = 0;
    for (size_t i = 0; i < g->n; i++) {
        struct frame_run *fr = &g->runs[i];
        int rc = g->rc[i];
        if (!rc && fr->f->opcode != XFER_NOTIFY)
            rc = shm_frame_finish(fr);
        shm_frame_release(fr);
        g->rc[i] = rc;
        if (rc)
            continue;
        if (fr->f->opcode == XFER_WRITE)
            written += fr->moved;
        else if (fr->f->opcode == XFER_READ)
            read += fr->moved;
        served += fr->moved;
        frames += fr->moved != 0;
    }
    if (g->job)
        shm_job_release(g);
    if (written)
        atomic_fetch_add(&t->bytes_written, written);
    if (read)
        atomic_fetch_add(&t->bytes_read, read);
    if (served) { /* the peer's counters, in its shared memfd */
        atomic_fetch_add(&g->p->served->bytes, served);
        atomic_fetch_add(&g->p->served->frames, frames);
    }
    for (size_t i = 0; i < g->n; i++) {
        struct frame_run *fr = &g->runs[i];
        int rc = g->rc[i];
        fr->f->complete(fr->f, rc, rc ? 0 : fr->refused, fr->msg);
    }
    pthread_mutex_lock(&t->lock);
    g->p->queued -= (unsigned)g->n;
    if (g->p->queued == 0)
        pthread_cond_broadcast(&t->idle);
    pthread_mutex_unlock(&t->lock);
    g->n = 0;
}

/* A worker runs frames taken together (all data frames of one peer, or one
 * notification) and ends each. */
static void run_group(struct shm_group *g, struct xfer_frame **fs, size_t n)
{
    TRACE(TR_SHM_GROUP, n);
    group_start(g, peer_of(fs[0]), fs[0]->opcode != XFER_NOTIFY);
    for (size_t i = 0; i < n; i++) {
        struct frame_run *fr = run_init(g, i, fs[i]);
        if (now_ns() >= fs[i]->deadline_ns)
            g->rc[i] = shm_fail(fr, FERRY_ETIMEDOUT, "request timed out waiting for a shm worker");
        else if (fs[i]->opcode == XFER_NOTIFY)
            g->rc[i] = shm_notify_send(fr->p, fs[i], fr->msg, sizeof fr->msg);
        else
            g->rc[i] = shm_frame_run(fr);
        g->n = i + 1;
    }
    shm_copies_wait(g);
    TRACE(TR_SHM_COPIED, n);
    group_end(g);
}

/* Unlinks the oldest frame and the data frames of the same peer right
 * behind it: the worker's fair share of the queue, at most SHM_GROUP_MAX
 * (a few frames are better run side by side on several workers).  t->lock
 * held, queue not empty. */
static size_t take_group(struct shm_transport *t, struct xfer_frame **fs)
{
    size_t share = (t->nqueued + SHM_WORKERS - 1) / SHM_WORKERS, n = 0;
    size_t max = share < SHM_GROUP_MAX ? share : SHM_GROUP_MAX;
    do {
        struct xfer_frame *f = t->head;
        fs[n++] = f;
        t->head = f->next;
        if (!t->head)
            t->tail = NULL;
        t->nqueued--;
    } while (n < max && t->head && fs[0]->opcode != XFER_NOTIFY && t->head->opcode != XFER_NOTIFY &&
             t->head->wire_id == fs[0]->wire_id);
    return n;
}

static struct shm_group *group_new(struct shm_transport *t, bool job)
{
    struct shm_group *g = calloc(1, sizeof *g);
    if (g) {
        g->runs = calloc(SHM_GROUP_MAX, sizeof *g->runs);
        g->rc = calloc(SHM_GROUP_MAX, sizeof *g->rc);
    }
    if (g && !job)
        g->moves = calloc(1, sizeof *g->moves);
    if (!g || !g->runs || !g->rc || (!job && !g->moves)) {
        if (g) {
            free(g->runs);
            free(g->rc);
            free(g->moves);
        }
        free(g);
        return NULL;
    }
    g->t = t;
    g->job = job;
    g->cap = SHM_GROUP_MAX;
    return g;
}

/* Gives the idle job g (no frame in it: runs[] holds no live access) room
 * for `want` frames, as far as SHM_JOB_FRAMES_ALL allows (one launch for a
 * whole submit of 128 frames instead of one per 16).  A job's room never
 * shrinks, so the jobs' frames take at most SHM_JOB_FRAMES_ALL x
 * sizeof(struct frame_run) (4.8 KB: 4.9 MB) however many threads submit.
 * t->lock held; on no memory g keeps its room. */
static void job_room(struct shm_transport *t, struct shm_group *g, size_t want)
{
    want = want < SHM_JOB_FRAMES ? want : SHM_JOB_FRAMES;
    if (want <= g->cap)
        return;
    if (t->job_frames + (want - g->cap) > SHM_JOB_FRAMES_ALL)
        want = g->cap + (SHM_JOB_FRAMES_ALL - t->job_frames);
    if (want <= g->cap)
        return;
    struct frame_run *runs = calloc(want, sizeof *runs);
    int *rc = calloc(want, sizeof *rc);
    if (!runs || !rc) {
        free(runs);
        free(rc);
        return;
    }
    free(g->runs);
    free(g->rc);
    g->runs = runs;
    g->rc = rc;
    t->job_frames += want - g->cap;
    g->cap = want;
}

static void group_free(struct shm_group *g)
{
    if (g->bounce)
        g->bounce_ops->host_free(g->bounce);
    if (g->stream) /* idle: its last job ended */
        ferry_device_stream_give(g->stream_ops, g->stream_dev, g->stream);
    free(g->moves);
    free(g->runs);
    free(g->rc);
    free(g);
}

/* ------------------------------------------------------------ jobs */

/* A free job for frames of p, counted as n of p's queued frames; NULL when
 * all are out (or p is closing: then the queue ends the frames).  Until it
 * is back (job_end), the workers do not stop. */
static struct shm_group *job_take(struct shm_transport *t, struct shm_peer *p, size_t n)
{
    pthread_mutex_lock(&t->lock);
    struct shm_group *g = NULL;
    if (!t->stopping && !p->closing) {
        if ((g = t->free_jobs) != NULL)
            t->free_jobs = g->next;
        else if (t->njobs < SHM_JOBS && (g = group_new(t, true)) != NULL) {
            g->id = t->njobs++;
            t->job_frames += g->cap;
        }
        if (g) {
            p->queued += n;
            t->jobs_out++;
            job_room(t, g, n);
        }
    }
    pthread_mutex_unlock(&t->lock);
    return g;
}

/* n frames counted for a job went elsewhere (counted again there). */
static void frames_uncount(struct shm_transport *t, struct shm_peer *p, size_t n)
{
    pthread_mutex_lock(&t->lock);
    p->queued -= (unsigned)n;
    if (p->queued == 0)
        pthread_cond_broadcast(&t->idle);
    pthread_mutex_unlock(&t->lock);
}

/* The job's stream on the device of its copies. */
static int job_stream(struct shm_group *g)
{
    const struct copy_batch *cb = &g->cb;
    if (g->stream && (g->stream_ops != cb->ops || g->stream_dev != cb->dev)) {
        ferry_device_stream_give(g->stream_ops, g->stream_dev, g->stream); /* idle: its last job ended */
        g->stream = NULL;
    }
    if (!g->stream) { /* from the cache: never created mid-transfer */
        int rc = ferry_device_stream_take(cb->ops, cb->dev, &g->stream);
        if (rc)
            return rc;
        g->stream_ops = cb->ops;
        g->stream_dev = cb->dev;
    }
    return 0;
}

/* After a failure the stream is in a sticky error: drain it, start over.
 * Where it hung and could not be aborted (stream_abandoned) its copies may
 * still run, through the job's mappings: those stay open (as staging keeps
 * such chunks out of use); stream_destroy leaves the stream itself. */
static void job_stream_renew(struct shm_group *g)
{
    (void)g->stream_ops->stream_sync(g->stream);
    if (g->stream_ops->stream_abandoned && g->stream_ops->stream_abandoned(g->stream))
        shm_group_keep_maps(g);
    g->stream_ops->stream_destroy(g->stream);
    g->stream = NULL;
}

/* Runs frames fs[0..n) of g->p into the job, from the front, until it is
 * full; frames it cannot take go to the queue (already counted).  Returns
 * how many of fs it went through. */
static size_t job_fill(struct shm_group *g, struct xfer_frame **fs, size_t n)
{
    size_t k = 0;
    if (!g->n)
        shm_job_begin(g, fs, n < g->cap ? n : g->cap);
    uint64_t now = now_ns(); /* the job's start: one clock read, not one per frame */
    for (; k < n && g->n < g->cap; k++) {
        fs[k]->wire_id = (uint64_t)(uintptr_t)g->p;
        struct frame_run *fr = run_init(g, g->n, fs[k]);
        size_t first = g->cb.n;
        int rc = now >= fs[k]->deadline_ns
                     ? shm_fail(fr, FERRY_ETIMEDOUT, "request timed out before its shm copies started")
                     : shm_frame_run(fr);
        if (rc == SHM_NOT_HERE || rc == SHM_JOB_FULL) {
            shm_frame_release(fr);
            g->cb.n = first;
            if (rc == SHM_JOB_FULL && g->n > 0)
                break; /* the next job takes it */
            queue_frames(g->t, g->p, &fs[k], 1, true);
            continue;
        }
        g->rc[g->n++] = rc;
    }
    return k;
}

static void job_end(struct shm_group *g);

/* Small copies go on the device's lane, in order: four 8 MiB jobs of 64 KiB
 * copies from four threads moved 274-281 GB/s that way against 203-267 on
 * streams of their own (2 x H200 over NVLink, docs/BENCHMARKS.md), and
 * 296-314 on a lane of two streams taken in turn (FERRY_SHM_LANE_STREAMS);
 * jobs of 1 MiB copies moved 368-372 on their own streams against 317-320
 * in order (they overlap each other's launches).  The bound lies between. */
#define LANE_KB_DEFAULT 256u
#define LANE_KB_MAX (1u << 30)

static bool lane_suits(const struct shm_transport *t, const struct copy_batch *cb)
{
    uint64_t bytes = 0;
    for (size_t i = 0; i < cb->n; i++)
        bytes += cb->copies[i].len;
    return bytes <= t->lane_mean_max * cb->n;
}

/* Enqueues the job's copies on its stream and hands it to the workers. */
static void job_issue(struct shm_group *g)
{
    struct shm_transport *t = g->t;
    if (!g->n) { /* every frame went to the workers */
        job_end(g);
        return;
    }
    shm_copies_drop_expired(g);
    struct shm_lane *lane = g->cb.n && t->submit_copies == 2 && lane_suits(t, &g->cb)
                                ? shm_lane_get(t, g->cb.ops, g->cb.dev) : NULL;
    TRACE(TR_COPY_BEGIN, g->cb.n);
    if (lane) {
        int rc = shm_lane_issue(lane, g);
        if (rc)
            shm_copies_failed(g, rc);
        if (!g->ls)
            g->cb.n = 0; /* nothing of it runs any more */
    } else if (g->cb.n) {
        int rc = job_stream(g);
        if (!rc && (rc = g->cb.ops->copy_async(g->stream, g->cb.dir, g->cb.copies, g->cb.n)) != 0)
            job_stream_renew(g); /* what was enqueued before the failure is done */
        if (rc) {
            shm_copies_failed(g, rc);
            g->cb.n = 0;
        }
    }
    TRACE(TR_COPY_QUEUED, g->cb.n);
    pthread_mutex_lock(&t->lock);
    g->next = NULL;
    if (t->jobs_tail)
        t->jobs_tail->next = g;
    else
        t->jobs = g;
    t->jobs_tail = g;
    atomic_fetch_add_explicit(&t->posted, 1, memory_order_relaxed);
    pthread_cond_signal(&t->work);
    pthread_mutex_unlock(&t->lock);
}

/* A worker: waits for the job's copies, ends its frames, frees the job. */
static void job_end(struct shm_group *g)
{
    struct shm_transport *t = g->t;
    if (g->ls) {
        int rc = shm_lane_wait(g);
        if (rc)
            shm_copies_failed(g, rc);
    } else if (g->cb.n) {
        int rc = g->stream_ops->stream_sync(g->stream);
        if (rc) {
            shm_copies_failed(g, rc);
            job_stream_renew(g);
        }
    }
    TRACE(TR_SHM_COPIED, g->cb.n);
    group_end(g);
    pthread_mutex_lock(&t->lock);
    g->next = t->free_jobs;
    t->free_jobs = g;
    if (--t->jobs_out == 0 && t->stopping)
        pthread_cond_broadcast(&t->work); /* the workers may stop now */
    pthread_mutex_unlock(&t->lock);
}

/* The frames a submitting thread is handing over: one submit's, for one
 * transport and peer, run as jobs at the submit's last frame. */
struct pending {
    struct shm_transport *t;
    struct shm_peer *p;
    size_t n;
    struct xfer_frame *f[SHM_JOB_FRAMES];
};
static _Thread_local struct pending pending;

static void pending_run(void)
{
    struct pending pd = pending;
    pending.n = 0; /* a completion run from here may submit again */
    TRACE(TR_SHM_GROUP, pd.n);
    for (size_t done = 0; done < pd.n;) {
        struct shm_group *g = job_take(pd.t, pd.p, pd.n - done);
        if (!g) {
            queue_frames(pd.t, pd.p, pd.f + done, pd.n - done, false);
            return;
        }
        group_start(g, pd.p, true);
        done += job_fill(g, pd.f + done, pd.n - done);
        if (done < pd.n) /* the frames left were counted for this job: the next one counts them again */
            frames_uncount(pd.t, pd.p, pd.n - done);
        job_issue(g);
    }
}

void shm_submit(void *tp, void *pp, struct xfer_frame *f)
{
    struct shm_transport *t = tp;
    struct shm_peer *p = pp;
    if (pending.n && (pending.t != t || pending.p != p))
        pending_run();
    if (t->submit_copies && f->opcode != XFER_NOTIFY && shm_frame_for_job(t, p, f)) {
        pending.t = t;
        pending.p = p;
        pending.f[pending.n++] = f;
        if (!f->more_bytes || pending.n == SHM_JOB_FRAMES)
            pending_run();
        return;
    }
    if (pending.n)
        pending_run();
    queue_frames(t, p, &f, 1, false);
}

/* ------------------------------------------------------------ workers */

static void *worker_main(void *arg)
{
    struct shm_transport *t = arg;
    struct shm_group *g = group_new(t, false);
    if (!g) { /* the other workers carry on */
        LOG_ERROR("shm: a worker thread is out of memory");
        return NULL;
    }
    struct xfer_frame *fs[SHM_GROUP_MAX];
    for (;;) {
        pthread_mutex_lock(&t->lock);
        uint64_t idle_since = 0;
        while (!t->head && !t->jobs && !(t->stopping && !t->jobs_out)) {
            /* after work, poll a while before sleeping: the next job of a
             * busy transport then finds the worker awake (a wake-up costs
             * tens of microseconds in a VM); idle, it sleeps */
            uint64_t now = now_ns();
            idle_since = idle_since ? idle_since : now;
            if (now - idle_since >= t->spin_ns || t->stopping) {
                pthread_cond_wait(&t->work, &t->lock);
                continue;
            }
            unsigned seen = atomic_load_explicit(&t->posted, memory_order_relaxed);
            pthread_mutex_unlock(&t->lock);
            while (atomic_load_explicit(&t->posted, memory_order_relaxed) == seen && now_ns() - idle_since < t->spin_ns)
                sched_yield();
            pthread_mutex_lock(&t->lock);
        }
        struct shm_group *job = t->jobs;
        if (job && !(t->jobs = job->next))
            t->jobs_tail = NULL;
        size_t n = !job && t->head ? take_group(t, fs) : 0;
        pthread_mutex_unlock(&t->lock);
        if (job)
            job_end(job);
        else if (n)
            run_group(g, fs, n);
        else
            break;
    }
    group_free(g);
    return NULL;
}

/* ------------------------------------------------------------ start / stop */

#define SPIN_US_DEFAULT 50u
#define SPIN_US_MAX 100000u
#define LANE_STREAMS_DEFAULT 2u

/* FERRY_SHM_SUBMIT_COPIES (0, 1 or 2), FERRY_SHM_SPIN_US (0..SPIN_US_MAX),
 * FERRY_SHM_LANE_STREAMS (1..SHM_LANE_STREAMS_MAX) and FERRY_SHM_LANE_KB
 * (0..LANE_KB_MAX: 0, no job on a lane). */
static int knobs_read(struct shm_transport *t)
{
    const char *want = getenv("FERRY_SHM_SUBMIT_COPIES");
    t->submit_copies = 2;
    if (want && *want) {
        if (strlen(want) != 1 || want[0] < '0' || want[0] > '2')
            return ferry_fail(FERRY_EINVAL, "shm: FERRY_SHM_SUBMIT_COPIES=\"%.32s\": want 0, 1 or 2", want);
        t->submit_copies = want[0] - '0';
    }
    uint64_t v = SPIN_US_DEFAULT;
    int rc = config_env_number("FERRY_SHM_SPIN_US", false, 0, SPIN_US_MAX, "microseconds, 0-100000", &v);
    if (rc < 0)
        return rc;
    t->spin_ns = v * 1000u;
    v = LANE_STREAMS_DEFAULT;
    rc = config_env_number("FERRY_SHM_LANE_STREAMS", false, 1, SHM_LANE_STREAMS_MAX, "streams, 1-4", &v);
    if (rc < 0)
        return rc;
    t->lane_streams = (unsigned)v;
    v = LANE_KB_DEFAULT;
    rc = config_env_number("FERRY_SHM_LANE_KB", false, 0, LANE_KB_MAX, "KiB, 0-1073741824", &v);
    if (rc < 0)
        return rc;
    t->lane_mean_max = v << 10;
    return 0;
}

int shm_workers_start(struct shm_transport *t)
{
    pthread_mutex_init(&t->lanes_lock, NULL);
    int rc = knobs_read(t);
    if (rc)
        return rc;
    for (unsigned i = 0; i < SHM_WORKERS; i++) {
        if (pthread_create(&t->workers[i], NULL, worker_main, t) != 0)
            return ferry_fail(FERRY_EIO, "shm: cannot start worker thread %u", i);
        t->nworkers++;
    }
    if (pthread_create(&t->timer, NULL, timer_main, t) != 0)
        return ferry_fail(FERRY_EIO, "shm: cannot start the timer thread");
    t->timer_started = true;
    return 0;
}

void shm_workers_stop(struct shm_transport *t)
{
    pthread_mutex_lock(&t->lock);
    t->stopping = true;
    pthread_cond_broadcast(&t->work);
    pthread_cond_broadcast(&t->tick);
    pthread_mutex_unlock(&t->lock);
    for (unsigned i = 0; i < t->nworkers; i++) /* they run what is still queued, jobs too */
        pthread_join(t->workers[i], NULL);
    if (t->timer_started)
        pthread_join(t->timer, NULL);
    t->nworkers = 0;
    t->timer_started = false;
    for (struct shm_group *g = t->free_jobs, *next; g; g = next) {
        next = g->next;
        group_free(g);
    }
    t->free_jobs = NULL;
    t->njobs = 0;
    t->job_frames = 0;
    shm_lanes_free(t);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * shm_lane.c — one stream per (device backend, device) that the submitting
 * threads' jobs of small copies share (FERRY_SHM_SUBMIT_COPIES=2,
 * FERRY_SHM_LANE_KB, shm_copy.c: lane_suits).
 *
 * Jobs on streams of their own run on the device side by side: four jobs of
 * four threads each take four times as long, end together, and their
 * threads then all do their CPU work between batches while the device has
 * nothing to do.  On one stream the jobs run in the order they were issued,
 * each at the device's full speed, and end one after another
 * (FERRY_SHM_LANE_STREAMS=2..4: jobs take that many streams in turn, so a
 * job's launch and start overlap the end of the one before).  A job's end
 * is a mark: the device stores the job's value into a word of host memory
 * (stream_mark) once its copies are done, and the worker that ends the job
 * polls that word (querying the stream now and then for a failure).
 *
 * Threads: submitting threads issue under the lane's lock (a job's copies
 * and its mark together, so marks follow their own copies); workers wait
 * without it.  A stream that failed (sticky) is retired: the next job takes
 * a fresh one, and the retired one is destroyed when its last job is waited
 * for.  Lanes live until the transport stops.
 *
 * Waits are bounded as every wait on a device stream is (docs/EXTENDING.md,
 * "bounded waits"): a mark not stored within POLL_PATIENCE_NS is waited for
 * in the device's own stream_sync, which the device bounds
 * (FERRY_NPU_SYNC_TIMEOUT_MS, FERRY_SIM_SYNC_TIMEOUT_MS).  A stream that
 * hung and could not be aborted (stream_abandoned) may still run its copies
 * and store its marks: the jobs on it keep their IPC openings, and the lane
 * keeps its marks, to the process's end; its jobs then take streams of
 * their own (whose words no late store can touch).
 */
#include <errno.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "log.h"
#include "net.h"
#include "transport/shm/shm.h"

/* A job's mark is polled in host memory; the stream is queried (for a
 * failure, which leaves the mark unwritten) only this long after the last
 * query: a query takes the driver's locks that the submitting threads'
 * launches need, and a job of small copies ends within tens of
 * microseconds, mostly before its first query. */
#define POLL_QUERY_NS 200000ull
#define POLL_SPIN_NS 2000000ull      /* yield this long, then sleep between polls */
/* Past this, the worker waits in stream_sync, which the device bounds: a
 * job of small copies that has not ended by now waits behind a slow or
 * hung device, where a sleep in the driver costs no more than polling. */
#define POLL_PATIENCE_NS 50000000ull

struct shm_lane *shm_lane_get(struct shm_transport *t, const struct ferry_device_ops *ops, int dev)
{
    if (!ops->stream_mark)
        return NULL;
    pthread_mutex_lock(&t->lanes_lock);
    struct shm_lane *lane = NULL;
    size_t i = 0;
    for (; i < SHM_LANES && t->lanes[i]; i++)
        if (t->lanes[i]->ops == ops && t->lanes[i]->dev == dev) {
            lane = t->lanes[i];
            break;
        }
    if (!lane && i < SHM_LANES && (lane = calloc(1, sizeof *lane)) != NULL) {
        lane->ops = ops;
        lane->dev = dev;
        lane->width = t->lane_streams;
        pthread_mutex_init(&lane->lock, NULL);
        if (ops->host_alloc((size_t)SHM_JOBS * SHM_MARK_STRIDE * sizeof(uint32_t), (void **)&lane->marks) != 0) {
            LOG_WARN("shm: %s:%d: no memory for job marks (%s); its jobs take streams of their own", ops->kind, dev,
                     ferry_last_error());
            lane->marks = NULL;
        } else {
            memset(lane->marks, 0, (size_t)SHM_JOBS * SHM_MARK_STRIDE * sizeof(uint32_t));
        }
        t->lanes[i] = lane; /* kept even without marks: asked once */
    }
    pthread_mutex_unlock(&t->lanes_lock);
    return lane && lane->marks && !atomic_load(&lane->unmarked) ? lane : NULL;
}

static void stream_free(const struct shm_lane *lane, struct shm_lane_stream *ls)
{
    if (ls->stream && ls->broken)
        lane->ops->stream_destroy(ls->stream);
    else if (ls->stream) /* healthy and idle: for the next taker (stream_cache.c) */
        ferry_device_stream_give(lane->ops, lane->dev, ls->stream);
    free(ls);
}

/* The lane's stream for the next job: the streams take jobs in turn (lane
 * lock held).  0 or FERRY_E*. */
static int current(struct shm_lane *lane, struct shm_lane_stream **out)
{
    struct shm_lane_stream **slot = &lane->cur[lane->turn];
    struct shm_lane_stream *ls = *slot;
    lane->turn = (lane->turn + 1) % lane->width;
    if (ls && !ls->broken) {
        *out = ls;
        return 0;
    }
    if (ls && !ls->refs) /* retired and idle; else its last job frees it */
        stream_free(lane, ls);
    *slot = NULL;
    if ((ls = calloc(1, sizeof *ls)) == NULL)
        return ferry_fail(FERRY_ENOMEM, "shm: a lane stream");
    int rc = ferry_device_stream_take(lane->ops, lane->dev, &ls->stream);
    if (rc) {
        free(ls);
        return rc;
    }
    *slot = *out = ls;
    return 0;
}

/* ls is one of the lane's streams, not retired from it (lane lock held). */
static bool in_turn(const struct shm_lane *lane, const struct shm_lane_stream *ls)
{
    for (unsigned i = 0; i < lane->width; i++)
        if (lane->cur[i] == ls)
            return true;
    return false;
}

/* A job is done with ls: a retired stream goes with its last job. */
static void release(struct shm_lane *lane, struct shm_lane_stream *ls)
{
    pthread_mutex_lock(&lane->lock);
    bool last = --ls->refs == 0 && ls->broken && !in_turn(lane, ls);
    pthread_mutex_unlock(&lane->lock);
    if (last)
        stream_free(lane, ls);
}

/* ls hung and was abandoned: its copies and marks may still run, so the
 * lane's marks stay to the process's end and its jobs take streams of
 * their own from now on (a late store of an abandoned job's value must
 * never meet a later job polling the same word).  True if so. */
static bool abandoned(struct shm_lane *lane, const struct shm_lane_stream *ls)
{
    if (!lane->ops->stream_abandoned || !lane->ops->stream_abandoned(ls->stream))
        return false;
    if (!atomic_exchange(&lane->marks_kept, true)) {
        shm_keep_to_process_end(lane->marks);
        LOG_ERROR("shm: %s:%d: lane stream %p abandoned on a hung device; the lane's marks are kept to the "
                  "process's end and its jobs take streams of their own",
                  lane->ops->kind, lane->dev, (void *)ls->stream);
    }
    atomic_store(&lane->unmarked, true);
    return true;
}

/* The device refused g's mark (mrc) on ls, after its copies (copy_async's
 * result rc; why: the first failure's text): g drains ls instead.  The
 * job's result: a failed copy_async's; else a failed drain's (the copies'
 * own failure, FERRY_ETIMEDOUT from a hung device), naming the stream and
 * the refused mark; else 0 where the device has no marks (FERRY_ENOTSUP:
 * the drained copies are done, as on a stream of the job's own), or the
 * refusal itself, naming the device and the stream. */
static int drain_unmarked(struct shm_lane *lane, struct shm_lane_stream *ls, struct shm_group *g, int rc, int mrc,
                          const char *why)
{
    int src = lane->ops->stream_sync(ls->stream);
    char sync_why[160] = "";
    if (src)
        snprintf(sync_why, sizeof sync_why, "%s", ferry_last_error());
    if (abandoned(lane, ls))
        shm_group_keep_maps(g);
    const void *stream = ls->stream;
    release(lane, ls); /* ls may be gone from here */
    if (rc)
        return ferry_fail(rc, "%s", why);
    if (src)
        return ferry_fail(src, "%s:%d stream %p: mark refused, drain failed: %s", lane->ops->kind, lane->dev, stream,
                          sync_why); /* the drain's first: the request's message keeps 160 bytes */
    if (mrc == FERRY_ENOTSUP)
        return 0;
    return ferry_fail(mrc, "%s:%d stream %p refused the job's mark: %s", lane->ops->kind, lane->dev, stream, why);
}

int shm_lane_issue(struct shm_lane *lane, struct shm_group *g)
{
    const struct copy_batch *cb = &g->cb;
    volatile uint32_t *mark = &lane->marks[(size_t)g->id * SHM_MARK_STRIDE];
    pthread_mutex_lock(&lane->lock);
    struct shm_lane_stream *ls = NULL;
    int rc = current(lane, &ls);
    if (rc) {
        pthread_mutex_unlock(&lane->lock);
        return rc;
    }
    rc = cb->ops->copy_async(ls->stream, cb->dir, cb->copies, cb->n);
    char why[160] = ""; /* copy_async's failure, else the mark's */
    if (rc)
        snprintf(why, sizeof why, "%s", ferry_last_error());
    /* even after a failed copy_async: what it enqueued first must end
     * before the frames let go of the memory */
    uint32_t value = g->mark + 1; /* the word holds an earlier job's value (or nothing newer) */
    int mrc = cb->ops->stream_mark(ls->stream, mark, value);
    if (mrc) { /* no mark: this job drains the stream; the next takes a fresh one */
        ls->broken = true;
        if (!rc)
            snprintf(why, sizeof why, "%s", ferry_last_error());
        if (mrc == FERRY_ENOTSUP && !atomic_exchange(&lane->unmarked, true))
            LOG_WARN("shm: %s; jobs on %s:%d take streams of their own", why, lane->ops->kind, lane->dev);
    }
    ls->refs++; /* even a drained one: no other job frees it under the sync */
    pthread_mutex_unlock(&lane->lock);
    if (mrc)
        return drain_unmarked(lane, ls, g, rc, mrc, why);
    g->lane = lane;
    g->ls = ls;
    g->mark = value;
    return rc;
}

/* The device's bounded wait for ls, once the mark is overdue: 0 with the
 * mark stored, or FERRY_E* (FERRY_ETIMEDOUT from a device that hung). */
static int wait_overdue(const struct shm_lane *lane, const struct shm_lane_stream *ls, const volatile uint32_t *mark,
                        uint32_t value)
{
    int rc = lane->ops->stream_sync(ls->stream);
    if (rc) /* the device's message names it, the stream and its bound */
        return rc;
    if (__atomic_load_n(mark, __ATOMIC_ACQUIRE) != value)
        return ferry_fail(FERRY_EIO, "shm: %s:%d: a job's copies ended without their mark", lane->ops->kind,
                          lane->dev);
    return 0;
}

int shm_lane_wait(struct shm_group *g)
{
    struct shm_lane *lane = g->lane;
    struct shm_lane_stream *ls = g->ls;
    const volatile uint32_t *mark = &lane->marks[(size_t)g->id * SHM_MARK_STRIDE];
    uint64_t start = now_ns(), queried = start;
    int rc = 0;
    for (;;) {
        if (__atomic_load_n(mark, __ATOMIC_ACQUIRE) == g->mark)
            break;
        uint64_t now = now_ns();
        if (now - start >= POLL_PATIENCE_NS) {
            rc = wait_overdue(lane, ls, mark, g->mark);
            break;
        }
        if (now - queried >= POLL_QUERY_NS) {
            queried = now;
            rc = lane->ops->stream_query(ls->stream);
            if (rc == 0 && __atomic_load_n(mark, __ATOMIC_ACQUIRE) != g->mark)
                rc = ferry_fail(FERRY_EIO, "shm: %s:%d: a job's copies ended without their mark", lane->ops->kind,
                                lane->dev);
            if (rc != FERRY_EBUSY)
                break;
            rc = 0;
        }
        if (now - start < POLL_SPIN_NS) {
            sched_yield();
        } else {
            struct timespec nap = {0, 20000};
            nanosleep(&nap, NULL);
        }
    }
    if (rc) {
        if (abandoned(lane, ls))
            shm_group_keep_maps(g);
        pthread_mutex_lock(&lane->lock);
        ls->broken = true;
        pthread_mutex_unlock(&lane->lock);
    }
    release(lane, ls);
    g->lane = NULL;
    g->ls = NULL; /* g->mark stays: the next use of the word counts on from it */
    return rc;
}

void shm_lanes_free(struct shm_transport *t)
{
    for (size_t i = 0; i < SHM_LANES && t->lanes[i]; i++) {
        struct shm_lane *lane = t->lanes[i];
        for (unsigned k = 0; k < lane->width; k++)
            if (lane->cur[k])
                stream_free(lane, lane->cur[k]);
        if (lane->marks && !atomic_load(&lane->marks_kept)) /* else a hung copy may still store to them */
            lane->ops->host_free(lane->marks);
        pthread_mutex_destroy(&lane->lock);
        free(lane);
        t->lanes[i] = NULL;
    }
}

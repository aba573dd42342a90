/* SPDX-License-Identifier: Apache-2.0 */
/*
 * batch.c — batches of requests: slicing into frames, dispatch to transports,
 * completion tracking, notifications, waiting.  Checking and routing each
 * request before it enters the batch is route.c's.
 *
 * A request ends when the last of its pieces comes back; its state is then
 * COMPLETED, FAILED (first error wins, with its message) or TIMEOUT.  A batch
 * with a notification sends it once every request has COMPLETED, and counts
 * as finished only when the notification has been acknowledged.
 *
 * Threads: submit/status/wait may be called from any thread; frame
 * completions arrive on transport threads.  Everything mutable in a batch is
 * under batch->lock.
 */
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/engine.h"
#include "engine/route.h"
#include "engine/slice.h"
#include "err.h"
#include "log.h"
#include "net.h"
#include "spin.h"
#include "timespec.h"
#include "trace.h"

#define MAX_NOTIFY_TARGETS 16

struct req_slot {
    int state;
    int error;
    uint32_t remaining;      /* pieces not yet back */
    int route;
    uint64_t transferred;
    uint64_t segment;
    struct memreg_access *acc; /* on the local range, from submit until the request ends */
    char msg[160];
};

/* One submit: its frames, and one access per request to the local memory
 * it reads (WRITE) or writes (READ), so that ferry_unregister_memory of that
 * memory waits until the request has ended. */
struct plan_node {
    struct plan_node *next;
    struct slice_plan plan;
    struct memreg_access accs[];     /* one per request of the submit */
};

enum { NOTE_NONE, NOTE_WAITING, NOTE_SENDING, NOTE_DONE };

struct ferry_batch {
    ferry_engine *e;
    size_t capacity, count;
    struct req_slot *reqs;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    size_t ended;            /* requests that reached a final state */
    size_t frames_out;       /* frames handed to transports, not yet back */
    struct plan_node *plans;

    int note_state;
    uint8_t *note;
    size_t note_len;
    size_t note_ntargets;
    struct xfer_frame note_frames[MAX_NOTIFY_TARGETS];
    int note_error;
    char note_msg[160];

    atomic_int waking;       /* completions that let the lock go and have yet to broadcast
                              * (ferry_batch_free waits them out) */
    atomic_uint ends;        /* bumped before every broadcast of cond: a spinning waiter's cue */
    size_t deferred;         /* stream-ordered submits not yet made (batch_defer) */
    int deferred_error;      /* the first one that failed when it was made */
    char deferred_msg[160];
};

/* ------------------------------------------------------------ completion */

/* Ends request r: its final state.  The caller ends its access (once the
 * transports no longer touch its memory: an unregister waiting for it goes
 * on) and counts it in the engine's stats, a frame's worth at a time. */
static void end_request(struct ferry_batch *b, struct req_slot *r)
{
    r->state = r->error == 0 ? FERRY_COMPLETED : r->error == FERRY_ETIMEDOUT ? FERRY_TIMEOUT : FERRY_FAILED;
    b->ended++;
}

/* Every submitted request and the notification have ended. */
static bool all_ended(const struct ferry_batch *b)
{
    return b->ended == b->count && b->frames_out == 0 && b->note_state != NOTE_SENDING;
}

/* ... and no stream-ordered submit is still to come (batch_defer). */
static bool finished(const struct ferry_batch *b)
{
    return all_ended(b) && b->deferred == 0;
}

static void notify_frame_done(struct xfer_frame *f, int err, uint64_t refused, const char *msg);

/* Decides what to do with the notification once every request has ended.
 * Called with b->lock held; returns the number of frames to send (the caller
 * submits them after unlocking). */
static size_t notification_due(struct ferry_batch *b)
{
    if (b->note_state != NOTE_WAITING || b->ended != b->count || b->frames_out != 0)
        return 0;
    for (size_t i = 0; i < b->count; i++) {
        if (b->reqs[i].state != FERRY_COMPLETED) {
            b->note_state = NOTE_DONE;
            b->note_error = b->reqs[i].error;
            snprintf(b->note_msg, sizeof b->note_msg, "notification not sent: request %zu did not complete", i);
            return 0;
        }
    }
    b->note_state = NOTE_SENDING;
    uint64_t deadline = now_ns() + (uint64_t)b->e->cfg.request_timeout_ms * 1000000u;
    for (size_t i = 0; i < b->note_ntargets; i++) {
        struct xfer_frame *f = &b->note_frames[i];
        f->opcode = XFER_NOTIFY;
        f->notify_msg = b->note;
        f->notify_len = b->note_len;
        f->deadline_ns = deadline;
        f->complete = notify_frame_done;
        f->owner = b;
        b->frames_out++;
    }
    return b->note_ntargets;
}

/* Hands notification frames to the transports (seg_lock read). */
static void send_notifications(struct ferry_batch *b, size_t n)
{
    ferry_engine *e = b->e;
    for (size_t i = 0; i < n; i++)
        engine_submit_frame(e, &b->note_frames[i], "notification target segment was closed");
}

static void notify_frame_done(struct xfer_frame *f, int err, uint64_t refused, const char *msg)
{
    (void)refused;
    struct ferry_batch *b = f->owner;
    pthread_mutex_lock(&b->lock);
    if (err && !b->note_error) {
        b->note_error = err;
        snprintf(b->note_msg, sizeof b->note_msg, "notification: %s", msg);
    }
    if (--b->frames_out == 0)
        b->note_state = NOTE_DONE;
    atomic_fetch_add_explicit(&b->ends, 1, memory_order_release);
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
}

static void data_frame_done(struct xfer_frame *f, int err, uint64_t refused, const char *msg)
{
    struct ferry_batch *b = f->owner;
    ferry_engine *e = b->e;
    if (err == FERRY_ECONN || err == FERRY_ESTALE)
        engine_mark_stale(e, f->segment);
    if (!err && f->route != ROUTE_TRANSPORT(f->route))
        atomic_fetch_add(&e->bytes_staged[ROUTE_TRANSPORT(f->route)], f->bytes);
    struct memreg_access *ended[XFER_MAX_PIECES]; /* a frame ends at most one request per piece */
    size_t nended = 0, completed = 0;
    pthread_mutex_lock(&b->lock);
    for (uint32_t i = 0; i < f->npieces; i++) {
        const struct xfer_piece *p = &f->pieces[i];
        struct req_slot *r = &b->reqs[p->request];
        int perr = err ? err : (refused >> i & 1) ? FERRY_ERANGE : 0;
        if (perr && !r->error) {
            r->error = perr;
            snprintf(r->msg, sizeof r->msg, "%s", msg && *msg ? msg : ferry_strerror(perr));
        } else if (!perr) {
            r->transferred += p->len;
        }
        if (--r->remaining == 0) {
            end_request(b, r);
            completed += r->error == 0;
            ended[nended++] = r->acc;
            r->acc = NULL;
        }
    }
    /* under b->lock: the accesses live in the batch, which its waiter may
     * free once the lock is let go */
    memreg_access_end_many(&e->registry, ended, nended);
    int t = ROUTE_TRANSPORT(f->route); /* a request's pieces all take its route */
    if (completed)
        atomic_fetch_add(&e->req_completed[t], completed);
    if (nended > completed)
        atomic_fetch_add(&e->req_failed[t], nended - completed);
    b->frames_out--;
    size_t notes = notification_due(b);
    bool wake = all_ended(b); /* finished, or a stream-ordered submit waits for this */
    if (wake) {
        TRACE(TR_BATCH_DONE, b->count);
        atomic_fetch_add(&b->waking, 1);
        atomic_fetch_add_explicit(&b->ends, 1, memory_order_release);
    }
    pthread_mutex_unlock(&b->lock);
    if (wake) { /* after unlocking: the waiter wakes to a free lock, not to wait for it again */
        pthread_cond_broadcast(&b->cond);
        atomic_fetch_sub(&b->waking, 1);
    }
    if (notes)
        send_notifications(b, notes);
}

/* ------------------------------------------------------------ batch lifecycle */

int ferry_batch_alloc(ferry_engine *e, size_t capacity, ferry_batch **out)
{
    if (!e || !out || capacity == 0 || capacity > (1u << 24))
        return ferry_fail(FERRY_EINVAL, "batch_alloc: capacity %zu (1 - 16M allowed)", capacity);
    struct ferry_batch *b = calloc(1, sizeof *b);
    if (b)
        b->reqs = calloc(capacity, sizeof *b->reqs);
    if (!b || !b->reqs) {
        free(b);
        return ferry_fail(FERRY_ENOMEM, "batch of %zu requests", capacity);
    }
    b->e = e;
    b->capacity = capacity;
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->cond, NULL);
    *out = b;
    return 0;
}

int ferry_batch_set_notify(ferry_batch *b, const void *msg, size_t len)
{
    if (!b || (!msg && len) || len > 4096)
        return ferry_fail(FERRY_EINVAL, "batch_set_notify: message of %zu bytes (0-4096 allowed)", len);
    pthread_mutex_lock(&b->lock);
    int rc = 0;
    if (b->count) {
        rc = ferry_fail(FERRY_EBUSY, "batch_set_notify: the batch was already submitted");
    } else {
        uint8_t *copy = malloc(len + 1);
        if (!copy) {
            rc = ferry_fail(FERRY_ENOMEM, "notification copy");
        } else {
            if (len)
                memcpy(copy, msg, len);
            free(b->note);
            b->note = copy;
            b->note_len = len;
            b->note_state = NOTE_WAITING;
        }
    }
    pthread_mutex_unlock(&b->lock);
    return rc;
}

size_t ferry_batch_size(const ferry_batch *b)
{
    return b ? b->count : 0;
}

void ferry_batch_free(ferry_batch *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&b->lock);
    while (!finished(b))
        pthread_cond_wait(&b->cond, &b->lock);
    pthread_mutex_unlock(&b->lock);
    while (atomic_load(&b->waking)) /* a completion between its unlock and its broadcast: brief */
        sched_yield();
    for (struct plan_node *p = b->plans, *next; p; p = next) {
        next = p->next;
        slice_plan_free(&p->plan);
        free(p);
    }
    pthread_mutex_destroy(&b->lock);
    pthread_cond_destroy(&b->cond);
    free(b->note);
    free(b->reqs);
    free(b);
}

/* ------------------------------------------------------------ submit */

/* Builds the plan into node and initialises the request slots. Batch lock held. */
static int plan_batch(struct ferry_batch *b, struct slice_req *sreqs, size_t n, struct plan_node *node)
{
    ferry_engine *e = b->e;
    for (size_t i = 0; i < n; i++)
        sreqs[i].index = (uint32_t)(b->count + i);
    int rc = slice_plan_make(sreqs, n, e->cfg.slice_size, e->cfg.coalesce_max, &node->plan);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++) { /* field by field: a slot's message is 160 bytes nobody reads yet */
        struct req_slot *r = &b->reqs[b->count + i];
        r->state = FERRY_PENDING;
        r->error = 0;
        r->remaining = 0;
        r->route = sreqs[i].route;
        r->transferred = 0;
        r->segment = sreqs[i].segment;
        r->acc = &node->accs[i];
        r->msg[0] = '\0';
    }
    for (size_t i = 0; i < node->plan.npieces; i++)
        b->reqs[node->plan.pieces[i].request].remaining++;
    for (size_t i = 0; i < n; i++) { /* zero-length: no piece, no access; complete now */
        struct req_slot *r = &b->reqs[b->count + i];
        if (sreqs[i].len)
            continue;
        r->acc = NULL;
        end_request(b, r);
        atomic_fetch_add(&e->req_completed[ROUTE_TRANSPORT(r->route)], 1);
    }
    uint64_t deadline = now_ns() + (uint64_t)e->cfg.request_timeout_ms * 1000000u;
    for (size_t i = 0; i < node->plan.nframes; i++) {
        struct xfer_frame *f = &node->plan.frames[i];
        f->deadline_ns = deadline;
        f->complete = data_frame_done;
        f->owner = b;
    }
    return 0;
}

/* Records the distinct target segments for the notification. */
static int collect_note_targets(struct ferry_batch *b, const struct slice_req *sreqs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t k = 0;
        while (k < b->note_ntargets && b->note_frames[k].segment != sreqs[i].segment)
            k++;
        if (k < b->note_ntargets)
            continue;
        if (k == MAX_NOTIFY_TARGETS)
            return ferry_fail(FERRY_EINVAL, "a batch with a notification may name at most %d segments",
                              MAX_NOTIFY_TARGETS);
        b->note_frames[k].segment = sreqs[i].segment;
        b->note_frames[k].route = ROUTE_TRANSPORT(sreqs[i].route);
        b->note_ntargets++;
    }
    return 0;
}

/* Can n more requests go into the batch now?  b->lock held. */
static int submit_fits(const struct ferry_batch *b, size_t n)
{
    if (b->note_state != NOTE_NONE && b->count)
        return ferry_fail(FERRY_EBUSY, "a batch with a notification takes exactly one submit");
    if (n > b->capacity - b->count)
        return ferry_fail(FERRY_EFULL, "batch holds %zu of %zu requests; %zu more do not fit", b->count, b->capacity,
                          n);
    return 0;
}

/* A request's range was outside the cached descriptor (why) and fetching
 * it again failed with rc: FERRY_ERANGE as judged, unless the peer refused
 * the fetch for good (another key, another version), which is then the
 * reason to name. */
static int refresh_refused(int rc, const char *why)
{
    if (!route_refresh_failed_for_good(rc))
        return ferry_fail(FERRY_ERANGE, "%s", why);
    char refused[256];
    snprintf(refused, sizeof refused, "%s", ferry_last_error());
    return ferry_fail(rc, "%s (and %s)", refused, why);
}

static int submit_locked(struct ferry_batch *b, const struct ferry_request *reqs, size_t n,
                         struct memreg_region *locals, struct slice_req *sreqs, struct plan_node *node)
{
    ferry_engine *e = b->e;
    for (int attempt = 0;; attempt++) {
        uint64_t miss = 0;
        pthread_rwlock_rdlock(&e->seg_lock);
        int rc = route_requests(e, reqs, n, locals, sreqs, &miss);
        if (rc == FERRY_ERANGE && attempt == 0) {
            /* the target may have registered more memory since we fetched its
             * descriptor: refresh once, then judge */
            pthread_rwlock_unlock(&e->seg_lock);
            char why[256];
            snprintf(why, sizeof why, "%s", ferry_last_error());
            int refreshed = engine_refresh_segment(e, miss);
            if (refreshed)
                return refresh_refused(refreshed, why);
            continue;
        }
        if (rc) {
            pthread_rwlock_unlock(&e->seg_lock);
            return rc;
        }
        pthread_mutex_lock(&b->lock);
        /* again under the lock: another thread may have submitted to this
         * batch since ferry_batch_submit looked */
        rc = submit_fits(b, n);
        if (!rc && b->note_state == NOTE_WAITING)
            rc = collect_note_targets(b, sreqs, n);
        if (!rc)
            rc = plan_batch(b, sreqs, n, node);
        if (rc) {
            if (b->count == 0) /* the notification's one submit failed: it names no target */
                b->note_ntargets = 0;
            pthread_mutex_unlock(&b->lock);
            pthread_rwlock_unlock(&e->seg_lock);
            return rc;
        }
        node->next = b->plans;
        b->plans = node;
        b->count += n;
        b->frames_out += node->plan.nframes;
        /* Completions may run before this function ends, even inline; the
         * slots and frame count are already set up for them. */
        struct xfer_frame *frames = node->plan.frames;
        size_t nframes = node->plan.nframes; /* node may be freed once the last frame ends */
        /* zero-length requests only: nothing will come back to end the
         * batch, so its notification and its waiters go now (and it may be
         * freed from then on) */
        bool ended_now = nframes == 0;
        size_t notes = ended_now ? notification_due(b) : 0;
        if (ended_now) { /* as data_frame_done wakes: ferry_batch_free waits for `waking` */
            atomic_fetch_add(&b->waking, 1);
            atomic_fetch_add_explicit(&b->ends, 1, memory_order_release);
        }
        pthread_mutex_unlock(&b->lock);
        if (ended_now) {
            pthread_cond_broadcast(&b->cond);
            atomic_fetch_sub(&b->waking, 1);
        }
        /* staged frames go to their pool together (one group of copies),
         * after the others */
        struct xfer_frame *staged[MAX_POOLS] = {0}, **staged_tail[MAX_POOLS];
        for (size_t i = 0; i < MAX_POOLS; i++)
            staged_tail[i] = &staged[i];
        uint64_t after[FERRY_MAX_TRANSPORTS] = {0}; /* each transport's direct bytes after frame i */
        for (size_t i = nframes; i-- > 0;) {
            struct xfer_frame *f = &frames[i];
            f->more_bytes = 0;
            if (f->route == ROUTE_TRANSPORT(f->route)) {
                f->more_bytes = after[f->route];
                after[f->route] += f->bytes;
            }
        }
        for (size_t i = 0; i < nframes; i++) {
            struct xfer_frame *f = &frames[i];
            int t = ROUTE_TRANSPORT(f->route);
            if (f->route != t) {
                f->next = NULL;
                *staged_tail[ROUTE_POOL(f->route)] = f;
                staged_tail[ROUTE_POOL(f->route)] = &f->next;
                continue;
            }
            struct segment *s = engine_segment(e, f->segment);
            e->tops[t]->submit(e->tstate[t], s->peer[t], f);
        }
        for (size_t i = 0; i < MAX_POOLS; i++)
            if (staged[i])
                staging_submit_list(e->pools[i].pool, staged[i]);
        pthread_rwlock_unlock(&e->seg_lock);
        if (notes) /* the batch is not finished before they come back */
            send_notifications(b, notes);
        return 0;
    }
}

int ferry_batch_submit(ferry_batch *b, const struct ferry_request *reqs, size_t n)
{
    if (!b || (!reqs && n))
        return ferry_fail(FERRY_EINVAL, "batch_submit: NULL argument");
    if (n == 0)
        return 0;
    TRACE(TR_BATCH_SUBMIT, n);
    pthread_mutex_lock(&b->lock);
    int fits = submit_fits(b, n); /* checked again when the requests take their slots */
    pthread_mutex_unlock(&b->lock);
    if (fits)
        return fits;
    ferry_engine *e = b->e;
    struct memreg_region *locals = malloc(n * sizeof *locals);
    struct slice_req *sreqs = malloc(n * sizeof *sreqs);
    struct plan_node *node = calloc(1, sizeof *node + n * sizeof node->accs[0]);
    int rc = locals && sreqs && node ? 0 : ferry_fail(FERRY_ENOMEM, "submit of %zu requests", n);
    size_t begun = 0;
    if (!rc)
        rc = route_locals_begin(e, reqs, n, locals, node->accs, &begun);
    if (!rc)
        rc = route_refresh_stale(e, reqs, n);
    if (!rc)
        rc = submit_locked(b, reqs, n, locals, sreqs, node);
    TRACE(TR_BATCH_SUBMITTED, n);
    if (rc && node) { /* nothing was submitted: give the accesses back */
        route_locals_end(e, reqs, n, node->accs, begun);
        free(node);
    }
    free(locals);
    free(sreqs);
    return rc;
}

/* ------------------------------------------------------------ deferred submits */

int batch_defer(ferry_batch *b, const struct ferry_request *reqs, size_t n)
{
    if (!b || !reqs || n == 0)
        return ferry_fail(FERRY_EINVAL, "submit_on_stream: NULL argument or no request");
    pthread_mutex_lock(&b->lock);
    int rc = b->count || b->deferred ? ferry_fail(FERRY_EBUSY, "a stream-ordered submit needs a batch of its own")
             : n > b->capacity     ? ferry_fail(FERRY_EFULL, "batch holds %zu requests; %zu do not fit", b->capacity, n)
                                   : 0;
    pthread_mutex_unlock(&b->lock);
    ferry_engine *e = b->e;
    struct memreg_region *locals = rc ? NULL : malloc(n * sizeof *locals);
    struct slice_req *sreqs = rc ? NULL : malloc(n * sizeof *sreqs);
    struct memreg_access *accs = rc ? NULL : malloc(n * sizeof *accs);
    if (!rc && (!locals || !sreqs || !accs))
        rc = ferry_fail(FERRY_ENOMEM, "submit_on_stream of %zu requests", n);
    if (!rc) { /* validation only: the run submits (and accesses) later */
        size_t begun = 0;
        rc = route_locals_begin(e, reqs, n, locals, accs, &begun);
        route_locals_end(e, reqs, n, accs, begun);
    }
    free(accs);
    for (int attempt = 0; !rc; attempt++) { /* the remote side, as submit_locked judges it */
        uint64_t miss = 0;
        pthread_rwlock_rdlock(&e->seg_lock);
        rc = route_requests(e, reqs, n, locals, sreqs, &miss);
        pthread_rwlock_unlock(&e->seg_lock);
        if (rc != FERRY_ERANGE || attempt > 0)
            break;
        char why[256];
        snprintf(why, sizeof why, "%s", ferry_last_error());
        rc = engine_refresh_segment(e, miss);
        if (rc)
            rc = refresh_refused(rc, why);
        if (rc)
            break;
    }
    free(locals);
    free(sreqs);
    if (!rc) {
        pthread_mutex_lock(&b->lock);
        b->deferred++;
        pthread_mutex_unlock(&b->lock);
    }
    return rc;
}

ferry_engine *batch_engine(const ferry_batch *b)
{
    return b->e;
}

/* A deferred submit is over: the batch may finish (and be freed) once the
 * lock is let go.  b->lock held on entry, released on return. */
static void defer_done_unlock(ferry_batch *b)
{
    b->deferred--;
    atomic_fetch_add_explicit(&b->ends, 1, memory_order_release);
    pthread_cond_broadcast(&b->cond);
    pthread_mutex_unlock(&b->lock);
}

int batch_defer_run(ferry_batch *b, const struct ferry_request *reqs, size_t n)
{
    int rc = ferry_batch_submit(b, reqs, n);
    pthread_mutex_lock(&b->lock);
    if (rc) {
        b->deferred_error = rc;
        snprintf(b->deferred_msg, sizeof b->deferred_msg, "stream-ordered submit: %s", ferry_last_error());
    }
    while (!all_ended(b))
        pthread_cond_wait(&b->cond, &b->lock);
    for (size_t i = 0; i < b->count && !rc; i++)
        if (b->reqs[i].state != FERRY_COMPLETED)
            rc = ferry_fail(b->reqs[i].error, "request %zu: %s", i, b->reqs[i].msg);
    if (!rc && b->note_error)
        rc = ferry_fail(b->note_error, "%s", b->note_msg);
    defer_done_unlock(b);
    return rc;
}

void batch_defer_withdraw(ferry_batch *b)
{
    pthread_mutex_lock(&b->lock);
    defer_done_unlock(b);
}

bool batch_has_notify(const ferry_batch *b)
{
    return b->note_state != NOTE_NONE;
}

void batch_defer_end(ferry_batch *b, const struct ferry_request *reqs, size_t n, int rc, const char *msg)
{
    pthread_mutex_lock(&b->lock);
    for (size_t i = 0; i < n; i++) {
        struct req_slot *r = &b->reqs[i];
        *r = (struct req_slot){.error = rc, .route = -1, .segment = reqs[i].target,
                               .transferred = rc ? 0 : reqs[i].length};
        if (rc)
            snprintf(r->msg, sizeof r->msg, "%s", msg);
        end_request(b, r);
    }
    b->count = n;
    if (rc) {
        b->deferred_error = rc;
        snprintf(b->deferred_msg, sizeof b->deferred_msg, "stream-ordered copy: %s", msg);
    }
    defer_done_unlock(b);
}

void batch_defer_end_each(ferry_batch *b, const struct ferry_request *reqs, size_t n, const struct ferry_status *st)
{
    pthread_mutex_lock(&b->lock);
    for (size_t i = 0; i < n; i++) {
        struct req_slot *r = &b->reqs[i];
        *r = (struct req_slot){.error = st[i].error, .route = -1, .segment = reqs[i].target,
                               .transferred = st[i].error ? 0 : st[i].transferred};
        if (st[i].error)
            snprintf(r->msg, sizeof r->msg, "%s", st[i].message);
        end_request(b, r);
    }
    b->count = n;
    defer_done_unlock(b);
}

void batch_defer_cancel(ferry_batch *b, const char *why)
{
    pthread_mutex_lock(&b->lock);
    if (!b->deferred_error) {
        b->deferred_error = FERRY_ECANCELED;
        snprintf(b->deferred_msg, sizeof b->deferred_msg, "stream-ordered submit: %s", why);
    }
    defer_done_unlock(b);
}

/* ------------------------------------------------------------ status and wait */

int ferry_batch_status(ferry_batch *b, size_t index, struct ferry_status *st)
{
    if (!b || !st)
        return ferry_fail(FERRY_EINVAL, "batch_status: NULL argument");
    pthread_mutex_lock(&b->lock);
    int rc = 0;
    if (index >= b->count) {
        rc = ferry_fail(FERRY_EINVAL, "batch_status: index %zu, %zu submitted", index, b->count);
    } else {
        const struct req_slot *r = &b->reqs[index];
        st->state = r->state;
        st->error = r->error;
        st->transferred = r->transferred;
        snprintf(st->message, sizeof st->message, "%s", r->msg);
    }
    pthread_mutex_unlock(&b->lock);
    return rc;
}

/* Before sleeping on cond: polls b->ends for up to FERRY_WAIT_SPIN_US, so
 * that a batch ending soon wakes its waiter without a futex wake-up (which
 * costs microseconds, tens in a VM).  Only a thread waiting for a batch
 * spins, only that long (never past its timeout), only while recent waits
 * were shorter (wait_learn), and only with a look of the process's budget
 * (common/spin.h: at most half the usable CPUs look at once, the tcp
 * targets' and receivers' looks included): an idle engine spends nothing,
 * and many waiters cannot take every core.  b->lock held on entry and on return; the caller checks
 * finished() again. */
static void spin_for_end(struct ferry_batch *b, uint64_t spin_ns)
{
    if (!spin_claim())
        return;
    unsigned seen = atomic_load_explicit(&b->ends, memory_order_relaxed);
    pthread_mutex_unlock(&b->lock);
    uint64_t start = now_ns();
    while (atomic_load_explicit(&b->ends, memory_order_acquire) == seen && now_ns() - start < spin_ns)
        sched_yield();
    spin_release();
    pthread_mutex_lock(&b->lock);
}

/* How long waits for unfinished batches take, lately (a moving mean over
 * the engine's waiters; a race between two updates loses one sample).  A
 * waiter spins only while this is below FERRY_WAIT_SPIN_US: where batches
 * take longer (large or staged ones), the spin would only burn the time. */
static void wait_learn(ferry_engine *e, uint64_t took_ns)
{
    uint64_t mean = atomic_load_explicit(&e->wait_recent_ns, memory_order_relaxed);
    atomic_store_explicit(&e->wait_recent_ns, mean - mean / 4 + took_ns / 4, memory_order_relaxed);
}

int ferry_batch_wait(ferry_batch *b, int timeout_ms)
{
    if (!b)
        return ferry_fail(FERRY_EINVAL, "batch_wait: batch is NULL");
    struct timespec until = timespec_in_ms(CLOCK_REALTIME, timeout_ms >= 0 ? timeout_ms : 0);
    pthread_mutex_lock(&b->lock);
    ferry_engine *e = b->e;
    uint64_t spin_ns = e->wait_spin_ns, began = 0;
    if (timeout_ms >= 0 && spin_ns > (uint64_t)timeout_ms * 1000000u)
        spin_ns = (uint64_t)timeout_ms * 1000000u;
    if (spin_ns && !finished(b)) {
        began = now_ns();
        if (atomic_load_explicit(&e->wait_recent_ns, memory_order_relaxed) < spin_ns)
            spin_for_end(b, spin_ns);
    }
    while (!finished(b)) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&b->cond, &b->lock);
        } else if (pthread_cond_timedwait(&b->cond, &b->lock, &until) == ETIMEDOUT && !finished(b)) {
            /* (read under the lock: another thread may free the batch once it ends) */
            size_t count = b->count, left = count - b->ended;
            pthread_mutex_unlock(&b->lock);
            if (began)
                wait_learn(e, now_ns() - began);
            return ferry_fail(FERRY_ETIMEDOUT, "batch_wait: %zu of %zu requests still running after %d ms", left,
                              count, timeout_ms);
        }
    }
    if (began)
        wait_learn(e, now_ns() - began);
    int rc = 0;
    for (size_t i = 0; i < b->count && !rc; i++) {
        if (b->reqs[i].state != FERRY_COMPLETED)
            rc = ferry_fail(b->reqs[i].error, "request %zu %s: %s", i,
                            b->reqs[i].state == FERRY_TIMEOUT ? "timed out" : "failed", b->reqs[i].msg);
    }
    if (!rc && b->deferred_error)
        rc = ferry_fail(b->deferred_error, "%s", b->deferred_msg);
    if (!rc && b->note_error)
        rc = ferry_fail(b->note_error, "%s", b->note_msg);
    size_t count = b->count; /* the batch may be freed by another waiter once the lock goes */
    pthread_mutex_unlock(&b->lock);
    TRACE(TR_BATCH_WOKEN, count);
    return rc;
}

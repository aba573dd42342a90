/* SPDX-License-Identifier: Apache-2.0 */
/*
 * stream_bounce.c — stream-ordered transfers of device memory to another
 * engine through pinned bounce buffers (see stream_bounce_submit).
 *
 * While the caller's stream waits for a transfer, no ferry thread may do
 * device work for it: on CUDA a kernel's first launch under lazy module
 * loading (and other calls) waits for every stream, so the two would wait
 * for each other for ever (docs/ARCHITECTURE.md, "Stream-ordered transfers
 * and the CUDA driver").  So the copies between device memory and the bounce
 * buffer go on the caller's stream itself and the transfer moves host
 * memory only.
 *
 * Threads: the submitting thread (stream_bounce_submit), a runner worker
 * (the inner READ batch), the driver's threads (host functions: locks
 * only).  Owns the bounce buffers, through the runner: grown on demand up
 * to FERRY_STREAM_BOUNCE_MB, freed with the runner.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device/device.h"
#include "engine/engine.h"
#include "engine/route.h"
#include "engine/stream_internal.h"
#include "err.h"
#include "log.h"

/* A bounced READ is over: the stream copied the bounce buffer into the
 * device memory (or could not: after_rc), and the transfer's outcome is in
 * j->st.  Ends the caller's batch with each request's outcome. */
static void bounce_finish(struct stream_runner *r, struct stream_job *j)
{
    pthread_mutex_lock(&r->lock);
    if (!stream_mark_ran_locked(&j->mark) && !j->after_rc) {
        j->after_rc = FERRY_EIO;
        snprintf(j->after_msg, sizeof j->after_msg, "stream-ordered copies into device memory: %s",
                 COPY_FAILED_MSG);
    }
    pthread_mutex_unlock(&r->lock);
    for (size_t i = 0; i < j->n && j->after_rc; i++)
        if (!j->st[i].error && j->orig[i].opcode == FERRY_READ && j->orig[i].source != j->reqs[i].source) {
            j->st[i].error = j->after_rc;
            snprintf(j->st[i].message, sizeof j->st[i].message, "%s", j->after_msg);
        }
    pthread_mutex_lock(&r->lock);
    if (!r->stop)
        memreg_access_end_many(&r->e->registry, j->acc_ptrs, j->naccs);
    batch_defer_end_each(j->batch, j->orig, j->n, j->st);
    stream_job_free_locked(r, j);
    pthread_mutex_unlock(&r->lock);
}

/* The transfer into the bounce buffer ended: the stream may go on to its
 * copies out, then to its host function (bounce_end_reached), which ends the
 * batch; or, where that could not be enqueued, this does. */
void stream_bounce_net_done(struct stream_runner *r, struct stream_job *j)
{
    if (j->local_rc) /* nothing ran: every request takes that error */
        for (size_t i = 0; i < j->n; i++)
            j->st[i] = (struct ferry_status){.state = FERRY_FAILED, .error = j->local_rc};
    for (size_t i = 0; i < j->n; i++) {
        if (j->local_rc)
            snprintf(j->st[i].message, sizeof j->st[i].message, "%s", j->local_msg);
        /* a failed READ leaves zeros, not an earlier transfer's bytes, for
         * the stream to copy into its destination */
        if (j->st[i].error && j->orig[i].source != j->reqs[i].source)
            memset(j->reqs[i].source, 0, j->reqs[i].length);
    }
    pthread_mutex_lock(&r->lock); /* (one section: bounce_end_here reads both) */
    j->net_done = true;
    stream_job_flag_locked(j);
    bool here = j->end_here;
    pthread_mutex_unlock(&r->lock);
    if (here)
        bounce_finish(r, j);
}

/* The stream copied the bytes out after its wait for the flag: the transfer
 * is over. */
static void bounce_end_reached(void *arg)
{
    struct stream_job *j = arg;
    bounce_finish(j->r, j);
}

/* No host function will end the batch: the transfer's end does (or this, if
 * it came first). */
static void bounce_end_here(struct stream_runner *r, struct stream_job *j)
{
    pthread_mutex_lock(&r->lock);
    bool done = j->net_done;
    j->end_here = !done;
    pthread_mutex_unlock(&r->lock);
    if (done)
        bounce_finish(r, j);
}

/* The requests of a bounced job that go to the transfer (not those to the
 * own segment, which the stream copied: COMPLETED, or failed with the job's
 * local_rc), on a batch of their own; each one's outcome in j->st.  0 or
 * the error of a call that sent nothing. */
static int bounce_transfer(struct stream_runner *r, struct stream_job *j)
{
    struct ferry_request *net = malloc(j->n * sizeof *net);
    size_t *at = malloc(j->n * sizeof *at), k = 0;
    if (!net || !at) {
        free(net);
        free(at);
        return ferry_fail(FERRY_ENOMEM, "a stream-ordered transfer of %zu requests", j->n);
    }
    for (size_t i = 0; i < j->n; i++) {
        if (!j->own[i]) {
            net[k] = j->reqs[i];
            at[k++] = i;
        } else
            j->st[i] = (struct ferry_status){.state = FERRY_COMPLETED, .transferred = j->reqs[i].length};
    }
    ferry_batch *in = NULL;
    int rc = k ? ferry_batch_alloc(r->e, k, &in) : 0;
    if (k && !rc && (rc = ferry_batch_submit(in, net, k)) == 0) {
        ferry_batch_wait(in, -1);
        for (size_t q = 0; q < k; q++)
            ferry_batch_status(in, q, &j->st[at[q]]);
    }
    ferry_batch_free(in);
    free(net);
    free(at);
    return rc;
}

/* A bounced READ's (or own-segment copies') transfer, on a batch of its
 * own. */
void stream_bounce_run_inner(struct stream_runner *r, struct stream_job *j)
{
    int rc = j->local_rc ? 0 : bounce_transfer(r, j);
    if (rc && !j->local_rc) {
        j->local_rc = rc;
        snprintf(j->local_msg, sizeof j->local_msg, "stream-ordered submit: %s", ferry_last_error());
    }
    if (j->local_rc)
        LOG_WARN("stream-ordered transfer failed: %s: %s (the stream goes on)", ferry_err_name(j->local_rc),
                 j->local_msg);
    stream_bounce_net_done(r, j);
}

/* A free bounce buffer of ops with room for len bytes, the smallest such, or
 * a new one while the runner's total stays within FERRY_STREAM_BOUNCE_MB.
 * 0 with *out set; 1 when none may be had (the caller takes the usual
 * path); else the error.  Allocating and registering pinned memory does not
 * wait for other streams (measured: bench/cuda_sync_probe.c). */
static int bounce_take(struct stream_runner *r, const struct ferry_device_ops *ops, size_t len, struct bounce **out)
{
    size_t size = BOUNCE_MIN;
    while (size < len && size <= SIZE_MAX / 2)
        size *= 2;
    pthread_mutex_lock(&r->lock);
    struct bounce **best = NULL;
    for (struct bounce **p = &r->bounces; *p; p = &(*p)->next)
        if ((*p)->ops == ops && (*p)->len >= len && (!best || (*p)->len < (*best)->len))
            best = p;
    *out = best ? *best : NULL;
    if (best)
        *best = (*out)->next;
    else if (size > r->bounce_max && len <= r->bounce_max)
        size = (len + (1u << 20) - 1) & ~(size_t)((1u << 20) - 1); /* the last room left, to the MiB */
    bool grow = !best && size >= len && r->bounce_bytes <= r->bounce_max && size <= r->bounce_max - r->bounce_bytes;
    if (grow)
        r->bounce_bytes += size; /* reserved before the allocation, which runs unlocked */
    pthread_mutex_unlock(&r->lock);
    if (*out || !grow)
        return *out ? 0 : 1;
    struct bounce *b = calloc(1, sizeof *b);
    void *mem = NULL;
    int rc = b ? ops->host_alloc(size, &mem) : ferry_fail(FERRY_ENOMEM, "stream ordering: a bounce buffer");
    if (!rc && (rc = ferry_register_memory(r->e, mem, size, "cpu", 0)) != 0)
        ops->host_free(mem);
    if (rc) {
        free(b);
        pthread_mutex_lock(&r->lock);
        r->bounce_bytes -= size;
        pthread_mutex_unlock(&r->lock);
        return rc;
    }
    *b = (struct bounce){.ops = ops, .mem = mem, .len = size};
    *out = b;
    return 0;
}

/* The stream may still use j's bounce buffer (a copy or a mark it was not
 * told the end of): it is never reused, and it leaves FERRY_STREAM_BOUNCE_MB's
 * count now, not when the job is freed, which may come after the batch has
 * ended: the caller's next submit must find the room it gave back. */
static void bounce_lose(struct stream_runner *r, struct stream_job *j)
{
    pthread_mutex_lock(&r->lock);
    if (j->bounce && !j->bounce_lost)
        r->bounce_bytes -= j->bounce->len;
    j->bounce_lost = true;
    pthread_mutex_unlock(&r->lock);
}

/* The copies of one direction between the requests marked in `dirs` and
 * their places in the bounce buffer (reqs: the rewritten requests). */
static int bounce_copies(const struct ferry_device_ops *ops, int dev, void *stream, enum ferry_copy_dir dir,
                         const struct ferry_request *orig, const struct ferry_request *reqs, const int *dirs,
                         size_t n, struct ferry_copy *c)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (dirs[i] == (int)dir)
            c[m++] = dir == FERRY_COPY_D2H ? (struct ferry_copy){reqs[i].source, orig[i].source, orig[i].length}
                                           : (struct ferry_copy){orig[i].source, reqs[i].source, orig[i].length};
    return m ? ops->stream_copy(dev, stream, dir, c, m) : 0;
}

/* The copies of the requests to the own segment (own_dirs[i]: the
 * direction, or -1), a direction at a time. */
static int own_copies(const struct ferry_device_ops *ops, int dev, void *stream, const struct ferry_request *reqs,
                      const int *own_dirs, size_t n, struct ferry_copy *c)
{
    for (int dir = FERRY_COPY_D2H; dir <= FERRY_COPY_D2D; dir++) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            if (own_dirs[i] != dir)
                continue;
            void *local = reqs[i].source, *own = (void *)(uintptr_t)reqs[i].target_offset;
            c[m++] = reqs[i].opcode == FERRY_WRITE ? (struct ferry_copy){own, local, reqs[i].length}
                                                   : (struct ferry_copy){local, own, reqs[i].length};
        }
        int rc = m ? ops->stream_copy(dev, stream, (enum ferry_copy_dir)dir, c, m) : 0;
        if (rc)
            return rc;
    }
    return 0;
}

/* What stream_bounce_submit makes of a batch (bounce_plan). */
struct bounce_plan {
    struct memreg_region *regs; /* the requests' sources, then the own requests' targets */
    struct memreg_want *w;
    int *dirs;                  /* a request's copy through the bounce buffer, or -1 */
    int *own_dirs;              /* an own-segment request's copy on the stream, or -1 */
    struct ferry_copy *c;
    size_t begun;               /* accesses begun: j->accs[0, begun) */
    size_t total, ndev, nown;   /* the bounce buffer's bytes; requests through it; own copies */
    bool reads;                 /* a READ into device memory: its copies follow the transfer */
};

/* Begins the accesses to the batch's local ranges and its own-segment
 * targets (validated by batch_defer: they last until the stream's copies of
 * them ran) and decides each request's way.  Whether the batch may go this
 * way (p->begun accesses to end if not). */
static bool bounce_plan(ferry_engine *e, const struct ferry_device_ops *ops, int dev, const struct ferry_request *reqs,
                        size_t n, struct stream_job *j, struct bounce_plan *p)
{
    stream_to_self(e, reqs, n, j->own);
    size_t m = 0, mo = 0;
    for (size_t i = 0; i < n; i++)
        m += reqs[i].length != 0;
    for (size_t i = 0, k = 0; i < n; i++) {
        if (!reqs[i].length)
            continue;
        p->w[k] = (struct memreg_want){(uint64_t)(uintptr_t)reqs[i].source, reqs[i].length, &j->accs[k], &p->regs[k]};
        k++;
        if (j->own[i]) {
            p->w[m + mo] = (struct memreg_want){reqs[i].target_offset, reqs[i].length, &j->accs[m + mo],
                                                &p->regs[m + mo]};
            mo++;
        }
    }
    size_t got = 0;
    bool eligible = memreg_access_begin_many(&e->registry, p->w, m, 0, NULL, NULL, &got) == 0;
    p->begun = got;
    if (eligible && mo) {
        got = 0;
        eligible = memreg_access_begin_many(&e->registry, p->w + m, mo, 1, NULL, NULL, &got) == 0;
        p->begun = m + got;
    }
    for (size_t i = 0, k = 0, ko = 0; i < n && eligible; i++) {
        p->dirs[i] = p->own_dirs[i] = -1;
        if (!reqs[i].length)
            continue;
        const struct memreg_region *reg = &p->regs[k++];
        int side = stream_side_of(reg, ops, dev);
        eligible = side >= 0;
        bool write = reqs[i].opcode == FERRY_WRITE;
        if (j->own[i]) { /* copied on the stream, as local_submit does */
            int tside = stream_side_of(&p->regs[m + ko++], ops, dev);
            int from = write ? side : tside, to = write ? tside : side;
            eligible = eligible && tside >= 0;
            j->own[i] = from || to; /* (host memory on both sides: the transfer moves it) */
            if (j->own[i]) {
                p->own_dirs[i] = from && to ? FERRY_COPY_D2D : from ? FERRY_COPY_D2H : FERRY_COPY_H2D;
                p->nown++;
            }
        } else if (side == 1 && !route_device_by_nic(e, &reqs[i], reg)) {
            p->dirs[i] = write ? FERRY_COPY_D2H : FERRY_COPY_H2D;
            p->reads |= !write;
            p->total += (reqs[i].length + BOUNCE_ALIGN - 1) & ~(size_t)(BOUNCE_ALIGN - 1);
            p->ndev++;
        }
    }
    return eligible && (p->ndev || p->nown);
}

static void bounce_plan_free(struct bounce_plan *p)
{
    free(p->regs);
    free(p->w);
    free(p->dirs);
    free(p->own_dirs);
    free(p->c);
}

/* The job of a batch and the plan's arrays.  0 or FERRY_ENOMEM. */
static int bounce_job_alloc(size_t n, struct stream_job **out, struct bounce_plan *p)
{
    struct stream_job *j = calloc(1, sizeof *j);
    *p = (struct bounce_plan){.regs = calloc(2 * n, sizeof *p->regs), .w = calloc(2 * n, sizeof *p->w),
                              .dirs = calloc(n, sizeof *p->dirs), .own_dirs = calloc(n, sizeof *p->own_dirs),
                              .c = calloc(n, sizeof *p->c)};
    if (j) {
        j->accs = calloc(2 * n, sizeof *j->accs);
        j->acc_ptrs = calloc(2 * n, sizeof *j->acc_ptrs);
        j->reqs = malloc(n * sizeof *j->reqs);
        j->orig = malloc(n * sizeof *j->orig);
        j->st = calloc(n, sizeof *j->st);
        j->own = calloc(n, sizeof *j->own);
    }
    *out = j;
    if (j && p->regs && p->w && p->dirs && p->own_dirs && p->c && j->accs && j->acc_ptrs && j->reqs && j->orig &&
        j->st && j->own)
        return 0;
    return ferry_fail(FERRY_ENOMEM, "submit_on_stream of %zu requests", n);
}

/* Requests to another engine whose local memory is device memory of the
 * stream's device move through a pinned host buffer, with the copies on the
 * caller's stream itself: a WRITE's device-to-host copies before the
 * transfer, a READ's host-to-device copies after the stream's wait for it.
 * Requests of the batch to the engine's own segment with device memory on
 * either side are copies on the stream before the transfer, which skips
 * them (as local_submit does for a batch of them only).  So no ferry thread
 * does device work for the batch while the stream waits: a call of another
 * thread that waits for every stream (a kernel's first launch under lazy
 * module loading) cannot then wait for the transfer while the transfer
 * waits for it.  The transfer itself runs on host memory (the runner's
 * bounce buffers, registered with the engine).  Where a request's memory is
 * another device's, or a batch with READs or own-segment requests has a
 * notification, or the buffer would pass FERRY_STREAM_BOUNCE_MB, returns 1:
 * the usual path (staged by ferry's threads).  0: enqueued; else the error,
 * with nothing enqueued. */
int stream_bounce_submit(ferry_batch *b, const struct ferry_device_ops *ops, int dev, void *stream,
                         const struct ferry_request *reqs, size_t n, struct stream_runner *r, int *late)
{
    if (!ops->stream_copy || r->bounce_max == 0)
        return 1;
    ferry_engine *e = batch_engine(b);
    struct stream_job *j;
    struct bounce_plan p;
    int rc = bounce_job_alloc(n, &j, &p);
    if (rc)
        goto out;
    bool eligible = bounce_plan(e, ops, dev, reqs, n, j, &p);
    bool inner = p.reads || p.nown; /* (a WRITE's job may be over and freed once its host function is enqueued) */
    eligible = eligible && !(inner && batch_has_notify(b));
    if (eligible && p.total && (rc = bounce_take(r, ops, p.total, &j->bounce)) != 0) {
        if (rc == 1) {
            static atomic_int said;
            if (!atomic_exchange(&said, 1))
                LOG_WARN("stream ordering: %zu bytes of device memory would pass FERRY_STREAM_BOUNCE_MB (%zu MiB "
                         "in all): ferry's threads stage them while the stream waits (docs/ARCHITECTURE.md)",
                         p.total, r->bounce_max >> 20);
        }
        eligible = false;
    }
    for (size_t k = 0; k < p.begun; k++)
        j->acc_ptrs[k] = &j->accs[k];
    if (!eligible) {
        memreg_access_end_many(&e->registry, j->acc_ptrs, p.begun);
        rc = rc < 0 ? rc : 1;
        goto out;
    }
    memcpy(j->orig, reqs, n * sizeof *reqs);
    memcpy(j->reqs, reqs, n * sizeof *reqs);
    for (size_t i = 0, off = 0; i < n; i++)
        if (p.dirs[i] >= 0) {
            j->reqs[i].source = j->bounce->mem + off;
            off += (reqs[i].length + BOUNCE_ALIGN - 1) & ~(size_t)(BOUNCE_ALIGN - 1);
        }
    j->naccs = p.begun;
    j->r = r;
    j->batch = b;
    j->n = n;
    j->bounced = true;
    j->inner = inner;
    bool out = p.nown > 0; /* copies before the transfer: a WRITE's, a mixed batch's, the own segment's */
    for (size_t i = 0; i < n && !out; i++)
        out = p.dirs[i] == FERRY_COPY_D2H;
    /* the marks: after the copies before the transfer (an inner job's
     * mark_out), after those into device memory (an inner job's mark) */
    struct stream_mark *marks[2], **mk = marks;
    if (out)
        *mk++ = inner ? &j->mark_out : &j->mark;
    if (inner)
        *mk++ = &j->mark;
    pthread_mutex_lock(&r->lock); /* every slot of the job before anything is enqueued */
    rc = stream_slots_take_locked(r, ops, j, true, marks, (size_t)(mk - marks));
    if (!rc)
        r->in_flight++;
    pthread_mutex_unlock(&r->lock);
    if (rc) {
        memreg_access_end_many(&e->registry, j->acc_ptrs, j->naccs);
        pthread_mutex_lock(&r->lock); /* (stream_slots_take_locked took none) */
        if (j->bounce) {
            j->bounce->next = r->bounces;
            r->bounces = j->bounce;
        }
        pthread_mutex_unlock(&r->lock);
        goto out;
    }
    /* from here on the job ends the batch, whatever fails */
    if ((rc = bounce_copies(ops, dev, stream, FERRY_COPY_D2H, reqs, j->reqs, p.dirs, n, p.c)) != 0 ||
        (rc = own_copies(ops, dev, stream, reqs, p.own_dirs, n, p.c)) != 0) {
        j->local_rc = rc; /* the stream may have some of them: its buffer is never reused */
        snprintf(j->local_msg, sizeof j->local_msg, "stream-ordered copies before the transfer: %s",
                 ferry_last_error());
        bounce_lose(r, j);
    }
    char why[256] = "", mwhy[200] = "";
    int mrc = out ? stream_mark_enqueue(r, ops, dev, stream, inner ? &j->mark_out : &j->mark) : 0;
    if (mrc) { /* a failed copy would pass unseen: nothing may be sent */
        snprintf(mwhy, sizeof mwhy, "the stream refused the mark after its copies: %s", ferry_last_error());
        if (!j->local_rc) {
            j->local_rc = mrc;
            snprintf(j->local_msg, sizeof j->local_msg, "%.150s", mwhy);
        }
        bounce_lose(r, j);
    }
    volatile uint32_t *flag = &j->page->flags[j->slot];
    uint32_t value = j->value;
    int hrc = ops->stream_host_func(dev, stream, stream_on_reached, j);
    if (hrc) {
        /* the stream will not say when its copies ran: the transfer cannot start */
        rc = hrc;
        snprintf(why, sizeof why, "%s", ferry_last_error());
        if (!j->local_rc) {
            j->local_rc = rc;
            snprintf(j->local_msg, sizeof j->local_msg, "submit_on_stream: %.120s", why);
        }
        bounce_lose(r, j);
        stream_drain_refused(ops, dev, stream); /* (the copies before it end the accesses of a WRITE's job) */
        stream_on_reached(j); /* ends it with local_rc (an inner job's end also needs its host function below) */
        if (!inner) {
            bounce_plan_free(&p);
            *late = ferry_fail(rc, "submit_on_stream: %s (nothing was sent)", why);
            return 0;
        }
    }
    int wrc = stream_enqueue_wait(ops, dev, stream, flag, value);
    if (inner) {
        if (!wrc && (rc = bounce_copies(ops, dev, stream, FERRY_COPY_H2D, reqs, j->reqs, p.dirs, n, p.c)) != 0) {
            j->after_rc = rc;
            snprintf(j->after_msg, sizeof j->after_msg, "stream-ordered copies into device memory: %s",
                     ferry_last_error());
        }
        int arc = wrc ? 0 : stream_mark_enqueue(r, ops, dev, stream, &j->mark);
        if (arc && !j->after_rc) {
            j->after_rc = arc;
            snprintf(j->after_msg, sizeof j->after_msg, "the stream refused the mark after its copies into device "
                     "memory: %s", ferry_last_error());
        }
        if (wrc || ops->stream_host_func(dev, stream, bounce_end_reached, j) != 0) {
            if (!j->after_rc) {
                j->after_rc = wrc ? wrc : FERRY_EIO;
                snprintf(j->after_msg, sizeof j->after_msg, "the stream cannot copy the bytes read into device "
                         "memory after the transfer");
            }
            bounce_lose(r, j);
            if (!wrc) /* the copies into device memory may still run after the transfer */
                stream_drain_refused(ops, dev, stream);
            bounce_end_here(r, j);
        }
    }
    bounce_plan_free(&p);
    *late = hrc ? ferry_fail(hrc, "submit_on_stream: %s (nothing was sent)", why)
            : mrc ? ferry_fail(mrc, "submit_on_stream: %s (nothing was sent)", mwhy)
                  : wrc;
    return 0;
out:
    stream_job_free_memory(j);
    bounce_plan_free(&p);
    return rc;
}

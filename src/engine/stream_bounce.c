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
        if (!j->st[i].error && j->orig[i].source != j->reqs[i].source) {
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

/* A bounced READ's transfer into the bounce buffer, on a batch of its own. */
void stream_bounce_run_inner(struct stream_runner *r, struct stream_job *j)
{
    ferry_batch *in = NULL;
    int rc = j->local_rc ? 0 : ferry_batch_alloc(r->e, j->n, &in);
    if (!rc && !j->local_rc && (rc = ferry_batch_submit(in, j->reqs, j->n)) == 0) {
        ferry_batch_wait(in, -1);
        for (size_t i = 0; i < j->n; i++)
            ferry_batch_status(in, i, &j->st[i]);
    }
    if (rc && !j->local_rc) {
        j->local_rc = rc;
        snprintf(j->local_msg, sizeof j->local_msg, "stream-ordered submit: %s", ferry_last_error());
    }
    ferry_batch_free(in);
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

/* Requests to another engine whose local memory is device memory of the
 * stream's device move through a pinned host buffer, with the copies on the
 * caller's stream itself: a WRITE's device-to-host copies before the
 * transfer, a READ's host-to-device copies after the stream's wait for it.
 * So no ferry thread does device work for the transfer while the stream
 * waits: a call of another thread that waits for every stream (a kernel's
 * first launch under lazy module loading) cannot then wait for the transfer
 * while the transfer waits for it.  The transfer itself runs on host memory
 * (the runner's bounce buffers, registered with the engine).  Where a
 * request's memory is another device's, or a READ batch has a
 * notification, or the buffer would pass FERRY_STREAM_BOUNCE_MB, returns 1:
 * the usual path (staged by ferry's threads).  0: enqueued; else the error,
 * with nothing enqueued. */
int stream_bounce_submit(ferry_batch *b, const struct ferry_device_ops *ops, int dev, void *stream,
                         const struct ferry_request *reqs, size_t n, struct stream_runner *r, int *late)
{
    if (!ops->stream_copy || r->bounce_max == 0)
        return 1;
    ferry_engine *e = batch_engine(b);
    struct stream_job *j = calloc(1, sizeof *j);
    struct memreg_region *regs = calloc(n, sizeof *regs);
    struct memreg_want *w = calloc(n, sizeof *w);
    int *dirs = calloc(n, sizeof *dirs);
    struct ferry_copy *c = calloc(n, sizeof *c);
    if (j) {
        j->accs = calloc(n, sizeof *j->accs);
        j->acc_ptrs = calloc(n, sizeof *j->acc_ptrs);
        j->reqs = malloc(n * sizeof *j->reqs);
        j->orig = malloc(n * sizeof *j->orig);
        j->st = calloc(n, sizeof *j->st);
    }
    int rc = 0;
    if (!j || !regs || !w || !dirs || !c || !j->accs || !j->acc_ptrs || !j->reqs || !j->orig || !j->st) {
        rc = ferry_fail(FERRY_ENOMEM, "submit_on_stream of %zu requests", n);
        goto out;
    }
    /* the local ranges (validated by batch_defer): their accesses last until
     * the stream's copies of them ran */
    size_t m = 0, begun = 0;
    for (size_t i = 0; i < n; i++) {
        if (!reqs[i].length)
            continue;
        w[m] = (struct memreg_want){(uint64_t)(uintptr_t)reqs[i].source, reqs[i].length, &j->accs[m], &regs[m]};
        m++;
    }
    bool eligible = memreg_access_begin_many(&e->registry, w, m, 0, NULL, NULL, &begun) == 0;
    size_t total = 0, ndev = 0;
    bool reads = false;
    for (size_t i = 0, k = 0; i < n && eligible; i++) {
        dirs[i] = -1;
        if (!reqs[i].length)
            continue;
        const struct memreg_region *reg = &regs[k++];
        int side = stream_side_of(reg, ops, dev);
        eligible = side >= 0;
        if (side == 1 && !route_device_by_nic(e, &reqs[i], reg)) {
            dirs[i] = reqs[i].opcode == FERRY_WRITE ? FERRY_COPY_D2H : FERRY_COPY_H2D;
            reads |= reqs[i].opcode == FERRY_READ;
            total += (reqs[i].length + BOUNCE_ALIGN - 1) & ~(size_t)(BOUNCE_ALIGN - 1);
            ndev++;
        }
    }
    eligible = eligible && ndev && !(reads && batch_has_notify(b));
    if (eligible && (rc = bounce_take(r, ops, total, &j->bounce)) != 0) {
        if (rc == 1) {
            static atomic_int said;
            if (!atomic_exchange(&said, 1))
                LOG_WARN("stream ordering: %zu bytes of device memory would pass FERRY_STREAM_BOUNCE_MB (%zu MiB "
                         "in all): ferry's threads stage them while the stream waits (docs/ARCHITECTURE.md)",
                         total, r->bounce_max >> 20);
        }
        eligible = false;
    }
    if (!eligible) {
        for (size_t k = 0; k < begun; k++)
            j->acc_ptrs[k] = &j->accs[k];
        memreg_access_end_many(&e->registry, j->acc_ptrs, begun);
        rc = rc < 0 ? rc : 1;
        goto out;
    }
    memcpy(j->orig, reqs, n * sizeof *reqs);
    memcpy(j->reqs, reqs, n * sizeof *reqs);
    for (size_t i = 0, off = 0; i < n; i++)
        if (dirs[i] >= 0) {
            j->reqs[i].source = j->bounce->mem + off;
            off += (reqs[i].length + BOUNCE_ALIGN - 1) & ~(size_t)(BOUNCE_ALIGN - 1);
        }
    for (size_t k = 0; k < begun; k++)
        j->acc_ptrs[k] = &j->accs[k];
    j->naccs = begun;
    j->r = r;
    j->batch = b;
    j->n = n;
    j->inner = reads;
    pthread_mutex_lock(&r->lock);
    rc = stream_slot_take(r, ops, &j->page, &j->slot, &j->value);
    if (!rc)
        r->in_flight++;
    pthread_mutex_unlock(&r->lock);
    if (rc) {
        memreg_access_end_many(&e->registry, j->acc_ptrs, j->naccs);
        pthread_mutex_lock(&r->lock);
        j->bounce->next = r->bounces;
        r->bounces = j->bounce;
        pthread_mutex_unlock(&r->lock);
        goto out;
    }
    /* from here on the job ends the batch, whatever fails */
    free(regs);
    free(w);
    if ((rc = bounce_copies(ops, dev, stream, FERRY_COPY_D2H, reqs, j->reqs, dirs, n, c)) != 0) {
        j->local_rc = rc; /* the stream may have some of them: its buffer is never reused */
        snprintf(j->local_msg, sizeof j->local_msg, "stream-ordered copies out of device memory: %s",
                 ferry_last_error());
        j->bounce_lost = true;
    }
    bool out = false; /* copies out of device memory: a WRITE's, or a mixed batch's */
    for (size_t i = 0; i < n && !out; i++)
        out = dirs[i] == FERRY_COPY_D2H;
    if (out) /* (a READ's job has its own mark after its copies into device memory) */
        stream_mark_enqueue(r, ops, dev, stream, j->inner ? &j->mark_out : &j->mark);
    volatile uint32_t *flag = &j->page->flags[j->slot];
    uint32_t value = j->value;
    char why[256] = "";
    bool inner = j->inner; /* (a WRITE's job may be over and freed once its host function is enqueued) */
    int hrc = ops->stream_host_func(dev, stream, stream_on_reached, j);
    if (hrc) {
        /* the stream will not say when its copies ran: the transfer cannot start */
        rc = hrc;
        snprintf(why, sizeof why, "%s", ferry_last_error());
        if (!j->local_rc) {
            j->local_rc = rc;
            snprintf(j->local_msg, sizeof j->local_msg, "submit_on_stream: %.120s", why);
        }
        j->bounce_lost = true;
        stream_on_reached(j); /* ends it with local_rc (a READ's end also needs its host function below) */
        if (!inner) {
            free(dirs);
            free(c);
            *late = ferry_fail(rc, "submit_on_stream: %s (nothing was sent)", why);
            return 0;
        }
    }
    int wrc = stream_enqueue_wait(ops, dev, stream, flag, value);
    if (inner) {
        if (!wrc && (rc = bounce_copies(ops, dev, stream, FERRY_COPY_H2D, reqs, j->reqs, dirs, n, c)) != 0) {
            j->after_rc = rc;
            snprintf(j->after_msg, sizeof j->after_msg, "stream-ordered copies into device memory: %s",
                     ferry_last_error());
        }
        if (!wrc)
            stream_mark_enqueue(r, ops, dev, stream, &j->mark);
        if (wrc || ops->stream_host_func(dev, stream, bounce_end_reached, j) != 0) {
            if (!j->after_rc) {
                j->after_rc = wrc ? wrc : FERRY_EIO;
                snprintf(j->after_msg, sizeof j->after_msg, "the stream cannot copy the bytes read into device "
                         "memory after the transfer");
            }
            j->bounce_lost = true;
            bounce_end_here(r, j);
        }
    }
    free(dirs);
    free(c);
    *late = hrc ? ferry_fail(hrc, "submit_on_stream: %s (nothing was sent)", why) : wrc;
    return 0;
out:
    stream_job_free_memory(j);
    free(regs);
    free(w);
    free(dirs);
    free(c);
    return rc;
}

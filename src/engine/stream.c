/* SPDX-License-Identifier: Apache-2.0 */
/*
 * stream.c — stream-ordered submits: ferry_batch_submit_on_stream.
 *
 * A prefill engine computes layer N+1 while layer N is sent; the transfer of
 * layer N must start only when the kernels that wrote it have finished, and
 * whatever reads or overwrites those blocks afterwards must wait for the
 * transfer — without the host waiting in between.  So two things are
 * enqueued on the caller's stream through the device layer:
 *
 *   stream_host_func(stream_on_reached, job)   the stream reached the transfer: the
 *                                       job goes to a runner worker (the
 *                                       callback itself must not touch the
 *                                       device, so it only queues);
 *   stream_wait_flag(flag, value)       later work waits until a worker has
 *                                       seen the batch end and set the flag
 *                                       (a device without stream memory ops
 *                                       blocks a second host function on it).
 *
 * The requests are validated at the call, like ferry_batch_submit; a failure
 * after that ends the batch with its error and still releases the stream.
 *
 * Requests to the engine's own segment take neither: their copies go on the
 * caller's stream, then a host function ends the batch (local_submit).
 * Device memory to another engine moves through bounce buffers with its
 * copies on the caller's stream (stream_bounce.c).  On
 * an H200 the transfer path for them (tcp to itself, a ferry thread copying
 * into the target memory) hung while the caller's stream waited: first in a
 * stream creation (stream_cache.c), then, with that fixed, in another driver
 * call of the same kind (not identified; torch's thread was taking the
 * driver's lock for a kernel's first launch).
 *
 * Threads: one runner per engine, created on first use, with RUNNER_WORKERS
 * threads that submit ready jobs and wait for them; driver threads only
 * queue.  Owns the jobs, their copies of the requests and the flag pages
 * (host_alloc of the stream's device kind), one slot per job in flight.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "device/device.h"
#include "engine/engine.h"
#include "engine/stream_internal.h"
#include "err.h"
#include "log.h"

/* Runners of destroyed engines whose streams had not reached every job: a
 * driver still holds those jobs and a stream still reads their flags, so the
 * runner and its pages can never be freed safely.  Kept here, reachable, one
 * per such engine (the one global of this file). */
static pthread_mutex_t orphans_lock = PTHREAD_MUTEX_INITIALIZER;
static struct stream_runner *orphans;

/* ------------------------------------------------------------ driver threads */

/* A local job's copies have run: its batch ends, on the driver's thread
 * (locks only, no device call), so that later work on the stream sees it
 * ended as after a transfer. */
static void local_finish(struct stream_runner *r, struct stream_job *j)
{
    /* under the runner's lock: ferry_engine_destroy sets stop under it
     * before the registry goes */
    pthread_mutex_lock(&r->lock);
    if (!stream_mark_ran_locked(&j->mark) && !j->local_rc) {
        j->local_rc = FERRY_EIO;
        snprintf(j->local_msg, sizeof j->local_msg, "stream-ordered copies: %s", COPY_FAILED_MSG);
    }
    if (!r->stop)
        memreg_access_end_many(&batch_engine(j->batch)->registry, j->acc_ptrs, j->naccs);
    if (j->local_rc)
        LOG_WARN("stream-ordered copies to the own segment failed: %s: %s (the stream goes on)",
                 ferry_err_name(j->local_rc), j->local_msg);
    batch_defer_end(j->batch, j->reqs, j->n, j->local_rc, j->local_msg);
    stream_job_free_locked(r, j);
    pthread_mutex_unlock(&r->lock);
}

static void job_finish(struct stream_runner *r, struct stream_job *j);

/* The stream reached the transfer: hand it to a worker.  If the engine was
 * destroyed first (the caller did not synchronize the stream: Python's
 * close() cannot), no worker may be left and the engine must not be touched:
 * the batch ends FERRY_ECANCELED with nothing sent, and the stream goes on
 * (the runner and its flag pages stay allocated: `orphans`).  A local
 * job's copies are done when its stream gets here: it ends here. */
void stream_on_reached(void *arg)
{
    struct stream_job *j = arg;
    struct stream_runner *r = j->r;
    if (j->acc_ptrs && !j->bounced) {
        local_finish(r, j);
        return;
    }
    pthread_mutex_lock(&r->lock);
    if (j->bounced) { /* the copies into the bounce buffer ran, or failed */
        if (!stream_mark_ran_locked(j->inner ? &j->mark_out : &j->mark) && !j->local_rc) {
            j->local_rc = FERRY_EIO;
            snprintf(j->local_msg, sizeof j->local_msg, "stream-ordered copies out of device memory: %s",
                     COPY_FAILED_MSG);
        }
        if (!r->stop && !j->inner)
            memreg_access_end_many(&r->e->registry, j->acc_ptrs, j->naccs);
        if (!j->inner)
            j->naccs = 0;
    }
    if (r->stop) { /* destroying: workers may have left already */
        pthread_mutex_unlock(&r->lock);
        const char *why = "the engine was destroyed before the stream reached the transfer";
        if (j->inner) { /* its batch ends after the copies out (bounce_finish) */
            j->local_rc = FERRY_ECANCELED;
            snprintf(j->local_msg, sizeof j->local_msg, "stream-ordered submit: %s", why);
            stream_bounce_net_done(r, j);
            return;
        }
        batch_defer_cancel(j->batch, why);
        job_finish(r, j);
        return;
    }
    if (r->tail)
        r->tail->next = j;
    else
        r->head = j;
    r->tail = j;
    pthread_cond_signal(&r->wake);
    pthread_mutex_unlock(&r->lock);
}

/* Where the device cannot wait on a flag itself: a host function blocks. */
struct blocking_wait {
    volatile uint32_t *flag;
    uint32_t value;
};

static void wait_in_host(void *arg)
{
    struct blocking_wait *w = arg;
    ferry_flag_wait(w->flag, w->value);
    free(w);
}

/* ------------------------------------------------------------ workers */

/* The job's transfer is over: its flag lets the stream go on.  Runner lock
 * held. */
void stream_job_flag_locked(struct stream_job *j)
{
    ferry_flag_set(&j->page->flags[j->slot], j->value); /* the stream goes on */
    j->page->free_slots[j->page->nfree++] = j->slot;
}

/* Frees a job that is over, its bounce buffer back to the runner (runner
 * lock held). */
void stream_job_free_locked(struct stream_runner *r, struct stream_job *j)
{
    stream_mark_ran_locked(&j->mark);
    stream_mark_ran_locked(&j->mark_out);
    if (j->bounce && !j->bounce_lost) {
        j->bounce->next = r->bounces;
        r->bounces = j->bounce;
    } else if (j->bounce) { /* (out of the budget since bounce_lose) */
        j->bounce->next = r->lost;
        r->lost = j->bounce;
    }
    r->in_flight--; /* (a runner left by its engine stays in `orphans`) */
    pthread_cond_broadcast(&r->wake);
    stream_job_free_memory(j);
}

void stream_job_free_memory(struct stream_job *j)
{
    if (!j)
        return;
    free(j->accs);
    free(j->acc_ptrs);
    free(j->orig);
    free(j->st);
    free(j->own);
    free(j->reqs);
    free(j);
}

static void job_finish(struct stream_runner *r, struct stream_job *j)
{
    pthread_mutex_lock(&r->lock);
    stream_job_flag_locked(j);
    stream_job_free_locked(r, j);
    pthread_mutex_unlock(&r->lock);
}

static void *worker_main(void *arg)
{
    struct stream_runner *r = arg;
    pthread_mutex_lock(&r->lock);
    for (;;) {
        while (!r->head && !r->stop)
            pthread_cond_wait(&r->wake, &r->lock);
        struct stream_job *j = r->head;
        if (!j)
            break;
        r->head = j->next;
        if (!r->head)
            r->tail = NULL;
        pthread_mutex_unlock(&r->lock);
        if (j->inner) {
            stream_bounce_run_inner(r, j);
            pthread_mutex_lock(&r->lock);
            continue;
        }
        int rc = j->local_rc; /* (a bounced WRITE whose copies could not be enqueued) */
        if (rc)
            batch_defer_end(j->batch, j->orig, j->n, rc, j->local_msg);
        else
            rc = batch_defer_run(j->batch, j->reqs, j->n);
        if (rc)
            LOG_WARN("stream-ordered transfer failed: %s: %s (the stream goes on)", ferry_err_name(rc),
                     rc == j->local_rc ? j->local_msg : ferry_last_error());
        job_finish(r, j);
        pthread_mutex_lock(&r->lock);
    }
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static int runner_get(ferry_engine *e, struct stream_runner **out)
{
    if ((*out = atomic_load(&e->streams)) != NULL)
        return 0;
    struct stream_runner *r = calloc(1, sizeof *r);
    if (!r)
        return ferry_fail(FERRY_ENOMEM, "stream runner");
    pthread_mutex_init(&r->lock, NULL);
    pthread_cond_init(&r->wake, NULL);
    r->e = e;
    uint64_t mb = BOUNCE_MB_DEFAULT;
    int rc = config_env_number("FERRY_STREAM_BOUNCE_MB", false, 0, BOUNCE_MB_MAX, "MiB, 0-65536", &mb);
    if (rc < 0) { /* (its message names the knob) */
        stream_runner_destroy(r);
        return rc;
    }
    r->bounce_max = (size_t)mb << 20;
    for (; r->nworkers < RUNNER_WORKERS; r->nworkers++)
        if (pthread_create(&r->workers[r->nworkers], NULL, worker_main, r) != 0)
            break;
    if (r->nworkers == 0) {
        stream_runner_destroy(r);
        return ferry_fail(FERRY_EIO, "stream runner: cannot start a thread");
    }
    struct stream_runner *none = NULL;
    if (!atomic_compare_exchange_strong(&e->streams, &none, r)) {
        stream_runner_destroy(r); /* another thread's runner won */
        r = none;
    }
    *out = r;
    return 0;
}

void stream_runner_destroy(struct stream_runner *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->lock);
    r->stop = 1;
    pthread_cond_broadcast(&r->wake);
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; i < r->nworkers; i++)
        pthread_join(r->workers[i], NULL);
    pthread_mutex_lock(&r->lock); /* a late stream_on_reached may be ending a job */
    size_t left = r->in_flight;
    pthread_mutex_unlock(&r->lock);
    if (left) {
        /* a stream has not reached them: its driver still holds the jobs and
         * will read the flags, so neither is freed; each ends FERRY_ECANCELED,
         * nothing sent, when its stream reaches it (stream_on_reached) */
        LOG_WARN("engine destroyed with %zu stream-ordered transfers its streams have not reached: they end "
                 "FERRY_ECANCELED when the streams do", left);
        pthread_mutex_lock(&orphans_lock);
        r->next_orphan = orphans;
        orphans = r;
        pthread_mutex_unlock(&orphans_lock);
        return;
    }
    for (size_t i = 0; i < r->npages; i++)
        r->pages[i].ops->host_free(r->pages[i].flags);
    for (int list = 0; list < 2; list++)
        for (struct bounce *b = list ? r->lost : r->bounces, *next; b; b = next) {
            next = b->next;
            ferry_unregister_memory(r->e, b->mem);
            b->ops->host_free(b->mem);
            free(b);
        }
    pthread_cond_destroy(&r->wake);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/* ops' flag page, made on first use.  Runner lock held. */
static int flag_page_of(struct stream_runner *r, const struct ferry_device_ops *ops, struct flag_page **out)
{
    for (size_t i = 0; i < r->npages; i++)
        if (r->pages[i].ops == ops) {
            *out = &r->pages[i];
            return 0;
        }
    if (r->npages == FLAG_KINDS)
        return ferry_fail(FERRY_ENOTSUP, "stream ordering: more than %d device kinds", FLAG_KINDS);
    void *mem = NULL;
    int rc = ops->host_alloc(FLAG_SLOTS * sizeof(uint32_t), &mem);
    if (rc)
        return rc;
    struct flag_page *p = &r->pages[r->npages++];
    p->ops = ops;
    p->flags = mem;
    memset(mem, 0, FLAG_SLOTS * sizeof(uint32_t));
    for (int i = 0; i < FLAG_SLOTS; i++)
        p->free_slots[i] = FLAG_SLOTS - 1 - i;
    p->nfree = FLAG_SLOTS;
    *out = p;
    return 0;
}

static void slot_take(struct flag_page *p, struct flag_page **page, int *slot, uint32_t *value)
{
    *page = p;
    *slot = p->free_slots[--p->nfree];
    *value = ++p->next[*slot];
}

int stream_slots_take_locked(struct stream_runner *r, const struct ferry_device_ops *ops, struct stream_job *j,
                             bool with_flag, struct stream_mark *const *m, size_t nm)
{
    size_t marks = ops->stream_write_flag ? nm : 0, need = (with_flag ? 1 : 0) + marks;
    struct flag_page *p = NULL;
    int rc = need ? flag_page_of(r, ops, &p) : 0;
    if (rc || !need)
        return rc;
    if ((size_t)p->nfree < need)
        return ferry_fail(FERRY_EBUSY, "stream ordering: all %d flag slots are taken by transfers and copies "
                          "waiting for their streams (%zu needed)", FLAG_SLOTS, need);
    if (with_flag)
        slot_take(p, &j->page, &j->slot, &j->value);
    for (size_t i = 0; i < marks; i++)
        slot_take(p, &m[i]->page, &m[i]->slot, &m[i]->value);
    return 0;
}

void stream_slots_give_locked(struct stream_job *j)
{
    if (j->page)
        j->page->free_slots[j->page->nfree++] = j->slot;
    j->page = NULL;
    stream_mark_ran_locked(&j->mark);
    stream_mark_ran_locked(&j->mark_out);
}

/* Enqueues the mark (its slot from stream_slots_take_locked; none where
 * the device writes no marks) after the copies enqueued on the stream so
 * far.  0, or the device's refusal: there is no mark, its slot is free. */
int stream_mark_enqueue(struct stream_runner *r, const struct ferry_device_ops *ops, int dev, void *stream,
                        struct stream_mark *m)
{
    if (!m->page)
        return 0;
    int rc = ops->stream_write_flag(dev, stream, &m->page->flags[m->slot], m->value);
    if (rc) {
        pthread_mutex_lock(&r->lock);
        m->page->free_slots[m->page->nfree++] = m->slot;
        m->page = NULL;
        pthread_mutex_unlock(&r->lock);
    }
    return rc;
}

/* Whether the stream ran the copies before the job's mark (read by a host
 * function after it); the mark's slot is free again.  Runner lock held. */
bool stream_mark_ran_locked(struct stream_mark *m)
{
    if (!m->page)
        return true;
    bool ran = m->page->flags[m->slot] == m->value;
    m->page->free_slots[m->page->nfree++] = m->slot;
    m->page = NULL;
    return ran;
}

/* ------------------------------------------------------------ the own segment */

/* Whether every request goes to this engine's own segment. */
static bool all_to_self(ferry_engine *e, const struct ferry_request *reqs, size_t n)
{
    bool self = true;
    pthread_rwlock_rdlock(&e->seg_lock);
    for (size_t i = 0; i < n && self; i++) {
        struct segment *s = engine_segment(e, reqs[i].target);
        self = s && s->desc.engine_id == e->engine_id;
    }
    pthread_rwlock_unlock(&e->seg_lock);
    return self;
}

void stream_to_self(ferry_engine *e, const struct ferry_request *reqs, size_t n, bool *self)
{
    pthread_rwlock_rdlock(&e->seg_lock);
    for (size_t i = 0; i < n; i++) {
        struct segment *s = engine_segment(e, reqs[i].target);
        self[i] = s && s->desc.engine_id == e->engine_id;
    }
    pthread_rwlock_unlock(&e->seg_lock);
}

/* A registered range as a side of a copy on a stream of (ops, dev): 1
 * device memory of it, 0 host memory, -1 another device's. */
int stream_side_of(const struct memreg_region *reg, const struct ferry_device_ops *ops, int dev)
{
    if (reg->device_index < 0)
        return 0;
    return ferry_device_of_location(reg->location, NULL) == ops && reg->device_index == dev ? 1 : -1;
}

/* Requests to the engine's own segment need no transfer: their copies go on
 * the caller's stream itself, followed by a host function that ends the
 * batch.  No ferry thread touches the device for them and the stream waits
 * on nothing, so nothing can wait on the stream in turn (a device-side
 * wait for ferry's threads deadlocks whenever another thread of the process
 * makes a call that waits for every stream, as loading a kernel does).
 * Where a request's memory is host memory on both sides, or another
 * device's, or a range is not registered (the transports then report it),
 * returns 1 and the caller takes the usual path.  0: enqueued; else the
 * error, with nothing enqueued. */
static int local_submit(ferry_batch *b, const struct ferry_device_ops *ops, int dev, void *stream,
                        const struct ferry_request *reqs, size_t n, struct stream_runner *r, int *late)
{
    ferry_engine *e = batch_engine(b);
    if (!ops->stream_copy || batch_has_notify(b) || !all_to_self(e, reqs, n))
        return 1;
    struct stream_job *j = calloc(1, sizeof *j);
    struct memreg_region *regs = calloc(2 * n, sizeof *regs);
    struct ferry_copy *copies = calloc(2 * n, sizeof *copies); /* all, then one direction's */
    int *dirs = calloc(n, sizeof *dirs);
    if (j) {
        j->accs = calloc(2 * n, sizeof *j->accs);
        j->acc_ptrs = calloc(2 * n, sizeof *j->acc_ptrs);
        j->reqs = malloc(n * sizeof *j->reqs);
    }
    int rc = 0;
    if (!j || !regs || !copies || !dirs || !j->accs || !j->acc_ptrs || !j->reqs) {
        rc = ferry_fail(FERRY_ENOMEM, "submit_on_stream of %zu requests", n);
        goto out;
    }
    /* each request's source must be registered and its target registered
     * remote-accessible (locals and own buffers are one registry), both on
     * this stream's device or in host memory, one of them device memory.
     * Sources take accs[0, m), targets accs[m, 2m): one lock round trip each */
    struct memreg_want *w = calloc(2 * n, sizeof *w);
    if (!w) {
        rc = ferry_fail(FERRY_ENOMEM, "submit_on_stream of %zu requests", n);
        goto out;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (reqs[i].length)
            m++;
    for (size_t i = 0, k = 0; i < n; i++) {
        if (reqs[i].length == 0)
            continue;
        w[k] = (struct memreg_want){(uint64_t)(uintptr_t)reqs[i].source, reqs[i].length, &j->accs[k], &regs[k]};
        w[m + k] = (struct memreg_want){reqs[i].target_offset, reqs[i].length, &j->accs[m + k], &regs[m + k]};
        k++;
    }
    size_t begun = 0, got = 0, ncopies = 0;
    bool eligible = memreg_access_begin_many(&e->registry, w, m, 0, NULL, NULL, &got) == 0;
    begun = got;
    if (eligible) {
        got = 0;
        eligible = memreg_access_begin_many(&e->registry, w + m, m, 1, NULL, NULL, &got) == 0;
        begun = m + got;
    }
    free(w);
    for (size_t k = 0; k < begun; k++)
        j->acc_ptrs[k] = &j->accs[k];
    for (size_t i = 0; i < n && eligible; i++) {
        if (reqs[i].length == 0)
            continue;
        const struct memreg_region *src = &regs[ncopies], *tgt = &regs[m + ncopies];
        bool write = reqs[i].opcode == FERRY_WRITE;
        int from = stream_side_of(write ? src : tgt, ops, dev), to = stream_side_of(write ? tgt : src, ops, dev);
        eligible = from >= 0 && to >= 0 && (from || to);
        void *local = reqs[i].source, *own = (void *)(uintptr_t)reqs[i].target_offset;
        copies[ncopies] = write ? (struct ferry_copy){own, local, reqs[i].length}
                                : (struct ferry_copy){local, own, reqs[i].length};
        dirs[ncopies++] = from && to ? FERRY_COPY_D2D : from ? FERRY_COPY_D2H : FERRY_COPY_H2D;
    }
    if (!eligible) {
        memreg_access_end_many(&e->registry, j->acc_ptrs, begun);
        rc = 1;
        goto out;
    }
    memcpy(j->reqs, reqs, n * sizeof *reqs);
    *j = (struct stream_job){.r = r, .batch = b, .reqs = j->reqs, .n = n, .accs = j->accs, .acc_ptrs = j->acc_ptrs,
                             .naccs = begun};
    pthread_mutex_lock(&r->lock); /* the mark's slot, before anything is enqueued */
    rc = stream_slots_take_locked(r, ops, j, false, (struct stream_mark *[]){&j->mark}, 1);
    if (!rc)
        r->in_flight++;
    pthread_mutex_unlock(&r->lock);
    if (rc) {
        memreg_access_end_many(&e->registry, j->acc_ptrs, begun);
        goto out;
    }
    /* the copies, a direction at a time (the requests of a batch are
     * independent); a failure ends the batch FAILED once what was enqueued
     * before it has run */
    struct ferry_copy *one = copies + n;
    for (int dir = FERRY_COPY_D2H; dir <= FERRY_COPY_D2D && !j->local_rc; dir++) {
        size_t m = 0;
        for (size_t i = 0; i < ncopies; i++)
            if (dirs[i] == dir)
                one[m++] = copies[i];
        int rc = m ? ops->stream_copy(dev, stream, (enum ferry_copy_dir)dir, one, m) : 0;
        if (rc) {
            j->local_rc = rc;
            snprintf(j->local_msg, sizeof j->local_msg, "%s", ferry_last_error());
        }
    }
    free(regs);
    free(copies);
    free(dirs);
    int mrc = stream_mark_enqueue(r, ops, dev, stream, &j->mark);
    char why[200] = "";
    if (mrc) { /* the host function could not tell a failed copy: the batch fails */
        snprintf(why, sizeof why, "the stream refused the mark after its copies: %s", ferry_last_error());
        if (!j->local_rc) {
            j->local_rc = mrc;
            snprintf(j->local_msg, sizeof j->local_msg, "%.150s", why);
        }
    }
    rc = ops->stream_host_func(dev, stream, stream_on_reached, j);
    if (rc) { /* the stream will not say when its copies ran: wait for it */
        LOG_ERROR("submit_on_stream: %s; the %zu requests to the own segment end once the stream ran their copies",
                  ferry_last_error(), n);
        if (!j->local_rc) {
            j->local_rc = rc;
            snprintf(j->local_msg, sizeof j->local_msg, "%s", ferry_last_error());
        }
        snprintf(why, sizeof why, "%s", j->local_msg);
        stream_drain_refused(ops, dev, stream);
        stream_on_reached(j);
        *late = ferry_fail(rc, "submit_on_stream: %s (the batch ended FAILED)", why);
    } else if (mrc)
        *late = ferry_fail(mrc, "submit_on_stream: %s (the batch ends FAILED)", why);
    return 0;
out:
    stream_job_free_memory(j);
    free(regs);
    free(copies);
    free(dirs);
    return rc;
}

/* ------------------------------------------------------------ the caller's stream waits */

void stream_drain_refused(const struct ferry_device_ops *ops, int dev, void *stream)
{
    int rc = ops->stream_synchronize ? ops->stream_synchronize(dev, stream)
                                     : ferry_fail(FERRY_ENOTSUP, "%s has no stream_synchronize", ops->kind);
    if (rc == FERRY_ENOTSUP) /* (another error is the stream's: its copies will not run) */
        LOG_ERROR("submit_on_stream: %s: the accesses of a refused stream-ordered submit end while copies the "
                  "stream accepted before may still run", ferry_last_error());
}


/* Enqueues on the stream the wait for the job's flag: a device-side wait,
 * else (no stream memory operations) a blocking host function. */
int stream_enqueue_wait(const struct ferry_device_ops *ops, int dev, void *stream, volatile uint32_t *flag,
                        uint32_t value)
{
    int wrc = ops->stream_wait_flag ? ops->stream_wait_flag(dev, stream, flag, value) : FERRY_ENOTSUP;
    if (wrc) { /* no stream memory ops (or the driver refused them here): block a host function */
        static atomic_int said;
        if (!atomic_exchange(&said, 1)) /* a slower path: say so, once */
            LOG_WARN("stream ordering: %s; later work waits in a blocking host function instead",
                     ferry_last_error());
        struct blocking_wait *w = malloc(sizeof *w);
        wrc = w ? 0 : FERRY_ENOMEM;
        if (w) {
            *w = (struct blocking_wait){flag, value};
            if ((wrc = ops->stream_host_func(dev, stream, wait_in_host, w)) != 0)
                free(w);
        }
    }
    if (wrc) /* the transfer runs, but later work on the stream may not wait for it */
        return ferry_fail(wrc, "submit_on_stream: the stream cannot wait for the transfer: %s", ferry_last_error());
    return 0;
}

/* ------------------------------------------------------------ API */

int ferry_batch_submit_on_stream(ferry_batch *batch, const struct ferry_request *reqs, size_t n,
                                 const char *location, void *stream)
{
    int dev = -1;
    const struct ferry_device_ops *ops = location ? ferry_device_of_location(location, &dev) : NULL;
    if (!batch || !reqs || !n)
        return ferry_fail(FERRY_EINVAL, "submit_on_stream: NULL batch or no request");
    if (!ops)
        return ferry_fail(location && ferry_location_parse(location, NULL, NULL) == 0 ? FERRY_ENOTSUP : FERRY_EINVAL,
                          "submit_on_stream: location \"%s\" names no device with streams", location ? location : "");
    if (!ops->stream_host_func || !ops->host_alloc)
        return ferry_fail(FERRY_ENOTSUP, "submit_on_stream: %s cannot order work with a stream", ops->kind);
    int rc = ops->init();
    if (rc)
        return rc;
    if (dev < 0 || dev >= ops->device_count()) /* refused before anything is enqueued */
        return ferry_fail(FERRY_ENODEV, "submit_on_stream: location \"%s\": this host has %d %s device(s)", location,
                          ops->device_count(), ops->kind);
    /* the streams ferry's side may need, before the caller's stream can wait
     * for this transfer (stream_cache.c) */
    if ((rc = ferry_device_prepare(ops, dev)) != 0)
        return rc;
    struct stream_runner *r = NULL;
    if ((rc = runner_get(batch_engine(batch), &r)) != 0)
        return rc;
    /* requests to the engine's own segment: copies on the caller's stream */
    if ((rc = batch_defer(batch, reqs, n)) != 0) /* (validates them as a submit would) */
        return rc;
    int late = 0; /* enqueued, but the call failed: the job ends the batch FAILED */
    int local = local_submit(batch, ops, dev, stream, reqs, n, r, &late);
    if (local > 0) /* device memory to another engine: through bounce buffers */
        local = stream_bounce_submit(batch, ops, dev, stream, reqs, n, r, &late);
    if (local < 0) { /* refused, nothing enqueued */
        batch_defer_withdraw(batch);
        return local;
    }
    if (local == 0) /* enqueued: its host function (or the job, on failure) ends the batch */
        return late;
    batch_defer_withdraw(batch); /* the usual path defers it again */
    struct stream_job *j = calloc(1, sizeof *j);
    struct ferry_request *copy = malloc(n * sizeof *copy);
    if (!j || !copy) {
        free(j);
        free(copy);
        return ferry_fail(FERRY_ENOMEM, "submit_on_stream of %zu requests", n);
    }
    memcpy(copy, reqs, n * sizeof *copy);
    *j = (struct stream_job){.r = r, .batch = batch, .reqs = copy, .n = n};
    pthread_mutex_lock(&r->lock);
    rc = stream_slots_take_locked(r, ops, j, true, NULL, 0);
    if (!rc)
        r->in_flight++;
    pthread_mutex_unlock(&r->lock);
    if (!rc && (rc = batch_defer(batch, reqs, n)) != 0) {
        pthread_mutex_lock(&r->lock); /* nothing was enqueued: the slot is free again */
        stream_slots_give_locked(j);
        r->in_flight--;
        pthread_mutex_unlock(&r->lock);
    }
    if (rc) {
        free(copy);
        free(j);
        return rc;
    }
    volatile uint32_t *flag = &j->page->flags[j->slot];
    uint32_t value = j->value;
    rc = ops->stream_host_func(dev, stream, stream_on_reached, j);
    if (rc) { /* the stream will never reach it: run it now, so the batch ends */
        char why[256];
        snprintf(why, sizeof why, "%s", ferry_last_error());
        stream_on_reached(j);
        return ferry_fail(rc, "submit_on_stream: %s (the transfer was started at once)", why);
    }
    return stream_enqueue_wait(ops, dev, stream, flag, value);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * stream_internal.h — what the two halves of stream-ordered submits share:
 * stream.c (the runner, its workers and flag slots, the own segment, the
 * API) and stream_bounce.c (device memory to another engine through bounce
 * buffers).  Not for other files: engine.h declares what the engine calls.
 */
#ifndef FERRY_STREAM_INTERNAL_H
#define FERRY_STREAM_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "device/device.h"
#include "engine/engine.h"

#define RUNNER_WORKERS 4
#define FLAG_SLOTS 1024 /* one 4 KiB page of flags per device kind */
#define FLAG_KINDS 4
#define BOUNCE_MB_DEFAULT 256
#define BOUNCE_MB_MAX 65536
#define BOUNCE_MIN (4u << 20)
#define BOUNCE_ALIGN 256 /* each request's place in a bounce buffer */

struct flag_page {
    const struct ferry_device_ops *ops;
    uint32_t *flags;                /* FLAG_SLOTS words from ops->host_alloc */
    uint32_t next[FLAG_SLOTS];      /* the value a slot's next job waits for */
    int free_slots[FLAG_SLOTS];
    int nfree;
};

/* A mark the stream writes after copies it does for a job
 * (stream_write_flag): its own flag slot.  page NULL: no mark. */
struct stream_mark {
    struct flag_page *page;
    int slot;
    uint32_t value;
};

struct stream_job {
    struct stream_job *next;
    struct stream_runner *r;
    ferry_batch *batch;
    struct ferry_request *reqs;
    size_t n;
    struct flag_page *page;
    int slot;
    uint32_t value;
    /* a job of requests to the engine's own segment (local_submit): its
     * copies are on the caller's stream; the accesses to their memory end
     * when the stream has run them */
    struct memreg_access *accs;
    struct memreg_access **acc_ptrs;
    size_t naccs;
    int local_rc;
    char local_msg[160];
    /* the stream's mark after the copies it does for the job: a stream
     * whose copy failed skips it, and the host function after them sees
     * that.  A bounced READ job's WRITE requests (a mixed batch) have their
     * copies out of device memory before the transfer: mark_out follows
     * them, so that a failed copy sends nothing */
    struct stream_mark mark;
    struct stream_mark mark_out;
    /* a bounced job (bounce_submit): the requests' device memory moves
     * through a pinned host buffer with copies on the caller's stream, and
     * reqs are the rewritten requests, orig the caller's */
    bool bounced;
    struct bounce *bounce;      /* NULL where only own-segment requests have device memory */
    bool bounce_lost;           /* the stream may still use it: never reused */
    /* a bounced job's requests to the engine's own segment whose copies went
     * on the caller's stream before the transfer (the transfer skips them) */
    bool *own;
    struct ferry_request *orig;
    /* READs into device memory: the transfer runs on a batch of its own
     * (st: each request's outcome) and the caller's batch ends only after
     * the copies out of the bounce buffer (bounce_finish) */
    bool inner;
    struct ferry_status *st;
    bool net_done;              /* runner lock: the transfer ended and the flag is set */
    bool end_here;              /* runner lock: no host function on the stream ends the
                                 * batch (it could not be enqueued): the worker does */
    int after_rc;               /* the copies out could not be enqueued */
    char after_msg[160];
};

/* Pinned host memory that device memory of stream-ordered transfers to
 * another engine passes through (bounce_submit).  Grow-only: freeing pinned
 * memory (cuMemFreeHost) waits for every stream of the device, so buffers
 * go only with the runner, when no stream waits for it. */
struct bounce {
    struct bounce *next; /* in the runner's free list */
    const struct ferry_device_ops *ops;
    char *mem;
    size_t len;
};

struct stream_runner {
    pthread_mutex_t lock;           /* everything below */
    pthread_cond_t wake;
    struct stream_job *head, *tail; /* jobs their stream has reached */
    size_t in_flight;               /* jobs enqueued on a stream and not yet done */
    int stop;
    pthread_t workers[RUNNER_WORKERS];
    int nworkers;
    struct flag_page pages[FLAG_KINDS];
    size_t npages;
    ferry_engine *e;
    struct bounce *bounces;         /* free bounce buffers */
    struct bounce *lost;            /* buffers a stream may still use (bounce_lost): never
                                     * reused, freed with the runner, out of the budget */
    size_t bounce_bytes, bounce_max; /* allocated; FERRY_STREAM_BOUNCE_MB */
    struct stream_runner *next_orphan; /* in `orphans` once its engine is gone */
};

#define COPY_FAILED_MSG "a copy on the stream failed before it (the stream is in error)"

/* stream.c */

/* The stream reached the job (a host function): a local job ends, a
 * transfer goes to a worker, a destroyed engine's job is cancelled. */
void stream_on_reached(void *arg);
/* The job's flag lets the stream go on; its slot is free.  Runner lock held. */
void stream_job_flag_locked(struct stream_job *j);
/* Frees a job that is over, its bounce buffer back to the runner.  Runner
 * lock held. */
void stream_job_free_locked(struct stream_runner *r, struct stream_job *j);
/* Frees a job's memory and the job (NULL accepted): a job never enqueued. */
void stream_job_free_memory(struct stream_job *j);
/* Takes, all or none, the job's flag slot (with_flag: the stream waits on
 * it) and the slots of its marks m[0, nm) (none where the device writes no
 * marks), before anything is enqueued.  0; FERRY_EBUSY naming FLAG_SLOTS
 * where too few are free; or the flag page's allocation error.  Runner lock
 * held.  stream_slots_give_locked gives them back (a job never enqueued). */
int stream_slots_take_locked(struct stream_runner *r, const struct ferry_device_ops *ops, struct stream_job *j,
                             bool with_flag, struct stream_mark *const *m, size_t nm);
void stream_slots_give_locked(struct stream_job *j);
/* Enqueues the mark (its slot taken above; nothing where it has none)
 * after the copies enqueued on the stream so far: 0 or the device's refusal
 * (then there is no mark: the caller fails the job).  Whether the stream
 * ran them (runner lock held; frees the mark's slot): */
int stream_mark_enqueue(struct stream_runner *r, const struct ferry_device_ops *ops, int dev, void *stream,
                        struct stream_mark *m);
bool stream_mark_ran_locked(struct stream_mark *m);
/* Which requests go to the engine's own segment (self[i]). */
void stream_to_self(ferry_engine *e, const struct ferry_request *reqs, size_t n, bool *self);
/* A registered range as a side of a copy on a stream of (ops, dev): 1
 * device memory of it, 0 host memory, -1 another device's. */
int stream_side_of(const struct memreg_region *reg, const struct ferry_device_ops *ops, int dev);
/* Enqueues the stream's wait for a job's flag (a device-side wait, else a
 * blocking host function).  0 or the error. */
int stream_enqueue_wait(const struct ferry_device_ops *ops, int dev, void *stream, volatile uint32_t *flag,
                        uint32_t value);

/* The stream refused ferry's host function after copies it accepted,
 * which may still run: waits until the stream ran them (the device's
 * stream_synchronize; an error, logged, where it has none), so that the
 * accesses to their memory end after them. */
void stream_drain_refused(const struct ferry_device_ops *ops, int dev, void *stream);

/* stream_bounce.c */

/* Device memory of (ops, dev) to another engine through a bounce buffer, the
 * copies on `stream`.  0: enqueued (*late: 0, or the error of a call whose
 * job still ends the batch); 1: take the usual path; else the error, nothing
 * enqueued. */
int stream_bounce_submit(ferry_batch *b, const struct ferry_device_ops *ops, int dev, void *stream,
                         const struct ferry_request *reqs, size_t n, struct stream_runner *r, int *late);
/* A bounced READ's transfer into its bounce buffer, on a batch of its own
 * (a worker); and its end, which lets the stream copy the bytes out. */
void stream_bounce_run_inner(struct stream_runner *r, struct stream_job *j);
void stream_bounce_net_done(struct stream_runner *r, struct stream_job *j);

#endif

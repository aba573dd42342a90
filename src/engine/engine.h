/* SPDX-License-Identifier: Apache-2.0 */
/*
 * engine.h — the engine's internal state, shared by engine.c (lifecycle,
 * memory, segments, notifications) and batch.c (requests and completion).
 */
#ifndef FERRY_ENGINE_H
#define FERRY_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "auth.h"
#include "ferry.h"
#include "log.h"
#include "memreg.h"
#include "meta/descriptor.h"
#include "meta/meta.h"
#include "meta/p2p.h"
#include "staging/staging.h"
#include "transport/transport.h"

#define MAX_POOLS 15

/* A frame's route: the transport index in the low 4 bits; staged frames add
 * (pool index + 1) << 4, so frames of different pools never share a frame. */
#define ROUTE_TRANSPORT(route) ((route) & 15)
#define ROUTE_POOL(route) (((route) >> 4) - 1)
#define ROUTE_STAGED(transport, pool) ((transport) | ((pool) + 1) << 4)

struct pool_entry {
    char location[32];                  /* "sim:0", "cuda:1" */
    struct staging_pool *pool;
    void *base;                         /* its chunks, registered as host memory */
    bool aggregates;                    /* staging_pool_aggregates, asked once at creation */
};

struct segment {
    uint64_t handle;
    char name[128];
    struct ferry_descriptor desc;
    size_t *published;                    /* desc.buffers indices in the peer's published order,
                                           * or NULL: address order */
    void *peer[FERRY_MAX_TRANSPORTS];     /* per transport; NULL if the peer lacks it */
};

/* Received notifications (notify.c): one FIFO, and one per sending peer so
 * that a full queue drops from the peer holding the most. */
struct note_node;
struct note_peer;
struct notify_queue {
    pthread_mutex_t lock;
    struct note_node *head, *tail;  /* FIFO, oldest at head */
    struct note_peer *peers;        /* peers with notes queued */
    size_t count, max;
    uint64_t dropped;
    struct log_ratelimit warn;
};

void notify_queue_init(struct notify_queue *q, unsigned max);
void notify_queue_destroy(struct notify_queue *q);
/* Queues a notification (any thread); a full queue drops the oldest note of
 * the origin holding the most notes (origin: the sender's address, its port
 * ignored, or "local"; see transport_host.deliver_notify). */
void notify_deliver(struct notify_queue *q, const char *from, const char *origin, const void *msg, size_t len);
/* Moves up to max notes, oldest first, into out. */
int notify_take(struct notify_queue *q, struct ferry_notification *out, size_t max, size_t *count);

struct ferry_engine {
    struct ferry_config cfg;
    char str_local[128], str_meta[256], str_protocols[64], str_device[128], str_prefix[128]; /* cfg strings */
    char str_bind[64];              /* cfg.bind_address */
    char listen_host[64];
    char segment_name[128];
    int handshake_port;
    uint64_t engine_id;
    atomic_int ready;               /* transports started: the descriptor may be served */

    struct memreg registry;
    size_t ntransports;
    const struct transport_ops *tops[FERRY_MAX_TRANSPORTS];
    void *tstate[FERRY_MAX_TRANSPORTS];
    unsigned tspread[FERRY_MAX_TRANSPORTS][2][2]; /* transport_ops.spread per opcode (READ, WRITE) and staged
                                                   * (0, 1), asked at start */
    atomic_uint_fast64_t req_completed[FERRY_MAX_TRANSPORTS], req_failed[FERRY_MAX_TRANSPORTS];
    atomic_uint_fast64_t bytes_staged[FERRY_MAX_TRANSPORTS];
    atomic_uint_fast64_t bytes_bounced;

    pthread_mutex_t pool_lock;          /* creation only; entries are never removed */
    struct pool_entry pools[MAX_POOLS];
    atomic_size_t npools;

    struct p2p_server *handshake;
    const struct meta_ops *meta;
    void *meta_state;
    pthread_mutex_t publish_lock;   /* orders publishes of the descriptor */

    /* Remote-accessible registrations in the order they were made (their
     * addresses): the descriptor lists buffers in this order, so a peer's
     * first buffer is the first one registered, as in the reference engine
     * (get_first_buffer_address).  Own lock; memory.c keeps it. */
    pthread_mutex_t order_lock;
    uint64_t *reg_order;
    size_t norder, order_cap;

    pthread_rwlock_t seg_lock;      /* submit: read; open/close/refresh: write */
    struct segment **segs;
    size_t nsegs, segcap;
    uint64_t next_handle;

    /* segments whose transfers failed as if the peer restarted; refreshed on
     * the next submit to them.  Own lock, so transport threads can add to it
     * without touching seg_lock (taken after seg_lock, never before).  It
     * grows with the segments marked: a mark that found no room would leave
     * its peer unrefreshed, failing for ever after a restart; closing a
     * segment drops the marks of handles no longer open. */
    pthread_mutex_t stale_lock;
    uint64_t *stale;
    size_t nstale, stale_cap;

    struct notify_queue notes;

    _Atomic(struct stream_runner *) streams; /* stream-ordered submits (stream.c); created on first use */
    struct auth_key auth;           /* the shared secret (len 0: authentication off) */
    uint64_t wait_spin_ns;          /* FERRY_WAIT_SPIN_US: ferry_batch_wait polls this long before it sleeps */
    atomic_uint_fast64_t wait_recent_ns; /* moving mean of recent waits for an unfinished batch (batch.c) */
};

/* Publishes the current descriptor through the metadata backend (a no-op
 * for P2PHANDSHAKE).  Called at start and after registration changes. */
/* FERRY_WAIT_SPIN_US's default for a process that may run on `cores` CPUs. */
unsigned engine_auto_wait_spin_us(long cores);
int engine_publish(ferry_engine *e);
/* A snapshot of this engine's remote-accessible registrations, malloc'd (the
 * caller frees it), *n of them, in the order they were registered; NULL if
 * memory ran out.  Taken in two steps (count, then copy): a registration made
 * between them is left out of it, never written past its end. */
struct memreg_region *engine_remote_regions(ferry_engine *e, size_t *n);
/* Sorts a snapshot of remote-accessible regions (sorted by address) into the
 * order they were registered (memory.c). */
void engine_order_regions(ferry_engine *e, struct memreg_region *r, size_t n);

/* The staging pool index for a device location, or -1. Lock-free. */
int engine_pool_index(ferry_engine *e, const char *location);

/* Finds a segment by handle; caller holds seg_lock (read or write). */
struct segment *engine_segment(ferry_engine *e, uint64_t handle);
/* Hands f to the transport of its route on its segment's peer, under
 * seg_lock; if the segment was closed meanwhile, ends f FERRY_ENOSEG with
 * the message gone (segment.c). */
void engine_submit_frame(ferry_engine *e, struct xfer_frame *f, const char *gone);
/* Fails rc for segment name's stored descriptor (malformed, hostile, too
 * big, another segment's): the detail says "segment NAME in WHERE: ..."
 * with the store's URL and key (meta_ops.where) before the last error
 * (its own leading "segment NAME: " dropped); a backend that stores
 * nothing: "segment NAME: ...".  Returns rc (segment.c). */
int engine_entry_fail(const ferry_engine *e, const char *name, int rc);
/* Closes the segment on every transport and frees it (segment.c). */
void engine_segment_free(ferry_engine *e, struct segment *s);

/* Marks a segment for refresh before its next use. Any thread. */
void engine_mark_stale(ferry_engine *e, uint64_t handle);
/* Removes handle from the stale set; returns whether it was there. */
int engine_take_stale(ferry_engine *e, uint64_t handle);

/* Re-fetches the descriptor of a segment marked stale (a transfer to it failed
 * as if it restarted).  Takes seg_lock for writing; call without it. */
int engine_refresh_segment(ferry_engine *e, uint64_t handle);

/* Stream-ordered submits (batch.c), one per batch, on an empty batch.
 * batch_defer validates requests as ferry_batch_submit would and holds the
 * batch unfinished; batch_defer_run (later, on a ferry thread) submits them,
 * waits until they ended, lets the batch finish and returns 0 or the first
 * error.  A submit that fails then ends the batch with its error.  After
 * batch_defer_run returns the batch is not touched again (it may be freed). */
int batch_defer(ferry_batch *b, const struct ferry_request *reqs, size_t n);
ferry_engine *batch_engine(const ferry_batch *b);
int batch_defer_run(ferry_batch *b, const struct ferry_request *reqs, size_t n);
/* The deferred submit's n requests were carried out without the transports
 * (copies on the caller's own stream, stream.c): each ends COMPLETED, or
 * FAILED with rc and msg when rc != 0.  The batch is not touched again. */
void batch_defer_end(ferry_batch *b, const struct ferry_request *reqs, size_t n, int rc, const char *msg);
/* The same with each request's own outcome (st[i].error, .transferred,
 * .message): the requests ran on another batch. */
void batch_defer_end_each(ferry_batch *b, const struct ferry_request *reqs, size_t n, const struct ferry_status *st);
/* Takes back a batch_defer that will not run: nothing was submitted. */
void batch_defer_withdraw(ferry_batch *b);
/* Whether ferry_batch_set_notify gave the batch a notification. */
bool batch_has_notify(const ferry_batch *b);
/* Ends a deferred submit without making it (the engine is gone: nothing may
 * touch it): the batch finishes with FERRY_ECANCELED and the message why.
 * Touches only the batch. */
void batch_defer_cancel(ferry_batch *b, const char *why);

/* Stops the stream-ordered submit workers (stream.c).  NULL accepted. */
struct stream_runner;
void stream_runner_destroy(struct stream_runner *r);

#endif

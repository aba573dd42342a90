/* SPDX-License-Identifier: Apache-2.0 */
/*
 * staging_internal.h — what staging.c (the pipeline: issue, retire, the
 * worker) and staging_pool.c (a pool's knobs, creation and teardown) share:
 * the chunk and pool structures and their limits.  Private to src/staging.
 * Threads and ownership: see staging.c (every list under pool->lock; the
 * issuer's and the worker's scratch arrays are theirs alone).
 */
#ifndef FERRY_STAGING_INTERNAL_H
#define FERRY_STAGING_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "staging/aggregate.h"
#include "staging/staging.h"

/* A group holds FERRY_STAGING_GROUP frames at most and goes to the device
 * in one copy_async call (16: a whole 1,024-block batch, one launch of the
 * CUDA kernel of up to 1,024 copies; but that launch's 28 KiB of parameters
 * cost ~20 us more than a 128-copy one, so 2 by default: measured in
 * docs/BENCHMARKS.md, "One launch per batch"); a round's first group at
 * most FERRY_STAGING_GROUP_FIRST frames (a larger one holds its first chunk
 * off the wire until the whole group is copied), by default (auto,
 * GROUP_FIRST_AUTO) as many as FERRY_STAGING_GROUP within half a chunk's
 * bytes: one frame of 512 KiB or more, as the old default of 1, but a
 * 128 x 4 KiB batch's two frames of 256 KiB one launch, not two (the
 * launches, not PCIe, bound it: its gather with 4 batches in flight went
 * from 0.73-0.76 of a large D2H to 0.91 on one H200, h16y). */
#define GROUP_DEFAULT 2u
#define GROUP_FIRST_AUTO 0u
#define GROUP_FIRST_DEFAULT GROUP_FIRST_AUTO
#define GROUP_MAX 16u
/* FERRY_STAGING_READ_GROUP_BYTES: 0, or the bytes a group of scatters
 * (READ payload that arrived together) takes at most, up to
 * READ_GROUP_COPIES copies and GROUP_MAX frames, the round's first group
 * too: nothing of a READ waits on its first frame.  4 MiB by default, so
 * that on CUDA a group of 64 KiB blocks or larger is one call of 4 MiB,
 * which takes the copy engine (FERRY_CUDA_KERNEL_H2D_CALL_MIN): the engine
 * reads host memory faster than the SMs only in calls of several MiB
 * (bench/h2d_probe.c: ~0.80 of a large copy for 1 MiB calls from 4
 * streams, 0.93 for 2 MiB, 0.96 for 4 MiB; the SMs 0.89-0.91), where the
 * gathers' rule cuts a group at one chunk's bytes.  0: the gathers' rule. */
#define READ_GROUP_BYTES_DEFAULT (4u << 20)
#define READ_GROUP_BYTES_MAX (64u << 20)
#define READ_GROUP_COPIES 128u
/* FERRY_STAGING_READ_GROUP_FIRST_BYTES: 0 (as FERRY_STAGING_READ_GROUP_BYTES),
 * or the bytes a round's first scatter group takes at most: one chunk's
 * (1 MiB) keeps it on the CUDA kernel, which starts in ~9 us where a 4 MiB
 * engine call returns after ~35 us (the first of one 64 KiB batch alone,
 * h16y) while the later groups' engine calls are issued behind it.  Off:
 * at 256 KiB on one H200 one 64 KiB batch at a time went from 0.74-0.78 of
 * a large H2D to 0.83, but 1 MiB blocks with 4 batches in flight from
 * 0.96-0.97 to 0.92 (docs/BENCHMARKS.md, h16z). */
#define READ_GROUP_FIRST_BYTES_DEFAULT 0u
/* Mark streams (FERRY_STAGING_MARK_STREAMS): a round's groups go one after
 * another on one stream, each followed by a device-written mark, so the
 * first frame retires (and goes to the wire) as soon as its own copies
 * are done, not with the round's last.  Marks a cache line apart. */
#define MARK_STREAMS_DEFAULT 0u
#define MARK_STREAMS_MAX 4u
#define MARK_STRIDE 16u
/* Chained rounds (FERRY_STAGING_CHAIN_BYTES, with mark streams off): a
 * round of gathers of at least that many bytes, issued while no copy of
 * the pool is in flight (a one-thread batch: what a waiter's latency
 * hangs on), goes as mark streams do, its groups one after another on
 * FERRY_STAGING_CHAIN_LANES of the pool's mark streams in turn (group k on
 * lane k % lanes), each followed by its mark: the first frames are done
 * first and go to the wire while the rest gather, where groups issued side
 * by side on their chunks' streams share PCIe and finish together (one
 * H200, 1,024 x 16 KiB, one lane: the first group retired 33 us after its
 * issue instead of 75, the batch's p50 1.51 ms instead of 1.64).  A
 * round issued while others are in flight (several batches: throughput)
 * keeps the chunks' own streams, which the pipeline alone moves faster
 * with.  Two lanes by default: two groups share PCIe at a time, so a
 * chained round gathers almost as fast as side by side (one H200, one
 * batch at a time: 1,024 x 16 KiB 0.84 of a large D2H against 0.87
 * unchained and 0.76 on one lane) while its first frames still leave
 * early.  Defaults: see docs/BENCHMARKS.md (h16f).  0: off. */
#define CHAIN_BYTES_DEFAULT (4u << 20)
#define CHAIN_BYTES_MAX (1u << 30)
#define CHAIN_LANES_DEFAULT 2u

/* CHUNK_LOST: its copies were on a stream that hung and could not be
 * aborted (stream_abandoned): they may still run, so the chunk (and its
 * device buffer) is never used again and the pool's memory is never freed. */
enum chunk_state { CHUNK_FREE, CHUNK_GATHER, CHUNK_WIRE, CHUNK_SCATTER, CHUNK_LOST };

struct chunk {
    struct staging_pool *pool;
    char *host;
    char *devbuf;                         /* device buffer for aggregation, or NULL */
    ferry_stream *stream;
    enum chunk_state state;
    struct chunk *lead;                   /* in flight: its group's first chunk */
    ferry_stream **carrier;               /* a lead's: where its group's copies went (its stream, or a mark stream) */
    bool marked;                          /* a lead's: a device-written mark (marks[index]) says when they are done */
    int enqueue_err;                      /* a lead's: its copies on a mark stream failed to enqueue */
    uint32_t mark_seq;                    /* the value its last mark stores */
    bool round_first;                     /* a gather, the first of the round it was issued in */
    bool round_last;                      /* a gather, the last of the round it was issued in */
    unsigned index;                       /* in pool->chunks */
    struct xfer_frame *orig;              /* the engine's frame (device pointers) */
    struct xfer_frame wire;               /* what the transport sees (host pointers) */
    struct xfer_piece pieces[XFER_MAX_PIECES];
    int wire_err;
    uint64_t wire_refused;
    char wire_msg[160];
    struct chunk *next;                   /* in free / arrived lists */
};

struct staging_pool {
    const struct ferry_device_ops *ops;
    int dev;
    size_t chunk_size;
    size_t align;                         /* pieces start at multiples of this in a chunk */
    size_t stride;                        /* bytes between chunks: chunk_size + alignment slack */
    unsigned nchunks;
    struct aggregate_policy agg;
    char *base;
    struct chunk *chunks;
    staging_send_fn send;
    void *send_ctx;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct chunk *free_list;
    struct xfer_frame *waiting_head, *waiting_tail;  /* frames waiting for a chunk */
    struct chunk *arrived_head, *arrived_tail;       /* READ chunks back from the wire */
    struct chunk *fl_head, *fl_tail;                 /* copies in flight, oldest group first */
    bool issuing;                         /* a thread is issuing a round: it owns taken and group */
    bool retiring;                        /* a thread is retiring the oldest group: only it takes from the FIFO */
    bool worker_asleep;                   /* the worker waits on cond (not polling): a wake-up away */
    struct chunk **taken, **group;        /* the issuer's: a round's chunks, a group's (nchunks each) */
    struct ferry_copy *copies;            /* the issuer's: a group's copies (GROUP_MAX x XFER_MAX_PIECES) */
    struct chunk **retired;               /* the worker's: a retired group (nchunks) */
    bool stopping;
    unsigned lost;                        /* chunks CHUNK_LOST (lock): the pool's memory stays at teardown */
    uint64_t idle_spin_ns;                /* FERRY_STAGING_SPIN_US */
    uint64_t issuer_retire_ns;            /* FERRY_STAGING_ISSUER_RETIRE_US */
    unsigned issuer_retire_groups;        /* FERRY_STAGING_ISSUER_RETIRE_GROUPS */
    bool inline_first;                    /* FERRY_STAGING_INLINE_FIRST */
    bool inline_last;                     /* FERRY_STAGING_INLINE_LAST */
    uint64_t scatter_retire_ns;           /* FERRY_STAGING_SCATTER_RETIRE_US */
    unsigned group_frames;                /* FERRY_STAGING_GROUP: frames a group takes at most */
    unsigned group_first;                 /* FERRY_STAGING_GROUP_FIRST: frames a round's first group takes
                                           * (GROUP_FIRST_AUTO: group_frames within half a chunk) */
    uint64_t read_group_bytes;            /* FERRY_STAGING_READ_GROUP_BYTES: 0, or a scatter group's bytes at most */
    uint64_t read_group_first;            /* FERRY_STAGING_READ_GROUP_FIRST_BYTES: 0, or a round's first one's */
    unsigned nmark;                       /* FERRY_STAGING_MARK_STREAMS: 0, or streams rounds take in turn */
    unsigned mark_next;                   /* the issuer's: the next round's mark stream */
    uint64_t chain_bytes;                 /* FERRY_STAGING_CHAIN_BYTES: 0, or a chained round's bytes at least */
    unsigned chain_lanes;                 /* FERRY_STAGING_CHAIN_LANES: mark streams a chained round's groups take */
    ferry_stream *mstreams[MARK_STREAMS_MAX];
    volatile uint32_t *marks;             /* nchunks words, MARK_STRIDE apart, in device-visible host memory */
    pthread_t worker;
};

/* Spinning budgets: a sleeping worker costs a wake-up (tens of µs in a VM)
 * before it retires the next copy, and blocking on the oldest copy leaves
 * new work queued; so the worker polls for a while (FERRY_STAGING_SPIN_US,
 * 50 µs by default; longer keeps it awake through a batch at the price of
 * a core while transfers run) before it sleeps, and briefly before it
 * blocks. */
#define IDLE_SPIN_US_DEFAULT 50u
#define IDLE_SPIN_US_MAX 100000u
/* FERRY_STAGING_ISSUER_RETIRE_US: how long a thread that issued gathers
 * while the worker slept polls the first group before it leaves it to the
 * worker (a wake-up costs 20-50 us in a VM, more from a deep C-state, on
 * the path of the batch's first frame).  Off by default: on 2 x H200 a
 * one-thread staged WRITE of 16 KiB x 128 moved the same with it as
 * without, alternated in one run (docs/BENCHMARKS.md, h16u). */
#define ISSUER_RETIRE_US_DEFAULT 0u
#define ISSUER_RETIRE_US_MAX 1000u
/* FERRY_STAGING_ISSUER_RETIRE_GROUPS: how many groups of the gathers at the
 * head of the FIFO that thread retires, one after another within its
 * budget (1: the first only, as before; more: the round's later groups do
 * not wait for the worker's wake-up either, and the worker, not needed
 * meanwhile, sleeps instead of spinning while that thread retires).
 * Default below: see docs/BENCHMARKS.md (h16a). */
#define ISSUER_RETIRE_GROUPS_DEFAULT 1u
#define ISSUER_RETIRE_GROUPS_MAX STAGING_POOL_CHUNKS_MAX
/* FERRY_STAGING_INLINE_FIRST: the thread that retires a round's first
 * gather (the worker, or the submitting thread with
 * FERRY_STAGING_ISSUER_RETIRE_US) may write its frame to an idle connection
 * itself, as a host submit's last frame is, instead of waking a sender
 * thread.  Default below: see docs/BENCHMARKS.md (h16w). */
#define INLINE_FIRST_DEFAULT 0u
/* FERRY_STAGING_INLINE_LAST: the worker, retiring a round's last gather
 * with nothing else to retire or issue after it, lets the transport write
 * that frame on it (to an idle connection, what the socket takes at once):
 * the batch's last frame, the one it waits for, then does not wait for a
 * sender's wake-up, and no other retire waits behind the write (what made
 * FERRY_STAGING_INLINE_FIRST lose).  Default below: see docs/BENCHMARKS.md
 * (h16x). */
#define INLINE_LAST_DEFAULT 0u
/* FERRY_STAGING_SCATTER_RETIRE_US: how long the transport thread that
 * issued a READ's scatter while the worker slept polls it before it leaves
 * it to the worker (the worker always sleeps by the time a READ's payload
 * is back: nothing of the READ was in flight on the device meanwhile).
 * Default below: see docs/BENCHMARKS.md (h16x). */
#define SCATTER_RETIRE_US_DEFAULT 0u
#define COPY_POLL_NS 200000u
#define MARK_SLEEP_NS 20000             /* then between polls of a mark */

/* The pool's worker thread (staging.c): issues what waited for a chunk and
 * retires every copy, until the pool stops. */
void *staging_worker_main(void *arg);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * trace.h — a timeline of the data path, for finding where a batch's time
 * goes (FERRY_TRACE=PATH; off by default, where a trace point costs one
 * relaxed load and a branch).
 *
 * Every thread appends fixed-size records {monotonic ns, event, thread,
 * argument} to one process-wide array with an atomic index (no locks, no
 * allocation on the hot path); records past the array's end are dropped and
 * counted.  PATH (".%d" becomes the process id) is created when the first
 * engine starts (one that cannot be is reported then, and nothing is traced)
 * and the array is written to it when the process exits, one line a record:
 * "ns thread event arg" (thread: the kernel's thread id, so a process's main
 * thread has the process id); a child forked from the process writes nothing
 * there.  CLOCK_MONOTONIC
 * is one clock for every process of a host, so an initiator's and a target's
 * files merge into one timeline (bench/trace_batches.py).
 */
#ifndef FERRY_TRACE_H
#define FERRY_TRACE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum trace_event {
    TR_BATCH_SUBMIT,     /* ferry_batch_submit entered; arg: requests */
    TR_BATCH_SUBMITTED,  /* its frames handed to transports / staging */
    TR_BATCH_DONE,       /* the batch's last request ended */
    TR_BATCH_WOKEN,      /* ferry_batch_wait returned */
    TR_STAGE_QUEUED,     /* a frame reached a staging pool; arg: bytes */
    TR_STAGE_ISSUE,      /* a group's copies enqueued; arg: copies */
    TR_STAGE_RETIRED,    /* a group's copies done; arg: chunks */
    TR_TCP_SEND,         /* a tcp sender starts a frame; arg: bytes */
    TR_TCP_SENT,         /* ... and wrote all of it */
    TR_TCP_ACK,          /* a tcp receiver has a frame's response (and READ payload) */
    TR_SRV_FRAME,        /* a tcp target read a frame's header and entries; arg: entries */
    TR_SRV_PAYLOAD,      /* ... received its WRITE payload (device: into the bounce) */
    TR_SRV_COPY,         /* ... its device copies done (WRITE: H2D, READ: D2H); arg: bytes */
    TR_SRV_ANSWERED,     /* ... sent its ack / READ payload */
    TR_SHM_GROUP,        /* a shm worker took frames; arg: frames */
    TR_SHM_COPIED,       /* ... their device copies done; arg: copies */
    TR_COPY_BEGIN,       /* ferry_device_copy_sync called; arg: copies */
    TR_COPY_QUEUED,      /* ... its copies enqueued on the device */
    TR_COPY_SYNCED,      /* ... and complete */
    TR_COPY_WAIT,        /* ferry_device_copy_wait begins to wait for copies started before */
    TR_NEVENTS
};

extern atomic_bool ferry_trace_on;

void ferry_trace_put(enum trace_event ev, uint64_t arg);
/* Reads FERRY_TRACE once per process; later calls do nothing. */
void ferry_trace_init(void);

#define TRACE(ev, arg)                                                          \
    do {                                                                        \
        if (atomic_load_explicit(&ferry_trace_on, memory_order_relaxed))        \
            ferry_trace_put((ev), (uint64_t)(arg));                             \
    } while (0)

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sim_internal.h — what the sim device's files share (private to
 * src/device/sim*.c): its limits, the allocation tables, the process-wide
 * simulated hardware (defined in sim.c) and the helpers that address it.
 * sim.c: setup, memory, streams and copies; sim_ipc.c: memory shared with
 * other processes.
 */
#ifndef FERRY_SIM_INTERNAL_H
#define FERRY_SIM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "device/backend.h"
#include "device/device.h"

#define SIM_MAX_DEVICES 16
#define SIM_PAGE ((size_t)4096)
#define SIM_DEFAULT_DEVICES 2
#define SIM_DEFAULT_DEVICE_MEM ((size_t)16 << 30)
#define SIM_MIN_DEVICE_MEM ((size_t)1 << 20)
#define SIM_FALLBACK_FLOOR ((size_t)256 << 20)
#define SIM_STREAM_MAGIC 0x73696d73u /* "sims" */
#define SIM_MAX_FAULTS 8

/* The calls FERRY_SIM_REFUSE can refuse, each counted from 1 per process
 * (mark_unsupported refuses a call of stream_mark, counted as mark). */
enum sim_op { SIM_OP_HOST_ALLOC, SIM_OP_HOST_FUNC, SIM_OP_WRITE_FLAG, SIM_OP_MARK, SIM_OP_MARK_UNSUPPORTED, SIM_OPS };

/* One live allocation: [off, off + len) of its device's region is usable,
 * [off, off + span) is taken (span = len rounded up to a page). */
struct sim_alloc {
    size_t off;
    size_t len;
    size_t span;
    int fd;                      /* exported: the memfd holding its bytes, else -1 */
    int imported;                /* its shadow maps another process's memfd */
    struct sim_ipc_tag *tag;     /* shared (exported or imported): the memfd's last page */
};

struct sim_device {
    pthread_mutex_t lock;        /* guards allocs, count, cap, cursor */
    struct sim_alloc *allocs;    /* sorted by off */
    size_t count;
    size_t cap;
    size_t cursor;               /* next-fit: where the next search starts */
};

/* The process-wide simulated hardware; written once by sim_load() (sim.c). */
struct sim_hw {
    struct ferry_device_loader loader;
    int ndev;
    size_t dev_size;             /* bytes of address space per device */
    size_t total;                /* ndev * dev_size */
    char *base;                  /* the PROT_NONE device addresses */
    char *shadow;                /* where the bytes really are */
    struct sim_device devs[SIM_MAX_DEVICES];
    /* FERRY_SIM_FAIL_COPY: the copy jobs that fail, and where */
    size_t nfaults;
    struct sim_fault {
        uint64_t job;
        int at_start;
    } faults[SIM_MAX_FAULTS];
    atomic_uint_fast64_t jobs;   /* copy_async calls with copies so far */
    /* FERRY_SIM_REFUSE: the calls of each op that are refused */
    size_t nrefusals;
    struct sim_refusal {
        enum sim_op op;
        uint64_t call;
    } refusals[SIM_MAX_FAULTS];
    atomic_uint_fast64_t calls[SIM_OPS]; /* calls of each op so far */
    atomic_uint_fast64_t host_frees;     /* host_free calls so far (tests: pinned memory given back) */
    atomic_int flag_waits;       /* streams now waiting on a flag (stream_wait_flag) */
    atomic_int waits_queued;     /* flag waits enqueued and not yet over */
    int stall_on_wait;           /* FERRY_SIM_STALL_ON_WAIT */
    uint64_t hold_job;           /* FERRY_SIM_HOLD_COPY: this copy job waits for hold_path to exist (0: none) */
    char hold_path[256];
    unsigned sync_timeout_ms;    /* FERRY_SIM_SYNC_TIMEOUT_MS: a stream_sync's bound (0: none) */
    unsigned h2d_delay_us;       /* FERRY_SIM_H2D_DELAY_US: an H2D job's time before its bytes land (0: none) */
};
extern struct sim_hw sim_hw;

/* sim.c */
int sim_init(void);
int sim_check_dev(int dev); /* 0, or FERRY_ENODEV naming dev */
int sim_device_of(const void *p); /* the sim device whose region holds p, or -1 */
char *sim_shadow_of(const void *p); /* where p's bytes really are */
long sim_last_at_or_before(const struct sim_device *d, size_t x); /* d's lock held */
int sim_mem_alloc(int dev, size_t len, void **out);
void sim_release_locked(struct sim_device *d, size_t i); /* d's lock held */

/* sim_config.c: FERRY_SIM_DEVICES / _DEVICE_MEM into the arguments (size_given:
 * set explicitly), FERRY_SIM_FAIL_COPY / _HOLD_COPY / _REFUSE / _SYNC_TIMEOUT_MS
 * / _H2D_DELAY_US into sim_hw.  0 or FERRY_EINVAL naming the variable. */
int sim_read_config(int *ndev, size_t *dev_size, int *size_given);

/* sim_ipc.c */
int sim_ipc_export(const void *ptr, size_t len, void *handle, size_t *handle_len);
int sim_ipc_open(int dev, const void *handle, size_t handle_len, void **ptr, size_t *room);
void sim_ipc_close(int dev, void *ptr);
/* A shared allocation goes (sim_release_locked): its exporter's free is
 * marked where importers see it.  The device's lock held. */
void sim_ipc_release(struct sim_alloc *a);
/* A copy touches allocation a of dev: one through an opening whose exporter
 * has freed the allocation is counted (CUDA would run it unnoticed into
 * memory the exporter no longer sees).  The device's lock held. */
void sim_ipc_check_access(const struct sim_alloc *a, int dev, const void *p, size_t len);

/* What this process's sim IPC did, for tests: handles opened and closed,
 * and copies through openings of allocations their exporter had freed. */
struct sim_ipc_counts {
    uint64_t opens, closes, stale_copies;
};
void sim_ipc_counts(struct sim_ipc_counts *out);

#endif

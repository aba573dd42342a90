/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fake_acl.h — the parts of the fake ACL runtime (fake_acl.c, fake_acl_mem.c,
 * fake_acl_hang.c) that its files share: modes, counters, streams.  Not a CANN header: the prototypes the fake
 * exports are written out in fake_acl.c exactly as acl/acl_rt.h declares them.
 */
#ifndef FAKE_ACL_H
#define FAKE_ACL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef int aclError;

/* Error codes, as acl/acl_base.h and acl/error_codes/rt_error_codes.h number them. */
enum {
    ACL_SUCCESS = 0,
    ACL_ERROR_INVALID_PARAM = 100000,
    ACL_ERROR_UNINITIALIZE = 100001,
    ACL_ERROR_REPEAT_INITIALIZE = 100002,
    ACL_ERROR_RT_PARAM_INVALID = 107000,
    ACL_ERROR_RT_INVALID_DEVICEID = 107001,
    ACL_ERROR_RT_CONTEXT_NULL = 107002,
    ACL_ERROR_RT_STREAM_CONTEXT = 107003,
    ACL_ERROR_RT_ADDR_UNALIGNED = 107008,
    ACL_ERROR_RT_STREAM_ABORT = 107023,
    ACL_ERROR_RT_FEATURE_NOT_SUPPORT = 207000,
    ACL_ERROR_RT_MEMORY_ALLOCATION = 207001,
    ACL_ERROR_RT_INTERNAL_ERROR = 507000,
    ACL_ERROR_RT_STREAM_SYNC_TIMEOUT = 507046,
};

#define EXPORT __attribute__((visibility("default")))
#define CTX_MAGIC 0x63747866u
#define STREAM_MAGIC 0x73747266u

typedef void *aclrtStream;

/* aclrtMemcpyKind */
enum { ACL_MEMCPY_HOST_TO_HOST, ACL_MEMCPY_HOST_TO_DEVICE, ACL_MEMCPY_DEVICE_TO_HOST,
       ACL_MEMCPY_DEVICE_TO_DEVICE };

/* Modes selected by the environment (read once, at the first call). */
enum pageable_mode { PAGEABLE_CORRUPT, PAGEABLE_REJECT, PAGEABLE_OK };
enum batch_mode { BATCH_LOOP, BATCH_UNSUPPORTED };

struct fake_config {
    int devices;                 /* FAKEACL_DEVICES, default 2 */
    size_t device_mem;           /* FAKEACL_DEVICE_MEM_MB, default 1024 */
    enum pageable_mode pageable; /* FAKEACL_PAGEABLE=corrupt|reject|ok, default corrupt */
    size_t align;                /* FAKEACL_ALIGN=64|1, default 64 */
    enum batch_mode batch;       /* FAKEACL_BATCH=loop|unsupported, default loop */
    int attrs_unknown;           /* FAKEACL_ATTRS=unknown: PointerGetAttributes knows nothing */
    int lazy;                    /* FAKEACL_EXEC=lazy: copies run only when synced/queried */
    uint64_t fail_at[8];         /* FAKEACL_FAIL_COPIES=N,M: these executed copies fail */
    int nfail;
    int no_abort;                /* FAKEACL_ABORT=unsupported: aclrtStreamAbort refuses (fakeacl_abort_supported) */
    int no_timed_sync;           /* FAKEACL_TIMED_SYNC=unsupported: aclrtSynchronizeStreamWithTimeout refuses */
};

extern struct fake_config fake;

/* Counters for the report printed at exit and fakeacl_stat(). */
extern atomic_ullong fake_copies, fake_pageable, fake_batch_calls, fake_failed,
    fake_set_device[16], fake_hung, fake_aborted;

struct fake_ctx {
    uint32_t magic;
    int dev;
};

struct task {
    char *dst;
    const char *src;
    size_t len;
    uintptr_t adst, asrc;        /* the caller's addresses (device ones before fake_shadow) */
    int corrupt;                 /* pageable host memory on an old CANN */
    struct task *next;
};

struct fake_stream {
    uint32_t magic;
    struct fake_ctx *ctx;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct task *head, *tail;    /* queued, oldest first */
    uint64_t queued, done, released;
    aclError error;              /* first failure not yet reported */
    int stopping;
    int running;                 /* the worker is executing the head task (lock) */
    int aborting;                /* aclrtStreamAbort in progress: the worker takes nothing (lock) */
    atomic_int abort_hung;       /* aclrtStreamAbort: a hung copy of this stream gives up */
    uint64_t aborts;             /* aborts so far (lock): waits they interrupt fail */
    pthread_t worker;
    struct fake_stream *next_stream; /* every live stream (streams_lock) */
};

/* Every entry point starts here: the lifetime rules of aclInit / aclFinalize. */
aclError fake_enter(const char *fn, int needs_init);
#define ENTER(needs_init)                                                                          \
    do {                                                                                           \
        aclError e_ = fake_enter(__func__, needs_init);                                            \
        if (e_)                                                                                    \
            return e_;                                                                             \
    } while (0)
/* The stream argument of a call, checked against the current context. */
aclError fake_check_stream(const char *fn, aclrtStream stream, struct fake_stream **out);
/* Releases everything queued to the stream's worker and waits for it when wait. */
aclError fake_drain(struct fake_stream *s, int wait, int *busy);

/* Hangs (fake_acl_hang.c): called by a stream's worker before it executes
 * its n-th copy; when that copy is to hang, blocks until fakeacl_unhang()
 * (returns 0: the copy runs) or an abort of the stream (returns 1: it does
 * not). */
int fake_hang_here(struct fake_stream *s, uint64_t n);
/* FAKEACL_HANG_COPY=N (0: none): the Nth copy the process executes hangs,
 * as after fakeacl_hang(N) (for a child process the test cannot call). */
void fake_hang_setup(uint64_t n);

/* Records the message aclGetRecentErrMsg returns and passes the code on. */
aclError fake_fail(aclError code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Memory (fake_acl_mem.c). */
int fake_mem_init(void);
/* The device whose reservation holds p, or -1. */
int fake_device_of(const void *p);
/* 1 if [p, p+len) lies in one live allocation of device dev. */
int fake_device_range_ok(int dev, const void *p, size_t len);
/* Where the bytes of device address p really are. */
char *fake_shadow(const void *p);
/* 1 if [p, p+len) lies in one live aclrtMallocHost allocation. */
int fake_host_pinned(const void *p, size_t len);
/* The length of the live allocation (device or aclrtMallocHost) starting at p, or 0. */
size_t fake_alloc_len(const void *p);
aclError fake_dev_malloc(int dev, void **out, size_t size);
aclError fake_dev_free(void *p);
aclError fake_host_malloc(void **out, size_t size);
aclError fake_host_free(void *p);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fake_acl.h — the parts of the fake ACL runtime (fake_acl.c, fake_acl_mem.c)
 * that its two files share.  Not a CANN header: the prototypes the fake
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
    ACL_ERROR_RT_FEATURE_NOT_SUPPORT = 207000,
    ACL_ERROR_RT_MEMORY_ALLOCATION = 207001,
    ACL_ERROR_RT_INTERNAL_ERROR = 507000,
};

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
};

extern struct fake_config fake;

/* Counters for the report printed at exit and fakeacl_stat(). */
extern atomic_ullong fake_copies, fake_pageable, fake_batch_calls, fake_failed,
    fake_set_device[16];

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

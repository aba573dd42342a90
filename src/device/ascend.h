/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ascend.h — what the two files of the Ascend backend share: the ACL ABI
 * (declared from the public CANN documentation, acl/acl_rt.h; no CANN header
 * is needed to build), the loaded entry points, context switching, and
 * ferry's own records of the memory it got from ACL.  Not for the engine.
 *
 * ascend.c: loading, contexts, memory, locate / check_location.
 * ascend_copy.c: streams and copies (batched, bounced, error model).
 */
#ifndef FERRY_DEVICE_ASCEND_H
#define FERRY_DEVICE_ASCEND_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "device/device.h"

typedef int aclError;
typedef void *aclrtStream;
typedef void *aclrtContext;

enum {
    ACL_SUCCESS = 0,
    ACL_ERROR_REPEAT_INITIALIZE = 100002,
    ACL_ERROR_RT_FEATURE_NOT_SUPPORT = 207000,
    ACL_ERROR_RT_STREAM_SYNC_TIMEOUT = 507046, /* acl/error_codes/rt_error_codes.h */
    ACL_MEM_MALLOC_HUGE_FIRST = 0,           /* aclrtMemMallocPolicy */
    ACL_MEMCPY_HOST_TO_DEVICE = 1,           /* aclrtMemcpyKind */
    ACL_MEMCPY_DEVICE_TO_HOST = 2,
    ACL_MEMCPY_DEVICE_TO_DEVICE = 3,
    ACL_STREAM_STATUS_COMPLETE = 0,          /* aclrtStreamStatus */
    ACL_STREAM_STATUS_NOT_READY = 1,
    ACL_MEM_LOCATION_TYPE_HOST = 0,          /* aclrtMemLocationType */
    ACL_MEM_LOCATION_TYPE_DEVICE = 1,
};

/* aclrtMemLocation */
struct acl_mem_location {
    uint32_t id;
    int type;
};

/* aclrtPtrAttributes {aclrtMemLocation location; uint32_t pageSize;
 * uint32_t rsv[4];}, padded in case a later CANN grows it. */
union acl_ptr_attributes {
    struct {
        struct acl_mem_location location;
        uint32_t page_size;
        uint32_t rsv[4];
    } a;
    unsigned char room[128];
};

/* aclrtMemcpyBatchAttr */
struct acl_memcpy_batch_attr {
    struct acl_mem_location dst_loc;
    struct acl_mem_location src_loc;
    uint8_t rsv[16];
};

struct acl_api {
    aclError (*aclInit)(const char *config_path);
    aclError (*aclrtGetDeviceCount)(uint32_t *count);
    aclError (*aclrtSetDevice)(int32_t device);
    aclError (*aclrtGetCurrentContext)(aclrtContext *ctx);
    aclError (*aclrtSetCurrentContext)(aclrtContext ctx);
    aclError (*aclrtMalloc)(void **dev_ptr, size_t size, int policy);
    aclError (*aclrtFree)(void *dev_ptr);
    aclError (*aclrtMallocHost)(void **host_ptr, size_t size);
    aclError (*aclrtFreeHost)(void *host_ptr);
    aclError (*aclrtCreateStream)(aclrtStream *stream);
    aclError (*aclrtDestroyStream)(aclrtStream stream);
    /* synchronous; unlike the async call, no 64-byte rule and any host memory (CANN 8.0 docs) */
    aclError (*aclrtMemcpy)(void *dst, size_t dest_max, const void *src, size_t count, int kind);
    aclError (*aclrtMemcpyAsync)(void *dst, size_t dest_max, const void *src, size_t count, int kind,
                                 aclrtStream stream);
    aclError (*aclrtSynchronizeStream)(aclrtStream stream);
    /* optional */
    aclError (*aclrtStreamQuery)(aclrtStream stream, int *status);
    /* timeout in ms, -1 for ever; ACL_ERROR_RT_STREAM_SYNC_TIMEOUT when it passes */
    aclError (*aclrtSynchronizeStreamWithTimeout)(aclrtStream stream, int32_t timeout);
    /* stops the stream's running task and drops the queued ones (Atlas A2/A3) */
    aclError (*aclrtStreamAbort)(aclrtStream stream);
    aclError (*aclrtPointerGetAttributes)(const void *ptr, union acl_ptr_attributes *attrs);
    aclError (*aclrtMemcpyBatchAsync)(void **dsts, size_t *dest_max, void **srcs, size_t *sizes,
                                      size_t num_batches, struct acl_memcpy_batch_attr *attrs,
                                      size_t *attrs_indexes, size_t num_attrs, size_t *fail_index,
                                      aclrtStream stream);
    const char *(*aclGetRecentErrMsg)(void);
};

extern struct acl_api acl;
extern atomic_int npu_batch_enabled;   /* FERRY_NPU_BATCH_COPY=1 and the call exists */
extern size_t npu_copy_align;          /* FERRY_NPU_COPY_ALIGN */
extern uint32_t npu_sync_timeout_ms;   /* FERRY_NPU_SYNC_TIMEOUT_MS: every wait on a stream, at most */

/* ACL's message of the call that failed last on this thread (read once:
 * ACL clears it), or "no detail from ACL". */
const char *npu_error_text(int r);
/* Drops the thread's ACL messages after a failure ferry expects or ignores. */
void npu_forget_error(void);
int npu_acl_fail(aclError r, const char *what, int dev);

/* Loads ACL (npu_init) and checks that the process is not exiting: after
 * exit() began, ACL may already be finalized by its owner (torch_npu), and
 * any call into it is undefined.  0, or FERRY_ENODEV with the reason. */
int npu_ready(void);
/* 1 while ACL may be called to release resources (loaded, not exiting). */
int npu_may_release(void);

/* The caller's ACL context is saved and dev's default context made current
 * for the duration of a call. */
struct ctx_guard {
    aclrtContext prev;
    aclrtContext ours;
};
int npu_ctx_enter(int dev, struct ctx_guard *g);
void npu_ctx_leave(const struct ctx_guard *g);
/* A context for a device-neutral call: the caller's own, else one ferry made
 * already.  Never opens a device nobody named: FERRY_ENODEV then. */
int npu_any_ctx_enter(struct ctx_guard *g);

/* 1 if [p, p+len) lies in pinned memory from host_alloc. */
int npu_host_pinned(const void *p, size_t len);

/* ascend_copy.c: the stream ops. */
int npu_stream_create(int dev, ferry_stream **out);
void npu_stream_destroy(ferry_stream *stream);
int npu_copy_async(ferry_stream *stream, enum ferry_copy_dir dir, const struct ferry_copy *copies, size_t n);
int npu_stream_query(ferry_stream *stream);
int npu_stream_sync(ferry_stream *stream);
int npu_stream_abandoned(ferry_stream *stream);

#endif /* FERRY_DEVICE_ASCEND_H */

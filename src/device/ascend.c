/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ascend.c — Huawei Ascend NPUs ("npu:N") through ACL (CANN's AscendCL):
 * loading, contexts, memory, and telling where a pointer lives.  Streams and
 * copies are in ascend_copy.c; the ABI both use is in ascend.h.
 *
 * libascendcl.so (or FERRY_ASCEND_LIBRARY) is loaded with dlopen at first
 * use.  Every op makes the device's default context current on the calling
 * thread for the call and restores the caller's context afterwards; ferry
 * never opens a context on a device the caller did not name.  No threads of
 * its own; owns the library handle, one default context per device used
 * (never reset), and two records: the pinned host ranges host_alloc handed
 * out (so copies can tell pageable memory) and the device allocations
 * mem_alloc made (so locate works where ACL cannot classify pointers).
 *
 * ACL's lifetime belongs to whoever initialised it (torch_npu usually);
 * aclFinalize is not reference-counted.  ferry never finalizes ACL; once the
 * process has begun to exit, ferry makes no ACL call (resources are left to
 * the OS), since an exit handler may have finalized ACL already.  Destroy
 * engines before anything calls aclFinalize (README: "Ascend").
 *
 * Runs in CI on the strict fake runtime of tests/ascend; NOT run on Ascend
 * hardware by ferry's CI (tests/npu/run.sh is the check for a 910B host).
 */
#include "device/ascend.h"
#include "device/backend.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "err.h"
#include "log.h"

_Static_assert(sizeof(struct acl_memcpy_batch_attr) == 32, "aclrtMemcpyBatchAttr is 32 bytes");

#define NPU_MAX_DEVICES 64
/* FERRY_NPU_SYNC_TIMEOUT_MS: a copy of a few MiB takes milliseconds; one
 * that has not completed in 30 s is on a hung device (a dead link, a wedged
 * core, a driver fault), not a slow one. */
#define NPU_SYNC_TIMEOUT_MS_DEFAULT 30000u
#define NPU_SYNC_TIMEOUT_MS_MAX 2147483647u /* aclrtSynchronizeStreamWithTimeout takes an int32_t */

struct acl_api acl;
atomic_int npu_batch_enabled;
size_t npu_copy_align = 64;
uint32_t npu_sync_timeout_ms = NPU_SYNC_TIMEOUT_MS_DEFAULT;

static struct ferry_device_loader loader = FERRY_DEVICE_LOADER_INIT;
static void *libacl;
static int device_count;
static atomic_int exiting;
static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(aclrtContext) device_ctx[NPU_MAX_DEVICES];

const char *npu_error_text(int r)
{
    (void)r;
    const char *s = acl.aclGetRecentErrMsg ? acl.aclGetRecentErrMsg() : NULL;
    return s != NULL && *s != '\0' ? s : "no detail from ACL";
}

/* aclGetRecentErrMsg returns and clears the thread's messages, and the
 * application (torch_npu) reads them after its own failed calls: a call
 * ferry expects to fail, or whose failure it ignores, has its message read
 * and dropped at once, so that none is left on the caller's thread and none
 * is stacked under the message of a later failure ferry reports. */
void npu_forget_error(void)
{
    if (acl.aclGetRecentErrMsg)
        (void)acl.aclGetRecentErrMsg();
}

int npu_acl_fail(aclError r, const char *what, int dev)
{
    return ferry_fail(FERRY_EIO, "npu:%d: %s: ACL error %d: %s", dev, what, r, npu_error_text(r));
}

/* ---------------------------------------------------------------- address records */

struct range {
    uintptr_t start;
    size_t len;
    int dev;                     /* -1: pinned host memory */
};

static pthread_mutex_t ranges_lock = PTHREAD_MUTEX_INITIALIZER;
static struct range *ranges;
static size_t nranges, ranges_cap;

static int ranges_add(void *p, size_t len, int dev)
{
    pthread_mutex_lock(&ranges_lock);
    if (nranges == ranges_cap) {
        size_t cap = ranges_cap ? 2 * ranges_cap : 64;
        struct range *r = realloc(ranges, cap * sizeof *r);
        if (!r) {
            pthread_mutex_unlock(&ranges_lock);
            return ferry_fail(FERRY_ENOMEM, "npu: address record");
        }
        ranges = r;
        ranges_cap = cap;
    }
    ranges[nranges++] = (struct range){(uintptr_t)p, len, dev};
    pthread_mutex_unlock(&ranges_lock);
    return 0;
}

static void ranges_remove(void *p)
{
    pthread_mutex_lock(&ranges_lock);
    for (size_t i = 0; i < nranges; i++)
        if (ranges[i].start == (uintptr_t)p) {
            ranges[i] = ranges[--nranges];
            break;
        }
    pthread_mutex_unlock(&ranges_lock);
}

/* The record holding [p, p+len): its dev (-1 host) in *dev; 0 if none. */
static int ranges_find(const void *p, size_t len, int *dev)
{
    uintptr_t a = (uintptr_t)p;
    int found = 0;
    pthread_mutex_lock(&ranges_lock);
    for (size_t i = 0; i < nranges && !found; i++)
        if (a >= ranges[i].start && a - ranges[i].start <= ranges[i].len &&
            len <= ranges[i].len - (a - ranges[i].start)) {
            *dev = ranges[i].dev;
            found = 1;
        }
    pthread_mutex_unlock(&ranges_lock);
    return found;
}

int npu_host_pinned(const void *p, size_t len)
{
    int dev;
    return ranges_find(p, len, &dev) && dev < 0;
}

/* ---------------------------------------------------------------- loading */

/* C exit() began (atexit), or ferry_process_exiting: ACL may be finalized
 * by its owner from now on. */
static void npu_at_exit(void)
{
    atomic_store(&exiting, 1);
}

static int parse_knobs(void)
{
    uint64_t batch = 0, align = npu_copy_align, sync_ms = NPU_SYNC_TIMEOUT_MS_DEFAULT;
    int rc = config_env_number("FERRY_NPU_BATCH_COPY", false, 0, 1, "must be 0 or 1", &batch);
    if (rc >= 0)
        rc = config_env_number("FERRY_NPU_COPY_ALIGN", false, 1, 64, "must be 1 or 64", &align);
    /* 0 is refused, not taken for "no limit": a wait on a hung NPU would
     * keep its request and the engine's teardown for ever */
    if (rc >= 0)
        rc = config_env_number("FERRY_NPU_SYNC_TIMEOUT_MS", false, 1, NPU_SYNC_TIMEOUT_MS_MAX,
                               "milliseconds a wait on an NPU stream may take, 1-2147483647", &sync_ms);
    if (rc < 0)
        return rc;
    if (align != 1 && align != 64)
        return ferry_fail(FERRY_EINVAL, "FERRY_NPU_COPY_ALIGN=\"%llu\": must be 1 or 64", (unsigned long long)align);
    npu_copy_align = align;
    npu_sync_timeout_ms = (uint32_t)sync_ms;
    int want_batch = batch == 1;
    if (want_batch && acl.aclrtMemcpyBatchAsync == NULL)
        LOG_WARN("npu: FERRY_NPU_BATCH_COPY=1 but the ACL runtime lacks aclrtMemcpyBatchAsync");
    atomic_store(&npu_batch_enabled, want_batch && acl.aclrtMemcpyBatchAsync != NULL);
    return 0;
}

/* The library init() loads (FERRY_ASCEND_LIBRARY, else the runtime's soname). */
static const char *npu_driver_library(void)
{
    const char *path = getenv("FERRY_ASCEND_LIBRARY");
    return path && *path ? path : "libascendcl.so";
}

static int npu_load(void)
{
    const struct ferry_device_sym syms[] = {
        {"aclInit", &acl.aclInit, 1},
        {"aclrtGetDeviceCount", &acl.aclrtGetDeviceCount, 1},
        {"aclrtSetDevice", &acl.aclrtSetDevice, 1},
        {"aclrtGetCurrentContext", &acl.aclrtGetCurrentContext, 1},
        {"aclrtSetCurrentContext", &acl.aclrtSetCurrentContext, 1},
        {"aclrtMalloc", &acl.aclrtMalloc, 1},
        {"aclrtFree", &acl.aclrtFree, 1},
        {"aclrtMallocHost", &acl.aclrtMallocHost, 1},
        {"aclrtFreeHost", &acl.aclrtFreeHost, 1},
        {"aclrtCreateStream", &acl.aclrtCreateStream, 1},
        {"aclrtDestroyStream", &acl.aclrtDestroyStream, 1},
        {"aclrtMemcpyAsync", &acl.aclrtMemcpyAsync, 1},
        {"aclrtMemcpy", &acl.aclrtMemcpy, 1}, /* in every CANN */
        {"aclrtSynchronizeStream", &acl.aclrtSynchronizeStream, 1},
        {"aclrtStreamQuery", &acl.aclrtStreamQuery, 0},
        {"aclrtSynchronizeStreamWithTimeout", &acl.aclrtSynchronizeStreamWithTimeout, 0},
        {"aclrtStreamAbort", &acl.aclrtStreamAbort, 0},
        {"aclrtPointerGetAttributes", &acl.aclrtPointerGetAttributes, 0},
        {"aclrtMemcpyBatchAsync", &acl.aclrtMemcpyBatchAsync, 0},
        {"aclGetRecentErrMsg", &acl.aclGetRecentErrMsg, 0},
    };
    int rc = ferry_device_dlopen(npu_driver_library(), syms, sizeof syms / sizeof syms[0],
                                 &libacl);
    if (rc < 0)
        return rc;
    if ((rc = parse_knobs()) < 0)
        return rc;
    /* A framework (torch_npu) may have initialised ACL already; then it owns
     * ACL's lifetime.  ferry never calls aclFinalize either way. */
    aclError r = acl.aclInit(NULL);
    if (r != ACL_SUCCESS && r != ACL_ERROR_REPEAT_INITIALIZE)
        return ferry_fail(FERRY_ENODEV, "aclInit: ACL error %d: %s", r, npu_error_text(r));
    uint32_t count = 0;
    r = acl.aclrtGetDeviceCount(&count);
    if (r != ACL_SUCCESS)
        return ferry_fail(FERRY_ENODEV, "aclrtGetDeviceCount: ACL error %d: %s", r, npu_error_text(r));
    if (count == 0)
        return ferry_fail(FERRY_ENODEV, "the ACL runtime is loaded but sees no NPU");
    device_count = count > NPU_MAX_DEVICES ? NPU_MAX_DEVICES : (int)count;
    atexit(npu_at_exit);
    if (acl.aclrtStreamQuery == NULL)
        LOG_INFO("npu: no aclrtStreamQuery; stream_query waits for the stream");
    if (acl.aclrtSynchronizeStreamWithTimeout == NULL && acl.aclrtStreamQuery == NULL)
        LOG_WARN("npu: neither aclrtSynchronizeStreamWithTimeout nor aclrtStreamQuery: a wait on a hung NPU "
                 "stream cannot be bounded (FERRY_NPU_SYNC_TIMEOUT_MS has no effect)");
    if (acl.aclrtStreamAbort == NULL)
        LOG_INFO("npu: no aclrtStreamAbort: a stream that times out is abandoned, not aborted");
    if (acl.aclrtPointerGetAttributes == NULL)
        LOG_INFO("npu: no aclrtPointerGetAttributes (CANN < 8.1): only ferry's own allocations are located");
    LOG_INFO("npu: %d devices, copies %zu-byte aligned", device_count, npu_copy_align);
    return 0;
}

static int npu_init(void)
{
    return ferry_device_load_once(&loader, npu_load);
}

int npu_ready(void)
{
    int rc = npu_init();
    if (rc < 0)
        return rc;
    if (atomic_load(&exiting))
        return ferry_fail(FERRY_ENODEV, "npu: the process is exiting; ACL may be finalized");
    return 0;
}

int npu_may_release(void)
{
    return ferry_device_loaded(&loader) && !atomic_load(&exiting);
}

static int npu_device_count(void)
{
    return npu_init() == 0 ? device_count : 0;
}

/* ---------------------------------------------------------------- contexts */

/* The thread's current context, or NULL where it has none (ACL then fails
 * the call: a thread ferry or the application never set a device on). */
static aclrtContext current_context(void)
{
    aclrtContext cur = NULL;
    if (acl.aclrtGetCurrentContext(&cur) != ACL_SUCCESS) {
        npu_forget_error();
        return NULL;
    }
    return cur;
}

/* Makes ctx current again; a failure is only logged (the caller's call is done). */
static void restore_context(aclrtContext ctx)
{
    aclError r = acl.aclrtSetCurrentContext(ctx);
    if (r != ACL_SUCCESS)
        LOG_WARN("npu: restoring the caller's ACL context %p: ACL error %d: %s", ctx, r, npu_error_text(r));
}

/* The device's default context, made once with aclrtSetDevice (shared with
 * torch_npu and others in this process; never reset). */
static int device_context(int dev, aclrtContext *out)
{
    if (dev < 0 || dev >= device_count)
        return ferry_fail(FERRY_ENODEV, "npu:%d does not exist (%d devices)", dev, device_count);
    aclrtContext ctx = atomic_load(&device_ctx[dev]);
    if (ctx == NULL) {
        pthread_mutex_lock(&ctx_lock);
        ctx = atomic_load(&device_ctx[dev]);
        if (ctx == NULL) {
            aclrtContext prev = current_context();
            aclError r = acl.aclrtSetDevice(dev);
            if (r == ACL_SUCCESS)
                r = acl.aclrtGetCurrentContext(&ctx);
            int rc = r == ACL_SUCCESS && ctx != NULL ? 0 : npu_acl_fail(r, "aclrtSetDevice", dev);
            if (prev != NULL)
                restore_context(prev);
            if (rc < 0) {
                pthread_mutex_unlock(&ctx_lock);
                return rc;
            }
            atomic_store(&device_ctx[dev], ctx);
        }
        pthread_mutex_unlock(&ctx_lock);
    }
    *out = ctx;
    return 0;
}

int npu_ctx_enter(int dev, struct ctx_guard *g)
{
    int rc = device_context(dev, &g->ours);
    if (rc < 0)
        return rc;
    g->prev = current_context();
    if (g->prev != g->ours) {
        aclError r = acl.aclrtSetCurrentContext(g->ours);
        if (r != ACL_SUCCESS)
            return npu_acl_fail(r, "aclrtSetCurrentContext", dev);
    }
    return 0;
}

void npu_ctx_leave(const struct ctx_guard *g)
{
    if (g->prev != NULL && g->prev != g->ours)
        restore_context(g->prev);
}

/* The caller's context or one ferry made; 1 if there is one (entered). */
static int existing_ctx_enter(struct ctx_guard *g)
{
    aclrtContext cur = current_context();
    if (cur != NULL) {
        g->prev = g->ours = cur;
        return 1;
    }
    for (int i = 0; i < device_count; i++)
        if (atomic_load(&device_ctx[i]) != NULL)
            return npu_ctx_enter(i, g) == 0;
    return 0;
}

int npu_any_ctx_enter(struct ctx_guard *g)
{
    if (existing_ctx_enter(g))
        return 0;
    return ferry_fail(FERRY_ENODEV, "npu: no ACL context on this thread and none made yet: "
                                    "allocate or register memory of a named npu:N first");
}

/* ---------------------------------------------------------------- memory */

static int npu_mem_alloc(int dev, size_t len, void **out)
{
    struct ctx_guard g;
    int rc = npu_ready();
    if (rc < 0)
        return rc;
    if (len == 0 || out == NULL)
        return ferry_fail(FERRY_EINVAL, "npu:%d: mem_alloc needs len > 0 and out", dev);
    if ((rc = npu_ctx_enter(dev, &g)) < 0)
        return rc;
    aclError r = acl.aclrtMalloc(out, len, ACL_MEM_MALLOC_HUGE_FIRST);
    if (r != ACL_SUCCESS)
        rc = ferry_fail(FERRY_ENOMEM, "npu:%d: aclrtMalloc(%zu): ACL error %d: %s", dev, len, r, npu_error_text(r));
    else if ((rc = ranges_add(*out, len, dev)) < 0 && acl.aclrtFree(*out) != ACL_SUCCESS)
        npu_forget_error();
    npu_ctx_leave(&g);
    return rc;
}

static void npu_mem_free(int dev, void *ptr)
{
    struct ctx_guard g;
    if (ptr == NULL)
        return;
    ranges_remove(ptr);
    if (!npu_may_release() || npu_ctx_enter(dev, &g) < 0)
        return;
    aclError r = acl.aclrtFree(ptr);
    if (r != ACL_SUCCESS)
        LOG_ERROR("npu:%d: aclrtFree(%p): ACL error %d: %s", dev, ptr, r, npu_error_text(r));
    npu_ctx_leave(&g);
}

static int npu_host_alloc(size_t len, void **out)
{
    struct ctx_guard g;
    int rc = npu_ready();
    if (rc < 0)
        return rc;
    if (len == 0 || out == NULL)
        return ferry_fail(FERRY_EINVAL, "npu: host_alloc needs len > 0 and out");
    if ((rc = npu_any_ctx_enter(&g)) < 0)
        return rc;
    aclError r = acl.aclrtMallocHost(out, len);
    if (r != ACL_SUCCESS)
        rc = ferry_fail(FERRY_ENOMEM, "npu: aclrtMallocHost(%zu): ACL error %d: %s", len, r, npu_error_text(r));
    else if ((rc = ranges_add(*out, len, -1)) < 0 && acl.aclrtFreeHost(*out) != ACL_SUCCESS)
        npu_forget_error();
    npu_ctx_leave(&g);
    return rc;
}

static void npu_host_free(void *ptr)
{
    struct ctx_guard g;
    if (ptr == NULL)
        return;
    ranges_remove(ptr);
    if (!npu_may_release() || npu_any_ctx_enter(&g) < 0)
        return;
    aclError r = acl.aclrtFreeHost(ptr);
    if (r != ACL_SUCCESS)
        LOG_ERROR("npu: aclrtFreeHost(%p): ACL error %d: %s", ptr, r, npu_error_text(r));
    npu_ctx_leave(&g);
}

/* ---------------------------------------------------------------- where pointers live */

enum where { WHERE_UNKNOWN, WHERE_HOST, WHERE_DEVICE };

/* Asks ACL (CANN 8.1+) in the context g holds; never opens one. */
static enum where ask_acl(const void *ptr, int *dev)
{
    union acl_ptr_attributes attrs;
    if (acl.aclrtPointerGetAttributes == NULL)
        return WHERE_UNKNOWN;
    memset(&attrs, 0, sizeof attrs);
    if (acl.aclrtPointerGetAttributes(ptr, &attrs) != ACL_SUCCESS) {
        npu_forget_error();
        return WHERE_UNKNOWN;  /* e.g. torch_npu's VMM / caching allocations */
    }
    if (attrs.a.location.type != ACL_MEM_LOCATION_TYPE_DEVICE)
        return WHERE_HOST;
    *dev = (int)attrs.a.location.id;
    return WHERE_DEVICE;
}

/* ferry's own allocations first, then ACL in a context that exists. */
static enum where classify(const void *ptr, size_t len, int *dev)
{
    struct ctx_guard g;
    if (ranges_find(ptr, len, dev))
        return *dev >= 0 ? WHERE_DEVICE : WHERE_HOST;
    if (acl.aclrtPointerGetAttributes == NULL || !existing_ctx_enter(&g))
        return WHERE_UNKNOWN; /* quietly: locate() is asked about every pointer */
    enum where w = ask_acl(ptr, dev);
    npu_ctx_leave(&g);
    return w;
}

static int npu_locate(const void *ptr, size_t len, int *dev)
{
    int d = -1;
    if (ptr == NULL || !npu_may_release() || classify(ptr, len, &d) != WHERE_DEVICE)
        return 0;
    if (dev != NULL)
        *dev = d;
    return 1;
}

/* A location the caller named: trusted unless known to be wrong.  The named
 * device's context may be opened (the caller named it); no other. */
static int npu_check_location(const void *ptr, size_t len, int dev)
{
    struct ctx_guard g;
    int rc = npu_ready(), d = -1;
    if (rc < 0)
        return rc;
    enum where w = WHERE_UNKNOWN;
    aclrtContext named;
    /* the named device's context, for this memory's staging pool later */
    if ((rc = device_context(dev, &named)) < 0)
        return rc;
    if (ranges_find(ptr, len, &d)) {
        w = d >= 0 ? WHERE_DEVICE : WHERE_HOST;
    } else if (acl.aclrtPointerGetAttributes != NULL) {
        if ((rc = npu_ctx_enter(dev, &g)) < 0)
            return rc;
        w = ask_acl(ptr, &d);
        npu_ctx_leave(&g);
    }
    if (w == WHERE_HOST)
        return ferry_fail(FERRY_EINVAL, "0x%llx+%zu is not npu:%d memory (it is host memory)",
                          (unsigned long long)(uintptr_t)ptr, len, dev);
    if (w == WHERE_DEVICE && d != dev)
        return ferry_fail(FERRY_EINVAL, "0x%llx+%zu is not npu:%d memory (it belongs to npu:%d)",
                          (unsigned long long)(uintptr_t)ptr, len, dev, d);
    if (w == WHERE_UNKNOWN)
        LOG_INFO("npu:%d: ACL cannot classify %p; taking the named location on trust", dev, ptr);
    return 0;
}

static size_t npu_copy_alignment(void)
{
    return npu_copy_align;
}

/* The reference engine measured +60% bandwidth on 910B from gathering small
 * blocks in HBM before one D2H: staging does it below this block size. */
static size_t npu_aggregate_below(void)
{
    return (size_t)2 << 20;
}

static const struct ferry_config_knob npu_knobs[] = {
    {"FERRY_NPU_BATCH_COPY", "0", "1: use aclrtMemcpyBatchAsync for NPU staging copies (experimental in CANN)"},
    {"FERRY_NPU_COPY_ALIGN", "64",
     "alignment ACL async copies get (CANN: 64); other host memory, and pageable memory, is bounced"},
    {"FERRY_NPU_SYNC_TIMEOUT_MS", "30000",
     "longest wait on an NPU stream (ms, 1 or more); then FERRY_ETIMEDOUT and the stream is aborted or abandoned"},
    {"FERRY_ASCEND_LIBRARY", "libascendcl.so",
     "the ACL runtime the npu backend loads (a path, e.g. the tests' fake runtime)"},
    {NULL, NULL, NULL},
};

const struct ferry_device_ops ferry_device_npu = {
    .kind = "npu",
    .knobs = npu_knobs,
    .init = npu_init,
    .device_count = npu_device_count,
    .mem_alloc = npu_mem_alloc,
    .mem_free = npu_mem_free,
    .host_alloc = npu_host_alloc,
    .host_free = npu_host_free,
    .locate = npu_locate,
    .driver_library = npu_driver_library,
    .process_exiting = npu_at_exit,
    .stream_create = npu_stream_create,
    .stream_destroy = npu_stream_destroy,
    .copy_async = npu_copy_async,
    .stream_query = npu_stream_query,
    .stream_sync = npu_stream_sync,
    .stream_abandoned = npu_stream_abandoned,
    .check_location = npu_check_location,
    .copy_alignment = npu_copy_alignment,
    .aggregate_below = npu_aggregate_below,
};

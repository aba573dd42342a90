/*
 * ascend.c — Huawei Ascend NPUs ("npu:N") through ACL (CANN's AscendCL).
 *
 * libascendcl.so is loaded with dlopen at first use; the ACL types and
 * prototypes used are declared below from the public CANN documentation
 * (acl/acl_rt.h), no CANN header is needed to build.  Every op makes the
 * device's default context current on the calling thread for the call and
 * restores the caller's context afterwards.  No threads of its own; owns the
 * library handle and one default context per device used (never reset).
 *
 * Compiled everywhere but NOT run on Ascend hardware by ferry's CI: the code
 * follows the documented ABI; test_device_ascend is the check to run on a
 * 910B host.  aclrtMemcpyBatchAsync is documented as experimental, so it is
 * only used when FERRY_NPU_BATCH_COPY=1.
 */
#include "device/backend.h"
#include "device/device.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"

/* ---------------------------------------------------------------- ACL ABI */

typedef int aclError;
typedef void *aclrtStream;
typedef void *aclrtContext;

enum {
    ACL_SUCCESS = 0,
    ACL_ERROR_REPEAT_INITIALIZE = 100002,
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
_Static_assert(sizeof(struct acl_memcpy_batch_attr) == 32, "aclrtMemcpyBatchAttr is 32 bytes");

static struct {
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
    aclError (*aclrtMemcpyAsync)(void *dst, size_t dest_max, const void *src, size_t count,
                                 int kind, aclrtStream stream);
    aclError (*aclrtSynchronizeStream)(aclrtStream stream);
    /* optional */
    aclError (*aclrtStreamQuery)(aclrtStream stream, int *status);
    aclError (*aclrtPointerGetAttributes)(const void *ptr, union acl_ptr_attributes *attrs);
    aclError (*aclrtMemcpyBatchAsync)(void **dsts, size_t *dest_max, void **srcs,
                                      size_t *sizes, size_t num_batches,
                                      struct acl_memcpy_batch_attr *attrs,
                                      size_t *attrs_indexes, size_t num_attrs,
                                      size_t *fail_index, aclrtStream stream);
    const char *(*aclGetRecentErrMsg)(void);
} acl;

#define NPU_MAX_DEVICES 64
#define NPU_BATCH_CHUNK 256
#define NPU_STREAM_MAGIC 0x6e707573u /* "npus" */

static struct ferry_device_loader loader = FERRY_DEVICE_LOADER_INIT;
static void *libacl;
static int device_count;
static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(aclrtContext) device_ctx[NPU_MAX_DEVICES];
static atomic_int batch_enabled;

struct npu_stream {
    uint32_t magic;
    int dev;
    aclrtStream stream;
};

static const char *acl_error_text(int r)
{
    (void)r;
    const char *s = acl.aclGetRecentErrMsg ? acl.aclGetRecentErrMsg() : NULL;
    return s != NULL && *s != '\0' ? s : "no detail from ACL";
}

static int acl_fail(aclError r, const char *what, int dev)
{
    return ferry_fail(FERRY_EIO, "npu:%d: %s: ACL error %d: %s", dev, what, r,
                      acl_error_text(r));
}

/* ---------------------------------------------------------------- loading */

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
        {"aclrtSynchronizeStream", &acl.aclrtSynchronizeStream, 1},
        {"aclrtStreamQuery", &acl.aclrtStreamQuery, 0},
        {"aclrtPointerGetAttributes", &acl.aclrtPointerGetAttributes, 0},
        {"aclrtMemcpyBatchAsync", &acl.aclrtMemcpyBatchAsync, 0},
        {"aclGetRecentErrMsg", &acl.aclGetRecentErrMsg, 0},
    };
    int rc = ferry_device_dlopen("libascendcl.so", syms, sizeof syms / sizeof syms[0], &libacl);
    if (rc < 0)
        return rc;
    /* A framework (torch_npu) may have initialised ACL already. */
    aclError r = acl.aclInit(NULL);
    if (r != ACL_SUCCESS && r != ACL_ERROR_REPEAT_INITIALIZE)
        return ferry_fail(FERRY_ENODEV, "aclInit: ACL error %d: %s", r, acl_error_text(r));
    uint32_t count = 0;
    r = acl.aclrtGetDeviceCount(&count);
    if (r != ACL_SUCCESS)
        return ferry_fail(FERRY_ENODEV, "aclrtGetDeviceCount: ACL error %d: %s", r,
                          acl_error_text(r));
    if (count == 0)
        return ferry_fail(FERRY_ENODEV, "libascendcl.so loaded but it sees no NPU");
    device_count = count > NPU_MAX_DEVICES ? NPU_MAX_DEVICES : (int)count;

    const char *batch = getenv("FERRY_NPU_BATCH_COPY");
    int want_batch = batch != NULL && strcmp(batch, "1") == 0;
    if (want_batch && acl.aclrtMemcpyBatchAsync == NULL)
        LOG_WARN("npu: FERRY_NPU_BATCH_COPY=1 but libascendcl.so lacks aclrtMemcpyBatchAsync");
    atomic_store(&batch_enabled, want_batch && acl.aclrtMemcpyBatchAsync != NULL);
    if (acl.aclrtStreamQuery == NULL)
        LOG_INFO("npu: no aclrtStreamQuery; stream_query waits for the stream");
    LOG_INFO("npu: %d devices", device_count);
    return 0;
}

static int npu_init(void)
{
    return ferry_device_load_once(&loader, npu_load);
}

static int npu_device_count(void)
{
    return npu_init() == 0 ? device_count : 0;
}

/* ---------------------------------------------------------------- contexts */

struct ctx_guard {
    aclrtContext prev;
    aclrtContext ours;
};

/* The device's default context, made once with aclrtSetDevice (shared with
 * torch_npu and others in this process; never reset). */
static int device_context(int dev, aclrtContext *out)
{
    if (dev < 0 || dev >= device_count)
        return ferry_fail(FERRY_ENODEV, "npu:%d does not exist (%d devices)", dev,
                          device_count);
    aclrtContext ctx = atomic_load(&device_ctx[dev]);
    if (ctx == NULL) {
        pthread_mutex_lock(&ctx_lock);
        ctx = atomic_load(&device_ctx[dev]);
        if (ctx == NULL) {
            aclrtContext prev = NULL;
            if (acl.aclrtGetCurrentContext(&prev) != ACL_SUCCESS)
                prev = NULL;
            aclError r = acl.aclrtSetDevice(dev);
            if (r == ACL_SUCCESS)
                r = acl.aclrtGetCurrentContext(&ctx);
            if (prev != NULL)
                (void)acl.aclrtSetCurrentContext(prev);
            if (r != ACL_SUCCESS || ctx == NULL) {
                pthread_mutex_unlock(&ctx_lock);
                return acl_fail(r, "aclrtSetDevice", dev);
            }
            atomic_store(&device_ctx[dev], ctx);
        }
        pthread_mutex_unlock(&ctx_lock);
    }
    *out = ctx;
    return 0;
}

static int ctx_enter(int dev, struct ctx_guard *g)
{
    int rc = device_context(dev, &g->ours);
    if (rc < 0)
        return rc;
    if (acl.aclrtGetCurrentContext(&g->prev) != ACL_SUCCESS)
        g->prev = NULL;
    if (g->prev != g->ours) {
        aclError r = acl.aclrtSetCurrentContext(g->ours);
        if (r != ACL_SUCCESS)
            return acl_fail(r, "aclrtSetCurrentContext", dev);
    }
    return 0;
}

static void ctx_leave(const struct ctx_guard *g)
{
    if (g->prev != NULL && g->prev != g->ours)
        (void)acl.aclrtSetCurrentContext(g->prev);
}

/* Some context for device-neutral calls: the caller's, else the first
 * one ferry made, else npu:0's. */
static int any_ctx_enter(struct ctx_guard *g)
{
    aclrtContext cur = NULL;
    if (acl.aclrtGetCurrentContext(&cur) == ACL_SUCCESS && cur != NULL) {
        g->prev = g->ours = cur;
        return 0;
    }
    for (int i = 0; i < device_count; i++)
        if (atomic_load(&device_ctx[i]) != NULL)
            return ctx_enter(i, g);
    return ctx_enter(0, g);
}

/* ---------------------------------------------------------------- memory */

static int npu_mem_alloc(int dev, size_t len, void **out)
{
    struct ctx_guard g;
    int rc = npu_init();
    if (rc < 0)
        return rc;
    if (len == 0 || out == NULL)
        return ferry_fail(FERRY_EINVAL, "npu:%d: mem_alloc needs len > 0 and out", dev);
    if ((rc = ctx_enter(dev, &g)) < 0)
        return rc;
    aclError r = acl.aclrtMalloc(out, len, ACL_MEM_MALLOC_HUGE_FIRST);
    ctx_leave(&g);
    if (r != ACL_SUCCESS)
        return ferry_fail(FERRY_ENOMEM, "npu:%d: aclrtMalloc(%zu): ACL error %d: %s", dev, len,
                          r, acl_error_text(r));
    return 0;
}

static void npu_mem_free(int dev, void *ptr)
{
    struct ctx_guard g;
    if (ptr == NULL || !ferry_device_loaded(&loader) || ctx_enter(dev, &g) < 0)
        return;
    aclError r = acl.aclrtFree(ptr);
    ctx_leave(&g);
    if (r != ACL_SUCCESS)
        LOG_ERROR("npu:%d: aclrtFree(%p): ACL error %d: %s", dev, ptr, r, acl_error_text(r));
}

static int npu_host_alloc(size_t len, void **out)
{
    struct ctx_guard g;
    int rc = npu_init();
    if (rc < 0)
        return rc;
    if (len == 0 || out == NULL)
        return ferry_fail(FERRY_EINVAL, "npu: host_alloc needs len > 0 and out");
    if ((rc = any_ctx_enter(&g)) < 0)
        return rc;
    aclError r = acl.aclrtMallocHost(out, len);
    ctx_leave(&g);
    if (r != ACL_SUCCESS)
        return ferry_fail(FERRY_ENOMEM, "npu: aclrtMallocHost(%zu): ACL error %d: %s", len, r,
                          acl_error_text(r));
    return 0;
}

static void npu_host_free(void *ptr)
{
    struct ctx_guard g;
    if (ptr == NULL || !ferry_device_loaded(&loader) || any_ctx_enter(&g) < 0)
        return;
    aclError r = acl.aclrtFreeHost(ptr);
    ctx_leave(&g);
    if (r != ACL_SUCCESS)
        LOG_ERROR("npu: aclrtFreeHost(%p): ACL error %d: %s", ptr, r, acl_error_text(r));
}

/* Needs aclrtPointerGetAttributes (CANN 8+); without it nothing is located
 * and callers must name "npu:N" explicitly. */
static int npu_locate(const void *ptr, size_t len, int *dev)
{
    struct ctx_guard g;
    union acl_ptr_attributes attrs;
    (void)len;
    if (ptr == NULL || !ferry_device_loaded(&loader) || acl.aclrtPointerGetAttributes == NULL ||
        any_ctx_enter(&g) < 0)
        return 0;
    memset(&attrs, 0, sizeof attrs);
    aclError r = acl.aclrtPointerGetAttributes(ptr, &attrs);
    ctx_leave(&g);
    if (r != ACL_SUCCESS || attrs.a.location.type != ACL_MEM_LOCATION_TYPE_DEVICE)
        return 0;
    if (dev != NULL)
        *dev = (int)attrs.a.location.id;
    return 1;
}

/* ---------------------------------------------------------------- streams */

static struct npu_stream *as_npu(ferry_stream *stream)
{
    struct npu_stream *s = (struct npu_stream *)stream;
    return s != NULL && s->magic == NPU_STREAM_MAGIC ? s : NULL;
}

static int npu_stream_create(int dev, ferry_stream **out)
{
    struct ctx_guard g;
    aclrtStream as = NULL;
    int rc = npu_init();
    if (rc < 0)
        return rc;
    if (out == NULL)
        return ferry_fail(FERRY_EINVAL, "npu:%d: stream_create needs out", dev);
    struct npu_stream *s = calloc(1, sizeof *s);
    if (s == NULL)
        return ferry_fail(FERRY_ENOMEM, "npu:%d: stream", dev);
    if ((rc = ctx_enter(dev, &g)) < 0) {
        free(s);
        return rc;
    }
    aclError r = acl.aclrtCreateStream(&as);
    ctx_leave(&g);
    if (r != ACL_SUCCESS) {
        free(s);
        return acl_fail(r, "aclrtCreateStream", dev);
    }
    s->magic = NPU_STREAM_MAGIC;
    s->dev = dev;
    s->stream = as;
    *out = (ferry_stream *)s;
    return 0;
}

/* aclrtDestroyStream wants the stream idle: wait for queued copies first, as
 * the other backends let them finish. */
static void npu_stream_destroy(ferry_stream *stream)
{
    struct ctx_guard g;
    struct npu_stream *s = as_npu(stream);
    if (s == NULL) {
        if (stream != NULL)
            LOG_ERROR("npu: stream_destroy(%p): not an npu stream", (void *)stream);
        return;
    }
    if (ctx_enter(s->dev, &g) == 0) {
        (void)acl.aclrtSynchronizeStream(s->stream);
        aclError r = acl.aclrtDestroyStream(s->stream);
        ctx_leave(&g);
        if (r != ACL_SUCCESS)
            LOG_ERROR("npu:%d: aclrtDestroyStream: ACL error %d: %s", s->dev, r,
                      acl_error_text(r));
    }
    s->magic = 0;
    free(s);
}

static const int memcpy_kinds[] = {ACL_MEMCPY_DEVICE_TO_HOST, ACL_MEMCPY_HOST_TO_DEVICE,
                                   ACL_MEMCPY_DEVICE_TO_DEVICE};
static const char *const dir_names[] = {"D2H", "H2D", "D2D"};

struct copy_call {
    const struct npu_stream *s;
    enum ferry_copy_dir dir;
};

static int copy_single(void *arg, const struct ferry_copy *c, size_t index)
{
    const struct copy_call *call = arg;
    aclError r = acl.aclrtMemcpyAsync(c->dst, c->len, c->src, c->len, memcpy_kinds[call->dir],
                                      call->s->stream);
    if (r == ACL_SUCCESS)
        return 0;
    return ferry_fail(FERRY_EIO,
                      "npu:%d: aclrtMemcpyAsync %s (dst %p, src %p, %zu bytes) of copy %zu: "
                      "ACL error %d: %s",
                      call->s->dev, dir_names[call->dir], c->dst, c->src, c->len, index, r,
                      acl_error_text(r));
}

/* aclrtMemcpyBatchAsync: only host<->device, one direction per call. */
static int copy_batch(void *arg, const struct ferry_copy *copies, size_t n)
{
    const struct copy_call *call = arg;
    void *dsts[NPU_BATCH_CHUNK], *srcs[NPU_BATCH_CHUNK];
    size_t sizes[NPU_BATCH_CHUNK];
    size_t count = 0;
    if (call->dir == FERRY_COPY_D2D)
        return -1;   /* not supported by the batch call: done one by one */
    for (size_t i = 0; i < n && i < NPU_BATCH_CHUNK; i++) {
        if (copies[i].len == 0)
            continue;
        dsts[count] = copies[i].dst;
        srcs[count] = (void *)copies[i].src;
        sizes[count] = copies[i].len;
        count++;
    }
    if (count == 0)
        return 0;
    struct acl_memcpy_batch_attr attr;
    memset(&attr, 0, sizeof attr);
    struct acl_mem_location host = {0, ACL_MEM_LOCATION_TYPE_HOST};
    struct acl_mem_location device = {(uint32_t)call->s->dev, ACL_MEM_LOCATION_TYPE_DEVICE};
    attr.src_loc = call->dir == FERRY_COPY_H2D ? host : device;
    attr.dst_loc = call->dir == FERRY_COPY_H2D ? device : host;
    size_t attr_index = 0, fail_index = SIZE_MAX;
    /* destMax = size: ferry's copies never write beyond their length. */
    return acl.aclrtMemcpyBatchAsync(dsts, sizes, srcs, sizes, count, &attr, &attr_index, 1,
                                     &fail_index, call->s->stream);
}

static const struct ferry_copy_engine copy_engine = {
    .name = "npu",
    .batch_enabled = &batch_enabled,
    .batch_max = NPU_BATCH_CHUNK,
    .batch = copy_batch,
    .single = copy_single,
    .error_text = acl_error_text,
};

static int npu_copy_async(ferry_stream *stream, enum ferry_copy_dir dir,
                          const struct ferry_copy *copies, size_t n)
{
    struct ctx_guard g;
    struct npu_stream *s = as_npu(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "npu: copy_async on %p: not an npu stream",
                          (void *)stream);
    if (dir != FERRY_COPY_D2H && dir != FERRY_COPY_H2D && dir != FERRY_COPY_D2D)
        return ferry_fail(FERRY_EINVAL, "npu: copy_async: bad direction %d", (int)dir);
    if (n == 0)
        return 0;
    if (copies == NULL)
        return ferry_fail(FERRY_EINVAL, "npu: copy_async: %zu copies but no array", n);
    int rc = ctx_enter(s->dev, &g);
    if (rc < 0)
        return rc;
    struct copy_call call = {s, dir};
    if (dir == FERRY_COPY_D2D) {
        /* No batch call for D2D: keep it from disabling batching. */
        struct ferry_copy_engine single_only = copy_engine;
        single_only.batch_enabled = NULL;
        rc = ferry_device_enqueue_copies(&single_only, &call, copies, n);
    } else {
        rc = ferry_device_enqueue_copies(&copy_engine, &call, copies, n);
    }
    ctx_leave(&g);
    return rc;
}

static int npu_stream_sync(ferry_stream *stream)
{
    struct ctx_guard g;
    struct npu_stream *s = as_npu(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "npu: stream_sync on %p: not an npu stream",
                          (void *)stream);
    int rc = ctx_enter(s->dev, &g);
    if (rc < 0)
        return rc;
    aclError r = acl.aclrtSynchronizeStream(s->stream);
    ctx_leave(&g);
    if (r != ACL_SUCCESS)
        return ferry_fail(FERRY_EIO, "npu:%d: stream failed: ACL error %d: %s", s->dev, r,
                          acl_error_text(r));
    return 0;
}

static int npu_stream_query(ferry_stream *stream)
{
    struct ctx_guard g;
    struct npu_stream *s = as_npu(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "npu: stream_query on %p: not an npu stream",
                          (void *)stream);
    if (acl.aclrtStreamQuery == NULL)
        return npu_stream_sync(stream);
    int rc = ctx_enter(s->dev, &g);
    if (rc < 0)
        return rc;
    int status = ACL_STREAM_STATUS_NOT_READY;
    aclError r = acl.aclrtStreamQuery(s->stream, &status);
    ctx_leave(&g);
    if (r != ACL_SUCCESS)
        return ferry_fail(FERRY_EIO, "npu:%d: stream failed: ACL error %d: %s", s->dev, r,
                          acl_error_text(r));
    return status == ACL_STREAM_STATUS_COMPLETE ? 0 : FERRY_EBUSY;
}

const struct ferry_device_ops ferry_device_npu = {
    .kind = "npu",
    .init = npu_init,
    .device_count = npu_device_count,
    .mem_alloc = npu_mem_alloc,
    .mem_free = npu_mem_free,
    .host_alloc = npu_host_alloc,
    .host_free = npu_host_free,
    .locate = npu_locate,
    .stream_create = npu_stream_create,
    .stream_destroy = npu_stream_destroy,
    .copy_async = npu_copy_async,
    .stream_query = npu_stream_query,
    .stream_sync = npu_stream_sync,
};

/*
 * cuda.c — NVIDIA GPUs ("cuda:N") through the CUDA driver API.
 *
 * libcuda.so.1 is loaded with dlopen at first use; nothing links against it
 * and cuda.h is not included: the few types and prototypes used are declared
 * below from the public driver API (ABI stable since CUDA 3.2 / 12.8).
 * Batches of copies go through cuMemcpyBatchAsync where the driver has it
 * (CUDA 12.8+), else one cuMemcpy*Async per copy.  Every op makes the
 * device's primary context current on the calling thread for the call and
 * restores the caller's own context afterwards.  No threads of its own; owns
 * the library handle and one retained primary context per device used.
 */
#include "device/backend.h"
#include "device/device.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"

/* ---------------------------------------------------------------- driver ABI */

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_READY = 600,
    CU_POINTER_ATTRIBUTE_MEMORY_TYPE = 2,
    CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9,
    CU_MEMORYTYPE_DEVICE = 2,
    CU_STREAM_NON_BLOCKING = 1,
    CU_MEMHOSTALLOC_PORTABLE = 1,
    CU_MEMCPY_SRC_ACCESS_ORDER_STREAM = 1,
};

/* CUmemLocation and CUmemcpyAttributes (cuda.h, CUDA 12.8+). */
struct cu_mem_location {
    int type;                    /* CUmemLocationType; 0 = invalid: no hint */
    int id;
};
struct cu_memcpy_attributes {
    int src_access_order;        /* CUmemcpySrcAccessOrder */
    struct cu_mem_location src_loc_hint;
    struct cu_mem_location dst_loc_hint;
    unsigned int flags;
};
_Static_assert(sizeof(struct cu_memcpy_attributes) == 24, "CUmemcpyAttributes is 24 bytes");

/* cuMemcpyBatchAsync_v2 (CUDA 13) and the CUDA 12.8 cuMemcpyBatchAsync, which
 * also takes failIdx before the stream. */
typedef CUresult (*batch_v2_fn)(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes,
                                size_t count, struct cu_memcpy_attributes *attrs,
                                size_t *attrs_idxs, size_t num_attrs, CUstream stream);
typedef CUresult (*batch_v1_fn)(CUdeviceptr *dsts, CUdeviceptr *srcs, size_t *sizes,
                                size_t count, struct cu_memcpy_attributes *attrs,
                                size_t *attrs_idxs, size_t num_attrs, size_t *fail_idx,
                                CUstream stream);

static struct {
    CUresult (*cuInit)(unsigned int flags);
    CUresult (*cuDeviceGetCount)(int *count);
    CUresult (*cuDeviceGet)(CUdevice *device, int ordinal);
    CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *ctx, CUdevice dev);
    CUresult (*cuCtxGetCurrent)(CUcontext *ctx);
    CUresult (*cuCtxSetCurrent)(CUcontext ctx);
    CUresult (*cuMemAlloc)(CUdeviceptr *dptr, size_t bytes);
    CUresult (*cuMemFree)(CUdeviceptr dptr);
    CUresult (*cuMemHostAlloc)(void **pp, size_t bytes, unsigned int flags);
    CUresult (*cuMemFreeHost)(void *p);
    CUresult (*cuPointerGetAttribute)(void *data, int attribute, CUdeviceptr ptr);
    CUresult (*cuStreamCreate)(CUstream *stream, unsigned int flags);
    CUresult (*cuStreamDestroy)(CUstream stream);
    CUresult (*cuMemcpyDtoHAsync)(void *dst, CUdeviceptr src, size_t bytes, CUstream stream);
    CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr dst, const void *src, size_t bytes,
                                  CUstream stream);
    CUresult (*cuMemcpyDtoDAsync)(CUdeviceptr dst, CUdeviceptr src, size_t bytes,
                                  CUstream stream);
    CUresult (*cuStreamQuery)(CUstream stream);
    CUresult (*cuStreamSynchronize)(CUstream stream);
    CUresult (*cuGetErrorString)(CUresult error, const char **str);
    batch_v2_fn batch_v2;
    batch_v1_fn batch_v1;
} cu;

#define CUDA_MAX_DEVICES 64
#define CUDA_BATCH_CHUNK 256     /* copies per cuMemcpyBatchAsync call (stack arrays) */
#define CUDA_STREAM_MAGIC 0x63756461u /* "cuda" */

/* Loaded state, written once by cuda_load() or under ctx_lock. */
static struct ferry_device_loader loader = FERRY_DEVICE_LOADER_INIT;
static void *libcuda;
static int device_count;
static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(CUcontext) primary_ctx[CUDA_MAX_DEVICES];
static atomic_int batch_enabled;   /* 1 while cuMemcpyBatchAsync is trusted */

struct cuda_stream {
    uint32_t magic;
    int dev;
    CUcontext ctx;
    CUstream stream;
};

static const char *cu_error_text(CUresult r)
{
    const char *s = NULL;
    if (cu.cuGetErrorString == NULL || cu.cuGetErrorString(r, &s) != CUDA_SUCCESS || s == NULL)
        return "unknown CUDA error";
    return s;
}

/* Records "what: <CUDA error> (code)" and returns the matching ferry code. */
static int cu_fail(CUresult r, const char *what, int dev)
{
    int code = r == CUDA_ERROR_OUT_OF_MEMORY ? FERRY_ENOMEM : FERRY_EIO;
    return ferry_fail(code, "cuda:%d: %s: %s (CUDA error %d)", dev, what, cu_error_text(r), r);
}

/* ---------------------------------------------------------------- loading */

static int cuda_load(void)
{
    const struct ferry_device_sym syms[] = {
        {"cuInit", &cu.cuInit, 1},
        {"cuDeviceGetCount", &cu.cuDeviceGetCount, 1},
        {"cuDeviceGet", &cu.cuDeviceGet, 1},
        {"cuDevicePrimaryCtxRetain", &cu.cuDevicePrimaryCtxRetain, 1},
        {"cuCtxGetCurrent", &cu.cuCtxGetCurrent, 1},
        {"cuCtxSetCurrent", &cu.cuCtxSetCurrent, 1},
        {"cuMemAlloc_v2", &cu.cuMemAlloc, 1},
        {"cuMemFree_v2", &cu.cuMemFree, 1},
        {"cuMemHostAlloc", &cu.cuMemHostAlloc, 1},
        {"cuMemFreeHost", &cu.cuMemFreeHost, 1},
        {"cuPointerGetAttribute", &cu.cuPointerGetAttribute, 1},
        {"cuStreamCreate", &cu.cuStreamCreate, 1},
        {"cuStreamDestroy_v2", &cu.cuStreamDestroy, 1},
        {"cuMemcpyDtoHAsync_v2", &cu.cuMemcpyDtoHAsync, 1},
        {"cuMemcpyHtoDAsync_v2", &cu.cuMemcpyHtoDAsync, 1},
        {"cuMemcpyDtoDAsync_v2", &cu.cuMemcpyDtoDAsync, 1},
        {"cuStreamQuery", &cu.cuStreamQuery, 1},
        {"cuStreamSynchronize", &cu.cuStreamSynchronize, 1},
        {"cuGetErrorString", &cu.cuGetErrorString, 1},
        {"cuMemcpyBatchAsync_v2", &cu.batch_v2, 0},
        {"cuMemcpyBatchAsync", &cu.batch_v1, 0},
    };
    int rc = ferry_device_dlopen("libcuda.so.1", syms, sizeof syms / sizeof syms[0], &libcuda);
    if (rc < 0)
        return rc;
    CUresult r = cu.cuInit(0);
    if (r == CUDA_SUCCESS)
        r = cu.cuDeviceGetCount(&device_count);
    if (r != CUDA_SUCCESS)
        return ferry_fail(FERRY_ENODEV, "cuInit: %s (CUDA error %d)", cu_error_text(r), r);
    if (device_count <= 0)
        return ferry_fail(FERRY_ENODEV, "libcuda.so.1 loaded but it sees no CUDA device");
    if (device_count > CUDA_MAX_DEVICES) {
        LOG_WARN("cuda: %d devices; ferry uses the first %d", device_count, CUDA_MAX_DEVICES);
        device_count = CUDA_MAX_DEVICES;
    }
    /* FERRY_CUDA_BATCH_COPY=0 forces one driver call per copy (to compare,
     * or to step around a driver whose batch call misbehaves). */
    const char *want = getenv("FERRY_CUDA_BATCH_COPY");
    int have = cu.batch_v2 != NULL || cu.batch_v1 != NULL;
    atomic_store(&batch_enabled, have && !(want != NULL && strcmp(want, "0") == 0));
    LOG_INFO("cuda: %d devices, copies through %s", device_count,
             !atomic_load(&batch_enabled) ? "one cuMemcpy*Async per copy"
             : cu.batch_v2               ? "cuMemcpyBatchAsync_v2"
                                         : "cuMemcpyBatchAsync (12.8 ABI)");
    return 0;
}

static int cuda_init(void)
{
    return ferry_device_load_once(&loader, cuda_load);
}

static int cuda_device_count(void)
{
    return cuda_init() == 0 ? device_count : 0;
}

/* ---------------------------------------------------------------- contexts */

/* The caller's context, to give back after the op. */
struct ctx_guard {
    CUcontext prev;
    CUcontext ours;
};

/* Retains dev's primary context on first use (shared with the CUDA runtime
 * and frameworks in this process; never released, like the runtime does). */
static int primary_context(int dev, CUcontext *out)
{
    if (dev < 0 || dev >= device_count)
        return ferry_fail(FERRY_ENODEV, "cuda:%d does not exist (%d devices)", dev,
                          device_count);
    CUcontext ctx = atomic_load(&primary_ctx[dev]);
    if (ctx == NULL) {
        pthread_mutex_lock(&ctx_lock);
        ctx = atomic_load(&primary_ctx[dev]);
        if (ctx == NULL) {
            CUdevice d;
            CUresult r = cu.cuDeviceGet(&d, dev);
            if (r == CUDA_SUCCESS)
                r = cu.cuDevicePrimaryCtxRetain(&ctx, d);
            if (r != CUDA_SUCCESS) {
                pthread_mutex_unlock(&ctx_lock);
                return cu_fail(r, "cuDevicePrimaryCtxRetain", dev);
            }
            atomic_store(&primary_ctx[dev], ctx);
        }
        pthread_mutex_unlock(&ctx_lock);
    }
    *out = ctx;
    return 0;
}

/* Makes dev's primary context current for one op. */
static int ctx_enter(int dev, struct ctx_guard *g)
{
    int rc = primary_context(dev, &g->ours);
    if (rc < 0)
        return rc;
    g->prev = NULL;
    if (cu.cuCtxGetCurrent(&g->prev) != CUDA_SUCCESS)
        g->prev = NULL;
    if (g->prev != g->ours) {
        CUresult r = cu.cuCtxSetCurrent(g->ours);
        if (r != CUDA_SUCCESS)
            return cu_fail(r, "cuCtxSetCurrent", dev);
    }
    return 0;
}

/* Gives the caller's thread its own context back.  A thread that had none
 * (ferry's own workers) keeps ours: the next op then needs no switch. */
static void ctx_leave(const struct ctx_guard *g)
{
    if (g->prev != NULL && g->prev != g->ours)
        (void)cu.cuCtxSetCurrent(g->prev);
}

/* For calls that need some context but no particular device (pinned host
 * memory, pointer queries): the caller's current one if any, else the
 * first primary context ferry holds, else device 0's. */
static int any_ctx_enter(struct ctx_guard *g)
{
    CUcontext cur = NULL;
    if (cu.cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur != NULL) {
        g->prev = g->ours = cur;
        return 0;
    }
    for (int i = 0; i < device_count; i++)
        if (atomic_load(&primary_ctx[i]) != NULL)
            return ctx_enter(i, g);
    return ctx_enter(0, g);
}

/* ---------------------------------------------------------------- memory */

static int cuda_mem_alloc(int dev, size_t len, void **out)
{
    struct ctx_guard g;
    CUdeviceptr p = 0;
    int rc = cuda_init();
    if (rc < 0)
        return rc;
    if (len == 0 || out == NULL)
        return ferry_fail(FERRY_EINVAL, "cuda:%d: mem_alloc needs len > 0 and out", dev);
    if ((rc = ctx_enter(dev, &g)) < 0)
        return rc;
    CUresult r = cu.cuMemAlloc(&p, len);
    ctx_leave(&g);
    if (r != CUDA_SUCCESS)
        return cu_fail(r, "cuMemAlloc", dev);
    *out = (void *)(uintptr_t)p;
    return 0;
}

static void cuda_mem_free(int dev, void *ptr)
{
    struct ctx_guard g;
    if (ptr == NULL || !ferry_device_loaded(&loader) || ctx_enter(dev, &g) < 0)
        return;
    CUresult r = cu.cuMemFree((CUdeviceptr)(uintptr_t)ptr);
    ctx_leave(&g);
    if (r != CUDA_SUCCESS)
        LOG_ERROR("cuda:%d: cuMemFree(%p): %s", dev, ptr, cu_error_text(r));
}

static int cuda_host_alloc(size_t len, void **out)
{
    struct ctx_guard g;
    int rc = cuda_init();
    if (rc < 0)
        return rc;
    if (len == 0 || out == NULL)
        return ferry_fail(FERRY_EINVAL, "cuda: host_alloc needs len > 0 and out");
    if ((rc = any_ctx_enter(&g)) < 0)
        return rc;
    /* PORTABLE: pinned for every context, not only the current one. */
    CUresult r = cu.cuMemHostAlloc(out, len, CU_MEMHOSTALLOC_PORTABLE);
    ctx_leave(&g);
    if (r != CUDA_SUCCESS)
        return cu_fail(r, "cuMemHostAlloc", -1);
    return 0;
}

static void cuda_host_free(void *ptr)
{
    struct ctx_guard g;
    if (ptr == NULL || !ferry_device_loaded(&loader) || any_ctx_enter(&g) < 0)
        return;
    CUresult r = cu.cuMemFreeHost(ptr);
    ctx_leave(&g);
    if (r != CUDA_SUCCESS)
        LOG_ERROR("cuda: cuMemFreeHost(%p): %s", ptr, cu_error_text(r));
}

/* Device memory only: pinned host memory and managed memory are reachable by
 * the CPU, so they count as host memory here. */
static int cuda_locate(const void *ptr, size_t len, int *dev)
{
    struct ctx_guard g;
    unsigned int type = 0;
    int ordinal = -1;
    (void)len;
    if (ptr == NULL || !ferry_device_loaded(&loader) || any_ctx_enter(&g) < 0)
        return 0;
    CUdeviceptr p = (CUdeviceptr)(uintptr_t)ptr;
    int found = cu.cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, p) ==
                    CUDA_SUCCESS &&
                type == CU_MEMORYTYPE_DEVICE &&
                cu.cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, p) ==
                    CUDA_SUCCESS;
    ctx_leave(&g);
    if (found && dev != NULL)
        *dev = ordinal;
    return found;
}

/* ---------------------------------------------------------------- streams */

static struct cuda_stream *as_cuda(ferry_stream *stream)
{
    struct cuda_stream *s = (struct cuda_stream *)stream;
    return s != NULL && s->magic == CUDA_STREAM_MAGIC ? s : NULL;
}

static int cuda_stream_create(int dev, ferry_stream **out)
{
    struct ctx_guard g;
    CUstream cs = NULL;
    int rc = cuda_init();
    if (rc < 0)
        return rc;
    if (out == NULL)
        return ferry_fail(FERRY_EINVAL, "cuda:%d: stream_create needs out", dev);
    if ((rc = ctx_enter(dev, &g)) < 0)
        return rc;
    /* Non-blocking: never serialised against the legacy NULL stream, which
     * the batch API also refuses. */
    CUresult r = cu.cuStreamCreate(&cs, CU_STREAM_NON_BLOCKING);
    ctx_leave(&g);
    if (r != CUDA_SUCCESS)
        return cu_fail(r, "cuStreamCreate", dev);
    struct cuda_stream *s = calloc(1, sizeof *s);
    if (s == NULL) {
        if (ctx_enter(dev, &g) == 0) {
            (void)cu.cuStreamDestroy(cs);
            ctx_leave(&g);
        }
        return ferry_fail(FERRY_ENOMEM, "cuda:%d: stream", dev);
    }
    s->magic = CUDA_STREAM_MAGIC;
    s->dev = dev;
    s->ctx = g.ours;
    s->stream = cs;
    *out = (ferry_stream *)s;
    return 0;
}

/* Like every CUDA stream: work already queued still completes. */
static void cuda_stream_destroy(ferry_stream *stream)
{
    struct ctx_guard g;
    struct cuda_stream *s = as_cuda(stream);
    if (s == NULL) {
        if (stream != NULL)
            LOG_ERROR("cuda: stream_destroy(%p): not a cuda stream", (void *)stream);
        return;
    }
    if (ctx_enter(s->dev, &g) == 0) {
        CUresult r = cu.cuStreamDestroy(s->stream);
        ctx_leave(&g);
        if (r != CUDA_SUCCESS)
            LOG_ERROR("cuda:%d: cuStreamDestroy: %s", s->dev, cu_error_text(r));
    }
    s->magic = 0;
    free(s);
}

static const char *const copy_fn_names[] = {"cuMemcpyDtoHAsync", "cuMemcpyHtoDAsync",
                                            "cuMemcpyDtoDAsync"};

/* What the copy engine's callbacks need: the stream and the direction. */
struct copy_call {
    const struct cuda_stream *s;
    enum ferry_copy_dir dir;
};

static int copy_single(void *arg, const struct ferry_copy *c, size_t index)
{
    const struct copy_call *call = arg;
    CUstream st = call->s->stream;
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    switch (call->dir) {
    case FERRY_COPY_D2H:
        r = cu.cuMemcpyDtoHAsync(c->dst, (CUdeviceptr)(uintptr_t)c->src, c->len, st);
        break;
    case FERRY_COPY_H2D:
        r = cu.cuMemcpyHtoDAsync((CUdeviceptr)(uintptr_t)c->dst, c->src, c->len, st);
        break;
    case FERRY_COPY_D2D:
        r = cu.cuMemcpyDtoDAsync((CUdeviceptr)(uintptr_t)c->dst, (CUdeviceptr)(uintptr_t)c->src,
                                 c->len, st);
        break;
    }
    if (r == CUDA_SUCCESS)
        return 0;
    return ferry_fail(r == CUDA_ERROR_OUT_OF_MEMORY ? FERRY_ENOMEM : FERRY_EIO,
                      "cuda:%d: %s(dst %p, src %p, %zu bytes) of copy %zu: %s (CUDA error %d)",
                      call->s->dev, copy_fn_names[call->dir], c->dst, c->src, c->len, index,
                      cu_error_text(r), r);
}

/* Enqueues up to CUDA_BATCH_CHUNK copies in one cuMemcpyBatchAsync; the
 * batch as a whole keeps its place in stream order. */
static int copy_batch(void *arg, const struct ferry_copy *copies, size_t n)
{
    const struct copy_call *call = arg;
    CUdeviceptr dsts[CUDA_BATCH_CHUNK], srcs[CUDA_BATCH_CHUNK];
    size_t sizes[CUDA_BATCH_CHUNK];
    size_t count = 0;
    for (size_t i = 0; i < n && i < CUDA_BATCH_CHUNK; i++) {
        if (copies[i].len == 0)
            continue;
        dsts[count] = (CUdeviceptr)(uintptr_t)copies[i].dst;
        srcs[count] = (CUdeviceptr)(uintptr_t)copies[i].src;
        sizes[count] = copies[i].len;
        count++;
    }
    if (count == 0)
        return CUDA_SUCCESS;
    /* Sources are read in stream order: an earlier copy on this stream may
     * still be filling a staging chunk. */
    struct cu_memcpy_attributes attr;
    memset(&attr, 0, sizeof attr);
    attr.src_access_order = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
    size_t attr_idx = 0;
    if (cu.batch_v2 != NULL)
        return cu.batch_v2(dsts, srcs, sizes, count, &attr, &attr_idx, 1, call->s->stream);
    size_t fail_idx = SIZE_MAX;
    return cu.batch_v1(dsts, srcs, sizes, count, &attr, &attr_idx, 1, &fail_idx,
                       call->s->stream);
}

static const char *copy_error_text(int r)
{
    return cu_error_text(r);
}

static const struct ferry_copy_engine copy_engine = {
    .name = "cuda",
    .batch_enabled = &batch_enabled,
    .batch_max = CUDA_BATCH_CHUNK,
    .batch = copy_batch,
    .single = copy_single,
    .error_text = copy_error_text,
};

static int cuda_copy_async(ferry_stream *stream, enum ferry_copy_dir dir,
                           const struct ferry_copy *copies, size_t n)
{
    struct ctx_guard g;
    struct cuda_stream *s = as_cuda(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "cuda: copy_async on %p: not a cuda stream",
                          (void *)stream);
    if (dir != FERRY_COPY_D2H && dir != FERRY_COPY_H2D && dir != FERRY_COPY_D2D)
        return ferry_fail(FERRY_EINVAL, "cuda: copy_async: bad direction %d", (int)dir);
    if (n == 0)
        return 0;
    if (copies == NULL)
        return ferry_fail(FERRY_EINVAL, "cuda: copy_async: %zu copies but no array", n);
    int rc = ctx_enter(s->dev, &g);
    if (rc < 0)
        return rc;
    struct copy_call call = {s, dir};
    rc = ferry_device_enqueue_copies(&copy_engine, &call, copies, n);
    ctx_leave(&g);
    return rc;
}

static int cuda_stream_query(ferry_stream *stream)
{
    struct ctx_guard g;
    struct cuda_stream *s = as_cuda(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "cuda: stream_query on %p: not a cuda stream",
                          (void *)stream);
    int rc = ctx_enter(s->dev, &g);
    if (rc < 0)
        return rc;
    CUresult r = cu.cuStreamQuery(s->stream);
    ctx_leave(&g);
    if (r == CUDA_SUCCESS)
        return 0;
    if (r == CUDA_ERROR_NOT_READY)
        return FERRY_EBUSY;
    return ferry_fail(FERRY_EIO, "cuda:%d: stream failed: %s (CUDA error %d)", s->dev,
                      cu_error_text(r), r);
}

static int cuda_stream_sync(ferry_stream *stream)
{
    struct ctx_guard g;
    struct cuda_stream *s = as_cuda(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "cuda: stream_sync on %p: not a cuda stream",
                          (void *)stream);
    int rc = ctx_enter(s->dev, &g);
    if (rc < 0)
        return rc;
    CUresult r = cu.cuStreamSynchronize(s->stream);
    ctx_leave(&g);
    if (r != CUDA_SUCCESS)
        return ferry_fail(FERRY_EIO, "cuda:%d: stream failed: %s (CUDA error %d)", s->dev,
                          cu_error_text(r), r);
    return 0;
}

const struct ferry_device_ops ferry_device_cuda = {
    .kind = "cuda",
    .init = cuda_init,
    .device_count = cuda_device_count,
    .mem_alloc = cuda_mem_alloc,
    .mem_free = cuda_mem_free,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .locate = cuda_locate,
    .stream_create = cuda_stream_create,
    .stream_destroy = cuda_stream_destroy,
    .copy_async = cuda_copy_async,
    .stream_query = cuda_stream_query,
    .stream_sync = cuda_stream_sync,
};

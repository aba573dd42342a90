/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cuda.c — NVIDIA GPUs ("cuda:N") through the CUDA driver API.
 *
 * libcuda.so.1 is loaded with dlopen at first use; nothing links against it
 * and cuda.h is not included: the few types and prototypes used are declared
 * below from the public driver API (ABI stable since CUDA 3.2 / 12.8).
 * Batches of D2H / H2D copies whose host side is pinned memory from
 * host_alloc and whose device side is memory of the stream's device go
 * through one launch of a gather/scatter kernel (cuda_kernels.cu, loaded
 * from the PTX in cuda_kernels_ptx.h): the SMs read and write the mapped
 * host memory directly, with no per-copy cost.  Everything else goes
 * through cuMemcpyBatchAsync where the driver has it (CUDA 12.8+), else one
 * cuMemcpy*Async per copy.  Every op makes the device's primary context
 * current on the calling thread for the call and restores the caller's own
 * context afterwards.  No threads of its own; owns the library handle, one
 * retained primary context per device used, the kernel module of each, and
 * two small address registries (pinned host ranges handed out by
 * host_alloc; device allocations checked for the kernel).  Memory of other
 * processes (cuIpc*) and the NIC queries live in cuda_ipc.c; what the two
 * files share is cuda_internal.h.
 */
#include "device/backend.h"
#include "device/device.h"

#include <dlfcn.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "device/cuda_internal.h"
#include "device/cuda_shape.h"
#include "device/cuda_kernels_ptx.h"
#include "err.h"
#include "log.h"

struct cuda_driver cuda_drv;

#define CUDA_MAX_DEVICES 64
#define CUDA_BATCH_CHUNK 256     /* copies per cuMemcpyBatchAsync call (stack arrays) */
#define CUDA_STREAM_MAGIC 0x63756461u /* "cuda" */

/* Loaded state, written once by cuda_load() or under ctx_lock. */
struct ferry_device_loader cuda_loader = FERRY_DEVICE_LOADER_INIT;
void *cuda_lib;
int cuda_ndevices;
static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(CUcontext) primary_ctx[CUDA_MAX_DEVICES];
static atomic_int batch_enabled;   /* 1 while cuMemcpyBatchAsync is trusted */
static atomic_int gather_enabled;  /* FERRY_CUDA_GATHER_KERNEL and the symbols allow the kernel */
static atomic_int gather_d2d;      /* FERRY_CUDA_GATHER_D2D: D2D batches through it too */
static struct cuda_shape shape;    /* FERRY_CUDA_KERNEL_*: the kernel's launch shape */

struct cuda_stream {
    uint32_t magic;
    int dev;
    CUcontext ctx;
    CUstream stream;
};

const char *cu_error_text(CUresult r)
{
    const char *s = NULL;
    if (cuda_drv.cuGetErrorString == NULL || cuda_drv.cuGetErrorString(r, &s) != CUDA_SUCCESS || s == NULL)
        return "unknown CUDA error";
    return s;
}

/* Records "what: <CUDA error> (code)" and returns the matching ferry code. */
int cu_fail(CUresult r, const char *what, int dev)
{
    int code = r == CUDA_ERROR_OUT_OF_MEMORY ? FERRY_ENOMEM : FERRY_EIO;
    return ferry_fail(code, "cuda:%d: %s: %s (CUDA error %d)", dev, what, cu_error_text(r), r);
}

/* ---------------------------------------------------------------- loading */

int cuda_load(void)
{
    const struct ferry_device_sym syms[] = {
        {"cuInit", &cuda_drv.cuInit, 1},
        {"cuDeviceGetCount", &cuda_drv.cuDeviceGetCount, 1},
        {"cuDeviceGet", &cuda_drv.cuDeviceGet, 1},
        {"cuDevicePrimaryCtxRetain", &cuda_drv.cuDevicePrimaryCtxRetain, 1},
        {"cuCtxGetCurrent", &cuda_drv.cuCtxGetCurrent, 1},
        {"cuCtxSetCurrent", &cuda_drv.cuCtxSetCurrent, 1},
        {"cuMemAlloc_v2", &cuda_drv.cuMemAlloc, 1},
        {"cuMemFree_v2", &cuda_drv.cuMemFree, 1},
        {"cuMemHostAlloc", &cuda_drv.cuMemHostAlloc, 1},
        {"cuMemFreeHost", &cuda_drv.cuMemFreeHost, 1},
        {"cuPointerGetAttribute", &cuda_drv.cuPointerGetAttribute, 1},
        {"cuStreamCreate", &cuda_drv.cuStreamCreate, 1},
        {"cuStreamDestroy_v2", &cuda_drv.cuStreamDestroy, 1},
        {"cuMemcpyDtoHAsync_v2", &cuda_drv.cuMemcpyDtoHAsync, 1},
        {"cuMemcpyHtoDAsync_v2", &cuda_drv.cuMemcpyHtoDAsync, 1},
        {"cuMemcpyDtoDAsync_v2", &cuda_drv.cuMemcpyDtoDAsync, 1},
        {"cuStreamQuery", &cuda_drv.cuStreamQuery, 1},
        {"cuStreamSynchronize", &cuda_drv.cuStreamSynchronize, 1},
        {"cuGetErrorString", &cuda_drv.cuGetErrorString, 1},
        {"cuMemcpyBatchAsync_v2", &cuda_drv.batch_v2, 0},
        {"cuMemcpyBatchAsync", &cuda_drv.batch_v1, 0},
        {"cuDeviceGetAttribute", &cuda_drv.cuDeviceGetAttribute, 0},
        {"cuMemHostGetDevicePointer_v2", &cuda_drv.cuMemHostGetDevicePointer, 0},
        {"cuPointerGetAttributes", &cuda_drv.cuPointerGetAttributes, 0},
        {"cuModuleLoadDataEx", &cuda_drv.cuModuleLoadDataEx, 0},
        {"cuModuleGetFunction", &cuda_drv.cuModuleGetFunction, 0},
        {"cuModuleUnload", &cuda_drv.cuModuleUnload, 0},
        {"cuLaunchKernel", &cuda_drv.cuLaunchKernel, 0},
        {"cuMemGetAddressRange_v2", &cuda_drv.cuMemGetAddressRange, 0},
        {"cuIpcGetMemHandle", &cuda_drv.cuIpcGetMemHandle, 0},
        {"cuIpcOpenMemHandle_v2", &cuda_drv.cuIpcOpenMemHandle, 0},
        {"cuIpcOpenMemHandle", &cuda_drv.cuIpcOpenMemHandle_v1, 0},
        {"cuIpcCloseMemHandle", &cuda_drv.cuIpcCloseMemHandle, 0},
        {"cuDeviceCanAccessPeer", &cuda_drv.cuDeviceCanAccessPeer, 0},
        {"cuLaunchHostFunc", &cuda_drv.cuLaunchHostFunc, 0},
        {"cuStreamWaitValue32_v2", &cuda_drv.cuStreamWaitValue32, 0},
        {"cuStreamWriteValue32_v2", &cuda_drv.cuStreamWriteValue32, 0},
    };
    int rc = ferry_device_dlopen("libcuda.so.1", syms, sizeof syms / sizeof syms[0], &cuda_lib);
    if (rc < 0)
        return rc;
    if ((rc = cuda_shape_read(&shape)) < 0)
        return rc;
    CUresult r = cuda_drv.cuInit(0);
    if (r == CUDA_SUCCESS)
        r = cuda_drv.cuDeviceGetCount(&cuda_ndevices);
    if (r != CUDA_SUCCESS)
        return ferry_fail(FERRY_ENODEV, "cuInit: %s (CUDA error %d)", cu_error_text(r), r);
    if (cuda_ndevices <= 0)
        return ferry_fail(FERRY_ENODEV, "libcuda.so.1 loaded but it sees no CUDA device");
    if (cuda_drv.cuIpcOpenMemHandle == NULL) /* drivers before CUDA 11 */
        cuda_drv.cuIpcOpenMemHandle = cuda_drv.cuIpcOpenMemHandle_v1;
    if (cuda_ndevices > CUDA_MAX_DEVICES) {
        LOG_WARN("cuda: %d devices; ferry uses the first %d", cuda_ndevices, CUDA_MAX_DEVICES);
        cuda_ndevices = CUDA_MAX_DEVICES;
    }
    /* FERRY_CUDA_BATCH_COPY=0 forces one driver call per copy (to compare,
     * or to step around a driver whose batch call misbehaves). */
    const char *want = getenv("FERRY_CUDA_BATCH_COPY");
    int have = cuda_drv.batch_v2 != NULL || cuda_drv.batch_v1 != NULL;
    atomic_store(&batch_enabled, have && !(want != NULL && strcmp(want, "0") == 0));
    /* FERRY_CUDA_GATHER_KERNEL=0 keeps D2H / H2D batches on the copy engine
     * instead of the gather/scatter kernel. */
    want = getenv("FERRY_CUDA_GATHER_KERNEL");
    have = cuda_drv.cuDeviceGetAttribute != NULL && cuda_drv.cuMemHostGetDevicePointer != NULL &&
           cuda_drv.cuPointerGetAttributes != NULL && cuda_drv.cuModuleLoadDataEx != NULL &&
           cuda_drv.cuModuleGetFunction != NULL && cuda_drv.cuModuleUnload != NULL &&
           cuda_drv.cuLaunchKernel != NULL;
    atomic_store(&gather_enabled, have && !(want != NULL && strcmp(want, "0") == 0));
    /* Device-to-device batches (the shm transport between two processes'
     * GPUs, over CUDA IPC) go through the kernel too: one launch per batch
     * over NVLink where the copy engine pays about 1 us a copy (128 copies of
     * 64 KiB: 65 GB/s at most).  FERRY_CUDA_GATHER_D2D=0 keeps them on the
     * copy engine. */
    want = getenv("FERRY_CUDA_GATHER_D2D");
    atomic_store(&gather_d2d, !(want != NULL && strcmp(want, "0") == 0));
    LOG_INFO("cuda: %d devices, copies through %s%s%s", cuda_ndevices,
             !atomic_load(&batch_enabled) ? "one cuMemcpy*Async per copy"
             : cuda_drv.batch_v2               ? "cuMemcpyBatchAsync_v2"
                                         : "cuMemcpyBatchAsync (12.8 ABI)",
             atomic_load(&gather_enabled) ? ", pinned D2H / H2D batches through the gather kernel"
                                          : "",
             atomic_load(&gather_enabled) && atomic_load(&gather_d2d) ? ", D2D batches too" : "");
    return 0;
}

int cuda_init(void)
{
    return ferry_device_load_once(&cuda_loader, cuda_load);
}

static int cuda_device_count(void)
{
    return cuda_init() == 0 ? cuda_ndevices : 0;
}

/* ---------------------------------------------------------------- contexts */


/* Retains dev's primary context on first use (shared with the CUDA runtime
 * and frameworks in this process; never released, like the runtime does). */
static int primary_context(int dev, CUcontext *out)
{
    if (dev < 0 || dev >= cuda_ndevices)
        return ferry_fail(FERRY_ENODEV, "cuda:%d does not exist (%d devices)", dev,
                          cuda_ndevices);
    CUcontext ctx = atomic_load(&primary_ctx[dev]);
    if (ctx == NULL) {
        pthread_mutex_lock(&ctx_lock);
        ctx = atomic_load(&primary_ctx[dev]);
        if (ctx == NULL) {
            CUdevice d;
            CUresult r = cuda_drv.cuDeviceGet(&d, dev);
            if (r == CUDA_SUCCESS)
                r = cuda_drv.cuDevicePrimaryCtxRetain(&ctx, d);
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
int cuda_ctx_enter(int dev, struct ctx_guard *g)
{
    int rc = primary_context(dev, &g->ours);
    if (rc < 0)
        return rc;
    g->prev = NULL;
    if (cuda_drv.cuCtxGetCurrent(&g->prev) != CUDA_SUCCESS)
        g->prev = NULL;
    if (g->prev != g->ours) {
        CUresult r = cuda_drv.cuCtxSetCurrent(g->ours);
        if (r != CUDA_SUCCESS)
            return cu_fail(r, "cuCtxSetCurrent", dev);
    }
    return 0;
}

/* Gives the caller's thread its own context back.  A thread that had none
 * (ferry's own workers) keeps ours: the next op then needs no switch. */
void cuda_ctx_leave(const struct ctx_guard *g)
{
    if (g->prev != NULL && g->prev != g->ours)
        (void)cuda_drv.cuCtxSetCurrent(g->prev);
}

/* For calls that need some context but no particular device (pinned host
 * memory, pointer queries): the caller's current one if any, else the
 * first primary context ferry holds, else device 0's. */
static int any_ctx_enter(struct ctx_guard *g)
{
    CUcontext cur = NULL;
    if (cuda_drv.cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur != NULL) {
        g->prev = g->ours = cur;
        return 0;
    }
    for (int i = 0; i < cuda_ndevices; i++)
        if (atomic_load(&primary_ctx[i]) != NULL)
            return cuda_ctx_enter(i, g);
    return cuda_ctx_enter(0, g);
}

/* ---------------------------------------------------------------- address registries */

/* The gather kernel dereferences raw addresses: a bad one faults and takes
 * the whole (shared) primary context down, where the copy engine only fails
 * the call.  So it is given only copies that lie inside known ranges: pinned
 * host memory from host_alloc that devices reach at the same address
 * (checked with cuMemHostGetDevicePointer), and device allocations of the
 * stream's device, checked with cuPointerGetAttributes on first sight and
 * remembered (forgotten again by mem_free).  Other batches take the copy
 * engine, which reports a bad address precisely. */
#define HOST_RANGES_MAX 256
#define DEV_RANGES_MAX 64


static pthread_rwlock_t ranges_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct addr_range host_ranges[HOST_RANGES_MAX];
static size_t host_nranges;
static struct addr_range dev_ranges[DEV_RANGES_MAX];
static size_t dev_nranges;
static size_t dev_victim;        /* next slot to reuse once dev_ranges is full */

int cuda_range_holds(const struct addr_range *r, uintptr_t p, size_t len, int dev)
{
    return r->dev == dev && p >= r->start && p < r->end && len <= r->end - p;
}

/* 1 if one of r[0..n) holds [p, p + len) on dev; *hint: where to look first
 * (the last hit), updated. */
static int range_find(const struct addr_range *r, size_t n, uintptr_t p, size_t len, int dev,
                      size_t *hint)
{
    if (*hint < n && cuda_range_holds(&r[*hint], p, len, dev))
        return 1;
    for (size_t i = 0; i < n; i++)
        if (cuda_range_holds(&r[i], p, len, dev)) {
            *hint = i;
            return 1;
        }
    return 0;
}

static void host_range_add(void *p, size_t len)
{
    static atomic_int warned;
    pthread_rwlock_wrlock(&ranges_lock);
    if (host_nranges < HOST_RANGES_MAX)
        host_ranges[host_nranges++] = (struct addr_range){(uintptr_t)p, (uintptr_t)p + len, -1};
    else if (!atomic_exchange(&warned, 1))
        LOG_WARN("cuda: more than %d pinned buffers; copies to newer ones use the copy engine",
                 HOST_RANGES_MAX);
    pthread_rwlock_unlock(&ranges_lock);
}

static void host_range_remove(void *p)
{
    pthread_rwlock_wrlock(&ranges_lock);
    for (size_t i = 0; i < host_nranges; i++)
        if (host_ranges[i].start == (uintptr_t)p) {
            host_ranges[i] = host_ranges[--host_nranges];
            break;
        }
    pthread_rwlock_unlock(&ranges_lock);
}

/* Forgets the device ranges holding p (about to be freed). */
void cuda_dev_range_forget(void *p)
{
    uintptr_t a = (uintptr_t)p;
    pthread_rwlock_wrlock(&ranges_lock);
    for (size_t i = 0; i < dev_nranges;) {
        if (a >= dev_ranges[i].start && a < dev_ranges[i].end)
            dev_ranges[i] = dev_ranges[--dev_nranges];
        else
            i++;
    }
    pthread_rwlock_unlock(&ranges_lock);
}

/* Remembers r as reachable by dev's kernel. */
void cuda_dev_range_add(struct addr_range r)
{
    pthread_rwlock_wrlock(&ranges_lock);
    size_t i;
    for (i = 0; i < dev_nranges; i++)
        if (dev_ranges[i].start == r.start && dev_ranges[i].dev == r.dev)
            break;
    if (i < dev_nranges)
        dev_ranges[i] = r;
    else if (dev_nranges < DEV_RANGES_MAX)
        dev_ranges[dev_nranges++] = r;
    else
        dev_ranges[dev_victim++ % DEV_RANGES_MAX] = r;
    pthread_rwlock_unlock(&ranges_lock);
}


/* Asks the driver whether [p, p + len) lies in one allocation of device dev
 * (a context current), or in another process's allocation opened on dev
 * through IPC that dev reaches (its own memory, or a peer's over
 * NVLink/PCIe P2P); remembers the allocation if so.  1 or 0. */
int cuda_dev_range_learn(uintptr_t p, size_t len, int dev)
{
    unsigned int type = 0;
    int ordinal = -1;
    CUdeviceptr start = 0;
    size_t size = 0;
    int attrs[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                   CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, CU_POINTER_ATTRIBUTE_RANGE_SIZE};
    void *data[] = {&type, &ordinal, &start, &size};
    /* not a CUDA pointer: succeeds with the values left at zero */
    if (cuda_drv.cuPointerGetAttributes(4, attrs, data, (CUdeviceptr)p) != CUDA_SUCCESS ||
        type != CU_MEMORYTYPE_DEVICE || size == 0)
        return 0;
    if (ordinal != dev)
        return cuda_ipc_range_learn(p, len, dev);
    struct addr_range r = {(uintptr_t)start, (uintptr_t)start + size, dev};
    if (!cuda_range_holds(&r, p, len, dev))
        return 0;
    cuda_dev_range_add(r);
    return 1;
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
    if ((rc = cuda_ctx_enter(dev, &g)) < 0)
        return rc;
    CUresult r = cuda_drv.cuMemAlloc(&p, len);
    cuda_ctx_leave(&g);
    if (r != CUDA_SUCCESS)
        return cu_fail(r, "cuMemAlloc", dev);
    *out = (void *)(uintptr_t)p;
    return 0;
}

static void cuda_mem_free(int dev, void *ptr)
{
    struct ctx_guard g;
    if (ptr == NULL || !ferry_device_loaded(&cuda_loader) || cuda_ctx_enter(dev, &g) < 0)
        return;
    cuda_dev_range_forget(ptr);
    CUresult r = cuda_drv.cuMemFree((CUdeviceptr)(uintptr_t)ptr);
    cuda_ctx_leave(&g);
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
    /* PORTABLE: pinned for every context, not only the current one.
     * DEVICEMAP: mapped into the devices' address space, for the gather
     * kernel (implied under unified addressing; asked for to be plain). */
    int mapped = 1;
    CUresult r = cuda_drv.cuMemHostAlloc(out, len, CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP);
    if (r == CUDA_ERROR_INVALID_VALUE) {
        mapped = 0;
        r = cuda_drv.cuMemHostAlloc(out, len, CU_MEMHOSTALLOC_PORTABLE);
    }
    /* The kernel may use it where devices see it at the host address. */
    CUdeviceptr dp = 0;
    if (r == CUDA_SUCCESS && mapped && cuda_drv.cuMemHostGetDevicePointer != NULL &&
        cuda_drv.cuMemHostGetDevicePointer(&dp, *out, 0) == CUDA_SUCCESS &&
        dp == (CUdeviceptr)(uintptr_t)*out)
        host_range_add(*out, len);
    cuda_ctx_leave(&g);
    if (r != CUDA_SUCCESS)
        return cu_fail(r, "cuMemHostAlloc", -1);
    return 0;
}

static void cuda_host_free(void *ptr)
{
    struct ctx_guard g;
    if (ptr == NULL || !ferry_device_loaded(&cuda_loader))
        return;
    host_range_remove(ptr);
    if (any_ctx_enter(&g) < 0)
        return;
    CUresult r = cuda_drv.cuMemFreeHost(ptr);
    cuda_ctx_leave(&g);
    if (r != CUDA_SUCCESS)
        LOG_ERROR("cuda: cuMemFreeHost(%p): %s", ptr, cu_error_text(r));
}

/* Device memory only: pinned host memory and managed memory are reachable by
 * the CPU, so they count as host memory here. */
int cuda_locate(const void *ptr, size_t len, int *dev)
{
    struct ctx_guard g;
    unsigned int type = 0;
    int ordinal = -1;
    (void)len;
    if (ptr == NULL || !ferry_device_loaded(&cuda_loader) || any_ctx_enter(&g) < 0)
        return 0;
    CUdeviceptr p = (CUdeviceptr)(uintptr_t)ptr;
    int found = cuda_drv.cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, p) ==
                    CUDA_SUCCESS &&
                type == CU_MEMORYTYPE_DEVICE &&
                cuda_drv.cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, p) ==
                    CUDA_SUCCESS;
    cuda_ctx_leave(&g);
    if (found && dev != NULL)
        *dev = ordinal;
    return found;
}

/* ---------------------------------------------------------------- streams */

static CUfunction gather_function(int dev, unsigned int *max_ctas);

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
    if ((rc = cuda_ctx_enter(dev, &g)) < 0)
        return rc;
    /* Non-blocking: never serialised against the legacy NULL stream, which
     * the batch API also refuses. */
    CUresult r = cuda_drv.cuStreamCreate(&cs, CU_STREAM_NON_BLOCKING);
    /* Loads (JIT-compiles) the gather kernel now rather than in the first
     * copy; a failure only leaves copies to the copy engine. */
    unsigned int max_ctas;
    if (r == CUDA_SUCCESS && atomic_load_explicit(&gather_enabled, memory_order_relaxed))
        (void)gather_function(dev, &max_ctas);
    cuda_ctx_leave(&g);
    if (r != CUDA_SUCCESS)
        return cu_fail(r, "cuStreamCreate", dev);
    struct cuda_stream *s = calloc(1, sizeof *s);
    if (s == NULL) {
        if (cuda_ctx_enter(dev, &g) == 0) {
            (void)cuda_drv.cuStreamDestroy(cs);
            cuda_ctx_leave(&g);
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
    if (cuda_ctx_enter(s->dev, &g) == 0) {
        CUresult r = cuda_drv.cuStreamDestroy(s->stream);
        cuda_ctx_leave(&g);
        if (r != CUDA_SUCCESS)
            LOG_ERROR("cuda:%d: cuStreamDestroy: %s", s->dev, cu_error_text(r));
    }
    s->magic = 0;
    free(s);
}

static const char *const copy_fn_names[] = {"cuMemcpyDtoHAsync", "cuMemcpyHtoDAsync",
                                            "cuMemcpyDtoDAsync"};

/* What the copy engine's callbacks need: the stream and the direction, and
 * where the array they are given starts in the caller's (for messages). */
struct copy_call {
    const struct cuda_stream *s;
    enum ferry_copy_dir dir;
    size_t base;
};

static int copy_single(void *arg, const struct ferry_copy *c, size_t index)
{
    const struct copy_call *call = arg;
    CUstream st = call->s->stream;
    CUresult r = CUDA_ERROR_INVALID_VALUE;
    switch (call->dir) {
    case FERRY_COPY_D2H:
        r = cuda_drv.cuMemcpyDtoHAsync(c->dst, (CUdeviceptr)(uintptr_t)c->src, c->len, st);
        break;
    case FERRY_COPY_H2D:
        r = cuda_drv.cuMemcpyHtoDAsync((CUdeviceptr)(uintptr_t)c->dst, c->src, c->len, st);
        break;
    case FERRY_COPY_D2D:
        r = cuda_drv.cuMemcpyDtoDAsync((CUdeviceptr)(uintptr_t)c->dst, (CUdeviceptr)(uintptr_t)c->src,
                                 c->len, st);
        break;
    }
    if (r == CUDA_SUCCESS)
        return 0;
    return ferry_fail(r == CUDA_ERROR_OUT_OF_MEMORY ? FERRY_ENOMEM : FERRY_EIO,
                      "cuda:%d: %s(dst %p, src %p, %zu bytes) of copy %zu: %s (CUDA error %d)",
                      call->s->dev, copy_fn_names[call->dir], c->dst, c->src, c->len,
                      call->base + index, cu_error_text(r), r);
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
    if (cuda_drv.batch_v2 != NULL)
        return cuda_drv.batch_v2(dsts, srcs, sizes, count, &attr, &attr_idx, 1, call->s->stream);
    size_t fail_idx = SIZE_MAX;
    return cuda_drv.batch_v1(dsts, srcs, sizes, count, &attr, &attr_idx, 1, &fail_idx,
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

/* ---------------------------------------------------------------- gather kernel */

/* One launch of ferry_copy_gather (cuda_kernels.cu) takes up to GATHER_MAX
 * copies inline in its parameter (mirrored there: keep both in step).  Each
 * CTA of shape.threads threads copies tiles of 2^shape.tile_shift bytes; a
 * grid of at most shape.ctas_per_sm CTAs per SM strides over the tiles
 * (cuda_shape.h: FERRY_CUDA_KERNEL_*). */
#define GATHER_MAX 128
/* Copies averaging more than 1 MiB stay on the copy engine: its per-copy
 * cost no longer shows there, it is as fast or faster (D2H), and it leaves
 * the SMs to the application.  H2D has its own bound, shape.h2d_max: the
 * kernel reads host memory over PCIe there, which costs it round trips
 * that its writes (D2H) do not. */
#define GATHER_MEAN_MAX CUDA_SHAPE_MEAN_MAX

struct gather_copy {
    uint64_t dst, src, len;
};

struct gather_args {
    uint32_t n;                          /* copies, 1..GATHER_MAX, each len > 0 */
    uint32_t tile_shift;
    uint32_t ntiles;                     /* tile_start[n] */
    uint32_t loads;                      /* loads in flight per thread: 4 or 8 */
    uint32_t tile_start[GATHER_MAX + 1]; /* copy i owns tiles [tile_start[i], tile_start[i+1]) */
    struct gather_copy copies[GATHER_MAX];
};
_Static_assert(sizeof(struct gather_args) == 3608, "mirrors cuda_kernels.cu");
_Static_assert(offsetof(struct gather_args, tile_start) == 16, "mirrors cuda_kernels.cu");
_Static_assert(offsetof(struct gather_args, copies) == 536, "mirrors cuda_kernels.cu");

struct gather_dev {
    atomic_int state;                    /* 0 not loaded yet, 1 ready, -1 failed or switched off */
    CUfunction fn;
    unsigned int max_ctas;
};

static struct gather_dev gather_devs[CUDA_MAX_DEVICES];
static pthread_mutex_t gather_lock = PTHREAD_MUTEX_INITIALIZER;

/* Loads the module into dev's primary context (current).  1, or -1 after one
 * warning. */
static int gather_load(int dev, struct gather_dev *g)
{
    char log[1024] = "";
    int opts[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    void *vals[] = {log, (void *)(uintptr_t)sizeof log};
    CUmodule mod = NULL;
    const char *what = "cuModuleLoadDataEx";
    CUresult r = cuda_drv.cuModuleLoadDataEx(&mod, ferry_cuda_kernels_ptx, 2, opts, vals);
    if (r == CUDA_SUCCESS) {
        what = "cuModuleGetFunction";
        r = cuda_drv.cuModuleGetFunction(&g->fn, mod, "ferry_copy_gather");
        if (r != CUDA_SUCCESS)
            (void)cuda_drv.cuModuleUnload(mod);
    }
    if (r != CUDA_SUCCESS) {
        log[sizeof log - 1] = '\0';
        LOG_WARN("cuda:%d: gather kernel unavailable, D2H / H2D batches use the copy engine: "
                 "%s: %s (CUDA error %d)%s%.400s",
                 dev, what, cu_error_text(r), r, log[0] ? ": " : "", log);
        return -1;
    }
    CUdevice d;
    int sms = 0;
    if (cuda_drv.cuDeviceGet(&d, dev) != CUDA_SUCCESS ||
        cuda_drv.cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, d) != CUDA_SUCCESS ||
        sms <= 0)
        sms = 16;
    g->max_ctas = (unsigned int)sms * shape.ctas_per_sm;
    LOG_DEBUG("cuda:%d: gather kernel loaded (%d SMs)", dev, sms);
    return 1;
}

/* dev's kernel, loaded on first use (dev's primary context current); NULL
 * when it is off or could not be loaded. */
static CUfunction gather_function(int dev, unsigned int *max_ctas)
{
    struct gather_dev *g = &gather_devs[dev];
    int state = atomic_load_explicit(&g->state, memory_order_acquire);
    if (state == 0) {
        pthread_mutex_lock(&gather_lock);
        state = atomic_load_explicit(&g->state, memory_order_relaxed);
        if (state == 0) {
            state = gather_load(dev, g);
            atomic_store_explicit(&g->state, state, memory_order_release);
        }
        pthread_mutex_unlock(&gather_lock);
    }
    if (state != 1)
        return NULL;
    *max_ctas = g->max_ctas;
    return g->fn;
}

/* Puts the copies with len > 0 from the front of copies[0..n) into a, at
 * most GATHER_MAX; returns how many entries of copies it went through. */
static size_t gather_take(const struct ferry_copy *copies, size_t n, struct gather_args *a,
                          size_t *bytes)
{
    size_t i;
    a->n = 0;
    *bytes = 0;
    for (i = 0; i < n; i++) {
        if (copies[i].len == 0)
            continue;
        if (a->n == GATHER_MAX)
            break;
        a->copies[a->n++] = (struct gather_copy){(uint64_t)(uintptr_t)copies[i].dst,
                                                 (uint64_t)(uintptr_t)copies[i].src,
                                                 (uint64_t)copies[i].len};
        *bytes += copies[i].len;
    }
    return i;
}

/* 1 if every copy of a has its host side (D2H dst, H2D src) in a host_alloc
 * range and its device sides (the others) in an allocation of dev or one
 * opened on dev through IPC that dev's SMs reach (context current). */
static int gather_reachable(int dev, enum ferry_copy_dir dir, const struct gather_args *a)
{
    size_t host_hint = 0, dev_hint = 0;
    unsigned int i = 0, learned = 0;
    const int dst_host = dir == FERRY_COPY_D2H, src_host = dir == FERRY_COPY_H2D;
    while (i < a->n) {
        uintptr_t miss = 0;
        size_t len = 0;
        pthread_rwlock_rdlock(&ranges_lock);
        for (; i < a->n; i++) {
            const struct gather_copy *c = &a->copies[i];
            const uintptr_t d = (uintptr_t)c->dst, s = (uintptr_t)c->src;
            len = (size_t)c->len;
            if ((dst_host && !range_find(host_ranges, host_nranges, d, len, -1, &host_hint)) ||
                (src_host && !range_find(host_ranges, host_nranges, s, len, -1, &host_hint))) {
                pthread_rwlock_unlock(&ranges_lock);
                return 0;
            }
            if (!dst_host && !range_find(dev_ranges, dev_nranges, d, len, dev, &dev_hint)) {
                miss = d;
                break;
            }
            if (!src_host && !range_find(dev_ranges, dev_nranges, s, len, dev, &dev_hint)) {
                miss = s;
                break;
            }
        }
        pthread_rwlock_unlock(&ranges_lock);
        if (miss && (learned++ > 2 * GATHER_MAX || !cuda_dev_range_learn(miss, len, dev)))
            return 0;
    }
    return 1;
}

/* Enqueues a's copies (entries copies[0..k) of the caller) with one kernel
 * launch.  If the launch fails, the copy engine does them; if that works,
 * the kernel is what failed, and dev stops using it with one warning. */
static int gather_launch(struct copy_call *call, CUfunction fn, unsigned int max_ctas,
                         struct gather_args *a, const struct ferry_copy *copies, size_t k)
{
    unsigned int shift = shape.tile_shift;
    uint64_t tiles;
    for (;; shift++) {        /* tiles numbered in 32 bits, with room to spare */
        tiles = 0;
        for (uint32_t i = 0; i < a->n; i++) {
            a->tile_start[i] = (uint32_t)tiles;
            uint64_t len = a->copies[i].len;
            tiles += (len >> shift) + ((len & (((uint64_t)1 << shift) - 1)) != 0);
        }
        if (tiles <= UINT32_MAX / 2)
            break;
    }
    a->tile_start[a->n] = (uint32_t)tiles;
    a->ntiles = (uint32_t)tiles;
    a->tile_shift = shift;
    a->loads = shape.loads;
    unsigned int grid = tiles < max_ctas ? (unsigned int)tiles : max_ctas;
    void *params[] = {a};
    CUresult r = cuda_drv.cuLaunchKernel(fn, grid, 1, 1, shape.threads, 1, 1, 0, call->s->stream,
                                   params, NULL);
    static atomic_int told;
    if (r == CUDA_SUCCESS && atomic_fetch_add(&told, 1) < 4)
        LOG_DEBUG("cuda:%d: %u copies (%s) through the gather kernel: %u tiles of %u bytes, %u CTAs",
                  call->s->dev, a->n, call->dir == FERRY_COPY_D2H ? "D2H" : call->dir == FERRY_COPY_H2D ? "H2D" : "D2D",
                  a->ntiles, 1u << shift, grid);
    if (r == CUDA_SUCCESS)
        return 0;
    int rc = ferry_device_enqueue_copies(&copy_engine, call, copies, k);
    if (rc == 0 && atomic_exchange(&gather_devs[call->s->dev].state, -1) == 1)
        LOG_WARN("cuda:%d: gather kernel launch failed (%s, CUDA error %d) where copies work; "
                 "using the copy engine from now on",
                 call->s->dev, cu_error_text(r), r);
    return rc;
}

/* Each run of up to GATHER_MAX copies goes through the kernel when it suits
 * and can reach every address (D2D too: between dev's memory and a peer's
 * opened through IPC, over NVLink, one launch instead of a copy-engine
 * copy per block), else through the copy engine; both on the same stream,
 * so stream order holds. */
static int copy_gathered(struct copy_call *call, const struct ferry_copy *copies, size_t n)
{
    unsigned int max_ctas = 0;
    CUfunction fn = gather_function(call->s->dev, &max_ctas);
    if (fn == NULL)
        return ferry_device_enqueue_copies(&copy_engine, call, copies, n);
    struct gather_args a;
    int rc = 0;
    for (size_t done = 0; done < n && rc == 0;) {
        size_t bytes;
        size_t k = gather_take(copies + done, n - done, &a, &bytes);
        call->base = done;
        size_t mean_max = call->dir == FERRY_COPY_H2D ? shape.h2d_max : GATHER_MEAN_MAX;
        if (a.n > 0 && bytes / a.n <= mean_max &&
            gather_reachable(call->s->dev, call->dir, &a)) {
            rc = gather_launch(call, fn, max_ctas, &a, copies + done, k);
        } else if (a.n > 0) {
            static atomic_int told; /* what FERRY_LOG_LEVEL=3 shows of the choice: the first few */
            if (atomic_fetch_add(&told, 1) < 8)
                LOG_DEBUG("cuda:%d: %u copies (%zu bytes, %s, first %p <- %p) on the copy engine: %s", call->s->dev,
                          a.n, bytes, call->dir == FERRY_COPY_D2H ? "D2H" : call->dir == FERRY_COPY_H2D ? "H2D" : "D2D",
                          (void *)(uintptr_t)a.copies[0].dst, (void *)(uintptr_t)a.copies[0].src,
                          bytes / a.n > mean_max ? "large copies" : "an address the kernel may not reach");
            rc = ferry_device_enqueue_copies(&copy_engine, call, copies + done, k);
        }
        done += k;
    }
    return rc;
}

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
    int rc = cuda_ctx_enter(s->dev, &g);
    if (rc < 0)
        return rc;
    struct copy_call call = {s, dir, 0};
    if (atomic_load_explicit(&gather_enabled, memory_order_relaxed) &&
        (dir != FERRY_COPY_D2D || atomic_load_explicit(&gather_d2d, memory_order_relaxed)))
        rc = copy_gathered(&call, copies, n);
    else
        rc = ferry_device_enqueue_copies(&copy_engine, &call, copies, n);
    cuda_ctx_leave(&g);
    return rc;
}

static int cuda_stream_query(ferry_stream *stream)
{
    struct ctx_guard g;
    struct cuda_stream *s = as_cuda(stream);
    if (s == NULL)
        return ferry_fail(FERRY_EINVAL, "cuda: stream_query on %p: not a cuda stream",
                          (void *)stream);
    int rc = cuda_ctx_enter(s->dev, &g);
    if (rc < 0)
        return rc;
    CUresult r = cuda_drv.cuStreamQuery(s->stream);
    cuda_ctx_leave(&g);
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
    int rc = cuda_ctx_enter(s->dev, &g);
    if (rc < 0)
        return rc;
    CUresult r = cuda_drv.cuStreamSynchronize(s->stream);
    cuda_ctx_leave(&g);
    if (r != CUDA_SUCCESS)
        return ferry_fail(FERRY_EIO, "cuda:%d: stream failed: %s (CUDA error %d)", s->dev,
                          cu_error_text(r), r);
    return 0;
}

/* ---------------------------------------------------------------- stream ordering */

/* The caller's stream belongs to the caller's context: use the current one
 * if the thread has one (a framework made it current), else dev's primary. */
static int stream_ctx_enter(int dev, struct ctx_guard *g)
{
    CUcontext cur = NULL;
    if (cuda_drv.cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur != NULL) {
        g->prev = g->ours = cur;
        return 0;
    }
    return cuda_ctx_enter(dev, g);
}

static int cuda_stream_host_func(int dev, void *stream, void (*fn)(void *), void *arg)
{
    struct ctx_guard g;
    int rc = cuda_init();
    if (rc < 0)
        return rc;
    if (cuda_drv.cuLaunchHostFunc == NULL)
        return ferry_fail(FERRY_ENOTSUP, "cuda:%d: the driver has no cuLaunchHostFunc", dev);
    if ((rc = stream_ctx_enter(dev, &g)) < 0)
        return rc;
    CUresult r = cuda_drv.cuLaunchHostFunc((CUstream)stream, fn, arg);
    cuda_ctx_leave(&g);
    return r == CUDA_SUCCESS ? 0 : cu_fail(r, "cuLaunchHostFunc", dev);
}

static int cuda_stream_wait_flag(int dev, void *stream, volatile uint32_t *flag, uint32_t value)
{
    struct ctx_guard g;
    int rc = cuda_init();
    if (rc < 0)
        return rc;
    if (cuda_drv.cuStreamWaitValue32 == NULL || cuda_drv.cuMemHostGetDevicePointer == NULL)
        return ferry_fail(FERRY_ENOTSUP, "cuda:%d: the driver has no cuStreamWaitValue32", dev);
    if ((rc = stream_ctx_enter(dev, &g)) < 0)
        return rc;
    CUdeviceptr addr = 0;
    CUresult r = cuda_drv.cuMemHostGetDevicePointer(&addr, (void *)flag, 0);
    if (r == CUDA_SUCCESS)
        r = cuda_drv.cuStreamWaitValue32((CUstream)stream, addr, value, CU_STREAM_WAIT_VALUE_GEQ);
    cuda_ctx_leave(&g);
    if (r == CUDA_ERROR_NOT_SUPPORTED)
        return ferry_fail(FERRY_ENOTSUP, "cuda:%d: stream memory operations are not supported", dev);
    return r == CUDA_SUCCESS ? 0 : cu_fail(r, "cuStreamWaitValue32", dev);
}

/* A job's end on a stream jobs share (the shm transport's GPU-to-GPU jobs):
 * the GPU writes the word in mapped pinned memory; nothing waits on it. */
static int cuda_stream_mark(ferry_stream *stream, volatile uint32_t *flag, uint32_t value)
{
    struct ctx_guard g;
    struct cuda_stream *s = as_cuda(stream);
    if (s == NULL || flag == NULL)
        return ferry_fail(FERRY_EINVAL, "cuda: stream_mark on %p: not a cuda stream, or no flag", (void *)stream);
    if (cuda_drv.cuStreamWriteValue32 == NULL || cuda_drv.cuMemHostGetDevicePointer == NULL)
        return ferry_fail(FERRY_ENOTSUP, "cuda:%d: the driver has no cuStreamWriteValue32", s->dev);
    int rc = cuda_ctx_enter(s->dev, &g);
    if (rc < 0)
        return rc;
    CUdeviceptr addr = 0;
    CUresult r = cuda_drv.cuMemHostGetDevicePointer(&addr, (void *)flag, 0);
    if (r == CUDA_SUCCESS)
        r = cuda_drv.cuStreamWriteValue32(s->stream, addr, value, 0);
    cuda_ctx_leave(&g);
    if (r == CUDA_ERROR_NOT_SUPPORTED)
        return ferry_fail(FERRY_ENOTSUP, "cuda:%d: stream memory operations are not supported", s->dev);
    return r == CUDA_SUCCESS ? 0 : cu_fail(r, "cuStreamWriteValue32", s->dev);
}

static const struct ferry_config_knob cuda_knobs[] = {
    {"FERRY_CUDA_BATCH_COPY", "1", "0: one cuMemcpy*Async per block instead of cuMemcpyBatchAsync"},
    {"FERRY_CUDA_GATHER_KERNEL", "1", "0: pinned D2H / H2D batches on the copy engine instead of the gather kernel"},
    {"FERRY_CUDA_GATHER_D2D", "1",
     "0: GPU-to-GPU batches (shm over CUDA IPC) on the copy engine instead of the gather kernel (used where the "
     "GPUs reach each other)"},
    {"FERRY_CUDA_KERNEL_TILE", CUDA_SHAPE_TILE_DEFAULT,
     "bytes one CTA of the gather/scatter kernel copies at a time, a power of two from 1024 to 1048576"},
    {"FERRY_CUDA_KERNEL_CTAS", CUDA_SHAPE_CTAS_DEFAULT, "gather/scatter kernel: CTAs per SM at most, 1-8"},
    {"FERRY_CUDA_KERNEL_THREADS", CUDA_SHAPE_THREADS_DEFAULT,
     "gather/scatter kernel: threads per CTA, a multiple of 32 up to 256"},
    {"FERRY_CUDA_KERNEL_LOADS", CUDA_SHAPE_LOADS_DEFAULT,
     "gather/scatter kernel: 16-byte loads each thread has in flight before it stores, 4 or 8"},
    {"FERRY_CUDA_KERNEL_H2D_MAX", CUDA_SHAPE_H2D_MAX_DEFAULT,
     "H2D batches whose copies average more bytes than this take the copy engine instead of the kernel (0: always)"},
    {NULL, NULL, NULL},
};
static const struct ferry_location_kind cuda_locations[] = {{"cuda", 0, 0}, {NULL, 0, 0}}; /* "cuda" = cuda:0 */

const struct ferry_device_ops ferry_device_cuda = {
    .kind = "cuda",
    .knobs = cuda_knobs,
    .locations = cuda_locations,
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
    .stream_mark = cuda_stream_mark,
    .stream_host_func = cuda_stream_host_func,
    .stream_wait_flag = cuda_stream_wait_flag,
    .ipc_export = cuda_ipc_export,
    .ipc_open = cuda_ipc_open,
    .ipc_close = cuda_ipc_close,
    .dmabuf_export = cuda_dmabuf_export,
    .pci_bus_id = cuda_pci_bus_id,
};

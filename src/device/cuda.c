/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cuda.c — NVIDIA GPUs ("cuda:N") through the CUDA driver API.
 *
 * libcuda.so.1 is loaded with dlopen at first use; nothing links against it
 * and cuda.h is not included: the few types and prototypes used are declared
 * below from the public driver API (ABI stable since CUDA 3.2 / 12.8).
 * Batches of copies go through one launch of a gather/scatter kernel where
 * every address is known to be reachable (pinned host memory from
 * host_alloc, memory of the stream's device or a peer's opened through
 * IPC), else through cuMemcpyBatchAsync (CUDA 12.8+) or one cuMemcpy*Async
 * per copy: cuda_gather.c, which also owns the kernel module of each device
 * and the address registries the kernel trusts.  Every op makes the
 * device's primary context current on the calling thread for the call and
 * restores the caller's own context afterwards.  No threads of its own;
 * owns the library handle and one retained primary context per device
 * used.  Memory of other processes (cuIpc*) and the NIC queries live in
 * cuda_ipc.c; what the three files share is cuda_internal.h.
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
#include "err.h"
#include "log.h"

struct cuda_driver cuda_drv;

#define CUDA_STREAM_MAGIC 0x63756461u /* "cuda" */

/* Loaded state, written once by cuda_load() or under ctx_lock. */
struct ferry_device_loader cuda_loader = FERRY_DEVICE_LOADER_INIT;
void *cuda_lib;
int cuda_ndevices;
static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(CUcontext) primary_ctx[CUDA_MAX_DEVICES];
atomic_int cuda_batch_enabled;
atomic_int cuda_gather_enabled;
atomic_int cuda_gather_d2d;
struct cuda_shape cuda_kernel_shape;

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
        {"cuModuleGetLoadingMode", &cuda_drv.cuModuleGetLoadingMode, 0},
    };
    int rc = ferry_device_dlopen("libcuda.so.1", syms, sizeof syms / sizeof syms[0], &cuda_lib);
    if (rc < 0)
        return rc;
    if ((rc = cuda_shape_read(&cuda_kernel_shape)) < 0)
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
    atomic_store(&cuda_batch_enabled, have && !(want != NULL && strcmp(want, "0") == 0));
    /* FERRY_CUDA_GATHER_KERNEL=0 keeps D2H / H2D batches on the copy engine
     * instead of the gather/scatter kernel. */
    want = getenv("FERRY_CUDA_GATHER_KERNEL");
    have = cuda_drv.cuDeviceGetAttribute != NULL && cuda_drv.cuMemHostGetDevicePointer != NULL &&
           cuda_drv.cuPointerGetAttributes != NULL && cuda_drv.cuModuleLoadDataEx != NULL &&
           cuda_drv.cuModuleGetFunction != NULL && cuda_drv.cuModuleUnload != NULL &&
           cuda_drv.cuLaunchKernel != NULL;
    atomic_store(&cuda_gather_enabled, have && !(want != NULL && strcmp(want, "0") == 0));
    /* Device-to-device batches (the shm transport between two processes'
     * GPUs, over CUDA IPC) go through the kernel too: one launch per batch
     * over NVLink where the copy engine pays about 1 us a copy (128 copies of
     * 64 KiB: 65 GB/s at most).  FERRY_CUDA_GATHER_D2D=0 keeps them on the
     * copy engine. */
    want = getenv("FERRY_CUDA_GATHER_D2D");
    atomic_store(&cuda_gather_d2d, !(want != NULL && strcmp(want, "0") == 0));
    LOG_INFO("cuda: %d devices, copies through %s%s%s", cuda_ndevices,
             !atomic_load(&cuda_batch_enabled) ? "one cuMemcpy*Async per copy"
             : cuda_drv.batch_v2               ? "cuMemcpyBatchAsync_v2"
                                         : "cuMemcpyBatchAsync (12.8 ABI)",
             atomic_load(&cuda_gather_enabled) ? ", pinned D2H / H2D batches through the gather kernel"
                                          : "",
             atomic_load(&cuda_gather_enabled) && atomic_load(&cuda_gather_d2d) ? ", D2D batches too" : "");
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
        cuda_host_range_add(*out, len);
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
    cuda_host_range_remove(ptr);
    if (any_ctx_enter(&g) < 0)
        return;
    CUresult r = cuda_drv.cuMemFreeHost(ptr);
    cuda_ctx_leave(&g);
    if (r != CUDA_SUCCESS)
        LOG_ERROR("cuda: cuMemFreeHost(%p): %s", ptr, cu_error_text(r));
}

static const char *cuda_driver_library(void)
{
    return "libcuda.so.1";
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
    if (r == CUDA_SUCCESS && atomic_load_explicit(&cuda_gather_enabled, memory_order_relaxed))
        cuda_gather_preload(dev);
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
    rc = cuda_copy_enqueue(s, dir, copies, n);
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

static int cuda_stream_synchronize(int dev, void *stream)
{
    struct ctx_guard g;
    int rc = cuda_init();
    if (rc < 0)
        return rc;
    if ((rc = stream_ctx_enter(dev, &g)) < 0)
        return rc;
    CUresult r = cuda_drv.cuStreamSynchronize((CUstream)stream);
    cuda_ctx_leave(&g);
    return r == CUDA_SUCCESS ? 0 : cu_fail(r, "cuStreamSynchronize", dev);
}

static int cuda_stream_copy(int dev, void *stream, enum ferry_copy_dir dir, const struct ferry_copy *copies, size_t n)
{
    struct ctx_guard g;
    int rc = cuda_init();
    if (rc < 0)
        return rc;
    if (dir != FERRY_COPY_D2H && dir != FERRY_COPY_H2D && dir != FERRY_COPY_D2D)
        return ferry_fail(FERRY_EINVAL, "cuda:%d: stream_copy: bad direction %d", dev, (int)dir);
    if (n == 0)
        return 0;
    if (copies == NULL)
        return ferry_fail(FERRY_EINVAL, "cuda:%d: stream_copy: %zu copies but no array", dev, n);
    if ((rc = stream_ctx_enter(dev, &g)) < 0)
        return rc;
    struct cuda_stream s = {.magic = CUDA_STREAM_MAGIC, .dev = dev, .ctx = g.ours, .stream = (CUstream)stream};
    rc = cuda_copy_enqueue(&s, dir, copies, n);
    cuda_ctx_leave(&g);
    return rc;
}

/* Lazy loading and a stream waiting for ferry do not mix: said once.
 * Measured on an H200 (bench/cuda_sync_probe.c): while a stream waits in
 * cuStreamWaitValue32, the first launch of a kernel loaded lazily stalls
 * every stream of the context until the wait ends, other threads' launches
 * of kernels that ran before included; ferry's copies for the awaited
 * transfer stall with them, and the wait never ends. */
static void warn_lazy_loading(void)
{
    static atomic_int said;
    int mode = 0;
    if (cuda_drv.cuModuleGetLoadingMode == NULL || cuda_drv.cuModuleGetLoadingMode(&mode) != CUDA_SUCCESS ||
        mode != 2 || atomic_exchange(&said, 1))
        return;
    LOG_WARN("cuda: CUDA_MODULE_LOADING is lazy: while a stream waits for a ferry transfer (submit_on_stream, "
             "*_on_cuda), the first launch of any kernel of this process stalls every stream of the device, the "
             "transfer's own copies too, and the stream never goes on; set CUDA_MODULE_LOADING=EAGER, or run "
             "every kernel once before (docs/ARCHITECTURE.md)");
}

static int cuda_stream_wait_flag(int dev, void *stream, volatile uint32_t *flag, uint32_t value)
{
    struct ctx_guard g;
    int rc = cuda_init();
    if (rc < 0)
        return rc;
    warn_lazy_loading();
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

/* Whether a caller's stream ran its copies: the GPU writes the word after
 * them (a stream in error runs nothing more). */
static int cuda_stream_write_flag(int dev, void *stream, volatile uint32_t *flag, uint32_t value)
{
    struct ctx_guard g;
    int rc = cuda_init();
    if (rc < 0)
        return rc;
    if (cuda_drv.cuStreamWriteValue32 == NULL || cuda_drv.cuMemHostGetDevicePointer == NULL)
        return ferry_fail(FERRY_ENOTSUP, "cuda:%d: the driver has no cuStreamWriteValue32", dev);
    if ((rc = stream_ctx_enter(dev, &g)) < 0)
        return rc;
    CUdeviceptr addr = 0;
    CUresult r = cuda_drv.cuMemHostGetDevicePointer(&addr, (void *)flag, 0);
    if (r == CUDA_SUCCESS)
        r = cuda_drv.cuStreamWriteValue32((CUstream)stream, addr, value, 0);
    cuda_ctx_leave(&g);
    if (r == CUDA_ERROR_NOT_SUPPORTED)
        return ferry_fail(FERRY_ENOTSUP, "cuda:%d: stream memory operations are not supported", dev);
    return r == CUDA_SUCCESS ? 0 : cu_fail(r, "cuStreamWriteValue32", dev);
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
    /* a flag of host_alloc's (the shm lanes' marks) is where devices see
     * it: no driver call, whose locks the other submitting threads'
     * launches wait for, to learn that again per job */
    CUdeviceptr addr = (CUdeviceptr)(uintptr_t)flag;
    CUresult r = CUDA_SUCCESS;
    if (!cuda_host_range_has(flag, sizeof *flag))
        r = cuda_drv.cuMemHostGetDevicePointer(&addr, (void *)flag, 0);
    if (r == CUDA_SUCCESS)
        r = cuda_drv.cuStreamWriteValue32(s->stream, addr, value, 0);
    cuda_ctx_leave(&g);
    if (r == CUDA_ERROR_NOT_SUPPORTED)
        return ferry_fail(FERRY_ENOTSUP, "cuda:%d: stream memory operations are not supported", s->dev);
    return r == CUDA_SUCCESS ? 0 : cu_fail(r, "cuStreamWriteValue32", s->dev);
}

/* A function on one of ferry's streams, run by the driver once the copies
 * before it are done (not at all after a failure: cuLaunchHostFunc). */
static int cuda_stream_then(ferry_stream *stream, void (*fn)(void *), void *arg)
{
    struct ctx_guard g;
    struct cuda_stream *s = as_cuda(stream);
    if (s == NULL || fn == NULL)
        return ferry_fail(FERRY_EINVAL, "cuda: stream_then on %p: not a cuda stream, or no function", (void *)stream);
    if (cuda_drv.cuLaunchHostFunc == NULL)
        return ferry_fail(FERRY_ENOTSUP, "cuda:%d: the driver has no cuLaunchHostFunc", s->dev);
    int rc = cuda_ctx_enter(s->dev, &g);
    if (rc < 0)
        return rc;
    CUresult r = cuda_drv.cuLaunchHostFunc(s->stream, fn, arg);
    cuda_ctx_leave(&g);
    return r == CUDA_SUCCESS ? 0 : cu_fail(r, "cuLaunchHostFunc", s->dev);
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
    {"FERRY_CUDA_KERNEL_H2D_ONE_MAX", CUDA_SHAPE_H2D_ONE_MAX_DEFAULT,
     "an H2D call of a single copy larger than this takes the copy engine instead of the kernel (0: always; "
     "a staging chunk bound for its device buffer, FERRY_STAGING_AGGREGATE_READ)"},
    {"FERRY_CUDA_KERNEL_H2D_CALL_MIN", CUDA_SHAPE_H2D_CALL_MIN_DEFAULT,
     "0, or bytes: an H2D call of at least this many bytes whose copies average 64 KiB or more takes the copy "
     "engine instead of the kernel (a staging pool's scatter group, FERRY_STAGING_READ_GROUP_BYTES)"},
    {"FERRY_CUDA_KERNEL_COPIES", CUDA_SHAPE_COPIES_DEFAULT,
     "copies one launch of the gather/scatter kernel takes at most: 128, or 1024 (28 KiB of kernel parameters: "
     "CUDA 12.1+, else 128; the launch itself then costs ~20 us more)"},
    {"FERRY_CUDA_KERNEL_H2D_THREADS", CUDA_SHAPE_H2D_THREADS_DEFAULT,
     "0, or threads per CTA of the scatter kernel's H2D launches (a multiple of 32 up to 256; 0: "
     "FERRY_CUDA_KERNEL_THREADS)"},
    {"FERRY_CUDA_KERNEL_H2D_TILE", CUDA_SHAPE_H2D_TILE_DEFAULT,
     "0, or bytes one CTA of an H2D launch copies at a time, a power of two from 1024 to 1048576 (0: "
     "FERRY_CUDA_KERNEL_TILE)"},
    {"FERRY_CUDA_KERNEL_D2D_TILE", CUDA_SHAPE_D2D_TILE_DEFAULT,
     "0, or bytes one CTA of a GPU-to-GPU launch (shm over CUDA IPC) whose copies average 256 KiB or more copies "
     "at a time, a power of two from 1024 to 1048576 (0: FERRY_CUDA_KERNEL_TILE)"},
    {"FERRY_CUDA_KERNEL_H2D_GRID", CUDA_SHAPE_H2D_GRID_DEFAULT,
     "0, or the CTAs an H2D launch of the scatter kernel of at most FERRY_CUDA_KERNEL_H2D_GRID_BYTES takes at "
     "most, each copying its tiles in turn (0: FERRY_CUDA_KERNEL_CTAS per SM; a 128 x 4 KiB scatter batch is one "
     "512 KiB launch)"},
    {"FERRY_CUDA_KERNEL_H2D_GRID_BYTES", CUDA_SHAPE_H2D_GRID_BYTES_DEFAULT,
     "bytes: H2D launches moving more keep FERRY_CUDA_KERNEL_CTAS per SM whatever FERRY_CUDA_KERNEL_H2D_GRID "
     "says, 0 to 1073741824"},
    {"FERRY_CUDA_KERNEL_BULK", CUDA_SHAPE_BULK_DEFAULT,
     "1: H2D batches through the scatter kernel's bulk-copy (TMA) form on sm_90 and later, which reads host "
     "memory a tile per request instead of 16 bytes per thread"},
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
    .driver_library = cuda_driver_library,
    .stream_create = cuda_stream_create,
    .stream_destroy = cuda_stream_destroy,
    .copy_async = cuda_copy_async,
    .stream_query = cuda_stream_query,
    .stream_sync = cuda_stream_sync,
    .stream_mark = cuda_stream_mark,
    .stream_then = cuda_stream_then,
    .stream_host_func = cuda_stream_host_func,
    .stream_wait_flag = cuda_stream_wait_flag,
    .stream_copy = cuda_stream_copy,
    .stream_write_flag = cuda_stream_write_flag,
    .stream_synchronize = cuda_stream_synchronize,
    .ipc_export = cuda_ipc_export,
    .ipc_open = cuda_ipc_open,
    .ipc_close = cuda_ipc_close,
    .dmabuf_export = cuda_dmabuf_export,
    .pci_bus_id = cuda_pci_bus_id,
};

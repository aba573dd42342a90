/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cuda_ipc.c — the cuda backend's memory of other processes and what a NIC
 * needs: cuIpc* export/open/close of device allocations (opened ones are
 * counted and shared, so two opens of one allocation map it once), learning
 * an opened range for the gather kernel, dma-buf export of a range and the
 * PCIe bus id (device.h's NIC queries).  No threads; state under ipc_lock.
 */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "device/cuda_internal.h"
#include "err.h"
#include "log.h"

/* ---------------------------------------------------------------- IPC */

_Static_assert(sizeof(struct cuda_ipc_handle) <= FERRY_IPC_HANDLE_MAX, "fits FERRY_IPC_HANDLE_MAX");

static int ipc_loaded(const char *what)
{
    int rc = cuda_init();
    if (rc < 0)
        return rc;
    if (cuda_drv.cuMemGetAddressRange == NULL || cuda_drv.cuIpcGetMemHandle == NULL || cuda_drv.cuIpcOpenMemHandle == NULL ||
        cuda_drv.cuIpcCloseMemHandle == NULL)
        return ferry_fail(FERRY_ENOTSUP, "cuda: %s: this driver lacks the cuIpc* calls", what);
    return 0;
}

int cuda_ipc_export(const void *ptr, size_t len, void *handle, size_t *handle_len)
{
    struct ctx_guard g;
    int dev = -1;
    int rc = ipc_loaded("ipc_export");
    if (rc < 0)
        return rc;
    if (*handle_len < sizeof(struct cuda_ipc_handle))
        return ferry_fail(FERRY_EINVAL, "cuda: ipc_export: %zu bytes of room, %zu needed", *handle_len,
                          sizeof(struct cuda_ipc_handle));
    if (!cuda_locate(ptr, len, &dev))
        return ferry_fail(FERRY_EINVAL, "cuda: ipc_export(%p): not CUDA device memory", ptr);
    if ((rc = cuda_ctx_enter(dev, &g)) < 0)
        return rc;
    struct cuda_ipc_handle h = {.magic = CUDA_IPC_MAGIC, .pid = (int32_t)getpid()};
    CUdeviceptr base = 0;
    size_t size = 0;
    CUresult r = cuda_drv.cuMemGetAddressRange(&base, &size, (CUdeviceptr)(uintptr_t)ptr);
    const char *what = "cuMemGetAddressRange";
    if (r == CUDA_SUCCESS) {
        what = "cuIpcGetMemHandle";
        r = cuda_drv.cuIpcGetMemHandle(&h.handle, base);
    }
    cuda_ctx_leave(&g);
    if (r != CUDA_SUCCESS)  /* memory from cuMemCreate (VMM) or cuMemHostRegister, for one */
        return ferry_fail(FERRY_ENOTSUP, "cuda:%d: %s(%p): %s (CUDA error %d)", dev, what, ptr,
                          cu_error_text(r), r);
    if ((uintptr_t)ptr + len > (uintptr_t)(base + size))
        return ferry_fail(FERRY_EINVAL, "cuda:%d: ipc_export: %p+%zu runs past its allocation", dev, ptr, len);
    h.offset = (uint64_t)((uintptr_t)ptr - (uintptr_t)base);
    memcpy(handle, &h, sizeof h);
    *handle_len = sizeof h;
    return 0;
}

/* Allocations opened here, counted: whether the driver lets one context open
 * a handle twice has varied, and several registrations (or a descriptor
 * refresh) may name the same allocation. */
struct ipc_open_entry {
    CUipcMemHandle handle;
    int dev;
    CUdeviceptr base;
    size_t size;
    unsigned refs;
    int reachable;               /* dev's SMs reach it: dev's own memory or a P2P peer's */
};

static pthread_mutex_t ipc_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ipc_open_entry *ipc_opened;
static size_t ipc_nopened, ipc_cap;

/* Whether kernels on dev may touch an allocation of another process mapped
 * at base: the gather kernel then copies D2D with it.  Only where the
 * driver says dev reaches its owner (a kernel touching memory it cannot
 * reach faults and poisons the context; the copy engine has no such
 * limit). */
static int ipc_reachable(int dev, CUdeviceptr base)
{
    int owner = -1, can = 0;
    CUdevice d, o;
    if (cuda_drv.cuPointerGetAttribute(&owner, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, base) != CUDA_SUCCESS || owner < 0)
        return 0;
    if (owner == dev)
        return 1;
    return cuda_drv.cuDeviceCanAccessPeer != NULL && cuda_drv.cuDeviceGet(&d, dev) == CUDA_SUCCESS &&
           cuda_drv.cuDeviceGet(&o, owner) == CUDA_SUCCESS && cuda_drv.cuDeviceCanAccessPeer(&can, d, o) == CUDA_SUCCESS &&
           can == 1;
}

/* cuda_dev_range_learn for memory of another device: 1 if [p, p + len) lies in
 * an allocation opened on dev that dev reaches, remembered then (under
 * ipc_lock, so ipc_close's forget cannot pass it). */
int cuda_ipc_range_learn(uintptr_t p, size_t len, int dev)
{
    int found = 0;
    pthread_mutex_lock(&ipc_lock);
    for (size_t i = 0; i < ipc_nopened && !found; i++) {
        const struct ipc_open_entry *e = &ipc_opened[i];
        struct addr_range r = {(uintptr_t)e->base, (uintptr_t)e->base + e->size, dev};
        if (e->dev == dev && e->reachable && cuda_range_holds(&r, p, len, dev)) {
            cuda_dev_range_add(r);
            found = 1;
        }
    }
    pthread_mutex_unlock(&ipc_lock);
    return found;
}

/* Opens (or counts one more use of) h on dev; *bytes: the allocation's size
 * (0: the driver did not say).  ipc_lock held, dev's context current. */
static CUresult ipc_open_counted(int dev, const CUipcMemHandle *h, CUdeviceptr *base, size_t *bytes)
{
    for (size_t i = 0; i < ipc_nopened; i++) {
        struct ipc_open_entry *e = &ipc_opened[i];
        if (e->dev == dev && memcmp(&e->handle, h, sizeof *h) == 0) {
            e->refs++;
            *base = e->base;
            *bytes = e->size == 1 ? 0 : e->size;
            return CUDA_SUCCESS;
        }
    }
    if (ipc_nopened == ipc_cap) {
        size_t cap = ipc_cap ? 2 * ipc_cap : 16;
        struct ipc_open_entry *n = realloc(ipc_opened, cap * sizeof *n);
        if (n == NULL)
            return CUDA_ERROR_OUT_OF_MEMORY;
        ipc_opened = n;
        ipc_cap = cap;
    }
    size_t size = 0;
    CUresult r = cuda_drv.cuIpcOpenMemHandle(base, *h, CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS);
    if (r == CUDA_SUCCESS && cuda_drv.cuMemGetAddressRange(NULL, &size, *base) != CUDA_SUCCESS)
        size = 1;
    if (r == CUDA_SUCCESS)
        ipc_opened[ipc_nopened++] = (struct ipc_open_entry){*h, dev, *base, size, 1, ipc_reachable(dev, *base)};
    *bytes = size == 1 ? 0 : size; /* 1: unknown (see cuda_ipc_close) */
    return r;
}

int cuda_ipc_open(int dev, const void *handle, size_t handle_len, void **ptr, size_t *room)
{
    struct ctx_guard g;
    struct cuda_ipc_handle h;
    int rc = ipc_loaded("ipc_open");
    if (rc < 0)
        return rc;
    if (handle_len != sizeof h)
        return ferry_fail(FERRY_EINVAL, "cuda: ipc_open: a handle of %zu bytes, expected %zu", handle_len,
                          sizeof h);
    memcpy(&h, handle, sizeof h);
    if (h.magic != CUDA_IPC_MAGIC)
        return ferry_fail(FERRY_EINVAL, "cuda: ipc_open: not a CUDA IPC handle");
    if (h.pid == (int32_t)getpid())
        return ferry_fail(FERRY_ENOTSUP, "cuda: ipc_open: the handle was exported by this process");
    if ((rc = cuda_ctx_enter(dev, &g)) < 0)
        return rc;
    CUdeviceptr base = 0;
    size_t size = 0;
    pthread_mutex_lock(&ipc_lock);
    CUresult r = ipc_open_counted(dev, &h.handle, &base, &size);
    pthread_mutex_unlock(&ipc_lock);
    cuda_ctx_leave(&g);
    if (r != CUDA_SUCCESS)
        return cu_fail(r, "cuIpcOpenMemHandle", dev);
    *ptr = (void *)(uintptr_t)(base + h.offset);
    if (size == 0) { /* the driver did not say how large it is */
        *room = SIZE_MAX;
        return 0;
    }
    if (h.offset >= size) { /* the exporter's handle points past its own allocation */
        cuda_ipc_close(dev, (void *)(uintptr_t)base);
        return ferry_fail(FERRY_EINVAL, "cuda:%d: ipc_open: offset %llu past the opened allocation of %zu bytes",
                          dev, (unsigned long long)h.offset, size);
    }
    *room = size - (size_t)h.offset;
    return 0;
}

void cuda_ipc_close(int dev, void *ptr)
{
    struct ctx_guard g;
    if (ptr == NULL || !ferry_device_loaded(&cuda_loader) || cuda_drv.cuIpcCloseMemHandle == NULL ||
        cuda_ctx_enter(dev, &g) < 0)
        return;
    CUdeviceptr p = (CUdeviceptr)(uintptr_t)ptr;
    CUresult r = CUDA_SUCCESS;
    int found = 0;
    pthread_mutex_lock(&ipc_lock);
    /* the allocation that holds p; one whose size the driver did not say
     * (size 1) holds every p from its base on: the nearest such base below
     * p, when no allocation of known size holds it */
    size_t at = ipc_nopened;
    for (size_t i = 0; i < ipc_nopened; i++) {
        const struct ipc_open_entry *e = &ipc_opened[i];
        if (e->dev != dev || p < e->base)
            continue;
        if (p - e->base < e->size) {
            at = i;
            break;
        }
        if (e->size == 1 && (at == ipc_nopened || e->base > ipc_opened[at].base))
            at = i;
    }
    if (at < ipc_nopened) {
        struct ipc_open_entry *e = &ipc_opened[at];
        found = 1;
        if (--e->refs == 0) {
            cuda_dev_range_forget((void *)(uintptr_t)e->base); /* the gather kernel may have learned it */
            r = cuda_drv.cuIpcCloseMemHandle(e->base);
            *e = ipc_opened[--ipc_nopened];
        }
    }
    pthread_mutex_unlock(&ipc_lock);
    cuda_ctx_leave(&g);
    if (!found)
        LOG_ERROR("cuda:%d: ipc_close(%p): not memory ipc_open returned", dev, ptr);
    else if (r != CUDA_SUCCESS)
        LOG_ERROR("cuda:%d: cuIpcCloseMemHandle(%p): %s", dev, ptr, cu_error_text(r));
}


/* ---------------------------------------------------------------- NIC queries */

/* What an RDMA NIC needs to know about CUDA memory (device.h: dmabuf_export,
 * pci_bus_id).  The two driver entry points are resolved here, once, from
 * the library cuda_load opened, so the cuda_loader's table stays as it is. */
typedef CUresult (*get_handle_fn)(void *handle, CUdeviceptr dptr, size_t size, int type, unsigned long long flags);
typedef CUresult (*pci_bus_id_fn)(char *id, int len, CUdevice dev);
enum { CU_POINTER_ATTRIBUTE_CONTEXT_ = 1, CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD_ = 1 };

static pthread_once_t nic_once = PTHREAD_ONCE_INIT;
static get_handle_fn cu_get_handle;
static pci_bus_id_fn cu_pci_bus_id;

static void nic_syms(void)
{
    void *f = dlsym(cuda_lib, "cuMemGetHandleForAddressRange");
    memcpy(&cu_get_handle, &f, sizeof f);
    f = dlsym(cuda_lib, "cuDeviceGetPCIBusId");
    memcpy(&cu_pci_bus_id, &f, sizeof f);
}

int cuda_dmabuf_export(const void *ptr, size_t len, int *fd, uint64_t *offset)
{
    int dev = -1, rc = cuda_init();
    if (rc < 0)
        return rc;
    if (!cuda_locate(ptr, len, &dev))
        return ferry_fail(FERRY_EINVAL, "cuda: 0x%llx+%zu is not CUDA device memory",
                          (unsigned long long)(uintptr_t)ptr, len);
    pthread_once(&nic_once, nic_syms);
    if (cu_get_handle == NULL)
        return ferry_fail(FERRY_ENOTSUP, "libcuda has no cuMemGetHandleForAddressRange (driver older than CUDA 11.7?)");
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), addr = (uint64_t)(uintptr_t)ptr;
    uint64_t start = addr & ~(page - 1), end = (addr + len + page - 1) & ~(page - 1);
    /* the range's own context current, whichever the caller's thread has */
    CUcontext ctx = NULL, prev = NULL;
    if (cuda_drv.cuCtxGetCurrent(&prev) != CUDA_SUCCESS)
        prev = NULL;
    if (cuda_drv.cuPointerGetAttribute(&ctx, CU_POINTER_ATTRIBUTE_CONTEXT_, (CUdeviceptr)addr) != CUDA_SUCCESS)
        ctx = NULL;
    int switched = ctx != NULL && ctx != prev && cuda_drv.cuCtxSetCurrent(ctx) == CUDA_SUCCESS;
    int out = -1;
    CUresult r = cu_get_handle(&out, (CUdeviceptr)start, end - start, CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD_, 0);
    if (switched)
        (void)cuda_drv.cuCtxSetCurrent(prev);
    if (r == CUDA_ERROR_NOT_SUPPORTED) /* no dma-buf in this driver / kernel module */
        return ferry_fail(FERRY_ENOTSUP, "cuda:%d: cuMemGetHandleForAddressRange: dma-buf not supported", dev);
    if (r != CUDA_SUCCESS)
        return cu_fail(r, "cuMemGetHandleForAddressRange", dev);
    if (out < 0)
        return ferry_fail(FERRY_EIO, "cuda:%d: cuMemGetHandleForAddressRange gave no fd", dev);
    *fd = out;
    *offset = addr - start;
    return 0;
}

int cuda_pci_bus_id(int dev, char *id, size_t cap)
{
    int rc = cuda_init();
    if (rc < 0)
        return rc;
    if (dev < 0 || dev >= cuda_ndevices)
        return ferry_fail(FERRY_ENODEV, "cuda:%d does not exist (%d devices)", dev, cuda_ndevices);
    pthread_once(&nic_once, nic_syms);
    if (cu_pci_bus_id == NULL)
        return ferry_fail(FERRY_ENOTSUP, "libcuda has no cuDeviceGetPCIBusId");
    CUdevice d;
    CUresult r = cuda_drv.cuDeviceGet(&d, dev);
    if (r == CUDA_SUCCESS)
        r = cu_pci_bus_id(id, cap > INT_MAX ? INT_MAX : (int)cap, d);
    if (r != CUDA_SUCCESS)
        return cu_fail(r, "cuDeviceGetPCIBusId", dev);
    for (char *c = id; *c; c++)
        if (*c >= 'A' && *c <= 'F')
            *c = (char)(*c - 'A' + 'a');
    return 0;
}


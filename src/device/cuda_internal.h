/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cuda_internal.h — what the cuda backend's files share (private to
 * src/device/cuda*.c): the driver API types and entry points resolved by
 * cuda_load (cuda.c), context entry/exit, error text, streams and the
 * settings read at load, the copies and the address registries the gather
 * kernel trusts (cuda_gather.c), and the IPC / NIC half (cuda_ipc.c).
 * Each piece of state is defined once, in the file named; nothing here is
 * static.
 */
#ifndef FERRY_CUDA_INTERNAL_H
#define FERRY_CUDA_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "device/backend.h"
#include "device/cuda_shape.h"
#include "device/device.h"

/* ---------------------------------------------------------------- driver ABI */

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct {
    char reserved[64];
} CUipcMemHandle;

/* What travels in a ferry CUDA IPC handle (cuda_ipc.c): cuIpcGetMemHandle of
 * the allocation's base (the driver exports whole allocations) and where the
 * exported pointer lies in it.  A peer writes it: every field is checked. */
#define CUDA_IPC_MAGIC 0x43495046u /* "FPIC" */
struct cuda_ipc_handle {
    uint32_t magic;
    int32_t pid;                 /* the exporter: a process cannot open its own */
    uint64_t offset;             /* ptr - allocation base */
    CUipcMemHandle handle;
};

enum {
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_NOT_READY = 600,
    CU_STREAM_WAIT_VALUE_GEQ = 0,
    CU_POINTER_ATTRIBUTE_MEMORY_TYPE = 2,
    CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9,
    CU_POINTER_ATTRIBUTE_RANGE_START_ADDR = 11,
    CU_POINTER_ATTRIBUTE_RANGE_SIZE = 12,
    CU_MEMORYTYPE_DEVICE = 2,
    CU_STREAM_NON_BLOCKING = 1,
    CU_MEMHOSTALLOC_PORTABLE = 1,
    CU_MEMHOSTALLOC_DEVICEMAP = 2,
    CU_MEMCPY_SRC_ACCESS_ORDER_STREAM = 1,
    CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
    CU_JIT_ERROR_LOG_BUFFER = 5,
    CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6,
    CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS = 1,
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

struct cuda_driver {
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
    /* the gather kernel's (optional: missing ones switch the kernel off) */
    CUresult (*cuDeviceGetAttribute)(int *value, int attribute, CUdevice dev);
    CUresult (*cuMemHostGetDevicePointer)(CUdeviceptr *dptr, void *p, unsigned int flags);
    CUresult (*cuPointerGetAttributes)(unsigned int count, int *attributes, void **data,
                                       CUdeviceptr ptr);
    CUresult (*cuModuleLoadDataEx)(CUmodule *module, const void *image, unsigned int count,
                                   int *options, void **values);
    CUresult (*cuModuleGetFunction)(CUfunction *fn, CUmodule module, const char *name);
    CUresult (*cuModuleUnload)(CUmodule module);
    CUresult (*cuLaunchKernel)(CUfunction fn, unsigned int gx, unsigned int gy, unsigned int gz,
                               unsigned int bx, unsigned int by, unsigned int bz,
                               unsigned int shared_bytes, CUstream stream, void **params,
                               void **extra);
    /* IPC (optional: missing ones leave ipc_export / ipc_open failing) */
    CUresult (*cuMemGetAddressRange)(CUdeviceptr *base, size_t *size, CUdeviceptr dptr);
    CUresult (*cuIpcGetMemHandle)(CUipcMemHandle *handle, CUdeviceptr dptr);
    CUresult (*cuIpcOpenMemHandle)(CUdeviceptr *dptr, CUipcMemHandle handle, unsigned int flags);
    CUresult (*cuIpcOpenMemHandle_v1)(CUdeviceptr *dptr, CUipcMemHandle handle, unsigned int flags);
    CUresult (*cuIpcCloseMemHandle)(CUdeviceptr dptr);
    CUresult (*cuDeviceCanAccessPeer)(int *can, CUdevice dev, CUdevice peer);
    /* stream ordering (optional: missing ones leave stream_host_func /
     * stream_wait_flag failing with FERRY_ENOTSUP) */
    CUresult (*cuLaunchHostFunc)(CUstream stream, void (*fn)(void *), void *arg);
    CUresult (*cuStreamWaitValue32)(CUstream stream, CUdeviceptr addr, unsigned int value, unsigned int flags);
    CUresult (*cuStreamWriteValue32)(CUstream stream, CUdeviceptr addr, unsigned int value, unsigned int flags);
    CUresult (*cuModuleGetLoadingMode)(int *mode); /* 1 eager, 2 lazy (CUmoduleLoadingMode) */
};


extern struct cuda_driver cuda_drv;        /* entry points, filled by cuda_load */
extern void *cuda_lib;                     /* libcuda.so.1's handle */
extern int cuda_ndevices;                  /* devices ferry uses */
extern struct ferry_device_loader cuda_loader;

/* The caller's context, to give back after the op. */
struct ctx_guard {
    CUcontext prev;
    CUcontext ours;
};

int cuda_init(void);
int cuda_load(void);
const char *cu_error_text(CUresult r);
/* Records "what: <CUDA error> (code)" and returns the matching ferry code. */
int cu_fail(CUresult r, const char *what, int dev);
int cuda_ctx_enter(int dev, struct ctx_guard *g);
void cuda_ctx_leave(const struct ctx_guard *g);
int cuda_locate(const void *ptr, size_t len, int *dev);

struct addr_range {
    uintptr_t start, end;        /* [start, end) */
    int dev;                     /* owning device; -1 for host ranges */
};
int cuda_range_holds(const struct addr_range *r, uintptr_t p, size_t len, int dev);
void cuda_dev_range_add(struct addr_range r);
void cuda_dev_range_forget(void *p);
int cuda_dev_range_learn(uintptr_t p, size_t len, int dev);

/* cuda_ipc.c: memory of other processes (cuIpc*), and what a NIC needs. */
int cuda_ipc_range_learn(uintptr_t p, size_t len, int dev);
int cuda_ipc_export(const void *ptr, size_t len, void *handle, size_t *handle_len);
int cuda_ipc_open(int dev, const void *handle, size_t handle_len, void **ptr, size_t *room);
void cuda_ipc_close(int dev, void *ptr);
int cuda_dmabuf_export(const void *ptr, size_t len, int *fd, uint64_t *offset);
int cuda_pci_bus_id(int dev, char *id, size_t cap);

/* ---------------------------------------------------------------- streams and copies */

#define CUDA_MAX_DEVICES 64

struct cuda_stream {
    uint32_t magic;
    int dev;
    CUcontext ctx;
    CUstream stream;
};

/* Set once by cuda_load (cuda.c), read by cuda_gather.c. */
extern atomic_int cuda_batch_enabled;       /* 1 while cuMemcpyBatchAsync is trusted */
extern atomic_int cuda_gather_enabled;      /* FERRY_CUDA_GATHER_KERNEL and the symbols allow the kernel */
extern atomic_int cuda_gather_d2d;          /* FERRY_CUDA_GATHER_D2D: D2D batches through it too */
extern struct cuda_shape cuda_kernel_shape; /* FERRY_CUDA_KERNEL_*: the kernel's launch shape */

/* cuda_gather.c, with s's device's context current: enqueues n copies on s
 * (the kernel where it suits, else the copy engine; stream order holds). */
int cuda_copy_enqueue(const struct cuda_stream *s, enum ferry_copy_dir dir, const struct ferry_copy *copies,
                      size_t n);
/* Loads dev's kernel now (JIT) rather than in the first copy (context current). */
void cuda_gather_preload(int dev);
/* Pinned host memory from host_alloc, which the kernel may address. */
void cuda_host_range_add(void *p, size_t len);
void cuda_host_range_remove(void *p);
/* 1 if [p, p + len) lies in such memory: devices reach it at its host
 * address (cuMemHostGetDevicePointer would answer p itself). */
int cuda_host_range_has(const volatile void *p, size_t len);

#endif

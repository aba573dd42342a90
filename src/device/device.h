/* SPDX-License-Identifier: Apache-2.0 */
/*
 * device.h — the device layer: one ops table per kind of accelerator memory.
 *
 * The engine and staging never name a concrete device; they look one up by
 * kind ("cpu", "cuda", "npu", "sim") or location and call through struct
 * ferry_device_ops.  Each backend lives in one file (cpu.c, cuda.c, ascend.c,
 * sim.c) and loads its driver library with dlopen at first use, so one build
 * serves every host: a missing library means the kind is absent
 * (FERRY_ENODEV), not a build error.  Each table describes itself (the
 * location strings it owns, its knobs, its capabilities); the registry in
 * device.c lists the tables, and location parsing derives from it.  Adding a
 * device kind is one file plus one line there.
 *
 * Host memory is the "cpu" table (FERRY_DEVICE_HOST): transports touch it
 * directly, so ferry_device_of_location() answers NULL for it.
 *
 * Threads: every op may be called from any thread.  Every op except locate()
 * loads the driver on demand (as init() does); locate() never loads one, it
 * answers 0 until init() has succeeded.  A stream may be used from several
 * threads, but the order of copies enqueued concurrently is unspecified.
 */
#ifndef FERRY_DEVICE_H
#define FERRY_DEVICE_H

#include <stddef.h>
#include <stdint.h>

/* One device<->host or device<->device copy. */
struct ferry_copy {
    void *dst;
    const void *src;
    size_t len;
};

enum ferry_copy_dir {
    FERRY_COPY_D2H = 0,   /* src device memory, dst host memory */
    FERRY_COPY_H2D = 1,   /* src host memory, dst device memory */
    FERRY_COPY_D2D = 2,
};

/* An ordered queue of asynchronous copies on one device (a CUDA stream, an ACL
 * stream, a sim worker queue).  Opaque to callers. */
typedef struct ferry_stream ferry_stream;

/* A location string a device owns: "prefix" or "prefix:N". */
struct ferry_location_kind {
    const char *prefix;               /* "cuda" */
    int index_required;               /* 1: a bare "prefix" is rejected */
    int bare_index;                   /* the index of a bare "prefix" (-1: any) */
};

/* The location string of host memory (the cpu table's). */
#define FERRY_LOCATION_HOST "cpu"

/* Capabilities (struct ferry_device_ops.caps). */
#define FERRY_DEVICE_HOST 0x1u        /* host memory: transports touch it directly, nothing is staged */

struct ferry_config_knob;

struct ferry_device_ops {
    const char *kind;                 /* "cpu", "cuda", "npu", "sim" */
    unsigned caps;                    /* FERRY_DEVICE_* */
    /* The location strings this kind owns, ended by {NULL}; NULL: kind:N
     * only (an index is required). */
    const struct ferry_location_kind *locations;
    /* The FERRY_* variables this backend reads itself, ended by {NULL}
     * (NULL: none); ferry_config_describe lists them with the others. */
    const struct ferry_config_knob *knobs;

    /* Loads the driver (once; thread-safe).  Returns 0 or FERRY_ENODEV with a
     * detail message saying what is missing (FERRY_EINVAL if a FERRY_* setting
     * of the backend does not parse).  A failure is remembered: later calls
     * return the same code and message without retrying. */
    int (*init)(void);
    /* Number of devices of this kind (0 if absent). */
    int (*device_count)(void);

    /* Device memory, for tests and the bench. */
    int (*mem_alloc)(int dev, size_t len, void **out);
    void (*mem_free)(int dev, void *ptr);

    /* Page-locked host memory usable by this kind's async copies. */
    int (*host_alloc)(size_t len, void **out);
    void (*host_free)(void *ptr);

    /* If ptr lies in memory of this kind, stores its device index in *dev and
     * returns 1; returns 0 otherwise (also before init() succeeded: it never
     * loads the driver).  Used to detect and to check locations. */
    int (*locate)(const void *ptr, size_t len, int *dev);
    /* Optional: the process is ending (ferry_process_exiting): make no driver
     * call from now on; what is released later is left to the OS.  Any
     * thread; must not block.  For a runtime another component may finalize
     * in its exit hook (ACL: aclFinalize). */
    void (*process_exiting)(void);
    /* Optional: the driver library init() loads (its dlopen name), so that
     * ferry_device_detect can tell whether the application loaded the driver
     * already (torch allocated the memory, say) and init() loads nothing new. */
    const char *(*driver_library)(void);

    int (*stream_create)(int dev, ferry_stream **out);
    void (*stream_destroy)(ferry_stream *stream);

    /* Enqueues n copies in direction dir on the stream; returns without
     * waiting.  Batched where the driver allows (cuMemcpyBatchAsync). */
    int (*copy_async)(ferry_stream *stream, enum ferry_copy_dir dir,
                      const struct ferry_copy *copies, size_t n);
    /* 0 when everything enqueued so far has finished, FERRY_EBUSY if not yet,
     * a negative error if a copy failed.  A failed copy (bad address, device
     * fault) puts the stream in a sticky error state: query, sync and later
     * copy_async calls all return FERRY_EIO with the detail message; destroy
     * the stream and create a new one.  (CUDA's own errors are sticky; ACL
     * reports a failed copy once and runs the next ones, continue-on-failure:
     * the npu backend keeps the failure itself so callers see one model.) */
    int (*stream_query)(ferry_stream *stream);
    /* Waits for everything enqueued so far. 0 or a negative error.  A
     * backend whose device can hang bounds the wait (npu:
     * FERRY_NPU_SYNC_TIMEOUT_MS): a stream that does not finish in time
     * answers FERRY_ETIMEDOUT from then on, as a sticky error, and is
     * aborted (its copies stopped or dropped) or, where the driver cannot,
     * abandoned (see stream_abandoned); destroy it and take another. */
    int (*stream_sync)(ferry_stream *stream);
    /* Optional (NULL: never).  1 if the stream timed out and could not be
     * aborted: copies enqueued on it may still run, so the memory they touch
     * (a staging chunk, a device buffer) must be neither reused nor freed.
     * stream_destroy leaves such a stream to the process's end. */
    int (*stream_abandoned)(ferry_stream *stream);
    /* Optional (NULL: not available).  Enqueues a store of value into the
     * 32-bit word *flag (memory from this kind's host_alloc) once everything
     * enqueued before it on the stream has finished, without holding up what
     * comes after: the end of one job on a stream many jobs share, seen by
     * reading the word.  A stream in a sticky error stores nothing (query it).
     * FERRY_ENOTSUP where the device cannot (CUDA without stream memory
     * operations).  0 or FERRY_E*. */
    int (*stream_mark)(ferry_stream *stream, volatile uint32_t *flag, uint32_t value);
    /* Optional (NULL: not available).  Enqueues fn(arg) on one of ferry's
     * own streams: it runs on a driver thread once everything enqueued
     * before it has finished, and never if any of that failed (CUDA's
     * cuLaunchHostFunc rule: query or sync the stream for the error);
     * stream_sync returns only after fn has returned.  fn must not call the
     * device API nor block.  FERRY_ENOTSUP where the driver cannot; 0 or
     * FERRY_E*. */
    int (*stream_then)(ferry_stream *stream, void (*fn)(void *), void *arg);

    /* Optional (NULL: this kind cannot order ferry's work with a caller's
     * stream).  `stream` is the caller's own native stream of device dev (a
     * CUstream / cudaStream_t, 0 for the legacy default stream; for sim a
     * ferry_stream of sim).  Used by ferry_batch_submit_on_stream.
     *
     * stream_host_func: enqueues fn(arg), to run on a driver thread once
     * everything enqueued before it on the stream has finished.  fn must not
     * call the device API (it only hands work to a ferry thread).
     *
     * stream_wait_flag: enqueues a wait: work enqueued after it on the stream
     * starts only once the 32-bit word *flag is >= value.  flag lies in
     * memory from this kind's host_alloc; ferry's threads write it (then wake
     * futex waiters on it).  FERRY_ENOTSUP where the device cannot (CUDA
     * without stream memory operations): the caller then blocks a host
     * function on the flag instead.  0 or FERRY_E*. */
    int (*stream_host_func)(int dev, void *stream, void (*fn)(void *), void *arg);
    int (*stream_wait_flag)(int dev, void *stream, volatile uint32_t *flag, uint32_t value);
    /* Optional: enqueues n copies in direction dir on the caller's own
     * stream of device dev (as above), in its order, and returns.  For
     * stream-ordered requests to the engine's own segment: they need no
     * transfer and no ferry thread, so nothing waits for the stream.  0 or
     * FERRY_E*. */
    int (*stream_copy)(int dev, void *stream, enum ferry_copy_dir dir, const struct ferry_copy *copies, size_t n);
    /* Optional: enqueues on the caller's own stream (as above) a store of
     * value into *flag (memory from this kind's host_alloc), which the
     * device skips once a copy before it failed: a host function after it
     * reads whether the stream's copies ran.  0 or FERRY_E*. */
    int (*stream_write_flag)(int dev, void *stream, volatile uint32_t *flag, uint32_t value);
    /* Optional: waits until everything enqueued so far on the caller's own
     * stream (as above) has run (cuStreamSynchronize).  For stream
     * ordering's error paths: a stream that refused ferry's host function
     * still runs the copies enqueued before it, which touch registered
     * memory.  0 or FERRY_E* (the stream's error). */
    int (*stream_synchronize)(int dev, void *stream);

    /* Optional (NULL: this kind's memory cannot be shared between processes;
     * peers then reach it only through its owner, staged over tcp/rdma).
     * Sharing device memory with another process of this host (CUDA IPC),
     * for the shm transport's direct path.
     *
     * ipc_export: writes a handle for [ptr, ptr+len) into handle; on entry
     * *handle_len is the room (FERRY_IPC_HANDLE_MAX is always enough), on
     * return the bytes written.  The handle names the whole allocation that
     * holds the range plus ptr's offset in it, and stays valid while the
     * allocation lives.  Registration time, never the hot path.  0,
     * FERRY_EINVAL (not memory of this kind, or too little room),
     * FERRY_ENOTSUP (this allocation cannot be shared), FERRY_EIO.
     *
     * ipc_open: maps a handle exported by another process of this host for
     * device dev of this process.  *ptr then stands for the exporter's ptr
     * and is device memory of dev for copy_async (D2D with dev's memory,
     * H2D / D2H with host memory).  Opening one handle twice may give the
     * same pointer; close every open once.  *room: the bytes from *ptr to
     * the end of the opened allocation (SIZE_MAX if the driver cannot say),
     * what the caller may touch whatever the exporter's registry claims.
     * 0, FERRY_EINVAL (malformed or stale handle, or an offset past the
     * allocation), FERRY_ENOTSUP (exported by this very process: use the
     * pointer itself), FERRY_EIO, FERRY_ENOMEM.
     *
     * ipc_close: unmaps a pointer ipc_open returned for dev. */
    int (*ipc_export)(const void *ptr, size_t len, void *handle, size_t *handle_len);
    int (*ipc_open)(int dev, const void *handle, size_t handle_len, void **ptr, size_t *room);
    void (*ipc_close)(int dev, void *ptr);

    /* Optional (NULL: locate() decides).  Whether [ptr, ptr+len) may be
     * registered as memory of device dev, a location the caller named: 0 if
     * it is, or if the driver cannot tell (ACL without
     * aclrtPointerGetAttributes, torch_npu's VMM allocations: the name is
     * trusted); FERRY_EINVAL saying where it is when it is known to be host
     * memory or another device's.  May open dev's context, no other.  Use
     * ferry_device_check_location(). */
    int (*check_location)(const void *ptr, size_t len, int dev);
    /* Optional (NULL: 1).  The alignment this kind's async copies want for
     * host and device addresses (64 on NPUs, as CANN documents); staging
     * places pieces in its chunks at multiples of it. */
    size_t (*copy_alignment)(void);
    /* Optional (NULL: 0, never).  Staging gathers blocks smaller than this
     * on the device (D2D into a device buffer, one D2H per chunk) by default:
     * for kinds with no gather kernel and a high per-copy cost (NPU).
     * FERRY_STAGING_AGGREGATE overrides it per process. */
    size_t (*aggregate_below)(void);

    /* Optional: what an RDMA NIC needs to know about this kind's memory
     * (GPUDirect).  Registration time, never the hot path.
     *
     * dmabuf_export (NULL: no NIC reaches this memory directly; it is
     * staged): a dma-buf fd covering [ptr, ptr+len) widened to whole pages,
     * for ibv_reg_dmabuf_mr; *offset receives ptr's offset in it; the caller
     * closes the fd.  0, FERRY_EINVAL (not memory of this kind), FERRY_ENOTSUP
     * (the driver cannot export: too old), FERRY_EIO.  A kind with this op
     * may still be reachable through peer memory (ibv_reg_mr) when it fails.
     *
     * pci_bus_id (NULL: unknown): device dev's PCI address, lower case
     * ("0000:3b:00.0"), into id (cap bytes), so the NIC nearest to it (PCIe
     * path, NUMA node from sysfs) is preferred.  0 or FERRY_E*. */
    int (*dmabuf_export)(const void *ptr, size_t len, int *fd, uint64_t *offset);
    int (*pci_bus_id)(int dev, char *id, size_t cap);
};

/* Room for any backend's IPC handle. */
#define FERRY_IPC_HANDLE_MAX 128

/* Returns the ops table for a kind ("cpu", "cuda", "npu", "sim"), or NULL if
 * ferry has no backend of that name.  Does not load the driver: call
 * ops->init(). */
const struct ferry_device_ops *ferry_device_find(const char *kind);

/* Calls every backend's process_exiting (ferry_process_exiting). */
void ferry_device_process_exiting(void);

/* The registry, in order: *count tables (never NULL).  Read-only. */
const struct ferry_device_ops *const *ferry_device_list(size_t *count);

/* Tries every backend's locate(); returns the ops owning ptr (and *dev) or NULL
 * for host memory.  Only backends already initialised are asked. */
const struct ferry_device_ops *ferry_device_locate(const void *ptr, size_t len, int *dev);

/* ferry_device_locate, after initialising every backend whose driver library
 * this process has loaded already (an application's framework allocated device
 * memory before ferry used that kind): so memory registered without a
 * location is found to be device memory.  Never loads a library itself. */
const struct ferry_device_ops *ferry_device_detect(const void *ptr, size_t len, int *dev);

/* Checks a location the caller named for [ptr, ptr+len) with ops'
 * check_location, or, without one, with locate() (the memory must be dev's).
 * 0, or FERRY_EINVAL with a message saying where the memory is. */
int ferry_device_check_location(const struct ferry_device_ops *ops, const void *ptr, size_t len, int dev);

/* Parses a location string against the registry's location kinds:
 * "cpu", "cpu:N" (N a NUMA node), "cuda" (= cuda:0), "cuda:N", "npu:N",
 * "sim:N"; N is decimal, 0..65535.  Stores the kind ("cpu", "cuda", "npu",
 * "sim") in kind and N in *index (-1 for a bare "cpu": any node).  kind and
 * index may be NULL to only validate.  Returns 0, or FERRY_EINVAL with a
 * detail message quoting the string.  Does not check that the device exists. */
int ferry_location_parse(const char *loc, char kind[16], int *index);

/* As ferry_location_parse, storing the owning table (host memory too) in *ops. */
int ferry_location_resolve(const char *loc, const struct ferry_device_ops **ops, int *index);

/* The backend of a location string ("cuda:1" -> cuda ops, *index 1), or NULL
 * for host locations and unknown kinds. */
const struct ferry_device_ops *ferry_device_of_location(const char *loc, int *index);

/* Streams of ferry's own threads come from a cache per (kind, device)
 * (stream_cache.c), because creating one can wait for every stream of the
 * device (CUDA, measured by bench/cuda_sync_probe.c): never while a caller's
 * stream waits for a ferry transfer (ferry_batch_submit_on_stream).
 *
 * ferry_device_prepare: makes a few streams of device dev ahead of need
 * (once per kind and device; loading CUDA's gather kernels with them).
 * Called when memory of dev is registered and before a stream-ordered
 * submit on dev.  0 or FERRY_E*.
 * ferry_device_stream_take: an idle stream of dev, or a new one when none
 * is idle.  0 or FERRY_E*.
 * ferry_device_stream_give: hands back a healthy stream that has nothing
 * in flight (a stream in a sticky error is destroyed instead). */
int ferry_device_prepare(const struct ferry_device_ops *ops, int dev);
int ferry_device_stream_take(const struct ferry_device_ops *ops, int dev, ferry_stream **out);
void ferry_device_stream_give(const struct ferry_device_ops *ops, int dev, ferry_stream *stream);

/* Copies n blocks between host memory and device dev and waits.  Runs on a
 * stream kept per calling thread (taken from the stream cache on first use,
 * given back when the thread exits), so a transport thread serving device
 * memory pays one batched copy and one wait per call, not a stream
 * creation.  Not the staging fast path (src/staging).  0 or FERRY_E*. */
int ferry_device_copy_sync(const struct ferry_device_ops *ops, int dev, enum ferry_copy_dir dir,
                           const struct ferry_copy *copies, size_t n);
/* The same in two steps, so a thread can copy while it does other work (a
 * transport receiving the next bytes): _start enqueues on the thread's
 * stream and returns; _wait waits for every copy the thread started (0 at
 * once when none is in flight).  A thread must _wait before the memory of a
 * started copy may go (before it ends its access to it).  A failed _start
 * has drained what was in flight and returns the error; 0 or FERRY_E*. */
int ferry_device_copy_start(const struct ferry_device_ops *ops, int dev, enum ferry_copy_dir dir,
                            const struct ferry_copy *copies, size_t n);
int ferry_device_copy_wait(void);
/* 1 if the thread's last failed _start or _wait left its copies on a
 * stream that timed out and could not be aborted (stream_abandoned): they
 * may still run, so the host memory they read or write (a bounce buffer)
 * must be neither reused nor freed.  Clears the answer; 0 otherwise. */
int ferry_device_copy_lost(void);
/* Enqueues fn(arg) after the copies the thread started (stream_then on its
 * stream): fn runs on a driver thread once they have completed, never if one
 * of them failed (_wait then returns the error); _wait returns only after fn
 * has returned, so a thread that _waits knows fn will not run later.
 * FERRY_ENOTSUP where the device cannot, FERRY_EINVAL when no copy is in
 * flight; 0 or FERRY_E*. */
int ferry_device_copy_then(void (*fn)(void *), void *arg);
/* Enqueues a store of value into *flag (this device kind's host_alloc
 * memory) after the copies the thread started (stream_mark on its stream):
 * the word says when they are done without a driver call.  As
 * ferry_device_copy_then's codes. */
int ferry_device_copy_mark(volatile uint32_t *flag, uint32_t value);

/* A 32-bit completion flag in host memory (stream_wait_flag): set stores
 * value and wakes every thread blocked in wait; wait returns once *flag >=
 * value.  Futex-based, no polling. */
void ferry_flag_set(volatile uint32_t *flag, uint32_t value);
void ferry_flag_wait(volatile uint32_t *flag, uint32_t value);

/* The backends' tables, for device.c's registry; use ferry_device_find(). */
extern const struct ferry_device_ops ferry_device_cpu;   /* cpu.c: host memory */
extern const struct ferry_device_ops ferry_device_cuda;
extern const struct ferry_device_ops ferry_device_npu;   /* ascend.c, ascend_copy.c */
extern const struct ferry_device_ops ferry_device_sim;

#endif /* FERRY_DEVICE_H */

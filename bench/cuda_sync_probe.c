/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cuda_sync_probe.c — which CUDA driver calls wait for other streams.
 *
 * A stream-ordered transfer (ferry_batch_submit_on_stream) leaves the
 * caller's stream blocked in cuStreamWaitValue32 until ferry has moved the
 * bytes.  Any call on ferry's path that waits for every stream of the
 * context (the programming guide's "implicit synchronization") therefore
 * deadlocks when the transfer's target is in the same process.  This probe
 * blocks a stream on a flag no one sets, runs one call at a time on another
 * thread, and reports whether the call returned (or its own stream's work
 * finished) before a watchdog set the flag WATCH_MS later.
 *
 *   cc -O2 -I/usr/local/cuda/include bench/cuda_sync_probe.c -o cuda_sync_probe \
 *      -L/usr/local/cuda/lib64/stubs -lcuda -lpthread
 *   ./cuda_sync_probe            (prints one line per call: "waits" or "free")
 */
#include <cuda.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int WATCH_MS = 1500;

static CUcontext ctx;
static CUstream blocked;   /* waits on *flag */
static CUstream other;     /* the probe's own work */
static volatile uint32_t *flag;
static uint32_t target;

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void check(CUresult r, const char *what)
{
    if (r != CUDA_SUCCESS) {
        const char *s = NULL;
        cuGetErrorString(r, &s);
        fprintf(stderr, "%s: %s\n", what, s ? s : "?");
        exit(1);
    }
}

static void *watchdog(void *arg)
{
    (void)arg;
    usleep(WATCH_MS * 1000);
    __atomic_store_n(flag, target, __ATOMIC_RELEASE);
    return NULL;
}

/* The probes: each runs with `blocked` waiting on the flag. */
static CUdeviceptr dbuf;
static void *hbuf;

static void p_host_alloc(void) { void *p; check(cuMemHostAlloc(&p, 4 << 20, CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP), "alloc"); hbuf = p; }
static void p_host_free(void) { check(cuMemFreeHost(hbuf), "freehost"); }
static void p_mem_alloc(void) { check(cuMemAlloc(&dbuf, 4 << 20), "memalloc"); }
static void p_mem_free(void) { check(cuMemFree(dbuf), "memfree"); }
static void *reg;
static void p_host_register(void) { reg = aligned_alloc(4096, 4 << 20); check(cuMemHostRegister(reg, 4 << 20, CU_MEMHOSTREGISTER_PORTABLE), "hostregister"); }
static void p_host_unregister(void) { check(cuMemHostUnregister(reg), "hostunregister"); free(reg); }
static void p_stream_create(void) { CUstream s; check(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), "streamcreate"); }
static void p_event_create(void) { CUevent e; check(cuEventCreate(&e, CU_EVENT_DISABLE_TIMING), "eventcreate"); }
static CUdeviceptr d2;
static void *h2;
static void p_copy_other(void) { check(cuMemcpyHtoDAsync(d2, h2, 1 << 20, other), "h2d"); check(cuStreamSynchronize(other), "sync other"); }
static void p_copy_d2h_other(void) { check(cuMemcpyDtoHAsync(h2, d2, 1 << 20, other), "d2h"); check(cuStreamSynchronize(other), "sync other"); }
static void p_copy_sync(void) { check(cuMemcpyHtoD(d2, h2, 1 << 20), "sync h2d (legacy stream)"); }
static void p_memset_other(void) { check(cuMemsetD8Async(d2, 1, 1 << 20, other), "memset"); check(cuStreamSynchronize(other), "sync other"); }
static void p_alloc_async(void) { CUdeviceptr p; check(cuMemAllocAsync(&p, 1 << 20, other), "allocasync"); check(cuMemFreeAsync(p, other), "freeasync"); check(cuStreamSynchronize(other), "sync other"); }

struct probe {
    const char *name;
    void (*fn)(void);
};

static const struct probe probes[] = {
    {"cuMemHostAlloc 4 MiB", p_host_alloc},
    {"cuMemFreeHost", p_host_free},
    {"cuMemAlloc 4 MiB", p_mem_alloc},
    {"cuMemFree", p_mem_free},
    {"cuMemHostRegister 4 MiB", p_host_register},
    {"cuMemHostUnregister", p_host_unregister},
    {"cuStreamCreate non-blocking", p_stream_create},
    {"cuEventCreate", p_event_create},
    {"H2D async on another non-blocking stream + its sync", p_copy_other},
    {"D2H async on another non-blocking stream + its sync", p_copy_d2h_other},
    {"cuMemsetD8Async on another stream + its sync", p_memset_other},
    {"cuMemAllocAsync/FreeAsync on another stream + its sync", p_alloc_async},
    {"cuMemcpyHtoD (synchronous)", p_copy_sync},
};

/* Hardware queues: with one stream blocked on the flag (or in a host
 * function), which of `k` other streams of each priority still run work? */
static void sleepy(void *arg)
{
    (void)arg;
    usleep(WATCH_MS * 1000);
}

static void fanout_once(CUdeviceptr fdev, int k, int lowest, int highest, int by_host_func)
{
    enum { MAXK = 256 };
    CUstream s[2][MAXK];
    CUevent ev[2][MAXK];
    int prio[2] = {lowest, highest};
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < k; i++) {
            check(cuStreamCreateWithPriority(&s[p][i], CU_STREAM_NON_BLOCKING, prio[p]), "stream prio");
            check(cuEventCreate(&ev[p][i], CU_EVENT_DISABLE_TIMING), "event");
        }
    target++;
    if (by_host_func)
        check(cuLaunchHostFunc(blocked, sleepy, NULL), "host func");
    else
        check(cuStreamWaitValue32(blocked, fdev, target, CU_STREAM_WAIT_VALUE_GEQ), "wait value");
    pthread_t w;
    pthread_create(&w, NULL, watchdog, NULL);
    usleep(50000);
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < k; i++) {
            check(cuMemsetD8Async(d2, (unsigned char)i, 4096, s[p][i]), "memset");
            check(cuEventRecord(ev[p][i], s[p][i]), "record");
        }
    usleep(WATCH_MS * 1000 / 3);
    int stuck[2] = {0, 0};
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < k; i++)
            stuck[p] += cuEventQuery(ev[p][i]) == CUDA_ERROR_NOT_READY;
    pthread_join(w, NULL);
    check(cuCtxSynchronize(), "ctx sync");
    printf("blocked by %s: of %d streams at priority %d, %d stuck behind it; of %d at priority %d, %d stuck\n",
           by_host_func ? "a host function" : "cuStreamWaitValue32", k, lowest, stuck[0], k, highest, stuck[1]);
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < k; i++) {
            cuEventDestroy(ev[p][i]);
            cuStreamDestroy(s[p][i]);
        }
}

static void fanout(CUdeviceptr fdev, int k)
{
    int lo = 0, hi = 0;
    check(cuCtxGetStreamPriorityRange(&lo, &hi), "priority range");
    const char *conns = getenv("CUDA_DEVICE_MAX_CONNECTIONS");
    printf("CUDA_DEVICE_MAX_CONNECTIONS=%s; stream priorities %d (lowest) .. %d (highest); the blocked stream has the lowest\n",
           conns ? conns : "(unset)", lo, hi);
    fanout_once(fdev, k, lo, hi, 0);
    fanout_once(fdev, k, lo, hi, 1);
}

/* Streams created one after another while a stream is blocked: does any
 * creation wait for it (a driver pool growing)? */
static void streams_while_blocked(CUdeviceptr fdev)
{
    WATCH_MS = 4000;
    target++;
    check(cuStreamWaitValue32(blocked, fdev, target, CU_STREAM_WAIT_VALUE_GEQ), "wait value");
    pthread_t w;
    pthread_create(&w, NULL, watchdog, NULL);
    usleep(50000);
    double t0 = now_ms(), worst = 0;
    int n = 0, worst_at = -1;
    while (n < 2000 && now_ms() - t0 < 3000) {
        CUstream s;
        double a = now_ms();
        check(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), "stream create");
        double d = now_ms() - a;
        if (d > worst) {
            worst = d;
            worst_at = n;
        }
        n++;
    }
    pthread_join(w, NULL);
    check(cuStreamSynchronize(blocked), "sync blocked");
    printf("%d streams created while a stream was blocked: the slowest (#%d) took %.1f ms%s\n", n, worst_at, worst,
           worst > 500 ? " -- WAITS for the blocked stream" : "");
    WATCH_MS = 1500;
}

/* A module loaded and its kernel first launched while a stream is blocked. */
static const char *probe_ptx =
    ".version 7.0\n.target sm_50\n.address_size 64\n"
    ".visible .entry probe_a(.param .u64 p) { ret; }\n"
    ".visible .entry probe_b(.param .u64 p) { ret; }\n";

static void module_while_blocked(CUdeviceptr fdev)
{
    WATCH_MS = 3000;
    target++;
    check(cuStreamWaitValue32(blocked, fdev, target, CU_STREAM_WAIT_VALUE_GEQ), "wait value");
    pthread_t w;
    pthread_create(&w, NULL, watchdog, NULL);
    usleep(50000);
    CUmodule m;
    CUfunction fa, fb;
    double t0 = now_ms();
    check(cuModuleLoadData(&m, probe_ptx), "module load");
    double t1 = now_ms();
    check(cuModuleGetFunction(&fa, m, "probe_a"), "get a");
    double t2 = now_ms();
    void *args[] = {&d2};
    check(cuLaunchKernel(fa, 1, 1, 1, 32, 1, 1, 0, other, args, NULL), "launch a");
    check(cuStreamSynchronize(other), "sync a");
    double t3 = now_ms();
    check(cuModuleGetFunction(&fb, m, "probe_b"), "get b");
    check(cuLaunchKernel(fb, 1, 1, 1, 32, 1, 1, 0, other, args, NULL), "launch b");
    check(cuStreamSynchronize(other), "sync b");
    double t4 = now_ms();
    pthread_join(w, NULL);
    check(cuStreamSynchronize(blocked), "sync blocked");
    CUmoduleLoadingMode mode = 0;
    cuModuleGetLoadingMode(&mode);
    printf("while blocked (loading mode %s): cuModuleLoadData %.1f ms, cuModuleGetFunction %.1f ms, first launch+sync "
           "%.1f ms, second kernel get+launch+sync %.1f ms\n",
           mode == CU_MODULE_LAZY_LOADING ? "lazy" : "eager", t1 - t0, t2 - t1, t3 - t2, t4 - t3);
    WATCH_MS = 1500;
}

/* What the CUDA runtime does (torch's kernels): a library loaded before, a
 * kernel of it launched for the first time while a stream is blocked, and
 * meanwhile another thread launching a kernel that ran before. */
static CUkernel lib_seen;
static volatile int b_stop;
static double b_worst;
static void *launch_seen_loop(void *arg)
{
    (void)arg;
    CUstream s;
    check(cuCtxSetCurrent(ctx), "ctx b");
    check(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), "stream b");
    void *args[] = {&d2};
    while (!b_stop) {
        double a = now_ms();
        check(cuLaunchKernel((CUfunction)lib_seen, 1, 1, 1, 32, 1, 1, 0, s, args, NULL), "launch seen");
        check(cuStreamSynchronize(s), "sync b");
        double d = now_ms() - a;
        if (d > b_worst)
            b_worst = d;
        usleep(1000);
    }
    return NULL;
}

static void library_first_launch_while_blocked(CUdeviceptr fdev)
{
    CUlibrary lib;
    CUkernel ka, kb;
    check(cuLibraryLoadData(&lib, probe_ptx, NULL, NULL, 0, NULL, NULL, 0), "library load");
    check(cuLibraryGetKernel(&ka, lib, "probe_a"), "kernel a");
    check(cuLibraryGetKernel(&kb, lib, "probe_b"), "kernel b");
    void *args[] = {&d2};
    check(cuLaunchKernel((CUfunction)ka, 1, 1, 1, 32, 1, 1, 0, other, args, NULL), "launch a");
    check(cuStreamSynchronize(other), "sync a");
    lib_seen = ka;
    WATCH_MS = 3000;
    target++;
    check(cuStreamWaitValue32(blocked, fdev, target, CU_STREAM_WAIT_VALUE_GEQ), "wait value");
    pthread_t w, bt;
    pthread_create(&w, NULL, watchdog, NULL);
    b_stop = 0;
    b_worst = 0;
    pthread_create(&bt, NULL, launch_seen_loop, NULL);
    usleep(100000);
    double t0 = now_ms();
    check(cuLaunchKernel((CUfunction)kb, 1, 1, 1, 32, 1, 1, 0, other, args, NULL), "first launch b");
    double t1 = now_ms();
    check(cuStreamSynchronize(other), "sync b");
    double t2 = now_ms();
    b_stop = 1;
    pthread_join(bt, NULL);
    pthread_join(w, NULL);
    check(cuStreamSynchronize(blocked), "sync blocked");
    printf("while blocked, a library kernel's first launch took %.1f ms (+%.1f ms to run)%s; another thread's "
           "launches of a kernel that ran before: the slowest %.1f ms%s\n",
           t1 - t0, t2 - t1, t1 - t0 > 1000 ? " -- WAITS" : "", b_worst, b_worst > 1000 ? " -- WAIT TOO" : "");
    WATCH_MS = 1500;
}

int main(void)
{
    CUdevice dev;
    check(cuInit(0), "init");
    check(cuDeviceGet(&dev, 0), "device");
    check(cuDevicePrimaryCtxRetain(&ctx, dev), "ctx");
    check(cuCtxSetCurrent(ctx), "set ctx");
    check(cuStreamCreate(&blocked, CU_STREAM_NON_BLOCKING), "stream");
    check(cuStreamCreate(&other, CU_STREAM_NON_BLOCKING), "stream");
    void *f;
    check(cuMemHostAlloc(&f, 4096, CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP), "flag");
    flag = f;
    *flag = 0;
    CUdeviceptr fdev;
    check(cuMemHostGetDevicePointer(&fdev, f, 0), "flag devptr");
    check(cuMemAlloc(&d2, 1 << 20), "d2");
    check(cuMemHostAlloc(&h2, 1 << 20, CU_MEMHOSTALLOC_PORTABLE), "h2");
    int fails = 0;
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        target = (uint32_t)i + 1;
        check(cuStreamWaitValue32(blocked, fdev, target, CU_STREAM_WAIT_VALUE_GEQ), "wait value");
        pthread_t w;
        pthread_create(&w, NULL, watchdog, NULL);
        usleep(50000); /* the stream is waiting */
        double t0 = now_ms();
        probes[i].fn();
        double dt = now_ms() - t0;
        pthread_join(w, NULL);
        check(cuStreamSynchronize(blocked), "sync blocked");
        int waits = dt > WATCH_MS / 2;
        printf("%-58s %8.1f ms  %s\n", probes[i].name, dt, waits ? "WAITS for the blocked stream" : "free");
        fails += waits;
    }
    printf("%d of %zu calls wait for another stream\n", fails, sizeof probes / sizeof probes[0]);
    fanout(fdev, 100);
    streams_while_blocked(fdev);
    module_while_blocked(fdev);
    library_first_launch_while_blocked(fdev);
    return 0;
}

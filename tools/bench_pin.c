/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench_pin.c — ferry-bench's --pinned: host buffers in memory that CUDA
 * pins, so a host-to-host run reads and writes the kind of memory a staged
 * run's chunks and bounces are (issue 16: is it the memory that makes a
 * staged frame slower on the socket?).  "alloc": cuMemHostAlloc (PORTABLE |
 * DEVICEMAP, what the cuda device's host_alloc makes by default); "thp":
 * 2 MiB-aligned anonymous memory with huge pages asked for, pinned with
 * cuMemHostRegister.  libcuda.so.1 is loaded with dlopen on first use; the
 * main thread allocates and frees before and after the workers run, so
 * nothing here is shared.
 */
#include "bench_pin.h"

#include <dlfcn.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "bench_options.h"

#define THP_ALIGN ((size_t)2 << 20)

static struct {
    void *lib;
    int (*init)(unsigned);
    int (*device_get)(int *, int);
    int (*ctx_retain)(void **, int);
    int (*ctx_set)(void *);
    int (*host_alloc)(void **, size_t, unsigned);
    int (*free_host)(void *);
    int (*host_register)(void *, size_t, unsigned);
    int (*host_unregister)(void *);
} cu;

static void *sym(const char *name)
{
    void *f = dlsym(cu.lib, name);
    if (!f)
        die("--pinned: libcuda.so.1 has no %s", name);
    return f;
}

/* Loads the driver and makes cuda:0's primary context current (pinned
 * memory is PORTABLE: every context sees it). */
static void cuda_open(void)
{
    if (cu.lib)
        return;
    cu.lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!cu.lib)
        die("--pinned needs libcuda.so.1: %s", dlerror());
    *(void **)&cu.init = sym("cuInit");
    *(void **)&cu.device_get = sym("cuDeviceGet");
    *(void **)&cu.ctx_retain = sym("cuDevicePrimaryCtxRetain");
    *(void **)&cu.ctx_set = sym("cuCtxSetCurrent");
    *(void **)&cu.host_alloc = sym("cuMemHostAlloc");
    *(void **)&cu.free_host = sym("cuMemFreeHost");
    *(void **)&cu.host_register = sym("cuMemHostRegister_v2");
    *(void **)&cu.host_unregister = sym("cuMemHostUnregister");
    int dev = 0, r = cu.init(0);
    void *ctx = NULL;
    if (!r)
        r = cu.device_get(&dev, 0);
    if (!r)
        r = cu.ctx_retain(&ctx, dev);
    if (!r)
        r = cu.ctx_set(ctx);
    if (r)
        die("--pinned: CUDA error %d making cuda:0's context current", r);
}

void *bench_pin_alloc(const char *how, size_t len)
{
    cuda_open();
    void *p = NULL;
    int r;
    if (strcmp(how, "alloc") == 0) {
        r = cu.host_alloc(&p, len, 1 | 2); /* PORTABLE | DEVICEMAP */
    } else {
        size_t want = (len + THP_ALIGN - 1) / THP_ALIGN * THP_ALIGN;
        char *raw = mmap(NULL, want + THP_ALIGN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED)
            die("--pinned=thp: mmap of %zu bytes failed", want + THP_ALIGN);
        p = (void *)(((uintptr_t)raw + THP_ALIGN - 1) & ~(uintptr_t)(THP_ALIGN - 1));
        (void)madvise(p, want, MADV_HUGEPAGE);
        memset(p, 0, want);
        r = cu.host_register(p, want, 1 | 2); /* PORTABLE | DEVICEMAP */
    }
    if (r)
        die("--pinned=%s: CUDA error %d pinning %zu bytes", how, r, len);
    return p;
}

void bench_pin_free(const char *how, void *p)
{
    if (strcmp(how, "alloc") == 0)
        (void)cu.free_host(p);
    else
        (void)cu.host_unregister(p); /* the mapping goes with the process */
}

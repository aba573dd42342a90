/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cuda_gather.c — how the cuda backend enqueues a batch of copies: the
 * gather/scatter kernel (cuda_kernels.cu, from the PTX in
 * cuda_kernels_ptx.h; one launch moves up to 128 copies, or 1,024 with
 * FERRY_CUDA_KERNEL_COPIES=1024, the SMs reading and writing mapped pinned
 * host memory, or a peer's memory over NVLink; H2D on sm_90 through bulk
 * copies with FERRY_CUDA_KERNEL_BULK=1) where every address is known to be reachable, else the copy
 * engine (cuMemcpyBatchAsync, or one cuMemcpy*Async per copy).  Owns the
 * address registries the kernel trusts and each device's loaded kernel.
 * Called with the stream's device's context current (cuda.c); no threads.
 */
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "device/cuda_internal.h"
#include "device/cuda_kernels_ptx.h"
#include "err.h"
#include "log.h"

#define CUDA_BATCH_CHUNK 256     /* copies per cuMemcpyBatchAsync call (stack arrays) */

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

void cuda_host_range_add(void *p, size_t len)
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

int cuda_host_range_has(const volatile void *p, size_t len)
{
    size_t hint = 0;
    pthread_rwlock_rdlock(&ranges_lock);
    int in = range_find(host_ranges, host_nranges, (uintptr_t)p, len, -1, &hint);
    pthread_rwlock_unlock(&ranges_lock);
    return in;
}

void cuda_host_range_remove(void *p)
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
    .batch_enabled = &cuda_batch_enabled,
    .batch_max = CUDA_BATCH_CHUNK,
    .batch = copy_batch,
    .single = copy_single,
    .error_text = copy_error_text,
};

/* ---------------------------------------------------------------- gather kernel */

/* One launch of ferry_copy_gather (cuda_kernels.cu) takes up to
 * GATHER_MAX_SMALL copies inline in its parameter, one of
 * ferry_copy_gather_1k up to GATHER_MAX (28,696 bytes of parameters: CUDA
 * 12.1+, FERRY_CUDA_KERNEL_COPIES=1024): a staged batch of 16 chunks of 64
 * blocks is one grid over every SM from its start, not eight launches that
 * trickle in.  The parameter structs are mirrored there: keep both in step.
 * Each CTA of cuda_kernel_shape.threads threads copies tiles of
 * 2^cuda_kernel_shape.tile_shift bytes; a grid of at most
 * cuda_kernel_shape.ctas_per_sm CTAs per SM strides over the tiles
 * (cuda_shape.h: FERRY_CUDA_KERNEL_*); H2D launches may have threads, tile
 * and a grid cap of their own (FERRY_CUDA_KERNEL_H2D_*: a small scatter
 * launch, up to 1 MiB, takes 32 CTAs by default). */
#define GATHER_MAX_SMALL 128
#define GATHER_MAX 1024
/* Copies averaging more than 1 MiB stay on the copy engine: its per-copy
 * cost no longer shows there, it is as fast or faster (D2H), and it leaves
 * the SMs to the application.  H2D has its own bound, cuda_kernel_shape.h2d_max: the
 * kernel reads host memory over PCIe there, which costs it round trips
 * that its writes (D2H) do not. */
#define GATHER_MEAN_MAX CUDA_SHAPE_MEAN_MAX

struct gather_copy {
    uint64_t dst, src, len;
};

struct gather_head {
    uint32_t n;                          /* copies, 1..the kernel's max, each len > 0 */
    uint32_t tile_shift;
    uint32_t ntiles;                     /* tile_start[n] */
    uint32_t loads;                      /* loads in flight per thread: 4 or 8 */
};

/* Copy i owns tiles [tile_start[i], tile_start[i+1]). */
struct gather_args_small {
    struct gather_head h;
    uint32_t tile_start[GATHER_MAX_SMALL + 1];
    struct gather_copy copies[GATHER_MAX_SMALL];
};
struct gather_args_big {
    struct gather_head h;
    uint32_t tile_start[GATHER_MAX + 1];
    struct gather_copy copies[GATHER_MAX];
};
_Static_assert(sizeof(struct gather_args_small) == 3608, "mirrors cuda_kernels.cu");
_Static_assert(offsetof(struct gather_args_small, tile_start) == 16, "mirrors cuda_kernels.cu");
_Static_assert(offsetof(struct gather_args_small, copies) == 536, "mirrors cuda_kernels.cu");
_Static_assert(sizeof(struct gather_args_big) == 28696, "mirrors cuda_kernels.cu");
_Static_assert(offsetof(struct gather_args_big, tile_start) == 16, "mirrors cuda_kernels.cu");
_Static_assert(offsetof(struct gather_args_big, copies) == 4120, "mirrors cuda_kernels.cu");

/* One launch being filled: the parameters of the kernel it goes to. */
struct gather_args {
    CUfunction fn;
    int big;                             /* fn is ferry_copy_gather_1k (2: ferry_copy_bulk, 128 copies) */
    uint32_t max;                        /* copies fn takes */
    struct gather_head *h;
    uint32_t *tile_start;
    struct gather_copy *copies;
    void *params;
};

struct gather_dev {
    atomic_int state;                    /* 0 not loaded yet, 1 ready, -1 failed or switched off */
    atomic_int big_state;                /* 1 while fn_big is loaded and its launches work */
    atomic_int bulk_state;               /* 1 while fn_bulk is loaded and its launches work */
    CUfunction fn, fn_big, fn_bulk;
    unsigned int max_ctas;
};

static struct gather_dev gather_devs[CUDA_MAX_DEVICES];
static pthread_mutex_t gather_lock = PTHREAD_MUTEX_INITIALIZER;

/* Loads the PTX image and gets its entry name (dev's context current).
 * CUDA_SUCCESS, or the error with the JIT log in log. */
static CUresult module_load(const char *image, const char *name, CUfunction *fn, const char **what, char *log,
                            size_t log_len)
{
    int opts[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    void *vals[] = {log, (void *)(uintptr_t)log_len};
    CUmodule mod = NULL;
    *what = "cuModuleLoadDataEx";
    CUresult r = cuda_drv.cuModuleLoadDataEx(&mod, image, 2, opts, vals);
    if (r == CUDA_SUCCESS) {
        *what = "cuModuleGetFunction";
        r = cuda_drv.cuModuleGetFunction(fn, mod, name);
        if (r != CUDA_SUCCESS)
            (void)cuda_drv.cuModuleUnload(mod);
    }
    log[log_len - 1] = '\0';
    return r;
}

/* Loads the module into dev's primary context (current), and the 1,024-copy
 * one where FERRY_CUDA_KERNEL_COPIES asks for it and the driver takes it.
 * 1, or -1 after one warning. */
static int gather_load(int dev, struct gather_dev *g)
{
    char log[1024] = "";
    const char *what;
    CUresult r = module_load(ferry_cuda_kernels_ptx, "ferry_copy_gather", &g->fn, &what, log, sizeof log);
    if (r != CUDA_SUCCESS) {
        LOG_WARN("cuda:%d: gather kernel unavailable, D2H / H2D batches use the copy engine: "
                 "%s: %s (CUDA error %d)%s%.400s",
                 dev, what, cu_error_text(r), r, log[0] ? ": " : "", log);
        return -1;
    }
    if (cuda_kernel_shape.copies > GATHER_MAX_SMALL) {
        log[0] = '\0';
        r = module_load(ferry_cuda_kernels_1k_ptx, "ferry_copy_gather_1k", &g->fn_big, &what, log, sizeof log);
        if (r == CUDA_SUCCESS)
            atomic_store(&g->big_state, 1);
        else
            LOG_INFO("cuda:%d: the 1,024-copy gather kernel is unavailable (kernel parameters over 4 KiB need CUDA "
                     "12.1): %s: %s (CUDA error %d)%s%.300s; %d copies a launch",
                     dev, what, cu_error_text(r), r, log[0] ? ": " : "", log, GATHER_MAX_SMALL);
    }
    CUdevice d;
    int sms = 0, major = 0;
    int have_dev = cuda_drv.cuDeviceGet(&d, dev) == CUDA_SUCCESS;
    if (!have_dev || cuda_drv.cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, d) != CUDA_SUCCESS ||
        sms <= 0)
        sms = 16;
    if (cuda_kernel_shape.bulk && have_dev &&
        cuda_drv.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, d) == CUDA_SUCCESS &&
        major >= 9) {
        log[0] = '\0';
        r = module_load(ferry_cuda_kernels_bulk_ptx, "ferry_copy_bulk", &g->fn_bulk, &what, log, sizeof log);
        if (r == CUDA_SUCCESS)
            atomic_store(&g->bulk_state, 1);
        else
            LOG_WARN("cuda:%d: the bulk-copy scatter kernel is unavailable: %s: %s (CUDA error %d)%s%.300s; H2D "
                     "uses 16-byte loads", dev, what, cu_error_text(r), r, log[0] ? ": " : "", log);
    } else if (cuda_kernel_shape.bulk) {
        LOG_INFO("cuda:%d: FERRY_CUDA_KERNEL_BULK=1 needs sm_90 or later (this one is sm_%d0); H2D uses 16-byte "
                 "loads", dev, major);
    }
    g->max_ctas = (unsigned int)sms * cuda_kernel_shape.ctas_per_sm;
    LOG_DEBUG("cuda:%d: gather kernel loaded (%d SMs, %d copies a launch)", dev, sms,
              atomic_load(&g->big_state) == 1 ? GATHER_MAX : GATHER_MAX_SMALL);
    return 1;
}

/* dev's kernel, loaded on first use (dev's primary context current); NULL
 * when it is off or could not be loaded.  *big: the 1,024-copy kernel, or
 * NULL; *bulk: the bulk-copy (TMA) one for H2D, or NULL. */
static CUfunction gather_function(int dev, unsigned int *max_ctas, CUfunction *big, CUfunction *bulk)
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
    *big = atomic_load_explicit(&g->big_state, memory_order_relaxed) == 1 ? g->fn_big : NULL;
    *bulk = atomic_load_explicit(&g->bulk_state, memory_order_relaxed) == 1 ? g->fn_bulk : NULL;
    return g->fn;
}

/* Puts the copies with len > 0 from the front of copies[0..n) into a, at
 * most a->max; returns how many entries of copies it went through. */
static size_t gather_take(const struct ferry_copy *copies, size_t n, struct gather_args *a, size_t *bytes)
{
    size_t i;
    uint32_t k = 0;
    *bytes = 0;
    for (i = 0; i < n; i++) {
        if (copies[i].len == 0)
            continue;
        if (k == a->max)
            break;
        a->copies[k++] = (struct gather_copy){(uint64_t)(uintptr_t)copies[i].dst, (uint64_t)(uintptr_t)copies[i].src,
                                              (uint64_t)copies[i].len};
        *bytes += copies[i].len;
    }
    a->h->n = k;
    return i;
}

/* 1 if every copy of a has its host side (D2H dst, H2D src) in a host_alloc
 * range and its device sides (the others) in an allocation of dev or one
 * opened on dev through IPC that dev's SMs reach (context current). */
static int gather_reachable(int dev, enum ferry_copy_dir dir, const struct gather_args *a)
{
    size_t host_hint = 0, dev_hint = 0;
    unsigned int i = 0, learned = 0;
    const unsigned int n = a->h->n;
    const int dst_host = dir == FERRY_COPY_D2H, src_host = dir == FERRY_COPY_H2D;
    while (i < n) {
        uintptr_t miss = 0;
        size_t len = 0;
        pthread_rwlock_rdlock(&ranges_lock);
        for (; i < n; i++) {
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
 * the kernel is what failed, and dev stops using it (the 1,024-copy one:
 * that one) with one warning. */
static int gather_launch(struct copy_call *call, unsigned int max_ctas, struct gather_args *a,
                         const struct ferry_copy *copies, size_t k)
{
    const bool h2d = call->dir == FERRY_COPY_H2D;
    unsigned int shift = h2d && cuda_kernel_shape.h2d_tile_shift ? cuda_kernel_shape.h2d_tile_shift
                                                                  : cuda_kernel_shape.tile_shift;
    const unsigned int threads = h2d && cuda_kernel_shape.h2d_threads ? cuda_kernel_shape.h2d_threads
                                                                      : cuda_kernel_shape.threads;
    const uint32_t n = a->h->n;
    size_t bytes = 0;
    for (uint32_t i = 0; i < n; i++)
        bytes += (size_t)a->copies[i].len;
    if (call->dir == FERRY_COPY_D2D && cuda_kernel_shape.d2d_tile_shift && bytes >= CUDA_SHAPE_D2D_MEAN_MIN * n)
        shift = cuda_kernel_shape.d2d_tile_shift;
    max_ctas = cuda_shape_grid_cap(&cuda_kernel_shape, h2d, bytes, max_ctas);
    uint64_t tiles;
    for (;; shift++) {        /* tiles numbered in 32 bits, with room to spare */
        tiles = 0;
        for (uint32_t i = 0; i < n; i++) {
            a->tile_start[i] = (uint32_t)tiles;
            uint64_t len = a->copies[i].len;
            tiles += (len >> shift) + ((len & (((uint64_t)1 << shift) - 1)) != 0);
        }
        if (tiles <= UINT32_MAX / 2)
            break;
    }
    a->tile_start[n] = (uint32_t)tiles;
    a->h->ntiles = (uint32_t)tiles;
    a->h->tile_shift = shift;
    a->h->loads = cuda_kernel_shape.loads;
    unsigned int grid = tiles < max_ctas ? (unsigned int)tiles : max_ctas;
    void *params[] = {a->params};
    CUresult r = cuda_drv.cuLaunchKernel(a->fn, grid, 1, 1, threads, 1, 1, 0, call->s->stream,
                                         params, NULL);
    static atomic_int told;
    if (r == CUDA_SUCCESS && atomic_fetch_add(&told, 1) < 4)
        LOG_DEBUG("cuda:%d: %u copies (%s) through the gather kernel%s: %u tiles of %u bytes, %u CTAs of %u threads",
                  call->s->dev, n, call->dir == FERRY_COPY_D2H ? "D2H" : call->dir == FERRY_COPY_H2D ? "H2D" : "D2D",
                  a->big == 1 ? " (1,024-copy)" : a->big == 2 ? " (bulk copies)" : "", a->h->ntiles, 1u << shift,
                  grid, threads);
    if (r == CUDA_SUCCESS)
        return 0;
    int rc = ferry_device_enqueue_copies(&copy_engine, call, copies, k);
    struct gather_dev *g = &gather_devs[call->s->dev];
    atomic_int *state = a->big == 1 ? &g->big_state : a->big == 2 ? &g->bulk_state : &g->state;
    if (rc == 0 && atomic_exchange(state, -1) == 1)
        LOG_WARN("cuda:%d: %s launch failed (%s, CUDA error %d) where copies work; %s from now on", call->s->dev,
                 a->big == 1 ? "the 1,024-copy gather kernel's" : a->big == 2 ? "the bulk-copy scatter kernel's"
                                                                             : "gather kernel",
                 cu_error_text(r), r,
                 a->big == 1 ? "128 copies a launch" : a->big == 2 ? "16-byte loads" : "using the copy engine");
    return rc;
}

void cuda_gather_preload(int dev)
{
    unsigned int max_ctas;
    CUfunction big, bulk;
    (void)gather_function(dev, &max_ctas, &big, &bulk);
}

/* Each run of up to GATHER_MAX copies goes through the kernel when it suits
 * and can reach every address (D2D too: between dev's memory and a peer's
 * opened through IPC, over NVLink, one launch instead of a copy-engine
 * copy per block), else through the copy engine; both on the same stream,
 * so stream order holds. */
static int copy_gathered(struct copy_call *call, const struct ferry_copy *copies, size_t n)
{
    unsigned int max_ctas = 0;
    CUfunction big = NULL, bulk = NULL;
    CUfunction fn = gather_function(call->s->dev, &max_ctas, &big, &bulk);
    if (fn == NULL)
        return ferry_device_enqueue_copies(&copy_engine, call, copies, n);
    if (bulk && call->dir == FERRY_COPY_H2D) { /* 128 copies a launch, through shared memory */
        fn = bulk;
        big = NULL;
    }
    /* the parameters of one launch, on the stack (28 KiB for the 1,024-copy
     * kernel): copy_async is called by any thread, and allocates nothing */
    union {
        struct gather_args_small small;
        struct gather_args_big big;
    } params;
    struct gather_args a = {fn, fn == bulk ? 2 : 0, GATHER_MAX_SMALL, &params.small.h, params.small.tile_start,
                            params.small.copies, &params.small};
    int rc = 0;
    for (size_t done = 0; done < n && rc == 0;) {
        /* more than 128 copies left: the 1,024-copy kernel where it is loaded */
        if (big && n - done > GATHER_MAX_SMALL)
            a = (struct gather_args){big, 1, GATHER_MAX, &params.big.h, params.big.tile_start, params.big.copies,
                                     &params.big};
        size_t bytes;
        size_t k = gather_take(copies + done, n - done, &a, &bytes);
        const uint32_t taken = a.h->n;
        call->base = done;
        /* H2D: the SMs read host memory at ~0.92 of the copy engine's rate;
         * what the kernel saves is the engine's cost per copy, which one
         * large copy (a staging chunk bound for its device buffer) does
         * not pay */
        size_t mean_max = call->dir != FERRY_COPY_H2D ? GATHER_MEAN_MAX
                          : taken == 1                ? cuda_kernel_shape.h2d_one_max
                                                      : cuda_kernel_shape.h2d_max;
        /* a call of several MiB of large H2D copies: the engine's cost per
         * copy and per call is hidden there, its reads of host memory are
         * faster than the SMs' (FERRY_CUDA_KERNEL_H2D_CALL_MIN) */
        const size_t call_min = cuda_kernel_shape.h2d_call_min;
        const bool engine_call = call->dir == FERRY_COPY_H2D && call_min && taken > 0 && bytes >= call_min &&
                                 bytes / taken >= CUDA_SHAPE_CALL_BLOCK_MIN;
        if (taken > 0 && !engine_call && bytes / taken <= mean_max &&
            gather_reachable(call->s->dev, call->dir, &a)) {
            rc = gather_launch(call, max_ctas, &a, copies + done, k);
        } else if (taken > 0) {
            static atomic_int told; /* what FERRY_LOG_LEVEL=3 shows of the choice: the first few */
            if (atomic_fetch_add(&told, 1) < 8)
                LOG_DEBUG("cuda:%d: %u copies (%zu bytes, %s, first %p <- %p) on the copy engine: %s", call->s->dev,
                          taken, bytes, call->dir == FERRY_COPY_D2H ? "D2H" : call->dir == FERRY_COPY_H2D ? "H2D" : "D2D",
                          (void *)(uintptr_t)a.copies[0].dst, (void *)(uintptr_t)a.copies[0].src,
                          engine_call              ? "a large call of large copies"
                          : bytes / taken > mean_max ? "large copies"
                                                     : "an address the kernel may not reach");
            rc = ferry_device_enqueue_copies(&copy_engine, call, copies + done, k);
        }
        done += k;
    }
    return rc;
}

int cuda_copy_enqueue(const struct cuda_stream *s, enum ferry_copy_dir dir, const struct ferry_copy *copies,
                      size_t n)
{
    struct copy_call call = {s, dir, 0};
    if (atomic_load_explicit(&cuda_gather_enabled, memory_order_relaxed) &&
        (dir != FERRY_COPY_D2D || atomic_load_explicit(&cuda_gather_d2d, memory_order_relaxed)))
        return copy_gathered(&call, copies, n);
    return ferry_device_enqueue_copies(&copy_engine, &call, copies, n);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cuda_kernels.cu — the gather/scatter copy kernel of the CUDA backend.
 *
 * One launch moves a batch of up to 128 (or 1,024) copies {dst, src, len}
 * between device memory and mapped pinned host memory (or device and
 * device): the staging
 * gather (scattered device blocks -> one pinned chunk, D2H) and scatter (a
 * chunk -> device blocks, H2D).  The copy engine pays a fixed cost per copy
 * (cuMemcpyBatchAsync or one cuMemcpy*Async each); SMs writing straight into
 * host memory over PCIe / C2C pay it once per batch.
 *
 * Work is cut into tiles of 2^tile_shift bytes; copy i owns tiles
 * [tile_start[i], tile_start[i+1]).  Each CTA takes tiles in a grid-stride
 * loop, finds its copy by binary search over tile_start (kernel parameter
 * space, uniform across the CTA) and copies the tile with its threads:
 * 16-byte vectors when dst and src agree modulo 16 (8 / 4 bytes when they
 * agree modulo 8 / 4), each thread holding 4 or 8 loads (a.loads) in flight
 * before it stores them, with the unaligned head and tail done one byte per
 * thread; when they disagree modulo 4, each warp reads aligned words and
 * funnel-shifts neighbours (from the next lane) into aligned 4-byte stores.
 *
 * Not compiled by the build: scripts/gen-cuda-ptx.sh turns it into PTX in
 * cuda_kernels_ptx.h, which cuda_gather.c loads with cuModuleLoadDataEx.
 * It is compiled twice: ferry_copy_gather takes up to 128 copies (3,608
 * bytes of parameters, under the 4 KiB every driver takes), and, with
 * -DFERRY_GATHER_MAX=1024, ferry_copy_gather_1k takes up to 1,024 (28,696
 * bytes: kernel parameters over 4 KiB need CUDA 12.1 and PTX ISA 8.1, so it
 * is a module of its own, loaded where the driver takes it): a whole
 * staged batch of 16 chunks in one launch.  A third form, ferry_copy_bulk
 * (-DFERRY_GATHER_BULK, compute_90, PTX ISA 8.0; 128 copies), reads each
 * 16-byte aligned tile with one bulk copy (TMA) into shared memory: H2D
 * with FERRY_CUDA_KERNEL_BULK=1 on sm_90 and later.  The argument struct is
 * mirrored in cuda_gather.c (struct gather_args); both sides assert its
 * size and offsets.
 */
#include <stddef.h>
#include <stdint.h>

#ifndef FERRY_GATHER_MAX
#define FERRY_GATHER_MAX 128
#endif
#if defined(FERRY_GATHER_BULK) && FERRY_GATHER_MAX == 128
#define FERRY_GATHER_ENTRY ferry_copy_bulk
#define FERRY_GATHER_ARGS_SIZE 3608
#elif FERRY_GATHER_MAX == 128
#define FERRY_GATHER_ENTRY ferry_copy_gather
#define FERRY_GATHER_ARGS_SIZE 3608
#elif FERRY_GATHER_MAX == 1024
#define FERRY_GATHER_ENTRY ferry_copy_gather_1k
#define FERRY_GATHER_ARGS_SIZE 28696
#else
#error "FERRY_GATHER_MAX: 128 or 1024"
#endif
#define FERRY_GATHER_THREADS 256

struct ferry_gather_copy {
    unsigned long long dst;
    unsigned long long src;
    unsigned long long len;
};

struct ferry_gather_args {
    unsigned int n;                               /* copies, 1..FERRY_GATHER_MAX, all len > 0 */
    unsigned int tile_shift;                      /* tile = 1 << tile_shift bytes, >= 1 KiB */
    unsigned int ntiles;                          /* tile_start[n] */
    unsigned int loads;                           /* 16-byte loads in flight per thread: 4 or 8 */
    unsigned int tile_start[FERRY_GATHER_MAX + 1];
    struct ferry_gather_copy copies[FERRY_GATHER_MAX];
};

static_assert(sizeof(struct ferry_gather_args) == FERRY_GATHER_ARGS_SIZE, "mirrored in cuda_gather.c");
static_assert(offsetof(struct ferry_gather_args, tile_start) == 16, "mirrored in cuda_gather.c");
static_assert(offsetof(struct ferry_gather_args, copies) == (16 + 4 * (FERRY_GATHER_MAX + 1) + 7) / 8 * 8,
              "mirrored in cuda_gather.c");

/* Streaming loads and stores: every byte is touched once. */
__device__ __forceinline__ uint4 ld(const uint4 *p) { return __ldcs(p); }
__device__ __forceinline__ uint2 ld(const uint2 *p) { return __ldcs(p); }
__device__ __forceinline__ unsigned int ld(const unsigned int *p) { return __ldcs(p); }
__device__ __forceinline__ void st(uint4 *p, uint4 v) { __stcs(p, v); }
__device__ __forceinline__ void st(uint2 *p, uint2 v) { __stcs(p, v); }
__device__ __forceinline__ void st(unsigned int *p, unsigned int v) { __stcs(p, v); }

/* Up to 15 bytes, one per thread (a warp's byte stores to one sector
 * coalesce into one transaction). */
__device__ __forceinline__ void copy_bytes(char *d, const char *s, size_t len)
{
    if (threadIdx.x < len)
        d[threadIdx.x] = s[threadIdx.x];
}

/* D vectors per thread, loaded before any is stored, while a whole round
 * fits in [i, nv); returns where the round that did not fit starts. */
template <typename V, int D>
__device__ __forceinline__ size_t copy_deep(V *dv, const V *sv, size_t i, size_t nv, size_t nt)
{
    for (; i + (D - 1) * nt < nv; i += D * nt) {
        V v[D];
#pragma unroll
        for (int k = 0; k < D; k++)
            v[k] = ld(sv + i + k * nt);
#pragma unroll
        for (int k = 0; k < D; k++)
            st(dv + i + k * nt, v[k]);
    }
    return i;
}

/* d and s agree modulo sizeof(V). */
template <typename V>
__device__ __forceinline__ void copy_vec(char *d, const char *s, size_t len, unsigned int loads)
{
    const size_t a = sizeof(V);
    size_t head = (a - ((uintptr_t)d & (a - 1))) & (a - 1);
    if (head > len)
        head = len;
    copy_bytes(d, s, head);
    d += head;
    s += head;
    len -= head;
    const size_t nv = len / a;
    V *dv = reinterpret_cast<V *>(d);
    const V *sv = reinterpret_cast<const V *>(s);
    const size_t nt = blockDim.x;
    size_t i = threadIdx.x;
    /* loads in flight per thread before their stores: for reads of host
     * memory over PCIe (scatter), whose round trips the SM must cover */
    if (loads >= 8)
        i = copy_deep<V, 8>(dv, sv, i, nv, nt);
    i = copy_deep<V, 4>(dv, sv, i, nv, nt);
    i = copy_deep<V, 2>(dv, sv, i, nv, nt);
    if (i < nv)
        st(dv + i, ld(sv + i));
    copy_bytes(d + nv * a, s + nv * a, len - nv * a);
}

/* d and s disagree modulo 4.  After a byte head d is 4-aligned; s sits
 * off = 1..3 bytes past an aligned word.  Output word k is the funnel shift
 * of aligned source words k and k+1; word k+1 comes from the next lane.
 * Source word nw holds at least one byte of the copy, so reading it stays
 * inside the source's page and allocation. */
__device__ __forceinline__ void copy_shifted(char *d, const char *s, size_t len)
{
    size_t head = (4 - ((uintptr_t)d & 3)) & 3;
    if (head > len)
        head = len;
    copy_bytes(d, s, head);
    d += head;
    s += head;
    len -= head;
    const size_t nw = len / 4;
    const unsigned int shift = (unsigned int)((uintptr_t)s & 3) * 8;
    const unsigned int *sw = reinterpret_cast<const unsigned int *>((uintptr_t)s & ~(uintptr_t)3);
    unsigned int *dw = reinterpret_cast<unsigned int *>(d);
    const unsigned int lane = threadIdx.x & 31;
    /* k0 is uniform across the warp: every lane takes part in the shuffle */
    for (size_t k0 = threadIdx.x & ~31u; k0 < nw; k0 += blockDim.x) {
        size_t k = k0 + lane;
        unsigned int w = k <= nw ? ld(sw + k) : 0u;
        unsigned int next = __shfl_down_sync(0xffffffffu, w, 1);
        if (lane == 31)
            next = k + 1 <= nw ? ld(sw + k + 1) : 0u;
        if (k < nw)
            st(dw + k, __funnelshift_r(w, next, shift));
    }
    copy_bytes(d + nw * 4, s + nw * 4, len - nw * 4);
}

__device__ __forceinline__ void copy_range(char *d, const char *s, size_t len, unsigned int loads)
{
    const uintptr_t x = (uintptr_t)d ^ (uintptr_t)s;
    if ((x & 15) == 0)
        copy_vec<uint4>(d, s, len, loads);
    else if ((x & 7) == 0)
        copy_vec<uint2>(d, s, len, loads);
    else if ((x & 3) == 0)
        copy_vec<unsigned int>(d, s, len, loads);
    else
        copy_shifted(d, s, len);
}

#ifdef FERRY_GATHER_BULK
/* sm_90's bulk copy (TMA): one thread asks for a whole tile of host memory
 * (up to BULK_BUF bytes a request) into shared memory, and an mbarrier says
 * when it has landed; then the CTA's threads store it to device memory.
 * The bet (issue 16 item 1, scatter): the SMs' 16-byte loads of mapped host
 * memory reach ~0.92 of the copy engine's H2D rate, and larger requests to
 * host memory might do better.  Measured on 2 x H200: they do not (within
 * +-0.01 at 4-64 KiB; 16 KiB tiles lose), so FERRY_CUDA_KERNEL_BULK is off.
 * Needs 16-byte aligned addresses and a length that is a multiple of 16;
 * other tiles take copy_range. */
#define BULK_BUF 16384

__device__ __forceinline__ unsigned int smem(const void *p)
{
    return (unsigned int)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void bulk_load(unsigned int buf, const char *src, unsigned int bytes, unsigned int bar)
{
    unsigned long long g;
    asm volatile("cvta.to.global.u64 %0, %1;" : "=l"(g) : "l"(src));
    asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1;\n}"
                 :: "r"(bar), "r"(bytes) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 :: "r"(buf), "l"(g), "r"(bytes), "r"(bar) : "memory");
}

__device__ __forceinline__ void bulk_wait(unsigned int bar, unsigned int parity)
{
    asm volatile("{\n .reg .pred done;\n WAIT:\n mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
                 " @!done bra WAIT;\n}" :: "r"(bar), "r"(parity) : "memory");
}

/* [d, d + len) <- [s, s + len), all 16-byte aligned, through buf; *parity:
 * the phase of bar to wait for next (flips with every load). */
__device__ __forceinline__ void copy_bulk(char *d, const char *s, size_t len, uint4 *buf, unsigned int bar,
                                         unsigned int *parity)
{
    for (size_t off = 0; off < len; off += BULK_BUF) {
        const unsigned int n = (unsigned int)(len - off < BULK_BUF ? len - off : BULK_BUF);
        if (threadIdx.x == 0)
            bulk_load(smem(buf), s + off, n, bar);
        bulk_wait(bar, *parity);
        *parity ^= 1u;
        uint4 *dv = reinterpret_cast<uint4 *>(d + off);
        for (unsigned int i = threadIdx.x; i < n / 16; i += blockDim.x)
            st(dv + i, buf[i]);
        __syncthreads(); /* buf read by every thread before the next load overwrites it */
        if (threadIdx.x == 0)
            asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
}
#endif

/* Gather (D2H) and scatter (H2D) are the same loop; the host side must be
 * mapped pinned memory and the device side memory of this device.  Block of
 * FERRY_GATHER_THREADS threads (a multiple of 32: copy_shifted needs whole
 * warps). */
extern "C" __global__ void __launch_bounds__(FERRY_GATHER_THREADS)
FERRY_GATHER_ENTRY(const __grid_constant__ struct ferry_gather_args a)
{
    const size_t tile = (size_t)1 << a.tile_shift;
    unsigned int lo = 0;
#ifdef FERRY_GATHER_BULK
    __shared__ __align__(128) uint4 buf[BULK_BUF / 16];
    __shared__ __align__(8) unsigned long long bar_word;
    const unsigned int bar = smem(&bar_word);
    unsigned int parity = 0;
    if (threadIdx.x == 0) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: "r"(bar) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    }
    __syncthreads();
#endif
    for (unsigned int t = blockIdx.x; t < a.ntiles; t += gridDim.x) {
        /* largest i with tile_start[i] <= t; tile_start[0] = 0, and a CTA's
         * tiles only grow, so the search starts at the last one's copy */
        unsigned int hi = a.n;
        while (hi - lo > 1) {
            unsigned int mid = (lo + hi) >> 1;
            if (a.tile_start[mid] <= t)
                lo = mid;
            else
                hi = mid;
        }
        const size_t off = (size_t)(t - a.tile_start[lo]) << a.tile_shift;
        const size_t len = a.copies[lo].len - off;
        char *d = reinterpret_cast<char *>(a.copies[lo].dst) + off;
        const char *s = reinterpret_cast<const char *>(a.copies[lo].src) + off;
#ifdef FERRY_GATHER_BULK
        const size_t n = len < tile ? len : tile;
        if ((((uintptr_t)d | (uintptr_t)s | n) & 15) == 0) { /* uniform across the CTA */
            copy_bulk(d, s, n, buf, bar, &parity);
            continue;
        }
#endif
        copy_range(d, s, len < tile ? len : tile, a.loads);
    }
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_device_cuda.c — a real accelerator through its ops table: device and
 * pinned allocation, 128 blocks of 64 KiB batched H2D / D2D / D2H with the
 * data checked, scattered batches of awkward shapes (1 byte, misaligned
 * offsets and lengths, 16 KiB, 1 MiB, 64 to 1,024 copies) checked byte for
 * byte on both sides including the bytes around them, a stream driven from
 * another thread, and locate().
 * Skips (exit 77) where the driver or a device is missing.
 *
 * test_device_ascend.c runs this same file against "npu" by defining
 * DEVICE_KIND before including it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "device/device.h"
#include "err.h"
#include "testutil.h"

#ifndef DEVICE_KIND
#define DEVICE_KIND "cuda"
#define DEVICE_WHAT "CUDA device"
#endif

enum { BLOCKS = 128, BLOCK = 64 << 10 };
#define TOTAL ((size_t)BLOCKS * BLOCK)

static const struct ferry_device_ops *ops;

/* Scattered H2D of every block (reversed), one D2D of the whole range, then
 * scattered D2H back into order; checks the bytes. */
static void batched_round_trip(int dev, ferry_stream *s, unsigned seed)
{
    void *src, *dst, *d1, *d2;
    static struct ferry_copy c[BLOCKS];
    assert_int_equal(ops->host_alloc(TOTAL, &src), 0);
    assert_int_equal(ops->host_alloc(TOTAL, &dst), 0);
    assert_int_equal(ops->mem_alloc(dev, TOTAL, &d1), 0);
    assert_int_equal(ops->mem_alloc(dev, TOTAL, &d2), 0);
    bytes_fill(src, TOTAL, seed);
    memset(dst, 0, TOTAL);

    for (size_t i = 0; i < BLOCKS; i++)
        c[i] = (struct ferry_copy){(char *)d1 + (BLOCKS - 1 - i) * (size_t)BLOCK,
                                   (char *)src + i * (size_t)BLOCK, BLOCK};
    assert_int_equal(ops->copy_async(s, FERRY_COPY_H2D, c, BLOCKS), 0);
    struct ferry_copy whole = {d2, d1, TOTAL};
    assert_int_equal(ops->copy_async(s, FERRY_COPY_D2D, &whole, 1), 0);
    for (size_t j = 0; j < BLOCKS; j++)
        c[j] = (struct ferry_copy){(char *)dst + (BLOCKS - 1 - j) * (size_t)BLOCK,
                                   (char *)d2 + j * (size_t)BLOCK, BLOCK};
    assert_int_equal(ops->copy_async(s, FERRY_COPY_D2H, c, BLOCKS), 0);
    int rc = ops->stream_query(s);
    assert_true(rc == 0 || rc == FERRY_EBUSY);
    if (ops->stream_sync(s) != 0)
        fail_msg("stream_sync: %s", ferry_last_error());
    assert_int_equal(ops->stream_query(s), 0);
    assert_true(bytes_check(dst, TOTAL, seed));

    ops->mem_free(dev, d1);
    ops->mem_free(dev, d2);
    ops->host_free(src);
    ops->host_free(dst);
}

static void test_batched_copies(void **state)
{
    (void)state;
    for (int dev = 0; dev < ops->device_count() && dev < 2; dev++) {
        ferry_stream *s = NULL;
        assert_int_equal(ops->stream_create(dev, &s), 0);
        batched_round_trip(dev, s, 17u + (unsigned)dev);
        ops->stream_destroy(s);
    }
}

/* Pageable (malloc) host memory is accepted too (on NPUs the backend must
 * bounce it: old CANN corrupts such copies without an error). */
static void test_pageable_host(void **state)
{
    (void)state;
    size_t len = 1 << 20;
    unsigned char *src = malloc(len), *dst = calloc(1, len);
    void *d;
    ferry_stream *s = NULL;
    assert_non_null(src);
    assert_non_null(dst);
    bytes_fill(src, len, 5);
    assert_int_equal(ops->mem_alloc(0, len, &d), 0);
    assert_int_equal(ops->stream_create(0, &s), 0);
    struct ferry_copy up = {d, src, len}, down = {dst, d, len};
    assert_int_equal(ops->copy_async(s, FERRY_COPY_H2D, &up, 1), 0);
    assert_int_equal(ops->copy_async(s, FERRY_COPY_D2H, &down, 1), 0);
    assert_int_equal(ops->stream_sync(s), 0);
    assert_true(bytes_check(dst, len, 5));
    ops->stream_destroy(s);
    ops->mem_free(0, d);
    free(src);
    free(dst);
}

/* ---- scattered batches of awkward shapes ---------------------------------
 * Pinned src S scatters (H2D) to device D, D gathers (D2H) back to pinned T;
 * then D and T are read back whole and compared with models of what they
 * must hold, so a byte written outside a copy shows as well as a wrong one.
 * On CUDA these batches take the gather kernel (its vector, narrower and
 * funnel-shift paths); copies averaging over 1 MiB take the copy engine. */

enum { SHAPE_SPAN = 16 << 20, SHAPE_MAX = 1024 };

struct shape {
    const char *name;
    size_t n;          /* copies */
    size_t len;        /* each, or 0: varied 0..len_max */
    size_t len_max;
    unsigned mis;      /* 1: offsets misaligned at random, 0: 4 KiB aligned */
};

static unsigned long long rng_state;

static unsigned rnd(unsigned bound)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return bound ? (unsigned)((rng_state >> 33) % bound) : 0;
}

/* Next offset for a copy of len at *pos of a region of span bytes; a
 * multiple of align (misaligned shapes too: devices that want aligned
 * addresses, NPUs, get aligned device offsets and misaligned host ones,
 * which the backend must bounce). */
static size_t place(size_t *pos, size_t len, unsigned mis, size_t align)
{
    size_t off = mis ? *pos + rnd(16) : (*pos + 4095) & ~(size_t)4095;
    off = (off + align - 1) / align * align;
    *pos = off + len + (mis ? rnd(300) : 0);
    assert_true(*pos <= SHAPE_SPAN);
    return off;
}

static void shape_round(int dev, ferry_stream *s, const struct shape *sh, unsigned seed,
                        unsigned char *S, unsigned char *T, unsigned char *U, void *D,
                        unsigned char *dev_model, unsigned char *host_model)
{
    static struct ferry_copy up[SHAPE_MAX], down[SHAPE_MAX];
    static size_t so[SHAPE_MAX], dof[SHAPE_MAX], to[SHAPE_MAX], len[SHAPE_MAX];
    size_t sp = 0, dp = 0, tp = 0;
    size_t align = ops->copy_alignment ? ops->copy_alignment() : 1;
    rng_state = seed;
    for (size_t i = 0; i < sh->n; i++) {
        len[i] = sh->len ? sh->len : rnd((unsigned)sh->len_max + 1);
        if (i % 17 == 5 && !sh->len)
            len[i] = 0;   /* zero-length copies are skipped */
        so[i] = place(&sp, len[i], sh->mis, 1);
        dof[i] = place(&dp, len[i], sh->mis, align);
        to[i] = place(&tp, len[i], sh->mis, 1);
    }
    /* device: a known background, written by one large copy */
    bytes_fill(dev_model, SHAPE_SPAN, seed + 1);
    memcpy(T, dev_model, SHAPE_SPAN);
    struct ferry_copy whole_up = {D, T, SHAPE_SPAN};
    assert_int_equal(ops->copy_async(s, FERRY_COPY_H2D, &whole_up, 1), 0);
    assert_int_equal(ops->stream_sync(s), 0);
    bytes_fill(S, SHAPE_SPAN, seed + 2);
    memset(T, 0x5a, SHAPE_SPAN);
    memset(host_model, 0x5a, SHAPE_SPAN);
    for (size_t i = 0; i < sh->n; i++) {
        up[i] = (struct ferry_copy){(char *)D + dof[i], S + so[i], len[i]};
        down[i] = (struct ferry_copy){T + to[i], (char *)D + dof[i], len[i]};
        memcpy(dev_model + dof[i], S + so[i], len[i]);
        memcpy(host_model + to[i], S + so[i], len[i]);
    }
    assert_int_equal(ops->copy_async(s, FERRY_COPY_H2D, up, sh->n), 0);
    assert_int_equal(ops->copy_async(s, FERRY_COPY_D2H, down, sh->n), 0);
    struct ferry_copy whole_down = {U, D, SHAPE_SPAN};
    assert_int_equal(ops->copy_async(s, FERRY_COPY_D2H, &whole_down, 1), 0);
    if (ops->stream_sync(s) != 0)
        fail_msg("%s: stream_sync: %s", sh->name, ferry_last_error());
    for (size_t i = 0; i < SHAPE_SPAN; i++) {
        if (U[i] != dev_model[i])
            fail_msg("%s (cuda:%d): device byte %zu is %#x, expected %#x", sh->name, dev, i, U[i],
                     dev_model[i]);
        if (T[i] != host_model[i])
            fail_msg("%s (cuda:%d): host byte %zu is %#x, expected %#x", sh->name, dev, i, T[i],
                     host_model[i]);
    }
}

static void test_scattered_shapes(void **state)
{
    (void)state;
    static const struct shape shapes[] = {
        {"64 x 16 KiB", 64, 16 << 10, 0, 0},
        {"64 x 1 byte, misaligned", 64, 1, 0, 1},
        {"2 x 1 MiB", 2, 1 << 20, 0, 0},
        {"1 x 16 KiB", 1, 16 << 10, 0, 0},
        {"1 x 1 MiB + 3, misaligned", 1, (1 << 20) + 3, 0, 1},
        {"64 x 64 KiB - 1, misaligned", 64, (64 << 10) - 1, 0, 1},
        {"64 x 0..70000, misaligned", 64, 0, 70000, 1},
        {"200 x 0..40000, misaligned", 200, 0, 40000, 1},
        {"3 x 0..20, misaligned", 3, 0, 20, 1},
        {"100 x 4 KiB", 100, 4 << 10, 0, 0},
        /* over 128 copies: on CUDA 12.1+ one launch of the 1,024-copy kernel */
        {"129 x 4 KiB", 129, 4 << 10, 0, 0},
        {"1,024 x 16 KiB", 1024, 16 << 10, 0, 0},
        {"1,000 x 0..16000, misaligned", 1000, 0, 16000, 1},
    };
    unsigned char *S, *T, *U;
    void *D;
    unsigned char *dev_model = malloc(SHAPE_SPAN), *host_model = malloc(SHAPE_SPAN);
    assert_non_null(dev_model);
    assert_non_null(host_model);
    assert_int_equal(ops->host_alloc(SHAPE_SPAN, (void **)&S), 0);
    assert_int_equal(ops->host_alloc(SHAPE_SPAN, (void **)&T), 0);
    assert_int_equal(ops->host_alloc(SHAPE_SPAN, (void **)&U), 0);
    for (int dev = 0; dev < ops->device_count() && dev < 2; dev++) {
        ferry_stream *s = NULL;
        assert_int_equal(ops->stream_create(dev, &s), 0);
        assert_int_equal(ops->mem_alloc(dev, SHAPE_SPAN, &D), 0);
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
            shape_round(dev, s, &shapes[k], 1000u + (unsigned)k, S, T, U, D, dev_model,
                        host_model);
        ops->mem_free(dev, D);
        ops->stream_destroy(s);
    }
    ops->host_free(S);
    ops->host_free(T);
    ops->host_free(U);
    free(dev_model);
    free(host_model);
}

struct thread_arg {
    ferry_stream *s;
    int done;
};

static void *use_stream_from_thread(void *p)
{
    struct thread_arg *a = p;
    batched_round_trip(0, a->s, 99);
    a->done = 1;
    return NULL;
}

/* A thread that never touched the driver uses a stream made elsewhere:
 * the backend must make the right context current itself. */
static void test_other_thread(void **state)
{
    (void)state;
    ferry_stream *s = NULL;
    pthread_t t;
    struct thread_arg a = {NULL, 0};
    assert_int_equal(ops->stream_create(0, &s), 0);
    a.s = s;
    assert_int_equal(pthread_create(&t, NULL, use_stream_from_thread, &a), 0);
    pthread_join(t, NULL);
    assert_true(a.done);
    ops->stream_destroy(s);
}

static void test_locate(void **state)
{
    (void)state;
    void *d, *pinned;
    int dev = -1, x = 0;
    char *heap = malloc(4096);
    assert_int_equal(ops->mem_alloc(0, 1 << 20, &d), 0);
    assert_int_equal(ops->host_alloc(4096, &pinned), 0);

    if (ops->locate(d, 1 << 20, &dev) == 0 && strcmp(DEVICE_KIND, "npu") == 0) {
        /* CANN without aclrtPointerGetAttributes cannot tell; callers name npu:N. */
        print_message("locate() not supported by this driver\n");
        ops->mem_free(0, d);
        ops->host_free(pinned);
        free(heap);
        skip();
    }
    assert_int_equal(ops->locate(d, 1 << 20, &dev), 1);
    assert_int_equal(dev, 0);
    assert_int_equal(ops->locate((char *)d + 4096, 16, &dev), 1);
    assert_int_equal(dev, 0);
    dev = -1;
    assert_ptr_equal(ferry_device_locate(d, 16, &dev), ops);
    assert_int_equal(dev, 0);
    assert_int_equal(ops->locate(pinned, 4096, &dev), 0);
    assert_int_equal(ops->locate(heap, 4096, &dev), 0);
    assert_int_equal(ops->locate(&x, sizeof x, &dev), 0);
    assert_null(ferry_device_locate(heap, 4096, &dev));

    ops->mem_free(0, d);
    ops->host_free(pinned);
    free(heap);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    void *p = NULL;
    ferry_stream *s = NULL;
    int n = ops->device_count();
    assert_int_equal(ops->mem_alloc(n, 16, &p), FERRY_ENODEV);
    assert_int_equal(ops->mem_alloc(0, 0, &p), FERRY_EINVAL);
    assert_int_equal(ops->stream_create(n, &s), FERRY_ENODEV);
    assert_int_equal(ops->copy_async(NULL, FERRY_COPY_H2D, NULL, 0), FERRY_EINVAL);
    assert_int_equal(ops->stream_create(0, &s), 0);
    assert_int_equal(ops->copy_async(s, FERRY_COPY_H2D, NULL, 0), 0);
    assert_int_equal(ops->stream_sync(s), 0);
    ops->stream_destroy(s);
}

/* What an RDMA NIC asks of device memory (device.h): a dma-buf of a range
 * and the device's PCI address.  Kinds without them leave the ops NULL. */
static void test_nic_queries(void **state)
{
    (void)state;
    if (ops->dmabuf_export == NULL && ops->pci_bus_id == NULL) {
        printf("%s: no NIC queries (its memory is staged for rdma)\n", DEVICE_KIND);
        return;
    }
    void *d;
    assert_int_equal(ops->mem_alloc(0, 3 << 20, &d), 0);
    if (ops->dmabuf_export) {
        int fd = -1;
        uint64_t off = 99;
        int rc = ops->dmabuf_export((char *)d + 4100, 8192, &fd, &off);
        if (rc == FERRY_ENOTSUP) {
            printf("dma-buf export not supported here: %s\n", ferry_last_error());
        } else {
            assert_int_equal(rc, 0);
            assert_true(fd >= 0);
            assert_int_equal(off, ((uintptr_t)d + 4100) % (uintptr_t)sysconf(_SC_PAGESIZE));
            close(fd);
        }
        static char host[64];
        assert_int_equal(ops->dmabuf_export(host, sizeof host, &fd, &off), FERRY_EINVAL);
    }
    if (ops->pci_bus_id) {
        char id[32] = "";
        assert_int_equal(ops->pci_bus_id(0, id, sizeof id), 0);
        printf("%s:0 is at PCI %s\n", DEVICE_KIND, id);
        assert_non_null(strchr(id, ':'));
        for (const char *c = id; *c; c++)
            assert_false(*c >= 'A' && *c <= 'Z');
        assert_int_equal(ops->pci_bus_id(ops->device_count(), id, sizeof id), FERRY_ENODEV);
    }
    ops->mem_free(0, d);
}

int main(void)
{
    ops = ferry_device_find(DEVICE_KIND);
    if (ops == NULL)
        test_skip("no \"%s\" backend in this build", DEVICE_KIND);
    if (ops->init() != 0)
        test_skip("no " DEVICE_WHAT ": %s", ferry_last_error());
    if (ops->device_count() == 0)
        test_skip("no " DEVICE_WHAT ": the driver sees none");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batched_copies),
        cmocka_unit_test(test_scattered_shapes),
        cmocka_unit_test(test_pageable_host),
        cmocka_unit_test(test_other_thread),
        cmocka_unit_test(test_locate),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_nic_queries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

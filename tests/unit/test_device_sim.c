/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_device_sim.c — the device registry, location strings and the strict
 * simulated accelerator: allocation, copies in every direction (single,
 * batched, concurrent), stream errors for bad addresses, locate(), and proof
 * that touching sim device memory directly crashes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "device/device.h"
#include "err.h"
#include "sanitizer.h"
#include "testutil.h"

static const struct ferry_device_ops *sim;

static void *host_buf(size_t len)
{
    void *p = NULL;
    assert_int_equal(sim->host_alloc(len, &p), 0);
    assert_non_null(p);
    return p;
}

static void *dev_buf(int dev, size_t len)
{
    void *p = NULL;
    assert_int_equal(sim->mem_alloc(dev, len, &p), 0);
    assert_non_null(p);
    return p;
}

static ferry_stream *new_stream(int dev)
{
    ferry_stream *s = NULL;
    assert_int_equal(sim->stream_create(dev, &s), 0);
    assert_non_null(s);
    return s;
}

static int copy1(ferry_stream *s, enum ferry_copy_dir dir, void *dst, const void *src, size_t len)
{
    struct ferry_copy c = {dst, src, len};
    return sim->copy_async(s, dir, &c, 1);
}

/* ---------------------------------------------------------------- registry */

static void test_find(void **state)
{
    (void)state;
    assert_ptr_equal(ferry_device_find("sim"), &ferry_device_sim);
    assert_ptr_equal(ferry_device_find("cuda"), &ferry_device_cuda);
    assert_ptr_equal(ferry_device_find("npu"), &ferry_device_npu);
    assert_ptr_equal(ferry_device_find("cpu"), &ferry_device_cpu); /* host memory has a table too */
    assert_null(ferry_device_find("gpu"));
    assert_null(ferry_device_find(""));
    assert_null(ferry_device_find(NULL));
    assert_string_equal(ferry_device_find("sim")->kind, "sim");
}

static void test_location_parse_good(void **state)
{
    static const struct {
        const char *loc, *kind;
        int index;
    } good[] = {
        {"cpu", "cpu", -1},   {"cpu:0", "cpu", 0},   {"cpu:3", "cpu", 3},
        {"cuda", "cuda", 0},  {"cuda:0", "cuda", 0}, {"cuda:7", "cuda", 7},
        {"npu:0", "npu", 0},  {"npu:15", "npu", 15}, {"sim:0", "sim", 0},
        {"sim:1", "sim", 1},  {"sim:65535", "sim", 65535},
    };
    (void)state;
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char kind[16] = "garbage";
        int index = -7;
        assert_int_equal(ferry_location_parse(good[i].loc, kind, &index), 0);
        assert_string_equal(kind, good[i].kind);
        assert_int_equal(index, good[i].index);
    }
    assert_int_equal(ferry_location_parse("cuda:2", NULL, NULL), 0);
}

static void test_location_parse_bad(void **state)
{
    static const char *const bad[] = {
        "", "gpu", "gpu:0", "cuda:", "cuda:-1", "cuda:+1", "cuda:1x", "cuda:0:1",
        "cuda0", "CUDA:0", " cuda:0", "cuda:0 ", "npu", "sim", "sim:", "cpu:",
        "sim:65536", "sim:99999999999999999999", "cpux", "host",
    };
    (void)state;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char kind[16];
        int index;
        ferry_clear_error();
        assert_int_equal(ferry_location_parse(bad[i], kind, &index), FERRY_EINVAL);
        char quoted[64];
        snprintf(quoted, sizeof quoted, "\"%s\"", bad[i]);
        if (strstr(ferry_last_error(), quoted) == NULL)
            fail_msg("message for %s does not quote it: %s", quoted, ferry_last_error());
    }
    assert_int_equal(ferry_location_parse(NULL, NULL, NULL), FERRY_EINVAL);
}

/* ---------------------------------------------------------------- memory */

static void test_init_and_count(void **state)
{
    (void)state;
    assert_int_equal(sim->init(), 0);
    assert_int_equal(sim->init(), 0);
    assert_int_equal(sim->device_count(), 2);
}

static void test_alloc_free(void **state)
{
    static const size_t sizes[] = {1, 100, 4096, 4097, 65536, 3 << 20};
    void *p[sizeof sizes / sizeof sizes[0]];
    (void)state;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        p[i] = dev_buf((int)(i % 2), sizes[i]);
        assert_int_equal((uintptr_t)p[i] % 4096, 0);
        for (size_t j = 0; j < i; j++)
            assert_ptr_not_equal(p[i], p[j]);
    }
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        sim->mem_free((int)(i % 2), p[i]);

    void *q = NULL;
    assert_int_equal(sim->mem_alloc(0, 0, &q), FERRY_EINVAL);
    assert_int_equal(sim->mem_alloc(0, 16, NULL), FERRY_EINVAL);
    assert_int_equal(sim->mem_alloc(2, 16, &q), FERRY_ENODEV);
    assert_non_null(strstr(ferry_last_error(), "sim:2"));
    assert_int_equal(sim->mem_alloc(-1, 16, &q), FERRY_ENODEV);
    assert_int_equal(sim->mem_alloc(0, (size_t)1 << 50, &q), FERRY_ENOMEM);
    /* Freeing NULL, a wrong pointer or twice only logs. */
    sim->mem_free(0, NULL);
    q = dev_buf(0, 8192);
    sim->mem_free(1, q);
    sim->mem_free(0, (char *)q + 4096);
    sim->mem_free(0, q);
    sim->mem_free(0, q);

    void *h = NULL;
    assert_int_equal(sim->host_alloc(0, &h), FERRY_EINVAL);
    h = host_buf(10000);
    assert_int_equal((uintptr_t)h % 4096, 0);
    memset(h, 0xab, 10000);   /* host memory is ordinary memory */
    sim->host_free(h);
    sim->host_free(NULL);
}

/* Fills a device exactly, then frees and reuses the space. */
static void test_alloc_exhaust(void **state)
{
    (void)state;
    void *blocks[64];
    size_t n = 0;
    size_t chunk = (size_t)1 << 30;
    while (n < 64 && sim->mem_alloc(1, chunk, &blocks[n]) == 0)
        n++;
    assert_true(n >= 1 && n < 64);
    void *extra = NULL;
    assert_int_equal(sim->mem_alloc(1, chunk, &extra), FERRY_ENOMEM);
    sim->mem_free(1, blocks[n / 2]);
    assert_int_equal(sim->mem_alloc(1, chunk, &extra), 0);
    assert_ptr_equal(extra, blocks[n / 2]);
    blocks[n / 2] = extra;
    for (size_t i = 0; i < n; i++)
        sim->mem_free(1, blocks[i]);
}

/* ---------------------------------------------------------------- copies */

static void test_round_trip_sizes(void **state)
{
    static const size_t sizes[] = {1, 7, 4096, 65536 + 3, 1 << 20, 8 << 20};
    (void)state;
    ferry_stream *s = new_stream(0);
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t len = sizes[i];
        unsigned char *src = host_buf(len), *dst = host_buf(len);
        void *d = dev_buf(0, len);
        bytes_fill(src, len, (unsigned)i);
        memset(dst, 0, len);
        assert_int_equal(copy1(s, FERRY_COPY_H2D, d, src, len), 0);
        assert_int_equal(copy1(s, FERRY_COPY_D2H, dst, d, len), 0);
        assert_int_equal(sim->stream_sync(s), 0);
        assert_true(bytes_check(dst, len, (unsigned)i));
        sim->mem_free(0, d);
        sim->host_free(src);
        sim->host_free(dst);
    }
    sim->stream_destroy(s);
}

/* 128 blocks of 64 KiB: scattered H2D in one call, D2D, scattered D2H back. */
static void test_batched(void **state)
{
    enum { BLOCKS = 128, BLOCK = 64 << 10 };
    (void)state;
    ferry_stream *s = new_stream(1);
    unsigned char *src = host_buf((size_t)BLOCKS * BLOCK), *dst = host_buf((size_t)BLOCKS * BLOCK);
    unsigned char *d1 = dev_buf(1, (size_t)BLOCKS * BLOCK), *d2 = dev_buf(1, (size_t)BLOCKS * BLOCK);
    struct ferry_copy c[BLOCKS];
    bytes_fill(src, (size_t)BLOCKS * BLOCK, 42);
    memset(dst, 0, (size_t)BLOCKS * BLOCK);

    /* host block i -> device block BLOCKS-1-i */
    for (size_t i = 0; i < BLOCKS; i++)
        c[i] = (struct ferry_copy){d1 + (BLOCKS - 1 - i) * (size_t)BLOCK, src + i * (size_t)BLOCK, BLOCK};
    assert_int_equal(sim->copy_async(s, FERRY_COPY_H2D, c, BLOCKS), 0);
    struct ferry_copy whole = {d2, d1, (size_t)BLOCKS * BLOCK};
    assert_int_equal(sim->copy_async(s, FERRY_COPY_D2D, &whole, 1), 0);
    /* device block j -> host block BLOCKS-1-j: back in the original order */
    for (size_t j = 0; j < BLOCKS; j++)
        c[j] = (struct ferry_copy){dst + (BLOCKS - 1 - j) * (size_t)BLOCK, d2 + j * (size_t)BLOCK, BLOCK};
    assert_int_equal(sim->copy_async(s, FERRY_COPY_D2H, c, BLOCKS), 0);
    assert_int_equal(sim->stream_sync(s), 0);
    assert_true(bytes_check(dst, (size_t)BLOCKS * BLOCK, 42));
    assert_int_equal(sim->stream_query(s), 0);

    sim->stream_destroy(s);
    sim->mem_free(1, d1);
    sim->mem_free(1, d2);
    sim->host_free(src);
    sim->host_free(dst);
}

static void test_d2d_within_allocation(void **state)
{
    (void)state;
    size_t len = 1 << 20;
    ferry_stream *s = new_stream(0);
    unsigned char *src = host_buf(len), *dst = host_buf(len);
    unsigned char *d = dev_buf(0, 2 * len);
    bytes_fill(src, len, 9);
    assert_int_equal(copy1(s, FERRY_COPY_H2D, d, src, len), 0);
    /* overlapping move inside one allocation */
    assert_int_equal(copy1(s, FERRY_COPY_D2D, d + 4096, d, len), 0);
    assert_int_equal(copy1(s, FERRY_COPY_D2H, dst, d + 4096, len), 0);
    assert_int_equal(sim->stream_sync(s), 0);
    assert_true(bytes_check(dst, len, 9));
    sim->stream_destroy(s);
    sim->mem_free(0, d);
    sim->host_free(src);
    sim->host_free(dst);
}

static void test_async_query(void **state)
{
    (void)state;
    size_t len = 64 << 20;
    ferry_stream *s = new_stream(0);
    unsigned char *src = host_buf(len), *dst = host_buf(len);
    void *d = dev_buf(0, len);
    bytes_fill(src, len, 3);
    assert_int_equal(sim->stream_query(s), 0);   /* nothing queued */
    assert_int_equal(copy1(s, FERRY_COPY_H2D, d, src, len), 0);
    assert_int_equal(copy1(s, FERRY_COPY_D2H, dst, d, len), 0);
    int rc = sim->stream_query(s);
    assert_true(rc == FERRY_EBUSY || rc == 0);
    assert_int_equal(sim->stream_sync(s), 0);
    assert_int_equal(sim->stream_query(s), 0);
    assert_true(bytes_check(dst, len, 3));
    /* copies of length 0 and empty calls are accepted */
    assert_int_equal(sim->copy_async(s, FERRY_COPY_H2D, NULL, 0), 0);
    assert_int_equal(copy1(s, FERRY_COPY_H2D, NULL, NULL, 0), 0);
    assert_int_equal(sim->stream_sync(s), 0);
    sim->stream_destroy(s);
    sim->mem_free(0, d);
    sim->host_free(src);
    sim->host_free(dst);
}

/* Polling with query alone sees the work finish. */
static void test_query_polls_to_done(void **state)
{
    (void)state;
    size_t len = 16 << 20;
    ferry_stream *s = new_stream(1);
    unsigned char *src = host_buf(len);
    void *d = dev_buf(1, len);
    bytes_fill(src, len, 5);
    for (int i = 0; i < 8; i++)
        assert_int_equal(copy1(s, FERRY_COPY_H2D, d, src, len), 0);
    int rc;
    while ((rc = sim->stream_query(s)) == FERRY_EBUSY)
        usleep(100);
    assert_int_equal(rc, 0);
    sim->stream_destroy(s);
    sim->mem_free(1, d);
    sim->host_free(src);
}

/* Each bad copy puts a fresh stream in the sticky error state. */
static void expect_stream_error(int dev, enum ferry_copy_dir dir, void *dst, const void *src,
                                size_t len, const char *needle)
{
    ferry_stream *s = new_stream(dev);
    assert_int_equal(copy1(s, dir, dst, src, len), 0);   /* enqueue succeeds */
    ferry_clear_error();
    assert_int_equal(sim->stream_sync(s), FERRY_EIO);
    if (strstr(ferry_last_error(), needle) == NULL)
        fail_msg("stream error \"%s\" lacks \"%s\"", ferry_last_error(), needle);
    assert_int_equal(sim->stream_query(s), FERRY_EIO);
    assert_int_equal(sim->stream_sync(s), FERRY_EIO);
    char ok[16];
    assert_int_equal(copy1(s, FERRY_COPY_H2D, dst, ok, 0), FERRY_EIO);
    sim->stream_destroy(s);
}

static void test_bad_copies_fail_the_stream(void **state)
{
    (void)state;
    size_t len = 1 << 16;
    unsigned char *h = host_buf(2 * len);
    unsigned char *d0 = dev_buf(0, len), *d1 = dev_buf(1, len);
    unsigned char *freed = dev_buf(0, len);
    sim->mem_free(0, freed);

    expect_stream_error(0, FERRY_COPY_H2D, d0, h, len + 1, "not inside a live allocation");
    expect_stream_error(0, FERRY_COPY_D2H, h, d0 + 8, len, "not inside a live allocation");
    expect_stream_error(0, FERRY_COPY_H2D, d0 - 4096, h, 16, "illegal address");
    expect_stream_error(0, FERRY_COPY_H2D, freed, h, 16, "not inside a live allocation");
    expect_stream_error(0, FERRY_COPY_H2D, d1, h, 16, "sim:1");
    expect_stream_error(0, FERRY_COPY_D2H, d0, d0, 16, "expected host memory");
    expect_stream_error(0, FERRY_COPY_H2D, d0, d1, 16, "expected host memory");
    expect_stream_error(0, FERRY_COPY_D2H, h, h + len, 16, "not sim device memory");
    expect_stream_error(0, FERRY_COPY_D2D, d0, h, 16, "not sim device memory");
    expect_stream_error(0, FERRY_COPY_D2H, NULL, d0, 16, "invalid");

    /* An error in the middle of a queue: earlier copies done, stream failed. */
    ferry_stream *s = new_stream(0);
    bytes_fill(h, len, 11);
    /* Hold the stream until all three are queued: a worker that already ran
     * the bad copy would make the third enqueue return the sticky error. */
    volatile uint32_t go = 0;
    assert_int_equal(sim->stream_wait_flag(0, s, &go, 1), 0);
    assert_int_equal(copy1(s, FERRY_COPY_H2D, d0, h, len), 0);
    assert_int_equal(copy1(s, FERRY_COPY_H2D, d0, h, len + 4096), 0);
    assert_int_equal(copy1(s, FERRY_COPY_D2H, h + len, d0, len), 0);
    ferry_flag_set(&go, 1);
    assert_int_equal(sim->stream_sync(s), FERRY_EIO);
    sim->stream_destroy(s);
    s = new_stream(0);
    memset(h + len, 0, len);
    assert_int_equal(copy1(s, FERRY_COPY_D2H, h + len, d0, len), 0);
    assert_int_equal(sim->stream_sync(s), 0);
    assert_true(bytes_check(h + len, len, 11));
    sim->stream_destroy(s);

    sim->mem_free(0, d0);
    sim->mem_free(1, d1);
    sim->host_free(h);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    char buf[16];
    struct ferry_copy c = {buf, buf, sizeof buf};
    ferry_stream *s = NULL;
    assert_int_equal(sim->stream_create(5, &s), FERRY_ENODEV);
    assert_int_equal(sim->stream_create(0, NULL), FERRY_EINVAL);
    assert_int_equal(sim->copy_async(NULL, FERRY_COPY_H2D, &c, 1), FERRY_EINVAL);
    s = new_stream(0);
    assert_int_equal(sim->copy_async(s, (enum ferry_copy_dir)7, &c, 1), FERRY_EINVAL);
    assert_int_equal(sim->copy_async(s, FERRY_COPY_H2D, NULL, 3), FERRY_EINVAL);
    /* a stream of another kind is refused, not misread */
    uint64_t fake[8] = {0};
    assert_int_equal(sim->copy_async((ferry_stream *)fake, FERRY_COPY_H2D, &c, 1), FERRY_EINVAL);
    assert_int_equal(sim->stream_query((ferry_stream *)fake), FERRY_EINVAL);
    assert_int_equal(sim->stream_sync((ferry_stream *)fake), FERRY_EINVAL);
    assert_int_equal(sim->stream_sync(s), 0);
    sim->stream_destroy(s);
    sim->stream_destroy(NULL);
}

/* Destroying a stream lets its queued copies finish first. */
static void test_destroy_drains(void **state)
{
    (void)state;
    size_t len = 4 << 20;
    ferry_stream *s = new_stream(0);
    unsigned char *src = host_buf(len), *dst = host_buf(len);
    void *d = dev_buf(0, len);
    bytes_fill(src, len, 21);
    memset(dst, 0, len);
    assert_int_equal(copy1(s, FERRY_COPY_H2D, d, src, len), 0);
    assert_int_equal(copy1(s, FERRY_COPY_D2H, dst, d, len), 0);
    sim->stream_destroy(s);
    assert_true(bytes_check(dst, len, 21));
    sim->mem_free(0, d);
    sim->host_free(src);
    sim->host_free(dst);
}

/* ---------------------------------------------------------------- locate */

static void test_locate(void **state)
{
    (void)state;
    int stack_var = 0, dev = -5;
    void *heap = malloc(64);
    void *h = host_buf(4096);
    unsigned char *d0 = dev_buf(0, 1 << 20), *d1 = dev_buf(1, 4096);

    assert_int_equal(sim->locate(&stack_var, sizeof stack_var, &dev), 0);
    assert_int_equal(sim->locate(heap, 64, &dev), 0);
    assert_int_equal(sim->locate(h, 4096, &dev), 0);
    assert_int_equal(sim->locate(NULL, 1, &dev), 0);
    assert_int_equal(sim->locate(d0, 1 << 20, &dev), 1);
    assert_int_equal(dev, 0);
    assert_int_equal(sim->locate(d0 + 12345, 10, &dev), 1);
    assert_int_equal(dev, 0);
    assert_int_equal(sim->locate(d1, 4096, &dev), 1);
    assert_int_equal(dev, 1);

    dev = -5;
    assert_ptr_equal(ferry_device_locate(d1, 4096, &dev), &ferry_device_sim);
    assert_int_equal(dev, 1);
    assert_null(ferry_device_locate(heap, 64, &dev));
    assert_null(ferry_device_locate(h, 4096, &dev));
    assert_null(ferry_device_locate(NULL, 0, &dev));

    sim->mem_free(0, d0);
    sim->mem_free(1, d1);
    sim->host_free(h);
    free(heap);
}

/* ---------------------------------------------------------------- strictness */

static void test_direct_access_crashes(void **state)
{
    (void)state;
    unsigned char *d = dev_buf(0, 4096);
    unsigned char *h = host_buf(4096);
    bytes_fill(h, 4096, 1);
    ferry_stream *s = new_stream(0);
    assert_int_equal(copy1(s, FERRY_COPY_H2D, d, h, 4096), 0);
    assert_int_equal(sim->stream_sync(s), 0);
    sim->stream_destroy(s);

    for (int write = 0; write < 2; write++) {
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            struct rlimit no_core = {0, 0};
            setrlimit(RLIMIT_CORE, &no_core);
            /* Default dispositions, so a sanitizer's handler cannot turn the
             * fault into an exit code. */
            signal(SIGSEGV, SIG_DFL);
            signal(SIGBUS, SIG_DFL);
            volatile unsigned char *p = d + 100;
            if (write)
                *p = 1;
            else
                (void)*p;
            _exit(0);   /* reached only if the access did not fault */
        }
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFSIGNALED(status))
            fail_msg("child %s sim device memory and exited with %d instead of crashing",
                     write ? "wrote" : "read", WEXITSTATUS(status));
        assert_true(WTERMSIG(status) == SIGSEGV || WTERMSIG(status) == SIGBUS);
    }
    sim->mem_free(0, d);
    sim->host_free(h);
}

/* ---------------------------------------------------------------- threads */

struct worker_arg {
    int dev;
    unsigned seed;
    ferry_stream *shared;
    int ok;
};

/* Own stream: many round trips.  Shared stream: enqueue and sync at once
 * with the other threads. */
static void *round_trip_worker(void *p)
{
    struct worker_arg *a = p;
    size_t len = 256 << 10;
    void *hs, *hd, *d;
    ferry_stream *s;
    a->ok = 0;
    if (sim->host_alloc(len, &hs) || sim->host_alloc(len, &hd) ||
        sim->mem_alloc(a->dev, len, &d) || sim->stream_create(a->dev, &s))
        return NULL;
    unsigned char *src = hs, *dst = hd;
    a->ok = 1;
    for (int iter = 0; iter < 40 && a->ok; iter++) {
        ferry_stream *use = iter % 2 ? a->shared : s;
        bytes_fill(src, len, a->seed + (unsigned)iter);
        memset(dst, 0, len);
        struct ferry_copy up[4], down[4];
        for (int k = 0; k < 4; k++) {
            up[k] = (struct ferry_copy){(char *)d + k * (len / 4), src + k * (len / 4), len / 4};
            down[k] = (struct ferry_copy){dst + k * (len / 4), (char *)d + k * (len / 4), len / 4};
        }
        if (sim->copy_async(use, FERRY_COPY_H2D, up, 4) || sim->copy_async(use, FERRY_COPY_D2H, down, 4))
            a->ok = 0;
        int rc;
        if (iter % 3 == 0) {
            while ((rc = sim->stream_query(use)) == FERRY_EBUSY)
                sched_yield();
        } else {
            rc = sim->stream_sync(use);
        }
        if (rc != 0 || !bytes_check(dst, len, a->seed + (unsigned)iter))
            a->ok = 0;
    }
    sim->stream_destroy(s);
    sim->mem_free(a->dev, d);
    sim->host_free(src);
    sim->host_free(dst);
    return NULL;
}

static void test_concurrent_streams(void **state)
{
    enum { THREADS = 6 };
    (void)state;
    ferry_stream *shared[2] = {new_stream(0), new_stream(1)};
    pthread_t t[THREADS];
    struct worker_arg a[THREADS];
    for (int i = 0; i < THREADS; i++) {
        a[i] = (struct worker_arg){i % 2, (unsigned)i * 1000, shared[i % 2], 0};
        assert_int_equal(pthread_create(&t[i], NULL, round_trip_worker, &a[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_true(a[i].ok);
    }
    sim->stream_destroy(shared[0]);
    sim->stream_destroy(shared[1]);
}

/* ---------------------------------------------------------------- config */

#if defined(FERRY_UNDER_ASAN) || defined(FERRY_UNDER_TSAN)
#define UNDER_SANITIZER 1
#endif

/* Runs this program again as "--sim-init" with the given FERRY_SIM_*
 * variables (NULL: unset) and address-space limit (0: none); stores what it
 * printed in out. */
static void run_init_child(const char *devices, const char *mem, rlim_t as_limit, char *out,
                           size_t cap)
{
    int fds[2];
    assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        if (devices)
            setenv("FERRY_SIM_DEVICES", devices, 1);
        else
            unsetenv("FERRY_SIM_DEVICES");
        if (mem)
            setenv("FERRY_SIM_DEVICE_MEM", mem, 1);
        else
            unsetenv("FERRY_SIM_DEVICE_MEM");
        if (as_limit) {
            struct rlimit lim = {as_limit, as_limit};
            setrlimit(RLIMIT_AS, &lim);
        }
        execl("/proc/self/exe", "test_device_sim", "--sim-init", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    size_t got = 0;
    ssize_t r;
    while (got + 1 < cap && (r = read(fds[0], out + got, cap - 1 - got)) > 0)
        got += (size_t)r;
    out[got] = '\0';
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* What "--sim-init" prints: the init result, and for a loaded sim the
 * device count and whether a device holds FERRY_SIM_DEVICE_MEM bytes but not
 * one page more. */
static int init_child_main(void)
{
    const struct ferry_device_ops *ops = ferry_device_find("sim");
    int rc = ops->init();
    if (rc < 0) {
        printf("rc=%d msg=%s\n", rc, ferry_last_error());
        return 0;
    }
    const char *mem = getenv("FERRY_SIM_DEVICE_MEM");
    printf("rc=0 count=%d", ops->device_count());
    if (mem && strcmp(mem, "64M") == 0) {
        void *a = NULL, *b = NULL;
        int full = ops->mem_alloc(0, 64 << 20, &a);
        int more = ops->mem_alloc(0, 4096, &b);
        printf(" full=%d more=%d", full, more);
    }
    printf("\n");
    return 0;
}

static void expect_init(const char *devices, const char *mem, rlim_t as_limit,
                        const char *needle)
{
    char out[1024];
    run_init_child(devices, mem, as_limit, out, sizeof out);
    if (strstr(out, needle) == NULL)
        fail_msg("FERRY_SIM_DEVICES=%s FERRY_SIM_DEVICE_MEM=%s: got \"%s\", want \"%s\"",
                 devices ? devices : "(unset)", mem ? mem : "(unset)", out, needle);
}

static void test_config_from_environment(void **state)
{
    (void)state;
    expect_init(NULL, NULL, 0, "rc=0 count=2");
    expect_init("1", NULL, 0, "rc=0 count=1");
    expect_init("16", "1G", 0, "rc=0 count=16");
    expect_init("1", "64M", 0, "rc=0 count=1 full=0 more=-2");
    expect_init("0", NULL, 0, "rc=-1 msg=FERRY_SIM_DEVICES=\"0\"");
    expect_init("17", NULL, 0, "rc=-1 msg=FERRY_SIM_DEVICES");
    expect_init("two", NULL, 0, "rc=-1 msg=FERRY_SIM_DEVICES");
    expect_init("2", "12X", 0, "rc=-1 msg=FERRY_SIM_DEVICE_MEM=\"12X\"");
    expect_init("2", "1000", 0, "rc=-1 msg=FERRY_SIM_DEVICE_MEM");
    expect_init("2", "2048G", 0, "rc=-1 msg=FERRY_SIM_DEVICE_MEM");
#ifndef UNDER_SANITIZER
    /* A small address space: an explicit size fails with advice, the
     * default shrinks until it fits. */
    rlim_t four_gib = (rlim_t)4 << 30;
    expect_init("2", "16G", four_gib, "rc=-11 msg=sim: cannot map");
    expect_init("2", NULL, four_gib, "rc=0 count=2");
#endif
}

/* Other backends answer ENODEV cleanly when their library is absent. */
static void test_other_backends_absent_or_working(void **state)
{
    (void)state;
    const char *kinds[] = {"cuda", "npu"};
    for (size_t i = 0; i < 2; i++) {
        const struct ferry_device_ops *ops = ferry_device_find(kinds[i]);
        int rc = ops->init();
        if (rc == 0)
            continue;
        assert_int_equal(rc, FERRY_ENODEV);
        assert_true(strlen(ferry_last_error()) > 0);
        assert_int_equal(ops->init(), rc);           /* remembered */
        assert_int_equal(ops->device_count(), 0);
        void *p = NULL;
        assert_int_equal(ops->mem_alloc(0, 16, &p), FERRY_ENODEV);
        int dev;
        int x;
        assert_int_equal(ops->locate(&x, sizeof x, &dev), 0);
    }
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--sim-init") == 0)
        return init_child_main();
    /* Deterministic: two sim devices, whatever the environment says. */
    setenv("FERRY_SIM_DEVICES", "2", 1);
    unsetenv("FERRY_SIM_DEVICE_MEM");
    sim = ferry_device_find("sim");
    if (sim == NULL || sim->init() != 0) {
        fprintf(stderr, "sim init failed: %s\n", ferry_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_location_parse_good),
        cmocka_unit_test(test_location_parse_bad),
        cmocka_unit_test(test_init_and_count),
        cmocka_unit_test(test_alloc_free),
        cmocka_unit_test(test_alloc_exhaust),
        cmocka_unit_test(test_round_trip_sizes),
        cmocka_unit_test(test_batched),
        cmocka_unit_test(test_d2d_within_allocation),
        cmocka_unit_test(test_async_query),
        cmocka_unit_test(test_query_polls_to_done),
        cmocka_unit_test(test_bad_copies_fail_the_stream),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_destroy_drains),
        cmocka_unit_test(test_locate),
        cmocka_unit_test(test_direct_access_crashes),
        cmocka_unit_test(test_concurrent_streams),
        cmocka_unit_test(test_other_backends_absent_or_working),
        cmocka_unit_test(test_config_from_environment),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * stream_faults_common.h — the set-up shared by test_stream_faults.c (refused
 * and failing copies, marks and allocations) and test_stream_faults_held.c
 * (host functions refused after a held copy, a READ that times out): an
 * engine with its own segment on the strict sim device, a peer engine in the
 * same process, the checks that a batch failed and that its accesses ended,
 * and the runner that gives each case a fresh process (--case NAME).
 * Functions are static inline: each program uses only some of them.
 */
#ifndef FERRY_TEST_STREAM_FAULTS_COMMON_H
#define FERRY_TEST_STREAM_FAULTS_COMMON_H

#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "device/device.h"
#include "fake_target.h"
#include "net.h"
#include "testutil.h"
#include "transport/tcp/tcp_wire.h"

#define LEN (64u << 10)
#define FILL_SEED 5
#define DATA_SEED 9
#define BOUND_S 120 /* keeps a broken run from hanging; not a measurement */

struct fixture {
    ferry_engine *e;
    const struct ferry_device_ops *sim;
    ferry_stream *stream;     /* of sim:0 */
    ferry_segment_t self;
    char *own;                /* device memory, registered remote-accessible (the own segment's) */
    char *host;               /* host memory, registered local */
    char *after;              /* what a copy after the submit saw of `own` */
    const char *location;     /* of `own`: "sim:0", or "sim:1" in the wrong-stream case */
};

/* Engine, stream, the buffers and the own segment; own filled with
 * FILL_SEED by copy job 1, host with DATA_SEED. */
static inline void fixture_start(struct fixture *f, const char *location)
{
    memset(f, 0, sizeof *f);
    f->location = location;
    assert_int_equal(ferry_engine_create(NULL, &f->e), 0);
    f->sim = ferry_device_find("sim");
    assert_non_null(f->sim);
    assert_int_equal(f->sim->stream_create(0, &f->stream), 0);
    assert_int_equal(ferry_mem_alloc(f->e, location, LEN, (void **)&f->own), 0);
    assert_int_equal(ferry_register_memory(f->e, f->own, LEN, location, 1), 0);
    f->host = malloc(LEN);
    f->after = calloc(1, LEN);
    assert_non_null(f->host);
    assert_non_null(f->after);
    assert_int_equal(ferry_register_memory(f->e, f->host, LEN, "cpu", 0), 0);
    assert_int_equal(ferry_open_segment(f->e, ferry_engine_segment_name(f->e), &f->self), 0);
    if (strcmp(location, "sim:0") == 0) { /* copy job 1 */
        pattern_fill(f->host, LEN, FILL_SEED, 0);
        struct ferry_copy c = {f->own, f->host, LEN};
        assert_int_equal(f->sim->copy_async(f->stream, FERRY_COPY_H2D, &c, 1), 0);
        assert_int_equal(f->sim->stream_sync(f->stream), 0);
    }
    pattern_fill(f->host, LEN, DATA_SEED, 0);
}

/* ferry_unregister_memory of the fixture's buffers, in a thread: it waits for
 * every access to the range, so one the submit never ended would hold it for
 * ever. */
static inline void *unregister_both(void *arg)
{
    struct fixture *f = arg;
    intptr_t rc = ferry_unregister_memory(f->e, f->own);
    if (!rc)
        rc = ferry_unregister_memory(f->e, f->host);
    return (void *)rc;
}

static inline void assert_accesses_ended(struct fixture *f)
{
    pthread_t th;
    void *rc = (void *)-1;
    assert_int_equal(pthread_create(&th, NULL, unregister_both, f), 0);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += BOUND_S;
    if (pthread_timedjoin_np(th, &rc, &until) != 0)
        fail_msg("unregister did not return: an access of the failed submit was never ended");
    assert_int_equal((intptr_t)rc, 0);
}

static inline void fixture_stop(struct fixture *f)
{
    f->sim->stream_sync(f->stream);
    f->sim->stream_destroy(f->stream);
    ferry_engine_destroy(f->e);
    ferry_mem_free(NULL, f->location, f->own, LEN);
    free(f->host);
    free(f->after);
}

/* One stream-ordered request between host and own (WRITE: host -> own) on
 * f->stream with `location`; with `later`, copy job 3 after it copies own to
 * f->after on the same stream (only where the stream stays healthy: after a
 * copy failed on the device, copy_async may see the sticky error or not,
 * depending on whether the device has run the failed copy yet).  Returns the
 * submit's result; *b is the batch. */
static inline int submit_one(struct fixture *f, int opcode, const char *location, bool later, ferry_batch **b)
{
    assert_int_equal(ferry_batch_alloc(f->e, 1, b), 0);
    struct ferry_request q = {opcode, f->host, f->self, (uint64_t)(uintptr_t)f->own, LEN};
    int rc = ferry_batch_submit_on_stream(*b, &q, 1, location, f->stream);
    if (later) {
        struct ferry_copy c = {f->after, f->own, LEN};
        assert_int_equal(f->sim->copy_async(f->stream, FERRY_COPY_D2H, &c, 1), 0);
    }
    return rc;
}

/* The batch ended FAILED with `code`, its message naming `why`. */
static inline void assert_failed(ferry_batch *b, int code, const char *why)
{
    assert_int_equal(ferry_batch_wait(b, -1), code);
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    assert_int_equal(st.state, FERRY_FAILED);
    assert_int_equal(st.error, code);
    assert_int_equal(st.transferred, 0);
    if (!strstr(st.message, why))
        fail_msg("the request's message \"%s\" does not name \"%s\"", st.message, why);
}

/* Another engine of this process with registered host memory (PEER_SEED)
 * and its segment opened from f->e. */
#define PEER_SEED 33
struct peer {
    ferry_engine *e;
    char *mem;
    ferry_segment_t seg;
};

static inline void peer_start(struct fixture *f, struct peer *p)
{
    assert_int_equal(ferry_engine_create(NULL, &p->e), 0);
    p->mem = malloc(LEN);
    assert_non_null(p->mem);
    pattern_fill(p->mem, LEN, PEER_SEED, 0);
    assert_int_equal(ferry_register_memory(p->e, p->mem, LEN, "cpu", 1), 0);
    assert_int_equal(ferry_open_segment(f->e, ferry_engine_segment_name(p->e), &p->seg), 0);
}

static inline void peer_stop(struct peer *p)
{
    ferry_engine_destroy(p->e);
    free(p->mem);
}

/* ------------------------------------------------------------ runner */

struct named_case {
    const char *name;
    CMUnitTestFunction fn;
};
#define COUNT(a) (sizeof(a) / sizeof(a)[0])

static inline void in_fresh_process(void **state)
{
    assert_int_equal(test_case_in_fresh_process(*state), 0);
}

static inline int run_list(const char *group, const struct named_case *list, size_t n)
{
    struct CMUnitTest tests[32];
    assert_true(n <= COUNT(tests));
    for (size_t i = 0; i < n; i++)
        tests[i] = (struct CMUnitTest){list[i].name, in_fresh_process, NULL, NULL, (void *)list[i].name};
    return _cmocka_run_group_tests(group, tests, n, NULL, NULL);
}

/* main of either program: one case (--case NAME) in this process, or every
 * case of `list`, each in a fresh process. */
static inline int stream_faults_main(int argc, char **argv, const char *group, const struct named_case *list,
                                     size_t n)
{
    if (argc == 3 && strcmp(argv[1], "--case") == 0) {
        for (size_t i = 0; i < n; i++)
            if (strcmp(argv[2], list[i].name) == 0) {
                const struct CMUnitTest one[] = {{argv[2], list[i].fn, NULL, NULL, NULL}};
                return cmocka_run_group_tests_name(argv[2], one, NULL, NULL);
            }
        fprintf(stderr, "no case %s\n", argv[2]);
        return 2;
    }
    return run_list(group, list, n);
}

#endif

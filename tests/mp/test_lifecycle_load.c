/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_lifecycle_load.c — handles and memory going away while several
 * threads keep batches in flight over tcp:
 *   - ferry_close_segment of one target while threads transfer to it and
 *     another thread to a second target: every request ends (COMPLETED, or
 *     FAILED/TIMEOUT with a code and a message), later submits to the closed
 *     handle fail FERRY_ENOSEG, the other target's transfers all land;
 *   - ferry_unregister_memory of one thread's buffer while it and others
 *     transfer: its later submits fail FERRY_ENOTREG, nothing lands in it
 *     after the call returns, the other threads are unharmed;
 *   - ferry_engine_destroy with batches of several threads in flight, then
 *     ferry_batch_free of each (the only call the API still allows);
 *   - four threads that each open the same segment, submit to it and close
 *     it, over and over: a handle another thread closed fails the submit
 *     with FERRY_ENOSEG or cancels its requests, nothing worse.
 * After each, no thread or descriptor of the engine is left.  Progress is
 * ordered by counters the workers publish, never by sleeping: a phase starts
 * once every worker has finished a number of batches.
 *
 * Threads: the targets are child processes; workers are threads of this
 * process sharing one initiator engine.
 */
#include <dirent.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "ferry.h"
#include "net.h"
#include "testutil.h"

#define KIB 1024u
#define BLOCK (64u * KIB)
#define NREQ 16                        /* requests per batch */
#define REGION ((size_t)NREQ * BLOCK)  /* one worker's bytes, local and remote */
#define NWORKERS 4
#define TARGET_LEN (NWORKERS * REGION)
#define SEED 9
#define GUARD_S 120.0                  /* only a hang reaches it */

static struct child_target target_a, target_b;

/* ------------------------------------------------------------ helpers */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sleep_ms(unsigned ms)
{
    struct timespec t = {0, (long)ms * 1000000L};
    nanosleep(&t, NULL);
}

static struct census baseline; /* the process before any case (the targets' pipes and sockets) */

static void census_same(struct census before)
{
    struct census after = census_settled(before, 10000); /* a joined thread may be listed a moment */
    if (after.threads != before.threads || after.fds != before.fds)
        fail_msg("left behind: %d threads, %d descriptors", after.threads - before.threads, after.fds - before.fds);
}

static ferry_engine *initiator(void)
{
    struct ferry_config cfg;
    ferry_engine *e;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.request_timeout_ms = 20000;
    cfg.connect_timeout_ms = 5000;
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    return e;
}

/* TARGET_LEN bytes of host memory for the workers' regions (the caller frees
 * it), registered with e as one buffer when `whole`. */
static char *workers_memory(ferry_engine *e, bool whole)
{
    char *mem = malloc(TARGET_LEN);
    assert_non_null(mem);
    if (whole)
        assert_int_equal(ferry_register_memory(e, mem, TARGET_LEN, "cpu", 0), 0);
    return mem;
}

/* ------------------------------------------------------------ workers */

struct worker {
    pthread_t thread;
    ferry_engine *e;
    ferry_segment_t seg;
    uint64_t remote;            /* its region in the target */
    char *local;                /* its registered region here */
    bool submit_only;           /* submit `keep` batches, do not wait, keep them */
    const char *churn;          /* non-NULL: open this segment before each batch, close it after */
    int rounds;                 /* churn: how many */
    atomic_int opened, closed;  /* churn: successful opens and closes */
    ferry_batch *kept[8];
    int nkept;
    atomic_bool stop;
    atomic_int batches;         /* finished batches */
    atomic_int failed;          /* requests that ended FAILED/TIMEOUT */
    atomic_int last_error;      /* the code of the last of them */
    atomic_int bad;             /* requests that ended without a code or message */
    atomic_int submit_rc;       /* the submit (or open) error that ended the loop, 0 if none */
};

/* Worker i on e: region i of mem here, region i of target t there (through
 * seg; 0 for a churning worker, which opens its own). */
static void worker_aim(struct worker *w, int i, ferry_engine *e, char *mem, ferry_segment_t seg,
                       const struct child_target *t)
{
    w->e = e;
    w->seg = seg;
    w->remote = t->addr + (uint64_t)i * REGION;
    w->local = mem + (size_t)i * REGION;
}

/* Half WRITE, half READ, each block its own request.  A worker that keeps
 * its 8 batches in flight WRITEs an eighth of each block per batch, each
 * batch its own eighth: no two requests in flight touch the same bytes. */
static void fill_requests(struct worker *w, struct ferry_request *r)
{
    for (int i = 0; i < NREQ; i++) {
        uint64_t at = (uint64_t)i * BLOCK;
        if (w->submit_only)
            r[i] = (struct ferry_request){FERRY_WRITE, w->local + at, w->seg,
                                          w->remote + at + (uint64_t)w->nkept * (BLOCK / 8), BLOCK / 8};
        else
            r[i] = (struct ferry_request){i % 2 ? FERRY_READ : FERRY_WRITE, w->local + at, w->seg, w->remote + at,
                                          BLOCK};
    }
}

static void check_ended(struct worker *w, ferry_batch *b)
{
    for (int i = 0; i < NREQ; i++) {
        struct ferry_status st;
        if (ferry_batch_status(b, (size_t)i, &st) != 0) {
            atomic_fetch_add(&w->bad, 1);
            continue;
        }
        if (st.state == FERRY_COMPLETED)
            continue;
        atomic_fetch_add(&w->failed, 1);
        atomic_store(&w->last_error, st.error);
        if (!(st.state == FERRY_FAILED || st.state == FERRY_TIMEOUT) || st.error >= 0 || !st.message[0]) {
            print_message("  request ended in state %d, %s: \"%s\"\n", st.state, ferry_err_name(st.error),
                          st.message);
            atomic_fetch_add(&w->bad, 1);
        }
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct ferry_request r[NREQ];
    while (!atomic_load(&w->stop) && !(w->submit_only && w->nkept == 8)) {
        if (w->churn && atomic_load(&w->batches) == w->rounds)
            break;
        if (w->churn) {
            int rc = ferry_open_segment(w->e, w->churn, &w->seg);
            if (rc) {
                atomic_store(&w->submit_rc, rc);
                break;
            }
            atomic_fetch_add(&w->opened, 1);
        }
        ferry_batch *b;
        if (ferry_batch_alloc(w->e, NREQ, &b) != 0) {
            atomic_fetch_add(&w->bad, 1);
            break;
        }
        fill_requests(w, r);
        int rc = ferry_batch_submit(b, r, NREQ);
        if (rc && w->churn && rc == FERRY_ENOSEG) { /* another thread closed the handle first */
            ferry_batch_free(b);
            atomic_fetch_add(&w->batches, 1);
            continue;
        }
        if (rc) {
            atomic_store(&w->submit_rc, rc);
            ferry_batch_free(b);
            break;
        }
        if (w->submit_only) {
            w->kept[w->nkept++] = b;
            continue;
        }
        ferry_batch_wait(b, (int)(GUARD_S * 1000)); /* past the guard, check_ended finds requests pending */
        check_ended(w, b);
        ferry_batch_free(b);
        if (w->churn) {
            rc = ferry_close_segment(w->e, w->seg);
            if (rc == 0)
                atomic_fetch_add(&w->closed, 1);
            else if (rc != FERRY_ENOSEG)
                atomic_fetch_add(&w->bad, 1);
        }
        atomic_fetch_add(&w->batches, 1);
    }
    return NULL;
}

static void workers_start(struct worker *w, int n)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(pthread_create(&w[i].thread, NULL, worker_main, &w[i]), 0);
}

/* Waits until every worker of w[0..n) has finished `count` batches (or
 * stopped on its own). */
static void workers_reach(struct worker *w, int n, int count)
{
    double end = now_s() + GUARD_S;
    for (int i = 0; i < n; i++)
        while (atomic_load(&w[i].batches) < count && !atomic_load(&w[i].submit_rc)) {
            if (now_s() > end)
                fail_msg("worker %d finished only %d batches", i, atomic_load(&w[i].batches));
            sleep_ms(5);
        }
}

static void workers_join(struct worker *w, int n)
{
    for (int i = 0; i < n; i++) {
        atomic_store(&w[i].stop, true);
        pthread_join(w[i].thread, NULL);
    }
}

/* ------------------------------------------------------------ tests */

static void *nothing(void *arg)
{
    return arg;
}

static int group_setup(void **state)
{
    (void)state;
    /* a sanitizer's runtime starts its own thread at the first pthread_create: before any census */
    pthread_t th;
    if (pthread_create(&th, NULL, nothing, NULL) != 0 || pthread_join(th, NULL) != 0)
        return -1;
    if (child_target_start(&target_a, TARGET_LEN, "cpu", SEED) ||
        child_target_start(&target_b, TARGET_LEN, "cpu", SEED))
        return -1;
    baseline = census_now();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    child_target_kill(&target_a);
    child_target_kill(&target_b);
    return 0;
}

/* Three threads transfer to A, one to B; A's handle is closed under them. */
static void test_close_segment_under_load(void **state)
{
    (void)state;
    struct census before = census_settled(baseline, 10000);
    ferry_engine *e = initiator();
    char *mem = workers_memory(e, true);
    ferry_segment_t a, b;
    assert_int_equal(ferry_open_segment(e, target_a.name, &a), 0);
    assert_int_equal(ferry_open_segment(e, target_b.name, &b), 0);
    struct worker w[NWORKERS];
    memset(w, 0, sizeof w);
    for (int i = 0; i < NWORKERS; i++) {
        bool to_a = i < NWORKERS - 1;
        worker_aim(&w[i], i, e, mem, to_a ? a : b, to_a ? &target_a : &target_b);
    }
    workers_start(w, NWORKERS);
    workers_reach(w, NWORKERS, 3);
    assert_int_equal(ferry_close_segment(e, a), 0);
    /* A's workers run into the closed handle and stop; B's goes on unharmed */
    int b_done = atomic_load(&w[NWORKERS - 1].batches);
    workers_reach(&w[NWORKERS - 1], 1, b_done + 3);
    double end = now_s() + GUARD_S;
    for (int i = 0; i < NWORKERS - 1; i++)
        while (!atomic_load(&w[i].submit_rc) && now_s() < end)
            sleep_ms(5);
    workers_join(w, NWORKERS);
    for (int i = 0; i < NWORKERS - 1; i++) {
        int rc = atomic_load(&w[i].submit_rc);
        print_message("  A worker %d: %d batches, %d requests failed (last: %s), then submit: %s\n", i,
                      atomic_load(&w[i].batches), atomic_load(&w[i].failed),
                      ferry_err_name(atomic_load(&w[i].last_error)), ferry_err_name(rc));
        assert_int_equal(atomic_load(&w[i].submit_rc), FERRY_ENOSEG);
        assert_int_equal(atomic_load(&w[i].bad), 0);
        if (atomic_load(&w[i].failed)) /* ferry.h: requests still using a closed handle fail FERRY_ECANCELED */
            assert_int_equal(atomic_load(&w[i].last_error), FERRY_ECANCELED);
    }
    assert_int_equal(atomic_load(&w[NWORKERS - 1].bad), 0);
    assert_int_equal(atomic_load(&w[NWORKERS - 1].failed), 0);
    assert_int_equal(atomic_load(&w[NWORKERS - 1].submit_rc), 0);
    assert_int_equal(ferry_close_segment(e, a), FERRY_ENOSEG);
    ferry_unregister_memory(e, mem);
    ferry_engine_destroy(e);
    free(mem);
    census_same(before);
}

/* Four threads transfer to A from their own registrations; worker 0's is
 * unregistered under it. */
static void test_unregister_under_load(void **state)
{
    (void)state;
    struct census before = census_settled(baseline, 10000);
    ferry_engine *e = initiator();
    char *mem = workers_memory(e, false);
    ferry_segment_t a;
    assert_int_equal(ferry_open_segment(e, target_a.name, &a), 0);
    struct worker w[NWORKERS];
    memset(w, 0, sizeof w);
    for (int i = 0; i < NWORKERS; i++) {
        worker_aim(&w[i], i, e, mem, a, &target_a);
        assert_int_equal(ferry_register_memory(e, w[i].local, REGION, "cpu", 0), 0);
    }
    workers_start(w, NWORKERS);
    workers_reach(w, NWORKERS, 3);
    assert_int_equal(ferry_unregister_memory(e, w[0].local), 0);
    /* nothing may land in it from here on: READs in flight were waited for or cancelled */
    memset(w[0].local, 0xab, REGION);
    int done[NWORKERS];
    for (int i = 1; i < NWORKERS; i++)
        done[i] = atomic_load(&w[i].batches);
    for (int i = 1; i < NWORKERS; i++)
        workers_reach(&w[i], 1, done[i] + 3);
    double end = now_s() + GUARD_S;
    while (!atomic_load(&w[0].submit_rc) && now_s() < end)
        sleep_ms(5);
    workers_join(w, NWORKERS);
    print_message("  worker 0: %d batches, %d requests failed (last: %s), then submit: %s\n",
                  atomic_load(&w[0].batches), atomic_load(&w[0].failed), ferry_err_name(atomic_load(&w[0].last_error)),
                  ferry_err_name(atomic_load(&w[0].submit_rc)));
    assert_int_equal(atomic_load(&w[0].submit_rc), FERRY_ENOTREG);
    for (size_t i = 0; i < REGION; i++)
        if ((unsigned char)w[0].local[i] != 0xab)
            fail_msg("byte %zu of the unregistered buffer changed after ferry_unregister_memory returned", i);
    for (int i = 0; i < NWORKERS; i++)
        assert_int_equal(atomic_load(&w[i].bad), 0);
    for (int i = 1; i < NWORKERS; i++) {
        assert_int_equal(atomic_load(&w[i].failed), 0);
        assert_int_equal(atomic_load(&w[i].submit_rc), 0);
        ferry_unregister_memory(e, w[i].local);
    }
    ferry_engine_destroy(e);
    free(mem);
    census_same(before);
}

/* Four threads each leave 8 batches in flight (two targets); the engine is
 * destroyed under them, then each batch is freed. */
static void test_destroy_with_batches_in_flight(void **state)
{
    (void)state;
    struct census before = census_settled(baseline, 10000);
    for (int round = 0; round < 3; round++) {
        ferry_engine *e = initiator();
        char *mem = workers_memory(e, true);
        ferry_segment_t a, b;
        assert_int_equal(ferry_open_segment(e, target_a.name, &a), 0);
        assert_int_equal(ferry_open_segment(e, target_b.name, &b), 0);
        struct worker w[NWORKERS];
        memset(w, 0, sizeof w);
        for (int i = 0; i < NWORKERS; i++) {
            worker_aim(&w[i], i, e, mem, i % 2 ? a : b, i % 2 ? &target_a : &target_b);
            w[i].submit_only = true;
        }
        workers_start(w, NWORKERS);
        for (int i = 0; i < NWORKERS; i++)
            pthread_join(w[i].thread, NULL); /* no other thread is inside a call: destroy may run */
        ferry_engine_destroy(e);
        for (int i = 0; i < NWORKERS; i++) {
            assert_int_equal(atomic_load(&w[i].submit_rc), 0);
            assert_int_equal(w[i].nkept, 8);
            for (int k = 0; k < w[i].nkept; k++)
                ferry_batch_free(w[i].kept[k]);
        }
        free(mem);
    }
    census_same(before);
}

/* Four threads open, use and close the same segment, 20 times each. */
static void test_open_close_churn(void **state)
{
    (void)state;
    struct census before = census_settled(baseline, 10000);
    ferry_engine *e = initiator();
    char *mem = workers_memory(e, true);
    struct worker w[NWORKERS];
    memset(w, 0, sizeof w);
    for (int i = 0; i < NWORKERS; i++) {
        worker_aim(&w[i], i, e, mem, 0, &target_a);
        w[i].churn = target_a.name;
        w[i].rounds = 20;
    }
    workers_start(w, NWORKERS);
    for (int i = 0; i < NWORKERS; i++)
        pthread_join(w[i].thread, NULL);
    int opened = 0, closed = 0;
    for (int i = 0; i < NWORKERS; i++) {
        assert_int_equal(atomic_load(&w[i].submit_rc), 0);
        assert_int_equal(atomic_load(&w[i].bad), 0);
        assert_int_equal(atomic_load(&w[i].batches), 20);
        opened += atomic_load(&w[i].opened);
        closed += atomic_load(&w[i].closed);
    }
    print_message("  %d opens, %d closes that found the handle\n", opened, closed);
    assert_int_equal(opened, NWORKERS * 20);
    assert_true(closed >= 1 && closed <= opened);
    ferry_unregister_memory(e, mem);
    ferry_engine_destroy(e);
    free(mem);
    census_same(before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_segment_under_load),
        cmocka_unit_test(test_unregister_under_load),
        cmocka_unit_test(test_destroy_with_batches_in_flight),
        cmocka_unit_test(test_open_close_churn),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

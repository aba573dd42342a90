/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_shm_ipc_retry.c — a peer's device buffer that could not be opened
 * here once (its IPC handle) is opened again at the next transfer, not
 * failed forever from a cached error.
 *
 * The initiator runs on a small sim device (FERRY_SIM_DEVICE_MEM) and fills
 * it, so opening the child target's sim buffer (sim_ipc_open maps it over a
 * fresh allocation of this device) fails with FERRY_ENOMEM: every request
 * of the first batch FAILS, naming the segment.  The initiator frees its
 * memory; the second batch must move and verify everything.  Before the fix
 * shm_frame.c's remote_device_ptr kept the first error per (peer, buffer,
 * device) until the segment closed, so the second batch failed too.
 *
 * Both paths that open the handle: a submitting thread's job (sim -> sim)
 * and a worker (cpu -> sim).  Each case runs in a fresh process (the sim
 * device reads its size once).  Single-threaded test code; the engine's
 * threads run the copies.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ferry.h"
#include "testutil.h"

#define BLOCK (16u << 10)
#define NREQ 16u
#define TSIZE ((size_t)NREQ * BLOCK)
#define TSEED 7
#define HOG (64u << 10)   /* smaller than the target's buffer: what is left cannot hold it */
#define MAX_HOGS 1024
#define GUARD_MS 120000 /* a hang guard only */

struct scenario {
    const char *name;
    const char *local;
};

static const struct scenario scenarios[] = {
    {"retry_after_open_failed_job", "sim:0"},  /* a submitting thread's job opens it */
    {"retry_after_open_failed_worker", "cpu"}, /* a worker opens it (H2D) */
};
#define NSCENARIOS (sizeof scenarios / sizeof scenarios[0])

static ferry_batch *write_all(ferry_engine *e, ferry_segment_t seg, char *local, uint64_t remote)
{
    struct ferry_request r[NREQ];
    for (unsigned i = 0; i < NREQ; i++)
        r[i] = (struct ferry_request){FERRY_WRITE, local + i * BLOCK, seg, remote + i * BLOCK, BLOCK};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(e, NREQ, &b), 0);
    assert_int_equal(ferry_batch_submit(b, r, NREQ), 0);
    assert_int_not_equal(ferry_batch_wait(b, GUARD_MS), FERRY_ETIMEDOUT);
    return b;
}

static void open_fails_then_succeeds(void **state)
{
    const struct scenario *s = *state;
    struct child_target target;
    setenv("FERRY_PROTOCOLS", "shm", 1);
    unsetenv("FERRY_SIM_DEVICE_MEM"); /* the target's device is the default */
    assert_int_equal(child_target_start(&target, TSIZE, "sim:0", TSEED), 0);
    setenv("FERRY_SIM_DEVICE_MEM", "16M", 1); /* this process's */

    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = "shm";
    cfg.request_timeout_ms = 60000;
    ferry_engine *e;
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    static char host[TSIZE];
    char *local;
    assert_int_equal(ferry_mem_alloc(e, s->local, TSIZE, (void **)&local), 0);
    assert_int_equal(ferry_register_memory(e, local, TSIZE, s->local, 0), 0);
    pattern_fill(host, TSIZE, 21, 0);
    assert_int_equal(ferry_mem_copy(e, local, host, TSIZE), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, target.name, &seg), 0);

    /* this process's sim device full: the target's buffer cannot be mapped here */
    void *hogs[MAX_HOGS];
    unsigned nhogs = 0;
    while (nhogs < MAX_HOGS && ferry_mem_alloc(e, "sim:0", HOG, &hogs[nhogs]) == 0)
        nhogs++;
    assert_true(nhogs > 0 && nhogs < MAX_HOGS);

    ferry_batch *b = write_all(e, seg, local, target.addr);
    for (unsigned i = 0; i < NREQ; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        if (i == 0)
            print_message("%s: full device: %s (%s)\n", s->name, ferry_err_name(st.error), st.message);
        assert_int_equal(st.state, FERRY_FAILED);
        assert_int_equal(st.error, FERRY_ENOMEM);
        assert_non_null(strstr(st.message, target.name));
    }
    ferry_batch_free(b);

    /* room again: the next transfer opens the buffer and moves everything */
    while (nhogs > 0)
        ferry_mem_free(e, "sim:0", hogs[--nhogs], HOG);
    b = write_all(e, seg, local, target.addr);
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    if (st.state != FERRY_COMPLETED)
        print_message("%s: after freeing: %s (%s)\n", s->name, ferry_err_name(st.error), st.message);
    assert_int_equal(ferry_batch_wait(b, GUARD_MS), 0);
    ferry_batch_free(b);
    assert_int_equal(child_target_check(&target, 0, TSIZE, 21), -1);

    ferry_mem_free(e, s->local, local, TSIZE);
    ferry_engine_destroy(e);
    child_target_kill(&target);
}

static void in_fresh_process(void **state)
{
    assert_int_equal(test_case_in_fresh_process(*state), 0);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--case") == 0) {
        for (size_t i = 0; i < NSCENARIOS; i++) {
            if (strcmp(argv[2], scenarios[i].name) == 0) {
                const struct CMUnitTest one[] = {
                    {argv[2], open_fails_then_succeeds, NULL, NULL, (void *)&scenarios[i]}};
                return cmocka_run_group_tests_name(argv[2], one, NULL, NULL);
            }
        }
        fprintf(stderr, "no case %s\n", argv[2]);
        return 2;
    }
    struct CMUnitTest tests[NSCENARIOS];
    for (size_t i = 0; i < NSCENARIOS; i++)
        tests[i] = (struct CMUnitTest){scenarios[i].name, in_fresh_process, NULL, NULL, (void *)scenarios[i].name};
    return cmocka_run_group_tests_name("shm: a failed IPC open is retried", tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_sim_fault.c — the sim device's fault injection, FERRY_SIM_FAIL_COPY
 * (read once, when the device loads: this program sets it before): a copy
 * job named "N" fails when the device runs it (nothing of it lands; the
 * stream's error is sticky, as a CUDA fault is), one named "N:start" is
 * refused by copy_async itself (nothing queued; the stream goes on); the
 * others run.  Malformed settings fail the device's init with FERRY_EINVAL
 * naming the variable (each in a forked child: the load happens once per
 * process), and so do malformed FERRY_SIM_HOLD_COPY and
 * FERRY_SIM_SYNC_TIMEOUT_MS settings.  stream_then,
 * sim's function on a stream: run once the copies before it are done, never
 * after a failed one, as CUDA's cuLaunchHostFunc.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "device/device.h"
#include "err.h"

#define LEN 8192

static const struct ferry_device_ops *sim;

static int copy1(ferry_stream *s, enum ferry_copy_dir dir, void *dst, const void *src, size_t len)
{
    struct ferry_copy c = {dst, src, len};
    return sim->copy_async(s, dir, &c, 1);
}

/* Set in main: jobs 2 and 5 fail when run, job 3 at its start. */
static void test_injected_faults(void **state)
{
    (void)state;
    char *host, *back, *dev;
    ferry_stream *s;
    assert_int_equal(sim->host_alloc(LEN, (void **)&host), 0);
    assert_int_equal(sim->host_alloc(LEN, (void **)&back), 0);
    assert_int_equal(sim->mem_alloc(0, LEN, (void **)&dev), 0);
    assert_int_equal(sim->stream_create(0, &s), 0);

    memset(host, 0x11, LEN);
    assert_int_equal(copy1(s, FERRY_COPY_H2D, dev, host, LEN), 0); /* job 1 */
    assert_int_equal(sim->stream_sync(s), 0);

    memset(host, 0x22, LEN);
    assert_int_equal(copy1(s, FERRY_COPY_H2D, dev, host, LEN), 0); /* job 2: queued, fails when run */
    assert_int_equal(sim->stream_sync(s), FERRY_EIO);
    assert_non_null(strstr(ferry_last_error(), "sim:0: copy job 2 (H2D, 1 copies) failed on the device"));
    assert_non_null(strstr(ferry_last_error(), "FERRY_SIM_FAIL_COPY"));
    assert_int_equal(sim->stream_query(s), FERRY_EIO); /* sticky */
    sim->stream_destroy(s);

    assert_int_equal(sim->stream_create(0, &s), 0);
    assert_int_equal(copy1(s, FERRY_COPY_D2H, back, dev, LEN), FERRY_EIO); /* job 3: refused at start */
    assert_non_null(strstr(ferry_last_error(), "copy job 3 (D2H, 1 copies) rejected at start"));
    assert_int_equal(sim->stream_query(s), 0); /* nothing queued, nothing sticky */
    memset(back, 0, LEN);
    assert_int_equal(copy1(s, FERRY_COPY_D2H, back, dev, LEN), 0); /* job 4 */
    assert_int_equal(sim->stream_sync(s), 0);
    for (size_t i = 0; i < LEN; i++) /* job 2 landed nothing */
        assert_int_equal(back[i], 0x11);

    assert_int_equal(copy1(s, FERRY_COPY_H2D, dev, host, LEN), 0); /* job 5: fails when run */
    assert_int_equal(sim->stream_sync(s), FERRY_EIO);
    assert_int_equal(copy1(s, FERRY_COPY_H2D, dev, host, LEN), FERRY_EIO); /* job 6: the sticky error */
    assert_non_null(strstr(ferry_last_error(), "copy job 5"));
    sim->stream_destroy(s);

    assert_int_equal(sim->stream_create(0, &s), 0);
    assert_int_equal(copy1(s, FERRY_COPY_H2D, dev, host, LEN), 0); /* job 7 runs */
    assert_int_equal(copy1(s, FERRY_COPY_D2H, back, dev, LEN), 0);
    assert_int_equal(sim->stream_sync(s), 0);
    for (size_t i = 0; i < LEN; i++)
        assert_int_equal(back[i], 0x22);
    sim->stream_destroy(s);
    sim->mem_free(0, dev);
    sim->host_free(host);
    sim->host_free(back);
}

/* init() in a fresh child with var=value: 0 if it loaded, 1 if it failed
 * FERRY_EINVAL naming the variable, 2 otherwise. */
static int init_var(const char *var, const char *value)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv(var, value, 1);
        int rc = sim->init();
        if (rc == 0)
            _exit(0);
        _exit(rc == FERRY_EINVAL && strstr(ferry_last_error(), var) ? 1 : 2);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static int init_with(const char *value)
{
    return init_var("FERRY_SIM_FAIL_COPY", value);
}

/* FERRY_SIM_HOLD_COPY wants N:path. */
static void test_hold_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {"x", "0:/tmp/h", "3", "3:", "3/tmp/h", "-1:/tmp/h"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        print_message("FERRY_SIM_HOLD_COPY=\"%s\"\n", bad[i]);
        assert_int_equal(init_var("FERRY_SIM_HOLD_COPY", bad[i]), 1);
    }
    assert_int_equal(init_var("FERRY_SIM_HOLD_COPY", "4:/tmp/ferry-no-such-hold"), 0);
}

/* FERRY_SIM_SYNC_TIMEOUT_MS wants 0..600000. */
static void test_sync_timeout_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {"x", "-1", "600001", "300ms", " 3", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        print_message("FERRY_SIM_SYNC_TIMEOUT_MS=\"%s\"\n", bad[i]);
        assert_int_equal(init_var("FERRY_SIM_SYNC_TIMEOUT_MS", bad[i]), 1);
    }
    assert_int_equal(init_var("FERRY_SIM_SYNC_TIMEOUT_MS", "0"), 0);
    assert_int_equal(init_var("FERRY_SIM_SYNC_TIMEOUT_MS", "600000"), 0);
}

/* FERRY_SIM_H2D_DELAY_US wants 0..1000000. */
static void test_h2d_delay_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {"x", "-1", "1000001", "5ms", " 3", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        print_message("FERRY_SIM_H2D_DELAY_US=\"%s\"\n", bad[i]);
        assert_int_equal(init_var("FERRY_SIM_H2D_DELAY_US", bad[i]), 1);
    }
    assert_int_equal(init_var("FERRY_SIM_H2D_DELAY_US", "0"), 0);
    assert_int_equal(init_var("FERRY_SIM_H2D_DELAY_US", "1000000"), 0);
}

static void then_fn(void *arg)
{
    __atomic_store_n((int *)arg, 1, __ATOMIC_RELEASE);
}

/* stream_then: runs once the copies before it are done (sync returns after
 * it); never after a failed copy (as cuLaunchHostFunc).  And the thread
 * copy wrappers refuse a thread with no copy in flight.  Copy jobs 8 on
 * (none injected); the failure is an illegal address. */
static void test_stream_then(void **state)
{
    (void)state;
    char *host, *dev, *gone;
    ferry_stream *s;
    int ran = 0, ran_after_failure = 0;
    assert_int_equal(sim->host_alloc(LEN, (void **)&host), 0);
    assert_int_equal(sim->mem_alloc(0, LEN, (void **)&dev), 0);
    assert_int_equal(sim->mem_alloc(0, LEN, (void **)&gone), 0);
    sim->mem_free(0, gone);
    assert_int_equal(sim->stream_create(0, &s), 0);
    memset(host, 0x33, LEN);
    assert_int_equal(copy1(s, FERRY_COPY_H2D, dev, host, LEN), 0);
    assert_int_equal(sim->stream_then(s, then_fn, &ran), 0);
    assert_int_equal(sim->stream_sync(s), 0);
    assert_int_equal(__atomic_load_n(&ran, __ATOMIC_ACQUIRE), 1);
    assert_int_equal(copy1(s, FERRY_COPY_H2D, gone, host, LEN), 0); /* fails when run */
    assert_int_equal(sim->stream_then(s, then_fn, &ran_after_failure), 0);
    assert_int_equal(sim->stream_sync(s), FERRY_EIO);
    sim->stream_destroy(s); /* its worker has run (or dropped) every job */
    assert_int_equal(ran_after_failure, 0);
    assert_int_equal(sim->stream_then(NULL, then_fn, &ran), FERRY_EINVAL);

    assert_int_equal(ferry_device_copy_then(then_fn, &ran), FERRY_EINVAL); /* nothing in flight */
    assert_non_null(strstr(ferry_last_error(), "no device copy in flight"));
    uint32_t *mark;
    assert_int_equal(sim->host_alloc(64, (void **)&mark), 0);
    *mark = 0;
    assert_int_equal(ferry_device_copy_mark(mark, 1), FERRY_EINVAL);
    struct ferry_copy c = {dev, host, LEN};
    assert_int_equal(ferry_device_copy_start(sim, 0, FERRY_COPY_H2D, &c, 1), 0);
    ran = 0;
    assert_int_equal(ferry_device_copy_mark(mark, 7), 0);
    assert_int_equal(ferry_device_copy_then(then_fn, &ran), 0);
    assert_int_equal(ferry_device_copy_wait(), 0);
    assert_int_equal(__atomic_load_n(&ran, __ATOMIC_ACQUIRE), 1);
    assert_int_equal(__atomic_load_n(mark, __ATOMIC_ACQUIRE), 7);
    sim->host_free(mark);
    sim->mem_free(0, dev);
    sim->host_free(host);
}

static void test_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {"x", "0", "-1", "3:stop", "3,", ",3", "3;4", "1,2,3,4,5,6,7,8,9",
                                      "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        print_message("FERRY_SIM_FAIL_COPY=\"%s\"\n", bad[i]);
        assert_int_equal(init_with(bad[i]), 1);
    }
    assert_int_equal(init_with(""), 0);
    assert_int_equal(init_with("1,2:start,3,4,5,6,7,8"), 0);
}

int main(void)
{
    sim = ferry_device_find("sim");
    /* the forked children of test_malformed load their own copy first */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_hold_malformed),
        cmocka_unit_test(test_sync_timeout_malformed),
        cmocka_unit_test(test_h2d_delay_malformed),
        cmocka_unit_test(test_injected_faults),
        cmocka_unit_test(test_stream_then),
    };
    setenv("FERRY_SIM_FAIL_COPY", "2,3:start,5", 1);
    return cmocka_run_group_tests(tests, NULL, NULL);
}

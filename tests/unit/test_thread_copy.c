/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_thread_copy.c — ferry_device_copy_sync against a fake device whose
 * streams log what happens to them: a copy that fails to be queued (after
 * some of the batch may have been) is drained with a stream sync before the
 * stream is destroyed and the error returned, so nothing of it still runs
 * when the caller ends its access to the memory; a copy that fails at sync
 * renews the stream; a good one reuses it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "device/device.h"
#include "err.h"

static char log_buf[256];
static int fail_async, fail_sync, streams;

static void note(const char *what)
{
    strncat(log_buf, what, sizeof log_buf - strlen(log_buf) - 1);
}

static int fake_stream_create(int dev, ferry_stream **out)
{
    (void)dev;
    *out = (ferry_stream *)(uintptr_t)++streams;
    note("create ");
    return 0;
}

static void fake_stream_destroy(ferry_stream *s)
{
    (void)s;
    note("destroy ");
}

static int fake_copy_async(ferry_stream *s, enum ferry_copy_dir dir, const struct ferry_copy *c, size_t n)
{
    (void)s, (void)dir, (void)c, (void)n;
    note("async ");
    return fail_async ? ferry_fail(FERRY_EIO, "fake: copy 1 of %zu refused", n) : 0;
}

static int fake_stream_sync(ferry_stream *s)
{
    (void)s;
    note("sync ");
    return fail_sync ? ferry_fail(FERRY_EIO, "fake: copy failed") : 0;
}

static const struct ferry_device_ops fake = {
    .kind = "fake",
    .stream_create = fake_stream_create,
    .stream_destroy = fake_stream_destroy,
    .copy_async = fake_copy_async,
    .stream_sync = fake_stream_sync,
};

static int copy_once(void)
{
    char a[8], b[8];
    struct ferry_copy c[2] = {{a, b, 4}, {a + 4, b + 4, 4}};
    log_buf[0] = '\0';
    return ferry_device_copy_sync(&fake, 0, FERRY_COPY_H2D, c, 2);
}

static void test_copy_paths(void **state)
{
    (void)state;
    assert_int_equal(copy_once(), 0);
    assert_string_equal(log_buf, "create async sync ");
    assert_int_equal(copy_once(), 0);
    assert_string_equal(log_buf, "async sync "); /* the thread's stream is reused */

    fail_async = 1; /* queueing fails part-way: drain, then drop the stream */
    assert_int_equal(copy_once(), FERRY_EIO);
    assert_string_equal(log_buf, "async sync destroy ");
    fail_async = 0;

    fail_sync = 1;
    assert_int_equal(copy_once(), FERRY_EIO);
    assert_string_equal(log_buf, "create async sync destroy ");
    fail_sync = 0;
    assert_int_equal(copy_once(), 0);
    assert_string_equal(log_buf, "create async sync ");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copy_paths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

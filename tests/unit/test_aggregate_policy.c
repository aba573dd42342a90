/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_aggregate_policy.c — which staged frames go through a chunk's device
 * buffer (aggregate.h), per direction: FERRY_STAGING_AGGREGATE for both,
 * FERRY_STAGING_AGGREGATE_READ for READs alone (auto: as the first), a
 * device without a default of its own, and a bad value refused with
 * FERRY_EINVAL naming the variable.  One thread; each case sets and clears
 * the variables it uses.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "err.h"
#include "staging/aggregate.h"

#define KiB ((uint64_t)1 << 10)

static const struct ferry_device_ops no_default; /* aggregate_below NULL: off unless asked (CUDA, sim) */

static int clear_vars(void **state)
{
    (void)state;
    unsetenv("FERRY_STAGING_AGGREGATE");
    unsetenv("FERRY_STAGING_AGGREGATE_READ");
    unsetenv("FERRY_STAGING_AGGREGATE_BUFFERS");
    return 0;
}

static void off_by_default(void **state)
{
    (void)state;
    struct aggregate_policy p;
    assert_int_equal(aggregate_policy_read(&no_default, 32, &p), 0);
    assert_false(aggregate_any(&p));
    assert_false(aggregate_wanted(&p, false, 16, 16 * 64 * KiB));
    assert_false(aggregate_wanted(&p, true, 16, 16 * 64 * KiB));
}

/* READ alone: 64 KiB blocks scatter from the buffer, WRITEs gather as before. */
static void read_alone(void **state)
{
    (void)state;
    setenv("FERRY_STAGING_AGGREGATE_READ", "2M", 1);
    struct aggregate_policy p;
    assert_int_equal(aggregate_policy_read(&no_default, 32, &p), 0);
    assert_true(aggregate_any(&p));
    assert_true(aggregate_wanted(&p, true, 16, 16 * 64 * KiB));
    assert_false(aggregate_wanted(&p, false, 16, 16 * 64 * KiB));
    assert_false(aggregate_wanted(&p, true, 1, 1024 * KiB)); /* one block: no scatter to save */
    setenv("FERRY_STAGING_AGGREGATE_READ", "64K", 1);        /* blocks under 64 KiB only */
    assert_int_equal(aggregate_policy_read(&no_default, 32, &p), 0);
    assert_false(aggregate_wanted(&p, true, 16, 16 * 64 * KiB));
    assert_true(aggregate_wanted(&p, true, 64, 64 * 16 * KiB));
}

/* auto follows FERRY_STAGING_AGGREGATE; 0 turns READs off under it; no
 * buffers turn both off. */
static void read_follows_or_not(void **state)
{
    (void)state;
    setenv("FERRY_STAGING_AGGREGATE", "2M", 1);
    struct aggregate_policy p;
    assert_int_equal(aggregate_policy_read(&no_default, 32, &p), 0);
    assert_true(aggregate_wanted(&p, true, 16, 16 * 64 * KiB));
    assert_true(aggregate_wanted(&p, false, 16, 16 * 64 * KiB));
    setenv("FERRY_STAGING_AGGREGATE_READ", "0", 1);
    assert_int_equal(aggregate_policy_read(&no_default, 32, &p), 0);
    assert_false(aggregate_wanted(&p, true, 16, 16 * 64 * KiB));
    assert_true(aggregate_wanted(&p, false, 16, 16 * 64 * KiB));
    setenv("FERRY_STAGING_AGGREGATE_READ", "2M", 1);
    setenv("FERRY_STAGING_AGGREGATE_BUFFERS", "0", 1);
    assert_int_equal(aggregate_policy_read(&no_default, 32, &p), 0);
    assert_false(aggregate_any(&p));
    assert_false(aggregate_wanted(&p, true, 16, 16 * 64 * KiB));
}

static void bad_value_refused(void **state)
{
    (void)state;
    setenv("FERRY_STAGING_AGGREGATE_READ", "lots", 1);
    struct aggregate_policy p;
    assert_int_equal(aggregate_policy_read(&no_default, 32, &p), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "FERRY_STAGING_AGGREGATE_READ=\"lots\""));
    setenv("FERRY_STAGING_AGGREGATE_READ", "-1", 1);
    assert_int_equal(aggregate_policy_read(&no_default, 32, &p), FERRY_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(off_by_default, clear_vars),
        cmocka_unit_test_setup(read_alone, clear_vars),
        cmocka_unit_test_setup(read_follows_or_not, clear_vars),
        cmocka_unit_test_setup(bad_value_refused, clear_vars),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_batch_faults.c — batch.c's error paths, driven by the test-only
 * "fault" transport (tests/fault_transport.c, registered with one line):
 * a failed or refused request keeps its batch's notification from being
 * delivered while the others complete; held frames hold the notification
 * back until their data is in; closing the segment or destroying the engine
 * cancels held frames instead of leaving requests pending.
 * Two engines in this process; ordering is by holding frames, never by time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "fault_transport.h"
#include "testutil.h"

#define LEN (1u << 20)
#define NREQ 8
#define BS 4096

struct fixture {
    ferry_engine *initiator, *target;
    char *local, *remote;
    ferry_segment_t seg;
    struct ferry_request reqs[NREQ];
};

static ferry_engine *make_engine(void)
{
    struct ferry_config cfg;
    ferry_engine *e = NULL;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = "fault";
    cfg.transport_fallback = 0;
    cfg.request_timeout_ms = 60000;
    cfg.coalesce_max = 1; /* one request per frame: a failed frame fails one request */
    if (ferry_engine_create(&cfg, &e) != 0)
        fail_msg("engine on the fault transport: %s", ferry_last_error());
    return e;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    fault_reset();
    f->target = make_engine();
    f->initiator = make_engine();
    assert_int_equal(ferry_mem_alloc(f->target, "cpu", LEN, (void **)&f->remote), 0);
    assert_int_equal(ferry_register_memory(f->target, f->remote, LEN, "cpu", 1), 0);
    assert_int_equal(ferry_mem_alloc(f->initiator, "cpu", LEN, (void **)&f->local), 0);
    assert_int_equal(ferry_register_memory(f->initiator, f->local, LEN, "cpu", 0), 0);
    assert_int_equal(ferry_open_segment(f->initiator, ferry_engine_segment_name(f->target), &f->seg), 0);
    pattern_fill(f->local, LEN, 21, 0);
    for (size_t i = 0; i < NREQ; i++) /* blocks with gaps */
        f->reqs[i] = (struct ferry_request){FERRY_WRITE, f->local + i * 2 * BS, f->seg,
                                            (uint64_t)(uintptr_t)f->remote + i * 2 * BS, BS};
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    fault_reset();
    if (f->initiator)
        ferry_engine_destroy(f->initiator);
    ferry_mem_free(f->target, "cpu", f->remote, LEN);
    ferry_mem_free(f->target, "cpu", f->local, LEN);
    ferry_engine_destroy(f->target);
    free(f);
    return 0;
}

static size_t notifications(ferry_engine *e)
{
    struct ferry_notification n[4];
    size_t count = 0;
    assert_int_equal(ferry_get_notifications(e, n, 4, &count), 0);
    return count;
}

static void expect_state(ferry_batch *b, size_t i, int state, int with_message)
{
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, i, &st), 0);
    if (st.state != state)
        fail_msg("request %zu: state %d, want %d (%s)", i, st.state, state, st.message);
    if (with_message && !strstr(st.message, "fault: injected"))
        fail_msg("request %zu: message \"%s\" does not say why", i, st.message);
}

/* A batch of all of f's requests with the notification "kv-ready",
 * submitted. */
static ferry_batch *submit_notified(struct fixture *f)
{
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->initiator, NREQ, &b), 0);
    assert_int_equal(ferry_batch_set_notify(b, "kv-ready", 8), 0);
    assert_int_equal(ferry_batch_submit(b, f->reqs, NREQ), 0);
    return b;
}

/* Request `failed` of b ended FAILED saying why; every other one COMPLETED
 * and its block landed. */
static void only_one_failed(struct fixture *f, ferry_batch *b, size_t failed)
{
    expect_state(b, failed, FERRY_FAILED, 1);
    for (size_t i = 0; i < NREQ; i++) {
        if (i == failed)
            continue;
        expect_state(b, i, FERRY_COMPLETED, 0);
        assert_int_equal(pattern_check(f->remote + i * 2 * BS, BS, 21, i * 2 * BS), -1);
    }
}

/* No notification was sent, nor received by the target. */
static void no_notification(struct fixture *f)
{
    assert_int_equal(fault_notifies(), 0);
    assert_int_equal(notifications(f->target), 0);
}

/* One request fails: the others complete and land, the notification is
 * never sent, and the wait reports the failure. */
static void failed_request_withholds_notification(void **state)
{
    struct fixture *f = *state;
    fault_fail_request(3, FERRY_EIO);
    ferry_batch *b = submit_notified(f);
    assert_int_equal(ferry_batch_wait(b, 60000), FERRY_EIO);
    only_one_failed(f, b, 3);
    ferry_batch_free(b);
    no_notification(f);
}

/* The target refuses one request's piece: FAILED with FERRY_ERANGE's state,
 * and again no notification.  With coalescing, so the refused piece shares
 * its frame with pieces that land. */
static void refused_piece_withholds_notification(void **state)
{
    struct fixture *f = *state;
    ferry_engine_destroy(f->initiator);
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = "fault";
    cfg.transport_fallback = 0;
    assert_int_equal(ferry_engine_create(&cfg, &f->initiator), 0);
    assert_int_equal(ferry_register_memory(f->initiator, f->local, LEN, "cpu", 0), 0);
    assert_int_equal(ferry_open_segment(f->initiator, ferry_engine_segment_name(f->target), &f->seg), 0);
    for (size_t i = 0; i < NREQ; i++)
        f->reqs[i].target = f->seg;
    fault_refuse_request(NREQ - 1);
    ferry_batch *b = submit_notified(f);
    assert_int_equal(ferry_batch_wait(b, 60000), FERRY_ERANGE);
    only_one_failed(f, b, NREQ - 1);
    ferry_batch_free(b);
    no_notification(f);
}

/* Data frames held: the notification cannot go before them; once they are
 * released it arrives, after the data. */
static void notification_waits_for_held_data(void **state)
{
    struct fixture *f = *state;
    fault_hold(1);
    ferry_batch *b = submit_notified(f);
    assert_true(fault_held() > 0);
    assert_int_equal(fault_notifies(), 0); /* held frames have not ended: nothing can send it */
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    assert_int_equal(st.state, FERRY_PENDING);
    fault_release();
    assert_int_equal(ferry_batch_wait(b, 60000), 0);
    ferry_batch_free(b);
    assert_int_equal(fault_notifies(), 1);
    assert_int_equal(notifications(f->target), 1);
    assert_int_equal(pattern_check(f->remote, BS, 21, 0), -1);
}

/* Closing the segment cancels its held frames: every request ends. */
static void close_cancels_held_frames(void **state)
{
    struct fixture *f = *state;
    fault_hold(1);
    ferry_batch *b = submit_notified(f);
    assert_true(fault_held() > 0);
    assert_int_equal(ferry_close_segment(f->initiator, f->seg), 0);
    assert_int_equal(fault_held(), 0);
    assert_int_equal(ferry_batch_wait(b, 60000), FERRY_ECANCELED);
    for (size_t i = 0; i < NREQ; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        assert_int_equal(st.state, FERRY_FAILED);
    }
    ferry_batch_free(b);
    no_notification(f);
}

/* Destroying the engine with frames held ends them too (the batch is freed
 * afterwards: ferry_batch_free would otherwise wait forever). */
static void destroy_cancels_held_frames(void **state)
{
    struct fixture *f = *state;
    fault_hold(1);
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->initiator, NREQ, &b), 0);
    assert_int_equal(ferry_batch_submit(b, f->reqs, NREQ), 0);
    assert_true(fault_held() > 0);
    ferry_engine_destroy(f->initiator);
    f->initiator = NULL;
    assert_int_equal(fault_held(), 0);
    ferry_batch_free(b);
}

int main(void)
{
    fault_transport_register(); /* the one registry line of a test plug-in */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(failed_request_withholds_notification, setup, teardown),
        cmocka_unit_test_setup_teardown(refused_piece_withholds_notification, setup, teardown),
        cmocka_unit_test_setup_teardown(notification_waits_for_held_data, setup, teardown),
        cmocka_unit_test_setup_teardown(close_cancels_held_frames, setup, teardown),
        cmocka_unit_test_setup_teardown(destroy_cancels_held_frames, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

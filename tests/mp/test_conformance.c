/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_conformance.c — the transport contract, run over every transport in
 * the registry (tcp, shm, rdma where a device exists, the test-only "fault"
 * wrapper; a transport that cannot start here is skipped with its reason).
 * Each case runs between this process and a target process that offers only
 * that transport: sizes from 1 byte to 4 MiB, a batch of 256, scatter lists
 * (many small pieces per frame), refusals (outside the buffers, unregistered
 * by the target), a notification after its data, the route the stats show,
 * peer death, a local unregister during a transfer, and close cancelling.
 * No case depends on timing: "during" cases assert only what must hold
 * whichever way the race goes (every request ends; nothing stays pending).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "fault_transport.h"
#include "testutil.h"
#include "transport/transport.h"
#include "xfer_pair.h"

#define TSIZE (32u << 20)
#define TSEED 31
#define LSIZE (32u << 20)

static const char *current; /* the transport under test */

static struct ferry_config engine_config(const char *protocols)
{
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = protocols;
    cfg.transport_fallback = 0;
    cfg.request_timeout_ms = 30000;
    cfg.connect_timeout_ms = 5000;
    return cfg;
}

static int make_engine(const char *protocols, ferry_engine **e)
{
    struct ferry_config cfg = engine_config(protocols);
    return ferry_engine_create(&cfg, e);
}

static int setup(void **state)
{
    struct xfer_pair *f = calloc(1, sizeof *f);
    assert_non_null(f);
    setenv("FERRY_PROTOCOLS", current, 1); /* read by the target process at start */
    setenv("FERRY_TRANSPORT_FALLBACK", "0", 1);
    xfer_pair_start_target(f, TSIZE, "cpu", TSEED);
    unsetenv("FERRY_PROTOCOLS");
    unsetenv("FERRY_TRANSPORT_FALLBACK");
    struct ferry_config cfg = engine_config(current);
    xfer_pair_open(f, &cfg, "cpu");
    *state = f;
    return 0;
}

/* n requests of op, block i: local offset lbase + stride*i, remote the same
 * offset.  Waits; returns the wait's result.  *b stays for inspection. */
static int run(struct xfer_pair *f, int op, size_t bs, size_t n, uint64_t base, uint64_t stride, ferry_batch **b,
               const char *note)
{
    struct ferry_request *reqs = calloc(n, sizeof *reqs);
    assert_non_null(reqs);
    for (size_t i = 0; i < n; i++) {
        uint64_t off = base + stride * i;
        reqs[i] = (struct ferry_request){op, f->local + off, f->seg, f->target.addr + off, bs};
    }
    assert_int_equal(ferry_batch_alloc(f->e, n, b), 0);
    if (note)
        assert_int_equal(ferry_batch_set_notify(*b, note, strlen(note)), 0);
    assert_int_equal(ferry_batch_submit(*b, reqs, n), 0);
    free(reqs);
    return ferry_batch_wait(*b, 60000);
}

/* run() that must complete, with the data checked on the receiving side. */
static void run_ok(struct xfer_pair *f, int op, size_t bs, size_t n, uint64_t base, uint64_t stride, uint64_t seed)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t off = base + stride * i;
        if (op == FERRY_WRITE)
            pattern_fill(f->local + off, bs, seed, off);
        else
            memset(f->local + off, 0, bs);
    }
    ferry_batch *b;
    int rc = run(f, op, bs, n, base, stride, &b, NULL);
    if (rc)
        fail_msg("%s: %zu x %zu bytes: %s: %s", current, n, bs, ferry_err_name(rc), ferry_last_error());
    xfer_assert_all_completed(b, n, bs);
    ferry_batch_free(b);
    for (size_t i = 0; i < n; i++) {
        uint64_t off = base + stride * i;
        if (op == FERRY_WRITE)
            assert_int_equal(child_target_check(&f->target, off, bs, seed), -1);
        else
            assert_int_equal(pattern_check(f->local + off, bs, TSEED, off), -1);
    }
}

/* Every request of b has ended (none PENDING). */
static void all_ended(ferry_batch *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        if (st.state == FERRY_PENDING)
            fail_msg("%s: request %zu still pending", current, i);
    }
}

static void sizes(void **state)
{
    struct xfer_pair *f = *state;
    static const size_t lens[] = {1, 7, 4096, 65537, (1u << 20) + 8, 4u << 20};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        run_ok(f, FERRY_WRITE, lens[i], 1, 8 * i, 0, 40 + i);
        run_ok(f, FERRY_READ, lens[i], 1, TSIZE / 2 + 24 * i, 0, 0);
    }
}

static void batch_of_256(void **state)
{
    struct xfer_pair *f = *state;
    run_ok(f, FERRY_WRITE, 16384, 256, 0, 20480, 50);
    run_ok(f, FERRY_READ, 16384, 256, TSIZE / 2, 20480, 0);
}

/* Many small blocks with gaps: several pieces per frame (a scatter list),
 * each landing at its own place. */
static void scatter_lists(void **state)
{
    struct xfer_pair *f = *state;
    run_ok(f, FERRY_WRITE, 512, 200, 4096, 1536, 60);
    run_ok(f, FERRY_READ, 520, 200, TSIZE / 2 + 8, 2048, 0);
}

static void refusals(void **state)
{
    struct xfer_pair *f = *state;
    ferry_batch *b;
    struct ferry_request r = {FERRY_WRITE, f->local, f->seg, f->target.addr + TSIZE - 100, 4096};
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &r, 1), FERRY_ERANGE); /* past the end of the target's buffer */
    r.target_offset = f->target.addr - 8192;                       /* before it */
    assert_int_equal(ferry_batch_submit(b, &r, 1), FERRY_ERANGE);
    assert_int_equal(ferry_batch_size(b), 0);
    ferry_batch_free(b);
    assert_int_equal(child_target_check(&f->target, 0, TSIZE, TSEED), -1);
    /* unregistered by the target while this engine's descriptor still lists it */
    assert_int_equal(child_target_unregister(&f->target), 0);
    pattern_fill(f->local, 65536, 70, 0);
    int rc = run(f, FERRY_WRITE, 65536, 1, 0, 0, &b, NULL);
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    if (rc == 0 || st.state != FERRY_FAILED)
        fail_msg("%s: a WRITE into an unregistered buffer ended %d (%s)", current, st.state, st.message);
    ferry_batch_free(b);
    assert_int_equal(child_target_check(&f->target, 0, 65536, TSEED), -1);
    assert_int_equal(child_target_register(&f->target), 0);
    run_ok(f, FERRY_WRITE, 65536, 2, 0, 65536, 71);
}

static void notification_after_data(void **state)
{
    struct xfer_pair *f = *state;
    for (size_t i = 0; i < 16; i++)
        pattern_fill(f->local + i * 65536, 65536, 80, i * 65536);
    ferry_batch *b;
    assert_int_equal(run(f, FERRY_WRITE, 65536, 16, 0, 65536, &b, "kv-ready:7"), 0);
    struct ferry_request again = {FERRY_WRITE, f->local, f->seg, f->target.addr, 4096};
    assert_int_equal(ferry_batch_submit(b, &again, 1), FERRY_EBUSY); /* the notification went: no more */
    ferry_batch_free(b);
    char msg[32] = {0};
    assert_int_equal(child_target_notification(&f->target, msg, sizeof msg), 10);
    assert_string_equal(msg, "kv-ready:7");
    assert_int_equal(child_target_check(&f->target, 0, 16 * 65536, 80), -1);
    assert_int_equal(child_target_notification(&f->target, msg, sizeof msg), -1);
}

/* The stats name the transport under test and count what it moved. */
static void stats_name_the_route(void **state)
{
    struct xfer_pair *f = *state;
    struct ferry_stats before, after;
    assert_int_equal(ferry_get_stats(f->e, &before), 0);
    run_ok(f, FERRY_WRITE, 65536, 4, 0, 65536, 90);
    assert_int_equal(ferry_get_stats(f->e, &after), 0);
    assert_int_equal(after.transport_count, 1);
    assert_string_equal(after.transports[0].name, current);
    assert_int_equal(after.transports[0].requests_completed - before.transports[0].requests_completed, 4);
    assert_int_equal(after.transports[0].bytes_written - before.transports[0].bytes_written, 4 * 65536);
}

static void peer_death(void **state)
{
    struct xfer_pair *f = *state;
    enum { BS = 256 << 10, N = 512 };
    ferry_batch *b;
    struct ferry_request *r = calloc(N, sizeof *r);
    for (size_t i = 0; i < N; i++) {
        uint64_t off = (i % (TSIZE / BS)) * BS;
        r[i] = (struct ferry_request){FERRY_WRITE, f->local + off, f->seg, f->target.addr + off, BS};
    }
    assert_int_equal(ferry_batch_alloc(f->e, N, &b), 0);
    assert_int_equal(ferry_batch_submit(b, r, N), 0);
    child_target_kill(&f->target);
    int rc = ferry_batch_wait(b, -1); /* the request timeout bounds it */
    assert_int_not_equal(rc, FERRY_ETIMEDOUT);
    all_ended(b, N);
    for (size_t i = 0; i < N; i++) { /* whichever ended before the kill landed: the others say why */
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        if (st.state != FERRY_COMPLETED && st.message[0] == '\0')
            fail_msg("%s: request %zu ended %d with no message", current, i, st.state);
    }
    ferry_batch_free(b);
    free(r);
    /* a request after the death ends too, and not COMPLETED */
    struct ferry_request one = {FERRY_WRITE, f->local, f->seg, f->target.addr, 4096};
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    if (ferry_batch_submit(b, &one, 1) == 0)
        assert_int_not_equal(ferry_batch_wait(b, -1), 0);
    ferry_batch_free(b);
}

/* ferry_unregister_memory of the local range returns only once no request
 * on it is in flight: afterwards each has ended, whichever way. */
static void unregister_during_transfer(void **state)
{
    struct xfer_pair *f = *state;
    enum { BS = 256 << 10, N = 256 };
    ferry_batch *b;
    struct ferry_request *r = calloc(N, sizeof *r);
    for (size_t i = 0; i < N; i++) {
        uint64_t off = (i % (LSIZE / BS)) * BS;
        r[i] = (struct ferry_request){i % 2 ? FERRY_READ : FERRY_WRITE, f->local + off, f->seg,
                                      f->target.addr + (i % (TSIZE / BS)) * BS, BS};
    }
    assert_int_equal(ferry_batch_alloc(f->e, N, &b), 0);
    assert_int_equal(ferry_batch_submit(b, r, N), 0);
    assert_int_equal(ferry_unregister_memory(f->e, f->local), 0);
    all_ended(b, N);
    ferry_batch_free(b);
    free(r);
    assert_int_equal(ferry_register_memory(f->e, f->local, LSIZE, "cpu", 0), 0); /* for teardown's symmetry */
}

/* Closing the segment ends its requests: the wait returns, none pending. */
static void close_cancels(void **state)
{
    struct xfer_pair *f = *state;
    enum { BS = 256 << 10, N = 256 };
    ferry_batch *b;
    struct ferry_request *r = calloc(N, sizeof *r);
    for (size_t i = 0; i < N; i++)
        r[i] = (struct ferry_request){FERRY_WRITE, f->local + (i % (LSIZE / BS)) * BS, f->seg,
                                      f->target.addr + (i % (TSIZE / BS)) * BS, BS};
    assert_int_equal(ferry_batch_alloc(f->e, N, &b), 0);
    assert_int_equal(ferry_batch_submit(b, r, N), 0);
    assert_int_equal(ferry_close_segment(f->e, f->seg), 0);
    int rc = ferry_batch_wait(b, -1);
    assert_int_not_equal(rc, FERRY_ETIMEDOUT);
    all_ended(b, N);
    for (size_t i = 0; i < N; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        if (st.state != FERRY_COMPLETED && st.error != FERRY_ECANCELED && st.error != FERRY_ECONN)
            fail_msg("%s: request %zu ended %s after close (%s)", current, i, ferry_err_name(st.error), st.message);
    }
    ferry_batch_free(b);
    free(r);
    /* the handle is gone; the name opens again and works */
    assert_int_equal(ferry_close_segment(f->e, f->seg), FERRY_ENOSEG);
    struct ferry_request one = {FERRY_WRITE, f->local, f->seg, f->target.addr, 4096};
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &one, 1), FERRY_ENOSEG);
    ferry_batch_free(b);
    assert_int_equal(ferry_open_segment(f->e, f->target.name, &f->seg), 0);
    run_ok(f, FERRY_WRITE, 4096, 4, 0, 8192, 95);
}

/* 1 if `name` starts on this host; else prints why it is skipped. */
static int available(const char *name)
{
    ferry_engine *e = NULL;
    int rc = make_engine(name, &e);
    if (rc == 0) {
        ferry_engine_destroy(e);
        return 1;
    }
    printf("SKIPPED transport %s: %s: %s\n", name, ferry_err_name(rc), ferry_last_error());
    return 0;
}

int main(void)
{
    fault_transport_register(); /* the test-only plug-in joins the registry like any transport */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(sizes, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(batch_of_256, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(scatter_lists, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(refusals, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(notification_after_data, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(stats_name_the_route, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(peer_death, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(unregister_during_transfer, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(close_cancels, setup, xfer_pair_teardown),
    };
    size_t n;
    const struct transport_ops *const *all = transport_list(&n);
    int failed = 0, ran = 0;
    for (size_t i = 0; i < n; i++) {
        if (!all[i]->create) {
            printf("SKIPPED transport %s: not in this build\n", all[i]->name);
            continue;
        }
        if (!available(all[i]->name))
            continue;
        current = all[i]->name;
        failed += cmocka_run_group_tests_name(current, tests, NULL, NULL);
        ran++;
    }
    return ran ? failed : 77;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_peer_restart.c — a peer that restarts mid-session (same segment name,
 * new process, other buffers): the next transfer fails with a named error or
 * lands in the new process, never in the old layout, and the peer is
 * reachable again without restarting this engine, however many peers died
 * and were closed before.
 *
 * Targets are child processes (testutil.c), restarted on the same handshake
 * port by setting FERRY_LOCAL_SERVER_NAME before the start.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "testutil.h"

#define TSIZE (1u << 20)
#define SEED 7

static ferry_engine *make_engine(void)
{
    struct ferry_config cfg;
    ferry_engine *e = NULL;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.request_timeout_ms = 20000;
    cfg.connect_timeout_ms = 5000;
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    return e;
}

/* A target on `name` ("127.0.0.1:PORT"), or on a free port when name is NULL. */
static void start_on(struct child_target *t, const char *name)
{
    if (name)
        setenv("FERRY_LOCAL_SERVER_NAME", name, 1);
    int rc = child_target_start(t, TSIZE, "cpu", SEED);
    unsetenv("FERRY_LOCAL_SERVER_NAME");
    assert_int_equal(rc, 0);
    if (name)
        assert_string_equal(t->name, name);
}

/* One WRITE of len bytes from local+off to the target's buffer at off;
 * returns the submit's or the wait's result. */
static int write_once(ferry_engine *e, ferry_segment_t seg, char *local, uint64_t addr, uint64_t off, size_t len,
                      uint64_t seed)
{
    ferry_batch *b;
    pattern_fill(local + off, len, seed, off);
    struct ferry_request r = {FERRY_WRITE, local + off, seg, addr + off, len};
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    int rc = ferry_batch_submit(b, &r, 1);
    if (rc == 0)
        rc = ferry_batch_wait(b, 60000);
    ferry_batch_free(b);
    return rc;
}

/* A prefill engine outlives many decode nodes: each one it wrote to died
 * (its transfers failed, so its handle was marked for a refresh) and the
 * caller closed its segment.  None of that may keep a decode node that
 * restarts later from being reached again: before the fix, the engine's
 * fixed set of 32 stale marks kept the closed handles for ever, the
 * restarted node's handle found no room, was never refreshed, and every
 * transfer to it failed FERRY_ESTALE until the engine itself restarted. */
static void closed_dead_peers_do_not_block_a_refresh(void **state)
{
    (void)state;
    ferry_engine *e = make_engine();
    char *local;
    assert_int_equal(ferry_mem_alloc(e, "cpu", TSIZE, (void **)&local), 0);
    assert_int_equal(ferry_register_memory(e, local, TSIZE, "cpu", 0), 0);
    for (int round = 0; round < 40; round++) {
        struct child_target t;
        ferry_segment_t seg;
        start_on(&t, NULL);
        assert_int_equal(ferry_open_segment(e, t.name, &seg), 0);
        assert_int_equal(write_once(e, seg, local, t.addr, 0, 4096, (uint64_t)round), 0);
        child_target_kill(&t);
        int rc = write_once(e, seg, local, t.addr, 0, 4096, (uint64_t)round);
        if (rc != FERRY_ECONN && rc != FERRY_ESTALE)
            fail_msg("round %d: write to a dead peer: %s: %s", round, ferry_err_name(rc), ferry_last_error());
        assert_int_equal(ferry_close_segment(e, seg), 0);
    }
    /* a decode node that dies and comes back on the same host:port */
    struct child_target t;
    ferry_segment_t seg;
    start_on(&t, NULL);
    char name[sizeof t.name];
    snprintf(name, sizeof name, "%s", t.name);
    assert_int_equal(ferry_open_segment(e, name, &seg), 0);
    assert_int_equal(write_once(e, seg, local, t.addr, 0, 4096, 100), 0);
    uint64_t old_addr = t.addr;
    child_target_kill(&t);
    start_on(&t, name);
    /* the cached descriptor still lists the old buffer: a write to it fails
     * (the new process refuses the old engine's connection) unless the new
     * one happens to have its buffer at the same address */
    int rc = write_once(e, seg, local, old_addr, 0, 4096, 101);
    if (rc != 0 && rc != FERRY_ECONN && rc != FERRY_ESTALE)
        fail_msg("first write after the restart: %s: %s", ferry_err_name(rc), ferry_last_error());
    /* ... after which the engine knows the new descriptor: the old address
     * is judged by it (FERRY_ERANGE, or 0 when it is the new one's too) */
    rc = write_once(e, seg, local, old_addr, 0, 4096, 102);
    if (rc != (old_addr == t.addr ? 0 : FERRY_ERANGE))
        fail_msg("second write to the old address: %s: %s", ferry_err_name(rc), ferry_last_error());
    rc = write_once(e, seg, local, t.addr, 0, 4096, 102);
    if (rc != 0)
        fail_msg("write to the new address: %s: %s", ferry_err_name(rc), ferry_last_error());
    assert_int_equal(child_target_check(&t, 0, 4096, 102), -1);
    child_target_kill(&t);
    ferry_engine_destroy(e);
}

/* The buffers of a peer that restarted in place (same host:port, a new
 * process with its buffer elsewhere), as a caller that probes it back to
 * life sees them (SGLang takes a decode node off its blacklist when
 * send_probe answers, then asks for its buffers): the new process's.
 * Before, the list stayed the old process's until a transfer failed, and a
 * write to the old layout went to the wire (FERRY_ECONN / ESTALE) instead
 * of being refused at submit. */
static void probe_of_a_restarted_peer_refreshes_its_buffers(void **state)
{
    (void)state;
    ferry_engine *e = make_engine();
    char *local;
    assert_int_equal(ferry_mem_alloc(e, "cpu", TSIZE, (void **)&local), 0);
    assert_int_equal(ferry_register_memory(e, local, TSIZE, "cpu", 0), 0);
    struct child_target t;
    ferry_segment_t seg;
    start_on(&t, NULL);
    char name[sizeof t.name];
    snprintf(name, sizeof name, "%s", t.name);
    assert_int_equal(ferry_open_segment(e, name, &seg), 0);
    assert_int_equal(write_once(e, seg, local, t.addr, 0, 4096, 1), 0);
    uint64_t old_addr = t.addr;
    child_target_kill(&t);
    /* the new process's buffer is somewhere else: keep the old one's pages
     * out of its allocator's way by asking for a different size */
    setenv("FERRY_LOCAL_SERVER_NAME", name, 1);
    int rc = child_target_start(&t, 3 * TSIZE, "cpu", SEED);
    unsetenv("FERRY_LOCAL_SERVER_NAME");
    assert_int_equal(rc, 0);
    assert_true(t.addr != old_addr);
    assert_int_equal(ferry_probe_segment(e, name), 0);
    struct ferry_buffer_info info[4];
    size_t n = 0;
    assert_int_equal(ferry_segment_buffers(e, seg, info, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(info[0].addr, t.addr);
    assert_int_equal(info[0].len, 3 * TSIZE);
    /* the old layout is refused before anything is sent, and named */
    rc = write_once(e, seg, local, old_addr, 0, 4096, 2);
    if (rc != FERRY_ERANGE)
        fail_msg("write to the old layout: %s: %s", ferry_err_name(rc), ferry_last_error());
    assert_int_equal(write_once(e, seg, local, t.addr, 0, 4096, 3), 0);
    assert_int_equal(child_target_check(&t, 0, 4096, 3), -1);
    child_target_kill(&t);
    ferry_engine_destroy(e);
}

/* A peer that comes back with another key (a redeployment with a rotated
 * secret): the refresh of its descriptor is refused, and the transfers say
 * so, FERRY_EPERM naming the peer, rather than FERRY_ECONN from the old
 * process's closed port, for ever, which is all the caller learnt before. */
static void restarted_with_another_key_says_so(void **state)
{
    (void)state;
    setenv("FERRY_AUTH_KEY", "the first key of sixteen bytes or more", 1);
    ferry_engine *e = make_engine();
    struct child_target t;
    start_on(&t, NULL);
    char *local;
    assert_int_equal(ferry_mem_alloc(e, "cpu", TSIZE, (void **)&local), 0);
    assert_int_equal(ferry_register_memory(e, local, TSIZE, "cpu", 0), 0);
    char name[sizeof t.name];
    snprintf(name, sizeof name, "%s", t.name);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, name, &seg), 0);
    assert_int_equal(write_once(e, seg, local, t.addr, 0, 4096, 1), 0);
    uint64_t old_addr = t.addr;
    child_target_kill(&t);
    setenv("FERRY_AUTH_KEY", "a second, different key of sixteen bytes", 1);
    start_on(&t, name);
    unsetenv("FERRY_AUTH_KEY");
    /* to the old layout: the first write meets the old process's closed
     * port (or the new one's refusal); from then on the refresh is refused */
    int rc = write_once(e, seg, local, old_addr, 0, 4096, 2);
    if (rc != FERRY_ECONN && rc != FERRY_ESTALE && rc != FERRY_EPERM)
        fail_msg("first write after the restart: %s: %s", ferry_err_name(rc), ferry_last_error());
    for (int i = 0; i < 2; i++) {
        rc = write_once(e, seg, local, old_addr, 0, 4096, 3);
        if (rc != FERRY_EPERM || !strstr(ferry_last_error(), name) || !strstr(ferry_last_error(), "key"))
            fail_msg("write %d to the old layout: %s: %s", i, ferry_err_name(rc), ferry_last_error());
    }
    /* to the new process's buffer, which the descriptor we have does not list */
    for (int i = 0; i < 2; i++) {
        rc = write_once(e, seg, local, t.addr, 0, 4096, 3);
        if (rc != FERRY_EPERM || !strstr(ferry_last_error(), name) || !strstr(ferry_last_error(), "key"))
            fail_msg("write %d to the new layout: %s: %s", i, ferry_err_name(rc), ferry_last_error());
    }
    child_target_kill(&t);
    ferry_engine_destroy(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(closed_dead_peers_do_not_block_a_refresh),
        cmocka_unit_test(probe_of_a_restarted_peer_refreshes_its_buffers),
        cmocka_unit_test(restarted_with_another_key_says_so),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

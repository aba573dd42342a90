/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_callers_api.c — what callers of the reference engine (Mooncake's
 * TransferEngine, through its C API and its Python binding) do and expect,
 * on ferry's C API: zero-length requests complete (they move nothing and
 * check no address), a segment lists its buffers in the order it registered
 * them (the first is get_first_buffer_address's).
 *
 * Targets are child processes (testutil.c) or a second engine in this
 * process.  No case depends on timing.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "testutil.h"

#define TSIZE (1u << 20)
#define SEED 23

static ferry_engine *make_engine(void)
{
    struct ferry_config cfg;
    ferry_engine *e = NULL;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.request_timeout_ms = 60000;
    cfg.connect_timeout_ms = 60000;
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    return e;
}

static char *registered(ferry_engine *e, size_t len, int remote)
{
    char *p = NULL;
    assert_int_equal(ferry_mem_alloc(e, "cpu", len, (void **)&p), 0);
    assert_int_equal(ferry_register_memory(e, p, len, "cpu", remote), 0);
    return p;
}

static void assert_completed(ferry_batch *b, size_t index, uint64_t transferred)
{
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, index, &st), 0);
    assert_int_equal(st.state, FERRY_COMPLETED);
    assert_int_equal(st.error, 0);
    assert_int_equal(st.transferred, transferred);
}

/* ------------------------------------------------------------ zero-length requests */

/* The reference completes a zero-length request without touching or
 * checking either address (tcp_transport.cpp startTransfer: "Zero-length
 * requests are complete by definition"; rdma_transport.cpp
 * submitTransferTask cuts it into no slice, so 0 of 0 slices are done).
 * ferry refused the whole submit (FERRY_EINVAL "length is 0"). */
static void zero_length_requests_complete(void **state)
{
    (void)state;
    struct child_target t;
    assert_int_equal(child_target_start(&t, TSIZE, "cpu", SEED), 0);
    ferry_engine *e = make_engine();
    char *local = registered(e, TSIZE, 0);
    pattern_fill(local, 8192, SEED + 1, 0);
    ferry_segment_t s;
    assert_int_equal(ferry_open_segment(e, t.name, &s), 0);

    /* mixed with a real WRITE: one batch, every request completes */
    struct ferry_request mixed[] = {
        {FERRY_WRITE, local, s, t.addr, 0},                   /* valid addresses */
        {FERRY_WRITE, local, s, t.addr, 8192},                /* moves 8 KiB */
        {FERRY_READ, NULL, s, 0x10, 0},                       /* no address at all */
        {FERRY_WRITE, local + TSIZE + 4096, s, UINT64_MAX, 0}, /* outside everything */
    };
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(e, 4, &b), 0);
    if (ferry_batch_submit(b, mixed, 4) != 0)
        fail_msg("submit with zero-length requests: %s", ferry_last_error());
    assert_int_equal(ferry_batch_wait(b, 60000), 0);
    assert_completed(b, 0, 0);
    assert_completed(b, 1, 8192);
    assert_completed(b, 2, 0);
    assert_completed(b, 3, 0);
    ferry_batch_free(b);
    assert_int_equal(child_target_check(&t, 0, 8192, SEED + 1), -1);
    assert_int_equal(child_target_check(&t, 8192, TSIZE - 8192, SEED), -1); /* nothing else moved */

    /* zero-length requests only, with a notification: it is delivered, as
     * after any batch that completed */
    assert_int_equal(ferry_batch_alloc(e, 2, &b), 0);
    assert_int_equal(ferry_batch_set_notify(b, "empty", 5), 0);
    struct ferry_request none[] = {{FERRY_WRITE, local, s, t.addr, 0}, {FERRY_READ, local, s, t.addr, 0}};
    assert_int_equal(ferry_batch_submit(b, none, 2), 0);
    assert_int_equal(ferry_batch_wait(b, 60000), 0);
    assert_completed(b, 0, 0);
    assert_completed(b, 1, 0);
    ferry_batch_free(b);
    char note[64];
    assert_int_equal(child_target_notification(&t, note, sizeof note), 5);
    assert_memory_equal(note, "empty", 5);

    /* one freed right after its submit, with no wait (nothing comes back to end it) */
    for (int i = 0; i < 100; i++) {
        assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
        assert_int_equal(ferry_batch_submit(b, none, 1), 0);
        ferry_batch_free(b);
    }

    /* what is still checked: the opcode, and the segment */
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    struct ferry_request bad = {7, local, s, t.addr, 0};
    assert_int_equal(ferry_batch_submit(b, &bad, 1), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "opcode 7"));
    bad = (struct ferry_request){FERRY_WRITE, local, s + 1000, t.addr, 0};
    assert_int_equal(ferry_batch_submit(b, &bad, 1), FERRY_ENOSEG);
    assert_non_null(strstr(ferry_last_error(), "request 0"));
    bad = (struct ferry_request){FERRY_WRITE, NULL, s, t.addr, 4096}; /* NULL with a length: refused */
    assert_int_equal(ferry_batch_submit(b, &bad, 1), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "source is NULL"));
    assert_int_equal(ferry_batch_size(b), 0);
    ferry_batch_free(b);

    assert_int_equal(ferry_unregister_memory(e, local), 0);
    ferry_mem_free(e, "cpu", local, TSIZE);
    ferry_engine_destroy(e);
    child_target_kill(&t);
}

/* ------------------------------------------------------------ a segment's first buffer */

static void assert_buffers(ferry_engine *e, ferry_segment_t s, const char *want, size_t n, const uint64_t *addrs)
{
    struct ferry_buffer_info info[8];
    size_t count = 0;
    assert_int_equal(ferry_segment_buffers(e, s, info, 8, &count), 0);
    if (count != n)
        fail_msg("%s: %zu buffers, expected %zu", want, count, n);
    for (size_t i = 0; i < n; i++)
        if (info[i].addr != addrs[i])
            fail_msg("%s: buffer %zu is 0x%llx, expected 0x%llx", want, i, (unsigned long long)info[i].addr,
                     (unsigned long long)addrs[i]);
}

static ferry_segment_t reopen(ferry_engine *e, ferry_segment_t s, const char *name)
{
    if (s)
        assert_int_equal(ferry_close_segment(e, s), 0);
    assert_int_equal(ferry_open_segment(e, name, &s), 0);
    return s;
}

/* The reference's get_first_buffer_address returns buffers[0] of the
 * segment's descriptor (transfer_engine_py.cpp getFirstBufferAddress), a
 * list in registration order (transfer_metadata.cpp addLocalMemoryBuffer
 * push_back, removeLocalMemoryBuffer erase).  ferry listed the buffers by
 * address: its first was the lowest. */
static void buffers_in_registration_order(void **state)
{
    (void)state;
    ferry_engine *owner = make_engine(), *peer = make_engine();
    char *mem = NULL;
    assert_int_equal(ferry_mem_alloc(owner, "cpu", 4 * 4096, (void **)&mem), 0);
    uint64_t lo = (uintptr_t)mem, mid = lo + 4096, hi = lo + 2 * 4096, top = lo + 3 * 4096;
    assert_int_equal(ferry_register_memory(owner, (void *)(uintptr_t)hi, 4096, "cpu", 1), 0);
    assert_int_equal(ferry_register_memory(owner, (void *)(uintptr_t)mid, 4096, "cpu", 0), 0); /* not published */
    assert_int_equal(ferry_register_memory(owner, (void *)(uintptr_t)lo, 4096, "cpu", 1), 0);
    assert_int_equal(ferry_register_memory(owner, (void *)(uintptr_t)top, 4096, "cpu", 1), 0);
    const char *name = ferry_engine_segment_name(owner);
    ferry_segment_t own = reopen(owner, 0, name), remote = reopen(peer, 0, name);
    assert_buffers(owner, own, "own", 3, (uint64_t[]){hi, lo, top});
    assert_buffers(peer, remote, "remote", 3, (uint64_t[]){hi, lo, top});

    /* the first one goes: the next registered is first; registered again: last */
    assert_int_equal(ferry_unregister_memory(owner, (void *)(uintptr_t)hi), 0);
    remote = reopen(peer, remote, name);
    assert_buffers(owner, own, "own after unregister", 2, (uint64_t[]){lo, top});
    assert_buffers(peer, remote, "remote after unregister", 2, (uint64_t[]){lo, top});
    assert_int_equal(ferry_register_memory(owner, (void *)(uintptr_t)hi, 4096, "cpu", 1), 0);
    remote = reopen(peer, remote, name);
    assert_buffers(owner, own, "own registered again", 3, (uint64_t[]){lo, top, hi});
    assert_buffers(peer, remote, "remote registered again", 3, (uint64_t[]){lo, top, hi});

    /* transfers still find each buffer (the peer's lookup is by address) */
    char *src = registered(peer, 4096, 0);
    pattern_fill(src, 4096, SEED, 0);
    ferry_batch *b;
    struct ferry_request w[] = {{FERRY_WRITE, src, remote, hi, 4096}, {FERRY_WRITE, src, remote, lo, 4096}};
    assert_int_equal(ferry_batch_alloc(peer, 2, &b), 0);
    assert_int_equal(ferry_batch_submit(b, w, 2), 0);
    assert_int_equal(ferry_batch_wait(b, 60000), 0);
    ferry_batch_free(b);
    assert_int_equal(pattern_check((void *)(uintptr_t)hi, 4096, SEED, 0), -1);
    assert_int_equal(pattern_check((void *)(uintptr_t)lo, 4096, SEED, 0), -1);

    assert_int_equal(ferry_unregister_memory(peer, src), 0);
    ferry_mem_free(peer, "cpu", src, 4096);
    ferry_engine_destroy(peer);
    for (int i = 0; i < 4; i++)
        assert_int_equal(ferry_unregister_memory(owner, mem + i * 4096), 0);
    ferry_mem_free(owner, "cpu", mem, 4 * 4096);
    ferry_engine_destroy(owner);
}

/* ------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(zero_length_requests_complete),
        cmocka_unit_test(buffers_in_registration_order),
    };
    (void)argc, (void)argv;
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}

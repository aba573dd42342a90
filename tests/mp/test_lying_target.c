/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_lying_target.c — a tcp target that lies in its answers while other
 * requests share the connection (rule 4 on the initiator side): it acks a
 * request id it was never sent, acks one frame twice, answers a READ with
 * more or fewer bytes than asked, or closes halfway through a READ's
 * payload.  Three frames are in flight on the one connection when it lies
 * about the first; every request ends (COMPLETED only where the target
 * answered it truly, else FAILED with a named code and a message naming the
 * target), nothing lands in the initiator's memory outside what it asked
 * for, and the next WRITE and READ to the same segment reconnect and verify.
 *
 * The target is a small server in this process (fake_target.h) speaking
 * ferry's handshake and wire format: its first data connection lies once,
 * then answers truly; later connections answer truly.
 */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "fake_target.h"
#include "net.h"
#include "testutil.h"
#include "transport/tcp/tcp_wire.h"

#define BUF_LEN (1u << 20)
#define REQ (64u << 10)
#define INFLIGHT 3
#define ENGINE_ID 0x11e5f00dull
#define SEED 13
#define GUARD_MS 30000 /* ten request deadlines: only a hang reaches it */

enum lie { UNKNOWN_ID, ACK_TWICE, READ_MORE, READ_LESS, CLOSE_MID, NLIES };
static const char *const lie_names[NLIES] = {"acks an id never sent", "acks a frame twice",
                                             "answers a READ with more bytes", "answers a READ with fewer bytes",
                                             "closes mid-payload"};

struct liar {
    enum lie lie;
    struct fake_target ft;
    char *mem;
    atomic_int conns;
    struct frame {
        struct wire_header h;
        struct wire_entry e[WIRE_MAX_ENTRIES];
    } held[INFLIGHT];          /* the first connection's frames, read before any answer */
};

/* Reads one frame; a WRITE's payload lands in the buffer.  -1: the
 * connection ended (or the test is stopping). */
static int read_frame(struct liar *k, int fd, struct frame *f)
{
    uint8_t raw[WIRE_HEADER_SIZE + WIRE_MAX_ENTRIES * WIRE_ENTRY_SIZE];
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = k->ft.stop_pipe[0], .events = POLLIN}};
    while (poll(p, 2, 100) == 0) {
    }
    if (p[1].revents || net_read_full(fd, raw, WIRE_HEADER_SIZE) || wire_decode_header(raw, &f->h) ||
        net_read_full(fd, raw, (size_t)f->h.nentries * WIRE_ENTRY_SIZE) || wire_decode_entries(raw, &f->h, f->e))
        return -1;
    for (unsigned i = 0; i < f->h.nentries; i++) {
        uint64_t at = f->e[i].addr - (uint64_t)(uintptr_t)k->mem;
        assert_true(f->e[i].addr >= (uint64_t)(uintptr_t)k->mem && at + f->e[i].len <= BUF_LEN);
        if (f->h.type == WIRE_WRITE && net_read_full(fd, k->mem + at, f->e[i].len))
            return -1;
    }
    return f->h.type == WIRE_WRITE || f->h.type == WIRE_READ ? 0 : -1;
}

/* Answers f: truly, or with the lie (payload_delta bytes more or fewer; cut:
 * close after half the payload). */
static int answer(int fd, const struct frame *f, uint64_t id, long payload_delta, bool cut)
{
    uint8_t *out = malloc(WIRE_HEADER_SIZE + 2 * (size_t)BUF_LEN + WIRE_TRAILER_SIZE);
    assert_non_null(out);
    uint64_t total = 0;
    for (unsigned i = 0; i < f->h.nentries; i++)
        total += f->e[i].len;
    size_t n = WIRE_HEADER_SIZE;
    struct wire_header a = {.type = WIRE_WRITE_ACK, .id = id};
    if (f->h.type == WIRE_READ) {
        uint64_t sent = total + (uint64_t)payload_delta;
        a = (struct wire_header){.type = WIRE_READ_RESP, .id = id, .payload_len = sent,
                                 .flags = f->h.flags & WIRE_FLAG_TRAILER};
        for (unsigned i = 0; i < f->h.nentries; i++) {
            memcpy(out + n, (const void *)(uintptr_t)f->e[i].addr, f->e[i].len);
            n += f->e[i].len;
        }
        if (payload_delta > 0)
            memset(out + n, 0xee, (size_t)payload_delta); /* what a careless initiator would land past the piece */
        n = WIRE_HEADER_SIZE + sent;
        if (a.flags & WIRE_FLAG_TRAILER) {
            wire_encode_trailer(&(struct wire_trailer){0}, out + n);
            n += WIRE_TRAILER_SIZE;
        }
        if (cut)
            n = WIRE_HEADER_SIZE + total / 2;
    }
    wire_encode_header(&a, out);
    int rc = net_write_full(fd, out, n);
    free(out);
    return cut ? -1 : rc;
}

/* One data connection: HELLO; on the first connection, INFLIGHT frames in,
 * the first answered with the lie and the others truly; then frames
 * answered truly until the initiator leaves. */
static void serve_liar(void *ctx, int fd)
{
    struct liar *k = ctx;
    uint8_t raw[WIRE_HEADER_SIZE];
    struct wire_header h;
    char name[WIRE_MAX_NAME];
    if (net_read_full(fd, raw, sizeof raw) || wire_decode_header(raw, &h) ||
        net_read_full(fd, name, (size_t)h.payload_len))
        return;
    struct wire_header ack = {.type = WIRE_HELLO_ACK, .id = h.id};
    wire_encode_header(&ack, raw);
    if (net_write_full(fd, raw, sizeof raw))
        return;
    struct frame *held = k->held;
    if (atomic_fetch_add(&k->conns, 1) == 0) {
        for (int i = 0; i < INFLIGHT; i++)
            if (read_frame(k, fd, &held[i]))
                return;
        const struct frame *f = &held[0];
        long delta = k->lie == READ_MORE ? 16 : k->lie == READ_LESS ? -16 : 0;
        int rc = answer(fd, f, k->lie == UNKNOWN_ID ? f->h.id + 1000 : f->h.id, delta, k->lie == CLOSE_MID);
        if (!rc && k->lie == ACK_TWICE)
            rc = answer(fd, f, f->h.id, 0, false);
        for (int i = 1; !rc && i < INFLIGHT; i++)
            rc = answer(fd, &held[i], held[i].h.id, 0, false);
        if (rc)
            return;
    }
    struct frame f;
    while (read_frame(k, fd, &f) == 0 && answer(fd, &f, f.h.id, 0, false) == 0) {
    }
}

static ferry_engine *initiator(void)
{
    struct ferry_config cfg;
    ferry_engine *e;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.request_timeout_ms = 3000;
    cfg.connect_timeout_ms = 3000;
    cfg.tcp_connections = 1;
    setenv("FERRY_TCP_MAX_CONNECTIONS", "1", 1); /* the frames share one connection */
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    unsetenv("FERRY_TCP_MAX_CONNECTIONS");
    return e;
}

static int run(ferry_engine *e, int op, char *local, ferry_segment_t seg, uint64_t remote, struct ferry_status *st)
{
    ferry_batch *b;
    struct ferry_request r = {op, local, seg, remote, REQ};
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &r, 1), 0);
    int rc = ferry_batch_wait(b, GUARD_MS);
    assert_int_equal(ferry_batch_status(b, 0, st), 0);
    ferry_batch_free(b);
    return rc;
}

static void lie_once(enum lie lie)
{
    struct liar k = {.lie = lie};
    k.mem = malloc(BUF_LEN);
    assert_non_null(k.mem);
    pattern_fill(k.mem, BUF_LEN, SEED, 0);
    assert_int_equal(fake_target_start(&k.ft, NULL, ENGINE_ID, k.mem, BUF_LEN, NULL, serve_liar, &k), 0);
    ferry_engine *e = initiator();
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, k.ft.name, &seg), 0);
    char data[64]; /* the target as the messages name it: its data port */
    snprintf(data, sizeof data, "127.0.0.1:%d", k.ft.data_port);
    /* INFLIGHT requests, each its own piece with a guard after it */
    size_t stride = 2 * REQ;
    char *local = malloc(stride * (INFLIGHT + 1));
    assert_non_null(local);
    memset(local, 0x5a, stride * (INFLIGHT + 1));
    assert_int_equal(ferry_register_memory(e, local, stride * (INFLIGHT + 1), "cpu", 0), 0);
    int op = lie == UNKNOWN_ID || lie == ACK_TWICE ? FERRY_WRITE : FERRY_READ;
    uint64_t remote = (uint64_t)(uintptr_t)k.mem;
    ferry_batch *b[INFLIGHT];
    for (int i = 0; i < INFLIGHT; i++) {
        struct ferry_request r = {op, local + i * stride, seg, remote + (uint64_t)i * REQ, REQ};
        assert_int_equal(ferry_batch_alloc(e, 1, &b[i]), 0);
        assert_int_equal(ferry_batch_submit(b[i], &r, 1), 0);
    }
    for (int i = 0; i < INFLIGHT; i++) {
        (void)ferry_batch_wait(b[i], GUARD_MS);
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b[i], 0, &st), 0);
        print_message("  %s: request %d %s %s: %s\n", lie_names[lie], i,
                      st.state == FERRY_COMPLETED ? "COMPLETED" : st.state == FERRY_FAILED ? "FAILED" : "not ended",
                      ferry_err_name(st.error), st.message);
        if (lie == ACK_TWICE && i == 0) { /* acked truly before the lie */
            assert_int_equal(st.state, FERRY_COMPLETED);
        } else {
            assert_int_equal(st.state, FERRY_FAILED);
            assert_true(st.error == (lie == CLOSE_MID ? FERRY_ECONN : FERRY_EPROTO));
            assert_non_null(strstr(st.message, data));
        }
        ferry_batch_free(b[i]);
    }
    for (int i = 0; i < INFLIGHT + 1; i++) /* nothing landed past a request's own bytes */
        for (size_t j = (i < INFLIGHT && op == FERRY_READ) ? REQ : 0; j < stride; j++)
            if (local[(size_t)i * stride + j] != 0x5a)
                fail_msg("byte %zu after request %d's buffer was written", j, i);

    /* the same segment again: a new connection, answered truly */
    struct ferry_status st;
    pattern_fill(local, REQ, SEED + 1, 0);
    int rc = run(e, FERRY_WRITE, local, seg, remote + 8 * REQ, &st);
    if (rc)
        fail_msg("WRITE after the lie: %s: %s", ferry_err_name(rc), st.message);
    assert_int_equal(pattern_check(k.mem + 8 * REQ, REQ, SEED + 1, 0), -1);
    rc = run(e, FERRY_READ, local + stride, seg, remote + 9 * REQ, &st);
    if (rc)
        fail_msg("READ after the lie: %s: %s", ferry_err_name(rc), st.message);
    assert_int_equal(pattern_check(local + stride, REQ, SEED, 9 * REQ), -1);
    assert_true(atomic_load(&k.conns) >= 2);

    ferry_unregister_memory(e, local);
    ferry_engine_destroy(e);
    fake_target_stop(&k.ft);
    free(local);
    free(k.mem);
}

static void test_ack_of_an_id_never_sent(void **state) { (void)state; lie_once(UNKNOWN_ID); }
static void test_ack_twice(void **state) { (void)state; lie_once(ACK_TWICE); }
static void test_read_answered_with_more(void **state) { (void)state; lie_once(READ_MORE); }
static void test_read_answered_with_fewer(void **state) { (void)state; lie_once(READ_LESS); }
static void test_close_mid_payload(void **state) { (void)state; lie_once(CLOSE_MID); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ack_of_an_id_never_sent),
        cmocka_unit_test(test_ack_twice),
        cmocka_unit_test(test_read_answered_with_more),
        cmocka_unit_test(test_read_answered_with_fewer),
        cmocka_unit_test(test_close_mid_payload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

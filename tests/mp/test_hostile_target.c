/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_hostile_target.c — the initiator against a target it cannot trust
 * (issue 10, items 4 and 1 on the initiator side).
 *
 * The target here is a small server in this process that speaks ferry's
 * handshake and wire format itself: it publishes one buffer, acknowledges
 * HELLO, and then answers each frame the way a test asks:
 *   DRIP  sends the READ response header, then its payload one byte per
 *         0.5 s; or drips a WRITE ack one byte per 0.5 s;
 *   GATE  holds each response until the test releases it, then answers
 *         correctly (payload from its buffer, trailer when asked), or with
 *         a trailer that says an entry was revoked, or a broken trailer;
 *   STALL serves one frame, then reads nothing until the test releases
 *         it (the initiator's socket fills up), then lands WRITE payload
 *         in its buffer and answers at once; or closes the connection.
 * A dripping target must not hold a request past its deadline, nor
 * ferry_batch_wait / ferry_batch_free past it; and an unregister of local
 * memory that a request in flight reads from or writes into returns only
 * once that request has ended (host memory, and sim device memory staged
 * through the pool), after which nothing more lands in the memory.
 */
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "engine/engine.h"
#include "fake_target.h"
#include "net.h"
#include "testutil.h"
#include "transport/tcp/tcp_wire.h"

#define KIB 1024u
#define BUF_LEN (4u << 20)
#define ENGINE_ID 0x5eedf00dull
#define TIMEOUT_MS 2000u
#define GUARD_MS 30000 /* 15 request deadlines: only a hang reaches it */
#define SEED 11

enum mode { DRIP, GATE, STALL };

struct hostile {
    enum mode mode;
    struct fake_target ft;     /* the handshake server, the data listener, its thread */
    char *mem;                 /* the published buffer */
    size_t len;                /* its length: BUF_LEN unless a test says */
    int close_unread;          /* STALL: on release, close instead of serving */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int frames_seen, released;
    uint64_t trailer_revoked;  /* what READ trailers claim */
    int trailer_bad;           /* sends trailers with a broken magic */
    int ack_payload;           /* WRITE acks say they carry 48 bytes, which follow them */
};

/* Sends a response: whole (GATE, once released) or a byte per 0.5 s from
 * offset drip_from on (DRIP). */
static int respond(struct hostile *k, int fd, const uint8_t *bytes, size_t len, size_t drip_from)
{
    if (k->mode == STALL)
        return net_write_full(fd, bytes, len);
    if (k->mode == GATE) {
        pthread_mutex_lock(&k->mu);
        k->frames_seen++;
        pthread_cond_broadcast(&k->cv);
        while (!k->released)
            pthread_cond_wait(&k->cv, &k->mu);
        pthread_mutex_unlock(&k->mu);
        return net_write_full(fd, bytes, len);
    }
    if (drip_from && net_write_full(fd, bytes, drip_from))
        return -1;
    for (size_t i = drip_from; i < len; i++)
        if (fake_target_stopped_within(&k->ft, 500) || send(fd, bytes + i, 1, MSG_NOSIGNAL) != 1)
            return -1;
    return 0;
}

/* One frame from the initiator; -1 ends the connection. */
static int serve_frame(struct hostile *k, int fd)
{
    uint8_t raw[WIRE_HEADER_SIZE + WIRE_MAX_ENTRIES * WIRE_ENTRY_SIZE];
    struct wire_header h;
    struct wire_entry e[WIRE_MAX_ENTRIES];
    if (net_read_full(fd, raw, WIRE_HEADER_SIZE) || wire_decode_header(raw, &h) ||
        net_read_full(fd, raw, (size_t)h.nentries * WIRE_ENTRY_SIZE) || wire_decode_entries(raw, &h, e))
        return -1;
    uint64_t total = 0;
    for (unsigned i = 0; i < h.nentries; i++) {
        total += e[i].len;
        assert_true(e[i].addr >= (uint64_t)(uintptr_t)k->mem &&
                    e[i].addr + e[i].len <= (uint64_t)(uintptr_t)k->mem + k->len);
    }
    if (k->mode == STALL && h.type == WIRE_WRITE) {
        for (unsigned i = 0; i < h.nentries; i++)
            if (net_read_full(fd, (void *)(uintptr_t)e[i].addr, e[i].len))
                return -1;
    } else if ((h.type == WIRE_WRITE || h.type == WIRE_NOTIFY) && net_discard(fd, h.payload_len)) {
        return -1;
    }
    if (h.type == WIRE_WRITE || h.type == WIRE_NOTIFY) {
        struct wire_header ack = {.type = h.type == WIRE_WRITE ? WIRE_WRITE_ACK : WIRE_NOTIFY_ACK, .id = h.id};
        size_t extra = k->ack_payload && h.type == WIRE_WRITE ? WIRE_HEADER_SIZE : 0;
        ack.payload_len = extra;
        wire_encode_header(&ack, raw);
        memset(raw + WIRE_HEADER_SIZE, 0, extra); /* what it claims to carry (a header's worth of zeros) */
        return respond(k, fd, raw, WIRE_HEADER_SIZE + extra, 0);
    }
    if (h.type != WIRE_READ)
        return -1;
    size_t len = WIRE_HEADER_SIZE + total + WIRE_TRAILER_SIZE;
    uint8_t *resp = malloc(len);
    struct wire_header rh = {.type = WIRE_READ_RESP, .id = h.id, .payload_len = total,
                             .flags = h.flags & WIRE_FLAG_TRAILER};
    wire_encode_header(&rh, resp);
    size_t off = WIRE_HEADER_SIZE;
    for (unsigned i = 0; i < h.nentries; i++) {
        memcpy(resp + off, (const void *)(uintptr_t)e[i].addr, e[i].len);
        off += e[i].len;
    }
    if (rh.flags & WIRE_FLAG_TRAILER) {
        wire_encode_trailer(&(struct wire_trailer){.revoked = k->trailer_revoked}, resp + off);
        if (k->trailer_bad)
            resp[off] ^= 0xff;
        off += WIRE_TRAILER_SIZE;
    }
    int rc = respond(k, fd, resp, off, WIRE_HEADER_SIZE);
    free(resp);
    return rc;
}

/* One data connection (fake_target's thread): HELLO, then frames as the mode says. */
static void serve_hostile(void *ctx, int fd)
{
    struct hostile *k = ctx;
    uint8_t raw[WIRE_HEADER_SIZE];
    struct wire_header h;
    char name[WIRE_MAX_NAME];
    if (net_read_full(fd, raw, sizeof raw) == 0 && wire_decode_header(raw, &h) == 0 &&
        net_read_full(fd, name, (size_t)h.payload_len) == 0) {
        struct wire_header ack = {.type = WIRE_HELLO_ACK, .id = h.id};
        wire_encode_header(&ack, raw);
        int go = net_write_full(fd, raw, sizeof raw) == 0;
        if (go && k->mode == STALL) {
            go = serve_frame(k, fd) == 0; /* the one that makes the connection ready */
            pthread_mutex_lock(&k->mu);
            while (!k->released)
                pthread_cond_wait(&k->cv, &k->mu);
            pthread_mutex_unlock(&k->mu);
            go = !k->close_unread;
        }
        while (go && serve_frame(k, fd) == 0) {
        }
    }
}

static void hostile_start_len(struct hostile *k, enum mode mode, size_t len)
{
    memset(k, 0, sizeof *k);
    k->mode = mode;
    k->len = len;
    k->mem = malloc(len);
    pattern_fill(k->mem, len, SEED, 0);
    pthread_mutex_init(&k->mu, NULL);
    pthread_cond_init(&k->cv, NULL);
    assert_int_equal(fake_target_start(&k->ft, NULL, ENGINE_ID, k->mem, len, NULL, serve_hostile, k), 0);
}

static void hostile_start(struct hostile *k, enum mode mode)
{
    hostile_start_len(k, mode, BUF_LEN);
}

static void hostile_release(struct hostile *k)
{
    pthread_mutex_lock(&k->mu);
    k->released = 1;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

static void hostile_wait_frame(struct hostile *k)
{
    pthread_mutex_lock(&k->mu);
    while (k->frames_seen == 0)
        pthread_cond_wait(&k->cv, &k->mu);
    pthread_mutex_unlock(&k->mu);
}

static void hostile_stop(struct hostile *k)
{
    hostile_release(k);
    fake_target_stop(&k->ft);
    pthread_mutex_destroy(&k->mu);
    pthread_cond_destroy(&k->cv);
    free(k->mem);
}

/* ------------------------------------------------------------ initiator */

static ferry_engine *initiator_with_timeout(unsigned timeout_ms)
{
    struct ferry_config cfg;
    ferry_engine *e;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.request_timeout_ms = timeout_ms;
    cfg.connect_timeout_ms = 2000;
    cfg.tcp_connections = 1;
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    return e;
}

static ferry_engine *initiator(void)
{
    return initiator_with_timeout(TIMEOUT_MS);
}

static ferry_segment_t open_hostile(ferry_engine *e, struct hostile *k)
{
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, k->ft.name, &seg), 0);
    return seg;
}

static int state_of(ferry_batch *b)
{
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    return st.state;
}

/* A dripping target: the request ends TIMEOUT at its deadline, and both
 * ferry_batch_wait and ferry_batch_free come back right after. */
static void drip(int opcode)
{
    struct hostile k;
    hostile_start(&k, DRIP);
    ferry_engine *e = initiator();
    ferry_segment_t seg = open_hostile(e, &k);
    char *local = malloc(BUF_LEN);
    assert_int_equal(ferry_register_memory(e, local, BUF_LEN, "cpu", 0), 0);
    struct ferry_request q = {opcode, local, seg, (uint64_t)(uintptr_t)k.mem, 64 * KIB};
    for (int how = 0; how < 2; how++) { /* 0: wait then free, 1: free alone */
        ferry_batch *b;
        assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
        uint64_t t0 = now_ms();
        assert_int_equal(ferry_batch_submit(b, &q, 1), 0);
        if (how == 0) {
            int wrc = ferry_batch_wait(b, GUARD_MS);
            if (wrc != FERRY_ETIMEDOUT)
                fail_msg("batch_wait: %s: %s", ferry_err_name(wrc), ferry_last_error());
            assert_int_equal(state_of(b), FERRY_TIMEOUT); /* the request ended, not the wait */
            print_message("%s, target drips: TIMEOUT after %llu ms (deadline %u ms): %s\n",
                          opcode == FERRY_READ ? "READ" : "WRITE", (unsigned long long)(now_ms() - t0),
                          TIMEOUT_MS, ferry_last_error());
        }
        ferry_batch_free(b);
        if (how == 1)
            print_message("  ferry_batch_free alone returned after %llu ms\n", (unsigned long long)(now_ms() - t0));
    }
    ferry_engine_destroy(e);
    hostile_stop(&k);
    free(local);
}

static void test_drip_read_response(void **state)
{
    (void)state;
    drip(FERRY_READ);
}

static void test_drip_write_ack(void **state)
{
    (void)state;
    drip(FERRY_WRITE);
}

/* ------------------------------------------------------------ unregister waits */

struct unreg_call {
    ferry_engine *e;
    void *addr;
    const char *location;     /* the memory is freed right after unregister returns */
    size_t len;
    ferry_batch *b;
    int rc, state_at_return;
};

static void *unreg_main(void *arg)
{
    struct unreg_call *u = arg;
    u->rc = ferry_unregister_memory(u->e, u->addr);
    u->state_at_return = state_of(u->b);
    if (strcmp(u->location, "cpu") == 0)
        memset(u->addr, 0x33, u->len); /* reused at once */
    else
        ferry_mem_free(u->e, u->location, u->addr, u->len); /* gone at once */
    return NULL;
}

static int is_registered(ferry_engine *e, void *addr)
{
    return memreg_find(&e->registry, (uint64_t)(uintptr_t)addr, 1, 0, NULL) == 0;
}

/* A request is in flight (the target holds its response); unregister of its
 * local memory must return only after the request ended. */
static void unregister_in_flight(int opcode, const char *location)
{
    struct hostile k;
    hostile_start(&k, GATE);
    ferry_engine *e = initiator();
    ferry_segment_t seg = open_hostile(e, &k);
    const size_t len = 1u << 20;
    void *local;
    assert_int_equal(ferry_mem_alloc(e, location, len, &local), 0);
    assert_int_equal(ferry_register_memory(e, local, len, location, 0), 0);
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    struct ferry_request q = {opcode, local, seg, (uint64_t)(uintptr_t)k.mem, len};
    assert_int_equal(ferry_batch_submit(b, &q, 1), 0);
    hostile_wait_frame(&k); /* the target has the frame and holds its answer */

    struct unreg_call u = {e, local, location, len, b, -1, -1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, unreg_main, &u), 0);
    uint64_t end = now_ms() + GUARD_MS;
    while (is_registered(e, local)) { /* unregister has begun */
        assert_true(now_ms() < end);
        sched_yield();
    }
    hostile_release(&k);
    pthread_join(th, NULL);
    assert_int_equal(u.rc, 0);
    assert_int_equal(u.state_at_return, FERRY_COMPLETED); /* it waited for the request */
    assert_int_equal(ferry_batch_wait(b, GUARD_MS), 0);
    if (strcmp(location, "cpu") == 0) {
        const char *p = local;
        for (size_t i = 0; i < len; i++) /* nothing landed after it returned */
            assert_int_equal(p[i], 0x33);
        munmap(local, len);
    }
    ferry_batch_free(b);
    ferry_engine_destroy(e);
    hostile_stop(&k);
}

static void test_unregister_waits_for_read(void **state)
{
    (void)state;
    unregister_in_flight(FERRY_READ, "cpu");
}

static void test_unregister_waits_for_write(void **state)
{
    (void)state;
    unregister_in_flight(FERRY_WRITE, "cpu");
}

static void test_unregister_waits_for_staged_read(void **state)
{
    (void)state;
    unregister_in_flight(FERRY_READ, "sim:0");
}

static void test_unregister_waits_for_staged_write(void **state)
{
    (void)state;
    unregister_in_flight(FERRY_WRITE, "sim:0");
}

/* The trailer of a READ response: an entry the target revoked mid-response
 * ends FAILED FERRY_ERANGE (its bytes were zeros); a malformed trailer
 * breaks the connection with FERRY_EPROTO. */
static void test_read_trailer_from_target(void **state)
{
    (void)state;
    for (int bad = 0; bad < 2; bad++) {
        struct hostile k;
        hostile_start(&k, GATE);
        hostile_release(&k);
        k.trailer_revoked = 1;
        k.trailer_bad = bad;
        ferry_engine *e = initiator();
        ferry_segment_t seg = open_hostile(e, &k);
        char *local = malloc(BUF_LEN);
        assert_int_equal(ferry_register_memory(e, local, BUF_LEN, "cpu", 0), 0);
        struct ferry_request q = {FERRY_READ, local, seg, (uint64_t)(uintptr_t)k.mem, 64 * KIB};
        ferry_batch *b;
        assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
        assert_int_equal(ferry_batch_submit(b, &q, 1), 0);
        assert_int_equal(ferry_batch_wait(b, GUARD_MS), bad ? FERRY_EPROTO : FERRY_ERANGE);
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, 0, &st), 0);
        assert_int_equal(st.state, FERRY_FAILED);
        assert_non_null(strstr(st.message, bad ? "trailer" : "unregistered"));
        print_message("trailer %s: %s\n", bad ? "broken" : "revokes entry 0", st.message);
        ferry_batch_free(b);
        ferry_engine_destroy(e);
        hostile_stop(&k);
        free(local);
    }
}

/* An ack that says it carries payload (no ferry target sends one): the
 * WRITE fails FERRY_EPROTO naming it (wire_decode_header).  The initiator's
 * receiver reads the headers that follow an ack ahead of time, which is
 * right only while an ack is a header alone. */
static void test_ack_with_payload(void **state)
{
    (void)state;
    struct hostile k;
    hostile_start(&k, GATE);
    hostile_release(&k);
    k.ack_payload = 1;
    ferry_engine *e = initiator();
    ferry_segment_t seg = open_hostile(e, &k);
    char *local = calloc(1, 64 * KIB);
    assert_int_equal(ferry_register_memory(e, local, 64 * KIB, "cpu", 0), 0);
    struct ferry_request q = {FERRY_WRITE, local, seg, (uint64_t)(uintptr_t)k.mem, 64 * KIB};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &q, 1), 0);
    assert_int_equal(ferry_batch_wait(b, GUARD_MS), FERRY_EPROTO);
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    assert_int_equal(st.state, FERRY_FAILED);
    assert_non_null(strstr(st.message, "payload"));
    print_message("an ack with payload: %s\n", st.message);
    ferry_batch_free(b);
    ferry_engine_destroy(e);
    hostile_stop(&k);
    free(local);
}

/* A submit that fails (any request invalid: nothing is submitted) gives
 * back the accesses it began; a request that ended gives back its own. */
static void test_failed_submit_leaves_no_access(void **state)
{
    (void)state;
    struct hostile k;
    hostile_start(&k, GATE);
    hostile_release(&k);
    ferry_engine *e = initiator();
    ferry_segment_t seg = open_hostile(e, &k);
    char *local = malloc(BUF_LEN);
    assert_int_equal(ferry_register_memory(e, local, BUF_LEN, "cpu", 0), 0);
    uint64_t remote = (uint64_t)(uintptr_t)k.mem;
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(e, 4, &b), 0);
    struct ferry_request q[2] = {{FERRY_WRITE, local, seg, remote, 4096}, {7, local, seg, remote, 4096}};
    assert_int_equal(ferry_batch_submit(b, q, 2), FERRY_EINVAL);           /* second: bad opcode */
    q[1] = (struct ferry_request){FERRY_WRITE, local, seg + 99, remote, 4096};
    assert_int_equal(ferry_batch_submit(b, q, 2), FERRY_ENOSEG);           /* routing fails */
    q[1] = (struct ferry_request){FERRY_WRITE, local, seg, remote + BUF_LEN, 4096};
    assert_int_equal(ferry_batch_submit(b, q, 2), FERRY_ERANGE);           /* outside the target */
    assert_int_equal(memreg_access_count(&e->registry), 0);
    assert_int_equal(ferry_batch_submit(b, q, 1), 0);
    assert_int_equal(ferry_batch_wait(b, GUARD_MS), 0);
    assert_int_equal(memreg_access_count(&e->registry), 0);
    assert_int_equal(ferry_unregister_memory(e, local), 0); /* nothing left to wait for */
    ferry_batch_free(b);
    ferry_engine_destroy(e);
    hostile_stop(&k);
    free(local);
}

/* ------------------------------------------------------------ a full socket */

#define STALL_LEN (48u << 20) /* far more than the socket buffers on both sides hold */

/* One connection: this target serves one at a time, and 48 MiB in flight
 * would open more (the tcp transport reads the limit when it starts). */
static ferry_engine *one_connection_initiator(void)
{
    assert_int_equal(setenv("FERRY_TCP_MAX_CONNECTIONS", "1", 1), 0);
    ferry_engine *e = initiator_with_timeout(GUARD_MS);
    unsetenv("FERRY_TCP_MAX_CONNECTIONS");
    return e;
}

/* Writes STALL_LEN in 1 MiB frames to a target that reads nothing until the
 * submit has returned: the submitting thread writes what the socket takes
 * and never waits for room (the sender thread writes the rest).  Returns
 * the batch's wait status; *b_out is the batch, for the caller to free. */
static int write_to_stalled(struct hostile *k, ferry_engine *e, char *src, ferry_batch **b_out)
{
    ferry_segment_t seg = open_hostile(e, k);
    pattern_fill(src, STALL_LEN, SEED + 1, 0);
    assert_int_equal(ferry_register_memory(e, src, STALL_LEN, "cpu", 0), 0);
    enum { N = STALL_LEN >> 20 };
    struct ferry_request q[N];
    q[0] = (struct ferry_request){FERRY_WRITE, src, seg, (uint64_t)(uintptr_t)k->mem, 4096};
    assert_int_equal(ferry_batch_alloc(e, 1, b_out), 0);
    assert_int_equal(ferry_batch_submit(*b_out, q, 1), 0); /* served: the connection is up and idle */
    assert_int_equal(ferry_batch_wait(*b_out, GUARD_MS), 0);
    ferry_batch_free(*b_out);
    for (size_t i = 0; i < N; i++)
        q[i] = (struct ferry_request){FERRY_WRITE, src + (i << 20), seg, (uint64_t)(uintptr_t)k->mem + (i << 20),
                                      1u << 20};
    assert_int_equal(ferry_batch_alloc(e, N, b_out), 0);
    assert_int_equal(ferry_batch_submit(*b_out, q, N), 0); /* returns though the target reads nothing */
    hostile_release(k);
    return ferry_batch_wait(*b_out, GUARD_MS);
}

static void test_write_past_a_full_socket(void **state)
{
    (void)state;
    struct hostile k;
    hostile_start_len(&k, STALL, STALL_LEN);
    ferry_engine *e = one_connection_initiator();
    char *src = malloc(STALL_LEN);
    ferry_batch *b;
    int rc = write_to_stalled(&k, e, src, &b);
    if (rc)
        print_message("wait: %s\n", ferry_last_error());
    assert_int_equal(rc, 0);
    assert_int_equal(memcmp(k.mem, src, STALL_LEN), 0); /* every byte, in order */
    ferry_batch_free(b);
    ferry_engine_destroy(e);
    hostile_stop(&k);
    free(src);
}

/* The target closes with the socket full and a frame half written: every
 * request fails (no hang), and the engine's accesses are all given back. */
static void test_full_socket_then_close(void **state)
{
    (void)state;
    struct hostile k;
    hostile_start_len(&k, STALL, STALL_LEN);
    k.close_unread = 1;
    ferry_engine *e = one_connection_initiator();
    char *src = malloc(STALL_LEN);
    ferry_batch *b;
    assert_int_equal(write_to_stalled(&k, e, src, &b), FERRY_ECONN);
    assert_int_equal(state_of(b), FERRY_FAILED);
    assert_int_equal(memreg_access_count(&e->registry), 0);
    ferry_batch_free(b);
    ferry_engine_destroy(e);
    hostile_stop(&k);
    free(src);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_drip_read_response),
        cmocka_unit_test(test_drip_write_ack),
        cmocka_unit_test(test_unregister_waits_for_read),
        cmocka_unit_test(test_unregister_waits_for_write),
        cmocka_unit_test(test_unregister_waits_for_staged_read),
        cmocka_unit_test(test_unregister_waits_for_staged_write),
        cmocka_unit_test(test_read_trailer_from_target),
        cmocka_unit_test(test_ack_with_payload),
        cmocka_unit_test(test_failed_submit_leaves_no_access),
        cmocka_unit_test(test_write_past_a_full_socket),
        cmocka_unit_test(test_full_socket_then_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

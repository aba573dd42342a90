/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_stalling_peers.c — peers that stall or drip hold ferry no longer
 * than its deadlines (rev19), each with short deadlines and real sockets:
 *
 *  - initiator: a target that takes the first frame, then stops reading
 *    (its window shut, its kernel still there) or reads 1 KiB per 50 ms,
 *    while 32 frames of 1 MiB wait to be written: every request ends
 *    TIMEOUT, batch_wait returns FERRY_ETIMEDOUT, the connection with its
 *    frame half written is dropped (the target reads to its end: EOF), and
 *    the next request goes on a new connection and lands verified;
 *  - target: an initiator (a raw socket from 127.0.0.2) that floods WRITE
 *    frames and reads none of their acks: the target drops that one
 *    connection (the attacker sees it reset without reading a byte) while
 *    a well-behaved initiator from 127.0.0.1 moves data, verified, before
 *    and after;
 *  - handshake server: a client that authenticates slowly (0.6 of the
 *    timeout) and then drips its request to finish at 1.3 of it gets no
 *    answer: one deadline covers authentication and request (before rev19
 *    the request had a fresh one after authentication, and was answered);
 *    a normal fetch is answered after it; the tcp data port's HELLO the same.
 *
 * On main before rev19 only the handshake case failed: the initiator's
 * receiver already broke a connection whose frame passed its deadline
 * (its 100 ms tick), and the target's ack write, one small sendmsg, timed
 * out after SO_SNDTIMEO with no progress; the tcp HELLO already had one
 * deadline.  Those cases guard what rev19 now bounds explicitly (the
 * sender writes by the frame's deadline, the target answers by it).
 *
 * No duration is asserted: the outcomes (state, code, the connection's
 * end, bytes verified) are; the pace of the hostile peers is a multiple of
 * the deadlines, and GUARD_MS is only a limit against a hang.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "auth.h"
#include "engine/engine.h"
#include "fake_target.h"
#include "meta/p2p.h"
#include "net.h"
#include "rawpeer.h"
#include "testutil.h"
#include "transport/tcp/tcp_wire.h"

#define MIB (1u << 20)
#define ENGINE_ID 0x57a11ull
#define SEED 19
#define GUARD_MS 30000 /* only a hang reaches it */
#define STALL_FRAMES 32u
#define BUF_LEN ((size_t)STALL_FRAMES * MIB)

/* ------------------------------------------------------------ a target that stalls */

struct staller {
    struct fake_target ft;
    char *mem;
    bool slow_reader;      /* reads 1 KiB per 50 ms instead of nothing */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int released, conns;
    int first_saw_eof;     /* connection 1, read to its end after the release: 1 EOF, -1 an error */
};

/* One WRITE frame served as a target would: payload into mem, then the ack. */
static int serve_write(struct staller *k, int fd)
{
    uint8_t raw[WIRE_HEADER_SIZE + WIRE_MAX_ENTRIES * WIRE_ENTRY_SIZE];
    struct wire_header h;
    struct wire_entry e[WIRE_MAX_ENTRIES];
    if (net_read_full(fd, raw, WIRE_HEADER_SIZE) || wire_decode_header(raw, &h) || h.type != WIRE_WRITE ||
        net_read_full(fd, raw, (size_t)h.nentries * WIRE_ENTRY_SIZE) || wire_decode_entries(raw, &h, e))
        return -1;
    for (unsigned i = 0; i < h.nentries; i++) {
        if (e[i].addr < (uint64_t)(uintptr_t)k->mem || e[i].addr + e[i].len > (uint64_t)(uintptr_t)k->mem + BUF_LEN)
            return -1;
        if (net_read_full(fd, (void *)(uintptr_t)e[i].addr, e[i].len))
            return -1;
    }
    struct wire_header ack = {.type = WIRE_WRITE_ACK, .id = h.id};
    wire_encode_header(&ack, raw);
    return net_write_full(fd, raw, WIRE_HEADER_SIZE);
}

static bool released(struct staller *k)
{
    pthread_mutex_lock(&k->mu);
    bool r = k->released;
    pthread_mutex_unlock(&k->mu);
    return r;
}

/* Connection 1: HELLO, one frame, then stall until released, then read to
 * the end and say how it ended.  Later ones: served. */
static void serve_staller(void *ctx, int fd)
{
    struct staller *k = ctx;
    pthread_mutex_lock(&k->mu);
    int nth = ++k->conns;
    pthread_mutex_unlock(&k->mu);
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
    if (nth > 1) {
        while (serve_write(k, fd) == 0) {
        }
        return;
    }
    if (serve_write(k, fd))
        return;
    char sink[1024];
    while (!released(k) && !fake_target_stopped_within(&k->ft, 50))
        if (k->slow_reader && recv(fd, sink, sizeof sink, MSG_DONTWAIT) == 0)
            break;
    int end = 0;
    uint64_t give_up = net_deadline(GUARD_MS);
    while (!end && now_ns() < give_up) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n == 0)
            end = 1;
        else if (n < 0 && errno != EAGAIN && errno != EINTR)
            end = -1;
    }
    pthread_mutex_lock(&k->mu);
    k->first_saw_eof = end ? end : -2;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

static int state_of(ferry_batch *b, size_t i)
{
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, i, &st), 0);
    return st.state;
}

static int run(ferry_engine *e, const struct ferry_request *q, size_t n, ferry_batch **out)
{
    assert_int_equal(ferry_batch_alloc(e, n, out), 0);
    assert_int_equal(ferry_batch_submit(*out, q, n), 0);
    return ferry_batch_wait(*out, GUARD_MS);
}

static void initiator_against_a_staller(bool slow_reader)
{
    struct staller k;
    memset(&k, 0, sizeof k);
    k.slow_reader = slow_reader;
    k.mem = calloc(1, BUF_LEN);
    pthread_mutex_init(&k.mu, NULL);
    pthread_cond_init(&k.cv, NULL);
    assert_int_equal(fake_target_start(&k.ft, NULL, ENGINE_ID, k.mem, BUF_LEN, NULL, serve_staller, &k), 0);

    struct ferry_config cfg;
    ferry_engine *e;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.request_timeout_ms = 1000;
    cfg.connect_timeout_ms = 5000;
    cfg.tcp_connections = 1;
    assert_int_equal(setenv("FERRY_TCP_MAX_CONNECTIONS", "1", 1), 0); /* 32 MiB in flight would open more */
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    unsetenv("FERRY_TCP_MAX_CONNECTIONS");
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, k.ft.name, &seg), 0);
    char *src = malloc(BUF_LEN);
    pattern_fill(src, BUF_LEN, SEED, 0);
    assert_int_equal(ferry_register_memory(e, src, BUF_LEN, "cpu", 0), 0);
    uint64_t remote = (uint64_t)(uintptr_t)k.mem;

    ferry_batch *b;
    struct ferry_request q[STALL_FRAMES];
    q[0] = (struct ferry_request){FERRY_WRITE, src, seg, remote, 4096};
    assert_int_equal(run(e, q, 1, &b), 0); /* the connection is up; the target stalls from now on */
    ferry_batch_free(b);
    for (size_t i = 0; i < STALL_FRAMES; i++)
        q[i] = (struct ferry_request){FERRY_WRITE, src + i * MIB, seg, remote + i * MIB, MIB};
    int rc = run(e, q, STALL_FRAMES, &b);
    char msg[256];
    snprintf(msg, sizeof msg, "%s", ferry_last_error());
    print_message("32 MiB to a target that %s: %s: %s\n", slow_reader ? "reads 1 KiB per 50 ms" : "reads nothing",
                  ferry_err_name(rc), msg);
    assert_int_equal(rc, FERRY_ETIMEDOUT);
    for (size_t i = 0; i < STALL_FRAMES; i++)
        assert_int_equal(state_of(b, i), FERRY_TIMEOUT);
    ferry_batch_free(b);

    pthread_mutex_lock(&k.mu); /* the target reads on: the initiator dropped that connection */
    k.released = 1;
    while (!k.first_saw_eof)
        pthread_cond_wait(&k.cv, &k.mu);
    int eof = k.first_saw_eof;
    pthread_mutex_unlock(&k.mu);
    assert_int_equal(eof, 1);

    q[0] = (struct ferry_request){FERRY_WRITE, src + MIB, seg, remote + MIB, MIB}; /* a new connection, verified */
    rc = run(e, q, 1, &b);
    if (rc)
        fail_msg("after the drop: %s: %s", ferry_err_name(rc), ferry_last_error());
    ferry_batch_free(b);
    assert_memory_equal(k.mem + MIB, src + MIB, MIB);
    pthread_mutex_lock(&k.mu);
    assert_int_equal(k.conns, 2);
    pthread_mutex_unlock(&k.mu);

    ferry_engine_destroy(e);
    fake_target_stop(&k.ft);
    pthread_mutex_destroy(&k.mu);
    pthread_cond_destroy(&k.cv);
    free(k.mem);
    free(src);
}

static void initiator_target_stops_reading(void **state)
{
    (void)state;
    initiator_against_a_staller(false);
}

static void initiator_target_reads_slowly(void **state)
{
    (void)state;
    initiator_against_a_staller(true);
}

/* ------------------------------------------------------------ a target and an initiator that stops reading */

#define TSIZE (8u << 20)
#define XFER (1u << 20)
#define ATTACKER "127.0.0.2"

static int run_one(ferry_engine *e, ferry_segment_t seg, int op, void *local, uint64_t remote)
{
    ferry_batch *b;
    struct ferry_request r = {op, local, seg, remote, XFER};
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    int rc = ferry_batch_submit(b, &r, 1);
    if (!rc)
        rc = ferry_batch_wait(b, GUARD_MS);
    ferry_batch_free(b);
    return rc;
}

/* WRITE 1 MiB of pattern(seed), READ it back: both COMPLETED, the bytes right on both sides. */
static void transfer_verified(ferry_engine *e, ferry_segment_t seg, char *local, struct child_target *t,
                              uint64_t seed)
{
    pattern_fill(local, XFER, seed, 0);
    memset(local + XFER, 0, XFER);
    int rc = run_one(e, seg, FERRY_WRITE, local, t->addr);
    if (rc)
        fail_msg("legitimate WRITE: %s: %s", ferry_err_name(rc), ferry_last_error());
    assert_int_equal(child_target_check(t, 0, XFER, seed), -1);
    rc = run_one(e, seg, FERRY_READ, local + XFER, t->addr);
    if (rc)
        fail_msg("legitimate READ: %s: %s", ferry_err_name(rc), ferry_last_error());
    assert_int_equal(pattern_check(local + XFER, XFER, seed, 0), -1);
}

/* Connects from ATTACKER with a small receive buffer (its window fills at once). */
static int attacker_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int sz = 4096;
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, ATTACKER, &src.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
    assert_true(fd >= 0);
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz), 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&src, sizeof src), 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&dst, sizeof dst), 0);
    return fd;
}

/* The attacker's flood: WRITE frames of 64 bytes into [remote, +64), one
 * after another across calls (a frame cut short by one call is finished by
 * the next: the stream stays in step). */
struct flood {
    uint8_t frame[WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE + 64];
    size_t off;       /* bytes of frame sent */
    unsigned n;       /* frames begun */
    uint64_t bytes;   /* sent in all */
    bool reset;       /* a send found the connection closed by the target */
};

/* Sends until the target has taken nothing for 500 ms (stuck writing acks
 * nobody reads, or only slow: the caller floods again if it does not drop
 * the connection) or has closed it.  Returns the frames begun. */
static unsigned flood_until_stalled(int fd, uint64_t remote, struct flood *f)
{
    for (;;) {
        if (f->off == sizeof f->frame) {
            struct wire_header h = {.type = WIRE_WRITE, .id = f->n, .nentries = 1, .payload_len = 64};
            struct wire_entry e = {remote, 64};
            memset(f->frame, 0, sizeof f->frame);
            wire_encode_header(&h, f->frame);
            wire_encode_entries(&e, 1, f->frame + WIRE_HEADER_SIZE);
            f->off = 0;
            f->n++;
        }
        ssize_t w = send(fd, f->frame + f->off, sizeof f->frame - f->off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            f->off += (size_t)w;
            f->bytes += (uint64_t)w;
            continue;
        }
        if (w < 0 && (errno == EPIPE || errno == ECONNRESET)) {
            f->reset = true;
            return f->n;
        }
        assert_true(w < 0 && (errno == EAGAIN || errno == EINTR));
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, 500) == 0)
            return f->n;
        assert_true(f->n < 10000000u); /* a target that never stops taking them: not this one */
    }
}

/* Has the target closed (reset) fd?  Waits up to limit_ms without reading. */
static bool closed_without_reading(int fd, unsigned limit_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    int n = poll(&p, 1, (int)limit_ms);
    return n > 0 && (p.revents & (POLLERR | POLLHUP | POLLRDHUP));
}

static void target_drops_an_initiator_that_stops_reading(void **state)
{
    (void)state;
    struct child_target t;
    assert_int_equal(putenv((char *)"FERRY_REQUEST_TIMEOUT_MS=1500"), 0);
    int rc = child_target_start(&t, TSIZE, "cpu", SEED);
    unsetenv("FERRY_REQUEST_TIMEOUT_MS");
    assert_int_equal(rc, 0);

    struct ferry_config cfg;
    ferry_engine *e;
    ferry_segment_t seg;
    char *local;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.request_timeout_ms = 20000;
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    assert_int_equal(ferry_mem_alloc(e, "cpu", 2 * XFER, (void **)&local), 0);
    assert_int_equal(ferry_register_memory(e, local, 2 * XFER, "cpu", 0), 0);
    assert_int_equal(ferry_open_segment(e, t.name, &seg), 0);
    transfer_verified(e, seg, local, &t, SEED + 1);

    uint64_t epoch = 0;
    int port = raw_data_port(t.name, NULL, &epoch);
    assert_true(port > 0);
    int fd = attacker_connect(port);
    struct wire_header h;
    assert_int_equal(raw_send_hello(fd, epoch, "stops-reading"), 0);
    assert_int_equal(raw_read_header(fd, &h, 10000), 0);
    assert_int_equal(h.type, WIRE_HELLO_ACK);
    struct flood fl = {.off = sizeof fl.frame};
    unsigned frames = flood_until_stalled(fd, t.addr + TSIZE / 2, &fl);
    print_message("the attacker's frames taken before the target stalled on its acks: %u\n", frames);

    transfer_verified(e, seg, local, &t, SEED + 2); /* the target's other initiators: served at once */
    /* A target that was only slow (a loaded machine) took the flood into its
     * buffers without blocking: flood again until it blocks on its acks, and
     * fail only if it stops taking frames and still keeps the connection. */
    bool closed = false;
    uint64_t give_up = net_deadline(GUARD_MS);
    while (!closed) {
        closed = fl.reset || closed_without_reading(fd, 2000);
        if (closed)
            break;
        uint64_t before = fl.bytes;
        frames = flood_until_stalled(fd, t.addr + TSIZE / 2, &fl);
        if (fl.bytes != before)
            give_up = net_deadline(GUARD_MS); /* it took more: it was not stuck yet */
        else if (now_ns() >= give_up)
            break;
    }
    print_message("frames sent in all: %u\n", frames);
    print_message("the target %s the connection of the initiator that reads nothing\n",
                  closed ? "dropped" : "did NOT drop");
    assert_true(closed);
    transfer_verified(e, seg, local, &t, SEED + 3);
    close(fd);

    ferry_unregister_memory(e, local);
    ferry_mem_free(e, "cpu", local, 2 * XFER);
    ferry_engine_destroy(e);
    child_target_kill(&t);
}

/* ------------------------------------------------------------ the handshake server */

#define KEY "rev19-stalling-peers-key-0123456789"
#define HS_TIMEOUT_MS 1000u

static int describe(void *ctx, char **json)
{
    (void)ctx;
    *json = strdup("{\"name\":\"rev19\"}");
    return *json ? 0 : FERRY_ENOMEM;
}

static void handshake_one_deadline_for_auth_and_request(void **state)
{
    (void)state;
    struct auth_key k;
    assert_int_equal(auth_key_load(&k, KEY, NULL, 1), 0);
    struct p2p_server_opts o = {.io_timeout_ms = HS_TIMEOUT_MS, .auth = &k};
    struct p2p_server *s;
    int port = 0;
    assert_int_equal(p2p_server_start("127.0.0.1", 0, &o, describe, NULL, &s, &port), 0);

    int fd = net_connect("127.0.0.1", port, 5000);
    assert_true(fd >= 0);
    poll(NULL, 0, HS_TIMEOUT_MS * 6 / 10); /* slow to begin: 0.6 of the server's deadline */
    assert_int_equal(auth_client(fd, &k, AUTH_HANDSHAKE, "p2p", net_deadline(10000), NULL), 0);
    const char *body = "{\"op\":\"descriptor\"}";
    uint8_t req[P2P_HEAD_SIZE + 32];
    size_t blen = strlen(body);
    memcpy(req, P2P_MAGIC, 7);
    req[7] = P2P_VERSION;
    for (int i = 0; i < 4; i++)
        req[8 + i] = (uint8_t)(blen >> (8 * i));
    memcpy(req + P2P_HEAD_SIZE, body, blen);
    size_t len = P2P_HEAD_SIZE + blen;
    unsigned pace_ms = HS_TIMEOUT_MS * 7 / 10 / (unsigned)len; /* the last byte at 1.3 of it */
    size_t sent = 0;
    for (; sent < len; sent++) {
        poll(NULL, 0, (int)pace_ms);
        if (send(fd, req + sent, 1, MSG_NOSIGNAL) != 1)
            break;
    }
    uint8_t head[P2P_HEAD_SIZE];
    int rc = net_read_full_deadline(fd, head, sizeof head, net_deadline(GUARD_MS));
    print_message("a request dripped after a slow authentication (%zu of %zu bytes sent): %s\n", sent, len,
                  rc ? "dropped, no answer" : "ANSWERED");
    assert_int_equal(rc, FERRY_ECONN);
    close(fd);

    char *json = NULL; /* the server answers a normal client after it */
    size_t jl = 0;
    char name[64];
    snprintf(name, sizeof name, "127.0.0.1:%d", port);
    assert_int_equal(p2p_fetch_auth(name, 5000, &k, &json, &jl), 0);
    assert_non_null(strstr(json, "rev19"));
    free(json);
    p2p_server_stop(s);
    auth_key_wipe(&k);
}

/* The tcp data port's HELLO: the same, on a target child with a key and
 * FERRY_CONNECT_TIMEOUT_MS=1000 (one deadline for authentication, HELLO and
 * HELLO_ACK, as it was before rev19 too: a guard).  The client waits 0.6 s,
 * authenticates, drips HELLO to finish at 1.3 s: no HELLO_ACK comes, the
 * connection is closed; an engine with the key is served after it. */
static void tcp_hello_one_deadline_for_auth_and_hello(void **state)
{
    (void)state;
    struct child_target t;
    assert_int_equal(putenv((char *)"FERRY_CONNECT_TIMEOUT_MS=" "1000"), 0);
    assert_int_equal(putenv((char *)"FERRY_AUTH_KEY=" KEY), 0);
    int rc = child_target_start(&t, TSIZE, "cpu", SEED);
    unsetenv("FERRY_CONNECT_TIMEOUT_MS");
    unsetenv("FERRY_AUTH_KEY");
    assert_int_equal(rc, 0);
    struct auth_key k;
    assert_int_equal(auth_key_load(&k, KEY, NULL, 1), 0);
    uint64_t epoch = 0;
    int port = raw_data_port(t.name, &k, &epoch);
    assert_true(port > 0);

    int fd = raw_connect_from(ATTACKER, port);
    assert_true(fd >= 0);
    poll(NULL, 0, 600);
    assert_int_equal(auth_client(fd, &k, AUTH_TCP, "tcp", net_deadline(10000), NULL), 0);
    uint8_t hello[WIRE_HEADER_SIZE + 8];
    struct wire_header h = {.type = WIRE_HELLO, .payload_len = 8, .epoch = epoch};
    wire_encode_header(&h, hello);
    memcpy(hello + WIRE_HEADER_SIZE, "dripping", 8);
    unsigned pace_ms = 700u / (unsigned)sizeof hello;
    size_t sent = 0;
    for (; sent < sizeof hello; sent++) {
        poll(NULL, 0, (int)pace_ms);
        if (send(fd, hello + sent, 1, MSG_NOSIGNAL) != 1)
            break;
    }
    rc = raw_read_header(fd, &h, GUARD_MS);
    print_message("a HELLO dripped after a slow authentication (%zu of %zu bytes sent): %s\n", sent, sizeof hello,
                  rc ? "dropped, no HELLO_ACK" : "ANSWERED");
    assert_int_equal(rc, -1);
    close(fd);

    struct ferry_config cfg; /* an initiator with the key is served */
    ferry_engine *e;
    ferry_segment_t seg;
    char *local;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.auth_key = KEY;
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    assert_int_equal(ferry_mem_alloc(e, "cpu", 2 * XFER, (void **)&local), 0);
    assert_int_equal(ferry_register_memory(e, local, 2 * XFER, "cpu", 0), 0);
    assert_int_equal(ferry_open_segment(e, t.name, &seg), 0);
    transfer_verified(e, seg, local, &t, SEED + 4);
    ferry_unregister_memory(e, local);
    ferry_mem_free(e, "cpu", local, 2 * XFER);
    ferry_engine_destroy(e);
    auth_key_wipe(&k);
    child_target_kill(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(initiator_target_stops_reading),
        cmocka_unit_test(initiator_target_reads_slowly),
        cmocka_unit_test(target_drops_an_initiator_that_stops_reading),
        cmocka_unit_test(handshake_one_deadline_for_auth_and_request),
        cmocka_unit_test(tcp_hello_one_deadline_for_auth_and_hello),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

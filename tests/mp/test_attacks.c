/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_attacks.c — no peer can exhaust or pin an engine (issue 10, item 3).
 *
 * A real target engine in a child process, configured through FERRY_*
 * variables with short limits; attackers are raw sockets from another
 * loopback address (127.0.0.2), so per-address caps apply to them and not to
 * the legitimate initiator (an engine in this process, from 127.0.0.1).
 * Every test asserts outcomes: the attacker's socket was closed by the
 * server, the legitimate transfer COMPLETED with its data verified on both
 * sides, the target serves again once the attacker has left.
 */
#include <dirent.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <sys/wait.h>

#include "rawpeer.h"
#include "testutil.h"

#define TSIZE (8u << 20)
#define XFER (1u << 20)
#define SEED 11
#define ATTACKER "127.0.0.2"
#define ATTACKER_2 "127.0.0.3"

/* Starts a child target with extra FERRY_* settings ("NAME=value", NULL-ended). */
static void start_target(struct child_target *t, const char *const *env)
{
    for (size_t i = 0; env[i]; i++)
        assert_int_equal(putenv((char *)env[i]), 0);
    int rc = child_target_start(t, TSIZE, "cpu", SEED);
    for (size_t i = 0; env[i]; i++) {
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(strchr(env[i], '=') - env[i]), env[i]);
        unsetenv(name);
    }
    assert_int_equal(rc, 0);
}

struct initiator {
    ferry_engine *e;
    ferry_segment_t seg;
    char *local;
};

static void initiator_open(struct initiator *in, const struct child_target *t, unsigned idle_ms, unsigned conns)
{
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.request_timeout_ms = 20000;
    cfg.connect_timeout_ms = 5000;
    if (idle_ms)
        cfg.idle_timeout_ms = idle_ms;
    if (conns)
        cfg.tcp_connections = conns;
    assert_int_equal(ferry_engine_create(&cfg, &in->e), 0);
    assert_int_equal(ferry_mem_alloc(in->e, "cpu", 2 * XFER, (void **)&in->local), 0);
    assert_int_equal(ferry_register_memory(in->e, in->local, 2 * XFER, "cpu", 0), 0);
    assert_int_equal(ferry_open_segment(in->e, t->name, &in->seg), 0);
}

static void initiator_close(struct initiator *in)
{
    ferry_unregister_memory(in->e, in->local);
    ferry_mem_free(in->e, "cpu", in->local, 2 * XFER);
    ferry_engine_destroy(in->e);
}

static int run_one(struct initiator *in, int op, void *local, uint64_t remote)
{
    ferry_batch *b;
    struct ferry_request r = {op, local, in->seg, remote, XFER};
    assert_int_equal(ferry_batch_alloc(in->e, 1, &b), 0);
    int rc = ferry_batch_submit(b, &r, 1);
    if (!rc)
        rc = ferry_batch_wait(b, 60000);
    ferry_batch_free(b);
    return rc;
}

/* WRITE 1 MiB of pattern(seed), READ it back: both COMPLETED, and the bytes
 * are right on the target and back here. */
static void transfer_verified(struct initiator *in, struct child_target *t, uint64_t seed)
{
    pattern_fill(in->local, XFER, seed, 0);
    memset(in->local + XFER, 0, XFER);
    int rc = run_one(in, FERRY_WRITE, in->local, t->addr);
    if (rc)
        fail_msg("legitimate WRITE: %s: %s", ferry_err_name(rc), ferry_last_error());
    assert_int_equal(child_target_check(t, 0, XFER, seed), -1);
    rc = run_one(in, FERRY_READ, in->local + XFER, t->addr);
    if (rc)
        fail_msg("legitimate READ: %s: %s", ferry_err_name(rc), ferry_last_error());
    assert_int_equal(pattern_check(in->local + XFER, XFER, seed, 0), -1);
}

/* An attacker's data connection that said HELLO: 1 if the target answered
 * HELLO_ACK (the connection is being served), 0 if it closed it. */
static int attacker_hello(int port, uint64_t epoch, const char *from, int *fd_out)
{
    int fd = raw_connect_from(from, port);
    assert_true(fd >= 0);
    struct wire_header h;
    raw_send_hello(fd, epoch, "attacker");
    int served = raw_read_header(fd, &h, 10000) == 0 && h.type == WIRE_HELLO_ACK && h.status == 0;
    *fd_out = fd;
    return served;
}

/* An attacker's data connection to t that passed the HELLO: its fd. */
static int attacker_connection(const struct child_target *t)
{
    uint64_t epoch = 0;
    int data_port = raw_data_port(t->name, NULL, &epoch), fd;
    assert_int_equal(attacker_hello(data_port, epoch, ATTACKER, &fd), 1);
    return fd;
}

/* Once the attacker has left, the target serves a new connection again
 * (slots come back as the server notices each close: retry for a while). */
static void wait_until_served(int port, uint64_t epoch, const char *from)
{
    uint64_t give_up = net_deadline(30000);
    while (now_ns() < give_up) {
        int fd, served = attacker_hello(port, epoch, from, &fd);
        close(fd);
        if (served)
            return;
        poll(NULL, 0, 50);
    }
    fail_msg("the target did not serve %s again within 30 s after the attacker left", from);
}

/* ------------------------------------------------------------ caps */

static void test_per_peer_cap_legit_still_served(void **state)
{
    (void)state;
    static const char *const env[] = {"FERRY_MAX_CONNECTIONS_PER_PEER=8", "FERRY_MAX_CONNECTIONS=64",
                                      "FERRY_CONNECT_TIMEOUT_MS=30000", NULL};
    struct child_target t;
    struct initiator in;
    start_target(&t, env);
    initiator_open(&in, &t, 0, 0);
    uint64_t epoch = 0;
    int data_port = raw_data_port(t.name, NULL, &epoch), hs_port = raw_handshake_port(t.name);
    assert_true(data_port > 0);

    /* the attacker holds the per-peer maximum on both ports, then asks for more */
    int data_fds[16], hs_fds[9], served = 0;
    for (int i = 0; i < 16; i++)
        served += attacker_hello(data_port, epoch, ATTACKER, &data_fds[i]);
    assert_int_equal(served, 8);
    for (int i = 8; i < 16; i++)
        assert_true(raw_closed_by_peer(data_fds[i], 10000));
    for (int i = 0; i < 9; i++)
        assert_true((hs_fds[i] = raw_connect_from(ATTACKER, hs_port)) >= 0);
    int hs_closed = 0;
    for (int i = 0; i < 9; i++)
        hs_closed += raw_closed_by_peer(hs_fds[i], i == 8 ? 10000 : 1);
    assert_int_equal(hs_closed, 1); /* the ninth: over the cap */

    /* meanwhile the legitimate initiator fetches descriptors and transfers */
    char *json;
    size_t len;
    assert_int_equal(p2p_fetch(t.name, 5000, &json, &len), 0);
    free(json);
    transfer_verified(&in, &t, 21);
    for (int i = 0; i < 8; i++)
        assert_false(raw_is_closed(data_fds[i])); /* the attacker's 8 are still being served */

    for (int i = 0; i < 16; i++)
        close(data_fds[i]);
    for (int i = 0; i < 9; i++)
        close(hs_fds[i]);
    wait_until_served(data_port, epoch, ATTACKER);
    transfer_verified(&in, &t, 22);
    initiator_close(&in);
    child_target_kill(&t);
}

static void test_total_cap_recovers(void **state)
{
    (void)state;
    static const char *const env[] = {"FERRY_MAX_CONNECTIONS=6", "FERRY_MAX_CONNECTIONS_PER_PEER=0", NULL};
    struct child_target t;
    struct initiator in;
    start_target(&t, env);
    initiator_open(&in, &t, 0, 2);
    uint64_t epoch = 0;
    int data_port = raw_data_port(t.name, NULL, &epoch);
    int fds[10], served = 0;
    for (int i = 0; i < 10; i++)
        served += attacker_hello(data_port, epoch, ATTACKER, &fds[i]);
    assert_int_equal(served, 6);
    for (int i = 0; i < 10; i++)
        close(fds[i]);
    wait_until_served(data_port, epoch, "127.0.0.3");
    transfer_verified(&in, &t, 23);
    initiator_close(&in);
    child_target_kill(&t);
}

/* How many of fds the target has not closed, once at least `closed` of them
 * are closed (waits up to 10 s for that: generous, not a measurement). */
static int still_open(const int *fds, int n, int closed)
{
    uint64_t give_up = net_deadline(10000);
    int open;
    do {
        open = 0;
        for (int i = 0; i < n; i++)
            open += !raw_is_closed(fds[i]);
    } while (n - open < closed && now_ns() < give_up && poll(NULL, 0, 20) == 0);
    return open;
}

/* Attackers at two addresses, each within its per-address cap, together
 * hold more than the total cap on both ports, silent (handshake) or idle
 * after HELLO (data), for longer than the test lasts.  A newcomer from a
 * third address still opens the segment and transfers: the address holding
 * the most gives its oldest connection up; the cap still holds. */
static void test_total_cap_shared_by_addresses(void **state)
{
    (void)state;
    static const char *const env[] = {"FERRY_MAX_CONNECTIONS=12", "FERRY_MAX_CONNECTIONS_PER_PEER=8",
                                      "FERRY_CONNECT_TIMEOUT_MS=30000", NULL};
    static const char *const from[] = {"127.0.0.2", "127.0.0.3"};
    struct child_target t;
    struct initiator in;
    start_target(&t, env);
    uint64_t epoch = 0;
    int data_port = raw_data_port(t.name, NULL, &epoch), hs_port = raw_handshake_port(t.name);
    assert_true(data_port > 0);
    enum { N = 16 };
    int hs_fds[N], data_fds[N];
    for (int i = 0; i < N; i++) {
        assert_true((hs_fds[i] = raw_connect_from(from[i / 8], hs_port)) >= 0);
        (void)attacker_hello(data_port, epoch, from[i / 8], &data_fds[i]);
    }
    assert_int_equal(still_open(hs_fds, N, N - 12), 12); /* the cap: 12 of the 16 */
    assert_int_equal(still_open(data_fds, N, N - 12), 12);

    initiator_open(&in, &t, 0, 2); /* from 127.0.0.1: a descriptor fetch, then two data connections */
    transfer_verified(&in, &t, 61);
    assert_true(still_open(hs_fds, N, 0) <= 12);
    assert_true(still_open(data_fds, N, 0) <= 12 - 1);

    for (int i = 0; i < N; i++) {
        close(hs_fds[i]);
        close(data_fds[i]);
    }
    initiator_close(&in);
    child_target_kill(&t);
}

/* At the total cap the eviction spares a connection serving a frame: a
 * peer at 127.0.0.2 holds two data connections, the older one serving a
 * WRITE into sim device memory whose copy the target holds back
 * (FERRY_SIM_HOLD_COPY), the other idle; an attacker at 127.0.0.3 holds the
 * third slot.  A newcomer at 127.0.0.4 takes the idle one's slot; the busy
 * one stays and, once the copy runs, its WRITE is acknowledged. */
static void test_total_cap_spares_busy_connections(void **state)
{
    (void)state;
    char hold_path[64], hold[96];
    snprintf(hold_path, sizeof hold_path, "/tmp/ferry-attacks-hold-%d", (int)getpid());
    unlink(hold_path);
    snprintf(hold, sizeof hold, "2:%s", hold_path); /* job 1 fills the target's memory */
    setenv("FERRY_SIM_HOLD_COPY", hold, 1);
    static const char *const env[] = {"FERRY_MAX_CONNECTIONS=3", "FERRY_MAX_CONNECTIONS_PER_PEER=0",
                                      "FERRY_CONNECT_TIMEOUT_MS=30000", NULL};
    struct child_target t;
    for (size_t i = 0; env[i]; i++)
        assert_int_equal(putenv((char *)env[i]), 0);
    int rc = child_target_start(&t, TSIZE, "sim:0", SEED);
    unsetenv("FERRY_SIM_HOLD_COPY");
    unsetenv("FERRY_MAX_CONNECTIONS");
    unsetenv("FERRY_MAX_CONNECTIONS_PER_PEER");
    unsetenv("FERRY_CONNECT_TIMEOUT_MS");
    assert_int_equal(rc, 0);
    uint64_t epoch = 0;
    int data_port = raw_data_port(t.name, NULL, &epoch), busy, idle_fd, attacker, newcomer;
    assert_true(data_port > 0);
    assert_int_equal(attacker_hello(data_port, epoch, "127.0.0.2", &busy), 1);
    assert_int_equal(attacker_hello(data_port, epoch, "127.0.0.2", &idle_fd), 1);
    assert_int_equal(attacker_hello(data_port, epoch, ATTACKER_2, &attacker), 1);
    enum { LEN = 16384 };
    uint8_t frame[WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE + LEN];
    struct wire_header h = {.type = WIRE_WRITE, .nentries = 1, .id = 7, .payload_len = LEN};
    struct wire_entry e = {t.addr, LEN};
    wire_encode_header(&h, frame);
    wire_encode_entries(&e, 1, frame + WIRE_HEADER_SIZE);
    pattern_fill(frame + WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE, LEN, 81, 0);
    assert_int_equal(net_write_full(busy, frame, sizeof frame), 0);
    /* from here on the connection is busy, or its bytes wait unread: either way not idle */
    assert_int_equal(attacker_hello(data_port, epoch, "127.0.0.4", &newcomer), 1);
    assert_true(raw_closed_by_peer(idle_fd, 10000));
    assert_false(raw_is_closed(busy));
    int fd = open(hold_path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600); /* the copy runs */
    assert_true(fd >= 0);
    close(fd);
    struct wire_header ack;
    assert_int_equal(raw_read_header(busy, &ack, 30000), 0);
    assert_int_equal(ack.type, WIRE_WRITE_ACK);
    assert_int_equal(ack.id, 7);
    assert_int_equal(ack.status, 0); /* the bytes are in device memory (test_ack_on_copy reads them back) */
    close(busy);
    close(idle_fd);
    close(attacker);
    close(newcomer);
    unlink(hold_path);
    child_target_kill(&t);
}

/* ------------------------------------------------------------ slow peers */

struct dripper {
    int fd;
    const uint8_t *bytes;
    size_t len;
    unsigned every_ms;
    size_t sent;
    bool closed_early;          /* the server closed before we were done */
    bool done;
    pthread_mutex_t lock;
    pthread_cond_t started;
};

static void *drip_main(void *arg)
{
    struct dripper *d = arg;
    bool closed = false;
    for (size_t i = 0; i < d->len && !closed; i++) {
        closed = send(d->fd, d->bytes + i, 1, MSG_NOSIGNAL) != 1 || raw_is_closed(d->fd);
        pthread_mutex_lock(&d->lock);
        d->sent = closed ? i : i + 1;
        pthread_cond_broadcast(&d->started);
        pthread_mutex_unlock(&d->lock);
        struct pollfd p = {.fd = d->fd, .events = POLLIN}; /* wakes early if the server closes */
        if (!closed)
            poll(&p, 1, (int)d->every_ms);
        closed = closed || raw_is_closed(d->fd);
    }
    pthread_mutex_lock(&d->lock);
    d->closed_early = closed;
    d->done = true;
    pthread_cond_broadcast(&d->started);
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

static void drip_start(struct dripper *d, pthread_t *th, int fd, const uint8_t *bytes, size_t len)
{
    memset(d, 0, sizeof *d);
    d->fd = fd;
    d->bytes = bytes;
    d->len = len;
    d->every_ms = 200;
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->started, NULL);
    assert_int_equal(pthread_create(th, NULL, drip_main, d), 0);
    pthread_mutex_lock(&d->lock); /* the drip is under way before the legitimate client starts */
    while (d->sent < 2 && !d->done)
        pthread_cond_wait(&d->started, &d->lock);
    pthread_mutex_unlock(&d->lock);
}

static void test_dripping_handshake_client(void **state)
{
    (void)state;
    /* a whole request must arrive within 1.5 s; the drip would take 6 s */
    static const char *const env[] = {"FERRY_CONNECT_TIMEOUT_MS=1500", NULL};
    struct child_target t;
    start_target(&t, env);
    uint8_t req[31];
    memcpy(req, "FERRYHS1", 8);
    req[8] = 19, req[9] = req[10] = req[11] = 0;
    memcpy(req + 12, "{\"op\":\"descriptor\"}", 19);
    struct dripper d;
    pthread_t th;
    int fd = raw_connect_from(ATTACKER, raw_handshake_port(t.name));
    assert_true(fd >= 0);
    drip_start(&d, &th, fd, req, sizeof req);
    for (int i = 0; i < 3; i++) { /* other clients are served meanwhile */
        char *json = NULL;
        size_t len;
        int rc = p2p_fetch(t.name, 5000, &json, &len);
        if (rc)
            fail_msg("descriptor fetch %d while a client drips: %s: %s", i, ferry_err_name(rc), ferry_last_error());
        free(json);
    }
    pthread_join(th, NULL);
    assert_true(d.closed_early); /* the server cut the dripping client off */
    close(fd);
    child_target_kill(&t);
}

static void test_dripping_write_header(void **state)
{
    (void)state;
    static const char *const env[] = {"FERRY_CONNECT_TIMEOUT_MS=1500", NULL};
    struct child_target t;
    struct initiator in;
    start_target(&t, env);
    initiator_open(&in, &t, 0, 0);
    int fd = attacker_connection(&t);
    uint8_t raw[WIRE_HEADER_SIZE];
    struct wire_header h = {.type = WIRE_WRITE, .nentries = 1, .payload_len = 4096};
    wire_encode_header(&h, raw);
    struct dripper d;
    pthread_t th;
    drip_start(&d, &th, fd, raw, sizeof raw); /* one byte per 200 ms: 9.6 s for the header */
    transfer_verified(&in, &t, 31);
    pthread_join(th, NULL);
    assert_true(d.closed_early);
    assert_true(d.sent < sizeof raw);
    close(fd);
    assert_int_equal(child_target_check(&t, XFER, TSIZE - XFER, SEED), -1);
    initiator_close(&in);
    child_target_kill(&t);
}

/* A NOTIFY whose message drips in: the frame's deadline (request timeout)
 * covers its payload too, not only each read's socket timeout. */
static void test_dripping_notify_payload(void **state)
{
    (void)state;
    static const char *const env[] = {"FERRY_REQUEST_TIMEOUT_MS=1500", NULL};
    struct child_target t;
    struct initiator in;
    start_target(&t, env);
    initiator_open(&in, &t, 0, 0);
    int fd = attacker_connection(&t);
    uint8_t raw[WIRE_HEADER_SIZE];
    struct wire_header h = {.type = WIRE_NOTIFY, .payload_len = WIRE_MAX_NOTIFY};
    wire_encode_header(&h, raw);
    assert_int_equal(send(fd, raw, sizeof raw, MSG_NOSIGNAL), (ssize_t)sizeof raw);
    static uint8_t message[60]; /* one byte per 200 ms: 12 s, each well within the socket's timeout */
    memset(message, 'n', sizeof message);
    struct dripper d;
    pthread_t th;
    drip_start(&d, &th, fd, message, sizeof message);
    transfer_verified(&in, &t, 37);
    pthread_join(th, NULL);
    print_message("  the target closed the dripping NOTIFY after %zu bytes of its message\n", d.sent);
    assert_true(d.closed_early);
    assert_true(d.sent < sizeof message);
    close(fd);
    initiator_close(&in);
    child_target_kill(&t);
}

static void test_idle_data_connection_closed(void **state)
{
    (void)state;
    static const char *const env[] = {"FERRY_IDLE_TIMEOUT_MS=1000", NULL};
    struct child_target t;
    struct initiator in;
    start_target(&t, env);
    initiator_open(&in, &t, 1000, 0); /* retires its own idle connections after 500 ms */
    transfer_verified(&in, &t, 41);
    int fd = attacker_connection(&t);
    assert_true(raw_closed_by_peer(fd, 30000)); /* silent after HELLO: closed by the target */
    close(fd);
    transfer_verified(&in, &t, 42);             /* the initiator's idle connections were replaced */
    initiator_close(&in);
    child_target_kill(&t);
}

/* ------------------------------------------------------------ many stalled at once */

/* Threads of a process (its /proc/PID/task entries). */
static int thread_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

enum { STALLED = 200, STALL_FROM = 4 };

/* STALLED connections that stall at once, a quarter from each of
 * 127.0.0.2-5 (within the per-peer cap): silent on the handshake port; a
 * handshake header announcing a 64 KiB body, then nothing; silent on the
 * data port; after HELLO, a WRITE header announcing 16 KiB into the
 * target's buffer (each its own, past what the tests verify), 1,000 bytes
 * of it, then nothing. */
static void stall_many(const struct child_target *t, int fds[STALLED])
{
    static const char *const from[STALL_FROM] = {"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"};
    uint64_t epoch = 0;
    int data_port = raw_data_port(t->name, NULL, &epoch), hs_port = raw_handshake_port(t->name);
    assert_true(data_port > 0);
    uint8_t head[12] = "FERRYHS1", frame[WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE + 1000] = {0};
    head[8] = 0, head[9] = 0, head[10] = 1, head[11] = 0; /* 64 KiB */
    struct wire_header h = {.type = WIRE_WRITE, .nentries = 1, .id = 1, .payload_len = 16384};
    wire_encode_header(&h, frame);
    for (int i = 0; i < STALLED; i++) {
        struct wire_entry e = {t->addr + (4u << 20) + (uint64_t)i * 16384, 16384};
        wire_encode_entries(&e, 1, frame + WIRE_HEADER_SIZE);
        int kind = i / (STALLED / STALL_FROM);
        if (kind <= 1)
            assert_true((fds[i] = raw_connect_from(from[kind], hs_port)) >= 0);
        if (kind == 1)
            assert_int_equal(net_write_full(fds[i], head, sizeof head), 0);
        if (kind == 2)
            assert_true((fds[i] = raw_connect_from(from[kind], data_port)) >= 0);
        if (kind == 3) {
            assert_int_equal(attacker_hello(data_port, epoch, from[kind], &fds[i]), 1);
            assert_int_equal(net_write_full(fds[i], frame, sizeof frame), 0);
        }
    }
}

/* 200 connections stalled at once, with deadlines of 3 s (handshake, frame
 * header) and 4 s (payload): meanwhile a descriptor fetch and a transfer
 * verify; then the target closes every one of them and is back to the
 * threads it had before (one per connection: 200 more while they stall). */
static void test_many_stalled_connections_reaped(void **state)
{
    (void)state;
    static const char *const env[] = {"FERRY_CONNECT_TIMEOUT_MS=3000", "FERRY_REQUEST_TIMEOUT_MS=4000", NULL};
    struct child_target t;
    struct initiator in;
    start_target(&t, env);
    initiator_open(&in, &t, 0, 2);
    transfer_verified(&in, &t, 71);
    int before = thread_count(t.pid), fds[STALLED];
    stall_many(&t, fds);
    print_message("target threads: %d before, %d with %d stalled connections\n", before, thread_count(t.pid),
                  STALLED);
    char *json = NULL;
    size_t len;
    int rc = p2p_fetch(t.name, 5000, &json, &len);
    if (rc)
        fail_msg("descriptor fetch among %d stalled connections: %s: %s", STALLED, ferry_err_name(rc),
                 ferry_last_error());
    free(json);
    transfer_verified(&in, &t, 72);
    for (int i = 0; i < STALLED; i++) {
        if (!raw_closed_by_peer(fds[i], 30000))
            fail_msg("stalled connection %d was not closed by the target", i);
        close(fds[i]);
    }
    /* back to what it had, give or take the initiator's own data connections
     * (two at most: it may open its second one only now) */
    uint64_t give_up = net_deadline(10000);
    while (thread_count(t.pid) > before + 2 && now_ns() < give_up)
        poll(NULL, 0, 50);
    assert_true(thread_count(t.pid) <= before + 2);
    transfer_verified(&in, &t, 73);
    initiator_close(&in);
    child_target_kill(&t);
}

/* The target is told to quit while 200 connections stall on it with 60 s
 * deadlines: its engine is destroyed and it exits well before those. */
static void test_many_stalled_connections_destroy(void **state)
{
    (void)state;
    static const char *const env[] = {"FERRY_CONNECT_TIMEOUT_MS=60000", "FERRY_REQUEST_TIMEOUT_MS=60000", NULL};
    struct child_target t;
    start_target(&t, env);
    int fds[STALLED], status = 0;
    stall_many(&t, fds);
    assert_true(dprintf(t.ctl_fd, "quit\n") > 0);
    uint64_t give_up = net_deadline(20000); /* a third of the deadlines */
    pid_t done = 0;
    while ((done = waitpid(t.pid, &status, WNOHANG)) == 0 && now_ns() < give_up)
        poll(NULL, 0, 50);
    if (done != t.pid) {
        child_target_kill(&t);
        fail_msg("the target did not finish destroying its engine within 20 s of %d stalled connections", STALLED);
    }
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    t.pid = 0;
    for (int i = 0; i < STALLED; i++) {
        assert_true(raw_closed_by_peer(fds[i], 1000));
        close(fds[i]);
    }
    child_target_kill(&t);
}

/* ------------------------------------------------------------ out of descriptors */

/* utime + stime of a process, in clock ticks. */
static long cpu_ticks(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    long utime = 0, stime = 0;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    assert_int_equal(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &utime, &stime), 2);
    return utime + stime;
}

static void test_out_of_descriptors(void **state)
{
    (void)state;
    /* caps out of the way: this is about what happens at EMFILE itself */
    static const char *const env[] = {"FERRY_TEST_NOFILE=40", "FERRY_MAX_CONNECTIONS=1000",
                                      "FERRY_MAX_CONNECTIONS_PER_PEER=0", NULL};
    struct child_target t;
    struct initiator in;
    start_target(&t, env);
    initiator_open(&in, &t, 0, 0);
    uint64_t epoch = 0;
    int data_port = raw_data_port(t.name, NULL, &epoch);
    enum { N = 60 };
    int fds[N];
    for (int i = 0; i < N; i++) { /* more than the target has descriptors for */
        fds[i] = raw_connect_from(ATTACKER, data_port);
        assert_true(fds[i] >= 0);
        raw_send_hello(fds[i], epoch, "attacker");
    }
    int served = 0;
    bool ok[N];
    for (int i = 0; i < N; i++) {
        struct wire_header h;
        /* served: answered HELLO_ACK with status 0.  A target that cannot
         * make a connection's resources answers FERRY_EBUSY */
        ok[i] = raw_read_header(fds[i], &h, i < 20 ? 5000 : 200) == 0;
        if (ok[i]) {
            assert_int_equal(h.type, WIRE_HELLO_ACK);
            assert_true(h.status == 0 || h.status == FERRY_EBUSY);
            ok[i] = h.status == 0;
        }
        served += ok[i];
    }
    assert_true(served < N); /* the target did run out */
    /* a connection answered "served" stays open: before, the target
     * answered 0 and only then failed to make the connection's eventfd and
     * dropped it (a drop that comes later than this wait passes unseen) */
    poll(NULL, 0, 300);
    for (int i = 0; i < N; i++) {
        char b;
        if (ok[i] && recv(fds[i], &b, 1, MSG_DONTWAIT) >= 0)
            fail_msg("connection %d was answered served, then closed by the target", i);
    }

    /* out of descriptors, the acceptor backs off instead of spinning */
    long ticks = sysconf(_SC_CLK_TCK), before = cpu_ticks(t.pid);
    uint64_t t0 = now_ns();
    poll(NULL, 0, 2000);
    double wall = (double)(now_ns() - t0) / 1e9, cpu = (double)(cpu_ticks(t.pid) - before) / (double)ticks;
    print_message("target cpu while out of descriptors: %.2f s in %.2f s\n", cpu, wall);
    assert_true(cpu < wall / 5); /* the unpatched acceptor used 0.91 s of 2 s here */

    /* the attacker leaves: the target serves again */
    for (int i = 0; i < N; i++)
        close(fds[i]);
    wait_until_served(data_port, epoch, "127.0.0.3");
    transfer_verified(&in, &t, 51);
    initiator_close(&in);
    child_target_kill(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_per_peer_cap_legit_still_served),
        cmocka_unit_test(test_total_cap_recovers),
        cmocka_unit_test(test_total_cap_shared_by_addresses),
        cmocka_unit_test(test_total_cap_spares_busy_connections),
        cmocka_unit_test(test_dripping_handshake_client),
        cmocka_unit_test(test_dripping_write_header),
        cmocka_unit_test(test_dripping_notify_payload),
        cmocka_unit_test(test_idle_data_connection_closed),
        cmocka_unit_test(test_many_stalled_connections_reaped),
        cmocka_unit_test(test_many_stalled_connections_destroy),
        cmocka_unit_test(test_out_of_descriptors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

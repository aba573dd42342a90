/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_dying_target.c — a tcp target that dies at every step of a transfer:
 * mid-HELLO, before / mid / after its HELLO_ACK, mid-frame-header, mid-
 * payload (WRITE payload half read, READ response half sent), before the
 * ack and mid-ack; each with a close (FIN), with a reset (RST) and by going
 * silent with the connection open (a stalled or frozen host), for WRITE and
 * for READ.  Every request to it must end FAILED or TIMEOUT with a named
 * code and a message by its deadline; a request to a healthy target (a
 * child process) in the same batch must complete and land; and once the
 * engine is destroyed, no thread or descriptor it made is left (counted in
 * /proc/self before and after).
 *
 * Threads: the dying target is one thread in this process serving one
 * connection at a time, plus its handshake server; the test's thread drives
 * the initiator engine.
 */
#include <dirent.h>
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

#include "fake_target.h"
#include "net.h"
#include "testutil.h"
#include "transport/tcp/tcp_wire.h"

#define KIB 1024u
#define BUF_LEN (1u << 20)
#define REQ_LEN (256u * KIB)
#define ENGINE_ID 0xdead7a26e7ull
#define TIMEOUT_MS 2000u
#define GUARD_MS 60000 /* 30 request deadlines: only a hang reaches it */
#define SEED 5

/* Where the target dies. */
enum step {
    MID_HELLO,          /* has read part of HELLO */
    BEFORE_HELLO_ACK,   /* has read HELLO */
    MID_HELLO_ACK,      /* has sent half a HELLO_ACK */
    AFTER_HELLO,        /* has acknowledged HELLO */
    MID_HEADER,         /* has read part of the first frame's header */
    MID_PAYLOAD,        /* WRITE: has read half the payload; READ: has sent half the response */
    BEFORE_ACK,         /* has read the whole frame */
    MID_ACK,            /* has sent half the ack / response header */
    NSTEPS,
};

static const char *const step_names[NSTEPS] = {
    "mid-HELLO", "before HELLO_ACK", "mid-HELLO_ACK", "after HELLO",
    "mid-header", "mid-payload", "before the ack", "mid-ack",
};

/* How it dies. */
enum death { FIN, RST, STALL, NDEATHS };
static const char *const death_names[NDEATHS] = {"FIN", "RST", "stalled"};

struct dying {
    enum step step;
    enum death death;
    char *mem;
    struct fake_target ft;
};

/* Serves one connection up to its step; returns and the caller closes. */
static void serve_until_death(struct dying *k, int fd)
{
    uint8_t raw[WIRE_HEADER_SIZE + WIRE_MAX_ENTRIES * WIRE_ENTRY_SIZE];
    struct wire_header h;
    struct wire_entry e[WIRE_MAX_ENTRIES];
    if (k->step == MID_HELLO) {
        net_read_full(fd, raw, 20);
        return;
    }
    char name[WIRE_MAX_NAME];
    if (net_read_full(fd, raw, WIRE_HEADER_SIZE) || wire_decode_header(raw, &h) ||
        net_read_full(fd, name, (size_t)h.payload_len) || k->step == BEFORE_HELLO_ACK)
        return;
    struct wire_header ack = {.type = WIRE_HELLO_ACK, .id = h.id};
    wire_encode_header(&ack, raw);
    if (net_write_full(fd, raw, k->step == MID_HELLO_ACK ? WIRE_HEADER_SIZE / 2 : WIRE_HEADER_SIZE) ||
        k->step == MID_HELLO_ACK || k->step == AFTER_HELLO)
        return;
    if (k->step == MID_HEADER) {
        net_read_full(fd, raw, WIRE_HEADER_SIZE / 2);
        return;
    }
    if (net_read_full(fd, raw, WIRE_HEADER_SIZE) || wire_decode_header(raw, &h) ||
        net_read_full(fd, raw, (size_t)h.nentries * WIRE_ENTRY_SIZE) || wire_decode_entries(raw, &h, e))
        return;
    if (h.type == WIRE_WRITE) {
        if (k->step == MID_PAYLOAD) {
            net_discard(fd, h.payload_len / 2);
            return;
        }
        if (net_discard(fd, h.payload_len) || k->step == BEFORE_ACK)
            return;
        struct wire_header wa = {.type = WIRE_WRITE_ACK, .id = h.id};
        wire_encode_header(&wa, raw);
        net_write_full(fd, raw, WIRE_HEADER_SIZE / 2); /* MID_ACK */
        return;
    }
    if (h.type != WIRE_READ || k->step == BEFORE_ACK)
        return;
    uint64_t total = 0;
    for (unsigned i = 0; i < h.nentries; i++)
        total += e[i].len;
    struct wire_header rh = {.type = WIRE_READ_RESP, .id = h.id, .payload_len = total,
                             .flags = h.flags & WIRE_FLAG_TRAILER};
    wire_encode_header(&rh, raw);
    if (k->step == MID_ACK) {
        net_write_full(fd, raw, WIRE_HEADER_SIZE / 2);
        return;
    }
    if (net_write_full(fd, raw, WIRE_HEADER_SIZE) == 0) /* MID_PAYLOAD */
        net_write_full(fd, k->mem, total / 2);
}

/* One data connection (fake_target's thread): served up to the step, then
 * closed, reset or held open without reading. */
static void serve_dying(void *ctx, int fd)
{
    struct dying *k = ctx;
    net_set_timeouts(fd, 5000, 5000); /* never hangs the test itself */
    serve_until_death(k, fd);
    if (k->death == RST) {
        struct linger l = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    while (k->death == STALL) { /* reads nothing more until the initiator goes or the test ends */
        struct pollfd q[2] = {{.fd = fd, .events = POLLRDHUP}, {.fd = k->ft.stop_pipe[0], .events = POLLIN}};
        if (poll(q, 2, -1) > 0 && (q[0].revents || q[1].revents))
            break;
    }
}

static void dying_start(struct dying *k, enum step step, enum death death)
{
    memset(k, 0, sizeof *k);
    k->step = step;
    k->death = death;
    k->mem = malloc(BUF_LEN);
    assert_non_null(k->mem);
    pattern_fill(k->mem, BUF_LEN, SEED, 0);
    assert_int_equal(fake_target_start(&k->ft, NULL, ENGINE_ID, k->mem, BUF_LEN, NULL, serve_dying, k), 0);
}

static void dying_stop(struct dying *k)
{
    fake_target_stop(&k->ft);
    free(k->mem);
}

/* ------------------------------------------------------------ the test */

static struct child_target healthy;
static struct census baseline; /* the process before any case: the healthy target's pipe and socket */

static void *nothing(void *arg)
{
    return arg;
}

static int group_setup(void **state)
{
    (void)state;
    /* a sanitizer's runtime starts its own thread at the first pthread_create: before any census */
    pthread_t th;
    if (pthread_create(&th, NULL, nothing, NULL) != 0 || pthread_join(th, NULL) != 0)
        return -1;
    if (child_target_start(&healthy, 2 * BUF_LEN, "cpu", SEED))
        return -1;
    baseline = census_now();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    child_target_kill(&healthy);
    return 0;
}

/* One batch: a request to the dying target and one to the healthy one. */
static void die_at(enum step step, enum death death, int opcode, uint64_t seed)
{
    /* the last case's threads are joined, but may still be listed a moment */
    struct census before = census_settled(baseline, 10000);
    struct dying k;
    dying_start(&k, step, death);
    struct ferry_config cfg;
    ferry_engine *e;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.request_timeout_ms = TIMEOUT_MS;
    cfg.connect_timeout_ms = TIMEOUT_MS;
    cfg.tcp_connections = 1;
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    char *local = malloc(2 * REQ_LEN);
    assert_non_null(local);
    assert_int_equal(ferry_register_memory(e, local, 2 * REQ_LEN, "cpu", 0), 0);
    ferry_segment_t dead, alive;
    assert_int_equal(ferry_open_segment(e, k.ft.name, &dead), 0);
    assert_int_equal(ferry_open_segment(e, healthy.name, &alive), 0);

    /* WRITEs land in the healthy target's first half, READs read its second (never written) */
    uint64_t off = (opcode == FERRY_READ ? BUF_LEN : 0) + (seed % 4) * REQ_LEN;
    pattern_fill(local + REQ_LEN, REQ_LEN, seed, off); /* what a WRITE lands in the healthy target */
    struct ferry_request r[2] = {
        {opcode, local, dead, (uint64_t)(uintptr_t)k.mem, REQ_LEN},
        {opcode, local + REQ_LEN, alive, healthy.addr + off, REQ_LEN},
    };
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(e, 2, &b), 0);
    uint64_t t0 = now_ms();
    assert_int_equal(ferry_batch_submit(b, r, 2), 0);
    int wrc = ferry_batch_wait(b, GUARD_MS);
    uint64_t took = now_ms() - t0;
    struct ferry_status st[2];
    assert_int_equal(ferry_batch_status(b, 0, &st[0]), 0);
    assert_int_equal(ferry_batch_status(b, 1, &st[1]), 0);
    print_message("  %s %s, %s: %s %s after %llu ms: %s\n", opcode == FERRY_WRITE ? "WRITE" : "READ",
                  step_names[step], death_names[death],
                  st[0].state == FERRY_FAILED ? "FAILED" : st[0].state == FERRY_TIMEOUT ? "TIMEOUT" : "state",
                  ferry_err_name(st[0].error), (unsigned long long)took, st[0].message);
    /* the wait ended because the requests did (its guard is far past their deadline) */
    assert_true(wrc != 0 && took < GUARD_MS);
    assert_true(st[0].state == FERRY_FAILED || st[0].state == FERRY_TIMEOUT);
    assert_true(st[0].error < 0);
    assert_string_not_equal(st[0].message, "");
    if (st[1].state != FERRY_COMPLETED)
        fail_msg("the healthy target's request: state %d, %s: %s", st[1].state, ferry_err_name(st[1].error),
                 st[1].message);
    if (opcode == FERRY_WRITE)
        assert_int_equal(child_target_check(&healthy, off, REQ_LEN, seed), -1);
    else
        assert_int_equal(pattern_check(local + REQ_LEN, REQ_LEN, SEED, off), -1);
    ferry_batch_free(b);
    ferry_unregister_memory(e, local);
    ferry_engine_destroy(e);
    dying_stop(&k);
    free(local);
    struct census after = census_settled(before, 10000);
    if (after.threads != before.threads || after.fds != before.fds)
        fail_msg("left behind: %d threads, %d descriptors", after.threads - before.threads, after.fds - before.fds);
}

static void every_step(int opcode)
{
    for (int death = 0; death < NDEATHS; death++)
        for (int step = 0; step < NSTEPS; step++)
            die_at((enum step)step, (enum death)death, opcode,
                   (uint64_t)(step * 3 + death + (opcode == FERRY_READ) * 100));
}

static void test_write_target_dies(void **state)
{
    (void)state;
    every_step(FERRY_WRITE);
}

static void test_read_target_dies(void **state)
{
    (void)state;
    every_step(FERRY_READ);
}

int main(void)
{
    /* FERRY_TEST_DYING_OPS=write or =read runs that half alone: ctest runs
     * the two as two tests side by side (each is ~20 s of waiting out
     * deadlines one case after another; the thread and descriptor counts
     * of /proc/self keep the cases of one process from overlapping) */
    const char *only = getenv("FERRY_TEST_DYING_OPS");
    struct CMUnitTest tests[2];
    size_t n = 0;
    if (!only || strcmp(only, "write") == 0)
        tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_write_target_dies);
    if (!only || strcmp(only, "read") == 0)
        tests[n++] = (struct CMUnitTest)cmocka_unit_test(test_read_target_dies);
    if (!n) {
        fprintf(stderr, "FERRY_TEST_DYING_OPS=\"%s\": write, read or unset (both)\n", only);
        return 2;
    }
    return _cmocka_run_group_tests("test_dying_target", tests, n, group_setup, group_teardown);
}

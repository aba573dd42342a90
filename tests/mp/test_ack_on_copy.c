/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_ack_on_copy.c — FERRY_TCP_ACK_ON_COPY: a tcp target acknowledges a
 * WRITE to device memory when that WRITE's copies complete, and its
 * receiving thread reads the next frame meanwhile instead of waiting.  The
 * target (a child process) keeps its memory on the strict sim device with
 * frame 1's copy job held back until the test creates a file
 * (FERRY_SIM_HOLD_COPY), and socket buffers of 64 KiB; a raw peer sends
 * frame 1 (16 KiB) and then frame 2 (2 MiB, many times what the socket
 * buffers hold): the send of frame 2 finishes only if the target reads it
 * while frame 1's copy is held.  Then the copy is let go: both acks arrive
 * in order, and the bytes are in device memory (read back over the same
 * connection).  A held copy that fails
 * (FERRY_SIM_FAIL_COPY) fails frame 1 alone with FERRY_EIO.  Both forms:
 * 1 (a function on the stream, or the device's mark) and 2 (the mark).  The held copy
 * makes the order deterministic; the deadlines are hang guards only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <cmocka.h>

#include "err.h"
#include "rawpeer.h"
#include "testutil.h"

#define SMALL (16u << 10)         /* frame 1 */
#define LARGE (2u << 20)          /* frame 2 */
#define LARGE_OFF (1u << 20)
#define TSIZE (4u << 20)
#define TSEED 11
#define WSEED 12
#define GUARD_MS 120000           /* a hang guard only */

struct peer {
    struct child_target target;
    int fd;
    char hold[64];                /* the file that lets the held copy run */
};

/* A target whose copy job 2 (frame 1's: job 1 fills its memory) waits for
 * p->hold, with `faults` as FERRY_SIM_FAIL_COPY, and a raw peer said HELLO to it. */
static void peer_start(struct peer *p, const char *mode, const char *faults)
{
    static unsigned n;
    snprintf(p->hold, sizeof p->hold, "/tmp/ferry-hold-%d-%u", (int)getpid(), n++);
    unlink(p->hold);
    char hold[96];
    snprintf(hold, sizeof hold, "2:%s", p->hold);
    setenv("FERRY_TCP_ACK_ON_COPY", mode, 1);
    setenv("FERRY_TCP_SOCKBUF", "65536", 1);
    setenv("FERRY_TCP_DEVICE_PIPE", "4194304", 1); /* frame 2's copies start at its end */
    setenv("FERRY_SIM_HOLD_COPY", hold, 1);
    setenv("FERRY_SIM_FAIL_COPY", faults, 1);
    int rc = child_target_start(&p->target, TSIZE, "sim:0", TSEED);
    unsetenv("FERRY_TCP_ACK_ON_COPY");
    unsetenv("FERRY_TCP_SOCKBUF");
    unsetenv("FERRY_TCP_DEVICE_PIPE");
    unsetenv("FERRY_SIM_HOLD_COPY");
    unsetenv("FERRY_SIM_FAIL_COPY");
    assert_int_equal(rc, 0);
    uint64_t engine_id = 0;
    int port = raw_data_port(p->target.name, NULL, &engine_id);
    assert_true(port > 0);
    p->fd = raw_connect_from("127.0.0.1", port);
    assert_true(p->fd >= 0);
    int small = 65536;
    setsockopt(p->fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    assert_int_equal(raw_send_hello(p->fd, engine_id, "ack-on-copy-peer"), 0);
    struct wire_header h;
    assert_int_equal(raw_read_header(p->fd, &h, GUARD_MS), 0);
    assert_int_equal(h.type, WIRE_HELLO_ACK);
    assert_int_equal(h.status, 0);
}

static void peer_stop(struct peer *p)
{
    close(p->fd);
    child_target_kill(&p->target);
    unlink(p->hold);
}

/* Sends all of buf before deadline_ns; false if the socket stayed full. */
static bool send_by(int fd, const char *buf, size_t len, uint64_t deadline_ns)
{
    while (len) {
        ssize_t n = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return false;
        if (now_ns() >= deadline_ns)
            return false;
        struct pollfd q = {.fd = fd, .events = POLLOUT};
        (void)poll(&q, 1, 100);
    }
    return true;
}

/* Frame 1 (SMALL at offset 0) and frame 2's header (LARGE at LARGE_OFF) in
 * one send, then frame 2's payload, which the target must read while frame
 * 1's copy is held; then the copy is let go and both acks read.  Stores
 * their statuses. */
static void two_frames(struct peer *p, int *status1, int *status2)
{
    size_t head = WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE;
    char *first = malloc(2 * head + SMALL), *large = malloc(LARGE);
    assert_non_null(first);
    assert_non_null(large);
    struct wire_entry e1 = {p->target.addr, SMALL}, e2 = {p->target.addr + LARGE_OFF, LARGE};
    struct wire_header h1 = {.type = WIRE_WRITE, .id = 1, .nentries = 1, .payload_len = SMALL};
    struct wire_header h2 = {.type = WIRE_WRITE, .id = 2, .nentries = 1, .payload_len = LARGE};
    wire_encode_header(&h1, (uint8_t *)first);
    wire_encode_entries(&e1, 1, (uint8_t *)first + WIRE_HEADER_SIZE);
    pattern_fill(first + head, SMALL, WSEED, 0);
    wire_encode_header(&h2, (uint8_t *)first + head + SMALL);
    wire_encode_entries(&e2, 1, (uint8_t *)first + head + SMALL + WIRE_HEADER_SIZE);
    pattern_fill(large, LARGE, WSEED, LARGE_OFF);
    uint64_t deadline = net_deadline(GUARD_MS);
    assert_true(send_by(p->fd, first, 2 * head + SMALL, deadline));
    /* frame 1's copy is held: this finishes only if the target reads frame 2 meanwhile */
    bool sent = send_by(p->fd, large, LARGE, deadline);
    int fd = open(p->hold, O_CREAT | O_WRONLY | O_CLOEXEC, 0600); /* let the copy run */
    assert_true(fd >= 0);
    close(fd);
    assert_true(sent);
    struct wire_header a;
    assert_int_equal(raw_read_header(p->fd, &a, GUARD_MS), 0);
    assert_int_equal(a.type, WIRE_WRITE_ACK);
    assert_int_equal(a.id, 1);
    *status1 = a.status;
    assert_int_equal(raw_read_header(p->fd, &a, GUARD_MS), 0);
    assert_int_equal(a.type, WIRE_WRITE_ACK);
    assert_int_equal(a.id, 2);
    *status2 = a.status;
    free(first);
    free(large);
}

/* Reads [off, off + len) of the target back over the same connection (so
 * the same target thread and stream that wrote it: no ordering through the
 * control pipe that ThreadSanitizer cannot see) and checks it holds what
 * two_frames wrote.  Returns pattern_check's answer (-1: all of it). */
static long read_back(struct peer *p, uint64_t off, uint32_t len)
{
    uint8_t raw[WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE];
    struct wire_entry e = {p->target.addr + off, len};
    struct wire_header h = {.type = WIRE_READ, .id = 3, .nentries = 1};
    wire_encode_header(&h, raw);
    wire_encode_entries(&e, 1, raw + WIRE_HEADER_SIZE);
    assert_int_equal(net_write_full(p->fd, raw, sizeof raw), 0);
    struct wire_header r;
    assert_int_equal(raw_read_header(p->fd, &r, GUARD_MS), 0);
    assert_int_equal(r.type, WIRE_READ_RESP);
    assert_int_equal(r.payload_len, len);
    char *buf = malloc(len);
    assert_non_null(buf);
    assert_int_equal(net_read_full_deadline(p->fd, buf, len, net_deadline(GUARD_MS)), 0);
    long bad = pattern_check(buf, len, WSEED, off);
    free(buf);
    return bad;
}

/* 1: the ack from a function on the stream or the mark; 2: the mark only */
static const char *const modes[] = {"1", "2"};

static void reads_on(const char *mode)
{
    struct peer p;
    peer_start(&p, mode, "");
    int s1, s2;
    two_frames(&p, &s1, &s2);
    assert_int_equal(s1, 0);
    assert_int_equal(s2, 0);
    assert_int_equal(read_back(&p, 0, SMALL), -1);
    assert_int_equal(read_back(&p, LARGE_OFF, LARGE), -1);
    peer_stop(&p);
}

static void reads_on_while_copy_held(void **state)
{
    (void)state;
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++)
        reads_on(modes[m]);
}

/* The held copy fails on the device: frame 1 alone fails, with a named code. */
static void fails_alone(const char *mode)
{
    struct peer p;
    peer_start(&p, mode, "2");
    int s1, s2;
    two_frames(&p, &s1, &s2);
    assert_int_equal(s1, FERRY_EIO);
    assert_int_equal(s2, 0);
    assert_int_equal(read_back(&p, LARGE_OFF, LARGE), -1);
    peer_stop(&p);
}

static void held_copy_fails_alone(void **state)
{
    (void)state;
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++)
        fails_alone(modes[m]);
}

/* A value other than 0, 1 or 2 is refused by name when the engine starts. */
static void knob_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {"3", "on", "-1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_knob_refused(NULL, "FERRY_TCP_ACK_ON_COPY", bad[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reads_on_while_copy_held),
        cmocka_unit_test(held_copy_fails_alone),
        cmocka_unit_test(knob_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_net_io.c — net_read_full, net_discard and net_writev_full against a
 * real TCP peer on loopback that drips: the socket's own timeout
 * (SO_RCVTIMEO / SO_SNDTIMEO) bounds the whole call, not each piece.
 * Before rev19 each recv / sendmsg got the timeout afresh, so a peer that
 * sent a byte per 100 ms (or read 2 KiB per 50 ms) within a 300 ms timeout
 * made the call last as long as the peer liked, and it returned 0; now it
 * ends FERRY_ETIMEDOUT.  The pace of the peers is many times the timeout
 * (what it would take them is seconds against 300 ms), and each case
 * asserts the outcome, not a duration.  A peer that stops reading while
 * its kernel keeps the connection (the window shut) ends the write too.
 * And a call whose bytes are there at once succeeds with the same socket.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "err.h"
#include "net.h"

#define TIMEO_MS 300u

struct pair {
    int a, b; /* a: the side under test; b: the peer */
};

/* A TCP connection on loopback; small buffers on both ends when `small`
 * (the listener's receive buffer is inherited by the accepted socket). */
static void pair_open(struct pair *p, bool small)
{
    int port = 0;
    int l = net_listen("127.0.0.1", 0, 1000, &port);
    assert_true(l >= 0);
    int sz = 4096;
    if (small)
        assert_int_equal(setsockopt(l, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz), 0);
    p->a = net_connect("127.0.0.1", port, 5000);
    assert_true(p->a >= 0);
    if (small)
        assert_int_equal(setsockopt(p->a, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz), 0);
    p->b = accept(l, NULL, NULL);
    assert_true(p->b >= 0);
    close(l);
}

static void pair_close(struct pair *p)
{
    close(p->a);
    close(p->b);
}

/* The peer: sends one byte per 100 ms (drip) or reads 2 KiB per 50 ms
 * (slow reader), until told to stop or len bytes moved. */
struct peer {
    int fd;
    size_t len;
    bool reads;
    atomic_int stop;
    size_t moved;
    pthread_t th;
};

static void *peer_main(void *arg)
{
    struct peer *p = arg;
    char buf[2048];
    memset(buf, 0x5a, sizeof buf);
    while (!atomic_load(&p->stop) && p->moved < p->len) {
        poll(NULL, 0, p->reads ? 50 : 100);
        ssize_t n = p->reads ? recv(p->fd, buf, sizeof buf, MSG_DONTWAIT) : send(p->fd, buf, 1, MSG_NOSIGNAL);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            break;
        if (n > 0)
            p->moved += (size_t)n;
    }
    return NULL;
}

static void peer_start(struct peer *p, int fd, size_t len, bool reads)
{
    memset(p, 0, sizeof *p);
    p->fd = fd;
    p->len = len;
    p->reads = reads;
    assert_int_equal(pthread_create(&p->th, NULL, peer_main, p), 0);
}

static void peer_stop(struct peer *p)
{
    atomic_store(&p->stop, 1);
    pthread_join(p->th, NULL);
}

/* 40 bytes, a byte per 100 ms: 4 s of dripping against a 300 ms timeout. */
static void read_full_drip_ends_at_the_socket_timeout(void **state)
{
    (void)state;
    struct pair p;
    pair_open(&p, false);
    net_set_timeouts(p.a, TIMEO_MS, TIMEO_MS);
    struct peer d;
    peer_start(&d, p.b, 40, false);
    char buf[40];
    int rc = net_read_full(p.a, buf, sizeof buf);
    peer_stop(&d);
    print_message("net_read_full, a byte per 100 ms: %s (%s), %zu bytes dripped\n", ferry_err_name(rc),
                  rc ? ferry_last_error() : "all of it", d.moved);
    assert_int_equal(rc, FERRY_ETIMEDOUT);
    pair_close(&p);
}

static void discard_drip_ends_at_the_socket_timeout(void **state)
{
    (void)state;
    struct pair p;
    pair_open(&p, false);
    net_set_timeouts(p.a, TIMEO_MS, TIMEO_MS);
    struct peer d;
    peer_start(&d, p.b, 40, false);
    int rc = net_discard(p.a, 40);
    peer_stop(&d);
    assert_int_equal(rc, FERRY_ETIMEDOUT);
    pair_close(&p);
}

/* 128 KiB to a peer that reads 2 KiB per 50 ms through small buffers: ~3 s
 * of its reading against a 300 ms timeout. */
static void write_full_slow_reader_ends_at_the_socket_timeout(void **state)
{
    (void)state;
    struct pair p;
    pair_open(&p, true);
    net_set_timeouts(p.a, TIMEO_MS, TIMEO_MS);
    const size_t len = 128u << 10;
    char *src = calloc(1, len);
    struct peer r;
    peer_start(&r, p.b, len, true);
    int rc = net_write_full(p.a, src, len);
    peer_stop(&r);
    print_message("net_write_full, a reader of 2 KiB per 50 ms: %s (%s), %zu bytes read\n", ferry_err_name(rc),
                  rc ? ferry_last_error() : "all of it", r.moved);
    assert_int_equal(rc, FERRY_ETIMEDOUT);
    free(src);
    pair_close(&p);
}

/* A peer that reads nothing (its window shuts; its kernel still answers). */
static void writev_full_to_a_stopped_reader_ends(void **state)
{
    (void)state;
    struct pair p;
    pair_open(&p, true);
    net_set_timeouts(p.a, TIMEO_MS, TIMEO_MS);
    const size_t len = 1u << 20;
    char *src = calloc(1, len);
    struct iovec iov[2] = {{src, len / 2}, {src + len / 2, len / 2}};
    assert_int_equal(net_writev_full(p.a, iov, 2), FERRY_ETIMEDOUT);
    free(src);
    pair_close(&p);
}

/* What is there moves, with the same timeouts set: reads, a discard and a
 * write the socket takes at once all succeed, in order. */
static void bytes_at_hand_move(void **state)
{
    (void)state;
    struct pair p;
    pair_open(&p, false);
    net_set_timeouts(p.a, TIMEO_MS, TIMEO_MS);
    char msg[64], got[32];
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (char)i;
    assert_int_equal(net_write_full(p.b, msg, sizeof msg), 0);
    assert_int_equal(net_discard(p.a, 16), 0);
    assert_int_equal(net_read_full(p.a, got, sizeof got), 0);
    assert_memory_equal(got, msg + 16, sizeof got);
    assert_int_equal(net_read_full_deadline(p.a, got, 16, net_deadline(1000)), 0);
    assert_memory_equal(got, msg + 48, 16);
    assert_int_equal(net_write_full(p.a, msg, sizeof msg), 0);
    assert_int_equal(net_read_full(p.b, got, sizeof got), 0);
    assert_memory_equal(got, msg, sizeof got);
    close(p.b); /* and a close is told apart from a timeout */
    assert_int_equal(net_read_full(p.a, got, sizeof got), FERRY_ECONN);
    close(p.a);
}

/* Nothing to send is sent: a write of no bytes, or of iovecs that are all
 * empty, succeeds without touching the socket (before: sendmsg's 0 read as
 * "peer closed the connection"), and empty iovecs among full ones are skipped. */
static void empty_writes_succeed(void **state)
{
    (void)state;
    struct pair p;
    pair_open(&p, false);
    char msg[8] = "abcdefg", got[8];
    assert_int_equal(net_write_full(p.a, msg, 0), 0);
    assert_int_equal(net_write_full_deadline(p.a, msg, 0, net_deadline(1000)), 0);
    struct iovec none[2] = {{msg, 0}, {msg, 0}};
    assert_int_equal(net_writev_full(p.a, none, 2), 0);
    struct iovec some[4] = {{msg, 0}, {msg, 3}, {msg, 0}, {msg + 3, 5}};
    assert_int_equal(net_writev_full(p.a, some, 4), 0);
    assert_int_equal(net_read_full(p.b, got, sizeof got), 0);
    assert_memory_equal(got, msg, sizeof got);
    pair_close(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(read_full_drip_ends_at_the_socket_timeout),
        cmocka_unit_test(discard_drip_ends_at_the_socket_timeout),
        cmocka_unit_test(write_full_slow_reader_ends_at_the_socket_timeout),
        cmocka_unit_test(writev_full_to_a_stopped_reader_ends),
        cmocka_unit_test(bytes_at_hand_move),
        cmocka_unit_test(empty_writes_succeed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

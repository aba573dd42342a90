/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_acceptor_claim.c — the total cap's eviction against a serve function
 * that is taking a frame at that very moment (src/common/acceptor.c,
 * under_caps; acceptor.h's connection states).  The acceptor checks that a
 * connection is idle and has no bytes waiting, then shuts it down; a serve
 * thread that claimed the connection and read a whole frame header between
 * those two steps must keep it.  The interleaving is driven, not raced:
 * acceptor.c is compiled in with its FIONREAD ioctl routed through
 * fionread_as_serve_thread, which plays the serve thread's part (claim, read
 * everything waiting) before it counts the bytes.  One thread; the
 * connections are socketpairs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "acceptor.h"

/* The connection whose serve thread takes a frame during the acceptor's
 * next byte count (NULL: none). */
static struct acceptor_conn *serving_during_count;

/* ioctl as acceptor.c sees it: the serve thread's poll returned, it
 * claims the connection and reads the frame header whole, then the
 * acceptor counts what is left (nothing). */
static int fionread_as_serve_thread(int fd, unsigned long request, int *pending)
{
    struct acceptor_conn *c = serving_during_count;
    serving_during_count = NULL;
    if (c && c->fd == fd && acceptor_conn_claim(c)) {
        char header[64];
        assert_true(recv(fd, header, sizeof header, MSG_DONTWAIT) > 0);
    }
    return ioctl(fd, request, pending);
}
#define ioctl(fd, request, pending) fionread_as_serve_thread(fd, request, pending)
#include "../../src/common/acceptor.c"
#undef ioctl

static const uint8_t crowded[16] = {[10] = 0xff, [11] = 0xff, [12] = 10, [15] = 2};
static const uint8_t newcomer[16] = {[10] = 0xff, [11] = 0xff, [12] = 10, [15] = 3};

struct fixture {
    struct acceptor a;
    struct conn conn[2];
    int peer_fd[2]; /* the initiators' ends */
};

/* An acceptor at its cap of two, both held by one address (the first the
 * older), with no thread behind it: under_caps is called directly. */
static void setup(struct fixture *f)
{
    memset(f, 0, sizeof *f);
    f->a.max_total = 2;
    snprintf(f->a.what, sizeof f->a.what, "test");
    log_ratelimit_init(&f->a.warn_evict, 1000);
    pthread_mutex_init(&f->a.lock, NULL);
    for (int i = 0; i < 2; i++) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        struct conn *c = &f->conn[i];
        c->pub.fd = sv[0];
        c->pub.owner = &f->a;
        c->seq = (uint64_t)i;
        memcpy(c->addr, crowded, 16);
        snprintf(c->pub.peer, sizeof c->pub.peer, "10.0.0.2:%d", 1000 + i);
        c->next = i ? &f->conn[0] : NULL;
        f->peer_fd[i] = sv[1];
    }
    f->a.conns = &f->conn[1];
    f->a.live = 2;
}

static void teardown(struct fixture *f)
{
    for (int i = 0; i < 2; i++) {
        close(f->conn[i].pub.fd);
        close(f->peer_fd[i]);
    }
    pthread_mutex_destroy(&f->a.lock);
}

/* Has the acceptor shut c's socket down? */
static bool shut_down(const struct conn *c)
{
    char b;
    return recv(c->pub.fd, &b, 1, MSG_DONTWAIT) == 0;
}

/* The older connection's serve thread claims it and reads a frame header
 * whole between the acceptor's two checks: the acceptor may not take it
 * (the frame would fail FERRY_ECONN half served), so it takes the other,
 * idle one; the claimed one stays BUSY and open. */
static void test_claimed_between_checks_is_kept(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    assert_int_equal(write(f.peer_fd[0], "HEADER", 6), 6); /* a frame header, its payload still coming */
    serving_during_count = &f.conn[0].pub;
    assert_true(under_caps(&f.a, newcomer));
    assert_null(serving_during_count); /* the interleaving happened */
    assert_int_equal(atomic_load(&f.conn[0].pub.state), ACCEPTOR_BUSY);
    assert_false(f.conn[0].evicted);
    assert_false(shut_down(&f.conn[0]));
    assert_true(f.conn[1].evicted);
    assert_int_equal(atomic_load(&f.conn[1].pub.state), ACCEPTOR_EVICTING);
    assert_true(shut_down(&f.conn[1]));
    assert_int_equal(f.a.evicted, 1);
    teardown(&f);
}

/* The same with the other connection busy already: no idle connection is
 * left to take, the newcomer is refused and nothing is shut down. */
static void test_no_idle_left_refuses(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    assert_true(acceptor_conn_claim(&f.conn[1].pub));
    assert_int_equal(write(f.peer_fd[0], "HEADER", 6), 6);
    serving_during_count = &f.conn[0].pub;
    assert_false(under_caps(&f.a, newcomer));
    assert_null(serving_during_count);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(atomic_load(&f.conn[i].pub.state), ACCEPTOR_BUSY);
        assert_false(f.conn[i].evicted);
        assert_false(shut_down(&f.conn[i]));
    }
    assert_int_equal(f.a.evicted, 0);
    teardown(&f);
}

/* The acceptor wins: the older connection is idle and silent, so it is
 * evicted; a frame that arrives after that is never claimed (its serve
 * thread ends without reading), and releasing does not undo the eviction. */
static void test_evicted_connection_cannot_be_claimed(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    assert_true(under_caps(&f.a, newcomer));
    assert_true(f.conn[0].evicted); /* the oldest idle one */
    assert_false(f.conn[1].evicted);
    acceptor_conn_release(&f.conn[0].pub);
    assert_int_equal(atomic_load(&f.conn[0].pub.state), ACCEPTOR_EVICTING);
    assert_false(acceptor_conn_claim(&f.conn[0].pub));
    assert_true(acceptor_conn_claim(&f.conn[1].pub));
    assert_true(acceptor_conn_claim(&f.conn[1].pub)); /* claiming twice holds it */
    acceptor_conn_release(&f.conn[1].pub);
    assert_int_equal(atomic_load(&f.conn[1].pub.state), ACCEPTOR_IDLE);
    teardown(&f);
}

/* Bytes waiting on an idle connection (its serve thread has not polled
 * yet) keep it too. */
static void test_bytes_waiting_keep_it(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f);
    assert_int_equal(write(f.peer_fd[0], "HEADER", 6), 6);
    assert_int_equal(write(f.peer_fd[1], "HEADER", 6), 6);
    assert_false(under_caps(&f.a, newcomer));
    assert_false(f.conn[0].evicted || f.conn[1].evicted);
    assert_true(acceptor_conn_claim(&f.conn[0].pub));
    teardown(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_claimed_between_checks_is_kept),
        cmocka_unit_test(test_no_idle_left_refuses),
        cmocka_unit_test(test_evicted_connection_cannot_be_claimed),
        cmocka_unit_test(test_bytes_waiting_keep_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

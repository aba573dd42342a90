/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_tcp_sockopts.c — the tcp transport's socket options.  FERRY_TCP_SOCKBUF:
 * tcp_set_sockbuf sets both buffers, or leaves the kernel's.  FERRY_TCP_RCVLOWAT:
 * sockio_recvv_lowat on a
 * loopback TCP pair: while it waits, the socket's SO_RCVLOWAT is the least
 * of the knob and the bytes still wanted (never more, or the last piece
 * would never wake it); a peer that closes, a deadline and a stop still end
 * the wait; SO_RCVLOWAT is 1 again on every return.  A writer thread sends
 * part of the payload, then waits (no timing: it reads the receiver's
 * SO_RCVLOWAT until it changes) before it sends the rest, closes or stops.
 * FERRY_TCP_READ_HANDOFF: which READ requests go to the sender thread.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "ferry.h"
#include "net.h"
#include "spin.h"
#include "transport/tcp/sockio.h"
#include "transport/tcp/tcp.h"

#define KiB 1024u

enum after { SEND_REST, CLOSE, STOP, STAY };

struct writer {
    int fd;              /* the sending end */
    int peer_fd;         /* the receiving end: its SO_RCVLOWAT is watched */
    const uint8_t *data;
    size_t first, total; /* sends `first` bytes, waits, then does `after` */
    enum after after;
    atomic_int *stop;
    struct sockio_wake *wake;
    int seen_lowat;      /* the receiver's SO_RCVLOWAT once raised (0: not within 60 s) */
};

static int lowat_of(int fd)
{
    int v = -1;
    socklen_t l = sizeof v;
    assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &v, &l), 0);
    return v;
}

static int send_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    if (send_all(w->fd, w->data, w->first) || w->after == STAY)
        return NULL; /* STAY: the receiver's deadline may pass before any look */
    /* the receiver reads what is there (some or all of `first`), then
     * waits with SO_RCVLOWAT raised; a generous bound only, for a broken
     * receiver */
    for (int i = 0; i < 60000 && !w->seen_lowat; i++) {
        int v = lowat_of(w->peer_fd);
        if (v > 1)
            w->seen_lowat = v;
        else
            nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    switch (w->after) {
    case SEND_REST:
        send_all(w->fd, w->data + w->first, w->total - w->first);
        break;
    case CLOSE:
        shutdown(w->fd, SHUT_WR);
        break;
    case STOP:
        atomic_store(w->stop, 1);
        sockio_wake_signal(w->wake);
        break;
    default:
        break;
    }
    return NULL;
}

static void tcp_pair(int *a, int *b)
{
    int port = 0;
    int l = net_listen("127.0.0.1", 0, 10000, &port);
    assert_true(l >= 0);
    *a = net_connect("127.0.0.1", port, 10000);
    assert_true(*a >= 0);
    *b = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    assert_true(*b >= 0);
    close(l);
}

/* Receives `total` bytes into two iovecs with lowat 256 KiB while a writer
 * sends `first`, waits until the receiver's SO_RCVLOWAT is raised (*seen),
 * then does `after`.  Returns sockio's rc; *got the bytes received. */
static int run_case(size_t first, size_t total, enum after after, uint64_t deadline_ms, size_t *got, int *seen)
{
    int a, b;
    tcp_pair(&a, &b);
    uint8_t *src = malloc(total), *dst = calloc(1, total);
    assert_non_null(src);
    assert_non_null(dst);
    for (size_t i = 0; i < total; i++)
        src[i] = (uint8_t)(i * 7 + 3);
    atomic_int stop = 0;
    struct sockio_wake wake;
    assert_int_equal(sockio_wake_init(&wake), 0);
    struct writer w = {.fd = a, .peer_fd = b, .data = src, .first = first, .total = total, .after = after, .stop = &stop, .wake = &wake};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, writer_main, &w), 0);
    struct iovec iov[2] = {{dst, total / 3}, {dst + total / 3, total - total / 3}};
    int rc = sockio_recvv_lowat(b, iov, 2, net_deadline((unsigned)deadline_ms), &wake, &stop, 256 * KiB, got);
    pthread_join(th, NULL);
    *seen = w.seen_lowat;
    assert_int_equal(lowat_of(b), 1); /* set back on every return */
    assert_memory_equal(dst, src, *got);
    sockio_wake_destroy(&wake);
    close(a);
    close(b);
    free(src);
    free(dst);
    return rc;
}

/* A large payload: the wait is for 256 KiB, not the first segment. */
static void waits_for_lowat_bytes(void **state)
{
    (void)state;
    size_t got = 0;
    int seen = 0;
    assert_int_equal(run_case(100 * KiB, 4096 * KiB, SEND_REST, 60000, &got, &seen), 0);
    assert_int_equal(seen, 256 * KiB);
    assert_int_equal(got, 4096 * KiB);
}

/* 200 KiB wanted, less than the knob: the wait is for at most what is
 * left (200 KiB less what was read), never for 256 KiB that will not come
 * (the receive would then end at its deadline). */
static void last_piece_waits_for_what_is_left(void **state)
{
    (void)state;
    size_t got = 0;
    int seen = 0;
    assert_int_equal(run_case(16 * KiB, 200 * KiB, SEND_REST, 60000, &got, &seen), 0);
    assert_true(seen > 1 && seen <= (int)(200 * KiB));
    assert_int_equal(got, 200 * KiB);
}

/* The peer closes with fewer bytes there than the wait's SO_RCVLOWAT: the
 * receive ends FERRY_ECONN at once, not at its deadline. */
static void peer_close_ends_the_wait(void **state)
{
    (void)state;
    size_t got = 0;
    int seen = 0;
    assert_int_equal(run_case(100 * KiB, 1024 * KiB, CLOSE, 600000, &got, &seen), FERRY_ECONN);
    assert_int_equal(seen, 256 * KiB);
    assert_int_equal(got, 100 * KiB);
}

/* A stop (an unregister at the target) wakes the wait: 0, short. */
static void stop_ends_the_wait(void **state)
{
    (void)state;
    size_t got = 0;
    int seen = 0;
    assert_int_equal(run_case(100 * KiB, 1024 * KiB, STOP, 600000, &got, &seen), 0);
    assert_int_equal(seen, 256 * KiB);
    assert_true(got <= 100 * KiB); /* what had arrived before it waited: any of it */
}

/* The deadline still ends it (the peer sends part, then stays silent). */
static void deadline_ends_the_wait(void **state)
{
    (void)state;
    size_t got = 0;
    int seen = 0;
    assert_int_equal(run_case(100 * KiB, 1024 * KiB, STAY, 2000, &got, &seen), FERRY_ETIMEDOUT);
    assert_true(got <= 100 * KiB);
}

/* lowat 0 (the knob off): SO_RCVLOWAT is never touched. */
static void off_leaves_the_socket_alone(void **state)
{
    (void)state;
    int a, b;
    tcp_pair(&a, &b);
    uint8_t out[1000], in[1000];
    memset(out, 0x5a, sizeof out);
    assert_int_equal(send_all(a, out, sizeof out), 0);
    struct iovec iov = {in, sizeof in};
    assert_int_equal(sockio_recvv_lowat(b, &iov, 1, net_deadline(60000), NULL, NULL, 0, NULL), 0);
    assert_memory_equal(in, out, sizeof in);
    assert_int_equal(lowat_of(b), 1);
    close(a);
    close(b);
}

/* Sets the stop and signals the wake-up once the receiver has taken the
 * 100 bytes sent (no timing: it polls the socket's queue). */
struct stopper {
    struct sockio_wake *w;
    atomic_int *stop;
    int fd;
};

static void *stop_when_drained(void *arg)
{
    struct stopper *sp = arg;
    int queued = 1;
    while (queued > 0) {
        assert_int_equal(ioctl(sp->fd, FIONREAD, &queued), 0);
        sched_yield();
    }
    atomic_store(sp->stop, 1);
    sockio_wake_signal(sp->w);
    return NULL;
}

/* FERRY_TCP_SERVE_SPIN_US: sockio_spin_readable says 1 at once for bytes
 * already there, 0 after its look when none come, and 1 for a signalled
 * wake-up, whose signal it leaves for sockio_wait (a revocation must still
 * wake the thread that waits next); a wait on a wake-up with spin_ns set
 * still receives, and still ends at a stop. */
static void spin_looks_then_leaves_the_wait(void **state)
{
    (void)state;
    int a, b;
    tcp_pair(&a, &b);
    struct sockio_wake w;
    assert_int_equal(sockio_wake_init(&w), 0);
    assert_int_equal(w.spin_left_ns, 0);
    assert_int_equal(sockio_spin_readable(b, &w, 20000), 0); /* nothing there: 20 µs of looks, then 0 */
    assert_int_equal(sockio_spin_readable(b, NULL, 0), 0);   /* a look of 0: one poll */
    sockio_wake_signal(&w);
    assert_int_equal(sockio_spin_readable(b, &w, 20000), 1);
    assert_int_equal(sockio_wait(b, POLLIN, &w, net_deadline(60000)), 1); /* the signal was left for it */
    uint8_t out[3000], in[3000];
    memset(out, 0xa5, sizeof out);
    assert_int_equal(send_all(a, out, sizeof out), 0);
    assert_int_equal(sockio_spin_readable(b, NULL, 20000), 1);
    w.spin_left_ns = 50000; /* the serve thread's budget: waits for its payload look first */
    size_t got = 0;
    assert_int_equal(sockio_recv(b, in, sizeof in, net_deadline(60000), &w, NULL, &got), 0);
    assert_int_equal(got, sizeof in);
    assert_memory_equal(in, out, sizeof in);
    assert_int_equal(w.spin_left_ns, 50000); /* all of it was there: no wait, nothing spent */
    /* a revocation while it waits for more (nothing comes): the look sees the
     * signal, the wait returns at once and the receive ends at the stop */
    atomic_int stop = 0;
    assert_int_equal(send_all(a, out, 100), 0);
    pthread_t th;
    struct stopper sp = {&w, &stop, b};
    assert_int_equal(pthread_create(&th, NULL, stop_when_drained, &sp), 0);
    assert_int_equal(sockio_recv(b, in, sizeof in, net_deadline(60000), &w, &stop, &got), 0);
    assert_int_equal(got, 100);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_true(w.spin_left_ns < 50000); /* that wait looked first, and spent from the budget */
    sockio_wake_destroy(&w);
    close(a);
    close(b);
}

struct looker {
    int fd;
    int rc;
};

static void *look_long(void *arg)
{
    struct looker *l = arg;
    l->rc = sockio_spin_readable(l->fd, NULL, 30ull * 1000000000u); /* until its byte comes */
    return NULL;
}

/* Looks are capped in the process (half the usable CPUs, at least one):
 * with the cap's worth of threads looking, another look is refused at once
 * (0, counted), so peers keeping many connections' frames coming just often
 * enough cannot hold every core in looks; the lookers still see their
 * bytes, and once they stopped, a look is allowed again. */
static void spin_looks_capped(void **state)
{
    (void)state;
    struct spin_stats st;
    spin_stats(&st);
    assert_true(st.cap >= 1);
    assert_int_equal(st.looking, 0);
    unsigned n = st.cap;
    int (*pairs)[2] = calloc(n, sizeof *pairs);
    struct looker *ls = calloc(n, sizeof *ls);
    pthread_t *th = calloc(n, sizeof *th);
    assert_non_null(pairs);
    assert_non_null(ls);
    assert_non_null(th);
    for (unsigned i = 0; i < n; i++) {
        tcp_pair(&pairs[i][0], &pairs[i][1]);
        ls[i] = (struct looker){pairs[i][1], -1};
        assert_int_equal(pthread_create(&th[i], NULL, look_long, &ls[i]), 0);
    }
    uint64_t give_up = net_deadline(10000); /* a bound, not a measurement */
    do
        spin_stats(&st);
    while (st.looking < n && now_ns() < give_up && poll(NULL, 0, 1) == 0);
    assert_int_equal(st.looking, n);
    int a, b;
    tcp_pair(&a, &b);
    assert_int_equal(send_all(a, (const uint8_t *)"x", 1), 0);
    uint64_t refused = st.refused;
    /* readable, but over the cap: refused without a look (its caller sleeps
     * in poll, which returns at once here) */
    assert_int_equal(sockio_spin_readable(b, NULL, 30ull * 1000000000u), 0);
    spin_stats(&st);
    assert_int_equal(st.refused, refused + 1);
    for (unsigned i = 0; i < n; i++) {
        assert_int_equal(send_all(pairs[i][0], (const uint8_t *)"y", 1), 0);
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(ls[i].rc, 1);
        close(pairs[i][0]);
        close(pairs[i][1]);
    }
    spin_stats(&st);
    assert_int_equal(st.looking, 0);
    assert_int_equal(sockio_spin_readable(b, NULL, 20000), 1); /* under the cap again */
    close(a);
    close(b);
    free(pairs);
    free(ls);
    free(th);
}

static int sockopt_of(int fd, int opt)
{
    int v = -1;
    socklen_t l = sizeof v;
    assert_int_equal(getsockopt(fd, SOL_SOCKET, opt, &v, &l), 0);
    return v;
}

/* FERRY_TCP_SOCKBUF: both buffers of a connection get it (Linux reports
 * twice the value set: its bookkeeping); 0 leaves the kernel's. */
static void sockbuf_sets_both_buffers(void **state)
{
    (void)state;
    int a, b;
    tcp_pair(&a, &b);
    int snd = sockopt_of(a, SO_SNDBUF), rcv = sockopt_of(a, SO_RCVBUF);
    struct tcp_transport t = {.sockbuf = 0};
    tcp_set_sockbuf(&t, a);
    assert_int_equal(sockopt_of(a, SO_SNDBUF), snd);
    assert_int_equal(sockopt_of(a, SO_RCVBUF), rcv);
    t.sockbuf = 192 * KiB;
    tcp_set_sockbuf(&t, a);
    tcp_set_sockbuf(&t, b);
    for (int i = 0; i < 2; i++) {
        int fd = i ? b : a;
        assert_int_equal(sockopt_of(fd, SO_SNDBUF), 2 * 192 * KiB);
        assert_int_equal(sockopt_of(fd, SO_RCVBUF), 2 * 192 * KiB);
    }
    close(a);
    close(b);
}

/* FERRY_TCP_READ_HANDOFF: a READ request goes to the sender thread only
 * when the knob is on, the frame is at least that large, and the
 * connection has responses in flight (an idle receiver holds no lock: the
 * submitter writes it then, with no hand-off). */
static void read_handoff_choice(void **state)
{
    (void)state;
    const uint64_t MiB = 1024 * KiB;
    assert_false(tcp_read_by_sender(0, MiB, true));       /* off: always the submitter */
    assert_false(tcp_read_by_sender(0, 0, true));
    assert_true(tcp_read_by_sender(MiB, MiB, true));      /* at the threshold */
    assert_true(tcp_read_by_sender(MiB, 4 * MiB, true));
    assert_false(tcp_read_by_sender(MiB, MiB - 1, true)); /* below it */
    assert_false(tcp_read_by_sender(MiB, MiB, false));    /* nothing in flight: no lock to wait for */
    assert_true(tcp_read_by_sender(1, 4 * KiB, true));    /* 1: every frame */
    assert_false(tcp_read_by_sender(1, 4 * KiB, false));
}

/* FERRY_TCP_RECV_SPIN_US: an initiator's receiver looks for the next
 * response only when the knob is on, after a response to a frame of at most
 * 256 KiB (a batch of small blocks), and while the gaps between responses
 * were shorter than the look lately; the gaps' mean counts each gap as at
 * most four looks, so that it falls below the look within a few close
 * responses after a pause, and rises above it after a few long gaps. */
static void recv_look_choice(void **state)
{
    (void)state;
    const uint64_t us = 1000, spin = 100 * us;
    assert_true(tcp_recv_look_worth(spin, 128 * KiB, 50 * us));
    assert_true(tcp_recv_look_worth(spin, TCP_SPIN_FRAME_MAX, 99 * us)); /* at the largest frame */
    assert_false(tcp_recv_look_worth(0, 128 * KiB, 0));                   /* off */
    assert_false(tcp_recv_look_worth(spin, TCP_SPIN_FRAME_MAX + 1, 0));   /* a larger frame */
    assert_false(tcp_recv_look_worth(spin, UINT64_MAX, 0));               /* no response yet */
    assert_false(tcp_recv_look_worth(spin, 4 * KiB, spin));              /* gaps as long as the look */
    /* a pause counts as four looks at most: from there, close responses
     * bring the mean below the look within a handful */
    uint64_t mean = tcp_spin_gap_learn(4 * spin, 10ull * 1000 * 1000 * 1000, spin);
    assert_int_equal(mean, 4 * spin);
    int k = 0;
    for (; k < 20 && !tcp_recv_look_worth(spin, 128 * KiB, mean); k++)
        mean = tcp_spin_gap_learn(mean, 30 * us, spin);
    assert_true(k >= 3 && k <= 8);
    for (k = 0; k < 20 && tcp_recv_look_worth(spin, 128 * KiB, mean); k++)
        mean = tcp_spin_gap_learn(mean, 300 * us, spin);
    assert_true(k >= 1 && k <= 4);
}

struct dripper {
    int tx, rx;
    const uint8_t *rest;
    size_t len;
};

/* Sends the rest once the reader has drained what came first (it waits). */
static void *send_rest_when_drained(void *arg)
{
    struct dripper *d = arg;
    int queued = 1;
    while (queued > 0) {
        assert_int_equal(ioctl(d->rx, FIONREAD, &queued), 0);
        sched_yield();
    }
    usleep(2000);
    assert_int_equal(send_all(d->tx, d->rest, d->len), 0);
    return NULL;
}

/* The receiver's look within a READ payload: a budget on a wake-up with no
 * eventfd (fd -1, as tcp_conn.c's receiver makes it) is looked with and
 * spent, and the bytes arrive whole. */
static void look_without_eventfd(void **state)
{
    (void)state;
    int a, b;
    tcp_pair(&a, &b);
    uint8_t out[6000], in[6000];
    for (size_t i = 0; i < sizeof out; i++)
        out[i] = (uint8_t)(i * 7);
    assert_int_equal(send_all(a, out, 1000), 0);
    struct sockio_wake look = {.fd = -1, .spin_left_ns = 50000};
    struct dripper d = {a, b, out + 1000, sizeof out - 1000};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, send_rest_when_drained, &d), 0);
    size_t got = 0;
    assert_int_equal(sockio_recv(b, in, sizeof in, net_deadline(60000), &look, NULL, &got), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(got, sizeof in);
    assert_memory_equal(in, out, sizeof in);
    assert_true(look.spin_left_ns < 50000); /* it looked (2 ms of waiting: all of the budget) */
    close(a);
    close(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(waits_for_lowat_bytes),
        cmocka_unit_test(last_piece_waits_for_what_is_left),
        cmocka_unit_test(peer_close_ends_the_wait),
        cmocka_unit_test(stop_ends_the_wait),
        cmocka_unit_test(deadline_ends_the_wait),
        cmocka_unit_test(off_leaves_the_socket_alone),
        cmocka_unit_test(spin_looks_then_leaves_the_wait),
        cmocka_unit_test(spin_looks_capped),
        cmocka_unit_test(sockbuf_sets_both_buffers),
        cmocka_unit_test(read_handoff_choice),
        cmocka_unit_test(recv_look_choice),
        cmocka_unit_test(look_without_eventfd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

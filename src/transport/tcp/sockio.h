/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sockio.h — payload I/O on a stream socket that a deadline bounds and
 * another thread can interrupt.
 *
 * net.h's full reads and writes end at the last byte, a deadline or the
 * socket's timeout (one bound per call, rev19), but nothing else stops
 * them: no other thread can.  These helpers move bytes in pieces, as the kernel
 * has them, and between pieces wait with poll() for the socket, an absolute
 * deadline and a wake-up (an eventfd another thread signals).  A caller that
 * must stop touching memory soon (its registration is being revoked) passes
 * a stop flag and a wake-up; one that must end by a request's deadline
 * passes that deadline.  Any thread may call; one thread per socket at a time.
 */
#ifndef FERRY_SOCKIO_H
#define FERRY_SOCKIO_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* An eventfd: signalled from any thread (never blocks), consumed by the
 * thread waiting in sockio_wait.  spin_left_ns (0 unless its owner sets
 * it; only the waiting thread touches it): a wait for POLLIN on it first
 * looks at the socket, yielding the CPU between looks, for up to that long
 * in all before it sleeps (sockio_spin_readable), and takes what it spent
 * from it: a budget its owner renews per frame, so that a peer dripping
 * bytes cannot keep the thread looking. */
struct sockio_wake {
    int fd;
    uint64_t spin_left_ns;
};

/* Creates the eventfd.  0 or FERRY_EIO. */
int sockio_wake_init(struct sockio_wake *w);
void sockio_wake_destroy(struct sockio_wake *w);
/* Wakes the thread waiting on w (or makes its next wait return at once).
 * Async-safe enough to call under any lock. */
void sockio_wake_signal(struct sockio_wake *w);

/* Looks whether fd is readable (or w, may be NULL, signalled), without
 * sleeping: poll with no timeout, sched_yield between looks, for up to
 * spin_ns.  1: readable or signalled (the signal is left for the next
 * sockio_wait), 0: neither.  A thread whose next bytes come within
 * microseconds keeps its CPU instead of sleeping and being woken (an
 * inter-processor interrupt to an idle CPU: tens of µs in a VM); the yield
 * lets any other thread that is ready run first.  A look takes one of the
 * process's looks (common/spin.h): over that budget, 0 at once. */
int sockio_spin_readable(int fd, const struct sockio_wake *w, uint64_t spin_ns);

/* Waits until fd has `events` (POLLIN / POLLOUT), w was signalled (w may be
 * NULL) or deadline_ns (monotonic, absolute; 0 = none) passed.  Returns 0
 * (fd ready, or in error: the next I/O call reports it), 1 (woken; the
 * signal is consumed) or FERRY_ETIMEDOUT. */
int sockio_wait(int fd, short events, struct sockio_wake *w, uint64_t deadline_ns);

/* What the receives and sends below return when the memory given is not
 * mapped or not accessible (EFAULT: a range registered but unmapped, or
 * PROT_NONE).  The kernel moved the bytes before the bad address and none
 * after: the stream of bytes is intact and the caller may go on (the rest
 * of the piece is where the iovec array stops, or *got). */
#define SOCKIO_EFAULT FERRY_EIO

/* Receives len bytes into buf.  Before every piece it checks *stop (may be
 * NULL): once set, it returns 0 with *got < len and touches buf no more.
 * Otherwise returns 0 with *got == len, FERRY_ECONN (peer closed or reset)
 * or FERRY_ETIMEDOUT (deadline).  got may be NULL when stop is. */
int sockio_recv(int fd, void *buf, size_t len, uint64_t deadline_ns, struct sockio_wake *w,
                const atomic_int *stop, size_t *got);

/* Receives into the iovec array, as sockio_recv does into one buffer, and
 * in place as sockio_sendv sends (an iovec filled whole is left with
 * iov_len 0, a partly filled one points at its rest): a frame's entries
 * land with one recvmsg per wait instead of one recv each. */
int sockio_recvv(int fd, struct iovec *iov, int iovcnt, uint64_t deadline_ns, struct sockio_wake *w,
                 const atomic_int *stop, size_t *got);
/* sockio_recvv that, before each wait, raises the socket's SO_RCVLOWAT to
 * the least of `lowat` and the bytes still wanted (0 or 1: never), so that a
 * large payload wakes its receiver once per `lowat` bytes rather than once
 * per segment (FERRY_TCP_RCVLOWAT): fewer bytes that have arrived wait for
 * more, the peer's close, a stop or the deadline.  It sets SO_RCVLOWAT back
 * to 1 before it returns, on every path. */
int sockio_recvv_lowat(int fd, struct iovec *iov, int iovcnt, uint64_t deadline_ns, struct sockio_wake *w,
                       const atomic_int *stop, size_t lowat, size_t *got);
/* Receives at least `min` and at most `max` bytes into buf: waits (under
 * the deadline) only while fewer than `min` have come, and takes what else
 * is there up to `max` without waiting for it.  0 with *got in [min, max],
 * FERRY_ECONN or FERRY_ETIMEDOUT (*got: what came).  For a reader that
 * knows the next `max` bytes are all its own (e.g. the headers of
 * responses that carry no payload). */
int sockio_recv_between(int fd, void *buf, size_t min, size_t max, uint64_t deadline_ns, size_t *got);
/* Receives and throws away len bytes; 0 or as sockio_recv.  Stops early,
 * returning 0 with *done short of len, once *stop is set (as sockio_recv:
 * a wake-up consumed here must reach a caller that has something to do
 * about it, tcp_serve_discard).  done may be NULL where stop is. */
int sockio_discard(int fd, uint64_t len, uint64_t deadline_ns, struct sockio_wake *w, const atomic_int *stop,
                   uint64_t *done);

/* Sends the iovec array as sockio_recv receives (in place: an iovec sent
 * whole is left with iov_len 0, a partly sent one points at its rest): stops
 * early, returning 0 with *sent short of the total, once *stop is set.  The
 * kernel copies what it takes, so bytes sent before the stop are no longer
 * read from the caller's memory. */
int sockio_sendv(int fd, struct iovec *iov, int iovcnt, uint64_t deadline_ns, struct sockio_wake *w,
                 const atomic_int *stop, size_t *sent);

/* Sends as much of the iovec array as the socket takes now, never waiting
 * for room: advances *iov / *iovcnt past what went out (a partly sent iovec
 * points at its rest).  Returns 0 (all of it sent), 1 (the socket is full;
 * the rest is left) or FERRY_ECONN. */
int sockio_send_some(int fd, struct iovec **iov, int *iovcnt);

/* Sends len zero bytes (the stand-in for bytes a sender may no longer
 * read); stops early as sockio_discard, *done saying how many went. */
int sockio_send_zeros(int fd, uint64_t len, uint64_t deadline_ns, struct sockio_wake *w, const atomic_int *stop,
                      uint64_t *done);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * sockio.c — interruptible, deadline-bounded payload I/O (see sockio.h).
 *
 * Every call tries the socket first with MSG_DONTWAIT and only waits in
 * poll() when the kernel has nothing (receive) or no room (send): after a
 * short transfer it waits at once rather than trying again for an EAGAIN,
 * so a stream costs one recv/send per piece plus one poll per wait; the
 * deadline and the wake-up are looked at whenever the call would block.  Stateless apart from the
 * caller's eventfd.
 */
#include "transport/tcp/sockio.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <stdbool.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "err.h"
#include "net.h"
#include "spin.h"

/* Most bytes moved by one call between two looks at the stop flag. */
#define PIECE_MAX (8u << 20)

int sockio_wake_init(struct sockio_wake *w)
{
    w->spin_left_ns = 0;
    w->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return w->fd >= 0 ? 0 : ferry_fail(FERRY_EIO, "eventfd: %s", strerror(errno));
}

void sockio_wake_destroy(struct sockio_wake *w)
{
    if (w->fd >= 0)
        close(w->fd);
    w->fd = -1;
}

void sockio_wake_signal(struct sockio_wake *w)
{
    uint64_t one = 1;
    ssize_t n = write(w->fd, &one, sizeof one); /* EAGAIN: already signalled */
    (void)n;
}

int sockio_spin_readable(int fd, const struct sockio_wake *w, uint64_t spin_ns)
{
    if (!spin_claim())
        return 0;
    uint64_t start = now_ns();
    int rc;
    for (;;) {
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = w ? w->fd : -1, .events = POLLIN}};
        if (poll(p, w ? 2 : 1, 0) > 0) {
            rc = 1;
            break;
        }
        if (now_ns() - start >= spin_ns) {
            rc = 0;
            break;
        }
        sched_yield();
    }
    spin_release();
    return rc;
}

int sockio_wait(int fd, short events, struct sockio_wake *w, uint64_t deadline_ns)
{
    if (w && w->spin_left_ns && events == POLLIN) { /* the poll below then returns at once, or sleeps */
        uint64_t start = now_ns();
        (void)sockio_spin_readable(fd, w, w->spin_left_ns);
        uint64_t spent = now_ns() - start;
        w->spin_left_ns = spent < w->spin_left_ns ? w->spin_left_ns - spent : 0;
    }
    for (;;) {
        int timeout = -1;
        if (deadline_ns) {
            uint64_t now = now_ns();
            if (now >= deadline_ns)
                return ferry_fail(FERRY_ETIMEDOUT, "deadline passed with the transfer unfinished");
            uint64_t left_ms = (deadline_ns - now + 999999u) / 1000000u;
            timeout = left_ms > 60000 ? 60000 : (int)left_ms;
        }
        struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = w ? w->fd : -1, .events = POLLIN}};
        int n = poll(p, w ? 2 : 1, timeout);
        if (n < 0 && errno != EINTR)
            return ferry_fail(FERRY_EIO, "poll: %s", strerror(errno));
        if (n <= 0)
            continue;
        if (w && (p[1].revents & POLLIN)) {
            uint64_t v;
            ssize_t r = read(w->fd, &v, sizeof v);
            (void)r;
            return 1;
        }
        if (p[0].revents)
            return 0;
    }
}

static int io_error(ssize_t n, const char *what)
{
    if (n == 0)
        return ferry_fail(FERRY_ECONN, "%s: peer closed the connection", what);
    if (errno == EFAULT) /* the kernel moved none of that piece: the byte stream is intact */
        return ferry_fail(SOCKIO_EFAULT, "%s: the memory is not mapped (EFAULT)", what);
    return ferry_fail(FERRY_ECONN, "%s: %s", what, strerror(errno));
}

static int stopped(const atomic_int *stop)
{
    return stop && atomic_load_explicit(stop, memory_order_acquire);
}

/* Drops the n bytes just moved from the front of the iovec array: an iovec
 * moved whole is left with iov_len 0, a partly moved one points at its rest. */
static void iov_consume(struct iovec **iov, int *iovcnt, size_t n)
{
    while (*iovcnt > 0 && n >= (*iov)->iov_len) {
        n -= (*iov)->iov_len;
        (*iov)->iov_len = 0;
        (*iov)++;
        (*iovcnt)--;
    }
    if (*iovcnt > 0) {
        (*iov)->iov_base = (char *)(*iov)->iov_base + n;
        (*iov)->iov_len -= n;
    }
}

/* Copies the front of the iovec array into part (at most RECV_IOVS entries
 * and PIECE_MAX bytes: one call between two looks at the stop flag).
 * Returns the number of entries; *bytes their total. */
#define RECV_IOVS 64
static int iov_front(const struct iovec *iov, int iovcnt, struct iovec *part, size_t *bytes)
{
    size_t total = 0;
    int k = 0;
    for (; k < iovcnt && k < RECV_IOVS && total < PIECE_MAX; k++) {
        part[k] = iov[k];
        if (part[k].iov_len > PIECE_MAX - total)
            part[k].iov_len = PIECE_MAX - total;
        total += part[k].iov_len;
    }
    *bytes = total;
    return k;
}

/* The bytes still wanted by the iovec array. */
static size_t iov_left(const struct iovec *iov, int iovcnt)
{
    size_t n = 0;
    for (int k = 0; k < iovcnt; k++)
        n += iov[k].iov_len;
    return n;
}

/* SO_RCVLOWAT: poll reports the socket readable (and the kernel wakes the
 * waiter) only once this many bytes are there. */
static void set_lowat(int fd, size_t bytes)
{
    int v = bytes > INT_MAX ? INT_MAX : (int)bytes;
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof v);
}

int sockio_recvv(int fd, struct iovec *iov, int iovcnt, uint64_t deadline_ns, struct sockio_wake *w,
                 const atomic_int *stop, size_t *got)
{
    return sockio_recvv_lowat(fd, iov, iovcnt, deadline_ns, w, stop, 0, got);
}

int sockio_recvv_lowat(int fd, struct iovec *iov, int iovcnt, uint64_t deadline_ns, struct sockio_wake *w,
                       const atomic_int *stop, size_t lowat, size_t *got)
{
    size_t done = 0, lowat_now = 1; /* the socket's SO_RCVLOWAT: 1 unless this call raised it */
    int rc = 0;
    bool drained = false; /* the last recv emptied the socket: wait before the next */
    while (iovcnt > 0 && iov->iov_len == 0) { /* nothing to receive into */
        iov++;
        iovcnt--;
    }
    while (iovcnt > 0 && !stopped(stop)) {
        if (drained) {
            if (lowat > 1) { /* wake once `lowat` bytes (or the rest) are there, not per segment */
                size_t left = iov_left(iov, iovcnt), want = left < lowat ? left : lowat;
                if (want != lowat_now)
                    set_lowat(fd, lowat_now = want);
            }
            if ((rc = sockio_wait(fd, POLLIN, w, deadline_ns)) < 0)
                break;
            rc = 0;
            drained = false;
            continue; /* look at the stop flag first */
        }
        struct iovec part[RECV_IOVS];
        size_t want;
        struct msghdr msg = {.msg_iov = part};
        msg.msg_iovlen = (size_t)iov_front(iov, iovcnt, part, &want);
        ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT);
        if (n > 0) {
            done += (size_t)n;
            drained = (size_t)n < want;
            iov_consume(&iov, &iovcnt, (size_t)n);
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            drained = errno != EINTR;
        } else {
            rc = io_error(n, "recv");
            break;
        }
    }
    if (lowat_now != 1) /* the next wait on this socket (a header, an idle poll) wakes on any byte */
        set_lowat(fd, 1);
    if (got)
        *got = done;
    return rc;
}

int sockio_recv(int fd, void *buf, size_t len, uint64_t deadline_ns, struct sockio_wake *w,
                const atomic_int *stop, size_t *got)
{
    struct iovec one = {buf, len};
    return sockio_recvv(fd, &one, 1, deadline_ns, w, stop, got);
}

int sockio_recv_between(int fd, void *buf, size_t min, size_t max, uint64_t deadline_ns, size_t *got)
{
    size_t done = 0;
    int rc = 0;
    bool drained = false; /* the last recv emptied the socket: wait before the next */
    while (done < min) {
        if (drained) {
            if ((rc = sockio_wait(fd, POLLIN, NULL, deadline_ns)) < 0)
                break;
            rc = 0;
        }
        ssize_t n = recv(fd, (char *)buf + done, max - done, MSG_DONTWAIT);
        if (n > 0) {
            drained = (size_t)n < max - done;
            done += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            drained = errno != EINTR;
        } else {
            rc = io_error(n, "recv");
            break;
        }
    }
    *got = done;
    return rc;
}

int sockio_discard(int fd, uint64_t len, uint64_t deadline_ns, struct sockio_wake *w, const atomic_int *stop,
                   uint64_t *done)
{
    char sink[65536];
    uint64_t total = 0;
    int rc = 0;
    while (total < len && !stopped(stop)) {
        size_t n = len - total < sizeof sink ? (size_t)(len - total) : sizeof sink, got = 0;
        rc = sockio_recv(fd, sink, n, deadline_ns, w, stop, &got);
        total += got;
        if (rc)
            break;
    }
    if (done)
        *done = total;
    return rc;
}

int sockio_sendv(int fd, struct iovec *iov, int iovcnt, uint64_t deadline_ns, struct sockio_wake *w,
                 const atomic_int *stop, size_t *sent)
{
    size_t done = 0;
    int rc = 0;
    bool full = false;
    while (iovcnt > 0 && !stopped(stop)) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)(iovcnt > 1024 ? 1024 : iovcnt)};
        if (full) { /* the last send filled the socket buffer: wait for room */
            if ((rc = sockio_wait(fd, POLLOUT, w, deadline_ns)) < 0)
                break;
            rc = 0;
            full = false;
            continue;
        }
        ssize_t n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            full = errno != EINTR;
            continue;
        }
        if (n <= 0) {
            rc = io_error(n < 0 ? -1 : 0, "send");
            break;
        }
        size_t left = (size_t)n, offered = 0;
        for (size_t i = 0; i < msg.msg_iovlen; i++)
            offered += iov[i].iov_len;
        full = left < offered;
        done += left;
        iov_consume(&iov, &iovcnt, left);
    }
    if (sent)
        *sent = done;
    return rc;
}

int sockio_send_some(int fd, struct iovec **iov, int *iovcnt)
{
    while (*iovcnt > 0 && (*iov)->iov_len == 0) {
        (*iov)++;
        (*iovcnt)--;
    }
    while (*iovcnt > 0) {
        struct msghdr msg = {.msg_iov = *iov, .msg_iovlen = (size_t)(*iovcnt > 1024 ? 1024 : *iovcnt)};
        ssize_t n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 1;
        if (n <= 0)
            return io_error(n < 0 ? -1 : 0, "send");
        iov_consume(iov, iovcnt, (size_t)n);
        while (*iovcnt > 0 && (*iov)->iov_len == 0) {
            (*iov)++;
            (*iovcnt)--;
        }
    }
    return 0;
}

int sockio_send_zeros(int fd, uint64_t len, uint64_t deadline_ns, struct sockio_wake *w, const atomic_int *stop,
                      uint64_t *done)
{
    static const char zeros[65536];
    uint64_t total = 0;
    int rc = 0;
    while (total < len && !stopped(stop)) {
        struct iovec iov[16];
        int n = 0;
        uint64_t batch = 0;
        for (; n < 16 && batch < len - total; n++) {
            size_t piece = len - total - batch < sizeof zeros ? (size_t)(len - total - batch) : sizeof zeros;
            iov[n] = (struct iovec){(void *)zeros, piece};
            batch += piece;
        }
        size_t sent = 0;
        rc = sockio_sendv(fd, iov, n, deadline_ns, w, stop, &sent);
        total += sent;
        if (rc)
            break;
    }
    if (done)
        *done = total;
    return rc;
}

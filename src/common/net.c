/* SPDX-License-Identifier: Apache-2.0 */
/*
 * net.c — socket helpers (see net.h).  Stateless; any thread may call.
 */
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "err.h"

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int net_split_hostport(const char *name, char *host, size_t hostlen, int *port)
{
    if (!name || !*name)
        return ferry_fail(FERRY_EINVAL, "empty host name");
    const char *colon = strrchr(name, ':');
    if (name[0] == '[' || (colon && memchr(name, ':', (size_t)(colon - name))))
        return ferry_fail(FERRY_EINVAL, "\"%s\" is an IPv6 address: ferry speaks IPv4 only (give an IPv4 address or a "
                          "host name)", name);
    size_t hl = colon ? (size_t)(colon - name) : strlen(name);
    if (hl == 0 || hl >= hostlen)
        return ferry_fail(FERRY_EINVAL, "bad host in \"%s\"", name);
    memcpy(host, name, hl);
    host[hl] = '\0';
    *port = 0;
    if (colon) {
        char *end;
        long p = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end || p < 0 || p > 65535)
            return ferry_fail(FERRY_EINVAL, "bad port in \"%s\"", name);
        *port = (int)p;
    }
    return 0;
}

static int resolve(const char *host, int port, struct sockaddr_in *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa->sin_addr) == 1)
        return 0;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || !res)
        return ferry_fail(FERRY_ECONN, "cannot resolve host \"%s\": %s", host, gai_strerror(rc));
    sa->sin_addr = ((struct sockaddr_in *)res->ai_addr)->sin_addr;
    freeaddrinfo(res);
    return 0;
}

/* 0, or a FERRY_E* code with its message (bind's errno kept). */
static int try_bind(int fd, const char *host, int port)
{
    struct sockaddr_in sa;
    int rc = resolve(host, port, &sa);
    if (rc)
        return rc;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
        return 0;
    int err = errno;
    rc = ferry_fail(FERRY_EIO, "bind %s:%d: %s", host, port, strerror(err));
    errno = err; /* net_listen looks for EADDRINUSE */
    return rc;
}

int net_listen(const char *host, int port, int *bound)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return ferry_fail(FERRY_EIO, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int rc = try_bind(fd, host, port);
    if (rc == FERRY_EIO && port != 0 && errno == EADDRINUSE) /* the requested port is taken: any port */
        rc = try_bind(fd, host, 0);
    if (rc) {
        close(fd);
        return rc;
    }
    if (listen(fd, 512) != 0) {
        rc = ferry_fail(FERRY_EIO, "listen: %s", strerror(errno));
        close(fd);
        return rc;
    }
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    *bound = ntohs(sa.sin_port);
    return fd;
}

int net_connect(const char *host, int port, unsigned timeout_ms)
{
    struct sockaddr_in sa;
    int rc = resolve(host, port, &sa);
    if (rc)
        return rc;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return ferry_fail(FERRY_EIO, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
        rc = ferry_fail(FERRY_ECONN, "connect %s:%d: %s", host, port, strerror(errno));
        close(fd);
        return rc;
    }
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int n;
    do
        n = poll(&p, 1, (int)timeout_ms);
    while (n < 0 && errno == EINTR);
    if (n == 0) {
        close(fd);
        return ferry_fail(FERRY_ETIMEDOUT, "connect %s:%d: no answer within %u ms", host, port, timeout_ms);
    }
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (n < 0 || err) {
        close(fd);
        return ferry_fail(FERRY_ECONN, "connect %s:%d: %s", host, port, strerror(err ? err : errno));
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

void net_set_timeouts(int fd, unsigned recv_ms, unsigned send_ms)
{
    struct timeval r = {.tv_sec = recv_ms / 1000, .tv_usec = (recv_ms % 1000) * 1000};
    struct timeval s = {.tv_sec = send_ms / 1000, .tv_usec = (send_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &r, sizeof r);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &s, sizeof s);
}

static int io_error(ssize_t n, const char *what)
{
    if (n == 0)
        return ferry_fail(FERRY_ECONN, "%s: peer closed the connection", what);
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return ferry_fail(FERRY_ETIMEDOUT, "%s: timed out", what);
    return ferry_fail(FERRY_ECONN, "%s: %s", what, strerror(errno));
}

int net_read_full(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, MSG_WAITALL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            return io_error(n, "recv");
        }
    }
    return 0;
}

/* Waits until fd is ready for `events` or the deadline passes. */
static int wait_ready(int fd, short events, uint64_t deadline_ns, const char *what)
{
    for (;;) {
        uint64_t now = now_ns();
        if (now >= deadline_ns)
            return ferry_fail(FERRY_ETIMEDOUT, "%s: deadline passed", what);
        uint64_t left_ms = (deadline_ns - now + 999999u) / 1000000u;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, left_ms > 60000 ? 60000 : (int)left_ms);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return ferry_fail(FERRY_ECONN, "%s: poll: %s", what, strerror(errno));
    }
}

int net_read_full_deadline(int fd, void *buf, size_t len, uint64_t deadline_ns)
{
    char *p = buf;
    while (len > 0) {
        int rc = wait_ready(fd, POLLIN, deadline_ns, "recv");
        if (rc)
            return rc;
        ssize_t n = recv(fd, p, len, MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
            continue;
        } else {
            return io_error(n, "recv");
        }
    }
    return 0;
}

/* Skips n sent bytes: drops the iovecs they filled, trims the one they ended in. */
static void iov_advance(struct iovec **iov, int *iovcnt, size_t n)
{
    while (*iovcnt > 0 && n >= (*iov)->iov_len) {
        n -= (*iov)->iov_len;
        (*iov)++;
        (*iovcnt)--;
    }
    if (*iovcnt > 0) {
        (*iov)->iov_base = (char *)(*iov)->iov_base + n;
        (*iov)->iov_len -= n;
    }
}

int net_writev_full_deadline(int fd, struct iovec *iov, int iovcnt, uint64_t deadline_ns)
{
    while (iovcnt > 0) {
        int rc = wait_ready(fd, POLLOUT, deadline_ns, "send");
        if (rc)
            return rc;
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)(iovcnt > 1024 ? 1024 : iovcnt)};
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (n <= 0)
            return io_error(n < 0 ? -1 : 0, "send");
        iov_advance(&iov, &iovcnt, (size_t)n);
    }
    return 0;
}

int net_write_full_deadline(int fd, const void *buf, size_t len, uint64_t deadline_ns)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    return net_writev_full_deadline(fd, &iov, 1, deadline_ns);
}

uint64_t net_deadline(unsigned ms)
{
    return now_ns() + (uint64_t)ms * 1000000u;
}

int net_discard(int fd, uint64_t len)
{
    char sink[65536];
    while (len > 0) {
        size_t n = len < sizeof sink ? (size_t)len : sizeof sink;
        int rc = net_read_full(fd, sink, n);
        if (rc)
            return rc;
        len -= n;
    }
    return 0;
}

int net_writev_full(int fd, struct iovec *iov, int iovcnt)
{
    while (iovcnt > 0) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)(iovcnt > 1024 ? 1024 : iovcnt)};
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return io_error(n < 0 ? -1 : 0, "send");
        iov_advance(&iov, &iovcnt, (size_t)n);
    }
    return 0;
}

int net_write_full(int fd, const void *buf, size_t len)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    return net_writev_full(fd, &iov, 1);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rawpeer.h — a hostile or hand-driven peer for the security tests: raw
 * sockets from a chosen loopback address, HELLO and frames written by hand,
 * and "did the server close this connection?" checks.  Header-only (static
 * inline), shared by test_attacks.c, test_auth.c and test_peer_input.c.
 */
#ifndef FERRY_TEST_RAWPEER_H
#define FERRY_TEST_RAWPEER_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "meta/descriptor.h"
#include "meta/p2p.h"
#include "net.h"
#include "transport/tcp/tcp_wire.h"

/* The handshake port of a segment name "host:port". */
static inline int raw_handshake_port(const char *segment)
{
    return atoi(strrchr(segment, ':') + 1);
}

/* Fetches a segment's descriptor (authenticating with auth if non-NULL) and
 * returns its tcp data port; stores its engine id.  -1 on failure. */
static inline int raw_data_port(const char *segment, const struct auth_key *auth, uint64_t *engine_id)
{
    char *json = NULL;
    size_t len;
    struct ferry_descriptor d;
    if (p2p_fetch_auth(segment, 5000, auth, &json, &len) != 0)
        return -1;
    int rc = descriptor_decode(json, len, &d);
    free(json);
    if (rc)
        return -1;
    const char *ep = descriptor_transport(&d, "tcp");
    const char *pp = ep ? strstr(ep, "\"port\":") : NULL;
    int port = pp ? atoi(pp + 7) : -1;
    if (engine_id)
        *engine_id = d.engine_id;
    descriptor_free(&d);
    return port;
}

/* A blocking TCP connection from source address `from` (e.g. "127.0.0.2")
 * to 127.0.0.1:port.  -1 if the connect itself fails. */
static inline int raw_connect_from(const char *from, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, from, &src.sin_addr);
    inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
    if (fd < 0 || bind(fd, (struct sockaddr *)&src, sizeof src) != 0 ||
        connect(fd, (struct sockaddr *)&dst, sizeof dst) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Sends a HELLO naming `name` and expecting engine `epoch`. */
static inline int raw_send_hello(int fd, uint64_t epoch, const char *name)
{
    uint8_t raw[WIRE_HEADER_SIZE];
    struct wire_header h = {.type = WIRE_HELLO, .payload_len = strlen(name), .epoch = epoch};
    wire_encode_header(&h, raw);
    if (net_write_full(fd, raw, sizeof raw) != 0)
        return -1;
    return net_write_full(fd, name, strlen(name));
}

/* Waits up to limit_ms for a response header.  Returns 0 and fills *h, or
 * -1 when the server closed the connection (or nothing came). */
static inline int raw_read_header(int fd, struct wire_header *h, unsigned limit_ms)
{
    uint8_t raw[WIRE_HEADER_SIZE];
    if (net_read_full_deadline(fd, raw, sizeof raw, net_deadline(limit_ms)) != 0)
        return -1;
    return wire_decode_header(raw, h) == 0 ? 0 : -1;
}

/* Did the server close the connection?  Waits up to limit_ms (generous: a
 * limit for a test that must not hang, not a measurement) for EOF or reset,
 * throwing away whatever else arrives. */
static inline bool raw_closed_by_peer(int fd, unsigned limit_ms)
{
    uint64_t deadline = net_deadline(limit_ms);
    char sink[4096];
    while (now_ns() < deadline) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            return true;
    }
    return false;
}

/* Is the connection closed right now (EOF or reset already received)? */
static inline bool raw_is_closed(int fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

#endif

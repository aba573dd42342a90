/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tcp.h — what the tcp transport's two files share: the transport itself,
 * and the target side's entry point (tcp_serve.c) that tcp.c hands to the
 * acceptor.  Private to src/transport/tcp/.
 */
#ifndef FERRY_TCP_H
#define FERRY_TCP_H

#include <stdatomic.h>
#include <stdint.h>

#include "acceptor.h"
#include "transport/transport.h"

#define POLL_TICK_MS 100

struct tcp_transport {
    struct transport_host host;
    int listen_fd;
    int port;
    struct acceptor *acceptor;
    atomic_uint_fast64_t bytes_written, bytes_read, bytes_served, frames_sent, refused;
    unsigned max_conns;     /* FERRY_TCP_MAX_CONNECTIONS, resolved (tcp_max_connections) */
    uint64_t grow_bytes;    /* FERRY_TCP_GROW_BYTES, resolved (tcp_grow_bytes) */
};

/* The defaults that scale with the host: connections per peer on a host
 * with `cores` CPUs, and the bytes in flight on every connection before a
 * peer that may hold `max_conns` opens another (at least a slice). */
unsigned tcp_auto_max_connections(long cores);
uint64_t tcp_auto_grow_bytes(unsigned max_conns, uint64_t slice_size);

/* One incoming connection, on its own thread (the acceptor's callback):
 * authenticates, serves frames until the peer leaves, frees what it holds. */
void tcp_serve_connection(void *ctx, struct acceptor_conn *c);

#endif

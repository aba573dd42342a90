/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tcp.h — what the tcp transport's two files share: the transport itself,
 * and the target side's entry point (tcp_serve.c) that tcp.c hands to the
 * acceptor.  Private to src/transport/tcp/.
 */
#ifndef FERRY_TCP_H
#define FERRY_TCP_H

#include <stdatomic.h>

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
};

/* One incoming connection, on its own thread (the acceptor's callback):
 * authenticates, serves frames until the peer leaves, frees what it holds. */
void tcp_serve_connection(void *ctx, struct acceptor_conn *c);

#endif

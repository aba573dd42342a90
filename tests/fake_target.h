/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fake_target.h — a tcp target played by hand inside the test process, for
 * tests of what an initiator does when the target misbehaves (dies, drips,
 * stalls, refuses): a P2P handshake server that publishes one cpu buffer
 * and a tcp endpoint, and a data listener whose connections a test's
 * callback serves however it likes (the wire format in tcp_wire.h).
 *
 * Threads: fake_target_start starts the handshake server's threads and one
 * thread that accepts data connections one at a time and hands each to
 * serve(ctx, fd) (the helper closes fd when serve returns).  The caller owns
 * the struct (it stays where it is until fake_target_stop), the published
 * buffer and whatever ctx points to; the helper owns the sockets and the
 * threads.
 */
#ifndef FERRY_TEST_FAKE_TARGET_H
#define FERRY_TEST_FAKE_TARGET_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "meta/p2p.h"

struct fake_target {
    char host[48];               /* "127.0.0.1", or "::1" */
    char name[80];               /* the segment name to open: "127.0.0.1:port", "[::1]:port" */
    uint64_t engine_id;
    char *mem;                   /* the published buffer (the caller's) */
    size_t len;
    void (*serve)(void *ctx, int fd);
    void *ctx;
    int data_fd, data_port, hs_port;
    int stop_pipe[2];            /* written by fake_target_stop; serve may poll stop_pipe[0] */
    struct p2p_server *hs;
    pthread_t thread;
};

/* Starts a target on host (NULL: 127.0.0.1) that publishes [mem, mem+len)
 * as engine engine_id (fill it before: the serving thread reads it); its
 * handshake server authenticates with auth when non-NULL (it must outlive
 * the target).  Returns 0, or -1 when a socket or thread could not be had
 * (nothing is left running then). */
int fake_target_start(struct fake_target *k, const char *host, uint64_t engine_id, char *mem, size_t len,
                      const struct auth_key *auth, void (*serve)(void *ctx, int fd), void *ctx);
/* Stops accepting, waits for the serving thread (serve must return once
 * stop_pipe[0] is readable) and stops the handshake server. */
void fake_target_stop(struct fake_target *k);
/* Waits up to ms for fake_target_stop; true when it has been called. */
bool fake_target_stopped_within(struct fake_target *k, int ms);

#endif

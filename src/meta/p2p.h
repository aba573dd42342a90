/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p2p.h — the built-in peer-to-peer handshake (metadata_server=P2PHANDSHAKE).
 *
 * Each engine runs a small server on its handshake port that answers
 * "give me your descriptor" with its current descriptor JSON; an initiator
 * fetches a peer's descriptor by connecting to the segment name (host:port).
 * Message: 8-byte magic "FERRYHS1", 4-byte little-endian length, JSON body.
 * The request body is {"op":"descriptor"}; further ops can be added by
 * transports (RDMA QP exchange) without changing the framing.
 */
#ifndef FERRY_P2P_H
#define FERRY_P2P_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define P2P_MAGIC "FERRYHS"
#define P2P_VERSION '1'
#define P2P_MAX_BODY (16u << 20)
#define P2P_MAX_REQUEST (64u << 10)   /* what a server reads from a client, at most */
#define P2P_HEAD_SIZE 12              /* magic (7), version (1), body length (4, little-endian) */

#include "acceptor.h"
#include "auth.h"

struct p2p_server;

/* Produces the current descriptor JSON (malloc'd) for a request. */
typedef int (*p2p_describe_fn)(void *ctx, char **json);

struct p2p_server_opts {
    unsigned io_timeout_ms;          /* a whole request (and authentication) must arrive within it */
    struct acceptor_limits limits;
    const struct auth_key *auth;     /* NULL or empty: no authentication; lives as long as the server */
};

/* Listens on host:port (port 0 or taken: a free one) and serves each client
 * on its own thread.  *bound receives the port.  Returns 0 or a FERRY_E* code. */
int p2p_server_start(const char *host, int port, const struct p2p_server_opts *o, p2p_describe_fn fn, void *ctx,
                     struct p2p_server **out, int *bound);
void p2p_server_stop(struct p2p_server *s);

/* Fetches the descriptor of segment `name` ("host:port").  *json is malloc'd
 * (NUL-terminated, caller frees), *len its length.  FERRY_ENOSEG when the name
 * does not resolve or nobody answers, FERRY_EVERSION for another handshake
 * version, FERRY_EPROTO for a malformed answer.  The connect and the whole
 * exchange share one deadline, timeout_ms from the call. */
int p2p_fetch(const char *name, unsigned timeout_ms, char **json, size_t *len);
/* The same, authenticating first when auth has a key.  FERRY_EPERM when the
 * peer wants a key this engine lacks, or the keys differ (detail names it). */
int p2p_fetch_auth(const char *name, unsigned timeout_ms, const struct auth_key *auth, char **json, size_t *len);

/* ---- the decoders of what a peer sends (tests/fuzz/fuzz_p2p.c) */

/* A message's head: the magic, this version, a body of at most max bytes
 * (*len).  0, FERRY_EPROTO or FERRY_EVERSION (the detail shows the peer's
 * version byte as a number). */
int p2p_decode_head(const uint8_t head[P2P_HEAD_SIZE], uint32_t max, uint32_t *len);
/* Server: is a request body exactly {"op":"descriptor"} (the one op
 * answered; another member or bytes after the object: no)? */
bool p2p_request_is_descriptor(const char *req, size_t len);
/* Client: a server's answer of len bytes is either a descriptor (0: the
 * descriptor decoder judges it) or {"error":text,"code":n}: FERRY_EPERM or
 * FERRY_EBUSY when the server said so, else FERRY_EPROTO; the detail names
 * segment `name` and quotes the text sanitized. */
int p2p_decode_answer(const char *name, const char *json, size_t len);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * p2p.c — handshake server and client (see p2p.h).
 *
 * The server serves each connection on its own thread (common/acceptor.c:
 * caps per peer and in total), answers one request per connection under one
 * deadline for the whole request, and closes: a client that drips its
 * request slowly holds only its own connection, never other fetches.
 * Garbage, wrong magic or an oversized body only cost that one connection.
 * With a key, a client must authenticate (common/auth.c) before it asks.
 */
#include "p2p.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "acceptor.h"
#include "auth.h"
#include "bytes.h"
#include "err.h"
#include "log.h"
#include "net.h"

struct p2p_server {
    int fd;
    unsigned timeout_ms;
    const struct auth_key *auth;
    p2p_describe_fn describe;
    void *ctx;
    struct acceptor *acceptor;
};

static int send_message(int fd, const char *body, size_t len, uint64_t deadline_ns)
{
    uint8_t head[P2P_HEAD_SIZE];
    memcpy(head, P2P_MAGIC, 7);
    head[7] = P2P_VERSION;
    for (int i = 0; i < 4; i++)
        head[8 + i] = (uint8_t)(len >> (8 * i));
    struct iovec iov[2] = {{head, sizeof head}, {(void *)body, len}};
    return net_writev_full_deadline(fd, iov, 2, deadline_ns);
}

int p2p_decode_head(const uint8_t head[P2P_HEAD_SIZE], uint32_t max, uint32_t *len)
{
    if (memcmp(head, P2P_MAGIC, 7) != 0)
        return ferry_fail(FERRY_EPROTO, "handshake: bad magic");
    if (head[7] != P2P_VERSION) /* the peer's byte, as a number: a raw one could be a control character */
        return ferry_fail(FERRY_EVERSION, "handshake version byte 0x%02x, this build speaks '%c'", head[7],
                          P2P_VERSION);
    uint32_t n = get_le32(head + 8);
    if (n > max)
        return ferry_fail(FERRY_EPROTO, "handshake: body of %u bytes is over the limit of %u", n, max);
    *len = n;
    return 0;
}

/* Reads the rest of one message whose first `have` header bytes are in head;
 * *body is malloc'd and NUL-terminated.  The whole message must arrive
 * before the deadline. */
static int recv_message_rest(int fd, uint8_t head[P2P_HEAD_SIZE], size_t have, uint32_t max, uint64_t deadline_ns,
                             char **body, size_t *len)
{
    int rc = net_read_full_deadline(fd, head + have, P2P_HEAD_SIZE - have, deadline_ns);
    uint32_t n = 0;
    if (rc || (rc = p2p_decode_head(head, max, &n)))
        return rc;
    char *b = malloc((size_t)n + 1);
    if (!b)
        return ferry_fail(FERRY_ENOMEM, "handshake body");
    if ((rc = net_read_full_deadline(fd, b, n, deadline_ns))) {
        free(b);
        return rc;
    }
    b[n] = '\0';
    *body = b;
    *len = n;
    return 0;
}

bool p2p_request_is_descriptor(const char *req, size_t len)
{
    /* strict: the one object a client writes, {"op":"descriptor"}, nothing
     * after it and no other member (a later op is a new request, refused
     * here by name) */
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(req, len, &end, 0);
    const cJSON *op = cJSON_GetObjectItemCaseSensitive(j, "op");
    bool yes = cJSON_IsObject(j) && cJSON_GetArraySize(j) == 1 && cJSON_IsString(op) &&
               strcmp(op->valuestring, "descriptor") == 0 && end == req + len;
    cJSON_Delete(j);
    return yes;
}

static void send_error(int fd, int code, const char *text, uint64_t deadline_ns)
{
    char msg[256];
    snprintf(msg, sizeof msg, "{\"error\":\"%s\",\"code\":%d}", text, code);
    send_message(fd, msg, strlen(msg), deadline_ns);
}

/* One connection, on its own thread: [authentication,] one request, one
 * answer.  The authentication, the request and the answer all within one
 * timeout from the accept, however the peer slices them. */
static void serve(void *arg, struct acceptor_conn *c)
{
    struct p2p_server *s = arg;
    uint64_t deadline = net_deadline(s->timeout_ms);
    uint8_t head[P2P_HEAD_SIZE];
    char *req = NULL, *reply = NULL;
    size_t len;
    bool authenticated = false;
    int rc = net_read_full_deadline(c->fd, head, AUTH_PREFIX, deadline);
    if (!rc && auth_is_hello(head)) {
        if ((rc = auth_server(c->fd, s->auth, AUTH_HANDSHAKE, head, c->peer, deadline, NULL))) {
            LOG_WARN("%s", ferry_last_error());
            return;
        }
        authenticated = true;
        /* the same deadline: one covers the authentication, the request and
         * the answer, so a peer that authenticates and then drips its
         * request holds this thread no longer than one that drips from the
         * start */
        rc = net_read_full_deadline(c->fd, head, AUTH_PREFIX, deadline);
    }
    if (!rc)
        rc = recv_message_rest(c->fd, head, AUTH_PREFIX, P2P_MAX_REQUEST, deadline, &req, &len);
    if (rc) {
        LOG_INFO("handshake: dropped a connection from %s: %s", c->peer, ferry_last_error());
        return;
    }
    if (!acceptor_conn_claim(c)) /* a whole request: it is answered now, unless evicted already */
        return;
    if (auth_enabled(s->auth) && !authenticated) {
        LOG_WARN("handshake: refused a descriptor request from %s: it did not authenticate", c->peer);
        send_error(c->fd, FERRY_EPERM, "authentication required: this engine has FERRY_AUTH_KEY set", deadline);
        free(req);
        return;
    }
    if (!p2p_request_is_descriptor(req, len))
        send_error(c->fd, FERRY_EPROTO, "unknown or malformed request", deadline);
    else if ((rc = s->describe(s->ctx, &reply)) != 0)
        send_error(c->fd, rc == FERRY_EBUSY ? FERRY_EBUSY : FERRY_EIO, "cannot describe this engine now", deadline);
    else
        send_message(c->fd, reply, strlen(reply), deadline);
    free(req);
    free(reply);
}

int p2p_server_start(const char *host, int port, const struct p2p_server_opts *o, p2p_describe_fn fn, void *ctx,
                     struct p2p_server **out, int *bound)
{
    struct p2p_server *s = calloc(1, sizeof *s);
    if (!s)
        return ferry_fail(FERRY_ENOMEM, "handshake server");
    s->timeout_ms = o->io_timeout_ms;
    s->auth = o->auth;
    s->describe = fn;
    s->ctx = ctx;
    s->fd = net_listen(host, port, o->io_timeout_ms, bound);
    if (s->fd < 0) {
        int rc = s->fd;
        free(s);
        return rc;
    }
    int rc = acceptor_start(s->fd, "handshake", &o->limits, serve, s, &s->acceptor);
    if (rc) {
        close(s->fd);
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void p2p_server_stop(struct p2p_server *s)
{
    if (!s)
        return;
    acceptor_stop(s->acceptor);
    close(s->fd);
    free(s);
}

/* An {"error":..., "code":...} answer instead of a descriptor: only codes a
 * server sends are believed; anything else is the peer's malformed answer. */
int p2p_decode_answer(const char *name, const char *json, size_t len)
{
    cJSON *j = cJSON_ParseWithLength(json, len);
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(j, "code");
    if (!cJSON_IsString(err)) {
        cJSON_Delete(j);
        return 0;
    }
    char text[160];
    log_sanitize(err->valuestring, strlen(err->valuestring), text, sizeof text);
    int c = cJSON_IsNumber(code) ? code->valueint : FERRY_EPROTO; /* valueint saturates; a cast of 1e300 is undefined */
    if (c != FERRY_EPERM && c != FERRY_EBUSY)
        c = FERRY_EPROTO;
    cJSON_Delete(j);
    if (c == FERRY_EPERM)
        return ferry_fail(c, "segment %s refused the descriptor: %s (set the same FERRY_AUTH_KEY on both)", name,
                          text);
    return ferry_fail(c, "segment %s answered: %s", name, text);
}

int p2p_fetch(const char *name, unsigned timeout_ms, char **json, size_t *len)
{
    return p2p_fetch_auth(name, timeout_ms, NULL, json, len);
}

int p2p_fetch_auth(const char *name, unsigned timeout_ms, const struct auth_key *auth, char **json, size_t *len)
{
    char host[128], shown[160];
    int port;
    int rc = net_split_hostport(name, host, sizeof host, &port);
    name = log_sanitize(name, strlen(name), shown, sizeof shown); /* from here on, only in messages */
    if (rc || port == 0)
        return ferry_fail(FERRY_ENOSEG, "segment name \"%s\" is not host:port", name);
    uint64_t deadline = net_deadline(timeout_ms); /* one for the connect and the exchange */
    int fd = net_connect_deadline(host, port, deadline);
    if (fd < 0)
        return ferry_fail(FERRY_ENOSEG, "segment %s: %s", name, ferry_last_error());
    if (auth_enabled(auth) && (rc = auth_client(fd, auth, AUTH_HANDSHAKE, name, deadline, NULL))) {
        close(fd);
        return rc;
    }
    const char *req = "{\"op\":\"descriptor\"}";
    uint8_t head[P2P_HEAD_SIZE];
    rc = send_message(fd, req, strlen(req), deadline);
    if (!rc)
        rc = recv_message_rest(fd, head, 0, P2P_MAX_BODY, deadline, json, len);
    close(fd);
    if (rc == FERRY_ECONN || rc == FERRY_ETIMEDOUT)
        return ferry_fail(FERRY_ENOSEG, "segment %s: handshake failed: %s", name, ferry_last_error());
    if (rc)
        return ferry_fail(rc, "segment %s: %s", name, ferry_last_error());
    if ((rc = p2p_decode_answer(name, *json, *len))) {
        free(*json);
        *json = NULL;
        return rc;
    }
    return 0;
}

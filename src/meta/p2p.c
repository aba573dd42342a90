/*
 * p2p.c — handshake server and client (see p2p.h).
 *
 * The server is one thread: it accepts, answers one request per connection
 * with a read deadline, and closes.  Garbage, wrong magic or an oversized body
 * only cost that one connection.
 */
#include "p2p.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "net.h"

struct p2p_server {
    int fd;
    unsigned timeout_ms;
    p2p_describe_fn describe;
    void *ctx;
    pthread_t thread;
    atomic_bool stopping;
};

static int send_message(int fd, const char *body, size_t len)
{
    uint8_t head[12];
    memcpy(head, P2P_MAGIC, 7);
    head[7] = P2P_VERSION;
    for (int i = 0; i < 4; i++)
        head[8 + i] = (uint8_t)(len >> (8 * i));
    struct iovec iov[2] = {{head, sizeof head}, {(void *)body, len}};
    return net_writev_full(fd, iov, 2);
}

/* Reads one message; *body is malloc'd and NUL-terminated. */
static int recv_message(int fd, char **body, size_t *len)
{
    uint8_t head[12];
    int rc = net_read_full(fd, head, sizeof head);
    if (rc)
        return rc;
    if (memcmp(head, P2P_MAGIC, 7) != 0)
        return ferry_fail(FERRY_EPROTO, "handshake: bad magic");
    if (head[7] != P2P_VERSION)
        return ferry_fail(FERRY_EVERSION, "handshake version '%c', this build speaks '%c'", head[7],
                          P2P_VERSION);
    uint32_t n = (uint32_t)head[8] | (uint32_t)head[9] << 8 | (uint32_t)head[10] << 16 |
                 (uint32_t)head[11] << 24;
    if (n > P2P_MAX_BODY)
        return ferry_fail(FERRY_EPROTO, "handshake: body of %u bytes is over the limit", n);
    char *b = malloc((size_t)n + 1);
    if (!b)
        return ferry_fail(FERRY_ENOMEM, "handshake body");
    if ((rc = net_read_full(fd, b, n))) {
        free(b);
        return rc;
    }
    b[n] = '\0';
    *body = b;
    *len = n;
    return 0;
}

static void answer(struct p2p_server *s, int fd)
{
    char *req = NULL, *reply = NULL;
    size_t len;
    net_set_timeouts(fd, s->timeout_ms, s->timeout_ms);
    int rc = recv_message(fd, &req, &len);
    if (rc) {
        LOG_INFO("handshake: dropped a connection: %s", ferry_last_error());
        return;
    }
    cJSON *j = cJSON_ParseWithLength(req, len);
    const cJSON *op = cJSON_GetObjectItemCaseSensitive(j, "op");
    if (cJSON_IsString(op) && strcmp(op->valuestring, "descriptor") == 0 && s->describe(s->ctx, &reply) == 0) {
        send_message(fd, reply, strlen(reply));
    } else {
        const char *err = "{\"error\":\"unknown or malformed request\"}";
        send_message(fd, err, strlen(err));
    }
    cJSON_Delete(j);
    free(req);
    free(reply);
}

static void *server_main(void *arg)
{
    struct p2p_server *s = arg;
    while (!atomic_load(&s->stopping)) {
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        int fd = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        answer(s, fd);
        close(fd);
    }
    return NULL;
}

int p2p_server_start(const char *host, int port, unsigned io_timeout_ms, p2p_describe_fn fn, void *ctx,
                     struct p2p_server **out, int *bound)
{
    struct p2p_server *s = calloc(1, sizeof *s);
    if (!s)
        return ferry_fail(FERRY_ENOMEM, "handshake server");
    s->timeout_ms = io_timeout_ms;
    s->describe = fn;
    s->ctx = ctx;
    s->fd = net_listen(host, port, bound);
    if (s->fd < 0) {
        int rc = s->fd;
        free(s);
        return rc;
    }
    if (pthread_create(&s->thread, NULL, server_main, s)) {
        close(s->fd);
        free(s);
        return ferry_fail(FERRY_EIO, "handshake: cannot start thread");
    }
    *out = s;
    return 0;
}

void p2p_server_stop(struct p2p_server *s)
{
    if (!s)
        return;
    atomic_store(&s->stopping, true);
    pthread_join(s->thread, NULL);
    close(s->fd);
    free(s);
}

int p2p_fetch(const char *name, unsigned timeout_ms, char **json, size_t *len)
{
    char host[128];
    int port;
    int rc = net_split_hostport(name, host, sizeof host, &port);
    if (rc || port == 0)
        return ferry_fail(FERRY_ENOSEG, "segment name \"%s\" is not host:port", name);
    int fd = net_connect(host, port, timeout_ms);
    if (fd < 0)
        return ferry_fail(FERRY_ENOSEG, "segment %s: %s", name, ferry_last_error());
    net_set_timeouts(fd, timeout_ms, timeout_ms);
    const char *req = "{\"op\":\"descriptor\"}";
    rc = send_message(fd, req, strlen(req));
    if (!rc)
        rc = recv_message(fd, json, len);
    close(fd);
    if (rc == FERRY_ECONN || rc == FERRY_ETIMEDOUT)
        return ferry_fail(FERRY_ENOSEG, "segment %s: handshake failed: %s", name, ferry_last_error());
    if (rc)
        return ferry_fail(rc, "segment %s: %s", name, ferry_last_error());
    return 0;
}

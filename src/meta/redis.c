/* SPDX-License-Identifier: Apache-2.0 */
/*
 * redis.c — segment descriptors in Redis (metadata_server "redis://host:port[/db]").
 *
 * A descriptor is one string key, prefix+name, written with SET ... EX ttl.
 * A keepalive thread SETs every published descriptor again each ttl/3 s:
 * that renews the TTL and also re-populates a server that restarted empty.
 * A killed engine stops renewing, and its key expires within the TTL.
 *
 * Threads: one hiredis context (hiredis 0.14, blocking API), which is not
 * thread-safe, so the keepalive's lock (keepalive.c) guards it and every
 * command, lookups included.  A command that fails
 * on I/O drops the context; the next command reconnects (once per call, so a
 * dead server costs one refused connect, bounded by the timeout).
 */
#ifdef FERRY_HAVE_REDIS

#include <errno.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "meta/descriptor.h"
#include "meta/keepalive.h"
#include "meta/meta.h"
#include "meta/redis_reply.h"
#include "net.h"

#define REDIS_SCHEME "redis://"
#define REDIS_DEFAULT_PORT 6379

struct redis_meta {
    char url[256];
    char host[128];
    int port;
    long db;
    char prefix[256];
    unsigned ttl_s;
    unsigned timeout_ms;        /* one command, reply included */
    struct timeval timeout;     /* each socket call (the connect: what is left of the command's timeout_ms) */

    struct keepalive ka;        /* published descriptors; its lock guards `c` */
    redisContext *c;            /* NULL while disconnected */
};

/* Parses "redis://host[:port][/db]".  Returns 0 or FERRY_EINVAL naming the URL. */
static int parse_url(struct redis_meta *m, const char *url)
{
    if (strncmp(url, REDIS_SCHEME, strlen(REDIS_SCHEME)) != 0 || strlen(url) >= sizeof m->url)
        return ferry_fail(FERRY_EINVAL, "metadata_server \"%.200s\": not redis://host:port[/db]", url);
    snprintf(m->url, sizeof m->url, "%s", url);
    char hostport[sizeof m->url];
    snprintf(hostport, sizeof hostport, "%s", url + strlen(REDIS_SCHEME));
    const char *why = NULL;
    char *slash = strchr(hostport, '/');
    if (slash) {
        *slash = '\0';
        char *end;
        m->db = strtol(slash + 1, &end, 10);
        if (slash[1] && (*end || end == slash + 1 || m->db < 0 || m->db > 1000000))
            why = "the database after '/' is not a number";
    }
    int port = 0;
    if (why)
        ;
    else if (strchr(hostport, '@'))
        why = "credentials in the URL are not supported";
    else if (strchr(hostport, ','))
        why = "Redis takes one endpoint";
    else if (!*hostport)
        why = "no host";
    else if (strspn(hostport, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:") !=
             strlen(hostport))
        why = "a character that is not allowed in host:port";
    else if (net_split_hostport(hostport, m->host, sizeof m->host, &port) != 0)
        why = "not host:port";
    else if (strchr(hostport, ':') && port == 0)
        why = "port 0";
    if (why)
        return ferry_fail(FERRY_EINVAL, "metadata_server \"%s\": %s (expected redis://host:port[/db])", m->url, why);
    m->port = port ? port : REDIS_DEFAULT_PORT;
    return 0;
}

/* ------------------------------------------------------------ commands (lock held) */

/* The most bytes one reply may take: a descriptor and Redis's framing.  A
 * server that sends more is refused, not buffered. */
#define REDIS_REPLY_MAX ((size_t)DESC_MAX_BYTES + 4096)

/* Waits until fd is ready for events, or FERRY_ETIMEDOUT at deadline_ns. */
static int wait_ready(const struct redis_meta *m, int fd, short events, uint64_t deadline_ns)
{
    for (;;) {
        uint64_t now = now_ns();
        if (now >= deadline_ns)
            return ferry_fail(FERRY_ETIMEDOUT, "%s: no whole reply within %u ms", m->url, m->timeout_ms);
        struct pollfd p = {fd, events, 0};
        int n = poll(&p, 1, (int)((deadline_ns - now + 999999) / 1000000));
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return ferry_fail(FERRY_ECONN, "%s: poll: %s", m->url, strerror(errno));
    }
}

/* Sends the command appended to c's output buffer and reads its one reply,
 * the whole exchange before deadline_ns however the server slices it (the
 * socket's timeout alone bounds each read, not the reply).  Refuses, with
 * FERRY_EPROTO, a reply of a type no command of ours is answered with (an
 * array: hiredis would first allocate the element count the server
 * announces), one over REDIS_REPLY_MAX bytes and one that is malformed.
 * Returns 0 with *out (the caller frees it), FERRY_ETIMEDOUT, or FERRY_ECONN
 * with *closed set when the server had closed the connection before
 * answering. */
static int exchange(const struct redis_meta *m, redisContext *c, uint64_t deadline_ns, redisReply **out,
                    bool *closed)
{
    int done = 0, rc;
    *closed = false;
    while (!done) {
        if ((rc = wait_ready(m, c->fd, POLLOUT, deadline_ns)))
            return rc;
        if (redisBufferWrite(c, &done) != REDIS_OK) {
            *closed = errno == EPIPE || errno == ECONNRESET;
            return ferry_fail(FERRY_ECONN, "%s: %s", m->url, c->errstr[0] ? c->errstr : "write failed");
        }
    }
    size_t got = 0;
    void *reply = NULL;
    while (!reply) {
        char buf[16384];
        if ((rc = wait_ready(m, c->fd, POLLIN, deadline_ns)))
            return rc;
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) {
            *closed = got == 0 && (n == 0 || errno == ECONNRESET);
            return ferry_fail(FERRY_ECONN, "%s: %s", m->url,
                              n == 0 ? "the server closed the connection" : strerror(errno));
        }
        if ((rc = redis_reply_feed(m->url, c->reader, &got, buf, (size_t)n, &reply)))
            return rc;
    }
    *out = reply;
    return 0;
}

int redis_reply_feed(const char *url, redisReader *rd, size_t *got, const char *buf, size_t n, void **reply)
{
    char text[120];
    *reply = NULL;
    if (n == 0)
        return 0;
    if (*got == 0 && (!buf[0] || !strchr("+-:$", buf[0]))) /* strchr finds a NUL too */
        return ferry_fail(FERRY_EPROTO, "%s: answered with RESP type 0x%02x, which none of ferry's commands "
                          "has", url, (unsigned char)buf[0]);
    *got += n;
    if (*got > REDIS_REPLY_MAX)
        return ferry_fail(FERRY_EPROTO, "%s: a reply of more than %zu bytes", url, REDIS_REPLY_MAX);
    if (redisReaderFeed(rd, buf, n) != REDIS_OK || redisReaderGetReply(rd, reply) != REDIS_OK) {
        *reply = NULL;
        return ferry_fail(FERRY_EPROTO, "%s: malformed reply: %s", url,
                          log_sanitize(rd->errstr, sizeof rd->errstr, text, sizeof text));
    }
    if (*reply && rd->pos < rd->len) { /* more than the one reply: the next command would read it */
        freeReplyObject(*reply);
        *reply = NULL;
        return ferry_fail(FERRY_EPROTO, "%s: answered one command with more than one reply", url);
    }
    return 0;
}

int redis_reply_expect(const char *url, const char *command, const redisReply *r, int type, const char *status)
{
    char text[120];
    if (r->type == type && (!status || (r->len == strlen(status) && memcmp(r->str, status, r->len) == 0)))
        return 0;
    const char *kind = r->type == REDIS_REPLY_STRING   ? "the bulk string"
                       : r->type == REDIS_REPLY_STATUS  ? "the status"
                       : r->type == REDIS_REPLY_ERROR   ? "the error"
                       : r->type == REDIS_REPLY_INTEGER ? "an integer"
                       : r->type == REDIS_REPLY_NIL     ? "nil"
                                                        : "another type";
    bool has_text = r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS || r->type == REDIS_REPLY_ERROR;
    return ferry_fail(FERRY_EPROTO, "%s: %s was answered with %s%s%s%s, which Redis never answers it with", url,
                      command, kind, has_text ? " \"" : "", has_text ? log_sanitize(r->str, r->len, text, sizeof text) : "",
                      has_text ? "\"" : "");
}

int redis_reply_get(const redisReply *r, const char *name, char **json, size_t *len)
{
    char text[200];
    if (r->type == REDIS_REPLY_NIL)
        return ferry_fail(FERRY_ENOSEG, "segment %s is not published", name);
    if (r->type == REDIS_REPLY_ERROR && (r->len < 9 || memcmp(r->str, "WRONGTYPE", 9) != 0))
        return ferry_fail(FERRY_ENOSEG, "segment %s: lookup failed: Redis answered: %s", name,
                          log_sanitize(r->str, r->len, text, sizeof text));
    if (r->type != REDIS_REPLY_STRING) /* WRONGTYPE: someone else's key */
        return ferry_fail(FERRY_EPROTO, "segment %s: its Redis key is not a string", name);
    if (!(*json = malloc(r->len + 1)))
        return ferry_fail(FERRY_ENOMEM, "segment %s: %zu bytes", name, (size_t)r->len);
    memcpy(*json, r->str, r->len);
    (*json)[r->len] = '\0';
    *len = r->len;
    return 0;
}

/* Appends a command to c and runs it (exchange). */
static int run_vcommand(const struct redis_meta *m, redisContext *c, uint64_t deadline_ns, redisReply **out,
                        bool *closed, const char *fmt, va_list ap)
{
    *closed = false;
    if (redisvAppendCommand(c, fmt, ap) != REDIS_OK)
        return ferry_fail(FERRY_ENOMEM, "%s: cannot format a command", m->url);
    return exchange(m, c, deadline_ns, out, closed);
}

static int run_command(const struct redis_meta *m, redisContext *c, uint64_t deadline_ns, redisReply **out,
                       bool *closed, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = run_vcommand(m, c, deadline_ns, out, closed, fmt, ap);
    va_end(ap);
    return rc;
}

/* An error reply's text, made safe to log (the server chose it). */
static const char *said(const redisReply *r, char *text, size_t cap)
{
    return log_sanitize(r->str, r->len, text, cap);
}

static int connect_locked(struct redis_meta *m, uint64_t deadline_ns)
{
    char text[200];
    if (m->c)
        return 0;
    /* connected here, not by hiredis, whose socket is not close-on-exec */
    int fd = net_connect_deadline(m->host, m->port, deadline_ns); /* what is left of the command's time */
    if (fd < 0)
        return ferry_fail(FERRY_ECONN, "%s: cannot connect: %s", m->url, ferry_last_error());
    redisContext *c = redisConnectFd(fd);
    if (!c) {
        close(fd);
        return ferry_fail(FERRY_ENOMEM, "%s: a hiredis context", m->url);
    }
    redisSetTimeout(c, m->timeout);
    if (m->db) {
        redisReply *r = NULL;
        bool closed;
        int rc = run_command(m, c, deadline_ns, &r, &closed, "SELECT %ld", m->db);
        if (!rc && r->type == REDIS_REPLY_ERROR)
            rc = ferry_fail(FERRY_EINVAL, "%s: SELECT %ld failed: %s", m->url, m->db, said(r, text, sizeof text));
        else if (!rc)
            rc = redis_reply_expect(m->url, "SELECT", r, REDIS_REPLY_STATUS, "OK");
        else if (rc)
            rc = ferry_fail(rc, "%s: SELECT %ld failed: %s", m->url, m->db, ferry_last_error());
        if (r)
            freeReplyObject(r);
        if (rc) {
            redisFree(c);
            return rc;
        }
    }
    m->c = c;
    return 0;
}

/* Runs one command, the whole of it within the timeout.  When a connection
 * made by an earlier call turns out to be closed (the server restarted),
 * drops it and tries once more on a new one; a timeout is not retried.
 * Returns the reply (the caller frees it), with *rc = 0, or FERRY_EIO for an
 * error reply; or NULL with *rc = FERRY_ECONN, FERRY_ETIMEDOUT or
 * FERRY_EPROTO (a reply no Redis sends). */
static redisReply *command_locked(struct redis_meta *m, int *rc, const char *fmt, ...)
{
    char text[200];
    redisReply *r = NULL;
    bool retry = m->c != NULL;
    uint64_t deadline = net_deadline(m->timeout_ms);
    for (int attempt = 0; attempt < 2 && !r; attempt++) {
        if ((*rc = connect_locked(m, deadline)) != 0)
            return NULL;
        va_list ap;
        va_start(ap, fmt);
        bool closed;
        *rc = run_vcommand(m, m->c, deadline, &r, &closed, fmt, ap);
        va_end(ap);
        if (*rc) {
            redisFree(m->c); /* a reply cut short or refused leaves the connection out of step */
            m->c = NULL;
            if (!retry || !closed)
                break;
            retry = false;
        }
    }
    if (r)
        *rc = r->type == REDIS_REPLY_ERROR
                  ? ferry_fail(FERRY_EIO, "%s: Redis answered: %s", m->url, said(r, text, sizeof text))
                  : 0;
    return r;
}

/* keepalive put: SET with the TTL (every round: that renews it, and covers a
 * server that restarted empty). */
static int key_set(void *store, const char *name, const char *json)
{
    struct redis_meta *m = store;
    int rc;
    redisReply *r = command_locked(m, &rc, "SET %s%s %b EX %u", m->prefix, name, json, strlen(json), m->ttl_s);
    if (r && !rc)
        rc = redis_reply_expect(m->url, "SET", r, REDIS_REPLY_STATUS, "OK");
    if (r)
        freeReplyObject(r);
    return rc;
}

static int key_del(void *store, const char *name, size_t remaining)
{
    struct redis_meta *m = store;
    (void)remaining;
    int rc;
    redisReply *r = command_locked(m, &rc, "DEL %s%s", m->prefix, name);
    if (r && !rc)
        rc = redis_reply_expect(m->url, "DEL", r, REDIS_REPLY_INTEGER, NULL);
    if (r)
        freeReplyObject(r);
    return rc;
}

static const struct keepalive_ops redis_keepalive = {.put = key_set, .del = key_del};

/* ------------------------------------------------------------ ops */

static void redis_destroy(void *mp)
{
    struct redis_meta *m = mp;
    if (!m)
        return;
    keepalive_stop(&m->ka);
    redisFree(m->c);
    free(m);
}

static int redis_create(const char *url, const char *prefix, unsigned ttl_s, unsigned timeout_ms, void **out)
{
    struct redis_meta *m = calloc(1, sizeof *m);
    if (!m)
        return ferry_fail(FERRY_ENOMEM, "redis metadata");
    int rc = parse_url(m, url);
    if (!rc && (!prefix || strlen(prefix) >= sizeof m->prefix))
        rc = ferry_fail(FERRY_EINVAL, "metadata_prefix is missing or longer than %zu", sizeof m->prefix - 1);
    if (!rc && ttl_s == 0)
        rc = ferry_fail(FERRY_EINVAL, "%s: metadata_ttl_s must be at least 1", m->url);
    if (!rc) {
        snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
        m->ttl_s = ttl_s;
        timeout_ms = timeout_ms ? timeout_ms : 5000;
        m->timeout_ms = timeout_ms;
        m->timeout.tv_sec = timeout_ms / 1000;
        m->timeout.tv_usec = (long)(timeout_ms % 1000) * 1000;
        redisReply *r = command_locked(m, &rc, "PING"); /* no other thread yet */
        if (r && !rc)
            rc = redis_reply_expect(m->url, "PING", r, REDIS_REPLY_STATUS, "PONG");
        if (r)
            freeReplyObject(r);
        if (rc)
            rc = ferry_fail(rc, "cannot use the metadata server: %s", ferry_last_error());
    }
    if (!rc)
        rc = keepalive_start(&m->ka, m->url, m->ttl_s * 1000 / 3, &redis_keepalive, m);
    if (rc) {
        redis_destroy(m);
        return rc;
    }
    *out = m;
    return 0;
}

static int redis_publish(void *mp, const char *name, const char *json)
{
    return keepalive_publish(&((struct redis_meta *)mp)->ka, name, json);
}

static int redis_unpublish(void *mp, const char *name)
{
    return keepalive_unpublish(&((struct redis_meta *)mp)->ka, name);
}

struct get_call {
    const char *name;
    redisReply *reply;
};

static int get_locked(void *store, void *arg)
{
    struct redis_meta *m = store;
    struct get_call *g = arg;
    int rc;
    g->reply = command_locked(m, &rc, "GET %s%s", m->prefix, g->name);
    return rc;
}

static int redis_lookup(void *mp, const char *name, char **json, size_t *len)
{
    struct redis_meta *m = mp;
    struct get_call g = {.name = name};
    int rc = keepalive_locked(&m->ka, get_locked, &g);
    redisReply *r = g.reply;
    if (!r) {
        /* unreachable or silent: absent for now; a reply no Redis sends: the store is not one */
        return ferry_fail(rc == FERRY_EPROTO ? FERRY_EPROTO : FERRY_ENOSEG, "segment %s: lookup failed: %s", name,
                          ferry_last_error());
    }
    rc = redis_reply_get(r, name, json, len);
    if (rc == FERRY_ENOSEG && r->type == REDIS_REPLY_NIL)
        rc = ferry_fail(FERRY_ENOSEG, "segment %s is not published in %s (key \"%s%s\")", name, m->url, m->prefix,
                        name);
    else if (rc == FERRY_EPROTO)
        rc = ferry_fail(FERRY_EPROTO, "segment %s: Redis key \"%s%s\" is not a string", name, m->prefix, name);
    freeReplyObject(r);
    return rc;
}

static void redis_where(void *mp, const char *name, char *out, size_t cap)
{
    const struct redis_meta *m = mp;
    snprintf(out, cap, "%s key \"%s%s\"", m->url, m->prefix, name);
}

const struct meta_ops ferry_meta_redis = {
    .scheme = REDIS_SCHEME,
    .create = redis_create,
    .destroy = redis_destroy,
    .publish = redis_publish,
    .unpublish = redis_unpublish,
    .lookup = redis_lookup,
    .where = redis_where,
};

#else
typedef int ferry_redis_not_built; /* ISO C wants a declaration in every file */
#endif /* FERRY_HAVE_REDIS */

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
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "err.h"
#include "log.h"
#include "meta/keepalive.h"
#include "meta/meta.h"
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
    struct timeval timeout;

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

static int connect_locked(struct redis_meta *m)
{
    if (m->c)
        return 0;
    redisContext *c = redisConnectWithTimeout(m->host, m->port, m->timeout);
    if (!c || c->err) {
        int rc = ferry_fail(FERRY_ECONN, "%s: cannot connect: %s", m->url, c ? c->errstr : "out of memory");
        redisFree(c);
        return rc;
    }
    redisSetTimeout(c, m->timeout);
    if (m->db) {
        redisReply *r = redisCommand(c, "SELECT %ld", m->db);
        int bad = !r || r->type == REDIS_REPLY_ERROR;
        int rc = bad ? ferry_fail(r ? FERRY_EINVAL : FERRY_ECONN, "%s: SELECT %ld failed: %s", m->url, m->db,
                                  r ? r->str : c->errstr)
                     : 0;
        if (r)
            freeReplyObject(r);
        if (bad) {
            redisFree(c);
            return rc;
        }
    }
    m->c = c;
    return 0;
}

/* Runs one command.  When a connection made by an earlier call turns out to
 * be closed (the server restarted), drops it and tries once more on a new one;
 * a timeout is not retried, so a call costs at most one timeout.  Returns the reply (the
 * caller frees it), with *rc = 0, or FERRY_EIO for an error reply; or NULL
 * with *rc = FERRY_ECONN. */
static redisReply *command_locked(struct redis_meta *m, int *rc, const char *fmt, ...)
{
    redisReply *r = NULL;
    bool retry = m->c != NULL;
    for (int attempt = 0; attempt < 2 && !r; attempt++) {
        if ((*rc = connect_locked(m)) != 0)
            return NULL;
        va_list ap;
        va_start(ap, fmt);
        r = redisvCommand(m->c, fmt, ap);
        va_end(ap);
        if (!r) {
            int closed = m->c->err == REDIS_ERR_EOF ||
                         (m->c->err == REDIS_ERR_IO && (errno == ECONNRESET || errno == EPIPE));
            *rc = ferry_fail(FERRY_ECONN, "%s: %s", m->url, m->c->errstr[0] ? m->c->errstr : "connection lost");
            redisFree(m->c);
            m->c = NULL;
            if (!retry || !closed)
                break;
            retry = false;
        }
    }
    if (r)
        *rc = r->type == REDIS_REPLY_ERROR ? ferry_fail(FERRY_EIO, "%s: Redis answered: %.200s", m->url, r->str) : 0;
    return r;
}

/* keepalive put: SET with the TTL (every round: that renews it, and covers a
 * server that restarted empty). */
static int key_set(void *store, const char *name, const char *json)
{
    struct redis_meta *m = store;
    int rc;
    redisReply *r = command_locked(m, &rc, "SET %s%s %b EX %u", m->prefix, name, json, strlen(json), m->ttl_s);
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
        m->timeout.tv_sec = timeout_ms / 1000;
        m->timeout.tv_usec = (long)(timeout_ms % 1000) * 1000;
        redisReply *r = command_locked(m, &rc, "PING"); /* no other thread yet */
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
    if (!r || (rc && strncmp(r->str, "WRONGTYPE", 9) != 0)) {
        rc = ferry_fail(FERRY_ENOSEG, "segment %s: lookup failed: %s", name, ferry_last_error());
        if (r)
            freeReplyObject(r);
        return rc;
    }
    if (r->type == REDIS_REPLY_NIL) {
        rc = ferry_fail(FERRY_ENOSEG, "segment %s is not published in %s (key \"%s%s\")", name, m->url, m->prefix,
                        name);
    } else if (r->type != REDIS_REPLY_STRING) { /* WRONGTYPE: someone else's key */
        rc = ferry_fail(FERRY_EPROTO, "segment %s: Redis key \"%s%s\" is not a string", name, m->prefix, name);
    } else if (!(*json = malloc(r->len + 1))) {
        rc = ferry_fail(FERRY_ENOMEM, "segment %s: %zu bytes", name, (size_t)r->len);
    } else {
        memcpy(*json, r->str, r->len);
        (*json)[r->len] = '\0';
        *len = r->len;
    }
    freeReplyObject(r);
    return rc;
}

const struct meta_ops ferry_meta_redis = {
    .scheme = REDIS_SCHEME,
    .create = redis_create,
    .destroy = redis_destroy,
    .publish = redis_publish,
    .unpublish = redis_unpublish,
    .lookup = redis_lookup,
};

#else
typedef int ferry_redis_not_built; /* ISO C wants a declaration in every file */
#endif /* FERRY_HAVE_REDIS */

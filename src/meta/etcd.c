/* SPDX-License-Identifier: Apache-2.0 */
/*
 * etcd.c — segment descriptors in etcd (metadata_server "etcd://h:p[,h:p...]").
 *
 * Speaks etcd's v3 API through its JSON gateway (HTTP POST with libcurl; keys
 * and values travel base64-encoded).  Each backend instance owns one lease;
 * a descriptor is put under prefix+name with that lease, and a keepalive
 * thread renews the lease every ttl/3 s.  When the lease is lost (etcd was
 * down longer than the TTL, or came back empty), the thread grants a new one
 * and puts every descriptor again, so a restarted store is re-populated.
 * Endpoints are tried in order, starting from the last one that answered.
 *
 * Threads: lookups run on the caller's thread with a pooled curl handle and
 * take no lock but the pool's.  publish, unpublish and the keepalive thread
 * (keepalive.c) are serialized by the keepalive's lock, which also guards the
 * lease.
 */
#ifdef FERRY_HAVE_ETCD

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base64.h"
#include "err.h"
#include "log.h"
#include "meta/descriptor.h"
#include "meta/etcd_reply.h"
#include "meta/keepalive.h"
#include "meta/meta.h"
#include "net.h"

#define ETCD_SCHEME "etcd://"
#define ETCD_DEFAULT_PORT 2379
#define ETCD_MAX_ENDPOINTS 16
#define ETCD_POOL_MAX 8
/* a base64 descriptor of DESC_MAX_BYTES plus JSON around it */
#define ETCD_RESPONSE_MAX ((size_t)DESC_MAX_BYTES / 3 * 4 + 65536)

struct endpoint {
    char host[128];
    int port;
};

struct etcd_meta {
    char url[256];
    char prefix[256];
    unsigned ttl_s;
    long timeout_ms;            /* one HTTP call, all included */
    long connect_ms;            /* one endpoint's connect: short, so dead ones are skipped fast */
    size_t nendpoints;
    struct endpoint endpoints[ETCD_MAX_ENDPOINTS];
    atomic_size_t current;      /* the endpoint that answered last */
    struct curl_slist *headers;

    pthread_mutex_t pool_lock;  /* idle curl handles */
    CURL *pool[ETCD_POOL_MAX];
    size_t npool;

    atomic_bool stopping;       /* destroy aborts a call in flight */
    struct keepalive ka;        /* published descriptors; its lock guards `lease` */
    char lease[ETCD_LEASE_MAX]; /* decimal lease ID, "" when none */
};

/* ------------------------------------------------------------ URL */

/* Parses "etcd://h:p[,h:p...]" into m->endpoints.  Returns 0 or FERRY_EINVAL
 * with a message naming the URL. */
static int parse_url(struct etcd_meta *m, const char *url)
{
    if (strncmp(url, ETCD_SCHEME, strlen(ETCD_SCHEME)) != 0 || strlen(url) >= sizeof m->url)
        return ferry_fail(FERRY_EINVAL, "metadata_server \"%.200s\": not etcd://host:port[,host:port...]", url);
    snprintf(m->url, sizeof m->url, "%s", url);
    char list[sizeof m->url];
    snprintf(list, sizeof list, "%s", url + strlen(ETCD_SCHEME));
    const char *why = NULL;
    char *item = list;
    while (!why) {
        char *comma = strchr(item, ',');
        if (comma)
            *comma = '\0';
        struct endpoint *ep = &m->endpoints[m->nendpoints];
        int port = 0;
        if (m->nendpoints == ETCD_MAX_ENDPOINTS)
            why = "too many endpoints";
        else if (!*item)
            why = "an endpoint is empty";
        else if (strspn(item, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]") != strlen(item))
            why = "an endpoint has a character that is not allowed in host:port";
        else if (net_split_hostport(item, ep->host, sizeof ep->host, &port) != 0)
            why = "an endpoint is not host:port";
        else if (strchr(item, ':') && port == 0)
            why = "port 0";
        else {
            ep->port = port ? port : ETCD_DEFAULT_PORT;
            m->nendpoints++;
        }
        if (!comma)
            break;
        item = comma + 1;
    }
    if (why)
        return ferry_fail(FERRY_EINVAL, "metadata_server \"%s\": %s (expected etcd://host:port[,host:port...])",
                          m->url, why);
    return 0;
}

/* ------------------------------------------------------------ HTTP */

struct response {
    char *data;
    size_t len, cap;
};

static size_t on_body(char *ptr, size_t size, size_t n, void *ud)
{
    struct response *r = ud;
    size_t add = size * n;
    if (r->len + add > ETCD_RESPONSE_MAX)
        return 0; /* checked on every call: the doubled capacity may already hold more than the cap */
    if (r->len + add + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + add + 1)
            cap *= 2;
        char *d = realloc(r->data, cap);
        if (!d)
            return 0; /* curl fails with CURLE_WRITE_ERROR */
        r->data = d;
        r->cap = cap;
    }
    memcpy(r->data + r->len, ptr, add);
    r->len += add;
    r->data[r->len] = '\0';
    return add;
}

/* Lets destroy interrupt a call in flight on the keepalive thread. */
static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d)
{
    (void)a, (void)b, (void)c, (void)d;
    struct etcd_meta *m = ud;
    return atomic_load(&m->stopping);
}

static CURL *handle_get(struct etcd_meta *m)
{
    CURL *h = NULL;
    pthread_mutex_lock(&m->pool_lock);
    if (m->npool)
        h = m->pool[--m->npool];
    pthread_mutex_unlock(&m->pool_lock);
    return h ? h : curl_easy_init();
}

static void handle_put(struct etcd_meta *m, CURL *h)
{
    pthread_mutex_lock(&m->pool_lock);
    if (m->npool < ETCD_POOL_MAX) {
        m->pool[m->npool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&m->pool_lock);
    if (h)
        curl_easy_cleanup(h);
}

/* One attempt against one endpoint.  Returns the curl result; on CURLE_OK
 * *status holds the HTTP status and *r the body; CURLE_COULDNT_RESOLVE_HOST
 * with unresolved[] saying why when the endpoint's name had no answer in
 * time (looked up here, not by curl: meta_curl_resolve). */
static CURLcode post_once(struct etcd_meta *m, CURL *h, const struct endpoint *ep, const char *path,
                          const char *body, struct response *r, long *status, char *unresolved, size_t cap)
{
    char url[320], where[144];
    /* an IPv6 host in brackets ("http://[::1]:2379/..."); it fits: hosts are
     * checked at create */
    if (net_format_hostport(where, sizeof where, ep->host, ep->port) != 0)
        snprintf(where, sizeof where, "invalid");
    snprintf(url, sizeof url, "http://%s%s", where, path);
    void *resolved = NULL;
    long t0 = (long)now_ms();
    if (meta_curl_resolve(h, url, (unsigned)m->connect_ms, &resolved) != 0) {
        snprintf(unresolved, cap, "%s", ferry_last_error());
        return CURLE_COULDNT_RESOLVE_HOST;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROXY, "");           /* never through an http_proxy of the environment */
    meta_curl_cloexec(h);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, m->headers);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    long spent = (long)now_ms() - t0; /* the look-up counts in both */
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, m->connect_ms > spent ? m->connect_ms - spent : 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, m->timeout_ms > spent ? m->timeout_ms - spent : 1L);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, m);
    CURLcode rc = curl_easy_perform(h);
    meta_curl_resolve_end(h, resolved);
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    return rc;
}

/* POSTs body to path on the first endpoint that answers, starting with the
 * one that answered last; an endpoint answering 5xx (no leader, shutting
 * down) counts as dead.  On an answer stores etcd's JSON reply in *out (the
 * caller deletes it) and returns 0; on an error reply returns FERRY_EIO, or
 * FERRY_ENOSEG for gRPC NOT_FOUND (an unknown lease), with etcd's message;
 * FERRY_ECONN when no endpoint answers; FERRY_EPROTO for a reply that is not
 * JSON. */
static int etcd_call(struct etcd_meta *m, const char *path, const char *body, cJSON **out)
{
    CURL *h = handle_get(m);
    if (!h)
        return ferry_fail(FERRY_ENOMEM, "%s: curl handle", m->url);
    char why[400] = "";
    size_t whylen = 0;
    size_t start = atomic_load(&m->current);
    for (size_t k = 0; k < m->nendpoints; k++) {
        size_t i = (start + k) % m->nendpoints;
        const struct endpoint *ep = &m->endpoints[i];
        struct response r = {0};
        long status = 0;
        char unresolved[200] = "";
        CURLcode cc = post_once(m, h, ep, path, body, &r, &status, unresolved, sizeof unresolved);
        if (cc == CURLE_OK && status < 500) {
            atomic_store(&m->current, i);
            handle_put(m, h);
            int rc = etcd_reply_parse(ep->host, path, status, r.data, r.len, out);
            free(r.data);
            return rc;
        }
        free(r.data);
        if (whylen < sizeof why) {
            char where[144];
            if (net_format_hostport(where, sizeof where, ep->host, ep->port) != 0)
                snprintf(where, sizeof where, "?");
            whylen += (size_t)snprintf(why + whylen, sizeof why - whylen, "%s%s: %s", whylen ? "; " : "", where,
                                       cc == CURLE_OK ? "answered 5xx"
                                       : *unresolved ? unresolved
                                                     : curl_easy_strerror(cc));
        }
    }
    handle_put(m, h);
    return ferry_fail(FERRY_ECONN, "%s: no endpoint answers (%s)", m->url, why);
}

/* Encodes prefix+name as the base64 etcd key; NULL when out of memory. */
static char *key_of(const struct etcd_meta *m, const char *name)
{
    size_t pl = strlen(m->prefix), nl = strlen(name);
    char *raw = malloc(pl + nl + 1);
    if (!raw)
        return NULL;
    memcpy(raw, m->prefix, pl);
    memcpy(raw + pl, name, nl + 1);
    char *key = base64_encode(raw, pl + nl);
    free(raw);
    return key;
}

/* Like etcd_call, with a body built from a format; the reply is discarded
 * unless out is given. */
static int etcd_callf(struct etcd_meta *m, const char *path, cJSON **out, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int etcd_callf(struct etcd_meta *m, const char *path, cJSON **out, const char *fmt, ...)
{
    va_list ap;
    char *body = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&body, fmt, ap);
    va_end(ap);
    if (n < 0)
        return ferry_fail(FERRY_ENOMEM, "%s: request body", m->url);
    cJSON *j = NULL;
    int rc = etcd_call(m, path, body, &j);
    free(body);
    if (out)
        *out = j;
    else
        cJSON_Delete(j);
    return rc;
}

/* ------------------------------------------------------------ lease and keys (lock held) */

static int lease_grant(struct etcd_meta *m)
{
    cJSON *j;
    int rc = etcd_callf(m, "/v3/lease/grant", &j, "{\"TTL\":%u}", m->ttl_s);
    if (rc)
        return rc;
    rc = etcd_reply_lease_id(j, m->url, m->lease);
    cJSON_Delete(j);
    return rc;
}

/* Returns 0 (renewed), FERRY_ENOSEG (the lease is gone) or a call error. */
static int lease_keepalive(struct etcd_meta *m)
{
    cJSON *j;
    int rc = etcd_callf(m, "/v3/lease/keepalive", &j, "{\"ID\":\"%s\"}", m->lease);
    if (rc)
        return rc;
    rc = etcd_reply_lease_alive(j, m->url, m->lease);
    cJSON_Delete(j);
    return rc;
}

static int key_put(struct etcd_meta *m, const char *name, const char *json)
{
    char *key = key_of(m, name), *value = base64_encode(json, strlen(json));
    int rc = key && value ? etcd_callf(m, "/v3/kv/put", NULL, "{\"key\":\"%s\",\"value\":\"%s\",\"lease\":\"%s\"}",
                                       key, value, m->lease)
                          : ferry_fail(FERRY_ENOMEM, "%s: put %s", m->url, name);
    free(key);
    free(value);
    return rc;
}

/* keepalive put: name under the current lease, granting one first if there
 * is none or the current one turns out to be gone. */
static int put_with_lease(void *store, const char *name, const char *json)
{
    struct etcd_meta *m = store;
    int rc = m->lease[0] ? 0 : lease_grant(m);
    if (!rc && (rc = key_put(m, name, json)) == FERRY_ENOSEG) {
        m->lease[0] = '\0';
        if (!(rc = lease_grant(m)))
            rc = key_put(m, name, json);
    }
    return rc;
}

/* keepalive renew: renews the lease (also while nothing is published, so the
 * first publish finds it alive); when it is gone, forgets it so the next put
 * grants a new one, and reports the descriptors lost. */
static int renew_lease(void *store, size_t published, bool *lost)
{
    struct etcd_meta *m = store;
    if (!published && !m->lease[0])
        return 0;
    int rc = m->lease[0] ? lease_keepalive(m) : FERRY_ENOSEG;
    if (rc == FERRY_ENOSEG) {
        if (m->lease[0] && published)
            LOG_WARN("%s: lease %s was lost; publishing again", m->url, m->lease);
        m->lease[0] = '\0';
        *lost = true;
        rc = 0;
    }
    return rc;
}

/* keepalive del: deletes the key; with nothing left, revokes the lease. */
static int key_delete(void *store, const char *name, size_t remaining)
{
    struct etcd_meta *m = store;
    char *key = key_of(m, name);
    int rc = key ? etcd_callf(m, "/v3/kv/deleterange", NULL, "{\"key\":\"%s\"}", key)
                 : ferry_fail(FERRY_ENOMEM, "unpublish %s", name);
    free(key);
    if (!remaining && m->lease[0] && rc != FERRY_ECONN) { /* unreachable: the lease expires by itself */
        int rrc = etcd_callf(m, "/v3/lease/revoke", NULL, "{\"ID\":\"%s\"}", m->lease);
        if (rrc && rrc != FERRY_ENOSEG && !rc)
            rc = rrc;
        m->lease[0] = '\0';
    }
    return rc;
}

static const struct keepalive_ops etcd_keepalive = {
    .put = put_with_lease,
    .del = key_delete,
    .renew = renew_lease,
};

/* ------------------------------------------------------------ ops */

static void etcd_destroy(void *mp)
{
    struct etcd_meta *m = mp;
    if (!m)
        return;
    atomic_store(&m->stopping, true); /* also aborts a call in flight (on_progress) */
    keepalive_stop(&m->ka);
    for (size_t i = 0; i < m->npool; i++)
        curl_easy_cleanup(m->pool[i]);
    curl_slist_free_all(m->headers);
    pthread_mutex_destroy(&m->pool_lock);
    free(m);
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int etcd_create(const char *url, const char *prefix, unsigned ttl_s, unsigned timeout_ms, void **out)
{
    pthread_once(&curl_once, curl_init_once);
    struct etcd_meta *m = calloc(1, sizeof *m);
    if (!m)
        return ferry_fail(FERRY_ENOMEM, "etcd metadata");
    pthread_mutex_init(&m->pool_lock, NULL);
    int rc = parse_url(m, url);
    if (!rc && (!prefix || strlen(prefix) >= sizeof m->prefix))
        rc = ferry_fail(FERRY_EINVAL, "metadata_prefix is missing or longer than %zu", sizeof m->prefix - 1);
    if (!rc && ttl_s == 0)
        rc = ferry_fail(FERRY_EINVAL, "%s: metadata_ttl_s must be at least 1", m->url);
    if (rc) {
        etcd_destroy(m);
        return rc;
    }
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    m->ttl_s = ttl_s;
    m->timeout_ms = timeout_ms ? (long)timeout_ms : 5000;
    m->connect_ms = m->timeout_ms < 1000 ? m->timeout_ms : 1000;
    m->headers = curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *more = m->headers ? curl_slist_append(m->headers, "Expect:") : NULL; /* no 100-continue wait */
    if (!more)
        rc = ferry_fail(FERRY_ENOMEM, "etcd metadata");
    /* the lease is granted now: it proves the store is reachable */
    if (!rc && (rc = lease_grant(m)) != 0)
        rc = ferry_fail(rc, "cannot use the metadata server: %s", ferry_last_error());
    if (!rc)
        rc = keepalive_start(&m->ka, m->url, m->ttl_s * 1000 / 3, &etcd_keepalive, m);
    if (rc) {
        etcd_destroy(m);
        return rc;
    }
    *out = m;
    return 0;
}

static int etcd_publish(void *mp, const char *name, const char *json)
{
    return keepalive_publish(&((struct etcd_meta *)mp)->ka, name, json);
}

static int etcd_unpublish(void *mp, const char *name)
{
    return keepalive_unpublish(&((struct etcd_meta *)mp)->ka, name);
}

static int etcd_lookup(void *mp, const char *name, char **json, size_t *len)
{
    struct etcd_meta *m = mp;
    char *key = key_of(m, name);
    if (!key)
        return ferry_fail(FERRY_ENOMEM, "lookup %s", name);
    cJSON *j = NULL;
    int rc = etcd_callf(m, "/v3/kv/range", &j, "{\"key\":\"%s\"}", key);
    if (rc) { /* unreachable or failing: absent for now; a reply no etcd sends: the store is not one */
        free(key);
        return ferry_fail(rc == FERRY_EPROTO ? FERRY_EPROTO : FERRY_ENOSEG, "segment %s: lookup failed: %s", name,
                          ferry_last_error());
    }
    rc = etcd_reply_range(j, name, key, json, len);
    if (rc == FERRY_ENOSEG)
        rc = ferry_fail(FERRY_ENOSEG, "segment %s is not published in %s (key \"%s%s\")", name, m->url, m->prefix,
                        name);
    free(key);
    cJSON_Delete(j);
    return rc;
}

static void etcd_where(void *mp, const char *name, char *out, size_t cap)
{
    const struct etcd_meta *m = mp;
    snprintf(out, cap, "%s key \"%s%s\"", m->url, m->prefix, name);
}

const struct meta_ops ferry_meta_etcd = {
    .scheme = ETCD_SCHEME,
    .create = etcd_create,
    .destroy = etcd_destroy,
    .publish = etcd_publish,
    .unpublish = etcd_unpublish,
    .lookup = etcd_lookup,
    .where = etcd_where,
};

#else
typedef int ferry_etcd_not_built; /* ISO C wants a declaration in every file */
#endif /* FERRY_HAVE_ETCD */

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * http.c — segment descriptors on an HTTP key-value server (metadata_server
 * "http://host:port/path"), the protocol of the reference engine's HTTP
 * metadata server: GET / PUT / DELETE of path?key=<url-encoded key>, 200 or
 * 404.  Requests go through libcurl.
 *
 * Liveness, as close to an etcd lease as plain HTTP allows: the value is
 * {"expires_unix_s": N, "descriptor": {...}}; a keepalive thread re-puts every
 * descriptor every ttl/3 s with N = now + ttl (which also re-populates a
 * restarted server), unpublish deletes it, and a lookup treats an entry whose
 * N has passed as absent — a publisher that died without deleting its key
 * vanishes after ttl, as with etcd and Redis.  (This compares the hosts'
 * wall clocks: they must agree to well within ttl.)
 *
 * Threads: lookups run on the caller's thread with a curl handle of their
 * own.  publish, unpublish and the renewal thread (keepalive.c) are
 * serialized by the keepalive's lock.
 */
#ifdef FERRY_HAVE_ETCD /* libcurl is there */

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "log.h"
#include "meta/descriptor.h"
#include "meta/etcd_reply.h"
#include "meta/keepalive.h"
#include "meta/meta.h"
#include "net.h"

#define HTTP_SCHEME "http://"
#define HTTP_RESPONSE_MAX ((size_t)DESC_MAX_BYTES + 65536)

struct http_meta {
    char url[256];              /* http://host:port/path, without a query */
    char prefix[256];
    unsigned ttl_s;
    long timeout_ms;

    struct keepalive ka;        /* published descriptors, renewed every ttl/3 s */
};

/* ------------------------------------------------------------ HTTP */

struct response {
    char *data;
    size_t len;
};

static size_t on_body(char *ptr, size_t size, size_t n, void *ud)
{
    struct response *r = ud;
    size_t add = size * n;
    if (r->len + add > HTTP_RESPONSE_MAX)
        return 0; /* curl fails with CURLE_WRITE_ERROR */
    char *d = realloc(r->data, r->len + add + 1);
    if (!d)
        return 0;
    memcpy(d + r->len, ptr, add);
    r->data = d;
    r->len += add;
    d[r->len] = '\0';
    return add;
}

/* One request: method on url?key=prefix+name, with body for PUT.  Returns 0
 * with *status and (if r) the body, or FERRY_ECONN with curl's reason. */
static int request(struct http_meta *m, const char *method, const char *name, const char *body,
                   struct response *r, long *status)
{
    CURL *h = curl_easy_init();
    if (!h)
        return ferry_fail(FERRY_ENOMEM, "%s: curl handle", m->url);
    char key[512];
    snprintf(key, sizeof key, "%s%s", m->prefix, name);
    char *esc = curl_easy_escape(h, key, 0);
    char *url = NULL;
    int rc = 0;
    if (!esc || asprintf(&url, "%s?key=%s", m->url, esc) < 0) {
        url = NULL;
        rc = ferry_fail(FERRY_ENOMEM, "%s: url", m->url);
    }
    struct response sink = {0};
    void *resolved = NULL;
    long t0 = (long)now_ms();
    if (!rc && meta_curl_resolve(h, url, (unsigned)m->timeout_ms, &resolved) != 0)
        rc = ferry_fail(FERRY_ECONN, "%s %s?key=%s: %s", method, m->url, key, ferry_last_error());
    if (!rc) {
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_PROXY, ""); /* never through an http_proxy of the environment */
        meta_curl_cloexec(h);
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
        if (body) {
            curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
            curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
        }
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, r ? r : &sink);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        long spent = (long)now_ms() - t0; /* the look-up is part of the call's time */
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, m->timeout_ms > spent ? m->timeout_ms - spent : 1L);
        CURLcode cc = curl_easy_perform(h);
        if (cc == CURLE_OK)
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
        else
            rc = ferry_fail(FERRY_ECONN, "%s %s?key=%s: %s", method, m->url, key, curl_easy_strerror(cc));
    }
    meta_curl_resolve_end(h, resolved);
    free(sink.data);
    free(url);
    curl_free(esc);
    curl_easy_cleanup(h);
    return rc;
}

/* keepalive put: one descriptor with a fresh expiry. */
static int put_one(void *store, const char *name, const char *json)
{
    struct http_meta *m = store;
    char *body = NULL;
    if (asprintf(&body, "{\"expires_unix_s\":%lld,\"descriptor\":%s}", (long long)time(NULL) + m->ttl_s, json) < 0)
        return ferry_fail(FERRY_ENOMEM, "%s: request body", m->url);
    long status = 0;
    int rc = request(m, "PUT", name, body, NULL, &status);
    free(body);
    if (!rc && status != 200)
        rc = ferry_fail(FERRY_EIO, "PUT %s?key=%s%s: HTTP %ld", m->url, m->prefix, name, status);
    return rc;
}

static int delete_one(void *store, const char *name, size_t remaining)
{
    struct http_meta *m = store;
    (void)remaining;
    long status = 0;
    int rc = request(m, "DELETE", name, NULL, NULL, &status);
    if (!rc && status != 200 && status != 404)
        rc = ferry_fail(FERRY_EIO, "DELETE %s?key=%s%s: HTTP %ld", m->url, m->prefix, name, status);
    return rc;
}

static const struct keepalive_ops http_keepalive = {.put = put_one, .del = delete_one};

/* ------------------------------------------------------------ ops */

static void http_destroy(void *mp)
{
    struct http_meta *m = mp;
    if (!m)
        return;
    keepalive_stop(&m->ka);
    free(m);
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int http_create(const char *url, const char *prefix, unsigned ttl_s, unsigned timeout_ms, void **out)
{
    const char *rest = url + strlen(HTTP_SCHEME);
    if (strncmp(url, HTTP_SCHEME, strlen(HTTP_SCHEME)) != 0 || !*rest || *rest == '/' || strchr(url, '?') ||
        strlen(url) >= sizeof((struct http_meta *)0)->url ||
        strlen(prefix) >= sizeof((struct http_meta *)0)->prefix)
        return ferry_fail(FERRY_EINVAL, "metadata_server \"%.200s\": not http://host:port/path (no query)", url);
    if (ttl_s < 1)
        return ferry_fail(FERRY_EINVAL, "http metadata: ttl must be at least 1 s");
    pthread_once(&curl_once, curl_init_once);
    struct http_meta *m = calloc(1, sizeof *m);
    if (!m)
        return ferry_fail(FERRY_ENOMEM, "http metadata");
    snprintf(m->url, sizeof m->url, "%s", url);
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    m->ttl_s = ttl_s;
    m->timeout_ms = timeout_ms ? (long)timeout_ms : 5000;
    int rc = keepalive_start(&m->ka, m->url, (ttl_s / 3 ? ttl_s / 3 : 1) * 1000, &http_keepalive, m);
    if (rc) {
        free(m);
        return rc;
    }
    *out = m;
    return 0;
}

static int http_publish(void *mp, const char *name, const char *json)
{
    return keepalive_publish(&((struct http_meta *)mp)->ka, name, json);
}

static int http_unpublish(void *mp, const char *name)
{
    return keepalive_unpublish(&((struct http_meta *)mp)->ka, name);
}

static int http_lookup(void *mp, const char *name, char **json, size_t *len)
{
    struct http_meta *m = mp;
    struct response r = {0};
    long status = 0;
    int rc = request(m, "GET", name, NULL, &r, &status);
    if (rc) {
        free(r.data);
        return ferry_fail(FERRY_ENOSEG, "segment %s: %s", name, ferry_last_error());
    }
    if (status != 200) {
        free(r.data);
        return ferry_fail(status == 404 ? FERRY_ENOSEG : FERRY_EIO, "segment %s: GET %s?key=%s%s: HTTP %ld%s", name,
                          m->url, m->prefix, name, status, status == 404 ? " (not published)" : "");
    }
    rc = http_reply_entry(r.data, r.len, (double)time(NULL), name, m->url, json, len);
    free(r.data);
    return rc;
}

static void http_where(void *mp, const char *name, char *out, size_t cap)
{
    const struct http_meta *m = mp;
    snprintf(out, cap, "%s key \"%s%s\"", m->url, m->prefix, name);
}

const struct meta_ops ferry_meta_http = {
    .scheme = HTTP_SCHEME,
    .create = http_create,
    .destroy = http_destroy,
    .publish = http_publish,
    .unpublish = http_unpublish,
    .lookup = http_lookup,
    .where = http_where,
};

#endif /* FERRY_HAVE_ETCD */

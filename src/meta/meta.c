/* SPDX-License-Identifier: Apache-2.0 */
/*
 * meta.c — the registry of metadata backends (one line each; picked by URL
 * scheme), and the P2P backend (which publishes nothing: descriptors are
 * served by each engine's own handshake listener, see p2p.c).  No threads,
 * no state besides the read-only registry.
 */
#include "meta/meta.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#ifdef FERRY_HAVE_ETCD
#include <curl/curl.h>
#endif

#include "err.h"
#include "meta/p2p.h"
#include "net.h"

#ifdef FERRY_HAVE_ETCD
static curl_socket_t open_cloexec(void *ctx, curlsocktype purpose, struct curl_sockaddr *a)
{
    (void)ctx;
    (void)purpose;
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

void meta_curl_cloexec(void *h)
{
    curl_easy_setopt((CURL *)h, CURLOPT_OPENSOCKETFUNCTION, open_cloexec);
}

/* "host:port:addr,[v6addr],..." for CURLOPT_RESOLVE, from res. */
static int resolve_entry(const char *host, const char *port, const struct addrinfo *res, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s:%s:", host, port), first = 1;
    for (const struct addrinfo *r = res; r && n > 0 && (size_t)n < cap; r = r->ai_next) {
        char a[NI_MAXHOST];
        if (getnameinfo(r->ai_addr, r->ai_addrlen, a, sizeof a, NULL, 0, NI_NUMERICHOST) != 0)
            continue;
        int more = snprintf(out + n, cap - (size_t)n, r->ai_family == AF_INET6 ? "%s[%s]" : "%s%s", first ? "" : ",", a);
        if (more < 0 || (size_t)more >= cap - (size_t)n) { /* full: the addresses that fitted */
            out[n] = '\0';
            break;
        }
        n += more;
        first = 0;
    }
    return first ? ferry_fail(FERRY_ECONN, "%s: no address to connect to", host) : 0;
}

int meta_curl_resolve(void *h, const char *url, unsigned timeout_ms, void **list)
{
    *list = NULL;
    CURLU *u = curl_url();
    char *host = NULL, *port = NULL;
    int rc = 0;
    struct in_addr v4;
    if (!u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK) {
        rc = ferry_fail(FERRY_EINVAL, "%s: not a URL curl reads", url);
    } else if (host[0] != '[' && inet_pton(AF_INET, host, &v4) != 1) { /* a name */
        struct addrinfo *res = NULL;
        char entry[512];
        rc = net_lookup(host, atoi(port), net_deadline(timeout_ms), &res);
        if (!rc)
            rc = resolve_entry(host, port, res, entry, sizeof entry);
        if (!rc && !(*list = curl_slist_append(NULL, entry)))
            rc = ferry_fail(FERRY_ENOMEM, "%s: curl's host entry", url);
        if (res)
            freeaddrinfo(res);
    }
    curl_easy_setopt((CURL *)h, CURLOPT_RESOLVE, *list); /* NULL for an address: nothing to look up */
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return rc;
}

void meta_curl_resolve_end(void *h, void *list)
{
    curl_easy_setopt((CURL *)h, CURLOPT_RESOLVE, NULL);
    curl_slist_free_all(list);
}
#endif

struct p2p_meta {
    unsigned timeout_ms;
    const struct auth_key *auth;
};

static int p2p_create(const char *url, const char *prefix, unsigned ttl_s, unsigned timeout_ms, void **out)
{
    (void)url;
    (void)prefix;
    (void)ttl_s;
    struct p2p_meta *m = calloc(1, sizeof *m);
    if (!m)
        return ferry_fail(FERRY_ENOMEM, "p2p metadata");
    m->timeout_ms = timeout_ms;
    *out = m;
    return 0;
}

static void p2p_destroy(void *m)
{
    free(m);
}

static int p2p_publish(void *m, const char *name, const char *json)
{
    (void)m;
    (void)name;
    (void)json;
    return 0; /* the handshake listener serves the live descriptor */
}

static int p2p_unpublish(void *m, const char *name)
{
    (void)m;
    (void)name;
    return 0;
}

static int p2p_lookup(void *mp, const char *name, char **json, size_t *len)
{
    struct p2p_meta *m = mp;
    return p2p_fetch_auth(name, m->timeout_ms, m->auth, json, len);
}

static void p2p_set_auth(void *mp, const void *auth)
{
    struct p2p_meta *m = mp;
    m->auth = auth;
}

static const struct meta_ops meta_p2p = {
    .scheme = "P2PHANDSHAKE",
    .caps = META_NAMED_BY_LISTENER,
    .create = p2p_create,
    .destroy = p2p_destroy,
    .publish = p2p_publish,
    .unpublish = p2p_unpublish,
    .lookup = p2p_lookup,
    .set_auth = p2p_set_auth,
};

static const struct meta_ops *const backends[] = {
    &meta_p2p,
#ifdef FERRY_HAVE_ETCD
    &ferry_meta_etcd,
    &ferry_meta_http,
#endif
#ifdef FERRY_HAVE_REDIS
    &ferry_meta_redis,
#endif
};

const struct meta_ops *const *meta_list(size_t *count)
{
    *count = sizeof backends / sizeof backends[0];
    return backends;
}

const struct meta_ops *meta_find(const char *url)
{
    for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++)
        if (strncmp(url, backends[i]->scheme, strlen(backends[i]->scheme)) == 0)
            return backends[i];
    return NULL;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * meta.h — where segment descriptors are published and found.
 *
 * One ops table per backend, chosen by the metadata_server string:
 *   "P2PHANDSHAKE"            p2p.c: nothing is published; a lookup asks the
 *                             peer's handshake listener (the name is host:port)
 *   "etcd://h:p[,h:p...]"     etcd.c: keys under a prefix, with a lease
 *   "redis://h:p"             redis.c: keys under a prefix, with a TTL
 *   "http://h:p/path"         http.c: GET/PUT/DELETE path?key=, renewed expiry
 * The engine publishes its descriptor at start and whenever its remote-
 * accessible registrations change, unpublishes at destroy, and looks peers
 * up in open_segment and when a peer's descriptor turns stale.  Connection
 * data of transports (RDMA QP numbers ...) never goes through here.
 */
#ifndef FERRY_META_H
#define FERRY_META_H

#include <stddef.h>

/* Capabilities (struct meta_ops.caps). */
#define META_NAMED_BY_LISTENER 0x1u /* nothing is stored: a segment's name is its handshake listener's host:port */

struct ferry_config_knob;

struct meta_ops {
    const char *scheme;   /* "P2PHANDSHAKE", "etcd://", "redis://": prefix of metadata_server */
    unsigned caps;        /* META_* */
    /* The FERRY_* variables this backend reads itself, ended by {NULL}
     * (NULL: none); ferry_config_describe lists them with the others. */
    const struct ferry_config_knob *knobs;
    /* Connects (or prepares to).  url is the whole metadata_server string;
     * prefix is the key prefix (FERRY_METADATA_PREFIX); ttl_s the lease.
     * Returns 0, FERRY_EINVAL (malformed url), FERRY_ECONN (unreachable). */
    int (*create)(const char *url, const char *prefix, unsigned ttl_s, unsigned timeout_ms, void **out);
    /* Stops keepalives and frees; does not unpublish. NULL accepted. */
    void (*destroy)(void *m);
    /* Publishes (or replaces) name -> descriptor JSON; keeps it alive until
     * unpublish or destroy. */
    int (*publish)(void *m, const char *name, const char *json);
    int (*unpublish)(void *m, const char *name);
    /* Looks name up.  *json malloc'd, NUL-terminated.  FERRY_ENOSEG if absent
     * or unreachable (detail says which); FERRY_EPROTO if the stored entry is
     * not a descriptor string (a Redis key of another type, bad base64). */
    int (*lookup)(void *m, const char *name, char **json, size_t *len);
    /* Optional (NULL: nothing is stored, as P2PHANDSHAKE).  Writes where the
     * store keeps name's descriptor, for details: the store's URL as
     * configured and the key ("etcd://127.0.0.1:2379 key \"ferry/seg:1\""). */
    void (*where)(void *m, const char *name, char *out, size_t cap);
    /* Optional (NULL: the backend does not talk to peers itself).  Lends the
     * engine's authentication key (struct auth_key, outlives m) for lookups. */
    void (*set_auth)(void *m, const void *auth);
};

/* The registry (meta.c): the backend whose scheme prefixes url, or NULL;
 * every backend of this build, in order. */
const struct meta_ops *meta_find(const char *url);
const struct meta_ops *const *meta_list(size_t *count);

/* Makes every socket curl opens for handle h (a CURL *) close-on-exec, as
 * every descriptor of ferry's is: curl's own are not, and a user's
 * fork+exec would inherit a store connection.  Built with FERRY_HAVE_ETCD. */
void meta_curl_cloexec(void *h);

/* Looks the host of url up (net_lookup: bounded by timeout_ms) and hands its
 * addresses to curl handle h for its next transfer (CURLOPT_RESOLVE), so
 * curl's own resolver never runs: its thread holds a transfer that timed
 * out until glibc gives up (10 s and more with a silent DNS server), whatever
 * the transfer's timeout.  An address given as text needs none.  *list: the
 * entry (a struct curl_slist *), which the caller hands to
 * meta_curl_resolve_end after the transfer.  Returns 0 or the look-up's code,
 * with its detail.  Built with FERRY_HAVE_ETCD. */
int meta_curl_resolve(void *h, const char *url, unsigned timeout_ms, void **list);
/* After the transfer: the handle forgets the entries (a pooled handle must
 * not keep a pointer to a freed list) and the list is freed. */
void meta_curl_resolve_end(void *h, void *list);

/* The backends' tables, for meta.c's registry (tests reach them too). */
extern const struct meta_ops ferry_meta_etcd;   /* built with FERRY_HAVE_ETCD */
extern const struct meta_ops ferry_meta_redis;  /* built with FERRY_HAVE_REDIS */
extern const struct meta_ops ferry_meta_http;   /* built with FERRY_HAVE_ETCD (libcurl) */

#endif

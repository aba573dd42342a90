/* SPDX-License-Identifier: Apache-2.0 */
/*
 * keepalive.h — what every metadata store with a lease or TTL needs besides
 * its own calls: the list of descriptors this engine publishes, and a thread
 * that renews them every interval and re-publishes them when the store lost
 * them (it restarted empty, the lease expired while it was unreachable).
 *
 * A store fills struct keepalive_ops with its calls; the helper serializes
 * them under one lock (so a renewal never resurrects a key that unpublish is
 * deleting) and logs "unreachable" / "reachable again" once per change.
 * Used by etcd.c and redis.c.
 */
#ifndef FERRY_META_KEEPALIVE_H
#define FERRY_META_KEEPALIVE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

/* Every call runs with the keepalive's lock held, one at a time. */
struct keepalive_ops {
    /* Stores name -> json (with the store's lease/TTL). */
    int (*put)(void *store, const char *name, const char *json);
    /* Deletes name; `remaining` descriptors stay published. */
    int (*del)(void *store, const char *name, size_t remaining);
    /* Optional: one renewal round with `published` descriptors (etcd renews
     * its lease).  Sets *lost when the store no longer holds them, so they are
     * put again.  NULL: every round puts every descriptor again (Redis SET EX
     * renews the TTL that way). */
    int (*renew)(void *store, size_t published, bool *lost);
};

struct keepalive_entry {
    char *name;
    char *json;
};

struct keepalive {
    const char *url;            /* for log lines; owned by the store */
    const struct keepalive_ops *ops;
    void *store;
    unsigned interval_ms;
    pthread_mutex_t lock;       /* everything below, and every ops call */
    pthread_cond_t wake;
    atomic_bool stopping;
    bool thread_started;
    pthread_t thread;
    bool dirty;                 /* some descriptor may be missing from the store */
    bool unreachable;           /* the last round failed (logged once) */
    struct keepalive_entry *entries;
    size_t count;
};

/* Initializes k and starts its thread (a round every interval_ms).  Returns 0
 * or FERRY_EIO.  On failure k needs no keepalive_stop. */
int keepalive_start(struct keepalive *k, const char *url, unsigned interval_ms,
                    const struct keepalive_ops *ops, void *store);
/* Stops the thread (waits for a round in progress) and frees the list; does
 * not unpublish.  Safe on a zeroed struct. */
void keepalive_stop(struct keepalive *k);
/* Publishes (or replaces) name -> json now; when the store does not answer,
 * keeps it and returns the error ("will retry"): the next round puts it. */
int keepalive_publish(struct keepalive *k, const char *name, const char *json);
/* Forgets name and deletes it from the store. */
int keepalive_unpublish(struct keepalive *k, const char *name);
/* Runs fn(store, arg) under the lock: for a store whose connection is not
 * thread-safe (hiredis) and must serialize its lookups with the thread. */
int keepalive_locked(struct keepalive *k, int (*fn)(void *store, void *arg), void *arg);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * keepalive.c — published-descriptor bookkeeping and the renewal thread shared
 * by the metadata stores that keep entries alive with a lease or TTL (see
 * keepalive.h).
 *
 * Threads: one renewal thread per store; publish/unpublish on the engine's
 * threads.  All of them, and every store call they make, hold k->lock.
 */
#include "meta/keepalive.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "log.h"
#include "timespec.h"

static struct keepalive_entry *find(struct keepalive *k, const char *name)
{
    for (size_t i = 0; i < k->count; i++)
        if (strcmp(k->entries[i].name, name) == 0)
            return &k->entries[i];
    return NULL;
}

static int put_all(struct keepalive *k)
{
    for (size_t i = 0; i < k->count; i++) {
        int rc = k->ops->put(k->store, k->entries[i].name, k->entries[i].json);
        if (rc)
            return rc;
    }
    return 0;
}

/* One round (lock held): renew, put what is missing, log changes of reachability. */
static void renew(struct keepalive *k)
{
    int rc = 0;
    if (k->ops->renew) {
        bool lost = false;
        rc = k->ops->renew(k->store, k->count, &lost);
        if (lost)
            k->dirty = k->count > 0;
    } else {
        k->dirty = k->count > 0;
    }
    if (!rc && k->dirty && !(rc = put_all(k)))
        k->dirty = false;
    if (rc && !k->unreachable)
        LOG_WARN("%s: keepalive failed, will retry every %u ms: %s", k->url, k->interval_ms, ferry_last_error());
    else if (!rc && k->unreachable)
        LOG_INFO("%s: reachable again; descriptors are published", k->url);
    k->unreachable = rc != 0;
}

static void *keepalive_main(void *arg)
{
    struct keepalive *k = arg;
    pthread_mutex_lock(&k->lock);
    while (!atomic_load(&k->stopping)) {
        struct timespec t = timespec_in_ms(CLOCK_MONOTONIC, (long)k->interval_ms);
        int waited = 0;
        while (!atomic_load(&k->stopping) && waited == 0)
            waited = pthread_cond_timedwait(&k->wake, &k->lock, &t);
        if (!atomic_load(&k->stopping))
            renew(k);
    }
    pthread_mutex_unlock(&k->lock);
    return NULL;
}

int keepalive_start(struct keepalive *k, const char *url, unsigned interval_ms,
                    const struct keepalive_ops *ops, void *store)
{
    memset(k, 0, sizeof *k);
    k->url = url;
    k->ops = ops;
    k->store = store;
    k->interval_ms = interval_ms ? interval_ms : 1;
    pthread_mutex_init(&k->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&k->wake, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&k->thread, NULL, keepalive_main, k) != 0) {
        pthread_cond_destroy(&k->wake);
        pthread_mutex_destroy(&k->lock);
        memset(k, 0, sizeof *k);
        return ferry_fail(FERRY_EIO, "%s: cannot start the keepalive thread", url);
    }
    k->thread_started = true;
    return 0;
}

void keepalive_stop(struct keepalive *k)
{
    if (!k->thread_started)
        return;
    pthread_mutex_lock(&k->lock);
    atomic_store(&k->stopping, true);
    pthread_cond_signal(&k->wake);
    pthread_mutex_unlock(&k->lock);
    pthread_join(k->thread, NULL);
    for (size_t i = 0; i < k->count; i++) {
        free(k->entries[i].name);
        free(k->entries[i].json);
    }
    free(k->entries);
    pthread_cond_destroy(&k->wake);
    pthread_mutex_destroy(&k->lock);
    memset(k, 0, sizeof *k);
}

/* Adds or replaces the entry (lock held).  Returns 0 or FERRY_ENOMEM. */
static int remember(struct keepalive *k, const char *name, const char *json)
{
    char *copy = strdup(json);
    struct keepalive_entry *e = find(k, name);
    if (copy && !e) {
        struct keepalive_entry *n = realloc(k->entries, (k->count + 1) * sizeof *n);
        char *nm = strdup(name);
        if (n)
            k->entries = n;
        if (n && nm) {
            e = &k->entries[k->count++];
            *e = (struct keepalive_entry){.name = nm};
        } else {
            free(nm);
        }
    }
    if (!copy || !e) {
        free(copy);
        return ferry_fail(FERRY_ENOMEM, "publish %s", name);
    }
    free(e->json);
    e->json = copy;
    return 0;
}

int keepalive_publish(struct keepalive *k, const char *name, const char *json)
{
    pthread_mutex_lock(&k->lock);
    int rc = remember(k, name, json);
    if (!rc && (rc = k->ops->put(k->store, name, json)) != 0) {
        k->dirty = true; /* the thread puts it once the store answers */
        rc = ferry_fail(rc, "publish %s: %s (will retry)", name, ferry_last_error());
    }
    pthread_mutex_unlock(&k->lock);
    return rc;
}

int keepalive_unpublish(struct keepalive *k, const char *name)
{
    pthread_mutex_lock(&k->lock);
    struct keepalive_entry *e = find(k, name);
    if (e) {
        free(e->name);
        free(e->json);
        *e = k->entries[--k->count];
    }
    int rc = k->ops->del(k->store, name, k->count);
    pthread_mutex_unlock(&k->lock);
    return rc;
}

int keepalive_locked(struct keepalive *k, int (*fn)(void *store, void *arg), void *arg)
{
    pthread_mutex_lock(&k->lock);
    int rc = fn(k->store, arg);
    pthread_mutex_unlock(&k->lock);
    return rc;
}

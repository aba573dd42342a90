/* SPDX-License-Identifier: Apache-2.0 */
/*
 * notify.c — the queue of received notifications (ferry_get_notifications).
 *
 * Transports deliver from their service threads; the application takes
 * notifications from any thread; one mutex guards the queue.  When the queue
 * is full, the note dropped is the oldest of the origin holding the most
 * notes, never simply the oldest overall: a peer that floods the queue
 * evicts its own notes, not everyone else's.  Origins are told apart by
 * what the sender cannot choose: the address of its connection (the port
 * ignored, as each connection has its own; an IPv6 address's /64, as the
 * acceptor counts peers), or "local" for a same-host sender.  Not by the
 * name it gives itself: a flooder naming itself anew on each connection (or
 * as the victim) held one note per name and left the victim "the peer
 * holding the most".  The "queue full" warning is
 * rate-limited, so a flood cannot flood the log too.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acceptor.h"
#include "engine/engine.h"
#include "err.h"
#include "log.h"
#include "net.h"

struct note_peer {
    struct note_peer *next;
    char name[72];                  /* the origin: an address ("[v6]" 63 bytes at most) or "local" */
    size_t count;
    struct note_node *head, *tail;  /* this peer's notes, oldest first */
};

struct note_node {
    struct note_node *prev, *next;  /* the queue, oldest at head */
    struct note_node *peer_next;
    struct note_peer *peer;
    struct ferry_notification n;
};

void notify_queue_init(struct notify_queue *q, unsigned max)
{
    memset(q, 0, sizeof *q);
    q->max = max ? max : 1;
    pthread_mutex_init(&q->lock, NULL);
    log_ratelimit_init(&q->warn, 1000);
}

static struct note_peer *peer_of(struct notify_queue *q, const char *name)
{
    for (struct note_peer *p = q->peers; p; p = p->next)
        if (strcmp(p->name, name) == 0)
            return p;
    struct note_peer *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    snprintf(p->name, sizeof p->name, "%s", name);
    p->next = q->peers;
    q->peers = p;
    return p;
}

/* Unlinks a peer's oldest note from both lists; frees the peer when it has
 * no note left.  Returns the note (caller frees). */
static struct note_node *take_oldest_of(struct notify_queue *q, struct note_peer *p)
{
    struct note_node *node = p->head;
    p->head = node->peer_next;
    if (!p->head)
        p->tail = NULL;
    if (node->prev)
        node->prev->next = node->next;
    else
        q->head = node->next;
    if (node->next)
        node->next->prev = node->prev;
    else
        q->tail = node->prev;
    q->count--;
    if (--p->count == 0) {
        for (struct note_peer **pp = &q->peers; *pp; pp = &(*pp)->next) {
            if (*pp == p) {
                *pp = p->next;
                break;
            }
        }
        free(p);
    }
    return node;
}

/* The peer holding the most notes; the newcomer wins ties. */
static struct note_peer *largest(struct notify_queue *q, struct note_peer *newcomer)
{
    struct note_peer *best = newcomer;
    for (struct note_peer *p = q->peers; p; p = p->next)
        if (p->count > best->count)
            best = p;
    return best;
}

/* The origin without its port: "a.b.c.d" of "a.b.c.d:port"; of
 * "[v6]:port", the peer the acceptor counts (acceptor_peer_key: the
 * address's /64, as a host commonly holds a whole /64 and could send each
 * note from a new address); anything else as it is. */
static void origin_key(const char *origin, char *out, size_t cap)
{
    int port;
    struct sockaddr_storage ss = {.ss_family = AF_INET6};
    uint8_t key[16];
    if (origin == NULL || strchr(origin, ':') == NULL || net_split_hostport(origin, out, cap, &port) != 0)
        snprintf(out, cap, "%s", origin ? origin : "?");
    else if (inet_pton(AF_INET6, out, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
        acceptor_peer_key(&ss, key);
        inet_ntop(AF_INET6, key, out, (socklen_t)cap);
    }
}

void notify_deliver(struct notify_queue *q, const char *from, const char *origin, const void *msg, size_t len)
{
    struct note_node *node = calloc(1, sizeof *node);
    char who[sizeof node->n.from], key[sizeof ((struct note_peer *)0)->name];
    origin_key(origin, key, sizeof key);
    log_sanitize(from, strlen(from), who, sizeof who);
    if (!node) {
        LOG_ERROR("notification from %s dropped: out of memory", who);
        return;
    }
    snprintf(node->n.from, sizeof node->n.from, "%s", from);
    node->n.len = len < sizeof node->n.msg ? len : sizeof node->n.msg;
    memcpy(node->n.msg, msg, node->n.len);
    pthread_mutex_lock(&q->lock);
    struct note_peer *p = peer_of(q, key);
    if (!p) {
        pthread_mutex_unlock(&q->lock);
        free(node);
        LOG_ERROR("notification from %s dropped: out of memory", who);
        return;
    }
    node->peer = p;
    node->prev = q->tail;
    if (q->tail)
        q->tail->next = node;
    else
        q->head = node;
    q->tail = node;
    if (p->tail)
        p->tail->peer_next = node;
    else
        p->head = node;
    p->tail = node;
    p->count++;
    q->count++;
    struct note_node *old = NULL;
    if (q->count > q->max) {
        old = take_oldest_of(q, largest(q, p));
        q->dropped++;
    }
    uint64_t suppressed = 0;
    bool say = old && log_ratelimit_ok(&q->warn, &suppressed);
    pthread_mutex_unlock(&q->lock);
    if (say) {
        char victim[sizeof who];
        LOG_WARN("notification queue full (%zu): dropped the oldest from %s, of the origin holding the most "
                 "(%llu more drops not logged)", q->max, log_sanitize(old->n.from, sizeof old->n.from, victim,
                 sizeof victim), (unsigned long long)suppressed);
    }
    free(old);
}

int notify_take(struct notify_queue *q, struct ferry_notification *out, size_t max, size_t *count)
{
    size_t n = 0;
    pthread_mutex_lock(&q->lock);
    while (n < max && q->head) {
        struct note_node *node = take_oldest_of(q, q->head->peer);
        out[n++] = node->n;
        free(node);
    }
    pthread_mutex_unlock(&q->lock);
    *count = n;
    return 0;
}

void notify_queue_destroy(struct notify_queue *q)
{
    while (q->head)
        free(take_oldest_of(q, q->head->peer));
    pthread_mutex_destroy(&q->lock);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * acceptor.c — accepts connections on a listening socket and serves each on
 * its own thread, under caps per peer address and in total (see acceptor.h).
 *
 * Threads: one acceptor thread per listening port; one thread per live
 * connection.  The acceptor owns the list of connections (under `lock`); a
 * connection thread closes its own descriptor and gives its slot back the
 * moment its serve function returns, so a full engine recovers as soon as
 * peers leave, whether or not accept succeeds meanwhile.  The acceptor joins
 * finished threads on every tick.
 *
 * At the total cap the connections are shared out by peer (an IPv4 address
 * or an IPv6 /64): a newcomer whose peer holds at least two fewer than the
 * peer holding the most is served, and that peer's oldest idle connection
 * is shut down to make room (as the notification queue drops the oldest
 * note of the origin holding the most).  Idle: not busy (acceptor.h) and no
 * bytes waiting, so no work a peer asked for is failed.  Attackers at many
 * addresses, each within the per-peer cap, so fill a port only up to an
 * even share each, never to the exclusion of a peer that comes later.
 */
#include "acceptor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "net.h"

#define TICK_MS 100
/* Connections shut down to make room that have not ended yet: each is one
 * descriptor over the total cap for the moments it takes to end. */
#define EVICTING_MAX 16

struct conn {
    struct acceptor_conn pub;
    uint8_t addr[16];       /* peer address, IPv4 as v4-mapped IPv6 (all 0: unknown) */
    uint64_t seq;           /* admission order: lower is older */
    pthread_t thread;
    bool done;              /* serve returned; fd closed; thread may be joined */
    bool evicted;           /* shut down to make room for another address's connection */
    struct conn *next;
};

struct acceptor {
    int listen_fd;
    int reserve_fd;         /* /dev/null, given up to accept-and-close when out of descriptors */
    char what[24];
    unsigned max_total, max_per_peer, keepalive_s;
    acceptor_serve_fn serve;
    void *ctx;
    pthread_t thread;
    atomic_bool stopping;
    pthread_mutex_t lock;
    struct conn *conns;     /* live and finished-not-joined */
    unsigned live;
    unsigned evicting;      /* evicted and not yet done (counted in live) */
    uint64_t accepted, over_cap, shed, evicted;
    struct log_ratelimit warn_cap, warn_fd, warn_evict;
};

unsigned acceptor_max_total(const struct acceptor_limits *lim)
{
    if (lim && lim->max_total)
        return lim->max_total;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return 4096;
    rlim_t n = rl.rlim_cur / 4;
    return n < 16 ? 16 : n > 4096 ? 4096 : (unsigned)n;
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    struct acceptor *a = c->pub.owner;
    a->serve(a->ctx, &c->pub);
    pthread_mutex_lock(&a->lock);
    close(c->pub.fd);
    c->pub.fd = -1;
    c->done = true;
    a->live--;
    if (c->evicted)
        a->evicting--;
    pthread_mutex_unlock(&a->lock);
    return NULL;
}

/* Joins and frees finished connections; with `all`, waits for every one. */
static void reap(struct acceptor *a, bool all)
{
    for (;;) {
        struct conn *found = NULL;
        pthread_mutex_lock(&a->lock);
        for (struct conn **pp = &a->conns; *pp; pp = &(*pp)->next) {
            if ((*pp)->done || all) {
                found = *pp;
                *pp = found->next;
                break;
            }
        }
        pthread_mutex_unlock(&a->lock);
        if (!found)
            return;
        pthread_join(found->thread, NULL);
        free(found);
    }
}

/* Under a->lock: connections from addr being served (not ended, not
 * evicted). */
static unsigned held_by(const struct acceptor *a, const uint8_t addr[16])
{
    unsigned same = 0;
    for (const struct conn *c = a->conns; c; c = c->next)
        if (!c->done && !c->evicted && !memcmp(c->addr, addr, 16))
            same++;
    return same;
}

static int cmp_conn_addr(const void *x, const void *y)
{
    const struct conn *const *a = x, *const *b = y;
    int d = memcmp((*a)->addr, (*b)->addr, 16);
    return d ? d : ((*a)->seq > (*b)->seq) - ((*a)->seq < (*b)->seq);
}

/* May c be shut down without failing work its peer asked for?  IDLE, and
 * no bytes waiting (its serve function is about to claim it). */
static bool idle(const struct conn *c)
{
    int pending = 0;
    return atomic_load(&c->pub.state) == ACCEPTOR_IDLE && ioctl(c->pub.fd, FIONREAD, &pending) == 0 &&
           pending == 0;
}

/* Under a->lock, at the total cap: the oldest idle connection of the
 * address holding the most that has one, if that address holds at least
 * two more than `mine` (the newcomer's count), else NULL. */
static struct conn *eviction_victim(struct acceptor *a, unsigned mine)
{
    struct conn **v = malloc((size_t)a->live * sizeof *v);
    size_t n = 0;
    if (!v)
        return NULL;
    for (struct conn *c = a->conns; c && n < a->live; c = c->next)
        if (!c->done && !c->evicted)
            v[n++] = c;
    qsort(v, n, sizeof *v, cmp_conn_addr); /* by address, each address's oldest first */
    struct conn *victim = NULL;
    unsigned most = mine + 1;
    for (size_t i = 0, run; i < n; i += run) {
        for (run = 1; i + run < n && !memcmp(v[i + run]->addr, v[i]->addr, 16); run++)
            ;
        if (run <= most)
            continue;
        for (size_t k = i; k < i + run; k++) {
            if (idle(v[k])) {
                most = (unsigned)run;
                victim = v[k];
                break;
            }
        }
    }
    free(v);
    return victim;
}

/* Under a->lock, at the total cap: eviction_victim's choice, claimed for
 * eviction (IDLE to EVICTING), after which its serve function reads nothing
 * more (acceptor_conn_claim), so no request is cut in the middle.  A choice
 * whose serve function claimed it since idle() looked (it may have read a
 * request whole, leaving no bytes waiting) is BUSY now and not chosen again. */
static struct conn *take_victim(struct acceptor *a, unsigned mine)
{
    for (unsigned round = 0; round < a->live; round++) {
        struct conn *c = eviction_victim(a, mine);
        int was = ACCEPTOR_IDLE;
        if (!c || atomic_compare_exchange_strong(&c->pub.state, &was, ACCEPTOR_EVICTING))
            return c;
    }
    return NULL;
}

/* Under a->lock: may one more connection from addr be served?  At the
 * total cap, makes room by evicting (see the top of this file). */
static bool under_caps(struct acceptor *a, const uint8_t addr[16])
{
    static const uint8_t unknown[16];
    bool known = memcmp(addr, unknown, 16) != 0;
    unsigned mine = held_by(a, addr);
    if (known && a->max_per_peer && mine >= a->max_per_peer)
        return false;
    if (a->live - a->evicting < a->max_total)
        return true;
    struct conn *victim = a->evicting < EVICTING_MAX ? take_victim(a, mine) : NULL;
    if (!victim)
        return false;
    victim->evicted = true;
    a->evicting++;
    a->evicted++;
    shutdown(victim->pub.fd, SHUT_RDWR); /* its serve function returns; conn_main closes the fd */
    uint64_t suppressed;
    if (log_ratelimit_ok(&a->warn_evict, &suppressed))
        LOG_WARN("%s: at the cap of %u connections (FERRY_MAX_CONNECTIONS): closed an idle connection of %s, "
                 "the peer holding the most, to serve one holding %u (%llu more like this)",
                 a->what, a->max_total, victim->pub.peer, mine, (unsigned long long)suppressed);
    return true;
}

/* Out of descriptors: close the reserve to accept-and-close the waiting
 * peer (it sees a closed connection, not a hang), then take it back. */
static void shed_one(struct acceptor *a, int err)
{
    if (a->reserve_fd >= 0) {
        close(a->reserve_fd);
        a->reserve_fd = -1;
        int fd = accept4(a->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd >= 0) {
            close(fd);
            pthread_mutex_lock(&a->lock);
            a->shed++;
            pthread_mutex_unlock(&a->lock);
        }
        a->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    uint64_t suppressed;
    if (log_ratelimit_ok(&a->warn_fd, &suppressed))
        LOG_WARN("%s: cannot accept: %s; shedding connections until descriptors free up (%llu more like this)",
                 a->what, strerror(err), (unsigned long long)suppressed);
}

void acceptor_peer_key(const struct sockaddr_storage *ss, uint8_t key[16])
{
    memset(key, 0, 16);
    if (ss->ss_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        const struct in6_addr *in = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        /* a link-local /64 is every host of the link: those stay one address each */
        bool whole = IN6_IS_ADDR_V4MAPPED(in) || IN6_IS_ADDR_LINKLOCAL(in);
        memcpy(key, in, whole ? 16 : 8);
        if (!whole)
            key[15] = 1; /* ::/64 (::1 among it) is a peer too, not "unknown" */
    }
}

/* The peer's address as a per-peer key (acceptor_peer_key) and as
 * "ip:port" text. */
static void peer_of(const struct sockaddr_storage *ss, uint8_t key[16], char *text, size_t max)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    acceptor_peer_key(ss, key);
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sa = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip);
        port = ntohs(sa->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sa = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sa->sin6_addr, ip, sizeof ip);
        port = ntohs(sa->sin6_port);
    }
    if (net_format_hostport(text, max, ip, port))
        snprintf(text, max, "?");
}

static void admit(struct acceptor *a, int fd, const struct sockaddr_storage *ss)
{
    struct conn *c = calloc(1, sizeof *c);
    uint8_t addr[16];
    char peer[sizeof c->pub.peer];
    peer_of(ss, addr, peer, sizeof peer);
    /* before the lock (its syscalls hold up no other accept): a vanished
     * peer's serve thread and descriptor do not stay for ever */
    net_set_keepalive(fd, a->keepalive_s);
    pthread_mutex_lock(&a->lock);
    bool ok = c && !atomic_load(&a->stopping) && under_caps(a, addr);
    if (ok) {
        c->pub.fd = fd;
        c->pub.owner = a;
        c->seq = a->accepted;
        memcpy(c->addr, addr, sizeof addr);
        memcpy(c->pub.peer, peer, sizeof peer);
        ok = pthread_create(&c->thread, NULL, conn_main, c) == 0;
    }
    if (ok) {
        c->next = a->conns;
        a->conns = c;
        a->live++;
        a->accepted++;
    } else if (c) {
        a->over_cap++;
    }
    pthread_mutex_unlock(&a->lock);
    if (ok)
        return;
    uint64_t suppressed;
    if (c && log_ratelimit_ok(&a->warn_cap, &suppressed)) {
        LOG_WARN("%s: refused a connection from %s: over the cap of %u in total / %u per peer "
                 "(FERRY_MAX_CONNECTIONS, FERRY_MAX_CONNECTIONS_PER_PEER) (%llu more like this)",
                 a->what, peer, a->max_total, a->max_per_peer, (unsigned long long)suppressed);
    }
    free(c);
    close(fd);
}

static void *acceptor_main(void *arg)
{
    struct acceptor *a = arg;
    char name[16] = "ferry-acc-"; /* + what, cut to the kernel's 15 characters */
    size_t at = strlen(name), n = strnlen(a->what, sizeof name - 1 - at);
    memcpy(name + at, a->what, n);
    name[at + n] = '\0';
    (void)pthread_setname_np(pthread_self(), name);
    bool backoff = false;
    while (!atomic_load(&a->stopping)) {
        reap(a, false);
        struct pollfd p = {.fd = a->listen_fd, .events = POLLIN};
        /* after a failed accept, one tick without the listening socket:
         * it stays readable, and polling it would spin */
        int n = poll(&p, backoff ? 0 : 1, TICK_MS);
        backoff = false;
        if (n <= 0)
            continue;
        struct sockaddr_storage sa = {0};
        socklen_t sl = sizeof sa;
        int fd = accept4(a->listen_fd, (struct sockaddr *)&sa, &sl, SOCK_CLOEXEC);
        if (fd >= 0) {
            int one = 1; /* acks and handshakes are small: never let Nagle hold them */
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            admit(a, fd, &sa);
            continue;
        }
        int err = errno;
        if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
            shed_one(a, err);
            backoff = true;
        }
    }
    return NULL;
}

int acceptor_start(int listen_fd, const char *what, const struct acceptor_limits *lim, acceptor_serve_fn serve,
                   void *ctx, struct acceptor **out)
{
    struct acceptor *a = calloc(1, sizeof *a);
    if (!a)
        return ferry_fail(FERRY_ENOMEM, "%s acceptor", what);
    a->listen_fd = listen_fd;
    a->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    snprintf(a->what, sizeof a->what, "%s", what);
    a->max_total = acceptor_max_total(lim);
    a->max_per_peer = lim ? lim->max_per_peer : 0;
    a->keepalive_s = lim ? lim->keepalive_s : 0;
    a->serve = serve;
    a->ctx = ctx;
    log_ratelimit_init(&a->warn_cap, 1000);
    log_ratelimit_init(&a->warn_fd, 1000);
    log_ratelimit_init(&a->warn_evict, 1000);
    pthread_mutex_init(&a->lock, NULL);
    if (pthread_create(&a->thread, NULL, acceptor_main, a) != 0) {
        pthread_mutex_destroy(&a->lock);
        if (a->reserve_fd >= 0)
            close(a->reserve_fd);
        free(a);
        return ferry_fail(FERRY_EIO, "%s: cannot start the acceptor thread", what);
    }
    *out = a;
    return 0;
}

void acceptor_stop(struct acceptor *a)
{
    if (!a)
        return;
    atomic_store(&a->stopping, true);
    pthread_join(a->thread, NULL);
    pthread_mutex_lock(&a->lock);
    for (struct conn *c = a->conns; c; c = c->next)
        if (c->pub.fd >= 0)
            shutdown(c->pub.fd, SHUT_RDWR);
    pthread_mutex_unlock(&a->lock);
    reap(a, true);
    pthread_mutex_destroy(&a->lock);
    if (a->reserve_fd >= 0)
        close(a->reserve_fd);
    free(a);
}

bool acceptor_stopping(const struct acceptor *a)
{
    return atomic_load(&a->stopping);
}

void acceptor_get_stats(struct acceptor *a, struct acceptor_stats *out)
{
    pthread_mutex_lock(&a->lock);
    out->live = a->live;
    out->accepted = a->accepted;
    out->over_cap = a->over_cap;
    out->shed = a->shed;
    out->evicted = a->evicted;
    pthread_mutex_unlock(&a->lock);
}

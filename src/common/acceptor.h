/* SPDX-License-Identifier: Apache-2.0 */
/*
 * acceptor.h — the one acceptor behind every TCP port ferry listens on (the
 * handshake server, the tcp data port, the rdma side channel).
 *
 * It accepts connections on a listening socket and serves each on its own
 * thread, with the limits that keep one peer from exhausting or pinning the
 * engine:
 *  - at most `max_total` connections at once, and `max_per_peer` from one
 *    IPv4 address or IPv6 /64; a connection over a cap is accepted and
 *    closed at once;
 *  - at the total cap, a newcomer whose address holds at least two fewer
 *    connections than the address holding the most is served, and that
 *    address's oldest connection that is not busy shut down (so many
 *    attacking addresses cannot lock a later peer out, nor fail a peer's
 *    work in progress);
 *  - a finished connection releases its descriptor and its slot itself, so
 *    nothing waits for the next successful accept;
 *  - when accept fails for lack of descriptors (EMFILE / ENFILE) or memory,
 *    it sheds the waiting connection (through a reserved descriptor) and
 *    backs off for one tick instead of spinning.
 * Deadlines and idle timeouts are the service's job (net_read_full_deadline).
 */
#ifndef FERRY_ACCEPTOR_H
#define FERRY_ACCEPTOR_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

struct acceptor;

/* One accepted connection, as its serve function sees it. */
struct acceptor_conn {
    int fd;                 /* owned by the acceptor: closed after serve returns */
    char peer[64];          /* "a.b.c.d:port" or "[v6]:port" of the remote end */
    struct acceptor *owner;
    /* ACCEPTOR_IDLE, _BUSY or _EVICTING; changed only through
     * acceptor_conn_claim / acceptor_conn_release and the acceptor. */
    atomic_int state;
};

/* A connection's state.  BUSY: shutting it down would fail work the peer
 * asked for (a frame being served, an answer owed, a queue pair in use);
 * the total cap's sharing never evicts it, nor an IDLE one with bytes
 * waiting to be read.  A connection that has asked for nothing yet (silent,
 * dripping a request) is IDLE.  EVICTING: the acceptor chose it to make
 * room and shut it down; it never becomes BUSY again.  The acceptor moves
 * IDLE to EVICTING and the serve function IDLE to BUSY, each by one
 * compare-and-swap, so a connection is never both claimed and evicted. */
enum { ACCEPTOR_IDLE, ACCEPTOR_BUSY, ACCEPTOR_EVICTING };

/* Claims c for work its peer asked for.  tcp claims after its poll says a
 * frame is there and before it reads a byte of it; the P2P handshake once a
 * whole request is read, before it answers; rdma once HELLO is answered
 * (its queue pair then carries traffic this side never sees).  True: c is
 * BUSY and is not evicted until released.  False: the acceptor already
 * chose c for eviction; the serve function ends the connection without
 * serving (a request read whole but not answered is one the peer sent to a
 * connection being shut down, as a request still dripping in is).  One
 * compare-and-swap, or one load when c is BUSY already. */
static inline bool acceptor_conn_claim(struct acceptor_conn *c)
{
    int was = ACCEPTOR_IDLE;
    if (atomic_load_explicit(&c->state, memory_order_relaxed) == ACCEPTOR_BUSY)
        return true;
    return atomic_compare_exchange_strong(&c->state, &was, ACCEPTOR_BUSY) || was == ACCEPTOR_BUSY;
}

/* Gives the claim up: nothing of the peer's is in progress or owed, so the
 * acceptor may evict c.  An EVICTING connection stays EVICTING. */
static inline void acceptor_conn_release(struct acceptor_conn *c)
{
    int was = ACCEPTOR_BUSY;
    atomic_compare_exchange_strong(&c->state, &was, ACCEPTOR_IDLE);
}

/* Serves one connection on its own thread; returns when done with it.  It
 * must return soon after acceptor_stopping() turns true (acceptor_stop also
 * shuts the socket down, which ends blocking calls on it). */
typedef void (*acceptor_serve_fn)(void *ctx, struct acceptor_conn *c);

struct acceptor_limits {
    unsigned max_total;     /* 0: the default, a quarter of RLIMIT_NOFILE (at least 16) */
    unsigned max_per_peer;  /* 0: no per-address cap */
    unsigned keepalive_s;   /* FERRY_KEEPALIVE_S: net_set_keepalive on every connection served; 0: off */
};

/* The key a peer's connections are counted by (per-peer cap, shares at the
 * total cap): its IPv4 address, as v4-mapped IPv6 (one host is one peer
 * whichever family it came in by), or its IPv6 address's /64 prefix (a
 * host is commonly handed a whole /64: 2^64 addresses for one attacker);
 * all zero ("unknown", no per-peer cap) for any other family. */
void acceptor_peer_key(const struct sockaddr_storage *ss, uint8_t key[16]);

/* The cap on connections in total that lim gives (its default filled in). */
unsigned acceptor_max_total(const struct acceptor_limits *lim);

/* Starts serving listen_fd (which the caller keeps owning) on a thread.
 * `what` names the port in log lines ("tcp", "handshake").  Returns 0 or
 * FERRY_ENOMEM / FERRY_EIO. */
int acceptor_start(int listen_fd, const char *what, const struct acceptor_limits *lim, acceptor_serve_fn serve,
                   void *ctx, struct acceptor **out);

/* Stops accepting, shuts every connection down, waits for every serve
 * function to return, and frees.  NULL accepted. */
void acceptor_stop(struct acceptor *a);

/* True once acceptor_stop has begun. */
bool acceptor_stopping(const struct acceptor *a);

/* Counters, for tests and logs. */
struct acceptor_stats {
    unsigned live;          /* connections being served now */
    uint64_t accepted;      /* connections handed to serve */
    uint64_t over_cap;      /* closed at once: over max_total or max_per_peer */
    uint64_t shed;          /* closed at once: the process was out of descriptors */
    uint64_t evicted;       /* shut down at the total cap to serve an address holding fewer */
};
void acceptor_get_stats(struct acceptor *a, struct acceptor_stats *out);

#endif

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tcp.c — the tcp transport: one-sided WRITE/READ over plain sockets.
 *
 * Initiator side: a peer holds `tcp_connections` connections, and opens more
 * (up to FERRY_TCP_MAX_CONNECTIONS, by default one per core, 4-16) while every
 * one of them has FERRY_TCP_GROW_BYTES in flight (by default 32 MiB over the
 * most it may open: the same total reaches the most on every host); a frame
 * goes to the connection with the fewest bytes in flight.  Each connection has a
 * sender thread (connects, says HELLO, then writes frames straight from the
 * caller's memory with sendmsg) and a receiver thread (tcp_conn.c: reads acks and READ
 * payload straight into the caller's memory, enforces deadlines).  While
 * nobody writes on a ready connection, the submitting thread writes a frame
 * itself (write_inline: no hand-off, no sender wake-up per batch) when it is
 * a READ request, part of a submit of at most FERRY_TCP_INLINE_BYTES, or the
 * last frame of a larger submit (whose others the senders copy in parallel), as
 * much as the socket takes without waiting; the sender writes the rest and
 * whatever was queued meanwhile.  (FERRY_TCP_READ_HANDOFF, off by default,
 * leaves large READ requests on a busy connection to the sender: the
 * submitter's sendmsg waits for the lock the receiver holds while it copies;
 * measured to move nothing on 16 CPUs.)  On a host with cores to spare
 * (FERRY_TCP_SPREAD) the engine cuts a submit of small blocks into a few
 * frames, each goes to a connection of its own and only the last is written
 * inline: their copies run at once on both sides.  One writer at a time (c->writing), in the
 * order frames entered the in-flight FIFO.  Responses
 * come back in order per connection, so in-flight frames are a FIFO.  Only
 * the receiver ends in-flight frames; that keeps "ended" and "memory no
 * longer touched" the same moment.
 *
 * From 8 cores both ends cap every socket's buffers (FERRY_TCP_SOCKBUF) so
 * that the bytes in flight stay in the caches between the two copies.
 *
 * Target side (tcp_serve.c, device memory in tcp_serve_dev.c): the common
 * acceptor (caps per peer and in total) and one thread per incoming
 * connection.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "acceptor.h"
#include "auth.h"
#include "config.h"
#include "err.h"
#include "log.h"
#include "net.h"
#include "device/device.h"
#include "transport/tcp/sockio.h"
#include "transport/transport.h"
#include "transport/tcp/tcp_wire.h"
#include "transport/tcp/tcp.h"
#include "trace.h"


/* ------------------------------------------------------------ helpers */

static void queue_push(struct xfer_frame **head, struct xfer_frame **tail, struct xfer_frame *f)
{
    f->next = NULL;
    if (*tail)
        (*tail)->next = f;
    else
        *head = f;
    *tail = f;
}

/* ------------------------------------------------------------ initiator: sender */

/* [Authentication,] then HELLO, by deadline (the connect's: both within
 * connect_timeout_ms). */
static int say_hello(struct tcp_conn *c, uint64_t deadline)
{
    struct tcp_transport *t = c->peer->t;
    char peer[96]; /* "[v6]:port" for an IPv6 peer; host is at most 63 bytes: it fits */
    (void)net_format_hostport(peer, sizeof peer, c->peer->host, c->peer->port);
    if (auth_enabled(t->host.auth)) {
        int rc = auth_client(c->fd, t->host.auth, AUTH_TCP, peer, deadline, NULL);
        if (rc)
            return rc;
    }
    const char *name = t->host.segment_name;
    size_t nl = strlen(name);
    if (nl > WIRE_MAX_NAME)
        nl = WIRE_MAX_NAME;
    struct wire_header h = {.type = WIRE_HELLO, .payload_len = nl, .epoch = c->peer->epoch};
    uint8_t raw[WIRE_HEADER_SIZE];
    wire_encode_header(&h, raw);
    struct iovec iov[2] = {{raw, sizeof raw}, {(void *)name, nl}};
    int rc = net_writev_full_deadline(c->fd, iov, 2, deadline);
    if (!rc)
        rc = net_read_full_deadline(c->fd, raw, sizeof raw, deadline);
    if (!rc)
        rc = wire_decode_header(raw, &h);
    if (!rc && h.type != WIRE_HELLO_ACK)
        rc = ferry_fail(FERRY_EPROTO, "expected HELLO_ACK, got type %u", h.type);
    if (rc || h.status == 0)
        return rc;
    if (!wire_status_allowed(h.type, h.status))
        return ferry_fail(FERRY_EPROTO, "the target answered HELLO with status %d, which no ferry target sends",
                          h.status);
    if (h.status == FERRY_ESTALE)
        return ferry_fail(FERRY_ESTALE, "the target restarted (engine id changed); reopen the segment");
    if (h.status == FERRY_EPERM)
        return ferry_fail(FERRY_EPERM, "the target refused the connection: it requires authentication "
                                       "(set the same FERRY_AUTH_KEY on both)");
    return ferry_fail(h.status, "the target refused the connection: %s", ferry_strerror(h.status));
}

/* Encodes frame f into the connection's write buffers (c->head, c->iov) and
 * points c->wiov at them.  Only the thread that owns the write side
 * (c->writing) calls it. */
static void encode_frame(struct tcp_conn *c, struct xfer_frame *f)
{
    struct wire_entry entries[WIRE_MAX_ENTRIES];
    struct wire_header h = {.id = f->wire_id};
    struct iovec *iov = c->iov;
    int iovcnt = 1;
    if (f->opcode == XFER_NOTIFY) {
        h.type = WIRE_NOTIFY;
        h.payload_len = f->notify_len;
        iov[iovcnt++] = (struct iovec){(void *)f->notify_msg, f->notify_len};
    } else {
        h.type = f->opcode == XFER_WRITE ? WIRE_WRITE : WIRE_READ;
        h.flags = f->opcode == XFER_READ ? WIRE_FLAG_TRAILER | WIRE_FLAG_TRAILER_STATUS : 0;
        h.nentries = (uint8_t)f->npieces;
        for (uint32_t i = 0; i < f->npieces; i++) {
            entries[i] = (struct wire_entry){f->pieces[i].remote, f->pieces[i].len};
            if (f->opcode == XFER_WRITE)
                iov[iovcnt++] = (struct iovec){f->pieces[i].local, f->pieces[i].len};
        }
        if (f->opcode == XFER_WRITE)
            h.payload_len = f->bytes;
        wire_encode_entries(entries, f->npieces, c->head + WIRE_HEADER_SIZE);
    }
    wire_encode_header(&h, c->head);
    iov[0] = (struct iovec){c->head, WIRE_HEADER_SIZE + (size_t)WIRE_ENTRY_SIZE * h.nentries};
    c->wiov = iov;
    c->wiovcnt = iovcnt;
    atomic_fetch_add(&c->peer->t->frames_sent, 1);
}

/* Gives the write side back after writing `sending` (rc 0: all of it). */
static void write_done(struct tcp_conn *c)
{
    pthread_mutex_lock(&c->lock);
    c->sending = NULL;
    c->writing = false;
    pthread_cond_broadcast(&c->sent);
    if (c->sendq_head) /* queued while this thread wrote: the sender writes them */
        pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

static void tcp_submit(void *tp, void *pp, struct xfer_frame *f);

/* A connection the target closed before HELLO was answered (its cap per
 * peer, its descriptors) while the peer has others not broken: the peer
 * stays at those (no replacement, no more growth) and the frames queued here
 * go to them, rather than failing.  Connections open at once, so the one
 * refused may be any of them.  Out of the peer's slots before it is marked
 * broken, so pick_conn neither returns nor replaces it; submitters that saw
 * it before queue until it is marked, and those frames are handed on too.
 * False if the peer no longer holds it (closing) or has no other: its frames
 * then end as on any broken connection. */
static bool conn_give_back(struct tcp_conn *c, int err, const char *msg)
{
    struct tcp_peer *p = c->peer;
    pthread_mutex_lock(&p->lock);
    unsigned i = p->nconns, others = 0;
    for (unsigned j = 0; j < p->nconns; j++) {
        if (p->conns[j] == c) {
            i = j;
        } else if (p->conns[j]) {
            pthread_mutex_lock(&p->conns[j]->lock);
            others += !p->conns[j]->broken;
            pthread_mutex_unlock(&p->conns[j]->lock);
        }
    }
    bool held = i < p->nconns && others > 0;
    if (held) {
        p->conns[i] = p->conns[--p->nconns];
        p->conns[p->nconns] = NULL;
        p->maxconns = p->nconns ? p->nconns : 1;
        c->next_dead = p->dead;
        p->dead = c;
    }
    unsigned now_max = p->maxconns;
    pthread_mutex_unlock(&p->lock);
    if (!held)
        return false;
    char peer[96];
    (void)net_format_hostport(peer, sizeof peer, p->host, p->port);
    LOG_WARN("tcp %s: another connection was refused (%s); staying at %u connections", peer, msg, now_max);
    tcp_conn_mark_broken(c, err, msg);
    pthread_mutex_lock(&c->lock);
    struct xfer_frame *f = c->sendq_head; /* nothing was sent: no frame is pending */
    c->sendq_head = c->sendq_tail = NULL;
    pthread_mutex_unlock(&c->lock);
    for (struct xfer_frame *next; f; f = next) {
        next = f->next;
        atomic_fetch_sub(&c->inflight_bytes, f->bytes);
        tcp_submit(p->t, p, f);
    }
    return true;
}

static void *sender_main(void *arg)
{
    struct tcp_conn *c = arg;
    struct tcp_transport *t = c->peer->t;
    (void)pthread_setname_np(pthread_self(), "ferry-tcp-send");
    /* connect, [authentication] and HELLO share one deadline: a peer slow to
     * accept leaves the handshake only what is left */
    uint64_t deadline = net_deadline(t->host.cfg->connect_timeout_ms);
    int fd = net_connect_deadline(c->peer->host, c->peer->port, deadline);
    int rc = fd < 0 ? fd : 0;
    if (fd >= 0) {
        pthread_mutex_lock(&c->lock);
        c->fd = fd;
        pthread_mutex_unlock(&c->lock);
        net_set_timeouts(fd, t->host.cfg->connect_timeout_ms, t->host.cfg->connect_timeout_ms);
        net_set_keepalive(fd, t->host.limits.keepalive_s);
        tcp_set_sockbuf(t, fd);
        rc = say_hello(c, deadline);
    }
    if (!rc) {
        /* frames in flight are bounded by their deadlines, enforced by the receiver */
        net_set_timeouts(fd, t->host.cfg->request_timeout_ms, t->host.cfg->request_timeout_ms);
        rc = pthread_create(&c->receiver, NULL, tcp_receiver_main, c) ? ferry_fail(FERRY_EIO, "thread") : 0;
        c->receiver_started = rc == 0;
    }
    if (rc) {
        /* conn_give_back uses the message before it submits anything (which may set another) */
        if (!(rc == FERRY_ECONN && conn_give_back(c, rc, ferry_last_error()))) {
            tcp_conn_mark_broken(c, rc, ferry_last_error());
            tcp_conn_fail_all(c);
        }
        atomic_fetch_add(&c->threads_done, 2);
        return NULL;
    }
    pthread_mutex_lock(&c->lock);
    c->ready = true;
    for (;;) {
        while (!c->broken && (c->writing || (!c->rest && !c->sendq_head)))
            pthread_cond_wait(&c->cond, &c->lock);
        if (c->broken)
            break;
        struct xfer_frame *f = c->rest;
        bool encoded = f != NULL; /* its submitter wrote part of it */
        c->rest = NULL;
        if (!f) {
            f = c->sendq_head;
            c->sendq_head = f->next;
            if (!c->sendq_head)
                c->sendq_tail = NULL;
            f->wire_id = c->next_id++;
            queue_push(&c->pend_head, &c->pend_tail, f);
            c->sending = f;
        }
        c->writing = true;
        pthread_mutex_unlock(&c->lock);
        if (!encoded)
            encode_frame(c, f);
        uint64_t payload = f->opcode == XFER_WRITE ? f->bytes : 0;
        TRACE(TR_TCP_SEND, payload);
        /* by the frame's own deadline: a target that stops reading (its
         * window shut, its kernel still answering keepalives) or reads a
         * little at a time cannot hold the frame, nor this thread, past it;
         * the connection, its frame half written, is dropped with it */
        rc = net_writev_full_deadline(c->fd, c->wiov, c->wiovcnt, f->deadline_ns);
        TRACE(TR_TCP_SENT, payload);
        write_done(c);
        if (rc == FERRY_ETIMEDOUT)
            rc = ferry_fail(rc, "request timed out: the target had not taken all of its frame by its deadline; "
                            "connection dropped");
        if (rc) {
            tcp_conn_mark_broken(c, rc, ferry_last_error());
            pthread_mutex_lock(&c->lock);
            break;
        }
        pthread_mutex_lock(&c->lock);
    }
    if (c->rest) { /* a submitter's frame left half written: the receiver fails it (it is in flight) */
        c->rest = NULL;
        c->sending = NULL;
        pthread_cond_broadcast(&c->sent);
    }
    pthread_mutex_unlock(&c->lock);
    atomic_fetch_add(&c->threads_done, 1);
    return NULL;
}

/* ------------------------------------------------------------ initiator: peers */

static struct tcp_conn *conn_create(struct tcp_peer *p)
{
    struct tcp_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->peer = p;
    c->fd = -1;
    atomic_store(&c->last_used_ns, now_ns());
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    pthread_cond_init(&c->sent, NULL);
    if (pthread_create(&c->sender, NULL, sender_main, c)) {
        free(c);
        return NULL;
    }
    return c;
}

static void conn_join_free(struct tcp_conn *c)
{
    pthread_join(c->sender, NULL);
    if (c->receiver_started)
        pthread_join(c->receiver, NULL);
    if (c->fd >= 0)
        close(c->fd);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    pthread_cond_destroy(&c->sent);
    free(c);
}

/* Joins dead connections whose threads have both finished. Peer lock held. */
static void reap_dead(struct tcp_peer *p)
{
    for (struct tcp_conn **pp = &p->dead; *pp;) {
        struct tcp_conn *c = *pp;
        pthread_mutex_lock(&c->lock);
        bool writing = c->writing; /* a submitter still writes on it (write_inline) */
        pthread_mutex_unlock(&c->lock);
        if (atomic_load(&c->threads_done) >= 2 && !writing) {
            *pp = c->next_dead;
            conn_join_free(c);
        } else {
            pp = &c->next_dead;
        }
    }
}

static int tcp_peer_open(void *tp, const struct ferry_descriptor *d, void **out)
{
    struct tcp_transport *t = tp;
    const char *ep = descriptor_transport(d, "tcp");
    if (!ep)
        return ferry_fail(FERRY_ENOTSUP, "segment %s offers no tcp endpoint", d->name);
    char host[WIRE_HOST_MAX];
    int port = 0;
    int rc = wire_decode_endpoint(ep, host, &port);
    if (rc)
        rc = ferry_fail(rc, "segment %s: %s", d->name, ferry_last_error());
    struct tcp_peer *p = rc ? NULL : calloc(1, sizeof *p);
    if (!rc && p) {
        p->t = t;
        snprintf(p->host, sizeof p->host, "%s", host);
        p->port = port;
        p->epoch = d->engine_id;
        p->nconns = t->host.cfg->tcp_connections;
        p->maxconns = p->nconns > t->max_conns ? p->nconns : t->max_conns;
        p->conns = calloc(p->maxconns, sizeof *p->conns);
        pthread_mutex_init(&p->lock, NULL);
        if (!p->conns) {
            free(p);
            p = NULL;
        }
    }
    if (rc)
        return rc;
    if (!p)
        return ferry_fail(FERRY_ENOMEM, "tcp peer");
    *out = p;
    return 0;
}

static void tcp_peer_close(void *tp, void *pp)
{
    (void)tp;
    struct tcp_peer *p = pp;
    pthread_mutex_lock(&p->lock);
    for (unsigned i = 0; i < p->nconns; i++) {
        if (p->conns[i]) {
            tcp_conn_mark_broken(p->conns[i], FERRY_ECANCELED, "segment closed");
            p->conns[i]->next_dead = p->dead;
            p->dead = p->conns[i];
            p->conns[i] = NULL;
        }
    }
    struct tcp_conn *dead = p->dead;
    p->dead = NULL;
    pthread_mutex_unlock(&p->lock);
    while (dead) {
        struct tcp_conn *next = dead->next_dead;
        conn_join_free(dead);
        dead = next;
    }
    pthread_mutex_destroy(&p->lock);
    free(p->conns);
    free(p);
}

/* Picks a connection and returns it locked, replacing broken ones (lazily:
 * connecting happens on the new sender thread): the first, in order, with less than a slice in
 * flight (with a spread: less than this frame), else the one with the
 * fewest bytes in flight.  Light traffic (a batch of small blocks) thus
 * stays on one connection: one sender and one receiver wake up per batch,
 * not one per frame; heavy traffic, and with a spread a submit's frames,
 * spread.  A frame cut for a spread wider than the connections open
 * (xfer_frame.spread) that finds each of them busy with a frame opens
 * another, up to that spread. */
static struct tcp_conn *pick_conn(struct tcp_peer *p, const struct xfer_frame *f)
{
    struct tcp_conn *best = NULL, *light = NULL;
    /* with a spread, a submit's frames each take their own connection (one
     * with less than a frame in flight) so that they move in parallel */
    uint64_t best_bytes = UINT64_MAX, light_bytes = p->t->host.cfg->slice_size, frame_bytes = f->bytes;
    unsigned spread = f->opcode == XFER_READ ? p->t->spread_read : p->t->spread;
    if ((spread > 1 || f->spread > 1) && frame_bytes < light_bytes)
        light_bytes = frame_bytes;
    uint64_t idle_ns = (uint64_t)p->t->host.cfg->idle_timeout_ms * 1000000u;
    pthread_mutex_lock(&p->lock);
    reap_dead(p);
    for (unsigned i = 0; i < p->nconns; i++) {
        struct tcp_conn *c = p->conns[i];
        if (c) {
            pthread_mutex_lock(&c->lock);
            int broken = c->broken;
            /* the target closes connections idle for idle_timeout_ms; retire
             * ours at half of it so a frame never races that close */
            bool idle = !broken && !c->sendq_head && !c->pend_head && idle_ns &&
                        now_ns() - atomic_load(&c->last_used_ns) >= idle_ns / 2;
            pthread_mutex_unlock(&c->lock);
            if (idle)
                tcp_conn_mark_broken(c, FERRY_ECANCELED, "idle connection retired");
            if (broken || idle) {
                c->next_dead = p->dead;
                p->dead = c;
                c = p->conns[i] = NULL;
            }
        }
        if (!c)
            c = p->conns[i] = conn_create(p);
        if (!c)
            continue;
        uint64_t b = atomic_load(&c->inflight_bytes);
        if (b < best_bytes) {
            best = c;
            best_bytes = b;
        }
        if (!light && b < light_bytes)
            light = c;
    }
    /* heavy traffic: every connection already has grow_bytes in flight, so
     * another stream (another sender, receiver and target thread) adds
     * throughput rather than idle threads; small blocks get here only when
     * their submit's spread asks for more connections than are open */
    bool spread_short = !light && f->spread > p->nconns && frame_bytes < p->t->host.cfg->slice_size;
    if (best && (best_bytes >= p->t->grow_bytes || spread_short) && p->nconns < p->maxconns) {
        struct tcp_conn *c = conn_create(p);
        if (c) {
            p->conns[p->nconns++] = c;
            best = c;
        }
    }
    struct tcp_conn *c = light ? light : best;
    /* locked before the peer lock goes: once it has, another submitter's
     * pick_conn may find c broken, move it to the dead list and free it */
    if (c)
        pthread_mutex_lock(&c->lock);
    pthread_mutex_unlock(&p->lock);
    return c;
}

/* The submitting thread writes the frame itself while nobody else writes
 * on the connection: no hand-off to the sender thread, no wake-up of it, on
 * the path of every batch.  It never waits for the socket: what the socket
 * does not take at once, the sender thread writes (c->rest).  Called with
 * c->lock held (a connection that is ready and idle); returns with it
 * released. */
static void write_inline(struct tcp_conn *c, struct xfer_frame *f)
{
    c->writing = true;
    f->wire_id = c->next_id++;
    queue_push(&c->pend_head, &c->pend_tail, f); /* in flight: the receiver may end it from now on */
    c->sending = f;
    pthread_mutex_unlock(&c->lock);
    encode_frame(c, f);
    TRACE(TR_TCP_SEND, f->opcode == XFER_WRITE ? f->bytes : 0);
    int rc = sockio_send_some(c->fd, &c->wiov, &c->wiovcnt);
    if (rc < 0) /* the frame is in flight: the receiver ends it with the error */
        tcp_conn_mark_broken(c, rc, ferry_last_error());
    if (rc <= 0) {
        write_done(c); /* the last touch of c: reap_dead frees it once nobody writes */
        return;
    }
    pthread_mutex_lock(&c->lock); /* the socket is full: the sender writes the rest */
    if (c->broken) {
        c->sending = NULL;
        pthread_cond_broadcast(&c->sent);
    } else {
        c->rest = f;
        pthread_cond_signal(&c->cond);
    }
    c->writing = false;
    pthread_mutex_unlock(&c->lock);
}

bool tcp_read_by_sender(uint64_t handoff, uint64_t frame_bytes, bool responses_in_flight)
{
    return handoff && frame_bytes >= handoff && responses_in_flight;
}

static void tcp_submit(void *tp, void *pp, struct xfer_frame *f)
{
    (void)tp;
    struct tcp_peer *p = pp;
    /* with no usable connection, the frame ends with the last broken one's
     * reason (a HELLO refused: FERRY_EVERSION, FERRY_ESTALE, FERRY_EPERM ...) */
    int err = FERRY_ECONN;
    char why[sizeof ((struct tcp_conn *)0)->broken_msg] = "tcp: no usable connection to the peer";
    for (int attempt = 0; attempt < 2; attempt++) {
        struct tcp_conn *c = pick_conn(p, f); /* locked */
        if (!c)
            break;
        if (!c->broken) {
            atomic_fetch_add(&c->inflight_bytes, f->bytes);
            atomic_store(&c->last_used_ns, now_ns());
            /* a READ (a request: header and entries), a small submit's
             * WRITEs (all of it), else only the last frame: a submitter
             * writing every frame of a large one would do all its copies on
             * one thread.  Never a staged WRITE handed over by the staging
             * worker: writing them would stall its retiring (with
             * FERRY_STAGING_INLINE_FIRST a submit's first one is not) */
            bool small = f->opcode != XFER_WRITE || f->bytes + f->more_bytes <= p->t->inline_bytes;
            bool to_sender = f->opcode == XFER_READ &&
                             tcp_read_by_sender(p->t->read_handoff, f->bytes, c->pend_head != NULL);
            if ((small || !f->more_bytes) && !to_sender && !f->handed_over && c->ready && !c->writing &&
                !c->rest && !c->sendq_head) {
                write_inline(c, f); /* unlocks */
                return;
            }
            queue_push(&c->sendq_head, &c->sendq_tail, f);
            if (!c->writing) /* else the writer hands the queue on when it is done */
                pthread_cond_signal(&c->cond);
            pthread_mutex_unlock(&c->lock);
            return;
        }
        err = c->broken;
        snprintf(why, sizeof why, "%s", c->broken_msg);
        pthread_mutex_unlock(&c->lock);
    }
    f->complete(f, err, 0, why);
}

/* ------------------------------------------------------------ ops table */

static int tcp_create(const struct transport_host *host, void **out)
{
    struct tcp_transport *t = calloc(1, sizeof *t);
    if (!t)
        return ferry_fail(FERRY_ENOMEM, "tcp transport");
    int mrc = tcp_config_read(host->cfg->slice_size, t);
    if (mrc) {
        free(t);
        return mrc;
    }
    t->host = *host;
    t->listen_fd = net_listen(host->listen_host, 0, host->cfg->connect_timeout_ms, &t->port);
    if (t->listen_fd < 0) {
        int rc = t->listen_fd;
        free(t);
        return rc;
    }
    int rc = acceptor_start(t->listen_fd, "tcp", &host->limits, tcp_serve_connection, t, &t->acceptor);
    if (rc) {
        close(t->listen_fd);
        free(t);
        return rc;
    }
    *out = t;
    return 0;
}

static unsigned tcp_get_spread(void *tp, int opcode, bool staged)
{
    const struct tcp_transport *t = tp;
    if (staged && t->spread_staged)
        return t->spread_staged;
    return opcode == XFER_READ ? t->spread_read : t->spread;
}

static void tcp_destroy(void *tp)
{
    struct tcp_transport *t = tp;
    acceptor_stop(t->acceptor);
    close(t->listen_fd);
    free(t);
}

static int tcp_describe(void *tp, char **json)
{
    struct tcp_transport *t = tp;
    char buf[128];
    snprintf(buf, sizeof buf, "{\"host\":\"%s\",\"port\":%d}", t->host.listen_host, t->port);
    *json = strdup(buf);
    return *json ? 0 : ferry_fail(FERRY_ENOMEM, "tcp describe");
}

static int tcp_can_access(void *tp, const struct memreg_region *r)
{
    (void)tp;
    return r->device_index < 0;
}

static void tcp_stats(void *tp, struct ferry_transport_stats *out)
{
    struct tcp_transport *t = tp;
    memset(out, 0, sizeof *out);
    strcpy(out->name, "tcp");
    out->bytes_written = atomic_load(&t->bytes_written);
    out->bytes_read = atomic_load(&t->bytes_read);
    out->bytes_served = atomic_load(&t->bytes_served);
    out->frames_sent = atomic_load(&t->frames_sent);
    out->refused = atomic_load(&t->refused);
}

const struct transport_ops ferry_tcp_transport = {
    .name = "tcp",
    .rank = 100,
    .create = tcp_create,
    .destroy = tcp_destroy,
    .describe = tcp_describe,
    .peer_open = tcp_peer_open,
    .peer_close = tcp_peer_close,
    .submit = tcp_submit,
    .spread = tcp_get_spread,
    .can_access = tcp_can_access,
    .stats = tcp_stats,
};

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tcp_conn.c — an initiator connection's receiving side: its receiver
 * thread reads the responses (and READ payload, straight into the frame's
 * memory) in the order frames were written, ends each frame, and enforces
 * deadlines; and the helpers that end frames and break connections, which
 * the sending side (tcp.c) uses too.  Only the receiver ends frames in
 * flight, so "ended" and "memory no longer touched" are one moment.  It
 * reads response headers that follow each other (acks, which carry no
 * payload, up to a READ's header) with one recv (c->ahead).  Between the
 * responses of a batch of small blocks it may look for the next bytes for a
 * while before it sleeps (FERRY_TCP_RECV_SPIN_US: no wake-up of an idle CPU
 * per response).
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "err.h"
#include "net.h"
#include "trace.h"
#include "transport/tcp/sockio.h"
#include "transport/tcp/tcp.h"
#include "transport/tcp/tcp_wire.h"

void tcp_frame_end(struct tcp_conn *c, struct xfer_frame *f, int err, uint64_t refused, const char *msg)
{
    struct tcp_transport *t = c->peer->t;
    /* A response can arrive before sendmsg has returned on the sender; the
     * frame's memory must outlive the send, so wait for it (briefly: the
     * peer has read the bytes already, or the socket is shut down). */
    pthread_mutex_lock(&c->lock);
    while (c->sending == f)
        pthread_cond_wait(&c->sent, &c->lock);
    pthread_mutex_unlock(&c->lock);
    atomic_fetch_sub(&c->inflight_bytes, f->bytes);
    if (err == 0 && refused == 0) {
        if (f->opcode == XFER_WRITE)
            atomic_fetch_add(&t->bytes_written, f->bytes);
        else if (f->opcode == XFER_READ)
            atomic_fetch_add(&t->bytes_read, f->bytes);
    }
    f->complete(f, err, refused, msg);
}

/* Marks a connection broken and wakes both threads.  Does not end frames:
 * the receiver (or the sender, if no receiver was started) does. */
void tcp_conn_mark_broken(struct tcp_conn *c, int err, const char *msg)
{
    pthread_mutex_lock(&c->lock);
    if (!c->broken) {
        c->broken = err;
        char peer[72]; /* "[" 63 "]:" 5 */
        (void)net_format_hostport(peer, sizeof peer, c->peer->host, c->peer->port); /* [v6]:port */
        snprintf(c->broken_msg, sizeof c->broken_msg, "tcp %s: %s", peer, msg);
        if (c->fd >= 0)
            shutdown(c->fd, SHUT_RDWR);
    }
    pthread_cond_broadcast(&c->cond);
    pthread_cond_broadcast(&c->sent);
    pthread_mutex_unlock(&c->lock);
}

/* Ends every frame still held by a broken connection. Frames past their
 * deadline end TIMEOUT, the rest with the breaking error. */
void tcp_conn_fail_all(struct tcp_conn *c)
{
    pthread_mutex_lock(&c->lock);
    struct xfer_frame *lists[2] = {c->pend_head, c->sendq_head};
    c->pend_head = c->pend_tail = c->sendq_head = c->sendq_tail = NULL;
    int err = c->broken ? c->broken : FERRY_ECONN;
    char msg[sizeof c->broken_msg];
    strcpy(msg, c->broken_msg);
    pthread_mutex_unlock(&c->lock);
    uint64_t now = now_ns();
    for (int l = 0; l < 2; l++) {
        for (struct xfer_frame *f = lists[l], *next; f; f = next) {
            next = f->next;
            if (now >= f->deadline_ns)
                tcp_frame_end(c, f, FERRY_ETIMEDOUT, 0, err == FERRY_ETIMEDOUT ? msg : "request timed out");
            else
                tcp_frame_end(c, f, err, 0, msg);
        }
    }
}

/* ------------------------------------------------------------ initiator: receiver */

/* How many response headers, from the oldest frame in flight on, may be
 * read at once: every response up to and including the first READ's (whose
 * payload follows its header) is a header alone (wire_decode_header refuses
 * an ack that says it carries payload).  At least one.  c->lock held. */
static unsigned headers_ahead(const struct tcp_conn *c)
{
    unsigned k = 0;
    for (const struct xfer_frame *f = c->pend_head; f && k < TCP_HEADERS_AHEAD; f = f->next) {
        k++;
        if (f->opcode == XFER_READ)
            break;
    }
    return k ? k : 1;
}

/* The next response header: from those read ahead, else from the socket
 * (with as many of the following ones as are there and may be read). */
static int next_header(struct tcp_conn *c, uint8_t raw[WIRE_HEADER_SIZE], uint64_t deadline)
{
    if (c->ahead_len < WIRE_HEADER_SIZE) {
        pthread_mutex_lock(&c->lock);
        size_t max = (size_t)headers_ahead(c) * WIRE_HEADER_SIZE;
        pthread_mutex_unlock(&c->lock);
        size_t got = 0;
        int rc = sockio_recv_between(c->fd, c->ahead + c->ahead_len, WIRE_HEADER_SIZE - c->ahead_len,
                                     max - c->ahead_len, deadline, &got);
        c->ahead_len += (unsigned)got;
        if (rc)
            return rc;
    }
    memcpy(raw, c->ahead, WIRE_HEADER_SIZE);
    c->ahead_len -= WIRE_HEADER_SIZE;
    memmove(c->ahead, c->ahead + WIRE_HEADER_SIZE, c->ahead_len);
    return 0;
}

/* Reads one response and ends the oldest frame in flight.  The whole
 * response, READ payload included, must arrive by that frame's deadline: a
 * target that drips bytes cannot hold a request past it. */
static int receive_response(struct tcp_conn *c, uint64_t *frame_bytes)
{
    uint8_t raw[WIRE_HEADER_SIZE];
    struct wire_header h;
    pthread_mutex_lock(&c->lock);
    struct xfer_frame *f = c->pend_head;
    pthread_mutex_unlock(&c->lock);
    uint64_t deadline = f ? f->deadline_ns : now_ns() + (uint64_t)c->peer->t->host.cfg->request_timeout_ms * 1000000u;
    int rc = next_header(c, raw, deadline);
    if (rc == FERRY_ETIMEDOUT)
        return ferry_fail(rc, "request timed out: no complete response by its deadline");
    if (rc)
        return rc;
    if ((rc = wire_decode_header(raw, &h)))
        return rc;
    if (!f || f->wire_id != h.id)
        return ferry_fail(FERRY_EPROTO, "response id %llu does not match the oldest frame",
                          (unsigned long long)h.id);
    if (!wire_status_allowed(h.type, h.status))
        return ferry_fail(FERRY_EPROTO, "the target answered with status %d, which no ferry target sends",
                          h.status);
    int want = f->opcode == XFER_WRITE ? WIRE_WRITE_ACK : f->opcode == XFER_READ ? WIRE_READ_RESP : WIRE_NOTIFY_ACK;
    if (h.type != want)
        return ferry_fail(FERRY_EPROTO, "response type %u, expected %d", h.type, want);
    uint64_t revoked = 0;
    int status = h.status;
    if (f->opcode == XFER_READ) {
        uint64_t expect = 0;
        for (uint32_t i = 0; i < f->npieces; i++)
            if (!(h.refused >> i & 1))
                expect += f->pieces[i].len;
        if (h.status == 0 && h.payload_len != expect)
            return ferry_fail(FERRY_EPROTO, "READ response carries %llu bytes, expected %llu",
                              (unsigned long long)h.payload_len, (unsigned long long)expect);
        /* the payload of every piece and the trailer: one scatter receive */
        struct iovec iov[WIRE_MAX_ENTRIES + 1];
        uint8_t tr[WIRE_TRAILER_SIZE];
        int n = 0;
        for (uint32_t i = 0; h.status == 0 && i < f->npieces; i++)
            if (!(h.refused >> i & 1))
                iov[n++] = (struct iovec){f->pieces[i].local, f->pieces[i].len};
        if (h.flags & WIRE_FLAG_TRAILER)
            iov[n++] = (struct iovec){tr, sizeof tr};
        /* the rest of a small payload, still arriving: looked for before sleeping, two looks' worth */
        uint64_t spin_ns = c->peer->t->recv_spin_ns;
        struct sockio_wake look = {.fd = -1, .spin_left_ns = f->bytes <= TCP_SPIN_FRAME_MAX ? 2 * spin_ns : 0};
        if ((rc = sockio_recvv_lowat(c->fd, iov, n, f->deadline_ns, spin_ns ? &look : NULL, NULL,
                                     c->peer->t->rcvlowat, NULL)))
            return rc == FERRY_ETIMEDOUT ? ferry_fail(rc, "request timed out: READ payload unfinished at "
                                                      "its deadline") : rc;
        if (h.flags & WIRE_FLAG_TRAILER) {
            struct wire_trailer trailer;
            if ((rc = wire_decode_trailer(tr, f->npieces, h.refused, &trailer)))
                return rc;
            revoked = trailer.revoked;
            status = status ? status : trailer.status;
        }
    }
    pthread_mutex_lock(&c->lock);
    c->pend_head = f->next;
    if (!c->pend_head)
        c->pend_tail = NULL;
    pthread_mutex_unlock(&c->lock);
    atomic_store(&c->last_used_ns, now_ns());
    char msg[200] = "", peer[72] = "";
    if (status || revoked || h.refused) /* named only in a message: [v6]:port */
        (void)net_format_hostport(peer, sizeof peer, c->peer->host, c->peer->port);
    if (status == FERRY_EIO || status == FERRY_ENOMEM || status == FERRY_ENODEV)
        snprintf(msg, sizeof msg, "target %s: a copy to or from its memory failed (%s: a device copy, or "
                 "memory it registered but has not mapped); its log says which", peer, ferry_strerror(status));
    else if (status)
        snprintf(msg, sizeof msg, "target %s refused the frame: %s", peer, ferry_strerror(status));
    else if (revoked)
        snprintf(msg, sizeof msg, "target %s unregistered the buffer while the READ was served", peer);
    else if (h.refused)
        snprintf(msg, sizeof msg, "target %s refused an access outside its registered buffers "
                 "(or unregistered while it was served)", peer);
    TRACE(TR_TCP_ACK, f->bytes);
    *frame_bytes = f->bytes;
    tcp_frame_end(c, f, status, h.refused | revoked, msg);
    return 0;
}

bool tcp_recv_look_worth(uint64_t spin_ns, uint64_t last_bytes, uint64_t gap_mean_ns)
{
    return spin_ns && last_bytes <= TCP_SPIN_FRAME_MAX && gap_mean_ns < spin_ns;
}

uint64_t tcp_spin_gap_learn(uint64_t gap_mean_ns, uint64_t gap_ns, uint64_t spin_ns)
{
    if (gap_ns > 4 * spin_ns)
        gap_ns = 4 * spin_ns;
    return gap_mean_ns - gap_mean_ns / 4 + gap_ns / 4;
}

static bool deadline_passed(struct tcp_conn *c)
{
    uint64_t now = now_ns();
    bool late = false;
    pthread_mutex_lock(&c->lock);
    for (int l = 0; l < 2 && !late; l++)
        for (struct xfer_frame *f = l ? c->sendq_head : c->pend_head; f && !late; f = f->next)
            late = now >= f->deadline_ns;
    pthread_mutex_unlock(&c->lock);
    return late;
}

void *tcp_receiver_main(void *arg)
{
    struct tcp_conn *c = arg;
    (void)pthread_setname_np(pthread_self(), "ferry-tcp-recv"); /* top -H, bench/tcp_threads.sh */
    /* FERRY_TCP_RECV_SPIN_US: the gaps between responses, lately, and the
     * last response's frame (no look before the first responses) */
    uint64_t spin_ns = c->peer->t->recv_spin_ns, gap_mean_ns = 4 * spin_ns, last_bytes = UINT64_MAX, last = now_ns();
    for (;;) {
        pthread_mutex_lock(&c->lock);
        int broken = c->broken;
        pthread_mutex_unlock(&c->lock);
        if (broken)
            break;
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        /* a header read ahead is there already: no wait */
        int n = c->ahead_len >= WIRE_HEADER_SIZE ? 1 : 0;
        if (!n && tcp_recv_look_worth(spin_ns, last_bytes, gap_mean_ns))
            n = sockio_spin_readable(c->fd, NULL, spin_ns); /* the next response within µs: no sleep */
        if (!n)
            n = poll(&p, 1, POLL_TICK_MS);
        if (n == 0 || (n < 0 && errno == EINTR)) {
            gap_mean_ns = 4 * spin_ns; /* a whole tick with no response: no more looks until they come close */
            if (deadline_passed(c))
                tcp_conn_mark_broken(c, FERRY_ETIMEDOUT, "request deadline passed; connection reset");
            continue;
        }
        if (spin_ns)
            gap_mean_ns = tcp_spin_gap_learn(gap_mean_ns, now_ns() - last, spin_ns);
        int rc = receive_response(c, &last_bytes);
        last = now_ns();
        if (rc)
            tcp_conn_mark_broken(c, rc, ferry_last_error());
    }
    tcp_conn_fail_all(c);
    atomic_fetch_add(&c->threads_done, 1);
    return NULL;
}

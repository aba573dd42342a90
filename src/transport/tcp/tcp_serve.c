/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tcp_serve.c — the tcp transport's target side: one thread per incoming
 * connection (started by the common acceptor, see tcp.c).  It authenticates
 * the peer when a key is set, validates every frame (tcp_wire.c) under one
 * deadline for its header and entries, checks every entry against the
 * registry and holds an access for it while served, reads WRITE payload
 * straight into registered host memory and sends READ payload from it
 * (device memory goes through a pinned bounce: tcp_serve_dev.c), and closes
 * a connection left idle.  Around small frames it looks for the next bytes
 * for a while before it sleeps (FERRY_TCP_SERVE_SPIN_US: where waking an
 * idle CPU costs more than looking).  A server_conn (tcp_serve.h) is owned
 * by its thread from accept to close.
 */

#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <sched.h>
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
#include "err.h"
#include "log.h"
#include "net.h"
#include "device/device.h"
#include "transport/tcp/sockio.h"
#include "transport/transport.h"
#include "transport/tcp/tcp_wire.h"
#include "transport/tcp/tcp.h"
#include "transport/tcp/tcp_serve.h"
#include "trace.h"

/* ------------------------------------------------------------ target side */

/* ---- accesses: every entry of the frame being served holds an access to
 * its registration (memreg.h) while this thread may touch that memory.  An
 * unregister revokes it and calls serve_cancel, which wakes this thread out
 * of any wait; the thread then stops touching the range (a WRITE discards
 * the rest of the entry's payload, a READ sends zeros in its place and says
 * so in the trailer), ends the access, and the entry counts as refused
 * (FERRY_ERANGE at the initiator).  The connection survives. */

static void serve_cancel(void *arg)
{
    struct server_conn *s = arg;
    atomic_store_explicit(&s->revoking, 1, memory_order_release);
    sockio_wake_signal(&s->wake);
}

/* Starts serving a frame (its deadline_ns was set when the header arrived). */
static void frame_begin(struct server_conn *s, unsigned nentries)
{
    s->nent = nentries;
    s->revoked_any = false;
    s->revoked = 0;
    s->copy_err = 0;
    /* a revocation not yet looked at stays: a deferred ack's accesses
     * (FERRY_TCP_ACK_ON_COPY) may be its, and the next look settles them */
    if (!(atomic_load(&s->ack.word) & 3))
        atomic_store(&s->revoking, 0);
}

/* Looks every entry of the frame up and starts its access (a run of them
 * under one lock round trip); refuses those outside the remote-accessible
 * registrations. */
static void entries_begin(struct server_conn *s, const struct wire_entry *e, unsigned n, const char *op)
{
    struct memreg_want w[WIRE_MAX_ENTRIES];
    for (unsigned i = 0; i < n; i++)
        w[i] = (struct memreg_want){e[i].addr, e[i].len, &s->ent[i].acc, &s->ent[i].region};
    for (unsigned i = 0; i < n;) {
        size_t begun;
        memreg_access_begin_many(s->t->host.registry, &w[i], n - i, 1, serve_cancel, s, &begun);
        for (unsigned end = i + (unsigned)begun; i < end; i++)
            s->ent[i].held = true, s->ent[i].refused = false;
        if (i == n)
            break;
        s->ent[i].held = false; /* entry i is outside them */
        s->ent[i].refused = true;
        atomic_fetch_add(&s->t->refused, 1);
        LOG_WARN("tcp: refused %s from %s of 0x%llx+%llu: outside remote-accessible buffers", op, s->from,
                 (unsigned long long)e[i].addr, (unsigned long long)e[i].len);
        i++;
    }
}

static void entry_end(struct server_conn *s, unsigned i)
{
    if (s->ent[i].held)
        memreg_access_end(s->t->host.registry, &s->ent[i].acc);
    s->ent[i].held = false;
}

/* Entry i's memory is registered but not there (SOCKIO_EFAULT: unmapped,
 * or PROT_NONE).  This thread stops touching it: a WRITE discards the rest
 * of its payload, a READ sends zeros in its place (the trailer says so).
 * The entry is refused and the frame answered FERRY_EIO naming the range,
 * logged; the bytes on the wire stay in step, so the connection survives. */
static void entry_fault(struct server_conn *s, unsigned i, const char *op)
{
    struct served_entry *se = &s->ent[i];
    if (!s->copy_err) {
        s->copy_err = FERRY_EIO;
        snprintf(s->copy_msg, sizeof s->copy_msg, "%s of 0x%llx+%llu: the registered memory is not mapped "
                 "(EFAULT)", op, (unsigned long long)se->acc.addr, (unsigned long long)se->acc.len);
    }
    entry_end(s, i);
    se->refused = true;
    s->revoked_any = true;
    s->revoked |= 1ull << i;
    atomic_fetch_add(&s->t->refused, 1);
}

/* Ends the access of every entry whose registration was revoked: from now
 * on this thread does not touch their memory (device copies it started are
 * waited for first). */
void tcp_serve_stop_revoked(struct server_conn *s)
{
    atomic_store(&s->revoking, 0);
    tcp_bounce_wait(s);
    for (unsigned i = 0; i < s->nent; i++) {
        struct served_entry *se = &s->ent[i];
        if (se->held && memreg_access_revoked(&se->acc)) {
            entry_end(s, i);
            se->refused = true;
            s->revoked_any = true;
            s->revoked |= 1ull << i;
            atomic_fetch_add(&s->t->refused, 1);
            LOG_WARN("tcp: 0x%llx+%llu was unregistered while %s accessed it; stopped", (unsigned long long)se->acc.addr,
                     (unsigned long long)se->acc.len, s->from);
        }
    }
}

/* Moves len stand-in bytes with `move` (sockio_discard: a WRITE's payload
 * thrown away for an entry refused or revoked mid-way; sockio_send_zeros: a
 * READ's zeros for an entry revoked).  A revocation while it waits for the
 * socket (serve_cancel's wake-up) ends the revoked accesses at once and the
 * move goes on: an unregister never waits for the peer (the wake-up is
 * consumed by the wait, so a wait that went on without looking at the
 * accesses held the unregister until the frame's deadline). */
static int serve_stand_in(struct server_conn *s, uint64_t len,
                          int (*move)(int, uint64_t, uint64_t, struct sockio_wake *, const atomic_int *, uint64_t *))
{
    for (;;) {
        uint64_t done = 0;
        int rc = move(s->fd, len, s->deadline_ns, &s->wake, &s->revoking, &done);
        len -= done;
        if (rc || !len)
            return rc;
        tcp_serve_stop_revoked(s);
    }
}

int tcp_serve_discard(struct server_conn *s, uint64_t len)
{
    return serve_stand_in(s, len, sockio_discard);
}

static int serve_send_zeros(struct server_conn *s, uint64_t len)
{
    return serve_stand_in(s, len, sockio_send_zeros);
}

uint64_t tcp_serve_end_accesses(struct tcp_transport *t, struct served_entry *ent, unsigned n)
{
    uint64_t refused = 0;
    for (unsigned i = 0; i < n; i++) {
        if (ent[i].held)
            memreg_access_end(t->host.registry, &ent[i].acc);
        ent[i].held = false;
        if (ent[i].refused)
            refused |= 1ull << i;
    }
    return refused;
}

static uint64_t frame_end_accesses(struct server_conn *s)
{
    uint64_t refused = tcp_serve_end_accesses(s->t, s->ent, s->nent);
    s->nent = 0;
    return refused;
}

/* WRITE payload of entry i into host memory from byte `done` on, straight
 * from the socket. */
static int recv_entry_host(struct server_conn *s, unsigned i, const struct wire_entry *e, uint64_t done)
{
    char *dst = (char *)(uintptr_t)e->addr;
    while (done < e->len) {
        if (!s->ent[i].held) /* revoked: the rest goes nowhere */
            return tcp_serve_discard(s, e->len - done);
        size_t got;
        int rc = sockio_recv(s->fd, dst + done, e->len - done, s->deadline_ns, &s->wake, &s->revoking, &got);
        done += got;
        if (rc == SOCKIO_EFAULT) {
            entry_fault(s, i, "WRITE");
            continue;
        }
        if (rc)
            return rc;
        if (done < e->len)
            tcp_serve_stop_revoked(s);
    }
    entry_end(s, i); /* all of it landed: no need to hold the range any longer */
    return 0;
}

/* WRITE payload of the held host entries [i, end) with one scatter receive
 * per wait (small blocks: one recvmsg for a whole frame, not one recv per
 * entry).  A revocation stops it between pieces; the entry it stopped in is
 * finished (or discarded, if it was the one revoked) on its own. */
static int recv_host_run(struct server_conn *s, unsigned i, unsigned end, const struct wire_entry *e)
{
    struct iovec iov[WIRE_MAX_ENTRIES];
    for (unsigned k = i; k < end; k++)
        iov[k - i] = (struct iovec){(void *)(uintptr_t)e[k].addr, (size_t)e[k].len};
    size_t got;
    int rc = sockio_recvv_lowat(s->fd, iov, (int)(end - i), s->deadline_ns, &s->wake, &s->revoking,
                                s->t->rcvlowat, &got);
    unsigned k = i;
    for (; k < end && iov[k - i].iov_len == 0; k++)
        entry_end(s, k); /* all of it landed */
    if (rc == SOCKIO_EFAULT && k < end) /* entry k or a later one: each alone from k on says which */
        rc = 0;
    if (rc || k == end)
        return rc;
    tcp_serve_stop_revoked(s);
    rc = recv_entry_host(s, k, &e[k], e[k].len - iov[k - i].iov_len);
    for (k++; !rc && k < end; k++) /* the rest of the run, as the loop in serve_write would */
        rc = s->ent[k].held ? recv_entry_host(s, k, &e[k], 0)
                            : tcp_serve_discard(s, e[k].len);
    return rc;
}

/* (TCP_SPIN_FRAME_MAX, tcp.h: the largest frame after which, and within
 * which, the thread looks before it sleeps (FERRY_TCP_SERVE_SPIN_US): a
 * batch of 128 x 4 KiB is two frames of 256 KiB.) */

/* ---- FERRY_TCP_ACK_HOLD: a small WRITE of host memory whose next frame is
 * already there holds its ack, which then leaves with the next response
 * (one sendmsg, and one wake-up of the initiator's receiver, for the two
 * frames of a batch of 128 small blocks).  At most one is held; it goes out
 * before anything else this thread sends (acks stay in frame order), before
 * a larger WRITE's payload or device copies, and as soon as the connection's
 * loop finds nothing to read. */

static int send_held_ack(struct server_conn *s)
{
    if (!s->ack_held)
        return 0;
    s->ack_held = false;
    return net_write_full_deadline(s->fd, s->held_ack, sizeof s->held_ack, s->deadline_ns);
}

/* Holds the ack of the WRITE just served when the knob allows it (the
 * connection's loop sends it at once if the next frame is not there yet:
 * one poll that replaces the loop's own); false: send it now. */
static bool hold_ack(struct server_conn *s, const struct wire_header *h, bool host_only, uint64_t refused)
{
    if (!s->t->ack_hold || h->payload_len > s->t->ack_hold || !host_only || s->copy_err || s->ack_held ||
        (atomic_load(&s->ack.word) & 3)) /* a device WRITE's ack still to go: this one must follow it */
        return false;
    struct wire_header ack = {.type = WIRE_WRITE_ACK, .id = h->id, .refused = refused};
    wire_encode_header(&ack, s->held_ack);
    s->ack_held = true;
    return true;
}

/* A response header (after an ack held or owed), by the frame's deadline
 * (s->deadline_ns): an initiator that stops reading, or reads a byte at a
 * time, loses its connection then, and this thread serves nobody else.  The
 * socket's own room is tried first: no clock, no poll while it takes it. */
static int send_response(struct server_conn *s, uint8_t type, uint64_t id, int status, uint64_t refused,
                         uint64_t payload)
{
    int rc = tcp_settle_ack(s); /* an earlier WRITE's ack goes first */
    if (rc)
        return rc;
    struct wire_header h = {.type = type, .id = id, .status = status, .refused = refused, .payload_len = payload};
    uint8_t raw[WIRE_HEADER_SIZE];
    wire_encode_header(&h, raw);
    struct iovec iov[2] = {{s->held_ack, sizeof s->held_ack}, {raw, sizeof raw}};
    int first = s->ack_held ? 0 : 1; /* a held ack goes first, in the same sendmsg */
    s->ack_held = false;
    return net_writev_full_deadline(s->fd, iov + first, 2 - first, s->deadline_ns);
}

static int serve_write(struct server_conn *s, const struct wire_header *h, const struct wire_entry *e)
{
    struct tcp_transport *t = s->t;
    int rc = 0;
    TRACE(TR_SRV_FRAME, h->nentries);
    frame_begin(s, h->nentries);
    entries_begin(s, e, h->nentries, "WRITE");
    /* the rest of a small payload, still arriving: looked for before sleeping, two looks' worth */
    s->frame_bytes = h->payload_len;
    s->wake.spin_left_ns = h->payload_len <= TCP_SPIN_FRAME_MAX ? 2 * t->serve_spin_ns : 0;
    bool host_only = true;
    for (unsigned i = 0; i < h->nentries; i++)
        host_only = host_only && !(s->ent[i].held && s->ent[i].region.device_index >= 0);
    if (s->ack_held && (h->payload_len > t->ack_hold || !host_only))
        rc = send_held_ack(s); /* not behind this frame's payload or device copies */
    for (unsigned i = 0; !rc && i < h->nentries;) {
        unsigned end = i;
        while (end < h->nentries && s->ent[end].held && s->ent[end].region.device_index < 0)
            end++;
        if (end > i) {
            rc = recv_host_run(s, i, end, e);
            i = end;
        } else if (!s->ent[i].held) {
            rc = tcp_serve_discard(s, e[i].len);
            i++;
        } else {
            end = i + 1;
            while (end < h->nentries && s->ent[end].held && s->ent[end].region.device_index >= 0 &&
                   strcmp(s->ent[end].region.location, s->ent[i].region.location) == 0)
                end++;
            unsigned taken = 0;
            rc = tcp_recv_device_run(s, i, end, e, &taken);
            i += taken ? taken : 1;
            if (!rc)
                tcp_pipe_writes(s);
        }
    }
    TRACE(TR_SRV_PAYLOAD, h->payload_len);
    if (!rc && (s->b.n || s->b.inflight) && t->ack_on_copy && tcp_defer_ack(s, h, e)) {
        TRACE(TR_SRV_ANSWERED, h->payload_len); /* the ack goes when its copies are done */
        return 0;
    }
    if (!rc && (s->b.n || s->b.inflight)) {
        rc = tcp_flush_writes(s); /* the bytes are in device memory before the ack */
        TRACE(TR_SRV_COPY, h->payload_len);
    }
    tcp_bounce_drain(s); /* a failed frame: copies it started end before its accesses */
    uint64_t refused = frame_end_accesses(s);
    if (!rc && s->copy_err)
        LOG_WARN("tcp: WRITE %llu from %s failed: %s", (unsigned long long)h->id, s->from, s->copy_msg);
    for (unsigned i = 0; !rc && !s->copy_err && i < h->nentries; i++)
        if (!(refused >> i & 1))
            atomic_fetch_add(&t->bytes_served, e[i].len);
    if (!rc && !hold_ack(s, h, host_only, refused))
        rc = send_response(s, WIRE_WRITE_ACK, h->id, s->copy_err, refused, 0);
    TRACE(TR_SRV_ANSWERED, h->payload_len);
    return rc;
}

/* Sends iovecs [k, end) of the READ response; once an entry's access has
 * ended, what is left of its iovecs goes out as zeros. */
int tcp_serve_send_iovs(struct server_conn *s, int k, int end)
{
    int rc = 0;
    bool one_by_one = false; /* after an EFAULT: which iovec it was (a sendmsg moves all of a chunk or none) */
    while (!rc && k < end) {
        int own = s->iov_entry[k];
        if (own >= 0 && !s->ent[own].held) {
            if (!s->trailer)
                return ferry_fail(FERRY_ERANGE, "memory %s was reading was unregistered mid-response, and it "
                                  "reads no trailer: closing the connection", s->from);
            rc = serve_send_zeros(s, s->iov[k++].iov_len);
            continue;
        }
        int stop = k + 1;
        while (stop < end && !(s->iov_entry[stop] >= 0 && !s->ent[s->iov_entry[stop]].held))
            stop++;
        int tk = s->trailer_iov;
        if (tk >= k && tk < stop && s->iov[tk].iov_len == WIRE_TRAILER_SIZE) /* not begun: what it says now */
            wire_encode_trailer(&(struct wire_trailer){.revoked = s->revoked, .status = s->copy_err}, s->tr);
        if (one_by_one)
            stop = k + 1;
        rc = sockio_sendv(s->fd, &s->iov[k], stop - k, s->deadline_ns, &s->wake, &s->revoking, NULL);
        while (k < stop && s->iov[k].iov_len == 0)
            k++;
        if (rc == SOCKIO_EFAULT && !one_by_one) {
            one_by_one = true;
            rc = 0;
        } else if (rc == SOCKIO_EFAULT && k < stop && s->iov_entry[k] >= 0) { /* zeros for the rest of it */
            entry_fault(s, (unsigned)s->iov_entry[k], "READ");
            if (!s->trailer)
                return ferry_fail(FERRY_EIO, "READ from %s: %s, and it reads no trailer: closing the connection",
                                  s->from, s->copy_msg);
            rc = 0;
        } else if (!rc && k < stop)
            tcp_serve_stop_revoked(s);
    }
    return rc;
}

static int add_read_iov(struct server_conn *s, void *base, size_t len, int entry)
{
    if (s->iovcnt == READ_IOVS) {
        int rc = tcp_flush_reads(s);
        if (rc)
            return rc;
    }
    s->iov_entry[s->iovcnt] = entry;
    s->iov[s->iovcnt++] = (struct iovec){base, len};
    return 0;
}

static int serve_read(struct server_conn *s, const struct wire_header *h, const struct wire_entry *e)
{
    struct tcp_transport *t = s->t;
    uint64_t refused = 0, payload = 0;
    TRACE(TR_SRV_FRAME, h->nentries);
    int rc = tcp_settle_ack(s); /* an earlier WRITE's ack, and its copies, first */
    if (rc)
        return rc;
    tcp_bounce_drain(s); /* what that WRITE left in the bounce */
    frame_begin(s, h->nentries);
    s->trailer = (h->flags & WIRE_FLAG_TRAILER) != 0;
    s->trailer_status = s->trailer && (h->flags & WIRE_FLAG_TRAILER_STATUS) != 0;
    entries_begin(s, e, h->nentries, "READ");
    for (unsigned i = 0; i < h->nentries; i++) {
        if (s->ent[i].refused)
            refused |= 1ull << i;
        else
            payload += e[i].len;
    }
    struct wire_header rh = {.type = WIRE_READ_RESP, .id = h->id, .refused = refused, .payload_len = payload,
                             .flags = s->trailer ? WIRE_FLAG_TRAILER : 0};
    uint8_t raw[WIRE_HEADER_SIZE];
    wire_encode_header(&rh, raw);
    s->iovcnt = 0;
    s->trailer_iov = -1;
    if (s->ack_held) /* a WRITE's held ack leaves first, with the response */
        rc = add_read_iov(s, s->held_ack, sizeof s->held_ack, -1);
    s->ack_held = false;
    if (!rc)
        rc = add_read_iov(s, raw, sizeof raw, -1);
    /* host memory goes out straight from where it lies, device memory
     * through the bounce; one sendmsg for as much as possible */
    for (unsigned i = 0; !rc && i < h->nentries; i++) {
        if (refused >> i & 1)
            continue;
        if (s->ent[i].region.device_index < 0)
            rc = add_read_iov(s, (void *)(uintptr_t)e[i].addr, e[i].len, (int)i);
        else
            rc = tcp_send_entry_device(s, i, &e[i]);
    }
    /* the trailer goes out with the payload's last sendmsg (tcp_flush_reads
     * writes into it what was revoked before it leaves) */
    if (!rc && s->trailer && (rc = add_read_iov(s, s->tr, sizeof s->tr, -1)) == 0)
        s->trailer_iov = s->iovcnt - 1;
    if (!rc)
        rc = tcp_flush_reads(s);
    tcp_bounce_drain(s);
    s->iovcnt = 0;
    s->trailer_iov = -1;
    frame_end_accesses(s);
    if (!rc && s->copy_err)
        LOG_WARN("tcp: READ %llu from %s failed: %s", (unsigned long long)h->id, s->from, s->copy_msg);
    else if (!rc)
        atomic_fetch_add(&t->bytes_served, payload);
    s->frame_bytes = payload;
    TRACE(TR_SRV_ANSWERED, payload);
    return rc;
}

static int serve_notify(struct server_conn *s, const struct wire_header *h)
{
    uint8_t msg[WIRE_MAX_NOTIFY];
    /* delivered once the WRITEs before it are in device memory (and acked) */
    int rc = tcp_settle_ack(s);
    if (!rc)
        rc = send_held_ack(s);
    if (rc)
        return rc;
    /* under the frame's deadline: a message dripped in a byte per socket timeout would pin this thread */
    rc = net_read_full_deadline(s->fd, msg, (size_t)h->payload_len, s->deadline_ns);
    if (rc)
        return rc;
    s->t->host.deliver_notify(s->t->host.engine, s->from, s->peer, msg, (size_t)h->payload_len);
    return send_response(s, WIRE_NOTIFY_ACK, h->id, 0, 0, 0);
}

/* HELLO: [authentication,] then the initiator names itself and the engine id
 * it expects.  Everything must arrive within connect_timeout_ms in total.
 * `unable` is non-zero when this connection's own resources could not be
 * made (out of descriptors): the HELLO is answered FERRY_EBUSY then, so an
 * initiator is never told it is served by a connection about to drop. */
static int serve_hello(struct server_conn *s, int unable)
{
    struct tcp_transport *t = s->t;
    uint64_t deadline = net_deadline(t->host.cfg->connect_timeout_ms);
    uint8_t raw[WIRE_HEADER_SIZE];
    char name[WIRE_MAX_NAME + 1];
    struct wire_header h;
    bool authenticated = false;
    int rc = net_read_full_deadline(s->fd, raw, AUTH_PREFIX, deadline);
    if (!rc && auth_is_hello(raw)) {
        rc = auth_server(s->fd, t->host.auth, AUTH_TCP, raw, s->peer, deadline, NULL);
        authenticated = rc == 0;
        if (!rc)
            rc = net_read_full_deadline(s->fd, raw, AUTH_PREFIX, deadline);
    }
    if (!rc)
        rc = net_read_full_deadline(s->fd, raw + AUTH_PREFIX, WIRE_HEADER_SIZE - AUTH_PREFIX, deadline);
    if (!rc)
        rc = wire_decode_header(raw, &h);
    if (!rc && h.type != WIRE_HELLO)
        rc = ferry_fail(FERRY_EPROTO, "first frame is type %u, not HELLO", h.type);
    if (!rc)
        rc = net_read_full_deadline(s->fd, name, (size_t)h.payload_len, deadline);
    if (rc)
        return rc;
    log_sanitize(name, (size_t)h.payload_len, s->from, sizeof s->from);
    int status = 0;
    s->deadline_ns = deadline; /* the answer too: one deadline for [authentication,] HELLO and HELLO_ACK */
    if (unable)
        status = FERRY_EBUSY;
    else if (auth_enabled(t->host.auth) && !authenticated)
        status = FERRY_EPERM;
    else if (h.epoch != t->host.engine_id)
        status = FERRY_ESTALE;
    rc = send_response(s, WIRE_HELLO_ACK, h.id, status, 0, 0);
    if (!rc && status == FERRY_EBUSY)
        rc = ferry_fail(status, "this target could not make the connection's wake-up descriptor (out of descriptors?)");
    else if (!rc && status == FERRY_EPERM)
        rc = ferry_fail(status, "it did not authenticate (this engine has FERRY_AUTH_KEY set)");
    else if (!rc && status)
        rc = ferry_fail(status, "HELLO expects engine %016llx, this is engine %016llx (restarted?)",
                        (unsigned long long)h.epoch, (unsigned long long)t->host.engine_id);
    return rc;
}

/* Bytes of the next frame's header and entries.  A WRITE acked from its
 * copies' completion (FERRY_TCP_ACK_ON_COPY) may still hold its accesses
 * meanwhile: an unregister then settles it (its copies are waited for, its
 * accesses end) rather than wait for the peer's next bytes, which a peer
 * that sent part of a header and stalls would hold until the deadline. */
static int recv_frame_bytes(struct server_conn *s, uint8_t *buf, size_t len, uint64_t deadline)
{
    for (;;) {
        bool owed = (atomic_load(&s->ack.word) & 3) != 0;
        size_t got = 0;
        int rc = sockio_recv(s->fd, buf, len, deadline, owed ? &s->wake : NULL, owed ? &s->revoking : NULL, &got);
        buf += got;
        len -= got;
        if (rc || !len)
            return rc;
        tcp_serve_stop_revoked(s); /* (no frame's entries yet: the deferred ack's settle) */
    }
}

static int serve_frame(struct server_conn *s)
{
    uint8_t raw[WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE * WIRE_MAX_ENTRIES];
    struct wire_header h;
    struct wire_entry e[WIRE_MAX_ENTRIES];
    /* header and entries: one deadline for both, however they are sliced */
    uint64_t deadline = net_deadline(s->t->host.cfg->connect_timeout_ms);
    s->deadline_ns = net_deadline(s->t->host.cfg->request_timeout_ms);
    s->wake.spin_left_ns = 0; /* serve_write gives a small WRITE's payload its looks */
    s->frame_bytes = 0;
    /* sockio_recv reads first and polls only once the socket is drained:
     * the entries (and often the header) are already there */
    int rc = recv_frame_bytes(s, raw, WIRE_HEADER_SIZE, deadline);
    if (!rc)
        rc = wire_decode_header(raw, &h);
    if (!rc && h.nentries)
        rc = recv_frame_bytes(s, raw + WIRE_HEADER_SIZE, (size_t)h.nentries * WIRE_ENTRY_SIZE, deadline);
    if (!rc && h.nentries)
        rc = wire_decode_entries(raw + WIRE_HEADER_SIZE, &h, e);
    if (rc)
        return rc;
    switch (h.type) {
    case WIRE_WRITE:
        return serve_write(s, &h, e);
    case WIRE_READ:
        return serve_read(s, &h, e);
    case WIRE_NOTIFY:
        return serve_notify(s, &h);
    default:
        return ferry_fail(FERRY_EPROTO, "unexpected frame type %u from an initiator", h.type);
    }
}

/* A connection quiet this long gives its device bounce back (4 MiB of pinned
 * memory; tcp_bounce_release_idle): long against the gaps inside a burst of
 * transfers, where allocating it again (a pinned allocation, a millisecond
 * or more on CUDA) would cost, short against the idle timeout (120 s by
 * default) that otherwise held it. */
#define BOUNCE_IDLE_MS 1000u

/* FERRY_TCP_SERVE_SPIN_US between frames: the thread looks for the next
 * frame before it sleeps only after a small frame (what one looks for is a
 * batch of small blocks' next frame: larger ones take longer than a look
 * to serve, and were measured no better with it) and while the gaps between
 * frames were shorter than the look, lately (a moving mean of gaps, each
 * counted as at most four looks so that a burst after a pause is learnt
 * within a few frames): a connection that has gone quiet sleeps at once and
 * costs nothing. */
static bool spin_worth(const struct server_conn *s, uint64_t gap_mean_ns)
{
    uint64_t spin_ns = s->t->serve_spin_ns;
    return spin_ns && s->frame_bytes <= TCP_SPIN_FRAME_MAX && gap_mean_ns < spin_ns;
}


/* One incoming connection, on its own thread (common/acceptor.c): HELLO,
 * then frames until the peer leaves, breaks the protocol, misses a frame
 * deadline or stays silent for idle_timeout_ms. */
void tcp_serve_connection(void *ctx, struct acceptor_conn *c)
{
    struct tcp_transport *t = ctx;
    (void)pthread_setname_np(pthread_self(), "ferry-tcp-serve"); /* the acceptor's thread for this connection */
    struct server_conn *s = calloc(1, sizeof *s);
    if (!s)
        return;
    s->t = t;
    s->fd = c->fd;
    s->peer = c->peer;
    s->ent = s->ent_bufs[0];
    strcpy(s->from, "?");
    /* payload moves with blocking calls; these bound each of them */
    net_set_timeouts(s->fd, t->host.cfg->request_timeout_ms, t->host.cfg->request_timeout_ms);
    tcp_set_sockbuf(t, s->fd);
    /* revocations wake this thread (serve_cancel); made before the HELLO is
     * answered, so a connection that cannot have it is refused, not dropped */
    int unable = sockio_wake_init(&s->wake);
    s->wake_ready = unable == 0;
    int rc = serve_hello(s, unable);
    uint64_t idle_ns = (uint64_t)t->host.cfg->idle_timeout_ms * 1000000u, last = now_ns();
    uint64_t spin_ns = t->serve_spin_ns, gap_mean_ns = 4 * spin_ns; /* no look before the first frames */
    while (!rc && !acceptor_stopping(c->owner)) {
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        /* a WRITE whose ack waits for its copies: with nothing to read, wait for them here */
        if ((atomic_load(&s->ack.word) & 3) && poll(&p, 1, 0) == 0 && (rc = tcp_settle_ack(s)) != 0)
            break;
        /* a held ack: the next frame already there is served without another
         * wait; else the ack goes now */
        int n = s->ack_held ? poll(&p, 1, 0) : 0;
        if (n <= 0 && (rc = send_held_ack(s)) != 0)
            break;
        /* nothing served, nothing owed: the acceptor may give this slot to another peer */
        if (n <= 0 && !(atomic_load(&s->ack.word) & 3))
            acceptor_conn_release(c);
        if (n <= 0 && spin_worth(s, gap_mean_ns))
            n = sockio_spin_readable(s->fd, NULL, spin_ns); /* the next frame within µs: no sleep, no wake-up */
        if (n <= 0)
            n = poll(&p, 1, POLL_TICK_MS);
        if (n == 0 || (n < 0 && errno == EINTR)) {
            gap_mean_ns = 4 * spin_ns; /* a whole tick with no frame: no more looks until frames come close again */
            uint64_t quiet = now_ns() - last;
            if (idle_ns && quiet >= idle_ns) {
                LOG_INFO("tcp: closing the connection from %s (%s): idle for %u ms", s->from, s->peer,
                         t->host.cfg->idle_timeout_ms);
                break;
            }
            if (quiet >= BOUNCE_IDLE_MS * 1000000ull)
                tcp_bounce_release_idle(s);
            continue;
        }
        /* claimed before a byte of the frame is read: evicted while idle, it ends here, quietly */
        if (!acceptor_conn_claim(c))
            break;
        gap_mean_ns = tcp_spin_gap_learn(gap_mean_ns, now_ns() - last, spin_ns);
        rc = serve_frame(s);
        last = now_ns();
    }
    if (rc && rc != FERRY_ECONN && !acceptor_stopping(c->owner)) {
        atomic_fetch_add(&t->refused, 1);
        LOG_WARN("tcp: dropping the connection from %s (%s): %s: %s", s->from, s->peer, ferry_err_name(rc),
                 ferry_last_error());
    }
    (void)tcp_settle_ack(s); /* its copies done and its function returned: nothing runs for s any more */
    (void)send_held_ack(s); /* nothing was sent after it: the initiator still reads it in place */
    (void)ferry_device_copy_wait();
    shutdown(s->fd, SHUT_RDWR);
    if (s->wake_ready) /* no access of this thread is left to be cancelled */
        sockio_wake_destroy(&s->wake);
    tcp_bounce_free(s);
    free(s);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tcp_serve.c — the tcp transport's target side: one thread per incoming
 * connection (started by the common acceptor, see tcp.c).  It authenticates
 * the peer when a key is set, validates every frame (tcp_wire.c) under one
 * deadline for its header and entries, checks every entry against the
 * registry and holds an access for it while served, reads WRITE payload
 * straight into registered host memory (device memory through a pinned
 * bounce), sends READ payload from it, and closes a connection left idle.
 * A server_conn is owned by its thread from accept to close.
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
#include "trace.h"

#define BOUNCE_SIZE (4u << 20) /* target-side bounce for device memory */
#define BOUNCE_COPIES 64
/* Device copies start once this many bytes wait in the bounce, so the
 * device copies them while the socket moves the next ones. */
#define PIPE_BYTES (256u << 10)
#define READ_IOVS 256

struct bounce {
    const struct ferry_device_ops *owner;   /* whose pinned memory buf is */
    char *buf;
    size_t used;
    const struct ferry_device_ops *dev_ops; /* device of the pending copies */
    int dev;
    size_t n;                               /* copies waiting to start */
    struct ferry_copy copies[BOUNCE_COPIES];
    uint8_t copy_entry[BOUNCE_COPIES];      /* the frame entry each copy serves */
    int copy_iov[BOUNCE_COPIES];            /* READ: the iovec that sends its bytes */
    size_t started;                         /* bytes of buf whose copies have started */
    bool inflight;                          /* copies started on this thread's stream, not yet waited for */
    size_t flight_lo, flight_hi;            /* READ: the bounce bytes those copies fill */
};

/* An entry of the frame being served and its access to the registration. */
struct served_entry {
    struct memreg_access acc;
    struct memreg_region region;
    bool held;                        /* access begun and not yet ended */
    bool refused;                     /* outside the registrations, or revoked while served */
};

/* One incoming connection: allocated and freed by serve_connection, on the
 * connection's own thread.  deadline_ns is the deadline of the whole frame
 * being served (payload included), set when its header arrives. */
struct server_conn {
    struct tcp_transport *t;
    int fd;
    const char *peer;                 /* "a.b.c.d:port", for messages */
    char from[WIRE_MAX_NAME + 1];     /* the initiator's segment name, sanitized for logs */
    struct bounce b;                  /* allocated on the first device access */
    int iovcnt;                       /* READ response being gathered */
    struct iovec iov[READ_IOVS];
    int iov_entry[READ_IOVS];         /* entry whose registered memory iov[k] points into, or -1 */
    bool trailer;                     /* the READ being served wants a trailer */
    bool trailer_status;              /* ... and reads a status in it (WIRE_FLAG_TRAILER_STATUS) */
    int trailer_iov;                  /* iov[] index of the trailer, -1 until it is added */
    uint8_t tr[WIRE_TRAILER_SIZE];    /* the trailer: sent with the payload's last sendmsg */
    bool revoked_any;                 /* an access of this frame was revoked mid-way */
    int copy_err;                     /* the frame's first failed device copy (FERRY_E*), or 0 */
    char copy_msg[200];               /* its detail */
    uint64_t revoked;                 /* entries revoked mid-way (what the trailer says) */
    unsigned nent;                    /* entries of the frame being served */
    struct served_entry ent[WIRE_MAX_ENTRIES];
    uint64_t deadline_ns;             /* the frame's payload must have moved by then */
    struct sockio_wake wake;          /* signalled when one of its accesses is revoked */
    bool wake_ready;
    atomic_int revoking;
};

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

static void bounce_wait(struct server_conn *s);

/* Ends the access of every entry whose registration was revoked: from now
 * on this thread does not touch their memory (device copies it started are
 * waited for first). */
static void stop_revoked(struct server_conn *s)
{
    atomic_store(&s->revoking, 0);
    bounce_wait(s);
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

static uint64_t frame_end_accesses(struct server_conn *s)
{
    uint64_t refused = 0;
    for (unsigned i = 0; i < s->nent; i++) {
        entry_end(s, i);
        if (s->ent[i].refused)
            refused |= 1ull << i;
    }
    s->nent = 0;
    return refused;
}

/* ---- device memory on the target side: a pinned bounce per connection.
 * Payload for device memory is received into it (or sent from it), and the
 * device pieces move in batched copies on a stream the device layer keeps
 * for this thread, started every PIPE_BYTES so that copying overlaps the
 * socket (WRITE: the next bytes are received while the last ones go to the
 * device; READ: the first bytes are sent while the next ones come from it),
 * and waited for before the bounce is reused, before an access ends and
 * before the frame is answered.  A WRITE is acknowledged only after its
 * copies have completed.  A copy of an entry that was revoked before it
 * started is skipped.
 *
 * A device copy that fails (to start, or when waited for) fails its frame,
 * not the connection: the error is remembered (copy_err), no further copy
 * of the frame starts, the rest of its payload still moves so the stream
 * stays in step (a WRITE receives it and drops it; a READ sends zeros for
 * every byte no copy filled), and the frame is answered with the error:
 * the WRITE_ACK's status, or the READ trailer's (an initiator that cannot
 * read one loses the connection instead, as it cannot be told). */

/* Remembers the frame's first failed device copy. */
static void copy_failed(struct server_conn *s, int rc)
{
    if (s->copy_err)
        return;
    s->copy_err = wire_status_allowed(WIRE_WRITE_ACK, rc) ? rc : FERRY_EIO;
    snprintf(s->copy_msg, sizeof s->copy_msg, "%s", ferry_last_error());
}

/* Zeroes the bounce bytes of copies [0, n) that will not run (READ: the
 * bounce is their destination, and must not send what an earlier frame
 * left there). */
static void bounce_zero_unrun(struct server_conn *s, size_t n)
{
    struct bounce *b = &s->b;
    for (size_t j = 0; j < n; j++)
        if (b->copies[j].dst >= (void *)b->buf && b->copies[j].dst < (void *)(b->buf + BOUNCE_SIZE))
            memset(b->copies[j].dst, 0, b->copies[j].len);
}

static int bounce_ensure(struct server_conn *s, const struct ferry_device_ops *ops)
{
    struct bounce *b = &s->b;
    if (b->buf && b->owner == ops)
        return 0;
    if (b->buf)
        b->owner->host_free(b->buf);
    b->buf = NULL;
    int rc = ops->host_alloc(BOUNCE_SIZE, (void **)&b->buf);
    if (rc)
        return rc;
    b->owner = ops;
    return 0;
}

/* Room for `want` bytes of device dev, after flushing what cannot share a
 * batch with them; stores how many bytes fit in *room. */
static int bounce_room(struct server_conn *s, const struct ferry_device_ops *ops, int dev, uint64_t want,
                       size_t *room, int (*flush)(struct server_conn *))
{
    struct bounce *b = &s->b;
    if ((b->n || b->inflight) &&
        (b->dev_ops != ops || b->dev != dev || b->used == BOUNCE_SIZE || b->n == BOUNCE_COPIES)) {
        int rc = flush(s);
        if (rc)
            return rc;
    }
    int rc = bounce_ensure(s, ops);
    if (rc)
        return rc;
    b->dev_ops = ops;
    b->dev = dev;
    *room = BOUNCE_SIZE - b->used < want ? BOUNCE_SIZE - b->used : (size_t)want;
    return 0;
}

/* Drops the pending copies of entries whose access has ended or was
 * revoked (their bounce bytes are zeroed: a READ sends them as zeros). */
static void bounce_drop_revoked(struct server_conn *s)
{
    struct bounce *b = &s->b;
    if (atomic_load_explicit(&s->revoking, memory_order_acquire))
        stop_revoked(s);
    size_t k = 0;
    for (size_t j = 0; j < b->n; j++) {
        if (s->ent[b->copy_entry[j]].held) {
            b->copy_entry[k] = b->copy_entry[j];
            b->copy_iov[k] = b->copy_iov[j];
            b->copies[k++] = b->copies[j];
        } else if (b->copies[j].dst >= (void *)b->buf && b->copies[j].dst < (void *)(b->buf + BOUNCE_SIZE)) {
            memset(b->copies[j].dst, 0, b->copies[j].len);
        }
    }
    b->n = k;
}

/* Starts copies [0, n) of the pending ones (those of revoked entries
 * dropped first) and keeps the rest pending.  After a failed copy of the
 * frame they are dropped instead; a failure to start is remembered. */
static void bounce_start(struct server_conn *s, enum ferry_copy_dir dir, size_t n)
{
    struct bounce *b = &s->b;
    if (!n)
        return;
    int rc = s->copy_err ? s->copy_err : ferry_device_copy_start(b->dev_ops, b->dev, dir, b->copies, n);
    if (rc) {
        if (!s->copy_err) {
            copy_failed(s, rc);
            /* a failed start drained the copies in flight, which may have
             * failed too: what they were to fill is not sent either */
            if (b->inflight && b->flight_hi > b->flight_lo)
                memset(b->buf + b->flight_lo, 0, b->flight_hi - b->flight_lo);
            b->inflight = false;
            b->flight_lo = b->flight_hi = 0;
        }
        bounce_zero_unrun(s, n);
    } else {
        for (size_t j = 0; j < n; j++) { /* READ: the bounce range they fill */
            const char *dst = b->copies[j].dst;
            if (dst < b->buf || dst >= b->buf + BOUNCE_SIZE)
                continue;
            size_t lo = (size_t)(dst - b->buf), hi = lo + b->copies[j].len;
            bool empty = b->flight_hi == b->flight_lo;
            b->flight_lo = empty || lo < b->flight_lo ? lo : b->flight_lo;
            b->flight_hi = empty || hi > b->flight_hi ? hi : b->flight_hi;
        }
        b->inflight = true;
    }
    memmove(b->copies, b->copies + n, (b->n - n) * sizeof b->copies[0]);
    memmove(b->copy_entry, b->copy_entry + n, (b->n - n) * sizeof b->copy_entry[0]);
    memmove(b->copy_iov, b->copy_iov + n, (b->n - n) * sizeof b->copy_iov[0]);
    b->n -= n;
}

/* Waits for the copies started; a failure is remembered, and the bounce
 * bytes they were to fill are zeroed. */
static void bounce_wait(struct server_conn *s)
{
    struct bounce *b = &s->b;
    if (!b->inflight)
        return;
    b->inflight = false;
    int rc = ferry_device_copy_wait();
    if (rc) {
        copy_failed(s, rc);
        if (b->flight_hi > b->flight_lo)
            memset(b->buf + b->flight_lo, 0, b->flight_hi - b->flight_lo);
    }
    b->flight_lo = b->flight_hi = 0;
}

/* All pending WRITE copies started and done (or dropped after a failed
 * one: s->copy_err); the bounce is empty again. */
static int flush_writes(struct server_conn *s)
{
    struct bounce *b = &s->b;
    bounce_drop_revoked(s);
    bounce_start(s, FERRY_COPY_H2D, b->n);
    bounce_wait(s);
    b->n = b->used = b->started = 0;
    return 0;
}

/* WRITE: the copies of the bytes received so far start once PIPE_BYTES wait. */
static void pipe_writes(struct server_conn *s)
{
    struct bounce *b = &s->b;
    if (!b->n || b->used - b->started < PIPE_BYTES)
        return;
    bounce_drop_revoked(s);
    b->started = b->used;
    bounce_start(s, FERRY_COPY_H2D, b->n);
}

/* WRITE payload of entry i into host memory from byte `done` on, straight
 * from the socket. */
static int recv_entry_host(struct server_conn *s, unsigned i, const struct wire_entry *e, uint64_t done)
{
    char *dst = (char *)(uintptr_t)e->addr;
    while (done < e->len) {
        if (!s->ent[i].held) /* revoked: the rest goes nowhere */
            return sockio_discard(s->fd, e->len - done, s->deadline_ns, &s->wake);
        size_t got;
        int rc = sockio_recv(s->fd, dst + done, e->len - done, s->deadline_ns, &s->wake, &s->revoking, &got);
        done += got;
        if (rc)
            return rc;
        if (done < e->len)
            stop_revoked(s);
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
    int rc = sockio_recvv(s->fd, iov, (int)(end - i), s->deadline_ns, &s->wake, &s->revoking, &got);
    unsigned k = i;
    for (; k < end && iov[k - i].iov_len == 0; k++)
        entry_end(s, k); /* all of it landed */
    if (rc || k == end)
        return rc;
    stop_revoked(s);
    rc = recv_entry_host(s, k, &e[k], e[k].len - iov[k - i].iov_len);
    for (k++; !rc && k < end; k++) /* the rest of the run, as the loop in serve_write would */
        rc = s->ent[k].held ? recv_entry_host(s, k, &e[k], 0)
                            : sockio_discard(s->fd, e[k].len, s->deadline_ns, &s->wake);
    return rc;
}

/* WRITE payload of entry i into device memory from byte `done` on, through
 * the bounce. */
static int recv_entry_device(struct server_conn *s, unsigned i, const struct wire_entry *e, uint64_t done)
{
    struct bounce *b = &s->b;
    int dev;
    const struct ferry_device_ops *ops = ferry_device_of_location(s->ent[i].region.location, &dev);
    if (!ops)
        return ferry_fail(FERRY_ENODEV, "no device backend for %s", s->ent[i].region.location);
    while (done < e->len) {
        if (!s->ent[i].held)
            return sockio_discard(s->fd, e->len - done, s->deadline_ns, &s->wake);
        size_t n, got;
        int rc = bounce_room(s, ops, dev, e->len - done, &n, flush_writes);
        if (rc)
            return rc;
        if (!s->ent[i].held)
            continue;
        n = n < PIPE_BYTES ? n : PIPE_BYTES;
        rc = sockio_recv(s->fd, b->buf + b->used, n, s->deadline_ns, &s->wake, &s->revoking, &got);
        if (got) {
            b->copy_entry[b->n] = (uint8_t)i;
            b->copies[b->n++] = (struct ferry_copy){(void *)(uintptr_t)(e->addr + done), b->buf + b->used, got};
            b->used += got;
            done += got;
        }
        if (rc)
            return rc;
        pipe_writes(s);
        if (got < n)
            stop_revoked(s);
    }
    atomic_fetch_add(s->t->host.bytes_bounced, e->len);
    return 0;
}

/* WRITE payload of the held device entries [i, end) (one device): as many
 * whole entries as the bounce has room for land with one receive, not one
 * each (small blocks: a frame's worth per wait).  Returns how many entries
 * it finished in *taken (>= 1 unless it failed); an entry that does not fit,
 * or that a revocation stopped the receive in, is finished on its own. */
static int recv_device_run(struct server_conn *s, unsigned i, unsigned end, const struct wire_entry *e,
                           unsigned *taken)
{
    struct bounce *b = &s->b;
    int dev;
    const struct ferry_device_ops *ops = ferry_device_of_location(s->ent[i].region.location, &dev);
    if (!ops)
        return ferry_fail(FERRY_ENODEV, "no device backend for %s", s->ent[i].region.location);
    size_t room;
    int rc = bounce_room(s, ops, dev, e[i].len, &room, flush_writes);
    if (rc)
        return rc;
    room = BOUNCE_SIZE - b->used;
    uint64_t total = 0;
    unsigned k = i;
    while (k < end && b->n + (k - i) < BOUNCE_COPIES && total + e[k].len <= room &&
           (k == i || total + e[k].len <= PIPE_BYTES))
        total += e[k++].len;
    *taken = 1;
    if (k == i) /* the first entry does not fit whole */
        return recv_entry_device(s, i, &e[i], 0);
    size_t got = 0;
    char *base = b->buf + b->used;
    rc = sockio_recv(s->fd, base, total, s->deadline_ns, &s->wake, &s->revoking, &got);
    /* copies for what landed; a revoked entry's copy is dropped at the flush */
    uint64_t off = 0;
    unsigned j = i;
    for (; j < k && off + e[j].len <= got; off += e[j++].len) {
        b->copy_entry[b->n] = (uint8_t)j;
        b->copies[b->n++] = (struct ferry_copy){(void *)(uintptr_t)e[j].addr, base + off, e[j].len};
        atomic_fetch_add(s->t->host.bytes_bounced, e[j].len);
    }
    b->used += off;
    *taken = j - i;
    if (rc || j == k)
        return rc;
    /* a revocation stopped it inside entry j: what landed of j is kept
     * (if j is still held) and j finishes on its own from there */
    stop_revoked(s);
    uint64_t part = got - off;
    if (part && s->ent[j].held) {
        b->copy_entry[b->n] = (uint8_t)j;
        b->copies[b->n++] = (struct ferry_copy){(void *)(uintptr_t)e[j].addr, base + off, part};
        b->used += part;
    }
    *taken = j - i + 1;
    return s->ent[j].held ? recv_entry_device(s, j, &e[j], part)
                          : sockio_discard(s->fd, e[j].len - part, s->deadline_ns, &s->wake);
}

static int send_response(struct server_conn *s, uint8_t type, uint64_t id, int status, uint64_t refused,
                         uint64_t payload)
{
    struct wire_header h = {.type = type, .id = id, .status = status, .refused = refused, .payload_len = payload};
    uint8_t raw[WIRE_HEADER_SIZE];
    wire_encode_header(&h, raw);
    return net_write_full(s->fd, raw, sizeof raw);
}

static int serve_write(struct server_conn *s, const struct wire_header *h, const struct wire_entry *e)
{
    struct tcp_transport *t = s->t;
    int rc = 0;
    TRACE(TR_SRV_FRAME, h->nentries);
    frame_begin(s, h->nentries);
    entries_begin(s, e, h->nentries, "WRITE");
    for (unsigned i = 0; !rc && i < h->nentries;) {
        unsigned end = i;
        while (end < h->nentries && s->ent[end].held && s->ent[end].region.device_index < 0)
            end++;
        if (end > i) {
            rc = recv_host_run(s, i, end, e);
            i = end;
        } else if (!s->ent[i].held) {
            rc = sockio_discard(s->fd, e[i].len, s->deadline_ns, &s->wake);
            i++;
        } else {
            end = i + 1;
            while (end < h->nentries && s->ent[end].held && s->ent[end].region.device_index >= 0 &&
                   strcmp(s->ent[end].region.location, s->ent[i].region.location) == 0)
                end++;
            unsigned taken = 0;
            rc = recv_device_run(s, i, end, e, &taken);
            i += taken ? taken : 1;
            if (!rc)
                pipe_writes(s);
        }
    }
    TRACE(TR_SRV_PAYLOAD, h->payload_len);
    if (!rc && (s->b.n || s->b.inflight)) {
        rc = flush_writes(s); /* the bytes are in device memory before the ack */
        TRACE(TR_SRV_COPY, h->payload_len);
    }
    bounce_wait(s); /* a failed frame: copies it started end before its accesses */
    s->b.n = s->b.used = s->b.started = 0;
    uint64_t refused = frame_end_accesses(s);
    if (!rc && s->copy_err)
        LOG_WARN("tcp: WRITE %llu from %s failed: %s", (unsigned long long)h->id, s->from, s->copy_msg);
    for (unsigned i = 0; !rc && !s->copy_err && i < h->nentries; i++)
        if (!(refused >> i & 1))
            atomic_fetch_add(&t->bytes_served, e[i].len);
    if (!rc)
        rc = send_response(s, WIRE_WRITE_ACK, h->id, s->copy_err, refused, 0);
    TRACE(TR_SRV_ANSWERED, h->payload_len);
    return rc;
}

/* Sends iovecs [k, end) of the READ response; once an entry's access has
 * ended, what is left of its iovecs goes out as zeros. */
static int send_iovs(struct server_conn *s, int k, int end)
{
    int rc = 0;
    while (!rc && k < end) {
        int own = s->iov_entry[k];
        if (own >= 0 && !s->ent[own].held) {
            if (!s->trailer)
                return ferry_fail(FERRY_ERANGE, "memory %s was reading was unregistered mid-response, and it "
                                  "reads no trailer: closing the connection", s->from);
            rc = sockio_send_zeros(s->fd, s->iov[k++].iov_len, s->deadline_ns, &s->wake);
            continue;
        }
        int stop = k + 1;
        while (stop < end && !(s->iov_entry[stop] >= 0 && !s->ent[s->iov_entry[stop]].held))
            stop++;
        int tk = s->trailer_iov;
        if (tk >= k && tk < stop && s->iov[tk].iov_len == WIRE_TRAILER_SIZE) /* not begun: what it says now */
            wire_encode_trailer(&(struct wire_trailer){.revoked = s->revoked, .status = s->copy_err}, s->tr);
        rc = sockio_sendv(s->fd, &s->iov[k], stop - k, s->deadline_ns, &s->wake, &s->revoking, NULL);
        while (k < stop && s->iov[k].iov_len == 0)
            k++;
        if (!rc && k < stop)
            stop_revoked(s);
    }
    return rc;
}

/* How many of the pending copies from the first make up PIPE_BYTES (at
 * least one). */
static size_t pipe_group(const struct bounce *b)
{
    size_t n = 0, bytes = 0;
    while (n < b->n && (n == 0 || bytes < PIPE_BYTES))
        bytes += b->copies[n++].len;
    return n;
}

/* READ: the gathered iovecs go out after the device copies they point into.
 * iov_entry[k] names the entry whose registered memory iov[k] points into
 * (-1: the header or the bounce).  The copies go in groups of PIPE_BYTES:
 * while one group's bytes are sent, the next group is being copied. */
static int flush_reads(struct server_conn *s)
{
    struct bounce *b = &s->b;
    bounce_drop_revoked(s);
    if (s->revoked_any && !s->trailer)
        return ferry_fail(FERRY_ERANGE, "memory %s was reading was unregistered mid-response, and it reads "
                          "no trailer: closing the connection", s->from);
    size_t copied = b->used;
    int rc = 0;
    bounce_start(s, FERRY_COPY_D2H, pipe_group(b));
    for (int sent = 0; !rc && sent < s->iovcnt;) {
        bounce_wait(s); /* every copy started so far is done (or failed: zeros) */
        bounce_drop_revoked(s); /* revoked while the last bytes went out */
        if (s->copy_err && !s->trailer_status) {
            rc = ferry_fail(s->copy_err, "READ from %s: %s; it reads no status in a trailer: closing the "
                            "connection", s->from, s->copy_msg);
            break;
        }
        /* the iovecs up to the next group's first copy can go */
        int limit = b->n ? b->copy_iov[0] : s->iovcnt;
        bounce_start(s, FERRY_COPY_D2H, pipe_group(b));
        rc = send_iovs(s, sent, limit);
        sent = limit;
    }
    if (copied)
        TRACE(TR_SRV_COPY, copied);
    bounce_wait(s); /* a failure: what was started ends before the accesses */
    b->n = b->used = b->started = 0;
    s->iovcnt = 0;
    s->trailer_iov = -1;
    return rc;
}

static int add_read_iov(struct server_conn *s, void *base, size_t len, int entry)
{
    if (s->iovcnt == READ_IOVS) {
        int rc = flush_reads(s);
        if (rc)
            return rc;
    }
    s->iov_entry[s->iovcnt] = entry;
    s->iov[s->iovcnt++] = (struct iovec){base, len};
    return 0;
}

static int send_entry_device(struct server_conn *s, unsigned i, const struct wire_entry *e)
{
    struct bounce *b = &s->b;
    int dev;
    const struct ferry_device_ops *ops = ferry_device_of_location(s->ent[i].region.location, &dev);
    if (!ops)
        return ferry_fail(FERRY_ENODEV, "no device backend for %s", s->ent[i].region.location);
    for (uint64_t done = 0; done < e->len;) {
        size_t n;
        int rc = s->iovcnt == READ_IOVS ? flush_reads(s) : 0; /* room for the iovec first: it names the copy */
        if (!rc)
            rc = bounce_room(s, ops, dev, e->len - done, &n, flush_reads);
        if (rc)
            return rc;
        n = n < PIPE_BYTES ? n : PIPE_BYTES;
        char *dst = b->buf + b->used;
        b->copy_entry[b->n] = (uint8_t)i;
        b->copy_iov[b->n] = s->iovcnt;
        b->copies[b->n++] = (struct ferry_copy){dst, (const void *)(uintptr_t)(e->addr + done), n};
        b->used += n;
        done += n;
        s->iov_entry[s->iovcnt] = -1;
        s->iov[s->iovcnt++] = (struct iovec){dst, n};
    }
    atomic_fetch_add(s->t->host.bytes_bounced, e->len);
    return 0;
}

static int serve_read(struct server_conn *s, const struct wire_header *h, const struct wire_entry *e)
{
    struct tcp_transport *t = s->t;
    uint64_t refused = 0, payload = 0;
    TRACE(TR_SRV_FRAME, h->nentries);
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
    int rc = add_read_iov(s, raw, sizeof raw, -1);
    /* host memory goes out straight from where it lies, device memory
     * through the bounce; one sendmsg for as much as possible */
    for (unsigned i = 0; !rc && i < h->nentries; i++) {
        if (refused >> i & 1)
            continue;
        if (s->ent[i].region.device_index < 0)
            rc = add_read_iov(s, (void *)(uintptr_t)e[i].addr, e[i].len, (int)i);
        else
            rc = send_entry_device(s, i, &e[i]);
    }
    /* the trailer goes out with the payload's last sendmsg (flush_reads
     * writes into it what was revoked before it leaves) */
    if (!rc && s->trailer && (rc = add_read_iov(s, s->tr, sizeof s->tr, -1)) == 0)
        s->trailer_iov = s->iovcnt - 1;
    if (!rc)
        rc = flush_reads(s);
    bounce_wait(s);
    s->b.n = s->b.used = s->b.started = 0;
    s->iovcnt = 0;
    s->trailer_iov = -1;
    frame_end_accesses(s);
    if (!rc && s->copy_err)
        LOG_WARN("tcp: READ %llu from %s failed: %s", (unsigned long long)h->id, s->from, s->copy_msg);
    else if (!rc)
        atomic_fetch_add(&t->bytes_served, payload);
    TRACE(TR_SRV_ANSWERED, payload);
    return rc;
}

static int serve_notify(struct server_conn *s, const struct wire_header *h)
{
    uint8_t msg[WIRE_MAX_NOTIFY];
    int rc = net_read_full(s->fd, msg, (size_t)h->payload_len);
    if (rc)
        return rc;
    s->t->host.deliver_notify(s->t->host.engine, s->from, msg, (size_t)h->payload_len);
    return send_response(s, WIRE_NOTIFY_ACK, h->id, 0, 0, 0);
}

/* HELLO: [authentication,] then the initiator names itself and the engine id
 * it expects.  Everything must arrive within connect_timeout_ms in total. */
static int serve_hello(struct server_conn *s)
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
    if (auth_enabled(t->host.auth) && !authenticated)
        status = FERRY_EPERM;
    else if (h.epoch != t->host.engine_id)
        status = FERRY_ESTALE;
    rc = send_response(s, WIRE_HELLO_ACK, h.id, status, 0, 0);
    if (!rc && status == FERRY_EPERM)
        rc = ferry_fail(status, "it did not authenticate (this engine has FERRY_AUTH_KEY set)");
    else if (!rc && status)
        rc = ferry_fail(status, "HELLO expects engine %016llx, this is engine %016llx (restarted?)",
                        (unsigned long long)h.epoch, (unsigned long long)t->host.engine_id);
    return rc;
}

static int serve_frame(struct server_conn *s)
{
    uint8_t raw[WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE * WIRE_MAX_ENTRIES];
    struct wire_header h;
    struct wire_entry e[WIRE_MAX_ENTRIES];
    /* header and entries: one deadline for both, however they are sliced */
    uint64_t deadline = net_deadline(s->t->host.cfg->connect_timeout_ms);
    s->deadline_ns = net_deadline(s->t->host.cfg->request_timeout_ms);
    /* sockio_recv reads first and polls only once the socket is drained:
     * the entries (and often the header) are already there */
    int rc = sockio_recv(s->fd, raw, WIRE_HEADER_SIZE, deadline, NULL, NULL, NULL);
    if (!rc)
        rc = wire_decode_header(raw, &h);
    if (!rc && h.nentries)
        rc = sockio_recv(s->fd, raw + WIRE_HEADER_SIZE, (size_t)h.nentries * WIRE_ENTRY_SIZE, deadline, NULL, NULL,
                         NULL);
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
    strcpy(s->from, "?");
    /* payload moves with blocking calls; these bound each of them */
    net_set_timeouts(s->fd, t->host.cfg->request_timeout_ms, t->host.cfg->request_timeout_ms);
    int rc = serve_hello(s);
    if (!rc && (rc = sockio_wake_init(&s->wake)) == 0) /* revocations wake this thread: serve_cancel */
        s->wake_ready = true;
    uint64_t idle_ns = (uint64_t)t->host.cfg->idle_timeout_ms * 1000000u, last = now_ns();
    while (!rc && !acceptor_stopping(c->owner)) {
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        int n = poll(&p, 1, POLL_TICK_MS);
        if (n == 0 || (n < 0 && errno == EINTR)) {
            if (idle_ns && now_ns() - last >= idle_ns) {
                LOG_INFO("tcp: closing the connection from %s (%s): idle for %u ms", s->from, s->peer,
                         t->host.cfg->idle_timeout_ms);
                break;
            }
            continue;
        }
        rc = serve_frame(s);
        last = now_ns();
    }
    if (rc && rc != FERRY_ECONN && !acceptor_stopping(c->owner)) {
        atomic_fetch_add(&t->refused, 1);
        LOG_WARN("tcp: dropping the connection from %s (%s): %s: %s", s->from, s->peer, ferry_err_name(rc),
                 ferry_last_error());
    }
    shutdown(s->fd, SHUT_RDWR);
    if (s->wake_ready) /* no access of this thread is left to be cancelled */
        sockio_wake_destroy(&s->wake);
    if (s->b.buf)
        s->b.owner->host_free(s->b.buf);
    free(s);
}


/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tcp_serve_dev.c — the tcp target side's path for device memory: a pinned
 * bounce per served connection (allocated on its first device access, freed
 * once the connection has been quiet for BOUNCE_IDLE_MS, tcp_serve.c, or
 * with the connection), WRITE payload received into it and READ payload
 * sent from it, with the device copies started in pipe-sized groups
 * (FERRY_TCP_DEVICE_PIPE) on the stream the device layer keeps for the
 * thread so they overlap the socket, and a failed copy failing its frame.  Runs on the connection's own thread
 * (tcp_serve.c), which owns the bounce; the frame handling is there.
 */

#include <poll.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "config.h"
#include "err.h"
#include "log.h"
#include "net.h"
#include "device/device.h"
#include "transport/tcp/sockio.h"
#include "transport/tcp/tcp_serve.h"
#include "transport/tcp/tcp_wire.h"
#include "trace.h"

#define BOUNCE_SIZE (4u << 20) /* target-side bounce for device memory */
#define BOUNCE_TAIL 64u        /* after it: the word a deferred ack's mark stores into */
/* FERRY_TCP_ACK_ON_COPY's receiving thread, with nothing to read, polls the
 * mark this long before it blocks in the stream's wait (as a CUDA stream
 * synchronisation spins: the ack must not pay the driver thread's wake-up) */
#define ACK_SPIN_NS 200000u
/* Device copies start once this many bytes wait in the bounce, so the
 * device copies them while the socket moves the next ones
 * (FERRY_TCP_DEVICE_PIPE: s->t->dev_pipe, "the pipe" below). */
#define PIPE_DEFAULT (256u << 10)
#define PIPE_MIN (16u << 10)

int tcp_device_pipe(uint64_t *out)
{
    char wanted[64];
    snprintf(wanted, sizeof wanted, "bytes, %u-%u", PIPE_MIN, BOUNCE_SIZE);
    *out = PIPE_DEFAULT;
    int rc = config_env_number("FERRY_TCP_DEVICE_PIPE", false, PIPE_MIN, BOUNCE_SIZE, wanted, out);
    return rc < 0 ? rc : 0;
}

int tcp_ack_on_copy(unsigned *out)
{
    uint64_t v = 0;
    int rc = config_env_number("FERRY_TCP_ACK_ON_COPY", false, 0, 2, "0, 1 or 2", &v);
    *out = (unsigned)v;
    return rc < 0 ? rc : 0;
}

/* ---- device memory on the target side: a pinned bounce per connection.
 * Payload for device memory is received into it (or sent from it), and the
 * device pieces move in batched copies on a stream the device layer keeps
 * for this thread, started every pipe's worth so that copying overlaps the
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

/* A bounce a copy on an abandoned stream may still read or write is left
 * to the process's end: neither freed nor used again. */
static void bounce_leave_lost(struct server_conn *s)
{
    struct bounce *b = &s->b;
    LOG_ERROR("tcp: %s: a device copy on the connection's bounce %p was abandoned on a hung device; the "
              "bounce is left out of use", b->owner->kind, (void *)b->buf);
    b->buf = NULL;
    b->lost = false;
}

static int bounce_ensure(struct server_conn *s, const struct ferry_device_ops *ops)
{
    struct bounce *b = &s->b;
    if (b->lost && !b->used && !b->n && !b->inflight) /* replaced once nothing of a frame is in it */
        bounce_leave_lost(s);
    if (b->buf && b->owner == ops)
        return 0;
    if (b->buf && !b->lost)
        b->owner->host_free(b->buf);
    else if (b->buf)
        return ferry_fail(FERRY_EBUSY, "tcp: the bounce of a hung device copy is still in use");
    b->buf = NULL;
    int rc = ops->host_alloc(BOUNCE_SIZE + BOUNCE_TAIL, (void **)&b->buf);
    if (rc)
        return rc;
    memset(b->buf + BOUNCE_SIZE, 0, BOUNCE_TAIL); /* no mark reached yet */
    b->owner = ops;
    return 0;
}

/* Room for `want` bytes of device dev, after flushing what cannot share a
 * batch with them; stores how many bytes fit in *room. */
static int bounce_room(struct server_conn *s, const struct ferry_device_ops *ops, int dev, uint64_t want,
                       size_t *room, int (*flush)(struct server_conn *))
{
    struct bounce *b = &s->b;
    /* (bytes with nothing in flight: a deferred ack's, acked from its mark) */
    if ((b->n || b->inflight || b->used) &&
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
        tcp_serve_stop_revoked(s);
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
    if (atomic_load(&s->ack.word) & 3) /* only one frame's copies ahead of a deferred ack */
        (void)tcp_settle_ack(s); /* one cut short closed the connection: the frame's next read fails */
    int rc = s->copy_err ? s->copy_err : ferry_device_copy_start(b->dev_ops, b->dev, dir, b->copies, n);
    if (rc) {
        if (!s->copy_err && ferry_device_copy_lost())
            b->lost = true;
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
void tcp_bounce_wait(struct server_conn *s)
{
    struct bounce *b = &s->b;
    if (atomic_load(&s->ack.word) & 3) { /* the copies in flight are a deferred ack's */
        (void)tcp_settle_ack(s); /* cut short: the connection is closed (ack_cut_short) */
        return;
    }
    if (!b->inflight)
        return;
    b->inflight = false;
    int rc = ferry_device_copy_wait();
    atomic_store(&s->ack.fired, s->ack.queued); /* every ack function enqueued has run, or never will */
    if (rc) {
        if (ferry_device_copy_lost())
            b->lost = true;
        copy_failed(s, rc);
        if (b->flight_hi > b->flight_lo)
            memset(b->buf + b->flight_lo, 0, b->flight_hi - b->flight_lo);
    }
    b->flight_lo = b->flight_hi = 0;
}

void tcp_bounce_drain(struct server_conn *s)
{
    tcp_bounce_wait(s);
    s->b.n = s->b.used = s->b.started = 0;
}

void tcp_bounce_free(struct server_conn *s)
{
    if (s->b.buf && s->b.lost)
        bounce_leave_lost(s);
    if (s->b.buf)
        s->b.owner->host_free(s->b.buf);
    s->b.buf = NULL;
}

void tcp_bounce_release_idle(struct server_conn *s)
{
    const struct bounce *b = &s->b;
    if (b->buf && !b->n && !b->used && !b->inflight && !(atomic_load(&s->ack.word) & 3))
        tcp_bounce_free(s);
}

/* All pending WRITE copies started and done (or dropped after a failed
 * one: s->copy_err); the bounce is empty again. */
int tcp_flush_writes(struct server_conn *s)
{
    struct bounce *b = &s->b;
    bounce_drop_revoked(s);
    bounce_start(s, FERRY_COPY_H2D, b->n);
    tcp_bounce_drain(s);
    return 0;
}

/* WRITE: the copies of the bytes received so far start once a pipe's worth waits. */
void tcp_pipe_writes(struct server_conn *s)
{
    struct bounce *b = &s->b;
    if (!b->n || b->used - b->started < s->t->dev_pipe)
        return;
    bounce_drop_revoked(s);
    b->started = b->used;
    bounce_start(s, FERRY_COPY_H2D, b->n);
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
            return tcp_serve_discard(s, e->len - done);
        size_t n, got;
        int rc = bounce_room(s, ops, dev, e->len - done, &n, tcp_flush_writes);
        if (rc)
            return rc;
        if (!s->ent[i].held)
            continue;
        n = n < s->t->dev_pipe ? n : s->t->dev_pipe;
        rc = sockio_recv(s->fd, b->buf + b->used, n, s->deadline_ns, &s->wake, &s->revoking, &got);
        if (got) {
            b->copy_entry[b->n] = (uint8_t)i;
            b->copies[b->n++] = (struct ferry_copy){(void *)(uintptr_t)(e->addr + done), b->buf + b->used, got};
            b->used += got;
            done += got;
        }
        if (rc)
            return rc;
        tcp_pipe_writes(s);
        if (got < n)
            tcp_serve_stop_revoked(s);
    }
    atomic_fetch_add(s->t->host.bytes_bounced, e->len);
    return 0;
}

/* WRITE payload of the held device entries [i, end) (one device): as many
 * whole entries as the bounce has room for land with one receive, not one
 * each (small blocks: a frame's worth per wait).  Returns how many entries
 * it finished in *taken (>= 1 unless it failed); an entry that does not fit,
 * or that a revocation stopped the receive in, is finished on its own. */
int tcp_recv_device_run(struct server_conn *s, unsigned i, unsigned end, const struct wire_entry *e,
                        unsigned *taken)
{
    struct bounce *b = &s->b;
    int dev;
    const struct ferry_device_ops *ops = ferry_device_of_location(s->ent[i].region.location, &dev);
    if (!ops)
        return ferry_fail(FERRY_ENODEV, "no device backend for %s", s->ent[i].region.location);
    size_t room;
    int rc = bounce_room(s, ops, dev, e[i].len, &room, tcp_flush_writes);
    if (rc)
        return rc;
    room = BOUNCE_SIZE - b->used;
    uint64_t total = 0;
    unsigned k = i;
    while (k < end && b->n + (k - i) < BOUNCE_COPIES && total + e[k].len <= room &&
           (k == i || total + e[k].len <= s->t->dev_pipe))
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
    tcp_serve_stop_revoked(s);
    uint64_t part = got - off;
    if (part && s->ent[j].held) {
        b->copy_entry[b->n] = (uint8_t)j;
        b->copies[b->n++] = (struct ferry_copy){(void *)(uintptr_t)e[j].addr, base + off, part};
        b->used += part;
    }
    *taken = j - i + 1;
    return s->ent[j].held ? recv_entry_device(s, j, &e[j], part)
                          : tcp_serve_discard(s, e[j].len - part);
}

/* How many of the pending copies from the first make up a pipe's worth (at
 * least one). */
static size_t pipe_group(const struct server_conn *s, const struct bounce *b)
{
    size_t n = 0, bytes = 0;
    while (n < b->n && (n == 0 || bytes < s->t->dev_pipe))
        bytes += b->copies[n++].len;
    return n;
}

/* READ: the gathered iovecs go out after the device copies they point into.
 * iov_entry[k] names the entry whose registered memory iov[k] points into
 * (-1: the header or the bounce).  The copies go in pipe-sized groups:
 * while one group's bytes are sent, the next group is being copied. */
int tcp_flush_reads(struct server_conn *s)
{
    struct bounce *b = &s->b;
    bounce_drop_revoked(s);
    if (s->revoked_any && !s->trailer)
        return ferry_fail(FERRY_ERANGE, "memory %s was reading was unregistered mid-response, and it reads "
                          "no trailer: closing the connection", s->from);
    size_t copied = b->used;
    int rc = 0;
    bounce_start(s, FERRY_COPY_D2H, pipe_group(s, b));
    for (int sent = 0; !rc && sent < s->iovcnt;) {
        tcp_bounce_wait(s); /* every copy started so far is done (or failed: zeros) */
        bounce_drop_revoked(s); /* revoked while the last bytes went out */
        if (s->copy_err && !s->trailer_status) {
            rc = ferry_fail(s->copy_err, "READ from %s: %s; it reads no status in a trailer: closing the "
                            "connection", s->from, s->copy_msg);
            break;
        }
        /* the iovecs up to the next group's first copy can go */
        int limit = b->n ? b->copy_iov[0] : s->iovcnt;
        bounce_start(s, FERRY_COPY_D2H, pipe_group(s, b));
        rc = tcp_serve_send_iovs(s, sent, limit);
        sent = limit;
    }
    if (copied)
        TRACE(TR_SRV_COPY, copied);
    tcp_bounce_drain(s); /* a failure: what was started ends before the accesses */
    s->iovcnt = 0;
    s->trailer_iov = -1;
    return rc;
}

int tcp_send_entry_device(struct server_conn *s, unsigned i, const struct wire_entry *e)
{
    struct bounce *b = &s->b;
    int dev;
    const struct ferry_device_ops *ops = ferry_device_of_location(s->ent[i].region.location, &dev);
    if (!ops)
        return ferry_fail(FERRY_ENODEV, "no device backend for %s", s->ent[i].region.location);
    for (uint64_t done = 0; done < e->len;) {
        size_t n;
        int rc = s->iovcnt == READ_IOVS ? tcp_flush_reads(s) : 0; /* room for the iovec first: it names the copy */
        if (!rc)
            rc = bounce_room(s, ops, dev, e->len - done, &n, tcp_flush_reads);
        if (rc)
            return rc;
        n = n < s->t->dev_pipe ? n : s->t->dev_pipe;
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

/* ---- FERRY_TCP_ACK_ON_COPY: a WRITE's ack from its copies' completion
 * (struct deferred_ack, tcp_serve.h). */

static volatile uint32_t *ack_mark(struct server_conn *s)
{
    return (volatile uint32_t *)(void *)(s->b.buf + BOUNCE_SIZE);
}

/* The ack is this thread's or the driver thread's (claimed): ends the
 * frame's accesses (its copies are done) and counts its bytes if it moved. */
static void ack_release(struct server_conn *s, int status)
{
    struct deferred_ack *a = &s->ack;
    tcp_serve_end_accesses(s->t, a->ent, a->nent);
    a->nent = 0;
    if (!status)
        atomic_fetch_add(&s->t->bytes_served, a->bytes);
}

/* The function on the stream, on a driver thread, once the frame's copies
 * are done (never after a failure).  It runs in the order it was enqueued,
 * so the count of those run says which frame it is for: a frame this
 * thread already acked (from the mark) is left alone.  It writes what the
 * socket takes without waiting and never touches the connection after its
 * last store (the receiving thread waits for it before it frees it). */
static void ack_fire(void *arg)
{
    struct server_conn *s = arg;
    struct deferred_ack *a = &s->ack;
    uint64_t seq = atomic_fetch_add(&a->fired, 1) + 1;
    uint_fast64_t want = seq << 2 | ACK_PENDING;
    if (!atomic_compare_exchange_strong(&a->word, &want, seq << 2 | ACK_CLAIMED))
        return;
    ack_release(s, 0);
    ssize_t n = send(s->fd, a->raw, sizeof a->raw, MSG_DONTWAIT | MSG_NOSIGNAL);
    a->written = n > 0 ? (size_t)n : 0;
    atomic_store(&a->word, seq << 2 | (a->written == sizeof a->raw ? ACK_NONE : ACK_PARTIAL));
}

bool tcp_defer_ack(struct server_conn *s, const struct wire_header *h, const struct wire_entry *e)
{
    struct bounce *b = &s->b;
    struct deferred_ack *a = &s->ack;
    if (tcp_settle_ack(s)) /* one at a time; a broken socket: the frame ends as before */
        return false;
    /* only when the next frame is already there to read: else this thread
     * waits for the copies and acks as without the knob (no driver thread's
     * wake-up on the path of a batch's last frame) */
    struct pollfd q = {.fd = s->fd, .events = POLLIN};
    if (poll(&q, 1, 0) != 1)
        return false;
    bounce_drop_revoked(s);
    bounce_start(s, FERRY_COPY_H2D, b->n);
    if (s->copy_err || !b->inflight)
        return false;
    a->refused = 0;
    a->bytes = 0;
    for (unsigned i = 0; i < s->nent; i++) {
        if (s->ent[i].refused)
            a->refused |= 1ull << i;
        else
            a->bytes += e[i].len;
    }
    struct wire_header ack = {.type = WIRE_WRITE_ACK, .id = h->id, .refused = a->refused};
    wire_encode_header(&ack, a->raw);
    a->id = h->id;
    a->seq = a->queued + 1;
    a->ent = s->ent;
    a->nent = s->nent;
    a->written = 0;
    atomic_store(&a->word, a->seq << 2 | ACK_PENDING);
    a->marked = ferry_device_copy_mark(ack_mark(s), (uint32_t)a->seq) == 0;
    /* 2: no function on the stream: this thread acks from the mark, at its
     * next copy start or when it has nothing to read (a wait for the stream
     * then never waits for a driver thread to run a function) */
    bool fn = s->t->ack_on_copy == 1;
    if (fn ? ferry_device_copy_then(ack_fire, s) != 0 : !a->marked) { /* neither: flush as before */
        atomic_store(&a->word, ACK_NONE);
        a->nent = 0;
        return false;
    }
    a->queued += fn;
    s->ent = s->ent == s->ent_bufs[0] ? s->ent_bufs[1] : s->ent_bufs[0]; /* the next frame's */
    s->nent = 0;
    b->n = 0;
    b->started = b->used; /* the bytes in flight stay where they are until the wait */
    return true;
}

/* Whether the device has stored the deferred frame's mark. */
static bool ack_mark_reached(struct server_conn *s)
{
    uint32_t v = __atomic_load_n(ack_mark(s), __ATOMIC_ACQUIRE);
    return (int32_t)(v - (uint32_t)s->ack.seq) >= 0;
}

/* A deferred ack that did not all go out (the socket failed, or the
 * initiator stopped reading until the frame's deadline) may have left part
 * of its header on the wire: nothing this thread sends after it would be
 * read in step, so the connection ends here, whichever call settled it
 * (one that cannot return the error too: bounce_start, tcp_bounce_wait).
 * Its next read or write fails (shutdown), and every later settle returns
 * the error. */
static int ack_cut_short(struct server_conn *s, int rc)
{
    if (!rc)
        return 0;
    LOG_WARN("tcp: the ack of WRITE %llu to %s (%s) was cut short: %s: %s; closing the connection",
             (unsigned long long)s->ack.id, s->from, s->peer, ferry_err_name(rc), ferry_last_error());
    s->ack.err = rc;
    shutdown(s->fd, SHUT_RDWR);
    return rc;
}

int tcp_settle_ack(struct server_conn *s)
{
    struct deferred_ack *a = &s->ack;
    struct bounce *b = &s->b;
    if (a->err)
        return ferry_fail(a->err, "the connection from %s was closed: a WRITE's ack to it was cut short", s->from);
    uint_fast64_t w = atomic_load(&a->word);
    if (!(w & 3))
        return 0;
    uint64_t seq = w >> 2;
    int rc = 0, out = 0;
    if ((w & 3) == ACK_PENDING && a->marked) { /* the device's mark, before the driver thread's wake-up */
        uint64_t until = now_ns() + ACK_SPIN_NS;
        while (!ack_mark_reached(s) && now_ns() < until)
            sched_yield();
        uint_fast64_t want = seq << 2 | ACK_PENDING;
        if (ack_mark_reached(s) && atomic_compare_exchange_strong(&a->word, &want, seq << 2 | ACK_CLAIMED)) {
            ack_release(s, 0);
            out = net_write_full_deadline(s->fd, a->raw, sizeof a->raw, s->deadline_ns);
            atomic_store(&a->word, seq << 2 | ACK_NONE);
            b->inflight = false; /* its copies are done; its function may still run (and find it acked) */
            b->flight_lo = b->flight_hi = 0;
            return ack_cut_short(s, out);
        }
    }
    if (b->inflight) { /* returns once the function has returned, or will never run */
        b->inflight = false;
        b->flight_lo = b->flight_hi = 0;
        rc = ferry_device_copy_wait();
        atomic_store(&a->fired, a->queued); /* every function enqueued has run, or never will */
    }
    while (((w = atomic_load(&a->word)) & 3) == ACK_CLAIMED)
        sched_yield(); /* the driver thread is writing it */
    if ((w & 3) == ACK_PENDING) { /* ours: the copies failed (or, defensively, the function did not run) */
        atomic_store(&a->word, seq << 2 | ACK_CLAIMED);
        int status = 0;
        if (rc) {
            status = wire_status_allowed(WIRE_WRITE_ACK, rc) ? rc : FERRY_EIO;
            LOG_WARN("tcp: WRITE %llu from %s failed: %s", (unsigned long long)a->id, s->from, ferry_last_error());
            struct wire_header h = {.type = WIRE_WRITE_ACK, .id = a->id, .status = status, .refused = a->refused};
            wire_encode_header(&h, a->raw);
        }
        ack_release(s, status);
        out = net_write_full_deadline(s->fd, a->raw, sizeof a->raw, s->deadline_ns);
    } else if ((w & 3) == ACK_PARTIAL) {
        out = net_write_full_deadline(s->fd, a->raw + a->written, sizeof a->raw - a->written, s->deadline_ns);
    }
    atomic_store(&a->word, seq << 2 | ACK_NONE);
    return ack_cut_short(s, out);
}

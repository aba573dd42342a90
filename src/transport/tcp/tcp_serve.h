/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tcp_serve.h — what the tcp transport's target side shares between its two
 * files: a served connection's state (struct server_conn, owned by its
 * connection thread from accept to close), the frame and access handling in
 * tcp_serve.c, and the device-memory path through a pinned bounce in
 * tcp_serve_dev.c.  Every function here runs on the connection's own thread.
 * Private to src/transport/tcp/.
 */
#ifndef FERRY_TCP_SERVE_H
#define FERRY_TCP_SERVE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "memreg.h"
#include "device/device.h"
#include "transport/tcp/sockio.h"
#include "transport/tcp/tcp.h"
#include "transport/tcp/tcp_wire.h"

#define BOUNCE_COPIES 64
#define READ_IOVS 256

/* A connection's pinned bounce for device memory and the device copies
 * through it (tcp_serve_dev.c). */
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
    bool lost;                              /* a copy on it was abandoned (ferry_device_copy_lost):
                                             * replaced once empty, never freed */
};

/* An entry of the frame being served and its access to the registration. */
struct served_entry {
    struct memreg_access acc;
    struct memreg_region region;
    bool held;                        /* access begun and not yet ended */
    bool refused;                     /* outside the registrations, or revoked while served */
};

/* A WRITE acknowledged from its device copies' completion
 * (FERRY_TCP_ACK_ON_COPY, tcp_serve_dev.c): its last copies started, the
 * receiving thread went on to the next frame (already there), and the ack
 * goes when they complete: from a function on the thread's stream (a
 * driver thread; FERRY_TCP_ACK_ON_COPY=1 only), or from the receiving
 * thread, which sees a mark the device writes after the copies when it has
 * nothing else to do, and waits for them anyway before
 * it starts another copy or writes to the socket (so acks stay in order,
 * and only this frame's copies are ever in flight ahead of its ack: a
 * failure is its own).  word: seq << 2 | ACK_*; whoever moves it from
 * ACK_PENDING to ACK_CLAIMED (compare-and-swap, with its seq) acks.  The
 * driver thread never waits: what of the ack the socket did not take at
 * once it leaves to the receiving thread (ACK_PARTIAL). */
enum { ACK_NONE, ACK_PENDING, ACK_CLAIMED, ACK_PARTIAL };
struct deferred_ack {
    atomic_uint_fast64_t word;
    atomic_uint_fast64_t fired;       /* functions the stream has run (they run in order) */
    uint64_t queued;                  /* functions enqueued (receiving thread) */
    uint64_t seq;                     /* the deferred frame's: its function's place in that order */
    uint64_t id;                      /* its wire id */
    bool marked;                      /* a device-written mark says when its copies are done */
    unsigned nent;
    struct served_entry *ent;         /* its accesses (one of ent_bufs), held until its copies are done */
    uint64_t refused;                 /* entries refused while it was served */
    uint64_t bytes;                   /* what it moved (bytes_served once acked) */
    uint8_t raw[WIRE_HEADER_SIZE];    /* the ack */
    size_t written;                   /* ACK_PARTIAL: bytes of raw the driver thread wrote */
    int err;                          /* an ack cut short (FERRY_E*): the connection is shut down */
};

/* One incoming connection: allocated and freed by tcp_serve_connection, on the
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
    struct served_entry *ent;         /* the frame being served: one of ent_bufs, the other a deferred ack's */
    struct served_entry ent_bufs[2][WIRE_MAX_ENTRIES];
    struct deferred_ack ack;          /* FERRY_TCP_ACK_ON_COPY */
    uint8_t held_ack[WIRE_HEADER_SIZE]; /* FERRY_TCP_ACK_HOLD: a host WRITE's ack, sent with the next response */
    bool ack_held;
    uint64_t frame_bytes;             /* the last frame's payload, received (WRITE) or sent (READ) */
    uint64_t deadline_ns;             /* the frame's payload and its answer must have moved by then */
    struct sockio_wake wake;          /* signalled when one of its accesses is revoked */
    bool wake_ready;
    atomic_int revoking;
};

/* tcp_serve.c: ends the access of every entry whose registration was
 * revoked (device copies started are waited for first). */
void tcp_serve_stop_revoked(struct server_conn *s);
/* tcp_serve.c: sends iovecs [k, end) of the READ response being gathered;
 * those of an entry whose access has ended go out as zeros. */
int tcp_serve_send_iovs(struct server_conn *s, int k, int end);

/* tcp_serve.c: receives and throws away len bytes of the payload; a
 * revocation meanwhile ends the revoked accesses, and it goes on. */
int tcp_serve_discard(struct server_conn *s, uint64_t len);

/* tcp_serve.c: ends the accesses of entries [0, n) of ent; returns the
 * bits of those refused. */
uint64_t tcp_serve_end_accesses(struct tcp_transport *t, struct served_entry *ent, unsigned n);

/* tcp_serve_dev.c: device memory through the connection's bounce. */

/* FERRY_TCP_ACK_ON_COPY: at a WRITE's end (header h, payload received, no
 * failure so far), starts its last copies and leaves its ack to their
 * completion (s->ack); returns true if it did (the bounce keeps the bytes in
 * flight; the frame's accesses went with the ack), false if the frame is to
 * be flushed and acked as before. */
bool tcp_defer_ack(struct server_conn *s, const struct wire_header *h, const struct wire_entry *e);
/* Waits for a deferred ack's copies and sends it (from this thread, if the
 * driver's has not); nothing if none is pending.  0, or the socket's error:
 * an ack cut short also shuts the connection down (its next read or write
 * fails), and every later call returns that error. */
int tcp_settle_ack(struct server_conn *s);

/* Waits for the device copies started; a failure is remembered in copy_err
 * and the bounce bytes they were to fill are zeroed. */
void tcp_bounce_wait(struct server_conn *s);
/* tcp_bounce_wait, then empties the bounce (copies not started are dropped). */
void tcp_bounce_drain(struct server_conn *s);
/* Frees the bounce, if one was allocated (one a hung copy may still touch
 * is left, never freed); the next device access allocates another. */
void tcp_bounce_free(struct server_conn *s);
/* The connection is quiet: frees its bounce unless something is still in it
 * (copies pending or in flight, a deferred ack's bytes).  A target serving
 * many connections so holds pinned memory only for those moving device
 * memory now, not 4 MiB each until its idle timeout. */
void tcp_bounce_release_idle(struct server_conn *s);
/* WRITE: starts and waits for every pending copy; the bounce is empty again. */
int tcp_flush_writes(struct server_conn *s);
/* WRITE: starts the pending copies once PIPE_BYTES of them wait. */
void tcp_pipe_writes(struct server_conn *s);
/* WRITE: the payload of the held device entries [i, end) of one device;
 * *taken says how many entries it finished. */
int tcp_recv_device_run(struct server_conn *s, unsigned i, unsigned end, const struct wire_entry *e,
                        unsigned *taken);
/* READ: sends the iovecs gathered so far (host memory too), each after the
 * device copies that fill it; the bounce and the iovecs are empty again. */
int tcp_flush_reads(struct server_conn *s);
/* READ: gathers entry i of device memory into the bounce (and the iovecs). */
int tcp_send_entry_device(struct server_conn *s, unsigned i, const struct wire_entry *e);

#endif

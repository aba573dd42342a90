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
};

/* An entry of the frame being served and its access to the registration. */
struct served_entry {
    struct memreg_access acc;
    struct memreg_region region;
    bool held;                        /* access begun and not yet ended */
    bool refused;                     /* outside the registrations, or revoked while served */
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
    struct served_entry ent[WIRE_MAX_ENTRIES];
    uint64_t deadline_ns;             /* the frame's payload must have moved by then */
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

/* tcp_serve_dev.c: device memory through the connection's bounce. */

/* Waits for the device copies started; a failure is remembered in copy_err
 * and the bounce bytes they were to fill are zeroed. */
void tcp_bounce_wait(struct server_conn *s);
/* tcp_bounce_wait, then empties the bounce (copies not started are dropped). */
void tcp_bounce_drain(struct server_conn *s);
/* Frees the bounce, if one was allocated. */
void tcp_bounce_free(struct server_conn *s);
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

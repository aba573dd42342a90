/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tcp.h — what the tcp transport's files share: the transport itself (its
 * knobs read in tcp_config.c), an initiator's peers and connections (tcp.c;
 * their receiving side in tcp_conn.c), and the target side's entry point (tcp_serve.c, its device
 * memory in tcp_serve_dev.c, what those two share in tcp_serve.h) that
 * tcp.c hands to the acceptor.  Private to src/transport/tcp/.
 */
#ifndef FERRY_TCP_H
#define FERRY_TCP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "acceptor.h"
#include "transport/tcp/tcp_wire.h"
#include "transport/transport.h"

#define POLL_TICK_MS 100
/* Response headers an initiator's receiver reads with one recv when the
 * frames in flight ahead allow it (acks carry no payload). */
#define TCP_HEADERS_AHEAD 8

struct tcp_transport {
    struct transport_host host;
    int listen_fd;
    int port;
    struct acceptor *acceptor;
    atomic_uint_fast64_t bytes_written, bytes_read, bytes_served, frames_sent, refused;
    unsigned max_conns;     /* FERRY_TCP_MAX_CONNECTIONS, resolved (tcp_max_connections) */
    uint64_t grow_bytes;    /* FERRY_TCP_GROW_BYTES, resolved (tcp_grow_bytes) */
    uint64_t inline_bytes;  /* FERRY_TCP_INLINE_BYTES, resolved (tcp_inline_bytes) */
    unsigned spread;        /* FERRY_TCP_SPREAD, resolved (tcp_spread): transport_ops.spread of WRITEs */
    unsigned spread_read;   /* FERRY_TCP_SPREAD_READ, resolved (tcp_spread_read): of READs */
    unsigned spread_staged; /* FERRY_TCP_SPREAD_STAGED, resolved: of staged frames (0: as their direction's) */
    uint64_t rcvlowat;      /* FERRY_TCP_RCVLOWAT: payload receives wake per this many bytes (0: off) */
    uint64_t read_handoff;  /* FERRY_TCP_READ_HANDOFF: see tcp_read_by_sender (0: off) */
    uint64_t ack_hold;      /* FERRY_TCP_ACK_HOLD: a WRITE of at most this many bytes may hold its ack (0: off) */
    uint64_t sockbuf;       /* FERRY_TCP_SOCKBUF: SO_SNDBUF and SO_RCVBUF of every connection (0: the kernel's) */
    uint64_t dev_pipe;      /* FERRY_TCP_DEVICE_PIPE: the target's device copies start per this many bytes */
    unsigned ack_on_copy;   /* FERRY_TCP_ACK_ON_COPY: a WRITE's ack from its device copies' completion (1, 2) */
    uint64_t serve_spin_ns; /* FERRY_TCP_SERVE_SPIN_US: a target's thread looks before it sleeps (0: never) */
    uint64_t recv_spin_ns;  /* FERRY_TCP_RECV_SPIN_US: an initiator's receiver looks before it sleeps (0: never) */
};

/* FERRY_TCP_DEVICE_PIPE (tcp_serve_dev.c): bytes of device payload per
 * device copy the target starts while the socket moves the next ones.
 * 0 or FERRY_EINVAL. */
int tcp_device_pipe(uint64_t *out);
/* FERRY_TCP_ACK_ON_COPY (tcp_serve_dev.c): 0, 1 (a driver thread's
 * function or the device's mark) or 2 (the mark only).  0 or FERRY_EINVAL. */
int tcp_ack_on_copy(unsigned *out);

/* An initiator's connection to a peer: its sender (tcp.c) and receiver
 * (tcp_conn.c) threads, and the frames queued and in flight on it. */
struct tcp_conn {
    struct tcp_peer *peer;
    int fd;
    pthread_t sender, receiver;
    bool receiver_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;                         /* wakes the sender: a frame to write, or broken */
    pthread_cond_t sent;                         /* `sending` changed (frame_end waits on it) */
    struct xfer_frame *sendq_head, *sendq_tail; /* waiting to be written */
    struct xfer_frame *pend_head, *pend_tail;   /* written, awaiting response */
    struct xfer_frame *sending;                  /* frame being written now (its memory is read) */
    bool ready;                                  /* HELLO done: frames may be written */
    bool writing;                                /* a thread (sender or submitter) owns the write side */
    struct xfer_frame *rest;                     /* written in part by a submitter: the sender ends it */
    struct iovec *wiov;                          /* what is left to write of `sending` */
    int wiovcnt;
    struct iovec iov[1 + WIRE_MAX_ENTRIES];      /* the writer's: header+entries, then WRITE payload */
    uint8_t head[WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE * WIRE_MAX_ENTRIES];
    uint8_t ahead[WIRE_HEADER_SIZE * TCP_HEADERS_AHEAD]; /* the receiver's: response headers read ahead */
    unsigned ahead_len;                          /* bytes of them in `ahead` (the receiver's) */
    int broken;                                  /* 0 or the error that broke it */
    char broken_msg[160];
    atomic_int threads_done;
    atomic_uint_fast64_t inflight_bytes;
    atomic_uint_fast64_t last_used_ns;           /* a frame queued or answered */
    uint64_t next_id;
    struct tcp_conn *next_dead;
};

struct tcp_peer {
    struct tcp_transport *t;
    char host[64];
    int port;
    uint64_t epoch;
    pthread_mutex_t lock;
    unsigned nconns;        /* connections in use: tcp_connections, grown with the traffic */
    unsigned maxconns;      /* the most in use: the transport's max_conns, lowered when the
                             * target refuses one more (conns has room for the first value) */
    struct tcp_conn **conns;
    struct tcp_conn *dead;  /* broken connections whose threads may still run */
};

/* tcp_conn.c: ends frame f of connection c once (waiting until no thread
 * still writes it) and counts its bytes. */
void tcp_frame_end(struct tcp_conn *c, struct xfer_frame *f, int err, uint64_t refused, const char *msg);
/* Marks c broken with err and msg (the first reason wins) and wakes its
 * threads; ends no frame. */
void tcp_conn_mark_broken(struct tcp_conn *c, int err, const char *msg);
/* Ends every frame a broken connection holds (TIMEOUT past its deadline). */
void tcp_conn_fail_all(struct tcp_conn *c);
/* A connection's receiver thread: reads responses (and READ payload) in
 * order, ends the oldest frame for each, enforces deadlines. */
void *tcp_receiver_main(void *arg);

/* The defaults that scale with the host: connections per peer on a host
 * with `cores` CPUs, the bytes in flight on every connection before a
 * peer that may hold `max_conns` opens another (at least a slice), the
 * frames a submit of small blocks is cut into (transport_ops.spread), and
 * the socket buffers. */
unsigned tcp_auto_max_connections(long cores);
uint64_t tcp_auto_grow_bytes(unsigned max_conns, uint64_t slice_size);
unsigned tcp_auto_spread(long cores);
/* The frames a READ submit of small blocks is cut into on a host with
 * `cores` CPUs, FERRY_TCP_SPREAD_READ's default. */
unsigned tcp_auto_spread_read(long cores);
/* The frames a staged submit of small blocks is cut into on a host with
 * `cores` CPUs, both directions (0: as the direction's spread),
 * FERRY_TCP_SPREAD_STAGED's default. */
unsigned tcp_auto_spread_staged(long cores);
/* SO_SNDBUF/SO_RCVBUF on a host with `cores` CPUs (0: the kernel's). */
uint64_t tcp_auto_sockbuf(long cores);
/* FERRY_TCP_ACK_HOLD's default on a host with `cores` CPUs (0: off). */
uint64_t tcp_auto_ack_hold(long cores);
/* FERRY_TCP_SERVE_SPIN_US's default on a host with `cores` CPUs, µs (0: off). */
unsigned tcp_auto_serve_spin_us(long cores);
/* FERRY_TCP_RECV_SPIN_US's default on a host with `cores` CPUs, µs (0: off). */
unsigned tcp_auto_recv_spin_us(long cores);

/* The frames after which an initiator's receiver (and a target's thread)
 * may look for the next bytes before it sleeps: a batch of small blocks'
 * frames (larger ones take longer than a look to move). */
#define TCP_SPIN_FRAME_MAX ((uint64_t)256 << 10)
/* Whether an initiator's receiver looks for the next response for up to
 * `spin_ns` (FERRY_TCP_RECV_SPIN_US, 0: never) before it sleeps: after a
 * response to a frame of at most TCP_SPIN_FRAME_MAX bytes (`last_bytes`),
 * while the gaps between responses were shorter than the look lately
 * (`gap_mean_ns`, tcp_spin_gap_learn). */
bool tcp_recv_look_worth(uint64_t spin_ns, uint64_t last_bytes, uint64_t gap_mean_ns);
/* The moving mean of the gaps between frames (or responses) that decides
 * whether a thread looks: each gap counted as at most four looks, so that a
 * burst after a pause is learnt within a few frames. */
uint64_t tcp_spin_gap_learn(uint64_t gap_mean_ns, uint64_t gap_ns, uint64_t spin_ns);

/* Whether a READ request of `frame_bytes` goes to its connection's sender
 * thread rather than being written by the submitting thread: with
 * FERRY_TCP_READ_HANDOFF (`handoff` bytes, 0: never) set, a frame of at
 * least that many bytes on a connection with responses in flight, whose
 * receiver may hold the socket's lock while it copies a response (a
 * sendmsg on that socket waits for it). */
bool tcp_read_by_sender(uint64_t handoff, uint64_t frame_bytes, bool responses_in_flight);

/* tcp_config.c: reads every FERRY_TCP_* knob into t (a slice is
 * `slice_size` bytes).  0 or FERRY_EINVAL naming the knob. */
int tcp_config_read(uint64_t slice_size, struct tcp_transport *t);

/* Sets SO_SNDBUF and SO_RCVBUF of a connection to t->sockbuf (nothing when
 * it is 0: the kernel sizes them itself); both ends call it. */
void tcp_set_sockbuf(const struct tcp_transport *t, int fd);

/* One incoming connection, on its own thread (the acceptor's callback):
 * authenticates, serves frames until the peer leaves, frees what it holds. */
void tcp_serve_connection(void *ctx, struct acceptor_conn *c);

#endif

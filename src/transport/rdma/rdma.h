/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rdma.h — internals shared by the rdma transport's files (not an API):
 *   rdma.c        the ops table: create/destroy, describe, peers, submit
 *   rdma_nic.c    NIC discovery, GID choice, topology, memory registration
 *   rdma_path.c   initiator queue pairs: post, completions, the NIC poller, breaking
 *   rdma_path_ctl.c  a path's control thread: connect, side channel, deadlines, teardown
 *   rdma_server.c target side: the side-channel listener and its queue pairs
 *   rdma_stage.c  initiator side of target-side staging: bounce slots, credits
 *   rdma_bounce.c target side of target-side staging: the bounce, its copies
 *   rdma_wire.c   endpoint JSON and side-channel messages
 *
 * Vocabulary: a NIC is one active (device, port); a path is one RC queue pair
 * from a local NIC to a remote NIC plus the TCP side-channel connection that
 * set it up; a peer is one remote engine (its descriptor) with its paths; an
 * op is one frame on its way through a path.
 */
#ifndef FERRY_RDMA_H
#define FERRY_RDMA_H

#include <infiniband/verbs.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "memreg.h"
#include "transport/rdma/rdma_wire.h"
#include "transport/transport.h"

#define RDMA_MAX_PATHS 64
#define RDMA_MAX_RETRIES 2
#define RDMA_SGE_CAP 64   /* scatter entries per work request, at most */
#define RDMA_TICK_MS 100  /* a sleeping poller or control thread looks at the clock this often */

/* FERRY_RDMA_* knobs, read once by rdma_knobs_load (see rdma_nic.c). */
struct rdma_knobs {
    int gid_index;            /* -1: choose (IPv4-mapped RoCE v2 first) */
    unsigned max_wr;          /* send work requests outstanding per queue pair */
    unsigned max_sge;         /* scatter/gather entries per work request */
    unsigned max_msg;         /* bytes per work request (0: the device's limit) */
    unsigned qps_per_path;    /* queue pairs per (local NIC, remote NIC) pair */
    bool affinity;            /* prefer NICs near the memory (sysfs NUMA / PCIe) */
    char nic_map[256];        /* "cuda:0=mlx5_0;cpu:1=mlx5_2,mlx5_3": explicit choice */
    unsigned ack_timeout;     /* IB local ACK timeout exponent (4.096 us * 2^x) */
    unsigned retry_cnt;
    unsigned traffic_class;
    unsigned service_level;
    unsigned mtu;             /* cap as enum ibv_mtu (0: none) */
    unsigned spin_us;         /* completion poller busy-polls this long before sleeping */
    unsigned stage_slots;     /* target-side staging: bounce slots per queue pair (0: off) */
    unsigned stage_slot_size; /* bytes per bounce slot */
    unsigned stall_ms;        /* a queue pair with work out and no completion this long is broken (0: never) */
};

struct rdma_path;
struct ferry_device_ops;

struct rdma_nic {
    struct rdma_transport *t;
    int index;
    char name[64];
    uint8_t port;
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    struct ibv_comp_channel *channel;
    struct ibv_port_attr port_attr;
    int gid_index;
    union ibv_gid gid;
    int numa;                 /* -1 unknown */
    char pci_path[256];       /* sysfs device path ("" for software NICs) */
    uint32_t max_msg;         /* bytes one work request may move */
    int max_sge, max_wr, max_rd_atomic;
    /* completion poller: every initiator path of this NIC, polled by one thread */
    pthread_t poller;
    bool poller_started;
    pthread_mutex_t lock;
    struct rdma_path *paths;  /* linked through path->poll_next */
};

/* One local registration: an MR on every NIC (or none: memory no NIC can reach). */
struct rdma_reg {
    uint64_t addr, len;
    bool remote;
    bool reachable;           /* MRs exist (host memory, or a GPU the NICs can reach) */
    bool dmabuf;              /* registered through dma-buf */
    uint32_t pref;            /* bitmask of the NICs nearest to this memory */
    char location[32];
    struct ibv_mr *mr[RDMA_MAX_NICS];
};

struct rdma_transport {
    struct transport_host host;
    struct rdma_knobs knobs;
    size_t nnics;
    struct rdma_nic nics[RDMA_MAX_NICS];
    atomic_bool stopping;

    pthread_rwlock_t regs_lock;   /* sorted by addr */
    struct rdma_reg **regs;
    size_t nregs, capregs;

    /* target side (rdma_server.c) */
    int listen_fd, port;
    struct acceptor *acceptor;    /* common/acceptor.c: one thread per side channel */

    pthread_mutex_t ops_lock;     /* free list of ops */
    struct rdma_op *free_ops;

    atomic_uint_fast64_t bytes_written, bytes_read, frames_sent, refused;
    atomic_uint_fast64_t bytes_target_staged;  /* of bytes_written/read: staged by the target */
    atomic_uint_fast64_t bytes_served;         /* staged for peers here (two-sided) */
    atomic_uint_fast64_t nic_bytes[RDMA_MAX_NICS]; /* bytes moved by work requests, per local NIC */
};

/* Local memory an op's work requests touch, held from submit to the op's
 * end so that ferry_unregister_memory (memreg_remove) waits for them before
 * the MRs go (see rdma.c). */
#define RDMA_OP_ACCESSES 4

/* A frame on its way: owned by exactly one path (or by a poller between
 * paths) until it ends. */
struct rdma_op {
    struct rdma_op *next;
    struct rdma_peer *peer;
    struct xfer_frame *f;
    int err;                  /* first error seen */
    char msg[160];
    uint64_t refused;         /* pieces outside the target's registrations */
    uint32_t cur_piece;       /* posting cursor */
    uint64_t cur_off;
    unsigned retries;
    char first_msg[160];      /* why the first attempt failed (kept across retries) */
    bool no_retry;            /* the error is the request's own (refused, local fault) */
    bool started;             /* a work request of it was posted (on its current path) */
    size_t nacc;
    struct memreg_access *acc;  /* acc_inline, or malloc'd when a frame spans more registrations */
    struct memreg_access acc_inline[RDMA_OP_ACCESSES];
    /* target-side staging (rdma_stage.c) */
    bool staged;              /* some remote piece is memory the target stages */
    bool carved;              /* every byte handed to a stage (or the op gave up) */
    uint32_t chunks_out;      /* stages of this op not yet ended */
    struct rdma_stage *stage; /* this op is a stage's bounce leg, not a frame of the engine */
};

/* One bounce slot's worth of a staged op: up to RDMA_STAGE_ENTRIES runs.
 * WRITE: the bounce leg (local -> slot, RDMA WRITE), then STAGE_WRITE, then
 * its ack.  READ: STAGE_READ, its ack, then the bounce leg (slot -> local,
 * RDMA READ).  Owned by its path from carving to rdma_stage_end. */
struct rdma_stage {
    struct rdma_stage *next;
    struct rdma_path *path;
    struct rdma_op *parent;
    uint32_t slot, n;
    uint64_t bytes;           /* of its entries: counted in the path's inflight_bytes until it ends */
    uint64_t wire_id;
    uint64_t refused;         /* bit i: the target refused entry i */
    struct rdma_stage_entry e[RDMA_STAGE_ENTRIES];
    uint32_t piece[RDMA_STAGE_ENTRIES];  /* the parent's piece of each entry */
    void *local[RDMA_STAGE_ENTRIES];
    struct xfer_piece legs[RDMA_STAGE_ENTRIES];
    struct xfer_frame frame;  /* the bounce leg's frame */
    struct rdma_op op;        /* the bounce leg's op */
};

struct rdma_wr_slot {
    struct rdma_op *op;
    bool last;                /* the op's final work request */
};

enum { PATH_CONNECTING, PATH_READY, PATH_BROKEN };

struct rdma_peer {
    struct rdma_transport *t;
    char name[128];           /* the target segment, for messages */
    uint64_t engine_id;
    struct rdma_endpoint ep;
    size_t nbuffers;          /* the descriptor's buffers, to tell "unreachable" from "outside" */
    struct desc_buffer *buffers;
    pthread_mutex_t lock;
    atomic_bool closing;
    size_t npaths;
    struct rdma_path *paths[RDMA_MAX_PATHS];
    /* failover: a slot whose queue pair failed for a reason of the link (its
     * NIC, the remote NIC, the wire) is passed over until slot_down_until
     * (now_ns), back-off doubling with each failure in a row, unless every
     * slot is down.  Written by the failing path's threads (atomics), read
     * by pick_path. */
    atomic_uint_fast64_t slot_down_until[RDMA_MAX_PATHS];
    atomic_uint slot_failures[RDMA_MAX_PATHS];
    struct rdma_path *dead;   /* broken paths still tearing down */
    atomic_uint ops_out;      /* frames accepted and not yet ended */
};

struct rdma_path {
    struct rdma_peer *peer;
    struct rdma_nic *nic;
    int rnic;                 /* index into peer->ep.nics */
    size_t slot;              /* index into peer->paths */
    bool proven;              /* a work request completed on it (failover back-off restarts) */
    bool suspected;           /* its slot was marked down already */
    pthread_mutex_t lock;
    int state;
    int err;
    char msg[160];
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    uint32_t max_sge, max_msg;
    int fd, wake_fd;
    pthread_t thread;
    atomic_int done;          /* control thread finished: nothing left on the path */
    /* send queue: wr ids are sequence numbers; ring[seq % depth] */
    uint32_t depth;
    uint64_t posted, completed, last_signaled;
    uint64_t progress_ns;     /* last completion, or when work went out on an idle queue (stall watchdog) */
    struct rdma_wr_slot *ring;
    struct rdma_op *head, *tail;  /* FIFO: posted ops first, then cursor.. unposted */
    struct rdma_op *cursor;       /* first op not wholly posted */
    struct xfer_frame *notes, *notes_tail;  /* NOTIFY frames to send */
    struct xfer_frame *acks, *acks_tail;    /* sent, awaiting NOTIFY_ACK */
    uint64_t note_id;
    atomic_uint_fast64_t inflight_bytes;
    /* target-side staging: the bounce of the target's queue pair, slots free */
    struct rdma_bounce_info bounce;
    uint64_t free_slots;      /* bit i: slot i is free (a credit) */
    struct rdma_op *staged, *staged_tail;        /* staged ops not wholly carved */
    struct rdma_stage *stage_send, *stage_send_tail; /* to announce on the side channel */
    struct rdma_stage *stage_acks, *stage_acks_tail; /* announced, awaiting STAGE_ACK */
    struct rdma_op *cancelled;    /* never posted, memory unregistered: the control thread ends them */
    uint64_t stage_id;
    atomic_uint stages_alive;     /* carved, not yet freed: teardown waits for 0 */
    bool polled;              /* on nic->paths */
    struct rdma_path *poll_next, *next_dead;
};

/* rdma_nic.c */
int rdma_knobs_load(struct rdma_knobs *k);
int rdma_nics_open(struct rdma_transport *t, const char *device_name);
void rdma_nics_close(struct rdma_transport *t);
int rdma_reg_create(struct rdma_transport *t, const struct memreg_region *r, struct rdma_reg **out);
void rdma_reg_destroy(struct rdma_reg *g);
/* The registration containing [addr, addr+len) or NULL; caller holds regs_lock. */
struct rdma_reg *rdma_reg_find(struct rdma_transport *t, uint64_t addr, uint64_t len);
/* The NIC's active MTU, capped by FERRY_RDMA_MTU (enum ibv_mtu). */
uint8_t rdma_nic_mtu(const struct rdma_nic *nic);
struct ibv_qp *rdma_qp_create(struct rdma_nic *nic, struct ibv_cq *cq, uint32_t depth, uint32_t max_sge);
/* This side's coordinates for the peer, with the GID at gid_index. */
void rdma_qp_info_local(struct rdma_nic *nic, struct ibv_qp *qp, uint32_t psn, int gid_index, struct rdma_qp_info *out);
/* A local GID index of the same family (IPv4-mapped or not) as the peer's
 * GID: the NIC's own choice when it matches, else the first RoCE v2 entry
 * that does (the target adapts to an initiator with another GID choice). */
int rdma_gid_match(struct rdma_nic *nic, const uint8_t remote_gid[16]);
/* Moves the QP to RTR then RTS towards the remote queue pair. */
int rdma_qp_connect(struct rdma_transport *t, struct rdma_nic *nic, struct ibv_qp *qp, int gid_index,
                    const struct rdma_qp_info *remote, bool remote_ib, uint32_t my_psn, const char *who);

/* rdma_path_ctl.c: starts the path's control thread (it connects the path);
 * NULL when out of memory or threads. */
struct rdma_path *rdma_path_create(struct rdma_peer *p, struct rdma_nic *nic, int rnic, size_t slot);
/* Joins the control thread (it ends after the path broke and drained). */
void rdma_path_free(struct rdma_path *path);

/* rdma_path.c */
void rdma_path_break(struct rdma_path *path, int err, const char *msg);
void rdma_path_break_locked(struct rdma_path *path, int err, const char *msg);
/* Queues an op / a NOTIFY frame on a path; false if the path is broken. */
bool rdma_path_enqueue(struct rdma_path *path, struct rdma_op *op);
bool rdma_path_enqueue_note(struct rdma_path *path, struct xfer_frame *f);
void *rdma_poller_main(void *arg);

/* Adds an op to the path's send FIFO and posts what fits.  Path lock held. */
void rdma_path_fifo_add(struct rdma_path *path, struct rdma_op *op);
/* Posts from the cursor while the send queue has room.  Path lock held. */
void rdma_path_post(struct rdma_path *path);
/* Polls the path's CQ; ops that ended go onto *done (the caller finishes them
 * outside every lock, rdma_op_finish_all).  Returns the number of completions. */
int rdma_path_poll(struct rdma_path *path, struct rdma_op **done, struct rdma_op **done_tail);
/* Wakes the path's control thread. */
void rdma_path_wake(struct rdma_path *path);
/* Appends op to the list head..tail. */
void rdma_op_list_push(struct rdma_op **head, struct rdma_op **tail, struct rdma_op *op);
/* rdma_op_finish on each op of a list linked through op->next. */
void rdma_op_finish_all(struct rdma_op *op);

/* rdma_stage.c (initiator): path lock held unless said otherwise */
void rdma_stage_enqueue(struct rdma_path *path, struct rdma_op *op);
/* Hands bounce slots to staged ops while credits last. */
void rdma_stage_carve(struct rdma_path *path);
/* A bounce leg ended (lock not held). */
void rdma_stage_leg_end(struct rdma_stage *st);
/* The next stage to announce, moved to the ack list (NULL: none). */
struct rdma_stage *rdma_stage_next_send(struct rdma_path *path);
/* Sends a STAGE_WRITE / STAGE_READ (control thread, lock not held). */
int rdma_stage_send(struct rdma_path *path, struct rdma_stage *st);
/* A STAGE_ACK arrived with its payload (control thread, lock not held). */
int rdma_stage_ack(struct rdma_path *path, const struct rdma_msg_header *h, const uint8_t *payload);
/* Ends a stage (lock not held); finishes its parent when it was the last.
 * fatal: the error is the request's own (another path would fail too). */
void rdma_stage_end(struct rdma_stage *st, int err, bool fatal, const char *msg);
/* Teardown: takes every stage and staged op off the broken path; ops whose
 * stages have all ended go onto *done.  Path lock held. */
void rdma_stage_drain(struct rdma_path *path, struct rdma_stage **stages, struct rdma_op **done,
                      struct rdma_op **done_tail);
bool rdma_stage_deadline_passed(struct rdma_path *path, uint64_t now);

/* rdma_bounce.c (target) */
struct rdma_bounce {
    struct rdma_bounce_info info;
    void *buf;
    size_t len;
    struct ibv_mr *mr;
    const struct ferry_device_ops *owner;  /* host_alloc'd by this device kind (NULL: malloc) */
    struct memreg_access acc[RDMA_STAGE_ENTRIES];
};
/* The bounce of a new responder queue pair on nic (none when staging is off). */
int rdma_bounce_create(struct rdma_transport *t, struct rdma_nic *nic, struct rdma_bounce *b);
void rdma_bounce_destroy(struct rdma_bounce *b);
/* Serves one STAGE_WRITE / STAGE_READ and answers STAGE_ACK on fd. */
int rdma_bounce_serve(struct rdma_transport *t, struct rdma_bounce *b, int fd, const struct rdma_msg_header *h,
                      const uint8_t *payload, const char *from);

/* rdma.c: how an op ends (completes, or goes to another path) */
void rdma_op_finish(struct rdma_op *op);
/* Was the local memory of the op unregistered meanwhile (memreg revoked)? */
bool rdma_op_revoked(const struct rdma_op *op);
/* Takes an op that never reached the wire off its path, to end FERRY_ERANGE
 * from the control thread.  Path lock held. */
void rdma_path_cancel(struct rdma_path *path, struct rdma_op *op);
struct rdma_op *rdma_op_alloc(struct rdma_transport *t);
void rdma_note_end(struct rdma_peer *p, struct xfer_frame *f, int err, const char *msg);
/* The path failed for a reason of its link (not of a request): its slot is
 * passed over for a while (see rdma_peer.slot_down_until).  Path lock held. */
void rdma_path_suspect(struct rdma_path *path, const char *why);

/* rdma_server.c */
int rdma_server_start(struct rdma_transport *t);
void rdma_server_stop(struct rdma_transport *t);

#endif

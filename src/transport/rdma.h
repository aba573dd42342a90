/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rdma.h — internals shared by the rdma transport's files (not an API):
 *   rdma.c        the ops table: create/destroy, describe, peers, submit
 *   rdma_nic.c    NIC discovery, GID choice, topology, memory registration
 *   rdma_path.c   initiator queue pairs: connect, post, completions, failures
 *   rdma_server.c target side: the side-channel listener and its queue pairs
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

#include "transport/rdma_wire.h"
#include "transport/transport.h"

#define RDMA_MAX_PATHS 64
#define RDMA_MAX_RETRIES 2

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
};

struct rdma_path;

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

    atomic_uint_fast64_t bytes_written, bytes_read, frames_sent, refused, completed, failed;
};

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
    struct rdma_path *dead;   /* broken paths still tearing down */
    atomic_uint ops_out;      /* frames accepted and not yet ended */
};

struct rdma_path {
    struct rdma_peer *peer;
    struct rdma_nic *nic;
    int rnic;                 /* index into peer->ep.nics */
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
    struct rdma_wr_slot *ring;
    struct rdma_op *head, *tail;  /* FIFO: posted ops first, then cursor.. unposted */
    struct rdma_op *cursor;       /* first op not wholly posted */
    struct xfer_frame *notes, *notes_tail;  /* NOTIFY frames to send */
    struct xfer_frame *acks, *acks_tail;    /* sent, awaiting NOTIFY_ACK */
    uint64_t note_id;
    atomic_uint_fast64_t inflight_bytes;
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

/* rdma_path.c */
struct rdma_path *rdma_path_create(struct rdma_peer *p, struct rdma_nic *nic, int rnic);
void rdma_path_break(struct rdma_path *path, int err, const char *msg);
void rdma_path_free(struct rdma_path *path);
/* Queues an op / a NOTIFY frame on a path; false if the path is broken. */
bool rdma_path_enqueue(struct rdma_path *path, struct rdma_op *op);
bool rdma_path_enqueue_note(struct rdma_path *path, struct xfer_frame *f);
void *rdma_poller_main(void *arg);

/* rdma.c: how an op ends (completes, or goes to another path) */
void rdma_op_finish(struct rdma_op *op);
struct rdma_op *rdma_op_alloc(struct rdma_transport *t);
void rdma_note_end(struct rdma_peer *p, struct xfer_frame *f, int err, const char *msg);

/* rdma_server.c */
int rdma_server_start(struct rdma_transport *t);
void rdma_server_stop(struct rdma_transport *t);

#endif

/*
 * shm.h — the shm transport's internal state, shared by its three files:
 *   shm.c         identity, the shared page, registrations, describe,
 *                 peers, the ops table
 *   shm_copy.c    the work queue, its worker threads and the copies
 *   shm_notify.c  notifications over a unix socket
 * Nothing outside src/transport/shm*.c includes this header.
 */
#ifndef FERRY_SHM_H
#define FERRY_SHM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "device/device.h"
#include "transport/transport.h"

#define SHM_WORKERS 4                 /* copy threads per transport */
#define SHM_BOUNCE_SIZE (4u << 20)    /* per worker: local device <-> peer host memory */
#define SHM_PAGE_MAGIC 0x316d737972726566ull /* "ferrysm1" */
#define SHM_PAGE_SIZE 4096u
#define SHM_NOTIFY_MAX_NAME 127
#define SHM_NOTIFY_MAX 4096          /* a notification's bytes (ferry_batch_set_notify) */

/* Page 0 of an engine's shared memfd: peers map it read-only. */
struct shm_page {
    uint64_t magic;
    uint64_t token;                   /* the engine id: who this page belongs to */
    _Atomic uint64_t generation;      /* bumped when a remote-accessible buffer is unregistered */
};

/* Page 1: peers map it read-write and count what they moved here. */
struct shm_served {
    _Atomic uint64_t bytes;
    _Atomic uint64_t frames;
};

/* A remote-accessible registration of this engine (the register_memory
 * handle); device regions carry the IPC handle made at registration. */
struct shm_reg {
    struct shm_reg *next;
    uint64_t addr, len;
    size_t handle_len;                /* 0: host memory, or device memory that cannot be shared */
    uint8_t handle[FERRY_IPC_HANDLE_MAX];
};

/* A peer's device buffer opened here for one local device. */
struct shm_mapping {
    struct shm_mapping *next;
    int dev;
    void *ptr;                        /* stands for the buffer's addr; NULL: opening failed */
    int err;
    char msg[160];
};

/* One buffer a peer publishes. */
struct shm_rbuf {
    uint64_t addr, len;
    bool device;                      /* not host memory */
    const struct ferry_device_ops *ops; /* NULL for host memory or a kind this build lacks */
    int dev;                          /* the peer's device index */
    size_t handle_len;                /* 0: no IPC handle: unreachable through shm */
    uint8_t *handle;
    struct shm_mapping *maps;         /* under the peer's lock */
};

struct shm_transport;

struct shm_peer {
    struct shm_transport *t;
    char name[128];
    pid_t pid;
    bool self;                        /* the peer engine lives in this process */
    int pidfd;                        /* readable once the peer exits; -1 without pidfd_open */
    uint64_t token;                   /* its engine id */
    uint64_t gen;                     /* its generation when the descriptor was made */
    void *map;                        /* its shared memfd, 2 pages */
    struct shm_page *page;            /* mapped read-only */
    struct shm_served *served;
    size_t nbufs;
    struct shm_rbuf *bufs;            /* sorted by addr, as in the descriptor */
    pthread_mutex_t lock;             /* bufs[].maps */
    pthread_mutex_t notify_lock;      /* notify_fd and one notification at a time */
    int notify_fd;
    unsigned queued;                  /* frames queued or running (t->lock) */
    bool closing;                     /* (t->lock) */
};

struct shm_notify_service {
    int listen_fd;
    pthread_t thread;
    bool started;
    atomic_bool stop;
};

struct shm_transport {
    struct transport_host host;
    char boot_id[40];
    uint64_t pidns, netns;
    int page_fd;
    void *map;                        /* our memfd, 2 pages, read-write */
    struct shm_page *page;
    struct shm_served *served;

    pthread_mutex_t reg_lock;
    struct shm_reg *regs;

    pthread_mutex_t lock;             /* the queue and peers' queued/closing */
    pthread_cond_t work, idle, tick;
    struct xfer_frame *head, *tail;   /* FIFO; a frame's wire_id holds its peer */
    size_t nqueued;
    bool stopping;
    unsigned nworkers;
    pthread_t workers[SHM_WORKERS];
    pthread_t timer;
    bool timer_started;

    struct shm_notify_service notify;

    atomic_uint_fast64_t bytes_written, bytes_read, frames_sent, refused, completed, failed;
};

/* shm_copy.c */
int shm_workers_start(struct shm_transport *t);
/* Cancels what is still queued and joins the threads. */
void shm_workers_stop(struct shm_transport *t);
void shm_submit(void *t, void *peer, struct xfer_frame *f);
/* Ends the peer's queued frames FERRY_ECANCELED and waits for its running ones. */
void shm_peer_drain(struct shm_transport *t, struct shm_peer *p);
/* Index of the peer buffer wholly holding [addr, addr+len), or -1. */
long shm_find_rbuf(const struct shm_peer *p, uint64_t addr, uint64_t len);

/* shm_notify.c */
/* The abstract unix socket name of engine `token` in process pid. */
void shm_notify_name(pid_t pid, uint64_t token, char *out, size_t cap);
int shm_notify_start(struct shm_transport *t);
void shm_notify_stop(struct shm_transport *t);
/* Sends f's message to the peer and waits for its acknowledgement (until
 * f's deadline).  0 or FERRY_ECONN / FERRY_ETIMEDOUT with msg set. */
int shm_notify_send(struct shm_peer *p, const struct xfer_frame *f, char *msg, size_t cap);
void shm_notify_close(struct shm_peer *p);

#endif

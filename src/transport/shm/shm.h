/* SPDX-License-Identifier: Apache-2.0 */
/*
 * shm.h — the shm transport's internal state, shared by its four files:
 *   shm.c         identity, the shared page, registrations, describe,
 *                 peers, the ops table
 *   shm_copy.c    the work queue, its worker threads, the submitters' jobs
 *   shm_lane.c    one stream per device that jobs share, in order
 *   shm_frame.c   one frame's accesses, checks and copies
 *   shm_map.c     peers' device buffers opened here (IPC), their references
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
#include <sys/uio.h>

#include "device/device.h"
#include "transport/transport.h"

#define SHM_WORKERS 4                 /* copy threads per transport */
#define SHM_BOUNCE_SIZE (4u << 20)    /* per worker: local device <-> peer host memory */
#define SHM_PAGE_MAGIC 0x326d737972726566ull /* "ferrysm2" */
#define SHM_PAGE_SIZE 4096u
#define SHM_SLOTS 65536u              /* remote-accessible registrations (DESC_MAX_BUFFERS) */
#define SHM_ANNOUNCE_SLOTS 4096u      /* frames in flight into one engine, all peers together (64 per
                                         * busy initiator engine: SHM_WORKERS x GROUP_MAX) */
#define SHM_CHUNK (4u << 20)          /* host bytes copied between two checks for revocation */
#define SHM_ACCESS_MAX_NS 2000000000ull   /* an announced access copies nothing after this */
#define SHM_ACCESS_GRACE_NS 2000000000ull /* unregister's allowance for a copy started just before */
#define SHM_NOTIFY_MAX_NAME 127
#define SHM_NOTIFY_MAX 4096          /* a notification's bytes (ferry_batch_set_notify) */
#define SHM_LANES 8                   /* (device backend, device) pairs with a lane of jobs */
#define SHM_LANE_STREAMS_MAX 4        /* streams of one lane (FERRY_SHM_LANE_STREAMS) */

/*
 * The registry: a memfd the engine alone writes (sealed against any new
 * writable mapping and against resizing once made), which peers map
 * read-only.  It says which process and engine it belongs to and lists every
 * remote-accessible registration, so that an initiator checks each piece
 * against the process it copies into, never against a descriptor's author.
 */
struct shm_page {
    uint64_t magic;
    uint64_t token;                   /* the engine id */
    uint64_t pid;                     /* the owning process (a fork inherits the fd, not the role) */
    uint64_t addr;                    /* where the owner maps this page (the probe reads it there) */
    uint64_t shared_ino;              /* the owner's shared memfd */
    _Atomic uint64_t slots_used;      /* slots [0, slots_used) may be live */
    _Atomic uint64_t unregs;          /* bumped by every unregister (after its revocation): peers
                                       * then close their mappings of revoked buffers */
};

/* One registration in the registry (after the first page).  seq is odd while
 * the registration is live; the owner makes it even (revoked) first thing in
 * unregister, and changes the other fields only while it is even. */
struct shm_slot {
    _Atomic uint64_t seq;
    _Atomic uint64_t addr, len;
    _Atomic uint32_t handle_len;      /* 0: host memory, or device memory that cannot be shared */
    uint32_t device;                  /* not host memory */
    char location[32];
    uint8_t handle[FERRY_IPC_HANDLE_MAX];
};
#define SHM_REGISTRY_SIZE ((size_t)SHM_PAGE_SIZE + (size_t)SHM_SLOTS * sizeof(struct shm_slot))

/*
 * The shared memfd peers map read-write: counters of what they moved here,
 * and the announcements of their accesses in flight.  An initiator claims a
 * free announcement (word: its pid, a ticket, ACTIVE once the range is
 * set), then checks the registrations it will touch, copies, and clears the
 * word.  The owner's unregister revokes the slot, then waits for every
 * announcement whose range overlaps (or is not set yet) to clear, its owner
 * to die, or SHM_ACCESS_MAX_NS + SHM_ACCESS_GRACE_NS.  Both sides' first
 * step is a sequentially consistent store and their second a load of the
 * other's word: one of them sees the other (see shm_copy.c).
 */
#define SHM_ANN_PID_MASK 0x7fffffull  /* pid_max is at most 2^22 */
#define SHM_ANN_ACTIVE (1ull << 23)
#define SHM_ANN_TICKET_SHIFT 24
struct shm_announce {
    _Atomic uint64_t word;            /* 0: free */
    _Atomic uint64_t lo, hi;          /* remote range [lo, hi) the access may touch */
    _Atomic uint64_t expiry_ns;       /* CLOCK_MONOTONIC: no copy starts at or after it */
};
struct shm_served {
    _Atomic uint64_t bytes;
    _Atomic uint64_t frames;
    _Atomic uint32_t released;        /* futex: bumped whenever an announcement clears */
    _Atomic uint32_t waiters;         /* unregisters waiting on `released` */
};
#define SHM_ANNOUNCE_OFFSET 64u
#define SHM_SHARED_SIZE (SHM_ANNOUNCE_OFFSET + (size_t)SHM_ANNOUNCE_SLOTS * sizeof(struct shm_announce))

/* A remote-accessible registration of this engine (the register_memory
 * handle): its slot in the registry. */
struct shm_reg {
    struct shm_reg *next;
    uint32_t slot;
};

/* A peer's device buffer opened here for one local device (shm_map.c).
 * refs: one for b->maps while it is listed there, one per frame whose
 * copies use it and one per group that caches it; the last put closes it.
 * A mapping of a registration the peer revoked (or replaced) is retired:
 * unlisted at once, closed when no copy in flight uses it any more. */
struct shm_mapping {
    struct shm_mapping *next;
    struct shm_rbuf *buf;             /* the buffer it maps (retired: counted in buf->retired) */
    const struct ferry_device_ops *ops;
    int dev;
    void *ptr;                        /* stands for the buffer's addr; NULL: opening failed */
    size_t room;                      /* bytes from ptr to the end of what was opened */
    uint64_t seq;                     /* the registration (buf->seq) it was opened for */
    atomic_uint refs;
    int err;
    char msg[160];
};

/* One registration of a peer, as its registry listed it when we opened it. */
struct shm_rbuf {
    uint64_t addr, len;
    uint32_t slot;
    _Atomic uint64_t seq;             /* the slot's seq then: any change means unregistered (or
                                       * registered again over it: rbuf_registered_again) */
    bool device;                      /* not host memory */
    const struct ferry_device_ops *ops; /* NULL for host memory or a kind this build lacks */
    int dev;                          /* the peer's device index */
    size_t handle_len;                /* 0: no IPC handle: unreachable through shm (never changes) */
    uint8_t *handle;                  /* under the peer's lock (a new registration replaces it) */
    struct shm_mapping *maps;         /* under the peer's lock: mappings of registration seq */
    atomic_uint retired;              /* retired mappings not closed yet */
};

struct shm_transport;

struct shm_peer {
    struct shm_transport *t;
    char name[128];
    pid_t pid;
    bool self;                        /* the peer engine lives in this process */
    int pidfd;                        /* readable once the peer exits; -1 without pidfd_open */
    uint64_t token;                   /* its engine id */
    void *registry;                   /* its registry, mapped read-only */
    struct shm_page *page;
    struct shm_slot *slots;
    void *shared;                     /* its shared memfd, mapped read-write */
    struct shm_served *served;
    struct shm_announce *ann;
    size_t nbufs;
    struct shm_rbuf *bufs;            /* its registry's live slots when opened, sorted by addr */
    pthread_mutex_t lock;             /* bufs[].maps and .handle */
    pthread_mutex_t notify_lock;      /* notify_fd and one notification at a time */
    int notify_fd;
    uint64_t notify_last_ns;          /* now_ns() at its last message */
    unsigned queued;                  /* frames queued or running, and a sweep (t->lock) */
    bool closing;                     /* (t->lock) */
    struct shm_peer *next;            /* t->peers (t->lock) */
    uint64_t unregs_seen;             /* page->unregs at its last sweep (t->lock) */
    bool dead;                        /* its process exited: its mappings were closed (t->lock) */
    atomic_uint mapped;               /* mappings listed in bufs[].maps and open */
};

#define SHM_NOTIFY_MAX_ALLOW 16
struct shm_notify_service {
    uid_t allow[SHM_NOTIFY_MAX_ALLOW]; /* FERRY_SHM_ALLOW_UIDS */
    size_t nallow;
    int listen_fd;
    pthread_t thread;
    bool started;
    atomic_bool stop;
};

struct shm_transport {
    struct transport_host host;
    char boot_id[40];
    uint64_t pidns, netns;
    int page_fd, shared_fd;
    void *registry;                   /* our registry, read-write (mapped before sealing) */
    struct shm_page *page;
    struct shm_slot *slots;
    void *shared;                     /* our shared memfd */
    struct shm_served *served;
    struct shm_announce *ann;

    pthread_mutex_t reg_lock;         /* regs, slot_busy */
    struct shm_reg *regs;
    uint8_t *slot_busy;               /* SHM_SLOTS: slot taken (live, or revoked and draining) */

    pthread_mutex_t lock;             /* the queue, peers, and peers' queued/closing */
    struct shm_peer *peers;           /* open and not closing: the timer sweeps their mappings */
    pthread_cond_t work, idle, tick;
    struct xfer_frame *head, *tail;   /* FIFO; a frame's wire_id holds its peer */
    size_t nqueued;
    struct shm_group *jobs, *jobs_tail; /* issued by submitting threads: for a worker to wait for and end */
    struct shm_group *free_jobs;
    unsigned njobs;                   /* jobs allocated, at most SHM_JOBS */
    size_t job_frames;                /* their rooms (g->cap) together, at most SHM_JOB_FRAMES_ALL */
    unsigned jobs_out;                /* taken by submitting threads or queued, not yet ended */
    int submit_copies;                /* FERRY_SHM_SUBMIT_COPIES: 0, 1 (a stream per job), 2 (lanes) */
    pthread_mutex_t lanes_lock;       /* lanes[] */
    struct shm_lane *lanes[SHM_LANES];
    uint64_t spin_ns;                 /* FERRY_SHM_SPIN_US */
    unsigned lane_streams;            /* FERRY_SHM_LANE_STREAMS */
    uint64_t lane_mean_max;           /* FERRY_SHM_LANE_KB: a job of copies of at most this mean takes a lane */
    atomic_uint posted;               /* bumped (under lock) whenever frames or a job are queued */
    bool stopping;
    unsigned nworkers;
    pthread_t workers[SHM_WORKERS];
    pthread_t timer;
    bool timer_started;

    struct shm_notify_service notify;

    atomic_uint_fast64_t bytes_written, bytes_read, frames_sent, refused;
};

/* ------------------------------------------------------------ moving frames (shm_copy.c, shm_frame.c) */

#define SHM_GROUP_MAX 16              /* data frames a worker runs together; a job's first room */
#define SHM_JOB_FRAMES 128            /* frames one job may hold: a submit of 128 blocks of 1 MiB */
#define SHM_JOB_FRAMES_ALL 1024       /* the jobs' rooms together, at most (bounds their memory) */
#define SHM_GROUP_COPIES 256          /* device copies enqueued before one wait */
#define SHM_JOBS 32                   /* jobs per transport (allocated when first needed) */
/* shm_frame_run in a job: the frame is not for a job (not device to device)
 * or does not fit this one; it holds nothing (release it, rewind the copies) */
#define SHM_NOT_HERE 1
#define SHM_JOB_FULL 2

/* Device copies of the frames run together, enqueued and waited for once
 * per (device, direction) and at most SHM_GROUP_COPIES: one copy job.  A
 * job that fails fails the frames with a copy in it (which of its copies
 * were done is unknown), and only those: the other jobs' frames arrived. */
struct copy_batch {
    const struct ferry_device_ops *ops;
    int dev;
    enum ferry_copy_dir dir;
    size_t n;
    struct ferry_copy copies[SHM_GROUP_COPIES];
    uint8_t owner[SHM_GROUP_COPIES]; /* the copy's frame: its index in the group's runs */
};
_Static_assert(SHM_GROUP_MAX <= UINT8_MAX + 1 && SHM_JOB_FRAMES <= UINT8_MAX + 1,
               "copy_batch.owner indexes a group's frames");
_Static_assert(SHM_JOB_FRAMES_ALL >= SHM_JOBS * SHM_GROUP_MAX, "every job has its first room");

struct bounced {                      /* local device memory <-> peer host memory */
    char *local;
    uint64_t remote, len;
    const struct ferry_device_ops *ops;
    int dev;
};

/* A worker's scratch for the frame it runs: host copies and bounces, done
 * before the next frame starts. */
struct frame_moves {
    int nvm;                          /* host <-> host: one system call */
    uint64_t vm_bytes;
    struct iovec lvm[XFER_MAX_PIECES], rvm[XFER_MAX_PIECES];
    size_t nbounced;
    struct bounced bounced[XFER_MAX_PIECES];
};

struct shm_group;

/* A stream jobs of one device share (shm_lane.c), and the jobs on it. */
struct shm_lane_stream {
    ferry_stream *stream;
    unsigned refs;                    /* jobs on it not yet waited for (lane lock) */
    bool broken;                      /* it failed: new jobs go on a fresh one */
};

/* One device's lane: jobs' copies go on one stream in the order they come,
 * so the device runs them one after the other at full speed instead of
 * sharing itself among all of them (their ends then come one at a time, and
 * the submitting threads' work between batches overlaps the next jobs'
 * copies).  With width 2 or more, jobs take `width` streams in turn: the
 * next job's launch overlaps the tail of the one before.  Each job's end is
 * a mark the device stores in host memory. */
struct shm_lane {
    const struct ferry_device_ops *ops;
    int dev;
    pthread_mutex_t lock;             /* a job's copies and its mark go in together */
    unsigned width;                   /* FERRY_SHM_LANE_STREAMS: streams jobs take in turn */
    unsigned turn;                    /* the stream the next job takes */
    struct shm_lane_stream *cur[SHM_LANE_STREAMS_MAX];
    uint32_t *marks;                  /* host_alloc: a word per job, SHM_MARK_STRIDE apart */
    atomic_bool unmarked;             /* the device cannot mark (FERRY_ENOTSUP), or hung: not used any more */
    atomic_bool marks_kept;           /* a stream was abandoned: marks never freed (shm_lane.c) */
};
#define SHM_MARK_STRIDE 16u           /* words: one cache line per job */

/* One frame being moved. */
struct frame_run {
    /* what every frame sets and reads, together at the front: a submitting
     * thread fills the runs of a job a worker ended last (their lines come
     * from that worker's cache), so a frame touches as few lines as it can */
    struct shm_group *g;
    struct shm_peer *p;
    struct xfer_frame *f;
    bool write;
    bool whole;                       /* local[0] (or the job's access) holds every piece */
    int copy_err;                     /* a copy job holding a piece of it failed (then copy_msg) */
    uint64_t refused, moved;
    struct shm_announce *ann;         /* this access, announced in the peer's shared memfd */
    uint64_t expiry;                  /* no copy step starts at or after it */
    uint32_t ntouched, nlocal, nmaps;
    int ldev;
    const struct ferry_device_ops *lops; /* with whole: the local memory's backend (NULL: host) */
    char msg[160];
    char copy_msg[160];
    uint32_t touched[XFER_MAX_PIECES];           /* the peer buffers the pieces lie in */
    struct shm_mapping *maps[XFER_MAX_PIECES];   /* mappings its copies use (a ref each) */
    struct memreg_access local[XFER_MAX_PIECES]; /* the local registrations they lie in (one: all) */
};

/* Frames of one peer run together, and their device copies: a worker's
 * group (copies enqueued on the worker's thread stream and waited for
 * there), or a job a submitting thread filled (copies enqueued on the job's
 * stream; a worker waits for them and ends the frames). */
struct shm_group {
    struct shm_transport *t;
    struct shm_peer *p;
    bool job;
    bool gone;                        /* p's process had exited when the group started */
    size_t n;                         /* frames in runs[] */
    size_t cap;                       /* room in runs[] and rc[]: SHM_GROUP_MAX, a job's up to SHM_JOB_FRAMES */
    int *rc;
    struct frame_run *runs;
    struct copy_batch cb;
    struct shm_mapping *map;          /* the IPC mapping the last device piece used (a ref) */
    struct frame_moves *moves;        /* a worker's; NULL in a job */
    const struct ferry_device_ops *bounce_ops; /* a worker's pinned bounce */
    char *bounce;
    const struct ferry_device_ops *stream_ops; /* a job's own stream (no lane) */
    int stream_dev;
    ferry_stream *stream;
    unsigned id;                      /* a job's index: its mark in a lane */
    struct shm_lane *lane;            /* a job waiting by mark: its lane and stream */
    struct shm_lane_stream *ls;
    uint32_t mark;                    /* the value its mark will hold */
    /* a job's accesses for all its frames at once (shm_job_begin): one
     * announcement of the span of their remote bytes, one local access of
     * the span of their local bytes where one registration holds it */
    struct shm_announce *ann;
    uint64_t ann_lo, ann_hi, expiry;
    struct memreg_access local;
    bool lwhole;                      /* local holds the span; lops/ldev its backend */
    const struct ferry_device_ops *lops;
    int ldev;
    struct shm_group *next;           /* t->jobs or t->free_jobs */
};

/* shm_frame.c */
/* Sets fr->msg; returns code. */
int shm_fail(struct frame_run *fr, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
bool shm_peer_gone(const struct shm_peer *p);
/* Has the peer's process exited, waiting at most ms for its pidfd to say so? */
bool shm_peer_gone_within(const struct shm_peer *p, int ms);
/* shm.c: reads the peer's live slot i into b (a seqlock read: the fields of
 * one moment; location and handle: their room in struct shm_slot).  false:
 * free, revoked, changing, or malformed. */
bool shm_read_slot(struct shm_peer *p, uint32_t i, struct shm_rbuf *b, char *location, uint8_t *handle);
/* Could a job take f: every piece in a device buffer of p, the first
 * piece's local memory device memory?  A hint (the job checks again). */
bool shm_frame_for_job(struct shm_transport *t, const struct shm_peer *p, const struct xfer_frame *f);
/* Announces, checks and moves the frame's pieces but for the device copies,
 * which wait in fr->g->cb.  0, FERRY_E* (fr->msg), or in a job SHM_NOT_HERE
 * / SHM_JOB_FULL. */
int shm_frame_run(struct frame_run *fr);
/* After the group's copies were waited for: their result (the group counts
 * the bytes moved, once for all its frames). */
int shm_frame_finish(struct frame_run *fr);
/* Before a job's frames run (none yet): one announcement for the span of
 * fs[0..n)'s remote bytes and one local access for the span of their local
 * bytes, which the frames inside them use instead of their own (a frame
 * outside, or all when either cannot be had, announces and checks itself,
 * as a worker's does).  The frames' checks of every piece stay. */
void shm_job_begin(struct shm_group *g, struct xfer_frame *const *fs, size_t n);
/* After the job's frames were released: ends what shm_job_begin began. */
void shm_job_release(struct shm_group *g);
/* Ends the frame's accesses: its announcement, its local registrations. */
void shm_frame_release(struct frame_run *fr);
/* The copies of the group's frames failed with rc: each frame with a copy
 * in them fails, saying so. */
void shm_copies_failed(struct shm_group *g, int rc);
/* A worker's: runs the group's copies on the thread's stream and waits. */
void shm_copies_wait(struct shm_group *g);
/* Before copies are issued: those of frames past their announcement's
 * expiry are dropped and their frames fail FERRY_ETIMEDOUT. */
void shm_copies_drop_expired(struct shm_group *g);

/* shm_map.c */
/* Where the peer's device buffer b appears here for device dev: its
 * allocation opened through the IPC handle, once per (peer, buffer, dev),
 * held by the frame until it is released.  0 or FERRY_E* (fr->msg). */
int shm_remote_device_ptr(struct frame_run *fr, struct shm_rbuf *b, int dev, uint64_t remote, char **out);
/* b's slot changed: b's device memory registered again at b's address (and
 * location, at least b's length)?  Then b follows it, its old mappings
 * retired.  Otherwise b's mappings are retired and false. */
bool shm_rbuf_follow_device(struct shm_peer *p, struct shm_rbuf *b);
/* Drops the frame's references to mappings (its copies ended or never ran). */
void shm_frame_unmap(struct frame_run *fr);
/* Drops the group's cached mapping (before its frames end). */
void shm_group_unmap(struct shm_group *g);
/* The group's copies were abandoned on a hung device (stream_abandoned) and
 * may still run through its mappings: its references and its frames' are
 * kept, never put, so those mappings stay open to the process's end (a
 * buffer registered again at their address is refused FERRY_EBUSY). */
void shm_group_keep_maps(struct shm_group *g);
/* obj stays allocated to the process's end, on purpose (a hung copy may
 * still touch it): LeakSanitizer is told so, as nothing may point at it. */
void shm_keep_to_process_end(const void *obj);
/* Retires p's mappings of registrations its registry no longer lists as
 * the ones they were opened for (all: every mapping). */
void shm_peer_sweep(struct shm_peer *p, bool all);
/* Closes the mappings of a peer whose frames all ended. */
void shm_peer_unmap(struct shm_peer *p);

/* shm_lane.c */
/* The lane of (ops, dev), made when first asked for; NULL where the device
 * cannot mark a stream (the job then takes a stream of its own). */
struct shm_lane *shm_lane_get(struct shm_transport *t, const struct ferry_device_ops *ops, int dev);
/* Enqueues the job's copies and then its mark on the lane's stream.  0, or
 * the copy's error (the copies' frames fail); g->ls is set when the job is
 * to be waited for by its mark (else nothing of it is still running). */
int shm_lane_issue(struct shm_lane *lane, struct shm_group *g);
/* A worker: waits for the job's mark, then lets go of its stream.  0, or
 * the stream's error (the stream is retired). */
int shm_lane_wait(struct shm_group *g);
void shm_lanes_free(struct shm_transport *t);

/* shm_copy.c */
int shm_workers_start(struct shm_transport *t);
/* Cancels what is still queued and joins the threads. */
void shm_workers_stop(struct shm_transport *t);
void shm_submit(void *t, void *peer, struct xfer_frame *f);
/* Ends the peer's queued frames FERRY_ECANCELED and waits for its running ones. */
void shm_peer_drain(struct shm_transport *t, struct shm_peer *p);
/* Index of the peer buffer wholly holding [addr, addr+len), or -1. */
long shm_find_rbuf(const struct shm_peer *p, uint64_t addr, uint64_t len);
/* Target side of unregister: waits until no announced access may touch
 * [addr, addr+len) (the slot is already revoked).  Bounded (see above). */
void shm_wait_accesses(struct shm_transport *t, uint64_t addr, uint64_t len);

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

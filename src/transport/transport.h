/* SPDX-License-Identifier: Apache-2.0 */
/*
 * transport.h — the contract between the engine and a transport (tcp, rdma,
 * shm).  Each transport fills one struct transport_ops in its own file and
 * has one line in the registry (registry.c); the engine finds tables there
 * by name, only calls through them and never names a concrete transport.
 *
 * Work reaches a transport as frames: one or more pieces (local pointer,
 * remote address, length) of the same opcode to one peer.  submit() never
 * blocks on the network and never fails synchronously: every frame handed
 * over ends exactly once through frame->complete, from a transport thread.
 */
#ifndef FERRY_TRANSPORT_H
#define FERRY_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

#include "acceptor.h"
#include "auth.h"
#include "ferry.h"
#include "memreg.h"
#include "meta/descriptor.h"

enum xfer_op { XFER_READ = FERRY_READ, XFER_WRITE = FERRY_WRITE, XFER_NOTIFY = 2 };

/* Pieces per frame, at most: one bit each in the `refused` bitmap a frame
 * ends with.  The one name for this limit (tcp's wire entries, shm's and
 * rdma's piece arrays, staging's chunks, FERRY_COALESCE_MAX). */
#define XFER_MAX_PIECES 64
_Static_assert(XFER_MAX_PIECES <= 64, "a frame's refused bitmap is a uint64_t: one bit per piece");

struct xfer_piece {
    void *local;
    uint64_t remote;
    uint64_t len;
    uint32_t request;          /* index of the owning request in its batch */
};

struct xfer_frame {
    int opcode;                /* enum xfer_op */
    uint32_t npieces;
    struct xfer_piece *pieces;
    uint64_t bytes;            /* sum of piece lengths */
    const void *notify_msg;    /* XFER_NOTIFY only */
    size_t notify_len;
    uint64_t deadline_ns;      /* monotonic; the frame ends TIMEOUT after it */
    /* Called once when the frame ends, and only once the transport (and any
     * device copy it started) no longer touches the pieces' local memory:
     * ferry_unregister_memory waits for the requests on a range to end and
     * then lets the application free it.  err 0: every piece not set in
     * `refused` arrived; refused bit i: the target refused piece i (out of
     * its buffers, or unregistered while it was served).  msg explains a
     * non-zero err or refusal. */
    void (*complete)(struct xfer_frame *f, int err, uint64_t refused, const char *msg);
    void *owner;               /* the engine's (its batch) */
    uint64_t segment;          /* the engine's: target segment handle */
    int route;                 /* the engine's: transport index */
    /* the engine's: bytes of the further frames the submitter hands this
     * transport right after this one (same submit); 0: the last.  A
     * transport may do a small submit's work on the submitting thread and
     * leave a large one's to its threads. */
    uint64_t more_bytes;
    /* the engine's: the spread its submit's small blocks were cut for
     * (transport_ops.spread; 0 or 1: none).  A transport may open more
     * connections, up to this many, so that those frames move in parallel. */
    unsigned spread;
    /* set by staging: a WRITE whose chunk a staging worker hands over after
     * its device copy, not the submitting thread.  That worker retires every
     * thread's copies, so a transport must not do the frame's payload work
     * on it (tcp: no inline write; it would serialise every staged WRITE of
     * every submitting thread behind one socket copy at a time). */
    bool handed_over;
    /* transport-private from here */
    struct xfer_frame *next;
    uint64_t wire_id;
};

/* What the engine lends a transport: its registry (to check incoming
 * accesses), config, identity, and callbacks upward. */
struct transport_host {
    void *engine;
    struct memreg *registry;
    const struct ferry_config *cfg;
    const char *segment_name;
    uint64_t engine_id;
    const char *listen_host;
    /* a NOTIFY arrived: queue it for ferry_get_notifications.  from: the name
     * the sender gave itself (what the application sees); origin: where it came
     * from, which the sender cannot choose ("a.b.c.d:port" or "[v6]:port" of
     * its connection, the port ignored; "local" for a same-host sender): a full
     * queue counts notes per origin, so that no name a flooder gives itself
     * evicts another peer's notes */
    void (*deliver_notify)(void *engine, const char *from, const char *origin, const void *msg, size_t len);
    /* counts payload bytes that went through a bounce copy to device memory */
    atomic_uint_fast64_t *bytes_bounced;
    /* the engine's key (common/auth.h); auth_enabled() false: no authentication */
    const struct auth_key *auth;
    /* caps for the transport's listening port (common/acceptor.h) */
    struct acceptor_limits limits;
};

/* Capabilities (struct transport_ops.caps). */
#define TRANSPORT_NEEDS_HARDWARE 0x1u /* may find no device (or not be built): skippable with transport_fallback */
#define TRANSPORT_DEVICE_BY_NIC 0x2u  /* the device memory it can access, a NIC reads and writes: no device work
                                       * of this process (stream.c need not bounce it) */

struct transport_ops {
    const char *name;
    unsigned caps;             /* TRANSPORT_* */
    /* The FERRY_* variables this transport reads itself, ended by {NULL}
     * (NULL: none); ferry_config_describe lists them with the others. */
    const struct ferry_config_knob *knobs;
    /* Preference when several transports reach a peer: lower wins (rdma 0,
     * shm 10, tcp 100), whatever order the protocols were listed in. */
    int rank;
    /* Starts listening.  *out receives the transport's state.  NULL: a name
     * the registry knows but this build lacks (FERRY_ENOTSUP when asked). */
    int (*create)(const struct transport_host *host, void **out);
    /* Stops, fails every unfinished frame with FERRY_ECANCELED, frees. */
    void (*destroy)(void *t);
    /* This engine's endpoint as a JSON object text (malloc'd, caller frees). */
    int (*describe)(void *t, char **json);
    /* Prepares to talk to a peer described by d (connections open lazily).
     * FERRY_ENOTSUP if the peer does not offer this transport. */
    int (*peer_open)(void *t, const struct ferry_descriptor *d, void **peer);
    /* Closes a peer; its unfinished frames end FERRY_ECANCELED. */
    void (*peer_close)(void *t, void *peer);
    /* Hands a frame over (asynchronous; see above). */
    void (*submit)(void *t, void *peer, struct xfer_frame *f);
    /* Optional (NULL: 1).  How many frames to one peer this transport moves
     * at once with spare cores (tcp: connections with their own threads)
     * for requests of `opcode` (XFER_READ or XFER_WRITE: the directions may
     * differ), `staged` or not (frames of a staging pool's host chunks:
     * their bytes were written by a device, so each socket copy of them
     * reads memory cold in the CPU's caches, and more of those copies in
     * parallel may pay); the engine cuts a submit's small blocks into about
     * that many frames instead of coalescing them into as few as possible.
     * Asked once per direction and kind, right after create. */
    unsigned (*spread)(void *t, int opcode, bool staged);
    /* Optional (NULL: nothing to do).  Called for every registration, at
     * registration time, never on the hot path: an RDMA transport makes its
     * MRs here.  *handle is stored in the region's transport_handle[] slot
     * and handed back to unregister_memory. */
    int (*register_memory)(void *t, const struct memreg_region *r, void **handle);
    void (*unregister_memory)(void *t, void *handle);
    /* Can this transport touch memory at this location directly? */
    int (*can_access)(void *t, const struct memreg_region *r);
    /* Optional (NULL: every buffer the peer publishes).  Can this transport
     * reach [remote, remote+len) of the peer?  shm cannot reach a peer's
     * device memory that has no IPC handle; the engine should then route
     * the request through another transport. */
    int (*can_reach)(void *t, void *peer, uint64_t remote, uint64_t len);
    /* Fills the transport's own counters (bytes, frames, refusals).  The
     * engine owns and sets requests_completed, requests_failed, bytes_staged
     * and bytes_bounced: a transport leaves them alone (it sees frames, not
     * requests). */
    void (*stats)(void *t, struct ferry_transport_stats *out);
};

/* The registry (registry.c).  transport_find: the table named name, or
 * NULL.  transport_list: every table, in registry order (the built-in ones,
 * then those added with transport_register). */
const struct transport_ops *transport_find(const char *name);
const struct transport_ops *const *transport_list(size_t *count);
/* Adds a table at run time (a test's plug-in; call before creating the
 * engines that use it, not concurrently with them).  FERRY_EEXIST if the
 * name is taken, FERRY_ENOMEM when the registry is full. */
int transport_register(const struct transport_ops *ops);

/* Tables the tests reach directly; a new transport needs no line here. */
extern const struct transport_ops ferry_tcp_transport;
extern const struct transport_ops ferry_shm_transport; /* shm.c: same host */
#ifdef FERRY_HAVE_RDMA
extern const struct transport_ops ferry_rdma_transport; /* rdma.c: libibverbs */
#endif

#endif

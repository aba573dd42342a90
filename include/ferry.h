/*
 * ferry.h — the whole public API of libferry.
 *
 * ferry moves registered memory (KV-cache blocks, typically) between processes
 * and hosts with one-sided WRITE and READ.  A process creates one engine; it
 * registers the memory peers may touch; it opens a peer's segment by name and
 * submits batches of requests that complete asynchronously.
 *
 * Conventions
 *  - Every function that can fail returns 0 or a negative FERRY_E* code.
 *    ferry_strerror() names a code; ferry_last_error() gives the calling
 *    thread's detail message for the most recent failure (which address,
 *    which peer, why).
 *  - All functions are thread-safe unless their comment says otherwise.
 *  - Addresses of remote memory are the peer's own virtual addresses, as
 *    published in its segment descriptor.
 */
#ifndef FERRY_H
#define FERRY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FERRY_VERSION_MAJOR 0
#define FERRY_VERSION_MINOR 1
#define FERRY_VERSION_PATCH 0

/* Marks the library's exported functions (everything else is hidden). */
#if defined(__GNUC__)
#define FERRY_API __attribute__((visibility("default")))
#else
#define FERRY_API
#endif

/* ---------------------------------------------------------------- errors */

/* Error codes. 0 is success; every failure is one of these negative values. */
enum ferry_error {
    FERRY_OK = 0,
    FERRY_EINVAL = -1,      /* an argument is invalid (NULL, zero length, bad flag) */
    FERRY_ENOMEM = -2,      /* out of memory */
    FERRY_ENOTREG = -3,     /* local address range is not inside a registration */
    FERRY_ERANGE = -4,      /* remote range is outside the target's registered buffers */
    FERRY_ENOSEG = -5,      /* unknown segment (name cannot be resolved or handle is stale) */
    FERRY_ECONN = -6,       /* the peer cannot be reached or the connection broke */
    FERRY_ETIMEDOUT = -7,   /* a deadline passed */
    FERRY_EPROTO = -8,      /* malformed bytes from a peer (bad frame, bad descriptor) */
    FERRY_EVERSION = -9,    /* peer speaks an incompatible format or wire version */
    FERRY_EFULL = -10,      /* a batch has no room for more requests */
    FERRY_ENODEV = -11,     /* the location names a device this host does not have */
    FERRY_ENOTSUP = -12,    /* the operation is not supported (yet) on this path */
    FERRY_EEXIST = -13,     /* the range overlaps an existing registration */
    FERRY_EBUSY = -14,      /* the object is in use (batch still running, port taken) */
    FERRY_ESTALE = -15,     /* the peer restarted; its old descriptor is no longer valid */
    FERRY_EIO = -16,        /* a system call or device call failed */
    FERRY_ECANCELED = -17,  /* the engine was shut down before the request finished */
};

/* Returns a static, human-readable name for an error code ("remote range outside
 * registered buffers").  Never NULL, also for unknown codes. */
FERRY_API const char *ferry_strerror(int err);

/* Returns the symbolic name of a code ("FERRY_ERANGE"). Never NULL. */
FERRY_API const char *ferry_err_name(int err);

/* Returns the calling thread's detail message for its most recent failed call
 * into ferry ("" if none).  The string belongs to the thread and is valid until
 * its next ferry call. */
FERRY_API const char *ferry_last_error(void);

/* ---------------------------------------------------------------- config */

/* Engine configuration.  Fill it with ferry_config_init(), then change fields.
 * String fields are copied by ferry_engine_create(); the caller keeps ownership. */
struct ferry_config {
    /* "host" or "host:port".  The handshake listener binds that port; if it is
     * taken or 0/absent, a free port is chosen.  Default "127.0.0.1". */
    const char *local_server_name;
    /* "P2PHANDSHAKE" (default): descriptors fetched from the peer directly;
     * "etcd://host:port[,host:port]" or "redis://host:port": a shared store. */
    const char *metadata_server;
    /* Key prefix in etcd/Redis (default "ferry/segments/"). */
    const char *metadata_prefix;
    /* Lease / TTL of a published descriptor in seconds (default 10); kept
     * alive while the engine lives. */
    unsigned metadata_ttl_s;
    /* Comma-separated transports this engine offers: "tcp" (default), "shm"
     * (peers on the same host: cross-memory attach, and CUDA IPC for GPU
     * memory), "rdma".  Per request the best one both sides speak is used
     * (rdma > shm > tcp), whatever the order here. */
    const char *protocols;
    /* NIC list for rdma ("mlx5_0,mlx5_1" or "auto"); ignored by tcp. */
    const char *device_name;
    unsigned tcp_connections;   /* data connections per peer (default 4) */
    size_t slice_size;          /* a request is cut into slices of this many bytes (default 1 MiB) */
    unsigned coalesce_max;      /* small requests coalesced into one frame, at most (default 64) */
    unsigned request_timeout_ms;/* a request not finished by then ends TIMEOUT (default 30000) */
    unsigned connect_timeout_ms;/* connecting / handshaking with a peer (default 5000) */
    size_t staging_chunk_size;  /* pinned chunk size for device staging (default 2 MiB) */
    unsigned staging_chunks;    /* chunks per device pool = pipeline depth (default 16) */
    unsigned notify_queue_max;  /* received notifications kept before the oldest is dropped (default 4096) */
    int log_level;              /* 0 error, 1 warn, 2 info, 3 debug (default 1) */
};

/* Fills *cfg with defaults, then applies FERRY_* environment variables (see
 * ferry_config_describe).  Returns 0, or FERRY_EINVAL if an environment value
 * does not parse (the detail message names the variable). */
FERRY_API int ferry_config_init(struct ferry_config *cfg);

/* One row of the configuration table: every knob, its environment variable,
 * default and meaning.  Used by `ferry-bench --help-env` and the README. */
struct ferry_config_knob {
    const char *env;          /* "FERRY_TCP_CONNECTIONS" */
    const char *default_text; /* "4" */
    const char *doc;          /* one line */
};

/* Returns the table of knobs and stores its length in *count.  Static storage. */
FERRY_API const struct ferry_config_knob *ferry_config_describe(size_t *count);

/* ---------------------------------------------------------------- engine */

typedef struct ferry_engine ferry_engine;

/* Creates an engine: starts the handshake listener and every transport named in
 * cfg->protocols.  cfg may be NULL (defaults plus environment).  On success
 * stores the engine in *out and returns 0. */
FERRY_API int ferry_engine_create(const struct ferry_config *cfg, ferry_engine **out);

/* Stops listeners and transports, fails every unfinished request with
 * FERRY_ECANCELED, and frees the engine.  Batches must not be used afterwards,
 * except ferry_batch_free.  Must not be called while another thread is inside a
 * call on the same engine. NULL is accepted. */
FERRY_API void ferry_engine_destroy(ferry_engine *engine);

/* Returns this engine's segment name, "host:port" of its handshake listener
 * (the port actually bound).  Valid for the engine's lifetime. */
FERRY_API const char *ferry_engine_segment_name(const ferry_engine *engine);

/* Returns the TCP port of the handshake listener (what get_rpc_port reports). */
FERRY_API int ferry_engine_handshake_port(const ferry_engine *engine);

/* ---------------------------------------------------------------- memory */

/* Registers [addr, addr+len) with the engine and every transport.
 * location: "cpu", "cpu:NUMA", "cuda:N", "npu:N", "sim:N", or NULL to detect
 * (host memory unless a device claims the pointer).  remote_accessible != 0
 * publishes the buffer in this engine's descriptor so peers may READ/WRITE it.
 * Returns 0; FERRY_EINVAL (NULL / zero length / bad location string);
 * FERRY_ENODEV (location names an absent device); FERRY_EEXIST (overlaps an
 * existing registration). */
FERRY_API int ferry_register_memory(ferry_engine *engine, void *addr, size_t len,
                          const char *location, int remote_accessible);

/* Allocates len bytes of memory at `location` ("cpu" gives page-aligned host
 * memory; "cuda:N", "npu:N", "sim:N" device memory through the device layer).
 * The memory is not registered.  Returns 0, FERRY_ENODEV, FERRY_ENOMEM. */
FERRY_API int ferry_mem_alloc(ferry_engine *engine, const char *location, size_t len, void **out);

/* Frees memory from ferry_mem_alloc (same location string). */
FERRY_API void ferry_mem_free(ferry_engine *engine, const char *location, void *ptr, size_t len);

/* Copies len bytes between any two memories this engine knows (host or device,
 * located by registration or by the device layer) and waits for the copy.
 * For tests and tools that must fill or check device memory; not a fast path.
 * Returns 0, FERRY_EINVAL, FERRY_EIO. */
FERRY_API int ferry_mem_copy(ferry_engine *engine, void *dst, const void *src, size_t len);

/* Unregisters the registration that starts at addr.  Returns 0 or
 * FERRY_ENOTREG.  The caller must ensure no request of its own still uses it;
 * peers that access it afterwards get FERRY_ERANGE. */
FERRY_API int ferry_unregister_memory(ferry_engine *engine, void *addr);

/* ---------------------------------------------------------------- segments */

typedef uint64_t ferry_segment_t;   /* 0 is never a valid handle */

/* Resolves a peer by name ("host:port" with P2PHANDSHAKE), fetches and caches
 * its descriptor, and stores a handle in *out.  Opening the same name twice
 * returns the same handle.  Returns 0, FERRY_ENOSEG (cannot resolve / connect),
 * FERRY_EVERSION (incompatible peer), FERRY_EPROTO (malformed descriptor). */
FERRY_API int ferry_open_segment(ferry_engine *engine, const char *name, ferry_segment_t *out);

/* Forgets a segment handle and closes its connections.  Requests still using
 * it fail with FERRY_ECANCELED. Returns 0 or FERRY_ENOSEG. */
FERRY_API int ferry_close_segment(ferry_engine *engine, ferry_segment_t segment);

/* One remote-accessible buffer of a segment, as its descriptor publishes it. */
struct ferry_buffer_info {
    uint64_t addr;
    uint64_t len;
    char location[32];
};

/* Copies up to max entries of the segment's published buffers into out and
 * stores the total number in *count.  Returns 0 or FERRY_ENOSEG. */
FERRY_API int ferry_segment_buffers(ferry_engine *engine, ferry_segment_t segment,
                          struct ferry_buffer_info *out, size_t max, size_t *count);

/* ---------------------------------------------------------------- transfers */

enum ferry_opcode { FERRY_READ = 0, FERRY_WRITE = 1 };

/* One transfer.  WRITE copies length bytes from local `source` to the target's
 * address `target_offset`; READ copies them from the target into `source`.
 * `source` must lie inside one local registration, [target_offset,
 * target_offset+length) inside one of the target's remote-accessible buffers. */
struct ferry_request {
    int opcode;                 /* enum ferry_opcode */
    void *source;
    ferry_segment_t target;
    uint64_t target_offset;
    size_t length;
};

enum ferry_state {
    FERRY_PENDING = 0,          /* submitted, not finished */
    FERRY_COMPLETED = 1,        /* bytes are in the final memory */
    FERRY_FAILED = 2,           /* see error and message */
    FERRY_TIMEOUT = 3,          /* not finished within request_timeout_ms */
    FERRY_UNUSED = 4,           /* slot not submitted */
};

struct ferry_status {
    int state;                  /* enum ferry_state */
    int error;                  /* 0, or the FERRY_E* code that ended it */
    uint64_t transferred;       /* bytes known to have arrived */
    char message[160];          /* reason when FAILED/TIMEOUT, else "" */
};

typedef struct ferry_batch ferry_batch;

/* Allocates a batch able to hold `capacity` requests (over one or more
 * submits).  The caller owns it and frees it with ferry_batch_free. */
FERRY_API int ferry_batch_alloc(ferry_engine *engine, size_t capacity, ferry_batch **out);

/* Attaches a notification (at most 4096 bytes, copied) to the batch.  Once every
 * request of the batch has COMPLETED, it is delivered to each target segment the
 * batch wrote to or read from; the target sees it only after the batch's data is in
 * its memory.  Must be called before the first submit.  Returns 0, FERRY_EINVAL,
 * FERRY_EBUSY (already submitted). */
FERRY_API int ferry_batch_set_notify(ferry_batch *batch, const void *msg, size_t len);

/* Validates and submits n requests; they start at once and complete
 * asynchronously.  All-or-nothing: if any request is invalid (unregistered
 * local memory, unknown segment, remote range outside the target's buffers,
 * zero length) nothing is submitted and the error is returned, naming the
 * index in the detail message.  FERRY_EFULL if the batch lacks room. */
FERRY_API int ferry_batch_submit(ferry_batch *batch, const struct ferry_request *reqs, size_t n);

/* Number of requests submitted to the batch so far. */
FERRY_API size_t ferry_batch_size(const ferry_batch *batch);

/* Stores the status of request `index` (in submit order) in *st.  Returns 0 or
 * FERRY_EINVAL for an index never submitted. */
FERRY_API int ferry_batch_status(ferry_batch *batch, size_t index, struct ferry_status *st);

/* Waits until every submitted request (and the notification, if any) has ended,
 * or timeout_ms passes (-1: no limit; the engine's request timeout still bounds
 * it).  Returns 0 when all COMPLETED; the error of the first request that did
 * not complete; FERRY_ETIMEDOUT if timeout_ms ran out first (requests go on). */
FERRY_API int ferry_batch_wait(ferry_batch *batch, int timeout_ms);

/* Frees a batch.  If requests are still running it waits for them to end.
 * NULL is accepted. */
FERRY_API void ferry_batch_free(ferry_batch *batch);

/* ---------------------------------------------------------------- notifications */

struct ferry_notification {
    char from[128];             /* the sender's segment name */
    size_t len;
    uint8_t msg[4096];
};

/* Moves up to max received notifications into out (oldest first) and stores how
 * many in *count.  Non-blocking; returns 0. */
FERRY_API int ferry_get_notifications(ferry_engine *engine, struct ferry_notification *out,
                            size_t max, size_t *count);

/* ---------------------------------------------------------------- stats */

struct ferry_transport_stats {
    char name[16];              /* "tcp" */
    uint64_t bytes_written;     /* payload bytes of WRITE sent by this engine */
    uint64_t bytes_read;        /* payload bytes of READ received by this engine */
    uint64_t bytes_served;      /* payload bytes peers wrote or read here */
    uint64_t requests_completed;
    uint64_t requests_failed;
    uint64_t frames_sent;
    uint64_t refused;           /* incoming accesses refused (out of range, bad frame) */
    uint64_t bytes_staged;      /* of bytes_written/read: moved through a device staging pool */
    uint64_t bytes_bounced;     /* of bytes_served: device memory served through a bounce copy */
    /* appended fields: */
    uint64_t bytes_target_staged; /* of bytes_written/read: staged by the target (its device memory that
                                   * its NICs cannot reach went through its bounce) */
    size_t nic_count;           /* NICs this transport uses (rdma), at most FERRY_STATS_MAX_NICS */
    struct ferry_nic_stats {
        char name[64];          /* "mlx5_0" */
        uint64_t bytes;         /* bytes this engine's work requests moved through it, both directions */
    } nics[8];
};
#define FERRY_STATS_MAX_NICS 8

struct ferry_stats {
    size_t transport_count;
    struct ferry_transport_stats transports[4];
};

/* Fills *out with this engine's counters. Returns 0. */
FERRY_API int ferry_get_stats(ferry_engine *engine, struct ferry_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* FERRY_H */

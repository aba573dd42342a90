/* SPDX-License-Identifier: Apache-2.0 */
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
 *
 * Stability promise (ABI)
 *  - libferry.so.N: N is FERRY_ABI_VERSION.  Within one N, a program built
 *    against an older ferry.h runs unchanged with a newer library: functions,
 *    error codes and enum values are only added, never removed or renumbered.
 *  - struct ferry_config and struct ferry_stats (with struct
 *    ferry_transport_stats) grow only at their end.  The caller's compiled
 *    size travels with them: ferry_config_init() and ferry_get_stats() are
 *    macros that pass sizeof, and ferry_config records it in struct_size.  The
 *    library then reads and writes only the caller's bytes; knobs the caller
 *    does not know keep their defaults (and FERRY_* environment values).
 *    Adding a knob or a counter is one line at the end of its struct
 *    (tests/unit/test_abi.c fails when an existing field moves).
 *  - Every other struct (ferry_request, ferry_status, ferry_buffer_info,
 *    ferry_notification, ferry_config_knob) is frozen for a given N; changing
 *    one bumps FERRY_ABI_VERSION and with it the SONAME.
 *  - Before 1.0 the API may change between minor versions; the SONAME says
 *    whether a rebuild is needed.
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
/* The SONAME's number: libferry.so.FERRY_ABI_VERSION (see the promise above). */
#define FERRY_ABI_VERSION 1

/* Marks the library's exported functions (everything else is hidden). */
#if defined(__GNUC__)
#define FERRY_API __attribute__((visibility("default")))
#else
#define FERRY_API
#endif

/* The library's version as "MAJOR.MINOR.PATCH" (of the .so actually loaded,
 * which may be newer than the header a program was built with). */
FERRY_API const char *ferry_version(void);

/* ---------------------------------------------------------------- errors */

/* Error codes. 0 is success; every failure is one of these negative values.
 * FERRY_ERRNO_MAP(X) lists each as X(NAME, value, text); the enum below,
 * ferry_strerror and ferry_err_name are all generated from it (as libuv's
 * UV_ERRNO_MAP), so a new code is one line here.  Values never change. */
#define FERRY_ERRNO_MAP(X)                                                                  \
    X(OK, 0, "success")                                                                       \
    X(EINVAL, -1, "invalid argument")              /* NULL, zero length, bad flag */          \
    X(ENOMEM, -2, "out of memory")                                                            \
    X(ENOTREG, -3, "local memory is not registered") /* local range not in a registration */ \
    X(ERANGE, -4, "remote range outside the target's registered buffers")                    \
    X(ENOSEG, -5, "unknown segment")               /* name unresolvable or handle stale */    \
    X(ECONN, -6, "peer unreachable or connection broken")                                     \
    X(ETIMEDOUT, -7, "timed out")                  /* a deadline passed */                    \
    X(EPROTO, -8, "malformed data from peer")      /* bad frame, bad descriptor */            \
    X(EVERSION, -9, "incompatible peer version")   /* format or wire version */               \
    X(EFULL, -10, "batch is full")                                                            \
    X(ENODEV, -11, "no such device")               /* location names an absent device */      \
    X(ENOTSUP, -12, "not supported")               /* not (yet) on this path */               \
    X(EEXIST, -13, "overlaps an existing registration")                                       \
    X(EBUSY, -14, "busy")                          /* batch still running, port taken */      \
    X(ESTALE, -15, "peer restarted; descriptor is stale")                                     \
    X(EIO, -16, "I/O or device error")             /* a system or device call failed */       \
    X(ECANCELED, -17, "canceled")                  /* shutdown, close or unregister */        \
    X(EPERM, -18, "permission denied")             /* peer failed authentication */

#define FERRY_ERRNO_ENUM_(name, value, text) FERRY_##name = (value),
enum ferry_error { FERRY_ERRNO_MAP(FERRY_ERRNO_ENUM_) };
#undef FERRY_ERRNO_ENUM_

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
 * String fields are copied by ferry_engine_create(); the caller keeps ownership.
 * New knobs are added at the end only (see the stability promise above). */
struct ferry_config {
    /* sizeof(struct ferry_config) as the caller compiled it; set by
     * ferry_config_init(), never by hand. */
    size_t struct_size;
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
    unsigned notify_queue_max;  /* notifications kept (default 4096); a full queue drops the
                                 * oldest of the peer holding the most */
    int log_level;              /* 0 error, 1 warn, 2 info, 3 debug (default 1) */
    /* With a metadata store: the name this engine publishes itself under
     * (the reference engine uses its local_hostname as given); NULL/"": the
     * host:port of the handshake listener.  Ignored with P2PHANDSHAKE. */
    const char *segment_name;
    /* With a metadata store: the address the handshake listener and transports
     * bind (NULL/"": the host of local_server_name).  Ignored with P2PHANDSHAKE. */
    const char *bind_address;
    /* 1 (default): a listed transport that finds no usable device (rdma with
     * no NIC, or not built) is skipped with one warning; if none is left, tcp
     * runs.  0: every listed transport is required (FERRY_ENODEV otherwise). */
    unsigned transport_fallback;
    /* Limits on each listening port (handshake, tcp data, rdma side channel):
     * connections at once in total (0, the default: a quarter of the process's
     * RLIMIT_NOFILE, at most 4096) and from one IPv4 address (default 64). */
    unsigned max_connections;
    unsigned max_connections_per_peer;
    /* A data connection on which nothing arrives for this long is closed by the
     * target (default 120000); initiators retire theirs after half of it. */
    unsigned idle_timeout_ms;
    /* Shared-secret mutual authentication (off when both are NULL or "").
     * With a key, every handshake and every data or side-channel connection
     * starts with an HMAC-SHA256 challenge-response in both directions; a peer
     * without the same key gets no descriptor and no connection (FERRY_EPERM
     * naming the peer).  auth_key is the secret itself (at least 16 bytes);
     * auth_key_file a file holding it (read at engine creation; trailing
     * newlines are not part of the key).  Both sides need the same key. */
    const char *auth_key;
    const char *auth_key_file;
};

/* Fills *cfg with defaults, then applies FERRY_* environment variables (see
 * ferry_config_describe), and sets cfg->struct_size.  Returns 0, or
 * FERRY_EINVAL if an environment value does not parse (the detail message
 * names the variable) or size is too small to hold struct_size.
 * ferry_config_init(cfg) is the way to call it: the macro passes the caller's
 * sizeof, so a program built against an older, smaller struct stays safe. */
FERRY_API int ferry_config_init_sized(struct ferry_config *cfg, size_t size);
#define ferry_config_init(cfg) ferry_config_init_sized((cfg), sizeof *(cfg))

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
 * cfg->protocols.  cfg may be NULL (defaults plus environment); otherwise it
 * must have been filled by ferry_config_init (FERRY_EINVAL if struct_size is
 * not a size it could have set; FERRY_ENOTSUP if a caller built against a
 * newer ferry.h set knobs this library does not know).  On success stores the
 * engine in *out and returns 0. */
FERRY_API int ferry_engine_create(const struct ferry_config *cfg, ferry_engine **out);

/* Stops listeners and transports, fails every unfinished request with
 * FERRY_ECANCELED, and frees the engine.  Batches must not be used afterwards,
 * except ferry_batch_free.  Must not be called while another thread is inside a
 * call on the same engine. NULL is accepted. */
FERRY_API void ferry_engine_destroy(ferry_engine *engine);

/* Tells ferry that the process is ending: from now on it makes no call into a
 * device runtime, and engines destroyed afterwards leave their device resources
 * (streams, pinned and device memory) to the OS.  For exit hooks that run before
 * the C library's own: a framework's exit hook may finalize a runtime that ferry
 * shares (torch_npu's calls aclFinalize), and engines still alive are destroyed
 * after it, when the interpreter ends.  ferry's Python package calls it from an
 * atexit hook; ferry marks C exit() itself.  Any thread; cannot fail; for good. */
FERRY_API void ferry_process_exiting(void);

/* Returns this engine's segment name: "host:port" of its handshake listener
 * (the port actually bound), or cfg->segment_name with a metadata store.  An
 * Ascend-style ":npu_N" suffix of local_server_name is not part of it.  Valid
 * for the engine's lifetime. */
FERRY_API const char *ferry_engine_segment_name(const ferry_engine *engine);

/* Returns the TCP port of the handshake listener (what get_rpc_port reports). */
FERRY_API int ferry_engine_handshake_port(const ferry_engine *engine);

/* ---------------------------------------------------------------- memory */

/* Registers [addr, addr+len) with the engine and every transport.
 * location: "cpu", "cpu:NUMA", "cuda:N", "npu:N", "sim:N", or NULL to detect
 * (host memory unless a device claims the pointer; a device whose driver the
 * application loaded already, e.g. torch's CUDA, is asked too).  remote_accessible != 0
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
 * FERRY_ENOTREG.
 *
 * When it returns, ferry neither reads nor writes the range any more, on any
 * transport, and the caller may free or reuse the memory at once:
 * - requests of this engine that read from the range (WRITE) or write into it
 *   (READ) are waited for: it returns after each has ended (COMPLETED, FAILED
 *   or TIMEOUT; every request ends by its deadline, request_timeout_ms after
 *   submit).  Call it from a thread that is not itself needed to end them;
 * - peers' accesses in flight to the range (their WRITE being received into
 *   it, their READ being sent from it, a bounce copy to or from device
 *   memory) are revoked and stopped: the rest of a WRITE's payload is
 *   discarded and a READ's is sent as zeros; the peer's request ends FAILED
 *   FERRY_ERANGE.  Bytes already moved before the call stay moved;
 * - later accesses by peers are refused with FERRY_ERANGE, and submits that
 *   name the range fail with FERRY_ENOTREG.
 * Any thread may call. */
FERRY_API int ferry_unregister_memory(ferry_engine *engine, void *addr);

/* ---------------------------------------------------------------- segments */

typedef uint64_t ferry_segment_t;   /* 0 is never a valid handle */

/* Resolves a peer by name ("host:port" with P2PHANDSHAKE), fetches and caches
 * its descriptor, and stores a handle in *out.  Opening the same name twice
 * returns the same handle.  Returns 0, FERRY_ENOSEG (cannot resolve / connect),
 * FERRY_EVERSION (incompatible peer), FERRY_EPROTO (malformed descriptor),
 * FERRY_EPERM (authentication failed: one side has no key, or the keys differ;
 * the detail message names the peer). */
FERRY_API int ferry_open_segment(ferry_engine *engine, const char *name, ferry_segment_t *out);

/* Asks now whether the segment `name` can be resolved: fetches its descriptor
 * from the metadata backend (with P2PHANDSHAKE: from the peer's listener)
 * without touching the cached handle or its connections.  If the engine now
 * answering is not the one an open segment of that name describes (the peer
 * restarted), that segment's descriptor is fetched again before its next use.
 * Returns 0, FERRY_ENOSEG (unknown / unreachable), FERRY_EVERSION,
 * FERRY_EPROTO. */
FERRY_API int ferry_probe_segment(ferry_engine *engine, const char *name);

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
 * stores the total number in *count.  They come in the order the segment
 * registered them (the first is the reference engine's
 * get_first_buffer_address); an unregistered buffer leaves the list.  A
 * segment whose peer restarted (a transfer to it failed so, or a probe saw a
 * new engine) is fetched again first, so the list is the new process's.
 * Returns 0 or FERRY_ENOSEG. */
FERRY_API int ferry_segment_buffers(ferry_engine *engine, ferry_segment_t segment,
                          struct ferry_buffer_info *out, size_t max, size_t *count);

/* ---------------------------------------------------------------- transfers */

enum ferry_opcode { FERRY_READ = 0, FERRY_WRITE = 1 };

/* One transfer.  WRITE copies length bytes from local `source` to the target's
 * address `target_offset`; READ copies them from the target into `source`.
 * `source` must lie inside one local registration, [target_offset,
 * target_offset+length) inside one of the target's remote-accessible buffers.
 * A request of length 0 moves nothing and completes at submit; neither of
 * its addresses is checked (as in the reference engine), only its opcode and
 * segment. */
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
 * bad opcode) nothing is submitted and the error is returned, naming the
 * index in the detail message.  FERRY_EFULL if the batch lacks room. */
FERRY_API int ferry_batch_submit(ferry_batch *batch, const struct ferry_request *reqs, size_t n);

/* Submits n requests in the order of a device stream: the transfer starts
 * when `stream` — the caller's native stream of device `location` ("cuda:N":
 * a CUstream / cudaStream_t, NULL for the legacy default stream; "sim:N": a
 * sim stream) — reaches this point, and work enqueued on the stream
 * afterwards waits until every request has ended (completed or failed), with
 * no host synchronization in the caller (cuLaunchHostFunc plus
 * cuStreamWaitValue32 on CUDA).  The requests are validated now, as by
 * ferry_batch_submit, and nothing is enqueued if one is invalid.  The batch
 * must be empty and takes no other submit; ferry_batch_wait / _status report
 * the outcome (a wait also waits for the stream to reach the transfer).
 * Streams should have passed every such transfer before the engine is
 * destroyed; one a stream reaches afterwards sends nothing and ends
 * FERRY_ECANCELED, the stream goes on, and ferry_batch_free (which waits for
 * the stream to get there) may free its batch.  Returns 0; FERRY_EINVAL,
 * FERRY_ENOTREG, FERRY_ENOSEG, FERRY_ERANGE as ferry_batch_submit; FERRY_EBUSY (batch not empty);
 * FERRY_ENOTSUP (the location's device has no streams); another code if the
 * driver refused the stream (not a stream of that device: FERRY_EINVAL; a
 * driver error: FERRY_EIO): the transfer then starts at once, unordered, and
 * the batch reports it as usual.
 *
 * Requests to the engine's own segment (the reference's test_transfer_on_cuda
 * writes a tensor to another of the same engine) are copies on `stream`
 * itself, with no transfer: each source must be registered and each target
 * registered remote-accessible, both in host memory or memory of `location`.
 *
 * Device memory of `location` sent to or read from another engine passes
 * through pinned host memory (grown on demand up to FERRY_STREAM_BOUNCE_MB,
 * kept until the engine is destroyed) with the copies on `stream` itself:
 * a WRITE's before the transfer, a READ's after it.  So while the stream
 * waits, ferry does no device work for the transfer, and a call that waits
 * for every stream of the device, made meanwhile by another thread of this
 * process (cuMemFree, cuMemFreeHost, a module load, a kernel's first launch
 * under lazy module loading), cannot deadlock with it.  A READ batch ends
 * only once its bytes are in the device memory; a READ that fails leaves
 * zeros there.  Not bounced (ferry's threads then work while the stream
 * waits, as before): a batch that does not fit the bounce limit, a READ
 * batch with a notification, memory of another device, device memory an
 * RDMA NIC reaches itself, and a target of this process. */
FERRY_API int ferry_batch_submit_on_stream(ferry_batch *batch, const struct ferry_request *reqs, size_t n,
                                           const char *location, void *stream);

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
 * Threads may wait on a batch (ferry_batch_wait) together, and one of them
 * may free it once its own wait has returned; no other call on the batch may
 * be in progress or follow.  NULL is accepted. */
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

/* Counters of one transport.  New counters are added at the end only. */
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

/* The most transports one engine runs at once (the protocols it offers).
 * Part of the ABI: it sizes struct ferry_stats, so it is fixed for a given
 * FERRY_ABI_VERSION. */
#define FERRY_MAX_TRANSPORTS 4

/* An engine's counters: one row per transport this engine runs (after a
 * fallback, see transport_fallback, the names say which ones are live).  New
 * fields are added at the end only (after the array), never inside it. */
struct ferry_stats {
    size_t transport_count;
    struct ferry_transport_stats transports[FERRY_MAX_TRANSPORTS];
};

/* Fills *out with this engine's counters; fields the library does not know
 * (a caller built against a newer ferry.h) are zero.  Returns 0, or
 * FERRY_EINVAL for a NULL argument or sizes no ferry.h could give.
 * ferry_get_stats(engine, out) is the way to call it: the macro passes the
 * caller's sizes of both structs. */
FERRY_API int ferry_get_stats_sized(ferry_engine *engine, struct ferry_stats *out, size_t size,
                                    size_t transport_size);
#define ferry_get_stats(engine, out) \
    ferry_get_stats_sized((engine), (out), sizeof *(out), sizeof (out)->transports[0])

#ifdef __cplusplus
}
#endif
#endif /* FERRY_H */

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config.c — the one table of configuration knobs.
 *
 * Each row names a struct ferry_config field, its FERRY_* environment
 * variable, its default and a one-line doc.  ferry_config_init() applies the
 * defaults then the environment.  ferry_config_describe() (engine/knobs.c)
 * hands the same rows, followed by the rows each plug-in's ops table carries
 * for the variables it reads itself, to `ferry-bench --help-env` and the
 * README, so docs cannot drift from code.
 *
 * MC_* rows are the reference engine's variables that callers (SGLang, vLLM,
 * LMCache) set: each is converted onto a ferry field first, then the FERRY_*
 * variables are applied, so FERRY_* wins when both are set.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "err.h"

/* KNOB_DOC rows are read by a lower layer itself (staging, and transports
 * whose rows are not yet in their ops table); they are listed here so the
 * one table still names every knob.  A plug-in's own rows live in its ops
 * table (.knobs). */
enum knob_type { KNOB_STR, KNOB_UINT, KNOB_SIZE, KNOB_INT, KNOB_DOC, KNOB_MC };

struct knob {
    struct ferry_config_knob pub;
    enum knob_type type;
    size_t offset;
    int (*convert)(const char *text, struct ferry_config *cfg); /* KNOB_MC */
};

static int mc_force_tcp(const char *text, struct ferry_config *cfg);
static int mc_transfer_timeout(const char *text, struct ferry_config *cfg);
static int mc_bind_address(const char *text, struct ferry_config *cfg);
static int mc_slice_size(const char *text, struct ferry_config *cfg);
#define MC(env, fn, doc) {{env, "unset", doc}, KNOB_MC, 0, fn}

/* a row only for the docs: read by a lower layer itself (see KNOB_DOC) */
#define DOC(env, def, doc) {{env, def, doc}, KNOB_DOC, 0, NULL}

#define KNOB(field, type, env, def, doc)                                                       \
    {{env, def, doc}, type, offsetof(struct ferry_config, field), NULL}

static const struct knob knobs[] = {
    KNOB(local_server_name, KNOB_STR, "FERRY_LOCAL_SERVER_NAME", "127.0.0.1",
         "host[:port] of this engine's handshake listener; a taken or 0 port picks a free one"),
    KNOB(metadata_server, KNOB_STR, "FERRY_METADATA_SERVER", "P2PHANDSHAKE",
         "where descriptors are found: P2PHANDSHAKE, etcd://h:p[,h:p], redis://h:p, http://h:p/path"),
    KNOB(metadata_prefix, KNOB_STR, "FERRY_METADATA_PREFIX", "ferry/segments/",
         "key prefix of published descriptors in etcd / Redis"),
    KNOB(metadata_ttl_s, KNOB_UINT, "FERRY_METADATA_TTL_S", "10",
         "lease / TTL of a published descriptor; a dead engine's entry vanishes after it"),
    KNOB(protocols, KNOB_STR, "FERRY_PROTOCOLS", "tcp", "transports this engine offers, comma-separated"),
    KNOB(device_name, KNOB_STR, "FERRY_DEVICE_NAME", "auto", "RDMA NICs to use (mlx5_0,mlx5_1 or auto)"),
    KNOB(tcp_connections, KNOB_UINT, "FERRY_TCP_CONNECTIONS", "4", "TCP data connections per peer (1-64)"),
    KNOB(slice_size, KNOB_SIZE, "FERRY_SLICE_SIZE", "1048576",
         "requests are cut into slices of at most this many bytes, spread over connections"),
    KNOB(coalesce_max, KNOB_UINT, "FERRY_COALESCE_MAX", "64",
         "small requests packed into one frame, at most (1-64)"),
    KNOB(request_timeout_ms, KNOB_UINT, "FERRY_REQUEST_TIMEOUT_MS", "30000",
         "a request still unfinished after this ends TIMEOUT"),
    KNOB(connect_timeout_ms, KNOB_UINT, "FERRY_CONNECT_TIMEOUT_MS", "5000",
         "connect + handshake with a peer must finish within this"),
    KNOB(staging_chunk_size, KNOB_SIZE, "FERRY_STAGING_CHUNK_SIZE", "2097152",
         "pinned host bytes per staging chunk, at least FERRY_SLICE_SIZE; a pool cuts chunks of two slices or "
         "more into slice-sized ones (frames are at most a slice): 16 x 2 MiB holds 32 frames of 1 MiB"),
    KNOB(staging_chunks, KNOB_UINT, "FERRY_STAGING_CHUNKS", "16",
         "chunks per device staging pool; its pinned memory is this x FERRY_STAGING_CHUNK_SIZE (32 MiB), cut into "
         "at most 256 chunks"),
    KNOB(notify_queue_max, KNOB_UINT, "FERRY_NOTIFY_QUEUE_MAX", "4096",
         "received notifications kept; when full, the oldest of the peer holding the most is dropped"),
    KNOB(log_level, KNOB_INT, "FERRY_LOG_LEVEL", "1", "0 error, 1 warn, 2 info, 3 debug"),
    KNOB(segment_name, KNOB_STR, "FERRY_SEGMENT_NAME", "",
         "with a metadata store: the name to publish under (empty: host:port of the listener)"),
    KNOB(bind_address, KNOB_STR, "FERRY_BIND_ADDRESS", "",
         "with a metadata store: address the listeners bind (empty: local_server_name's host)"),
    KNOB(transport_fallback, KNOB_UINT, "FERRY_TRANSPORT_FALLBACK", "1",
         "1: a listed transport with no usable device (rdma, no NIC) is skipped with a warning, tcp if none is left;"
         " 0: all are required"),
    MC("MC_FORCE_TCP", mc_force_tcp, "reference variable: set (any value) = FERRY_PROTOCOLS=tcp"),
    MC("MC_TRANSFER_TIMEOUT", mc_transfer_timeout,
       "reference variable: seconds (at least 5) = FERRY_REQUEST_TIMEOUT_MS x 1000"),
    MC("MC_TCP_BIND_ADDRESS", mc_bind_address,
       "reference variable: = FERRY_BIND_ADDRESS (ignored when MC_LEGACY_RPC_PORT_BINDING is set)"),
    DOC("MC_LEGACY_RPC_PORT_BINDING", "unset",
        "reference variable: set = listeners bind local_server_name's host:port (ferry's default without"
        " FERRY_BIND_ADDRESS)"),
    MC("MC_SLICE_SIZE", mc_slice_size, "reference variable: bytes = FERRY_SLICE_SIZE"),
    KNOB(max_connections, KNOB_UINT, "FERRY_MAX_CONNECTIONS", "0",
         "connections at once per listening port; 0: a quarter of RLIMIT_NOFILE (at most 4096); when full, the "
         "peer holding the most gives an idle connection up to one holding two fewer"),
    KNOB(max_connections_per_peer, KNOB_UINT, "FERRY_MAX_CONNECTIONS_PER_PEER", "64",
         "connections at once per listening port from one IPv4 address or IPv6 /64 (0: no per-address cap)"),
    KNOB(idle_timeout_ms, KNOB_UINT, "FERRY_IDLE_TIMEOUT_MS", "120000",
         "a data connection silent this long is closed (0: never); initiators retire theirs after half"),
    KNOB(auth_key, KNOB_STR, "FERRY_AUTH_KEY", "",
         "shared secret (16+ bytes): peers must prove it (HMAC-SHA256) on every connection; empty: off"),
    KNOB(auth_key_file, KNOB_STR, "FERRY_AUTH_KEY_FILE", "",
         "file holding the shared secret (instead of FERRY_AUTH_KEY, which shows in the environment)"),
    DOC("FERRY_TRACE", "",
        "file for a timeline of the data path, written at exit (\".%d\" becomes the pid; "
        "bench/trace_batches.py reads it); empty: off"),
    DOC("FERRY_KEEPALIVE_S", "120",
        "a peer silent this long whose host does not answer TCP keepalive probes (host down, link cut) is taken for "
        "gone and its connections close (0-86400; 0: off): every side channel and data connection, both ends; an "
        "rdma side channel has no idle timeout, so this is what frees a vanished initiator's queue pair"),
    DOC("FERRY_WAIT_SPIN_US", "auto",
        "ferry_batch_wait polls this long for the batch's end before it sleeps, while the engine's recent "
        "waits were shorter: a batch that ends meanwhile wakes its waiter without a futex wake-up; costs the waiting "
        "thread's core, never an idle one, and takes one of the process's looks (at most half the usable CPUs look at "
        "once, tcp targets' included): auto (50 below 8 cores, 400 from 8) or 0-10000"),
    DOC("FERRY_SHM_ALLOW_UIDS", "", "uids besides the engine's own that may send shm notifications (comma-separated)"),
    DOC("FERRY_SHM_SUBMIT_COPIES", "2",
        "shm, device to device (CUDA IPC): the submitting thread enqueues a submit's copies itself (one copy job, a "
        "worker only waits for it), 2: jobs of small copies (mean <= FERRY_SHM_LANE_KB) on one stream per device, in order, "
        "others on a stream each; 1: every job on a stream of its own; 0: the shm workers do every copy"),
    DOC("FERRY_SHM_SPIN_US", "50",
        "after its last frame a shm worker polls this long before it sleeps (0-100000): the next job of a busy "
        "transport finds it awake"),
    DOC("FERRY_SHM_LANE_STREAMS", "2",
        "shm, device to device: streams a device's lane of small-copy jobs takes in turn (1-4); over 1, a job's "
        "launch overlaps the end of the one before"),
    DOC("FERRY_SHM_LANE_KB", "256",
        "shm, device to device: a job whose copies average at most this many KiB goes on the device's lane, a larger "
        "one on a stream of its own (0-1073741824; 0: none on a lane)"),
    DOC("FERRY_STREAM_BOUNCE_MB", "256",
        "pinned host MiB (kept, grown on demand) through which submit_on_stream moves device memory to another engine "
        "with copies on the caller's stream; a batch that does not fit is staged by ferry's threads; 0: never"),
    DOC("FERRY_STAGING_AGGREGATE", "auto",
        "gather staged blocks smaller than this on the device (D2D + one D2H per chunk): auto (npu: 2M, others: "
        "off), 0, or a size"),
    DOC("FERRY_STAGING_AGGREGATE_READ", "auto",
        "the same for staged READs: scatter blocks smaller than this from a device buffer (one H2D per chunk + "
        "D2D): auto (as FERRY_STAGING_AGGREGATE), 0, or a size"),
    DOC("FERRY_STAGING_AGGREGATE_BUFFERS", "all",
        "chunks with a device buffer for that, 0..the pool's chunks (FERRY_STAGING_CHUNKS, more where chunks are "
        "cut into slices; device memory: this x the chunk size)"),
    DOC("FERRY_STAGING_READ_GROUP_BYTES", "4194304",
        "bytes a staging pool's group of scatters (READ payload that arrived together: one copy call, up to 128 "
        "blocks; on CUDA the copy engine's from FERRY_CUDA_KERNEL_H2D_CALL_MIN) takes at most, its first group "
        "too; 0: the rule of FERRY_STAGING_GROUP"),
    DOC("FERRY_STAGING_READ_GROUP_FIRST_BYTES", "0",
        "bytes the first group of scatters of a round takes at most (1048576: on CUDA the kernel, which starts at "
        "once, while the later groups go to the copy engine); 0: as FERRY_STAGING_READ_GROUP_BYTES"),
    DOC("FERRY_STAGING_SPIN_US", "50",
        "after its last copy a staging worker polls this long before it sleeps (0-100000): longer saves the wake-up "
        "before the next retire, and costs a core while transfers run"),
    DOC("FERRY_STAGING_ISSUER_RETIRE_US", "0",
        "a thread that issued gathers (WRITE) while the staging worker slept polls the first group's copies up to "
        "this long (0-1000) and puts its frame on the wire itself, not after the worker's wake-up; 0: the worker "
        "retires every group"),
    DOC("FERRY_STAGING_ISSUER_RETIRE_GROUPS", "1",
        "with FERRY_STAGING_ISSUER_RETIRE_US, how many groups of its gathers that thread retires one after another "
        "within that budget (1-256); 1: the first only, the worker the rest"),
    DOC("FERRY_STAGING_INLINE_FIRST", "0",
        "1: the thread that retires the first gather of a staged WRITE submit (the staging worker) writes its frame "
        "to an idle connection itself (tcp: what the socket takes at once), not a woken sender thread; 0: every "
        "staged frame is handed to the transport's threads"),
    DOC("FERRY_STAGING_INLINE_LAST", "0",
        "1: the staging worker, retiring the last gather of a staged WRITE submit with nothing else in flight or "
        "waiting, writes its frame to an idle connection itself (tcp: what the socket takes at once), not a woken "
        "sender thread; 0: every staged frame is handed to the transport's threads"),
    DOC("FERRY_STAGING_SCATTER_RETIRE_US", "0",
        "a transport thread that issued a staged READ's scatter (host to device) while the staging worker slept "
        "polls the copies up to this long (0-1000) and ends the READ itself, not after the worker's wake-up; 0: "
        "the worker retires every scatter"),
    DOC("FERRY_STAGING_GROUP", "2",
        "frames whose device copies a staging pool issues together (one copy call: on CUDA one kernel launch, of up "
        "to 1,024 blocks with FERRY_CUDA_KERNEL_COPIES=1024) and waits for once (1-16); a group holds at most "
        "half as many chunks' bytes (one chunk's for 2), so two full 1 MiB frames are two groups"),
    DOC("FERRY_STAGING_GROUP_FIRST", "auto",
        "frames the first device copy group of what a staging pool issues at once takes at most (1-16; auto: "
        "FERRY_STAGING_GROUP's within half a chunk's bytes): the first chunks of a large WRITE go to the wire while "
        "the rest are copied"),
    DOC("FERRY_STAGING_MARK_STREAMS", "0",
        "device streams a staging pool's rounds of gathers (WRITE) take in turn (0-4): the groups of a round go "
        "one after another, each followed by a device-written mark, so each goes to the wire as soon as its own "
        "copies are done (a large one-thread staged batch ends sooner; the pipeline alone moves less); 0: groups "
        "on their chunks' own streams, retired by querying them"),
    DOC("FERRY_STAGING_CHAIN_BYTES", "4194304",
        "with FERRY_STAGING_MARK_STREAMS=0: a round of gathers (a staged WRITE submit) of at least this many bytes, "
        "issued while none of the pool's copies is in flight (one submitting thread), goes as on a mark stream: "
        "its groups one after another, each to the wire as soon as its own copies are done, not all together at "
        "the end (0-1073741824; 0: never; rounds issued while others are in flight keep their chunks' streams)"),
    DOC("FERRY_STAGING_CHAIN_LANES", "2",
        "streams a chained round's groups of gathers take in turn (1-4): 1 finishes each group before the next "
        "starts; more let that many share PCIe at a time (the gathers alone move faster)"),
    DOC("FERRY_RDMA_STAGE_SLOTS", "4",
        "rdma target: bounce slots per queue pair for its memory no NIC reaches (0-64; 0: not staged over rdma)"),
    DOC("FERRY_RDMA_STAGE_SLOT_SIZE", "1048576", "rdma target: bytes per bounce slot (4096-1073741824)"),
    DOC("FERRY_RDMA_STALL_MS", "5000",
        "rdma: a queue pair with requests out and no completion this long is reset and its requests go to "
        "another NIC (0: wait for the NIC's own retry limit)"),
    DOC("FERRY_TCP_MAX_CONNECTIONS", "auto",
        "TCP connections per peer under heavy traffic (each has FERRY_TCP_GROW_BYTES in flight): auto (one per "
        "core, 4-16) or 1-64; FERRY_TCP_CONNECTIONS are opened first"),
    DOC("FERRY_TCP_GROW_BYTES", "auto",
        "a peer opens another TCP connection while every one has this many bytes in flight: auto (32 MiB over "
        "FERRY_TCP_MAX_CONNECTIONS, from FERRY_SLICE_SIZE to 8 MiB) or 65536-1073741824"),
    DOC("FERRY_TCP_INLINE_BYTES", "auto",
        "a WRITE submit of at most this many bytes is written to an idle TCP connection by the submitting thread "
        "(no sender wake-up); a larger one only its last frame, the senders the rest in parallel: auto (524288; "
        "0 when FERRY_TCP_SPREAD is above 1) or 0-1073741824 (0: always only the last frame)"),
    DOC("FERRY_TCP_SPREAD", "auto",
        "a submit's small blocks to one TCP peer go as about this many frames (each at least 64 KiB) on as many "
        "connections, copied in parallel on both sides (staged blocks too, unless their pool aggregates on the "
        "device): auto (1 below 8 cores, 2 from 8, 4 from 16) or 1-16"),
    DOC("FERRY_TCP_SPREAD_READ", "auto",
        "the same for a submit's READs: auto (FERRY_TCP_SPREAD where that is a number, else as FERRY_TCP_SPREAD's "
        "auto) or 1-16"),
    DOC("FERRY_TCP_SPREAD_STAGED", "auto",
        "the same for a submit's staged blocks (device memory through a staging pool's host chunks, both "
        "directions), on as many connections (more are opened up to it): auto (8 from 16 cores; else, or where "
        "FERRY_TCP_SPREAD is a number, the direction's spread) or 1-16"),
    DOC("FERRY_TCP_SOCKBUF", "auto",
        "SO_SNDBUF and SO_RCVBUF of every TCP connection, both ends (small buffers keep the bytes in flight in the "
        "caches): auto (262144 from 8 cores, the kernel's below), 0 (the kernel's, grown "
        "with the traffic) or 65536-268435456 bytes"),
    DOC("FERRY_TCP_RCVLOWAT", "auto",
        "a TCP payload receive (WRITE at the target, READ at the initiator) wakes once this many bytes are there "
        "rather than per segment (SO_RCVLOWAT): auto (0, off) or 0-67108864 bytes (at most FERRY_TCP_SOCKBUF / 4)"),
    DOC("FERRY_TCP_READ_HANDOFF", "auto",
        "a READ frame of at least this many bytes, on a TCP connection with responses in flight, is written by "
        "that connection's sender thread rather than by the submitting thread (whose sendmsg would wait for the "
        "socket while the receiver copies a response): auto (0, off) or 0-1073741824 bytes (0: never)"),
    DOC("FERRY_TCP_ACK_HOLD", "auto",
        "tcp target: a WRITE of host memory of at most this many bytes, whose connection already has the next "
        "frame to read, holds its ack and sends it with the next response (one send and one wake-up of the "
        "initiator's receiver for two frames); a next WRITE larger than this sends it first: auto (262144 below "
        "8 cores, 0 (off) from 8) or 0-67108864 bytes"),
    DOC("FERRY_TCP_ACK_ON_COPY", "0",
        "tcp target, device memory: when the next frame is already there, a WRITE is acknowledged once its last "
        "device copies complete while the connection's thread reads on: 1 from a function on the stream "
        "(cuLaunchHostFunc) or a device-written mark, 2 from the mark only (seen at the thread's next copy); 0: "
        "the thread waits for the copies and then acks"),
    DOC("FERRY_TCP_SERVE_SPIN_US", "auto",
        "tcp target: after a frame of at most 256 KiB a connection's thread looks for the next one (while frames "
        "came closer together than this lately), and within one for the rest of its payload, for up to this many "
        "microseconds, yielding the CPU between looks, before it sleeps (no wake-up of an idle CPU per frame); at "
        "most half the usable CPUs (at least one) look at once in a process: auto (100) or 0-10000"),
    DOC("FERRY_TCP_RECV_SPIN_US", "auto",
        "tcp initiator: after the response to a frame of at most 256 KiB a connection's receiver looks for the next "
        "one (while responses came closer together than this lately), and within a READ's for the rest of its "
        "payload, for up to this many microseconds, yielding the CPU between looks, before it sleeps; from the same "
        "budget as FERRY_TCP_SERVE_SPIN_US's looks: auto (0 (off) below 8 cores, 100 from 8) or 0-10000"),
    DOC("FERRY_TCP_DEVICE_PIPE", "262144",
        "tcp target, device memory: a copy between its bounce and the device starts per this many bytes, so the "
        "device copies while the socket moves the next ones (16384-4194304)"),
};

#define NKNOBS (sizeof knobs / sizeof knobs[0])

int config_parse_number(const char *text, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (text[0] < '0' || text[0] > '9' || errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int config_env_number(const char *name, bool auto_ok, uint64_t lo, uint64_t hi, const char *wanted, uint64_t *out)
{
    const char *text = getenv(name);
    if (!text || !*text || (auto_ok && strcmp(text, "auto") == 0))
        return 1;
    if (config_parse_number(text, lo, hi, out) != 0)
        return ferry_fail(FERRY_EINVAL, "%s=\"%.40s\": %s", name, text, wanted);
    return 0;
}

static int parse_number(const char *text, enum knob_type type, void *field)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 0);
    if (errno || end == text)
        return -1;
    unsigned long long mult = 1;
    if (*end == 'K' || *end == 'k')
        mult = 1ull << 10, end++;
    else if (*end == 'M' || *end == 'm')
        mult = 1ull << 20, end++;
    else if (*end == 'G' || *end == 'g')
        mult = 1ull << 30, end++;
    if (*end != '\0')
        return -1;
    v *= mult;
    switch (type) {
    case KNOB_UINT:
        if (v > 0xffffffffull)
            return -1;
        *(unsigned *)field = (unsigned)v;
        return 0;
    case KNOB_INT:
        if (v > 0x7fffffffull)
            return -1;
        *(int *)field = (int)v;
        return 0;
    case KNOB_SIZE:
        *(size_t *)field = (size_t)v;
        return 0;
    default:
        return -1;
    }
}

static int mc_force_tcp(const char *text, struct ferry_config *cfg)
{
    (void)text;
    cfg->protocols = "tcp";
    return 0;
}

static int mc_transfer_timeout(const char *text, struct ferry_config *cfg)
{
    unsigned s;
    if (parse_number(text, KNOB_UINT, &s) != 0 || s > 0xffffffffu / 1000)
        return ferry_fail(FERRY_EINVAL, "MC_TRANSFER_TIMEOUT=\"%s\" is not a number of seconds", text);
    cfg->request_timeout_ms = (s < 5 ? 5 : s) * 1000; /* the reference's floor */
    return 0;
}

static int mc_bind_address(const char *text, struct ferry_config *cfg)
{
    if (!getenv("MC_LEGACY_RPC_PORT_BINDING"))
        cfg->bind_address = text;
    return 0;
}

static int mc_slice_size(const char *text, struct ferry_config *cfg)
{
    if (parse_number(text, KNOB_SIZE, &cfg->slice_size) != 0)
        return ferry_fail(FERRY_EINVAL, "MC_SLICE_SIZE=\"%s\" is not a valid number", text);
    return 0;
}

static int apply(const struct knob *k, const char *text, struct ferry_config *cfg)
{
    if (k->type == KNOB_DOC)
        return 0;
    if (k->type == KNOB_MC)
        return k->convert(text, cfg);
    void *field = (char *)cfg + k->offset;
    if (k->type == KNOB_STR) {
        *(const char **)field = text; /* defaults are static, env strings live as long as environ */
        return 0;
    }
    if (parse_number(text, k->type, field) != 0)
        return ferry_fail(FERRY_EINVAL, "%s=\"%s\" is not a valid number", k->pub.env, text);
    return 0;
}

/* Defaults and environment into a whole struct of this library's size. */
static int fill(struct ferry_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NKNOBS; i++) {
        int rc = knobs[i].type == KNOB_MC ? 0 : apply(&knobs[i], knobs[i].pub.default_text, cfg);
        if (rc)
            return rc;
    }
    for (int pass = 0; pass < 2; pass++) { /* MC_* first, so that FERRY_* wins */
        for (size_t i = 0; i < NKNOBS; i++) {
            const char *env = getenv(knobs[i].pub.env);
            if (env && (knobs[i].type == KNOB_MC) == (pass == 0)) {
                int rc = apply(&knobs[i], env, cfg);
                if (rc)
                    return rc;
            }
        }
    }
    return 0;
}

int ferry_config_init_sized(struct ferry_config *cfg, size_t size)
{
    if (!cfg)
        return ferry_fail(FERRY_EINVAL, "ferry_config_init: cfg is NULL");
    if (size < sizeof cfg->struct_size)
        return ferry_fail(FERRY_EINVAL, "ferry_config_init: size %zu cannot hold struct_size", size);
    /* the caller's struct may be smaller (older ferry.h) or larger (newer)
     * than ours: write exactly its bytes, zero where we know no knob */
    struct ferry_config full;
    int rc = fill(&full);
    if (rc)
        return rc;
    memset(cfg, 0, size);
    memcpy(cfg, &full, size < sizeof full ? size : sizeof full);
    cfg->struct_size = size;
    return 0;
}

const struct ferry_config_knob *config_core_knobs(size_t *count)
{
    /* the public half of each row, copied once */
    static struct ferry_config_knob rows[NKNOBS];
    static int filled;
    if (!__atomic_load_n(&filled, __ATOMIC_ACQUIRE)) {
        for (size_t i = 0; i < NKNOBS; i++)
            rows[i] = knobs[i].pub;
        __atomic_store_n(&filled, 1, __ATOMIC_RELEASE);
    }
    *count = NKNOBS;
    return rows;
}

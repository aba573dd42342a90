/* SPDX-License-Identifier: Apache-2.0 */
/*
 * ferry-bench.c — target/initiator throughput and verification tool.
 *
 * Accepts the flags of Mooncake's transfer_engine_bench so the two run side by
 * side.  A target allocates one buffer, fills it with a known pattern (seed 1),
 * publishes it and serves until SIGINT/SIGTERM.  An initiator opens the target's
 * segment and moves batches of blocks (WRITE or READ) from N threads sharing one
 * engine, prints a progress line each second and the total, then checks the
 * bytes (untimed).  Each worker thread owns a disjoint region of both buffers;
 * the main thread parses flags, reports progress and verifies.  Both sides
 * print what the run cost (bench_cost.h): CPU time per request, batch
 * latency percentiles, and with --idle_seconds an idle engine's CPU time.
 * Uses only the public API in ferry.h.  Exit codes: 0 ok, 1 runtime error, 2 usage, 3 bad data.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ferry.h>

#include "bench_cost.h"
#include "bench_options.h"
#include "bench_pin.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <sys/mman.h>

#define SEED_ZERO 0          /* "pattern" of all-zero bytes */
#define SEED_TARGET 1        /* what a target puts in its buffer */
#define SEED_WRITE 2         /* what an initiator writes */
#define COPY_CHUNK (4u << 20) /* host bounce size for device memory */

/* ---------------------------------------------------------------- helpers */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static volatile sig_atomic_t g_signalled;

static void on_signal(int sig)
{
    g_signalled = sig;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);   /* a dropped peer must be an error, not a death */
}

static bool location_is_host(const char *loc)
{
    return strcmp(loc, "cpu") == 0 || strncmp(loc, "cpu:", 4) == 0;
}

/* ---------------------------------------------------------------- pattern */

/* splitmix64's finalizer. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The word at byte position pos (relative to the remote buffer) for a seed. */
static uint64_t pattern_word(uint64_t seed, uint64_t pos)
{
    return seed == SEED_ZERO ? 0 : mix64(seed * 0x9E3779B97F4A7C15ull ^ pos);
}

static void pattern_fill_host(uint8_t *dst, size_t len, uint64_t seed, uint64_t pos)
{
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w = pattern_word(seed, pos + i);
        memcpy(dst + i, &w, 8);
    }
    memset(dst + i, 0, len - i);
}

struct mismatch {
    uint64_t pos, expected, got;
};

/* Finds the first word that matches neither seed (alt_seed 0: only seed).
 * Returns true and fills *mm on a mismatch. */
static bool pattern_check_host(const uint8_t *buf, size_t len, uint64_t seed,
                               uint64_t alt_seed, uint64_t pos, struct mismatch *mm)
{
    for (size_t i = 0; i + 8 <= len; i += 8) {
        uint64_t w, want = pattern_word(seed, pos + i);
        memcpy(&w, buf + i, 8);
        if (w == want || (alt_seed && w == pattern_word(alt_seed, pos + i)))
            continue;
        mm->pos = pos + i, mm->expected = want, mm->got = w;
        return true;
    }
    return false;
}

/* Fills [dst, dst+len) at `loc` with the pattern; device memory goes through a
 * host bounce buffer and ferry_mem_copy.  Exits on a copy failure. */
static void fill_memory(ferry_engine *e, const char *loc, uint8_t *dst, size_t len,
                        uint64_t seed, uint64_t pos)
{
    if (location_is_host(loc)) {
        pattern_fill_host(dst, len, seed, pos);
        return;
    }
    uint8_t *chunk = malloc(COPY_CHUNK);
    if (!chunk)
        die("out of memory");
    for (size_t off = 0; off < len; off += COPY_CHUNK) {
        size_t n = len - off < COPY_CHUNK ? len - off : COPY_CHUNK;
        pattern_fill_host(chunk, n, seed, pos + off);
        int rc = ferry_mem_copy(e, dst + off, chunk, n);
        if (rc)
            die_ferry(rc, "copy host -> %s at %p", loc, (void *)(dst + off));
    }
    free(chunk);
}

/* Compares [src, src+len) at `loc` with the pattern.  Returns true on a mismatch. */
static bool check_memory(ferry_engine *e, const char *loc, const uint8_t *src, size_t len,
                         uint64_t seed, uint64_t alt_seed, uint64_t pos, struct mismatch *mm)
{
    if (location_is_host(loc))
        return pattern_check_host(src, len, seed, alt_seed, pos, mm);
    uint8_t *chunk = malloc(COPY_CHUNK);
    bool bad = false;
    if (!chunk)
        die("out of memory");
    for (size_t off = 0; off < len && !bad; off += COPY_CHUNK) {
        size_t n = len - off < COPY_CHUNK ? len - off : COPY_CHUNK;
        int rc = ferry_mem_copy(e, chunk, src + off, n);
        if (rc)
            die_ferry(rc, "copy %s -> host at %p", loc, (const void *)(src + off));
        bad = pattern_check_host(chunk, n, seed, alt_seed, pos + off, mm);
    }
    free(chunk);
    return bad;
}

/* ---------------------------------------------------------------- engine and buffers */

static ferry_engine *engine_open(const struct options *o)
{
    struct ferry_config cfg;
    ferry_engine *e = NULL;
    int rc = ferry_config_init(&cfg);
    if (rc)
        die_ferry(rc, "configuration");
    if (o->local_server_name)
        cfg.local_server_name = o->local_server_name;
    cfg.metadata_server = o->metadata_server;
    cfg.protocols = o->protocol;
    if (o->device_name)
        cfg.device_name = o->device_name;
    rc = ferry_engine_create(&cfg, &e);
    if (rc)
        die_ferry(rc, "create engine (protocol %s)", o->protocol);
    return e;
}

struct buffer {
    uint8_t *ptr;
    size_t len;
    const char *loc;
    const char *pinned;         /* --pinned's kind (bench_pin.c), or NULL: ferry_mem_alloc's */
};

static const char *pinned_how; /* --pinned, set by main before any thread starts */

/* Allocates and registers len bytes at loc; exits with a clear message on failure. */
static void buffer_open(ferry_engine *e, const char *loc, size_t len, int remote, bool huge,
                        struct buffer *b)
{
    void *p = NULL;
    int rc = 0;
    b->pinned = location_is_host(loc) ? pinned_how : NULL;
    if (b->pinned)
        p = bench_pin_alloc(b->pinned, len);
    else
        rc = ferry_mem_alloc(e, loc, len, &p);
    if (rc)
        die_ferry(rc, "allocate %zu bytes at %s", len, loc);
    /* ferry asks for huge pages on large host buffers; --nohuge_pages undoes
     * it (before the fill touches them) to show what 4 KiB pages cost */
    if (!huge && !b->pinned && strncmp(loc, "cpu", 3) == 0 && madvise(p, len, MADV_NOHUGEPAGE) != 0)
        die("madvise(MADV_NOHUGEPAGE): %s", strerror(errno));
    rc = ferry_register_memory(e, p, len, loc, remote);
    if (rc)
        die_ferry(rc, "register %zu bytes at %s (%p)", len, loc, p);
    b->ptr = p, b->len = len, b->loc = loc;
}

static void buffer_close(ferry_engine *e, struct buffer *b)
{
    ferry_unregister_memory(e, b->ptr);
    if (b->pinned)
        bench_pin_free(b->pinned, b->ptr);
    else
        ferry_mem_free(e, b->loc, b->ptr, b->len);
}

/* ---------------------------------------------------------------- target */

static void print_notifications(ferry_engine *e, struct ferry_notification *buf, size_t max)
{
    size_t count = 0;
    ferry_get_notifications(e, buf, max, &count);
    for (size_t i = 0; i < count; i++) {
        const struct ferry_notification *n = &buf[i];
        size_t show = n->len < 64 ? n->len : 64;
        printf("ferry-bench: notification from %.*s (%zu bytes): \"", (int)sizeof n->from,
               n->from, n->len);
        for (size_t j = 0; j < show; j++) {
            uint8_t c = n->msg[j];
            if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
                putchar(c);
            else
                printf("\\x%02x", c);
        }
        printf("%s\"\n", n->len > show ? "..." : "");
    }
    if (count)
        fflush(stdout);
}

static void print_stats(ferry_engine *e, const char *who, FILE *out)
{
    struct ferry_stats st;
    memset(&st, 0, sizeof st);
    ferry_get_stats(e, &st);
    size_t n = st.transport_count < FERRY_MAX_TRANSPORTS ? st.transport_count : FERRY_MAX_TRANSPORTS;
    for (size_t i = 0; i < n; i++) {
        const struct ferry_transport_stats *t = &st.transports[i];
        fprintf(out, "ferry-bench: %s stats %.*s: written %" PRIu64 " read %" PRIu64
               " served %" PRIu64 " completed %" PRIu64 " failed %" PRIu64
               " frames %" PRIu64 " refused %" PRIu64 " staged %" PRIu64 " target-staged %" PRIu64
               " bounced %" PRIu64,
               who, (int)sizeof t->name, t->name, t->bytes_written, t->bytes_read,
               t->bytes_served, t->requests_completed, t->requests_failed,
               t->frames_sent, t->refused, t->bytes_staged, t->bytes_target_staged, t->bytes_bounced);
        for (size_t k = 0; k < t->nic_count && k < FERRY_STATS_MAX_NICS; k++)
            fprintf(out, " nic %.*s %" PRIu64, (int)sizeof t->nics[k].name, t->nics[k].name, t->nics[k].bytes);
        fprintf(out, "\n");
    }
}

static uint64_t bytes_served(ferry_engine *e)
{
    struct ferry_stats st;
    uint64_t sum = 0;
    memset(&st, 0, sizeof st);
    ferry_get_stats(e, &st);
    for (size_t i = 0; i < st.transport_count && i < FERRY_MAX_TRANSPORTS; i++)
        sum += st.transports[i].bytes_served;
    return sum;
}

/* One line of key=value pairs (bench scripts parse it): the target's CPU
 * time between the samples around its first and last served bytes, per
 * request of --block_size bytes, and its CPU time while idle after that. */
static void print_target_cost(const struct serve_meter *m, uint64_t block)
{
    double now = now_seconds(), cpu = cost_process_cpu();
    double busy_s = m->busy_t - m->first_t, busy_cpu = m->busy_cpu - m->first_cpu;
    double idle_s = m->started ? now - m->busy_t : 0, idle_cpu = m->started ? cpu - m->busy_cpu : 0;
    uint64_t bytes = m->busy_bytes - m->first_bytes;
    double requests = (double)bytes / (double)block;
    printf("ferry-bench target cost: bytes_served=%" PRIu64 " block_size=%" PRIu64
           " requests=%.0f seconds=%.3f cpu_seconds=%.3f cpu_us_per_request=%.3f"
           " idle_seconds=%.3f idle_cpu_ms=%.3f\n",
           bytes, block, requests, busy_s, busy_cpu,
           requests > 0 ? busy_cpu * 1e6 / requests : 0, idle_s, idle_cpu * 1e3);
}

static int run_target(const struct options *o)
{
    enum { NOTIFY_MAX = 16 };
    ferry_engine *e = engine_open(o);
    struct buffer b;
    buffer_open(e, o->location, (size_t)o->buffer_size, 1, o->huge_pages, &b);
    fill_memory(e, b.loc, b.ptr, b.len, SEED_TARGET, 0);
    printf("ferry-bench target ready: segment %s buffer 0x%" PRIxPTR " size %zu\n",
           ferry_engine_segment_name(e), (uintptr_t)b.ptr, b.len);
    fflush(stdout);

    struct ferry_notification *notes = calloc(NOTIFY_MAX, sizeof *notes);
    if (!notes)
        die("out of memory");
    struct serve_meter meter;
    serve_meter_init(&meter, bytes_served(e), now_seconds());
    while (!g_signalled) {
        print_notifications(e, notes, NOTIFY_MAX);
        sleep_ms(100);
        serve_meter_sample(&meter, bytes_served(e), now_seconds());
    }
    print_notifications(e, notes, NOTIFY_MAX);
    print_stats(e, "target", stdout);
    print_target_cost(&meter, o->block_size);
    fflush(stdout);
    free(notes);
    buffer_close(e, &b);
    ferry_engine_destroy(e);
    return 0;
}

/* ---------------------------------------------------------------- batches */

static const char *state_name(int state)
{
    static const char *const names[] = {"PENDING", "COMPLETED", "FAILED", "TIMEOUT", "UNUSED"};
    return state >= 0 && state <= FERRY_UNUSED ? names[state] : "?";
}

/* Request i moves block i: local + i*stride <-> remote + i*stride (stride
 * 0: every request the first block, --same_block). */
static void build_requests(struct ferry_request *reqs, size_t n, int opcode,
                           ferry_segment_t seg, uint8_t *local, uint64_t remote,
                           size_t block, size_t stride)
{
    for (size_t i = 0; i < n; i++) {
        reqs[i].opcode = opcode;
        reqs[i].source = local + i * stride;
        reqs[i].target = seg;
        reqs[i].target_offset = remote + i * stride;
        reqs[i].length = block;
    }
}

/* Writes the first request that did not complete into err. */
static void describe_failure(ferry_batch *b, const struct ferry_request *reqs, size_t n,
                             int rc, char *err, size_t errlen)
{
    struct ferry_status st;
    for (size_t i = 0; i < n; i++) {
        if (ferry_batch_status(b, i, &st) != 0 || st.state == FERRY_COMPLETED)
            continue;
        snprintf(err, errlen, "request %zu (%s %zu bytes, remote 0x%" PRIx64 ") %s: %s: %s",
                 i, reqs[i].opcode == FERRY_WRITE ? "write" : "read", reqs[i].length,
                 reqs[i].target_offset, state_name(st.state), ferry_strerror(st.error),
                 st.message);
        return;
    }
    snprintf(err, errlen, "batch wait: %s: %s", ferry_strerror(rc), ferry_last_error());
}

/* Allocates a batch, submits n requests, waits, frees.  Returns 0 or the
 * error; on an error writes a one-line explanation into err. */
static int run_batch(ferry_engine *e, const struct ferry_request *reqs, size_t n,
                     char *err, size_t errlen)
{
    ferry_batch *b = NULL;
    int rc = ferry_batch_alloc(e, n, &b);
    if (rc) {
        snprintf(err, errlen, "batch alloc: %s: %s", ferry_strerror(rc), ferry_last_error());
        return rc;
    }
    rc = ferry_batch_submit(b, reqs, n);
    if (rc)
        snprintf(err, errlen, "batch submit: %s: %s", ferry_strerror(rc), ferry_last_error());
    else if ((rc = ferry_batch_wait(b, -1)) != 0)
        describe_failure(b, reqs, n, rc, err, errlen);
    ferry_batch_free(b);
    return rc;
}

/* ---------------------------------------------------------------- initiator */

struct run {
    const struct options *opts;
    ferry_engine *engine;
    ferry_segment_t segment;
    struct buffer local;
    uint64_t remote_addr;
    size_t region;              /* batch_size * block_size: one thread's share */
    size_t slots;               /* --rotate: how many threads x region fit both buffers (else 1) */
    int opcode;
    atomic_bool stop;
    atomic_uint running;        /* workers not yet finished */
    atomic_uint_fast64_t bytes; /* bytes of completed batches, all threads */
};

struct worker {
    pthread_t tid;
    struct run *run;
    size_t index;               /* which thread: its region in every slot */
    struct ferry_request *reqs;
    uint64_t batches;
    struct lat_hist *latency;   /* submit -> all done, per batch */
    double end;
    int rc;
    char err[512];
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct run *r = w->run;
    size_t n = (size_t)r->opts->batch_size;
    do {
        if (r->slots > 1) { /* --rotate: batch k moves this thread's region of slot k mod slots */
            size_t shift = (size_t)(w->batches % r->slots) * r->region * r->opts->threads;
            build_requests(w->reqs, n, r->opcode, r->segment, r->local.ptr + w->index * r->region + shift,
                           r->remote_addr + w->index * r->region + shift, (size_t)r->opts->block_size,
                           (size_t)r->opts->block_size);
        }
        double t0 = now_seconds();
        w->rc = run_batch(r->engine, w->reqs, n, w->err, sizeof w->err);
        lat_hist_add(w->latency, (uint64_t)((now_seconds() - t0) * 1e9));
        if (w->rc) {
            atomic_store(&r->stop, true);
            break;
        }
        w->batches++;
        atomic_fetch_add(&r->bytes, r->region);
        if (r->opts->iterations && w->batches >= r->opts->iterations)
            break;
    } while (!atomic_load(&r->stop));
    w->end = now_seconds();
    atomic_fetch_sub(&r->running, 1);
    return NULL;
}

static void start_workers(struct run *r, struct worker *w, size_t count)
{
    for (size_t t = 0; t < count; t++) {
        w[t].run = r;
        w[t].index = t;
        w[t].reqs = calloc((size_t)r->opts->batch_size, sizeof *w[t].reqs);
        w[t].latency = calloc(1, sizeof *w[t].latency);
        if (!w[t].reqs || !w[t].latency)
            die("out of memory");
        size_t block = (size_t)r->opts->block_size;
        build_requests(w[t].reqs, (size_t)r->opts->batch_size, r->opcode, r->segment,
                       r->local.ptr + t * r->region, r->remote_addr + t * r->region, block,
                       r->opts->same_block ? 0 : block);
        int err = pthread_create(&w[t].tid, NULL, worker_main, &w[t]);
        if (err)
            die("pthread_create: %s", strerror(err));
        (void)pthread_setname_np(w[t].tid, "bench-submit"); /* bench/tcp_threads.sh tells it from ferry's */
    }
}

/* Main thread while workers run: stops them after --duration (or on a
 * signal) and prints the interval rate once a second to stderr. */
static void watch_progress(struct run *r, double start)
{
    uint64_t last_bytes = 0;
    double last_t = 0;
    unsigned next_report = 1;
    while (atomic_load(&r->running) > 0) {
        sleep_ms(20);
        double t = now_seconds() - start;
        if (g_signalled || (!r->opts->iterations && t >= (double)r->opts->duration))
            atomic_store(&r->stop, true);
        if (t < next_report)
            continue;
        uint64_t b = atomic_load(&r->bytes);
        double rate = (double)(b - last_bytes) / (t - last_t);
        fprintf(stderr, "[%3us] %.*f %s/s  %.1f Gbit/s\n", next_report, (int)r->opts->report_precision,
                rate / r->opts->unit_bytes, r->opts->report_unit, rate * 8 / 1e9);
        last_bytes = b, last_t = t;
        next_report = (unsigned)t + 1;
    }
}

/* Reads every thread's region back (WRITE: into a scratch buffer) and compares
 * it with the expected pattern.  Returns true if everything matched. */
static bool verify(struct run *r)
{
    const struct options *o = r->opts;
    size_t n = (size_t)o->batch_size, block = (size_t)o->block_size;
    size_t span = o->same_block ? block : r->region; /* what each thread moved */
    bool writing = r->opcode == FERRY_WRITE, ok = true;
    struct buffer scratch = {0};
    struct ferry_request *reqs = calloc(n, sizeof *reqs);
    char err[512];
    if (!reqs)
        die("out of memory");
    if (writing)
        buffer_open(r->engine, o->location, span, 0, o->huge_pages, &scratch);
    for (size_t t = 0; t < o->threads && ok; t++) {
        uint64_t pos = t * r->region;
        uint8_t *dst = writing ? scratch.ptr : r->local.ptr + pos;
        struct mismatch mm;
        fill_memory(r->engine, o->location, dst, span, SEED_ZERO, 0);
        build_requests(reqs, span / block, FERRY_READ, r->segment, dst, r->remote_addr + pos, block, block);
        if (run_batch(r->engine, reqs, span / block, err, sizeof err) != 0)
            die("verification read-back failed: %s", err);
        /* READ accepts seed-2 words too: an earlier WRITE run may have
         * replaced the target's pattern at exactly those positions. */
        if (check_memory(r->engine, o->location, dst, span,
                         writing ? SEED_WRITE : SEED_TARGET, writing ? 0 : SEED_WRITE,
                         pos, &mm)) {
            fprintf(stderr, "ferry-bench: verification FAILED at remote offset 0x%" PRIx64
                    ": expected 0x%016" PRIx64 " got 0x%016" PRIx64 "\n",
                    mm.pos, mm.expected, mm.got);
            ok = false;
        }
    }
    if (writing)
        buffer_close(r->engine, &scratch);
    free(reqs);
    return ok;
}

static void print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

/* What the measured interval cost the initiator, and the idle engine after it. */
struct cost {
    uint64_t requests;
    double cpu_seconds;
    uint64_t p50_ns, p99_ns;
    double idle_seconds, idle_cpu_seconds;
};

static void report(const struct run *r, uint64_t batches, double secs, bool verified,
                   const struct cost *c)
{
    double us_per_req = c->requests ? c->cpu_seconds * 1e6 / (double)c->requests : 0;
    const struct options *o = r->opts;
    uint64_t bytes = atomic_load(&r->bytes);
    double gbs = secs > 0 ? (double)bytes / secs / 1e9 : 0;
    if (o->json) {
        printf("{\"operation\":");
        print_json_string(o->operation);
        printf(",\"protocol\":");
        print_json_string(o->protocol);
        printf(",\"location\":");
        print_json_string(o->location);
        printf(",\"block_size\":%" PRIu64 ",\"batch_size\":%" PRIu64 ",\"threads\":%" PRIu64
               ",\"bytes\":%" PRIu64 ",\"seconds\":%.3f,\"gb_per_s\":%.3f,\"gbit_per_s\":%.3f"
               ",\"batches\":%" PRIu64 ",\"verified\":%s,\"requests\":%" PRIu64
               ",\"cpu_seconds\":%.3f,\"cpu_us_per_request\":%.3f,\"batch_p50_us\":%.1f"
               ",\"batch_p99_us\":%.1f,\"idle_seconds\":%.3f,\"idle_cpu_ms\":%.3f,\"same_block\":%s"
               ",\"rotate\":%s,\"pinned\":\"%s\"}\n",
               o->block_size, o->batch_size, o->threads, bytes, secs, gbs, gbs * 8,
               batches, verified ? "true" : "false", c->requests, c->cpu_seconds, us_per_req,
               (double)c->p50_ns / 1e3, (double)c->p99_ns / 1e3, c->idle_seconds,
               c->idle_cpu_seconds * 1e3, o->same_block ? "true" : "false", o->rotate ? "true" : "false",
               o->pinned ? o->pinned : "");
    } else {
        bool cpu = strcmp(o->location, "cpu") == 0;
        printf("ferry-bench: %s %s%s%s block %" PRIu64 " batch %" PRIu64 " threads %" PRIu64
               "%s: %" PRIu64 " bytes in %.2f s = %.*f %s/s (%.2f Gbit/s), %s\n",
               o->operation, o->protocol, cpu ? "" : " ", cpu ? "" : o->location,
               o->block_size, o->batch_size, o->threads, o->same_block ? " (same block)" : "",
               bytes, secs, (int)o->report_precision, gbs * 1e9 / o->unit_bytes, o->report_unit, gbs * 8,
               !o->verify ? "not verified" : verified ? "verified ok" : "verification FAILED");
        printf("ferry-bench: cost: initiator cpu %.3f s for %" PRIu64 " requests = %.3f us/request;"
               " batch latency p50 %.1f us p99 %.1f us\n", c->cpu_seconds, c->requests, us_per_req,
               (double)c->p50_ns / 1e3, (double)c->p99_ns / 1e3);
        if (c->idle_seconds > 0)
            printf("ferry-bench: idle engine (peer connected): cpu %.3f ms over %.2f s\n",
                   c->idle_cpu_seconds * 1e3, c->idle_seconds);
    }
    fflush(stdout);
}

/* Opens the target and checks that every thread's region fits both buffers. */
static void connect_target(struct run *r)
{
    const struct options *o = r->opts;
    struct ferry_buffer_info info;
    size_t count = 0;
    int rc = ferry_open_segment(r->engine, o->segment_id, &r->segment);
    if (rc)
        die_ferry(rc, "open segment %s", o->segment_id);
    rc = ferry_segment_buffers(r->engine, r->segment, &info, 1, &count);
    if (rc)
        die_ferry(rc, "list buffers of segment %s", o->segment_id);
    if (count == 0)
        die("segment %s publishes no buffers", o->segment_id);
    r->remote_addr = info.addr;

    uint64_t need;
    if (__builtin_mul_overflow(o->batch_size, o->block_size, &need) ||
        __builtin_mul_overflow(need, o->threads, &need) || need > o->buffer_size ||
        need > info.len)
        die("threads %" PRIu64 " x batch %" PRIu64 " x block %" PRIu64
            " does not fit: local buffer %" PRIu64 " bytes, remote buffer %" PRIu64
            " bytes (%.*s)", o->threads, o->batch_size, o->block_size, o->buffer_size,
            info.len, (int)sizeof info.location, info.location);
    r->region = (size_t)(o->batch_size * o->block_size);
    uint64_t room = o->buffer_size < info.len ? o->buffer_size : info.len;
    r->slots = o->rotate ? (size_t)(room / need) : 1; /* need <= room: at least 1 */
}

/* The engine keeps its connections to the target; nothing is submitted for
 * `seconds` (or until a signal).  What it burns meanwhile is its idle cost. */
static void measure_idle(uint64_t seconds, struct cost *c)
{
    double cpu0 = cost_process_cpu(), t0 = now_seconds();
    while (!g_signalled && now_seconds() - t0 < (double)seconds)
        sleep_ms(100);
    c->idle_seconds = now_seconds() - t0;
    c->idle_cpu_seconds = cost_process_cpu() - cpu0;
}

static int run_initiator(const struct options *o)
{
    struct run r;
    memset(&r, 0, sizeof r);
    r.opts = o;
    r.opcode = strcmp(o->operation, "write") == 0 ? FERRY_WRITE : FERRY_READ;
    atomic_init(&r.stop, false);
    atomic_init(&r.bytes, 0);
    atomic_init(&r.running, (unsigned)o->threads);
    r.engine = engine_open(o);
    connect_target(&r);
    buffer_open(r.engine, o->location, (size_t)o->buffer_size, 1, o->huge_pages, &r.local);
    /* WRITE sends seed 2; READ's destination is zeroed so that first-touch
     * page faults stay out of the timed loop. */
    fill_memory(r.engine, o->location, r.local.ptr, r.region * o->threads * r.slots,
                r.opcode == FERRY_WRITE ? SEED_WRITE : SEED_ZERO, 0);

    size_t count = (size_t)o->threads;
    struct worker *w = calloc(count, sizeof *w);
    if (!w)
        die("out of memory");
    struct lat_hist *latency = calloc(1, sizeof *latency);
    if (!latency)
        die("out of memory");
    double cpu_start = cost_process_cpu(), start = now_seconds(), end = start;
    start_workers(&r, w, count);
    watch_progress(&r, start);
    uint64_t batches = 0;
    int failed = -1;
    for (size_t t = 0; t < count; t++) {
        pthread_join(w[t].tid, NULL);
        batches += w[t].batches;
        lat_hist_merge(latency, w[t].latency);
        end = w[t].end > end ? w[t].end : end;
        if (w[t].rc && failed < 0)
            failed = (int)t;
    }
    if (failed >= 0)
        die("thread %d: %s", failed, w[failed].err);

    struct cost cost = {.requests = batches * o->batch_size, .cpu_seconds = cost_process_cpu() - cpu_start,
                        .p50_ns = lat_hist_quantile(latency, 0.50),
                        .p99_ns = lat_hist_quantile(latency, 0.99)};
    bool verified = o->verify && verify(&r);
    if (o->idle_seconds)
        measure_idle(o->idle_seconds, &cost);
    report(&r, batches, end - start, verified, &cost);
    print_stats(r.engine, "initiator", stderr); /* stdout may be --json */
    for (size_t t = 0; t < count; t++) {
        free(w[t].reqs);
        free(w[t].latency);
    }
    free(latency);
    free(w);
    buffer_close(r.engine, &r.local);
    ferry_close_segment(r.engine, r.segment);
    ferry_engine_destroy(r.engine);
    return o->verify && !verified ? EXIT_VERIFY : 0;
}

/* ---------------------------------------------------------------- main */

static void print_env_help(void)
{
    size_t n = 0, wenv = 8, wdef = 7;
    const struct ferry_config_knob *k = ferry_config_describe(&n);
    for (size_t i = 0; i < n; i++) {
        size_t a = strlen(k[i].env), b = strlen(k[i].default_text);
        wenv = a > wenv ? a : wenv;
        wdef = b > wdef ? b : wdef;
    }
    printf("%-*s  %-*s  %s\n", (int)wenv, "VARIABLE", (int)wdef, "DEFAULT", "MEANING");
    for (size_t i = 0; i < n; i++)
        printf("%-*s  %-*s  %s\n", (int)wenv, k[i].env, (int)wdef, k[i].default_text,
               k[i].doc);
}

int main(int argc, char **argv)
{
    struct options o;
    options_defaults(&o);
    parse_args(argc, argv, &o);
    if (o.help) {
        usage(stdout);
        return 0;
    }
    if (o.help_env_markdown) {
        size_t n;
        const struct ferry_config_knob *k = ferry_config_describe(&n);
        printf("| variable | default | meaning |\n|---|---|---|\n");
        for (size_t i = 0; i < n; i++)
            printf("| %s | %s | %s |\n", k[i].env, k[i].default_text, k[i].doc);
        return 0;
    }
    if (o.help_env) {
        print_env_help();
        return 0;
    }
    check_options(&o);
    pinned_how = o.pinned;
    install_signals();
    if (strcmp(o.mode, "target") == 0)
        return run_target(&o);
    return run_initiator(&o);
}

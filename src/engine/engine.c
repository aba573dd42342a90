/* SPDX-License-Identifier: Apache-2.0 */
/*
 * engine.c — the engine's lifecycle (config, transports, metadata,
 * descriptor), notifications and stats.  Memory registration lives in
 * memory.c, segments in segment.c, requests and their completion in batch.c.
 *
 * Threads: every public function may be called from any thread.  The
 * registry has its own lock; segments are guarded by seg_lock (submits read,
 * open/close/refresh write); transports call back into deliver_notify and the
 * device copy hooks from their own threads.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "abi.h"
#include "config.h"
#include "device/device.h"
#include "engine/engine.h"
#include "err.h"
#include "log.h"
#include "net.h"
#include "spin.h"
#include "trace.h"

/* ------------------------------------------------------------ notifications */

static void hook_deliver_notify(void *engine, const char *from, const char *origin, const void *msg, size_t len)
{
    ferry_engine *e = engine;
    notify_deliver(&e->notes, from, origin, msg, len);
}

int ferry_get_notifications(ferry_engine *e, struct ferry_notification *out, size_t max, size_t *count)
{
    if (!e || (!out && max) || !count)
        return ferry_fail(FERRY_EINVAL, "ferry_get_notifications: NULL argument");
    return notify_take(&e->notes, out, max, count);
}

/* ------------------------------------------------------------ descriptor */

struct memreg_region *engine_remote_regions(ferry_engine *e, size_t *n)
{
    size_t cap = memreg_list_remote(&e->registry, NULL, 0);
    struct memreg_region *r = calloc(cap + 1, sizeof *r);
    size_t got = r ? memreg_list_remote(&e->registry, r, cap) : 0;
    *n = got < cap ? got : cap; /* more now: registered since the count (not copied) */
    if (r)
        engine_order_regions(e, r, *n);
    return r;
}

static int describe_self(void *ctx, char **json)
{
    ferry_engine *e = ctx;
    if (!atomic_load(&e->ready)) /* the listener runs before the transports exist */
        return ferry_fail(FERRY_EBUSY, "engine %s is still starting", e->segment_name);
    struct ferry_descriptor d = {.format = DESC_FORMAT, .engine_id = e->engine_id};
    snprintf(d.name, sizeof d.name, "%s", e->segment_name);
    int rc = 0;
    for (size_t i = 0; !rc && i < e->ntransports; i++) {
        snprintf(d.transports[i].name, sizeof d.transports[i].name, "%s", e->tops[i]->name);
        rc = e->tops[i]->describe(e->tstate[i], &d.transports[i].json);
        d.ntransports = i + 1;
    }
    size_t n = 0;
    struct memreg_region *regions = rc ? NULL : engine_remote_regions(e, &n);
    d.buffers = calloc(n + 1, sizeof *d.buffers);
    if (!rc && (!regions || !d.buffers))
        rc = ferry_fail(FERRY_ENOMEM, "descriptor buffers");
    if (!rc) {
        for (size_t i = 0; i < n; i++) {
            d.buffers[i].addr = regions[i].addr;
            d.buffers[i].len = regions[i].len;
            snprintf(d.buffers[i].location, sizeof d.buffers[i].location, "%s", regions[i].location);
        }
        d.nbuffers = n;
        rc = descriptor_encode(&d, json);
    }
    free(regions);
    for (size_t i = 0; i < d.ntransports; i++)
        free(d.transports[i].json);
    free(d.buffers);
    return rc;
}

int engine_publish(ferry_engine *e)
{
    if (!e->meta_state)
        return 0;
    pthread_mutex_lock(&e->publish_lock);
    char *json = NULL;
    int rc = describe_self(e, &json);
    if (!rc)
        rc = e->meta->publish(e->meta_state, e->segment_name, json);
    pthread_mutex_unlock(&e->publish_lock);
    free(json);
    return rc;
}

/* ------------------------------------------------------------ lifecycle */

/* FERRY_WAIT_SPIN_US's auto: 50 µs below 8 cores (a few CPUs are better
 * left to the transport's threads), 400 from 8.  On 16 CPUs a one-thread
 * batch that waits 100-400 µs (tcp 4 KiB x 128, a staged 16 KiB x 128) ended
 * sooner when its waiter looked than when it slept: staged READ p50 -15 %,
 * tcp 4 KiB x 1 +10-20 % GB/s, while four threads' batches (> 400 µs) are
 * past the look and unchanged; 1,000 and 3,000 cost four-thread WRITE 10-15 %
 * (docs/BENCHMARKS.md, "Seventeenth session, lead"). */
#define WAIT_SPIN_US_FEW_CORES 50u
#define WAIT_SPIN_US_MANY_CORES 400u
#define WAIT_SPIN_US_MAX 10000u

unsigned engine_auto_wait_spin_us(long cores)
{
    return cores < 8 ? WAIT_SPIN_US_FEW_CORES : WAIT_SPIN_US_MANY_CORES;
}
#define KEEPALIVE_S_DEFAULT 120u /* FERRY_KEEPALIVE_S */
#define KEEPALIVE_S_MAX 86400u

/* "rdma, tcp" -> "rdma,tcp": blanks around the items of a comma list go
 * (callers write lists as people do; " tcp" is no transport or NIC name). */
static void list_trim(char *s)
{
    char *out = s;
    for (const char *item = s;;) {
        const char *comma = strchr(item, ',');
        const char *end = comma ? comma : item + strlen(item);
        while (item < end && (*item == ' ' || *item == '\t'))
            item++;
        const char *last = end;
        while (last > item && (last[-1] == ' ' || last[-1] == '\t'))
            last--;
        memmove(out, item, (size_t)(last - item));
        out += last - item;
        if (!comma)
            break;
        *out++ = ',';
        item = comma + 1;
    }
    *out = '\0';
}

static int copy_config(ferry_engine *e, const struct ferry_config *cfg)
{
    e->cfg = *cfg;
    struct {
        const char **field;
        char *buf;
        size_t cap;
        const char *what;
    } strs[] = {
        {&e->cfg.local_server_name, e->str_local, sizeof e->str_local, "local_server_name"},
        {&e->cfg.metadata_server, e->str_meta, sizeof e->str_meta, "metadata_server"},
        {&e->cfg.protocols, e->str_protocols, sizeof e->str_protocols, "protocols"},
        {&e->cfg.device_name, e->str_device, sizeof e->str_device, "device_name"},
        {&e->cfg.metadata_prefix, e->str_prefix, sizeof e->str_prefix, "metadata_prefix"},
        {&e->cfg.bind_address, e->str_bind, sizeof e->str_bind, "bind_address"},
    };
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        const char *v = *strs[i].field ? *strs[i].field : "";
        if (strlen(v) >= strs[i].cap)
            return ferry_fail(FERRY_EINVAL, "%s is longer than %zu characters", strs[i].what, strs[i].cap - 1);
        strcpy(strs[i].buf, v);
        *strs[i].field = strs[i].buf;
    }
    list_trim(e->str_protocols);
    list_trim(e->str_device);
    if (e->cfg.tcp_connections < 1 || e->cfg.tcp_connections > 64)
        return ferry_fail(FERRY_EINVAL, "tcp_connections=%u (1-64 allowed)", e->cfg.tcp_connections);
    if (e->cfg.slice_size < 4096 || e->cfg.slice_size > (64u << 20))
        return ferry_fail(FERRY_EINVAL, "slice_size=%zu (4 KiB - 64 MiB allowed)", e->cfg.slice_size);
    if (e->cfg.coalesce_max < 1 || e->cfg.coalesce_max > XFER_MAX_PIECES)
        return ferry_fail(FERRY_EINVAL, "coalesce_max=%u (1-%d allowed)", e->cfg.coalesce_max, XFER_MAX_PIECES);
    if (e->cfg.staging_chunks < 1 || e->cfg.staging_chunk_size < e->cfg.slice_size)
        return ferry_fail(FERRY_EINVAL, "staging: %u chunks of %zu bytes (at least 1 chunk, each >= slice_size %zu)",
                          e->cfg.staging_chunks, e->cfg.staging_chunk_size, e->cfg.slice_size);
    if (e->cfg.request_timeout_ms < 1 || e->cfg.connect_timeout_ms < 1)
        return ferry_fail(FERRY_EINVAL, "timeouts must be at least 1 ms");
    e->meta = meta_find(e->cfg.metadata_server);
    if (!e->meta)
        return ferry_fail(strstr(e->cfg.metadata_server, "://") ? FERRY_ENOTSUP : FERRY_EINVAL,
                          "metadata_server \"%s\" is not supported by this build "
                          "(P2PHANDSHAKE, etcd://host:port[,host:port], redis://host:port, http://host:port/path)",
                          e->cfg.metadata_server);
    return 0;
}

/* A transport that needs hardware: with transport_fallback, not finding a
 * usable device (or not being built) skips it instead of failing. */
static int may_skip(const ferry_engine *e, const char *name, int rc)
{
    const struct transport_ops *ops = transport_find(name);
    return e->cfg.transport_fallback && ops && (ops->caps & TRANSPORT_NEEDS_HARDWARE) &&
           (rc == FERRY_ENODEV || rc == FERRY_ENOTSUP);
}

/* "tcp, shm, rdma": the transports of this build. */
static void available_transports(char *out, size_t cap)
{
    size_t n, used = 0;
    const struct transport_ops *const *all = transport_list(&n);
    *out = '\0';
    for (size_t i = 0; i < n && used < cap; i++)
        if (all[i]->create)
            used += (size_t)snprintf(out + used, cap - used, "%s%s", used ? ", " : "", all[i]->name);
}

static int start_one(ferry_engine *e, const struct transport_host *host, const char *name)
{
    const struct transport_ops *ops = transport_find(name);
    if (!ops || !ops->create) {
        char avail[256];
        available_transports(avail, sizeof avail);
        return ferry_fail(ops ? FERRY_ENOTSUP : FERRY_EINVAL,
                          "protocol \"%s\" is not available in this build (available: %s)", name, avail);
    }
    for (size_t i = 0; i < e->ntransports; i++)
        if (e->tops[i] == ops)
            return 0;
    if (e->ntransports == FERRY_MAX_TRANSPORTS)
        return ferry_fail(FERRY_EINVAL, "too many protocols in \"%s\"", e->cfg.protocols);
    int rc = ops->create(host, &e->tstate[e->ntransports]);
    if (rc)
        return rc;
    for (int op = XFER_READ; op <= XFER_WRITE; op++)
        for (int staged = 0; staged <= 1; staged++)
            e->tspread[e->ntransports][op][staged] =
                ops->spread ? ops->spread(e->tstate[e->ntransports], op, staged) : 1;
    e->tops[e->ntransports++] = ops;
    return 0;
}

/* Starts the listed transports.  As the reference engine discovers its NICs
 * and falls back to TCP, a hardware transport that cannot start is skipped
 * (may_skip) and, if nothing is left, the registry's first transport (tcp)
 * runs; either way one warning says so, so an engine is never on a slower
 * path than asked without a word. */
static int start_transports(ferry_engine *e, const struct transport_host *host)
{
    char list[sizeof e->str_protocols], *save = NULL, skipped[320] = "";
    strcpy(list, e->cfg.protocols);
    for (char *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        int rc = start_one(e, host, name);
        if (rc && !may_skip(e, name, rc))
            return rc;
        if (rc)
            snprintf(skipped + strlen(skipped), sizeof skipped - strlen(skipped), "%s%s (%s)", *skipped ? "; " : "",
                     name, ferry_last_error());
    }
    if (e->ntransports == 0 && *skipped) {
        size_t n;
        const char *fallback = transport_list(&n)[0]->name;
        int rc = start_one(e, host, fallback);
        if (rc)
            return rc;
        LOG_WARN("transport %s not started; falling back to %s (FERRY_TRANSPORT_FALLBACK=0 makes this an error)",
                 skipped, fallback);
    } else if (*skipped) {
        LOG_WARN("transport %s not started; running on the others of \"%s\"", skipped, e->cfg.protocols);
    }
    if (e->ntransports == 0)
        return ferry_fail(FERRY_EINVAL, "no protocol given");
    return 0;
}

/* Splits local_server_name into the listener's host and port (an Ascend
 * ":npu_N" suffix is dropped).  With a metadata store the listener binds
 * bind_address if set, and the engine is named segment_name if set (the
 * reference names it by its local_hostname); otherwise the name is set once
 * the port is bound (ferry_engine_create). */
static int local_name(ferry_engine *e, int *port)
{
    const char *want = e->cfg.segment_name;
    e->cfg.segment_name = e->segment_name; /* the caller's string is not kept */
    char name[sizeof e->str_local];
    snprintf(name, sizeof name, "%s", e->cfg.local_server_name);
    char *npu = strstr(name, ":npu_");
    if (npu && npu[5] && strspn(npu + 5, "0123456789") == strlen(npu + 5))
        *npu = '\0';
    int rc = net_split_hostport(name, e->listen_host, sizeof e->listen_host, port);
    if (rc || (e->meta->caps & META_NAMED_BY_LISTENER))
        return rc;
    if (want && *want) {
        if (strlen(want) >= sizeof e->segment_name)
            return ferry_fail(FERRY_EINVAL, "segment_name is longer than %zu characters", sizeof e->segment_name - 1);
        snprintf(e->segment_name, sizeof e->segment_name, "%s", want);
    }
    if (*e->cfg.bind_address)
        snprintf(e->listen_host, sizeof e->listen_host, "%s", e->cfg.bind_address);
    return 0;
}

int ferry_engine_create(const struct ferry_config *cfg, ferry_engine **out)
{
    struct ferry_config full; /* the caller's config in this library's layout */
    if (!out)
        return ferry_fail(FERRY_EINVAL, "ferry_engine_create: out is NULL");
    int rc = cfg ? config_import(&full, cfg) : ferry_config_init(&full);
    if (rc)
        return rc;
    ferry_trace_init();
    ferry_engine *e = calloc(1, sizeof *e);
    if (!e)
        return ferry_fail(FERRY_ENOMEM, "engine");
    rc = copy_config(e, &full);
    if (rc) {
        free(e);
        return rc;
    }
    atomic_store_explicit(&ferry_log_level, e->cfg.log_level, memory_order_relaxed);
    uint64_t spin_us = 0;
    if ((rc = config_env_number("FERRY_WAIT_SPIN_US", true, 0, WAIT_SPIN_US_MAX, "auto or microseconds, 0-10000",
                                &spin_us)) < 0) {
        free(e);
        return rc;
    }
    if (rc == 1)
        spin_us = engine_auto_wait_spin_us(usable_cores());
    e->wait_spin_ns = spin_us * 1000u;
    uint64_t keepalive_s = KEEPALIVE_S_DEFAULT;
    if ((rc = config_env_number("FERRY_KEEPALIVE_S", false, 0, KEEPALIVE_S_MAX, "seconds, 0-86400", &keepalive_s)) <
        0) {
        free(e);
        return rc;
    }
    memreg_init(&e->registry);
    pthread_rwlock_init(&e->seg_lock, NULL);
    notify_queue_init(&e->notes, e->cfg.notify_queue_max);
    pthread_mutex_init(&e->stale_lock, NULL);
    pthread_mutex_init(&e->publish_lock, NULL);
    pthread_mutex_init(&e->pool_lock, NULL);
    pthread_mutex_init(&e->order_lock, NULL);
    if (getrandom(&e->engine_id, sizeof e->engine_id, 0) != sizeof e->engine_id)
        e->engine_id = now_ns() ^ ((uint64_t)(uintptr_t)e << 16);
    int port = 0;
    rc = local_name(e, &port);
    if (rc) {
        ferry_engine_destroy(e);
        return rc;
    }
    rc = auth_key_load(&e->auth, e->cfg.auth_key, e->cfg.auth_key_file, e->engine_id);
    /* the struct keeps no pointer to the secret: it lives in e->auth only */
    e->cfg.auth_key = e->cfg.auth_key_file = NULL;
    if (rc) {
        ferry_engine_destroy(e);
        return rc;
    }
    struct acceptor_limits limits = {e->cfg.max_connections, e->cfg.max_connections_per_peer, (unsigned)keepalive_s};
    struct p2p_server_opts hs = {e->cfg.connect_timeout_ms, limits, &e->auth};
    rc = p2p_server_start(e->listen_host, port, &hs, describe_self, e, &e->handshake, &e->handshake_port);
    if (rc) {
        ferry_engine_destroy(e);
        return rc;
    }
    if (!*e->segment_name) /* [v6]:port for an IPv6 host, as the reference names it */
        net_format_hostport(e->segment_name, sizeof e->segment_name, e->listen_host, e->handshake_port);
    if (port && port != e->handshake_port)
        LOG_WARN("handshake port %d is taken; listening on %d instead", port, e->handshake_port);
    struct transport_host host = {
        .engine = e,
        .registry = &e->registry,
        .cfg = &e->cfg,
        .segment_name = e->segment_name,
        .engine_id = e->engine_id,
        .listen_host = e->listen_host,
        .deliver_notify = hook_deliver_notify,
        .bytes_bounced = &e->bytes_bounced,
        .auth = &e->auth,
        .limits = limits,
    };
    if ((rc = start_transports(e, &host))) {
        char why[512];
        snprintf(why, sizeof why, "%s", ferry_last_error());
        ferry_engine_destroy(e);
        return ferry_fail(rc, "%s", why);
    }
    atomic_store(&e->ready, 1);
    rc = e->meta->create(e->cfg.metadata_server, e->cfg.metadata_prefix, e->cfg.metadata_ttl_s,
                         e->cfg.connect_timeout_ms, &e->meta_state);
    if (!rc && e->meta->set_auth)
        e->meta->set_auth(e->meta_state, &e->auth);
    if (!rc)
        rc = engine_publish(e);
    if (rc) {
        char why[512];
        snprintf(why, sizeof why, "%s", ferry_last_error());
        ferry_engine_destroy(e);
        return ferry_fail(rc, "%s", why);
    }
    LOG_INFO("engine %s ready (engine id %016llx)", e->segment_name, (unsigned long long)e->engine_id);
    *out = e;
    return 0;
}

void ferry_engine_destroy(ferry_engine *e)
{
    if (!e)
        return;
    stream_runner_destroy(atomic_load(&e->streams)); /* before anything its workers use */
    if (e->meta_state) {
        e->meta->unpublish(e->meta_state, e->segment_name);
        e->meta->destroy(e->meta_state);
    }
    p2p_server_stop(e->handshake);
    pthread_rwlock_wrlock(&e->seg_lock);
    struct segment **segs = e->segs;
    size_t n = e->nsegs;
    e->segs = NULL;
    e->nsegs = e->segcap = 0;
    pthread_rwlock_unlock(&e->seg_lock);
    for (size_t i = 0; i < n; i++)
        engine_segment_free(e, segs[i]);
    free(segs);
    /* registrations still standing give their transport handles back first */
    for (size_t k = 0; k < e->registry.count; k++)
        for (size_t i = 0; i < e->ntransports; i++)
            if (e->tops[i]->unregister_memory && e->registry.regions[k].transport_handle[i])
                e->tops[i]->unregister_memory(e->tstate[i], e->registry.regions[k].transport_handle[i]);
    /* segments are closed and handles returned: no staged frame is on a wire */
    for (size_t i = 0; i < atomic_load(&e->npools); i++)
        staging_pool_destroy(e->pools[i].pool);
    for (size_t i = 0; i < e->ntransports; i++)
        e->tops[i]->destroy(e->tstate[i]);
    notify_queue_destroy(&e->notes);
    pthread_mutex_destroy(&e->stale_lock);
    free(e->stale);
    pthread_mutex_destroy(&e->publish_lock);
    pthread_mutex_destroy(&e->pool_lock);
    pthread_mutex_destroy(&e->order_lock);
    free(e->reg_order);
    pthread_rwlock_destroy(&e->seg_lock);
    memreg_destroy(&e->registry);
    auth_key_wipe(&e->auth);
    free(e);
}

void ferry_process_exiting(void)
{
    ferry_device_process_exiting();
}

const char *ferry_engine_segment_name(const ferry_engine *e)
{
    return e ? e->segment_name : "";
}

int ferry_engine_handshake_port(const ferry_engine *e)
{
    return e ? e->handshake_port : FERRY_EINVAL;
}

/* ------------------------------------------------------------ stats */

int ferry_get_stats_sized(ferry_engine *e, struct ferry_stats *caller, size_t size, size_t transport_size)
{
    if (!e || !caller)
        return ferry_fail(FERRY_EINVAL, "get_stats: NULL argument");
    struct ferry_stats full, *out = &full; /* this library's layout; the caller's may differ */
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < e->ntransports; i++) {
        e->tops[i]->stats(e->tstate[i], &out->transports[i]);
        out->transports[i].requests_completed = atomic_load(&e->req_completed[i]);
        out->transports[i].requests_failed = atomic_load(&e->req_failed[i]);
        out->transports[i].bytes_staged = atomic_load(&e->bytes_staged[i]);
        /* the bounce hooks are shared by all transports; report them once */
        out->transports[i].bytes_bounced = i == 0 ? atomic_load(&e->bytes_bounced) : 0;
    }
    out->transport_count = e->ntransports;
    return stats_export(out, caller, size, transport_size);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * meta_lookup.c — what a shared metadata store (etcd or Redis) costs ferry:
 * lookup latency and ferry_open_segment rate with many published segments,
 * and the time from an engine's death (SIGKILL) to its entry disappearing.
 *
 * It publishes --segments copies of a real engine's descriptor under distinct
 * names straight through the backend, looks random names up, opens every one
 * from a second engine, then kills --deaths child engines (TTL --ttl) and
 * polls every 5 ms until their key is gone.  Side by side with the lookup it
 * measures the store's floor: the same read made with the bare client
 * library (libcurl POST /v3/kv/range, or hiredis GET) on a reused connection.
 *
 * usage: meta_lookup URL [--segments N] [--lookups N] [--deaths N] [--ttl S] [--buffers N]
 * The server must be running; bench/meta_lookup.sh starts etcd and Redis and
 * runs this against both.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "ferry.h"
#include "meta/meta.h"
#include "net.h"
#ifdef FERRY_HAVE_ETCD
#include <curl/curl.h>
#endif
#ifdef FERRY_HAVE_REDIS
#include <hiredis/hiredis.h>
#endif

#define PREFIX "ferry-bench/"

struct options {
    const char *url;
    unsigned segments, lookups, deaths, ttl_s, buffers;
};

static void die(const char *what, int rc)
{
    fprintf(stderr, "meta_lookup: %s: %s: %s\n", what, ferry_err_name(rc), ferry_last_error());
    exit(1);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Prints "label  p50 p90 p99 max (us)  rate/s" for n samples in ns. */
static void report(const char *label, uint64_t *ns, size_t n, uint64_t total_ns)
{
    qsort(ns, n, sizeof *ns, cmp_u64);
    printf("  %-34s p50 %8.1f  p90 %8.1f  p99 %8.1f  max %8.1f us   %8.0f /s\n", label, ns[n / 2] / 1e3,
           ns[n * 9 / 10] / 1e3, ns[n * 99 / 100] / 1e3, ns[n - 1] / 1e3, n * 1e9 / (double)total_ns);
}

static ferry_engine *engine_on(const struct options *o)
{
    struct ferry_config cfg;
    ferry_config_init(&cfg);
    cfg.metadata_server = o->url;
    cfg.metadata_prefix = PREFIX;
    cfg.metadata_ttl_s = o->ttl_s;
    ferry_engine *e;
    int rc = ferry_engine_create(&cfg, &e);
    if (rc)
        die("engine", rc);
    return e;
}

/* The store's floor for one read of an absent key, bare client library. */
static int reference_lookup(const char *url, uint64_t *ns, size_t n, uint64_t *total)
{
    char host[128];
    int port = 0;
#ifdef FERRY_HAVE_ETCD
    if (strncmp(url, "etcd://", 7) == 0) {
        char first[160];
        snprintf(first, sizeof first, "%s", url + 7);
        first[strcspn(first, ",")] = '\0';
        if (net_split_hostport(first, host, sizeof host, &port))
            return -1;
        char u[256];
        snprintf(u, sizeof u, "http://%s:%d/v3/kv/range", host, port ? port : 2379);
        CURL *h = curl_easy_init();
        struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
        FILE *devnull = fopen("/dev/null", "w");
        curl_easy_setopt(h, CURLOPT_URL, u);
        curl_easy_setopt(h, CURLOPT_PROXY, "");
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "{\"key\":\"YWJzZW50\"}");
        curl_easy_setopt(h, CURLOPT_WRITEDATA, devnull);
        uint64_t t0 = now_ns();
        for (size_t i = 0; i < n; i++) {
            uint64_t t = now_ns();
            if (curl_easy_perform(h) != CURLE_OK)
                return -1;
            ns[i] = now_ns() - t;
        }
        *total = now_ns() - t0;
        fclose(devnull);
        curl_slist_free_all(hd);
        curl_easy_cleanup(h);
        return 0;
    }
#endif
#ifdef FERRY_HAVE_REDIS
    if (strncmp(url, "redis://", 8) == 0) {
        if (net_split_hostport(url + 8, host, sizeof host, &port))
            return -1;
        struct timeval tv = {5, 0};
        redisContext *c = redisConnectWithTimeout(host, port ? port : 6379, tv);
        if (!c || c->err)
            return -1;
        uint64_t t0 = now_ns();
        for (size_t i = 0; i < n; i++) {
            uint64_t t = now_ns();
            redisReply *r = redisCommand(c, "GET absent");
            if (!r)
                return -1;
            freeReplyObject(r);
            ns[i] = now_ns() - t;
        }
        *total = now_ns() - t0;
        redisFree(c);
        return 0;
    }
#endif
    (void)ns, (void)n, (void)total, (void)host, (void)port;
    return -1;
}

/* Copies `json` with its "name" value replaced by name (a new string). */
static char *rename_descriptor(const char *json, const char *old, const char *name)
{
    char from[160];
    snprintf(from, sizeof from, "\"name\":\"%s\"", old);
    const char *at = strstr(json, from);
    if (!at)
        return NULL;
    char *out = malloc(strlen(json) + strlen(name) + 16);
    if (out)
        sprintf(out, "%.*s\"name\":\"%s\"%s", (int)(at - json), json, name, at + strlen(from));
    return out;
}

static void bench_lookups(const struct options *o)
{
    const struct meta_ops *ops = meta_find(o->url);
    if (!ops)
        die("this build has no backend for the URL", FERRY_ENOTSUP);

    /* a real descriptor: an engine with o->buffers remote-accessible buffers */
    ferry_engine *src = engine_on(o);
    size_t blen = 64u << 10;
    char *mem;
    int rc = ferry_mem_alloc(src, "cpu", blen * o->buffers, (void **)&mem);
    for (unsigned i = 0; !rc && i < o->buffers; i++)
        rc = ferry_register_memory(src, mem + i * blen, blen, "cpu", 1);
    if (rc)
        die("register", rc);
    void *pub = NULL, *cli = NULL;
    if ((rc = ops->create(o->url, PREFIX, 60, 5000, &pub)) || (rc = ops->create(o->url, PREFIX, 60, 5000, &cli)))
        die("backend", rc);
    char *json;
    size_t len;
    if ((rc = ops->lookup(cli, ferry_engine_segment_name(src), &json, &len)))
        die("lookup of the source engine", rc);
    printf("%s: %u segments, descriptor of %zu bytes (%u buffers)\n", o->url, o->segments, len, o->buffers);

    char (*names)[32] = calloc(o->segments, sizeof *names);
    uint64_t *ns = calloc(o->lookups > o->segments ? o->lookups : o->segments, sizeof *ns);
    if (!names || !ns)
        die("memory", FERRY_ENOMEM);
    uint64_t t0 = now_ns();
    for (unsigned i = 0; i < o->segments; i++) {
        snprintf(names[i], sizeof names[i], "bench-%05u:1", i);
        char *copy = rename_descriptor(json, ferry_engine_segment_name(src), names[i]);
        uint64_t t = now_ns();
        if (!copy || (rc = ops->publish(pub, names[i], copy)))
            die("publish", copy ? rc : FERRY_ENOMEM);
        ns[i] = now_ns() - t;
        free(copy);
    }
    report("publish (put with lease/TTL)", ns, o->segments, now_ns() - t0);

    srand(42);
    t0 = now_ns();
    for (unsigned i = 0; i < o->lookups; i++) {
        char *j;
        size_t l;
        uint64_t t = now_ns();
        if ((rc = ops->lookup(cli, names[rand() % o->segments], &j, &l)))
            die("lookup", rc);
        ns[i] = now_ns() - t;
        free(j);
    }
    report("lookup (ferry backend)", ns, o->lookups, now_ns() - t0);
    uint64_t total;
    if (reference_lookup(o->url, ns, o->lookups, &total) == 0)
        report("reference: bare client read", ns, o->lookups, total);

    ferry_engine *opener = engine_on(o);
    ferry_segment_t *segs = calloc(o->segments, sizeof *segs);
    t0 = now_ns();
    for (unsigned i = 0; i < o->segments; i++) {
        uint64_t t = now_ns();
        if ((rc = ferry_open_segment(opener, names[i], &segs[i])))
            die("open_segment", rc);
        ns[i] = now_ns() - t;
    }
    report("ferry_open_segment (first open)", ns, o->segments, now_ns() - t0);
    t0 = now_ns();
    for (unsigned i = 0; i < o->segments; i++) {
        uint64_t t = now_ns();
        ferry_segment_t again;
        if ((rc = ferry_open_segment(opener, names[i], &again)))
            die("open_segment", rc);
        ns[i] = now_ns() - t;
    }
    report("ferry_open_segment (cached)", ns, o->segments, now_ns() - t0);
    for (unsigned i = 0; i < o->segments; i++)
        ferry_close_segment(opener, segs[i]);
    ferry_engine_destroy(opener);

    t0 = now_ns();
    for (unsigned i = 0; i < o->segments; i++) {
        uint64_t t = now_ns();
        ops->unpublish(pub, names[i]);
        ns[i] = now_ns() - t;
    }
    report("unpublish (delete)", ns, o->segments, now_ns() - t0);
    ops->destroy(pub);
    ops->destroy(cli);
    free(json);
    free(names);
    free(ns);
    free(segs);
    ferry_engine_destroy(src);
    ferry_mem_free(NULL, "cpu", mem, blen * o->buffers);
}

/* Kills engines and times how long their key outlives them. */
static void bench_deaths(const struct options *o)
{
    const struct meta_ops *ops = meta_find(o->url);
    void *cli;
    int rc = ops->create(o->url, PREFIX, 60, 5000, &cli);
    if (rc)
        die("backend", rc);
    double *gone = calloc(o->deaths, sizeof *gone);
    printf("  death -> key gone, TTL %u s (keepalive every %.2f s), polled every 5 ms:", o->ttl_s, o->ttl_s / 3.0);
    for (unsigned k = 0; k < o->deaths; k++) {
        int fds[2];
        if (pipe(fds))
            die("pipe", FERRY_EIO);
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            ferry_engine *e = engine_on(o);
            dprintf(fds[1], "%s\n", ferry_engine_segment_name(e));
            for (;;)
                pause();
        }
        close(fds[1]);
        char name[128] = "";
        FILE *f = fdopen(fds[0], "r");
        if (!f || !fgets(name, sizeof name, f))
            die("child engine did not start", FERRY_EIO);
        fclose(f);
        name[strcspn(name, "\n")] = '\0';
        /* die at a random point of the keepalive period */
        struct timespec ts = {0, (long)(rand() % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        char *j;
        size_t l;
        if ((rc = ops->lookup(cli, name, &j, &l)))
            die("the child engine is not published", rc);
        free(j);
        kill(pid, SIGKILL);
        uint64_t t0 = now_ns();
        waitpid(pid, NULL, 0);
        while ((rc = ops->lookup(cli, name, &j, &l)) == 0) {
            free(j);
            if (now_ns() - t0 > 30000000000ull)
                die("key still there 30 s after the death", FERRY_ETIMEDOUT);
            usleep(5000);
        }
        gone[k] = (now_ns() - t0) / 1e9;
        printf(" %.2f", gone[k]);
        fflush(stdout);
    }
    double lo = gone[0], hi = gone[0], sum = 0;
    for (unsigned k = 0; k < o->deaths; k++) {
        lo = gone[k] < lo ? gone[k] : lo;
        hi = gone[k] > hi ? gone[k] : hi;
        sum += gone[k];
    }
    printf(" s\n  %-34s min %.2f  mean %.2f  max %.2f s (TTL %u s)\n", "death -> key gone", lo, sum / o->deaths, hi,
           o->ttl_s);
    free(gone);
    ops->destroy(cli);
}

int main(int argc, char **argv)
{
    struct options o = {.segments = 1000, .lookups = 5000, .deaths = 5, .ttl_s = 2, .buffers = 32};
    for (int i = 1; i < argc; i++) {
        unsigned *v = NULL;
        if (strcmp(argv[i], "--segments") == 0)
            v = &o.segments;
        else if (strcmp(argv[i], "--lookups") == 0)
            v = &o.lookups;
        else if (strcmp(argv[i], "--deaths") == 0)
            v = &o.deaths;
        else if (strcmp(argv[i], "--ttl") == 0)
            v = &o.ttl_s;
        else if (strcmp(argv[i], "--buffers") == 0)
            v = &o.buffers;
        else if (argv[i][0] != '-' && !o.url)
            o.url = argv[i];
        else
            o.url = NULL, i = argc;
        if (v && i + 1 < argc)
            *v = (unsigned)strtoul(argv[++i], NULL, 10);
    }
    if (!o.url || !o.segments || !o.lookups || !o.ttl_s || !o.buffers) {
        fprintf(stderr, "usage: meta_lookup etcd://h:p|redis://h:p [--segments 1000] [--lookups 5000] "
                        "[--deaths 5] [--ttl 2] [--buffers 32]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    bench_lookups(&o);
    if (o.deaths)
        bench_deaths(&o);
    return 0;
}

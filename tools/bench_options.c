/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench_options.c — ferry-bench's flag table, parsing (gflags style: --x=v,
 * --x v, --nox, '-' and '_' alike) and checks.  Main thread only, before
 * the workers start; the parsed struct is read-only afterwards.
 */
#include "bench_options.h"

#include <ferry.h>

#include <cjson/cJSON.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_THREADS 1024
#define MAX_BATCH (1u << 20)



enum opt_kind { OPT_STR, OPT_SIZE, OPT_UINT, OPT_INT, OPT_BOOL };

struct opt_def {
    const char *name;
    enum opt_kind kind;
    size_t offset;
    const char *doc;
};

#define OPT(n, k, d) { #n, k, offsetof(struct options, n), d }
static const struct opt_def opt_defs[] = {
    OPT(mode, OPT_STR, "target | initiator (default, as Mooncake's bench)"),
    OPT(local_server_name, OPT_STR, "HOST[:PORT] of this engine's handshake listener"),
    OPT(metadata_server, OPT_STR, "P2PHANDSHAKE (default)"),
    OPT(operation, OPT_STR, "write (default) | read"),
    OPT(protocol, OPT_STR, "tcp (default) | rdma | ..."),
    OPT(segment_id, OPT_STR, "initiator: the target's segment, HOST:PORT"),
    OPT(device_name, OPT_STR, "NIC list for rdma"),
    OPT(location, OPT_STR, "cpu (default) | cpu:NUMA | cuda:N | npu:N | sim:N"),
    OPT(block_size, OPT_SIZE, "bytes per request, multiple of 8 (default 64K)"),
    OPT(batch_size, OPT_UINT, "requests per batch (default 128)"),
    OPT(buffer_size, OPT_SIZE, "bytes of the registered buffer (default 1G)"),
    OPT(duration, OPT_UINT, "initiator: seconds to run (default 10)"),
    OPT(threads, OPT_UINT, "initiator threads sharing one engine (default 1)"),
    OPT(iterations, OPT_UINT, "initiator: stop after N batches per thread"),
    OPT(idle_seconds, OPT_UINT, "initiator: after the run, stay connected and idle N s; print the CPU used"),
    OPT(gpu_id, OPT_INT, "with --use_vram: cuda:N"),
    OPT(npu_id, OPT_INT, "npu:N"),
    OPT(use_vram, OPT_BOOL, "use GPU memory (cuda:gpu_id)"),
    OPT(json, OPT_BOOL, "initiator: print one JSON object instead of text"),
    OPT(verify, OPT_BOOL, "check the transferred bytes (default true)"),
    OPT(huge_pages, OPT_BOOL, "cpu buffers: false = 4 KiB pages (MADV_NOHUGEPAGE), to see their first-copy cost"),
    OPT(same_block, OPT_BOOL, "initiator: every request of a thread's batch moves that thread's first block (as "
                              "fi_rma_bw and ucx_perftest do: a cache-sized working set); verified: that block"),
    OPT(pinned, OPT_STR, "cpu buffers pinned by CUDA: alloc (cuMemHostAlloc, what staging chunks are) | thp (huge "
                         "pages pinned with cuMemHostRegister); default: not pinned"),
    OPT(rotate, OPT_BOOL, "initiator: each batch moves the next batch-sized region of the buffer, cycling through "
                          "all of it (data as cold in the caches as a large KV cache's; both sides)"),
    OPT(report_unit, OPT_STR, "GB (default) | GiB | Gb | MB | MiB | Mb | KB | KiB | Kb: the rate's unit, per second"),
    OPT(report_precision, OPT_UINT, "digits after the point in the rate (default 2)"),
    OPT(nic_priority_matrix, OPT_STR, "rdma: a Mooncake NIC priority matrix (JSON file); without --device_name its "
                                      "NICs, in order, are the ones used"),
    OPT(auto_discovery, OPT_BOOL, "accepted for Mooncake's bench; ferry always discovers the NICs it may use"),
    OPT(init_mem, OPT_BOOL, "accepted for Mooncake's bench; ferry always fills its buffers (it verifies them)"),
    OPT(backend, OPT_STR, "classic (default; Mooncake's bench: classic | tent): ferry has one engine"),
    OPT(help, OPT_BOOL, "this text"),
    OPT(help_env, OPT_BOOL, "print the FERRY_* environment variables"),
    OPT(help_env_markdown, OPT_BOOL, "the same as a markdown table (the README's)"),
};
#define OPT_COUNT (sizeof opt_defs / sizeof opt_defs[0])

void usage(FILE *f)
{
    fprintf(f, "usage: ferry-bench --mode=target|initiator [--flag=value | --flag value]...\n\n");
    for (size_t i = 0; i < OPT_COUNT; i++)
        fprintf(f, "  --%-18s %s\n", opt_defs[i].name, opt_defs[i].doc);
    fprintf(f, "\nSizes take K/M/G suffixes (powers of 2).  Booleans: --x, --x=true|false|1|0, --nox.\n"
               "target:    prints 'ferry-bench target ready: segment HOST:PORT buffer 0x.. size N'\n"
               "           and serves until SIGINT/SIGTERM; then prints 'ferry-bench target cost: key=value...'\n"
               "           (CPU us per request of --block_size bytes while it served).\n"
               "initiator: --segment_id=HOST:PORT; exit 0 ok, 1 runtime error, 2 usage, 3 bad data.\n"
               "           Also prints its CPU us per request and batch latency p50/p99 (submit -> all done).\n");
}

/* Prints "ferry-bench: <message>", then for a ferry error rc != 0
 * ": <strerror>: <detail>", and exits with `code`. */
void fail(int code, int rc, const char *fmt, ...)
{
    va_list ap;
    const char *detail = rc ? ferry_last_error() : "";
    fputs("ferry-bench: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (rc)
        fprintf(stderr, ": %s", ferry_strerror(rc));
    if (detail && *detail)
        fprintf(stderr, ": %s", detail);
    fputs(code == EXIT_USAGE ? " (see --help)\n" : "\n", stderr);
    exit(code);
}

/* Flag names compare with '-' and '_' as the same character. */
static bool name_equal(const char *a, size_t alen, const char *b)
{
    if (strlen(b) != alen)
        return false;
    for (size_t i = 0; i < alen; i++) {
        char x = a[i] == '-' ? '_' : a[i], y = b[i] == '-' ? '_' : b[i];
        if (x != y)
            return false;
    }
    return true;
}

static const struct opt_def *find_opt(const char *name, size_t len)
{
    for (size_t i = 0; i < OPT_COUNT; i++)
        if (name_equal(name, len, opt_defs[i].name))
            return &opt_defs[i];
    return NULL;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0)
            return *out = true, 0;
        if (strcasecmp(s, no[i]) == 0)
            return *out = false, 0;
    }
    return -1;
}

/* Decimal, optionally with a K/M/G/T suffix (powers of 2), optionally + "B"/"iB". */
static int parse_size(const char *s, bool suffixes, uint64_t *out)
{
    char *end;
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    unsigned shift = 0;
    if (suffixes && *end) {
        const char *units = "KMGT", *u = strchr(units, *end & ~0x20);
        if (!u)
            return -1;
        shift = 10u * (unsigned)(u - units + 1);
        end++;
        if (strcmp(end, "B") == 0 || strcmp(end, "iB") == 0)
            end += strlen(end);
    }
    if (*end || (shift && v > (UINT64_MAX >> shift)))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

static int apply_opt(struct options *o, const struct opt_def *d, const char *value)
{
    void *field = (char *)o + d->offset;
    uint64_t u;
    switch (d->kind) {
    case OPT_STR:
        *(const char **)field = value;
        return 0;
    case OPT_BOOL:
        return parse_bool(value, (bool *)field);
    case OPT_INT:
        if (parse_size(value, false, &u) || u > INT32_MAX)
            return -1;
        *(int64_t *)field = (int64_t)u;
        return 0;
    case OPT_SIZE:
    case OPT_UINT:
        if (parse_size(value, d->kind == OPT_SIZE, &u))
            return -1;
        *(uint64_t *)field = u;
        return 0;
    }
    return -1;
}

/* Takes the value of the flag at argv[*i]: after '=', or the next argument.
 * A bare boolean only takes the next argument if it reads as a boolean. */
static const char *opt_value(const struct opt_def *d, const char *eq, int argc,
                             char **argv, int *i)
{
    bool ignored;
    if (eq)
        return eq + 1;
    if (d->kind == OPT_BOOL) {
        if (*i + 1 < argc && parse_bool(argv[*i + 1], &ignored) == 0)
            return argv[++*i];
        return "true";
    }
    if (*i + 1 >= argc)
        usage_error("flag --%s needs a value", d->name);
    return argv[++*i];
}

void parse_args(int argc, char **argv, struct options *o)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (arg[0] != '-' || arg[1] == '\0')
            usage_error("unexpected argument '%s'", arg);
        const char *name = arg + (arg[1] == '-' ? 2 : 1);
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const struct opt_def *d = find_opt(name, len);
        if (!d && !eq && len > 2 && strncmp(name, "no", 2) == 0) {
            d = find_opt(name + 2, len - 2);        /* gflags' --noflag */
            if (d && d->kind == OPT_BOOL) {
                *(bool *)((char *)o + d->offset) = false;
                continue;
            }
            d = NULL;
        }
        if (!d)
            usage_error("unknown flag '%s'", arg);
        const char *value = opt_value(d, eq, argc, argv, &i);
        if (apply_opt(o, d, value) != 0)
            usage_error("invalid value '%s' for --%s", value, d->name);
    }
}

void options_defaults(struct options *o)
{
    *o = (struct options){
        .mode = "initiator", .metadata_server = "P2PHANDSHAKE", .operation = "write", .protocol = "tcp",
        .block_size = 65536, .batch_size = 128, .buffer_size = 1ull << 30,
        .duration = 10, .threads = 1, .npu_id = -1, .verify = true, .huge_pages = true,
        .report_unit = "GB", .report_precision = 2, .init_mem = true, .backend = "classic",
    };
}

/* Location precedence: --location, then --use_vram (cuda:gpu_id), then
 * --npu_id (npu:N), else cpu.  The result lives in static storage. */
static void resolve_location(struct options *o)
{
    static char buf[32];
    if (o->location)
        return;
    if (o->use_vram)
        snprintf(buf, sizeof buf, "cuda:%" PRId64, o->gpu_id);
    else if (o->npu_id >= 0)
        snprintf(buf, sizeof buf, "npu:%" PRId64, o->npu_id);
    else
        snprintf(buf, sizeof buf, "cpu");
    o->location = buf;
}

/* Mooncake's report units: bytes (or bits) per unit. */
static void resolve_unit(struct options *o)
{
    static const struct {
        const char *name;
        double bytes;
        bool bits;
    } units[] = {{"GB", 1e9, false},  {"GiB", 1073741824.0, false}, {"Gb", 1e9 / 8, true},
                 {"MB", 1e6, false},  {"MiB", 1048576.0, false},    {"Mb", 1e6 / 8, true},
                 {"KB", 1e3, false},  {"KiB", 1024.0, false},       {"Kb", 1e3 / 8, true}};
    for (size_t i = 0; i < sizeof units / sizeof *units; i++) {
        if (strcmp(o->report_unit, units[i].name) == 0) {
            o->unit_bytes = units[i].bytes;
            o->unit_bits = units[i].bits;
            return;
        }
    }
    usage_error("--report_unit must be GB, GiB, Gb, MB, MiB, Mb, KB, KiB or Kb, not '%s'", o->report_unit);
}

/* The NICs of a Mooncake NIC priority matrix ({"location": [[preferred...],
 * [available...]], ...}), each once, in the order the file names them, as a
 * comma-separated device list. */
static const char *matrix_devices(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        usage_error("--nic_priority_matrix=%s: %s", path, strerror(errno));
    char text[65536];
    size_t n = fread(text, 1, sizeof text - 1, f);
    bool whole = feof(f);
    fclose(f);
    text[n] = '\0';
    if (!whole)
        usage_error("--nic_priority_matrix=%s: larger than %zu bytes", path, sizeof text - 1);
    cJSON *m = cJSON_Parse(text);
    if (!cJSON_IsObject(m))
        usage_error("--nic_priority_matrix=%s: not a JSON object of location -> [[preferred NICs], [others]]", path);
    static char list[4096];
    size_t used = 0;
    const cJSON *loc, *tier, *nic;
    cJSON_ArrayForEach(loc, m) {
        if (!cJSON_IsArray(loc))
            usage_error("--nic_priority_matrix=%s: \"%s\" is not a list of NIC lists", path, loc->string);
        cJSON_ArrayForEach(tier, loc) {
            if (!cJSON_IsArray(tier))
                usage_error("--nic_priority_matrix=%s: \"%s\" holds something other than a NIC list", path,
                            loc->string);
            cJSON_ArrayForEach(nic, tier) {
                const char *name = cJSON_GetStringValue(nic);
                if (!name || !*name || strlen(name) > 64 || strpbrk(name, ", "))
                    usage_error("--nic_priority_matrix=%s: \"%s\" names a NIC that is not a device name", path,
                                loc->string);
                size_t nl = strlen(name);
                bool seen = false;
                for (const char *p = list; !seen && (p = strstr(p, name)) != NULL; p += nl)
                    seen = (p == list || p[-1] == ',') && (p[nl] == ',' || p[nl] == '\0');
                if (seen)
                    continue;
                if (used + nl + 2 > sizeof list)
                    usage_error("--nic_priority_matrix=%s: too many NICs", path);
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", used ? "," : "", name);
            }
        }
    }
    cJSON_Delete(m);
    if (!used)
        usage_error("--nic_priority_matrix=%s names no NIC", path);
    return list;
}

void check_options(struct options *o)
{
    if (!o->mode || (strcmp(o->mode, "target") && strcmp(o->mode, "initiator")))
        usage_error("--mode must be target or initiator");
    if (strcmp(o->operation, "write") && strcmp(o->operation, "read"))
        usage_error("--operation must be write or read, not '%s'", o->operation);
    if (o->block_size == 0 || o->block_size % 8)
        usage_error("--block_size must be a positive multiple of 8");
    if (o->batch_size == 0 || o->batch_size > MAX_BATCH)
        usage_error("--batch_size must be 1..%u", MAX_BATCH);
    if (o->threads == 0 || o->threads > MAX_THREADS)
        usage_error("--threads must be 1..%u", MAX_THREADS);
    if (o->buffer_size == 0 || o->buffer_size > SIZE_MAX)
        usage_error("--buffer_size must be positive");
    if (strcmp(o->mode, "initiator") == 0 && !o->segment_id)
        usage_error("initiator needs --segment_id=HOST:PORT");
    if (strcmp(o->backend, "classic") && strcmp(o->backend, "tent"))
        usage_error("--backend must be classic or tent, not '%s'", o->backend);
    if (o->report_precision > 9)
        usage_error("--report_precision must be 0..9");
    resolve_unit(o);
    if (o->nic_priority_matrix) {
        const char *nics = matrix_devices(o->nic_priority_matrix);
        if (!o->device_name)
            o->device_name = nics;
    }
    resolve_location(o);
    if (o->pinned && strcmp(o->pinned, "alloc") && strcmp(o->pinned, "thp"))
        usage_error("--pinned must be alloc or thp, not '%s'", o->pinned);
    if (o->pinned && strcmp(o->location, "cpu") && strncmp(o->location, "cpu:", 4))
        usage_error("--pinned is for cpu buffers, not --location=%s", o->location);
    if (o->rotate && o->same_block)
        usage_error("--rotate and --same_block contradict each other");
}


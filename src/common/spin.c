/* SPDX-License-Identifier: Apache-2.0 */
/*
 * spin.c — the process's budget of looking threads (see spin.h).
 */
#include "spin.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_uint looking;
static atomic_uint_fast64_t refused;
static unsigned cap_value;
static pthread_once_t cap_once = PTHREAD_ONCE_INIT;

/* The number file dir/name starts with: 0, or -2 where it cannot be read. */
static int read_long(const char *dir, const char *name, long long *out)
{
    char path[PATH_MAX], text[64];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return -2;
    FILE *f = fopen(path, "re");
    if (!f)
        return -2;
    bool got = fgets(text, sizeof text, f) != NULL;
    fclose(f);
    if (!got)
        return -2;
    char *end;
    errno = 0;
    *out = strtoll(text, &end, 10);
    return errno || end == text ? -2 : 0;
}

/* CPUs from a quota and a period (µs), 0 for none. */
static long quota_cpus(long long quota, long long period)
{
    if (quota <= 0 || period <= 0)
        return 0;
    long long cpus = (quota + period - 1) / period;
    return cpus > LONG_MAX ? LONG_MAX : (long)cpus;
}

/* The cgroup path of the line of text whose controller list holds
 * `controller` ("" for v2's "0::" line), copied to out; false if none. */
static bool cgroup_path(const char *text, const char *controller, char *out, size_t max)
{
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        const char *c1 = strchr(line, ':'), *eol = strchr(line, '\n');
        const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c1 || !c2 || (eol && c2 > eol))
            continue;
        bool match = false;
        if (!*controller) {
            match = c2 == c1 + 1 && strncmp(line, "0:", 2) == 0;
        } else {
            size_t n = strlen(controller);
            for (const char *t = c1 + 1; t < c2;) {
                const char *comma = memchr(t, ',', (size_t)(c2 - t));
                const char *tend = comma ? comma : c2;
                if ((size_t)(tend - t) == n && strncmp(t, controller, n) == 0)
                    match = true;
                t = tend + 1;
            }
        }
        if (!match)
            continue;
        size_t len = eol ? (size_t)(eol - (c2 + 1)) : strlen(c2 + 1);
        if (len == 0 || len >= max || c2[1] != '/')
            return false;
        memcpy(out, c2 + 1, len);
        out[len] = 0;
        return true;
    }
    return false;
}

/* The lowest limit from dir (hierarchy root + the cgroup's path) up to the
 * hierarchy's root, the first floor bytes of dir; 0 for none. */
static long walk_up(char *dir, size_t floor, bool v2)
{
    long best = 0;
    for (;;) {
        long long quota = -1, period = 0;
        long cpus = 0;
        if (v2) {
            char path[PATH_MAX], text[64];
            FILE *f = snprintf(path, sizeof path, "%s/cpu.max", dir) < (int)sizeof path ? fopen(path, "re") : NULL;
            if (f) {
                if (fgets(text, sizeof text, f) && sscanf(text, "%lld %lld", &quota, &period) == 2)
                    cpus = quota_cpus(quota, period); /* "max PERIOD" does not scan: none */
                fclose(f);
            }
        } else if (read_long(dir, "cpu.cfs_quota_us", &quota) == 0 &&
                   read_long(dir, "cpu.cfs_period_us", &period) == 0) {
            cpus = quota_cpus(quota, period); /* quota -1: none */
        }
        if (cpus > 0 && (best == 0 || cpus < best))
            best = cpus;
        char *slash = strrchr(dir, '/');
        if (strlen(dir) <= floor || !slash || (size_t)(slash - dir) < floor)
            return best;
        *slash = 0;
    }
}

long cgroup_cpu_limit(const char *root, const char *cgroup_text)
{
    char rel[PATH_MAX], dir[PATH_MAX];
    long cpus = 0;
    /* v2 first; a hybrid host has a "0::" line too, with the cpu controller on v1 */
    if (cgroup_path(cgroup_text, "", rel, sizeof rel) &&
        snprintf(dir, sizeof dir, "%s%s", root, strcmp(rel, "/") ? rel : "") < (int)sizeof dir)
        cpus = walk_up(dir, strlen(root), true);
    if (!cpus && cgroup_path(cgroup_text, "cpu", rel, sizeof rel) &&
        snprintf(dir, sizeof dir, "%s/cpu%s", root, strcmp(rel, "/") ? rel : "") < (int)sizeof dir)
        cpus = walk_up(dir, strlen(root) + 4, false);
    return cpus;
}

long usable_cores(void)
{
    cpu_set_t set;
    long cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : sysconf(_SC_NPROCESSORS_ONLN);
    char text[4096] = "";
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (f) {
        size_t n = fread(text, 1, sizeof text - 1, f);
        text[n] = 0;
        fclose(f);
    }
    long limit = cgroup_cpu_limit("/sys/fs/cgroup", text);
    return limit > 0 && limit < cpus ? limit : cpus;
}

static void cap_init(void)
{
    long cpus = usable_cores();
    cap_value = cpus >= 4 ? (unsigned)(cpus / 2) : 1;
}

static unsigned cap(void)
{
    pthread_once(&cap_once, cap_init);
    return cap_value;
}

bool spin_claim(void)
{
    unsigned limit = cap(), now = atomic_load(&looking);
    do {
        if (now >= limit) {
            atomic_fetch_add(&refused, 1);
            return false;
        }
    } while (!atomic_compare_exchange_weak(&looking, &now, now + 1));
    return true;
}

void spin_release(void)
{
    atomic_fetch_sub(&looking, 1);
}

void spin_stats(struct spin_stats *out)
{
    out->cap = cap();
    out->looking = atomic_load(&looking);
    out->refused = atomic_load(&refused);
}

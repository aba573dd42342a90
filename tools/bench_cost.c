/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench_cost.c — ferry-bench's cost figures: process CPU time from
 * getrusage, a log-linear latency histogram (percentiles without keeping
 * every sample), and the target's serve meter.  No threads, no globals:
 * each structure is owned by the one thread that fills it (bench_cost.h).
 */
#include "bench_cost.h"

#include <string.h>
#include <sys/resource.h>

double cost_process_cpu(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

/* Bucket of ns: values below 2^LAT_SUB_BITS map one to one; above, the
 * power of two picks a row and the next LAT_SUB_BITS bits the column. */
static unsigned lat_bucket(uint64_t ns)
{
    const uint64_t sub = 1u << LAT_SUB_BITS;
    if (ns < sub)
        return (unsigned)ns;
    unsigned power = 63u - (unsigned)__builtin_clzll(ns);          /* >= LAT_SUB_BITS */
    unsigned row = power - LAT_SUB_BITS + 1;
    if (row >= LAT_POWERS)
        return (LAT_POWERS << LAT_SUB_BITS) - 1;
    unsigned col = (unsigned)((ns >> (power - LAT_SUB_BITS)) & (sub - 1));
    return (row << LAT_SUB_BITS) | col;
}

/* The largest ns that falls into bucket b. */
static uint64_t lat_bucket_top(unsigned b)
{
    const uint64_t sub = 1u << LAT_SUB_BITS;
    unsigned row = b >> LAT_SUB_BITS, col = b & (unsigned)(sub - 1);
    if (row == 0)
        return col;
    unsigned shift = row - 1;
    return (((sub | col) + 1) << shift) - 1;
}

void lat_hist_add(struct lat_hist *h, uint64_t ns)
{
    h->count[lat_bucket(ns)]++;
    h->total++;
}

void lat_hist_merge(struct lat_hist *into, const struct lat_hist *from)
{
    for (size_t i = 0; i < sizeof into->count / sizeof into->count[0]; i++)
        into->count[i] += from->count[i];
    into->total += from->total;
}

uint64_t lat_hist_quantile(const struct lat_hist *h, double q)
{
    if (h->total == 0)
        return 0;
    double want = q * (double)h->total;
    uint64_t seen = 0;
    for (unsigned b = 0; b < sizeof h->count / sizeof h->count[0]; b++) {
        seen += h->count[b];
        if (seen > 0 && (double)seen >= want)
            return lat_bucket_top(b);
    }
    return lat_bucket_top((LAT_POWERS << LAT_SUB_BITS) - 1);
}

void serve_meter_init(struct serve_meter *m, uint64_t bytes, double t)
{
    memset(m, 0, sizeof *m);
    m->last_bytes = bytes;
    m->prev_cpu = cost_process_cpu();
    m->prev_t = t;
}

void serve_meter_sample(struct serve_meter *m, uint64_t bytes, double t)
{
    double cpu = cost_process_cpu();
    if (bytes != m->last_bytes) {
        if (!m->started) {
            m->started = 1;
            m->first_cpu = m->prev_cpu, m->first_t = m->prev_t;
            m->first_bytes = m->last_bytes;
        }
        m->busy_cpu = cpu, m->busy_t = t, m->busy_bytes = bytes;
        m->last_bytes = bytes;
    }
    m->prev_cpu = cpu, m->prev_t = t;
}

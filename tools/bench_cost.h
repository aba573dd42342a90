/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench_cost.h — what ferry-bench's figures cost: process CPU time, batch
 * latency percentiles, and the target's CPU over the interval it served.
 *
 * Plain helpers with no threads of their own: a latency histogram belongs to
 * one worker thread until the main thread merges it after joining; a serve
 * meter belongs to the target's main loop.  Uses no ferry API.
 */
#ifndef FERRY_BENCH_COST_H
#define FERRY_BENCH_COST_H

#include <stdint.h>

/* CPU time (user + system) of the whole process so far, in seconds. */
double cost_process_cpu(void);

/* Log-linear histogram of batch latencies in ns: 64 buckets per power of
 * two, so a percentile is within 1.6% of the true value.  Zeroed = empty. */
#define LAT_SUB_BITS 6
#define LAT_POWERS 48
struct lat_hist {
    uint64_t total;
    uint64_t count[LAT_POWERS << LAT_SUB_BITS];
};

void lat_hist_add(struct lat_hist *h, uint64_t ns);
void lat_hist_merge(struct lat_hist *into, const struct lat_hist *from);
/* The smallest latency (ns, a bucket's upper edge) that at least fraction q
 * (0..1] of the samples do not exceed; 0 when the histogram is empty. */
uint64_t lat_hist_quantile(const struct lat_hist *h, double q);

/* The target's side: sampled from its main loop, it keeps the CPU time and
 * the served byte count at the first and the last sample where the served
 * bytes moved, so idle time before the first and after the last request
 * stays out of the per-request figure. */
struct serve_meter {
    uint64_t last_bytes;
    double first_cpu, first_t;       /* the sample before bytes first moved */
    double prev_cpu, prev_t;         /* the previous sample */
    double busy_cpu, busy_t;         /* the last sample where bytes moved */
    uint64_t first_bytes, busy_bytes;
    int started;                      /* bytes have moved at least once */
};

void serve_meter_init(struct serve_meter *m, uint64_t bytes, double t);
void serve_meter_sample(struct serve_meter *m, uint64_t bytes, double t);

#endif

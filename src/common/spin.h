/* SPDX-License-Identifier: Apache-2.0 */
/*
 * spin.h — the process's budget of threads that look instead of sleeping.
 *
 * A thread about to sleep for something that usually comes soon (a tcp
 * target's next frame, a tcp receiver's next response, a waiter's batch
 * end) may look for it for a while
 * first, yielding the CPU between looks: no futex or interrupt wake-up of an
 * idle CPU when it comes.  At most half the usable CPUs (at least one) look
 * at once in the process, whoever looks: a look over the budget is refused
 * at once and its thread sleeps as without looks, so that peers or callers
 * that keep many connections or waiters just busy enough cannot hold every
 * core in looks.
 */
#ifndef FERRY_SPIN_H
#define FERRY_SPIN_H

#include <stdbool.h>
#include <stdint.h>

/* The CPUs this process may run on: its affinity mask (the online CPUs if
 * that cannot be read), or fewer where its cgroup's CPU bandwidth limit
 * allows fewer (a container given 2 CPUs of a 64-core host: 2). */
long usable_cores(void);

/* The CPUs a cgroup CPU bandwidth limit allows the process, quota / period
 * rounded up, the lowest along its cgroup's path up to the root (a limit
 * set on a parent holds for its children); 0 where none is set or none can
 * be read.  cgroup v2 (`cpu.max`: "max PERIOD" or "QUOTA PERIOD") for the
 * "0::PATH" line of cgroup_text, else v1 (`cpu/PATH/cpu.cfs_quota_us` and
 * `cpu.cfs_period_us`, quota -1: none) for the line naming the cpu
 * controller.  root: the cgroup file system ("/sys/fs/cgroup"); cgroup_text:
 * what /proc/self/cgroup holds (tests give both). */
long cgroup_cpu_limit(const char *root, const char *cgroup_text);

/* Takes one look from the budget: true (the caller looks, then calls
 * spin_release) or false (over the budget, counted: the caller sleeps). */
bool spin_claim(void);
void spin_release(void);

/* The budget, the threads looking now, and the looks refused since the
 * start (tests and benchmarks). */
struct spin_stats {
    unsigned cap, looking;
    uint64_t refused;
};
void spin_stats(struct spin_stats *out);

#endif

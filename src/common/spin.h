/* SPDX-License-Identifier: Apache-2.0 */
/*
 * spin.h — the process's budget of threads that look instead of sleeping.
 *
 * A thread about to sleep for something that usually comes soon (a tcp
 * target's next frame, a waiter's batch end) may look for it for a while
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

/* The CPUs this process may run on (its affinity mask; the online CPUs if
 * that cannot be read). */
long usable_cores(void);

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

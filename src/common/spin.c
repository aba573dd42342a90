/* SPDX-License-Identifier: Apache-2.0 */
/*
 * spin.c — the process's budget of looking threads (see spin.h).
 */
#include "spin.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <unistd.h>

static atomic_uint looking;
static atomic_uint_fast64_t refused;
static unsigned cap_value;
static pthread_once_t cap_once = PTHREAD_ONCE_INIT;

long usable_cores(void)
{
    cpu_set_t set;
    return sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : sysconf(_SC_NPROCESSORS_ONLN);
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

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * timespec.h — absolute deadlines for pthread_cond_timedwait, written once:
 * a clock's now plus a number of milliseconds, normalised.  No state.
 */
#ifndef FERRY_TIMESPEC_H
#define FERRY_TIMESPEC_H

#include <time.h>

/* clock's current time plus ms milliseconds (ms >= 0).  Use the clock the
 * condition variable waits on: CLOCK_REALTIME unless it was created with
 * pthread_condattr_setclock. */
static inline struct timespec timespec_in_ms(clockid_t clock, long ms)
{
    struct timespec t;
    clock_gettime(clock, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

#endif

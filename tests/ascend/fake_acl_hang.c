/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fake_acl_hang.c — a hung NPU for the fake ACL runtime: a copy that never
 * completes (a dead HCCS link, a wedged core, a driver fault) until the test
 * releases it, and the two calls that deal with one, as CANN documents them:
 *
 *   aclrtSynchronizeStreamWithTimeout(stream, timeout): -1 waits for ever,
 *   > 0 milliseconds, anything else ACL_ERROR_INVALID_PARAM; a stream not
 *   done in time returns ACL_ERROR_RT_STREAM_SYNC_TIMEOUT (507046) and goes
 *   on.  FAKEACL_TIMED_SYNC=unsupported: ACL_ERROR_RT_FEATURE_NOT_SUPPORT.
 *
 *   aclrtStreamAbort(stream): stops the running copy and drops the queued
 *   ones (none of them runs afterwards); a wait on the stream in progress
 *   returns ACL_ERROR_RT_STREAM_ABORT.  Atlas A2/A3 only: with
 *   FAKEACL_ABORT=unsupported (or fakeacl_abort_supported(0)) it returns
 *   ACL_ERROR_RT_FEATURE_NOT_SUPPORT and the stream stays as it was.
 *
 * A hung copy keeps its stream's queue, so aclrtDestroyStream refuses the
 * stream and freeing memory the copy touches aborts (fake_acl.c), as on
 * hardware.  Threads: the hung copy blocks its stream's worker; the calls
 * run on the caller's thread.
 */
#include "fake_acl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void *aclrtStream;

atomic_ullong fake_hung, fake_aborted;

static pthread_mutex_t hang_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hang_cond = PTHREAD_COND_INITIALIZER;
static uint64_t hang_at;          /* the copy number that hangs, 0: none (hang_lock) */
static uint64_t hang_gen;         /* fakeacl_hang calls (hang_lock) */
static uint64_t unhung_gen;       /* hangs of generations up to this one are released (hang_lock) */
static atomic_int abort_refused = -1; /* -1: as FAKEACL_ABORT says */

/* Copies hung and not aborted (hang_lock): fakeacl_unhang waits until
 * each has run, so that the test may free its memory afterwards. */
#define HELD_MAX 16
static struct held {
    struct fake_stream *s;
} held[HELD_MAX];
static int nheld;

int fake_hang_here(struct fake_stream *s, uint64_t n)
{
    pthread_mutex_lock(&hang_lock);
    if (hang_at == 0 || n != hang_at) {
        pthread_mutex_unlock(&hang_lock);
        return 0;
    }
    hang_at = 0;
    uint64_t gen = hang_gen;
    atomic_fetch_add(&fake_hung, 1);
    if (nheld < HELD_MAX)
        held[nheld++] = (struct held){s};
    while (unhung_gen < gen && !atomic_load(&s->abort_hung))
        pthread_cond_wait(&hang_cond, &hang_lock);
    int aborted = unhung_gen < gen;
    for (int i = 0; aborted && i < nheld; i++) /* its stream may be destroyed from now on */
        if (held[i].s == s) {
            held[i] = held[--nheld];
            break;
        }
    pthread_mutex_unlock(&hang_lock);
    return aborted;
}

void fake_hang_setup(uint64_t n)
{
    pthread_mutex_lock(&hang_lock);
    if (n) {
        hang_gen++;
        hang_at = n;
    }
    pthread_mutex_unlock(&hang_lock);
}

/* The after-th copy executed from now on (1: the next) hangs until
 * fakeacl_unhang() or an abort of its stream. */
EXPORT void fakeacl_hang(unsigned long long after)
{
    pthread_mutex_lock(&hang_lock);
    hang_gen++;
    hang_at = atomic_load(&fake_copies) + after;
    pthread_mutex_unlock(&hang_lock);
}

/* Every hung copy goes on, and a hang not reached yet is off; returns once
 * the copies that were hung, and those queued behind them, have run. */
EXPORT void fakeacl_unhang(void)
{
    struct held was[HELD_MAX];
    pthread_mutex_lock(&hang_lock);
    hang_at = 0;
    unhung_gen = hang_gen;
    int n = nheld;
    memcpy(was, held, sizeof was);
    nheld = 0;
    pthread_cond_broadcast(&hang_cond);
    pthread_mutex_unlock(&hang_lock);
    for (int i = 0; i < n; i++) { /* the device is back: what was queued behind the hung copy runs too */
        struct fake_stream *st = was[i].s;
        pthread_mutex_lock(&st->lock);
        st->released = st->queued;
        pthread_cond_broadcast(&st->cond);
        while (st->done < st->queued)
            pthread_cond_wait(&st->cond, &st->lock);
        pthread_mutex_unlock(&st->lock);
    }
}

/* 0: aclrtStreamAbort refuses from now on, as on devices without it; 1: it works. */
EXPORT void fakeacl_abort_supported(int on)
{
    atomic_store(&abort_refused, !on);
}

EXPORT aclError aclrtSynchronizeStreamWithTimeout(aclrtStream stream, int32_t timeout)
{
    ENTER(1);
    struct fake_stream *s;
    int busy;
    aclError r = fake_check_stream(__func__, stream, &s);
    if (r)
        return r;
    if (fake.no_timed_sync)
        return fake_fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "aclrtSynchronizeStreamWithTimeout: not supported");
    if (timeout == -1)
        return fake_drain(s, 1, &busy);
    if (timeout <= 0)
        return fake_fail(ACL_ERROR_INVALID_PARAM, "aclrtSynchronizeStreamWithTimeout: timeout %d (-1 or > 0 ms)",
                         (int)timeout);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout / 1000;
    until.tv_nsec += (long)(timeout % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->lock);
    s->released = s->queued;
    pthread_cond_broadcast(&s->cond);
    uint64_t aborts = s->aborts;
    int timed_out = 0;
    while (s->done < s->queued && s->aborts == aborts && !timed_out)
        timed_out = pthread_cond_timedwait(&s->cond, &s->lock, &until) == ETIMEDOUT;
    int aborted = s->aborts != aborts;
    busy = s->done < s->queued;
    pthread_mutex_unlock(&s->lock);
    if (aborted)
        return fake_fail(ACL_ERROR_RT_STREAM_ABORT, "the stream was aborted while it was waited for");
    if (busy)
        return fake_fail(ACL_ERROR_RT_STREAM_SYNC_TIMEOUT, "aclrtSynchronizeStreamWithTimeout: stream not done "
                         "after %d ms", (int)timeout);
    return fake_drain(s, 0, &busy); /* done: the failure not yet reported, once */
}

#ifndef FAKEACL_OLD
/* CANN 8.x, Atlas A2/A3: the "old" runtime lacks it (ferry then abandons a hung stream). */
EXPORT aclError aclrtStreamAbort(aclrtStream stream)
{
    ENTER(1);
    struct fake_stream *s;
    aclError r = fake_check_stream(__func__, stream, &s);
    if (r)
        return r;
    int refused = atomic_load(&abort_refused);
    if (refused < 0 ? fake.no_abort : refused)
        return fake_fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "aclrtStreamAbort: not supported on this device");
    pthread_mutex_lock(&s->lock);
    s->aborting = 1;
    pthread_mutex_unlock(&s->lock);
    /* a copy hung on this stream gives up (under hang_lock: no lost wake-up) */
    pthread_mutex_lock(&hang_lock);
    atomic_store(&s->abort_hung, 1);
    pthread_cond_broadcast(&hang_cond);
    pthread_mutex_unlock(&hang_lock);
    pthread_mutex_lock(&s->lock);
    while (s->running)
        pthread_cond_wait(&s->cond, &s->lock);
    for (struct task *t = s->head, *next; t; t = next) {
        next = t->next;
        free(t);
    }
    s->head = s->tail = NULL;
    s->done = s->released = s->queued;
    s->error = ACL_SUCCESS;
    s->aborts++;
    s->aborting = 0;
    atomic_store(&s->abort_hung, 0);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    atomic_fetch_add(&fake_aborted, 1);
    return ACL_SUCCESS;
}
#endif

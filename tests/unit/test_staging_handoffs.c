/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_staging_handoffs.c — two hand-offs a staging pool can skip:
 * FERRY_STAGING_INLINE_LAST (the worker, retiring a round's last gather
 * with nothing else to retire or issue, lets the transport write that
 * frame on it: handed over no more, no bytes after it; never while another
 * round's copies wait behind it) and FERRY_STAGING_SCATTER_RETIRE_US (the
 * transport thread that brought a READ's payload while the worker slept
 * retires its scatter and ends the READ itself; a scatter that fails on the
 * device is left to the worker and fails its frame alone); both off by
 * default; bad values fail pool creation.  On the strict sim device with
 * copy_async wrapped to finish its copies before it returns, and the
 * pool's view of them (query, sync) held behind a gate where a case needs
 * several rounds in flight at once (deterministic; no timed assertion).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <pthread.h>
#include <time.h>

#include "device/device.h"
#include "err.h"
#include "net.h"
#include "staging/staging.h"

#define BLOCK 4096u
#define PIECES 16u
#define NFRAMES 4u

struct frame_slot {
    struct xfer_frame f;
    struct xfer_piece pieces[PIECES];
    int err;
    bool ended;
    pthread_t ended_by;                /* the thread that ended the engine's frame */
    bool sent;
    bool handed_over;                  /* what the "transport" was told */
    uint64_t more_bytes;
    struct xfer_frame *wire;           /* READ: the wire frame the "receiver" completes */
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned ended, sent;
    int bad_bytes;
    bool gate_open;                    /* the pool may see its copies done */
} t = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, true};

static const struct ferry_device_ops *sim;
static struct ferry_device_ops synced; /* sim, copies done when copy_async returns */
static struct frame_slot slot[NFRAMES];

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 7 + 3);
}

/* Enqueues and waits: the copies are done (or failed, the stream's error
 * kept for its next query) before the pool looks at them. */
static int synced_copy_async(ferry_stream *s, enum ferry_copy_dir dir, const struct ferry_copy *c, size_t n)
{
    int rc = sim->copy_async(s, dir, c, n);
    if (!rc)
        (void)sim->stream_sync(s);
    return rc;
}

static bool gate_open(void)
{
    pthread_mutex_lock(&t.lock);
    bool open = t.gate_open;
    pthread_mutex_unlock(&t.lock);
    return open;
}

static void gate_set(bool open)
{
    pthread_mutex_lock(&t.lock);
    t.gate_open = open;
    pthread_cond_broadcast(&t.cond);
    pthread_mutex_unlock(&t.lock);
}

/* Busy while the gate is closed, whatever the device says. */
static int gated_query(ferry_stream *s)
{
    return gate_open() ? sim->stream_query(s) : FERRY_EBUSY;
}

static int gated_sync(ferry_stream *s)
{
    pthread_mutex_lock(&t.lock);
    while (!t.gate_open)
        pthread_cond_wait(&t.cond, &t.lock);
    pthread_mutex_unlock(&t.lock);
    return sim->stream_sync(s);
}

static struct frame_slot *slot_of(const struct xfer_frame *w)
{
    for (unsigned f = 0; f < NFRAMES; f++)
        if (w->pieces[0].remote == slot[f].pieces[0].remote)
            return &slot[f];
    return NULL;
}

static void frame_ended(struct xfer_frame *f, int err, uint64_t refused, const char *msg)
{
    (void)msg;
    struct frame_slot *s = f->owner;
    pthread_mutex_lock(&t.lock);
    s->err = err ? err : refused ? FERRY_EIO : 0;
    s->ended = true;
    s->ended_by = pthread_self();
    t.ended++;
    pthread_cond_broadcast(&t.cond);
    pthread_mutex_unlock(&t.lock);
}

/* The "wire": a WRITE's bytes are checked and it ends at once; a READ is
 * kept for the receiver thread to complete. */
static void wire_send(void *ctx, struct xfer_frame *w)
{
    (void)ctx;
    struct frame_slot *s = slot_of(w);
    int bad = 0;
    if (w->opcode == XFER_WRITE)
        for (uint32_t i = 0; i < w->npieces; i++)
            for (size_t k = 0; k < BLOCK; k++)
                bad += ((unsigned char *)w->pieces[i].local)[k] != pattern(w->pieces[i].remote + k);
    pthread_mutex_lock(&t.lock);
    t.bad_bytes += bad;
    if (s) {
        s->sent = true;
        s->handed_over = w->handed_over;
        s->more_bytes = w->more_bytes;
        s->wire = w;
    }
    t.sent++;
    pthread_cond_broadcast(&t.cond);
    pthread_mutex_unlock(&t.lock);
    if (w->opcode == XFER_WRITE)
        w->complete(w, 0, 0, "");
}

static void wait_until_ended(unsigned n)
{
    pthread_mutex_lock(&t.lock);
    while (t.ended < n)
        pthread_cond_wait(&t.cond, &t.lock);
    pthread_mutex_unlock(&t.lock);
}

/* Frames [from, to) of `dev` (frame `freed` at device memory freed before:
 * its copies fail) linked as one submit, each saying how many bytes follow
 * it in that submit. */
static struct xfer_frame *frames(int op, char *dev, char *gone, unsigned from, unsigned to, unsigned freed)
{
    uint64_t deadline = now_ns() + 120000000000ull;
    assert_true(to <= NFRAMES);
    if (to > NFRAMES) /* (unreached: says so to GCC -O3's bounds check) */
        to = NFRAMES;
    for (unsigned f = from; f < to; f++) {
        struct frame_slot *s = &slot[f];
        memset(s, 0, sizeof *s);
        for (uint32_t i = 0; i < PIECES; i++) {
            uint64_t off = ((uint64_t)f * PIECES + i) * BLOCK;
            char *local = f == freed ? gone + (size_t)i * BLOCK : dev + off;
            s->pieces[i] = (struct xfer_piece){local, off, BLOCK, i};
        }
        s->f = (struct xfer_frame){.opcode = op, .npieces = PIECES, .pieces = s->pieces, .bytes = PIECES * BLOCK,
                                   .deadline_ns = deadline, .complete = frame_ended, .owner = s,
                                   .next = f + 1 < to ? &slot[f + 1].f : NULL,
                                   .more_bytes = (uint64_t)(to - 1 - f) * PIECES * BLOCK};
    }
    return &slot[from].f;
}

struct rig {
    char *host, *dev, *gone;
    size_t span;
    struct staging_pool *pool;
};

/* Device memory for NFRAMES frames (filled with the pattern), a freed
 * range, and a pool of NFRAMES chunks with the knobs given (NULL: unset),
 * whose worker sleeps as soon as it is idle, through device ops `ops`. */
static void rig_up(struct rig *r, const struct ferry_device_ops *ops, const char *inline_last,
                   const char *scatter_us)
{
    r->span = (size_t)NFRAMES * PIECES * BLOCK;
    r->host = malloc(r->span);
    assert_non_null(r->host);
    for (size_t k = 0; k < r->span; k++)
        r->host[k] = (char)pattern(k);
    assert_int_equal(sim->mem_alloc(0, r->span, (void **)&r->dev), 0);
    assert_int_equal(sim->mem_alloc(0, PIECES * BLOCK, (void **)&r->gone), 0);
    sim->mem_free(0, r->gone);
    struct ferry_copy fill = {r->dev, r->host, r->span};
    assert_int_equal(ferry_device_copy_sync(sim, 0, FERRY_COPY_H2D, &fill, 1), 0);
    t.ended = t.sent = 0;
    t.bad_bytes = 0;
    if (inline_last)
        setenv("FERRY_STAGING_INLINE_LAST", inline_last, 1);
    if (scatter_us)
        setenv("FERRY_STAGING_SCATTER_RETIRE_US", scatter_us, 1);
    setenv("FERRY_STAGING_SPIN_US", "0", 1);
    setenv("FERRY_STAGING_GROUP", "2", 1);
    setenv("FERRY_STAGING_GROUP_FIRST", "1", 1);
    void *base;
    size_t len;
    int rc = staging_pool_create(ops, 0, 1u << 20, NFRAMES, wire_send, NULL, &r->pool, &base, &len);
    unsetenv("FERRY_STAGING_INLINE_LAST");
    unsetenv("FERRY_STAGING_SCATTER_RETIRE_US");
    unsetenv("FERRY_STAGING_SPIN_US");
    unsetenv("FERRY_STAGING_GROUP");
    unsetenv("FERRY_STAGING_GROUP_FIRST");
    assert_int_equal(rc, 0);
}

static void wait_worker_asleep(struct staging_pool *pool)
{
    while (!staging_pool_worker_asleep(pool)) /* it sleeps once it has polled for 0 us */
        nanosleep(&(struct timespec){0, 200000}, NULL);
}

static void rig_down(struct rig *r)
{
    staging_pool_destroy(r->pool);
    sim->mem_free(0, r->dev);
    free(r->host);
    gate_set(true);
}

/* Gathers (WRITE) the frames as the submits given by `cuts` (frame indices
 * where a new submit starts, ending with NFRAMES), all of them issued
 * before the pool may see any copy done. */
static void gather(const char *inline_last, const unsigned *cuts)
{
    static struct ferry_device_ops gated;
    gated = synced;
    gated.stream_query = gated_query;
    gated.stream_sync = gated_sync;
    struct rig r;
    rig_up(&r, &gated, inline_last, NULL);
    wait_worker_asleep(r.pool);
    gate_set(false);
    for (unsigned from = 0; from < NFRAMES; cuts++) {
        staging_submit_list(r.pool, frames(XFER_WRITE, r.dev, r.gone, from, *cuts, NFRAMES));
        from = *cuts;
    }
    gate_set(true);
    wait_until_ended(NFRAMES);
    rig_down(&r);
    assert_int_equal(t.bad_bytes, 0);
    for (unsigned f = 0; f < NFRAMES; f++) {
        assert_true(slot[f].sent);
        assert_int_equal(slot[f].err, 0);
    }
}

/* One submit: its last frame reaches the transport not handed over, with
 * no bytes after it (tcp may write it on the worker); the others as
 * before. */
static void inline_last_frame(void **state)
{
    (void)state;
    static const unsigned one[] = {NFRAMES};
    gather("1", one);
    for (unsigned f = 0; f + 1 < NFRAMES; f++) {
        assert_true(slot[f].handed_over);
        assert_int_equal(slot[f].more_bytes, (uint64_t)(NFRAMES - 1 - f) * PIECES * BLOCK);
    }
    assert_false(slot[NFRAMES - 1].handed_over);
    assert_int_equal(slot[NFRAMES - 1].more_bytes, 0);
}

/* Two submits in flight at once: the first one's last frame is retired
 * while the second's copies wait behind it, so it is handed over (the
 * worker must not spend a socket copy while copies wait); the second's
 * last is not. */
static void inline_last_not_while_more(void **state)
{
    (void)state;
    static const unsigned two[] = {2, NFRAMES};
    gather("1", two);
    assert_true(slot[0].handed_over);
    assert_true(slot[1].handed_over);
    assert_true(slot[2].handed_over);
    assert_false(slot[3].handed_over);
}

/* Off (the default): every staged WRITE is handed over. */
static void inline_last_off(void **state)
{
    (void)state;
    static const unsigned one[] = {NFRAMES};
    gather(NULL, one);
    for (unsigned f = 0; f < NFRAMES; f++)
        assert_true(slot[f].handed_over);
}

/* The "receiver": completes each READ's wire frame (its payload written
 * into the chunk first) once the pool's worker sleeps, as a tcp receiver
 * thread ends a READ whose payload arrived. */
static void *receiver_main(void *arg)
{
    struct staging_pool *pool = arg;
    for (unsigned f = 0; f < NFRAMES; f++) {
        pthread_mutex_lock(&t.lock);
        while (!slot[f].wire)
            pthread_cond_wait(&t.cond, &t.lock);
        struct xfer_frame *w = slot[f].wire;
        pthread_mutex_unlock(&t.lock);
        for (uint32_t i = 0; i < w->npieces; i++)
            for (size_t k = 0; k < BLOCK; k++)
                ((unsigned char *)w->pieces[i].local)[k] = pattern(w->pieces[i].remote + k + 1);
        /* a wake-up signalled before (the submit's, the last frame's
         * issue) may still be on its way: let it arrive, then wait for the
         * worker to sleep again */
        wait_worker_asleep(pool);
        nanosleep(&(struct timespec){0, 5000000}, NULL);
        wait_worker_asleep(pool);
        w->complete(w, 0, 0, "");
    }
    return NULL;
}

/* READs of NFRAMES frames (frame `freed` into freed device memory) through
 * a pool with FERRY_STAGING_SCATTER_RETIRE_US=scatter_us; returns the
 * receiver thread's id.  Each frame's payload is the pattern shifted by
 * one, and the device holds it afterwards (but the freed frame's). */
static pthread_t scatter(const char *scatter_us, unsigned freed)
{
    struct rig r;
    rig_up(&r, &synced, NULL, scatter_us);
    struct xfer_frame *list = frames(XFER_READ, r.dev, r.gone, 0, NFRAMES, freed);
    pthread_t rx;
    assert_int_equal(pthread_create(&rx, NULL, receiver_main, r.pool), 0);
    staging_submit_list(r.pool, list);
    wait_until_ended(NFRAMES);
    assert_int_equal(pthread_join(rx, NULL), 0);
    char *back = malloc(r.span);
    assert_non_null(back);
    struct ferry_copy get = {back, r.dev, r.span};
    assert_int_equal(ferry_device_copy_sync(sim, 0, FERRY_COPY_D2H, &get, 1), 0);
    size_t bad = 0;
    for (size_t k = 0; k < r.span; k++)
        bad += k / (PIECES * BLOCK) != freed && (unsigned char)back[k] != pattern(k + 1);
    free(back);
    rig_down(&r);
    assert_int_equal(bad, 0);
    return rx;
}

/* With the knob every READ ends on the thread that brought its payload. */
static void scatter_retired_by_receiver(void **state)
{
    (void)state;
    pthread_t rx = scatter("1000", NFRAMES);
    for (unsigned f = 0; f < NFRAMES; f++) {
        assert_int_equal(slot[f].err, 0);
        assert_true(pthread_equal(slot[f].ended_by, rx));
    }
}

/* Off (the default): the worker ends them. */
static void scatter_off_the_worker_ends_it(void **state)
{
    (void)state;
    pthread_t rx = scatter(NULL, NFRAMES);
    for (unsigned f = 0; f < NFRAMES; f++) {
        assert_int_equal(slot[f].err, 0);
        assert_false(pthread_equal(slot[f].ended_by, rx));
    }
}

/* A scatter that fails on the device is left to the worker and fails its
 * own frame; the others end on the receiver as before. */
static void scatter_failed_fails_alone(void **state)
{
    (void)state;
    pthread_t rx = scatter("1000", 1);
    assert_int_not_equal(slot[1].err, 0);
    assert_false(pthread_equal(slot[1].ended_by, rx));
    for (unsigned f = 0; f < NFRAMES; f++) {
        if (f == 1)
            continue;
        assert_int_equal(slot[f].err, 0);
        assert_true(pthread_equal(slot[f].ended_by, rx));
    }
}

static void knob_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *name, *value;
    } bad[] = {{"FERRY_STAGING_INLINE_LAST", "2"},       {"FERRY_STAGING_INLINE_LAST", "yes"},
               {"FERRY_STAGING_SCATTER_RETIRE_US", "1001"}, {"FERRY_STAGING_SCATTER_RETIRE_US", "-1"},
               {"FERRY_STAGING_SCATTER_RETIRE_US", "5x"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct staging_pool *pool = NULL;
        void *base;
        size_t len;
        setenv(bad[i].name, bad[i].value, 1);
        int rc = staging_pool_create(sim, 0, 1u << 20, 2, wire_send, NULL, &pool, &base, &len);
        unsetenv(bad[i].name);
        if (rc != FERRY_EINVAL)
            fail_msg("%s=%s: %d", bad[i].name, bad[i].value, rc);
        assert_null(pool);
        assert_non_null(strstr(ferry_last_error(), bad[i].name));
        assert_non_null(strstr(ferry_last_error(), bad[i].value));
    }
}

int main(void)
{
    sim = ferry_device_find("sim");
    if (!sim || sim->init()) {
        printf("SKIPPED: no sim device: %s\n", ferry_last_error());
        return 77;
    }
    synced = *sim;
    synced.copy_async = synced_copy_async;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(inline_last_frame),
        cmocka_unit_test(inline_last_not_while_more),
        cmocka_unit_test(inline_last_off),
        cmocka_unit_test(scatter_retired_by_receiver),
        cmocka_unit_test(scatter_off_the_worker_ends_it),
        cmocka_unit_test(scatter_failed_fails_alone),
        cmocka_unit_test(knob_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

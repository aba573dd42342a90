/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_staging_issuer.c — FERRY_STAGING_ISSUER_RETIRE_US: a thread that
 * issues gathers while the pool's worker sleeps polls the first group's
 * copies itself and puts its frame on the wire (on that thread), so the
 * first frame does not wait for the worker's wake-up; off (0, the default)
 * the worker does; a first group whose copies fail on the device is left to
 * the worker and fails its frame alone; with
 * FERRY_STAGING_ISSUER_RETIRE_GROUPS that thread retires that many groups
 * one after another (a group that fails, and all after it, left to the
 * worker); bad values fail pool creation.
 * On the strict sim device with copy_async wrapped to finish its copies
 * before it returns, so they are done when the submitting thread first
 * looks (deterministic); each case waits (no deadline to assert) until the
 * worker sleeps before it submits.
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
#include "testutil.h"
#include "timespec.h"

#define BLOCK 4096u
#define PIECES 16u
#define NFRAMES 4u

struct frame_slot {
    struct xfer_frame f;
    struct xfer_piece pieces[PIECES];
    int err;
    pthread_t sent_by;                 /* the thread that put it on the "wire" */
    bool sent;
    bool handed_over;                  /* what the "transport" was told: not to write it inline */
    uint64_t more_bytes;
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned ended;
    int bad_bytes;
} t = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};

static const struct ferry_device_ops *sim;
static const char *retire_groups;      /* FERRY_STAGING_ISSUER_RETIRE_GROUPS for run_with, or NULL: unset */
static struct ferry_device_ops synced; /* sim, copies done when copy_async returns */
static struct frame_slot slot[NFRAMES];

/* Enqueues and waits: the copies are done (or failed, the stream's error
 * kept for its next query) before the pool looks at them. */
static int synced_copy_async(ferry_stream *s, enum ferry_copy_dir dir, const struct ferry_copy *c, size_t n)
{
    int rc = sim->copy_async(s, dir, c, n);
    if (!rc)
        (void)sim->stream_sync(s);
    return rc;
}

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 7 + 3);
}

static void frame_ended(struct xfer_frame *f, int err, uint64_t refused, const char *msg)
{
    (void)msg;
    struct frame_slot *s = f->owner;
    pthread_mutex_lock(&t.lock);
    s->err = err ? err : refused ? FERRY_EIO : 0;
    t.ended++;
    pthread_cond_broadcast(&t.cond);
    pthread_mutex_unlock(&t.lock);
}

/* The "wire": records who sent the frame, checks its bytes, ends it. */
static void wire_send(void *ctx, struct xfer_frame *w)
{
    (void)ctx;
    struct frame_slot *s = NULL;
    for (unsigned f = 0; f < NFRAMES; f++)
        if (w->pieces[0].remote == slot[f].pieces[0].remote)
            s = &slot[f];
    int bad = 0;
    for (uint32_t i = 0; i < w->npieces; i++)
        for (size_t k = 0; k < BLOCK; k++)
            bad += ((unsigned char *)w->pieces[i].local)[k] != pattern(w->pieces[i].remote + k);
    pthread_mutex_lock(&t.lock);
    t.bad_bytes += bad;
    if (s) {
        s->sent_by = pthread_self();
        s->sent = true;
        s->handed_over = w->handed_over;
        s->more_bytes = w->more_bytes;
    }
    pthread_mutex_unlock(&t.lock);
    w->complete(w, 0, 0, "");
}

/* Gathers NFRAMES frames (frame `freed` from device memory freed before:
 * its copies fail on the device; NFRAMES: none) through a pool with
 * FERRY_STAGING_ISSUER_RETIRE_US=retire_us and
 * FERRY_STAGING_INLINE_FIRST=inline_first, submitted as one list (each
 * frame saying how many bytes follow it, as the engine's do) once its
 * worker sleeps. */
static void run_with(const char *retire_us, const char *inline_first, unsigned freed)
{
    const size_t span = (size_t)NFRAMES * PIECES * BLOCK;
    char *dev, *gone;
    char *host = malloc(span);
    assert_non_null(host);
    for (size_t k = 0; k < span; k++)
        host[k] = (char)pattern(k);
    assert_int_equal(test_device_span(sim, host, span, PIECES * BLOCK, &dev, &gone), 0);
    t.ended = 0;
    t.bad_bytes = 0;
    uint64_t deadline = now_ns() + 120000000000ull;
    for (unsigned f = 0; f < NFRAMES; f++) {
        struct frame_slot *s = &slot[f];
        memset(s, 0, sizeof *s);
        for (uint32_t i = 0; i < PIECES; i++) {
            uint64_t off = ((uint64_t)f * PIECES + i) * BLOCK;
            char *local = f == freed ? gone + (size_t)i * BLOCK : dev + off;
            s->pieces[i] = (struct xfer_piece){local, off, BLOCK, i};
        }
        s->f = (struct xfer_frame){.opcode = XFER_WRITE, .npieces = PIECES, .pieces = s->pieces,
                                   .bytes = PIECES * BLOCK, .deadline_ns = deadline, .complete = frame_ended,
                                   .owner = s, .next = f + 1 < NFRAMES ? &slot[f + 1].f : NULL,
                                   .more_bytes = (uint64_t)(NFRAMES - 1 - f) * PIECES * BLOCK};
    }
    setenv("FERRY_STAGING_ISSUER_RETIRE_US", retire_us, 1);
    setenv("FERRY_STAGING_SPIN_US", "0", 1);
    setenv("FERRY_STAGING_GROUP_FIRST", "1", 1);
    setenv("FERRY_STAGING_INLINE_FIRST", inline_first, 1);
    if (retire_groups)
        setenv("FERRY_STAGING_ISSUER_RETIRE_GROUPS", retire_groups, 1);
    struct staging_pool *pool;
    void *base;
    size_t len;
    int rc = staging_pool_create(&synced, 0, 1u << 20, NFRAMES, wire_send, NULL, &pool, &base, &len);
    unsetenv("FERRY_STAGING_ISSUER_RETIRE_US");
    unsetenv("FERRY_STAGING_SPIN_US");
    unsetenv("FERRY_STAGING_GROUP_FIRST");
    unsetenv("FERRY_STAGING_INLINE_FIRST");
    unsetenv("FERRY_STAGING_ISSUER_RETIRE_GROUPS");
    assert_int_equal(rc, 0);
    while (!staging_pool_worker_asleep(pool)) /* it sleeps once it has polled for 0 us */
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    staging_submit_list(pool, &slot[0].f);
    pthread_mutex_lock(&t.lock);
    while (t.ended < NFRAMES)
        pthread_cond_wait(&t.cond, &t.lock);
    pthread_mutex_unlock(&t.lock);
    staging_pool_destroy(pool);
    sim->mem_free(0, dev);
    free(host);
    assert_int_equal(t.bad_bytes, 0);
    for (unsigned f = 0; f < NFRAMES; f++)
        if (f != freed)
            assert_int_equal(slot[f].err, 0);
}

static void run(const char *retire_us, unsigned freed)
{
    run_with(retire_us, "0", freed);
}

static void issuer_sends_the_first_frame(void **state)
{
    (void)state;
    run("1000", NFRAMES);
    assert_true(slot[0].sent);
    assert_true(pthread_equal(slot[0].sent_by, pthread_self()));
    for (unsigned f = 1; f < NFRAMES; f++) /* the rest: the worker's */
        assert_false(slot[f].sent && pthread_equal(slot[f].sent_by, pthread_self()));
}

static void off_the_worker_sends_it(void **state)
{
    (void)state;
    run("0", NFRAMES);
    for (unsigned f = 0; f < NFRAMES; f++) {
        assert_true(slot[f].sent);
        assert_false(pthread_equal(slot[f].sent_by, pthread_self()));
    }
}

static void failed_first_group_fails_alone(void **state)
{
    (void)state;
    run("1000", 0);
    assert_int_equal(slot[0].err, FERRY_EIO);
    assert_false(slot[0].sent);
    for (unsigned f = 1; f < NFRAMES; f++)
        assert_true(slot[f].sent);
}

static bool sent_by_me(unsigned f)
{
    return slot[f].sent && pthread_equal(slot[f].sent_by, pthread_self());
}

/* FERRY_STAGING_ISSUER_RETIRE_GROUPS: the four frames go as three groups
 * (the first alone, FERRY_STAGING_GROUP_FIRST=1; then two, then one); the
 * submitting thread retires as many of them as the knob says, the worker
 * the rest. */
static void issuer_retires_groups(void **state)
{
    (void)state;
    static const struct {
        const char *groups;
        unsigned mine;                 /* frames the submitting thread sends: the first ones */
    } cases[] = {{"1", 1}, {"2", 3}, {"3", NFRAMES}, {"256", NFRAMES}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        retire_groups = cases[i].groups;
        run("1000", NFRAMES);
        retire_groups = NULL;
        for (unsigned f = 0; f < NFRAMES; f++) {
            assert_true(slot[f].sent);
            if (sent_by_me(f) != (f < cases[i].mine))
                fail_msg("FERRY_STAGING_ISSUER_RETIRE_GROUPS=%s: frame %u sent by the %s", cases[i].groups, f,
                         sent_by_me(f) ? "submitting thread" : "worker");
        }
    }
}

/* A later group whose copies fail is left to the worker (which fails its
 * bad frame alone), and so is every group after it. */
static void issuer_groups_failed_later_group(void **state)
{
    (void)state;
    retire_groups = "256";
    run("1000", 2);
    retire_groups = NULL;
    assert_true(sent_by_me(0));
    assert_int_equal(slot[2].err, FERRY_EIO);
    assert_false(slot[2].sent);
    assert_true(slot[1].sent && !sent_by_me(1));
    assert_true(slot[3].sent && !sent_by_me(3));
}

/* FERRY_STAGING_INLINE_FIRST=1: the round's first frame reaches the
 * transport as a last frame not handed over (tcp writes it on the retiring
 * thread when a connection is idle); every other one as before. */
static void inline_first_frame(void **state)
{
    (void)state;
    static const char *const retire[] = {"0", "1000"}; /* the worker retires it; the submitting thread does */
    for (size_t r = 0; r < 2; r++) {
        run_with(retire[r], "1", NFRAMES);
        for (unsigned f = 0; f < NFRAMES; f++)
            assert_true(slot[f].sent);
        assert_false(slot[0].handed_over);
        assert_int_equal(slot[0].more_bytes, 0);
        for (unsigned f = 1; f < NFRAMES; f++) {
            assert_true(slot[f].handed_over);
            assert_int_equal(slot[f].more_bytes, (uint64_t)(NFRAMES - 1 - f) * PIECES * BLOCK);
        }
    }
}

/* Off (the default): every staged WRITE is handed over. */
static void inline_first_off(void **state)
{
    (void)state;
    run_with("0", "0", NFRAMES);
    for (unsigned f = 0; f < NFRAMES; f++)
        assert_true(slot[f].sent && slot[f].handed_over);
    assert_int_equal(slot[0].more_bytes, (uint64_t)(NFRAMES - 1) * PIECES * BLOCK);
}

/* A first frame whose copies fail on the device fails alone (through the
 * worker, never reaching the transport); the others go as before. */
static void inline_first_failed(void **state)
{
    (void)state;
    run_with("0", "1", 0);
    assert_int_equal(slot[0].err, FERRY_EIO);
    assert_false(slot[0].sent);
    for (unsigned f = 1; f < NFRAMES; f++)
        assert_true(slot[f].sent && slot[f].handed_over);
}

static void knob_refusals(void **state)
{
    (void)state;
    static const char *const bad[] = {"1001", "-1", "ten", "5x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct staging_pool *pool = NULL;
        void *base;
        size_t len;
        setenv("FERRY_STAGING_ISSUER_RETIRE_US", bad[i], 1);
        int rc = staging_pool_create(sim, 0, 1u << 20, 2, wire_send, NULL, &pool, &base, &len);
        unsetenv("FERRY_STAGING_ISSUER_RETIRE_US");
        if (rc != FERRY_EINVAL)
            fail_msg("FERRY_STAGING_ISSUER_RETIRE_US=%s: %d", bad[i], rc);
        assert_null(pool);
        assert_non_null(strstr(ferry_last_error(), "FERRY_STAGING_ISSUER_RETIRE_US"));
        assert_non_null(strstr(ferry_last_error(), bad[i]));
    }
    static const char *const bad_groups[] = {"0", "257", "all", "-1"};
    for (size_t i = 0; i < sizeof bad_groups / sizeof bad_groups[0]; i++) {
        struct staging_pool *pool = NULL;
        void *base;
        size_t len;
        setenv("FERRY_STAGING_ISSUER_RETIRE_GROUPS", bad_groups[i], 1);
        int rc = staging_pool_create(sim, 0, 1u << 20, 2, wire_send, NULL, &pool, &base, &len);
        unsetenv("FERRY_STAGING_ISSUER_RETIRE_GROUPS");
        if (rc != FERRY_EINVAL)
            fail_msg("FERRY_STAGING_ISSUER_RETIRE_GROUPS=%s: %d", bad_groups[i], rc);
        assert_null(pool);
        assert_non_null(strstr(ferry_last_error(), "FERRY_STAGING_ISSUER_RETIRE_GROUPS"));
        assert_non_null(strstr(ferry_last_error(), bad_groups[i]));
    }
    static const char *const bad_inline[] = {"2", "-1", "yes"};
    for (size_t i = 0; i < sizeof bad_inline / sizeof bad_inline[0]; i++) {
        struct staging_pool *pool = NULL;
        void *base;
        size_t len;
        setenv("FERRY_STAGING_INLINE_FIRST", bad_inline[i], 1);
        int rc = staging_pool_create(sim, 0, 1u << 20, 2, wire_send, NULL, &pool, &base, &len);
        unsetenv("FERRY_STAGING_INLINE_FIRST");
        if (rc != FERRY_EINVAL)
            fail_msg("FERRY_STAGING_INLINE_FIRST=%s: %d", bad_inline[i], rc);
        assert_null(pool);
        assert_non_null(strstr(ferry_last_error(), "FERRY_STAGING_INLINE_FIRST"));
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
        cmocka_unit_test(issuer_sends_the_first_frame),
        cmocka_unit_test(off_the_worker_sends_it),
        cmocka_unit_test(failed_first_group_fails_alone),
        cmocka_unit_test(issuer_retires_groups),
        cmocka_unit_test(issuer_groups_failed_later_group),
        cmocka_unit_test(inline_first_frame),
        cmocka_unit_test(inline_first_off),
        cmocka_unit_test(inline_first_failed),
        cmocka_unit_test(knob_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

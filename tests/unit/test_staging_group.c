/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_staging_group.c — the staging worker issues frames that became ready
 * together as one group (one copy_async on the first chunk's stream); a bad
 * address in one frame of a group must fail that frame only.  On the strict
 * sim device: a WRITE group and a READ group with one frame on freed device
 * memory (the copy fails on the device, at sync), and a group whose copies
 * fail to be queued (a wrapped sim table refuses one address).  The groups
 * form deterministically: the frames are handed to the pool from the
 * worker's own callback, so they wait together for its next round.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include <pthread.h>

#include "device/device.h"
#include "err.h"
#include "net.h"
#include "staging/staging.h"

#define BLOCK 4096u
#define PIECES 16u

enum { FIRST, GOOD, BAD, NFRAMES };

struct frame_slot {
    struct xfer_frame f;
    struct xfer_piece pieces[PIECES];
    int err;
    char msg[200];
    int done;
};

static struct {
    struct staging_pool *pool;
    struct frame_slot slot[NFRAMES];
    struct xfer_frame *held[NFRAMES]; /* READ wire frames not yet "arrived" */
    int nheld;
    char *good, *bad;                 /* device memory: live (the good frame's, then the first's), freed */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int ended;
    int op;
    int bad_bytes;                    /* the good frame's chunk did not hold its blocks */
    int refusals;                     /* frames ended with refused pieces */
} t;

static const struct ferry_device_ops *sim;
static struct ferry_device_ops refusing; /* sim, with copy_async refusing t.bad */

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 7 + 3);
}

static void frame_ended(struct xfer_frame *f, int err, uint64_t refused, const char *msg)
{
    struct frame_slot *s = f->owner;
    pthread_mutex_lock(&t.lock);
    t.refusals += refused != 0;
    s->err = err;
    snprintf(s->msg, sizeof s->msg, "%s", msg ? msg : "");
    s->done = 1;
    t.ended++;
    pthread_cond_broadcast(&t.cond);
    pthread_mutex_unlock(&t.lock);
}

static void submit(int which)
{
    staging_submit(t.pool, &t.slot[which].f);
}

/* The "transport", on the worker thread.  WRITE: the chunk holds the
 * gathered blocks (checked for the good frame), the wire ends at once.
 * READ: the chunk is filled with the pattern as if it arrived; the good and
 * bad frames' wires end together, so their scatters form one group. */
static void wire_send(void *ctx, struct xfer_frame *w)
{
    (void)ctx;
    if (t.op == XFER_WRITE) {
        if (w->pieces[0].remote == 0) { /* the first frame: hand over the next two */
            submit(GOOD);
            submit(BAD);
        }
        if (w->pieces[0].remote == PIECES * BLOCK) /* the good frame: its blocks, in order */
            for (uint32_t i = 0; i < w->npieces; i++)
                for (size_t k = 0; k < BLOCK; k++)
                    t.bad_bytes += (unsigned char)((char *)w->pieces[i].local)[k] != pattern(i * BLOCK + k);
        w->complete(w, 0, 0, "");
        return;
    }
    for (uint32_t i = 0; i < w->npieces; i++)
        for (size_t k = 0; k < BLOCK; k++)
            ((char *)w->pieces[i].local)[k] = (char)pattern(i * BLOCK + k);
    if (w->pieces[0].remote == 0) {
        submit(GOOD);
        submit(BAD);
        w->complete(w, 0, 0, "");
        return;
    }
    t.held[t.nheld++] = w;
    if (t.nheld == 2)
        for (int i = 0; i < 2; i++)
            t.held[i]->complete(t.held[i], 0, 0, "");
}

static int refusing_copy_async(ferry_stream *s, enum ferry_copy_dir dir, const struct ferry_copy *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char *dev = dir == FERRY_COPY_D2H ? c[i].src : c[i].dst;
        if (dev >= t.bad && dev < t.bad + PIECES * BLOCK)
            return ferry_fail(FERRY_EIO, "test: copy of %p refused", (const void *)dev);
    }
    return sim->copy_async(s, dir, c, n);
}

static void frame_init(int which, int op, char *dev)
{
    struct frame_slot *s = &t.slot[which];
    memset(s, 0, sizeof *s);
    for (uint32_t i = 0; i < PIECES; i++)
        s->pieces[i] = (struct xfer_piece){dev + i * BLOCK, (uint64_t)which * PIECES * BLOCK + i * BLOCK, BLOCK, i};
    s->f = (struct xfer_frame){.opcode = op, .npieces = PIECES, .pieces = s->pieces, .bytes = PIECES * BLOCK,
                               .deadline_ns = now_ns() + 120000000000ull, .complete = frame_ended, .owner = s};
}

/* Runs the three frames through a pool of ops (sim or refusing) and waits
 * for them; the bad frame's memory is freed first when free_bad. */
static void run(const struct ferry_device_ops *ops, int op, int free_bad)
{
    char host[PIECES * BLOCK];
    memset(&t, 0, sizeof t);
    pthread_mutex_init(&t.lock, NULL);
    pthread_cond_init(&t.cond, NULL);
    t.op = op;
    /* the first frame has blocks of its own: its scatter may still run
     * when the good frame's does */
    assert_int_equal(sim->mem_alloc(0, 2 * PIECES * BLOCK, (void **)&t.good), 0);
    assert_int_equal(sim->mem_alloc(0, PIECES * BLOCK, (void **)&t.bad), 0);
    for (size_t k = 0; k < sizeof host; k++)
        host[k] = (char)(op == XFER_WRITE ? pattern(k) : 0);
    struct ferry_copy fill = {t.good, host, sizeof host};
    assert_int_equal(ferry_device_copy_sync(sim, 0, FERRY_COPY_H2D, &fill, 1), 0);
    if (free_bad)
        sim->mem_free(0, t.bad);
    frame_init(FIRST, op, t.good + PIECES * BLOCK);
    frame_init(GOOD, op, t.good);
    frame_init(BAD, op, t.bad);
    void *base;
    size_t len;
    assert_int_equal(staging_pool_create(ops, 0, 1u << 20, 4, wire_send, NULL, &t.pool, &base, &len), 0);
    submit(FIRST);
    pthread_mutex_lock(&t.lock);
    while (t.ended < NFRAMES)
        pthread_cond_wait(&t.cond, &t.lock);
    pthread_mutex_unlock(&t.lock);
    staging_pool_destroy(t.pool);

    assert_int_equal(t.refusals, 0);
    assert_int_equal(t.bad_bytes, 0);
    assert_int_equal(t.slot[FIRST].err, 0);
    if (t.slot[GOOD].err)
        fail_msg("the good frame of the group failed: %s", t.slot[GOOD].msg);
    assert_int_equal(t.slot[BAD].err, FERRY_EIO);
    assert_non_null(strstr(t.slot[BAD].msg, op == XFER_WRITE ? "device-to-host copy" : "host-to-device copy"));
    if (op == XFER_READ) { /* the good frame's blocks landed */
        struct ferry_copy back = {host, t.good, sizeof host};
        assert_int_equal(ferry_device_copy_sync(sim, 0, FERRY_COPY_D2H, &back, 1), 0);
        for (size_t k = 0; k < sizeof host; k++)
            assert_int_equal((unsigned char)host[k], pattern(k));
    }
    sim->mem_free(0, t.good);
    if (!free_bad)
        sim->mem_free(0, t.bad);
    pthread_cond_destroy(&t.cond);
    pthread_mutex_destroy(&t.lock);
}

static void write_group_with_a_faulting_frame(void **state)
{
    (void)state;
    run(sim, XFER_WRITE, 1);
}

static void read_group_with_a_faulting_frame(void **state)
{
    (void)state;
    run(sim, XFER_READ, 1);
}

static void write_group_refused_at_enqueue(void **state)
{
    (void)state;
    run(&refusing, XFER_WRITE, 0);
}

static void read_group_refused_at_enqueue(void **state)
{
    (void)state;
    run(&refusing, XFER_READ, 0);
}

int main(void)
{
    sim = ferry_device_find("sim");
    if (!sim || sim->init()) {
        printf("SKIPPED: no sim device: %s\n", ferry_last_error());
        return 77;
    }
    refusing = *sim;
    refusing.copy_async = refusing_copy_async;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(write_group_with_a_faulting_frame),
        cmocka_unit_test(read_group_with_a_faulting_frame),
        cmocka_unit_test(write_group_refused_at_enqueue),
        cmocka_unit_test(read_group_refused_at_enqueue),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_stream.c — ferry_batch_submit_on_stream on the sim device: the
 * transfer starts only when the stream reaches it (a gate held closed on the
 * stream keeps it from starting), later work on the stream runs only after
 * it ended (a host function after it sees the batch finished, a copy after it
 * sees the data), WRITE and READ with sim memory, argument errors with nothing
 * enqueued, and a transfer that fails (target killed) still releases the
 * stream and reports its error in the batch.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "device/device.h"
#include "testutil.h"

#define TSIZE (4u << 20)
#define TSEED 31
#define LEN (256u << 10)

struct fixture {
    struct child_target target;
    ferry_engine *e;
    ferry_segment_t seg;
    const struct ferry_device_ops *sim;
    ferry_stream *stream;
    char *dev;           /* sim:0 memory, registered */
    char *host;          /* host scratch, registered (not remote accessible) */
    uint32_t gate;       /* the stream waits on it (ferry_flag_wait) */
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_int_equal(child_target_start(&f->target, TSIZE, "cpu", TSEED), 0);
    assert_int_equal(ferry_engine_create(NULL, &f->e), 0);
    f->sim = ferry_device_find("sim");
    assert_non_null(f->sim);
    assert_int_equal(ferry_mem_alloc(f->e, "sim:0", LEN, (void **)&f->dev), 0);
    assert_int_equal(ferry_register_memory(f->e, f->dev, LEN, "sim:0", 0), 0);
    f->host = malloc(LEN);
    assert_int_equal(ferry_register_memory(f->e, f->host, LEN, "cpu", 0), 0);
    assert_int_equal(f->sim->stream_create(0, &f->stream), 0);
    assert_int_equal(ferry_open_segment(f->e, f->target.name, &f->seg), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    ferry_flag_set(&f->gate, 1); /* a failed test must not leave the stream blocked */
    f->sim->stream_sync(f->stream);
    f->sim->stream_destroy(f->stream);
    ferry_engine_destroy(f->e);
    ferry_mem_free(NULL, "sim:0", f->dev, LEN);
    child_target_kill(&f->target);
    free(f->host);
    free(f);
    return 0;
}

static void gate_wait(void *arg)
{
    struct fixture *f = arg;
    ferry_flag_wait(&f->gate, 1);
}

/* Holds the stream until gate_open. */
static void gate_close(struct fixture *f)
{
    f->gate = 0;
    assert_int_equal(f->sim->stream_host_func(0, f->stream, gate_wait, f), 0);
}

static void gate_open(struct fixture *f)
{
    ferry_flag_set(&f->gate, 1);
}

static void copy(struct fixture *f, enum ferry_copy_dir dir, void *dst, const void *src, size_t len)
{
    struct ferry_copy c = {dst, src, len};
    assert_int_equal(f->sim->copy_async(f->stream, dir, &c, 1), 0);
}

/* What a host function enqueued after the transfer saw. */
struct seen {
    ferry_batch *batch;
    int state;
};

static void record_state(void *arg)
{
    struct seen *s = arg;
    struct ferry_status st;
    ferry_batch_status(s->batch, 0, &st);
    s->state = st.state;
}

static void write_starts_and_ends_in_stream_order(void **state)
{
    struct fixture *f = *state;
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    gate_close(f);
    pattern_fill(f->host, LEN, 5, 0);
    copy(f, FERRY_COPY_H2D, f->dev, f->host, LEN);            /* "the kernel that wrote the KV" */
    struct ferry_request q = {FERRY_WRITE, f->dev, f->seg, f->target.addr, LEN};
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f->stream), 0);
    struct seen seen = {b, -1};
    assert_int_equal(f->sim->stream_host_func(0, f->stream, record_state, &seen), 0);
    char *after = malloc(LEN);
    copy(f, FERRY_COPY_D2H, after, f->dev, LEN);               /* later work reads the same blocks */
    /* the stream has not reached it: nothing was sent */
    assert_int_equal(ferry_batch_wait(b, 0), FERRY_ETIMEDOUT);
    assert_int_equal(child_target_check(&f->target, 0, LEN, TSEED), -1);
    gate_open(f);
    assert_int_equal(f->sim->stream_sync(f->stream), 0);
    assert_int_equal(seen.state, FERRY_COMPLETED);             /* later work ran after it ended */
    assert_int_equal(ferry_batch_wait(b, -1), 0);
    assert_int_equal(child_target_check(&f->target, 0, LEN, 5), -1); /* the bytes the copy put there */
    assert_int_equal(pattern_check(after, LEN, 5, 0), -1);
    ferry_batch_free(b);
    free(after);
}

static void read_lands_before_later_copies(void **state)
{
    struct fixture *f = *state;
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 2, &b), 0);
    memset(f->host, 0, LEN);
    copy(f, FERRY_COPY_H2D, f->dev, f->host, LEN);             /* zero the device buffer first */
    struct ferry_request q[2] = {{FERRY_READ, f->dev, f->seg, f->target.addr + LEN, LEN / 2},
                                 {FERRY_READ, f->dev + LEN / 2, f->seg, f->target.addr + LEN + LEN / 2, LEN / 2}};
    assert_int_equal(ferry_batch_submit_on_stream(b, q, 2, "sim:0", f->stream), 0);
    char *after = malloc(LEN);
    copy(f, FERRY_COPY_D2H, after, f->dev, LEN);               /* "the next layer's kernel" */
    assert_int_equal(f->sim->stream_sync(f->stream), 0);
    assert_int_equal(pattern_check(after, LEN, TSEED, LEN), -1);
    assert_int_equal(ferry_batch_wait(b, -1), 0);
    ferry_batch_free(b);
    free(after);
}

static void bad_arguments_enqueue_nothing(void **state)
{
    struct fixture *f = *state;
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 4, &b), 0);
    char unregistered[64];
    struct ferry_request q = {FERRY_WRITE, f->dev, f->seg, f->target.addr, 4096};
    struct ferry_request bad_local = {FERRY_WRITE, unregistered, f->seg, f->target.addr, 64};
    struct ferry_request bad_range = {FERRY_WRITE, f->dev, f->seg, f->target.addr + TSIZE, 4096};
    struct ferry_request bad_seg = {FERRY_WRITE, f->dev, 999, f->target.addr, 4096};
    assert_int_equal(ferry_batch_submit_on_stream(b, &bad_local, 1, "sim:0", f->stream), FERRY_ENOTREG);
    assert_int_equal(ferry_batch_submit_on_stream(b, &bad_range, 1, "sim:0", f->stream), FERRY_ERANGE);
    assert_int_equal(ferry_batch_submit_on_stream(b, &bad_seg, 1, "sim:0", f->stream), FERRY_ENOSEG);
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 0, "sim:0", f->stream), FERRY_EINVAL);
    assert_int_equal(ferry_batch_submit_on_stream(NULL, &q, 1, "sim:0", f->stream), FERRY_EINVAL);
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "cpu", f->stream), FERRY_ENOTSUP);
    assert_non_null(strstr(ferry_last_error(), "cpu"));
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "warp:0", f->stream), FERRY_EINVAL);
    /* a device this host lacks: refused with nothing started (the batch stays empty) */
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:63", f->stream), FERRY_ENODEV);
    assert_non_null(strstr(ferry_last_error(), "sim:63"));
    assert_int_equal(ferry_batch_size(b), 0);
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:1", (void *)f), FERRY_EINVAL); /* not a stream */
    assert_int_equal(f->sim->stream_query(f->stream), 0);      /* nothing was left on the stream */
    /* the last call fell back to an immediate transfer: the batch is not empty any more */
    assert_int_equal(ferry_batch_wait(b, -1), 0);
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f->stream), FERRY_EBUSY);
    ferry_batch_free(b);
    assert_int_equal(ferry_batch_alloc(f->e, 4, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &q, 1), 0);
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f->stream), FERRY_EBUSY);
    assert_int_equal(ferry_batch_wait(b, -1), 0);
    ferry_batch_free(b);
}

static void failed_transfer_releases_the_stream(void **state)
{
    struct fixture *f = *state;
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    gate_close(f);
    struct ferry_request q = {FERRY_WRITE, f->dev, f->seg, f->target.addr, LEN};
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f->stream), 0);
    struct seen seen = {b, -1};
    assert_int_equal(f->sim->stream_host_func(0, f->stream, record_state, &seen), 0);
    child_target_kill(&f->target);                             /* the decode node dies meanwhile */
    gate_open(f);
    assert_int_equal(f->sim->stream_sync(f->stream), 0);      /* the stream is not stuck */
    assert_int_equal(seen.state, FERRY_FAILED);
    int rc = ferry_batch_wait(b, -1);
    assert_true(rc == FERRY_ECONN || rc == FERRY_ENOSEG || rc == FERRY_ECANCELED);
    ferry_batch_free(b);
    f->target.pid = 0;
}

/* The sim:0 buffer f->dev, filled with pattern `seed` on the stream, written
 * to dst of seg in stream order; a copy after it on the stream sees the
 * pattern in dst. */
static void write_dev_in_stream_order(struct fixture *f, ferry_segment_t seg, char *dst, uint64_t seed)
{
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    pattern_fill(f->host, LEN, seed, 0);
    copy(f, FERRY_COPY_H2D, f->dev, f->host, LEN);
    struct ferry_request q = {FERRY_WRITE, f->dev, seg, (uint64_t)(uintptr_t)dst, LEN};
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f->stream), 0);
    char *after = malloc(LEN);
    copy(f, FERRY_COPY_D2H, after, dst, LEN);
    assert_int_equal(f->sim->stream_sync(f->stream), 0);
    assert_int_equal(ferry_batch_wait(b, -1), 0);
    assert_int_equal(pattern_check(after, LEN, seed, 0), -1);
    ferry_batch_free(b);
    free(after);
}

/* The reference's test_transfer_on_cuda: a device buffer written to another
 * of the same engine (its own segment) on a stream; later work waits for it. */
static void to_its_own_segment(void **state)
{
    struct fixture *f = *state;
    char *dst = NULL;
    ferry_segment_t self;
    assert_int_equal(ferry_mem_alloc(f->e, "sim:0", LEN, (void **)&dst), 0);
    assert_int_equal(ferry_register_memory(f->e, dst, LEN, NULL, 1), 0);
    assert_int_equal(ferry_open_segment(f->e, ferry_engine_segment_name(f->e), &self), 0);
    for (int i = 0; i < 3; i++)
        write_dev_in_stream_order(f, self, dst, 40 + i);
    assert_int_equal(ferry_unregister_memory(f->e, dst), 0);
    ferry_mem_free(NULL, "sim:0", dst, LEN);
}

/* LEN bytes of sim:0 memory registered remote-accessible with f->e, and
 * f->e's own segment opened in *self. */
static char *own_buffer(struct fixture *f, ferry_segment_t *self)
{
    char *own = NULL;
    assert_int_equal(ferry_mem_alloc(f->e, "sim:0", LEN, (void **)&own), 0);
    assert_int_equal(ferry_register_memory(f->e, own, LEN, "sim:0", 1), 0);
    assert_int_equal(ferry_open_segment(f->e, ferry_engine_segment_name(f->e), self), 0);
    return own;
}

/* ... READ too, into host memory, with a host function after it that sees
 * the batch ended, and a gate: nothing moves before the stream gets there. */
static void read_from_its_own_segment_in_stream_order(void **state)
{
    struct fixture *f = *state;
    ferry_segment_t self;
    char *own = own_buffer(f, &self);
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 2, &b), 0);
    pattern_fill(f->host, LEN, 61, 0);
    copy(f, FERRY_COPY_H2D, own, f->host, LEN);                /* own buffer: pattern 61 */
    assert_int_equal(f->sim->stream_sync(f->stream), 0);
    memset(f->host, 0, LEN);
    gate_close(f);
    struct ferry_request q[2] = {{FERRY_READ, f->host, self, (uint64_t)(uintptr_t)own, LEN / 2},
                                 {FERRY_READ, f->host + LEN / 2, self, (uint64_t)(uintptr_t)own + LEN / 2, LEN / 2}};
    assert_int_equal(ferry_batch_submit_on_stream(b, q, 2, "sim:0", f->stream), 0);
    struct seen seen = {b, -1};
    assert_int_equal(f->sim->stream_host_func(0, f->stream, record_state, &seen), 0);
    assert_int_equal(ferry_batch_wait(b, 0), FERRY_ETIMEDOUT); /* the stream has not reached it */
    assert_int_equal(pattern_check(f->host, LEN, 61, 0), 0);   /* (0: the first byte differs) */
    gate_open(f);
    assert_int_equal(f->sim->stream_sync(f->stream), 0);
    assert_int_equal(seen.state, FERRY_COMPLETED);
    assert_int_equal(ferry_batch_wait(b, -1), 0);
    assert_int_equal(pattern_check(f->host, LEN, 61, 0), -1);
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, 1, &st), 0);
    assert_int_equal(st.transferred, LEN / 2);
    ferry_batch_free(b);
    assert_int_equal(ferry_unregister_memory(f->e, own), 0);
    ferry_mem_free(NULL, "sim:0", own, LEN);
}

/* Own-segment requests are checked as a peer would: a target range that is
 * not registered remote-accessible is refused at the call, nothing enqueued. */
static void own_segment_ranges_are_checked(void **state)
{
    struct fixture *f = *state;
    ferry_segment_t self;
    assert_int_equal(ferry_open_segment(f->e, ferry_engine_segment_name(f->e), &self), 0);
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    /* f->dev is registered, but not remote-accessible */
    struct ferry_request q = {FERRY_WRITE, f->host, self, (uint64_t)(uintptr_t)f->dev, 4096};
    assert_int_not_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f->stream), 0);
    assert_int_equal(ferry_batch_size(b), 0);
    assert_int_equal(f->sim->stream_query(f->stream), 0);     /* nothing was left on the stream */
    ferry_batch_free(b);
}

/* A second engine of this process is the target, its memory on the same
 * device: its tcp thread copies into that memory while the caller's stream
 * waits for the transfer, so it must not create a stream then (the sim
 * device refuses to, as CUDA's creation can wait for that very stream). */
static void to_another_engine_of_this_process(void **state)
{
    struct fixture *f = *state;
    ferry_engine *e2;
    char *dst = NULL;
    assert_int_equal(ferry_engine_create(NULL, &e2), 0);
    assert_int_equal(ferry_mem_alloc(e2, "sim:0", LEN, (void **)&dst), 0);
    assert_int_equal(ferry_register_memory(e2, dst, LEN, "sim:0", 1), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(f->e, ferry_engine_segment_name(e2), &seg), 0);
    for (int i = 0; i < 2; i++)
        write_dev_in_stream_order(f, seg, dst, 70 + i);
    assert_int_equal(ferry_close_segment(f->e, seg), 0);
    ferry_engine_destroy(e2);
    ferry_mem_free(NULL, "sim:0", dst, LEN);
}

/* The engine is destroyed before the stream reaches its own-segment copies
 * (a caller that did not synchronize the stream): the copies still run in
 * stream order, the batch ends, and nothing touches the engine after. */
static void engine_destroyed_before_own_copies_ran(void **state)
{
    struct fixture *f = *state;
    ferry_segment_t self;
    char *own = own_buffer(f, &self);
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    pattern_fill(f->host, LEN, 83, 0);
    gate_close(f);
    struct ferry_request q = {FERRY_WRITE, f->host, self, (uint64_t)(uintptr_t)own, LEN};
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f->stream), 0);
    char *after = malloc(LEN);
    copy(f, FERRY_COPY_D2H, after, own, LEN);
    ferry_engine_destroy(f->e);
    f->e = NULL;
    gate_open(f);
    assert_int_equal(f->sim->stream_sync(f->stream), 0);
    struct ferry_status st; /* (ferry_batch_wait would read the engine's wait statistics) */
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    assert_int_equal(st.state, FERRY_COMPLETED);
    assert_int_equal(pattern_check(after, LEN, 83, 0), -1);
    ferry_batch_free(b);
    free(after);
    ferry_mem_free(NULL, "sim:0", own, LEN);
}

/* Python's close() cannot synchronize the caller's streams: the engine is
 * destroyed while a stream has not reached its transfer yet.  When the
 * stream gets there, nothing is sent (the engine is gone), the batch ends
 * FERRY_ECANCELED and can be freed, and the stream goes on.  Before, the
 * stream stopped at the transfer's flag for ever and ferry_batch_free
 * waited for ever (no worker was left to run it). */
static void *sync_stream(void *arg)
{
    struct fixture *f = arg;
    f->sim->stream_sync(f->stream);
    return NULL;
}

static void engine_destroyed_before_the_stream_reaches_it(void **state)
{
    struct fixture *f = *state;
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    gate_close(f);
    struct ferry_request q = {FERRY_WRITE, f->host, f->seg, f->target.addr, LEN};
    pattern_fill(f->host, LEN, 6, 0);
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f->stream), 0);
    char *after = calloc(1, LEN);
    copy(f, FERRY_COPY_D2H, after, f->dev, LEN);               /* later work on the stream */
    ferry_engine_destroy(f->e);
    f->e = NULL;
    gate_open(f);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, sync_stream, f), 0);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 120; /* a bound that keeps a broken run from hanging, not a measurement */
    if (pthread_timedjoin_np(th, NULL, &until) != 0)
        fail_msg("the stream did not get past the transfer of a destroyed engine");
    assert_int_equal(ferry_batch_size(b), 0);                  /* it was never submitted */
    ferry_batch_free(b);
    assert_int_equal(child_target_check(&f->target, 0, LEN, TSEED), -1); /* nothing was sent */
    free(after);
}

/* Device memory to another engine moves through pinned host memory with the
 * copies on the caller's stream (stream.c, bounce_submit): a batch of device
 * and host requests, written then read back round after round, the same
 * bounce buffer reused; a host function after each sees the batch ended and
 * the bytes where they belong.  Under FERRY_SIM_STALL_ON_WAIT (ctest
 * test_stream_stall) a copy of ferry's own while the stream waits fails, as
 * it stalls on CUDA when the application first launches a kernel then. */
static void mixed_batches_round_trip(void **state)
{
    struct fixture *f = *state;
    char *back = malloc(LEN);
    for (int round = 0; round < 4; round++) {
        struct ferry_batch *b;
        assert_int_equal(ferry_batch_alloc(f->e, 3, &b), 0);
        pattern_fill(f->host, LEN, 90 + round, 0);
        copy(f, FERRY_COPY_H2D, f->dev, f->host, LEN);        /* device: pattern 90+round */
        struct ferry_request w[3] = {{FERRY_WRITE, f->dev, f->seg, f->target.addr, LEN / 2},
                                     {FERRY_WRITE, f->host + LEN / 2, f->seg, f->target.addr + LEN / 2, LEN / 4},
                                     {FERRY_WRITE, f->dev + 3 * (LEN / 4), f->seg, f->target.addr + 3 * (LEN / 4),
                                      LEN / 4}};
        assert_int_equal(ferry_batch_submit_on_stream(b, w, 3, "sim:0", f->stream), 0);
        struct seen seen = {b, -1};
        assert_int_equal(f->sim->stream_host_func(0, f->stream, record_state, &seen), 0);
        assert_int_equal(f->sim->stream_sync(f->stream), 0);
        assert_int_equal(seen.state, FERRY_COMPLETED);
        assert_int_equal(ferry_batch_wait(b, -1), 0);
        assert_int_equal(child_target_check(&f->target, 0, LEN, 90 + round), -1);
        ferry_batch_free(b);

        /* and back, into device memory cleared first */
        memset(back, 0, LEN);
        copy(f, FERRY_COPY_H2D, f->dev, back, LEN);
        assert_int_equal(ferry_batch_alloc(f->e, 2, &b), 0);
        struct ferry_request r[2] = {{FERRY_READ, f->dev + LEN / 2, f->seg, f->target.addr, LEN / 2},
                                     {FERRY_READ, f->dev, f->seg, f->target.addr + LEN / 2, LEN / 2}};
        assert_int_equal(ferry_batch_submit_on_stream(b, r, 2, "sim:0", f->stream), 0);
        seen = (struct seen){b, -1};
        assert_int_equal(f->sim->stream_host_func(0, f->stream, record_state, &seen), 0);
        copy(f, FERRY_COPY_D2H, back, f->dev, LEN);            /* later work on the stream */
        assert_int_equal(f->sim->stream_sync(f->stream), 0);
        assert_int_equal(seen.state, FERRY_COMPLETED);
        assert_int_equal(ferry_batch_wait(b, -1), 0);
        assert_int_equal(pattern_check(back + LEN / 2, LEN / 2, 90 + round, 0), -1);
        assert_int_equal(pattern_check(back, LEN / 2, 90 + round, LEN / 2), -1);
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, 1, &st), 0);
        assert_int_equal(st.transferred, LEN / 2);
        ferry_batch_free(b);
    }
    free(back);
}

/* A READ into device memory whose target dies: the batch ends FAILED (no
 * request COMPLETED), the stream goes on, and what the stream copies into
 * the destination is not an earlier transfer's bytes. */
static void failed_read_into_device_memory(void **state)
{
    struct fixture *f = *state;
    struct ferry_batch *b;
    /* an earlier READ leaves the target's bytes in the bounce buffer */
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    struct ferry_request q = {FERRY_READ, f->dev, f->seg, f->target.addr, LEN};
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f->stream), 0);
    assert_int_equal(f->sim->stream_sync(f->stream), 0);
    assert_int_equal(ferry_batch_wait(b, -1), 0);
    ferry_batch_free(b);
    memset(f->host, 0x5a, LEN);
    copy(f, FERRY_COPY_H2D, f->dev, f->host, LEN);
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    gate_close(f);
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f->stream), 0);
    struct seen seen = {b, -1};
    assert_int_equal(f->sim->stream_host_func(0, f->stream, record_state, &seen), 0);
    char *after = malloc(LEN);
    copy(f, FERRY_COPY_D2H, after, f->dev, LEN);
    child_target_kill(&f->target);
    f->target.pid = 0;
    gate_open(f);
    assert_int_equal(f->sim->stream_sync(f->stream), 0);      /* the stream is not stuck */
    assert_int_equal(seen.state, FERRY_FAILED);
    assert_int_not_equal(ferry_batch_wait(b, -1), 0);
    assert_int_not_equal(pattern_check(after, LEN, TSEED, 0), -1); /* not the first READ's bytes */
    ferry_batch_free(b);
    free(after);
}

/* The engine is destroyed before the stream reaches a READ into device
 * memory: the batch ends FERRY_ECANCELED once the stream passed it, and the
 * stream goes on. */
static void engine_destroyed_before_a_device_read(void **state)
{
    struct fixture *f = *state;
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    gate_close(f);
    struct ferry_request q = {FERRY_READ, f->dev, f->seg, f->target.addr, LEN};
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f->stream), 0);
    ferry_engine_destroy(f->e);
    f->e = NULL;
    gate_open(f);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, sync_stream, f), 0);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 120; /* a bound that keeps a broken run from hanging, not a measurement */
    if (pthread_timedjoin_np(th, NULL, &until) != 0)
        fail_msg("the stream did not get past a READ of a destroyed engine");
    struct ferry_status st; /* (ferry_batch_wait would read the engine's wait statistics) */
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    assert_int_equal(st.state, FERRY_FAILED);
    assert_int_equal(st.error, FERRY_ECANCELED);
    ferry_batch_free(b);
}

/* A batch larger than FERRY_STREAM_BOUNCE_MB takes ferry's staging threads,
 * and still completes; a bad value is refused with the knob's name. */
static void bounce_limit_and_bad_value(void **state)
{
    struct fixture *f = *state;
    ferry_engine *e;
    setenv("FERRY_STREAM_BOUNCE_MB", "lots", 1);
    assert_int_equal(ferry_engine_create(NULL, &e), 0);
    assert_int_equal(ferry_register_memory(e, f->dev, LEN, "sim:0", 0), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, f->target.name, &seg), 0);
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    struct ferry_request q = {FERRY_WRITE, f->dev, seg, f->target.addr, LEN};
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f->stream), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "FERRY_STREAM_BOUNCE_MB"));
    assert_int_equal(ferry_batch_size(b), 0);
    ferry_batch_free(b);
    ferry_engine_destroy(e);
    unsetenv("FERRY_STREAM_BOUNCE_MB");
    if (getenv("FERRY_SIM_STALL_ON_WAIT"))
        return; /* (ferry's threads stage what does not fit: not under the stall) */
    setenv("FERRY_STREAM_BOUNCE_MB", "0", 1);
    assert_int_equal(ferry_engine_create(NULL, &e), 0);
    unsetenv("FERRY_STREAM_BOUNCE_MB");
    assert_int_equal(ferry_register_memory(e, f->dev, LEN, "sim:0", 0), 0);
    assert_int_equal(ferry_open_segment(e, f->target.name, &seg), 0);
    pattern_fill(f->host, LEN, 77, 0);
    copy(f, FERRY_COPY_H2D, f->dev, f->host, LEN);
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f->stream), 0);
    assert_int_equal(f->sim->stream_sync(f->stream), 0);
    assert_int_equal(ferry_batch_wait(b, -1), 0);
    assert_int_equal(child_target_check(&f->target, 0, LEN, 77), -1);
    ferry_batch_free(b);
    ferry_engine_destroy(e);
}

/* A stream the device refuses (another device's) for device memory to
 * another engine: the call says so, nothing is sent, and the batch ends
 * FAILED once (before, the call's error also took back the deferred submit
 * the failed job had ended: the batch's count went below zero and a wait
 * never returned). */
static void *wait_batch(void *arg)
{
    return (void *)(intptr_t)ferry_batch_wait(arg, -1);
}

static void refused_stream_ends_the_batch_once(void **state)
{
    struct fixture *f = *state;
    ferry_stream *other;
    assert_int_equal(f->sim->stream_create(1, &other), 0);
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    struct ferry_request q = {FERRY_WRITE, f->dev, f->seg, f->target.addr, LEN};
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", other), FERRY_EINVAL);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, wait_batch, b), 0);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 120; /* a bound that keeps a broken run from hanging, not a measurement */
    void *rc;
    if (pthread_timedjoin_np(th, &rc, &until) != 0)
        fail_msg("the batch of a refused stream never ended");
    assert_int_not_equal((int)(intptr_t)rc, 0);
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    assert_int_equal(st.state, FERRY_FAILED);
    assert_int_equal(child_target_check(&f->target, 0, LEN, TSEED), -1); /* nothing was sent */
    ferry_batch_free(b);
    f->sim->stream_destroy(other);
}

/* A bounce buffer the stream may still use after a refused submit is never
 * reused; before, it also stayed in FERRY_STREAM_BOUNCE_MB's count (and was
 * never freed: LeakSanitizer), so each refused stream shrank the budget for
 * good and later transfers took ferry's staging threads, which fail under
 * FERRY_SIM_STALL_ON_WAIT (ctest test_stream_stall: fails before). */
static void lost_bounce_buffers_leave_the_budget(void **state)
{
    struct fixture *f = *state;
    setenv("FERRY_STREAM_BOUNCE_MB", "4", 1);
    ferry_engine *e;
    assert_int_equal(ferry_engine_create(NULL, &e), 0);
    assert_int_equal(ferry_register_memory(e, f->dev, LEN, "sim:0", 0), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, f->target.name, &seg), 0);
    ferry_stream *other;
    assert_int_equal(f->sim->stream_create(1, &other), 0);
    struct ferry_request q = {FERRY_WRITE, f->dev, seg, f->target.addr, LEN};
    for (int i = 0; i < 2; i++) { /* refused: its buffer is lost */
        struct ferry_batch *b;
        assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
        assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", other), FERRY_EINVAL);
        ferry_batch_wait(b, -1); /* (it ends; how is refused_stream_ends_the_batch_once's) */
        ferry_batch_free(b);
        unsetenv("FERRY_STREAM_BOUNCE_MB"); /* (read by the first stream-ordered submit) */
    }
    pattern_fill(f->host, LEN, 55, 0);
    copy(f, FERRY_COPY_H2D, f->dev, f->host, LEN);
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit_on_stream(b, &q, 1, "sim:0", f->stream), 0);
    assert_int_equal(f->sim->stream_sync(f->stream), 0);
    assert_int_equal(ferry_batch_wait(b, -1), 0);
    assert_int_equal(child_target_check(&f->target, 0, LEN, 55), -1);
    ferry_batch_free(b);
    f->sim->stream_destroy(other);
    ferry_engine_destroy(e);
}

/* A batch with a request to another engine and requests to the engine's
 * own segment whose memory is device memory (a WRITE of host memory into
 * it, a READ of it into host memory): each lands, in stream order, and ends
 * COMPLETED with its own length.  Before, the own requests went to the
 * transfer (tcp to itself), where a ferry thread copied device memory while
 * the caller's stream waited: under FERRY_SIM_STALL_ON_WAIT that failed
 * (FERRY_EIO), on an H200 it could hang.  Now their copies go on the
 * caller's stream (stream_bounce_submit), so the test is in the stall list. */
static void mixed_own_and_other_segment(void **state)
{
    struct fixture *f = *state;
    char *own = NULL;
    assert_int_equal(ferry_mem_alloc(f->e, "sim:0", LEN, (void **)&own), 0);
    assert_int_equal(ferry_register_memory(f->e, own, LEN, "sim:0", 1), 0);
    ferry_segment_t self;
    assert_int_equal(ferry_open_segment(f->e, ferry_engine_segment_name(f->e), &self), 0);
    const size_t half = LEN / 2;
    pattern_fill(f->host, LEN, 61, 0);
    copy(f, FERRY_COPY_H2D, f->dev, f->host, LEN);
    assert_int_equal(f->sim->stream_sync(f->stream), 0); /* (before f->host changes) */
    pattern_fill(f->host, LEN, 62, 0);
    copy(f, FERRY_COPY_H2D, own + half, f->host + half, half); /* what the READ takes */
    char *got = malloc(LEN); /* host memory the READ lands in */
    assert_non_null(got);
    assert_int_equal(ferry_register_memory(f->e, got, LEN, "cpu", 0), 0);
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 3, &b), 0);
    struct ferry_request q[3] = {{FERRY_WRITE, f->dev, f->seg, f->target.addr, LEN},
                                 {FERRY_WRITE, f->host, self, (uint64_t)(uintptr_t)own, half},
                                 {FERRY_READ, got + half, self, (uint64_t)(uintptr_t)(own + half), half}};
    assert_int_equal(ferry_batch_submit_on_stream(b, q, 3, "sim:0", f->stream), 0);
    char *back = malloc(LEN);
    copy(f, FERRY_COPY_D2H, back, own, LEN);
    assert_int_equal(f->sim->stream_sync(f->stream), 0);
    assert_int_equal(ferry_batch_wait(b, -1), 0);
    for (size_t i = 0; i < 3; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        assert_int_equal(st.state, FERRY_COMPLETED);
        assert_int_equal(st.transferred, q[i].length);
    }
    assert_int_equal(child_target_check(&f->target, 0, LEN, 61), -1);
    assert_int_equal(pattern_check(back, half, 62, 0), -1);
    assert_int_equal(pattern_check(back + half, half, 62, half), -1);
    assert_int_equal(pattern_check(got + half, half, 62, half), -1);
    ferry_batch_free(b);
    free(back);
    assert_int_equal(ferry_unregister_memory(f->e, got), 0);
    free(got);
    assert_int_equal(ferry_unregister_memory(f->e, own), 0);
    ferry_mem_free(NULL, "sim:0", own, LEN);
}

/* Threads, each with a stream of its own, bounce WRITEs and READs of
 * device memory at once (the runner's lock, its bounce buffers and flag
 * slots shared); every byte lands where it belongs. */
#define THREADS 4
#define ROUNDS 8
struct racer {
    struct fixture *f;
    ferry_stream *st; /* (made before the threads start: sim refuses a stream while one waits) */
    int id;
    int failed;
};

static void *race(void *arg)
{
    struct racer *rc = arg;
    struct fixture *f = rc->f;
    const size_t part = LEN / THREADS;
    char *dev = f->dev + rc->id * part, *host = malloc(part), *back = malloc(part), *zeros = calloc(1, part);
    uint64_t off = rc->id * part;
    ferry_stream *st = rc->st;
    if (!host || !back || !zeros) {
        rc->failed = 1;
        goto out;
    }
    for (int round = 0; round < ROUNDS && !rc->failed; round++) {
        uint64_t seed = 100 + rc->id * ROUNDS + round;
        pattern_fill(host, part, seed, off);
        struct ferry_copy c = {dev, host, part}, clear = {dev, zeros, part}, out = {back, dev, part};
        struct ferry_request w = {FERRY_WRITE, dev, f->seg, f->target.addr + off, part};
        struct ferry_request r = {FERRY_READ, dev, f->seg, f->target.addr + off, part};
        struct ferry_batch *b = NULL, *b2 = NULL;
        int step = 0; /* the first that failed */
        if (f->sim->copy_async(st, FERRY_COPY_H2D, &c, 1) != 0)
            step = 2;
        else if (ferry_batch_alloc(f->e, 1, &b) != 0 || ferry_batch_submit_on_stream(b, &w, 1, "sim:0", st) != 0)
            step = 3;
        /* clear the device memory after the WRITE, then read it back */
        else if (f->sim->copy_async(st, FERRY_COPY_H2D, &clear, 1) != 0)
            step = 4;
        else if (ferry_batch_alloc(f->e, 1, &b2) != 0 || ferry_batch_submit_on_stream(b2, &r, 1, "sim:0", st) != 0)
            step = 5;
        else if (f->sim->copy_async(st, FERRY_COPY_D2H, &out, 1) != 0)
            step = 6;
        else if (f->sim->stream_sync(st) != 0)
            step = 7;
        else if (ferry_batch_wait(b, -1) != 0)
            step = 8;
        else if (ferry_batch_wait(b2, -1) != 0)
            step = 9;
        else if (pattern_check(back, part, seed, off) != -1)
            step = 10;
        if (step)
            fprintf(stderr, "thread %d round %d: step %d failed: %s\n", rc->id, round, step, ferry_last_error());
        rc->failed = step;
        if (step && step < 7)
            f->sim->stream_sync(st);
        ferry_batch_free(b);
        ferry_batch_free(b2);
    }
out:
    free(host);
    free(back);
    free(zeros);
    return NULL;
}

static void threads_on_streams_of_their_own(void **state)
{
    struct fixture *f = *state;
    pthread_t th[THREADS];
    struct racer rc[THREADS];
    for (int i = 0; i < THREADS; i++) {
        rc[i] = (struct racer){f, NULL, i, 0};
        assert_int_equal(f->sim->stream_create(0, &rc[i].st), 0);
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, race, &rc[i]), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < THREADS; i++) {
        f->sim->stream_destroy(rc[i].st);
        assert_int_equal(rc[i].failed, 0);
    }
}

/* A bounced batch with zero-length requests among READs into device memory
 * and a WRITE of host memory: each ends COMPLETED with its own length, the
 * bytes where they belong. */
static void zero_length_requests_in_a_bounced_batch(void **state)
{
    struct fixture *f = *state;
    pattern_fill(f->host, LEN, 44, 0); /* (the target holds TSEED) */
    struct ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 5, &b), 0);
    struct ferry_request q[5] = {{FERRY_READ, f->dev, f->seg, f->target.addr, 0},
                                 {FERRY_READ, f->dev, f->seg, f->target.addr, LEN / 4},
                                 {FERRY_WRITE, f->host + LEN / 2, f->seg, f->target.addr + LEN / 2, 0},
                                 {FERRY_WRITE, f->host + LEN / 2, f->seg, f->target.addr + LEN / 2, LEN / 4},
                                 {FERRY_READ, f->dev + LEN / 4, f->seg, f->target.addr + LEN / 4, 0}};
    assert_int_equal(ferry_batch_submit_on_stream(b, q, 5, "sim:0", f->stream), 0);
    char *back = malloc(LEN / 4);
    copy(f, FERRY_COPY_D2H, back, f->dev, LEN / 4);
    assert_int_equal(f->sim->stream_sync(f->stream), 0);
    assert_int_equal(ferry_batch_wait(b, -1), 0);
    for (size_t i = 0; i < 5; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        assert_int_equal(st.state, FERRY_COMPLETED);
        assert_int_equal(st.transferred, q[i].length);
    }
    assert_int_equal(pattern_check(back, LEN / 4, TSEED, 0), -1);
    assert_int_equal(child_target_check(&f->target, LEN / 2, LEN / 4, 44), -1);
    ferry_batch_free(b);
    free(back);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(write_starts_and_ends_in_stream_order, setup, teardown),
        cmocka_unit_test_setup_teardown(read_lands_before_later_copies, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_arguments_enqueue_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(failed_transfer_releases_the_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(to_its_own_segment, setup, teardown),
        cmocka_unit_test_setup_teardown(read_from_its_own_segment_in_stream_order, setup, teardown),
        cmocka_unit_test_setup_teardown(own_segment_ranges_are_checked, setup, teardown),
        cmocka_unit_test_setup_teardown(to_another_engine_of_this_process, setup, teardown),
        cmocka_unit_test_setup_teardown(engine_destroyed_before_own_copies_ran, setup, teardown),
        cmocka_unit_test_setup_teardown(engine_destroyed_before_the_stream_reaches_it, setup, teardown),
        cmocka_unit_test_setup_teardown(mixed_batches_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(failed_read_into_device_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(engine_destroyed_before_a_device_read, setup, teardown),
        cmocka_unit_test_setup_teardown(bounce_limit_and_bad_value, setup, teardown),
        cmocka_unit_test_setup_teardown(refused_stream_ends_the_batch_once, setup, teardown),
        cmocka_unit_test_setup_teardown(lost_bounce_buffers_leave_the_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(zero_length_requests_in_a_bounced_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(mixed_own_and_other_segment, setup, teardown),
        cmocka_unit_test_setup_teardown(threads_on_streams_of_their_own, setup, teardown),
    };
    /* ferry's own device work while a stream waits fails under the stall
     * (ctest test_stream_stall): a target engine of this process has some */
    const struct CMUnitTest stall[] = {
        cmocka_unit_test_setup_teardown(write_starts_and_ends_in_stream_order, setup, teardown),
        cmocka_unit_test_setup_teardown(read_lands_before_later_copies, setup, teardown),
        cmocka_unit_test_setup_teardown(failed_transfer_releases_the_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(to_its_own_segment, setup, teardown),
        cmocka_unit_test_setup_teardown(read_from_its_own_segment_in_stream_order, setup, teardown),
        cmocka_unit_test_setup_teardown(mixed_batches_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(failed_read_into_device_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(engine_destroyed_before_a_device_read, setup, teardown),
        cmocka_unit_test_setup_teardown(bounce_limit_and_bad_value, setup, teardown),
        cmocka_unit_test_setup_teardown(refused_stream_ends_the_batch_once, setup, teardown),
        cmocka_unit_test_setup_teardown(lost_bounce_buffers_leave_the_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(zero_length_requests_in_a_bounced_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(mixed_own_and_other_segment, setup, teardown),
    };
    if (getenv("FERRY_SIM_STALL_ON_WAIT"))
        return cmocka_run_group_tests(stall, NULL, NULL);
    return cmocka_run_group_tests(tests, NULL, NULL);
}

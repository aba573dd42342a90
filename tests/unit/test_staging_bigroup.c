/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_staging_bigroup.c — FERRY_STAGING_GROUP and FERRY_STAGING_GROUP_FIRST:
 * frames submitted together form groups of up to that many frames (the
 * first group of a round up to GROUP_FIRST); a group goes in one
 * copy_async call, however many copies (up to 16 x 64: on CUDA one launch
 * of the 1,024-copy kernel), and retires with one wait; a bad address in
 * one frame of such a group fails that frame only; bad values of the knobs
 * fail pool creation.  FERRY_STAGING_MARK_STREAMS=0: each group on its
 * leader's own stream; the default: a round's groups one after another on
 * one stream, each followed by its mark, retired one by one (a group held
 * on the device does not hold back those before it), a failure there
 * (on the device, or to enqueue) failing the bad frame only.
 * The default first group (auto) takes two frames that fit in half a
 * chunk, one larger frame alone.  FERRY_STAGING_READ_GROUP_BYTES (4 MiB by
 * default): scatters grouped by bytes (up to 128 copies), their first group
 * too; gathers as before; 0: scatters grouped as gathers.
 * FERRY_STAGING_CHAIN_BYTES: a round of that many bytes of gathers taken
 * while nothing was in flight goes as on a mark stream (lanes of them with
 * FERRY_STAGING_CHAIN_LANES); a round taken while copies are in flight
 * does not.
 * On the strict sim device, with copy_async wrapped to record each call's
 * stream and copies.  Deterministic: the frames go in one staging_submit_list
 * on a fresh pool, so the submitting thread issues them as one round.
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
#define PIECES 64u   /* a full frame */
#define NFRAMES 8u
#define CALLS_MAX 64

struct frame_slot {
    struct xfer_frame f;
    struct xfer_piece pieces[PIECES];
    int err;
    char msg[200];
};

static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned ended;
    size_t ncalls;
    ferry_stream *stream[CALLS_MAX];   /* each copy_async call's stream and copies */
    size_t copies[CALLS_MAX];
    size_t marked[CALLS_MAX];          /* the calls a stream_mark on the same stream followed */
    size_t nmarks;
    size_t hold_call;                  /* this call waits on the device for `gate` (0: none) */
    size_t fail_call;                  /* this call fails to enqueue (0: none) */
    int mark_rc;                       /* what stream_mark answers without marking (0: it marks) */
} t = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, {0}, {0}, {0}, 0, 0, 0, 0};

static volatile uint32_t *gate; /* sim host memory: the held call's copies start once it is 1 */
static const char *mark_streams = "0"; /* FERRY_STAGING_MARK_STREAMS of the next run */
static const char *read_group = "";    /* FERRY_STAGING_READ_GROUP_BYTES of the next run */
static const char *read_first = "";    /* FERRY_STAGING_READ_GROUP_FIRST_BYTES of the next run */
static const char *chain_bytes = "";   /* FERRY_STAGING_CHAIN_BYTES of the next run */
static const char *chain_lanes = "";   /* FERRY_STAGING_CHAIN_LANES of the next run */
static unsigned split;                 /* 0, or the next run's frames from this one on go in a second submit */
static unsigned held_frames = 1;       /* frames the held call (hold_call) holds back */
static size_t chunk_bytes = 1u << 20;  /* the next run's pool's chunks */

static const struct ferry_device_ops *sim;
static struct ferry_device_ops recording; /* sim, with copy_async recorded */
static struct frame_slot slot[NFRAMES];

static int recording_copy_async(ferry_stream *s, enum ferry_copy_dir dir, const struct ferry_copy *c, size_t n)
{
    pthread_mutex_lock(&t.lock);
    if (t.ncalls < CALLS_MAX) {
        t.stream[t.ncalls] = s;
        t.copies[t.ncalls] = n;
    }
    size_t call = ++t.ncalls;
    pthread_mutex_unlock(&t.lock);
    if (call == t.fail_call)
        return ferry_fail(FERRY_EIO, "test: copy call %zu refused", call);
    if (call == t.hold_call)
        assert_int_equal(sim->stream_wait_flag(0, s, gate, 1), 0);
    return sim->copy_async(s, dir, c, n);
}

static int recording_stream_mark(ferry_stream *s, volatile uint32_t *flag, uint32_t value)
{
    if (t.mark_rc)
        return ferry_fail(t.mark_rc, "test: no marks");
    pthread_mutex_lock(&t.lock);
    if (t.nmarks < CALLS_MAX && t.ncalls && t.stream[t.ncalls - 1] == s)
        t.marked[t.nmarks++] = t.ncalls;
    pthread_mutex_unlock(&t.lock);
    return sim->stream_mark(s, flag, value);
}

static unsigned char pattern(size_t i)
{
    return (unsigned char)(i * 13 + 5);
}

static void frame_ended(struct xfer_frame *f, int err, uint64_t refused, const char *msg)
{
    struct frame_slot *s = f->owner;
    pthread_mutex_lock(&t.lock);
    s->err = err ? err : refused ? FERRY_EIO : 0;
    snprintf(s->msg, sizeof s->msg, "%s", msg ? msg : "");
    t.ended++;
    pthread_cond_broadcast(&t.cond);
    pthread_mutex_unlock(&t.lock);
}

/* The "wire" ends a gathered WRITE frame at once, its bytes checked; a
 * READ frame's payload "arrives" at once (the pattern, into its chunk). */
static int bad_bytes;
static uint8_t opcode = XFER_WRITE; /* of the next run's frames */
static void wire_send(void *ctx, struct xfer_frame *w)
{
    (void)ctx;
    for (uint32_t i = 0; i < w->npieces; i++)
        for (size_t k = 0; k < BLOCK; k++) {
            unsigned char *b = (unsigned char *)w->pieces[i].local + k;
            if (w->opcode == XFER_READ)
                *b = pattern(w->pieces[i].remote + k);
            else
                bad_bytes += *b != pattern(w->pieces[i].remote + k);
        }
    w->complete(w, 0, 0, "");
}

/* Gathers NFRAMES full frames of dev (frame `freed` on device memory freed
 * before, or none if NFRAMES) through a pool with FERRY_STAGING_GROUP=group
 * and FERRY_STAGING_GROUP_FIRST=first ("": the defaults). */
static void run(const char *group, const char *first, unsigned freed)
{
    const size_t span = (size_t)NFRAMES * PIECES * BLOCK;
    char *dev, *gone;
    char *host = malloc(span);
    assert_non_null(host);
    for (size_t k = 0; k < span; k++)
        host[k] = opcode == XFER_READ ? 0 : (char)pattern(k);
    assert_int_equal(test_device_span(sim, host, span, PIECES * BLOCK, &dev, &gone), 0);
    t.ended = 0;
    t.ncalls = t.nmarks = 0;
    bad_bytes = 0;
    uint64_t deadline = now_ns() + 120000000000ull;
    for (unsigned f = 0; f < NFRAMES; f++) {
        struct frame_slot *s = &slot[f];
        memset(s, 0, sizeof *s);
        for (uint32_t i = 0; i < PIECES; i++) {
            uint64_t off = ((uint64_t)f * PIECES + i) * BLOCK;
            char *local = f == freed ? gone + (size_t)i * BLOCK : dev + off;
            s->pieces[i] = (struct xfer_piece){local, off, BLOCK, i};
        }
        s->f = (struct xfer_frame){.opcode = opcode, .npieces = PIECES, .pieces = s->pieces,
                                   .bytes = PIECES * BLOCK, .deadline_ns = deadline, .complete = frame_ended,
                                   .owner = s, .next = f + 1 < NFRAMES && f + 1 != split ? &slot[f + 1].f : NULL};
    }
    setenv("FERRY_STAGING_GROUP", group, 1);
    setenv("FERRY_STAGING_GROUP_FIRST", first, 1);
    setenv("FERRY_STAGING_MARK_STREAMS", mark_streams, 1);
    setenv("FERRY_STAGING_READ_GROUP_BYTES", read_group, 1);
    setenv("FERRY_STAGING_READ_GROUP_FIRST_BYTES", read_first, 1);
    setenv("FERRY_STAGING_CHAIN_BYTES", chain_bytes, 1);
    setenv("FERRY_STAGING_CHAIN_LANES", chain_lanes, 1);
    struct staging_pool *pool;
    void *base;
    size_t len;
    int rc = staging_pool_create(&recording, 0, chunk_bytes, NFRAMES, wire_send, NULL, &pool, &base, &len);
    unsetenv("FERRY_STAGING_GROUP");
    unsetenv("FERRY_STAGING_GROUP_FIRST");
    unsetenv("FERRY_STAGING_MARK_STREAMS");
    unsetenv("FERRY_STAGING_READ_GROUP_BYTES");
    unsetenv("FERRY_STAGING_READ_GROUP_FIRST_BYTES");
    unsetenv("FERRY_STAGING_CHAIN_BYTES");
    unsetenv("FERRY_STAGING_CHAIN_LANES");
    assert_int_equal(rc, 0);
    staging_submit_list(pool, &slot[0].f);
    if (split) /* the first submit's copies are issued (in the FIFO) when it returns */
        staging_submit_list(pool, &slot[split].f);
    pthread_mutex_lock(&t.lock);
    if (t.hold_call) { /* every frame but those the held call holds back ends while it waits on the device */
        struct timespec until = timespec_in_ms(CLOCK_REALTIME, 60000);
        while (t.ended < NFRAMES - held_frames && pthread_cond_timedwait(&t.cond, &t.lock, &until) == 0)
            ;
        unsigned ended = t.ended;
        pthread_mutex_unlock(&t.lock);
        ferry_flag_set(gate, 1); /* let it go, so the pool can stop, before any assertion */
        pthread_mutex_lock(&t.lock);
        while (t.ended < NFRAMES)
            pthread_cond_wait(&t.cond, &t.lock);
        pthread_mutex_unlock(&t.lock);
        staging_pool_destroy(pool);
        sim->mem_free(0, dev);
        free(host);
        assert_int_equal(ended, NFRAMES - held_frames);
        assert_int_equal(slot[NFRAMES - 1].err, 0);
        assert_int_equal(bad_bytes, 0);
        return;
    }
    while (t.ended < NFRAMES)
        pthread_cond_wait(&t.cond, &t.lock);
    pthread_mutex_unlock(&t.lock);
    if (opcode == XFER_READ) { /* every READ frame ended: its bytes are in device memory */
        struct ferry_copy back = {host, dev, span};
        assert_int_equal(ferry_device_copy_sync(sim, 0, FERRY_COPY_D2H, &back, 1), 0);
        for (size_t k = 0; k < span; k++)
            bad_bytes += (unsigned char)host[k] != pattern(k);
    }
    staging_pool_destroy(pool);
    sim->mem_free(0, dev);
    free(host);
    for (unsigned f = 0; f < NFRAMES; f++)
        if (f != freed && slot[f].err)
            fail_msg("frame %u failed: %s", f, slot[f].msg);
    assert_int_equal(bad_bytes, 0);
}

/* 2, first 2, no mark streams: groups of two frames, each one call of 128
 * copies on a stream of its own. */
static void defaults_groups_of_two(void **state)
{
    (void)state;
    run("", "2", NFRAMES);
    assert_int_equal(t.ncalls, NFRAMES / 2);
    for (unsigned i = 0; i < NFRAMES / 2; i++) {
        assert_int_equal(t.copies[i], 2 * PIECES);
        if (i)
            assert_ptr_not_equal(t.stream[i], t.stream[i - 1]);
    }
}

/* 16, first 2: the first group two frames, the other six one group in
 * one call of 384 copies on another stream. */
static void first_two_then_one_call(void **state)
{
    (void)state;
    run("16", "2", NFRAMES);
    assert_int_equal(t.ncalls, 2);
    assert_int_equal(t.copies[0], 2 * PIECES);
    assert_int_equal(t.copies[1], (NFRAMES - 2) * PIECES);
    assert_ptr_not_equal(t.stream[0], t.stream[1]);
}

/* 16 and first 16: the eight frames are one group, one call of 512. */
static void one_call_for_the_round(void **state)
{
    (void)state;
    run("16", "16", NFRAMES);
    assert_int_equal(t.ncalls, 1);
    assert_int_equal(t.copies[0], NFRAMES * PIECES);
}

/* 4, first 2: groups of 2, 4, 2 frames, each one call on its own stream. */
static void group_of_four_after_a_first_of_two(void **state)
{
    (void)state;
    run("4", "2", NFRAMES);
    assert_int_equal(t.ncalls, 3);
    assert_int_equal(t.copies[0], 2 * PIECES);
    assert_int_equal(t.copies[1], 4 * PIECES);
    assert_int_equal(t.copies[2], 2 * PIECES);
    assert_ptr_not_equal(t.stream[0], t.stream[1]);
    assert_ptr_not_equal(t.stream[1], t.stream[2]);
}

/* 1: every frame a group of its own (a first group of 2 cannot exceed it). */
static void group_of_one(void **state)
{
    (void)state;
    run("1", "", NFRAMES);
    assert_int_equal(t.ncalls, NFRAMES);
    for (unsigned i = 0; i < NFRAMES; i++)
        assert_int_equal(t.copies[i], PIECES);
}

/* A frame on freed memory in a group of eight fails alone (the group goes
 * again frame by frame); the other seven arrive. */
static void bad_frame_in_a_big_group(void **state)
{
    (void)state;
    run("16", "16", 2);
    assert_int_equal(slot[2].err, FERRY_EIO);
    assert_non_null(strstr(slot[2].msg, "device-to-host copy"));
    assert_int_equal(t.ncalls, 1 + NFRAMES); /* the group's call, then one per frame */
}

/* The defaults (mark streams 0, group 2, first auto): the frames are
 * 256 KiB, so two fit in half a 1 MiB chunk and the first group takes two
 * too: four groups of two frames, each on its leader chunk's own stream,
 * no marks (one mark stream cost the gather pipeline a fifth of its speed
 * on 2 x H200). */
static void defaults_small_frames_in_twos_unmarked(void **state)
{
    (void)state;
    mark_streams = "";
    run("", "", NFRAMES);
    assert_int_equal(t.ncalls, NFRAMES / 2);
    assert_int_equal(t.nmarks, 0);
    for (unsigned i = 0; i < NFRAMES / 2; i++)
        assert_int_equal(t.copies[i], 2 * PIECES);
    for (unsigned i = 1; i < NFRAMES / 2; i++)
        assert_ptr_not_equal(t.stream[i], t.stream[i - 1]);
}

/* First 1 (the old default): groups of 1, 2, 2, 2 and 1 frames. */
static void first_one_then_twos(void **state)
{
    (void)state;
    run("", "1", NFRAMES);
    assert_int_equal(t.ncalls, 5);
    static const size_t frames[] = {1, 2, 2, 2, 1};
    for (unsigned i = 0; i < 5; i++)
        assert_int_equal(t.copies[i], frames[i] * PIECES);
}

/* auto with frames of more than half a chunk: the first group one frame
 * (the wire starts after one frame's gather), then twos within a chunk's
 * bytes: a pool of 512 KiB chunks, the same 256 KiB frames. */
static void auto_first_one_for_large_frames(void **state)
{
    (void)state;
    chunk_bytes = 512u << 10;
    run("", "", NFRAMES);
    chunk_bytes = 1u << 20;
    assert_int_equal(t.ncalls, 5);
    static const size_t frames[] = {1, 2, 2, 2, 1};
    for (unsigned i = 0; i < 5; i++)
        assert_int_equal(t.copies[i], frames[i] * PIECES);
}

/* Mark streams, groups of one: the round's eight calls on one stream, each
 * followed by its mark; every frame arrives. */
static void marks_one_stream_a_mark_per_group(void **state)
{
    (void)state;
    mark_streams = "1";
    run("1", "1", NFRAMES);
    assert_int_equal(t.ncalls, NFRAMES);
    assert_int_equal(t.nmarks, NFRAMES);
    for (unsigned i = 0; i < NFRAMES; i++) {
        assert_int_equal(t.marked[i], i + 1);
        assert_ptr_equal(t.stream[i], t.stream[0]);
    }
}

/* The last frame's copies held on the device (the stream waits for a
 * flag before them): the seven before it on the same stream end anyway. */
static void marks_held_group_holds_back_no_earlier_one(void **state)
{
    (void)state;
    mark_streams = "1";
    *gate = 0;
    t.hold_call = NFRAMES;
    run("1", "1", NFRAMES);
    t.hold_call = 0;
    assert_ptr_equal(t.stream[NFRAMES - 1], t.stream[0]);
}

/* A frame on freed memory among groups of one on a mark stream: the stream
 * fails there, the frames after it on the stream ran nothing and go again
 * alone; only the bad one fails. */
static void marks_bad_frame_fails_alone(void **state)
{
    (void)state;
    mark_streams = "2";
    run("1", "1", 2);
    assert_int_equal(slot[2].err, FERRY_EIO);
    assert_non_null(strstr(slot[2].msg, "device-to-host copy"));
    for (unsigned f = 0; f < NFRAMES; f++)
        if (f != 2)
            assert_int_equal(slot[f].err, 0);
}

/* The fourth call fails to enqueue on the mark stream: its frame goes
 * again alone (and arrives), so does every frame after it on the stream. */
static void marks_refused_enqueue_goes_again(void **state)
{
    (void)state;
    mark_streams = "1";
    t.fail_call = 4;
    run("1", "1", NFRAMES);
    t.fail_call = 0;
    assert_true(t.ncalls > NFRAMES);
    assert_ptr_not_equal(t.stream[NFRAMES], t.stream[0]); /* again on its chunk's own stream */
}

/* READ, mark streams on: the eight payloads arrive in one round, and their
 * scatters (groups of two frames: 128 copies, the cap of a scatter group)
 * go on their chunks' own streams, unmarked (on one mark stream the frames
 * a batch's connections bring together were copied one after another);
 * the bytes land. */
static void marks_not_for_scatters(void **state)
{
    (void)state;
    mark_streams = "1";
    opcode = XFER_READ;
    run("", "", NFRAMES);
    assert_int_equal(t.ncalls, NFRAMES / 2);
    assert_int_equal(t.nmarks, 0);
    for (unsigned i = 1; i < NFRAMES / 2; i++)
        assert_ptr_not_equal(t.stream[i], t.stream[i - 1]);
}

/* FERRY_STAGING_READ_GROUP_BYTES=4194304 (the default): the eight 256 KiB
 * payloads that arrived together scatter in groups of two frames (128
 * copies, the cap), the first group too, not 1, 2, 2, 2, 1 as gathers
 * with a first group of one; the bytes land. */
static void read_groups_by_bytes(void **state)
{
    (void)state;
    read_group = "4194304";
    opcode = XFER_READ;
    run("", "1", NFRAMES);
    assert_int_equal(t.ncalls, NFRAMES / 2);
    for (unsigned i = 0; i < NFRAMES / 2; i++)
        assert_int_equal(t.copies[i], 2 * PIECES);
}

/* FERRY_STAGING_READ_GROUP_FIRST_BYTES=262144: the round's first scatter
 * group one 256 KiB frame, the later ones two (the copy cap): 1, 2, 2, 2, 1. */
static void read_group_first_smaller(void **state)
{
    (void)state;
    read_first = "262144";
    opcode = XFER_READ;
    run("", "", NFRAMES);
    assert_int_equal(t.ncalls, 5);
    static const size_t frames[] = {1, 2, 2, 2, 1};
    for (unsigned i = 0; i < 5; i++)
        assert_int_equal(t.copies[i], frames[i] * PIECES);
}

/* 0: scatters grouped as gathers (first group of one: 1, 2, 2, 2, 1). */
static void read_groups_off(void **state)
{
    (void)state;
    read_group = "0";
    opcode = XFER_READ;
    run("", "1", NFRAMES);
    assert_int_equal(t.ncalls, 5);
    static const size_t frames[] = {1, 2, 2, 2, 1};
    for (unsigned i = 0; i < 5; i++)
        assert_int_equal(t.copies[i], frames[i] * PIECES);
}

/* 262144: one frame's bytes, so a frame a group. */
static void read_groups_bytes_cap(void **state)
{
    (void)state;
    read_group = "262144";
    opcode = XFER_READ;
    run("", "", NFRAMES);
    assert_int_equal(t.ncalls, NFRAMES);
    for (unsigned i = 0; i < NFRAMES; i++)
        assert_int_equal(t.copies[i], PIECES);
}

/* Gathers keep their rule (1, 2, 2, 2, 1 with a first group of one) with
 * it set. */
static void read_groups_leave_gathers(void **state)
{
    (void)state;
    read_group = "4194304";
    run("", "1", NFRAMES);
    assert_int_equal(t.ncalls, 5);
    static const size_t frames[] = {1, 2, 2, 2, 1};
    for (unsigned i = 0; i < 5; i++)
        assert_int_equal(t.copies[i], frames[i] * PIECES);
}

/* A device without marks (ENOTSUP): the stream is queried instead. */
static void marks_unsupported_query_instead(void **state)
{
    (void)state;
    mark_streams = "1";
    t.mark_rc = FERRY_ENOTSUP;
    run("2", "1", NFRAMES);
    t.mark_rc = 0;
    assert_int_equal(t.nmarks, 0);
}

/* FERRY_STAGING_CHAIN_BYTES=2097152, one lane, a fresh pool (nothing in
 * flight): the round's 2 MiB of gathers are chained, its four groups of two
 * frames one after another on one stream, each followed by its mark; the bytes
 * arrive.  The default (4 MiB) leaves such a round on the chunks' streams
 * (defaults_small_frames_in_twos_unmarked). */
static void chain_idle_round_on_one_stream(void **state)
{
    (void)state;
    chain_bytes = "2097152";
    chain_lanes = "1";
    run("", "", NFRAMES);
    assert_int_equal(t.ncalls, NFRAMES / 2);
    assert_int_equal(t.nmarks, NFRAMES / 2);
    for (unsigned i = 0; i < NFRAMES / 2; i++) {
        assert_int_equal(t.copies[i], 2 * PIECES);
        assert_int_equal(t.marked[i], i + 1);
        assert_ptr_equal(t.stream[i], t.stream[0]);
    }
}

/* A round of less than FERRY_STAGING_CHAIN_BYTES is not chained. */
static void chain_not_below_its_bytes(void **state)
{
    (void)state;
    chain_bytes = "2097153";
    run("", "", NFRAMES);
    assert_int_equal(t.ncalls, NFRAMES / 2);
    assert_int_equal(t.nmarks, 0);
    for (unsigned i = 1; i < NFRAMES / 2; i++)
        assert_ptr_not_equal(t.stream[i], t.stream[i - 1]);
}

/* FERRY_STAGING_CHAIN_LANES (2 by default): the chained groups take two
 * streams in turn, each group marked. */
static void chain_two_lanes_in_turn(void **state)
{
    (void)state;
    chain_bytes = "1";
    run("", "", NFRAMES);
    assert_int_equal(t.ncalls, NFRAMES / 2);
    assert_int_equal(t.nmarks, NFRAMES / 2);
    assert_ptr_not_equal(t.stream[0], t.stream[1]);
    assert_ptr_equal(t.stream[2], t.stream[0]);
    assert_ptr_equal(t.stream[3], t.stream[1]);
}

/* Two submits of 1 MiB (chained from 1 MiB, one lane), the first one's first call
 * held on the device: the first round (fresh pool) is chained, its two
 * groups on one stream; the second, issued while those are in flight, is
 * not: its groups go on their chunks' own streams, unmarked (no frame
 * ends while the first call is held: groups retire oldest first). */
static void chain_only_when_nothing_in_flight(void **state)
{
    (void)state;
    chain_bytes = "1048576";
    chain_lanes = "1";
    split = NFRAMES / 2;
    held_frames = NFRAMES;
    *gate = 0;
    t.hold_call = 1;
    run("", "", NFRAMES);
    assert_int_equal(t.ncalls, 4);
    assert_int_equal(t.nmarks, 2);
    assert_ptr_equal(t.stream[1], t.stream[0]);
    assert_ptr_not_equal(t.stream[2], t.stream[0]);
    assert_ptr_not_equal(t.stream[3], t.stream[0]);
    assert_ptr_not_equal(t.stream[3], t.stream[2]);
}

/* A frame on freed memory in a chained round (groups of one, one lane): it fails
 * alone, the frames after it on the chain go again alone and arrive. */
static void chain_bad_frame_fails_alone(void **state)
{
    (void)state;
    chain_bytes = "1";
    chain_lanes = "1";
    run("1", "1", 2);
    assert_true(t.nmarks >= 2);
    assert_ptr_equal(t.stream[1], t.stream[0]);
    assert_int_equal(slot[2].err, FERRY_EIO);
    assert_non_null(strstr(slot[2].msg, "device-to-host copy"));
    for (unsigned f = 0; f < NFRAMES; f++)
        if (f != 2)
            assert_int_equal(slot[f].err, 0);
}

/* A device without marks: a chained round's groups are queried instead,
 * and later rounds go on their chunks' streams; the bytes arrive. */
static void chain_unsupported_marks(void **state)
{
    (void)state;
    chain_bytes = "1";
    t.mark_rc = FERRY_ENOTSUP;
    run("", "", NFRAMES);
    t.mark_rc = 0;
    assert_int_equal(t.nmarks, 0);
}

/* name=bad[i] fails pool creation with FERRY_EINVAL naming it. */
static void refuse_all(const char *name, const char *const *bad, size_t nbad)
{
    for (size_t i = 0; i < nbad; i++) {
        struct staging_pool *pool = NULL;
        void *base;
        size_t len;
        setenv(name, bad[i], 1);
        int rc = staging_pool_create(sim, 0, 1u << 20, 2, wire_send, NULL, &pool, &base, &len);
        unsetenv(name);
        if (rc != FERRY_EINVAL)
            fail_msg("%s=%s: %d", name, bad[i], rc);
        assert_null(pool);
        assert_non_null(strstr(ferry_last_error(), name));
        assert_non_null(strstr(ferry_last_error(), bad[i]));
    }
}

static void knob_refusals(void **state)
{
    (void)state;
    static const char *const bad[] = {"0", "17", "-2", "two", "4x"};
    static const char *const bad_marks[] = {"5", "-1", "one", "2x", " 1"};
    refuse_all("FERRY_STAGING_GROUP", bad, 5);
    refuse_all("FERRY_STAGING_GROUP_FIRST", bad, 5);
    refuse_all("FERRY_STAGING_MARK_STREAMS", bad_marks, 5);
    static const char *const bad_bytes_read[] = {"67108865", "-1", "4M", "lots", " 1"};
    refuse_all("FERRY_STAGING_READ_GROUP_BYTES", bad_bytes_read, 5);
    refuse_all("FERRY_STAGING_READ_GROUP_FIRST_BYTES", bad_bytes_read, 5);
    static const char *const bad_chain[] = {"1073741825", "-1", "4M", "lots", " 1"};
    refuse_all("FERRY_STAGING_CHAIN_BYTES", bad_chain, 5);
    static const char *const bad_lanes[] = {"0", "5", "-1", "two", "1x"};
    refuse_all("FERRY_STAGING_CHAIN_LANES", bad_lanes, 5);
}

/* Each test starts with the recording plain and the mark streams off. */
static int reset(void **state)
{
    (void)state;
    t.hold_call = t.fail_call = 0;
    t.mark_rc = 0;
    mark_streams = "0";
    read_group = read_first = "";
    chain_bytes = chain_lanes = "";
    split = 0;
    held_frames = 1;
    opcode = XFER_WRITE;
    return 0;
}

int main(void)
{
    sim = ferry_device_find("sim");
    if (!sim || sim->init()) {
        printf("SKIPPED: no sim device: %s\n", ferry_last_error());
        return 77;
    }
    recording = *sim;
    recording.copy_async = recording_copy_async;
    recording.stream_mark = recording_stream_mark;
    void *g = NULL;
    if (sim->host_alloc(sizeof *gate, &g) || !g)
        return 1;
    gate = g;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(defaults_groups_of_two, reset),
        cmocka_unit_test_setup(first_two_then_one_call, reset),
        cmocka_unit_test_setup(one_call_for_the_round, reset),
        cmocka_unit_test_setup(group_of_four_after_a_first_of_two, reset),
        cmocka_unit_test_setup(group_of_one, reset),
        cmocka_unit_test_setup(bad_frame_in_a_big_group, reset),
        cmocka_unit_test_setup(defaults_small_frames_in_twos_unmarked, reset),
        cmocka_unit_test_setup(first_one_then_twos, reset),
        cmocka_unit_test_setup(auto_first_one_for_large_frames, reset),
        cmocka_unit_test_setup(marks_one_stream_a_mark_per_group, reset),
        cmocka_unit_test_setup(marks_held_group_holds_back_no_earlier_one, reset),
        cmocka_unit_test_setup(marks_bad_frame_fails_alone, reset),
        cmocka_unit_test_setup(marks_refused_enqueue_goes_again, reset),
        cmocka_unit_test_setup(marks_not_for_scatters, reset),
        cmocka_unit_test_setup(marks_unsupported_query_instead, reset),
        cmocka_unit_test_setup(read_groups_by_bytes, reset),
        cmocka_unit_test_setup(read_groups_bytes_cap, reset),
        cmocka_unit_test_setup(read_groups_off, reset),
        cmocka_unit_test_setup(read_group_first_smaller, reset),
        cmocka_unit_test_setup(read_groups_leave_gathers, reset),
        cmocka_unit_test_setup(chain_idle_round_on_one_stream, reset),
        cmocka_unit_test_setup(chain_not_below_its_bytes, reset),
        cmocka_unit_test_setup(chain_two_lanes_in_turn, reset),
        cmocka_unit_test_setup(chain_only_when_nothing_in_flight, reset),
        cmocka_unit_test_setup(chain_bad_frame_fails_alone, reset),
        cmocka_unit_test_setup(chain_unsupported_marks, reset),
        cmocka_unit_test_setup(knob_refusals, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

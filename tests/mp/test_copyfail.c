/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_copyfail.c — a tcp target whose device copies fail: its memory is on
 * the strict sim device, in a child process started with
 * FERRY_SIM_FAIL_COPY (sim.c), so its Nth copy job fails when waited for
 * ("N") or when started ("N:start"), as CUDA reports errors at sync and at
 * launch.  A cpu initiator WRITEs and READs batches of many small blocks
 * (two frames of 64 x 16 KiB, each served as four 256 KiB copy groups);
 * the frame holding the failed copy ends FAILED FERRY_EIO with a message
 * naming the device copy, the other frame completes with its data, the
 * connection survives (no FERRY_ECONN) and the next batch moves and
 * verifies; another initiator's connection, copying at the same time, is
 * not touched.  A raw peer checks the wire: the WRITE_ACK's status, the READ
 * trailer's status (the bytes no copy filled arrive as zeros, never as what
 * an earlier frame left in the target's bounce), and a reader that cannot
 * read that status gets the connection closed.  Every test starts its own
 * target, so copy numbers count from its start (its first job: the fill of
 * its memory).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <cmocka.h>

#include "rawpeer.h"
#include "testutil.h"

#define BLOCK (16u << 10)
#define FRAME 64u                 /* requests per frame: FERRY_COALESCE_MAX */
#define NREQ (2 * FRAME)
#define TSIZE (4u << 20)
#define TSEED 5
#define GUARD_MS 120000           /* a hang guard only */

struct fixture {
    struct child_target target;
    ferry_engine *e;
    ferry_segment_t seg;
    char *local;                  /* NREQ blocks of host memory */
};

/* A target whose sim copies fail as `faults` says (FERRY_SIM_FAIL_COPY). */
static void target_start(struct child_target *t, const char *faults)
{
    setenv("FERRY_SIM_FAIL_COPY", faults, 1);
    int rc = child_target_start(t, TSIZE, "sim:0", TSEED);
    unsetenv("FERRY_SIM_FAIL_COPY");
    assert_int_equal(rc, 0);
}

/* An initiator of f->target with one connection to it and frames of FRAME
 * blocks each (on any host: main sets FERRY_TCP_SPREAD=1). */
static void initiator_start(struct fixture *f)
{
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.tcp_connections = 1;
    cfg.slice_size = FRAME * BLOCK;
    cfg.coalesce_max = FRAME;
    assert_int_equal(ferry_engine_create(&cfg, &f->e), 0);
    f->local = malloc(NREQ * BLOCK);
    assert_non_null(f->local);
    assert_int_equal(ferry_register_memory(f->e, f->local, NREQ * BLOCK, "cpu", 0), 0);
    assert_int_equal(ferry_open_segment(f->e, f->target.name, &f->seg), 0);
}

static void start(struct fixture *f, const char *faults)
{
    memset(f, 0, sizeof *f);
    target_start(&f->target, faults);
    initiator_start(f);
}

static void initiator_stop(struct fixture *f)
{
    ferry_engine_destroy(f->e);
    free(f->local);
}

static void stop(struct fixture *f)
{
    initiator_stop(f);
    child_target_kill(&f->target);
}

/* Request i moves local block i to or from target block i. */
static ferry_batch *submit_blocks(struct fixture *f, int opcode, unsigned first, unsigned n)
{
    struct ferry_request r[NREQ];
    for (unsigned i = 0; i < n; i++)
        r[i] = (struct ferry_request){opcode, f->local + (first + i) * BLOCK, f->seg,
                                      f->target.addr + (first + i) * BLOCK, BLOCK};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, n, &b), 0);
    assert_int_equal(ferry_batch_submit(b, r, n), 0);
    return b;
}

static ferry_batch *run_batch(struct fixture *f, int opcode)
{
    ferry_batch *b = submit_blocks(f, opcode, 0, NREQ);
    int rc = ferry_batch_wait(b, GUARD_MS);
    assert_int_not_equal(rc, FERRY_ETIMEDOUT);
    return b;
}

/* Exactly one frame of the batch failed, every request of it FERRY_EIO
 * with a message naming the device copy; every other request completed.
 * Returns the index of the failed frame (0 or 1). */
static unsigned one_frame_failed(ferry_batch *b)
{
    unsigned failed = 0, frame = 0;
    for (unsigned i = 0; i < NREQ; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        if (st.state == FERRY_COMPLETED)
            continue;
        if (failed++ == 0) {
            print_message("request %u: %s (%s)\n", i, ferry_err_name(st.error), st.message);
            frame = i / FRAME;
        }
        assert_int_equal(st.state, FERRY_FAILED);
        assert_int_equal(st.error, FERRY_EIO); /* not FERRY_ECONN: the connection was not dropped */
        assert_non_null(strstr(st.message, "device copy"));
        assert_int_equal(i / FRAME, frame);
    }
    assert_int_equal(failed, FRAME);
    return frame;
}

/* READs every block back into local (through the same connection, so
 * the same target thread and stream that wrote them: no ordering through
 * another process that ThreadSanitizer cannot see). */
static void read_back(struct fixture *f)
{
    memset(f->local, 0, NREQ * BLOCK);
    ferry_batch *b = run_batch(f, FERRY_READ);
    assert_int_equal(ferry_batch_wait(b, GUARD_MS), 0);
    ferry_batch_free(b);
}

/* A WRITE batch where one copy fails, then one that moves everything. */
static void write_with_failure(const char *faults)
{
    struct fixture f;
    start(&f, faults);
    pattern_fill(f.local, NREQ * BLOCK, 2, 0);
    ferry_batch *b = run_batch(&f, FERRY_WRITE);
    unsigned bad = one_frame_failed(b);
    ferry_batch_free(b);
    unsigned good = 1 - bad;
    read_back(&f);
    assert_int_equal(pattern_check(f.local + good * FRAME * BLOCK, FRAME * BLOCK, 2, good * FRAME * BLOCK), -1);

    pattern_fill(f.local, NREQ * BLOCK, 3, 0);
    b = run_batch(&f, FERRY_WRITE);
    assert_int_equal(ferry_batch_wait(b, GUARD_MS), 0);
    ferry_batch_free(b);
    read_back(&f);
    assert_int_equal(pattern_check(f.local, NREQ * BLOCK, 3, 0), -1);
    stop(&f);
}

/* Each block of the failed frame holds its pattern (its copy ran before the
 * failure) or zeros (it did not): never another block's bytes.  Returns
 * how many blocks were zeros. */
static unsigned blocks_pattern_or_zero(const char *p, unsigned first_block, unsigned n)
{
    static const char zero[BLOCK];
    unsigned zeros = 0;
    for (unsigned k = first_block; k < first_block + n; k++) {
        const char *blk = p + (size_t)k * BLOCK;
        if (memcmp(blk, zero, BLOCK) == 0)
            zeros++;
        else
            assert_int_equal(pattern_check(blk, BLOCK, TSEED, (uint64_t)k * BLOCK), -1);
    }
    return zeros;
}

/* A READ batch where one copy fails, then one that moves everything. */
static void read_with_failure(const char *faults)
{
    struct fixture f;
    start(&f, faults);
    memset(f.local, 0x77, NREQ * BLOCK);
    ferry_batch *b = run_batch(&f, FERRY_READ);
    unsigned bad = one_frame_failed(b);
    ferry_batch_free(b);
    unsigned good = 1 - bad;
    assert_int_equal(pattern_check(f.local + good * FRAME * BLOCK, FRAME * BLOCK, TSEED, good * FRAME * BLOCK), -1);
    /* the failed copy's group, and those after it, came as zeros */
    assert_true(blocks_pattern_or_zero(f.local, bad * FRAME, FRAME) >= FRAME / 4);

    memset(f.local, 0x77, NREQ * BLOCK);
    b = run_batch(&f, FERRY_READ);
    assert_int_equal(ferry_batch_wait(b, GUARD_MS), 0);
    ferry_batch_free(b);
    assert_int_equal(pattern_check(f.local, NREQ * BLOCK, TSEED, 0), -1);
    stop(&f);
}

/* Copy jobs of the target: 1 fills its memory; each frame is 4 (one per
 * 256 KiB group); 7 is the second frame's second group. */
static void test_write_copy_fails_when_waited(void **state)
{
    (void)state;
    write_with_failure("7");
}

/* 4: the first frame's third group, rejected at its start. */
static void test_write_copy_fails_at_start(void **state)
{
    (void)state;
    write_with_failure("4:start");
}

static void test_read_copy_fails_when_waited(void **state)
{
    (void)state;
    read_with_failure("7");
}

static void test_read_copy_fails_at_start(void **state)
{
    (void)state;
    read_with_failure("4:start");
}

/* Both frames fail, each at its last group. */
static void test_write_two_failures(void **state)
{
    (void)state;
    struct fixture f;
    start(&f, "5,9");
    pattern_fill(f.local, NREQ * BLOCK, 2, 0);
    ferry_batch *b = run_batch(&f, FERRY_WRITE);
    for (unsigned i = 0; i < NREQ; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        assert_int_equal(st.state, FERRY_FAILED);
        assert_int_equal(st.error, FERRY_EIO);
    }
    ferry_batch_free(b);
    b = run_batch(&f, FERRY_WRITE);
    assert_int_equal(ferry_batch_wait(b, GUARD_MS), 0);
    ferry_batch_free(b);
    read_back(&f);
    assert_int_equal(pattern_check(f.local, NREQ * BLOCK, 2, 0), -1);
    stop(&f);
}

/* 2048 blocks (32 frames) WRITE into the target, whose third copy job (the
 * first frame's second group) fails; once that frame has ended, while the
 * next ones are on the wire or being copied, the target unregisters and
 * frees its memory: no hang, no crash (a touch of the freed memory would
 * crash the target); the first frame's requests end FAILED FERRY_EIO, each
 * other one COMPLETED or FAILED FERRY_ERANGE (refused: its memory went, or
 * was going while its frame was served) — never FERRY_ECONN; the target
 * lives on. */
static void test_write_unregistered_while_copies_fail(void **state)
{
    (void)state;
    enum { N = 2048 };
    struct child_target t;
    setenv("FERRY_SIM_FAIL_COPY", "3", 1);
    int rc = child_target_start(&t, (size_t)N * BLOCK, "sim:0", TSEED);
    unsetenv("FERRY_SIM_FAIL_COPY");
    assert_int_equal(rc, 0);
    struct ferry_config cfg;
    ferry_engine *e;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.tcp_connections = 1;
    cfg.slice_size = FRAME * BLOCK;
    cfg.coalesce_max = FRAME;
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    char *local = malloc((size_t)N * BLOCK);
    pattern_fill(local, (size_t)N * BLOCK, 6, 0);
    assert_int_equal(ferry_register_memory(e, local, (size_t)N * BLOCK, "cpu", 0), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, t.name, &seg), 0);
    struct ferry_request *r = calloc(N, sizeof *r);
    for (unsigned i = 0; i < N; i++)
        r[i] = (struct ferry_request){FERRY_WRITE, local + (size_t)i * BLOCK, seg, t.addr + (uint64_t)i * BLOCK,
                                      BLOCK};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(e, N, &b), 0);
    assert_int_equal(ferry_batch_submit(b, r, N), 0);
    uint64_t end = now_ms() + GUARD_MS;
    struct ferry_status st;
    do { /* the first frame has ended */
        assert_int_equal(ferry_batch_status(b, 0, &st), 0);
        assert_true(now_ms() < end);
        sched_yield();
    } while (st.state == FERRY_PENDING);
    assert_int_equal(child_target_unregister(&t), 0);
    assert_int_equal(child_target_free_device_memory(&t), 0);
    assert_int_not_equal(ferry_batch_wait(b, GUARD_MS), FERRY_ETIMEDOUT);
    unsigned completed = 0, refused = 0, failed = 0;
    for (unsigned i = 0; i < N; i++) {
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        if (i < FRAME) {
            assert_int_equal(st.state, FERRY_FAILED);
            assert_int_equal(st.error, FERRY_EIO);
            failed++;
        } else if (st.state == FERRY_COMPLETED) {
            completed++;
        } else {
            assert_int_equal(st.state, FERRY_FAILED);
            if (st.error != FERRY_ERANGE)
                fail_msg("request %u: %s (%s)", i, ferry_err_name(st.error), st.message);
            refused++;
        }
    }
    print_message("%u failed the copy, %u completed, %u refused\n", failed, completed, refused);
    char note[16];
    assert_int_equal(child_target_notification(&t, note, sizeof note), -1); /* alive, serving its control */
    ferry_batch_free(b);
    free(r);
    ferry_engine_destroy(e);
    free(local);
    child_target_kill(&t);
}

/* Ends every request of b and returns how many did not complete (each of
 * those FAILED FERRY_EIO). */
static unsigned count_eio(ferry_batch *b, unsigned n)
{
    assert_int_not_equal(ferry_batch_wait(b, GUARD_MS), FERRY_ETIMEDOUT);
    unsigned failed = 0;
    for (unsigned i = 0; i < n; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        if (st.state == FERRY_COMPLETED)
            continue;
        assert_int_equal(st.state, FERRY_FAILED);
        assert_int_equal(st.error, FERRY_EIO);
        failed++;
    }
    ferry_batch_free(b);
    return failed;
}

/* Two initiators, each with its own connection (so its own target thread
 * and device stream), WRITE one frame each at the same time, into the two
 * halves of the target's memory; the target's fifth copy job (the second
 * group of one of the frames, whichever) fails.  That frame ends FAILED
 * FERRY_EIO; the other initiator's completes and reads back intact; the
 * failed one's next try succeeds on its connection. */
static void test_failure_spares_other_connection(void **state)
{
    (void)state;
    struct fixture f, g;
    start(&f, "5");
    g = f;
    initiator_start(&g);
    pattern_fill(f.local, NREQ * BLOCK, 2, 0);
    pattern_fill(g.local, NREQ * BLOCK, 2, 0);
    ferry_batch *a = submit_blocks(&f, FERRY_WRITE, 0, FRAME), *b = submit_blocks(&g, FERRY_WRITE, FRAME, FRAME);
    unsigned fa = count_eio(a, FRAME), fb = count_eio(b, FRAME);
    print_message("first initiator: %u failed, second: %u failed\n", fa, fb);
    assert_true((fa == FRAME && fb == 0) || (fa == 0 && fb == FRAME));
    struct fixture *ok = fa ? &g : &f, *bad = fa ? &f : &g;
    unsigned ok_first = fa ? FRAME : 0, bad_first = fa ? 0 : FRAME;

    memset(ok->local, 0, NREQ * BLOCK);
    assert_int_equal(count_eio(submit_blocks(ok, FERRY_READ, ok_first, FRAME), FRAME), 0);
    assert_int_equal(pattern_check(ok->local + ok_first * BLOCK, FRAME * BLOCK, 2, ok_first * BLOCK), -1);
    assert_int_equal(count_eio(submit_blocks(bad, FERRY_WRITE, bad_first, FRAME), FRAME), 0);
    memset(bad->local, 0, NREQ * BLOCK);
    assert_int_equal(count_eio(submit_blocks(bad, FERRY_READ, bad_first, FRAME), FRAME), 0);
    assert_int_equal(pattern_check(bad->local + bad_first * BLOCK, FRAME * BLOCK, 2, bad_first * BLOCK), -1);
    initiator_stop(&g);
    stop(&f);
}

/* ------------------------------------------------------------ raw peer */

struct peer {
    struct child_target target;
    int fd;
};

static void peer_start(struct peer *p, const char *faults)
{
    target_start(&p->target, faults);
    uint64_t engine_id = 0;
    int port = raw_data_port(p->target.name, NULL, &engine_id);
    assert_true(port > 0);
    p->fd = raw_connect_from("127.0.0.1", port);
    assert_true(p->fd >= 0);
    assert_int_equal(raw_send_hello(p->fd, engine_id, "copyfail-peer"), 0);
    struct wire_header h;
    assert_int_equal(raw_read_header(p->fd, &h, GUARD_MS), 0);
    assert_int_equal(h.type, WIRE_HELLO_ACK);
    assert_int_equal(h.status, 0);
}

static void peer_stop(struct peer *p)
{
    close(p->fd);
    child_target_kill(&p->target);
}

/* A frame of n blocks of BLOCK bytes from target offset off on. */
static void peer_frame(struct peer *p, uint8_t type, uint32_t flags, uint64_t id, uint64_t off, unsigned n)
{
    uint8_t raw[WIRE_HEADER_SIZE + WIRE_MAX_ENTRIES * WIRE_ENTRY_SIZE];
    struct wire_entry e[WIRE_MAX_ENTRIES];
    for (unsigned i = 0; i < n; i++)
        e[i] = (struct wire_entry){p->target.addr + off + i * BLOCK, BLOCK};
    struct wire_header h = {.type = type, .id = id, .nentries = (uint8_t)n, .flags = flags,
                            .payload_len = type == WIRE_WRITE ? (uint64_t)n * BLOCK : 0};
    wire_encode_header(&h, raw);
    wire_encode_entries(e, n, raw + WIRE_HEADER_SIZE);
    assert_int_equal(net_write_full(p->fd, raw, WIRE_HEADER_SIZE + n * WIRE_ENTRY_SIZE), 0);
}

/* WRITEs n blocks of pattern(seed) at off; returns the ack's status. */
static int peer_write(struct peer *p, uint64_t id, uint64_t off, unsigned n, uint64_t seed)
{
    char *buf = malloc((size_t)n * BLOCK);
    pattern_fill(buf, (size_t)n * BLOCK, seed, off);
    peer_frame(p, WIRE_WRITE, 0, id, off, n);
    assert_int_equal(net_write_full(p->fd, buf, (size_t)n * BLOCK), 0);
    free(buf);
    struct wire_header h;
    assert_int_equal(raw_read_header(p->fd, &h, GUARD_MS), 0);
    assert_int_equal(h.type, WIRE_WRITE_ACK);
    assert_true(h.id == id);
    assert_true(h.refused == 0);
    return h.status;
}

/* READs n blocks at off into out (with a trailer and its status); returns
 * the trailer's status. */
static int peer_read(struct peer *p, uint64_t id, uint64_t off, unsigned n, char *out)
{
    peer_frame(p, WIRE_READ, WIRE_FLAG_TRAILER | WIRE_FLAG_TRAILER_STATUS, id, off, n);
    struct wire_header h;
    assert_int_equal(raw_read_header(p->fd, &h, GUARD_MS), 0);
    assert_int_equal(h.type, WIRE_READ_RESP);
    assert_int_equal(h.status, 0);
    assert_true(h.refused == 0 && h.payload_len == (uint64_t)n * BLOCK);
    assert_true(h.flags & WIRE_FLAG_TRAILER);
    assert_int_equal(net_read_full_deadline(p->fd, out, (size_t)n * BLOCK, net_deadline(GUARD_MS)), 0);
    uint8_t raw[WIRE_TRAILER_SIZE];
    struct wire_trailer t;
    assert_int_equal(net_read_full_deadline(p->fd, raw, sizeof raw, net_deadline(GUARD_MS)), 0);
    assert_int_equal(wire_decode_trailer(raw, n, 0, &t), 0);
    assert_true(t.revoked == 0);
    return t.status;
}

/* 32 blocks: two copy groups (jobs 2, 3); the second fails.  The ack says
 * FERRY_EIO and the same connection serves the next WRITE. */
static void test_raw_write_ack_status(void **state)
{
    (void)state;
    struct peer p;
    peer_start(&p, "3");
    assert_int_equal(peer_write(&p, 1, 0, 32, 8), FERRY_EIO);
    assert_int_equal(peer_write(&p, 2, 0, 32, 9), 0);
    char *got = malloc(32 * BLOCK);
    assert_int_equal(peer_read(&p, 3, 0, 32, got), 0);
    assert_int_equal(pattern_check(got, 32 * BLOCK, 9, 0), -1);
    free(got);
    peer_stop(&p);
}

/* A READ of 32 blocks at 1 MiB fills the target's bounce (jobs 2, 3); the
 * next READ, of 32 blocks at 0, fails its second group (job 5): those
 * bytes arrive as zeros, not as the first READ's left in the bounce, and
 * the trailer says FERRY_EIO.  The connection then serves a third READ. */
static void test_raw_read_trailer_status(void **state)
{
    (void)state;
    struct peer p;
    peer_start(&p, "5");
    char *got = malloc(32 * BLOCK);
    assert_int_equal(peer_read(&p, 1, 1u << 20, 32, got), 0);
    assert_int_equal(pattern_check(got, 32 * BLOCK, TSEED, 1u << 20), -1);
    assert_int_equal(peer_read(&p, 2, 0, 32, got), FERRY_EIO);
    assert_int_equal(pattern_check(got, 16 * BLOCK, TSEED, 0), -1);
    static const char zero[16 * BLOCK];
    assert_int_equal(memcmp(got + 16 * BLOCK, zero, sizeof zero), 0);
    assert_int_equal(peer_read(&p, 3, 0, 32, got), 0);
    assert_int_equal(pattern_check(got, 32 * BLOCK, TSEED, 0), -1);
    free(got);
    peer_stop(&p);
}

/* A READ without WIRE_FLAG_TRAILER_STATUS cannot be told that its bytes
 * are zeros: the target closes the connection instead. */
static void test_raw_read_without_status_closes(void **state)
{
    (void)state;
    struct peer p;
    peer_start(&p, "3");
    peer_frame(&p, WIRE_READ, WIRE_FLAG_TRAILER, 1, 0, 32);
    assert_true(raw_closed_by_peer(p.fd, GUARD_MS));
    /* the target itself lives on */
    assert_int_equal(child_target_check(&p.target, 0, 32 * BLOCK, TSEED), -1);
    peer_stop(&p);
}

int main(void)
{
    /* one connection per peer: a frame that fails is followed on it by others */
    setenv("FERRY_TCP_MAX_CONNECTIONS", "1", 1);
    /* frames of FRAME blocks whatever the host's cores (16 would cut a
     * submit of small blocks into 4 frames) */
    setenv("FERRY_TCP_SPREAD", "1", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_copy_fails_when_waited),
        cmocka_unit_test(test_write_copy_fails_at_start),
        cmocka_unit_test(test_read_copy_fails_when_waited),
        cmocka_unit_test(test_read_copy_fails_at_start),
        cmocka_unit_test(test_write_two_failures),
        cmocka_unit_test(test_write_unregistered_while_copies_fail),
        cmocka_unit_test(test_failure_spares_other_connection),
        cmocka_unit_test(test_raw_write_ack_status),
        cmocka_unit_test(test_raw_read_trailer_status),
        cmocka_unit_test(test_raw_read_without_status_closes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

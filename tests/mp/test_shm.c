/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_shm.c — the shm transport between two engines of one host: WRITE and
 * READ host<->host at several sizes and batches with the bytes verified and
 * shown (stats) to have gone over shm, not tcp; the same matrix with device
 * memory on either side (the direct path: IPC-opened allocations, no staging);
 * a target that unregisters (ESTALE, then a refreshed descriptor works); a
 * target killed mid-transfer (FAILED, no hang) and notifications, both with
 * device memory; two engines in one process; and the transport's own
 * contract driven directly (refused bits, deadlines, another host, a stale
 * generation).  Host-memory refusals, notifications and peer death run over
 * every transport in test_conformance.c.
 *
 * Device memory: FERRY_TEST_DEVICE (e.g. "cuda:0" on the GPU machine),
 * otherwise the strict sim device, whose IPC maps a memfd; skipped with a
 * reason when the device cannot be used.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/wait.h>
#include <cjson/cJSON.h>
#include <cmocka.h>

#include "memreg.h"
#include "net.h"
#include "shm_pair.h"
#include "testutil.h"
#include "xfer_pair.h"
#include "transport/shm/shm.h"
#include "transport/transport.h"

#define TSIZE (32u << 20)
#define TSEED 31

static struct ferry_config engine_config(const char *protocols)
{
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = protocols;
    cfg.request_timeout_ms = 20000;
    cfg.connect_timeout_ms = 2000;
    return cfg;
}

static ferry_engine *make_engine(const char *protocols)
{
    struct ferry_config cfg = engine_config(protocols);
    ferry_engine *e = NULL;
    int rc = ferry_engine_create(&cfg, &e);
    if (rc)
        fail_msg("engine (%s): %s", protocols, ferry_last_error());
    return e;
}

static int start(void **state, const char *local_loc, const char *target_loc, const char *target_protocols)
{
    struct xfer_pair *f = calloc(1, sizeof *f);
    setenv("FERRY_PROTOCOLS", target_protocols, 1); /* the child reads it at start */
    struct ferry_config cfg = engine_config("tcp,shm");
    xfer_pair_start(f, TSIZE, target_loc, TSEED, &cfg, local_loc);
    *state = f;
    return 0;
}

static int setup_host(void **s) { return start(s, "cpu", "cpu", "tcp,shm"); }
static int setup_dev_to_cpu(void **s) { return start(s, test_device_location(), "cpu", "tcp,shm"); }
static int setup_cpu_to_dev(void **s) { return start(s, "cpu", test_target_location(), "tcp,shm"); }
static int setup_dev_to_dev(void **s) { return start(s, test_device_location(), test_target_location(), "tcp,shm"); }
static int setup_tcp_target(void **s) { return start(s, "cpu", "cpu", "tcp"); }

static const struct ferry_transport_stats *stats_of(const struct ferry_stats *st, const char *name)
{
    for (size_t i = 0; i < st->transport_count; i++)
        if (strcmp(st->transports[i].name, name) == 0)
            return &st->transports[i];
    fail_msg("no transport %s in the stats", name);
    return NULL;
}

/* Payload bytes the initiator moved over transport `name` since `before`. */
static uint64_t moved_over(ferry_engine *e, const struct ferry_stats *before, const char *name)
{
    struct ferry_stats now;
    assert_int_equal(ferry_get_stats(e, &now), 0);
    const struct ferry_transport_stats *a = stats_of(before, name), *b = stats_of(&now, name);
    return b->bytes_written + b->bytes_read - a->bytes_written - a->bytes_read;
}

/* n blocks of bs bytes, block i at offset base + i*stride on both sides,
 * moved and verified (see xfer_pair_move). */
static void run_ok(struct xfer_pair *f, int op, size_t bs, size_t n, uint64_t base, uint64_t stride, uint64_t seed)
{
    xfer_pair_move_ok(f, op, (struct xfer_blocks){bs, n, base, stride}, seed, 60000);
}

/* ------------------------------------------------------------ the matrix */

static void matrix(void **state)
{
    struct xfer_pair *f = *state;
    struct ferry_stats before;
    assert_int_equal(ferry_get_stats(f->e, &before), 0);
    static const size_t sizes[] = {4096, 65536, 1u << 20, (3u << 20) + 8};
    static const size_t batches[] = {1, 64, 128};
    uint64_t total = 0;
    for (size_t s = 0; s < 4; s++) {
        for (size_t k = 0; k < 3; k++) {
            size_t bs = sizes[s], n = batches[k];
            uint64_t stride = bs + 8192;
            while (n > 1 && stride * n > TSIZE / 2)
                n /= 2;
            /* WRITE one half with a fresh pattern; READ back the target's own
             * pattern from the other half */
            run_ok(f, FERRY_WRITE, bs, n, 0, stride, 100 + s * 3 + k);
            run_ok(f, FERRY_READ, bs, n, TSIZE / 2, stride, TSEED);
            total += 2 * (uint64_t)bs * n;
        }
    }
    struct ferry_stats after;
    assert_int_equal(ferry_get_stats(f->e, &after), 0);
    assert_int_equal(moved_over(f->e, &before, "shm"), total);
    assert_int_equal(moved_over(f->e, &before, "tcp"), 0);
    /* the direct path: device memory was never staged through host chunks */
    assert_int_equal(stats_of(&after, "shm")->bytes_staged, stats_of(&before, "shm")->bytes_staged);
}

/* A target that offers only tcp is served by tcp, with shm in our list. */
static void tcp_only_target_uses_tcp(void **state)
{
    struct xfer_pair *f = *state;
    struct ferry_stats before;
    assert_int_equal(ferry_get_stats(f->e, &before), 0);
    run_ok(f, FERRY_WRITE, 65536, 16, 0, 65536, 3);
    run_ok(f, FERRY_READ, 65536, 16, 1u << 20, 65536, TSEED);
    assert_int_equal(moved_over(f->e, &before, "tcp"), 32 * 65536);
    assert_int_equal(moved_over(f->e, &before, "shm"), 0);
}

/* ------------------------------------------------------------ faults */

static void one_request(struct xfer_pair *f, int op, uint64_t off, size_t len, int expect, const char *msg_part)
{
    ferry_batch *b;
    struct ferry_request r = {op, f->local + off, f->seg, f->target.addr + off, len};
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &r, 1), 0);
    assert_int_equal(ferry_batch_wait(b, 60000), expect);
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    assert_int_equal(st.state, FERRY_FAILED);
    assert_int_equal(st.error, expect);
    if (msg_part && !strstr(st.message, msg_part))
        fail_msg("message \"%s\" lacks \"%s\"", st.message, msg_part);
    ferry_batch_free(b);
}

/* A WRITE and a READ of 4 x 64 KiB, verified, every byte through shm. */
static void write_read_over_shm(struct xfer_pair *f)
{
    struct ferry_stats before;
    assert_int_equal(ferry_get_stats(f->e, &before), 0);
    run_ok(f, FERRY_WRITE, 65536, 4, 0, 65536, 8);
    run_ok(f, FERRY_READ, 65536, 4, 1u << 20, 65536, TSEED);
    assert_int_equal(moved_over(f->e, &before, "shm"), 8 * 65536);
}

static void unregister_then_refresh(void **state)
{
    struct xfer_pair *f = *state;
    run_ok(f, FERRY_WRITE, 65536, 4, 0, 65536, 7);
    assert_int_equal(child_target_unregister(&f->target), 0);

    /* the cached descriptor still lists the buffer: the generation says no */
    pattern_fill(f->host, 65536, 99, 0);
    assert_int_equal(ferry_mem_copy(f->e, f->local, f->host, 65536), 0);
    one_request(f, FERRY_WRITE, 0, 65536, FERRY_ESTALE, "unregistered");
    assert_int_equal(child_target_check(&f->target, 0, 4 * 65536, 7), -1);

    /* the refreshed descriptor has no buffer: refused at submit */
    ferry_batch *b;
    struct ferry_request r = {FERRY_READ, f->local, f->seg, f->target.addr, 65536};
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &r, 1), FERRY_ERANGE);
    ferry_batch_free(b);

    /* registered again: found by a refresh, served through shm again */
    assert_int_equal(child_target_register(&f->target), 0);
    write_read_over_shm(f);
}

/* The target unregisters its buffer and registers it again, with no
 * transfer between (an application reusing a buffer): the next transfers
 * follow the new registration at once (device memory: through a new IPC
 * opening of its new handle, the old one closed).  Before, the first failed
 * FERRY_ESTALE ("unregistered ... since it was opened") and only the
 * refresh it caused let later ones through; tcp's target checks its live
 * registry and never failed. */
static void registered_again(void **state)
{
    struct xfer_pair *f = *state;
    run_ok(f, FERRY_WRITE, 65536, 4, 0, 65536, 7);
    assert_int_equal(child_target_unregister(&f->target), 0);
    assert_int_equal(child_target_register(&f->target), 0);
    write_read_over_shm(f);
    /* and an unregister after that is seen again */
    assert_int_equal(child_target_unregister(&f->target), 0);
    one_request(f, FERRY_WRITE, 0, 65536, FERRY_ESTALE, "unregistered");
}

static void peer_killed_mid_transfer(void **state)
{
    struct xfer_pair *f = *state;
    enum { BS = 256 << 10 };
    /* host memory: 1 GiB, many passes over the buffer; device memory: each
     * block once (a GPU is done before the kill lands anyway, and racing
     * writes to one block would only slow ThreadSanitizer builds down) */
    const size_t N = strcmp(f->loc, "cpu") == 0 ? 4096 : TSIZE / BS;
    struct ferry_request *r = calloc(N, sizeof *r);
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, N, &b), 0);
    for (size_t i = 0; i < N; i++) {
        uint64_t off = (i % (TSIZE / BS)) * BS;
        r[i] = (struct ferry_request){FERRY_WRITE, f->local + off, f->seg, f->target.addr + off, BS};
    }
    assert_int_equal(ferry_batch_submit(b, r, N), 0);
    child_target_kill(&f->target);
    uint64_t t0 = now_ms();
    int rc = ferry_batch_wait(b, 30000);
    assert_true(now_ms() - t0 < 25000);
    if (rc != 0 && rc != FERRY_ECONN)
        fail_msg("wait: %s: %s", ferry_err_name(rc), ferry_last_error());
    size_t failed = 0;
    for (size_t i = 0; i < N; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        assert_true(st.state == FERRY_COMPLETED || st.state == FERRY_FAILED);
        if (st.state == FERRY_FAILED) {
            assert_int_equal(st.error, FERRY_ECONN);
            assert_non_null(strstr(st.message, "gone"));
            failed++;
        }
    }
    printf("peer killed: %zu of %zu requests failed, wait took %llu ms\n", failed, N,
           (unsigned long long)(now_ms() - t0));
    ferry_batch_free(b);
    free(r);
    /* the engine goes on: a new request to the dead peer ends, also */
    struct ferry_request one = {FERRY_WRITE, f->local, f->seg, f->target.addr, 4096};
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    if (ferry_batch_submit(b, &one, 1) == 0)
        assert_int_not_equal(ferry_batch_wait(b, 30000), 0);
    ferry_batch_free(b);
}

static void notification_after_data(void **state)
{
    struct xfer_pair *f = *state;
    struct ferry_stats before;
    assert_int_equal(ferry_get_stats(f->e, &before), 0);
    ferry_batch *b;
    struct ferry_request r[8];
    for (size_t i = 0; i < 8; i++) {
        pattern_fill(f->host + i * 65536, 65536, 55, i * 65536);
        assert_int_equal(ferry_mem_copy(f->e, f->local + i * 65536, f->host + i * 65536, 65536), 0);
        r[i] = (struct ferry_request){FERRY_WRITE, f->local + i * 65536, f->seg, f->target.addr + i * 65536, 65536};
    }
    assert_int_equal(ferry_batch_alloc(f->e, 8, &b), 0);
    assert_int_equal(ferry_batch_set_notify(b, "kv-ready-42", 11), 0);
    assert_int_equal(ferry_batch_submit(b, r, 8), 0);
    assert_int_equal(ferry_batch_wait(b, 60000), 0);
    ferry_batch_free(b);
    char msg[64];
    assert_int_equal(child_target_notification(&f->target, msg, sizeof msg), 11);
    assert_memory_equal(msg, "kv-ready-42", 11);
    assert_int_equal(child_target_check(&f->target, 0, 8 * 65536, 55), -1);
    assert_int_equal(moved_over(f->e, &before, "shm"), 8 * 65536);
}

/* ------------------------------------------------------------ one process */

/* Two engines in one process: shm with no IPC needed; the target's stats
 * count what was served to it. */
static void same_process(void **state)
{
    const char *loc = *state;
    ferry_engine *a = make_engine("tcp,shm"), *t = make_engine("shm");
    enum { LEN = 4u << 20 };
    char *remote, *local, *host = malloc(LEN);
    assert_int_equal(ferry_mem_alloc(t, loc, LEN, (void **)&remote), 0);
    assert_int_equal(ferry_register_memory(t, remote, LEN, loc, 1), 0);
    assert_int_equal(ferry_mem_alloc(a, "cpu", LEN, (void **)&local), 0);
    assert_int_equal(ferry_register_memory(a, local, LEN, "cpu", 0), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(a, ferry_engine_segment_name(t), &seg), 0);
    pattern_fill(local, LEN, 5, 0);
    struct ferry_request r[2] = {
        {FERRY_WRITE, local, seg, (uint64_t)(uintptr_t)remote, LEN / 2},
        {FERRY_READ, local + LEN / 2, seg, (uint64_t)(uintptr_t)remote, LEN / 2},
    };
    ferry_batch *b;
    for (int i = 0; i < 2; i++) { /* in order: the READ reads what the WRITE wrote */
        assert_int_equal(ferry_batch_alloc(a, 1, &b), 0);
        assert_int_equal(ferry_batch_submit(b, &r[i], 1), 0);
        assert_int_equal(ferry_batch_wait(b, 60000), 0);
        ferry_batch_free(b);
    }
    assert_int_equal(pattern_check(local + LEN / 2, LEN / 2, 5, 0), -1);
    assert_int_equal(ferry_mem_copy(t, host, remote, LEN / 2), 0);
    assert_int_equal(pattern_check(host, LEN / 2, 5, 0), -1);
    struct ferry_stats st;
    assert_int_equal(ferry_get_stats(t, &st), 0);
    assert_int_equal(stats_of(&st, "shm")->bytes_served, LEN);
    ferry_engine_destroy(a);
    ferry_mem_free(t, loc, remote, LEN);
    ferry_engine_destroy(t);
    free(host);
}

/* ------------------------------------------------------------ the transport itself */

static atomic_int ended;
static int end_err;
static uint64_t end_refused;
static char end_msg[256];

/* len bytes of cpu memory at buf as a region: the target's published one
 * (remote accessible) or the initiator's own. */
static struct memreg_region cpu_region(const char *buf, size_t len, int remote)
{
    return (struct memreg_region){(uint64_t)(uintptr_t)buf, len, "cpu", -1, remote, {0}};
}

/* rt registered with the target's transport (its handle in *handle), rl in
 * the initiator's registry. */
static void register_both(struct shm_pair *sp, struct memreg_region *rt, struct memreg_region *rl, void **handle)
{
    assert_int_equal(sp->ops->register_memory(sp->tt, rt, handle), 0);
    assert_int_equal(memreg_add(&sp->reg_i, rl), 0);
}

static void frame_done(struct xfer_frame *f, int err, uint64_t refused, const char *msg)
{
    (void)f;
    snprintf(end_msg, sizeof end_msg, "%s", msg ? msg : "");
    end_err = err;
    end_refused = refused;
    atomic_fetch_add(&ended, 1);
}

/* Submits one frame and waits for its single completion. */
static int one_frame(const struct transport_ops *ops, void *t, void *peer, int op, struct xfer_piece *pieces,
                     uint32_t n, uint64_t deadline)
{
    struct xfer_frame f = {.opcode = op, .npieces = n, .pieces = pieces, .deadline_ns = deadline,
                           .complete = frame_done};
    for (uint32_t i = 0; i < n; i++)
        f.bytes += pieces[i].len;
    atomic_store(&ended, 0);
    ops->submit(t, peer, &f);
    for (int i = 0; i < 10000 && atomic_load(&ended) == 0; i++)
        usleep(1000);
    usleep(20000); /* a second completion would show here */
    assert_int_equal(atomic_load(&ended), 1);
    return end_err;
}

static void transport_contract(void **state)
{
    (void)state;
    struct shm_pair sp;
    shm_pair_start(&sp);
    const struct transport_ops *ops = sp.ops;
    struct memreg *reg_t = &sp.reg_t;
    void *ti = sp.ti, *tt = sp.tt, *peer, *handle;
    enum { LEN = 1u << 20 };
    char *tbuf = calloc(1, LEN), *lbuf = malloc(LEN);
    struct memreg_region rt = cpu_region(tbuf, LEN, 1), rl = cpu_region(lbuf, LEN, 0);
    register_both(&sp, &rt, &rl, &handle);
    assert_non_null(handle);
    assert_int_equal(memreg_add(reg_t, &rt), 0);

    char *json;
    assert_int_equal(ops->describe(tt, &json), 0);
    struct desc_buffer db = {rt.addr, LEN, "cpu"};
    struct ferry_descriptor d = {.format = DESC_FORMAT, .name = "target", .engine_id = 0x2222, .ntransports = 1,
                                 .nbuffers = 1, .buffers = &db};
    strcpy(d.transports[0].name, "shm");
    d.transports[0].json = json;

    /* another host: not ours to serve */
    cJSON *j = cJSON_Parse(json);
    cJSON_ReplaceItemInObject(j, "host", cJSON_CreateString("another-boot-id"));
    d.transports[0].json = cJSON_PrintUnformatted(j);
    assert_int_equal(ops->peer_open(ti, &d, &peer), FERRY_ENOTSUP);
    assert_non_null(strstr(ferry_last_error(), "another host"));
    free(d.transports[0].json);
    cJSON_Delete(j);
    d.transports[0].json = json;

    assert_int_equal(ops->peer_open(ti, &d, &peer), 0);
    assert_true(ops->can_reach(ti, peer, rt.addr, LEN));
    /* a range the target does not register is taken, and refused at copy
     * time naming the target's process (below) */
    assert_true(ops->can_reach(ti, peer, rt.addr + 1, LEN));
    uint64_t later = now_ns() + 10000000000ull;

    /* piece 1 runs past the buffer: refused, piece 0 arrives */
    pattern_fill(lbuf, LEN, 9, 0);
    struct xfer_piece p[2] = {{lbuf, rt.addr, 65536, 0}, {lbuf + 65536, rt.addr + LEN - 100, 4096, 1}};
    assert_int_equal(one_frame(ops, ti, peer, XFER_WRITE, p, 2, later), 0);
    assert_int_equal(end_refused, 2);
    assert_non_null(strstr(end_msg, "is not registered by process"));
    assert_int_equal(pattern_check(tbuf, 65536, 9, 0), -1);
    assert_int_equal(tbuf[65536], 0);

    /* READ of the whole buffer in one frame of two pieces */
    memset(lbuf, 0, LEN);
    struct xfer_piece rd[2] = {{lbuf, rt.addr, LEN / 2, 0}, {lbuf + LEN / 2, rt.addr + LEN / 2, LEN / 2, 1}};
    assert_int_equal(one_frame(ops, ti, peer, XFER_READ, rd, 2, later), 0);
    assert_int_equal(end_refused, 0);
    assert_memory_equal(lbuf, tbuf, LEN);

    /* local memory that is not registered */
    char stray[64];
    struct xfer_piece s = {stray, rt.addr, sizeof stray, 0};
    assert_int_equal(one_frame(ops, ti, peer, XFER_WRITE, &s, 1, later), FERRY_ENOTREG);

    /* a deadline that has passed */
    assert_int_equal(one_frame(ops, ti, peer, XFER_WRITE, p, 1, now_ns() - 1), FERRY_ETIMEDOUT);

    /* the target unregisters: the generation tells the initiator */
    struct memreg_region gone;
    assert_int_equal(memreg_remove(reg_t, rt.addr, &gone), 0);
    ops->unregister_memory(tt, handle);
    tbuf[0] = 42;
    assert_int_equal(one_frame(ops, ti, peer, XFER_WRITE, p, 1, later), FERRY_ESTALE);
    assert_int_equal(tbuf[0], 42);

    struct ferry_transport_stats st;
    ops->stats(tt, &st);
    assert_string_equal(st.name, "shm");
    assert_int_equal(st.bytes_served, 65536 + LEN);
    ops->stats(ti, &st);
    assert_int_equal(st.bytes_written, 65536);
    assert_int_equal(st.bytes_read, LEN);
    assert_int_equal(st.refused, 1);

    ops->peer_close(ti, peer);
    shm_pair_stop(&sp);
    free(json);
    free(tbuf);
    free(lbuf);
}

/* The announcements initiators leave in a target's shared memfd: all taken
 * (FERRY_EBUSY); one left by a dead process (unregister reclaims it and
 * returns); one of a live process that never ends (unregister stops
 * waiting after SHM_ACCESS_MAX_NS + SHM_ACCESS_GRACE_NS, and says so). */
static void announcements(void **state)
{
    (void)state;
    struct shm_pair sp;
    shm_pair_start(&sp);
    const struct transport_ops *ops = sp.ops;
    void *ti = sp.ti, *tt = sp.tt, *peer, *handle;
    struct shm_transport *target = tt;
    enum { LEN = 1u << 20 };
    char *tbuf = calloc(1, LEN), *lbuf = calloc(1, LEN);
    struct memreg_region rt = cpu_region(tbuf, LEN, 1), rl = cpu_region(lbuf, LEN, 0);
    register_both(&sp, &rt, &rl, &handle);
    peer = shm_pair_open_peer(&sp, &rt);
    uint64_t later = now_ns() + 10000000000ull;
    struct xfer_piece p = {lbuf, rt.addr, 4096, 0};

    /* every announcement taken by a live process (this one, range not set) */
    const uint64_t mine = (7ull << SHM_ANN_TICKET_SHIFT) | (uint64_t)getpid();
    for (uint32_t i = 0; i < SHM_ANNOUNCE_SLOTS; i++)
        atomic_store(&target->ann[i].word, mine);
    /* the frame waits for one until its deadline (was: FERRY_EBUSY at once,
     * while other initiators' accesses would have ended in microseconds) */
    assert_int_equal(one_frame(ops, ti, peer, XFER_WRITE, &p, 1, now_ns() + 300000000ull), FERRY_ETIMEDOUT);
    assert_non_null(strstr(end_msg, "announcements stayed taken"));
    /* one clears while it waits: the frame takes it and moves */
    memset(lbuf, 0x6b, 4096);
    struct xfer_frame f = {.opcode = XFER_WRITE, .npieces = 1, .pieces = &p, .bytes = 4096, .deadline_ns = later,
                           .complete = frame_done};
    atomic_store(&ended, 0);
    ops->submit(ti, peer, &f);
    for (int i = 0; i < 10000 && atomic_load(&target->served->waiters) == 0; i++)
        usleep(1000);
    assert_int_equal(atomic_load(&target->served->waiters), 1);
    atomic_store(&target->ann[77].word, 0);
    for (int i = 0; i < 10000 && atomic_load(&ended) == 0; i++)
        usleep(1000);
    assert_int_equal(atomic_load(&ended), 1);
    assert_int_equal(end_err, 0);
    assert_int_equal(tbuf[4095], 0x6b);
    assert_true(atomic_load(&target->ann[77].word) == 0); /* it cleared the one it took */
    assert_int_equal(atomic_load(&target->served->waiters), 0);
    for (uint32_t i = 0; i < SHM_ANNOUNCE_SLOTS; i++)
        atomic_store(&target->ann[i].word, 0);
    assert_int_equal(one_frame(ops, ti, peer, XFER_WRITE, &p, 1, later), 0);
    for (uint32_t i = 0; i < SHM_ANNOUNCE_SLOTS; i++) /* the frame cleared its own */
        assert_true(atomic_load(&target->ann[i].word) == 0);

    /* a process that died mid-copy: its announcement does not hold unregister */
    pid_t dead = fork();
    if (dead == 0)
        _exit(0);
    assert_true(waitpid(dead, NULL, 0) == dead);
    atomic_store(&target->ann[5].lo, rt.addr);
    atomic_store(&target->ann[5].hi, rt.addr + 4096);
    atomic_store(&target->ann[5].word, (9ull << SHM_ANN_TICKET_SHIFT) | SHM_ANN_ACTIVE | (uint64_t)dead);
    ops->unregister_memory(tt, handle);
    assert_true(atomic_load(&target->ann[5].word) == 0); /* reclaimed */
    assert_int_equal(one_frame(ops, ti, peer, XFER_WRITE, &p, 1, later), FERRY_ESTALE);
    assert_non_null(strstr(end_msg, "unregistered"));

    /* a live process whose access never ends: unregister stops waiting, bounded */
    assert_int_equal(ops->register_memory(tt, &rt, &handle), 0);
    atomic_store(&target->ann[9].lo, rt.addr + LEN - 1);
    atomic_store(&target->ann[9].hi, rt.addr + LEN + 4096);
    atomic_store(&target->ann[9].word, mine | SHM_ANN_ACTIVE);
    uint64_t t0 = now_ms();
    ops->unregister_memory(tt, handle);
    printf("unregister gave up on a live, stuck announcement after %llu ms\n", (unsigned long long)(now_ms() - t0));
    assert_true(atomic_load(&target->ann[9].word) == (mine | SHM_ANN_ACTIVE)); /* not reclaimed: alive */
    atomic_store(&target->ann[9].word, 0);

    ops->peer_close(ti, peer);
    shm_pair_stop(&sp);
    free(tbuf);
    free(lbuf);
}

struct local_remove {
    struct memreg *reg;
    uint64_t addr;
};

static void *remove_local(void *arg)
{
    struct local_remove *lr = arg;
    assert_int_equal(memreg_remove(lr->reg, lr->addr, NULL), 0);
    return NULL;
}

/* The initiator unregisters its own source while a large WRITE copies from
 * it: nothing the application writes there after the removal returned
 * reaches the target, and a frame that saw the revocation ends FERRY_ERANGE
 * naming the local range. */
static void local_unregister_mid_copy(void **state)
{
    (void)state;
    struct shm_pair sp;
    shm_pair_start(&sp);
    const struct transport_ops *ops = sp.ops;
    struct memreg *reg_i = &sp.reg_i;
    void *ti = sp.ti, *peer, *handle;
    enum { LEN = 128u << 20 };
    char *tbuf = calloc(1, LEN), *lbuf = calloc(1, LEN);
    struct memreg_region rt = cpu_region(tbuf, LEN, 1), rl = cpu_region(lbuf, LEN, 0);
    register_both(&sp, &rt, &rl, &handle);
    peer = shm_pair_open_peer(&sp, &rt);

    struct xfer_piece p = {lbuf, rt.addr, LEN, 0};
    struct xfer_frame f = {.opcode = XFER_WRITE, .npieces = 1, .pieces = &p, .bytes = LEN,
                           .deadline_ns = now_ns() + 60000000000ull, .complete = frame_done};
    memset(lbuf, 0xab, LEN);
    atomic_store(&ended, 0);
    ops->submit(ti, peer, &f);
    for (int i = 0; i < 1000000 && !atomic_load(&ended) && ((volatile char *)tbuf)[0] != (char)0xab; i++)
        usleep(10); /* the copy has begun */
    struct local_remove lr = {reg_i, rl.addr};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, remove_local, &lr), 0);
    pthread_join(th, NULL);
    memset(lbuf, 0xcd, LEN); /* the application reuses its memory: none of it may travel */
    for (int i = 0; i < 1000000 && !atomic_load(&ended); i++)
        usleep(10);
    assert_int_equal(atomic_load(&ended), 1);
    for (size_t i = 0; i < LEN; i += 4096)
        assert_int_not_equal((unsigned char)tbuf[i], 0xcd);
    printf("local unregister mid-copy: the frame ended %s%s%s\n", ferry_err_name(end_err), end_err ? ": " : "",
           end_err ? end_msg : "");
    assert_true(end_err == 0 || end_err == FERRY_ERANGE);
    if (end_err)
        assert_non_null(strstr(end_msg, "was unregistered during the copy"));

    ops->peer_close(ti, peer);
    shm_pair_stop(&sp);
    free(tbuf);
    free(lbuf);
}

/* A malformed FERRY_SHM_ALLOW_UIDS stops an engine offering shm, naming the
 * variable. */
static void allow_uids_malformed(void **state)
{
    (void)state;
    static const char *bad[] = {"abc", "12,", "1,,2", "-1", "4294967295", "1 2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_knob_refused("shm", "FERRY_SHM_ALLOW_UIDS", bad[i]);
    setenv("FERRY_SHM_ALLOW_UIDS", "1000, 1001", 1); /* a space after the comma is fine */
    ferry_engine *e = make_engine("shm");
    ferry_engine_destroy(e);
    unsetenv("FERRY_SHM_ALLOW_UIDS");
}

/* ------------------------------------------------------------ main */

/* Why device memory cannot be tested here, or NULL. */
static const char *device_unusable(void)
{
    static char why[256];
    ferry_engine *e = make_engine("tcp");
    void *p = NULL;
    int rc = ferry_mem_alloc(e, test_device_location(), 4096, &p);
    if (rc)
        snprintf(why, sizeof why, "%s: %s", test_device_location(), ferry_last_error());
    else
        ferry_mem_free(e, test_device_location(), p, 4096);
    ferry_engine_destroy(e);
    return rc ? why : NULL;
}

int main(void)
{
    static const char *cpu = "cpu";
    static const char *dev;
    dev = test_device_location();
    const struct CMUnitTest host[] = {
        cmocka_unit_test(transport_contract),
        cmocka_unit_test(announcements),
        cmocka_unit_test(allow_uids_malformed),
        cmocka_unit_test(local_unregister_mid_copy),
        cmocka_unit_test_setup_teardown(matrix, setup_host, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(unregister_then_refresh, setup_host, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(registered_again, setup_host, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(tcp_only_target_uses_tcp, setup_tcp_target, xfer_pair_teardown),
        cmocka_unit_test_prestate(same_process, (void *)cpu),
    };
    const struct CMUnitTest device[] = {
        cmocka_unit_test_setup_teardown(matrix, setup_dev_to_cpu, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(matrix, setup_cpu_to_dev, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(matrix, setup_dev_to_dev, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(unregister_then_refresh, setup_dev_to_dev, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(registered_again, setup_dev_to_dev, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(registered_again, setup_cpu_to_dev, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(notification_after_data, setup_dev_to_dev, xfer_pair_teardown),
        cmocka_unit_test_prestate(same_process, (void *)dev),
        /* last: the exporter dies while its memory is open here */
        cmocka_unit_test_setup_teardown(peer_killed_mid_transfer, setup_dev_to_dev, xfer_pair_teardown),
    };
    int failed = cmocka_run_group_tests_name("shm host memory", host, NULL, NULL);
    const char *why = device_unusable();
    if (why) {
        printf("SKIPPED shm device memory: %s\n", why);
        return failed;
    }
    printf("shm device memory: %s\n", dev);
    return failed + cmocka_run_group_tests_name("shm device memory", device, NULL, NULL);
}

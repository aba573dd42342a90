/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_ascend_hang.c — a hung NPU (a copy that never completes: a dead HCCS
 * link, a wedged core, a driver fault) on the fake ACL runtime's hang
 * (fakeacl_hang / fakeacl_unhang).  No wait on the stream may outlast
 * FERRY_NPU_SYNC_TIMEOUT_MS (300 ms here): a staged tcp WRITE whose
 * device-to-host copy hangs, and a READ whose host-to-device copy hangs,
 * end FERRY_TIMEOUT with a message naming npu:0; the engine then serves a
 * new transfer (data checked) while the hung copy is still held, and is
 * destroyed without blocking.  The stream is aborted where the runtime can
 * (aclrtStreamAbort), else abandoned: then the fake aborts the process if
 * ferry frees or reuses memory the held copy still touches, so the test
 * passing says ferry did neither.  ferry_mem_copy's wait (the per-thread
 * stream) fails FERRY_ETIMEDOUT naming the device, the stream and ACL's
 * code; a tcp target whose copy into npu memory hangs (a child,
 * FAKEACL_HANG_COPY) fails that WRITE, serves the next and exits without
 * freeing the bounce the held copy reads; so does an shm initiator whose
 * copy from npu:0 into its worker's bounce hangs, at the engine's destroy.  (Under ThreadSanitizer that
 * child reports the check's copy racing the WRITE's: they are ordered only
 * through the parent, which TSan cannot see.)  The modes (CMakeLists.txt): the timed sync and the abort (full),
 * no abort (old), the stream polled (FAKEACL_TIMED_SYNC=unsupported).  The
 * Ascend backend has no stream-ordered submits (no stream_host_func), so
 * there is none to hang.  Skips where FERRY_ASCEND_LIBRARY is unset;
 * FERRY_TEST_FILTER runs the cases it names (a cmocka pattern).
 */
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <cmocka.h>

#include "device/device.h"
#include "err.h"
#include "memreg.h"
#include "net.h"
#include "shm_pair.h"
#include "testutil.h"
#include "transport/transport.h"

#define BLOCK 65536u
#define BLOCKS 16u
#define LEN (BLOCK * BLOCKS)
#define BOUND_MS 60000 /* far beyond FERRY_NPU_SYNC_TIMEOUT_MS: only a hang reaches it */

static void *lib;
static unsigned long long (*fake_stat)(const char *);
static void (*fake_hang)(unsigned long long);
static void (*fake_unhang)(void);
static void (*fake_abort_supported)(int);
static int can_abort; /* the runtime has aclrtStreamAbort and this mode lets it work */

static void *sym(const char *name)
{
    void *p = dlsym(lib, name);
    if (!p)
        fail_msg("fake runtime lacks %s", name);
    return p;
}

/* An engine with LEN bytes of npu:0 memory (from the device layer, so that
 * it outlives the engine: a held copy may read it after the engine is gone)
 * and a cpu target in a child, over tcp: every transfer is staged. */
struct rig {
    struct child_target t;
    const struct ferry_device_ops *ops;
    ferry_engine *e;
    ferry_segment_t seg;
    char *local;
};

static void rig_up(struct rig *r, uint64_t seed)
{
    r->ops = ferry_device_find("npu");
    assert_non_null(r->ops);
    assert_int_equal(r->ops->init(), 0);
    assert_int_equal(child_target_start(&r->t, LEN, "cpu", seed), 0);
    assert_int_equal(ferry_engine_create(NULL, &r->e), 0);
    assert_int_equal(r->ops->mem_alloc(0, LEN, (void **)&r->local), 0);
    assert_int_equal(ferry_register_memory(r->e, r->local, LEN, "npu:0", 0), 0);
    assert_int_equal(ferry_open_segment(r->e, r->t.name, &r->seg), 0);
}

static void *destroy_engine(void *arg)
{
    ferry_engine_destroy(arg);
    return NULL;
}

/* The engine's destroy returns (bounded: a hang fails the test), the held
 * copy is let go, then the memory it read or wrote is freed. */
static void rig_down(struct rig *r)
{
    pthread_t th;
    assert_int_equal(ferry_unregister_memory(r->e, r->local), 0);
    assert_int_equal(pthread_create(&th, NULL, destroy_engine, r->e), 0);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += BOUND_MS / 1000;
    if (pthread_timedjoin_np(th, NULL, &until) != 0)
        fail_msg("ferry_engine_destroy still blocked after %d ms", BOUND_MS);
    fake_unhang();
    r->ops->mem_free(0, r->local);
    child_target_kill(&r->t);
}

/* One batch of BLOCKS requests of op over the whole buffer; returns
 * ferry_batch_wait's result and stores the first request that did not
 * complete in *bad (state FERRY_COMPLETED when all did). */
static int transfer(struct rig *r, int op, struct ferry_status *bad)
{
    struct ferry_request req[BLOCKS];
    for (size_t i = 0; i < BLOCKS; i++)
        req[i] = (struct ferry_request){op, r->local + i * BLOCK, r->seg, r->t.addr + i * BLOCK, BLOCK};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(r->e, BLOCKS, &b), 0);
    assert_int_equal(ferry_batch_submit(b, req, BLOCKS), 0);
    int rc = ferry_batch_wait(b, BOUND_MS);
    memset(bad, 0, sizeof *bad);
    bad->state = FERRY_COMPLETED;
    for (size_t i = 0; i < BLOCKS; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        if (st.state == FERRY_PENDING)
            fail_msg("request %zu still pending after %d ms (a wait on the hung stream is unbounded)", i, BOUND_MS);
        if (st.state != FERRY_COMPLETED && bad->state == FERRY_COMPLETED)
            *bad = st;
    }
    ferry_batch_free(b);
    return rc;
}

/* A request that met the hung copy: TIMEOUT, FERRY_ETIMEDOUT, npu:0 named. */
static void assert_hung(const struct ferry_status *st, const char *what)
{
    if (st->state != FERRY_TIMEOUT || st->error != FERRY_ETIMEDOUT)
        fail_msg("%s over a hung copy: state %d error %d (%s), expected TIMEOUT / FERRY_ETIMEDOUT", what, st->state,
                 st->error, st->message);
    if (!strstr(st->message, "npu:0"))
        fail_msg("%s: the message does not name the device: %s", what, st->message);
}

/* The hung copy's stream was aborted where the runtime can, and left alone
 * (not aborted) where it cannot. */
static void assert_aborted_as_possible(unsigned long long aborted_before)
{
    if (can_abort)
        assert_true(fake_stat("aborted") > aborted_before);
    else
        assert_int_equal(fake_stat("aborted"), aborted_before);
}

/* A staged WRITE whose device-to-host copy hangs, then one whose READ's
 * host-to-device copy hangs; after each, while the copy is still held, the
 * same transfer works and its bytes are checked. */
static void hung_staged_transfers(void)
{
    struct rig r;
    struct ferry_status bad;
    uint64_t *host = malloc(LEN);
    rig_up(&r, 7);

    /* WRITE: the gather hangs */
    pattern_fill(host, LEN, 41, 0);
    assert_int_equal(ferry_mem_copy(r.e, r.local, host, LEN), 0);
    unsigned long long aborted = fake_stat("aborted"), hung = fake_stat("hung");
    fake_hang(1);
    assert_int_not_equal(transfer(&r, FERRY_WRITE, &bad), 0);
    assert_int_equal(fake_stat("hung"), hung + 1);
    assert_hung(&bad, "WRITE");
    assert_aborted_as_possible(aborted);
    int rc = transfer(&r, FERRY_WRITE, &bad);
    if (rc != 0)
        fail_msg("the WRITE after the hung one: %s", bad.message);
    assert_int_equal(child_target_check(&r.t, 0, LEN, 41), -1);
    /* the device comes back: an abandoned copy runs now (it reads r.local,
     * which the READs below write: on hardware, as here, a late copy races
     * with later transfers to the request's own memory, docs/SECURITY.md) */
    fake_unhang();

    /* READ: the scatter into npu:0 hangs (the target holds pattern 41 now) */
    memset(host, 0, LEN);
    assert_int_equal(ferry_mem_copy(r.e, r.local, host, LEN), 0);
    aborted = fake_stat("aborted");
    fake_hang(1);
    assert_int_not_equal(transfer(&r, FERRY_READ, &bad), 0);
    assert_int_equal(fake_stat("hung"), hung + 2);
    assert_hung(&bad, "READ");
    assert_aborted_as_possible(aborted);
    rc = transfer(&r, FERRY_READ, &bad);
    if (rc != 0)
        fail_msg("the READ after the hung one: %s", bad.message);
    assert_int_equal(ferry_mem_copy(r.e, host, r.local, LEN), 0);
    assert_int_equal(pattern_check(host, LEN, 41, 0), -1);

    rig_down(&r);
    free(host);
}

static void hung_copies_end_timeout(void **state)
{
    (void)state;
    hung_staged_transfers();
}

/* The same where aclrtStreamAbort refuses (devices without it): the hung
 * streams are abandoned, their chunks left out of use and the pool's memory
 * kept at the engine's destroy (the fake aborts on a free under a queued
 * copy). */
static void hung_copies_abandoned_without_abort(void **state)
{
    (void)state;
    int could = can_abort;
    if (fake_abort_supported)
        fake_abort_supported(0);
    can_abort = 0;
    hung_staged_transfers();
    if (fake_abort_supported)
        fake_abort_supported(1);
    can_abort = could;
}

/* ferry_mem_copy waits on its thread's stream: FERRY_ETIMEDOUT naming the
 * device, the stream and ACL's code; the next copy works. */
static void hung_mem_copy_names_device_stream_and_code(void **state)
{
    (void)state;
    const struct ferry_device_ops *ops = ferry_device_find("npu");
    ferry_engine *e;
    void *d;
    uint64_t *host = malloc(LEN), *back = calloc(1, LEN);
    assert_int_equal(ferry_engine_create(NULL, &e), 0);
    assert_int_equal(ops->mem_alloc(0, LEN, &d), 0);
    assert_int_equal(ferry_register_memory(e, d, LEN, "npu:0", 0), 0);
    pattern_fill(host, LEN, 52, 0);
    fake_hang(1);
    int rc = ferry_mem_copy(e, d, host, LEN);
    char msg[256];
    snprintf(msg, sizeof msg, "%s", ferry_last_error());
    if (rc != FERRY_ETIMEDOUT)
        fail_msg("ferry_mem_copy over a hung copy: %d (%s), expected FERRY_ETIMEDOUT", rc, msg);
    if (!strstr(msg, "npu:0: stream 0x") || !strstr(msg, "ACL error 507046"))
        fail_msg("the message does not name the device, the stream and ACL's code: %s", msg);
    if (!strstr(msg, can_abort ? "aborted" : "abandoned"))
        fail_msg("the message does not say what became of the stream: %s", msg);
    rc = ferry_mem_copy(e, d, host, LEN);
    if (rc)
        fail_msg("the copy after the hung one: %s", ferry_last_error());
    assert_int_equal(ferry_mem_copy(e, back, d, LEN), 0);
    assert_int_equal(pattern_check(back, LEN, 52, 0), -1);
    assert_int_equal(ferry_unregister_memory(e, d), 0);
    ferry_engine_destroy(e);
    fake_unhang();
    ops->mem_free(0, d);
    free(host);
    free(back);
}

/* A tcp target serving npu:0 memory (a child: FAKEACL_HANG_COPY=2, its
 * first copy after the one that filled its memory, and FAKEACL_ABORT=
 * unsupported) whose copy of a WRITE hangs: the WRITE fails, the next one
 * lands (checked), and the target ends cleanly: it neither reused nor freed
 * the bounce buffer the abandoned copy still reads (the fake aborts the
 * child on such a free). */
static void hung_copy_at_the_target(void **state)
{
    (void)state;
    const struct ferry_device_ops *ops = ferry_device_find("npu");
    struct child_target t;
    ferry_engine *e;
    ferry_segment_t seg;
    struct ferry_status bad;
    assert_int_equal(ops->init(), 0); /* this process's fake has read its settings */
    setenv("FAKEACL_HANG_COPY", "2", 1);
    setenv("FAKEACL_ABORT", "unsupported", 1);
    int rc = child_target_start(&t, LEN, "npu:0", 3);
    unsetenv("FAKEACL_HANG_COPY");
    unsetenv("FAKEACL_ABORT");
    assert_int_equal(rc, 0);
    char *host = malloc(LEN);
    assert_int_equal(ferry_engine_create(NULL, &e), 0);
    assert_int_equal(ferry_register_memory(e, host, LEN, "cpu", 0), 0);
    assert_int_equal(ferry_open_segment(e, t.name, &seg), 0);
    struct rig r = {.t = t, .ops = ops, .e = e, .seg = seg, .local = host};
    for (int round = 0; round < 2; round++) {
        pattern_fill(host, LEN, 80 + round, 0);
        rc = transfer(&r, FERRY_WRITE, &bad);
        if (round == 0 && (rc == 0 || bad.state == FERRY_COMPLETED))
            fail_msg("a WRITE whose copy at the target hung completed");
        if (round == 1 && rc != 0)
            fail_msg("the WRITE after the hung one: %s", bad.message);
    }
    assert_int_equal(child_target_check(&r.t, 0, LEN, 81), -1);
    int status = child_target_quit(&r.t);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the target ended with status %#x (SIGABRT: it freed memory a hung copy still reads)", status);
    assert_int_equal(ferry_unregister_memory(e, host), 0);
    ferry_engine_destroy(e);
    free(host);
}

/* Over shm, the engine stages npu:0 memory (ferry has no Ascend IPC, so
 * shm cannot take it directly): a WRITE to a cpu target (a child) whose
 * device-to-host copy hangs, on a stream ACL cannot abort
 * (fakeacl_abort_supported(0)), fails naming npu:0, the next lands
 * (checked), and the engine's destroy frees nothing the held copy writes. */
static void hung_copy_staged_over_shm(void **state)
{
    (void)state;
    struct rig r;
    struct ferry_status bad;
    uint64_t *host = malloc(LEN);
    int could = can_abort;
    if (fake_abort_supported)
        fake_abort_supported(0);
    can_abort = 0;
    setenv("FERRY_PROTOCOLS", "shm", 1); /* the child's engine and this one: no staged tcp path */
    rig_up(&r, 9);
    unsetenv("FERRY_PROTOCOLS");
    pattern_fill(host, LEN, 90, 0);
    assert_int_equal(ferry_mem_copy(r.e, r.local, host, LEN), 0);
    unsigned long long hung = fake_stat("hung");
    fake_hang(1);
    assert_int_not_equal(transfer(&r, FERRY_WRITE, &bad), 0);
    assert_int_equal(fake_stat("hung"), hung + 1);
    if (bad.state == FERRY_COMPLETED || !strstr(bad.message, "npu:0"))
        fail_msg("a WRITE over a hung bounce copy: state %d error %d (%s)", bad.state, bad.error, bad.message);
    int rc = transfer(&r, FERRY_WRITE, &bad);
    if (rc != 0)
        fail_msg("the WRITE after the hung one: %s", bad.message);
    assert_int_equal(child_target_check(&r.t, 0, LEN, 90), -1);
    struct ferry_stats st;
    assert_int_equal(ferry_get_stats(r.e, &st), 0);
    assert_int_equal(st.transport_count, 1);
    assert_string_equal(st.transports[0].name, "shm");
    assert_true(st.transports[0].bytes_written >= LEN);
    assert_true(st.transports[0].bytes_staged >= LEN); /* through staging's chunks, not shm's bounce */
    rig_down(&r);
    free(host);
    if (fake_abort_supported)
        fake_abort_supported(1);
    can_abort = could;
}

/* An shm worker's pinned bounce (local device memory to a peer's host
 * memory, shm_frame.c), driven at the transport (shm_pair: two shm
 * transports in this process; the engine would stage npu memory instead):
 * a frame whose device-to-host copy into the bounce hangs on a stream ACL
 * cannot abort fails FERRY_ETIMEDOUT naming npu:0, the next frame lands
 * (checked), and destroying the transports frees no bounce the held copy
 * still writes (the fake aborts the process on such a free). */
static void hung_copy_through_the_shm_bounce(void **state)
{
    (void)state;
    const struct ferry_device_ops *ops = ferry_device_find("npu");
    assert_int_equal(ops->init(), 0);
    int could = can_abort;
    if (fake_abort_supported)
        fake_abort_supported(0);
    can_abort = 0;
    char *dbuf = NULL, *tbuf = calloc(1, LEN);
    uint64_t *host = malloc(LEN);
    assert_int_equal(ops->mem_alloc(0, LEN, (void **)&dbuf), 0);
    pattern_fill(host, LEN, 95, 0);
    struct ferry_copy fill = {dbuf, host, LEN};
    assert_int_equal(ferry_device_copy_sync(ops, 0, FERRY_COPY_H2D, &fill, 1), 0);
    struct shm_pair sp;
    shm_pair_start(&sp);
    void *handle;
    struct memreg_region rt = {(uint64_t)(uintptr_t)tbuf, LEN, "cpu", -1, 1, {0}};
    struct memreg_region rl = {(uint64_t)(uintptr_t)dbuf, LEN, "npu:0", 0, 0, {0}};
    assert_int_equal(sp.ops->register_memory(sp.tt, &rt, &handle), 0);
    assert_int_equal(memreg_add(&sp.reg_t, &rt), 0);
    assert_int_equal(memreg_add(&sp.reg_i, &rl), 0);
    void *peer = shm_pair_open_peer(&sp, &rt);
    struct frame_end ends[2];
    struct xfer_piece pieces[2] = {{dbuf, rt.addr, BLOCK, 0}, {dbuf, rt.addr, LEN, 0}};
    struct xfer_frame frames[2];
    unsigned long long hung = fake_stat("hung");
    unsigned base = frames_ended; /* no frame in flight: read without the lock */
    fake_hang(1);
    for (int k = 0; k < 2; k++) {
        frames[k] = (struct xfer_frame){.opcode = XFER_WRITE, .npieces = 1, .pieces = &pieces[k],
                                        .bytes = pieces[k].len, .deadline_ns = now_ns() + BOUND_MS * 1000000ull,
                                        .complete = frame_end_record, .owner = &ends[k]};
        sp.ops->submit(sp.ti, peer, &frames[k]);
        frames_wait_count(&frames_ended, base + (unsigned)k + 1);
    }
    assert_int_equal(fake_stat("hung"), hung + 1);
    if (ends[0].err != FERRY_ETIMEDOUT || !strstr(ends[0].msg, "npu:0"))
        fail_msg("a frame over a hung bounce copy: %s (%s)", ferry_err_name(ends[0].err), ends[0].msg);
    if (ends[1].err)
        fail_msg("the frame after the hung one: %s (%s)", ferry_err_name(ends[1].err), ends[1].msg);
    assert_int_equal(pattern_check(tbuf, LEN, 95, 0), -1);
    sp.ops->peer_close(sp.ti, peer);
    struct memreg_region gone;
    assert_int_equal(memreg_remove(&sp.reg_t, rt.addr, &gone), 0);
    sp.ops->unregister_memory(sp.tt, handle);
    shm_pair_stop(&sp); /* the workers end: a bounce freed here aborts the process */
    fake_unhang();
    ops->mem_free(0, dbuf);
    free(tbuf);
    free(host);
    if (fake_abort_supported)
        fake_abort_supported(1);
    can_abort = could;
}

int main(void)
{
    const char *path = getenv("FERRY_ASCEND_LIBRARY");
    if (!path || !*path)
        test_skip("FERRY_ASCEND_LIBRARY names no fake ACL runtime");
    lib = dlopen(path, RTLD_NOW);
    if (!lib)
        test_skip("cannot load %s: %s", path, dlerror());
    fake_stat = sym("fakeacl_stat");
    fake_hang = sym("fakeacl_hang");
    fake_unhang = sym("fakeacl_unhang");
    fake_abort_supported = dlsym(lib, "fakeacl_abort_supported");
    const char *abort_mode = getenv("FAKEACL_ABORT");
    can_abort = dlsym(lib, "aclrtStreamAbort") != NULL && !(abort_mode && strcmp(abort_mode, "unsupported") == 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hung_mem_copy_names_device_stream_and_code),
        cmocka_unit_test(hung_copies_end_timeout),
        cmocka_unit_test(hung_copies_abandoned_without_abort),
        cmocka_unit_test(hung_copy_at_the_target),
        cmocka_unit_test(hung_copy_staged_over_shm),
        cmocka_unit_test(hung_copy_through_the_shm_bounce),
    };
    if (getenv("FERRY_TEST_FILTER")) /* e.g. "hung_copies_end_timeout" */
        cmocka_set_test_filter(getenv("FERRY_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}

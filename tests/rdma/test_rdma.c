/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_rdma.c — the rdma transport on a real verbs stack: two engines (this
 * process and a forked target) talking RC queue pairs through one RDMA
 * device.  Runs in the Soft-RoCE VM (tests/rdma/vm-test.sh); on a host with
 * no RDMA device it skips (exit 77).
 *
 * Covers WRITE and READ over several block sizes and batch shapes with the
 * data checked on both sides, scatter-gather, notifications, the refusals
 * (before posting, and by the remote NIC), a target killed mid-transfer, a
 * stopped target (deadlines), a restarted target, staging of sim device
 * memory, and the knobs that choose GIDs, NICs and queue pairs.
 *
 * FERRY_TEST_RDMA_DEVICE names the device (default "auto"); FERRY_TEST_FILTER
 * runs only the tests matching a pattern.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "rdma_test.h"
#include "testutil.h"

#define TSIZE (16u << 20)
#define SEED 7

struct fixture {
    struct child_target target;
    ferry_engine *e;
    ferry_segment_t seg;
    uint8_t *local;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int make_engine(unsigned request_timeout_ms, ferry_engine **e)
{
    return rdma_test_engine(request_timeout_ms, 1000, e);
}

static int setup_with(void **state, const char *target_location, unsigned timeout_ms)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_int_equal(child_target_start(&f->target, TSIZE, target_location, SEED), 0);
    assert_int_equal(make_engine(timeout_ms, &f->e), 0);
    assert_int_equal(ferry_mem_alloc(f->e, "cpu", TSIZE, (void **)&f->local), 0);
    assert_int_equal(ferry_register_memory(f->e, f->local, TSIZE, "cpu", 0), 0);
    assert_int_equal(ferry_open_segment(f->e, f->target.name, &f->seg), 0);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_with(state, "cpu", 20000);
}

static int setup_short_timeout(void **state)
{
    return setup_with(state, "cpu", 1500);
}

/* A target whose sim memory its NICs cannot reach and that does not stage it
 * over rdma (FERRY_RDMA_STAGE_SLOTS=0; test_rdma_stage.c covers staging). */
static int setup_sim_target(void **state)
{
    setenv("FERRY_RDMA_STAGE_SLOTS", "0", 1);
    int rc = setup_with(state, "sim:0", 20000);
    unsetenv("FERRY_RDMA_STAGE_SLOTS");
    return rc;
}

static int setup_sim_target_both(void **state)
{
    setenv("FERRY_PROTOCOLS", "rdma,tcp", 1);
    setenv("FERRY_RDMA_STAGE_SLOTS", "0", 1);
    int rc = setup_with(state, "sim:0", 20000);
    unsetenv("FERRY_RDMA_STAGE_SLOTS");
    setenv("FERRY_PROTOCOLS", "rdma", 1);
    return rc;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    ferry_engine_destroy(f->e);
    child_target_kill(&f->target);
    free(f);
    return 0;
}

/* Submits n requests, waits; returns the wait result. */
static int run(struct fixture *f, const struct ferry_request *r, size_t n)
{
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, n, &b), 0);
    int rc = ferry_batch_submit(b, r, n);
    if (!rc)
        rc = ferry_batch_wait(b, 60000);
    if (rc)
        printf("  batch: %s: %s\n", ferry_err_name(rc), ferry_last_error());
    ferry_batch_free(b);
    return rc;
}

/* WRITE n blocks of bs (local and remote at stride) then READ them back. */
static void write_then_read(struct fixture *f, size_t bs, size_t n, size_t lstride, size_t rstride, uint64_t seed)
{
    static struct ferry_request r[1024]; /* static: a failed assert must not leak it */
    assert_true(n <= 1024);
    assert_non_null(r);
    assert_true((n - 1) * lstride + bs <= TSIZE / 2 && (n - 1) * rstride + bs <= TSIZE);
    for (size_t i = 0; i < n; i++) {
        pattern_fill(f->local + i * lstride, bs, seed, i * rstride);
        r[i] = (struct ferry_request){FERRY_WRITE, f->local + i * lstride, f->seg, f->target.addr + i * rstride, bs};
    }
    assert_int_equal(run(f, r, n), 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(child_target_check(&f->target, i * rstride, bs, seed), -1);
    uint8_t *back = f->local + TSIZE / 2;
    memset(back, 0, TSIZE / 2);
    for (size_t i = 0; i < n; i++)
        r[i] = (struct ferry_request){FERRY_READ, back + i * lstride, f->seg, f->target.addr + i * rstride, bs};
    assert_int_equal(run(f, r, n), 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(pattern_check(back + i * lstride, bs, seed, i * rstride), -1);
}

static void test_sizes_and_batches(void **state)
{
    struct fixture *f = *state;
    static const size_t sizes[] = {8, 4096, 65536, 1 << 20, (3 << 20) + 4096};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t bs = sizes[s], max = (TSIZE / 2) / bs;
        size_t batches[] = {1, 16, 64};
        for (size_t k = 0; k < 3; k++) {
            size_t n = batches[k] < max ? batches[k] : max;
            write_then_read(f, bs, n, bs, bs, 100 + s * 10 + k);
        }
    }
}

/* Remote gaps (no merging), local gaps with remote contiguous (one request,
 * several SGEs), and small odd sizes. */
static void test_scatter_gather(void **state)
{
    struct fixture *f = *state;
    write_then_read(f, 4096, 64, 4096, 8192, 201);
    write_then_read(f, 4096, 64, 12288, 4096, 202);
    write_then_read(f, 24, 64, 40, 24, 203);
}

static void test_mixed_batch(void **state)
{
    struct fixture *f = *state;
    enum { N = 32, BS = 16384 };
    struct ferry_request r[2 * N];
    uint8_t *back = f->local + TSIZE / 2;
    memset(back, 0, N * BS);
    for (size_t i = 0; i < N; i++) {
        pattern_fill(f->local + i * BS, BS, 301, i * BS);
        r[2 * i] = (struct ferry_request){FERRY_WRITE, f->local + i * BS, f->seg, f->target.addr + i * BS, BS};
        /* the upper half of the target still holds its own pattern */
        uint64_t off = TSIZE / 2 + i * BS;
        r[2 * i + 1] = (struct ferry_request){FERRY_READ, back + i * BS, f->seg, f->target.addr + off, BS};
    }
    assert_int_equal(run(f, r, 2 * N), 0);
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(child_target_check(&f->target, i * BS, BS, 301), -1);
        assert_int_equal(pattern_check(back + i * BS, BS, SEED, TSIZE / 2 + i * BS), -1);
    }
}

static void test_notification_after_data(void **state)
{
    struct fixture *f = *state;
    enum { N = 16, BS = 65536 };
    struct ferry_request r[N];
    ferry_batch *b;
    for (size_t i = 0; i < N; i++) {
        pattern_fill(f->local + i * BS, BS, 401, i * BS);
        r[i] = (struct ferry_request){FERRY_WRITE, f->local + i * BS, f->seg, f->target.addr + i * BS, BS};
    }
    assert_int_equal(ferry_batch_alloc(f->e, N, &b), 0);
    assert_int_equal(ferry_batch_set_notify(b, "kv-ready:42", 11), 0);
    assert_int_equal(ferry_batch_submit(b, r, N), 0);
    assert_int_equal(ferry_batch_wait(b, 60000), 0);
    ferry_batch_free(b);
    char note[64] = "";
    assert_int_equal(child_target_notification(&f->target, note, sizeof note), 11);
    assert_memory_equal(note, "kv-ready:42", 11);
    assert_int_equal(child_target_check(&f->target, 0, N * BS, 401), -1);
}

/* Out of the target's buffers: the engine refuses at submit (its descriptor
 * says so), nothing is posted, nothing changes on the target. */
static void test_out_of_range_refused(void **state)
{
    struct fixture *f = *state;
    ferry_batch *b;
    struct ferry_request r = {FERRY_WRITE, f->local, f->seg, f->target.addr + TSIZE - 100, 4096};
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &r, 1), FERRY_ERANGE);
    r.target_offset = f->target.addr - 4096;
    r.opcode = FERRY_READ;
    assert_int_equal(ferry_batch_submit(b, &r, 1), FERRY_ERANGE);
    ferry_batch_free(b);
    assert_int_equal(child_target_check(&f->target, 0, TSIZE, SEED), -1);
}

/* The target deregistered its buffer after we fetched its descriptor: our
 * check still passes, the target's NIC refuses (rkey gone). */
static void test_remote_nic_refuses(void **state)
{
    struct fixture *f = *state;
    write_then_read(f, 65536, 4, 65536, 65536, 501); /* queue pairs are up */
    pattern_fill(f->local, TSIZE / 2, SEED, 0);       /* what the target holds again */
    struct ferry_request w = {FERRY_WRITE, f->local, f->seg, f->target.addr, TSIZE / 2};
    assert_int_equal(run(f, &w, 1), 0);
    assert_int_equal(child_target_unregister(&f->target), 0);
    pattern_fill(f->local, 65536, 99, 0);
    struct ferry_request r[2] = {
        {FERRY_WRITE, f->local, f->seg, f->target.addr, 65536},
        {FERRY_READ, f->local + 65536, f->seg, f->target.addr + 65536, 65536},
    };
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 2, &b), 0);
    assert_int_equal(ferry_batch_submit(b, r, 2), 0);
    assert_int_equal(ferry_batch_wait(b, 60000), FERRY_ERANGE);
    for (size_t i = 0; i < 2; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        printf("  request %zu: %s %s\n", i, ferry_err_name(st.error), st.message);
        assert_int_equal(st.state, FERRY_FAILED);
        assert_int_equal(st.error, FERRY_ERANGE);
        assert_non_null(strstr(st.message, "refused by the remote NIC"));
    }
    ferry_batch_free(b);
    assert_int_equal(child_target_check(&f->target, 0, TSIZE / 2, SEED), -1);
}

static void test_peer_killed_mid_transfer(void **state)
{
    struct fixture *f = *state;
    enum { N = 128, BS = 64 << 10, PASSES = 16 };
    static struct ferry_request r[N * PASSES];
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, N * PASSES, &b), 0);
    for (size_t i = 0; i < N * PASSES; i++) /* 128 MiB: seconds at Soft-RoCE speed */
        r[i] = (struct ferry_request){FERRY_WRITE, f->local + (i % N) * BS, f->seg, f->target.addr + (i % N) * BS, BS};
    assert_int_equal(ferry_batch_submit(b, r, N * PASSES), 0);
    usleep(300 * 1000);
    double t0 = now_s();
    child_target_kill(&f->target);
    int rc = ferry_batch_wait(b, 30000);
    double took = now_s() - t0;
    printf("  wait returned %s after %.2f s: %s\n", ferry_err_name(rc), took, ferry_last_error());
    assert_int_not_equal(rc, 0);
    assert_true(took < 15);
    size_t failed = 0, done = 0;
    for (size_t i = 0; i < N * PASSES; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        assert_true(st.state == FERRY_COMPLETED || st.state == FERRY_FAILED || st.state == FERRY_TIMEOUT);
        if (st.state == FERRY_COMPLETED) {
            done++;
            continue;
        }
        failed++;
        assert_true(st.message[0] != '\0');
        if (failed == 1)
            printf("  first failure: request %zu %s: %s\n", i, ferry_err_name(st.error), st.message);
    }
    printf("  %zu completed, %zu failed\n", done, failed);
    assert_true(failed > 0);
    ferry_batch_free(b);
    /* the dead peer is an error at once, not a hang */
    t0 = now_s();
    struct ferry_request one = {FERRY_WRITE, f->local, f->seg, f->target.addr, 4096};
    assert_int_not_equal(run(f, &one, 1), 0);
    assert_true(now_s() - t0 < 10);
}

/* A stopped target: the side channel hangs, the request ends TIMEOUT. */
static void test_stopped_target_times_out(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(test_stop_process(f->target.pid), 0);
    double t0 = now_s();
    struct ferry_request one = {FERRY_WRITE, f->local, f->seg, f->target.addr, 4096};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &one, 1), 0);
    int rc = ferry_batch_wait(b, 30000);
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    printf("  %s after %.2f s: %s\n", ferry_err_name(rc), now_s() - t0, st.message);
    assert_int_equal(st.state, FERRY_TIMEOUT);
    assert_true(now_s() - t0 < 10);
    ferry_batch_free(b);
    kill(f->target.pid, SIGCONT);
}

/* The target restarts on the same handshake port: the first transfer fails
 * (its side channel moved, its engine id changed), the next one refreshes
 * the descriptor and succeeds. */
static void test_target_restart(void **state)
{
    struct fixture *f = *state;
    write_then_read(f, 4096, 4, 4096, 4096, 601);
    char name[64];
    int rc = child_target_restart(&f->target, TSIZE, "cpu", SEED, name);
    assert_int_equal(rc, 0);
    struct ferry_request w = {FERRY_WRITE, f->local, f->seg, f->target.addr, 4096};
    pattern_fill(f->local, 4096, 602, 0);
    rc = run(f, &w, 1);
    if (rc)
        rc = run(f, &w, 1);
    assert_int_equal(rc, 0);
    assert_int_equal(child_target_check(&f->target, 0, 4096, 602), -1);
}

/* Local sim device memory: no NIC reaches it, the engine stages it through
 * pinned host chunks registered with the rdma transport. */
static void test_staged_sim_memory(void **state)
{
    struct fixture *f = *state;
    enum { N = 48, BS = 65536 };
    uint8_t *dev;
    int rc = ferry_mem_alloc(f->e, "sim:0", N * BS, (void **)&dev);
    if (rc) {
        printf("  no sim device (%s): staging not tested\n", ferry_last_error());
        return;
    }
    assert_int_equal(ferry_register_memory(f->e, dev, N * BS, "sim:0", 0), 0);
    pattern_fill(f->local, N * BS, 701, 0);
    assert_int_equal(ferry_mem_copy(f->e, dev, f->local, N * BS), 0);
    struct ferry_request r[N];
    for (size_t i = 0; i < N; i++)
        r[i] = (struct ferry_request){FERRY_WRITE, dev + i * BS, f->seg, f->target.addr + i * BS, BS};
    assert_int_equal(run(f, r, N), 0);
    assert_int_equal(child_target_check(&f->target, 0, N * BS, 701), -1);
    /* READ into the device: the target's upper half still has its own pattern */
    for (size_t i = 0; i < N; i++)
        r[i] = (struct ferry_request){FERRY_READ, dev + i * BS, f->seg, f->target.addr + TSIZE / 2 + i * BS, BS};
    assert_int_equal(run(f, r, N), 0);
    memset(f->local, 0, N * BS);
    assert_int_equal(ferry_mem_copy(f->e, f->local, dev, N * BS), 0);
    assert_int_equal(pattern_check(f->local, N * BS, SEED, TSIZE / 2), -1);
    struct ferry_stats st;
    assert_int_equal(ferry_get_stats(f->e, &st), 0);
    assert_string_equal(st.transports[0].name, "rdma");
    assert_int_equal(ferry_unregister_memory(f->e, dev), 0);
    ferry_mem_free(f->e, "sim:0", dev, N * BS);
}

/* The target's buffer is sim memory its NIC cannot reach and it does not stage it: with rdma alone
 * no transport reaches it, a clear error at submit. */
static void test_remote_unreachable_memory(void **state)
{
    struct fixture *f = *state;
    struct ferry_request w = {FERRY_WRITE, f->local, f->seg, f->target.addr, 4096};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    int rc = ferry_batch_submit(b, &w, 1);
    if (rc == 0) /* an engine that does not ask can_reach: the transport refuses */
        rc = ferry_batch_wait(b, 60000);
    printf("  %s: %s\n", ferry_err_name(rc), ferry_last_error());
    assert_int_equal(rc, FERRY_ENOTSUP);
    ferry_batch_free(b);
}

/* Both sides offer rdma and tcp, the target stages only over tcp: requests
 * to its sim memory go over tcp, the rest over rdma. */
static void test_remote_device_memory_over_tcp(void **state)
{
    struct fixture *f = *state;
    enum { N = 16, BS = 65536 };
    struct ferry_request r[N];
    for (size_t i = 0; i < N; i++) {
        pattern_fill(f->local + i * BS, BS, 1101, i * BS);
        r[i] = (struct ferry_request){FERRY_WRITE, f->local + i * BS, f->seg, f->target.addr + i * BS, BS};
    }
    assert_int_equal(run(f, r, N), 0);
    assert_int_equal(child_target_check(&f->target, 0, N * BS, 1101), -1);
    uint8_t *back = f->local + TSIZE / 2;
    memset(back, 0, N * BS);
    for (size_t i = 0; i < N; i++)
        r[i] = (struct ferry_request){FERRY_READ, back + i * BS, f->seg, f->target.addr + i * BS, BS};
    assert_int_equal(run(f, r, N), 0);
    assert_int_equal(pattern_check(back, N * BS, 1101, 0), -1);
    struct ferry_stats st;
    assert_int_equal(ferry_get_stats(f->e, &st), 0);
    for (size_t i = 0; i < st.transport_count; i++) {
        printf("  %s: written %llu read %llu\n", st.transports[i].name,
               (unsigned long long)st.transports[i].bytes_written, (unsigned long long)st.transports[i].bytes_read);
        if (strcmp(st.transports[i].name, "tcp") == 0)
            assert_true(st.transports[i].bytes_written == N * BS && st.transports[i].bytes_read == N * BS);
        if (strcmp(st.transports[i].name, "rdma") == 0)
            assert_true(st.transports[i].bytes_written == 0);
    }
}

struct worker {
    struct fixture *f;
    int id;
    int rc;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    enum { N = 16, BS = 16384 };
    struct ferry_request r[N];
    for (int iter = 0; iter < 20 && !w->rc; iter++) {
        for (size_t i = 0; i < N; i++) {
            size_t off = ((size_t)w->id * N + i) * BS;
            r[i] = (struct ferry_request){iter % 2 ? FERRY_READ : FERRY_WRITE, w->f->local + off, w->f->seg,
                                          w->f->target.addr + off, BS};
        }
        ferry_batch *b;
        w->rc = ferry_batch_alloc(w->f->e, N, &b);
        if (!w->rc)
            w->rc = ferry_batch_submit(b, r, N);
        if (!w->rc)
            w->rc = ferry_batch_wait(b, 60000);
        ferry_batch_free(b);
    }
    return NULL;
}

static void test_threads_share_paths(void **state)
{
    struct fixture *f = *state;
    enum { T = 4 };
    pthread_t tid[T];
    struct worker w[T];
    pattern_fill(f->local, TSIZE / 2, 801, 0);
    for (int i = 0; i < T; i++) {
        w[i] = (struct worker){f, i, 0};
        assert_int_equal(pthread_create(&tid[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(tid[i], NULL);
        assert_int_equal(w[i].rc, 0);
    }
    assert_int_equal(child_target_check(&f->target, 0, (size_t)T * 16 * 16384, 801), -1);
}

/* Re-creates the fixture's engine with extra FERRY_RDMA_* settings
 * ("NAME=VALUE" strings, NULL-terminated). */
static void reopen_engine(struct fixture *f, const char *const *env)
{
    ferry_engine_destroy(f->e);
    f->e = NULL;
    for (size_t i = 0; env[i]; i++)
        putenv((char *)env[i]);
    int rc = make_engine(20000, &f->e);
    if (rc)
        printf("  engine with knobs: %s: %s\n", ferry_err_name(rc), ferry_last_error());
    for (size_t i = 0; env[i]; i++) {
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(strchr(env[i], '=') - env[i]), env[i]);
        unsetenv(name);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(ferry_register_memory(f->e, f->local, TSIZE, "cpu", 0), 0);
    assert_int_equal(ferry_open_segment(f->e, f->target.name, &f->seg), 0);
}

/* Shuts down one of this process's side-channel connections to the target
 * (any connected TCP socket not to its handshake port): the queue pair it
 * belongs to breaks, as if that NIC pair had failed. */
static int cut_one_side_channel(int handshake_port)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    int cut = -1;
    while (d && cut < 0 && (de = readdir(d))) {
        int fd = atoi(de->d_name), type = 0;
        struct sockaddr_in peer;
        socklen_t tl = sizeof type, pl = sizeof peer;
        if (fd <= 2 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) || type != SOCK_STREAM ||
            getpeername(fd, (struct sockaddr *)&peer, &pl) || peer.sin_family != AF_INET ||
            ntohs(peer.sin_port) == handshake_port)
            continue;
        shutdown(fd, SHUT_RDWR);
        cut = fd;
    }
    if (d)
        closedir(d);
    return cut;
}

/* One of four queue pairs fails mid-transfer: its frames are retried on the
 * others and every request completes with the right bytes. */
static void test_path_failure_retried(void **state)
{
    struct fixture *f = *state;
    static const char *const env[] = {"FERRY_RDMA_QPS_PER_PATH=4", NULL};
    reopen_engine(f, env);
    write_then_read(f, 65536, 16, 65536, 65536, 1001); /* the paths are up */
    enum { N = 128, BS = 65536, PASSES = 4 };
    static struct ferry_request r[N * PASSES];
    pattern_fill(f->local, N * BS, 1002, 0);
    for (size_t i = 0; i < N * PASSES; i++)
        r[i] = (struct ferry_request){FERRY_WRITE, f->local + (i % N) * BS, f->seg, f->target.addr + (i % N) * BS, BS};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, N * PASSES, &b), 0);
    assert_int_equal(ferry_batch_submit(b, r, N * PASSES), 0);
    usleep(150 * 1000);
    int fd = cut_one_side_channel(atoi(strrchr(f->target.name, ':') + 1));
    int rc = ferry_batch_wait(b, 60000);
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, N * PASSES - 1, &st), 0);
    printf("  cut side channel fd %d; batch %s %s\n", fd, ferry_err_name(rc), rc ? ferry_last_error() : "");
    assert_true(fd >= 0);
    assert_int_equal(rc, 0);
    ferry_batch_free(b);
    assert_int_equal(child_target_check(&f->target, 0, N * BS, 1002), -1);
}

/* Knobs: several queue pairs per NIC pair, the link-local RoCE v2 GID, no stall watchdog. */
static void test_knobs(void **state)
{
    struct fixture *f = *state;
    static const char *const env[] = {"FERRY_RDMA_QPS_PER_PATH=3", "FERRY_RDMA_GID_INDEX=0", "FERRY_RDMA_MAX_WR=8",
                                      "FERRY_RDMA_MAX_SGE=2", "FERRY_RDMA_MTU=512", "FERRY_RDMA_AFFINITY=0",
                                      "FERRY_RDMA_MAX_MSG=65536", "FERRY_SLICE_SIZE=4194304",
                                      "FERRY_STAGING_CHUNK_SIZE=4194304", "FERRY_RDMA_STALL_MS=0", NULL};
    reopen_engine(f, env);
    write_then_read(f, 8192, 64, 8192, 8192, 901); /* 64 pieces through 8-deep queues */
    write_then_read(f, 1 << 20, 8, 1 << 20, 1 << 20, 902);
    /* 4 MiB slices as 64 KiB messages: each frame is posted over several rounds */
    write_then_read(f, (3 << 20) + 8192, 2, 4 << 20, 4 << 20, 903);
}

static void test_bad_config(void **state)
{
    (void)state;
    ferry_engine *e = NULL;
    setenv("FERRY_DEVICE_NAME", "nosuch0", 1);
    assert_int_equal(make_engine(1000, &e), FERRY_ENODEV);
    printf("  %s\n", ferry_last_error());
    assert_non_null(strstr(ferry_last_error(), "nosuch0"));
    unsetenv("FERRY_DEVICE_NAME");
    setenv("FERRY_RDMA_GID_INDEX", "200", 1);
    assert_int_equal(make_engine(1000, &e), FERRY_ENODEV);
    printf("  %s\n", ferry_last_error());
    setenv("FERRY_RDMA_GID_INDEX", "banana", 1);
    assert_int_equal(make_engine(1000, &e), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "FERRY_RDMA_GID_INDEX"));
    unsetenv("FERRY_RDMA_GID_INDEX");
    setenv("FERRY_RDMA_STALL_MS", "3600001", 1); /* above an hour */
    assert_int_equal(make_engine(1000, &e), FERRY_EINVAL);
    printf("  %s\n", ferry_last_error());
    assert_non_null(strstr(ferry_last_error(), "FERRY_RDMA_STALL_MS"));
    unsetenv("FERRY_RDMA_STALL_MS");
}

int main(void)
{
    rdma_test_require_device();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sizes_and_batches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scatter_gather, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mixed_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notification_after_data, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads_share_paths, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_range_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remote_nic_refuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_staged_sim_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remote_unreachable_memory, setup_sim_target, teardown),
        cmocka_unit_test_setup_teardown(test_remote_device_memory_over_tcp, setup_sim_target_both, teardown),
        cmocka_unit_test_setup_teardown(test_peer_killed_mid_transfer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stopped_target_times_out, setup_short_timeout, teardown),
        cmocka_unit_test_setup_teardown(test_target_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_path_failure_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_knobs, setup, teardown),
        cmocka_unit_test(test_bad_config),
    };
    if (getenv("FERRY_TEST_FILTER")) /* e.g. "test_knobs" or "*peer*" */
        cmocka_set_test_filter(getenv("FERRY_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}

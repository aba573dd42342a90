/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_rdma_stage.c — target-side staging over rdma and unregister while a
 * peer is mid-transfer, on a real verbs stack (the Soft-RoCE VM; skips with
 * 77 where there is no RDMA device).
 *
 * Targets are forked engines (testutil's child_target) whose buffer is host
 * memory or `sim` device memory, which no NIC reaches: the target stages it
 * through the bounce of each queue pair.  The initiator's memory is host or
 * sim too (staged by its own staging pool), so all four combinations run,
 * for WRITE and READ, several block sizes and batches, data checked.  Then
 * the ends: one bounce slot for many requests (credits), a device copy that
 * fails on the target, a target killed mid-copy, and unregister on either
 * side while requests are in flight: every request ends COMPLETED or FAILED
 * and nothing lands after ferry_unregister_memory returned.  Last, an
 * initiator (this program again, --initiator-loop) killed mid-transfer: the
 * target ends its side channels (queue pairs and bounces freed) and serves on.
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <fcntl.h>
#include <dirent.h>

#include "rdma_test.h"
#include "testutil.h"

#define TSIZE (8u << 20)
#define SEED 11

struct fixture {
    struct child_target cpu, sim;   /* targets: host memory, sim device memory */
    ferry_segment_t cpu_seg, sim_seg;
    ferry_engine *e;
    uint8_t *host;                  /* TSIZE of registered host memory */
    uint8_t *dev;                   /* TSIZE of registered sim:0 memory (NULL: no sim device) */
    uint8_t *scratch;               /* unregistered host memory for checks */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int make_engine(unsigned request_timeout_ms, ferry_engine **e)
{
    return rdma_test_engine(request_timeout_ms, 3000, e);
}

/* Targets get FERRY_* settings "NAME=VALUE" (NULL-terminated, may be NULL). */
static int setup_env(void **state, const char *const *target_env)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    for (size_t i = 0; target_env && target_env[i]; i++)
        putenv((char *)target_env[i]);
    int rc_cpu = child_target_start(&f->cpu, TSIZE, "cpu", SEED);
    int rc_sim = child_target_start(&f->sim, TSIZE, "sim:0", SEED);
    for (size_t i = 0; target_env && target_env[i]; i++) {
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(strchr(target_env[i], '=') - target_env[i]), target_env[i]);
        unsetenv(name);
    }
    assert_int_equal(rc_cpu, 0);
    assert_int_equal(rc_sim, 0);
    assert_int_equal(make_engine(20000, &f->e), 0);
    assert_int_equal(ferry_mem_alloc(f->e, "cpu", TSIZE, (void **)&f->host), 0);
    assert_int_equal(ferry_register_memory(f->e, f->host, TSIZE, "cpu", 0), 0);
    if (ferry_mem_alloc(f->e, "sim:0", TSIZE, (void **)&f->dev) == 0)
        assert_int_equal(ferry_register_memory(f->e, f->dev, TSIZE, "sim:0", 0), 0);
    else
        f->dev = NULL;
    f->scratch = malloc(TSIZE);
    assert_non_null(f->scratch);
    assert_int_equal(ferry_open_segment(f->e, f->cpu.name, &f->cpu_seg), 0);
    assert_int_equal(ferry_open_segment(f->e, f->sim.name, &f->sim_seg), 0);
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_env(state, NULL);
}

static int setup_one_small_slot(void **state)
{
    static const char *const env[] = {"FERRY_RDMA_STAGE_SLOTS=1", "FERRY_RDMA_STAGE_SLOT_SIZE=65536", NULL};
    return setup_env(state, env);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    ferry_engine_destroy(f->e);
    child_target_kill(&f->cpu);
    child_target_kill(&f->sim);
    free(f->scratch);
    free(f);
    return 0;
}

static int wait_batch(ferry_batch *b, const char *what)
{
    int rc = ferry_batch_wait(b, 120000);
    if (rc)
        printf("  %s: %s: %s\n", what, ferry_err_name(rc), ferry_last_error());
    return rc;
}

static int run(struct fixture *f, const struct ferry_request *r, size_t n)
{
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, n, &b), 0);
    int rc = ferry_batch_submit(b, r, n);
    if (!rc)
        rc = wait_batch(b, "batch");
    else
        printf("  submit: %s: %s\n", ferry_err_name(rc), ferry_last_error());
    ferry_batch_free(b);
    return rc;
}

/* Local memory of the fixture: host or sim; filled / read through the device layer. */
static void local_fill(struct fixture *f, uint8_t *mem, size_t len, uint64_t seed, uint64_t pos)
{
    pattern_fill(f->scratch, len, seed, pos);
    assert_int_equal(ferry_mem_copy(f->e, mem, f->scratch, len), 0);
}

static long local_check(struct fixture *f, const uint8_t *mem, size_t len, uint64_t seed, uint64_t pos)
{
    memset(f->scratch, 0, len);
    assert_int_equal(ferry_mem_copy(f->e, f->scratch, mem, len), 0);
    return pattern_check(f->scratch, len, seed, pos);
}

/* WRITE n blocks of bs from local memory to the target, check them there,
 * READ them back into the local upper half, check them here. */
static void write_then_read(struct fixture *f, uint8_t *local, struct child_target *t, ferry_segment_t seg,
                            size_t bs, size_t n, uint64_t seed)
{
    static struct ferry_request r[256];
    assert_true(n <= 256 && n * bs <= TSIZE / 2);
    local_fill(f, local, n * bs, seed, 0);
    for (size_t i = 0; i < n; i++)
        r[i] = (struct ferry_request){FERRY_WRITE, local + i * bs, seg, t->addr + i * bs, bs};
    assert_int_equal(run(f, r, n), 0);
    assert_int_equal(child_target_check(t, 0, n * bs, seed), -1);
    uint8_t *back = local + TSIZE / 2;
    local_fill(f, back, n * bs, 999, 0); /* not what will be read */
    for (size_t i = 0; i < n; i++)
        r[i] = (struct ferry_request){FERRY_READ, back + i * bs, seg, t->addr + i * bs, bs};
    assert_int_equal(run(f, r, n), 0);
    assert_int_equal(local_check(f, back, n * bs, seed, 0), -1);
}

/* Returns once the batch's first request ended: the rest is in flight. */
static void wait_first(ferry_batch *b)
{
    struct ferry_status st;
    do {
        assert_int_equal(ferry_batch_status(b, 0, &st), 0);
        if (st.state == FERRY_PENDING)
            usleep(1000);
    } while (st.state == FERRY_PENDING);
}

static const struct ferry_transport_stats *rdma_stats(struct ferry_stats *st)
{
    for (size_t i = 0; i < st->transport_count; i++)
        if (strcmp(st->transports[i].name, "rdma") == 0)
            return &st->transports[i];
    fail_msg("no rdma transport in the stats");
    return NULL;
}

/* The four combinations (initiator host / sim x target host / sim), WRITE
 * and READ, block sizes below, at and above a bounce slot, batches. */
static void test_four_combinations(void **state)
{
    struct fixture *f = *state;
    if (!f->dev)
        printf("  no sim device here: the initiator-staged half is skipped\n");
    static const size_t sizes[] = {8, 65536, (1 << 20) + 4096, 3 << 20};
    static const size_t batches[] = {1, 64};
    uint64_t seed = 100;
    for (int lsim = 0; lsim < 2; lsim++) {
        uint8_t *local = lsim ? f->dev : f->host;
        if (!local)
            continue;
        for (int tsim = 0; tsim < 2; tsim++) {
            struct child_target *t = tsim ? &f->sim : &f->cpu;
            ferry_segment_t seg = tsim ? f->sim_seg : f->cpu_seg;
            for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
                for (size_t k = 0; k < 2; k++) {
                    size_t n = batches[k];
                    while (n > 1 && n * sizes[s] > TSIZE / 2)
                        n /= 2;
                    printf("  initiator %s, target %s: %zu x %zu bytes\n", lsim ? "sim" : "cpu",
                           tsim ? "sim" : "cpu", n, sizes[s]);
                    write_then_read(f, local, t, seg, sizes[s], n, seed++);
                }
            }
        }
    }
    struct ferry_stats st;
    assert_int_equal(ferry_get_stats(f->e, &st), 0);
    const struct ferry_transport_stats *r = rdma_stats(&st);
    printf("  rdma: written %llu read %llu staged %llu target-staged %llu, %zu nic(s), %s %llu\n",
           (unsigned long long)r->bytes_written, (unsigned long long)r->bytes_read,
           (unsigned long long)r->bytes_staged, (unsigned long long)r->bytes_target_staged, r->nic_count,
           r->nics[0].name, (unsigned long long)r->nics[0].bytes);
    assert_true(r->bytes_target_staged > 0 && r->bytes_target_staged < r->bytes_written + r->bytes_read);
    assert_true(!f->dev || r->bytes_staged > 0);
    assert_true(r->nic_count >= 1 && r->nics[0].bytes >= r->bytes_written + r->bytes_read);
}

/* One bounce slot of 64 KiB for 16 requests of 256 KiB in one batch: the
 * initiator waits for credits (64 stages each way), the data arrives whole. */
static void test_one_slot_credits(void **state)
{
    struct fixture *f = *state;
    write_then_read(f, f->host, &f->sim, f->sim_seg, 256 << 10, 16, 301);
    write_then_read(f, f->host, &f->sim, f->sim_seg, 100, 64, 302);
}

/* The target's device copies fail (fault injected: its memory is freed
 * behind its registration): WRITE and READ fail with the target's reason. */
static void test_target_copy_error(void **state)
{
    struct fixture *f = *state;
    write_then_read(f, f->host, &f->sim, f->sim_seg, 65536, 4, 401);
    assert_int_equal(child_target_free_device_memory(&f->sim), 0);
    for (int op = 0; op < 2; op++) {
        struct ferry_request r[8];
        for (size_t i = 0; i < 8; i++)
            r[i] = (struct ferry_request){op ? FERRY_READ : FERRY_WRITE, f->host + i * 65536, f->sim_seg,
                                          f->sim.addr + i * 65536, 65536};
        ferry_batch *b;
        assert_int_equal(ferry_batch_alloc(f->e, 8, &b), 0);
        assert_int_equal(ferry_batch_submit(b, r, 8), 0);
        int rc = wait_batch(b, op ? "READ" : "WRITE");
        assert_int_not_equal(rc, 0);
        for (size_t i = 0; i < 8; i++) {
            struct ferry_status st;
            assert_int_equal(ferry_batch_status(b, i, &st), 0);
            if (i == 0)
                printf("  %s: %s %s\n", op ? "READ" : "WRITE", ferry_err_name(st.error), st.message);
            assert_int_equal(st.state, FERRY_FAILED);
            assert_non_null(strstr(st.message, "could not stage"));
        }
        ferry_batch_free(b);
    }
}

/* The target dies while it copies: every request ends, soon. */
static void test_target_killed_mid_copy(void **state)
{
    struct fixture *f = *state;
    enum { N = 64, BS = 65536, PASSES = 16 };
    static struct ferry_request r[N * PASSES];
    for (size_t i = 0; i < N * PASSES; i++)
        r[i] = (struct ferry_request){i % 2 ? FERRY_READ : FERRY_WRITE, f->host + (i % N) * BS, f->sim_seg,
                                      f->sim.addr + (i % N) * BS, BS};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, N * PASSES, &b), 0);
    assert_int_equal(ferry_batch_submit(b, r, N * PASSES), 0);
    usleep(300 * 1000);
    double t0 = now_s();
    child_target_kill(&f->sim);
    int rc = ferry_batch_wait(b, 60000);
    double took = now_s() - t0;
    printf("  wait: %s after %.2f s\n", ferry_err_name(rc), took);
    assert_int_not_equal(rc, 0);
    assert_int_not_equal(rc, FERRY_ETIMEDOUT); /* the wait itself ended because every request did */
    size_t failed = 0;
    for (size_t i = 0; i < N * PASSES; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        assert_true(st.state == FERRY_COMPLETED || st.state == FERRY_FAILED || st.state == FERRY_TIMEOUT);
        if (st.state != FERRY_COMPLETED && failed++ == 0)
            printf("  first failure: request %zu: %s %s\n", i, ferry_err_name(st.error), st.message);
    }
    assert_true(failed > 0);
    ferry_batch_free(b);
}

/* A peer mid-transfer while the target unregisters: then the target fills
 * its buffer anew; whatever the requests still did, none of it may land
 * after unregister returned.  Direct (host target) and staged (sim target). */
static void unregister_target_mid_transfer(struct fixture *f, struct child_target *t, ferry_segment_t seg)
{
    enum { N = 64, BS = 65536, PASSES = 8 };
    static struct ferry_request r[N * PASSES];
    local_fill(f, f->host, N * BS, 501, 0);
    for (size_t i = 0; i < N * PASSES; i++)
        r[i] = (struct ferry_request){FERRY_WRITE, f->host + (i % N) * BS, seg, t->addr + (i % N) * BS, BS};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(f->e, N * PASSES, &b), 0);
    assert_int_equal(ferry_batch_submit(b, r, N * PASSES), 0);
    wait_first(b);
    assert_int_equal(child_target_unregister(t), 0);
    assert_int_equal(child_target_fill(t, 502), 0);
    int rc = ferry_batch_wait(b, 120000);
    size_t done = 0, failed = 0, erange = 0;
    for (size_t i = 0; i < N * PASSES; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        assert_true(st.state == FERRY_COMPLETED || st.state == FERRY_FAILED);
        if (st.state == FERRY_COMPLETED) {
            done++;
        } else {
            assert_true(st.message[0] != '\0');
            erange += st.error == FERRY_ERANGE;
            if (failed++ == 0)
                printf("  first failure: request %zu: %s %s\n", i, ferry_err_name(st.error), st.message);
        }
    }
    printf("  batch %s: %zu completed, %zu failed (%zu ERANGE)\n", ferry_err_name(rc), done, failed, erange);
    ferry_batch_free(b);
    /* nothing landed after unregister returned */
    assert_int_equal(child_target_check(t, 0, TSIZE, 502), -1);
    /* and the buffer comes back when registered again */
    assert_int_equal(child_target_register(t), 0);
}

static void test_unregister_target_direct(void **state)
{
    struct fixture *f = *state;
    unregister_target_mid_transfer(f, &f->cpu, f->cpu_seg);
}

static void test_unregister_target_staged(void **state)
{
    struct fixture *f = *state;
    unregister_target_mid_transfer(f, &f->sim, f->sim_seg);
}

/* The initiator unregisters its own buffer while READs into it are in
 * flight, then overwrites it: no byte of a READ may land afterwards, and
 * the MRs go only once no work request uses them. */
static void test_unregister_initiator_mid_read(void **state)
{
    struct fixture *f = *state;
    enum { N = 64, BS = 65536, PASSES = 8 };
    static struct ferry_request r[N * PASSES];
    for (int tsim = 0; tsim < 2; tsim++) {
        struct child_target *t = tsim ? &f->sim : &f->cpu;
        ferry_segment_t seg = tsim ? f->sim_seg : f->cpu_seg;
        write_then_read(f, f->host, t, seg, 4096, 4, 600); /* queue pairs up: the batch reaches the wire at once */
        for (size_t i = 0; i < N * PASSES; i++)
            r[i] = (struct ferry_request){FERRY_READ, f->host + (i % N) * BS, seg, t->addr + (i % N) * BS, BS};
        ferry_batch *b;
        assert_int_equal(ferry_batch_alloc(f->e, N * PASSES, &b), 0);
        assert_int_equal(ferry_batch_submit(b, r, N * PASSES), 0);
        double t0 = now_s();
        assert_int_equal(ferry_unregister_memory(f->e, f->host), 0);
        printf("  unregister returned after %.3f s\n", now_s() - t0);
        pattern_fill(f->host, N * BS, 601, 0);
        int rc = ferry_batch_wait(b, 120000);
        size_t done = 0, failed = 0;
        for (size_t i = 0; i < N * PASSES; i++) {
            struct ferry_status st;
            assert_int_equal(ferry_batch_status(b, i, &st), 0);
            assert_true(st.state == FERRY_COMPLETED || st.state == FERRY_FAILED);
            if (st.state == FERRY_COMPLETED) {
                done++;
                continue;
            }
            if (failed++ == 0)
                printf("  first failure: request %zu: %s %s\n", i, ferry_err_name(st.error), st.message);
            /* the memory went away under it, and nothing else: no local protection fault of a
             * work request whose MR was deregistered while it was posted */
            assert_int_equal(st.error, FERRY_ERANGE);
        }
        printf("  target %s: batch %s: %zu completed, %zu failed\n", tsim ? "sim" : "cpu", ferry_err_name(rc), done,
               failed);
        ferry_batch_free(b);
        assert_int_equal(pattern_check(f->host, N * BS, 601, 0), -1);
        assert_int_equal(ferry_register_memory(f->e, f->host, TSIZE, "cpu", 0), 0);
    }
}

/* ------------------------------------------------------------ the initiator dies */

enum { LOOP_N = 32, LOOP_BS = 65536 };

/* The body of a killed initiator (this program run again with
 * --initiator-loop SEGMENT ADDR): WRITE and READ batches into the first
 * LOOP_N * LOOP_BS bytes of the target, staged there, until killed; prints
 * "running" once the first batch completed.  Exits 3 on any failure. */
static int initiator_loop(const char *segment, const char *addr_text)
{
    uint64_t addr = strtoull(addr_text, NULL, 0);
    ferry_engine *e;
    ferry_segment_t seg;
    uint8_t *buf;
    ferry_batch *b;
    static struct ferry_request r[LOOP_N];
    if (make_engine(60000, &e) || ferry_open_segment(e, segment, &seg) ||
        ferry_mem_alloc(e, "cpu", LOOP_N * LOOP_BS, (void **)&buf) ||
        ferry_register_memory(e, buf, LOOP_N * LOOP_BS, "cpu", 0)) {
        fprintf(stderr, "initiator loop: %s\n", ferry_last_error());
        return 3;
    }
    pattern_fill(buf, LOOP_N * LOOP_BS, 700, 0);
    for (unsigned pass = 0;; pass++) {
        for (size_t i = 0; i < LOOP_N; i++)
            r[i] = (struct ferry_request){(pass + i) % 2 ? FERRY_READ : FERRY_WRITE, buf + i * LOOP_BS, seg,
                                          addr + i * LOOP_BS, LOOP_BS};
        int rc = ferry_batch_alloc(e, LOOP_N, &b);
        if (!rc && !(rc = ferry_batch_submit(b, r, LOOP_N)))
            rc = ferry_batch_wait(b, 60000);
        if (!rc)
            ferry_batch_free(b);
        if (rc) {
            fprintf(stderr, "initiator loop: pass %u: %s: %s\n", pass, ferry_err_name(rc), ferry_last_error());
            return 3;
        }
        if (pass == 0) {
            printf("running\n");
            fflush(stdout);
        }
    }
}

/* Side-channel threads of process pid: its /proc/PID/task entries named
 * "ferry-rdma-sc" (rdma_server.c names them), one per initiator queue pair,
 * each of which destroys its queue pair and bounce before it ends; -1 on error. */
static long side_channels_of(pid_t pid)
{
    char path[64], comm[32];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    long n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char file[128];
        snprintf(file, sizeof file, "/proc/%d/task/%.20s/comm", (int)pid, e->d_name);
        FILE *f = fopen(file, "re");
        if (f && fgets(comm, sizeof comm, f) && strcmp(comm, "ferry-rdma-sc\n") == 0)
            n++;
        if (f)
            fclose(f);
    }
    closedir(d);
    return n;
}

/* Waits (60 s at most) until count() == want; returns the last count. */
static long settle(long (*count)(const void *), const void *arg, long want)
{
    long n = count(arg);
    for (double t0 = now_s(); n != want && now_s() - t0 < 60;) {
        usleep(100 * 1000);
        n = count(arg);
    }
    return n;
}

static long count_side_channels(const void *t)
{
    return side_channels_of(((const struct child_target *)t)->pid);
}

/* An initiator killed while the target copies its staged requests: the
 * target keeps serving, ends that initiator's side channels (one thread
 * each, which destroys its queue pair and bounce before it returns), and
 * nothing outside the initiator's ranges changed.  (`rdma resource show`
 * would count queue pairs, but the guest's kernel does not list user ones.) */
static void test_initiator_killed_mid_copy(void **state)
{
    struct fixture *f = *state;
    struct child_target *t = &f->sim;
    long threads0 = side_channels_of(t->pid);
    assert_true(threads0 >= 0);
    int out[2];
    char addr[32];
    snprintf(addr, sizeof addr, "0x%llx", (unsigned long long)t->addr);
    assert_int_equal(pipe2(out, O_CLOEXEC), 0);
    pid_t parent = getpid();
    pid_t pid = fork(); /* then only async-signal-safe calls until exec: this process has threads */
    assert_true(pid >= 0);
    if (pid == 0) {
        test_child_dies_with_parent(parent);
        dup2(out[1], 1);
        close(out[0]);
        close(out[1]);
        execl("/proc/self/exe", "test_rdma_stage", "--initiator-loop", t->name, addr, (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    FILE *in = fdopen(out[0], "r");
    char line[64] = "";
    assert_non_null(fgets(line, sizeof line, in)); /* blocks until the first batch completed, or the child died */
    assert_string_equal(line, "running\n");
    long threads1 = side_channels_of(t->pid);
    assert_int_equal(kill(pid, SIGKILL), 0); /* its next batches are on the wire, or in the target's copies */
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    fclose(in);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL); /* it was looping, not failed */
    printf("  target side-channel threads: %ld before, %ld with the initiator\n", threads0, threads1);
    assert_true(threads1 > threads0); /* a side-channel thread per queue pair of the initiator */
    long threads = settle(count_side_channels, t, threads0);
    printf("  after the kill: %ld\n", threads);
    assert_int_equal(threads, threads0);
    /* the target lives, and the bytes the initiator never addressed are as they were */
    assert_int_equal(child_target_check(t, LOOP_N * LOOP_BS, TSIZE - LOOP_N * LOOP_BS, SEED), -1);
    write_then_read(f, f->host, t, f->sim_seg, 65536, 16, 701);
    write_then_read(f, f->host, t, f->sim_seg, 3 << 20, 1, 702);
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "--initiator-loop") == 0)
        return initiator_loop(argv[2], argv[3]);
    rdma_test_require_device();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_four_combinations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_slot_credits, setup_one_small_slot, teardown),
        cmocka_unit_test_setup_teardown(test_target_copy_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_target_killed_mid_copy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unregister_target_direct, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unregister_target_staged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unregister_initiator_mid_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_initiator_killed_mid_copy, setup, teardown),
    };
    if (getenv("FERRY_TEST_FILTER"))
        cmocka_set_test_filter(getenv("FERRY_TEST_FILTER"));
    return cmocka_run_group_tests(tests, NULL, NULL);
}

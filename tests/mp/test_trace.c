/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_trace.c — FERRY_TRACE end to end.  An initiator engine runs in a
 * forked child (FERRY_TRACE is read once per process and written at exit),
 * the target in the usual ferry_test_target process, both over tcp on
 * 127.0.0.1; once both exited, this process reads their files and checks what
 * holds whatever the scheduling: every line parses, each batch's events come
 * in causal order on the threads that own them, and with four idle
 * connections one submit of 16 x 1 MiB leaves the socket copies to the
 * sender threads (the submitting thread writes at most the submit's last
 * frame itself: the regression fixed in af315c1).  A FERRY_TRACE path that
 * cannot be written is reported when the engine starts, and the process runs
 * on untraced.  Single-threaded apart from the engines' own threads.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "testutil.h"
#include "trace.h"

#define MIB (1u << 20)
#define TARGET_SIZE (32u * MIB) /* MANY_FRAMES; the others need 8 MiB */
#define TARGET_SEED 23
#define ENGINE_UP "initiator: engine created" /* on the child's stderr */

/* trace.c's names, in trace.h's order (adding an event breaks this build
 * until the test knows it) */
static const char *const event_names[] = {
    "batch_submit", "batch_submitted", "batch_done",  "batch_woken",  "stage_queued",
    "stage_issue",  "stage_retired",   "tcp_send",    "tcp_sent",     "tcp_ack",
    "srv_frame",    "srv_payload",     "srv_copy",    "srv_answered", "shm_group",
    "shm_copied",   "copy_begin",      "copy_queued", "copy_synced",  "copy_wait",
};
_Static_assert(sizeof event_names / sizeof event_names[0] == TR_NEVENTS, "an event the test does not know");

struct rec {
    uint64_t ns, arg;
    unsigned long tid;
    int ev;
};

struct trace {
    struct rec *r;
    size_t n;
};

/* Reads a trace file; fails the test on any line that is not
 * "ns thread event arg" with a known event, and on dropped records. */
static void trace_load(const char *path, struct trace *t)
{
    FILE *f = fopen(path, "re");
    if (!f)
        fail_msg("no trace file %s: %s", path, strerror(errno));
    char line[256];
    size_t cap = 0, lineno = 0;
    memset(t, 0, sizeof *t);
    while (fgets(line, sizeof line, f)) {
        lineno++;
        unsigned long long ns, arg;
        unsigned long tid;
        char name[32];
        int used = 0;
        if (sscanf(line, "%llu %lu %31s %llu%n", &ns, &tid, name, &arg, &used) != 4 || strcmp(line + used, "\n"))
            fail_msg("%s:%zu: not \"ns thread event arg\": %s", path, lineno, line);
        int ev = -1;
        for (int i = 0; i < TR_NEVENTS; i++)
            if (strcmp(name, event_names[i]) == 0)
                ev = i;
        if (ev < 0 || !ns || !tid)
            fail_msg("%s:%zu: unknown event, no time or no thread: %s", path, lineno, line);
        if (t->n == cap) {
            cap = cap ? 2 * cap : 256;
            t->r = realloc(t->r, cap * sizeof *t->r);
            assert_non_null(t->r);
        }
        t->r[t->n++] = (struct rec){ns, arg, tid, ev};
    }
    fclose(f);
    if (!t->n)
        fail_msg("%s is empty", path);
}

static size_t count(const struct trace *t, int ev, uint64_t from_ns, uint64_t to_ns)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++)
        n += t->r[i].ev == ev && t->r[i].ns >= from_ns && t->r[i].ns <= to_ns;
    return n;
}

/* ------------------------------------------------------------ the traced initiator (child process) */

enum scenario { WRITE_READ, MANY_FRAMES, SPREAD, STAGED, STAGED_SPREAD, SMALL, FORK };

/* A forked child's exit: its leak report would list what only its parent's
 * threads (gone in the child) pointed to. */
static int in_forked_child;
int __lsan_is_turned_off(void);
int __lsan_is_turned_off(void)
{
    return in_forked_child;
}

/* In the child: no cmocka there, a failure exits 1 with the reason. */
#define CHILD_CHECK(cond)                                                                                      \
    do {                                                                                                       \
        if (!(cond)) {                                                                                         \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #cond, ferry_last_error());                 \
            _exit(1);                                                                                          \
        }                                                                                                      \
    } while (0)

static void child_batch(ferry_engine *e, int op, char *local, ferry_segment_t seg, uint64_t remote, size_t bs,
                        size_t n)
{
    struct ferry_request reqs[128];
    CHILD_CHECK(n <= 128);
    for (size_t i = 0; i < n; i++)
        reqs[i] = (struct ferry_request){op, local + i * bs, seg, remote + i * bs, bs};
    ferry_batch *b;
    CHILD_CHECK(ferry_batch_alloc(e, n, &b) == 0);
    CHILD_CHECK(ferry_batch_submit(b, reqs, n) == 0);
    CHILD_CHECK(ferry_batch_wait(b, 120000) == 0);
    ferry_batch_free(b);
}

/* child_batch with the target stopped (SIGSTOP) from before the submit
 * until a second after it: no frame of the batch is acknowledged while the
 * initiator hands them to its connections, so each one it hands finds the
 * earlier ones still in flight. */
static void child_batch_held(ferry_engine *e, const struct child_target *t, char *local, ferry_segment_t seg,
                             size_t bs, size_t n)
{
    struct ferry_request reqs[128];
    CHILD_CHECK(n <= 128);
    for (size_t i = 0; i < n; i++)
        reqs[i] = (struct ferry_request){FERRY_WRITE, local + i * bs, seg, t->addr + i * bs, bs};
    ferry_batch *b;
    CHILD_CHECK(ferry_batch_alloc(e, n, &b) == 0);
    CHILD_CHECK(test_stop_process(t->pid) == 0); /* every thread stopped, not only signalled */
    CHILD_CHECK(ferry_batch_submit(b, reqs, n) == 0);
    CHILD_CHECK(ferry_batch_wait(b, 1000) == FERRY_ETIMEDOUT); /* nothing can be acknowledged */
    CHILD_CHECK(kill(t->pid, SIGCONT) == 0);
    CHILD_CHECK(ferry_batch_wait(b, 120000) == 0);
    ferry_batch_free(b);
}

static void __attribute__((noreturn)) initiator(const struct child_target *t, enum scenario s)
{
    if (s == MANY_FRAMES || s == SPREAD || s == STAGED) {
        /* four connections from the start, and no more (no growth mid-batch) */
        setenv("FERRY_TCP_CONNECTIONS", "4", 1);
        setenv("FERRY_TCP_MAX_CONNECTIONS", "4", 1);
    }
    if (s == SPREAD || s == STAGED) /* what 16 cores get by default, on any host */
        setenv("FERRY_TCP_SPREAD", "4", 1);
    if (s == STAGED_SPREAD) {
        /* staged frames spread over 8 (16 cores' default), host ones not;
         * four connections to start with, eight at most */
        setenv("FERRY_TCP_CONNECTIONS", "4", 1);
        setenv("FERRY_TCP_MAX_CONNECTIONS", "8", 1);
        setenv("FERRY_TCP_SPREAD", "1", 1);
        setenv("FERRY_TCP_SPREAD_STAGED", "8", 1);
    }
    ferry_engine *e;
    CHILD_CHECK(ferry_engine_create(NULL, &e) == 0);
    fprintf(stderr, "%s\n", ENGINE_UP);
    char *local;
    CHILD_CHECK(ferry_mem_alloc(e, "cpu", t->len, (void **)&local) == 0);
    CHILD_CHECK(ferry_register_memory(e, local, t->len, "cpu", 0) == 0);
    ferry_segment_t seg;
    CHILD_CHECK(ferry_open_segment(e, t->name, &seg) == 0);
    if (s == WRITE_READ) {
        /* WRITE 4 x 256 KiB to the target's first MiB; READ 4 x 256 KiB of
         * its own pattern at 4 MiB */
        pattern_fill(local, MIB, 7, 0);
        child_batch(e, FERRY_WRITE, local, seg, t->addr, MIB / 4, 4);
        memset(local + MIB, 0, MIB);
        child_batch(e, FERRY_READ, local + MIB, seg, t->addr + 4 * MIB, MIB / 4, 4);
        CHILD_CHECK(pattern_check(local + MIB, MIB, TARGET_SEED, 4 * MIB) == -1);
    } else if (s == MANY_FRAMES) {
        /* warm-up: every connection connects and carries frames, then all
         * are idle (every frame acknowledged); then one submit of 16 frames */
        CHILD_CHECK(t->len >= TARGET_SIZE);
        memset(local, 1, TARGET_SIZE);
        for (int i = 0; i < 2; i++)
            child_batch(e, FERRY_WRITE, local, seg, t->addr, MIB, 32);
        child_batch(e, FERRY_WRITE, local, seg, t->addr, MIB, 16);
    } else if (s == SPREAD) {
        /* warm-up: the spread frames connect and use all four connections;
         * then one WRITE of 128 x 4 KiB, then a READ of the target's pattern */
        pattern_fill(local, 128 * 4096, 7, 0);
        for (int i = 0; i < 3; i++)
            child_batch(e, FERRY_WRITE, local, seg, t->addr, 4096, 128);
        memset(local + MIB, 0, MIB);
        child_batch(e, FERRY_READ, local + MIB, seg, t->addr + 4 * MIB, 4096, 128);
        CHILD_CHECK(pattern_check(local + MIB, 128 * 4096, TARGET_SEED, 4 * MIB) == -1);
    } else if (s == STAGED || s == STAGED_SPREAD) {
        /* the same WRITEs from sim device memory: staged through the pool,
         * whose worker hands each gathered frame to tcp */
        char *dev;
        CHILD_CHECK(ferry_mem_alloc(e, "sim:0", MIB, (void **)&dev) == 0);
        CHILD_CHECK(ferry_register_memory(e, dev, MIB, "sim:0", 0) == 0);
        pattern_fill(local, 128 * 4096, 7, 0);
        CHILD_CHECK(ferry_mem_copy(e, dev, local, 128 * 4096) == 0);
        for (int i = 0; i < 4; i++) {
            if (s == STAGED_SPREAD && i == 2) /* the third batch: each frame finds the others in flight */
                child_batch_held(e, t, dev, seg, 4096, 128);
            else
                child_batch(e, FERRY_WRITE, dev, seg, t->addr, 4096, 128);
        }
        CHILD_CHECK(ferry_unregister_memory(e, dev) == 0);
        ferry_mem_free(e, "sim:0", dev, MIB);
    } else if (s == FORK) {
        /* a child forked between two batches exits (atexit runs there too)
         * after this process wrote its trace: the file must stay this one's */
        memset(local, 1, 4096);
        child_batch(e, FERRY_WRITE, local, seg, t->addr, 4096, 1);
        int hold[2];
        CHILD_CHECK(pipe2(hold, O_CLOEXEC) == 0);
        fflush(NULL);
        pid_t pid = fork();
        CHILD_CHECK(pid >= 0);
        if (pid == 0) {
            char c;
            in_forked_child = 1;
            close(hold[1]);
            while (read(hold[0], &c, 1) > 0) /* until this process's parent exited */
                ;
            exit(0);
        }
        close(hold[0]);
        child_batch(e, FERRY_WRITE, local, seg, t->addr, 4096, 1);
    } else {
        memset(local, 1, 4096);
        child_batch(e, FERRY_WRITE, local, seg, t->addr, 4096, 1);
    }
    CHILD_CHECK(ferry_unregister_memory(e, local) == 0);
    ferry_mem_free(e, "cpu", local, t->len);
    ferry_engine_destroy(e);
    exit(0); /* atexit: the trace is written */
}

/* Runs the initiator with FERRY_TRACE=trace (its stderr into err_path when
 * not NULL) in a child process; returns its pid once it exited 0. */
static pid_t run_initiator(const struct child_target *t, enum scenario s, const char *trace, const char *err_path)
{
    fflush(NULL);
    pid_t parent = getpid(), pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        test_child_dies_with_parent(parent);
        if (err_path) {
            int fd = open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            if (fd < 0 || dup2(fd, 2) < 0)
                _exit(2);
            close(fd);
        }
        setenv("FERRY_TRACE", trace, 1);
        initiator(t, s);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the traced initiator failed (wait status %#x)", status);
    return pid;
}

/* A target traced into dir/target.PID (FERRY_TRACE is read at its start). */
static void start_target(struct child_target *t, const char *dir, size_t len)
{
    char trace[256];
    snprintf(trace, sizeof trace, "%s/target.%%d", dir);
    setenv("FERRY_TRACE", trace, 1);
    int rc = child_target_start(t, len, "cpu", TARGET_SEED);
    unsetenv("FERRY_TRACE");
    assert_int_equal(rc, 0);
}

static void stop_target(struct child_target *t)
{
    int status = child_target_quit(t);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void make_dir(char *dir)
{
    strcpy(dir, "/tmp/ferry-trace-XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static void remove_dir(const char *dir)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* ------------------------------------------------------------ tests */

/* The main thread's batch calls, in the order it made them (file order is
 * the order records were claimed, which is program order on one thread). */
static size_t main_batch_events(const struct trace *t, unsigned long tid, size_t *idx, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n; i++) {
        int ev = t->r[i].ev;
        if (ev != TR_BATCH_SUBMIT && ev != TR_BATCH_SUBMITTED && ev != TR_BATCH_WOKEN)
            continue;
        if (t->r[i].tid != tid)
            fail_msg("%s on thread %lu, not the calling thread %lu", event_names[ev], t->r[i].tid, tid);
        assert_true(n < max);
        idx[n++] = i;
    }
    return n;
}

/* One WRITE and one READ batch of 4 x 256 KiB: both processes' files parse,
 * and each batch's events are there in causal order on the right threads. */
static void test_trace_write_read(void **state)
{
    (void)state;
    char dir[64], path[128];
    make_dir(dir);
    struct child_target tg;
    start_target(&tg, dir, 8 * MIB);
    pid_t target_pid = tg.pid;
    snprintf(path, sizeof path, "%s/init.%%d", dir);
    pid_t pid = run_initiator(&tg, WRITE_READ, path, NULL);
    assert_int_equal(child_target_check(&tg, 0, MIB, 7), -1);
    stop_target(&tg);

    struct trace in, tgt;
    snprintf(path, sizeof path, "%s/init.%d", dir, (int)pid);
    trace_load(path, &in);
    snprintf(path, sizeof path, "%s/target.%d", dir, (int)target_pid);
    trace_load(path, &tgt);

    /* the child's main thread has the child's pid as thread id */
    size_t m[8];
    assert_int_equal(main_batch_events(&in, (unsigned long)pid, m, 8), 6);
    static const int order[6] = {TR_BATCH_SUBMIT, TR_BATCH_SUBMITTED, TR_BATCH_WOKEN,
                                 TR_BATCH_SUBMIT, TR_BATCH_SUBMITTED, TR_BATCH_WOKEN};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(in.r[m[i]].ev, order[i]);
        assert_int_equal(in.r[m[i]].arg, 4); /* requests */
    }
    /* each batch ends once, on a receiver thread, inside its window */
    assert_int_equal(count(&in, TR_BATCH_DONE, 0, UINT64_MAX), 2);
    size_t frames_in = 0;
    uint64_t prev_end = 0;
    for (int k = 0; k < 2; k++) {
        uint64_t from = in.r[m[3 * k]].ns, to = in.r[m[3 * k + 2]].ns;
        assert_true(from >= prev_end);
        prev_end = to;
        assert_int_equal(count(&in, TR_BATCH_DONE, from, to), 1);
        uint64_t done = 0, first_send = UINT64_MAX, first_ack = UINT64_MAX, last_ack = 0, acked = 0;
        size_t sends = 0, acks = 0;
        for (size_t i = 0; i < in.n; i++) {
            const struct rec *r = &in.r[i];
            if (r->ns < from || r->ns > to)
                continue;
            if (r->ev == TR_BATCH_DONE) {
                done = r->ns;
                assert_int_not_equal(r->tid, (unsigned long)pid);
                assert_int_equal(r->arg, 4);
            } else if (r->ev == TR_TCP_SEND) {
                sends++;
                first_send = r->ns < first_send ? r->ns : first_send;
                if (k == 0)
                    assert_true(r->arg > 0 && r->arg <= MIB); /* WRITE payload */
                else
                    assert_int_equal(r->arg, 0); /* a READ request carries none */
            } else if (r->ev == TR_TCP_ACK) {
                acks++;
                acked += r->arg;
                first_ack = r->ns < first_ack ? r->ns : first_ack;
                last_ack = r->ns > last_ack ? r->ns : last_ack;
                assert_int_not_equal(r->tid, (unsigned long)pid); /* the receivers end frames */
            }
        }
        assert_true(acks >= 1 && acks <= 4 && sends >= acks);
        assert_int_equal(acked, MIB);
        assert_true(first_send <= first_ack && last_ack <= done);
        /* the target read exactly these frames (and their WRITE payload)
         * between their send and their ack (CLOCK_MONOTONIC is one clock
         * for the host; srv_answered comes after the answer left, so it
         * may follow the ack) */
        assert_int_equal(count(&tgt, TR_SRV_FRAME, first_send, last_ack), acks);
        assert_int_equal(count(&tgt, TR_SRV_PAYLOAD, first_send, last_ack), k == 0 ? acks : 0);
        frames_in += acks;
    }
    /* no tcp traffic outside the two batches */
    assert_int_equal(count(&in, TR_TCP_ACK, 0, UINT64_MAX), frames_in);
    assert_int_equal(count(&tgt, TR_SRV_FRAME, 0, UINT64_MAX), frames_in);
    assert_int_equal(count(&tgt, TR_SRV_ANSWERED, 0, UINT64_MAX), frames_in);
    /* on the target, connection threads serve (not the control thread),
     * each frame read before it is answered */
    for (size_t i = 0; i < tgt.n; i++) {
        const struct rec *r = &tgt.r[i];
        if (r->ev < TR_SRV_FRAME || r->ev > TR_SRV_ANSWERED)
            continue;
        assert_int_not_equal(r->tid, (unsigned long)target_pid);
        if (r->ev != TR_SRV_FRAME)
            continue;
        size_t j = i + 1;
        while (j < tgt.n && (tgt.r[j].tid != r->tid || tgt.r[j].ev != TR_SRV_ANSWERED))
            j++;
        assert_true(j < tgt.n && tgt.r[j].ns >= r->ns);
        for (size_t k = i + 1; k < j; k++)
            assert_false(tgt.r[k].tid == r->tid && tgt.r[k].ev == TR_SRV_FRAME);
    }
    free(in.r);
    free(tgt.r);
    remove_dir(dir);
}

/* The tcp sends of an initiator's third batch (its first two warm the
 * connections up): by the submitting thread inside ferry_batch_submit, by
 * other threads (the senders) while the batch ran and how many of them, and
 * the frames acknowledged meanwhile. */
struct batch_sends {
    size_t inline_sends, sender_sends, senders, acks;
    size_t all_senders; /* threads other than the submitting one that sent in any batch (connections used) */
    size_t worker_sends; /* by a staging worker (a thread that retired copies) */
};

/* Runs scenario s (nbatches batches, the third of `requests` requests)
 * against a fresh target of target_size bytes; check_len > 0: the target's
 * first check_len bytes must hold the initiator's pattern (seed 7). */
static void third_batch_sends(enum scenario s, size_t target_size, size_t nbatches, uint64_t requests,
                              size_t check_len, struct batch_sends *out)
{
    char dir[64], path[128];
    make_dir(dir);
    struct child_target tg;
    start_target(&tg, dir, target_size);
    snprintf(path, sizeof path, "%s/init.%%d", dir);
    pid_t pid = run_initiator(&tg, s, path, NULL);
    if (check_len)
        assert_int_equal(child_target_check(&tg, 0, check_len, 7), -1);
    stop_target(&tg);
    struct trace in;
    snprintf(path, sizeof path, "%s/init.%d", dir, (int)pid);
    trace_load(path, &in);

    size_t m[16];
    assert_int_equal(main_batch_events(&in, (unsigned long)pid, m, 16), 3 * nbatches);
    size_t submit = m[6], submitted = m[7], woken = m[8];
    assert_int_equal(in.r[submit].ev, TR_BATCH_SUBMIT);
    assert_int_equal(in.r[submit].arg, requests);
    assert_int_equal(in.r[submitted].ev, TR_BATCH_SUBMITTED);
    assert_int_equal(in.r[woken].ev, TR_BATCH_WOKEN);
    uint64_t from = in.r[submit].ns, to = in.r[woken].ns;
    memset(out, 0, sizeof *out);
    out->acks = count(&in, TR_TCP_ACK, from, to);
    for (size_t i = submit + 1; i < submitted; i++)
        out->inline_sends += in.r[i].ev == TR_TCP_SEND && in.r[i].tid == (unsigned long)pid;
    unsigned long seen[64], workers[8];
    size_t nworkers = 0;
    for (size_t i = 0; i < in.n; i++)
        if (in.r[i].ev == TR_STAGE_RETIRED && in.r[i].tid != (unsigned long)pid) {
            size_t k = 0;
            while (k < nworkers && workers[k] != in.r[i].tid)
                k++;
            if (k == nworkers && k < 8)
                workers[nworkers++] = in.r[i].tid;
        }
    for (size_t i = 0; i < in.n; i++) {
        if (in.r[i].ev != TR_TCP_SEND || in.r[i].tid == (unsigned long)pid || in.r[i].ns < from || in.r[i].ns > to)
            continue;
        out->sender_sends++;
        for (size_t k = 0; k < nworkers; k++)
            out->worker_sends += in.r[i].tid == workers[k];
        size_t k = 0;
        while (k < out->senders && seen[k] != in.r[i].tid)
            k++;
        if (k == out->senders && k < 64)
            seen[out->senders++] = in.r[i].tid;
    }
    size_t all = 0;
    for (size_t i = 0; i < in.n; i++) {
        if (in.r[i].ev != TR_TCP_SEND || in.r[i].tid == (unsigned long)pid)
            continue;
        size_t k = 0;
        while (k < all && seen[k] != in.r[i].tid)
            k++;
        if (k == all && k < 64)
            seen[all++] = in.r[i].tid;
    }
    out->all_senders = all;
    printf("batch of %llu requests: %zu sends by the submitting thread, %zu by %zu other threads (%zu by a "
           "staging worker), %zu frames; %zu sending threads in all\n",
           (unsigned long long)requests, out->inline_sends, out->sender_sends, out->senders, out->worker_sends,
           out->acks, out->all_senders);
    free(in.r);
    remove_dir(dir);
}

/* af315c1: with four ready, idle connections, one thread submitting 16
 * frames of 1 MiB wrote each of the first four itself (one copy per
 * connection on one thread); now it writes at most the last one and the
 * sender threads write the rest. */
static void test_submitter_leaves_frames_to_senders(void **state)
{
    (void)state;
    struct batch_sends bs;
    third_batch_sends(MANY_FRAMES, TARGET_SIZE, 3, 16, 0, &bs);
    assert_int_equal(bs.acks, 16);
    assert_true(bs.inline_sends <= 1);
    assert_true(bs.sender_sends >= 15); /* every frame not written whole inline starts on a sender */
}

/* A spread of 4 (FERRY_TCP_SPREAD, the default from 16 cores): one submit
 * of 128 x 4 KiB goes as 4 frames of 128 KiB, each on a connection with
 * none of the others in flight, the sender threads writing three of them
 * while the submitting thread writes the last (before: 2 frames of 256 KiB,
 * both written by the submitting thread on one connection). */
static void test_small_submit_spread(void **state)
{
    (void)state;
    struct batch_sends bs;
    third_batch_sends(SPREAD, 8 * MIB, 4, 128, 128 * 4096, &bs);
    assert_int_equal(bs.acks, 4); /* frames */
    /* frames 1-3 always go to the senders (the submitting thread writes
     * only a submit's last frame with a spread); which connections they
     * take depends on how soon the first ones are acknowledged: a
     * connection whose frame already ended takes the next one */
    assert_true(bs.inline_sends <= 1);
    assert_true(bs.sender_sends >= 3);
}

/* Staged WRITEs with a spread of 4: 128 x 4 KiB of device memory (sim) go
 * as 4 frames, each gathered into a chunk and handed to tcp by the staging
 * pool's worker, which retires every thread's copies: the sender threads
 * write all four.  Before, a staged frame counted as a submit's last (no
 * more_bytes), so the worker wrote every one itself, one socket copy after
 * another (2 x H200: 16 KiB x 128 with 4 threads moved 5.4 GB/s, 12.9 from
 * host memory). */
static void test_staged_write_left_to_senders(void **state)
{
    (void)state;
    struct batch_sends bs;
    third_batch_sends(STAGED, 8 * MIB, 4, 128, 128 * 4096, &bs);
    assert_int_equal(bs.acks, 4); /* frames */
    assert_int_equal(bs.inline_sends, 0); /* the gathers are not done when the submit returns */
    assert_true(bs.sender_sends >= 4);
    assert_int_equal(bs.worker_sends, 0);
}

/* Staged WRITEs with a staged spread of 8 (FERRY_TCP_SPREAD_STAGED, the
 * default from 16 cores) and four connections open: 128 x 4 KiB of device
 * memory (sim) go as 8 frames of 64 KiB, and a frame that finds the four
 * busy opens another connection (a sender thread of its own), up to 8: in
 * the third batch, held by a stopped target so that no frame is
 * acknowledged before the last is handed over, 8 connections write one
 * frame each.  Before, the 8 frames shared the 4 connections, two after
 * one another on each (FERRY_TCP_SPREAD=8 measured so on 2 x H200 and one
 * H200: no gain; on 8 connections one H200 moved 16 KiB x 128 6.8 GB/s
 * against 4.9). */
static void test_staged_spread_opens_connections(void **state)
{
    (void)state;
    struct batch_sends bs;
    third_batch_sends(STAGED_SPREAD, 8 * MIB, 4, 128, 128 * 4096, &bs);
    assert_int_equal(bs.acks, 8); /* frames */
    assert_int_equal(bs.worker_sends, 0);
    assert_int_equal(bs.senders, 8);
    assert_int_equal(bs.sender_sends, 8);
    assert_true(bs.all_senders <= 8); /* never more than the spread */
}

/* FERRY_TRACE naming a file that cannot be created: the engine says so when
 * it starts (what, where, why), before any work, and runs on untraced. */
static void test_trace_path_unusable(void **state)
{
    (void)state;
    char dir[64];
    make_dir(dir);
    struct child_target tg;
    start_target(&tg, dir, 8 * MIB);
    char file[128], missing[128], under_file[160], err_path[128], longp[700];
    snprintf(file, sizeof file, "%s/plain", dir);
    FILE *f = fopen(file, "we");
    assert_non_null(f);
    fclose(f);
    snprintf(missing, sizeof missing, "%s/missing/init.%%d", dir);
    snprintf(under_file, sizeof under_file, "%s/init.%%d", file);
    snprintf(longp, sizeof longp, "%s/%0600d", dir, 0);
    const struct {
        const char *path, *why;
    } cases[] = {
        {missing, strerror(ENOENT)},
        {under_file, strerror(ENOTDIR)},
        {dir, strerror(EISDIR)},
        {longp, "longer than"},
    };
    snprintf(err_path, sizeof err_path, "%s/stderr", dir);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run_initiator(&tg, SMALL, cases[i].path, err_path);
        char err[4096] = "";
        f = fopen(err_path, "re");
        assert_non_null(f);
        size_t n = fread(err, 1, sizeof err - 1, f);
        err[n] = '\0';
        fclose(f);
        const char *msg = strstr(err, "FERRY_TRACE");
        const char *up = strstr(err, ENGINE_UP);
        if (!msg || !strstr(msg, cases[i].why) || !up || msg > up)
            fail_msg("FERRY_TRACE=%.60s: expected a message with \"%s\" before \"%s\"; stderr:\n%s", cases[i].path,
                     cases[i].why, ENGINE_UP, err);
    }
    /* nothing was written anywhere: the directory holds what it held */
    struct stat st;
    assert_int_equal(stat(file, &st), 0);
    assert_int_equal(st.st_size, 0);
    char missing_dir[128];
    snprintf(missing_dir, sizeof missing_dir, "%s/missing", dir);
    assert_int_not_equal(stat(missing_dir, &st), 0);
    stop_target(&tg);
    remove_dir(dir);
}

/* Writing the trace at exit fails (the disk is full): the process says so
 * (at exit, where the writing happens) and still exits 0. */
static void test_trace_write_fails(void **state)
{
    (void)state;
    char dir[64], err_path[128];
    make_dir(dir);
    struct child_target tg;
    start_target(&tg, dir, 8 * MIB);
    snprintf(err_path, sizeof err_path, "%s/stderr", dir);
    run_initiator(&tg, SMALL, "/dev/full", err_path);
    char err[4096] = "";
    FILE *f = fopen(err_path, "re");
    assert_non_null(f);
    size_t n = fread(err, 1, sizeof err - 1, f);
    err[n] = '\0';
    fclose(f);
    const char *up = strstr(err, ENGINE_UP);
    const char *msg = up ? strstr(up, "FERRY_TRACE: writing /dev/full failed") : NULL;
    if (!msg || !strstr(msg, strerror(ENOSPC)))
        fail_msg("FERRY_TRACE=/dev/full: expected a message that the write failed (%s); stderr:\n%s",
                 strerror(ENOSPC), err);
    stop_target(&tg);
    remove_dir(dir);
}

/* A process forked from a traced one (after its engine started) exits after
 * it: the trace file keeps what the traced process recorded. */
static void test_forked_child_leaves_trace(void **state)
{
    (void)state;
    char dir[64], path[128];
    make_dir(dir);
    struct child_target tg;
    start_target(&tg, dir, 8 * MIB);
    /* the initiator's forked child inherits the write end of `gone` too:
     * EOF here means both have exited */
    int gone[2];
    assert_int_equal(pipe2(gone, O_CLOEXEC), 0);
    snprintf(path, sizeof path, "%s/init.%%d", dir);
    pid_t pid = run_initiator(&tg, FORK, path, NULL);
    close(gone[1]);
    char c;
    while (read(gone[0], &c, 1) > 0)
        ;
    close(gone[0]);
    stop_target(&tg);
    struct trace in;
    snprintf(path, sizeof path, "%s/init.%d", dir, (int)pid);
    trace_load(path, &in);
    size_t m[8];
    assert_int_equal(main_batch_events(&in, (unsigned long)pid, m, 8), 6); /* both batches */
    free(in.r);
    remove_dir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_trace_write_read),
        cmocka_unit_test(test_submitter_leaves_frames_to_senders),
        cmocka_unit_test(test_small_submit_spread),
        cmocka_unit_test(test_staged_spread_opens_connections),
        cmocka_unit_test(test_staged_write_left_to_senders),
        cmocka_unit_test(test_trace_path_unusable),
        cmocka_unit_test(test_trace_write_fails),
        cmocka_unit_test(test_forked_child_leaves_trace),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

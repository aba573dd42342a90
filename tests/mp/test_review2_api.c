/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_review2_api.c — the public C API used carelessly or with hostile
 * arguments: one batch submitted to from two threads, waited on from two
 * threads; lengths and offsets that overflow when added; odd and overlong
 * segment names; thousands of segments opened and closed.  Each call must end
 * with 0 or a named FERRY_E* code and a message: no crash (run it under the
 * ASan build), no hang, no memory touched outside what was asked.
 *
 * Targets are child processes (testutil.c); a target is stopped with SIGSTOP
 * where a call must be held at a known point.  No case depends on timing:
 * where one thread must be inside a call, the test waits for a sign of it
 * (a connection queued on the stopped target's listener).
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "testutil.h"

#define TSIZE (1u << 20)
#define SEED 11

static ferry_engine *make_engine(void)
{
    struct ferry_config cfg;
    ferry_engine *e = NULL;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.request_timeout_ms = 60000;
    cfg.connect_timeout_ms = 60000; /* a stopped target holds a fetch this long at most */
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    return e;
}

static char *registered(ferry_engine *e, size_t len)
{
    char *p = NULL;
    assert_int_equal(ferry_mem_alloc(e, "cpu", len, (void **)&p), 0);
    assert_int_equal(ferry_register_memory(e, p, len, "cpu", 0), 0);
    return p;
}

static void stop_target(pid_t pid)
{
    int st;
    assert_int_equal(kill(pid, SIGSTOP), 0);
    assert_int_equal(waitpid(pid, &st, WUNTRACED), pid);
    assert_true(WIFSTOPPED(st));
}

/* A target (TSIZE bytes of cpu memory), an engine with TSIZE bytes
 * registered at local, and the target's segment opened as s. */
struct opened {
    struct child_target t;
    ferry_engine *e;
    char *local;
    ferry_segment_t s;
};

static void open_target(struct opened *o)
{
    assert_int_equal(child_target_start(&o->t, TSIZE, "cpu", SEED), 0);
    o->e = make_engine();
    o->local = registered(o->e, TSIZE);
    assert_int_equal(ferry_open_segment(o->e, o->t.name, &o->s), 0);
}

/* A batch with one WRITE of r's bytes, submitted after the target was
 * stopped: it stays in flight until SIGCONT. */
static ferry_batch *submit_to_stopped_target(struct opened *o, const struct ferry_request *r)
{
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(o->e, 1, &b), 0);
    stop_target(o->t.pid);
    assert_int_equal(ferry_batch_submit(b, r, 1), 0);
    return b;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Connections waiting in the accept queue of the listener on TCP port `port`
 * (for a LISTEN socket /proc/net/tcp's rx_queue is its accept backlog). */
static int accept_backlog(int port)
{
    FILE *f = fopen("/proc/net/tcp", "re");
    assert_non_null(f);
    char line[512];
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned lport, st, txq, rxq;
        if (sscanf(line, " %*d: %*x:%x %*x:%*x %x %x:%x", &lport, &st, &txq, &rxq) == 4 && (int)lport == port &&
            st == 0x0A)
            found += (int)rxq;
    }
    fclose(f);
    return found;
}

static int open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* ------------------------------------------------------------ one batch, two submitting threads */

struct submit_arg {
    ferry_batch *b;
    struct ferry_request *reqs;
    size_t n;
    int rc;
    char why[256];
};

static void *submit_thread(void *p)
{
    struct submit_arg *a = p;
    a->rc = ferry_batch_submit(a->b, a->reqs, a->n);
    snprintf(a->why, sizeof a->why, "%s", ferry_last_error());
    return NULL;
}

/* Thread A passes the capacity check, then waits for a descriptor refresh
 * (its target is stopped); thread B fills the batch meanwhile.  When A goes
 * on, the batch is full: A must get FERRY_EFULL, not plan its requests past
 * the end of the batch's slots. */
static void two_threads_never_overfill_a_batch(void **state)
{
    (void)state;
    enum { CAP = 4 };
    struct child_target t1, t2;
    assert_int_equal(child_target_start(&t1, TSIZE, "cpu", SEED), 0);
    assert_int_equal(child_target_start(&t2, TSIZE, "cpu", SEED), 0);
    ferry_engine *e = make_engine();
    char *local = registered(e, TSIZE);
    ferry_segment_t s1, s2;
    /* t1's descriptor is fetched while it has no buffer; it registers one
     * afterwards, so a request to it makes the submit refresh first */
    assert_int_equal(child_target_unregister(&t1), 0);
    assert_int_equal(ferry_open_segment(e, t1.name, &s1), 0);
    assert_int_equal(child_target_register(&t1), 0);
    assert_int_equal(ferry_open_segment(e, t2.name, &s2), 0);

    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(e, CAP, &b), 0);
    struct ferry_request ra[CAP], rb[CAP];
    for (int i = 0; i < CAP; i++) {
        ra[i] = (struct ferry_request){FERRY_WRITE, local + i * 4096, s1, t1.addr + (uint64_t)i * 4096, 4096};
        rb[i] = (struct ferry_request){FERRY_WRITE, local + i * 4096, s2, t2.addr + (uint64_t)i * 4096, 4096};
    }
    stop_target(t1.pid);
    int hs_port = atoi(strrchr(t1.name, ':') + 1);
    int before = accept_backlog(hs_port);
    struct submit_arg a = {b, ra, CAP, -1, ""}, bb = {b, rb, CAP, -1, ""};
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, submit_thread, &a), 0);
    for (int i = 0; i < 60000 && accept_backlog(hs_port) <= before; i++) /* A is in its refresh */
        sleep_ms(1);
    assert_true(accept_backlog(hs_port) > before);
    assert_int_equal(pthread_create(&tb, NULL, submit_thread, &bb), 0);
    assert_int_equal(pthread_join(tb, NULL), 0);
    assert_int_equal(bb.rc, 0);
    assert_int_equal(kill(t1.pid, SIGCONT), 0);
    assert_int_equal(pthread_join(ta, NULL), 0);
    if (a.rc != FERRY_EFULL)
        fail_msg("the second submit to a full batch: %s (%s), batch size %zu of %d", ferry_err_name(a.rc), a.why,
                 ferry_batch_size(b), CAP);
    assert_non_null(strstr(a.why, "do not fit"));
    assert_int_equal(ferry_batch_size(b), CAP);
    assert_int_equal(ferry_batch_wait(b, 60000), 0);
    ferry_batch_free(b);
    assert_int_equal(child_target_check(&t1, 0, TSIZE, SEED), -1); /* A wrote nothing */
    ferry_engine_destroy(e);
    child_target_kill(&t1);
    child_target_kill(&t2);
}

/* ------------------------------------------------------------ overflowing arithmetic */

/* Lengths and offsets whose sums wrap around 2^64 must be refused with a
 * code naming the request, never wrap into a range that passes the checks. */
static void wrapping_ranges_are_refused(void **state)
{
    (void)state;
    struct opened o;
    open_target(&o);
    struct child_target *t = &o.t;
    ferry_engine *e = o.e;
    char *local = o.local;
    ferry_segment_t s = o.s;
    /* registrations that wrap or reach the top of the address space */
    assert_int_equal(ferry_register_memory(e, (void *)(uintptr_t)(UINT64_MAX - 4095), 8192, "cpu", 1), FERRY_EINVAL);
    assert_int_equal(ferry_register_memory(e, local + 4096, SIZE_MAX, "cpu", 1), FERRY_EINVAL);
    assert_int_equal(ferry_register_memory(e, local, SIZE_MAX - (uintptr_t)local + 1, "cpu", 1), FERRY_EINVAL);
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    struct ferry_request bad[] = {
        /* local range that wraps: source + length < source */
        {FERRY_WRITE, local + 4096, s, t->addr, SIZE_MAX - 100},
        {FERRY_READ, local + 4096, s, t->addr, SIZE_MAX},
        /* remote range that wraps: target_offset + length < target_offset */
        {FERRY_WRITE, local, s, UINT64_MAX - 100, 4096},
        {FERRY_READ, local, s, t->addr + 4096, (size_t)(UINT64_MAX - t->addr)},
        /* lengths past the end of the registrations */
        {FERRY_WRITE, local, s, t->addr, (size_t)TSIZE + 1},
        {FERRY_READ, local + TSIZE - 1, s, t->addr, 2},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = ferry_batch_submit(b, &bad[i], 1);
        if (rc != FERRY_ENOTREG && rc != FERRY_ERANGE && rc != FERRY_EINVAL)
            fail_msg("case %zu: %s (%s)", i, ferry_err_name(rc), ferry_last_error());
        assert_non_null(strstr(ferry_last_error(), "request 0"));
    }
    assert_int_equal(ferry_batch_size(b), 0);
    ferry_batch_free(b);
    assert_int_equal(child_target_check(t, 0, TSIZE, SEED), -1);
    ferry_engine_destroy(e);
    child_target_kill(t);
}

/* ------------------------------------------------------------ segment names */

/* Names no peer can have: each is refused with FERRY_EINVAL or FERRY_ENOSEG
 * and a message, by open and by probe, and nothing is left open. */
static void odd_segment_names_are_refused(void **state)
{
    (void)state;
    ferry_engine *e = make_engine();
    static char longname[10000];
    memset(longname, 'a', sizeof longname - 1);
    char name127[128];
    memset(name127, '1', 127);
    name127[127] = '\0';
    const char *names[] = {
        "", ":", "127.0.0.1", "127.0.0.1:", ":1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:-1",
        "127.0.0.1:99999999999999999999", "127.0.0.1:1x", "127.0.0.1: 1", "[::1]", "[::1]:", "host name:1",
        "127.0.0.1:1\n", "%s%s%s%n:1", "\xff\xfe:1", "\x1b[31m:1", name127, longname,
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        ferry_segment_t s = 0;
        int rc = ferry_open_segment(e, names[i], &s);
        if (rc != FERRY_EINVAL && rc != FERRY_ENOSEG)
            fail_msg("open_segment(name %zu): %s (%s)", i, ferry_err_name(rc), ferry_last_error());
        assert_true(ferry_last_error()[0] != '\0');
        rc = ferry_probe_segment(e, names[i]);
        if (rc != FERRY_EINVAL && rc != FERRY_ENOSEG)
            fail_msg("probe_segment(name %zu): %s (%s)", i, ferry_err_name(rc), ferry_last_error());
    }
    assert_int_equal(ferry_open_segment(e, NULL, &(ferry_segment_t){0}), FERRY_EINVAL);
    assert_int_equal(ferry_probe_segment(e, NULL), FERRY_EINVAL);
    assert_int_equal(ferry_close_segment(e, 0), FERRY_ENOSEG);
    ferry_engine_destroy(e);
}

/* Thousands of open/close cycles leak no descriptor; a closed handle is
 * refused by close, submit and segment_buffers. */
static void many_segments_opened_and_closed(void **state)
{
    (void)state;
    struct opened o;
    open_target(&o); /* warm: the first connections */
    struct child_target *t = &o.t;
    ferry_engine *e = o.e;
    char *local = o.local;
    ferry_segment_t s = o.s;
    assert_int_equal(ferry_close_segment(e, s), 0);
    int fds = open_fds();
    ferry_segment_t prev = s;
    for (int i = 0; i < 2000; i++) {
        assert_int_equal(ferry_open_segment(e, t->name, &s), 0);
        assert_true(s != prev); /* a handle is never reused */
        if (i % 100 == 0) {     /* with traffic now and then: its connections open too */
            ferry_batch *b;
            struct ferry_request r = {FERRY_WRITE, local, s, t->addr, 4096};
            assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
            assert_int_equal(ferry_batch_submit(b, &r, 1), 0);
            assert_int_equal(ferry_batch_wait(b, 60000), 0);
            ferry_batch_free(b);
        }
        assert_int_equal(ferry_close_segment(e, s), 0);
        assert_int_equal(ferry_close_segment(e, s), FERRY_ENOSEG);
        prev = s;
    }
    assert_in_range(open_fds(), 0, fds + 4);
    ferry_batch *b;
    struct ferry_request r = {FERRY_WRITE, local, prev, t->addr, 4096};
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &r, 1), FERRY_ENOSEG);
    ferry_batch_free(b);
    size_t count;
    assert_int_equal(ferry_segment_buffers(e, prev, NULL, 0, &count), FERRY_ENOSEG);
    ferry_engine_destroy(e);
    child_target_kill(t);
}

/* ------------------------------------------------------------ one batch, two waiting threads */

struct wait_arg {
    ferry_batch *b;
    int rc;
};

static void *wait_thread(void *p)
{
    struct wait_arg *a = p;
    a->rc = ferry_batch_wait(a->b, -1);
    return NULL;
}

/* Two threads wait on one batch that is held in flight (its target stopped);
 * both see it complete; then it is freed. */
static void two_threads_wait_on_one_batch(void **state)
{
    (void)state;
    struct opened o;
    open_target(&o);
    struct child_target *t = &o.t;
    ferry_engine *e = o.e;
    pattern_fill(o.local, 65536, 3, 0);
    struct ferry_request r = {FERRY_WRITE, o.local, o.s, t->addr, 65536};
    ferry_batch *b = submit_to_stopped_target(&o, &r);
    struct wait_arg w[2] = {{b, -1}, {b, -1}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, wait_thread, &w[i]), 0);
    assert_int_equal(ferry_batch_wait(b, 0), FERRY_ETIMEDOUT); /* the target is stopped */
    assert_int_equal(kill(t->pid, SIGCONT), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(w[i].rc, 0);
    }
    ferry_batch_free(b);
    assert_int_equal(child_target_check(t, 0, 65536, 3), -1);
    ferry_engine_destroy(e);
    child_target_kill(t);
}

/* ------------------------------------------------------------ destroy under a waiter */

struct parked_wait {
    ferry_batch *b;
    atomic_int tid;
    int rc;
};

static void *parked_wait_thread(void *p)
{
    struct parked_wait *w = p;
    atomic_store(&w->tid, (int)syscall(SYS_gettid));
    w->rc = ferry_batch_wait(w->b, -1);
    return NULL;
}

/* Is thread tid of this process asleep in futex(2) (a condition wait)? */
static int in_futex_wait(int tid)
{
    char path[64], line[128] = "";
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    int ok = fgets(line, sizeof line, f) != NULL && atoi(line) == SYS_futex;
    fclose(f);
    return ok;
}

/* A thread waits on a batch that cannot end (its target is stopped) and the
 * engine is destroyed to cancel everything: the waiter returns
 * FERRY_ECANCELED, and nothing of the engine is touched after destroy
 * returns (the waiter used to record its wait time in the freed engine). */
static void destroy_while_a_thread_waits(void **state)
{
    (void)state;
    struct opened o;
    open_target(&o);
    struct child_target *t = &o.t;
    ferry_engine *e = o.e;
    struct ferry_request r = {FERRY_WRITE, o.local, o.s, t->addr, 65536};
    ferry_batch *b = submit_to_stopped_target(&o, &r);
    struct parked_wait w = {b, 0, 1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, parked_wait_thread, &w), 0);
    for (int i = 0; i < 60000 && !(atomic_load(&w.tid) && in_futex_wait(atomic_load(&w.tid))); i++)
        sleep_ms(1); /* until the waiter sleeps on the batch */
    assert_true(in_futex_wait(atomic_load(&w.tid)));
    ferry_engine_destroy(e);
    assert_int_equal(pthread_join(th, NULL), 0);
    if (w.rc != FERRY_ECANCELED && w.rc != FERRY_ECONN)
        fail_msg("the waiter got %s", ferry_err_name(w.rc));
    ferry_batch_free(b);
    assert_int_equal(kill(t->pid, SIGCONT), 0);
    child_target_kill(t);
}

/* ------------------------------------------------------------ descriptor served while registering */

struct churn {
    ferry_engine *e;
    char *mem;
    atomic_int stop;
    int rounds;
};

static void *churn_main(void *p)
{
    struct churn *c = p;
    while (!atomic_load(&c->stop)) {
        for (int i = 0; i < 64; i++)
            assert_int_equal(ferry_register_memory(c->e, c->mem + (size_t)i * 8192, 4096, "cpu", 1), 0);
        for (int i = 0; i < 64; i++)
            assert_int_equal(ferry_unregister_memory(c->e, c->mem + (size_t)i * 8192), 0);
        c->rounds++;
    }
    return NULL;
}

/* Peers fetch the descriptor (the handshake thread lists the registrations)
 * while the application registers and unregisters memory on another thread:
 * the list was counted, then copied, and a registration in between was
 * written past the end of it (heap-buffer-overflow in describe_self). */
static void descriptor_served_while_registering(void **state)
{
    (void)state;
    ferry_engine *e = make_engine();
    char *mem = NULL;
    assert_int_equal(ferry_mem_alloc(e, "cpu", 64 * 8192, (void **)&mem), 0);
    struct churn c = {e, mem, 0, 0};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, churn_main, &c), 0);
    ferry_segment_t self;
    assert_int_equal(ferry_open_segment(e, ferry_engine_segment_name(e), &self), 0);
    struct ferry_buffer_info info[64];
    for (int i = 0; i < 600; i++) {
        assert_int_equal(ferry_probe_segment(e, ferry_engine_segment_name(e)), 0);
        size_t count = 0; /* this engine's own list, taken the same way */
        assert_int_equal(ferry_segment_buffers(e, self, info, 64, &count), 0);
        assert_in_range(count, 0, 64);
    }
    atomic_store(&c.stop, 1);
    assert_int_equal(pthread_join(th, NULL), 0);
    print_message("%d registration rounds during 600 descriptor fetches\n", c.rounds);
    ferry_engine_destroy(e);
}

/* ------------------------------------------------------------ lists written with blanks */

/* "tcp , shm" names tcp and shm (it was refused: protocol " shm" unknown). */
static void protocol_list_with_blanks(void **state)
{
    (void)state;
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = " tcp ,\tshm ";
    ferry_engine *e = NULL;
    if (ferry_engine_create(&cfg, &e) != 0)
        fail_msg("protocols \" tcp ,\\tshm \": %s", ferry_last_error());
    struct ferry_stats st;
    assert_int_equal(ferry_get_stats(e, &st), 0);
    assert_int_equal(st.transport_count, 2);
    assert_string_equal(st.transports[0].name, "tcp");
    assert_string_equal(st.transports[1].name, "shm");
    ferry_engine_destroy(e);
}

/* ------------------------------------------------------------ main */

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(two_threads_never_overfill_a_batch),
        cmocka_unit_test(wrapping_ranges_are_refused),
        cmocka_unit_test(odd_segment_names_are_refused),
        cmocka_unit_test(many_segments_opened_and_closed),
        cmocka_unit_test(two_threads_wait_on_one_batch),
        cmocka_unit_test(protocol_list_with_blanks),
        cmocka_unit_test(destroy_while_a_thread_waits),
        cmocka_unit_test(descriptor_served_while_registering),
    };
    (void)argc, (void)argv;
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_meta_common.h — the metadata-store tests shared by test_meta_etcd.c
 * and test_meta_redis.c (included by each; not a test of its own).
 *
 * Each test program starts a real server (etcd or redis-server) on loopback
 * on free ports in a temporary directory, waits until it answers, and kills
 * it at the end.  Engines run in this process and in forked children
 * (child_target_start, configured through FERRY_* variables).  An "observer"
 * instance of the backend, created straight from its ops table, looks at
 * what is in the store and writes entries by hand.
 */
#ifndef TEST_META_COMMON_H
#define TEST_META_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "meta/meta.h"
#include "testutil.h"

#define TTL_S 2
#define TARGET_SIZE (4u << 20)
#define TARGET_SEED 21
#define PREFIX "ferry-test/"

/* What differs between the stores. */
struct meta_backend {
    const char *name;          /* "etcd" */
    const char *server_bin;    /* "etcd" */
    const char *hand_tool;     /* "etcdctl": writes a key by hand */
    const struct meta_ops *ops;
    /* argv of the server for the fixture's ports and directory (static storage) */
    char **(*server_argv)(const char *dir, int port, int port2);
    /* argv of hand_tool putting key=value */
    char **(*put_argv)(int port, const char *key, const char *value);
};

struct meta_fixture {
    const struct meta_backend *b;
    char dir[64];
    int port, port2;           /* client port; etcd's peer port */
    pid_t server;
    char url[128];
    void *observer;            /* a backend instance of our own */
};

static struct meta_fixture fx;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sleep_ms(unsigned ms)
{
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR)
        ;
}

/* A TCP port nobody listens on right now. */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || getsockname(fd, (struct sockaddr *)&sa, &sl))
        return -1;
    close(fd);
    return ntohs(sa.sin_port);
}

static int in_path(const char *bin)
{
    const char *path = getenv("PATH");
    char dirs[4096], file[4200], *save = NULL;
    snprintf(dirs, sizeof dirs, "%s", path ? path : "/usr/bin:/bin");
    for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(file, sizeof file, "%s/%s", d, bin);
        if (access(file, X_OK) == 0)
            return 1;
    }
    return 0;
}

/* Starts argv with stdout/stderr appended to log; the child dies with us. */
static pid_t spawn(char **argv, const char *log)
{
    fflush(NULL);
    pid_t parent = getpid(), pid = fork();
    if (pid == 0) {
        test_child_dies_with_parent(parent);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

/* Runs argv to its end; returns its exit status or -1. */
static int run_tool(char **argv)
{
    char log[128];
    snprintf(log, sizeof log, "%s/tools.log", fx.dir);
    pid_t pid = spawn(argv, log);
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) != pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

/* Starts the server on the fixture's ports with a new, empty data directory
 * and waits (up to 30 s) until a backend instance can be created against it. */
static void server_start(void)
{
    char data[128], log[128];
    snprintf(data, sizeof data, "%s/data", fx.dir);
    snprintf(log, sizeof log, "%s/server.log", fx.dir);
    nftw(data, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    mkdir(data, 0700);
    fx.server = spawn(fx.b->server_argv(data, fx.port, fx.port2), log);
    assert_true(fx.server > 0);
    double deadline = now_s() + 30;
    int rc = -1;
    while (now_s() < deadline) {
        void *probe = NULL;
        rc = fx.b->ops->create(fx.url, PREFIX, TTL_S, 1000, &probe);
        fx.b->ops->destroy(probe);
        if (rc == 0)
            break;
        if (waitpid(fx.server, NULL, WNOHANG) == fx.server) {
            fx.server = 0;
            fail_msg("%s exited at start; see %s", fx.b->server_bin, log);
        }
        sleep_ms(100);
    }
    if (rc)
        fail_msg("%s did not answer within 30 s: %s", fx.b->name, ferry_last_error());
}

static void server_stop(void)
{
    if (fx.server > 0) {
        kill(fx.server, SIGKILL);
        waitpid(fx.server, NULL, 0);
        fx.server = 0;
    }
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(fx.dir, sizeof fx.dir, "/tmp/ferry-meta-XXXXXX");
    assert_non_null(mkdtemp(fx.dir));
    fx.port = free_port();
    fx.port2 = free_port();
    assert_true(fx.port > 0 && fx.port2 > 0 && fx.port != fx.port2);
    snprintf(fx.url, sizeof fx.url, "%s://127.0.0.1:%d", fx.b->name, fx.port);
    server_start();
    assert_int_equal(fx.b->ops->create(fx.url, PREFIX, TTL_S, 2000, &fx.observer), 0);
    /* engines made by ferry_config_init, here and in forked targets, use the store */
    setenv("FERRY_METADATA_SERVER", fx.url, 1);
    setenv("FERRY_METADATA_TTL_S", "2", 1);
    setenv("FERRY_METADATA_PREFIX", PREFIX, 1);
    setenv("FERRY_CONNECT_TIMEOUT_MS", "2000", 1);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    fx.b->ops->destroy(fx.observer);
    server_stop();
    nftw(fx.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* ------------------------------------------------------------ helpers */

/* An engine in this process with a registered local buffer. */
struct peer {
    ferry_engine *e;
    char *buf;
};

static void peer_create(struct peer *p)
{
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    int rc = ferry_engine_create(&cfg, &p->e);
    if (rc)
        fail_msg("engine on %s: %s: %s", fx.url, ferry_err_name(rc), ferry_last_error());
    assert_int_equal(ferry_mem_alloc(p->e, "cpu", TARGET_SIZE, (void **)&p->buf), 0);
    assert_int_equal(ferry_register_memory(p->e, p->buf, TARGET_SIZE, "cpu", 0), 0);
}

static void peer_destroy(struct peer *p)
{
    if (!p->e)
        return;
    ferry_unregister_memory(p->e, p->buf);
    ferry_mem_free(p->e, "cpu", p->buf, TARGET_SIZE);
    ferry_engine_destroy(p->e);
    p->e = NULL;
}

static void transfer_one(struct peer *p, int op, ferry_segment_t seg, struct child_target *t, uint64_t off,
                         size_t len)
{
    struct ferry_request r = {op, p->buf + off, seg, t->addr + off, len};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(p->e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &r, 1), 0);
    int rc = ferry_batch_wait(b, 30000);
    if (rc)
        fail_msg("%s failed: %s: %s", op == FERRY_WRITE ? "WRITE" : "READ", ferry_err_name(rc), ferry_last_error());
    ferry_batch_free(b);
}

/* A WRITE checked in the target and a READ checked here, at a spot that
 * depends on seed so repeated calls touch different bytes. */
static void transfer_verified(struct peer *p, ferry_segment_t seg, struct child_target *t, uint64_t seed)
{
    const size_t len = 256u << 10;
    uint64_t off = (seed % 8) * len;
    pattern_fill(p->buf + off, len, seed, off);
    transfer_one(p, FERRY_WRITE, seg, t, off, len);
    assert_int_equal(child_target_check(t, off, len, seed), -1);
    uint64_t roff = TARGET_SIZE - len; /* never written: still the target's own pattern */
    memset(p->buf + roff, 0, len);
    transfer_one(p, FERRY_READ, seg, t, roff, len);
    assert_int_equal(pattern_check(p->buf + roff, len, TARGET_SEED, roff), -1);
}

static void target_start(struct child_target *t)
{
    assert_int_equal(child_target_start(t, TARGET_SIZE, "cpu", TARGET_SEED), 0);
}

/* Looks name up through the observer: 0 when present. */
static int observed(const char *name)
{
    char *json = NULL;
    size_t len;
    int rc = fx.b->ops->lookup(fx.observer, name, &json, &len);
    free(json);
    return rc;
}

/* Polls until name is present (want 0) or absent (want FERRY_ENOSEG), up to
 * limit_s; returns the seconds it took, or -1. */
static double wait_observed(const char *name, int want, double limit_s)
{
    double t0 = now_s();
    while (now_s() - t0 < limit_s) {
        if (observed(name) == want)
            return now_s() - t0;
        sleep_ms(50);
    }
    return -1;
}

/* Writes key prefix+name = value with the server's own command-line client,
 * or through the observer when that tool is absent. */
static void put_by_hand(const char *name, const char *value)
{
    char key[256];
    snprintf(key, sizeof key, "%s%s", PREFIX, name);
    if (in_path(fx.b->hand_tool))
        assert_int_equal(run_tool(fx.b->put_argv(fx.port, key, value)), 0);
    else
        assert_int_equal(fx.b->ops->publish(fx.observer, name, value), 0);
}

/* ------------------------------------------------------------ tests */

static void expect_create_fails(const char *url, int want)
{
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.metadata_server = url;
    ferry_engine *e = NULL;
    double t0 = now_s();
    int rc = ferry_engine_create(&cfg, &e);
    if (rc != want)
        fail_msg("%s: got %s (%s), want %s", url, ferry_err_name(rc), ferry_last_error(), ferry_err_name(want));
    if (!strstr(ferry_last_error(), url))
        fail_msg("%s: the message does not name the URL: %s", url, ferry_last_error());
    assert_true(now_s() - t0 < 15); /* bounded, not a speed check */
    print_message("  %s -> %s: %s\n", url, ferry_err_name(rc), ferry_last_error());
}

static void test_unreachable_server(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "%s://127.0.0.1:%d", fx.b->name, free_port());
    expect_create_fails(url, FERRY_ECONN);
}

static void test_publish_open_transfer(void **state)
{
    (void)state;
    struct child_target t;
    target_start(&t);
    assert_int_equal(observed(t.name), 0);
    struct peer p = {0};
    peer_create(&p);
    ferry_segment_t seg, again;
    int rc = ferry_open_segment(p.e, t.name, &seg);
    if (rc)
        fail_msg("open %s: %s: %s", t.name, ferry_err_name(rc), ferry_last_error());
    assert_int_equal(ferry_open_segment(p.e, t.name, &again), 0);
    assert_true(seg == again);
    struct ferry_buffer_info bi;
    size_t n;
    assert_int_equal(ferry_segment_buffers(p.e, seg, &bi, 1, &n), 0);
    assert_int_equal(n, 1);
    assert_true(bi.addr == t.addr && bi.len == TARGET_SIZE);
    transfer_verified(&p, seg, &t, 1);
    transfer_verified(&p, seg, &t, 2);
    /* this engine published itself too */
    assert_int_equal(observed(ferry_engine_segment_name(p.e)), 0);
    peer_destroy(&p);
    child_target_kill(&t);
}

/* The store's connections (hiredis's, curl's) are close-on-exec like the
 * engine's own (test_cloexec.c: tcp, shm, the handshake): a user's
 * fork+exec does not inherit them.  Only network sockets are counted:
 * libcurl before 8.8 makes each handle's wake-up socketpair without
 * close-on-exec, with no hook to change it (curl issue 13618); it is
 * printed as a note. */
static void test_store_connections_close_on_exec(void **state)
{
    (void)state;
    static bool before[TEST_MAX_FD];
    test_fds_open(before);
    struct child_target t;
    target_start(&t);
    struct peer p = {0};
    peer_create(&p);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(p.e, t.name, &seg), 0);
    transfer_verified(&p, seg, &t, 3);
    assert_int_equal(test_fds_not_cloexec(before, true), 0);
    peer_destroy(&p);
    child_target_kill(&t);
}

static void test_destroy_removes_key(void **state)
{
    (void)state;
    struct peer p = {0};
    peer_create(&p);
    char name[128];
    snprintf(name, sizeof name, "%s", ferry_engine_segment_name(p.e));
    assert_int_equal(observed(name), 0);
    peer_destroy(&p);
    assert_int_equal(observed(name), FERRY_ENOSEG); /* at once, not after the TTL */
    assert_non_null(strstr(ferry_last_error(), "not published"));
    assert_non_null(strstr(ferry_last_error(), fx.url));
}

static void test_killed_engine_expires(void **state)
{
    (void)state;
    struct child_target t;
    target_start(&t);
    assert_int_equal(observed(t.name), 0);
    sleep_ms(TTL_S * 1000); /* the keepalive renews it past the first TTL */
    assert_int_equal(observed(t.name), 0);
    child_target_kill(&t); /* SIGKILL: no unpublish */
    double took = wait_observed(t.name, FERRY_ENOSEG, 10);
    if (took < 0)
        fail_msg("the key of a killed engine is still there 10 s later (TTL %d s)", TTL_S);
    print_message("  key of the killed engine gone after %.2f s (TTL %d s)\n", took, TTL_S);
    struct peer p = {0};
    peer_create(&p);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(p.e, t.name, &seg), FERRY_ENOSEG);
    peer_destroy(&p);
}

static void test_server_restart(void **state)
{
    (void)state;
    struct child_target t;
    target_start(&t);
    struct peer p = {0};
    peer_create(&p);
    ferry_segment_t seg, other;
    assert_int_equal(ferry_open_segment(p.e, t.name, &seg), 0);
    transfer_verified(&p, seg, &t, 3);

    server_stop();
    double t0 = now_s();
    int rc = ferry_open_segment(p.e, "127.0.0.1:1", &other);
    if (rc != FERRY_ENOSEG)
        fail_msg("lookup with the store down: %s: %s", ferry_err_name(rc), ferry_last_error());
    print_message("  store down: %s\n", ferry_last_error());
    assert_non_null(strstr(ferry_last_error(), "lookup failed"));
    assert_true(now_s() - t0 < 15);
    /* transfers between segments that are already open go on */
    transfer_verified(&p, seg, &t, 4);
    sleep_ms(TTL_S * 1000);
    transfer_verified(&p, seg, &t, 5);

    server_start(); /* empty: everything must be published again */
    double took = wait_observed(t.name, 0, 15);
    if (took < 0)
        fail_msg("the target did not publish itself again within 15 s of the restart");
    assert_true(wait_observed(ferry_engine_segment_name(p.e), 0, 15) >= 0);
    print_message("  re-published %.2f s after the store answered again\n", took);
    transfer_verified(&p, seg, &t, 6);
    /* new lookups work again */
    struct peer q = {0};
    peer_create(&q);
    rc = ferry_open_segment(q.e, t.name, &other);
    if (rc)
        fail_msg("lookup after the restart: %s: %s", ferry_err_name(rc), ferry_last_error());
    transfer_verified(&q, other, &t, 7);
    peer_destroy(&q);
    peer_destroy(&p);
    child_target_kill(&t);
}

/* A server that accepts connections but never answers (SIGSTOP): lookups and
 * engine destroy end within the timeouts instead of hanging. */
static void test_server_hung(void **state)
{
    (void)state;
    struct peer p = {0};
    peer_create(&p);
    assert_int_equal(test_stop_process(fx.server), 0);
    double t0 = now_s();
    ferry_segment_t seg;
    int rc = ferry_open_segment(p.e, "hung:1", &seg);
    double took = now_s() - t0;
    print_message("  lookup against a stopped server: %s after %.2f s: %s\n", ferry_err_name(rc), took,
                  ferry_last_error());
    assert_int_equal(rc, FERRY_ENOSEG);
    assert_true(took < 15);
    t0 = now_s();
    peer_destroy(&p); /* unpublish times out; the keepalive thread stops */
    took = now_s() - t0;
    print_message("  engine destroy against a stopped server: %.2f s\n", took);
    assert_true(took < 15);
    kill(fx.server, SIGCONT);
}

static void test_corrupt_descriptor(void **state)
{
    (void)state;
    struct peer p = {0};
    peer_create(&p);
    ferry_segment_t seg;
    const char *bad[][2] = {
        {"corrupt-1:1", "{this is not json"},
        {"corrupt-2:1", "{\"format\":1,\"fingerprint\":\"ferry-desc-1/wire-2\"}"},
        {"corrupt-3:1", "[1,2,3]"},
        {"corrupt-4:1", "{\"format\":1,\"format\":1}"}, /* hostile: a key twice */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        put_by_hand(bad[i][0], bad[i][1]);
        for (int probe = 0; probe < 2; probe++) {
            int rc = probe ? ferry_probe_segment(p.e, bad[i][0]) : ferry_open_segment(p.e, bad[i][0], &seg);
            if (rc != FERRY_EPROTO)
                fail_msg("%s: got %s (%s), want FERRY_EPROTO", bad[i][1], ferry_err_name(rc), ferry_last_error());
            /* the store as configured, the key and the segment (before: the segment only) */
            char key[160];
            snprintf(key, sizeof key, "key \"%s%s\"", PREFIX, bad[i][0]);
            const char *why = ferry_last_error();
            if (!strstr(why, fx.url) || !strstr(why, key) || !strstr(why, bad[i][0]))
                fail_msg("%s: the detail does not name %s, %s and the segment: %s", bad[i][1], fx.url, key, why);
            print_message("  %s -> %s\n", bad[i][1], why);
        }
    }
    peer_destroy(&p);
}

/* Replaces the first `from` in s (malloc'd) by `to`; returns a new string. */
static char *replace(const char *s, const char *from, const char *to)
{
    const char *at = strstr(s, from);
    assert_non_null(at);
    char *out = malloc(strlen(s) + strlen(to) + 1);
    assert_non_null(out);
    sprintf(out, "%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
    return out;
}

static void test_other_version(void **state)
{
    (void)state;
    struct child_target t;
    target_start(&t);
    char *json = NULL;
    size_t len;
    assert_int_equal(fx.b->ops->lookup(fx.observer, t.name, &json, &len), 0);
    char *v2 = replace(json, "\"format\":1", "\"format\":2");
    char *fp = replace(json, "ferry-desc-1/wire-2", "ferry-desc-1/wire-9");
    assert_int_equal(fx.b->ops->publish(fx.observer, "version-2:1", v2), 0);
    put_by_hand("fingerprint:1", fp);
    struct peer p = {0};
    peer_create(&p);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(p.e, "version-2:1", &seg), FERRY_EVERSION);
    print_message("  format 2 -> %s\n", ferry_last_error());
    assert_int_equal(ferry_open_segment(p.e, "fingerprint:1", &seg), FERRY_EVERSION);
    print_message("  other fingerprint -> %s\n", ferry_last_error());
    assert_int_equal(ferry_open_segment(p.e, t.name, &seg), 0); /* the genuine one still opens */
    assert_int_equal(fx.b->ops->unpublish(fx.observer, "version-2:1"), 0);
    assert_int_equal(observed("version-2:1"), FERRY_ENOSEG);
    peer_destroy(&p);
    child_target_kill(&t);
    free(json);
    free(v2);
    free(fp);
}

/* One request of len bytes at the target's t->addr + off; its outcome. */
static int transfer_rc(struct peer *p, int op, ferry_segment_t seg, struct child_target *t, uint64_t off,
                       size_t len, struct ferry_status *st)
{
    struct ferry_request r = {op, p->buf, seg, t->addr + off, len};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(p->e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &r, 1), 0);
    int rc = ferry_batch_wait(b, 30000);
    assert_int_equal(ferry_batch_status(b, 0, st), 0);
    ferry_batch_free(b);
    return rc;
}

/* A store entry with the right key and a well-formed descriptor that lies:
 * under another segment's name (refused at open, FERRY_EPROTO naming both);
 * naming a live target's endpoints but a buffer twice as long as the one it
 * registered.  The initiator believes the descriptor, so the target's own
 * check is what stands: WRITE and READ past its registration end FAILED
 * FERRY_ERANGE, the target lives on and a WRITE inside lands. */
static void test_lying_descriptor(void **state)
{
    (void)state;
    struct child_target t;
    target_start(&t);
    char *json = NULL, name_field[160], len_field[64], grown_len[64];
    size_t len;
    assert_int_equal(fx.b->ops->lookup(fx.observer, t.name, &json, &len), 0);
    snprintf(name_field, sizeof name_field, "\"name\":\"%s\"", t.name);
    snprintf(len_field, sizeof len_field, "\"len\":\"0x%x\"", TARGET_SIZE);
    snprintf(grown_len, sizeof grown_len, "\"len\":\"0x%x\"", 2 * TARGET_SIZE);
    char *renamed = replace(json, name_field, "\"name\":\"grown:1\"");
    char *grown = replace(renamed, len_field, grown_len);
    put_by_hand("someone-else:1", json);
    put_by_hand("grown:1", grown);
    struct peer p = {0};
    peer_create(&p);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(p.e, "someone-else:1", &seg), FERRY_EPROTO);
    assert_non_null(strstr(ferry_last_error(), t.name));
    print_message("  another segment's descriptor -> %s\n", ferry_last_error());

    assert_int_equal(ferry_open_segment(p.e, "grown:1", &seg), 0);
    struct ferry_status st;
    for (int op = 0; op < 2; op++) {
        int rc = transfer_rc(&p, op ? FERRY_READ : FERRY_WRITE, seg, &t, TARGET_SIZE + 4096, 65536, &st);
        print_message("  %s past the registration -> %s: %s\n", op ? "READ" : "WRITE", ferry_err_name(rc),
                      st.message);
        assert_int_equal(rc, FERRY_ERANGE);
        assert_int_equal(st.state, FERRY_FAILED);
    }
    pattern_fill(p.buf, 65536, 77, 0);
    assert_int_equal(transfer_rc(&p, FERRY_WRITE, seg, &t, 0, 65536, &st), 0);
    assert_int_equal(child_target_check(&t, 0, 65536, 77), -1);
    peer_destroy(&p);
    child_target_kill(&t);
    free(json);
    free(renamed);
    free(grown);
}

/* Values of about 1 MB, of each length mod 3, come back byte for byte
 * (base64 padding, request bodies over curl's 100-continue threshold). */
static void test_large_value_roundtrip(void **state)
{
    (void)state;
    const size_t base = 1000000;
    char *v = malloc(base + 3);
    assert_non_null(v);
    for (size_t i = 0; i < base + 2; i++)
        v[i] = (char)(' ' + (i * 7919) % 95); /* printable, includes quotes and backslashes */
    for (size_t extra = 0; extra < 3; extra++) {
        v[base + extra] = '\0';
        assert_int_equal(fx.b->ops->publish(fx.observer, "large:1", v), 0);
        char *back = NULL;
        size_t len = 0;
        assert_int_equal(fx.b->ops->lookup(fx.observer, "large:1", &back, &len), 0);
        assert_int_equal(len, base + extra);
        assert_memory_equal(back, v, len);
        assert_int_equal(back[len], '\0');
        free(back);
        v[base + extra] = (char)(' ' + ((base + extra) * 7919) % 95);
    }
    assert_int_equal(fx.b->ops->unpublish(fx.observer, "large:1"), 0);
    assert_int_equal(observed("large:1"), FERRY_ENOSEG);
    free(v);
}

static void test_absent_name(void **state)
{
    (void)state;
    struct peer p = {0};
    peer_create(&p);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(p.e, "nobody:4242", &seg), FERRY_ENOSEG);
    assert_non_null(strstr(ferry_last_error(), "nobody:4242"));
    assert_non_null(strstr(ferry_last_error(), "not published"));
    print_message("  %s\n", ferry_last_error());
    peer_destroy(&p);
}

#define META_COMMON_TESTS                                                                          \
    cmocka_unit_test(test_unreachable_server), cmocka_unit_test(test_publish_open_transfer),       \
        cmocka_unit_test(test_absent_name), cmocka_unit_test(test_large_value_roundtrip),          \
        cmocka_unit_test(test_destroy_removes_key), cmocka_unit_test(test_store_connections_close_on_exec), \
        cmocka_unit_test(test_killed_engine_expires), cmocka_unit_test(test_corrupt_descriptor),   \
        cmocka_unit_test(test_other_version), cmocka_unit_test(test_lying_descriptor),             \
        cmocka_unit_test(test_server_hung),                                                        \
        cmocka_unit_test(test_server_restart)

/* Runs the group for backend b, or skips when it or its server is absent. */
static int meta_tests_main(const struct meta_backend *b, const struct CMUnitTest *tests, size_t n)
{
    fx.b = b;
    if (!b->ops)
        test_skip("this build has no %s backend (library not found at configure time)", b->name);
    if (!in_path(b->server_bin))
        test_skip("%s not installed: no %s in PATH (apt-get install %s)", b->name, b->server_bin,
                  strcmp(b->name, "etcd") == 0 ? "etcd-server etcd-client" : "redis-server");
    signal(SIGPIPE, SIG_IGN);
    return _cmocka_run_group_tests(b->name, tests, n, group_setup, group_teardown);
}

#endif

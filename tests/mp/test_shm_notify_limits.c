/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_shm_notify_limits.c — a shm notification to a target that does not
 * accept its notification socket (stopped, hung, or out of file
 * descriptors) ends by the request deadline instead of holding a shm
 * worker forever.
 *
 * The child target is stopped (SIGSTOP, waited for with WUNTRACED, so no
 * timing is assumed) and its notification socket's listen backlog filled
 * with non-blocking connects until the kernel answers EAGAIN.  A batch of
 * one WRITE with a notification and a 2 s request timeout is submitted; the
 * WRITE itself completes (cross-memory attach needs nothing of the target),
 * and the notification must end (FERRY_ETIMEDOUT or FERRY_ECONN) long
 * before the 30 s guard.  Before the fix shm_notify.c's
 * send_locked called a blocking connect() that ignored the frame's
 * deadline, so the worker blocked until the target ran again.
 * The target is always resumed and killed before any assertion, so a
 * failure leaves no stopped process behind.
 *
 * Single-threaded test code; the engine's threads run the transfer.
 */
#include <errno.h>
#include <setjmp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "ferry.h"
#include "testutil.h"
#include "xfer_pair.h"

#define TSIZE (64u << 10)
#define TSEED 3
#define MAX_FILL 4096
#define GUARD_MS 30000            /* 15 x the request timeout: a hang guard */

/* The abstract name of process pid's notification socket, from
 * /proc/net/unix ("@ferry-shm.<pid>.<engine id>"), without the '@'. */
static bool notify_socket_name(pid_t pid, char *out, size_t cap)
{
    char prefix[64], line[512];
    snprintf(prefix, sizeof prefix, "@ferry-shm.%d.", (int)pid);
    FILE *f = fopen("/proc/net/unix", "re");
    bool found = false;
    while (f && !found && fgets(line, sizeof line, f)) {
        char *at = strstr(line, prefix);
        if (!at)
            continue;
        at[strcspn(at, "\n")] = '\0';
        snprintf(out, cap, "%s", at + 1);
        found = true;
    }
    if (f)
        fclose(f);
    return found;
}

/* The abstract address of socket name; returns its length. */
static socklen_t notify_addr(const char *name, struct sockaddr_un *a)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    size_t n = strlen(name);
    memcpy(a->sun_path + 1, name, n);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

/* Non-blocking connects to the abstract socket until the backlog is full
 * (EAGAIN); returns how many succeeded (fds kept in fds), or -1 when the
 * backlog never filled. */
static int fill_backlog(const char *name, int *fds)
{
    struct sockaddr_un a;
    socklen_t len = notify_addr(name, &a);
    for (int i = 0; i < MAX_FILL; i++) {
        int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        if (connect(fd, (struct sockaddr *)&a, len) != 0) {
            int err = errno;
            close(fd);
            return err == EAGAIN ? i : -1;
        }
        fds[i] = fd;
    }
    return -1;
}

/* A blocking connection to the notification socket name, or -1. */
static int notify_connect(const char *name)
{
    struct sockaddr_un a;
    socklen_t len = notify_addr(name, &a);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, len) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Waits (GUARD_MS at most) until `want` of the n connections were closed by
 * the target (EOF or an error; closed here too, fd set to -1); returns how
 * many were. */
static int wait_closed(struct pollfd *p, int n, int want)
{
    int closed = 0;
    for (int waited = 0; closed < want && waited < GUARD_MS; waited += 100) {
        if (poll(p, (nfds_t)n, 100) <= 0)
            continue;
        for (int i = 0; i < n; i++) {
            char byte;
            if (p[i].fd >= 0 && p[i].revents && recv(p[i].fd, &byte, 1, MSG_DONTWAIT) <= 0) {
                close(p[i].fd);
                p[i].fd = -1;
                closed++;
            }
        }
    }
    return closed;
}

/* A target offering shm only (FERRY_PROTOCOLS stays set), with var=value
 * (var NULL: nothing more) in its environment alone. */
static void start_shm_target(struct child_target *t, const char *var, const char *value)
{
    setenv("FERRY_PROTOCOLS", "shm", 1);
    if (var)
        setenv(var, value, 1);
    assert_int_equal(child_target_start(t, TSIZE, "cpu", TSEED), 0);
    if (var)
        unsetenv(var);
}

/* An shm-only target (as start_shm_target) and an engine here offering shm
 * (request_timeout_ms, 0: the default) with the pair's TSIZE bytes of cpu
 * memory holding pattern(9, 0) and the target's segment open. */
static void open_shm_pair(struct xfer_pair *x, const char *var, const char *value, unsigned request_timeout_ms)
{
    memset(x, 0, sizeof *x);
    start_shm_target(&x->target, var, value);
    x->len = TSIZE;
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = "shm";
    if (request_timeout_ms)
        cfg.request_timeout_ms = request_timeout_ms;
    xfer_pair_open(x, &cfg, "cpu");
    pattern_fill(x->local, TSIZE, 9, 0);
}

static void notification_to_a_stopped_target_ends(void **state)
{
    (void)state;
    struct xfer_pair x;
    open_shm_pair(&x, NULL, NULL, 2000);
    struct child_target *target = &x.target;
    ferry_engine *e = x.e;
    char name[128];
    assert_true(notify_socket_name(target->pid, name, sizeof name));

    /* the target stops, its notification backlog full */
    int status = 0;
    assert_int_equal(kill(target->pid, SIGSTOP), 0);
    assert_int_equal(waitpid(target->pid, &status, WUNTRACED), target->pid);
    assert_true(WIFSTOPPED(status));
    static int fds[MAX_FILL];
    int nfds = fill_backlog(name, fds);

    ferry_batch *b = NULL;
    int rc = FERRY_EINVAL;
    char why[256] = "";
    struct ferry_request r = {FERRY_WRITE, x.local, x.seg, target->addr, TSIZE};
    if (nfds >= 0 && ferry_batch_alloc(e, 1, &b) == 0 && ferry_batch_set_notify(b, "kv-ready", 8) == 0 &&
        ferry_batch_submit(b, &r, 1) == 0) {
        rc = ferry_batch_wait(b, GUARD_MS);
        snprintf(why, sizeof why, "%s", ferry_last_error());
    }

    /* resume the target before any assertion: the worker goes on then */
    kill(target->pid, SIGCONT);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    print_message("backlog filled with %d connections; batch_wait: %s (%s)\n", nfds, ferry_err_name(rc), why);
    if (b) {
        if (strstr(why, "still running")) /* the bug: it ends once the target runs */
            (void)ferry_batch_wait(b, 120000);
        ferry_batch_free(b);
    }
    xfer_pair_stop(&x);

    assert_true(nfds >= 0);
    assert_non_null(b);
    /* the notification failed by its deadline, not the 30 s wait */
    assert_int_not_equal(rc, 0);
    assert_null(strstr(why, "batch_wait:"));
    assert_true(rc == FERRY_ETIMEDOUT || rc == FERRY_ECONN);
    assert_non_null(strstr(why, "notification"));
}

/* Connections to the notification socket that never send a byte: a target
 * closes them once idle for FERRY_IDLE_TIMEOUT_MS, as its tcp listener does
 * with data connections (DESIGN.md: "idle timeouts, caps on connections per
 * peer and in total"); before, it kept every one, so a sender
 * (FERRY_SHM_ALLOW_UIDS admits other users' too) could take all of the
 * target's file descriptors. */
#define IDLE_CONNS 32

static void idle_notification_connections_closed(void **state)
{
    (void)state;
    struct child_target target;
    start_shm_target(&target, "FERRY_IDLE_TIMEOUT_MS", "1000");
    char name[128];
    assert_true(notify_socket_name(target.pid, name, sizeof name));
    struct pollfd p[IDLE_CONNS];
    int opened = 0;
    for (int i = 0; i < IDLE_CONNS; i++) {
        int fd = notify_connect(name);
        if (fd >= 0)
            p[opened++] = (struct pollfd){.fd = fd, .events = POLLIN};
    }
    /* each ends with EOF or an error from the target's side */
    int closed = wait_closed(p, opened, opened);
    for (int i = 0; i < opened; i++)
        if (p[i].fd >= 0)
            close(p[i].fd);
    child_target_kill(&target);
    print_message("%d of %d idle notification connections closed by the target within %d ms\n", closed, opened,
                  GUARD_MS);
    assert_int_equal(opened, IDLE_CONNS);
    assert_int_equal(closed, opened);
}

/* One process may hold FERRY_MAX_CONNECTIONS_PER_PEER notification
 * connections to a target (the cap of its tcp listener): of 8 connections
 * with a cap of 4 the target closes 4 at once and keeps 4 (before, it kept
 * every one: no cap). */
static void notification_senders_capped(void **state)
{
    (void)state;
    struct child_target target;
    start_shm_target(&target, "FERRY_MAX_CONNECTIONS_PER_PEER", "4");
    char name[128];
    assert_true(notify_socket_name(target.pid, name, sizeof name));
    struct pollfd p[8];
    for (int i = 0; i < 8; i++) {
        p[i] = (struct pollfd){.fd = notify_connect(name), .events = POLLIN};
        assert_true(p[i].fd >= 0);
    }
    int closed = wait_closed(p, 8, 4);
    /* the other four stay open: nothing to read, no hang-up (the idle
     * timeout is the default 120 s) */
    int open_now = 0;
    for (int i = 0; i < 8; i++) {
        if (p[i].fd < 0)
            continue;
        struct pollfd one = {.fd = p[i].fd, .events = POLLIN};
        open_now += poll(&one, 1, 0) == 0;
        close(p[i].fd);
    }
    child_target_kill(&target);
    assert_int_equal(closed, 4);
    assert_int_equal(open_now, 4);
}

/* A target closed the initiator's notification connection as idle (its
 * FERRY_IDLE_TIMEOUT_MS shorter than the initiator's): the next
 * notification goes on a new connection instead of failing FERRY_ECONN. */
static void notification_after_idle_close(void **state)
{
    (void)state;
    struct xfer_pair x;
    open_shm_pair(&x, "FERRY_IDLE_TIMEOUT_MS", "500", 0);
    ferry_engine *e = x.e;
    struct ferry_request r = {FERRY_WRITE, x.local, x.seg, x.target.addr, TSIZE};
    for (int round = 0; round < 2; round++) {
        if (round) /* the target's service closes it after 500 ms idle (it looks every 100 ms) */
            usleep(2000 * 1000);
        ferry_batch *b;
        assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
        assert_int_equal(ferry_batch_set_notify(b, "kv-ready", 8), 0);
        assert_int_equal(ferry_batch_submit(b, &r, 1), 0);
        int rc = ferry_batch_wait(b, GUARD_MS);
        if (rc)
            fail_msg("round %d: %s", round, ferry_last_error());
        ferry_batch_free(b);
    }
    assert_int_equal(child_target_check(&x.target, 0, TSIZE, 9), -1);
    xfer_pair_stop(&x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(notification_to_a_stopped_target_ends),
        cmocka_unit_test(idle_notification_connections_closed),
        cmocka_unit_test(notification_senders_capped),
        cmocka_unit_test(notification_after_idle_close),
    };
    return cmocka_run_group_tests_name("shm notification limits", tests, NULL, NULL);
}

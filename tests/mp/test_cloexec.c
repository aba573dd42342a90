/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_cloexec.c — every descriptor ferry opens is close-on-exec, so a
 * user's fork+exec never inherits the engine's sockets (a listening port
 * held open by a child outlives the engine; a data connection held by one
 * is never seen to close by its peer).  After an initiator here moved data
 * to a target process over shm (device memory, a notification) and over tcp
 * (a second engine, tcp only), each opened through the P2P handshake:
 *  - every descriptor this process gained has FD_CLOEXEC;
 *  - so has every descriptor of the target process (its engine's, and
 *    nothing inherited from this one), but its stdio, its control line and
 *    what the test runner left open to this process;
 *  - a process forked and exec'd now (a second target) holds nothing of
 *    this process's either.
 * Other processes' flags are read from /proc/PID/fdinfo.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "xfer_pair.h"

#define TSIZE (4u << 20)
#define TSEED 7

/* What descriptor fd of process pid is ("socket:[123]", a path). */
static const char *what_is(pid_t pid, int fd)
{
    static char what[256];
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)pid, fd);
    ssize_t n = readlink(path, what, sizeof what - 1);
    what[n > 0 ? n : 0] = '\0';
    return what;
}

/* The control descriptor the target process pid was given (its argv[1]). */
static int control_fd_of(pid_t pid)
{
    char path[64], argv[512];
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    FILE *f = fopen(path, "re");
    assert_non_null(f);
    size_t n = fread(argv, 1, sizeof argv - 1, f);
    fclose(f);
    argv[n] = '\0';
    return atoi(argv + strlen(argv) + 1);
}

/* Is descriptor fd of process pid close-on-exec?  (fdinfo's flags, octal) */
static bool cloexec_in(pid_t pid, int fd)
{
    char path[64], line[128];
    unsigned long flags = 0;
    snprintf(path, sizeof path, "/proc/%d/fdinfo/%d", (int)pid, fd);
    FILE *f = fopen(path, "re");
    if (!f)
        return true; /* closed meanwhile: nothing to inherit */
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "flags: %lo", &flags) == 1)
            break;
    fclose(f);
    return (flags & O_CLOEXEC) != 0;
}

/* Descriptors this process had before the test that a child inherits
 * (the test runner's, not ferry's): every child holds them under the same
 * numbers. */
static bool inherited[TEST_MAX_FD];

/* Fails naming each descriptor of the target process t that is not
 * close-on-exec, but its stdio, its control line and what every child of
 * this process inherits. */
static void assert_target_cloexec(const struct child_target *t)
{
    int ctl = control_fd_of(t->pid), bad = 0;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)t->pid);
    DIR *d = opendir(path);
    assert_non_null(d);
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        int fd = atoi(de->d_name);
        if (de->d_name[0] == '.' || fd <= 2 || fd == ctl || (fd < TEST_MAX_FD && inherited[fd]) || cloexec_in(t->pid, fd))
            continue;
        fprintf(stderr, "target %d: descriptor %d (%s) is not close-on-exec\n", (int)t->pid, fd, what_is(t->pid, fd));
        bad++;
    }
    closedir(d);
    assert_int_equal(bad, 0);
}

/* One WRITE of len bytes from the start of p's memory, with a note. */
static void write_with_note(struct xfer_pair *p, size_t len)
{
    struct ferry_request r = {FERRY_WRITE, p->local, p->seg, p->target.addr, len};
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(p->e, 1, &b), 0);
    assert_int_equal(ferry_batch_set_notify(b, "cloexec", 7), 0);
    assert_int_equal(ferry_batch_submit(b, &r, 1), 0);
    assert_int_equal(ferry_batch_wait(b, 60000), 0);
    ferry_batch_free(b);
}

/* Payload bytes engine e moved over transport `name` so far. */
static uint64_t moved_over(ferry_engine *e, const char *name)
{
    struct ferry_stats st;
    assert_int_equal(ferry_get_stats(e, &st), 0);
    for (size_t i = 0; i < st.transport_count; i++)
        if (strcmp(st.transports[i].name, name) == 0)
            return st.transports[i].bytes_written + st.transports[i].bytes_read;
    return 0;
}

static struct ferry_config config(const char *protocols)
{
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = protocols;
    return cfg;
}

static void test_library_descriptors_close_on_exec(void **state)
{
    (void)state;
    static bool before[TEST_MAX_FD];
    test_fds_open(before);
    for (int fd = 0; fd < TEST_MAX_FD; fd++)
        inherited[fd] = before[fd] && !(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    const char *dev = test_device_location();
    struct xfer_pair shm, tcp;
    setenv("FERRY_PROTOCOLS", "tcp,shm", 1); /* the target's, read at its start */
    struct ferry_config cfg = config("tcp,shm");
    xfer_pair_start(&shm, TSIZE, dev, TSEED, &cfg, dev);
    xfer_pair_move_ok(&shm, FERRY_WRITE, (struct xfer_blocks){1u << 20, 2, 0, 1u << 20}, 1, 60000);
    xfer_pair_move_ok(&shm, FERRY_READ, (struct xfer_blocks){1u << 20, 2, 2u << 20, 1u << 20}, TSEED, 60000);
    write_with_note(&shm, 4096);
    /* a second engine, tcp only, to the same target */
    tcp.target = shm.target;
    tcp.len = TSIZE;
    cfg = config("tcp");
    xfer_pair_open(&tcp, &cfg, dev);
    xfer_pair_move_ok(&tcp, FERRY_WRITE, (struct xfer_blocks){1u << 20, 2, 0, 1u << 20}, 2, 60000);
    write_with_note(&tcp, 4096);
    unsetenv("FERRY_PROTOCOLS");
    assert_true(moved_over(shm.e, "shm") > 0);
    assert_true(moved_over(tcp.e, "tcp") > 0);

    assert_int_equal(test_fds_not_cloexec(before, false), 0);
    assert_target_cloexec(&shm.target);

    /* a fork+exec now: the engines' sockets stay here */
    struct child_target later;
    assert_int_equal(child_target_start(&later, 4096, "cpu", 1), 0);
    assert_target_cloexec(&later);
    child_target_kill(&later);

    ferry_mem_free(tcp.e, tcp.loc, tcp.local, tcp.len);
    free(tcp.host);
    ferry_engine_destroy(tcp.e);
    xfer_pair_stop(&shm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_library_descriptors_close_on_exec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

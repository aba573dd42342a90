/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_cuda_ipc.c — the CUDA backend's IPC handles as a peer could forge
 * them: a child process (this program re-executed with --export) allocates
 * device memory and sends its exported handle through a pipe; this process
 * opens it with the offset rewritten.  An offset inside the allocation opens
 * with room = what is left of it (and closes by the pointer it gave); an
 * offset at or past the end is refused FERRY_EINVAL before any copy could
 * use it; a handle of this process's own memory FERRY_ENOTSUP.
 * Skips (exit 77) where the driver or a device is missing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "device/cuda_internal.h"
#include "device/device.h"
#include "err.h"
#include "testutil.h"

enum { ALLOC = 1 << 20 };

static const struct ferry_device_ops *ops;
static struct cuda_ipc_handle peer; /* the child's export of its allocation's base */
static pid_t child;
static int to_child = -1;           /* closing it lets the child free and exit */
static const char *self;            /* argv[0], re-executed as the child */

/* --export: allocate, export the base, write the handle, wait for EOF. */
static int export_main(void)
{
    void *p = NULL;
    uint8_t h[FERRY_IPC_HANDLE_MAX];
    size_t hl = sizeof h;
    if (ops->init() || ops->mem_alloc(0, ALLOC, &p) || ops->ipc_export(p, ALLOC, h, &hl) ||
        hl != sizeof(struct cuda_ipc_handle)) {
        fprintf(stderr, "export child: %s\n", ferry_last_error());
        return 1;
    }
    if (write(1, h, hl) != (ssize_t)hl)
        return 1;
    char b;
    while (read(0, &b, 1) > 0)
        ;
    ops->mem_free(0, p);
    return 0;
}

static int start_child(void **state)
{
    (void)state;
    int down[2], up[2];
    assert_int_equal(pipe2(down, O_CLOEXEC), 0);
    assert_int_equal(pipe2(up, O_CLOEXEC), 0);
    child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        dup2(down[0], 0);
        dup2(up[1], 1);
        close(down[1]);
        close(up[0]);
        execl(self, self, "--export", (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", self, strerror(errno));
        _exit(127);
    }
    close(down[0]);
    close(up[1]);
    to_child = down[1];
    /* a pipe: read(), not the socket helpers (recv fails ENOTSOCK) */
    size_t got = 0;
    ssize_t n = 1;
    while (got < sizeof peer && n > 0)
        if ((n = read(up[0], (char *)&peer + got, sizeof peer - got)) > 0)
            got += (size_t)n;
    if (got < sizeof peer) { /* it exited (or failed) first: read() saw EOF */
        close(to_child);
        int st = 0;
        waitpid(child, &st, 0);
        fail_msg("the exporting child sent no handle (status 0x%x)", st);
    }
    close(up[0]);
    assert_int_equal(peer.magic, CUDA_IPC_MAGIC);
    assert_int_equal(peer.pid, child);
    assert_int_equal(peer.offset, 0);
    return 0;
}

static int stop_child(void **state)
{
    (void)state;
    close(to_child);
    int st = 0;
    waitpid(child, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static int open_at(uint64_t offset, void **ptr, size_t *room)
{
    struct cuda_ipc_handle h = peer;
    h.offset = offset;
    return ops->ipc_open(0, &h, sizeof h, ptr, room);
}

static void test_offsets_inside(void **state)
{
    (void)state;
    void *base = NULL, *p = NULL;
    size_t whole = 0, room = 0;
    assert_int_equal(open_at(0, &base, &whole), 0);
    assert_true(whole >= ALLOC && whole != SIZE_MAX); /* the driver says the allocation's size */
    assert_int_equal(open_at(4096, &p, &room), 0);    /* the same allocation, counted twice */
    assert_ptr_equal(p, (char *)base + 4096);
    assert_int_equal(room, whole - 4096);
    assert_int_equal(open_at(whole - 1, &p, &room), 0);
    assert_int_equal(room, 1);
    /* closed by the pointers ipc_open gave, inner ones included */
    ops->ipc_close(0, (char *)base + whole - 1);
    ops->ipc_close(0, (char *)base + 4096);
    ops->ipc_close(0, base);
    /* and it opens again after the last close */
    assert_int_equal(open_at(0, &p, &room), 0);
    assert_int_equal(room, whole);
    ops->ipc_close(0, p);
}

static void test_offsets_past_the_end(void **state)
{
    (void)state;
    void *base = NULL, *p = (void *)1;
    size_t whole = 0, room = 7;
    assert_int_equal(open_at(0, &base, &whole), 0);
    const uint64_t bad[] = {whole, whole + 4096, UINT64_MAX / 2, UINT64_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(open_at(bad[i], &p, &room), FERRY_EINVAL);
        assert_non_null(strstr(ferry_last_error(), "past the opened allocation"));
    }
    ops->ipc_close(0, base);
}

static void test_own_and_malformed_handles(void **state)
{
    (void)state;
    void *mine = NULL, *p = NULL;
    size_t room = 0;
    struct cuda_ipc_handle h;
    size_t hl = sizeof h;
    assert_int_equal(ops->mem_alloc(0, ALLOC, &mine), 0);
    assert_int_equal(ops->ipc_export(mine, ALLOC, &h, &hl), 0);
    assert_int_equal(ops->ipc_open(0, &h, sizeof h, &p, &room), FERRY_ENOTSUP);
    ops->mem_free(0, mine);
    h = peer;
    h.magic ^= 1;
    assert_int_equal(ops->ipc_open(0, &h, sizeof h, &p, &room), FERRY_EINVAL);
    assert_int_equal(ops->ipc_open(0, &peer, sizeof peer - 1, &p, &room), FERRY_EINVAL);
}

int main(int argc, char **argv)
{
    self = argv[0];
    ops = ferry_device_find("cuda");
    if (ops == NULL)
        test_skip("no \"cuda\" backend in this build");
    if (argc > 1 && strcmp(argv[1], "--export") == 0)
        return export_main();
    if (ops->init() != 0)
        test_skip("no CUDA device: %s", ferry_last_error());
    if (ops->device_count() == 0)
        test_skip("no CUDA device: the driver sees none");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_offsets_inside),
        cmocka_unit_test(test_offsets_past_the_end),
        cmocka_unit_test(test_own_and_malformed_handles),
    };
    return cmocka_run_group_tests(tests, start_child, stop_child);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_shm_ipc_bounds.c — a shm target whose registry pairs a device
 * buffer's IPC handle with a length larger than the allocation it exports
 * is refused.
 *
 * A forked target (sim device, shm only) allocates A and B, 256 KiB each,
 * side by side, and registers both.  Then it rewrites its own registry:
 * A's slot claims 512 KiB, and B's slot is revoked, so an initiator reading
 * the registry finds [A+256K, A+512K) inside A and opens A's handle for it.
 * Its descriptor still lists B, so the engine routes a WRITE to A+256K.
 * The initiator opens A (one 256 KiB allocation here) and would copy past
 * its end.  The request must be refused before any copy, with FERRY_ERANGE
 * naming the segment, as shm refuses any piece outside the peer's
 * registrations.  Before the fix the copy was issued,
 * and only the sim device's own range check stopped it (FERRY_EIO "illegal
 * address"); on CUDA the copy engine has no such check, and a fault would
 * poison the stream (and the lane other peers' jobs share).  Now ipc_open
 * says how many bytes the mapping covers and shm refuses a registration
 * longer than that.
 *
 * Threads: the test thread only (the target is a child process, driven
 * through two pipes).
 */
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "ferry.h"
#include "testutil.h"
#include "transport/shm/shm.h"

#define ALLOC (256u << 10)
#define LEN (64u << 10)
#define GUARD_MS 60000

/* This process's registry mapping (read-write, mapped before sealing): the
 * memfd named ferry-shm-registry among our fds; its header says where. */
static struct shm_page *own_registry(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    struct shm_page *page = NULL;
    while (d && !page && (de = readdir(d)) != NULL) {
        char path[300], link[256];
        snprintf(path, sizeof path, "/proc/self/fd/%s", de->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n <= 0)
            continue;
        link[n] = '\0';
        if (!strstr(link, "ferry-shm-registry"))
            continue;
        struct shm_page head;
        if (pread(atoi(de->d_name), &head, sizeof head, 0) == (ssize_t)sizeof head && head.magic == SHM_PAGE_MAGIC)
            page = (struct shm_page *)(uintptr_t)head.addr;
    }
    if (d)
        closedir(d);
    return page;
}

static struct shm_slot *slot_at(struct shm_page *page, uint64_t addr)
{
    struct shm_slot *slots = (struct shm_slot *)((char *)page + SHM_PAGE_SIZE);
    for (uint64_t i = 0; i < atomic_load(&page->slots_used); i++)
        if ((atomic_load(&slots[i].seq) & 1) && atomic_load(&slots[i].addr) == addr)
            return &slots[i];
    return NULL;
}

/* The child: registers A and B, forges its registry, reports, waits. */
static void __attribute__((noreturn)) forging_target(int out, int in)
{
    setenv("FERRY_PROTOCOLS", "shm", 1);
    struct ferry_config cfg;
    ferry_engine *e;
    char *a = NULL, *b = NULL;
    ferry_config_init(&cfg);
    cfg.protocols = "shm";
    if (ferry_engine_create(&cfg, &e) != 0 || ferry_mem_alloc(e, "sim:0", ALLOC, (void **)&a) != 0 ||
        ferry_mem_alloc(e, "sim:0", ALLOC, (void **)&b) != 0 || ferry_register_memory(e, a, ALLOC, "sim:0", 1) != 0 ||
        ferry_register_memory(e, b, ALLOC, "sim:0", 1) != 0) {
        dprintf(out, "error %s\n", ferry_last_error());
        _exit(1);
    }
    struct shm_page *page = own_registry();
    struct shm_slot *sa = page ? slot_at(page, (uint64_t)(uintptr_t)a) : NULL;
    struct shm_slot *sb = page ? slot_at(page, (uint64_t)(uintptr_t)b) : NULL;
    if (b != a + ALLOC || !sa || !sb) {
        dprintf(out, "error B is not right after A, or no registry slots (%p %p %p %p)\n", (void *)a, (void *)b,
                (void *)sa, (void *)sb);
        _exit(1);
    }
    atomic_store(&sa->len, 2ull * ALLOC);
    atomic_fetch_add(&sb->seq, 1); /* even: revoked in the registry, still in the descriptor */
    dprintf(out, "%s %llx\n", ferry_engine_segment_name(e), (unsigned long long)(uintptr_t)a);
    char line[16];
    test_read_line(in, line, sizeof line); /* until the parent is done (or gone) */
    _exit(0);
}

static void registry_length_past_the_export_refused(void **state)
{
    (void)state;
    int to_parent[2], to_child[2];
    assert_int_equal(pipe2(to_parent, O_CLOEXEC), 0);
    assert_int_equal(pipe2(to_child, O_CLOEXEC), 0);
    fflush(NULL);
    pid_t parent = getpid(), pid = fork(); /* before this process touches any device */
    assert_true(pid >= 0);
    if (pid == 0) {
        test_child_dies_with_parent(parent);
        close(to_parent[0]);
        close(to_child[1]);
        forging_target(to_parent[1], to_child[0]);
    }
    close(to_parent[1]);
    close(to_child[0]);
    char line[256], name[128] = "";
    unsigned long long a = 0;
    bool ready = test_read_line(to_parent[0], line, sizeof line) == 0 && sscanf(line, "%127s %llx", name, &a) == 2 &&
                 strcmp(name, "error") != 0;

    int state_seen = -1, err = 0;
    char msg[256] = "";
    if (ready) {
        struct ferry_config cfg;
        ferry_engine *e = NULL;
        ferry_segment_t seg;
        static char local[LEN];
        ferry_batch *b = NULL;
        struct ferry_status st;
        ferry_config_init(&cfg);
        cfg.protocols = "shm";
        cfg.request_timeout_ms = 30000;
        if (ferry_engine_create(&cfg, &e) == 0 && ferry_register_memory(e, local, LEN, "cpu", 0) == 0 &&
            ferry_open_segment(e, name, &seg) == 0 && ferry_batch_alloc(e, 1, &b) == 0) {
            struct ferry_request r = {FERRY_WRITE, local, seg, a + ALLOC, LEN};
            if (ferry_batch_submit(b, &r, 1) == 0 && ferry_batch_wait(b, GUARD_MS) != FERRY_ETIMEDOUT &&
                ferry_batch_status(b, 0, &st) == 0) {
                state_seen = st.state;
                err = st.error;
                snprintf(msg, sizeof msg, "%s", st.message);
            }
        } else {
            snprintf(msg, sizeof msg, "set-up: %s", ferry_last_error());
        }
        if (b)
            ferry_batch_free(b);
        if (e)
            ferry_engine_destroy(e);
    }
    dprintf(to_child[1], "done\n");
    close(to_child[1]);
    close(to_parent[0]);
    int status = 0;
    waitpid(pid, &status, 0);

    print_message("target: %s; WRITE past A's export: state %d, %s (%s)\n", ready ? "forged" : line, state_seen,
                  ferry_err_name(err), msg);
    assert_true(ready);
    assert_int_equal(state_seen, FERRY_FAILED);
    assert_int_equal(err, FERRY_ERANGE); /* refused before any copy, not a device fault */
    assert_non_null(strstr(msg, name));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(registry_length_past_the_export_refused),
    };
    return cmocka_run_group_tests_name("shm: a registry length past the exported allocation", tests, NULL, NULL);
}

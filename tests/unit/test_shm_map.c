/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_shm_map.c — the shm transport's IPC openings of a peer's device
 * buffer (shm_map.c), driven directly on a peer made by hand with one
 * device buffer and a counting fake device (its ipc_open/ipc_close): an
 * opening is shared by the frames and the group that use it, retired when
 * the registration goes, closed by its last user, never handed out for a
 * registration it was not opened for; the error paths (revoked since the
 * frame's check, the previous allocation still in use, the peer's process
 * gone).  Single-threaded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "err.h"
#include "transport/shm/shm.h"

#define ADDR 0x100000ull
#define LEN 65536u

static unsigned opens, closes;
static char room[2][LEN];

static int fake_open(int dev, const void *handle, size_t len, void **ptr, size_t *out_room)
{
    (void)dev, (void)handle, (void)len;
    *ptr = room[opens % 2];
    *out_room = LEN;
    opens++;
    return 0;
}

static void fake_close(int dev, void *ptr)
{
    (void)dev, (void)ptr;
    closes++;
}

static const struct ferry_device_ops fake = {.kind = "fake", .ipc_open = fake_open, .ipc_close = fake_close};

struct world {
    struct shm_slot slot;
    struct shm_peer p;
    struct shm_rbuf b;
    uint8_t handle[8];
    struct shm_group g[2];
    struct frame_run fr[2];
};

static struct world *world_new(void)
{
    struct world *w = calloc(1, sizeof *w);
    assert_non_null(w);
    opens = closes = 0;
    atomic_store(&w->slot.seq, 1);
    w->p.slots = &w->slot;
    w->p.pidfd = -1;
    w->p.nbufs = 1;
    w->p.bufs = &w->b;
    snprintf(w->p.name, sizeof w->p.name, "peer");
    pthread_mutex_init(&w->p.lock, NULL);
    w->b = (struct shm_rbuf){.addr = ADDR, .len = LEN, .slot = 0, .device = true, .ops = &fake, .dev = 0,
                             .handle_len = sizeof w->handle, .handle = w->handle};
    atomic_store(&w->b.seq, 1);
    for (int i = 0; i < 2; i++) {
        w->g[i].p = &w->p;
        w->fr[i] = (struct frame_run){.g = &w->g[i], .p = &w->p};
    }
    return w;
}

static void world_free(struct world *w)
{
    shm_peer_unmap(&w->p);
    pthread_mutex_destroy(&w->p.lock);
    free(w);
}

/* Frame i's device address for remote ADDR + off, or the error. */
static int map(struct world *w, int i, uint64_t off, char **out)
{
    return shm_remote_device_ptr(&w->fr[i], &w->b, 0, ADDR + off, out);
}

/* Frame i's copies ended; then its group's. */
static void end(struct world *w, int i)
{
    shm_frame_unmap(&w->fr[i]);
    shm_group_unmap(&w->g[i]);
}

/* One opening for the frames and groups that use it; retired by a sweep
 * once the registration is revoked, closed by its last user only. */
static void shared_then_closed_by_last_user(void **state)
{
    (void)state;
    struct world *w = world_new();
    char *a, *b2, *c;
    assert_int_equal(map(w, 0, 0, &a), 0);
    assert_int_equal(map(w, 0, 4096, &b2), 0); /* the group's cache */
    assert_int_equal(map(w, 1, 8, &c), 0);     /* another group: the listed opening */
    assert_ptr_equal(b2, a + 4096);
    assert_ptr_equal(c, a + 8);
    assert_int_equal(opens, 1);
    assert_int_equal(w->fr[0].nmaps, 1);
    assert_int_equal(atomic_load(&w->p.mapped), 1); /* the timer asks whether its process exited */
    shm_peer_sweep(&w->p, false);                   /* still registered: kept */
    assert_non_null(w->b.maps);

    atomic_fetch_add(&w->slot.seq, 1); /* revoked */
    shm_peer_sweep(&w->p, false);
    assert_null(w->b.maps);
    assert_int_equal(atomic_load(&w->p.mapped), 0);
    assert_int_equal(atomic_load(&w->b.retired), 1);
    end(w, 0);
    assert_int_equal(closes, 0); /* frame 1 and its group still copy through it */
    end(w, 1);
    assert_int_equal(closes, 1);
    assert_int_equal(atomic_load(&w->b.retired), 0);
    world_free(w);
}

/* Revoked after the frame's check: no opening is made for it. */
static void revoked_since_check_is_estale(void **state)
{
    (void)state;
    struct world *w = world_new();
    char *a;
    atomic_fetch_add(&w->slot.seq, 1);
    assert_int_equal(map(w, 0, 0, &a), FERRY_ESTALE);
    assert_non_null(strstr(w->fr[0].msg, "unregistered 0x100000+65536"));
    assert_int_equal(opens, 0);
    assert_null(w->b.maps);
    world_free(w);
}

/* Registered again (a new handle at the same address) while a copy through
 * the old opening still runs: no opening of the new handle until it ends
 * (a driver that shares openings of one handle could hand the old one
 * out); then a new one, and the old closed. */
static void registered_again_waits_for_old_opening(void **state)
{
    (void)state;
    struct world *w = world_new();
    char *a, *b2;
    assert_int_equal(map(w, 0, 0, &a), 0);
    atomic_fetch_add(&w->slot.seq, 1); /* revoked */
    w->handle[0] = 1;                 /* a new allocation's handle */
    atomic_fetch_add(&w->slot.seq, 1); /* live again */
    shm_peer_sweep(&w->p, false);
    atomic_store(&w->b.seq, 3);        /* as shm_rbuf_follow_device does */
    assert_int_equal(map(w, 1, 0, &b2), FERRY_EBUSY);
    assert_non_null(strstr(w->fr[1].msg, "registered again while a copy into its previous allocation"));
    /* group 0's cached opening is of the old registration: not taken */
    assert_int_equal(map(w, 0, 0, &b2), FERRY_EBUSY);
    assert_int_equal(opens, 1);
    end(w, 0);
    assert_int_equal(closes, 1);
    assert_int_equal(map(w, 1, 0, &b2), 0);
    assert_int_equal(opens, 2);
    assert_ptr_not_equal(b2, a);
    end(w, 1);
    assert_int_equal(closes, 1); /* the listed one stays for the next frames */
    world_free(w);
    assert_int_equal(closes, 2);
}

/* The peer's process has exited: no new opening (the timer closes the
 * others). */
static void gone_peer_opens_nothing(void **state)
{
    (void)state;
    struct world *w = world_new();
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(0);
    w->p.pid = child;
    w->p.pidfd = (int)syscall(SYS_pidfd_open, child, 0);
    if (w->p.pidfd < 0) {
        waitpid(child, NULL, 0);
        world_free(w);
        skip(); /* no pidfd_open: shm_peer_gone cannot tell */
    }
    waitpid(child, NULL, 0);
    char *a;
    assert_int_equal(map(w, 0, 0, &a), FERRY_ECONN);
    assert_non_null(strstr(w->fr[0].msg, "is gone"));
    assert_int_equal(opens, 0);
    close(w->p.pidfd);
    world_free(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(shared_then_closed_by_last_user),
        cmocka_unit_test(revoked_since_check_is_estale),
        cmocka_unit_test(registered_again_waits_for_old_opening),
        cmocka_unit_test(gone_peer_opens_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_shm_expiry.c — the shm transport issues no device copy of a frame
 * whose access announcement has expired: the target's unregister stops
 * waiting for an announcement a grace period after its expiry, so a copy
 * started later could touch memory the target has freed.  Drives a group's
 * copy batch directly on the strict sim device (single-threaded).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "device/device.h"
#include "err.h"
#include "net.h"
#include "transport/shm/shm.h"

enum { LEN = 65536 };

/* Two frames of one group, each with one H2D copy into its own sim buffer;
 * frame 1's announcement expired before the batch is issued. */
static void test_expired_frame_copies_nothing(void **state)
{
    (void)state;
    const struct ferry_device_ops *sim = ferry_device_find("sim");
    assert_non_null(sim);
    assert_int_equal(sim->init(), 0);
    char *host = malloc(LEN), *back = malloc(LEN);
    void *dst[2];
    assert_non_null(host);
    assert_non_null(back);
    memset(host, 0x5a, LEN);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(sim->mem_alloc(0, LEN, &dst[i]), 0);
        memset(back, 0, LEN); /* both start zeroed */
        struct ferry_copy z = {dst[i], back, LEN};
        assert_int_equal(ferry_device_copy_sync(sim, 0, FERRY_COPY_H2D, &z, 1), 0);
    }

    struct shm_peer peer;
    memset(&peer, 0, sizeof peer);
    strcpy(peer.name, "expiry-peer");
    struct frame_run *runs = calloc(SHM_GROUP_MAX, sizeof *runs);
    struct shm_group *g = calloc(1, sizeof *g);
    assert_non_null(runs);
    assert_non_null(g);
    g->runs = runs;
    g->n = 2;
    uint64_t now = now_ns();
    for (int i = 0; i < 2; i++) {
        runs[i].g = g;
        runs[i].p = &peer;
        runs[i].write = true;
    }
    runs[0].expiry = now + 60ull * 1000000000u; /* a minute left */
    runs[1].expiry = now > 1 ? now - 1 : 0;     /* expired */
    g->cb.ops = sim;
    g->cb.dev = 0;
    g->cb.dir = FERRY_COPY_H2D;
    for (int i = 0; i < 2; i++) {
        g->cb.owner[i] = (uint8_t)i;
        g->cb.copies[i] = (struct ferry_copy){dst[i], host, LEN};
    }
    g->cb.n = 2;

    shm_copies_wait(g);

    assert_int_equal(g->cb.n, 0);
    assert_int_equal(runs[0].copy_err, 0);
    assert_int_equal(runs[1].copy_err, FERRY_ETIMEDOUT);
    assert_non_null(strstr(runs[1].copy_msg, "expiry-peer"));
    for (int i = 0; i < 2; i++) {
        struct ferry_copy c = {back, dst[i], LEN};
        assert_int_equal(ferry_device_copy_sync(sim, 0, FERRY_COPY_D2H, &c, 1), 0);
        /* frame 0's copy ran; frame 1's buffer was not written */
        assert_int_equal((unsigned char)back[0], i == 0 ? 0x5a : 0);
        assert_int_equal((unsigned char)back[LEN - 1], i == 0 ? 0x5a : 0);
    }
    for (int i = 0; i < 2; i++)
        sim->mem_free(0, dst[i]);
    free(g);
    free(runs);
    free(host);
    free(back);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expired_frame_copies_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

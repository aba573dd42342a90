/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_notify_origin.c — the notification queue (src/engine/notify.c) tells
 * origins apart as the acceptor tells peers apart: an IPv4 address, or an
 * IPv6 address's /64.  A flooder that sends each notification from a new
 * address of its /64 (IPv6 hands a host 2^64 of them) evicts its own notes
 * when the queue is full, not another peer's.  Drives the queue directly,
 * with the "[v6]:port" origins the transports pass.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "engine/engine.h"

/* How many of the queued notifications came from `from`. */
static size_t held_from(struct notify_queue *q, const char *from, size_t *total)
{
    struct ferry_notification out[64];
    size_t n = 0, mine = 0;
    assert_int_equal(notify_take(q, out, 64, &n), 0);
    for (size_t i = 0; i < n; i++)
        mine += strcmp(out[i].from, from) == 0;
    *total = n;
    return mine;
}

static void flood(const char *victim_origin, const char *flood_fmt, size_t *kept, size_t *total)
{
    struct notify_queue q;
    notify_queue_init(&q, 16);
    for (int i = 0; i < 3; i++)
        notify_deliver(&q, "victim", victim_origin, "v", 1);
    for (int i = 0; i < 1000; i++) {
        char origin[80];
        snprintf(origin, sizeof origin, flood_fmt, i + 1);
        notify_deliver(&q, "flooder", origin, "f", 1);
    }
    *kept = held_from(&q, "victim", total);
    notify_queue_destroy(&q);
}

/* 1,000 notifications, each from another address of one /64: the victim's
 * three (from another /64) stay. */
static void test_flood_from_one_64(void **state)
{
    (void)state;
    size_t kept, total;
    flood("[2001:db8:0:1::7]:4000", "[2001:db8:0:2::%x]:5000", &kept, &total);
    assert_int_equal(total, 16);
    assert_int_equal(kept, 3);
}

/* The same from IPv4 addresses is a flood from many peers: the queue shares
 * out among them, and the victim, holding the most, loses notes (what the
 * per-peer caps and authentication bound, not this queue).  Pins that IPv4
 * addresses stay one origin each. */
static void test_ipv4_addresses_stay_apart(void **state)
{
    (void)state;
    size_t kept, total;
    flood("10.0.0.1:4000", "10.1.%d.1:5000", &kept, &total);
    assert_int_equal(total, 16);
    assert_true(kept < 3);
}

/* Two addresses of one /64 are one origin; link-local addresses are not
 * grouped (their /64 is every host on the link). */
static void test_link_local_not_grouped(void **state)
{
    (void)state;
    size_t kept, total;
    flood("[fe80::1]:4000", "[fe80::%x]:5000", &kept, &total);
    assert_int_equal(total, 16);
    assert_true(kept < 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flood_from_one_64),
        cmocka_unit_test(test_ipv4_addresses_stay_apart),
        cmocka_unit_test(test_link_local_not_grouped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

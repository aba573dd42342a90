/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_shm_notify_input.c — what the shm notification service
 * (src/transport/shm/shm_notify.c, serve_one) takes from another local
 * process: the sender's name reaches the engine escaped, as tcp's and
 * rdma's do, and a payload over SHM_NOTIFY_MAX (what the sending side never
 * writes) drops the sender instead of being cut silently (rev6's findings
 * 1 and 2).  The service's functions are static, so the file is compiled
 * in; serve_one is fed over a SOCK_SEQPACKET socketpair.  One thread.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../src/transport/shm/shm_notify.c"

static char got_from[256];
static size_t got_len;
static int delivered;

static void deliver(void *engine, const char *from, const char *origin, const void *msg, size_t len)
{
    (void)engine;
    (void)origin;
    (void)msg;
    snprintf(got_from, sizeof got_from, "%s", from);
    got_len = len;
    delivered++;
}

/* One message {u16 name length, name, plen payload bytes}; serve_one's
 * verdict (0: the sender is kept). */
static int serve(const char *name, size_t plen)
{
    static struct shm_transport t;
    static uint8_t msg[MSG_MAX + 64], buf[MSG_MAX];
    t.host.deliver_notify = deliver;
    size_t nl = strlen(name);
    put_le16(msg, (uint16_t)nl);
    memcpy(msg + 2, name, nl);
    memset(msg + 2 + nl, 'x', plen);
    int fds[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0);
    struct sender s = {.fd = fds[0], .pid = 1, .stage = PEER_NEW};
    assert_int_equal(send(fds[1], msg, 2 + nl + plen, 0), (ssize_t)(2 + nl + plen));
    delivered = 0;
    got_len = 0;
    int rc = serve_one(&t, &s, buf);
    close(fds[0]);
    close(fds[1]);
    return rc;
}

static void name_is_escaped(void **state)
{
    (void)state;
    assert_int_equal(serve("evil\x1b[2J\nline", 4), 0);
    assert_int_equal(delivered, 1);
    assert_int_equal(got_len, 4);
    for (const char *c = got_from; *c; c++)
        assert_true((unsigned char)*c >= 0x20 && (unsigned char)*c < 0x7f);
    assert_string_equal(got_from, "evil\\x1b[2J\\x0aline");
}

static void plain_name_unchanged(void **state)
{
    (void)state;
    assert_int_equal(serve("127.0.0.1:15000", SHM_NOTIFY_MAX), 0);
    assert_int_equal(delivered, 1);
    assert_string_equal(got_from, "127.0.0.1:15000");
    assert_int_equal(got_len, SHM_NOTIFY_MAX);
}

static void payload_over_the_cap_drops_the_sender(void **state)
{
    (void)state;
    assert_int_equal(serve("", SHM_NOTIFY_MAX + 1), -1);
    assert_int_equal(delivered, 0);
    assert_int_equal(serve("a", SHM_NOTIFY_MAX + 100), -1);
    assert_int_equal(delivered, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(name_is_escaped),
        cmocka_unit_test(plain_name_unchanged),
        cmocka_unit_test(payload_over_the_cap_drops_the_sender),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_shm_notify.c — libFuzzer target for the shm notification service's
 * reading of what a sender process writes to its socket
 * (src/transport/shm/shm_notify.c, serve_one: authentication messages, then
 * {u16 name length, name, payload}).  The service's file is compiled into
 * this program (its functions are static; the library's copy is not linked
 * in), around a transport that has only what serve_one touches.  The first
 * byte says whether the engine has a key; then up to 8 messages, each a u16
 * length and its bytes, go one by one through a SOCK_SEQPACKET socketpair
 * to serve_one, until it drops the sender.  Promises: a delivered
 * notification's name fits and is NUL-terminated, its payload lies inside
 * the message, a sender that did not authenticate delivers nothing when a
 * key is set.  It also holds the service to what the tcp and rdma
 * listeners promise (the sender's name sanitized, the payload at most
 * SHM_NOTIFY_MAX; rev6's findings, fixed; tests/unit/test_shm_notify_input.c).
 * One thread.
 */
#include "../../src/transport/shm/shm_notify.c"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

static size_t delivered_max;
static bool may_deliver;

static void deliver(void *engine, const char *from, const char *origin, const void *msg, size_t len)
{
    (void)engine;
    (void)origin;
    size_t n = strnlen(from, SHM_NOTIFY_MAX_NAME + 1);
    if (n > SHM_NOTIFY_MAX_NAME || len > delivered_max || !may_deliver)
        abort();
    volatile uint8_t sum = 0; /* every payload byte must be readable */
    for (size_t i = 0; i < len; i++)
        sum += ((const uint8_t *)msg)[i];
    (void)sum;
    for (const char *c = from; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f)
            abort(); /* tcp and rdma hand the engine a sanitized name */
    if (len > SHM_NOTIFY_MAX)
        abort(); /* what ferry_batch_set_notify allows */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct shm_transport t;
    static struct auth_key key;
    static uint8_t *buf;
    if (!buf) {
        buf = malloc(MSG_MAX);
        auth_key_load(&key, "fuzzing-key-0123456789", NULL, 7);
        t.host.deliver_notify = deliver;
        atomic_store(&ferry_log_level, -1); /* silence warnings about dropped senders */
    }
    if (size < 1 || !buf)
        return 0;
    t.host.auth = data[0] & 1 ? &key : NULL;
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) != 0)
        return 0;
    struct sender s = {.fd = fds[0], .pid = 1, .stage = PEER_NEW};
    may_deliver = !auth_enabled(t.host.auth); /* no fuzzer forges a MAC */
    delivered_max = MSG_MAX - 2;
    size_t at = 1;
    for (int k = 0; k < 8 && at + 2 <= size; k++) {
        size_t n = (size_t)data[at] | (size_t)data[at + 1] << 8;
        at += 2;
        if (n > size - at)
            n = size - at;
        if (n == 0 || send(fds[1], data + at, n, MSG_NOSIGNAL) != (ssize_t)n)
            break;
        at += n;
        int rc = serve_one(&t, &s, buf);
        char sink[64];
        while (recv(fds[1], sink, sizeof sink, MSG_DONTWAIT) > 0)
            ;
        if (rc)
            break;
    }
    close(fds[0]);
    close(fds[1]);
    return 0;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_shm_notify_input.c — two findings of rev6 in the shm notification
 * service (src/transport/shm/shm_notify.c, serve_one), as a test kept out of
 * ctest until the shm room fixes them (see /work/wt/_exchange/review6.md):
 *   1. the sender's name is handed to the engine raw (control characters,
 *      escape sequences), where tcp and rdma hand it sanitized;
 *   2. a payload longer than SHM_NOTIFY_MAX (4096, what
 *      ferry_batch_set_notify allows and the sender side caps at) is
 *      accepted, up to 4223 bytes, and cut silently by the engine's queue.
 * Like fuzz_shm_notify.c it compiles the service's file in (its functions
 * are static) and feeds serve_one over a SOCK_SEQPACKET socketpair.  One
 * thread.  Exits 0 when both hold, 1 otherwise.  Build and run from the
 * repository root (a normal build in build/):
 *   cc -std=gnu11 -D_GNU_SOURCE -DFERRY_HAVE_ETCD -DFERRY_HAVE_REDIS -DFERRY_HAVE_RDMA -Isrc -Isrc/common \
 *      -Iinclude tests/review/test_shm_notify_input.c build/libferry.a -lcjson -lcrypto -lcurl -lhiredis \
 *      -libverbs -lpthread -ldl -o build/test_shm_notify_input && build/test_shm_notify_input
 */
#include "../../src/transport/shm/shm_notify.c"

#include <stdio.h>

static char got_from[256];
static size_t got_len;
static int delivered;

static void deliver(void *engine, const char *from, const void *msg, size_t len)
{
    (void)engine;
    (void)msg;
    snprintf(got_from, sizeof got_from, "%s", from);
    got_len = len;
    delivered++;
}

/* Sends one message {u16 name length, name, payload of plen bytes}; returns
 * serve_one's verdict (0: kept the sender). */
static int serve(struct shm_transport *t, const char *name, size_t plen)
{
    static uint8_t msg[MSG_MAX], buf[MSG_MAX];
    size_t nl = strlen(name);
    put_le16(msg, (uint16_t)nl);
    memcpy(msg + 2, name, nl);
    memset(msg + 2 + nl, 'x', plen);
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0, fds) != 0)
        return -2;
    struct sender s = {.fd = fds[0], .pid = 1, .stage = PEER_NEW};
    int rc = send(fds[1], msg, 2 + nl + plen, 0) == (ssize_t)(2 + nl + plen) ? serve_one(t, &s, buf) : -2;
    close(fds[0]);
    close(fds[1]);
    return rc;
}

int main(void)
{
    static struct shm_transport t;
    t.host.deliver_notify = deliver;
    int failed = 0;

    delivered = 0;
    serve(&t, "evil\x1b[2J\nline", 4);
    for (const char *c = got_from; delivered && *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) {
            printf("FAIL 1: the sender's name reached the engine raw (control character 0x%02x)\n",
                   (unsigned char)*c);
            failed = 1;
            break;
        }

    delivered = 0;
    int rc = serve(&t, "", SHM_NOTIFY_MAX + 100);
    if (rc == 0 || delivered) {
        printf("FAIL 2: a payload of %u bytes (over SHM_NOTIFY_MAX %u) was accepted (%zu bytes delivered)\n",
               SHM_NOTIFY_MAX + 100, SHM_NOTIFY_MAX, got_len);
        failed = 1;
    }
    printf("%s\n", failed ? "shm notification input: FAILED" : "shm notification input: ok");
    return failed;
}

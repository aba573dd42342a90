/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fake_target.c — the handshake side and the accept loop of a tcp target
 * played by hand (fake_target.h); what each data connection is told is the
 * test's serve callback.  Threads and ownership: see fake_target.h.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fake_target.h"
#include "meta/descriptor.h"
#include "net.h"

static int describe(void *ctx, char **json)
{
    struct fake_target *k = ctx;
    struct desc_buffer buf = {(uint64_t)(uintptr_t)k->mem, k->len, "cpu"};
    char ep[96];
    snprintf(ep, sizeof ep, "{\"host\":\"%s\",\"port\":%d}", k->host, k->data_port);
    struct ferry_descriptor d = {.format = DESC_FORMAT, .engine_id = k->engine_id, .ntransports = 1,
                                 .nbuffers = 1, .buffers = &buf};
    snprintf(d.fingerprint, sizeof d.fingerprint, "%s", DESC_FINGERPRINT);
    snprintf(d.name, sizeof d.name, "%s", k->name);
    snprintf(d.transports[0].name, sizeof d.transports[0].name, "tcp");
    d.transports[0].json = ep;
    return descriptor_encode(&d, json);
}

static void *accept_main(void *arg)
{
    struct fake_target *k = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = k->data_fd, .events = POLLIN}, {.fd = k->stop_pipe[0], .events = POLLIN}};
        if (poll(p, 2, -1) <= 0 || p[1].revents)
            return NULL;
        int fd = accept4(k->data_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        k->serve(k->ctx, fd);
        close(fd);
    }
}

int fake_target_start(struct fake_target *k, const char *host, uint64_t engine_id, char *mem, size_t len,
                      const struct auth_key *auth, void (*serve)(void *ctx, int fd), void *ctx)
{
    memset(k, 0, sizeof *k);
    snprintf(k->host, sizeof k->host, "%s", host ? host : "127.0.0.1");
    k->engine_id = engine_id;
    k->mem = mem;
    k->len = len;
    k->serve = serve;
    k->ctx = ctx;
    k->data_fd = k->stop_pipe[0] = k->stop_pipe[1] = -1;
    if (pipe2(k->stop_pipe, O_CLOEXEC) != 0)
        goto fail;
    k->data_fd = net_listen(k->host, 0, 10000, &k->data_port);
    if (k->data_fd < 0)
        goto fail;
    struct p2p_server_opts hs = {.io_timeout_ms = 2000, .auth = auth};
    if (p2p_server_start(k->host, 0, &hs, describe, k, &k->hs, &k->hs_port) != 0)
        goto fail;
    /* the name before the first request: describe reads it */
    if (net_format_hostport(k->name, sizeof k->name, k->host, k->hs_port) != 0 ||
        pthread_create(&k->thread, NULL, accept_main, k) != 0) {
        p2p_server_stop(k->hs);
        goto fail;
    }
    return 0;
fail:
    if (k->data_fd >= 0)
        close(k->data_fd);
    for (int i = 0; i < 2; i++)
        if (k->stop_pipe[i] >= 0)
            close(k->stop_pipe[i]);
    return -1;
}

void fake_target_stop(struct fake_target *k)
{
    if (write(k->stop_pipe[1], "x", 1) != 1)
        perror("fake_target_stop: write");
    pthread_join(k->thread, NULL);
    p2p_server_stop(k->hs);
    close(k->data_fd);
    close(k->stop_pipe[0]);
    close(k->stop_pipe[1]);
}

bool fake_target_stopped_within(struct fake_target *k, int ms)
{
    struct pollfd p = {.fd = k->stop_pipe[0], .events = POLLIN};
    return poll(&p, 1, ms) > 0;
}

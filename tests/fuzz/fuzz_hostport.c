/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_hostport.c — libFuzzer target for segment and endpoint names
 * (src/common/net.c): net_split_hostport on the input as text, and
 * net_host_text_ok, the check every transport's endpoint decoder runs on a
 * peer's host.  A name that splits gives a non-empty host that fits and a
 * port in range, and with a port it survives net_format_hostport -> split;
 * a host the check accepts holds no byte a log line or a resolver should
 * not see.  One thread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "net.h"

static void split(const char *name)
{
    char host[128], again[160], host2[128];
    int port = -1, port2 = -1;
    int rc = net_split_hostport(name, host, sizeof host, &port);
    fuzz_rc_in(rc, 1, FERRY_EINVAL);
    if (rc)
        return;
    if (!host[0] || strlen(host) >= sizeof host || port < 0 || port > 65535)
        abort();
    if (port == 0)
        return;
    if (net_format_hostport(again, sizeof again, host, port) != 0)
        abort();
    if (net_split_hostport(again, host2, sizeof host2, &port2) != 0 || strcmp(host, host2) != 0 || port != port2)
        abort();
}

static void host_text(const char *h)
{
    if (!net_host_text_ok(h, 128))
        return;
    size_t n = strlen(h);
    if (n == 0 || n >= 128)
        abort();
    for (const char *c = h; *c; c++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:%", *c))
            abort();
    /* as a peer's endpoint: written host:port and read back, the same host */
    char name[160], back[128];
    int port = 0;
    if (net_format_hostport(name, sizeof name, h, 7) != 0 || net_split_hostport(name, back, sizeof back, &port) != 0 ||
        strcmp(back, h) != 0 || port != 7)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    split(text);
    host_text(text);
    free(text);
    return 0;
}

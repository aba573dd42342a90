/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_descriptor.c — libFuzzer target for the descriptor decoder.  The input
 * is the JSON text (not NUL-terminated).  A descriptor that decodes must keep
 * the decoder's promises (buffers sorted, non-empty, non-overlapping, each
 * found by descriptor_find_buffer) and survive encode -> decode unchanged;
 * a second encode must give the same text.  A tcp endpoint in it goes through
 * the endpoint decoder, whose result must be a clean host and a port in
 * range.  Any broken promise aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "meta/descriptor.h"
#include "transport/tcp/tcp_wire.h"

static void check_valid(const struct ferry_descriptor *d)
{
    if (d->format != DESC_FORMAT || strcmp(d->fingerprint, DESC_FINGERPRINT) != 0 || !d->name[0] ||
        d->ntransports > DESC_MAX_TRANSPORTS || d->nbuffers > DESC_MAX_BUFFERS)
        abort();
    for (size_t i = 0; i < d->ntransports; i++)
        if (!d->transports[i].json || descriptor_transport(d, d->transports[i].name) == NULL)
            abort();
    for (size_t i = 0; i < d->nbuffers; i++) {
        const struct desc_buffer *b = &d->buffers[i];
        if (b->len == 0 || b->addr + b->len < b->addr || !b->location[0])
            abort();
        if (i > 0 && d->buffers[i - 1].addr + d->buffers[i - 1].len > b->addr)
            abort();
        if (descriptor_find_buffer(d, b->addr, b->len) != (long)i ||
            descriptor_find_buffer(d, b->addr + b->len - 1, 1) != (long)i)
            abort();
        if (b->len < UINT64_MAX && descriptor_find_buffer(d, b->addr, b->len + 1) != -1)
            abort();
    }
}

/* The tcp endpoint, as tcp_peer_open reads it. */
static void check_tcp_endpoint(const struct ferry_descriptor *d)
{
    const char *ep = descriptor_transport(d, "tcp");
    char host[WIRE_HOST_MAX];
    int port = 0;
    if (!ep || wire_decode_endpoint(ep, host, &port) != 0)
        return;
    if (port < 1 || port > 65535 || !host[0] || strlen(host) >= WIRE_HOST_MAX)
        abort();
    for (const char *c = host; *c; c++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_", *c))
            abort();
}

static void check_equal(const struct ferry_descriptor *a, const struct ferry_descriptor *b)
{
    if (strcmp(a->name, b->name) != 0 || a->engine_id != b->engine_id || a->nbuffers != b->nbuffers ||
        a->ntransports != b->ntransports)
        abort();
    for (size_t i = 0; i < a->nbuffers; i++)
        if (a->buffers[i].addr != b->buffers[i].addr || a->buffers[i].len != b->buffers[i].len ||
            strcmp(a->buffers[i].location, b->buffers[i].location) != 0)
            abort();
    for (size_t i = 0; i < a->ntransports; i++)
        if (strcmp(a->transports[i].name, b->transports[i].name) != 0 ||
            strcmp(a->transports[i].json, b->transports[i].json) != 0)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size copy without a NUL: the decoder must stay inside size bytes */
    char *json = malloc(size ? size : 1);
    if (!json)
        return 0;
    memcpy(json, data, size);
    struct ferry_descriptor d, d2;
    int rc = descriptor_decode(json, size, &d);
    free(json);
    if (rc != 0) {
        descriptor_free(&d);
        return 0;
    }
    check_valid(&d);
    check_tcp_endpoint(&d);
    char *text = NULL, *text2 = NULL;
    if (descriptor_encode(&d, &text) != 0)
        abort(); /* what was decoded must encode */
    if (descriptor_decode(text, strlen(text), &d2) != 0)
        abort(); /* and decode again */
    check_valid(&d2);
    check_equal(&d, &d2);
    if (descriptor_encode(&d2, &text2) != 0 || strcmp(text, text2) != 0)
        abort();
    free(text);
    free(text2);
    descriptor_free(&d);
    descriptor_free(&d2);
    return 0;
}

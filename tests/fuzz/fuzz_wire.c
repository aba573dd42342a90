/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_wire.c — libFuzzer target for the tcp frame decoder.  The first 48
 * bytes are a header; if it decodes and carries entries, the entries are
 * decoded from the bytes that follow (only as many as the input holds).
 * Whatever decodes must satisfy the decoder's promises and re-encode to the
 * very same bytes; a broken promise aborts.  The last 16 bytes are also
 * decoded as a READ trailer (entry count and refused bitmap taken from the
 * first bytes): a trailer that decodes revokes only entries that were sent.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "transport/tcp/tcp_wire.h"

static uint64_t max_payload(uint8_t type)
{
    switch (type) {
    case WIRE_HELLO: return WIRE_MAX_NAME;
    case WIRE_WRITE:
    case WIRE_READ_RESP: return WIRE_MAX_PAYLOAD;
    case WIRE_NOTIFY: return WIRE_MAX_NOTIFY;
    default: return 0;
    }
}

static void check_header(const uint8_t *in, const struct wire_header *h)
{
    if (h->magic != WIRE_MAGIC || h->version != WIRE_VERSION || h->type < WIRE_HELLO ||
        h->type > WIRE_NOTIFY_ACK || h->payload_len > max_payload(h->type))
        abort();
    int with_entries = h->type == WIRE_WRITE || h->type == WIRE_READ;
    if (with_entries ? (h->nentries == 0 || h->nentries > WIRE_MAX_ENTRIES) : h->nentries != 0)
        abort();
    uint8_t again[WIRE_HEADER_SIZE];
    wire_encode_header(h, again);
    if (memcmp(again, in, WIRE_HEADER_SIZE) != 0)
        abort();
}

static void check_entries(const uint8_t *in, const struct wire_header *h, const struct wire_entry *e)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < h->nentries; i++) {
        if (e[i].len == 0 || e[i].len > WIRE_MAX_PAYLOAD || e[i].addr + e[i].len < e[i].addr)
            abort();
        total += e[i].len;
    }
    if (total > WIRE_MAX_PAYLOAD || (h->type == WIRE_WRITE && total != h->payload_len))
        abort();
    uint8_t again[WIRE_MAX_ENTRIES * WIRE_ENTRY_SIZE];
    wire_encode_entries(e, h->nentries, again);
    if (memcmp(again, in, (size_t)h->nentries * WIRE_ENTRY_SIZE) != 0)
        abort();
}

static void check_trailer(const uint8_t *data, size_t size)
{
    if (size < WIRE_TRAILER_SIZE + 9)
        return;
    unsigned nentries = data[0] % (WIRE_MAX_ENTRIES + 1);
    uint64_t refused = 0;
    for (int i = 0; i < 8; i++)
        refused |= (uint64_t)data[1 + i] << (8 * i);
    const uint8_t *in = data + size - WIRE_TRAILER_SIZE;
    struct wire_trailer t;
    if (wire_decode_trailer(in, nentries, refused, &t) != 0)
        return;
    uint64_t all = nentries >= 64 ? ~0ull : (1ull << nentries) - 1;
    if ((t.revoked & ~all) || (t.revoked & refused))
        abort();
    uint8_t again[WIRE_TRAILER_SIZE];
    wire_encode_trailer(&t, again);
    if (memcmp(again, in, 4) != 0 || memcmp(again + 8, in + 8, 8) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_trailer(data, size);
    if (size < WIRE_HEADER_SIZE)
        return 0;
    struct wire_header h;
    if (wire_decode_header(data, &h) != 0)
        return 0;
    check_header(data, &h);
    if (h.nentries == 0 || size - WIRE_HEADER_SIZE < (size_t)h.nentries * WIRE_ENTRY_SIZE)
        return 0;
    /* an exact-size copy, so a read past the last entry is caught */
    size_t n = (size_t)h.nentries * WIRE_ENTRY_SIZE;
    uint8_t *entries = malloc(n);
    if (!entries)
        return 0;
    memcpy(entries, data + WIRE_HEADER_SIZE, n);
    struct wire_entry e[WIRE_MAX_ENTRIES];
    if (wire_decode_entries(entries, &h, e) == 0)
        check_entries(entries, &h, e);
    free(entries);
    return 0;
}

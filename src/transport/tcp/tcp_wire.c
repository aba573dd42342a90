/* SPDX-License-Identifier: Apache-2.0 */
/*
 * wire.c — encode/decode of tcp frames (see wire.h).  Pure functions, no
 * state; the validation here is what makes a garbage byte stream harmless.
 */
#include "transport/tcp/tcp_wire.h"

#include <cjson/cJSON.h>
#include <string.h>

#include "bytes.h"
#include "err.h"
#include "log.h"
#include "net.h"

void wire_encode_header(const struct wire_header *h, uint8_t out[WIRE_HEADER_SIZE])
{
    put_le32(out + 0, WIRE_MAGIC);
    put_le16(out + 4, WIRE_VERSION);
    out[6] = h->type;
    out[7] = h->nentries;
    put_le32(out + 8, (uint32_t)h->status);
    put_le32(out + 12, h->flags);
    put_le64(out + 16, h->id);
    put_le64(out + 24, h->refused);
    put_le64(out + 32, h->payload_len);
    put_le64(out + 40, h->epoch);
}

/* what each type may carry */
static int check_shape(const struct wire_header *h)
{
    int entries_allowed = 0;
    uint64_t max_payload = 0;
    switch (h->type) {
    case WIRE_HELLO:
        max_payload = WIRE_MAX_NAME;
        break;
    case WIRE_HELLO_ACK:
    case WIRE_WRITE_ACK:
    case WIRE_NOTIFY_ACK:
        break;
    case WIRE_WRITE:
        entries_allowed = 1;
        max_payload = WIRE_MAX_PAYLOAD;
        break;
    case WIRE_READ:
        entries_allowed = 1;
        break;
    case WIRE_READ_RESP:
        max_payload = WIRE_MAX_PAYLOAD;
        break;
    case WIRE_NOTIFY:
        max_payload = WIRE_MAX_NOTIFY;
        break;
    default:
        return ferry_fail(FERRY_EPROTO, "unknown frame type %u", h->type);
    }
    if (!entries_allowed && h->nentries)
        return ferry_fail(FERRY_EPROTO, "frame type %u carries %u entries", h->type, h->nentries);
    if (entries_allowed && (h->nentries == 0 || h->nentries > WIRE_MAX_ENTRIES))
        return ferry_fail(FERRY_EPROTO, "frame has %u entries (1-%d allowed)", h->nentries,
                          WIRE_MAX_ENTRIES);
    if (h->payload_len > max_payload)
        return ferry_fail(FERRY_EPROTO, "frame type %u payload %llu bytes exceeds %llu", h->type,
                          (unsigned long long)h->payload_len, (unsigned long long)max_payload);
    return 0;
}

int wire_decode_header(const uint8_t in[WIRE_HEADER_SIZE], struct wire_header *h)
{
    h->magic = get_le32(in);
    h->version = get_le16(in + 4);
    h->type = in[6];
    h->nentries = in[7];
    h->status = (int32_t)get_le32(in + 8);
    h->flags = get_le32(in + 12);
    h->id = get_le64(in + 16);
    h->refused = get_le64(in + 24);
    h->payload_len = get_le64(in + 32);
    h->epoch = get_le64(in + 40);
    if (h->magic != WIRE_MAGIC)
        return ferry_fail(FERRY_EPROTO, "bad frame magic 0x%08x", h->magic);
    if (h->version != WIRE_VERSION)
        return ferry_fail(FERRY_EVERSION, "peer speaks wire version %u, this build speaks %u",
                          h->version, WIRE_VERSION);
    return check_shape(h);
}

void wire_encode_entries(const struct wire_entry *e, unsigned n, uint8_t *out)
{
    for (unsigned i = 0; i < n; i++) {
        put_le64(out + 16 * i, e[i].addr);
        put_le64(out + 16 * i + 8, e[i].len);
    }
}

int wire_decode_entries(const uint8_t *in, const struct wire_header *h, struct wire_entry *e)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < h->nentries; i++) {
        e[i].addr = get_le64(in + 16 * i);
        e[i].len = get_le64(in + 16 * i + 8);
        if (e[i].len == 0 || e[i].addr + e[i].len < e[i].addr)
            return ferry_fail(FERRY_EPROTO, "entry %u (0x%llx+%llu) is empty or wraps", i,
                              (unsigned long long)e[i].addr, (unsigned long long)e[i].len);
        if (e[i].len > WIRE_MAX_PAYLOAD)
            return ferry_fail(FERRY_EPROTO, "entry %u is %llu bytes, over the frame limit", i,
                              (unsigned long long)e[i].len);
        total += e[i].len;
    }
    if (total > WIRE_MAX_PAYLOAD)
        return ferry_fail(FERRY_EPROTO, "entries add up to %llu bytes, over the frame limit",
                          (unsigned long long)total);
    if (h->type == WIRE_WRITE && total != h->payload_len)
        return ferry_fail(FERRY_EPROTO, "entries add up to %llu bytes but payload is %llu",
                          (unsigned long long)total, (unsigned long long)h->payload_len);
    return 0;
}

int wire_status_allowed(uint8_t type, int32_t status)
{
    if (status == 0)
        return 1;
    switch (type) {
    case WIRE_HELLO_ACK:
        return status == FERRY_ESTALE || status == FERRY_EVERSION || status == FERRY_EPERM || status == FERRY_EBUSY;
    case WIRE_WRITE_ACK:
    case WIRE_READ_RESP:
    case WIRE_NOTIFY_ACK:
        return status == FERRY_ERANGE || status == FERRY_EIO || status == FERRY_ENOMEM || status == FERRY_ENODEV ||
               status == FERRY_EBUSY || status == FERRY_ECANCELED || status == FERRY_ETIMEDOUT;
    default:
        return 0;
    }
}

void wire_encode_trailer(const struct wire_trailer *t, uint8_t out[WIRE_TRAILER_SIZE])
{
    put_le32(out, WIRE_TRAILER_MAGIC);
    put_le32(out + 4, (uint32_t)t->status);
    put_le64(out + 8, t->revoked);
}

int wire_decode_trailer(const uint8_t in[WIRE_TRAILER_SIZE], unsigned nentries, uint64_t refused,
                        struct wire_trailer *t)
{
    uint32_t magic = get_le32(in);
    t->status = (int32_t)get_le32(in + 4);
    t->revoked = get_le64(in + 8);
    if (magic != WIRE_TRAILER_MAGIC)
        return ferry_fail(FERRY_EPROTO, "bad READ trailer magic 0x%08x", magic);
    if (!wire_status_allowed(WIRE_READ_RESP, t->status))
        return ferry_fail(FERRY_EPROTO, "READ trailer status %d, which no ferry target sends", t->status);
    uint64_t sent = (nentries >= 64 ? ~0ull : (1ull << nentries) - 1) & ~refused;
    if (t->revoked & ~sent)
        return ferry_fail(FERRY_EPROTO, "READ trailer revokes entries 0x%llx that were not sent (sent 0x%llx)",
                          (unsigned long long)t->revoked, (unsigned long long)sent);
    return 0;
}

int wire_decode_endpoint(const char *json, char host[WIRE_HOST_MAX], int *port)
{
    char shown[100];
    cJSON *j = cJSON_Parse(json);
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(j, "host");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "port");
    int rc = 0;
    if (!cJSON_IsString(h) || !net_host_text_ok(h->valuestring, WIRE_HOST_MAX))
        rc = ferry_fail(FERRY_EPROTO, "tcp endpoint %s: \"host\" is not a host name, IPv4 or IPv6 address",
                        log_sanitize(json, 80, shown, sizeof shown));
    else if (!cJSON_IsNumber(p) || !(p->valuedouble >= 1 && p->valuedouble <= 65535) ||
             p->valuedouble != (double)(int)p->valuedouble)
        rc = ferry_fail(FERRY_EPROTO, "tcp endpoint %s: \"port\" is not an integer in 1-65535",
                        log_sanitize(json, 80, shown, sizeof shown));
    else {
        strcpy(host, h->valuestring);
        *port = (int)p->valuedouble;
    }
    cJSON_Delete(j);
    return rc;
}

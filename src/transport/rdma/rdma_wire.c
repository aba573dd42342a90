/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rdma_wire.c — encode/decode of the rdma transport's endpoint JSON and side
 * channel messages (see rdma_wire.h).  Everything decoded here arrives from
 * a peer, so every field is range-checked before anyone uses it.  Built on
 * every host (no ibverbs needed), so the fuzzers can reach it.
 */
#include "transport/rdma/rdma_wire.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "bytes.h"
#include "err.h"
#include "log.h"
#include "net.h"

/* ------------------------------------------------------------ messages */

int rdma_status_allowed(uint16_t type, int32_t status)
{
    if (status == 0)
        return 1;
    switch (type) {
    case RDMA_MSG_HELLO_ACK:
        return status == FERRY_ESTALE || status == FERRY_EPROTO || status == FERRY_EIO || status == FERRY_EPERM ||
               status == FERRY_ENOMEM;
    case RDMA_MSG_NOTIFY_ACK:
    case RDMA_MSG_STAGE_ACK:
        return status == FERRY_ERANGE || status == FERRY_EIO || status == FERRY_ENOMEM || status == FERRY_ENODEV ||
               status == FERRY_EBUSY;
    default: /* requests carry no status */
        return 0;
    }
}

void rdma_msg_encode_header(const struct rdma_msg_header *h, uint8_t out[RDMA_MSG_HEADER_SIZE])
{
    put_le32(out, RDMA_MSG_MAGIC);
    put_le16(out + 4, RDMA_MSG_VERSION);
    put_le16(out + 6, h->type);
    put_le32(out + 8, (uint32_t)h->status);
    put_le32(out + 12, h->len);
    put_le64(out + 16, h->id);
}

int rdma_msg_decode_header(const uint8_t in[RDMA_MSG_HEADER_SIZE], struct rdma_msg_header *h)
{
    h->magic = get_le32(in);
    h->version = get_le16(in + 4);
    h->type = get_le16(in + 6);
    h->status = (int32_t)get_le32(in + 8);
    h->len = get_le32(in + 12);
    h->id = get_le64(in + 16);
    if (h->magic != RDMA_MSG_MAGIC)
        return ferry_fail(FERRY_EPROTO, "rdma side channel: bad magic 0x%08x", h->magic);
    if (h->version != RDMA_MSG_VERSION)
        return ferry_fail(FERRY_EVERSION, "rdma side channel: version %u, this build speaks %d", h->version,
                          RDMA_MSG_VERSION);
    uint32_t min = 0, max = 0;
    switch (h->type) {
    case RDMA_MSG_HELLO:
        min = RDMA_QP_INFO_SIZE, max = RDMA_QP_INFO_SIZE + RDMA_MAX_NAME;
        break;
    case RDMA_MSG_HELLO_ACK:
        min = h->status ? 0 : RDMA_QP_INFO_SIZE;
        max = h->status ? RDMA_MAX_TEXT : RDMA_QP_INFO_SIZE + RDMA_BOUNCE_INFO_SIZE;
        break;
    case RDMA_MSG_STAGE_WRITE:
    case RDMA_MSG_STAGE_READ:
        min = 8 + RDMA_STAGE_ENTRY_SIZE, max = RDMA_STAGE_MSG_MAX;
        break;
    case RDMA_MSG_STAGE_ACK:
        min = 8, max = 8 + RDMA_MAX_TEXT;
        break;
    case RDMA_MSG_NOTIFY:
        max = RDMA_MAX_NOTIFY;
        break;
    case RDMA_MSG_NOTIFY_ACK:
        break;
    default:
        return ferry_fail(FERRY_EPROTO, "rdma side channel: unknown message type %u", h->type);
    }
    if (h->len < min || h->len > max)
        return ferry_fail(FERRY_EPROTO, "rdma side channel: message type %u carries %u bytes (%u-%u allowed)",
                          h->type, h->len, min, max);
    if (!rdma_status_allowed(h->type, h->status))
        return ferry_fail(FERRY_EPROTO, "rdma side channel: message type %u with status %d, which no ferry peer sends",
                          h->type, h->status);
    return 0;
}

void rdma_qp_info_encode(const struct rdma_qp_info *q, uint8_t out[RDMA_QP_INFO_SIZE])
{
    put_le32(out, q->qpn);
    put_le32(out + 4, q->psn);
    put_le16(out + 8, q->lid);
    out[10] = q->mtu;
    out[11] = q->rd_atomic;
    put_le32(out + 12, q->nic);
    put_le64(out + 16, q->engine_id);
    memcpy(out + 24, q->gid, 16);
}

int rdma_qp_info_decode(const uint8_t in[RDMA_QP_INFO_SIZE], struct rdma_qp_info *q)
{
    q->qpn = get_le32(in);
    q->psn = get_le32(in + 4);
    q->lid = get_le16(in + 8);
    q->mtu = in[10];
    q->rd_atomic = in[11];
    q->nic = get_le32(in + 12);
    q->engine_id = get_le64(in + 16);
    memcpy(q->gid, in + 24, 16);
    if (q->qpn == 0 || q->qpn >= 1u << 24 || q->psn >= 1u << 24)
        return ferry_fail(FERRY_EPROTO, "rdma qp info: qpn %u / psn %u out of range", q->qpn, q->psn);
    if (q->mtu < 1 || q->mtu > 5 || q->rd_atomic == 0)
        return ferry_fail(FERRY_EPROTO, "rdma qp info: mtu %u / rd_atomic %u out of range", q->mtu, q->rd_atomic);
    if (q->nic >= RDMA_MAX_NICS)
        return ferry_fail(FERRY_EPROTO, "rdma qp info: nic index %u out of range", q->nic);
    return 0;
}

void rdma_bounce_info_encode(const struct rdma_bounce_info *b, uint8_t out[RDMA_BOUNCE_INFO_SIZE])
{
    put_le64(out, b->addr);
    put_le32(out + 8, b->rkey);
    put_le32(out + 12, b->slots);
    put_le32(out + 16, b->slot_size);
    put_le32(out + 20, 0);
}

int rdma_bounce_info_decode(const uint8_t in[RDMA_BOUNCE_INFO_SIZE], struct rdma_bounce_info *b)
{
    b->addr = get_le64(in);
    b->rkey = get_le32(in + 8);
    b->slots = get_le32(in + 12);
    b->slot_size = get_le32(in + 16);
    if (b->slots > RDMA_STAGE_MAX_SLOTS || (b->slots && (b->slot_size < 4096 || b->slot_size > (1u << 30))))
        return ferry_fail(FERRY_EPROTO, "rdma bounce: %u slots of %u bytes (at most %d slots of 4 KiB-1 GiB)",
                          b->slots, b->slot_size, RDMA_STAGE_MAX_SLOTS);
    if (b->slots && b->addr + (uint64_t)b->slots * b->slot_size < b->addr)
        return ferry_fail(FERRY_EPROTO, "rdma bounce at 0x%llx wraps", (unsigned long long)b->addr);
    return 0;
}

size_t rdma_stage_encode(uint32_t slot, const struct rdma_stage_entry *e, uint32_t n, uint8_t *out)
{
    put_le32(out, slot);
    put_le32(out + 4, n);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *x = out + 8 + (size_t)i * RDMA_STAGE_ENTRY_SIZE;
        put_le64(x, e[i].addr);
        put_le32(x + 8, e[i].off);
        put_le32(x + 12, e[i].len);
    }
    return 8 + (size_t)n * RDMA_STAGE_ENTRY_SIZE;
}

int rdma_stage_decode(const uint8_t *in, size_t len, uint32_t slots, uint32_t slot_size, uint32_t *slot,
                      struct rdma_stage_entry e[RDMA_STAGE_ENTRIES], uint32_t *n)
{
    if (len < 8)
        return ferry_fail(FERRY_EPROTO, "rdma stage message: %zu bytes", len);
    *slot = get_le32(in);
    *n = get_le32(in + 4);
    if (*n == 0 || *n > RDMA_STAGE_ENTRIES || len != 8 + (size_t)*n * RDMA_STAGE_ENTRY_SIZE)
        return ferry_fail(FERRY_EPROTO, "rdma stage message: %u entries in %zu bytes (1-%d)", *n, len,
                          RDMA_STAGE_ENTRIES);
    if (*slot >= slots)
        return ferry_fail(FERRY_EPROTO, "rdma stage message: slot %u, the bounce has %u", *slot, slots);
    for (uint32_t i = 0; i < *n; i++) {
        const uint8_t *x = in + 8 + (size_t)i * RDMA_STAGE_ENTRY_SIZE;
        e[i] = (struct rdma_stage_entry){get_le64(x), get_le32(x + 8), get_le32(x + 12)};
        if (e[i].len == 0 || (uint64_t)e[i].off + e[i].len > slot_size || e[i].addr + e[i].len < e[i].addr)
            return ferry_fail(FERRY_EPROTO, "rdma stage message: entry %u (offset %u, %u bytes) outside its %u-byte "
                              "slot or wrapping", i, e[i].off, e[i].len, slot_size);
    }
    return 0;
}

char *rdma_stage_ack_reason(const uint8_t *payload, uint32_t len, char *out, size_t cap)
{
    return log_sanitize(len > 8 ? (const char *)payload + 8 : "", len > 8 ? len - 8 : 0, out, cap);
}

/* A message (header and up to two parts) by deadline_ns; UINT64_MAX: by
 * the socket's send timeout, one bound for the whole message
 * (net_writev_full). */
static int send_by(int fd, struct rdma_msg_header *h, const void *a, size_t alen, const void *b, size_t blen,
                   uint64_t deadline_ns)
{
    uint8_t raw[RDMA_MSG_HEADER_SIZE];
    h->len = (uint32_t)(alen + blen);
    rdma_msg_encode_header(h, raw);
    struct iovec iov[3] = {{raw, sizeof raw}};
    int n = 1;
    if (alen)
        iov[n++] = (struct iovec){(void *)a, alen};
    if (blen)
        iov[n++] = (struct iovec){(void *)b, blen};
    return deadline_ns == UINT64_MAX ? net_writev_full(fd, iov, n) : net_writev_full_deadline(fd, iov, n, deadline_ns);
}

int rdma_msg_send(int fd, struct rdma_msg_header *h, const void *a, size_t alen, const void *b, size_t blen)
{
    return send_by(fd, h, a, alen, b, blen, UINT64_MAX);
}

int rdma_msg_send_by(int fd, struct rdma_msg_header *h, const void *a, size_t alen, const void *b, size_t blen,
                     uint64_t deadline_ns)
{
    return send_by(fd, h, a, alen, b, blen, deadline_ns);
}

/* The socket's receive timeout as one deadline for a whole message (a peer
 * dripping a byte per timeout would otherwise hold the reader for as many
 * timeouts as the message has bytes); UINT64_MAX when it has none. */
static uint64_t message_deadline(int fd)
{
    struct timeval tv = {0, 0};
    socklen_t sl = sizeof tv;
    if (getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &sl) != 0 || (tv.tv_sec == 0 && tv.tv_usec == 0))
        return UINT64_MAX;
    return now_ns() + (uint64_t)tv.tv_sec * 1000000000u + (uint64_t)tv.tv_usec * 1000u;
}

/* One message by deadline (UINT64_MAX: none). */
static int recv_by(int fd, struct rdma_msg_header *h, void *buf, size_t cap, uint64_t deadline)
{
    uint8_t raw[RDMA_MSG_HEADER_SIZE];
    int rc = deadline == UINT64_MAX ? net_read_full(fd, raw, sizeof raw)
                                    : net_read_full_deadline(fd, raw, sizeof raw, deadline);
    if (!rc)
        rc = rdma_msg_decode_header(raw, h);
    if (!rc && h->len > cap)
        rc = ferry_fail(FERRY_EPROTO, "rdma side channel: message type %u of %u bytes is unexpected here", h->type,
                        h->len);
    if (!rc && h->len)
        rc = deadline == UINT64_MAX ? net_read_full(fd, buf, h->len)
                                    : net_read_full_deadline(fd, buf, h->len, deadline);
    return rc;
}

int rdma_msg_recv(int fd, struct rdma_msg_header *h, void *buf, size_t cap)
{
    return recv_by(fd, h, buf, cap, message_deadline(fd));
}

int rdma_hello_exchange(int fd, const uint8_t info[RDMA_QP_INFO_SIZE], const char *name, size_t name_len,
                        uint64_t deadline_ns, struct rdma_msg_header *h, void *buf, size_t cap)
{
    if (now_ns() >= deadline_ns) /* the connect and authentication spent it */
        return ferry_fail(FERRY_ETIMEDOUT, "HELLO: the deadline passed before it was sent");
    *h = (struct rdma_msg_header){.type = RDMA_MSG_HELLO};
    int rc = send_by(fd, h, info, RDMA_QP_INFO_SIZE, name, name_len, deadline_ns);
    return rc ? rc : recv_by(fd, h, buf, cap, deadline_ns);
}

/* ------------------------------------------------------------ endpoint JSON */

static int add_hex(cJSON *obj, const char *key, uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof buf, "0x%llx", (unsigned long long)v);
    return cJSON_AddStringToObject(obj, key, buf) ? 0 : -1;
}

static void gid_to_hex(const uint8_t gid[16], char out[33])
{
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", gid[i]);
}

static cJSON *encode_nic(const struct rdma_remote_nic *n)
{
    char gid[33];
    gid_to_hex(n->gid, gid);
    cJSON *o = cJSON_CreateObject();
    if (o && cJSON_AddStringToObject(o, "name", n->name) && cJSON_AddStringToObject(o, "gid", gid) &&
        cJSON_AddNumberToObject(o, "lid", n->lid) && cJSON_AddNumberToObject(o, "mtu", n->mtu) &&
        cJSON_AddStringToObject(o, "link", n->link_ib ? "ib" : "eth") &&
        cJSON_AddNumberToObject(o, "numa", n->numa))
        return o;
    cJSON_Delete(o);
    return NULL;
}

static cJSON *encode_mr(const struct rdma_remote_mr *m, size_t nnics)
{
    cJSON *o = cJSON_CreateObject(), *keys = NULL;
    int ok = o && add_hex(o, "addr", m->addr) == 0 && add_hex(o, "len", m->len) == 0 &&
             (keys = cJSON_AddArrayToObject(o, "rkey")) && cJSON_AddNumberToObject(o, "pref", m->pref);
    for (size_t i = 0; ok && i < nnics; i++)
        ok = cJSON_AddItemToArray(keys, cJSON_CreateNumber(m->rkey[i]));
    if (ok)
        return o;
    cJSON_Delete(o);
    return NULL;
}

int rdma_endpoint_encode(const struct rdma_endpoint *ep, char **out)
{
    cJSON *root = cJSON_CreateObject(), *nics = NULL, *mrs = NULL;
    int ok = root && cJSON_AddStringToObject(root, "host", ep->host) &&
             cJSON_AddNumberToObject(root, "port", ep->port) && (nics = cJSON_AddArrayToObject(root, "nics")) &&
             (mrs = cJSON_AddArrayToObject(root, "mrs")) &&
             (!ep->stage || cJSON_AddNumberToObject(root, "stage", 1));
    for (size_t i = 0; ok && i < ep->nnics; i++)
        ok = cJSON_AddItemToArray(nics, encode_nic(&ep->nics[i]));
    for (size_t i = 0; ok && i < ep->nmrs; i++)
        ok = cJSON_AddItemToArray(mrs, encode_mr(&ep->mrs[i], ep->nnics));
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return ferry_fail(FERRY_ENOMEM, "rdma endpoint encode");
    *out = text;
    return 0;
}

static int get_uint(const cJSON *obj, const char *key, double max, double *v)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(n) || n->valuedouble < 0 || n->valuedouble > max ||
        n->valuedouble != (double)(uint64_t)n->valuedouble)
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: \"%s\" missing or not an integer in 0..%.0f", key, max);
    *v = n->valuedouble;
    return 0;
}

static int get_hex(const cJSON *obj, const char *key, uint64_t *v)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(obj, key);
    char *end;
    /* hex digits only: strtoull alone would take "0x-1", "0x 1", "0x+1" and "0x0x1" */
    if (!cJSON_IsString(s) || strncmp(s->valuestring, "0x", 2) != 0 || !s->valuestring[2] ||
        strspn(s->valuestring + 2, "0123456789abcdefABCDEF") != strlen(s->valuestring + 2))
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: \"%s\" missing or not 0x-hex", key);
    errno = 0;
    unsigned long long x = strtoull(s->valuestring + 2, &end, 16);
    if (errno || end == s->valuestring + 2 || *end)
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: \"%s\" is not a number", key);
    *v = x;
    return 0;
}

static int get_str(const cJSON *obj, const char *key, char *dst, size_t cap)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsString(s) || !s->valuestring[0] || strlen(s->valuestring) >= cap)
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: \"%s\" missing, empty or longer than %zu", key, cap - 1);
    strcpy(dst, s->valuestring);
    return 0;
}

static int decode_nic(const cJSON *o, struct rdma_remote_nic *n)
{
    char gid[40], link[8];
    double lid = 0, mtu = 0; /* set by get_uint; initialized for GCC -O3 -Wmaybe-uninitialized */
    const cJSON *numa = cJSON_GetObjectItemCaseSensitive(o, "numa");
    int rc;
    if (!cJSON_IsObject(o))
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: a nic is not an object");
    if ((rc = get_str(o, "name", n->name, sizeof n->name)) || (rc = get_str(o, "gid", gid, sizeof gid)) ||
        (rc = get_str(o, "link", link, sizeof link)) || (rc = get_uint(o, "lid", 65535, &lid)) ||
        (rc = get_uint(o, "mtu", 5, &mtu)))
        return rc;
    if (strlen(gid) != 32)
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: gid \"%s\" is not 32 hex digits", gid);
    for (int i = 0; i < 16; i++) {
        unsigned x;
        char byte[3] = {gid[2 * i], gid[2 * i + 1], 0};
        if (sscanf(byte, "%2x", &x) != 1 || !strchr("0123456789abcdefABCDEF", byte[0]) ||
            !strchr("0123456789abcdefABCDEF", byte[1]))
            return ferry_fail(FERRY_EPROTO, "rdma endpoint: gid \"%s\" is not hex", gid);
        n->gid[i] = (uint8_t)x;
    }
    if (strcmp(link, "ib") && strcmp(link, "eth"))
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: link \"%s\" is neither ib nor eth", link);
    if (mtu < 1)
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: mtu 0");
    n->link_ib = strcmp(link, "ib") == 0;
    n->lid = (uint16_t)lid;
    n->mtu = (uint8_t)mtu;
    n->numa = cJSON_IsNumber(numa) && numa->valuedouble >= 0 && numa->valuedouble < 4096 ? (int)numa->valuedouble
                                                                                        : -1;
    return 0;
}

static int decode_mr(const cJSON *o, size_t nnics, struct rdma_remote_mr *m)
{
    double pref = 0;
    int rc;
    if (!cJSON_IsObject(o))
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: an mr is not an object");
    if ((rc = get_hex(o, "addr", &m->addr)) || (rc = get_hex(o, "len", &m->len)) ||
        (rc = get_uint(o, "pref", 4294967295.0, &pref)))
        return rc;
    if (m->len == 0 || m->addr + m->len < m->addr)
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: mr at 0x%llx is empty or wraps", (unsigned long long)m->addr);
    m->pref = (uint32_t)pref;
    const cJSON *keys = cJSON_GetObjectItemCaseSensitive(o, "rkey");
    if (!cJSON_IsArray(keys) || (size_t)cJSON_GetArraySize(keys) != nnics)
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: mr at 0x%llx needs one rkey per nic (%zu)",
                          (unsigned long long)m->addr, nnics);
    size_t i = 0;
    const cJSON *k;
    cJSON_ArrayForEach(k, keys)
    {
        if (!cJSON_IsNumber(k) || k->valuedouble < 0 || k->valuedouble > 4294967295.0 ||
            k->valuedouble != (double)(uint32_t)k->valuedouble)
            return ferry_fail(FERRY_EPROTO, "rdma endpoint: bad rkey");
        m->rkey[i++] = (uint32_t)k->valuedouble;
    }
    return 0;
}

static int cmp_mr(const void *a, const void *b)
{
    const struct rdma_remote_mr *x = a, *y = b;
    return x->addr < y->addr ? -1 : x->addr > y->addr;
}

static int decode_root(const cJSON *root, struct rdma_endpoint *ep)
{
    double port = 0;
    int rc;
    if (!cJSON_IsObject(root))
        return ferry_fail(FERRY_EPROTO, "rdma endpoint is not a JSON object");
    if ((rc = get_str(root, "host", ep->host, sizeof ep->host)) || (rc = get_uint(root, "port", 65535, &port)))
        return rc;
    if (!net_host_text_ok(ep->host, sizeof ep->host))
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: \"host\" is not a host name, IPv4 or IPv6 address");
    if (port < 1)
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: port 0");
    ep->port = (int)port;
    if (cJSON_GetObjectItemCaseSensitive(root, "stage")) { /* optional: older targets do not stage */
        double stage = 0;
        if ((rc = get_uint(root, "stage", 1, &stage)))
            return rc;
        ep->stage = (int)stage;
    }
    const cJSON *nics = cJSON_GetObjectItemCaseSensitive(root, "nics");
    const cJSON *mrs = cJSON_GetObjectItemCaseSensitive(root, "mrs");
    if (!cJSON_IsArray(nics) || !cJSON_IsArray(mrs))
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: \"nics\" or \"mrs\" missing or not an array");
    int nn = cJSON_GetArraySize(nics), nm = cJSON_GetArraySize(mrs);
    if (nn < 1 || nn > RDMA_MAX_NICS || nm > RDMA_MAX_MRS)
        return ferry_fail(FERRY_EPROTO, "rdma endpoint: %d nics (1-%d allowed), %d mrs (at most %d)", nn,
                          RDMA_MAX_NICS, nm, RDMA_MAX_MRS);
    const cJSON *x;
    cJSON_ArrayForEach(x, nics)
    {
        if ((rc = decode_nic(x, &ep->nics[ep->nnics])))
            return rc;
        ep->nnics++;
    }
    ep->mrs = calloc((size_t)nm + 1, sizeof *ep->mrs);
    if (!ep->mrs)
        return ferry_fail(FERRY_ENOMEM, "rdma endpoint: %d mrs", nm);
    cJSON_ArrayForEach(x, mrs)
    {
        if ((rc = decode_mr(x, ep->nnics, &ep->mrs[ep->nmrs])))
            return rc;
        ep->nmrs++;
    }
    qsort(ep->mrs, ep->nmrs, sizeof *ep->mrs, cmp_mr);
    for (size_t i = 1; i < ep->nmrs; i++)
        if (ep->mrs[i - 1].addr + ep->mrs[i - 1].len > ep->mrs[i].addr)
            return ferry_fail(FERRY_EPROTO, "rdma endpoint: mrs overlap at 0x%llx", (unsigned long long)ep->mrs[i].addr);
    return 0;
}

int rdma_endpoint_decode(const char *json, struct rdma_endpoint *ep)
{
    memset(ep, 0, sizeof *ep);
    cJSON *root = cJSON_Parse(json);
    if (!root)
        return ferry_fail(FERRY_EPROTO, "rdma endpoint is not valid JSON");
    int rc = decode_root(root, ep);
    cJSON_Delete(root);
    return rc;
}

void rdma_endpoint_free(struct rdma_endpoint *ep)
{
    free(ep->mrs);
    memset(ep, 0, sizeof *ep);
}

const struct rdma_remote_mr *rdma_endpoint_find_mr(const struct rdma_endpoint *ep, uint64_t addr, uint64_t len)
{
    if (len == 0 || addr + len < addr)
        return NULL;
    size_t lo = 0, hi = ep->nmrs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ep->mrs[mid].addr <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    const struct rdma_remote_mr *m = &ep->mrs[lo - 1];
    return addr + len <= m->addr + m->len ? m : NULL;
}

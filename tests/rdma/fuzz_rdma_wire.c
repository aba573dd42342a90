/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_rdma_wire.c — libFuzzer target for what the rdma transport decodes
 * from peers: side-channel headers, queue-pair info, the endpoint JSON of
 * a descriptor, the bounce of HELLO_ACK and the staging messages.  The first byte picks the decoder.  Whatever decodes must
 * keep the decoder's promises and survive a round trip; a broken promise
 * aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "transport/rdma/rdma_wire.h"

static void header(const uint8_t *in, size_t n)
{
    struct rdma_msg_header h;
    uint8_t again[RDMA_MSG_HEADER_SIZE];
    if (n < RDMA_MSG_HEADER_SIZE || rdma_msg_decode_header(in, &h) != 0)
        return;
    if (h.type < RDMA_MSG_HELLO || h.type > RDMA_MSG_STAGE_ACK || h.len > RDMA_MAX_NOTIFY || h.status > 0)
        abort();
    rdma_msg_encode_header(&h, again);
    if (memcmp(again, in, sizeof again) != 0)
        abort();
}

static void qp_info(const uint8_t *in, size_t n)
{
    struct rdma_qp_info q;
    uint8_t again[RDMA_QP_INFO_SIZE];
    if (n < RDMA_QP_INFO_SIZE || rdma_qp_info_decode(in, &q) != 0)
        return;
    if (q.qpn == 0 || q.qpn >= 1u << 24 || q.psn >= 1u << 24 || q.mtu < 1 || q.mtu > 5 || q.nic >= RDMA_MAX_NICS)
        abort();
    rdma_qp_info_encode(&q, again);
    if (memcmp(again, in, sizeof again) != 0)
        abort();
}

static void bounce_info(const uint8_t *in, size_t n)
{
    struct rdma_bounce_info b;
    uint8_t again[RDMA_BOUNCE_INFO_SIZE];
    if (n < RDMA_BOUNCE_INFO_SIZE || rdma_bounce_info_decode(in, &b) != 0)
        return;
    if (b.slots > RDMA_STAGE_MAX_SLOTS || (b.slots && b.addr + (uint64_t)b.slots * b.slot_size < b.addr))
        abort();
    rdma_bounce_info_encode(&b, again);
    if (memcmp(again, in, 20) != 0)
        abort();
}

/* Stage message against a bounce of 4 slots of 64 KiB. */
static void stage(const uint8_t *in, size_t n)
{
    struct rdma_stage_entry e[RDMA_STAGE_ENTRIES];
    uint32_t slot, count;
    uint8_t again[RDMA_STAGE_MSG_MAX];
    if (rdma_stage_decode(in, n, 4, 65536, &slot, e, &count) != 0)
        return;
    if (slot >= 4 || count == 0 || count > RDMA_STAGE_ENTRIES)
        abort();
    for (uint32_t i = 0; i < count; i++)
        if (e[i].len == 0 || (uint64_t)e[i].off + e[i].len > 65536 || e[i].addr + e[i].len < e[i].addr)
            abort();
    if (rdma_stage_encode(slot, e, count, again) != n || memcmp(again, in, n) != 0)
        abort();
}

static void endpoint(const uint8_t *in, size_t n)
{
    char *text = malloc(n + 1);
    if (!text)
        return;
    memcpy(text, in, n);
    text[n] = '\0';
    struct rdma_endpoint ep, back;
    if (rdma_endpoint_decode(text, &ep) == 0) {
        if (ep.nnics < 1 || ep.nnics > RDMA_MAX_NICS || ep.port < 1 || ep.port > 65535)
            abort();
        for (size_t i = 0; i < ep.nmrs; i++) {
            const struct rdma_remote_mr *m = &ep.mrs[i];
            if (m->len == 0 || m->addr + m->len < m->addr || (i && ep.mrs[i - 1].addr + ep.mrs[i - 1].len > m->addr))
                abort();
            if (rdma_endpoint_find_mr(&ep, m->addr, m->len) != m)
                abort();
        }
        char *json = NULL;
        if (rdma_endpoint_encode(&ep, &json) == 0) {
            if (rdma_endpoint_decode(json, &back) != 0 || back.nnics != ep.nnics || back.nmrs != ep.nmrs ||
                memcmp(back.nics, ep.nics, ep.nnics * sizeof ep.nics[0]) != 0 ||
                (ep.nmrs && memcmp(back.mrs, ep.mrs, ep.nmrs * sizeof ep.mrs[0]) != 0))
                abort();
            rdma_endpoint_free(&back);
            free(json);
        }
    }
    rdma_endpoint_free(&ep);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] % 5) {
    case 0: header(data + 1, size - 1); break;
    case 1: qp_info(data + 1, size - 1); break;
    case 2: bounce_info(data + 1, size - 1); break;
    case 3: stage(data + 1, size - 1); break;
    default: endpoint(data + 1, size - 1); break;
    }
    return 0;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_p2p.c — libFuzzer target for the p2p handshake's decoders: the first
 * 12 bytes as a message head (the magic, the version, a body length under
 * the cap: what decodes re-encodes to the same bytes), the rest as a
 * server's answer (a descriptor, or an error whose code is one the server
 * sends) and as a client's request.  A refusal must carry a named code and a
 * detail without control characters.  One thread; nothing outlives a run.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "fuzz_common.h"
#include "meta/p2p.h"

static void head(const uint8_t *data, size_t size)
{
    if (size < P2P_HEAD_SIZE)
        return;
    uint32_t max = data[0] & 1 ? P2P_MAX_BODY : P2P_MAX_REQUEST, len = UINT32_MAX;
    int rc = p2p_decode_head(data, max, &len);
    fuzz_rc_in(rc, 2, FERRY_EPROTO, FERRY_EVERSION);
    if (rc)
        return;
    uint8_t again[P2P_HEAD_SIZE];
    memcpy(again, P2P_MAGIC, 7);
    again[7] = P2P_VERSION;
    put_le32(again + 8, len);
    if (len > max || memcmp(again, data, sizeof again) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    head(data, size);
    /* an exact-size copy without a NUL: the decoders must stay inside it */
    char *body = malloc(size ? size : 1);
    if (!body)
        return 0;
    memcpy(body, data, size);
    int rc = p2p_decode_answer("127.0.0.1:9", body, size);
    fuzz_rc_in(rc, 3, FERRY_EPERM, FERRY_EBUSY, FERRY_EPROTO);
    (void)p2p_request_is_descriptor(body, size);
    free(body);
    return 0;
}

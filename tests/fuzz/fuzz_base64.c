/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_base64.c — libFuzzer target for the base64 decoder (etcd values).
 * Text that decodes must be the one canonical encoding of what it decodes
 * to (encode gives the very text back), and any bytes must survive encode
 * -> decode.  A refusal is FERRY_EPROTO with a clean detail.  One thread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), *out = NULL;
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    size_t len = 0;
    int rc = base64_decode(text, &out, &len);
    fuzz_rc_in(rc, 1, FERRY_EPROTO);
    if (!rc) {
        char *again = base64_encode(out, len);
        if (!again || strcmp(again, text) != 0 || out[len] != '\0')
            abort();
        free(again);
        free(out);
    }
    /* the other way: any bytes */
    char *enc = base64_encode(data, size), *dec = NULL;
    if (!enc || base64_decode(enc, &dec, &len) != 0 || len != size || memcmp(dec, data, size) != 0)
        abort();
    free(enc);
    free(dec);
    free(text);
    return 0;
}

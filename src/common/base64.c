/* SPDX-License-Identifier: Apache-2.0 */
/*
 * base64.c — base64 encode/decode (see base64.h).  Pure functions; any
 * thread.  Decoding validates every character, since the text comes from
 * peers and metadata stores.
 */
#include "base64.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *base64_encode(const void *data, size_t len)
{
    const uint8_t *in = data;
    char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;
    if (!out)
        return NULL;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = alphabet[(v >> 6) & 63];
        *o++ = alphabet[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0);
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

static int value_of(char c)
{
    const char *p = c ? strchr(alphabet, c) : NULL;
    return p ? (int)(p - alphabet) : -1;
}

int base64_decode(const char *text, char **out, size_t *out_len)
{
    size_t n = strlen(text);
    if (n % 4)
        return ferry_fail(FERRY_EPROTO, "value is not base64 (length %zu)", n);
    char *buf = malloc(n / 4 * 3 + 1);
    if (!buf)
        return ferry_fail(FERRY_ENOMEM, "base64 decode of %zu bytes", n);
    size_t len = 0, at = 0;
    const char *why = "a character outside the base64 alphabet";
    for (size_t i = 0; i < n; i += 4) {
        int pad = (text[i + 3] == '=') + (text[i + 2] == '=' && text[i + 3] == '=');
        at = i;
        if (pad && i + 4 != n) {
            why = "padding before the end";
            goto bad;
        }
        int v[4];
        for (int k = 0; k < 4 - pad; k++)
            if ((v[k] = value_of(text[i + k])) < 0) {
                at = i + (size_t)k;
                goto bad;
            }
        for (int k = 4 - pad; k < 4; k++)
            v[k] = 0;
        /* the bits a padded group leaves over are zero in what an encoder
         * writes: any other text would be a second spelling of one value */
        if ((pad == 1 && (v[2] & 3)) || (pad == 2 && (v[1] & 15))) {
            why = "non-zero bits before the padding (not the canonical encoding)";
            goto bad;
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        buf[len++] = (char)(w >> 16);
        if (pad < 2)
            buf[len++] = (char)(w >> 8);
        if (pad < 1)
            buf[len++] = (char)w;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
bad:
    free(buf);
    return ferry_fail(FERRY_EPROTO, "value is not base64: %s at offset %zu of %zu", why, at, n);
}

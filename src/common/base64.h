/* SPDX-License-Identifier: Apache-2.0 */
/*
 * base64.h — standard base64 (RFC 4648, with padding) for binary values that
 * travel inside JSON: IPC handles in descriptors, values in etcd.
 */
#ifndef FERRY_BASE64_H
#define FERRY_BASE64_H

#include <stddef.h>

/* Encodes len bytes into a malloc'd NUL-terminated string (caller frees), or
 * NULL when out of memory. */
char *base64_encode(const void *data, size_t len);

/* Decodes NUL-terminated base64 text into a malloc'd buffer (NUL-terminated
 * for convenience; caller frees) and its length.  Returns 0, FERRY_EPROTO
 * (not base64, or not its one canonical spelling: bits left over before the
 * padding must be zero; the detail gives the offset) or FERRY_ENOMEM. */
int base64_decode(const char *text, char **out, size_t *out_len);

#endif

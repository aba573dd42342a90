/* SPDX-License-Identifier: Apache-2.0 */
/*
 * etcd_reply.c — the decoders of the JSON metadata stores' answers: etcd's
 * (see etcd_reply.h) and an HTTP store's entry.  Pure functions; any
 * thread.  The caller owns every cJSON tree.
 */
#include "meta/etcd_reply.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "err.h"
#include "log.h"

/* One JSON object, the whole body (blanks after it allowed): a store does
 * not send two, nor bytes after its answer.  NULL otherwise. */
static cJSON *parse_object(const char *body, size_t len)
{
    const char *end = NULL;
    if (!body)
        body = "", len = 0;
    cJSON *j = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    while (j && end < body + len && strchr(" \t\r\n", *end) && *end)
        end++;
    if (!cJSON_IsObject(j) || end != body + len) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

int etcd_reply_parse(const char *host, const char *path, long status, const char *body, size_t len, cJSON **out)
{
    *out = NULL;
    cJSON *j = parse_object(body, len);
    if (!j) {
        cJSON_Delete(j);
        return ferry_fail(FERRY_EPROTO, "%s%s: HTTP %ld with a reply that is not JSON", host, path, status);
    }
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (status == 200 && !err) {
        *out = j;
        return 0;
    }
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(j, "code");
    int rc = cJSON_IsNumber(code) && code->valuedouble == 5 ? FERRY_ENOSEG : FERRY_EIO;
    char text[200];
    rc = ferry_fail(rc, "%s: etcd answered HTTP %ld: %s", path, status,
                    cJSON_IsString(err) ? log_sanitize(err->valuestring, 150, text, sizeof text) : "(no message)");
    cJSON_Delete(j);
    return rc;
}

/* Is s a decimal int64 greater than 0, written as etcd writes it (no sign,
 * no leading zero, no space)? */
static bool positive_int64_text(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 19 || s[0] == '0' || strspn(s, "0123456789") != n)
        return false;
    return n < 19 || strcmp(s, "9223372036854775807") <= 0;
}

int etcd_reply_lease_id(const cJSON *j, const char *url, char lease[ETCD_LEASE_MAX])
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "ID");
    /* decimal digits only: the ID goes back into the JSON of later requests;
     * never 0, which a put reads as "no lease" (a key that never expires) */
    if (!cJSON_IsString(id) || !positive_int64_text(id->valuestring))
        return ferry_fail(FERRY_EPROTO, "%s: lease grant answer has no decimal ID (1 to 2^63-1)", url);
    snprintf(lease, ETCD_LEASE_MAX, "%s", id->valuestring);
    return 0;
}

int etcd_reply_lease_alive(const cJSON *j, const char *url, const char *lease)
{
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(j, "result");
    const cJSON *ttl = cJSON_GetObjectItemCaseSensitive(result, "TTL");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(result, "ID");
    if (id && (!cJSON_IsString(id) || strcmp(id->valuestring, lease) != 0))
        return ferry_fail(FERRY_EPROTO, "%s: the keepalive of lease %s was answered for another lease", url, lease);
    /* an expired lease is answered with no TTL (zero is omitted) */
    if (!ttl)
        return ferry_fail(FERRY_ENOSEG, "%s: lease %s has expired", url, lease);
    if (!cJSON_IsString(ttl) || !positive_int64_text(ttl->valuestring))
        return ferry_fail(FERRY_EPROTO, "%s: the keepalive of lease %s has a TTL that is not a positive decimal "
                          "string", url, lease);
    return 0;
}

int etcd_reply_range(const cJSON *j, const char *name, const char *key, char **json, size_t *len)
{
    const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(j, "kvs");
    if (kvs && !cJSON_IsArray(kvs))
        return ferry_fail(FERRY_EPROTO, "segment %s: etcd's \"kvs\" is not an array", name);
    int n = cJSON_GetArraySize(kvs);
    if (n == 0)
        return ferry_fail(FERRY_ENOSEG, "segment %s is not published (no key \"%s\")", name, key);
    if (n > 1)
        return ferry_fail(FERRY_EPROTO, "segment %s: etcd answered %d entries for its one key", name, n);
    const cJSON *kv = cJSON_GetArrayItem(kvs, 0);
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(kv, "key");
    const cJSON *value = cJSON_GetObjectItemCaseSensitive(kv, "value");
    if (k && (!cJSON_IsString(k) || strcmp(k->valuestring, key) != 0))
        return ferry_fail(FERRY_EPROTO, "segment %s: etcd answered with the entry of another key", name);
    if (!cJSON_IsString(value))
        return ferry_fail(FERRY_EPROTO, "segment %s: etcd entry has no value", name);
    int rc = base64_decode(value->valuestring, json, len);
    if (rc)
        return ferry_fail(rc, "segment %s: %s", name, ferry_last_error());
    return 0;
}

int http_reply_entry(const char *body, size_t len, double now, const char *name, const char *url, char **json,
                     size_t *json_len)
{
    cJSON *j = parse_object(body, len);
    const cJSON *exp = cJSON_GetObjectItemCaseSensitive(j, "expires_unix_s");
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(j, "descriptor");
    /* exactly what put_one writes: the expiry, the descriptor, nothing else */
    if (!cJSON_IsNumber(exp) || !cJSON_IsObject(desc) || cJSON_GetArraySize(j) != 2) {
        cJSON_Delete(j);
        return ferry_fail(FERRY_EPROTO, "segment %s: the entry at %s is not a ferry descriptor", name, url);
    }
    if (now > exp->valuedouble) {
        cJSON_Delete(j);
        return ferry_fail(FERRY_ENOSEG, "segment %s: its entry expired (the publisher stopped renewing it)", name);
    }
    *json = cJSON_PrintUnformatted(desc);
    cJSON_Delete(j);
    if (!*json)
        return ferry_fail(FERRY_ENOMEM, "segment %s: descriptor", name);
    *json_len = strlen(*json);
    return 0;
}

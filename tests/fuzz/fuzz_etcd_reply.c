/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_etcd_reply.c — libFuzzer target for what ferry reads in etcd's
 * answers (src/meta/etcd_reply.c).  The first byte picks the HTTP status;
 * the rest is the body.  What parses goes through every reading of an
 * answer: a lease grant's ID (decimal, 1 to 2^63-1), a keepalive's TTL, a
 * range's value (canonical base64 of what it decodes to).  The same body
 * is also read as an HTTP store's entry (exactly the expiry and a
 * descriptor object).  A refusal carries a named code and a clean detail.
 * One thread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"
#include "fuzz_common.h"
#include "meta/etcd_reply.h"

#define LEASE "7587862101185416459"
#define KEY "ZmVycnktdGVzdC9h" /* base64 of "ferry-test/a" */

static void readings(const cJSON *j)
{
    char lease[ETCD_LEASE_MAX];
    memset(lease, 'x', sizeof lease);
    int rc = etcd_reply_lease_id(j, "etcd://fuzz", lease);
    fuzz_rc_in(rc, 1, FERRY_EPROTO);
    if (!rc) {
        size_t n = strnlen(lease, sizeof lease);
        if (n == 0 || n > 19 || lease[0] == '0' || strspn(lease, "0123456789") != n)
            abort();
    }
    rc = etcd_reply_lease_alive(j, "etcd://fuzz", LEASE);
    fuzz_rc_in(rc, 2, FERRY_ENOSEG, FERRY_EPROTO);

    char *json = NULL;
    size_t len = 0;
    rc = etcd_reply_range(j, "a", KEY, &json, &len);
    fuzz_rc_in(rc, 3, FERRY_ENOSEG, FERRY_EPROTO, FERRY_ENOMEM);
    if (!rc) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j,
                                                                                                           "kvs"), 0),
                                                          "value");
        char *again = base64_encode(json, len);
        if (!again || !cJSON_IsString(v) || strcmp(again, v->valuestring) != 0 || json[len] != '\0')
            abort();
        free(again);
        free(json);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const long statuses[] = {200, 200, 200, 200, 400, 404, 499, 302};
    if (size < 1)
        return 0;
    long status = statuses[data[0] & 7];
    /* an exact-size copy without a NUL: the parser must stay inside it */
    size_t n = size - 1;
    char *body = malloc(n ? n : 1);
    if (!body)
        return 0;
    memcpy(body, data + 1, n);
    char *json = NULL;
    size_t len = 0;
    int rc = http_reply_entry(body, n, 1e9, "a", "http://fuzz/m", &json, &len);
    fuzz_rc_in(rc, 3, FERRY_EPROTO, FERRY_ENOSEG, FERRY_ENOMEM);
    if (!rc) {
        cJSON *d = cJSON_Parse(json);
        if (!cJSON_IsObject(d) || strlen(json) != len)
            abort();
        cJSON_Delete(d);
        free(json);
    }
    cJSON *j = (cJSON *)1;
    rc = etcd_reply_parse("127.0.0.1", "/v3/kv/range", status, body, n, &j);
    free(body);
    fuzz_rc_in(rc, 3, FERRY_EPROTO, FERRY_ENOSEG, FERRY_EIO);
    if (rc) {
        if (j)
            abort();
        return 0;
    }
    if (!cJSON_IsObject(j) || status != 200)
        abort();
    readings(j);
    cJSON_Delete(j);
    return 0;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_redis_reply.c — libFuzzer target for a Redis server's replies as
 * ferry reads them (src/meta/redis_reply.h, hiredis's reader inside).  The
 * first byte says how the rest arrives: in reads of 1 to 16 bytes or
 * whole.  The bytes are fed until one reply is whole, refused or the input
 * ends; a whole reply is read as each command's answer (GET, SET, DEL,
 * PING).  Promises: only a reply type ferry's commands get is accepted, no
 * bytes are left after it, a GET's text is the reply's, and a refusal
 * carries a named code and a clean detail.  Built with FERRY_HAVE_REDIS
 * (otherwise it only returns).  One thread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

#ifdef FERRY_HAVE_REDIS
#include "meta/redis_reply.h"

static void answers(const redisReply *r)
{
    if (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_STATUS && r->type != REDIS_REPLY_ERROR &&
        r->type != REDIS_REPLY_INTEGER && r->type != REDIS_REPLY_NIL)
        abort();
    char *json = NULL;
    size_t len = 0;
    int rc = redis_reply_get(r, "a", &json, &len);
    fuzz_rc_in(rc, 3, FERRY_ENOSEG, FERRY_EPROTO, FERRY_ENOMEM);
    if (!rc) {
        if (r->type != REDIS_REPLY_STRING || len != r->len || memcmp(json, r->str, len) != 0 || json[len])
            abort();
        free(json);
    }
    rc = redis_reply_expect("redis://fuzz", "SET", r, REDIS_REPLY_STATUS, "OK");
    fuzz_rc_in(rc, 1, FERRY_EPROTO);
    if (!rc && (r->len != 2 || memcmp(r->str, "OK", 2) != 0))
        abort();
    fuzz_rc_in(redis_reply_expect("redis://fuzz", "DEL", r, REDIS_REPLY_INTEGER, NULL), 1, FERRY_EPROTO);
    fuzz_rc_in(redis_reply_expect("redis://fuzz", "PING", r, REDIS_REPLY_STATUS, "PONG"), 1, FERRY_EPROTO);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = data[0] & 16 ? size : (size_t)(data[0] & 15) + 1;
    redisReader *rd = redisReaderCreate();
    if (!rd)
        return 0;
    size_t got = 0;
    void *reply = NULL;
    int rc = 0;
    for (size_t at = 1; at < size && !reply && !rc; at += step) {
        size_t n = size - at < step ? size - at : step;
        /* an exact-size copy: a read past what arrived is caught */
        char *buf = malloc(n);
        if (!buf)
            break;
        memcpy(buf, data + at, n);
        rc = redis_reply_feed("redis://fuzz", rd, &got, buf, n, &reply);
        free(buf);
        fuzz_rc_in(rc, 1, FERRY_EPROTO);
        if (rc && reply)
            abort();
    }
    if (reply) {
        if (rd->pos < rd->len)
            abort();
        answers(reply);
        freeReplyObject(reply);
    }
    redisReaderFree(rd);
    return 0;
}
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    (void)data;
    (void)size;
    return 0;
}
#endif

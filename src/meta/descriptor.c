/* SPDX-License-Identifier: Apache-2.0 */
/*
 * descriptor.c — JSON encode/decode of segment descriptors (see descriptor.h).
 *
 * 64-bit values (addresses, lengths, the engine id) travel as "0x..." strings:
 * JSON numbers are doubles and would round addresses above 2^53.
 */
#include "descriptor.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"

static int add_hex(cJSON *obj, const char *key, uint64_t v)
{
    char buf[24];
    snprintf(buf, sizeof buf, "0x%llx", (unsigned long long)v);
    return cJSON_AddStringToObject(obj, key, buf) ? 0 : -1;
}

int descriptor_encode(const struct ferry_descriptor *d, char **out)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *transports = NULL, *buffers = NULL;
    int ok = root && cJSON_AddNumberToObject(root, "format", DESC_FORMAT) &&
             cJSON_AddStringToObject(root, "fingerprint", DESC_FINGERPRINT) &&
             cJSON_AddStringToObject(root, "name", d->name) &&
             add_hex(root, "engine_id", d->engine_id) == 0 &&
             (transports = cJSON_AddObjectToObject(root, "transports")) &&
             (buffers = cJSON_AddArrayToObject(root, "buffers"));
    for (size_t i = 0; ok && i < d->ntransports; i++) {
        cJSON *ep = cJSON_Parse(d->transports[i].json);
        ok = ep && cJSON_AddItemToObject(transports, d->transports[i].name, ep);
    }
    for (size_t i = 0; ok && i < d->nbuffers; i++) {
        cJSON *b = cJSON_CreateObject();
        ok = b && cJSON_AddItemToArray(buffers, b) && add_hex(b, "addr", d->buffers[i].addr) == 0 &&
             add_hex(b, "len", d->buffers[i].len) == 0 &&
             cJSON_AddStringToObject(b, "location", d->buffers[i].location);
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return ferry_fail(ok ? FERRY_ENOMEM : FERRY_EINVAL, "descriptor encode failed (a transport endpoint that "
                          "is not a JSON object, or out of memory)");
    *out = text;
    return 0;
}

static int get_hex(const cJSON *obj, const char *key, uint64_t *v)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsString(s))
        return ferry_fail(FERRY_EPROTO, "descriptor: \"%s\" missing or not a string", key);
    const char *t = s->valuestring;
    char *end;
    errno = 0;
    /* strtoull alone would also take spaces, signs and a second 0x */
    size_t ndigits = strncmp(t, "0x", 2) == 0 ? strspn(t + 2, "0123456789abcdefABCDEF") : 0;
    if (ndigits == 0 || t[2 + ndigits] != '\0')
        return ferry_fail(FERRY_EPROTO, "descriptor: \"%s\" is not 0x-hex", key);
    unsigned long long x = strtoull(t + 2, &end, 16);
    if (errno || end == t + 2 || *end)
        return ferry_fail(FERRY_EPROTO, "descriptor: \"%s\"=\"%.40s\" is not a number", key, t);
    *v = x;
    return 0;
}

static int copy_string(const cJSON *obj, const char *key, char *dst, size_t cap)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsString(s) || strlen(s->valuestring) >= cap || !s->valuestring[0])
        return ferry_fail(FERRY_EPROTO, "descriptor: \"%s\" missing, empty or longer than %zu", key,
                          cap - 1);
    /* names and locations reach logs and messages: no control characters in them */
    for (const char *c = s->valuestring; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            return ferry_fail(FERRY_EPROTO, "descriptor: \"%s\" has the control character 0x%02x", key,
                              (unsigned char)*c);
    strcpy(dst, s->valuestring);
    return 0;
}

static int cmp_buffer(const void *a, const void *b)
{
    const struct desc_buffer *x = a, *y = b;
    return x->addr < y->addr ? -1 : x->addr > y->addr;
}

static int decode_buffers(const cJSON *arr, struct ferry_descriptor *d)
{
    if (!cJSON_IsArray(arr))
        return ferry_fail(FERRY_EPROTO, "descriptor: \"buffers\" missing or not an array");
    int n = cJSON_GetArraySize(arr);
    if (n > DESC_MAX_BUFFERS)
        return ferry_fail(FERRY_EPROTO, "descriptor: %d buffers, at most %d", n, DESC_MAX_BUFFERS);
    d->buffers = calloc((size_t)n + 1, sizeof *d->buffers);
    if (!d->buffers)
        return ferry_fail(FERRY_ENOMEM, "descriptor: %d buffers", n);
    const cJSON *b;
    cJSON_ArrayForEach(b, arr)
    {
        struct desc_buffer *x = &d->buffers[d->nbuffers];
        int rc;
        if (!cJSON_IsObject(b))
            return ferry_fail(FERRY_EPROTO, "descriptor: buffer %zu is not an object", d->nbuffers);
        if ((rc = get_hex(b, "addr", &x->addr)) || (rc = get_hex(b, "len", &x->len)) ||
            (rc = copy_string(b, "location", x->location, sizeof x->location)))
            return rc;
        if (x->len == 0 || x->addr + x->len < x->addr)
            return ferry_fail(FERRY_EPROTO, "descriptor: buffer %zu is empty or wraps", d->nbuffers);
        d->nbuffers++;
    }
    qsort(d->buffers, d->nbuffers, sizeof *d->buffers, cmp_buffer);
    for (size_t i = 1; i < d->nbuffers; i++)
        if (d->buffers[i - 1].addr + d->buffers[i - 1].len > d->buffers[i].addr)
            return ferry_fail(FERRY_EPROTO, "descriptor: buffers overlap at 0x%llx",
                              (unsigned long long)d->buffers[i].addr);
    return 0;
}

static int decode_transports(const cJSON *obj, struct ferry_descriptor *d)
{
    if (!cJSON_IsObject(obj))
        return ferry_fail(FERRY_EPROTO, "descriptor: \"transports\" missing or not an object");
    const cJSON *t;
    cJSON_ArrayForEach(t, obj)
    {
        if (!cJSON_IsObject(t) || !t->string)
            return ferry_fail(FERRY_EPROTO, "descriptor: bad transport entry");
        if (d->ntransports == DESC_MAX_TRANSPORTS || strlen(t->string) >= sizeof d->transports[0].name)
            continue; /* a transport no build of ours names: skip it */
        struct desc_transport *x = &d->transports[d->ntransports];
        strcpy(x->name, t->string);
        x->json = cJSON_PrintUnformatted(t);
        if (!x->json)
            return ferry_fail(FERRY_ENOMEM, "descriptor: transport %s", t->string);
        d->ntransports++;
    }
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A member name that one object of the document gives twice, at any depth
 * (an endpoint's too): JSON leaves its meaning open (cJSON reads the first,
 * Python's json the last), so such a document could show two readers two
 * descriptors.  0, or FERRY_EPROTO naming the key and its object (where:
 * that object's own name, as its parent calls it); FERRY_EPROTO as well
 * for a document nested deeper than DESC_MAX_DEPTH. */
#define DESC_MAX_DEPTH 32
static int duplicate_key(const cJSON *j, const char *where, int depth)
{
    if (!cJSON_IsObject(j) && !cJSON_IsArray(j))
        return 0;
    if (depth > DESC_MAX_DEPTH) /* a descriptor is 4 deep; cJSON's own bound is 1000 */
        return ferry_fail(FERRY_EPROTO, "descriptor: %s is nested deeper than %d", where, DESC_MAX_DEPTH);
    char here[96];
    size_t n = 0, i = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, j)
    {
        if (cJSON_IsObject(c) || cJSON_IsArray(c)) {
            char shown[48];
            if (cJSON_IsObject(j))
                snprintf(here, sizeof here, "\"%s\"", log_sanitize(c->string, 40, shown, sizeof shown));
            else if (snprintf(here, sizeof here, "%s[%zu]", where, i) >= (int)sizeof here)
                memcpy(here + sizeof here - 4, "...", 4); /* arrays in arrays, deeper than a message shows */
            int rc = duplicate_key(c, here, depth + 1);
            if (rc)
                return rc;
        }
        n++, i++;
    }
    if (!cJSON_IsObject(j) || n < 2)
        return 0;
    const char *few[8], **names = n <= 8 ? few : malloc(n * sizeof *names);
    if (!names)
        return ferry_fail(FERRY_ENOMEM, "descriptor: %zu keys in %s", n, where);
    i = 0;
    cJSON_ArrayForEach(c, j)
        names[i++] = c->string ? c->string : "";
    qsort(names, n, sizeof *names, cmp_name);
    int rc = 0;
    for (i = 1; i < n && !rc; i++)
        if (strcmp(names[i - 1], names[i]) == 0) {
            char shown[48];
            rc = ferry_fail(FERRY_EPROTO, "descriptor: key \"%s\" given twice in %s",
                            log_sanitize(names[i], 40, shown, sizeof shown), where);
        }
    if (names != few)
        free(names);
    return rc;
}

int descriptor_decode(const char *json, size_t len, struct ferry_descriptor *d)
{
    memset(d, 0, sizeof *d);
    if (len > DESC_MAX_BYTES)
        return ferry_fail(FERRY_EPROTO, "descriptor of %zu bytes is over the %u limit", len, DESC_MAX_BYTES);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root)
        return ferry_fail(FERRY_EPROTO, "descriptor is not valid JSON");
    while (end < json + len && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t'))
        end++;
    if (end < json + len && *end != '\0') {
        cJSON_Delete(root);
        return ferry_fail(FERRY_EPROTO, "descriptor has bytes after its JSON object");
    }
    int rc = 0;
    const cJSON *format = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *fp = cJSON_GetObjectItemCaseSensitive(root, "fingerprint");
    if (!cJSON_IsObject(root) || !cJSON_IsNumber(format)) {
        rc = ferry_fail(FERRY_EPROTO, "descriptor has no numeric \"format\"");
    } else if ((rc = duplicate_key(root, "the descriptor", 1)) != 0) {
        /* named in its detail */
    } else if (format->valuedouble != DESC_FORMAT) {
        rc = ferry_fail(FERRY_EVERSION, "peer descriptor format %g, this build reads format %d",
                        format->valuedouble, DESC_FORMAT);
    } else if (!cJSON_IsString(fp)) {
        rc = ferry_fail(FERRY_EPROTO, "descriptor has no \"fingerprint\"");
    } else if (strcmp(fp->valuestring, DESC_FINGERPRINT) != 0) {
        char text[80];
        rc = ferry_fail(FERRY_EVERSION, "peer fingerprint \"%s\" is incompatible with \"%s\"",
                        log_sanitize(fp->valuestring, 60, text, sizeof text), DESC_FINGERPRINT);
    } else {
        d->format = DESC_FORMAT;
        strcpy(d->fingerprint, DESC_FINGERPRINT);
        if (!(rc = copy_string(root, "name", d->name, sizeof d->name)) &&
            !(rc = get_hex(root, "engine_id", &d->engine_id)) &&
            !(rc = decode_transports(cJSON_GetObjectItemCaseSensitive(root, "transports"), d)))
            rc = decode_buffers(cJSON_GetObjectItemCaseSensitive(root, "buffers"), d);
    }
    cJSON_Delete(root);
    return rc;
}

void descriptor_free(struct ferry_descriptor *d)
{
    for (size_t i = 0; i < d->ntransports; i++)
        cJSON_free(d->transports[i].json);
    free(d->buffers);
    memset(d, 0, sizeof *d);
}

const char *descriptor_transport(const struct ferry_descriptor *d, const char *name)
{
    for (size_t i = 0; i < d->ntransports; i++)
        if (strcmp(d->transports[i].name, name) == 0)
            return d->transports[i].json;
    return NULL;
}

long descriptor_find_buffer(const struct ferry_descriptor *d, uint64_t addr, uint64_t len)
{
    if (len == 0 || addr + len < addr)
        return -1;
    size_t lo = 0, hi = d->nbuffers;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (d->buffers[mid].addr <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return -1;
    const struct desc_buffer *b = &d->buffers[lo - 1];
    return addr + len <= b->addr + b->len ? (long)(lo - 1) : -1;
}

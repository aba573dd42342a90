/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_descriptor.c — the segment descriptor codec: exact round trips of
 * 64-bit values (above 2^53, where JSON numbers would round), buffers sorted
 * on decode, every validation error the decoder can return (format and
 * fingerprint -> FERRY_EVERSION; missing, mistyped, empty, non-hex, wrapping,
 * overlapping, truncated, oversized, a key given twice -> FERRY_EPROTO) with the detail message
 * naming the field, and the edges of descriptor_find_buffer.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "meta/descriptor.h"

#define FP "\"fingerprint\":\"" DESC_FINGERPRINT "\""
#define HEAD "\"format\":1," FP ",\"name\":\"seg\",\"engine_id\":\"0x1\""
#define ONE_TRANSPORT "\"transports\":{\"tcp\":{\"host\":\"127.0.0.1\",\"port\":7000}}"
#define ONE_BUFFER "\"buffers\":[{\"addr\":\"0x1000\",\"len\":\"0x100\",\"location\":\"cpu\"}]"

/* A descriptor with `head` (format ... engine_id), transports and buffers. */
#define DESC(head, transports, buffers) "{" head "," transports "," buffers "}"

static int decode_text(const char *json, struct ferry_descriptor *d)
{
    /* an exact-size copy without a terminating NUL: the decoder must honour len */
    size_t len = strlen(json);
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, json, len);
    int rc = descriptor_decode(copy, len, d);
    free(copy);
    return rc;
}

/* Decodes json, expects `code` and a detail message containing `needle`. */
static void expect_fail(const char *json, int code, const char *needle)
{
    struct ferry_descriptor d;
    ferry_clear_error();
    int rc = decode_text(json, &d);
    descriptor_free(&d); /* before any failure, so a failing case leaks nothing */
    if (rc != code)
        fail_msg("decode of %s returned %d (%s), expected %s; detail: %s", json, rc, ferry_err_name(rc),
                 ferry_err_name(code), ferry_last_error());
    if (!strstr(ferry_last_error(), needle))
        fail_msg("detail \"%s\" for %s does not mention \"%s\"", ferry_last_error(), json, needle);
}

static void expect_ok(const char *json)
{
    struct ferry_descriptor d;
    int rc = decode_text(json, &d);
    descriptor_free(&d);
    if (rc != 0)
        fail_msg("decode of %s failed: %s: %s", json, ferry_err_name(rc), ferry_last_error());
}

static void set_transport(struct ferry_descriptor *d, const char *name, const char *json)
{
    struct desc_transport *t = &d->transports[d->ntransports++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->json = strdup(json);
    assert_non_null(t->json);
}

static void free_built(struct ferry_descriptor *d)
{
    for (size_t i = 0; i < d->ntransports; i++)
        free(d->transports[i].json);
    free(d->buffers);
}

/* --------------------------------------------------------------- round trips */

static void test_round_trip_exact(void **state)
{
    (void)state;
    struct ferry_descriptor in = {0};
    snprintf(in.name, sizeof in.name, "%s", "prefill-7@10.0.0.3:17000");
    in.engine_id = 0xfedcba9876543211ull; /* odd and > 2^53: a double would round it */
    set_transport(&in, "tcp", "{\"host\":\"10.0.0.3\",\"port\":17001}");
    set_transport(&in, "rdma", "{\"gid\":\"fe80::1\",\"qpn\":[1,2,3]}");
    set_transport(&in, "shm", "{\"path\":\"/dev/shm/ferry-7\"}");
    /* unsorted on purpose; addresses and lengths above 2^53, none a round double */
    static const struct desc_buffer bufs[] = {
        {0xff00000000000001ull, 0x20000000000003ull, "cuda:1"},
        {0x1000, 0x1, "cpu"},
        {0x0020000000000001ull, 0x1fffffffffffffull, "cuda:0"},
        {0xfffffffffffff000ull, 0xfffull, "sim:3"}, /* ends at 2^64 - 1 */
        {0x1001, 0x0fff, "cpu"},                    /* adjacent to the one at 0x1000 */
    };
    in.nbuffers = sizeof bufs / sizeof bufs[0];
    in.buffers = malloc(sizeof bufs);
    assert_non_null(in.buffers);
    memcpy(in.buffers, bufs, sizeof bufs);

    char *text = NULL;
    assert_int_equal(descriptor_encode(&in, &text), 0);
    assert_non_null(text);
    /* 64-bit values travel as hex strings, never as JSON numbers */
    assert_non_null(strstr(text, "\"0xfedcba9876543211\""));
    assert_non_null(strstr(text, "\"0xff00000000000001\""));

    struct ferry_descriptor out;
    int rc = descriptor_decode(text, strlen(text), &out);
    if (rc)
        fail_msg("decode of own encoding failed: %s: %s\n%s", ferry_err_name(rc), ferry_last_error(), text);
    assert_int_equal(out.format, DESC_FORMAT);
    assert_string_equal(out.fingerprint, DESC_FINGERPRINT);
    assert_string_equal(out.name, in.name);
    assert_true(out.engine_id == in.engine_id);

    assert_int_equal(out.ntransports, 3);
    assert_string_equal(descriptor_transport(&out, "tcp"), "{\"host\":\"10.0.0.3\",\"port\":17001}");
    assert_string_equal(descriptor_transport(&out, "rdma"), "{\"gid\":\"fe80::1\",\"qpn\":[1,2,3]}");
    assert_string_equal(descriptor_transport(&out, "shm"), "{\"path\":\"/dev/shm/ferry-7\"}");
    assert_null(descriptor_transport(&out, "efa"));
    assert_null(descriptor_transport(&out, ""));

    /* buffers come back sorted by addr, every bit exact */
    static const size_t sorted[] = {1, 4, 2, 0, 3};
    assert_int_equal(out.nbuffers, 5);
    for (size_t i = 0; i < 5; i++) {
        const struct desc_buffer *want = &bufs[sorted[i]];
        if (out.buffers[i].addr != want->addr || out.buffers[i].len != want->len)
            fail_msg("buffer %zu: 0x%llx+0x%llx, expected 0x%llx+0x%llx", i,
                     (unsigned long long)out.buffers[i].addr, (unsigned long long)out.buffers[i].len,
                     (unsigned long long)want->addr, (unsigned long long)want->len);
        assert_string_equal(out.buffers[i].location, want->location);
    }

    /* encoding the decoded descriptor gives the same text again */
    char *again = NULL;
    assert_int_equal(descriptor_encode(&out, &again), 0);
    struct ferry_descriptor out2;
    assert_int_equal(descriptor_decode(again, strlen(again), &out2), 0);
    char *third = NULL;
    assert_int_equal(descriptor_encode(&out2, &third), 0);
    assert_string_equal(again, third);

    free(text);
    free(again);
    free(third);
    descriptor_free(&out);
    descriptor_free(&out2);
    free_built(&in);
}

static void test_round_trip_extremes(void **state)
{
    (void)state;
    struct ferry_descriptor in = {0};
    memset(in.name, 'n', sizeof in.name - 1); /* longest name allowed: 127 */
    in.engine_id = UINT64_MAX;
    struct desc_buffer b = {0, UINT64_MAX, ""};
    memset(b.location, 'l', sizeof b.location - 1); /* longest location: 31 */
    in.buffers = &b;
    in.nbuffers = 1;

    char *text = NULL;
    assert_int_equal(descriptor_encode(&in, &text), 0);
    assert_non_null(strstr(text, "\"0xffffffffffffffff\""));
    struct ferry_descriptor out;
    int rc = descriptor_decode(text, strlen(text), &out);
    if (rc)
        fail_msg("%s: %s", ferry_err_name(rc), ferry_last_error());
    assert_string_equal(out.name, in.name);
    assert_true(out.engine_id == UINT64_MAX);
    assert_int_equal(out.nbuffers, 1);
    assert_true(out.buffers[0].addr == 0 && out.buffers[0].len == UINT64_MAX);
    assert_string_equal(out.buffers[0].location, b.location);
    free(text);
    descriptor_free(&out);
}

static void test_round_trip_empty(void **state)
{
    (void)state;
    struct ferry_descriptor in = {0};
    strcpy(in.name, "empty");
    char *text = NULL;
    assert_int_equal(descriptor_encode(&in, &text), 0);
    struct ferry_descriptor out;
    assert_int_equal(descriptor_decode(text, strlen(text), &out), 0);
    assert_string_equal(out.name, "empty");
    assert_true(out.engine_id == 0);
    assert_int_equal(out.ntransports, 0);
    assert_int_equal(out.nbuffers, 0);
    assert_int_equal(descriptor_find_buffer(&out, 0, 1), -1);
    assert_null(descriptor_transport(&out, "tcp"));
    free(text);
    descriptor_free(&out);
}

static void test_encode_bad_transport_json_fails(void **state)
{
    (void)state;
    struct ferry_descriptor in = {0};
    strcpy(in.name, "x");
    set_transport(&in, "tcp", "{not json");
    char *text = (char *)0x1;
    int rc = descriptor_encode(&in, &text);
    assert_true(rc < 0);
    assert_true(text == (char *)0x1); /* untouched on failure */
    assert_non_null(strstr(ferry_last_error(), "descriptor"));
    free_built(&in);
}

/* ------------------------------------------------------ version / fingerprint */

static void test_format_version(void **state)
{
    (void)state;
    expect_ok(DESC(HEAD, ONE_TRANSPORT, ONE_BUFFER));
    expect_fail("{\"format\":2," FP ",\"name\":\"s\",\"engine_id\":\"0x1\"," ONE_TRANSPORT "," ONE_BUFFER "}",
                FERRY_EVERSION, "format 2");
    expect_fail("{\"format\":0," FP "}", FERRY_EVERSION, "format");
    expect_fail("{\"format\":1.5," FP "}", FERRY_EVERSION, "format");
    /* a newer format is refused before anything else is looked at */
    expect_fail("{\"format\":2}", FERRY_EVERSION, "format");
    expect_fail("{\"format\":\"1\"," FP "}", FERRY_EPROTO, "format");
    expect_fail("{\"format\":true," FP "}", FERRY_EPROTO, "format");
    expect_fail("{\"format\":null," FP "}", FERRY_EPROTO, "format");
    expect_fail("{" FP ",\"name\":\"s\"}", FERRY_EPROTO, "format");
    expect_fail("{\"Format\":1," FP "}", FERRY_EPROTO, "format"); /* keys are case sensitive */
}

static void test_fingerprint(void **state)
{
    (void)state;
    expect_fail("{\"format\":1,\"fingerprint\":\"ferry-desc-1/wire-3\",\"name\":\"s\",\"engine_id\":\"0x1\"," ONE_TRANSPORT
                "," ONE_BUFFER "}",
                FERRY_EVERSION, "ferry-desc-1/wire-3");
    expect_fail("{\"format\":1,\"fingerprint\":\"\"}", FERRY_EVERSION, "fingerprint");
    expect_fail("{\"format\":1,\"fingerprint\":\"ferry-desc-1/wire-2 \"}", FERRY_EVERSION, "fingerprint");
    expect_fail("{\"format\":1}", FERRY_EPROTO, "fingerprint");
    expect_fail("{\"format\":1,\"fingerprint\":1}", FERRY_EPROTO, "fingerprint");
    expect_fail("{\"format\":1,\"fingerprint\":null}", FERRY_EPROTO, "fingerprint");
}

/* Strings a peer chose reach logs and messages: a name or location with a
 * control character is refused, a fingerprint quoted in a message is
 * escaped (a newline there would forge a log line). */
static void test_control_characters(void **state)
{
    (void)state;
    expect_fail("{\"format\":1," FP ",\"name\":\"seg\\nFORGED\",\"engine_id\":\"0x1\"," ONE_TRANSPORT "," ONE_BUFFER "}",
                FERRY_EPROTO, "control character 0x0a");
    expect_fail("{\"format\":1," FP ",\"name\":\"\\u001b[2J\",\"engine_id\":\"0x1\"," ONE_TRANSPORT "," ONE_BUFFER "}",
                FERRY_EPROTO, "control character 0x1b");
    expect_fail(DESC(HEAD, ONE_TRANSPORT, "\"buffers\":[{\"addr\":\"0x1000\",\"len\":\"0x100\",\"location\":\"cpu\\r\"}]"),
                FERRY_EPROTO, "\"location\" has the control character 0x0d");
    expect_fail("{\"format\":1,\"fingerprint\":\"x\\nFORGED\"}", FERRY_EVERSION, "x\\x0aFORGED");
    assert_null(strchr(ferry_last_error(), '\n'));
    expect_ok("{\"format\":1," FP ",\"name\":\"h\u00f6st:1\",\"engine_id\":\"0x1\"," ONE_TRANSPORT "," ONE_BUFFER "}");
}

/* ------------------------------------------------------- top-level fields */

static void test_name(void **state)
{
    (void)state;
    char big[512];
    expect_fail("{\"format\":1," FP ",\"engine_id\":\"0x1\"," ONE_TRANSPORT "," ONE_BUFFER "}", FERRY_EPROTO,
                "\"name\"");
    expect_fail("{\"format\":1," FP ",\"name\":\"\",\"engine_id\":\"0x1\"," ONE_TRANSPORT "," ONE_BUFFER "}",
                FERRY_EPROTO, "\"name\"");
    expect_fail("{\"format\":1," FP ",\"name\":7,\"engine_id\":\"0x1\"," ONE_TRANSPORT "," ONE_BUFFER "}",
                FERRY_EPROTO, "\"name\"");
    expect_fail("{\"format\":1," FP ",\"name\":[\"a\"],\"engine_id\":\"0x1\"," ONE_TRANSPORT "," ONE_BUFFER "}",
                FERRY_EPROTO, "\"name\"");
    char n127[128], n128[129];
    memset(n127, 'a', 127);
    n127[127] = 0;
    memset(n128, 'a', 128);
    n128[128] = 0;
    snprintf(big, sizeof big, "{\"format\":1," FP ",\"name\":\"%s\",\"engine_id\":\"0x1\"," ONE_TRANSPORT "," ONE_BUFFER "}",
             n127);
    expect_ok(big);
    snprintf(big, sizeof big, "{\"format\":1," FP ",\"name\":\"%s\",\"engine_id\":\"0x1\"," ONE_TRANSPORT "," ONE_BUFFER "}",
             n128);
    expect_fail(big, FERRY_EPROTO, "\"name\"");
}

static void test_engine_id(void **state)
{
    (void)state;
    static const char *bad[] = {
        "7",                     /* a JSON number, not a string */
        "\"7\"",                 /* no 0x */
        "\"0X7\"",               /* upper-case prefix */
        "\"0x\"",                /* no digits */
        "\"0xzz\"",              /* not hex */
        "\"0x1g\"",              /* trailing junk */
        "\"0x10000000000000000\"", /* 2^64: out of range */
        "\"\"",
        "null",
        "{}",
    };
    char json[512];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(json, sizeof json,
                 "{\"format\":1," FP ",\"name\":\"s\",\"engine_id\":%s," ONE_TRANSPORT "," ONE_BUFFER "}", bad[i]);
        expect_fail(json, FERRY_EPROTO, "engine_id");
    }
    expect_fail("{\"format\":1," FP ",\"name\":\"s\"," ONE_TRANSPORT "," ONE_BUFFER "}", FERRY_EPROTO, "engine_id");
    expect_ok("{\"format\":1," FP ",\"name\":\"s\",\"engine_id\":\"0xABCdef\"," ONE_TRANSPORT "," ONE_BUFFER "}");
    expect_ok("{\"format\":1," FP ",\"name\":\"s\",\"engine_id\":\"0x0\"," ONE_TRANSPORT "," ONE_BUFFER "}");
}

/* strtoull() skips white space and takes a sign and its own "0x" prefix; a
 * strict "0x<hex digits>" parser refuses them all.  "0x-1" would otherwise be
 * read as 0xffffffffffffffff. */
static void test_hex_is_strict(void **state)
{
    (void)state;
    static const char *bad[] = {"0x-1", "0x+1", "0x 1", "0x\\t1", "0x0x1", "0x-0"};
    char json[512];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(json, sizeof json,
                 "{\"format\":1," FP ",\"name\":\"s\",\"engine_id\":\"%s\"," ONE_TRANSPORT "," ONE_BUFFER "}", bad[i]);
        expect_fail(json, FERRY_EPROTO, "engine_id");
        snprintf(json, sizeof json,
                 "{" HEAD "," ONE_TRANSPORT ",\"buffers\":[{\"addr\":\"%s\",\"len\":\"0x10\",\"location\":\"cpu\"}]}",
                 bad[i]);
        expect_fail(json, FERRY_EPROTO, "addr");
    }
}

/* ---------------------------------------------------------------- transports */

static void test_transports(void **state)
{
    (void)state;
    expect_fail("{" HEAD "," ONE_BUFFER "}", FERRY_EPROTO, "transports");
    expect_fail("{" HEAD ",\"transports\":[]," ONE_BUFFER "}", FERRY_EPROTO, "transports");
    expect_fail("{" HEAD ",\"transports\":\"tcp\"," ONE_BUFFER "}", FERRY_EPROTO, "transports");
    expect_fail("{" HEAD ",\"transports\":{\"tcp\":\"127.0.0.1:1\"}," ONE_BUFFER "}", FERRY_EPROTO, "transport");
    expect_fail("{" HEAD ",\"transports\":{\"tcp\":[1]}," ONE_BUFFER "}", FERRY_EPROTO, "transport");
    /* no transports at all is a valid (if useless) descriptor */
    expect_ok("{" HEAD ",\"transports\":{}," ONE_BUFFER "}");
}

/* A newer peer may offer transports this build does not know, with longer
 * names or more of them than any build of ours runs: an older decoder skips
 * what it cannot hold and still finds the ones it speaks. */
static void test_unknown_transports_skipped(void **state)
{
    (void)state;
    struct ferry_descriptor d;
    const char *json = "{" HEAD ",\"transports\":{\"a\":{},\"b\":{},\"c\":{},\"d\":{},"
                       "\"a-transport-of-the-future\":{\"x\":1},\"tcp\":{\"host\":\"h\",\"port\":5}},"
                       ONE_BUFFER "}";
    assert_int_equal(decode_text(json, &d), 0);
    assert_int_equal(d.ntransports, 5); /* a b c d tcp: the 25-character name was skipped */
    assert_string_equal(descriptor_transport(&d, "tcp"), "{\"host\":\"h\",\"port\":5}");
    assert_null(descriptor_transport(&d, "a-transport-of-the-future"));
    descriptor_free(&d);

    /* more than DESC_MAX_TRANSPORTS: the first ones are kept, the rest skipped */
    char many[4096] = "{" HEAD ",\"transports\":{";
    for (int i = 0; i < DESC_MAX_TRANSPORTS + 3; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%s\"t%d\":{}", i ? "," : "", i);
    snprintf(many + strlen(many), sizeof many - strlen(many), "}," ONE_BUFFER "}");
    assert_int_equal(decode_text(many, &d), 0);
    assert_int_equal(d.ntransports, DESC_MAX_TRANSPORTS);
    assert_string_equal(d.transports[0].name, "t0");
    descriptor_free(&d);
}

static void test_transport_json_kept(void **state)
{
    (void)state;
    struct ferry_descriptor d;
    const char *json = "{" HEAD ",\"transports\":{ \"tcp\" : { \"host\" : \"h\" , \"port\" : 5 } , \"x\":{}},"
                       ONE_BUFFER "}";
    assert_int_equal(decode_text(json, &d), 0);
    assert_int_equal(d.ntransports, 2);
    assert_string_equal(d.transports[0].name, "tcp");
    assert_string_equal(descriptor_transport(&d, "tcp"), "{\"host\":\"h\",\"port\":5}");
    assert_string_equal(descriptor_transport(&d, "x"), "{}");
    assert_null(descriptor_transport(&d, "TCP"));
    descriptor_free(&d);
}

/* ---------------------------------------------------------------- buffers */

#define BUF(a, l) "{\"addr\":\"" a "\",\"len\":\"" l "\",\"location\":\"cpu\"}"
#define WITH_BUFFERS(list) "{" HEAD "," ONE_TRANSPORT ",\"buffers\":[" list "]}"

static void test_buffer_fields(void **state)
{
    (void)state;
    expect_fail("{" HEAD "," ONE_TRANSPORT "}", FERRY_EPROTO, "buffers");
    expect_fail("{" HEAD "," ONE_TRANSPORT ",\"buffers\":{}}", FERRY_EPROTO, "buffers");
    expect_fail("{" HEAD "," ONE_TRANSPORT ",\"buffers\":\"0x1000\"}", FERRY_EPROTO, "buffers");
    expect_fail(WITH_BUFFERS("1"), FERRY_EPROTO, "buffer 0");
    expect_fail(WITH_BUFFERS(BUF("0x1000", "0x10") ",[]"), FERRY_EPROTO, "buffer 1");
    expect_fail(WITH_BUFFERS("{\"len\":\"0x10\",\"location\":\"cpu\"}"), FERRY_EPROTO, "addr");
    expect_fail(WITH_BUFFERS("{\"addr\":4096,\"len\":\"0x10\",\"location\":\"cpu\"}"), FERRY_EPROTO, "addr");
    expect_fail(WITH_BUFFERS("{\"addr\":\"4096\",\"len\":\"0x10\",\"location\":\"cpu\"}"), FERRY_EPROTO, "addr");
    expect_fail(WITH_BUFFERS("{\"addr\":\"0xg000\",\"len\":\"0x10\",\"location\":\"cpu\"}"), FERRY_EPROTO, "addr");
    expect_fail(WITH_BUFFERS("{\"addr\":\"0x1000\",\"location\":\"cpu\"}"), FERRY_EPROTO, "len");
    expect_fail(WITH_BUFFERS("{\"addr\":\"0x1000\",\"len\":16,\"location\":\"cpu\"}"), FERRY_EPROTO, "len");
    expect_fail(WITH_BUFFERS("{\"addr\":\"0x1000\",\"len\":\"0x10\"}"), FERRY_EPROTO, "location");
    expect_fail(WITH_BUFFERS("{\"addr\":\"0x1000\",\"len\":\"0x10\",\"location\":\"\"}"), FERRY_EPROTO, "location");
    expect_fail(WITH_BUFFERS("{\"addr\":\"0x1000\",\"len\":\"0x10\",\"location\":0}"), FERRY_EPROTO, "location");
    expect_ok(WITH_BUFFERS("{\"addr\":\"0x1000\",\"len\":\"0x10\",\"location\":\"0123456789012345678901234567890\"}"));
    expect_fail(WITH_BUFFERS("{\"addr\":\"0x1000\",\"len\":\"0x10\",\"location\":\"01234567890123456789012345678901\"}"),
                FERRY_EPROTO, "location");
}

static void test_buffer_ranges(void **state)
{
    (void)state;
    expect_fail(WITH_BUFFERS(BUF("0x1000", "0x0")), FERRY_EPROTO, "empty");
    expect_fail(WITH_BUFFERS(BUF("0x1000", "0x10") "," BUF("0x2000", "0x0")), FERRY_EPROTO, "buffer 1");
    expect_fail(WITH_BUFFERS(BUF("0xffffffffffffff00", "0x101")), FERRY_EPROTO, "wraps");
    expect_fail(WITH_BUFFERS(BUF("0xffffffffffffffff", "0xffffffffffffffff")), FERRY_EPROTO, "wraps");
    expect_ok(WITH_BUFFERS(BUF("0xffffffffffffff00", "0xff")));
    /* overlaps, in either order and when equal; the message names the place */
    expect_fail(WITH_BUFFERS(BUF("0x1000", "0x100") "," BUF("0x10ff", "0x1")), FERRY_EPROTO, "overlap");
    expect_fail(WITH_BUFFERS(BUF("0x10ff", "0x1") "," BUF("0x1000", "0x100")), FERRY_EPROTO, "0x10ff");
    expect_fail(WITH_BUFFERS(BUF("0x1000", "0x100") "," BUF("0x1000", "0x100")), FERRY_EPROTO, "overlap");
    expect_fail(WITH_BUFFERS(BUF("0x1000", "0x1000") "," BUF("0x1800", "0x10")), FERRY_EPROTO, "overlap");
    expect_fail(WITH_BUFFERS(BUF("0x9000", "0x10") "," BUF("0x0", "0x10000") "," BUF("0x20000", "0x10")),
                FERRY_EPROTO, "overlap");
    /* adjacent is fine */
    expect_ok(WITH_BUFFERS(BUF("0x1100", "0x100") "," BUF("0x1000", "0x100") "," BUF("0x1200", "0x1")));
    expect_ok(WITH_BUFFERS(""));
}

static void test_many_buffers(void **state)
{
    (void)state;
    /* the count limit is checked before the buffers are looked at */
    size_t n = DESC_MAX_BUFFERS + 1;
    char *json = malloc(256 + n * 3);
    assert_non_null(json);
    char *p = json + sprintf(json, "{" HEAD "," ONE_TRANSPORT ",\"buffers\":[");
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "%s{}", i ? "," : "");
    strcpy(p, "]}");
    expect_fail(json, FERRY_EPROTO, "65537 buffers");
    free(json);

    /* exactly DESC_MAX_BUFFERS valid buffers, given in reverse order */
    n = DESC_MAX_BUFFERS;
    json = malloc(256 + n * 80);
    assert_non_null(json);
    p = json + sprintf(json, "{" HEAD "," ONE_TRANSPORT ",\"buffers\":[");
    for (size_t i = 0; i < n; i++) {
        uint64_t addr = (1ull << 60) + (uint64_t)(n - 1 - i) * 0x3000;
        p += sprintf(p, "%s{\"addr\":\"0x%llx\",\"len\":\"0x%llx\",\"location\":\"cpu\"}", i ? "," : "",
                     (unsigned long long)addr, (unsigned long long)(0x1000 + (n - 1 - i) % 0x2000));
    }
    strcpy(p, "]}");
    struct ferry_descriptor d;
    int rc = decode_text(json, &d);
    if (rc)
        fail_msg("%s: %s", ferry_err_name(rc), ferry_last_error());
    assert_int_equal(d.nbuffers, n);
    for (size_t i = 0; i < n; i++) {
        uint64_t addr = (1ull << 60) + (uint64_t)i * 0x3000, len = 0x1000 + i % 0x2000;
        assert_true(d.buffers[i].addr == addr && d.buffers[i].len == len);
        assert_int_equal(descriptor_find_buffer(&d, addr, len), (long)i);
        assert_int_equal(descriptor_find_buffer(&d, addr + len - 1, 1), (long)i);
        assert_int_equal(descriptor_find_buffer(&d, addr + len, 1), -1); /* the gap after it */
        assert_int_equal(descriptor_find_buffer(&d, addr, len + 1), -1);
    }
    descriptor_free(&d);
    free(json);
}

/* ------------------------------------------------------------- bad JSON */

static void test_not_json(void **state)
{
    (void)state;
    static const char *bad[] = {"", "hello", "{", "}", "{\"format\":1,}", "{format:1}", "'{}'", "\xff\xfe{}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_fail(bad[i], FERRY_EPROTO, "JSON");
    /* valid JSON that is not an object */
    expect_fail("[1,2]", FERRY_EPROTO, "format");
    expect_fail("1", FERRY_EPROTO, "format");
    expect_fail("null", FERRY_EPROTO, "format");
    expect_fail("\"format\"", FERRY_EPROTO, "format");
    expect_fail("[{\"format\":1}]", FERRY_EPROTO, "format");
    struct ferry_descriptor d;
    assert_int_equal(descriptor_decode(NULL, 0, &d), FERRY_EPROTO);
    descriptor_free(&d);
}

static void test_truncated(void **state)
{
    (void)state;
    const char *full = DESC(HEAD, "\"transports\":{\"tcp\":{\"host\":\"h\",\"port\":1},\"shm\":{}}",
                            "\"buffers\":[" BUF("0x1000", "0x100") "," BUF("0xffff000000000001", "0x7") "]");
    size_t len = strlen(full);
    expect_ok(full);
    for (size_t cut = 0; cut < len; cut++) {
        /* exact-size heap copy: a read past `cut` is caught by ASan */
        char *copy = malloc(cut ? cut : 1);
        assert_non_null(copy);
        memcpy(copy, full, cut);
        struct ferry_descriptor d;
        int rc = descriptor_decode(copy, cut, &d);
        if (rc != FERRY_EPROTO)
            fail_msg("prefix of %zu bytes returned %d (%s)", cut, rc, ferry_err_name(rc));
        descriptor_free(&d);
        free(copy);
    }
}

static void test_size_limit(void **state)
{
    (void)state;
    const char *doc = DESC(HEAD, ONE_TRANSPORT, ONE_BUFFER);
    size_t doclen = strlen(doc);
    char *big = malloc(DESC_MAX_BYTES + 1);
    assert_non_null(big);
    memcpy(big, doc, doclen);
    memset(big + doclen, ' ', DESC_MAX_BYTES + 1 - doclen); /* valid JSON padded with white space */
    struct ferry_descriptor d;

    assert_int_equal(descriptor_decode(big, DESC_MAX_BYTES, &d), 0);
    descriptor_free(&d);

    ferry_clear_error();
    assert_int_equal(descriptor_decode(big, DESC_MAX_BYTES + 1, &d), FERRY_EPROTO);
    assert_non_null(strstr(ferry_last_error(), "limit"));
    descriptor_free(&d);

    /* a huge claimed length is refused before the bytes are read */
    assert_int_equal(descriptor_decode(doc, SIZE_MAX, &d), FERRY_EPROTO);
    assert_non_null(strstr(ferry_last_error(), "limit"));
    descriptor_free(&d);
    free(big);
}

/* A key given twice in one object, at any depth: cJSON reads the first,
 * Python's json the last, so the document means two things; refused, the
 * detail naming the key and its object.  The same key in two objects is fine. */
static void test_duplicate_keys(void **state)
{
    (void)state;
    expect_fail("{" HEAD ",\"name\":\"other\"," ONE_TRANSPORT "," ONE_BUFFER "}", FERRY_EPROTO,
                "key \"name\" given twice in the descriptor");
    expect_fail("{" HEAD "," ONE_TRANSPORT "," ONE_BUFFER ",\"buffers\":[]}", FERRY_EPROTO, "\"buffers\" given twice");
    expect_fail("{\"format\":1,\"format\":1," FP ",\"name\":\"seg\",\"engine_id\":\"0x1\"," ONE_TRANSPORT ","
                ONE_BUFFER "}", FERRY_EPROTO, "\"format\" given twice");
    expect_fail(WITH_BUFFERS(BUF("0x1000", "0x10") ",{\"addr\":\"0x2000\",\"len\":\"0x10\",\"len\":\"0x1000\","
                             "\"location\":\"cpu\"}"),
                FERRY_EPROTO, "key \"len\" given twice in \"buffers\"[1]");
    expect_fail(DESC(HEAD, "\"transports\":{\"tcp\":{\"host\":\"a\",\"port\":1},\"tcp\":{\"host\":\"b\",\"port\":2}}",
                     ONE_BUFFER), FERRY_EPROTO, "key \"tcp\" given twice in \"transports\"");
    expect_fail(DESC(HEAD, "\"transports\":{\"tcp\":{\"host\":\"a\",\"port\":1,\"port\":2}}", ONE_BUFFER),
                FERRY_EPROTO, "key \"port\" given twice in \"tcp\"");
    expect_fail(DESC(HEAD, "\"transports\":{\"x\":{\"a\":[{\"b\":{\"c\":1,\"c\":1}}]}}", ONE_BUFFER), FERRY_EPROTO,
                "key \"c\" given twice in \"b\"");
    /* many keys (sorted, not compared pairwise), one of them twice */
    char *json = malloc(64 * 1024);
    assert_non_null(json);
    char *p = json + sprintf(json, "{" HEAD "," ONE_BUFFER ",\"transports\":{\"x\":{");
    for (int i = 0; i < 2000; i++)
        p += sprintf(p, "%s\"k%d\":%d", i ? "," : "", i == 1999 ? 7 : i, i);
    strcpy(p, "}}}");
    expect_fail(json, FERRY_EPROTO, "key \"k7\" given twice in \"x\"");
    /* a key with control characters is named escaped */
    expect_fail(DESC(HEAD, "\"transports\":{\"x\":{\"a\\nb\":1,\"a\\nb\":2}}", ONE_BUFFER), FERRY_EPROTO,
                "key \"a\\x0ab\" given twice");
    /* nested past any descriptor's shape */
    p = json + sprintf(json, "{" HEAD "," ONE_BUFFER ",\"transports\":{\"x\":");
    for (int i = 0; i < 40; i++)
        *p++ = '[';
    for (int i = 0; i < 40; i++)
        *p++ = ']';
    strcpy(p, "}}");
    expect_fail(json, FERRY_EPROTO, "nested deeper than");
    free(json);
    /* the same keys in different objects */
    expect_ok(DESC(HEAD, "\"transports\":{\"tcp\":{\"host\":\"a\",\"port\":1},\"rdma\":{\"host\":\"a\",\"port\":1}}",
                   "\"buffers\":[" BUF("0x1000", "0x10") "," BUF("0x2000", "0x10") "]"));
}

static void test_free_after_partial_decode(void **state)
{
    (void)state;
    /* transports decoded (allocations made), then buffers fail: free releases all */
    struct ferry_descriptor d;
    memset(&d, 0xab, sizeof d); /* decode must not trust what was in *d */
    int rc = decode_text("{" HEAD ",\"transports\":{\"tcp\":{\"a\":1},\"shm\":{\"b\":2}},\"buffers\":[" BUF("0x1", "0x0") "]}", &d);
    assert_int_equal(rc, FERRY_EPROTO);
    descriptor_free(&d);
    assert_int_equal(d.ntransports, 0);
    assert_null(d.buffers);
    descriptor_free(&d); /* twice is harmless */
}

/* --------------------------------------------------------- find_buffer */

static void test_find_buffer(void **state)
{
    (void)state;
    struct ferry_descriptor d;
    assert_int_equal(decode_text(WITH_BUFFERS(BUF("0x10000", "0x100") "," BUF("0x2000", "0x1000") "," BUF(
                                     "0x1000", "0x1000") "," BUF("0xfffffffffffff000", "0xfff")),
                                 &d),
                     0);
    assert_int_equal(d.nbuffers, 4);
    /* sorted: [0]=0x1000+0x1000, [1]=0x2000+0x1000 (adjacent), [2]=0x10000+0x100, [3]=top */
    assert_int_equal(descriptor_find_buffer(&d, 0x1000, 1), 0);        /* start */
    assert_int_equal(descriptor_find_buffer(&d, 0x1000, 0x1000), 0);   /* whole */
    assert_int_equal(descriptor_find_buffer(&d, 0x1fff, 1), 0);        /* last byte */
    assert_int_equal(descriptor_find_buffer(&d, 0x1fff, 2), -1);       /* straddles 0 and 1 */
    assert_int_equal(descriptor_find_buffer(&d, 0x1000, 0x2000), -1);  /* spans both adjacent buffers */
    assert_int_equal(descriptor_find_buffer(&d, 0x2000, 1), 1);
    assert_int_equal(descriptor_find_buffer(&d, 0x2fff, 1), 1);
    assert_int_equal(descriptor_find_buffer(&d, 0x3000, 1), -1);       /* one past the end */
    assert_int_equal(descriptor_find_buffer(&d, 0x2000, 0x1001), -1);  /* runs one past the end */
    assert_int_equal(descriptor_find_buffer(&d, 0xfff, 1), -1);        /* before the first */
    assert_int_equal(descriptor_find_buffer(&d, 0xfff, 2), -1);        /* starts before the first */
    assert_int_equal(descriptor_find_buffer(&d, 0, 1), -1);
    assert_int_equal(descriptor_find_buffer(&d, 0x8000, 0x10), -1);    /* in a gap */
    assert_int_equal(descriptor_find_buffer(&d, 0xffff, 2), -1);       /* gap into buffer 2 */
    assert_int_equal(descriptor_find_buffer(&d, 0x10000, 0x100), 2);
    assert_int_equal(descriptor_find_buffer(&d, 0x100ff, 1), 2);
    assert_int_equal(descriptor_find_buffer(&d, 0x10100, 1), -1);
    assert_int_equal(descriptor_find_buffer(&d, 0x1000, 0), -1);       /* zero length */
    assert_int_equal(descriptor_find_buffer(&d, 0x1800, 0), -1);
    assert_int_equal(descriptor_find_buffer(&d, 0xfffffffffffff000ull, 0xfff), 3);
    assert_int_equal(descriptor_find_buffer(&d, 0xfffffffffffffffeull, 1), 3);
    assert_int_equal(descriptor_find_buffer(&d, 0xffffffffffffffffull, 1), -1); /* one past the top buffer */
    assert_int_equal(descriptor_find_buffer(&d, 0xfffffffffffffffeull, 2), -1);
    assert_int_equal(descriptor_find_buffer(&d, 0xfffffffffffff000ull, UINT64_MAX), -1); /* wraps */
    assert_int_equal(descriptor_find_buffer(&d, 0x1000, UINT64_MAX), -1);
    descriptor_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_exact),
        cmocka_unit_test(test_round_trip_extremes),
        cmocka_unit_test(test_round_trip_empty),
        cmocka_unit_test(test_encode_bad_transport_json_fails),
        cmocka_unit_test(test_format_version),
        cmocka_unit_test(test_fingerprint),
        cmocka_unit_test(test_control_characters),
        cmocka_unit_test(test_name),
        cmocka_unit_test(test_engine_id),
        cmocka_unit_test(test_hex_is_strict),
        cmocka_unit_test(test_transports),
        cmocka_unit_test(test_unknown_transports_skipped),
        cmocka_unit_test(test_transport_json_kept),
        cmocka_unit_test(test_buffer_fields),
        cmocka_unit_test(test_buffer_ranges),
        cmocka_unit_test(test_many_buffers),
        cmocka_unit_test(test_not_json),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_duplicate_keys),
        cmocka_unit_test(test_free_after_partial_decode),
        cmocka_unit_test(test_find_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

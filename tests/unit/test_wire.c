/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_wire.c — the tcp frame codec: the byte layout, encode/decode round
 * trips of every frame type, and each rejection the decoder makes (bad magic
 * -> FERRY_EPROTO, other version -> FERRY_EVERSION, unknown type, entries
 * where none are allowed, too few/many entries, payloads over the per-type
 * limits, entries that are empty, wrap, exceed the frame or don't add up to
 * the payload) with a detail message that names the problem; the READ
 * trailer's layout, round trip, and rejections (bad magic, an entry marked
 * revoked that was refused or does not exist, a status no target sends ->
 * FERRY_EPROTO).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "err.h"
#include "transport/tcp/tcp_wire.h"

static struct wire_header header(uint8_t type, uint8_t nentries, uint64_t payload_len)
{
    struct wire_header h;
    memset(&h, 0, sizeof h);
    h.type = type;
    h.nentries = nentries;
    h.payload_len = payload_len;
    return h;
}

static int decode(const struct wire_header *h, struct wire_header *out)
{
    uint8_t buf[WIRE_HEADER_SIZE];
    wire_encode_header(h, buf);
    memset(out, 0, sizeof *out);
    return wire_decode_header(buf, out);
}

static void expect_header_fails(const struct wire_header *h, int code, const char *needle)
{
    struct wire_header out;
    ferry_clear_error();
    int rc = decode(h, &out);
    if (rc != code)
        fail_msg("type %u nentries %u payload %llu: got %s, expected %s (%s)", h->type, h->nentries,
                 (unsigned long long)h->payload_len, ferry_err_name(rc), ferry_err_name(code), ferry_last_error());
    if (!strstr(ferry_last_error(), needle))
        fail_msg("detail \"%s\" does not mention \"%s\"", ferry_last_error(), needle);
}

static void expect_header_ok(const struct wire_header *h)
{
    struct wire_header out;
    int rc = decode(h, &out);
    if (rc)
        fail_msg("type %u nentries %u payload %llu: %s: %s", h->type, h->nentries,
                 (unsigned long long)h->payload_len, ferry_err_name(rc), ferry_last_error());
}

static void test_layout(void **state)
{
    (void)state;
    struct wire_header h = header(WIRE_WRITE, 2, 0x0102030405060708ull);
    h.status = FERRY_ESTALE;
    h.flags = 0xa1a2a3a4;
    h.id = 0x1112131415161718ull;
    h.refused = 0x2122232425262728ull;
    h.epoch = 0x3132333435363738ull;
    uint8_t b[WIRE_HEADER_SIZE];
    memset(b, 0xee, sizeof b);
    wire_encode_header(&h, b);
    static const uint8_t want[WIRE_HEADER_SIZE] = {
        'F', 'R', 'R', 'Y', 1, 0, WIRE_WRITE, 2,          /* magic, version, type, nentries */
        0xf1, 0xff, 0xff, 0xff, 0xa4, 0xa3, 0xa2, 0xa1,   /* status -15, reserved */
        0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11,   /* id */
        0x28, 0x27, 0x26, 0x25, 0x24, 0x23, 0x22, 0x21,   /* refused */
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,   /* payload_len */
        0x38, 0x37, 0x36, 0x35, 0x34, 0x33, 0x32, 0x31,   /* epoch */
    };
    assert_memory_equal(b, want, sizeof want);

    struct wire_entry e[2] = {{0x0102030405060708ull, 0x1112131415161718ull}, {1, 2}};
    uint8_t eb[2 * WIRE_ENTRY_SIZE + 1];
    memset(eb, 0xee, sizeof eb);
    wire_encode_entries(e, 2, eb);
    static const uint8_t ewant[] = {0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x18, 0x17, 0x16,
                                    0x15, 0x14, 0x13, 0x12, 0x11, 1,    0,    0,    0,    0,    0,
                                    0,    0,    2,    0,    0,    0,    0,    0,    0,    0,    0xee};
    assert_memory_equal(eb, ewant, sizeof ewant); /* and nothing written past the entries */
}

static void test_round_trip_every_type(void **state)
{
    (void)state;
    static const struct {
        uint8_t type, nentries;
        uint64_t payload;
    } shapes[] = {
        {WIRE_HELLO, 0, 17},       {WIRE_HELLO_ACK, 0, 0}, {WIRE_WRITE, 3, 3 * 4096},
        {WIRE_WRITE_ACK, 0, 0},    {WIRE_READ, 64, 0},     {WIRE_READ_RESP, 0, 1ull << 20},
        {WIRE_NOTIFY, 0, 4096},    {WIRE_NOTIFY_ACK, 0, 0},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        struct wire_header h = header(shapes[i].type, shapes[i].nentries, shapes[i].payload);
        h.status = i % 2 ? FERRY_EVERSION : 0;
        h.flags = (uint32_t)i;
        h.id = 0xfedcba9876543210ull ^ i;
        h.refused = i == 3 ? 0x8000000000000001ull : 0;
        h.epoch = UINT64_MAX - i;
        struct wire_header out;
        int rc = decode(&h, &out);
        if (rc)
            fail_msg("type %u: %s: %s", h.type, ferry_err_name(rc), ferry_last_error());
        assert_true(out.magic == WIRE_MAGIC);
        assert_int_equal(out.version, WIRE_VERSION);
        assert_int_equal(out.type, h.type);
        assert_int_equal(out.nentries, h.nentries);
        assert_int_equal(out.status, h.status); /* negative codes keep their sign */
        assert_true(out.flags == h.flags);
        assert_true(out.id == h.id && out.refused == h.refused);
        assert_true(out.payload_len == h.payload_len && out.epoch == h.epoch);
    }
}

static void test_entries_round_trip(void **state)
{
    (void)state;
    struct wire_entry in[WIRE_MAX_ENTRIES], out[WIRE_MAX_ENTRIES];
    uint64_t total = 0;
    for (unsigned i = 0; i < WIRE_MAX_ENTRIES; i++) {
        in[i].addr = 0xffff000000000001ull + (uint64_t)i * 0x100000001ull; /* > 2^53, odd */
        in[i].len = 1 + i * 4099;
        total += in[i].len;
    }
    uint8_t buf[WIRE_MAX_ENTRIES * WIRE_ENTRY_SIZE];
    wire_encode_entries(in, WIRE_MAX_ENTRIES, buf);
    struct wire_header h = header(WIRE_WRITE, WIRE_MAX_ENTRIES, total);
    struct wire_header hd;
    assert_int_equal(decode(&h, &hd), 0);
    memset(out, 0, sizeof out);
    int rc = wire_decode_entries(buf, &hd, out);
    if (rc)
        fail_msg("%s: %s", ferry_err_name(rc), ferry_last_error());
    for (unsigned i = 0; i < WIRE_MAX_ENTRIES; i++)
        assert_true(out[i].addr == in[i].addr && out[i].len == in[i].len);

    /* READ: no payload to match, same entries */
    h = header(WIRE_READ, WIRE_MAX_ENTRIES, 0);
    assert_int_equal(decode(&h, &hd), 0);
    assert_int_equal(wire_decode_entries(buf, &hd, out), 0);
}

static void test_bad_magic(void **state)
{
    (void)state;
    struct wire_header h = header(WIRE_HELLO_ACK, 0, 0);
    uint8_t buf[WIRE_HEADER_SIZE];
    for (int byte = 0; byte < 4; byte++) {
        for (int bit = 0; bit < 8; bit++) {
            wire_encode_header(&h, buf);
            buf[byte] ^= (uint8_t)(1u << bit);
            struct wire_header out;
            ferry_clear_error();
            assert_int_equal(wire_decode_header(buf, &out), FERRY_EPROTO);
            assert_non_null(strstr(ferry_last_error(), "magic"));
        }
    }
    memset(buf, 0, sizeof buf);
    struct wire_header out;
    assert_int_equal(wire_decode_header(buf, &out), FERRY_EPROTO);
    /* magic is checked before version: garbage is a protocol error, not a version one */
    wire_encode_header(&h, buf);
    buf[0] = 'X';
    buf[4] = 9;
    assert_int_equal(wire_decode_header(buf, &out), FERRY_EPROTO);
}

static void test_version(void **state)
{
    (void)state;
    struct wire_header h = header(WIRE_HELLO, 0, 5);
    uint8_t buf[WIRE_HEADER_SIZE];
    static const uint16_t versions[] = {0, 2, 0x100, 0xffff};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        wire_encode_header(&h, buf);
        buf[4] = (uint8_t)versions[i];
        buf[5] = (uint8_t)(versions[i] >> 8);
        struct wire_header out;
        ferry_clear_error();
        assert_int_equal(wire_decode_header(buf, &out), FERRY_EVERSION);
        assert_non_null(strstr(ferry_last_error(), "version"));
        char num[16];
        snprintf(num, sizeof num, "%u", versions[i]);
        assert_non_null(strstr(ferry_last_error(), num));
    }
    /* version is checked before the shape: a v2 peer may send types we don't know */
    h = header(200, 5, UINT64_MAX);
    wire_encode_header(&h, buf);
    buf[4] = 2;
    struct wire_header out;
    assert_int_equal(wire_decode_header(buf, &out), FERRY_EVERSION);
}

static void test_unknown_type(void **state)
{
    (void)state;
    static const uint8_t bad[] = {0, 9, 10, 0x80, 0xff};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct wire_header h = header(bad[i], 0, 0);
        char needle[32];
        snprintf(needle, sizeof needle, "type %u", bad[i]);
        expect_header_fails(&h, FERRY_EPROTO, needle);
    }
}

static void test_entries_count(void **state)
{
    (void)state;
    /* types that carry no entries refuse even one */
    static const uint8_t none[] = {WIRE_HELLO, WIRE_HELLO_ACK, WIRE_WRITE_ACK, WIRE_READ_RESP, WIRE_NOTIFY,
                                   WIRE_NOTIFY_ACK};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) {
        struct wire_header h = header(none[i], 1, 0);
        expect_header_fails(&h, FERRY_EPROTO, "entries");
        h.nentries = 255;
        expect_header_fails(&h, FERRY_EPROTO, "255 entries");
    }
    /* WRITE and READ need 1..64 */
    static const uint8_t some[] = {WIRE_WRITE, WIRE_READ};
    for (size_t i = 0; i < 2; i++) {
        uint64_t payload = some[i] == WIRE_WRITE ? 4096 : 0;
        struct wire_header h = header(some[i], 0, payload);
        expect_header_fails(&h, FERRY_EPROTO, "0 entries");
        h.nentries = WIRE_MAX_ENTRIES + 1;
        expect_header_fails(&h, FERRY_EPROTO, "65 entries");
        h.nentries = 255;
        expect_header_fails(&h, FERRY_EPROTO, "entries");
        h.nentries = 1;
        expect_header_ok(&h);
        h.nentries = WIRE_MAX_ENTRIES;
        expect_header_ok(&h);
    }
}

static void test_payload_limits(void **state)
{
    (void)state;
    static const struct {
        uint8_t type, nentries;
        uint64_t max;
    } lim[] = {
        {WIRE_HELLO, 0, WIRE_MAX_NAME},         {WIRE_HELLO_ACK, 0, 0},
        {WIRE_WRITE, 1, WIRE_MAX_PAYLOAD},      {WIRE_WRITE_ACK, 0, 0},
        {WIRE_READ, 1, 0},                      {WIRE_READ_RESP, 0, WIRE_MAX_PAYLOAD},
        {WIRE_NOTIFY, 0, WIRE_MAX_NOTIFY},      {WIRE_NOTIFY_ACK, 0, 0},
    };
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++) {
        struct wire_header h = header(lim[i].type, lim[i].nentries, lim[i].max);
        expect_header_ok(&h);
        h.payload_len = lim[i].max + 1;
        expect_header_fails(&h, FERRY_EPROTO, "payload");
        h.payload_len = UINT64_MAX;
        expect_header_fails(&h, FERRY_EPROTO, "18446744073709551615");
        h.payload_len = 1ull << 63;
        expect_header_fails(&h, FERRY_EPROTO, "payload");
    }
}

/* Decodes n entries under a header of type/payload; expects code and needle. */
static void expect_entries(uint8_t type, uint64_t payload, const struct wire_entry *e, unsigned n, int code,
                           const char *needle)
{
    uint8_t buf[WIRE_MAX_ENTRIES * WIRE_ENTRY_SIZE];
    wire_encode_entries(e, n, buf);
    struct wire_header h = header(type, (uint8_t)n, payload), hd;
    assert_int_equal(decode(&h, &hd), 0);
    struct wire_entry out[WIRE_MAX_ENTRIES];
    ferry_clear_error();
    int rc = wire_decode_entries(buf, &hd, out);
    if (rc != code)
        fail_msg("%u entries, payload %llu: got %s, expected %s (%s)", n, (unsigned long long)payload,
                 ferry_err_name(rc), ferry_err_name(code), ferry_last_error());
    if (code && !strstr(ferry_last_error(), needle))
        fail_msg("detail \"%s\" does not mention \"%s\"", ferry_last_error(), needle);
}

static void test_entries_validation(void **state)
{
    (void)state;
    struct wire_entry e[3] = {{0x1000, 100}, {0x2000, 200}, {0x3000, 300}};
    expect_entries(WIRE_WRITE, 600, e, 3, 0, "");
    /* lengths must add up to the payload, exactly */
    expect_entries(WIRE_WRITE, 599, e, 3, FERRY_EPROTO, "payload is 599");
    expect_entries(WIRE_WRITE, 601, e, 3, FERRY_EPROTO, "600 bytes");
    expect_entries(WIRE_WRITE, 100, e, 1, 0, "");

    /* zero-length entry, named by index */
    e[2].len = 0;
    expect_entries(WIRE_WRITE, 300, e, 3, FERRY_EPROTO, "entry 2");
    expect_entries(WIRE_READ, 0, e, 3, FERRY_EPROTO, "empty");
    e[2].len = 300;

    /* wrapping entry */
    e[1] = (struct wire_entry){0xffffffffffffff00ull, 0x101};
    expect_entries(WIRE_READ, 0, e, 3, FERRY_EPROTO, "entry 1");
    e[1] = (struct wire_entry){0xffffffffffffff00ull, 0xff}; /* ends at 2^64 - 1: fine */
    expect_entries(WIRE_READ, 0, e, 3, 0, "");
    e[1] = (struct wire_entry){UINT64_MAX, UINT64_MAX};
    expect_entries(WIRE_READ, 0, e, 3, FERRY_EPROTO, "wraps");
    e[1] = (struct wire_entry){0x2000, 200};

    /* one entry over the frame limit; a sum over the limit */
    struct wire_entry big[2] = {{0, WIRE_MAX_PAYLOAD + 1}, {0x10000000000ull, 1}};
    expect_entries(WIRE_READ, 0, big, 1, FERRY_EPROTO, "over the frame limit");
    big[0].len = WIRE_MAX_PAYLOAD;
    expect_entries(WIRE_READ, 0, big, 1, 0, "");
    expect_entries(WIRE_WRITE, WIRE_MAX_PAYLOAD, big, 1, 0, "");
    expect_entries(WIRE_READ, 0, big, 2, FERRY_EPROTO, "add up to");
    /* lengths whose 64-bit sum would wrap to the payload length */
    struct wire_entry wrap[2] = {{0, 1ull << 63}, {0, (1ull << 63) + 16}};
    expect_entries(WIRE_WRITE, 16, wrap, 2, FERRY_EPROTO, "entry 0");

    /* 64 one-byte entries */
    struct wire_entry many[WIRE_MAX_ENTRIES];
    for (unsigned i = 0; i < WIRE_MAX_ENTRIES; i++)
        many[i] = (struct wire_entry){0x1000 + 2 * i, 1};
    expect_entries(WIRE_WRITE, WIRE_MAX_ENTRIES, many, WIRE_MAX_ENTRIES, 0, "");
    many[63].len = 0;
    expect_entries(WIRE_WRITE, WIRE_MAX_ENTRIES - 1, many, WIRE_MAX_ENTRIES, FERRY_EPROTO, "entry 63");
}

static void test_trailer(void **state)
{
    (void)state;
    uint8_t raw[WIRE_TRAILER_SIZE];
    struct wire_trailer t = {.revoked = 0x5};
    wire_encode_trailer(&t, raw);
    static const uint8_t expect[WIRE_TRAILER_SIZE] = {'F', 'E', 'N', 'D', 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0};
    assert_memory_equal(raw, expect, sizeof expect);
    struct wire_trailer out;
    assert_int_equal(wire_decode_trailer(raw, 3, 0x2, &out), 0);
    assert_true(out.revoked == 0x5);
    t.revoked = ~0ull; /* 64 entries, none refused: every one may be revoked */
    wire_encode_trailer(&t, raw);
    assert_int_equal(wire_decode_trailer(raw, 64, 0, &out), 0);
    assert_true(out.revoked == ~0ull);

    /* revoked entries must have been sent */
    t.revoked = 0x4;
    wire_encode_trailer(&t, raw);
    assert_int_equal(wire_decode_trailer(raw, 3, 0x4, &out), FERRY_EPROTO); /* refused in the header */
    assert_non_null(strstr(ferry_last_error(), "not sent"));
    assert_int_equal(wire_decode_trailer(raw, 2, 0, &out), FERRY_EPROTO); /* no entry 2 */
    raw[0] ^= 0xff;
    assert_int_equal(wire_decode_trailer(raw, 3, 0, &out), FERRY_EPROTO);
    assert_non_null(strstr(ferry_last_error(), "magic"));
}

/* The trailer's status (WIRE_FLAG_TRAILER_STATUS): a device copy of the
 * target failed mid-response. */
static void test_trailer_status(void **state)
{
    (void)state;
    uint8_t raw[WIRE_TRAILER_SIZE];
    struct wire_trailer t = {.status = FERRY_EIO, .revoked = 0x1}, out;
    wire_encode_trailer(&t, raw);
    assert_true(raw[4] == (uint8_t)FERRY_EIO && raw[7] == 0xff); /* little-endian int32 after the magic */
    assert_int_equal(wire_decode_trailer(raw, 2, 0, &out), 0);
    assert_int_equal(out.status, FERRY_EIO);
    assert_true(out.revoked == 0x1);
    t = (struct wire_trailer){.status = FERRY_EINVAL}; /* not a status a target sends */
    wire_encode_trailer(&t, raw);
    assert_int_equal(wire_decode_trailer(raw, 2, 0, &out), FERRY_EPROTO);
    assert_non_null(strstr(ferry_last_error(), "status"));
    t.status = 12345;
    wire_encode_trailer(&t, raw);
    assert_int_equal(wire_decode_trailer(raw, 2, 0, &out), FERRY_EPROTO);
}

/* A peer's tcp endpoint comes from its descriptor, which a metadata store
 * or the peer wrote: its host reaches connects and messages, its port an
 * int. */
static void test_endpoint(void **state)
{
    (void)state;
    char host[WIRE_HOST_MAX];
    int port = 0;
    assert_int_equal(wire_decode_endpoint("{\"host\":\"10.0.0.7\",\"port\":7000}", host, &port), 0);
    assert_string_equal(host, "10.0.0.7");
    assert_int_equal(port, 7000);
    assert_int_equal(wire_decode_endpoint("{\"host\":\"node-3.rack_a\",\"port\":65535}", host, &port), 0);
    assert_int_equal(port, 65535);
    static const char *const bad[] = {
        "{\"host\":\"10.0.0.7\\nFORGED\",\"port\":7000}",   /* a newline for the logs */
        "{\"host\":\"\\u001b[2J\",\"port\":7000}",
        "{\"host\":\"a b\",\"port\":7000}",
        "{\"host\":\"\",\"port\":7000}",
        "{\"host\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\"port\":7000}",
        "{\"host\":7,\"port\":7000}",
        "{\"host\":\"h\",\"port\":7000.5}",                    /* was taken as 7000 */
        "{\"host\":\"h\",\"port\":0}",
        "{\"host\":\"h\",\"port\":65536}",
        "{\"host\":\"h\",\"port\":-1}",
        "{\"host\":\"h\",\"port\":1e300}",
        "{\"host\":\"h\",\"port\":\"7000\"}",
        "{\"host\":\"h\"}",
        "[\"h\",7000]",
        "not json",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ferry_clear_error();
        if (wire_decode_endpoint(bad[i], host, &port) != FERRY_EPROTO)
            fail_msg("endpoint %s was taken", bad[i]);
        assert_non_null(strstr(ferry_last_error(), "tcp endpoint"));
        assert_null(strchr(ferry_last_error(), '\n'));
        assert_null(strchr(ferry_last_error(), 0x1b));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_round_trip_every_type),
        cmocka_unit_test(test_entries_round_trip),
        cmocka_unit_test(test_bad_magic),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_unknown_type),
        cmocka_unit_test(test_entries_count),
        cmocka_unit_test(test_payload_limits),
        cmocka_unit_test(test_entries_validation),
        cmocka_unit_test(test_trailer),
        cmocka_unit_test(test_trailer_status),
        cmocka_unit_test(test_endpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

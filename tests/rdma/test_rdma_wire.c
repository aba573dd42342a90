/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_rdma_wire.c — the rdma transport's codecs, on any host (no RDMA device
 * needed): side-channel headers and queue-pair info (layout, round trips,
 * every rejection), messages over a socket pair, and the endpoint JSON a
 * target publishes (round trip, sorting, MR lookup at the edges, and each
 * malformed field refused with FERRY_EPROTO and a message naming it), the
 * bounce a target announces and the staging messages against it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "net.h"
#include "transport/rdma/rdma_wire.h"

static int decode_header(uint16_t type, int32_t status, uint32_t len, struct rdma_msg_header *out)
{
    struct rdma_msg_header h = {.type = type, .status = status, .len = len, .id = 0x1122334455667788ull};
    uint8_t raw[RDMA_MSG_HEADER_SIZE];
    rdma_msg_encode_header(&h, raw);
    ferry_clear_error();
    return rdma_msg_decode_header(raw, out);
}

static void test_header_layout_and_round_trip(void **state)
{
    (void)state;
    struct rdma_msg_header h = {.type = RDMA_MSG_NOTIFY, .status = 0, .len = 3, .id = 0x0102030405060708ull}, out;
    uint8_t raw[RDMA_MSG_HEADER_SIZE];
    rdma_msg_encode_header(&h, raw);
    static const uint8_t want[RDMA_MSG_HEADER_SIZE] = {'F', 'R', 'D', 'M', 2, 0, 3, 0, 0, 0, 0, 0,
                                                       3,   0,   0,   0,   8, 7, 6, 5, 4, 3, 2, 1};
    assert_memory_equal(raw, want, sizeof want);
    assert_int_equal(rdma_msg_decode_header(raw, &out), 0);
    assert_int_equal(out.type, RDMA_MSG_NOTIFY);
    assert_int_equal(out.len, 3);
    assert_true(out.id == h.id);
    assert_int_equal(decode_header(RDMA_MSG_HELLO, 0, RDMA_QP_INFO_SIZE + 5, &out), 0);
    assert_int_equal(decode_header(RDMA_MSG_HELLO_ACK, 0, RDMA_QP_INFO_SIZE, &out), 0);
    assert_int_equal(decode_header(RDMA_MSG_HELLO_ACK, FERRY_ESTALE, 20, &out), 0);
    assert_int_equal(out.status, FERRY_ESTALE);
    assert_int_equal(decode_header(RDMA_MSG_NOTIFY, 0, RDMA_MAX_NOTIFY, &out), 0);
    assert_int_equal(decode_header(RDMA_MSG_NOTIFY_ACK, FERRY_ENOMEM, 0, &out), 0);
    assert_int_equal(decode_header(RDMA_MSG_STAGE_ACK, FERRY_EIO, 8 + 5, &out), 0);
    assert_int_equal(out.status, FERRY_EIO);
    assert_int_equal(decode_header(RDMA_MSG_STAGE_ACK, FERRY_ERANGE, 8, &out), 0);
    assert_int_equal(decode_header(RDMA_MSG_HELLO_ACK, FERRY_EPERM, 8, &out), 0);
}

static void expect_header_fails(uint16_t type, int32_t status, uint32_t len, int code, const char *needle)
{
    struct rdma_msg_header out;
    int rc = decode_header(type, status, len, &out);
    if (rc != code || !strstr(ferry_last_error(), needle))
        fail_msg("type %u status %d len %u: %s \"%s\", expected %s \"%s\"", type, status, len, ferry_err_name(rc),
                 ferry_last_error(), ferry_err_name(code), needle);
}

static void test_header_rejections(void **state)
{
    (void)state;
    struct rdma_msg_header out;
    uint8_t raw[RDMA_MSG_HEADER_SIZE];
    struct rdma_msg_header h = {.type = RDMA_MSG_NOTIFY_ACK};
    rdma_msg_encode_header(&h, raw);
    raw[0] ^= 1;
    assert_int_equal(rdma_msg_decode_header(raw, &out), FERRY_EPROTO);
    assert_non_null(strstr(ferry_last_error(), "magic"));
    raw[0] ^= 1;
    raw[4] = 1; /* the side channel before target-side staging */
    assert_int_equal(rdma_msg_decode_header(raw, &out), FERRY_EVERSION);
    assert_non_null(strstr(ferry_last_error(), "version 1, this build speaks 2"));
    raw[4] = RDMA_MSG_VERSION + 1;
    assert_int_equal(rdma_msg_decode_header(raw, &out), FERRY_EVERSION);
    expect_header_fails(0, 0, 0, FERRY_EPROTO, "unknown message type");
    expect_header_fails(9, 0, 0, FERRY_EPROTO, "unknown message type");
    expect_header_fails(RDMA_MSG_HELLO, 0, RDMA_QP_INFO_SIZE - 1, FERRY_EPROTO, "carries");
    expect_header_fails(RDMA_MSG_HELLO, 0, RDMA_QP_INFO_SIZE + RDMA_MAX_NAME + 1, FERRY_EPROTO, "carries");
    expect_header_fails(RDMA_MSG_HELLO_ACK, 0, 0, FERRY_EPROTO, "carries");
    expect_header_fails(RDMA_MSG_HELLO_ACK, FERRY_EIO, RDMA_MAX_TEXT + 1, FERRY_EPROTO, "carries");
    expect_header_fails(RDMA_MSG_NOTIFY, 0, RDMA_MAX_NOTIFY + 1, FERRY_EPROTO, "carries");
    expect_header_fails(RDMA_MSG_NOTIFY_ACK, 0, 1, FERRY_EPROTO, "carries");
    expect_header_fails(RDMA_MSG_NOTIFY_ACK, 5, 0, FERRY_EPROTO, "which no ferry peer sends");
    expect_header_fails(RDMA_MSG_NOTIFY_ACK, -1000, 0, FERRY_EPROTO, "which no ferry peer sends");
}

/* A hostile target must not end the initiator's requests with a code that
 * means something else on this side: FERRY_ENOTREG ("your memory is not
 * registered"), FERRY_EINVAL, FERRY_ENOSEG...  (tcp: wire_status_allowed).
 * Before: any status in -100..-1 passed, in every message type. */
static void test_header_status_allowed(void **state)
{
    (void)state;
    static const int32_t never[] = {FERRY_EINVAL, FERRY_ENOTREG, FERRY_ENOSEG, FERRY_EEXIST, FERRY_EFULL,
                                    FERRY_ECANCELED, FERRY_ENOTSUP, -77};
    for (size_t i = 0; i < sizeof never / sizeof never[0]; i++) {
        expect_header_fails(RDMA_MSG_STAGE_ACK, never[i], 8, FERRY_EPROTO, "which no ferry peer sends");
        expect_header_fails(RDMA_MSG_NOTIFY_ACK, never[i], 0, FERRY_EPROTO, "which no ferry peer sends");
        expect_header_fails(RDMA_MSG_HELLO_ACK, never[i], 8, FERRY_EPROTO, "which no ferry peer sends");
    }
    expect_header_fails(RDMA_MSG_HELLO_ACK, FERRY_ERANGE, 8, FERRY_EPROTO, "status -");
    expect_header_fails(RDMA_MSG_STAGE_ACK, FERRY_ESTALE, 8, FERRY_EPROTO, "status -");
    /* requests carry no status at all */
    expect_header_fails(RDMA_MSG_HELLO, FERRY_EIO, RDMA_QP_INFO_SIZE, FERRY_EPROTO, "which no ferry peer sends");
    expect_header_fails(RDMA_MSG_NOTIFY, FERRY_EIO, 1, FERRY_EPROTO, "which no ferry peer sends");
    expect_header_fails(RDMA_MSG_STAGE_WRITE, FERRY_EIO, 8 + RDMA_STAGE_ENTRY_SIZE, FERRY_EPROTO,
                        "which no ferry peer sends");
    expect_header_fails(RDMA_MSG_STAGE_READ, FERRY_EIO, 8 + RDMA_STAGE_ENTRY_SIZE, FERRY_EPROTO,
                        "which no ferry peer sends");
    assert_true(rdma_status_allowed(RDMA_MSG_STAGE_ACK, 0));
    assert_false(rdma_status_allowed(RDMA_MSG_STAGE_ACK, FERRY_ENOTREG));
}

/* A target's reason for a failed stage reaches the initiator's error text
 * and logs: printable only (was formatted raw: "\n" started a forged line). */
static void test_stage_ack_reason(void **state)
{
    (void)state;
    uint8_t payload[8 + 40] = {0};
    const char *evil = "copy failed\nferry[1] error: forged";
    memcpy(payload + 8, evil, strlen(evil));
    char out[RDMA_MAX_TEXT + 1];
    const char *why = rdma_stage_ack_reason(payload, 8 + (uint32_t)strlen(evil), out, sizeof out);
    assert_ptr_equal(why, out);
    assert_string_equal(out, "copy failed\\x0aferry[1] error: forged");
    assert_null(strchr(out, '\n'));
    assert_string_equal(rdma_stage_ack_reason(payload, 8, out, sizeof out), "");
    assert_string_equal(rdma_stage_ack_reason(payload, 0, out, sizeof out), "");
}

static struct rdma_qp_info good_info(void)
{
    struct rdma_qp_info q = {.qpn = 0x123456, .psn = 0xabcdef, .lid = 7, .mtu = 3, .rd_atomic = 16, .nic = 2,
                             .engine_id = 0xfeedfacecafebeefull};
    for (int i = 0; i < 16; i++)
        q.gid[i] = (uint8_t)(i * 17);
    return q;
}

static void expect_info(struct rdma_qp_info q, int code)
{
    uint8_t raw[RDMA_QP_INFO_SIZE];
    struct rdma_qp_info out;
    rdma_qp_info_encode(&q, raw);
    assert_int_equal(rdma_qp_info_decode(raw, &out), code);
    if (code == 0)
        assert_memory_equal(&out, &q, sizeof q);
}

static void test_qp_info(void **state)
{
    (void)state;
    struct rdma_qp_info q = good_info();
    expect_info(q, 0);
    q.qpn = 0;
    expect_info(q, FERRY_EPROTO);
    q = good_info(), q.qpn = 1u << 24;
    expect_info(q, FERRY_EPROTO);
    q = good_info(), q.psn = 1u << 24;
    expect_info(q, FERRY_EPROTO);
    q = good_info(), q.mtu = 0;
    expect_info(q, FERRY_EPROTO);
    q = good_info(), q.mtu = 6;
    expect_info(q, FERRY_EPROTO);
    q = good_info(), q.rd_atomic = 0;
    expect_info(q, FERRY_EPROTO);
    q = good_info(), q.nic = RDMA_MAX_NICS;
    expect_info(q, FERRY_EPROTO);
    assert_non_null(strstr(ferry_last_error(), "nic index"));
}

static void test_messages_over_a_socket(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct rdma_msg_header h = {.type = RDMA_MSG_NOTIFY, .id = 9}, in;
    char buf[RDMA_MAX_NOTIFY];
    assert_int_equal(rdma_msg_send(sv[0], &h, "kv-", 3, "ready", 5), 0);
    assert_int_equal(rdma_msg_recv(sv[1], &in, buf, sizeof buf), 0);
    assert_int_equal(in.len, 8);
    assert_memory_equal(buf, "kv-ready", 8);
    /* a payload larger than the caller expects here */
    assert_int_equal(rdma_msg_send(sv[0], &h, "x", 1, NULL, 0), 0);
    assert_int_equal(rdma_msg_recv(sv[1], &in, NULL, 0), FERRY_EPROTO);
    close(sv[0]);
    assert_int_equal(rdma_msg_recv(sv[1], &in, buf, sizeof buf), FERRY_ECONN);
    close(sv[1]);
}

/* A side-channel peer that sends a message's header and drips its payload a
 * byte at a time, each well within the socket's receive timeout: the whole
 * message has that timeout, so the reader is not held for one per byte. */
struct dripper {
    int fd;
    size_t sent;
};

static void *drip_payload(void *arg)
{
    struct dripper *d = arg;
    struct rdma_msg_header h = {.type = RDMA_MSG_NOTIFY, .id = 1, .len = 200};
    uint8_t raw[RDMA_MSG_HEADER_SIZE];
    rdma_msg_encode_header(&h, raw);
    if (send(d->fd, raw, sizeof raw, MSG_NOSIGNAL) != (ssize_t)sizeof raw)
        return NULL;
    for (; d->sent < 200; d->sent++) {
        if (send(d->fd, "d", 1, MSG_NOSIGNAL) != 1)
            break;
        struct timespec t = {0, 100 * 1000000L};
        nanosleep(&t, NULL);
    }
    return NULL;
}

static void test_dripped_message_times_out(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct timeval tv = {0, 300 * 1000};
    assert_int_equal(setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    struct dripper d = {.fd = sv[0]};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, drip_payload, &d), 0);
    struct rdma_msg_header in;
    char buf[RDMA_MAX_NOTIFY];
    assert_int_equal(rdma_msg_recv(sv[1], &in, buf, sizeof buf), FERRY_ETIMEDOUT);
    close(sv[1]); /* the dripper's next send fails */
    pthread_join(th, NULL);
    print_message("  gave up after %zu of 200 dripped bytes\n", d.sent);
    assert_true(d.sent < 200);
    close(sv[0]);
}

/* The initiator's HELLO shares the deadline of the connect and the
 * authentication before it: a target that takes the HELLO and never
 * answers, on a socket whose own timeouts are 10 s (path_connect sets
 * FERRY_CONNECT_TIMEOUT_MS there), ends FERRY_ETIMEDOUT at the deadline
 * given, 300 ms away (before: a fresh receive timeout after the connect's
 * deadline, so connect + authentication + HELLO took up to twice
 * FERRY_CONNECT_TIMEOUT_MS, the send a third).  The 5 s bound is a hang
 * bound, not a speed check. */
static void test_hello_shares_the_connect_deadline(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct timeval tv = {10, 0};
    assert_int_equal(setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
    assert_int_equal(setsockopt(sv[1], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv), 0);
    uint8_t info[RDMA_QP_INFO_SIZE] = {0}, buf[RDMA_QP_INFO_SIZE + RDMA_MAX_TEXT + 1];
    struct rdma_msg_header h;
    uint64_t t0 = now_ns();
    int rc = rdma_hello_exchange(sv[1], info, "me:1", 4, t0 + 300 * 1000000ull, &h, buf, sizeof buf);
    uint64_t took_ms = (now_ns() - t0) / 1000000u;
    print_message("  a silent target: %s after %llu ms\n", ferry_err_name(rc), (unsigned long long)took_ms);
    assert_int_equal(rc, FERRY_ETIMEDOUT);
    assert_true(took_ms < 5000);
    uint8_t raw[RDMA_MSG_HEADER_SIZE]; /* the HELLO did go out */
    assert_int_equal(recv(sv[0], raw, sizeof raw, MSG_DONTWAIT), (ssize_t)sizeof raw);
    assert_int_equal(rdma_msg_decode_header(raw, &h), 0);
    assert_int_equal(h.type, RDMA_MSG_HELLO);
    /* a deadline already past: no wait at all, the same code */
    assert_int_equal(rdma_hello_exchange(sv[1], info, "me:1", 4, now_ns(), &h, buf, sizeof buf), FERRY_ETIMEDOUT);
    close(sv[0]);
    close(sv[1]);
}

/* ------------------------------------------------------------ endpoint */

static struct rdma_endpoint sample(struct rdma_remote_mr *mrs)
{
    struct rdma_endpoint ep = {.port = 4242, .nnics = 2, .nmrs = 3, .mrs = mrs};
    strcpy(ep.host, "10.0.0.1");
    strcpy(ep.nics[0].name, "mlx5_0");
    strcpy(ep.nics[1].name, "mlx5_1");
    ep.nics[0].mtu = 5, ep.nics[1].mtu = 3;
    ep.nics[1].link_ib = 1, ep.nics[1].lid = 12;
    ep.nics[0].numa = 0, ep.nics[1].numa = -1;
    for (int i = 0; i < 16; i++)
        ep.nics[0].gid[i] = (uint8_t)(0xf0 + i), ep.nics[1].gid[i] = (uint8_t)i;
    mrs[0] = (struct rdma_remote_mr){.addr = 0x7f0000300000ull, .len = 0x1000, .pref = 2, .rkey = {5, 6}};
    mrs[1] = (struct rdma_remote_mr){.addr = 0x7f0000100000ull, .len = 0x100000, .pref = 1, .rkey = {1, 0xffffffffu}};
    mrs[2] = (struct rdma_remote_mr){.addr = 0xffff800000000000ull, .len = 0x10, .pref = 3, .rkey = {3, 4}};
    return ep;
}

static void test_endpoint_round_trip(void **state)
{
    (void)state;
    struct rdma_remote_mr mrs[3];
    struct rdma_endpoint ep = sample(mrs), back;
    char *json = NULL;
    assert_int_equal(rdma_endpoint_encode(&ep, &json), 0);
    assert_int_equal(rdma_endpoint_decode(json, &back), 0);
    free(json);
    assert_string_equal(back.host, "10.0.0.1");
    assert_int_equal(back.port, 4242);
    assert_int_equal(back.nnics, 2);
    assert_memory_equal(&back.nics, &ep.nics, 2 * sizeof ep.nics[0]);
    assert_int_equal(back.nmrs, 3);
    /* sorted by address */
    assert_true(back.mrs[0].addr == mrs[1].addr && back.mrs[0].rkey[1] == 0xffffffffu);
    assert_true(back.mrs[1].addr == mrs[0].addr && back.mrs[1].pref == 2);
    assert_true(back.mrs[2].addr == mrs[2].addr);
    /* lookups at the edges */
    assert_ptr_equal(rdma_endpoint_find_mr(&back, 0x7f0000100000ull, 0x100000), &back.mrs[0]);
    assert_null(rdma_endpoint_find_mr(&back, 0x7f0000100000ull, 0x100001));
    assert_null(rdma_endpoint_find_mr(&back, 0x7f00000fffffull, 2));
    assert_ptr_equal(rdma_endpoint_find_mr(&back, 0x7f0000300fffull, 1), &back.mrs[1]);
    assert_null(rdma_endpoint_find_mr(&back, 0x7f0000300fffull, 0));
    assert_null(rdma_endpoint_find_mr(&back, 0xfffffffffffffff0ull, 0x20)); /* wraps */
    assert_ptr_equal(rdma_endpoint_find_mr(&back, 0xffff80000000000full, 1), &back.mrs[2]);
    rdma_endpoint_free(&back);
}

static void expect_endpoint_fails(const char *json, const char *needle)
{
    struct rdma_endpoint ep;
    ferry_clear_error();
    int rc = rdma_endpoint_decode(json, &ep);
    rdma_endpoint_free(&ep);
    if (rc != FERRY_EPROTO || !strstr(ferry_last_error(), needle))
        fail_msg("%s: %s \"%s\", expected FERRY_EPROTO \"%s\"", json, ferry_err_name(rc), ferry_last_error(), needle);
}

#define NIC "{\"name\":\"rxe0\",\"gid\":\"00000000000000000000ffff0a000001\",\"lid\":0,\"mtu\":3,\"link\":\"eth\"}"
#define MR "{\"addr\":\"0x1000\",\"len\":\"0x1000\",\"rkey\":[7],\"pref\":1}"

static void test_endpoint_rejections(void **state)
{
    (void)state;
    struct rdma_endpoint ep;
    assert_int_equal(rdma_endpoint_decode("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[" MR "]}", &ep), 0);
    assert_int_equal(ep.nics[0].numa, -1); /* absent: unknown */
    rdma_endpoint_free(&ep);
    /* an IPv6 listener's bare address is a host; text for a log line is not (rev5) */
    assert_int_equal(rdma_endpoint_decode("{\"host\":\"fe80::1%eth0\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[" MR
                                          "]}", &ep), 0);
    rdma_endpoint_free(&ep);
    expect_endpoint_fails("{\"host\":\"h\\nFORGED\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[]}", "\"host\"");
    expect_endpoint_fails("{\"host\":\"\\u001b[2J\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[]}", "\"host\"");
    expect_endpoint_fails("{\"host\":\"::1::2\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[]}", "\"host\"");
    expect_endpoint_fails("not json", "not valid JSON");
    expect_endpoint_fails("[1]", "not a JSON object");
    expect_endpoint_fails("{\"port\":1,\"nics\":[" NIC "],\"mrs\":[]}", "\"host\"");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":0,\"nics\":[" NIC "],\"mrs\":[]}", "port 0");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":70000,\"nics\":[" NIC "],\"mrs\":[]}", "\"port\"");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1.5,\"nics\":[" NIC "],\"mrs\":[]}", "\"port\"");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[],\"mrs\":[]}", "0 nics");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"mrs\":[]}", "\"nics\"");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "," NIC "," NIC "," NIC "," NIC "," NIC "," NIC
                          "," NIC "," NIC "," NIC "," NIC "," NIC "," NIC "," NIC "," NIC "," NIC "," NIC "],\"mrs\":[]}",
                          "17 nics");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[{\"name\":\"x\",\"gid\":\"00\",\"lid\":0,\"mtu\":3,"
                          "\"link\":\"eth\"}],\"mrs\":[]}", "32 hex");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[{\"name\":\"x\",\"gid\":\"0000000000000000000000000000"
                          "00zz\",\"lid\":0,\"mtu\":3,\"link\":\"eth\"}],\"mrs\":[]}", "not hex");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[{\"name\":\"x\",\"gid\":\"0000000000000000000000000000"
                          "0000\",\"lid\":0,\"mtu\":3,\"link\":\"roce\"}],\"mrs\":[]}", "neither ib nor eth");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[{\"name\":\"x\",\"gid\":\"0000000000000000000000000000"
                          "0000\",\"lid\":0,\"mtu\":6,\"link\":\"eth\"}],\"mrs\":[]}", "\"mtu\"");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[{\"addr\":\"0x1000\",\"len\":\"0x0\","
                          "\"rkey\":[7],\"pref\":1}]}", "empty or wraps");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[{\"addr\":\"0xfffffffffffff000\","
                          "\"len\":\"0x2000\",\"rkey\":[7],\"pref\":1}]}", "empty or wraps");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[{\"addr\":\"4096\",\"len\":\"0x10\","
                          "\"rkey\":[7],\"pref\":1}]}", "0x-hex");
    /* strtoull would read each of these as a number (0x-1000: 2^64 - 4096) */
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[{\"addr\":\"0x-1000\",\"len\":\"0x10\","
                          "\"rkey\":[7],\"pref\":1}]}", "\"addr\" missing or not 0x-hex");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[{\"addr\":\"0x1000\",\"len\":\"0x 10\","
                          "\"rkey\":[7],\"pref\":1}]}", "\"len\" missing or not 0x-hex");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[{\"addr\":\"0x0x1000\",\"len\":\"0x10\","
                          "\"rkey\":[7],\"pref\":1}]}", "\"addr\" missing or not 0x-hex");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[{\"addr\":\"0x1000\",\"len\":\"0x+10\","
                          "\"rkey\":[7],\"pref\":1}]}", "\"len\" missing or not 0x-hex");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[{\"addr\":\"0x1000\",\"len\":\"0x10\","
                          "\"rkey\":[7,8],\"pref\":1}]}", "one rkey per nic");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[{\"addr\":\"0x1000\",\"len\":\"0x10\","
                          "\"rkey\":[-1],\"pref\":1}]}", "bad rkey");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[" MR ",{\"addr\":\"0x1800\","
                          "\"len\":\"0x10\",\"rkey\":[7],\"pref\":1}]}", "overlap");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[3]}", "not an object");
}

static void expect_bounce(struct rdma_bounce_info b, int code, const char *needle)
{
    uint8_t raw[RDMA_BOUNCE_INFO_SIZE];
    struct rdma_bounce_info out;
    rdma_bounce_info_encode(&b, raw);
    ferry_clear_error();
    int rc = rdma_bounce_info_decode(raw, &out);
    if (rc != code || (needle && !strstr(ferry_last_error(), needle)))
        fail_msg("bounce %u x %u at 0x%llx: %s \"%s\", expected %s \"%s\"", b.slots, b.slot_size,
                 (unsigned long long)b.addr, ferry_err_name(rc), ferry_last_error(), ferry_err_name(code),
                 needle ? needle : "");
    if (code == 0) { /* field by field: the struct's tail padding is not encoded */
        assert_int_equal(out.addr, b.addr);
        assert_int_equal(out.rkey, b.rkey);
        assert_int_equal(out.slots, b.slots);
        assert_int_equal(out.slot_size, b.slot_size);
    }
}

static void test_bounce_info(void **state)
{
    (void)state;
    expect_bounce((struct rdma_bounce_info){0x7f0000000000ull, 0x1234, 4, 1 << 20}, 0, NULL);
    expect_bounce((struct rdma_bounce_info){0, 0, 0, 0}, 0, NULL); /* staging off */
    expect_bounce((struct rdma_bounce_info){0x1000, 1, RDMA_STAGE_MAX_SLOTS + 1, 4096}, FERRY_EPROTO, "slots");
    expect_bounce((struct rdma_bounce_info){0x1000, 1, 2, 4095}, FERRY_EPROTO, "slots of");
    expect_bounce((struct rdma_bounce_info){0x1000, 1, 2, (1u << 30) + 1}, FERRY_EPROTO, "slots of");
    expect_bounce((struct rdma_bounce_info){0xfffffffffffff000ull, 1, 2, 4096}, FERRY_EPROTO, "wraps");
    struct rdma_msg_header out;
    assert_int_equal(decode_header(RDMA_MSG_HELLO_ACK, 0, RDMA_QP_INFO_SIZE + RDMA_BOUNCE_INFO_SIZE, &out), 0);
    expect_header_fails(RDMA_MSG_HELLO_ACK, 0, RDMA_QP_INFO_SIZE + RDMA_BOUNCE_INFO_SIZE + 1, FERRY_EPROTO, "carries");
}

static void expect_stage_fails(const uint8_t *raw, size_t len, const char *needle)
{
    struct rdma_stage_entry e[RDMA_STAGE_ENTRIES];
    uint32_t slot, n;
    ferry_clear_error();
    int rc = rdma_stage_decode(raw, len, 4, 65536, &slot, e, &n);
    if (rc != FERRY_EPROTO || !strstr(ferry_last_error(), needle))
        fail_msg("stage message of %zu bytes: %s \"%s\", expected FERRY_EPROTO \"%s\"", len, ferry_err_name(rc),
                 ferry_last_error(), needle);
}

static void test_stage_messages(void **state)
{
    (void)state;
    struct rdma_stage_entry in[3] = {{0x7f0000001000ull, 0, 4096}, {0x7f0000100000ull, 4096, 60000},
                                     {0x10, 65535, 1}}, e[RDMA_STAGE_ENTRIES];
    uint8_t raw[RDMA_STAGE_MSG_MAX];
    size_t len = rdma_stage_encode(3, in, 3, raw);
    assert_int_equal(len, 8 + 3 * RDMA_STAGE_ENTRY_SIZE);
    uint32_t slot, n;
    assert_int_equal(rdma_stage_decode(raw, len, 4, 65536, &slot, e, &n), 0);
    assert_int_equal(slot, 3);
    assert_int_equal(n, 3);
    assert_memory_equal(e, in, sizeof in);
    /* the header admits them; the payload is checked against the bounce */
    struct rdma_msg_header h;
    assert_int_equal(decode_header(RDMA_MSG_STAGE_WRITE, 0, (uint32_t)len, &h), 0);
    assert_int_equal(decode_header(RDMA_MSG_STAGE_READ, 0, RDMA_STAGE_MSG_MAX, &h), 0);
    assert_int_equal(decode_header(RDMA_MSG_STAGE_ACK, FERRY_EIO, 8 + RDMA_MAX_TEXT, &h), 0);
    expect_header_fails(RDMA_MSG_STAGE_WRITE, 0, 8, FERRY_EPROTO, "carries");
    expect_header_fails(RDMA_MSG_STAGE_READ, 0, RDMA_STAGE_MSG_MAX + 1, FERRY_EPROTO, "carries");
    expect_header_fails(RDMA_MSG_STAGE_ACK, 0, 7, FERRY_EPROTO, "carries");
    expect_header_fails(RDMA_MSG_STAGE_ACK, 0, 8 + RDMA_MAX_TEXT + 1, FERRY_EPROTO, "carries");
    /* every rejection */
    expect_stage_fails(raw, 4, "4 bytes");
    expect_stage_fails(raw, len - 1, "3 entries in");
    len = rdma_stage_encode(4, in, 3, raw);
    expect_stage_fails(raw, len, "slot 4, the bounce has 4");
    struct rdma_stage_entry bad = {0x1000, 65535, 2};
    len = rdma_stage_encode(0, &bad, 1, raw);
    expect_stage_fails(raw, len, "outside its 65536-byte slot");
    bad = (struct rdma_stage_entry){0x1000, 0, 0};
    len = rdma_stage_encode(0, &bad, 1, raw);
    expect_stage_fails(raw, len, "outside");
    bad = (struct rdma_stage_entry){0xfffffffffffffff0ull, 0, 32};
    len = rdma_stage_encode(0, &bad, 1, raw);
    expect_stage_fails(raw, len, "wrapping");
    len = rdma_stage_encode(0, in, 0, raw);
    expect_stage_fails(raw, len, "0 entries");
    {
        uint8_t many[8] = {0, 0, 0, 0, RDMA_STAGE_ENTRIES + 1, 0, 0, 0};
        expect_stage_fails(many, sizeof many, "65 entries");
    }
}

static void test_endpoint_stage_flag(void **state)
{
    (void)state;
    struct rdma_remote_mr mrs[3];
    struct rdma_endpoint ep = sample(mrs), back;
    char *json = NULL;
    assert_int_equal(rdma_endpoint_encode(&ep, &json), 0);
    assert_null(strstr(json, "stage"));
    assert_int_equal(rdma_endpoint_decode(json, &back), 0);
    assert_int_equal(back.stage, 0);
    free(json);
    rdma_endpoint_free(&back);
    ep.stage = 1;
    assert_int_equal(rdma_endpoint_encode(&ep, &json), 0);
    assert_int_equal(rdma_endpoint_decode(json, &back), 0);
    assert_int_equal(back.stage, 1);
    free(json);
    rdma_endpoint_free(&back);
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[],\"stage\":2}", "\"stage\"");
    expect_endpoint_fails("{\"host\":\"h\",\"port\":1,\"nics\":[" NIC "],\"mrs\":[],\"stage\":\"yes\"}",
                          "\"stage\"");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_layout_and_round_trip),
        cmocka_unit_test(test_header_rejections),
        cmocka_unit_test(test_header_status_allowed),
        cmocka_unit_test(test_stage_ack_reason),
        cmocka_unit_test(test_qp_info),
        cmocka_unit_test(test_messages_over_a_socket),
        cmocka_unit_test(test_dripped_message_times_out),
        cmocka_unit_test(test_hello_shares_the_connect_deadline),
        cmocka_unit_test(test_endpoint_round_trip),
        cmocka_unit_test(test_endpoint_rejections),
        cmocka_unit_test(test_bounce_info),
        cmocka_unit_test(test_stage_messages),
        cmocka_unit_test(test_endpoint_stage_flag),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

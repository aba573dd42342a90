/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_decoders.c — the decoders of peer-controlled bytes outside the
 * transports, one case per refusal the fuzzers of tests/fuzz/ taught
 * (rev6): base64 that is not the canonical spelling; authentication
 * messages with reserved bytes set (HELLO and PROOF at the target,
 * CHALLENGE and RESULT at the initiator, over a socketpair with the
 * initiator on a thread of its own); a handshake head whose version byte is
 * a control character (the detail shows it as a number), a handshake
 * request other than exactly {"op":"descriptor"}; a segment name that does
 * not split (quoted escaped); etcd answers etcd
 * never gives (lease 0, a keepalive for another lease, a TTL that is no
 * number); a Redis reply whose type byte is NUL.  Each refusal has a named
 * code and a detail without control characters.
 *
 * Threads: the auth cases run auth_client on a second thread; the test's
 * thread plays the target.  The order is the protocol's: each side blocks
 * on the other's message, nothing depends on timing.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.h"
#include "base64.h"
#include "err.h"
#include "meta/etcd_reply.h"
#include "meta/p2p.h"
#include "net.h"
#ifdef FERRY_HAVE_REDIS
#include "meta/redis_reply.h"
#endif

static void assert_clean_detail(void)
{
    for (const unsigned char *c = (const unsigned char *)ferry_last_error(); *c; c++)
        assert_true(*c >= 0x20 && *c < 0x7f);
}

/* ------------------------------------------------------------ base64 */

/* "QR==" and "QUJ=" decode (to "A", "AB") only if the bits before the
 * padding are ignored: a second spelling of one value.  Refused. */
static void test_base64_canonical(void **state)
{
    (void)state;
    static const char *const bad[] = {"QR==", "QUJ=", "QX==", "QUL="};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *out = NULL;
        size_t len = 0;
        assert_int_equal(base64_decode(bad[i], &out, &len), FERRY_EPROTO);
        assert_non_null(strstr(ferry_last_error(), "canonical"));
        assert_null(out);
    }
    static const char *const good[] = {"QQ==", "QUI=", "QUJD", ""};
    static const char *const plain[] = {"A", "AB", "ABC", ""};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char *out = NULL;
        size_t len = 0;
        assert_int_equal(base64_decode(good[i], &out, &len), 0);
        assert_int_equal(len, strlen(plain[i]));
        assert_memory_equal(out, plain[i], len);
        free(out);
    }
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(base64_decode("QUJD!A==", &out, &len), FERRY_EPROTO);
    assert_non_null(strstr(ferry_last_error(), "offset 4"));
}

/* ------------------------------------------------------------ authentication */

#define KEY "decoders-test-key-0123"

struct initiator {
    int fd;
    struct auth_key key;
    pthread_t thread;
    int rc;
    char why[256];
};

static void *initiator_main(void *arg)
{
    struct initiator *in = arg;
    in->rc = auth_client(in->fd, &in->key, AUTH_TCP, "target", net_deadline(30000), NULL);
    snprintf(in->why, sizeof in->why, "%s", ferry_last_error());
    return NULL;
}

/* fds[0]: the target's end (this thread); the initiator runs on fds[1]. */
static void initiator_start(struct initiator *in, int fds[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    memset(in, 0, sizeof *in);
    in->fd = fds[1];
    assert_int_equal(auth_key_load(&in->key, KEY, NULL, 1), 0);
    assert_int_equal(pthread_create(&in->thread, NULL, initiator_main, in), 0);
}

static void initiator_join(struct initiator *in, int fds[2])
{
    close(fds[0]); /* an initiator still waiting for an answer gets FERRY_ECONN / EPERM at once */
    pthread_join(in->thread, NULL);
    close(fds[1]);
}

/* The target's first step: reads the HELLO, answers a CHALLENGE (with
 * challenge_edit applied to it first, if given). */
static void target_challenge(int fd, const struct auth_key *k, struct auth_state *st, int reserved_byte)
{
    uint8_t hello[AUTH_HELLO_SIZE], challenge[AUTH_CHALLENGE_SIZE];
    assert_int_equal(net_read_full_deadline(fd, hello, sizeof hello, net_deadline(30000)), 0);
    assert_int_equal(auth_make_challenge(k, AUTH_TCP, hello, sizeof hello, st, challenge), 0);
    if (reserved_byte)
        challenge[reserved_byte] = 1;
    assert_int_equal(net_write_full_deadline(fd, challenge, sizeof challenge, net_deadline(30000)), 0);
}

/* One exchange up to the PROOF: an initiator with KEY on fds[1], the target
 * (this thread, with key_text) on fds[0] has answered its HELLO with a
 * CHALLENGE (reserved_byte set in it, if not 0). The initiator thread holds
 * &in: an exchange stays where it is until exchange_end. */
struct exchange {
    struct auth_key key;
    struct initiator in;
    int fds[2];
    struct auth_state st;
};

static void exchange_begin(struct exchange *x, const char *key_text, int reserved_byte)
{
    assert_int_equal(auth_key_load(&x->key, key_text, NULL, 2), 0);
    initiator_start(&x->in, x->fds);
    target_challenge(x->fds[0], &x->key, &x->st, reserved_byte);
}

static void target_read_proof(struct exchange *x, uint8_t proof[AUTH_PROOF_SIZE])
{
    assert_int_equal(net_read_full_deadline(x->fds[0], proof, AUTH_PROOF_SIZE, net_deadline(30000)), 0);
}

static void target_send_result(struct exchange *x, const uint8_t result[AUTH_RESULT_SIZE])
{
    assert_int_equal(net_write_full_deadline(x->fds[0], result, AUTH_RESULT_SIZE, net_deadline(30000)), 0);
}

static void exchange_end(struct exchange *x)
{
    initiator_join(&x->in, x->fds);
}

/* A HELLO whose reserved bytes 9-15 are set: no encoder writes it. */
static void test_auth_hello_reserved(void **state)
{
    (void)state;
    struct auth_key k;
    assert_int_equal(auth_key_load(&k, KEY, NULL, 2), 0);
    uint8_t hello[AUTH_HELLO_SIZE] = {0}, challenge[AUTH_CHALLENGE_SIZE];
    memcpy(hello, AUTH_MAGIC, 8);
    hello[8] = AUTH_TCP;
    struct auth_state st;
    assert_int_equal(auth_make_challenge(&k, AUTH_TCP, hello, sizeof hello, &st, challenge), 0);
    for (int i = 9; i < 16; i++) {
        hello[i] = 0x80;
        assert_int_equal(auth_make_challenge(&k, AUTH_TCP, hello, sizeof hello, &st, challenge), FERRY_EPROTO);
        assert_non_null(strstr(ferry_last_error(), "reserved"));
        hello[i] = 0;
    }
}

/* A PROOF with the right MAC but a reserved byte set: refused, FERRY_EPERM. */
static void test_auth_proof_reserved(void **state)
{
    (void)state;
    struct exchange x;
    exchange_begin(&x, KEY, 0);
    uint8_t proof[AUTH_PROOF_SIZE], result[AUTH_RESULT_SIZE];
    target_read_proof(&x, proof);
    proof[11] = 1;
    int rc = auth_check_proof(&x.key, &x.st, proof, sizeof proof, result);
    char why[256];
    snprintf(why, sizeof why, "%s", ferry_last_error());
    target_send_result(&x, result);
    exchange_end(&x);
    print_message("  target: %s: %s; initiator: %s\n", ferry_err_name(rc), why, ferry_err_name(x.in.rc));
    assert_int_equal(rc, FERRY_EPERM);
    assert_non_null(strstr(why, "reserved"));
    assert_int_equal(x.in.rc, FERRY_EPERM); /* the initiator hears it was refused */
}

/* A CHALLENGE with the right MAC but a reserved byte set: the initiator
 * refuses it, FERRY_EPROTO, and sends no proof. */
static void test_auth_challenge_reserved(void **state)
{
    (void)state;
    struct exchange x;
    exchange_begin(&x, KEY, 12);
    pthread_join(x.in.thread, NULL); /* it decides on the challenge alone */
    print_message("  initiator: %s: %s\n", ferry_err_name(x.in.rc), x.in.why);
    close(x.fds[0]);
    close(x.fds[1]);
    assert_int_equal(x.in.rc, FERRY_EPROTO);
    assert_non_null(strstr(x.in.why, "reserved"));
}

/* A RESULT "accepted" with a reserved byte set: the initiator refuses it. */
static void test_auth_result_reserved(void **state)
{
    (void)state;
    struct exchange x;
    exchange_begin(&x, KEY, 0);
    uint8_t proof[AUTH_PROOF_SIZE], result[AUTH_RESULT_SIZE];
    target_read_proof(&x, proof);
    assert_int_equal(auth_check_proof(&x.key, &x.st, proof, sizeof proof, result), 0);
    result[15] = 1;
    target_send_result(&x, result);
    exchange_end(&x);
    print_message("  initiator: %s: %s\n", ferry_err_name(x.in.rc), x.in.why);
    assert_int_equal(x.in.rc, FERRY_EPROTO);
    assert_non_null(strstr(x.in.why, "reserved"));
}

/* The whole exchange still passes, and a wrong key still fails. */
static void test_auth_exchange(void **state)
{
    (void)state;
    static const char *const keys[] = {KEY, "another-key-0123456789"};
    for (int i = 0; i < 2; i++) {
        struct exchange x;
        exchange_begin(&x, keys[i], 0);
        if (i == 0) {
            uint8_t proof[AUTH_PROOF_SIZE], result[AUTH_RESULT_SIZE];
            target_read_proof(&x, proof);
            assert_int_equal(auth_check_proof(&x.key, &x.st, proof, sizeof proof, result), 0);
            target_send_result(&x, result);
        }
        exchange_end(&x);
        assert_int_equal(x.in.rc, i == 0 ? 0 : FERRY_EPERM);
    }
}

/* ------------------------------------------------------------ handshake head */

/* The version byte is the peer's: shown as a number, never raw. */
static void test_p2p_head_version_byte(void **state)
{
    (void)state;
    uint8_t head[P2P_HEAD_SIZE] = {'F', 'E', 'R', 'R', 'Y', 'H', 'S', '1', 2, 0, 0, 0};
    uint32_t len = 0;
    assert_int_equal(p2p_decode_head(head, P2P_MAX_REQUEST, &len), 0);
    assert_int_equal(len, 2);
    static const uint8_t versions[] = {'\n', 0x1b, 0, 0xff, '2'};
    for (size_t i = 0; i < sizeof versions; i++) {
        head[7] = versions[i];
        assert_int_equal(p2p_decode_head(head, P2P_MAX_REQUEST, &len), FERRY_EVERSION);
        assert_clean_detail();
        char want[8];
        snprintf(want, sizeof want, "0x%02x", versions[i]);
        assert_non_null(strstr(ferry_last_error(), want));
    }
    head[7] = '1';
    head[10] = 1; /* 64 KiB: one over a request's cap */
    assert_int_equal(p2p_decode_head(head, P2P_MAX_REQUEST, &len), FERRY_EPROTO);
}

static int describe_empty(void *ctx, char **json)
{
    (void)ctx;
    *json = strdup("{\"format\":1}");
    return *json ? 0 : FERRY_ENOMEM;
}

/* Sends one request body to a handshake server and returns its answer's body (malloc'd). */
static char *ask(int port, const char *body)
{
    int fd = net_connect("127.0.0.1", port, 10000);
    assert_true(fd >= 0);
    uint8_t head[P2P_HEAD_SIZE] = {'F', 'E', 'R', 'R', 'Y', 'H', 'S', '1'};
    size_t n = strlen(body);
    head[8] = (uint8_t)n;
    head[9] = (uint8_t)(n >> 8);
    uint64_t deadline = net_deadline(30000);
    assert_int_equal(net_write_full_deadline(fd, head, sizeof head, deadline), 0);
    assert_int_equal(net_write_full_deadline(fd, body, n, deadline), 0);
    uint32_t len = 0;
    assert_int_equal(net_read_full_deadline(fd, head, sizeof head, deadline), 0);
    assert_int_equal(p2p_decode_head(head, P2P_MAX_BODY, &len), 0);
    char *answer = calloc(1, (size_t)len + 1);
    assert_non_null(answer);
    assert_int_equal(net_read_full_deadline(fd, answer, len, deadline), 0);
    close(fd);
    return answer;
}

/* The server answers exactly {"op":"descriptor"}: a request with another
 * member or bytes after the object is refused (it was answered). */
static void test_p2p_request_strict(void **state)
{
    (void)state;
    struct p2p_server_opts o = {.io_timeout_ms = 10000};
    struct p2p_server *s = NULL;
    int port = 0;
    assert_int_equal(p2p_server_start("127.0.0.1", 0, &o, describe_empty, NULL, &s, &port), 0);
    static const struct {
        const char *body;
        bool answered;
    } cases[] = {
        {"{\"op\":\"descriptor\"}", true},
        {"{\"op\":\"descriptor\",\"op2\":1}", false},
        {"{\"op\":\"descriptor\"}{\"op\":\"x\"}", false},
        {"{\"op\":\"descriptor\"}  ", false},
        {"{\"op\":\"other\"}", false},
        {"[\"op\",\"descriptor\"]", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *answer = ask(port, cases[i].body);
        print_message("  %s -> %s\n", cases[i].body, answer);
        assert_int_equal(strcmp(answer, "{\"format\":1}") == 0, cases[i].answered);
        if (!cases[i].answered)
            assert_int_equal(p2p_decode_answer("x", answer, strlen(answer)), FERRY_EPROTO);
        free(answer);
    }
    p2p_server_stop(s);
}

/* ------------------------------------------------------------ names */

/* A segment name may come from a peer (a notification's sender, a bootstrap
 * server's answer): a name that does not split is quoted escaped (found by
 * fuzz_hostport: "[::0\x80...]:80" was quoted raw). */
static void test_name_quoted_escaped(void **state)
{
    (void)state;
    static const char *const names[] = {
        "[::0\x80\x80]:80", "evil\x1b[2J:xx", "fe80::1%\x1b:80", "[::1]\n:80", "a\nb:c:d", "host:\x7f",
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char host[128];
        int port = 0;
        assert_int_equal(net_split_hostport(names[i], host, sizeof host, &port), FERRY_EINVAL);
        print_message("  %s\n", ferry_last_error());
        assert_clean_detail();
        char *json = NULL;
        size_t len = 0;
        assert_int_equal(p2p_fetch(names[i], 1000, &json, &len), FERRY_ENOSEG);
        assert_clean_detail();
    }
    /* what stays: the ambiguous form still names both written forms */
    char host[128];
    int port = 0;
    assert_int_equal(net_split_hostport("::1:8080", host, sizeof host, &port), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "[::1]:8080"));
}

/* ------------------------------------------------------------ etcd answers */

static cJSON *parse(const char *text)
{
    cJSON *j = NULL;
    assert_int_equal(etcd_reply_parse("127.0.0.1", "/v3/lease/keepalive", 200, text, strlen(text), &j), 0);
    return j;
}

static void test_etcd_lease_answers(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        int rc;
    } cases[] = {
        {"{\"result\":{\"ID\":\"42\",\"TTL\":\"60\"}}", 0},
        {"{\"result\":{\"TTL\":\"60\"}}", 0},                     /* no ID: nothing to compare */
        {"{\"result\":{\"ID\":\"42\"}}", FERRY_ENOSEG},           /* expired: etcd omits the zero TTL */
        {"{}", FERRY_ENOSEG},
        {"{\"result\":{\"ID\":\"43\",\"TTL\":\"60\"}}", FERRY_EPROTO}, /* another lease's answer */
        {"{\"result\":{\"ID\":42,\"TTL\":\"60\"}}", FERRY_EPROTO},
        {"{\"result\":{\"ID\":\"42\",\"TTL\":\"abc\"}}", FERRY_EPROTO},
        {"{\"result\":{\"ID\":\"42\",\"TTL\":\"-5\"}}", FERRY_EPROTO},
        {"{\"result\":{\"ID\":\"42\",\"TTL\":\"0\"}}", FERRY_EPROTO},
        {"{\"result\":{\"ID\":\"42\",\"TTL\":60}}", FERRY_EPROTO},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cJSON *j = parse(cases[i].body);
        int rc = etcd_reply_lease_alive(j, "etcd://x", "42");
        cJSON_Delete(j);
        print_message("  %s: %s %s\n", cases[i].body, ferry_err_name(rc), rc ? ferry_last_error() : "");
        assert_int_equal(rc, cases[i].rc);
        assert_clean_detail();
    }
    static const struct {
        const char *id;
        bool ok;
    } ids[] = {{"1", true},          {"9223372036854775807", true}, {"0", false},  {"01", false},
               {"9223372036854775808", false}, {"-1", false},       {"1 ", false}, {"", false}};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        char body[128], lease[ETCD_LEASE_MAX] = "";
        snprintf(body, sizeof body, "{\"ID\":\"%s\",\"TTL\":\"60\"}", ids[i].id);
        cJSON *j = parse(body);
        int rc = etcd_reply_lease_id(j, "etcd://x", lease);
        cJSON_Delete(j);
        assert_int_equal(rc, ids[i].ok ? 0 : FERRY_EPROTO);
        if (ids[i].ok)
            assert_string_equal(lease, ids[i].id);
    }
}

/* ------------------------------------------------------------ Redis replies */

#ifdef FERRY_HAVE_REDIS
static void test_redis_nul_type(void **state)
{
    (void)state;
    redisReader *rd = redisReaderCreate();
    size_t got = 0;
    void *reply = NULL;
    assert_int_equal(redis_reply_feed("redis://x", rd, &got, "\0OK\r\n", 5, &reply), FERRY_EPROTO);
    assert_null(reply);
    assert_non_null(strstr(ferry_last_error(), "0x00"));
    redisReaderFree(rd);
    /* a malformed reply's text from hiredis is sanitized too */
    rd = redisReaderCreate();
    got = 0;
    assert_int_equal(redis_reply_feed("redis://x", rd, &got, ":12\x1b\r\n", 6, &reply), FERRY_EPROTO);
    assert_clean_detail();
    redisReaderFree(rd);
}
#else
static void test_redis_nul_type(void **state) { (void)state; skip(); }
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64_canonical),
        cmocka_unit_test(test_auth_hello_reserved),
        cmocka_unit_test(test_auth_proof_reserved),
        cmocka_unit_test(test_auth_challenge_reserved),
        cmocka_unit_test(test_auth_result_reserved),
        cmocka_unit_test(test_auth_exchange),
        cmocka_unit_test(test_p2p_head_version_byte),
        cmocka_unit_test(test_p2p_request_strict),
        cmocka_unit_test(test_name_quoted_escaped),
        cmocka_unit_test(test_etcd_lease_answers),
        cmocka_unit_test(test_redis_nul_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

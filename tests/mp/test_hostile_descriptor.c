/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_hostile_descriptor.c — an engine opens a segment whose handshake
 * peer answers, in well-formed handshake messages, descriptors an attacker
 * wrote: huge numbers, negative lengths, keys given twice, wrong types,
 * 1 MiB strings, truncated documents, buffers that overlap or wrap the
 * address space, hostile tcp and shm endpoints.  Each open must fail with
 * a named code (FERRY_EPROTO, or FERRY_EVERSION for another format) and a
 * message of one line naming the segment and what was wrong, and the
 * engine must go on: a good descriptor from the same peer opens afterwards.
 * Under ASan an out-of-bounds read or a leak on any of these paths fails
 * the program.
 *
 * The peer is a thread of this process speaking the handshake by hand
 * (src/meta/p2p.h: magic, version, little-endian length, body): an
 * attacker, not a stand-in for ferry.  No case depends on timing.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "ferry.h"
#include "meta/descriptor.h"
#include "meta/p2p.h"
#include "net.h"

/* ------------------------------------------------------------ the peer */

struct peer {
    int lfd, port;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t lock;
    char *body; /* what it answers every request with (owned) */
    size_t len;
};

static void answer(struct peer *p, int fd)
{
    uint8_t head[P2P_HEAD_SIZE];
    uint64_t deadline = net_deadline(5000);
    uint32_t n;
    char req[256];
    if (net_read_full_deadline(fd, head, sizeof head, deadline) || p2p_decode_head(head, sizeof req, &n) ||
        net_read_full_deadline(fd, req, n, deadline))
        return;
    pthread_mutex_lock(&p->lock);
    memcpy(head, P2P_MAGIC, 7);
    head[7] = P2P_VERSION;
    for (int i = 0; i < 4; i++)
        head[8 + i] = (uint8_t)(p->len >> (8 * i));
    struct iovec iov[2] = {{head, sizeof head}, {p->body, p->len}};
    (void)net_writev_full_deadline(fd, iov, 2, deadline);
    pthread_mutex_unlock(&p->lock);
}

static void *peer_main(void *arg)
{
    struct peer *p = arg;
    while (!atomic_load(&p->stop)) {
        struct pollfd pf = {p->lfd, POLLIN, 0};
        if (poll(&pf, 1, 50) <= 0)
            continue;
        int fd = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        answer(p, fd);
        close(fd);
    }
    return NULL;
}

static void peer_start(struct peer *p)
{
    memset(p, 0, sizeof *p);
    pthread_mutex_init(&p->lock, NULL);
    p->lfd = net_listen("127.0.0.1", 0, 10000, &p->port);
    assert_true(p->lfd >= 0);
    assert_int_equal(pthread_create(&p->thread, NULL, peer_main, p), 0);
}

static void peer_say(struct peer *p, const char *body, size_t len)
{
    pthread_mutex_lock(&p->lock);
    free(p->body);
    p->body = malloc(len ? len : 1);
    assert_non_null(p->body);
    memcpy(p->body, body, len);
    p->len = len;
    pthread_mutex_unlock(&p->lock);
}

static void peer_stop(struct peer *p)
{
    atomic_store(&p->stop, true);
    pthread_join(p->thread, NULL);
    close(p->lfd);
    free(p->body);
    pthread_mutex_destroy(&p->lock);
}

/* ------------------------------------------------------------ documents */

#define FP "\"fingerprint\":\"" DESC_FINGERPRINT "\""
#define HEAD "\"format\":1," FP ",\"name\":\"seg\",\"engine_id\":\"0x1\""
#define TCP "\"transports\":{\"tcp\":{\"host\":\"127.0.0.1\",\"port\":7000}}"
#define BUF(a, l) "{\"addr\":\"" a "\",\"len\":\"" l "\",\"location\":\"cpu\"}"
#define ONE_BUFFER "\"buffers\":[" BUF("0x1000", "0x100") "]"
#define DOC(head, transports, buffers) "{" head "," transports "," buffers "}"

struct attack {
    const char *what, *doc;
    int code;
    const char *needle; /* in the message, besides the segment's name */
};

static const struct attack attacks[] = {
    {"huge format", DOC("\"format\":1e400," FP ",\"name\":\"seg\",\"engine_id\":\"0x1\"", TCP, ONE_BUFFER),
     FERRY_EVERSION, "format"},
    {"negative format", DOC("\"format\":-1," FP ",\"name\":\"seg\",\"engine_id\":\"0x1\"", TCP, ONE_BUFFER),
     FERRY_EVERSION, "format"},
    {"format as a string", DOC("\"format\":\"1\"," FP ",\"name\":\"seg\",\"engine_id\":\"0x1\"", TCP, ONE_BUFFER),
     FERRY_EPROTO, "format"},
    {"engine id over 64 bits", DOC("\"format\":1," FP ",\"name\":\"seg\",\"engine_id\":\"0x10000000000000000\"", TCP,
                                   ONE_BUFFER), FERRY_EPROTO, "engine_id"},
    {"engine id as a number", DOC("\"format\":1," FP ",\"name\":\"seg\",\"engine_id\":1e300", TCP, ONE_BUFFER),
     FERRY_EPROTO, "engine_id"},
    {"negative length", DOC(HEAD, TCP, "\"buffers\":[" BUF("0x1000", "-0x100") "]"), FERRY_EPROTO, "len"},
    {"length as a negative number", DOC(HEAD, TCP, "\"buffers\":[{\"addr\":\"0x1000\",\"len\":-256,\"location\":\"cpu\"}]"),
     FERRY_EPROTO, "len"},
    {"length over 64 bits", DOC(HEAD, TCP, "\"buffers\":[" BUF("0x1000", "0x1ffffffffffffffff") "]"), FERRY_EPROTO,
     "len"},
    {"buffer wrapping the address space", DOC(HEAD, TCP, "\"buffers\":[" BUF("0xfffffffffffff000", "0x1001") "]"),
     FERRY_EPROTO, "wraps"},
    {"buffer ending at 2^64", DOC(HEAD, TCP, "\"buffers\":[" BUF("0xfffffffffffff000", "0x1000") "]"), FERRY_EPROTO,
     "wraps"},
    {"overlapping buffers", DOC(HEAD, TCP, "\"buffers\":[" BUF("0x1000", "0x1000") "," BUF("0x1fff", "0x10") "]"),
     FERRY_EPROTO, "overlap"},
    {"the same buffer twice", DOC(HEAD, TCP, "\"buffers\":[" BUF("0x1000", "0x10") "," BUF("0x1000", "0x10") "]"),
     FERRY_EPROTO, "overlap"},
    {"empty buffer", DOC(HEAD, TCP, "\"buffers\":[" BUF("0x1000", "0x0") "]"), FERRY_EPROTO, "empty"},
    {"buffers as an object", DOC(HEAD, TCP, "\"buffers\":{}"), FERRY_EPROTO, "buffers"},
    {"transports as an array", DOC(HEAD, "\"transports\":[]", ONE_BUFFER), FERRY_EPROTO, "transports"},
    {"a key twice", DOC(HEAD ",\"name\":\"evil\"", TCP, ONE_BUFFER), FERRY_EPROTO, "given twice"},
    {"a buffer's key twice",
     DOC(HEAD, TCP, "\"buffers\":[{\"addr\":\"0x1000\",\"len\":\"0x10\",\"len\":\"0xffff\",\"location\":\"cpu\"}]"),
     FERRY_EPROTO, "\"len\" given twice"},
    {"transports twice", DOC(HEAD, TCP ",\"transports\":{\"tcp\":{\"host\":\"10.0.0.1\",\"port\":1}}", ONE_BUFFER),
     FERRY_EPROTO, "\"transports\" given twice"},
    {"a transport twice", DOC(HEAD, "\"transports\":{\"tcp\":{\"host\":\"127.0.0.1\",\"port\":7000},"
                                    "\"tcp\":{\"host\":\"10.0.0.1\",\"port\":1}}", ONE_BUFFER),
     FERRY_EPROTO, "\"tcp\" given twice in \"transports\""},
    {"tcp port out of range", DOC(HEAD, "\"transports\":{\"tcp\":{\"host\":\"127.0.0.1\",\"port\":1e300}}",
                                  ONE_BUFFER), FERRY_EPROTO, "port"},
    {"tcp port negative", DOC(HEAD, "\"transports\":{\"tcp\":{\"host\":\"127.0.0.1\",\"port\":-1}}", ONE_BUFFER),
     FERRY_EPROTO, "port"},
    {"tcp host with a newline", DOC(HEAD, "\"transports\":{\"tcp\":{\"host\":\"a\\nb\",\"port\":1}}", ONE_BUFFER),
     FERRY_EPROTO, "host"},
    {"tcp host as a number", DOC(HEAD, "\"transports\":{\"tcp\":{\"host\":1,\"port\":1}}", ONE_BUFFER),
     FERRY_EPROTO, "host"},
    {"not an object", "[1,2,3]", FERRY_EPROTO, "format"},
    {"truncated", "{\"format\":1," FP ",\"name\":\"se", FERRY_EPROTO, "JSON"},
    {"two documents", DOC(HEAD, TCP, ONE_BUFFER) DOC(HEAD, TCP, ONE_BUFFER), FERRY_EPROTO, "after"},
};

/* ------------------------------------------------------------ cases */

static ferry_engine *engine(const char *protocols)
{
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = protocols;
    cfg.connect_timeout_ms = 5000;
    ferry_engine *e;
    int rc = ferry_engine_create(&cfg, &e);
    if (rc)
        fail_msg("engine: %s: %s", ferry_err_name(rc), ferry_last_error());
    return e;
}

static void expect_refused(ferry_engine *e, const char *name, const char *what, int code, const char *needle)
{
    ferry_segment_t seg;
    int rc = ferry_open_segment(e, name, &seg);
    const char *msg = ferry_last_error();
    print_message("  %s: %s: %.200s\n", what, ferry_err_name(rc), msg);
    if (rc != code || !strstr(msg, name) || !strstr(msg, needle) || strchr(msg, '\n'))
        fail_msg("%s: %s \"%s\", expected %s naming %s and \"%s\" on one line", what, ferry_err_name(rc), msg,
                 ferry_err_name(code), name, needle);
}

/* The good descriptor the peer ends with: the engine opens it (its tcp
 * endpoint is never dialled by an open). */
static void expect_good_opens(ferry_engine *e, struct peer *p, const char *name)
{
    const char *good = DOC(HEAD, TCP, ONE_BUFFER);
    peer_say(p, good, strlen(good));
    ferry_segment_t seg;
    int rc = ferry_open_segment(e, name, &seg);
    if (rc)
        fail_msg("the good descriptor: %s: %s", ferry_err_name(rc), ferry_last_error());
    assert_int_equal(ferry_close_segment(e, seg), 0);
}

static void hostile_documents(void **state)
{
    (void)state;
    struct peer p;
    peer_start(&p);
    char name[64];
    snprintf(name, sizeof name, "127.0.0.1:%d", p.port);
    ferry_engine *e = engine("tcp");
    for (size_t i = 0; i < sizeof attacks / sizeof attacks[0]; i++) {
        peer_say(&p, attacks[i].doc, strlen(attacks[i].doc));
        expect_refused(e, name, attacks[i].what, attacks[i].code, attacks[i].needle);
    }
    expect_good_opens(e, &p, name);
    ferry_engine_destroy(e);
    peer_stop(&p);
}

/* 1 MiB strings where the descriptor has short ones, and one 1 MiB key. */
static void huge_strings(void **state)
{
    (void)state;
    struct peer p;
    peer_start(&p);
    char name[64];
    snprintf(name, sizeof name, "127.0.0.1:%d", p.port);
    ferry_engine *e = engine("tcp");
    size_t big = (size_t)1 << 20;
    char *s = malloc(big + 1), *doc = malloc(big + 1024);
    assert_non_null(s);
    assert_non_null(doc);
    memset(s, 'a', big);
    s[big] = '\0';
    struct {
        const char *what, *fmt, *needle;
    } cases[] = {
        {"1 MiB name", "{\"format\":1," FP ",\"name\":\"%s\",\"engine_id\":\"0x1\"," TCP "," ONE_BUFFER "}", "name"},
        {"1 MiB fingerprint", "{\"format\":1,\"fingerprint\":\"%s\",\"name\":\"seg\",\"engine_id\":\"0x1\"," TCP ","
                              ONE_BUFFER "}", "fingerprint"},
        {"1 MiB engine id", "{" "\"format\":1," FP ",\"name\":\"seg\",\"engine_id\":\"0x%s\"," TCP "," ONE_BUFFER "}",
         "engine_id"},
        {"1 MiB location", "{" HEAD "," TCP ",\"buffers\":[{\"addr\":\"0x1000\",\"len\":\"0x10\",\"location\":\"%s\"}]}",
         "location"},
        {"1 MiB tcp host", "{" HEAD ",\"transports\":{\"tcp\":{\"host\":\"%s\",\"port\":1}}," ONE_BUFFER "}", "host"},
        {"1 MiB transport name", "{" HEAD ",\"transports\":{\"%s\":{}}," ONE_BUFFER "}", "tcp"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int n = snprintf(doc, big + 1024, cases[i].fmt, s);
        assert_true(n > 0 && (size_t)n < big + 1024);
        peer_say(&p, doc, (size_t)n);
        int code = strstr(cases[i].what, "fingerprint") ? FERRY_EVERSION : FERRY_EPROTO;
        if (strstr(cases[i].what, "transport name")) /* a transport no build knows is skipped: none usable */
            code = FERRY_ENOTSUP;
        expect_refused(e, name, cases[i].what, code, cases[i].needle);
    }
    free(s);
    free(doc);
    expect_good_opens(e, &p, name);
    ferry_engine_destroy(e);
    peer_stop(&p);
}

/* An shm endpoint an attacker wrote: numbers out of range, wrong types,
 * a key twice; refused before anything of it is opened. */
static void hostile_shm_endpoints(void **state)
{
    (void)state;
    struct peer p;
    peer_start(&p);
    char name[64];
    snprintf(name, sizeof name, "127.0.0.1:%d", p.port);
    ferry_engine *e = engine("shm");
#define SHM(body) DOC(HEAD, "\"transports\":{\"shm\":{" body "}}", ONE_BUFFER)
#define SHM_OK_NS "\"host\":\"x\",\"pidns\":\"0x1\",\"netns\":\"0x1\""
    static const struct {
        const char *what, *doc, *needle;
    } cases[] = {
        {"pid 1e300", SHM(SHM_OK_NS ",\"pid\":1e300,\"registry_fd\":3,\"shared_fd\":4"), "\"pid\" missing or out of range"},
        {"pid negative", SHM(SHM_OK_NS ",\"pid\":-5,\"registry_fd\":3,\"shared_fd\":4"), "\"pid\" missing or out of range"},
        {"pid 0", SHM(SHM_OK_NS ",\"pid\":0,\"registry_fd\":3,\"shared_fd\":4"), "\"pid\" missing or out of range"},
        {"fd fractional", SHM(SHM_OK_NS ",\"pid\":1,\"registry_fd\":3.5,\"shared_fd\":4"), "\"registry_fd\" missing or out of range"},
        {"fd negative", SHM(SHM_OK_NS ",\"pid\":1,\"registry_fd\":3,\"shared_fd\":-1"), "\"shared_fd\" missing or out of range"},
        {"pidns over 64 bits", SHM("\"host\":\"x\",\"pidns\":\"0x10000000000000000\",\"netns\":\"0x1\",\"pid\":1,"
                                   "\"registry_fd\":3,\"shared_fd\":4"), "\"pidns\" missing or out of range"},
        {"host as a number", SHM("\"host\":7,\"pidns\":\"0x1\",\"netns\":\"0x1\",\"pid\":1,\"registry_fd\":3,"
                                 "\"shared_fd\":4"), "\"host\" missing or out of range"},
        {"pid twice", SHM(SHM_OK_NS ",\"pid\":1,\"pid\":2,\"registry_fd\":3,\"shared_fd\":4"), "given twice"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        peer_say(&p, cases[i].doc, strlen(cases[i].doc));
        expect_refused(e, name, cases[i].what, FERRY_EPROTO, cases[i].needle);
    }
    ferry_engine_destroy(e);
    peer_stop(&p);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hostile_documents),
        cmocka_unit_test(huge_strings),
        cmocka_unit_test(hostile_shm_endpoints),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

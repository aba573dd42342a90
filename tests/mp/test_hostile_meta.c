/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_hostile_meta.c — a metadata store or handshake peer that attacks:
 * a Redis server that drips, floods, answers with the wrong RESP type or
 * never answers; an etcd or HTTP store whose reply is chunked forever, lies
 * in Content-Length or is far too long; a p2p handshake peer that sends
 * garbage or stalls mid-message.  Every lookup must end in a named FERRY_E*
 * code with a message, within its timeout (checked with a generous margin:
 * the attacks would otherwise last far longer) and with bounded memory.
 *
 * Threads: one fake server thread per test (fake_start / fake_stop), serving
 * one connection at a time with the test's attack; the test's thread calls
 * the backend's ops table directly.  Each fake writes by hand what an
 * attacker would: it is an attacker, not a stand-in for a real server.
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
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "err.h"
#include "ferry.h"
#include "meta/meta.h"
#include "meta/p2p.h"
#include "net.h"

#define TIMEOUT_MS 1000u
/* A call bounded by TIMEOUT_MS must end well within this (a loaded machine);
 * each attack below would last far longer if it were not bounded. */
#define BOUND_S 8.0
#define ATTACK_S 30.0

/* ------------------------------------------------------------ fake server */

struct fake;
typedef void (*serve_fn)(struct fake *f, int fd);

struct fake {
    int lfd, port;
    pthread_t thread;
    serve_fn serve;
    atomic_bool stop;
    atomic_ullong sent;      /* attack bytes the client took */
    atomic_int connections;
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void sleep_ms(unsigned ms)
{
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) != 0 && errno == EINTR)
        ;
}

static void *fake_main(void *arg)
{
    struct fake *f = arg;
    while (!atomic_load(&f->stop)) {
        struct pollfd p = {f->lfd, POLLIN, 0};
        if (poll(&p, 1, 50) != 1)
            continue;
        int fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        atomic_fetch_add(&f->connections, 1);
        f->serve(f, fd);
        close(fd);
    }
    return NULL;
}

static const char *fake_host = "127.0.0.1"; /* where fakes listen (test_etcd_over_ipv6: ::1) */

static void fake_start(struct fake *f, serve_fn serve)
{
    memset(f, 0, sizeof *f);
    f->serve = serve;
    f->lfd = net_listen(fake_host, 0, 10000, &f->port);
    assert_true(f->lfd >= 0);
    assert_int_equal(pthread_create(&f->thread, NULL, fake_main, f), 0);
}

static void fake_stop(struct fake *f)
{
    atomic_store(&f->stop, true);
    pthread_join(f->thread, NULL);
    close(f->lfd);
}

/* Sends all of s (MSG_NOSIGNAL); false once the client is gone. */
static bool send_all(struct fake *f, int fd, const void *s, size_t n)
{
    const char *p = s;
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        atomic_fetch_add(&f->sent, (unsigned long long)k);
        p += k;
        n -= (size_t)k;
    }
    return true;
}

static bool send_str(struct fake *f, int fd, const char *s)
{
    return send_all(f, fd, s, strlen(s));
}

/* Waits until the client closes (or the test stops the fake). */
static void hold_until_closed(struct fake *f, int fd)
{
    char sink[4096];
    while (!atomic_load(&f->stop)) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 50) == 1 && recv(fd, sink, sizeof sink, 0) <= 0)
            return;
    }
}

/* Drips s one byte every 20 ms for up to ATTACK_S; false once the client is gone. */
static bool drip(struct fake *f, int fd, const char *s, size_t n)
{
    double end = now_s() + ATTACK_S;
    for (size_t i = 0; now_s() < end && !atomic_load(&f->stop); i++) {
        if (!send_all(f, fd, &s[i % n], 1))
            return false;
        sleep_ms(20);
    }
    return true;
}

/* Streams filler as fast as the client takes it, up to `most` bytes. */
static void flood(struct fake *f, int fd, char c, unsigned long long most)
{
    static char block[65536];
    memset(block, c, sizeof block);
    while (!atomic_load(&f->stop) && atomic_load(&f->sent) < most)
        if (!send_all(f, fd, block, sizeof block))
            return;
    hold_until_closed(f, fd);
}

/* Takes the request and never answers. */
static void say_nothing(struct fake *f, int fd)
{
    hold_until_closed(f, fd);
}

/* ------------------------------------------------------------ Redis */

#ifdef FERRY_HAVE_REDIS

/* Reads one RESP command (an array of bulk strings) and returns its first
 * word ("PING", "GET" ...) in cmd; false when the client is gone. */
static bool read_command(int fd, char *cmd, size_t cap)
{
    char buf[8192];
    size_t have = 0;
    for (;;) {
        /* complete when every announced bulk string is in */
        if (have > 1 && buf[0] == '*') {
            char *p = buf + 1, *end = buf + have;
            long n = strtol(p, &p, 10), i = 0;
            if (p + 2 <= end)
                p += 2;
            cmd[0] = '\0';
            for (; i < n && p < end && *p == '$'; i++) {
                long len = strtol(p + 1, &p, 10);
                if (p + 2 + len + 2 > end)
                    break;
                if (i == 0)
                    snprintf(cmd, cap, "%.*s", (int)len, p + 2);
                p += 2 + len + 2;
            }
            if (i == n)
                return true;
        }
        if (have == sizeof buf)
            return false;
        ssize_t k = recv(fd, buf + have, sizeof buf - have, 0);
        if (k <= 0)
            return false;
        have += (size_t)k;
    }
}

static const char *redis_get_attack;        /* what GET is answered with */
static void (*redis_get_tail)(struct fake *f, int fd);   /* then this, if set */
static void (*redis_del_tail)(struct fake *f, int fd);   /* if set, DEL is answered with this */
static const char *redis_odd_command, *redis_odd_answer;  /* if set, that command is answered with this */

static void serve_redis(struct fake *f, int fd)
{
    char cmd[32];
    while (read_command(fd, cmd, sizeof cmd)) {
        if (strcmp(cmd, "DEL") == 0 && redis_del_tail) {
            redis_del_tail(f, fd);
            return;
        }
        if (redis_odd_command && strcmp(cmd, redis_odd_command) == 0) {
            if (!send_str(f, fd, redis_odd_answer))
                return;
            continue;
        }
        if (strcmp(cmd, "GET") != 0) {
            if (!send_str(f, fd, strcmp(cmd, "DEL") == 0 ? ":1\r\n" : strcmp(cmd, "PING") == 0 ? "+PONG\r\n"
                                                                                                 : "+OK\r\n"))
                return;
            continue;
        }
        if (redis_get_attack && !send_str(f, fd, redis_get_attack))
            return;
        if (redis_get_tail)
            redis_get_tail(f, fd);
        return;
    }
}

static void drip_bulk(struct fake *f, int fd)
{
    drip(f, fd, "{\"a\":1}", 7);
    hold_until_closed(f, fd);
}

/* An integer reply whose digits never end. */
static void drip_integer(struct fake *f, int fd)
{
    if (send_str(f, fd, ":"))
        drip(f, fd, "1", 1);
    hold_until_closed(f, fd);
}

static void flood_bulk(struct fake *f, int fd)
{
    flood(f, fd, 'x', 512ull << 20);
}

/* Creates a Redis backend against the fake, runs one lookup of "victim" and
 * returns its code; *took its seconds. */
static int redis_lookup_timeout(const char *get_reply, void (*tail)(struct fake *, int), struct fake *f,
                                double *took, unsigned timeout_ms)
{
    redis_get_attack = get_reply;
    redis_get_tail = tail;
    fake_start(f, serve_redis);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f->port);
    void *m = NULL;
    assert_int_equal(ferry_meta_redis.create(url, "ferry-test/", 60, timeout_ms, &m), 0);
    char *json = NULL;
    size_t len = 0;
    double t0 = now_s();
    int rc = ferry_meta_redis.lookup(m, "victim", &json, &len);
    *took = now_s() - t0;
    print_message("  %s after %.2f s: %s\n", ferry_err_name(rc), *took, rc ? ferry_last_error() : "");
    free(json);
    ferry_meta_redis.destroy(m);
    fake_stop(f);
    return rc;
}

static int redis_lookup_once(const char *get_reply, void (*tail)(struct fake *, int), struct fake *f, double *took)
{
    return redis_lookup_timeout(get_reply, tail, f, took, TIMEOUT_MS);
}

/* A reply dripped one byte at a time, each well within the socket's timeout:
 * the whole reply has one deadline. */
static void test_redis_drip(void **state)
{
    (void)state;
    struct fake f;
    double took;
    int rc = redis_lookup_once("$100000\r\n", drip_bulk, &f, &took);
    assert_int_not_equal(rc, 0);
    assert_true(took < BOUND_S);
}

/* A bulk string announced at 1 GB and streamed as fast as ferry reads: the
 * lookup stops reading at a descriptor's worth, not at the attacker's will
 * (with a timeout long enough for the flood to reach that size on a loaded
 * machine: the size, not the clock, ends it). */
static void test_redis_huge_bulk(void **state)
{
    (void)state;
    struct fake f;
    double took;
    int rc = redis_lookup_timeout("$1000000000\r\n", flood_bulk, &f, &took, 120000);
    assert_int_equal(rc, FERRY_EPROTO);
    print_message("  the client took %llu bytes\n", (unsigned long long)atomic_load(&f.sent));
    assert_true(atomic_load(&f.sent) < (64ull << 20));
}

/* Answers of a type GET never has: each is FERRY_EPROTO at once (an array
 * of 2^31 elements is not allocated first). */
static void test_redis_wrong_types(void **state)
{
    (void)state;
    static const char *const replies[] = {
        "*2147483647\r\n", "*2\r\n$1\r\na\r\n$1\r\nb\r\n", ":42\r\n", "+OK\r\n", "~3\r\n", "hello world\r\n",
        "$-1\r\n+OK\r\n", /* two replies to one command: the next would read the second (rev5) */
    };
    for (size_t i = 0; i < sizeof replies / sizeof replies[0]; i++) {
        struct fake f;
        double took;
        int rc = redis_lookup_once(replies[i], say_nothing, &f, &took);
        assert_int_equal(rc, FERRY_EPROTO);
        assert_true(took < BOUND_S);
    }
}

/* A server answering PING, SET or DEL with a reply Redis never gives it (a
 * SET not done: nil, an integer, a status other than OK): FERRY_EPROTO, not
 * success (rev6: any reply but an error was taken for done). */
static void test_redis_wrong_answers(void **state)
{
    (void)state;
    static const struct {
        const char *command, *answer;
    } odd[] = {
        {"SET", ":1\r\n"}, {"SET", "$-1\r\n"}, {"SET", "+QUEUED\r\n"}, {"SET", "$2\r\nOK\r\n"},
        {"PING", "+OK\r\n"}, {"DEL", "+OK\r\n"}, {"DEL", "$1\r\n1\r\n"},
    };
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        struct fake f;
        redis_get_attack = NULL;
        redis_get_tail = NULL;
        redis_odd_command = odd[i].command;
        redis_odd_answer = odd[i].answer;
        fake_start(&f, serve_redis);
        char url[64];
        snprintf(url, sizeof url, "redis://127.0.0.1:%d", f.port);
        void *m = NULL;
        int rc = ferry_meta_redis.create(url, "ferry-test/", 60, TIMEOUT_MS, &m);
        if (!rc && strcmp(odd[i].command, "SET") == 0)
            rc = ferry_meta_redis.publish(m, "victim", "{}");
        else if (!rc)
            rc = ferry_meta_redis.unpublish(m, "victim");
        print_message("  %s answered %s: %s: %s\n", odd[i].command, odd[i].answer, ferry_err_name(rc),
                      ferry_last_error());
        ferry_meta_redis.destroy(m);
        redis_odd_command = NULL;
        fake_stop(&f);
        assert_int_equal(rc, FERRY_EPROTO);
        assert_null(strchr(ferry_last_error(), '\n'));
    }
}

/* A server that takes the command and never answers, or answers half. */
static void test_redis_silent(void **state)
{
    (void)state;
    static const char *const replies[] = {"", "$10\r\nabc", "$10"};
    for (size_t i = 0; i < sizeof replies / sizeof replies[0]; i++) {
        struct fake f;
        double took;
        int rc = redis_lookup_once(replies[i][0] ? replies[i] : NULL, say_nothing, &f, &took);
        assert_int_equal(rc, FERRY_ENOSEG);
        assert_string_not_equal(ferry_last_error(), "");
        assert_true(took < BOUND_S);
    }
}

/* An engine publishing in a Redis that drips its answer to the DEL of
 * ferry_engine_destroy: destroy ends within the timeout (the store's lock,
 * which the keepalive and lookups share, is not held forever). */
static void test_redis_drip_engine_destroy(void **state)
{
    (void)state;
    struct fake f;
    redis_get_attack = NULL;
    redis_get_tail = NULL;
    redis_del_tail = drip_integer;
    fake_start(&f, serve_redis);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f.port);
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.metadata_server = url;
    cfg.connect_timeout_ms = TIMEOUT_MS;
    ferry_engine *e = NULL;
    int rc = ferry_engine_create(&cfg, &e);
    if (rc)
        fail_msg("engine on the fake Redis: %s: %s", ferry_err_name(rc), ferry_last_error());
    double t0 = now_s();
    ferry_engine_destroy(e);
    double took = now_s() - t0;
    print_message("  ferry_engine_destroy returned after %.2f s\n", took);
    redis_del_tail = NULL;
    fake_stop(&f);
    assert_true(took < BOUND_S);
}

#else
static void test_redis_drip_engine_destroy(void **state) { (void)state; skip(); }
static void test_redis_drip(void **state) { (void)state; skip(); }
static void test_redis_huge_bulk(void **state) { (void)state; skip(); }
static void test_redis_wrong_types(void **state) { (void)state; skip(); }
static void test_redis_silent(void **state) { (void)state; skip(); }
static void test_redis_wrong_answers(void **state) { (void)state; skip(); }
#endif /* FERRY_HAVE_REDIS */

/* ------------------------------------------------------------ etcd and HTTP stores */

#ifdef FERRY_HAVE_ETCD

/* Reads one HTTP request (headers and Content-Length body) and returns its
 * path in path; false when the client is gone. */
static bool read_request(int fd, char *path, size_t cap)
{
    static char buf[1 << 16];
    size_t have = 0;
    for (;;) {
        buf[have] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end) {
            const char *cl = strcasestr(buf, "Content-Length:");
            size_t body = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
            if ((size_t)(end + 4 - buf) + body <= have) {
                const char *sp = strchr(buf, ' ');
                snprintf(path, cap, "%.*s", sp ? (int)strcspn(sp + 1, " ") : 0, sp ? sp + 1 : "");
                return true;
            }
        }
        if (have + 1 >= sizeof buf)
            return false;
        ssize_t k = recv(fd, buf + have, sizeof buf - have - 1, 0);
        if (k <= 0)
            return false;
        have += (size_t)k;
    }
}

#define OK_HEAD "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"

static const char *lease_id = "7587862101185416459";  /* what a lease grant is answered with */
static const char *http_attack;                        /* the reply to a lookup */
static void (*http_tail)(struct fake *f, int fd);      /* then this, if set */

/* etcd's lease grant is answered honestly (create needs it); a range
 * (etcd) or GET (http store) gets the attack. */
static void serve_http(struct fake *f, int fd)
{
    char path[256];
    while (read_request(fd, path, sizeof path)) {
        if (strstr(path, "/v3/lease/")) {
            char body[256], head[256];
            snprintf(body, sizeof body, "{\"ID\":\"%s\",\"TTL\":\"60\",\"result\":{\"TTL\":\"60\"}}", lease_id);
            snprintf(head, sizeof head, OK_HEAD "Content-Length: %zu\r\n\r\n", strlen(body));
            if (!send_str(f, fd, head) || !send_str(f, fd, body))
                return;
            continue;
        }
        if (http_attack && !send_str(f, fd, http_attack))
            return;
        if (http_tail)
            http_tail(f, fd);
        return;
    }
}

static void drip_chunks(struct fake *f, int fd)
{
    drip(f, fd, "1\r\n{\r\n", 6);
    hold_until_closed(f, fd);
}

static void flood_chunks(struct fake *f, int fd)
{
    static char chunk[65536 + 16];
    int n = snprintf(chunk, sizeof chunk, "10000\r\n");
    memset(chunk + n, ' ', 65536);
    memcpy(chunk + n + 65536, "\r\n", 2);
    while (!atomic_load(&f->stop) && atomic_load(&f->sent) < (512ull << 20))
        if (!send_all(f, fd, chunk, (size_t)n + 65536 + 2))
            return;
    hold_until_closed(f, fd);
}

static void flood_body(struct fake *f, int fd)
{
    flood(f, fd, ' ', 512ull << 20);
}

/* The rest of a 30 MB body: blanks after a valid answer, then the close. */
#define PADDED_BODY 30000000u
#define PADDED_JSON "{\"kvs\":[{\"value\":\"e30=\"}]}"
static void pad_body(struct fake *f, int fd)
{
    static char block[65536];
    memset(block, ' ', sizeof block);
    for (size_t left = PADDED_BODY - strlen(PADDED_JSON); left && !atomic_load(&f->stop);) {
        size_t n = left < sizeof block ? left : sizeof block;
        if (!send_all(f, fd, block, n))
            return;
        left -= n;
    }
    hold_until_closed(f, fd);
}

/* Creates the backend `ops` against the fake, runs one lookup and returns
 * its code; *took its seconds. */
static int http_lookup_once(const struct meta_ops *ops, const char *reply, void (*tail)(struct fake *, int),
                            struct fake *f, double *took)
{
    http_attack = reply;
    http_tail = tail;
    fake_start(f, serve_http);
    char url[96], where[64];
    assert_int_equal(net_format_hostport(where, sizeof where, fake_host, f->port), 0);
    if (ops == &ferry_meta_etcd)
        snprintf(url, sizeof url, "etcd://%s", where);
    else
        snprintf(url, sizeof url, "http://%s/metadata", where);
    void *m = NULL;
    int rc = ops->create(url, "ferry-test/", 60, TIMEOUT_MS, &m);
    if (rc)
        fail_msg("create %s: %s: %s", url, ferry_err_name(rc), ferry_last_error());
    char *json = NULL;
    size_t len = 0;
    double t0 = now_s();
    rc = ops->lookup(m, "victim", &json, &len);
    *took = now_s() - t0;
    print_message("  %s after %.2f s, %llu bytes sent: %s\n", ferry_err_name(rc), *took,
                  (unsigned long long)atomic_load(&f->sent), rc ? ferry_last_error() : "");
    free(json);
    ops->destroy(m);
    fake_stop(f);
    return rc;
}

/* Replies that never end or end too late: chunked forever (dripped or
 * flooded), a Content-Length longer than what comes, a 5 GB Content-Length
 * flooded.  Each ends within the timeout, with at most a descriptor's worth
 * taken, as "not found now" (FERRY_ENOSEG, the store is unusable). */
static void endless_replies(const struct meta_ops *ops)
{
    static const struct {
        const char *head;
        void (*tail)(struct fake *, int);
    } attacks[] = {
        {OK_HEAD "Transfer-Encoding: chunked\r\n\r\n", drip_chunks},
        {OK_HEAD "Transfer-Encoding: chunked\r\n\r\n", flood_chunks},
        {OK_HEAD "Content-Length: 100000\r\n\r\n{\"kvs\":[", say_nothing},
        {OK_HEAD "Content-Length: 5000000000\r\n\r\n", flood_body},
        {"HTTP/1.1 200 OK\r\nX-Pad: ", flood_body},
        {NULL, say_nothing},
    };
    for (size_t i = 0; i < sizeof attacks / sizeof attacks[0]; i++) {
        struct fake f;
        double took;
        int rc = http_lookup_once(ops, attacks[i].head, attacks[i].tail, &f, &took);
        assert_int_equal(rc, FERRY_ENOSEG);
        assert_true(took < BOUND_S);
        assert_true(atomic_load(&f.sent) < (64ull << 20));
    }
}

static void test_etcd_endless_replies(void **state)
{
    (void)state;
    endless_replies(&ferry_meta_etcd);
}

static void test_http_endless_replies(void **state)
{
    (void)state;
    endless_replies(&ferry_meta_http);
}

/* A valid answer padded with blanks to 30 MB, over etcd's reply cap
 * (a descriptor in base64 and 64 KiB) but under the 32 MiB its buffer had
 * doubled to: refused (rev6: the cap was checked only when the buffer grew,
 * so the answer was taken). */
static void test_etcd_reply_over_cap(void **state)
{
    (void)state;
    char head[160];
    snprintf(head, sizeof head, OK_HEAD "Content-Length: %u\r\n\r\n" PADDED_JSON, PADDED_BODY);
    struct fake f;
    double took;
    int rc = http_lookup_once(&ferry_meta_etcd, head, pad_body, &f, &took);
    assert_int_equal(rc, FERRY_ENOSEG);
    assert_non_null(strstr(ferry_last_error(), "no endpoint answers"));
}

/* Whole replies of the wrong shape: each a named code, at once. */
static void test_etcd_wrong_shapes(void **state)
{
    (void)state;
    static char deep[200001]; /* 100000 "[" then as many "]", NUL-terminated */
    static const struct {
        const char *body;
        int rc;
    } attacks[] = {
        {deep, FERRY_EPROTO},                                   /* 100000 nested arrays */
        {"{\"kvs\":[{\"value\":5}]}", FERRY_EPROTO},
        {"{\"kvs\":[{\"value\":\"!!not base64!!\"}]}", FERRY_EPROTO},
        {"{\"kvs\":\"x\"}", FERRY_EPROTO},
        {"{\"kvs\":{\"value\":\"e30=\"}}", FERRY_EPROTO},
        {"{}", FERRY_ENOSEG},
        {"[1,2,3]", FERRY_EPROTO},
        {"{\"error\":\"\\u001b[31mforged\\nline\",\"code\":5}", FERRY_ENOSEG},
        /* answers etcd never gives a range of one key (rev6): two entries,
         * another key's entry, a value spelled other than base64 spells it */
        {"{\"kvs\":[{\"value\":\"e30=\"},{\"value\":\"e30=\"}]}", FERRY_EPROTO},
        {"{\"kvs\":[{\"key\":\"b3RoZXI=\",\"value\":\"e30=\"}]}", FERRY_EPROTO},
        {"{\"kvs\":[{\"value\":\"e31=\"}]}", FERRY_EPROTO},
        {"{\"kvs\":[{\"value\":\"e30=\"}]}{\"kvs\":[]}", FERRY_EPROTO}, /* bytes after the answer */
        {"{\"kvs\":[{\"value\":\"e30=\"}]}x", FERRY_EPROTO},
    };
    memset(deep, '[', 100000);
    memset(deep + 100000, ']', 100000);
    for (size_t i = 0; i < sizeof attacks / sizeof attacks[0]; i++) {
        char *reply = NULL;
        assert_true(asprintf(&reply, OK_HEAD "Content-Length: %zu\r\n\r\n%s", strlen(attacks[i].body),
                             attacks[i].body) > 0);
        struct fake f;
        double took;
        int rc = http_lookup_once(&ferry_meta_etcd, reply, say_nothing, &f, &took);
        free(reply);
        assert_int_equal(rc, attacks[i].rc);
        assert_true(took < BOUND_S);
        assert_null(strchr(ferry_last_error(), '\n'));
    }
}

/* An HTTP store's entry of another shape than put writes (another member,
 * bytes after it, no descriptor object): FERRY_EPROTO (rev6: the first two
 * were read as the descriptor); an expired one is absent. */
static void test_http_wrong_shapes(void **state)
{
    (void)state;
    long long later = (long long)time(NULL) + 3600;
    char bodies[5][160];
    snprintf(bodies[0], sizeof bodies[0], "{\"expires_unix_s\":%lld,\"descriptor\":{\"format\":1}}", later);
    snprintf(bodies[1], sizeof bodies[1], "{\"expires_unix_s\":%lld,\"descriptor\":{\"format\":1},\"x\":1}", later);
    snprintf(bodies[2], sizeof bodies[2], "{\"expires_unix_s\":%lld,\"descriptor\":{\"format\":1}}{}", later);
    snprintf(bodies[3], sizeof bodies[3], "{\"expires_unix_s\":%lld,\"descriptor\":\"{}\"}", later);
    snprintf(bodies[4], sizeof bodies[4], "{\"expires_unix_s\":1,\"descriptor\":{\"format\":1}}");
    static const int want[] = {0, FERRY_EPROTO, FERRY_EPROTO, FERRY_EPROTO, FERRY_ENOSEG};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char *reply = NULL;
        assert_true(asprintf(&reply, OK_HEAD "Content-Length: %zu\r\n\r\n%s", strlen(bodies[i]), bodies[i]) > 0);
        struct fake f;
        double took;
        int rc = http_lookup_once(&ferry_meta_http, reply, say_nothing, &f, &took);
        free(reply);
        assert_int_equal(rc, want[i]);
        assert_true(took < BOUND_S);
    }
}

/* A lease ID that is not a number (it would be pasted into the JSON of
 * every later request) fails create with FERRY_EPROTO. */
static void test_etcd_lease_id(void **state)
{
    (void)state;
    static const char *const ids[] = {"1\\\",\\\"TTL\\\":\\\"1", "-5", "0x10", " 7", "",
                                      /* lease 0 is "no lease": keys that never expire; over int64 (rev6) */
                                      "0", "007", "9223372036854775808", "99999999999999999999"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        struct fake f;
        lease_id = ids[i];
        fake_start(&f, serve_http);
        char url[64];
        snprintf(url, sizeof url, "etcd://127.0.0.1:%d", f.port);
        void *m = NULL;
        int rc = ferry_meta_etcd.create(url, "ferry-test/", 60, TIMEOUT_MS, &m);
        print_message("  ID \"%s\": %s: %s\n", ids[i], ferry_err_name(rc), ferry_last_error());
        ferry_meta_etcd.destroy(m);
        fake_stop(&f);
        assert_int_equal(rc, FERRY_EPROTO);
    }
    lease_id = "7587862101185416459";
}

static int fake_host_reset(void **state)
{
    (void)state;
    fake_host = "127.0.0.1";
    return 0;
}

/* An etcd reached over IPv6 ("etcd://[::1]:port"): its URL must bracket the
 * address (it was "http://::1:port/...", which no HTTP client can use). */
static void test_etcd_over_ipv6(void **state)
{
    (void)state;
    int port = 0, fd = net_listen("::1", 0, 10000, &port);
    if (fd < 0) {
        print_message("SKIPPED: this host has no IPv6 loopback (::1)\n");
        skip();
    }
    close(fd);
    struct fake f;
    double took;
    fake_host = "::1"; /* back to 127.0.0.1 in fake_host_reset, also after a failure */
    int rc = http_lookup_once(&ferry_meta_etcd, OK_HEAD "Content-Length: 26\r\n\r\n" PADDED_JSON, NULL, &f, &took);
    assert_int_equal(rc, 0);
}

#else
static void test_etcd_over_ipv6(void **state) { (void)state; skip(); }
static void test_etcd_lease_id(void **state) { (void)state; skip(); }
static void test_etcd_endless_replies(void **state) { (void)state; skip(); }
static void test_http_endless_replies(void **state) { (void)state; skip(); }
static void test_etcd_wrong_shapes(void **state) { (void)state; skip(); }
static void test_etcd_reply_over_cap(void **state) { (void)state; skip(); }
static void test_http_wrong_shapes(void **state) { (void)state; skip(); }
#endif /* FERRY_HAVE_ETCD */

/* ------------------------------------------------------------ p2p handshake peer */

static const char *p2p_attack;
static size_t p2p_attack_len;
static void (*p2p_tail)(struct fake *f, int fd);

static void serve_p2p(struct fake *f, int fd)
{
    char req[64];
    if (recv(fd, req, sizeof req, 0) <= 0)
        return;
    if (p2p_attack && !send_all(f, fd, p2p_attack, p2p_attack_len))
        return;
    if (p2p_tail)
        p2p_tail(f, fd);
}

static void drip_body(struct fake *f, int fd)
{
    drip(f, fd, "{\"format\":1}", 12);
    hold_until_closed(f, fd);
}

/* A handshake peer that answers garbage, stalls or drips mid-message, or
 * announces a body over the limit: each a named code within the timeout. */
static void test_p2p_hostile_peer(void **state)
{
    (void)state;
    static const struct {
        const char *reply;
        size_t len;
        void (*tail)(struct fake *, int);
        int rc;
    } attacks[] = {
        {"HTTP/1.1 400 Bad Request\r\n\r\n", 28, say_nothing, FERRY_EPROTO},     /* not ferry */
        {"FERRYHS9\x02\x00\x00\x00{}", 14, say_nothing, FERRY_EVERSION},
        {"FERRYHS\n\x02\x00\x00\x00{}", 14, say_nothing, FERRY_EVERSION}, /* its byte went raw into logs (rev6) */
        {"FERRYHS1\x01\x00\x00\x01", 12, say_nothing, FERRY_EPROTO},            /* 16 MiB + 1 */
        {"FERRYHS1\xff\xff\xff\xff", 12, say_nothing, FERRY_EPROTO},
        {"FERRYH", 6, say_nothing, FERRY_ENOSEG},                               /* stalls mid-header */
        {"FERRYHS1\x00\x10\x00\x00{\"for", 17, say_nothing, FERRY_ENOSEG},      /* stalls mid-body */
        {"FERRYHS1\x00\x10\x00\x00", 12, drip_body, FERRY_ENOSEG},              /* drips */
        {"FERRYHS1\x00\x00\x00\x00", 12, NULL, 0},                              /* empty body: the decoder's */
        {"FERRYHS1\x1d\x00\x00\x00{\"error\":\"x\\ny\",\"code\":1e300}", 41, NULL, FERRY_EPROTO},
        {"FERRYHS1\x1e\x00\x00\x00{\"error\":\"x\\ny\",\"code\":-1e300}", 42, NULL, FERRY_EPROTO},
        {"FERRYHS1\x1d\x00\x00\x00{\"error\":\"x\\ny\",\"code\":12345}", 41, NULL, FERRY_EPROTO},
    };
    for (size_t i = 0; i < sizeof attacks / sizeof attacks[0]; i++) {
        p2p_attack = attacks[i].reply;
        p2p_attack_len = attacks[i].len;
        p2p_tail = attacks[i].tail;
        struct fake f;
        fake_start(&f, serve_p2p);
        char name[64];
        snprintf(name, sizeof name, "127.0.0.1:%d", f.port);
        char *json = NULL;
        size_t len = 0;
        double t0 = now_s();
        int rc = p2p_fetch(name, TIMEOUT_MS, &json, &len);
        double took = now_s() - t0;
        print_message("  attack %zu: %s after %.2f s: %s\n", i, ferry_err_name(rc), took,
                      rc ? ferry_last_error() : "");
        free(json);
        fake_stop(&f);
        assert_int_equal(rc, attacks[i].rc);
        assert_true(took < BOUND_S);
        assert_null(strchr(ferry_last_error(), '\n'));
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redis_drip),
        cmocka_unit_test(test_redis_huge_bulk),
        cmocka_unit_test(test_redis_wrong_types),
        cmocka_unit_test(test_redis_silent),
        cmocka_unit_test(test_redis_wrong_answers),
        cmocka_unit_test(test_redis_drip_engine_destroy),
        cmocka_unit_test(test_etcd_endless_replies),
        cmocka_unit_test(test_http_endless_replies),
        cmocka_unit_test(test_etcd_wrong_shapes),
        cmocka_unit_test(test_etcd_reply_over_cap),
        cmocka_unit_test(test_http_wrong_shapes),
        cmocka_unit_test(test_etcd_lease_id),
        cmocka_unit_test_teardown(test_etcd_over_ipv6, fake_host_reset),
        cmocka_unit_test(test_p2p_hostile_peer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

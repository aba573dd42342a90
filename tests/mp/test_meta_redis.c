/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_meta_redis.c — segments published in a real Redis (metadata_server
 * "redis://..."): open by name and transfer, removal at destroy, expiry of a
 * killed engine, the server stopped and restarted empty, malformed URLs,
 * corrupt and foreign-version descriptors, a store whose host name has two
 * addresses of which the server listens on one.  The tests themselves are in
 * test_meta_common.h; this file adds redis-server's command line and
 * redis-cli.
 */
#include "test_meta_common.h"

#include <netdb.h>

static char **redis_argv(const char *dir, int port, int port2)
{
    (void)port2;
    static char p[16], d[160];
    static char *argv[] = {"redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                           "--dir", d, NULL};
    snprintf(p, sizeof p, "%d", port);
    snprintf(d, sizeof d, "%s", dir);
    return argv;
}

static char **redis_cli_set_argv(int port, const char *key, const char *value)
{
    static char p[16], k[256], v[4096];
    static char *argv[] = {"redis-cli", "-h", "127.0.0.1", "-p", p, "SET", k, v, NULL};
    snprintf(p, sizeof p, "%d", port);
    snprintf(k, sizeof k, "%s", key);
    snprintf(v, sizeof v, "%s", value);
    return argv;
}

static const struct meta_backend redis = {
    .name = "redis",
    .server_bin = "redis-server",
    .hand_tool = "redis-cli",
#ifdef FERRY_HAVE_REDIS
    .ops = &ferry_meta_redis,
#endif
    .server_argv = redis_argv,
    .put_argv = redis_cli_set_argv,
};

static void test_malformed_urls(void **state)
{
    (void)state;
    const char *urls[] = {"redis://", "redis://:6379", "redis://127.0.0.1:notaport", "redis://127.0.0.1:99999",
                          "redis://127.0.0.1:0", "redis://127.0.0.1:6379,127.0.0.1:6380",
                          "redis://:secret@127.0.0.1:6379", "redis://127.0.0.1:6379/x", "redis://127.0.0.1 :6379"};
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++)
        expect_create_fails(urls[i], FERRY_EINVAL);
}

/* A key written by redis-cli that is not a string (a list) reads as EPROTO. */
static void test_wrong_type_key(void **state)
{
    (void)state;
    if (!in_path("redis-cli"))
        skip();
    char p[16], k[128];
    snprintf(p, sizeof p, "%d", fx.port);
    snprintf(k, sizeof k, "%slist:1", PREFIX);
    char *argv[] = {"redis-cli", "-h", "127.0.0.1", "-p", p, "RPUSH", k, "a", NULL};
    assert_int_equal(run_tool(argv), 0);
    struct peer q = {0};
    peer_create(&q);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(q.e, "list:1", &seg), FERRY_EPROTO);
    print_message("  %s\n", ferry_last_error());
    peer_destroy(&q);
}

/* Whether store m finds name (0) or not (FERRY_ENOSEG). */
static int found_in(void *m, const char *name)
{
    char *json = NULL;
    size_t len;
    int rc = redis.ops->lookup(m, name, &json, &len);
    free(json);
    return rc;
}

/* redis://host:port/db: every connection, the first and the one made again
 * after the server restarted, SELECTs db (on the socket ferry connects and
 * hands to hiredis, redisConnectFd); a db the server does not have is
 * refused, naming the URL and the command. */
static void test_select_db(void **state)
{
    (void)state;
    char url[96];
    void *db3 = NULL, *bad = NULL;
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/3", fx.port);
    assert_int_equal(redis.ops->create(url, PREFIX, TTL_S, 2000, &db3), 0);
    assert_int_equal(redis.ops->publish(db3, "db3:1", "{\"in\":\"db3\"}"), 0);
    assert_int_equal(found_in(db3, "db3:1"), 0);
    assert_int_equal(found_in(fx.observer, "db3:1"), FERRY_ENOSEG); /* the fixture's store is db 0 */

    server_stop();
    server_start(); /* empty: db3 connects again and publishes anew */
    assert_int_equal(redis.ops->publish(db3, "db3:2", "{\"in\":\"db3\"}"), 0);
    assert_int_equal(found_in(db3, "db3:2"), 0);
    assert_int_equal(found_in(fx.observer, "db3:2"), FERRY_ENOSEG);
    redis.ops->destroy(db3);

    snprintf(url, sizeof url, "redis://127.0.0.1:%d/99", fx.port); /* 16 databases by default */
    int rc = redis.ops->create(url, PREFIX, TTL_S, 2000, &bad);
    print_message("  %s -> %s: %s\n", url, ferry_err_name(rc), ferry_last_error());
    assert_int_equal(rc, FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), url));
    assert_non_null(strstr(ferry_last_error(), "SELECT 99"));
    assert_null(bad);
}

static const char *two_name; /* test_two_address_name's, made before any thread */
static char two_why[256];

/* redis://NAME:port where NAME has two addresses and the server listens on
 * one that is not the name's first IPv4 address (the first address where
 * that is ::1, else the second): ferry connects to every address in turn,
 * as hiredis did before ferry made the socket itself (redisConnectFd).
 * Before, only the first IPv4 address was tried and the store was never
 * reached. */
static void test_name_with_two_addresses(void **state)
{
    (void)state;
    if (!two_name) {
        print_message("SKIPPED: no name with two addresses: %s\n", two_why);
        skip();
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    assert_int_equal(getaddrinfo(two_name, "1", &hints, &res), 0);
    const struct addrinfo *pick = res->ai_family != AF_INET ? res : res->ai_next;
    assert_non_null(pick);
    char addr[INET6_ADDRSTRLEN];
    assert_int_equal(getnameinfo(pick->ai_addr, pick->ai_addrlen, addr, sizeof addr, NULL, 0, NI_NUMERICHOST), 0);
    freeaddrinfo(res);

    int port = free_port();
    char p[16], dir[160], log[200], url[128];
    snprintf(p, sizeof p, "%d", port);
    snprintf(dir, sizeof dir, "%s", fx.dir);
    snprintf(log, sizeof log, "%s/two.log", fx.dir);
    char *argv[] = {"redis-server", "--port", p, "--bind", addr, "--save", "", "--appendonly", "no", "--dir", dir,
                    NULL};
    pid_t server = spawn(argv, log);
    assert_true(server > 0);
    snprintf(url, sizeof url, "redis://%s:%d", two_name, port);
    void *m = NULL;
    int rc = -1;
    for (double deadline = now_s() + 30; now_s() < deadline && rc != 0;) { /* until it listens */
        rc = redis.ops->create(url, PREFIX, TTL_S, 2000, &m);
        if (rc) {
            if (waitpid(server, NULL, WNOHANG) == server)
                fail_msg("redis-server on %s exited at start; see %s", addr, log);
            sleep_ms(100);
        }
    }
    print_message("  %s, the server on %s only: %s\n", url, addr, rc ? ferry_last_error() : "reached");
    if (rc == 0) {
        rc = redis.ops->publish(m, "two:1", "{\"on\":\"two\"}");
        if (!rc)
            rc = found_in(m, "two:1");
        redis.ops->destroy(m);
    }
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);
    if (rc)
        fail_msg("%s: %s: %s", url, ferry_err_name(rc), ferry_last_error());
}

int main(void)
{
    two_name = test_two_address_name(two_why, sizeof two_why);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_malformed_urls),
        META_COMMON_TESTS,
        cmocka_unit_test(test_wrong_type_key),
        cmocka_unit_test(test_select_db),
        cmocka_unit_test(test_name_with_two_addresses),
    };
    return meta_tests_main(&redis, tests, sizeof tests / sizeof tests[0]);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_meta_redis.c — segments published in a real Redis (metadata_server
 * "redis://..."): open by name and transfer, removal at destroy, expiry of a
 * killed engine, the server stopped and restarted empty, malformed URLs,
 * corrupt and foreign-version descriptors.  The tests themselves are in
 * test_meta_common.h; this file adds redis-server's command line and
 * redis-cli.
 */
#include "test_meta_common.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_malformed_urls),
        META_COMMON_TESTS,
        cmocka_unit_test(test_wrong_type_key),
        cmocka_unit_test(test_select_db),
    };
    return meta_tests_main(&redis, tests, sizeof tests / sizeof tests[0]);
}

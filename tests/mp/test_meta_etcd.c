/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_meta_etcd.c — segments published in a real etcd (metadata_server
 * "etcd://..."): open by name and transfer, removal at destroy, expiry of a
 * killed engine, the store stopped and restarted empty, a dead first
 * endpoint, malformed URLs, corrupt and foreign-version descriptors.  The
 * tests themselves are in test_meta_common.h; this file adds etcd's server
 * command line, etcdctl, and what only etcd has (several endpoints).
 */
#include "test_meta_common.h"

static char **etcd_argv(const char *dir, int port, int port2)
{
    static char client[64], listen[128], peer[64], cluster[96], data[160];
    static char *argv[] = {"etcd", "--name", "ferry-test", "--data-dir", data, "--listen-client-urls", listen,
                           "--advertise-client-urls", client, "--listen-peer-urls", peer,
                           "--initial-advertise-peer-urls", peer, "--initial-cluster", cluster, NULL};
    snprintf(client, sizeof client, "http://127.0.0.1:%d", port);
    snprintf(listen, sizeof listen, "%s,http://[::1]:%d", client, port); /* test_ipv6_endpoint */
    snprintf(peer, sizeof peer, "http://127.0.0.1:%d", port2);
    snprintf(cluster, sizeof cluster, "ferry-test=%s", peer);
    snprintf(data, sizeof data, "%s", dir);
    return argv;
}

static char **etcdctl_put_argv(int port, const char *key, const char *value)
{
    static char endpoints[64], k[256], v[4096];
    static char *argv[] = {"etcdctl", endpoints, "put", "--", k, v, NULL};
    snprintf(endpoints, sizeof endpoints, "--endpoints=http://127.0.0.1:%d", port);
    snprintf(k, sizeof k, "%s", key);
    snprintf(v, sizeof v, "%s", value);
    setenv("ETCDCTL_API", "3", 1);
    return argv;
}

static const struct meta_backend etcd = {
    .name = "etcd",
    .server_bin = "etcd",
    .hand_tool = "etcdctl",
#ifdef FERRY_HAVE_ETCD
    .ops = &ferry_meta_etcd,
#endif
    .server_argv = etcd_argv,
    .put_argv = etcdctl_put_argv,
};

static void test_malformed_urls(void **state)
{
    (void)state;
    const char *urls[] = {"etcd://", "etcd://:2379", "etcd://127.0.0.1:notaport", "etcd://127.0.0.1:99999",
                          "etcd://127.0.0.1:0", "etcd://127.0.0.1:2379,,127.0.0.1:2380",
                          "etcd://127.0.0.1:2379/path", "etcd://user@127.0.0.1:2379", "etcd://127.0.0.1:2379,"};
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++)
        expect_create_fails(urls[i], FERRY_EINVAL);
}

/* A store at url (created here, returned to the caller to destroy) on
 * which name -> json is published and looked up, and seen through the
 * fixture's own URL. */
static void *published_through(const char *url, const char *name, const char *json)
{
    void *m = NULL;
    char *got = NULL;
    size_t len;
    int rc = etcd.ops->create(url, PREFIX, TTL_S, 2000, &m);
    if (rc)
        fail_msg("%s: %s: %s", url, ferry_err_name(rc), ferry_last_error());
    assert_int_equal(etcd.ops->publish(m, name, json), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(etcd.ops->lookup(i ? fx.observer : m, name, &got, &len), 0);
        assert_string_equal(got, json);
        free(got);
    }
    return m;
}

/* An IPv6 endpoint in brackets: curl opens its socket through ferry's
 * close-on-exec callback (meta_curl_cloexec) with the family it resolved,
 * and what is published there is seen through the IPv4 one. */
static void test_ipv6_endpoint(void **state)
{
    (void)state;
    static bool before[TEST_MAX_FD];
    char url[64];
    test_fds_open(before);
    snprintf(url, sizeof url, "etcd://[::1]:%d", fx.port);
    void *v6 = published_through(url, "v6:1", "{\"over\":\"ipv6\"}");
    assert_int_equal(test_fds_not_cloexec(before, true), 0);
    etcd.ops->destroy(v6);
}

/* An endpoint by name: ferry looks it up (bounded by the connect timeout)
 * and hands curl its addresses (CURLOPT_RESOLVE, "localhost:port:127.0.0.1
 * ,[::1]"), curl's own resolver never running; publish and lookup work as
 * through the address. */
static void test_named_endpoint(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "etcd://localhost:%d", fx.port);
    etcd.ops->destroy(published_through(url, "named:1", "{\"by\":\"name\"}"));
}

/* The first endpoint refuses connections; everything goes through the second. */
static void test_first_endpoint_dead(void **state)
{
    (void)state;
    char url[128];
    snprintf(url, sizeof url, "etcd://127.0.0.1:%d,127.0.0.1:%d", free_port(), fx.port);
    setenv("FERRY_METADATA_SERVER", url, 1);
    struct child_target t;
    target_start(&t);
    struct peer p = {0};
    peer_create(&p);
    setenv("FERRY_METADATA_SERVER", fx.url, 1);
    assert_int_equal(observed(t.name), 0);
    ferry_segment_t seg;
    int rc = ferry_open_segment(p.e, t.name, &seg);
    if (rc)
        fail_msg("open through %s: %s: %s", url, ferry_err_name(rc), ferry_last_error());
    transfer_verified(&p, seg, &t, 8);
    /* the keepalive goes through the live endpoint too */
    sleep_ms(TTL_S * 1500);
    assert_int_equal(observed(t.name), 0);
    assert_int_equal(observed(ferry_engine_segment_name(p.e)), 0);
    peer_destroy(&p);
    child_target_kill(&t);
}

/* Both endpoints dead: create fails with ECONN naming the URL. */
static void test_all_endpoints_dead(void **state)
{
    (void)state;
    char url[128];
    snprintf(url, sizeof url, "etcd://127.0.0.1:%d,127.0.0.1:%d", free_port(), free_port());
    expect_create_fails(url, FERRY_ECONN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_malformed_urls),
        cmocka_unit_test(test_all_endpoints_dead),
        META_COMMON_TESTS,
        cmocka_unit_test(test_first_endpoint_dead),
        cmocka_unit_test(test_ipv6_endpoint),
        cmocka_unit_test(test_named_endpoint),
    };
    return meta_tests_main(&etcd, tests, sizeof tests / sizeof tests[0]);
}

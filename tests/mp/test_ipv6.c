/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_ipv6.c — engines on IPv6: names as the reference engine writes them
 * ("[::1]:port", a bare "::1"), a bare IPv6 address with a port taken as
 * host and port where no address reads so ("::1:15000", as vLLM writes it)
 * and refused as ambiguous where one does ("::1:8080"), and a WRITE and a
 * READ between two engines over ::1 (handshake and tcp data connections on
 * IPv6), data verified.
 *
 * Needs an IPv6 loopback: without one the program says SKIPPED and why.
 * No case depends on timing.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "auth.h"
#include "fake_target.h"
#include "net.h"
#include "testutil.h"

#define SIZE (1u << 20)

static void require_ipv6_loopback(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int ok = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (fd >= 0)
        close(fd);
    if (!ok)
        test_skip("this host has no IPv6 loopback (::1): socket/bind failed");
}

/* ------------------------------------------------------------ names */

static void names_with_ipv6_addresses(void **state)
{
    (void)state;
    struct {
        const char *name, *host;
        int port;
    } good[] = {
        {"[::1]:12345", "::1", 12345}, {"[::1]", "::1", 0}, {"::1", "::1", 0}, {"[fe80::1%lo]:7", "fe80::1%lo", 7},
        {"fe80::1", "fe80::1", 0}, {"2001:db8::a", "2001:db8::a", 0}, {"127.0.0.1:80", "127.0.0.1", 80},
        {"localhost", "localhost", 0},
        /* no address ends so (a group has at most 4 hex digits; a scope no colon): host and port, as the
         * reference reads them (parseHostNameWithPort) and vLLM writes them ("%s:%d" % (get_ip(), port)) */
        {"::1:12345", "::1", 12345}, {"fe80::1%lo:7", "fe80::1%lo", 7}, {"2001:db8::a:65535", "2001:db8::a", 65535},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char host[64];
        int port = -1;
        if (net_split_hostport(good[i].name, host, sizeof host, &port) != 0)
            fail_msg("\"%s\": %s", good[i].name, ferry_last_error());
        assert_string_equal(host, good[i].host);
        assert_int_equal(port, good[i].port);
    }
    struct {
        const char *name, *says;
    } bad[] = {
        {"::1:8080", "ambiguous"}, {"::1:8080", "[::1]:8080"}, {"2001:db8::1:1", "ambiguous"}, {"::1:99999", "bad port"},
        {"[127.0.0.1]:80", "brackets"}, {"[::1", "brackets"}, {"[::1]x", "\"]\""}, {"[::1]:", "bad port"},
        {"[::1]:65536", "bad port"}, {"[::1]:-1", "bad port"}, {"[]:1", "brackets"}, {"a:b:c", "neither"},
        {"[::1]:+1", "bad port"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char host[64];
        int port;
        if (net_split_hostport(bad[i].name, host, sizeof host, &port) != FERRY_EINVAL)
            fail_msg("\"%s\" was accepted", bad[i].name);
        if (!strstr(ferry_last_error(), bad[i].says))
            fail_msg("\"%s\": \"%s\" does not say \"%s\"", bad[i].name, ferry_last_error(), bad[i].says);
    }
    char out[32];
    assert_int_equal(net_format_hostport(out, sizeof out, "::1", 9), 0);
    assert_string_equal(out, "[::1]:9");
    assert_int_equal(net_format_hostport(out, sizeof out, "10.0.0.1", 9), 0);
    assert_string_equal(out, "10.0.0.1:9");
    assert_int_equal(net_format_hostport(out, 8, "10.0.0.1", 9), FERRY_EINVAL);
}

/* ------------------------------------------------------------ engines on ::1 */

static ferry_engine *engine_on(const char *local)
{
    struct ferry_config cfg;
    ferry_engine *e = NULL;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.local_server_name = local;
    cfg.request_timeout_ms = 60000;
    cfg.connect_timeout_ms = 60000;
    if (ferry_engine_create(&cfg, &e) != 0)
        fail_msg("engine on \"%s\": %s", local, ferry_last_error());
    return e;
}

static char *registered(ferry_engine *e, size_t len, int remote)
{
    char *p = NULL;
    assert_int_equal(ferry_mem_alloc(e, "cpu", len, (void **)&p), 0);
    assert_int_equal(ferry_register_memory(e, p, len, "cpu", remote), 0);
    return p;
}

static void transfers_over_ipv6_loopback(void **state)
{
    (void)state;
    require_ipv6_loopback();
    ferry_engine *target = engine_on("::1"), *init = engine_on("[::1]:0");
    char want[64];
    snprintf(want, sizeof want, "[::1]:%d", ferry_engine_handshake_port(target));
    assert_string_equal(ferry_engine_segment_name(target), want);
    assert_int_equal(strncmp(ferry_engine_segment_name(init), "[::1]:", 6), 0);

    char *remote = registered(target, SIZE, 1), *local = registered(init, SIZE, 0);
    pattern_fill(local, SIZE, 31, 0);
    pattern_fill(remote, SIZE, 32, 0);
    ferry_segment_t s;
    if (ferry_open_segment(init, want, &s) != 0)
        fail_msg("open %s: %s", want, ferry_last_error());
    ferry_batch *b;
    struct ferry_request w = {FERRY_WRITE, local, s, (uint64_t)(uintptr_t)remote, SIZE / 2};
    struct ferry_request r = {FERRY_READ, local + SIZE / 2, s, (uint64_t)(uintptr_t)remote + SIZE / 2, SIZE / 2};
    assert_int_equal(ferry_batch_alloc(init, 2, &b), 0);
    assert_int_equal(ferry_batch_submit(b, (struct ferry_request[]){w, r}, 2), 0);
    if (ferry_batch_wait(b, 60000) != 0)
        fail_msg("transfer over ::1: %s", ferry_last_error());
    ferry_batch_free(b);
    assert_int_equal(pattern_check(remote, SIZE / 2, 31, 0), -1);                  /* the WRITE */
    assert_int_equal(pattern_check(local + SIZE / 2, SIZE / 2, 32, SIZE / 2), -1); /* the READ */

    /* the same address without brackets but with a port, as vLLM writes it: the same segment where no
     * address ends so (a port of 5 digits), else refused, saying how to write it */
    char bare[64];
    int port = ferry_engine_handshake_port(target);
    snprintf(bare, sizeof bare, "::1:%d", port);
    ferry_segment_t same;
    if (port >= 10000) {
        if (ferry_open_segment(init, bare, &same) != 0)
            fail_msg("open %s: %s", bare, ferry_last_error());
        struct ferry_request again = {FERRY_READ, local, same, (uint64_t)(uintptr_t)remote, SIZE / 2};
        memset(local, 0, SIZE / 2);
        assert_int_equal(ferry_batch_alloc(init, 1, &b), 0);
        assert_int_equal(ferry_batch_submit(b, &again, 1), 0);
        if (ferry_batch_wait(b, 60000) != 0)
            fail_msg("READ from %s: %s", bare, ferry_last_error());
        ferry_batch_free(b);
        assert_int_equal(pattern_check(local, SIZE / 2, 31, 0), -1); /* what the WRITE left there */
    } else {
        assert_int_equal(ferry_open_segment(init, bare, &same), FERRY_ENOSEG);
        if (!strstr(ferry_last_error(), "ambiguous") || !strstr(ferry_last_error(), want))
            fail_msg("open %s: %s", bare, ferry_last_error());
    }

    assert_int_equal(ferry_unregister_memory(init, local), 0);
    assert_int_equal(ferry_unregister_memory(target, remote), 0);
    ferry_mem_free(init, "cpu", local, SIZE);
    ferry_mem_free(target, "cpu", remote, SIZE);
    ferry_engine_destroy(init);
    ferry_engine_destroy(target);
}

static void engine_on_an_ambiguous_name_is_refused(void **state)
{
    (void)state;
    struct ferry_config cfg;
    ferry_engine *e = NULL;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.local_server_name = "::1:1700"; /* the address ::1:1700 too */
    assert_int_equal(ferry_engine_create(&cfg, &e), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "[::1]:1700"));
    assert_null(e);
}

/* ------------------------------------------------------------ what tcp says of an IPv6 peer */

static void close_at_once(void *ctx, int fd)
{
    (void)ctx, (void)fd; /* fake_target closes it: EOF where the initiator awaits the challenge */
}

/* tcp names an IPv6 peer "[addr]:port" in what it says of a data connection
 * (it wrote "::1:port", which reads as the address ::1:port): a target on ::1
 * whose data listener closes every connection when asked to authenticate
 * fails the request with a message that names it [::1]:port. */
static void tcp_names_an_ipv6_peer_in_brackets(void **state)
{
    (void)state;
    require_ipv6_loopback();
    static const char key[] = "ipv6-test-key-0123456789abcdef";
    struct auth_key ak;
    assert_int_equal(auth_key_load(&ak, key, NULL, 0x6e6e), 0);
    static char published[65536];
    struct fake_target k;
    assert_int_equal(fake_target_start(&k, "::1", 0x6e6e, published, sizeof published, &ak, close_at_once, NULL), 0);
    struct ferry_config cfg;
    ferry_engine *e = NULL;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.local_server_name = "::1";
    cfg.auth_key = key;
    cfg.tcp_connections = 1;
    cfg.request_timeout_ms = 20000;
    cfg.connect_timeout_ms = 20000;
    if (ferry_engine_create(&cfg, &e) != 0)
        fail_msg("engine on ::1: %s", ferry_last_error());
    char *local = registered(e, 4096, 0);
    ferry_segment_t s;
    if (ferry_open_segment(e, k.name, &s) != 0)
        fail_msg("open %s: %s", k.name, ferry_last_error());
    ferry_batch *b;
    struct ferry_request w = {FERRY_WRITE, local, s, (uint64_t)(uintptr_t)k.mem, 4096};
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &w, 1), 0);
    assert_int_not_equal(ferry_batch_wait(b, 60000), 0);
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    char want[64];
    snprintf(want, sizeof want, "tcp [::1]:%d closed the connection", k.data_port);
    if (st.state == FERRY_COMPLETED || !strstr(st.message, want))
        fail_msg("want a failure naming \"%s\"; got state %d: %s", want, st.state, st.message);
    /* the connection's own prefix too (tcp_conn.c), not "tcp ::1:PORT:" */
    snprintf(want, sizeof want, "tcp ::1:%d", k.data_port);
    if (strstr(st.message, want))
        fail_msg("an IPv6 peer named without brackets: %s", st.message);
    ferry_batch_free(b);
    assert_int_equal(ferry_unregister_memory(e, local), 0);
    ferry_mem_free(e, "cpu", local, 4096);
    ferry_engine_destroy(e);
    fake_target_stop(&k);
    auth_key_wipe(&ak);
}

/* ------------------------------------------------------------ caps */

/* Did the server close fd within limit_ms (a bound that keeps the test from
 * hanging, not a measurement)?  limit_ms 0: is it closed already? */
static bool closed_by_server(int fd, int limit_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char sink[64];
    if (poll(&p, 1, limit_ms) <= 0)
        return false;
    ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

/* The per-peer connection cap holds for peers that come in over IPv6 (the
 * acceptor took only IPv4 addresses as peers: an IPv6 peer had no cap but
 * the total). */
static void per_peer_cap_over_ipv6(void **state)
{
    (void)state;
    require_ipv6_loopback();
    struct ferry_config cfg;
    ferry_engine *target = NULL;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.local_server_name = "::1";
    cfg.connect_timeout_ms = 60000; /* a served connection that says nothing stays open */
    cfg.max_connections_per_peer = 2;
    cfg.max_connections = 64;
    if (ferry_engine_create(&cfg, &target) != 0)
        fail_msg("engine on ::1: %s", ferry_last_error());
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT,
                              .sin6_port = htons((uint16_t)ferry_engine_handshake_port(target))};
    int fds[4];
    for (int i = 0; i < 4; i++) {
        fds[i] = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fds[i] >= 0);
        assert_int_equal(connect(fds[i], (struct sockaddr *)&sa, sizeof sa), 0);
    }
    /* the acceptor takes them in order: the third and fourth are over the cap */
    assert_true(closed_by_server(fds[2], 20000));
    assert_true(closed_by_server(fds[3], 20000));
    assert_false(closed_by_server(fds[0], 0));
    assert_false(closed_by_server(fds[1], 0));
    for (int i = 0; i < 4; i++)
        close(fds[i]);
    ferry_engine_destroy(target);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(names_with_ipv6_addresses),
        cmocka_unit_test(engine_on_an_ambiguous_name_is_refused),
        cmocka_unit_test(transfers_over_ipv6_loopback),
        cmocka_unit_test(per_peer_cap_over_ipv6),
        cmocka_unit_test(tcp_names_an_ipv6_peer_in_brackets),
    };
    (void)argc, (void)argv;
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}

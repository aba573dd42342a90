/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_config.c — the configuration table: defaults, environment overrides,
 * bad values named in the error, the tcp defaults that follow the host's
 * cores, and the README's table matching the code
 * (every knob documented, with the default the code uses).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "ferry.h"
#include "engine/engine.h"
#include "spin.h"
#include "transport/tcp/tcp.h"

static void defaults(void **state)
{
    (void)state;
    struct ferry_config c;
    assert_int_equal(ferry_config_init(&c), 0);
    assert_string_equal(c.metadata_server, "P2PHANDSHAKE");
    assert_string_equal(c.protocols, "tcp");
    assert_int_equal(c.tcp_connections, 4);
    assert_int_equal(c.slice_size, 1u << 20);
}

static void environment_overrides(void **state)
{
    (void)state;
    struct ferry_config c;
    setenv("FERRY_TCP_CONNECTIONS", "7", 1);
    setenv("FERRY_SLICE_SIZE", "256K", 1);
    setenv("FERRY_PROTOCOLS", "tcp,rdma", 1);
    assert_int_equal(ferry_config_init(&c), 0);
    assert_int_equal(c.tcp_connections, 7);
    assert_int_equal(c.slice_size, 256u << 10);
    assert_string_equal(c.protocols, "tcp,rdma");
    setenv("FERRY_TCP_CONNECTIONS", "seven", 1);
    assert_int_equal(ferry_config_init(&c), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "FERRY_TCP_CONNECTIONS"));
    setenv("FERRY_TCP_CONNECTIONS", "99999999999", 1);
    assert_int_equal(ferry_config_init(&c), FERRY_EINVAL);
    unsetenv("FERRY_TCP_CONNECTIONS");
    unsetenv("FERRY_SLICE_SIZE");
    unsetenv("FERRY_PROTOCOLS");
}

/* The tcp transport's own knobs, read when an engine starts: a bad value
 * fails the engine with FERRY_EINVAL and the knob's name; a good one
 * starts it.  Lists end with NULL. */
struct env_knob_case {
    const char *name;
    const char *bad[10];
    const char *good[10];
};

static const struct env_knob_case tcp_knobs[] = {
    {"FERRY_TCP_MAX_CONNECTIONS", {"0", "65", "four", "-1", "8x", "-18446744073709551615"}, {"auto", "", "1", "64"}},
    {"FERRY_TCP_GROW_BYTES", {"0", "65535", "1073741825", "2M", "-1", "lots"},
     {"auto", "", "65536", "1073741824"}},
    {"FERRY_TCP_INLINE_BYTES", {"1073741825", "512K", "-1", "lots"}, {"auto", "", "0", "524288", "1073741824"}},
    {"FERRY_TCP_SPREAD", {"0", "17", "-1", "4x", "two", "-18446744073709551615", " 4", "+4"}, {"auto", "", "1", "4", "16"}},
    {"FERRY_TCP_SPREAD_READ", {"0", "17", "-1", "8x", "eight", " 8"}, {"auto", "", "1", "8", "16"}},
    {"FERRY_TCP_SPREAD_STAGED", {"0", "17", "-1", "8x", "eight", " 8"}, {"auto", "", "1", "8", "16"}},
    {"FERRY_TCP_SOCKBUF", {"1", "65535", "268435457", "1M", "-1", "big"}, {"auto", "", "0", "65536", "268435456"}},
    {"FERRY_TCP_READ_HANDOFF", {"1073741825", "1M", "-1", "some"}, {"auto", "", "0", "1", "1048576", "1073741824"}},
    {"FERRY_TCP_ACK_HOLD", {"67108865", "256K", "-1", "some"}, {"auto", "", "0", "262144", "67108864"}},
    {"FERRY_TCP_RCVLOWAT", {"67108865", "256K", "-1", "some"}, {"auto", "", "0", "262144", "67108864"}},
    {"FERRY_TCP_SERVE_SPIN_US", {"10001", "100us", "-1", "some", " 5"}, {"auto", "", "0", "100", "10000"}},
    {"FERRY_TCP_RECV_SPIN_US", {"10001", "100us", "-1", "some", " 5", "+5"}, {"auto", "", "0", "100", "10000"}},
    {"FERRY_TCP_DEVICE_PIPE", {"0", "16383", "4194305", "64K", "auto", "-1"}, {"", "16384", "65536", "4194304"}},
    /* not tcp's: the engine's own, read the same way at start */
    {"FERRY_KEEPALIVE_S", {"86401", "-1", "5s", " 5", "+5", "auto"}, {"", "0", "2", "120", "86400"}},
    {"FERRY_WAIT_SPIN_US", {"10001", "-1", "5us", " 5", "+5", "Auto"}, {"auto", "", "0", "50", "10000"}},
};

static void tcp_knobs_checked(void **state)
{
    (void)state;
    ferry_engine *e = NULL;
    for (size_t k = 0; k < sizeof tcp_knobs / sizeof tcp_knobs[0]; k++) {
        const struct env_knob_case *c = &tcp_knobs[k];
        for (size_t i = 0; c->bad[i]; i++) {
            setenv(c->name, c->bad[i], 1);
            if (ferry_engine_create(NULL, &e) != FERRY_EINVAL)
                fail_msg("%s=%s: the engine started", c->name, c->bad[i]);
            if (!strstr(ferry_last_error(), c->name))
                fail_msg("%s=%s: the error does not name it: %s", c->name, c->bad[i], ferry_last_error());
        }
        for (size_t i = 0; c->good[i]; i++) {
            setenv(c->name, c->good[i], 1);
            if (ferry_engine_create(NULL, &e) != 0)
                fail_msg("%s=%s: %s", c->name, c->good[i], ferry_last_error());
            ferry_engine_destroy(e);
        }
        unsetenv(c->name);
    }
}

/* The tcp defaults that scale with the host: 2 cores (CI) keep 4
 * connections that grow at 8 MiB each, as before; 16 CPUs get 16 that grow
 * at 2 MiB; never below a slice, never above 16 connections. */
static void tcp_defaults_scale_with_cores(void **state)
{
    (void)state;
    const uint64_t MiB = 1u << 20;
    assert_int_equal(tcp_auto_max_connections(1), 4);
    assert_int_equal(tcp_auto_max_connections(2), 4);
    assert_int_equal(tcp_auto_max_connections(4), 4);
    assert_int_equal(tcp_auto_max_connections(8), 8);
    assert_int_equal(tcp_auto_max_connections(16), 16);
    assert_int_equal(tcp_auto_max_connections(32), 16);
    assert_int_equal(tcp_auto_max_connections(256), 16);
    assert_int_equal(tcp_auto_grow_bytes(4, MiB), 8 * MiB);
    assert_int_equal(tcp_auto_grow_bytes(1, MiB), 8 * MiB);
    assert_int_equal(tcp_auto_grow_bytes(8, MiB), 4 * MiB);
    assert_int_equal(tcp_auto_grow_bytes(16, MiB), 2 * MiB);
    assert_int_equal(tcp_auto_grow_bytes(64, MiB), MiB);
    /* socket buffers: the kernel's below 8 cores (2: CI, as before), 512
     * KiB from 8 (16 connections x the kernel's left the caches) */
    assert_int_equal(tcp_auto_sockbuf(2), 0);
    assert_int_equal(tcp_auto_sockbuf(7), 0);
    assert_int_equal(tcp_auto_sockbuf(8), 256u << 10);
    assert_int_equal(tcp_auto_sockbuf(16), 256u << 10);
    assert_int_equal(tcp_auto_sockbuf(256), 256u << 10);
    /* held WRITE acks: below 8 cores (2: CI), for frames of 64 x 4 KiB */
    assert_int_equal(tcp_auto_ack_hold(2), 256u << 10);
    assert_int_equal(tcp_auto_ack_hold(7), 256u << 10);
    assert_int_equal(tcp_auto_ack_hold(8), 0);
    assert_int_equal(tcp_auto_ack_hold(16), 0);
    /* the target's look before it sleeps: 100 µs on any host (t17v below 8
     * cores, t17w from 8); the initiator's receiver's: off below 8 cores (2:
     * CI, as before), 100 µs from 8 (both ends look there) */
    assert_int_equal(tcp_auto_serve_spin_us(1), 100);
    assert_int_equal(tcp_auto_serve_spin_us(2), 100);
    assert_int_equal(tcp_auto_serve_spin_us(7), 100);
    assert_int_equal(tcp_auto_serve_spin_us(8), 100);
    assert_int_equal(tcp_auto_serve_spin_us(16), 100);
    assert_int_equal(tcp_auto_recv_spin_us(1), 0);
    assert_int_equal(tcp_auto_recv_spin_us(2), 0);
    assert_int_equal(tcp_auto_recv_spin_us(7), 0);
    assert_int_equal(tcp_auto_recv_spin_us(8), 100);
    assert_int_equal(tcp_auto_recv_spin_us(16), 100);
    assert_int_equal(tcp_auto_recv_spin_us(256), 100);
    /* the waiter's look for its batch's end: 50 µs below 8 cores, 400 from 8 */
    assert_int_equal(engine_auto_wait_spin_us(1), 50);
    assert_int_equal(engine_auto_wait_spin_us(7), 50);
    assert_int_equal(engine_auto_wait_spin_us(8), 400);
    assert_int_equal(engine_auto_wait_spin_us(16), 400);
    assert_int_equal(tcp_auto_grow_bytes(16, 16 * MiB), 16 * MiB);
    assert_int_equal(tcp_auto_grow_bytes(0, MiB), 8 * MiB);
    assert_int_equal(tcp_auto_spread(1), 1); /* one frame per small submit below 8 cores */
    assert_int_equal(tcp_auto_spread(2), 1);
    assert_int_equal(tcp_auto_spread(7), 1);
    assert_int_equal(tcp_auto_spread(8), 2);
    assert_int_equal(tcp_auto_spread(16), 4);
    assert_int_equal(tcp_auto_spread(256), 4);
    assert_int_equal(tcp_auto_spread_read(2), 1);
    assert_int_equal(tcp_auto_spread_read(8), 2);
    assert_int_equal(tcp_auto_spread_read(16), 4);
    /* staged frames: as the direction's below 16 cores, 8 from 16 */
    assert_int_equal(tcp_auto_spread_staged(2), 0);
    assert_int_equal(tcp_auto_spread_staged(15), 0);
    assert_int_equal(tcp_auto_spread_staged(16), 8);
    assert_int_equal(tcp_auto_spread_staged(256), 8);
}

static void engine_rejects_bad_config(void **state)
{
    (void)state;
    struct ferry_config c;
    ferry_engine *e;
    ferry_config_init(&c);
    c.tcp_connections = 0;
    assert_int_equal(ferry_engine_create(&c, &e), FERRY_EINVAL);
    ferry_config_init(&c);
    c.protocols = "carrier-pigeon";
    assert_int_equal(ferry_engine_create(&c, &e), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "carrier-pigeon"));
    ferry_config_init(&c);
    c.metadata_server = "zookeeper://1.2.3.4:2181";
    assert_int_equal(ferry_engine_create(&c, &e), FERRY_ENOTSUP);
    ferry_config_init(&c);
    c.local_server_name = "127.0.0.1:99999";
    assert_int_equal(ferry_engine_create(&c, &e), FERRY_EINVAL);
}

/* The reference engine's MC_* variables map onto ferry's fields; FERRY_* wins. */
static void reference_variables(void **state)
{
    (void)state;
    struct ferry_config c;
    setenv("MC_TRANSFER_TIMEOUT", "2", 1); /* the reference's floor is 5 s */
    setenv("MC_FORCE_TCP", "1", 1);
    setenv("MC_TCP_BIND_ADDRESS", "127.0.0.9", 1);
    setenv("MC_SLICE_SIZE", "64K", 1);
    assert_int_equal(ferry_config_init(&c), 0);
    assert_int_equal(c.request_timeout_ms, 5000);
    assert_string_equal(c.protocols, "tcp");
    assert_string_equal(c.bind_address, "127.0.0.9");
    assert_int_equal(c.slice_size, 64u << 10);
    setenv("MC_TRANSFER_TIMEOUT", "40", 1);
    setenv("FERRY_PROTOCOLS", "tcp,shm", 1);
    setenv("FERRY_SLICE_SIZE", "128K", 1);
    setenv("MC_LEGACY_RPC_PORT_BINDING", "1", 1); /* the listener keeps local_server_name's host */
    assert_int_equal(ferry_config_init(&c), 0);
    assert_int_equal(c.request_timeout_ms, 40000);
    assert_string_equal(c.protocols, "tcp,shm");
    assert_int_equal(c.slice_size, 128u << 10);
    assert_string_equal(c.bind_address, "");
    setenv("FERRY_REQUEST_TIMEOUT_MS", "7000", 1);
    assert_int_equal(ferry_config_init(&c), 0);
    assert_int_equal(c.request_timeout_ms, 7000);
    setenv("MC_TRANSFER_TIMEOUT", "soon", 1);
    assert_int_equal(ferry_config_init(&c), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "MC_TRANSFER_TIMEOUT"));
    setenv("MC_TRANSFER_TIMEOUT", "5", 1);
    setenv("MC_SLICE_SIZE", "big", 1);
    assert_int_equal(ferry_config_init(&c), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "MC_SLICE_SIZE"));
    const char *vars[] = {"MC_TRANSFER_TIMEOUT", "MC_FORCE_TCP", "MC_TCP_BIND_ADDRESS", "MC_SLICE_SIZE",
                          "MC_LEGACY_RPC_PORT_BINDING", "FERRY_PROTOCOLS", "FERRY_SLICE_SIZE",
                          "FERRY_REQUEST_TIMEOUT_MS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
}

static void live_transports(ferry_engine *e, char *out, size_t cap)
{
    struct ferry_stats st;
    assert_int_equal(ferry_get_stats(e, &st), 0);
    out[0] = '\0';
    for (size_t i = 0; i < st.transport_count; i++)
        snprintf(out + strlen(out), cap - strlen(out), "%s%s", i ? "," : "", st.transports[i].name);
}

/* "rdma" with no usable NIC runs on tcp (one warning), "rdma,tcp" on tcp; with
 * transport_fallback=0 the missing NIC is an error, as before. */
static void rdma_without_nic_falls_back(void **state)
{
    (void)state;
    struct ferry_config c;
    ferry_engine *e = NULL;
    char live[64];
    const char *lists[] = {"rdma", "rdma,tcp", "tcp,rdma"};
    for (size_t i = 0; i < 3; i++) {
        ferry_config_init(&c);
        c.protocols = lists[i];
        c.device_name = "nosuch0"; /* no NIC of that name on any host */
        assert_int_equal(ferry_engine_create(&c, &e), 0);
        live_transports(e, live, sizeof live);
        assert_string_equal(live, "tcp");
        ferry_engine_destroy(e);
    }
    ferry_config_init(&c);
    c.protocols = "rdma";
    c.device_name = "nosuch0";
    c.transport_fallback = 0;
    int rc = ferry_engine_create(&c, &e);
    assert_true(rc == FERRY_ENODEV || rc == FERRY_ENOTSUP); /* ENOTSUP: rdma not built */
    ferry_config_init(&c);
    c.protocols = "rdma,carrier-pigeon"; /* an unknown name is still an error */
    assert_int_equal(ferry_engine_create(&c, &e), FERRY_EINVAL);
}

/* The rdma transport's knobs and its device list are checked before any NIC
 * is looked for: a bad one fails the engine with FERRY_EINVAL naming it,
 * on a host with no NIC too (before, strtoul took " 8", "+8" and "0x8", and
 * atoi made "mlx5_0:x" port 0: any port). */
static void rdma_knobs_checked(void **state)
{
    (void)state;
    struct ferry_config c;
    ferry_engine *e = NULL;
    ferry_config_init(&c);
    c.protocols = "tcp,rdma";
    int rc = ferry_engine_create(&c, &e);
    if (rc == 0)
        ferry_engine_destroy(e);
    ferry_config_init(&c);
    c.protocols = "rdma";
    c.transport_fallback = 0;
    if (ferry_engine_create(&c, &e) == FERRY_ENOTSUP) {
        printf("SKIPPED: this build has no rdma transport (no libibverbs)\n");
        return;
    }
    const char *bad_wr[] = {" 8", "+8", "0x10", "3", "16385", "-1", "8k"};
    c.protocols = "tcp,rdma";
    c.transport_fallback = 1;
    for (size_t i = 0; i < sizeof bad_wr / sizeof bad_wr[0]; i++) {
        setenv("FERRY_RDMA_MAX_WR", bad_wr[i], 1);
        if (ferry_engine_create(&c, &e) != FERRY_EINVAL)
            fail_msg("FERRY_RDMA_MAX_WR=\"%s\": the engine started", bad_wr[i]);
        assert_non_null(strstr(ferry_last_error(), "FERRY_RDMA_MAX_WR"));
    }
    unsetenv("FERRY_RDMA_MAX_WR");
    const char *bad_dev[] = {"mlx5_0:x", "mlx5_0:0", "mlx5_0:256", "mlx5_0:", "mlx5_0,mlx5_1:-1", "mlx5_0: 1"};
    for (size_t i = 0; i < sizeof bad_dev / sizeof bad_dev[0]; i++) {
        c.device_name = bad_dev[i];
        if (ferry_engine_create(&c, &e) != FERRY_EINVAL)
            fail_msg("device \"%s\": the engine started", bad_dev[i]);
        assert_non_null(strstr(ferry_last_error(), "port"));
    }
    char longname[300];
    memset(longname, 'm', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    c.device_name = longname;
    assert_int_equal(ferry_engine_create(&c, &e), FERRY_EINVAL);
    /* a port that is well formed but absent: no such device here, tcp runs */
    c.device_name = "nosuch0:1";
    assert_int_equal(ferry_engine_create(&c, &e), 0);
    ferry_engine_destroy(e);
}

/* The segment name as the reference forms it: P2P "host:bound port", an
 * Ascend ":npu_N" suffix dropped. */
static void segment_names(void **state)
{
    (void)state;
    struct ferry_config c;
    ferry_engine *e = NULL;
    ferry_config_init(&c);
    c.local_server_name = "127.0.0.1:0:npu_3";
    assert_int_equal(ferry_engine_create(&c, &e), 0);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d", ferry_engine_handshake_port(e));
    assert_string_equal(ferry_engine_segment_name(e), want);
    ferry_engine_destroy(e);
    ferry_config_init(&c);
    c.local_server_name = "127.0.0.1:0:npu_x";
    assert_int_equal(ferry_engine_create(&c, &e), FERRY_EINVAL);
}

static void readme_lists_every_knob(void **state)
{
    (void)state;
    FILE *f = fopen(FERRY_SOURCE_DIR "/README.md", "re");
    assert_non_null(f);
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    size_t count;
    const struct ferry_config_knob *k = ferry_config_describe(&count);
    assert_true(count > 10);
    for (size_t i = 0; i < count; i++) {
        char row[256];
        snprintf(row, sizeof row, "| %s | %s |", k[i].env, k[i].default_text);
        if (!strstr(text, row))
            fail_msg("README.md has no row starting \"%s\" (regenerate the table: build, then bash scripts/update-readme-config.sh)",
                     row);
    }
}

/* dir/name (its folders made) holds text. */
static void put_file(const char *dir, const char *sub, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s%s", dir, sub);
    for (char *p = path + strlen(dir) + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            (void)mkdir(path, 0700);
            *p = '/';
        }
    (void)mkdir(path, 0700);
    snprintf(path, sizeof path, "%s%s/%s", dir, sub, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A container given fewer CPUs by a cgroup bandwidth limit than its
 * affinity shows (Docker --cpus, Kubernetes limits) is sized by the limit:
 * quota / period rounded up, the lowest on the cgroup's path to the root,
 * cgroup v2 first, v1's cpu controller else (a hybrid host has both lines). */
static void cgroup_limits_cores(void **state)
{
    (void)state;
    char root[] = "/tmp/ferry-cgroup-XXXXXX";
    assert_non_null(mkdtemp(root));
    /* v2: the parent's 2.5 CPUs hold for the child, which sets none */
    put_file(root, "/kube/pod", "cpu.max", "max 100000\n");
    put_file(root, "/kube", "cpu.max", "250000 100000\n");
    assert_int_equal(cgroup_cpu_limit(root, "0::/kube/pod\n"), 3);
    put_file(root, "/kube/pod", "cpu.max", "50000 100000\n"); /* half a CPU: one */
    assert_int_equal(cgroup_cpu_limit(root, "0::/kube/pod\n"), 1);
    assert_int_equal(cgroup_cpu_limit(root, "0::/\n"), 0); /* the root: no limit */
    assert_int_equal(cgroup_cpu_limit(root, "0::/nowhere\n"), 0);
    /* v1 (a hybrid host: "0::/" has no cpu.max, the cpu controller is v1's) */
    put_file(root, "/cpu/docker/abc", "cpu.cfs_quota_us", "200000\n");
    put_file(root, "/cpu/docker/abc", "cpu.cfs_period_us", "100000\n");
    const char *hybrid = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n";
    assert_int_equal(cgroup_cpu_limit(root, hybrid), 2);
    put_file(root, "/cpu/docker/abc", "cpu.cfs_quota_us", "-1\n");
    assert_int_equal(cgroup_cpu_limit(root, hybrid), 0);
    assert_int_equal(cgroup_cpu_limit(root, "4:cpuacct:/docker/abc\n"), 0); /* not the cpu controller */
    put_file(root, "/kube", "cpu.max", "garbage\n");
    assert_int_equal(cgroup_cpu_limit(root, "0::/kube/pod\n"), 1);
    assert_int_equal(cgroup_cpu_limit(root, ""), 0);
    assert_true(usable_cores() >= 1);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults),
        cmocka_unit_test(environment_overrides),
        cmocka_unit_test(engine_rejects_bad_config),
        cmocka_unit_test(tcp_knobs_checked),
        cmocka_unit_test(tcp_defaults_scale_with_cores),
        cmocka_unit_test(reference_variables),
        cmocka_unit_test(rdma_without_nic_falls_back),
        cmocka_unit_test(rdma_knobs_checked),
        cmocka_unit_test(segment_names),
        cmocka_unit_test(readme_lists_every_knob),
        cmocka_unit_test(cgroup_limits_cores),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

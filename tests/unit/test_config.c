/*
 * test_config.c — the configuration table: defaults, environment overrides,
 * bad values named in the error, and the README's table matching the code
 * (every knob documented, with the default the code uses).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ferry.h"

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

static void readme_lists_every_knob(void **state)
{
    (void)state;
    FILE *f = fopen(FERRY_SOURCE_DIR "/README.md", "r");
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
            fail_msg("README.md has no row starting \"%s\" (regenerate the table: ferry-bench --help-env=markdown)",
                     row);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(defaults),
        cmocka_unit_test(environment_overrides),
        cmocka_unit_test(engine_rejects_bad_config),
        cmocka_unit_test(readme_lists_every_knob),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

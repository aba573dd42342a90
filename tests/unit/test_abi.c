/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_abi.c — ferry.h's stability promise: a program built against an older
 * ferry.h (smaller ferry_config / ferry_stats) or a newer one (larger) works
 * with this library, which reads and writes only the caller's bytes.  The
 * "old" and "new" structs are byte buffers of the sizes such a program would
 * have compiled, with guard bytes after them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "engine/engine.h"
#include "ferry.h"

#define GUARD 0xAB

/* a buffer of `size` bytes for the caller's struct, guard bytes after it */
static union {
    uint64_t align;
    unsigned char bytes[8192];
} buf;

static void fill_guard(void)
{
    memset(buf.bytes, GUARD, sizeof buf.bytes);
}

static void assert_guard_from(size_t from)
{
    for (size_t i = from; i < sizeof buf.bytes; i++)
        if (buf.bytes[i] != GUARD)
            fail_msg("byte %zu beyond the caller's %zu-byte struct was written", i, from);
}

/* An older ferry.h ended struct ferry_config before staging_chunk_size. */
static const size_t old_config_size = offsetof(struct ferry_config, staging_chunk_size);

static void older_config_is_not_overrun(void **state)
{
    (void)state;
    fill_guard();
    struct ferry_config *old = (struct ferry_config *)buf.bytes;
    assert_int_equal(ferry_config_init_sized(old, old_config_size), 0);
    assert_guard_from(old_config_size);
    assert_int_equal(old->struct_size, old_config_size);
    assert_int_equal(old->tcp_connections, 4);
    assert_string_equal(old->protocols, "tcp");
}

static void older_config_gets_defaults_and_environment_for_new_knobs(void **state)
{
    (void)state;
    fill_guard();
    struct ferry_config *old = (struct ferry_config *)buf.bytes;
    assert_int_equal(ferry_config_init_sized(old, old_config_size), 0);
    old->tcp_connections = 2;                 /* a knob the old header knows */
    setenv("FERRY_STAGING_CHUNKS", "3", 1);   /* knobs it does not know */
    ferry_engine *e;
    assert_int_equal(ferry_engine_create(old, &e), 0);
    unsetenv("FERRY_STAGING_CHUNKS");
    assert_int_equal(e->cfg.tcp_connections, 2);
    assert_int_equal(e->cfg.staging_chunks, 3);
    assert_int_equal(e->cfg.staging_chunk_size, 2u << 20);
    assert_int_equal(e->cfg.log_level, 1);
    assert_int_equal(e->cfg.struct_size, sizeof(struct ferry_config));
    ferry_engine_destroy(e);
    assert_guard_from(old_config_size);
}

static void newer_config_is_accepted_while_its_new_knobs_are_unset(void **state)
{
    (void)state;
    size_t newer = sizeof(struct ferry_config) + 64;
    fill_guard();
    struct ferry_config *cfg = (struct ferry_config *)buf.bytes;
    assert_int_equal(ferry_config_init_sized(cfg, newer), 0);
    assert_guard_from(newer);
    for (size_t i = sizeof(struct ferry_config); i < newer; i++)
        assert_int_equal(buf.bytes[i], 0);
    ferry_engine *e;
    assert_int_equal(ferry_engine_create(cfg, &e), 0);
    ferry_engine_destroy(e);
    buf.bytes[newer - 1] = 1;   /* the newer program set a knob this library lacks */
    assert_int_equal(ferry_engine_create(cfg, &e), FERRY_ENOTSUP);
    assert_non_null(strstr(ferry_last_error(), "newer ferry.h"));
}

static void config_not_from_init_is_rejected(void **state)
{
    (void)state;
    struct ferry_config c;
    ferry_engine *e;
    ferry_config_init(&c);
    c.struct_size = 0;          /* e.g. a struct filled by hand */
    assert_int_equal(ferry_engine_create(&c, &e), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "ferry_config_init"));
    c.struct_size = 1u << 20;   /* garbage */
    assert_int_equal(ferry_engine_create(&c, &e), FERRY_EINVAL);
    assert_int_equal(ferry_config_init_sized(&c, 4), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "size 4"));
    assert_int_equal(ferry_config_init_sized(NULL, sizeof c), FERRY_EINVAL);
}

static ferry_engine *two_transport_engine(void)
{
    struct ferry_config c;
    ferry_config_init(&c);
    c.protocols = "tcp,shm";
    ferry_engine *e;
    assert_int_equal(ferry_engine_create(&c, &e), 0);
    return e;
}

static const size_t head = offsetof(struct ferry_stats, transports);

static void older_stats_are_written_in_the_older_layout(void **state)
{
    (void)state;
    ferry_engine *e = two_transport_engine();
    /* an older ferry_transport_stats ended before bytes_staged */
    size_t tsize = offsetof(struct ferry_transport_stats, bytes_staged);
    size_t size = head + FERRY_MAX_TRANSPORTS * tsize;
    fill_guard();
    assert_int_equal(ferry_get_stats_sized(e, (struct ferry_stats *)buf.bytes, size, tsize), 0);
    assert_guard_from(size);
    assert_int_equal(((struct ferry_stats *)buf.bytes)->transport_count, 2);
    assert_string_equal((char *)buf.bytes + head, "tcp");
    assert_string_equal((char *)buf.bytes + head + tsize, "shm");   /* the caller's stride */
    ferry_engine_destroy(e);
}

static void newer_stats_get_zeros_for_unknown_fields(void **state)
{
    (void)state;
    ferry_engine *e = two_transport_engine();
    size_t t = sizeof(struct ferry_transport_stats), tsize = t + 16;
    size_t size = head + FERRY_MAX_TRANSPORTS * tsize + 32;
    fill_guard();
    assert_int_equal(ferry_get_stats_sized(e, (struct ferry_stats *)buf.bytes, size, tsize), 0);
    assert_guard_from(size);
    assert_string_equal((char *)buf.bytes + head + tsize, "shm");
    for (size_t i = 0; i < FERRY_MAX_TRANSPORTS; i++)
        for (size_t j = t; j < tsize; j++)
            assert_int_equal(buf.bytes[head + i * tsize + j], 0);
    for (size_t j = head + FERRY_MAX_TRANSPORTS * tsize; j < size; j++)
        assert_int_equal(buf.bytes[j], 0);
    struct ferry_stats st;   /* and the plain call, through the macro */
    assert_int_equal(ferry_get_stats(e, &st), 0);
    assert_int_equal(st.transport_count, 2);
    ferry_engine_destroy(e);
}

static void impossible_stats_sizes_are_rejected(void **state)
{
    (void)state;
    ferry_engine *e = two_transport_engine();
    struct ferry_stats st;
    assert_int_equal(ferry_get_stats_sized(e, &st, sizeof st, 4), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "ferry_get_stats"));
    assert_int_equal(ferry_get_stats_sized(e, &st, head, sizeof st.transports[0]), FERRY_EINVAL);
    assert_int_equal(ferry_get_stats_sized(e, NULL, sizeof st, sizeof st.transports[0]), FERRY_EINVAL);
    ferry_engine_destroy(e);
}

#if FERRY_ABI_VERSION == 1
/* The layout programs built for libferry.so.1 were compiled with (x86-64).
 * Growable structs may gain fields at their end only; these offsets must never
 * move.  Frozen structs keep their size.  A change here means: bump
 * FERRY_ABI_VERSION (and with it the SONAME), then write the new table. */
static const struct {
    const char *field;
    size_t offset, abi1;
} layout[] = {
#define AT(s, f, off) {#s "." #f, offsetof(struct s, f), off}
    AT(ferry_config, struct_size, 0), AT(ferry_config, local_server_name, 8), AT(ferry_config, metadata_server, 16),
    AT(ferry_config, metadata_prefix, 24), AT(ferry_config, metadata_ttl_s, 32), AT(ferry_config, protocols, 40),
    AT(ferry_config, device_name, 48), AT(ferry_config, tcp_connections, 56), AT(ferry_config, slice_size, 64),
    AT(ferry_config, coalesce_max, 72), AT(ferry_config, request_timeout_ms, 76),
    AT(ferry_config, connect_timeout_ms, 80), AT(ferry_config, staging_chunk_size, 88),
    AT(ferry_config, staging_chunks, 96), AT(ferry_config, notify_queue_max, 100), AT(ferry_config, log_level, 104),
    AT(ferry_transport_stats, name, 0), AT(ferry_transport_stats, bytes_written, 16),
    AT(ferry_transport_stats, bytes_read, 24), AT(ferry_transport_stats, bytes_served, 32),
    AT(ferry_transport_stats, requests_completed, 40), AT(ferry_transport_stats, requests_failed, 48),
    AT(ferry_transport_stats, frames_sent, 56), AT(ferry_transport_stats, refused, 64),
    AT(ferry_transport_stats, bytes_staged, 72), AT(ferry_transport_stats, bytes_bounced, 80),
    AT(ferry_stats, transport_count, 0), AT(ferry_stats, transports, 8),
#undef AT
};

static void abi1_layout_only_grows_at_the_end(void **state)
{
    (void)state;
    if (sizeof(void *) != 8)
        skip();
    for (size_t i = 0; i < sizeof layout / sizeof layout[0]; i++)
        if (layout[i].offset != layout[i].abi1)
            fail_msg("%s moved from offset %zu to %zu: an ABI break (add fields at the end, or bump "
                     "FERRY_ABI_VERSION)", layout[i].field, layout[i].abi1, layout[i].offset);
    assert_int_equal(FERRY_MAX_TRANSPORTS, 4);
    assert_int_equal(sizeof(struct ferry_request), 40);
    assert_int_equal(sizeof(struct ferry_status), 176);
    assert_int_equal(sizeof(struct ferry_buffer_info), 48);
    assert_int_equal(sizeof(struct ferry_notification), 4232);
    assert_int_equal(sizeof(struct ferry_config_knob), 24);
}
#endif

static void version_matches_header(void **state)
{
    (void)state;
    char v[32];
    snprintf(v, sizeof v, "%d.%d.%d", FERRY_VERSION_MAJOR, FERRY_VERSION_MINOR, FERRY_VERSION_PATCH);
    assert_string_equal(ferry_version(), v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(older_config_is_not_overrun),
        cmocka_unit_test(older_config_gets_defaults_and_environment_for_new_knobs),
        cmocka_unit_test(newer_config_is_accepted_while_its_new_knobs_are_unset),
        cmocka_unit_test(config_not_from_init_is_rejected),
        cmocka_unit_test(older_stats_are_written_in_the_older_layout),
        cmocka_unit_test(newer_stats_get_zeros_for_unknown_fields),
        cmocka_unit_test(impossible_stats_sizes_are_rejected),
        cmocka_unit_test(version_matches_header),
#if FERRY_ABI_VERSION == 1
        cmocka_unit_test(abi1_layout_only_grows_at_the_end),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

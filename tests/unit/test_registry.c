/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_registry.c — the plug-in registries and what is derived from them:
 * location strings from the device tables (host memory is the cpu table),
 * transports found by name with run-time registration and its refusals,
 * known-but-absent transports told apart from typos, host buffers asking
 * for huge pages, and
 * ferry_config_describe listing the knobs the tables carry.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <cmocka.h>

#include "device/device.h"
#include "transport/transport.h"

static const struct ferry_config_knob dummy_knobs[] = {
    {"FERRY_TEST_DUMMY_KNOB", "3", "a knob of the test's dummy transport"},
    {NULL, NULL, NULL},
};

static int dummy_create(const struct transport_host *host, void **out)
{
    (void)host;
    (void)out;
    return FERRY_ENODEV;
}

static const struct transport_ops dummy = {.name = "dummy", .knobs = dummy_knobs, .create = dummy_create};

static void describe_lists_table_knobs(void **state)
{
    (void)state;
    /* registered before the first describe: its knob is listed too */
    assert_int_equal(transport_register(&dummy), 0);
    size_t n;
    const struct ferry_config_knob *k = ferry_config_describe(&n);
    static const char *const want[] = {"FERRY_PROTOCOLS", "FERRY_SIM_DEVICES", "FERRY_CUDA_GATHER_KERNEL",
                                       "FERRY_NPU_COPY_ALIGN", "FERRY_TEST_DUMMY_KNOB"};
    for (size_t w = 0; w < sizeof want / sizeof want[0]; w++) {
        size_t found = 0;
        for (size_t i = 0; i < n; i++)
            found += strcmp(k[i].env, want[w]) == 0;
        if (found != 1)
            fail_msg("%s listed %zu times", want[w], found);
    }
}

static void transport_registration(void **state)
{
    (void)state;
    assert_ptr_equal(transport_find("tcp"), &ferry_tcp_transport);
    assert_ptr_equal(transport_find("dummy"), &dummy);
    assert_null(transport_find("carrier-pigeon"));
    assert_null(transport_find(NULL));
    /* refusals: a name taken, a table without create, a full registry */
    assert_int_equal(transport_register(&ferry_tcp_transport), FERRY_EEXIST);
    assert_non_null(strstr(ferry_last_error(), "\"tcp\""));
    static const struct transport_ops nameless = {.create = dummy_create};
    assert_int_equal(transport_register(&nameless), FERRY_EINVAL);
    assert_int_equal(transport_register(NULL), FERRY_EINVAL);
    static struct transport_ops more[16];
    static char names[16][16];
    int rc = 0;
    for (size_t i = 0; i < 16 && rc == 0; i++) {
        snprintf(names[i], sizeof names[i], "extra%zu", i);
        more[i] = (struct transport_ops){.name = names[i], .create = dummy_create};
        rc = transport_register(&more[i]);
    }
    assert_int_equal(rc, FERRY_ENOMEM);
    assert_non_null(strstr(ferry_last_error(), "full"));
}

/* A registered transport is started by name; one whose device is missing
 * fails the engine with its own code; a known name this build lacks is
 * FERRY_ENOTSUP (skipped with transport_fallback), a typo FERRY_EINVAL. */
static void engine_uses_the_registry(void **state)
{
    (void)state;
    struct ferry_config c;
    ferry_engine *e = NULL;
    ferry_config_init(&c);
    c.protocols = "dummy";
    assert_int_equal(ferry_engine_create(&c, &e), FERRY_ENODEV); /* dummy is not NEEDS_HARDWARE: not skipped */
    ferry_config_init(&c);
    c.protocols = "ascend";
    c.transport_fallback = 0;
    assert_int_equal(ferry_engine_create(&c, &e), FERRY_ENOTSUP);
    assert_non_null(strstr(ferry_last_error(), "available: tcp, shm"));
    c.transport_fallback = 1;
    assert_int_equal(ferry_engine_create(&c, &e), 0);
    struct ferry_stats st;
    assert_int_equal(ferry_get_stats(e, &st), 0);
    assert_int_equal(st.transport_count, 1);
    assert_string_equal(st.transports[0].name, "tcp"); /* the registry's first line is the fallback */
    ferry_engine_destroy(e);
    ferry_config_init(&c);
    c.protocols = "carrier-pigeon";
    assert_int_equal(ferry_engine_create(&c, &e), FERRY_EINVAL);
}

static void locations_from_device_tables(void **state)
{
    (void)state;
    const struct ferry_device_ops *ops = NULL;
    int index = -7;
    assert_int_equal(ferry_location_resolve("cpu:3", &ops, &index), 0);
    assert_ptr_equal(ops, &ferry_device_cpu);
    assert_true(ops->caps & FERRY_DEVICE_HOST);
    assert_int_equal(index, 3);
    assert_int_equal(ferry_location_resolve("cuda", &ops, &index), 0); /* cuda's table: a bare "cuda" is cuda:0 */
    assert_ptr_equal(ops, &ferry_device_cuda);
    assert_int_equal(index, 0);
    assert_int_equal(ferry_location_resolve("npu", &ops, &index), FERRY_EINVAL); /* kind:N only */
    assert_int_equal(ferry_location_resolve("tpu:0", &ops, &index), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "cpu, cpu:N, cuda, cuda:N, npu:N, sim:N"));
    /* host memory has a table, but transports see no device behind it */
    assert_null(ferry_device_of_location("cpu", &index));
    assert_ptr_equal(ferry_device_of_location("sim:1", &index), &ferry_device_sim);
    assert_int_equal(index, 1);
    size_t n;
    const struct ferry_device_ops *const *all = ferry_device_list(&n);
    assert_true(n >= 4);
    assert_ptr_equal(all[0], &ferry_device_cpu);
}

/* Host memory through the cpu table: page-aligned, zeroed, freed by pointer. */
static void cpu_table_allocates(void **state)
{
    (void)state;
    struct ferry_config c;
    ferry_engine *e = NULL;
    ferry_config_init(&c);
    assert_int_equal(ferry_engine_create(&c, &e), 0);
    char *p = NULL;
    assert_int_equal(ferry_mem_alloc(e, "cpu:0", 10000, (void **)&p), 0);
    assert_int_equal((uintptr_t)p % 4096, 0);
    for (size_t i = 0; i < 10000; i++)
        assert_int_equal(p[i], 0);
    memset(p, 1, 10000);
    assert_int_equal(ferry_register_memory(e, p, 10000, "cpu", 1), 0);
    assert_int_equal(ferry_unregister_memory(e, p), 0);
    ferry_mem_free(e, "cpu:0", p, 10000);
    assert_int_equal(ferry_mem_alloc(e, "gpu:0", 4096, (void **)&p), FERRY_EINVAL);
    assert_int_equal(ferry_mem_alloc(e, "sim:99", 4096, (void **)&p), FERRY_ENODEV);
    ferry_engine_destroy(e);
}

/* The VmFlags of the mapping that holds p, from /proc/self/smaps ("" if none). */
static void vm_flags_of(const void *p, char *out, size_t cap)
{
    FILE *f = fopen("/proc/self/smaps", "re");
    char line[512];
    bool inside = false;
    out[0] = '\0';
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
            inside = (uintptr_t)p >= lo && (uintptr_t)p < hi;
        else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
            snprintf(out, cap, "%s", line + 8);
            break;
        }
    }
    if (f)
        fclose(f);
}

/* Host buffers of 2 MiB or more ask for transparent huge pages (the kernel's
 * first copy into each 4 KiB page is what made large TCP transfers start
 * slowly, docs/BENCHMARKS.md); smaller ones keep plain pages. */
static void cpu_table_advises_huge_pages(void **state)
{
    (void)state;
    void *probe = mmap(NULL, 4u << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(probe != MAP_FAILED);
    int thp = madvise(probe, 4u << 20, MADV_HUGEPAGE);
    munmap(probe, 4u << 20);
    if (thp != 0)
        skip(); /* a kernel without transparent huge pages */
    struct ferry_config c;
    ferry_engine *e = NULL;
    ferry_config_init(&c);
    assert_int_equal(ferry_engine_create(&c, &e), 0);
    char flags[512];
    void *big = NULL, *small = NULL;
    assert_int_equal(ferry_mem_alloc(e, "cpu", 4u << 20, &big), 0);
    assert_int_equal(ferry_mem_alloc(e, "cpu", 64u << 10, &small), 0);
    vm_flags_of(big, flags, sizeof flags);
    assert_non_null(strstr(flags, " hg"));
    vm_flags_of(small, flags, sizeof flags);
    assert_non_null(strstr(flags, " rd")); /* found, and */
    assert_null(strstr(flags, " hg"));     /* no advice */
    ferry_mem_free(e, "cpu", big, 4u << 20);
    ferry_mem_free(e, "cpu", small, 64u << 10);
    ferry_engine_destroy(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(describe_lists_table_knobs), /* first: it registers the dummy */
        cmocka_unit_test(transport_registration),
        cmocka_unit_test(engine_uses_the_registry),
        cmocka_unit_test(locations_from_device_tables),
        cmocka_unit_test(cpu_table_allocates),
        cmocka_unit_test(cpu_table_advises_huge_pages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

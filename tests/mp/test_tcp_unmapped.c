/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_tcp_unmapped.c — a tcp target whose registered remote-accessible
 * range is not mapped (PROT_NONE here; munmap after register in the wild):
 * its recv or send into the range fails with EFAULT.  The frame must be
 * answered with a named error (FERRY_EIO, the target logs the range), not
 * the connection dropped without a word (round 8: the initiator saw
 * FERRY_ECONN and the target logged nothing), and the next transfer over
 * the same engines works.  Two engines of this process, tcp only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <cmocka.h>

#include "testutil.h"

#define LEN (256u << 10)

struct pair {
    ferry_engine *target, *init;
    char *mem;          /* target: [0, LEN) readable and writable, [LEN, 2 LEN) PROT_NONE */
    char *local;        /* initiator's */
    ferry_segment_t seg;
};

static ferry_engine *tcp_engine(void)
{
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = "tcp";
    cfg.transport_fallback = 0;
    cfg.request_timeout_ms = 30000;
    ferry_engine *e;
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    return e;
}

static int setup(void **state)
{
    struct pair *p = calloc(1, sizeof *p);
    assert_non_null(p);
    p->target = tcp_engine();
    p->init = tcp_engine();
    p->mem = mmap(NULL, 2 * LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p->mem != MAP_FAILED);
    assert_int_equal(mprotect(p->mem + LEN, LEN, PROT_NONE), 0);
    assert_int_equal(ferry_register_memory(p->target, p->mem, 2 * LEN, "cpu", 1), 0);
    p->local = malloc(LEN);
    assert_non_null(p->local);
    assert_int_equal(ferry_register_memory(p->init, p->local, LEN, "cpu", 0), 0);
    assert_int_equal(ferry_open_segment(p->init, ferry_engine_segment_name(p->target), &p->seg), 0);
    *state = p;
    return 0;
}

static int teardown(void **state)
{
    struct pair *p = *state;
    ferry_engine_destroy(p->init);
    ferry_engine_destroy(p->target);
    munmap(p->mem, 2 * LEN);
    free(p->local);
    free(p);
    return 0;
}

/* One request of op between local and the target's mem + off; returns the
 * batch's result, the request's status in *st. */
static int one(struct pair *p, int op, size_t off, size_t len, struct ferry_status *st)
{
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(p->init, 1, &b), 0);
    struct ferry_request q = {op, p->local, p->seg, (uint64_t)(uintptr_t)(p->mem + off), len};
    assert_int_equal(ferry_batch_submit(b, &q, 1), 0);
    int rc = ferry_batch_wait(b, -1);
    assert_int_equal(ferry_batch_status(b, 0, st), 0);
    ferry_batch_free(b);
    return rc;
}

static void assert_unmapped_named(int rc, const struct ferry_status *st)
{
    if (rc != FERRY_EIO)
        fail_msg("a transfer to unmapped registered memory ended %s (\"%s\"), not FERRY_EIO", ferry_err_name(rc),
                 st->message);
    assert_int_equal(st->state, FERRY_FAILED);
    assert_int_equal(st->error, FERRY_EIO);
    assert_non_null(strstr(st->message, "not mapped"));
}

static void write_into_unmapped_memory(void **state)
{
    struct pair *p = *state;
    struct ferry_status st;
    pattern_fill(p->local, LEN, 7, 0);
    assert_unmapped_named(one(p, FERRY_WRITE, LEN, LEN, &st), &st);
    /* half in the mapped part: what fits lands or not, the request fails */
    assert_unmapped_named(one(p, FERRY_WRITE, LEN / 2, LEN, &st), &st);
    pattern_fill(p->local, LEN, 8, 0);
    assert_int_equal(one(p, FERRY_WRITE, 0, LEN, &st), 0); /* the engines go on */
    assert_int_equal(pattern_check(p->mem, LEN, 8, 0), -1);
}

static void read_from_unmapped_memory(void **state)
{
    struct pair *p = *state;
    struct ferry_status st;
    assert_unmapped_named(one(p, FERRY_READ, LEN, LEN, &st), &st);
    assert_unmapped_named(one(p, FERRY_READ, LEN / 2, LEN, &st), &st);
    pattern_fill(p->mem, LEN, 9, 0);
    assert_int_equal(one(p, FERRY_READ, 0, LEN, &st), 0);
    assert_int_equal(pattern_check(p->local, LEN, 9, 0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(write_into_unmapped_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(read_from_unmapped_memory, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * xfer_pair.c — a target in a child process and an initiator engine here
 * (see xfer_pair.h).
 */
#include "xfer_pair.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

void xfer_pair_start(struct xfer_pair *p, size_t len, const char *target_loc, uint64_t seed,
                     const struct ferry_config *cfg, const char *local_loc)
{
    xfer_pair_start_target(p, len, target_loc, seed);
    xfer_pair_open(p, cfg, local_loc);
}

void xfer_pair_start_target(struct xfer_pair *p, size_t len, const char *target_loc, uint64_t seed)
{
    memset(p, 0, sizeof *p);
    assert_int_equal(child_target_start(&p->target, len, target_loc, seed), 0);
    p->len = len;
}

void xfer_pair_open(struct xfer_pair *p, const struct ferry_config *cfg, const char *local_loc)
{
    size_t len = p->len;
    int rc = ferry_engine_create(cfg, &p->e);
    if (rc)
        fail_msg("engine: %s: %s", ferry_err_name(rc), ferry_last_error());
    p->loc = local_loc;
    p->host = malloc(len);
    assert_non_null(p->host);
    assert_int_equal(ferry_mem_alloc(p->e, local_loc, len, (void **)&p->local), 0);
    assert_int_equal(ferry_register_memory(p->e, p->local, len, local_loc, 0), 0);
    assert_int_equal(ferry_open_segment(p->e, p->target.name, &p->seg), 0);
}

int xfer_pair_teardown(void **state)
{
    struct xfer_pair *p = *state;
    xfer_pair_stop(p);
    free(p);
    return 0;
}

int xfer_pair_move(struct xfer_pair *p, int op, struct xfer_blocks k, uint64_t seed, int timeout_ms)
{
    struct ferry_request *r = calloc(k.n, sizeof *r);
    assert_non_null(r);
    for (size_t i = 0; i < k.n; i++) {
        uint64_t off = k.base + i * k.stride;
        r[i] = (struct ferry_request){op, p->local + off, p->seg, p->target.addr + off, k.bs};
        if (op == FERRY_WRITE)
            pattern_fill(p->host + off, k.bs, seed, off);
        else
            memset(p->host + off, 0, k.bs);
        assert_int_equal(ferry_mem_copy(p->e, p->local + off, p->host + off, k.bs), 0);
    }
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(p->e, k.n, &b), 0);
    int rc = ferry_batch_submit(b, r, k.n);
    if (rc == 0)
        rc = ferry_batch_wait(b, timeout_ms);
    ferry_batch_free(b);
    for (size_t i = 0; rc == 0 && i < k.n; i++) {
        uint64_t off = k.base + i * k.stride;
        if (op == FERRY_WRITE) {
            assert_int_equal(child_target_check(&p->target, off, k.bs, seed), -1);
        } else {
            assert_int_equal(ferry_mem_copy(p->e, p->host + off, p->local + off, k.bs), 0);
            assert_int_equal(pattern_check(p->host + off, k.bs, seed, off), -1);
        }
    }
    free(r);
    return rc;
}

void xfer_pair_move_ok(struct xfer_pair *p, int op, struct xfer_blocks k, uint64_t seed, int timeout_ms)
{
    int rc = xfer_pair_move(p, op, k, seed, timeout_ms);
    if (rc)
        fail_msg("%s of %zu x %zu: %s: %s", op == FERRY_WRITE ? "WRITE" : "READ", k.n, k.bs, ferry_err_name(rc),
                 ferry_last_error());
}

void xfer_assert_all_completed(ferry_batch *b, size_t n, size_t bs)
{
    for (size_t i = 0; i < n; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, i, &st), 0);
        assert_int_equal(st.state, FERRY_COMPLETED);
        assert_int_equal(st.transferred, bs);
    }
}

void xfer_pair_stop(struct xfer_pair *p)
{
    ferry_mem_free(p->e, p->loc, p->local, p->len);
    ferry_engine_destroy(p->e);
    child_target_kill(&p->target);
    free(p->host);
}

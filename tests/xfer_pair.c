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

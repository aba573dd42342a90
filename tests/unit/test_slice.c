/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_slice.c — the frame planner.  Every plan is checked against the
 * invariants in slice.h (check_plan): frames homogeneous in (segment, route,
 * opcode); pieces contiguous and in request order; at most coalesce_max
 * pieces and slice_size bytes per frame; every byte of every request covered
 * exactly once with matching local/remote offsets.  Then the shapes: big
 * requests cut into full slices, small ones coalesced, odd sizes, degenerate
 * parameters, and a randomised sweep.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/slice.h"
#include "err.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)

/* fake, never dereferenced local addresses: request i's bytes start at base(i) */
static char *local_base(size_t i) { return (char *)(uintptr_t)(0x100000000000ull + (uint64_t)i * (1ull << 36)); }

static struct slice_req req(int opcode, uint64_t segment, int route, size_t i, uint64_t len)
{
    return (struct slice_req){opcode, segment, route, local_base(i), 0xa000000000000000ull + (uint64_t)i * (1ull << 36),
                              len, (uint32_t)i, 1};
}

struct cover {
    uint64_t off, len;
};

static int by_off(const void *a, const void *b)
{
    const struct cover *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* Checks every invariant of a plan for reqs (whose index fields are 0..n-1). */
static void check_plan(const struct slice_req *reqs, size_t n, uint64_t slice, unsigned cmax,
                       const struct slice_plan *p)
{
    if (slice == 0)
        slice = 1;
    if (cmax == 0)
        cmax = 1;
    size_t next_piece = 0;
    struct cover **cov = calloc(n ? n : 1, sizeof *cov);
    size_t *ncov = calloc(n ? n : 1, sizeof *ncov);
    assert_non_null(cov);
    assert_non_null(ncov);
    for (size_t i = 0; i < n; i++) {
        cov[i] = calloc(reqs[i].len / slice + 2, sizeof **cov);
        assert_non_null(cov[i]);
    }
    for (size_t f = 0; f < p->nframes; f++) {
        const struct xfer_frame *fr = &p->frames[f];
        if (fr->npieces == 0 || fr->npieces > cmax)
            fail_msg("frame %zu has %u pieces (coalesce_max %u)", f, fr->npieces, cmax);
        if (fr->pieces != &p->pieces[next_piece])
            fail_msg("frame %zu's pieces do not follow frame %zu's", f, f - 1);
        if (fr->bytes > slice)
            fail_msg("frame %zu carries %llu bytes > slice %llu", f, (unsigned long long)fr->bytes,
                     (unsigned long long)slice);
        uint64_t bytes = 0;
        for (uint32_t k = 0; k < fr->npieces; k++) {
            const struct xfer_piece *pc = &fr->pieces[k];
            assert_true(pc->request < n);
            const struct slice_req *r = &reqs[pc->request];
            if (r->segment != fr->segment || r->route != fr->route || r->opcode != fr->opcode)
                fail_msg("frame %zu (seg %llu route %d op %d) holds a piece of request %u (seg %llu route %d op %d)",
                         f, (unsigned long long)fr->segment, fr->route, fr->opcode, pc->request,
                         (unsigned long long)r->segment, r->route, r->opcode);
            uint64_t off = (uint64_t)((uintptr_t)pc->local - (uintptr_t)r->local);
            if (pc->remote - r->remote != off)
                fail_msg("piece %u of frame %zu: local offset %llu, remote offset %llu", k, f,
                         (unsigned long long)off, (unsigned long long)(pc->remote - r->remote));
            if (pc->len == 0 || pc->len > slice || off >= r->len || pc->len > r->len - off)
                fail_msg("piece %u of frame %zu: [%llu,+%llu) outside request %u of %llu bytes", k, f,
                         (unsigned long long)off, (unsigned long long)pc->len, pc->request,
                         (unsigned long long)r->len);
            if (k > 0) { /* request order inside a frame */
                const struct xfer_piece *pv = &fr->pieces[k - 1];
                assert_true(pv->request < pc->request ||
                            (pv->request == pc->request && pv->remote + pv->len == pc->remote));
            }
            assert_true(ncov[pc->request] < r->len / slice + 2);
            cov[pc->request][ncov[pc->request]++] = (struct cover){off, pc->len};
            bytes += pc->len;
        }
        assert_true(bytes == fr->bytes);
        next_piece += fr->npieces;
    }
    assert_int_equal(next_piece, p->npieces);
    for (size_t i = 0; i < n; i++) {
        qsort(cov[i], ncov[i], sizeof **cov, by_off);
        uint64_t at = 0;
        for (size_t k = 0; k < ncov[i]; k++) {
            if (cov[i][k].off != at)
                fail_msg("request %zu: piece at %llu, expected %llu (gap or overlap)", i,
                         (unsigned long long)cov[i][k].off, (unsigned long long)at);
            at += cov[i][k].len;
        }
        if (at != reqs[i].len)
            fail_msg("request %zu: %llu of %llu bytes covered", i, (unsigned long long)at,
                     (unsigned long long)reqs[i].len);
        free(cov[i]);
    }
    free(cov);
    free(ncov);
}

static void plan_ok(const struct slice_req *reqs, size_t n, uint64_t slice, unsigned cmax, struct slice_plan *p)
{
    int rc = slice_plan_make(reqs, n, slice, cmax, p);
    if (rc)
        fail_msg("slice_plan_make: %s: %s", ferry_err_name(rc), ferry_last_error());
    check_plan(reqs, n, slice, cmax, p);
}

static void test_big_request_cut(void **state)
{
    (void)state;
    struct slice_req r = req(XFER_WRITE, 7, 0, 0, 4 * MiB);
    struct slice_plan p;
    plan_ok(&r, 1, 1 * MiB, 64, &p);
    assert_int_equal(p.nframes, 4);
    assert_int_equal(p.npieces, 4);
    for (size_t f = 0; f < 4; f++) {
        assert_int_equal(p.frames[f].npieces, 1);
        assert_true(p.frames[f].bytes == MiB);
        assert_true(p.frames[f].pieces[0].remote == r.remote + f * MiB);
        assert_true(p.frames[f].segment == 7 && p.frames[f].opcode == XFER_WRITE);
    }
    slice_plan_free(&p);
    assert_null(p.frames);
    assert_int_equal(p.nframes, 0);
}

static void test_small_requests_coalesced(void **state)
{
    (void)state;
    struct slice_req reqs[128];
    for (size_t i = 0; i < 128; i++)
        reqs[i] = req(XFER_READ, 1, 0, i, 4 * KiB);
    struct slice_plan p;

    plan_ok(reqs, 128, 1 * MiB, 64, &p); /* capped by coalesce_max */
    assert_int_equal(p.nframes, 2);
    assert_int_equal(p.frames[0].npieces, 64);
    assert_true(p.frames[0].bytes == 256 * KiB);
    slice_plan_free(&p);

    plan_ok(reqs, 128, 64 * KiB, 64, &p); /* capped by slice_size */
    assert_int_equal(p.nframes, 8);
    for (size_t f = 0; f < 8; f++)
        assert_int_equal(p.frames[f].npieces, 16);
    slice_plan_free(&p);

    plan_ok(reqs, 128, 1 * MiB, 5, &p); /* 25 frames of 5, then 3 */
    assert_int_equal(p.nframes, 26);
    assert_int_equal(p.frames[25].npieces, 3);
    slice_plan_free(&p);

    plan_ok(reqs, 128, 1 * MiB, 1, &p); /* no coalescing */
    assert_int_equal(p.nframes, 128);
    slice_plan_free(&p);

    /* 4 KiB requests with 4 KiB slices are full slices: one frame each */
    plan_ok(reqs, 128, 4 * KiB, 64, &p);
    assert_int_equal(p.nframes, 128);
    slice_plan_free(&p);
}

/* A spread of k: a group's small bytes over about k frames of at least
 * SLICE_SPREAD_MIN, never more than slice_size or coalesce_max allow. */
static void test_spread(void **state)
{
    (void)state;
    struct slice_req reqs[256];
    struct slice_plan p;
    for (size_t i = 0; i < 256; i++) {
        reqs[i] = req(XFER_WRITE, 1, 0, i, 4 * KiB);
        reqs[i].spread = 4;
    }
    plan_ok(reqs, 128, 1 * MiB, 64, &p); /* 512 KiB: 4 frames of 128 KiB, not 2 of 256 */
    assert_int_equal(p.nframes, 4);
    for (size_t f = 0; f < 4; f++)
        assert_true(p.frames[f].bytes == 128 * KiB && p.frames[f].npieces == 32);
    slice_plan_free(&p);

    plan_ok(reqs, 16, 1 * MiB, 64, &p); /* 64 KiB: one frame, the least a spread cuts */
    assert_int_equal(p.nframes, 1);
    slice_plan_free(&p);

    plan_ok(reqs, 40, 1 * MiB, 64, &p); /* 160 KiB: frames of 64 KiB at least: 64 + 64 + 32 */
    assert_int_equal(p.nframes, 3);
    assert_true(p.frames[0].bytes == 64 * KiB && p.frames[2].bytes == 32 * KiB);
    slice_plan_free(&p);

    plan_ok(reqs, 256, 1 * MiB, 16, &p); /* coalesce_max still caps: 16 of 4 KiB */
    assert_int_equal(p.nframes, 16);
    slice_plan_free(&p);

    for (size_t i = 0; i < 128; i++)
        reqs[i].len = 64 * KiB; /* 8 MiB over 4: frames of 2 MiB, capped at the 1 MiB slice */
    plan_ok(reqs, 128, 1 * MiB, 64, &p);
    assert_int_equal(p.nframes, 8);
    slice_plan_free(&p);

    /* a zero-length request first in the group (spread 1: it moves nothing)
     * leaves the data requests' spread as it is (rev5: 2 frames, not 4) */
    for (size_t i = 0; i < 129; i++) {
        reqs[i] = req(XFER_WRITE, 1, 0, i, i ? 4 * KiB : 0);
        reqs[i].spread = i ? 4 : 1;
    }
    plan_ok(reqs, 129, 1 * MiB, 64, &p);
    assert_int_equal(p.nframes, 4);
    slice_plan_free(&p);

    /* two groups (segments 1 and 2) are cut each by its own bytes */
    for (size_t i = 0; i < 160; i++) {
        reqs[i] = req(XFER_WRITE, i < 128 ? 1 : 2, 0, i, 4 * KiB);
        reqs[i].spread = 4;
    }
    plan_ok(reqs, 160, 1 * MiB, 64, &p); /* 512 KiB: 4 frames; 128 KiB: 2 of 64 KiB */
    assert_int_equal(p.nframes, 6);
    assert_true(p.frames[4].segment == 2 && p.frames[4].bytes == 64 * KiB);
    slice_plan_free(&p);

    /* full slices are not counted: 2 x 1 MiB + 32 x 4 KiB over 2 is 2 frames
     * of 1 MiB and 2 of 64 KiB (counting them: one small frame of 128 KiB) */
    for (size_t i = 0; i < 34; i++) {
        reqs[i] = req(XFER_WRITE, 1, 0, i, i < 2 ? 1 * MiB : 4 * KiB);
        reqs[i].spread = 2;
    }
    plan_ok(reqs, 34, 1 * MiB, 64, &p);
    assert_int_equal(p.nframes, 4);
    assert_true(p.frames[2].bytes == 64 * KiB && p.frames[3].bytes == 64 * KiB);
    slice_plan_free(&p);
}

static void test_odd_sizes(void **state)
{
    (void)state;
    const uint64_t s = 64 * KiB;
    struct slice_plan p;

    struct slice_req r = req(XFER_WRITE, 1, 0, 0, s + 1);
    plan_ok(&r, 1, s, 64, &p);
    assert_int_equal(p.nframes, 2);
    assert_true(p.frames[0].bytes == s && p.frames[1].bytes == 1);
    slice_plan_free(&p);

    r.len = 2 * s - 1;
    plan_ok(&r, 1, s, 64, &p);
    assert_int_equal(p.nframes, 2);
    assert_true(p.frames[1].bytes == s - 1);
    slice_plan_free(&p);

    r.len = s - 1;
    plan_ok(&r, 1, s, 64, &p);
    assert_int_equal(p.nframes, 1);
    slice_plan_free(&p);

    r.len = 1;
    plan_ok(&r, 1, s, 64, &p);
    assert_int_equal(p.nframes, 1);
    assert_true(p.pieces[0].len == 1 && p.pieces[0].local == r.local);
    slice_plan_free(&p);

    /* the tail of a big request shares a frame with the next small one */
    struct slice_req two[2] = {req(XFER_WRITE, 1, 0, 0, s + 100), req(XFER_WRITE, 1, 0, 1, 100)};
    plan_ok(two, 2, s, 64, &p);
    assert_int_equal(p.nframes, 2);
    assert_int_equal(p.frames[1].npieces, 2);
    assert_true(p.frames[1].bytes == 200);
    slice_plan_free(&p);

    /* three 60% requests never fit two to a frame */
    struct slice_req three[3];
    for (size_t i = 0; i < 3; i++)
        three[i] = req(XFER_READ, 1, 0, i, s * 6 / 10);
    plan_ok(three, 3, s, 64, &p);
    assert_int_equal(p.nframes, 3);
    slice_plan_free(&p);

    /* exactly filling a slice with small pieces */
    struct slice_req quarters[8];
    for (size_t i = 0; i < 8; i++)
        quarters[i] = req(XFER_READ, 1, 0, i, s / 4);
    plan_ok(quarters, 8, s, 64, &p);
    assert_int_equal(p.nframes, 2);
    assert_int_equal(p.frames[0].npieces, 4);
    assert_true(p.frames[0].bytes == s);
    slice_plan_free(&p);
}

static void test_mixed_keys_never_share(void **state)
{
    (void)state;
    /* interleaved (segment, route, opcode) keys, all small */
    struct slice_req reqs[96];
    for (size_t i = 0; i < 96; i++)
        reqs[i] = req(i % 2 ? XFER_READ : XFER_WRITE, 10 + i % 3, (int)(i / 6) % 2, i, 1 * KiB + i);
    struct slice_plan p;
    plan_ok(reqs, 96, 1 * MiB, 64, &p); /* check_plan asserts homogeneity */
    assert_int_equal(p.nframes, 12);     /* 2 opcodes x 3 segments x 2 routes, 8 each */
    for (size_t f = 0; f < p.nframes; f++)
        assert_int_equal(p.frames[f].npieces, 8);
    slice_plan_free(&p);

    /* same key but different segment ids that differ only above bit 32 */
    struct slice_req far[2] = {req(XFER_WRITE, 1, 0, 0, 10), req(XFER_WRITE, 1 + (1ull << 32), 0, 1, 10)};
    plan_ok(far, 2, 1 * MiB, 64, &p);
    assert_int_equal(p.nframes, 2);
    slice_plan_free(&p);
}

static void test_request_order(void **state)
{
    (void)state;
    /* requests given out of index order come out in index order within a key */
    struct slice_req reqs[6];
    static const size_t perm[6] = {4, 0, 5, 2, 1, 3};
    for (size_t i = 0; i < 6; i++)
        reqs[i] = req(XFER_WRITE, 2, 0, perm[i], 100);
    /* check_plan needs reqs[index] == request: sort them back for checking */
    struct slice_req by_index[6];
    for (size_t i = 0; i < 6; i++)
        by_index[perm[i]] = reqs[i];
    struct slice_plan p;
    assert_int_equal(slice_plan_make(reqs, 6, 1 * MiB, 64, &p), 0);
    check_plan(by_index, 6, 1 * MiB, 64, &p);
    assert_int_equal(p.nframes, 1);
    for (uint32_t k = 0; k < 6; k++)
        assert_int_equal(p.pieces[k].request, k);
    slice_plan_free(&p);
}

static void test_degenerate_parameters(void **state)
{
    (void)state;
    struct slice_plan p;
    /* no requests */
    assert_int_equal(slice_plan_make(NULL, 0, 1 * MiB, 64, &p), 0);
    assert_int_equal(p.nframes, 0);
    assert_int_equal(p.npieces, 0);
    slice_plan_free(&p);

    /* slice_size 0 behaves as 1; coalesce_max 0 as 1 */
    struct slice_req r = req(XFER_READ, 1, 0, 0, 3);
    plan_ok(&r, 1, 0, 64, &p);
    assert_int_equal(p.nframes, 3);
    slice_plan_free(&p);
    struct slice_req two[2] = {req(XFER_READ, 1, 0, 0, 3), req(XFER_READ, 1, 0, 1, 3)};
    plan_ok(two, 2, 1 * MiB, 0, &p);
    assert_int_equal(p.nframes, 2);
    slice_plan_free(&p);

    /* the largest slice the engine allows, with requests far larger than it */
    struct slice_req big = req(XFER_WRITE, 1, 0, 0, 64 * MiB * 3 + 5);
    plan_ok(&big, 1, 64 * MiB, 64, &p);
    assert_int_equal(p.nframes, 4);
    slice_plan_free(&p);
}

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

static void test_random_plans(void **state)
{
    (void)state;
    uint64_t seed = 0x243f6a8885a308d3ull;
    struct slice_req reqs[200];
    for (int iter = 0; iter < 400; iter++) {
        size_t n = 1 + rnd(&seed) % 200;
        uint64_t slice = 1 + rnd(&seed) % 8192;
        unsigned cmax = (unsigned)(rnd(&seed) % 65);
        unsigned spread = (unsigned)(rnd(&seed) % 6); /* 0 and 1: none */
        if (iter % 2) /* slices above the spread's least frame */
            slice = SLICE_SPREAD_MIN + rnd(&seed) % (4 * SLICE_SPREAD_MIN);
        for (size_t i = 0; i < n; i++) {
            uint64_t len;
            switch (rnd(&seed) % 4) {
            case 0: len = 1 + rnd(&seed) % 64; break;
            case 1: len = slice; break;
            case 2: len = slice * (1 + rnd(&seed) % 4) + rnd(&seed) % 3; break;
            default: len = 1 + rnd(&seed) % (3 * slice); break;
            }
            reqs[i] = req((int)(rnd(&seed) % 2), rnd(&seed) % 3, (int)(rnd(&seed) % 2), i, len);
            reqs[i].spread = spread;
        }
        struct slice_plan p;
        int rc = slice_plan_make(reqs, n, slice, cmax, &p);
        assert_int_equal(rc, 0);
        check_plan(reqs, n, slice, cmax, &p);
        slice_plan_free(&p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_big_request_cut),
        cmocka_unit_test(test_small_requests_coalesced),
        cmocka_unit_test(test_spread),
        cmocka_unit_test(test_odd_sizes),
        cmocka_unit_test(test_mixed_keys_never_share),
        cmocka_unit_test(test_request_order),
        cmocka_unit_test(test_degenerate_parameters),
        cmocka_unit_test(test_random_plans),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

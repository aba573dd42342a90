/* SPDX-License-Identifier: Apache-2.0 */
/*
 * slice.c — plans transport frames for a batch (see slice.h).
 */
#include "engine/slice.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

static int by_target(const void *a, const void *b)
{
    const struct slice_req *x = *(const struct slice_req *const *)a;
    const struct slice_req *y = *(const struct slice_req *const *)b;
    if (x->segment != y->segment)
        return x->segment < y->segment ? -1 : 1;
    if (x->route != y->route)
        return x->route < y->route ? -1 : 1;
    if (x->opcode != y->opcode)
        return x->opcode < y->opcode ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static bool same_group(const struct slice_req *a, const struct slice_req *b)
{
    return a->segment == b->segment && a->route == b->route && a->opcode == b->opcode;
}

/* The most bytes of a coalesced frame in the group that starts at g[0]
 * (sorted: the group is g[0..] while same_group): slice_size, or with a
 * spread of k (stored in *spread) the group's small bytes (what is left
 * over after full slices) / k, at least SLICE_SPREAD_MIN. */
static uint64_t group_cap(const struct slice_req *const *g, size_t n, uint64_t slice_size, unsigned *spread)
{
    /* the group's widest spread: a zero-length request (spread 1, it moves
     * nothing) that sorts first must not narrow its data requests' */
    unsigned k = 1;
    uint64_t small = 0;
    for (size_t i = 0; i < n && same_group(g[0], g[i]); i++) {
        small += g[i]->len % slice_size; /* each term < slice_size <= 64 MiB */
        if (g[i]->spread > k)
            k = g[i]->spread;
    }
    *spread = k;
    if (k <= 1)
        return slice_size;
    uint64_t cap = small / k + (small % k != 0);
    if (cap < SLICE_SPREAD_MIN)
        cap = SLICE_SPREAD_MIN;
    return cap < slice_size ? cap : slice_size;
}

static struct xfer_frame *open_frame(struct slice_plan *p, const struct slice_req *r, unsigned spread)
{
    struct xfer_frame *f = &p->frames[p->nframes++];
    memset(f, 0, sizeof *f);
    f->spread = spread;
    f->opcode = r->opcode;
    f->segment = r->segment;
    f->route = r->route;
    f->pieces = &p->pieces[p->npieces];
    return f;
}

static void add_piece(struct slice_plan *p, struct xfer_frame *f, const struct slice_req *r, uint64_t off,
                      uint64_t len)
{
    p->pieces[p->npieces++] = (struct xfer_piece){r->local + off, r->remote + off, len, r->index};
    f->npieces++;
    f->bytes += len;
}

int slice_plan_make(const struct slice_req *reqs, size_t n, uint64_t slice_size, unsigned coalesce_max,
                    struct slice_plan *plan)
{
    memset(plan, 0, sizeof *plan);
    if (slice_size == 0)
        slice_size = 1;
    if (coalesce_max == 0)
        coalesce_max = 1;
    size_t npieces = 0;
    for (size_t i = 0; i < n; i++) /* written so that no length can wrap it */
        npieces += reqs[i].len / slice_size + (reqs[i].len % slice_size != 0);
    if (npieces > SIZE_MAX / (sizeof(struct xfer_frame) + sizeof(struct xfer_piece)))
        return ferry_fail(FERRY_ENOMEM, "slice plan: %zu pieces", npieces);
    const struct slice_req **order = malloc(n * sizeof *order + 1);
    /* not zeroed: open_frame clears each frame it uses, add_piece writes
     * each piece whole, and nothing reads past nframes / npieces */
    char *block = malloc(npieces * (sizeof(struct xfer_frame) + sizeof(struct xfer_piece)) + 1);
    if (!order || !block) {
        free(order);
        free(block);
        return ferry_fail(FERRY_ENOMEM, "slice plan for %zu requests", n);
    }
    plan->frames = (struct xfer_frame *)block;
    plan->pieces = (struct xfer_piece *)(block + npieces * sizeof(struct xfer_frame));
    bool sorted = true; /* the common case: one peer, one opcode, in request order */
    for (size_t i = 0; i < n; i++) {
        order[i] = &reqs[i];
        if (i > 0 && sorted && by_target(&order[i - 1], &order[i]) > 0)
            sorted = false;
    }
    if (!sorted)
        qsort(order, n, sizeof *order, by_target);

    struct xfer_frame *small = NULL; /* the open frame collecting small pieces */
    uint64_t cap = slice_size;       /* its group's most bytes a coalesced frame */
    unsigned spread = 1;             /* its group's spread */
    for (size_t k = 0; k < n; k++) {
        const struct slice_req *r = order[k];
        if (k == 0 || !same_group(order[k - 1], r)) {
            small = NULL;
            cap = group_cap(order + k, n - k, slice_size, &spread);
        }
        for (uint64_t off = 0; off < r->len; off += slice_size) {
            uint64_t len = r->len - off < slice_size ? r->len - off : slice_size;
            if (len == slice_size) { /* a full slice travels alone */
                struct xfer_frame *f = open_frame(plan, r, 1);
                add_piece(plan, f, r, off, len);
                small = NULL; /* keep each frame's pieces contiguous */
                continue;
            }
            if (!small || small->npieces == coalesce_max || small->bytes + len > cap)
                small = open_frame(plan, r, spread);
            add_piece(plan, small, r, off, len);
        }
    }
    free(order);
    return 0;
}

void slice_plan_free(struct slice_plan *plan)
{
    free(plan->frames);
    memset(plan, 0, sizeof *plan);
}

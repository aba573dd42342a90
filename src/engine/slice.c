/* SPDX-License-Identifier: Apache-2.0 */
/*
 * slice.c — plans transport frames for a batch (see slice.h).
 */
#include "engine/slice.h"

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

static struct xfer_frame *open_frame(struct slice_plan *p, const struct slice_req *r)
{
    struct xfer_frame *f = &p->frames[p->nframes++];
    memset(f, 0, sizeof *f);
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
    char *block = calloc(1, npieces * (sizeof(struct xfer_frame) + sizeof(struct xfer_piece)) + 1);
    if (!order || !block) {
        free(order);
        free(block);
        return ferry_fail(FERRY_ENOMEM, "slice plan for %zu requests", n);
    }
    plan->frames = (struct xfer_frame *)block;
    plan->pieces = (struct xfer_piece *)(block + npieces * sizeof(struct xfer_frame));
    for (size_t i = 0; i < n; i++)
        order[i] = &reqs[i];
    qsort(order, n, sizeof *order, by_target);

    struct xfer_frame *small = NULL; /* the open frame collecting small pieces */
    for (size_t k = 0; k < n; k++) {
        const struct slice_req *r = order[k];
        if (small && (small->segment != r->segment || small->route != r->route || small->opcode != r->opcode))
            small = NULL;
        for (uint64_t off = 0; off < r->len; off += slice_size) {
            uint64_t len = r->len - off < slice_size ? r->len - off : slice_size;
            if (len == slice_size) { /* a full slice travels alone */
                struct xfer_frame *f = open_frame(plan, r);
                add_piece(plan, f, r, off, len);
                small = NULL; /* keep each frame's pieces contiguous */
                continue;
            }
            if (!small || small->npieces == coalesce_max || small->bytes + len > slice_size)
                small = open_frame(plan, r);
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

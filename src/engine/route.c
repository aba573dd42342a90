/* SPDX-License-Identifier: Apache-2.0 */
/*
 * route.c — a submit's requests on their way into a batch: each checked, the
 * access to its local memory begun (so that unregistering that memory waits
 * for the request), stale segments refreshed, its remote range checked
 * against the segment's descriptor, and its route chosen: the best-ranked
 * transport that reaches both sides, else a staged route through the local
 * memory's staging pool.  batch.c calls these for ferry_batch_submit and
 * batch_defer.
 *
 * Threads: any submitting thread; route_requests under the engine's seg_lock
 * (read side).  Owns nothing: the caller owns locals, accs and out.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/route.h"
#include "err.h"
#include "log.h"

/* Checks the fields of request i (its memory is checked by route_locals_begin).
 * A zero-length request touches no memory: as in the reference engine (its
 * tcp and rdma transports complete it without looking at either address),
 * neither its source nor its remote range is checked, only its opcode and
 * (route_requests) its segment. */
static int check_request(size_t i, const struct ferry_request *q)
{
    if (q->opcode != FERRY_READ && q->opcode != FERRY_WRITE)
        return ferry_fail(FERRY_EINVAL, "request %zu: opcode %d is neither READ nor WRITE", i, q->opcode);
    if (!q->source && q->length)
        return ferry_fail(FERRY_EINVAL, "request %zu: source is NULL", i);
    return 0;
}

/* Ends the accesses route_locals_begin started: those of the first `begun`
 * requests with a length (zero-length requests start none). */
void route_locals_end(ferry_engine *e, const struct ferry_request *reqs, size_t n, struct memreg_access *accs,
                      size_t begun)
{
    for (size_t i = 0; i < n && begun; i++) {
        if (!reqs[i].length)
            continue;
        memreg_access_end(&e->registry, &accs[i]);
        begun--;
    }
}

/* Checks every request, then finds each local range's registration and
 * starts its access there, atomically with the lookup: locals[i] and
 * accs[i] (zeroed local, no access for a zero-length request).  *begun: how
 * many accesses were started (the caller ends them with route_locals_end if it
 * submits nothing). */
int route_locals_begin(ferry_engine *e, const struct ferry_request *reqs, size_t n, struct memreg_region *locals,
                       struct memreg_access *accs, size_t *begun)
{
    *begun = 0;
    struct memreg_want *w = malloc(n * (sizeof *w + sizeof(size_t))); /* one allocation, as before */
    size_t *index = w ? (size_t *)(w + n) : NULL; /* w's entry -> request */
    size_t nw = 0;
    int rc = w ? 0 : ferry_fail(FERRY_ENOMEM, "submit of %zu requests", n);
    for (size_t i = 0; !rc && i < n; i++) {
        rc = check_request(i, &reqs[i]);
        if (rc || !reqs[i].length) {
            memset(&locals[i], 0, sizeof locals[i]);
            continue;
        }
        index[nw] = i;
        w[nw++] = (struct memreg_want){(uint64_t)(uintptr_t)reqs[i].source, reqs[i].length, &accs[i], &locals[i]};
    }
    if (!rc && nw && memreg_access_begin_many(&e->registry, w, nw, 0, NULL, NULL, begun) != 0) {
        size_t bad = index[*begun];
        rc = ferry_fail(FERRY_ENOTREG, "request %zu: local range %p+%zu is not inside a registration", bad,
                        reqs[bad].source, reqs[bad].length);
    }
    free(w);
    return rc;
}

int route_refresh_failed_for_good(int rc)
{
    return rc == FERRY_EPERM || rc == FERRY_EVERSION || rc == FERRY_EPROTO;
}

/* Refreshes every stale segment the requests name (before taking seg_lock). */
int route_refresh_stale(ferry_engine *e, const struct ferry_request *reqs, size_t n)
{
    uint64_t last = 0;
    for (size_t i = 0; i < n; i++) {
        if (reqs[i].target == last)
            continue;
        last = reqs[i].target;
        int rc = engine_take_stale(e, last) ? engine_refresh_segment(e, last) : 0;
        if (rc && route_refresh_failed_for_good(rc)) { /* again at the next submit: it may be fixed by then */
            char why[256];
            snprintf(why, sizeof why, "%s", ferry_last_error());
            engine_mark_stale(e, last);
            return ferry_fail(rc, "request %zu: %s", i, why);
        }
        if (rc) /* unreachable for now: the requests try the descriptor we have */
            LOG_INFO("refresh of segment %llu failed: %s", (unsigned long long)last, ferry_last_error());
    }
    return 0;
}

/* Does transport t reach this request's remote range on segment s? */
static bool reaches(ferry_engine *e, struct segment *s, size_t t, const struct ferry_request *q)
{
    return s->peer[t] && (!e->tops[t]->can_reach ||
                          e->tops[t]->can_reach(e->tstate[t], s->peer[t], q->target_offset, q->length));
}

/* The transports that can access local region r, one bit each. */
static uint32_t accessors(ferry_engine *e, const struct memreg_region *r)
{
    uint32_t bits = 0;
    for (size_t t = 0; t < e->ntransports; t++)
        if (e->tops[t]->can_access(e->tstate[t], r))
            bits |= 1u << t;
    return bits;
}

bool route_device_by_nic(ferry_engine *e, const struct ferry_request *q, const struct memreg_region *local)
{
    bool any = false; /* (the transports are fixed at create: no lock per request where none can) */
    for (size_t t = 0; t < e->ntransports && !any; t++)
        any = e->tops[t]->caps & TRANSPORT_DEVICE_BY_NIC;
    if (!any)
        return false;
    bool nic = false;
    pthread_rwlock_rdlock(&e->seg_lock);
    struct segment *s = engine_segment(e, q->target);
    for (size_t t = 0; s && t < e->ntransports && !nic; t++)
        nic = (e->tops[t]->caps & TRANSPORT_DEVICE_BY_NIC) && e->tops[t]->can_access(e->tstate[t], local) &&
              reaches(e, s, t, q);
    pthread_rwlock_unlock(&e->seg_lock);
    return nic;
}

/* Validates the remote side of every request and picks each one's transport.
 * Caller holds seg_lock for reading.  On a range miss it reports which
 * segment so the caller can refresh its descriptor once and retry.  Which
 * transports can access the local memory is asked once per registration
 * that requests in a row lie in (can_access judges the registration). */
int route_requests(ferry_engine *e, const struct ferry_request *reqs, size_t n, const struct memreg_region *locals,
                   struct slice_req *out, uint64_t *miss)
{
    _Static_assert(FERRY_MAX_TRANSPORTS <= 32, "accessors() returns one bit per transport");
    struct segment *s = NULL;
    const struct memreg_region *asked = NULL;
    uint32_t access = 0;
    for (size_t i = 0; i < n; i++) {
        const struct ferry_request *q = &reqs[i];
        if (!s || s->handle != q->target)
            s = engine_segment(e, q->target);
        if (!s)
            return ferry_fail(FERRY_ENOSEG, "request %zu: segment handle %llu is not open", i,
                              (unsigned long long)q->target);
        if (!q->length) { /* moves nothing: any transport to the segment (a notification's route) */
            int route = -1;
            for (size_t t = 0; t < e->ntransports; t++)
                if (s->peer[t] && (route < 0 || e->tops[t]->rank < e->tops[route]->rank))
                    route = (int)t;
            if (route < 0)
                return ferry_fail(FERRY_ENOTSUP, "request %zu: no transport reaches %s", i, s->name);
            out[i] = (struct slice_req){q->opcode, q->target, route, q->source, q->target_offset, 0, 0, 1};
            continue;
        }
        if (descriptor_find_buffer(&s->desc, q->target_offset, q->length) < 0) {
            *miss = s->handle;
            return ferry_fail(FERRY_ERANGE, "request %zu: remote range 0x%llx+%zu is outside every buffer of %s", i,
                              (unsigned long long)q->target_offset, q->length, s->name);
        }
        if (!asked || asked->addr != locals[i].addr || asked->len != locals[i].len) {
            access = accessors(e, &locals[i]);
            asked = &locals[i];
        }
        int route = -1; /* the best-ranked transport that reaches both sides */
        for (size_t t = 0; t < e->ntransports; t++)
            if ((access >> t & 1) && reaches(e, s, t, q) &&
                (route < 0 || e->tops[t]->rank < e->tops[route]->rank))
                route = (int)t;
        int pool = route < 0 ? engine_pool_index(e, locals[i].location) : -1;
        int staged = -1; /* staged: the transport sees only the pool's host chunks */
        for (size_t t = 0; t < e->ntransports && route < 0 && pool >= 0; t++)
            if (reaches(e, s, t, q) && (staged < 0 || e->tops[t]->rank < e->tops[staged]->rank))
                staged = (int)t;
        if (staged >= 0)
            route = ROUTE_STAGED(staged, pool);
        if (route < 0)
            return ferry_fail(FERRY_ENOTSUP, "request %zu: no transport to %s can reach local %s memory "
                              "and it has no staging pool", i, s->name, locals[i].location);
        /* as many frames at once as the transport moves in parallel (its
         * figure for staged frames where they are); staged, unless the pool
         * gathers small blocks on the device (there fewer, larger frames
         * cost less) */
        int dir = q->opcode == FERRY_READ ? XFER_READ : XFER_WRITE;
        const unsigned *tspread = e->tspread[ROUTE_TRANSPORT(route)][dir];
        unsigned spread = staged >= 0 && e->pools[pool].aggregates ? 1 : tspread[staged >= 0];
        out[i] = (struct slice_req){q->opcode, q->target, route, q->source, q->target_offset, q->length, 0, spread};
    }
    return 0;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * route.h — checking and routing a submit's requests (route.c), for batch.c.
 * Threads: any submitting thread.  The caller owns every array it passes.
 */
#ifndef FERRY_ROUTE_H
#define FERRY_ROUTE_H

#include "engine/engine.h"
#include "engine/slice.h"

/* Checks every request (opcode, source), then finds each local range's
 * registration and starts its access there: locals[i] and accs[i] (zeroed
 * local, no access for a zero-length request).  *begun: how many accesses
 * were started, also on failure.  Returns 0, FERRY_EINVAL, FERRY_ENOTREG or
 * FERRY_ENOMEM (detail message set). */
int route_locals_begin(ferry_engine *e, const struct ferry_request *reqs, size_t n, struct memreg_region *locals,
                       struct memreg_access *accs, size_t *begun);
/* Ends the first `begun` accesses route_locals_begin started. */
void route_locals_end(ferry_engine *e, const struct ferry_request *reqs, size_t n, struct memreg_access *accs,
                      size_t begun);
/* Refreshes every stale segment the requests name (call before seg_lock).
 * Returns 0, or the error of a refresh the peer answered and refused for
 * good (route_refresh_failed_for_good): the peer restarted as an engine this
 * one cannot use, and the requests would only fail against the old process's
 * descriptor, with an error that hides why (FERRY_ECONN, FERRY_ERANGE). */
int route_refresh_stale(ferry_engine *e, const struct ferry_request *reqs, size_t n);
/* A refresh error that names the peer as incompatible (FERRY_EPERM: another
 * key; FERRY_EVERSION; FERRY_EPROTO), not merely unreachable. */
int route_refresh_failed_for_good(int rc);
/* Checks each request's segment and remote range and fills out[i] with its
 * route (a transport index, or ROUTE_STAGED(transport, pool)).  Caller holds
 * seg_lock for reading.  Returns 0, FERRY_ENOSEG, FERRY_ENOTSUP, or
 * FERRY_ERANGE with *miss the segment whose descriptor may be out of date
 * (the caller refreshes it once and asks again). */
int route_requests(ferry_engine *e, const struct ferry_request *reqs, size_t n, const struct memreg_region *locals,
                   struct slice_req *out, uint64_t *miss);
/* Whether a transport whose NIC reads and writes device memory itself
 * (TRANSPORT_DEVICE_BY_NIC) reaches request q's remote range and can access
 * its local region `local`: its route then does no device work in this
 * process.  Takes seg_lock for reading. */
bool route_device_by_nic(ferry_engine *e, const struct ferry_request *q, const struct memreg_region *local);

#endif

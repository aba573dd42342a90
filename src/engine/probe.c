/* SPDX-License-Identifier: Apache-2.0 */
/*
 * probe.c — ferry_probe_segment: is a peer resolvable right now?
 *
 * The reference engine's send_probe asks a peer over its RPC port whether it
 * is alive (SGLang calls it to take a failed decode node off its blacklist).
 * Here a probe is one fresh descriptor lookup through the metadata backend —
 * with P2PHANDSHAKE that is a connection to the peer's handshake listener —
 * decoded and dropped.  The segment cache and its connections are untouched,
 * so a probe never disturbs transfers in flight.  Any thread; no lock.
 */
#include <stdlib.h>

#include "engine/engine.h"
#include "err.h"

int ferry_probe_segment(ferry_engine *e, const char *name)
{
    if (!e || !name || !*name)
        return ferry_fail(FERRY_EINVAL, "probe_segment: NULL or empty argument");
    char *json = NULL;
    size_t len = 0;
    int rc = e->meta->lookup(e->meta_state, name, &json, &len);
    if (rc)
        return rc;
    struct ferry_descriptor d;
    rc = descriptor_decode(json, len, &d);
    free(json);
    if (rc)
        rc = ferry_fail(rc, "segment %s: %s", name, ferry_last_error());
    descriptor_free(&d);
    return rc;
}

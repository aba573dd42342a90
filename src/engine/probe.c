/* SPDX-License-Identifier: Apache-2.0 */
/*
 * probe.c — ferry_probe_segment: is a peer resolvable right now?
 *
 * The reference engine's send_probe asks a peer over its RPC port whether it
 * is alive (SGLang calls it to take a failed decode node off its blacklist).
 * Here a probe is one fresh descriptor lookup through the metadata backend —
 * with P2PHANDSHAKE that is a connection to the peer's handshake listener —
 * decoded and dropped.  The segment cache and its connections are untouched,
 * so a probe never disturbs transfers in flight.  One thing it does note:
 * a peer that answers as another engine than the one cached under its name
 * restarted, so that segment is marked stale and refreshed before its next
 * use (the next transfer, or its buffer list: a caller that probes a decode
 * node back to life then asks for its first buffer gets the new one, not a
 * failed transfer into the old layout first).  Any thread.
 */
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "err.h"
#include "log.h"

/* Marks the segment cached under `name` stale when the engine now answering
 * for that name is not the one it describes. */
static void mark_if_restarted(ferry_engine *e, const char *name, uint64_t engine_id)
{
    uint64_t restarted = 0;
    pthread_rwlock_rdlock(&e->seg_lock);
    for (size_t i = 0; i < e->nsegs; i++)
        if (strcmp(e->segs[i]->name, name) == 0 && e->segs[i]->desc.engine_id != engine_id)
            restarted = e->segs[i]->handle;
    pthread_rwlock_unlock(&e->seg_lock);
    if (restarted) {
        LOG_INFO("segment %s answers as engine %016llx now (restarted): refreshed before its next use", name,
                 (unsigned long long)engine_id);
        engine_mark_stale(e, restarted);
    }
}

int ferry_probe_segment(ferry_engine *e, const char *name)
{
    if (!e || !name || !*name)
        return ferry_fail(FERRY_EINVAL, "probe_segment: NULL or empty argument");
    char *json = NULL;
    size_t len = 0;
    int rc = e->meta->lookup(e->meta_state, name, &json, &len);
    if (rc)
        return rc == FERRY_EPROTO ? engine_entry_fail(e, name, rc) : rc;
    struct ferry_descriptor d;
    rc = descriptor_decode(json, len, &d);
    free(json);
    if (rc)
        rc = engine_entry_fail(e, name, rc);
    else
        mark_if_restarted(e, name, d.engine_id);
    descriptor_free(&d);
    return rc;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * abi.c — keeps programs built against another ferry.h working (see the
 * stability promise at the top of ferry.h).  Callers pass their compiled
 * struct sizes (ferry_config.struct_size, ferry_get_stats' sizes); this file
 * translates between their layout and this library's.  Layouts only grow at
 * the end, so a caller's struct is a prefix of ours or ours a prefix of its.
 * No state; any thread.
 */
#include <string.h>

#include "abi.h"
#include "err.h"

/* struct_size beyond this is garbage (an uninitialized struct), not a newer header */
#define ABI_MAX_STRUCT 4096

#define MIN(a, b) ((a) < (b) ? (a) : (b))

const char *ferry_version(void)
{
#define STR2(x) #x
#define STR(x) STR2(x)
    return STR(FERRY_VERSION_MAJOR) "." STR(FERRY_VERSION_MINOR) "." STR(FERRY_VERSION_PATCH);
}

int config_import(struct ferry_config *full, const struct ferry_config *given)
{
    size_t n = given->struct_size;
    if (n < sizeof given->struct_size || n > ABI_MAX_STRUCT)
        return ferry_fail(FERRY_EINVAL,
                          "ferry_config.struct_size is %zu: fill the config with ferry_config_init() first", n);
    int rc = ferry_config_init(full);
    if (rc)
        return rc;
    memcpy(full, given, MIN(n, sizeof *full));
    for (size_t i = sizeof *full; i < n; i++)
        if (((const unsigned char *)given)[i])
            return ferry_fail(FERRY_ENOTSUP,
                              "ferry_config: byte %zu of %zu is set, but this libferry %s knows only %zu bytes "
                              "(a knob from a newer ferry.h)",
                              i, n, ferry_version(), sizeof *full);
    full->struct_size = sizeof *full;
    return 0;
}

int stats_export(const struct ferry_stats *full, struct ferry_stats *out, size_t size, size_t transport_size)
{
    const size_t head = offsetof(struct ferry_stats, transports), nt = FERRY_MAX_TRANSPORTS;
    if (transport_size < sizeof full->transports[0].name || transport_size > ABI_MAX_STRUCT ||
        size < head + nt * transport_size || size > head + nt * transport_size + ABI_MAX_STRUCT)
        return ferry_fail(FERRY_EINVAL, "ferry_get_stats: sizes %zu / %zu fit no ferry.h", size, transport_size);
    unsigned char *o = (unsigned char *)out;
    const unsigned char *f = (const unsigned char *)full;
    memset(o, 0, size);
    memcpy(o, f, head);
    for (size_t i = 0; i < nt; i++)
        memcpy(o + head + i * transport_size, &full->transports[i], MIN(transport_size, sizeof full->transports[0]));
    /* fields after the array, in each side's own layout */
    size_t tail_out = head + nt * transport_size, tail_full = head + nt * sizeof full->transports[0];
    memcpy(o + tail_out, f + tail_full, MIN(size - tail_out, sizeof *full - tail_full));
    return 0;
}

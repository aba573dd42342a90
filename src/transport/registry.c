/* SPDX-License-Identifier: Apache-2.0 */
/*
 * registry.c — the registry of transports: one line per transport.
 *
 * The engine looks transports up here by the names in FERRY_PROTOCOLS and
 * derives everything else (which may be skipped, their knobs) from the
 * tables.  A name ferry knows but this build lacks has a table with no
 * create(), so asking for it is FERRY_ENOTSUP, not a typo (FERRY_EINVAL).
 * The first line is the fallback transport (transport_fallback).  Tests add
 * their own plug-ins with transport_register() before creating
 * engines.  Threads: lookups are lock-free reads; registration happens
 * before the engines that use it exist.  Owns nothing.
 */
#include <string.h>

#include "err.h"
#include "transport/transport.h"

#ifndef FERRY_HAVE_RDMA
/* rdma not built (no libibverbs): the name stays known. */
static const struct transport_ops rdma_absent = {.name = "rdma", .caps = TRANSPORT_NEEDS_HARDWARE, .rank = 0};
#define ferry_rdma_transport rdma_absent
#else
extern const struct transport_ops ferry_rdma_transport; /* rdma.c: libibverbs */
#endif

/* The reference engine's NPU transport: ferry reaches NPU memory by staging
 * over the others, so it is never started (with transport_fallback, skipped). */
static const struct transport_ops ascend_absent = {.name = "ascend", .caps = TRANSPORT_NEEDS_HARDWARE, .rank = 0};

/* The built-in tables, one line each (a new one also needs its extern
 * above); the first is the fallback.  The count derives from the list. */
#define BUILTIN \
    &ferry_tcp_transport, \
    &ferry_shm_transport, \
    &ferry_rdma_transport, \
    &ascend_absent,
#define BUILTIN_COUNT (sizeof (const struct transport_ops *[]){BUILTIN} / sizeof(const struct transport_ops *))
#define MAX_ADDED 8 /* room for transport_register */

static const struct transport_ops *transports[BUILTIN_COUNT + MAX_ADDED] = {BUILTIN};

static _Atomic size_t count = BUILTIN_COUNT;

const struct transport_ops *const *transport_list(size_t *n)
{
    *n = atomic_load_explicit(&count, memory_order_acquire);
    return transports;
}

const struct transport_ops *transport_find(const char *name)
{
    size_t n;
    const struct transport_ops *const *all = transport_list(&n);
    for (size_t i = 0; name && i < n; i++)
        if (strcmp(all[i]->name, name) == 0)
            return all[i];
    return NULL;
}

int transport_register(const struct transport_ops *ops)
{
    if (!ops || !ops->name || !ops->create)
        return ferry_fail(FERRY_EINVAL, "transport_register: a table needs a name and create()");
    if (transport_find(ops->name))
        return ferry_fail(FERRY_EEXIST, "transport \"%s\" is already registered", ops->name);
    size_t n = atomic_load(&count);
    if (n == sizeof transports / sizeof transports[0])
        return ferry_fail(FERRY_ENOMEM, "transport registry full (%zu added at most)", n - BUILTIN_COUNT);
    transports[n] = ops;
    atomic_store_explicit(&count, n + 1, memory_order_release);
    return 0;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * memreg.h — the registry of registered memory ranges.
 *
 * A sorted array of non-overlapping regions under a reader/writer lock.  The
 * engine adds and removes regions; the initiator path asks "is this local
 * range registered?", transports on the target side ask "may a peer touch
 * this range?".  Lookups are O(log n) and copy the region out, so no pointer
 * into the array escapes the lock.
 */
#ifndef FERRY_MEMREG_H
#define FERRY_MEMREG_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry.h"

struct memreg_region {
    uint64_t addr;
    uint64_t len;
    char location[32];       /* normalised: "cpu", "cuda:0", "sim:1" ... */
    int device_index;        /* -1 for host memory */
    int remote_accessible;
    void *transport_handle[FERRY_MAX_TRANSPORTS]; /* per-transport registration (an RDMA MR ...) */
};

/* One access in flight to a registered range; lives in the accessor's memory
 * (stack or connection) from begin to end. */
struct memreg_access {
    uint64_t addr, len;
    /* Optional: called at most once, by the thread in memreg_remove, with the
     * registry's access lock held: it must not block, nor call into memreg.
     * Its job is to make the accessor notice `revoked` soon. */
    void (*cancel)(void *arg);
    void *cancel_arg;
    atomic_int revoked;       /* set by memreg_remove; accessor stops, reports FERRY_ERANGE */
    int cancelled;            /* cancel hook already called (access lock) */
    struct memreg_access *prev, *next;
};

struct memreg {
    pthread_rwlock_t lock;
    struct memreg_region *regions;
    size_t count, capacity;
    uint64_t generation;      /* bumped on every change */
    pthread_mutex_t access_lock;  /* guards `accesses` */
    pthread_cond_t access_ended;  /* broadcast when an access ends */
    struct memreg_access *accesses;  /* in flight, doubly linked */
};

void memreg_init(struct memreg *r);
void memreg_destroy(struct memreg *r);

/* Adds a region; FERRY_EEXIST if it overlaps one, FERRY_ENOMEM. */
int memreg_add(struct memreg *r, const struct memreg_region *region);
/* Removes the region starting exactly at addr into *out (may be NULL);
 * FERRY_ENOTREG if none.  Then revokes every access in flight that overlaps
 * the region and waits until each has ended (see above): the caller must not
 * itself hold an access to that range. */
int memreg_remove(struct memreg *r, uint64_t addr, struct memreg_region *out);
/* Finds the region wholly containing [addr, addr+len).  With remote_only, only
 * remote-accessible regions count.  Returns 0 and copies it to *out (may be
 * NULL), or FERRY_ENOTREG. */
int memreg_find(struct memreg *r, uint64_t addr, uint64_t len, int remote_only,
                struct memreg_region *out);
/* Finds the region wholly containing [addr, addr+len) as memreg_find does,
 * and atomically with the lookup starts access *a to that range, so that a
 * concurrent memreg_remove of the region waits for memreg_access_end(a).
 * cancel/cancel_arg: see struct memreg_access (may be NULL).  Returns 0, or
 * FERRY_ENOTREG (nothing started; *a need not be ended). */
int memreg_access_begin(struct memreg *r, struct memreg_access *a, uint64_t addr, uint64_t len,
                        int remote_only, struct memreg_region *out, void (*cancel)(void *), void *cancel_arg);
/* One access of memreg_access_begin_many: the range, the access to start on
 * it, and where to copy its region (may be NULL). */
struct memreg_want {
    uint64_t addr, len;
    struct memreg_access *acc;
    struct memreg_region *out;
};
/* Starts the accesses w[0..n) in order, each as memreg_access_begin would,
 * under one acquisition of each lock (a frame's or a batch's ranges: not one
 * lock round trip each).  Stops at the first range outside the
 * registrations.  Returns 0 (all started), or FERRY_ENOTREG with *begun the
 * index of that range: w[0..*begun) were started and must be ended. */
int memreg_access_begin_many(struct memreg *r, const struct memreg_want *w, size_t n, int remote_only,
                             void (*cancel)(void *), void *cancel_arg, size_t *begun);
/* Ends an access started by memreg_access_begin.  Any thread. */
void memreg_access_end(struct memreg *r, struct memreg_access *a);
/* Ends the n accesses a[0..n) under one acquisition of the access lock. */
void memreg_access_end_many(struct memreg *r, struct memreg_access *const *a, size_t n);
/* Has memreg_remove revoked this access?  The accessor must stop touching the
 * range (at the latest before its next piece) and end the access. */
static inline int memreg_access_revoked(struct memreg_access *a)
{
    return atomic_load_explicit(&a->revoked, memory_order_acquire);
}
/* How many accesses are in flight (tests and stats). */
size_t memreg_access_count(struct memreg *r);

/* Copies up to max remote-accessible regions into out; returns how many exist. */
size_t memreg_list_remote(struct memreg *r, struct memreg_region *out, size_t max);

/* Pure helper (no lock): index of the region in a sorted array that contains
 * [addr, addr+len), or -1.  Overflowing ranges never match. */
long memreg_search(const struct memreg_region *regions, size_t count, uint64_t addr, uint64_t len);

#endif

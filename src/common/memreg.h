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
#include <stddef.h>
#include <stdint.h>

struct memreg_region {
    uint64_t addr;
    uint64_t len;
    char location[32];       /* normalised: "cpu", "cuda:0", "sim:1" ... */
    int device_index;        /* -1 for host memory */
    int remote_accessible;
    void *transport_handle[4]; /* per-transport registration (an RDMA MR ...) */
};

struct memreg {
    pthread_rwlock_t lock;
    struct memreg_region *regions;
    size_t count, capacity;
    uint64_t generation;      /* bumped on every change */
};

void memreg_init(struct memreg *r);
void memreg_destroy(struct memreg *r);

/* Adds a region; FERRY_EEXIST if it overlaps one, FERRY_ENOMEM. */
int memreg_add(struct memreg *r, const struct memreg_region *region);
/* Removes the region starting exactly at addr into *out (may be NULL);
 * FERRY_ENOTREG if none. */
int memreg_remove(struct memreg *r, uint64_t addr, struct memreg_region *out);
/* Finds the region wholly containing [addr, addr+len).  With remote_only, only
 * remote-accessible regions count.  Returns 0 and copies it to *out (may be
 * NULL), or FERRY_ENOTREG. */
int memreg_find(struct memreg *r, uint64_t addr, uint64_t len, int remote_only,
                struct memreg_region *out);
/* Copies up to max remote-accessible regions into out; returns how many exist. */
size_t memreg_list_remote(struct memreg *r, struct memreg_region *out, size_t max);

/* Pure helper (no lock): index of the region in a sorted array that contains
 * [addr, addr+len), or -1.  Overflowing ranges never match. */
long memreg_search(const struct memreg_region *regions, size_t count, uint64_t addr, uint64_t len);

#endif

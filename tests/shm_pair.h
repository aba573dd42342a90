/* SPDX-License-Identifier: Apache-2.0 */
/*
 * shm_pair.h — two shm transports in one process, an initiator and a target
 * with registries of their own, for the tests that drive the transport
 * directly (test_shm, test_shm_jobs, test_shm_copyfail).  The caller owns the
 * struct (it must stay where it is between start and stop: the transports
 * keep pointers into it) and the memory it registers.
 */
#ifndef FERRY_TEST_SHM_PAIR_H
#define FERRY_TEST_SHM_PAIR_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "memreg.h"
#include "transport/transport.h"

struct shm_pair {
    const struct transport_ops *ops; /* &ferry_shm_transport */
    struct ferry_config cfg;         /* defaults */
    struct memreg reg_i, reg_t;      /* the initiator's and the target's registrations */
    atomic_uint_fast64_t bounced;
    struct transport_host hi, ht;
    void *ti, *tt;                   /* the initiator's and the target's transport */
};

/* Creates both on 127.0.0.1 (engine ids 0x1111 and 0x2222; notifications
 * dropped), asserting that they start. */
void shm_pair_start(struct shm_pair *p);
/* Opens the initiator's peer for the target as the target's descriptor
 * would name it: segment "target" (engine id 0x2222) with the target's shm
 * endpoint and the one published buffer rt.  Asserts that it opens; the
 * caller closes it (ops->peer_close) before shm_pair_stop. */
void *shm_pair_open_peer(struct shm_pair *p, const struct memreg_region *rt);
/* Destroys both transports (their unfinished frames end FERRY_ECANCELED),
 * then the registries. */
void shm_pair_stop(struct shm_pair *p);

/* What a frame's completion said, for the tests that look at each frame's
 * end (test_shm_jobs, test_shm_copyfail): a frame whose complete is
 * frame_end_record points its owner at one of these. */
struct frame_end {
    int err;
    uint64_t refused;
    char msg[200];
};
/* One lock and condition for frame ends and whatever else the test counts
 * under them; frames_ended counts the ends recorded. */
extern pthread_mutex_t frames_lock;
extern pthread_cond_t frames_changed;
extern unsigned frames_ended;
/* A struct xfer_frame's complete: records into *f->owner, counts, wakes. */
void frame_end_record(struct xfer_frame *f, int err, uint64_t refused, const char *msg);
/* Waits until *counter (read under frames_lock) reaches n; fails the test
 * after a minute (a hang guard, no timing). */
void frames_wait_count(const unsigned *counter, unsigned n);

#endif

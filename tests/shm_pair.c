/* SPDX-License-Identifier: Apache-2.0 */
/*
 * shm_pair.c — two shm transports in one process (see shm_pair.h).
 */
#include "shm_pair.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "meta/descriptor.h"

pthread_mutex_t frames_lock = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t frames_changed = PTHREAD_COND_INITIALIZER;
unsigned frames_ended;

void frame_end_record(struct xfer_frame *f, int err, uint64_t refused, const char *msg)
{
    struct frame_end *e = f->owner;
    pthread_mutex_lock(&frames_lock);
    e->err = err;
    e->refused = refused;
    snprintf(e->msg, sizeof e->msg, "%s", msg ? msg : "");
    frames_ended++;
    pthread_cond_broadcast(&frames_changed);
    pthread_mutex_unlock(&frames_lock);
}

void frames_wait_count(const unsigned *counter, unsigned n)
{
    pthread_mutex_lock(&frames_lock);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 60;
    int rc = 0;
    while (*counter < n && rc == 0)
        rc = pthread_cond_timedwait(&frames_changed, &frames_lock, &until);
    unsigned got = *counter;
    pthread_mutex_unlock(&frames_lock);
    if (got < n)
        fail_msg("waited a minute for %u events, saw %u", n, got);
}

static void no_notes(void *e, const char *from, const char *origin, const void *msg, size_t len)
{
    (void)e, (void)from, (void)origin, (void)msg, (void)len;
}

void shm_pair_start(struct shm_pair *p)
{
    memset(p, 0, sizeof *p);
    p->ops = &ferry_shm_transport;
    assert_int_equal(ferry_config_init(&p->cfg), 0);
    memreg_init(&p->reg_i);
    memreg_init(&p->reg_t);
    atomic_init(&p->bounced, 0);
    p->hi = (struct transport_host){NULL, &p->reg_i, &p->cfg, "initiator", 0x1111, "127.0.0.1", no_notes,
                                    &p->bounced, NULL, {0, 0, 0}};
    p->ht = (struct transport_host){NULL, &p->reg_t, &p->cfg, "target", 0x2222, "127.0.0.1", no_notes,
                                    &p->bounced, NULL, {0, 0, 0}};
    assert_int_equal(p->ops->create(&p->hi, &p->ti), 0);
    assert_int_equal(p->ops->create(&p->ht, &p->tt), 0);
}

void *shm_pair_open_peer(struct shm_pair *p, const struct memreg_region *rt)
{
    char *json;
    assert_int_equal(p->ops->describe(p->tt, &json), 0);
    struct desc_buffer db = {rt->addr, rt->len, ""};
    snprintf(db.location, sizeof db.location, "%s", rt->location);
    struct ferry_descriptor d = {.format = DESC_FORMAT, .name = "target", .engine_id = 0x2222, .ntransports = 1,
                                 .nbuffers = 1, .buffers = &db};
    strcpy(d.transports[0].name, "shm");
    d.transports[0].json = json;
    void *peer = NULL;
    assert_int_equal(p->ops->peer_open(p->ti, &d, &peer), 0);
    free(json); /* peer_open keeps nothing of it */
    return peer;
}

void shm_pair_stop(struct shm_pair *p)
{
    p->ops->destroy(p->ti);
    p->ops->destroy(p->tt);
    memreg_destroy(&p->reg_i);
    memreg_destroy(&p->reg_t);
}

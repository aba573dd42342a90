/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fault_transport.c — the "fault" test transport (see fault_transport.h):
 * tcp's ops table with submit, peer_close and destroy wrapped to fail,
 * refuse or hold frames by the index of the request they carry.  A refusal
 * wraps the frame's completion (its bytes are sent, then reported refused).
 * Threads: submit runs on the caller's thread (or staging's); rules and the
 * held list are under one mutex; held frames are completed or sent outside
 * it.  Owns only the held list; the tcp state is tcp's.
 */
#include "fault_transport.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "transport/transport.h"

#define MAX_HELD 4096
#define NO_REQUEST UINT32_MAX

struct held {
    struct xfer_frame *f;
    void *t, *peer;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint32_t fail_request = NO_REQUEST, refuse_request = NO_REQUEST;
static int fail_err, holding;
static struct held held[MAX_HELD];
static size_t nheld, notifies;

/* Frames sent with pieces to refuse: their completion is wrapped. */
struct refusing {
    struct xfer_frame *f;
    void (*complete)(struct xfer_frame *f, int err, uint64_t refused, const char *msg);
    uint64_t refused;
};
static struct refusing refusing[MAX_HELD];
static size_t nrefusing;

static void refused_done(struct xfer_frame *f, int err, uint64_t refused, const char *msg)
{
    struct refusing r = {0};
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < nrefusing; i++) {
        if (refusing[i].f == f) {
            r = refusing[i];
            refusing[i] = refusing[--nrefusing];
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    f->complete = r.complete;
    f->complete(f, err, refused | r.refused, err ? msg : "fault: injected refusal");
}

static const struct transport_ops *tcp(void)
{
    return &ferry_tcp_transport;
}

/* The peer's descriptor with its "fault" endpoint presented as tcp's. */
static int fault_peer_open(void *t, const struct ferry_descriptor *d, void **peer)
{
    static struct ferry_descriptor copy; /* tcp reads it during peer_open only */
    static pthread_mutex_t copy_lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&copy_lock);
    copy = *d;
    int found = 0;
    for (size_t i = 0; i < copy.ntransports; i++) {
        if (strcmp(copy.transports[i].name, "fault") == 0) {
            strcpy(copy.transports[i].name, "tcp");
            found = 1;
        } else if (strcmp(copy.transports[i].name, "tcp") == 0) {
            strcpy(copy.transports[i].name, "-");
        }
    }
    int rc = found ? tcp()->peer_open(t, &copy, peer)
                   : ferry_fail(FERRY_ENOTSUP, "segment %s offers no fault endpoint", d->name);
    pthread_mutex_unlock(&copy_lock);
    return rc;
}

/* Removes and returns the held frames of (t, peer) — every one if peer is NULL. */
static size_t take_held(void *t, void *peer, struct held *out)
{
    size_t n = 0, kept = 0;
    for (size_t i = 0; i < nheld; i++) {
        if (held[i].t == t && (!peer || held[i].peer == peer))
            out[n++] = held[i];
        else
            held[kept++] = held[i];
    }
    nheld = kept;
    return n;
}

static void cancel_held(void *t, void *peer)
{
    static struct held out[MAX_HELD];
    static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&out_lock);
    pthread_mutex_lock(&lock);
    size_t n = take_held(t, peer, out);
    pthread_mutex_unlock(&lock);
    for (size_t i = 0; i < n; i++)
        out[i].f->complete(out[i].f, FERRY_ECANCELED, 0, "fault: held frame cancelled (segment closed)");
    pthread_mutex_unlock(&out_lock);
}

static void fault_peer_close(void *t, void *peer)
{
    cancel_held(t, peer);
    tcp()->peer_close(t, peer);
}

static void fault_destroy(void *t)
{
    cancel_held(t, NULL);
    tcp()->destroy(t);
}

static void fault_submit(void *t, void *peer, struct xfer_frame *f)
{
    int err = 0;
    uint64_t refused = 0;
    pthread_mutex_lock(&lock);
    if (f->opcode == XFER_NOTIFY)
        notifies++;
    for (uint32_t i = 0; i < f->npieces; i++) {
        if (f->pieces[i].request == fail_request)
            err = fail_err;
        if (f->pieces[i].request == refuse_request)
            refused |= 1ull << i;
    }
    if (refused && !err && nrefusing < MAX_HELD) {
        refusing[nrefusing++] = (struct refusing){f, f->complete, refused};
        f->complete = refused_done;
    }
    int hold = !err && holding && f->opcode != XFER_NOTIFY && nheld < MAX_HELD;
    if (hold)
        held[nheld++] = (struct held){f, t, peer};
    pthread_mutex_unlock(&lock);
    if (err)
        f->complete(f, err, 0, "fault: injected failure");
    else if (!hold)
        tcp()->submit(t, peer, f);
}

static void fault_stats(void *t, struct ferry_transport_stats *out)
{
    tcp()->stats(t, out);
    snprintf(out->name, sizeof out->name, "fault");
}

static int fault_create(const struct transport_host *host, void **out)
{
    return tcp()->create(host, out);
}

static int fault_describe(void *t, char **json)
{
    return tcp()->describe(t, json);
}

static int fault_can_access(void *t, const struct memreg_region *r)
{
    return tcp()->can_access(t, r);
}

static const struct transport_ops fault_transport = {
    .name = "fault",
    .rank = 100,
    .create = fault_create,
    .destroy = fault_destroy,
    .describe = fault_describe,
    .peer_open = fault_peer_open,
    .peer_close = fault_peer_close,
    .submit = fault_submit,
    .can_access = fault_can_access,
    .stats = fault_stats,
};

void fault_transport_register(void)
{
    if (!transport_find("fault"))
        transport_register(&fault_transport);
}

void fault_fail_request(uint32_t request, int err)
{
    pthread_mutex_lock(&lock);
    fail_request = err ? request : NO_REQUEST;
    fail_err = err;
    pthread_mutex_unlock(&lock);
}

void fault_refuse_request(uint32_t request)
{
    pthread_mutex_lock(&lock);
    refuse_request = request;
    pthread_mutex_unlock(&lock);
}

void fault_hold(int on)
{
    pthread_mutex_lock(&lock);
    holding = on;
    pthread_mutex_unlock(&lock);
}

size_t fault_held(void)
{
    pthread_mutex_lock(&lock);
    size_t n = nheld;
    pthread_mutex_unlock(&lock);
    return n;
}

void fault_release(void)
{
    static struct held out[MAX_HELD];
    pthread_mutex_lock(&lock);
    holding = 0;
    size_t n = nheld;
    memcpy(out, held, n * sizeof *held);
    nheld = 0;
    pthread_mutex_unlock(&lock);
    for (size_t i = 0; i < n; i++)
        tcp()->submit(out[i].t, out[i].peer, out[i].f);
}

size_t fault_notifies(void)
{
    pthread_mutex_lock(&lock);
    size_t n = notifies;
    pthread_mutex_unlock(&lock);
    return n;
}

void fault_reset(void)
{
    pthread_mutex_lock(&lock);
    fail_request = refuse_request = NO_REQUEST;
    fail_err = holding = 0;
    notifies = 0;
    pthread_mutex_unlock(&lock);
}

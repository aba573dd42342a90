/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rdma.c — the rdma transport (libibverbs, RC queue pairs, one-sided WRITE
 * and READ): its ops table, peers, and which path each frame takes.
 *
 * A peer is opened from the target's descriptor: the endpoint JSON gives its
 * side channel, NICs and MRs (rkey per NIC).  Paths (queue pairs) are created
 * on first use, one per (local NIC, remote NIC) pair (times
 * FERRY_RDMA_QPS_PER_PATH), and reused until they break.  A frame is checked
 * against the target's published MRs before anything is posted (pieces
 * outside them are refused, per piece, like the tcp target does), then goes to
 * the path whose NICs are nearest to both memories, least loaded first.  A
 * frame whose path breaks under it is retried on another path (at most
 * RDMA_MAX_RETRIES times, within its deadline); a broken path is replaced on
 * the next request.  Several NICs: frames spread over the paths by load
 * (bytes in flight), so a batch stripes over every NIC pair.  Failover: a
 * path that failed for a reason of its link (the NIC's retry limit, no
 * completion for FERRY_RDMA_STALL_MS, a failed connect) puts its slot aside
 * for 1 s, doubling up to 16 s while it keeps failing, unless every slot is
 * aside; its requests are retried on the others and end COMPLETED (or
 * FAILED/TIMEOUT once their retries or deadline are spent).  See rdma.h for
 * the files and threads.
 *
 * Remote memory the target's NICs cannot reach but that it publishes (device
 * memory) is staged by the target when its endpoint says "stage": such a
 * frame goes through the target's bounce (rdma_stage.c).
 *
 * Unregister: an op holds a memreg access on each local registration its
 * pieces lie in, from submit until it ends (after its last work request has
 * completed, or its queue pair was destroyed).  ferry_unregister_memory
 * removes the region from the registry first and waits for those accesses
 * (memreg_remove), so the MR is deregistered only once no work request uses
 * it; an op whose memory was revoked is not retried on another path.
 */
#ifdef FERRY_HAVE_RDMA
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "net.h"
#include "transport/rdma/rdma.h"

/* ------------------------------------------------------------ ops */

struct rdma_op *rdma_op_alloc(struct rdma_transport *t)
{
    pthread_mutex_lock(&t->ops_lock);
    struct rdma_op *op = t->free_ops;
    if (op)
        t->free_ops = op->next;
    pthread_mutex_unlock(&t->ops_lock);
    if (!op)
        op = malloc(sizeof *op);
    if (op)
        memset(op, 0, sizeof *op);
    return op;
}

static void op_free(struct rdma_transport *t, struct rdma_op *op)
{
    pthread_mutex_lock(&t->ops_lock);
    op->next = t->free_ops;
    t->free_ops = op;
    pthread_mutex_unlock(&t->ops_lock);
}

/* Ends a frame for good. The peer may be freed once ops_out drops. */
static void frame_end(struct rdma_peer *p, struct xfer_frame *f, int err, uint64_t refused, bool staged,
                      const char *msg)
{
    struct rdma_transport *t = p->t;
    if (err == 0 && refused == 0) {
        atomic_fetch_add(f->opcode == XFER_WRITE ? &t->bytes_written : &t->bytes_read, f->bytes);
        if (staged)
            atomic_fetch_add(&t->bytes_target_staged, f->bytes);
    }
    f->complete(f, err, refused, msg);
    atomic_fetch_sub(&p->ops_out, 1);
}

void rdma_note_end(struct rdma_peer *p, struct xfer_frame *f, int err, const char *msg)
{
    frame_end(p, f, err, 0, false, msg);
}

static void refused_msg(struct rdma_peer *p, bool by_target, char *msg, size_t cap)
{
    snprintf(msg, cap, "rdma: %.48s refused an access outside its registered buffers (%s)", p->name,
             by_target ? "refused by the target when it staged it" : "checked before posting");
}

static void dispatch(struct rdma_peer *p, struct rdma_op *op);

/* ------------------------------------------------------------ local accesses */

/* Starts one memreg access per local registration the frame's pieces lie in
 * (covering the pieces' span in it).  0, or FERRY_ENOTREG / FERRY_ENOMEM. */
static int op_accesses_begin(struct rdma_transport *t, struct rdma_op *op, char *msg, size_t cap)
{
    const struct xfer_frame *f = op->f;
    struct span {
        uint64_t lo, hi;
        const struct rdma_reg *g;
    } inline_spans[RDMA_OP_ACCESSES], *spans = inline_spans;
    size_t n = 0, cap_spans = RDMA_OP_ACCESSES;
    int rc = 0;
    pthread_rwlock_rdlock(&t->regs_lock);
    for (uint32_t i = 0; i < f->npieces && !rc; i++) {
        uint64_t a = (uint64_t)(uintptr_t)f->pieces[i].local, b = a + f->pieces[i].len;
        const struct rdma_reg *g = rdma_reg_find(t, a, f->pieces[i].len);
        size_t k = 0;
        while (k < n && spans[k].g != g)
            k++;
        if (k < n) {
            spans[k].lo = a < spans[k].lo ? a : spans[k].lo;
            spans[k].hi = b > spans[k].hi ? b : spans[k].hi;
            continue;
        }
        if (n == cap_spans) {
            struct span *more = malloc(2 * cap_spans * sizeof *more);
            if (!more) {
                rc = FERRY_ENOMEM;
                break;
            }
            memcpy(more, spans, n * sizeof *spans);
            if (spans != inline_spans)
                free(spans);
            spans = more;
            cap_spans *= 2;
        }
        spans[n++] = (struct span){a, b, g};
    }
    pthread_rwlock_unlock(&t->regs_lock);
    op->acc = n <= RDMA_OP_ACCESSES ? op->acc_inline : malloc(n * sizeof *op->acc);
    if (!rc && !op->acc)
        rc = FERRY_ENOMEM;
    for (size_t k = 0; !rc && k < n; k++) {
        if (memreg_access_begin(t->host.registry, &op->acc[k], spans[k].lo, spans[k].hi - spans[k].lo, 0, NULL, NULL,
                                NULL) != 0) {
            rc = FERRY_ENOTREG;
            snprintf(msg, cap, "rdma: local 0x%llx+%llu was unregistered before the request was posted",
                     (unsigned long long)spans[k].lo, (unsigned long long)(spans[k].hi - spans[k].lo));
            break;
        }
        op->nacc++;
    }
    if (rc == FERRY_ENOMEM)
        snprintf(msg, cap, "rdma: out of memory");
    if (spans != inline_spans)
        free(spans);
    return rc;
}

bool rdma_op_revoked(const struct rdma_op *op)
{
    for (size_t i = 0; i < op->nacc; i++)
        if (memreg_access_revoked(&op->acc[i]))
            return true;
    return false;
}

static void op_accesses_end(struct rdma_transport *t, struct rdma_op *op)
{
    for (size_t i = 0; i < op->nacc; i++)
        memreg_access_end(t->host.registry, &op->acc[i]);
    if (op->acc && op->acc != op->acc_inline)
        free(op->acc);
    op->acc = NULL;
    op->nacc = 0;
}

void rdma_op_finish(struct rdma_op *op)
{
    if (op->stage) { /* a bounce leg: its stage goes on */
        rdma_stage_leg_end(op->stage);
        return;
    }
    struct rdma_peer *p = op->peer;
    struct xfer_frame *f = op->f;
    char msg[160] = "";
    int err = op->err;
    bool revoked = rdma_op_revoked(op); /* unregistered meanwhile: never touch it again */
    if (err && !op->no_retry && !revoked && op->retries < RDMA_MAX_RETRIES && !atomic_load(&p->closing) &&
        now_ns() < f->deadline_ns) {
        LOG_INFO("rdma: retrying a frame to %s on another path (%s)", p->name, op->msg);
        if (!op->retries)
            snprintf(op->first_msg, sizeof op->first_msg, "%.159s", op->msg);
        op->retries++;
        op->err = 0;
        op->no_retry = false;
        op->cur_piece = 0;
        op->cur_off = 0;
        op->chunks_out = 0;
        op->carved = false;
        op->started = false;
        dispatch(p, op);
        return;
    }
    /* after retries, the first failure says best what happened */
    const char *why = op->retries && !op->no_retry && op->first_msg[0] ? op->first_msg : op->msg;
    if (err == FERRY_ERANGE && revoked && op->no_retry) {
        snprintf(msg, sizeof msg, "%.159s", op->msg);
    } else if (err && revoked) {
        err = FERRY_ERANGE;
        snprintf(msg, sizeof msg, "rdma: local memory was unregistered during the transfer (%.100s)", why);
    } else if (err && now_ns() >= f->deadline_ns && err != FERRY_ERANGE) {
        err = FERRY_ETIMEDOUT;
        snprintf(msg, sizeof msg, "request timed out (%.120s)", why);
    } else if (err && op->retries && !op->no_retry) {
        snprintf(msg, sizeof msg, "%.120s (retried %u times)", why, op->retries);
    } else if (err) {
        snprintf(msg, sizeof msg, "%.159s", op->msg);
    } else if (op->refused) {
        refused_msg(p, op->staged, msg, sizeof msg);
    }
    uint64_t refused = op->refused;
    bool staged = op->staged;
    op_accesses_end(p->t, op);
    op_free(p->t, op);
    frame_end(p, f, err, refused, staged, msg);
}

/* ------------------------------------------------------------ paths */

/* Local and remote NIC of path slot k: pairs (j % local, j % remote). */
static void slot_nics(const struct rdma_peer *p, size_t k, int *lnic, int *rnic)
{
    size_t j = k / p->t->knobs.qps_per_path;
    *lnic = (int)(j % p->t->nnics);
    *rnic = (int)(j % p->ep.nnics);
}

static bool slot_usable(const struct rdma_peer *p, size_t k)
{
    int l, r;
    slot_nics(p, k, &l, &r);
    bool local_ib = p->t->nics[l].port_attr.link_layer != IBV_LINK_LAYER_ETHERNET;
    return local_ib == (p->ep.nics[r].link_ib != 0);
}

/* Joins paths that finished tearing down.  Peer lock held. */
static void reap_dead(struct rdma_peer *p)
{
    for (struct rdma_path **pp = &p->dead; *pp;) {
        struct rdma_path *path = *pp;
        if (atomic_load(&path->done)) {
            *pp = path->next_dead;
            rdma_path_free(path);
        } else {
            pp = &path->next_dead;
        }
    }
}

/* The path for slot k, replacing a broken one.  Peer lock held. */
static struct rdma_path *slot_path(struct rdma_peer *p, size_t k)
{
    struct rdma_path *path = p->paths[k];
    if (path) {
        pthread_mutex_lock(&path->lock);
        bool broken = path->state == PATH_BROKEN;
        pthread_mutex_unlock(&path->lock);
        if (!broken)
            return path;
        path->next_dead = p->dead;
        p->dead = path;
        p->paths[k] = NULL;
    }
    int l, r;
    slot_nics(p, k, &l, &r);
    return p->paths[k] = rdma_path_create(p, &p->t->nics[l], r, k);
}

#define SUSPECT_FIRST_MS 1000
#define SUSPECT_MAX_MS 16000

void rdma_path_suspect(struct rdma_path *path, const char *why)
{
    if (path->suspected)
        return;
    path->suspected = true;
    struct rdma_peer *p = path->peer;
    unsigned n = path->proven ? 1 : atomic_fetch_add(&p->slot_failures[path->slot], 1) + 1;
    if (path->proven)
        atomic_store(&p->slot_failures[path->slot], 1);
    uint64_t ms = SUSPECT_FIRST_MS;
    for (unsigned i = 1; i < n && ms < SUSPECT_MAX_MS; i++)
        ms *= 2;
    ms = ms < SUSPECT_MAX_MS ? ms : SUSPECT_MAX_MS;
    atomic_store(&p->slot_down_until[path->slot], now_ns() + ms * 1000000u);
    LOG_WARN("rdma: %s -> %s nic %d failed (%s); its requests go to the other paths, this one is tried "
             "again in %llu ms", path->nic->name, p->name, path->rnic, why, (unsigned long long)ms);
}

/* NIC preferences of the frame's memory: local (registration) and remote (MR). */
static void frame_prefs(struct rdma_peer *p, const struct xfer_frame *f, uint32_t *lpref, uint32_t *rpref)
{
    struct rdma_transport *t = p->t;
    const struct xfer_piece *x = &f->pieces[0];
    pthread_rwlock_rdlock(&t->regs_lock);
    struct rdma_reg *g = rdma_reg_find(t, (uint64_t)(uintptr_t)x->local, x->len);
    *lpref = g ? g->pref : ~0u;
    pthread_rwlock_unlock(&t->regs_lock);
    const struct rdma_remote_mr *m = rdma_endpoint_find_mr(&p->ep, x->remote, x->len);
    *rpref = m ? m->pref : ~0u;
}

/* Picks the best path: nearest NICs first (local preference weighs more),
 * then fewest bytes in flight.  Peer lock held. */
static struct rdma_path *pick_path(struct rdma_peer *p, uint32_t lpref, uint32_t rpref)
{
    struct rdma_path *best = NULL;
    int best_score = -1;
    uint64_t best_load = UINT64_MAX;
    reap_dead(p);
    /* failover: slots down for a while are passed over, unless all are */
    uint64_t now = now_ns();
    bool any_up = false;
    for (size_t k = 0; k < p->npaths && !any_up; k++)
        any_up = slot_usable(p, k) && atomic_load(&p->slot_down_until[k]) <= now;
    for (size_t k = 0; k < p->npaths; k++) {
        if (!slot_usable(p, k) || (any_up && atomic_load(&p->slot_down_until[k]) > now))
            continue;
        int l, r;
        slot_nics(p, k, &l, &r);
        int score = 2 * (int)(lpref >> l & 1) + (int)(rpref >> r & 1);
        if (score < best_score)
            continue;
        struct rdma_path *path = slot_path(p, k);
        if (!path)
            continue;
        uint64_t load = atomic_load(&path->inflight_bytes);
        if (score > best_score || load < best_load) {
            best = path;
            best_score = score;
            best_load = load;
        }
    }
    return best;
}

static void dispatch(struct rdma_peer *p, struct rdma_op *op)
{
    uint32_t lpref, rpref;
    frame_prefs(p, op->f, &lpref, &rpref);
    pthread_mutex_lock(&p->lock);
    bool queued = false;
    for (int attempt = 0; attempt < 3 && !queued && !atomic_load(&p->closing); attempt++) {
        struct rdma_path *path = pick_path(p, lpref, rpref);
        if (!path)
            break;
        queued = rdma_path_enqueue(path, op); /* under the peer lock: the path cannot be freed meanwhile */
    }
    bool closing = atomic_load(&p->closing);
    pthread_mutex_unlock(&p->lock);
    if (queued)
        return;
    op->err = closing ? FERRY_ECANCELED : FERRY_ECONN;
    op->no_retry = true;
    snprintf(op->msg, sizeof op->msg, closing ? "rdma: segment %.64s closed" : "rdma: no usable path to %.64s", p->name);
    rdma_op_finish(op);
}

static void dispatch_note(struct rdma_peer *p, struct xfer_frame *f)
{
    pthread_mutex_lock(&p->lock);
    bool queued = false;
    for (int attempt = 0; attempt < 3 && !queued && !atomic_load(&p->closing); attempt++) {
        struct rdma_path *path = pick_path(p, ~0u, ~0u);
        if (!path)
            break;
        queued = rdma_path_enqueue_note(path, f);
    }
    pthread_mutex_unlock(&p->lock);
    if (!queued)
        rdma_note_end(p, f, FERRY_ECONN, "rdma: no usable path for the notification");
}

/* ------------------------------------------------------------ submit */

/* Checks a frame before anything is posted: every local piece inside an MR,
 * every remote piece inside one of the target's MRs (else refused).  Returns
 * 0, or an error for the whole frame. */
static int check_frame(struct rdma_peer *p, const struct xfer_frame *f, uint64_t *refused, bool *staged, char *msg,
                       size_t cap)
{
    struct rdma_transport *t = p->t;
    struct ferry_descriptor published = {.nbuffers = p->nbuffers, .buffers = p->buffers};
    *refused = 0;
    *staged = false;
    int rc = 0;
    pthread_rwlock_rdlock(&t->regs_lock);
    for (uint32_t i = 0; i < f->npieces && !rc; i++) {
        const struct xfer_piece *x = &f->pieces[i];
        struct rdma_reg *g = rdma_reg_find(t, (uint64_t)(uintptr_t)x->local, x->len);
        if (!g || !g->reachable) {
            rc = FERRY_ENOTREG;
            snprintf(msg, cap, "rdma: local %p+%llu has no RDMA registration%s", x->local, (unsigned long long)x->len,
                     g ? " (no NIC can reach that memory)" : "");
        } else if (!rdma_endpoint_find_mr(&p->ep, x->remote, x->len)) {
            if (descriptor_find_buffer(&published, x->remote, x->len) >= 0 && p->ep.stage) {
                *staged = true; /* the whole frame goes through the target's bounce */
            } else if (descriptor_find_buffer(&published, x->remote, x->len) >= 0) {
                rc = FERRY_ENOTSUP;
                snprintf(msg, cap, "rdma: %.48s's buffer 0x%llx is not reachable by its NICs (no MR); "
                         "use a transport that stages it (tcp)", p->name, (unsigned long long)x->remote);
            } else if (i < XFER_MAX_PIECES) {
                *refused |= 1ull << i;
            }
        }
    }
    pthread_rwlock_unlock(&t->regs_lock);
    return rc;
}

static void rdma_submit(void *tp, void *pp, struct xfer_frame *f)
{
    struct rdma_transport *t = tp;
    struct rdma_peer *p = pp;
    atomic_fetch_add(&p->ops_out, 1);
    atomic_fetch_add(&t->frames_sent, 1);
    if (f->opcode == XFER_NOTIFY) {
        dispatch_note(p, f);
        return;
    }
    char msg[160];
    uint64_t refused;
    bool staged;
    int rc = check_frame(p, f, &refused, &staged, msg, sizeof msg);
    uint64_t all = f->npieces >= 64 ? ~0ull : (1ull << f->npieces) - 1;
    if (!rc && refused == all) {
        atomic_fetch_add(&t->refused, 1);
        refused_msg(p, false, msg, sizeof msg);
        frame_end(p, f, 0, refused, false, msg);
        return;
    }
    struct rdma_op *op = rc ? NULL : rdma_op_alloc(t);
    if (!rc && !op) {
        rc = FERRY_ENOMEM;
        snprintf(msg, sizeof msg, "rdma: out of memory");
    }
    if (!rc) {
        op->peer = p;
        op->f = f;
        op->refused = refused;
        op->staged = staged;
        rc = op_accesses_begin(t, op, msg, sizeof msg);
    }
    if (rc) {
        if (op) {
            op_accesses_end(t, op);
            op_free(t, op);
        }
        frame_end(p, f, rc, 0, false, msg);
        return;
    }
    if (refused)
        atomic_fetch_add(&t->refused, 1);
    dispatch(p, op);
}

/* ------------------------------------------------------------ peers */

static int rdma_peer_open(void *tp, const struct ferry_descriptor *d, void **out)
{
    struct rdma_transport *t = tp;
    const char *json = descriptor_transport(d, "rdma");
    if (!json)
        return ferry_fail(FERRY_ENOTSUP, "segment %s offers no rdma endpoint", d->name);
    struct rdma_peer *p = calloc(1, sizeof *p);
    if (!p)
        return ferry_fail(FERRY_ENOMEM, "rdma peer");
    int rc = rdma_endpoint_decode(json, &p->ep);
    if (rc) {
        char why[200];
        snprintf(why, sizeof why, "%s", ferry_last_error());
        rdma_endpoint_free(&p->ep);
        free(p);
        return ferry_fail(rc, "segment %s: %s", d->name, why);
    }
    p->t = t;
    p->engine_id = d->engine_id;
    snprintf(p->name, sizeof p->name, "%s", d->name);
    p->buffers = calloc(d->nbuffers + 1, sizeof *p->buffers);
    if (p->buffers && d->nbuffers)
        memcpy(p->buffers, d->buffers, d->nbuffers * sizeof *p->buffers);
    p->nbuffers = d->nbuffers;
    size_t pairs = t->nnics > p->ep.nnics ? t->nnics : p->ep.nnics;
    p->npaths = pairs * t->knobs.qps_per_path;
    if (p->npaths > RDMA_MAX_PATHS)
        p->npaths = RDMA_MAX_PATHS;
    pthread_mutex_init(&p->lock, NULL);
    size_t usable = 0;
    for (size_t k = 0; k < p->npaths; k++)
        usable += slot_usable(p, k);
    if (!usable || !p->buffers) {
        pthread_mutex_destroy(&p->lock);
        rdma_endpoint_free(&p->ep);
        free(p->buffers);
        free(p);
        return usable ? ferry_fail(FERRY_ENOMEM, "rdma peer")
                      : ferry_fail(FERRY_ENOTSUP, "segment %s: no local NIC shares a link layer (IB / RoCE) with "
                                   "its NICs", d->name);
    }
    *out = p;
    return 0;
}

static void rdma_peer_close(void *tp, void *pp)
{
    (void)tp;
    struct rdma_peer *p = pp;
    pthread_mutex_lock(&p->lock);
    atomic_store(&p->closing, true);
    for (size_t k = 0; k < p->npaths; k++) {
        if (p->paths[k]) {
            rdma_path_break(p->paths[k], FERRY_ECANCELED, "rdma: segment closed");
            p->paths[k]->next_dead = p->dead;
            p->dead = p->paths[k];
            p->paths[k] = NULL;
        }
    }
    pthread_mutex_unlock(&p->lock);
    while (atomic_load(&p->ops_out) > 0) /* every frame ends (ECANCELED) once its queue pair has drained */
        usleep(1000);
    pthread_mutex_lock(&p->lock);
    struct rdma_path *dead = p->dead;
    p->dead = NULL;
    pthread_mutex_unlock(&p->lock);
    while (dead) {
        struct rdma_path *next = dead->next_dead;
        rdma_path_free(dead);
        dead = next;
    }
    pthread_mutex_destroy(&p->lock);
    rdma_endpoint_free(&p->ep);
    free(p->buffers);
    free(p);
}

/* ------------------------------------------------------------ memory */

static int rdma_register(void *tp, const struct memreg_region *r, void **handle)
{
    struct rdma_transport *t = tp;
    struct rdma_reg *g;
    int rc = rdma_reg_create(t, r, &g);
    if (rc)
        return rc;
    pthread_rwlock_wrlock(&t->regs_lock);
    if (t->nregs == t->capregs) {
        size_t cap = t->capregs ? 2 * t->capregs : 16;
        struct rdma_reg **n = realloc(t->regs, cap * sizeof *n);
        if (!n) {
            pthread_rwlock_unlock(&t->regs_lock);
            rdma_reg_destroy(g);
            return ferry_fail(FERRY_ENOMEM, "rdma registration table");
        }
        t->regs = n;
        t->capregs = cap;
    }
    size_t i = t->nregs;
    while (i > 0 && t->regs[i - 1]->addr > g->addr) {
        t->regs[i] = t->regs[i - 1];
        i--;
    }
    t->regs[i] = g;
    t->nregs++;
    pthread_rwlock_unlock(&t->regs_lock);
    *handle = g;
    return 0;
}

static void rdma_unregister(void *tp, void *handle)
{
    struct rdma_transport *t = tp;
    struct rdma_reg *g = handle;
    pthread_rwlock_wrlock(&t->regs_lock);
    for (size_t i = 0; i < t->nregs; i++) {
        if (t->regs[i] == g) {
            memmove(&t->regs[i], &t->regs[i + 1], (t->nregs - i - 1) * sizeof *t->regs);
            t->nregs--;
            break;
        }
    }
    pthread_rwlock_unlock(&t->regs_lock);
    rdma_reg_destroy(g);
}

/* True only where the NICs reach the memory: host memory, and GPU memory
 * registered through dma-buf or peer memory.  The rest is staged by the engine. */
static int rdma_can_access(void *tp, const struct memreg_region *r)
{
    struct rdma_transport *t = tp;
    pthread_rwlock_rdlock(&t->regs_lock);
    struct rdma_reg *g = rdma_reg_find(t, r->addr, r->len);
    int ok = g && g->reachable;
    pthread_rwlock_unlock(&t->regs_lock);
    return ok;
}

/* Ranges inside the peer's published MRs, and its other published buffers
 * (NPU or sim memory no NIC of its reaches) when it stages them itself
 * ("stage" in its endpoint); else another transport that stages them (tcp). */
static int rdma_can_reach(void *tp, void *pp, uint64_t remote, uint64_t len)
{
    (void)tp;
    struct rdma_peer *p = pp;
    if (rdma_endpoint_find_mr(&p->ep, remote, len))
        return 1;
    struct ferry_descriptor published = {.nbuffers = p->nbuffers, .buffers = p->buffers};
    return p->ep.stage && descriptor_find_buffer(&published, remote, len) >= 0;
}

/* ------------------------------------------------------------ lifecycle */

static int rdma_describe(void *tp, char **json)
{
    struct rdma_transport *t = tp;
    struct rdma_endpoint ep = {.port = t->port, .nnics = t->nnics, .stage = t->knobs.stage_slots > 0};
    snprintf(ep.host, sizeof ep.host, "%s", t->host.listen_host);
    for (size_t i = 0; i < t->nnics; i++) {
        const struct rdma_nic *n = &t->nics[i];
        struct rdma_remote_nic *x = &ep.nics[i];
        snprintf(x->name, sizeof x->name, "%s", n->name);
        memcpy(x->gid, n->gid.raw, 16);
        x->lid = n->port_attr.lid;
        x->mtu = rdma_nic_mtu(n);
        x->link_ib = n->port_attr.link_layer != IBV_LINK_LAYER_ETHERNET;
        x->numa = n->numa;
    }
    pthread_rwlock_rdlock(&t->regs_lock);
    ep.mrs = calloc(t->nregs + 1, sizeof *ep.mrs);
    for (size_t i = 0; ep.mrs && i < t->nregs; i++) {
        const struct rdma_reg *g = t->regs[i];
        if (!g->remote || !g->reachable)
            continue;
        struct rdma_remote_mr *m = &ep.mrs[ep.nmrs++];
        m->addr = g->addr;
        m->len = g->len;
        m->pref = g->pref;
        for (size_t k = 0; k < t->nnics; k++)
            m->rkey[k] = g->mr[k]->rkey;
    }
    pthread_rwlock_unlock(&t->regs_lock);
    int rc = ep.mrs ? rdma_endpoint_encode(&ep, json) : ferry_fail(FERRY_ENOMEM, "rdma describe");
    free(ep.mrs);
    return rc;
}

static void rdma_destroy(void *tp)
{
    struct rdma_transport *t = tp;
    atomic_store(&t->stopping, true);
    rdma_server_stop(t);
    for (size_t i = 0; i < t->nnics; i++)
        if (t->nics[i].poller_started)
            pthread_join(t->nics[i].poller, NULL);
    pthread_rwlock_wrlock(&t->regs_lock);
    for (size_t i = 0; i < t->nregs; i++) /* the engine normally gave them back already */
        rdma_reg_destroy(t->regs[i]);
    free(t->regs);
    t->regs = NULL;
    t->nregs = 0;
    pthread_rwlock_unlock(&t->regs_lock);
    rdma_nics_close(t);
    for (struct rdma_op *op = t->free_ops, *next; op; op = next) {
        next = op->next;
        free(op);
    }
    pthread_rwlock_destroy(&t->regs_lock);
    pthread_mutex_destroy(&t->ops_lock);
    free(t);
}

static int rdma_create(const struct transport_host *host, void **out)
{
    struct rdma_transport *t = calloc(1, sizeof *t);
    if (!t)
        return ferry_fail(FERRY_ENOMEM, "rdma transport");
    t->host = *host;
    t->listen_fd = -1;
    pthread_rwlock_init(&t->regs_lock, NULL);
    pthread_mutex_init(&t->ops_lock, NULL);
    int rc = rdma_knobs_load(&t->knobs);
    if (!rc)
        rc = rdma_nics_open(t, host->cfg->device_name);
    for (size_t i = 0; !rc && i < t->nnics; i++) {
        if (pthread_create(&t->nics[i].poller, NULL, rdma_poller_main, &t->nics[i]))
            rc = ferry_fail(FERRY_EIO, "rdma: cannot start the completion poller of %s", t->nics[i].name);
        else
            t->nics[i].poller_started = true;
    }
    if (!rc)
        rc = rdma_server_start(t);
    if (rc) {
        char why[256];
        snprintf(why, sizeof why, "%s", ferry_last_error());
        rdma_destroy(t);
        return ferry_fail(rc, "%s", why);
    }
    *out = t;
    return 0;
}

static void rdma_stats(void *tp, struct ferry_transport_stats *out)
{
    struct rdma_transport *t = tp;
    memset(out, 0, sizeof *out);
    strcpy(out->name, "rdma");
    out->bytes_written = atomic_load(&t->bytes_written);
    out->bytes_read = atomic_load(&t->bytes_read);
    out->frames_sent = atomic_load(&t->frames_sent);
    out->refused = atomic_load(&t->refused);
    out->bytes_served = atomic_load(&t->bytes_served);
    out->bytes_target_staged = atomic_load(&t->bytes_target_staged);
    out->nic_count = t->nnics < FERRY_STATS_MAX_NICS ? t->nnics : FERRY_STATS_MAX_NICS;
    for (size_t i = 0; i < out->nic_count; i++) {
        snprintf(out->nics[i].name, sizeof out->nics[i].name, "%s", t->nics[i].name);
        out->nics[i].bytes = atomic_load(&t->nic_bytes[i]);
    }
}

const struct transport_ops ferry_rdma_transport = {
    .name = "rdma",
    .caps = TRANSPORT_NEEDS_HARDWARE | TRANSPORT_DEVICE_BY_NIC,
    .rank = 0,
    .create = rdma_create,
    .destroy = rdma_destroy,
    .describe = rdma_describe,
    .peer_open = rdma_peer_open,
    .peer_close = rdma_peer_close,
    .submit = rdma_submit,
    .register_memory = rdma_register,
    .unregister_memory = rdma_unregister,
    .can_access = rdma_can_access,
    .can_reach = rdma_can_reach,
    .stats = rdma_stats,
};

#endif /* FERRY_HAVE_RDMA */

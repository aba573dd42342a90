/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rdma_path.c — the data side of an initiator's queue pair ("path"): posting
 * frames onto it as RDMA WRITE/READ work requests, reaping completions, and
 * breaking it when anything goes wrong.  Connecting a path, watching its side
 * channel and taking it down are its control thread's (rdma_path_ctl.c).
 *
 * Threads.  Each NIC has one completion poller thread that polls the CQs of
 * all its paths (busy for FERRY_RDMA_POLL_SPIN_US, then asleep on the
 * completion channel).  Work requests are posted by whoever frees or brings
 * room: the submitting thread, the poller, the control thread — always under
 * the path's lock.  Ops that end are finished outside every lock.
 *
 * Send queue accounting: work request ids are sequence numbers; completions
 * of an RC queue pair arrive in order, so a completion for id s retires every
 * request up to s.  Only an op's last work request is signaled (plus one
 * whenever the queue fills or half of it went unsignaled), and a failing
 * request always reports itself.
 */
#ifdef FERRY_HAVE_RDMA
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "net.h"
#include "transport/rdma/rdma.h"

#define POST_CHAIN 16

/* ------------------------------------------------------------ breaking */

static void break_locked(struct rdma_path *path, int err, const char *msg)
{
    if (path->state == PATH_BROKEN)
        return;
    path->state = PATH_BROKEN;
    path->err = err;
    snprintf(path->msg, sizeof path->msg, "%.159s", msg);
    if (path->qp) { /* flush: every posted request completes (in error) */
        struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
        ibv_modify_qp(path->qp, &a, IBV_QP_STATE);
    }
    if (path->fd >= 0)
        shutdown(path->fd, SHUT_RDWR);
    uint64_t one = 1;
    if (write(path->wake_fd, &one, sizeof one) < 0)
        LOG_DEBUG("rdma: wake write failed: %s", strerror(errno));
}

void rdma_path_break_locked(struct rdma_path *path, int err, const char *msg)
{
    break_locked(path, err, msg);
}

void rdma_path_wake(struct rdma_path *path)
{
    uint64_t one = 1;
    if (write(path->wake_fd, &one, sizeof one) < 0)
        LOG_DEBUG("rdma: wake write failed: %s", strerror(errno));
}

void rdma_path_break(struct rdma_path *path, int err, const char *msg)
{
    pthread_mutex_lock(&path->lock);
    break_locked(path, err, msg);
    pthread_mutex_unlock(&path->lock);
}

/* ------------------------------------------------------------ posting */

static bool piece_refused(const struct rdma_op *op, uint32_t i)
{
    return i < XFER_MAX_PIECES && (op->refused >> i & 1);
}

static void skip_refused(struct rdma_op *op)
{
    while (op->cur_piece < op->f->npieces && piece_refused(op, op->cur_piece))
        op->cur_piece++;
}

static uint32_t local_key(struct rdma_path *path, uint64_t addr, uint64_t len)
{
    struct rdma_transport *t = path->peer->t;
    pthread_rwlock_rdlock(&t->regs_lock);
    struct rdma_reg *g = rdma_reg_find(t, addr, len);
    uint32_t key = g && g->mr[path->nic->index] ? g->mr[path->nic->index]->lkey : 0;
    pthread_rwlock_unlock(&t->regs_lock);
    return key; /* 0 (not registered: a caller's bug) fails as a local protection error */
}

/* Builds one work request from the op's cursor: consecutive pieces that are
 * contiguous on the remote side become one request with several SGEs.
 * Returns true when the op has nothing left to post. */
static bool build_wr(struct rdma_path *path, struct rdma_op *op, struct ibv_send_wr *wr, struct ibv_sge *sge)
{
    const struct xfer_frame *f = op->f;
    const struct rdma_endpoint *ep = &path->peer->ep;
    bool bounce = op->stage != NULL; /* a bounce leg: the remote side is the target's bounce */
    skip_refused(op);
    const struct xfer_piece *p = &f->pieces[op->cur_piece];
    uint64_t raddr = p->remote + op->cur_off, len = 0;
    const struct rdma_remote_mr *mr = bounce ? NULL : rdma_endpoint_find_mr(ep, p->remote, p->len);
    int n = 0;
    for (;;) {
        p = &f->pieces[op->cur_piece];
        uint64_t take = p->len - op->cur_off;
        if (take > path->max_msg - len)
            take = path->max_msg - len;
        uint64_t laddr = (uint64_t)(uintptr_t)p->local + op->cur_off;
        sge[n++] = (struct ibv_sge){laddr, (uint32_t)take, local_key(path, laddr, take)};
        len += take;
        op->cur_off += take;
        if (op->cur_off < p->len)
            break; /* the message is full */
        op->cur_piece++;
        op->cur_off = 0;
        skip_refused(op);
        if (op->cur_piece == f->npieces || n == (int)path->max_sge || len == path->max_msg)
            break;
        const struct xfer_piece *q = &f->pieces[op->cur_piece];
        if (q->remote != raddr + len || (!bounce && rdma_endpoint_find_mr(ep, q->remote, q->len) != mr))
            break;
    }
    memset(wr, 0, sizeof *wr);
    wr->sg_list = sge;
    wr->num_sge = n;
    wr->opcode = f->opcode == XFER_WRITE ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
    wr->wr.rdma.remote_addr = raddr;
    wr->wr.rdma.rkey = bounce ? path->bounce.rkey : mr ? mr->rkey[path->rnic] : 0;
    return op->cur_piece == f->npieces;
}

static void post_chain(struct rdma_path *path, struct ibv_send_wr *wrs, int n)
{
    if (n == 0)
        return;
    for (int i = 0; i < n - 1; i++)
        wrs[i].next = &wrs[i + 1];
    wrs[n - 1].next = NULL;
    struct ibv_send_wr *bad = NULL;
    int rc = ibv_post_send(path->qp, wrs, &bad);
    if (rc) {
        path->posted -= (uint64_t)(n - (bad ? bad - wrs : 0));
        char msg[160];
        snprintf(msg, sizeof msg, "rdma: ibv_post_send on %.32s: %.100s", path->nic->name, strerror(rc));
        rdma_path_suspect(path, msg);
        break_locked(path, FERRY_EIO, msg);
    }
}

void rdma_path_post(struct rdma_path *path)
{
    struct ibv_send_wr wrs[POST_CHAIN];
    struct ibv_sge sges[POST_CHAIN][RDMA_SGE_CAP];
    int n = 0;
    uint64_t bytes = 0;
    if (path->posted == path->completed) /* the stall clock starts with the first request out */
        path->progress_ns = now_ns();
    while (path->state == PATH_READY && path->cursor && path->posted - path->completed < path->depth) {
        struct rdma_op *op = path->cursor;
        if (!op->started && !op->stage && rdma_op_revoked(op)) { /* unregistered before it reached the wire */
            struct rdma_op *prev = NULL;
            if (path->head != op)
                for (prev = path->head; prev->next != op; prev = prev->next)
                    ;
            if (prev)
                prev->next = op->next;
            else
                path->head = op->next;
            if (path->tail == op)
                path->tail = prev;
            path->cursor = op->next;
            atomic_fetch_sub(&path->inflight_bytes, op->f->bytes);
            rdma_path_cancel(path, op);
            continue;
        }
        op->started = true;
        uint64_t seq = path->posted;
        bool last = build_wr(path, op, &wrs[n], sges[n]);
        bool full = seq + 1 - path->completed == path->depth;
        bool signaled = last || full || seq - path->last_signaled >= path->depth / 2;
        wrs[n].wr_id = seq;
        wrs[n].send_flags = signaled ? IBV_SEND_SIGNALED : 0;
        if (signaled)
            path->last_signaled = seq;
        path->ring[seq % path->depth] = (struct rdma_wr_slot){op, last};
        path->posted++;
        for (int k = 0; k < wrs[n].num_sge; k++)
            bytes += wrs[n].sg_list[k].length;
        if (last)
            path->cursor = op->next;
        if (++n == POST_CHAIN) {
            post_chain(path, wrs, n);
            n = 0;
        }
    }
    post_chain(path, wrs, n);
    if (bytes)
        atomic_fetch_add(&path->peer->t->nic_bytes[path->nic->index], bytes);
}

void rdma_op_list_push(struct rdma_op **head, struct rdma_op **tail, struct rdma_op *op)
{
    op->next = NULL;
    if (*tail)
        (*tail)->next = op;
    else
        *head = op;
    *tail = op;
}

void rdma_path_cancel(struct rdma_path *path, struct rdma_op *op)
{
    op->err = FERRY_ERANGE;
    op->no_retry = true;
    snprintf(op->msg, sizeof op->msg, "rdma: local memory was unregistered before the request was posted");
    op->next = path->cancelled;
    path->cancelled = op;
    rdma_path_wake(path);
}

void rdma_path_fifo_add(struct rdma_path *path, struct rdma_op *op)
{
    rdma_op_list_push(&path->head, &path->tail, op);
    if (!path->cursor)
        path->cursor = op;
    atomic_fetch_add(&path->inflight_bytes, op->f->bytes);
    rdma_path_post(path);
}

bool rdma_path_enqueue(struct rdma_path *path, struct rdma_op *op)
{
    pthread_mutex_lock(&path->lock);
    bool ok = path->state != PATH_BROKEN;
    if (ok && op->staged)
        rdma_stage_enqueue(path, op);
    else if (ok)
        rdma_path_fifo_add(path, op);
    pthread_mutex_unlock(&path->lock);
    return ok;
}

bool rdma_path_enqueue_note(struct rdma_path *path, struct xfer_frame *f)
{
    pthread_mutex_lock(&path->lock);
    bool ok = path->state != PATH_BROKEN;
    if (ok) {
        f->next = NULL;
        if (path->notes_tail)
            path->notes_tail->next = f;
        else
            path->notes = f;
        path->notes_tail = f;
        rdma_path_wake(path);
    }
    pthread_mutex_unlock(&path->lock);
    return ok;
}

/* ------------------------------------------------------------ completions */

/* What a failed work completion means for its op (and whether another path
 * may succeed where this one failed). */
static void wc_error(struct rdma_path *path, const struct ibv_wc *wc, struct rdma_op *op)
{
    const char *peer = path->peer->name;
    const char *st = ibv_wc_status_str(wc->status);
    int err = FERRY_EIO;
    bool fatal = true;
    char msg[160];
    switch (wc->status) {
    case IBV_WC_WR_FLUSH_ERR:
        err = path->err ? path->err : FERRY_ECONN;
        snprintf(msg, sizeof msg, "%.159s", path->msg[0] ? path->msg : "rdma: queue pair flushed");
        fatal = false;
        break;
    case IBV_WC_REM_ACCESS_ERR:
        err = FERRY_ERANGE;
        snprintf(msg, sizeof msg, "rdma: refused by the remote NIC of %.48s (remote access error: the range is "
                 "not registered there, or no longer)", peer);
        break;
    case IBV_WC_RETRY_EXC_ERR:
    case IBV_WC_RNR_RETRY_EXC_ERR:
        err = FERRY_ECONN;
        snprintf(msg, sizeof msg, "rdma %.20s -> %.48s: %.30s: peer not answering (dead or unreachable)",
                 path->nic->name, peer, st);
        fatal = false;
        break;
    case IBV_WC_REM_INV_REQ_ERR:
        err = FERRY_EPROTO;
        snprintf(msg, sizeof msg, "rdma: %.64s's NIC rejected the request as invalid (%.40s)", peer, st);
        break;
    default:
        snprintf(msg, sizeof msg, "rdma %.20s -> %.48s: work request failed: %.32s (vendor error 0x%x)", path->nic->name,
                 peer, st, wc->vendor_err);
        break;
    }
    if (op && (!op->err || (!op->no_retry && fatal))) {
        op->err = err;
        op->no_retry = fatal;
        snprintf(op->msg, sizeof op->msg, "%.159s", msg);
    }
    if (wc->status == IBV_WC_RETRY_EXC_ERR || wc->status == IBV_WC_RNR_RETRY_EXC_ERR)
        rdma_path_suspect(path, st);
    if (wc->status != IBV_WC_WR_FLUSH_ERR) {
        char why[160];
        snprintf(why, sizeof why, "rdma %.20s -> %.48s: queue pair reset after %.40s", path->nic->name, peer, st);
        break_locked(path, fatal ? FERRY_ECONN : err, fatal ? why : msg);
    }
}

int rdma_path_poll(struct rdma_path *path, struct rdma_op **done, struct rdma_op **done_tail)
{
    struct ibv_wc wc[32];
    int n = ibv_poll_cq(path->cq, 32, wc);
    if (n <= 0)
        return 0;
    pthread_mutex_lock(&path->lock);
    for (int i = 0; i < n; i++) {
        uint64_t seq = wc[i].wr_id;
        if (seq < path->completed || seq >= path->posted) {
            LOG_WARN("rdma: completion for unknown work request %llu on %s", (unsigned long long)seq,
                     path->nic->name);
            continue;
        }
        if (wc[i].status != IBV_WC_SUCCESS)
            wc_error(path, &wc[i], path->ring[seq % path->depth].op);
        else
            path->proven = true;
        for (uint64_t q = path->completed; q <= seq; q++) {
            struct rdma_wr_slot *s = &path->ring[q % path->depth];
            if (!s->last)
                continue;
            struct rdma_op *op = path->head; /* in order: the op ending is the oldest */
            path->head = op->next;
            if (!path->head)
                path->tail = NULL;
            if (op != s->op)
                LOG_ERROR("rdma: completion order broken on %s", path->nic->name);
            atomic_fetch_sub(&path->inflight_bytes, op->f->bytes);
            rdma_op_list_push(done, done_tail, op);
        }
        path->completed = seq + 1;
    }
    path->progress_ns = now_ns();
    rdma_path_post(path);
    pthread_mutex_unlock(&path->lock);
    return n;
}

void rdma_op_finish_all(struct rdma_op *op)
{
    while (op) {
        struct rdma_op *next = op->next;
        rdma_op_finish(op);
        op = next;
    }
}

void *rdma_poller_main(void *arg)
{
    struct rdma_nic *nic = arg;
    struct rdma_transport *t = nic->t;
    int fl = fcntl(nic->channel->fd, F_GETFL);
    fcntl(nic->channel->fd, F_SETFL, fl | O_NONBLOCK);
    uint64_t idle_since = now_ns();
    while (!atomic_load(&t->stopping)) {
        struct rdma_op *done = NULL, *done_tail = NULL;
        int total = 0;
        pthread_mutex_lock(&nic->lock);
        for (struct rdma_path *p = nic->paths; p; p = p->poll_next)
            total += rdma_path_poll(p, &done, &done_tail);
        pthread_mutex_unlock(&nic->lock);
        rdma_op_finish_all(done);
        uint64_t now = now_ns();
        if (total) {
            idle_since = now;
            continue;
        }
        if (now - idle_since < (uint64_t)t->knobs.spin_us * 1000u)
            continue;
        /* idle: arm every CQ, look once more (a completion may have slipped in), sleep */
        done = done_tail = NULL;
        pthread_mutex_lock(&nic->lock);
        for (struct rdma_path *p = nic->paths; p; p = p->poll_next)
            ibv_req_notify_cq(p->cq, 0);
        for (struct rdma_path *p = nic->paths; p; p = p->poll_next)
            total += rdma_path_poll(p, &done, &done_tail);
        pthread_mutex_unlock(&nic->lock);
        rdma_op_finish_all(done);
        if (total)
            continue;
        struct pollfd pfd = {.fd = nic->channel->fd, .events = POLLIN};
        poll(&pfd, 1, RDMA_TICK_MS);
        struct ibv_cq *cq;
        void *ctx;
        /* only acknowledge: the CQ may be on its way out (its path already
         * unlinked), so nothing reachable from it is touched */
        while (ibv_get_cq_event(nic->channel, &cq, &ctx) == 0)
            ibv_ack_cq_events(cq, 1);
        idle_since = now_ns();
    }
    return NULL;
}

#endif /* FERRY_HAVE_RDMA */

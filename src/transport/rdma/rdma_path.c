/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rdma_path.c — the initiator's queue pairs ("paths"): connecting one, posting
 * frames onto it as RDMA WRITE/READ work requests, reaping completions, and
 * taking it down when anything goes wrong.
 *
 * Threads.  Each path has a control thread: it connects (QP + side-channel
 * HELLO), then watches the side channel (peer gone, NOTIFY acks), sends
 * notifications and enforces deadlines; when the path breaks it waits for the
 * queue pair to drain, destroys it and hands unfinished frames back (retry on
 * another path, or end).  Each NIC has one completion poller thread that
 * polls the CQs of all its paths (busy for FERRY_RDMA_POLL_SPIN_US, then
 * asleep on the completion channel).  Work requests are posted by whoever
 * frees or brings room: the submitting thread, the poller, the control
 * thread — always under the path's lock.
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
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.h"
#include "err.h"
#include "log.h"
#include "net.h"
#include "transport/rdma/rdma.h"

#define POST_CHAIN 16
#define SGE_CAP 64
#define TICK_MS 100
#define DRAIN_MS 2000

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

/* Posts from the cursor while the send queue has room.  Path lock held. */
static void post_some(struct rdma_path *path)
{
    struct ibv_send_wr wrs[POST_CHAIN];
    struct ibv_sge sges[POST_CHAIN][SGE_CAP];
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

static void list_push(struct rdma_op **head, struct rdma_op **tail, struct rdma_op *op)
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
    list_push(&path->head, &path->tail, op);
    if (!path->cursor)
        path->cursor = op;
    atomic_fetch_add(&path->inflight_bytes, op->f->bytes);
    post_some(path);
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

/* Polls one path's CQ; ops that ended go onto *done (caller finishes them
 * outside every lock).  Returns the number of completions. */
static int path_poll(struct rdma_path *path, struct rdma_op **done, struct rdma_op **done_tail)
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
            list_push(done, done_tail, op);
        }
        path->completed = seq + 1;
    }
    path->progress_ns = now_ns();
    post_some(path);
    pthread_mutex_unlock(&path->lock);
    return n;
}

static void finish_all(struct rdma_op *op)
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
            total += path_poll(p, &done, &done_tail);
        pthread_mutex_unlock(&nic->lock);
        finish_all(done);
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
            total += path_poll(p, &done, &done_tail);
        pthread_mutex_unlock(&nic->lock);
        finish_all(done);
        if (total)
            continue;
        struct pollfd pfd = {.fd = nic->channel->fd, .events = POLLIN};
        poll(&pfd, 1, TICK_MS);
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

/* ------------------------------------------------------------ control thread */

static int path_connect(struct rdma_path *path)
{
    struct rdma_peer *p = path->peer;
    struct rdma_transport *t = p->t;
    struct rdma_nic *nic = path->nic;
    unsigned timeout = t->host.cfg->connect_timeout_ms;
    struct ibv_cq *cq = ibv_create_cq(nic->ctx, (int)path->depth * 2 + 16, path, nic->channel, 0);
    if (!cq)
        return ferry_fail(FERRY_EIO, "rdma: ibv_create_cq on %s: %s", nic->name, strerror(errno));
    struct ibv_qp *qp = rdma_qp_create(nic, cq, path->depth, path->max_sge);
    if (!qp) {
        ibv_destroy_cq(cq);
        return FERRY_EIO;
    }
    uint32_t psn = 0;
    if (getrandom(&psn, sizeof psn, 0) != sizeof psn)
        psn = (uint32_t)now_ns();
    psn &= 0xffffff;
    pthread_mutex_lock(&path->lock);
    path->cq = cq;
    path->qp = qp;
    pthread_mutex_unlock(&path->lock);

    int fd = net_connect(p->ep.host, p->ep.port, timeout);
    if (fd < 0) {
        char why[200];
        snprintf(why, sizeof why, "%s", ferry_last_error());
        return ferry_fail(fd, "rdma: cannot reach the side channel of %s: %s", p->name, why);
    }
    pthread_mutex_lock(&path->lock);
    bool broken = path->state == PATH_BROKEN;
    path->fd = broken ? -1 : fd;
    pthread_mutex_unlock(&path->lock);
    if (broken) {
        close(fd);
        return path->err;
    }
    net_set_timeouts(fd, timeout, timeout);
    if (auth_enabled(t->host.auth)) {
        char who[256];
        snprintf(who, sizeof who, "%s (%s:%d)", p->name, p->ep.host, p->ep.port);
        int rc = auth_client(fd, t->host.auth, AUTH_RDMA, who, net_deadline(timeout), NULL);
        if (rc)
            return rc;
    }

    struct rdma_qp_info mine, theirs;
    uint8_t info[RDMA_QP_INFO_SIZE], buf[RDMA_QP_INFO_SIZE + RDMA_MAX_TEXT + 1];
    rdma_qp_info_local(nic, qp, psn, nic->gid_index, &mine);
    mine.nic = (uint32_t)path->rnic;
    mine.engine_id = p->engine_id;
    rdma_qp_info_encode(&mine, info);
    const char *name = t->host.segment_name;
    size_t nl = strlen(name) < RDMA_MAX_NAME ? strlen(name) : RDMA_MAX_NAME;
    struct rdma_msg_header h = {.type = RDMA_MSG_HELLO};
    int rc = rdma_msg_send(fd, &h, info, sizeof info, name, nl);
    if (!rc)
        rc = rdma_msg_recv(fd, &h, buf, sizeof buf - 1);
    if (rc) {
        char why[200];
        snprintf(why, sizeof why, "%s", ferry_last_error());
        return ferry_fail(rc, "rdma: no answer from the side channel of %s (%s:%d): %s", p->name, p->ep.host,
                          p->ep.port, why);
    }
    if (h.type != RDMA_MSG_HELLO_ACK)
        rc = ferry_fail(FERRY_EPROTO, "rdma: %s answered HELLO with message type %u", p->name, h.type);
    else if (h.status) {
        char why[RDMA_MAX_TEXT + 1];
        log_sanitize((const char *)buf, h.len, why, sizeof why);
        /* a status no ferry target sends was refused by rdma_msg_decode_header */
        return ferry_fail(h.status, "rdma: %s refused the queue pair: %s", p->name, why);
    }
    if (!rc)
        rc = rdma_qp_info_decode(buf, &theirs);
    struct rdma_bounce_info bounce = {0};
    if (!rc && h.len >= RDMA_QP_INFO_SIZE + RDMA_BOUNCE_INFO_SIZE)
        rc = rdma_bounce_info_decode(buf + RDMA_QP_INFO_SIZE, &bounce);
    if (!rc && theirs.engine_id != p->engine_id)
        rc = ferry_fail(FERRY_ESTALE, "rdma: %s restarted (engine id changed); reopen the segment", p->name);
    if (!rc)
        rc = rdma_qp_connect(t, nic, qp, nic->gid_index, &theirs, p->ep.nics[path->rnic].link_ib, psn, p->name);
    if (rc)
        return rc;
    pthread_mutex_lock(&nic->lock);
    path->poll_next = nic->paths;
    nic->paths = path;
    path->polled = true;
    pthread_mutex_unlock(&nic->lock);
    pthread_mutex_lock(&path->lock);
    path->bounce = bounce;
    path->free_slots = bounce.slots >= 64 ? ~0ull : (1ull << bounce.slots) - 1;
    if (path->state == PATH_CONNECTING) {
        path->state = PATH_READY;
        post_some(path);
        rdma_stage_carve(path);
    }
    pthread_mutex_unlock(&path->lock);
    LOG_INFO("rdma: queue pair %u on %s -> %s nic %d (qpn %u) ready", qp->qp_num, nic->name, p->name, path->rnic,
             theirs.qpn);
    return 0;
}

/* Work out and no completion for FERRY_RDMA_STALL_MS: the NIC never said
 * "retry exceeded" (Soft-RoCE with its peer's link down does not), yet the
 * link is dead.  Path lock held. */
static bool stalled(struct rdma_path *path, uint64_t now)
{
    uint64_t ms = path->peer->t->knobs.stall_ms;
    return ms && path->state == PATH_READY && path->posted > path->completed &&
           now - path->progress_ns > ms * 1000000u;
}

static bool deadline_passed(struct rdma_path *path, uint64_t now)
{
    for (struct rdma_op *op = path->head; op; op = op->next)
        if (now >= op->f->deadline_ns)
            return true;
    for (int l = 0; l < 2; l++)
        for (struct xfer_frame *f = l ? path->acks : path->notes; f; f = f->next)
            if (now >= f->deadline_ns)
                return true;
    return rdma_stage_deadline_passed(path, now);
}

/* Reads one message from the side channel: a NOTIFY_ACK, or the end. */
static void read_side_channel(struct rdma_path *path)
{
    struct rdma_peer *p = path->peer;
    struct rdma_msg_header h;
    char msg[160];
    uint8_t payload[8 + RDMA_MAX_TEXT + 1];
    int rc = rdma_msg_recv(path->fd, &h, payload, sizeof payload - 1);
    if (rc == FERRY_ECONN) {
        snprintf(msg, sizeof msg, "rdma: side channel to %.64s closed: the peer is gone", p->name);
        rdma_path_break(path, FERRY_ECONN, msg);
        return;
    }
    if (!rc && h.type == RDMA_MSG_STAGE_ACK)
        rc = rdma_stage_ack(path, &h, payload);
    if (!rc && h.type == RDMA_MSG_STAGE_ACK)
        return;
    if (!rc && h.type != RDMA_MSG_NOTIFY_ACK)
        rc = ferry_fail(FERRY_EPROTO, "rdma: unexpected message type %u from %s", h.type, p->name);
    pthread_mutex_lock(&path->lock);
    struct xfer_frame *f = path->acks;
    if (!rc && (!f || f->wire_id != h.id))
        rc = ferry_fail(FERRY_EPROTO, "rdma: NOTIFY_ACK %llu from %s matches no notification",
                        (unsigned long long)h.id, p->name);
    if (!rc) {
        path->acks = f->next;
        if (!path->acks)
            path->acks_tail = NULL;
    }
    pthread_mutex_unlock(&path->lock);
    if (rc) {
        snprintf(msg, sizeof msg, "%s", ferry_last_error());
        rdma_path_break(path, rc, msg);
        return;
    }
    snprintf(msg, sizeof msg, "%.64s refused the notification: %.60s", p->name, ferry_strerror(h.status));
    rdma_note_end(p, f, h.status, h.status ? msg : "");
}

/* Until the path breaks: deadlines, notifications out, acks and the end in. */
static void path_watch(struct rdma_path *path)
{
    struct rdma_peer *p = path->peer;
    for (;;) {
        struct xfer_frame *note = NULL;
        struct rdma_stage *st = NULL;
        pthread_mutex_lock(&path->lock);
        struct rdma_op *cancelled = path->cancelled;
        path->cancelled = NULL;
        if (cancelled) {
            pthread_mutex_unlock(&path->lock);
            finish_all(cancelled);
            continue;
        }
        if (stalled(path, now_ns())) {
            char msg[160];
            snprintf(msg, sizeof msg, "rdma %.20s -> %.64s: no completion for %u ms with work out; queue pair reset",
                     path->nic->name, p->name, p->t->knobs.stall_ms);
            rdma_path_suspect(path, "no completion");
            break_locked(path, FERRY_ECONN, msg);
        }
        if (path->state != PATH_BROKEN && deadline_passed(path, now_ns())) {
            char msg[160];
            snprintf(msg, sizeof msg, "rdma %.20s -> %.64s: request deadline passed; queue pair reset", path->nic->name,
                     p->name);
            break_locked(path, FERRY_ETIMEDOUT, msg);
        }
        if (path->state == PATH_BROKEN) {
            pthread_mutex_unlock(&path->lock);
            return;
        }
        if ((note = path->notes)) {
            path->notes = note->next;
            if (!path->notes)
                path->notes_tail = NULL;
            note->wire_id = ++path->note_id;
            note->next = NULL;
            if (path->acks_tail)
                path->acks_tail->next = note;
            else
                path->acks = note;
            path->acks_tail = note;
        } else {
            st = rdma_stage_next_send(path);
        }
        pthread_mutex_unlock(&path->lock);
        if (st) {
            int rc = rdma_stage_send(path, st);
            if (rc) {
                char msg[160];
                snprintf(msg, sizeof msg, "rdma: staging message to %.48s: %.80s", p->name, ferry_last_error());
                rdma_path_break(path, rc, msg);
            }
            continue;
        }
        if (note) {
            struct rdma_msg_header h = {.type = RDMA_MSG_NOTIFY, .id = note->wire_id};
            int rc = rdma_msg_send(path->fd, &h, note->notify_msg, note->notify_len, NULL, 0);
            if (rc) {
                char msg[160];
                snprintf(msg, sizeof msg, "rdma: notification to %.48s: %.80s", p->name, ferry_last_error());
                rdma_path_break(path, rc, msg);
            }
            continue;
        }
        struct pollfd pfd[2] = {{.fd = path->fd, .events = POLLIN}, {.fd = path->wake_fd, .events = POLLIN}};
        if (poll(pfd, 2, TICK_MS) <= 0)
            continue;
        uint64_t count;
        if (pfd[1].revents && read(path->wake_fd, &count, sizeof count) < 0)
            LOG_DEBUG("rdma: wake read: %s", strerror(errno));
        if (pfd[0].revents)
            read_side_channel(path);
    }
}

/* The path is broken: let the queue pair drain, destroy it, and hand back
 * whatever did not finish. */
static void path_teardown(struct rdma_path *path)
{
    struct rdma_peer *p = path->peer;
    struct rdma_nic *nic = path->nic;
    uint64_t until = now_ns() + (uint64_t)DRAIN_MS * 1000000u;
    for (;;) {
        pthread_mutex_lock(&path->lock);
        bool drained = path->completed == path->posted;
        pthread_mutex_unlock(&path->lock);
        if (drained || !path->polled || now_ns() > until)
            break;
        usleep(1000);
    }
    if (path->polled) {
        pthread_mutex_lock(&nic->lock);
        for (struct rdma_path **pp = &nic->paths; *pp; pp = &(*pp)->poll_next) {
            if (*pp == path) {
                *pp = path->poll_next;
                break;
            }
        }
        pthread_mutex_unlock(&nic->lock);
        path->polled = false;
    }
    struct rdma_op *done = NULL, *done_tail = NULL;
    while (path->cq && path_poll(path, &done, &done_tail) > 0)
        ;
    pthread_mutex_lock(&path->lock);
    if (path->qp) /* from here on the NIC touches none of the ops' memory */
        ibv_destroy_qp(path->qp);
    path->qp = NULL;
    for (struct rdma_op *op = path->head, *next; op; op = next) {
        next = op->next;
        if (!op->err) {
            op->err = path->err;
            snprintf(op->msg, sizeof op->msg, "%.159s", path->msg);
        }
        op->no_retry |= path->err == FERRY_ESTALE || path->err == FERRY_ECANCELED;
        list_push(&done, &done_tail, op);
    }
    path->head = path->tail = path->cursor = NULL;
    for (struct rdma_op *op = path->cancelled, *next; op; op = next) {
        next = op->next;
        list_push(&done, &done_tail, op);
    }
    path->cancelled = NULL;
    struct rdma_stage *stages;
    rdma_stage_drain(path, &stages, &done, &done_tail);
    struct xfer_frame *notes[2] = {path->acks, path->notes};
    path->acks = path->acks_tail = path->notes = path->notes_tail = NULL;
    int err = path->err, fd = path->fd;
    path->fd = -1; /* break_locked() may still shut it down: never a reused number */
    char msg[160];
    snprintf(msg, sizeof msg, "%.159s", path->msg);
    pthread_mutex_unlock(&path->lock);
    if (path->cq)
        ibv_destroy_cq(path->cq);
    path->cq = NULL;
    if (fd >= 0)
        close(fd);
    finish_all(done);
    for (struct rdma_stage *st = stages, *next; st; st = next) {
        next = st->next;
        rdma_stage_end(st, err, false, msg);
    }
    while (atomic_load(&path->stages_alive) > 0) /* a poller ending a leg (moments) */
        usleep(1000);
    for (int l = 0; l < 2; l++) {
        for (struct xfer_frame *f = notes[l], *next; f; f = next) {
            next = f->next;
            rdma_note_end(p, f, now_ns() >= f->deadline_ns ? FERRY_ETIMEDOUT : err, msg);
        }
    }
}

static void *path_main(void *arg)
{
    struct rdma_path *path = arg;
    int rc = path_connect(path);
    if (rc) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s", ferry_last_error());
        pthread_mutex_lock(&path->lock);
        /* a refusal (restarted, not authorized) or the segment closing is no fault of the link */
        if (rc != FERRY_ESTALE && rc != FERRY_EPERM && rc != FERRY_ECANCELED && path->state != PATH_BROKEN)
            rdma_path_suspect(path, msg);
        rdma_path_break_locked(path, rc, msg);
        pthread_mutex_unlock(&path->lock);
    } else {
        path_watch(path);
    }
    pthread_mutex_lock(&path->lock);
    if (path->err != FERRY_ECANCELED)
        LOG_INFO("rdma: path %s -> %s nic %d down: %s", path->nic->name, path->peer->name, path->rnic, path->msg);
    pthread_mutex_unlock(&path->lock);
    path_teardown(path);
    atomic_store(&path->done, 1);
    return NULL;
}

struct rdma_path *rdma_path_create(struct rdma_peer *p, struct rdma_nic *nic, int rnic, size_t slot)
{
    struct rdma_path *path = calloc(1, sizeof *path);
    if (!path)
        return NULL;
    path->peer = p;
    path->nic = nic;
    path->rnic = rnic;
    path->slot = slot;
    path->state = PATH_CONNECTING;
    path->fd = -1;
    path->depth = (uint32_t)nic->max_wr;
    path->max_sge = (uint32_t)(nic->max_sge < SGE_CAP ? nic->max_sge : SGE_CAP);
    path->max_msg = nic->max_msg < (1u << 30) ? nic->max_msg : (1u << 30);
    path->ring = calloc(path->depth, sizeof *path->ring);
    path->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&path->lock, NULL);
    if (!path->ring || path->wake_fd < 0 || pthread_create(&path->thread, NULL, path_main, path)) {
        if (path->wake_fd >= 0)
            close(path->wake_fd);
        pthread_mutex_destroy(&path->lock);
        free(path->ring);
        free(path);
        return NULL;
    }
    return path;
}

void rdma_path_free(struct rdma_path *path)
{
    pthread_join(path->thread, NULL);
    close(path->wake_fd);
    pthread_mutex_destroy(&path->lock);
    free(path->ring);
    free(path);
}

#endif /* FERRY_HAVE_RDMA */

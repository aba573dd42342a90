/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rdma_path_ctl.c — the control thread of an initiator's queue pair ("path"):
 * it connects the path (QP, side-channel HELLO, optional authentication),
 * then watches it until it breaks — the side channel (peer gone, NOTIFY and
 * STAGE acks), notifications and staging messages out, request deadlines and
 * stalls — and finally lets the queue pair drain, destroys it and hands every
 * unfinished frame back (retry on another path, or end).
 *
 * Threads.  One control thread per path, started by rdma_path_create and
 * joined by rdma_path_free.  It owns the path's side-channel fd and wake fd;
 * everything else of the path it touches under the path's lock, as the
 * posting side (rdma_path.c) does.
 */
#ifdef FERRY_HAVE_RDMA
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <unistd.h>

#include "auth.h"
#include "err.h"
#include "log.h"
#include "net.h"
#include "transport/rdma/rdma.h"

#define DRAIN_MS 2000

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

    uint64_t deadline = net_deadline(timeout); /* the connect, the authentication and HELLO within one */
    int fd = net_connect_deadline(p->ep.host, p->ep.port, deadline);
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
    net_set_keepalive(fd, t->host.limits.keepalive_s); /* a vanished target breaks the path, not only its requests */
    char side[96]; /* the side channel, "[v6]:port" for an IPv6 host (at most 63 bytes: it fits) */
    (void)net_format_hostport(side, sizeof side, p->ep.host, p->ep.port);
    if (auth_enabled(t->host.auth)) {
        char who[256];
        snprintf(who, sizeof who, "%s (%s)", p->name, side);
        int rc = auth_client(fd, t->host.auth, AUTH_RDMA, who, deadline, NULL);
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
    struct rdma_msg_header h;
    int rc = rdma_hello_exchange(fd, info, name, nl, deadline, &h, buf, sizeof buf - 1);
    if (rc) {
        char why[200];
        snprintf(why, sizeof why, "%s", ferry_last_error());
        return ferry_fail(rc, "rdma: no answer from the side channel of %s (%s): %s", p->name, side, why);
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
        rdma_path_post(path);
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
            rdma_op_finish_all(cancelled);
            continue;
        }
        if (stalled(path, now_ns())) {
            char msg[160];
            snprintf(msg, sizeof msg, "rdma %.20s -> %.64s: no completion for %u ms with work out; queue pair reset",
                     path->nic->name, p->name, p->t->knobs.stall_ms);
            rdma_path_suspect(path, "no completion");
            rdma_path_break_locked(path, FERRY_ECONN, msg);
        }
        if (path->state != PATH_BROKEN && deadline_passed(path, now_ns())) {
            char msg[160];
            snprintf(msg, sizeof msg, "rdma %.20s -> %.64s: request deadline passed; queue pair reset", path->nic->name,
                     p->name);
            rdma_path_break_locked(path, FERRY_ETIMEDOUT, msg);
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
        if (poll(pfd, 2, RDMA_TICK_MS) <= 0)
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
    while (path->cq && rdma_path_poll(path, &done, &done_tail) > 0)
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
        rdma_op_list_push(&done, &done_tail, op);
    }
    path->head = path->tail = path->cursor = NULL;
    for (struct rdma_op *op = path->cancelled, *next; op; op = next) {
        next = op->next;
        rdma_op_list_push(&done, &done_tail, op);
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
    rdma_op_finish_all(done);
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
    path->max_sge = (uint32_t)(nic->max_sge < RDMA_SGE_CAP ? nic->max_sge : RDMA_SGE_CAP);
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

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rdma_stage.c — the initiator's half of target-side staging: requests to
 * memory that the target's NICs cannot reach (an NPU, a GPU without dma-buf)
 * go through a pinned bounce that the target registered for this queue pair
 * (rdma_bounce.c is the other half).
 *
 * The bounce has `slots` slots of `slot_size` bytes; a free slot is a credit
 * this side owns, so a fast initiator cannot overrun the target.  A staged op
 * is carved into stages of at most one slot each:
 *   WRITE  RDMA WRITE local -> slot (the "leg"), then STAGE_WRITE on the side
 *          channel; the target copies slot -> device and answers STAGE_ACK
 *          only after the copy; the ack frees the slot.
 *   READ   STAGE_READ; the target copies device -> slot and acks; then RDMA
 *          READ slot -> local; its completion frees the slot.
 * With several slots the target copies stage i while stage i+1 is on the
 * wire.  Threads: carving happens under the path lock wherever credits
 * appear (enqueue, connect, a stage's end); the path's control thread sends
 * the STAGE messages and reads the acks; legs complete on the NIC's poller.
 * A stage belongs to its path until rdma_stage_end frees it (the path is not
 * freed before: its teardown waits for stages_alive to drop to 0, as a
 * poller may still be ending a leg); an op ends when it is wholly carved and
 * its last stage ended.
 */
#ifdef FERRY_HAVE_RDMA
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "err.h"
#include "log.h"
#include "net.h"
#include "transport/rdma/rdma.h"

static bool piece_refused(const struct rdma_op *op, uint32_t i)
{
    return i < XFER_MAX_PIECES && (op->refused >> i & 1);
}

static void skip_refused(struct rdma_op *op)
{
    while (op->cur_piece < op->f->npieces && piece_refused(op, op->cur_piece)) {
        op->cur_piece++;
        op->cur_off = 0;
    }
}

static void stage_push(struct rdma_stage **head, struct rdma_stage **tail, struct rdma_stage *st)
{
    st->next = NULL;
    if (*tail)
        (*tail)->next = st;
    else
        *head = st;
    *tail = st;
}

/* Path load (pick_path's least-loaded choice): an op waiting to be carved
 * counts whole in inflight_bytes, a stage counts its bytes until it ends. */
static void staged_uncharge(struct rdma_path *path, struct rdma_op *op)
{
    atomic_fetch_sub(&path->inflight_bytes, op->f->bytes);
}

static void staged_remove(struct rdma_path *path, struct rdma_op *op)
{
    struct rdma_op *prev = NULL;
    for (struct rdma_op *o = path->staged; o; prev = o, o = o->next) {
        if (o != op)
            continue;
        if (prev)
            prev->next = o->next;
        else
            path->staged = o->next;
        if (path->staged_tail == o)
            path->staged_tail = prev;
        staged_uncharge(path, o);
        return;
    }
}

void rdma_stage_enqueue(struct rdma_path *path, struct rdma_op *op)
{
    op->next = NULL;
    op->carved = false;
    op->chunks_out = 0;
    skip_refused(op);
    if (path->staged_tail)
        path->staged_tail->next = op;
    else
        path->staged = op;
    path->staged_tail = op;
    atomic_fetch_add(&path->inflight_bytes, op->f->bytes);
    rdma_stage_carve(path);
}

/* Fills a stage from the op's cursor: up to one slot, RDMA_STAGE_ENTRIES
 * runs.  Returns true when nothing of the op is left to carve. */
static bool fill(struct rdma_path *path, struct rdma_op *op, struct rdma_stage *st)
{
    const struct xfer_frame *f = op->f;
    uint32_t room = path->bounce.slot_size, off = 0;
    while (st->n < RDMA_STAGE_ENTRIES && off < room && op->cur_piece < f->npieces) {
        /* each run 64-byte aligned in the slot: an NPU target copies aligned
         * pinned memory asynchronously, anything else through a synchronous bounce */
        off = (off + RDMA_STAGE_ALIGN - 1) & ~(uint32_t)(RDMA_STAGE_ALIGN - 1);
        if (off >= room)
            break;
        const struct xfer_piece *x = &f->pieces[op->cur_piece];
        uint64_t take = x->len - op->cur_off;
        if (take > room - off)
            take = room - off;
        st->e[st->n] = (struct rdma_stage_entry){x->remote + op->cur_off, off, (uint32_t)take};
        st->piece[st->n] = op->cur_piece;
        st->local[st->n] = (char *)x->local + op->cur_off;
        st->n++;
        off += (uint32_t)take;
        op->cur_off += take;
        if (op->cur_off == x->len) {
            op->cur_piece++;
            op->cur_off = 0;
            skip_refused(op);
        }
    }
    return op->cur_piece == f->npieces;
}

/* The bounce leg of a stage: its entries the target did not refuse, between
 * local memory and the slot.  Returns how many pieces it has. */
static uint32_t leg_setup(struct rdma_path *path, struct rdma_stage *st)
{
    const struct xfer_frame *pf = st->parent->f;
    uint64_t slot = path->bounce.addr + (uint64_t)st->slot * path->bounce.slot_size, bytes = 0;
    uint32_t k = 0;
    for (uint32_t i = 0; i < st->n; i++) {
        if (st->refused >> i & 1)
            continue;
        st->legs[k++] = (struct xfer_piece){st->local[i], slot + st->e[i].off, st->e[i].len, 0};
        bytes += st->e[i].len;
    }
    memset(&st->frame, 0, sizeof st->frame);
    st->frame.opcode = pf->opcode;
    st->frame.npieces = k;
    st->frame.pieces = st->legs;
    st->frame.bytes = bytes;
    st->frame.deadline_ns = pf->deadline_ns;
    memset(&st->op, 0, sizeof st->op);
    st->op.peer = path->peer;
    st->op.f = &st->frame;
    st->op.stage = st;
    return k;
}

void rdma_stage_carve(struct rdma_path *path)
{
    if (path->state == PATH_READY && path->staged && !path->bounce.slots) {
        rdma_path_break_locked(path, FERRY_EPROTO, "rdma: the target announced staging but gave its queue pair "
                               "no bounce");
        return;
    }
    while (path->state == PATH_READY && path->staged && path->free_slots) {
        struct rdma_op *op = path->staged;
        if (rdma_op_revoked(op)) { /* unregistered: carve no more of it */
            path->staged = op->next;
            if (!path->staged)
                path->staged_tail = NULL;
            staged_uncharge(path, op);
            op->carved = true;
            if (op->chunks_out == 0)
                rdma_path_cancel(path, op);
            else if (!op->err) {
                op->err = FERRY_ERANGE;
                op->no_retry = true;
                snprintf(op->msg, sizeof op->msg, "rdma: local memory was unregistered during the transfer");
            }
            continue;
        }
        struct rdma_stage *st = calloc(1, sizeof *st);
        if (!st) {
            rdma_path_break_locked(path, FERRY_ENOMEM, "rdma: out of memory for a staged piece");
            return;
        }
        atomic_fetch_add(&path->stages_alive, 1);
        st->slot = (uint32_t)__builtin_ctzll(path->free_slots);
        path->free_slots &= ~(1ull << st->slot);
        st->path = path;
        st->parent = op;
        op->chunks_out++;
        bool whole = fill(path, op, st);
        for (uint32_t i = 0; i < st->n; i++)
            st->bytes += st->e[i].len;
        atomic_fetch_add(&path->inflight_bytes, st->bytes);
        if (whole) {
            path->staged = op->next;
            if (!path->staged)
                path->staged_tail = NULL;
            staged_uncharge(path, op);
            op->carved = true;
        }
        if (op->f->opcode == XFER_WRITE) {
            leg_setup(path, st);
            rdma_path_fifo_add(path, &st->op);
        } else {
            stage_push(&path->stage_send, &path->stage_send_tail, st);
            rdma_path_wake(path);
        }
    }
}

void rdma_stage_end(struct rdma_stage *st, int err, bool fatal, const char *msg)
{
    struct rdma_path *path = st->path;
    struct rdma_op *op = st->parent;
    pthread_mutex_lock(&path->lock);
    if (!err) {
        for (uint32_t i = 0; i < st->n; i++)
            if ((st->refused >> i & 1) && st->piece[i] < 64)
                op->refused |= 1ull << st->piece[i];
    } else if (!op->err || (fatal && !op->no_retry)) {
        op->err = err;
        op->no_retry = fatal;
        snprintf(op->msg, sizeof op->msg, "%.159s", msg ? msg : ferry_strerror(err));
    }
    if (err && !op->carved) { /* the rest of the op would fail the same way */
        staged_remove(path, op);
        op->carved = true;
    }
    path->free_slots |= 1ull << st->slot;
    atomic_fetch_sub(&path->inflight_bytes, st->bytes);
    bool finish = --op->chunks_out == 0 && op->carved;
    rdma_stage_carve(path);
    pthread_mutex_unlock(&path->lock);
    free(st);
    atomic_fetch_sub(&path->stages_alive, 1); /* the last touch of the path */
    if (finish)
        rdma_op_finish(op);
}

void rdma_stage_leg_end(struct rdma_stage *st)
{
    struct rdma_path *path = st->path;
    if (st->op.err) {
        rdma_stage_end(st, st->op.err, st->op.no_retry, st->op.msg);
        return;
    }
    if (st->parent->f->opcode == XFER_READ) { /* the bytes are here: the slot is free again */
        rdma_stage_end(st, 0, false, NULL);
        return;
    }
    pthread_mutex_lock(&path->lock);
    bool ok = path->state == PATH_READY;
    int err = path->err ? path->err : FERRY_ECONN;
    char msg[160];
    snprintf(msg, sizeof msg, "%.159s", path->msg);
    if (ok) {
        stage_push(&path->stage_send, &path->stage_send_tail, st);
        rdma_path_wake(path);
    }
    pthread_mutex_unlock(&path->lock);
    if (!ok)
        rdma_stage_end(st, err, false, msg);
}

struct rdma_stage *rdma_stage_next_send(struct rdma_path *path)
{
    struct rdma_stage *st = path->stage_send;
    if (!st)
        return NULL;
    path->stage_send = st->next;
    if (!path->stage_send)
        path->stage_send_tail = NULL;
    st->wire_id = ++path->stage_id;
    stage_push(&path->stage_acks, &path->stage_acks_tail, st);
    return st;
}

int rdma_stage_send(struct rdma_path *path, struct rdma_stage *st)
{
    uint8_t buf[RDMA_STAGE_MSG_MAX];
    size_t len = rdma_stage_encode(st->slot, st->e, st->n, buf);
    uint16_t type = st->parent->f->opcode == XFER_WRITE ? RDMA_MSG_STAGE_WRITE : RDMA_MSG_STAGE_READ;
    struct rdma_msg_header h = {.type = type, .id = st->wire_id};
    return rdma_msg_send(path->fd, &h, buf, len, NULL, 0);
}

int rdma_stage_ack(struct rdma_path *path, const struct rdma_msg_header *h, const uint8_t *payload)
{
    struct rdma_peer *p = path->peer;
    pthread_mutex_lock(&path->lock);
    struct rdma_stage *st = path->stage_acks;
    if (st && st->wire_id == h->id) {
        path->stage_acks = st->next;
        if (!path->stage_acks)
            path->stage_acks_tail = NULL;
    }
    pthread_mutex_unlock(&path->lock);
    if (!st || st->wire_id != h->id)
        return ferry_fail(FERRY_EPROTO, "rdma: STAGE_ACK %llu from %s matches no staged piece",
                          (unsigned long long)h->id, p->name);
    if (h->status) {
        char msg[200], why[RDMA_MAX_TEXT + 1];
        snprintf(msg, sizeof msg, "rdma: %.48s could not stage: %.100s", p->name,
                 rdma_stage_ack_reason(payload, h->len, why, sizeof why));
        rdma_stage_end(st, h->status, true, msg);
        return 0;
    }
    st->refused = get_le64(payload) & (st->n >= 64 ? ~0ull : (1ull << st->n) - 1);
    if (st->refused)
        LOG_INFO("rdma: %s refused %d staged run(s) outside its registered buffers", p->name,
                 __builtin_popcountll(st->refused));
    if (st->parent->f->opcode == XFER_WRITE || leg_setup(path, st) == 0) {
        rdma_stage_end(st, 0, false, NULL);
        return 0;
    }
    pthread_mutex_lock(&path->lock);
    bool ok = path->state == PATH_READY;
    int err = path->err ? path->err : FERRY_ECONN;
    char msg[160];
    snprintf(msg, sizeof msg, "%.159s", path->msg);
    if (ok)
        rdma_path_fifo_add(path, &st->op);
    pthread_mutex_unlock(&path->lock);
    if (!ok)
        rdma_stage_end(st, err, false, msg);
    return 0;
}

void rdma_stage_drain(struct rdma_path *path, struct rdma_stage **stages, struct rdma_op **done,
                      struct rdma_op **done_tail)
{
    for (struct rdma_op *op = path->staged, *next; op; op = next) {
        next = op->next;
        op->carved = true;
        staged_uncharge(path, op);
        if (!op->err) {
            op->err = path->err;
            snprintf(op->msg, sizeof op->msg, "%.159s", path->msg);
        }
        if (op->chunks_out == 0)
            rdma_op_list_push(done, done_tail, op);
    }
    path->staged = path->staged_tail = NULL;
    struct rdma_stage *head = NULL, *tail = NULL;
    for (int l = 0; l < 2; l++) {
        for (struct rdma_stage *st = l ? path->stage_acks : path->stage_send, *next; st; st = next) {
            next = st->next;
            stage_push(&head, &tail, st);
        }
    }
    path->stage_send = path->stage_send_tail = path->stage_acks = path->stage_acks_tail = NULL;
    *stages = head;
}

bool rdma_stage_deadline_passed(struct rdma_path *path, uint64_t now)
{
    for (struct rdma_op *op = path->staged; op; op = op->next)
        if (now >= op->f->deadline_ns)
            return true;
    for (int l = 0; l < 2; l++)
        for (struct rdma_stage *st = l ? path->stage_acks : path->stage_send; st; st = st->next)
            if (now >= st->parent->f->deadline_ns)
                return true;
    return false;
}

#endif /* FERRY_HAVE_RDMA */

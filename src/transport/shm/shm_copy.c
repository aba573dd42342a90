/* SPDX-License-Identifier: Apache-2.0 */
/*
 * shm_copy.c — the shm transport's work: a FIFO of frames, SHM_WORKERS copy
 * threads and a timer thread.
 *
 * submit() only queues.  A worker takes the oldest frames (up to GROUP_MAX
 * data frames of one peer in a row); for each it announces the access in the
 * peer's shared memfd, then checks it against the peer (still alive, every
 * piece inside a registration its registry lists as live, local pieces
 * inside local registrations, held as memreg accesses), moves the pieces in
 * SHM_CHUNK steps with the same check before each step, and ends the frame
 * after clearing its announcement.  The target's unregister revokes the
 * slot, then waits for the announcements that overlap (shm_wait_accesses):
 * a copy either saw the revocation or ended before unregister returned.  Host <-> host pieces go in one
 * process_vm_writev/readv per frame.  Pieces that touch device memory use
 * the device layer's copies on the worker's own stream, batched across the
 * frames taken together and waited for once (a device copy takes a few
 * microseconds; waiting for one takes longer; a failed copy job fails the
 * frames with a copy in it, no other, and the worker's next job runs on a
 * fresh stream): with the peer's allocation
 * opened here through its IPC handle (cached per peer, buffer and local
 * device), or, between local device memory and a peer's host memory,
 * through the worker's pinned bounce.  The timer ends
 * frames that waited in the queue past their deadline.  Frames end on the
 * workers and the timer, each exactly once.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "timespec.h"
#include "net.h"
#include "transport/shm/shm.h"
#include "trace.h"

#define MAX_PIECES XFER_MAX_PIECES
#define GROUP_MAX 16             /* data frames of one peer taken together */
#define GROUP_COPIES 256         /* device copies enqueued before one wait */
#define TICK_MS 20

/* Device copies of the frames taken together, enqueued and waited for once
 * per (device, direction) and at most GROUP_COPIES: one copy job.  A job
 * that fails fails the frames with a copy in it (which of its copies were
 * done is unknown), and only those: the other jobs' frames arrived. */
struct copy_batch {
    const struct ferry_device_ops *ops;
    int dev;
    enum ferry_copy_dir dir;
    size_t n;
    struct ferry_copy copies[GROUP_COPIES];
    uint8_t owner[GROUP_COPIES]; /* the copy's frame: its index in the worker's runs */
};
_Static_assert(GROUP_MAX <= UINT8_MAX + 1, "copy_batch.owner indexes a group's frames");

struct frame_run;

struct worker {
    struct shm_transport *t;
    const struct ferry_device_ops *bounce_ops;
    char *bounce;
    struct copy_batch cb;
    struct frame_run *runs;      /* GROUP_MAX */
};

struct bounced {                 /* local device memory <-> peer host memory */
    char *local;
    uint64_t remote, len;
    const struct ferry_device_ops *ops;
    int dev;
};

/* One frame being moved. */
struct frame_run {
    struct worker *w;
    struct shm_peer *p;
    struct xfer_frame *f;
    bool write;
    uint64_t refused, moved;
    int nvm;                     /* host <-> host: one system call */
    uint64_t vm_bytes;
    struct iovec lvm[MAX_PIECES], rvm[MAX_PIECES];
    int copy_err;                /* a copy job holding a piece of it failed */
    char copy_msg[160];
    struct shm_announce *ann;    /* this access, announced in the peer's shared memfd */
    uint64_t expiry;             /* no copy step starts at or after it */
    uint32_t ntouched, nlocal;
    uint32_t touched[MAX_PIECES];            /* the peer buffers the pieces lie in */
    struct memreg_access local[MAX_PIECES];  /* the local registrations they lie in */
    size_t nbounced;
    struct bounced bounced[MAX_PIECES];
    char msg[160];
};

static int fail(struct frame_run *fr, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct frame_run *fr, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fr->msg, sizeof fr->msg, fmt, ap);
    va_end(ap);
    return code;
}

static struct shm_peer *peer_of(const struct xfer_frame *f)
{
    return (struct shm_peer *)(uintptr_t)f->wire_id;
}

/* ------------------------------------------------------------ ending frames */

/* Ends a frame that was queued for p, then lets p's close go on. */
static void frame_end(struct shm_transport *t, struct xfer_frame *f, int err, uint64_t refused, uint64_t moved,
                      const char *msg)
{
    struct shm_peer *p = peer_of(f);
    if (err == 0) {
        if (f->opcode == XFER_WRITE)
            atomic_fetch_add(&t->bytes_written, moved);
        else if (f->opcode == XFER_READ)
            atomic_fetch_add(&t->bytes_read, moved);
    }
    f->complete(f, err, refused, msg);
    pthread_mutex_lock(&t->lock);
    if (--p->queued == 0)
        pthread_cond_broadcast(&t->idle);
    pthread_mutex_unlock(&t->lock);
}

void shm_submit(void *tp, void *pp, struct xfer_frame *f)
{
    struct shm_transport *t = tp;
    struct shm_peer *p = pp;
    pthread_mutex_lock(&t->lock);
    if (t->stopping || p->closing) {
        pthread_mutex_unlock(&t->lock);
        f->complete(f, FERRY_ECANCELED, 0, "shm: the segment is being closed");
        return;
    }
    f->wire_id = (uint64_t)(uintptr_t)p; /* transport-private: the frame's peer */
    f->next = NULL;
    if (t->tail)
        t->tail->next = f;
    else
        t->head = f;
    t->tail = f;
    t->nqueued++;
    p->queued++;
    pthread_cond_signal(&t->work);
    pthread_mutex_unlock(&t->lock);
}

/* Unlinks the queued frames that match (peer p, or past deadline `now`).
 * t->lock held. */
static struct xfer_frame *unqueue(struct shm_transport *t, const struct shm_peer *p, uint64_t now)
{
    struct xfer_frame *out = NULL, **tail = &out, *prev = NULL;
    for (struct xfer_frame *f = t->head, *next; f; f = next) {
        next = f->next;
        if (p ? peer_of(f) == p : now >= f->deadline_ns) {
            if (prev)
                prev->next = next;
            else
                t->head = next;
            if (t->tail == f)
                t->tail = prev;
            t->nqueued--;
            f->next = NULL;
            *tail = f;
            tail = &f->next;
        } else {
            prev = f;
        }
    }
    return out;
}

void shm_peer_drain(struct shm_transport *t, struct shm_peer *p)
{
    pthread_mutex_lock(&t->lock);
    p->closing = true;
    struct xfer_frame *gone = unqueue(t, p, 0);
    pthread_mutex_unlock(&t->lock);
    for (struct xfer_frame *f = gone, *next; f; f = next) {
        next = f->next;
        frame_end(t, f, FERRY_ECANCELED, 0, 0, "shm: segment closed");
    }
    pthread_mutex_lock(&t->lock);
    while (p->queued)
        pthread_cond_wait(&t->idle, &t->lock);
    pthread_mutex_unlock(&t->lock);
}

static void *timer_main(void *arg)
{
    struct shm_transport *t = arg;
    pthread_mutex_lock(&t->lock);
    while (!t->stopping) {
        struct timespec until = timespec_in_ms(CLOCK_REALTIME, TICK_MS);
        pthread_cond_timedwait(&t->tick, &t->lock, &until);
        struct xfer_frame *late = t->head ? unqueue(t, NULL, now_ns()) : NULL;
        if (!late)
            continue;
        pthread_mutex_unlock(&t->lock);
        for (struct xfer_frame *f = late, *next; f; f = next) {
            next = f->next;
            frame_end(t, f, FERRY_ETIMEDOUT, 0, 0, "request timed out waiting for a shm worker");
        }
        pthread_mutex_lock(&t->lock);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

/* ------------------------------------------------------------ checks */

long shm_find_rbuf(const struct shm_peer *p, uint64_t addr, uint64_t len)
{
    if (len == 0 || addr + len < addr)
        return -1;
    size_t lo = 0, hi = p->nbufs;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (p->bufs[mid].addr <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return -1;
    const struct shm_rbuf *b = &p->bufs[lo - 1];
    return addr + len <= b->addr + b->len ? (long)(lo - 1) : -1;
}

static bool peer_gone_within(const struct shm_peer *p, int ms)
{
    struct pollfd x = {.fd = p->pidfd, .events = POLLIN};
    return p->pidfd >= 0 && poll(&x, 1, ms) > 0;
}

static bool peer_gone(const struct shm_peer *p)
{
    return peer_gone_within(p, 0);
}

/* ------------------------------------------------------------ accesses */

static _Atomic uint64_t next_ticket;

static bool owner_dead(uint64_t word)
{
    pid_t pid = (pid_t)(word & SHM_ANN_PID_MASK);
    return kill(pid, 0) != 0 && errno == ESRCH;
}

/* Claims a free announcement in the peer's shared memfd (or one a dead
 * process left) and sets its range.  The claim is the Dekker store that the
 * slot checks after it pair with (see shm.h). */
static int announce(struct frame_run *fr, uint64_t lo, uint64_t hi)
{
    struct shm_peer *p = fr->p;
    uint64_t w = (atomic_fetch_add(&next_ticket, 1) + 1) << SHM_ANN_TICKET_SHIFT |
                 ((uint64_t)getpid() & SHM_ANN_PID_MASK);
    uint32_t start = (uint32_t)(((uintptr_t)fr->w >> 6) % SHM_ANNOUNCE_SLOTS);
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t k = 0; k < SHM_ANNOUNCE_SLOTS; k++) {
            struct shm_announce *a = &p->ann[(start + k) % SHM_ANNOUNCE_SLOTS];
            uint64_t cur = atomic_load_explicit(&a->word, memory_order_relaxed);
            if ((cur == 0 || (pass == 1 && owner_dead(cur))) && atomic_compare_exchange_strong(&a->word, &cur, w)) {
                fr->expiry = now_ns() + SHM_ACCESS_MAX_NS;
                atomic_store_explicit(&a->lo, lo, memory_order_relaxed);
                atomic_store_explicit(&a->hi, hi, memory_order_relaxed);
                atomic_store_explicit(&a->expiry_ns, fr->expiry, memory_order_relaxed);
                atomic_store(&a->word, w | SHM_ANN_ACTIVE);
                fr->ann = a;
                return 0;
            }
        }
    }
    return fail(fr, FERRY_EBUSY, "shm: segment %.64s: all %u access announcements are taken", p->name,
                SHM_ANNOUNCE_SLOTS);
}

/* Ends the frame's accesses: its announcement, its local registrations. */
static void release(struct frame_run *fr)
{
    struct memreg *reg = fr->w->t->host.registry;
    for (uint32_t i = 0; i < fr->nlocal; i++)
        memreg_access_end(reg, &fr->local[i]);
    fr->nlocal = 0;
    if (!fr->ann)
        return;
    struct shm_served *sv = fr->p->served;
    atomic_store(&fr->ann->word, 0);
    fr->ann = NULL;
    atomic_fetch_add(&sv->released, 1);
    if (atomic_load(&sv->waiters))
        syscall(SYS_futex, &sv->released, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Before every copy step: may the frame still touch what it checked? */
static int access_check(struct frame_run *fr)
{
    const struct shm_peer *p = fr->p;
    if (now_ns() >= fr->expiry)
        return fail(fr, FERRY_ETIMEDOUT, "shm: segment %.64s: a copy ran past its announcement's %llu ms", p->name,
                    (unsigned long long)(SHM_ACCESS_MAX_NS / 1000000u));
    for (uint32_t i = 0; i < fr->ntouched; i++) {
        const struct shm_rbuf *b = &p->bufs[fr->touched[i]];
        if (atomic_load(&p->slots[b->slot].seq) != b->seq)
            return fail(fr, FERRY_ESTALE, "shm: segment %.64s unregistered 0x%llx+%llu", p->name,
                        (unsigned long long)b->addr, (unsigned long long)b->len);
    }
    for (uint32_t i = 0; i < fr->nlocal; i++)
        if (memreg_access_revoked(&fr->local[i]))
            return fail(fr, FERRY_ERANGE, "shm: local 0x%llx+%llu was unregistered during the copy",
                        (unsigned long long)fr->local[i].addr, (unsigned long long)fr->local[i].len);
    return 0;
}

void shm_wait_accesses(struct shm_transport *t, uint64_t addr, uint64_t len)
{
    uint64_t give_up = now_ns() + SHM_ACCESS_MAX_NS + SHM_ACCESS_GRACE_NS;
    atomic_fetch_add(&t->served->waiters, 1);
    for (;;) {
        uint32_t released = atomic_load(&t->served->released);
        unsigned busy = 0;
        pid_t who = 0;
        for (uint32_t i = 0; i < SHM_ANNOUNCE_SLOTS; i++) {
            struct shm_announce *a = &t->ann[i];
            uint64_t w = atomic_load(&a->word);
            if (!w)
                continue;
            if (w & SHM_ANN_ACTIVE) {
                uint64_t lo = atomic_load(&a->lo), hi = atomic_load(&a->hi);
                if (atomic_load(&a->word) == w && (hi <= addr || lo >= addr + len))
                    continue; /* elsewhere */
            }
            if (owner_dead(w)) {
                atomic_compare_exchange_strong(&a->word, &w, 0);
                continue;
            }
            busy++;
            who = (pid_t)(w & SHM_ANN_PID_MASK);
        }
        if (!busy)
            break;
        if (now_ns() >= give_up) {
            LOG_WARN("shm: unregister of 0x%llx+%llu stopped waiting for %u access(es) (process %d): announced "
                     "more than %llu ms ago, they may no longer copy", (unsigned long long)addr,
                     (unsigned long long)len, busy, (int)who,
                     (unsigned long long)((SHM_ACCESS_MAX_NS + SHM_ACCESS_GRACE_NS) / 1000000u));
            break;
        }
        /* woken by every release; the period re-checks the owners' liveness */
        struct timespec period = {0, 50 * 1000000L};
        syscall(SYS_futex, &t->served->released, FUTEX_WAIT, released, &period, NULL, 0);
    }
    atomic_fetch_sub(&t->served->waiters, 1);
}

/* ------------------------------------------------------------ host memory */

static void iov_skip(struct iovec **v, int *n, size_t bytes)
{
    while (bytes && *n) {
        if (bytes >= (*v)->iov_len) {
            bytes -= (*v)->iov_len;
            (*v)++;
            (*n)--;
        } else {
            (*v)->iov_base = (char *)(*v)->iov_base + bytes;
            (*v)->iov_len -= bytes;
            bytes = 0;
        }
    }
}

static int vm_error(struct frame_run *fr, int err)
{
    const struct shm_peer *p = fr->p;
    const char *call = fr->write ? "process_vm_writev" : "process_vm_readv";
    if (err == ESRCH || peer_gone(p))
        return fail(fr, FERRY_ECONN, "shm: segment %.64s: process %d is gone", p->name, (int)p->pid);
    if (err == EPERM)
        return fail(fr, FERRY_ECONN, "shm: segment %.64s: %s: no permission to access process %d", p->name, call,
                    (int)p->pid);
    int rc = access_check(fr);
    if (rc)
        return rc;
    return fail(fr, FERRY_EIO, "shm: segment %.64s: %s: %s%s", p->name, call, strerror(err),
                err == EFAULT ? " (a peer's or a local buffer is no longer mapped)" : "");
}

/* The first `max` bytes of v[0..n) into out; returns how many iovecs. */
static int iov_prefix(const struct iovec *v, int n, size_t max, struct iovec *out)
{
    int k = 0;
    for (; k < n && max; k++) {
        out[k] = v[k];
        if (out[k].iov_len > max)
            out[k].iov_len = max;
        max -= out[k].iov_len;
    }
    return k;
}

/* Moves every byte of the iovecs (modified in place), in SHM_CHUNK steps,
 * each after access_check. */
static int vm_move(struct frame_run *fr, struct iovec *l, int nl, struct iovec *r, int nr, uint64_t total)
{
    struct iovec ls[MAX_PIECES], rs[MAX_PIECES];
    for (uint64_t done = 0; done < total;) {
        int rc = access_check(fr);
        if (rc)
            return rc;
        size_t step = total - done < SHM_CHUNK ? (size_t)(total - done) : SHM_CHUNK;
        int lk = iov_prefix(l, nl, step, ls), rk = iov_prefix(r, nr, step, rs);
        ssize_t n = fr->write ? process_vm_writev(fr->p->pid, ls, (unsigned long)lk, rs, (unsigned long)rk, 0)
                              : process_vm_readv(fr->p->pid, ls, (unsigned long)lk, rs, (unsigned long)rk, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return vm_error(fr, n < 0 ? errno : EFAULT);
        done += (uint64_t)n;
        iov_skip(&l, &nl, (size_t)n);
        iov_skip(&r, &nr, (size_t)n);
    }
    return 0;
}

/* ------------------------------------------------------------ device memory */

/* Runs the batch's copy job and waits for it; a failure goes to the frames
 * with a copy in it (the worker's stream is renewed by the device layer). */
static void flush_copies(struct worker *w)
{
    struct copy_batch *cb = &w->cb;
    if (!cb->n)
        return;
    int rc = ferry_device_copy_sync(cb->ops, cb->dev, cb->dir, cb->copies, cb->n);
    for (size_t i = 0; rc && i < cb->n; i++) {
        struct frame_run *fr = &w->runs[cb->owner[i]];
        if (!fr->copy_err) {
            fr->copy_err = rc;
            snprintf(fr->copy_msg, sizeof fr->copy_msg, "shm: segment %.64s: device copy: %s", fr->p->name,
                     ferry_last_error());
        }
    }
    cb->n = 0;
}

/* Queues a copy in the worker's batch; a failure shows when the frame ends. */
static int add_copy(struct frame_run *fr, const struct ferry_device_ops *ops, int dev, enum ferry_copy_dir dir,
                    void *dst, const void *src, uint64_t len)
{
    struct copy_batch *cb = &fr->w->cb;
    if (cb->n && (cb->ops != ops || cb->dev != dev || cb->dir != dir || cb->n == GROUP_COPIES))
        flush_copies(fr->w);
    cb->ops = ops;
    cb->dev = dev;
    cb->dir = dir;
    cb->owner[cb->n] = (uint8_t)(fr - fr->w->runs);
    cb->copies[cb->n++] = (struct ferry_copy){dst, src, (size_t)len};
    return 0;
}

/* Where the peer's device buffer b appears here for device dev: its
 * allocation opened through the IPC handle, once per (peer, buffer, dev). */
static int remote_device_ptr(struct frame_run *fr, struct shm_rbuf *b, int dev, uint64_t remote, char **out)
{
    struct shm_peer *p = fr->p;
    if (p->self) { /* two engines of one process: the address is ours too */
        *out = (char *)(uintptr_t)remote;
        return 0;
    }
    if (!b->handle_len || !b->ops)
        return fail(fr, FERRY_ENOTSUP, "shm: segment %.64s: device buffer 0x%llx has no IPC handle; route it "
                    "through another transport", p->name, (unsigned long long)b->addr);
    pthread_mutex_lock(&p->lock);
    struct shm_mapping *m = b->maps;
    while (m && m->dev != dev)
        m = m->next;
    if (!m && (m = calloc(1, sizeof *m)) != NULL) {
        m->dev = dev;
        m->err = b->ops->ipc_open(dev, b->handle, b->handle_len, &m->ptr);
        if (m->err) {
            m->ptr = NULL;
            snprintf(m->msg, sizeof m->msg, "shm: segment %.64s: opening buffer 0x%llx: %.60s", p->name,
                     (unsigned long long)b->addr, ferry_last_error());
        }
        m->next = b->maps;
        b->maps = m;
    }
    int rc = !m ? fail(fr, FERRY_ENOMEM, "shm: mapping")
             : m->ptr ? 0
             /* an exiting process closes its fds before its pidfd says so */
             : peer_gone_within(p, 200) ? fail(fr, FERRY_ECONN, "shm: segment %.64s: process %d is gone", p->name,
                                               (int)p->pid)
                            : fail(fr, m->err, "%s", m->msg);
    if (!rc)
        *out = (char *)m->ptr + (remote - b->addr);
    pthread_mutex_unlock(&p->lock);
    return rc;
}

/* A piece whose remote side is device memory. */
static int device_piece(struct frame_run *fr, const struct xfer_piece *x, struct shm_rbuf *b,
                        const struct ferry_device_ops *lops, int ldev)
{
    if (!b->ops || (lops && lops != b->ops))
        return fail(fr, FERRY_ENOTSUP, "shm: segment %.64s: no copy between local %s memory and its %s memory",
                    fr->p->name, lops ? lops->kind : "host", b->ops ? b->ops->kind : "device");
    /* the copy runs on the local device, or on the peer's device index
     * when that exists here (else device 0) for local host memory */
    int dev = lops ? ldev : b->dev < b->ops->device_count() ? b->dev : 0;
    char *r = NULL;
    int rc = remote_device_ptr(fr, b, dev, x->remote, &r);
    if (rc)
        return rc;
    enum ferry_copy_dir dir = lops ? FERRY_COPY_D2D : fr->write ? FERRY_COPY_H2D : FERRY_COPY_D2H;
    return fr->write ? add_copy(fr, b->ops, dev, dir, r, x->local, x->len)
                     : add_copy(fr, b->ops, dev, dir, x->local, r, x->len);
}

static int bounce_ensure(struct worker *w, const struct ferry_device_ops *ops)
{
    if (w->bounce && w->bounce_ops == ops)
        return 0;
    if (w->bounce)
        w->bounce_ops->host_free(w->bounce);
    w->bounce = NULL;
    int rc = ops->host_alloc(SHM_BOUNCE_SIZE, (void **)&w->bounce);
    w->bounce_ops = rc ? NULL : ops;
    return rc;
}

static int bounce_copy_failed(struct frame_run *fr, int rc)
{
    return fail(fr, rc, "shm: segment %.64s: device copy (bounce): %s", fr->p->name, ferry_last_error());
}

/* Local device memory <-> peer host memory: in bounce-sized rounds, a
 * batched device copy and one system call each. */
static int run_bounced(struct frame_run *fr)
{
    struct iovec lv[MAX_PIECES], rv[MAX_PIECES];
    struct ferry_copy c[MAX_PIECES];
    size_t k = 0;
    uint64_t at = 0; /* bytes of bounced[k] already moved */
    while (k < fr->nbounced) {
        const struct bounced *first = &fr->bounced[k];
        int rc = bounce_ensure(fr->w, first->ops);
        if (rc)
            return fail(fr, rc, "shm: bounce buffer: %s", ferry_last_error());
        size_t used = 0;
        int n = 0;
        while (k < fr->nbounced && used < SHM_BOUNCE_SIZE && n < MAX_PIECES &&
               fr->bounced[k].ops == first->ops && fr->bounced[k].dev == first->dev) {
            const struct bounced *b = &fr->bounced[k];
            size_t take = b->len - at < SHM_BOUNCE_SIZE - used ? (size_t)(b->len - at) : SHM_BOUNCE_SIZE - used;
            char *buf = fr->w->bounce + used;
            c[n] = fr->write ? (struct ferry_copy){buf, b->local + at, take}
                             : (struct ferry_copy){b->local + at, buf, take};
            lv[n] = (struct iovec){buf, take};
            rv[n] = (struct iovec){(void *)(uintptr_t)(b->remote + at), take};
            n++;
            used += take;
            at += take;
            if (at == b->len) {
                k++;
                at = 0;
            }
        }
        enum ferry_copy_dir dir = fr->write ? FERRY_COPY_D2H : FERRY_COPY_H2D;
        if (fr->write && (rc = ferry_device_copy_sync(first->ops, first->dev, dir, c, (size_t)n)) != 0)
            return bounce_copy_failed(fr, rc);
        if ((rc = vm_move(fr, lv, n, rv, n, used)) != 0)
            return rc;
        if (!fr->write && (rc = ferry_device_copy_sync(first->ops, first->dev, dir, c, (size_t)n)) != 0)
            return bounce_copy_failed(fr, rc);
    }
    return 0;
}

/* ------------------------------------------------------------ frames */

static int sort_piece(struct frame_run *fr, uint32_t i)
{
    const struct xfer_piece *x = &fr->f->pieces[i];
    struct shm_transport *t = fr->w->t;
    struct shm_peer *p = fr->p;
    long bi = shm_find_rbuf(p, x->remote, x->len);
    if (bi < 0) {
        fr->refused |= 1ull << i;
        atomic_fetch_add(&t->refused, 1);
        snprintf(fr->msg, sizeof fr->msg, "shm: 0x%llx+%llu is not registered by process %d (engine %016llx) "
                 "that segment %.64s names", (unsigned long long)x->remote, (unsigned long long)x->len,
                 (int)p->pid, (unsigned long long)p->token, p->name);
        return 0;
    }
    struct shm_rbuf *b = &p->bufs[bi];
    if (atomic_load(&p->slots[b->slot].seq) != b->seq) /* after announce(): the Dekker load */
        return fail(fr, FERRY_ESTALE, "shm: segment %.64s unregistered 0x%llx+%llu since it was opened", p->name,
                    (unsigned long long)b->addr, (unsigned long long)b->len);
    uint32_t k = 0;
    while (k < fr->ntouched && fr->touched[k] != (uint32_t)bi)
        k++;
    if (k == fr->ntouched)
        fr->touched[fr->ntouched++] = (uint32_t)bi;
    struct memreg_region lr;
    if (memreg_access_begin(t->host.registry, &fr->local[fr->nlocal], (uint64_t)(uintptr_t)x->local, x->len, 0,
                            &lr, NULL, NULL) != 0)
        return fail(fr, FERRY_ENOTREG, "shm: local %p+%llu is no longer registered", x->local,
                    (unsigned long long)x->len);
    fr->nlocal++;
    int ldev = -1;
    const struct ferry_device_ops *lops = lr.device_index >= 0 ? ferry_device_of_location(lr.location, &ldev) : NULL;
    if (lr.device_index >= 0 && !lops)
        return fail(fr, FERRY_ENODEV, "shm: local %s memory has no device backend", lr.location);
    fr->moved += x->len;
    if (b->device)
        return device_piece(fr, x, b, lops, ldev);
    if (lops) {
        fr->bounced[fr->nbounced++] = (struct bounced){x->local, x->remote, x->len, lops, ldev};
        return 0;
    }
    fr->lvm[fr->nvm] = (struct iovec){x->local, (size_t)x->len};
    fr->rvm[fr->nvm++] = (struct iovec){(void *)(uintptr_t)x->remote, (size_t)x->len};
    fr->vm_bytes += x->len;
    return 0;
}

/* Checks the frame and moves its pieces, but for the device copies, which
 * wait in the worker's batch. */
static int run_data(struct frame_run *fr)
{
    struct shm_peer *p = fr->p;
    if (fr->f->npieces > MAX_PIECES)
        return fail(fr, FERRY_EINVAL, "shm: a frame of %u pieces (at most %d)", fr->f->npieces, MAX_PIECES);
    if (peer_gone(p))
        return fail(fr, FERRY_ECONN, "shm: segment %.64s: process %d is gone", p->name, (int)p->pid);
    uint64_t lo = UINT64_MAX, hi = 0;
    for (uint32_t i = 0; i < fr->f->npieces; i++) {
        const struct xfer_piece *x = &fr->f->pieces[i];
        lo = x->remote < lo ? x->remote : lo;
        hi = x->remote + x->len > hi ? x->remote + x->len : hi;
    }
    int rc = fr->f->npieces ? announce(fr, lo, hi) : 0;
    if (rc)
        return rc;
    atomic_fetch_add(&fr->w->t->frames_sent, 1);
    for (uint32_t i = 0; !rc && i < fr->f->npieces; i++)
        rc = sort_piece(fr, i);
    if (!rc && fr->nvm)
        rc = vm_move(fr, fr->lvm, fr->nvm, fr->rvm, fr->nvm, fr->vm_bytes);
    if (!rc && fr->nbounced)
        rc = run_bounced(fr);
    return rc;
}

/* After the batched copies: their result, then the counters. */
static int finish_data(struct frame_run *fr)
{
    struct shm_peer *p = fr->p;
    int rc = 0;
    if (fr->copy_err)
        rc = fail(fr, fr->copy_err, "%s", fr->copy_msg);
    if (!rc && fr->moved) {
        atomic_fetch_add(&p->served->bytes, fr->moved);
        atomic_fetch_add(&p->served->frames, 1);
    }
    return rc;
}

/* Runs frames taken together (all data frames of one peer, or one
 * notification) and ends each. */
static void run_group(struct worker *w, struct xfer_frame **fs, size_t n)
{
    int rc[GROUP_MAX];
    TRACE(TR_SHM_GROUP, n);
    w->cb.n = 0;
    for (size_t i = 0; i < n; i++) {
        struct frame_run *fr = &w->runs[i];
        memset(fr, 0, sizeof *fr);
        fr->w = w;
        fr->f = fs[i];
        fr->p = peer_of(fs[i]);
        fr->write = fs[i]->opcode == XFER_WRITE;
        if (now_ns() >= fs[i]->deadline_ns)
            rc[i] = fail(fr, FERRY_ETIMEDOUT, "request timed out waiting for a shm worker");
        else if (fs[i]->opcode == XFER_NOTIFY)
            rc[i] = shm_notify_send(fr->p, fs[i], fr->msg, sizeof fr->msg);
        else
            rc[i] = run_data(fr);
    }
    flush_copies(w);
    TRACE(TR_SHM_COPIED, n);
    for (size_t i = 0; i < n; i++) {
        struct frame_run *fr = &w->runs[i];
        if (!rc[i] && fs[i]->opcode != XFER_NOTIFY)
            rc[i] = finish_data(fr);
        release(fr);
        frame_end(w->t, fs[i], rc[i], rc[i] ? 0 : fr->refused, rc[i] ? 0 : fr->moved, fr->msg);
    }
}

/* Unlinks the oldest frame and the data frames of the same peer right
 * behind it: the worker's fair share of the queue, at most GROUP_MAX (a
 * few frames are better run side by side on several workers).  t->lock
 * held, queue not empty. */
static size_t take_group(struct shm_transport *t, struct xfer_frame **fs)
{
    size_t share = (t->nqueued + SHM_WORKERS - 1) / SHM_WORKERS, n = 0;
    size_t max = share < GROUP_MAX ? share : GROUP_MAX;
    do {
        struct xfer_frame *f = t->head;
        fs[n++] = f;
        t->head = f->next;
        if (!t->head)
            t->tail = NULL;
        t->nqueued--;
    } while (n < max && t->head && fs[0]->opcode != XFER_NOTIFY && t->head->opcode != XFER_NOTIFY &&
             t->head->wire_id == fs[0]->wire_id);
    return n;
}

static void *worker_main(void *arg)
{
    struct worker *w = calloc(1, sizeof *w);
    struct frame_run *runs = calloc(GROUP_MAX, sizeof *runs);
    struct shm_transport *t = arg;
    if (!w || !runs) { /* the other workers carry on */
        LOG_ERROR("shm: a worker thread is out of memory");
        free(w);
        free(runs);
        return NULL;
    }
    w->t = t;
    w->runs = runs;
    struct xfer_frame *fs[GROUP_MAX];
    for (;;) {
        pthread_mutex_lock(&t->lock);
        while (!t->head && !t->stopping)
            pthread_cond_wait(&t->work, &t->lock);
        size_t n = t->head ? take_group(t, fs) : 0;
        pthread_mutex_unlock(&t->lock);
        if (!n)
            break;
        run_group(w, fs, n);
    }
    if (w->bounce)
        w->bounce_ops->host_free(w->bounce);
    free(runs);
    free(w);
    return NULL;
}

/* ------------------------------------------------------------ start / stop */

int shm_workers_start(struct shm_transport *t)
{
    for (unsigned i = 0; i < SHM_WORKERS; i++) {
        if (pthread_create(&t->workers[i], NULL, worker_main, t) != 0)
            return ferry_fail(FERRY_EIO, "shm: cannot start worker thread %u", i);
        t->nworkers++;
    }
    if (pthread_create(&t->timer, NULL, timer_main, t) != 0)
        return ferry_fail(FERRY_EIO, "shm: cannot start the timer thread");
    t->timer_started = true;
    return 0;
}

void shm_workers_stop(struct shm_transport *t)
{
    pthread_mutex_lock(&t->lock);
    t->stopping = true;
    pthread_cond_broadcast(&t->work);
    pthread_cond_broadcast(&t->tick);
    pthread_mutex_unlock(&t->lock);
    for (unsigned i = 0; i < t->nworkers; i++) /* they run what is still queued */
        pthread_join(t->workers[i], NULL);
    if (t->timer_started)
        pthread_join(t->timer, NULL);
    t->nworkers = 0;
    t->timer_started = false;
}

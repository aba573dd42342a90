/* SPDX-License-Identifier: Apache-2.0 */
/*
 * shm_frame.c — one frame of the shm transport, on the thread that runs it
 * (a worker, or a submitting thread filling a job; see shm_copy.c): its
 * announcement in the peer's shared memfd, the checks (still alive, every
 * piece inside a registration the peer's registry lists as live, local
 * pieces inside local registrations, held as memreg accesses), and its
 * moves.  Host <-> host pieces go in one process_vm_writev/readv per frame,
 * in SHM_CHUNK steps with the checks before each step.  Pieces that touch
 * device memory become device copies in the group's copy_batch: with the
 * peer's allocation opened here through its IPC handle (shm_map.c: per
 * peer, buffer and local device, closed once the peer unregisters it and
 * no copy uses it; the group remembers the last one), or, between
 * local device memory and a peer's host memory, through the worker's pinned
 * bounce.  The target's unregister revokes the slot, then waits for the
 * announcements that overlap (shm_wait_accesses): a copy either saw the
 * revocation or ended before unregister returned.
 *
 * Per frame, not per piece where it can be: one announcement; one local
 * access for all pieces when they lie in one registration (one registry
 * lookup, one location parse); the peer buffer of the previous piece tried
 * before a search.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
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
#include "net.h"
#include "transport/shm/shm.h"

#define MAX_PIECES XFER_MAX_PIECES

int shm_fail(struct frame_run *fr, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fr->msg, sizeof fr->msg, fmt, ap);
    va_end(ap);
    return code;
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

bool shm_peer_gone_within(const struct shm_peer *p, int ms)
{
    struct pollfd x = {.fd = p->pidfd, .events = POLLIN};
    return p->pidfd >= 0 && poll(&x, 1, ms) > 0;
}

bool shm_peer_gone(const struct shm_peer *p)
{
    return shm_peer_gone_within(p, 0);
}

/* ------------------------------------------------------------ accesses */

static _Atomic uint64_t next_ticket;

/* This process's pid for announcements, asked of the kernel once rather
 * than per frame (getpid is a system call: about 1 us in a VM); forgotten in
 * a fork's child, which asks again. */
static atomic_int own_pid;
static pthread_once_t own_pid_once = PTHREAD_ONCE_INIT;

static void own_pid_forget(void)
{
    atomic_store_explicit(&own_pid, 0, memory_order_relaxed);
}

static void own_pid_watch(void)
{
    (void)pthread_atfork(NULL, NULL, own_pid_forget);
}

static uint64_t self_pid(void)
{
    pthread_once(&own_pid_once, own_pid_watch);
    int pid = atomic_load_explicit(&own_pid, memory_order_relaxed);
    if (!pid) {
        pid = (int)getpid();
        atomic_store_explicit(&own_pid, pid, memory_order_relaxed);
    }
    return (uint64_t)pid;
}

static bool owner_dead(uint64_t word)
{
    pid_t pid = (pid_t)(word & SHM_ANN_PID_MASK);
    return kill(pid, 0) != 0 && errno == ESRCH;
}

static uint64_t announce_word(void)
{
    return (atomic_fetch_add(&next_ticket, 1) + 1) << SHM_ANN_TICKET_SHIFT | (self_pid() & SHM_ANN_PID_MASK);
}

/* One pass over p's announcements for a free one (pass 1: or one a dead
 * process left), from the one g hashes to: claimed and its range set, 0
 * (*ann, *expiry); none, -1. */
static int announce_claim(struct shm_peer *p, const struct shm_group *g, uint64_t w, uint64_t lo, uint64_t hi,
                          struct shm_announce **ann, uint64_t *expiry)
{
    uint32_t start = (uint32_t)(((uintptr_t)g >> 6) % SHM_ANNOUNCE_SLOTS);
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t k = 0; k < SHM_ANNOUNCE_SLOTS; k++) {
            struct shm_announce *a = &p->ann[(start + k) % SHM_ANNOUNCE_SLOTS];
            uint64_t cur = atomic_load_explicit(&a->word, memory_order_relaxed);
            if ((cur == 0 || (pass == 1 && owner_dead(cur))) && atomic_compare_exchange_strong(&a->word, &cur, w)) {
                *expiry = now_ns() + SHM_ACCESS_MAX_NS;
                atomic_store_explicit(&a->lo, lo, memory_order_relaxed);
                atomic_store_explicit(&a->hi, hi, memory_order_relaxed);
                atomic_store_explicit(&a->expiry_ns, *expiry, memory_order_relaxed);
                atomic_store(&a->word, w | SHM_ANN_ACTIVE);
                *ann = a;
                return 0;
            }
        }
    }
    return -1;
}

/* Clears a claimed announcement: an unregister waiting for it goes on. */
static void announce_release(struct shm_peer *p, struct shm_announce *a)
{
    struct shm_served *sv = p->served;
    atomic_store(&a->word, 0);
    atomic_fetch_add(&sv->released, 1);
    if (atomic_load(&sv->waiters))
        syscall(SYS_futex, &sv->released, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Claims a free announcement in the peer's shared memfd (or one a dead
 * process left) and sets its range.  The claim is the Dekker store that the
 * slot checks after it pair with (see shm.h).  All are shared by every
 * initiator of the peer: when all are taken a worker waits for one to clear
 * (a release wakes it, as it wakes an unregister) until the frame's
 * deadline; a job hands the frame to the workers instead of waiting on the
 * submitting thread. */
static int announce(struct frame_run *fr, uint64_t lo, uint64_t hi)
{
    struct shm_peer *p = fr->p;
    struct shm_served *sv = p->served;
    uint64_t w = announce_word();
    if (announce_claim(p, fr->g, w, lo, hi, &fr->ann, &fr->expiry) == 0)
        return 0;
    if (fr->g->job)
        return SHM_NOT_HERE;
    uint64_t since = now_ns();
    int rc = -1;
    atomic_fetch_add(&sv->waiters, 1);
    for (;;) {
        uint32_t released = atomic_load(&sv->released);
        if ((rc = announce_claim(p, fr->g, w, lo, hi, &fr->ann, &fr->expiry)) == 0)
            break;
        uint64_t now = now_ns();
        if (now >= fr->f->deadline_ns)
            break;
        /* woken by every release; the period re-checks the owners' liveness */
        uint64_t left = fr->f->deadline_ns - now, nap = left < 50000000u ? left : 50000000u;
        struct timespec period = {0, (long)nap};
        syscall(SYS_futex, &sv->released, FUTEX_WAIT, released, &period, NULL, 0);
    }
    atomic_fetch_sub(&sv->waiters, 1);
    if (!rc)
        return 0;
    return shm_fail(fr, FERRY_ETIMEDOUT, "shm: segment %.64s: all %u access announcements stayed taken for %llu ms, "
                    "until the request's deadline", p->name, SHM_ANNOUNCE_SLOTS,
                    (unsigned long long)((now_ns() - since) / 1000000u));
}

void shm_frame_release(struct frame_run *fr)
{
    struct memreg *reg = fr->g->t->host.registry;
    shm_frame_unmap(fr);
    for (uint32_t i = 0; i < fr->nlocal; i++)
        memreg_access_end(reg, &fr->local[i]);
    fr->nlocal = 0;
    if (!fr->ann)
        return;
    announce_release(fr->p, fr->ann);
    fr->ann = NULL;
}

/* Before every copy step: may the frame still touch what it checked? */
static int access_check(struct frame_run *fr)
{
    const struct shm_peer *p = fr->p;
    if (now_ns() >= fr->expiry)
        return shm_fail(fr, FERRY_ETIMEDOUT, "shm: segment %.64s: a copy ran past its announcement's %llu ms", p->name,
                    (unsigned long long)(SHM_ACCESS_MAX_NS / 1000000u));
    for (uint32_t i = 0; i < fr->ntouched; i++) {
        const struct shm_rbuf *b = &p->bufs[fr->touched[i]];
        if (atomic_load(&p->slots[b->slot].seq) != atomic_load(&b->seq))
            return shm_fail(fr, FERRY_ESTALE, "shm: segment %.64s unregistered 0x%llx+%llu", p->name,
                        (unsigned long long)b->addr, (unsigned long long)b->len);
    }
    for (uint32_t i = 0; i < fr->nlocal; i++)
        if (memreg_access_revoked(&fr->local[i]))
            return shm_fail(fr, FERRY_ERANGE, "shm: local 0x%llx+%llu was unregistered during the copy",
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
    if (err == ESRCH || shm_peer_gone(p))
        return shm_fail(fr, FERRY_ECONN, "shm: segment %.64s: process %d is gone", p->name, (int)p->pid);
    if (err == EPERM)
        return shm_fail(fr, FERRY_ECONN, "shm: segment %.64s: %s: no permission to access process %d", p->name, call,
                    (int)p->pid);
    int rc = access_check(fr);
    if (rc)
        return rc;
    return shm_fail(fr, FERRY_EIO, "shm: segment %.64s: %s: %s%s", p->name, call, strerror(err),
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

void shm_copies_failed(struct shm_group *g, int rc)
{
    struct copy_batch *cb = &g->cb;
    for (size_t i = 0; i < cb->n; i++) {
        struct frame_run *fr = &g->runs[cb->owner[i]];
        if (!fr->copy_err) {
            fr->copy_err = rc;
            snprintf(fr->copy_msg, sizeof fr->copy_msg, "shm: segment %.64s: device copy: %s", fr->p->name,
                     ferry_last_error());
        }
    }
}

/* Drops the queued copies of frames whose announcement has expired, and
 * fails those frames FERRY_ETIMEDOUT: the target's unregister stops waiting
 * for an announcement SHM_ACCESS_GRACE_NS after its expiry, so no copy may
 * start after it (access_check holds host copy steps to the same rule). */
void shm_copies_drop_expired(struct shm_group *g)
{
    struct copy_batch *cb = &g->cb;
    if (!cb->n)
        return;
    uint64_t now = now_ns();
    size_t kept = 0;
    for (size_t i = 0; i < cb->n; i++) {
        struct frame_run *fr = &g->runs[cb->owner[i]];
        if (now < fr->expiry) {
            cb->copies[kept] = cb->copies[i];
            cb->owner[kept++] = cb->owner[i];
        } else if (!fr->copy_err) {
            fr->copy_err = FERRY_ETIMEDOUT;
            snprintf(fr->copy_msg, sizeof fr->copy_msg,
                     "shm: segment %.64s: a device copy was not started within its announcement's %llu ms",
                     fr->p->name, (unsigned long long)(SHM_ACCESS_MAX_NS / 1000000u));
        }
    }
    cb->n = kept;
}

void shm_copies_wait(struct shm_group *g)
{
    struct copy_batch *cb = &g->cb;
    shm_copies_drop_expired(g);
    if (!cb->n)
        return;
    int rc = ferry_device_copy_sync(cb->ops, cb->dev, cb->dir, cb->copies, cb->n);
    if (rc) {
        shm_copies_failed(g, rc);
        (void)ferry_device_copy_lost(); /* no bounce: the answer is not left for run_bounced's next failure */
    }
    cb->n = 0;
}

/* Queues a copy in the group's batch; a failure shows when the frame ends.
 * A worker runs a full batch (or one of another device or direction) first;
 * a job cannot: its copies are enqueued at once, after its last frame. */
static int add_copy(struct frame_run *fr, const struct ferry_device_ops *ops, int dev, enum ferry_copy_dir dir,
                    void *dst, const void *src, uint64_t len)
{
    struct copy_batch *cb = &fr->g->cb;
    if (cb->n && (cb->ops != ops || cb->dev != dev || cb->dir != dir || cb->n == SHM_GROUP_COPIES)) {
        if (fr->g->job)
            return SHM_JOB_FULL;
        shm_copies_wait(fr->g);
    }
    cb->ops = ops;
    cb->dev = dev;
    cb->dir = dir;
    cb->owner[cb->n] = (uint8_t)(fr - fr->g->runs);
    cb->copies[cb->n++] = (struct ferry_copy){dst, src, (size_t)len};
    return 0;
}

/* A piece whose remote side is device memory. */
static int device_piece(struct frame_run *fr, const struct xfer_piece *x, struct shm_rbuf *b,
                        const struct ferry_device_ops *lops, int ldev)
{
    if (!b->ops || (lops && lops != b->ops))
        return shm_fail(fr, FERRY_ENOTSUP, "shm: segment %.64s: no copy between local %s memory and its %s memory",
                    fr->p->name, lops ? lops->kind : "host", b->ops ? b->ops->kind : "device");
    if (fr->g->job && !lops)
        return SHM_NOT_HERE; /* host memory: the copy would not be asynchronous */
    /* the copy runs on the local device, or on the peer's device index
     * when that exists here (else device 0) for local host memory */
    int dev = lops ? ldev : b->dev < b->ops->device_count() ? b->dev : 0;
    char *r = NULL;
    int rc = shm_remote_device_ptr(fr, b, dev, x->remote, &r);
    if (rc)
        return rc;
    enum ferry_copy_dir dir = lops ? FERRY_COPY_D2D : fr->write ? FERRY_COPY_H2D : FERRY_COPY_D2H;
    return fr->write ? add_copy(fr, b->ops, dev, dir, r, x->local, x->len)
                     : add_copy(fr, b->ops, dev, dir, x->local, r, x->len);
}

static int bounce_ensure(struct shm_group *g, const struct ferry_device_ops *ops)
{
    if (g->bounce && g->bounce_ops == ops)
        return 0;
    if (g->bounce)
        g->bounce_ops->host_free(g->bounce);
    g->bounce = NULL;
    int rc = ops->host_alloc(SHM_BOUNCE_SIZE, (void **)&g->bounce);
    g->bounce_ops = rc ? NULL : ops;
    return rc;
}

/* A copy through the bounce failed: where it was abandoned on a hung device
 * (ferry_device_copy_lost) it may still read or write the bounce, which is
 * then left to the process's end, neither used again nor freed (the next
 * round takes a new one).  The frame is out of it: its copies are synchronous. */
static int bounce_copy_failed(struct frame_run *fr, int rc)
{
    rc = shm_fail(fr, rc, "shm: segment %.64s: device copy (bounce): %s", fr->p->name, ferry_last_error());
    struct shm_group *g = fr->g;
    if (ferry_device_copy_lost()) {
        LOG_ERROR("shm: %s: a device copy on the worker's bounce %p was abandoned on a hung device; the bounce "
                  "is left out of use", g->bounce_ops->kind, (void *)g->bounce);
        g->bounce = NULL;
        g->bounce_ops = NULL;
    }
    return rc;
}

/* Local device memory <-> peer host memory: in bounce-sized rounds, a
 * batched device copy and one system call each. */
static int run_bounced(struct frame_run *fr, const struct frame_moves *mv)
{
    struct iovec lv[MAX_PIECES], rv[MAX_PIECES];
    struct ferry_copy c[MAX_PIECES];
    size_t k = 0;
    uint64_t at = 0; /* bytes of bounced[k] already moved */
    while (k < mv->nbounced) {
        const struct bounced *first = &mv->bounced[k];
        int rc = bounce_ensure(fr->g, first->ops);
        if (rc)
            return shm_fail(fr, rc, "shm: bounce buffer: %s", ferry_last_error());
        size_t used = 0;
        int n = 0;
        while (k < mv->nbounced && used < SHM_BOUNCE_SIZE && n < MAX_PIECES &&
               mv->bounced[k].ops == first->ops && mv->bounced[k].dev == first->dev) {
            const struct bounced *b = &mv->bounced[k];
            size_t take = b->len - at < SHM_BOUNCE_SIZE - used ? (size_t)(b->len - at) : SHM_BOUNCE_SIZE - used;
            char *buf = fr->g->bounce + used;
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

/* The peer buffer of a piece: the previous piece's, else a search. */
static long piece_rbuf(const struct shm_peer *p, long hint, uint64_t addr, uint64_t len)
{
    if (hint >= 0) {
        const struct shm_rbuf *b = &p->bufs[hint];
        if (len && addr >= b->addr && addr + len > addr && addr + len <= b->addr + b->len)
            return hint;
    }
    return shm_find_rbuf(p, addr, len);
}

bool shm_frame_for_job(struct shm_transport *t, const struct shm_peer *p, const struct xfer_frame *f)
{
    if (!f->npieces || f->npieces > MAX_PIECES)
        return false;
    long bi = -1;
    for (uint32_t i = 0; i < f->npieces; i++) {
        const struct xfer_piece *x = &f->pieces[i];
        if ((bi = piece_rbuf(p, bi, x->remote, x->len)) < 0 || !p->bufs[bi].device)
            return false;
    }
    /* the registration the last frame's local memory lay in, remembered
     * without a hold: an answer, not a check (a submit's frames mostly lie
     * in one registration; the registry's lock once per submit, not per
     * frame) */
    static _Thread_local struct {
        const struct memreg *reg;
        uint64_t lo, hi;
        bool device;
    } last;
    const struct xfer_piece *x = &f->pieces[0];
    uint64_t l = (uint64_t)(uintptr_t)x->local;
    if (last.reg == t->host.registry && l >= last.lo && l + x->len > l && l + x->len <= last.hi)
        return last.device;
    struct memreg_region lr;
    if (memreg_find(t->host.registry, l, x->len, 0, &lr) != 0)
        return false;
    last.reg = t->host.registry;
    last.lo = lr.addr;
    last.hi = lr.addr + lr.len;
    last.device = lr.device_index >= 0;
    return last.device;
}

/* The local memory's backend (NULL: host memory) from its registration. */
static int local_backend(struct frame_run *fr, const struct memreg_region *lr, const struct ferry_device_ops **lops,
                         int *ldev)
{
    *ldev = -1;
    *lops = lr->device_index >= 0 ? ferry_device_of_location(lr->location, ldev) : NULL;
    if (lr->device_index >= 0 && !*lops)
        return shm_fail(fr, FERRY_ENODEV, "shm: local %s memory has no device backend", lr->location);
    return 0;
}

/* b's slot changed since the peer was opened: was b's host memory
 * registered again, in the same slot, over at least b's range (the
 * unregister-then-register of a buffer an application reuses)?  Then b
 * follows the new registration and the frame goes on, as tcp's live check
 * would let it.  Device memory is followed only at b's very address, with
 * the new IPC handle, and b's mappings of the old one are retired
 * (shm_map.c): they may be of another allocation.  Safe against a
 * frame still copying under the old seq: the target's unregister waited for
 * its announcement (or for its expiry, after which it copies nothing), so
 * no frame of the old registration runs once a new one is live. */
static bool rbuf_registered_again(struct shm_peer *p, struct shm_rbuf *b)
{
    if (b->device)
        return shm_rbuf_follow_device(p, b);
    if (b->handle_len)
        return false;
    struct shm_rbuf now;
    char location[sizeof p->slots[0].location];
    uint8_t handle[FERRY_IPC_HANDLE_MAX];
    uint64_t was = atomic_load(&b->seq);
    if (!shm_read_slot(p, b->slot, &now, location, handle) || now.device || now.handle_len ||
        now.addr > b->addr || now.addr + now.len < b->addr + b->len)
        return false;
    uint64_t seq = atomic_load_explicit(&now.seq, memory_order_relaxed);
    /* another thread may have followed it first: either way b holds seq */
    if (!atomic_compare_exchange_strong(&b->seq, &was, seq) && was != seq)
        return false;
    LOG_DEBUG("shm: segment %.64s: 0x%llx+%llu registered again; following it", p->name,
              (unsigned long long)b->addr, (unsigned long long)b->len);
    return true;
}

static int sort_piece(struct frame_run *fr, uint32_t i, long *hint, struct frame_moves *mv)
{
    const struct xfer_piece *x = &fr->f->pieces[i];
    struct shm_transport *t = fr->g->t;
    struct shm_peer *p = fr->p;
    long bi = piece_rbuf(p, *hint, x->remote, x->len);
    if (bi < 0) {
        fr->refused |= 1ull << i;
        snprintf(fr->msg, sizeof fr->msg, "shm: 0x%llx+%llu is not registered by process %d (engine %016llx) "
                 "that segment %.64s names", (unsigned long long)x->remote, (unsigned long long)x->len,
                 (int)p->pid, (unsigned long long)p->token, p->name);
        return 0;
    }
    struct shm_rbuf *b = &p->bufs[bi];
    if (bi != *hint) { /* a buffer not seen yet in this frame (pieces mostly share one) */
        if (atomic_load(&p->slots[b->slot].seq) != atomic_load(&b->seq) && /* after announce(): the Dekker load */
            !rbuf_registered_again(p, b))
            return shm_fail(fr, FERRY_ESTALE, "shm: segment %.64s unregistered 0x%llx+%llu since it was opened",
                            p->name, (unsigned long long)b->addr, (unsigned long long)b->len);
        uint32_t k = 0;
        while (k < fr->ntouched && fr->touched[k] != (uint32_t)bi)
            k++;
        if (k == fr->ntouched)
            fr->touched[fr->ntouched++] = (uint32_t)bi;
        *hint = bi;
    }
    if (fr->g->job && !b->device)
        return SHM_NOT_HERE;
    const struct ferry_device_ops *lops = fr->lops;
    int ldev = fr->ldev;
    if (!fr->whole) {
        struct memreg_region lr;
        if (memreg_access_begin(t->host.registry, &fr->local[fr->nlocal], (uint64_t)(uintptr_t)x->local, x->len,
                                0, &lr, NULL, NULL) != 0)
            return shm_fail(fr, FERRY_ENOTREG, "shm: local %p+%llu is no longer registered", x->local,
                            (unsigned long long)x->len);
        fr->nlocal++;
        int rc = local_backend(fr, &lr, &lops, &ldev);
        if (rc)
            return rc;
    }
    fr->moved += x->len;
    if (b->device)
        return device_piece(fr, x, b, lops, ldev);
    if (lops) {
        mv->bounced[mv->nbounced++] = (struct bounced){x->local, x->remote, x->len, lops, ldev};
        return 0;
    }
    mv->lvm[mv->nvm] = (struct iovec){x->local, (size_t)x->len};
    mv->rvm[mv->nvm++] = (struct iovec){(void *)(uintptr_t)x->remote, (size_t)x->len};
    mv->vm_bytes += x->len;
    return 0;
}

/* One local access for every piece when they lie in one registration (the
 * span from the lowest to the highest byte lies in it then); else each
 * piece gets its own in sort_piece. */
static int local_whole(struct frame_run *fr, uint64_t lo, uint64_t hi)
{
    struct memreg_region lr;
    if (memreg_access_begin(fr->g->t->host.registry, &fr->local[0], lo, hi - lo, 0, &lr, NULL, NULL) != 0)
        return 0;
    fr->nlocal = 1;
    fr->whole = true;
    return local_backend(fr, &lr, &fr->lops, &fr->ldev);
}

/* The span of fs[0..n)'s remote and local bytes. */
static void frames_span(struct xfer_frame *const *fs, size_t n, uint64_t *lo, uint64_t *hi, uint64_t *llo,
                        uint64_t *lhi)
{
    *lo = *llo = UINT64_MAX;
    *hi = *lhi = 0;
    for (size_t k = 0; k < n; k++)
        for (uint32_t i = 0; i < fs[k]->npieces && fs[k]->npieces <= MAX_PIECES; i++) {
            const struct xfer_piece *x = &fs[k]->pieces[i];
            uint64_t l = (uint64_t)(uintptr_t)x->local;
            *lo = x->remote < *lo ? x->remote : *lo;
            *hi = x->remote + x->len > *hi ? x->remote + x->len : *hi;
            *llo = l < *llo ? l : *llo;
            *lhi = l + x->len > *lhi ? l + x->len : *lhi;
        }
}

void shm_job_begin(struct shm_group *g, struct xfer_frame *const *fs, size_t n)
{
    uint64_t lo, hi, llo, lhi;
    frames_span(fs, n, &lo, &hi, &llo, &lhi);
    if (hi <= lo || lhi <= llo)
        return;
    if (announce_claim(g->p, g, announce_word(), lo, hi, &g->ann, &g->expiry) != 0)
        g->ann = NULL; /* each frame tries for one, and goes to the workers without */
    g->ann_lo = lo;
    g->ann_hi = hi;
    struct memreg_region lr;
    if (memreg_access_begin(g->t->host.registry, &g->local, llo, lhi - llo, 0, &lr, NULL, NULL) != 0)
        return; /* not one registration: each frame checks its own */
    g->lops = lr.device_index >= 0 ? ferry_device_of_location(lr.location, &g->ldev) : NULL;
    if (!g->lops) { /* host memory (not for a job) or no backend: each frame says so */
        memreg_access_end(g->t->host.registry, &g->local);
        return;
    }
    g->lwhole = true;
}

void shm_job_release(struct shm_group *g)
{
    if (g->lwhole)
        memreg_access_end(g->t->host.registry, &g->local);
    g->lwhole = false;
    if (g->ann)
        announce_release(g->p, g->ann);
    g->ann = NULL;
}

int shm_frame_run(struct frame_run *fr)
{
    struct shm_peer *p = fr->p;
    const struct xfer_frame *f = fr->f;
    if (f->npieces > MAX_PIECES)
        return shm_fail(fr, FERRY_EINVAL, "shm: a frame of %u pieces (at most %d)", f->npieces, MAX_PIECES);
    if (fr->g->gone)
        return shm_fail(fr, FERRY_ECONN, "shm: segment %.64s: process %d is gone", p->name, (int)p->pid);
    uint64_t lo = UINT64_MAX, hi = 0, llo = UINT64_MAX, lhi = 0;
    for (uint32_t i = 0; i < f->npieces; i++) {
        const struct xfer_piece *x = &f->pieces[i];
        uint64_t l = (uint64_t)(uintptr_t)x->local;
        lo = x->remote < lo ? x->remote : lo;
        hi = x->remote + x->len > hi ? x->remote + x->len : hi;
        llo = l < llo ? l : llo;
        lhi = l + x->len > lhi ? l + x->len : lhi;
    }
    if (!f->npieces)
        return 0;
    struct shm_group *g = fr->g;
    int rc = 0;
    if (g->ann && lo >= g->ann_lo && hi <= g->ann_hi)
        fr->expiry = g->expiry; /* the job's announcement covers it */
    else
        rc = announce(fr, lo, hi);
    if (!rc && lhi > llo && g->lwhole && llo >= g->local.addr && lhi - g->local.addr <= g->local.len) {
        fr->whole = true; /* the job's local access holds it */
        fr->lops = g->lops;
        fr->ldev = g->ldev;
    } else if (!rc && lhi > llo) {
        rc = local_whole(fr, llo, lhi);
    }
    struct frame_moves none, *mv = fr->g->moves ? fr->g->moves : &none;
    mv->nvm = 0;
    mv->vm_bytes = 0;
    mv->nbounced = 0;
    long hint = -1;
    for (uint32_t i = 0; !rc && i < f->npieces; i++)
        rc = sort_piece(fr, i, &hint, mv);
    if (rc == SHM_NOT_HERE || rc == SHM_JOB_FULL)
        return rc;
    atomic_fetch_add(&fr->g->t->frames_sent, 1);
    if (!rc && mv->nvm)
        rc = vm_move(fr, mv->lvm, mv->nvm, mv->rvm, mv->nvm, mv->vm_bytes);
    if (!rc && mv->nbounced)
        rc = run_bounced(fr, mv);
    return rc;
}

int shm_frame_finish(struct frame_run *fr)
{
    int rc = 0;
    if (fr->copy_err)
        rc = shm_fail(fr, fr->copy_err, "%s", fr->copy_msg);
    if (!rc && fr->refused)
        atomic_fetch_add(&fr->g->t->refused, (uint64_t)__builtin_popcountll(fr->refused));
    return rc;
}

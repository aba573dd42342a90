/* SPDX-License-Identifier: Apache-2.0 */
/*
 * shm_notify.c — notifications between shm peers: a SOCK_SEQPACKET unix
 * socket per engine, in the abstract namespace under a name made of the
 * engine's pid and id (so it needs no file and no cleanup).
 *
 * Target side: one service thread accepts senders of our uid (SO_PEERCRED;
 * FERRY_SHM_ALLOW_UIDS adds others); with a key, a sender must authenticate
 * first (common/auth.c, one message at a time); then, for every message
 * {u16 name length, sender's segment name, payload}, hands it to the engine
 * (deliver_notify) and answers one byte.  It never blocks on a sender
 * (non-blocking sockets, acknowledgements owed per sender, a deadline for
 * taking them), keeps at most the engine's connection caps
 * (FERRY_MAX_CONNECTIONS, FERRY_MAX_CONNECTIONS_PER_PEER per process) and
 * closes a sender idle for FERRY_IDLE_TIMEOUT_MS.  Initiator side: one connection
 * per peer, opened on the first notification (a connect bounded by the
 * frame's deadline), retired at half the idle timeout and opened again
 * once if the target closed it meanwhile, used by one worker at a time;
 * a notification frame ends when the target's answer arrives, i.e. after the
 * target queued it (its data frames had ended before: they are copies that
 * finished in its memory).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "acceptor.h"
#include "auth.h"
#include "bytes.h"
#include "err.h"
#include "log.h"
#include "net.h"
#include "transport/shm/shm.h"

#define SERVICE_TICK_MS 100
#define ACK_DEADLINE_MS 2000
#define MSG_MAX (2 + SHM_NOTIFY_MAX_NAME + SHM_NOTIFY_MAX)

void shm_notify_name(pid_t pid, uint64_t token, char *out, size_t cap)
{
    snprintf(out, cap, "ferry-shm.%d.%016llx", (int)pid, (unsigned long long)token);
}

static socklen_t abstract_addr(struct sockaddr_un *a, pid_t pid, uint64_t token)
{
    char name[64];
    shm_notify_name(pid, token, name, sizeof name);
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    size_t n = strlen(name);
    memcpy(a->sun_path + 1, name, n); /* sun_path[0] = '\0': the abstract namespace */
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

/* ------------------------------------------------------------ target side */

/* Where a sender's connection stands: authentication runs as messages
 * arrive, so the one service thread never waits on a single sender. */
enum peer_stage { PEER_NEW, PEER_PROOF, PEER_READY };

/* One connected sender.  The service never blocks on it: its socket is
 * non-blocking, and while an acknowledgement cannot be sent the service
 * stops reading from it; one that stays so past ACK_DEADLINE_MS is dropped. */
struct sender {
    int fd;
    unsigned acks_owed;
    uint64_t stalled_since;       /* now_ns() when acks_owed became nonzero */
    uint64_t last_ns;             /* now_ns() at its last message (or its accept) */
    pid_t pid;
    enum peer_stage stage;
    struct auth_state auth;
};

/* Sends a small answer without ever blocking the service thread. */
static int answer(int fd, const void *msg, size_t len)
{
    return send(fd, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)len ? 0 : -1;
}

/* One authentication step (HELLO or PROOF).  0 to go on, -1 to drop. */
static int auth_step(struct shm_transport *t, struct sender *s, const uint8_t *buf, size_t n)
{
    if (s->stage == PEER_NEW) {
        uint8_t challenge[AUTH_CHALLENGE_SIZE];
        int rc = auth_make_challenge(t->host.auth, AUTH_SHM, buf, n, &s->auth, challenge);
        char why[256];
        snprintf(why, sizeof why, "%s", ferry_last_error());
        if ((rc == 0 || rc == FERRY_EPERM) && answer(s->fd, challenge, sizeof challenge) != 0)
            return -1;
        if (rc) {
            LOG_WARN("shm: refused a notification peer: %s", why);
            return -1;
        }
        s->stage = PEER_PROOF;
        return 0;
    }
    uint8_t result[AUTH_RESULT_SIZE];
    int rc = auth_check_proof(t->host.auth, &s->auth, buf, n, result);
    answer(s->fd, result, sizeof result);
    if (rc) {
        LOG_WARN("shm: a notification peer failed authentication: %s", ferry_last_error());
        return -1;
    }
    s->stage = PEER_READY;
    return 0;
}

/* Is the process at the other end of fd of our uid, or one the allow-list
 * names?  SO_PEERCRED: the kernel's record of who connected. */
static bool sender_allowed(struct shm_transport *t, int fd, pid_t *pid)
{
    struct ucred c;
    socklen_t n = sizeof c;
    static atomic_uint refused;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &n) != 0)
        return false;
    *pid = c.pid;
    if (c.uid == geteuid())
        return true;
    for (size_t i = 0; i < t->notify.nallow; i++)
        if (c.uid == t->notify.allow[i])
            return true;
    unsigned k = atomic_fetch_add(&refused, 1) + 1;
    if ((k & (k - 1)) == 0) /* 1, 2, 4, 8 ...: a flood of attempts is no flood of lines */
        LOG_WARN("shm: refused notification sender pid %d uid %u: not uid %u nor in FERRY_SHM_ALLOW_UIDS (%u "
                 "refused so far)", (int)c.pid, (unsigned)c.uid, (unsigned)geteuid(), k);
    return false;
}

/* Sends what acknowledgements it can.  0, or -1 to drop the sender. */
static int send_acks(struct sender *s)
{
    uint8_t ack = 0;
    while (s->acks_owed) {
        ssize_t n = send(s->fd, &ack, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n == 1) {
            s->acks_owed--;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!s->stalled_since)
                s->stalled_since = now_ns();
            return 0;
        }
        return -1;
    }
    s->stalled_since = 0;
    return 0;
}

/* Reads one message from a sender and delivers it.  0, or -1 to drop it. */
static int serve_one(struct shm_transport *t, struct sender *s, uint8_t *buf)
{
    ssize_t n = recv(s->fd, buf, MSG_MAX, MSG_TRUNC | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    if (n <= 0)
        return -1;
    bool hello = n == AUTH_HELLO_SIZE && auth_is_hello(buf);
    if ((hello && s->stage == PEER_NEW) || s->stage == PEER_PROOF)
        return auth_step(t, s, buf, (size_t)n);
    if (s->stage == PEER_NEW && auth_enabled(t->host.auth)) {
        uint8_t refused = 1; /* the initiator reports FERRY_EPERM */
        answer(s->fd, &refused, 1);
        LOG_WARN("shm: refused a notification from a peer that did not authenticate (FERRY_AUTH_KEY is set)");
        return -1;
    }
    s->stage = PEER_READY;
    s->last_ns = now_ns();
    size_t name_len = n >= 2 ? get_le16(buf) : 0;
    /* strict: the sending side writes a name of at most SHM_NOTIFY_MAX_NAME
     * and a payload of at most SHM_NOTIFY_MAX (what ferry_batch_set_notify
     * takes); anything longer is not ours to cut short silently */
    if (n > MSG_MAX || n < 2 || name_len > SHM_NOTIFY_MAX_NAME || 2 + name_len > (size_t)n ||
        (size_t)n - 2 - name_len > SHM_NOTIFY_MAX) {
        LOG_WARN("shm: dropping notification sender pid %d: malformed message of %zd bytes (name %zu, "
                 "payload at most %u)", (int)s->pid, n, name_len, SHM_NOTIFY_MAX);
        return -1;
    }
    /* the name is the sender's bytes: handed on as tcp and rdma hand theirs,
     * escaped, so no control character reaches the application's logs */
    char from[SHM_NOTIFY_MAX_NAME + 1]; /* as ferry_notification.from: longer text is cut */
    log_sanitize((const char *)buf + 2, name_len, from, sizeof from);
    /* same host, our uid (or an allowed one): one origin, as the sender's pid is its own to change */
    t->host.deliver_notify(t->host.engine, from, "local", buf + 2 + name_len, (size_t)n - 2 - name_len);
    s->acks_owed++;
    return send_acks(s);
}

/* Within the caps of the engine's listeners (FERRY_MAX_CONNECTIONS in
 * total, FERRY_MAX_CONNECTIONS_PER_PEER per sending process)? */
static bool sender_fits(struct shm_transport *t, const struct sender *ss, size_t n, pid_t pid)
{
    static atomic_uint refused;
    size_t same = 0;
    for (size_t i = 0; i < n; i++)
        same += ss[i].pid == pid;
    unsigned total = acceptor_max_total(&t->host.limits), per = t->host.limits.max_per_peer;
    if (n < total && (!per || same < per))
        return true;
    unsigned k = atomic_fetch_add(&refused, 1) + 1;
    if ((k & (k - 1)) == 0)
        LOG_WARN("shm: refused notification sender pid %d: over the cap of %u in total / %u per process "
                 "(FERRY_MAX_CONNECTIONS, FERRY_MAX_CONNECTIONS_PER_PEER; %u refused so far)", (int)pid, total, per, k);
    return false;
}

/* Accepts what is pending.  Returns false when out of file descriptors: the
 * caller then leaves the listening socket alone for a tick (no busy loop). */
static bool accept_senders(struct shm_transport *t, struct sender **ss, size_t *n, size_t *cap)
{
    for (;;) {
        int fd = accept4(t->notify.listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
            return !(errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM);
        pid_t pid = 0;
        if (!sender_allowed(t, fd, &pid) || !sender_fits(t, *ss, *n, pid)) {
            close(fd);
            continue;
        }
        if (*n == *cap) {
            size_t c = *cap ? 2 * *cap : 8;
            struct sender *more = realloc(*ss, c * sizeof *more);
            if (!more) {
                close(fd);
                continue;
            }
            *ss = more;
            *cap = c;
        }
        (*ss)[(*n)++] = (struct sender){.fd = fd, .pid = pid, .stage = PEER_NEW, .last_ns = now_ns()};
    }
}

static void *service_main(void *arg)
{
    struct shm_transport *t = arg;
    struct sender *ss = NULL;
    struct pollfd *fds = NULL;
    size_t n = 0, cap = 0, fcap = 0;
    uint8_t *buf = malloc(MSG_MAX);
    bool accepting = true;
    const uint64_t idle_ns = (uint64_t)t->host.cfg->idle_timeout_ms * 1000000u;
    if (!buf) {
        LOG_ERROR("shm: notification service: out of memory");
        return NULL;
    }
    while (!atomic_load(&t->notify.stop)) {
        if (fcap < n + 1) {
            struct pollfd *more = realloc(fds, (n + 1) * sizeof *fds);
            if (!more) {
                LOG_ERROR("shm: notification service: out of memory");
                break;
            }
            fds = more;
            fcap = n + 1;
        }
        fds[0] = (struct pollfd){.fd = accepting ? t->notify.listen_fd : -1, .events = POLLIN};
        accepting = true;
        for (size_t i = 0; i < n; i++)
            fds[i + 1] = (struct pollfd){.fd = ss[i].fd, .events = ss[i].acks_owed ? POLLOUT : POLLIN};
        if (poll(fds, n + 1, SERVICE_TICK_MS) < 0)
            continue;
        uint64_t now = now_ns();
        for (size_t i = n; i-- > 0;) {
            struct sender *s = &ss[i];
            short ev = fds[i + 1].revents;
            int rc = 0;
            if (s->acks_owed && ev)
                rc = send_acks(s);
            else if (ev & POLLIN)
                rc = serve_one(t, s, buf);
            else if (ev & (POLLERR | POLLHUP | POLLNVAL))
                rc = -1;
            if (!rc && s->acks_owed && now - s->stalled_since > ACK_DEADLINE_MS * 1000000ull) {
                LOG_WARN("shm: dropping notification sender pid %d: it has not taken %u acknowledgement(s) in %d "
                         "ms", (int)s->pid, s->acks_owed, ACK_DEADLINE_MS);
                rc = -1;
            }
            /* idle past FERRY_IDLE_TIMEOUT_MS: closed, as the tcp listener's
             * are (the initiator retires its side at half of it) */
            if (!rc && !s->acks_owed && idle_ns && now > s->last_ns && now - s->last_ns > idle_ns) {
                LOG_DEBUG("shm: closing notification sender pid %d: idle", (int)s->pid);
                rc = -1;
            }
            if (rc) {
                close(s->fd);
                *s = ss[--n];
            }
        }
        if (fds[0].revents & POLLIN)
            accepting = accept_senders(t, &ss, &n, &cap);
    }
    for (size_t i = 0; i < n; i++)
        close(ss[i].fd);
    free(ss);
    free(fds);
    free(buf);
    return NULL;
}

/* FERRY_SHM_ALLOW_UIDS: uids besides our own that may send notifications. */
static int read_allow_list(struct shm_transport *t)
{
    const char *v = getenv("FERRY_SHM_ALLOW_UIDS");
    t->notify.nallow = 0;
    for (const char *p = v; p && *p;) {
        char *end;
        errno = 0;
        unsigned long uid = strtoul(p, &end, 10);
        if (end == p || errno || uid > 0xfffffffeul || (*end && (*end != ',' || !end[1])) ||
            t->notify.nallow == SHM_NOTIFY_MAX_ALLOW)
            return ferry_fail(FERRY_EINVAL, "FERRY_SHM_ALLOW_UIDS=\"%.64s\": expected up to %d uids separated by "
                              "commas, bad at \"%.16s\"", v, SHM_NOTIFY_MAX_ALLOW, p);
        t->notify.allow[t->notify.nallow++] = (uid_t)uid;
        p = *end ? end + 1 : end;
    }
    return 0;
}

int shm_notify_start(struct shm_transport *t)
{
    int rc = read_allow_list(t);
    if (rc)
        return rc;
    struct sockaddr_un a;
    socklen_t len = abstract_addr(&a, getpid(), t->host.engine_id);
    t->notify.listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (t->notify.listen_fd < 0 || bind(t->notify.listen_fd, (struct sockaddr *)&a, len) != 0 ||
        listen(t->notify.listen_fd, 64) != 0)
        return ferry_fail(FERRY_EIO, "shm: notification socket @%s: %s", a.sun_path + 1, strerror(errno));
    if (pthread_create(&t->notify.thread, NULL, service_main, t) != 0)
        return ferry_fail(FERRY_EIO, "shm: cannot start the notification thread");
    t->notify.started = true;
    return 0;
}

void shm_notify_stop(struct shm_transport *t)
{
    atomic_store(&t->notify.stop, true);
    if (t->notify.started)
        pthread_join(t->notify.thread, NULL);
    t->notify.started = false;
    if (t->notify.listen_fd >= 0)
        close(t->notify.listen_fd);
    t->notify.listen_fd = -1;
}

/* ------------------------------------------------------------ initiator side */

void shm_notify_close(struct shm_peer *p)
{
    if (p->notify_fd >= 0)
        close(p->notify_fd);
    p->notify_fd = -1;
}

/* Connects p->notify_fd by the frame's deadline.  A unix connect to a
 * listener whose backlog is full (the target stopped, or not accepting)
 * would block until it accepts: non-blocking, it answers EAGAIN at once,
 * and is tried again every millisecond until the deadline. */
static int notify_connect(struct shm_peer *p, const struct xfer_frame *f, char *msg, size_t cap)
{
    struct sockaddr_un a;
    socklen_t len = abstract_addr(&a, p->pid, p->token);
    p->notify_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (p->notify_fd < 0) {
        snprintf(msg, cap, "shm: segment %.64s: notification socket: %s", p->name, strerror(errno));
        return FERRY_ECONN;
    }
    while (connect(p->notify_fd, (struct sockaddr *)&a, len) != 0) {
        if (errno != EAGAIN && errno != EINTR) {
            snprintf(msg, cap, "shm: segment %.64s: notification socket: %s", p->name, strerror(errno));
            return FERRY_ECONN;
        }
        if (now_ns() >= f->deadline_ns) {
            snprintf(msg, cap, "shm: segment %.64s: its notification socket accepted no connection before the "
                     "request's deadline (the process stopped or not accepting)", p->name);
            return FERRY_ETIMEDOUT;
        }
        struct timespec nap = {0, 1000000};
        nanosleep(&nap, NULL);
    }
    int fl = fcntl(p->notify_fd, F_GETFL);
    if (fl < 0 || fcntl(p->notify_fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        snprintf(msg, cap, "shm: segment %.64s: notification socket: %s", p->name, strerror(errno));
        return FERRY_ECONN;
    }
    return 0;
}

static int send_locked(struct shm_peer *p, const struct xfer_frame *f, char *msg, size_t cap)
{
    /* the target closes a connection idle for FERRY_IDLE_TIMEOUT_MS:
     * retire ours at half of it, so a message never races that close */
    uint64_t idle_ns = (uint64_t)p->t->host.cfg->idle_timeout_ms * 1000000u;
    if (p->notify_fd >= 0 && idle_ns && now_ns() - p->notify_last_ns >= idle_ns / 2)
        shm_notify_close(p);
    bool reused = p->notify_fd >= 0;
again:
    if (p->notify_fd < 0) {
        int rc = notify_connect(p, f, msg, cap);
        if (rc)
            return rc;
        if (auth_enabled(p->t->host.auth)) {
            int rc = auth_client(p->notify_fd, p->t->host.auth, AUTH_SHM, p->name, f->deadline_ns, NULL);
            if (rc) {
                snprintf(msg, cap, "shm: %s", ferry_last_error());
                return rc;
            }
        }
    }
    uint8_t buf[MSG_MAX];
    const char *from = p->t->host.segment_name;
    size_t name_len = strnlen(from, SHM_NOTIFY_MAX_NAME);
    size_t len = f->notify_len < SHM_NOTIFY_MAX ? f->notify_len : SHM_NOTIFY_MAX;
    put_le16(buf, (uint16_t)name_len);
    memcpy(buf + 2, from, name_len);
    if (len)
        memcpy(buf + 2 + name_len, f->notify_msg, len);
    p->notify_last_ns = now_ns();
    if (send(p->notify_fd, buf, 2 + name_len + len, MSG_NOSIGNAL) != (ssize_t)(2 + name_len + len)) {
        if (reused && (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN)) {
            shm_notify_close(p); /* the target closed it meanwhile (idle): once more on a new one */
            reused = false;
            goto again;
        }
        snprintf(msg, cap, "shm: segment %.64s: sending a notification: %s", p->name, strerror(errno));
        return FERRY_ECONN;
    }
    for (;;) {
        uint64_t now = now_ns();
        if (now >= f->deadline_ns) {
            snprintf(msg, cap, "shm: segment %.64s did not acknowledge a notification in time", p->name);
            return FERRY_ETIMEDOUT;
        }
        struct pollfd x = {.fd = p->notify_fd, .events = POLLIN};
        int n = poll(&x, 1, (int)((f->deadline_ns - now) / 1000000u) + 1);
        if (n < 0 && errno == EINTR)
            continue;
        uint8_t ack = 0;
        ssize_t got = n > 0 ? recv(p->notify_fd, &ack, 1, 0) : 0;
        if (got == 1 && ack != 0) {
            snprintf(msg, cap, "shm: segment %.64s refused the notification: it requires authentication "
                     "(set the same FERRY_AUTH_KEY on both)", p->name);
            return FERRY_EPERM;
        }
        if (got == 1)
            return 0;
        if (n != 0) {
            snprintf(msg, cap, "shm: segment %.64s closed its notification socket", p->name);
            return FERRY_ECONN;
        }
    }
}

int shm_notify_send(struct shm_peer *p, const struct xfer_frame *f, char *msg, size_t cap)
{
    pthread_mutex_lock(&p->notify_lock);
    int rc = send_locked(p, f, msg, cap);
    if (rc) /* a late answer must not be taken for the next message's */
        shm_notify_close(p);
    pthread_mutex_unlock(&p->notify_lock);
    return rc;
}

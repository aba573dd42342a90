/*
 * shm_notify.c — notifications between shm peers: a SOCK_SEQPACKET unix
 * socket per engine, in the abstract namespace under a name made of the
 * engine's pid and id (so it needs no file and no cleanup).
 *
 * Target side: one service thread accepts peers; with a key, a peer must
 * authenticate first (common/auth.c, one message at a time so no peer can
 * hold the thread); then, for every message
 * {u16 name length, sender's segment name, payload}, hands it to the engine
 * (deliver_notify) and answers one byte.  Initiator side: one connection
 * per peer, opened on the first notification, used by one worker at a time;
 * a notification frame ends when the target's answer arrives, i.e. after the
 * target queued it (its data frames had ended before: they are copies that
 * finished in its memory).
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "auth.h"
#include "bytes.h"
#include "err.h"
#include "log.h"
#include "net.h"
#include "transport/shm.h"

#define SERVICE_TICK_MS 100
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

/* Where a peer's connection stands: authentication runs as messages
 * arrive, so the one service thread never waits on a single peer. */
enum peer_stage { PEER_NEW, PEER_PROOF, PEER_READY };

struct peer_state {
    enum peer_stage stage;
    struct auth_state auth;
};

/* Sends a small answer without ever blocking the service thread. */
static int answer(int fd, const void *msg, size_t len)
{
    return send(fd, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)len ? 0 : -1;
}

/* One authentication step (HELLO or PROOF).  0 to go on, -1 to drop. */
static int auth_step(struct shm_transport *t, int fd, struct peer_state *ps, const uint8_t *buf, size_t n)
{
    if (ps->stage == PEER_NEW) {
        uint8_t challenge[AUTH_CHALLENGE_SIZE];
        int rc = auth_make_challenge(t->host.auth, AUTH_SHM, buf, n, &ps->auth, challenge);
        char why[256];
        snprintf(why, sizeof why, "%s", ferry_last_error());
        if ((rc == 0 || rc == FERRY_EPERM) && answer(fd, challenge, sizeof challenge) != 0)
            return -1;
        if (rc) {
            LOG_WARN("shm: refused a notification peer: %s", why);
            return -1;
        }
        ps->stage = PEER_PROOF;
        return 0;
    }
    uint8_t result[AUTH_RESULT_SIZE];
    int rc = auth_check_proof(t->host.auth, &ps->auth, buf, n, result);
    answer(fd, result, sizeof result);
    if (rc) {
        LOG_WARN("shm: a notification peer failed authentication: %s", ferry_last_error());
        return -1;
    }
    ps->stage = PEER_READY;
    return 0;
}

/* Reads one message from a peer and delivers it.  0, or -1 to drop the peer. */
static int serve_one(struct shm_transport *t, int fd, uint8_t *buf, struct peer_state *ps)
{
    ssize_t n = recv(fd, buf, MSG_MAX, MSG_TRUNC);
    if (n <= 0)
        return -1;
    bool hello = n == AUTH_HELLO_SIZE && auth_is_hello(buf);
    if ((hello && ps->stage == PEER_NEW) || ps->stage == PEER_PROOF)
        return auth_step(t, fd, ps, buf, (size_t)n);
    if (ps->stage == PEER_NEW && auth_enabled(t->host.auth)) {
        uint8_t refused = 1; /* the initiator reports FERRY_EPERM */
        answer(fd, &refused, 1);
        LOG_WARN("shm: refused a notification from a peer that did not authenticate (FERRY_AUTH_KEY is set)");
        return -1;
    }
    ps->stage = PEER_READY;
    size_t name_len = n >= 2 ? get_le16(buf) : 0;
    if (n > MSG_MAX || n < 2 || name_len > SHM_NOTIFY_MAX_NAME || 2 + name_len > (size_t)n) {
        LOG_WARN("shm: dropping a notification peer: malformed message of %zd bytes", n);
        return -1;
    }
    char from[SHM_NOTIFY_MAX_NAME + 1];
    memcpy(from, buf + 2, name_len);
    from[name_len] = '\0';
    t->host.deliver_notify(t->host.engine, from, buf + 2 + name_len, (size_t)n - 2 - name_len);
    uint8_t ack = 0;
    return send(fd, &ack, 1, MSG_NOSIGNAL) == 1 ? 0 : -1;
}

static void *service_main(void *arg)
{
    struct shm_transport *t = arg;
    struct pollfd *fds = calloc(1, sizeof *fds);
    struct peer_state *ps = calloc(1, sizeof *ps);   /* ps[i] goes with fds[i] */
    uint8_t *buf = malloc(MSG_MAX);
    size_t n = 1;
    if (!fds || !ps || !buf) {
        LOG_ERROR("shm: notification service: out of memory");
        free(fds);
        free(ps);
        free(buf);
        return NULL;
    }
    fds[0] = (struct pollfd){.fd = t->notify.listen_fd, .events = POLLIN};
    while (!atomic_load(&t->notify.stop)) {
        if (poll(fds, n, SERVICE_TICK_MS) <= 0)
            continue;
        for (size_t i = n; i-- > 1;) {
            if (!fds[i].revents || serve_one(t, fds[i].fd, buf, &ps[i]) == 0)
                continue;
            close(fds[i].fd);
            fds[i] = fds[--n];
            ps[i] = ps[n];
        }
        if (fds[0].revents & POLLIN) {
            int fd = accept4(t->notify.listen_fd, NULL, NULL, SOCK_CLOEXEC);
            struct pollfd *more = fd >= 0 ? realloc(fds, (n + 1) * sizeof *fds) : NULL;
            if (more)
                fds = more;
            struct peer_state *more_ps = more ? realloc(ps, (n + 1) * sizeof *ps) : NULL;
            if (more_ps) {
                ps = more_ps;
                ps[n] = (struct peer_state){.stage = PEER_NEW};
                fds[n++] = (struct pollfd){.fd = fd, .events = POLLIN};
            } else if (fd >= 0) {
                close(fd);
            }
        }
    }
    for (size_t i = 1; i < n; i++)
        close(fds[i].fd);
    free(fds);
    free(ps);
    free(buf);
    return NULL;
}

int shm_notify_start(struct shm_transport *t)
{
    struct sockaddr_un a;
    socklen_t len = abstract_addr(&a, getpid(), t->host.engine_id);
    t->notify.listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
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

static int send_locked(struct shm_peer *p, const struct xfer_frame *f, char *msg, size_t cap)
{
    if (p->notify_fd < 0) {
        struct sockaddr_un a;
        socklen_t len = abstract_addr(&a, p->pid, p->token);
        p->notify_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (p->notify_fd < 0 || connect(p->notify_fd, (struct sockaddr *)&a, len) != 0) {
            snprintf(msg, cap, "shm: segment %.64s: notification socket: %s", p->name, strerror(errno));
            return FERRY_ECONN;
        }
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
    if (send(p->notify_fd, buf, 2 + name_len + len, MSG_NOSIGNAL) != (ssize_t)(2 + name_len + len)) {
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

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * net.c — socket helpers (see net.h): IPv4 and IPv6, names written
 * host:port, [v6addr]:port, or a bare IPv6 address (no port).  Stateless;
 * any thread may call.
 */
#include "net.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "timespec.h"

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Is s[0..n) an IPv6 address (with an optional %scope)? */
static bool is_ipv6(const char *s, size_t n)
{
    char buf[INET6_ADDRSTRLEN + 1];
    struct in6_addr a;
    const char *scope = memchr(s, '%', n);
    size_t m = scope ? (size_t)(scope - s) : n;
    if (m == 0 || m >= sizeof buf)
        return false;
    if (scope) { /* an interface name or number: [A-Za-z0-9._-], as net_host_text_ok takes it */
        if (n - m - 1 == 0)
            return false;
        for (size_t i = m + 1; i < n; i++)
            if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
                return false;
    }
    memcpy(buf, s, m);
    buf[m] = '\0';
    return inet_pton(AF_INET6, buf, &a) == 1;
}

static bool all_digits(const char *s)
{
    return *s && strspn(s, "0123456789") == strlen(s);
}

static int parse_port(const char *text, const char *shown, int *port)
{
    char *end;
    long p = strtol(text, &end, 10);
    if (end == text || *end || p < 0 || p > 65535 || !(*text >= '0' && *text <= '9'))
        return ferry_fail(FERRY_EINVAL, "bad port in \"%s\"", shown);
    *port = (int)p;
    return 0;
}

int net_split_hostport(const char *name, char *host, size_t hostlen, int *port)
{
    if (!name || !*name)
        return ferry_fail(FERRY_EINVAL, "empty host name");
    *port = 0;
    /* names reach details and logs escaped: a segment name may come from a
     * peer (a notification's sender, a bootstrap server's answer) */
    char shown[160];
    log_sanitize(name, strlen(name), shown, sizeof shown);
    const char *h = name, *tail; /* tail: "" or ":port" */
    size_t hl;
    const char *colon = strrchr(name, ':'), *scope = strchr(name, '%');
    if (name[0] == '[') { /* [v6] or [v6]:port, as the reference writes them */
        const char *close = strchr(name, ']');
        if (!close || !is_ipv6(name + 1, (size_t)(close - name - 1)))
            return ferry_fail(FERRY_EINVAL, "\"%s\": brackets hold an IPv6 address ([addr] or [addr]:port)", shown);
        h = name + 1;
        hl = (size_t)(close - h);
        tail = close + 1;
        if (*tail && *tail != ':')
            return ferry_fail(FERRY_EINVAL, "\"%s\": only \":port\" may follow \"]\"", shown);
    } else if (colon && memchr(name, ':', (size_t)(colon - name))) { /* two colons or more: IPv6 */
        bool addr_port = is_ipv6(name, (size_t)(colon - name)) && all_digits(colon + 1);
        bool whole = is_ipv6(name, strlen(name)) && !(scope && colon > scope);
        if (addr_port && whole) {
            char addr[160]; /* the address part: its %scope is the caller's text */
            log_sanitize(name, (size_t)(colon - name), addr, sizeof addr);
            return ferry_fail(FERRY_EINVAL, "\"%s\" is ambiguous: an IPv6 address with a port is written "
                              "[%s]:%s, the address alone [%s]", shown, addr, colon + 1, shown);
        }
        if (!addr_port && !whole)
            return ferry_fail(FERRY_EINVAL, "\"%s\" is neither host:port nor an IPv6 address (with a port: "
                              "[addr]:port)", shown);
        /* an IPv6 address alone, as the reference takes it; or one followed by
         * a port that no address can end with ("::1:15000": a group has at
         * most 4 hex digits; "fe80::1%eth0:7": a scope has no colon), which
         * the reference reads as host and port (parseHostNameWithPort) and
         * vLLM writes ("%s:%d" % (get_ip(), rpc_port)) */
        hl = whole ? strlen(name) : (size_t)(colon - name);
        tail = whole ? "" : colon;
    } else {
        hl = colon ? (size_t)(colon - name) : strlen(name);
        tail = colon ? colon : "";
    }
    if (hl == 0 || hl >= hostlen)
        return ferry_fail(FERRY_EINVAL, "bad host in \"%s\"", shown);
    memcpy(host, h, hl);
    host[hl] = '\0';
    return *tail ? parse_port(tail + 1, shown, port) : 0;
}

bool net_host_text_ok(const char *h, size_t max)
{
    static const char name_chars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_";
    size_t len = strlen(h);
    if (len == 0 || len >= max || len >= 256)
        return false;
    if (!strchr(h, ':'))
        return strspn(h, name_chars) == len;
    char addr[256];
    size_t alen = strcspn(h, "%");
    memcpy(addr, h, alen);
    addr[alen] = '\0';
    struct in6_addr a6;
    if (inet_pton(AF_INET6, addr, &a6) != 1)
        return false;
    return alen == len || (len > alen + 1 && strspn(h + alen + 1, name_chars) == len - alen - 1);
}

int net_format_hostport(char *out, size_t max, const char *host, int port)
{
    int n = strchr(host, ':') ? snprintf(out, max, "[%s]:%d", host, port) : snprintf(out, max, "%s:%d", host, port);
    return n >= 0 && (size_t)n < max ? 0 : ferry_fail(FERRY_EINVAL, "host name \"%.64s\" is too long", host);
}

static void sockaddr_set_port(struct sockaddr_storage *sa, int port)
{
    if (sa->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
}

/* One name look-up on a look-up thread, shared by the caller and that
 * thread (refs): the caller may give up at its deadline, the thread goes
 * on until getaddrinfo returns, and the last of the two frees it. */
struct lookup {
    pthread_mutex_t mu;
    pthread_cond_t done_cv; /* on CLOCK_MONOTONIC, as deadlines are */
    int refs;               /* under mu: 2 while both hold it */
    bool done;              /* under mu */
    bool gave_up;           /* under mu: the caller's deadline passed first (counted in lookups_abandoned) */
    int rc, err;            /* getaddrinfo's result and errno, once done */
    struct addrinfo hints, *res;
    char serv[8];
    bool has_serv;
    struct lookup *next; /* in the look-up threads' queue */
    char name[];
};

/* Look-ups given up on whose thread still runs: at most LOOKUP_ABANDONED_MAX
 * at once (a silent resolver holds each for its retries, seconds), so that
 * callers retrying names nobody answers cannot grow threads without bound. */
#define LOOKUP_ABANDONED_MAX 64
static atomic_int lookups_abandoned;

/* Drops one reference; the last frees lk and what it holds. */
static void lookup_put(struct lookup *lk)
{
    pthread_mutex_lock(&lk->mu);
    bool last = --lk->refs == 0, gave_up = lk->gave_up;
    pthread_mutex_unlock(&lk->mu);
    if (!last)
        return;
    if (gave_up)
        atomic_fetch_sub(&lookups_abandoned, 1);
    if (lk->res)
        freeaddrinfo(lk->res);
    pthread_cond_destroy(&lk->done_cv);
    pthread_mutex_destroy(&lk->mu);
    free(lk);
}

static void lookup_run(struct lookup *lk)
{
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(lk->name, lk->has_serv ? lk->serv : NULL, &lk->hints, &res);
    int err = errno;
    pthread_mutex_lock(&lk->mu);
    lk->rc = rc;
    lk->err = err;
    lk->res = res;
    lk->done = true;
    pthread_cond_signal(&lk->done_cv);
    pthread_mutex_unlock(&lk->mu);
    lookup_put(lk);
}

/* The look-up threads: each takes queued look-ups one at a time and, idle,
 * waits LOOKUP_IDLE_S for another before it ends (a thread's start and
 * its resolver's first use cost more than the look-up of a hosts name).
 * A look-up is queued only for an idle thread; while more are queued than
 * threads idle, a new thread starts: none waits behind another. */
#define LOOKUP_IDLE_S 1
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cv = PTHREAD_COND_INITIALIZER;
static struct lookup *queue_head, *queue_tail; /* under pool_mu */
static int queued, idle;                       /* under pool_mu */

static void *lookup_worker(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&pool_mu);
    for (;;) {
        if (!queue_head) {
            struct timespec until = timespec_in_ms(CLOCK_REALTIME, LOOKUP_IDLE_S * 1000L);
            idle++;
            int rc = 0;
            while (!queue_head && rc != ETIMEDOUT)
                rc = pthread_cond_timedwait(&pool_cv, &pool_mu, &until);
            idle--;
            if (!queue_head)
                break;
        }
        struct lookup *lk = queue_head;
        queue_head = lk->next;
        if (!queue_head)
            queue_tail = NULL;
        queued--;
        pthread_mutex_unlock(&pool_mu);
        lookup_run(lk);
        pthread_mutex_lock(&pool_mu);
    }
    pthread_mutex_unlock(&pool_mu);
    return NULL;
}

/* fork: the child has none of the parent's look-up threads, nor their
 * callers; it starts with no thread idle, nothing queued or given up on
 * (else a look-up would be queued for an idle thread that is not there,
 * and wait out its deadline), and pool_mu is not held mid-change. */
static void pool_prepare(void)
{
    pthread_mutex_lock(&pool_mu);
}

static void pool_parent(void)
{
    pthread_mutex_unlock(&pool_mu);
}

static void pool_child(void)
{
    queue_head = queue_tail = NULL;
    queued = idle = 0;
    atomic_store(&lookups_abandoned, 0);
    pthread_mutex_unlock(&pool_mu);
}

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void pool_init(void)
{
    pthread_atfork(pool_prepare, pool_parent, pool_child);
}

/* Queues lk for a look-up thread, starting one unless one is idle.  Returns
 * 0, or pthread_create's error with lk taken back (no thread will see it). */
static int lookup_start(struct lookup *lk)
{
    pthread_once(&pool_once, pool_init);
    pthread_mutex_lock(&pool_mu);
    if (queue_tail)
        queue_tail->next = lk;
    else
        queue_head = lk;
    queue_tail = lk;
    bool start = ++queued > idle;
    if (!start)
        pthread_cond_signal(&pool_cv);
    pthread_mutex_unlock(&pool_mu);
    if (!start)
        return 0;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigset_t all, old; /* the thread takes none of the process's signals (as glibc's resolver threads) */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int err = pthread_create(&t, &attr, lookup_worker, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (!err)
        return 0;
    pthread_mutex_lock(&pool_mu); /* take lk back unless a running thread took it meanwhile */
    struct lookup **at = &queue_head, *prev = NULL;
    while (*at && *at != lk) {
        prev = *at;
        at = &(*at)->next;
    }
    bool taken_back = *at != NULL;
    if (taken_back) {
        *at = lk->next;
        if (queue_tail == lk)
            queue_tail = prev;
        queued--;
    }
    pthread_mutex_unlock(&pool_mu);
    return taken_back ? err : 0;
}

/* getaddrinfo(host, serv) within deadline_ns.  A numeric address (IPv4 or
 * IPv6 text) is read at once, without the resolver (AI_NUMERICHOST).  A
 * name is queued for a look-up thread (lookup_start: an idle one, else a
 * new one) and waited for until the deadline: getaddrinfo has no timeout of its own, and a resolver that
 * never answers would hold the caller for glibc's retries (5 s per server
 * and attempt, from resolv.conf).  Not glibc's getaddrinfo_a: its 20
 * threads, once held by look-ups given up on, queue every other name
 * behind them (a hosts-file name included) until glibc's retries end.  A
 * look-up not done by the deadline is left to its thread, which frees it
 * when getaddrinfo returns; while LOOKUP_ABANDONED_MAX such threads run, a
 * name fails at once (FERRY_ETIMEDOUT, saying so).  Returns 0 with *res
 * (caller frees with freeaddrinfo), FERRY_ETIMEDOUT naming the host and
 * "name resolution", or FERRY_ECONN (no such host, its message from
 * gai_strerror).  what: the caller's words for the detail ("connect
 * host:port"). */
static int lookup(const char *host, const char *serv, int flags, uint64_t deadline_ns, const char *what,
                  struct addrinfo **res)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = flags | AI_NUMERICHOST};
    *res = NULL;
    int rc = getaddrinfo(host, serv, &hints, res);
    if (rc != EAI_NONAME)
        goto done;
    uint64_t start = now_ns();
    if (start >= deadline_ns)
        return ferry_fail(FERRY_ETIMEDOUT, "%s: name resolution: the deadline passed before it began", what);
    int abandoned = atomic_load(&lookups_abandoned);
    if (abandoned >= LOOKUP_ABANDONED_MAX)
        return ferry_fail(FERRY_ETIMEDOUT, "%s: name resolution not begun: %d earlier look-ups that outlived "
                          "their deadline still wait for the resolver", what, abandoned);
    size_t hl = strlen(host);
    struct lookup *lk = calloc(1, sizeof *lk + hl + 1);
    if (!lk)
        return ferry_fail(FERRY_ENOMEM, "%s: name resolution", what);
    memcpy(lk->name, host, hl + 1);
    lk->has_serv = serv != NULL;
    snprintf(lk->serv, sizeof lk->serv, "%s", serv ? serv : "");
    lk->hints = (struct addrinfo){.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = flags};
    lk->refs = 2;
    pthread_mutex_init(&lk->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&lk->done_cv, &ca);
    pthread_condattr_destroy(&ca);
    int err = lookup_start(lk);
    if (err) {
        lk->refs = 1;
        lookup_put(lk);
        return ferry_fail(FERRY_ECONN, "%s: name resolution could not start: %s", what, strerror(err));
    }
    struct timespec until = {.tv_sec = (time_t)(deadline_ns / 1000000000u),
                             .tv_nsec = (long)(deadline_ns % 1000000000u)};
    pthread_mutex_lock(&lk->mu);
    while (!lk->done && pthread_cond_timedwait(&lk->done_cv, &lk->mu, &until) != ETIMEDOUT)
        ;
    bool done = lk->done;
    if (done) {
        rc = lk->rc;
        err = lk->err;
        *res = lk->res;
        lk->res = NULL;
    } else { /* counted until the last of the two frees it, whichever that is */
        lk->gave_up = true;
        atomic_fetch_add(&lookups_abandoned, 1);
    }
    pthread_mutex_unlock(&lk->mu);
    lookup_put(lk);
    if (!done)
        return ferry_fail(FERRY_ETIMEDOUT, "%s: name resolution gave no answer within the deadline (%llu ms)", what,
                          (unsigned long long)((deadline_ns - start) / 1000000u));
    errno = err;
done:
    if (rc == 0 && *res)
        return 0;
    if (*res)
        freeaddrinfo(*res);
    *res = NULL;
    return ferry_fail(FERRY_ECONN, "%s: cannot resolve the host: %s", what,
                      rc == EAI_SYSTEM ? strerror(errno) : rc ? gai_strerror(rc) : "no address");
}

int net_lookup(const char *host, int port, uint64_t deadline_ns, struct addrinfo **res)
{
    char shown[160], what[200], serv[8];
    snprintf(what, sizeof what, "resolve \"%s\"", log_sanitize(host, strlen(host), shown, sizeof shown));
    snprintf(serv, sizeof serv, "%d", port & 0xffff);
    return lookup(host, serv, AI_NUMERICSERV, deadline_ns, what, res);
}

/* The address of host (IPv4 or IPv6 text, or a name: its first IPv4
 * address, else its first IPv6 one) and port, looked up before deadline_ns. */
static int resolve(const char *host, int port, uint64_t deadline_ns, struct sockaddr_storage *sa, socklen_t *salen)
{
    memset(sa, 0, sizeof *sa);
    char shown[160], what[200];
    snprintf(what, sizeof what, "listen on \"%s\"", log_sanitize(host, strlen(host), shown, sizeof shown));
    struct addrinfo *res = NULL;
    int rc = lookup(host, NULL, 0, deadline_ns, what, &res);
    if (rc)
        return rc;
    const struct addrinfo *pick = NULL;
    for (const struct addrinfo *r = res; r && !pick; r = r->ai_next)
        if (r->ai_family == AF_INET)
            pick = r;
    for (const struct addrinfo *r = res; r && !pick; r = r->ai_next)
        if (r->ai_family == AF_INET6)
            pick = r;
    if (!pick) {
        freeaddrinfo(res);
        return ferry_fail(FERRY_ECONN, "%s: the host has no IPv4 or IPv6 address", what);
    }
    memcpy(sa, pick->ai_addr, pick->ai_addrlen);
    *salen = pick->ai_addrlen;
    sockaddr_set_port(sa, port);
    freeaddrinfo(res);
    return 0;
}

/* 0, or a FERRY_E* code with its message (bind's errno kept). */
static int try_bind(int fd, const struct sockaddr_storage *sa, socklen_t salen, const char *host, int port)
{
    if (bind(fd, (const struct sockaddr *)sa, salen) == 0)
        return 0;
    int err = errno;
    int rc = ferry_fail(FERRY_EIO, "bind %s port %d: %s", host, port, strerror(err));
    errno = err; /* net_listen looks for EADDRINUSE */
    return rc;
}

static int sockaddr_port(const struct sockaddr_storage *sa)
{
    return sa->ss_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)sa)->sin6_port)
                                     : ntohs(((const struct sockaddr_in *)sa)->sin_port);
}

int net_listen(const char *host, int port, unsigned resolve_ms, int *bound)
{
    struct sockaddr_storage sa;
    socklen_t salen = 0;
    int rc = resolve(host, port, net_deadline(resolve_ms), &sa, &salen);
    if (rc)
        return rc;
    int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return ferry_fail(FERRY_EIO, "socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    rc = try_bind(fd, &sa, salen, host, port);
    if (rc == FERRY_EIO && port != 0 && errno == EADDRINUSE) { /* the requested port is taken: any port */
        sockaddr_set_port(&sa, 0);
        rc = try_bind(fd, &sa, salen, host, 0);
    }
    if (rc) {
        close(fd);
        return rc;
    }
    if (listen(fd, 512) != 0) {
        rc = ferry_fail(FERRY_EIO, "listen: %s", strerror(errno));
        close(fd);
        return rc;
    }
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    *bound = sockaddr_port(&sa);
    return fd;
}

/* One connect to the address a, within deadline_ns.  Returns the fd
 * (blocking, TCP_NODELAY) or -1 with why[] saying what went wrong, and
 * *timed_out set where no answer came in time. */
static int connect_one(const struct addrinfo *a, uint64_t deadline_ns, char *why, size_t cap, bool *timed_out)
{
    *timed_out = false;
    int fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(why, cap, "socket: %s", strerror(errno));
        return -1;
    }
    int err = 0, c = connect(fd, a->ai_addr, a->ai_addrlen);
    if (c != 0 && errno != EINPROGRESS) {
        err = errno;
    } else if (c != 0) {
        for (;;) {
            uint64_t now = now_ns();
            if (now >= deadline_ns) {
                *timed_out = true;
                break;
            }
            uint64_t left_ms = (deadline_ns - now + 999999u) / 1000000u;
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int n = poll(&p, 1, left_ms > 60000 ? 60000 : (int)left_ms);
            if (n > 0) {
                socklen_t el = sizeof err;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
                    err = errno;
                break;
            }
            if (n < 0 && errno != EINTR) {
                err = errno;
                break;
            }
        }
    }
    if (*timed_out || err) {
        if (!*timed_out)
            snprintf(why, cap, "%s", strerror(err));
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Appends "addr: why" (the address numeric, "[v6]:port" for IPv6) to the
 * list of tries in buf, or counts it in *dropped once buf is full. */
static void note_try(char *buf, size_t cap, size_t *used, int *dropped, const struct addrinfo *a, const char *why)
{
    char h[NI_MAXHOST], serv[NI_MAXSERV], addr[NI_MAXHOST + 16];
    if (getnameinfo(a->ai_addr, a->ai_addrlen, h, sizeof h, serv, sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        snprintf(addr, sizeof addr, "(address of family %d)", a->ai_family);
    else if (net_format_hostport(addr, sizeof addr, h, atoi(serv)) != 0)
        snprintf(addr, sizeof addr, "(an address)");
    int n = snprintf(buf + *used, cap - *used, "%s%s: %s", *used ? "; " : "", addr, why);
    if (n < 0 || (size_t)n >= cap - *used) { /* full: keep what fitted before this entry */
        buf[*used] = '\0';
        (*dropped)++;
        return;
    }
    *used += (size_t)n;
}

int net_connect_deadline(const char *host, int port, uint64_t deadline_ns)
{
    char shown[160];
    log_sanitize(host, strlen(host), shown, sizeof shown);
    if (now_ns() >= deadline_ns) /* before the resolver: a spent deadline costs no look-up and no connect */
        return ferry_fail(FERRY_ETIMEDOUT, "connect %s:%d: the deadline passed before any address was tried", shown,
                          port);
    if (port < 0 || port > 65535)
        return ferry_fail(FERRY_EINVAL, "connect %s:%d: bad port", shown, port);
    char serv[8];
    snprintf(serv, sizeof serv, "%d", port);
    char what[200];
    snprintf(what, sizeof what, "connect %s:%d", shown, port);
    struct addrinfo *res = NULL;
    int rc = lookup(host, serv, AI_NUMERICSERV, deadline_ns, what, &res);
    if (rc)
        return rc;
    int count = 0;
    for (const struct addrinfo *r = res; r; r = r->ai_next)
        count++;
    /* every address, the IPv4 ones first (net_listen binds a name's first
     * IPv4 address: a server started on the same name is there, and an
     * IPv6 route that drops packets costs nothing while IPv4 answers), each
     * in the resolver's order, each within an equal share of the time
     * left, so one that never answers leaves time for the next; the last
     * has all of it.  Then, while time is left (those after it refused at
     * once), the ones that did not answer (the first 64) again, as before:
     * a name's silent address gets the time the others did not use, as it
     * would alone. */
    char tried[360];
    size_t used = 0;
    int dropped = 0, fd = -1;
    tried[0] = '\0';
    uint64_t again = 0;
    for (int round = 0; fd < 0 && (round == 0 || again); round++) {
        uint64_t want = again;
        int left = round == 0 ? count : __builtin_popcountll(want), i = 0;
        again = 0;
        for (int pass = 0; pass < 2 && fd < 0; pass++)
            for (const struct addrinfo *r = res; r && fd < 0; r = r->ai_next) {
                if ((r->ai_family == AF_INET) != (pass == 0))
                    continue;
                int idx = i++;
                if (round > 0 && (idx >= 64 || !(want >> idx & 1)))
                    continue;
                uint64_t now = now_ns();
                if (now >= deadline_ns) {
                    if (round == 0)
                        note_try(tried, sizeof tried, &used, &dropped, r, "not tried, the deadline passed");
                    left--;
                    continue;
                }
                char why[128];
                bool timed_out;
                uint64_t share = (deadline_ns - now) / (uint64_t)left--;
                fd = connect_one(r, now + share, why, sizeof why, &timed_out);
                if (fd >= 0)
                    break;
                if (timed_out) {
                    snprintf(why, sizeof why, "%sno answer within %llu ms", round ? "again: " : "",
                             (unsigned long long)((share + 999999u) / 1000000u));
                    if (idx < 64 && now_ns() < deadline_ns)
                        again |= 1ull << idx;
                }
                note_try(tried, sizeof tried, &used, &dropped, r, why);
            }
    }
    freeaddrinfo(res);
    if (fd >= 0)
        return fd;
    char more[32] = "";
    if (dropped)
        snprintf(more, sizeof more, "; %d more", dropped);
    return ferry_fail(now_ns() >= deadline_ns ? FERRY_ETIMEDOUT : FERRY_ECONN, "connect %s:%d: %s%s", shown, port,
                      tried, more);
}

int net_connect(const char *host, int port, unsigned timeout_ms)
{
    return net_connect_deadline(host, port, net_deadline(timeout_ms));
}

void net_set_timeouts(int fd, unsigned recv_ms, unsigned send_ms)
{
    struct timeval r = {.tv_sec = recv_ms / 1000, .tv_usec = (recv_ms % 1000) * 1000};
    struct timeval s = {.tv_sec = send_ms / 1000, .tv_usec = (send_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &r, sizeof r);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &s, sizeof s);
}

void net_set_keepalive(int fd, unsigned dead_s)
{
    int family = 0;
    socklen_t fl = sizeof family;
    if (!dead_s || getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &fl) != 0 ||
        (family != AF_INET && family != AF_INET6))
        return;
    int on = 1, idle = (int)((dead_s + 1) / 2), count = 4;
    int interval = (int)(dead_s - (unsigned)idle) / count;
    if (interval < 1)
        interval = 1;
    unsigned user_ms = dead_s > UINT_MAX / 1000u ? UINT_MAX : dead_s * 1000u;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_ms, sizeof user_ms);
}

static int io_error(ssize_t n, const char *what)
{
    if (n == 0)
        return ferry_fail(FERRY_ECONN, "%s: peer closed the connection", what);
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return ferry_fail(FERRY_ETIMEDOUT, "%s: timed out", what);
    return ferry_fail(FERRY_ECONN, "%s: %s", what, strerror(errno));
}

/* The socket's own timeout (SO_RCVTIMEO or SO_SNDTIMEO) as one deadline
 * from now; UINT64_MAX when it has none.  Read only once a call would
 * block: a call the socket satisfies at once costs no getsockopt. */
static uint64_t socket_deadline(int fd, int opt)
{
    struct timeval tv = {0, 0};
    socklen_t sl = sizeof tv;
    if (getsockopt(fd, SOL_SOCKET, opt, &tv, &sl) != 0 || (tv.tv_sec == 0 && tv.tv_usec == 0))
        return UINT64_MAX;
    return now_ns() + (uint64_t)tv.tv_sec * 1000000000u + (uint64_t)tv.tv_usec * 1000u;
}

/* Waits until fd is ready for `events` or the deadline passes (UINT64_MAX:
 * never). */
static int wait_ready(int fd, short events, uint64_t deadline_ns, const char *what)
{
    for (;;) {
        uint64_t now = now_ns();
        if (now >= deadline_ns)
            return ferry_fail(FERRY_ETIMEDOUT, "%s: deadline passed", what);
        uint64_t left_ms = (deadline_ns - now + 999999u) / 1000000u;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, left_ms > 60000 ? 60000 : (int)left_ms);
        if (n > 0)
            return 0;
        if (n < 0 && errno != EINTR)
            return ferry_fail(FERRY_ECONN, "%s: poll: %s", what, strerror(errno));
    }
}

/* Reads len bytes: what the socket has at once, then, only once it would
 * block, waits with poll for the rest until *deadline_ns (*by_socket: the
 * socket's SO_RCVTIMEO, taken then as one deadline for the rest of the call
 * and stored in *deadline_ns, however the peer slices its bytes; a caller
 * reading in pieces passes the same two on, so its whole call has one). */
static int read_by(int fd, void *buf, size_t len, uint64_t *deadline_ns, bool *by_socket)
{
    char *p = buf;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (*by_socket) {
                *deadline_ns = socket_deadline(fd, SO_RCVTIMEO);
                *by_socket = false;
            }
            int rc = wait_ready(fd, POLLIN, *deadline_ns, "recv");
            if (rc)
                return rc;
        } else {
            return io_error(n, "recv");
        }
    }
    return 0;
}

int net_read_full(int fd, void *buf, size_t len)
{
    uint64_t deadline = UINT64_MAX;
    bool by_socket = true;
    return read_by(fd, buf, len, &deadline, &by_socket);
}

int net_read_full_deadline(int fd, void *buf, size_t len, uint64_t deadline_ns)
{
    bool by_socket = false;
    return read_by(fd, buf, len, &deadline_ns, &by_socket);
}

/* Skips n sent bytes: drops the iovecs they filled, trims the one they ended in. */
static void iov_advance(struct iovec **iov, int *iovcnt, size_t n)
{
    while (*iovcnt > 0 && n >= (*iov)->iov_len) {
        n -= (*iov)->iov_len;
        (*iov)++;
        (*iovcnt)--;
    }
    if (*iovcnt > 0) {
        (*iov)->iov_base = (char *)(*iov)->iov_base + n;
        (*iov)->iov_len -= n;
    }
}

/* Writes the iovec array as read_by reads: as much as the socket takes at
 * once, and only once it would block, poll until the deadline (by_socket:
 * the socket's SO_SNDTIMEO from then on, one deadline for the rest). */
static int writev_by(int fd, struct iovec *iov, int iovcnt, uint64_t deadline_ns, bool by_socket)
{
    for (;;) {
        iov_advance(&iov, &iovcnt, 0); /* empty iovecs carry nothing (sendmsg's 0 would read as a close) */
        if (iovcnt == 0)
            return 0;
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)(iovcnt > 1024 ? 1024 : iovcnt)};
        ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            iov_advance(&iov, &iovcnt, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (by_socket) {
                deadline_ns = socket_deadline(fd, SO_SNDTIMEO);
                by_socket = false;
            }
            int rc = wait_ready(fd, POLLOUT, deadline_ns, "send");
            if (rc)
                return rc;
            continue;
        }
        return io_error(n < 0 ? -1 : 0, "send");
    }
}

int net_writev_full_deadline(int fd, struct iovec *iov, int iovcnt, uint64_t deadline_ns)
{
    return writev_by(fd, iov, iovcnt, deadline_ns, false);
}

int net_write_full_deadline(int fd, const void *buf, size_t len, uint64_t deadline_ns)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    return net_writev_full_deadline(fd, &iov, 1, deadline_ns);
}

uint64_t net_deadline(unsigned ms)
{
    return now_ns() + (uint64_t)ms * 1000000u;
}

int net_discard(int fd, uint64_t len)
{
    char sink[65536];
    uint64_t deadline = UINT64_MAX;
    bool by_socket = true; /* one deadline for all of it, from its first wait */
    while (len > 0) {
        size_t n = len < sizeof sink ? (size_t)len : sizeof sink;
        int rc = read_by(fd, sink, n, &deadline, &by_socket);
        if (rc)
            return rc;
        len -= n;
    }
    return 0;
}

int net_writev_full(int fd, struct iovec *iov, int iovcnt)
{
    return writev_by(fd, iov, iovcnt, UINT64_MAX, true);
}

int net_write_full(int fd, const void *buf, size_t len)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    return net_writev_full(fd, &iov, 1);
}

/*
 * rdma_server.c — the target side of the rdma transport: a small TCP
 * listener (the side channel published in the descriptor) through which
 * initiators set up queue pairs, and over which notifications arrive.
 *
 * One acceptor thread; one thread per connection.  A connection's thread
 * answers HELLO by creating a responder queue pair on the NIC asked for,
 * then serves NOTIFY and the staging messages (rdma_bounce.c) until the
 * connection ends, and destroys the queue pair with it.  RDMA WRITE/READ to
 * host memory never involve this side's CPU: the NIC checks every access
 * against the MRs (rkey, bounds, permissions) and refuses what falls outside
 * them (after ferry_unregister_memory, the MR is gone).
 */
#ifdef FERRY_HAVE_RDMA
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "net.h"
#include "transport/rdma.h"

#define TICK_MS 100

struct rdma_server_conn {
    struct rdma_transport *t;
    int fd;
    pthread_t thread;
    atomic_int done;
    char from[RDMA_MAX_NAME + 1];
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    struct rdma_bounce bounce;  /* target-side staging of this queue pair */
    struct rdma_server_conn *next;
};

/* Sends HELLO_ACK carrying an error and its reason. */
static void refuse(struct rdma_server_conn *s, int status, const char *why)
{
    struct rdma_msg_header h = {.type = RDMA_MSG_HELLO_ACK, .status = status};
    size_t n = strlen(why) < RDMA_MAX_TEXT ? strlen(why) : RDMA_MAX_TEXT;
    rdma_msg_send(s->fd, &h, why, n, NULL, 0);
    LOG_WARN("rdma: refused a queue pair from %s: %s", s->from, why);
}

/* HELLO: creates the responder queue pair and answers with its coordinates. */
static int serve_hello(struct rdma_server_conn *s)
{
    struct rdma_transport *t = s->t;
    uint8_t buf[RDMA_QP_INFO_SIZE + RDMA_MAX_NAME];
    struct rdma_msg_header h;
    struct rdma_qp_info theirs, mine;
    int rc = rdma_msg_recv(s->fd, &h, buf, sizeof buf);
    if (!rc && h.type != RDMA_MSG_HELLO)
        rc = ferry_fail(FERRY_EPROTO, "first message is type %u, not HELLO", h.type);
    if (!rc)
        rc = rdma_qp_info_decode(buf, &theirs);
    if (rc)
        return rc;
    memcpy(s->from, buf + RDMA_QP_INFO_SIZE, h.len - RDMA_QP_INFO_SIZE);
    s->from[h.len - RDMA_QP_INFO_SIZE] = '\0';
    char why[RDMA_MAX_TEXT + 1];
    if (theirs.engine_id != t->host.engine_id) {
        snprintf(why, sizeof why, "expects engine %016llx, this is engine %016llx (restarted?)",
                 (unsigned long long)theirs.engine_id, (unsigned long long)t->host.engine_id);
        refuse(s, FERRY_ESTALE, why);
        return ferry_fail(FERRY_ESTALE, "%s", why);
    }
    if (theirs.nic >= t->nnics) {
        snprintf(why, sizeof why, "NIC index %u asked for, this engine has %zu", theirs.nic, t->nnics);
        refuse(s, FERRY_EPROTO, why);
        return ferry_fail(FERRY_EPROTO, "%s", why);
    }
    struct rdma_nic *nic = &t->nics[theirs.nic];
    uint32_t psn = 0;
    if (getrandom(&psn, sizeof psn, 0) != sizeof psn)
        psn = (uint32_t)now_ns();
    psn &= 0xffffff;
    s->cq = ibv_create_cq(nic->ctx, 4, NULL, NULL, 0);
    rc = s->cq ? 0 : ferry_fail(FERRY_EIO, "ibv_create_cq on %s: %s", nic->name, strerror(errno));
    if (!rc && !(s->qp = rdma_qp_create(nic, s->cq, 1, 1)))
        rc = FERRY_EIO;
    int gid_index = rdma_gid_match(nic, theirs.gid);
    if (!rc)
        rc = rdma_qp_connect(t, nic, s->qp, gid_index, &theirs, nic->port_attr.link_layer != IBV_LINK_LAYER_ETHERNET,
                             psn, s->from);
    if (!rc)
        rc = rdma_bounce_create(t, nic, &s->bounce);
    if (rc) {
        snprintf(why, sizeof why, "%s", ferry_last_error());
        refuse(s, rc, why);
        return ferry_fail(rc, "%s", why);
    }
    rdma_qp_info_local(nic, s->qp, psn, gid_index, &mine);
    mine.engine_id = t->host.engine_id;
    uint8_t info[RDMA_QP_INFO_SIZE], bounce[RDMA_BOUNCE_INFO_SIZE];
    rdma_qp_info_encode(&mine, info);
    rdma_bounce_info_encode(&s->bounce.info, bounce);
    struct rdma_msg_header ack = {.type = RDMA_MSG_HELLO_ACK};
    LOG_INFO("rdma: queue pair %u on %s for %s (its qpn %u)", s->qp->qp_num, nic->name, s->from, theirs.qpn);
    return rdma_msg_send(s->fd, &ack, info, sizeof info, bounce, sizeof bounce);
}

static int serve_message(struct rdma_server_conn *s)
{
    struct rdma_transport *t = s->t;
    uint8_t msg[RDMA_MAX_NOTIFY];
    struct rdma_msg_header h;
    int rc = rdma_msg_recv(s->fd, &h, msg, sizeof msg);
    if (rc)
        return rc;
    if (h.type == RDMA_MSG_STAGE_WRITE || h.type == RDMA_MSG_STAGE_READ)
        return rdma_bounce_serve(t, &s->bounce, s->fd, &h, msg, s->from);
    if (h.type != RDMA_MSG_NOTIFY)
        return ferry_fail(FERRY_EPROTO, "unexpected message type %u", h.type);
    t->host.deliver_notify(t->host.engine, s->from, msg, h.len);
    struct rdma_msg_header ack = {.type = RDMA_MSG_NOTIFY_ACK, .id = h.id};
    return rdma_msg_send(s->fd, &ack, NULL, 0, NULL, 0);
}

static void *conn_main(void *arg)
{
    struct rdma_server_conn *s = arg;
    struct rdma_transport *t = s->t;
    strcpy(s->from, "?");
    net_set_timeouts(s->fd, t->host.cfg->connect_timeout_ms, t->host.cfg->connect_timeout_ms);
    int rc = serve_hello(s);
    while (!rc && !atomic_load(&t->stopping)) {
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        int n = poll(&p, 1, TICK_MS);
        if (n == 0 || (n < 0 && errno == EINTR))
            continue;
        rc = serve_message(s);
    }
    if (rc && rc != FERRY_ECONN && !atomic_load(&t->stopping)) {
        atomic_fetch_add(&t->refused, 1);
        LOG_WARN("rdma: dropping the side channel from %s: %s: %s", s->from, ferry_err_name(rc), ferry_last_error());
    }
    /* the initiator is gone or done: its queue pair goes with it */
    if (s->qp)
        ibv_destroy_qp(s->qp);
    if (s->cq)
        ibv_destroy_cq(s->cq);
    s->qp = NULL;
    s->cq = NULL;
    rdma_bounce_destroy(&s->bounce); /* after its queue pair: no access can be in flight */
    shutdown(s->fd, SHUT_RDWR);
    atomic_store(&s->done, 1);
    return NULL;
}

static void reap(struct rdma_transport *t, bool all)
{
    pthread_mutex_lock(&t->servers_lock);
    for (struct rdma_server_conn **pp = &t->servers; *pp;) {
        struct rdma_server_conn *s = *pp;
        if (all)
            shutdown(s->fd, SHUT_RDWR);
        if (all || atomic_load(&s->done)) {
            *pp = s->next;
            pthread_join(s->thread, NULL);
            close(s->fd);
            free(s);
        } else {
            pp = &s->next;
        }
    }
    pthread_mutex_unlock(&t->servers_lock);
}

static void *acceptor_main(void *arg)
{
    struct rdma_transport *t = arg;
    while (!atomic_load(&t->stopping)) {
        struct pollfd p = {.fd = t->listen_fd, .events = POLLIN};
        if (poll(&p, 1, TICK_MS) <= 0)
            continue;
        int fd = accept4(t->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        reap(t, false);
        struct rdma_server_conn *s = calloc(1, sizeof *s);
        if (!s) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        s->t = t;
        s->fd = fd;
        if (pthread_create(&s->thread, NULL, conn_main, s)) {
            free(s);
            close(fd);
            continue;
        }
        pthread_mutex_lock(&t->servers_lock);
        s->next = t->servers;
        t->servers = s;
        pthread_mutex_unlock(&t->servers_lock);
    }
    return NULL;
}

int rdma_server_start(struct rdma_transport *t)
{
    t->listen_fd = net_listen(t->host.listen_host, 0, &t->port);
    if (t->listen_fd < 0)
        return t->listen_fd;
    if (pthread_create(&t->acceptor, NULL, acceptor_main, t)) {
        close(t->listen_fd);
        t->listen_fd = -1;
        return ferry_fail(FERRY_EIO, "rdma: cannot start the side-channel acceptor");
    }
    t->acceptor_started = true;
    return 0;
}

void rdma_server_stop(struct rdma_transport *t)
{
    if (t->acceptor_started)
        pthread_join(t->acceptor, NULL);
    t->acceptor_started = false;
    if (t->listen_fd >= 0)
        close(t->listen_fd);
    t->listen_fd = -1;
    reap(t, true);
}

#endif /* FERRY_HAVE_RDMA */

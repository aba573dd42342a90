/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rdma_server.c — the target side of the rdma transport: a small TCP
 * listener (the side channel published in the descriptor) through which
 * initiators set up queue pairs, and over which notifications arrive.
 *
 * The common acceptor (caps per peer and in total); one thread per
 * connection (named "ferry-rdma-sc").  A connection's thread authenticates the peer when a key is
 * set, answers HELLO (all within one deadline) by creating a responder queue
 * pair on the NIC asked for, then serves NOTIFY and the staging messages
 * (rdma_bounce.c) until the connection ends, and destroys the queue pair with
 * it.  RDMA WRITE/READ to host memory never involve this side's CPU: the NIC
 * checks every access against the MRs (rkey, bounds, permissions) and
 * refuses what falls outside them (after ferry_unregister_memory, the MR is
 * gone).
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

#include "acceptor.h"
#include "auth.h"
#include "err.h"
#include "log.h"
#include "net.h"
#include "transport/rdma/rdma.h"

#define TICK_MS 100
#define RDMA_SIDE_CHANNEL_THREAD "ferry-rdma-sc"

struct rdma_server_conn {
    struct rdma_transport *t;
    int fd;
    const char *peer;               /* "a.b.c.d:port", for messages */
    char from[RDMA_MAX_NAME + 1];   /* the initiator's segment name, sanitized for logs */
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    struct rdma_bounce bounce;  /* target-side staging of this queue pair */
};

/* Sends HELLO_ACK carrying an error and its reason. */
static void refuse(struct rdma_server_conn *s, int status, const char *why, uint64_t deadline)
{
    /* the initiator takes only the statuses a target sends (rdma_status_allowed) */
    struct rdma_msg_header h = {.type = RDMA_MSG_HELLO_ACK,
                                .status = rdma_status_allowed(RDMA_MSG_HELLO_ACK, status) ? status : FERRY_EIO};
    size_t n = strlen(why) < RDMA_MAX_TEXT ? strlen(why) : RDMA_MAX_TEXT;
    rdma_msg_send_by(s->fd, &h, why, n, NULL, 0, deadline);
    LOG_WARN("rdma: refused a queue pair from %s: %s", s->from, why);
}

/* HELLO: creates the responder queue pair and answers with its coordinates. */
static int serve_hello(struct rdma_server_conn *s)
{
    struct rdma_transport *t = s->t;
    uint8_t buf[RDMA_QP_INFO_SIZE + RDMA_MAX_NAME];
    struct rdma_msg_header h;
    struct rdma_qp_info theirs, mine;
    uint8_t raw[RDMA_MSG_HEADER_SIZE];
    bool authenticated = false;
    /* [authentication,] then HELLO: all within connect_timeout_ms */
    uint64_t deadline = net_deadline(t->host.cfg->connect_timeout_ms);
    int rc = net_read_full_deadline(s->fd, raw, AUTH_PREFIX, deadline);
    if (!rc && auth_is_hello(raw)) {
        rc = auth_server(s->fd, t->host.auth, AUTH_RDMA, raw, s->peer, deadline, NULL);
        authenticated = rc == 0;
        if (!rc)
            rc = net_read_full_deadline(s->fd, raw, AUTH_PREFIX, deadline);
    }
    if (!rc)
        rc = net_read_full_deadline(s->fd, raw + AUTH_PREFIX, sizeof raw - AUTH_PREFIX, deadline);
    if (!rc)
        rc = rdma_msg_decode_header(raw, &h);
    if (!rc && h.len > sizeof buf)
        rc = ferry_fail(FERRY_EPROTO, "HELLO of %u bytes", h.len);
    if (!rc)
        rc = net_read_full_deadline(s->fd, buf, h.len, deadline);
    if (!rc && h.type != RDMA_MSG_HELLO)
        rc = ferry_fail(FERRY_EPROTO, "first message is type %u, not HELLO", h.type);
    if (!rc)
        rc = rdma_qp_info_decode(buf, &theirs);
    if (rc)
        return rc;
    log_sanitize((const char *)buf + RDMA_QP_INFO_SIZE, h.len - RDMA_QP_INFO_SIZE, s->from, sizeof s->from);
    char why[RDMA_MAX_TEXT + 1];
    if (auth_enabled(t->host.auth) && !authenticated) {
        snprintf(why, sizeof why, "authentication required (set the same FERRY_AUTH_KEY on both)");
        refuse(s, FERRY_EPERM, why, deadline);
        return ferry_fail(FERRY_EPERM, "%s", why);
    }
    if (theirs.engine_id != t->host.engine_id) {
        snprintf(why, sizeof why, "expects engine %016llx, this is engine %016llx (restarted?)",
                 (unsigned long long)theirs.engine_id, (unsigned long long)t->host.engine_id);
        refuse(s, FERRY_ESTALE, why, deadline);
        return ferry_fail(FERRY_ESTALE, "%s", why);
    }
    if (theirs.nic >= t->nnics) {
        snprintf(why, sizeof why, "NIC index %u asked for, this engine has %zu", theirs.nic, t->nnics);
        refuse(s, FERRY_EPROTO, why, deadline);
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
        refuse(s, rc, why, deadline);
        return ferry_fail(rc, "%s", why);
    }
    rdma_qp_info_local(nic, s->qp, psn, gid_index, &mine);
    mine.engine_id = t->host.engine_id;
    uint8_t info[RDMA_QP_INFO_SIZE], bounce[RDMA_BOUNCE_INFO_SIZE];
    rdma_qp_info_encode(&mine, info);
    rdma_bounce_info_encode(&s->bounce.info, bounce);
    struct rdma_msg_header ack = {.type = RDMA_MSG_HELLO_ACK};
    LOG_INFO("rdma: queue pair %u on %s for %s (its qpn %u)", s->qp->qp_num, nic->name, s->from, theirs.qpn);
    /* the answer by the same deadline: a peer that stops reading cannot hold this thread past it */
    return rdma_msg_send_by(s->fd, &ack, info, sizeof info, bounce, sizeof bounce, deadline);
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
    t->host.deliver_notify(t->host.engine, s->from, s->peer, msg, h.len);
    struct rdma_msg_header ack = {.type = RDMA_MSG_NOTIFY_ACK, .id = h.id};
    return rdma_msg_send(s->fd, &ack, NULL, 0, NULL, 0);
}

/* One side channel, on its own thread (common/acceptor.c).  No idle
 * timeout: the channel is quiet while RDMA traffic flows, and closing it
 * would destroy the queue pair; the acceptor's caps bound how many exist,
 * and its keepalive (FERRY_KEEPALIVE_S) ends the channel, and so frees the
 * queue pair, of an initiator whose host vanished. */
static void serve_connection(void *ctx, struct acceptor_conn *c)
{
    struct rdma_transport *t = ctx;
    struct rdma_server_conn conn = {.t = t, .fd = c->fd, .peer = c->peer}, *s = &conn;
    (void)pthread_setname_np(pthread_self(), RDMA_SIDE_CHANNEL_THREAD); /* top -H, and the tests count them */
    strcpy(s->from, "?");
    net_set_timeouts(s->fd, t->host.cfg->connect_timeout_ms, t->host.cfg->connect_timeout_ms);
    int rc = serve_hello(s);
    /* its queue pair carries RDMA this side never sees: never evicted for another peer */
    if (!rc && !acceptor_conn_claim(c))
        rc = FERRY_ECONN; /* evicted while it said HELLO: its queue pair goes */
    while (!rc && !acceptor_stopping(c->owner)) {
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        int n = poll(&p, 1, TICK_MS);
        if (n == 0 || (n < 0 && errno == EINTR))
            continue;
        rc = serve_message(s);
    }
    if (rc && rc != FERRY_ECONN && !acceptor_stopping(c->owner)) {
        atomic_fetch_add(&t->refused, 1);
        LOG_WARN("rdma: dropping the side channel from %s (%s): %s: %s", s->from, s->peer, ferry_err_name(rc),
                 ferry_last_error());
    }
    /* the initiator is gone or done: its queue pair goes with it */
    if (s->qp)
        ibv_destroy_qp(s->qp);
    if (s->cq)
        ibv_destroy_cq(s->cq);
    rdma_bounce_destroy(&s->bounce); /* after its queue pair: no access can be in flight */
    shutdown(s->fd, SHUT_RDWR);
}

int rdma_server_start(struct rdma_transport *t)
{
    t->listen_fd = net_listen(t->host.listen_host, 0, t->host.cfg->connect_timeout_ms, &t->port);
    if (t->listen_fd < 0)
        return t->listen_fd;
    int rc = acceptor_start(t->listen_fd, "rdma side channel", &t->host.limits, serve_connection, t, &t->acceptor);
    if (rc) {
        close(t->listen_fd);
        t->listen_fd = -1;
    }
    return rc;
}

void rdma_server_stop(struct rdma_transport *t)
{
    acceptor_stop(t->acceptor);
    t->acceptor = NULL;
    if (t->listen_fd >= 0)
        close(t->listen_fd);
    t->listen_fd = -1;
}

#endif /* FERRY_HAVE_RDMA */

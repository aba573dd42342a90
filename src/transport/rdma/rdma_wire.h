/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rdma_wire.h — what the rdma transport sends to peers, encoded and decoded
 * in one place: the endpoint object it publishes in the segment descriptor,
 * and the messages of its small TCP side channel.  Pure code (no ibverbs),
 * so the decoders can be fuzzed on any build.
 *
 * Endpoint (JSON, inside the descriptor's "transports" object):
 *   {"host":"10.0.0.1","port":41234,
 *    "nics":[{"name":"mlx5_0","gid":"<32 hex>","lid":0,"mtu":5,"link":"eth","numa":0}],
 *    "mrs":[{"addr":"0x7f..","len":"0x..","rkey":[1234,5678],"pref":1}],"stage":1}
 * `mrs` lists the remote-accessible registrations with one rkey per NIC (in
 * `nics` order) and a bitmask of the NICs nearest to the memory.  "stage":1
 * (optional) says the target stages its published buffers that have no MR
 * (device memory its NICs cannot reach) through a bounce per queue pair.
 *
 * Side channel (one TCP connection per queue pair, opened by the initiator):
 * a 24-byte header {magic, version, type, status, len, id} then `len` bytes.
 *   HELLO      initiator -> target: qp info + the initiator's segment name
 *   HELLO_ACK  status; qp info of the target's new queue pair (status 0) or
 *              a message saying why not
 *   NOTIFY     a notification (<= 4096 bytes); NOTIFY_ACK status
 *   STAGE_WRITE / STAGE_READ  initiator -> target: target-side staging of
 *              memory no NIC of the target reaches (see rdma_stage.c): which
 *              bytes of a bounce slot go to / come from which target
 *              addresses; STAGE_ACK status, a refused bitmask and a reason
 * HELLO_ACK (status 0) carries, after the qp info, the bounce of the new
 * queue pair (address, rkey, slots x slot size; 0 slots: none).
 * The connection lives as long as the queue pair: its end tells the other
 * side that the peer is gone.  All integers are little-endian.
 */
#ifndef FERRY_RDMA_WIRE_H
#define FERRY_RDMA_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define RDMA_MAX_NICS 16
#define RDMA_MAX_MRS 65536

#define RDMA_MSG_MAGIC 0x4d445246u /* "FRDM" */
/* 2: the STAGE_* messages and the bounce in HELLO_ACK (version 1 had neither) */
#define RDMA_MSG_VERSION 2
#define RDMA_MSG_HEADER_SIZE 24
#define RDMA_QP_INFO_SIZE 40
#define RDMA_MAX_NAME 127
#define RDMA_MAX_TEXT 159
#define RDMA_MAX_NOTIFY 4096

enum rdma_msg_type {
    RDMA_MSG_HELLO = 1,
    RDMA_MSG_HELLO_ACK = 2,
    RDMA_MSG_NOTIFY = 3,
    RDMA_MSG_NOTIFY_ACK = 4,
    RDMA_MSG_STAGE_WRITE = 5,
    RDMA_MSG_STAGE_READ = 6,
    RDMA_MSG_STAGE_ACK = 7,
};

#define RDMA_BOUNCE_INFO_SIZE 24
#define RDMA_STAGE_MAX_SLOTS 64
#define RDMA_STAGE_ENTRIES 64
#define RDMA_STAGE_ENTRY_SIZE 16
#define RDMA_STAGE_ALIGN 64   /* where the initiator places each run in a slot */
#define RDMA_STAGE_MSG_MAX (8 + RDMA_STAGE_ENTRIES * RDMA_STAGE_ENTRY_SIZE)

struct rdma_msg_header {
    uint32_t magic;
    uint16_t version;
    uint16_t type;
    int32_t status;           /* 0 or a FERRY_E* code (acks) */
    uint32_t len;             /* bytes that follow */
    uint64_t id;              /* NOTIFY id, echoed by its ack */
};

/* What one side tells the other about its queue pair. */
struct rdma_qp_info {
    uint32_t qpn;             /* 24 bits */
    uint32_t psn;             /* 24 bits */
    uint16_t lid;             /* 0 on RoCE */
    uint8_t mtu;              /* enum ibv_mtu, 1..5 */
    uint8_t rd_atomic;        /* RDMA READs it accepts / issues in flight, 1..255 */
    uint32_t nic;             /* HELLO: index of the target NIC wanted */
    uint64_t engine_id;       /* HELLO: the target engine expected; ACK: the target's */
    uint8_t gid[16];
};

/* The target's bounce for one queue pair (HELLO_ACK). */
struct rdma_bounce_info {
    uint64_t addr;
    uint32_t rkey;
    uint32_t slots;           /* 0..RDMA_STAGE_MAX_SLOTS; 0: no target-side staging */
    uint32_t slot_size;       /* bytes per slot, 4 KiB..1 GiB */
};

/* One run of a STAGE_WRITE / STAGE_READ: len bytes at offset off of the
 * slot go to (WRITE) or come from (READ) the target's address addr. */
struct rdma_stage_entry {
    uint64_t addr;
    uint32_t off;
    uint32_t len;
};

void rdma_msg_encode_header(const struct rdma_msg_header *h, uint8_t out[RDMA_MSG_HEADER_SIZE]);
/* Validates magic, version, type, the length allowed for the type and the
 * status (rdma_status_allowed).  Returns 0, FERRY_EPROTO or FERRY_EVERSION
 * with a detail message. */
int rdma_msg_decode_header(const uint8_t in[RDMA_MSG_HEADER_SIZE], struct rdma_msg_header *h);
/* 1 if a ferry peer may send status in a message of this type: 0 always;
 * requests (HELLO, NOTIFY, STAGE_WRITE/READ) nothing else; each ack its own
 * short list, so a hostile peer cannot end a request with a code that
 * means something else here (FERRY_ENOTREG, FERRY_EINVAL...).  Senders map
 * other failures to FERRY_EIO. */
int rdma_status_allowed(uint16_t type, int32_t status);

void rdma_qp_info_encode(const struct rdma_qp_info *q, uint8_t out[RDMA_QP_INFO_SIZE]);
/* Validates the ranges of qpn, psn, mtu and rd_atomic. 0 or FERRY_EPROTO. */
int rdma_qp_info_decode(const uint8_t in[RDMA_QP_INFO_SIZE], struct rdma_qp_info *q);

void rdma_bounce_info_encode(const struct rdma_bounce_info *b, uint8_t out[RDMA_BOUNCE_INFO_SIZE]);
/* Validates slots, slot size and that the bounce does not wrap. 0 or FERRY_EPROTO. */
int rdma_bounce_info_decode(const uint8_t in[RDMA_BOUNCE_INFO_SIZE], struct rdma_bounce_info *b);

/* Encodes slot and n entries (n <= RDMA_STAGE_ENTRIES) into out (room for
 * RDMA_STAGE_MSG_MAX bytes); returns the bytes written. */
size_t rdma_stage_encode(uint32_t slot, const struct rdma_stage_entry *e, uint32_t n, uint8_t *out);
/* Decodes a STAGE_WRITE / STAGE_READ payload of len bytes against a bounce
 * of `slots` slots of slot_size bytes: every entry non-empty and inside its
 * slot.  Returns 0 (slot, entries and *n filled) or FERRY_EPROTO. */
int rdma_stage_decode(const uint8_t *in, size_t len, uint32_t slots, uint32_t slot_size, uint32_t *slot,
                      struct rdma_stage_entry e[RDMA_STAGE_ENTRIES], uint32_t *n);

/* The reason a STAGE_ACK of len payload bytes gives after its 8-byte refused
 * mask, printable (log_sanitize: a target cannot forge log lines) in out. */
char *rdma_stage_ack_reason(const uint8_t *payload, uint32_t len, char *out, size_t cap);

/* Sends a header (magic/version filled in, len = alen + blen) and up to two
 * payload parts.  0 or FERRY_ECONN / FERRY_ETIMEDOUT.  The socket's send
 * timeout (SO_SNDTIMEO) bounds the whole message, however slowly the peer
 * reads it (net_writev_full). */
int rdma_msg_send(int fd, struct rdma_msg_header *h, const void *a, size_t alen, const void *b, size_t blen);
/* The same by an absolute deadline (monotonic ns): the server's HELLO_ACK,
 * under the deadline that covered the authentication and the HELLO. */
int rdma_msg_send_by(int fd, struct rdma_msg_header *h, const void *a, size_t alen, const void *b, size_t blen,
                     uint64_t deadline_ns);
/* Receives and validates one message; its payload (h->len bytes) goes into
 * buf, which must hold cap bytes (FERRY_EPROTO if it would not fit).  The
 * whole message must arrive within the socket's receive timeout
 * (SO_RCVTIMEO), however the peer slices it: FERRY_ETIMEDOUT otherwise. */
int rdma_msg_recv(int fd, struct rdma_msg_header *h, void *buf, size_t cap);

/* The initiator's HELLO on a side channel: sends HELLO (info, then the
 * initiator's segment name, name_len bytes) and receives the answer into
 * *h and buf (cap bytes), all by deadline_ns, the one the connect and the
 * authentication had (as tcp's connect, authentication and HELLO share
 * theirs).  Returns 0 (the answer's type and status are the caller's to
 * judge), FERRY_ETIMEDOUT, FERRY_ECONN or FERRY_EPROTO. */
int rdma_hello_exchange(int fd, const uint8_t info[RDMA_QP_INFO_SIZE], const char *name, size_t name_len,
                        uint64_t deadline_ns, struct rdma_msg_header *h, void *buf, size_t cap);

/* ------------------------------------------------------------ endpoint */

struct rdma_remote_nic {
    char name[64];
    uint8_t gid[16];
    uint16_t lid;
    uint8_t mtu;              /* enum ibv_mtu */
    uint8_t link_ib;          /* 1: InfiniBand (LID addressing), 0: Ethernet (RoCE) */
    int numa;                 /* -1 unknown */
};

struct rdma_remote_mr {
    uint64_t addr, len;
    uint32_t pref;            /* bit i: NIC i is nearest to this memory */
    uint32_t rkey[RDMA_MAX_NICS];
};

struct rdma_endpoint {
    char host[64];
    int port;
    size_t nnics;
    struct rdma_remote_nic nics[RDMA_MAX_NICS];
    size_t nmrs;
    struct rdma_remote_mr *mrs;   /* sorted by addr, non-overlapping */
    int stage;                /* 1: stages its other published buffers (bounce per queue pair) */
};

/* Encodes ep as a JSON object (malloc'd text in *out).  0 or FERRY_ENOMEM. */
int rdma_endpoint_encode(const struct rdma_endpoint *ep, char **out);
/* Parses and validates an endpoint object (zeroes *ep first; free with
 * rdma_endpoint_free even on failure).  0 or FERRY_EPROTO. */
int rdma_endpoint_decode(const char *json, struct rdma_endpoint *ep);
void rdma_endpoint_free(struct rdma_endpoint *ep);
/* The registration wholly containing [addr, addr+len), or NULL. */
const struct rdma_remote_mr *rdma_endpoint_find_mr(const struct rdma_endpoint *ep, uint64_t addr, uint64_t len);

#endif

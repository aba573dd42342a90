/* SPDX-License-Identifier: Apache-2.0 */
/*
 * wire.h — the tcp transport's frame format, encoded and decoded in one place.
 *
 * Every message on a data connection is a 48-byte header, then `nentries`
 * scatter entries {addr, len} (16 bytes each), then `payload_len` bytes.
 * All integers are little-endian.  The decoder is the first thing that sees
 * bytes from a peer: it rejects anything malformed before any memory is
 * touched (fuzzed by tests/fuzz/fuzz_wire.c).
 *
 *   HELLO       initiator -> target, payload = initiator's segment name,
 *               `epoch` = the target engine id the initiator expects
 *   HELLO_ACK   status 0, or FERRY_ESTALE / FERRY_EVERSION
 *   WRITE       entries + payload (the bytes of each entry, in order)
 *   WRITE_ACK   status; `refused` has bit i set for each entry i not written
 *   READ        entries, no payload; flags may hold WIRE_FLAG_TRAILER
 *   READ_RESP   status; refused bitmap; payload = bytes of every entry not
 *               refused; with WIRE_FLAG_TRAILER (echoed from the READ) a
 *               trailer follows the payload: the entries whose memory the
 *               target had to stop reading mid-response (unregistered while
 *               the response was being sent); their bytes went out as zeros.
 *               With WIRE_FLAG_TRAILER_STATUS too, the trailer carries the
 *               frame's status: non-zero when a device copy on the target
 *               failed after the header went out (the bytes no copy filled
 *               went out as zeros; the whole frame failed)
 *   NOTIFY      payload = message; NOTIFY_ACK status
 */
#ifndef FERRY_TCP_WIRE_H
#define FERRY_TCP_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "transport/transport.h"

#define WIRE_MAGIC 0x59525246u /* "FRRY" */
#define WIRE_VERSION 1
#define WIRE_HEADER_SIZE 48
#define WIRE_ENTRY_SIZE 16
#define WIRE_MAX_ENTRIES XFER_MAX_PIECES /* transport.h: one bit each in `refused` */
#define WIRE_MAX_PAYLOAD (256ull << 20)   /* one frame carries at most 256 MiB */
#define WIRE_MAX_NOTIFY 4096
#define WIRE_MAX_NAME 127

enum wire_type {
    WIRE_HELLO = 1,
    WIRE_HELLO_ACK = 2,
    WIRE_WRITE = 3,
    WIRE_WRITE_ACK = 4,
    WIRE_READ = 5,
    WIRE_READ_RESP = 6,
    WIRE_NOTIFY = 7,
    WIRE_NOTIFY_ACK = 8,
};

struct wire_header {
    uint32_t magic;
    uint16_t version;
    uint8_t type;
    uint8_t nentries;
    int32_t status;       /* 0 or a FERRY_E* code (responses) */
    uint32_t flags;       /* WIRE_FLAG_*; unknown bits are ignored */
    uint64_t id;          /* initiator's frame id, echoed in the response */
    uint64_t refused;     /* responses: bitmap of refused entries */
    uint64_t payload_len;
    uint64_t epoch;       /* HELLO: the target engine id expected */
};

/* READ asks for, READ_RESP announces, a trailer after the payload.  A target
 * that does not know the flag sends none (and cannot revoke mid-response
 * other than by closing the connection). */
#define WIRE_FLAG_TRAILER 1u
/* READ (with WIRE_FLAG_TRAILER): the initiator reads the trailer's status.
 * A target serving one that does not closes the connection when a copy
 * fails mid-response, as it cannot say so otherwise. */
#define WIRE_FLAG_TRAILER_STATUS 2u
#define WIRE_TRAILER_SIZE 16
#define WIRE_TRAILER_MAGIC 0x444e4546u /* "FEND" */

struct wire_trailer {
    int32_t status;       /* 0, or the frame failed (WIRE_FLAG_TRAILER_STATUS) */
    uint64_t revoked;     /* bit i: entry i's bytes were replaced by zeros */
};

struct wire_entry {
    uint64_t addr;
    uint64_t len;
};

void wire_encode_header(const struct wire_header *h, uint8_t out[WIRE_HEADER_SIZE]);

/* Decodes and validates a header: magic, version, known type, entry count
 * allowed for the type, payload length within limits for the type.  Returns 0,
 * FERRY_EPROTO or FERRY_EVERSION (with a detail message). */
int wire_decode_header(const uint8_t in[WIRE_HEADER_SIZE], struct wire_header *h);

/* Is `status` a code a ferry target sends in a response of this type?  A
 * status is the peer's word: only these become the initiator's error; any
 * other value is a malformed response (FERRY_EPROTO). */
int wire_status_allowed(uint8_t type, int32_t status);

void wire_encode_entries(const struct wire_entry *e, unsigned n, uint8_t *out);

/* Decodes n entries; checks every length is non-zero, no range wraps, and (for
 * WRITE) that the lengths add up to payload_len exactly.  Returns 0 or
 * FERRY_EPROTO. */
int wire_decode_entries(const uint8_t *in, const struct wire_header *h, struct wire_entry *e);

/* The longest host name (with its NUL) a tcp endpoint may carry. */
#define WIRE_HOST_MAX 64

/* Decodes a peer's tcp endpoint, the JSON object {"host": H, "port": P} of
 * its descriptor (which a metadata store or the peer itself wrote): H an
 * IPv4 address or a host name (letters, digits, '.', '-', '_'; it reaches
 * connects and messages), shorter than WIRE_HOST_MAX; P an integer 1-65535.
 * Returns 0, or FERRY_EPROTO with a detail message saying what is wrong
 * (the peer's text escaped). */
int wire_decode_endpoint(const char *json, char host[WIRE_HOST_MAX], int *port);

void wire_encode_trailer(const struct wire_trailer *t, uint8_t out[WIRE_TRAILER_SIZE]);

/* Decodes the trailer of a READ response to a READ of nentries entries whose
 * header refused `refused`: checks the magic, that only entries which were
 * sent are marked revoked and that the status is one a target sends in a
 * READ_RESP.  Returns 0 or FERRY_EPROTO. */
int wire_decode_trailer(const uint8_t in[WIRE_TRAILER_SIZE], unsigned nentries, uint64_t refused,
                        struct wire_trailer *t);

#endif

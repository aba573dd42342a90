/* SPDX-License-Identifier: Apache-2.0 */
/*
 * auth.h — optional shared-secret mutual authentication, the one protocol
 * every connection type runs first (handshake, tcp data, rdma side channel,
 * shm notifications).
 *
 * The initiator (the side that connects) speaks first:
 *   HELLO      I -> T  magic "FERRYAU1", channel, initiator engine id, nonce_i
 *   CHALLENGE  T -> I  magic, status, target engine id, nonce_t, mac_T
 *   PROOF      I -> T  magic, mac_I
 *   RESULT     T -> I  magic, status (0 accepted, else refused)
 * with mac_X = HMAC-SHA256(key, "ferry-auth-1" | channel | role X | nonce_i |
 * nonce_t | id_i | id_t).  Nonces are 32 random bytes (OpenSSL RAND_bytes)
 * chosen afresh per connection, so a recorded PROOF or CHALLENGE is worth
 * nothing on another connection; the role byte keeps one side's MAC from
 * being reflected as the other's.  MACs are compared in constant time
 * (CRYPTO_memcmp).  The initiator checks the target's MAC before it sends its
 * own, so a target with another key learns nothing it could use.
 *
 * A target reads the first 8 bytes of every connection and hands them to
 * auth_server_start: an auth HELLO is answered; any other prefix is the
 * connection's own protocol (the caller then refuses it in that protocol when
 * a key is required).  A target without a key answers a HELLO with status
 * "no key here", so an initiator with a key gets a clear FERRY_EPERM instead
 * of a hang.
 */
#ifndef FERRY_AUTH_H
#define FERRY_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUTH_MAGIC "FERRYAU1"
#define AUTH_PREFIX 8            /* bytes a target reads before it knows the protocol */
#define AUTH_KEY_MIN 16
#define AUTH_KEY_MAX 256

enum auth_channel { AUTH_HANDSHAKE = 1, AUTH_TCP = 2, AUTH_RDMA = 3, AUTH_SHM = 4 };

/* The engine's key (len 0: authentication is off) and identity. */
struct auth_key {
    uint8_t key[AUTH_KEY_MAX];
    size_t len;
    uint64_t engine_id;
};

/* Fills k from a key string or a key file (at most one non-empty; trailing
 * \n / \r of a file are dropped).  Neither: k->len = 0 (off).  FERRY_EINVAL
 * for a key shorter than AUTH_KEY_MIN or longer than AUTH_KEY_MAX bytes or
 * an unreadable file (the detail names it). */
int auth_key_load(struct auth_key *k, const char *key, const char *file, uint64_t engine_id);
/* Overwrites the secret. */
void auth_key_wipe(struct auth_key *k);

static inline bool auth_enabled(const struct auth_key *k) { return k && k->len > 0; }

/* Initiator side, on a fresh connection to `peer` (named in messages): runs
 * the exchange within the deadline.  Stores the target's engine id in
 * *peer_id (may be NULL).  Returns 0, FERRY_EPERM (the target does not know
 * our key, or has none, or refused us), FERRY_EPROTO, FERRY_ECONN,
 * FERRY_ETIMEDOUT. */
int auth_client(int fd, const struct auth_key *k, enum auth_channel ch, const char *peer, uint64_t deadline_ns,
                uint64_t *peer_id);

/* Is this first-bytes prefix an auth HELLO? */
bool auth_is_hello(const uint8_t prefix[AUTH_PREFIX]);

/* Target side, after the prefix was read and auth_is_hello said yes: reads
 * the rest of the HELLO and completes the exchange.  k may be NULL or empty
 * (no key here: the initiator is told so).  Returns 0 (authenticated),
 * FERRY_EPERM (wrong key, no key here, replayed proof: the detail names the
 * peer), or an I/O error. */
int auth_server(int fd, const struct auth_key *k, enum auth_channel ch, const uint8_t prefix[AUTH_PREFIX],
                const char *peer, uint64_t deadline_ns, uint64_t *peer_id);

/* ---- the messages, for transports that cannot block on one connection
 * (the shm notification socket serves its peers from one poll loop). */
#define AUTH_NONCE 32
#define AUTH_MAC 32
#define AUTH_HELLO_SIZE (8 + 8 + 8 + AUTH_NONCE)
#define AUTH_CHALLENGE_SIZE (8 + 8 + 8 + AUTH_NONCE + AUTH_MAC)
#define AUTH_PROOF_SIZE (8 + 8 + AUTH_MAC)
#define AUTH_RESULT_SIZE 16

enum auth_status { AUTH_OK = 0, AUTH_NO_KEY = 1, AUTH_REFUSED = 2 };

/* What one side of an exchange keeps between messages. */
struct auth_state {
    enum auth_channel ch;
    uint64_t id_i, id_t;
    uint8_t nonce_i[AUTH_NONCE], nonce_t[AUTH_NONCE];
};

/* Target: parses a whole HELLO, fills *st and the CHALLENGE to send.
 * k NULL/empty: a CHALLENGE with AUTH_NO_KEY, and FERRY_EPERM. */
int auth_make_challenge(const struct auth_key *k, enum auth_channel ch, const uint8_t *hello, size_t len,
                        struct auth_state *st, uint8_t out[AUTH_CHALLENGE_SIZE]);
/* Target: checks a PROOF against *st; fills the RESULT to send either way.
 * 0 or FERRY_EPERM. */
int auth_check_proof(const struct auth_key *k, const struct auth_state *st, const uint8_t *proof, size_t len,
                     uint8_t out[AUTH_RESULT_SIZE]);

/* Initiator: checks a CHALLENGE against *st (channel, initiator id and
 * nonce_i set): status, the target's MAC; fills st's target id and nonce.
 * 0, FERRY_EPERM (no key there, refused, another key) or FERRY_EPROTO.
 * The detail reads after the peer's name ("has no key ..."). */
int auth_check_challenge(const struct auth_key *k, struct auth_state *st, const uint8_t *challenge, size_t len);
/* Initiator: the RESULT: 0 (accepted), FERRY_EPERM or FERRY_EPROTO. */
int auth_check_result(const uint8_t *result, size_t len);

/* Every message's reserved bytes (HELLO 9-15, CHALLENGE 10-15, PROOF 8-15,
 * RESULT 9-15) are zero; a decoder refuses a message where they are not. */

#endif

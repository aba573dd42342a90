/* SPDX-License-Identifier: Apache-2.0 */
/*
 * auth.c — the shared-secret challenge-response (see auth.h for the
 * protocol).  HMAC-SHA256, the random nonces and the constant-time compare
 * come from OpenSSL's libcrypto; nothing here hashes by hand.
 *
 * Stateless apart from the caller's struct auth_key (read-only after load)
 * and struct auth_state (one per exchange): any thread may call.
 */
#include "auth.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include "bytes.h"
#include "err.h"
#include "net.h"

#define LABEL "ferry-auth-1"

static const char *channel_name(enum auth_channel ch)
{
    switch (ch) {
    case AUTH_HANDSHAKE: return "handshake";
    case AUTH_TCP: return "tcp";
    case AUTH_RDMA: return "rdma side channel";
    case AUTH_SHM: return "shm notifications";
    }
    return "?";
}

int auth_key_load(struct auth_key *k, const char *key, const char *file, uint64_t engine_id)
{
    memset(k, 0, sizeof *k);
    k->engine_id = engine_id;
    bool have_key = key && *key, have_file = file && *file;
    if (have_key && have_file)
        return ferry_fail(FERRY_EINVAL, "auth: set either auth_key (FERRY_AUTH_KEY) or auth_key_file "
                                        "(FERRY_AUTH_KEY_FILE), not both");
    size_t len = 0;
    if (have_key) {
        len = strlen(key);
        if (len > AUTH_KEY_MAX)
            return ferry_fail(FERRY_EINVAL, "auth: the key is longer than %d bytes", AUTH_KEY_MAX);
        memcpy(k->key, key, len);
    } else if (have_file) {
        FILE *f = fopen(file, "rbe");
        if (!f)
            return ferry_fail(FERRY_EINVAL, "auth: cannot read the key file %s: %s", file, strerror(errno));
        uint8_t extra;
        len = fread(k->key, 1, sizeof k->key, f);
        bool longer = fread(&extra, 1, 1, f) == 1;
        fclose(f);
        while (len > 0 && (k->key[len - 1] == '\n' || k->key[len - 1] == '\r'))
            len--;
        if (longer) {
            auth_key_wipe(k);
            return ferry_fail(FERRY_EINVAL, "auth: the key file %s holds more than %d bytes", file, AUTH_KEY_MAX);
        }
    } else {
        return 0;
    }
    if (len < AUTH_KEY_MIN) {
        auth_key_wipe(k);
        return ferry_fail(FERRY_EINVAL, "auth: the key%s%s has %zu bytes; at least %d are required",
                          have_file ? " in " : "", have_file ? file : "", len, AUTH_KEY_MIN);
    }
    k->len = len;
    return 0;
}

void auth_key_wipe(struct auth_key *k)
{
    OPENSSL_cleanse(k->key, sizeof k->key);
    k->len = 0;
}

bool auth_is_hello(const uint8_t prefix[AUTH_PREFIX])
{
    return memcmp(prefix, AUTH_MAGIC, AUTH_PREFIX) == 0;
}

/* Are the reserved bytes m[from, to) zero, as every encoder writes them?
 * Strict, so that a later version can give them a meaning safely. */
static bool reserved_zero(const uint8_t *m, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        if (m[i])
            return false;
    return true;
}

/* mac = HMAC-SHA256(key, label | channel | role | nonce_i | nonce_t | id_i | id_t) */
static int compute_mac(const struct auth_key *k, const struct auth_state *st, char role, uint8_t mac[AUTH_MAC])
{
    uint8_t msg[sizeof LABEL - 1 + 2 + 2 * AUTH_NONCE + 16], *p = msg;
    memcpy(p, LABEL, sizeof LABEL - 1);
    p += sizeof LABEL - 1;
    *p++ = (uint8_t)st->ch;
    *p++ = (uint8_t)role;
    memcpy(p, st->nonce_i, AUTH_NONCE);
    p += AUTH_NONCE;
    memcpy(p, st->nonce_t, AUTH_NONCE);
    p += AUTH_NONCE;
    put_le64(p, st->id_i);
    put_le64(p + 8, st->id_t);
    unsigned len = 0;
    if (!HMAC(EVP_sha256(), k->key, (int)k->len, msg, sizeof msg, mac, &len) || len != AUTH_MAC)
        return ferry_fail(FERRY_EIO, "auth: HMAC-SHA256 failed");
    return 0;
}

static int random_nonce(uint8_t nonce[AUTH_NONCE])
{
    return RAND_bytes(nonce, AUTH_NONCE) == 1 ? 0 : ferry_fail(FERRY_EIO, "auth: no random bytes (RAND_bytes)");
}

/* ------------------------------------------------------------ target */

int auth_make_challenge(const struct auth_key *k, enum auth_channel ch, const uint8_t *hello, size_t len,
                        struct auth_state *st, uint8_t out[AUTH_CHALLENGE_SIZE])
{
    memset(out, 0, AUTH_CHALLENGE_SIZE);
    memcpy(out, AUTH_MAGIC, 8);
    out[9] = (uint8_t)ch;
    if (len != AUTH_HELLO_SIZE || !auth_is_hello(hello))
        return ferry_fail(FERRY_EPROTO, "auth: malformed HELLO of %zu bytes", len);
    if (!reserved_zero(hello, 9, 16))
        return ferry_fail(FERRY_EPROTO, "auth: HELLO with its reserved bytes 9-15 set");
    if (hello[8] != (uint8_t)ch)
        return ferry_fail(FERRY_EPROTO, "auth: HELLO for channel %u arrived on the %s port", hello[8],
                          channel_name(ch));
    memset(st, 0, sizeof *st);
    st->ch = ch;
    st->id_i = get_le64(hello + 16);
    memcpy(st->nonce_i, hello + 24, AUTH_NONCE);
    if (!auth_enabled(k)) {
        out[8] = AUTH_NO_KEY;
        return ferry_fail(FERRY_EPERM, "the peer authenticates, but this engine has no key (FERRY_AUTH_KEY)");
    }
    st->id_t = k->engine_id;
    int rc = random_nonce(st->nonce_t);
    if (rc)
        return rc;
    put_le64(out + 16, st->id_t);
    memcpy(out + 24, st->nonce_t, AUTH_NONCE);
    return compute_mac(k, st, 'T', out + 24 + AUTH_NONCE);
}

int auth_check_proof(const struct auth_key *k, const struct auth_state *st, const uint8_t *proof, size_t len,
                     uint8_t out[AUTH_RESULT_SIZE])
{
    memset(out, 0, AUTH_RESULT_SIZE);
    memcpy(out, AUTH_MAGIC, 8);
    out[8] = AUTH_REFUSED;
    if (len != AUTH_PROOF_SIZE || !auth_is_hello(proof))
        return ferry_fail(FERRY_EPERM, "auth: malformed PROOF of %zu bytes", len);
    if (!reserved_zero(proof, 8, 16))
        return ferry_fail(FERRY_EPERM, "auth: PROOF with its reserved bytes 8-15 set");
    uint8_t want[AUTH_MAC];
    int rc = compute_mac(k, st, 'I', want);
    if (rc)
        return rc;
    if (CRYPTO_memcmp(want, proof + 16, AUTH_MAC) != 0)
        return ferry_fail(FERRY_EPERM, "auth: the proof does not match this engine's key (another key, or a "
                                       "replayed answer)");
    out[8] = AUTH_OK;
    return 0;
}

int auth_server(int fd, const struct auth_key *k, enum auth_channel ch, const uint8_t prefix[AUTH_PREFIX],
                const char *peer, uint64_t deadline_ns, uint64_t *peer_id)
{
    uint8_t hello[AUTH_HELLO_SIZE], challenge[AUTH_CHALLENGE_SIZE], proof[AUTH_PROOF_SIZE], result[AUTH_RESULT_SIZE];
    struct auth_state st;
    memcpy(hello, prefix, AUTH_PREFIX);
    int rc = net_read_full_deadline(fd, hello + AUTH_PREFIX, sizeof hello - AUTH_PREFIX, deadline_ns);
    if (rc)
        return ferry_fail(rc, "auth: %s: %s", peer, ferry_last_error());
    int verdict = auth_make_challenge(k, ch, hello, sizeof hello, &st, challenge);
    if (verdict && verdict != FERRY_EPERM)
        return ferry_fail(verdict, "%s: %s", peer, ferry_last_error());
    char why[256];
    snprintf(why, sizeof why, "%s", ferry_last_error());
    rc = net_write_full_deadline(fd, challenge, sizeof challenge, deadline_ns);
    if (verdict)
        return ferry_fail(verdict, "%s %s refused: %s", channel_name(ch), peer, why);
    if (rc)
        return ferry_fail(rc, "auth: %s: %s", peer, ferry_last_error());
    rc = net_read_full_deadline(fd, proof, sizeof proof, deadline_ns);
    if (rc == FERRY_ECONN)
        return ferry_fail(FERRY_EPERM, "%s %s failed authentication: it left without proving the key "
                                       "(it has another key?)", channel_name(ch), peer);
    if (rc)
        return ferry_fail(rc, "auth: %s: %s", peer, ferry_last_error());
    verdict = auth_check_proof(k, &st, proof, sizeof proof, result);
    snprintf(why, sizeof why, "%s", ferry_last_error());
    rc = net_write_full_deadline(fd, result, sizeof result, deadline_ns);
    if (verdict)
        return ferry_fail(verdict, "%s %s failed authentication: %s", channel_name(ch), peer, why);
    if (rc)
        return ferry_fail(rc, "auth: %s: %s", peer, ferry_last_error());
    if (peer_id)
        *peer_id = st.id_i;
    return 0;
}

/* ------------------------------------------------------------ initiator */

int auth_check_challenge(const struct auth_key *k, struct auth_state *st, const uint8_t *challenge, size_t len)
{
    if (len != AUTH_CHALLENGE_SIZE || !auth_is_hello(challenge) || challenge[9] != (uint8_t)st->ch)
        return ferry_fail(FERRY_EPROTO, "answered authentication with something else");
    if (challenge[8] == AUTH_NO_KEY)
        return ferry_fail(FERRY_EPERM, "has no authentication key, but this engine requires one "
                                       "(set the same FERRY_AUTH_KEY on both)");
    if (challenge[8] != AUTH_OK)
        return ferry_fail(FERRY_EPERM, "refused authentication (status %u)", challenge[8]);
    if (!reserved_zero(challenge, 10, 16))
        return ferry_fail(FERRY_EPROTO, "answered authentication with its reserved bytes 10-15 set");
    st->id_t = get_le64(challenge + 16);
    memcpy(st->nonce_t, challenge + 24, AUTH_NONCE);
    uint8_t want[AUTH_MAC];
    int rc = compute_mac(k, st, 'T', want);
    if (rc)
        return rc;
    if (CRYPTO_memcmp(want, challenge + 24 + AUTH_NONCE, AUTH_MAC) != 0)
        return ferry_fail(FERRY_EPERM, "failed authentication: it does not know this engine's key (the keys differ)");
    return 0;
}

int auth_check_result(const uint8_t *result, size_t len)
{
    if (len != AUTH_RESULT_SIZE || !auth_is_hello(result) || result[8] != AUTH_OK)
        return ferry_fail(FERRY_EPERM, "refused this engine's proof of the key");
    if (!reserved_zero(result, 9, 16))
        return ferry_fail(FERRY_EPROTO, "accepted this engine's proof with its reserved bytes 9-15 set");
    return 0;
}

int auth_client(int fd, const struct auth_key *k, enum auth_channel ch, const char *peer, uint64_t deadline_ns,
                uint64_t *peer_id)
{
    struct auth_state st = {.ch = ch, .id_i = k->engine_id};
    uint8_t hello[AUTH_HELLO_SIZE] = {0}, challenge[AUTH_CHALLENGE_SIZE], proof[AUTH_PROOF_SIZE] = {0},
            result[AUTH_RESULT_SIZE];
    int rc = random_nonce(st.nonce_i);
    if (rc)
        return rc;
    memcpy(hello, AUTH_MAGIC, 8);
    hello[8] = (uint8_t)ch;
    put_le64(hello + 16, st.id_i);
    memcpy(hello + 24, st.nonce_i, AUTH_NONCE);
    rc = net_write_full_deadline(fd, hello, sizeof hello, deadline_ns);
    if (!rc)
        rc = net_read_full_deadline(fd, challenge, sizeof challenge, deadline_ns);
    if (rc == FERRY_ECONN)
        return ferry_fail(FERRY_EPERM, "%s %s closed the connection when asked to authenticate (it does not "
                                       "speak ferry authentication?)", channel_name(ch), peer);
    if (rc)
        return ferry_fail(rc, "authenticating %s %s: %s", channel_name(ch), peer, ferry_last_error());
    if ((rc = auth_check_challenge(k, &st, challenge, sizeof challenge)))
        return ferry_fail(rc, "%s %s %s", channel_name(ch), peer, ferry_last_error());
    memcpy(proof, AUTH_MAGIC, 8);
    if ((rc = compute_mac(k, &st, 'I', proof + 16)))
        return rc;
    rc = net_write_full_deadline(fd, proof, sizeof proof, deadline_ns);
    if (!rc)
        rc = net_read_full_deadline(fd, result, sizeof result, deadline_ns);
    if (rc)
        return ferry_fail(rc == FERRY_ECONN ? FERRY_EPERM : rc, "%s %s did not accept this engine's proof: %s",
                          channel_name(ch), peer, ferry_last_error());
    if ((rc = auth_check_result(result, sizeof result)))
        return ferry_fail(rc, "%s %s %s", channel_name(ch), peer, ferry_last_error());
    if (peer_id)
        *peer_id = st.id_t;
    return 0;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fuzz_auth.c — libFuzzer target for the authentication messages
 * (src/common/auth.c) as each side decodes them: the first byte picks
 * HELLO (target, with and without a key), CHALLENGE (initiator), PROOF
 * (target) or RESULT (initiator); the rest is the message.  The exchange's
 * state is fixed (engine ids, nonces), so the seed corpus holds messages
 * with correct MACs for it.  A message accepted must be the very bytes an
 * encoder writes (reserved bytes zero, MAC right); a refusal carries a
 * named code and a clean detail.  One thread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "bytes.h"
#include "fuzz_common.h"

#define ID_I 0x1111111111111111ull
#define ID_T 0x2222222222222222ull

static struct auth_key key_initiator, key_target;

/* The state both sides hold once HELLO and CHALLENGE have passed. */
static void fixed_state(struct auth_state *st)
{
    memset(st, 0, sizeof *st);
    st->ch = AUTH_TCP;
    st->id_i = ID_I;
    st->id_t = ID_T;
    memset(st->nonce_i, 0xa5, AUTH_NONCE);
    memset(st->nonce_t, 0x5a, AUTH_NONCE);
}

static void hello(const uint8_t *m, size_t n)
{
    struct auth_state st;
    uint8_t challenge[AUTH_CHALLENGE_SIZE];
    int rc = auth_make_challenge(&key_target, AUTH_TCP, m, n, &st, challenge);
    fuzz_rc_in(rc, 2, FERRY_EPROTO, FERRY_EIO);
    if (!rc) {
        uint8_t again[AUTH_HELLO_SIZE] = {0};
        memcpy(again, AUTH_MAGIC, 8);
        again[8] = AUTH_TCP;
        put_le64(again + 16, st.id_i);
        memcpy(again + 24, st.nonce_i, AUTH_NONCE);
        if (n != sizeof again || memcmp(again, m, n) != 0 || challenge[8] != AUTH_OK)
            abort();
    }
    rc = auth_make_challenge(NULL, AUTH_TCP, m, n, &st, challenge);
    fuzz_rc_in(rc, 2, FERRY_EPROTO, FERRY_EPERM);
    if (rc == 0 || !auth_is_hello(challenge))
        abort(); /* without a key nothing is accepted, and the answer says why */
}

static void challenge(const uint8_t *m, size_t n)
{
    struct auth_state st;
    fixed_state(&st);
    st.id_t = 0;
    memset(st.nonce_t, 0, AUTH_NONCE);
    int rc = auth_check_challenge(&key_initiator, &st, m, n);
    fuzz_rc_in(rc, 3, FERRY_EPROTO, FERRY_EPERM, FERRY_EIO);
    if (rc)
        return;
    uint8_t again[AUTH_CHALLENGE_SIZE] = {0};
    if (st.id_t != get_le64(m + 16) || memcmp(st.nonce_t, m + 24, AUTH_NONCE) != 0)
        abort();
    memcpy(again, AUTH_MAGIC, 8);
    again[9] = AUTH_TCP;
    put_le64(again + 16, st.id_t);
    memcpy(again + 24, st.nonce_t, AUTH_NONCE);
    memcpy(again + 24 + AUTH_NONCE, m + 24 + AUTH_NONCE, AUTH_MAC);
    if (n != sizeof again || memcmp(again, m, n) != 0)
        abort();
}

static void proof(const uint8_t *m, size_t n)
{
    struct auth_state st;
    fixed_state(&st);
    uint8_t result[AUTH_RESULT_SIZE];
    int rc = auth_check_proof(&key_target, &st, m, n, result);
    fuzz_rc_in(rc, 2, FERRY_EPERM, FERRY_EIO);
    if (!auth_is_hello(result) || (result[8] == AUTH_OK) != (rc == 0))
        abort();
    if (!rc) {
        uint8_t again[AUTH_PROOF_SIZE] = {0};
        memcpy(again, AUTH_MAGIC, 8);
        memcpy(again + 16, m + 16, AUTH_MAC);
        if (n != sizeof again || memcmp(again, m, n) != 0)
            abort();
    }
}

static void result(const uint8_t *m, size_t n)
{
    int rc = auth_check_result(m, n);
    fuzz_rc_in(rc, 2, FERRY_EPERM, FERRY_EPROTO);
    uint8_t again[AUTH_RESULT_SIZE] = {0};
    memcpy(again, AUTH_MAGIC, 8);
    if (!rc && (n != sizeof again || memcmp(again, m, n) != 0))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!key_initiator.len) {
        auth_key_load(&key_initiator, "fuzzing-key-0123456789", NULL, ID_I);
        auth_key_load(&key_target, "fuzzing-key-0123456789", NULL, ID_T);
    }
    if (size < 1)
        return 0;
    /* an exact-size copy: a read past the message is caught */
    size_t n = size - 1;
    uint8_t *m = malloc(n ? n : 1);
    if (!m)
        return 0;
    memcpy(m, data + 1, n);
    switch (data[0] & 3) {
    case 0: hello(m, n); break;
    case 1: challenge(m, n); break;
    case 2: proof(m, n); break;
    default: result(m, n); break;
    }
    free(m);
    return 0;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_auth.c — only trusted peers get in (issue 10, item 5).
 *
 * A target engine in a child process with FERRY_AUTH_KEY (or none); the
 * initiator is an engine in this process with its own key (or none, or a
 * wrong one), or a raw socket playing an attacker.  Checks: with the same
 * key transfers complete and verify; without it, or with another, no
 * descriptor and no data connection, and FERRY_EPERM names the peer; a
 * recorded authentication replayed on a new connection is refused.
 */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sys/un.h>

#include "auth.h"
#include "bytes.h"
#include "rawpeer.h"
#include "transport/shm/shm.h"
#include "testutil.h"

#define TSIZE (8u << 20)
#define XFER (1u << 20)
#define SEED 13
#define KEY "correct horse battery staple 42"
#define OTHER_KEY "another key, just as long as it"

static void start_target(struct child_target *t, const char *key)
{
    if (key)
        setenv("FERRY_AUTH_KEY", key, 1);
    int rc = child_target_start(t, TSIZE, "cpu", SEED);
    unsetenv("FERRY_AUTH_KEY");
    assert_int_equal(rc, 0);
}

static ferry_engine *make_engine(const char *key, const char *key_file)
{
    struct ferry_config cfg;
    ferry_engine *e = NULL;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.connect_timeout_ms = 5000;
    cfg.request_timeout_ms = 20000;
    cfg.auth_key = key;
    cfg.auth_key_file = key_file;
    int rc = ferry_engine_create(&cfg, &e);
    if (rc)
        fail_msg("engine: %s: %s", ferry_err_name(rc), ferry_last_error());
    return e;
}

static int transfer(ferry_engine *e, ferry_segment_t seg, int op, void *local, uint64_t remote, size_t len)
{
    ferry_batch *b;
    struct ferry_request r = {op, local, seg, remote, len};
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    int rc = ferry_batch_submit(b, &r, 1);
    if (!rc)
        rc = ferry_batch_wait(b, 60000);
    ferry_batch_free(b);
    return rc;
}

/* With the key on both sides: WRITE and READ complete, data verified. */
static void write_read_verified(ferry_engine *e, struct child_target *t, uint64_t seed)
{
    char *buf;
    ferry_segment_t seg;
    int rc = ferry_open_segment(e, t->name, &seg);
    if (rc)
        fail_msg("open_segment: %s: %s", ferry_err_name(rc), ferry_last_error());
    assert_int_equal(ferry_mem_alloc(e, "cpu", 2 * XFER, (void **)&buf), 0);
    assert_int_equal(ferry_register_memory(e, buf, 2 * XFER, "cpu", 0), 0);
    pattern_fill(buf, XFER, seed, 0);
    assert_int_equal(transfer(e, seg, FERRY_WRITE, buf, t->addr, XFER), 0);
    assert_int_equal(child_target_check(t, 0, XFER, seed), -1);
    assert_int_equal(transfer(e, seg, FERRY_READ, buf + XFER, t->addr, XFER), 0);
    assert_int_equal(pattern_check(buf + XFER, XFER, seed, 0), -1);
    ferry_unregister_memory(e, buf);
    ferry_mem_free(e, "cpu", buf, 2 * XFER);
}

static void test_same_key_transfers(void **state)
{
    (void)state;
    struct child_target t;
    start_target(&t, KEY);
    ferry_engine *e = make_engine(KEY, NULL);
    write_read_verified(e, &t, 1);
    ferry_engine_destroy(e);

    /* the key from a file (a trailing newline is not part of it) */
    char path[] = "/tmp/ferry-test-key-XXXXXX";
    int fd = mkostemp(path, O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, KEY "\n", sizeof KEY), (ssize_t)sizeof KEY);
    close(fd);
    e = make_engine(NULL, path);
    write_read_verified(e, &t, 2);
    ferry_engine_destroy(e);
    unlink(path);
    child_target_kill(&t);
}

/* Opening the segment fails with FERRY_EPERM, and the message names it. */
static void assert_refused(ferry_engine *e, const struct child_target *t)
{
    ferry_segment_t seg;
    int rc = ferry_open_segment(e, t->name, &seg);
    if (rc != FERRY_EPERM)
        fail_msg("open_segment: expected FERRY_EPERM, got %s: %s", ferry_err_name(rc), ferry_last_error());
    print_message("refused as expected: %s\n", ferry_last_error());
    assert_non_null(strstr(ferry_last_error(), t->name));
}

static void test_missing_or_wrong_key_refused(void **state)
{
    (void)state;
    struct child_target t;
    start_target(&t, KEY);
    ferry_engine *none = make_engine(NULL, NULL), *wrong = make_engine(OTHER_KEY, NULL);
    assert_refused(none, &t);
    assert_non_null(strstr(ferry_last_error(), "FERRY_AUTH_KEY"));
    assert_refused(wrong, &t);
    assert_non_null(strstr(ferry_last_error(), "keys differ"));
    ferry_engine_destroy(none);
    ferry_engine_destroy(wrong);
    child_target_kill(&t);

    /* and the other way round: this engine has a key, the target none */
    start_target(&t, NULL);
    ferry_engine *keyed = make_engine(KEY, NULL);
    assert_refused(keyed, &t);
    assert_non_null(strstr(ferry_last_error(), "no authentication key"));
    ferry_engine_destroy(keyed);
    child_target_kill(&t);
}

static void test_raw_attacker_gets_nothing(void **state)
{
    (void)state;
    struct child_target t;
    start_target(&t, KEY);
    /* no descriptor without the key */
    char *json = NULL;
    size_t len;
    assert_int_equal(p2p_fetch(t.name, 5000, &json, &len), FERRY_EPERM);
    assert_null(json);

    /* the data port (learnt here with the key) refuses a HELLO without it */
    struct auth_key k;
    assert_int_equal(auth_key_load(&k, KEY, NULL, 7), 0);
    uint64_t epoch = 0;
    int port = raw_data_port(t.name, &k, &epoch);
    assert_true(port > 0);
    int fd = raw_connect_from("127.0.0.2", port);
    assert_true(fd >= 0);
    assert_int_equal(raw_send_hello(fd, epoch, "attacker"), 0);
    struct wire_header h;
    assert_int_equal(raw_read_header(fd, &h, 10000), 0);
    assert_int_equal(h.type, WIRE_HELLO_ACK);
    assert_int_equal(h.status, FERRY_EPERM);
    /* a WRITE anyway, as if the HELLO had been accepted */
    uint8_t raw[WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE];
    h = (struct wire_header){.type = WIRE_WRITE, .nentries = 1, .payload_len = 4096};
    struct wire_entry en = {t.addr, 4096};
    wire_encode_header(&h, raw);
    wire_encode_entries(&en, 1, raw + WIRE_HEADER_SIZE);
    static uint8_t junk[4096];
    memset(junk, 0xEE, sizeof junk);
    net_write_full(fd, raw, sizeof raw);
    net_write_full(fd, junk, sizeof junk);
    assert_true(raw_closed_by_peer(fd, 10000));
    close(fd);
    assert_int_equal(child_target_check(&t, 0, TSIZE, SEED), -1); /* nothing was written */
    auth_key_wipe(&k);
    child_target_kill(&t);
}

/* ------------------------------------------------------------ shm */

/* A raw connection to a target's shm notification socket. */
static int shm_notify_connect(pid_t pid, uint64_t engine_id)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    char name[64];
    shm_notify_name(pid, engine_id, name, sizeof name);
    memcpy(a.sun_path + 1, name, strlen(name));
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
                                                                     strlen(name))), 0);
    return fd;
}

static void test_shm_with_key(void **state)
{
    (void)state;
    struct child_target t;
    setenv("FERRY_PROTOCOLS", "shm,tcp", 1);
    start_target(&t, KEY);
    unsetenv("FERRY_PROTOCOLS");

    /* an engine with the key: data over shm, and the notification */
    struct ferry_config cfg;
    ferry_engine *e = NULL;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.protocols = "shm";
    cfg.auth_key = KEY;
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    ferry_segment_t seg;
    char *buf;
    assert_int_equal(ferry_open_segment(e, t.name, &seg), 0);
    assert_int_equal(ferry_mem_alloc(e, "cpu", XFER, (void **)&buf), 0);
    assert_int_equal(ferry_register_memory(e, buf, XFER, "cpu", 0), 0);
    pattern_fill(buf, XFER, 3, 0);
    ferry_batch *b;
    struct ferry_request r = {FERRY_WRITE, buf, seg, t.addr, XFER};
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    assert_int_equal(ferry_batch_set_notify(b, "done", 4), 0);
    assert_int_equal(ferry_batch_submit(b, &r, 1), 0);
    assert_int_equal(ferry_batch_wait(b, 60000), 0);
    ferry_batch_free(b);
    struct ferry_stats stats;
    assert_int_equal(ferry_get_stats(e, &stats), 0);
    assert_string_equal(stats.transports[0].name, "shm");
    assert_int_equal(stats.transports[0].bytes_written, XFER);
    assert_int_equal(child_target_check(&t, 0, XFER, 3), -1);
    char note[16];
    assert_int_equal(child_target_notification(&t, note, sizeof note), 4);
    assert_memory_equal(note, "done", 4);
    ferry_engine_destroy(e);

    /* a raw peer without the key: its notification is refused, not delivered */
    struct auth_key k;
    uint64_t engine_id = 0;
    assert_int_equal(auth_key_load(&k, KEY, NULL, 5), 0);
    assert_true(raw_data_port(t.name, &k, &engine_id) > 0);
    int fd = shm_notify_connect(t.pid, engine_id);
    uint8_t msg[2 + 8 + 5];
    put_le16(msg, 8);
    memcpy(msg + 2, "attacker", 8);
    memcpy(msg + 10, "hello", 5);
    assert_int_equal(send(fd, msg, sizeof msg, 0), (ssize_t)sizeof msg);
    uint8_t ack = 0;
    assert_int_equal(recv(fd, &ack, 1, 0), 1);
    assert_int_equal(ack, 1);
    close(fd);
    assert_int_equal(child_target_notification(&t, note, sizeof note), -1);

    /* with the key, the same socket takes it */
    fd = shm_notify_connect(t.pid, engine_id);
    assert_int_equal(auth_client(fd, &k, AUTH_SHM, t.name, net_deadline(10000), NULL), 0);
    assert_int_equal(send(fd, msg, sizeof msg, 0), (ssize_t)sizeof msg);
    assert_int_equal(recv(fd, &ack, 1, 0), 1);
    assert_int_equal(ack, 0);
    close(fd);
    assert_int_equal(child_target_notification(&t, note, sizeof note), 5);
    auth_key_wipe(&k);
    child_target_kill(&t);
}

/* ------------------------------------------------------------ replay */

struct client_run {
    int fd;
    struct auth_key *k;
    const char *peer;
    int rc;
};

static void *client_main(void *arg)
{
    struct client_run *c = arg;
    c->rc = auth_client(c->fd, c->k, AUTH_HANDSHAKE, c->peer, net_deadline(10000), NULL);
    return NULL;
}

/* Relays n bytes from one socket to another, keeping a copy. */
static void relay(int from, int to, uint8_t *copy, size_t n)
{
    assert_int_equal(net_read_full_deadline(from, copy, n, net_deadline(10000)), 0);
    assert_int_equal(net_write_full(to, copy, n), 0);
}

static void test_replayed_answer_refused(void **state)
{
    (void)state;
    struct child_target t;
    start_target(&t, KEY);
    int hs_port = raw_handshake_port(t.name);
    struct auth_key k;
    assert_int_equal(auth_key_load(&k, KEY, NULL, 99), 0);

    /* record a genuine client's authentication, relayed through this test */
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct client_run c = {sv[0], &k, t.name, -1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, client_main, &c), 0);
    int fd = raw_connect_from("127.0.0.2", hs_port);
    assert_true(fd >= 0);
    uint8_t hello[AUTH_HELLO_SIZE], challenge[AUTH_CHALLENGE_SIZE], proof[AUTH_PROOF_SIZE], result[AUTH_RESULT_SIZE];
    relay(sv[1], fd, hello, sizeof hello);
    relay(fd, sv[1], challenge, sizeof challenge);
    relay(sv[1], fd, proof, sizeof proof);
    relay(fd, sv[1], result, sizeof result);
    pthread_join(th, NULL);
    assert_int_equal(c.rc, 0);
    assert_int_equal(result[8], AUTH_OK);
    close(fd);
    close(sv[0]);
    close(sv[1]);

    /* replay both of the client's messages on a new connection */
    fd = raw_connect_from("127.0.0.2", hs_port);
    assert_true(fd >= 0);
    uint64_t deadline = net_deadline(10000);
    uint8_t challenge2[AUTH_CHALLENGE_SIZE];
    assert_int_equal(net_write_full(fd, hello, sizeof hello), 0);
    assert_int_equal(net_read_full_deadline(fd, challenge2, sizeof challenge2, deadline), 0);
    assert_memory_not_equal(challenge2 + 24, challenge + 24, AUTH_NONCE); /* a fresh nonce */
    assert_int_equal(net_write_full(fd, proof, sizeof proof), 0);
    assert_int_equal(net_read_full_deadline(fd, result, sizeof result, deadline), 0);
    assert_int_equal(result[8], AUTH_REFUSED);
    assert_true(raw_closed_by_peer(fd, 10000)); /* and no descriptor follows */
    close(fd);
    auth_key_wipe(&k);
    child_target_kill(&t);
}

/* ------------------------------------------------------------ the module itself */

struct server_run {
    int fd;
    struct auth_key *k;
    int rc;
};

static void *server_main(void *arg)
{
    struct server_run *s = arg;
    uint8_t prefix[AUTH_PREFIX];
    uint64_t deadline = net_deadline(10000);
    s->rc = net_read_full_deadline(s->fd, prefix, sizeof prefix, deadline);
    if (!s->rc)
        s->rc = auth_is_hello(prefix) ? auth_server(s->fd, s->k, AUTH_TCP, prefix, "client", deadline, NULL)
                                      : FERRY_EPROTO;
    return NULL;
}

/* Runs one exchange over a socketpair; returns the client's result. */
static int exchange(struct auth_key *client_key, struct auth_key *server_key, int *server_rc)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    struct server_run s = {sv[1], server_key, -1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, server_main, &s), 0);
    int rc = auth_client(sv[0], client_key, AUTH_TCP, "server", net_deadline(10000), NULL);
    close(sv[0]); /* a client that gave up: the server sees the end */
    pthread_join(th, NULL);
    close(sv[1]);
    *server_rc = s.rc;
    return rc;
}

static void test_auth_module(void **state)
{
    (void)state;
    struct auth_key a, b, none;
    assert_int_equal(auth_key_load(&a, KEY, NULL, 1), 0);
    assert_int_equal(auth_key_load(&b, OTHER_KEY, NULL, 2), 0);
    assert_int_equal(auth_key_load(&none, NULL, "", 3), 0);
    assert_false(auth_enabled(&none));
    int src;
    assert_int_equal(exchange(&a, &a, &src), 0);
    assert_int_equal(src, 0);
    assert_int_equal(exchange(&a, &b, &src), FERRY_EPERM); /* the client notices first */
    assert_non_null(strstr(ferry_last_error(), "keys differ"));
    assert_int_equal(src, FERRY_EPERM);
    assert_int_equal(exchange(&a, &none, &src), FERRY_EPERM);
    assert_int_equal(src, FERRY_EPERM);

    /* key loading: too short, both given, unreadable file */
    assert_int_equal(auth_key_load(&a, "short", NULL, 1), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "at least 16"));
    assert_int_equal(auth_key_load(&a, KEY, "/etc/hostname", 1), FERRY_EINVAL);
    assert_int_equal(auth_key_load(&a, NULL, "/nonexistent/ferry.key", 1), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "/nonexistent/ferry.key"));
    struct ferry_config cfg;
    ferry_engine *e = NULL;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.auth_key = "too short";
    assert_int_equal(ferry_engine_create(&cfg, &e), FERRY_EINVAL);
    assert_null(e);
    assert_string_equal(ferry_err_name(FERRY_EPERM), "FERRY_EPERM");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auth_module),
        cmocka_unit_test(test_same_key_transfers),
        cmocka_unit_test(test_missing_or_wrong_key_refused),
        cmocka_unit_test(test_raw_attacker_gets_nothing),
        cmocka_unit_test(test_replayed_answer_refused),
        cmocka_unit_test(test_shm_with_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

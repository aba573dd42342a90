/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_peer_input.c — what a peer says is not trusted (issue 10, item 6):
 * a peer's name cannot forge a log line, a peer's status code becomes an
 * error only if a ferry target would send it, and one peer's flood of
 * notifications neither evicts other peers' notifications nor floods the log.
 *
 * Target engines run in this process (their log is captured by pointing
 * stderr at a file); peers are engines or raw sockets; the fake target is a
 * thread speaking the wire format.
 */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "log.h"
#include "rawpeer.h"
#include "testutil.h"

/* ------------------------------------------------------------ stderr capture */

struct capture {
    int saved, fd;
    char path[64];
};

static void capture_start(struct capture *c)
{
    strcpy(c->path, "/tmp/ferry-test-log-XXXXXX");
    c->fd = mkostemp(c->path, O_CLOEXEC);
    assert_true(c->fd >= 0);
    fflush(stderr);
    c->saved = dup(2);
    dup2(c->fd, 2);
}

/* Restores stderr; returns what was written (malloc'd). */
static char *capture_end(struct capture *c)
{
    fflush(stderr);
    dup2(c->saved, 2);
    close(c->saved);
    off_t n = lseek(c->fd, 0, SEEK_END);
    char *text = calloc(1, (size_t)n + 1);
    assert_int_equal(pread(c->fd, text, (size_t)n, 0), n);
    close(c->fd);
    unlink(c->path);
    return text;
}

static size_t count(const char *text, const char *what)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, what)); p++)
        n++;
    return n;
}

static ferry_engine *make_engine(unsigned notify_max)
{
    struct ferry_config cfg;
    ferry_engine *e = NULL;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.log_level = FERRY_LOG_WARN;
    if (notify_max)
        cfg.notify_queue_max = notify_max;
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    return e;
}

/* ------------------------------------------------------------ log lines */

static void test_sanitize(void **state)
{
    (void)state;
    char out[64];
    assert_string_equal(log_sanitize("a\nb\x1b[31m\\c\x7f\xff", 64, out, sizeof out), "a\\x0ab\\x1b[31m\\x5cc\\x7f\\xff");
    assert_string_equal(log_sanitize("abcdef", 3, out, sizeof out), "abc");
    assert_string_equal(log_sanitize("\n\n\n", 3, out, 9), "\\x0a\\x0a"); /* never cuts an escape in half */
    assert_string_equal(log_sanitize(NULL, 5, out, sizeof out), "");
}

static void test_newline_cannot_forge_a_log_line(void **state)
{
    (void)state;
    ferry_engine *e = make_engine(0);
    uint64_t epoch = 0;
    int port = raw_data_port(ferry_engine_segment_name(e), NULL, &epoch);
    assert_true(port > 0);
    struct capture cap;
    capture_start(&cap);
    int fd = raw_connect_from("127.0.0.2", port);
    assert_true(fd >= 0);
    raw_send_hello(fd, epoch, "evil\nferry[1] error: forged line");
    struct wire_header h;
    assert_int_equal(raw_read_header(fd, &h, 10000), 0);
    uint8_t junk[WIRE_HEADER_SIZE];
    memset(junk, 'A', sizeof junk); /* a bad frame: the target logs who it drops */
    net_write_full(fd, junk, sizeof junk);
    assert_true(raw_closed_by_peer(fd, 10000));
    close(fd);
    ferry_engine_destroy(e); /* every line is written */
    char *log = capture_end(&cap);
    print_message("%s", log);
    assert_non_null(strstr(log, "evil\\x0aferry[1] error: forged line"));
    assert_null(strstr(log, "\nferry[1] error: forged"));
    free(log);
}

/* ------------------------------------------------------------ status codes */

struct fake_target {
    int hs_fd, data_fd, hs_port, data_port;
    int32_t hello_status, ack_status;
    pthread_t thread;
};

/* Serves one descriptor fetch, then one data connection: HELLO_ACK with
 * hello_status, and every WRITE answered with ack_status. */
static void *fake_main(void *arg)
{
    struct fake_target *k = arg;
    int fd = accept4(k->hs_fd, NULL, NULL, SOCK_CLOEXEC);
    uint8_t head[12], body[256];
    char desc[1024];
    snprintf(desc, sizeof desc,
             "{\"format\":%d,\"fingerprint\":\"%s\",\"name\":\"127.0.0.1:%d\",\"engine_id\":\"0x1\","
             "\"transports\":{\"tcp\":{\"host\":\"127.0.0.1\",\"port\":%d}},"
             "\"buffers\":[{\"addr\":\"0x10000000\",\"len\":\"0x100000\",\"location\":\"cpu\"}]}",
             DESC_FORMAT, DESC_FINGERPRINT, k->hs_port, k->data_port);
    if (net_read_full(fd, head, 12) == 0 && net_read_full(fd, body, head[8]) == 0) {
        size_t len = strlen(desc);
        for (int i = 0; i < 4; i++)
            head[8 + i] = (uint8_t)(len >> (8 * i));
        net_write_full(fd, head, 12);
        net_write_full(fd, desc, len);
    }
    close(fd);
    /* data connections one after another until the test shuts the listening
     * socket down: after a refused HELLO the initiator may try its frame on a
     * fresh connection, which must be answered too (left in the backlog, it
     * waited FERRY_CONNECT_TIMEOUT_MS and the case ended ETIMEDOUT) */
    while ((fd = accept4(k->data_fd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
        uint8_t raw[WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE * WIRE_MAX_ENTRIES];
        struct wire_header h;
        if (net_read_full(fd, raw, WIRE_HEADER_SIZE) == 0 && wire_decode_header(raw, &h) == 0 &&
            net_discard(fd, h.payload_len) == 0) {
            struct wire_header ack = {.type = WIRE_HELLO_ACK, .status = k->hello_status};
            wire_encode_header(&ack, raw);
            net_write_full(fd, raw, WIRE_HEADER_SIZE);
        }
        while (net_read_full(fd, raw, WIRE_HEADER_SIZE) == 0 &&
               wire_decode_header(raw, &h) == 0 &&
               net_discard(fd, (uint64_t)h.nentries * WIRE_ENTRY_SIZE + h.payload_len) == 0) {
            struct wire_header ack = {.type = WIRE_WRITE_ACK, .id = h.id, .status = k->ack_status};
            wire_encode_header(&ack, raw);
            net_write_full(fd, raw, WIRE_HEADER_SIZE);
        }
        close(fd);
    }
    return NULL;
}

/* One WRITE to a fake target answering with the given statuses; returns the
 * request's error and copies its message. */
static int write_to_fake(int32_t hello_status, int32_t ack_status, char *msg, size_t cap, int *data_port)
{
    struct fake_target k = {.hello_status = hello_status, .ack_status = ack_status};
    k.hs_fd = net_listen("127.0.0.1", 0, 10000, &k.hs_port);
    k.data_fd = net_listen("127.0.0.1", 0, 10000, &k.data_port);
    assert_int_equal(pthread_create(&k.thread, NULL, fake_main, &k), 0);
    setenv("FERRY_TCP_CONNECTIONS", "1", 1); /* the fake serves one data connection */
    /* a bound that keeps a loaded machine's slow fake thread from turning the
     * status under test into a HELLO timeout (ETIMEDOUT seen once in a full
     * run on 2 cores), not a measurement */
    setenv("FERRY_CONNECT_TIMEOUT_MS", "60000", 1);
    ferry_engine *e = make_engine(0);
    unsetenv("FERRY_TCP_CONNECTIONS");
    unsetenv("FERRY_CONNECT_TIMEOUT_MS");
    char name[64], *local = malloc(4096);
    snprintf(name, sizeof name, "127.0.0.1:%d", k.hs_port);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(e, name, &seg), 0);
    assert_int_equal(ferry_register_memory(e, local, 4096, "cpu", 0), 0);
    ferry_batch *b;
    struct ferry_request r = {FERRY_WRITE, local, seg, 0x10000000, 4096};
    struct ferry_status st;
    assert_int_equal(ferry_batch_alloc(e, 1, &b), 0);
    assert_int_equal(ferry_batch_submit(b, &r, 1), 0);
    ferry_batch_wait(b, 60000);
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    snprintf(msg, cap, "%s", st.message);
    ferry_batch_free(b);
    ferry_engine_destroy(e); /* closes the data connections */
    shutdown(k.data_fd, SHUT_RDWR); /* wakes the fake's accept: it ends */
    pthread_join(k.thread, NULL);
    close(k.hs_fd);
    close(k.data_fd);
    free(local);
    *data_port = k.data_port;
    return st.error;
}

static void test_remote_status_validated(void **state)
{
    (void)state;
    char msg[160], where[32];
    int port;
    /* -3 is FERRY_ENOTREG, a local error no target sends: malformed */
    assert_int_equal(write_to_fake(0, FERRY_ENOTREG, msg, sizeof msg, &port), FERRY_EPROTO);
    print_message("WRITE_ACK status -3: %s\n", msg);
    snprintf(where, sizeof where, "127.0.0.1:%d", port);
    assert_non_null(strstr(msg, where));
    int rc = write_to_fake(0, 12345, msg, sizeof msg, &port);
    print_message("WRITE_ACK status 12345: %s: %s\n", ferry_err_name(rc), msg);
    assert_int_equal(rc, FERRY_EPROTO);
    /* a code a target does send passes through */
    assert_int_equal(write_to_fake(0, FERRY_EIO, msg, sizeof msg, &port), FERRY_EIO);
    /* and the same for HELLO_ACK */
    assert_int_equal(write_to_fake(FERRY_ENOTREG, 0, msg, sizeof msg, &port), FERRY_EPROTO);
    print_message("HELLO_ACK status -3: %s\n", msg);
    assert_non_null(strstr(msg, "status -3"));
}

/* ------------------------------------------------------------ notifications */

static void test_notification_flood_is_contained(void **state)
{
    (void)state;
    enum { MAX = 16, LEGIT = 3, FLOOD = 1000 };
    ferry_engine *target = make_engine(MAX), *peer = make_engine(0);
    char *remote, *local;
    assert_int_equal(ferry_mem_alloc(target, "cpu", 1 << 20, (void **)&remote), 0);
    assert_int_equal(ferry_register_memory(target, remote, 1 << 20, "cpu", 1), 0);
    assert_int_equal(ferry_mem_alloc(peer, "cpu", 4096, (void **)&local), 0);
    assert_int_equal(ferry_register_memory(peer, local, 4096, "cpu", 0), 0);
    const char *tname = ferry_engine_segment_name(target);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(peer, tname, &seg), 0);
    for (int i = 0; i < LEGIT; i++) { /* the legitimate peer's notifications come first (oldest) */
        ferry_batch *b;
        char note[16];
        snprintf(note, sizeof note, "legit-%d", i);
        struct ferry_request r = {FERRY_WRITE, local, seg, (uint64_t)(uintptr_t)remote, 4096};
        assert_int_equal(ferry_batch_alloc(peer, 1, &b), 0);
        assert_int_equal(ferry_batch_set_notify(b, note, strlen(note)), 0);
        assert_int_equal(ferry_batch_submit(b, &r, 1), 0);
        assert_int_equal(ferry_batch_wait(b, 60000), 0);
        ferry_batch_free(b);
    }

    struct capture cap;
    capture_start(&cap);
    uint64_t epoch = 0;
    int fd = raw_connect_from("127.0.0.2", raw_data_port(tname, NULL, &epoch));
    assert_true(fd >= 0);
    raw_send_hello(fd, epoch, "flooder");
    struct wire_header h;
    assert_int_equal(raw_read_header(fd, &h, 10000), 0);
    for (int i = 0; i < FLOOD; i++) {
        uint8_t raw[WIRE_HEADER_SIZE + 8];
        struct wire_header n = {.type = WIRE_NOTIFY, .id = (uint64_t)i, .payload_len = 8};
        wire_encode_header(&n, raw);
        memcpy(raw + WIRE_HEADER_SIZE, "flood!!!", 8);
        assert_int_equal(net_write_full(fd, raw, sizeof raw), 0);
        assert_int_equal(raw_read_header(fd, &h, 10000), 0);
        assert_int_equal(h.type, WIRE_NOTIFY_ACK);
    }
    close(fd);
    char *log = capture_end(&cap);
    size_t warnings = count(log, "notification queue full");
    print_message("%zu warning line(s) for %d drops\n", warnings, FLOOD + LEGIT - MAX);
    assert_true(warnings >= 1 && warnings <= 20); /* one a second at most */
    free(log);

    static struct ferry_notification notes[MAX + 1];
    size_t got = 0, legit = 0;
    assert_int_equal(ferry_get_notifications(target, notes, MAX + 1, &got), 0);
    assert_int_equal(got, MAX);
    for (size_t i = 0; i < got; i++)
        legit += strcmp(notes[i].from, ferry_engine_segment_name(peer)) == 0;
    assert_int_equal(legit, LEGIT); /* the flood evicted only its own */
    ferry_engine_destroy(peer);
    ferry_engine_destroy(target);
}

/* The same flood, but the sender's name is its own to choose: a new
 * connection per notification, each HELLO naming itself anew ("flooder-N"),
 * every fourth one naming itself as the legitimate peer.  Counted by the
 * claimed name, every flood name held one note and the legitimate peer, with
 * three, was "the peer holding the most": all three were evicted.  The queue
 * now counts notes by where they come from (the sender's address, which a
 * peer cannot choose; 127.0.0.2 here, the legitimate engine on 127.0.0.1). */
static void test_notification_flood_with_rotating_names(void **state)
{
    (void)state;
    enum { MAX = 16, LEGIT = 3, FLOOD = 48 };
    ferry_engine *target = make_engine(MAX), *peer = make_engine(0);
    char *remote, *local;
    assert_int_equal(ferry_mem_alloc(target, "cpu", 1 << 20, (void **)&remote), 0);
    assert_int_equal(ferry_register_memory(target, remote, 1 << 20, "cpu", 1), 0);
    assert_int_equal(ferry_mem_alloc(peer, "cpu", 4096, (void **)&local), 0);
    assert_int_equal(ferry_register_memory(peer, local, 4096, "cpu", 0), 0);
    const char *tname = ferry_engine_segment_name(target), *pname = ferry_engine_segment_name(peer);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(peer, tname, &seg), 0);
    for (int i = 0; i < LEGIT; i++) {
        ferry_batch *b;
        char note[16];
        snprintf(note, sizeof note, "legit-%d", i);
        struct ferry_request r = {FERRY_WRITE, local, seg, (uint64_t)(uintptr_t)remote, 4096};
        assert_int_equal(ferry_batch_alloc(peer, 1, &b), 0);
        assert_int_equal(ferry_batch_set_notify(b, note, strlen(note)), 0);
        assert_int_equal(ferry_batch_submit(b, &r, 1), 0);
        assert_int_equal(ferry_batch_wait(b, 60000), 0);
        ferry_batch_free(b);
    }

    struct capture cap;
    capture_start(&cap); /* the queue-full warnings */
    uint64_t epoch = 0;
    int port = raw_data_port(tname, NULL, &epoch);
    for (int i = 0; i < FLOOD; i++) {
        char name[32];
        if (i % 4 == 3)
            snprintf(name, sizeof name, "%s", pname);
        else
            snprintf(name, sizeof name, "flooder-%d", i);
        int fd = raw_connect_from("127.0.0.2", port);
        assert_true(fd >= 0);
        raw_send_hello(fd, epoch, name);
        struct wire_header h;
        assert_int_equal(raw_read_header(fd, &h, 10000), 0);
        assert_int_equal(h.status, 0);
        uint8_t raw[WIRE_HEADER_SIZE + 8];
        struct wire_header n = {.type = WIRE_NOTIFY, .id = 1, .payload_len = 8};
        wire_encode_header(&n, raw);
        memcpy(raw + WIRE_HEADER_SIZE, "flood!!!", 8);
        assert_int_equal(net_write_full(fd, raw, sizeof raw), 0);
        assert_int_equal(raw_read_header(fd, &h, 10000), 0);
        assert_int_equal(h.type, WIRE_NOTIFY_ACK);
        close(fd);
    }
    free(capture_end(&cap));

    static struct ferry_notification notes[MAX + 1];
    size_t got = 0, legit = 0;
    assert_int_equal(ferry_get_notifications(target, notes, MAX + 1, &got), 0);
    assert_int_equal(got, MAX);
    for (size_t i = 0; i < got; i++)
        legit += strncmp((const char *)notes[i].msg, "legit-", 6) == 0;
    if (legit != LEGIT)
        fail_msg("%zu of the legitimate peer's %d notifications left after a flood under changing names", legit,
                 LEGIT);
    ferry_engine_destroy(peer);
    ferry_engine_destroy(target);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sanitize),
        cmocka_unit_test(test_newline_cannot_forge_a_log_line),
        cmocka_unit_test(test_remote_status_validated),
        cmocka_unit_test(test_notification_flood_is_contained),
        cmocka_unit_test(test_notification_flood_with_rotating_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

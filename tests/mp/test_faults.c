/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_faults.c — bad input and broken peers: every request must end
 * COMPLETED, FAILED or TIMEOUT with a named error; nothing hangs, nothing is
 * written where it must not be, and the engine keeps serving afterwards.
 *
 * Real engines in child processes, real sockets; fake peers (a handshake
 * server answering a chosen descriptor, a data server that never answers)
 * run in threads of this process.  Peer death and close cancelling run over
 * every transport in test_conformance.c.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "meta/descriptor.h"
#include "meta/p2p.h"
#include "net.h"
#include "testutil.h"
#include "transport/tcp/tcp_wire.h"
#include "xfer_pair.h"

#define TSIZE (16u << 20)
#define SEED 5

static struct ferry_config engine_config(unsigned request_timeout_ms)
{
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.request_timeout_ms = request_timeout_ms;
    cfg.connect_timeout_ms = 5000; /* setup under TSan on a busy host: 1 s was not always enough */
    return cfg;
}

static ferry_engine *make_engine(unsigned request_timeout_ms)
{
    struct ferry_config cfg = engine_config(request_timeout_ms);
    ferry_engine *e = NULL;
    assert_int_equal(ferry_engine_create(&cfg, &e), 0);
    return e;
}

static int setup(void **state)
{
    struct xfer_pair *f = calloc(1, sizeof *f);
    struct ferry_config cfg = engine_config(10000);
    xfer_pair_start(f, TSIZE, "cpu", SEED, &cfg, "cpu");
    *state = f;
    return 0;
}

/* One WRITE of len bytes at remote offset off; returns the wait result. */
static int write_once(struct xfer_pair *f, uint64_t off, size_t len, uint64_t seed)
{
    ferry_batch *b;
    pattern_fill(f->local + off, len, seed, off);
    struct ferry_request r = {FERRY_WRITE, f->local + off, f->seg, f->target.addr + off, len};
    assert_int_equal(ferry_batch_alloc(f->e, 1, &b), 0);
    int rc = ferry_batch_submit(b, &r, 1);
    if (rc == 0)
        rc = ferry_batch_wait(b, 60000);
    ferry_batch_free(b);
    return rc;
}

static void test_bad_requests_rejected_at_submit(void **state)
{
    struct xfer_pair *f = *state;
    ferry_batch *b;
    char unregistered[4096];
    assert_int_equal(ferry_batch_alloc(f->e, 2, &b), 0);
    struct ferry_request ok = {FERRY_WRITE, f->local, f->seg, f->target.addr, 4096};
    struct ferry_request bad[2] = {ok, ok};

    bad[1].source = unregistered;
    assert_int_equal(ferry_batch_submit(b, bad, 2), FERRY_ENOTREG);
    assert_non_null(strstr(ferry_last_error(), "request 1"));

    bad[1] = ok;
    bad[1].target_offset = f->target.addr + TSIZE - 100; /* runs past the end */
    assert_int_equal(ferry_batch_submit(b, bad, 2), FERRY_ERANGE);
    assert_non_null(strstr(ferry_last_error(), "outside every buffer"));

    bad[1] = ok;
    bad[1].target_offset = 0x1000; /* no buffer there at all */
    assert_int_equal(ferry_batch_submit(b, bad, 2), FERRY_ERANGE);

    bad[1] = ok;
    bad[1].source = NULL; /* (a zero-length request may have one: test_callers_api) */
    assert_int_equal(ferry_batch_submit(b, bad, 2), FERRY_EINVAL);
    assert_non_null(strstr(ferry_last_error(), "request 1: source is NULL"));

    bad[1] = ok;
    bad[1].target = 9999;
    assert_int_equal(ferry_batch_submit(b, bad, 2), FERRY_ENOSEG);

    bad[1] = ok;
    bad[1].opcode = 7;
    assert_int_equal(ferry_batch_submit(b, bad, 2), FERRY_EINVAL);

    /* all-or-nothing: nothing was submitted by the failures above */
    assert_int_equal(ferry_batch_size(b), 0);
    assert_int_equal(ferry_batch_submit(b, bad, 1), 0);
    struct ferry_request three[3] = {ok, ok, ok};
    assert_int_equal(ferry_batch_submit(b, three, 3), FERRY_EFULL);
    assert_int_equal(ferry_batch_wait(b, 60000), 0);
    struct ferry_status st;
    assert_int_equal(ferry_batch_status(b, 5, &st), FERRY_EINVAL);
    ferry_batch_free(b);
    /* nothing outside the one good write changed on the target */
    assert_int_equal(child_target_check(&f->target, 4096, TSIZE - 4096, SEED), -1);
}

static void test_bad_arguments(void **state)
{
    struct xfer_pair *f = *state;
    ferry_segment_t s;
    ferry_batch *b;
    assert_int_equal(ferry_register_memory(f->e, NULL, 10, "cpu", 1), FERRY_EINVAL);
    assert_int_equal(ferry_register_memory(f->e, f->local, 0, "cpu", 1), FERRY_EINVAL);
    assert_int_equal(ferry_register_memory(f->e, f->local + 4096, 4096, "cpu", 1), FERRY_EEXIST);
    assert_int_equal(ferry_register_memory(f->e, f->local, 4096, "gpu:0", 1), FERRY_EINVAL);
    assert_int_equal(ferry_unregister_memory(f->e, f->local + 8), FERRY_ENOTREG);
    assert_int_equal(ferry_batch_alloc(f->e, 0, &b), FERRY_EINVAL);
    assert_int_equal(ferry_open_segment(f->e, "no-port-here", &s), FERRY_ENOSEG);
    assert_int_equal(ferry_close_segment(f->e, 4242), FERRY_ENOSEG);
    assert_string_equal(ferry_err_name(FERRY_ERANGE), "FERRY_ERANGE");
    assert_string_equal(ferry_strerror(-999), "unknown ferry error code");
}

static void test_unknown_segment(void **state)
{
    struct xfer_pair *f = *state;
    ferry_segment_t s;
    int port;
    int fd = net_listen("127.0.0.1", 0, 10000, &port); /* a port nobody answers on once closed */
    close(fd);
    char name[64];
    snprintf(name, sizeof name, "127.0.0.1:%d", port);
    assert_int_equal(ferry_open_segment(f->e, name, &s), FERRY_ENOSEG);
    assert_non_null(strstr(ferry_last_error(), name));
}

static void test_target_refuses_unregistered(void **state)
{
    struct xfer_pair *f = *state;
    /* the initiator's cached descriptor still lists the buffer; the target's
     * own check must refuse and write nothing */
    assert_int_equal(child_target_unregister(&f->target), 0);
    ferry_batch *b;
    pattern_fill(f->local, 65536, 99, 0);
    struct ferry_request r[2] = {
        {FERRY_WRITE, f->local, f->seg, f->target.addr, 65536},
        {FERRY_READ, f->local + 65536, f->seg, f->target.addr + 65536, 65536},
    };
    assert_int_equal(ferry_batch_alloc(f->e, 2, &b), 0);
    assert_int_equal(ferry_batch_submit(b, r, 2), 0);
    assert_int_equal(ferry_batch_wait(b, 60000), FERRY_ERANGE);
    for (int i = 0; i < 2; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, (size_t)i, &st), 0);
        assert_int_equal(st.state, FERRY_FAILED);
        assert_int_equal(st.error, FERRY_ERANGE);
        assert_non_null(strstr(st.message, "refused"));
    }
    ferry_batch_free(b);
    assert_int_equal(child_target_check(&f->target, 0, TSIZE, SEED), -1);
}

static void test_target_restart_refreshes(void **state)
{
    struct xfer_pair *f = *state;
    assert_int_equal(write_once(f, 0, 4096, 1), 0);
    /* a new target process on the same handshake port */
    char name[64];
    int rc = child_target_restart(&f->target, TSIZE, "cpu", SEED, name);
    assert_int_equal(rc, 0);
    assert_string_equal(f->target.name, name);
    /* The first transfer either fails (ECONN/ESTALE: the cached descriptor
     * is stale) or succeeds because submit already noticed the change (its
     * range check refreshed the descriptor); either way the one after lands
     * in the new process. */
    rc = write_once(f, 0, 4096, 2);
    if (!(rc == 0 || rc == FERRY_ECONN || rc == FERRY_ESTALE))
        fail_msg("first write after restart: %s: %s", ferry_err_name(rc), ferry_last_error());
    assert_int_equal(write_once(f, 0, 4096, 3), 0);
    assert_int_equal(child_target_check(&f->target, 0, 4096, 3), -1);
}

/* ------------------------------------------------------------ fake peers */

struct fake {
    int hs_fd, data_fd, hs_port, data_port;
    char descriptor[1024];
    char magic_version;
    pthread_t thread;
    atomic_int stop;
    int data_conns[8];
    int ndata;
};

/* Serves the chosen descriptor on the handshake port; on the data port it
 * accepts, acknowledges HELLO, and then never answers anything. */
static void *fake_main(void *arg)
{
    struct fake *k = arg;
    while (!k->stop) {
        struct pollfd p[2] = {{.fd = k->hs_fd, .events = POLLIN}, {.fd = k->data_fd, .events = POLLIN}};
        if (poll(p, 2, 50) <= 0)
            continue;
        if (p[0].revents) {
            int fd = accept4(k->hs_fd, NULL, NULL, SOCK_CLOEXEC);
            uint8_t head[12];
            if (fd >= 0 && net_read_full(fd, head, 12) == 0) {
                uint32_t n = head[8] | head[9] << 8;
                char body[256];
                net_read_full(fd, body, n);
                size_t len = strlen(k->descriptor);
                memcpy(head, "FERRYHS", 7);
                head[7] = (uint8_t)k->magic_version;
                for (int i = 0; i < 4; i++)
                    head[8 + i] = (uint8_t)(len >> (8 * i));
                net_write_full(fd, head, 12);
                net_write_full(fd, k->descriptor, len);
            }
            if (fd >= 0)
                close(fd);
        }
        if (p[1].revents) {
            int fd = accept4(k->data_fd, NULL, NULL, SOCK_CLOEXEC);
            uint8_t raw[WIRE_HEADER_SIZE];
            struct wire_header h;
            if (fd >= 0 && net_read_full(fd, raw, sizeof raw) == 0 && wire_decode_header(raw, &h) == 0) {
                char name[128];
                net_read_full(fd, name, (size_t)h.payload_len);
                struct wire_header ack = {.type = WIRE_HELLO_ACK, .id = h.id};
                wire_encode_header(&ack, raw);
                net_write_full(fd, raw, sizeof raw);
            }
            if (fd >= 0 && k->ndata < 8)
                k->data_conns[k->ndata++] = fd; /* keep it open, silent */
            else if (fd >= 0)
                close(fd);
        }
    }
    return NULL;
}

static void fake_start(struct fake *k, int format, const char *fingerprint, char magic_version)
{
    memset(k, 0, sizeof *k);
    k->hs_fd = net_listen("127.0.0.1", 0, 10000, &k->hs_port);
    k->data_fd = net_listen("127.0.0.1", 0, 10000, &k->data_port);
    k->magic_version = magic_version;
    snprintf(k->descriptor, sizeof k->descriptor,
             "{\"format\":%d,\"fingerprint\":\"%s\",\"name\":\"127.0.0.1:%d\",\"engine_id\":\"0x1\","
             "\"transports\":{\"tcp\":{\"host\":\"127.0.0.1\",\"port\":%d}},"
             "\"buffers\":[{\"addr\":\"0x10000000\",\"len\":\"0x100000\",\"location\":\"cpu\"}]}",
             format, fingerprint, k->hs_port, k->data_port);
    assert_int_equal(pthread_create(&k->thread, NULL, fake_main, k), 0);
}

static void fake_stop(struct fake *k)
{
    k->stop = 1;
    pthread_join(k->thread, NULL);
    for (int i = 0; i < k->ndata; i++)
        close(k->data_conns[i]);
    close(k->hs_fd);
    close(k->data_fd);
}

static void test_version_mismatch(void **state)
{
    (void)state;
    ferry_engine *e = make_engine(2000);
    ferry_segment_t s;
    char name[64];
    struct fake k;

    fake_start(&k, 2, DESC_FINGERPRINT, P2P_VERSION);
    snprintf(name, sizeof name, "127.0.0.1:%d", k.hs_port);
    assert_int_equal(ferry_open_segment(e, name, &s), FERRY_EVERSION);
    assert_non_null(strstr(ferry_last_error(), "format"));
    fake_stop(&k);

    fake_start(&k, DESC_FORMAT, "ferry-desc-9/wire-9", P2P_VERSION);
    snprintf(name, sizeof name, "127.0.0.1:%d", k.hs_port);
    assert_int_equal(ferry_open_segment(e, name, &s), FERRY_EVERSION);
    assert_non_null(strstr(ferry_last_error(), "fingerprint"));
    fake_stop(&k);

    fake_start(&k, DESC_FORMAT, DESC_FINGERPRINT, '7');
    snprintf(name, sizeof name, "127.0.0.1:%d", k.hs_port);
    assert_int_equal(ferry_open_segment(e, name, &s), FERRY_EVERSION);
    assert_non_null(strstr(ferry_last_error(), "handshake version"));
    fake_stop(&k);
    ferry_engine_destroy(e);
}

static void test_silent_peer_times_out(void **state)
{
    (void)state;
    ferry_engine *e = make_engine(1000);
    struct fake k;
    fake_start(&k, DESC_FORMAT, DESC_FINGERPRINT, P2P_VERSION);
    char name[64], *local = malloc(1 << 20);
    snprintf(name, sizeof name, "127.0.0.1:%d", k.hs_port);
    ferry_segment_t s;
    assert_int_equal(ferry_open_segment(e, name, &s), 0);
    assert_int_equal(ferry_register_memory(e, local, 1 << 20, "cpu", 0), 0);
    ferry_batch *b;
    struct ferry_request r[4];
    for (int i = 0; i < 4; i++)
        r[i] = (struct ferry_request){i % 2 ? FERRY_READ : FERRY_WRITE, local + i * 65536, s,
                                      0x10000000 + (uint64_t)i * 65536, 65536};
    assert_int_equal(ferry_batch_alloc(e, 4, &b), 0);
    assert_int_equal(ferry_batch_submit(b, r, 4), 0);
    assert_int_equal(ferry_batch_wait(b, 60000), FERRY_ETIMEDOUT);
    for (int i = 0; i < 4; i++) {
        struct ferry_status st;
        assert_int_equal(ferry_batch_status(b, (size_t)i, &st), 0);
        assert_int_equal(st.state, FERRY_TIMEOUT);
    }
    ferry_batch_free(b);
    ferry_engine_destroy(e);
    fake_stop(&k);
    free(local);
}

/* Sends bytes to a port and waits until the peer closes or 2 s pass. */
static void spray(int port, const void *bytes, size_t len)
{
    int fd = net_connect("127.0.0.1", port, 1000);
    assert_true(fd >= 0);
    net_write_full(fd, bytes, len);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char sink[256];
    while (poll(&p, 1, 2000) > 0 && read(fd, sink, sizeof sink) > 0)
        ;
    close(fd);
}

static void test_garbage_to_ports(void **state)
{
    struct xfer_pair *f = *state;
    char *json = NULL;
    size_t len;
    struct ferry_descriptor d;
    assert_int_equal(p2p_fetch(f->target.name, 1000, &json, &len), 0);
    assert_int_equal(descriptor_decode(json, len, &d), 0);
    free(json);
    const char *ep = strstr(descriptor_transport(&d, "tcp"), "\"port\":");
    assert_non_null(ep);
    int data_port = atoi(ep + 7);
    int hs_port = atoi(strrchr(f->target.name, ':') + 1);
    descriptor_free(&d);

    uint8_t junk[4096];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)(i * 131 + 7);
    spray(hs_port, junk, sizeof junk);
    spray(data_port, junk, sizeof junk);
    spray(hs_port, "FERRYHS1\xff\xff\xff\x7f", 12); /* a valid magic, absurd length */
    /* a valid HELLO for the wrong engine, then a WRITE that must not land */
    uint8_t raw[WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE + 64];
    struct wire_header h = {.type = WIRE_HELLO, .epoch = 12345};
    wire_encode_header(&h, raw);
    spray(data_port, raw, WIRE_HEADER_SIZE);
    /* a header promising 65 entries */
    h = (struct wire_header){.type = WIRE_WRITE, .nentries = 65};
    wire_encode_header(&h, raw);
    spray(data_port, raw, WIRE_HEADER_SIZE);

    /* the target still serves, and its memory is untouched */
    assert_int_equal(child_target_check(&f->target, 0, TSIZE, SEED), -1);
    assert_int_equal(write_once(f, 4096, 8192, 77), 0);
    assert_int_equal(child_target_check(&f->target, 4096, 8192, 77), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bad_requests_rejected_at_submit, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(test_unknown_segment, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(test_target_refuses_unregistered, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(test_target_restart_refreshes, setup, xfer_pair_teardown),
        cmocka_unit_test_setup_teardown(test_garbage_to_ports, setup, xfer_pair_teardown),
        cmocka_unit_test(test_version_mismatch),
        cmocka_unit_test(test_silent_peer_times_out),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

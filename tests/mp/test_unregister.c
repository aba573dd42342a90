/* SPDX-License-Identifier: Apache-2.0 */
/*
 * test_unregister.c — a target unregisters memory while a peer is in the
 * middle of a transfer into or out of it (issue 10, item 1, tcp target side).
 *
 * The target is a real engine in this process; the peer is a raw tcp client
 * speaking ferry's wire format (so the test decides exactly when each byte
 * moves), or a real initiator engine.  After ferry_unregister_memory
 * returns, the test reuses the memory (writes a sentinel) and then unmaps or
 * frees it: a WRITE must not land another byte there, a READ must not send
 * another byte from it (the rest arrives as zeros, and the trailer marks the
 * entry revoked), the peer's entry ends refused (FERRY_ERANGE), later
 * accesses are refused, and the same connection keeps serving other memory.
 * Host memory (received straight into the region) and sim device memory
 * (through the target's bounce and H2D/D2H copies) both.
 */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/sockios.h>
#include <cmocka.h>

#include "meta/descriptor.h"
#include "meta/p2p.h"
#include "net.h"
#include "testutil.h"
#include "transport/tcp/tcp_wire.h"

#define MIB (1u << 20)
#define GUARD_MS 120000 /* a hang guard only: everything here ends in well under a second */

struct target {
    ferry_engine *e;
    int tcp_port;
    uint64_t engine_id;
};

/* connect_ms: the target's deadline for a frame's header (0: the default) */
static void target_start_with(struct target *t, unsigned connect_ms)
{
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.request_timeout_ms = 60000;
    if (connect_ms)
        cfg.connect_timeout_ms = connect_ms;
    assert_int_equal(ferry_engine_create(&cfg, &t->e), 0);
    char *json;
    size_t len;
    assert_int_equal(p2p_fetch(ferry_engine_segment_name(t->e), 5000, &json, &len), 0);
    struct ferry_descriptor d;
    assert_int_equal(descriptor_decode(json, len, &d), 0);
    cJSON *ep = cJSON_Parse(descriptor_transport(&d, "tcp"));
    t->tcp_port = (int)cJSON_GetObjectItemCaseSensitive(ep, "port")->valuedouble;
    t->engine_id = d.engine_id;
    cJSON_Delete(ep);
    descriptor_free(&d);
    free(json);
}

static void target_start(struct target *t)
{
    target_start_with(t, 0);
}

/* ------------------------------------------------------------ raw peer */

/* A tcp data connection that has said HELLO.  Its receive buffer is small
 * and fixed, so a large READ response cannot hide in socket buffers. */
static int peer_connect(const struct target *t)
{
    int fd = net_connect("127.0.0.1", t->tcp_port, 5000);
    assert_true(fd >= 0);
    int rcvbuf = 256 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    const char *name = "test-peer";
    struct wire_header h = {.type = WIRE_HELLO, .payload_len = strlen(name), .epoch = t->engine_id};
    uint8_t raw[WIRE_HEADER_SIZE];
    wire_encode_header(&h, raw);
    assert_int_equal(net_write_full(fd, raw, sizeof raw), 0);
    assert_int_equal(net_write_full(fd, name, strlen(name)), 0);
    assert_int_equal(net_read_full(fd, raw, sizeof raw), 0);
    assert_int_equal(wire_decode_header(raw, &h), 0);
    assert_int_equal(h.type, WIRE_HELLO_ACK);
    assert_int_equal(h.status, 0);
    return fd;
}

/* Sends a WRITE or READ header with one entry (a READ asks for the trailer). */
static void peer_frame(int fd, uint8_t type, uint64_t id, uint64_t addr, uint64_t len)
{
    uint8_t raw[WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE];
    struct wire_header h = {.type = type, .id = id, .nentries = 1, .payload_len = type == WIRE_WRITE ? len : 0,
                            .flags = type == WIRE_READ ? WIRE_FLAG_TRAILER : 0};
    struct wire_entry e = {addr, len};
    wire_encode_header(&h, raw);
    wire_encode_entries(&e, 1, raw + WIRE_HEADER_SIZE);
    assert_int_equal(net_write_full(fd, raw, sizeof raw), 0);
}

static struct wire_header peer_response(int fd, uint8_t type, uint64_t id)
{
    uint8_t raw[WIRE_HEADER_SIZE];
    struct wire_header h;
    assert_int_equal(net_read_full(fd, raw, sizeof raw), 0);
    assert_int_equal(wire_decode_header(raw, &h), 0);
    assert_int_equal(h.type, type);
    assert_true(h.id == id);
    assert_int_equal(h.status, 0);
    return h;
}

static uint64_t peer_trailer_of(int fd, unsigned nentries, uint64_t refused)
{
    uint8_t raw[WIRE_TRAILER_SIZE];
    struct wire_trailer t;
    assert_int_equal(net_read_full(fd, raw, sizeof raw), 0);
    assert_int_equal(wire_decode_trailer(raw, nentries, refused, &t), 0);
    return t.revoked;
}

static uint64_t peer_trailer(int fd, uint64_t refused)
{
    return peer_trailer_of(fd, 1, refused);
}

/* A WRITE of len bytes of `fill`; returns the ack's refused bitmap. */
static uint64_t peer_write(int fd, uint64_t id, uint64_t addr, size_t len, int fill)
{
    char *buf = malloc(len);
    memset(buf, fill, len);
    peer_frame(fd, WIRE_WRITE, id, addr, len);
    assert_int_equal(net_write_full(fd, buf, len), 0);
    free(buf);
    return peer_response(fd, WIRE_WRITE_ACK, id).refused;
}

/* A READ of len bytes into out (NULL: the entry must be refused). */
static void peer_read(int fd, uint64_t id, uint64_t addr, size_t len, void *out)
{
    peer_frame(fd, WIRE_READ, id, addr, len);
    struct wire_header h = peer_response(fd, WIRE_READ_RESP, id);
    assert_true(h.flags & WIRE_FLAG_TRAILER);
    if (!out) {
        assert_true(h.refused == 1);
        assert_true(h.payload_len == 0);
    } else {
        assert_true(h.refused == 0);
        assert_true(h.payload_len == len);
        assert_int_equal(net_read_full(fd, out, len), 0);
    }
    assert_true(peer_trailer(fd, h.refused) == 0);
}

/* ------------------------------------------------------------ helpers */

struct unreg_call {
    ferry_engine *e;
    void *addr;
    int rc;
};

static void *unreg_main(void *arg)
{
    struct unreg_call *u = arg;
    u->rc = ferry_unregister_memory(u->e, u->addr);
    return NULL;
}

/* Unregisters addr; fails the test if that hangs (it must not wait for the
 * peer, who sends nothing until it has returned). */
static void unregister_now(ferry_engine *e, void *addr)
{
    struct unreg_call u = {e, addr, -1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, unreg_main, &u), 0);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += GUARD_MS / 1000;
    if (pthread_timedjoin_np(th, NULL, &until) != 0)
        fail_msg("ferry_unregister_memory(%p) still waits for a peer that is stalled mid-transfer", addr);
    assert_int_equal(u.rc, 0);
}

static void wait_until(int (*cond)(void *), void *arg)
{
    uint64_t end = now_ms() + GUARD_MS;
    while (!cond(arg)) {
        assert_true(now_ms() < end);
        sched_yield();
    }
}

struct filled {
    ferry_engine *e;
    const char *p;   /* host, or device memory when e is set */
    size_t len;
    int value;
};

static int is_filled(void *arg)
{
    struct filled *f = arg;
    char *copy = NULL;
    const volatile char *p = (const volatile char *)f->p;
    if (f->e) {
        copy = malloc(f->len);
        assert_int_equal(ferry_mem_copy(f->e, copy, f->p, f->len), 0);
        p = copy;
    }
    int ok = 1;
    for (size_t i = 0; ok && i < f->len; i += 4096)
        ok = p[i] == (char)f->value && p[f->len - 1] == (char)f->value;
    free(copy);
    return ok;
}

static void *map(size_t len, int fill)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    memset(p, fill, len);
    return p;
}

static size_t count_not(const char *p, size_t len, int value)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += p[i] != (char)value;
    return n;
}

/* Bytes of a READ response: each is the pattern's or zero (the cut may fall
 * anywhere), never anything written after unregister; returns how many
 * were zeros in place of non-zero pattern bytes. */
static size_t check_pattern_or_zero(const char *buf, size_t len, uint64_t seed)
{
    size_t zeros = 0;
    char expect[4096];
    for (size_t off = 0; off < len; off += sizeof expect) {
        if (pattern_check(buf + off, sizeof expect, seed, off) < 0)
            continue;
        pattern_fill(expect, sizeof expect, seed, off);
        for (size_t i = 0; i < sizeof expect; i++) {
            if (buf[off + i] != expect[i]) {
                assert_int_equal(buf[off + i], 0);
                zeros++;
            }
        }
    }
    return zeros;
}

/* The same connection still serves other memory after a revocation. */
static void check_other_region(ferry_engine *e, int fd, uint64_t id)
{
    char *other = map(MIB, 0x11);
    assert_int_equal(ferry_register_memory(e, other, MIB, "cpu", 1), 0);
    assert_true(peer_write(fd, id, (uint64_t)(uintptr_t)other, MIB, 0x44) == 0);
    assert_int_equal(count_not(other, MIB, 0x44), 0);
    char *back = malloc(MIB);
    peer_read(fd, id + 1, (uint64_t)(uintptr_t)other, MIB, back);
    assert_int_equal(count_not(back, MIB, 0x44), 0);
    free(back);
    assert_int_equal(ferry_unregister_memory(e, other), 0);
    munmap(other, MIB);
}

/* ------------------------------------------------------------ host memory */

static void test_write_host_unregistered_midway(void **state)
{
    (void)state;
    struct target t;
    target_start(&t);
    const size_t len = 32 * MIB;
    char *r = map(len, 0x11);
    uint64_t addr = (uint64_t)(uintptr_t)r;
    assert_int_equal(ferry_register_memory(t.e, r, len, "cpu", 1), 0);
    int fd = peer_connect(&t);
    char *payload = map(len, 0x22);

    peer_frame(fd, WIRE_WRITE, 1, addr, len);
    assert_int_equal(net_write_full(fd, payload, MIB), 0);
    wait_until(is_filled, &(struct filled){NULL, r, MIB, 0x22}); /* the target is mid-payload */
    unregister_now(t.e, r);
    memset(r, 0x33, len); /* the application reuses its memory */
    assert_int_equal(net_write_full(fd, payload + MIB, len - MIB), 0);
    struct wire_header ack = peer_response(fd, WIRE_WRITE_ACK, 1);
    assert_true(ack.refused == 1);                 /* FERRY_ERANGE at an initiator */
    assert_int_equal(count_not(r, len, 0x33), 0);  /* not one byte landed after unregister */
    munmap(r, len);

    /* later accesses are refused; the connection serves other memory */
    assert_true(peer_write(fd, 2, addr, 4096, 0x66) == 1);
    peer_read(fd, 3, addr, 4096, NULL);
    check_other_region(t.e, fd, 4);
    close(fd);
    munmap(payload, len);
    ferry_engine_destroy(t.e);
}

/* A frame of three host entries lands with one scatter receive (tcp.c,
 * recv_host_run); the middle one is unregistered mid-payload: the first and
 * the last still land, the middle one ends refused with not one byte
 * landed after unregister. */
static void test_write_run_unregistered_midway(void **state)
{
    (void)state;
    struct target t;
    target_start(&t);
    const size_t len = 32 * MIB;
    char *r = map(len, 0x11), *other = map(2 * MIB, 0x11);
    assert_int_equal(ferry_register_memory(t.e, r, len, "cpu", 1), 0);
    assert_int_equal(ferry_register_memory(t.e, other, 2 * MIB, "cpu", 1), 0);
    int fd = peer_connect(&t);
    struct wire_entry e[3] = {{(uint64_t)(uintptr_t)other, MIB}, {(uint64_t)(uintptr_t)r, len},
                              {(uint64_t)(uintptr_t)(other + MIB), MIB}};
    uint8_t raw[WIRE_HEADER_SIZE + 3 * WIRE_ENTRY_SIZE];
    wire_encode_header(&(struct wire_header){.type = WIRE_WRITE, .id = 1, .nentries = 3,
                                             .payload_len = len + 2 * MIB}, raw);
    wire_encode_entries(e, 3, raw + WIRE_HEADER_SIZE);
    assert_int_equal(net_write_full(fd, raw, sizeof raw), 0);
    char *first = map(MIB, 0x22), *middle = map(len, 0x55), *last = map(MIB, 0x44);
    assert_int_equal(net_write_full(fd, first, MIB), 0);
    assert_int_equal(net_write_full(fd, middle, MIB), 0);
    wait_until(is_filled, &(struct filled){NULL, r, MIB, 0x55}); /* mid-way through the middle entry */
    unregister_now(t.e, r);
    memset(r, 0x33, len);
    assert_int_equal(net_write_full(fd, middle + MIB, len - MIB), 0);
    assert_int_equal(net_write_full(fd, last, MIB), 0);
    struct wire_header ack = peer_response(fd, WIRE_WRITE_ACK, 1);
    assert_true(ack.refused == 2);                   /* only the middle entry */
    assert_int_equal(count_not(r, len, 0x33), 0);    /* not one byte landed after unregister */
    assert_int_equal(count_not(other, MIB, 0x22), 0);
    assert_int_equal(count_not(other + MIB, MIB, 0x44), 0);
    munmap(r, len);
    check_other_region(t.e, fd, 2);
    close(fd);
    munmap(first, MIB);
    munmap(middle, len);
    munmap(last, MIB);
    assert_int_equal(ferry_unregister_memory(t.e, other), 0);
    munmap(other, 2 * MIB);
    ferry_engine_destroy(t.e);
}

static void test_read_host_unregistered_midway(void **state)
{
    (void)state;
    struct target t;
    target_start(&t);
    const size_t len = 32 * MIB;
    char *r = map(len, 0);
    pattern_fill(r, len, 7, 0);
    uint64_t addr = (uint64_t)(uintptr_t)r;
    assert_int_equal(ferry_register_memory(t.e, r, len, "cpu", 1), 0);
    int fd = peer_connect(&t);
    char *got = map(len, 0);

    peer_frame(fd, WIRE_READ, 1, addr, len);
    struct wire_header h = peer_response(fd, WIRE_READ_RESP, 1);
    assert_true(h.flags & WIRE_FLAG_TRAILER);
    assert_true(h.refused == 0 && h.payload_len == len);
    assert_int_equal(net_read_full(fd, got, MIB), 0); /* the target is mid-response, blocked on us */
    assert_int_equal(pattern_check(got, MIB, 7, 0), -1);
    unregister_now(t.e, r);
    memset(r, 0x55, len); /* rewritten, then gone: nothing of it may reach the peer */
    munmap(r, len);
    assert_int_equal(net_read_full(fd, got + MIB, len - MIB), 0);
    assert_true(check_pattern_or_zero(got, len, 7) > 0);
    assert_true(peer_trailer(fd, 0) == 1); /* the entry is marked revoked */

    peer_read(fd, 2, addr, 4096, NULL);
    assert_true(peer_write(fd, 3, addr, 4096, 0x66) == 1);
    check_other_region(t.e, fd, 4);
    close(fd);
    munmap(got, len);
    ferry_engine_destroy(t.e);
}

/* ------------------------------------------------------------ device memory (sim) */

static void *dev_alloc(ferry_engine *e, size_t len, uint64_t seed)
{
    void *d, *host = map(len, 0);
    assert_int_equal(ferry_mem_alloc(e, "sim:0", len, &d), 0);
    pattern_fill(host, len, seed, 0);
    assert_int_equal(ferry_mem_copy(e, d, host, len), 0);
    munmap(host, len);
    return d;
}

static void dev_fill(ferry_engine *e, void *d, size_t len, int value)
{
    char *host = map(len, value);
    assert_int_equal(ferry_mem_copy(e, d, host, len), 0);
    munmap(host, len);
}

static void test_write_device_unregistered_midway(void **state)
{
    (void)state;
    struct target t;
    target_start(&t);
    const size_t len = 16 * MIB;
    char *d = dev_alloc(t.e, len, 1);
    dev_fill(t.e, d, len, 0x11);
    uint64_t addr = (uint64_t)(uintptr_t)d;
    assert_int_equal(ferry_register_memory(t.e, d, len, "sim:0", 1), 0);
    int fd = peer_connect(&t);
    char *payload = map(len, 0x22);

    /* 6 MiB: the bounce (4 MiB) was copied to the device once; 2 MiB wait in it */
    peer_frame(fd, WIRE_WRITE, 1, addr, len);
    assert_int_equal(net_write_full(fd, payload, 6 * MIB), 0);
    wait_until(is_filled, &(struct filled){t.e, d, 4 * MIB, 0x22});
    unregister_now(t.e, d);
    dev_fill(t.e, d, len, 0x33);
    assert_int_equal(net_write_full(fd, payload + 6 * MIB, len - 6 * MIB), 0);
    assert_true(peer_response(fd, WIRE_WRITE_ACK, 1).refused == 1);
    char *host = map(len, 0);
    assert_int_equal(ferry_mem_copy(t.e, host, d, len), 0);
    assert_int_equal(count_not(host, len, 0x33), 0); /* no bounce copy after unregister */
    munmap(host, len);
    ferry_mem_free(t.e, "sim:0", d, len);

    assert_true(peer_write(fd, 2, addr, 4096, 0x66) == 1);
    check_other_region(t.e, fd, 3);
    close(fd);
    munmap(payload, len);
    ferry_engine_destroy(t.e);
}

/* Small device blocks: a frame's entries land in the bounce with one
 * receive (tcp_serve_dev.c, tcp_recv_device_run).  Entries alternate between two
 * registrations; one is unregistered while the payload is half sent: its
 * entries end refused with nothing of them copied to the device after
 * unregister (the copies of entries already in the bounce are dropped), and
 * every entry of the other lands. */
static void test_write_device_run_unregistered_midway(void **state)
{
    (void)state;
    struct target t;
    target_start(&t);
    enum { N = 32, BLOCK = 64 * 1024 };
    char *a = dev_alloc(t.e, N / 2 * BLOCK, 1), *b = dev_alloc(t.e, N / 2 * BLOCK, 2);
    dev_fill(t.e, a, N / 2 * BLOCK, 0x11);
    dev_fill(t.e, b, N / 2 * BLOCK, 0x11);
    assert_int_equal(ferry_register_memory(t.e, a, N / 2 * BLOCK, "sim:0", 1), 0);
    assert_int_equal(ferry_register_memory(t.e, b, N / 2 * BLOCK, "sim:0", 1), 0);
    int fd = peer_connect(&t);
    struct wire_entry e[N];
    uint64_t in_a = 0;
    for (unsigned i = 0; i < N; i++) {
        char *base = i % 2 ? b : a;
        e[i] = (struct wire_entry){(uint64_t)(uintptr_t)(base + i / 2 * BLOCK), BLOCK};
        in_a |= (uint64_t)(i % 2 == 0) << i;
    }
    uint8_t raw[WIRE_HEADER_SIZE + N * WIRE_ENTRY_SIZE];
    wire_encode_header(&(struct wire_header){.type = WIRE_WRITE, .id = 1, .nentries = N,
                                             .payload_len = N * BLOCK}, raw);
    wire_encode_entries(e, N, raw + WIRE_HEADER_SIZE);
    char *payload = map(N * BLOCK, 0x22);
    assert_int_equal(net_write_full(fd, raw, sizeof raw), 0);
    assert_int_equal(net_write_full(fd, payload, N / 2 * BLOCK), 0);
    unregister_now(t.e, a); /* the target is receiving the run, or has not begun */
    dev_fill(t.e, a, N / 2 * BLOCK, 0x33);
    assert_int_equal(net_write_full(fd, payload + N / 2 * BLOCK, N / 2 * BLOCK), 0);
    struct wire_header ack = peer_response(fd, WIRE_WRITE_ACK, 1);
    assert_true(ack.refused == in_a);
    char *host = map(N / 2 * BLOCK, 0);
    assert_int_equal(ferry_mem_copy(t.e, host, a, N / 2 * BLOCK), 0);
    assert_int_equal(count_not(host, N / 2 * BLOCK, 0x33), 0); /* nothing copied after unregister */
    assert_int_equal(ferry_mem_copy(t.e, host, b, N / 2 * BLOCK), 0);
    assert_int_equal(count_not(host, N / 2 * BLOCK, 0x22), 0); /* every entry of b landed */
    munmap(host, N / 2 * BLOCK);
    check_other_region(t.e, fd, 2);
    close(fd);
    munmap(payload, N * BLOCK);
    assert_int_equal(ferry_unregister_memory(t.e, b), 0);
    ferry_mem_free(t.e, "sim:0", a, N / 2 * BLOCK);
    ferry_mem_free(t.e, "sim:0", b, N / 2 * BLOCK);
    ferry_engine_destroy(t.e);
}

static void test_read_device_unregistered_midway(void **state)
{
    (void)state;
    struct target t;
    target_start(&t);
    const size_t len = 32 * MIB;
    char *d = dev_alloc(t.e, len, 9);
    uint64_t addr = (uint64_t)(uintptr_t)d;
    assert_int_equal(ferry_register_memory(t.e, d, len, "sim:0", 1), 0);
    int fd = peer_connect(&t);
    char *got = map(len, 0);

    peer_frame(fd, WIRE_READ, 1, addr, len);
    struct wire_header h = peer_response(fd, WIRE_READ_RESP, 1);
    assert_true(h.refused == 0 && h.payload_len == len);
    assert_int_equal(net_read_full(fd, got, MIB), 0);
    unregister_now(t.e, d);
    dev_fill(t.e, d, len, 0x55);
    ferry_mem_free(t.e, "sim:0", d, len);
    assert_int_equal(net_read_full(fd, got + MIB, len - MIB), 0);
    assert_true(check_pattern_or_zero(got, len, 9) > 0);
    assert_true(peer_trailer(fd, 0) == 1);

    peer_read(fd, 2, addr, 4096, NULL);
    check_other_region(t.e, fd, 3);
    close(fd);
    munmap(got, len);
    ferry_engine_destroy(t.e);
}

/* An initiator that does not ask for the trailer cannot be told that a READ
 * was cut short: the target closes the connection instead of sending zeros
 * as if they were data. */
static void test_read_without_trailer_closes(void **state)
{
    (void)state;
    struct target t;
    target_start(&t);
    const size_t len = 32 * MIB;
    char *r = map(len, 0);
    pattern_fill(r, len, 3, 0);
    assert_int_equal(ferry_register_memory(t.e, r, len, "cpu", 1), 0);
    int fd = peer_connect(&t);
    char *got = map(len, 0);
    uint8_t raw[WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE];
    struct wire_header h = {.type = WIRE_READ, .id = 1, .nentries = 1};
    wire_encode_header(&h, raw);
    wire_encode_entries(&(struct wire_entry){(uint64_t)(uintptr_t)r, len}, 1, raw + WIRE_HEADER_SIZE);
    assert_int_equal(net_write_full(fd, raw, sizeof raw), 0);
    h = peer_response(fd, WIRE_READ_RESP, 1);
    assert_false(h.flags & WIRE_FLAG_TRAILER);
    assert_int_equal(net_read_full(fd, got, MIB), 0);
    unregister_now(t.e, r);
    memset(r, 0x55, len);
    size_t n = 0;
    ssize_t k = -1;
    while (n < len - MIB && (k = recv(fd, got + MIB + n, len - MIB - n, 0)) > 0)
        n += (size_t)k;
    assert_true(n < len - MIB); /* cut short: the peer sees a closed connection */
    assert_int_equal(k, 0);
    check_pattern_or_zero(got, MIB + n, 3);
    close(fd);
    munmap(r, len);
    munmap(got, len);
    ferry_engine_destroy(t.e);
}

/* ------------------------------------------------------------ a second unregister while a revoked entry's bytes move */

static int sock_port(int fd, int peer)
{
    struct sockaddr_in a;
    socklen_t n = sizeof a;
    if ((peer ? getpeername(fd, (struct sockaddr *)&a, &n) : getsockname(fd, (struct sockaddr *)&a, &n)) != 0 ||
        a.sin_family != AF_INET)
        return -1;
    return ntohs(a.sin_port);
}

/* The target's end (in this process) of the peer's connection fd. */
static int target_end(const struct target *t, int fd)
{
    int mine = sock_port(fd, 0), found = -1;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    for (struct dirent *de; found < 0 && (de = readdir(d)) != NULL;) {
        int x = atoi(de->d_name);
        if (x != fd && sock_port(x, 0) == t->tcp_port && sock_port(x, 1) == mine)
            found = x;
    }
    closedir(d);
    assert_true(found >= 0);
    return found;
}

struct drained {
    int peer, target;
};

/* Every byte the peer sent has been read by the target's thread: none is
 * unacknowledged on the peer's side or unread on the target's. */
static int is_drained(void *arg)
{
    const struct drained *d = arg;
    int outq = -1, inq = -1;
    assert_int_equal(ioctl(d->peer, SIOCOUTQ, &outq), 0);
    assert_int_equal(ioctl(d->target, SIOCINQ, &inq), 0);
    return outq == 0 && inq == 0;
}

/* Starts ferry_unregister_memory(addr) on a thread and waits up to `bound_s`
 * for it to return (the peer moves no byte meanwhile).  Returns whether it
 * had returned; the thread is left to be joined by unregister_join. */
static bool unregister_returns(struct unreg_call *u, pthread_t *th, unsigned bound_s)
{
    assert_int_equal(pthread_create(th, NULL, unreg_main, u), 0);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += bound_s;
    if (pthread_timedjoin_np(*th, NULL, &until) == 0) {
        *th = 0;
        return true;
    }
    return false;
}

static void unregister_join(struct unreg_call *u, pthread_t th)
{
    if (th)
        assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(u->rc, 0);
}

/* What the peer gives an unregister that must not wait for it: long against
 * any scheduling delay, short against the target's request timeout (60 s),
 * which alone ended the wait before the fix. */
#define UNREG_BOUND_S 20

/* A WRITE of two entries, c then a (host memory, or sim device memory
 * through the bounce): c is unregistered mid-payload, so the target's thread
 * throws the rest of c's bytes away (tcp_serve_discard), and a is
 * unregistered while it waits for them.  That unregister returns without
 * another byte from the peer: the wait ends a's revoked access (before the
 * fix the wait consumed serve_cancel's wake-up and went on waiting for the
 * peer, who waits for the unregister: a cycle only the request deadline
 * broke, seen as test_write_device_run_unregistered_midway failing under
 * load when its unregister's revocations raced the thread's look at them).
 * Both entries end refused, nothing lands in either after its unregister,
 * and the connection serves on. */
static void write_unregister_while_discarding(const char *location)
{
    struct target t;
    target_start(&t);
    const size_t clen = 4 * MIB, alen = MIB, piece = 64 * 1024;
    bool dev = strcmp(location, "cpu") != 0;
    char *c = dev ? dev_alloc(t.e, clen, 5) : map(clen, 0x11);
    char *a = dev ? dev_alloc(t.e, alen, 6) : map(alen, 0x11);
    assert_int_equal(ferry_register_memory(t.e, c, clen, location, 1), 0);
    assert_int_equal(ferry_register_memory(t.e, a, alen, location, 1), 0);
    int fd = peer_connect(&t);
    struct drained dr = {fd, target_end(&t, fd)};
    struct wire_entry e[2] = {{(uint64_t)(uintptr_t)c, clen}, {(uint64_t)(uintptr_t)a, alen}};
    uint8_t raw[WIRE_HEADER_SIZE + 2 * WIRE_ENTRY_SIZE];
    wire_encode_header(&(struct wire_header){.type = WIRE_WRITE, .id = 1, .nentries = 2,
                                             .payload_len = clen + alen}, raw);
    wire_encode_entries(e, 2, raw + WIRE_HEADER_SIZE);
    char *payload = map(clen + alen, 0x22);
    assert_int_equal(net_write_full(fd, raw, sizeof raw), 0);
    assert_int_equal(net_write_full(fd, payload, piece), 0);
    wait_until(is_drained, &dr); /* the target is receiving c */
    unregister_now(t.e, c);
    if (dev)
        dev_fill(t.e, c, clen, 0x33);
    else
        memset(c, 0x33, clen);
    assert_int_equal(net_write_full(fd, payload + piece, piece), 0);
    wait_until(is_drained, &dr); /* it threw those away: it waits in c's discard, a still held */

    struct unreg_call u = {t.e, a, -1};
    pthread_t th;
    bool returned = unregister_returns(&u, &th, UNREG_BOUND_S);
    if (returned) {
        if (dev)
            dev_fill(t.e, a, alen, 0x33);
        else
            memset(a, 0x33, alen);
    }
    assert_int_equal(net_write_full(fd, payload + 2 * piece, clen + alen - 2 * piece), 0);
    unregister_join(&u, th); /* (before the fix: returns once the bytes above arrive) */
    if (!returned)
        fail_msg("ferry_unregister_memory of a %s entry waited %u s for a peer sending a revoked entry's bytes",
                 location, UNREG_BOUND_S);
    assert_true(peer_response(fd, WIRE_WRITE_ACK, 1).refused == 3);
    char *host = map(clen, 0);
    if (dev)
        assert_int_equal(ferry_mem_copy(t.e, host, c, clen), 0);
    assert_int_equal(count_not(dev ? host : c, clen, 0x33), 0); /* nothing landed after unregister */
    if (dev)
        assert_int_equal(ferry_mem_copy(t.e, host, a, alen), 0);
    assert_int_equal(count_not(dev ? host : a, alen, 0x33), 0);
    munmap(host, clen);
    check_other_region(t.e, fd, 2);
    close(fd);
    munmap(payload, clen + alen);
    if (dev) {
        ferry_mem_free(t.e, location, c, clen);
        ferry_mem_free(t.e, location, a, alen);
    } else {
        munmap(c, clen);
        munmap(a, alen);
    }
    ferry_engine_destroy(t.e);
}

static void test_write_host_unregister_while_discarding(void **state)
{
    (void)state;
    write_unregister_while_discarding("cpu");
}

static void test_write_device_unregister_while_discarding(void **state)
{
    (void)state;
    write_unregister_while_discarding("sim:0");
}

/* The READ side: c (host memory) is unregistered mid-response, so its rest
 * goes out as zeros; a is unregistered while the target's thread waits for
 * room to send them (the peer reads nothing meanwhile).  That unregister
 * returns without the peer reading on; a's bytes go out as zeros too and the
 * trailer marks both entries revoked. */
static void test_read_unregister_while_sending_zeros(void **state)
{
    (void)state;
    struct target t;
    target_start(&t);
    const size_t clen = 32 * MIB, alen = MIB, total = clen + alen;
    char *c = map(clen, 0x77), *a = map(alen, 0x77);
    assert_int_equal(ferry_register_memory(t.e, c, clen, "cpu", 1), 0);
    assert_int_equal(ferry_register_memory(t.e, a, alen, "cpu", 1), 0);
    int fd = peer_connect(&t);
    struct wire_entry e[2] = {{(uint64_t)(uintptr_t)c, clen}, {(uint64_t)(uintptr_t)a, alen}};
    uint8_t raw[WIRE_HEADER_SIZE + 2 * WIRE_ENTRY_SIZE];
    wire_encode_header(&(struct wire_header){.type = WIRE_READ, .id = 1, .nentries = 2,
                                             .flags = WIRE_FLAG_TRAILER}, raw);
    wire_encode_entries(e, 2, raw + WIRE_HEADER_SIZE);
    assert_int_equal(net_write_full(fd, raw, sizeof raw), 0);
    struct wire_header h = peer_response(fd, WIRE_READ_RESP, 1);
    assert_true(h.refused == 0 && h.payload_len == total);
    char *got = map(total, 0xee);
    assert_int_equal(net_read_full(fd, got, MIB), 0); /* the target is mid-response, blocked on us */
    assert_int_equal(count_not(got, MIB, 0x77), 0);
    unregister_now(t.e, c);
    memset(c, 0x55, clen);
    /* read on until the zeros in place of c's rest begin: the target sends them */
    size_t n = MIB;
    while (n < clen && memchr(got + n - 4096, 0, 4096) == NULL) {
        assert_int_equal(net_read_full(fd, got + n, 4096), 0);
        n += 4096;
    }
    assert_true(n < clen); /* (c's rest does not fit in the sockets' buffers: it waits for room) */

    struct unreg_call u = {t.e, a, -1};
    pthread_t th;
    bool returned = unregister_returns(&u, &th, UNREG_BOUND_S);
    if (returned)
        memset(a, 0x55, alen);
    assert_int_equal(net_read_full(fd, got + n, total - n), 0);
    unregister_join(&u, th);
    if (!returned)
        fail_msg("ferry_unregister_memory waited %u s for a peer reading a revoked entry's zeros", UNREG_BOUND_S);
    const char *z = memchr(got, 0, clen);
    assert_non_null(z);
    assert_int_equal(count_not(got, (size_t)(z - got), 0x77), 0);
    assert_int_equal(count_not(z, total - (size_t)(z - got), 0), 0); /* c's rest and all of a: zeros */
    assert_true(peer_trailer_of(fd, 2, 0) == 3);
    check_other_region(t.e, fd, 2);
    close(fd);
    munmap(got, total);
    munmap(c, clen);
    munmap(a, alen);
    ferry_engine_destroy(t.e);
}

/* FERRY_TCP_ACK_ON_COPY=2 (test_unregister_ack_on_mark): a device WRITE
 * whose next frame has begun to arrive leaves its ack to its copies'
 * completion and keeps its access while the target's thread reads that
 * frame's header.  The peer sends one byte of it and stalls; d is
 * unregistered meanwhile.  That unregister returns without another byte
 * from the peer (the thread settles the ack: its copies are waited for, its
 * access ends; before the fix the header's wait had no wake-up, so the
 * unregister waited for the header's deadline, 60 s here).  The WRITE
 * completed (acked, every byte in d) and the next frame is served.  With
 * the other ways to ack, the ack goes before the header's wait: the same
 * outcome. */
static void test_unregister_while_next_header_stalls(void **state)
{
    (void)state;
    struct target t;
    target_start_with(&t, 60000);
    const size_t len = MIB, olen = 64 * 1024;
    char *d = dev_alloc(t.e, len, 8), *other = map(olen, 0x11);
    assert_int_equal(ferry_register_memory(t.e, d, len, "sim:0", 1), 0);
    assert_int_equal(ferry_register_memory(t.e, other, olen, "cpu", 1), 0);
    int fd = peer_connect(&t);
    struct drained dr = {fd, target_end(&t, fd)};
    char *payload = map(len, 0x22), *opayload = map(olen, 0x44);
    peer_frame(fd, WIRE_WRITE, 1, (uint64_t)(uintptr_t)d, len);
    assert_int_equal(net_write_full(fd, payload, len - 1), 0);
    wait_until(is_drained, &dr);
    /* the WRITE's last byte and the next frame's first arrive together */
    uint8_t next[WIRE_HEADER_SIZE + WIRE_ENTRY_SIZE + 1];
    wire_encode_header(&(struct wire_header){.type = WIRE_WRITE, .id = 2, .nentries = 1, .payload_len = olen},
                       next + 1);
    wire_encode_entries(&(struct wire_entry){(uint64_t)(uintptr_t)other, olen}, 1, next + 1 + WIRE_HEADER_SIZE);
    next[0] = (uint8_t)payload[len - 1];
    assert_int_equal(net_write_full(fd, next, 2), 0);
    wait_until(is_drained, &dr); /* the target waits for the rest of frame 2's header */
    const char *mode = getenv("FERRY_TCP_ACK_ON_COPY");
    if (mode && strcmp(mode, "2") == 0) { /* the path under test: frame 1's ack is owed, not sent */
        int inq = -1;
        assert_int_equal(ioctl(fd, SIOCINQ, &inq), 0);
        assert_int_equal(inq, 0);
    }

    struct unreg_call u = {t.e, d, -1};
    pthread_t th;
    bool returned = unregister_returns(&u, &th, UNREG_BOUND_S);
    assert_int_equal(net_write_full(fd, next + 2, sizeof next - 2), 0);
    assert_int_equal(net_write_full(fd, opayload, olen), 0);
    unregister_join(&u, th);
    if (!returned)
        fail_msg("ferry_unregister_memory waited %u s for a peer that stalled in the header after a WRITE",
                 UNREG_BOUND_S);
    assert_true(peer_response(fd, WIRE_WRITE_ACK, 1).refused == 0); /* it completed before the unregister */
    assert_true(peer_response(fd, WIRE_WRITE_ACK, 2).refused == 0);
    char *host = map(len, 0);
    assert_int_equal(ferry_mem_copy(t.e, host, d, len), 0);
    assert_int_equal(count_not(host, len, 0x22), 0);
    assert_int_equal(count_not(other, olen, 0x44), 0);
    munmap(host, len);
    check_other_region(t.e, fd, 3);
    close(fd);
    munmap(payload, len);
    munmap(opayload, olen);
    assert_int_equal(ferry_unregister_memory(t.e, other), 0);
    munmap(other, olen);
    ferry_mem_free(t.e, "sim:0", d, len);
    ferry_engine_destroy(t.e);
}

/* ------------------------------------------------------------ real initiator */

/* A real initiator WRITEs and READs 64 MiB while the target unregisters and
 * at once unmaps / frees the memory: each request ends COMPLETED or FAILED
 * FERRY_ERANGE (a touch after unregister would have broken the connection:
 * FERRY_ECONN). */
static void transfer_during_unregister(int opcode, const char *location)
{
    struct target t;
    target_start(&t);
    const size_t len = 64 * MIB;
    int dev = strcmp(location, "cpu") != 0;
    char *r = dev ? dev_alloc(t.e, len, 4) : map(len, 0);
    if (!dev)
        pattern_fill(r, len, 4, 0);
    assert_int_equal(ferry_register_memory(t.e, r, len, location, 1), 0);

    ferry_engine *ini;
    struct ferry_config cfg;
    assert_int_equal(ferry_config_init(&cfg), 0);
    cfg.slice_size = cfg.staging_chunk_size = len; /* one frame, on the wire when the target unregisters */
    assert_int_equal(ferry_engine_create(&cfg, &ini), 0);
    char *local = map(len, 0x77);
    assert_int_equal(ferry_register_memory(ini, local, len, "cpu", 0), 0);
    ferry_segment_t seg;
    assert_int_equal(ferry_open_segment(ini, ferry_engine_segment_name(t.e), &seg), 0);
    ferry_batch *b;
    assert_int_equal(ferry_batch_alloc(ini, 1, &b), 0);
    struct ferry_request q = {opcode, local, seg, (uint64_t)(uintptr_t)r, len};
    assert_int_equal(ferry_batch_submit(b, &q, 1), 0);
    /* as soon as the first slice has moved (or everything has) */
    struct filled first = {dev && opcode == FERRY_WRITE ? t.e : NULL, opcode == FERRY_WRITE ? r : local, 4096,
                           0x77};
    uint64_t end = now_ms() + GUARD_MS;
    struct ferry_status st;
    for (;;) {
        assert_int_equal(ferry_batch_status(b, 0, &st), 0);
        if (st.state != FERRY_PENDING)
            break;
        if (opcode == FERRY_WRITE ? is_filled(&first) : !is_filled(&first))
            break;
        assert_true(now_ms() < end);
        sched_yield();
    }
    unregister_now(t.e, r);
    /* gone at once: a later touch by the target fails its copy or its
     * recv/send (EFAULT), which would end the request FERRY_ECONN */
    if (dev)
        ferry_mem_free(t.e, location, r, len);
    else
        munmap(r, len);
    ferry_batch_wait(b, GUARD_MS);
    assert_int_equal(ferry_batch_status(b, 0, &st), 0);
    print_message("%s %s: %s %s\n", opcode == FERRY_WRITE ? "WRITE" : "READ", location,
                  st.state == FERRY_COMPLETED ? "COMPLETED" : "FAILED", st.message);
    if (st.state != FERRY_COMPLETED) {
        assert_int_equal(st.state, FERRY_FAILED);
        assert_int_equal(st.error, FERRY_ERANGE);
    }
    ferry_batch_free(b);
    ferry_engine_destroy(ini);
    munmap(local, len);
    ferry_engine_destroy(t.e);
}

static void test_engine_write_host(void **state)
{
    (void)state;
    transfer_during_unregister(FERRY_WRITE, "cpu");
}

static void test_engine_read_host(void **state)
{
    (void)state;
    transfer_during_unregister(FERRY_READ, "cpu");
}

static void test_engine_write_device(void **state)
{
    (void)state;
    transfer_during_unregister(FERRY_WRITE, "sim:0");
}

static void test_engine_read_device(void **state)
{
    (void)state;
    transfer_during_unregister(FERRY_READ, "sim:0");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_host_unregistered_midway),
        cmocka_unit_test(test_write_run_unregistered_midway),
        cmocka_unit_test(test_read_host_unregistered_midway),
        cmocka_unit_test(test_write_device_unregistered_midway),
        cmocka_unit_test(test_write_device_run_unregistered_midway),
        cmocka_unit_test(test_read_device_unregistered_midway),
        cmocka_unit_test(test_read_without_trailer_closes),
        cmocka_unit_test(test_write_host_unregister_while_discarding),
        cmocka_unit_test(test_write_device_unregister_while_discarding),
        cmocka_unit_test(test_read_unregister_while_sending_zeros),
        cmocka_unit_test(test_unregister_while_next_header_stalls),
        cmocka_unit_test(test_engine_write_host),
        cmocka_unit_test(test_engine_read_host),
        cmocka_unit_test(test_engine_write_device),
        cmocka_unit_test(test_engine_read_device),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
